"""IGMP's bytes (usnet.proto.wire.igmp), the ip_mreq layouts (usnet.proto.cmsg) and the switch's
group table (usnet.domain.switch.groups), without devices: scapy decodes what usnet builds, and
hypothesis holds the parsers and the table to their rules on any input."""

from __future__ import annotations

import errno
import struct
from collections import Counter
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.contrib.igmpv3 import IGMPv3, IGMPv3mq, IGMPv3mr
from scapy.layers.inet import IP
from scapy.layers.l2 import getmacbyip

from usnet.domain.switch.groups import MAX_MEMBERSHIPS, GroupTable, group_mac
from usnet.proto.cmsg import IpMreqn, multicast_if, parse_mreq
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.igmp import (
    CHANGE_TO_EXCLUDE,
    CHANGE_TO_INCLUDE,
    IGMP_QUERY,
    build_report,
    group_mac4,
    is_multicast4,
    max_response,
    parse_igmp,
)
from usnet.proto.wire.msf import Record

FAST = settings(max_examples=200, deadline=None)
SRC = bytes([10, 0, 0, 2])


def test_a_report_is_what_scapy_reads_as_igmpv3():
    groups = [bytes([239, 1, 2, 3]), bytes([224, 0, 0, 251])]
    pkt = build_report(SRC, [Record(CHANGE_TO_EXCLUDE, groups[0]), Record(CHANGE_TO_INCLUDE, groups[1])], ident=7)
    ip = IP(pkt)
    assert (ip.src, ip.dst, ip.ttl, ip.proto, ip.id, ip.len) == ("10.0.0.2", "224.0.0.22", 1, 2, 7, len(pkt))
    assert ip.options[0].option == 20  # Router Alert (148 = copied bit + 20)
    again = IP(pkt)
    del again.chksum
    assert bytes(again)[:24] == pkt[:24]  # scapy computes the same header checksum
    rep = IGMPv3(bytes(ip.payload))
    assert rep.type == 0x22
    assert [(r.rtype, r.maddr) for r in rep[IGMPv3mr].records] == [(4, "239.1.2.3"), (3, "224.0.0.251")]
    body = bytes(ip.payload)
    redo = IGMPv3(body)
    redo.chksum = None
    assert bytes(redo) == body


def test_a_query_parses_and_a_damaged_one_does_not():
    q = bytes(IGMPv3(type=0x11, mrcode=100, gaddr="239.1.2.3") / IGMPv3mq())
    assert parse_igmp(q) == (IGMP_QUERY, 100, bytes([239, 1, 2, 3]))
    bad = bytearray(q)
    bad[5] ^= 1
    with pytest.raises(WireError):
        parse_igmp(bytes(bad))


@FAST
@given(st.binary(max_size=64))
def test_parse_igmp_takes_any_bytes_or_says_why(data):
    try:
        t, code, group = parse_igmp(data)
    except WireError:
        return
    assert len(data) >= 8 and 0 <= t <= 255 and 0 <= code <= 255 and len(group) == 4


@FAST
@given(st.integers(0xE0000000, 0xEFFFFFFF))
def test_a_groups_mac_is_scapys(a):
    g = a.to_bytes(4, "big")
    assert is_multicast4(g)
    assert group_mac4(g).hex(":") == getmacbyip(".".join(map(str, g)))


@FAST
@given(st.binary(max_size=24))
def test_mreq_is_read_by_length_as_linux(data):
    """< 8 bytes EINVAL; 8..11 an ip_mreq (no index); from 12 an ip_mreqn, the rest ignored."""
    if len(data) < 8:
        with pytest.raises(OSError) as e:
            parse_mreq(data)
        assert e.value.errno == errno.EINVAL
        return
    m = parse_mreq(data)
    assert (m.group, m.address) == (data[:4], data[4:8])
    assert m.ifindex == (struct.unpack_from("=i", data, 8)[0] if len(data) >= 12 else 0)


def test_multicast_if_takes_an_address_alone():
    assert multicast_if(bytes([10, 0, 0, 2])) == IpMreqn(bytes(4), bytes([10, 0, 0, 2]), 0)
    with pytest.raises(OSError):
        multicast_if(b"\0\0\0")


_flows = [SimpleNamespace(id=i, lport=5000 + i % 2) for i in range(3)]
_groups = ([bytes([239, 0, 0, i]) for i in range(1, 4)] + [bytes([10, 0, 0, 1])]
           + [bytes.fromhex("ff050000000000000000000000000003"), bytes.fromhex("20010db8000000000000000000000001")])


def _is_group(g: bytes) -> bool:
    return g[0] >> 4 == 14 if len(g) == 4 else g[0] == 0xFF


@FAST
@given(st.lists(st.tuples(st.sampled_from(["join", "leave", "gone", "rjoin", "rleave"]), st.integers(0, 2),
                          st.integers(0, 5)), max_size=40))
def test_the_group_table_keeps_its_counts(ops):
    """Against a model (flow -> its groups, IPv4's and IPv6's in one table): the errors Linux gives,
    first join and last leave said, each group's count, the MACs admitted (01:00:5e or 33:33),
    and nothing left of a flow that went. "rjoin"/"rleave": another worker's flow joins or leaves
    (usnetd's count of them, usnet.domain.workers): first and last are over both."""
    t = GroupTable()
    model: dict[int, list[bytes]] = {}
    remote: Counter[bytes] = Counter()
    for op, fi, gi in ops:
        f, g = _flows[fi], _groups[gi]
        before = sum(g in gs for gs in model.values()) + remote[g]
        if op == "rjoin":
            if _is_group(g):
                remote[g] += 1
                assert t.join_remote(g) == (before == 0)
        elif op == "rleave":
            if remote[g]:
                remote[g] -= 1
                assert t.leave_remote(g) == (before == 1)
        elif op == "join":
            mine = model.setdefault(f.id, [])
            try:
                first = t.join(f, g)
            except OSError as e:
                want = (errno.EINVAL if not _is_group(g) else errno.EADDRINUSE if g in mine else errno.ENOBUFS)
                assert e.errno == want
                continue
            assert _is_group(g) and g not in mine and len(mine) < MAX_MEMBERSHIPS
            mine.append(g)
            assert first == (before == 0)
        elif op == "leave":
            try:
                last = t.leave(f, g)
            except OSError as e:
                assert e.errno == errno.EADDRNOTAVAIL and g not in model.get(f.id, [])
                continue
            model[f.id].remove(g)
            assert last == (before == 1)
        else:
            left = [x for x in t.drop_flow(f) if x not in t.refs]
            gone = model.pop(f.id, [])
            kept = {x for gs in model.values() for x in gs} | set(+remote)
            assert sorted(left) == sorted(x for x in gone if x not in kept)
    counts = {g: sum(g in gs for gs in model.values()) + remote[g] for g in _groups}
    assert dict(t.refs) == {g: n for g, n in counts.items() if n}
    assert t.macs == {group_mac(g) for g in t.refs} | {group_mac4(bytes([224, 0, 0, 1]))}
    assert {g for g in t.refs if len(g) == 16} == set(t.groups(16))
    for (g, port), members in t.members.items():
        assert members and all(m.lport == port and g in model[m.id] for m in members)


def test_a_querys_maximum_response_as_rfc_3376():
    assert max_response(100, 12) == 10.0  # IGMPv3, under 128: tenths
    assert max_response(0x80, 12) == 12.8  # exponent 0, mantissa 0: 0x10 << 3 tenths
    assert max_response(0xFF, 12) == 3174.4  # the largest: 0x1F << 10 tenths
    assert max_response(0xFF, 8) == 25.5  # IGMPv2: a plain count of tenths
    assert max_response(0, 8) == 10.0  # IGMPv1: no code, 10 s
    assert max_response(0, 12) == 0.0  # IGMPv3 code 0: at once (Linux: 1 jiffy)


def test_older_igmp_is_what_scapy_reads_and_queries_tell_their_version():
    from scapy.layers.igmp import IGMP

    from usnet.proto.wire.igmp import IGMP_LEAVE, IGMP_V2_REPORT, build_old_report, query_version

    g = bytes([239, 1, 2, 3])
    for typ, dst in ((IGMP_V2_REPORT, "239.1.2.3"), (IGMP_LEAVE, "224.0.0.2")):
        ip = IP(build_old_report(SRC, typ, g, ident=3))
        assert (ip.dst, ip.ttl, ip.options[0].option) == (dst, 1, 20)
        msg = IGMP(bytes(ip.payload))
        assert (msg.type, msg.gaddr) == (typ, "239.1.2.3")
        redo = IGMP(bytes(ip.payload))
        redo.chksum = None
        assert bytes(redo) == bytes(ip.payload)
    assert [query_version(c, n) for c, n in ((0, 8), (100, 8), (0, 12), (100, 12))] == [1, 2, 3, 3]


@FAST
@given(st.data())
def test_reports_cut_to_the_netifs_mtu_fit_it_and_a_full_one_is_full(data):
    """report_room and mld_report_room size a report to the netif's `mtu` as Linux's add_grec
    does: reports cut by split_records to that room (records of up to 200 sources) each fit the
    MTU, and as many source-less records as the room holds fit while one more would not."""
    from usnet.proto.wire.igmp import report_room
    from usnet.proto.wire.mld import build_mld_report, mld_report_room
    from usnet.proto.wire.msf import split_records

    for room, build, size, least in ((report_room, lambda r: build_report(bytes(4), r), 4, 576),
                                     (mld_report_room, lambda r: build_mld_report(bytes(16), r), 16, 1280)):
        mtu = data.draw(st.integers(least, 9000))
        group = bytes([239, 0, 0, 1]) if size == 4 else bytes([0xFF, 5]) + bytes(14)
        per = room(mtu) // (4 + size)
        assert len(build([Record(2, group)] * per)) <= mtu < len(build([Record(2, group)] * (per + 1)))
        counts = data.draw(st.lists(st.integers(0, 200), min_size=1, max_size=6))
        recs = [Record(5, group, tuple(i.to_bytes(size, "big") for i in range(n))) for n in counts]
        parts = split_records(recs, room(mtu), size)
        assert all(len(build(part)) <= mtu for part in parts)
        assert sum(len(r.sources) for part in parts for r in part) == sum(counts)
