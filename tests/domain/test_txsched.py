"""The transmit multiplexer (docs/architecture.md, "Low latency", issue 5): time slots, the LL share, pacing.

Everything runs on simulated time: the scheduler is sans-I/O and is handed
`now`; the netif and its memwire take a fake clock. No test sleeps, and no
assertion depends on the wall clock.

The simulated driver below does what the netif does: it asks for a grant,
sends frames from the granted class up to the budget (the last frame may
pass it), charges what it sent, and sleeps until the scheduler's next time
or the next arrival, whichever comes first.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.util import ControlledDevice, FakeClock
from usnet.domain import config
from usnet.domain.loop import Domain
from usnet.domain.netif.netif import Netif
from usnet.domain.netif.txsched import GENERAL, LL, SlotScheduler, ll_pattern
from usnet.drivers import MemWire
from usnet.drivers.block import FrameBlock

START = 1000.0


# -- the simulated driver -------------------------------------------------------------------------


class Sim:
    """A scheduler driven like the netif drives it, with queues of frame sizes per class."""

    def __init__(self, sched: SlotScheduler, frame_sizes: list[int]) -> None:
        self.s = sched
        self.sizes = frame_sizes
        self.q = {LL: deque(), GENERAL: deque()}
        self.log: list[tuple[float, str, int, str]] = []  # (time, class, bytes, slot owner at grant)
        self.idle_while_waiting = 0.0  # link capacity (bytes) lost while something was queued
        self.refused_then_now = 0  # next_time said "now" right after a refusal (a busy loop)
        self.largest = 0  # the largest frame sent
        self._k = 0

    def frame(self) -> int:
        self._k += 1
        return self.sizes[self._k % len(self.sizes)]

    def run(self, until: float, arrivals: list[tuple[float, str, int]] = (),
            backlog: tuple[str, ...] = (), start: float = START) -> None:
        s, q = self.s, self.q
        arrivals = sorted(arrivals)
        i = 0
        t = start
        while t <= until:
            waited = bool(q[LL] or q[GENERAL])  # queued since the previous wake-up
            while i < len(arrivals) and arrivals[i][0] <= t:
                q[arrivals[i][1]].append(arrivals[i][2])
                i += 1
            idle0 = s.idle_bytes
            first = True
            while True:
                for cls in backlog:  # a backlogged class never runs dry
                    while len(q[cls]) < 64:
                        q[cls].append(self.frame())
                cls, budget = s.grant(t, bool(q[LL]), bool(q[GENERAL]))
                if first and waited:
                    self.idle_while_waiting += s.idle_bytes - idle0
                first = False
                if cls is None:
                    break
                assert budget >= 1 and q[cls], (cls, budget)
                owner = s.owner()
                sent = n = 0
                while q[cls] and sent < budget:
                    f = q[cls].popleft()
                    self.largest = max(self.largest, f)
                    sent += f
                    n += 1
                s.charge(cls, sent, t, n)
                self.log.append((t, cls, sent, owner))
            nt = s.next_time(t, bool(q[LL]), bool(q[GENERAL]))
            if nt is not None and nt <= t:
                self.refused_then_now += 1
                nt = t + 1e-6
            na = arrivals[i][0] if i < len(arrivals) else None
            if nt is None and na is None:
                break
            t = min(x for x in (nt, na) if x is not None)

    def sent(self, cls: str | None = None) -> int:
        return sum(b for _, c, b, _ in self.log if cls is None or c == cls)


def assert_paced(sim: Sim) -> None:
    """No window [t_i, t_j] carries more than the link's rate allows, plus the horizon and one frame,
    and what the LL class may send ahead of its slots (its burst and one frame)."""
    s = sim.s
    if not sim.log:
        return
    t = np.array([e[0] for e in sim.log])
    b = np.array([e[2] for e in sim.log], dtype=float)
    rate = s.link_rate / 8
    allowance = s.horizon * rate + sim.largest + 1 + s.ll_burst + sim.largest
    cum = np.cumsum(b)
    before = np.concatenate(([0.0], cum[:-1]))
    # bytes in [t_i, t_j] = cum[j] - before[i] <= rate * (t_j - t_i) + allowance
    lhs = cum - rate * t
    rhs = np.minimum.accumulate(before - rate * t)
    assert (lhs <= rhs + allowance).all(), float((lhs - rhs).max() - allowance)


def assert_slots_add_up(s: SlotScheduler) -> None:
    """Every slot that passed was used, lent or idle, and was its owner's (the advisory's denominator)."""
    total = sum(s.slots_used.values()) + sum(s.slots_lent.values()) + s.slots_idle
    assert sum(s.slots_passed.values()) == total
    for cls in (LL, GENERAL):
        assert s.slots_passed[cls] >= s.slots_used[cls] + s.slots_lent[cls]


# -- hypothesis strategies --------------------------------------------------------------------------

rates = st.sampled_from([1e6, 10e6, 50e6, 1e9, 10e9])
shares = st.sampled_from([0.05, 0.1, 0.2, 0.25, 0.33, 0.5, 0.9])
slot_sizes = st.sampled_from([1514, 600, 9014])
frames_per = st.sampled_from([5, 10, 20, 100])
sizes = st.lists(st.integers(60, 1514), min_size=1, max_size=8) | st.just([9014, 64])


@st.composite
def arrival_patterns(draw, slot_time: float) -> list[tuple[float, str, int]]:
    """Bursts of frames of either class at random moments, on the scale of the slot time."""
    out = []
    t = START
    for _ in range(draw(st.integers(0, 40))):
        t += draw(st.floats(0, 30)) * slot_time
        cls = draw(st.sampled_from([LL, GENERAL]))
        for _ in range(draw(st.integers(1, 20))):
            out.append((t, cls, draw(st.integers(60, 1514))))
    return out


def make(rate, share, wc, slot, nslots) -> SlotScheduler:
    return SlotScheduler(rate, ll_share=share, work_conserving=wc, slot_bytes=slot, frame_slots=nslots,
                         start=START)


# -- the slot pattern -----------------------------------------------------------------------------


@given(st.integers(2, 400), st.data())
def test_ll_slots_are_spread_evenly_through_the_frame(n, data):
    k = data.draw(st.integers(1, n - 1))
    pat = ll_pattern(n, k)
    idx = [i for i, c in enumerate(pat) if c == LL]
    assert len(idx) == k
    gaps = [(idx[(j + 1) % k] - idx[j]) % n or n for j in range(k)]
    assert max(gaps) - min(gaps) <= 1  # not bunched: every run of general slots is as long as the others, ±1
    assert max(gaps) == math.ceil(n / k)


def test_share_rounds_to_whole_slots_and_every_fifth_slot_is_ll():
    s = SlotScheduler(10e6, ll_share=0.2, frame_slots=100)
    assert s.ll_slots == 20 and s.effective_ll_share() == 0.2
    assert "".join("L" if c == LL else "." for c in s.pattern[:10]) == "....L....L"
    assert SlotScheduler(10e6, ll_share=0.001).ll_slots == 1  # a share, however small, gets a slot
    assert SlotScheduler(10e6, ll_share=0.0).ll_slots == 0
    assert SlotScheduler(10e6, ll_share=0.9, frame_slots=10).ll_slots == 9


@pytest.mark.parametrize("kw, msg", [
    ({"link_rate": -1}, "link_rate"), ({"link_rate": 0}, "link_rate"), ({"link_rate": float("inf")}, "link_rate"),
    ({"link_rate": float("nan")}, "link_rate"), ({"link_rate": True}, "link_rate"), ({"link_rate": "1e6"}, "link_rate"),
    ({"ll_share": 0.95}, "ll_share"), ({"ll_share": -0.1}, "ll_share"), ({"ll_share": float("nan")}, "ll_share"),
    ({"work_conserving": 1}, "work_conserving"), ({"slot_bytes": 10}, "slot_bytes"),
    ({"frame_slots": 0}, "frame_slots"), ({"horizon": 0}, "horizon"),
])
def test_nonsense_parameters_are_refused_by_name(kw, msg):
    args = {"link_rate": 1e6, **kw}
    rate = args.pop("link_rate")
    with pytest.raises(ValueError, match=msg):
        SlotScheduler(rate, **args)


# -- the properties ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(rates, shares, st.booleans(), slot_sizes, frames_per, sizes, st.data())
def test_rate_never_exceeds_the_link_rate_over_any_arrivals(rate, share, wc, slot, nslots, fsizes, data):
    s = make(rate, share, wc, slot, nslots)
    arrivals = data.draw(arrival_patterns(s.slot_time))
    backlog = data.draw(st.sampled_from([(), (GENERAL,), (LL,), (LL, GENERAL)]))
    sim = Sim(s, fsizes)
    sim.run(START + 300 * s.slot_time, arrivals, backlog)
    assert_paced(sim)
    assert sim.refused_then_now == 0  # a refusal always names a later time: no busy loop
    assert sim.sent(LL) == s.bytes_sent[LL] and sim.sent(GENERAL) == s.bytes_sent[GENERAL]
    assert_slots_add_up(s)
    if backlog:  # and the link is used: over the run it carried what its rate allows, near enough
        capacity = (START + 300 * s.slot_time - START) * rate / 8
        if wc or backlog == (LL, GENERAL):
            assert sim.sent() >= capacity - 2 * (slot + max(fsizes))


@settings(max_examples=60, deadline=None)
@given(rates, shares, st.booleans(), slot_sizes, frames_per, sizes, st.data())
def test_backlogged_ll_gets_at_least_its_share(rate, share, wc, slot, nslots, fsizes, data):
    s = make(rate, share, wc, slot, nslots)
    arrivals = data.draw(arrival_patterns(s.slot_time))  # general traffic comes and goes, or floods
    flood = data.draw(st.booleans())
    sim = Sim(s, fsizes)
    end = START + 4 * nslots * s.slot_time
    sim.run(end, [a for a in arrivals if a[1] == GENERAL], (LL, GENERAL) if flood else (LL,))
    capacity = (end - START) * rate / 8
    slack = 2 * (slot + max(fsizes))
    assert sim.sent(LL) >= s.effective_ll_share() * capacity - slack


@settings(max_examples=60, deadline=None)
@given(rates, shares, slot_sizes, frames_per, sizes, st.data())
def test_work_conserving_link_is_never_idle_while_anything_waits(rate, share, slot, nslots, fsizes, data):
    s = make(rate, share, True, slot, nslots)
    arrivals = data.draw(arrival_patterns(s.slot_time))
    backlog = data.draw(st.sampled_from([(), (GENERAL,), (LL,)]))
    sim = Sim(s, fsizes)
    sim.run(START + 300 * s.slot_time, arrivals, backlog)
    assert sim.idle_while_waiting < 1.0  # bytes: rounding only
    if backlog:
        assert s.slots_idle == 0


@settings(max_examples=60, deadline=None)
@given(rates, shares, slot_sizes, frames_per, sizes, st.data())
def test_strict_keeps_each_class_to_its_own_slots(rate, share, slot, nslots, fsizes, data):
    s = make(rate, share, False, slot, nslots)
    arrivals = data.draw(arrival_patterns(s.slot_time))
    backlog = data.draw(st.sampled_from([(), (GENERAL,), (LL,), (LL, GENERAL)]))
    sim = Sim(s, fsizes)
    end = START + 3 * nslots * s.slot_time
    sim.run(end, arrivals, backlog)
    # general only ever starts in its own slots; LL in its own, or ahead of them (paid by them)
    assert all(cls == owner for _, cls, _, owner in sim.log if cls == GENERAL)
    assert s.borrowed_bytes == {LL: 0, GENERAL: 0} and s.slots_lent == {LL: 0, GENERAL: 0}
    # and so neither class gets more than its share
    capacity = (end - START) * rate / 8 + s.horizon * rate / 8
    assert sim.sent(GENERAL) <= (1 - s.effective_ll_share()) * capacity + 2 * (slot + max(fsizes))
    assert sim.sent(LL) <= s.effective_ll_share() * capacity + s.ll_burst + 2 * (slot + max(fsizes))


def test_strict_mode_leaves_an_idle_ll_slot_idle_and_general_waits_for_its_own():
    s = make(10e6, 0.5, False, 1514, 2)  # slots: general, LL, general, LL...
    assert s.pattern == (GENERAL, LL)
    sim = Sim(s, [1514])
    end = START + 200 * s.slot_time
    sim.run(end, backlog=(GENERAL,))
    capacity = (end - START) * 10e6 / 8
    assert 0.45 * capacity <= sim.sent(GENERAL) <= 0.5 * capacity + 2 * 1514 + s.horizon * 10e6 / 8
    assert s.slots_idle >= 95 and s.slots_used[LL] == 0
    # the same in work-conserving mode: general takes every slot
    s = make(10e6, 0.5, True, 1514, 2)
    sim = Sim(s, [1514])
    sim.run(end, backlog=(GENERAL,))
    assert sim.sent(GENERAL) >= capacity - 2 * 1514
    assert s.slots_lent[LL] >= 95 and s.slots_idle == 0


def test_a_jumbo_frame_spans_slots_and_its_class_pays_them_back():
    s = make(10e6, 0.2, True, 1514, 10)
    sim = Sim(s, [9014])
    end = START + 400 * s.slot_time
    sim.run(end, backlog=(LL, GENERAL))
    capacity = (end - START) * 10e6 / 8
    assert abs(sim.sent(LL) - 0.2 * capacity) <= 2 * 9014 + 1514
    assert_paced(sim)


def test_small_frames_share_a_slot_and_the_slot_counters_add_up():
    s = make(1e6, 0.2, True, 1514, 10)
    sim = Sim(s, [100])
    end = START + 100 * s.slot_time
    sim.run(end, backlog=(LL, GENERAL))
    assert s.frames_sent[LL] >= 14 * s.slots_used[LL] - 15  # ~15 frames of 100 B in a 1514-byte slot
    total = s.slots_used[LL] + s.slots_used[GENERAL] + s.slots_lent[LL] + s.slots_lent[GENERAL] + s.slots_idle
    assert 99 <= total <= 100 + 2  # the slots that passed (the horizon reaches a little ahead)
    assert s.slots_used[LL] * 4 in range(s.slots_used[GENERAL] - 8, s.slots_used[GENERAL] + 9)


def test_an_idle_link_banks_no_credit():
    s = make(10e6, 0.2, True, 1514, 100)
    s.grant(START, True, True)
    s.charge(GENERAL, 1514, START)
    later = START + 10.0  # ten idle seconds
    sim = Sim(s, [1514])
    sim.run(later + 50 * s.slot_time, backlog=(GENERAL,), start=later)
    burst = sum(b for t, _, b, _ in sim.log if t <= later)
    assert burst > 0
    assert burst <= s.horizon * 10e6 / 8 + 1514  # the first wake-up after the silence: the horizon, no more
    assert s.slots_idle > 8000
    assert_slots_add_up(s)  # the silence skipped whole frames: each class's slots passed with them
    assert s.slots_passed[LL] * 4 in range(s.slots_passed[GENERAL] - 4, s.slots_passed[GENERAL] + 5)


def test_catch_up_lets_an_idle_link_s_slots_pass_and_changes_no_grant():
    a, b = make(10e6, 0.2, True, 1514, 100), make(10e6, 0.2, True, 1514, 100)
    later = START + 100 * a.slot_time
    a.catch_up(later)
    assert a.slots_passed == {LL: 20, GENERAL: 80} and a.slots_idle == 100
    assert a.grant(later, True, True) == b.grant(later, True, True)
    assert b.slots_passed == a.slots_passed


# -- the netif ------------------------------------------------------------------------------------


def frame(kind: int, seq: int, size: int) -> bytes:
    """An Ethernet-sized frame whose bytes 14..19 say which flow and which one it is."""
    return bytes(14) + kind.to_bytes(1, "big") + seq.to_bytes(4, "big") + bytes(size - 19)


def general_block(seq: int, n: int, size: int = 1514) -> FrameBlock:
    data = np.zeros((n, size), np.uint8)
    data[:, 14] = 1
    data[:, 15:19] = np.frombuffer(b"".join((seq + i).to_bytes(4, "big") for i in range(n)), np.uint8).reshape(n, 4)
    return FrameBlock(data, np.full(n, size, np.int64))


def run_link(netif: Netif, wire: MemWire, clock: FakeClock, seconds: float, ll_key: int | None,
             ll_every: float = 0.005, ll_size: int = 200, floods: int = 1, tick: float = 0.0) -> dict:
    """`floods` general flows (keys 100...) keep their queues full of 1514-byte frames; a small
    flow (key `ll_key`, else 2) sends one 200-byte frame every `ll_every` s, as the switch
    queues it: a one-row FrameBlock. `tick`: the netif is flushed at most that often (a busy
    domain loop), so one flush sends several slots' worth. Returns what arrived and when."""
    LLK = ll_key if ll_key is not None else 2
    sent_at: dict[int, float] = {}
    waits: list[float] = []
    gen_bytes = ll_bytes = 0
    gen_seq = ll_seq = 0
    next_ll = START
    end = START + seconds
    while clock.now < end:
        for key in range(100, 100 + floods):
            while netif.queued(key)[0] < 512 // floods + 1:
                netif.enqueue_many(key, [general_block(gen_seq, 64)])
                gen_seq += 64
        if clock.now >= next_ll:
            f = np.frombuffer(frame(2, ll_seq, ll_size), np.uint8).reshape(1, ll_size)
            netif.enqueue_many(LLK, [FrameBlock(f, np.array([ll_size]))])
            sent_at[ll_seq] = clock.now
            ll_seq += 1
            next_ll += ll_every
        netif.flush()
        for item in wire.b.recv_batch(1 << 20):
            rows = [item] if isinstance(item, (bytes, bytearray)) else item.frames()
            for f in rows:
                if f[14] == 2:
                    waits.append(clock.now - sent_at.pop(int.from_bytes(f[15:19], "big")))
                    ll_bytes += len(f)
                else:
                    gen_bytes += len(f)
        t = netif.next_timeout()
        assert t is None or t > 0 or netif._stalled is False
        clock.now = min(next_ll, clock.now + max(tick, t if t is not None else 1.0))
    return {"waits": waits, "gen_bytes": gen_bytes, "ll_bytes": ll_bytes, "lost": len(sent_at)}


def test_ll_flow_goes_at_once_while_general_floods_and_general_gets_the_rest():
    """The LL class goes ahead of its slots and of the horizon of general frames (within its burst)."""
    clock = FakeClock(START)
    wire = MemWire(clock=clock)  # the wire itself is unlimited: the netif paces
    netif = Netif("a", wire.a, "10.0.0.1/24", link_rate=10e6, ll_share=0.2, clock=clock)
    netif.set_class(2, True)
    s = netif.sched
    r = run_link(netif, wire, clock, 2.0, ll_key=2)
    capacity = 2.0 * 10e6 / 8
    gap = math.ceil((s.frame_slots - s.ll_slots) / s.ll_slots)
    bound = s.horizon + (gap + 1) * s.slot_time + 1514 * s.byte_time
    assert len(r["waits"]) >= 390 and r["lost"] <= 1  # the last may still be queued
    assert max(r["waits"]) == 0  # handed to the device by the flush that queued it
    # most went ahead of their slots; the others found an LL slot current within the horizon
    assert 0 <= r["ll_bytes"] - s.ll_ahead_bytes <= 0.2 * r["ll_bytes"]
    assert bound < s.frame_slots * s.slot_time  # what it would wait for its slot
    # general gets everything the LL flow leaves (work-conserving), and the link is never overdriven
    assert r["gen_bytes"] >= 0.97 * (capacity - r["ll_bytes"])
    assert r["gen_bytes"] + r["ll_bytes"] <= capacity + s.horizon * 10e6 / 8 + 1514
    info = netif.info()["txsched"]
    assert info["ll_flows"] == [2] and info["frames"]["ll"] == len(r["waits"])
    assert info["slots_lent"]["ll"] > 0  # the LL flow uses a fraction of its slots; general the rest


@pytest.mark.parametrize("ll", [True, False], ids=["ll", "general"])
def test_among_twenty_floods_only_the_ll_class_keeps_its_bound(ll):
    """Round-robin gives a small general flow one turn in 21; the LL class one slot in five."""
    clock = FakeClock(START)
    wire = MemWire(clock=clock)
    netif = Netif("a", wire.a, "10.0.0.1/24", link_rate=10e6, ll_share=0.2, clock=clock)
    if ll:
        netif.set_class(2, True)
    s = netif.sched
    r = run_link(netif, wire, clock, 1.0, ll_key=2, floods=20)
    gap = math.ceil((s.frame_slots - s.ll_slots) / s.ll_slots)
    bound = s.horizon + (gap + 1) * s.slot_time + 1514 * s.byte_time
    p50 = sorted(r["waits"])[len(r["waits"]) // 2]
    if ll:
        assert max(r["waits"]) == 0
    else:
        assert p50 > 1.5 * bound  # ~21 frames of 1.2 ms each


def test_a_light_general_flow_waits_one_round_of_the_floods_not_their_backlog():
    """Each turn is worth a frame's bytes, not a block: found by `usnet bench lowlat`, where a
    200 B flow got one frame a turn while bulk flows got a whole flush's worth, and waited seconds."""
    clock = FakeClock(START)
    wire = MemWire(clock=clock)
    netif = Netif("a", wire.a, "10.0.0.1/24", link_rate=10e6, ll_share=0.2, clock=clock)
    r = run_link(netif, wire, clock, 1.0, ll_key=None, floods=8, tick=0.004)
    s = netif.sched
    one_round = (8 + 1) * 1514 * s.byte_time
    assert r["lost"] <= 1 and len(r["waits"]) >= 190
    assert max(r["waits"]) <= one_round + 0.004 + s.horizon + s.frame_slots * s.slot_time


def test_strict_netif_keeps_general_to_its_share_and_ll_still_gets_through():
    clock = FakeClock(START)
    wire = MemWire(clock=clock)
    netif = Netif("a", wire.a, "10.0.0.1/24", link_rate=10e6, ll_share=0.2, work_conserving=False,
                  clock=clock)
    netif.ll_keys.add(2)  # ll_keys may be edited directly too
    s = netif.sched
    r = run_link(netif, wire, clock, 1.0, ll_key=2)
    capacity = 1.0 * 10e6 / 8
    assert r["gen_bytes"] <= 0.8 * capacity + s.horizon * 10e6 / 8 + 2 * 1514
    assert r["gen_bytes"] >= 0.75 * capacity
    assert max(r["waits"]) == 0  # ahead of its slots, which pay for it
    assert s.borrowed_bytes == {LL: 0, GENERAL: 0}


def test_paced_netif_splits_blocks_keeps_order_and_requeues_what_the_device_refused():
    clock = FakeClock(START)
    dev = ControlledDevice("fussy", 10**9, per_call=True)
    netif = Netif("a", dev, "10.0.0.1/24", link_rate=1e6, aqm=False, clock=clock, mac=b"\x02" * 6)
    netif.enqueue_many(1, [general_block(0, 100, 300), frame(1, 100, 300), general_block(101, 50, 300)])
    total = 151
    steps = 0
    while len(dev.got) < total:
        dev.room = [3, 0, 1000][steps % 3]
        netif.flush()
        t = netif.next_timeout()
        if t is None:
            assert netif.queued(1) == (0, 0)
            break
        assert t > 0 or netif._stalled
        clock.now += max(t, 0.0005)
        steps += 1
        assert steps < 10_000
    seqs = [int.from_bytes(f[15:19], "big") for f in dev.got]
    assert seqs == list(range(total))
    assert netif.queued(1) == (0, 0) and netif.next_timeout() is None
    assert netif.tx_frames == total and netif.tx_bytes == total * 300
    # 151 frames of 300 B at 1 Mbit/s take 0.36 s; the device never got them faster
    assert clock.now - START >= total * 300 * 8 / 1e6 - netif.sched.horizon - 300 * 8e-6


def test_without_link_rate_nothing_changes():
    clock = FakeClock(START)
    wire = MemWire(clock=clock)
    netif = Netif("a", wire.a, "10.0.0.1/24", clock=clock)
    assert netif.sched is None and "txsched" not in netif.info()
    netif.enqueue_many(1, [general_block(0, 500)])
    netif.enqueue(2, frame(2, 0, 200))
    assert netif.next_timeout() == 0.0005  # frames wait: the switch's short poll, as always
    assert netif.flush() == 501  # all at once: no pacing
    assert netif.next_timeout() is None
    with pytest.raises(ValueError, match="link_rate"):
        Netif("b", wire.b, "10.0.0.2/24", ll_share=0.2)
    with pytest.raises(ValueError, match="link_rate"):
        Netif("b", wire.b, "10.0.0.2/24", work_conserving=False)
    with pytest.raises(ValueError, match="LL slots"):
        netif.set_class(2, True)


@pytest.mark.parametrize("kw, msg", [
    ({"link_rate": -1e6}, "link_rate"), ({"link_rate": 0}, "link_rate"),
    ({"link_rate": 1e6, "ll_share": 1.5}, "ll_share"), ({"link_rate": 1e6, "ll_share": -0.2}, "ll_share"),
    ({"ll_share": 0.2}, "link_rate"), ({"link_rate": 1e6, "work_conserving": "yes"}, "work_conserving"),
])
def test_domain_refuses_nonsense_netif_parameters(kw, msg):
    wire = MemWire()
    with Domain() as d:
        with pytest.raises(ValueError, match=msg):
            d.add_netif("a", wire.a, "10.0.0.1/24", **kw)
        assert "a" not in d.switches


@pytest.mark.parametrize("text, msg", [
    ("link_rate = -5", "link_rate"), ("link_rate = 0", "link_rate"), ("link_rate = nan", "link_rate"),
    ('link_rate = "fast"', "link_rate"), ("link_rate = 1e6\nll_share = 0.95", "ll_share"),
    ("ll_share = 0.2", "need link_rate"), ("work_conserving = false", "need link_rate"),
])
def test_config_refuses_nonsense_pacing(tmp_path, text, msg):
    p = tmp_path / "c.toml"
    p.write_text(f'[[netif]]\nname = "u0"\naddress = "10.1.0.2/24"\n{text}\n')
    with pytest.raises(ValueError, match=msg):
        config.load(str(p))


def test_config_pacing_keys_load_and_survive_dump(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[[netif]]\nname = "u0"\naddress = "10.1.0.2/24"\nlink_rate = 50e6\n'
                 'll_share = 0.25\nwork_conserving = false\n')
    cfg = config.load(str(p))
    nc = cfg.netif[0]
    assert (nc.link_rate, nc.ll_share, nc.work_conserving) == (50e6, 0.25, False)
    p.write_text(config.dump(cfg))
    assert config.load(str(p)) == cfg


def test_set_flow_class_over_a_running_domain_carries_every_datagram():
    """The agent's hook: a flow moved to the LL class and back loses nothing; Status shows the slots."""
    from usnet.client import Client

    wire = MemWire()
    with Domain() as d:
        d.add_netif("a", wire.a, "10.9.0.1/24", link_rate=1e9, ll_share=0.2)
        d.add_netif("b", wire.b, "10.9.0.2/24")
        d.start()
        c = Client.local(d)
        sa = c.udp_socket("a", 5000)
        sb = c.udp_socket("b", 6000)
        sa.sendto(b"resolve", ("10.9.0.2", 6000))
        assert sb.recv_many(1, timeout=5) == [(b"resolve", ("10.9.0.1", 5000))]
        (flow,) = [f for n in d.status()["netifs"] if n["netif"]["name"] == "a" for f in n["flows"]]
        with pytest.raises(ValueError, match="'ll' or 'general'"):
            d.set_flow_class("a", flow["id"], "gold")
        with pytest.raises(OSError, match="no netif"):
            d.set_flow_class("zz", flow["id"], "ll")
        with pytest.raises(OSError, match="no flow"):
            d.set_flow_class("a", 9999, "ll")
        with pytest.raises(ValueError, match="LL slots"):
            d.set_flow_class("b", 1, "ll")  # b is not paced
        got: list = []
        for cls in ("ll", "general", "ll"):
            d.set_flow_class("a", flow["id"], cls)
            data = [b"%s %d" % (cls.encode(), i) for i in range(300)]
            assert sa.send_many(data, ("10.9.0.2", 6000)) == 300
            batch: list = []
            while len(batch) < 300:
                more = sb.recv_many(300 - len(batch), timeout=5)
                assert more, f"only {len(batch)} of 300 arrived"
                batch += more
            assert [p for p, _ in batch] == data
            got += batch
        info = next(n for n in d.status()["netifs"] if n["netif"]["name"] == "a")["netif"]["txsched"]
        assert info["ll_flows"] == [flow["id"]]
        assert info["frames"]["ll"] == 600 and info["frames"]["general"] >= 300
        assert info["link_rate"] == 1e9 and info["ll_share"] == 0.2


def test_without_ll_slots_an_ll_key_is_served_as_general_and_never_starves():
    clock = FakeClock(START)
    dev = ControlledDevice("fussy", 10**9, per_call=True)
    netif = Netif("a", dev, "10.0.0.1/24", link_rate=10e6, ll_share=0.0, work_conserving=False, clock=clock)
    with pytest.raises(ValueError, match="LL slots"):
        netif.set_class(2, True)
    netif.ll_keys.add(2)  # behind the API's back: still carried, as general
    netif.enqueue_many(2, [frame(2, i, 500) for i in range(50)])
    for _ in range(1000):
        if netif.next_timeout() is None:
            break
        netif.flush()
        clock.now += netif.next_timeout() or 0.0
    assert len(dev.got) == 50 and netif.sched.frames_sent == {LL: 0, GENERAL: 50}
