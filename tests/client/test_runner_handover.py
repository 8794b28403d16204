"""A doorbell rung while an engine changes hands between the stack thread and an event loop is
never lost (usnet.client.engine.Runner, usnet.aio._LoopDriver).

The interleavings are forced with events, not timed: the stack thread is held between its select
returning a doorbell and what it does with it, and the loop's side is played by the test.
"""

from __future__ import annotations

import os
import select
import threading
from types import SimpleNamespace

from usnet.abi import doorbell
from usnet.client.engine import Runner

LIMIT = 10


class _Bell:
    """A channel's doorbell, as the runner uses it."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.alive_fd = None

    def drain_doorbell(self) -> None:
        doorbell.drain(self.r)

    def rung(self) -> bool:
        return bool(select.select([self.r], [], [], 0)[0])

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class _Engine:
    """What the runner serves (engine.Served), with nothing behind it but a doorbell."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.client = SimpleNamespace(domain_fd=None)
        self.error = None
        self.release_when_idle = False
        self.ch = _Bell()
        self.pumped = threading.Semaphore(0)

    def pump(self, now: float) -> None:
        self.pumped.release()

    def deadline(self, now: float) -> float | None:
        return None

    def idle(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.ch.r

    def notify(self) -> None:
        pass

    def close(self) -> None:
        pass


def _stop(r, e) -> None:
    """End a test's own runner `r` (its thread joined) and close engine `e`'s channel."""
    r._stopping = True
    r.wake()
    r._thread.join(LIMIT)
    e.ch.close()


def held_at_select(r: Runner, e: object) -> tuple[threading.Event, threading.Event, threading.Event,
                                                 threading.Semaphore]:
    """Runner `r`'s select, hooked: `back` is released each time the runner comes back to select;
    once `armed` is set, the first select that returns `e`'s doorbell sets `woke` and holds the
    runner there until `go`. Returns (woke, go, armed, back)."""
    real_select = r._sel.select
    woke, go = threading.Event(), threading.Event()
    armed = threading.Event()
    back = threading.Semaphore(0)

    def select_(timeout=None):
        back.release()
        got = real_select(timeout)
        if armed.is_set() and any(what is e for what in got):
            armed.clear()
            woke.set()
            assert go.wait(LIMIT)
        return got

    r._sel.select = select_  # type: ignore[method-assign]
    return woke, go, armed, back


def test_a_ring_for_an_engine_lent_while_the_runner_woke_for_it_stays_for_the_loop():
    """The runner's select returns engine E's doorbell; before the runner gets to it, an event loop
    takes E over (Runner.lend, as usnet.aio's driver adopts an accepted connection's engine), pumps
    it (which arms NEED_WAKEUP), and the domain rings E's doorbell for the next packet. The runner
    drained that ring (its select had E's key): the loop's reader never fired, and the packet sat
    unread until usnetd judged the channel stalled (a websockets server's connection on the
    loopback half of a wildcard listener, under load). The ring must stay for the loop."""
    r = Runner()
    e = _Engine()
    woke, go, armed, back = held_at_select(r, e)
    try:
        r.add(e)
        assert e.pumped.acquire(timeout=LIMIT)  # the first pass: E is the runner's
        armed.set()
        doorbell.ring(e.ch.w)  # a packet for E
        assert woke.wait(LIMIT)  # the runner's select returned E's doorbell; it is held there
        r.lend(e)  # the loop takes E over, and pumps it (what came is read)
        e.ch.drain_doorbell()  # (the loop's reader: drain, pump)
        doorbell.ring(e.ch.w)  # the next packet: NEED_WAKEUP was armed by that pump
        while back.acquire(timeout=0):
            pass
        go.set()
        assert back.acquire(timeout=LIMIT)  # the runner did what it does with the key, and sleeps again
        assert e.ch.rung(), "the runner took the ring of an engine it had lent to a loop"
    finally:
        go.set()
        _stop(r, e)


def test_a_ring_the_loop_drains_after_its_engine_went_back_reaches_the_stack_thread():
    """An engine a loop pumped goes back to the stack thread (`_LoopDriver._return`: a socket call
    blocks on it) from another thread; the loop forgets its reader only on its next turn. A ring in
    between fires that reader, which drained the doorbell and pumped nothing (the engine is no
    longer the loop's): the stack thread, asleep on the same doorbell, never heard of the packet.
    The ring must reach the stack thread."""
    import asyncio

    from usnet.client.aio import _LoopDriver
    from usnet.client.engine import runner

    loop = asyncio.new_event_loop()
    d = _LoopDriver(loop)
    e = _Engine()
    e.driver, e.pinned, e.closed = None, False, False
    try:
        d.adopt(e)
        assert e.driver is d
        e.driver = None  # what `_return` does from another thread, up to the loop's `_drop`
        e.pinned = True
        runner().add(e)
        assert e.pumped.acquire(timeout=LIMIT)  # the stack thread pumps it, then sleeps on its doorbell
        doorbell.ring(e.ch.w)  # a packet
        d._bell(e)  # the loop's reader fires first, before its `_drop`
        assert e.pumped.acquire(timeout=LIMIT), "the ring the loop drained never reached the stack thread"
    finally:
        runner().remove(e)
        d._drop(e)
        loop.close()
        e.ch.close()


def test_an_engine_lent_during_the_runners_pump_is_pumped_by_its_loop_after_it():
    """The runner pumps E while a loop takes it over (`lend`); the timer that pump set (an RTO, a
    delayed ACK) is dropped by `schedule`, since E is no longer the runner's, and the loop, whose
    own pump may have come first, never heard of it. The loop must pump E again after it."""
    r = Runner()
    e = _Engine()
    inside, leave = threading.Event(), threading.Event()
    woken = threading.Event()
    e.driver = None
    pump = e.pump

    def held_pump(now: float) -> None:
        pump(now)
        if e.driver is None and not inside.is_set():
            inside.set()
            assert leave.wait(LIMIT)

    e.pump = held_pump
    try:
        r.add(e)
        assert inside.wait(LIMIT)  # the runner is inside E's pump
        r.lend(e)
        e.driver = SimpleNamespace(wake=lambda eng, wait=False: woken.set())  # the loop's driver
        leave.set()
        assert woken.wait(LIMIT), "the loop was not told to pump an engine lent during the runner's pump"
    finally:
        leave.set()
        _stop(r, e)
