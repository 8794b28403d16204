"""SPSC rings and the EVENT ring in shared memory (docs/architecture.md, "Channels and rings", usnet/abi/ring.py).

Rings are built on a bytearray with guard bytes around them, so every test
also checks that no ring ever writes outside its header and slot array.
Hostile counters are written straight into the u64 words, as a misbehaving
process mapping the same memory would.
"""

from __future__ import annotations

import struct
from array import array
from collections import deque

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from usnet.abi import ring as R
from usnet.abi.events import (
    NO_PACKET,
    RECORD_SIZE,
    Event,
    EventConsumer,
    EventProducer,
    EventType,
    RefusalReason,
)
from usnet.abi.ring import Consumer, Producer, RingCorrupt

U64 = 2**64 - 1
GUARD = 128  # bytes of canary before and after each ring
CANARY = 0xC3


class Mem:
    """A ring's memory with canaries around it, plus raw access to its words."""

    def __init__(self, capacity: int, slot: int = R.SLOT, base: int = 0) -> None:
        self.capacity = capacity
        self.size = R.ring_bytes(capacity, slot)
        self.buf = bytearray([CANARY]) * (GUARD + self.size + GUARD)
        self.buf[GUARD : GUARD + self.size] = bytes(self.size)
        self.mv = memoryview(self.buf)
        self.offset = GUARD
        if base:
            self.prod = base
            self.cons = base

    # raw words, as another process would see/write them
    @property
    def prod(self) -> int:
        return struct.unpack_from("<Q", self.buf, self.offset + 0)[0]

    @prod.setter
    def prod(self, v: int) -> None:
        struct.pack_into("<Q", self.buf, self.offset + 0, v)

    @property
    def cons(self) -> int:
        return struct.unpack_from("<Q", self.buf, self.offset + 64)[0]

    @cons.setter
    def cons(self, v: int) -> None:
        struct.pack_into("<Q", self.buf, self.offset + 64, v)

    @property
    def flags(self) -> int:
        return struct.unpack_from("<I", self.buf, self.offset + 128)[0]

    def slot(self, i: int) -> int:
        return struct.unpack_from("<I", self.buf, self.offset + R.HEADER + 4 * i)[0]

    def canaries_intact(self) -> bool:
        return (self.buf[:GUARD] == bytes([CANARY]) * GUARD
                and self.buf[GUARD + self.size :] == bytes([CANARY]) * GUARD)

    def producer(self, limit: int | None = None) -> Producer:
        return Producer(self.mv, self.offset, self.capacity, limit)

    def consumer(self) -> Consumer:
        return Consumer(self.mv, self.offset, self.capacity)


def drain(c: Consumer, batch: int = 1 << 20) -> list[int]:
    """Pop until the ring is empty (one pop returns at most what the consumer's cache shows)."""
    out: list[int] = []
    while True:
        got = c.pop(batch)
        if not got:
            return out
        out += got


# -- layout --------------------------------------------------------------------------


def test_layout_words_are_where_the_abi_says():
    m = Mem(8)
    p, c = m.producer(), m.consumer()
    p.push([7, 8, 9])
    assert m.prod == 3 and m.cons == 0
    assert [m.slot(i) for i in range(3)] == [7, 8, 9]
    assert c.pop(2) == [7, 8]
    assert m.cons == 2
    c.set_need_wakeup()
    assert m.flags == R.NEED_WAKEUP
    assert m.canaries_intact()


def test_ring_bytes_rounds_to_cache_line():
    assert R.ring_bytes(8) == 192 + 64
    assert R.ring_bytes(16) == 192 + 64
    assert R.ring_bytes(1) == 192 + 64
    assert R.ring_bytes(8, RECORD_SIZE) == 192 + 256
    for cap in (1, 2, 8, 1024):
        assert R.ring_bytes(cap) % 64 == 0
        assert R.ring_bytes(cap) >= R.HEADER + cap * R.SLOT


@pytest.mark.parametrize("cap", [0, -8, 3, 6, 12, 1000])
def test_capacity_must_be_power_of_two(cap):
    m = Mem(8)
    with pytest.raises(ValueError):
        Producer(m.mv, m.offset, cap)
    with pytest.raises(ValueError):
        Consumer(m.mv, m.offset, cap)


# -- FIFO, wrap-around, batching, limit ------------------------------------------------


def test_fifo_across_wraparound():
    m = Mem(8)
    p, c = m.producer(), m.consumer()
    out = []
    nxt = 0
    for batch in (5, 3, 6, 7, 1, 8, 2, 8):
        items = list(range(nxt, nxt + batch))
        assert p.push(items) == batch
        nxt += batch
        out += drain(c)
    assert out == list(range(nxt))
    assert m.prod == m.cons == nxt
    assert m.canaries_intact()


def test_fifo_with_counters_near_large_values():
    base = 2**40 - 5  # slot index wraps mid-batch; counters keep running
    m = Mem(8, base=base)
    p, c = m.producer(), m.consumer()
    assert p.push([1, 2, 3, 4, 5, 6, 7, 8]) == 8
    assert c.pop(8) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert m.prod == m.cons == base + 8
    assert m.canaries_intact()


def test_push_partial_when_full_and_pop_batches():
    m = Mem(8)
    p, c = m.producer(), m.consumer()
    assert p.push(list(range(12))) == 8
    assert p.push([99]) == 0
    assert p.space() == 0
    assert c.pop(3) == [0, 1, 2]
    assert p.space() == 3
    assert p.push([8, 9, 10, 11]) == 3
    assert c.available() == 5  # what its cache shows; 8 once re-read
    assert c.pop(5) == [3, 4, 5, 6, 7]
    assert c.available() == 3
    assert c.pop(100) == [8, 9, 10]
    assert c.pop(100) == []
    assert p.push([]) == 0


def test_push_accepts_array():
    m = Mem(16)
    p, c = m.producer(), m.consumer()
    assert p.push(array("I", [4, 3, 2, 1])) == 4
    assert p.push(array("I", range(20))) == 12
    assert drain(c) == [4, 3, 2, 1] + list(range(12))


def test_limit_caps_unconsumed_slots():
    m = Mem(16)
    p, c = m.producer(limit=4), m.consumer()
    assert p.limit == 4
    assert p.push(list(range(10))) == 4
    assert p.space() == 0
    assert c.pop(1) == [0]
    assert p.push([10, 11]) == 1
    assert drain(c) == [1, 2, 3, 10]
    # a limit above the capacity is clamped to it
    assert Mem(8).producer(limit=1000).limit == 8


def test_limit_change_takes_effect():
    m = Mem(16)
    p, c = m.producer(limit=4), m.consumer()
    assert p.push(list(range(10))) == 4
    p.limit = 16
    assert p.push(list(range(100, 120))) == 12
    p.limit = 8  # lowered below what is in flight: no more room until drained below it
    c.pop(6)
    assert p.space() == 0
    assert p.push([1]) == 0
    c.pop(3)
    assert p.space() == 1
    assert m.canaries_intact()


def test_sides_resume_from_memory():
    """Counters live in shared memory: a fresh Producer/Consumer continues where the old stopped."""
    m = Mem(8)
    p, c = m.producer(), m.consumer()
    p.push([1, 2, 3, 4, 5])
    assert c.pop(2) == [1, 2]
    p2, c2 = m.producer(), m.consumer()
    assert p2.push([6, 7, 8, 9, 10, 11]) == 5
    assert drain(c2) == [3, 4, 5, 6, 7, 8, 9, 10]


def test_consumer_caches_producer_counter():
    m = Mem(8)
    p, c = m.producer(), m.consumer()
    p.push([1, 2, 3])
    assert c.available() == 3
    assert c.pop(1) == [1]
    p.push([4])
    # the cached counter still shows 2 more: it is not re-read until they are gone
    assert c.pop(2) == [2, 3]
    assert c.pop(5) == [4]


def test_producer_caches_consumer_counter():
    m = Mem(8)
    p, c = m.producer(), m.consumer()
    p.push(list(range(8)))
    c.pop(8)
    m.cons = U64  # impossible; the cache shows a full ring, so the producer must read it
    with pytest.raises(RingCorrupt):
        p.push([1])
    m.cons = 8
    assert p.push([1]) == 1


# -- NEED_WAKEUP ---------------------------------------------------------------------


def test_need_wakeup_set_and_clear():
    m = Mem(8)
    p, c = m.producer(), m.consumer()
    assert not p.need_wakeup() and not c.need_wakeup()
    c.set_need_wakeup()
    assert p.need_wakeup() and c.need_wakeup()
    c.set_need_wakeup()  # idempotent
    assert m.flags == R.NEED_WAKEUP
    # the flag does not disturb the data path
    assert p.push([1, 2]) == 2
    assert c.pop(5) == [1, 2]
    c.clear_need_wakeup()
    assert not p.need_wakeup()
    c.clear_need_wakeup()
    assert m.flags == 0


def test_need_wakeup_keeps_other_flag_bits():
    m = Mem(8)
    c = m.consumer()
    struct.pack_into("<I", m.buf, m.offset + 128, 0xF0)
    c.set_need_wakeup()
    assert m.flags == 0xF1
    c.clear_need_wakeup()
    assert m.flags == 0xF0


def test_fence_is_callable():
    R.fence()
    R.fence()


def test_release_frees_the_memory():
    m = Mem(8)
    p, c = m.producer(), m.consumer()
    p.release()
    c.release()
    m.mv.release()
    m.buf.extend(b"x")  # would raise BufferError if a view were still exported


# -- hostile counters ----------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(fill=st.integers(0, 8), taken=st.integers(0, 8), hostile=st.integers(0, U64))
def test_hostile_producer_counter(fill, taken, hostile):
    """Whatever the producer word says, the consumer raises or returns only real slots."""
    assume(taken <= fill)
    m = Mem(8, base=1000)
    p, c = m.producer(), m.consumer()
    p.push([100 + i for i in range(fill)])
    assert c.pop(taken) == [100 + i for i in range(taken)]
    cons = m.cons
    slots = [m.slot(i) for i in range(8)]
    m.prod = hostile
    avail = hostile - cons
    expected_items = [slots[(cons + i) % 8] for i in range(avail)] if 0 <= avail <= 8 else None
    if c.prod_cache - c.cons > 0:
        # the cache still has real items: they come first, and the hostile word is not read
        assert c.pop(c.prod_cache - c.cons) == [100 + i for i in range(taken, fill)]
        cons = m.cons
        avail = hostile - cons
        expected_items = [slots[(cons + i) % 8] for i in range(avail)] if 0 <= avail <= 8 else None
    if expected_items is None:
        with pytest.raises(RingCorrupt):
            c.pop(100)
        with pytest.raises(RingCorrupt):
            c.available()
        assert m.cons == cons  # nothing consumed
        # and it recovers once the word is sane again
        m.prod = cons + 1
        assert len(c.pop(100)) == 1
    else:
        got = c.pop(100)
        assert got == expected_items
        assert m.cons == cons + len(got)
    assert m.canaries_intact()


@settings(max_examples=200, deadline=None)
@given(fill=st.integers(0, 8), hostile=st.integers(0, U64), want=st.integers(1, 12))
def test_hostile_consumer_counter(fill, hostile, want):
    """Whatever the consumer word says, the producer raises or overruns nothing."""
    m = Mem(8, base=5000)
    p = m.producer()
    assert p.push(list(range(fill))) == fill
    prod = m.prod
    cached_free = 8 - fill  # what the producer believes without re-reading the word
    m.cons = hostile
    used = prod - hostile
    try:
        n = p.push(list(range(want)))
    except RingCorrupt:
        assert want > cached_free and not 0 <= used <= 8
        assert m.prod == prod
    else:
        if want <= cached_free:
            assert n == want
        else:
            assert 0 <= used <= 8
            assert n == min(want, 8 - used)
        assert m.prod == prod + n
    assert m.canaries_intact()


def test_hostile_consumer_counter_raises_when_read():
    m = Mem(8)
    p = m.producer()
    p.push(list(range(8)))  # cache shows a full ring: the next push must read the word
    for bad in (9, U64, 2**63):
        m.cons = bad  # ahead of the producer
        with pytest.raises(RingCorrupt):
            p.push([1])
        with pytest.raises(RingCorrupt):
            p.space()
    m.cons = 0  # sane again: still full
    assert p.push([1]) == 0
    assert m.prod == 8


def test_hostile_producer_counter_behind_consumer():
    m = Mem(8, base=100)
    p, c = m.producer(), m.consumer()
    p.push([1, 2])
    assert c.pop(2) == [1, 2]
    m.prod = 50  # went backwards
    with pytest.raises(RingCorrupt):
        c.pop(1)
    m.prod = 102 + 9  # more than a ring's worth ahead
    with pytest.raises(RingCorrupt):
        c.refresh()
    assert m.cons == 102


def test_pop_negative_does_not_move_counter_backwards():
    """Regression: pop(n < 0) used to walk the consumer counter backwards (fixed in 7bd7d77)."""
    m = Mem(8)
    p, c = m.producer(), m.consumer()
    p.push([1, 2, 3, 4])
    assert c.pop(2) == [1, 2]
    try:
        got = c.pop(-1)
    except ValueError:
        got = []
    assert got == []
    assert m.cons == 2
    assert c.pop(100) == [3, 4]


def test_pop_zero_takes_nothing():
    m = Mem(8)
    p, c = m.producer(), m.consumer()
    p.push([1, 2])
    assert c.pop(0) == []
    assert m.cons == 0
    assert c.pop(5) == [1, 2]


# -- model-based test ------------------------------------------------------------------


class RingMachine(RuleBasedStateMachine):
    """Random interleavings of push/pop against a deque, including reopening either side.

    A pop returns a FIFO prefix of what is queued, at most k, and at least one
    slot when anything is queued (it may stop at what its cached view of the
    producer counter shows; `drain` pops until empty).
    """

    @initialize(
        log2cap=st.integers(1, 4),
        limit_div=st.sampled_from([1, 1, 2, 4]),
        base=st.one_of(st.just(0), st.integers(0, 2**48)),
    )
    def setup(self, log2cap, limit_div, base):
        self.cap = 1 << log2cap
        self.limit = max(1, self.cap // limit_div)
        self.m = Mem(self.cap, base=base)
        self.p = self.m.producer(self.limit)
        self.c = self.m.consumer()
        self.model: deque[int] = deque()
        self.next = 0
        self.base = base
        self.pushed = 0

    @rule(k=st.integers(0, 20))
    def push(self, k):
        items = [(self.next + i) & 0xFFFFFFFF for i in range(k)]
        n = self.p.push(items)
        assert n == min(k, self.limit - len(self.model))
        self.model.extend(items[:n])
        self.next += n
        self.pushed += n

    @rule(k=st.integers(0, 20))
    def pop(self, k):
        got = self.c.pop(k)
        assert len(got) <= min(k, len(self.model))
        if k and self.model:
            assert got, "pop returned nothing while slots were queued"
        want = [self.model.popleft() for _ in range(len(got))]
        assert got == want

    @rule()
    def drain(self):
        assert drain(self.c, 3) == list(self.model)
        self.model.clear()

    @rule()
    def available(self):
        n = self.c.available()
        assert (0 < n <= len(self.model)) if self.model else n == 0

    @rule()
    def space(self):
        assert self.p.space(self.cap + 1) == self.limit - len(self.model)

    @rule()
    def reopen_consumer(self):
        self.c.release()
        self.c = self.m.consumer()
        assert self.c.available() == len(self.model)

    @rule()
    def reopen_producer(self):
        self.p.release()
        self.p = self.m.producer(self.limit)

    @rule()
    def wakeup_flag(self):
        self.c.set_need_wakeup()
        assert self.p.need_wakeup()
        self.c.clear_need_wakeup()
        assert not self.p.need_wakeup()

    @invariant()
    def counters_match_model(self):
        if not hasattr(self, "m"):
            return
        assert self.m.prod == self.base + self.pushed
        assert self.m.prod - self.m.cons == len(self.model)
        assert self.m.canaries_intact()


RingMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRingModel = RingMachine.TestCase


# -- EVENT ring --------------------------------------------------------------------------


def _event_pair(capacity: int = 8):
    m = Mem(capacity, slot=RECORD_SIZE)
    return m, EventProducer(m.mv, m.offset, capacity), EventConsumer(m.mv, m.offset, capacity)


def test_event_round_trip():
    m, prod, cons = _event_pair()
    assert prod.post(EventType.RESIZED, 0, value=64, aux=256)
    assert prod.post(EventType.REFUSED, RefusalReason.DUPLICATE, packet=42)
    assert prod.post(EventType.PEER_CLOSED)
    assert prod.post(99, 7, packet=-1, value=2**64 - 1, aux=3)  # unknown type stays an int
    evs = list(cons.drain())
    assert [e.type for e in evs] == [EventType.RESIZED, EventType.REFUSED, EventType.PEER_CLOSED, 99]
    assert isinstance(evs[0].type, EventType) and not isinstance(evs[3].type, EventType)
    assert (evs[0].value, evs[0].aux, evs[0].packet) == (64, 256, NO_PACKET)
    assert (evs[1].code, evs[1].packet) == (RefusalReason.DUPLICATE, 42)
    assert evs[3] == Event(99, 7, 0xFFFFFFFF, evs[3].time_ns, 2**64 - 1, 3)
    assert all(e.time_ns > 0 for e in evs)
    assert list(cons.drain()) == []
    assert prod.dropped == 0
    assert m.prod == m.cons == 4
    assert m.canaries_intact()


def test_event_full_ring_drops_and_counts():
    m, prod, cons = _event_pair(8)
    results = [prod.post(EventType.RESIZED, value=i) for i in range(11)]
    assert results == [True] * 8 + [False] * 3
    assert prod.dropped == 3
    assert [e.value for e in cons.drain()] == list(range(8))
    # room again after the drain; the count of drops stays
    assert prod.post(EventType.RESIZED, value=100)
    assert [e.value for e in cons.drain()] == [100]
    assert prod.dropped == 3
    assert m.canaries_intact()


def test_event_wraparound_keeps_order():
    m, prod, cons = _event_pair(8)
    seen = []
    for round_ in range(5):
        for i in range(5):
            assert prod.post(EventType.REFUSED, value=round_ * 10 + i)
        seen += [e.value for e in cons.drain()]
    assert seen == [r * 10 + i for r in range(5) for i in range(5)]
    assert m.canaries_intact()


def test_event_partial_drain_resumes():
    m, prod, cons = _event_pair(8)
    for i in range(4):
        prod.post(EventType.RESIZED, value=i)
    it = cons.drain()
    assert next(it).value == 0
    assert next(it).value == 1
    del it
    assert m.cons == 2
    assert [e.value for e in cons.drain()] == [2, 3]


@settings(max_examples=150, deadline=None)
@given(hostile=st.integers(0, U64), before=st.integers(0, 8))
def test_event_hostile_consumer_counter_never_crashes_producer(hostile, before):
    m, prod, _cons = _event_pair(8)
    for i in range(before):
        prod.post(EventType.RESIZED, value=i)
    p0 = m.prod
    m.cons = hostile
    ok = [prod.post(EventType.REFUSED, value=i) for i in range(10)]
    posted = sum(ok)
    assert prod.dropped == (before - min(before, 8)) + (10 - posted)
    assert m.prod == p0 + posted
    used = p0 - hostile
    if not 0 <= used < 8:
        assert posted == 0
    else:
        assert posted == 8 - used
    assert m.canaries_intact()


@settings(max_examples=150, deadline=None)
@given(hostile=st.integers(0, U64))
def test_event_hostile_producer_counter_raises(hostile):
    m, prod, cons = _event_pair(8)
    prod.post(EventType.RESIZED, value=1)
    list(cons.drain())
    m.prod = hostile
    avail = hostile - 1
    if 0 <= avail <= 8:
        assert len(list(cons.drain())) == avail
    else:
        with pytest.raises(RingCorrupt):
            list(cons.drain())
        assert m.cons == 1
