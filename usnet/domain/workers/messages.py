"""The messages of a worker's command socket (docs/abi.md, "A worker's command socket"): each
byte layout built and parsed here, once.

A *netif message* (`neighbour_msg`, read by `neighbour_of`) carries the kind byte, the family and
the netif's name, then its rest: a neighbour (b"N", b"A"), a frame (b"F", b"L"), the host's groups
(b"G": `group_msgs`, `groups_of`) or a group's host-wide source filter (b"M": `filter_msg`,
`filter_of`). Pure bytes, no socket: usnetd (usnet.domain.workers.sharded) and the worker
(usnet.domain.workers.worker) both build and read them, and the parsers are property-tested."""

from __future__ import annotations

from typing import Any

from usnet.proto.wire.msf import Filter

__all__ = ["COMMAND_MAX", "GROUPS_A_MESSAGE", "GROUP_ALL", "GROUP_JOIN", "GROUP_LEAVE", "HOST_SOURCES_MAX",
           "filter_msg", "filter_of", "group_msgs", "groups_of", "neighbour_msg", "neighbour_of"]

# the longest message on a worker's command socket: a whole datagram handed over (b"F": up to 65,535
# bytes of IP payload, its headers, the netif's name)
COMMAND_MAX = 1 << 17
# b"G"'s op byte (`group_msgs`), and how many groups one message names at most (the whole list of a
# worker's start goes in parts: 1,024 IPv6 groups are 16 KiB)
GROUP_LEAVE, GROUP_JOIN, GROUP_ALL = 0, 1, 2
GROUPS_A_MESSAGE = 1024
# b"M" (`filter_msg`): the most sources one group's host-wide filter names; a union of more (an
# INCLUDE union grows with its sockets) is told as any-source, what a worker assumed before it was
# told, and counted `host_filter_too_big` in usnetd
HOST_SOURCES_MAX = 1024


def neighbour_msg(kind: bytes, netif: str, family: int, rest: bytes | bytearray) -> bytes:
    """A message about a netif on a command socket: `kind` (b"N" usnetd tells a worker a neighbour,
    `rest` its address and MAC; b"A" a worker tells usnetd it asked for the address `rest`; b"F"
    usnetd hands a worker a datagram it put back together, `rest` the Ethernet frame; b"L" a group
    datagram a flow sent with IP_MULTICAST_LOOP, either way, for the members of its port), the
    family (4, 6), the netif's name, then `rest`."""
    name = netif.encode()
    return kind + bytes([family, len(name)]) + name + rest


def group_msgs(netif: str, family: int, op: int, groups: list[bytes]) -> list[bytes]:
    """b"G" messages (`neighbour_msg`) telling a worker the host's groups of one family on `netif`:
    `op` GROUP_LEAVE, GROUP_JOIN, or GROUP_ALL (the list that follows is the whole set: the rest
    of that family is forgotten), then the groups (of `family`: 4 or 16 bytes each), at most
    GROUPS_A_MESSAGE a message (GROUP_ALL's later parts are joins)."""
    out = []
    for i in range(0, max(len(groups), 1), GROUPS_A_MESSAGE):
        part = b"".join(groups[i:i + GROUPS_A_MESSAGE])
        out.append(neighbour_msg(b"G", netif, family, bytes([op if i == 0 else GROUP_JOIN]) + part))
    return out


def groups_of(rest: bytes, family: int) -> tuple[int, list[bytes]] | None:
    """(op, groups) of a b"G" message's rest (`group_msgs`); None if it is not one: an unknown op,
    a length that is not whole groups of `family`, or more than GROUPS_A_MESSAGE of them (each
    group's address is the switch's to check: `host_group`)."""
    size = 4 if family == 4 else 16
    if not rest or rest[0] > GROUP_ALL or (len(rest) - 1) % size or (len(rest) - 1) // size > GROUPS_A_MESSAGE:
        return None
    return rest[0], [bytes(rest[i:i + size]) for i in range(1, len(rest), size)]


def filter_msg(netif: str, family: int, group: bytes, f: Filter) -> bytes:
    """The b"M" message (`neighbour_msg`) telling a worker the host's union of `group`'s source
    filters on `netif` (RFC 3376 §3.2): the group, the mode (one byte: 1 INCLUDE, 0 EXCLUDE), then
    the sources (each the group's size, network order, sorted), at most HOST_SOURCES_MAX (the
    caller tells a larger union as any-source)."""
    if len(f.sources) > HOST_SOURCES_MAX:
        raise ValueError(f"a host filter names at most {HOST_SOURCES_MAX} sources, not {len(f.sources)}")
    return neighbour_msg(b"M", netif, family, group + bytes([f.include]) + b"".join(sorted(f.sources)))


def filter_of(rest: bytes, family: int) -> tuple[bytes, Filter] | None:
    """(group, filter) of a b"M" message's rest (`filter_msg`); None if it is not one: shorter than
    a group and the mode, a mode above 1, a length that is not whole sources of `family`, more than
    HOST_SOURCES_MAX of them, or one twice (the group's address is the switch's to check:
    `host_filter`)."""
    size = 4 if family == 4 else 16
    n, odd = divmod(len(rest) - size - 1, size)
    if n < 0 or odd or rest[size] > 1 or n > HOST_SOURCES_MAX:
        return None
    sources = frozenset(bytes(rest[i:i + size]) for i in range(size + 1, len(rest), size))
    if len(sources) != n:
        return None
    return bytes(rest[:size]), Filter(bool(rest[size]), sources)


def neighbour_of(switches: dict[str, Any], data: bytes) -> tuple[Any, Any, bytes]:
    """(switch, its ARP or ND cache, the rest) of a `neighbour_msg`; switch None if it names no
    netif of `switches`."""
    if len(data) < 3:
        return None, None, b""
    family, n = data[1], data[2]
    sw = switches.get(data[3:3 + n].decode(errors="replace"))
    if sw is None or family not in (4, 6):
        return None, None, b""
    return sw, sw.arp if family == 4 else sw.nd, data[3 + n:]
