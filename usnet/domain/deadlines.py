"""Things due at a time, soonest first: a heap the loop peeks at each turn (sans-I/O).

usnetd's loop asks each turn when the next relayed request's deadline is (usnet.domain.workers
`Relay.check`) and whether a departed client's drain has overstayed (`Drains.check`). A scan
of everything waiting costs O(waiting) per turn; this heap costs one look at its top, and a pop
(O(log n)) per entry once, when it falls due. Removal is lazy: the caller keeps its own record of
what is still live (an answered request, an ended drain) and skips the stale entries it is handed;
an entry whose time moved is added again with the new time, the old one skipped the same way.

`looked` counts the entries examined, so a test can count the work of a turn, not time it.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["Deadlines"]

T = TypeVar("T")


class Deadlines(Generic[T]):
    """(time, item) entries; `due` hands over, soonest first, those whose time has come."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()  # ties: first added first, and items are never compared
        self.looked = 0  # entries examined (peeks and pops): the work, for tests

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, when: float, item: T) -> None:
        heapq.heappush(self._heap, (when, next(self._order), item))

    def next_in(self, now: float, most: float) -> float:
        """Seconds from `now` to the soonest entry's time (0 if past), at most `most`: one look."""
        if not self._heap:
            return most
        self.looked += 1
        return min(most, max(0.0, self._heap[0][0] - now))

    def due(self, now: float) -> Iterator[tuple[float, T]]:
        """Pop and yield (time, item) for each entry due by `now`, soonest first. Entries added
        meanwhile (a moved deadline) are seen if they are due too, so a caller that adds one for
        later must add it after `now`."""
        heap = self._heap
        while heap:
            self.looked += 1
            if heap[0][0] > now:
                return
            when, _, item = heapq.heappop(heap)
            yield when, item

    def clear(self) -> None:
        self._heap.clear()
