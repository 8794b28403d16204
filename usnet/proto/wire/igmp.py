"""IGMP (RFC 2236, RFC 3376) and the IPv4 multicast addresses: what a member host sends and reads.

Sans-I/O: the flow switch (usnet.domain.switch.groups) keeps who is a member and when to speak;
this module only builds and parses the bytes. A member host announces a group with an IGMPv3
Membership Report (as Linux does by default, net.ipv4.conf.*.force_igmp_version=0) sent to
224.0.0.22 with TTL 1 and the IP Router Alert option (RFC 3376 §4), answers a query with the
groups it is in, and says it left with a report that changes the group to INCLUDE {}.

    IGMPv3 report:  u8 type=0x22, u8 reserved, u16 checksum, u16 reserved, u16 number of records,
                    then per record: u8 record type, u8 aux data len (0), u16 number of sources N,
                    4s multicast address, N x 4s source address
    query (v1/v2/v3): u8 type=0x11, u8 max resp code, u16 checksum, 4s group (0: a general query)
"""

from __future__ import annotations

import struct

from usnet.proto.wire.checksum import acc, finish, verifies
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.header import Header
from usnet.proto.wire.msf import CHANGE_TO_EXCLUDE, CHANGE_TO_INCLUDE, MODE_IS_EXCLUDE, Record

__all__ = [
    "ALL_HOSTS",
    "ALL_REPORTERS",
    "ALL_ROUTERS",
    "CHANGE_TO_EXCLUDE",
    "CHANGE_TO_INCLUDE",
    "IGMP",
    "IGMP_HEADER",
    "IGMP_LEAVE",
    "IGMP_QUERY",
    "IGMP_RECORD",
    "IGMP_V1_REPORT",
    "IGMP_V2_REPORT",
    "IGMP_V3_REPORT",
    "MODE_IS_EXCLUDE",
    "ROUTER_ALERT",
    "build_old_report",
    "build_report",
    "group_mac4",
    "is_multicast4",
    "max_response",
    "parse_igmp",
    "query_version",
    "report_room",
]

IGMP = 2  # the IP protocol number
IGMP_QUERY, IGMP_V1_REPORT, IGMP_V2_REPORT, IGMP_LEAVE, IGMP_V3_REPORT = 0x11, 0x12, 0x16, 0x17, 0x22
ALL_HOSTS = bytes([224, 0, 0, 1])  # every member host is in it, queries go to it
ALL_REPORTERS = bytes([224, 0, 0, 22])  # IGMPv3 reports go to it
ALL_ROUTERS = bytes([224, 0, 0, 2])  # IGMPv2 leaves go to it
ROUTER_ALERT = b"\x94\x04\x00\x00"  # IP option 148, length 4, value 0 (RFC 2113)

#: The fixed part of every IGMP message (a v1/v2 message is this alone; a v3 query has more after it).
IGMP_HEADER = Header(("type", "B"), ("code", "B"), ("checksum", "H"), ("group", "4s"))
#: An IGMPv3 report's header: type, reserved, checksum, reserved, number of group records.
IGMP_V3_REPORT_HEADER = Header(("type", "B"), ("reserved", "B"), ("checksum", "H"), ("reserved2", "H"),
                               ("records", "H"))
#: One group record's fixed part; its sources (4 bytes each) follow it.
IGMP_RECORD = Header(("rtype", "B"), ("aux_len", "B"), ("sources", "H"), ("group", "4s"))
_IP_RA = Header(("ver_ihl", "B"), ("tos", "B"), ("total_length", "H"), ("ident", "H"), ("flags_frag", "H"),
                ("ttl", "B"), ("proto", "B"), ("checksum", "H"), ("src", "4s"), ("dst", "4s"), ("option", "4s"))


def is_multicast4(a: bytes) -> bool:
    """224.0.0.0/4 (class D)."""
    return len(a) == 4 and a[0] >> 4 == 14


def group_mac4(group: bytes) -> bytes:
    """The Ethernet address of an IPv4 group: 01:00:5e and its low 23 bits (RFC 1112 §6.4)."""
    return b"\x01\x00\x5e" + bytes([group[1] & 0x7F, group[2], group[3]])


def build_report(src: bytes, records: list[Record], ident: int = 0) -> bytes:
    """An IP packet (header with Router Alert, TTL 1, to 224.0.0.22) carrying an IGMPv3 report of
    `records`, each (record type, group, sources), as Linux's igmpv3_newpack/add_grec build it
    (usnet.proto.wire.msf.split_records keeps a report within `report_room`)."""
    body = bytearray(IGMP_V3_REPORT_HEADER.struct.pack(IGMP_V3_REPORT, 0, 0, 0, len(records)))
    for rtype, group, sources in records:
        body += IGMP_RECORD.struct.pack(rtype, 0, len(sources), group)
        body += b"".join(sources)
    return _in_ip(src, ALL_REPORTERS, body, ident)


def report_room(mtu: int) -> int:
    """The bytes of records one IGMPv3 report of ours (`build_report`) holds in an IP packet of at
    most `mtu` bytes (the IP header with Router Alert, the report's header), as Linux's
    igmpv3_newpack sizes it to the device's MTU: usnet.proto.wire.msf.split_records cuts the rest
    into more reports (one packet of them all would be refused). A netif's MTU is 576 or more
    (usnet.domain.config), room for a record of many sources."""
    return mtu - _IP_RA.size - IGMP_V3_REPORT_HEADER.size


def build_old_report(src: bytes, typ: int, group: bytes, ident: int = 0) -> bytes:
    """An IGMPv1/v2 message about `group` in its IP packet, as Linux's igmp_send_report: a report
    (IGMP_V1_REPORT, IGMP_V2_REPORT) goes to the group itself, a leave (IGMP_LEAVE) to all-routers."""
    body = bytearray(IGMP_HEADER.struct.pack(typ, 0, 0, group))
    return _in_ip(src, ALL_ROUTERS if typ == IGMP_LEAVE else group, body, ident)


def _in_ip(src: bytes, dst: bytes, body: bytearray, ident: int) -> bytes:
    """`body` with its IGMP checksum, behind an IP header with Router Alert, TTL 1, DSCP CS6."""
    struct.pack_into("!H", body, 2, finish(acc(bytes(body))))
    total = _IP_RA.size + len(body)
    hdr = bytearray(_IP_RA.struct.pack(0x46, 0xC0, total, ident, 0x4000, 1, IGMP, 0, src, dst, ROUTER_ALERT))
    struct.pack_into("!H", hdr, 10, finish(acc(bytes(hdr))))
    return bytes(hdr + body)


def parse_igmp(msg: bytes | bytearray | memoryview) -> tuple[int, int, bytes]:
    """(type, max response code, group) of an IGMP message whose checksum verifies; WireError if
    it is shorter than 8 bytes or damaged."""
    if len(msg) < IGMP_HEADER.size:
        raise WireError(f"IGMP: {len(msg)} bytes")
    if not verifies(acc(bytes(msg))):
        raise WireError("IGMP: bad checksum")
    t, code, _, group = IGMP_HEADER.struct.unpack_from(msg)
    return t, code, group


def query_version(code: int, length: int) -> int:
    """Which IGMP a query is (RFC 3376 §7.1): 3 from 12 bytes on, 2 for 8 bytes with a maximum
    response code, 1 for 8 bytes without."""
    return 3 if length >= 12 else 2 if code else 1


def max_response(code: int, length: int) -> float:
    """A query's maximum response time in seconds, from its code and its length (RFC 3376
    §4.1.1, §7.1): an IGMPv3 query (12 bytes or more) codes 128 and up as a float (exponent and
    mantissa, in tenths), and its code 0 is no time at all (Linux's 1 jiffy); an IGMPv2 query's
    code is tenths; an IGMPv1 query (8 bytes, code 0) means 10 s."""
    if length >= 12 and code >= 128:
        return ((code & 0x0F | 0x10) << ((code >> 4 & 0x07) + 3)) / 10
    return code / 10 if code or length >= 12 else 10.0
