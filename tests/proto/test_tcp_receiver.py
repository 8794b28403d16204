"""TCP as the receiver on a lossy, reordering path (issue 17): what its ACKs tell the sender.

A kernel sender on such a path to usnet was three times slower than to a kernel receiver,
because usnet's ACKs told it less: no D-SACK for a duplicate that PAWS dropped (the original of
a segment held back behind its own retransmission) or that lay above a hole, so the sender
could not undo recoveries it began for nothing; delayed ACKs while the sender recovered with a
window of one or two segments (Linux acknowledges at once then: its quick-ACK mode); one ACK
for a whole batch of out-of-order segments, whose 3 SACK blocks could not name every new one;
a receive window that did not grow, because the data a filled hole released was not counted;
and a FIN beyond a hole left out of its SACK block. Each test here drives one segment sequence
through a connection (sans-I/O, fake clock) and reads the ACKs it answers with.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.proto.test_tcp_connection import MASK, A, B, Net, inject, wire_ack, wire_seq
from usnet.proto.tcp.quickack import MAX_QUICKACKS
from usnet.proto.tcp.rcvbuf import drs_window
from usnet.proto.tcp.reassembly import Reassembly
from usnet.proto.wire.tcp import ACK, FIN, PSH, build_tcp, parse_tcp, tcp_options


def _acks(net, conn):
    return [parse_tcp(x, 0, None, conn.local_addr, conn.remote_addr)
            for _, x, _, _ in net.eps[conn.local_addr].outgoing(net.now)]


def _input(net, c, s, seq, payload, flags=ACK, tsval=None):
    """`payload` at wire sequence `seq` from `c` to `s`, without asking `s` for output."""
    ts = (s.ts_recent + 1) & MASK if tsval is None else tsval
    data = build_tcp(A, B, c.local_port, s.local_port, seq, wire_ack(s), flags, 1000, payload, 0,
                     tcp_options(ts=(ts, 0)))
    net.b.input(A, B, data, net.now)


def _past_quick_acks(net, c, s):
    """Data until the connection's first quick ACKs are spent; no ACK left pending."""
    for _ in range(MAX_QUICKACKS + 2):
        inject(net, c, s, ACK, wire_seq(s), wire_ack(s), b"q" * 1000)
    s.recv()
    _acks(net, s)  # the window update the read made
    assert s._quick.left == 0 and s.timeout() is None


def test_a_duplicate_paws_drops_is_reported_in_a_dsack():
    net = Net()
    c, s = net.pair()
    seq0 = wire_seq(s)
    inject(net, c, s, ACK, seq0, wire_ack(s), b"a" * 100)
    # the original, held back behind its retransmission, comes with an older timestamp
    _input(net, c, s, seq0, b"a" * 100, tsval=(s.ts_recent - 5) & MASK)
    out = _acks(net, s)
    assert s.stats.paws_rejected == 1
    assert len(out) == 1 and out[0].sacks and out[0].sacks[0] == (seq0, (seq0 + 100) & MASK)
    assert s.stats.dsacks_sent == 1


def test_paws_allows_one_tick_as_linux():
    net = Net()
    c, s = net.pair()
    seq0 = wire_seq(s)
    inject(net, c, s, ACK, seq0, wire_ack(s), b"a" * 100)
    _input(net, c, s, wire_seq(s), b"b" * 100, tsval=(s.ts_recent - 1) & MASK)
    assert s.stats.paws_rejected == 0 and s.recv() == b"a" * 100 + b"b" * 100


def test_a_duplicate_above_a_hole_is_reported_in_a_dsack_before_its_block():
    net = Net()
    c, s = net.pair()
    hole = wire_seq(s)
    blk = ((hole + 100) & MASK, (hole + 200) & MASK)
    (a1,) = inject(net, c, s, ACK, blk[0], wire_ack(s), b"b" * 100)
    assert a1.ack == hole and a1.sacks == (blk,)
    (a2,) = inject(net, c, s, ACK, blk[0], wire_ack(s), b"b" * 100)
    assert a2.sacks == (blk, blk)  # RFC 2883: the D-SACK first, then the block holding it
    # a segment partly held already: the part held is the duplicate
    (a3,) = inject(net, c, s, ACK, (hole + 150) & MASK, wire_ack(s), b"b" * 100)
    assert a3.sacks[0] == ((hole + 150) & MASK, blk[1])
    assert s.stats.dsacks_sent == 2


def test_after_a_duplicate_every_segment_is_acknowledged_at_once():
    net = Net()
    c, s = net.pair()
    _past_quick_acks(net, c, s)
    assert inject(net, c, s, ACK, wire_seq(s), wire_ack(s), b"x" * 1000) == []  # one segment: delayed
    dup_at = wire_seq(s, s.rcv_nxt - 1000)
    (d,) = inject(net, c, s, ACK, dup_at, wire_ack(s), b"x" * 1000)  # the sender retransmitted it
    assert d.ack == wire_seq(s) and d.sacks[0] == (dup_at, wire_seq(s))
    for _ in range(3):  # the sender is likely recovering with a small window: no delayed ACKs
        (a,) = inject(net, c, s, ACK, wire_seq(s), wire_ack(s), b"y" * 1000)
        assert a.ack == wire_seq(s)


def test_a_connections_first_segments_are_acknowledged_at_once():
    net = Net()
    c, s = net.pair()
    for _ in range(MAX_QUICKACKS):
        (a,) = inject(net, c, s, ACK, wire_seq(s), wire_ack(s), b"q" * 1000)
        assert a.ack == wire_seq(s)
    assert inject(net, c, s, ACK, wire_seq(s), wire_ack(s), b"q" * 1000) == []


def test_an_answered_request_gets_no_ack_of_its_own():
    """Ping-pong: ACKs ride on the answers, as Linux's (the quick ACKs do not apply)."""
    net = Net()
    c, s = net.pair()
    for i in range(3):
        out = inject(net, c, s, ACK | PSH, wire_seq(s), wire_ack(s), b"GET /%d\r\n" % i)
        if i:  # the first request of a connection is quick-ACKed, like Linux's
            assert out == []
        assert s.recv()
        s.send(b"200 OK\r\n")
        (answer,) = _acks(net, s)
        assert answer.payload == b"200 OK\r\n" and answer.ack == wire_seq(s)


def test_out_of_order_segments_in_one_batch_each_get_an_ack_naming_their_block():
    net = Net()
    c, s = net.pair()
    hole = wire_seq(s)

    def at(n):
        return (hole + n) & MASK

    _input(net, c, s, at(1000), b"a" * 1000)
    _input(net, c, s, at(3000), b"b" * 1000)  # a second hole: the first block's ACK goes now
    _input(net, c, s, at(4000), b"c" * 1000)  # grows the newest block: no ACK of its own
    out = _acks(net, s)
    assert [a.ack for a in out] == [hole, hole]
    assert out[0].sacks == ((at(1000), at(2000)),)
    assert out[1].sacks == ((at(3000), at(5000)), (at(1000), at(2000)))


def test_a_fin_beyond_a_hole_is_in_its_sack_block():
    net = Net()
    c, s = net.pair()
    hole = wire_seq(s)
    (a,) = inject(net, c, s, ACK | FIN, (hole + 100) & MASK, wire_ack(s), b"z" * 50)
    assert a.ack == hole and a.sacks == (((hole + 100) & MASK, (hole + 151) & MASK),)


def test_the_window_grows_with_the_data_a_filled_hole_releases():
    net = Net()
    c, s = net.pair()
    cap0 = s.rcvbuf_cap
    hole = wire_seq(s)
    for i in range(1, 40):
        inject(net, c, s, ACK, (hole + 1000 * i) & MASK, wire_ack(s), b"o" * 1000)
    net.now += 0.5  # more than a round trip
    inject(net, c, s, ACK, hole, wire_ack(s), b"o" * 1000)  # fills the hole: 40 KB in order
    assert s.rcv_queued == 40_000
    assert s.rcvbuf_cap >= drs_window(40_000, 10 * s.mss_local, s.mss_local) > cap0


def test_drs_window_follows_linux():
    assert drs_window(100_000, 100_000, 1448) == 2 * 100_000 + 16 * 1448  # steady: 2x and a cushion
    w = 2 * 200_000 + 16 * 1448
    assert drs_window(200_000, 100_000, 1448) == w + 2 * w  # doubled: room for the next doubling
    assert drs_window(50_000, 100_000, 1448) == 2 * 50_000 + 16 * 1448


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 60)), min_size=1, max_size=25))
def test_reassembly_names_the_first_range_it_already_held(adds):
    r = Reassembly()
    held: set[int] = set()
    for start, n in adds:
        old = [b in held for b in range(start, start + n)]
        new = r.add(start, bytes(n))
        assert new == old.count(False)
        if all(not x for x in old):
            assert r.dup is None
        else:
            lo = start + old.index(True)
            hi = lo
            while hi < start + n and hi in held:
                hi += 1
            assert r.dup == (lo, hi)
        held.update(range(start, start + n))
