"""One column-wise check across the batches of many flows (issue 18: UDP datagrams/s with 1,000 flows).

`TransmitPath.service_tx_many` lays the batches of the polled flows end to
end and holds each row to its own flow's signature in one pass. These tests
hold it to the trust boundary (a flow that forges a sibling's port or
another source, or a connected flow that writes another destination, is
dropped, reported to that flow alone and counted, and the good rows of every
flow leave in order) and count its work: one joined pass a round, however
many flows sent, and no per-flow column-wise pass.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, UDP, Ether, raw

from tests.helpers.util import close_all, send_raw
from usnet.abi.events import EventType, TxDropReason
from usnet.abi.umd import UMD_WORDS
from usnet.client.session import Client
from usnet.domain.loop import Domain
from usnet.domain.switch.tx import TransmitPath
from usnet.drivers import block
from usnet.drivers.block import FrameBlock
from usnet.drivers.memwire import MemWire

A, B = "10.91.0.1", "10.91.0.2"


class _Net:
    def __init__(self) -> None:
        self.d = Domain()
        self.w = MemWire()
        self.swa = self.d.add_netif("a", self.w.a, f"{A}/24")
        self.d.add_netif("b", self.w.b, f"{B}/24")
        self.c = Client.local(self.d)
        self.rx = self.c.udp_socket("b", 6000, ring_size=1024, packets=2048)

    def flow(self, sock):
        port = sock.getsockname()[1]
        return next(f for f in self.swa.flows.values() if f.lport == port)

    def warm(self, sock) -> None:
        sock.sendto(b"arp", (B, 6000))
        got = self.drain(1)
        assert [p for p, _ in got] == [b"arp"]

    def drain(self, want: int, rounds: int = 200) -> list:
        got: list = []
        for _ in range(rounds):
            self.d.serve_once(0)
            try:
                got += self.rx.recv_many(512, timeout=0)
            except BlockingIOError:
                pass
            if len(got) >= want:
                break
        return got


@pytest.fixture
def net():
    n = _Net()
    try:
        yield n
    finally:
        close_all(n.c, n.d, n.w)


def _pkt(sport: int, body: bytes, src: str = A, dst: str = B, dport: int = 6000) -> bytes:
    return raw(IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / body)


def _spy(monkeypatch, name: str) -> list:
    calls: list = []
    orig = getattr(TransmitPath, name)

    def spy(self, *a, **kw):
        calls.append(len(a[0]) if name == "_tx_joined" else 1)
        return orig(self, *a, **kw)

    monkeypatch.setattr(TransmitPath, name, spy)
    return calls


def test_the_joined_pass_holds_each_row_to_its_own_flow(net, monkeypatch):
    n = net
    s1, s2 = n.c.udp_socket("a", 5000), n.c.udp_socket("a", 5001)
    s3 = n.c.udp_socket("a", 5002, remote=(B, 6000))
    for s in (s1, s2, s3):
        n.warm(s)
    before = dict(n.swa.drops)
    batches = {
        s1: ([_pkt(5000, b"one %d" % i) for i in range(2)]
             + [_pkt(5001, b"forges its sibling's port"), _pkt(5000, b"another source", src="10.91.0.77")]
             + [_pkt(5000, b"one %d" % i) for i in range(2, 4)],
             [TxDropReason.SPOOFED_SOURCE, TxDropReason.SPOOFED_SOURCE]),
        s2: ([_pkt(5001, b"two %d" % i) for i in range(3)] + [_pkt(5001, b"broadcast", dst="10.91.0.255")],
             [TxDropReason.WRONG_DESTINATION]),
        s3: ([_pkt(5002, b"three %d" % i) for i in range(3)]
             + [_pkt(5002, b"another port", dport=6001), _pkt(5000, b"its sibling's 4-tuple")],
             [TxDropReason.WRONG_DESTINATION, TxDropReason.SPOOFED_SOURCE]),
    }
    for s, (pkts, _) in batches.items():
        send_raw(s.channel, pkts)
    joined, fast = _spy(monkeypatch, "_tx_joined"), _spy(monkeypatch, "_tx_fast_ok")
    faults: list = []
    taken = n.swa.service_tx_many([n.flow(s) for s in batches], lambda f, e: faults.append((f, e)))
    assert faults == []
    assert taken == sum(len(p) for p, _ in batches.values())
    assert joined == [3] and fast == []  # one pass for the three flows' rows
    got = [p for p, _ in n.drain(10)]
    assert got == [b"one %d" % i for i in range(4)] + [b"two %d" % i for i in range(3)] + [
        b"three %d" % i for i in range(3)]
    for s, (_, reasons) in batches.items():
        assert [(e.type, e.code) for e in s.events()] == [(EventType.TX_DROPPED, r) for r in reasons]
    drops = {k: v - before.get(k, 0) for k, v in n.swa.drops.items() if v != before.get(k, 0)}
    assert drops == {"tx_spoofed_source": 3, "tx_wrong_destination": 2}
    assert n.flow(s1).stats["tx_dropped"] == 2 and n.flow(s2).stats["tx_dropped"] == 1


def test_a_dscp_other_than_the_flows_is_rewritten_in_the_joined_pass(net, monkeypatch):
    n = net
    s1, s2 = n.c.udp_socket("a", 5000), n.c.udp_socket("a", 5001)
    for s in (s1, s2):
        n.warm(s)
    send_raw(s1.channel, [raw(IP(src=A, dst=B, tos=46 << 2 | 1) / UDP(sport=5000, dport=6000) / (b"ef %d" % i))
                          for i in range(4)])
    send_raw(s2.channel, [_pkt(5001, b"be %d" % i) for i in range(4)])
    tos: list = []
    queue = n.swa.netif.enqueue_many

    def enqueue_many(key, items):
        tos.extend(int(t) for b in items for t in b.data[:, 15])
        return queue(key, items)

    monkeypatch.setattr(n.swa.netif, "enqueue_many", enqueue_many)
    n.swa.service_tx_many([n.flow(s1), n.flow(s2)], lambda f, e: pytest.fail(str(e)))
    got = [p for p, _ in n.drain(8)]
    assert sorted(got) == sorted([b"ef %d" % i for i in range(4)] + [b"be %d" % i for i in range(4)])
    assert tos == [1] * 4 + [0] * 4  # the flow's class (best effort), the client's ECN bits
    assert n.swa.drops.get("tx_malformed", 0) == 0  # the rewritten header checksum is still right


@pytest.mark.parametrize("flows", [2, 40])
def test_one_column_wise_pass_a_round_however_many_flows_sent(net, monkeypatch, flows):
    """Work, not time: a round of the loop over `flows` busy flows makes one joined pass."""
    n = net
    socks = [n.c.udp_socket("a", 5000 + i, ring_size=16, packets=32) for i in range(flows)]
    for s in socks:
        n.warm(s)
    for _ in range(5):
        n.d.serve_once(0)
    for i, s in enumerate(socks):
        assert s.send_many([b"%d.%d" % (i, k) for k in range(4)], (B, 6000)) == 4
    for f in [n.flow(s) for s in socks]:  # as the loop finds them after a send: polled
        n.swa.polled[f] = None
    joined, fast = _spy(monkeypatch, "_tx_joined"), _spy(monkeypatch, "_tx_fast_ok")
    got = n.drain(4 * flows)
    assert sorted(p for p, _ in got) == sorted(b"%d.%d" % (i, k) for i in range(flows) for k in range(4))
    assert joined == [flows] and fast == []


# -- the receiving side: a round's blocks joined, rows grouped by flow -------------------------------


@st.composite
def _items(draw) -> list:
    """A receive batch as a memwire hands it over: frames, and blocks of rows of several widths."""
    items: list = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            items.append(draw(st.binary(min_size=1, max_size=40)))
        else:
            width = draw(st.integers(1, 40))
            lens = draw(st.lists(st.integers(1, width), min_size=1, max_size=6))
            data = np.frombuffer(draw(st.binary(min_size=width * len(lens), max_size=width * len(lens))),
                                 np.uint8).reshape(len(lens), width).copy()
            items.append(FrameBlock(data, np.array(lens, np.uint32)))
    return items


@settings(max_examples=300, deadline=None)
@given(_items())
def test_joining_runs_of_blocks_keeps_every_frame_in_order_and_leaves_no_two_blocks_adjacent(items):
    out = block.join_runs(items)
    assert block.expand(out) == block.expand(items)
    assert not any(type(a) is FrameBlock and type(b) is FrameBlock for a, b in itertools.pairwise(out))
    assert [x for x in out if type(x) is not FrameBlock] == [x for x in items if type(x) is not FrameBlock]
    if not any(type(a) is FrameBlock and type(b) is FrameBlock for a, b in itertools.pairwise(items)):
        assert out is items


def test_a_block_joined_from_many_senders_goes_to_each_rows_own_flow(net):
    """Rows from many remote ports to one listener, to a connected flow beside it, and to a port with no
    flow, in one block: each flow gets its own rows in order, the rest take the per-frame path."""
    n = net
    sb = n.c.udp_socket("b", 6001)
    conn = n.c.udp_socket("b", 6002, remote=(A, 5555))
    mac_b, mac_a = n.d.switches["b"].netif.mac, n.swa.netif.mac

    def frame(sport: int, dport: int, body: bytes) -> bytes:
        return bytes(Ether(dst=mac_b, src=mac_a) / IP(src=A, dst=B) / UDP(sport=sport, dport=dport) / body)

    frames = []
    for i in range(30):
        frames.append(frame(7000 + i, 6001, b"L%d" % i))
        if i % 5 == 0:
            frames.append(frame(5555, 6002, b"C%d" % i))
            frames.append(frame(5556, 6002, b"not its peer %d" % i))  # the connected flow's port, another peer
        if i % 7 == 0:
            frames.append(frame(7000, 6999, b"nobody"))
    blocks = []
    for at in range(0, len(frames), 9):  # as a round of many flows arrives: a block each
        chunk = frames[at : at + 9]
        width = max(map(len, chunk))
        data = np.zeros((len(chunk), width), np.uint8)
        for i, f in enumerate(chunk):
            data[i, : len(f)] = np.frombuffer(f, np.uint8)
        blocks.append(FrameBlock(data, np.array([len(f) for f in chunk], np.uint32)))
    swb = n.d.switches["b"]
    before = dict(swb.drops)
    swb.netif.driver.recv_batch = lambda max_n: list(blocks)
    assert swb.service_rx() == len(frames)
    assert [(p, a) for p, a in sb.recv_many(64, timeout=0)] == [(b"L%d" % i, (A, 7000 + i)) for i in range(30)]
    assert [p for p, _ in conn.recv_many(64, timeout=0)] == [b"C%d" % i for i in range(0, 30, 5)]
    assert {k: v - before.get(k, 0) for k, v in swb.drops.items() if v != before.get(k, 0)} == {"rx_no_flow": 11}


def test_a_blocks_super_segments_keep_their_gso_size_through_slicing_joining_and_opening():
    """A driver that does not take blocks (a pcap or fault wrapper of a TAP) gets each super-segment
    of a block as a SegmentedFrame with its gso_size, the other rows as plain bytes."""
    import numpy as np

    from usnet.drivers.base import SegmentedFrame
    from usnet.drivers.block import FrameBlock, _join

    data = np.arange(3 * 8, dtype=np.uint8).reshape(3, 8)
    blk = FrameBlock(data, np.array([8, 4, 6], np.uint32), np.array([0, 1448, 0], np.uint32))
    frames = blk.frames()
    assert [bytes(f) for f in frames] == [data[0].tobytes(), data[1, :4].tobytes(), data[2, :6].tobytes()]
    assert [type(f) for f in frames] == [bytes, SegmentedFrame, bytes] and frames[1].gso_size == 1448
    tail = blk.rows(slice(1, None))
    assert tail.gso.tolist() == [1448, 0]
    joined = _join([FrameBlock(data[:1], np.array([8], np.uint32)), tail])
    assert joined.gso.tolist() == [0, 1448, 0]
    assert [type(f) for f in joined.frames()] == [bytes, SegmentedFrame, bytes]


def test_a_joined_blocks_byte_count_is_its_frames_whatever_lengths_the_clients_wrote(net, monkeypatch):
    """The joined pass gives each flow's block its byte count (`FrameBlock(nbytes=)`, summed once
    for pacing, AQM and the books): it must be the frames' own, in a round of honest flows (framed
    joined) and in one where a client wrote a length past its buffer (cut to it, then refused as
    not the IP total length) and a short one among the good rows of other flows."""
    n = net
    socks = [n.c.udp_socket("a", 5100 + i) for i in range(3)]
    for s in socks:
        n.warm(s)
    blocks: list = []
    given: list = []
    orig = n.swa.netif.enqueue_many

    def spy(fid, items):
        for x in items:
            if type(x) is FrameBlock:
                blocks.append(x)
                given.append(x._nbytes >= 0)  # its count made by the joined pass, not summed here
        return orig(fid, items)

    monkeypatch.setattr(n.swa.netif, "enqueue_many", spy)
    for liar in (False, True):
        flows = []
        for i, s in enumerate(socks):
            pkts = [_pkt(5100 + i, b"x" * (10 + 7 * k + i)) for k in range(6)]
            ch = s.channel
            got: list[int] = []
            while len(got) < len(pkts):
                got += ch.alloc(len(pkts) - len(got))
            for p, data in zip(got, pkts):
                ch.write(p, data, 0)
                ch.set_length(p, len(data))
            if liar and i == 1:  # two lengths a client lies about: past its buffer, short
                ch.umd[got[2] * UMD_WORDS] = 1 << 30  # (the UMD word itself: set_length refuses it)
                ch.set_length(got[4], len(pkts[4]) - 3)
            assert ch.send(got) == len(got)
            flows.append(n.flow(s))
        assert n.swa.service_tx_many(flows, lambda f, e: pytest.fail(repr(e))) == 18
        assert len(n.drain(16 if liar else 18)) == (16 if liar else 18)
    assert any(given) and not all(given)  # both paths ran
    for b in blocks:
        assert b.nbytes() == int(b.lens.sum()) == len(b) * 14 + sum(
            int.from_bytes(bytes(b.data[j, 16:18]), "big") for j in range(len(b)))
