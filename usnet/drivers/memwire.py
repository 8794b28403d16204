"""memwire: two drivers joined in memory, with a link's rate, delay, jitter and faults.

For tests and the demo: a link whose behaviour is seeded and reproducible.
Rate is serialisation (a frame of n bytes occupies the link n*8/rate s),
delay and jitter are propagation, and loss, duplication and reordering are
drawn from one seeded random generator per direction.

Two different limits bound what a direction holds. ``queue_limit`` is the
memory of the wire (every frame in flight, propagating or not): past it the
sender keeps its frames, as a full device ring pushes back. ``bottleneck``
is a router's queue in front of a rate-limited link: frames still waiting
for the transmitter (serialisation not finished); past it a frame is tail
dropped and counted in ``tail_drops``, the deep or shallow buffer TCP's
slow start and pacing are judged against. Its default, 0, is no such queue.
"""

from __future__ import annotations

import heapq
import os
import random
import time
from collections import deque
from collections.abc import Callable, Sequence

from usnet.drivers import block
from usnet.drivers.base import Capabilities, DriverStats, Frame, Received, random_mac
from usnet.drivers.block import FrameBlock

__all__ = ["MemWire", "MemWirePort"]


class _Direction:
    """One direction of the link: frames in flight, in arrival order."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.heap: list[tuple[float, int, bytes]] = []
        self.frames = 0  # in the heap, counting each frame of a FrameBlock
        self.seq = 0
        self.link_free = 0.0  # when the transmitter finishes the last frame
        self.backlog: deque[float] = deque()  # departure times of frames queued at the bottleneck


class MemWirePort:
    """One end of a memwire: a Driver."""

    # FrameBlocks cross the wire whole (usnet.drivers.block); a GatherFrame is
    # joined as it crosses: the wire is memory
    caps = Capabilities(takes_blocks=True, takes_gather=True)

    def __init__(self, wire: MemWire, side: int, name: str) -> None:
        self.wire = wire
        self.side = side
        self.name = name
        self.mtu = wire.mtu
        self.mac = random_mac()
        self.stats = DriverStats()
        self._bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.closed = False

    def fileno(self) -> int:
        return self._bell

    def send_batch(self, frames: Sequence[Frame]) -> int:
        return self.wire._send(self.side, frames)

    def recv_batch(self, max_n: int = 64) -> list[Received | FrameBlock]:
        """Frames, and FrameBlocks where the sender sent blocks; `max_n` counts items."""
        try:
            os.eventfd_read(self._bell)
        except BlockingIOError:
            pass
        return self.wire._recv(self.side, max_n)

    def timeout(self) -> float | None:
        return self.wire._next_due(self.side)

    def _ring(self) -> None:
        try:
            os.eventfd_write(self._bell, 1)
        except OSError:
            pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._bell)


class MemWire:
    """A link in memory between `a` and `b`."""

    def __init__(
        self,
        rate_bps: float = 0.0,
        delay: float = 0.0,
        jitter: float = 0.0,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        seed: int = 1,
        mtu: int = 1500,
        queue_limit: int = 10_000,
        bottleneck: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, p in (("loss", loss), ("duplicate", duplicate), ("reorder", reorder)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability, got {p}")
        if rate_bps < 0 or delay < 0 or jitter < 0 or bottleneck < 0:
            raise ValueError("rate, delay, jitter and bottleneck must not be negative")
        self.rate_bps = rate_bps
        self.delay = delay
        self.jitter = jitter
        self.loss = loss
        self.duplicate = duplicate
        self.reorder = reorder
        self.mtu = mtu
        self.queue_limit = queue_limit
        self.bottleneck = bottleneck  # frames waiting for a rate-limited transmitter; 0: unbounded
        self.clock = clock
        self._dir = [_Direction(seed), _Direction(seed + 1)]  # index: receiving side
        self.a = MemWirePort(self, 0, "memwire-a")
        self.b = MemWirePort(self, 1, "memwire-b")
        self.ports = (self.a, self.b)
        self.dropped = 0  # random loss
        self.tail_drops = 0  # frames that found the bottleneck queue full

    def _send(self, side: int, frames: Sequence[Frame]) -> int:
        src = self.ports[side]
        dst_side = 1 - side
        d = self._dir[dst_side]
        now = self.clock()
        rng = d.rng
        sent = 0
        ready = False
        simple = not (self.rate_bps or self.delay or self.jitter or self.loss or self.duplicate or self.reorder)
        if not simple and any(type(f) is FrameBlock for f in frames):
            # every frame meets the link's rate and faults on its own
            return self._send_expanded(side, frames)
        full = False
        for f in frames:
            if type(f) is FrameBlock:
                room = self.queue_limit - d.frames
                if room <= 0:
                    src.stats.tx_dropped += 1
                    break
                n = len(f.lens)
                if room < n:
                    f = f.rows(slice(0, room))  # the link's queue takes the head; the rest stay the caller's
                    src.stats.tx_dropped += 1
                    full = True
                    n = room
                sent += n
                # no frame is longer than its row: a block no wider than the link's largest frame needs
                # no look at its lengths (a reduction per block: per 32 datagrams at 1,000 flows)
                if f.data.shape[1] > self.mtu + 18 and int(f.lens.max()) > self.mtu + 18:
                    f = self._fit(f, src)
                    n = len(f.lens)
                src.stats.tx_frames += n
                src.stats.tx_bytes += f.nbytes()
                d.seq += 1
                d.frames += n
                d.heap.append((0.0, d.seq, f))
                ready = True
                if full:
                    break
                continue
            n = len(f)
            if n > self.mtu + 18:
                src.stats.tx_errors += 1
                sent += 1
                continue
            if d.frames >= self.queue_limit:
                src.stats.tx_dropped += 1
                break  # the link's queue is full: the rest stay the caller's
            sent += 1
            src.stats.tx_frames += 1
            src.stats.tx_bytes += n
            data = bytes(f)  # a GatherFrame too: joined here, the one copy a wire of memory makes
            if simple:
                d.seq += 1
                d.frames += 1
                d.heap.append((0.0, d.seq, data))  # all due at once: heap order is append order
                ready = True
                continue
            if self.loss and rng.random() < self.loss:
                self.dropped += 1
                continue
            copies = 2 if self.duplicate and rng.random() < self.duplicate else 1
            if self.rate_bps:
                if self.bottleneck:
                    q = d.backlog
                    while q and q[0] <= now:
                        q.popleft()
                    if len(q) >= self.bottleneck:
                        self.tail_drops += 1  # a router's tail drop: the sender never hears of it
                        continue
                d.link_free = max(d.link_free, now) + n * 8 / self.rate_bps
                depart = d.link_free
                if self.bottleneck:
                    d.backlog.append(depart)
            else:
                depart = now
            for _ in range(copies):
                arrive = depart + self.delay
                if self.jitter:
                    arrive += rng.uniform(0, self.jitter)
                if self.reorder and rng.random() < self.reorder:
                    arrive += max(self.delay, 0.001) + rng.uniform(0, 0.002)
                d.seq += 1
                d.frames += 1
                heapq.heappush(d.heap, (arrive, d.seq, data))
                ready = ready or arrive <= now
        if ready or d.heap:
            self.ports[dst_side]._ring()
        return sent

    def _send_expanded(self, side: int, items: Sequence) -> int:
        """Send blocks frame by frame, as an impaired link needs; returns frames taken."""
        taken = 0
        for item in items:
            frames = item.frames() if type(item) is FrameBlock else [item]
            done = self._send(side, frames)
            taken += done
            if done < len(frames):
                break
        return taken

    def _fit(self, f: FrameBlock, src: MemWirePort) -> FrameBlock:
        """Drop the frames of a block that exceed the MTU, as the device would."""
        ok = f.lens <= self.mtu + 18
        src.stats.tx_errors += int(len(ok) - ok.sum())
        return f.rows(ok)

    def _recv(self, side: int, max_n: int) -> list:
        d = self._dir[side]
        heap = d.heap
        if not heap:
            return []
        port = self.ports[side]
        if heap[0][0] == 0.0 and heap[-1][0] == 0.0:
            # the fast path of an ideal link: everything is due, in order
            out = [f for _, _, f in heap[:max_n]]
            del heap[:max_n]
        else:
            now = self.clock()
            out = []
            while heap and len(out) < max_n and heap[0][0] <= now:
                out.append(heapq.heappop(heap)[2])
        n = block.count(out)
        d.frames -= n
        port.stats.rx_frames += n
        port.stats.rx_bytes += sum(map(block.size, out))
        if heap and heap[0][0] <= self.clock():
            port._ring()
        return out

    def _next_due(self, side: int) -> float | None:
        heap = self._dir[side].heap
        if not heap:
            return None
        return max(0.0, heap[0][0] - self.clock())

    def close(self) -> None:
        self.a.close()
        self.b.close()
