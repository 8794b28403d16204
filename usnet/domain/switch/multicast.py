"""The host's multicast duties, IPv4 and IPv6: memberships, IGMP and MLD, a group datagram's copies.

A member host must say which groups it is in, or the switch and router upstream prune them
(RFC 3376, RFC 3810): this netif sends an IGMPv3 report (an MLDv2 one for an IPv6 group) when
a group gains its first member here and one that changes it to INCLUDE {} (a leave) when it
loses its last, and answers a query with the groups of its family it is in. IGMP and MLD are
one duty here: the same record types, the same timers and robustness, the family of the group
(4 or 16 bytes) choosing the bytes (usnet.proto.wire.igmp, usnet.proto.wire.mld). Clients never
send IGMP or MLD (the transmit path refuses any protocol that is not their flow's); they ask the
domain (P.JoinGroup), which checks the request (`join_group`) and keeps the membership in a
GroupTable (usnet.domain.switch.groups).

A datagram to a group is copied to every member flow of (group, destination port), as Linux's
__udp4_lib_mcast_deliver (__udp6_lib_mcast_deliver) gives one to every matching socket: the
receive path appends the same packet to each member's batch, and each member's port copies it
into that member's own pool, so one client's copy is nothing to another's.

Under `usnetd --workers N` (usnet.domain.workers) the link hears one host per netif: usnetd.
A worker k's switch keeps its flows' memberships (its queue gets their datagrams: the device
steers by port) but says nothing (`speaks` False); usnetd is told of each of them
(`join_remote`, `leave_remote`) and reports and answers queries (which come to its queue 0) for
the union, so a group's first join and last leave over all workers are said once. usnetd also
tells every worker those first joins and last leaves (`membership_changed`, `host_group`): the
host's groups, which a worker's IP_MULTICAST_ALL listeners hear and its flows loop to.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable
from typing import Any

from usnet.domain.switch.groups import GroupTable, group_mac
from usnet.domain.switch.host import HostDuties
from usnet.domain.switch.table import UDP, Flow
from usnet.drivers.base import GroupFilter, Received
from usnet.proto.wire.ethernet import ETHERTYPE_IPV4, ETHERTYPE_IPV6
from usnet.proto.wire.igmp import (
    ALL_HOSTS,
    IGMP_LEAVE,
    IGMP_QUERY,
    IGMP_V1_REPORT,
    IGMP_V2_REPORT,
    build_old_report,
    build_report,
    is_multicast4,
    max_response,
    parse_igmp,
    query_version,
    report_room,
)
from usnet.proto.wire.ipv6 import ALL_NODES
from usnet.proto.wire.mld import (
    MLD_QUERY,
    MLDV1_DONE,
    MLDV1_REPORT,
    build_mld_report,
    build_mldv1,
    is_multicast6,
    mld_max_response,
    mld_query_version,
    mld_report_room,
    parse_mld,
)
from usnet.proto.wire.msf import (
    ANY_SOURCE,
    NOT_MEMBER,
    Filter,
    Record,
    change_records,
    current_record,
    merge_records,
    split_records,
)

__all__ = ["OLDER_QUERIER_TIMEOUT", "REPORT_GAP", "UNSOLICITED_INTERVAL", "MulticastDuties"]

UNSOLICITED_INTERVAL = 1.0  # seconds: IGMPv3's Unsolicited Report Interval (RFC 3376 §8.11), Linux's
# Older Version Querier Present Timeout (RFC 3376 §8.12): robustness 2 x query interval 125 s +
# query response interval 10 s, as Linux's mr_v1_seen/mr_v2_seen (MLD's Older Version Querier
# Present Timeout, RFC 3810 §9.12, is the same sum)
OLDER_QUERIER_TIMEOUT = 260.0
# the least time between two reports of one family (IGMP, MLD): what they answer or say comes from
# the link (a query may ask for an answer at once, as often as it likes) and from clients (a join or
# leave is one request), so neither may make usnetd a report storm. Linux sends both from timers
# armed 2 jiffies ahead at least (igmp_gq_start_timer, igmp_ifc_start_timer; mld_gq_start_work,
# mld_ifc_start_work), which a later event does not bring forward: a second of queries from a veth
# peer with maximum response 0 earned 75-80 reports of this kernel
REPORT_GAP = 0.01


def _reported(group: bytes) -> bool:
    """Whether a group is ever reported: not all-hosts (224.0.0.1), not all-nodes (ff02::1) nor an IPv6
    group of scope below link-local (ff00::/16, ff01::/16), as Linux's MAF_NOREPORT."""
    if len(group) == 4:
        return group != ALL_HOSTS
    return group != ALL_NODES and group[1] & 0x0F >= 2


class MulticastDuties(HostDuties):
    """Group memberships of the netif's flows, the IGMP and MLD a member host speaks, and delivery to members."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        # the netif's own groups are the table's held ones: all-hosts, and IPv6's all-nodes and
        # solicited-node groups (Netif.groups6), never left whoever joins and leaves them
        self.groups = GroupTable(frozenset({ALL_HOSTS}) | self.netif.groups6)
        # a query's answer, due at a random time within its maximum response (RFC 3376 §5.2, as
        # Linux's igmp_gq_start_timer), per family (4, 6): when, and the groups asked about
        # (None: all, a general query)
        self._query_due: dict[int, float] = {}
        self._query_asked: dict[int, set[bytes] | None] = {}
        # reports are paced (`_report`): per family (4, 6), what waits to be said (group -> its
        # records, merged as they come: usnet.proto.wire.msf.merge_records), when it is due, and
        # when the last report went
        self._outbox: dict[int, dict[bytes, list[Record]]] = {}
        self._outbox_due: dict[int, float] = {}
        self._sent_at: dict[int, float] = {}
        # groups another host reported while our IGMPv1/v2 (MLDv1) answer was pending, by family:
        # left out of the answer (RFC 2236 §3, RFC 2710 §4: report suppression, as Linux's
        # igmp_heard_report stops the group's timer); a new query asks again
        self._heard: dict[int, set[bytes]] = {}
        # a state change (join, leave) is reported twice (the robustness variable, Linux's
        # igmp_qrv 2), the second time within UNSOLICITED_INTERVAL: a lost report is no lost
        # group. The changes to say again, by group (a later one replaces), and when
        self._again: dict[bytes, Filter] = {}  # group -> its state the repeat says the change from
        self._again_due: float | None = None
        self._rng = random.Random()
        # an IGMPv1 or v2 querier heard lately: until when the netif speaks that version (RFC 3376
        # §7.2.1); an MLDv1 querier's, under 61 (RFC 3810 §8.2.1: MLDv1 is IGMPv2's twin)
        self._older_until: dict[int, float] = {}
        # False in worker k of `usnetd --workers N`: usnetd speaks IGMP and MLD for the netif
        self.speaks = True
        # usnetd's (usnet.domain.workers): told (group, member) when the netif gains a group's first
        # membership or loses its last, to tell the workers the host's groups
        self.membership_changed: Callable[[bytes, bool], None] | None = None
        # usnetd's too: told (group, filter) when the netif's union of a group it is in changes
        # (a source filter's join, change or end: RFC 3376 §3.2), to tell the workers (b"M")
        self.host_filter_changed: Callable[[bytes, Filter], None] | None = None
        # a worker's (usnet.domain.workers): read what usnetd told of the host's groups and has not
        # been read yet; asked before an answer that is the host's (`is_joined`, the local path:
        # a group not of this table's own memberships; the MAC check: one it misses), so a
        # datagram sent after a join's or leave's answer finds it (the worker's loop may have
        # taken the datagram before usnetd's b"G" in the same turn)
        self.read_host_groups: Callable[[], None] | None = None
        # whether it was asked since this batch's input was taken (the receive and transmit
        # paths clear it as they take a batch: what came before is read once for all of it)
        self.host_read = False

    # -- the control requests -----------------------------------------------------------------

    def join_group(self, flow: Flow, group: bytes, f: Filter = ANY_SOURCE) -> None:
        """`flow` joins `group` (P.JoinGroup) with source filter `f` (any-source by default): a UDP
        flow of the group's family (EPROTO for TCP, as Linux's do_ip_setsockopt and
        do_ipv6_setsockopt; EINVAL for the other family's); the GroupTable's errors otherwise."""
        self._check_member(flow, group)
        old = self.groups.state(group)
        self.groups.join(flow, group, f)
        self._transition({group: old})

    def set_source_filter(self, flow: Flow, group: bytes, f: Filter) -> None:
        """`flow`'s membership of `group` takes source filter `f` (P.SourceFilter); the link hears
        what that changed of the netif's union (ALLOW, BLOCK, or a mode change)."""
        self._check_member(flow, group)
        old = self.groups.state(group)
        self.groups.set_filter(flow, group, f)
        self._transition({group: old})

    def join_remote(self, group: bytes, key: int = 0, f: Filter = ANY_SOURCE) -> None:
        """A flow of another worker (usnetd's channel `key`) joined `group` here with filter `f`
        (usnet.domain.workers: usnetd, told by the worker's answer): reported as it changes the
        netif's state."""
        old = self.groups.state(group)
        self.groups.join_remote(group, key, f)
        self._transition({group: old})

    def set_remote_filter(self, group: bytes, key: int, f: Filter) -> None:
        """Another worker's member flow (channel `key`) took filter `f` of `group` (its SourceFilter's answer)."""
        old = self.groups.state(group)
        self.groups.set_remote_filter(group, key, f)
        self._transition({group: old})

    def leave_remote(self, group: bytes, key: int = 0) -> None:
        """A flow of another worker (channel `key`) left `group` (or is gone): a leave if it was the last."""
        old = self.groups.state(group)
        self.groups.leave_remote(group, key)
        self._transition({group: old})

    def leave_group(self, flow: Flow, group: bytes) -> None:
        """`flow` leaves `group`; EADDRNOTAVAIL if it was no member."""
        self._check_member(flow, group)
        old = self.groups.state(group)
        self.groups.leave(flow, group)
        self._transition({group: old})

    def _check_member(self, flow: Flow, group: bytes) -> None:
        if flow.proto != UDP:
            raise OSError(errno.EPROTO, "Protocol error (multicast groups are UDP's)")
        if flow.family != (4 if len(group) == 4 else 6) or flow.binds is not None:
            raise OSError(errno.EINVAL, f"Invalid argument (an IPv{flow.family} UDP flow joins IPv{flow.family} "
                                        "groups)")

    def remove_flow(self, flow: Flow, keep_queued: bool = False) -> None:
        olds = self.groups.drop_flow(flow) if flow.id in self.flows else {}
        super().remove_flow(flow, keep_queued)
        if olds:
            self._transition(olds)

    def _transition(self, olds: dict[bytes, Filter]) -> None:
        """The netif's state of each group in `olds` was the filter there: a group that gained its
        first member has its MAC let in by the device, one that lost its last has it filtered
        again, and the link hears what changed (`_changed`)."""
        drv = self.netif.driver
        for g, old in olds.items():
            member = self.groups.is_member(g)
            if member == (old != NOT_MEMBER):
                self._tell_filter(g, old, member)
                continue
            if member:
                self.counts["igmp_joins" if len(g) == 4 else "mld_joins"] += 1
            else:
                self.counts["multicast_leaves"] += 1
            if isinstance(drv, GroupFilter):
                (drv.add_group_mac if member else drv.drop_group_mac)(group_mac(g))
            if self.membership_changed is not None:
                self.membership_changed(g, member)
            self._tell_filter(g, old, member)  # after the b"G" of a first join
        self._changed(olds)

    def _tell_filter(self, group: bytes, old: Filter, member: bool) -> None:
        """usnetd's: the workers are told the union's filter of `group` (`host_filter_changed`) if the
        host is in it and the filter is not `old` (a first join's b"G" says any-source: this is
        called after it)."""
        told = self.host_filter_changed
        if told is None or not member:
            return
        new = self.groups.state(group)
        if new != (ANY_SOURCE if old == NOT_MEMBER else old):
            told(group, new)

    # -- IGMP -----------------------------------------------------------------------------------

    def _report(self, records: list[Record]) -> None:
        """Say `records` (never about a group `_reported` excludes, as Linux's), paced: a family
        whose last report went REPORT_GAP ago or more says them now, else they wait in its outbox
        till then, merged with what waits of the same group (usnet.proto.wire.msf.merge_records:
        two ALLOWs make one of both sources, a later BLOCK of a source takes it out of ALLOW, a mode
        change supersedes, so the link hears the latest state). One rule for every report, an
        answer, a change or its repeat."""
        records = [r for r in records if _reported(r.group)]
        if not records or self.netif.loopback or not self.speaks:
            return
        now = self.clock()
        for r in records:
            fam = 4 if len(r.group) == 4 else 6
            box = self._outbox.setdefault(fam, {})
            waiting = box.get(r.group)
            box[r.group] = merge_records((*waiting, r)) if waiting else [r]
            if fam not in self._outbox_due:
                self._outbox_due[fam] = max(now, self._sent_at.get(fam, -REPORT_GAP) + REPORT_GAP)
        self._flush(now)

    def _flush(self, now: float) -> None:
        """Send each family's outbox that is due (`_report`)."""
        for fam, due in list(self._outbox_due.items()):
            if now >= due:
                del self._outbox_due[fam]
                self._sent_at[fam] = now
                self._send_records([r for recs in self._outbox.pop(fam).values() for r in recs])

    def _send_records(self, records: list[Record]) -> None:
        """An IGMPv3 report of the IPv4 `records` to 224.0.0.22 and an MLDv2 one of the IPv6 ones to
        ff02::16, or, while an older querier is present, each record as that version says it
        (`_old_reports`). Each report holds what fits the netif's MTU, the rest goes in more
        (`split_records`, as Linux's add_grec): a client may hold 256 IPv6 groups a flow, and one
        report of them all was refused by the device, so the link heard of no group of the netif
        and its switches pruned every client's."""
        v6 = [r for r in records if len(r[1]) == 16]
        if v6:
            self._report6(v6)
        records = [r for r in records if len(r[1]) == 4]
        if not records or self.netif.ip is None:
            return
        version = self._version()
        if version < 3:
            self._old_reports(version, records)
            return
        for part in split_records(records, report_room(self.netif.mtu), 4):
            self.counts["igmp_reports"] += 1
            self._send_igmp(build_report(self.netif.ip, part, self._next_ident()))

    def _old_reports(self, version: int, records: list[Record]) -> None:
        """IGMPv1/v2 (RFC 2236), which know no sources: a report per group we are in, to the group;
        a leave of a group we left to all-routers (v2 only: v1 has none)."""
        assert self.netif.ip is not None
        for g in dict.fromkeys(r.group for r in records):
            if not self.groups.is_member(g):
                if version == 1:
                    continue
                typ = IGMP_LEAVE
            else:
                typ = IGMP_V2_REPORT if version == 2 else IGMP_V1_REPORT
            self.counts["igmp_reports"] += 1
            self._send_igmp(build_old_report(self.netif.ip, typ, g, self._next_ident()))

    def _report6(self, records: list[Record]) -> None:
        """MLD: an MLDv2 report from the link-local address, or while an MLDv1 querier is present, an
        MLDv1 report per group joined (to the group) and a Done per group left (to all-routers)."""
        ll = self.netif.ll6
        if ll is None:
            return
        until = self._older_until.get(61)
        if until is not None and self.clock() < until:
            for g in dict.fromkeys(r.group for r in records):
                self.counts["mld_reports"] += 1
                self._send_mld(build_mldv1(ll, MLDV1_REPORT if self.groups.is_member(g) else MLDV1_DONE, g))
            return
        for part in split_records(records, mld_report_room(self.netif.mtu), 16):
            self.counts["mld_reports"] += 1
            self._send_mld(build_mld_report(ll, part))

    def _send_mld(self, packet: bytes) -> None:
        """An MLD packet of ours onto the link, at its destination group's MAC."""
        self._send_frame(0, group_mac(packet[24:40]), ETHERTYPE_IPV6, packet)

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
        self._send_frame(0, group_mac(packet[16:20]), ETHERTYPE_IPV4, packet)

    def _changed(self, olds: dict[bytes, Filter]) -> None:
        """The change of each group's state from its filter in `olds` to the netif's now, reported
        now (RFC 3376 §5.1's records: `change_records`), and once more at a random time within
        UNSOLICITED_INTERVAL (as Linux's igmp_ifc_event). The repeat says the change from the state
        before the first change still unrepeated while only sources change (so a source allowed
        by the first of two changes is said again too, as Linux's per-source sf_crcount), and from
        the state before the latest one when the filter mode changed (TO_IN, TO_EX, as Linux's
        crcount, which a mode change resets)."""
        records = []
        for g, old in olds.items():
            new = self.groups.state(g)
            got = change_records(g, old, new)
            if not got:
                continue
            records += got
            if g not in self._again or old.include != new.include:
                self._again[g] = old
        if not records:
            return
        self._report(records)
        due = self.clock() + self._rng.uniform(0.0, UNSOLICITED_INTERVAL)
        self._again_due = due if self._again_due is None else min(due, self._again_due)

    def igmp_next(self) -> float | None:
        """When IGMP or MLD is next due here (an answer to a query, a report said again or waiting
        for its turn); None: nothing.

        Asked up to twice a turn per switch (`FlowSwitch.quiet`), and almost always with nothing
        pending: that case makes no list (issue 18, usnetd's fixed cost per turn)."""
        again = self._again_due
        if not self._query_due and not self._outbox_due:
            return again
        due = [t for t in (*self._query_due.values(), *self._outbox_due.values(), again) if t is not None]
        return min(due)

    def igmp_timers(self, now: float) -> None:
        """What of IGMP and MLD is due (the switch's timers call this): a query's answer, a change said again."""
        if self._again_due is not None and now >= self._again_due:
            if any(g in box for box in self._outbox.values() for g in self._again):
                # The change itself still waits in the outbox for its turn: its repeat goes after
                # it, never merged into it (merged, the change would be said once, not twice).
                self._again_due = max(self._outbox_due.values()) + REPORT_GAP
            else:
                again, self._again, self._again_due = self._again, {}, None
                self._report([r for g, old in again.items() for r in change_records(g, old, self.groups.state(g))])
        self.answer_query(now)
        self._flush(now)

    def _rx_igmp(self, f: Received, start: int, end: int, dst: bytes) -> None:
        """A query: its answer (the groups it asks about that we are in; a general one: all of
        them) is due at a random time within its maximum response, so that the hosts of a link do
        not all answer at once; a general query pending covers a group's (`answer_query` sends it)."""
        typ, code, group = parse_igmp(f[start:end])
        if typ in (IGMP_V1_REPORT, IGMP_V2_REPORT) and self._version() < 3:
            self._heard_report(4, group)
            return
        if typ != IGMP_QUERY:
            self.drops["rx_igmp_other"] += 1  # other hosts' v3 reports: a v3 host does not suppress
            return
        self.counts["igmp_queries"] += 1
        version = query_version(code, end - start)
        if version < 3:  # an older querier: speak its version a while (RFC 3376 §7.2.1)
            self._older_until[version] = self.clock() + OLDER_QUERIER_TIMEOUT
        self._queried(group, max_response(code, end - start))

    def _rx_mld(self, f: Received, start: int, end: int, src: bytes, dst: bytes, hop: int) -> None:
        """An MLD message (ICMPv6 130..132, 143): a query is answered as an IGMP one (`_queried`);
        RFC 3810 §5.1.14 and §6.2: only one from a link-local source with hop limit 1 counts."""
        typ, code, group = parse_mld(f[start:end], src, dst)
        if typ == MLDV1_REPORT and (self._older_until.get(61) or 0.0) > self.clock():
            self._heard_report(6, group)
            return
        if typ != MLD_QUERY or hop != 1 or src[:2] != b"\xfe\x80":
            self.drops["rx_mld_other"] += 1  # others' reports; a query from off the link
            return
        self.counts["mld_queries"] += 1
        if mld_query_version(end - start) == 1:  # an MLDv1 querier: MLDv1 a while (RFC 3810 §8.2.1)
            self._older_until[61] = self.clock() + OLDER_QUERIER_TIMEOUT
        self._queried(group, mld_max_response(code, end - start))

    def _heard_report(self, fam: int, group: bytes) -> None:
        """Another host of the link reported `group` (IGMPv1/v2, MLDv1) while we speak that
        version: the router knows the group has a member, so our pending answer leaves it out."""
        if fam in self._query_due and self.groups.is_member(group):
            self._heard.setdefault(fam, set()).add(group)
            self.counts["igmp_suppressed" if fam == 4 else "mld_suppressed"] += 1
        else:
            self.drops["rx_igmp_other" if fam == 4 else "rx_mld_other"] += 1

    def _queried(self, group: bytes, max_resp: float) -> None:
        """A query of `group`'s family (all zeros: a general one): its answer (the groups it asks
        about that we are in; a general one: all of them) is due at a random time within
        `max_resp`, so that the hosts of a link do not all answer at once; a general query pending
        covers a group's (`answer_query` sends it). The answer is paced as every report
        (`_report`): a flood of queries with no time to answer was a report per loop turn."""
        fam = 4 if len(group) == 4 else 6
        general = group == bytes(len(group))
        heard = self._heard.get(fam)
        if heard:  # asked again: a report heard before this query answers nothing of it
            if general:
                heard.clear()
            else:
                heard.discard(group)
        if not general and not self.groups.is_member(group):
            return  # about a group nobody here is in
        due = self.clock() + self._rng.uniform(0.0, max_resp)
        pending = self._query_due.get(fam)
        asked = self._query_asked.get(fam)
        if general:
            self._query_asked[fam] = None  # a general answer names every group
        elif not (pending is not None and asked is None):
            self._query_asked[fam] = (asked or set()) | {group}
        self._query_due[fam] = due if pending is None else min(due, pending)

    def answer_query(self, now: float) -> None:
        """Send the answers queries asked for, if they are due (the switch's timers call this)."""
        for fam, due in list(self._query_due.items()):
            if now < due:
                continue
            del self._query_due[fam]
            asked = self._query_asked.pop(fam, None)
            heard = self._heard.pop(fam, set())
            self._report([current_record(g, self.groups.state(g)) for g in self.groups.groups(4 if fam == 4 else 16)
                          if (asked is None or g in asked) and g not in heard])

    def host_group(self, group: bytes, member: bool) -> bool:
        """In a worker: the host joined `group` (`member`) or left it, over all workers (usnetd's
        word, `membership_changed` there). False, nothing changed, for an address that is no group
        of a family this netif has, or past the table's bound (counted `host_groups_refused`)."""
        if not (is_multicast4(group) or (is_multicast6(group) and self.netif.ip6 is not None)) or \
                not self.groups.set_host(group, member):
            self.drops["host_groups_refused"] += 1
            return False
        return True

    def host_filter(self, group: bytes, f: Filter) -> bool:
        """In a worker: the host's union of `group`'s source filters is `f` now (usnetd's word,
        `host_filter_changed` there). False, nothing changed, for a group the host is not in or a
        source of the other family (counted `host_groups_refused`)."""
        if not self.groups.set_host_state(group, f):
            self.drops["host_groups_refused"] += 1
            return False
        return True

    # -- delivery ---------------------------------------------------------------------------------

    def is_joined(self, dst: bytes) -> bool:
        """Whether a packet to `dst` is one this netif takes as a member host: a group with members
        here, or one the netif is in itself (all-hosts, 224.0.0.1, which every host is in; IPv6's
        all-nodes and solicited-node groups: the table's held ones); in a worker, or one the host
        is in: `read_host_groups` first reads what usnetd said of it and we have not read yet (a
        join or a leave), since that answer is the host's, not this table's."""
        groups = self.groups
        if dst in groups.refs or dst in groups.held:
            return True
        self.host_up_to_date()
        return dst in groups.host

    def host_up_to_date(self) -> None:
        """In a worker: read what usnetd said of the host's groups and we have not read
        (`read_host_groups`), once for each batch of input: whatever was sent after a join's or
        leave's answer is in a batch taken after usnetd's b"G" was in our socket."""
        if self.read_host_groups is not None and not self.host_read:
            self.host_read = True
            self.read_host_groups()

    def is_group_mac(self, mac: bytes) -> bool:
        """Whether the receive path admits group MAC `mac`: a group's the netif is in (`is_joined`'s
        rule, with a worker's `read_host_groups`)."""
        if mac in self.groups.macs:
            return True
        if self.read_host_groups is None or not mac[0] & 1:
            return False
        self.host_up_to_date()
        return mac in self.groups.macs

    def members_for(self, dst: bytes, dport: int, src: bytes, sport: int) -> list[Flow]:
        """The flows a UDP datagram from (`src`, `sport`) to group `dst`, port `dport` goes to, as
        Linux's __udp4_lib_mcast_deliver and ip_mc_sf_allow (__udp6_lib_mcast_deliver,
        inet6_mc_check) choose the sockets: every member of the group on the port (a connected one
        only from its peer), and every other flow of the group's family listening on the port whose
        IP_MULTICAST_ALL (IPV6_MULTICAST_ALL) is on (Linux's default: a socket hears a group any
        socket joined). Every one of them only if the source passes the netif's union of the
        group's source filters (Linux's ip_check_mc_rcv), and a member only if it passes its own
        (ip_mc_sf_allow: a member that excludes the source does not hear it through MC_ALL either).
        A port is one uid's (usnet.domain.switch.ports), so no other user hears it."""
        groups = self.groups
        if groups.host_states is not None:
            self.host_up_to_date()  # a worker: the host's filter as usnetd told it before its answer
        members = groups.members.get((dst, dport), ())
        out = [m for m in members if (m.raddr is None or (m.raddr == src and m.rport == sport))
               and groups.admits(m, dst, src)]
        front = (self.listeners if len(dst) == 4 else self.listeners6).get((UDP, dport))
        if front is not None:
            for f in (front.group.members if front.group is not None else (front,)):
                if f.mc_all and f not in members and groups.admits(f, dst, src):
                    out.append(f)
        return out
