"""MLD (RFC 2710, RFC 3810) and the IPv6 multicast addresses: what a member host sends and reads.

IPv6's IGMP (usnet.proto.wire.igmp), in ICMPv6. Sans-I/O, as igmp.py: the flow switch
(usnet.domain.switch.multicast) keeps who is a member and when to speak. A member host
announces a group with an MLDv2 Listener Report (Linux's default, net.ipv6.conf.*.force_mld_version=0)
sent to ff02::16 from its link-local address with hop limit 1 and a Hop-by-Hop header carrying
the Router Alert option (RFC 3810 §5), with the same record types as IGMPv3's; answers a query
(type 130) with the groups it is in; an MLDv1 querier heard (a query of 24 bytes) turns it to
MLDv1 reports (type 131, to the group) and Dones (type 132, to ff02::2).

    MLDv2 report:  u8 type=143, u8 code, u16 checksum, u16 reserved, u16 number of records, then
                   per record: u8 record type, u8 aux data len (0), u16 number of sources N, 16s group,
                   N x 16s source
    MLDv1 message and query: u8 type, u8 code, u16 checksum, u16 max response delay (ms),
                   u16 reserved, 16s group (:: in a general query); an MLDv2 query has more after it
    Hop-by-Hop header before it: u8 next header=58, u8 length=0, Router Alert (5, 2, value 0), PadN (1, 0)
"""

from __future__ import annotations

import struct

from usnet.proto.wire.checksum import acc, finish
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.header import Header
from usnet.proto.wire.icmpv6 import parse_icmpv6
from usnet.proto.wire.ipv6 import ALL_ROUTERS, IPV6_HLEN, build_ipv6_header, pseudo_sum_v6
from usnet.proto.wire.msf import Record

__all__ = [
    "ALL_MLDV2_ROUTERS",
    "HBH_ROUTER_ALERT",
    "MLDV1_DONE",
    "MLDV1_REPORT",
    "MLDV2_REPORT",
    "MLD_HEADER",
    "MLD_QUERY",
    "MLD_RECORD",
    "MLD_TYPES",
    "build_mld_report",
    "build_mldv1",
    "is_multicast6",
    "mld_max_response",
    "mld_query_version",
    "mld_report_room",
    "parse_mld",
]

ICMPV6, HOP_BY_HOP = 58, 0
MLD_QUERY, MLDV1_REPORT, MLDV1_DONE, MLDV2_REPORT = 130, 131, 132, 143
MLD_TYPES = frozenset((MLD_QUERY, MLDV1_REPORT, MLDV1_DONE, MLDV2_REPORT))  # the ICMPv6 types that are MLD
ALL_MLDV2_ROUTERS = bytes.fromhex("ff020000000000000000000000000016")  # MLDv2 reports go to it
#: The Hop-by-Hop header of every MLD message: next header ICMPv6, Router Alert 0 (MLD, RFC 2711), PadN.
HBH_ROUTER_ALERT = bytes((ICMPV6, 0, 5, 2, 0, 0, 1, 0))

#: An MLDv1 message, and the fixed part of every query (RFC 2710 §3, RFC 3810 §5.1).
MLD_HEADER = Header(("type", "B"), ("code", "B"), ("checksum", "H"), ("max_delay", "H"), ("reserved", "H"),
                    ("group", "16s"))
#: An MLDv2 report's header: type, code, checksum, reserved, number of group records.
MLDV2_REPORT_HEADER = Header(("type", "B"), ("code", "B"), ("checksum", "H"), ("reserved", "H"), ("records", "H"))
#: One group record's fixed part; its sources (16 bytes each) follow it.
MLD_RECORD = Header(("rtype", "B"), ("aux_len", "B"), ("sources", "H"), ("group", "16s"))


def is_multicast6(a: bytes) -> bool:
    """ff00::/8."""
    return len(a) == 16 and a[0] == 0xFF


def build_mld_report(src: bytes, records: list[Record]) -> bytes:
    """An IPv6 packet (Hop-by-Hop Router Alert, hop limit 1, to ff02::16) carrying an MLDv2 report of
    `records`, each (record type, group, sources), as Linux's mld_newpack/add_grec build it;
    `src` is the netif's link-local address (RFC 3810 §5.2.13)."""
    body = bytearray(MLDV2_REPORT_HEADER.struct.pack(MLDV2_REPORT, 0, 0, 0, len(records)))
    for rtype, group, sources in records:
        body += MLD_RECORD.struct.pack(rtype, 0, len(sources), group)
        body += b"".join(sources)
    return _in_ip6(src, ALL_MLDV2_ROUTERS, body)


def mld_report_room(mtu: int) -> int:
    """The bytes of records one MLDv2 report of ours (`build_mld_report`) holds in an IPv6 packet of
    at most `mtu` bytes (the IPv6 header, the Hop-by-Hop header, the report's header), as Linux's
    mld_newpack sizes it to the device's MTU: usnet.proto.wire.msf.split_records cuts the rest
    into more reports (one packet of them all would be refused). An IPv6 netif's MTU is 1280 or
    more (usnet.domain.config)."""
    return mtu - IPV6_HLEN - len(HBH_ROUTER_ALERT) - MLDV2_REPORT_HEADER.size


def build_mldv1(src: bytes, typ: int, group: bytes) -> bytes:
    """An MLDv1 message about `group` in its IPv6 packet, as Linux's igmp6_send: a report
    (MLDV1_REPORT) goes to the group itself, a Done (MLDV1_DONE) to all-routers."""
    body = bytearray(MLD_HEADER.struct.pack(typ, 0, 0, 0, 0, group))
    return _in_ip6(src, ALL_ROUTERS if typ == MLDV1_DONE else group, body)


def _in_ip6(src: bytes, dst: bytes, body: bytearray) -> bytes:
    """`body` with its ICMPv6 checksum, behind the IPv6 header (hop limit 1) and the Router Alert."""
    struct.pack_into("!H", body, 2, finish(acc(bytes(body)) + pseudo_sum_v6(src, dst, len(body), ICMPV6)))
    hdr = build_ipv6_header(src, dst, HOP_BY_HOP, len(HBH_ROUTER_ALERT) + len(body), 1)
    return hdr + HBH_ROUTER_ALERT + bytes(body)


def parse_mld(msg: bytes | bytearray | memoryview, src: bytes, dst: bytes) -> tuple[int, int, bytes]:
    """(type, maximum response code, group) of an MLD message from `src` to `dst` whose checksum
    verifies; WireError if it is shorter than 24 bytes or damaged. The code is the max delay field
    (an MLDv2 query's is coded: `mld_max_response`)."""
    if len(msg) < MLD_HEADER.size:
        raise WireError(f"MLD: {len(msg)} bytes")
    parse_icmpv6(msg, 0, len(msg), src, dst)
    t, _code, _, delay, _, group = MLD_HEADER.struct.unpack_from(msg)
    return t, delay, group


def mld_query_version(length: int) -> int:
    """Which MLD a query is (RFC 3810 §8.1): 2 from 28 bytes on, 1 for 24."""
    return 2 if length >= 28 else 1


def mld_max_response(code: int, length: int) -> float:
    """A query's maximum response time in seconds (RFC 3810 §5.1.3): milliseconds, an MLDv2 query's
    codes from 32768 on as a float (exponent in bits 12-14, mantissa in the low 12)."""
    if length >= 28 and code >= 0x8000:
        return ((code & 0x0FFF | 0x1000) << ((code >> 12 & 0x07) + 3)) / 1000
    return code / 1000
