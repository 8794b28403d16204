"""MLD's bytes (usnet.proto.wire.mld), without devices: scapy decodes what usnet builds (MLDv2
reports, MLDv1 reports and Dones), usnet parses what scapy builds (MLDv1 and v2 queries), and
hypothesis holds the parser to its rule on any input: a message or a WireError."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet6 import (
    ICMPv6MLDMultAddrRec,
    ICMPv6MLDone,
    ICMPv6MLQuery,
    ICMPv6MLQuery2,
    ICMPv6MLReport,
    ICMPv6MLReport2,
    IPv6,
    IPv6ExtHdrHopByHop,
    RouterAlert,
)
from scapy.utils6 import in6_getnsmac

from usnet.proto.wire.errors import WireError
from usnet.proto.wire.igmp import CHANGE_TO_EXCLUDE, CHANGE_TO_INCLUDE
from usnet.proto.wire.ipv6 import multicast_mac
from usnet.proto.wire.mld import (
    MLD_QUERY,
    MLDV1_DONE,
    MLDV1_REPORT,
    build_mld_report,
    build_mldv1,
    is_multicast6,
    mld_max_response,
    mld_query_version,
    parse_mld,
)
from usnet.proto.wire.msf import Record

FAST = settings(max_examples=200, deadline=None)
LL = socket.inet_pton(socket.AF_INET6, "fe80::2")
G = socket.inet_pton(socket.AF_INET6, "ff05::1:3")
G2 = socket.inet_pton(socket.AF_INET6, "ff02::fb")


def _checks_out(pkt: bytes) -> IPv6:
    """The packet as scapy reads it, its checksum the one scapy computes again; hop limit 1, link-local
    source, a Hop-by-Hop header with the Router Alert for MLD (value 0) first."""
    ip = IPv6(pkt)
    assert (ip.src, ip.hlim, ip.nh, ip.plen) == ("fe80::2", 1, 0, len(pkt) - 40)
    hbh = ip[IPv6ExtHdrHopByHop]
    assert hbh.nh == 58 and isinstance(hbh.options[0], RouterAlert) and hbh.options[0].value == 0
    redo = IPv6(pkt)
    del redo[IPv6ExtHdrHopByHop].payload.cksum
    assert bytes(redo) == pkt
    return ip


def test_an_mldv2_report_is_what_scapy_reads():
    ip = _checks_out(build_mld_report(LL, [Record(CHANGE_TO_EXCLUDE, G), Record(CHANGE_TO_INCLUDE, G2)]))
    assert ip.dst == "ff02::16"
    assert ip[ICMPv6MLReport2].records_number == 2
    # scapy reads the second record as the first's payload: compare with what scapy builds instead
    want = IPv6(src="fe80::2", dst="ff02::16", hlim=1) / IPv6ExtHdrHopByHop(options=[RouterAlert(value=0)]) / \
        ICMPv6MLReport2(records=[ICMPv6MLDMultAddrRec(rtype=4, dst="ff05::1:3"),
                                 ICMPv6MLDMultAddrRec(rtype=3, dst="ff02::fb")])
    assert bytes(ip) == bytes(want)


def test_mldv1_reports_go_to_the_group_and_dones_to_all_routers():
    rep = _checks_out(build_mldv1(LL, MLDV1_REPORT, G))
    assert rep.dst == "ff05::1:3" and rep[ICMPv6MLReport].mladdr == "ff05::1:3"
    done = _checks_out(build_mldv1(LL, MLDV1_DONE, G))
    assert done.dst == "ff02::2" and done[ICMPv6MLDone].mladdr == "ff05::1:3"


@pytest.mark.parametrize("version", [1, 2])
def test_a_query_parses_and_a_damaged_one_does_not(version):
    layer = ICMPv6MLQuery(mrd=1234, mladdr="ff05::1:3") if version == 1 else \
        ICMPv6MLQuery2(mrd=1234, mladdr="ff05::1:3")
    msg = bytes(IPv6(src="fe80::9", dst="ff02::1") / layer)[40:]
    src, dst = socket.inet_pton(socket.AF_INET6, "fe80::9"), socket.inet_pton(socket.AF_INET6, "ff02::1")
    assert parse_mld(msg, src, dst) == (MLD_QUERY, 1234, G)
    assert mld_query_version(len(msg)) == version
    bad = bytearray(msg)
    bad[9] ^= 1
    with pytest.raises(WireError):
        parse_mld(bytes(bad), src, dst)
    with pytest.raises(WireError):
        parse_mld(msg, LL, dst)  # the pseudo-header counts


@FAST
@given(st.binary(max_size=64), st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_parse_mld_takes_any_bytes_or_says_why(data, src, dst):
    try:
        typ, code, group = parse_mld(data, src, dst)
    except WireError:
        return
    assert len(data) >= 24 and 0 <= typ < 256 and 0 <= code < 65536 and len(group) == 16


@FAST
@given(st.binary(min_size=16, max_size=16))
def test_a_groups_mac_is_scapys_and_ff00_8_is_multicast(a):
    assert is_multicast6(a) == (a[0] == 0xFF)
    if is_multicast6(a):
        assert multicast_mac(a) == bytes.fromhex(in6_getnsmac(a).replace(":", ""))


def test_a_querys_maximum_response_as_rfc_3810():
    assert mld_max_response(10000, 24) == 10.0  # MLDv1: milliseconds
    assert mld_max_response(10000, 28) == 10.0
    # MLDv2, exponent 1, mantissa 0: (0x1000 << 4) ms
    assert mld_max_response(0x9000, 28) == (0x1000 << 4) / 1000
    assert mld_max_response(0x9000, 24) == 0x9000 / 1000
