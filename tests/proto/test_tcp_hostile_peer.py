"""A hostile TCP peer on the link, against the sans-I/O connection (issue 16, "trustworthy").

The peer here is the test: it forges every segment the connection receives, so it can do what
an honest stack never does: advertise an MSS of 1, SACK odd bytes of every segment, flood the
receive window with data that never fills its hole, hold the window at zero forever, acknowledge
data never sent, and jump its timestamps. Each test checks that memory and work stay bounded,
that nothing raises, and that the connection does what Linux does (named in each test). The
same tiny-MSS handshake against a kernel listener is in tests/interop/test_tcp_hostile_interop.py.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.proto.tcp import TcpConnection, TcpState
from usnet.proto.tcp.config import MIN_SND_MSS
from usnet.proto.tcp.reassembly import BLOCK_COST, Reassembly
from usnet.proto.tcp.scoreboard import Scoreboard
from usnet.proto.wire.tcp import ACK, SYN, TcpSegment, parse_tcp

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])
MASK = 0xFFFFFFFF
IRS = 0xFFFFF000  # near the wrap, so sequence numbers cross it
ESTABLISHED = TcpState.ESTABLISHED


class Peer:
    """The forging side of one connection: our connection is `c` (a passive open on B:80)."""

    def __init__(self, mss: int | None = 1460, wscale: int | None = 7, ts: bool = True, sack: bool = True,
                 window: int = 0xFFFF, **opts) -> None:
        self.now = 0.0
        self.tsval = 1000
        self.ts = ts
        c = self.c = TcpConnection(B, 80, A, 4321, now=0.0, iss=0x7FFFFF00, **opts)
        c.accept_syn(TcpSegment(4321, 80, IRS, 0, SYN, 0xFFFF, mss=mss, wscale=wscale, sack_ok=sack,
                                tsval=self.tsval if ts else None, tsecr=0 if ts else None), 0.0)
        synack = self.take()[0]
        self.ts_echo = synack.tsval
        self.seq = 1  # the peer's next byte, unwrapped (as c counts it)
        self.segment(ACK, window=window)
        assert c.state is ESTABLISHED

    def take(self) -> list[TcpSegment]:
        """What the connection sends now, parsed (checksums verified)."""
        out = []
        for x in self.c.outgoing(self.now):
            s = parse_tcp(x, 0, None, B, A)
            if s.tsval is not None:
                self.ts_echo = s.tsval
            out.append(s)
        return out

    def segment(self, flags: int = ACK, ack: int | None = None, payload: bytes = b"", seq: int | None = None,
                window: int = 0xFFFF, sacks=None, tsval: int | None = None, dt: float = 1e-4) -> list[TcpSegment]:
        """One forged segment; ``ack``/``seq`` unwrapped (None: SND.NXT / our next byte), SACK blocks
        unwrapped ``(lo, hi)`` pairs. Returns what the connection answers."""
        c = self.c
        self.now += dt
        if tsval is None:
            self.tsval += 1
            tsval = self.tsval
        a = c.snd_nxt if ack is None else ack
        wire_sacks = tuple(((c.iss + lo) & MASK, (c.iss + hi) & MASK) for lo, hi in sacks) if sacks else None
        c.on_segment(TcpSegment(4321, 80, (IRS + (self.seq if seq is None else seq)) & MASK,
                                (c.iss + a) & MASK, flags, window, payload, sacks=wire_sacks,
                                tsval=tsval if self.ts else None, tsecr=self.ts_echo if self.ts else None),
                     self.now)
        if seq is None:
            self.seq += len(payload)
        return self.take()

    def advance(self, dt: float) -> list[TcpSegment]:
        """Let ``dt`` pass, firing every timer due on the way (bounded: a spin fails the test)."""
        end = self.now + dt
        out: list[TcpSegment] = []
        for _ in range(10_000):
            t = self.c.timeout(self.now)
            if t is None or t > end:
                break
            assert t >= self.now - 1e-9
            self.now = max(self.now, t)
            self.c.on_timer(self.now)
            out += self.take()
        else:
            raise AssertionError("the connection's timers spin")
        self.now = end
        return out


# --------------------------------------------------------------------------- 1. tiny MSS


@pytest.mark.parametrize("ts", [True, False])
@pytest.mark.parametrize("mss", [1, 10, 47])
def test_a_tiny_mss_option_is_clamped_to_linux_s_minimum(mss, ts):
    """Linux raises an MSS option under tcp_min_snd_mss (48) to 48, before TCP options
    (CVE-2019-11479): 36 bytes a segment with timestamps, 48 without. Before, usnet's floor was 64."""
    p = Peer(mss=mss, ts=ts, sndbuf=1 << 16)
    c = p.c
    want = MIN_SND_MSS - (12 if ts else 0)
    assert c.mss == want and c.max_segment == want
    data = random.Random(mss).randbytes(20_000)
    sent = c.send(data)
    assert sent == len(data)
    segs = []
    for _ in range(2000):  # ACK everything as it comes, until all is acknowledged
        out = [s for s in p.take() if len(s.payload)] + [s for s in p.advance(0.01) if len(s.payload)]
        segs += out
        if out:
            p.segment(ACK, ack=c.snd_nxt)
        if c.snd_una == 1 + len(data):
            break
    assert c.snd_una == 1 + len(data)
    assert all(len(s.payload) == want for s in segs[:-1]) and len(segs) <= -(-len(data) // want) + 2


def test_a_tiny_mss_in_a_syn_ack_and_a_tiny_path_mtu_are_clamped_too():
    c = TcpConnection(A, 4321, B, 80, now=0.0)
    c.connect(0.0)
    syn = parse_tcp(c.outgoing(0.0)[0], 0, None, A, B)
    c.on_segment(TcpSegment(80, 4321, 7, (syn.seq + 1) & MASK, SYN | ACK, 0xFFFF, mss=1), 0.01)
    assert c.state is ESTABLISHED and c.mss == MIN_SND_MSS
    c2 = Peer().c
    c2.set_path_mtu(68)  # the IPv4 minimum: 28 bytes of TCP payload by the header arithmetic
    assert c2.mss == MIN_SND_MSS - 12


# --------------------------------------------------------------------------- 2. SACK abuse


def _flight(p: Peer, n: int) -> None:
    c = p.c
    c.cc.cwnd = 1 << 30  # let it all out at once
    c.nodelay = True  # the tail too
    assert c.send(bytes(n)) == n
    out = p.take()
    assert out and c.snd_nxt == 1 + n, (len(out), c.snd_nxt)


def _ranges_whole(c: TcpConnection) -> bool:
    """Every scoreboard range is at least a segment's worth (MSS), or whole segments sent."""
    starts = {r.start for r in c.rack.segs} | {c.snd_una}
    ends = {r.end for r in c.rack.segs}
    return all(e - s >= c.mss or (s in starts and e in ends) for s, e in zip(c.sb.starts, c.sb.ends))


def test_sacking_odd_bytes_neither_fragments_the_scoreboard_nor_the_retransmissions():
    """CVE-2019-11478's shape: a peer SACKs one byte in four of everything in flight, three blocks
    an ACK, then one whole late segment, so RACK declares the rest lost. Linux SACKs a segment only
    whole (tcp_match_skb_to_sack). Before: 65,000 scoreboard ranges for 181 segments, and each
    lost segment resent as hundreds of one-byte segments."""
    p = Peer(sndbuf=1 << 20, sndbuf_max=1 << 20)
    c = p.c
    _flight(p, 1 << 18)
    una = c.snd_una
    nrec = len(c.rack.segs)
    for i in range((c.snd_nxt - una - 4000) // 12):
        lo = una + 1 + 12 * i
        p.segment(ACK, ack=una, sacks=[(lo + 4 * k, lo + 4 * k + 1) for k in range(3)], dt=1e-6)
    assert len(c.sb.starts) == 0 and c.stats.sacks_discarded > 60_000
    last = c.rack.segs[-1]
    p.segment(ACK, ack=una, sacks=[(last.start, last.end)], dt=0.05)
    assert len(c.sb.starts) == 1
    rtx = [s for s in p.advance(1.0) if len(s.payload)]
    assert rtx and len(rtx) < nrec and min(len(s.payload) for s in rtx) == c.mss
    assert c.state is ESTABLISHED


def test_without_rack_odd_byte_sacks_meet_a_budget_of_ranges():
    """Without RACK (``rack=False``) there are no segment records to check blocks against; a new
    range is then taken only while the scoreboard holds fewer than one per MSS in flight (+16)."""
    p = Peer(sndbuf=1 << 18, sndbuf_max=1 << 18, rack=False)
    c = p.c
    _flight(p, 1 << 17)
    una = c.snd_una
    for i in range((c.snd_nxt - una - 4000) // 12):
        lo = una + 1 + 12 * i
        p.segment(ACK, ack=una, sacks=[(lo + 4 * k, lo + 4 * k + 1) for k in range(3)], dt=1e-6)
    assert len(c.sb.starts) <= (c.snd_nxt - una) // c.mss + 17 and c.stats.sacks_discarded > 10_000
    assert c.state is ESTABLISHED


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_sack_blocks_keep_the_scoreboard_within_the_segments_in_flight(data):
    """Bogus blocks (past SND.NXT, below SND.UNA, inverted, overlapping), D-SACKs, four blocks an
    ACK, odd bytes: the scoreboard holds at most a range per segment (or MSS of a super-segment)
    in flight, each a segment's worth or whole segments, and its byte count stays exact."""
    p = Peer(sndbuf=1 << 18, sndbuf_max=1 << 18, gso_max=data.draw(st.sampled_from([0, 65536])))
    c = p.c
    _flight(p, data.draw(st.integers(1, 100_000)))
    una0, nxt = c.snd_una, c.snd_nxt
    point = st.one_of(st.integers(una0 - 3000, nxt + 3000), st.sampled_from([r.start for r in c.rack.segs]))
    for _ in range(data.draw(st.integers(1, 30))):
        blocks = data.draw(st.lists(st.tuples(point, point), min_size=1, max_size=4))
        ack = data.draw(st.one_of(st.just(c.snd_una), st.integers(c.snd_una, nxt)))
        p.segment(ACK, ack=ack, sacks=blocks, dt=data.draw(st.floats(1e-6, 0.05)))
        sb = c.sb
        assert len(sb.starts) <= len(c.rack.segs) + (c.snd_nxt - c.snd_una) // c.mss + 1
        assert sb.sacked == sum(e - s for s, e in zip(sb.starts, sb.ends))
        assert all(c.snd_una <= s < e <= c.snd_nxt for s, e in zip(sb.starts, sb.ends))
        assert _ranges_whole(c)
        if c.state is not ESTABLISHED:
            break


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300)), max_size=60), st.integers(0, 300))
def test_scoreboard_agrees_with_a_set_of_bytes(blocks, una):
    """The scoreboard against the obvious model, a set of SACKed byte positions."""
    sb = Scoreboard()
    held: set[int] = set()
    for s, e in blocks:
        iso = sb.isolated(s, e)
        n_before = len(sb.starts)
        added = sb.add(s, e)
        new = set(range(s, e)) - held
        assert added == len(new)
        held |= set(range(s, e))
        if e > s:
            assert iso == (len(sb.starts) == n_before + 1)
        assert sb.sacked == len(held)
        assert all(a < b for a, b in zip(sb.starts, sb.ends))
        assert all(b < a for a, b in zip(sb.starts[1:], sb.ends))  # disjoint, never adjacent
    sb.advance(una)
    held = {x for x in held if x >= una}
    assert sb.sacked == len(held) == sum(b - a for a, b in zip(sb.starts, sb.ends))


def test_an_ack_of_data_never_sent_earns_a_challenge_ack_and_changes_nothing():
    """RFC 5961 §5.2 / RFC 9293: ACK > SND.NXT is dropped with an ACK, as Linux does
    (tcp_ack: TCP_ACK_UNSENT_DATA, then a rate-limited challenge ACK)."""
    p = Peer()
    c = p.c
    _flight(p, 10_000)
    una, nxt, wnd, recent = c.snd_una, c.snd_nxt, c.snd_wnd, c.ts_recent
    out = p.segment(ACK, ack=nxt + 5000, window=1, tsval=p.tsval + 10**6)
    assert [s.ack for s in out] == [(IRS + c.rcv_nxt) & MASK] and not len(out[0].payload)
    assert (c.snd_una, c.snd_nxt, c.snd_wnd, c.ts_recent) == (una, nxt, wnd, recent)
    assert c.stats.challenge_acks == 1 and c.stats.bad_acks == 1


@pytest.mark.parametrize("ws", [14, 15, 200, 255])
def test_a_window_scale_over_14_is_taken_as_14(ws):
    """RFC 7323 §2.3; Linux's tcp_parse_options clamps to TCP_MAX_WSCALE (14) and logs."""
    c = Peer(wscale=ws).c
    assert c.snd_wscale == 14 and c.snd_wnd == 0xFFFF << 14


# --------------------------------------------------------------------------- 3. out-of-order flood


def test_an_out_of_order_flood_that_never_fills_the_hole_is_pruned_to_its_budget():
    """One byte in every other position of the window: Linux charges each skb its truesize and
    prunes the out-of-order queue from the top (tcp_prune_ofo_queue). Before, every byte was a
    block: ~100 bytes of Python objects each, a hundred times the window."""
    cap = 1 << 16
    p = Peer(rcvbuf=cap, rcvbuf_max=cap)
    c = p.c
    stream = random.Random(3).randbytes(c.rcv_window)
    budget = 2 * cap
    odd = list(range(1, len(stream), 2))
    for order in (odd, random.Random(4).sample(odd, len(odd))):  # upwards, then in any order
        for off in order:
            p.segment(ACK, payload=stream[off:off + 1], seq=1 + off, dt=1e-6)
            assert c._reasm.cost() <= budget
    assert c.stats.ofo_pruned > 0 and c.stats.ofo_drops > 0 and len(c._reasm) <= budget // BLOCK_COST
    # the hole fills: the peer sends the whole window in order; every byte arrives once, intact
    got = bytearray()
    for off in range(0, len(stream), 1000):
        p.segment(ACK, payload=stream[off:off + 1000], seq=1 + off)
        got += c.recv()
    assert bytes(got) == stream and not c._reasm


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 300)), max_size=80),
       st.integers(800, 20_000))
def test_reassembly_within_a_budget_keeps_what_it_holds_exact(segs, budget):
    """`make_room` then `add`, as the connection does: the charge never passes the budget, what
    is held is the stream's bytes, and nothing below an arriving segment is pruned."""
    stream = random.Random(budget).randbytes(5000)
    r = Reassembly()
    for s, n in segs:
        below = [(a, bytes(d)) for a, d in zip(r.starts, r.datas) if a < s]
        _, fits = r.make_room(s, n, budget)
        assert [(a, bytes(d)) for a, d in zip(r.starts, r.datas) if a < s] == below
        if fits:
            r.add(s, stream[s:s + n])
        assert r.cost() <= budget
        assert r.nbytes == sum(len(d) for d in r.datas)
        assert all(bytes(d) == stream[a:a + len(d)] for a, d in zip(r.starts, r.datas))


# --------------------------------------------------------------------------- 4. zero window


def test_a_window_held_at_zero_forever_is_probed_with_backoff_and_costs_nothing_more():
    """Linux probes a zero window with the persist timer's back-off (capped at TCP_RTO_MAX) and,
    while the peer answers, never gives up (tcp_probe_timer: probes_out is reset by every ACK).
    The application's sends stop at the send buffer; nothing else grows."""
    p = Peer(sndbuf=1 << 16, sndbuf_max=1 << 16)
    c = p.c
    assert c.send(bytes(100_000)) == 1 << 16
    out = p.take()
    p.segment(ACK, ack=c.snd_nxt, window=0)  # everything in flight acknowledged, window shut
    while c.send(bytes(10_000)):  # the application fills the send buffer again; then it is full
        pass
    assert c.snd_wnd == 0 and not c.writable and c.unsent == 1 << 16
    probes = 0
    for _ in range(60):  # an hour, answering every probe with a zero window
        out = p.advance(60.0)
        probes += len(out)
        if out:
            p.segment(ACK, ack=c.snd_una, window=0)
    assert c.state is ESTABLISHED and c.error is None
    assert 20 <= probes <= 80, probes  # back-off to a probe every rto_max, not one per tick
    assert c.unsent == 1 << 16 and c.in_flight <= 1
    p.segment(ACK, ack=c.snd_una, window=0xFFFF)  # the window opens: the data flows again
    out = [s for s in p.take() + p.advance(0.1) if len(s.payload)]
    assert out and c.unsent < 1 << 16


def test_a_peer_retracting_its_window_gets_no_data_past_the_new_edge():
    """RFC 9293 §3.8.6.2.1: a receiver should not shrink its window, but a sender must cope. Linux
    sends nothing past SND.UNA + SND.WND and retransmits within it."""
    p = Peer(sndbuf=1 << 16, sndbuf_max=1 << 16)
    c = p.c
    c.send(bytes(40_000))
    p.take()
    una = c.snd_una
    p.segment(ACK, ack=una + 1000, window=10)  # right edge now far below SND.NXT (scaled: 1280 bytes)
    edge = c.snd_una + c.snd_wnd
    c.send(bytes(1000))
    sent = [s for s in p.take() + p.advance(5.0) if len(s.payload)]
    assert all(((s.seq - c.iss) & MASK) + len(s.payload) <= max(edge, c.snd_una + 1) for s in sent)
    p.segment(ACK, ack=c.snd_nxt, window=0xFFFF)
    assert c.state is ESTABLISHED and c.error is None


# --------------------------------------------------------------------------- 6. timestamps


def test_a_paws_old_timestamp_is_dropped_with_an_ack():
    """RFC 7323 §5: older than TS.Recent (by more than Linux's one-tick slack) is a duplicate."""
    p = Peer()
    c = p.c
    out = p.segment(ACK, payload=b"old", tsval=p.tsval - 100)
    assert c.stats.paws_rejected == 1 and c.rcv_queued == 0 and out and not len(out[0].payload)


def test_a_timestamp_jump_with_a_bad_ack_cannot_make_the_true_segments_look_old():
    """A blind in-window segment whose TSval jumps 2**31 - 1 ahead, with an ACK beyond SND.NXT:
    Linux stores TS.Recent only from a segment whose ACK tcp_ack took, so the peer's next true
    segment is not PAWS-rejected. Before, usnet stored it first and then dropped every true
    segment as old."""
    p = Peer()
    c = p.c
    c.send(b"x")
    p.take()
    recent = c.ts_recent
    p.segment(ACK, ack=c.snd_nxt + 10**6, tsval=(p.tsval + (1 << 31) - 1) & MASK)
    assert c.ts_recent == recent and c.stats.challenge_acks == 1
    p.segment(ACK | 0x08, payload=b"true data")
    assert c.recv() == b"true data" and c.stats.paws_rejected == 0


def test_a_timestamp_jump_of_exactly_half_the_space_is_neither_new_nor_fatal():
    """TSval + 2**31 is ambiguous. It is not rejected as old (Linux's (s32) test neither), and it
    does not become TS.Recent, so later true segments still pass."""
    p = Peer()
    c = p.c
    recent = c.ts_recent
    p.segment(ACK | 0x08, payload=b"a", tsval=(p.tsval + (1 << 31)) & MASK)
    assert c.recv() == b"a" and c.ts_recent == recent
    p.segment(ACK | 0x08, payload=b"b")
    assert c.recv() == b"b" and c.stats.paws_rejected == 0
