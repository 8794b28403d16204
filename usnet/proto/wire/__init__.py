"""usnet.proto.wire: packet formats and checksums, with no I/O (docs/architecture.md, "The protocol stack").

Sans-I/O in the manner of h11 and smoltcp: these functions take bytes and
return bytes or tuples; they never touch a socket, a ring or a clock, and
import nothing from usnet.domain or usnet.client. Parsers take any
bytes-like buffer plus an offset (so they work in place on a packet buffer
viewed through a memoryview) and raise only `WireError` on malformed input.

Submodules, each holding its byte layout in its docstring: `checksum`,
`ethernet`, `arp`, `ipv4`, `icmp`, `udp`. The checksum function itself is
`usnet.proto.wire.checksum.checksum` (not re-exported here, so that the name
``usnet.proto.wire.checksum`` keeps meaning the module).

The one-shot helpers below build a whole UDP/IPv4 packet or Ethernet frame
with a single struct pack of all the headers and one concatenation.
"""

from __future__ import annotations

import struct

from usnet.proto.wire.arp import ARP_LEN, ARP_REPLY, ARP_REQUEST, build_arp, parse_arp, write_arp
from usnet.proto.wire.checksum import finish
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.ethernet import (
    BROADCAST,
    ETH_HLEN,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    build_eth,
    mac_bytes,
    mac_str,
    parse_eth,
    write_eth,
)
from usnet.proto.wire.icmp import (
    DEST_UNREACH,
    ECHO_REPLY,
    ECHO_REQUEST,
    FRAG_NEEDED,
    PORT_UNREACH,
    build_dest_unreach,
    build_echo,
    build_icmp,
    parse_icmp,
)
from usnet.proto.wire.ipv4 import (
    ICMP,
    IPV4_HLEN,
    TCP,
    UDP,
    build_ipv4_header,
    frag_offset,
    ip_bytes,
    ip_str,
    is_fragment,
    more_fragments,
    parse_ipv4,
    write_ipv4_header,
)
from usnet.proto.wire.udp import UDP_HLEN, build_udp, parse_udp, udp_checksum, write_udp

__all__ = [
    "ARP_LEN", "ARP_REPLY", "ARP_REQUEST", "BROADCAST", "DEST_UNREACH", "ECHO_REPLY",
    "ECHO_REQUEST", "ETHERTYPE_ARP", "ETHERTYPE_IPV4", "ETHERTYPE_IPV6", "ETH_HLEN",
    "FRAG_NEEDED", "ICMP", "IPV4_HLEN", "PORT_UNREACH", "TCP", "UDP", "UDP_HLEN", "WireError",
    "build_arp", "build_dest_unreach", "build_echo", "build_eth", "build_icmp",
    "build_ipv4_header", "build_udp", "build_udp_ipv4_frame", "build_udp_ipv4_packet",
    "frag_offset", "ip_bytes", "ip_str", "is_fragment", "mac_bytes", "mac_str",
    "more_fragments", "parse_arp", "parse_eth", "parse_icmp", "parse_ipv4",
    "parse_udp", "udp_checksum", "write_arp", "write_eth",
    "write_ipv4_header", "write_udp", "write_udp_ipv4_packet",
]

# Ethernet + IPv4 (no options) + UDP headers: 14 + 20 + 8 = 42 bytes.
_ETH_IP_UDP = struct.Struct("!6s6sHBBHHHBBH4s4sHHHH")
_IP_UDP = struct.Struct("!BBHHHBBH4s4sHHHH")
_from_bytes = int.from_bytes


def _udp_ipv4_fields(src_ip, dst_ip, sport, dport, payload, ident, ttl, df):
    """(total, flags, ip_csum, ulen, udp_csum) for a UDP/IPv4 packet."""
    if len(src_ip) != 4 or len(dst_ip) != 4:
        raise WireError("IPv4 addresses must be 4 bytes")
    plen = len(payload)
    ulen = UDP_HLEN + plen
    total = IPV4_HLEN + ulen
    if total > 0xFFFF:
        raise WireError(f"UDP/IPv4: payload of {plen} bytes does not fit one packet")
    addrs = _from_bytes(src_ip, "big") + _from_bytes(dst_ip, "big")
    ff = 0x4000 if df else 0
    ip_csum = finish(0x4500 + total + ident + ff + (ttl << 8) + UDP + addrs)
    n = _from_bytes(payload, "big")
    if plen & 1:
        n <<= 8
    n += addrs + UDP + ulen + sport + dport + ulen
    udp_csum = finish(n) or 0xFFFF  # 0 means "no checksum" in UDP
    return total, ff, ip_csum, ulen, udp_csum


def build_udp_ipv4_packet(
    src_ip: bytes, dst_ip: bytes, sport: int, dport: int, payload, ident: int = 0,
    ttl: int = 64, df: bool = True,
) -> bytes:
    """A complete IPv4 packet carrying one UDP datagram, both checksums set."""
    total, ff, ip_csum, ulen, udp_csum = _udp_ipv4_fields(
        src_ip, dst_ip, sport, dport, payload, ident, ttl, df)
    try:
        return _IP_UDP.pack(
            0x45, 0, total, ident, ff, ttl, UDP, ip_csum, src_ip, dst_ip,
            sport, dport, ulen, udp_csum) + payload
    except struct.error as e:
        raise WireError(f"UDP/IPv4: bad header field: {e}") from None


def build_udp_ipv4_frame(
    src_mac: bytes, dst_mac: bytes, src_ip: bytes, dst_ip: bytes, sport: int, dport: int,
    payload, ident: int = 0, ttl: int = 64, df: bool = True,
) -> bytes:
    """An Ethernet frame carrying one UDP/IPv4 datagram (no padding, no FCS)."""
    if len(src_mac) != 6 or len(dst_mac) != 6:
        raise WireError("MAC addresses must be 6 bytes")
    total, ff, ip_csum, ulen, udp_csum = _udp_ipv4_fields(
        src_ip, dst_ip, sport, dport, payload, ident, ttl, df)
    try:
        return _ETH_IP_UDP.pack(
            dst_mac, src_mac, ETHERTYPE_IPV4,
            0x45, 0, total, ident, ff, ttl, UDP, ip_csum, src_ip, dst_ip,
            sport, dport, ulen, udp_csum) + payload
    except struct.error as e:
        raise WireError(f"UDP/IPv4: bad header field: {e}") from None


def write_udp_ipv4_packet(
    buf, off: int, src_ip: bytes, dst_ip: bytes, sport: int, dport: int, payload_len: int,
    ident: int = 0, ttl: int = 64, df: bool = True,
) -> int:
    """Write the 28 header bytes of a UDP/IPv4 packet at ``off`` in front of a payload
    already at ``off + 28`` (zero-copy send path); return the packet length."""
    if off < 0 or payload_len < 0 or len(buf) - off < IPV4_HLEN + UDP_HLEN + payload_len:
        raise WireError("buffer too small for UDP/IPv4 packet")
    start = off + IPV4_HLEN + UDP_HLEN
    with memoryview(buf) as mv, mv[start : start + payload_len] as payload:
        total, ff, ip_csum, ulen, udp_csum = _udp_ipv4_fields(
            src_ip, dst_ip, sport, dport, payload, ident, ttl, df)
    try:
        _IP_UDP.pack_into(
            buf, off, 0x45, 0, total, ident, ff, ttl, UDP, ip_csum, src_ip, dst_ip,
            sport, dport, ulen, udp_csum)
    except struct.error as e:
        raise WireError(f"UDP/IPv4: bad header field: {e}") from None
    return total
