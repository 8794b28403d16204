"""ICMP for IPv4 (RFC 792, RFC 1191): echo, destination unreachable.

The flow switch answers echo for the interface address and the stack sends
port-unreachable and fragmentation-needed errors (docs/architecture.md, "Nexuses", "The protocol stack"). Only the
8-byte header is interpreted; for echo the second word is (ident, seq), for
destination unreachable it is (unused, next-hop MTU), and `parse_icmp`
returns it as two 16-bit halves either way.

Layout (big-endian), the whole IP payload:

    0      1      2          4                 6                8
    | type | code | checksum | ident / unused  | seq / next-hop MTU | data ...

The checksum covers the whole ICMP message (no pseudo-header).
"""

from __future__ import annotations

import struct

from usnet.proto.wire.checksum import acc, acc_at, finish, verifies
from usnet.proto.wire.errors import WireError, readable

__all__ = [
    "DEST_UNREACH", "ECHO_REPLY", "ECHO_REQUEST", "FRAG_NEEDED", "HOST_UNREACH", "ICMP_HLEN",
    "NET_UNREACH", "PARAM_PROBLEM", "PORT_UNREACH", "PROTO_UNREACH", "SOURCE_QUENCH", "TIME_EXCEEDED",
    "build_dest_unreach", "build_echo", "build_icmp", "parse_icmp",
]

ICMP_HLEN = 8

ECHO_REPLY = 0
DEST_UNREACH = 3
SOURCE_QUENCH = 4
ECHO_REQUEST = 8
TIME_EXCEEDED = 11
PARAM_PROBLEM = 12

# DEST_UNREACH codes
NET_UNREACH = 0
HOST_UNREACH = 1
PROTO_UNREACH = 2
PORT_UNREACH = 3
FRAG_NEEDED = 4

_ICMP = struct.Struct("!BBHHH")
_unpack = _ICMP.unpack_from
_pack = _ICMP.pack


def parse_icmp(
    buf, off: int = 0, length: int | None = None, verify: bool = True
) -> tuple[int, int, int, int, int]:
    """Validate the ICMP message of ``length`` bytes at ``buf[off:]``.

    Returns ``(type, code, ident, seq, payload_offset)``, with
    ``payload_offset`` an absolute offset into ``buf`` (``off + 8``).
    """
    avail = readable(buf, off, length, ICMP_HLEN, "ICMP")
    typ, code, _csum, ident, seq = _unpack(buf, off)
    if verify and not verifies(acc_at(buf, off, off + avail)):
        raise WireError("ICMP: bad checksum")
    return typ, code, ident, seq, off + ICMP_HLEN


def build_icmp(typ: int, code: int, hi: int, lo: int, payload=b"") -> bytes:
    """An ICMP message whose second word is ``(hi, lo)``, with its checksum."""
    csum = finish(acc(payload) + (typ << 8) + code + hi + lo)
    try:
        return _pack(typ, code, csum, hi, lo) + payload
    except struct.error as e:
        raise WireError(f"ICMP: bad header field: {e}") from None


def build_echo(typ: int, ident: int, seq: int, payload=b"") -> bytes:
    """An echo request (``ECHO_REQUEST``) or reply (``ECHO_REPLY``) with its checksum."""
    return build_icmp(typ, 0, ident, seq, payload)


def build_dest_unreach(code: int, original_ip_packet, mtu: int = 0) -> bytes:
    """A destination-unreachable message quoting the offending datagram.

    The quote is the original IP header plus the first 8 bytes of its payload
    (RFC 792), enough for the sender to find the socket. ``mtu`` is the
    next-hop MTU for ``FRAG_NEEDED`` (RFC 1191); leave it 0 otherwise.
    """
    orig = original_ip_packet
    ihl = (orig[0] & 0xF) << 2 if len(orig) else 0
    if ihl < 20:
        ihl = 20
    return build_icmp(DEST_UNREACH, code, 0, mtu, bytes(orig[: ihl + 8]))
