"""One netif's routes: the neighbour a packet for an address goes to, or none.

This is usnet's one route decision. The flow switch asks it for every packet it
puts on the link (`usnet.domain.netif.Netif.next_hop` is `Routes.next_hop`),
and when a connected flow is opened (ENETUNREACH at once, as Linux's connect).
A client asks it too, from what `FlowOpened` tells it of its netif (`prefix`,
`gateway`): so an unconnected UDP `sendto`, or a UDP `connect`, to an address
with no route fails with ENETUNREACH at once, as Linux's does, instead of
being dropped by the switch (TX_DROPPED NO_ROUTE) where no socket call sees it.

A netif's table is what the kernel holds for one interface: each family's
connected prefix (IPv6's link-local prefix fe80::/10 and link-scope multicast
too), and each family's default gateway if one is configured. Addresses are
packed (4 or 16 bytes), as on the wire.
"""

from __future__ import annotations

import ipaddress

from usnet.proto.wire.ipv6 import is_link_local6

__all__ = ["Routes"]

_LOOPBACK6 = bytes(15) + b"\x01"
_LIMITED_BROADCAST = b"\xff\xff\xff\xff"


class Routes:
    """The routes of one netif: its connected prefixes, its default gateways, its own addresses.

    `address` ("10.77.0.2/24") and `address6` ("fd00:77::2/64", or None: no IPv6)
    name the netif's addresses with their prefixes; `gateway` and `gateway6`
    (packed, or None) are the default routes; `own6` any further IPv6 addresses
    of the netif (its link-local one). A client builds one for its flow's family
    only (`for_flow`); the other family then has no route at all, which is right:
    its flow cannot carry it.
    """

    __slots__ = ("_mask", "_mask6", "_net", "_net6", "gateway", "gateway6", "ip", "ip6", "own")

    def __init__(self, address: str | None, gateway: bytes | None = None, address6: str | None = None,
                 gateway6: bytes | None = None, own6: tuple[bytes, ...] = ()) -> None:
        self.ip: bytes | None = None
        self._net = self._mask = -1  # no IPv4: nothing is on link (an int & -1 never equals -1)
        if address is not None:
            iface = ipaddress.IPv4Interface(address)
            self.ip = iface.ip.packed
            self._net, self._mask = int(iface.network.network_address), int(iface.network.netmask)
        self.gateway = gateway if self.ip is not None else None
        self.ip6: bytes | None = None
        self._net6 = self._mask6 = -1
        if address6 is not None:
            iface6 = ipaddress.IPv6Interface(address6)
            self.ip6 = iface6.ip.packed
            self._net6, self._mask6 = int(iface6.network.network_address), int(iface6.network.netmask)
        self.gateway6 = gateway6 if self.ip6 is not None else None
        self.own = frozenset(a for a in (self.ip, self.ip6, *own6) if a is not None)

    @classmethod
    def for_flow(cls, local_addr: str, prefix: int, gateway: str | None) -> Routes:
        """The routes a client knows from its FlowOpened: its family's address, prefix and gateway.

        `prefix` -1 (a domain that does not say): every destination is taken as
        reachable, so the switch decides, as before.
        """
        ip = ipaddress.ip_address(local_addr)
        gw = None if gateway is None else ipaddress.ip_address(gateway).packed
        if prefix < 0:  # unknown: a default route to our own address makes everything reachable
            gw, prefix = ip.packed, ip.max_prefixlen
        if ip.version == 6:
            return cls(None, None, f"{ip}/{prefix}", gw)
        return cls(f"{ip}/{prefix}", gw)

    @property
    def broadcast4(self) -> bytes | None:
        """The IPv4 subnet's broadcast address, which no peer has; None for a /31 or /32, or
        without IPv4. Its network address (the lowest) is an ordinary host address: Linux
        routes it as unicast since 5.14 ("ip: Treat IPv4 segment's lowest address as unicast";
        before, fib_add_ifaddr added a broadcast route for it), so a datagram to it is sent
        and a connect to it asks for its neighbour, as to any other host of the subnet."""
        host = ~self._mask & 0xFFFFFFFF
        if self.ip is None or host < 3:
            return None
        return (self._net | host).to_bytes(4, "big")

    def on_link(self, dst: bytes) -> bool:
        """Whether `dst` (4 or 16 bytes) is on the link: in a connected prefix."""
        if len(dst) == 16:
            return self.ip6 is not None and (
                int.from_bytes(dst, "big") & self._mask6 == self._net6 or is_link_local6(dst))
        return int.from_bytes(dst, "big") & self._mask == self._net

    def next_hop(self, dst: bytes) -> bytes | None:
        """The neighbour to hand a packet for `dst` (4 or 16 bytes) to, or None if there is no route."""
        if len(dst) == 16:
            if self.ip6 is None or dst == bytes(16) or dst == _LOOPBACK6:
                return None  # no IPv6 here; the unspecified and loopback addresses never leave
            if dst[0] == 0xFF or self.on_link(dst):
                return dst  # multicast maps to its MAC; on-link neighbours are asked for
            return self.gateway6
        if self.ip is None:
            return None
        if int.from_bytes(dst, "big") & self._mask == self._net or dst == _LIMITED_BROADCAST:
            return dst
        return self.gateway

    def reaches(self, dst: bytes) -> bool:
        """Whether a packet for `dst` can go anywhere: one of our own addresses, or a next hop."""
        return dst in self.own or self.next_hop(dst) is not None
