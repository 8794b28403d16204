"""Fragment reassembly with bounded memory, for IPv4 and IPv6 (RFC 791/815, RFC 8200 §4.5,
RFC 5722), sans-I/O.

The flow switch reassembles every fragmented datagram addressed to its
netif before it classifies it (docs/architecture.md, "Data paths"), so the
flows and the client's IP layer only ever see whole datagrams. IPv4
fragments that overlap with identical bytes are merged; any conflicting
overlap drops the whole datagram. For IPv6 (``strict``) any overlap other
than an exact duplicate drops it. Memory is bounded per datagram, per
source and globally, in datagram count and per source; the timer starts
with the first fragment and is not refreshed.

Counter keys: frag_in, frag_dup, frag_bad, frag_conflict, frag_too_big,
frag_over_budget, frag_source_over_budget, frag_evicted, frag_no_memory,
frag_timeout, frag_reassembled.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter

__all__ = ["Reassembler"]

_FRAG_OVERHEAD = 64  # bytes charged per stored fragment piece, on top of its data
_DG_OVERHEAD = 256  # bytes charged per datagram in progress


class _Partial:
    __slots__ = ("key", "src", "starts", "frags", "have", "total", "nbytes", "deadline",
                 "first", "meta")

    def __init__(self, key, src, deadline):
        self.key = key
        self.src = src
        self.starts: list[int] = []
        self.frags: list[tuple[int, int, bytes]] = []  # sorted, non-overlapping
        self.have = 0
        self.total: int | None = None
        self.nbytes = _DG_OVERHEAD
        self.deadline = deadline
        self.first: bytes | None = None  # head of fragment zero, for Time Exceeded
        self.meta = None  # IPv6: next header from fragment zero


class Reassembler:
    """Fragment reassembly with bounded memory, shared by IPv4 and IPv6.

    Keys are opaque (the caller's: (4, src, dst, proto, ident) or (6, src,
    dst, ident)). Budgets: ``datagram_bytes`` per datagram and ``max_bytes``
    in all, each charging data plus a fixed overhead per piece and per
    datagram; at most ``max_datagrams`` in progress and ``per_source`` from
    one source. A new datagram beyond a count limit evicts the oldest of its
    source (if that source is at its limit) or the oldest overall; global
    memory pressure evicts the oldest others. So a flood of distinct ids from
    one source only churns that source's slots.

    Memory is bounded per source too (``source_bytes``, default a quarter of
    ``max_bytes``, as Linux's ipfrag_high_thresh but per source): a piece that
    would take its source past it evicts that source's oldest other datagram,
    and if none is left the datagram it belongs to is dropped
    (``frag_source_over_budget``). One source, however many ids it sends,
    cannot take the memory other sources' datagrams need.
    """

    def __init__(self, counters: Counter, timeout: float = 30.0, max_bytes: int = 1 << 20,
                 datagram_bytes: int = 128 << 10, max_datagrams: int = 64,
                 per_source: int = 16, source_bytes: int | None = None) -> None:
        self.c = counters
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.datagram_bytes = datagram_bytes
        self.max_datagrams = max_datagrams
        self.per_source = per_source
        self.source_bytes = max_bytes // 4 if source_bytes is None else source_bytes
        self.src_bytes: Counter = Counter()  # bytes charged per source
        self.table: dict = {}  # key -> _Partial, in creation order (== deadline order)
        self.per_src: Counter = Counter()
        self.bytes = 0

    def _drop(self, p: _Partial, reason: str) -> None:
        if self.table.pop(p.key, None) is None:
            return
        self.bytes -= p.nbytes
        left = self.src_bytes[p.src] - p.nbytes
        if left:
            self.src_bytes[p.src] = left
        else:
            del self.src_bytes[p.src]
        n = self.per_src[p.src] - 1
        if n:
            self.per_src[p.src] = n
        else:
            del self.per_src[p.src]
        self.c[reason] += 1

    def _evict_oldest(self, src=None, keep=None) -> bool:
        for p in self.table.values():
            if p is not keep and (src is None or p.src == src):
                self._drop(p, "frag_evicted")
                return True
        return False

    def add(self, key, src, offset: int, data, more: bool, now: float, strict: bool, limit: int,
            first=None, meta=None):
        """Add one fragment; returns ``(pieces, partial)`` when the datagram is complete.

        ``pieces`` are the data in order (join them, perhaps behind a header);
        ``limit`` is the largest end offset allowed; ``strict`` makes any
        non-duplicate overlap a conflict (IPv6). ``first``/``meta`` are kept
        from fragment zero.
        """
        c = self.c
        c["frag_in"] += 1
        ln = len(data)
        end = offset + ln
        if more and (ln & 7 or not ln):
            c["frag_bad"] += 1
            return None
        p = self.table.get(key)
        if end > limit:
            if p is not None:
                self._drop(p, "frag_too_big")
            else:
                c["frag_too_big"] += 1
            return None
        if p is None:
            if self.per_src[src] >= self.per_source:
                self._evict_oldest(src)
            elif len(self.table) >= self.max_datagrams:
                self._evict_oldest()
            p = _Partial(key, src, now + self.timeout)
            self.table[key] = p
            self.per_src[src] += 1
            self.bytes += p.nbytes
            self.src_bytes[src] += p.nbytes
        frags = p.frags
        if not more:
            if (p.total is not None and p.total != end) or (frags and frags[-1][1] > end):
                self._drop(p, "frag_conflict")
                return None
            p.total = end
        elif p.total is not None and end > p.total:
            self._drop(p, "frag_conflict")
            return None
        pieces = self._pieces(p, offset, end, data, strict) if ln else []
        if pieces is None:
            self._drop(p, "frag_conflict")
            return None
        if ln and not pieces:
            c["frag_dup"] += 1
        keep_first = first is not None and offset == 0 and p.first is None
        cost = sum(len(d) + _FRAG_OVERHEAD for _, _, d in pieces)
        if keep_first:
            cost += len(first)
        if cost:
            if p.nbytes + cost > self.datagram_bytes:
                self._drop(p, "frag_over_budget")
                return None
            while self.src_bytes[src] + cost > self.source_bytes:
                if not self._evict_oldest(src, keep=p):
                    self._drop(p, "frag_source_over_budget")
                    return None
            while self.bytes + cost > self.max_bytes:
                if not self._evict_oldest(keep=p):
                    self._drop(p, "frag_no_memory")
                    return None
            p.nbytes += cost
            self.bytes += cost
            self.src_bytes[src] += cost
        if keep_first:
            p.first = bytes(first)
            p.meta = meta
        starts = p.starts
        for piece in pieces:
            i = bisect_right(starts, piece[0])
            starts.insert(i, piece[0])
            frags.insert(i, piece)
            p.have += piece[1] - piece[0]
        if p.total is not None and p.have == p.total:
            self._drop(p, "frag_reassembled")
            return [d for _, _, d in frags], p
        return None

    @staticmethod
    def _pieces(p: _Partial, s: int, e: int, data, strict: bool):
        """The parts of [s, e) not held yet, as (start, end, bytes); None on a conflict."""
        frags = p.frags
        j = bisect_right(p.starts, s) - 1
        if j < 0:
            j = 0
        cur = s
        gaps = []
        n = len(frags)
        while j < n:
            fs, fe, fd = frags[j]
            if fs >= e:
                break
            if fe > s:
                if strict and (fs != s or fe != e):
                    return None
                lo = fs if fs > s else s
                hi = fe if fe < e else e
                if fd[lo - fs : hi - fs] != data[lo - s : hi - s]:
                    return None
                if lo > cur:
                    gaps.append((cur, lo))
                if hi > cur:
                    cur = hi
            j += 1
        if cur < e:
            gaps.append((cur, e))
        return [(a, b, bytes(data[a - s : b - s])) for a, b in gaps]

    def expire(self, now: float) -> list[_Partial]:
        """Drop and return the datagrams whose time is up."""
        out = []
        for p in self.table.values():
            if p.deadline > now:
                break
            out.append(p)
        for p in out:
            self._drop(p, "frag_timeout")
        return out

    def next_deadline(self) -> float | None:
        for p in self.table.values():
            return p.deadline
        return None
