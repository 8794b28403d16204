"""Packet pools (docs/architecture.md, "Packet pools", usnet/domain/mem/pool.py) on a real Arena.

The pool is the nexus's ledger: every packet has exactly one owner, refused
hand-backs disturb nothing, and all-free segments really give their pages
back. The property test drives random sequences (including garbage and
duplicate indices) against a model of what each role holds and calls
`pool.check()` after every step.
"""

from __future__ import annotations

import errno
import mmap
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from usnet.abi.events import RefusalReason
from usnet.abi.umd import UMD_SIZE
from usnet.domain.mem import pool as pool_mod
from usnet.domain.mem.arena import Arena, RegionKind, RegionSpec
from usnet.domain.mem.pool import FREE, HELD, IN_ALLOC, NO_OWNER, PURGED, PacketPool, PoolExhausted

MAX = 64
INITIAL = 16
PACKET_BYTES = 2048
PER_SEG = 16  # 4 segments of 32 KiB
ROLES = 2
# how a batch comes to the pool: a FREE ring's list, a TX ring's u32 array, other arrays
FORMS = {"list": None, "u32": np.uint32, "i64": np.int64, "u64": np.uint64}


def make_arena(max_packets: int = MAX, per_seg: int = PER_SEG) -> Arena:
    # the same regions a user pipe builds (usnet/domain/userpipe.py), smaller
    return Arena("test-pool", [
        RegionSpec(RegionKind.RING, 1, 4096),
        RegionSpec(RegionKind.UMD, UMD_SIZE, max_packets),
        RegionSpec(RegionKind.BUF, PACKET_BYTES, max_packets, objs_per_segment=per_seg),
        RegionSpec(RegionKind.STATS, 128, ROLES),
    ])


@pytest.fixture
def arena():
    a = make_arena()
    try:
        yield a
    finally:
        a.close()


@pytest.fixture
def pool(arena):
    return PacketPool(arena, MAX, INITIAL, ROLES, quota=MAX)


def lend(pool: PacketPool, n: int, role: int = 0) -> list[int]:
    """alloc + take: packets now HELD by `role`."""
    got = pool.alloc(n, role)
    pool.take(got)
    return got.tolist()


def buf_span(arena: Arena, pkt: int) -> tuple[int, int]:
    r = arena.region(RegionKind.BUF)
    return r.offset + pkt * PACKET_BYTES, PACKET_BYTES


# -- basics ------------------------------------------------------------------------


def test_initial_state(pool):
    assert pool.active == INITIAL
    assert pool.counts() == {"free": INITIAL, "purged": MAX - INITIAL, "in_alloc": 0, "held": 0, "capacity": MAX}
    assert pool.per_segment == PER_SEG and pool.nsegments == MAX // PER_SEG
    pool.check()


def test_alloc_take_release_batch(pool):
    got = pool.alloc(8, 0)
    assert got.tolist() == list(range(8))  # lowest first from a fresh segment
    assert np.all(pool.state[got] == IN_ALLOC) and np.all(pool.owner[got] == 0)
    assert pool.held == [8, 0]
    pool.check()
    pool.take(got[:5])
    assert np.all(pool.state[got[:5]] == HELD)
    assert np.all(pool.state[got[5:]] == IN_ALLOC)
    pool.check()
    assert pool.release(got[:5].tolist(), 0) == []
    assert pool.held == [3, 0]
    assert np.all(pool.state[got[:5]] == FREE) and np.all(pool.owner[got[:5]] == NO_OWNER)
    assert pool.refused == [0, 0]
    pool.check()
    # what was released comes back first (LIFO free stack: cache-warm)
    again = pool.alloc(5, 1)
    assert sorted(again.tolist()) == list(range(5))
    assert pool.held == [3, 5]
    pool.check()


def test_alloc_grows_on_demand(pool):
    got = pool.alloc(20, 0)
    assert len(got) == 20 and len(set(got.tolist())) == 20
    assert pool.active == 32  # one more segment, not more
    pool.check()


def test_release_by_other_role_uncharges_the_allocator(pool):
    pkts = lend(pool, 4, role=0)
    assert pool.release(pkts, 1) == []  # the receiver of a pipe frees what the sender allocated
    assert pool.held == [0, 0]
    assert pool.refused == [0, 0]
    pool.check()


# -- exhaustion and quotas ----------------------------------------------------------------


def test_exhaustion(pool):
    got = pool.alloc(1000, 0)
    assert len(got) == MAX and pool.active == MAX
    assert sorted(got.tolist()) == list(range(MAX))
    empty = pool.alloc(1, 1)
    assert isinstance(empty, np.ndarray) and len(empty) == 0
    with pytest.raises(PoolExhausted) as ei:
        pool.alloc_or_raise(1, 1)
    assert ei.value.errno == errno.ENOBUFS
    assert isinstance(ei.value, OSError)
    pool.check()
    pool.take(got[:1])
    assert pool.release(got[:1].tolist(), 0) == []
    assert pool.alloc_or_raise(4, 1).tolist() == [got[0]]  # only one to be had
    pool.check()


def test_alloc_zero_or_negative_gives_nothing(pool):
    assert len(pool.alloc(0, 0)) == 0
    assert len(pool.alloc(-3, 0)) == 0
    assert pool.held == [0, 0]
    pool.check()


def test_quota(arena):
    pool = PacketPool(arena, MAX, INITIAL, ROLES, quota=10)
    assert len(pool.alloc(8, 0)) == 8
    assert len(pool.alloc(8, 0)) == 2
    assert len(pool.alloc(1, 0)) == 0
    with pytest.raises(PoolExhausted) as ei:
        pool.alloc_or_raise(1, 0)
    assert ei.value.errno == errno.ENOBUFS
    assert len(pool.alloc(20, 1)) == 10  # the other role has its own quota
    assert pool.held == [10, 10]
    pool.check()
    # handing back frees quota
    held0 = np.flatnonzero(pool.owner == 0)[:3]
    pool.take(held0)
    assert pool.release(held0.tolist(), 0) == []
    assert len(pool.alloc(5, 0)) == 3
    pool.check()


# -- refusals -------------------------------------------------------------------------------


def test_release_refuses_out_of_range(pool):
    pkts = lend(pool, 3)
    bad = [-1, MAX, MAX + 1, 2**32 - 1, -(2**40)]
    refused = pool.release(bad, 0)
    assert refused == [(b, RefusalReason.OUT_OF_RANGE) for b in bad]
    assert pool.refused == [len(bad), 0]
    assert pool.held == [3, 0]
    assert np.all(pool.state[pkts] == HELD)
    pool.check()


def test_release_refuses_free_and_purged(pool):
    lend(pool, 2)
    free_one = 10  # in the active segment, never lent
    purged_one = 40  # in a purged segment
    assert pool.state[free_one] == FREE and pool.state[purged_one] == PURGED
    refused = pool.release([free_one, purged_one], 1)
    assert refused == [(free_one, RefusalReason.NOT_OWNED), (purged_one, RefusalReason.NOT_OWNED)]
    assert pool.refused == [0, 2]
    assert pool.state[free_one] == FREE and pool.state[purged_one] == PURGED
    pool.check()


def test_release_refuses_in_alloc(pool):
    got = pool.alloc(4, 0)  # on the ALLOC ring, not taken
    refused = pool.release(got.tolist(), 0)
    assert refused == [(i, RefusalReason.IN_ALLOC_RING) for i in got.tolist()]
    assert np.all(pool.state[got] == IN_ALLOC)
    assert pool.held == [4, 0]
    pool.check()


def test_release_refuses_duplicates_within_batch_and_accepts_the_rest(pool):
    a, b, c = lend(pool, 3)
    free_one = 12
    batch = [a, b, a, -5, b, b, free_one, c]
    refused = pool.release(batch, 0)
    assert refused == [
        (a, RefusalReason.DUPLICATE),
        (-5, RefusalReason.OUT_OF_RANGE),
        (b, RefusalReason.DUPLICATE),
        (b, RefusalReason.DUPLICATE),
        (free_one, RefusalReason.NOT_OWNED),
    ]
    assert all(pool.state[i] == FREE for i in (a, b, c))
    assert pool.held == [0, 0]
    assert pool.refused == [5, 0]
    pool.check()
    # each was pushed on the free stack exactly once
    stack = pool.stack[: pool.nfree].tolist()
    assert all(stack.count(i) == 1 for i in (a, b, c))


def test_release_all_held_batch_with_duplicate(pool):
    """A batch of nothing but held packets (the fast path) still catches a duplicate."""
    a, b, c = lend(pool, 3)
    assert pool.release([a, b, c, b], 0) == [(b, RefusalReason.DUPLICATE)]
    assert pool.held == [0, 0]
    assert pool.refused == [1, 0]
    pool.check()
    assert pool.stack[: pool.nfree].tolist().count(b) == 1


@pytest.mark.parametrize("alias", [-MAX, 2**32])
def test_release_alias_of_held_packet_is_out_of_range(pool, alias):
    """p - MAX would index packet p in numpy; p + 2**32 would wrap to p as a u32."""
    pkts = lend(pool, MAX)
    p = pkts[0]
    assert pool.release([p + alias], 0) == [(p + alias, RefusalReason.OUT_OF_RANGE)]
    assert pool.state[p] == HELD
    assert pool.release([q + alias for q in pkts[:5]], 1) == [
        (q + alias, RefusalReason.OUT_OF_RANGE) for q in pkts[:5]]
    assert pool.held == [MAX, 0]
    pool.check()


@pytest.mark.parametrize("dtype", [np.uint64, np.uint32, np.int64])
def test_a_batch_array_cannot_alias_a_held_packet(pool, dtype):
    """A batch past `_FEW`, all HELD but one index that is out of range however the array's type
    says it: 2**64 - MAX + p as a u64 (intp reads it p - MAX, which numpy would index as p, and a
    clipped gather as packet 0), MAX as a u32 (the spare slot past the end), -1 as an int64. That
    one is refused OUT_OF_RANGE and its alias p stays HELD; the rest are taken back."""
    pkts = lend(pool, 12)
    p = pkts[-1]
    bad = {np.uint64: 2**64 - MAX + p, np.uint32: MAX, np.int64: -1}[dtype]
    good, refused = pool.release_checked(np.array(pkts[:-1] + [bad], dtype=dtype), 0)
    seen = bad - 2**64 if bad >= 2**63 else bad
    assert refused == [(seen, RefusalReason.OUT_OF_RANGE)]
    assert good.tolist() == pkts[:-1]
    assert pool.state[p] == HELD and pool.held == [1, 0] and pool.refused == [1, 0]
    pool.check()


def test_release_twice_across_batches(pool):
    pkts = lend(pool, 2)
    assert pool.release(pkts, 0) == []
    assert pool.release(pkts, 0) == [(i, RefusalReason.NOT_OWNED) for i in pkts]
    pool.check()


def test_release_empty_batch(pool):
    assert pool.release([], 0) == []
    assert pool.release(iter(()), 1) == []
    pool.check()


def test_refused_packet_is_not_taken_from_its_owner(pool):
    mine = lend(pool, 2, role=0)
    theirs_in_alloc = pool.alloc(2, 1).tolist()
    refused = pool.release(theirs_in_alloc + [mine[0], mine[0]], 1)
    assert [r for _, r in refused] == [RefusalReason.IN_ALLOC_RING] * 2 + [RefusalReason.DUPLICATE]
    assert pool.state[mine[1]] == HELD and pool.owner[mine[1]] == 0
    assert all(pool.state[i] == IN_ALLOC and pool.owner[i] == 1 for i in theirs_in_alloc)
    assert pool.held == [1, 2]
    pool.check()


# -- grow / purge / reclaim --------------------------------------------------------------------


def test_grow_to(pool):
    assert pool.grow_to(17) == 32
    assert pool.grow_to(10) == 32  # never shrinks
    assert pool.grow_to(10**6) == MAX
    assert pool.counts()["purged"] == 0
    pool.check()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(20, 70), st.lists(st.tuples(st.sampled_from(["grow", "purge"]), st.integers(0, 80)),
                                     max_size=8))
def test_grow_to_takes_the_lowest_inactive_segments_that_reach_the_count(capacity, steps):
    """grow_to counts segments with array operations (issue 18): it activates, lowest first, the
    inactive segments up to the first that brings the active count to the target, a short last
    segment counted short, holes left by a purge filled first; as a loop over them did."""
    arena = make_arena(max_packets=80)
    try:
        pool = PacketPool(arena, capacity, 0, ROLES, quota=capacity)
        for op, n in steps:
            if op == "purge":
                pool.purge(keep=n)
                continue
            before = pool.seg_active.copy()
            want, active = min(n, capacity), pool.active
            expect = before.copy()  # the model: the old per-segment loop
            for seg in np.flatnonzero(~before):
                if active >= want:
                    break
                expect[seg] = True
                active += min(PER_SEG, max(0, capacity - seg * PER_SEG))
            got = pool.grow_to(n)
            assert got == active == pool.active
            assert (pool.seg_active == expect).all()
            pool.check()
    finally:
        arena.close()


def test_growing_a_pool_of_a_thousand_segments_makes_no_python_call_per_segment():
    """A channel's pool opens with ~1,000 segments (issue 18: a first connect's connector): grow_to
    counts them with array operations, a handful of calls whatever their number."""
    import sys

    arena = make_arena(max_packets=1024 * 4, per_seg=4)
    try:
        pool = PacketPool(arena, 1024 * 4, 0, ROLES, quota=1024 * 4)
        calls = 0

        def count(frame, event, arg):
            nonlocal calls
            if event == "call":
                calls += 1

        sys.setprofile(count)
        try:
            got = pool.grow_to(1024 * 4 - 1)
        finally:
            sys.setprofile(None)
        assert got == 1024 * 4 and pool.seg_active.all()
        assert calls < 100, calls  # numpy wrappers, ~25; the loop over segments made three a segment: 3,000
        pool.check()
    finally:
        arena.close()


def test_purge_only_all_free_segments(pool):
    pool.grow_to(MAX)
    seg0 = lend(pool, MAX)
    # hand back all but segment 0 and 4 packets of segment 1
    keep = [p for p in seg0 if p < PER_SEG + 4]
    assert pool.release([p for p in seg0 if p >= PER_SEG + 4], 0) == []
    n = pool.purge()
    assert n == 2  # segments 3 and 2; 1 and 0 have lent packets
    assert pool.active == 32
    assert np.all(pool.state[32:] == PURGED)
    assert np.all(pool.state[keep] == HELD)
    pool.check()
    assert pool.release(keep, 0) == []
    assert pool.purge(keep=16) == 1  # segment 1; segment 0 stays to keep 16
    assert pool.active == 16
    assert pool.purge(keep=16) == 0
    assert pool.purge() == 1
    assert pool.active == 0
    pool.check()
    assert len(pool.alloc(3, 0)) == 3  # grows again from nothing
    assert pool.active == 16
    pool.check()


def test_purge_returns_pages_and_regrown_packets_read_zero(arena, pool):
    pool.grow_to(MAX)
    pkts = lend(pool, MAX)
    for p in pkts:  # touch every page of every packet buffer
        off, n = buf_span(arena, p)
        arena.shared[off : off + n] = b"\xee" * n
    touched = os.fstat(arena.shared_fd).st_blocks
    assert touched * 512 >= MAX * PACKET_BYTES
    # an independent mapping, as a client process has
    other = mmap.mmap(arena.shared_fd, arena.shared_size, mmap.MAP_SHARED)
    try:
        assert pool.release([p for p in pkts if p >= PER_SEG], 0) == []  # segments 1..3 all free
        assert pool.purge(keep=0) == 3
        after = os.fstat(arena.shared_fd).st_blocks
        assert (touched - after) * 512 >= 3 * PER_SEG * PACKET_BYTES
        off, n = buf_span(arena, PER_SEG)
        assert other[off : off + 3 * PER_SEG * n] == bytes(3 * PER_SEG * n)
        off0, _ = buf_span(arena, 0)
        assert other[off0 : off0 + PER_SEG * n] == b"\xee" * (PER_SEG * n)  # segment 0 held: kept
        pool.check()
        again = pool.alloc(PER_SEG, 1)
        assert len(again) == PER_SEG
        for p in again.tolist():
            o, n = buf_span(arena, p)
            assert arena.shared[o : o + n] == bytes(n)
    finally:
        other.close()


def test_reclaim_all(pool):
    lend(pool, 5, 0)
    pool.alloc(3, 1)
    assert pool.reclaim() == 8
    assert pool.held == [0, 0]
    assert pool.counts()["free"] == INITIAL
    pool.check()
    assert pool.reclaim() == 0


def test_reclaim_subset(pool):
    a = lend(pool, 4, 0)
    b = pool.alloc(2, 1).tolist()
    n = pool.reclaim(np.array([a[0], b[0], 15]))  # 15 is free: skipped
    assert n == 2
    assert pool.held == [3, 1]
    pool.check()


def test_reclaim_with_duplicate_indices_keeps_books(pool):
    """Regression: reclaim(idx) pushed a packet listed twice onto the free stack twice (fixed in 7bd7d77)."""
    pkts = lend(pool, 4)
    assert pool.reclaim(np.array([pkts[0], pkts[0]])) == 1
    pool.check()
    assert pool.held == [3, 0]
    assert pool.stack[: pool.nfree].tolist().count(pkts[0]) == 1


def test_reclaim_with_negative_index_keeps_books(pool):
    """Regression: reclaim([-1]) reclaimed the last packet and pushed 2**32-1 on the stack (fixed in 7bd7d77)."""
    pool.alloc(MAX, 0)
    try:
        pool.reclaim(np.array([-1]))
    except (ValueError, IndexError):
        pass
    pool.check()
    assert np.all(pool.stack[: pool.nfree] < MAX)


# -- property test -----------------------------------------------------------------------------


class PoolMachine(RuleBasedStateMachine):
    """Random alloc / take / release (with garbage) / grow / purge / reclaim against a model."""

    @initialize(initial=st.integers(1, MAX), quota=st.integers(1, MAX))
    def setup(self, initial, quota):
        self.arena = make_arena()
        self.pool = PacketPool(self.arena, MAX, initial, ROLES, quota)
        self.quota = quota
        seg_active = set(range(-(-initial // PER_SEG)))
        self.active_segs = seg_active
        self.in_alloc: dict[int, int] = {}  # packet -> role
        self.held: dict[int, int] = {}  # packet -> role that allocated it
        self.refused = [0] * ROLES

    def teardown(self):
        if hasattr(self, "arena"):
            self.arena.close()

    # model helpers
    def free_set(self) -> set[int]:
        active = {p for s in self.active_segs for p in range(s * PER_SEG, (s + 1) * PER_SEG)}
        return active - set(self.in_alloc) - set(self.held)

    def charged(self, role: int) -> int:
        return sum(1 for r in self.in_alloc.values() if r == role) + sum(1 for r in self.held.values() if r == role)

    def grow_model(self, packets: int) -> None:
        packets = min(packets, MAX)
        for seg in range(MAX // PER_SEG):
            if len(self.active_segs) * PER_SEG >= packets:
                break
            self.active_segs.add(seg)

    @rule(n=st.integers(0, 40), role=st.integers(0, ROLES - 1))
    def alloc(self, n, role):
        want = min(n, self.quota - self.charged(role))
        free_before = self.free_set()
        if want > 0 and len(free_before) < want:
            self.grow_model(len(self.active_segs) * PER_SEG + (want - len(free_before)))
        free_now = self.free_set()
        got = self.pool.alloc(n, role).tolist()
        assert len(got) == max(0, min(want, len(free_now)))
        assert len(set(got)) == len(got)
        assert set(got) <= free_now, "allocated a packet that was not free"
        for p in got:
            self.in_alloc[p] = role

    @rule(n=st.integers(1, 20), role=st.integers(0, ROLES - 1), data=st.data())
    def alloc_and_take(self, n, role, data):
        """The common path: the nexus fills the ALLOC ring, the client takes some of it."""
        self.alloc(n, role)
        self.take(data)

    @rule(data=st.data())
    def take(self, data):
        if not self.in_alloc:
            return
        pkts = data.draw(st.lists(st.sampled_from(sorted(self.in_alloc)), unique=True, min_size=1, max_size=20))
        self.pool.take(np.array(pkts, dtype=np.int64))
        for p in pkts:
            self.held[p] = self.in_alloc.pop(p)

    @rule(data=st.data(), role=st.integers(0, ROLES - 1), form=st.sampled_from(list(FORMS)))
    def release(self, data, role, form):
        candidates = st.one_of(
            st.sampled_from(sorted(self.held)) if self.held else st.nothing(),
            st.sampled_from(sorted(self.in_alloc)) if self.in_alloc else st.nothing(),
            st.integers(0, MAX - 1),
            st.integers(-3, -1),
            st.integers(MAX, 2**32 - 1),
            st.sampled_from([MAX, MAX + 1, 2**31, 2**32 - 1]),  # the pool's end, the spare slot's neighbours
        )
        self._release(data.draw(st.lists(candidates, max_size=24)), role, form)

    @rule(data=st.data(), role=st.integers(0, ROLES - 1), form=st.sampled_from(list(FORMS)))
    def release_held(self, data, role, form):
        """Only packets the group holds, often with a duplicate: the batch fast path (past `_FEW`)."""
        if not self.held:
            return
        batch = data.draw(st.lists(st.sampled_from(sorted(self.held)), min_size=1, max_size=20, unique=True))
        if data.draw(st.booleans()):  # a duplicate
            batch.insert(data.draw(st.integers(0, len(batch))), data.draw(st.sampled_from(batch)))
        if data.draw(st.booleans()):  # a held packet's alias: p - MAX (numpy would index it) or p + 2**32
            i = data.draw(st.integers(0, len(batch) - 1))  # (or p - MAX + 2**64: a u64 that intp reads p - MAX)
            batch[i] += data.draw(st.sampled_from([-MAX, 2**32] + ([2**64 - MAX] if form == "u64" else [])))
        self._release(batch, role, form)

    def _release(self, batch, role, form="list"):
        """`batch` handed back as a FREE ring gives it (a list), as a TX ring does (a u32 array:
        a negative is its two's complement), or as an int64 or u64 array; the verdicts are on the
        index as the pool reads it (a u64 past 2**63 is a negative int64)."""
        if form == "u32":
            batch = [i & 0xFFFFFFFF for i in batch]
        elif form == "u64":
            batch = [i & (2**64 - 1) for i in batch]
        seen = [i - 2**64 if i >= 2**63 else i for i in batch]
        # the expected verdicts, in order
        expected = []
        accepted = set()
        order = []
        for i in seen:
            if not 0 <= i < MAX:
                expected.append((i, RefusalReason.OUT_OF_RANGE))
            elif i in self.held and i not in accepted:
                accepted.add(i)
                order.append(i)
            elif i in self.in_alloc:
                expected.append((i, RefusalReason.IN_ALLOC_RING))
            elif i in accepted:
                expected.append((i, RefusalReason.DUPLICATE))
            else:
                expected.append((i, RefusalReason.NOT_OWNED))
        if form == "list":
            good, refused = self.pool.release_checked(batch, role)
        else:
            good, refused = self.pool.release_checked(np.array(batch, dtype=FORMS[form]), role)
            good = good.tolist()
        assert refused == expected
        assert list(good) == order
        for p in accepted:
            del self.held[p]
        self.refused[role] += len(expected)

    @rule(packets=st.integers(0, MAX + 10))
    def grow(self, packets):
        self.grow_model(packets)
        assert self.pool.grow_to(packets) == len(self.active_segs) * PER_SEG

    @rule(keep=st.integers(0, MAX))
    def purge(self, keep):
        before = os.fstat(self.arena.shared_fd).st_blocks
        expected = 0
        active = len(self.active_segs) * PER_SEG
        lent = set(self.in_alloc) | set(self.held)
        for seg in sorted(self.active_segs, reverse=True):
            pk = set(range(seg * PER_SEG, (seg + 1) * PER_SEG))
            if active - PER_SEG < keep or pk & lent:
                continue
            self.active_segs.discard(seg)
            active -= PER_SEG
            expected += 1
        assert self.pool.purge(keep) == expected
        assert os.fstat(self.arena.shared_fd).st_blocks <= before

    @rule(data=st.data())
    def reclaim(self, data):
        lent = sorted(set(self.in_alloc) | set(self.held))
        if data.draw(st.booleans()) or not lent:
            n = self.pool.reclaim()
            assert n == len(lent)
            self.in_alloc.clear()
            self.held.clear()
        else:
            pick = data.draw(st.lists(st.sampled_from(lent), unique=True, min_size=1))
            extra = data.draw(st.lists(st.sampled_from(sorted(self.free_set() or {0})), unique=True, max_size=3))
            idx = sorted(set(pick) | (set(extra) - set(lent)))
            assert self.pool.reclaim(np.array(idx, dtype=np.int64)) == len(pick)
            for p in pick:
                self.in_alloc.pop(p, None)
                self.held.pop(p, None)

    @rule(data=st.data())
    def touch(self, data):
        """Write into a lent packet's buffer (a client using its packet)."""
        lent = sorted(self.held)
        if not lent:
            return
        p = data.draw(st.sampled_from(lent))
        off, n = buf_span(self.arena, p)
        self.arena.shared[off : off + n] = b"\x42" * n

    @invariant()
    def books_balance(self):
        if not hasattr(self, "pool"):
            return
        pool = self.pool
        pool.check()
        st_ = pool.state
        for p in range(MAX):
            if p in self.held:
                assert st_[p] == HELD and pool.owner[p] == self.held[p]
            elif p in self.in_alloc:
                assert st_[p] == IN_ALLOC and pool.owner[p] == self.in_alloc[p]
            elif p // PER_SEG in self.active_segs:
                assert st_[p] == FREE and pool.owner[p] == NO_OWNER
            else:
                assert st_[p] == PURGED
        assert not set(self.held) & set(self.in_alloc), "a packet owned twice"
        for role in range(ROLES):
            assert pool.held[role] == self.charged(role)
            assert pool.held[role] <= self.quota
        assert pool.refused == self.refused
        assert pool.active == len(self.active_segs) * PER_SEG


PoolMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestPoolModel = PoolMachine.TestCase


# -- property: a few packets' release (scalars) and a batch's (arrays) decide alike ---------------


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(["held0", "held1", "alloc", "free", "dup", "low", "high", "alias"]),
                min_size=1, max_size=pool_mod._FEW),
       st.sampled_from([False, np.int64, np.uint32]), st.integers(0, 1))
def test_a_few_released_in_scalars_as_the_batch_path_decides(kinds, as_array, role):
    """`release_checked` takes up to `_FEW` packets in scalars (issue 18: usnetd's cost per small
    batch; issue 16: up to 24, a server's answers to 10 connections); on any batch, hostile ones
    included (duplicates, packets still on ALLOC, free ones, out of range, aliases that numpy
    would wrap), it must refuse and accept exactly what the array path does, and leave the same
    books. As a list (a FREE ring's), an int64 array, or a uint32 one (a TX ring's `pop_array`: its
    hostile indices are those a u32 holds, the top of its range among them)."""
    pools, arenas = [], []
    try:
        for _ in range(2):
            a = make_arena()
            arenas.append(a)
            p = PacketPool(a, MAX, INITIAL, ROLES, quota=MAX)
            h0, h1 = lend(p, 12, 0), lend(p, 12, 1)
            in_alloc = p.alloc(2, 0).tolist()
            pools.append((p, h0, h1, in_alloc))
        p0, h0, h1, in_alloc = pools[0]
        free = [i for i in range(MAX) if p0.state[i] == FREE][:2]
        picks = {"held0": iter(h0), "held1": iter(h1)}
        batch: list[int] = []
        for k in kinds:
            if k in picks:
                batch.append(next(picks[k], h0[0]))
            elif k == "alloc":
                batch.append(in_alloc[0])
            elif k == "free":
                batch.append(free[0])
            elif k == "dup":
                batch.append(batch[-1] if batch else h1[0])
            elif k == "low":
                batch.append(2**32 - 1 if as_array is np.uint32 else -1)
            elif k == "high":
                batch.append(MAX)
            else:
                batch.append(MAX + 1 if as_array is np.uint32 else h0[0] + 2**32)
        results = []
        for p, few in zip((pools[0][0], pools[1][0]), (pool_mod._FEW, 0)):
            saved = pool_mod._FEW
            pool_mod._FEW = few
            try:
                arg = np.array(batch, as_array) if as_array else list(batch)
                good, refused = p.release_checked(arg, role)
            finally:
                pool_mod._FEW = saved
            p.check()
            good = good.tolist() if as_array else list(good)
            results.append((good, refused, p.state.tolist(), p.owner.tolist(), list(p.held),
                            list(p.refused), p.stack[: p.nfree].tolist()))
        assert results[0] == results[1]
    finally:
        for a in arenas:
            a.close()


# -- property: a ring's batch (an array of any integer type) past `_FEW`, one hostile index ----------


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(pool_mod._FEW + 1, MAX), st.sampled_from(list(FORMS)[1:]), st.data())
def test_a_held_batch_with_one_hostile_index_is_refused_just_there(n, form, data):
    """The batch path's one clipped gather (`release_checked`: an index past the pool reads the
    spare PURGED slot) must refuse, whatever the array's type, an index out of range (the pool's
    end, the slot past it, a u32's top, a u64 that intp reads negative), one in ALLOC, one free;
    the rest of the batch is taken back and the books balance."""
    a = make_arena()
    try:
        p = PacketPool(a, MAX, INITIAL, ROLES, quota=MAX)
        held = lend(p, n - 1, 0)
        in_alloc = p.alloc(1, 1).tolist()
        free = [i for i in range(MAX) if p.state[i] == FREE]
        hostile = data.draw(st.sampled_from(
            [MAX, MAX + 1, 2**32 - 1] + ([2**64 - 1, 2**64 - MAX + held[0], 2**63] if form == "u64" else [])
            + ([-1, held[0] - MAX] if form == "i64" else []) + in_alloc + free[:1]))
        batch = data.draw(st.permutations(held + [hostile]))
        good, refused = p.release_checked(np.array(batch, dtype=FORMS[form]), 0)
        seen = hostile - 2**64 if hostile >= 2**63 else hostile
        reason = (RefusalReason.IN_ALLOC_RING if seen in in_alloc else RefusalReason.NOT_OWNED if seen in free
                  else RefusalReason.OUT_OF_RANGE)
        assert refused == [(seen, reason)]
        assert good.tolist() == [i for i in batch if i != hostile]
        assert p.held == [0, 1] and p.refused == [1, 0]
        p.check()
    finally:
        a.close()
