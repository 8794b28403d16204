"""A fault injector around any driver: drop, corrupt, truncate, duplicate, or inject frames.

Seeded for reproducibility. `inject()` queues arbitrary frames to be received
as if they came off the wire, which is how the tests throw garbage at a netif.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from usnet.drivers import block
from usnet.drivers.base import Capabilities, Driver, Frame, Received

__all__ = ["FaultInjector"]


class FaultInjector:

    def __init__(
        self,
        inner: Driver,
        *,
        drop: float = 0.0,
        corrupt: float = 0.0,
        truncate: float = 0.0,
        duplicate: float = 0.0,
        direction: str = "rx",
        seed: int = 1,
    ) -> None:
        if direction not in ("rx", "tx", "both"):
            raise ValueError("direction is rx, tx or both")
        self.inner = inner
        self.name = f"fault({inner.name})"
        self.mtu = inner.mtu
        self.mac = inner.mac
        self.stats = inner.stats
        # the device's, but frames one by one: the netif opens FrameBlocks for us; and its
        # injected frames fall due without the fd (`timeout`), whatever the device's own say
        self.caps: Capabilities = replace(inner.caps, takes_blocks=False, never_due=False)
        self.drop, self.corrupt, self.truncate, self.duplicate = drop, corrupt, truncate, duplicate
        self.direction = direction
        self.rng = random.Random(seed)
        self.injected: deque[bytes] = deque()
        self.counts = {"dropped": 0, "corrupted": 0, "truncated": 0, "duplicated": 0, "injected": 0}

    def __getattr__(self, attr: str):
        return getattr(self.inner, attr)

    def fileno(self) -> int:
        return self.inner.fileno()

    def timeout(self) -> float | None:
        return 0.0 if self.injected else self.inner.timeout()

    def inject(self, frames: Sequence[bytes]) -> None:
        """Frames to be received next, before anything from the device."""
        self.injected.extend(frames)
        self.counts["injected"] += len(frames)

    def _mangle(self, frames: Sequence[Frame]) -> list[bytes]:
        out: list[bytes] = []
        rng = self.rng
        for f in frames:
            b = bytes(f)
            if self.drop and rng.random() < self.drop:
                self.counts["dropped"] += 1
                continue
            if self.corrupt and b and rng.random() < self.corrupt:
                ba = bytearray(b)
                for _ in range(1 + rng.randrange(4)):
                    ba[rng.randrange(len(ba))] ^= 1 << rng.randrange(8)
                b = bytes(ba)
                self.counts["corrupted"] += 1
            if self.truncate and b and rng.random() < self.truncate:
                b = b[: rng.randrange(len(b))]
                self.counts["truncated"] += 1
            out.append(b)
            if self.duplicate and rng.random() < self.duplicate:
                out.append(b)
                self.counts["duplicated"] += 1
        return out

    def recv_batch(self, max_n: int = 64) -> list[Received]:
        out: list[Received] = []
        while self.injected and len(out) < max_n:
            out.append(self.injected.popleft())
        if len(out) < max_n:
            got = block.expand(self.inner.recv_batch(max_n - len(out)))
            out += self._mangle(got) if self.direction in ("rx", "both") else got
        return out

    def send_batch(self, frames: Sequence[Frame]) -> int:
        if self.direction in ("tx", "both"):
            self.inner.send_batch(self._mangle(frames))
            return len(frames)
        return self.inner.send_batch(frames)

    def close(self) -> None:
        self.inner.close()
