"""IPv4 multicast options of a usnet UDP socket, as Linux keeps them on an inet socket.

IP_ADD_MEMBERSHIP / IP_DROP_MEMBERSHIP (an ip_mreq or an ip_mreqn, told apart by length as
do_ip_setsockopt does: usnet.proto.cmsg.parse_mreq), IP_MULTICAST_IF, IP_MULTICAST_TTL,
IP_MULTICAST_LOOP and IP_MULTICAST_ALL. Membership is the domain's: a bound socket's join is a
control request for its IPv4 flow (P.JoinGroup), which the domain checks and may refuse; a
socket not bound yet keeps its groups here, checked as Linux would check them, and its flow
joins them when it is opened (`attach`), as a kernel socket's memberships do not need a port.

Errors, in Linux's order (ip_mc_join_group, ip_mc_leave_group): an address outside 224/4
EINVAL; an interface (index or address) that is not the socket's netif ENODEV; a group joined
twice EADDRINUSE; more than 20 ENOBUFS; a drop of a group not joined EADDRNOTAVAIL.
"""

from __future__ import annotations

import errno
from typing import Any

from usnet.proto.cmsg import IpMreqn, multicast_if, parse_mreq

__all__ = ["IP_ADD_MEMBERSHIP", "IP_DROP_MEMBERSHIP", "IP_MULTICAST_ALL", "IP_MULTICAST_IF", "IP_MULTICAST_LOOP",
           "IP_MULTICAST_TTL", "MAX_MEMBERSHIPS", "MULTICAST_OPTIONS", "Multicast", "is_group"]

IP_MULTICAST_IF, IP_MULTICAST_TTL, IP_MULTICAST_LOOP, IP_ADD_MEMBERSHIP, IP_DROP_MEMBERSHIP = 32, 33, 34, 35, 36
IP_MULTICAST_ALL = 49
MULTICAST_OPTIONS = frozenset((IP_MULTICAST_IF, IP_MULTICAST_TTL, IP_MULTICAST_LOOP, IP_ADD_MEMBERSHIP,
                               IP_DROP_MEMBERSHIP, IP_MULTICAST_ALL))
MAX_MEMBERSHIPS = 20  # Linux's net.ipv4.igmp_max_memberships (the domain holds a flow to it too)


def is_group(host: str) -> bool:
    """Whether dotted IPv4 `host` is in 224.0.0.0/4."""
    return ":" not in host and 224 <= int(host.split(".", 1)[0]) <= 239


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
    """One socket's memberships and multicast options; `flow` is its IPv4 flow's (channel id, local
    address) once it has one, and `join` the control request (the domain's refusal raises)."""

    def __init__(self) -> None:
        self.groups: list[bytes] = []
        self.ttl = 1
        self.loop = True
        self.all = True
        self.if_addr = bytes(4)

    # -- setsockopt / getsockopt -------------------------------------------------------------

    def set(self, opt: int, value: Any, flow: tuple[int, bytes] | None, ifindex: int, client: Any) -> None:
        """setsockopt(IPPROTO_IP, `opt`, `value`); `ifindex`: the kernel's index of the socket's netif."""
        if opt in (IP_ADD_MEMBERSHIP, IP_DROP_MEMBERSHIP):
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise OSError(errno.EINVAL, "Invalid argument")  # an int is 4 bytes: shorter than ip_mreq
            m = parse_mreq(bytes(value))
            (self._join if opt == IP_ADD_MEMBERSHIP else self._drop)(m, flow, ifindex, client)
        elif opt == IP_MULTICAST_TTL:
            v = _int(value)
            if v == -1:
                v = 1
            if not 0 <= v <= 255:
                raise OSError(errno.EINVAL, "Invalid argument")
            self.ttl = v
        elif opt in (IP_MULTICAST_LOOP, IP_MULTICAST_ALL):
            v = bool(_int(value))
            if opt == IP_MULTICAST_LOOP:
                self.loop = v
            else:
                self.all = v
            if flow is not None:
                client.multicast_options(flow[0], self.loop, self.all)
        elif opt == IP_MULTICAST_IF:
            m = multicast_if(bytes(value) if isinstance(value, (bytes, bytearray, memoryview))
                             else int(value).to_bytes(4, "little", signed=True))
            if m.ifindex == 0 and m.address == bytes(4):
                self.if_addr = bytes(4)
                return
            if not self._our_interface(m, flow, ifindex):
                raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
            self.if_addr = m.address if m.address != bytes(4) else (flow[1] if flow else bytes(4))

    def get(self, opt: int) -> int:
        """getsockopt(IPPROTO_IP, `opt`) as an int, as Python's getsockopt without a buffer length."""
        if opt in (IP_ADD_MEMBERSHIP, IP_DROP_MEMBERSHIP):
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

    def _join(self, m: IpMreqn, flow: tuple[int, bytes] | None, ifindex: int, client: Any) -> None:
        if m.group[0] >> 4 != 14:
            raise OSError(errno.EINVAL, "Invalid argument")
        if not self._our_interface(m, flow, ifindex):
            raise OSError(errno.ENODEV, "No such device (usnet: the socket's netif is its only interface)")
        if flow is not None:
            client.join_group(flow[0], m.group, True)  # the domain checks it again, and decides
        elif m.group in self.groups:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        elif len(self.groups) >= MAX_MEMBERSHIPS:
            raise OSError(errno.ENOBUFS, "No buffer space available")
        self.groups.append(m.group)

    def _drop(self, m: IpMreqn, flow: tuple[int, bytes] | None, ifindex: int, client: Any) -> None:
        if m.group not in self.groups or not self._our_interface(m, flow, ifindex):
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        if flow is not None:
            client.join_group(flow[0], m.group, False)
        self.groups.remove(m.group)

    def attach(self, flow: tuple[int, bytes], client: Any) -> None:
        """The socket's IPv4 flow is open (bind, first send, or again after a usnetd restart): it
        joins the groups kept so far and takes the options the domain acts on. A group the domain
        refuses now is forgotten (it was checked as the domain checks it when it was asked)."""
        if not (self.loop and self.all):
            client.multicast_options(flow[0], self.loop, self.all)
        for g in list(self.groups):
            try:
                client.join_group(flow[0], g, True)
            except OSError:
                self.groups.remove(g)

