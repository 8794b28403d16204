"""User packet metadata (UMD): the per-packet record a client reads and writes.

One 32-byte record per packet, at `umd_offset + 32 * index` in the shared memfd:

    offset  0  u32 length       bytes of data in the packet
    offset  4  u16 headroom     where the data starts, from the start of the packet's buffer
    offset  6  u16 gso_size     0, or (flow TX) a TCP super-segment's segment payload for the device
    offset  8  u64 tag          the application's own: its id for the packet (a sequence number),
                                echoed in the packet's TX_STATUS event
    offset 16  u64 deadline_ns  (flow TX) 0, or CLOCK_MONOTONIC ns after which the packet must not
                                be sent: it is dropped and reported EXPIRED instead
    offset 24  u32 flags        (flow TX) TX_REPORT: post a TX_STATUS event when the packet is
                                sent, dropped, expired or flushed
    offset 28  u32 reserved

The nexus zeroes every field but `length` and `tag` when it hands a packet
out on an ALLOC ring, so a deadline or a flag never outlives the send it
was set for. A packet's buflets are fixed and contiguous: packet i's data
area is `buf_offset + i * buf_size * buflets`, `buf_size * buflets` bytes
long. A packet larger than one buflet (a 64 KiB packet over 2 KiB buflets)
therefore spans `ceil(length / buf_size)` consecutive buflets and reads as
one memoryview. The nexus never trusts a UMD record: it is client-writable memory.
"""

import time

__all__ = [
    "TX_REPORT", "UMD_SIZE", "UMD_WORDS", "W_DEADLINE", "W_FLAGS", "W_GSO", "W_LENGTH", "W_TAG", "deadline_passed",
]

UMD_SIZE = 32
UMD_WORDS = UMD_SIZE // 4  # u32 words per record
# u32 word indices within a record
W_LENGTH = 0
W_GSO = 1  # headroom in the low half, gso_size in the high half
W_TAG = 2  # u64: words 2 and 3
W_DEADLINE = 4  # u64: words 4 and 5
W_FLAGS = 6
TX_REPORT = 1  # flags bit: report this packet's fate on the EVENT ring


def deadline_passed(deadline_ns: int) -> bool:
    """Whether a packet's `deadline_ns` (0: none) is behind CLOCK_MONOTONIC: it must not be sent."""
    return bool(deadline_ns) and deadline_ns < time.monotonic_ns()
