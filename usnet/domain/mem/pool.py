"""Packet pools with a kernel-private owner for every packet (docs/architecture.md, "Packet pools").

A pool belongs to one entity (a trust group: the channels of one user pipe).
Its packets live in the arena's UMD and BUF regions; who owns each packet is
KMD, kept here in numpy arrays in the nexus process, out of every client's
reach. A packet is in exactly one state at a time:

    FREE      in the pool's free stack
    PURGED    its segment's pages were returned to the system; not allocatable
    IN_ALLOC  put on a channel's ALLOC ring, not yet taken by the client
    HELD      taken by a channel of the group (in its hands or on a pipe ring)

Batches are checked with numpy in one pass; only a batch that contains a bad
index falls back to the per-packet path, which refuses and counts each bad one
precisely. Nothing here does I/O except the MADV_REMOVE of a purged segment.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np

from usnet.abi.events import RefusalReason
from usnet.domain.mem.arena import Arena, RegionKind

__all__ = ["FREE", "HELD", "IN_ALLOC", "NO_OWNER", "PURGED", "PacketPool", "PoolExhausted"]

FREE, PURGED, IN_ALLOC, HELD = 0, 1, 2, 3  # HELD the highest: a batch is all HELD when its minimum is
# A release of up to this many packets is checked in scalars (`release_checked`): below it the
# batch test's dozen array calls cost more than the loop (issue 18: usnetd's cost per small batch).
# Through memoryviews the loop costs ~0.17 us a packet and the array path ~6 us a batch whatever
# its size: the two cross near 30 (issue 16: a server's answers to 10 connections come in tens)
_FEW = 24
NO_OWNER = -1


_ORDER = np.arange(4096, dtype=np.int64)


def _order(n: int) -> np.ndarray:
    """0, 1, ..., n - 1 (read-only: one array shared by every pool, grown when a batch needs more)."""
    global _ORDER
    if n > len(_ORDER):
        _ORDER = np.arange(max(n, 2 * len(_ORDER)), dtype=np.int64)
    return _ORDER[:n]


_scratch = threading.local()


def _marks(capacity: int) -> np.ndarray:
    """The duplicate check's scratch, one per thread for every pool (what it holds is written
    before it is read): with a scratch per pool, 1,000 flows' checks touched 1,000 arrays of
    8 bytes a packet, cold, where one stays in the cache. Per thread, because an in-process
    client's kick checks its own pipe's batch from its own thread (under that pipe's lock)."""
    mark = getattr(_scratch, "mark", None)
    if mark is None or len(mark) < capacity:
        mark = _scratch.mark = np.empty(max(capacity, 4096), dtype=np.int64)
    return mark


class PoolExhausted(OSError):
    """No packet can be had: the pool is empty and at its size limit, or a quota is reached."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOBUFS, message)


class PacketPool:
    def __init__(self, arena: Arena, max_packets: int, initial: int, roles: int, quota: int) -> None:
        self.arena = arena
        self.capacity = max_packets
        self.region = arena.region(RegionKind.BUF)
        self.per_segment = self.region.objs_per_segment
        self.nsegments = self.region.segments
        # one slot past the end, always PURGED: a batch's indices are gathered with `mode="clip"`,
        # so an index past the pool reads that slot and fails "all HELD" (no separate range test)
        self._state_x = np.full(max_packets + 1, PURGED, dtype=np.uint8)
        self.state = self._state_x[:max_packets]
        self.owner = np.full(max_packets, NO_OWNER, dtype=np.int16)
        self.seg_active = np.zeros(self.nsegments, dtype=bool)
        self.stack = np.empty(max_packets, dtype=np.uint32)
        # The same three arrays as memoryviews, for the scalar paths (a few packets released, one
        # allocated or taken): a memoryview's item is a Python int read or stored in one step,
        # where a numpy array's goes through a numpy scalar (issue 16: the bench's batches of 10)
        self._state_v, self._owner_v, self._stack_v = self.state.data, self.owner.data, self.stack.data
        self.nfree = 0
        self.held = [0] * roles  # packets charged to each role (IN_ALLOC or HELD)
        self.moves = 0  # batches allocated or taken back so far: the domain's idle purge watches it
        self.quota = quota
        self.refused = [0] * roles
        self._active = 0  # packets outside PURGED: kept as segments come and go, not counted per ask
        self.grow_to(initial)

    # -- size -------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Packets in active (not purged) segments: a count kept by `_activate` and `purge`, because
        every ALLOC refill publishes it (issue 18: counted over the state array, it was a pass
        over a cold pool per refill, one refill per batch or two at 1,000 flows)."""
        return self._active

    def _segment_range(self, seg: int) -> range:
        lo = seg * self.per_segment
        return range(lo, min(lo + self.per_segment, self.capacity))

    def _activate(self, segs: np.ndarray) -> None:
        """Bring segments into use: their packets become FREE, each segment pushed in reverse
        so its lowest index pops first. One set of array operations for all of them: a flow
        channel's pool opens with a hundred or more segments."""
        self.seg_active[segs] = True
        per = self.per_segment
        idx = (segs[:, None] * per + np.arange(per - 1, -1, -1)[None, :]).ravel()
        idx = idx[idx < self.capacity]  # the last segment may be short
        self.state[idx] = FREE
        self.owner[idx] = NO_OWNER
        n = len(idx)
        self.stack[self.nfree : self.nfree + n] = idx
        self.nfree += n
        self._active += n
        self.moves += 1

    def grow_to(self, packets: int) -> int:
        """Activate segments until at least `packets` are active; returns the active count.

        The inactive segments are taken lowest first, as many as reach `packets`, counted with
        array operations: a flow or connector channel opens with a pool of ~1,000 segments, and a
        Python step per segment was most of usnetd's CPU for an open (issue 18, a first
        connect's connector)."""
        packets = min(packets, self.capacity)
        active = self.active
        if active >= packets:
            return active
        free = np.flatnonzero(~self.seg_active)
        per = self.per_segment
        sizes = np.clip(self.capacity - free * per, 0, per)  # the last may be short; past capacity, empty
        reach = np.cumsum(sizes)
        k = int(np.searchsorted(reach, packets - active)) + 1  # the first prefix that reaches it
        segs = free[:k]
        self._activate(segs.astype(np.int64, copy=False))
        return active + int(reach[min(k, len(reach)) - 1])

    def purge(self, keep: int = 0) -> int:
        """Return the pages of all-free segments to the system, keeping `keep` packets active.

        Returns the number of segments purged. Their packets leave the free
        stack and come back, zero-filled, when the pool grows again.
        """
        purged = 0
        active = self.active
        for seg in range(self.nsegments - 1, -1, -1):
            if not self.seg_active[seg]:
                continue
            r = self._segment_range(seg)
            if active - len(r) < keep:
                continue
            if not np.all(self.state[r.start : r.stop] == FREE):
                continue
            self.state[r.start : r.stop] = PURGED
            self.seg_active[seg] = False
            self.arena.purge_segment(RegionKind.BUF, seg)
            active -= len(r)
            self._active -= len(r)
            purged += 1
        if purged:
            live = self.stack[: self.nfree]
            live = live[self.state[live] == FREE]
            self.nfree = len(live)
            self.stack[: self.nfree] = live
        return purged

    # -- allocation ---------------------------------------------------------------

    def alloc(self, n: int, role: int, grow: bool = True) -> np.ndarray:
        """Up to `n` packets for `role`, marked IN_ALLOC; grows the pool if it must and `grow`.

        Returns an empty array (never blocks) when the pool is exhausted or the
        role's quota is reached; callers turn that into PoolExhausted. A pipe
        asks with `grow=False` first (UserPipe.lend): packets its clients freed
        may be waiting on a FREE ring, and growing instead would touch new
        memory every time the free stack runs dry.
        """
        room = self.quota - self.held[role]  # (comparisons, not `min` calls: asked at every delivery)
        if room < n:
            n = room
        if n <= 0:
            return self.stack[:0]
        if self.nfree < n and grow:
            self.grow_to(self.active + (n - self.nfree))
        if self.nfree < n:
            n = self.nfree
        out = self.stack[self.nfree - n : self.nfree][::-1].copy()
        self.nfree -= n
        self.moves += 1
        if n <= _FEW:  # a handshake's, a request's, a batch of answers: scalar stores, not fancy-indexed
            state, owner = self._state_v, self._owner_v
            for i in self._stack_v[self.nfree : self.nfree + n].tolist():
                state[i] = IN_ALLOC
                owner[i] = role
        else:
            self.state[out] = IN_ALLOC
            self.owner[out] = role
        self.held[role] += n
        return out

    def alloc_or_raise(self, n: int, role: int) -> np.ndarray:
        out = self.alloc(n, role)
        if len(out) == 0:
            raise PoolExhausted(
                f"pool exhausted: {self.nfree} free, {self.active}/{self.capacity} active, "
                f"role {role} holds {self.held[role]} of quota {self.quota}"
            )
        return out

    def take(self, idx: np.ndarray) -> None:
        """The client took these from its ALLOC ring: IN_ALLOC -> HELD (a few packets, a received
        batch's reservation: scalar stores, not a fancy-indexed one)."""
        if type(idx) is np.ndarray and idx.size <= _FEW:
            state = self._state_v
            for i in idx.tolist():
                state[i] = HELD
        else:
            self.state[idx] = HELD

    def release(self, items: Iterable[int], role: int) -> list[tuple[int, RefusalReason]]:
        """Take back packets handed back by `role`; returns the refused ones with reasons.

        Any channel of the group may hand back a packet held by the group (the
        receiver of a user pipe frees what the sender allocated); the charge
        goes off the role that allocated it.
        """
        return self.release_checked(items, role)[1]

    def release_checked(self, items: Iterable[int] | np.ndarray,
                        role: int) -> tuple[Any, list[tuple[int, RefusalReason]]]:
        """As `release`, also returning the accepted indices in the order given.

        Given a numpy array, the accepted indices come back as one (int64).
        """
        as_array = unsigned = False
        if isinstance(items, np.ndarray):
            # a ring's u32 (or narrower) batch cannot be negative, and intp reads it as it is; a u64
            # past 2**63 intp reads negative, which the clipped gather would read as packet 0 (and
            # numpy index from the end): such a batch takes the signed test
            as_array, unsigned = True, items.dtype.kind == "u" and items.dtype.itemsize <= 4
            if 0 < items.size <= _FEW and self._release_few(items.tolist()):
                return items.astype(np.int64), []  # a handshake's, a request's, the LL path's: scalars
            idx = items.astype(np.int64)
        else:
            items = list(items)
            if 0 < len(items) <= _FEW and self._release_few(items):  # no array made (a FREE ring's few)
                return items, []
            idx = np.array(items, dtype=np.int64)
        # past here: a batch, or a few that `_release_few` refused (the loop below finds each reason)
        if idx.size == 0:
            return (idx if as_array else []), []
        # The batch test in as few array calls as it takes (issue 18: at 1,000 flows each flow's batch
        # of 32 pays them): an unsigned batch (a ring's) cannot be negative, HELD is the highest
        # state so "all HELD" is one minimum, and the order the duplicate check writes is a slice
        if idx.size > _FEW and (self._state_x.take(items, mode="clip").min() == HELD if unsigned else
                                (idx.min() >= 0 and idx.max() < self.capacity and self.state[idx].min() == HELD)):
            # duplicates, in O(n): the last writer of each index wins the mark
            order = _order(idx.size)
            mark = _marks(self.capacity)
            mark[idx] = order
            if (mark[idx] == order).all():
                self._accept(idx)
                return (idx if as_array else items), []
        refused: list[tuple[int, RefusalReason]] = []
        good: list[int] = []
        for i in idx.tolist():
            if not 0 <= i < self.capacity:
                refused.append((i, RefusalReason.OUT_OF_RANGE))
                continue
            st = self.state[i]
            if st == HELD:
                self.state[i] = FREE  # so a duplicate later in the batch is refused
                good.append(i)
            elif st == IN_ALLOC:
                refused.append((i, RefusalReason.IN_ALLOC_RING))
            elif st == FREE and i in good:
                refused.append((i, RefusalReason.DUPLICATE))
            else:
                refused.append((i, RefusalReason.NOT_OWNED))
        if good:
            g = np.array(good, dtype=np.int64)
            self.state[g] = HELD
            self._accept(g)
        self.refused[role] += len(refused)
        return (np.array(good, dtype=np.int64) if as_array else good), refused

    def _release_few(self, lst: list[int]) -> bool:
        """Take back a few packets in scalars, if every one is in range, HELD and given once (the
        array path's test, without its dozen array calls); False, changing nothing, if not."""
        cap, state = self.capacity, self._state_v
        if len(lst) > 1 and len(set(lst)) != len(lst):
            return False
        for i in lst:
            if not 0 <= i < cap or state[i] != HELD:
                return False
        owner, held, stack, nfree = self._owner_v, self.held, self._stack_v, self.nfree
        for i in lst:
            held[owner[i]] -= 1
            state[i] = FREE
            owner[i] = NO_OWNER
            stack[nfree] = i
            nfree += 1
        self.nfree = nfree
        self.moves += 1
        return True

    def _accept(self, idx: np.ndarray) -> None:
        owners = self.owner[idx]
        held = self.held
        if len(held) == 2:  # a flow's pipe (client and nexus): one count, not a bincount and its list
            ones = int(np.add.reduce(owners))  # the ufunc itself: no Python wrapper per batch
            held[0] -= idx.size - ones
            held[1] -= ones
        else:
            for role, count in enumerate(np.bincount(owners, minlength=len(held)).tolist()):
                held[role] -= count
        self.state[idx] = FREE
        self.owner[idx] = NO_OWNER
        n = idx.size
        self.stack[self.nfree : self.nfree + n] = idx
        self.nfree += n
        self.moves += 1

    def reclaim(self, idx: np.ndarray | None = None) -> int:
        """Force packets (default: every lent one) back to FREE; returns how many."""
        if idx is None:
            idx = np.flatnonzero((self.state == IN_ALLOC) | (self.state == HELD))
        else:
            idx = np.unique(np.asarray(idx, dtype=np.int64))
            idx = idx[(idx >= 0) & (idx < self.capacity)]
            idx = idx[(self.state[idx] == IN_ALLOC) | (self.state[idx] == HELD)]
        if idx.size:
            self._accept(idx.astype(np.int64))
        return int(idx.size)

    # -- accounting ---------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.state, minlength=4).tolist()
        return {"free": c[FREE], "purged": c[PURGED], "in_alloc": c[IN_ALLOC], "held": c[HELD],
                "capacity": self.capacity}

    def check(self) -> None:
        """Assert the books balance: each packet in exactly one place (tests call this)."""
        c = self.counts()
        assert c["free"] + c["purged"] + c["in_alloc"] + c["held"] == self.capacity
        stack = self.stack[: self.nfree]
        assert stack.size == c["free"], (stack.size, c)
        assert np.unique(stack).size == stack.size, "a packet is on the free stack twice"
        assert np.all(self.state[stack] == FREE)
        lent = (self.state == IN_ALLOC) | (self.state == HELD)
        assert sum(self.held) == int(np.count_nonzero(lent))
        assert self._active == c["capacity"] - c["purged"], (self._active, c)
        assert np.all(self.owner[lent] >= 0)
