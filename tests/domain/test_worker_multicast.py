"""Issues 16 and 18: multicast under `usnetd --workers 2`, against the kernel in the test's namespace.

A group datagram to port p comes to queue p mod 2 (the steering program reads its UDP port as any
datagram's), so each worker delivers to its own members; IGMP queries and every fragment come to
queue 0, usnetd's. So the link hears one host: usnetd reports and answers for the union of the
workers' memberships (worker 1 says nothing), a group's first join and last leave over both
workers are said once, and a datagram in fragments is put back together by usnetd and handed to
the worker of its port.
"""

from __future__ import annotations

import os
import signal
import socket
import struct

import pytest
from scapy.contrib.igmpv3 import IGMPv3, IGMPv3mq, IGMPv3mr
from scapy.layers.inet import IP
from scapy.layers.inet6 import ICMPv6MLReport2
from scapy.layers.l2 import Ether

from tests.domain.test_workers import _workers, serving
from tests.helpers.usnetd import TapDaemon
from tests.interop.test_multicast import _Wire
from tests.interop.test_multicast6 import _records as _records6

pytestmark = pytest.mark.privileged
LIMIT = 10.0
G, G6 = "239.1.2.3", "ff05::1:3"
IPV6_DSTOPTS = 59  # linux/in6.h
IPP = socket.IPPROTO_IP


def _member(d, port: int):
    from usnet import socket as us

    s = us.socket(us.AF_INET, us.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.settimeout(LIMIT)
    s.setsockopt(IPP, socket.IP_ADD_MEMBERSHIP, struct.pack("4s4s", socket.inet_aton(G), socket.inet_aton(d.usnet_ip)))
    return s


def _records(wire: _Wire, src: str) -> list[tuple[int, str]]:
    """The (record type, group) records of the next IGMPv3 report from `src`."""
    frame = wire.igmp_from(src)
    return [(r.rtype, r.maddr) for r in IGMPv3(bytes(frame[IP].payload))[IGMPv3mr].records]


def _general_query(d) -> None:
    q = (Ether(dst="01:00:5e:00:00:01", src="02:00:00:00:00:99") / IP(src=d.host_ip, dst="224.0.0.1", ttl=1)
         / IGMPv3(type=0x11, mrcode=10) / IGMPv3mq())
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as tx:
        tx.bind((d.ifname, 0))
        tx.send(bytes(q))


def _counts(path: str) -> list[dict]:
    return [w["netifs"][0]["counts"] for w in _workers(path)]


def test_members_on_both_workers_hear_the_group_and_the_link_hears_one_host(tapd2):
    """b on worker 1's port joins: two CHANGE_TO_EXCLUDE (robustness 2), from usnetd; a on worker
    0's joins: nothing (the group is the netif's already); a kernel sender's datagrams reach each;
    a leaves: nothing (b is in); a general query is answered once, naming the group that only worker
    1 holds; b's close: two CHANGE_TO_INCLUDE. Worker 1 sent no report at all."""
    wire = _Wire(tapd2.ifname)
    try:
        b = _member(tapd2, 47101)
        assert _records(wire, tapd2.usnet_ip) == [(4, G)]
        assert _records(wire, tapd2.usnet_ip) == [(4, G)]
        a = _member(tapd2, 47100)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k:
            k.bind((tapd2.host_ip, 0))
            k.setsockopt(IPP, socket.IP_MULTICAST_IF, socket.inet_aton(tapd2.host_ip))
            for s, port in ((a, 47100), (b, 47101)):
                k.sendto(b"to %d" % port, (G, port))
                assert s.recvfrom(2048) == (b"to %d" % port, k.getsockname())
        a.setsockopt(IPP, socket.IP_DROP_MEMBERSHIP, struct.pack("4s4s", socket.inet_aton(G),
                                                                 socket.inet_aton(tapd2.usnet_ip)))
        a.close()
        _general_query(tapd2)
        assert _records(wire, tapd2.usnet_ip) == [(2, G)]  # the next report: the answer, b's group
        b.close()
        assert _records(wire, tapd2.usnet_ip) == [(3, G)]
        assert _records(wire, tapd2.usnet_ip) == [(3, G)]
        usnetd, worker1 = _counts(tapd2.path)
        assert usnetd.get("igmp_reports") == 5 and usnetd.get("igmp_queries") == 1, usnetd
        assert "igmp_reports" not in worker1 and worker1.get("rx_group_datagrams") == 1, worker1
    finally:
        wire.close()


def test_a_datagram_in_fragments_reaches_the_members_on_either_worker(tapd2):
    """A kernel sender's 3,000-byte datagrams (in fragments on the link, all on queue
    0) to the group on each worker's port, and to worker 1's port unicast: each arrives whole, the
    worker-1 ones handed over by usnetd after it put them back together."""
    a, b = _member(tapd2, 47200), _member(tapd2, 47201)
    blobs = {p: os.urandom(3000) for p in (47200, 47201)}
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k:
            k.bind((tapd2.host_ip, 0))
            k.setsockopt(IPP, socket.IP_MULTICAST_IF, socket.inet_aton(tapd2.host_ip))
            me = k.getsockname()
            for s, port in ((a, 47200), (b, 47201)):
                k.sendto(blobs[port], (G, port))
                assert s.recvfrom(65536) == (blobs[port], me)
            k.sendto(blobs[47201][::-1], (tapd2.usnet_ip, 47201))
            assert b.recvfrom(65536) == (blobs[47201][::-1], me)
        usnetd, worker1 = _counts(tapd2.path)
        assert usnetd.get("rx_handed_over") == 2, usnetd  # the group's and the unicast one to worker 1's port
        assert worker1.get("rx_group_datagrams") == 1, worker1
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_a_dead_workers_memberships_end_with_it(tapd2):
    """Worker 1 killed under the group's only member: the membership went with it, so usnetd says
    the group's last leave at once; then the socket, bound again on the restarted worker (as any
    UDP socket of a dead worker), joins again: a new first join, and it hears the group."""
    wire = _Wire(tapd2.ifname)
    b = _member(tapd2, 47301)
    try:
        assert [_records(wire, tapd2.usnet_ip) for _ in range(2)] == [[(4, G)]] * 2
        os.kill(_workers(tapd2.path)[1]["pid"], signal.SIGKILL)
        assert _records(wire, tapd2.usnet_ip) == [(3, G)]
        # the leave is said again at a random time within the Unsolicited Report Interval (1 s);
        # the rejoin comes when the restarted worker is up and the socket bound again, which under
        # load may be later: either the repeat went first (then it said the leave), or the join
        # replaced it (RFC 3376 §5.1, as Linux) and the repeat says the join. The join is said
        # twice either way, and never the leave after it.
        after = [_records(wire, tapd2.usnet_ip) for _ in range(2)]
        if after[0] == [(3, G)]:
            after = [*after[1:], _records(wire, tapd2.usnet_ip)]
        assert after == [[(4, G)], [(4, G)]]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k:
            k.bind((tapd2.host_ip, 0))
            k.setsockopt(IPP, socket.IP_MULTICAST_IF, socket.inet_aton(tapd2.host_ip))
            k.sendto(b"again", (G, 47301))
            assert b.recvfrom(2048) == (b"again", k.getsockname())
    finally:
        wire.close()
        b.close()


@pytest.fixture
def tapd2v6(sockdir, monkeypatch):
    """usnetd with two workers on a TAP with IPv6 too (fd00:x::2; the host fd00:x::1)."""
    yield from serving(TapDaemon(sockdir, ipv6=True), "tap", monkeypatch)


def _mld_records(wire: _Wire, kernel_mac: str) -> list[tuple[int, str]]:
    """The (record type, group) records of the next MLDv2 report on the wire not from the kernel."""
    frame = wire.next(lambda f: f.src != kernel_mac and ICMPv6MLReport2 in f, "MLD report")
    return _records6(frame[ICMPv6MLReport2])


def test_ipv6_groups_under_two_workers_mld_once_and_fragments_handed_over(tapd2v6):
    """MLD's twin of the first test, with fragments: b on worker 1's port joins (two MLDv2
    CHANGE_TO_EXCLUDE from usnetd), a on worker 0's joins (nothing); a kernel sender's 3,000-byte
    datagrams (each in fragments with a Fragment header: queue 0) reach both, the one to worker
    1's port handed over; so do datagrams behind a Destination Options header, to the group and
    unicast (queue 0 too); both close: the last leave said once (twice, robustness 2)."""
    from pyroute2 import IPRoute

    from usnet import socket as us
    from usnet.drivers.hostnet import add_address6

    d = tapd2v6
    idx = socket.if_nametoindex(d.ifname)
    with IPRoute() as ipr:
        add_address6(ipr, idx, d.host_ip6, 64)
        kernel_mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
    wire = _Wire(d.ifname)
    socks = []

    def member(port: int):
        s = us.socket(us.AF_INET6, us.SOCK_DGRAM)
        socks.append(s)
        s.bind(("::", port))
        s.settimeout(LIMIT)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                     struct.pack("16sI", socket.inet_pton(socket.AF_INET6, G6), 0))
        return s
    try:
        b = member(47401)
        assert [_mld_records(wire, kernel_mac) for _ in range(2)] == [[(4, G6)]] * 2
        a = member(47400)
        blob = os.urandom(3000)
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as k:
            k.bind((d.host_ip6, 0))
            k.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
            for s, port in ((a, 47400), (b, 47401)):
                k.sendto(blob, (G6, port))
                data, peer = s.recvfrom(65536)
                assert (data, peer[:2]) == (blob, k.getsockname()[:2])
            # a Destination Options header (PadN): the steering reads no port behind it (queue 0)
            k.setsockopt(socket.IPPROTO_IPV6, IPV6_DSTOPTS, b"\x00\x00\x01\x04\x00\x00\x00\x00")
            for to in (G6, d.usnet_ip6):
                k.sendto(b"behind a header to " + to.encode(), (to, 47401))
                data, peer = b.recvfrom(65536)
                assert (data, peer[:2]) == (b"behind a header to " + to.encode(), k.getsockname()[:2])
        a.close()
        b.close()
        assert [_mld_records(wire, kernel_mac) for _ in range(2)] == [[(3, G6)]] * 2
        usnetd, worker1 = _counts(d.path)
        assert usnetd.get("mld_reports") == 4 and usnetd.get("rx_handed_over") == 3, usnetd
        assert "mld_reports" not in worker1 and worker1.get("rx_group_datagrams") == 2, worker1
    finally:
        wire.close()
        for s in socks:
            s.close()


def test_a_source_specific_member_on_worker_1_is_reported_with_its_sources(tapd2):
    """b on worker 1's port joins the group from one source (IP_ADD_SOURCE_MEMBERSHIP): usnetd,
    which speaks for the netif, says ALLOW {source} twice (it was told the filter with the
    worker's answer; counting the membership any-source would say CHANGE_TO_EXCLUDE {}); b hears
    that source; its last source dropped, usnetd says BLOCK {source} twice. Worker 1 said nothing."""
    wire = _Wire(tapd2.ifname)
    mreqs = socket.inet_aton(G) + socket.inet_aton(tapd2.usnet_ip) + socket.inet_aton(tapd2.host_ip)
    from usnet import socket as us

    b = us.socket(us.AF_INET, us.SOCK_DGRAM)
    try:
        b.bind(("0.0.0.0", 47401))
        b.settimeout(LIMIT)
        b.setsockopt(IPP, 39, mreqs)  # IP_ADD_SOURCE_MEMBERSHIP
        for _ in range(2):
            frame = wire.igmp_from(tapd2.usnet_ip)
            got = [(r.rtype, r.maddr, list(r.srcaddrs)) for r in IGMPv3(bytes(frame[IP].payload))[IGMPv3mr].records]
            assert got == [(5, G, [tapd2.host_ip])]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k:
            k.bind((tapd2.host_ip, 0))
            k.setsockopt(IPP, socket.IP_MULTICAST_IF, socket.inet_aton(tapd2.host_ip))
            k.sendto(b"from the source", (G, 47401))
            assert b.recvfrom(100) == (b"from the source", k.getsockname())
        b.setsockopt(IPP, 40, mreqs)  # IP_DROP_SOURCE_MEMBERSHIP: the last source, so a leave
        for _ in range(2):
            frame = wire.igmp_from(tapd2.usnet_ip)
            got = [(r.rtype, r.maddr, list(r.srcaddrs)) for r in IGMPv3(bytes(frame[IP].payload))[IGMPv3mr].records]
            assert got == [(6, G, [tapd2.host_ip])]
        usnetd, worker1 = _counts(tapd2.path)
        assert usnetd.get("igmp_reports") == 4 and "igmp_reports" not in worker1, (usnetd, worker1)
    finally:
        b.close()
        wire.close()
