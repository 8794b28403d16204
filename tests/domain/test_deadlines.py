"""Issue 18: usnetd's deadlines kept in order (usnet.domain.deadlines), so a loop turn looks at one.

The relay's check (usnet.domain.workers.relay: `Relay.check`) used to take, each turn, the soonest
deadline of every relayed request still waiting (a min over each busy line's requests: O(waiting));
it now peeks at a heap (`Relay.due`), and a drain's bound (`Drains.check`) is kept the same way.
The heap is property-tested against a sorted list; the turn's work is counted (`Deadlines.looked`),
not timed, in a real ShardedDomain (no workers: the deadlines are those of lines whose requests are not due).
"""

from __future__ import annotations

import socket
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from usnet.abi import protocol as P
from usnet.domain.deadlines import Deadlines
from usnet.domain.workers.bounds import HEARTBEAT
from usnet.domain.workers.relayed import Line, Waiting
from usnet.domain.workers.sharded import ShardedDomain


@given(st.lists(st.tuples(st.floats(0, 100), st.booleans()), max_size=60), st.floats(0, 100))
def test_due_hands_over_what_is_due_soonest_first_and_keeps_the_rest(entries, now):
    """Against a model (a stable sort): `due(now)` yields exactly the entries with time <= now,
    in time order, ties in the order added; the rest stay, and `next_in` is the soonest of them."""
    d: Deadlines[int] = Deadlines()
    for i, (when, _) in enumerate(entries):
        d.add(when, i)
    model = sorted(((w, i) for i, (w, _) in enumerate(entries)), key=lambda e: e[0])
    got = list(d.due(now))
    assert got == [(w, i) for w, i in model if w <= now]
    rest = [(w, i) for w, i in model if w > now]
    assert len(d) == len(rest)
    assert d.next_in(now, 1e9) == (rest[0][0] - now if rest else 1e9)
    assert list(d.due(1e9)) == rest


def test_a_deadline_moved_later_is_handed_over_at_its_new_time_only():
    """The lazy removal its callers use: an entry added again with a later time is handed over
    twice, the first time stale (the caller's record says so) and skipped."""
    d: Deadlines[str] = Deadlines()
    times = {"a": 1.0}
    d.add(1.0, "a")
    times["a"] = 3.0
    d.add(3.0, "a")
    assert [x for w, x in d.due(2.0) if times[x] == w] == []
    assert [x for w, x in d.due(3.0) if times[x] == w] == ["a"]


def _lines(dom: ShardedDomain, n: int, due: float) -> tuple[list[socket.socket], list[Waiting]]:
    """n lines, each with one judged request waiting, due at `due` (added as `Relay.send` adds them).
    Their sockets are one pair: nothing here reads a line that has nothing due."""
    socks, waits = list(socket.socketpair()), []
    for i in range(n):
        line = Line(i, 1, socks[0])
        w = Waiting(None, P.Done(), lambda r, f: (r, f), lambda: None, None, due, 1.0, due - 1.0)
        line.waiting.append(w)
        waits.append(w)
        dom.relay.due.add(w.deadline, (line, w))
    return socks, waits


@pytest.mark.parametrize("n", [10, 10_000])
def test_a_turns_check_of_relayed_requests_looks_at_one_deadline_however_many_wait(n):
    """With 10 or 10,000 requests waiting and none due, a turn of `Relay.check` examines the
    soonest deadline only (two looks: is it due, how far is it) and returns the time to it;
    `Drains.check` with nothing draining looks at nothing."""
    dom = ShardedDomain([], set())
    socks, _ = _lines(dom, n, time.monotonic() + 3600)
    try:
        before = dom.relay.due.looked
        assert dom.relay.check() == HEARTBEAT  # (the soonest is an hour away)
        assert dom.relay.due.looked - before == 2
        before = dom.drains.due.looked
        assert dom.drains.check() == HEARTBEAT
        assert dom.drains.due.looked == before  # nothing draining: nothing looked at
    finally:
        for s in socks:
            s.close()


def test_answered_requests_cost_one_pop_each_when_their_time_comes():
    """1,000 requests answered before their deadline (no longer live): when the deadline passes,
    each entry is popped once and skipped (no /proc read, no judgement), then the heap is empty."""
    dom = ShardedDomain([], set())
    socks, waits = _lines(dom, 1000, time.monotonic() - 3600)  # due an hour ago
    try:
        for w in waits:
            w.live = False  # answered (`Relay.hear`)
        before = dom.relay.due.looked
        assert dom.relay.check() == HEARTBEAT
        assert len(dom.relay.due) == 0
        assert dom.relay.due.looked - before == 1000  # each popped once (the last look finds it empty: no count)
    finally:
        for s in socks:
            s.close()
