"""The stack thread wakes and pumps only when it must (usnet.client.engine.Runner, issue 18).

A blocked socket call pumps its own engine on the doorbell it borrowed (`Runner.borrow`); the
runner must then neither take that doorbell's ring nor pump the engine for it, and a deadline
moved by a socket call wakes the runner only to sleep towards it, not to pump. Each of these cost
an outgoing connect the engine's lock and another thread's wake-up. The interleavings are forced
with events, not timed, on a runner of the test's own with engines that are nothing but a doorbell.
"""

from __future__ import annotations

import os
import threading
import time

from tests.client.test_runner_handover import LIMIT, _Engine, _stop, held_at_select
from usnet.abi import doorbell
from usnet.client.engine import Runner


class _Borrowable(_Engine):
    """An engine a blocked call may borrow (`Runner.borrow` asks these), whose deadline is what
    the test says, and whose pump can be held (`hold`) until the test lets it go (`go`)."""

    def __init__(self) -> None:
        super().__init__()
        self.pumper: int | None = None
        self.alone = True
        self.due_at: float | None = None
        self.hold = threading.Event()
        self.in_pump = threading.Event()
        self.go = threading.Event()

    def pump(self, now: float) -> None:
        if self.hold.is_set():
            self.hold.clear()
            self.in_pump.set()
            assert self.go.wait(LIMIT)
        super().pump(now)

    def deadline(self, now: float) -> float | None:
        return self.due_at


def _asleep(r: Runner) -> threading.Semaphore:
    """A semaphore released each time `r` goes back to its select."""
    back = threading.Semaphore(0)
    real = r._sel.select

    def select_(timeout=None):
        back.release()
        return real(timeout)

    r._sel.select = select_
    return back


def _settled(r: Runner, back: threading.Semaphore) -> None:
    """Wait until `r` has gone back to sleep since now (its pass done, `wake_at` set)."""
    while back.acquire(timeout=0):
        pass
    os.eventfd_write(r._wake, 1)  # one pass more (pumping nothing), through to its select
    assert back.acquire(timeout=LIMIT)


def test_a_ring_for_an_engine_a_blocked_call_borrowed_meanwhile_stays_for_that_call():
    """The runner's select returns E's doorbell; before it gets to it, a blocked socket call
    borrows E (it will sleep on that doorbell and pump E itself). The runner must leave the ring
    to the borrower and not pump E: doing so took the engine's lock from under the call and
    drained the ring the call sleeps on (then rang it again: another wake-up)."""
    r = Runner()
    e = _Borrowable()
    woke, go, armed, back = held_at_select(r, e)
    try:
        r.add(e)
        assert e.pumped.acquire(timeout=LIMIT)  # the first pass
        armed.set()
        doorbell.ring(e.ch.w)  # the server's FIN, say
        assert woke.wait(LIMIT)  # the runner's select returned E's doorbell; it is held there
        with e.lock:
            assert r.borrow(e)  # a recv begins to wait, on E's doorbell
        while back.acquire(timeout=0):
            pass
        go.set()
        assert back.acquire(timeout=LIMIT)  # the runner is done with that key and sleeps again
        assert e.ch.rung(), "the runner took the ring of an engine a blocked call had borrowed"
        assert not e.pumped.acquire(timeout=0), "the runner pumped an engine a blocked call pumps"
        r.give_back(e)  # the call ends without having drained it: the runner hears the ring now
        assert e.pumped.acquire(timeout=LIMIT)
    finally:
        go.set()
        _stop(r, e)


def test_a_sooner_deadline_at_the_end_of_a_blocked_call_wakes_the_runner_only_to_sleep_towards_it():
    """A blocked call pumped E and moved its deadline sooner than the runner sleeps towards (a
    connect's recv of the server's FIN sets the delayed ACK's 40 ms); its `give_back` must wake the
    runner so that it sleeps towards that deadline, and for nothing else: not to pump E."""
    r = Runner()
    e = _Borrowable()
    back = _asleep(r)
    try:
        now = time.monotonic()
        far, near = now + 600, now + 300
        e.due_at = far
        r.add(e)
        assert e.pumped.acquire(timeout=LIMIT)  # the first pass: it sleeps towards `far`
        _settled(r, back)
        assert r.wake_at == far
        with e.lock:
            assert r.borrow(e)
            e.due_at = near  # what the call's pump did (`pump_wait` schedules it, waking nobody)
            r.schedule(e, near, wake=False)
        r.give_back(e)
        _settled(r, back)
        assert r.wake_at == near, "the runner sleeps towards a deadline later than its engine's"
        assert not e.pumped.acquire(timeout=0), "the runner pumped the engine to learn its deadline"
    finally:
        _stop(r, e)


def test_a_deadline_set_during_the_runners_pass_is_read_by_that_pass_and_wakes_nobody():
    """While the runner pumps engine A, a socket call of engine B sets a deadline (its `kick`):
    the pass reads the deadlines after its pumps, so it sleeps towards B's without being woken
    again; an eventfd write then bought another pass, which pumped every engine."""
    r = Runner()
    a, b = _Borrowable(), _Borrowable()
    back = _asleep(r)
    try:
        r.add(a)
        r.add(b)
        for e in (a, b):
            assert e.pumped.acquire(timeout=LIMIT)
        _settled(r, back)
        a.hold.set()
        doorbell.ring(a.ch.w)  # the runner's next pass pumps A, and is held in it
        assert a.in_pump.wait(LIMIT)
        soon = time.monotonic() + 300
        b.due_at = soon
        with b.lock:
            r.schedule(b, soon)  # as B's kick does
        assert not r._poked, "a deadline set during a pass woke the runner for another"
        a.go.set()
        assert a.pumped.acquire(timeout=LIMIT)
        assert back.acquire(timeout=LIMIT)  # the pass is over: it sleeps
        assert r.wake_at == soon
        assert not b.pumped.acquire(timeout=0)
    finally:
        a.go.set()
        _stop(r, a)
        b.ch.close()
