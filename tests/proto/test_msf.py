"""Multicast source filters (usnet.proto.wire.msf), their records, the option layouts and the group table's filters.

Against models written from the RFC's definitions, not from the code: the interface's union is
checked source by source (RFC 3376 §3.2: a source passes the interface if any socket's filter
lets it through); a router that applies a report's State-Change records to the old state gets
the new one (RFC 3376 §6.4's action tables, for the records a host sends); reports cut to size
lose nothing. Hypothesis for the parsers of ip_mreq_source and group_(source_)req: any bytes
give a request or EINVAL.
"""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.config import conf
from scapy.contrib.igmpv3 import IGMPv3, IGMPv3mr
from scapy.layers.inet import IP

from usnet.domain.switch.groups import GroupTable
from usnet.proto.cmsg import GROUP_REQ, GROUP_SOURCE_REQ, parse_group_req, parse_mreq_source
from usnet.proto.wire.igmp import build_report, report_room
from usnet.proto.wire.msf import (
    ALLOW_NEW_SOURCES,
    ANY_SOURCE,
    BLOCK_OLD_SOURCES,
    CHANGE_TO_EXCLUDE,
    CHANGE_TO_INCLUDE,
    MODE_IS_EXCLUDE,
    MODE_IS_INCLUDE,
    NOT_MEMBER,
    Filter,
    Record,
    admits,
    change_records,
    current_record,
    merge_records,
    split_records,
    union,
)

FAST = settings(max_examples=300, deadline=None)
_SOURCES = [bytes([10, 0, 0, i]) for i in range(6)]  # a small universe, so filters overlap
G = bytes([239, 1, 2, 3])

filters = st.builds(Filter, st.booleans(), st.frozensets(st.sampled_from(_SOURCES)))


@FAST
@given(st.lists(filters, max_size=5), st.integers(0, 2))
def test_the_union_lets_through_what_some_filter_does(fs, any_source):
    """RFC 3376 §3.2: a source passes the interface iff it passes some socket's filter (any-source
    members pass everything); the mode is EXCLUDE iff some member excludes."""
    u = union(fs, any_source)
    for s in [*_SOURCES, bytes([10, 9, 9, 9])]:
        assert admits(u, s) == (any_source > 0 or any(admits(f, s) for f in fs))
    assert u.include == (any_source == 0 and all(f.include for f in fs))


def _apply(state: Filter, records) -> Filter:
    """A router's view (RFC 3376 §6.4, per record) of a host's filter after its records."""
    inc, srcs = state
    for r in records:
        got = frozenset(r.sources)
        if r.rtype in (CHANGE_TO_INCLUDE, MODE_IS_INCLUDE):
            inc, srcs = True, got
        elif r.rtype in (CHANGE_TO_EXCLUDE, MODE_IS_EXCLUDE):
            inc, srcs = False, got
        elif r.rtype == ALLOW_NEW_SOURCES:
            srcs = srcs | got if inc else srcs - got
        elif r.rtype == BLOCK_OLD_SOURCES:
            srcs = srcs - got if inc else srcs | got
    return Filter(inc, srcs)


@FAST
@given(filters, filters)
def test_the_change_records_take_a_listener_from_the_old_state_to_the_new(old, new):
    recs = change_records(G, old, new)
    assert _apply(old, recs) == new
    assert (recs == []) == (old == new)
    assert all(r.sources for r in recs if r.rtype in (ALLOW_NEW_SOURCES, BLOCK_OLD_SOURCES))


changes = st.builds(Record, st.sampled_from([CHANGE_TO_INCLUDE, CHANGE_TO_EXCLUDE, ALLOW_NEW_SOURCES,
                                              BLOCK_OLD_SOURCES]),
                     st.just(G), st.lists(st.sampled_from(_SOURCES), max_size=4, unique=True).map(tuple))


def _merged_shape(merged: list[Record]) -> None:
    """What merge_records gives: at most a Current-State record first, then one mode change or
    an ALLOW and a BLOCK that share no source."""
    kinds = [r.rtype for r in merged]
    if kinds[:1] in ([MODE_IS_INCLUDE], [MODE_IS_EXCLUDE]):
        kinds = kinds[1:]
    assert kinds in ([], [CHANGE_TO_INCLUDE], [CHANGE_TO_EXCLUDE], [ALLOW_NEW_SOURCES], [BLOCK_OLD_SOURCES],
                     [ALLOW_NEW_SOURCES, BLOCK_OLD_SOURCES])
    allow = {s for r in merged if r.rtype == ALLOW_NEW_SOURCES for s in r.sources}
    block = {s for r in merged if r.rtype == BLOCK_OLD_SOURCES for s in r.sources}
    assert not allow & block


@FAST
@given(filters, st.lists(changes, max_size=8))
def test_merged_change_records_take_a_router_where_the_originals_do(start, recs):
    """Any State-Change records of a group (TO_IN, TO_EX, ALLOW, BLOCK, any sources), merged as a
    paced report's outbox merges them, take a router from any state where the records one by
    one take it (RFC 3376 §6.4's actions as the model); each source is in ALLOW or BLOCK by its
    latest change, a mode change supersedes what came before and takes in what comes after."""
    merged = merge_records(recs)
    _merged_shape(merged)
    assert _apply(start, merged) == _apply(start, recs)
    assert len(merged) <= len(recs)


@FAST
@given(filters, st.lists(st.one_of(st.tuples(st.just("change"), filters), st.tuples(st.just("answer"), st.none()),
                                   st.tuples(st.just("repeat"), st.integers(0, 10))), max_size=10))
def test_merged_reports_of_a_hosts_history_take_a_router_to_its_state(start, events):
    """A host's history of one group: its filter changes (their change_records), query answers
    (current_record) and robustness repeats (the change from an earlier state to the current
    one, as `_changed`'s repeat). Its records merged (Current-State first, then the changes)
    take a router from the state before them to the host's state, as the records one by one do."""
    states, cur, recs = [start], start, []
    for kind, arg in events:
        if kind == "change":
            recs += change_records(G, cur, arg)
            cur = arg
            states.append(cur)
        elif kind == "answer":
            recs.append(current_record(G, cur))
        else:
            recs += change_records(G, states[arg % len(states)], cur)
    merged = merge_records(recs)
    _merged_shape(merged)
    assert _apply(start, recs) == cur
    assert _apply(start, merged) == cur


def test_merging_unites_allows_and_a_later_block_or_mode_change_wins():
    a, b, c = _SOURCES[:3]
    allow = lambda *s: Record(ALLOW_NEW_SOURCES, G, s)
    block = lambda *s: Record(BLOCK_OLD_SOURCES, G, s)
    assert merge_records([allow(a), allow(b, c)]) == [allow(a, b, c)]
    assert merge_records([allow(a, b), block(a)]) == [allow(b), block(a)]
    to_in, to_ex = (lambda *s: Record(CHANGE_TO_INCLUDE, G, s)), (lambda *s: Record(CHANGE_TO_EXCLUDE, G, s))
    assert merge_records([allow(a), block(b), to_in(c)]) == [to_in(c)]
    assert merge_records([to_ex(a), allow(a), block(b)]) == [to_ex(b)]
    assert merge_records([to_ex(), Record(MODE_IS_EXCLUDE, G)]) == [Record(MODE_IS_EXCLUDE, G), to_ex()]


@FAST
@given(st.lists(st.tuples(st.sampled_from([1, 2, 3, 4, 5, 6]), st.integers(0, 400)), max_size=8))
def test_reports_cut_to_size_hold_every_record_and_fit(spec):
    """Records with up to 400 sources each, cut into reports of a 1,500-byte MTU's room: each
    report fits the MTU and scapy reads it; together they name every source of every record, in order."""
    recs = [Record(t, bytes([239, 0, 0, i]), tuple(struct.pack("!I", 0x0A000000 + j) for j in range(n)))
            for i, (t, n) in enumerate(spec)]
    parts = split_records(recs, report_room(1500), 4)
    seen = []
    limit, conf.max_list_count = conf.max_list_count, 1000  # scapy reads 100 sources a record by default
    try:
        for part in parts:
            pkt = build_report(bytes([10, 0, 0, 2]), part)
            assert len(pkt) <= 1500
            for r in IGMPv3(bytes(IP(pkt).payload))[IGMPv3mr].records:
                seen.append((r.rtype, socket.inet_aton(r.maddr), [socket.inet_aton(a) for a in r.srcaddrs]))
    finally:
        conf.max_list_count = limit
    merged: list = []
    for t, g, s in seen:
        if merged and merged[-1][:2] == (t, g) and len(merged[-1][2]) and s:
            merged[-1][2].extend(s)
        else:
            merged.append((t, g, s))
    assert [(t, g, tuple(s)) for t, g, s in merged] == [(r.rtype, r.group, r.sources) for r in recs]


@FAST
@given(st.binary(max_size=300))
def test_ip_mreq_source_of_any_bytes_is_a_request_or_einval(b):
    try:
        m = parse_mreq_source(b)
    except OSError as e:
        assert e.errno == errno.EINVAL and len(b) != 12
        return
    assert len(b) == 12 and (m.group, m.interface, m.source) == (b[:4], b[4:8], b[8:])


@FAST
@given(st.binary(max_size=300), st.booleans())
def test_group_req_of_any_bytes_is_a_request_or_einval(b, with_source):
    try:
        r = parse_group_req(b, with_source)
    except OSError as e:
        assert e.errno == errno.EINVAL
        assert len(b) != GROUP_SOURCE_REQ.size if with_source else len(b) < GROUP_REQ.size
        return
    assert r.ifindex == struct.unpack_from("=I", b)[0]
    for (family, addr), at in ((r.group, 8), *(((r.source, 136),) if with_source else ())):
        assert family == struct.unpack_from("=H", b, at)[0]
        assert len(addr) == {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family, 0)


class _Flow:
    def __init__(self, i: int) -> None:
        self.id, self.lport = i, 5000 + i


@FAST
@given(st.lists(st.tuples(st.sampled_from(["join", "filter", "leave", "gone", "rjoin", "rleave"]),
                          st.integers(0, 3), filters), max_size=25))
def test_the_group_tables_filters_follow_a_model(ops):
    """The table's per-flow filters, its union per group (against `union` of the model's) and what
    it lets through for each flow, after any sequence of joins with a filter, filter changes,
    leaves, flows gone and other workers' memberships with theirs."""
    t = GroupTable()
    flows = [_Flow(i) for i in range(4)]
    model: dict[int, Filter] = {}
    remote: dict[int, Filter] = {}  # another worker's memberships, by usnetd's channel
    for op, fi, f in ops:
        fl = flows[fi]
        try:
            if op == "join":
                t.join(fl, G, f)
            elif op == "filter":
                t.set_filter(fl, G, f)
            elif op == "leave":
                t.leave(fl, G)
            elif op == "gone":
                t.drop_flow(fl)
            elif op == "rjoin":
                if fi in remote or f == NOT_MEMBER:
                    continue  # (usnetd counts what a worker accepted: one membership a channel)
                t.join_remote(G, fi, f)
            elif fi in remote:
                t.leave_remote(G, fi)
        except OSError as e:
            want = {"join": errno.EINVAL if f == NOT_MEMBER else errno.EADDRINUSE,
                    "filter": errno.EINVAL if f == NOT_MEMBER else errno.EADDRNOTAVAIL,
                    "leave": errno.EADDRNOTAVAIL}[op]
            assert e.errno == want
            continue
        if op == "join":
            assert f != NOT_MEMBER and fi not in model
            model[fi] = f
        elif op == "filter":
            assert f != NOT_MEMBER and fi in model
            model[fi] = f
        elif op in ("leave", "gone"):
            assert op == "gone" or fi in model
            model.pop(fi, None)
        elif op == "rjoin":
            remote[fi] = f
        else:
            remote.pop(fi, None)
    want = union([*model.values(), *remote.values()]) if model or remote else NOT_MEMBER
    assert t.state(G) == want
    for i, fl in enumerate(flows):
        assert t.filter_of(fl, G) == model.get(i, ANY_SOURCE)
        for s in _SOURCES if G in t.refs else ():  # (a group not joined is not taken off the wire)
            assert t.admits(fl, G, s) == (admits(want, s) and admits(model.get(i, ANY_SOURCE), s))
    assert set(t.filters.get(G, {})) <= set(model)
    # each member flow's option memory is its membership and its filter's list, as Linux charges them
    assert t.optmem == {i: 48 + (0 if f == ANY_SOURCE else 24 + 4 * len(f.sources)) for i, f in model.items()}


def test_a_filter_is_checked_whatever_the_client_did():
    t = GroupTable()
    fl = _Flow(0)
    for f, code in ((Filter(True, frozenset([bytes(16)])), errno.EINVAL), (NOT_MEMBER, errno.EINVAL),
                    (Filter(False, frozenset(bytes([10, 1, 0, i]) for i in range(11))), errno.ENOBUFS)):
        with pytest.raises(OSError) as e:
            t.join(fl, G, f)
        assert e.value.errno == code
    assert not t.refs and not t.filters
