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

A UDP/IPv4 packet's 28 header bytes come from one call,
`usnet.proto.wire.udp.udp_ipv4_headers` (the datagram socket's send path).
"""

from __future__ import annotations

from usnet.proto.wire.arp import ARP_LEN, ARP_REPLY, ARP_REQUEST, build_arp, parse_arp, write_arp
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
from usnet.proto.wire.udp import UDP_HLEN, parse_udp, udp_ipv4_headers

__all__ = [
    "ARP_LEN", "ARP_REPLY", "ARP_REQUEST", "BROADCAST", "DEST_UNREACH", "ECHO_REPLY",
    "ECHO_REQUEST", "ETHERTYPE_ARP", "ETHERTYPE_IPV4", "ETHERTYPE_IPV6", "ETH_HLEN",
    "FRAG_NEEDED", "ICMP", "IPV4_HLEN", "PORT_UNREACH", "TCP", "UDP", "UDP_HLEN", "WireError",
    "build_arp", "build_dest_unreach", "build_echo", "build_eth", "build_icmp",
    "build_ipv4_header",
    "frag_offset", "ip_bytes", "ip_str", "is_fragment", "mac_bytes", "mac_str",
    "more_fragments", "parse_arp", "parse_eth", "parse_icmp", "parse_ipv4",
    "parse_udp", "udp_ipv4_headers", "write_arp", "write_eth", "write_ipv4_header",
]
