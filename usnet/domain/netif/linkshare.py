"""One link, several schedulers: what `usnetd --workers N`'s processes tell each other to pace a
netif's queues together at its `link_rate`.

Each worker has its own queue of the netif and its own `SlotScheduler`
(usnet.domain.netif.txsched); alone, each would pace at the whole link rate and together they
would send up to N times it. The schedulers share instead a small page of memory that usnetd maps
before it forks the workers (an anonymous MAP_SHARED mapping: every child, and the spawner's
later replacements, inherit it). It is an array of doubles (layout: docs/abi.md, "The link
share page"). Cell 0 is the link's ``epoch``: the link time its slot 0 began, written once by
usnetd before the fork and only read after it, so that every worker's `SlotScheduler` numbers
the slots of the one link alike (slot n runs from ``epoch + n * slot_time``) and their LL slots
fall at the same moments. Row k (cells 1 + 3k ...) is worker k's and only worker k writes it:

- ``sent``: bytes worker k has handed to its queue of the device, ever (a replacement goes on
  from its predecessor's count);
- ``vt``: worker k's view of when the link finishes what it was given (its scheduler's ``vt``,
  which includes the other workers' bytes it has seen);
- ``want``: the last time worker k asked for a grant with frames waiting;
- ``ll``: of ``sent``, the bytes of its low-latency class;
- ``debt``: what worker k's LL class now owes the general class (bytes it sent ahead of the LL
  slots, which the heads of the link's next LL slots pay back): the LL class of the link as a
  whole may run ahead of its slots by one burst, not one per worker.

A scheduler, before it grants, moves its ``vt`` on by the bytes the others sent since it last
looked, and to at least the latest ``vt`` another has published (`SlotScheduler._absorb`): so
every worker's ``vt`` follows the one link, and none grants past ``now + horizon`` of it. The
split is work-conserving (an idle worker publishes nothing and takes nothing) and fair among
the busy ones (a grant is at most ``horizon / busy`` bytes of time, ``busy`` the workers that
wanted within the last two horizons). No locks and no read-modify-write across processes:
each row has one writer, and an aligned 8-byte store or load is whole on the machines usnet
runs on (x86-64, arm64). A reader may see a row a moment old; that costs at most a grant of
overshoot, which the horizon bounds.
"""

from __future__ import annotations

import mmap
import time

__all__ = ["LinkPeer", "LinkShare"]

_EPOCH = 0  # the header: one cell, the epoch
_HEADER = 1
_FIELDS = 5  # a worker's row: sent, vt, want, ll, debt
_SENT, _VT, _WANT, _LL, _DEBT = range(_FIELDS)


class LinkShare:
    """The shared page of one netif's `n` workers; made before the fork, so all of them share it."""

    def __init__(self, n: int, epoch: float | None = None) -> None:
        """`epoch`: the link time of its slot 0 (by default now, on the monotonic clock the
        netifs read: link times stay small, so a float keeps them to a fraction of a byte)."""
        if not isinstance(n, int) or not 1 <= n <= 256:
            raise ValueError(f"a link is shared by 1 to 256 workers, not {n!r}")
        self.n = n
        self._map = mmap.mmap(-1, max(mmap.PAGESIZE, (_HEADER + n * _FIELDS) * 8), flags=mmap.MAP_SHARED)
        self._cells = memoryview(self._map).cast("d")
        self._cells[_EPOCH] = time.monotonic() if epoch is None else float(epoch)

    def peer(self, k: int) -> LinkPeer:
        """Worker k's side (its scheduler's `peers`)."""
        if not 0 <= k < self.n:
            raise ValueError(f"no worker {k} of {self.n}")
        return LinkPeer(self._cells, self.n, k)


class LinkPeer:
    """Worker k's view of the shared page: it writes its own row and reads the others'."""

    def __init__(self, cells: memoryview[float], n: int, k: int) -> None:
        self._cells = cells
        self.n = n
        self.k = k
        self._row = _HEADER + k * _FIELDS
        self._others = tuple(_HEADER + j * _FIELDS for j in range(n) if j != k)

    @property
    def epoch(self) -> float:
        """The link time slot 0 began (read-only after the fork)."""
        return self._cells[_EPOCH]

    def sent(self, nbytes: int, vt: float, ll: bool = False, debt: float = 0.0) -> None:
        """Worker k handed `nbytes` more to the device (of its LL class if `ll`); its link then
        finishes at `vt`, and its LL class owes `debt`."""
        c, r = self._cells, self._row
        c[r + _SENT] += nbytes
        if ll:
            c[r + _LL] += nbytes
        c[r + _DEBT] = debt
        c[r + _VT] = vt

    def owes(self, debt: float) -> None:
        """Worker k's LL class now owes `debt` (paid back as the LL slots' heads passed)."""
        self._cells[self._row + _DEBT] = debt

    def others_ll(self) -> tuple[float, float]:
        """(LL bytes the other workers have sent, ever; what their LL classes owe now)."""
        c = self._cells
        ll = debt = 0.0
        for r in self._others:
            ll += c[r + _LL]
            debt += c[r + _DEBT]
        return ll, debt

    def wants(self, now: float) -> None:
        """Worker k has frames waiting at `now`."""
        self._cells[self._row + _WANT] = now

    def others(self, since: float) -> tuple[float, float, int]:
        """(bytes the other workers have sent, ever; the latest `vt` of theirs; how many of them
        wanted at or after `since`)."""
        c = self._cells
        sent = vt = 0.0
        busy = 0
        for r in self._others:
            sent += c[r + _SENT]
            v = c[r + _VT]
            if v > vt:
                vt = v
            if c[r + _WANT] >= since:
                busy += 1
        return sent, vt, busy
