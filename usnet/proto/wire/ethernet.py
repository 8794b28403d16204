"""Ethernet II framing.

The flow switch owns L2 (docs/architecture.md, "Nexuses"): it strips this header on receive and
writes it on transmit, so parse and write work on a buffer at an offset
(zero-copy into a packet buffer) and return plain tuples.

Layout (14 bytes, big-endian; no 802.1Q tag, no FCS):

    0         6         12          14
    | dst MAC | src MAC | ethertype | payload ...
"""

from __future__ import annotations

import struct

from usnet.proto.wire.errors import WireError
from usnet.proto.wire.header import Header

__all__ = [
    "BROADCAST",
    "ETHERTYPE_ARP",
    "ETHERTYPE_IPV4",
    "ETHERTYPE_IPV6",
    "ETHERTYPE_VLAN",
    "ETH_HEADER",
    "ETH_HLEN",
    "ETH_ZERO",
    "build_eth",
    "is_multicast",
    "mac_bytes",
    "mac_str",
    "parse_eth",
    "write_eth",
]

ETH_HLEN = 14
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100
ETHERTYPE_IPV6 = 0x86DD
BROADCAST = b"\xff" * 6
ETH_ZERO = b"\x00" * 6

#: The header, declared once: its struct and field offsets.
ETH_HEADER = Header(("dst", "6s"), ("src", "6s"), ("ethertype", "H"))
_ETH = ETH_HEADER.struct
_unpack = _ETH.unpack_from
_pack = _ETH.pack
_pack_into = _ETH.pack_into


def parse_eth(buf, off: int = 0) -> tuple[bytes, bytes, int]:
    """Return ``(dst, src, ethertype)`` of the frame at ``buf[off:]``; payload is at off+14."""
    if off < 0 or len(buf) - off < ETH_HLEN:
        raise WireError("truncated Ethernet header")
    return _unpack(buf, off)


def _check_macs(dst, src) -> None:
    if len(dst) != 6 or len(src) != 6:
        raise WireError("MAC addresses must be 6 bytes")


def build_eth(dst: bytes, src: bytes, ethertype: int) -> bytes:
    """The 14-byte header."""
    _check_macs(dst, src)
    try:
        return _pack(dst, src, ethertype)
    except struct.error as e:
        raise WireError(f"bad ethertype: {e}") from None


def write_eth(buf, off: int, dst: bytes, src: bytes, ethertype: int) -> int:
    """Write the header into ``buf`` at ``off``; return the bytes written (14)."""
    _check_macs(dst, src)
    if off < 0 or len(buf) - off < ETH_HLEN:
        raise WireError("buffer too small for Ethernet header")
    try:
        _pack_into(buf, off, dst, src, ethertype)
    except struct.error as e:
        raise WireError(f"bad ethertype: {e}") from None
    return ETH_HLEN


def is_multicast(mac: bytes) -> bool:
    """True for group addresses (broadcast included): the I/G bit of the first byte."""
    return bool(mac[0] & 1)


def mac_str(b: bytes) -> str:
    """``b"\\x02\\x00..."`` -> ``"02:00:00:00:00:01"``."""
    if len(b) != 6:
        raise WireError(f"MAC address must be 6 bytes, got {len(b)}")
    return bytes(b).hex(":")


def mac_bytes(s: str) -> bytes:
    """``"02:00:00:00:00:01"`` (or with ``-`` separators) -> 6 bytes."""
    parts = s.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and p.isascii() for p in parts):
        raise WireError(f"not a MAC address: {s!r}")
    try:
        return bytes.fromhex("".join(parts))
    except ValueError:
        raise WireError(f"not a MAC address: {s!r}") from None
