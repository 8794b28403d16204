"""A small batch is checked packet by packet (issue 18: usnetd's cost for tiny batches).

`TransmitPath._tx_pulled` takes a batch of up to `_SCALAR_MAX` packets one
by one (`_tx_few`) instead of column-wise: the column pass costs a dozen
numpy calls whatever the batch's size, most of what a handshake's packet
costs the domain. The trust boundary must not move with it: on any batch,
hostile ones included, both paths must send the same packets in the same
order, drop the same ones with the same reasons, and leave the same TCP
state (txguard.TcpSeen) behind. The property test below runs each batch
through two domains alike but for the path.
"""

from __future__ import annotations

import struct
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, raw

from tests.helpers.util import send_raw
from usnet.abi.events import EventType, TxDropReason
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.domain.switch import tx
from usnet.drivers import MemWire, block

A_IP, B_IP = "10.9.0.1", "10.9.0.2"


def _fold_not(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", bytes(b[: len(b) // 2 * 2])))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class _Side:
    """A domain with netif "a" on a MemWire (read at its b end), every neighbour known, and three
    flows: an unconnected UDP one, a connected UDP one, a connected TCP one and an unconnected TCP
    one (a listener's: what a server's answers to many connections go out on)."""

    def __init__(self) -> None:
        self.d = Domain()
        self.w = MemWire()
        self.sw = self.d.add_netif("a", self.w.a, f"{A_IP}/24")
        c = Client.local(self.d)
        for host in range(0, 255):
            self.sw.arp.learn(bytes([10, 9, 0, host]), self.w.b.mac, self.sw.clock())
        self.ch = {
            "udp": c.open_flow("a", 17, 5000)[0],
            "udp_conn": c.open_flow("a", 17, 5002, (B_IP, 6000))[0],
            "tcp_conn": c.open_flow("a", 6, 5004, (B_IP, 7000))[0],
            "tcp": c.open_flow("a", 6, 5006)[0],
        }

    def flow(self, lport: int):
        return next(f for f in self.sw.flows.values() if f.lport == lport)

    def run(self, which: str, pkts: list[bytes], scalar_max: int) -> tuple:
        saved = tx._SCALAR_MAX
        tx._SCALAR_MAX = scalar_max
        try:
            send_raw(self.ch[which], pkts)
            for _ in range(3):
                self.d.serve_once(0)
        finally:
            tx._SCALAR_MAX = saved
        out = [bytes(f[14:]) for f in block.expand(self.w.b.recv_batch(64))]
        events = [(e.type, e.code, e.value) for e in self.ch[which].events()
                  if e.type in (EventType.TX_DROPPED, EventType.TX_STATUS)]
        seen = [self.flow(p).tcp_seen for p in (5004, 5006)]
        return out, events, [dict(t.ends) if t is not None else None for t in seen], dict(self.sw.drops)


_BASE = {
    "udp": lambda: raw(IP(src=A_IP, dst=B_IP, id=7) / UDP(sport=5000, dport=6000) / bytes(16)),
    "udp_conn": lambda: raw(IP(src=A_IP, dst=B_IP, id=7) / UDP(sport=5002, dport=6000) / bytes(16)),
    "tcp_conn": lambda: raw(IP(src=A_IP, dst=B_IP, id=7) / TCP(sport=5004, dport=7000, seq=1000, ack=5,
                                                                  flags="A") / bytes(8)),
    "tcp": lambda: raw(IP(src=A_IP, dst=B_IP, id=7) / TCP(sport=5006, dport=7000, seq=1000, ack=5,
                                                             flags="PA") / bytes(8)),
}

def _by_destination(packets: list[bytes]) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for p in packets:
        out.setdefault(p[16:20], []).append(p)
    return out


_packet = st.tuples(
    # edits (none: a good one), the fields the checks read first: DSCP, length, fragment, TTL,
    # protocol, addresses, ports, TCP flags
    st.lists(st.tuples(st.one_of(st.sampled_from([0, 1, 2, 3, 6, 7, 8, 9, 12, 15, 16, 19, 20, 21, 22, 23, 33]),
                                 st.integers(0, 39)),
                       st.one_of(st.sampled_from([0, 1, 0x40, 0xB8, 0xFF]), st.integers(0, 255))),
             max_size=3),
    st.sampled_from([True, True, False]),  # fix the header checksum up after editing (mostly)
    # cut short by this many bytes (seldom); negative: cut to that many (no IP packet, a hostile
    # client's, whose first bytes still say IPv4 and maybe another class: the DSCP rewrite's reach)
    st.sampled_from([0, 0, 0, 1, 6, -1, -3, -11]),
    st.integers(0, 2**31),  # a TCP sequence number (a good packet's is kept apart)
)


def test_a_small_batch_is_checked_one_by_one_as_the_column_pass_would():
    """Random batches of 1 to `_SCALAR_MAX` (12) packets, good ones and hostile ones (random header bytes, the checksum
    fixed up or not, cut short), of each kind of flow: the per-packet path (`_tx_few`) and the
    column-wise one (`_SCALAR_MAX` 0) send the same IP packets in the same order to each destination, report the same
    drops with the same reasons, count the same, and leave the same TCP reset state."""
    few, batch = _Side(), _Side()
    try:
        seen = {"sent": 0, "dropped": 0}

        @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
        @given(which=st.sampled_from(sorted(_BASE)), pkts=st.lists(_packet, min_size=1, max_size=tx._SCALAR_MAX))
        def check(which, pkts):
            data = []
            for edits, fix_sum, cut, seq in pkts:
                b = bytearray(_BASE[which]())
                if which.startswith("tcp"):
                    b[24:28] = seq.to_bytes(4, "big")
                if which == "tcp":  # a listener answers many remote ends: a few of them
                    b[22:24] = (7000 + seq % 3).to_bytes(2, "big")
                for at, v in edits:
                    if at < len(b):
                        b[at] = v
                if fix_sum:
                    ihl = (b[0] & 0xF) * 4
                    if 20 <= ihl <= len(b):
                        b[10:12] = b"\x00\x00"
                        b[10:12] = struct.pack("!H", _fold_not(b[:ihl]))
                data.append(bytes(b[: len(b) - cut] if cut >= 0 else b[:-cut]))
            got_few = few.run(which, data, tx._SCALAR_MAX)
            got_batch = batch.run(which, data, 0)
            # the same packets left, in the same order to each destination (the column pass
            # queues a batch's rows grouped by destination, so only that order is kept across them)
            assert _by_destination(got_few[0]) == _by_destination(got_batch[0])
            assert got_few[1] == got_batch[1]  # the same drops reported, with the same reasons
            assert got_few[2] == got_batch[2]  # the same state a reset would start from
            assert got_few[3] == got_batch[3]  # the same counts
            seen["sent"] += len(got_few[0])
            seen["dropped"] += len(got_few[1])

        check()
        assert seen["sent"] and seen["dropped"]  # both outcomes were exercised
    finally:
        few.d.stop()
        batch.d.stop()


def test_a_few_received_packets_are_delivered_in_scalars_as_a_batch_would_be():
    """`FlowPort._deliver_few` (up to `_DELIVER_FEW` packets, scalars) and the batch path deliver the same
    datagrams, in order, with the same lengths, whatever their sizes (empty to a full MTU)."""
    from usnet.domain.switch import port

    def run(few: int, batches: list[list[bytes]]) -> list:
        saved = port._DELIVER_FEW
        port._DELIVER_FEW = few
        d = Domain()
        w = MemWire()
        try:
            sw = d.add_netif("a", w.a, f"{A_IP}/24")
            d.add_netif("b", w.b, f"{B_IP}/24")
            c = Client.local(d)
            rx = c.udp_socket("b", 6000)
            src = c.open_flow("a", 17, 5000)[0]
            sw.arp.learn(bytes([10, 9, 0, 2]), w.b.mac, sw.clock())
            got = []
            for b in batches:
                send_raw(src, [raw(IP(src=A_IP, dst=B_IP) / UDP(sport=5000, dport=6000) / p) for p in b])
                for _ in range(4):
                    d.serve_once(0)
                try:
                    got.append(rx.recv_many(16, timeout=0))
                except BlockingIOError:
                    got.append([])
            return got
        finally:
            port._DELIVER_FEW = saved
            d.stop()

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.lists(st.one_of(st.binary(max_size=40), st.integers(0, 1472).map(bytes)),
                             min_size=1, max_size=16), min_size=1, max_size=4))
    def check(batches):
        few = run(port._DELIVER_FEW, batches)
        assert few == run(0, batches)
        assert [[p for p, _ in g] for g in few] == batches  # and each is what was sent

    check()


def test_a_listener_s_answers_to_ten_ends_are_noted_in_one_call():
    """A listener's batch of answers (a server under wrk: ten, each to its own remote end) leaves
    the reset state of every end, taken by one `TcpSeen.note_last` (issue 16, usnetd's calls per
    HTTP request): before, each answer paid a `remote_end` to find each end's last and then a
    `note`, two Python calls a packet of the transmit path."""
    from usnet.domain.switch import txguard

    side = _Side()
    try:
        pkts = [raw(IP(src=A_IP, dst=B_IP, id=7) / TCP(sport=5006, dport=7000 + i, seq=1000 * i, ack=5, flags="PA")
                    / bytes(8)) for i in range(10)]
        guard_calls: list[str] = []

        def trace(frame, event: str, arg: object) -> None:
            if event == "call" and frame.f_code.co_filename == txguard.__file__:
                guard_calls.append(frame.f_code.co_name)

        send_raw(side.ch["tcp"], pkts)
        sys.setprofile(trace)
        try:
            for _ in range(3):
                side.d.serve_once(0)
        finally:
            sys.setprofile(None)
        assert len(block.expand(side.w.b.recv_batch(64))) == 10
        seen = side.flow(5006).tcp_seen
        assert seen is not None and dict(seen.ends) == {
            (bytes([10, 9, 0, 2]), 7000 + i): [1000 * i + 8, 5] for i in range(10)}
        assert guard_calls == ["__init__", "note_last"]  # the flow's first TCP: its TcpSeen made
    finally:
        side.d.stop()


def test_a_packet_too_short_for_its_class_beside_a_good_one_is_refused_not_a_fault():
    """A hostile client's packet of a byte or three whose first bytes say IPv4 of another class,
    sent with a good one: the per-packet path (`_tx_few`) read and rewrote its class past its
    end (an IndexError: the channel faulted, defunct ABUSE, and usnetd logged a bug); it must be
    refused as the column pass refuses it, the good one sent, the channel kept."""
    for scalar_max in (tx._SCALAR_MAX, 0):
        side = _Side()
        try:
            good = _BASE["udp"]()
            for n, short in enumerate((b"\x45", b"\x45\xb8\x00", b"\x46\xfc" + bytes(9)), 1):
                out, events, _, drops = side.run("udp", [short, good], scalar_max)
                assert out == [good]
                assert events == [(EventType.TX_DROPPED, TxDropReason.MALFORMED, len(short))]
                assert drops == {"tx_malformed": n}
            assert side.flow(5000).port.pipe.defunct_reason is None
        finally:
            side.d.stop()


def test_an_ipv6_packet_too_short_for_its_class_beside_a_good_one_is_refused_not_a_fault():
    """As above, on an IPv6 flow: the rewrite of its class writes bytes 0 and 1 (`ecn.set_dscp`),
    which a 1-byte packet does not have."""
    from scapy.all import IPv6

    for scalar_max in (tx._SCALAR_MAX, 0):
        d, w = Domain(), MemWire()
        try:
            sw = d.add_netif("a", w.a, f"{A_IP}/24", address6="fd00:9::1/64")
            peer = bytes.fromhex("fd000009" + "0" * 22 + "02")
            sw.nd.learn(peer, w.b.mac, sw.clock())
            ch = Client.local(d).open_flow("a", 17, 5000, family=6)[0]
            good = raw(IPv6(src="fd00:9::1", dst="fd00:9::2", tc=0) / UDP(sport=5000, dport=6000) / bytes(16))
            saved = tx._SCALAR_MAX
            tx._SCALAR_MAX = scalar_max
            try:
                send_raw(ch, [b"\x6f", good])
                for _ in range(3):
                    d.serve_once(0)
            finally:
                tx._SCALAR_MAX = saved
            out = [bytes(f[14:]) for f in block.expand(w.b.recv_batch(64))]
            assert out == [good]
            assert [(e.type, e.code, e.value) for e in ch.events() if e.type == EventType.TX_DROPPED] == [
                (EventType.TX_DROPPED, TxDropReason.MALFORMED, 1)]
            assert next(iter(sw.flows.values())).port.pipe.defunct_reason is None
        finally:
            d.stop()
