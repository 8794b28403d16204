"""FrameBlock: a batch of frames in one two-dimensional array.

Why: in CPython a bytes object per frame costs about 100 ns to make and as
much again each time a loop walks it, which is most of the budget of a
small datagram. The flow switch therefore copies a whole transmit batch out
of a client's pool with one gather into one array, checks it column-wise,
and hands the array on; a driver that sets ``takes_blocks`` (memwire) carries
it to the receiving switch, which classifies it column-wise too and scatters
the rows into the owner's pool. Drivers that write frames one by one (TAP,
AF_PACKET, the pcap tracer) get ``frames()`` instead.

Row ``i`` holds frame ``i`` in ``data[i, :lens[i]]``; the bytes past its
length are undefined. The block owns its array: nothing else writes it.
``gso`` (None: no row is one) holds, for a TCP super-segment the flow switch
validated for a device that segments (`Capabilities.gso_max`), the payload
size the device cuts it at, and 0 for every other row: a driver that takes
blocks writes such a row with its segmentation request (the TAP's
virtio_net_hdr), and ``frames()`` makes it a `SegmentedFrame`.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import TypeVar, final

import numpy as np

from usnet.drivers.base import Frame, SegmentedFrame

__all__ = ["FrameBlock", "Item", "count", "expand", "has_blocks", "join_runs", "open_small", "size", "totals"]


@final  # `type(x) is FrameBlock` is how the hot paths tell a block from a frame
class FrameBlock:
    __slots__ = ("_nbytes", "data", "gso", "lens")

    def __init__(self, data: np.ndarray, lens: np.ndarray, gso: np.ndarray | None = None,
                 nbytes: int = -1) -> None:
        self.data = data
        self.lens = lens
        self.gso = gso
        self._nbytes = nbytes  # -1: not summed yet (a maker that knows it passes it)

    def __len__(self) -> int:
        return len(self.lens)

    def nbytes(self) -> int:
        """The frames' bytes, summed once: a block is asked four times on its way (the netif's
        queue and account, the wire's, the receiving netif's), and at 1,000 flows a block is one
        flow's batch of 32, so each sum was paid per 32 datagrams (issue 18). `lens` is never
        written after the block is made (`rows` makes a new block)."""
        n = self._nbytes
        if n < 0:
            n = self._nbytes = int(self.lens.sum())
        return n

    def frames(self) -> list[bytes]:
        """One bytes object per frame (for drivers that write frames one by one)."""
        w = self.data.shape[1]
        raw = self.data.tobytes()
        out: list[bytes] = [raw[i * w : i * w + n] for i, n in enumerate(self.lens.tolist())]
        if self.gso is not None:
            for i in np.flatnonzero(self.gso).tolist():
                out[i] = SegmentedFrame(out[i], int(self.gso[i]))
        return out

    def rows(self, sel: np.ndarray | slice) -> FrameBlock:
        return FrameBlock(self.data[sel], self.lens[sel], None if self.gso is None else self.gso[sel])


Item = Frame | FrameBlock
_F = TypeVar("_F")  # a kind of frame, which comes through as it came


def count(items: Sequence[Item]) -> int:
    """Frames in a list of frames and blocks (a loop, no generator: asked for every batch,
    mostly of one or two frames)."""
    n = len(items)
    for x in items:
        if type(x) is FrameBlock:
            n += len(x) - 1
    return n


def totals(items: Sequence[Item]) -> tuple[int, int]:
    """(frames, bytes) in a list of frames and blocks: `count` and the sum of `size` in one pass,
    as a netif queues every batch."""
    frames = nbytes = 0
    for x in items:
        if type(x) is FrameBlock:
            frames += len(x)
            nbytes += x.nbytes()
        else:
            frames += 1
            nbytes += len(x)
    return frames, nbytes


def has_blocks(items: Sequence[Item]) -> bool:
    """Whether any of `items` is a FrameBlock (a loop, no generator: asked for every receive batch)."""
    for x in items:  # noqa: SIM110 (no generator per batch)
        if type(x) is FrameBlock:
            return True
    return False


def size(item: Item) -> int:
    """Bytes in one frame or block."""
    return item.nbytes() if type(item) is FrameBlock else len(item)


def open_small(items: Sequence[_F | FrameBlock], max_rows: int) -> Sequence[_F | FrameBlock | bytes]:
    """`items` with every block of at most `max_rows` frames opened up, in order (`items` itself if none is).

    Why: classifying a block column-wise costs a fixed ~40 us of array calls
    whatever its size, a frame row by row ~2 us. A paced link hands the
    wire a frame or two per round, so its blocks arrive small.
    """
    if not any(type(x) is FrameBlock and len(x.lens) <= max_rows for x in items):
        return items
    out: list[_F | FrameBlock | bytes] = []
    for x in items:
        if type(x) is FrameBlock and len(x.lens) <= max_rows:
            out.extend(x.frames())
        else:
            out.append(x)
    return out


def join_runs(items: Sequence[_F | FrameBlock]) -> Sequence[_F | FrameBlock]:
    """`items` with each run of consecutive blocks joined into one block, in order (`items` itself
    if no two blocks are neighbours).

    Why: a sender of many flows hands the wire one block per flow per round,
    a few dozen frames each, and classifying a block column-wise costs its
    fixed ~40 us whatever its size: joined, a round costs it once. Narrower
    rows are padded; what is past a frame's length is never read.
    """
    if not any(type(a) is FrameBlock and type(b) is FrameBlock for a, b in pairwise(items)):
        return items
    out: list[_F | FrameBlock] = []
    run: list[FrameBlock] = []
    for x in [*items, None]:
        if type(x) is FrameBlock:
            run.append(x)
            continue
        if len(run) == 1:
            out.append(run[0])
        elif run:
            out.append(_join(run))
        run = []
        if x is not None:
            out.append(x)
    return out


def _join(run: list[FrameBlock]) -> FrameBlock:
    width = max(b.data.shape[1] for b in run)
    if all(b.data.shape[1] == width for b in run):
        data = np.concatenate([b.data for b in run])
    else:
        data = np.empty((sum(len(b.lens) for b in run), width), np.uint8)
        at = 0
        for b in run:
            data[at : at + len(b.lens), : b.data.shape[1]] = b.data
            at += len(b.lens)
    gso = None
    if any(b.gso is not None for b in run):
        gso = np.concatenate([np.zeros(len(b.lens), np.uint32) if b.gso is None else b.gso for b in run])
    return FrameBlock(data, np.concatenate([b.lens for b in run]), gso)


def expand(items: Sequence[Item]) -> list:
    """Frames only: blocks opened up, in order."""
    if not any(type(x) is FrameBlock for x in items):
        return list(items)
    out: list = []
    for x in items:
        if type(x) is FrameBlock:
            out.extend(x.frames())
        else:
            out.append(x)
    return out
