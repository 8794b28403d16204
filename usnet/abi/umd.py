"""User packet metadata (UMD): the per-packet record a client reads and writes.

One record per packet (`UMD`, 32 bytes), at `umd_offset + UMD_SIZE * index`
in the shared memfd:

    length       bytes of data in the packet
    headroom     where the data starts, from the start of the packet's buffer
    gso_size     0, or (flow TX) a TCP super-segment's segment payload for the device
    tag          the application's own: its id for the packet (a sequence number),
                 echoed in the packet's TX_STATUS event
    deadline_ns  (flow TX) 0, or CLOCK_MONOTONIC ns after which the packet must not
                 be sent: it is dropped and reported EXPIRED instead
    flags        (flow TX) TX_REPORT: post a TX_STATUS event when the packet is
                 sent, dropped, expired or flushed; (flow RX, written by the switch
                 on every packet it delivers) RX_MORE: the next slot on the RX ring
                 continues this packet's bytes (a datagram bigger than one packet,
                 usnet.abi.rxchain)

Both sides read and write records through u32 views of the UMD region, with
the word indices below derived from the table.

The nexus zeroes every field but `length` and `tag` when it hands a packet
out on an ALLOC ring, so a deadline or a flag never outlives the send it
was set for. A packet's buflets are fixed and contiguous: packet i's data
area is `buf_offset + i * buf_size * buflets`, `buf_size * buflets` bytes
long. A packet larger than one buflet (a 64 KiB packet over 2 KiB buflets)
therefore spans `ceil(length / buf_size)` consecutive buflets and reads as
one memoryview. The nexus never trusts a UMD record: it is client-writable memory.
"""

import time

from usnet.abi.layout import RESERVED, Fields

__all__ = [
    "GSO_SHIFT", "RX_MORE", "TX_REPORT", "UMD", "UMD_SIZE", "UMD_WORDS", "W_DEADLINE", "W_FLAGS", "W_GSO", "W_LENGTH",
    "W_TAG", "deadline_passed",
]

UMD = Fields(
    "UMD record",
    ("length", "u32"), ("headroom", "u16"), ("gso_size", "u16"), ("tag", "u64"),
    ("deadline_ns", "u64"), ("flags", "u32"), (RESERVED, 4),
)
UMD_SIZE = UMD.size
UMD_WORDS = UMD_SIZE // 4  # u32 words per record
# u32 word indices within a record (a u64 field: its low word, the high one next)
W_LENGTH = UMD.word("length")
W_GSO, GSO_SHIFT = UMD.bit("gso_size")  # gso_size is `word >> GSO_SHIFT` (headroom the low half)
W_TAG = UMD.word("tag")
W_DEADLINE = UMD.word("deadline_ns")
W_FLAGS = UMD.word("flags")
if W_LENGTH != 0:  # the hot paths read a record's length as word `index * UMD_WORDS`
    raise ImportError("the UMD length must be the record's first word")
TX_REPORT = 1  # flags bit: report this packet's fate on the EVENT ring
RX_MORE = 2  # flags bit (flow RX, the switch's): the next RX slot continues this packet (usnet.abi.rxchain)


def deadline_passed(deadline_ns: int) -> bool:
    """Whether a packet's `deadline_ns` (0: none) is behind CLOCK_MONOTONIC: it must not be sent."""
    return bool(deadline_ns) and deadline_ns < time.monotonic_ns()
