"""A received datagram bigger than one packet: consecutive RX slots, each but the last flagged RX_MORE.

A flow's packets are `stride` bytes (2 KiB on a netif without offload), but
the flow switch puts IP fragments back together into datagrams of up to
65,535 bytes of IP payload. Rather than give every UDP flow packets that big
(32 times its arena), the switch copies such a datagram (the whole IP packet,
headers included) into as many packets as it needs, each full but the last,
publishes them on the RX ring in one push (all or none: the ring never holds
a part of one), and sets UMD flag `RX_MORE` on every one but the last; the
client joins them (usnet.client.datagram). A packet is still contiguous and
owned as one; only the ring says which packets make one datagram.

Sans-I/O: the arithmetic both ends share, and what the property tests check.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["CHAIN_MAX_BYTES", "chains", "max_slots", "piece_lengths"]

# The largest IP packet a chain carries: an IPv6 header and 65,535 bytes of payload (a UDP datagram
# of 65,527 bytes); IPv4's largest, 65,535 bytes in all, is smaller.
CHAIN_MAX_BYTES = 40 + 0xFFFF


def max_slots(stride: int) -> int:
    """The most slots a chain may take with packets of `stride` bytes (a longer one is malformed)."""
    return -(-CHAIN_MAX_BYTES // stride)


def piece_lengths(length: int, stride: int) -> list[int]:
    """The bytes in each slot of a `length`-byte packet: full slots, then the rest (at least one slot)."""
    full, rest = divmod(length, stride)
    return [stride] * full + ([rest] if rest or not full else [])


def chains(more: Sequence[bool]) -> tuple[list[tuple[int, int]], int]:
    """The slots of a receive batch grouped into datagrams: (start, end) ranges, each ending at a
    slot without `more`, and where the open tail starts (a chain whose rest is not in the batch:
    len(more) if none)."""
    out: list[tuple[int, int]] = []
    start = 0
    for i, m in enumerate(more):
        if not m:
            out.append((start, i + 1))
            start = i + 1
    return out, start
