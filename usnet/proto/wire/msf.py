"""Multicast source filters (RFC 3376 §3, RFC 3810 §4): a socket's, the interface's union, and the records.

Sans-I/O, for IGMPv3 and MLDv2 alike (a source is 4 or 16 bytes, as its group). A socket's
membership of a group has a filter: INCLUDE a set of sources (source-specific: only those), or
EXCLUDE a set (any source but those; an any-source join is EXCLUDE {}). Not a member is INCLUDE {}.
The interface is a member with the union of its sockets' filters (RFC 3376 §3.2, as Linux's
ip_mc_list keeps it with sfcount[] and each source's sf_count[]): EXCLUDE if any socket excludes,
with the sources every excluding socket excludes and no including socket includes; INCLUDE the
union of the included sources otherwise. A change of the interface's state is said with the
records of RFC 3376 §5.1 (`change_records`), its current state with one record (`current_record`).
Records waiting to be sent are merged group by group (`merge_records`), as RFC 3376 §5.1 merges a
new change into a pending report.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "ALLOW_NEW_SOURCES",
    "ANY_SOURCE",
    "BLOCK_OLD_SOURCES",
    "CHANGE_TO_EXCLUDE",
    "CHANGE_TO_INCLUDE",
    "MAX_SOURCES",
    "MAX_SOURCES6",
    "MODE_IS_EXCLUDE",
    "MODE_IS_INCLUDE",
    "NOT_MEMBER",
    "Filter",
    "Record",
    "admits",
    "change_records",
    "current_record",
    "merge_records",
    "split_records",
    "union",
]

# group record types (RFC 3376 §4.2.12, RFC 3810 §5.2.12): current state, filter mode changes,
# source list changes
MODE_IS_INCLUDE, MODE_IS_EXCLUDE, CHANGE_TO_INCLUDE, CHANGE_TO_EXCLUDE = 1, 2, 3, 4
ALLOW_NEW_SOURCES, BLOCK_OLD_SOURCES = 5, 6
# sources a socket's filter of one group holds: Linux's net.ipv4.igmp_max_msf default (ENOBUFS past it)
MAX_SOURCES = 10
MAX_SOURCES6 = 64  # an IPv6 group's: Linux's net.ipv6.mld_max_msf default


class Filter(NamedTuple):
    """A source filter: `include` (INCLUDE mode) or not (EXCLUDE), and its sources."""

    include: bool
    sources: frozenset[bytes]


NOT_MEMBER = Filter(True, frozenset())  # INCLUDE {}: no membership
ANY_SOURCE = Filter(False, frozenset())  # EXCLUDE {}: an any-source membership (IP_ADD_MEMBERSHIP)


class Record(NamedTuple):
    """One group record of a report: its type, the group, its sources (in a stable order)."""

    rtype: int
    group: bytes
    sources: tuple[bytes, ...] = ()


def union(filters: Iterable[Filter], any_source: int = 0) -> Filter:
    """The interface's filter from its sockets' `filters` and `any_source` more EXCLUDE {} ones
    (memberships whose sources are not known here, counted as any-source): RFC 3376 §3.2."""
    included: set[bytes] = set()
    excluded: frozenset[bytes] | None = frozenset() if any_source else None
    for f in filters:
        if f.include:
            included |= f.sources
        else:
            excluded = f.sources if excluded is None else excluded & f.sources
    if excluded is not None:
        return Filter(False, excluded - included)
    return Filter(True, frozenset(included))


def admits(f: Filter, source: bytes) -> bool:
    """Whether a datagram from `source` passes filter `f` (Linux's ip_mc_sf_allow, ip_check_mc_rcv)."""
    return (source in f.sources) == f.include


def _sorted(s: Iterable[bytes]) -> tuple[bytes, ...]:
    return tuple(sorted(s))


def change_records(group: bytes, old: Filter, new: Filter) -> list[Record]:
    """The State-Change records from `old` to `new` (RFC 3376 §5.1's table, as Linux's
    igmpv3_send_cr): the same mode, ALLOW the sources now let through and BLOCK those no
    longer; a mode change, TO_IN or TO_EX with the new sources. Nothing if nothing changed."""
    if old.include != new.include:
        return [Record(CHANGE_TO_INCLUDE if new.include else CHANGE_TO_EXCLUDE, group, _sorted(new.sources))]
    gained, lost = new.sources - old.sources, old.sources - new.sources
    allow, block = (gained, lost) if new.include else (lost, gained)
    out = []
    if allow:
        out.append(Record(ALLOW_NEW_SOURCES, group, _sorted(allow)))
    if block:
        out.append(Record(BLOCK_OLD_SOURCES, group, _sorted(block)))
    return out


def current_record(group: bytes, f: Filter) -> Record:
    """The Current-State record of a group in filter `f` (a query's answer): IS_IN or IS_EX with its sources."""
    return Record(MODE_IS_INCLUDE if f.include else MODE_IS_EXCLUDE, group, _sorted(f.sources))


def split_records(records: list[Record], room: int, source_size: int) -> list[list[Record]]:
    """`records` in reports of at most `room` bytes of records each (a record is 8 bytes, its
    group and `source_size` a source), a record with more sources than one report holds cut into
    several of its type, as Linux's add_grec starts a new packet when one is full."""
    head = 4 + source_size  # record type, aux length, number of sources; the group
    out: list[list[Record]] = [[]]
    left = room
    for r in records:
        srcs = r.sources
        while True:
            if head + (source_size if srcs else 0) > left and out[-1]:
                out.append([])
                left = room
            fit = (left - head) // source_size
            take, srcs = srcs[:fit], srcs[fit:]
            out[-1].append(Record(r.rtype, r.group, take))
            left -= head + source_size * len(take)
            if not srcs:
                break
    return [pkt for pkt in out if pkt]


def merge_records(records: Iterable[Record]) -> list[Record]:
    """`records` of one group, in the order they were made, as the fewest that take a router to the
    same state (RFC 3376 §5.1's merge of a change into a pending report, RFC 3810 §6.1 alike): the
    latest Current-State record (IS_IN, IS_EX), first, then the changes. A filter mode change (TO_IN,
    TO_EX) supersedes the changes before it and takes in those after it (its sources are the
    interface's state then, as the RFC's merged TO_IN/TO_EX hold the current state); otherwise one
    ALLOW and one BLOCK, each source in the one its latest change says (ALLOW {s} then BLOCK {s}:
    BLOCK {s}, the RFC's "all with retransmission state that must be blocked"; not nothing, since
    the ALLOW may repeat a state the router already holds). A Current-State record is not merged
    into the changes: a router acts on a change (a TO_IN {} starts its fast leave) as on no
    Current-State record."""
    current: Record | None = None
    mode: int | None = None  # a pending TO_IN or TO_EX
    listed: dict[bytes, None] = {}  # its sources, or ALLOW's
    blocked: dict[bytes, None] = {}  # BLOCK's (ordered sets: dicts)
    group = b""
    for r in records:
        group = r.group
        if r.rtype in (MODE_IS_INCLUDE, MODE_IS_EXCLUDE):
            current = r
        elif r.rtype in (CHANGE_TO_INCLUDE, CHANGE_TO_EXCLUDE):
            mode, listed, blocked = r.rtype, dict.fromkeys(r.sources), {}
        elif mode is None:  # ALLOW, BLOCK: each source in the one its latest change names
            add, drop = (listed, blocked) if r.rtype == ALLOW_NEW_SOURCES else (blocked, listed)
            for src in r.sources:
                add[src] = None
                drop.pop(src, None)
        elif (r.rtype == ALLOW_NEW_SOURCES) == (mode == CHANGE_TO_INCLUDE):
            listed.update(dict.fromkeys(r.sources))  # into TO_IN's (passing) or TO_EX's (blocked) list
        else:
            for src in r.sources:
                listed.pop(src, None)
    out = [current] if current is not None else []
    if mode is not None:
        out.append(Record(mode, group, _sorted(listed)))
        return out
    if listed:
        out.append(Record(ALLOW_NEW_SOURCES, group, _sorted(listed)))
    if blocked:
        out.append(Record(BLOCK_OLD_SOURCES, group, _sorted(blocked)))
    return out
