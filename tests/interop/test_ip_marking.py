"""IP_TTL, IPV6_UNICAST_HOPS, IP_TOS and IPV6_TCLASS on the wire, over a TAP (root).

A usnet socket's TCP segments (the SYN, the SYN-ACK of a listener, data) and UDP datagrams
leave with the TTL / hop limit it set, an accepted connection with its listener's, as Linux's
do. An AF_PACKET socket on the host end of the TAP sees each frame as the kernel got it.

The DSCP (the TOS octet's high six bits) is the flow switch's to write: it forces every packet
to its flow's service class, 0 without a low-latency lease (docs/abi.md, the trust boundary),
so on the wire the DSCP is 0 whatever the socket asked for, and the ECN bits are the client's
(a UDP socket's as it set them). With that rewrite switched off here, the socket's own DSCP is
what leaves: what usnet's stack writes is what the socket asked for.
"""

from __future__ import annotations

import socket
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from usnet import socket as us
from usnet.client import Client
from usnet.proto.wire import ecn

pytestmark = pytest.mark.privileged
LIMIT = 10.0  # seconds for any wait: only reached when something is broken
ETH_P_ALL = 0x0003


class Capture:
    """The frames on the host end of the TAP, from a usnet address, kept as scapy packets."""

    def __init__(self, ifname: str, src: str) -> None:
        self.src = src
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.2)
        self.seen: list = []

    def until(self, pred, what: str) -> list:
        """Read frames until `pred(frames from src)` holds; fails after LIMIT seconds."""
        deadline = time.monotonic() + LIMIT
        while not pred(self.seen):
            if time.monotonic() > deadline:
                raise AssertionError(f"never seen: {what}; saw {[p.summary() for p in self.seen]}")
            try:
                frame = self.sock.recv(70000)
            except TimeoutError:
                continue
            pkt = Ether(frame)
            ip = pkt[IP] if IP in pkt else pkt.getlayer(IPv6)  # None when neither
            if ip is not None and ip.src == self.src:
                self.seen.append(ip)
        return self.seen

    def close(self) -> None:
        self.sock.close()


def _ttl(ip) -> int:
    return ip.ttl if ip.version == 4 else ip.hlim


def _tos(ip) -> int:
    return ip.tos if ip.version == 4 else ip.tc


@pytest.fixture(params=[True, False], ids=["switch-dscp", "client-dscp"])
def rewrite(request, monkeypatch):
    """True: the switch forces the DSCP (as it does); False: that rewrite patched out, to see
    the client's own marking."""
    if not request.param:
        monkeypatch.setattr(ecn, "set_dscp_rows", lambda rows, off, dscp, version: 0)
        monkeypatch.setattr(ecn, "set_dscp", lambda buf, off, dscp: False)
    return request.param


def _tcp_both_ways(client, ifname: str, family: int, usnet_ip: str, host_ip: str, rewrite: bool) -> None:
    """A usnet client marked (TTL/hops 33, DSCP 46) to a kernel listener, and a kernel client to a
    usnet listener marked after listen (TTL/hops 99): SYN, SYN-ACK and data carry them."""
    v6 = family == socket.AF_INET6
    lvl, ttl_opt, tos_opt = ((socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, socket.IPV6_TCLASS) if v6
                             else (socket.IPPROTO_IP, socket.IP_TTL, socket.IP_TOS))
    cap = Capture(ifname, usnet_ip)
    k = socket.socket(family, socket.SOCK_STREAM)
    k.bind((host_ip, 0))
    k.listen()
    k.settimeout(LIMIT)
    u = us.socket(family, us.SOCK_STREAM, client=client, netif=ifname)
    lst = us.socket(family, us.SOCK_STREAM, client=client, netif=ifname)
    try:
        u.settimeout(LIMIT)
        u.setsockopt(lvl, ttl_opt, 33)
        u.setsockopt(lvl, tos_opt, 0xB8 | 3)  # TCP: the ECN bits are the stack's
        u.connect(k.getsockname()[:2])
        peer, _ = k.accept()
        u.sendall(b"marked" * 100)
        got = b""
        while len(got) < 600:
            got += peer.recv(1000)
        kport = k.getsockname()[1]
        segs = cap.until(lambda s: any(TCP in p and p[TCP].dport == kport and p[TCP].flags.S for p in s)
                         and any(TCP in p and p[TCP].dport == kport and len(p[TCP].payload) for p in s),
                         "the usnet client's SYN and data")
        mine = [p for p in segs if TCP in p and p[TCP].dport == kport]
        assert {_ttl(p) for p in mine} == {33}
        assert {_tos(p) >> 2 for p in mine} == ({0} if rewrite else {0xB8 >> 2})
        assert {_tos(p) & 3 for p in mine if p[TCP].flags.S} == {0}  # a SYN is never ECT

        lst.bind((usnet_ip, 0))
        lst.listen()
        lst.settimeout(LIMIT)
        lst.setsockopt(lvl, ttl_opt, 99)  # after listen: for what it accepts from now on
        uport = lst.getsockname()[1]
        kc = socket.create_connection(lst.getsockname()[:2], timeout=LIMIT)
        acc, _ = lst.accept()
        assert acc.getsockopt(lvl, ttl_opt) == 99  # inherited, as on Linux
        acc.sendall(b"from the accepted one")
        assert kc.recv(100) == b"from the accepted one"
        segs = cap.until(lambda s: any(TCP in p and p[TCP].sport == uport and len(p[TCP].payload) for p in s),
                         "the accepted connection's data")
        theirs = [p for p in segs if TCP in p and p[TCP].sport == uport]
        assert any(p[TCP].flags.S and p[TCP].flags.A for p in theirs)  # the SYN-ACK
        assert {_ttl(p) for p in theirs} == {99}
        kc.close()
        acc.close()
        peer.close()
    finally:
        u.close()
        lst.close()
        k.close()
        cap.close()


def _udp(client, ifname: str, family: int, usnet_ip: str, host_ip: str, rewrite: bool) -> None:
    """A usnet UDP socket's datagrams (one at a time and a batch) with its TTL/hops and TOS, ECN
    bits as set; -1 gives the default back."""
    v6 = family == socket.AF_INET6
    lvl, ttl_opt, tos_opt = ((socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, socket.IPV6_TCLASS) if v6
                             else (socket.IPPROTO_IP, socket.IP_TTL, socket.IP_TOS))
    cap = Capture(ifname, usnet_ip)
    k = socket.socket(family, socket.SOCK_DGRAM)
    k.bind((host_ip, 0))
    k.settimeout(LIMIT)
    u = us.socket(family, us.SOCK_DGRAM, client=client, netif=ifname)
    try:
        kaddr = k.getsockname()[:2]
        u.setsockopt(lvl, ttl_opt, 7)
        u.setsockopt(lvl, tos_opt, 0xB9)  # UDP: taken as given, ECN bits (ECT(1)) too
        u.sendto(b"one", kaddr)
        u._engine.d.send_many([b"two", b"three"], kaddr)  # the batch path and its templates
        u.setsockopt(lvl, ttl_opt, -1)
        u.setsockopt(lvl, tos_opt, 0)
        u.sendto(b"four", kaddr)
        assert [k.recv(10) for _ in range(4)] == [b"one", b"two", b"three", b"four"]
        dgrams = cap.until(lambda s: sum(UDP in p and p[UDP].dport == kaddr[1] for p in s) >= 4, "4 datagrams")
        marks = [(bytes(p[UDP].payload), _ttl(p), _tos(p)) for p in dgrams if UDP in p and p[UDP].dport == kaddr[1]]
        dscp = 0 if rewrite else 0xB8
        assert marks == [(b"one", 7, dscp | 1), (b"two", 7, dscp | 1), (b"three", 7, dscp | 1), (b"four", 64, 0)]
    finally:
        u.close()
        k.close()
        cap.close()


def test_ipv4_tcp_segments_carry_the_sockets_ttl_and_tos(tap_domain, rewrite):
    d, ifname, usnet_ip, host_ip = tap_domain
    _tcp_both_ways(Client.local(d), ifname, socket.AF_INET, usnet_ip, host_ip, rewrite)


def test_ipv4_udp_datagrams_carry_the_sockets_ttl_and_tos(tap_domain, rewrite):
    d, ifname, usnet_ip, host_ip = tap_domain
    _udp(Client.local(d), ifname, socket.AF_INET, usnet_ip, host_ip, rewrite)


def test_ipv6_tcp_segments_carry_the_sockets_hop_limit_and_traffic_class(tap_domain6, rewrite):
    d, ifname, usnet_ip, host_ip = tap_domain6
    _tcp_both_ways(Client.local(d), ifname, socket.AF_INET6, usnet_ip, host_ip, rewrite)


def test_ipv6_udp_datagrams_carry_the_sockets_hop_limit_and_traffic_class(tap_domain6, rewrite):
    d, ifname, usnet_ip, host_ip = tap_domain6
    _udp(Client.local(d), ifname, socket.AF_INET6, usnet_ip, host_ip, rewrite)
