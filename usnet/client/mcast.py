"""Multicast options of a usnet UDP socket, IPv4's and IPv6's, as Linux keeps them on an inet socket.

IPv4 (a `Multicast(4)`): IP_ADD_MEMBERSHIP / IP_DROP_MEMBERSHIP (an ip_mreq or an ip_mreqn,
told apart by length as do_ip_setsockopt does: usnet.proto.cmsg.parse_mreq), IP_MULTICAST_IF,
IP_MULTICAST_TTL, IP_MULTICAST_LOOP and IP_MULTICAST_ALL. IPv6 (a `Multicast(6)`, an AF_INET6
socket's beside its IPv4 one): IPV6_JOIN_GROUP / IPV6_LEAVE_GROUP (ipv6_mreq: the group's 16
bytes and an interface index), IPV6_MULTICAST_IF (an index), IPV6_MULTICAST_HOPS,
IPV6_MULTICAST_LOOP and IPV6_MULTICAST_ALL. Membership is the domain's: a bound socket's join is
a control request for its flow of the family (P.JoinGroup), which the domain checks and may
refuse; a socket not bound yet keeps its groups here, checked as Linux would check them, and its
flow joins them when it is opened (`attach`), as a kernel socket's memberships do not need a port.

Errors, in Linux's order. IPv4 (ip_mc_join_group, ip_mc_leave_group): an address outside 224/4
EINVAL; an interface (index or address) that is not the socket's netif ENODEV; a group joined
twice EADDRINUSE; more than 20 ENOBUFS; a drop of a group not joined EADDRNOTAVAIL. IPv6
(__ipv6_sock_mc_join, ipv6_sock_mc_drop): an ipv6_mreq under 20 bytes EINVAL; an address outside
ff00::/8 EINVAL; a group joined twice (on any interface, or index 0) EADDRINUSE; more than
MAX_MEMBERSHIPS6 ENOMEM; an index of no interface of the host ENODEV (after those, as Linux
looks the device up last; any interface's is taken, `_our_index`); a drop of a group not joined
EADDRNOTAVAIL. Linux joins ff01::/16, ff02::1 and even ff00:: as any group; so does usnet (none
of them is reported, as Linux's).
"""

from __future__ import annotations

import errno
import functools
import socket
from typing import Any

from usnet.proto.cmsg import (
    MCAST_EXCLUDE,
    MCAST_INCLUDE,
    GroupFilter,
    IpMreqn,
    multicast_if,
    pack_group_filter,
    pack_ip_msfilter,
    parse_group_filter,
    parse_group_req,
    parse_ip_msfilter,
    parse_mreq,
    parse_mreq_source,
    sin6_addr,
    sockaddr_of,
)
from usnet.proto.wire.msf import ANY_SOURCE, MAX_SOURCES, MAX_SOURCES6, Filter

__all__ = [
    "IPV6_JOIN_GROUP",
    "IPV6_LEAVE_GROUP",
    "IP_ADD_MEMBERSHIP",
    "IP_DROP_MEMBERSHIP",
    "IP_MSFILTER",
    "IP_MULTICAST_ALL",
    "IP_MULTICAST_IF",
    "IP_MULTICAST_LOOP",
    "IP_MULTICAST_TTL",
    "MAX_MEMBERSHIPS",
    "MAX_MEMBERSHIPS6",
    "MCAST_MSFILTER",
    "MULTICAST6_OPTIONS",
    "MULTICAST_OPTIONS",
    "Multicast",
    "is_group",
    "is_group6",
]

IP_MULTICAST_IF, IP_MULTICAST_TTL, IP_MULTICAST_LOOP, IP_ADD_MEMBERSHIP, IP_DROP_MEMBERSHIP = 32, 33, 34, 35, 36
IP_MULTICAST_ALL = 49
# source-specific membership (include/uapi/linux/in.h): ip_mreq_source's, and RFC 3678's
# protocol-independent group_req / group_source_req ones
IP_UNBLOCK_SOURCE, IP_BLOCK_SOURCE, IP_ADD_SOURCE_MEMBERSHIP, IP_DROP_SOURCE_MEMBERSHIP = 37, 38, 39, 40
MCAST_JOIN_GROUP, MCAST_BLOCK_SOURCE, MCAST_UNBLOCK_SOURCE, MCAST_LEAVE_GROUP = 42, 43, 44, 45
MCAST_JOIN_SOURCE_GROUP, MCAST_LEAVE_SOURCE_GROUP = 46, 47
# the full-state filter (RFC 3678 §4.1.2, §5.2.2): struct ip_msfilter's and struct group_filter's (usnet.proto.cmsg)
IP_MSFILTER, MCAST_MSFILTER = 41, 48
FILTER_OPTIONS = frozenset((IP_MSFILTER, MCAST_MSFILTER))
_SOURCE_OPTIONS = frozenset((IP_UNBLOCK_SOURCE, IP_BLOCK_SOURCE, IP_ADD_SOURCE_MEMBERSHIP, IP_DROP_SOURCE_MEMBERSHIP))
_MCAST_SOURCE_OPTIONS = frozenset((MCAST_BLOCK_SOURCE, MCAST_UNBLOCK_SOURCE, MCAST_JOIN_SOURCE_GROUP,
                                   MCAST_LEAVE_SOURCE_GROUP))
# each source option of RFC 3678 is its ip_mreq_source twin's
_TWIN = {MCAST_BLOCK_SOURCE: IP_BLOCK_SOURCE, MCAST_UNBLOCK_SOURCE: IP_UNBLOCK_SOURCE,
         MCAST_JOIN_SOURCE_GROUP: IP_ADD_SOURCE_MEMBERSHIP, MCAST_LEAVE_SOURCE_GROUP: IP_DROP_SOURCE_MEMBERSHIP}
_MEMBERSHIP_OPTIONS = frozenset((IP_ADD_MEMBERSHIP, IP_DROP_MEMBERSHIP, MCAST_JOIN_GROUP, MCAST_LEAVE_GROUP,
                                 *_SOURCE_OPTIONS, *_MCAST_SOURCE_OPTIONS, *FILTER_OPTIONS))
MULTICAST_OPTIONS = frozenset((IP_MULTICAST_IF, IP_MULTICAST_TTL, IP_MULTICAST_LOOP, IP_ADD_MEMBERSHIP,
                               IP_DROP_MEMBERSHIP, IP_MULTICAST_ALL, MCAST_JOIN_GROUP, MCAST_LEAVE_GROUP,
                               *_SOURCE_OPTIONS, *_MCAST_SOURCE_OPTIONS, *FILTER_OPTIONS))
MAX_MEMBERSHIPS = 20  # Linux's net.ipv4.igmp_max_memberships (the domain holds a flow to it too)
IPV6_MULTICAST_IF, IPV6_MULTICAST_HOPS, IPV6_MULTICAST_LOOP, IPV6_JOIN_GROUP, IPV6_LEAVE_GROUP = 17, 18, 19, 20, 21
IPV6_MULTICAST_ALL = 29
MULTICAST6_OPTIONS = frozenset((IPV6_MULTICAST_IF, IPV6_MULTICAST_HOPS, IPV6_MULTICAST_LOOP, IPV6_JOIN_GROUP,
                                IPV6_LEAVE_GROUP, IPV6_MULTICAST_ALL, MCAST_JOIN_GROUP, MCAST_LEAVE_GROUP,
                                *_MCAST_SOURCE_OPTIONS, MCAST_MSFILTER))
# IPv6 groups a socket: the domain's bound (usnet.domain.switch.groups.MAX_MEMBERSHIPS6; Linux's is
# its option memory, optmem_max)
MAX_MEMBERSHIPS6 = 256


def is_group(host: str) -> bool:
    """Whether dotted IPv4 `host` is in 224.0.0.0/4."""
    return ":" not in host and 224 <= int(host.split(".", 1)[0]) <= 239


def is_group6(host: str) -> bool:
    """Whether IPv6 text `host` is in ff00::/8."""
    return host[:2].lower() == "ff" and ":" in host


def _int6(value: Any) -> int:
    """An IPv6 int option's value as do_ipv6_setsockopt reads it: an int, or 4 bytes or more (EINVAL under)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        if len(b) < 4:
            raise OSError(errno.EINVAL, "Invalid argument")
        return int.from_bytes(b[:4], "little", signed=True)
    return int(value)


def _int(value: Any) -> int:
    """An int option's value as Linux reads it: an int, or from 4 bytes, or 1 byte (TTL, LOOP, ALL)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        if len(b) >= 4:
            return int.from_bytes(b[:4], "little", signed=True)
        if len(b) >= 1:
            return b[0]
        raise OSError(errno.EINVAL, "Invalid argument")
    return int(value)


class Multicast:
    """One socket's memberships and multicast options of one family (4 or 6); `flow` is its flow of
    that family's (channel id, local address) once it has one, and `join` the control request (the
    domain's refusal raises)."""

    def __init__(self, family: int = 4) -> None:
        self.family = family
        self.groups: list[bytes] = []
        self.filters: dict[bytes, Filter] = {}  # group -> its source filter, if not any-source (EXCLUDE {})
        # ... and its sources as Linux lists them (ip_sf_socklist: in the order added, or as
        # IP_MSFILTER gave them, a source twice kept twice), which getsockopt(IP_MSFILTER) reads back
        self.slists: dict[bytes, list[bytes]] = {}
        self.ttl = 1  # IP_MULTICAST_TTL, IPV6_MULTICAST_HOPS
        self.loop = True
        self.all = True
        self.if_addr = bytes(4)  # IP_MULTICAST_IF
        self.if_index = 0  # IPV6_MULTICAST_IF

    # -- setsockopt / getsockopt -------------------------------------------------------------

    def changes_membership(self, opt: int) -> bool:
        """Whether option `opt` (of this family's level) may join or leave a group."""
        if self.family == 6:
            return opt in (IPV6_JOIN_GROUP, IPV6_LEAVE_GROUP, MCAST_JOIN_GROUP, MCAST_LEAVE_GROUP, MCAST_MSFILTER) \
                or opt in _MCAST_SOURCE_OPTIONS
        return opt in _MEMBERSHIP_OPTIONS

    def set(self, opt: int, value: Any, flow: tuple[int, bytes] | None, ifindex: int, client: Any) -> None:
        """setsockopt(IPPROTO_IP, `opt`, `value`) (IPPROTO_IPV6 for a `Multicast(6)`); `ifindex`: the
        kernel's index of the socket's netif."""
        if self.family == 6:
            self._set6(opt, value, flow, ifindex, client)
            return
        if opt in (IP_ADD_MEMBERSHIP, IP_DROP_MEMBERSHIP):
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise OSError(errno.EINVAL, "Invalid argument")  # an int is 4 bytes: shorter than ip_mreq
            m = parse_mreq(bytes(value))
            (self._join if opt == IP_ADD_MEMBERSHIP else self._drop)(m, flow, ifindex, client)
        elif opt in _SOURCE_OPTIONS:
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise OSError(errno.EINVAL, "Invalid argument")
            ms = parse_mreq_source(bytes(value))
            self._source(opt, IpMreqn(ms.group, ms.interface, 0), ms.source, flow, ifindex, client)
        elif opt in (MCAST_JOIN_GROUP, MCAST_LEAVE_GROUP) or opt in _MCAST_SOURCE_OPTIONS:
            self._mcast(opt, value, flow, ifindex, client)
        elif opt in FILTER_OPTIONS:
            self._msfilter(opt, value, flow, ifindex, client)
        elif opt == IP_MULTICAST_TTL:
            v = _int(value)
            if v == -1:
                v = 1
            if not 0 <= v <= 255:
                raise OSError(errno.EINVAL, "Invalid argument")
            self.ttl = v
        elif opt in (IP_MULTICAST_LOOP, IP_MULTICAST_ALL):
            self._loop_all(opt == IP_MULTICAST_LOOP, bool(_int(value)), flow, client)
        elif opt == IP_MULTICAST_IF:
            m = multicast_if(bytes(value) if isinstance(value, (bytes, bytearray, memoryview))
                             else int(value).to_bytes(4, "little", signed=True))
            if m.ifindex == 0 and m.address == bytes(4):
                self.if_addr = bytes(4)
                return
            if not self._our_interface(m, flow, ifindex):
                raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
            self.if_addr = m.address if m.address != bytes(4) else (flow[1] if flow else bytes(4))

    def _set6(self, opt: int, value: Any, flow: tuple[int, bytes] | None, ifindex: int, client: Any) -> None:
        """setsockopt(IPPROTO_IPV6, `opt`, `value`), as do_ipv6_setsockopt."""
        if opt in (IPV6_JOIN_GROUP, IPV6_LEAVE_GROUP):
            if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) < 20:
                raise OSError(errno.EINVAL, "Invalid argument")  # shorter than ipv6_mreq
            b = bytes(value)
            group, index = b[:16], int.from_bytes(b[16:20], "little")
            (self._join6 if opt == IPV6_JOIN_GROUP else self._drop6)(group, index, flow, ifindex, client)
            return
        if opt in (MCAST_JOIN_GROUP, MCAST_LEAVE_GROUP) or opt in _MCAST_SOURCE_OPTIONS:
            self._mcast6(opt, value, flow, ifindex, client)
            return
        if opt == MCAST_MSFILTER:
            self._msfilter(opt, value, flow, ifindex, client)
            return
        v = _int6(value)
        if opt == IPV6_MULTICAST_HOPS:
            if not -1 <= v <= 255:
                raise OSError(errno.EINVAL, "Invalid argument")
            self.ttl = 1 if v == -1 else v
        elif opt == IPV6_MULTICAST_LOOP:
            if v not in (0, 1):
                raise OSError(errno.EINVAL, "Invalid argument")  # Linux takes 0 or 1 only here
            self._loop_all(True, bool(v), flow, client)
        elif opt == IPV6_MULTICAST_ALL:
            self._loop_all(False, bool(v), flow, client)
        elif opt == IPV6_MULTICAST_IF:
            if not _our_index(v, ifindex):
                raise OSError(errno.ENODEV, "No such device")
            self.if_index = v  # any interface of the host, as Linux takes; usnet sends on its netif

    def _join6(self, group: bytes, index: int, flow: tuple[int, bytes] | None, ifindex: int, client: Any,
               f: Filter = ANY_SOURCE) -> None:
        """__ipv6_sock_mc_join (ipv6_sock_mc_join_ssm with INCLUDE {source} as `f`)."""
        if group[0] != 0xFF:
            raise OSError(errno.EINVAL, "Invalid argument")
        if group in self.groups and _our_index(index, ifindex):  # (another interface's is no clash on Linux)
            raise OSError(errno.EADDRINUSE, "Address already in use")
        if len(self.groups) >= MAX_MEMBERSHIPS6:
            raise OSError(errno.ENOMEM, f"Cannot allocate memory (usnet: at most {MAX_MEMBERSHIPS6} IPv6 groups "
                                        "a socket)")
        if not _our_index(index, ifindex):
            raise OSError(errno.ENODEV, "No such device")
        if flow is not None:
            # the domain checks it again, and decides
            client.join_group(flow[0], group, True, f.include, sorted(f.sources))
        self.groups.append(group)
        self._keep(group, f.include, sorted(f.sources))

    def _drop6(self, group: bytes, index: int, flow: tuple[int, bytes] | None, ifindex: int, client: Any) -> None:
        """ipv6_sock_mc_drop: the membership goes, whatever its source filter."""
        if group[0] != 0xFF:
            raise OSError(errno.EINVAL, "Invalid argument")
        if group not in self.groups or not _our_index(index, ifindex):
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        if flow is not None:
            client.join_group(flow[0], group, False)
        self.groups.remove(group)
        self._keep(group, False, [])

    def _mcast6(self, opt: int, value: Any, flow: tuple[int, bytes] | None, ifindex: int, client: Any) -> None:
        """RFC 3678's options at IPPROTO_IPV6, as ipv6_mcast_join_leave and do_ipv6_mcast_group_source:
        a group_req or a group_source_req of at least its size (EINVAL), a group or source not
        AF_INET6 EADDRNOTAVAIL; then as IPV6_JOIN_GROUP, IPV6_LEAVE_GROUP and ip6_mc_source."""
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise OSError(errno.EINVAL, "Invalid argument")
        req = parse_group_req(bytes(value), opt in _MCAST_SOURCE_OPTIONS, exact=False)
        if req.group[0] != socket.AF_INET6 or (req.source is not None and req.source[0] != socket.AF_INET6):
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        group, index = req.group[1], req.ifindex
        if req.source is None:
            (self._join6 if opt == MCAST_JOIN_GROUP else self._drop6)(group, index, flow, ifindex, client)
            return
        self._filter_source(
            _TWIN[opt], group, req.source[1], group[0] == 0xFF, _our_index(index, ifindex), flow, client,
            lambda f: self._join6(group, index, flow, ifindex, client, f),
            lambda: self._drop6(group, index, flow, ifindex, client))

    def _loop_all(self, loop: bool, v: bool, flow: tuple[int, bytes] | None, client: Any) -> None:
        """IP(V6)_MULTICAST_LOOP (`loop`) or _ALL set to `v`: the domain acts on both (P.MulticastOptions)."""
        if loop:
            self.loop = v
        else:
            self.all = v
        if flow is not None:
            client.multicast_options(flow[0], self.loop, self.all)

    def get(self, opt: int) -> int:
        """getsockopt(IPPROTO_IP, `opt`) (IPPROTO_IPV6 for a `Multicast(6)`) as an int, as Python's
        getsockopt without a buffer length."""
        if self.family == 6:
            if opt in (IPV6_JOIN_GROUP, IPV6_LEAVE_GROUP, MCAST_JOIN_GROUP, MCAST_LEAVE_GROUP) \
                    or opt in _MCAST_SOURCE_OPTIONS:
                raise OSError(errno.ENOPROTOOPT, "Protocol not available")
            return {IPV6_MULTICAST_HOPS: self.ttl, IPV6_MULTICAST_LOOP: int(self.loop),
                    IPV6_MULTICAST_ALL: int(self.all), IPV6_MULTICAST_IF: self.if_index}[opt]
        if opt in (IP_ADD_MEMBERSHIP, IP_DROP_MEMBERSHIP, MCAST_JOIN_GROUP, MCAST_LEAVE_GROUP) \
                or opt in _SOURCE_OPTIONS or opt in _MCAST_SOURCE_OPTIONS:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        if opt == IP_MULTICAST_IF:
            return int.from_bytes(self.if_addr, "little")
        return {IP_MULTICAST_TTL: self.ttl, IP_MULTICAST_LOOP: int(self.loop), IP_MULTICAST_ALL: int(self.all)}[opt]

    # -- memberships ---------------------------------------------------------------------------

    @staticmethod
    def _our_interface(m: IpMreqn, flow: tuple[int, bytes] | None, ifindex: int) -> bool:
        """Whether `m` names the socket's netif (or none): by index, else by address (checked once
        the socket has its flow; its netif's address is not known before)."""
        if m.ifindex:
            return m.ifindex == ifindex
        return m.address == bytes(4) or flow is None or m.address == flow[1]

    def _join(self, m: IpMreqn, flow: tuple[int, bytes] | None, ifindex: int, client: Any,
              f: Filter = ANY_SOURCE) -> None:
        """ip_mc_join_group (ip_mc_join_group_ssm with INCLUDE {source} as `f`)."""
        if m.group[0] >> 4 != 14:
            raise OSError(errno.EINVAL, "Invalid argument")
        if not self._our_interface(m, flow, ifindex):
            raise OSError(errno.ENODEV, "No such device (usnet: the socket's netif is its only interface)")
        if flow is not None:
            # the domain checks it again, and decides
            client.join_group(flow[0], m.group, True, f.include, sorted(f.sources))
        elif m.group in self.groups:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        elif len(self.groups) >= MAX_MEMBERSHIPS:
            raise OSError(errno.ENOBUFS, "No buffer space available")
        self.groups.append(m.group)
        self._keep(m.group, f.include, sorted(f.sources))

    def _drop(self, m: IpMreqn, flow: tuple[int, bytes] | None, ifindex: int, client: Any) -> None:
        """ip_mc_leave_group: the membership goes, whatever its source filter."""
        if m.group not in self.groups or not self._our_interface(m, flow, ifindex):
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        if flow is not None:
            client.join_group(flow[0], m.group, False)
        self.groups.remove(m.group)
        self._keep(m.group, False, [])

    def _source(self, opt: int, m: IpMreqn, source: bytes, flow: tuple[int, bytes] | None, ifindex: int,
                client: Any) -> None:
        """IP_ADD/DROP_SOURCE_MEMBERSHIP, IP_BLOCK/UNBLOCK_SOURCE (and their MCAST_ forms) as
        do_ip_setsockopt and ip_mc_source (`_filter_source`)."""
        self._filter_source(
            opt, m.group, source, m.group[0] >> 4 == 14, self._our_interface(m, flow, ifindex), flow, client,
            lambda f: self._join(m, flow, ifindex, client, f), lambda: self._drop(m, flow, ifindex, client))

    def _filter_source(self, opt: int, group: bytes, source: bytes, is_group: bool, our_interface: bool,
                       flow: tuple[int, bytes] | None, client: Any, join: Any, drop: Any) -> None:
        """One source added to or taken from a membership's filter, as Linux's ip_mc_source and
        ip6_mc_source (`opt` the IPv4 option's number; `join(f)` and `drop()` the family's): a
        source-specific join first joins the group in INCLUDE mode (its EADDRINUSE ignored); then
        a group that is none EINVAL, another interface ENODEV, no membership EINVAL, a filter of
        the other mode EINVAL; a source past the bound ENOBUFS (igmp_max_msf 10, mld_max_msf 64),
        added twice or taken away that is not there EADDRNOTAVAIL; taking the last source of an
        INCLUDE filter leaves the group."""
        include = opt in (IP_ADD_SOURCE_MEMBERSHIP, IP_DROP_SOURCE_MEMBERSHIP)
        add = opt in (IP_ADD_SOURCE_MEMBERSHIP, IP_BLOCK_SOURCE)
        if opt == IP_ADD_SOURCE_MEMBERSHIP and group not in self.groups:
            join(Filter(True, frozenset((source,))))
            return
        if not is_group:
            raise OSError(errno.EINVAL, "Invalid argument")
        if not our_interface:
            raise OSError(errno.ENODEV, "No such device (usnet: the socket's netif is its only interface)")
        if group not in self.groups:
            raise OSError(errno.EINVAL, "Invalid argument (no membership of the group)")
        old = self.filters.get(group, ANY_SOURCE)
        if old.include != include:
            raise OSError(errno.EINVAL, "Invalid argument (the membership's filter is of the other mode)")
        if not add:
            if source not in old.sources:
                raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address (no such source)")
            if include and len(old.sources) == 1:  # INCLUDE {} is a leave, as Linux's
                drop()
                return
            new = Filter(include, old.sources - {source})
            slist = [s for s in self.slists.get(group, []) if s != source]
        else:
            most = MAX_SOURCES if self.family == 4 else MAX_SOURCES6
            if len(old.sources) >= most:
                raise OSError(errno.ENOBUFS, f"No buffer space available (at most {most} sources)")
            if source in old.sources:
                raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address (a source already there)")
            new = Filter(include, old.sources | {source})
            slist = [*self.slists.get(group, []), source]
        if flow is not None:
            client.source_filter(flow[0], group, new.include, sorted(new.sources))
        self._keep(group, include, slist)

    def _keep(self, group: bytes, include: bool, slist: list[bytes]) -> None:
        """The membership of `group` has the filter INCLUDE or EXCLUDE `slist` now (EXCLUDE []: any
        source, kept as no entry; also what a leave leaves behind)."""
        if include or slist:
            self.filters[group] = Filter(include, frozenset(slist))
            self.slists[group] = slist
        else:
            self.filters.pop(group, None)
            self.slists.pop(group, None)

    def _mcast(self, opt: int, value: Any, flow: tuple[int, bytes] | None, ifindex: int, client: Any) -> None:
        """RFC 3678's protocol-independent options at IPPROTO_IP, as ip_mcast_join_leave and
        do_mcast_group_source: a group_req (a group not AF_INET: EINVAL) or a group_source_req (a
        group or source not AF_INET: EADDRNOTAVAIL), the interface by index; then as their
        ip_mreq(_source) twins."""
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise OSError(errno.EINVAL, "Invalid argument")
        req = parse_group_req(bytes(value), opt in _MCAST_SOURCE_OPTIONS)
        m = IpMreqn(req.group[1], bytes(4), req.ifindex)
        if req.source is None:
            if req.group[0] != socket.AF_INET:
                raise OSError(errno.EINVAL, "Invalid argument")
            (self._join if opt == MCAST_JOIN_GROUP else self._drop)(m, flow, ifindex, client)
            return
        if req.group[0] != socket.AF_INET or req.source[0] != socket.AF_INET:
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        self._source(_TWIN[opt], m, req.source[1], flow, ifindex, client)

    def _msfilter(self, opt: int, value: Any, flow: tuple[int, bytes] | None, ifindex: int, client: Any) -> None:
        """setsockopt(IP_MSFILTER) and setsockopt(MCAST_MSFILTER) at IPPROTO_IP (do_ip_setsockopt,
        ip_mc_msfilter) or IPPROTO_IPV6 (ip6_mc_msfilter): the membership's whole filter. First
        the struct's checks (usnet.proto.cmsg: its length, the sources' bound ENOBUFS); at
        IPPROTO_IP a group_filter's group or a source not AF_INET EADDRNOTAVAIL (IPv6 reads
        sin6_addr whatever the family); then a group that is none EINVAL, a mode neither
        MCAST_INCLUDE nor MCAST_EXCLUDE EINVAL, another interface ENODEV; INCLUDE {} leaves the
        group (as IP_DROP_MEMBERSHIP: EADDRNOTAVAIL without a membership); without a membership
        EINVAL. The domain is sent the new filter whole (P.SourceFilter, a source given twice once)."""
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise OSError(errno.EINVAL, "Invalid argument")  # an int is 4 bytes: shorter than the head
        b, v4 = bytes(value), self.family == 4
        most = MAX_SOURCES if v4 else MAX_SOURCES6
        msf = (parse_ip_msfilter if opt == IP_MSFILTER else parse_group_filter)(b, most, _optmem())
        if opt == IP_MSFILTER:
            assert isinstance(msf.interface, bytes)
            group, sources = msf.group, list(msf.sources)
            m = IpMreqn(group, msf.interface, 0)
        elif v4:
            fam, group = sockaddr_of(msf.group)
            given = [sockaddr_of(s) for s in msf.sources]
            if fam != socket.AF_INET or any(f != socket.AF_INET for f, _ in given):
                raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
            sources = [a for _, a in given]
            assert isinstance(msf.interface, int)
            m = IpMreqn(group, bytes(4), msf.interface)
        else:
            group, sources = sin6_addr(msf.group), [sin6_addr(s) for s in msf.sources]
        if not (group[0] >> 4 == 14 if v4 else group[0] == 0xFF):
            raise OSError(errno.EINVAL, "Invalid argument")
        if msf.fmode not in (MCAST_INCLUDE, MCAST_EXCLUDE):
            raise OSError(errno.EINVAL, "Invalid argument (a filter mode neither MCAST_INCLUDE nor MCAST_EXCLUDE)")
        index = msf.interface if isinstance(msf.interface, int) else 0
        if not (self._our_interface(m, flow, ifindex) if v4 else _our_index(index, ifindex)):
            raise OSError(errno.ENODEV, "No such device (usnet: the socket's netif is its only interface)")
        include = msf.fmode == MCAST_INCLUDE
        if include and not sources:  # INCLUDE {} is a leave, as Linux's
            if v4:
                self._drop(m, flow, ifindex, client)
            else:
                self._drop6(group, index, flow, ifindex, client)
            return
        if group not in self.groups or not (v4 or index == ifindex):  # IPv6 names the membership's index
            raise OSError(errno.EINVAL, "Invalid argument (no membership of the group)")
        if flow is not None:
            client.source_filter(flow[0], group, include, sorted(set(sources)))
        self._keep(group, include, sources)

    def get_filter(self, opt: int, buf: Any, flow: tuple[int, bytes] | None, ifindex: int) -> bytes:
        """getsockopt(IP_MSFILTER) or getsockopt(MCAST_MSFILTER) with the caller's buffer `buf`
        (ip_mc_msfget, ip_mc_gsfget, ip6_mc_msfget): its head names the group (and the
        interface), its numsrc how many sources it wants. What comes back is Linux's: the head
        with the membership's mode and numsrc its real count, then as many sources as asked.
        Python's getsockopt cannot pass a buffer in: with an int `buf` (a length; 0 is an int's
        4 bytes, as getsockopt without one) usnet reads zeros where the kernel would read
        CPython's uninitialised bytes; a bytes-like `buf` is the caller's struct (usnet's own).
        Errors: under the head EINVAL; at IPPROTO_IP a group not multicast (or not AF_INET)
        EINVAL, an ip_msfilter's interface not the netif's ENODEV; at IPPROTO_IPV6 a group not
        AF_INET6 EADDRNOTAVAIL, not multicast EINVAL; no membership (a group_filter's index must
        be the membership's, the netif's) EADDRNOTAVAIL."""
        if isinstance(buf, (bytes, bytearray, memoryview)):
            b = bytes(buf)
        else:
            b = bytes(int(buf) or 4)
        v4 = self.family == 4
        if opt == IP_MSFILTER:
            asked: GroupFilter = parse_ip_msfilter(b)
            group = asked.group
            if group[0] >> 4 != 14:
                raise OSError(errno.EINVAL, "Invalid argument")
            assert isinstance(asked.interface, bytes)
            if not self._our_interface(IpMreqn(group, asked.interface, 0), flow, ifindex):
                raise OSError(errno.ENODEV, "No such device (usnet: the socket's netif is its only interface)")
            ours = group in self.groups
        else:
            asked = parse_group_filter(b)
            fam, group = sockaddr_of(asked.group)
            if v4 and (fam != socket.AF_INET or group[0] >> 4 != 14):
                raise OSError(errno.EINVAL, "Invalid argument")
            if not v4:
                if fam != socket.AF_INET6:
                    raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
                if group[0] != 0xFF:
                    raise OSError(errno.EINVAL, "Invalid argument")
            ours = group in self.groups and asked.interface == ifindex
        if not ours:
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address (no membership of the group)")
        f = self.filters.get(group, ANY_SOURCE)
        mode, slist = (MCAST_INCLUDE if f.include else MCAST_EXCLUDE), self.slists.get(group, [])
        if opt == IP_MSFILTER:
            return pack_ip_msfilter(asked, mode, slist, len(b))
        return pack_group_filter(asked, mode, socket.AF_INET if v4 else socket.AF_INET6, slist, len(b))

    def attach(self, flow: tuple[int, bytes], client: Any) -> None:
        """The socket's flow of the family is open (bind, first send, or again after a usnetd restart): it
        joins the groups kept so far and takes the options the domain acts on. A group the domain
        refuses now is forgotten (it was checked as the domain checks it when it was asked)."""
        if not (self.loop and self.all):
            client.multicast_options(flow[0], self.loop, self.all)
        for g in list(self.groups):
            f = self.filters.get(g, ANY_SOURCE)
            try:
                client.join_group(flow[0], g, True, f.include, sorted(f.sources))
            except OSError:
                self.groups.remove(g)
                self._keep(g, False, [])


@functools.cache
def _optmem() -> int:
    """net.core.optmem_max: an option longer is ENOBUFS (do_ip_setsockopt's check of IP_MSFILTER)."""
    try:
        with open("/proc/sys/net/core/optmem_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 131072  # Linux 6.9's default


def _our_index(index: int, ifindex: int) -> bool:
    """Whether an IPv6 option's interface `index` is taken: 0 (any), the netif's own (`ifindex`), or
    any interface of the kernel's namespace, as Linux takes any device that exists (ENODEV
    otherwise). usnet's netif is the socket's only interface: it joins and sends there, whichever
    was named, as a program under `usnet run` names the host's interface (if_nametoindex("eth0"))
    where the netif, not the kernel, now carries its traffic."""
    if index in (0, ifindex):
        return True
    try:
        socket.if_indextoname(index)
    except (OSError, OverflowError):
        return False
    return True
