"""Issue 18: the workers of one netif share its link rate (usnet.domain.netif.linkshare).

Several SlotSchedulers, one per worker, paced together through a LinkShare: driven here as each
worker's loop drives its own (grant, charge, sleep until next_time), on one simulated clock, the
workers taking turns in a seeded random order where they wake at the same moment. What they send
together is counted by the schedulers' own accounting.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.domain.netif.linkshare import LinkShare
from usnet.domain.netif.txsched import LL, SlotScheduler

START = 1000.0
FRAME = 1514


def _run(scheds: list[SlotScheduler], busy: list[bool], until: float, seed: int = 0,
         stop_at: dict[int, float] | None = None) -> list[tuple[float, int, int]]:
    """Each worker in `busy` sends flat out (a general backlog of full frames) until `until` (or its
    `stop_at`); returns the log (time, worker, bytes) of every charge."""
    log = _run_classes(scheds, [(False, b) for b in busy], until, seed, stop_at=stop_at)
    return [(t, k, b) for t, k, _, b in log]


def _share(rate: float, n: int, **kw) -> list[SlotScheduler]:
    link = LinkShare(n, epoch=START)
    return [SlotScheduler(rate, start=START, peers=link.peer(k), **kw) for k in range(n)]


def _window_max(log: list[tuple[float, int, int]], rate_bytes: float) -> float:
    """The most bytes any window [t_i, t_j] carried beyond what the rate allows in it."""
    t = np.array([e[0] for e in log])
    b = np.array([e[2] for e in log], dtype=float)
    cum = np.cumsum(b)
    before = np.concatenate(([0.0], cum[:-1]))
    return float(((cum - rate_bytes * t) - np.minimum.accumulate(before - rate_bytes * t)).max())


@pytest.mark.parametrize("n", [2, 3, 4])
def test_workers_sending_flat_out_together_get_the_link_rate_not_n_times_it(n):
    rate = 10e6
    scheds = _share(rate, n)
    log = _run(scheds, [True] * n, START + 2.0, seed=n)
    total = sum(b for _, _, b in log)
    assert 0.95 * rate / 8 * 2.0 < total < 1.05 * rate / 8 * 2.0 + n * 2 * FRAME
    # no window carries more than the rate allows, beyond a horizon and a grant per worker
    h = scheds[0].horizon
    assert _window_max(log, rate / 8) <= h * rate / 8 + n * (h * rate / 8 + FRAME)
    per = [sum(b for _, k, b in log if k == j) for j in range(n)]
    assert min(per) > 0.5 * total / n, per  # each gets a fair part, give or take


def test_without_the_share_each_worker_paces_at_the_whole_rate():
    """What it was: N schedulers, one link, N times its rate."""
    rate = 10e6
    scheds = [SlotScheduler(rate, start=START) for _ in range(2)]
    log = _run(scheds, [True, True], START + 1.0)
    assert sum(b for _, _, b in log) > 1.9 * rate / 8


def test_one_worker_alone_uses_the_whole_rate_and_gets_it_back_when_the_other_stops():
    rate = 10e6
    scheds = _share(rate, 2)
    log = _run(scheds, [True, False], START + 1.0)
    assert sum(b for _, _, b in log) > 0.95 * rate / 8
    scheds = _share(rate, 2)
    log = _run(scheds, [True, True], START + 2.0, seed=7, stop_at={1: START + 1.0})
    late = sum(b for t, k, b in log if k == 0 and t >= START + 1.1)
    assert late > 0.9 * rate / 8 * 0.9  # worker 0 took the whole link again within two horizons
    early = sum(b for t, _, b in log if t < START + 1.0)
    assert early < 1.05 * rate / 8 + 4 * FRAME


def test_a_replacement_worker_goes_on_from_its_predecessor_s_count():
    """A worker restarted (a new scheduler on the same row) neither counts its predecessor's bytes
    again for the others nor makes them count what they had seen before it began."""
    rate = 10e6
    link = LinkShare(2, epoch=START)
    a, b = (SlotScheduler(rate, start=START, peers=link.peer(k)) for k in range(2))
    _run([a, b], [True, True], START + 0.5)
    b2 = SlotScheduler(rate, start=START + 0.5, peers=link.peer(1))
    assert b2._peer_seen == pytest.approx(sum(a.bytes_sent.values()))
    log = _run([a, b2], [True, True], START + 1.5, seed=3)
    total = sum(x for t, _, x in log if t >= START + 0.6)
    assert total < 1.05 * rate / 8 * 0.9 + 4 * FRAME


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 4), st.sampled_from([1e6, 10e6, 100e6]), st.integers(0, 2**16),
       st.lists(st.booleans(), min_size=4, max_size=4))
def test_never_above_the_link_rate_whoever_sends(n, rate, seed, busy):
    busy = busy[:n]
    if not any(busy):
        busy[0] = True
    scheds = _share(rate, n)
    log = _run(scheds, busy, START + 0.2, seed=seed)
    h = scheds[0].horizon
    assert _window_max(log, rate / 8) <= h * rate / 8 + n * (h * rate / 8 + FRAME)
    total = sum(b for _, _, b in log)
    assert total > 0.9 * rate / 8 * 0.2  # work-conserving: the busy ones fill the link


# -- LL slots aligned across workers ------------------------------------------------------------


def _run_classes(scheds: list[SlotScheduler], sends: list[tuple[bool, bool]], until: float, seed: int = 0,
                 check=None, stop_at: dict[int, float] | None = None) -> list[tuple[float, int, str, int]]:
    """Each worker sends flat out, full frames of the classes it has backlogged (its (LL, general)
    in `sends`) until `until` (or its `stop_at`); `check(t)` is called at every turn. Returns the
    log (time, worker, class, bytes) of every charge."""
    rnd = random.Random(seed)
    wake: list[float | None] = [START if any(s) else None for s in sends]
    log: list[tuple[float, int, str, int]] = []
    stop_at = stop_at or {}
    for _ in range(2_000_000):  # bounded: every turn moves a worker's wake-up on
        due = [(t, k) for k, t in enumerate(wake) if t is not None]
        if not due:
            break
        t = min(d[0] for d in due)
        if t > until:
            break
        k = rnd.choice([k for tk, k in due if tk == t])
        if t >= stop_at.get(k, float("inf")):
            wake[k] = None
            continue
        s, (ll, gen) = scheds[k], sends[k]
        for _ in range(10_000):
            cls, budget = s.grant(t, ll, gen)
            if cls is None:
                break
            assert (ll if cls == LL else gen) and budget >= 1
            n = max(1, -(-budget // FRAME))
            s.charge(cls, n * FRAME, t, n)
            log.append((t, k, cls, n * FRAME))
        if check is not None:
            check(t)
        nt = s.next_time(t, ll, gen)
        assert nt is not None
        wake[k] = max(nt, t + 1e-6)
    return log


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 4), st.sampled_from([1e6, 10e6, 1e9]), st.sampled_from([0.1, 0.2, 0.5]),
       st.integers(0, 2**16), st.lists(st.tuples(st.booleans(), st.booleans()), min_size=4, max_size=4))
def test_schedulers_of_one_link_agree_on_the_slot_at_every_instant(n, rate, share, seed, sends):
    """Every scheduler's current slot is the one its link time falls in, counted from the link's
    epoch: so any two of them at the same link time are in the same slot, whatever each sent."""
    sends = sends[:n]
    if not any(a or b for a, b in sends):
        sends[0] = (True, True)
    scheds = _share(rate, n, ll_share=share)
    s0 = scheds[0]
    width = s0.slot_bytes * 8 / rate

    def check(t: float) -> None:
        for s in scheds:
            s.catch_up(t)
            number = math.floor((s.vt - START) / width + 0.5 / s.slot_bytes)
            assert s.slot == number % s.frame_slots, (s.vt, s.slot, number)
            assert s.slot_at(s.vt) == s0.slot_at(s.vt)

    log = _run_classes(scheds, sends, START + 0.05, seed=seed, check=check)
    assert log


@pytest.mark.parametrize("n", [2, 3])
def test_the_ll_share_holds_on_the_whole_link_with_every_worker_sending_both(n):
    """Each worker backlogged with bulk and LL: together the LL class gets its share of the link's
    time (one slot in five), as one scheduler alone gives it; and the link is full."""
    rate = 10e6
    scheds = _share(rate, n)
    log = _run_classes(scheds, [(True, True)] * n, START + 2.0, seed=n)
    total = sum(b for *_, b in log)
    ll = sum(b for _, _, c, b in log if c == LL)
    assert 0.95 * rate / 8 * 2.0 < total
    assert abs(ll / total - scheds[0].effective_ll_share()) < 0.02, ll / total
    assert min(sum(b for _, k, c, b in log if k == j and c == LL) for j in range(n)) > 0.5 * ll / n
