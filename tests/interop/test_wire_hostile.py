"""A hostile host on the link (issue 14, item 6): what usnet does with forged frames, beside Linux.

The link is a veth pair between two network namespaces the test makes: in
`peer` the kernel is an on-link host (10.77.0.1, fd00:77::1); in `us` the
usnet flow switch has the other end through the packet driver (10.77.0.2,
fd00:77::2). scapy forges the frames; they leave an AF_PACKET socket opened
in `peer` (so they reach usnet as any host's frames would) or, for the
comparison with Linux, one opened in `us` (so they reach the peer kernel).
One capture socket in `peer` sees both directions.

Synchronisation is by causality, not time: the switch handles frames in
order, so after the hostile frames a sentinel (an echo request from the
peer) is sent, and everything usnet sent before its echo reply is what the
hostile frames earned. The domain loop is driven by the test
(`serve_once(0)`), every wait bounded by a deadline.
"""

from __future__ import annotations

import itertools
import os
import select
import socket
import subprocess
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.domain.switch.neighbours import SKB_OVERHEAD, NeighbourCache
from usnet.drivers.base import Coalesced
from usnet.drivers.hostnet import NetNs, add_address6
from usnet.proto.wire.ipv4 import martian_source4
from usnet.proto.wire.ipv6 import martian_source6

PEER4, US4, SUBNET_BCAST = "10.77.0.1", "10.77.0.2", "10.77.0.255"
PEER6, US6 = "fd00:77::1", "fd00:77::2"
SILENT4 = "10.77.0.99"  # on-link, and nobody answers ARP for it
_seq = itertools.count()
ETH_P_ALL = 0x0003


def _in_netns(ns: str, fn):
    """Run `fn` in a thread that has entered netns `ns`: sockets it opens stay in that namespace."""
    return NetNs(ns).call(fn)


def _mac(b: bytes) -> str:
    return b.hex(":")


class Link:
    """Two namespaces joined by a veth; usnet's Domain on the `us` end, not started (the test drives it)."""

    def __init__(self, mtu: int = 1500, dev_mtu: int = 1500) -> None:
        from pyroute2 import IPRoute, NetNS, netns

        n = next(_seq)
        tag = f"{os.getpid() % 100000}{n}"
        self.ns_peer, self.ns_us = f"uwh-p-{tag}", f"uwh-u-{tag}"
        self.if_peer, self.if_us = f"uwh{tag}p", f"uwh{tag}u"
        self._netns = netns
        self._made: list[str] = []
        self.socks: list[socket.socket] = []
        self.d = None
        try:
            for ns in (self.ns_peer, self.ns_us):
                netns.create(ns)
                self._made.append(ns)
            with IPRoute() as ipr:
                ipr.link("add", ifname=self.if_us, kind="veth", peer=self.if_peer)
                ipr.link("set", index=ipr.link_lookup(ifname=self.if_peer)[0], net_ns_fd=self.ns_peer)
                ipr.link("set", index=ipr.link_lookup(ifname=self.if_us)[0], net_ns_fd=self.ns_us)
            with NetNS(self.ns_us) as ns:
                idx = ns.link_lookup(ifname=self.if_us)[0]
                ns.link("set", index=idx, mtu=dev_mtu)
                ns.link("set", index=idx, state="up")
                self.us_idx = idx
            with NetNS(self.ns_peer) as ns:
                idx = ns.link_lookup(ifname=self.if_peer)[0]
                ns.link("set", index=idx, mtu=dev_mtu)
                ns.addr("add", index=idx, address=PEER4, prefixlen=24)
                ns.link("set", index=idx, state="up")
                add_address6(ns, idx, PEER6, 64)
                self.peer_idx = idx
                self.peer_mac = bytes.fromhex(ns.link("get", index=idx)[0].get("IFLA_ADDRESS").replace(":", ""))
            self.tx_peer = self._raw(self.ns_peer, self.if_peer)  # frames to usnet, and the capture
            self.tx_us = self._raw(self.ns_us, self.if_us)  # frames to the peer kernel
            from usnet.domain.loop import Domain
            from usnet.drivers.packet import PacketDriver

            drv = _in_netns(self.ns_us, lambda: PacketDriver(self.if_us, mtu=mtu))
            self.d = Domain()
            self.sw = self.d.add_netif("w", drv, f"{US4}/24", gateway=PEER4, address6=f"{US6}/64")
            self.us_mac = self.sw.netif.mac
            from usnet.client import Client

            self.c = Client.local(self.d)
        except BaseException:
            self.close()
            raise

    def _raw(self, ns: str, ifname: str) -> socket.socket:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind((ifname, 0))
            s.setblocking(False)
            return s

        s = _in_netns(ns, make)
        self.socks.append(s)
        return s

    def kernel_socket(self, family: int, kind: int, port: int) -> socket.socket:
        """A socket of the peer kernel, bound in its namespace."""
        def make() -> socket.socket:
            s = socket.socket(family, kind)
            s.bind((PEER4 if family == socket.AF_INET else PEER6, port))
            s.setblocking(False)
            return s

        s = _in_netns(self.ns_peer, make)
        self.socks.append(s)
        return s

    def sysctl_peer(self, key: str, value: int) -> None:
        subprocess.run(["ip", "netns", "exec", self.ns_peer, "sysctl", "-qw", f"{key}={value}"], check=True)

    def to_usnet(self, *frames) -> None:
        for f in frames:
            self.tx_peer.send(bytes(f))

    def to_kernel(self, *frames) -> None:
        for f in frames:
            self.tx_us.send(bytes(f))

    def run(self, until, what: str = "", timeout: float = 5.0) -> tuple[list, list]:
        """Drive usnet and capture on the peer's end until `until(from_usnet, from_kernel)`; the frames
        (scapy Ether) usnet sent and the peer kernel sent, in order."""
        from scapy.all import Ether

        from_us: list = []
        from_kernel: list = []
        deadline = time.monotonic() + timeout
        while not until(from_us, from_kernel):
            assert time.monotonic() < deadline, f"timed out {what}; usnet sent {from_us}, the kernel {from_kernel}"
            self.d.serve_once(0)
            select.select([self.tx_peer], [], [], 0.002)
            while True:
                try:
                    raw = self.tx_peer.recv(65536)
                except BlockingIOError:
                    break
                e = Ether(raw)
                if e.src == _mac(self.us_mac):
                    from_us.append(e)
                elif e.src == _mac(self.peer_mac):
                    from_kernel.append(e)
        return from_us, from_kernel

    def close(self) -> None:
        if self.d is not None:
            self.d.stop()
        for s in self.socks:
            s.close()
        for ns in self._made:
            try:
                self._netns.remove(ns)  # takes the veth with it
            except Exception:
                pass


@pytest.fixture
def link(request, netns):
    """Links made in the test's own namespace (`netns`), each between two namespaces of its own."""
    made: list[Link] = []

    def make(**kw) -> Link:
        lk = Link(**kw)
        made.append(lk)
        return lk

    yield make
    for lk in made:
        lk.close()


# -- frames ------------------------------------------------------------------------------


def eth_to_us(lk: Link, src_mac: bytes | None = None):
    from scapy.all import Ether

    return Ether(src=_mac(src_mac or lk.peer_mac), dst=_mac(lk.us_mac))


def eth_to_kernel(lk: Link):
    from scapy.all import Ether

    return Ether(src=_mac(lk.us_mac), dst=_mac(lk.peer_mac))


def echo_reply(ident: int):
    """A predicate: usnet has sent the echo reply of `ident` (IPv4 or IPv6)."""
    from scapy.all import ICMP, ICMPv6EchoReply

    def seen(frames) -> bool:
        return any((ICMP in f and f[ICMP].type == 0 and f[ICMP].id == ident)
                   or (ICMPv6EchoReply in f and f[ICMPv6EchoReply].id == ident) for f in frames)

    return seen


def sentinel(lk: Link, ident: int, v6: bool = False):
    """An echo request from the peer to usnet: its reply marks the end of what went before."""
    from scapy.all import ICMP, IP, ICMPv6EchoRequest, IPv6

    if v6:
        return eth_to_us(lk) / IPv6(src=PEER6, dst=US6) / ICMPv6EchoRequest(id=ident)
    return eth_to_us(lk) / IP(src=PEER4, dst=US4) / ICMP(id=ident)


def before_reply(frames, ident: int) -> list:
    """What usnet sent before the echo reply `ident`."""
    seen = echo_reply(ident)
    for i in range(len(frames)):
        if seen([frames[i]]):
            return frames[:i]
    raise AssertionError("no echo reply")


def warm_up(lk: Link, v6: bool = False) -> None:
    """One echo each way first, so neighbours are resolved and what follows is the hostile frames' alone."""
    lk.to_usnet(sentinel(lk, 1, v6))
    lk.run(lambda us, k: echo_reply(1)(us))


# -- one unresolved neighbour holds back nothing else -----------------------------------------


@pytest.mark.privileged
def test_a_spoofed_sender_nobody_answers_for_holds_back_only_itself(link):
    """A datagram from a silent on-link address gets its answer queued for ARP; the same flow's
    traffic to the kernel goes at once, while that address is still being asked for (the old
    switch parked the whole flow until ARP gave up, about three seconds)."""
    from scapy.all import IP, UDP

    lk = link()
    warm_up(lk)
    k = lk.kernel_socket(socket.AF_INET, socket.SOCK_DGRAM, 7001)
    s = lk.c.udp_socket("w", 7000)
    lk.to_usnet(eth_to_us(lk) / IP(src=SILENT4, dst=US4) / UDP(sport=4444, dport=7000) / b"spoofed")
    got: list = []

    def delivered(us, kern) -> bool:
        try:
            got.extend(s.recv_many(8, timeout=0))
        except BlockingIOError:
            pass
        return bool(got)

    lk.run(delivered)
    assert got == [(b"spoofed", (SILENT4, 4444))]
    s.sendto(b"answer to the spoofer", (SILENT4, 4444))  # waits for ARP: nobody will answer
    _asked, _ = lk.run(lambda us, k: any(f.haslayer("ARP") and f["ARP"].pdst == SILENT4 for f in us),
                      "the ARP request")
    s.sendto(b"to the kernel", (PEER4, 7001))  # a later batch of the same flow
    heard: list = []

    def kernel_heard(us, kern) -> bool:
        try:
            heard.append(k.recvfrom(2048))
        except BlockingIOError:
            pass
        return bool(heard)

    lk.run(kernel_heard)
    assert heard == [(b"to the kernel", (US4, 7000))]
    assert socket.inet_aton(SILENT4) in lk.sw.arp.pending  # still asked for: nothing waited for it


def test_neighbour_queue_keeps_its_budget_newest_last_and_accounts_for_every_packet():
    """The per-neighbour queue as Linux's unres_qlen_bytes: the oldest go first, each counted once."""
    c = NeighbourCache(queue_bytes=10 * (100 + SKB_OVERHEAD))
    ip = b"\x0a\x00\x00\x07"
    dropped: list = []
    for i in range(25):
        ask, out = c.wait(ip, i, 100, 0.0)
        assert ask == (i == 0)
        dropped += out
    assert dropped == list(range(15))
    assert c.learn(ip, b"\x02" * 6, 0.0) == list(range(15, 25))
    ask, out = c.wait(b"\x0a\x00\x00\x08", "huge", 1 << 20, 0.0)
    assert (ask, out) == (False, ["huge"])  # larger than the whole budget: refused, not queued


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 70000), max_size=60), st.integers(700, 300000))
def test_neighbour_queue_property(sizes, budget):
    c = NeighbourCache(queue_bytes=budget)
    ip = b"\x0a\x00\x00\x07"
    dropped: list = []
    for i, n in enumerate(sizes):
        dropped += c.wait(ip, i, n, 0.0)[1]
        p = c.pending.get(ip)
        assert p is None or p.nbytes <= budget
    kept = c.learn(ip, b"\x02" * 6, 0.0)
    assert sorted(dropped + kept) == list(range(len(sizes)))  # every packet once
    assert kept == sorted(kept)  # in order
    assert all(i > d for i in kept for d in dropped if sizes[d] + SKB_OVERHEAD <= budget)  # the oldest went


# -- martians --------------------------------------------------------------------------------


MARTIANS4 = [SUBNET_BCAST, "0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255", US4]


@pytest.mark.privileged
def test_martian_sources_are_dropped_and_counted_and_linux_agrees(link):
    """A SYN and a UDP datagram to closed ports and an echo request, from each martian source:
    usnet sends nothing at all for them (the old switch sent a SYN-ACK/RST to Ethernet broadcast,
    an ICMP port unreachable, an ARP request for itself); the peer kernel is as silent."""
    from scapy.all import ICMP, IP, TCP, UDP

    lk = link()
    warm_up(lk)
    hostile = []
    for src in MARTIANS4:
        for l4 in (TCP(sport=1234, dport=80, flags="S"), UDP(sport=1234, dport=9) / b"x", ICMP(id=77)):
            hostile.append((src, l4))
    lk.to_usnet(*[eth_to_us(lk) / IP(src=s, dst=US4) / l4 for s, l4 in hostile])
    lk.to_usnet(sentinel(lk, 2))
    from_us, _ = lk.run(lambda us, k: echo_reply(2)(us))
    assert before_reply(from_us, 2) == []
    assert lk.sw.drops["rx_martian_source"] == len(hostile)
    assert not lk.sw.arp.pending and US4 not in lk.sw.info()["arp"]
    # Linux, sent the same frames (to its own address), answers none of them either; a sound
    # SYN from us afterwards is answered, so silence is not a deaf kernel. Linux finds a subnet
    # broadcast source martian only when it looks the source up: with rp_filter on.
    lk.sysctl_peer("net.ipv4.conf.all.rp_filter", 1)
    lk.sysctl_peer(f"net.ipv4.conf.{lk.if_peer}.rp_filter", 1)
    kernel_hostile = [(s if s != US4 else PEER4, l4) for s, l4 in hostile]
    lk.to_kernel(*[eth_to_kernel(lk) / IP(src=s, dst=PEER4) / l4 for s, l4 in kernel_hostile])
    lk.to_kernel(eth_to_kernel(lk) / IP(src=US4, dst=PEER4) / TCP(sport=1235, dport=80, flags="S"))
    _, from_kernel = lk.run(lambda us, k: any(TCP in f and f[TCP].dport == 1235 for f in k))
    answered = [f for f in from_kernel if (TCP in f and f[TCP].dport == 1234)
                or (ICMP in f and f[ICMP].id == 77) or (ICMP in f and f[ICMP].type == 3)]
    assert answered == []


@pytest.mark.privileged
def test_frames_from_a_group_mac_are_dropped(link):
    """An echo request whose Ethernet source is multicast or broadcast is not answered (to that group)."""
    from scapy.all import ICMP, IP

    lk = link()
    warm_up(lk)
    for i, mac in enumerate((b"\x01\x00\x5e\x00\x00\x01", b"\xff" * 6)):
        lk.to_usnet(eth_to_us(lk, src_mac=mac) / IP(src=PEER4, dst=US4) / ICMP(id=50 + i))
    lk.to_usnet(sentinel(lk, 3))
    from_us, _ = lk.run(lambda us, k: echo_reply(3)(us))
    assert before_reply(from_us, 3) == []
    assert lk.sw.drops["rx_bad_mac_source"] == 2


MARTIANS6 = ["::ffff:10.77.0.1", "::1", "ff02::1", US6, "::"]


@pytest.mark.privileged
def test_ipv6_martian_sources_are_dropped_and_counted(link):
    """A SYN and a UDP datagram from a v4-mapped, loopback, multicast, our own or the unspecified
    source get nothing (the old switch sent a SYN-ACK/RST and port unreachables to them)."""
    from scapy.all import TCP, UDP, IPv6

    lk = link()
    warm_up(lk, v6=True)
    hostile = [eth_to_us(lk) / IPv6(src=s, dst=US6) / l4 for s in MARTIANS6
               for l4 in (TCP(sport=1234, dport=80, flags="S"), UDP(sport=1234, dport=9) / b"x")]
    lk.to_usnet(*hostile)
    lk.to_usnet(sentinel(lk, 4, v6=True))
    from_us, _ = lk.run(lambda us, k: echo_reply(4)(us))
    assert before_reply(from_us, 4) == []
    assert lk.sw.drops["rx_martian_source"] == len(hostile)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_martian_source4_agrees_with_ipaddress_row_and_column(src, prefix, host):
    import ipaddress

    net = ipaddress.IPv4Network((host, prefix), strict=False)
    local = int(net.network_address) + 1
    bcast = int(net.broadcast_address)
    a = ipaddress.IPv4Address(src)
    want = (a.is_multicast or a.is_loopback or a in ipaddress.IPv4Network("0.0.0.0/8")
            or src in (0xFFFFFFFF, bcast, local))
    assert bool(martian_source4(src, local, bcast)) == want
    col = martian_source4(np.array([src, local, 0x0A000001], np.uint32), local, bcast)
    assert col.tolist()[0] == want and col.tolist()[1]


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(min_size=16, max_size=16),
                 st.integers(0, 2**32 - 1).map(lambda v: bytes(10) + b"\xff\xff" + v.to_bytes(4, "big")),
                 st.just(bytes(15) + b"\x01"), st.just(bytes(16))))
def test_martian_source6_agrees_with_ipaddress(src):
    import ipaddress

    own = frozenset({ipaddress.IPv6Address(US6).packed})
    a = ipaddress.IPv6Address(src)
    want = a.is_multicast or a.is_loopback or a.ipv4_mapped is not None or src in own
    assert martian_source6(src, own) == want
    assert martian_source6(ipaddress.IPv6Address(US6).packed, own)


# -- ARP conflicts -----------------------------------------------------------------------------


@pytest.mark.privileged
def test_an_arp_claiming_our_address_is_a_conflict_defended_once_per_interval(link):
    """A gratuitous request and an is-at reply from another MAC, both claiming 10.77.0.2: no answer,
    nothing learnt, one announcement of our own (RFC 5227 §2.4 (b)), and only one in the interval."""
    from scapy.all import ARP, Ether

    lk = link()
    warm_up(lk)
    thief = b"\x02\x66\x66\x66\x66\x66"
    claims = [Ether(src=_mac(thief), dst="ff:ff:ff:ff:ff:ff")
              / ARP(op=1, hwsrc=_mac(thief), psrc=US4, hwdst="00:00:00:00:00:00", pdst=US4),
              Ether(src=_mac(thief), dst=_mac(lk.us_mac))
              / ARP(op=2, hwsrc=_mac(thief), psrc=US4, hwdst=_mac(lk.us_mac), pdst=US4)]
    lk.to_usnet(*claims)
    lk.to_usnet(sentinel(lk, 5))
    from_us, _ = lk.run(lambda us, k: echo_reply(5)(us))
    (announce,) = before_reply(from_us, 5)
    assert announce.dst == "ff:ff:ff:ff:ff:ff" and announce[ARP].op == 1
    assert announce[ARP].psrc == US4 and announce[ARP].pdst == US4 and announce[ARP].hwsrc == _mac(lk.us_mac)
    assert lk.sw.drops["arp_conflict"] == 2 and lk.sw.counts["arp_defended"] == 1
    assert US4 not in lk.sw.info()["arp"]
    lk.to_usnet(*claims)  # again, within DEFEND_INTERVAL: counted, not defended again
    lk.to_usnet(sentinel(lk, 6))
    from_us, _ = lk.run(lambda us, k: echo_reply(6)(us))
    assert before_reply(from_us, 6) == []
    assert lk.sw.drops["arp_conflict"] == 4 and lk.sw.counts["arp_defended"] == 1


def _kernel_neighbours(lk: Link) -> str:
    return subprocess.run(["ip", "-n", lk.ns_peer, "-4", "neigh", "show", "dev", lk.if_peer],
                          check=True, capture_output=True, text=True).stdout


@pytest.mark.privileged
def test_an_unsolicited_arp_reply_teaches_nothing_and_a_request_its_sender_as_with_linux(link):
    """A host says "10.77.0.50 is-at <me>" unasked, another asks for our address from 10.77.0.51:
    the peer kernel (arp_accept=0) makes no entry for the first and one for the second, and so does
    usnet, which used to believe any ARP aimed at it."""
    from scapy.all import ARP, ICMP, IP, Ether

    lk = link()
    warm_up(lk)
    liar, asker = "02:66:00:00:00:50", "02:66:00:00:00:51"

    def frames(dst_mac: str, dst_ip: str) -> list:
        return [Ether(src=liar, dst=dst_mac) / ARP(op=2, hwsrc=liar, psrc="10.77.0.50", hwdst=dst_mac, pdst=dst_ip),
                Ether(src=asker, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=asker, psrc="10.77.0.51", pdst=dst_ip)]

    lk.to_usnet(*frames(_mac(lk.us_mac), US4), sentinel(lk, 7))
    lk.to_kernel(*frames(_mac(lk.peer_mac), PEER4), eth_to_kernel(lk) / IP(src=US4, dst=PEER4) / ICMP(id=8))
    lk.run(lambda us, k: echo_reply(7)(us) and any(ICMP in f and f[ICMP].type == 0 and f[ICMP].id == 8 for f in k))
    ours, kernel = lk.sw.info()["arp"], _kernel_neighbours(lk)
    assert "10.77.0.51 " in kernel and "10.77.0.50 " not in kernel, kernel
    assert ours.get("10.77.0.51") == asker and "10.77.0.50" not in ours, ours
    assert lk.sw.drops["arp_unsolicited"] == 1


@pytest.mark.privileged
def test_a_tiny_fragmentation_needed_locks_the_path_mtu_where_linux_does(link):
    """A host says "fragmentation needed, next hop MTU 300" about a datagram to 10.77.0.2: the peer
    kernel's connected UDP socket locks its path MTU at min_pmtu (552), and usnet's IP layer, given
    the same report, locks at the same value (it used 576)."""
    import ipaddress

    from scapy.all import ICMP, IP, UDP, raw

    from usnet.proto.ip import IpLayer
    from usnet.proto.pmtu import IPV4_MIN_PMTU

    lk = link()
    k = lk.kernel_socket(socket.AF_INET, socket.SOCK_DGRAM, 4000)
    _in_netns(lk.ns_peer, lambda: k.connect((US4, 9)))
    quote = raw(IP(src=PEER4, dst=US4, flags="DF") / UDP(sport=4000, dport=9) / bytes(1000))[:28]
    lk.to_kernel(eth_to_kernel(lk) / IP(src=US4, dst=PEER4) / ICMP(type=3, code=4, nexthopmtu=300) / quote)
    route = ""
    for _ in range(100):  # the kernel takes the frame in its softirq: read until it shows
        route = subprocess.run(["ip", "-n", lk.ns_peer, "route", "get", US4], check=True,
                               capture_output=True, text=True).stdout
        if "mtu" in route:
            break
        select.select([], [], [], 0.01)
    assert f"mtu lock {IPV4_MIN_PMTU}" in route, route
    ip = IpLayer([ipaddress.IPv4Address(PEER4).packed])
    [err] = [e for e in ip.input(raw(IP(src=US4, dst=PEER4) / ICMP(type=3, code=4, nexthopmtu=300) / quote), 0.0)
             if hasattr(e, "mtu")]
    assert ip.lower_pmtu(err, 0.0) == IPV4_MIN_PMTU
    assert ip.pmtus.get(ipaddress.IPv4Address(US4).packed, 0.0) == (IPV4_MIN_PMTU, True)


@pytest.mark.privileged
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_ping_bigger_than_the_mtu_is_answered_in_fragments(link, v6):
    """ping(8) -s 4000 from the peer kernel: its request comes in fragments, which the switch puts
    together; the reply (4 KB) goes back in fragments, as a Linux host's does. It used to be handed
    to the device whole and refused there (a tx error), so ping got nothing."""
    lk = link()
    warm_up(lk, v6)
    cmd = ["ip", "netns", "exec", lk.ns_peer, "ping", "-6" if v6 else "-4", "-c", "1", "-W", "3",
           "-s", "4000", US6 if v6 else US4]
    ping = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lk.run(lambda us, k: ping.poll() is not None, "for ping to end")
    finally:
        if ping.poll() is None:
            ping.kill()
        out = ping.communicate()[0]
    assert ping.returncode == 0, out
    assert "1 received" in out and "4008 bytes from" in out, out
    assert lk.sw.netif.info()["driver_stats"]["tx_errors"] == 0


# -- damaged UDP to a closed port ---------------------------------------------------------------


def _damaged_udp(src: str, dst: str, v6: bool) -> list:
    """A bad checksum, a length field past the payload, one under 8; over IPv6 also no checksum."""
    from scapy.all import IP, UDP, IPv6, raw

    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    out = [ip / UDP(sport=1111, dport=9, chksum=0x1234) / b"bad sum",
           ip / UDP(sport=1111, dport=9, len=200) / b"short",
           ip / UDP(sport=1111, dport=9, len=4) / b"tiny"]
    if v6:
        out.append(ip / UDP(sport=1111, dport=9, chksum=0) / b"no sum")
    return [raw(p) for p in out]


@pytest.mark.privileged
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_damaged_udp_to_a_closed_port_earns_no_icmp_as_with_linux(link, v6):
    """Each damaged datagram is dropped silently and counted; a sound one to the same closed port
    gets its port unreachable, from usnet and from the peer kernel alike."""
    from scapy.all import ICMP, IP, UDP, ICMPv6DestUnreach, IPv6, UDPerror

    lk = link()
    warm_up(lk, v6)
    peer, us = (PEER6, US6) if v6 else (PEER4, US4)
    L3 = IPv6 if v6 else IP
    unreach = ICMPv6DestUnreach if v6 else ICMP

    def is_unreach(f) -> bool:
        return unreach in f and (v6 or f[ICMP].type == 3)

    bad = _damaged_udp(peer, us, v6)
    lk.to_usnet(*[eth_to_us(lk) / L3(p) for p in bad])
    lk.to_usnet(eth_to_us(lk) / L3(src=peer, dst=us) / UDP(sport=2222, dport=9) / b"sound")
    from_us, _ = lk.run(lambda u, k: any(is_unreach(f) for f in u))
    assert next(f for f in from_us if is_unreach(f))[UDPerror].sport == 2222  # the first answered is the sound one
    assert len([f for f in from_us if is_unreach(f)]) == 1
    assert lk.sw.drops["rx_udp_csum_error"] == 1 + v6 and lk.sw.drops["rx_udp_bad_length"] == 2
    # Linux: the same datagrams to its closed port earn nothing; the sound one its unreachable
    lk.to_kernel(*[eth_to_kernel(lk) / L3(p) for p in _damaged_udp(us, peer, v6)])
    lk.to_kernel(eth_to_kernel(lk) / L3(src=us, dst=peer) / UDP(sport=2222, dport=9) / b"sound")
    _, from_kernel = lk.run(lambda u, k: any(is_unreach(f) for f in k))
    kernel_unreach = [f for f in from_kernel if is_unreach(f)]
    assert len(kernel_unreach) == 1 and kernel_unreach[0][UDPerror].sport == 2222


# -- oversize frames ----------------------------------------------------------------------------


@pytest.mark.privileged
def test_a_frame_over_the_mtu_is_dropped(link):
    """On a link whose devices take 9,000 bytes but whose netif is 1,500: a 9,000-byte echo request
    and datagram are dropped (rx_oversize); a 1,500-byte one is answered."""
    from scapy.all import ICMP, IP, UDP

    lk = link(mtu=1500, dev_mtu=9000)
    warm_up(lk)
    s = lk.c.udp_socket("w", 7000)
    lk.to_usnet(eth_to_us(lk) / IP(src=PEER4, dst=US4) / ICMP(id=60) / bytes(9000 - 28),
                eth_to_us(lk) / IP(src=PEER4, dst=US4) / UDP(sport=1, dport=7000) / bytes(9000 - 28))
    lk.to_usnet(eth_to_us(lk) / IP(src=PEER4, dst=US4) / ICMP(id=7) / bytes(1500 - 28))
    from_us, _ = lk.run(lambda us, k: echo_reply(7)(us))
    assert before_reply(from_us, 7) == []
    assert lk.sw.drops["rx_oversize"] == 2
    with pytest.raises(BlockingIOError):
        s.recv(timeout=0)


def test_a_coalesced_super_segment_is_taken_past_the_mtu():
    """What the device says it aggregated (GRO/GSO: a Coalesced frame) is delivered whole; the same
    bytes as a plain frame are oversize."""
    from scapy.all import IP, UDP, Ether, raw

    from usnet.client import Client
    from usnet.domain.loop import Domain
    from usnet.drivers import MemWire

    d = Domain()
    try:
        w = MemWire()
        sw = d.add_netif("a", w.a, "10.9.0.1/24")
        s = Client.local(d).udp_socket("a", 5000, buf_size=16384)
        big = raw(Ether(dst=_mac(sw.netif.mac), src="02:00:00:00:00:09")
                  / IP(src="10.9.0.2", dst="10.9.0.1") / UDP(sport=7, dport=5000) / bytes(8000))
        per_flow: dict = {}
        sw._rx_frame(big, 0.0, per_flow)
        assert per_flow == {} and sw.drops["rx_oversize"] == 1
        sw._rx_frame(Coalesced(big), 0.0, per_flow)
        sw._deliver(per_flow)
        assert s.recvfrom(timeout=2) == (bytes(8000), ("10.9.0.2", 7))
    finally:
        d.stop()


# -- fragments: a memory budget per source ---------------------------------------------------------


@pytest.mark.privileged
def test_one_source_cannot_take_the_reassembly_memory(link):
    """One source sends the first 13 pieces of 16 datagrams that never complete (more than its
    quarter of the reassembly memory); its own oldest datagrams make room, and another source's
    datagram in pieces still arrives whole."""
    from scapy.all import IP, UDP, fragment

    lk = link()
    warm_up(lk)
    s = lk.c.udp_socket("w", 5000, buf_size=8192)
    flood = []
    for ident in range(16):
        pieces = fragment(IP(src="10.77.0.3", dst=US4, id=ident) / UDP(sport=1, dport=5000) / bytes(30000),
                          fragsize=1480)
        flood += pieces[:13]  # never the last: nothing completes
    for i in range(0, len(flood), 32):
        lk.to_usnet(*[eth_to_us(lk) / p for p in flood[i:i + 32]])
        lk.run(lambda us, k, i=i: lk.sw.frags["frag_in"] >= i + len(flood[i:i + 32]),
               f"{lk.sw.frags} {lk.sw.drops}")
    payload = bytes(range(256)) * 16
    good = fragment(IP(src=PEER4, dst=US4, id=99) / UDP(sport=2, dport=5000) / payload, fragsize=1480)
    lk.to_usnet(*[eth_to_us(lk) / p for p in good])
    got: list = []

    def arrived(us, k) -> bool:
        try:
            got.extend(s.recv_many(4, timeout=0))
        except BlockingIOError:
            pass
        return bool(got)

    lk.run(arrived, "the sound datagram")
    assert got == [(payload, (PEER4, 2))]
    r = lk.sw.reasm
    held = sum(p.nbytes for p in r.table.values() if p.src == socket.inet_aton("10.77.0.3"))
    assert held <= r.source_bytes < r.max_bytes
    assert lk.sw.frags["frag_evicted"] > 0
