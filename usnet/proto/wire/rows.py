"""Many packets at once: a row per packet in a numpy uint8 array.

The per-batch data paths (flow switch, datagram sockets) keep a batch of
packets as the rows of one array and read header fields as columns
(`be_u16`, `be_u32`) and checksums per row (`row_sums`). Why the sums take
this shape: numpy sums native 32-bit words fastest, and no byte swapping is needed,
because modulo 0xFFFF

* a 32-bit word hi * 2**16 + lo is congruent to hi + lo (2**16 == 1), so the
  little-endian 32-bit words of a row sum to its little-endian 16-bit words;
* a big-endian 16-bit word is 256 times its little-endian reading (swapping
  the bytes of v multiplies it by 256), so the big-endian sum, the one the
  Internet checksum wants (RFC 1071), is 256 times the little-endian one.

Results are sums modulo 0xFFFF: 0 stands for both 0 and 0xFFFF, which is all
a check needs (a correct header or segment sums to a multiple of 0xFFFF).
"""

from __future__ import annotations

import numpy as np

__all__ = ["be_u16", "be_u32", "finish_rows", "padded_width", "row_sums"]


def padded_width(n: int) -> int:
    """The width, a multiple of 4, of rows that hold `n` bytes for `row_sums`."""
    return n + 3 & ~3


def row_sums(rows: np.ndarray) -> np.ndarray:
    """Per row of uint8 `rows` (width a multiple of 4), the big-endian 16-bit word sum mod 0xFFFF (int64)."""
    le = rows.view("<u4").sum(axis=1, dtype=np.uint64) % 0xFFFF
    return (le.astype(np.int64) << 8) % 0xFFFF


def finish_rows(sums: np.ndarray) -> np.ndarray:
    """Checksum field values of per-row sums modulo 0xFFFF (as `row_sums` gives), for rows
    whose accumulator is never zero: the column twin of usnet.proto.wire.checksum.finish
    (a sum of 0 there stands for 0xFFFF, whose checksum is 0)."""
    return np.where(sums == 0, 0, 0xFFFF - sums)


def be_u16(cols: np.ndarray) -> np.ndarray:
    """The big-endian 16-bit field in an (n, 2) column slice, per row, as int64 (room for arithmetic)."""
    return np.ascontiguousarray(cols).view(">u2")[:, 0].astype(np.int64)


def be_u32(cols: np.ndarray) -> np.ndarray:
    """The big-endian 32-bit field in an (n, 4) column slice, per row."""
    return np.ascontiguousarray(cols).view(">u4")[:, 0]
