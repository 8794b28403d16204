"""The receiver's out-of-order queue (RFC 9293 §3.10.7.4 step 7, RFC 2018).

Data that arrives beyond a hole is kept here until the hole fills. It is
stored as *merged blocks*: each block is a contiguous run of bytes, and
blocks never touch or overlap. That is exactly what SACK reports (one SACK
block per run), so building the SACK option needs no extra pass, and the
number of objects stays at the number of holes, not of segments.

Memory is bounded twice. The connection only inserts bytes that lie inside
the window it advertised, so the bytes never exceed the receive buffer. And
each block is charged `BLOCK_COST` beyond its bytes (about what a small
skb's truesize charges on Linux): a peer that sends one byte in every other
position of the window (an out-of-order flood that never fills a hole) would
otherwise make one Python object per byte, about a hundred times the window
in memory and an ever longer list to insert into. `make_room` prunes the
highest blocks when the charge passes the budget, as Linux's
tcp_prune_ofo_queue does. Sequence numbers here are unwrapped ints (see
usnet.proto.tcp.seq).
"""

from __future__ import annotations

from bisect import bisect_right

__all__ = ["BLOCK_COST", "EMPTY_REASSEMBLY", "Reassembly"]

BLOCK_COST = 768
"""What a block is charged beyond its bytes: about a small skb's truesize on Linux, and a few
times what a block's objects cost here, so a queue of slivers meets its budget long before its
memory does."""


class Reassembly:
    """Sorted, merged, non-adjacent blocks ``[start, start + len(data))``."""

    __slots__ = ("starts", "datas", "nbytes", "recent", "dup")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.datas: list[bytearray] = []
        self.nbytes = 0
        self.recent: list[int] = []  # starts of blocks, most recently changed first (for SACK order)
        self.dup: tuple[int, int] | None = None  # the first range the last `add` already held (D-SACK)

    def __bool__(self) -> bool:
        return bool(self.starts)

    def __len__(self) -> int:
        return len(self.starts)

    def add(self, start: int, data) -> int:
        """Insert bytes at ``start``; returns how many of them were new. ``dup`` is then the
        first range of them that was already held (what a D-SACK reports), or None."""
        n = len(data)
        self.dup = None
        if not n:
            return 0
        end = start + n
        starts, datas = self.starts, self.datas
        i = bisect_right(starts, start) - 1
        before = self.nbytes
        if i >= 0 and starts[i] + len(datas[i]) >= start:
            blk = datas[i]
            bend = starts[i] + len(blk)
            if bend >= end:
                self.dup = (start, end)
                self._touch(starts[i])
                return 0
            if bend > start:
                self.dup = (start, bend)
            blk += data[bend - start :]
            self.nbytes += end - bend
        else:
            i += 1
            starts.insert(i, start)
            datas.insert(i, bytearray(data))
            self.nbytes += n
        # Swallow the following blocks that the new bytes reach.
        blk = datas[i]
        bend = starts[i] + len(blk)
        j = i + 1
        while j < len(starts) and starts[j] <= bend:
            nxt_end = starts[j] + len(datas[j])
            overlap = bend - starts[j]
            if overlap > 0 and self.dup is None:
                self.dup = (starts[j], nxt_end if nxt_end < bend else bend)
            if nxt_end > bend:
                blk += datas[j][overlap:]
                self.nbytes -= overlap
                bend = nxt_end
            else:
                self.nbytes -= len(datas[j])
            self._forget(starts[j])
            del starts[j], datas[j]
        self._touch(starts[i])
        return self.nbytes - before

    def cost(self) -> int:
        """The bytes held plus `BLOCK_COST` a block: what the budget of `make_room` counts."""
        return self.nbytes + len(self.starts) * BLOCK_COST

    def make_room(self, start: int, n: int, budget: int) -> tuple[int, bool]:
        """Make room for ``n`` bytes at ``start`` within ``budget`` (Linux's tcp_prune_ofo_queue).

        Blocks above ``start`` are dropped, highest first (the data the peer would send last,
        and must send again anyway), until the charge is an eighth of the budget under it, so
        that a flood pays for a prune only now and then. Blocks below ``start`` are kept: they
        are nearer to filling the hole. Returns ``(blocks dropped, whether the bytes fit)``;
        when they do not, the caller drops the segment (TCPOFODrop).
        """
        starts, datas = self.starts, self.datas
        cost = self.nbytes + n + (len(starts) + 1) * BLOCK_COST  # as if a block of its own
        if cost <= budget:
            return 0, True
        goal = budget - (budget >> 3)
        pruned = 0
        while cost > goal and starts and starts[-1] > start:
            s = starts.pop()
            d = datas.pop()
            self.nbytes -= len(d)
            self._forget(s)
            cost -= len(d) + BLOCK_COST
            pruned += 1
        return pruned, cost <= budget

    def _touch(self, start: int) -> None:
        r = self.recent
        if r and r[0] == start:
            return
        try:
            r.remove(start)
        except ValueError:
            pass
        r.insert(0, start)
        if len(r) > 8:
            del r[8:]

    def _forget(self, start: int) -> None:
        try:
            self.recent.remove(start)
        except ValueError:
            pass

    def continues_recent(self, start: int) -> bool:
        """Whether bytes from ``start`` would grow (or fall in) the most recently changed block:
        the first SACK block of the next ACK then still says all the last ACK's first one did."""
        r = self.recent
        if not r:
            return False
        s = r[0]
        i = bisect_right(self.starts, s) - 1
        return i >= 0 and self.starts[i] == s and s <= start <= s + len(self.datas[i])

    def pop_ready(self, nxt: int) -> tuple[bytearray | None, int]:
        """Take the block that continues the stream at ``nxt``.

        Returns ``(bytes beyond nxt, new nxt)`` or ``(None, nxt)``. Blocks
        wholly below ``nxt`` (already delivered some other way) are dropped.
        """
        starts, datas = self.starts, self.datas
        while starts and starts[0] <= nxt:
            s = starts.pop(0)
            d = datas.pop(0)
            self.nbytes -= len(d)
            self._forget(s)
            end = s + len(d)
            if end > nxt:
                if s < nxt:
                    del d[: nxt - s]
                return d, end
        return None, nxt

    def blocks(self, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` SACK blocks, the most recently changed first (RFC 2018 §4)."""
        out = []
        starts, datas = self.starts, self.datas
        for s in self.recent:
            i = bisect_right(starts, s) - 1
            if i >= 0 and starts[i] == s:
                out.append((s, s + len(datas[i])))
                if len(out) == limit:
                    return out
        if len(out) < limit:
            have = {b[0] for b in out}
            for s, d in zip(reversed(starts), reversed(datas)):
                if s not in have:
                    out.append((s, s + len(d)))
                    if len(out) == limit:
                        break
        return out

    def clear(self) -> None:
        self.starts.clear()
        self.datas.clear()
        self.recent.clear()
        self.nbytes = 0


class _Empty(Reassembly):
    """A queue that stays empty, shared: see `EMPTY_REASSEMBLY`."""

    __slots__ = ()

    def __init__(self) -> None:
        self.starts = ()  # type: ignore[assignment]  # immutable: a write fails loudly
        self.datas = ()  # type: ignore[assignment]
        self.nbytes = 0
        self.recent = ()  # type: ignore[assignment]
        self.dup = None

    def add(self, start: int, data) -> int:
        raise TypeError("EMPTY_REASSEMBLY is shared: give the connection a Reassembly of its own first")

    def clear(self) -> None:
        pass


# What a connection holds while nothing waits out of order (nearly always): a shared empty
# queue, so an idle connection owns no queue and no three lists (issue 18, as EMPTY_SCOREBOARD).
EMPTY_REASSEMBLY: Reassembly = _Empty()
