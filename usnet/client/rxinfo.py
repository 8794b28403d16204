"""What a UDP socket's recvmsg tells besides the datagram, as Linux's (issue 16): the receive
timestamp (SO_TIMESTAMP, SO_TIMESTAMPNS and their _NEW numbers; SO_TIMESTAMPING's software
receive stamp), the packet information
(IP_PKTINFO, IPV6_RECVPKTINFO) and header fields (IP_RECVTTL, IP_RECVTOS, IPV6_RECVHOPLIMIT,
IPV6_RECVTCLASS: the flow switch hands the client the whole IP packet); and the source address
a sendmsg's IP_PKTINFO (IPV6_PKTINFO) control message chooses. The layouts are usnet.proto.cmsg's.

Why a datagram carries an `RxMeta` only while one of these is on: the stack's receive path
queues (payload, sender) pairs and allocates nothing more per datagram; a socket that asked
gets one shared (arrival time, flow) per batch taken from the ring (`DatagramEngine.take`), and
one per datagram if it asked for header fields (`DatagramSocket.keep_header`).
The arrival time is when the client's stack took the batch from its ring, the first moment
this process's stack has the datagram (Linux's is when its device driver had it: earlier by the
domain's and the ring's latency, which usnet does not carry). A datagram queued before the
option was set has none, and reads the time of the read, as Linux's __sock_recv_timestamp gives
an skb that was never stamped.
"""

from __future__ import annotations

import errno
import ipaddress
import socket as _std
import time
from typing import Any, NamedTuple

from usnet.proto import cmsg as _cm

__all__ = [
    "HEADER_OPTIONS",
    "IP_OPTIONS",
    "PKTINFO_OPTIONS",
    "TIMESTAMPING_OPTIONS",
    "TIMESTAMP_OPTIONS",
    "RxMeta",
    "keeps_header",
    "option_value",
    "pktinfo_source",
    "put_cmsgs",
    "rx_cmsgs",
    "rx_stamps",
    "set_option",
    "set_timestamping",
    "timestamp_cmsgs",
    "timestamp_mode",
    "timestamping_flags",
    "tx_stamp_key",
    "wants_meta",
]

SOL_SOCKET, IPPROTO_IP, IPPROTO_IPV6 = 1, 0, 41
# A socket's timestamp state, as Linux's flags: SOCK_RCVTSTAMP (present) with SOCK_RCVTSTAMPNS (its
# value), SOCK_TSTAMP_NEW (present), which SO_TIMESTAMP*_NEW and SO_TIMESTAMPING_NEW share, and
# sk_tsflags (SO_TIMESTAMPING's flags)
_TS_KEY = (SOL_SOCKET, _cm.SO_TIMESTAMP)
_TS_NEW = (SOL_SOCKET, _cm.SO_TIMESTAMP_NEW)
_TS_FLAGS = (SOL_SOCKET, _cm.SO_TIMESTAMPING)
_TS_TSKEY = (SOL_SOCKET, -_cm.SO_TIMESTAMPING)  # sk_tskey, the next transmit stamp's key (not an option)
TIMESTAMPING_OPTIONS = frozenset({(SOL_SOCKET, _cm.SO_TIMESTAMPING), (SOL_SOCKET, _cm.SO_TIMESTAMPING_NEW)})
TIMESTAMP_OPTIONS = frozenset({(SOL_SOCKET, o) for o in (_cm.SO_TIMESTAMP, _cm.SO_TIMESTAMPNS,
                                                         _cm.SO_TIMESTAMP_NEW, _cm.SO_TIMESTAMPNS_NEW)}) \
    | TIMESTAMPING_OPTIONS
_RX_SW = _cm.SOF_TIMESTAMPING_RX_SOFTWARE | _cm.SOF_TIMESTAMPING_SOFTWARE
PKTINFO_OPTIONS = frozenset({(IPPROTO_IP, _cm.IP_PKTINFO), (IPPROTO_IPV6, _cm.IPV6_RECVPKTINFO)})
IP_RECVTTL, IP_RECVTOS, IP_TTL, IP_TOS = 12, 13, 2, 1
IPV6_RECVHOPLIMIT, IPV6_HOPLIMIT, IPV6_RECVTCLASS, IPV6_TCLASS = 51, 52, 66, 67
HEADER_OPTIONS = frozenset({(IPPROTO_IP, IP_RECVTTL), (IPPROTO_IP, IP_RECVTOS), (IPPROTO_IPV6, IPV6_RECVHOPLIMIT),
                            (IPPROTO_IPV6, IPV6_RECVTCLASS)})
IP_OPTIONS = PKTINFO_OPTIONS | HEADER_OPTIONS  # the IP-level flags, kept alike
_CMSG_HDR, _ALIGN = 16, 8  # struct cmsghdr on Linux's 64-bit ABI; CMSG_ALIGN


class RxMeta(NamedTuple):
    """What a datagram's control messages are made of: its arrival (ns, realtime clock), the
    local address it was sent to (its flow's: the switch gives a flow only what is addressed to
    it) and whether its flow is on the domain's loopback netif (which interface it came in on)."""

    ns: int
    local: str
    loopback: bool
    header: tuple[int, int, bytes] | None = None  # (TOS, TTL, destination) or (class, hop limit, destination)


def set_option(opts: dict[tuple[int, int], Any], level: int, opt: int, value: Any, *, tcp_idle: bool = False) -> None:
    """Keep a timestamp or packet info option as Linux does: an int (EINVAL for a shorter
    buffer, but an IPv4 option's one byte), on or off. The four timestamp options are one state
    (__sock_set_timestamps): set on, timestamps are on, in nanoseconds or not and of the _NEW
    types or not as that option says (the _NEW flag, which SO_TIMESTAMPING_NEW shares); any of
    them set off turns them off, the _NEW flag left as it was. SO_TIMESTAMPING is `set_timestamping`'s."""
    if (level, opt) in TIMESTAMPING_OPTIONS:
        set_timestamping(opts, opt, value, tcp_idle=tcp_idle)
        return
    if isinstance(value, (bytes, bytearray)):
        if len(value) < 4:
            if level != IPPROTO_IP:  # ip_setsockopt takes one unsigned byte too, and none as 0
                raise OSError(errno.EINVAL, "Invalid argument")
            value = value[0] if value else 0
        else:
            value = int.from_bytes(bytes(value[:4]), "little", signed=True)
    on = int(value) != 0
    if (level, opt) in TIMESTAMP_OPTIONS:
        if on:
            _flag(opts, _TS_NEW, opt in (_cm.SO_TIMESTAMP_NEW, _cm.SO_TIMESTAMPNS_NEW))
            opts[_TS_KEY] = opt in (_cm.SO_TIMESTAMPNS, _cm.SO_TIMESTAMPNS_NEW)
        else:
            opts.pop(_TS_KEY, None)
    elif on:
        opts[level, opt] = 1
    else:
        opts.pop((level, opt), None)


def _flag(opts: dict[tuple[int, int], Any], key: tuple[int, int], on: bool) -> None:
    if on:
        opts[key] = 1
    else:
        opts.pop(key, None)


def set_timestamping(opts: dict[tuple[int, int], Any], opt: int, value: Any, *, tcp_idle: bool = False) -> None:
    """SO_TIMESTAMPING(_NEW) as sock_set_timestamping takes it: an int of flags, or a struct
    so_timestamping when exactly its 8 bytes are given (EINVAL under 4); EINVAL for a flag
    outside SOF_TIMESTAMPING_MASK, OPT_ID_TCP without OPT_ID, OPT_ID newly set on a TCP socket
    that is closed or listening (`tcp_idle`), OPT_STATS without OPT_TSONLY; BIND_PHC is
    EOPNOTSUPP, as for a socket bound to no device (a usnet netif has no PTP clock to bind).
    On success the flags are kept whole, and the option's number sets SOCK_TSTAMP_NEW."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) < 4:
            raise OSError(errno.EINVAL, "Invalid argument")
        flags = (_cm.SO_TIMESTAMPING_ARG.unpack(bytes(value))[0] if len(value) == _cm.SO_TIMESTAMPING_ARG.size
                 else _cm.INT.unpack_from(bytes(value))[0])
    else:
        flags = int(value)
    if flags & ~_cm.SOF_TIMESTAMPING_MASK:
        raise OSError(errno.EINVAL, "Invalid argument")
    if flags & _cm.SOF_TIMESTAMPING_OPT_ID_TCP and not flags & _cm.SOF_TIMESTAMPING_OPT_ID:
        raise OSError(errno.EINVAL, "Invalid argument")
    if flags & _cm.SOF_TIMESTAMPING_OPT_ID and not opts.get(_TS_FLAGS, 0) & _cm.SOF_TIMESTAMPING_OPT_ID and tcp_idle:
        raise OSError(errno.EINVAL, "Invalid argument")
    if flags & _cm.SOF_TIMESTAMPING_OPT_STATS and not flags & _cm.SOF_TIMESTAMPING_OPT_TSONLY:
        raise OSError(errno.EINVAL, "Invalid argument")
    if flags & _cm.SOF_TIMESTAMPING_BIND_PHC:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported (a usnet netif has no PTP clock)")
    if flags & _cm.SOF_TIMESTAMPING_OPT_ID and not opts.get(_TS_FLAGS, 0) & _cm.SOF_TIMESTAMPING_OPT_ID:
        opts[_TS_TSKEY] = 0  # a datagram socket's count starts again (a TCP one's would be its sequence)
    if flags:
        opts[_TS_FLAGS] = flags
    else:
        opts.pop(_TS_FLAGS, None)
    _flag(opts, _TS_NEW, opt == _cm.SO_TIMESTAMPING_NEW)


def option_value(opts: dict[tuple[int, int], Any], level: int, opt: int) -> Any:
    """getsockopt of one of them: 1 or 0, a timestamp option's as Linux's sk_getsockopt reads
    the socket's flags (SO_TIMESTAMP_NEW is on for SO_TIMESTAMPNS_NEW's state too, the old
    SO_TIMESTAMP is not for SO_TIMESTAMPNS's). SO_TIMESTAMPING gives struct so_timestamping
    (bind_phc 0), its flags read through SO_TIMESTAMPING_NEW only if that set them."""
    if (level, opt) in TIMESTAMPING_OPTIONS:
        shown = opt == _cm.SO_TIMESTAMPING or _TS_NEW in opts
        return _cm.SO_TIMESTAMPING_ARG.pack(opts.get(_TS_FLAGS, 0) if shown else 0, 0)
    if (level, opt) in TIMESTAMP_OPTIONS:
        ns = opts.get(_TS_KEY)
        if ns is None:
            return 0
        new = _TS_NEW in opts
        if opt == _cm.SO_TIMESTAMP:
            return int(not new and not ns)
        if opt == _cm.SO_TIMESTAMPNS:
            return int(ns and not new)
        if opt == _cm.SO_TIMESTAMP_NEW:
            return int(new)
        return int(ns and new)
    return int(bool(opts.get((level, opt))))


def timestamp_mode(opts: dict[tuple[int, int], Any]) -> int | None:
    """The SO_TIMESTAMP family's control message type (SCM_TIMESTAMP(NS), or the _NEW ones), or None."""
    ns = opts.get(_TS_KEY)
    if ns is None:
        return None
    if _TS_NEW in opts:
        return _cm.SO_TIMESTAMPNS_NEW if ns else _cm.SO_TIMESTAMP_NEW
    return _cm.SO_TIMESTAMPNS if ns else _cm.SO_TIMESTAMP


def rx_stamps(opts: dict[tuple[int, int], Any]) -> bool:
    """Whether arrivals must be stamped: SO_TIMESTAMP(NS) on, or SO_TIMESTAMPING's RX_SOFTWARE
    (Linux's sock_enable_timestamp for either)."""
    return _TS_KEY in opts or bool(opts.get(_TS_FLAGS, 0) & _cm.SOF_TIMESTAMPING_RX_SOFTWARE)


def timestamp_cmsgs(opts: dict[tuple[int, int], Any], ns: int, *,
                    errqueue: bool = False) -> list[tuple[int, int, bytes]]:
    """The timestamps' control messages for an arrival at `ns` (realtime; 0: never stamped), in
    __sock_recv_timestamp's order: SCM_TIMESTAMP(NS) (an unstamped one stamped now, as Linux
    stamps an skb then), then SCM_TIMESTAMPING when SOFTWARE and RX_SOFTWARE are set (SOFTWARE
    alone reports the stamps Linux takes while any socket of the host asks for them: usnet
    reports none then), or for a transmit stamp on the error queue (`errqueue`) SOFTWARE alone.
    TCP's tcp_recv_timestamp gives the same two from a stamped read."""
    out = []
    mode = timestamp_mode(opts)
    if mode is not None:
        ns = ns or time.time_ns()
        out.append(_cm.timestamp_cmsg(mode, ns))
    want = _cm.SOF_TIMESTAMPING_SOFTWARE if errqueue else _RX_SW
    if ns and opts.get(_TS_FLAGS, 0) & want == want:
        out.append(_cm.timestamping_cmsg(_TS_NEW in opts, ns))
    return out


def timestamping_flags(opts: dict[tuple[int, int], Any]) -> int:
    """SO_TIMESTAMPING's flags as set (sk_tsflags), 0 when never set."""
    return int(opts.get(_TS_FLAGS, 0))


def tx_stamp_key(opts: dict[tuple[int, int], Any]) -> int | None:
    """For a datagram just sent: None without SOF_TIMESTAMPING_TX_SOFTWARE, else the key its
    transmit stamp carries (ee_data): with OPT_ID the socket's count, which it advances (the
    sk_tskey of __ip_append_data), 0 without."""
    flags = opts.get(_TS_FLAGS, 0)
    if not flags & _cm.SOF_TIMESTAMPING_TX_SOFTWARE:
        return None
    if not flags & _cm.SOF_TIMESTAMPING_OPT_ID:
        return 0
    key = opts.get(_TS_TSKEY, 0)
    opts[_TS_TSKEY] = (key + 1) & 0xFFFFFFFF
    return int(key)


def wants_meta(opts: dict[tuple[int, int], Any]) -> bool:
    """Whether the socket's datagrams need an `RxMeta` (one of the options is on)."""
    return rx_stamps(opts) or any(k in opts for k in IP_OPTIONS)


def keeps_header(opts: dict[tuple[int, int], Any]) -> bool:
    """Whether the socket's flows must keep each datagram's header fields."""
    return any(k in opts for k in HEADER_OPTIONS)


def rx_cmsgs(family: int, opts: dict[tuple[int, int], Any], meta: RxMeta,
             ifindex: int) -> list[tuple[int, int, bytes]]:
    """A datagram's control messages, in Linux's order (udp_recvmsg, udpv6_recvmsg): the
    timestamp (sock_recv_cmsgs), then on an AF_INET6 socket IPV6_PKTINFO (an IPv4 datagram's
    destination as a mapped address), then IPv4's IP_PKTINFO for an IPv4 datagram."""
    out = timestamp_cmsgs(opts, meta.ns)
    ip = ipaddress.ip_address(meta.local)
    hdr = meta.header
    if family == _std.AF_INET6 and (IPPROTO_IPV6, _cm.IPV6_RECVPKTINFO) in opts:
        a6 = ip.packed if ip.version == 6 else ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed).packed
        out.append((IPPROTO_IPV6, _cm.IPV6_PKTINFO, _cm.In6Pktinfo(a6, ifindex).pack()))
    if ip.version == 6 and hdr is not None:  # ip6_datagram_recv_specific_ctl: hop limit, then class
        if (IPPROTO_IPV6, IPV6_RECVHOPLIMIT) in opts:
            out.append((IPPROTO_IPV6, IPV6_HOPLIMIT, _cm.INT.pack(hdr[1])))
        if (IPPROTO_IPV6, IPV6_RECVTCLASS) in opts:
            out.append((IPPROTO_IPV6, IPV6_TCLASS, _cm.INT.pack(hdr[0])))
    if ip.version == 4:  # ip_cmsg_recv_offset: packet info, TTL, TOS
        if (IPPROTO_IP, _cm.IP_PKTINFO) in opts:
            # spec_dst: the address a reply would leave from (fib_compute_spec_dst): for a
            # datagram to a local unicast address, that address; ipi_addr the header's destination
            # (a group's, for a datagram to a group: kept then, usnet.client.dgram `set_meta`)
            out.append((IPPROTO_IP, _cm.IP_PKTINFO, _cm.InPktinfo(ifindex, ip.packed,
                                                                  ip.packed if hdr is None else hdr[2]).pack()))
        if hdr is not None and (IPPROTO_IP, IP_RECVTTL) in opts:
            out.append((IPPROTO_IP, IP_TTL, _cm.INT.pack(hdr[1])))
        if hdr is not None and (IPPROTO_IP, IP_RECVTOS) in opts:
            out.append((IPPROTO_IP, IP_TOS, bytes([hdr[0]])))  # one byte, as Linux gives it
    return out


def put_cmsgs(msgs: list[tuple[int, int, bytes]], ancbufsize: int) -> tuple[list[tuple[int, int, bytes]], bool]:
    """The control messages that fit `ancbufsize` bytes as Linux's put_cmsg puts them, and
    whether any was cut (MSG_CTRUNC): each takes CMSG_SPACE of the buffer; one whose header fits
    and data does not is given cut; none is given once a header no longer fits."""
    out: list[tuple[int, int, bytes]] = []
    room, cut = ancbufsize, False
    for level, kind, data in msgs:
        if room < _CMSG_HDR:
            return out, True
        if room < _CMSG_HDR + len(data):
            cut = True
            data = data[: room - _CMSG_HDR]
        out.append((level, kind, data))
        room -= min(room, _CMSG_HDR + (len(data) + _ALIGN - 1) // _ALIGN * _ALIGN)
    return out, cut


def pktinfo_source(family: int, ancdata: Any) -> str | None:
    """The source address a sendmsg's control messages choose (IP_PKTINFO's ipi_spec_dst,
    IPV6_PKTINFO's ipi6_addr; None: the socket's own), checked as Linux's ip_cmsg_send and
    ip6_datagram_send_ctl check them: a control message of another length is EINVAL. The
    interface index is not acted on (a usnet socket's flows are on its netif already). Other
    control messages usnet does not carry: EOPNOTSUPP, as before it had these."""
    src = None
    for level, kind, data in ancdata:
        data = bytes(memoryview(data).cast("B"))
        if (level, kind) == (IPPROTO_IP, _cm.IP_PKTINFO) and family == _std.AF_INET:
            if len(data) != _cm.IN_PKTINFO.size:
                raise OSError(errno.EINVAL, "Invalid argument")
            spec = _cm.InPktinfo.unpack(data).spec_dst
            src = None if spec == bytes(4) else str(ipaddress.IPv4Address(spec))
        elif (level, kind) == (IPPROTO_IPV6, _cm.IPV6_PKTINFO) and family == _std.AF_INET6:
            if len(data) != _cm.IN6_PKTINFO.size:
                raise OSError(errno.EINVAL, "Invalid argument")
            a6 = _cm.In6Pktinfo.unpack(data).addr
            src = None if a6 == bytes(16) else str(ipaddress.IPv6Address(a6))
        else:
            raise OSError(errno.EOPNOTSUPP, f"usnet carries no control message ({level}, {kind}) on send")
    return src
