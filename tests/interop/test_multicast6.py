"""IPv6 multicast on UDP (MLD), on usnet and on the kernel side by side (root, TAP in the test's namespace).

usnet refused it (IPV6_JOIN_GROUP ENOPROTOOPT, a datagram to ff00::/8 EOPNOTSUPP). Now an
AF_INET6 socket joins as an AF_INET one does (P.JoinGroup with a 16-byte group), the switch
copies a group datagram to every member flow and speaks MLDv2 for the netif. Here: the option
calls give what the kernel's give, call by call; datagrams cross both ways (the kernel in the
namespace is the other host); the reports on the wire are well-formed MLDv2, from the link-local
address with hop limit 1 and the Router Alert, and a query is answered; a client's forged
requests get clear refusals; Neighbour Discovery goes on; Python's recipe runs under `usnet run`.
"""

from __future__ import annotations

import socket
import struct

import pytest
from scapy.layers.inet6 import (
    ICMPv6MLDone,
    ICMPv6MLQuery,
    ICMPv6MLQuery2,
    ICMPv6MLReport,
    ICMPv6MLReport2,
    IPv6,
    IPv6ExtHdrHopByHop,
    RouterAlert,
)
from scapy.layers.l2 import Ether

from tests.interop.test_multicast import (
    LIMIT,
    _receivers,
    _who_hears_unicast,
    _Wire,
    big_to_group,
    refusal,
    run_recipe,
    sockets_on,
    ttl_and_loop,
)
from tests.interop.test_sockopts_linux import _outcome as _sockopt_outcome
from usnet.abi import protocol as P
from usnet.client import Client

pytestmark = pytest.mark.privileged
IP6 = socket.IPPROTO_IPV6
JOIN, LEAVE, M_IF, M_HOPS, M_LOOP, M_ALL, RECVHOPLIMIT = 20, 21, 17, 18, 19, 29, 51
G, G2 = "ff05::1:3", "ff0e::7:7"


def _mreq(group: str, ifindex: int) -> bytes:
    """struct ipv6_mreq: the group's 16 bytes and an interface index, Python's recipe."""
    return struct.pack("16sI", socket.inet_pton(socket.AF_INET6, group), ifindex)


@pytest.fixture
def mc6(tap_domain6):
    d, ifname, usnet_ip, host_ip = tap_domain6
    idx = socket.if_nametoindex(ifname)
    # the kernel's sockets send to groups out of the TAP (it has no route of its own to choose it by)
    with sockets_on(d, ifname, usnet_ip, host_ip, socket.AF_INET6, lambda s: s.setsockopt(IP6, M_IF, idx)) as e:
        e.idx = idx
        yield e


# -- the option calls, call by call ------------------------------------------------------------------


def _walk(s, idx: int) -> list:
    """The IPv6 multicast option calls a program makes, right and wrong, in one order; what each gives
    and the options read back after it."""
    def get(o):
        return _sockopt_outcome(s, IP6, o, None)

    out = [get(o) for o in (M_HOPS, M_LOOP, M_ALL, M_IF, JOIN, LEAVE)]
    for opt, v in ((JOIN, 1), (JOIN, b"\0" * 19), (JOIN, _mreq("2001:db8::1", idx)), (JOIN, _mreq("::", idx)),
                   (JOIN, _mreq(G, 99999)), (JOIN, _mreq(G, idx)), (JOIN, _mreq(G, idx)), (JOIN, _mreq(G, 0)),
                   (JOIN, _mreq(G2, 0)), (JOIN, _mreq(G2, 99999)), (JOIN, _mreq(G2, idx) + b"\0" * 4),
                   (JOIN, _mreq("ff02::1", idx)), (JOIN, _mreq("ff01::1:2", idx)), (JOIN, _mreq("ff02::fb", 0)),
                   (LEAVE, _mreq("ff05::9", idx)), (LEAVE, _mreq("2001:db8::1", idx)), (LEAVE, _mreq(G, 99999)),
                   (LEAVE, _mreq(G, idx)), (LEAVE, _mreq(G, idx)), (LEAVE, b"\0" * 4), (LEAVE, _mreq(G2, 0)),
                   (M_HOPS, -1), (M_HOPS, 256), (M_HOPS, -2), (M_HOPS, 5), (M_HOPS, b"\x07"), (M_HOPS, 0),
                   (M_LOOP, 7), (M_LOOP, -1), (M_LOOP, 0), (M_LOOP, b"\x01"), (M_ALL, 7), (M_ALL, 0),
                   (M_IF, 99999), (M_IF, -1), (M_IF, idx), (M_IF, 0), (M_IF, b"\0\0")):
        got = _sockopt_outcome(s, IP6, opt, v)
        out.append((opt, v if isinstance(v, int) else len(v), got, tuple(get(o) for o in (M_HOPS, M_LOOP, M_ALL))))
    return out


def test_the_option_calls_give_what_the_kernels_give(mc6):
    """Each call on a bound kernel socket and on a bound usnet one: the same values kept, the same
    errors (EINVAL, ENODEV, EADDRINUSE, EADDRNOTAVAIL), in Linux's order; ff02::1, ff01:: and
    ff02::fb are groups like any other to a join, as on Linux."""
    kernel = _walk(mc6.ksock(), mc6.idx)
    assert kernel[6 + 5][2] == "ok" and kernel[6 + 6][2] == "EADDRINUSE"  # the walk tries what it means to
    assert kernel[6 + 11][2] == "ok" and kernel[6 + 12][2] == "ok"  # ff02::1 and ff01:: join
    u = mc6.usock()
    u.setsockopt(IP6, M_IF, mc6.idx)  # as the fixture's kernel sockets
    assert _walk(u, mc6.idx) == kernel


def test_an_unbound_socket_joins_and_hears_once_bound(mc6):
    """A join before bind is kept and made when the socket has its flow, as a kernel socket's."""
    u = mc6.usock(bind=False)
    u.setsockopt(IP6, JOIN, _mreq(G, mc6.idx))
    u.bind(("", 47710))
    mc6.ksock().sendto(b"late", (G, 47710))
    assert u.recvfrom(100)[0] == b"late"


# -- datagrams ----------------------------------------------------------------------------------


def test_a_group_reaches_its_members_as_on_linux(mc6):
    """The kernel sends to a group and usnet's members hear it, each its own copy; usnet sends and
    the kernel's do: the same sockets hear, on either side (test_multicast's walk: a and b members
    sharing a port, c with IPV6_MULTICAST_ALL 0, e of another port, f joined and left)."""
    six = {"group": G, "base": 47700, "opts": (IP6, JOIN, LEAVE, M_ALL), "mreq": _mreq}
    on_usnet = _receivers(mc6, mc6.ksock(), mc6.usock, mc6.idx, **six)
    on_kernel = _receivers(mc6, mc6.usock(), mc6.ksock, mc6.idx, **six)
    want = {"a": b"to 47700", "b": b"to 47700", "c": None, "e": b"to 47702", "f": None}
    assert on_kernel == want
    assert on_usnet == want
    assert mc6.switch.counts["rx_group_datagrams"] >= 1


def test_a_group_datagram_in_fragments_reaches_every_member_as_on_linux(mc6):
    """test_multicast's twin: a 3,000-byte datagram to an IPv6 group, in fragments (a Fragment
    header each), reaches both members on usnet, as usnet's reaches the kernel's."""
    blob = bytes(range(256)) * 11 + b"end"

    def join(s) -> None:
        s.setsockopt(IP6, JOIN, _mreq(G, mc6.idx))
    frags = mc6.switch.frags["frag_in"]
    on_usnet = big_to_group(mc6.ksock(), mc6.usock, G, 47750, join, blob)
    assert mc6.switch.frags["frag_in"] >= frags + 2 and "rx_fragment" not in mc6.switch.drops
    on_kernel = big_to_group(mc6.usock(), mc6.ksock, G, 47751, join, blob)
    assert on_usnet == on_kernel == [blob, blob]


def test_what_usnet_sends_to_a_group_carries_the_multicast_hops_and_loops_back(mc6):
    """Hop limit 1 by default and IPV6_MULTICAST_HOPS's after (the kernel's IPV6_RECVHOPLIMIT reads
    it), to the group's 33:33 MAC; with IPV6_MULTICAST_LOOP a member in the same domain hears it
    too, without it not."""
    k = mc6.ksock(47720)
    k.setsockopt(IP6, JOIN, _mreq(G, mc6.idx))
    member = mc6.usock(47720)
    member.setsockopt(IP6, JOIN, _mreq(G, mc6.idx))
    hops = ttl_and_loop(mc6.usock(), k, member, (G, 47720), mc6.usnet_ip, IP6, M_HOPS, M_LOOP, RECVHOPLIMIT)
    assert hops == [1, 5]


def test_unicast_and_neighbour_discovery_go_on_beside_the_groups(mc6):
    """Joined to groups, the netif still answers Neighbour Discovery (the solicited-node group's
    MAC is admitted as before) and unicast reaches its one socket: the kernel resolves usnet's
    address and sends to it; a SO_REUSEADDR pair's newest hears unicast, as Linux's."""
    from pyroute2 import IPRoute

    a, b = mc6.usock(47730, True), mc6.usock(47730, True)
    for s in (a, b):
        s.setsockopt(IP6, JOIN, _mreq(G, mc6.idx))
    senders = [mc6.ksock() for _ in range(4)]
    assert _who_hears_unicast(senders, (mc6.usnet_ip, 47730), {"a": a, "b": b}) == {"a": 0, "b": 4}
    with IPRoute() as ipr:  # the kernel learnt usnet's MAC by ND (a fresh TAP: it had no entry)
        macs = {n.get_attr("NDA_LLADDR") for n in ipr.get_neighbours(ifindex=mc6.idx, family=socket.AF_INET6)
                if n.get_attr("NDA_DST") == mc6.usnet_ip}
    assert macs == {mc6.switch.netif.mac.hex(":")}


# -- MLD on the wire ---------------------------------------------------------------------------------


def _report_from(wire: _Wire, mac: str) -> Ether:
    """The next MLDv2 report from `mac` on the wire."""
    return wire.next(lambda f: f.src == mac and ICMPv6MLReport2 in f, "MLD report")


def _records(rep) -> list[tuple[int, str]]:
    """(record type, group) of each record (scapy reads the second as the first's payload)."""
    out, r = [], rep.records[0] if rep.records else None
    while r is not None and hasattr(r, "rtype"):
        out.append((r.rtype, r.dst))
        r = r.payload if r.payload else None
    return out


def _check_report(frame: Ether, usnet_mac: str, ll: str, records: list[tuple[int, str]]) -> None:
    """A well-formed MLDv2 report, as Linux's: to ff02::16 at 33:33:00:00:00:16, from the link-local
    address, hop limit 1, a Hop-by-Hop header with the Router Alert for MLD, a checksum scapy
    computes the same, and these (record type, group) records."""
    assert frame.dst == "33:33:00:00:00:16" and frame.src == usnet_mac
    ip = frame[IPv6]
    assert (ip.dst, ip.src, ip.hlim, ip.nh) == ("ff02::16", ll, 1, 0)
    hbh = ip[IPv6ExtHdrHopByHop]
    assert isinstance(hbh.options[0], RouterAlert) and hbh.options[0].value == 0
    raw = bytes(ip)
    again = IPv6(raw)
    del again[IPv6ExtHdrHopByHop].payload.cksum
    assert bytes(again) == raw
    assert _records(ip[ICMPv6MLReport2]) == records


def test_mld_reports_on_join_and_leave_and_a_query_answered(mc6):
    """The first join of a group sends CHANGE_TO_EXCLUDE {} (twice, as Linux's robustness 2), a
    second member nothing, a join of ff02::1 nothing (as Linux), a general query MODE_IS_EXCLUDE
    (of the netif's solicited-node groups too),
    the last leave CHANGE_TO_INCLUDE {} (a closed socket's too, twice)."""
    wire = _Wire(mc6.ifname)
    netif = mc6.switch.netif
    mac, ll = netif.mac.hex(":"), socket.inet_ntop(socket.AF_INET6, netif.ll6)
    try:
        a, b = mc6.usock(47740, True), mc6.usock(47740, True)
        a.setsockopt(IP6, JOIN, _mreq("ff02::1", mc6.idx))
        a.setsockopt(IP6, JOIN, _mreq(G, mc6.idx))
        for _ in range(2):  # said twice (the robustness variable), the second within a second
            _check_report(_report_from(wire, mac), mac, ll, [(4, G)])  # no record of ff02::1
        b.setsockopt(IP6, JOIN, _mreq(G, mc6.idx))
        reports = mc6.switch.counts["mld_reports"]
        _send_query(mc6.ifname, ICMPv6MLQuery2(mrd=100))
        # the netif's solicited-node groups too (its own memberships), as Linux's answer names them
        own = [(2, socket.inet_ntop(socket.AF_INET6, g)) for g in sorted(netif.groups6) if g[-4] == 0xFF]
        _check_report(_report_from(wire, mac), mac, ll, [(2, G), *own])
        assert mc6.switch.counts["mld_reports"] == reports + 1  # b's join said nothing
        a.setsockopt(IP6, LEAVE, _mreq(G, mc6.idx))
        b.close()  # the last member: its membership ends with its flow
        for _ in range(2):
            _check_report(_report_from(wire, mac), mac, ll, [(3, G)])
    finally:
        wire.close()


def _send_query(ifname: str, query) -> None:
    """An MLD query from a router on the link (fe80::99), hop limit 1, Router Alert, to all-nodes."""
    q = (Ether(dst="33:33:00:00:00:01", src="02:00:00:00:00:99")
         / IPv6(src="fe80::99", dst="ff02::1", hlim=1) / IPv6ExtHdrHopByHop(options=[RouterAlert(value=0)]) / query)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as tx:
        tx.bind((ifname, 0))
        tx.send(bytes(q))


def test_an_mldv1_querier_is_answered_in_mldv1(mc6):
    """An MLDv1 query (24 bytes, RFC 3810 §8.1) turns the netif to MLDv1 (as Linux's mc_v1_seen): the
    answer is an MLDv1 report to the group itself, and the last leave a Done to ff02::2."""
    wire = _Wire(mc6.ifname)
    mac = mc6.switch.netif.mac.hex(":")
    try:
        a = mc6.usock(47745)
        a.setsockopt(IP6, JOIN, _mreq(G, mc6.idx))
        _send_query(mc6.ifname, ICMPv6MLQuery(mrd=100))
        rep = wire.next(lambda f: f.src == mac and ICMPv6MLReport in f, "MLDv1 report")
        assert (rep[IPv6].dst, rep[IPv6].hlim, rep[ICMPv6MLReport].mladdr, rep.dst) == (G, 1, G, "33:33:00:01:00:03")
        a.setsockopt(IP6, LEAVE, _mreq(G, mc6.idx))
        done = wire.next(lambda f: f.src == mac and ICMPv6MLDone in f, "MLDv1 Done")
        assert (done[IPv6].dst, done[ICMPv6MLDone].mladdr) == ("ff02::2", G)
    finally:
        wire.close()


# -- the domain's own checks ---------------------------------------------------------------------------


def test_a_clients_forged_join_requests_get_clear_refusals(mc6):
    """The domain checks every join itself: an IPv6 group on an IPv4 flow and an IPv4 group on an
    IPv6 one EINVAL, an address outside ff00::/8 EINVAL, a group of 7 bytes EINVAL, a TCP flow
    EPROTO, another session's channel ENOENT, twice EADDRINUSE, a leave not joined EADDRNOTAVAIL,
    past 256 ENOMEM; 17 bytes a protocol error. The domain serves on, and joined nothing refused."""
    c, other = Client.local(mc6.d), Client.local(mc6.d)
    flow6 = c.udp_socket(mc6.ifname, 47750, family=6)
    flow4 = c.udp_socket(mc6.ifname, 47751, family=4)
    tcp6 = c.open_flow(mc6.ifname, 6, 47752, family=6)[0]
    g = socket.inet_pton(socket.AF_INET6, G)

    ch = flow6.channel.id
    assert refusal(lambda: c.join_group(flow4.channel.id, g)) == "EINVAL"
    assert refusal(lambda: c.join_group(ch, socket.inet_aton("239.1.2.3"))) == "EINVAL"
    assert refusal(lambda: c.join_group(ch, socket.inet_pton(socket.AF_INET6, "2001:db8::1"))) == "EINVAL"
    assert refusal(lambda: c.join_group(ch, b"\xff" * 7)) == "EINVAL"
    assert refusal(lambda: c.join_group(tcp6.id, g)) == "EPROTO"
    assert refusal(lambda: other.join_group(ch, g)) == "ENOENT"
    assert refusal(lambda: c.join_group(ch, g, False)) == "EADDRNOTAVAIL"
    got = [refusal(lambda i=i: c.join_group(ch, socket.inet_pton(socket.AF_INET6, f"ff05::2:{i:x}")))
           for i in range(257)]
    assert got == ["ok"] * 256 + ["ENOMEM"]
    assert refusal(lambda: c.join_group(ch, socket.inet_pton(socket.AF_INET6, "ff05::2:0"))) == "EADDRINUSE"
    with pytest.raises(P.ProtocolError):  # the domain's decoder holds a group to 4..16 bytes
        P.decode_request(P.encode(P.JoinGroup(ch, b"\xff" * 17, True)))
    assert g not in mc6.switch.groups.refs
    k = mc6.ksock()
    k.sendto(b"to ff05::2:5", ("ff05::2:5", 47750))
    assert flow6.recv_many(1, LIMIT)[0][0] == b"to ff05::2:5"


# -- an unmodified program ----------------------------------------------------------------------------

_PROGRAM = r"""
import socket, struct, sys
group, port, back = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ifindex = socket.if_nametoindex(sys.argv[4])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
mreq = struct.pack("16sI", socket.inet_pton(socket.AF_INET6, group), ifindex)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
s.settimeout(10)
print("ready", type(s).__module__.split(".")[0], flush=True)
data, addr = s.recvfrom(1024)
t = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 2)
t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
t.sendto(data.upper(), (group, back))
print(data.decode(), flush=True)
"""


def test_pythons_own_ipv6_multicast_recipe_runs_unmodified_under_usnet_run(sockdir):
    """The receiver and sender of Python's IPv6 multicast recipe (struct.pack("16sI", inet_pton(...),
    ifindex), IPV6_JOIN_GROUP, IPV6_MULTICAST_HOPS, IPV6_MULTICAST_IF), under `usnet run`: it hears
    the kernel's datagram to the group and its answer to the group reaches a kernel member."""
    from tests.helpers.usnetd import TapDaemon

    tapd = TapDaemon(sockdir, ipv6=True)
    k = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        tapd.start()
        idx = socket.if_nametoindex(tapd.ifname)
        k.bind(("", 47761))
        k.setsockopt(IP6, JOIN, _mreq(G, idx))
        k.setsockopt(IP6, M_IF, idx)
        k.settimeout(LIMIT)
        run_recipe(tapd.path, _PROGRAM, [G, "47760", "47761", tapd.ifname], k, (G, 47760), tapd.usnet_ip6)
    finally:
        k.close()
        tapd.stop()
