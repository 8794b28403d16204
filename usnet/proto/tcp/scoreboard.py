"""The sender's SACK scoreboard (RFC 2018, RFC 6675), kept deliberately simple.

It records which ranges above SND.UNA the receiver has reported holding, as
sorted, merged ``[start, end)`` ranges of unwrapped sequence numbers. Loss
recovery asks three things of it: how many bytes are SACKed (for "pipe"),
where the next unSACKed hole is (what to retransmit), and the highest
SACKed byte (how far holes count as lost). Ranges are merged on insert, so
its size is the number of holes, which stays small.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

__all__ = ["EMPTY_SCOREBOARD", "Scoreboard"]


class Scoreboard:
    __slots__ = ("starts", "ends", "sacked")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.sacked = 0

    def __bool__(self) -> bool:
        return bool(self.starts)

    @property
    def highest(self) -> int | None:
        """End of the highest SACKed range, or None."""
        return self.ends[-1] if self.ends else None

    def add(self, s: int, e: int) -> int:
        """Record ``[s, e)`` as SACKed; returns the bytes newly covered."""
        if e <= s:
            return 0
        starts, ends = self.starts, self.ends
        i = bisect_left(ends, s)  # first range ending at or after s
        j = bisect_right(starts, e)  # ranges [i, j) touch [s, e)
        if i == j:
            starts.insert(i, s)
            ends.insert(i, e)
            self.sacked += e - s
            return e - s
        ns = min(s, starts[i])
        ne = max(e, ends[j - 1])
        old = 0
        for k in range(i, j):
            old += ends[k] - starts[k]
        starts[i:j] = [ns]
        ends[i:j] = [ne]
        added = (ne - ns) - old
        self.sacked += added
        return added

    def isolated(self, s: int, e: int) -> bool:
        """Whether ``[s, e)`` would be a range of its own (touches none held): what adding
        it would cost a new entry."""
        return bisect_left(self.ends, s) == bisect_right(self.starts, e)

    def advance(self, una: int) -> bool:
        """Forget everything below the cumulative ACK.

        Returns True if the ACK ends inside a SACKed range: an honest
        receiver acknowledges whole ranges it holds, so this means it
        dropped SACKed data (reneging, RFC 2018 §8) and the caller should
        stop trusting the scoreboard.
        """
        starts, ends = self.starts, self.ends
        if not starts or starts[0] >= una:
            return False
        i = bisect_right(ends, una)  # ranges wholly below una
        for k in range(i):
            self.sacked -= ends[k] - starts[k]
        del starts[:i], ends[:i]
        if starts and starts[0] < una:
            self.sacked -= una - starts[0]
            starts[0] = una
            return True
        return False

    def sacked_between(self, a: int, b: int) -> int:
        """SACKed bytes inside ``[a, b)``."""
        if not self.starts or b <= a:
            return 0
        starts, ends = self.starts, self.ends
        n = 0
        for k in range(bisect_right(ends, a), len(starts)):
            s = starts[k]
            if s >= b:
                break
            e = ends[k]
            n += (e if e < b else b) - (s if s > a else a)
        return n

    def next_hole(self, p: int, limit: int) -> tuple[int, int] | None:
        """The first unSACKed range ``[x, y)`` with ``p <= x < limit``, ``y <= limit``."""
        starts, ends = self.starts, self.ends
        k = bisect_right(ends, p)  # first range ending after p
        while p < limit:
            if k >= len(starts) or starts[k] > p:
                y = starts[k] if k < len(starts) else limit
                return (p, y if y < limit else limit)
            p = ends[k]
            k += 1
        return None

    def is_sacked(self, p: int) -> bool:
        k = bisect_right(self.starts, p) - 1
        return k >= 0 and self.ends[k] > p

    def clear(self) -> None:
        self.starts.clear()
        self.ends.clear()
        self.sacked = 0


class _Empty(Scoreboard):
    """A scoreboard that stays empty, shared: see `EMPTY_SCOREBOARD`."""

    __slots__ = ()

    def __init__(self) -> None:
        self.starts = ()  # type: ignore[assignment]  # immutable: a write fails loudly
        self.ends = ()  # type: ignore[assignment]
        self.sacked = 0

    def add(self, s: int, e: int) -> int:
        raise TypeError("EMPTY_SCOREBOARD is shared: give the connection a Scoreboard of its own first")

    def advance(self, una: int) -> bool:
        return False  # nothing below anything

    def clear(self) -> None:
        pass


# What a connection holds until the first SACK block arrives (most never see one): a shared
# empty scoreboard, so an idle connection owns no scoreboard and no two lists (issue 18: each
# container a connection owns is another object every full collection of the cyclic GC walks).
EMPTY_SCOREBOARD: Scoreboard = _Empty()
