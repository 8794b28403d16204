"""UDP over IPv4 (RFC 768).

Used by the stack's UDP sockets and by the flow switch when it validates a
client's copy (docs/architecture.md, "Nexuses"). `parse_udp` checks the length field against the
bytes the IP layer delivered and the checksum over the pseudo-header; a
checksum field of 0 means "none" on IPv4 and is accepted. The one builder,
`udp_ipv4_headers` (the datagram socket's send path, usnet.client.datagram),
writes the IPv4 and UDP headers together and transmits a computed 0 as
0xFFFF; the socket's column-wise batch builder starts from the same
`udp_ipv4_sums`.

The checksum is computed from field values plus one ``int.from_bytes`` over
the payload: no pseudo-header bytes and no concatenation are built.

Layout (8 bytes, big-endian):

    0       2       4                      6          8
    | sport | dport | length (hdr+payload) | checksum | payload ...
"""

from __future__ import annotations

import struct

from usnet.proto.wire.checksum import acc, acc_at, finish, verifies
from usnet.proto.wire.errors import WireError, readable
from usnet.proto.wire.header import Header
from usnet.proto.wire.ipv4 import IPV4_HEADER, IPV4_HLEN

__all__ = [
    "UDP_HEADER", "UDP_HLEN", "UDP_IPV4_HEADER", "parse_udp", "udp_ipv4_headers", "udp_ipv4_marked_headers",
    "udp_ipv4_sums",
]

UDP_HLEN = 8
_PROTO = 17

#: The header, declared once: its struct, field offsets and numpy record.
UDP_HEADER = Header(("sport", "H"), ("dport", "H"), ("length", "H"), ("checksum", "H"))
_UDP = UDP_HEADER.struct
_unpack = _UDP.unpack_from
_from_bytes = int.from_bytes


def parse_udp(
    buf, off: int, length: int | None, src_ip: bytes | None, dst_ip: bytes | None,
    verify: bool = True,
) -> tuple[int, int, int, int]:
    """Validate the UDP datagram at ``buf[off:]``, ``length`` bytes delivered by IP.

    Returns ``(sport, dport, payload_off, payload_len)``, ``payload_off``
    absolute in ``buf``. Bytes beyond the UDP length field are ignored.
    ``src_ip``/``dst_ip`` (4 bytes each) are needed only when ``verify``.
    """
    avail = readable(buf, off, length, UDP_HLEN, "UDP")
    sport, dport, ulen, csum = _unpack(buf, off)
    if ulen < UDP_HLEN:
        raise WireError(f"UDP: length field {ulen} < 8")
    if ulen > avail:
        raise WireError(f"UDP: length field {ulen} exceeds the {avail} bytes present")
    if verify and csum:
        if src_ip is None or dst_ip is None or len(src_ip) != 4 or len(dst_ip) != 4:
            raise WireError("UDP: verifying needs 4-byte source and destination addresses")
        # pseudo-header: addresses, protocol, length (never all zero)
        n = acc_at(buf, off, off + ulen) + _from_bytes(src_ip, "big") + _from_bytes(dst_ip, "big") + _PROTO + ulen
        if not verifies(n):
            raise WireError("UDP: bad checksum")
    return sport, dport, off + UDP_HLEN, ulen - UDP_HLEN


#: An IPv4 header (no options) and a UDP header, the 28 bytes in front of a datagram's payload.
UDP_IPV4_HEADER = IPV4_HEADER.then(UDP_HEADER, "udp_")
_IP_UDP_PACK = UDP_IPV4_HEADER.struct.pack
_TTL, _DF = 64, 0x4000
_IP_FIXED = 0x4500 + _DF + (_TTL << 8) + _PROTO  # version and IHL, DF, TTL, protocol


def udp_ipv4_sums(src_ip: bytes, dst_ip: bytes, sport: int, dport: int, ttl: int = _TTL, tos: int = 0,
                  ) -> tuple[int, int]:
    """The accumulators of the header fields every datagram of a flow shares: (IPv4, UDP).

    The IPv4 one covers version, DF, TTL, protocol and addresses; the UDP one
    the pseudo-header's addresses and protocol and the ports. A datagram adds
    its own total length and ident (IPv4), twice its UDP length (header and
    pseudo-header) and its payload (UDP), as `udp_ipv4_headers` does. The
    client's column-wise batch builder (usnet.client.datagram) keeps them per
    destination. ``ttl`` and ``tos``: a socket's IP_TTL and IP_TOS (`udp_ipv4_marked_headers`).
    """
    addrs = _from_bytes(src_ip, "big") + _from_bytes(dst_ip, "big")
    return _IP_FIXED + tos + ((ttl - _TTL) << 8) + addrs, addrs + _PROTO + sport + dport


def udp_ipv4_headers(
    src_ip: bytes, dst_ip: bytes, sport: int, dport: int, payload, ident: int = 0,
) -> bytes:
    """The 28 header bytes of a UDP/IPv4 packet carrying ``payload``, both checksums set.

    TTL 64, Don't Fragment set (docs/architecture.md, "Nexuses": a flow sends
    datagrams that fit its MTU). The caller writes the payload after them.
    The sums are `udp_ipv4_sums`' written out: this is the per-datagram path
    of `sendto`, where a call more is a tenth of the cost.
    """
    if len(src_ip) != 4 or len(dst_ip) != 4:
        raise WireError("IPv4 addresses must be 4 bytes")
    ulen = UDP_HLEN + len(payload)
    total = IPV4_HLEN + ulen
    if total > 0xFFFF:
        raise WireError(f"UDP/IPv4: payload of {len(payload)} bytes does not fit one packet")
    addrs = _from_bytes(src_ip, "big") + _from_bytes(dst_ip, "big")
    try:
        return _IP_UDP_PACK(
            0x45, 0, total, ident, _DF, _TTL, _PROTO, finish(_IP_FIXED + addrs + total + ident), src_ip, dst_ip,
            sport, dport, ulen,
            finish(addrs + _PROTO + sport + dport + 2 * ulen + acc(payload)) or 0xFFFF)  # 0: "no checksum"
    except struct.error as e:
        raise WireError(f"UDP/IPv4: bad header field: {e}") from None


def udp_ipv4_marked_headers(
    src_ip: bytes, dst_ip: bytes, sport: int, dport: int, payload, ident: int, ttl: int, tos: int,
) -> bytes:
    """`udp_ipv4_headers` with the TTL and TOS octet a socket chose (IP_TTL, IP_TOS).

    A function of its own so that `udp_ipv4_headers`, the path of every socket that sets
    neither, keeps its constants and pays nothing for them.
    """
    if len(src_ip) != 4 or len(dst_ip) != 4:
        raise WireError("IPv4 addresses must be 4 bytes")
    if not 0 <= tos <= 0xFF or not 0 <= ttl <= 0xFF:
        raise WireError(f"UDP/IPv4: TTL {ttl} or TOS {tos} out of range")
    ulen = UDP_HLEN + len(payload)
    total = IPV4_HLEN + ulen
    if total > 0xFFFF:
        raise WireError(f"UDP/IPv4: payload of {len(payload)} bytes does not fit one packet")
    addrs = _from_bytes(src_ip, "big") + _from_bytes(dst_ip, "big")
    fixed = _IP_FIXED + tos + ((ttl - _TTL) << 8)
    try:
        return _IP_UDP_PACK(
            0x45, tos, total, ident, _DF, ttl, _PROTO, finish(fixed + addrs + total + ident), src_ip, dst_ip,
            sport, dport, ulen,
            finish(addrs + _PROTO + sport + dport + 2 * ulen + acc(payload)) or 0xFFFF)  # 0: "no checksum"
    except struct.error as e:
        raise WireError(f"UDP/IPv4: bad header field: {e}") from None
