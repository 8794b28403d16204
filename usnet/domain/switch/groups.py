"""Multicast membership of one netif's flows, IPv4 and IPv6: who gets a copy of a datagram to a group.

Membership is the domain's (docs/design-notes.md, "IPv4 multicast on UDP"): a client asks
with a control request (P.JoinGroup) for one of its flows, the domain checks it and keeps it
here; a membership dies with its flow. The receive path asks `members` for a datagram's
(group, port) and copies the datagram into every member's pool, as Linux delivers multicast to
every matching socket. The host's duties (usnet.domain.switch.multicast) speak IGMP or MLD
when a group gains its first member on the netif or loses its last (`join` and `leave` say
which). A group is 4 bytes (IPv4) or 16 (IPv6): one table holds both, the length tells them apart.

Under `usnetd --workers N` a netif's flows are spread over N processes, but the link must hear
one host: usnetd's table also counts the memberships of flows held by its other workers
(`join_remote`, `leave_remote`), so that its reports and query answers are for the union, and a
group's first join and last leave are said once per netif (usnet.domain.workers). A worker's
table keeps, beside its own flows' memberships, the groups the host is in (`host`: usnetd tells
each worker the union's first joins and last leaves), so that it takes a datagram to a group held
on another worker's port for an IP_MULTICAST_ALL listener of its own, as Linux's host-wide
membership does, and loops to another worker only what the host holds.
"""

from __future__ import annotations

import errno
from collections import Counter
from typing import TYPE_CHECKING

from usnet.proto.wire.igmp import ALL_HOSTS, group_mac4, is_multicast4
from usnet.proto.wire.ipv6 import multicast_mac
from usnet.proto.wire.mld import is_multicast6
from usnet.proto.wire.msf import ANY_SOURCE, MAX_SOURCES, MAX_SOURCES6, NOT_MEMBER, Filter, admits, union

if TYPE_CHECKING:
    from usnet.domain.switch.table import Flow

__all__ = ["HOST_GROUPS_MAX", "MAX_MEMBERSHIPS", "MAX_MEMBERSHIPS6", "OPTMEM_MAX", "GroupTable", "check_filter",
           "group_mac"]

MAX_MEMBERSHIPS = 20  # IPv4 groups per flow (socket): Linux's net.ipv4.igmp_max_memberships default
# IPv6 groups per flow: Linux has no count (its bound is the socket's option memory, optmem_max:
# 2333 groups with the default of this kernel), usnet a smaller one, ENOMEM past it as Linux's
MAX_MEMBERSHIPS6 = 256
# A flow's option memory, as Linux's socket's (sk_omem_alloc, bounded by net.core.optmem_max, this
# kernel's default): each membership and each source filter is charged what Linux's sock_kmalloc
# charges for it, and one that would reach the bound is refused, ENOBUFS. Without it an IPv6 flow
# held 256 filters of 64 sources, twice a Linux socket's 118, and the domain all of them.
OPTMEM_MAX = 131072
_SOCKLIST = {4: 48, 16: 56}  # sizeof(struct ip_mc_socklist), sizeof(struct ipv6_mc_socklist)
# the host-wide groups a worker's table keeps (`set_host`): usnetd's union is bounded by its flows'
# memberships, this by itself, so a wrong count from usnetd cannot grow a worker without end
HOST_GROUPS_MAX = 65536
_SFLIST = 24  # struct ip_sf_socklist / ip6_sf_socklist without its addresses (sl_max, sl_count, rcu)


def _filter_cost(group: bytes, f: Filter) -> int:
    """What Linux charges a socket for filter `f` of `group`: nothing for any-source (no list), else
    the list's header and an address (4 or 16 bytes) a source, as ip_mc_msfilter's and
    ip6_mc_msfilter's allocation (a source added one at a time grows it 10 at a time there)."""
    return 0 if f == ANY_SOURCE else _SFLIST + len(group) * len(f.sources)


def group_mac(group: bytes) -> bytes:
    """The Ethernet address of a group of either family: 01:00:5e:... (RFC 1112), 33:33:... (RFC 2464)."""
    return group_mac4(group) if len(group) == 4 else multicast_mac(group)


def check_filter(group: bytes, f: Filter) -> None:
    """A membership's source filter as a client asked for it, checked whatever the client library
    did: sources of the group's family (EINVAL), none twice (EINVAL), at most MAX_SOURCES
    (ENOBUFS, Linux's igmp_max_msf; MAX_SOURCES6 for an IPv6 group, mld_max_msf), not INCLUDE {}
    (EINVAL: that is no membership; a leave is JoinGroup's)."""
    if any(len(s) != len(group) for s in f.sources):
        raise OSError(errno.EINVAL, f"Invalid argument (a source of a {len(group)}-byte group is {len(group)} bytes)")
    most = MAX_SOURCES if len(group) == 4 else MAX_SOURCES6
    if len(f.sources) > most:
        raise OSError(errno.ENOBUFS, f"No buffer space available (at most {most} sources a group and "
                                     "socket, as Linux's igmp_max_msf and mld_max_msf)")
    if f == NOT_MEMBER:
        raise OSError(errno.EINVAL, "Invalid argument (INCLUDE {} is no membership)")


class GroupTable:
    """(group, UDP port) -> the member flows; per flow its groups; per group how many memberships,
    the source filters of the memberships that have one and the netif's union of them.

    `held`: the groups the netif is in itself, as a Linux interface is by the device (all-hosts,
    ip_mc_up's; IPv6's all-nodes and the solicited-node group of each address, ipv6_dev_mc_inc).
    Each is an any-source membership that never ends: a flow's join of one is no first join and
    its leave no last (Linux counts a socket's on top of the device's, mca_users), and a query's
    answer names it. Without it a client's join and leave of the netif's solicited-node group had
    the link hear the netif leave it."""

    def __init__(self, held: frozenset[bytes] = frozenset({ALL_HOSTS})) -> None:
        self.held = held
        self.members: dict[tuple[bytes, int], list[Flow]] = {}
        self.of_flow: dict[int, list[bytes]] = {}  # flow id -> its groups
        # group -> memberships on this netif: its own flows' and, in usnetd under workers, those
        # other workers hold (`join_remote`); what reports, query answers and the MACs go by
        self.refs: Counter[bytes] = Counter()
        # in worker k of `usnetd --workers N`: the groups the host is in over all workers, as usnetd
        # tells (`set_host`); the netif is in them (`is_member`) without a membership here
        self.host: set[bytes] = set()
        # in a worker ({} there, None elsewhere): the host's union of the source filters of the
        # groups in `host` (usnetd tells, b"M": `set_host_state`), where it is not EXCLUDE {}; what a
        # datagram's source must pass there (`admits`), as Linux's ip_check_mc_rcv asks the device's
        # filter, not one CPU's sockets'. A worker's own `states` are only its flows' part of it
        self.host_states: dict[bytes, Filter] | None = None
        # the Ethernet addresses the receive path admits for them and the held groups (all-hosts
        # always: every Linux host is in 224.0.0.1, IGMP queries and datagrams to it, unasked)
        self.macs: set[bytes] = set()
        self._macs()
        # group -> flow id -> its filter, for the memberships that are not any-source (EXCLUDE {})
        self.filters: dict[bytes, dict[int, Filter]] = {}
        # group -> usnetd's channel id of another worker's member flow -> its filter (usnetd under
        # workers: the worker filters its flows' datagrams; usnetd's union and reports need them)
        self.remote_filters: dict[bytes, dict[int, Filter]] = {}
        # group -> the netif's union of its memberships' filters, for the groups where that is not
        # EXCLUDE {} (what a datagram's source must pass, and what the reports say)
        self.states: dict[bytes, Filter] = {}
        self.optmem: dict[int, int] = {}  # flow id -> its memberships' and filters' charge (`_charge`)

    def state(self, group: bytes) -> Filter:
        """The netif's filter of `group` (RFC 3376 §3.2): INCLUDE {} if it is no member (a held
        group always is one, any-source)."""
        if group not in self.refs:
            return ANY_SOURCE if group in self.held else NOT_MEMBER
        return self.states.get(group, ANY_SOURCE)

    def is_member(self, group: bytes) -> bool:
        """Whether the netif is in `group`: a flow's (or another worker's) membership, a held one, or
        (in a worker) one the host is in (`host`)."""
        return group in self.refs or group in self.held or group in self.host

    def set_host(self, group: bytes, member: bool) -> bool:
        """In a worker: the host is in `group` (a first join over all workers) or no longer
        (`member` False: its last leave), as usnetd tells. False, nothing kept, past
        HOST_GROUPS_MAX groups."""
        if not member:
            if group in self.host:
                self.host.discard(group)
                if self.host_states is not None:
                    self.host_states.pop(group, None)
                self._macs()  # (another group may share its MAC)
            return True
        if group not in self.host:
            if len(self.host) >= HOST_GROUPS_MAX:
                return False
            self.host.add(group)
            self.macs.add(group_mac(group))
        return True

    def forget_host(self, size: int) -> None:
        """In a worker: forget the host's groups of one family (`size`: 4 or 16 bytes), before
        usnetd's whole list of them."""
        self.host = {g for g in self.host if len(g) != size}
        if self.host_states is not None:
            self.host_states = {g: f for g, f in self.host_states.items() if len(g) != size}
        self._macs()

    def set_host_state(self, group: bytes, f: Filter) -> bool:
        """In a worker: the host's union of `group`'s source filters is `f` now (usnetd's b"M"). False,
        nothing kept, if the host is not in `group` (its b"G" comes first) or this is no worker's
        table: so what is kept is bounded by the host set, each by the message's bound."""
        if self.host_states is None or group not in self.host or any(len(s) != len(group) for s in f.sources):
            return False
        if f == ANY_SOURCE:
            self.host_states.pop(group, None)
        else:
            self.host_states[group] = f
        return True

    def filter_of(self, flow: Flow, group: bytes) -> Filter:
        """`flow`'s own filter of `group` (EXCLUDE {} for an any-source membership)."""
        return self.filters.get(group, {}).get(flow.id, ANY_SOURCE)

    def netif_admits(self, group: bytes, source: bytes) -> bool:
        """Whether the netif's filter of `group` (in a worker the host's, `host_states`) lets
        `source` in: Linux's ip_check_mc_rcv, for what the device takes and what it loops."""
        st = (self.states if self.host_states is None else self.host_states).get(group)
        return st is None or admits(st, source)

    def admits(self, flow: Flow, group: bytes, source: bytes) -> bool:
        """Whether a datagram from `source` to `group` passes the netif's filter and, if `flow` is a
        member, its own (Linux's ip_check_mc_rcv, then ip_mc_sf_allow). In a worker the netif's
        filter is the host's (`host_states`)."""
        if not self.netif_admits(group, source):
            return False
        f = self.filters.get(group)
        own = f.get(flow.id) if f else None
        return own is None or admits(own, source)

    def set_filter(self, flow: Flow, group: bytes, f: Filter) -> None:
        """`flow`'s membership of `group` takes filter `f` (checked: `check_filter`); EADDRNOTAVAIL
        if it is no member."""
        check_filter(group, f)
        if group not in self.of_flow.get(flow.id, ()):
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address (not a member of the group)")
        mine = self.filters.setdefault(group, {})
        self._charge(flow, _filter_cost(group, f), _filter_cost(group, mine.get(flow.id, ANY_SOURCE)))
        if f == ANY_SOURCE:
            mine.pop(flow.id, None)
        else:
            mine[flow.id] = f
        self._restate(group)

    def set_remote_filter(self, group: bytes, key: int, f: Filter) -> None:
        """Another worker's member flow (usnetd's channel `key`) has filter `f` of `group` now (its
        worker checked and keeps it); counted in the union. A membership not counted here: nothing."""
        if group not in self.refs:
            return
        theirs = self.remote_filters.setdefault(group, {})
        if f == ANY_SOURCE:
            theirs.pop(key, None)
        else:
            theirs[key] = f
        self._restate(group)

    def _restate(self, group: bytes) -> None:
        """The netif's union of `group`'s filters again (its memberships without a filter, this
        table's and other workers', are EXCLUDE {})."""
        mine = self.filters.get(group)
        theirs = self.remote_filters.get(group)
        if not mine and not theirs:
            self.filters.pop(group, None)
            self.remote_filters.pop(group, None)
            self.states.pop(group, None)
            return
        every = [*(mine or {}).values(), *(theirs or {}).values()]
        st = union(every, self.refs[group] - len(every) + (group in self.held))
        if st == ANY_SOURCE or group not in self.refs:
            self.states.pop(group, None)
        else:
            self.states[group] = st

    def join(self, flow: Flow, group: bytes, f: Filter = ANY_SOURCE) -> bool:
        """Make `flow` a member of `group` (4 or 16 bytes) with filter `f` (any-source by default);
        True if the group is new on the netif (a report is due). EINVAL for an address that is no
        group, EADDRINUSE if it is a member already, past the bound ENOBUFS (IPv4, as Linux's
        ip_mc_join_group) or ENOMEM (IPv6, as __ipv6_sock_mc_join's allocation); `check_filter`'s."""
        if not (is_multicast4(group) or is_multicast6(group)):
            raise OSError(errno.EINVAL, f"{group.hex()} is not a multicast group")
        check_filter(group, f)
        mine = self.of_flow.setdefault(flow.id, [])
        if group in mine:
            raise OSError(errno.EADDRINUSE, "Address already in use (already a member of the group)")
        if sum(len(g) == len(group) for g in mine) >= (MAX_MEMBERSHIPS if len(group) == 4 else MAX_MEMBERSHIPS6):
            if len(group) == 4:
                raise OSError(errno.ENOBUFS, f"No buffer space available (at most {MAX_MEMBERSHIPS} groups a "
                                             "socket, as Linux's igmp_max_memberships)")
            raise OSError(errno.ENOMEM, f"Cannot allocate memory (usnet: at most {MAX_MEMBERSHIPS6} IPv6 groups "
                                        "a socket)")
        self._charge(flow, _SOCKLIST[len(group)] + _filter_cost(group, f))
        mine.append(group)
        self.members.setdefault((group, flow.lport), []).append(flow)
        first = self._count(group)
        if f != ANY_SOURCE:
            self.filters.setdefault(group, {})[flow.id] = f
        self._restate(group)
        return first

    def join_remote(self, group: bytes, key: int = 0, f: Filter = ANY_SOURCE) -> bool:
        """A flow of another worker (usnetd's channel `key`) joined `group` on this netif with filter
        `f` (its worker checked it and keeps the membership); True if the group is new on the netif."""
        first = self._count(group)
        if f != ANY_SOURCE:
            self.remote_filters.setdefault(group, {})[key] = f
        self._restate(group)
        return first

    def leave_remote(self, group: bytes, key: int = 0) -> bool:
        """A flow of another worker (channel `key`) left `group` (or closed, or its worker died);
        True if that was the netif's last membership."""
        theirs = self.remote_filters.get(group)
        if theirs:
            theirs.pop(key, None)
        last = self._uncount(group) if self.refs[group] else False
        self._restate(group)
        return last

    def _count(self, group: bytes) -> bool:
        self.refs[group] += 1
        first = self.refs[group] == 1
        if first:
            self._macs()
        return first

    def leave(self, flow: Flow, group: bytes) -> bool:
        """End `flow`'s membership of `group`; True if it was the netif's last (a leave is due).
        EADDRNOTAVAIL if it is no member, as Linux's ip_mc_leave_group."""
        mine = self.of_flow.get(flow.id)
        if not mine or group not in mine:
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address (not a member of the group)")
        mine.remove(group)
        if not mine:
            del self.of_flow[flow.id]
        return self._forget(flow, group)

    def drop_flow(self, flow: Flow) -> dict[bytes, Filter]:
        """A flow is gone: its memberships with it; each of its groups' netif filter before (the
        duties say what changed)."""
        olds = {g: self.state(g) for g in self.of_flow.pop(flow.id, [])}
        for g in olds:
            self._forget(flow, g)
        return olds

    def _charge(self, flow: Flow, more: int, less: int = 0) -> None:
        """Charge `flow`'s option memory `more` bytes, then give back `less` (what `more` replaces),
        as Linux allocates a new list before it frees the old; ENOBUFS, nothing charged, if `more`
        would reach OPTMEM_MAX (sock_kmalloc's test)."""
        held = self.optmem.get(flow.id, 0)
        if more and held + more >= OPTMEM_MAX:
            raise OSError(errno.ENOBUFS, f"No buffer space available (a flow's memberships and source filters "
                                         f"take at most {OPTMEM_MAX} bytes, as Linux's net.core.optmem_max)")
        if held + more - less:
            self.optmem[flow.id] = held + more - less
        else:
            self.optmem.pop(flow.id, None)  # no membership left: nothing kept for the flow

    def groups(self, size: int = 4) -> list[bytes]:
        """The groups of one family (`size`: 4 or 16 bytes) the netif is in, the held ones too (what
        a general query is answered with)."""
        return [g for g in dict.fromkeys((*self.refs, *sorted(self.held))) if len(g) == size]

    def _forget(self, flow: Flow, group: bytes) -> bool:
        key = (group, flow.lport)
        lst = self.members[key]
        lst.remove(flow)
        if not lst:
            del self.members[key]
        f = self.filters.get(group)
        own = f.pop(flow.id, ANY_SOURCE) if f else ANY_SOURCE
        self._charge(flow, 0, _SOCKLIST[len(group)] + _filter_cost(group, own))
        last = self._uncount(group)
        self._restate(group)
        return last

    def _uncount(self, group: bytes) -> bool:
        self.refs[group] -= 1
        if self.refs[group]:
            return False
        del self.refs[group]
        self._macs()
        return True

    def _macs(self) -> None:
        """The group MACs to admit: every joined group's, every held one's and the host's (a worker's)."""
        self.macs = {group_mac(g) for g in (*self.refs, *self.held, *self.host)}
