"""A FIFO of bytes for TCP's send and receive buffers: a ring that never reallocates in place.

Why not a bare bytearray (``q += data; del q[:n]``): CPython deletes from
the front of a bytearray by moving its start, but the next append that
needs more room then copies the *whole* live content into a newly allocated
block (``PyByteArray_Resize`` with a logical offset), and a front deletion
that leaves less than half the block copies it too. A bulk sender's queue is
a few megabytes topped up by 64 KB whenever an ACK frees room, so every
top-up copied all of it, into fresh memory whose pages the kernel then had to
fault in and zero (about one minor fault per 4 KB page sent).

Here the bytes live in one block used as a ring: `append` writes into the
free part (in two pieces across the end), `drop` moves the head, and the
block is replaced by a bigger one only when the live bytes outgrow it
(doubling, so at most one extra copy per byte over a queue's life). Its
pages are faulted in once.

`view` reads live bytes in place, as a memoryview of the block, except for
a range that crosses the end of the ring (one in every ring's worth of
segments), which comes back as bytes. A view stays a view of the bytes it
was taken of until they are dropped: after `drop`, a later `append` may
write over them, so a holder copies or finishes with a view before the
owner drops its bytes.

A queue that drains gives up its view of the block (a memoryview and the
buffer object behind it, two objects the cyclic GC walks at every full
collection, for every idle connection: issue 18). The block itself (a
bytearray or a numpy array, neither of which the GC tracks) is kept for the next append to view
again (~0.1 us); freeing a drained 4 KiB block too would save 4 KiB an idle
queue but cost a new block (~0.5 us) each time a request or answer drains.

A block of `_LAZY_MIN` bytes or more is not zeroed (issue 18): ``bytearray(n)``
writes n zero bytes, so each doubling of a bulk queue (4 KiB to 8 MiB: 16 MiB in
all) faulted in and wrote every page of the new block up front, the half the
queue may never reach too. An uninitialised block (``numpy.empty``: malloc, no
memset) is faulted in page by page as the ring first writes there, and a block
glibc hands back from a freed one costs no fault at all. The queue never reads
a byte it did not write, so what the block held before is never seen.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ByteQueue"]

_MIN_BLOCK = 1 << 12
_LAZY_MIN = 1 << 16  # from here a block is left unzeroed (module docstring); below, a bytearray is cheaper
_U8 = np.uint8
_empty = np.empty


def _block(cap: int) -> memoryview:
    """A block of `cap` bytes for the ring: zeroed only when small (module docstring)."""
    if cap < _LAZY_MIN:
        return memoryview(bytearray(cap))
    return _empty(cap, _U8).data  # a 1-D memoryview of bytes, as bytearray's


def _bytes_view(data) -> memoryview:
    mv = memoryview(data)
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    return mv


# The block of every empty queue that never held a byte: shared, never written (capacity 0, so
# the first `append` grows first), so a new connection's two queues make no view or buffer each.
_NO_BLOCK = memoryview(bytearray())


class ByteQueue:
    """Bytes in order; ``len`` is the live count, `view(a, b)` reads ``[a, b)`` of them in place.

    `size` is that count as a plain attribute (read it, never set it): TCP reads its buffers'
    lengths some fifteen times a request, and ``len(q)`` is a Python call through `__len__`
    each time where ``q.size`` is an attribute read."""

    __slots__ = ("_mv", "_buf", "_spare", "_cap", "_head", "size")

    def __init__(self) -> None:
        self._mv = _NO_BLOCK
        self._buf: bytearray | None = None  # a drained queue's block, kept without a view
        self._spare = 0  # its size (0 without one)
        self._cap = 0
        self._head = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    @property
    def capacity(self) -> int:
        """The block's size: the most bytes the queue holds before it needs a bigger one."""
        return self._cap if self._buf is None else self._spare

    def _grow(self, need: int) -> None:
        """A bigger block (the kept one of a drained queue, when `append` could not reuse it, is
        the base of the doubling)."""
        if self._buf is not None:
            self._buf = None
            self._cap = self._spare
            self._spare = 0
        cap = self._cap * 2
        if cap < need:
            cap = need
        if cap < _MIN_BLOCK:
            cap = _MIN_BLOCK
        new = _block(cap)
        n = self.size
        if n:
            self._copy_out(new, 0, n)
        self._mv = new
        self._cap = cap
        self._head = 0

    def append(self, data) -> None:
        """Add ``data`` (any bytes-like object) at the end."""
        t = type(data)
        if t is bytes:
            mv = data  # a slice of the block takes bytes as they are
        elif t is memoryview and data.ndim == 1 and data.itemsize == 1:
            mv = data  # a received payload: a view of the packet already
        else:
            mv = _bytes_view(data)
        n = len(mv)
        if not n:
            return
        size = self.size
        if size + n > self._cap:
            buf = self._buf
            if buf is not None and n <= self._spare:
                # drained earlier (so empty): its block, viewed again, in line (a request's
                # first bytes and an answer's come here, every request: `drop` drained them)
                self._buf = None
                self._mv = memoryview(buf)
                self._cap = self._spare
                self._spare = 0
                self._head = 0
            else:
                self._grow(size + n)
        cap = self._cap
        tail = self._head + size
        if tail >= cap:
            tail -= cap
        first = cap - tail
        if n <= first:
            self._mv[tail : tail + n] = mv
        else:
            self._mv[tail:] = mv[:first]
            self._mv[: n - first] = mv[first:]
        self.size = size + n

    def view(self, start: int, end: int) -> memoryview | bytes:
        """The live bytes ``[start, end)``: in place, or as bytes across the ring's end."""
        cap = self._cap
        a = self._head + start
        if a >= cap:
            a -= cap
        b = a + (end - start)
        if b <= cap:
            return self._mv[a:b]
        return b"".join((self._mv[a:], self._mv[: b - cap]))

    def _copy_out(self, dst: memoryview, start: int, n: int) -> None:
        cap = self._cap
        a = self._head + start
        if a >= cap:
            a -= cap
        first = cap - a
        if n <= first:
            dst[:n] = self._mv[a : a + n]
        else:
            dst[:first] = self._mv[a:]
            dst[first:n] = self._mv[: n - first]

    def read_into(self, buf, n: int) -> None:
        """Copy the first ``n`` live bytes into ``buf`` (a writable bytes-like object), left queued."""
        self._copy_out(_bytes_view(buf), 0, n)

    def take(self, n: int) -> bytes:
        """The first ``n`` live bytes as bytes (a copy), left queued."""
        if n > self.size:
            n = self.size
        v = self.view(0, n)
        return v if type(v) is bytes else bytes(v)

    def drop(self, n: int) -> None:
        """Forget the first ``n`` live bytes (at most ``len(self)``)."""
        left = self.size - n
        if left <= 0:  # drained: the view goes; the block stays, unviewed, for the next append
            cap = self._cap
            if cap:
                self._buf = self._mv.obj  # type: ignore[assignment]  # the block `_grow` made (a bytearray or array)
                self._spare = cap
            self._mv = _NO_BLOCK
            self._cap = 0
            self._head = 0
            self.size = 0
            return
        h = self._head + n
        if h >= self._cap:
            h -= self._cap
        self._head = h
        self.size = left

    def clear(self) -> None:
        """Forget every byte; the block goes too (a failed or closed connection's memory)."""
        self._mv = _NO_BLOCK
        self._buf = None
        self._spare = 0
        self._cap = 0
        self._head = 0
        self.size = 0
