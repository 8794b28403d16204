"""IPv6 headers (RFC 8200), extension headers, the pseudo-header, addresses.

`parse_ipv6` checks the fixed header (version, payload length against the
bytes present); `skip_ext_headers` walks Hop-by-Hop, Routing and Destination
Options headers up to the upper-layer header or a Fragment header. Options
inside Hop-by-Hop and Destination Options are checked only for their action
bits (RFC 8200 §4.2): an unrecognised option whose two high bits are not 00
makes the packet malformed (no ICMPv6 Parameter Problem is generated here).
Jumbograms (RFC 2675) are not supported: a payload length of 0 is an empty
payload.

Upper-layer checksums (ICMPv6, UDP, TCP over IPv6) cover the pseudo-header
of RFC 8200 §8.1. As in usnet.proto.wire.checksum, it enters the sum as plain ints
(`pseudo_sum_v6`): a 128-bit address is congruent modulo 0xFFFF to the sum
of its 16-bit words, so each address is added as one int. Unlike IPv4, a
UDP checksum of 0 is not allowed on IPv6; callers that compute 0 transmit
0xFFFF (``upper_checksum_v6`` already does).

Fixed header (40 bytes, big-endian):

    0                    4             6         7           8       24      40
    | ver|tclass|flow    | payload len | next hdr| hop limit | src   | dst   |
      4   8      20 bits

Generic extension header (Hop-by-Hop 0, Routing 43, Destination Options 60),
a multiple of 8 bytes:

    0          1                     2
    | next hdr | length (8-byte units, not counting the first 8) | data ...

Fragment header (44), 8 bytes:

    0          1          2                           4
    | next hdr | reserved | offset (13 bits) |res|M|  | identification (32) |

Pseudo-header (40 bytes, never built as bytes here):

    0     16    32                    36        39          40
    | src | dst | upper-layer length  | 0 0 0   | next hdr  |
"""

from __future__ import annotations

import ipaddress
import struct

from usnet.proto.wire.checksum import acc, acc_at, finish, verifies
from usnet.proto.wire.errors import WireError, readable
from usnet.proto.wire.header import Header

__all__ = [
    "ALL_NODES",
    "ALL_ROUTERS",
    "DSTOPTS",
    "FRAGMENT",
    "FRAG_HLEN",
    "HOPOPTS",
    "ICMPV6",
    "IPV6_HEADER",
    "IPV6_HLEN",
    "IPV6_MIN_MTU",
    "LOOPBACK6",
    "NO_NEXT",
    "ROUTING",
    "UNSPECIFIED",
    "V4_MAPPED_PREFIX",
    "build_frag_header",
    "build_ipv6_header",
    "ip6_bytes",
    "ip6_str",
    "is_link_local6",
    "is_multicast6",
    "link_local_from_mac",
    "martian_source6",
    "multicast_mac",
    "not_unicast6",
    "parse_frag_header",
    "parse_ipv6",
    "pseudo_sum_v6",
    "skip_ext_headers",
    "solicited_node",
    "upper_checksum_v6",
    "verify_upper_v6",
    "write_ipv6_header",
]

IPV6_HLEN = 40
FRAG_HLEN = 8
IPV6_MIN_MTU = 1280
IPV6_MAX_PAYLOAD = 0xFFFF

# next-header values
HOPOPTS = 0
TCP = 6
UDP = 17
ROUTING = 43
FRAGMENT = 44
ICMPV6 = 58
NO_NEXT = 59
DSTOPTS = 60

UNSPECIFIED = bytes(16)
ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
ALL_ROUTERS = bytes.fromhex("ff020000000000000000000000000002")
_SOLICITED_PREFIX = bytes.fromhex("ff0200000000000000000001ff")

#: The fixed header, declared once: its struct and field offsets.
IPV6_HEADER = Header(
    ("ver_tc_flow", "I"), ("payload_length", "H"), ("next_header", "B"), ("hop_limit", "B"),
    ("src", "16s"), ("dst", "16s"),
)
_IP6 = IPV6_HEADER.struct
_unpack = _IP6.unpack_from
_pack = _IP6.pack
_pack_into = _IP6.pack_into
_FRAG = struct.Struct("!BxHI")
_from_bytes = int.from_bytes

MAX_EXT_HEADERS = 16  # more than this in one packet is treated as malformed


def parse_ipv6(
    buf, off: int = 0, length: int | None = None
) -> tuple[int, int, int, int, int, bytes, bytes]:
    """Validate the fixed IPv6 header at ``buf[off:]`` and return its fields.

    ``length`` is the number of bytes available from ``off`` (default: to the
    end of ``buf``); bytes beyond the payload (link padding) are allowed.
    Returns ``(tclass, flow_label, payload_len, next_header, hop_limit, src,
    dst)``; the payload is ``buf[off + 40 : off + 40 + payload_len]``.
    """
    avail = readable(buf, off, length, IPV6_HLEN, "IPv6")
    vtf, plen, nh, hop, src, dst = _unpack(buf, off)
    if vtf >> 28 != 6:
        raise WireError(f"IPv6: version {vtf >> 28}")
    if IPV6_HLEN + plen > avail:
        raise WireError(
            f"IPv6: payload length {plen} exceeds the {avail - IPV6_HLEN} bytes present")
    return (vtf >> 20) & 0xFF, vtf & 0xFFFFF, plen, nh, hop, src, dst


def _fields(src, dst, payload_len, tclass, flow):
    if len(src) != 16 or len(dst) != 16:
        raise WireError("IPv6 addresses must be 16 bytes")
    if not 0 <= payload_len <= IPV6_MAX_PAYLOAD:
        raise WireError(f"IPv6: payload length {payload_len} out of range")
    if not 0 <= tclass <= 0xFF or not 0 <= flow <= 0xFFFFF:
        raise WireError("IPv6: traffic class or flow label out of range")
    return 0x60000000 | (tclass << 20) | flow


def build_ipv6_header(
    src: bytes, dst: bytes, next_header: int, payload_len: int, hop_limit: int = 64,
    tclass: int = 0, flow: int = 0,
) -> bytes:
    """The 40-byte fixed header (IPv6 has no header checksum)."""
    vtf = _fields(src, dst, payload_len, tclass, flow)
    try:
        return _pack(vtf, payload_len, next_header, hop_limit, src, dst)
    except struct.error as e:
        raise WireError(f"IPv6: bad header field: {e}") from None


def write_ipv6_header(
    buf, off: int, src: bytes, dst: bytes, next_header: int, payload_len: int,
    hop_limit: int = 64, tclass: int = 0, flow: int = 0,
) -> int:
    """Write the 40-byte fixed header into ``buf`` at ``off``; return 40."""
    vtf = _fields(src, dst, payload_len, tclass, flow)
    if off < 0 or len(buf) - off < IPV6_HLEN:
        raise WireError("buffer too small for IPv6 header")
    try:
        _pack_into(buf, off, vtf, payload_len, next_header, hop_limit, src, dst)
    except struct.error as e:
        raise WireError(f"IPv6: bad header field: {e}") from None
    return IPV6_HLEN


def parse_frag_header(buf, off: int, length: int | None = None) -> tuple[int, int, bool, int]:
    """The Fragment header at ``buf[off:]``: ``(next_header, offset_bytes, more, ident)``."""
    avail = len(buf) - off if length is None else length
    if off < 0 or avail < FRAG_HLEN or len(buf) - off < FRAG_HLEN:
        raise WireError("IPv6: truncated fragment header")
    nh, om, ident = _FRAG.unpack_from(buf, off)
    return nh, om & 0xFFF8, bool(om & 1), ident


def build_frag_header(next_header: int, offset: int, more: bool, ident: int) -> bytes:
    """An 8-byte Fragment header; ``offset`` in bytes, a multiple of 8."""
    if offset & 7 or not 0 <= offset <= 0xFFF8:
        raise WireError(f"IPv6: fragment offset {offset} is not a multiple of 8 in range")
    try:
        return _FRAG.pack(next_header, offset | (1 if more else 0), ident)
    except struct.error as e:
        raise WireError(f"IPv6: bad fragment header field: {e}") from None


def _check_options(buf, start: int, end: int) -> None:
    """TLV options of a Hop-by-Hop / Destination Options header (RFC 8200 §4.2)."""
    i = start
    while i < end:
        t = buf[i]
        if t == 0:  # Pad1
            i += 1
            continue
        if i + 2 > end:
            raise WireError("IPv6: truncated option")
        ln = buf[i + 1]
        if i + 2 + ln > end:
            raise WireError("IPv6: option runs past its header")
        if t != 1 and t >> 6:  # not PadN, and "discard" action for unrecognised options
            raise WireError(f"IPv6: unrecognised option {t:#x} requires discarding")
        i += 2 + ln


def skip_ext_headers(
    buf, off: int, end: int, next_header: int, first: bool = True
) -> tuple[int, int, tuple[int, int, bool, int] | None]:
    """Walk the extension headers in ``buf[off:end]`` starting with ``next_header``.

    Stops at the first header that is not Hop-by-Hop (0, only allowed when
    ``first``), Routing (43) or Destination Options (60), or right after a
    Fragment header (44). Returns ``(next_header, offset, frag)``: the
    upper-layer protocol (or the fragment header's next header) and where it
    starts; ``frag`` is ``(frag_header_off, offset_bytes, more, ident)`` when
    a Fragment header was met, else None. A Routing header with segments
    left is not processed (a host is not a router) and is treated as malformed.
    """
    if off < 0 or end > len(buf) or off > end:
        raise WireError("IPv6: bad extension header bounds")
    count = 0
    nh = next_header
    while True:
        if nh in (HOPOPTS, ROUTING, DSTOPTS):
            if nh == HOPOPTS and not (first and count == 0):
                raise WireError("IPv6: Hop-by-Hop header not first")
            if end - off < 8:
                raise WireError("IPv6: truncated extension header")
            hl = (buf[off + 1] + 1) << 3
            if off + hl > end:
                raise WireError("IPv6: extension header runs past the packet")
            if nh == ROUTING:
                if buf[off + 3]:  # segments left
                    raise WireError("IPv6: routing header with segments left")
            else:
                _check_options(buf, off + 2, off + hl)
            nh = buf[off]
            off += hl
        elif nh == FRAGMENT:
            fnh, foff, more, ident = parse_frag_header(buf, off, end - off)
            return fnh, off + FRAG_HLEN, (off, foff, more, ident)
        else:
            return nh, off, None
        count += 1
        if count > MAX_EXT_HEADERS:
            raise WireError("IPv6: too many extension headers")


def pseudo_sum_v6(src: bytes, dst: bytes, length: int, next_header: int) -> int:
    """Accumulator of the IPv6 pseudo-header (see usnet.proto.wire.checksum), from the fields."""
    if len(src) != 16 or len(dst) != 16:
        raise WireError("IPv6 addresses must be 16 bytes")
    return _from_bytes(src, "big") + _from_bytes(dst, "big") + length + next_header


def upper_checksum_v6(src: bytes, dst: bytes, next_header: int, segment) -> int:
    """Checksum field for an upper-layer ``segment`` whose checksum field is zero.

    A computed 0 is returned as 0xFFFF (required for UDP, harmless elsewhere:
    both are zero in one's complement).
    """
    n = acc(segment) + pseudo_sum_v6(src, dst, len(segment), next_header)  # > 0: next_header or length is non-zero
    return finish(n) or 0xFFFF


def verify_upper_v6(buf, off: int, length: int, src: bytes, dst: bytes, next_header: int) -> bool:
    """True if the upper-layer segment ``buf[off:off+length]`` carries a valid checksum."""
    if off < 0 or length < 0 or off + length > len(buf):
        raise WireError("IPv6: segment runs past the buffer")
    return verifies(acc_at(buf, off, off + length) + pseudo_sum_v6(src, dst, length, next_header))


# --------------------------------------------------------------------------- addresses


def ip6_bytes(s: str) -> bytes:
    """``"fe80::1"`` -> 16 bytes (no zone index, no embedded prefix length)."""
    if not isinstance(s, str) or "%" in s:
        raise WireError(f"not an IPv6 address: {s!r}")
    try:
        return ipaddress.IPv6Address(s).packed
    except (ValueError, TypeError):
        raise WireError(f"not an IPv6 address: {s!r}") from None


def ip6_str(b: bytes) -> str:
    """16 bytes -> the RFC 5952 text form."""
    if len(b) != 16:
        raise WireError(f"IPv6 address must be 16 bytes, got {len(b)}")
    return ipaddress.IPv6Address(bytes(b)).compressed


LOOPBACK6 = bytes(15) + b"\x01"
V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96
_NO_PEER = (UNSPECIFIED, LOOPBACK6)  # one tuple, not one per call


def martian_source6(src: bytes, own: frozenset[bytes] | set[bytes]) -> bool:
    """Whether `src` cannot be the source of a packet from the wire (as Linux's ip6_rcv_core).

    Multicast, loopback, an IPv4-mapped address (RFC 4291 §2.5.5.2: never on
    the wire), or one of our own addresses `own` (a LAND packet). The
    unspecified address is legitimate for Neighbour Discovery (duplicate
    address detection) only; the caller judges it by protocol.
    """
    return (src != UNSPECIFIED and not_unicast6(src)) or src in own


def is_multicast6(a: bytes) -> bool:
    return a[0] == 0xFF


def not_unicast6(a: bytes) -> bool:
    """Whether IPv6 address `a` is one no peer can have: unspecified, loopback, multicast, v4-mapped.

    A v4-mapped address (::ffff:0:0/96) is an IPv4 peer in an IPv6 socket's
    clothes, never an address on the wire (RFC 4291 §2.5.5.2). The netif's
    own addresses depend on the netif: its owner checks those.
    """
    return a in _NO_PEER or a[0] == 0xFF or a[:12] == V4_MAPPED_PREFIX


def is_link_local6(a: bytes) -> bool:
    """fe80::/10 unicast, or a link-local-scope multicast (ff02::/16)."""
    return (a[0] == 0xFE and a[1] & 0xC0 == 0x80) or (a[0] == 0xFF and a[1] & 0x0F == 2)


def solicited_node(a: bytes) -> bytes:
    """The solicited-node multicast address ff02::1:ffXX:XXXX of ``a`` (RFC 4291 §2.7.1)."""
    if len(a) != 16:
        raise WireError("IPv6 address must be 16 bytes")
    return _SOLICITED_PREFIX + bytes(a[13:16])


def multicast_mac(a: bytes) -> bytes:
    """The Ethernet address 33:33:xx:xx:xx:xx of an IPv6 multicast address (RFC 2464 §7)."""
    if len(a) != 16:
        raise WireError("IPv6 address must be 16 bytes")
    return b"\x33\x33" + bytes(a[12:16])


def link_local_from_mac(mac: bytes) -> bytes:
    """fe80::/64 with the modified EUI-64 interface identifier of ``mac`` (RFC 4291 App. A)."""
    if len(mac) != 6:
        raise WireError("MAC addresses must be 6 bytes")
    iid = bytes([mac[0] ^ 2]) + bytes(mac[1:3]) + b"\xff\xfe" + bytes(mac[3:6])
    return b"\xfe\x80" + bytes(6) + iid
