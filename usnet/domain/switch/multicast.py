"""The host's IPv4 multicast duties: memberships, IGMP, and a group datagram's copies.

A member host must say which groups it is in, or the switch and router upstream prune them
(RFC 3376): this netif sends an IGMPv3 report when a group gains its first member here and
one that changes it to INCLUDE {} (a leave) when it loses its last, and answers a query with
the groups it is in. Clients never send IGMP (the transmit path refuses any protocol that is
not their flow's); they ask the domain (P.JoinGroup), which checks the request
(`join_group`) and keeps the membership in a GroupTable (usnet.domain.switch.groups).

A datagram to a group is copied to every member flow of (group, destination port), as Linux's
__udp4_lib_mcast_deliver gives one to every matching socket: the receive path appends the same
packet to each member's batch, and each member's port copies it into that member's own pool,
so one client's copy is nothing to another's.
"""

from __future__ import annotations

import errno
import random
from typing import Any

from usnet.domain.switch.groups import GroupTable
from usnet.domain.switch.host import HostDuties
from usnet.domain.switch.table import UDP, Flow
from usnet.drivers.base import GroupFilter, Received
from usnet.proto.wire.ethernet import ETHERTYPE_IPV4
from usnet.proto.wire.igmp import (
    ALL_HOSTS,
    CHANGE_TO_EXCLUDE,
    CHANGE_TO_INCLUDE,
    IGMP_LEAVE,
    IGMP_QUERY,
    IGMP_V1_REPORT,
    IGMP_V2_REPORT,
    MODE_IS_EXCLUDE,
    build_old_report,
    build_report,
    group_mac4,
    max_response,
    parse_igmp,
    query_version,
)

__all__ = ["OLDER_QUERIER_TIMEOUT", "UNSOLICITED_INTERVAL", "MulticastDuties"]

UNSOLICITED_INTERVAL = 1.0  # seconds: IGMPv3's Unsolicited Report Interval (RFC 3376 §8.11), Linux's
# Older Version Querier Present Timeout (RFC 3376 §8.12): robustness 2 x query interval 125 s +
# query response interval 10 s, as Linux's mr_v1_seen/mr_v2_seen
OLDER_QUERIER_TIMEOUT = 260.0


class MulticastDuties(HostDuties):
    """Group memberships of the netif's flows, the IGMP a member host speaks, and delivery to members."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.groups = GroupTable()
        # a query's answer, due at a random time within its maximum response (RFC 3376 §5.2, as
        # Linux's igmp_gq_start_timer): when, and the groups asked about (None: all, a general query)
        self.igmp_due: float | None = None
        self._igmp_asked: set[bytes] | None = None
        # a state change (join, leave) is reported twice (the robustness variable, Linux's
        # igmp_qrv 2), the second time within UNSOLICITED_INTERVAL: a lost report is no lost
        # group. The changes to say again, by group (a later one replaces), and when
        self._again: dict[bytes, int] = {}
        self._again_due: float | None = None
        self._rng = random.Random()
        # an IGMPv1 or v2 querier heard lately: until when the netif speaks that version (RFC 3376 §7.2.1)
        self._older_until: dict[int, float] = {}

    # -- the control requests -----------------------------------------------------------------

    def join_group(self, flow: Flow, group: bytes) -> None:
        """`flow` joins `group` (P.JoinGroup): a UDP flow of IPv4 only (EPROTO for TCP, as Linux's
        do_ip_setsockopt; EINVAL for an IPv6 flow here); the GroupTable's errors otherwise."""
        self._check_member(flow)
        if self.groups.join(flow, group):
            self.counts["igmp_joins"] += 1
            drv = self.netif.driver
            if isinstance(drv, GroupFilter):
                drv.add_group_mac(group_mac4(group))
            self._changed([(CHANGE_TO_EXCLUDE, group)])

    def leave_group(self, flow: Flow, group: bytes) -> None:
        """`flow` leaves `group`; EADDRNOTAVAIL if it was no member."""
        self._check_member(flow)
        if self.groups.leave(flow, group):
            self._left([group])

    def _check_member(self, flow: Flow) -> None:
        if flow.proto != UDP:
            raise OSError(errno.EPROTO, "Protocol error (multicast groups are UDP's)")
        if flow.family != 4 or flow.binds is not None:
            raise OSError(errno.EINVAL, "Invalid argument (an IPv4 UDP flow joins IPv4 groups)")

    def remove_flow(self, flow: Flow, keep_queued: bool = False) -> None:
        left = self.groups.drop_flow(flow) if flow.id in self.flows else []
        super().remove_flow(flow, keep_queued)
        if left:
            self._left(left)

    def _left(self, groups: list[bytes]) -> None:
        """`groups` lost their last member here: the device may filter their MACs again, and the
        link hears that we left."""
        self.counts["igmp_leaves"] += len(groups)
        drv = self.netif.driver
        if isinstance(drv, GroupFilter):
            for g in groups:
                drv.drop_group_mac(group_mac4(g))
        self._changed([(CHANGE_TO_INCLUDE, g) for g in groups])

    # -- IGMP -----------------------------------------------------------------------------------

    def _report(self, records: list[tuple[int, bytes]]) -> None:
        """An IGMPv3 report of `records` to 224.0.0.22 (never about all-hosts, as Linux's), or, while
        an older querier is present, each record as that version says it (`_old_reports`)."""
        records = [r for r in records if r[1] != ALL_HOSTS]
        if not records or self.netif.ip is None or self.netif.loopback:
            return
        version = self._version()
        if version < 3:
            self._old_reports(version, records)
            return
        self.counts["igmp_reports"] += 1
        self._send_igmp(build_report(self.netif.ip, records, self._next_ident()))

    def _old_reports(self, version: int, records: list[tuple[int, bytes]]) -> None:
        """IGMPv1/v2 (RFC 2236): a report per group we are in, to the group; a leave of a group we
        left to all-routers (v2 only: v1 has none)."""
        assert self.netif.ip is not None
        for rtype, g in records:
            if rtype == CHANGE_TO_INCLUDE:
                if version == 1:
                    continue
                typ = IGMP_LEAVE
            else:
                typ = IGMP_V2_REPORT if version == 2 else IGMP_V1_REPORT
            self.counts["igmp_reports"] += 1
            self._send_igmp(build_old_report(self.netif.ip, typ, g, self._next_ident()))

    def _version(self) -> int:
        """The IGMP the netif speaks now: the oldest querier's heard within OLDER_QUERIER_TIMEOUT, else 3."""
        now = self.clock()
        for v in (1, 2):
            until = self._older_until.get(v)
            if until is not None and now < until:
                return v
        return 3

    def _next_ident(self) -> int:
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def _send_igmp(self, packet: bytes) -> None:
        """An IGMP packet of ours onto the link, at its destination group's MAC."""
        self._send_frame(0, group_mac4(packet[16:20]), ETHERTYPE_IPV4, packet)

    def _changed(self, records: list[tuple[int, bytes]]) -> None:
        """A state change reported now, and once more at a random time within
        UNSOLICITED_INTERVAL (RFC 3376 §5.1, as Linux's igmp_ifc_event)."""
        self._report(records)
        for rtype, g in records:
            self._again[g] = rtype
        due = self.clock() + self._rng.uniform(0.0, UNSOLICITED_INTERVAL)
        self._again_due = due if self._again_due is None else min(due, self._again_due)

    def igmp_next(self) -> float | None:
        """When IGMP is next due here (an answer to a query, a report said again); None: nothing."""
        a, b = self.igmp_due, self._again_due
        return a if b is None else b if a is None else min(a, b)

    def igmp_timers(self, now: float) -> None:
        """What of IGMP is due (the switch's timers call this): a query's answer, a change said again."""
        if self._again_due is not None and now >= self._again_due:
            again, self._again, self._again_due = self._again, {}, None
            self._report([(rtype, g) for g, rtype in again.items()])
        self.answer_query(now)

    def _rx_igmp(self, f: Received, start: int, end: int, dst: bytes) -> None:
        """A query: its answer (the groups it asks about that we are in; a general one: all of
        them) is due at a random time within its maximum response, so that the hosts of a link do
        not all answer at once; a general query pending covers a group's (`answer_query` sends it)."""
        typ, code, group = parse_igmp(f[start:end])
        if typ != IGMP_QUERY:
            self.drops["rx_igmp_other"] += 1  # other hosts' reports: a host does not suppress v3 ones
            return
        self.counts["igmp_queries"] += 1
        version = query_version(code, end - start)
        if version < 3:  # an older querier: speak its version a while (RFC 3376 §7.2.1)
            self._older_until[version] = self.clock() + OLDER_QUERIER_TIMEOUT
        if group != bytes(4) and group not in self.groups.refs:
            return  # about a group nobody here is in
        due = self.clock() + self._rng.uniform(0.0, max_response(code, end - start))
        pending_all = self.igmp_due is not None and self._igmp_asked is None
        if group == bytes(4):
            self._igmp_asked = None  # a general answer names every group
        elif not pending_all:
            self._igmp_asked = (self._igmp_asked or set()) | {group}
        self.igmp_due = due if self.igmp_due is None else min(due, self.igmp_due)

    def answer_query(self, now: float) -> None:
        """Send the answer a query asked for, if it is due (the switch's timers call this)."""
        if self.igmp_due is None or now < self.igmp_due:
            return
        asked, self.igmp_due, self._igmp_asked = self._igmp_asked, None, None
        self._report([(MODE_IS_EXCLUDE, g) for g in self.groups.groups() if asked is None or g in asked])

    # -- delivery ---------------------------------------------------------------------------------

    def is_joined(self, dst: bytes) -> bool:
        """Whether a packet to `dst` is one this netif takes as a member host: a group with members
        here, or all-hosts (224.0.0.1), which every host is in."""
        return dst == ALL_HOSTS or dst in self.groups.refs

    def members_for(self, dst: bytes, dport: int, src: bytes, sport: int) -> list[Flow]:
        """The flows a UDP datagram from (`src`, `sport`) to group `dst`, port `dport` goes to, as
        Linux's __udp4_lib_mcast_deliver and ip_mc_sf_allow choose the sockets: every member of the
        group on the port (a connected one only from its peer), and every other flow listening on
        the port whose IP_MULTICAST_ALL is on (Linux's default: a socket hears a group any socket
        joined). A port is one uid's (usnet.domain.switch.ports), so no other user hears it."""
        out = [m for m in self.groups.members.get((dst, dport), ())
               if m.raddr is None or (m.raddr == src and m.rport == sport)]
        front = self.listeners.get((UDP, dport))
        if front is not None:
            for f in (front.group.members if front.group is not None else (front,)):
                if f.mc_all and f not in out:
                    out.append(f)
        return out
