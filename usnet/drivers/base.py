"""The driver interface every device and wrapper implements."""

from __future__ import annotations

import os
from typing import Protocol, Sequence, runtime_checkable

Frame = bytes | bytearray | memoryview


@runtime_checkable
class Driver(Protocol):
    """A device that moves Ethernet frames in batches.

    `recv_batch` returns frames the caller owns (bytes); `send_batch` takes
    frames and returns how many the device accepted (the rest stay the
    caller's, as with a full socket buffer).

    A driver whose `takes_blocks` is true also takes FrameBlocks
    (usnet.drivers.block) among the frames, counts each of their frames in
    what it returns (it may take the head of a block and leave the tail),
    and its `recv_batch` may return the blocks its peer sent.
    """

    name: str
    mtu: int

    def fileno(self) -> int: ...
    def recv_batch(self, max_n: int = 64) -> list[bytes]: ...
    def send_batch(self, frames: Sequence[Frame]) -> int: ...
    def timeout(self) -> float | None: ...
    def close(self) -> None: ...


def random_mac() -> bytes:
    """A random locally administered unicast MAC."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return bytes(b)


class DriverStats:
    """Counters kept by every driver (read by `usnet stats`)."""

    __slots__ = ("rx_frames", "rx_bytes", "tx_frames", "tx_bytes", "rx_errors", "tx_errors", "tx_dropped")

    def __init__(self) -> None:
        for k in self.__slots__:
            setattr(self, k, 0)

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}
