"""IPv4 headers (RFC 791).

Every packet a client hands the flow switch is an IPv4 packet, and the
switch validates the copy it made (docs/architecture.md, "Packet pools", "Nexuses"), so `parse_ipv4` checks
everything the rest of the stack relies on — version, header length, total
length against the bytes actually present, and the header checksum — and
says which check failed. Options are skipped by ``ihl_bytes``; `ipv4_source_route`
looks for the source routes a host drops.

The builders compute the header checksum arithmetically from the field
values (see usnet.proto.wire.checksum) and pack the header with a single
precompiled struct call.

Layout (20 bytes without options, big-endian):

    0        1      2            4       6              8     9       10        12    16    20
    | ver|ihl| tos  | total len  | ident | flags|fragoff | ttl | proto | checksum | src | dst |
      4   5+                             |R|DF|MF|  13 bits, in 8-byte units

``flags_frag`` below is the 16-bit word at offset 6.
"""

from __future__ import annotations

import struct

from usnet.proto.wire.checksum import finish, verifies
from usnet.proto.wire.errors import WireError, readable
from usnet.proto.wire.header import Header

__all__ = [
    "ICMP", "IPOPT_BAD", "IPOPT_SRR", "IPV4_HEADER", "IPV4_HLEN", "IPV4_TEMPLATE", "IP_DF", "IP_MF", "IP_OFFMASK",
    "TCP", "UDP", "build_ipv4_header", "dont_fragment", "frag_offset", "ip_bytes", "ip_str", "ipv4_source_route",
    "ipv4_template", "is_fragment", "make_flags_frag", "martian_source4", "more_fragments", "not_unicast4",
    "parse_ipv4", "write_ipv4_header",
]

IPV4_HLEN = 20
IPV4_MAX_LEN = 0xFFFF

ICMP = 1
TCP = 6
UDP = 17

IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFMASK = 0x1FFF

#: The header without options, declared once: its struct, field offsets and numpy record.
IPV4_HEADER = Header(
    ("ver_ihl", "B"), ("tos", "B"), ("total_length", "H"), ("ident", "H"), ("flags_frag", "H"),
    ("ttl", "B"), ("proto", "B"), ("checksum", "H"), ("src", "4s"), ("dst", "4s"),
)
_IP = IPV4_HEADER.struct
_unpack = _IP.unpack_from
_pack = _IP.pack
_pack_into = _IP.pack_into
_from_bytes = int.from_bytes


def parse_ipv4(
    buf, off: int = 0, length: int | None = None, verify_checksum: bool = True
) -> tuple[int, int, int, int, int, int, bytes, bytes]:
    """Validate the IPv4 header at ``buf[off:]`` and return its fields.

    ``length`` is the number of bytes available from ``off`` (default: to the
    end of ``buf``); bytes beyond ``total_length`` (Ethernet padding) are
    allowed. Returns ``(ihl_bytes, total_length, ident, flags_frag, ttl,
    proto, src, dst)``: the payload is ``buf[off + ihl_bytes : off + total_length]``.
    """
    avail = readable(buf, off, length, IPV4_HLEN, "IPv4")
    vihl, _tos, total, ident, ff, ttl, proto, _csum, src, dst = _unpack(buf, off)
    if vihl >> 4 != 4:
        raise WireError(f"IPv4: version {vihl >> 4}")
    ihl = (vihl & 0xF) << 2
    if ihl < IPV4_HLEN:
        raise WireError(f"IPv4: header length {ihl} < 20")
    if total > avail:
        raise WireError(f"IPv4: total length {total} exceeds the {avail} bytes present")
    if total < ihl:
        raise WireError(f"IPv4: total length {total} < header length {ihl}")
    if verify_checksum and not verifies(_from_bytes(buf[off : off + ihl], "big")):
        # The version nibble makes the sum non-zero, so a valid header sums to
        # exactly 0xFFFF: a multiple of 0xFFFF.
        raise WireError("IPv4: bad header checksum")
    return ihl, total, ident, ff, ttl, proto, src, dst


IPOPT_SRR = 1  # `ipv4_source_route`: a loose or strict source route
IPOPT_BAD = 2  # `ipv4_source_route`: options that do not parse
_OPT_EOL, _OPT_NOP, _OPT_LSRR, _OPT_SSRR = 0, 1, 0x83, 0x89


def ipv4_source_route(buf, off: int, ihl: int) -> int:
    """0, IPOPT_SRR or IPOPT_BAD for the options of the IPv4 header at ``buf[off:off + ihl]``.

    A host drops what the receiving end of Linux drops with its default
    ``accept_source_route=0`` (ip_rcv_options): every packet with a loose or
    strict source route (RFC 7126 §4.3, §4.4), whether hops are left (the
    packet asks to be forwarded, and an answer would go out on a route the
    sender chose) or not; and a packet whose options do not parse
    (ip_options_compile fails: a length under 2 or past the header, or a
    source route whose pointer is under 4).
    """
    i = off + IPV4_HLEN
    end = off + ihl
    while i < end:
        t = buf[i]
        if t == _OPT_EOL:
            return 0
        if t == _OPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            return IPOPT_BAD
        n = buf[i + 1]
        if n < 2 or i + n > end:
            return IPOPT_BAD
        if t == _OPT_LSRR or t == _OPT_SSRR:  # noqa: SIM109 (per packet: no tuple built)
            if n < 3 or buf[i + 2] < 4:
                return IPOPT_BAD
            return IPOPT_SRR
        i += n
    return 0


def martian_source4(src, local: int, bcast: int):
    """Whether `src` cannot be the source of a packet from the wire, as Linux's ip_route_input judges.

    `src` is the address as an int, or a uint32 array (one answer per row:
    the flow switch's column-wise receive path); `local` is our address,
    `bcast` the subnet broadcast (pass `local` again where the prefix has
    none, /31 and /32). Martian: every address `not_unicast4` names (this
    network, loopback, multicast and the limited broadcast), the subnet broadcast, and our own address (a LAND packet:
    Linux's fib_validate_source finds the source local). Written with bitwise
    operators only, so the per-frame and column-wise paths share this one
    definition.
    """
    return not_unicast4(src) | (src == bcast) | (src == local)


def make_flags_frag(df: bool = True, mf: bool = False, offset: int = 0) -> int:
    """The flags/fragment-offset word; ``offset`` is in bytes (a multiple of 8)."""
    if offset & 7 or not 0 <= offset <= IP_OFFMASK << 3:
        raise WireError(f"IPv4: fragment offset {offset} is not a multiple of 8 in range")
    return (IP_DF if df else 0) | (IP_MF if mf else 0) | (offset >> 3)


def frag_offset(flags_frag: int) -> int:
    """Fragment offset in bytes."""
    return (flags_frag & IP_OFFMASK) << 3


def more_fragments(flags_frag: int) -> bool:
    return bool(flags_frag & IP_MF)


def dont_fragment(flags_frag: int) -> bool:
    return bool(flags_frag & IP_DF)


def is_fragment(flags_frag: int) -> bool:
    """True for any fragment of a fragmented datagram (MF set or non-zero offset)."""
    return bool(flags_frag & (IP_MF | IP_OFFMASK))


def _fields(src, dst, proto, payload_len, ident, ttl, df, tos, mf, frag_off):
    if len(src) != 4 or len(dst) != 4:
        raise WireError("IPv4 addresses must be 4 bytes")
    total = IPV4_HLEN + payload_len
    if payload_len < 0 or total > IPV4_MAX_LEN:
        raise WireError(f"IPv4: payload length {payload_len} out of range")
    ff = (IP_DF if df else 0) | (IP_MF if mf else 0)
    if frag_off:
        ff |= make_flags_frag(False, False, frag_off)
    # Accumulator of the header's 16-bit words with a zero checksum field.
    return total, ff, finish(
        0x4500 + tos + total + ident + ff + (ttl << 8) + proto
        + _from_bytes(src, "big") + _from_bytes(dst, "big"))


def build_ipv4_header(
    src: bytes, dst: bytes, proto: int, payload_len: int, ident: int = 0, ttl: int = 64,
    df: bool = True, tos: int = 0, mf: bool = False, frag_off: int = 0,
) -> bytes:
    """A 20-byte header (no options) with a correct checksum."""
    total, ff, csum = _fields(src, dst, proto, payload_len, ident, ttl, df, tos, mf, frag_off)
    try:
        return _pack(0x45, tos, total, ident, ff, ttl, proto, csum, src, dst)
    except struct.error as e:
        raise WireError(f"IPv4: bad header field: {e}") from None


#: Header with its constant parts as byte strings: (version/IHL, TOS), total length, ident,
#: (flags/fragment, TTL, protocol), checksum, (source, destination). See `ipv4_template`.
IPV4_TEMPLATE = struct.Struct("!2sHH4sH8s")


def ipv4_template(
    src: bytes, dst: bytes, proto: int, ttl: int = 64, df: bool = True, tos: int = 0,
) -> tuple[bytes, bytes, bytes, int]:
    """The parts of an unfragmented header that do not change from packet to packet.

    ``(head, mid, addrs, acc)``: the first two bytes, the four of flags, TTL and protocol,
    the addresses, and the checksum accumulator of all of them. A sender that keeps it per
    destination builds each header with one struct call and one fold:
    ``IPV4_TEMPLATE.pack(head, total, ident, mid, finish(acc + total + ident), addrs)``,
    the bytes `build_ipv4_header` makes: the one's complement sum is associative
    (RFC 1071), so the changing words (total length, identification) are added to the
    stored sum of the others, which is RFC 1624's incremental update from a stored sum.
    """
    build_ipv4_header(src, dst, proto, 0, 0, ttl, df, tos)  # the same checks and errors
    ff = IP_DF if df else 0
    return (bytes((0x45, tos)), struct.pack("!HBB", ff, ttl, proto), src + dst,
            0x4500 + tos + ff + (ttl << 8) + proto + _from_bytes(src, "big") + _from_bytes(dst, "big"))


def write_ipv4_header(
    buf, off: int, src: bytes, dst: bytes, proto: int, payload_len: int, ident: int = 0,
    ttl: int = 64, df: bool = True, tos: int = 0, mf: bool = False, frag_off: int = 0,
) -> int:
    """Write the 20-byte header into ``buf`` at ``off``; return the bytes written (20)."""
    total, ff, csum = _fields(src, dst, proto, payload_len, ident, ttl, df, tos, mf, frag_off)
    if off < 0 or len(buf) - off < IPV4_HLEN:
        raise WireError("buffer too small for IPv4 header")
    try:
        _pack_into(buf, off, 0x45, tos, total, ident, ff, ttl, proto, csum, src, dst)
    except struct.error as e:
        raise WireError(f"IPv4: bad header field: {e}") from None
    return IPV4_HLEN


def ip_bytes(s: str) -> bytes:
    """``"10.0.0.1"`` -> ``b"\\n\\x00\\x00\\x01"``.

    Strict dotted quad: no leading zeros, no shorthand, ASCII digits only.
    """
    parts = s.split(".")
    if len(parts) != 4:
        raise WireError(f"not an IPv4 address: {s!r}")
    out = bytearray(4)
    for i, p in enumerate(parts):
        if not (0 < len(p) <= 3 and p.isascii() and p.isdigit()) or (p[0] == "0" and len(p) > 1):
            raise WireError(f"not an IPv4 address: {s!r}")
        v = int(p)
        if v > 255:
            raise WireError(f"not an IPv4 address: {s!r}")
        out[i] = v
    return bytes(out)


def ip_str(b: bytes) -> str:
    """4 bytes -> ``"10.0.0.1"``."""
    if len(b) != 4:
        raise WireError(f"IPv4 address must be 4 bytes, got {len(b)}")
    return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"


def not_unicast4(a):
    """Whether IPv4 address `a` (an int, or element-wise a numpy array of them) is one no peer can have.

    "This network" 0.0.0.0/8 (0.0.0.0 included), loopback 127.0.0.0/8,
    multicast 224.0.0.0/4 and the limited broadcast 255.255.255.255, as
    Linux's martian checks (which let the rest of the reserved 240.0.0.0/4
    through, as unicast). The netif's own address and its subnet broadcast
    depend on the netif: its owner checks those.
    """
    top = a >> 24
    return (top == 0) | (top == 127) | ((top & 0xF0) == 0xE0) | (a == 0xFFFFFFFF)
