"""A socket's IP marking: its TTL (hop limit) and TOS (traffic class) folded into one int.

Linux lets a socket choose the TTL (IP_TTL; IPV6_UNICAST_HOPS: the hop limit) and the TOS
octet (IP_TOS; IPV6_TCLASS: the traffic class) of its packets. usnet carries that choice
from the socket face to the IP header as one int, the *mark*, where the IP layer already
takes the TOS octet: the ``tos`` of `usnet.proto.ip.IpLayer.head`/``output`` and the fourth
item of `usnet.proto.tcp.endpoint.TcpEndpoint.outgoing`'s tuples (the ECN codepoint, which
the mark's TOS is ORed with once per connection, not per packet).

    bits 0-7   the TOS octet / traffic class (for TCP its two ECN bits are 0: TCP's own)
    bit  16    TTL_SET: bits 8-15 are the TTL / hop limit, else the IP layer's default

Why one int: a socket that never set an option has mark 0, so its packets take exactly the
path they took before (the ECN codepoint alone, 0..3), and the IP layer's per-destination
header template is keyed by the whole mark, so a TTL or TOS change can never be served a
header made for another: the cost of a mark is one template per value, built on a miss.
"""

from __future__ import annotations

__all__ = ["TTL_SET", "make_mark", "mark_tos", "mark_ttl"]

TTL_SET = 1 << 16


def make_mark(tos: int = 0, ttl: int | None = None) -> int:
    """The mark for a TOS octet and a TTL (None: the IP layer's default)."""
    if not 0 <= tos <= 0xFF:
        raise ValueError(f"TOS {tos} out of range")
    if ttl is None:
        return tos
    if not 0 <= ttl <= 0xFF:
        raise ValueError(f"TTL {ttl} out of range")
    return TTL_SET | (ttl << 8) | tos


def mark_tos(mark: int) -> int:
    """The TOS octet (traffic class) of a mark, ECN bits included."""
    return mark & 0xFF


def mark_ttl(mark: int, default: int) -> int:
    """The TTL (hop limit) of a mark, `default` where it sets none."""
    return (mark >> 8) & 0xFF if mark & TTL_SET else default
