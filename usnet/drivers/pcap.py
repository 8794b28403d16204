"""A pcap tracer around any driver: every frame in and out, in a file Wireshark reads.

Classic pcap (not pcapng): a 24-byte global header, then per frame a 16-byte
record header (seconds, microseconds, captured length, original length) and
the frame. Link type 1 (Ethernet). Little-endian, magic 0xa1b2c3d4.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import BinaryIO

from usnet.drivers import block
from usnet.drivers.base import Capabilities, Driver, Frame, Received

__all__ = ["PcapTracer", "PcapWriter"]

GLOBAL_HEADER = struct.Struct("<IHHiIII")
RECORD_HEADER = struct.Struct("<IIII")
MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1


class PcapWriter:
    """Writes frames to a pcap file."""

    def __init__(self, out: BinaryIO | str, snaplen: int = 65535) -> None:
        self._own = isinstance(out, str)
        # opened here, closed by close(): the writer outlives any with-block in __init__
        self.f: BinaryIO = open(out, "wb") if isinstance(out, str) else out  # noqa: SIM115
        self.snaplen = snaplen
        self.f.write(GLOBAL_HEADER.pack(MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        self.frames = 0

    def write(self, frame: Frame, ts: float | None = None) -> None:
        ts = time.time() if ts is None else ts
        sec = int(ts)
        usec = int((ts - sec) * 1_000_000)
        n = len(frame)
        cap = min(n, self.snaplen)
        self.f.write(RECORD_HEADER.pack(sec, usec, cap, n))
        self.f.write(bytes(frame[:cap]))
        self.frames += 1

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.flush()
        if self._own:
            self.f.close()


class PcapTracer:
    """A driver wrapper that records what passes through it."""


    def __init__(self, inner: Driver, out: BinaryIO | str) -> None:
        self.inner = inner
        self.name = f"pcap({inner.name})"
        self.mtu = inner.mtu
        self.mac = inner.mac
        self.stats = inner.stats
        # the device's, but frames one by one: the netif opens FrameBlocks for us
        self.caps: Capabilities = replace(inner.caps, takes_blocks=False)
        self.writer = PcapWriter(out)

    def __getattr__(self, attr: str):  # mac, stats and the like come from the device
        return getattr(self.inner, attr)

    def fileno(self) -> int:
        return self.inner.fileno()

    def timeout(self) -> float | None:
        return self.inner.timeout()

    def recv_batch(self, max_n: int = 64) -> list[Received]:
        frames = block.expand(self.inner.recv_batch(max_n))
        for f in frames:
            self.writer.write(f)
        return frames

    def send_batch(self, frames: Sequence[Frame]) -> int:
        n = self.inner.send_batch(frames)
        for f in frames[:n]:
            self.writer.write(f)
        return n

    def close(self) -> None:
        self.writer.close()
        self.inner.close()
