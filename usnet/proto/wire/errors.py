"""The one exception every parser and builder in usnet.proto.wire raises.

Packets come from the network and from untrusted clients, so a malformed
packet is an ordinary event, not a bug: callers catch exactly one type,
`WireError`, and drop the packet. No parser lets IndexError or struct.error
escape. It subclasses ValueError so that bad arguments to the builders (a
5-byte MAC, a port of 70000) read naturally as value errors too.
"""

from __future__ import annotations

__all__ = ["WireError", "readable"]


class WireError(ValueError):
    """A packet (or a value destined for one) does not fit its wire format."""


def readable(buf, off: int, length: int | None, minimum: int, what: str,
             short: str = "truncated header") -> int:
    """How many bytes from `off` a parser may read: `length` if given, else the rest of `buf`.

    Every parser starts with these same checks, so they live here once: a
    `length` that runs past the buffer, a negative offset, or fewer than
    `minimum` bytes is a WireError naming the protocol (`what`).
    """
    avail = len(buf) - off
    if length is not None:
        if length < 0 or length > avail:
            raise WireError(f"{what}: length runs past the buffer")
        avail = length
    if off < 0 or avail < minimum:
        raise WireError(f"{what}: {short}")
    return avail
