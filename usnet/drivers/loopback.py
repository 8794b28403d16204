"""The loopback device: no wire at all, what it is given to send it receives.

The domain's loopback netif ("lo", 127.0.0.1/8 and ::1, `Domain.add_loopback`)
runs on it. Every address on that netif is the domain's own, so the flow
switch hands what its flows send straight to the flow that owns the
destination (usnet.domain.switch.local) and nothing IP ever reaches this
device; it exists so that the netif has a device like any other (a MAC, an
MTU, a descriptor to wait on, counters), and whatever the switch does give
it (nothing, today) comes back as the kernel's loopback does.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence

from usnet.drivers.base import Capabilities, DriverStats, Frame, Received
from usnet.drivers.block import FrameBlock

__all__ = ["LoopbackDriver"]

MAX_QUEUED = 1024  # frames held for the receive side; past this a send takes no more (a full device)


class LoopbackDriver:
    """A device whose transmit is its own receive."""

    caps = Capabilities(never_due=True)  # `timeout()` is None: a send rings the eventfd

    def __init__(self, name: str = "lo", mtu: int = 1500) -> None:
        self.name = name
        self.mtu = mtu
        self.mac = b"\x00" * 6  # as the kernel's lo: no link-layer address to speak of
        self.stats = DriverStats()
        self._queue: deque[bytes] = deque()
        self._bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.closed = False

    def fileno(self) -> int:
        return self._bell

    def send_batch(self, frames: Sequence[Frame]) -> int:
        n = min(len(frames), MAX_QUEUED - len(self._queue))
        for f in frames[:n]:
            b = bytes(f)
            self._queue.append(b)
            self.stats.tx_frames += 1
            self.stats.tx_bytes += len(b)
        if n:
            os.eventfd_write(self._bell, 1)
        return n

    def recv_batch(self, max_n: int = 64) -> list[Received | FrameBlock]:
        try:
            os.eventfd_read(self._bell)
        except BlockingIOError:
            pass
        out: list[Received | FrameBlock] = []
        q = self._queue
        while q and len(out) < max_n:
            out.append(q.popleft())
        self.stats.rx_frames += len(out)
        self.stats.rx_bytes += sum(map(len, out))
        if q:
            os.eventfd_write(self._bell, 1)  # the rest on the next call
        return out

    def timeout(self) -> float | None:
        return None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._bell)
