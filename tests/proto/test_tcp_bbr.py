"""BBR (usnet.proto.tcp.bbr) and the delivery-rate samples it steers by (usnet.proto.tcp.rate).

The transfers run over the simulated link of test_tcp_connection (`Net`: a
rate-limited, delayed, seeded-lossy link on a clock that jumps from event to
event), so every run is deterministic and what is asserted are counts:
bytes delivered in a stretch of simulated time, windows, modes entered.

The windowed max filter and the rate sampler are checked on random inputs
(hypothesis) against what they promise: the filter's answer is a value
seen within its window and at least the newest; a sample never claims more
bytes than were delivered over its interval, and a flight that left while
the sender had nothing more to send gives app-limited samples.
"""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.proto.test_tcp_connection import Net, transfer
from usnet.proto.tcp.bbr import DRAIN, MIN_CWND_SEGS, PROBE_BW, PROBE_RTT, STARTUP, Bbr, WindowedMax
from usnet.proto.tcp.congestion import make_congestion, switch_congestion
from usnet.proto.tcp.rate import Marker, Rate

PROPS = settings(max_examples=200, deadline=None)


def _bulk(algo: str, seconds: float, *, loss: float = 0.0, rate: float = 5e6, delay: float = 0.01,
          seed: int = 3, watch=None):
    """A bulk transfer A -> B for ``seconds`` of simulated time; returns (net, client, bytes delivered)."""
    random.seed(seed)  # BBR's random PROBE_BW phase
    net = Net(seed=seed, delay=delay, loss=loss, rate=rate, congestion=algo,
              rcvbuf_max=8 << 20, sndbuf_max=8 << 20)
    c, s = net.pair()
    _, sink = transfer(net, c, s, bytes(int(rate * seconds * 2)), fin=False)
    if watch is not None:
        net.apps.append(lambda: watch(net, c))
    t0 = net.now
    net.run(lambda: net.now - t0 >= seconds, limit=seconds + 5)
    return net, c, len(sink.buf)


def test_bbr_keeps_near_the_link_rate_through_random_loss_where_cubic_falls_far_below():
    # 5 MB/s, 20 ms RTT, 2 % of the segments lost at random (not for congestion)
    rate, secs = 5e6, 2.0
    cwnds: list[int] = []  # BBR's window through the last second (one moment may be a recovery's)
    _, cb, bbr = _bulk("bbr", secs, loss=0.02, rate=rate,
                       watch=lambda net, c: cwnds.append(c.cc.cwnd) if net.now > secs / 2 else None)
    _, cc, cubic = _bulk("cubic", secs, loss=0.02, rate=rate)
    assert cb.cc.name == "bbr" and cc.cc.name == "cubic"
    assert cb.stats.retransmits > 50 and cc.stats.retransmits > 20  # both met the losses
    link = rate * secs * 1448 / 1500  # payload the link can carry (headers take the rest)
    assert bbr > 0.75 * link
    assert cubic < 0.3 * link and bbr > 3 * cubic
    assert cb.cc.mode == PROBE_BW and statistics.median(cwnds) >= 0.02 * rate  # the window did not collapse: a BDP
    assert cb.cc.bw.get() == pytest.approx(rate * 1448 / 1500, rel=0.2)
    assert cb.stats.delivery_rate == pytest.approx(rate * 1448 / 1500, rel=0.3)


def test_bbr_leaves_startup_when_the_bandwidth_plateaus_and_drains_the_queue():
    modes: list[int] = []
    peak = [0]

    def watch(net, c):
        if not modes or modes[-1] != c.cc.mode:
            modes.append(c.cc.mode)
        if c.cc.mode == PROBE_BW:
            peak[0] = max(peak[0], c.in_flight)

    rate, delay = 5e6, 0.01
    _, c, got = _bulk("bbr", 1.5, rate=rate, delay=delay, watch=watch)
    bbr = c.cc
    assert modes[0] == STARTUP and PROBE_BW in modes and PROBE_RTT not in modes
    assert modes.index(PROBE_BW) > 0 and set(modes[: modes.index(PROBE_BW)]) <= {STARTUP, DRAIN}
    assert bbr.full_bw_reached and bbr.rtt_cnt > 20
    assert bbr.bw.get() == pytest.approx(rate * 1448 / 1500, rel=0.15)
    assert bbr.min_rtt == pytest.approx(2 * delay, rel=0.2)
    bdp = rate * 2 * delay
    # PROBE_BW keeps the flight near the BDP: cwnd_gain 2, the probing phase and the
    # allowances for bursts and ACK batches, not the unbounded queue a loss-based sender fills
    assert 0.8 * bdp < peak[0] < 4 * bdp
    assert got > 0.7 * rate * 1.5 * 1448 / 1500


def test_probe_rtt_after_the_min_rtt_estimate_expires():
    seen = {"probe_rtt_max_flight": 0, "after": None}

    def watch(net, c):
        bbr = c.cc
        if bbr.mode == PROBE_RTT and bbr.probe_rtt_done >= 0:
            seen["probe_rtt_max_flight"] = max(seen["probe_rtt_max_flight"], c.in_flight)
        if bbr.probe_rtt_entries and bbr.mode != PROBE_RTT and seen["after"] is None:
            seen["after"] = bbr.mode

    # a constant delay and a pacing rate below the link's: the first min_rtt is never beaten
    _, c, _ = _bulk("bbr", 11.5, rate=1e6, delay=0.01, watch=watch)
    bbr = c.cc
    assert bbr.probe_rtt_entries == 1
    assert 0 < seen["probe_rtt_max_flight"] <= MIN_CWND_SEGS * c.mss
    assert seen["after"] == PROBE_BW  # back to probing bandwidth, the model kept
    assert bbr.min_rtt_stamp > 10.0


def test_bbr_by_name_and_switched_on_a_live_window():
    b = make_congestion("bbr", 1448)
    assert isinstance(b, Bbr) and b.rate_driven and not b.prr and b.hystart is None
    assert b.cwnd == 10 * 1448 and b.pacing_rate == 0.0
    cubic = make_congestion("cubic", 1448)
    assert cubic.pacing_rate == 0.0 and not cubic.rate_driven and cubic.prr
    cubic.cwnd, cubic.ssthresh = 50_000, 40_000
    b2 = switch_congestion(cubic, "bbr")
    assert isinstance(b2, Bbr) and (b2.cwnd, b2.ssthresh) == (50_000, 40_000)


def test_an_rto_takes_bbr_to_one_segment_and_the_end_of_recovery_restores_the_window():
    net = Net(seed=5, delay=0.01, rate=5e6, congestion="bbr")
    c, s = net.pair()
    transfer(net, c, s, bytes(3_000_000), fin=False)
    net.run(lambda: c.cc.mode == PROBE_BW, limit=5)
    net.run_for(0.2)
    before = c.cc.cwnd
    net.blackhole.add(net.B)
    net.run(lambda: c.stats.rto_timeouts >= 1, limit=5)
    assert c.cc.cwnd == c.mss and c.cc.prior_cwnd >= before // 2
    net.blackhole.clear()
    net.run(lambda: c._recovery == 0 and c.cc.prev_state == 0, limit=10)
    assert c.cc.cwnd >= c.cc.prior_cwnd * 0.9  # restored, not regrown from one segment


# --------------------------------------------------------------------------- the max filter


@PROPS
@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0, 1e9, allow_nan=False)), min_size=1, max_size=80),
       st.integers(1, 12))
def test_windowed_max_is_a_value_of_the_window_and_at_least_the_newest(steps, win):
    f = WindowedMax()
    t = 0
    log: list[tuple[int, float]] = []
    for dt, v in steps:
        t += dt
        log.append((t, v))
        got = f.update(win, t, v)
        assert got == f.get() >= v
        assert any(got == x for u, x in log if t - u <= win)  # never a value that aged out
    # a value that beats everything in the window is the answer at once
    top = max(x for _, x in log) + 1
    assert f.update(win, t, top) == top


# --------------------------------------------------------------------------- the rate sampler


@PROPS
@given(st.lists(st.tuples(st.sampled_from(["send", "ack", "idle"]), st.integers(1, 5),
                          st.floats(0.0001, 0.05)), min_size=1, max_size=120))
def test_a_rate_sample_never_claims_more_than_was_delivered_over_its_interval(program):
    mss = 1000
    now = 0.0
    rate = Rate(now)
    flight: list[Marker] = []  # sent, not yet delivered (records as RACK's, a Marker each here)
    log: list[tuple[float, int]] = []  # (time, bytes) of every delivery
    end = 0
    cwnd = 10 * mss
    for op, n, dt in program:
        now += dt
        if op == "send":
            for _ in range(n):
                rec = Marker()
                end += mss
                rec.end, rec.xmit = end, now
                rate.sent(rec, now, not flight)
                flight.append(rec)
        elif op == "idle":
            # the application has nothing more to send: what is in flight is all there will be
            rate.check_app_limited(0, mss, len(flight) * mss, cwnd, 0)
            marked = rate.app_limited
            if len(flight) * mss < cwnd:
                assert marked >= rate.delivered + len(flight) * mss and marked > 0
        else:
            rate.begin(len(flight) * mss)
            got = flight[:n]  # deliver some, the oldest or (every other ACK) the newest first
            if len(log) % 2:
                got = flight[-n:]
            for rec in got:
                flight.remove(rec)
                rate.on_delivered(rec)
            acked = len(got) * mss
            rate.rs.rtt = 0.001
            rs = rate.finish(now, acked, 0)
            if acked:
                log.append((now, acked))
            if rs.interval > 0:
                since = sum(b for t, b in log if t > rs.prior_time)
                assert rs.delivered == since  # exactly what was delivered after the record left
                assert rs.interval >= now - rs.prior_time
                assert rs.rate <= since / (now - rs.prior_time) + 1e-6
                app = any(r.app for r in got)
                assert rs.is_app_limited <= app  # app-limited only if a record sent so was sampled
            if rate.app_limited:
                assert rate.delivered <= rate.app_limited  # cleared once the flight is delivered


def test_app_limited_marks_the_flight_and_clears_once_it_is_delivered():
    rate = Rate(0.0)
    recs = []
    for i in range(4):
        r = Marker()
        r.end, r.xmit = 1000 * (i + 1), 0.0
        rate.sent(r, 0.0, i == 0)
        recs.append(r)
    rate.check_app_limited(0, 1000, 4000, 20_000, 0)
    assert rate.app_limited == 4000
    late = Marker()
    late.end, late.xmit = 5000, 0.01
    rate.sent(late, 0.01, False)
    assert late.app and not any(r.app for r in recs)
    rate.begin(5000)
    for r in recs:
        rate.on_delivered(r)
    rate.rs.rtt = 0.02
    rs = rate.finish(0.02, 4000, 0)
    assert rs.delivered == 4000 and not rs.is_app_limited and rate.app_limited == 4000
    rate.begin(1000)
    rate.on_delivered(late)
    rs = rate.finish(0.03, 1000, 0)
    assert rs.is_app_limited and rate.app_limited == 0  # past the mark: no longer app-limited
    # a window-limited sender is not app-limited
    rate.check_app_limited(0, 1000, 20_000, 20_000, 0)
    assert rate.app_limited == 0
