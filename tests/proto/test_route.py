"""usnet.proto.route: the one route decision of the switch and the clients, against Python's ipaddress."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from usnet.proto.route import Routes


@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 2**32 - 1), st.booleans())
def test_ipv4_next_hop_is_the_destination_on_link_else_the_gateway(local, prefix, dst, has_gw):
    iface = ipaddress.IPv4Interface((local, prefix))
    gw = bytes([10, 0, 0, 1]) if has_gw else None
    r = Routes(str(iface), gw)
    d = ipaddress.IPv4Address(dst)
    on_link = d in iface.network or dst == 2**32 - 1
    assert r.next_hop(d.packed) == (d.packed if on_link else gw)
    assert r.reaches(d.packed) == (on_link or has_gw or d == iface.ip)
    assert not r.reaches(bytes(16))  # no IPv6 on this netif


def test_ipv6_link_local_multicast_and_loopback():
    r = Routes("10.0.0.2/24", None, "fd00::2/64", None, own6=(ipaddress.IPv6Address("fe80::2").packed,))
    p = lambda a: ipaddress.IPv6Address(a).packed
    assert r.next_hop(p("fd00::9")) == p("fd00::9")
    assert r.next_hop(p("fe80::9")) == p("fe80::9") and r.next_hop(p("ff02::1")) == p("ff02::1")
    assert r.next_hop(p("fd01::9")) is None and r.next_hop(p("::1")) is None
    assert r.reaches(p("fe80::2")) and not r.reaches(p("2001:db8::1"))
    with_gw = Routes("10.0.0.2/24", None, "fd00::2/64", p("fd00::1"))
    assert with_gw.next_hop(p("2001:db8::1")) == p("fd00::1")


def test_a_client_builds_its_familys_routes_from_flowopened():
    r = Routes.for_flow("10.77.0.2", 24, None)
    assert r.reaches(bytes([10, 77, 0, 9])) and not r.reaches(bytes([10, 78, 0, 9]))
    assert Routes.for_flow("10.77.0.2", 24, "10.77.0.1").reaches(bytes([8, 8, 8, 8]))
    assert Routes.for_flow("10.77.0.2", -1, None).reaches(bytes([8, 8, 8, 8]))  # unknown: the switch decides
    r6 = Routes.for_flow("fd00:77::2", 64, None)
    assert r6.reaches(ipaddress.IPv6Address("fd00:77::5").packed)
    assert not r6.reaches(bytes([10, 77, 0, 9]))


@given(st.integers(1, 0xFFFFFFFE), st.integers(-1, 32))
def test_broadcast4_is_the_subnets_broadcast_address_and_the_network_address_is_a_host(addr, prefix):
    """As Linux since 5.14 routes them: the all-ones host part is the broadcast, the lowest
    address an ordinary host."""
    local = str(ipaddress.IPv4Address(addr))
    routes = Routes.for_flow(local, prefix, None)
    got = routes.broadcast4
    if 0 <= prefix < 31:
        net = ipaddress.ip_network(f"{local}/{prefix}", strict=False)
        assert got == net.broadcast_address.packed
        assert routes.on_link(net.network_address.packed)  # a neighbour, asked for as any other
    else:  # a /31 or /32 has none; an unknown prefix (-1) is taken as a /32
        assert got is None
    assert Routes.for_flow("fd00::5", 64, None).broadcast4 is None
