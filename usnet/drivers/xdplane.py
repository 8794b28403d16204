"""The low-latency lane: an XSK of its own whose UMEM is a low-latency flow's own pool (issue 19 item 3).

Why: the general XSK (usnet.drivers.xdp) receives into the driver's UMEM, and the flow switch
copies each packet from there into the owning channel's pool. For a flow of the low-latency
class that copy, the classification and the batch are the cost. A lane is a second AF_XDP
socket, bound to a queue of its own (`queue`: the NIC's flow rule or the veth peer sends the LL
flow's frames there), whose UMEM is registered on the domain's own mapping of the flow
channel's arena: the chunks the domain lends the kernel through the lane's fill ring ARE packet
buffers of the flow's pool, so the kernel writes a frame where the application reads it, and
the domain publishes the buffer's index on the flow's RX ring without touching the payload.

How a frame lands at the start of a packet buffer: the UMEM is registered in unaligned-chunk
mode (XDP_UMEM_UNALIGNED_CHUNK_FLAG), so a fill address may be any offset; the XDP program
strips the Ethernet header (bpf_xdp_adjust_head(ctx, 14)) before redirecting to the lane; in
copy mode the kernel writes the data at fill address + XDP_PACKET_HEADROOM. The fill address of
packet i is therefore `buf_offset + i * stride - XDP_PACKET_HEADROOM`: its IP header lands at
byte 0 of buffer i. The 256 bytes of headroom overlap the end of buffer i - 1 but nothing is
written there (copy mode copies only the data; the program adds no metadata). The RX ring's
address carries the data's offset in its top 16 bits (XSK_UNALIGNED_BUF_OFFSET_SHIFT), which
`poll` folds back into one offset into the arena.

Copy mode only: zero-copy (a NIC DMAing into the chunk) would write the headroom too. The lane
never transmits (its TX ring is absent); LL transmit has its own path (usnet.domain.switch.llpath).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import socket
import time
from typing import Any

import numpy as np

from usnet.drivers import xdp
from usnet.drivers.xdp import (
    _DESC,
    _MMAP_OFFSETS,
    _RING_OFFSET_FIELDS,
    _SOCKADDR_XDP,
    _UMEM_REG,
    AF_XDP,
    SOL_XDP,
    XDP_COPY,
    XDP_MMAP_OFFSETS,
    XDP_PACKET_HEADROOM,
    XDP_PGOFF_RX_RING,
    XDP_RING_NEED_WAKEUP,
    XDP_RX_RING,
    XDP_UMEM_COMPLETION_RING,
    XDP_UMEM_FILL_RING,
    XDP_UMEM_PGOFF_COMPLETION_RING,
    XDP_UMEM_PGOFF_FILL_RING,
    XDP_UMEM_REG,
    XDP_USE_NEED_WAKEUP,
    _libc,
    _put,
    _Ring,
)

__all__ = ["LANE_CHUNK", "XDP_UMEM_UNALIGNED_CHUNK_FLAG", "XdpLane"]

XDP_UMEM_UNALIGNED_CHUNK_FLAG = 1 << 0  # linux/if_xdp.h: xdp_umem_reg.flags
_OFFSET_SHIFT = 48  # XSK_UNALIGNED_BUF_OFFSET_SHIFT: an unaligned RX address's data offset
_ADDR_MASK = (1 << _OFFSET_SHIFT) - 1
LANE_CHUNK = 2048  # the chunk size: XDP_PACKET_HEADROOM and an IP packet of up to 1,792 bytes


class XdpLane:
    """One AF_XDP socket on `ifindex` queue `queue`, its UMEM the memory `mem` (module docstring).

    `mem` is a writable, page-aligned buffer (the domain's mapping of a flow channel's arena);
    `size` bytes of it from its start are registered (pinned). `ring` entries in the fill and
    RX rings (a power of two).
    """

    def __init__(self, ifindex: int, queue: int, mem: Any, size: int, ring: int = 64) -> None:
        self.ifindex, self.queue = ifindex, queue
        self.frame_room = LANE_CHUNK - XDP_PACKET_HEADROOM  # the longest packet the lane takes
        self.sock = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
        self._rings: list[_Ring] = []
        self._anchor: ctypes.c_char | None = None
        self.filled = 0   # chunks lent to the kernel and not yet back
        self.wakeups = 0
        try:
            self._setup(mem, size, ring)
        except BaseException:
            self.close()
            raise

    def _setup(self, mem: Any, size: int, ring: int) -> None:
        s = self.sock
        self._anchor = ctypes.c_char.from_buffer(mem)
        base = ctypes.addressof(self._anchor)
        if base % mmap.PAGESIZE:
            raise ValueError("a lane's memory must start on a page")
        size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
        self.size = size
        s.setsockopt(SOL_XDP, XDP_UMEM_REG, _UMEM_REG.pack(base, size, LANE_CHUNK, 0,
                                                         XDP_UMEM_UNALIGNED_CHUNK_FLAG, 0))
        for opt in (XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_RX_RING):
            s.setsockopt(SOL_XDP, opt, ring)
        raw = _MMAP_OFFSETS.unpack(s.getsockopt(SOL_XDP, XDP_MMAP_OFFSETS, _MMAP_OFFSETS.size))
        off = {r: dict(zip(_RING_OFFSET_FIELDS, raw[4 * i:4 * i + 4])) for i, r in enumerate(("rx", "tx", "fr", "cr"))}
        self._rx = _Ring(s, XDP_PGOFF_RX_RING, off["rx"], ring, _DESC)
        self._fill = _Ring(s, XDP_UMEM_PGOFF_FILL_RING, off["fr"], ring, np.uint64)
        self._comp = _Ring(s, XDP_UMEM_PGOFF_COMPLETION_RING, off["cr"], ring, np.uint64)
        self._rings = [self._rx, self._fill, self._comp]
        self.ring = ring
        self._fill_prod = self._rx_cons = 0
        addr = _SOCKADDR_XDP.pack(AF_XDP, XDP_COPY | XDP_USE_NEED_WAKEUP, self.ifindex, self.queue, 0)
        buf = ctypes.create_string_buffer(addr, len(addr))
        deadline = time.monotonic() + 1.0  # EBUSY: the queue's previous pool is freed from a workqueue
        while _libc.bind(s.fileno(), buf, len(addr)) != 0:
            err = ctypes.get_errno()
            if err != errno.EBUSY or time.monotonic() > deadline:
                raise OSError(err, f"bind the LL lane to queue {self.queue}: {os.strerror(err)}")
            time.sleep(0.01)
        s.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def room(self) -> int:
        """How many more chunks the fill ring takes."""
        return self.ring - self.filled

    def fill(self, offsets: np.ndarray) -> None:
        """Lend the kernel the packet buffers at `offsets` (into the memory) to receive into.

        The caller owns them until `poll` hands them back: they are the flow's pool's packets
        the domain took for the lane."""
        n = len(offsets)
        if not n:
            return
        if n > self.room():
            raise ValueError("the lane's fill ring is full")
        addrs = np.asarray(offsets, np.uint64) - np.uint64(XDP_PACKET_HEADROOM)
        _put(self._fill, self._fill_prod, addrs)
        self._fill_prod = (self._fill_prod + n) & 0xFFFFFFFF
        self._fill.producer[0] = self._fill_prod
        self.filled += n
        if self._fill.flags[0] & XDP_RING_NEED_WAKEUP:
            self.wakeups += 1
            with contextlib.suppress(BlockingIOError, InterruptedError):
                self.sock.recv(0, socket.MSG_DONTWAIT)

    def poll(self, max_n: int = 64) -> tuple[list[int], list[int]]:
        """(offsets, lengths) of the packets received: where in the memory each one's data starts."""
        rx = self._rx
        cons = self._rx_cons
        n = min((int(rx.producer[0]) - cons) & 0xFFFFFFFF, max_n)
        if n <= 0:
            return [], []
        offs: list[int] = []
        lens: list[int] = []
        at = cons & rx.mask
        left = n
        while left:
            k = min(left, rx.size - at)
            d = rx.desc[at:at + k]
            for a, ln in zip(d["addr"].tolist(), d["len"].tolist()):
                offs.append((a & _ADDR_MASK) + (a >> _OFFSET_SHIFT))
                lens.append(ln)
            at = 0
            left -= k
        self._rx_cons = (cons + n) & 0xFFFFFFFF
        rx.consumer[0] = self._rx_cons
        self.filled -= n
        return offs, lens

    def stats(self) -> dict[str, int]:
        """The socket's kernel counters (XDP_STATISTICS)."""
        if self.sock.fileno() < 0:
            return {}
        raw = self.sock.getsockopt(SOL_XDP, xdp.XDP_STATISTICS, xdp._STATS.size)
        return dict(zip(xdp._STATS_FIELDS, xdp._STATS.unpack(raw)))

    def close(self) -> None:
        """Unbind and unpin: after this the memory may be unmapped."""
        for r in self._rings:
            r.close()
        self._rings = []
        if self.sock.fileno() >= 0:
            self.sock.close()  # releases the UMEM registration (the pages are unpinned)
        self._anchor = None
