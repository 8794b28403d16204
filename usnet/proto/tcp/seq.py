"""Sequence-number arithmetic modulo 2**32 (RFC 9293 §3.4, RFC 1982).

Sequence numbers wrap, so ``a < b`` means "a comes before b", decided by the
sign of the 32-bit difference: ``b`` is after ``a`` when it lies less than
2**31 ahead. Two numbers exactly 2**31 apart are ambiguous (RFC 1982 leaves
the case undefined); here each is "before" the other, as in the BSD and
Linux macros, and callers never let a window get that large.

The connection itself keeps *unwrapped* sequence numbers (plain Python ints
counted from the initial sequence number), so its hot path compares ints
directly and only `unwrap` and ``& MASK`` touch the wire form. This module is
the one place that arithmetic is written: `usnet.proto.tcp.connection` and
`usnet.proto.tcp.endpoint` call `unwrap`, `seq_diff` and `seq_lt` on wire
values (sequence numbers, timestamps) and import `MASK` for the ``& MASK``
that turns an unwrapped number back into its wire form.
"""

from __future__ import annotations

__all__ = [
    "HALF", "MASK", "seq_add", "seq_diff", "seq_ge", "seq_gt", "seq_in_window", "seq_le",
    "seq_lt", "seq_max", "seq_min", "unwrap",
]

MASK = 0xFFFFFFFF
HALF = 0x80000000


def seq_add(a: int, n: int) -> int:
    """``a + n`` on the 32-bit circle (``n`` may be negative)."""
    return (a + n) & MASK


def seq_diff(a: int, b: int) -> int:
    """The signed distance ``a - b`` in ``[-2**31, 2**31)``."""
    return ((a - b + HALF) & MASK) - HALF


def seq_lt(a: int, b: int) -> bool:
    return (a - b) & MASK >= HALF


def seq_le(a: int, b: int) -> bool:
    return a == b or (a - b) & MASK >= HALF


def seq_gt(a: int, b: int) -> bool:
    return (b - a) & MASK >= HALF


def seq_ge(a: int, b: int) -> bool:
    return a == b or (b - a) & MASK >= HALF


def seq_max(a: int, b: int) -> int:
    return b if seq_lt(a, b) else a


def seq_min(a: int, b: int) -> int:
    return a if seq_lt(a, b) else b


def seq_in_window(x: int, start: int, size: int) -> bool:
    """``start <= x < start + size`` on the circle (``0 <= size < 2**31``)."""
    return (x - start) & MASK < size


def unwrap(wire: int, base: int, ref: int) -> int:
    """The unwrapped number nearest ``ref`` whose wire form is ``wire``.

    Unwrapped numbers count from ``base`` (the initial sequence number, in
    wire form): unwrapped ``u`` is on the wire as ``(base + u) & MASK``.
    """
    return ref + ((((wire - base - ref) & MASK) + HALF) & MASK) - HALF
