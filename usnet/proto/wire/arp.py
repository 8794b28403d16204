"""ARP for IPv4 over Ethernet (RFC 826).

The flow switch resolves next hops with it (docs/architecture.md, "Nexuses"). Only the one
combination used on Ethernet is accepted: any other hardware/protocol type
or address length is a WireError, so callers never see odd-sized addresses.

Layout (28 bytes, big-endian), after the Ethernet header:

    0      2      4    5    6    8     14    18    24    28
    | htype| ptype|hlen|plen| op | sha | spa | tha | tpa |
      =1    =0x800  =6   =4
"""

from __future__ import annotations

import struct

from usnet.proto.wire.errors import WireError

__all__ = ["ARP_LEN", "ARP_REPLY", "ARP_REQUEST", "build_arp", "parse_arp", "write_arp"]

ARP_LEN = 28
ARP_REQUEST = 1
ARP_REPLY = 2

_ARP = struct.Struct("!HHBBH6s4s6s4s")
_unpack = _ARP.unpack_from
_pack = _ARP.pack
_pack_into = _ARP.pack_into


def parse_arp(buf, off: int = 0) -> tuple[int, bytes, bytes, bytes, bytes]:
    """Return ``(op, sha, spa, tha, tpa)``; extra bytes (Ethernet padding) are ignored."""
    if off < 0 or len(buf) - off < ARP_LEN:
        raise WireError("truncated ARP packet")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _unpack(buf, off)
    if htype != 1:
        raise WireError(f"ARP hardware type {htype} is not Ethernet")
    if ptype != 0x0800:
        raise WireError(f"ARP protocol type {ptype:#06x} is not IPv4")
    if hlen != 6 or plen != 4:
        raise WireError(f"ARP address lengths {hlen}/{plen}, expected 6/4")
    return op, sha, spa, tha, tpa


def _check(sha, spa, tha, tpa) -> None:
    if len(sha) != 6 or len(tha) != 6:
        raise WireError("ARP hardware addresses must be 6 bytes")
    if len(spa) != 4 or len(tpa) != 4:
        raise WireError("ARP protocol addresses must be 4 bytes")


def build_arp(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    """The 28-byte ARP packet (no Ethernet header)."""
    _check(sha, spa, tha, tpa)
    try:
        return _pack(1, 0x0800, 6, 4, op, sha, spa, tha, tpa)
    except struct.error as e:
        raise WireError(f"bad ARP op: {e}") from None


def write_arp(buf, off: int, op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> int:
    """Write the ARP packet into ``buf`` at ``off``; return the bytes written (28)."""
    _check(sha, spa, tha, tpa)
    if off < 0 or len(buf) - off < ARP_LEN:
        raise WireError("buffer too small for ARP packet")
    try:
        _pack_into(buf, off, 1, 0x0800, 6, 4, op, sha, spa, tha, tpa)
    except struct.error as e:
        raise WireError(f"bad ARP op: {e}") from None
    return ARP_LEN
