"""Single-producer single-consumer rings in shared memory (docs/architecture.md, "Channels and rings", docs/abi.md).

Ring layout (little-endian, the ring starts 64-byte aligned): the header
`RING_HEADER` (producer counter at byte 0, consumer counter at 64, flags at
128), then `slots[capacity]` at byte `HEADER` (192), a u32 packet index each
(EVENT rings: 32-byte records).

Producer and consumer counters sit on separate cache lines. Each side caches
the other's counter and reads the shared one only when its cache runs out, so
work moves in batches. The reader of a counter written by the other side
checks `0 <= prod - cons <= capacity`; a violation raises RingCorrupt, unless
the ring was made with `on_corrupt`. Every ring the domain reads is: the
callback turns it into a violation of the channel (docs/abi.md, section
10, "What the nexus validates") and the ring reads as full (producer) or empty (consumer), so a
client's counters can never raise inside the domain's loop. A client's rings
pass one that raises the channel's defunct reason when it has one (a defunct
channel's rings read as zeros) and RingCorrupt otherwise.

Ordering: a producer stores slot contents before the counter. CPython writes a
memoryview item with one plain store and x86-64 keeps store order (TSO), so a
consumer that sees the counter sees the slots. The one store-load race of
NEED_WAKEUP (each side stores, then loads the other's word) needs a full
fence, which `fence()` provides with a locked instruction; waits also carry a
timeout, so even a missed doorbell delays and never hangs. Supported: x86-64
Linux (see docs/abi.md for others).
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Callable
from typing import Any

import numpy as np

from usnet.abi.layout import RESERVED, Fields

__all__ = [
    "CONS", "FLAGS", "HEADER", "NEED_WAKEUP", "PROD", "RING_HEADER", "SLOT", "Consumer", "Producer", "RingCorrupt",
    "fence", "ring_bytes",
]

#: A ring's header: the two counters on cache lines of their own, then the consumer's flags.
RING_HEADER = Fields(
    "ring header",
    ("producer", "u64"), (RESERVED, 56),  # free-running count of slots published
    ("consumer", "u64"), (RESERVED, 56),  # free-running count of slots consumed
    ("flags", "u32"), (RESERVED, 60),  # NEED_WAKEUP: the consumer sleeps, ring its doorbell
)
HEADER = RING_HEADER.size  # the slots follow it
PROD = RING_HEADER.word("producer", 8)  # index in the header viewed as 'Q'
CONS = RING_HEADER.word("consumer", 8)  # index in the header viewed as 'Q'
FLAGS = RING_HEADER.word("flags", 4)  # index in the header viewed as 'I'
NEED_WAKEUP = 1
SLOT = 4
_EMPTY = np.empty(0, np.uint32)
_EMPTY.flags.writeable = False


def ring_bytes(capacity: int, slot_size: int = SLOT) -> int:
    """Bytes one ring takes, rounded to a cache line."""
    return (HEADER + capacity * slot_size + 63) // 64 * 64


class RingCorrupt(OSError):
    """The other side of a ring wrote counters that cannot be true."""


_fence_lock = threading.Lock()


def fence() -> None:
    """A full memory barrier: an uncontended lock is a locked read-modify-write."""
    _fence_lock.acquire()
    _fence_lock.release()


class _Ring:
    __slots__ = ("q", "w", "slots", "capacity", "mask", "on_corrupt")

    def __init__(self, mem: memoryview, offset: int, capacity: int,
                 on_corrupt: Callable[[str], None] | None = None) -> None:
        if capacity <= 0 or capacity & (capacity - 1):
            raise ValueError(f"ring capacity {capacity} is not a power of two")
        hdr = mem[offset : offset + HEADER]
        self.q = hdr.cast("Q")
        self.w = hdr.cast("I")
        self.slots = mem[offset + HEADER : offset + HEADER + capacity * SLOT].cast("I")
        self.capacity = capacity
        self.mask = capacity - 1
        self.on_corrupt = on_corrupt

    def _corrupt(self, what: str) -> None:
        """The other side wrote an impossible counter: raise, or report it (the domain's rings)."""
        if self.on_corrupt is None:
            raise RingCorrupt(what)
        self.on_corrupt(what)

    def need_wakeup(self) -> bool:
        return bool(self.w[FLAGS] & NEED_WAKEUP)

    def release(self) -> None:
        for v in (self.q, self.w, self.slots):
            v.release()


class Producer(_Ring):
    """The producing end: publishes batches of u32 slots."""

    __slots__ = ("prod", "cons_cache", "limit")

    def __init__(self, mem: memoryview, offset: int, capacity: int, limit: int | None = None,
                 on_corrupt: Callable[[str], None] | None = None) -> None:
        super().__init__(mem, offset, capacity, on_corrupt)
        self.prod = self.q[PROD]
        self.cons_cache = self.q[CONS]
        self.limit = capacity if limit is None else min(limit, capacity)

    def space(self, need: int = 1) -> int:
        """Free slots, re-reading the consumer counter only if the cache shows fewer than `need`."""
        free = self.limit - (self.prod - self.cons_cache)
        if free < need:
            cons = self.q[CONS]
            used = self.prod - cons
            if used < 0 or used > self.capacity:
                self._corrupt(f"consumer counter {cons} impossible against producer {self.prod}")
                return 0
            self.cons_cache = cons
            free = self.limit - used
        return free if free > 0 else 0  # (no `max` call: asked at every delivery)

    def push(self, items: list[int] | array[int] | np.ndarray) -> int:
        """Publish as many of `items` as fit; returns how many.

        `items` is a list of ints, or any sliceable buffer of native u32
        (array('I'), a numpy uint32 array), copied into the slots in one go.
        """
        n = len(items)
        if n == 0:
            return 0
        free = self.space(n)
        if free < n:
            n = free
            if n == 0:
                return 0
            items = items[:n]
        start = self.prod & self.mask
        first = self.capacity - start
        # Any: an ndarray is a buffer, but numpy's stubs say so only for Python 3.12+
        data: Any = array("I", items) if isinstance(items, list) else items
        if n <= first:
            self.slots[start : start + n] = data
        else:
            self.slots[start:] = data[:first]
            self.slots[: n - first] = data[first:]
        self.prod += n
        self.q[PROD] = self.prod
        return n

    def push_one(self, item: int) -> int:
        """`push` of one slot (a handshake's packet): no buffer made; returns 1, or 0 if full."""
        if self.limit - (self.prod - self.cons_cache) < 1 and self.space(1) < 1:
            return 0
        self.slots[self.prod & self.mask] = item
        self.prod += 1
        self.q[PROD] = self.prod
        return 1

    def published_unconsumed(self) -> int:
        """Slots published and not yet consumed (0 when the consumer counter is impossible)."""
        used = self.prod - self.q[CONS]
        return used if 0 <= used <= self.capacity else 0


class Consumer(_Ring):
    """The consuming end: takes batches of u32 slots."""

    __slots__ = ("cons", "prod_cache")

    def __init__(self, mem: memoryview, offset: int, capacity: int,
                 on_corrupt: Callable[[str], None] | None = None) -> None:
        super().__init__(mem, offset, capacity, on_corrupt)
        self.cons = self.q[CONS]
        self.prod_cache = self.q[PROD]

    def refresh(self) -> int:
        """Re-read the producer counter; returns slots available."""
        prod = self.q[PROD]
        avail = prod - self.cons
        if avail < 0 or avail > self.capacity:
            self._corrupt(f"producer counter {prod} impossible against consumer {self.cons}")
            return 0
        self.prod_cache = prod
        return avail

    def available(self) -> int:
        avail = self.prod_cache - self.cons
        return avail if avail else self.refresh()

    def pop(self, max_n: int) -> list[int]:
        """Take up to `max_n` slots and publish their consumption."""
        n = self._claim(max_n)
        if not n:
            return []
        start = (self.cons - n) & self.mask
        end = start + n
        if end <= self.capacity:
            out = self.slots[start:end].tolist()
        else:
            out = self.slots[start:].tolist() + self.slots[: end - self.capacity].tolist()
        self.q[CONS] = self.cons
        return out

    def pop_array(self, max_n: int) -> np.ndarray:
        """As `pop`, into a uint32 array: the entry of the numpy batch paths."""
        n = self._claim(max_n)
        if not n:
            return _EMPTY
        start = (self.cons - n) & self.mask
        end = start + n
        if n == 1:  # one slot (a handshake's packet): no buffer conversion
            out = np.array((self.slots[start],), np.uint32)
            self.q[CONS] = self.cons
            return out
        out = np.empty(n, np.uint32)
        if end <= self.capacity:
            out[:] = self.slots[start:end]
        else:
            first = self.capacity - start
            out[:first] = self.slots[start:]
            out[first:] = self.slots[: n - first]
        self.q[CONS] = self.cons
        return out

    def _claim(self, max_n: int) -> int:
        """Reserve up to `max_n` available slots (the caller publishes the counter)."""
        if max_n <= 0:
            return 0
        avail = self.prod_cache - self.cons
        if avail <= 0:
            avail = self.refresh()
            if avail == 0:
                return 0
        n = avail if avail < max_n else max_n
        self.cons += n
        return n

    def set_need_wakeup(self) -> None:
        self.w[FLAGS] = self.w[FLAGS] | NEED_WAKEUP

    def clear_need_wakeup(self) -> None:
        self.w[FLAGS] = self.w[FLAGS] & ~NEED_WAKEUP
