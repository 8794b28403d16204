"""Slow start's exit on delay (HyStart++, RFC 9406) and pacing, over a memwire with a queue.

Two `TcpEndpoint`s joined by a `MemWire` whose clock is a fake one: the
link's rate, propagation delay and bottleneck queue (tail drop beyond a
number of packets) are the memwire's own, and the clock jumps from event
to event, so each run is deterministic and takes simulated seconds in a
fraction of a real one. What is asserted are counts (drops, exits, rounds,
windows), never wall-clock time.

The HyStart++ state machine itself is checked against a direct transcription
of the RFC's pseudo-code on random ACK streams (hypothesis).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.drivers.memwire import MemWire
from usnet.proto.tcp import TcpEndpoint, TcpState
from usnet.proto.tcp import hystart as H
from usnet.proto.tcp.pacing import UNPACED, Pacer

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])
_ETH = bytes(14)
_PAD = bytes(12)  # the rest of a 20-byte IPv4 header after the two addresses


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class WireNet:
    """Endpoints A and B over a memwire; each frame carries a 34-byte stand-in for Ethernet+IPv4."""

    def __init__(self, *, rate_bps=0.0, delay=0.0, bottleneck=0, a_opts=None, **common):
        self.clock = Clock()
        self.wire = MemWire(rate_bps=rate_bps, delay=delay, bottleneck=bottleneck, clock=self.clock)
        self.a = TcpEndpoint(A, **{**common, **(a_opts or {})})
        self.b = TcpEndpoint(B, **common)
        self.sides = ((A, self.a, self.wire.a), (B, self.b, self.wire.b))
        self.apps: list = []
        self.wakeups: list = []  # callables: the next time an app wants to run, or None

    @property
    def now(self) -> float:
        return self.clock.now

    def flush(self) -> None:
        now = self.clock.now
        for src, ep, port in self.sides:
            frames = [_ETH + src + dst + _PAD + seg for dst, seg, _, _ in ep.outgoing(now)]
            if frames:
                assert port.send_batch(frames) == len(frames)

    def step(self) -> bool:
        for app in self.apps:
            app()
        self.flush()
        now = self.clock.now
        ts = [now + t for _, _, p in self.sides if (t := p.timeout()) is not None]
        ts += [t for _, ep, _ in self.sides if (t := ep.timeout()) is not None]
        ts += [t for w in self.wakeups if (t := w()) is not None and t > now]
        if not ts:
            return False
        self.clock.now = now = max(now, min(ts) + 1e-9)
        for _, ep, port in self.sides:
            for f in port.recv_batch(100_000):
                f = bytes(f)
                ep.input(f[14:18], f[18:22], f[34:], now)
        for _, ep, _ in self.sides:
            ep.on_timer(now)
        return True

    def run(self, until, limit: float) -> None:
        start = self.clock.now
        for _ in range(2_000_000):
            if until() or not self.step():
                return
            assert self.clock.now - start < limit, "simulated time ran out"
        raise AssertionError("too many steps")

    def pair(self):
        lst = self.b.listen(80)
        c = self.a.connect(B, 80, self.now)
        self.run(lambda: lst.accept_queue and c.state is TcpState.ESTABLISHED, limit=10)
        return c, self.b.accept(80)

    def close(self) -> None:
        self.wire.close()


def _bulk(net: WireNet, c, s, data: bytes, limit: float = 120.0) -> tuple[bytes, dict]:
    """Send ``data`` from c to s as fast as the connection takes it; peaks of cwnd and srtt."""
    off = 0
    got = bytearray()
    peak = {"cwnd": 0, "srtt": 0.0}

    def app():
        nonlocal off
        while off < len(data):
            n = c.send(memoryview(data)[off : off + 65536])
            if not n:
                break
            off += n
        while d := s.recv(1 << 20):
            got.extend(d)
        peak["cwnd"] = max(peak["cwnd"], c.cc.cwnd)
        peak["srtt"] = max(peak["srtt"], c.stats.srtt or 0.0)

    net.apps.append(app)
    net.run(lambda: len(got) >= len(data), limit)
    return bytes(got), peak


# --------------------------------------------------------------------------- memwire's queue


def test_memwire_bottleneck_tail_drops_what_the_queue_cannot_hold():
    clock = Clock()
    w = MemWire(rate_bps=1e6, bottleneck=5, clock=clock)
    assert w.a.send_batch([bytes(1000)] * 12) == 12  # taken (the sender never hears of a drop)
    assert w.tail_drops == 7
    clock.now = 1.0
    assert len(w.b.recv_batch(100)) == 5
    # the queue drained: room again
    assert w.a.send_batch([bytes(1000)] * 3) == 3 and w.tail_drops == 7
    # the default is no bottleneck queue: nothing dropped
    clock2 = Clock()
    w2 = MemWire(rate_bps=1e6, clock=clock2)
    assert w2.a.send_batch([bytes(1000)] * 500) == 500 and w2.tail_drops == 0
    clock2.now = 10.0
    assert len(w2.b.recv_batch(1000)) == 500
    w.close()
    w2.close()


# --------------------------------------------------------------------------- HyStart++ end to end

RATE = 5e6  # bit/s
DELAY = 0.010  # one way: 20 ms RTT
QUEUE = 200  # packets
MSS = 1448
BDP = RATE / 8 * 2 * DELAY  # bytes


@pytest.mark.parametrize("algo", ["cubic", "newreno"])
def test_deep_buffer_slow_start_exits_on_delay(algo):
    """Behind a 200-packet queue nothing is lost for long: slow start must end on the delay."""
    net = WireNet(rate_bps=RATE, delay=DELAY, bottleneck=QUEUE, congestion=algo)
    c, s = net.pair()
    data = random.Random(5).randbytes(2_000_000)
    got, peak = _bulk(net, c, s, data)
    assert got == data
    st = c.stats
    assert st.css_entries >= 1 and st.css_rounds >= H.CSS_ROUNDS and st.hystart_exits == 1
    assert c.cc.ssthresh < 1 << 31  # in congestion avoidance without a loss
    assert net.wire.tail_drops == 0 and st.retransmits == 0 and st.rto_timeouts == 0
    assert peak["cwnd"] < BDP + QUEUE * MSS  # the queue never overflowed
    assert peak["srtt"] < 0.35  # the issue measured 0.70 s
    assert c.stats.as_dict()["hystart_exits"] == 1
    net.close()


def test_without_hystart_the_same_path_fills_the_queue():
    """The control: plain slow start runs the queue full (the test above could fail)."""
    net = WireNet(rate_bps=RATE, delay=DELAY, bottleneck=QUEUE, hystart=False)
    c, s = net.pair()
    data = random.Random(5).randbytes(2_000_000)
    got, peak = _bulk(net, c, s, data)
    assert got == data
    assert c.stats.hystart_exits == 0 and c.stats.css_entries == 0
    assert net.wire.tail_drops > 50 and peak["srtt"] > 0.4
    assert peak["cwnd"] > BDP + QUEUE * MSS
    net.close()


# --------------------------------------------------------------------------- pacing end to end


def _chunked(pacing: bool) -> tuple[WireNet, object]:
    """A sender that writes 64 KB every 40 ms (a video server, say) into a 20-packet queue."""
    net = WireNet(rate_bps=50e6, delay=0.010, bottleneck=20, pacing=pacing)
    c, s = net.pair()
    chunk, period, n = 65536, 0.040, 30
    data = random.Random(9).randbytes(chunk * n)
    got = bytearray()
    st = {"off": 0, "next": net.now}

    def app():
        while st["off"] < len(data) and net.now >= st["next"]:
            k = c.send(memoryview(data)[st["off"] : st["off"] + chunk - st["off"] % chunk])
            if not k:
                break
            st["off"] += k
            if st["off"] % chunk == 0:
                st["next"] += period
        while d := s.recv(1 << 20):
            got.extend(d)

    net.apps.append(app)
    net.wakeups.append(lambda: st["next"] if st["off"] < len(data) else None)
    net.run(lambda: len(got) >= len(data), limit=60)
    assert bytes(got) == data
    return net, c


def test_pacing_spreads_bursts_so_a_shallow_queue_drops_far_fewer():
    unpaced, cu = _chunked(pacing=False)
    paced, cp = _chunked(pacing=True)
    assert cu.stats.pacing_rate == 0 and cu.stats.pacing_holds == 0
    assert cp.stats.pacing_rate > 0 and cp.stats.pacing_holds > 10
    assert unpaced.wire.tail_drops >= 20
    assert paced.wire.tail_drops * 3 <= unpaced.wire.tail_drops
    assert cp.stats.retransmits * 3 <= cu.stats.retransmits
    unpaced.close()
    paced.close()


def test_a_paced_connection_wakes_for_its_next_burst():
    """Sans-I/O: held data is one more deadline in timeout(), and nothing leaves before it."""
    net = WireNet(rate_bps=0.0, delay=0.010)
    c, _ = net.pair()
    assert c.pacer is not None and c.stats.srtt is not None
    c.send(bytes(200_000))
    first = c.outgoing(net.now)
    assert 0 < len(first) < 10  # a burst, not the initial window of 10
    t = c.timeout()
    assert t is not None and net.now < t < net.now + 0.005
    assert c.outgoing(net.now) == []  # before the deadline: nothing
    c.on_timer(t)
    assert len(c.outgoing(t)) >= 1
    net.close()


# --------------------------------------------------------------------------- units


def test_pacing_rate_follows_linux_ratios():
    p = Pacer()
    assert p.update(cwnd=100_000, ssthresh=1 << 31, flight=0, srtt=0.1) == pytest.approx(2_000_000)
    assert p.update(cwnd=100_000, ssthresh=150_000, flight=0, srtt=0.1) == pytest.approx(1_200_000)
    assert p.update(cwnd=100_000, ssthresh=1 << 31, flight=200_000, srtt=0.1) == pytest.approx(4_000_000)
    assert p.update(cwnd=100_000, ssthresh=1 << 31, flight=0, srtt=None) == 0.0
    assert p.begin(0.0, 1448) == UNPACED
    p.update(cwnd=10_000_000, ssthresh=1 << 31, flight=0, srtt=0.01)
    assert p.burst(1448) == pytest.approx(2e9 / 1024, abs=2)  # a ms worth (1/1024 s, as Linux)
    p.update(cwnd=14480, ssthresh=1 << 31, flight=0, srtt=0.1)
    assert p.burst(1448) == 2 * 1448  # two segments at least


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(1e4, 1e9),
    gaps=st.lists(st.floats(0.0, 0.01), min_size=1, max_size=200),
)
def test_paced_bytes_never_exceed_rate_times_time_plus_one_burst(rate, gaps):
    """Whatever the wake-up times, what leaves is bounded by the rate plus a burst and a segment."""
    mss = 1448
    p = Pacer()
    p.rate = rate
    now, sent = 1.0, 0
    start = now
    for g in gaps:
        now += g
        room = p.begin(now, mss)
        n = 0 if room <= 0 else max(room - room % mss, mss)  # whole segments, one may overdraw
        p.end(now, n, mss, held=True)
        sent += n
        assert sent <= rate * (now - start) + p.burst(mss) + mss + 1
        if p.held:
            assert p.next_time > now or room > 0


# HyStart++ against the RFC's pseudo-code -------------------------------------------------------


class RfcModel:
    """RFC 9406 section 4.2, transcribed as literally as possible (windowEnd in sequence space)."""

    def __init__(self):
        self.window_end = None
        self.last = float("inf")
        self.cur = float("inf")
        self.count = 0
        self.in_css = False
        self.baseline = float("inf")
        self.css_rounds = 0
        self.done = False

    def ack(self, ack, nxt, rtt):
        if self.done:
            return False
        if self.window_end is None or ack >= self.window_end:
            self.window_end = nxt
            self.last, self.cur, self.count = self.cur, float("inf"), 0
            if self.in_css:
                self.css_rounds += 1
                if self.css_rounds >= 5:
                    self.done = True
                    return True
        if rtt is None:
            return False
        self.cur = min(self.cur, rtt)
        self.count += 1
        if not self.in_css:
            if self.count >= 8 and self.cur != float("inf") and self.last != float("inf"):
                thresh = max(0.004, min(self.last / 8, 0.016))
                if self.cur >= self.last + thresh:
                    self.baseline = self.cur
                    self.in_css = True
                    self.css_rounds = 0
        elif self.count >= 8 and self.cur < self.baseline:
            self.baseline = float("inf")
            self.in_css = False
            self.css_rounds = 0
        return False


acks = st.lists(
    st.tuples(
        st.integers(0, 3000),  # bytes newly acked
        st.integers(0, 6000),  # bytes newly sent before the ACK
        st.one_of(st.none(), st.integers(1, 300).map(lambda ms: ms / 1000)),  # RTT sample
    ),
    max_size=400,
)


@st.composite
def round_acks(draw):
    """ACK streams in rounds: each round acks the last one's data, RTTs around a drawn level."""
    stream = []
    outstanding = 14480
    for _ in range(draw(st.integers(1, 25))):
        level = draw(st.integers(5, 120))
        n = draw(st.integers(1, 16))
        sent = draw(st.integers(0, 30000))
        step = max(1, outstanding // n)
        for i in range(n):
            rtt = draw(st.one_of(st.none(), st.integers(level, level + 20).map(lambda ms: ms / 1000)))
            stream.append((step if i < n - 1 else outstanding, sent if i == 0 else 0, rtt))
        outstanding = max(sent, 1)
    return stream


@settings(max_examples=300, deadline=None)
@given(st.one_of(acks, round_acks()))
def test_hystart_matches_the_rfc_pseudocode(stream):
    hs = H.HyStart()
    model = RfcModel()
    una = nxt = 1
    exits = 0
    for acked, sent, rtt in stream:
        nxt += sent
        una = min(una + acked, nxt)
        got = hs.on_ack(una, nxt, rtt)
        assert got == model.ack(una, nxt, rtt)
        exits += got
        assert (hs.phase == H.DONE) == model.done
        if not model.done:
            assert (hs.phase == H.CSS) == model.in_css
        assert hs.exits == exits <= 1
        assert hs.css_rounds >= hs.css_round
    if hs.exits:
        assert hs.css_entries >= 1 and hs.css_rounds >= H.CSS_ROUNDS


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 100_000), max_size=50))
def test_css_grows_by_a_quarter_exactly(ackeds):
    hs = H.HyStart()
    hs.phase = H.CSS
    assert sum(hs.growth(a) for a in ackeds) == sum(ackeds) // H.CSS_GROWTH_DIVISOR
    hs.phase = H.SS
    assert all(hs.growth(a) == a for a in ackeds)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=20, max_size=200), st.integers(4, 60))
def test_a_steady_rtt_never_leaves_slow_start(per_round, base_ms):
    """Rounds whose minimum does not rise by the threshold keep slow start (jitter under 4 ms)."""
    hs = H.HyStart()
    rng = random.Random(base_ms)
    una = nxt = 1
    for k in per_round:
        nxt += 10 * k * 1448
        while una < nxt:
            una = min(una + 2896, nxt)
            assert not hs.on_ack(una, nxt, (base_ms + rng.choice((0, 1, 2, 3))) / 1000)
    assert hs.phase == H.SS and hs.css_entries == 0
