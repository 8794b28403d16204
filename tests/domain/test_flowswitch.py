"""The flow switch over memwire (docs/architecture.md, "Nexuses"): no root needed.

Two netifs of one embedded domain are joined by a memwire; applications are
usnet UDP sockets (`Client.udp_socket`). scapy is the independent decoder and
builder of the packets a hostile client writes straight into its channel.

Synchronisation is by readiness only: a datagram is waited for on the
receiving socket, a state change by bounded polling of the domain with a
deadline, and a test that needs a precise order drives the domain loop itself
(`serve_once(0)`, `service_rx`).
"""

from __future__ import annotations

import errno
import io
import os
import random
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import ARP, ICMP, IP, TCP, UDP, Ether, IPv6, Padding, raw, rdpcap

from tests.helpers import PEERS
from tests.helpers.util import FakeClock, close_all, net_factory, recv_n, send_raw, wait_until
from usnet.abi.events import DefunctReason, EventType, TxDropReason
from usnet.abi.protocol import ControlError
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.domain.switch import rx
from usnet.domain.switch.neighbours import SKB_OVERHEAD
from usnet.domain.switch.ports import EPHEMERAL
from usnet.drivers import FaultInjector, MemWire, PcapTracer, block
from usnet.drivers.block import FrameBlock

A_IP, B_IP = "10.9.0.1", "10.9.0.2"
PEER = PEERS / "flow_peer.py"


# -- helpers ------------------------------------------------------------------------------


class Net:
    """One domain, a memwire, netif "a" (10.9.0.1) and netif "b" (10.9.0.2)."""

    def __init__(self, wire: MemWire | None = None, wrap_a: Callable | None = None,
                 wrap_b: Callable | None = None, start: bool = True) -> None:
        self.d = Domain()
        self.w = wire or MemWire()
        self.drv_a = wrap_a(self.w.a) if wrap_a else self.w.a
        self.drv_b = wrap_b(self.w.b) if wrap_b else self.w.b
        self.swa = self.d.add_netif("a", self.drv_a, f"{A_IP}/24")
        self.swb = self.d.add_netif("b", self.drv_b, f"{B_IP}/24")
        if start:
            self.d.start()
        self.c = Client.local(self.d)

    def flows(self, netif: str) -> list[dict]:
        for n in self.d.status()["netifs"]:
            if n["netif"]["name"] == netif:
                return n["flows"]
        raise KeyError(netif)


make_net = net_factory(Net)


@pytest.fixture
def net(make_net) -> Net:
    return make_net()


def payload(i: int) -> bytes:
    """The i-th test payload: its number, then a size and content that depend on it."""
    size = (i * 97) % 1468
    return i.to_bytes(4, "big") + bytes((i + j) & 0xFF for j in range(size))


def total_drops(sw) -> int:
    return sum(sw.drops.values())


def drive(n: Net, sock, done: Callable[[list], bool], rounds: int = 2000, batch: int = 256,
          step: Callable[[], None] | None = None) -> list:
    """Run the domain loop by hand, collecting what `sock` receives, until `done(got)` or `rounds`.

    Every step runs at once (nothing to wait for); `step` runs after each round
    (advance a simulated clock, watch the advisory).
    """
    got: list = []
    for _ in range(rounds):
        n.d.serve_once(0)
        if step is not None:
            step()
        try:
            got += sock.recv_many(batch, timeout=0)
        except BlockingIOError:
            pass
        if done(got):
            break
    return got


# -- UDP both ways ---------------------------------------------------------------------------


def test_udp_both_ways_payloads_arp_and_flow_table(net):
    sa = net.c.udp_socket("a", 5000)
    sb = net.c.udp_socket("b", 6000)
    assert sa.getsockname() == (A_IP, 5000) and sb.getsockname() == (B_IP, 6000)
    assert sa.max_payload == 1500 - 28
    # One datagram each way first: it waits for ARP. (Of a burst to an unresolved neighbour
    # only 64 wait: see test_burst_to_an_unresolved_neighbour_is_delivered_or_accounted.)
    sa.sendto(b"first", (B_IP, 6000))
    assert recv_n(sb, 1) == [(b"first", (A_IP, 5000))]
    sb.sendto(b"first back", (A_IP, 5000))
    assert recv_n(sa, 1) == [(b"first back", (B_IP, 6000))]
    # a asked; b learnt a from the request itself
    assert net.swa.counts["arp_requests"] >= 1 and net.swb.counts["arp_requests"] == 0
    n = 300
    a_to_b = [payload(i) for i in range(n)] + [b"", b"\xff" * sa.max_payload]
    b_to_a = [payload(i)[::-1] for i in range(n)] + [b"z", bytes(range(256)) * 5]
    for i in range(0, len(a_to_b), 50):
        assert sa.send_many(a_to_b[i:i + 50], (B_IP, 6000)) == len(a_to_b[i:i + 50])
    got_b = recv_n(sb, len(a_to_b))
    for i in range(0, len(b_to_a), 50):
        assert sb.send_many(b_to_a[i:i + 50], (A_IP, 5000)) == len(b_to_a[i:i + 50])
    got_a = recv_n(sa, len(b_to_a))

    assert [p for p, _ in got_b] == a_to_b  # intact and, on an ideal link, in order
    assert {src for _, src in got_b} == {(A_IP, 5000)}
    assert [p for p, _ in got_a] == b_to_a
    assert {src for _, src in got_a} == {(B_IP, 6000)}
    assert sa.rx_bad == sb.rx_bad == 0

    # ARP resolved each way, to the other side's MAC
    assert net.swa.info()["arp"] == {B_IP: net.w.b.mac.hex(":")}
    assert net.swb.info()["arp"] == {A_IP: net.w.a.mac.hex(":")}

    # the flow tables, as a client sees them in the domain's status
    (fa,) = net.flows("a")
    (fb,) = net.flows("b")
    assert (fa["proto"], fa["local_port"], fa["remote"], fa["suspended"]) == ("udp", 5000, None, False)
    assert (fb["proto"], fb["local_port"], fb["remote"], fb["suspended"]) == ("udp", 6000, None, False)
    assert fa["channel"] == sa.channel.id and fb["channel"] == sb.channel.id
    assert fa["stats"]["tx_packets"] == len(a_to_b) + 1 and fa["stats"]["rx_packets"] == len(b_to_a) + 1
    assert fb["stats"]["tx_packets"] == len(b_to_a) + 1 and fb["stats"]["rx_packets"] == len(a_to_b) + 1
    assert not fa["stats"].get("tx_dropped") and not fb["stats"].get("rx_dropped")
    assert net.swa.drops == {} and net.swb.drops == {}


def test_connected_flow_wins_over_listener(net):
    """A connected flow matches the full 5-tuple; other senders go to the listener."""
    lst = net.c.udp_socket("b", 6000)
    conn = net.c.udp_socket("b", 6001, remote=(A_IP, 5000))
    s5000 = net.c.udp_socket("a", 5000)
    s5001 = net.c.udp_socket("a", 5001)
    s5000.sendto(b"to conn", (B_IP, 6001))
    s5001.sendto(b"to nobody", (B_IP, 6001))  # not conn's remote: no listener on 6001 either
    s5001.sendto(b"to listener", (B_IP, 6000))
    assert recv_n(conn, 1) == [(b"to conn", (A_IP, 5000))]
    assert recv_n(lst, 1) == [(b"to listener", (A_IP, 5001))]
    wait_until(lambda: net.swb.drops["rx_no_flow"] == 1, 2, "the stray datagram to be counted")
    assert conn.channel.poll() == 0
    conn.send(b"reply")
    assert recv_n(s5000, 1) == [(b"reply", (B_IP, 6001))]


# -- anti-spoofing ----------------------------------------------------------------------------

# (case, which socket sends it: "listener" or "connected" (to B_IP:6000), packet builder, reason)
_U = lambda **kw: UDP(**{"sport": 5000, "dport": 6000, **kw})


def _ip(**kw):
    return IP(**{"src": A_IP, "dst": B_IP, **kw})


SPOOF_CASES = [
    ("another_flows_source_port", "listener",
     lambda: raw(_ip() / _U(sport=5001) / b"as the victim"), TxDropReason.SPOOFED_SOURCE),
    ("another_source_address", "listener",
     lambda: raw(_ip(src="10.9.0.77") / _U() / b"x"), TxDropReason.SPOOFED_SOURCE),
    ("the_peers_address", "listener",
     lambda: raw(_ip(src=B_IP) / _U() / b"x"), TxDropReason.SPOOFED_SOURCE),
    ("zero_source_address", "listener",
     lambda: raw(_ip(src="0.0.0.0") / _U() / b"x"), TxDropReason.SPOOFED_SOURCE),
    ("tcp_in_a_udp_flow", "listener",
     lambda: raw(_ip() / TCP(sport=5000, dport=6000, flags="S")), TxDropReason.WRONG_PROTOCOL),
    ("icmp_in_a_udp_flow", "listener",
     lambda: raw(_ip() / ICMP(type=8, id=5000) / b"ping"), TxDropReason.WRONG_PROTOCOL),
    ("raw_protocol_253", "listener",
     lambda: raw(_ip(proto=253) / (struct.pack("!HH", 5000, 6000) + b"xxxx")), TxDropReason.WRONG_PROTOCOL),
    ("forged_arp_payload", "listener",
     lambda: raw(ARP(op=2, hwsrc="02:00:00:00:00:66", psrc=B_IP, pdst=A_IP)), TxDropReason.NOT_IPV4),
    ("forged_arp_frame", "listener",
     lambda: raw(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:66")
                 / ARP(op=2, hwsrc="02:00:00:00:00:66", psrc=B_IP, pdst=A_IP)), TxDropReason.NOT_IPV4),
    ("ipv6", "listener",
     lambda: raw(IPv6() / _U() / b"x"), TxDropReason.NOT_IPV4),
    ("bad_version_5", "listener",
     lambda: b"\x55" + raw(_ip() / _U() / b"x")[1:], TxDropReason.NOT_IPV4),
    ("ihl_4", "listener",
     lambda: raw(_ip(ihl=4) / _U() / b"x"), TxDropReason.MALFORMED),
    ("ihl_0", "listener",
     lambda: raw(_ip(ihl=0) / _U() / b"x"), TxDropReason.MALFORMED),
    ("total_length_too_long", "listener",
     lambda: raw(_ip(len=20 + 8 + 10 + 7) / _U() / (b"x" * 10)), TxDropReason.MALFORMED),
    ("total_length_too_short", "listener",
     lambda: raw(_ip(len=20 + 8 + 2) / _U(len=18) / (b"x" * 10)), TxDropReason.MALFORMED),
    ("header_truncated", "listener",
     lambda: raw(_ip() / _U() / b"x")[:15], TxDropReason.MALFORMED),
    ("empty", "listener", lambda: b"", TxDropReason.MALFORMED),
    ("options_truncated", "listener",  # ihl says 60 bytes of header, 40 are there
     lambda: bytes([0x4F]) + raw(_ip(len=40) / _U() / (b"x" * 12))[1:40], TxDropReason.MALFORMED),
    ("no_room_for_ports", "listener",
     lambda: raw(_ip(proto=17, len=22) / b"\x13\x88"), TxDropReason.MALFORMED),
    ("larger_than_the_mtu", "listener",
     lambda: raw(_ip() / _U() / (b"x" * 1600)), TxDropReason.TOO_BIG),
    ("off_link_without_gateway", "listener",
     lambda: raw(_ip(dst="192.0.2.99") / _U() / b"x"), TxDropReason.NO_ROUTE),
    ("connected_to_another_address", "connected",
     lambda: raw(_ip(dst="10.9.0.3") / _U(sport=5002) / b"x"), TxDropReason.WRONG_DESTINATION),
    ("connected_to_another_port", "connected",
     lambda: raw(_ip() / _U(sport=5002, dport=6001) / b"x"), TxDropReason.WRONG_DESTINATION),
]


@pytest.fixture
def spoof_net(make_net):
    """A traced sender netif, a listener and a connected flow on it, ARP resolved both ways."""
    trace = io.BytesIO()
    n = make_net(wrap_a=lambda drv: PcapTracer(drv, trace))
    n.trace = trace
    n.victim = n.c.udp_socket("a", 5001)
    n.listener = n.c.udp_socket("a", 5000)
    n.connected = n.c.udp_socket("a", 5002, remote=(B_IP, 6000))
    n.sb = n.c.udp_socket("b", 6000)
    n.sb6001 = n.c.udp_socket("b", 6001)
    n.listener.sendto(b"warm up", (B_IP, 6000))
    assert recv_n(n.sb, 1) == [(b"warm up", (A_IP, 5000))]
    n.sb.sendto(b"warm up", (A_IP, 5000))
    assert recv_n(n.listener, 1) == [(b"warm up", (B_IP, 6000))]
    assert B_IP in n.swa.info()["arp"] and A_IP in n.swb.info()["arp"]
    return n


def _snapshot(n: Net) -> dict:
    return {"device_tx": n.w.a.stats.tx_frames, "traced": n.drv_a.writer.frames,
            "peer_rx": n.swb.netif.rx_frames, "drops": dict(n.swa.drops), "peer_drops": dict(n.swb.drops)}


@pytest.mark.parametrize("case,sender,build,reason", SPOOF_CASES, ids=[c[0] for c in SPOOF_CASES])
def test_spoofed_or_malformed_packet_is_dropped_counted_and_reported(spoof_net, case, sender, build, reason):
    n = spoof_net
    sock = n.listener if sender == "listener" else n.connected
    bad = build()
    assert list(sock.events()) == []
    before = _snapshot(n)

    send_raw(sock.channel, [bad])
    # A good datagram behind it on the same TX ring: once it arrives, the bad one was judged.
    sock.sendto(b"marker", (B_IP, 6000))
    assert recv_n(n.sb, 1) == [(b"marker", (A_IP, sock.getsockname()[1]))]

    key = "tx_" + reason.name.lower()
    assert n.swa.drops[key] == before["drops"].get(key, 0) + 1
    assert total_drops(n.swa) == sum(before["drops"].values()) + 1
    events = list(sock.events())
    assert [(e.type, e.code, e.value) for e in events] == [(EventType.TX_DROPPED, reason, len(bad))]
    assert list(n.victim.events()) == []
    flow = next(f for f in n.flows("a") if f["channel"] == sock.channel.id)
    assert flow["stats"]["tx_dropped"] == 1

    # Nothing but the marker reached the device, the wire, or the other side.
    assert n.w.a.stats.tx_frames == before["device_tx"] + 1
    assert n.swb.netif.rx_frames == before["peer_rx"] + 1
    assert dict(n.swb.drops) == before["peer_drops"]
    assert n.drv_a.writer.frames == before["traced"] + 1
    last = rdpcap(io.BytesIO(n.trace.getvalue()))[-1]
    assert last[Ether].src == n.w.a.mac.hex(":") and last[UDP].load == b"marker"
    assert n.sb.channel.poll() == 0 and n.sb6001.channel.poll() == 0 and n.victim.channel.poll() == 0


def test_bad_packets_in_one_batch_only_good_ones_leave_in_order(spoof_net):
    """Validation is per packet on the copy: good packets around bad ones go out, in order."""
    n = spoof_net
    sock = n.listener
    good = [raw(_ip(id=i) / _U() / (b"good %d" % i)) for i in range(5)]
    bad = [b[2]() for b in SPOOF_CASES if b[1] == "listener"]
    batch: list[bytes] = []
    for i, g in enumerate(good):
        batch.append(g)
        batch += bad[i::5]
    before = _snapshot(n)
    send_raw(sock.channel, batch)
    got = recv_n(n.sb, len(good))
    assert [p for p, _ in got] == [b"good %d" % i for i in range(5)]
    assert total_drops(n.swa) == sum(before["drops"].values()) + len(bad)
    events = list(sock.events())
    assert len(events) == len(bad) and {e.type for e in events} == {EventType.TX_DROPPED}
    assert n.w.a.stats.tx_frames == before["device_tx"] + len(good)
    assert n.swb.netif.rx_frames == before["peer_rx"] + len(good)


# -- garbage from the wire ------------------------------------------------------------------------


def _ipv4_header(src: bytes, dst: bytes, proto: int, total: int, ident: int, ff: int, ihl: int = 5) -> bytes:
    """An IPv4 header with a correct checksum (computed here, not by usnet.proto.wire)."""
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, ident, ff, 64, proto, 0, src, dst))
    hdr += bytes(ihl * 4 - 20)
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    hdr[10:12] = struct.pack("!H", ~s & 0xFFFF)
    return bytes(hdr)


def garbage(rng: random.Random, n: int, our_mac: bytes, our_ip: bytes, peer_mac: bytes) -> list[bytes]:
    """`n` frames no flow switch should accept: random, truncated, bad IPv4, bad ARP."""
    eth_ip = our_mac + peer_mac + b"\x08\x00"
    eth_arp = b"\xff" * 6 + peer_mac + b"\x08\x06"
    valid = [
        raw(Ether(dst=our_mac, src=peer_mac) / IP(src=A_IP, dst=B_IP) / UDP(sport=5000, dport=6000) / (b"v" * 100)),
        raw(Ether(dst=our_mac, src=peer_mac) / IP(src=A_IP, dst=B_IP) / ICMP(type=8) / (b"p" * 56)),
        raw(Ether(dst="ff:ff:ff:ff:ff:ff", src=peer_mac) / ARP(op=1, hwsrc=peer_mac, psrc=A_IP, pdst=B_IP)),
        raw(Ether(dst=our_mac, src=peer_mac) / ARP(op=2, hwsrc=peer_mac, psrc=A_IP, hwdst=our_mac, pdst=B_IP)),
    ]
    rb = rng.randbytes
    out = []
    for i in range(n):
        k = i % 8
        if k == 0:  # anything at all, often a runt
            f = rb(rng.randrange(0, 80))
        elif k == 1:  # random, but addressed to us or to everyone
            f = rng.choice((our_mac, b"\xff" * 6)) + rb(rng.randrange(0, 80))
        elif k == 2:  # a valid frame cut short (never reaching its end)
            v = rng.choice(valid)
            f = v[: rng.randrange(len(v))]
        elif k == 3:  # IPv4 ethertype, garbage after it
            f = eth_ip + bytes([0x40 | rng.randrange(16)]) + rb(rng.randrange(0, 60))
        elif k == 4:  # a correct IPv4 header with hostile fields: fragments, odd protocols, lengths
            ihl = rng.choice((5, 5, 6, 15))
            body = rb(rng.randrange(0, 40))
            total = ihl * 4 + len(body) - rng.choice((0, 0, 1, 3))
            ff = rng.choice((0x2000, 0x0001, 0x3FFF, 0x4000 | 0x2000))
            proto = rng.choice((17, 6, 1, 0, 255, rng.randrange(256)))
            src = rng.choice((b"\xc0\x00\x02" + rb(1), rb(4)))
            f = eth_ip + _ipv4_header(src, our_ip, proto, total, rng.randrange(65536), ff, ihl) + body
        elif k == 5:  # a correct IPv4 header to someone else, or to us with a short transport header
            ihl = 5
            if rng.random() < 0.5:
                dst = b"\x0a\x09\x00" + bytes([rng.choice((1, 3, 77, 200))])
                body = rb(rng.randrange(8, 40))
            else:
                dst = our_ip
                body = rb(rng.randrange(0, 4))
            proto = 17 if dst == our_ip else rng.choice((17, 6))
            f = eth_ip + _ipv4_header(b"\xc0\x00\x02\x07", dst, proto, 20 + len(body), 1, 0) + body
        elif k == 6:  # ARP ethertype, garbage after it
            f = eth_arp + rb(rng.randrange(0, 60))
        else:  # a well-formed ARP that must not be believed: bogus sender, or not for us
            op = rng.choice((1, 2, 3, 0xFFFF))
            if rng.random() < 0.5:  # sender hardware address: multicast, broadcast, or not the frame's source
                sha = rng.choice((b"\xff" * 6, b"\x01\x00\x5e\x00\x00\x01", rb(6)))
                tpa = our_ip
            else:
                sha = peer_mac
                tpa = b"\x0a\x09\x00" + bytes([rng.choice((0, 1, 3, 255))])
            arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, rb(4), rb(6), tpa)
            f = eth_arp + arp + rb(rng.randrange(0, 18))
        out.append(f)
    return out


def test_100000_garbage_frames_are_counted_and_the_switch_still_serves(make_net):
    n = make_net(wrap_b=lambda drv: FaultInjector(drv), start=False)
    sw = n.swb
    fi = n.drv_b
    frames = garbage(random.Random(20240611), 100_000, n.w.b.mac, bytes([10, 9, 0, 2]), n.w.a.mac)
    drops0, rx0, counts0 = total_drops(sw), sw.netif.rx_frames, dict(sw.counts)
    fi.inject(frames)
    calls = 0
    while fi.injected:
        sw.service_rx(256)  # must never raise
        calls += 1
        assert calls <= 1000
    assert sw.netif.rx_frames == rx0 + len(frames)
    # each frame was dropped and counted, or was a fragment the reassembler took (and counts)
    assert total_drops(sw) + sw.frags["frag_in"] == drops0 + len(frames), dict(sw.drops)
    assert sw.frags["frag_in"] > 0 and sw.frags["frag_reassembled"] == 0
    # every frame was turned away: nothing learnt, nothing answered as if valid
    assert sw.counts["arp_rx"] == counts0.get("arp_rx", 0)
    assert sw.counts["icmp_echo"] == counts0.get("icmp_echo", 0)
    assert sw.info()["arp"] == {}
    for reason in ("rx_runt", "rx_not_our_mac", "rx_malformed", "rx_no_flow",
                   "rx_not_our_ip", "arp_bogus_sender", "arp_not_for_us", "rx_ethertype"):
        assert sw.drops[reason] > 0, reason

    # ... and it still serves, both ways (ARP first: of a burst to an unresolved neighbour
    # only 64 wait, see test_burst_to_an_unresolved_neighbour_is_delivered_or_accounted)
    n.d.start()
    sa = n.c.udp_socket("a", 5000)
    sb = n.c.udp_socket("b", 6000)
    sa.sendto(b"resolve", (B_IP, 6000))
    assert recv_n(sb, 1) == [(b"resolve", (A_IP, 5000))]
    sa.send_many([b"after %d" % i for i in range(100)], (B_IP, 6000))
    assert [p for p, _ in recv_n(sb, 100)] == [b"after %d" % i for i in range(100)]
    sb.send_many([b"back %d" % i for i in range(100)], (A_IP, 5000))
    assert [p for p, _ in recv_n(sa, 100)] == [b"back %d" % i for i in range(100)]
    assert n.swb.info()["arp"][A_IP] == n.w.a.mac.hex(":")


# -- the port namespace --------------------------------------------------------------------------


def test_same_udp_port_twice_is_eaddrinuse(net):
    c2 = Client.local(net.d)
    s1 = net.c.udp_socket("a", 5000)
    for client, netif, remote in ((c2, "a", None), (net.c, "a", None), (c2, "a", (B_IP, 6000)), (c2, "b", None)):
        with pytest.raises(ControlError) as e:
            client.udp_socket(netif, 5000, remote=remote)
        assert e.value.code == "EADDRINUSE" and e.value.errno == errno.EADDRINUSE
    assert [f["local_port"] for f in net.flows("a")] == [5000]
    assert net.flows("b") == []
    sb = c2.udp_socket("b", 6000)  # the refused attempts left the first socket working
    s1.sendto(b"still mine", (B_IP, 6000))
    assert recv_n(sb, 1) == [(b"still mine", (A_IP, 5000))]


def test_ephemeral_ports_are_distinct_and_reach_their_socket(net):
    socks = [net.c.udp_socket("a", 0) for _ in range(40)]
    ports = [s.getsockname()[1] for s in socks]
    assert len(set(ports)) == len(ports)
    assert all(p in EPHEMERAL for p in ports)
    assert sorted(f["local_port"] for f in net.flows("a")) == sorted(ports)
    sb = net.c.udp_socket("b", 6000)
    for p in ports:
        sb.sendto(b"for %d" % p, (A_IP, p))
    for s, p in zip(socks, ports):
        assert recv_n(s, 1) == [(b"for %d" % p, (B_IP, 6000))]
    for s in socks:
        assert s.channel.poll() == 0


def test_port_is_free_again_after_close(net):
    c2 = Client.local(net.d)
    s1 = net.c.udp_socket("a", 5000)
    with pytest.raises(ControlError):
        c2.udp_socket("a", 5000)
    s1.close()
    assert net.flows("a") == []
    s2 = c2.udp_socket("a", 5000)
    (f,) = net.flows("a")
    assert f["local_port"] == 5000 and f["channel"] == s2.channel.id
    sb = net.c.udp_socket("b", 6000)
    sb.sendto(b"new owner", (A_IP, 5000))
    assert recv_n(s2, 1) == [(b"new owner", (B_IP, 6000))]


def test_ports_on_an_address_the_host_owns_are_shared_with_the_host_stack():
    """On 127.0.0.1 (the host has it) a usnet port is bound in the kernel too, and the reverse."""
    d = Domain()
    w = MemWire()
    try:
        d.add_netif("lo", w.a, "127.0.0.1/8")
        c = Client.local(d)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k:
            k.bind(("127.0.0.1", 0))
            with pytest.raises(ControlError) as e:
                c.udp_socket("lo", k.getsockname()[1])
            assert e.value.code == "EADDRINUSE"
        s = c.udp_socket("lo", 0)
        port = s.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k:
            with pytest.raises(OSError) as e:
                k.bind(("127.0.0.1", port))
            assert e.value.errno == errno.EADDRINUSE
        s.close()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k:
            k.bind(("127.0.0.1", port))  # released in the kernel as well
    finally:
        d.stop()


def _read_line(fd: int, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        r, _, _ = select.select([fd], [], [], max(left, 0))
        if not r:
            pytest.fail("the peer never signalled readiness")
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    return data


def test_sigkilled_client_loses_its_flows_ports_and_packets_within_a_second(net):
    sb = net.c.udp_socket("b", 6000)
    sock = net.d.socketpair_session()
    ready_r, ready_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, str(PEER), "--fd", str(sock.fileno()), "--netif", "a", "--port", "5000",
             "--to", f"{B_IP}:6000", "--send", "50", "--keep", "40", "--ready", str(ready_w)],
            pass_fds=(sock.fileno(), ready_w))
    finally:
        sock.close()  # only the child holds it now: its death is the domain's EOF
        os.close(ready_w)
    try:
        assert _read_line(ready_r, 10) == b"R 5000\n"
        got = recv_n(sb, 50)
        assert [p for p, _ in got] == [b"peer %d" % i for i in range(50)]
        # (a socketpair session carries the parent's credentials: find it by its channel)
        (flow,) = net.flows("a")
        assert flow["local_port"] == 5000
        cid = flow["channel"]
        (session,) = [s for s in net.d.status()["sessions"] if cid in s["channels"]]
        assert session["channels"] == [cid]
        with net.d.lock:
            pipe = net.d.channels[cid].pipe
            held = pipe.pool.counts()["held"] + pipe.pool.counts()["in_alloc"]
            inodes = memfd_inodes(pipe)
        assert held >= 40  # what it keeps, at least
        with pytest.raises(ControlError) as e:
            net.c.udp_socket("a", 5000)
        assert e.value.code == "EADDRINUSE"

        t_kill = time.monotonic()
        proc.kill()
        assert proc.wait(5) == -9

        def gone() -> bool:
            st = net.d.status()
            return (not any(s["id"] == session["id"] for s in st["sessions"])
                    and not any(f["local_port"] == 5000 for n in st["netifs"] for f in n["flows"]))

        wait_until(gone, 1.0 - (time.monotonic() - t_kill), "the dead client's flows to go")
        with net.d.lock:
            counts = pipe.pool.counts()
            assert pipe.defunct_reason == DefunctReason.OWNER_GONE
            assert counts["held"] == 0 and counts["in_alloc"] == 0, counts
            pipe.pool.check()
        assert cid not in net.d.channels
        with net.d.lock:
            assert_unmapped(pipe, inodes)
        # the port is free: another client binds it and is reached through it
        s = net.c.udp_socket("a", 5000)
        sb.sendto(b"after the kill", (A_IP, 5000))
        assert recv_n(s, 1) == [(b"after the kill", (B_IP, 6000))]
        s.sendto(b"and back", (B_IP, 6000))
        assert recv_n(sb, 1) == [(b"and back", (A_IP, 5000))]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(ready_r)


# -- flow advisory --------------------------------------------------------------------------------


def _count(events, t) -> int:
    return sum(1 for e in events if e.type == t)


def test_flow_suspended_and_resumed_without_losing_a_packet(make_net):
    """A link that holds 64 frames at a time, a sender of 1000: the flow is throttled, not dropped.

    The test drives the domain loop itself, so every step is observed in order.
    """
    n = make_net(wire=MemWire(queue_limit=64), start=False)
    n.swa.netif.high_water, n.swa.netif.low_water = 32, 8
    sa = n.c.udp_socket("a", 5000)
    sb = n.c.udp_socket("b", 6000, ring_size=2048, packets=2048)

    def pump(want: int, sock, watch=None) -> list:
        step = None if watch is None else lambda: watch.append(sa.channel.flow_advisory()["suspended"])
        return drive(n, sock, lambda got: len(got) >= want, rounds=20_000, step=step)

    sa.sendto(b"resolve", (B_IP, 6000))
    assert pump(1, sb) == [(b"resolve", (A_IP, 5000))]
    assert list(sa.events()) == []

    count = 1000
    data = [i.to_bytes(4, "big") * 100 for i in range(count)]
    assert sa.send_many(data, (B_IP, 6000)) == count
    seen: list[bool] = []
    got = pump(count, sb, seen)

    assert [p for p, _ in got] == data  # all of them, in order
    events = list(sa.events())
    assert _count(events, EventType.FLOW_SUSPENDED) >= 1
    assert _count(events, EventType.FLOW_SUSPENDED) == _count(events, EventType.FLOW_RESUMED)
    assert [e.type for e in events if e.type in (EventType.FLOW_SUSPENDED, EventType.FLOW_RESUMED)] == \
        [EventType.FLOW_SUSPENDED, EventType.FLOW_RESUMED] * _count(events, EventType.FLOW_SUSPENDED)
    assert all(e.value >= 32 for e in events if e.type == EventType.FLOW_SUSPENDED)
    assert all(e.value <= 8 for e in events if e.type == EventType.FLOW_RESUMED)
    assert True in seen  # the advisory in shared memory said so while it lasted
    adv = sa.channel.flow_advisory()
    assert adv["suspended"] is False and adv["suspensions"] == _count(events, EventType.FLOW_SUSPENDED)
    assert total_drops(n.swa) == 0 and total_drops(n.swb) == 0
    assert n.w.a.stats.tx_dropped > 0  # the link really was full, again and again
    (f,) = n.flows("a")
    assert f["stats"]["tx_packets"] == count + 1 and f["stats"]["suspended"] == adv["suspensions"]


@pytest.mark.parametrize("wire", [{"delay": 0.005}, {"rate_bps": 1e6}], ids=["delay", "rate"])
def test_frame_in_flight_on_a_slow_memwire_is_delivered(make_net, wire):
    """The fd of a slow link rings once, early; the loop must still take the frame when it is due."""
    clock = FakeClock()
    n = make_net(wire=MemWire(clock=clock, **wire), start=False)
    sa = n.c.udp_socket("a", 5000)
    sb = n.c.udp_socket("b", 6000)
    sa.sendto(b"hello", (B_IP, 6000))
    def tick() -> None:
        clock.now += 0.001

    # 200 simulated ms: far beyond the link's delay or serialisation time
    got = drive(n, sb, bool, rounds=200, batch=1, step=tick)
    assert got == [(b"hello", (A_IP, 5000))]


def test_flow_over_a_rate_limited_memwire_is_suspended_and_resumed_losing_nothing(make_net):
    """A 1 Mbit/s link holding 64 frames, a sender of 300 at once; simulated time, our own loop."""
    clock = FakeClock()
    n = make_net(wire=MemWire(rate_bps=1e6, queue_limit=64, clock=clock), start=False)
    n.swa.netif.high_water, n.swa.netif.low_water = 32, 8
    sa = n.c.udp_socket("a", 5000)
    sb = n.c.udp_socket("b", 6000)

    def pump(want: int, watch: list | None = None) -> list:
        def step() -> None:
            clock.now += 0.001
            if watch is not None:
                watch.append(sa.channel.flow_advisory()["suspended"])

        # 5 simulated seconds: 300 frames of 242 bytes take 0.6 s at 1 Mbit/s
        return drive(n, sb, lambda got: len(got) >= want, rounds=5000, step=step)

    sa.sendto(b"resolve", (B_IP, 6000))
    assert pump(1) == [(b"resolve", (A_IP, 5000))]
    count = 300
    data = [i.to_bytes(4, "big") * 50 for i in range(count)]
    assert sa.send_many(data, (B_IP, 6000)) == count
    seen: list[bool] = []
    got = pump(count, seen)
    assert [p for p, _ in got] == data
    assert True in seen and seen[-1] is False
    events = list(sa.events())
    assert _count(events, EventType.FLOW_SUSPENDED) >= 1
    assert _count(events, EventType.FLOW_SUSPENDED) == _count(events, EventType.FLOW_RESUMED)
    assert total_drops(n.swa) == 0 and total_drops(n.swb) == 0


def test_rate_limited_memwire_in_real_time_with_the_domain_thread(make_net):
    """The same over a running domain: a sending thread, a receiving one, nothing lost."""
    n = make_net(wire=MemWire(rate_bps=2e6, queue_limit=64))
    n.swa.netif.high_water, n.swa.netif.low_water = 32, 8
    sa = n.c.udp_socket("a", 5000)
    sb = n.c.udp_socket("b", 6000)
    sa.sendto(b"resolve", (B_IP, 6000))
    assert recv_n(sb, 1) == [(b"resolve", (A_IP, 5000))]
    count = 300  # 300 x 242-byte frames: ~0.3 s of a 2 Mbit/s link, written in a moment
    data = [i.to_bytes(4, "big") * 50 for i in range(count)]
    errors: list[BaseException] = []

    def send() -> None:
        try:
            for i in range(0, count, 20):
                sa.send_many(data[i:i + 20], (B_IP, 6000))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    got = recv_n(sb, count, timeout=10)
    t.join(5)
    assert not errors and not t.is_alive()
    assert [p for p, _ in got] == data
    events = list(sa.events())
    assert _count(events, EventType.FLOW_SUSPENDED) >= 1
    assert _count(events, EventType.FLOW_SUSPENDED) == _count(events, EventType.FLOW_RESUMED)
    adv = sa.channel.flow_advisory()
    assert adv["suspended"] is False and adv["suspensions"] == _count(events, EventType.FLOW_SUSPENDED)
    assert total_drops(n.swa) == 0 and total_drops(n.swb) == 0


def _burst_before_arp(n, count: int) -> tuple[list[bytes], list]:
    sa = n.c.udp_socket("a", 5000)
    sb = n.c.udp_socket("b", 6000)
    sent = [b"%03d" % i for i in range(count)]
    assert sa.send_many(sent, (B_IP, 6000)) == count
    got = drive(n, sb, lambda got: len(got) + total_drops(n.swa) >= count)
    return sent, [p for p, _ in got], list(sa.events())


def test_an_unresolved_neighbour_holds_back_only_its_own_packets(make_net):
    """One flow sends to 10.9.0.77 (nobody answers) and to b: b's datagrams go at once, while
    10.9.0.77 is still asked for; 10.9.0.77 holds no more than its own budget (unres_qlen_bytes),
    the oldest pushed out and reported. The old switch parked the whole flow until ARP gave up."""
    n = make_net(start=False)
    clock = FakeClock()
    n.swa.clock = clock  # simulated time stands still: ARP never gives up during the test
    charge = 14 + 28 + 8 + SKB_OVERHEAD  # each datagram: frame bytes and Linux's skb overhead
    n.swa.arp.queue_bytes = 64 * charge
    sa = n.c.udp_socket("a", 5000)
    sb = n.c.udp_socket("b", 6000)
    assert sa.send_many([b"lost %03d" % i for i in range(84)], ("10.9.0.77", 6000)) == 84
    n.d.serve_once(0)
    sent = [b"%d" % i for i in range(50)]  # within b's own budget while b is asked for
    assert sa.send_many(sent, (B_IP, 6000)) == len(sent)
    got = drive(n, sb, lambda got: len(got) >= len(sent), rounds=200)
    assert [p for p, _ in got] == sent
    pending = [item for _, item in n.swa.arp.pending[bytes([10, 9, 0, 77])].packets]
    assert [p[-8:] for _, p in pending] == [b"lost %03d" % i for i in range(20, 84)]  # the newest, in order
    assert n.swa.drops == {"tx_neighbour_unresolved": 20}
    events = list(sa.events())
    assert [(e.type, e.code) for e in events] == [(EventType.TX_DROPPED, TxDropReason.NEIGHBOUR_UNRESOLVED)] * 20


def test_burst_past_the_arp_queue_is_delivered_or_accounted(make_net):
    """A waiting batch larger than the neighbour's queue (64 here): 64 go out in order, the rest are counted
    and told."""
    n = make_net(start=False)
    n.swa.arp.queue_bytes = 64 * (14 + 28 + 3 + SKB_OVERHEAD)
    count = 200
    sent, payloads, events = _burst_before_arp(n, count)
    assert len(payloads) == 64  # what waited for the answer went out, in order
    assert payloads == [p for p in sent if p in set(payloads)]
    dropped = count - len(payloads)
    assert n.swa.drops == {"tx_neighbour_unresolved": dropped}
    assert [(e.type, e.code) for e in events] == \
        [(EventType.TX_DROPPED, TxDropReason.NEIGHBOUR_UNRESOLVED)] * dropped
    (f,) = n.flows("a")
    assert f["stats"]["tx_packets"] == len(payloads) and f["stats"]["tx_dropped"] == dropped


def test_arp_gives_up_on_a_silent_neighbour_and_says_so(make_net):
    """Nobody answers for 10.9.0.77: asked `tries` times, then its packets are dropped and reported."""
    n = make_net(start=False)
    clock = FakeClock()
    n.swa.clock = clock  # the switch's ARP timers on simulated time
    sa = n.c.udp_socket("a", 5000)
    assert sa.send_many([b"lost %d" % i for i in range(5)], ("10.9.0.77", 6000)) == 5
    tries = n.swa.arp.tries
    for _ in range(4 * tries):
        n.d.serve_once(0)
        clock.now += n.swa.arp.retry / 2
        if not n.swa.arp.pending:
            break
    assert not n.swa.arp.pending
    assert n.swa.counts["arp_requests"] == tries
    assert n.swb.drops["arp_not_for_us"] == tries  # b heard every request and kept out of it
    assert n.swa.drops["tx_neighbour_unresolved"] == 5
    events = list(sa.events())
    assert [(e.type, e.code) for e in events] == [(EventType.TX_DROPPED, TxDropReason.NEIGHBOUR_UNRESOLVED)] * 5
    assert "10.9.0.77" not in n.swa.info()["arp"]


def test_nonblocking_sender_on_a_stalled_flow_gets_eagain_without_leaking(make_net):
    """A full TX ring (nobody serves it, as with a suspended flow): partial counts, EAGAIN, no leak."""
    n = make_net(start=False)
    sa = n.c.udp_socket("a", 5000, ring_size=8, packets=64, max_packets=64)
    sb = n.c.udp_socket("b", 6000)
    sa.setblocking(False)
    first = sa.send_many([b"%d" % i for i in range(20)], (B_IP, 6000))
    assert 0 < first < 20  # what fitted, not an exception that hides it
    for _ in range(50):  # more than the pool holds, were anything kept per attempt
        with pytest.raises(BlockingIOError):
            sa.send_many([b"more"] * 10, (B_IP, 6000))
    got = drive(n, sb, lambda got: len(got) >= first)
    assert [p for p, _ in got] == [b"%d" % i for i in range(first)]
    assert sa.send_many([b"again"], (B_IP, 6000)) == 1  # the ring drained: sending works again


# -- the pcap tracer -------------------------------------------------------------------------------


def _check_frame(p) -> str:
    """Which kind of frame `p` is; asserts it is well formed (an independent decoder: scapy)."""
    assert Ether in p
    if ARP in p:
        a = p[ARP]
        assert (a.hwtype, a.ptype, a.hwlen, a.plen) == (1, 0x800, 6, 4) and a.op in (1, 2)
        assert a.hwsrc == p[Ether].src
        return "arp"
    assert IP in p, p.summary()
    ip = p[IP]
    assert ip.version == 4 and ip.ihl == 5
    pad = len(ip[Padding].load) if Padding in ip else 0
    assert ip.len == len(raw(ip)) - pad, "IP total length disagrees with the frame"
    ref = ip.copy()
    del ref.chksum
    assert IP(raw(ref)).chksum == ip.chksum, "bad IP header checksum"
    if ip.proto == 17:
        u = ip[UDP]
        assert u.len == ip.len - 20
        ref = ip.copy()
        del ref[UDP].chksum
        assert IP(raw(ref))[UDP].chksum == u.chksum, "bad UDP checksum"
        return "udp"
    assert ip.proto == 1, ip.summary()
    ref = ip.copy()
    del ref[ICMP].chksum
    assert IP(raw(ref))[ICMP].chksum == ip[ICMP].chksum, "bad ICMP checksum"
    return "icmp"


def test_pcap_trace_is_read_back_well_formed(make_net, tmp_path):
    path = tmp_path / "a.pcap"
    n = make_net(wrap_a=lambda drv: PcapTracer(drv, str(path)))
    sa = n.c.udp_socket("a", 5000)
    sb = n.c.udp_socket("b", 6000)
    out = [payload(i) for i in range(60)]
    back = [payload(i)[:7] for i in range(60)]
    sa.send_many(out, (B_IP, 6000))
    assert [p for p, _ in recv_n(sb, 60)] == out
    sb.send_many(back, (A_IP, 5000))
    assert [p for p, _ in recv_n(sa, 60)] == back
    sa.sendto(b"nobody listens", (B_IP, 7777))  # b answers with an ICMP port unreachable
    wait_until(lambda: n.swa.counts["rx_icmp_error"] == 1, 2, "the port unreachable to come back to sa's flow")
    written = n.drv_a.writer.frames
    n.d.stop()  # closes the device, which flushes and closes the trace

    pkts = rdpcap(str(path))
    assert len(pkts) == written
    kinds = [_check_frame(p) for p in pkts]
    assert kinds.count("udp") == 121 and kinds.count("icmp") == 1 and kinds.count("arp") >= 2
    udp_out = [bytes(p[UDP].payload) for p in pkts if UDP in p and p[IP].src == A_IP and ICMP not in p]
    udp_in = [bytes(p[UDP].payload) for p in pkts if UDP in p and p[IP].src == B_IP and ICMP not in p]
    assert udp_out == out + [b"nobody listens"] and udp_in == back
    (icmp,) = [p for p in pkts if ICMP in p]
    assert (icmp[ICMP].type, icmp[ICMP].code, icmp[IP].src) == (3, 3, B_IP)

    if shutil.which("tshark") is None:
        return
    # The payloads are test data: decode them as data, not as whatever protocol owns the port
    # (tshark's TAPA dissector calls a 4-byte datagram to port 5000 malformed TAPA).
    decode_as = [a for port in (5000, 6000, 7777) for a in ("-d", f"udp.port=={port},data")]
    r = subprocess.run(["tshark", "-r", str(path), "-o", "ip.check_checksum:TRUE",
                        "-o", "udp.check_checksum:TRUE", *decode_as],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = (r.stdout + r.stderr).lower()
    assert "malformed" not in text and "incorrect" not in text and "bad checksum" not in text
    assert len(r.stdout.splitlines()) == written


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=1472), min_size=1, max_size=6), st.booleans())
def test_datagram_headers_match_the_wire_builders_and_scapy(payloads, one_by_one):
    """The datagram socket's arithmetic checksums equal what wire/ and scapy compute, on the
    column-wise batch path (`send_many`) and the one-datagram path without numpy (`sendto`):
    scapy forges the same packet, and recomputes the same checksums."""
    from scapy.all import IP, UDP, raw

    import usnet
    from usnet.proto.wire.ipv4 import ip_bytes
    from usnet.proto.wire.udp import udp_ipv4_headers

    d = usnet.Domain()  # not started: the packets stay on the TX ring for us to read
    w = MemWire()
    d.add_netif("a", w.a, "10.9.0.1/24")
    c = usnet.Client.local(d)
    s = c.udp_socket("a", 5000)
    try:
        if one_by_one:
            for data in payloads:
                s.sendto(data, ("10.9.0.2", 6000))
        else:
            s.send_many(payloads, ("10.9.0.2", 6000))
        ch = s.channel
        for i, (pkt, data) in enumerate(zip(ch._tx.slots[: len(payloads)].tolist(), payloads)):
            ours = bytes(ch.view(pkt))
            assert ours == udp_ipv4_headers(ip_bytes("10.9.0.1"), ip_bytes("10.9.0.2"), 5000, 6000, data,
                                            ident=i + 1) + data
            assert ours == raw(IP(src="10.9.0.1", dst="10.9.0.2", id=i + 1, flags="DF")
                               / UDP(sport=5000, dport=6000) / data)
            p = IP(ours)
            del p.chksum
            del p[UDP].chksum
            assert raw(p) == ours
    finally:
        close_all(c, d, w)


@pytest.mark.parametrize("per_call", [8, 1], ids=["batch", "one-by-one"])
def test_datagram_with_a_bad_udp_checksum_is_counted_not_delivered(per_call):
    """The switch checks IP; the receiving application checks UDP, and refuses a bad sum
    (both receive paths: the column-wise batch, and one datagram without numpy)."""
    from scapy.all import IP, UDP, Ether, raw

    import usnet

    d = usnet.Domain()
    w = MemWire()
    fb = FaultInjector(w.b)
    d.add_netif("a", w.a, "10.9.0.1/24")
    sw_b = d.add_netif("b", fb, "10.9.0.2/24")
    c = usnet.Client.local(d)
    sb = c.udp_socket("b", 6000)
    try:
        good = raw(Ether(dst=sw_b.netif.mac, src=b"\x02\x00\x00\x00\x00\x01") / IP(src="10.9.0.1", dst="10.9.0.2")
                   / UDP(sport=5000, dport=6000) / b"payload!")
        bad = bytearray(good)
        bad[-1] ^= 0x01  # payload changed after the checksum was computed
        odd = raw(Ether(dst=sw_b.netif.mac, src=b"\x02\x00\x00\x00\x00\x01") / IP(src="10.9.0.1", dst="10.9.0.2")
                  / UDP(sport=5001, dport=6000) / b"odd")
        fb.inject([bytes(bad), good, odd])
        sw_b.service_rx()
        got: list = []
        while True:
            try:
                got += sb.recv_many(per_call, timeout=0)
            except BlockingIOError:
                break
        assert got == [(b"payload!", ("10.9.0.1", 5000)), (b"odd", ("10.9.0.1", 5001))]
        assert sb.rx_bad == 1
    finally:
        sb.close()
        d.stop()


# -- the batch data path ----------------------------------------------------------------


def test_mixed_batch_of_datagrams_arrives_intact_with_checksums_scapy_accepts(make_net, tmp_path):
    """Every length from 0 to the limit, odd and even, in one send_many: built column-wise.

    A pcap tracer on netif a records what left; scapy recomputes both checksums.
    """
    cap = tmp_path / "a.pcap"
    n = make_net(wrap_a=lambda d: PcapTracer(d, str(cap)))
    sa = n.c.udp_socket("a", 5000)
    sb = n.c.udp_socket("b", 6000, ring_size=2048, packets=2048)
    rng = random.Random(7)
    sizes = [0, 1, 2, 3, 4, 5, sa.max_payload, sa.max_payload - 1]
    sizes += [rng.randrange(0, sa.max_payload) for _ in range(300)]
    data = [bytes(rng.getrandbits(8) for _ in range(s)) for s in sizes]
    sa.sendto(b"arp first", (B_IP, 6000))  # a burst before ARP answers keeps only its neighbour's budget
    assert recv_n(sb, 1)[0][0] == b"arp first"
    assert sa.send_many(data, (B_IP, 6000)) == len(data)
    got = recv_n(sb, len(data))
    assert [p for p, _ in got] == data
    assert {a for _, a in got} == {(A_IP, 5000)}
    assert sb.rx_bad == 0
    n.d.stop()
    frames = [f for f in rdpcap(str(cap)) if UDP in f][1:]
    assert len(frames) == len(data)
    for f in frames:
        ip = f[IP]
        want_ip, want_udp = ip.chksum, ip[UDP].chksum
        del ip.chksum, ip[UDP].chksum
        again = IP(raw(ip))
        assert (again.chksum, again[UDP].chksum) == (want_ip, want_udp)


def test_corrupted_datagram_in_a_batch_is_counted_and_the_rest_delivered(make_net):
    """A payload bit flipped after the checksum was made: the receiver drops that one only."""
    n = make_net(start=False)
    sa = n.c.udp_socket("a", 5000)
    sb = n.c.udp_socket("b", 6000)
    good = [b"%03d" % i * 10 for i in range(20)]
    assert sa.send_many(good[:1], (B_IP, 6000)) == 1  # resolve the neighbour first
    assert drive(n, sb, bool, rounds=50) == [(good[0], (A_IP, 5000))]
    assert sa.send_many(good, (B_IP, 6000)) == 20
    # flip a payload byte of the 7th datagram while it sits in the TX ring
    ch = sa.channel
    tx = ch._tx
    pkt = tx.slots[(tx.prod - 20 + 6) & tx.mask]
    packets, _umd = ch.arrays()
    packets[pkt, 40] ^= 0xFF
    got = drive(n, sb, lambda got: len(got) >= 19, rounds=200, batch=64)
    assert [p for p, _ in got] == good[:6] + good[7:]
    assert sb.rx_bad == 1


def memfd_inodes(pipe) -> set[int]:
    """The inodes of a pipe's two memfds: how /proc/self/maps names its mappings, whatever the domain."""
    return {os.fstat(fd).st_ino for fd in (pipe.arena.shared_fd, pipe.arena.ro_fd)}


def mapped_inodes() -> set[int]:
    return {int(line.split()[4]) for line in Path("/proc/self/maps").read_text().splitlines()
            if "memfd:usnet:" in line}


def assert_unmapped(pipe, inodes: set[int]) -> None:
    """The destroyed pipe's arena is unmapped now, though the caller still references the pipe:
    every view of it was released on destroy (mmap.close() refuses while one exists)."""
    assert pipe.destroyed and pipe.arena.shared.closed and pipe.arena.ro.closed and not pipe.arena.lingering
    assert not inodes & mapped_inodes(), "the destroyed pipe's memory is still mapped in this process"


def test_a_closed_flows_memory_is_unmapped_at_once(net):
    """Traffic both ways through a flow, then close: the domain's mapping of its pool goes with
    it, not when the garbage collector finds the last object that reached its port."""
    sa = net.c.udp_socket("a", 5000)
    sb = net.c.udp_socket("b", 6000)
    pipe = net.d.channels[sa.channel.id].pipe
    with pipe.lock:
        inodes = memfd_inodes(pipe)
    assert inodes <= mapped_inodes()  # the domain's mapping and the (in-process) client's
    sa.send_many([b"to b %d" % i for i in range(40)], (B_IP, 6000))
    assert len(recv_n(sb, 40)) == 40
    sb.send_many([b"to a %d" % i for i in range(40)], (A_IP, 5000))
    assert len(recv_n(sa, 40)) == 40
    sa.close()
    wait_until(lambda: pipe.destroyed, 2.0, "the closed flow's pipe to be destroyed")
    with pipe.lock:
        assert_unmapped(pipe, inodes)
    s2 = net.c.udp_socket("a", 5000)  # the port is free again; the other flow never noticed
    s2.sendto(b"after the close", (B_IP, 6000))
    assert recv_n(sb, 1) == [(b"after the close", (A_IP, 5000))]


def test_a_busy_receivers_pool_takes_back_what_it_freed_instead_of_growing(net):
    """Packets the client freed wait on its FREE ring until the domain collects them; receive
    (and the ALLOC refill) collect them before the pool grows, so a receiver that never holds
    more than its rings' worth keeps its opening pool however many datagrams pass (growing
    instead walked the pool up to max_packets, a new page touched for each packet)."""
    sb = net.c.udp_socket("b", 6000, ring_size=64, packets=256, max_packets=4096)
    sa = net.c.udp_socket("a", 5000)
    pipe = net.d.channels[sb.channel.id].pipe
    sent: list[bytes] = []
    for r in range(60):
        batch = [b"%d.%d" % (r, i) for i in range(32)]
        assert sa.send_many(batch, (B_IP, 6000)) == 32
        sent += batch
        assert [p for p, _ in recv_n(sb, 32)] == batch
    assert len(sent) == 60 * 32 > pipe.schema.packets
    with pipe.lock:  # the domain's thread serves the pool
        assert pipe.pool.active == 256, f"the pool grew to {pipe.pool.active} packets"
        pipe.pool.check()


def test_what_a_flow_sent_before_closing_still_goes_out(make_net):
    """5000 datagrams, then close at once: the domain drains the TX ring before removing the flow."""
    n = make_net()
    sb = n.c.udp_socket("b", 6000, ring_size=8192, packets=8192)
    sa = n.c.udp_socket("a", 5000, ring_size=8192, packets=8192)
    sa.sendto(b"neighbour", (B_IP, 6000))  # resolved first: an unresolved one holds a bounded queue
    assert recv_n(sb, 1) == [(b"neighbour", (A_IP, 5000))]
    data = [i.to_bytes(4, "big") for i in range(5000)]
    assert sa.send_many(data, (B_IP, 6000)) == 5000
    sa.close()
    got = recv_n(sb, 5000)
    assert [p for p, _ in got] == data
    assert total_drops(n.swa) == 0 and total_drops(n.swb) == 0


def test_blocks_meet_every_impairment_of_the_link_frame_by_frame(make_net):
    """On a lossy link the switch's FrameBlocks are opened: each frame is lost or not on its own."""
    wire = MemWire(loss=0.3, seed=5)
    n = make_net(wire=wire)
    sa = n.c.udp_socket("a", 5000)
    sb = n.c.udp_socket("b", 6000, ring_size=2048, packets=2048)
    # ARP itself may be lost; retried after a second. Resolve with a few datagrams first.
    deadline = time.monotonic() + 10
    while not recv_n(sb, 1, timeout=0.2):
        assert time.monotonic() < deadline, "ARP never resolved over the lossy link"
        sa.sendto(b"hello", (B_IP, 6000))
    while recv_n(sb, 64, timeout=0.05):
        pass
    before = wire.dropped
    data = [i.to_bytes(4, "big") for i in range(1000)]
    assert sa.send_many(data, (B_IP, 6000)) == 1000
    wait_until(lambda: n.swa.netif.tx_frames >= 1000
               and not n.swa.netif.queued(n.swa.flows[next(iter(n.swa.flows))].id)[0],
               5, "the batch to leave")
    got = [p for p, _ in recv_n(sb, 1000, timeout=1)]
    lost = wire.dropped - before
    assert 0 < lost < 1000 and len(got) == 1000 - lost
    assert got == [p for p in data if p in set(got)]  # in order, none duplicated


@st.composite
def frames_and_blocks(draw) -> list:
    """A receive batch as a memwire hands it over: frames, and blocks of 1 to 12 frames."""
    items: list = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            items.append(draw(st.binary(min_size=1, max_size=40)))
        else:
            lens = draw(st.lists(st.integers(1, 40), min_size=1, max_size=12))
            data = np.frombuffer(draw(st.binary(min_size=40 * len(lens), max_size=40 * len(lens))),
                                 np.uint8).reshape(len(lens), 40).copy()
            items.append(FrameBlock(data, np.array(lens, np.uint32)))
    return items


@settings(max_examples=200, deadline=None)
@given(frames_and_blocks(), st.integers(0, 13))
def test_opening_small_blocks_keeps_every_frame_in_order_and_only_small_blocks_open(items, max_rows):
    out = block.open_small(items, max_rows)
    assert block.expand(out) == block.expand(items)
    assert all(len(x) > max_rows for x in out if type(x) is FrameBlock)
    big = [x for x in items if type(x) is FrameBlock and len(x) > max_rows]
    assert [x for x in out if type(x) is FrameBlock] == big  # the large ones pass through untouched
    if not any(type(x) is FrameBlock and len(x) <= max_rows for x in items):
        assert out is items


def test_a_small_block_from_the_wire_is_delivered_and_checked_as_its_frames_would_be(make_net):
    """Row by row (block.open_small) or column-wise, the switch's verdicts are the same."""
    n = make_net(start=False)
    sb = n.c.udp_socket("b", 6000)
    good = [bytes(Ether(dst=n.swb.netif.mac, src=n.swa.netif.mac) / IP(src=A_IP, dst=B_IP)
                  / UDP(sport=5000, dport=6000) / (b"%d" % i)) for i in range(3)]
    to_no_flow = bytes(Ether(dst=n.swb.netif.mac, src=n.swa.netif.mac) / IP(src=A_IP, dst=B_IP)
                       / UDP(sport=5000, dport=6001) / b"nobody")
    bad_sum = bytearray(good[0])
    bad_sum[24] ^= 0xFF  # the IP header checksum no longer holds
    frames = [good[0], to_no_flow, good[1], bytes(bad_sum), good[2]]
    width = max(map(len, frames))
    data = np.zeros((len(frames), width), np.uint8)
    for i, f in enumerate(frames):
        data[i, : len(f)] = np.frombuffer(f, np.uint8)
    blk = FrameBlock(data, np.array([len(f) for f in frames], np.uint32))
    assert len(blk) <= rx.ROWWISE_MAX
    for batch in ([blk], frames):
        before = dict(n.swb.drops)
        n.swb.netif.driver.recv_batch = lambda max_n, batch=batch: list(batch)
        assert n.swb.service_rx() == 5
        assert [p for p, _ in sb.recv_many(8, timeout=0)] == [b"0", b"1", b"2"]
        assert {k: v - before.get(k, 0) for k, v in n.swb.drops.items() if v != before.get(k, 0)} == \
            {"rx_no_flow": 1, "rx_malformed": 1}
