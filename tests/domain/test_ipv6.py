"""IPv6 through the flow switch and the stack, over memwire (no root).

Two parts. The switch is driven by hand: the test is the other end of the
wire and speaks scapy-built frames to netif "b" (fd00:9::2/64), reading
back what the switch answers (Neighbour Discovery, echo, errors) and
decoding it with scapy, an independent implementation. Then TCP over IPv6
between two usnet stacks (usnet.socket, AF_INET6) on one embedded domain,
digest-checked both ways.

No sleeps: the hand-driven tests run the domain loop themselves
(`serve_once(0)`), the socket tests wait in blocking calls with timeouts.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import random
import socket
import threading

import pytest
from scapy.all import IP, TCP, UDP, Ether, raw
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    in6_chksum,
)
from scapy.utils6 import in6_getnsma, in6_getnsmac, in6_mactoifaceid

from tests.helpers.util import send_raw
from usnet import socket as us
from usnet.abi import protocol as P
from usnet.abi.events import EventType, TxDropReason
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.drivers import block
from usnet.drivers.memwire import MemWire

ME, PEER, OTHER = "fd00:9::2", "fd00:9::1", "fd00:9::77"
ME4 = "10.9.0.2"


def _mac(b: bytes) -> str:
    return b.hex(":")


def _nsma(addr: str) -> str:
    """addr's solicited-node multicast group, computed by scapy."""
    return socket.inet_ntop(socket.AF_INET6, in6_getnsma(socket.inet_pton(socket.AF_INET6, addr)))


def _nsma_mac(addr: str) -> str:
    """The Ethernet address of addr's solicited-node group, computed by scapy."""
    return in6_getnsmac(in6_getnsma(socket.inet_pton(socket.AF_INET6, addr)))


def _checksum_ok(p) -> bool:
    """scapy recomputes the upper-layer checksum of `p` (ICMPv6, TCP or UDP) and agrees."""
    up = p[IPv6].payload
    name = "chksum" if "chksum" in up.fields else "cksum"
    q = Ether(raw(p))
    delattr(q[IPv6].payload, name)
    return getattr(Ether(raw(q))[IPv6].payload, name) == getattr(up, name)


class Wire6:
    """Netif "b" of a domain (10.9.0.2/24, fd00:9::2/64) with the test at the other end of its wire."""

    def __init__(self) -> None:
        self.d = Domain()
        self.w = MemWire()
        self.sw = self.d.add_netif("b", self.w.b, f"{ME4}/24", address6=f"{ME}/64")
        self.mymac = _mac(self.w.b.mac)
        self.peer_mac = _mac(self.w.a.mac)
        self.c = Client.local(self.d)

    def ll6(self) -> str:
        """Our link-local address as scapy derives it from the MAC (modified EUI-64)."""
        return str(ipaddress.IPv6Address("fe80::" + in6_mactoifaceid(self.mymac)))

    def frame(self, ip, dst_mac: str | None = None) -> bytes:
        return raw(Ether(src=self.peer_mac, dst=dst_mac or self.mymac) / ip)

    def run(self, frames: list[bytes] = (), rounds: int = 3) -> list:
        """Put `frames` on the wire to the switch, run the domain loop, return what it sent back."""
        if frames:
            self.w.a.send_batch(list(frames))
        for _ in range(rounds):
            self.d.serve_once(0)
        return [Ether(f) for f in block.expand(self.w.a.recv_batch(4096))]

    def ns(self, target: str, src: str = PEER, hlim: int = 255, slla: bool = True, dst: str | None = None):
        ip = IPv6(src=src, dst=dst or _nsma(target), hlim=hlim) / ICMPv6ND_NS(tgt=target)
        if slla:
            ip = ip / ICMPv6NDOptSrcLLAddr(lladdr=self.peer_mac)
        return self.frame(ip, _nsma_mac(target) if dst is None else None)

    def introduce(self) -> None:
        """The peer asks for us once, so the switch knows the peer's MAC (as an ARP request does)."""
        (na,) = self.run([self.ns(ME)])
        assert ICMPv6ND_NA in na
        assert self.sw.info()["nd"] == {PEER: self.peer_mac}

    def flow(self, proto: int, port: int, remote: tuple[str, int] | None = None):
        ch, info = self.c.open_flow("b", proto, port, remote, family=6)
        ch.setblocking(False)
        return ch, info

    def stop(self) -> None:
        self.d.stop()


@pytest.fixture
def w6():
    w = Wire6()
    yield w
    w.stop()


def recv_raw(ch) -> list[bytes]:
    try:
        pkts = ch.recv(4096, 0)
    except BlockingIOError:
        return []
    out = [bytes(ch.view(p)) for p in pkts]
    ch.free(pkts)
    return out


# -- Neighbour Discovery ------------------------------------------------------------------------


def test_neighbour_solicitation_for_our_address_is_answered_and_the_asker_learnt(w6):
    (na,) = w6.run([w6.ns(ME)])
    assert na[Ether].dst == w6.peer_mac and na[Ether].src == w6.mymac and na[Ether].type == 0x86DD
    assert (na[IPv6].src, na[IPv6].dst, na[IPv6].hlim, na[IPv6].nh) == (ME, PEER, 255, 58)
    adv = na[ICMPv6ND_NA]
    assert (adv.tgt, adv.R, adv.S, adv.O) == (ME, 0, 1, 1)
    assert na[ICMPv6NDOptDstLLAddr].lladdr == w6.mymac
    assert na[IPv6].plen == len(raw(na[IPv6].payload))
    assert _checksum_ok(na)
    assert w6.sw.info()["nd"] == {PEER: w6.peer_mac}  # learnt from the source link-layer option
    assert w6.sw.counts["nd_na_sent"] == 1 and not w6.sw.drops


def test_link_local_address_is_derived_from_the_mac_and_answered(w6):
    ll = w6.ll6()
    assert w6.sw.info()["netif"]["link_local6"] == ll
    (na,) = w6.run([w6.ns(ll, src="fe80::1")])
    assert (na[IPv6].src, na[IPv6].dst, na[ICMPv6ND_NA].tgt) == (ll, "fe80::1", ll)
    assert na[ICMPv6NDOptDstLLAddr].lladdr == w6.mymac and _checksum_ok(na)


def test_unicast_solicitation_without_source_option_is_answered_to_the_sender(w6):
    """A reachability probe (unicast, no option): answered to the frame's source, nothing learnt."""
    (na,) = w6.run([w6.ns(ME, slla=False, dst=ME)])
    assert na[Ether].dst == w6.peer_mac and na[IPv6].dst == PEER and na[ICMPv6ND_NA].S == 1
    assert w6.sw.info()["nd"] == {}


def test_duplicate_address_detection_for_our_address_is_defended(w6):
    (na,) = w6.run([w6.ns(ME, src="::", slla=False)])
    assert na[Ether].dst == "33:33:00:00:00:01" and na[IPv6].dst == "ff02::1"
    assert (na[ICMPv6ND_NA].tgt, na[ICMPv6ND_NA].S, na[ICMPv6ND_NA].O) == (ME, 0, 1)
    assert _checksum_ok(na) and w6.sw.info()["nd"] == {}


@pytest.mark.parametrize("case,frame,reason", [
    ("someone_elses_target", lambda w: w.ns(OTHER, dst=ME), "nd_not_for_us"),
    ("someone_elses_group", lambda w: w.ns(OTHER), "rx_not_our_mac"),
    ("not_from_this_link", lambda w: w.ns(ME, hlim=64), "nd_bad"),
    ("option_not_the_frames_source", lambda w: w.frame(
        IPv6(src=PEER, dst=_nsma(ME)) / ICMPv6ND_NS(tgt=ME) / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:66"),
        _nsma_mac(ME)), "nd_bogus_sender"),
    ("dad_with_a_source_option", lambda w: w.ns(ME, src="::"), "nd_bad"),
    ("unsolicited_advertisement", lambda w: w.frame(
        IPv6(src=OTHER, dst=ME) / ICMPv6ND_NA(tgt=OTHER, S=1) / ICMPv6NDOptDstLLAddr(lladdr=w.peer_mac)),
     "nd_unsolicited"),
    ("advertisement_of_our_address", lambda w: w.frame(
        IPv6(src=PEER, dst="ff02::1") / ICMPv6ND_NA(tgt=ME, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=w.peer_mac),
        "33:33:00:00:00:01"), "nd_dup_addr"),
    ("solicited_advertisement_to_multicast", lambda w: w.frame(
        IPv6(src=PEER, dst="ff02::1") / ICMPv6ND_NA(tgt=PEER, S=1) / ICMPv6NDOptDstLLAddr(lladdr=w.peer_mac),
        "33:33:00:00:00:01"), "nd_bad"),
])
def test_neighbour_discovery_that_must_not_be_believed_is_counted_and_unanswered(w6, case, frame, reason):
    assert w6.run([frame(w6)]) == []
    assert w6.sw.drops == {reason: 1}
    assert w6.sw.info()["nd"] == {}


def test_echo_from_an_unknown_neighbour_waits_for_neighbour_discovery(w6):
    """The reply needs the asker's MAC: the switch solicits it, parks the reply, and sends it on the answer."""
    req = w6.frame(IPv6(src=PEER, dst=ME) / ICMPv6EchoRequest(id=0x1234, seq=7, data=b"ping6" * 20))
    (ns,) = w6.run([req])
    # a Neighbour Solicitation for the peer, from our link-local address, to its solicited-node group
    assert ns[Ether].dst == _nsma_mac(PEER) and ns[Ether].src == w6.mymac
    assert (ns[IPv6].src, ns[IPv6].dst, ns[IPv6].hlim) == (w6.ll6(), _nsma(PEER), 255)
    assert ns[ICMPv6ND_NS].tgt == PEER and ns[ICMPv6NDOptSrcLLAddr].lladdr == w6.mymac and _checksum_ok(ns)
    na = w6.frame(IPv6(src=PEER, dst=w6.ll6()) / ICMPv6ND_NA(tgt=PEER, S=1, O=1)
                  / ICMPv6NDOptDstLLAddr(lladdr=w6.peer_mac))
    (rep,) = w6.run([na])
    assert rep[Ether].dst == w6.peer_mac and (rep[IPv6].src, rep[IPv6].dst) == (ME, PEER)
    er = rep[ICMPv6EchoReply]
    assert (er.id, er.seq, er.data) == (0x1234, 7, b"ping6" * 20) and _checksum_ok(rep)
    assert w6.sw.counts["icmp6_echo"] == 1 and w6.sw.counts["nd_solicits"] == 1
    assert w6.sw.info()["nd"] == {PEER: w6.peer_mac} and not w6.sw.drops


def test_echo_to_the_link_local_address_is_answered_from_it(w6):
    w6.run([w6.ns(w6.ll6(), src="fe80::1")])
    (rep,) = w6.run([w6.frame(IPv6(src="fe80::1", dst=w6.ll6()) / ICMPv6EchoRequest(id=1, seq=2))])
    assert (rep[IPv6].src, rep[IPv6].dst) == (w6.ll6(), "fe80::1") and ICMPv6EchoReply in rep
    assert _checksum_ok(rep)


def test_neighbour_discovery_gives_up_on_a_silent_neighbour_and_tells_the_flow(w6):
    clock = [1000.0]
    w6.sw.clock = lambda: clock[0]
    ch, _ = w6.flow(17, 5000)
    pkts = [raw(IPv6(src=ME, dst=OTHER) / UDP(sport=5000, dport=9) / (b"lost %d" % i)) for i in range(3)]
    send_raw(ch, pkts)
    sent = []
    for _ in range(4 * w6.sw.nd.tries):
        sent += w6.run(rounds=1)
        clock[0] += w6.sw.nd.retry / 2
        if not w6.sw.nd.pending:
            break
    assert not w6.sw.nd.pending
    assert [p[ICMPv6ND_NS].tgt for p in sent] == [OTHER] * w6.sw.nd.tries  # asked, never answered
    assert w6.sw.drops == {"tx_neighbour_unresolved": 3}
    assert [(e.type, e.code) for e in ch.events()] == \
        [(EventType.TX_DROPPED, TxDropReason.NEIGHBOUR_UNRESOLVED)] * 3
    ch.close()


# -- flows: classification, unmatched ports ------------------------------------------------------


def test_udp_and_tcp_to_ipv6_flows_are_delivered_and_sent(w6):
    w6.introduce()
    u, uinfo = w6.flow(17, 5000)
    t, tinfo = w6.flow(6, 6000, remote=(PEER, 40000))
    assert (uinfo.family, uinfo.local_addr, uinfo.local_port) == (6, ME, 5000)
    assert (tinfo.family, tinfo.remote_addr, tinfo.remote_port) == (6, PEER, 40000)
    dgram = IPv6(src=PEER, dst=ME) / UDP(sport=1234, dport=5000) / b"hello six"
    seg = IPv6(src=PEER, dst=ME) / TCP(sport=40000, dport=6000, flags="S", seq=99)
    assert w6.run([w6.frame(dgram), w6.frame(seg)]) == []
    assert recv_raw(u) == [raw(dgram)] and recv_raw(t) == [raw(seg)]
    # and back: checked against the flow and framed to the peer's MAC
    out = raw(IPv6(src=ME, dst=PEER) / UDP(sport=5000, dport=1234) / b"hello back")
    send_raw(u, [out])
    (f,) = w6.run()
    assert f[Ether].dst == w6.peer_mac and f[Ether].type == 0x86DD and raw(f[IPv6]) == out
    assert not w6.sw.drops
    u.close()
    t.close()


def test_ipv4_and_ipv6_flows_share_a_port_number_but_not_their_traffic(w6):
    """Per-family port namespaces: a v4 listener never sees IPv6 packets for its port, nor the reverse."""
    w6.introduce()
    v6, _ = w6.flow(17, 5000)
    v4, info4 = w6.c.open_flow("b", 17, 5000)
    v4.setblocking(False)
    assert info4.family == 4 and info4.local_addr == ME4
    with pytest.raises(P.ControlError) as e:
        w6.flow(17, 5000)
    assert e.value.errno == errno.EADDRINUSE
    d6 = IPv6(src=PEER, dst=ME) / UDP(sport=1, dport=5000) / b"six"
    d4 = IP(src="10.9.0.1", dst=ME4) / UDP(sport=1, dport=5000) / b"four"
    w6.run([w6.frame(d6), w6.frame(d4)])
    assert recv_raw(v6) == [raw(d6)] and recv_raw(v4) == [raw(d4)]
    v4.close()
    # with only the IPv6 flow left, an IPv4 datagram for the port finds nobody
    w6.run([w6.frame(IP(src="10.9.0.1", dst=ME4) / UDP(sport=1, dport=5000) / b"x")])
    assert recv_raw(v6) == [] and w6.sw.drops == {"rx_no_flow": 1}
    v6.close()


def test_udp_to_an_unbound_port_gets_port_unreachable_quoting_it(w6):
    w6.introduce()
    d = IPv6(src=PEER, dst=ME) / UDP(sport=4444, dport=5999) / b"anyone?"
    (r,) = w6.run([w6.frame(d)])
    assert (r[IPv6].src, r[IPv6].dst) == (ME, PEER)
    du = r[ICMPv6DestUnreach]
    assert (du.type, du.code) == (1, 4) and _checksum_ok(r)
    assert raw(du.payload) == raw(d)  # the invoking packet, whole
    assert w6.sw.drops == {"rx_no_flow": 1}


def test_flows_have_the_global_address_not_the_link_local_one(w6):
    """A listener on fd00:9::2 port 5000 does not take datagrams to fe80::...:5000; those are unreachable."""
    w6.run([w6.ns(w6.ll6(), src="fe80::1")])
    ch, _ = w6.flow(17, 5000)
    (r,) = w6.run([w6.frame(IPv6(src="fe80::1", dst=w6.ll6()) / UDP(sport=1, dport=5000) / b"x")])
    assert (r[IPv6].src, r[IPv6].dst) == (w6.ll6(), "fe80::1") and ICMPv6DestUnreach in r
    assert recv_raw(ch) == [] and w6.sw.drops == {"rx_no_flow": 1}
    ch.close()


def test_tcp_syn_to_an_unbound_port_gets_a_reset(w6):
    w6.introduce()
    (r,) = w6.run([w6.frame(IPv6(src=PEER, dst=ME) / TCP(sport=4444, dport=5999, flags="S", seq=1000))])
    assert (r[IPv6].src, r[IPv6].dst) == (ME, PEER)
    assert (r[TCP].sport, r[TCP].dport, str(r[TCP].flags), r[TCP].ack) == (5999, 4444, "RA", 1001)
    assert _checksum_ok(r)
    assert w6.sw.counts["tcp_rst_sent"] == 1


# -- what a client may send ----------------------------------------------------------------------

_SRC = dict(src=ME, dst=PEER)
TX_CASES = [
    ("another_source_address", lambda: IPv6(src=OTHER, dst=PEER) / UDP(sport=5000, dport=9), "SPOOFED_SOURCE"),
    ("the_link_local_address", lambda: IPv6(src="fe80::99", dst=PEER) / UDP(sport=5000, dport=9),
     "SPOOFED_SOURCE"),
    ("the_peers_address", lambda: IPv6(src=PEER, dst=PEER) / UDP(sport=5000, dport=9), "SPOOFED_SOURCE"),
    ("unspecified_source", lambda: IPv6(src="::", dst=PEER) / UDP(sport=5000, dport=9), "SPOOFED_SOURCE"),
    ("another_source_port", lambda: IPv6(**_SRC) / UDP(sport=5001, dport=9), "SPOOFED_SOURCE"),
    ("tcp_in_a_udp_flow", lambda: IPv6(**_SRC) / TCP(sport=5000, dport=9), "WRONG_PROTOCOL"),
    ("icmpv6_in_a_udp_flow", lambda: IPv6(**_SRC) / ICMPv6EchoRequest(), "WRONG_PROTOCOL"),
    ("forged_neighbour_advert", lambda: IPv6(src=ME, dst="ff02::1", hlim=255)
     / ICMPv6ND_NA(tgt=PEER, O=1) / ICMPv6NDOptDstLLAddr(lladdr="02:00:00:00:00:66"), "WRONG_PROTOCOL"),
    ("hop_by_hop_header_before_udp", lambda: IPv6(**_SRC) / IPv6ExtHdrHopByHop() / UDP(sport=5001, dport=9),
     "WRONG_PROTOCOL"),
    ("fragment_header_before_udp", lambda: IPv6(**_SRC) / IPv6ExtHdrFragment(nh=17, offset=1, m=1, id=7)
     / UDP(sport=5000, dport=9), "FRAGMENT"),  # a later fragment of a datagram this flow never began
    ("ipv4_in_an_ipv6_flow", lambda: IP(src=ME4, dst="10.9.0.1") / UDP(sport=5000, dport=9), "NOT_IPV4"),
    ("payload_length_too_long", lambda: IPv6(plen=30, **_SRC) / UDP(sport=5000, dport=9) / b"x", "MALFORMED"),
    ("payload_length_too_short", lambda: IPv6(plen=8, **_SRC) / UDP(sport=5000, dport=9) / b"xyz",
     "MALFORMED"),
    ("header_truncated", lambda: raw(IPv6(**_SRC) / UDP(sport=5000, dport=9))[:39], "MALFORMED"),
    ("no_room_for_ports", lambda: IPv6(plen=2, nh=17, **_SRC) / b"\x13\x88", "MALFORMED"),
    ("larger_than_the_mtu", lambda: IPv6(**_SRC) / UDP(sport=5000, dport=9) / (b"x" * 1500), "TOO_BIG"),
    ("off_link_without_gateway", lambda: IPv6(src=ME, dst="2001:db8::1") / UDP(sport=5000, dport=9),
     "NO_ROUTE"),
    ("loopback_destination", lambda: IPv6(src=ME, dst="::1") / UDP(sport=5000, dport=9), "WRONG_DESTINATION"),
]


@pytest.mark.parametrize("case,build,reason", TX_CASES, ids=[c[0] for c in TX_CASES])
def test_a_client_cannot_send_what_its_ipv6_flow_does_not_allow(w6, case, build, reason):
    w6.introduce()
    ch, _ = w6.flow(17, 5000)
    bad = raw(build())
    good = raw(IPv6(**_SRC) / UDP(sport=5000, dport=9) / b"marker")
    send_raw(ch, [bad, good])
    out = w6.run()
    assert [raw(f[IPv6]) for f in out] == [good]  # only the marker left, after the bad one was judged
    key = "tx_" + reason.lower()
    assert w6.sw.drops == {key: 1}
    reason_code = TxDropReason[reason]
    assert [(e.type, e.code, e.value) for e in ch.events()] == [(EventType.TX_DROPPED, reason_code, len(bad))]
    ch.close()


def test_a_connected_ipv6_flow_sends_only_to_its_peer(w6):
    w6.introduce()
    ch, _ = w6.flow(6, 6000, remote=(PEER, 80))
    good = raw(IPv6(**_SRC) / TCP(sport=6000, dport=80, flags="S"))
    send_raw(ch, [raw(IPv6(src=ME, dst=OTHER) / TCP(sport=6000, dport=80)),
                  raw(IPv6(**_SRC) / TCP(sport=6000, dport=81)), good])
    assert [raw(f[IPv6]) for f in w6.run()] == [good]
    assert w6.sw.drops == {"tx_wrong_destination": 2}
    ch.close()


def test_datagram_socket_over_ipv6_checks_what_it_receives(w6):
    """usnet's UDP endpoint on an IPv6 flow: good datagrams in, bad or checksum-less ones counted."""
    w6.introduce()
    s = w6.c.udp_socket("b", 5000, family=6)
    assert s.getsockname() == (ME, 5000) and s.max_payload == 1500 - 48
    good = IPv6(src=PEER, dst=ME) / UDP(sport=1234, dport=5000) / b"good"
    no_sum = raw(IPv6(src=PEER, dst=ME) / UDP(sport=1234, dport=5000, chksum=0) / b"none")
    bad_sum = raw(IPv6(src=PEER, dst=ME) / UDP(sport=1234, dport=5000, chksum=0x1234) / b"bad!")
    w6.run([w6.frame(good), w6.frame(IPv6(no_sum)), w6.frame(IPv6(bad_sum))])
    assert s.recv_many(10, timeout=0) == [(b"good", (PEER, 1234))]
    assert s.rx_bad == 2
    s.sendto(b"answer", (PEER, 1234))
    (f,) = w6.run()
    assert (f[IPv6].src, f[IPv6].dst, f[UDP].sport, f[UDP].dport, f[UDP].load) == (ME, PEER, 5000, 1234, b"answer")
    assert f[UDP].len == 8 + 6 and _checksum_ok(f)
    s.close()


# -- garbage from the wire -----------------------------------------------------------------------


def _valid6(w: Wire6) -> list[bytes]:
    return [
        w.ns(ME),
        w.frame(IPv6(src=PEER, dst=ME) / ICMPv6EchoRequest(id=1, seq=1, data=b"e" * 40)),
        w.frame(IPv6(src=PEER, dst=ME) / UDP(sport=1, dport=5000) / (b"u" * 30)),
        w.frame(IPv6(src=PEER, dst=ME) / TCP(sport=1, dport=6000, flags="S")),
        w.frame(IPv6(src=PEER, dst=w.ll6()) / ICMPv6ND_NA(tgt=PEER, S=1) / ICMPv6NDOptDstLLAddr(lladdr=w.peer_mac)),
    ]


def _bad_checksum(f: bytes) -> bytes:
    b = bytearray(f)
    b[14 + 40 + 2] ^= 0x5A  # the ICMPv6 checksum's first byte
    return bytes(b)


def _short_ns(w: Wire6) -> bytes:
    """An NS cut to 20 bytes, with the checksum those 20 bytes need: only the NS parser can refuse it."""
    ip = IPv6(src=PEER, dst=ME, hlim=255, nh=58)
    body = bytearray(raw(ICMPv6ND_NS(tgt=ME, cksum=0))[:20])
    body[2:4] = in6_chksum(58, ip, bytes(body)).to_bytes(2, "big")
    return w.frame(ip / bytes(body))


def _hostile6(w: Wire6) -> list[bytes]:
    """Well-formed-looking IPv6 frames that must each be turned away (and counted once)."""
    eth = bytes.fromhex(w.mymac.replace(":", "")) + bytes.fromhex(w.peer_mac.replace(":", "")) + b"\x86\xdd"
    ns_ok = w.ns(ME)
    return [
        eth + b"\x60" + bytes(20),  # header cut short
        eth + raw(IPv6(src=PEER, dst=ME, version=4) / UDP(sport=1, dport=5000)),  # version 4 in an IPv6 frame
        eth + raw(IPv6(src=PEER, dst=ME, plen=200) / UDP(sport=1, dport=5000)),  # payload length past the frame
        _bad_checksum(ns_ok),  # ND with a bad checksum
        _bad_checksum(w.frame(IPv6(src=PEER, dst=ME) / ICMPv6EchoRequest(id=1, seq=1))),  # echo, bad checksum
        w.frame(IPv6(src=PEER, dst=_nsma(ME), hlim=255) / ICMPv6ND_NS(tgt="ff02::1"), _nsma_mac(ME)),  # mcast target
        w.frame(IPv6(src=PEER, dst=_nsma(ME), hlim=255) / ICMPv6ND_NS(tgt=ME)
                / raw(b"\x01\x00" + bytes(6)), _nsma_mac(ME)),  # an option of length 0
        _short_ns(w),  # NS cut short
        w.frame(IPv6(src=PEER, dst=w.ll6()) / ICMPv6ND_NA(tgt=PEER, S=1)),  # advert without its address
        w.frame(IPv6(src=PEER, dst=ME) / IPv6ExtHdrFragment(m=1) / UDP(sport=1, dport=5000)),  # a fragment
        w.frame(IPv6(src=PEER, dst=ME, nh=0)  # a hop-by-hop option we must not skip (type 0xc2)
                / (bytes([17, 0, 0xC2, 4, 0, 0, 0, 0]) + raw(UDP(sport=1, dport=5000, chksum=0)))),
        w.frame(IPv6(src="ff02::1", dst=ME) / UDP(sport=1, dport=5000)),  # multicast source
        w.frame(IPv6(src=PEER, dst=OTHER) / UDP(sport=1, dport=5000)),  # not our address
        w.frame(IPv6(src=PEER, dst=ME) / UDP(sport=1, dport=5000), "33:33:ff:00:00:77"),  # a group we are not in
        w.frame(IPv6(src=PEER, dst="ff02::2") / UDP(sport=1, dport=5000), "33:33:00:00:00:02"),  # all-routers
        w.frame(IPv6(src=PEER, dst="ff02::1") / UDP(sport=1, dport=5000), "33:33:00:00:00:01"),  # mcast UDP
        w.frame(IPv6(src=PEER, dst=ME, nh=58) / b"\x85\x00"),  # two bytes of ICMPv6
        w.frame(IPv6(src=PEER, dst=ME) / UDP(sport=1, dport=5000))[:14 + 40 + 2],  # UDP header cut (plen says 8)
    ]


def test_garbage_ipv6_and_nd_frames_are_counted_and_nothing_is_answered_or_learnt(w6):
    hostile = _hostile6(w6)
    rng = random.Random(6)
    fuzz = []
    for v in _valid6(w6):
        for cut in sorted(rng.sample(range(len(v)), 25)):
            fuzz.append(v[:cut])  # a valid frame cut short never reaches its end
    eth = bytes.fromhex(w6.mymac.replace(":", "")) + bytes(6) + b"\x86\xdd"
    fuzz += [eth + rng.randbytes(rng.randrange(0, 120)) for _ in range(2000)]
    frames = hostile + fuzz
    for i in range(0, len(frames), 256):  # must never raise
        assert w6.run(frames[i:i + 256], rounds=1) == []
    assert w6.sw.netif.rx_frames == len(frames)
    # each frame dropped and counted, or a fragment the reassembler took (and counts)
    assert sum(w6.sw.drops.values()) + w6.sw.frags["frag_in"] == len(frames), dict(w6.sw.drops)
    assert w6.sw.frags["frag_in"] > 0 and w6.sw.frags["frag_reassembled"] == 0
    assert w6.sw.info()["nd"] == {} and not w6.sw.nd.pending
    assert w6.sw.info()["counts"] == {}  # no echo answered, no advertisement sent, nothing learnt
    # (the hostile UDP datagram to all-nodes is a group's with no member on its port, as IPv4's)
    for reason in ("rx_malformed", "rx_not_our_ip", "rx_not_our_mac", "rx_martian_source",
                   "rx_group_no_member", "rx_runt", "nd_no_lladdr"):
        assert w6.sw.drops[reason] > 0, (reason, dict(w6.sw.drops))
    # ... and it still works
    (na,) = w6.run([w6.ns(ME)])
    assert ICMPv6ND_NA in na


def test_a_netif_without_ipv6_drops_ipv6_as_before_and_refuses_ipv6_flows():
    d = Domain()
    try:
        w = MemWire()
        sw = d.add_netif("b", w.b, f"{ME4}/24")
        c = Client.local(d)
        with pytest.raises(P.ControlError) as e:
            c.open_flow("b", 17, 5000, family=6)
        assert e.value.errno == errno.EADDRNOTAVAIL
        f = raw(Ether(dst=_mac(w.b.mac), src=_mac(w.a.mac)) / IPv6(src=PEER, dst=ME) / ICMPv6EchoRequest())
        w.a.send_batch([f])
        d.serve_once(0)
        d.serve_once(0)
        assert sw.drops == {"rx_ethertype": 1} and w.a.recv_batch(10) == []
    finally:
        d.stop()


# -- the control protocol ------------------------------------------------------------------------


def test_open_flow_takes_the_family_from_the_remote_address_or_the_request(w6):
    ch, info = w6.c.open_flow("b", 6, 0, ("fd00:9:0::1", 80))
    assert (info.family, info.local_addr, info.remote_addr) == (6, ME, PEER)  # canonical text
    ch.close()
    ch, info = w6.c.open_flow("b", 6, 0, ("10.9.0.1", 80))
    assert (info.family, info.local_addr) == (4, ME4)
    ch.close()
    for remote, family in ((PEER, 4), ("10.9.0.1", 6)):
        with pytest.raises(P.ControlError) as e:
            w6.c.open_flow("b", 6, 0, (remote, 80), family=family)
        assert e.value.code == "EINVAL"
    with pytest.raises(P.ControlError) as e:
        w6.c.open_flow("b", 6, 0, ("fe80::1%eth0", 80))
    assert e.value.code == "EINVAL"


def test_family_fields_are_optional_on_the_wire():
    """An IPv4 request or reply encodes as before (defaults are omitted); family 5 is refused."""
    assert P.encode(P.OpenFlow("a", 6)) == b"\x83\xa1t\xa8OpenFlow\xa5netif\xa1a\xa5proto\x06"
    assert P.decode_request(P.encode(P.OpenFlow("a", 6, family=6))).family == 6
    assert b"family" not in P.encode(P.FlowOpened(1, 0, "default", ME4, 1, None, None, 1500, "b"))
    bad = P.encode(P.OpenFlow("a", 6, family=6)).replace(b"\xa6family\x06", b"\xa6family\x05")
    with pytest.raises(P.ProtocolError):
        P.decode_request(bad)


# -- TCP over IPv6 between two usnet stacks ------------------------------------------------------

A6, B6 = "fd00:9::1", "fd00:9::2"


@pytest.fixture
def dual():
    """One domain, netifs "a" and "b" on a memwire, each with IPv4 and IPv6."""
    d = Domain()
    w = MemWire()
    d.add_netif("a", w.a, "10.9.0.1/24", address6=f"{A6}/64")
    d.add_netif("b", w.b, "10.9.0.2/24", address6=f"{B6}/64")
    d.start()
    yield d, Client.local(d)
    d.stop()


def _read_to_eof(sock) -> bytes:
    got = bytearray()
    while b := sock.recv(65536):
        got += b
    return bytes(got)


def _serve(srv, reply: bytes, results: list) -> None:
    try:
        conn, addr = srv.accept()
        with conn:
            got = _read_to_eof(conn)
            conn.sendall(hashlib.sha256(got).digest() + reply)
            results.append((addr, conn.getsockname(), conn.getpeername(), got))
    except Exception as e:  # reported by the test thread
        results.append(e)


def _exchange(c: Client, host: str, family: int, port: int, up: bytes, down: bytes):
    srv = us.socket(family, client=c, netif="b")
    srv.bind(("::" if family == us.AF_INET6 else "0.0.0.0", port))
    srv.listen()
    results: list = []
    t = threading.Thread(target=_serve, args=(srv, down, results), daemon=True)
    t.start()
    cl = us.create_connection((host, port), timeout=30, client=c, netif="a")
    names = (cl.family, cl.getsockname(), cl.getpeername())
    cl.sendall(up)
    cl.shutdown(us.SHUT_WR)
    got = _read_to_eof(cl)
    cl.close()
    t.join(30)
    srv.close()
    assert not t.is_alive()
    assert results and not isinstance(results[0], Exception), results
    return got, results[0], names


def test_tcp_over_ipv6_between_two_usnet_stacks_1_mb_each_way(dual):
    _, c = dual
    up, down = os.urandom(1_000_000), os.urandom(1_000_000)
    got, (addr, srv_name, srv_peer, received), (family, cl_name, cl_peer) = \
        _exchange(c, B6, us.AF_INET6, 8080, up, down)
    digest = lambda b: hashlib.sha256(b).digest()
    assert digest(received) == digest(up)  # client to server
    assert got[:32] == digest(up) and digest(got[32:]) == digest(down)  # and the server's answer back
    # the addresses, as the standard module gives them for AF_INET6: 4-tuples
    assert family == us.AF_INET6
    assert cl_peer == (B6, 8080, 0, 0) and cl_name[0] == A6 and cl_name[1] > 0 and cl_name[2:] == (0, 0)
    assert addr == cl_name and srv_peer == cl_name and srv_name == (B6, 8080, 0, 0)
    # it was IPv6 all the way, through the per-packet path, and nothing was dropped (but a segment
    # that came after its flow had gone: under load, a FIN retransmitted once the listener closed).
    # Read through the domain's status, under its lock: the domain thread may still be closing the
    # connections' flows, and a flow's description read beside that found its memfd closed (EBADF)
    netifs = {n["netif"]["name"]: n for n in c.status()["netifs"]}
    for n in netifs.values():
        assert not {k: v for k, v in n["drops"].items() if k != "rx_no_flow"}, n["drops"]
        assert n["drops"].get("rx_no_flow", 0) <= 2, n["drops"]
    assert netifs["a"]["nd"] and netifs["b"]["nd"]
    assert netifs["a"]["arp"] == {} == netifs["b"]["arp"]


def test_ipv4_still_works_beside_ipv6_on_the_same_netifs_and_port(dual):
    _d, c = dual
    srv6 = us.socket(us.AF_INET6, client=c, netif="b")
    srv6.setsockopt(us.IPPROTO_IPV6, us.IPV6_V6ONLY, 1)  # (dual stack, Linux's default, would take it)
    srv6.bind(("::", 8081))
    srv6.listen()  # the IPv6 port does not take the IPv4 one
    got, (addr, *_), (family, *_) = _exchange(c, "10.9.0.2", us.AF_INET, 8081, b"four", b"back")
    assert family == us.AF_INET and addr[0] == "10.9.0.1" and len(addr) == 2
    assert got[32:] == b"back"
    srv6.close()


def test_an_ipv4_socket_cannot_connect_to_an_ipv6_address_nor_the_reverse(dual):
    _, c = dual
    for family, host in ((us.AF_INET, B6), (us.AF_INET6, "10.9.0.2")):
        s = us.socket(family, client=c, netif="a")
        with pytest.raises(us.gaierror):
            s.connect((host, 80))
        s.close()


def test_connecting_to_an_ipv6_port_nobody_listens_on_is_refused(dual):
    _, c = dual
    with pytest.raises(ConnectionRefusedError):
        us.create_connection((B6, 9), timeout=10, client=c, netif="a")


def test_udp_over_ipv6_between_two_usnet_endpoints(dual):
    _, c = dual
    sa = c.udp_socket("a", 5000, family=6)
    sb = c.udp_socket("b", 6000, family=6)
    out = [bytes([i]) * (i * 5) for i in range(200)]
    sa.sendto(out[0], (B6, 6000))  # the first waits for Neighbour Discovery
    got = [sb.recvfrom(timeout=10)]
    assert sa.send_many(out[1:], (B6, 6000)) == len(out) - 1
    while len(got) < len(out):
        got += sb.recv_many(len(out) - len(got), timeout=10)
    assert got == [(p, (A6, 5000)) for p in out]
    sb.sendto(b"back", (A6, 5000))
    assert sa.recvfrom(timeout=10) == (b"back", (B6, 6000))
    assert sa.rx_bad == sb.rx_bad == 0


def test_getaddrinfo_takes_ipv6_literals():
    ((fam, typ, proto, _, sa),) = us.getaddrinfo("fd00::1", 80, type=us.SOCK_STREAM)
    assert (fam, typ, proto, sa) == (us.AF_INET6, us.SOCK_STREAM, 6, ("fd00::1", 80, 0, 0))
    assert us.getaddrinfo("FD00:0::1", "443")[0][4] == ("fd00::1", 443, 0, 0)
    assert us.getaddrinfo(None, 80, us.AF_INET6, flags=socket.AI_PASSIVE)[0][4] == ("::", 80, 0, 0)
    assert us.getaddrinfo(None, 80, us.AF_INET6)[0][4] == ("::1", 80, 0, 0)  # as the standard module
    assert us.getaddrinfo("10.1.2.3", 80)[0][:1] == (us.AF_INET,)
    with pytest.raises(us.gaierror):
        us.getaddrinfo("fd00::1", 80, us.AF_INET)
    with pytest.raises(us.gaierror):
        us.getaddrinfo("10.1.2.3", 80, us.AF_INET6)
    with pytest.raises(us.gaierror):
        us.getaddrinfo("example.invalid", 80, us.AF_INET6)
    s = us.socket(us.AF_INET6)
    assert s.getsockname() == ("::", 0, 0, 0)
    s.close()
