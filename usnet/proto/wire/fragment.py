"""A UDP datagram bigger than the MTU, cut into IP fragments as Linux's ip_fragment /
ip6_fragment cut it (RFC 791 §2.3, RFC 8200 §4.5), sans-I/O.

Linux sends a UDP datagram of up to 65,507 bytes (IPv4; 65,527 over IPv6) on a socket whose
path MTU discovery is the default: bigger than the MTU, it leaves in fragments, Don't Fragment
clear, and the receiver's IP layer puts it together again. A program that sends one (the
logging module's DatagramHandler with a long record, a DNS server's EDNS answer, NFS) gets
EMSGSIZE only past those bounds. The flow switch lets a flow's fragments out (usnet.domain.switch
.txguard: a first fragment carries the whole UDP header, later ones only of a datagram the flow
began), so the client cuts them here.

Every fragment but the last carries a multiple of 8 bytes of the datagram (the UDP header and
payload), as many as fit the MTU; all carry the same identification.
"""

from __future__ import annotations

import struct

from usnet.proto.wire.checksum import acc, finish
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.ipv4 import IPV4_HLEN, build_ipv4_header
from usnet.proto.wire.ipv6 import FRAG_HLEN, IPV6_HLEN, build_frag_header, build_ipv6_header, upper_checksum_v6

__all__ = ["UDP4_MAX_PAYLOAD", "UDP6_MAX_PAYLOAD", "ip4_fragments", "ip6_fragments", "udp4_fragments", "udp6_fragments"]

UDP4_MAX_PAYLOAD = 0xFFFF - IPV4_HLEN - 8  # 65,507: Linux's bound for a UDP/IPv4 datagram
UDP6_MAX_PAYLOAD = 0xFFFF - 8  # 65,527: the payload length field's bound less the UDP header
_UDP = struct.Struct("!HHHH")
_UDP_PROTO = 17
_FRAGMENT = 44


def _pieces(datagram: bytes, room: int) -> list[tuple[int, bytes]]:
    """(offset, bytes) pieces of `datagram`, each at most `room` bytes rounded down to 8."""
    step = room & ~7
    if step <= 0:
        raise WireError(f"fragments: an MTU leaving {room} bytes per fragment is too small")
    return [(o, datagram[o : o + step]) for o in range(0, len(datagram), step)]


def udp4_fragments(src: bytes, dst: bytes, sport: int, dport: int, payload, ident: int, mtu: int,
                   ttl: int = 64, tos: int = 0) -> list[bytes]:
    """The IPv4 fragments (each at most `mtu` bytes, headers included) of one UDP datagram."""
    n = len(payload)
    if n > UDP4_MAX_PAYLOAD:
        raise WireError(f"UDP/IPv4: payload of {n} bytes is over {UDP4_MAX_PAYLOAD}")
    ulen = 8 + n
    body = bytes(payload)
    csum = finish(acc(src) + acc(dst) + _UDP_PROTO + ulen + sport + dport + ulen + acc(body)) or 0xFFFF
    return ip4_fragments(src, dst, _UDP_PROTO, _UDP.pack(sport, dport, ulen, csum) + body, ident, mtu, ttl, tos)


def ip4_fragments(src: bytes, dst: bytes, proto: int, datagram: bytes, ident: int, mtu: int,
                  ttl: int = 64, tos: int = 0) -> list[bytes]:
    """The IPv4 fragments (each at most `mtu` bytes, headers included) of one transport datagram
    (its header and payload, checksum done): a UDP datagram's, or the switch's own echo reply."""
    parts = _pieces(datagram, mtu - IPV4_HLEN)
    last = len(parts) - 1
    return [build_ipv4_header(src, dst, proto, len(piece), ident, ttl, df=False, tos=tos, mf=i < last,
                              frag_off=off) + piece
            for i, (off, piece) in enumerate(parts)]


def udp6_fragments(src: bytes, dst: bytes, sport: int, dport: int, payload, ident: int, mtu: int,
                   hops: int = 64, tclass: int = 0) -> list[bytes]:
    """The IPv6 fragments (each at most `mtu` bytes, a Fragment header in each) of one UDP datagram."""
    n = len(payload)
    if n > UDP6_MAX_PAYLOAD:
        raise WireError(f"UDP/IPv6: payload of {n} bytes is over {UDP6_MAX_PAYLOAD}")
    ulen = 8 + n
    seg = _UDP.pack(sport, dport, ulen, 0) + bytes(payload)
    datagram = seg[:6] + upper_checksum_v6(src, dst, _UDP_PROTO, seg).to_bytes(2, "big") + seg[8:]
    return ip6_fragments(src, dst, _UDP_PROTO, datagram, ident, mtu, hops, tclass)


def ip6_fragments(src: bytes, dst: bytes, proto: int, datagram: bytes, ident: int, mtu: int,
                  hops: int = 64, tclass: int = 0) -> list[bytes]:
    """The IPv6 fragments (each at most `mtu` bytes, a Fragment header in each) of one transport
    datagram (its header and payload, checksum done)."""
    parts = _pieces(datagram, mtu - IPV6_HLEN - FRAG_HLEN)
    last = len(parts) - 1
    return [build_ipv6_header(src, dst, _FRAGMENT, FRAG_HLEN + len(piece), hops, tclass)
            + build_frag_header(proto, off, i < last, ident) + piece
            for i, (off, piece) in enumerate(parts)]
