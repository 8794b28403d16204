"""ICMPv6 (RFC 4443) and Neighbor Discovery messages (RFC 4861).

Like usnet.proto.wire.icmp, `parse_icmpv6` returns the second 32-bit word as two
16-bit halves ``(hi, lo)``: (ident, seq) for echo, the MTU as
``hi << 16 | lo`` for Packet Too Big, the pointer for Parameter Problem.
Unlike ICMPv4, the checksum covers the IPv6 pseudo-header (next header 58),
so parsers that verify and all builders take the source and destination
addresses. Every message handled here is at least 8 bytes long.

The Neighbor Discovery parsers (`parse_ns`, `parse_na`, `parse_rs`,
`parse_ra`) take the ICMPv6 message (from its type byte) whose checksum
`parse_icmpv6` already verified, and check what RFC 4861 §§6.1, 7.1 asks of
the message itself: code 0, minimum length, a unicast target, options of
non-zero length that fit. The IP-level checks (hop limit 255, source and
destination rules) are the caller's. Options come back as a list of
``(type, data)`` with ``data`` the option bytes after its 2-byte
type/length header (6 bytes for an Ethernet link-layer address option).

Layout of every message (big-endian):

    0      1      2          4                       8
    | type | code | checksum | hi (16)    | lo (16)  | body ...

Echo (128 request, 129 reply): hi = identifier, lo = sequence, body = data.
Errors (1 unreachable, 2 packet too big, 3 time exceeded, 4 parameter
problem): word = unused / MTU / unused / pointer, body = as much of the
invoking packet as fits in 1280 bytes.

Neighbor Solicitation (135) and Advertisement (136):

    0      1      2          4                      8        24
    | type | code | checksum | R|S|O| reserved (29)  | target | options ...
                               (NA only; 0 in NS)

Router Solicitation (133):   | 133 | 0 | checksum | reserved (4) | options ...
Router Advertisement (134):

    0      1      2          4           5        6            8              12           16
    | type | code | checksum | hop limit | M|O|.. | router life | reachable ms | retrans ms | options

Option (a multiple of 8 bytes): | type | length (8-byte units, > 0) | data ...
  1 source link-layer address, 2 target link-layer address: data = address
  3 prefix information (length 4):
      | prefix len | L|A|.. | valid (4) | preferred (4) | reserved (4) | prefix (16) |
  5 MTU (length 1): | reserved (2) | mtu (4) |
"""

from __future__ import annotations

import struct

from usnet.proto.wire.checksum import acc, acc_at, finish, verifies
from usnet.proto.wire.errors import WireError, readable
from usnet.proto.wire.ipv6 import ICMPV6, IPV6_HLEN, IPV6_MIN_MTU

__all__ = [
    "ADDR_UNREACH", "ADMIN_PROHIBITED", "DEST_UNREACH", "ECHO_REPLY", "ECHO_REQUEST", "ERRORS", "ICMPV6_HLEN",
    "NA_OVERRIDE", "NA_ROUTER", "NA_SOLICITED", "NEIGHBOR_ADVERT", "NEIGHBOR_SOLICIT", "NO_ROUTE", "OPT_MTU",
    "OPT_PREFIX_INFO", "OPT_SOURCE_LLADDR", "OPT_TARGET_LLADDR", "PACKET_TOO_BIG", "PARAM_PROBLEM", "PORT_UNREACH",
    "REDIRECT", "ROUTER_ADVERT", "ROUTER_SOLICIT", "TIME_EXCEEDED", "build_echo6", "build_error6", "build_icmpv6",
    "build_na", "build_nd_option", "build_ns", "build_packet_too_big", "build_ra", "build_rs", "find_option",
    "is_error6", "parse_icmpv6", "parse_mtu_option", "parse_na", "parse_nd_options", "parse_ns", "parse_prefix_info",
    "parse_ra", "parse_rs",
]

ICMPV6_HLEN = 8

# types
DEST_UNREACH = 1
PACKET_TOO_BIG = 2
TIME_EXCEEDED = 3
PARAM_PROBLEM = 4
ECHO_REQUEST = 128
ECHO_REPLY = 129
ROUTER_SOLICIT = 133
ROUTER_ADVERT = 134
NEIGHBOR_SOLICIT = 135
NEIGHBOR_ADVERT = 136
REDIRECT = 137
ERRORS = frozenset((DEST_UNREACH, PACKET_TOO_BIG, TIME_EXCEEDED, PARAM_PROBLEM))  # the error types RFC 4443 defines

# DEST_UNREACH codes
NO_ROUTE = 0
ADMIN_PROHIBITED = 1
BEYOND_SCOPE = 2
ADDR_UNREACH = 3
PORT_UNREACH = 4

# TIME_EXCEEDED codes
HOP_LIMIT_EXCEEDED = 0
REASSEMBLY_TIMEOUT = 1

# NA flags (the byte at offset 4)
NA_ROUTER = 0x80
NA_SOLICITED = 0x40
NA_OVERRIDE = 0x20

# RA flags (the byte at offset 5)
RA_MANAGED = 0x80
RA_OTHER = 0x40

# option types
OPT_SOURCE_LLADDR = 1
OPT_TARGET_LLADDR = 2
OPT_PREFIX_INFO = 3
OPT_REDIRECTED = 4
OPT_MTU = 5

# prefix information flags
PREFIX_ONLINK = 0x80
PREFIX_AUTONOMOUS = 0x40

# The most of the invoking packet an error may quote: 1280 - 40 (IPv6) - 8 (ICMPv6).
MAX_QUOTE = IPV6_MIN_MTU - IPV6_HLEN - ICMPV6_HLEN

_HDR = struct.Struct("!BBHHH")
_unpack = _HDR.unpack_from
_pack = _HDR.pack
_RA = struct.Struct("!BBHII")
_PREFIX = struct.Struct("!BBIIxxxx16s")
_MTU_OPT = struct.Struct("!xxI")
_from_bytes = int.from_bytes


def is_error6(typ: int) -> bool:
    """Error messages are types 0..127 (RFC 4443 §2.1)."""
    return typ < 128


def _pseudo(src, dst, length: int) -> int:
    if len(src) != 16 or len(dst) != 16:
        raise WireError("ICMPv6: addresses must be 16 bytes")
    return _from_bytes(src, "big") + _from_bytes(dst, "big") + length + ICMPV6


def parse_icmpv6(
    buf, off: int = 0, length: int | None = None, src: bytes | None = None,
    dst: bytes | None = None, verify: bool = True,
) -> tuple[int, int, int, int, int]:
    """Validate the ICMPv6 message of ``length`` bytes at ``buf[off:]``.

    Returns ``(type, code, hi, lo, body_offset)``, ``body_offset`` absolute in
    ``buf`` (``off + 8``). Verifying needs the IPv6 ``src`` and ``dst``.
    """
    avail = readable(buf, off, length, ICMPV6_HLEN, "ICMPv6")
    typ, code, _csum, hi, lo = _unpack(buf, off)
    if verify:
        if src is None or dst is None:
            raise WireError("ICMPv6: verifying needs the source and destination addresses")
        # the pseudo-header's sum is never zero: the next-header value is 58
        if not verifies(acc_at(buf, off, off + avail) + _pseudo(src, dst, avail)):
            raise WireError("ICMPv6: bad checksum")
    return typ, code, hi, lo, off + ICMPV6_HLEN


def build_icmpv6(typ: int, code: int, hi: int, lo: int, payload, src: bytes, dst: bytes) -> bytes:
    """An ICMPv6 message whose second word is ``(hi, lo)``, with its checksum."""
    n = acc(payload) + (typ << 8) + code + hi + lo + _pseudo(src, dst, ICMPV6_HLEN + len(payload))
    try:
        return _pack(typ, code, finish(n), hi, lo) + payload
    except struct.error as e:
        raise WireError(f"ICMPv6: bad header field: {e}") from None


def build_echo6(typ: int, ident: int, seq: int, payload, src: bytes, dst: bytes) -> bytes:
    """An echo request (128) or reply (129)."""
    return build_icmpv6(typ, 0, ident, seq, payload, src, dst)


def build_error6(
    typ: int, code: int, invoking_packet, src: bytes, dst: bytes, param: int = 0
) -> bytes:
    """An error message quoting as much of ``invoking_packet`` as fits in 1280 bytes.

    ``param`` is the 32-bit MTU (Packet Too Big) or pointer (Parameter Problem).
    """
    if not 0 <= param <= 0xFFFFFFFF:
        raise WireError(f"ICMPv6: parameter {param} out of range")
    return build_icmpv6(
        typ, code, param >> 16, param & 0xFFFF, bytes(invoking_packet[:MAX_QUOTE]), src, dst)


def build_packet_too_big(mtu: int, invoking_packet, src: bytes, dst: bytes) -> bytes:
    return build_error6(PACKET_TOO_BIG, 0, invoking_packet, src, dst, mtu)


# --------------------------------------------------------------------------- Neighbor Discovery


def build_nd_option(typ: int, data) -> bytes:
    """A TLV option, zero-padded to a multiple of 8 bytes."""
    ln = 2 + len(data)
    units = (ln + 7) >> 3
    if units > 255:
        raise WireError("ND: option too long")
    try:
        return bytes((typ, units)) + bytes(data) + bytes((units << 3) - ln)
    except ValueError as e:
        raise WireError(f"ND: bad option type: {e}") from None


def parse_nd_options(buf, off: int, end: int) -> list[tuple[int, bytes]]:
    """The options in ``buf[off:end]`` as ``[(type, data), ...]``; a zero length is malformed."""
    if off < 0 or end > len(buf) or off > end:
        raise WireError("ND: bad option bounds")
    out = []
    while off < end:
        if end - off < 2:
            raise WireError("ND: truncated option")
        typ = buf[off]
        ln = buf[off + 1] << 3
        if not ln:
            raise WireError("ND: option of length 0")
        if off + ln > end:
            raise WireError("ND: option runs past the message")
        out.append((typ, bytes(buf[off + 2 : off + ln])))
        off += ln
    return out


def find_option(options, typ: int, size: int | None = 6) -> bytes | None:
    """The data of the first option of type ``typ`` (its first ``size`` bytes), or None.

    With ``size=6`` this is an Ethernet address out of a link-layer address option.
    """
    for t, data in options:
        if t == typ:
            if size is None:
                return data
            return data[:size] if len(data) >= size else None
    return None


def _nd_bounds(buf, off: int, length: int | None, minimum: int, what: str) -> int:
    avail = readable(buf, off, length, minimum, what, f"message shorter than {minimum} bytes")
    if buf[off + 1] != 0:
        raise WireError(f"{what}: code {buf[off + 1]} is not 0")
    return off + avail


def _target(buf, off: int, what: str) -> bytes:
    t = bytes(buf[off + 8 : off + 24])
    if t[0] == 0xFF:
        raise WireError(f"{what}: multicast target")
    return t


def parse_ns(buf, off: int = 0, length: int | None = None) -> tuple[bytes, list[tuple[int, bytes]]]:
    """A Neighbor Solicitation: ``(target, options)``."""
    end = _nd_bounds(buf, off, length, 24, "NS")
    return _target(buf, off, "NS"), parse_nd_options(buf, off + 24, end)


def parse_na(
    buf, off: int = 0, length: int | None = None
) -> tuple[int, bytes, list[tuple[int, bytes]]]:
    """A Neighbor Advertisement: ``(flags, target, options)``.

    ``flags`` holds the NA_ROUTER, NA_SOLICITED and NA_OVERRIDE bits."""
    end = _nd_bounds(buf, off, length, 24, "NA")
    return buf[off + 4] & 0xE0, _target(buf, off, "NA"), parse_nd_options(buf, off + 24, end)


def parse_rs(buf, off: int = 0, length: int | None = None) -> list[tuple[int, bytes]]:
    """A Router Solicitation: its options."""
    end = _nd_bounds(buf, off, length, 8, "RS")
    return parse_nd_options(buf, off + 8, end)


def parse_ra(
    buf, off: int = 0, length: int | None = None
) -> tuple[int, int, int, int, int, list[tuple[int, bytes]]]:
    """A Router Advertisement:
    ``(cur_hop_limit, flags, router_lifetime, reachable_ms, retrans_ms, options)``."""
    end = _nd_bounds(buf, off, length, 16, "RA")
    hop, flags, life, reach, retrans = _RA.unpack_from(buf, off + 4)
    return hop, flags, life, reach, retrans, parse_nd_options(buf, off + 16, end)


def parse_prefix_info(data) -> tuple[int, int, int, int, bytes]:
    """Data of a prefix information option: ``(prefix_len, flags, valid, preferred, prefix)``."""
    if len(data) != 30:
        raise WireError("ND: prefix information option must be 32 bytes")
    return _PREFIX.unpack_from(data, 0)


def parse_mtu_option(data) -> int:
    if len(data) != 6:
        raise WireError("ND: MTU option must be 8 bytes")
    return _MTU_OPT.unpack_from(data, 0)[0]


def _lla(typ: int, lladdr) -> bytes:
    return b"" if lladdr is None else build_nd_option(typ, lladdr)


def _addr16(a, what: str) -> bytes:
    if len(a) != 16:
        raise WireError(f"{what} must be 16 bytes")
    return bytes(a)


def build_ns(src: bytes, dst: bytes, target: bytes, lladdr: bytes | None = None) -> bytes:
    """A Neighbor Solicitation for ``target``; ``lladdr`` becomes a source link-layer option.

    From the unspecified address (DAD) the option must be left out (RFC 4861 §7.2.2).
    """
    body = _addr16(target, "NS target") + _lla(OPT_SOURCE_LLADDR, lladdr)
    return build_icmpv6(NEIGHBOR_SOLICIT, 0, 0, 0, body, src, dst)


def build_na(
    src: bytes, dst: bytes, target: bytes, flags: int = NA_SOLICITED | NA_OVERRIDE,
    lladdr: bytes | None = None,
) -> bytes:
    """A Neighbor Advertisement; ``lladdr`` becomes a target link-layer option."""
    if flags & ~0xE0:
        raise WireError("NA: flags are NA_ROUTER, NA_SOLICITED, NA_OVERRIDE")
    body = _addr16(target, "NA target") + _lla(OPT_TARGET_LLADDR, lladdr)
    return build_icmpv6(NEIGHBOR_ADVERT, 0, flags << 8, 0, body, src, dst)


def build_rs(src: bytes, dst: bytes, lladdr: bytes | None = None) -> bytes:
    return build_icmpv6(ROUTER_SOLICIT, 0, 0, 0, _lla(OPT_SOURCE_LLADDR, lladdr), src, dst)


def build_ra(
    src: bytes, dst: bytes, cur_hop_limit: int = 64, flags: int = 0, router_lifetime: int = 1800,
    reachable_ms: int = 0, retrans_ms: int = 0, lladdr: bytes | None = None,
    mtu: int | None = None, prefixes=(),
) -> bytes:
    """A Router Advertisement.

    ``prefixes`` holds ``(prefix, prefix_len, flags, valid, preferred)`` tuples."""
    if not 0 <= flags <= 0xFF:
        raise WireError(f"RA: flags {flags} out of range")
    try:
        opts = [struct.pack("!II", reachable_ms, retrans_ms), _lla(OPT_SOURCE_LLADDR, lladdr)]
        if mtu is not None:
            opts.append(build_nd_option(OPT_MTU, _MTU_OPT.pack(mtu)))
        for prefix, plen, pflags, valid, preferred in prefixes:
            opts.append(build_nd_option(
                OPT_PREFIX_INFO,
                _PREFIX.pack(plen, pflags, valid, preferred, _addr16(prefix, "prefix"))))
        return build_icmpv6(
            ROUTER_ADVERT, 0, (cur_hop_limit << 8) | flags, router_lifetime, b"".join(opts),
            src, dst)
    except struct.error as e:
        raise WireError(f"RA: bad field: {e}") from None
