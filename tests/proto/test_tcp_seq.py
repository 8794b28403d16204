"""The arithmetic under TCP: sequence space, RTO, congestion windows, SACK bookkeeping.

Sequence comparisons are checked against their definition (the sign of the
32-bit difference) and `unwrap` against plain integers offset by a random
base; the scoreboard and the reassembly queue against set-of-bytes models
over random operations; the RTO estimator against RFC 6298's formulas; the
congestion controllers against the numbers RFC 5681 and RFC 9438 give.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.proto.tcp import seq as S
from usnet.proto.tcp.congestion import Cubic, NewReno, make_congestion
from usnet.proto.tcp.reassembly import Reassembly
from usnet.proto.tcp.rto import RtoEstimator
from usnet.proto.tcp.scoreboard import Scoreboard

u32 = st.integers(0, S.MASK)
dist = st.integers(-(2**31) + 1, 2**31 - 1)
PROPS = settings(max_examples=300, deadline=None)


# --------------------------------------------------------------------------- sequence space


@PROPS
@given(u32, dist)
def test_comparisons_follow_the_signed_distance(a, d):
    b = S.seq_add(a, d)
    assert S.seq_diff(b, a) == d
    assert S.seq_lt(a, b) == (d > 0)
    assert S.seq_le(a, b) == (d >= 0)
    assert S.seq_gt(a, b) == (d < 0)
    assert S.seq_ge(a, b) == (d <= 0)
    assert S.seq_lt(a, b) != S.seq_ge(a, b)
    assert S.seq_max(a, b) == (b if d > 0 else a)
    assert S.seq_min(a, b) == (a if d > 0 else b)


@PROPS
@given(u32, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_in_window(start, size, off):
    x = S.seq_add(start, off)
    assert S.seq_in_window(x, start, size) == (off < size)


@PROPS
@given(u32, st.integers(0, 2**40), dist)
def test_unwrap_recovers_the_plain_integer(base, ref, d):
    target = ref + d
    wire = (base + target) & S.MASK
    assert S.unwrap(wire, base, ref) == target


def test_wrap_edges():
    assert S.seq_lt(0xFFFFFFFF, 0) and S.seq_gt(0, 0xFFFFFFFF)
    assert S.seq_add(0xFFFFFFFF, 1) == 0
    assert S.seq_diff(0, 0xFFFFFFFF) == 1
    assert S.seq_in_window(2, 0xFFFFFFFE, 5)
    assert not S.seq_in_window(3, 0xFFFFFFFE, 5)
    # exactly half apart: each is "before" the other (RFC 1982 leaves it undefined)
    assert S.seq_lt(0, S.HALF) and S.seq_lt(S.HALF, 0)


# --------------------------------------------------------------------------- RTO (RFC 6298)


def test_rto_first_sample_and_update():
    r = RtoEstimator(initial=1.0, min_rto=0.2)
    assert r.rto == 1.0
    r.sample(0.1)
    assert r.srtt == pytest.approx(0.1) and r.rttvar == pytest.approx(0.05)
    assert r.rto == pytest.approx(0.3)  # 0.1 + 4 * 0.05
    r.sample(0.3)
    assert r.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.2)
    assert r.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.3)
    assert r.rto == pytest.approx(r.srtt + 4 * r.rttvar)


def test_rto_floor_ceiling_backoff_and_karn():
    r = RtoEstimator(initial=1.0, min_rto=1.0, max_rto=60.0)
    r.sample(0.001)
    assert r.rto == 1.0  # RFC floor when configured
    seq = [r.backoff() for _ in range(8)]
    assert seq == [2, 4, 8, 16, 32, 60, 60, 60]
    assert not r.sample(0.05, retransmitted=True)  # Karn: ignored, still backed off
    assert r.rto == 60
    assert r.sample(0.05)
    assert r.backoffs == 0 and r.rto == 1.0
    lin = RtoEstimator(min_rto=0.2)
    lin.sample(0.001)
    assert lin.rto == pytest.approx(0.2)


# --------------------------------------------------------------------------- congestion


def test_newreno_slow_start_avoidance_and_loss():
    cc = NewReno(1000)
    assert cc.cwnd == 10_000  # RFC 6928 initial window
    cc.on_ack(1000, 0.01, 0.0, flight=10_000)
    assert cc.cwnd == 11_000
    cc.on_ack(5000, 0.01, 0.0, flight=1000)  # application-limited: no growth
    assert cc.cwnd == 11_000
    cc.on_congestion(0.0, flight=20_000)
    assert cc.ssthresh == 10_000 and cc.cwnd == 10_000
    for _ in range(10):
        cc.on_ack(1000, 0.01, 0.0, flight=10_000)
    assert cc.cwnd == 11_000  # +1 MSS per window in congestion avoidance
    cc.on_rto(0.0, flight=8000, first=True)
    assert cc.cwnd == 1000 and cc.ssthresh == 4000
    cc.on_rto(0.0, flight=1000, first=False)
    assert cc.ssthresh == 4000  # no second reduction in one episode
    cc.on_recovery_end(0.0)
    assert cc.cwnd == 4000


def test_cubic_reduction_and_growth_curve():
    mss = 1000
    cc = Cubic(mss)
    cc.cwnd = 1000 * mss  # large enough to be in the cubic (not Reno-friendly) region
    cc.ssthresh = 1000 * mss
    cc.on_congestion(0.0, flight=1000 * mss)
    assert cc.ssthresh == 700 * mss and cc.cwnd == 700 * mss  # beta 0.7
    assert cc.w_max == pytest.approx(1000)
    t, rtt = 0.0, 0.05
    cwnds = []
    while t < 14:
        cc.on_ack(cc.cwnd, rtt, t, flight=cc.cwnd)  # one window acked per RTT
        cwnds.append(cc.cwnd / mss)
        t += rtt
    # K = cbrt(W_max (1 - beta) / C) = cbrt(750) ~ 9.09 s
    assert cc.k == pytest.approx((300 / 0.4) ** (1 / 3))
    i_k = int(cc.k / rtt)
    assert 980 <= cwnds[i_k] <= 1010  # plateau near W_max around t = K
    assert cwnds[-1] > 1020  # convex growth beyond W_max
    early = cwnds[40] - cwnds[0]
    late = cwnds[i_k] - cwnds[i_k - 40]
    assert early > 5 * late  # concave approach: fast first, slow near W_max
    # fast convergence: a loss below the previous W_max remembers less
    cc.cwnd = 900 * mss
    w_max = cc.w_max
    cc.on_congestion(t, flight=900 * mss)
    assert w_max > 900 and cc.w_max == pytest.approx(900 * 1.7 / 2)


def test_cubic_reno_friendly_region():
    """At a small W_max and short RTT the Reno-friendly estimate (RFC 9438 §4.3) leads."""
    mss = 1000
    cc = Cubic(mss)
    cc.cwnd = cc.ssthresh = 100 * mss
    cc.on_congestion(0.0, flight=100 * mss)
    t = 0.0
    for _ in range(100):  # 100 RTTs of 10 ms: 1 s, long before K (~4.2 s)
        cc.on_ack(cc.cwnd, 0.01, t, flight=cc.cwnd)
        t += 0.01
    cubic_alone = 0.4 * (t + 0.01 - cc.k) ** 3 + 100  # ~87 segments
    # W_est: +alpha (0.53) per RTT up to W_max, +1 per RTT beyond it
    assert cc.cwnd / mss == pytest.approx(70 + 30 + (100 - 30 / Cubic.ALPHA), abs=2)
    assert cc.cwnd / mss > cubic_alone + 40


def test_make_congestion():
    assert make_congestion("CUBIC", 1000).name == "cubic"
    assert make_congestion("reno", 1000).name == "newreno"
    assert make_congestion("BBR", 1000).name == "bbr"
    with pytest.raises(ValueError):
        make_congestion("vegas", 1000)


# --------------------------------------------------------------------------- SACK scoreboard


@PROPS
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 60)), max_size=30),
       st.integers(0, 300), st.integers(0, 300), st.integers(0, 400))
def test_scoreboard_matches_a_set_model(ranges, una, p, limit):
    sb = Scoreboard()
    model: set[int] = set()
    for s, n in ranges:
        added = sb.add(s, s + n)
        new = set(range(s, s + n)) - model
        assert added == len(new)
        model |= new
    assert sb.sacked == len(model)
    # merged: sorted, disjoint and non-adjacent
    assert all(sb.ends[i] < sb.starts[i + 1] for i in range(len(sb.starts) - 1))
    assert sb.sacked_between(p, limit) == len([x for x in model if p <= x < limit])
    hole = sb.next_hole(p, limit)
    free = [x for x in range(p, limit) if x not in model]
    if not free:
        assert hole is None
    else:
        x, y = hole
        assert x == free[0] and x < y <= limit
        assert all(i not in model for i in range(x, y))
        assert y == limit or y in model
    assert all(sb.is_sacked(x) == (x in model) for x in range(0, 400, 7))
    sb.advance(una)
    model = {x for x in model if x >= una}
    assert sb.sacked == len(model)
    assert sb.highest == (max(model) + 1 if model else None)


# --------------------------------------------------------------------------- reassembly


@PROPS
@given(st.data())
def test_reassembly_delivers_the_stream_in_any_order(data):
    stream = bytes(random.Random(data.draw(st.integers(0, 1000))).randbytes(data.draw(st.integers(1, 600))))
    # random segmentation, random duplicates and overlaps, random order
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=20)))) if len(stream) > 1 else []
    edges = [0, *cuts, len(stream)]
    segs = [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
    extra = data.draw(st.lists(st.tuples(st.integers(0, len(stream) - 1), st.integers(1, 80)), max_size=8))
    segs += [(s, min(len(stream), s + n)) for s, n in extra]
    order = data.draw(st.permutations(segs))
    r = Reassembly()
    nxt = 0
    out = bytearray()
    for s, e in order:
        if e <= nxt:
            continue
        if s <= nxt:
            out += stream[nxt:e]
            nxt = e
            got, nxt = r.pop_ready(nxt)
            if got is not None:
                out += got
        else:
            r.add(s, stream[s:e])
        assert all(r.starts[i] + len(r.datas[i]) < r.starts[i + 1] for i in range(len(r) - 1))
        assert r.nbytes == sum(len(d) for d in r.datas)
        blocks = r.blocks(4)
        assert len(blocks) == min(4, len(r))
        for bs, be in blocks:
            assert stream[bs:be] == bytes(r.datas[r.starts.index(bs)])
    assert bytes(out) == stream
    assert not r and r.nbytes == 0


def test_reassembly_sack_order_most_recent_first():
    r = Reassembly()
    r.add(100, b"a" * 10)
    r.add(300, b"b" * 10)
    r.add(200, b"c" * 10)
    assert r.blocks(3) == [(200, 210), (300, 310), (100, 110)]
    r.add(310, b"d" * 5)  # extends a block: it becomes the most recent
    assert r.blocks(2) == [(300, 315), (200, 210)]
    assert r.add(300, b"b" * 5) == 0  # duplicate
