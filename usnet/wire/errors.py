"""The one exception every parser and builder in usnet.wire raises.

Packets come from the network and from untrusted clients, so a malformed
packet is an ordinary event, not a bug: callers catch exactly one type,
`WireError`, and drop the packet. No parser lets IndexError or struct.error
escape. It subclasses ValueError so that bad arguments to the builders (a
5-byte MAC, a port of 70000) read naturally as value errors too.
"""

from __future__ import annotations

__all__ = ["WireError"]


class WireError(ValueError):
    """A packet (or a value destined for one) does not fit its wire format."""
