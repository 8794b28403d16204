"""The socket options usnet's socket faces know: one table for the stream and the datagram face.

Linux answers ENOPROTOOPT for an option that does not exist at its level, and a program (or
a library that tries an option and falls back) relies on that answer. A face that stored
every option and read it back would tell a program that asked for, say, SO_BINDTODEVICE or
TCP_FASTOPEN that it had it. So every (level, option) a face accepts is listed here, with
what usnet does with it:

- `HONOURED`: the face acts on it (its setsockopt/getsockopt code says how);
- `STORED`: accepted and read back, with no effect in usnet; each says why that is harmless
  for a program (a hint Linux may ignore too, a marking no peer relies on, ...);
- `GET_ONLY`: a value the face reports; setting it is ENOPROTOOPT, as on Linux (SO_TYPE,
  SO_ERROR, SO_SNDLOWAT, ...);
- `FIXED`: the value usnet uses: reading gives it, setting that same value is accepted, any
  other is ENOPROTOOPT, because usnet cannot do it and a program that wanted it must learn so
  at once rather than run without it (none now: SO_RCVLOWAT was, and is honoured).

Everything else is ENOPROTOOPT on setsockopt, and on getsockopt what Linux gives: ENOPROTOOPT
for an unknown option of a level the socket has, and for a level it does not have EOPNOTSUPP
on an AF_INET socket (ip_getsockopt's answer) and ENOPROTOOPT on an AF_INET6 one
(ipv6_getsockopt's). Options that Linux has but usnet does not (SO_MARK, IP_TRANSPARENT,
IP_MTU_DISCOVER on a stream socket, the multicast group options, UDP_SEGMENT, ...) are
ENOPROTOOPT too, with a message that says usnet does not have it.
A value Linux converts or checks is kept as Linux keeps it (`kept`): TCP_CORK and TCP_QUICKACK
read 0 or 1, TCP_DEFER_ACCEPT's seconds are rounded up to whole SYN-ACK retransmissions,
TCP_FASTOPEN's queue is bounded by somaxconn, SO_RCVLOWAT reads INT_MAX for a negative value
and 1 for 0 (a stream socket's also capped as tcp_set_rcvlowat caps it: the stream face), and
the wrong state or value is EINVAL.

SO_RCVTIMEO and SO_SNDTIMEO (and their _NEW numbers, one timeout each) take a struct timeval
(usnet.proto.cmsg), kept in the running kernel's jiffies as Linux keeps it, so getsockopt reads
the same rounded value; on a blocking socket (no Python timeout) recv, recvfrom, accept and send
end with BlockingIOError (EAGAIN) when it runs out, as CPython raises the kernel's EAGAIN; a
Python timeout (settimeout) takes over, as CPython's poll does on the kernel.

On a datagram socket SO_TIMESTAMP, SO_TIMESTAMPNS and their _NEW numbers (one state, read as
Linux reads its flags) make recvmsg give the datagram's arrival time (usnet.client.rxinfo),
and a stream socket's the arrival of the last byte read, as Linux's tcp_recv_timestamp
(usnet.proto.tcp.rxstamp). SO_TIMESTAMPING(_NEW) takes Linux's flags with Linux's checks and
reads them back; its software receive stamp (RX_SOFTWARE | SOFTWARE) is that same arrival, in
SCM_TIMESTAMPING's ts[0]. A UDP socket's TX_SOFTWARE queues a transmit stamp per datagram on its
error queue (as with OPT_TSONLY: no payload); a TCP socket's TX_SCHED, TX_SOFTWARE and TX_ACK
stamp the last byte of each send (usnet.proto.tcp.txstamp); the hardware flags and
TX_COMPLETION are kept but never reported.

IP_PKTINFO (IPV6_RECVPKTINFO) makes a datagram socket's recvmsg give in_pktinfo (in6_pktinfo):
the address the datagram was sent to and the kernel interface index of the netif's name (the
TAP or NIC it is on, "lo" for the loopback netif); sendmsg's IP_PKTINFO (IPV6_PKTINFO) control
message chooses the source among the socket's addresses, as a DNS server bound to the wildcard
answers from the address it was asked on. IP_RECVTTL, IP_RECVTOS (IPV6_RECVHOPLIMIT,
IPV6_RECVTCLASS) give each datagram's header fields as the client's stack received them (the
DSCP is the flow switch's: 0 outside a low-latency lease). A stream socket keeps these bits,
as Linux's TCP, which gives none of them.

What the standard library and common libraries set is here and works: asyncio (TCP_NODELAY,
SO_REUSEADDR, SO_REUSEPORT, SO_BROADCAST, IPV6_V6ONLY, SO_ERROR), socketserver and http.server
(SO_REUSEADDR, SO_REUSEPORT, TCP_NODELAY, IPV6_V6ONLY), http.client (TCP_NODELAY), urllib3
(TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE/KEEPINTVL/KEEPCNT through `socket_options`), trio
(TCP_NODELAY, TCP_NOTSENT_LOWAT, SO_DOMAIN/SO_TYPE/SO_PROTOCOL, IPV6_V6ONLY).
"""

from __future__ import annotations

import enum
import errno
import operator
import socket as _std
from dataclasses import dataclass
from typing import Any

from usnet.proto import cmsg as _cm
from usnet.proto.ipmark import make_mark

__all__ = ["IP_MARKING", "OPTIONS", "TIMEO_OPTIONS", "Kind", "Option", "bind_device", "buflen_arg", "check_fixed",
           "defer_retrans", "device_value", "ip_mark", "ip_option", "kept", "kernel_hz", "lookup", "not_available",
           "timeo_get", "timeo_key", "timeo_seconds", "timeo_set"]

SOL_SOCKET, IPPROTO_IP, IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP = 1, 0, 41, 6, 17


class Kind(enum.Enum):
    HONOURED = "honoured"
    STORED = "stored"
    GET_ONLY = "get-only"
    FIXED = "fixed"


@dataclass(frozen=True)
class Option:
    """One option: its name, what usnet does with it, its value before any setsockopt (Linux's
    default), which faces have it and why (for STORED and FIXED: why that is enough)."""

    name: str
    kind: Kind
    default: Any = 0
    stream: bool = True
    dgram: bool = True
    why: str = ""


_H, _S, _G, _F = Kind.HONOURED, Kind.STORED, Kind.GET_ONLY, Kind.FIXED

# Linux's numbers (the standard module lacks some names on some builds)
# RFC 3678's protocol-independent membership options, the same numbers at IPPROTO_IP and IPPROTO_IPV6
OPTIONS_MCAST = {42: "MCAST_JOIN_GROUP", 43: "MCAST_BLOCK_SOURCE", 44: "MCAST_UNBLOCK_SOURCE",
                 45: "MCAST_LEAVE_GROUP", 46: "MCAST_JOIN_SOURCE_GROUP", 47: "MCAST_LEAVE_SOURCE_GROUP"}
OPTIONS: dict[tuple[int, int], Option] = {
    # -- SOL_SOCKET ------------------------------------------------------------------------
    (SOL_SOCKET, 1): Option("SO_DEBUG", _S, why="a kernel tracing switch; nothing to trace"),
    (SOL_SOCKET, 2): Option("SO_REUSEADDR", _H),
    (SOL_SOCKET, 3): Option("SO_TYPE", _G),
    (SOL_SOCKET, 4): Option("SO_ERROR", _G),
    (SOL_SOCKET, 6): Option("SO_BROADCAST", _H, why="the datagram face's sends check it; on a stream "
                            "socket it is stored, as Linux stores it there"),
    (SOL_SOCKET, 7): Option("SO_SNDBUF", _H),
    (SOL_SOCKET, 8): Option("SO_RCVBUF", _H),
    (SOL_SOCKET, 9): Option("SO_KEEPALIVE", _H, why="stream: probes; datagram: stored, as Linux's UDP"),
    (SOL_SOCKET, 10): Option("SO_OOBINLINE", _S, why="usnet has no out-of-band data: urgent bytes "
                             "stay in the stream, which is what SO_OOBINLINE asks for"),
    (SOL_SOCKET, 12): Option("SO_PRIORITY", _S, why="the kernel's queueing class for the socket's "
                             "packets; usnet's leave through the domain's device, one queue"),
    (SOL_SOCKET, 13): Option("SO_LINGER", _H, why="stream: close waits or resets; datagram: stored, as Linux's UDP"),
    (SOL_SOCKET, 15): Option("SO_REUSEPORT", _H),
    (SOL_SOCKET, 25): Option("SO_BINDTODEVICE", _H, b"", why="the usnet netif by its name in the domain "
                             "(`bind_device`)"),
    (SOL_SOCKET, 18): Option("SO_RCVLOWAT", _H, 1, why="stream: readable, and a blocking recv returns, once "
                             "that many bytes are queued (or EOF, an error), as tcp_poll and tcp_recvmsg's "
                             "target; datagram: stored, as Linux's UDP ignores it"),
    (SOL_SOCKET, 19): Option("SO_SNDLOWAT", _G, 1),  # Linux: readable 1, setting it ENOPROTOOPT
    (SOL_SOCKET, 20): Option("SO_RCVTIMEO", _H, bytes(16), why="a blocking call's receive timeout "
                             "(recv, accept), kept in the kernel's jiffies (usnet.proto.cmsg)"),
    (SOL_SOCKET, 21): Option("SO_SNDTIMEO", _H, bytes(16), why="a blocking send's timeout, as SO_RCVTIMEO"),
    (SOL_SOCKET, 66): Option("SO_RCVTIMEO_NEW", _H, bytes(16), why="SO_RCVTIMEO (the same timeout)"),
    (SOL_SOCKET, 67): Option("SO_SNDTIMEO_NEW", _H, bytes(16), why="SO_SNDTIMEO (the same timeout)"),
    (SOL_SOCKET, 29): Option("SO_TIMESTAMP", _H, why="recvmsg gives the datagram's arrival "
                             "(usnet.client.rxinfo), a stream's that of the last byte read "
                             "(usnet.proto.tcp.rxstamp)"),
    (SOL_SOCKET, 35): Option("SO_TIMESTAMPNS", _H, why="as SO_TIMESTAMP, in nanoseconds"),
    (SOL_SOCKET, 63): Option("SO_TIMESTAMP_NEW", _H, why="as SO_TIMESTAMP"),
    (SOL_SOCKET, 64): Option("SO_TIMESTAMPNS_NEW", _H, why="as SO_TIMESTAMPNS"),
    (SOL_SOCKET, 37): Option("SO_TIMESTAMPING", _H, bytes(8), why="its flags checked and kept as Linux's; "
                             "RX_SOFTWARE with SOFTWARE: recvmsg gives SCM_TIMESTAMPING with the arrival "
                             "SO_TIMESTAMP gives (usnet.client.rxinfo); TX_SOFTWARE: a UDP "
                             "datagram's send time on the error queue; TX_SCHED, TX_SOFTWARE, TX_ACK: "
                             "a TCP send's last byte's (usnet.proto.tcp.txstamp)"),
    (SOL_SOCKET, 65): Option("SO_TIMESTAMPING_NEW", _H, bytes(8), why="as SO_TIMESTAMPING, of type "
                             "SCM_TIMESTAMPING_NEW"),
    (SOL_SOCKET, 30): Option("SO_ACCEPTCONN", _G),
    (SOL_SOCKET, 38): Option("SO_PROTOCOL", _G),
    (SOL_SOCKET, 39): Option("SO_DOMAIN", _G),
    # -- IPPROTO_TCP (a stream socket's) -----------------------------------------------------
    (IPPROTO_TCP, 1): Option("TCP_NODELAY", _H, dgram=False),
    (IPPROTO_TCP, 2): Option("TCP_MAXSEG", _H, 536, dgram=False),
    (IPPROTO_TCP, 3): Option("TCP_CORK", _H, dgram=False, why="only full segments leave while set "
                             "(usnet.proto.tcp.cork)"),
    (IPPROTO_TCP, 4): Option("TCP_KEEPIDLE", _H, 7200, dgram=False),
    (IPPROTO_TCP, 5): Option("TCP_KEEPINTVL", _H, 75, dgram=False),
    (IPPROTO_TCP, 6): Option("TCP_KEEPCNT", _H, 9, dgram=False),
    (IPPROTO_TCP, 9): Option("TCP_DEFER_ACCEPT", _H, dgram=False,
                             why="a listener's connection is acceptable once data came, or when the "
                             "period is over, as Linux's request sock (usnet.proto.tcp.defer)"),
    (IPPROTO_TCP, 12): Option("TCP_QUICKACK", _H, 1, dgram=False,
                              why="0: the connection is interactive (ACKs wait for an answer); 1: it "
                              "is not, and a delayed ACK goes now (usnet.proto.tcp.quickack); reads "
                              "whether it is not interactive, as Linux's"),
    (IPPROTO_TCP, 13): Option("TCP_CONGESTION", _H, dgram=False),
    (IPPROTO_TCP, 18): Option("TCP_USER_TIMEOUT", _H, dgram=False),
    (IPPROTO_TCP, 23): Option("TCP_FASTOPEN", _S, dgram=False,
                              why="a listener's queue of SYNs with data; usnet gives no cookie, so a "
                              "client makes a normal handshake, as with a Linux server before its first"),
    (IPPROTO_TCP, 30): Option("TCP_FASTOPEN_CONNECT", _S, dgram=False,
                              why="data in the SYN when a cookie is cached: usnet has none, and Linux "
                              "without one makes a normal handshake too"),
    (IPPROTO_TCP, 25): Option("TCP_NOTSENT_LOWAT", _H, dgram=False,
                              why="unsent bytes that make send wait and the socket unwritable (trio "
                              "sets it): TcpConnection.send_space and notsent_ok"),
    # -- IPPROTO_IP (both families, as Linux passes SOL_IP of an AF_INET6 socket to IPv4) -----
    (IPPROTO_IP, 1): Option("IP_TOS", _H, why="the TOS octet of the socket's IPv4 packets (a stream "
                            "socket's ECN bits are TCP's); the domain's switch writes the DSCP of a "
                            "flow's low-latency class over it (docs/abi.md)"),
    (IPPROTO_IP, 2): Option("IP_TTL", _H, 64, why="the TTL of the socket's IPv4 packets; -1: 64"),
    (IPPROTO_IP, 8): Option("IP_PKTINFO", _H, why="recvmsg gives a datagram's in_pktinfo (usnet.client."
                            "rxinfo); a stream socket keeps it, as Linux's TCP, which gives none"),
    (IPPROTO_IP, 12): Option("IP_RECVTTL", _H, why="recvmsg gives a datagram's TTL (IP_TTL); stream: kept"),
    (IPPROTO_IP, 13): Option("IP_RECVTOS", _H, why="recvmsg gives a datagram's TOS (IP_TOS); stream: kept"),
    (IPPROTO_IP, 11): Option("IP_RECVERR", _H,
                             why="UDP: every ICMP error about a datagram sent is queued for recvmsg(MSG_ERRQUEUE) "
                             "and is the socket's error (usnet.proto.errqueue); on an AF_INET6 datagram socket "
                             "IPv4's, which it never carries: stored, as Linux keeps it. TCP: an ICMP error "
                             "about a synchronised connection is the socket's error at once (TcpConfig.recverr)"),
    (IPPROTO_IP, 10): Option("IP_MTU_DISCOVER", _H, 1, stream=False,
                             why="IP_PMTUDISC_DO, PROBE and INTERFACE: a datagram over the MTU is EMSGSIZE "
                             "(with IP_RECVERR also a local error on the error queue, as ip_local_error) instead "
                             "of fragments; DONT, WANT (the default) and OMIT: fragments"),
    (IPPROTO_IP, 32): Option("IP_MULTICAST_IF", _H, 0, stream=False,
                             why="in_addr, ip_mreq or ip_mreqn: the interface a group datagram leaves by, "
                             "checked to be the socket's netif (usnet.client.mcast); read back as in_addr"),
    (IPPROTO_IP, 33): Option("IP_MULTICAST_TTL", _H, 1, stream=False,
                             why="the TTL of the socket's datagrams to IPv4 groups (usnet.client.mcast)"),
    (IPPROTO_IP, 34): Option("IP_MULTICAST_LOOP", _H, 1, stream=False,
                             why="whether its group datagrams reach the group's members in the domain too"),
    (IPPROTO_IP, 35): Option("IP_ADD_MEMBERSHIP", _H, stream=False,
                             why="ip_mreq or ip_mreqn: the domain makes the flow a member (P.JoinGroup)"),
    (IPPROTO_IP, 36): Option("IP_DROP_MEMBERSHIP", _H, stream=False, why="as IP_ADD_MEMBERSHIP"),
    (IPPROTO_IP, 49): Option("IP_MULTICAST_ALL", _H, 1, stream=False,
                             why="1: a socket on a group's port hears the group if any socket of the port "
                             "joined it, as Linux's; 0: only its own groups (P.JoinGroup's all)"),
    (IPPROTO_IP, 37): Option("IP_UNBLOCK_SOURCE", _H, stream=False, why="as IP_BLOCK_SOURCE"),
    (IPPROTO_IP, 38): Option("IP_BLOCK_SOURCE", _H, stream=False,
                             why="ip_mreq_source: an any-source member stops hearing a source (P.SourceFilter, "
                             "EXCLUDE mode; at most 10, Linux's igmp_max_msf)"),
    (IPPROTO_IP, 39): Option("IP_ADD_SOURCE_MEMBERSHIP", _H, stream=False,
                             why="ip_mreq_source: the flow hears the group from this source (P.JoinGroup's or "
                             "P.SourceFilter's INCLUDE sources); IGMPv3 says ALLOW"),
    (IPPROTO_IP, 40): Option("IP_DROP_SOURCE_MEMBERSHIP", _H, stream=False,
                             why="as IP_ADD_SOURCE_MEMBERSHIP; the last source leaves the group"),
    (IPPROTO_IP, 41): Option("IP_MSFILTER", _H, stream=False,
                             why="ip_msfilter: a membership's whole filter (P.SourceFilter; INCLUDE {} leaves); "
                             "getsockopt reads the caller's struct for the group (usnet.client.mcast)"),
    (IPPROTO_IP, 48): Option("MCAST_MSFILTER", _H, stream=False, why="group_filter: as IP_MSFILTER, by index"),
    **{(IPPROTO_IP, o): Option(n, _H, stream=False, why="RFC 3678's group_req / group_source_req at IPPROTO_IP: "
                               "as its ip_mreq(_source) twin (usnet.client.mcast)")
       for o, n in OPTIONS_MCAST.items()},
    # -- IPPROTO_IPV6 (an AF_INET6 socket's) -------------------------------------------------
    (IPPROTO_IPV6, 16): Option("IPV6_UNICAST_HOPS", _H, 64, why="the hop limit of the socket's IPv6 "
                               "packets; -1: 64"),
    (IPPROTO_IPV6, 17): Option("IPV6_MULTICAST_IF", _H, 0, stream=False,
                               why="an interface index (ENODEV for none of the host's); usnet sends on its netif"),
    (IPPROTO_IPV6, 18): Option("IPV6_MULTICAST_HOPS", _H, 1, stream=False,
                               why="the hop limit of the socket's datagrams to IPv6 groups (usnet.client.mcast)"),
    (IPPROTO_IPV6, 19): Option("IPV6_MULTICAST_LOOP", _H, 1, stream=False,
                               why="0 or 1, as Linux: whether its group datagrams reach the members in the domain"),
    (IPPROTO_IPV6, 20): Option("IPV6_JOIN_GROUP", _H, stream=False,
                               why="ipv6_mreq: the domain makes the flow a member (P.JoinGroup) and speaks MLD"),
    (IPPROTO_IPV6, 21): Option("IPV6_LEAVE_GROUP", _H, stream=False, why="as IPV6_JOIN_GROUP"),
    (IPPROTO_IPV6, 29): Option("IPV6_MULTICAST_ALL", _H, 1, stream=False, why="as IP_MULTICAST_ALL, for IPv6 groups"),
    **{(IPPROTO_IPV6, o): Option(OPTIONS_MCAST[o], _H, stream=False, why="RFC 3678's group_req / group_source_req "
                                 "for IPv6 groups (usnet.client.mcast; 64 sources, mld_max_msf)")
       for o in (42, 43, 44, 45, 46, 47)},
    (IPPROTO_IPV6, 48): Option("MCAST_MSFILTER", _H, stream=False,
                               why="group_filter: an IPv6 membership's whole filter (64 sources, mld_max_msf)"),
    (IPPROTO_IPV6, 23): Option("IPV6_MTU_DISCOVER", _H, 1, stream=False,
                               why="IP_MTU_DISCOVER of an AF_INET6 socket's IPv6 datagrams"),
    (IPPROTO_IPV6, 25): Option("IPV6_RECVERR", _H, why="IP_RECVERR of an AF_INET6 socket (for TCP: of its "
                               "IPv6 connections; an IPv4-mapped one reads IP_RECVERR, as Linux's)"),
    (IPPROTO_IPV6, 26): Option("IPV6_V6ONLY", _H),
    (IPPROTO_IPV6, 49): Option("IPV6_RECVPKTINFO", _H, why="recvmsg gives a datagram's in6_pktinfo, as "
                               "IP_PKTINFO"),
    (IPPROTO_IPV6, 51): Option("IPV6_RECVHOPLIMIT", _H, why="recvmsg gives a datagram's hop limit; stream: kept"),
    (IPPROTO_IPV6, 66): Option("IPV6_RECVTCLASS", _H, why="recvmsg gives a datagram's traffic class; stream: kept"),
    (IPPROTO_IPV6, 67): Option("IPV6_TCLASS", _H, why="the traffic class of the socket's IPv6 packets, "
                               "as IP_TOS; -1: 0"),
}

# what a program that asks for an absent option should use instead
_ABSENT = {(IPPROTO_TCP, 11): "TCP_INFO: usnet's TCP statistics are the socket's tcp_info()"}

# The levels a socket has, by (family, type): Linux's protocol chain for it
_LEVELS: dict[tuple[int, int], tuple[int, ...]] = {
    (_std.AF_INET, _std.SOCK_STREAM): (SOL_SOCKET, IPPROTO_TCP, IPPROTO_IP),
    (_std.AF_INET6, _std.SOCK_STREAM): (SOL_SOCKET, IPPROTO_TCP, IPPROTO_IP, IPPROTO_IPV6),
    (_std.AF_INET, _std.SOCK_DGRAM): (SOL_SOCKET, IPPROTO_UDP, IPPROTO_IP),
    (_std.AF_INET6, _std.SOCK_DGRAM): (SOL_SOCKET, IPPROTO_UDP, IPPROTO_IP, IPPROTO_IPV6),
}


def not_available(level: int, opt: int, why: str = "") -> OSError:
    """ENOPROTOOPT, saying that usnet does not have the option (the message names it)."""
    return OSError(errno.ENOPROTOOPT, f"Protocol not available (usnet has no option {opt} at level "
                   f"{level}{': ' + why if why else ''})")


def lookup(family: int, kind: int, level: int, opt: int, setting: bool) -> Option:
    """The option a `family`/`kind` socket has at (`level`, `opt`), or the OSError Linux would
    raise (see the module docstring); GET_ONLY options raise here when `setting`."""
    spec = OPTIONS.get((level, opt))
    if spec is not None and (spec.stream if kind == _std.SOCK_STREAM else spec.dgram) \
            and level in _LEVELS[family, kind]:
        if setting and spec.kind is Kind.GET_ONLY:
            raise OSError(errno.ENOPROTOOPT, f"Protocol not available ({spec.name} cannot be set)")
        return spec
    if not setting and level not in _LEVELS[family, kind] and family == _std.AF_INET:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")
    raise not_available(level, opt, _ABSENT.get((level, opt), ""))


TCP_CORK, TCP_DEFER_ACCEPT, TCP_QUICKACK, TCP_FASTOPEN, TCP_NOTSENT_LOWAT, TCP_FASTOPEN_CONNECT = 3, 9, 12, 23, 25, 30
IP_RECVERR, IPV6_RECVERR = 11, 25
SO_RCVLOWAT = 18
_INT_MAX = 2**31 - 1
IP_MTU_DISCOVER, IPV6_MTU_DISCOVER = 10, 23
PMTUDISC_DO, PMTUDISC_OMIT = 2, 5  # (IP_PMTUDISC_*, IPV6_PMTUDISC_* alike: DONT 0 .. OMIT 5)


def kept(level: int, opt: int, value: Any, *, listening: bool, connected: bool) -> Any:
    """The value Linux keeps for an option it converts or checks (do_tcp_setsockopt), or
    OSError(EINVAL) where Linux refuses the value or the socket's state; `value` otherwise."""
    if (level, opt) in ((IPPROTO_IP, IP_RECVERR), (IPPROTO_IPV6, IPV6_RECVERR)):
        return int(_as_int(value) != 0)  # Linux keeps a bit
    if (level, opt) == (SOL_SOCKET, SO_RCVLOWAT):  # sock_setsockopt: negative is INT_MAX, 0 is 1
        v = _as_int(value)
        return _INT_MAX if v < 0 else v or 1
    if (level, opt) in ((IPPROTO_IP, IP_MTU_DISCOVER), (IPPROTO_IPV6, IPV6_MTU_DISCOVER)):
        v = _as_int(value)
        if not 0 <= v <= PMTUDISC_OMIT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return v
    if level != IPPROTO_TCP or opt not in (TCP_CORK, TCP_DEFER_ACCEPT, TCP_QUICKACK, TCP_FASTOPEN,
                                           TCP_NOTSENT_LOWAT, TCP_FASTOPEN_CONNECT):
        return value
    v = _as_int(value)
    if opt == TCP_NOTSENT_LOWAT:
        return v
    if opt in (TCP_CORK, TCP_QUICKACK):
        return int(v != 0)
    if opt == TCP_DEFER_ACCEPT:
        return _retrans_to_secs(_secs_to_retrans(v))
    if opt == TCP_FASTOPEN:  # the queue's length, in state CLOSE or LISTEN
        if v < 0 or connected:
            raise OSError(errno.EINVAL, "Invalid argument")
        return min(v, _somaxconn())
    if not 0 <= v <= 1 or connected or listening:  # TCP_FASTOPEN_CONNECT: 0 or 1, before connect
        raise OSError(errno.EINVAL, "Invalid argument")
    return v


def defer_retrans(seconds: int) -> int:
    """TCP_DEFER_ACCEPT's value (seconds, as `kept` keeps it) as the listener acts on it: SYN-ACK
    retransmissions (usnet.proto.tcp.defer), as Linux's rskq_defer_accept."""
    return _secs_to_retrans(int(seconds))


def _secs_to_retrans(seconds: int, timeout: int = 1, rto_max: int = 120) -> int:
    """Linux's secs_to_retrans (TCP_TIMEOUT_INIT 1 s, TCP_RTO_MAX 120 s): the SYN-ACK
    retransmissions that cover `seconds`."""
    res = 0
    if seconds > 0:
        period, res = timeout, 1
        while seconds > period and res < 255:
            res += 1
            timeout = min(timeout << 1, rto_max)
            period += timeout
    return res


def _retrans_to_secs(retrans: int, timeout: int = 1, rto_max: int = 120) -> int:
    """Linux's retrans_to_secs: what getsockopt(TCP_DEFER_ACCEPT) reads."""
    period = 0
    if retrans > 0:
        period = timeout
        for _ in range(retrans - 1):
            timeout = min(timeout << 1, rto_max)
            period += timeout
    return period


def _somaxconn() -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 4096


def bind_device(value: Any, mine: str, names: list[str]) -> str:
    """SO_BINDTODEVICE: the netif name a socket is bound to from `value` (bytes, up to the first
    NUL, as Linux reads it; "" unbinds). usnet's netifs are its domain's (`names`), not the
    kernel's interfaces: a name the domain does not have is ENODEV, as Linux says of a device it
    lacks; `mine` is the netif the socket's flow is on ("" before bind or connect), and
    another name once there is one is EINVAL (usnet moves no flow to another netif)."""
    if isinstance(value, int):
        value = value.to_bytes(4, "little", signed=True)
    name = bytes(value[:15]).split(b"\0", 1)[0].decode(errors="replace")
    if not name:
        return ""
    if name not in names:
        raise OSError(errno.ENODEV, f"No such device (usnet has no netif {name!r}; its netifs: "
                      f"{', '.join(names)})")
    if mine and name != mine:
        raise OSError(errno.EINVAL, f"Invalid argument (usnet: the socket's flow is on netif {mine!r}; "
                      "SO_BINDTODEVICE chooses one before bind or connect)")
    return name


def device_value(name: str, buflen: int) -> bytes | int:
    """What getsockopt(SO_BINDTODEVICE) gives, as Linux's sock_getbindtodevice: unbound, nothing
    (0 as an int); bound, the name and its NUL, and EINVAL for a buffer shorter than IFNAMSIZ."""
    if not name:
        return b"" if buflen else 0
    if buflen < 16:
        raise OSError(errno.EINVAL, "Invalid argument")
    return name.encode() + b"\0"


def check_fixed(spec: Option, level: int, opt: int, value: Any) -> None:
    """A FIXED option takes only the value usnet uses."""
    if spec.kind is Kind.FIXED and _as_int(value) != spec.default:
        raise not_available(level, opt, f"{spec.name} is {spec.default} in usnet ({spec.why})")


def _as_int(value: Any) -> int:
    if isinstance(value, (bytes, bytearray)):
        return int.from_bytes(bytes(value[:4]).ljust(4, b"\0"), "little", signed=True)
    return int(value)


# -- the options that mark a socket's IP headers (issue 16) ------------------------------------

IP_TOS, IP_TTL, IPV6_UNICAST_HOPS, IPV6_TCLASS = 1, 2, 16, 67
#: (level, option) of the options `ip_mark` reads: a face that sets one recomputes its mark
IP_MARKING = frozenset({(IPPROTO_IP, IP_TOS), (IPPROTO_IP, IP_TTL), (IPPROTO_IPV6, IPV6_UNICAST_HOPS),
                        (IPPROTO_IPV6, IPV6_TCLASS)})
_ECN_MASK = 3


def ip_option(kind: int, level: int, opt: int, value: Any) -> int | None:
    """The value a face keeps for an IP marking option, checked as Linux checks it; None: the
    default again (what getsockopt then reads is the table's default).

    IP_TTL: 1..255 or -1 (the default, 64); IPV6_UNICAST_HOPS: 0..255 or -1 (64); anything else
    EINVAL. IP_TOS: any int, kept as its low byte (Linux's u8); IPV6_TCLASS: 0..255 or -1 (0),
    else EINVAL. For a stream socket both keep their ECN bits 0: TCP's ECN is the stack's
    (Linux: `val &= ~INET_ECN_MASK`), a datagram socket's are taken as given.
    """
    if isinstance(value, (bytes, bytearray)) and len(value) < 4:
        # Linux: an IPv4 option takes an int, or one unsigned byte from a shorter buffer;
        # an IPv6 one wants a whole int
        if level == IPPROTO_IPV6 or not value:
            raise OSError(errno.EINVAL, "Invalid argument")
        value = value[0]
    v = _as_int(value)
    if (level, opt) == (IPPROTO_IP, IP_TTL):
        if v == -1:
            return None
        if not 1 <= v <= 255:
            raise OSError(errno.EINVAL, "Invalid argument")
        return v
    if (level, opt) == (IPPROTO_IPV6, IPV6_UNICAST_HOPS):
        if v == -1:
            return None
        if not 0 <= v <= 255:
            raise OSError(errno.EINVAL, "Invalid argument")
        return v
    if (level, opt) == (IPPROTO_IPV6, IPV6_TCLASS):
        if v == -1:
            return None
        if not 0 <= v <= 255:
            raise OSError(errno.EINVAL, "Invalid argument")
    v &= 0xFF
    return v & ~_ECN_MASK if kind == _std.SOCK_STREAM else v


def ip_mark(family: int, opts: dict[tuple[int, int], Any]) -> int:
    """The mark (usnet.proto.ipmark) of a socket's packets from what `opts` holds: IP_TOS and
    IP_TTL for an AF_INET socket, IPV6_TCLASS and IPV6_UNICAST_HOPS for an AF_INET6 one (whose
    IPv4-level options would mark IPv4 traffic, which a usnet AF_INET6 socket never carries)."""
    if family == _std.AF_INET6:
        return make_mark(opts.get((IPPROTO_IPV6, IPV6_TCLASS), 0), opts.get((IPPROTO_IPV6, IPV6_UNICAST_HOPS)))
    return make_mark(opts.get((IPPROTO_IP, IP_TOS), 0), opts.get((IPPROTO_IP, IP_TTL)))


# -- SO_RCVTIMEO, SO_SNDTIMEO (issue 16) ---------------------------------------------------------

#: the timeout options (old and _NEW numbers); `timeo_key` is where a face keeps each in its options
TIMEO_OPTIONS = frozenset({(SOL_SOCKET, o) for o in (_cm.SO_RCVTIMEO, _cm.SO_SNDTIMEO, _cm.SO_RCVTIMEO_NEW,
                                                    _cm.SO_SNDTIMEO_NEW)})
_hz: list[int] = []


def kernel_hz() -> int:
    """The running kernel's HZ, in which Linux keeps a socket timeout: measured once on a kernel
    socket (a 1 us SO_RCVTIMEO reads back as one jiffy); 1000 where no kernel socket can be made."""
    if not _hz:
        import _socket  # the C module: usnet.patch replaces socket.socket, never this
        hz = 1000
        try:
            k = _socket.socket(_std.AF_INET, _std.SOCK_DGRAM)
            try:
                k.setsockopt(SOL_SOCKET, _cm.SO_RCVTIMEO, _cm.TIMEVAL.pack(0, 1))
                usec = _cm.TIMEVAL.unpack(k.getsockopt(SOL_SOCKET, _cm.SO_RCVTIMEO, _cm.TIMEVAL.size))[1]
            finally:
                k.close()
            if usec > 0:
                hz = round(1_000_000 / usec)
        except OSError:
            pass
        _hz.append(hz)
    return _hz[0]


def timeo_key(opt: int) -> tuple[int, int]:
    """The one key of the receive or the send timeout, whichever number named it (Linux keeps
    one sk_rcvtimeo and one sk_sndtimeo)."""
    return SOL_SOCKET, _cm.SO_RCVTIMEO if opt in (_cm.SO_RCVTIMEO, _cm.SO_RCVTIMEO_NEW) else _cm.SO_SNDTIMEO


def timeo_set(value: Any) -> int | None:
    """The timeout a setsockopt value keeps (jiffies; None: none), as Linux's sock_set_timeout;
    an int (4 bytes) is shorter than a timeval: EINVAL."""
    if isinstance(value, int):
        raise OSError(errno.EINVAL, "Invalid argument")
    return _cm.timeval_jiffies(bytes(value), kernel_hz())


def timeo_get(jiffies: int | None) -> bytes:
    """The struct timeval getsockopt gives for a kept timeout."""
    return _cm.jiffies_timeval(jiffies, kernel_hz())


def timeo_seconds(jiffies: int) -> float:
    """How long a call waits for a kept timeout."""
    return jiffies / kernel_hz()


def buflen_arg(buflen: Any) -> int:
    """getsockopt's third argument as CPython's socket takes it (sock_getsockopt), before any
    option is looked at: an integer (anything else TypeError, a bytes object too), 0 for the
    option's int value, else 1 to 1024 (outside: OSError "getsockopt buflen out of range", no
    errno)."""
    n = operator.index(buflen)
    if n and not 0 < n <= 1024:
        raise OSError("getsockopt buflen out of range")
    return n
