"""The byte layouts of the socket options and control messages usnet's faces read and give as
Linux does (issue 16): timeouts (SO_RCVTIMEO, SO_SNDTIMEO), receive timestamps (SO_TIMESTAMP,
SO_TIMESTAMPNS) and packet information (IP_PKTINFO, IPV6_PKTINFO), each declared once here
with its fields named (docs/abi.md lists them). Linux's 64-bit ABI, host byte order:

    struct timeval  { long tv_sec; long tv_usec; };        /* 16 bytes: SO_*TIMEO_OLD, SCM_TIMESTAMP */
    struct __kernel_sock_timeval { s64 tv_sec, tv_usec; }; /* 16 bytes: SO_*TIMEO_NEW, SO_TIMESTAMP_NEW */
    struct timespec { long tv_sec; long tv_nsec; };        /* 16 bytes: SCM_TIMESTAMPNS (and _NEW) */
    struct in_pktinfo  { int ipi_ifindex; struct in_addr ipi_spec_dst, ipi_addr; };  /* 12 bytes */
    struct in6_pktinfo { struct in6_addr ipi6_addr; unsigned int ipi6_ifindex; };   /* 20 bytes */
    struct ip_mreq  { struct in_addr imr_multiaddr, imr_interface; };                /* 8 bytes */
    struct ip_mreqn { struct in_addr imr_multiaddr, imr_address; int imr_ifindex; }; /* 12 bytes */
    struct so_timestamping { int flags; int bind_phc; };                             /* 8 bytes */
    struct ip_msfilter { struct in_addr imsf_multiaddr, imsf_interface;
                         u32 imsf_fmode, imsf_numsrc; struct in_addr imsf_slist[]; }; /* 16 + 4 n */
    struct group_filter { u32 gf_interface; /* 4 bytes pad */ sockaddr_storage gf_group;
                          u32 gf_fmode, gf_numsrc; sockaddr_storage gf_slist[]; };    /* 144 + 128 n */
    struct scm_timestamping { struct timespec ts[3]; };  /* 48 bytes: software, legacy (0), hardware */

A socket timeout is kept as Linux keeps it, in jiffies (sock_set_timeout): set from a timeval
rounded up to whole ticks of the kernel's HZ, read back from them (sock_get_timeout), so what
getsockopt gives is what Linux would give. Sans-I/O: HZ is the caller's (usnet.client.sockopts
measures the running kernel's).
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import NamedTuple

__all__ = [
    "GROUP_FILTER",
    "GROUP_REQ",
    "GROUP_SOURCE_REQ",
    "IN6_PKTINFO",
    "INT",
    "IN_PKTINFO",
    "IPV6_PKTINFO",
    "IPV6_RECVPKTINFO",
    "IP_MREQ",
    "IP_MREQN",
    "IP_MREQ_SOURCE",
    "IP_MSFILTER",
    "IP_PKTINFO",
    "MCAST_EXCLUDE",
    "MCAST_INCLUDE",
    "SCM_TIMESTAMP",
    "SCM_TIMESTAMPING_DATA",
    "SCM_TIMESTAMPNS",
    "SOCKADDR_STORAGE",
    "SOF_TIMESTAMPING_BIND_PHC",
    "SOF_TIMESTAMPING_MASK",
    "SOF_TIMESTAMPING_OPT_ID",
    "SOF_TIMESTAMPING_OPT_ID_TCP",
    "SOF_TIMESTAMPING_OPT_RX_FILTER",
    "SOF_TIMESTAMPING_OPT_STATS",
    "SOF_TIMESTAMPING_OPT_TSONLY",
    "SOF_TIMESTAMPING_RX_SOFTWARE",
    "SOF_TIMESTAMPING_SOFTWARE",
    "SOF_TIMESTAMPING_TX_SOFTWARE",
    "SO_RCVTIMEO",
    "SO_RCVTIMEO_NEW",
    "SO_SNDTIMEO",
    "SO_SNDTIMEO_NEW",
    "SO_TIMESTAMP",
    "SO_TIMESTAMPING",
    "SO_TIMESTAMPING_ARG",
    "SO_TIMESTAMPING_NEW",
    "SO_TIMESTAMPNS",
    "SO_TIMESTAMPNS_NEW",
    "SO_TIMESTAMP_NEW",
    "TIMESPEC",
    "TIMEVAL",
    "GroupFilter",
    "GroupSourceReq",
    "In6Pktinfo",
    "InPktinfo",
    "IpMreqSource",
    "IpMreqn",
    "jiffies_timeval",
    "multicast_if",
    "pack_group_filter",
    "pack_ip_msfilter",
    "parse_group_filter",
    "parse_group_req",
    "parse_ip_msfilter",
    "parse_mreq",
    "parse_mreq_source",
    "sin6_addr",
    "sockaddr_of",
    "timestamp_cmsg",
    "timestamping_cmsg",
    "timeval_jiffies",
]

# Linux's numbers (SOL_SOCKET): the _OLD ones are what <sys/socket.h> calls SO_RCVTIMEO and so on
# on 64-bit; the _NEW ones (y2038) take the same 16 bytes there
SO_RCVTIMEO, SO_SNDTIMEO, SO_RCVTIMEO_NEW, SO_SNDTIMEO_NEW = 20, 21, 66, 67
SO_TIMESTAMP, SO_TIMESTAMPNS, SO_TIMESTAMP_NEW, SO_TIMESTAMPNS_NEW = 29, 35, 63, 64
SCM_TIMESTAMP, SCM_TIMESTAMPNS = SO_TIMESTAMP, SO_TIMESTAMPNS  # a control message's type is its option's
SO_TIMESTAMPING, SO_TIMESTAMPING_NEW = 37, 65  # and SCM_TIMESTAMPING(_NEW), the same numbers
# SO_TIMESTAMPING's flags (include/uapi/linux/net_tstamp.h, Linux 6.18: SOF_TIMESTAMPING_LAST is TX_COMPLETION)
SOF_TIMESTAMPING_TX_HARDWARE, SOF_TIMESTAMPING_TX_SOFTWARE = 1 << 0, 1 << 1
SOF_TIMESTAMPING_RX_HARDWARE, SOF_TIMESTAMPING_RX_SOFTWARE = 1 << 2, 1 << 3
SOF_TIMESTAMPING_SOFTWARE, SOF_TIMESTAMPING_SYS_HARDWARE, SOF_TIMESTAMPING_RAW_HARDWARE = 1 << 4, 1 << 5, 1 << 6
SOF_TIMESTAMPING_OPT_ID, SOF_TIMESTAMPING_TX_SCHED, SOF_TIMESTAMPING_TX_ACK = 1 << 7, 1 << 8, 1 << 9
SOF_TIMESTAMPING_OPT_CMSG, SOF_TIMESTAMPING_OPT_TSONLY, SOF_TIMESTAMPING_OPT_STATS = 1 << 10, 1 << 11, 1 << 12
SOF_TIMESTAMPING_OPT_PKTINFO, SOF_TIMESTAMPING_OPT_TX_SWHW, SOF_TIMESTAMPING_BIND_PHC = 1 << 13, 1 << 14, 1 << 15
SOF_TIMESTAMPING_OPT_ID_TCP, SOF_TIMESTAMPING_OPT_RX_FILTER = 1 << 16, 1 << 17
SOF_TIMESTAMPING_TX_COMPLETION = 1 << 18
SOF_TIMESTAMPING_MASK = (SOF_TIMESTAMPING_TX_COMPLETION << 1) - 1
# IPPROTO_IP's and IPPROTO_IPV6's
IP_PKTINFO, IPV6_RECVPKTINFO, IPV6_PKTINFO = 8, 49, 50

TIMEVAL = struct.Struct("=qq")  # tv_sec, tv_usec
TIMESPEC = struct.Struct("=qq")  # tv_sec, tv_nsec
IN_PKTINFO = struct.Struct("=i4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
IN6_PKTINFO = struct.Struct("=16sI")  # ipi6_addr, ipi6_ifindex
IP_MREQ = struct.Struct("=4s4s")  # imr_multiaddr, imr_interface
IP_MREQN = struct.Struct("=4s4si")  # imr_multiaddr, imr_address, imr_ifindex
IP_MREQ_SOURCE = struct.Struct("=4s4s4s")  # imr_multiaddr, imr_interface, imr_sourceaddr (include/uapi/linux/in.h)
# struct group_req, group_source_req (RFC 3678): gr_interface (u32), 4 bytes of padding (sockaddr_storage is
# 8-aligned), then one or two struct __kernel_sockaddr_storage of 128 bytes (the group, the source)
GROUP_REQ = struct.Struct("=I4x128s")
GROUP_SOURCE_REQ = struct.Struct("=I4x128s128s")
# struct ip_msfilter's and struct group_filter's heads (IP_MSFILTER, MCAST_MSFILTER; include/uapi/linux/in.h):
# imsf_multiaddr, imsf_interface, imsf_fmode, imsf_numsrc, then imsf_numsrc in_addr of 4 bytes;
# gf_interface, padding, gf_group, gf_fmode, gf_numsrc, then gf_numsrc sockaddr_storage of 128 bytes
IP_MSFILTER = struct.Struct("=4s4sII")
GROUP_FILTER = struct.Struct("=I4x128sII")
SOCKADDR_STORAGE = 128
MCAST_EXCLUDE, MCAST_INCLUDE = 0, 1  # imsf_fmode, gf_fmode
SOCKADDR_FAMILY = struct.Struct("=H")  # ss_family, at the start of every sockaddr
INT = struct.Struct("=i")  # IP_TTL, IPV6_HOPLIMIT, IPV6_TCLASS received (IP_TOS: one byte)
SO_TIMESTAMPING_ARG = struct.Struct("=ii")  # struct so_timestamping: flags, bind_phc
SCM_TIMESTAMPING_DATA = struct.Struct("=qqqqqq")  # struct scm_timestamping: ts[0..2], each (tv_sec, tv_nsec)

_USEC = 1_000_000
_MAX_SCHEDULE_TIMEOUT = (1 << 63) - 1  # LONG_MAX: "no timeout"


class InPktinfo(NamedTuple):
    """struct in_pktinfo: the interface, the local address a reply would leave from, the header's destination."""

    ifindex: int
    spec_dst: bytes
    addr: bytes

    def pack(self) -> bytes:
        return IN_PKTINFO.pack(self.ifindex, self.spec_dst, self.addr)

    @classmethod
    def unpack(cls, data: bytes) -> InPktinfo:
        return cls(*IN_PKTINFO.unpack_from(data))


class IpMreqn(NamedTuple):
    """struct ip_mreqn, to which Linux widens an ip_mreq (ifindex 0): the group, the interface's
    address (INADDR_ANY: none said), the interface's index (0: none said)."""

    group: bytes
    address: bytes
    ifindex: int


def parse_mreq(value: bytes) -> IpMreqn:
    """IP_ADD_MEMBERSHIP's (IP_DROP_MEMBERSHIP's) argument as do_ip_setsockopt reads it: by its
    length, an ip_mreqn from 12 bytes on (the rest ignored: Python's struct.pack("4sl", ...) is
    16), an ip_mreq from 8; shorter is EINVAL."""
    if len(value) >= IP_MREQN.size:
        return IpMreqn(*IP_MREQN.unpack_from(value))
    if len(value) >= IP_MREQ.size:
        group, interface = IP_MREQ.unpack_from(value)
        return IpMreqn(group, interface, 0)
    raise OSError(errno.EINVAL, "Invalid argument")


def multicast_if(value: bytes) -> IpMreqn:
    """IP_MULTICAST_IF's argument as do_ip_setsockopt reads it: an ip_mreqn from 12 bytes, an ip_mreq
    from 8 (its second address the interface's), an in_addr from 4 (group 0.0.0.0 in the result);
    shorter is EINVAL."""
    if len(value) >= IP_MREQ.size:
        return parse_mreq(value)
    if len(value) >= 4:
        return IpMreqn(bytes(4), bytes(value[:4]), 0)
    raise OSError(errno.EINVAL, "Invalid argument")


class IpMreqSource(NamedTuple):
    """struct ip_mreq_source (IP_ADD_SOURCE_MEMBERSHIP and its kin): the group, the interface's address, the source."""

    group: bytes
    interface: bytes
    source: bytes


def parse_mreq_source(value: bytes) -> IpMreqSource:
    """An ip_mreq_source as do_ip_setsockopt reads it: exactly 12 bytes, EINVAL otherwise."""
    if len(value) != IP_MREQ_SOURCE.size:
        raise OSError(errno.EINVAL, "Invalid argument")
    return IpMreqSource(*IP_MREQ_SOURCE.unpack(value))


class GroupSourceReq(NamedTuple):
    """struct group_req or group_source_req: the interface's index, and the group's and the source's
    sockaddr as (family, address bytes: 4 for AF_INET, 16 for AF_INET6, b"" for another family)."""

    ifindex: int
    group: tuple[int, bytes]
    source: tuple[int, bytes] | None


def sockaddr_of(ss: bytes) -> tuple[int, bytes]:
    """A sockaddr_storage's family and address: sockaddr_in's at byte 4, sockaddr_in6's at byte 8."""
    (family,) = SOCKADDR_FAMILY.unpack_from(ss)
    if family == socket.AF_INET:
        return family, ss[4:8]
    if family == socket.AF_INET6:
        return family, ss[8:24]
    return family, b""


def parse_group_req(value: bytes, with_source: bool, exact: bool = True) -> GroupSourceReq:
    """MCAST_JOIN_GROUP's and MCAST_LEAVE_GROUP's group_req (`with_source` False: at least its 136
    bytes, as ip_mcast_join_leave reads it) or the source options' group_source_req (exactly its
    264 bytes, as do_ip_setsockopt checks; at least, with `exact` False, as
    do_ipv6_mcast_group_source); EINVAL otherwise."""
    if with_source:
        if len(value) != GROUP_SOURCE_REQ.size and (exact or len(value) < GROUP_SOURCE_REQ.size):
            raise OSError(errno.EINVAL, "Invalid argument")
        index, group, source = GROUP_SOURCE_REQ.unpack_from(value)
        return GroupSourceReq(index, sockaddr_of(group), sockaddr_of(source))
    if len(value) < GROUP_REQ.size:
        raise OSError(errno.EINVAL, "Invalid argument")
    index, group = GROUP_REQ.unpack_from(value)
    return GroupSourceReq(index, sockaddr_of(group), None)


class GroupFilter(NamedTuple):
    """An ip_msfilter or a group_filter as read, its addresses raw: `interface` ip_msfilter's
    address (4 bytes) or group_filter's index; `group` and each of `sources` an in_addr (4 bytes)
    or a sockaddr_storage (128 bytes: `sockaddr_of` reads it as IPv4 does, by its family, and
    `sin6_addr` as IPv6 does, whatever its family); `fmode` as given (the option's code judges
    it); `numsrc` the caller's count (for a getsockopt, how many sources its buffer asks for)."""

    interface: bytes | int
    group: bytes
    fmode: int
    numsrc: int
    sources: tuple[bytes, ...]


def _msf_read(value: bytes, head: struct.Struct, each: int, most: int, optmem: int) -> GroupFilter:
    """A full-state filter as do_ip_setsockopt and do_ipv6_setsockopt check and read it, in their
    order: shorter than its head EINVAL, longer than net.core.optmem_max (`optmem`) ENOBUFS, more
    sources than `most` (igmp_max_msf, mld_max_msf) ENOBUFS, a list running past the end EINVAL.
    `most` -1: a getsockopt's head alone (under its size EINVAL; the list is not read)."""
    if len(value) < head.size:
        raise OSError(errno.EINVAL, "Invalid argument")
    if len(value) > optmem:
        raise OSError(errno.ENOBUFS, f"No buffer space available (an option over optmem_max, {optmem} bytes)")
    if head is IP_MSFILTER:
        group, interface, fmode, numsrc = IP_MSFILTER.unpack_from(value)
    else:
        interface, group, fmode, numsrc = GROUP_FILTER.unpack_from(value)
    if most < 0:
        return GroupFilter(interface, group, fmode, numsrc, ())
    if numsrc > most:
        raise OSError(errno.ENOBUFS, f"No buffer space available (at most {most} sources a filter)")
    if head.size + each * numsrc > len(value):
        raise OSError(errno.EINVAL, "Invalid argument (the source list runs past the option's end)")
    at = head.size
    return GroupFilter(interface, group, fmode, numsrc,
                       tuple(bytes(value[at + each * i:at + each * (i + 1)]) for i in range(numsrc)))


def parse_ip_msfilter(value: bytes, most: int = -1, optmem: int = 1 << 31) -> GroupFilter:
    """IP_MSFILTER's struct ip_msfilter as do_ip_setsockopt reads it (`most` the list's bound), or
    its head as do_ip_getsockopt reads the caller's (`most` -1)."""
    return _msf_read(value, IP_MSFILTER, 4, most, optmem)


def parse_group_filter(value: bytes, most: int = -1, optmem: int = 1 << 31) -> GroupFilter:
    """MCAST_MSFILTER's struct group_filter as do_ip_setsockopt and do_ipv6_setsockopt read it
    (`most` the list's bound), or its head as their getsockopt reads the caller's (`most` -1)."""
    return _msf_read(value, GROUP_FILTER, SOCKADDR_STORAGE, most, optmem)


def sin6_addr(ss: bytes) -> bytes:
    """A sockaddr_storage's sin6_addr, as IPv6's options read it: bytes 8..24, whatever the family says."""
    return bytes(ss[8:24])


def pack_ip_msfilter(asked: GroupFilter, fmode: int, sources: list[bytes], room: int) -> bytes:
    """What getsockopt(IP_MSFILTER) writes (ip_mc_msfget): the caller's group and interface, the
    membership's mode, numsrc the real count, and as many sources as the caller's numsrc asks for
    (usnet: and as its buffer of `room` bytes holds; Linux writes on past it)."""
    n = max(0, min(asked.numsrc, len(sources), (room - IP_MSFILTER.size) // 4))
    assert isinstance(asked.interface, bytes)
    return IP_MSFILTER.pack(asked.group, asked.interface, fmode, len(sources)) + b"".join(sources[:n])


def _storage(family: int, addr: bytes) -> bytes:
    """A sockaddr_storage holding a sockaddr_in (port 0) or a sockaddr_in6 (port, flow, scope 0)."""
    pad = 2 if family == socket.AF_INET else 6
    return (SOCKADDR_FAMILY.pack(family) + bytes(pad) + addr).ljust(SOCKADDR_STORAGE, b"\0")


def pack_group_filter(asked: GroupFilter, fmode: int, family: int, sources: list[bytes], room: int) -> bytes:
    """What getsockopt(MCAST_MSFILTER) writes (ip_mc_gsfget, ip6_mc_msfget): the caller's interface
    and gf_group as given, the mode, numsrc the real count, and as many sources as its numsrc asks
    for (and its `room` holds), each a sockaddr of `family` in a sockaddr_storage."""
    n = max(0, min(asked.numsrc, len(sources), (room - GROUP_FILTER.size) // SOCKADDR_STORAGE))
    assert isinstance(asked.interface, int)
    return GROUP_FILTER.pack(asked.interface, asked.group, fmode, len(sources)) + b"".join(
        _storage(family, s) for s in sources[:n])


class In6Pktinfo(NamedTuple):
    """struct in6_pktinfo: the address (received: the header's destination; sent: the source) and interface."""

    addr: bytes
    ifindex: int

    def pack(self) -> bytes:
        return IN6_PKTINFO.pack(self.addr, self.ifindex)

    @classmethod
    def unpack(cls, data: bytes) -> In6Pktinfo:
        return cls(*IN6_PKTINFO.unpack_from(data))


def timeval_jiffies(value: bytes, hz: int) -> int | None:
    """The timeout Linux keeps for a setsockopt(SO_RCVTIMEO/SO_SNDTIMEO) value (sock_set_timeout):
    jiffies, or None for none (MAX_SCHEDULE_TIMEOUT: a zero timeval, or one too long to count).
    A buffer shorter than a timeval is EINVAL, a tv_usec outside 0..999999 EDOM; a negative
    tv_sec is 0 jiffies, which Linux then treats as "do not wait" (EAGAIN at once)."""
    if len(value) < TIMEVAL.size:
        raise OSError(errno.EINVAL, "Invalid argument")
    sec, usec = TIMEVAL.unpack_from(value)
    if not 0 <= usec < _USEC:
        raise OSError(errno.EDOM, "Numerical argument out of domain")
    if sec < 0:
        return 0
    if (sec or usec) and sec < _MAX_SCHEDULE_TIMEOUT // hz - 1:
        return sec * hz + -(-usec // (_USEC // hz))  # DIV_ROUND_UP(tv_usec, USEC_PER_SEC / HZ)
    return None


def jiffies_timeval(jiffies: int | None, hz: int) -> bytes:
    """What getsockopt(SO_RCVTIMEO/SO_SNDTIMEO) gives for a timeout kept in jiffies (sock_get_timeout)."""
    if jiffies is None:
        return TIMEVAL.pack(0, 0)
    return TIMEVAL.pack(jiffies // hz, (jiffies % hz) * _USEC // hz)


def timestamp_cmsg(mode: int, ns: int) -> tuple[int, int, bytes]:
    """The receive timestamp's control message (level SOL_SOCKET) for a socket's timestamp option
    `mode` (SO_TIMESTAMP, SO_TIMESTAMPNS or their _NEW numbers: the type is the option's) and an
    arrival time in nanoseconds of the realtime clock, as Linux's __sock_recv_timestamp gives it."""
    sec, rest = divmod(ns, 1_000_000_000)
    if mode in (SO_TIMESTAMPNS, SO_TIMESTAMPNS_NEW):
        return 1, mode, TIMESPEC.pack(sec, rest)
    return 1, mode, TIMEVAL.pack(sec, rest // 1000)


def timestamping_cmsg(new: bool, ns: int) -> tuple[int, int, bytes]:
    """SO_TIMESTAMPING's receive control message (put_cmsg_scm_timestamping, or its 64-bit twin
    of type SCM_TIMESTAMPING_NEW when the socket's SOCK_TSTAMP_NEW flag is set): the software
    stamp `ns` (realtime clock) in ts[0], ts[1] and the hardware ts[2] zero."""
    sec, rest = divmod(ns, 1_000_000_000)
    return 1, SO_TIMESTAMPING_NEW if new else SO_TIMESTAMPING, SCM_TIMESTAMPING_DATA.pack(sec, rest, 0, 0, 0, 0)
