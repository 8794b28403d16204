"""The host's side of usnet's devices, through netlink (pyroute2).

Why one module: `usnet up/down`, the TAP benchmark and the privileged tests
all need to find a subnet nothing on the host uses and to remove the links
they made; each had its own copy.
"""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["delete_links", "free_subnet", "link_exists", "used_networks"]


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host has a route to or an address in."""
    from pyroute2 import IPRoute

    nets = []
    with IPRoute() as ipr:
        for r in ipr.get_routes(family=socket.AF_INET, table=254) + ipr.get_routes(family=socket.AF_INET, table=255):
            dst = r.get_attr("RTA_DST")
            if dst and r["dst_len"]:
                nets.append(ipaddress.IPv4Network(f"{dst}/{r['dst_len']}", strict=False))
        for a in ipr.get_addr(family=socket.AF_INET):
            nets.append(ipaddress.IPv4Network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", strict=False))
    return nets


def free_subnet(first: int = 100, count: int = 140, start: int = 0) -> int:
    """A second octet x in [first, first + count) such that 10.x.0.0/24 overlaps nothing on the host.

    `start` spreads concurrent callers (tests in parallel) over the range.
    """
    used = used_networks()
    for i in range(count):
        x = first + (start + i) % count
        net = ipaddress.IPv4Network(f"10.{x}.0.0/24")
        if not any(net.overlaps(u) for u in used):
            return x
    raise OSError(f"no free 10.x.0.0/24 with x in [{first}, {first + count})")


def link_exists(ifname: str) -> bool:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def delete_links(names: list[str]) -> None:
    """Remove these links if they exist (a veth goes with its peer)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for name in names:
            for idx in ipr.link_lookup(ifname=name):
                ipr.link("del", index=idx)
