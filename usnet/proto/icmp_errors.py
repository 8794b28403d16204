"""ICMP and ICMPv6 errors about packets we sent: what they quote, and the errno they mean.

An error (destination unreachable, time exceeded, parameter problem, packet
too big) quotes the head of the packet that caused it. The quote names the
socket it is for (protocol, our address and port, the peer's address and
port) and, for TCP, the sequence number a receiver must check (RFC 5927).
The flow switch passes each error to the flow whose packet it quotes
(docs/architecture.md, "Data paths"); these functions read it on the client
side: `usnet.proto.ip.IpLayer` for TCP, `icmp4_error`/`icmp6_error` for a
datagram socket without an IP layer (usnet.client.datagram).

Errnos are Linux's mapping of the types and codes (icmp_err_convert in
net/ipv4/icmp.c, icmpv6_err_convert in net/ipv6/icmp.c), and so is which
of them are "fatal": the only ones a UDP socket without IP_RECVERR is told
of, and then only when connected (`icmp4_fatal`, `icmp6_fatal`). A TCP
connection in SYN-SENT is ended by any of them but "fragmentation needed"
and "packet too big", which only lower the path MTU (tcp_v4_err, tcp_v6_err);
and an IPv4 unreachable code past 15 is no error to TCP at all
(`icmp4_tcp_ignores`).
"""

from __future__ import annotations

import errno as _errno
import struct

from usnet.proto.wire import icmp as _i4
from usnet.proto.wire import icmpv6 as _i6
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.ipv4 import ICMP, IP_OFFMASK, IPV4_HLEN, parse_ipv4
from usnet.proto.wire.ipv6 import ICMPV6, IPV6_HLEN, parse_ipv6, skip_ext_headers

__all__ = [
    "ICMP4_ERRORS", "Quote", "icmp4_errno", "icmp4_error", "icmp4_fatal", "icmp4_tcp_ignores", "icmp6_errno",
    "icmp6_error", "icmp6_fatal", "quote4", "quote6",
]

# (proto, our address, peer address, our port, peer port, quoted total length, transport bytes):
# the ports are None when the quote cannot name them (too short, a later fragment).
Quote = tuple[int, bytes, bytes, int | None, int | None, int, memoryview]

# errno for ICMPv4 destination-unreachable codes, as Linux maps them.
_UNREACH4_ERRNO = {
    0: _errno.ENETUNREACH, 1: _errno.EHOSTUNREACH, 2: _errno.ENOPROTOOPT, 3: _errno.ECONNREFUSED,
    4: _errno.EMSGSIZE, 5: _errno.EOPNOTSUPP, 6: _errno.ENETUNREACH, 7: _errno.EHOSTDOWN,
    8: _errno.ENONET, 9: _errno.ENETUNREACH, 10: _errno.EHOSTUNREACH, 11: _errno.ENETUNREACH,
    12: _errno.EHOSTUNREACH, 13: _errno.EHOSTUNREACH, 14: _errno.EHOSTUNREACH,
    15: _errno.EHOSTUNREACH,
}
# icmp_err_convert's "fatal" column: the codes a UDP socket without IP_RECVERR hears of
# (net and host unreachable, and their TOS variants, are soft: a route may come back)
_FATAL4 = frozenset((2, 3, 6, 7, 8, 9, 10, 13, 14, 15))
NR_ICMP_UNREACH = 15  # Linux's last unreachable code; TCP ignores any past it
_UNREACH6_ERRNO = {
    0: _errno.ENETUNREACH, 1: _errno.EACCES, 2: _errno.EHOSTUNREACH, 3: _errno.EHOSTUNREACH,
    4: _errno.ECONNREFUSED, 5: _errno.EACCES, 6: _errno.EACCES,
}
_FATAL6 = frozenset((1, 4, 5, 6))  # icmpv6_err_convert's tab_unreach; codes past it are fatal (EPROTO)
ICMP4_ERRORS = (_i4.DEST_UNREACH, _i4.TIME_EXCEEDED, _i4.PARAM_PROBLEM)  # the ones a socket hears of
_PORTED = frozenset((6, 17, 33, 132, 136))  # TCP, UDP, DCCP, SCTP, UDP-Lite: ports first


def _ports(proto: int, t) -> tuple[int | None, int | None]:
    if proto in _PORTED:
        if len(t) >= 4:
            return (t[0] << 8) | t[1], (t[2] << 8) | t[3]
    elif proto in (ICMP, ICMPV6) and len(t) >= 6:
        return (t[4] << 8) | t[5], 0
    return None, None


def quote4(buf, off: int) -> Quote | None:
    """The `Quote` of the IPv4 header at ``buf[off:]``, or None if it is too short or not IPv4."""
    end = len(buf)
    if end - off < IPV4_HLEN:
        return None
    vihl = buf[off]
    ihl = (vihl & 0xF) << 2
    if vihl >> 4 != 4 or ihl < IPV4_HLEN or end - off < ihl:
        return None
    total = (buf[off + 2] << 8) | buf[off + 3]
    ff = (buf[off + 6] << 8) | buf[off + 7]
    proto = buf[off + 9]
    src = bytes(buf[off + 12 : off + 16])
    dst = bytes(buf[off + 16 : off + 20])
    t = buf[off + ihl : end]
    sport, dport = (None, None) if ff & IP_OFFMASK else _ports(proto, t)
    return proto, src, dst, sport, dport, total, t


def icmp4_error(packet: bytes) -> tuple[int, int, bytes, int, bytes, int, bool] | None:
    """(errno, protocol, quoted source, source port, quoted destination, destination port, fatal)
    of an IPv4 ICMP error (unreachable, time exceeded, parameter problem) in `packet`; None if it is
    not one, or its checksum or quote is bad. For a socket without an IpLayer (usnet.client.datagram)."""
    try:
        ihl, total, _i, _f, _t, proto, _s, _d = parse_ipv4(packet, 0, verify_checksum=False)
        if proto != ICMP:
            return None
        typ, code, _id, _seq, q = _i4.parse_icmp(packet, ihl, total - ihl)
    except (WireError, struct.error):
        return None
    if typ not in ICMP4_ERRORS:
        return None
    return _quoted_error(icmp4_errno(typ, code), icmp4_fatal(typ, code), quote4(packet[:total], q))


def _quoted_error(err: int, fatal: bool, quoted) -> tuple[int, int, bytes, int, bytes, int, bool] | None:
    """`icmp4_error`'s answer from the errno, whether it is fatal, and the quote (`quote4`,
    `quote6`): None if the quote is bad or names no ports."""
    if quoted is None or quoted[3] is None:
        return None
    qproto, qsrc, qdst, sport, dport = quoted[:5]
    return err, qproto, qsrc, sport, qdst, dport, fatal


def icmp4_errno(typ: int, code: int) -> int:
    """The errno of an ICMPv4 error, as Linux maps it (destination unreachable by code)."""
    if typ == _i4.DEST_UNREACH:
        return _UNREACH4_ERRNO.get(code, _errno.EHOSTUNREACH)
    return _errno.EHOSTUNREACH if typ == _i4.TIME_EXCEEDED else _errno.EPROTO


def icmp4_fatal(typ: int, code: int) -> bool:
    """Whether Linux tells a (connected) UDP socket without IP_RECVERR of this ICMPv4 error
    (__udp4_lib_err): parameter problem, "fragmentation needed" (path MTU discovery is on by
    default), and the unreachable codes icmp_err_convert marks fatal; never time exceeded."""
    if typ == _i4.DEST_UNREACH:
        return code == _i4.FRAG_NEEDED or code in _FATAL4
    return typ == _i4.PARAM_PROBLEM


def icmp4_tcp_ignores(typ: int, code: int) -> bool:
    """Whether TCP takes no notice of this ICMPv4 error (tcp_v4_err): an unreachable code past 15."""
    return typ == _i4.DEST_UNREACH and code > NR_ICMP_UNREACH


def quote6(buf, off: int) -> Quote | None:
    """The `Quote` of the IPv6 packet at ``buf[off:]``; None if it is too short or not IPv6.

    The ports are None when the quote is of a later fragment or its extension headers do not parse."""
    end = len(buf)
    if end - off < IPV6_HLEN or buf[off] >> 4 != 6:
        return None
    total = IPV6_HLEN + ((buf[off + 4] << 8) | buf[off + 5])
    nh = buf[off + 6]
    src = bytes(buf[off + 8 : off + 24])
    dst = bytes(buf[off + 24 : off + 40])
    t0 = off + IPV6_HLEN
    try:
        proto, t, frag = skip_ext_headers(buf, t0, end, nh)
        if frag is not None:
            if frag[1]:
                return proto, src, dst, None, None, total, buf[t:end]
            proto, t, frag = skip_ext_headers(buf, t, end, proto, first=False)
            if frag is not None:
                return proto, src, dst, None, None, total, buf[t:end]
    except WireError:
        return nh, src, dst, None, None, total, buf[t0:end]
    sport, dport = _ports(proto, buf[t:end])
    return proto, src, dst, sport, dport, total, buf[t:end]


def icmp6_error(packet: bytes) -> tuple[int, int, bytes, int, bytes, int, bool] | None:
    """`icmp4_error` for an IPv6 packet: an ICMPv6 error (unreachable, packet too big, time
    exceeded, parameter problem) with a good checksum, whose quote names the ports; else None."""
    try:
        _tc, _fl, plen, nh, _hop, src, dst = parse_ipv6(packet, 0)
        if nh != ICMPV6:
            return None
        typ, code, _hi, _lo, q = _i6.parse_icmpv6(packet, IPV6_HLEN, plen, src, dst)
    except (WireError, struct.error):
        return None
    if typ not in _i6.ERRORS:
        return None
    return _quoted_error(icmp6_errno(typ, code), icmp6_fatal(typ, code), quote6(packet[: IPV6_HLEN + plen], q))


def icmp6_errno(typ: int, code: int) -> int:
    """The errno of an ICMPv6 error, as Linux maps it (destination unreachable by code)."""
    if typ == _i6.DEST_UNREACH:
        return _UNREACH6_ERRNO.get(code, _errno.EPROTO)
    if typ == _i6.PACKET_TOO_BIG:
        return _errno.EMSGSIZE
    return _errno.EHOSTUNREACH if typ == _i6.TIME_EXCEEDED else _errno.EPROTO


def icmp6_fatal(typ: int, code: int) -> bool:
    """Whether Linux tells a (connected) UDP socket without IPV6_RECVERR of this ICMPv6 error
    (__udp6_lib_err): packet too big (path MTU discovery is on by default), parameter problem,
    and the unreachable codes icmpv6_err_convert marks fatal (admin prohibited, port unreachable,
    policy, reject route, and unknown codes); never time exceeded."""
    if typ == _i6.DEST_UNREACH:
        return code in _FATAL6 or code not in _UNREACH6_ERRNO
    return typ in (_i6.PACKET_TOO_BIG, _i6.PARAM_PROBLEM)
