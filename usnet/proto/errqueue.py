"""A socket's error queue (IP_RECVERR, IPV6_RECVERR): the ICMP errors it is told of, as Linux reports them.

With IP_RECVERR (IPV6_RECVERR) set, Linux queues each ICMP error about a datagram a UDP socket
sent on the socket's error queue (ip_icmp_error, ipv6_icmp_error), every one of them, not only
the "fatal" ones and on an unconnected socket too (usnet.proto.icmp_errors), and a program reads
them with ``recvmsg(..., MSG_ERRQUEUE)`` (ip_recv_error, ipv6_recv_error): the payload of the
datagram the error quotes (what follows its UDP header, as much as the ICMP message carries),
its destination as the address, MSG_ERRQUEUE in the flags and one control message, level SOL_IP
type IP_RECVERR (SOL_IPV6, IPV6_RECVERR), whose data is Linux's

    struct sock_extended_err {      /* host byte order */
        __u32 ee_errno;             /* the errno the ICMP error means */
        __u8  ee_origin;            /* SO_EE_ORIGIN_ICMP 2, SO_EE_ORIGIN_ICMP6 3 (LOCAL 1) */
        __u8  ee_type, ee_code;     /* the ICMP type and code */
        __u8  ee_pad;
        __u32 ee_info;              /* IPv4: the MTU of "fragmentation needed", the pointer of a
                                       parameter problem, else 0; IPv6: the message's second word */
        __u32 ee_data;              /* 0 */
    };

followed by the offender: the sockaddr_in (16 bytes) or sockaddr_in6 (28) of the ICMP message's
sender (port 0). This module is that layout, declared once (`pack_cmsg`), and the reading of an
ICMP error into an `ErrorReport` (sans-I/O: the datagram face, usnet.client.dgram, keeps the queue).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from usnet.proto import icmp_errors as _ie
from usnet.proto.wire import icmp as _i4
from usnet.proto.wire import icmpv6 as _i6
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.ipv4 import ICMP, parse_ipv4
from usnet.proto.wire.ipv6 import ICMPV6, IPV6_HLEN, parse_ipv6

__all__ = [
    "IPV6_RECVERR", "IP_RECVERR", "SOL_IP", "SOL_IPV6", "SO_EE_ORIGIN_ICMP", "SO_EE_ORIGIN_ICMP6",
    "SO_EE_ORIGIN_LOCAL", "SO_EE_ORIGIN_TIMESTAMPING", "ErrorReport", "as_mapped", "icmp_report", "is_icmp",
    "local_report", "pack_cmsg", "tcp_connect_report", "tx_stamp_report",
]

SOL_IP, SOL_IPV6, IP_RECVERR, IPV6_RECVERR = 0, 41, 11, 25
SO_EE_ORIGIN_LOCAL, SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6, SO_EE_ORIGIN_TIMESTAMPING = 1, 2, 3, 4
SCM_TSTAMP_SND = 0  # include/uapi/linux/errqueue.h: a transmit stamp's ee_info (SCHED 1, ACK 2)
_ENOMSG = 42
_AF_INET, _AF_INET6 = 2, 10
_EE = struct.Struct("=IBBBBII")  # struct sock_extended_err, host order (16 bytes)
_SIN = struct.Struct("=H2s4s8x")  # struct sockaddr_in: family (host order), port (network), address
_SIN6 = struct.Struct("=H2sI16sI")  # struct sockaddr_in6: family, port, flowinfo, address, scope id
_UDP, _UDP_HLEN = 17, 8


@dataclass(frozen=True, slots=True)
class ErrorReport:
    """One ICMP error about a datagram we sent: what `recvmsg(MSG_ERRQUEUE)` gives for it.

    `sport`: the quoted datagram's source port (ours); `dst`, `dport`: its destination;
    `offender`: the ICMP message's sender; `payload`: the quoted datagram's payload."""

    errno: int
    origin: int
    type: int
    code: int
    info: int
    offender: bytes
    src: bytes
    sport: int
    dst: bytes
    dport: int
    payload: bytes
    data: int = 0  # ee_data: a transmit stamp's key (SOF_TIMESTAMPING_OPT_ID), else 0
    stamp: int = 0  # a transmit stamp's time (ns, realtime), given as SCM_TIMESTAMPING's ts[0]


def is_icmp(r: ErrorReport) -> bool:
    """Whether `r` is an ICMP error (is_icmp_err_skb): only those set the socket's error."""
    return r.origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6)


def tx_stamp_report(ns: int, key: int, v6: bool, info: int = SCM_TSTAMP_SND) -> ErrorReport:
    """A software transmit stamp (SOF_TIMESTAMPING_TX_SOFTWARE) as __skb_complete_tx_timestamp
    queues it: ENOMSG, origin SO_EE_ORIGIN_TIMESTAMPING, ee_info SCM_TSTAMP_SND (a TCP socket's
    TX_SCHED and TX_ACK: SCM_TSTAMP_SCHED 1, SCM_TSTAMP_ACK 2, `info`), ee_data the key;
    no offender (zeros) and no address (ip_recv_error names one only for a port). The payload is
    empty, as with SOF_TIMESTAMPING_OPT_TSONLY (Linux's without it is the frame as the device had
    it, link header and all, which the client's stack does not see)."""
    zero = bytes(16 if v6 else 4)
    return ErrorReport(_ENOMSG, SO_EE_ORIGIN_TIMESTAMPING, 0, 0, info, zero, zero, 0, zero, 0, b"",
                       key, ns)


def icmp_report(packet: bytes) -> ErrorReport | None:
    """The report of an ICMP (IPv4) or ICMPv6 error quoting a UDP datagram, from the whole IP packet
    as the flow switch passes it; None if it is not one, or its checksum or quote is bad."""
    try:
        if packet[0] >> 4 == 4:
            ihl, total, _i, _f, _t, proto, src, _d = parse_ipv4(packet, 0, verify_checksum=False)
            if proto != ICMP:
                return None
            typ, code, hi, lo, q = _i4.parse_icmp(packet, ihl, total - ihl)
            if typ not in _ie.ICMP4_ERRORS:
                return None
            quoted = _ie.quote4(packet[:total], q)
            err, origin = _ie.icmp4_errno(typ, code), SO_EE_ORIGIN_ICMP
            if typ == _i4.PARAM_PROBLEM:
                info = hi >> 8  # the pointer: the second word's first byte (Linux: gateway >> 24)
            elif typ == _i4.DEST_UNREACH and code == _i4.FRAG_NEEDED:
                info = lo  # the next-hop MTU (RFC 1191)
            else:
                info = 0
        else:
            _tc, _fl, plen, nh, _hop, src, dst = parse_ipv6(packet, 0)
            if nh != ICMPV6:
                return None
            typ, code, hi, lo, q = _i6.parse_icmpv6(packet, IPV6_HLEN, plen, src, dst)
            if typ not in _i6.ERRORS:
                return None
            quoted = _ie.quote6(packet[: IPV6_HLEN + plen], q)
            err, origin, info = _ie.icmp6_errno(typ, code), SO_EE_ORIGIN_ICMP6, (hi << 16) | lo
    except (WireError, struct.error, IndexError):
        return None
    if quoted is None or quoted[0] != _UDP:
        return None
    _proto, qsrc, qdst, sport, dport, _total, t = quoted
    if sport is None or dport is None:
        return None
    return ErrorReport(err, origin, typ, code, info, bytes(src), qsrc, sport, qdst, dport, bytes(t[_UDP_HLEN:]))


def tcp_connect_report(err: int, icmp_type: int, icmp_code: int, reporter: bytes, local: bytes, lport: int,
                       remote: bytes, rport: int, quote: bytes | memoryview) -> ErrorReport:
    """The report Linux queues when an ICMP error ends a TCP connect in SYN-SENT (tcp_v4_err and
    tcp_v6_err call ip_icmp_error / ipv6_icmp_error before tcp_done): as a datagram's, with the
    quoted TCP header on as the payload (8 bytes, as much as a router quotes after the IP
    header). `ee_info` is 0: a "fragmentation needed" does not end a connect, and the pointer of
    a parameter problem is not carried by the IP layer's event (usnet.proto.ip.IcmpError)."""
    origin = SO_EE_ORIGIN_ICMP if len(reporter) == 4 else SO_EE_ORIGIN_ICMP6
    return ErrorReport(err, origin, icmp_type, icmp_code, 0, bytes(reporter), bytes(local), lport, bytes(remote),
                       rport, bytes(quote))


def as_mapped(r: ErrorReport) -> ErrorReport:
    """An IPv4 report as an AF_INET6 socket reads it (ipv6_recv_error): its addresses, the
    offender's too, as IPv4-mapped IPv6 addresses; the origin and ICMP type stay IPv4's."""
    if len(r.dst) != 4:
        return r
    m = b"\0" * 10 + b"\xff\xff"
    return replace(r, offender=m + r.offender, src=m + r.src, dst=m + r.dst)


def local_report(err: int, dst: bytes, dport: int, info: int) -> ErrorReport:
    """A local error (SO_EE_ORIGIN_LOCAL) about a datagram to `dst` that was not sent, as Linux's
    ip_local_error / ipv6_local_error queue it: EMSGSIZE with the MTU as `info` for a datagram over
    it under IP_PMTUDISC_DO. No payload and no offender (the control message's address is zeros,
    family 0 too: ipv4_datagram_support_cmsg says no for a local error); `dport` is what Linux
    puts there: IPv4's connected port (0 if unconnected), IPv6's destination port."""
    zero = bytes(len(dst))
    return ErrorReport(err, SO_EE_ORIGIN_LOCAL, 0, 0, info, zero, zero, 0, bytes(dst), dport, b"")


def pack_cmsg(r: ErrorReport) -> tuple[int, int, bytes]:
    """The control message of `r` as recvmsg gives it: (level, type, sock_extended_err + offender)."""
    ee = _EE.pack(r.errno, r.origin, r.type, r.code, 0, r.info, r.data)
    family = None if is_icmp(r) else 0  # a local error or a stamp names no offender
    if len(r.offender) == 4:
        if family == 0:
            return SOL_IP, IP_RECVERR, ee + bytes(_SIN.size)
        return SOL_IP, IP_RECVERR, ee + _SIN.pack(_AF_INET, b"\0\0", r.offender)
    if family == 0:
        return SOL_IPV6, IPV6_RECVERR, ee + bytes(_SIN6.size)
    return SOL_IPV6, IPV6_RECVERR, ee + _SIN6.pack(_AF_INET6, b"\0\0", 0, r.offender, 0)
