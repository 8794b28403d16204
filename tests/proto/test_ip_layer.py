"""usnet.proto.ip: the client's sans-I/O IP layer (IPv4, IPv6, ICMP errors, PMTU).

A fake clock throughout (``now`` is a number the test picks), scapy as the
independent peer: it builds what we receive, and decodes and re-checksums
what we send (`defragment()` for our fragments). Hostile input (random,
truncated, mutated packets) must only ever move counters. Echo, Neighbour
Discovery, port unreachable and reassembly are the flow switch's
(tests/test_flowswitch.py, test_ipv6.py, test_icmp_errors.py,
test_fragments.py, test_reassembly.py).
"""

from __future__ import annotations

import errno
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("scapy.all")
from scapy.all import ICMP, IP, UDP, raw
from scapy.layers.inet import defragment, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    fragment6,
)

from tests.helpers.util import udp_segment
from usnet.proto.ip import Datagram, IcmpError, IpLayer
from usnet.proto.wire.ipv4 import build_ipv4_header, ip_bytes
from usnet.proto.wire.ipv6 import ip6_bytes, solicited_node

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

A4s, B4s, C4s, R4s = "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.254"
A4, B4, C4, R4 = map(ip_bytes, (A4s, B4s, C4s, R4s))
A6s, B6s, C6s, G6s, P6s, R6s = "fe80::1", "fe80::2", "fe80::3", "2001:db8::1", "2001:db8:9::9", "fe80::fe"
A6, B6, C6, G6, P6, R6 = map(ip6_bytes, (A6s, B6s, C6s, G6s, P6s, R6s))
MAC_B, MAC_C = bytes.fromhex("020000000002"), bytes.fromhex("020000000003")


def mac_s(m: bytes) -> str:
    return ":".join(f"{b:02x}" for b in m)


def layer(**kw) -> IpLayer:
    return IpLayer([A4, A6, G6], 1500, **kw)


def feed(ip: IpLayer, pkts, now: float = 0.0) -> list:
    ev = []
    for p in pkts:
        ev += ip.input(p if isinstance(p, (bytes, bytearray, memoryview)) else raw(p), now)
    return ev


def dgrams(ev):
    return [e for e in ev if isinstance(e, Datagram)]


def errors(ev):
    return [e for e in ev if isinstance(e, IcmpError)]


def clean(ip: IpLayer) -> None:
    assert ip.counters["rx_internal_error"] == 0
    assert ip.counters["rx_malformed"] == 0


def rechecked(pkt, *layers) -> bytes:
    """scapy's rebuild of ``pkt`` with the named checksum fields deleted."""
    p = pkt.copy()
    for layer, field in layers:
        delattr(p[layer], field)
    return raw(p)


# --------------------------------------------------------------------------- IPv4 input


def test_udp_delivered_zero_copy():
    ip = layer()
    pkt = raw(IP(src=B4s, dst=A4s, ttl=33) / UDP(sport=1234, dport=53) / b"hello") + b"\0" * 6
    buf = bytearray(pkt)
    [d] = dgrams(ip.input(buf, 0.0))
    assert (d.proto, d.src, d.dst, d.ttl) == (17, B4, A4, 33)
    assert bytes(d.payload) == pkt[20:-6] and bytes(d.packet) == pkt[:-6]
    assert d.payload.obj is buf  # a view into the caller's buffer, not a copy
    _proto, _src, _dst, _payload = d[:4]
    assert ip.counters["ip4_delivered"] == 1
    clean(ip)


@pytest.mark.parametrize("pkt, reason", [
    (b"", "rx_truncated"),
    (raw(IP(src=B4s, dst=A4s) / UDP())[:19], "ip4_truncated"),
    (b"\x44" + raw(IP(src=B4s, dst=A4s) / UDP())[1:], "ip4_bad_header"),
    (raw(IP(src=B4s, dst=A4s, len=100) / UDP()), "ip4_bad_header"),
    (raw(IP(src=B4s, dst=A4s, chksum=1) / UDP()), "ip4_bad_checksum"),
    (raw(IP(src=B4s, dst=C4s) / UDP()), "ip4_not_for_us"),
    (raw(IP(src="224.0.0.5", dst=A4s) / UDP()), "ip4_bad_src"),
    (raw(IP(src="255.255.255.255", dst=A4s) / UDP()), "ip4_bad_src"),
    (b"\x55" + bytes(30), "rx_bad_version"),
    (raw(IP(src=B4s, dst="255.255.255.255") / UDP()), "ip4_not_for_us"),
    (raw(IP(src=B4s, dst=A4s, flags="MF", id=3) / b"12345678"), "ip4_fragment"),
    (raw(IP(src=B4s, dst=A4s, frag=100, id=3) / bytes(64)), "ip4_fragment"),
    (raw(IP(src=B4s, dst=A4s) / ICMP(type=8)), "icmp4_ignored"),
    (raw(IP(src=B4s, dst=A4s) / ICMP(type=0)), "icmp4_ignored"),
    (raw(IP(src=B4s, dst=A4s) / ICMP(type=8, chksum=7)), "icmp4_bad"),
    (raw(IPv6(src=B6s, dst=A6s) / UDP())[:39], "ip6_truncated"),
    (raw(IPv6(src=B6s, dst=A6s, plen=50) / UDP()), "ip6_bad_header"),
    (raw(IPv6(src=B6s, dst=P6s) / UDP()), "ip6_not_for_us"),
    (raw(IPv6(src="ff02::1", dst=A6s) / UDP()), "ip6_bad_src"),
    (raw(IPv6(src=B6s, dst=A6s) / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / UDP()), "ip6_bad_ext"),
    (raw(IPv6(src=B6s, dst=A6s, nh=59)), "ip6_no_next"),
    (raw(IPv6(src=B6s, dst=A6s) / ICMPv6EchoRequest(cksum=5)), "icmp6_bad"),
    (raw(IPv6(src=B6s, dst=A6s) / ICMPv6EchoRequest()), "icmp6_ignored"),
    (raw(IPv6(src=B6s, dst="ff02::1") / UDP()), "ip6_not_for_us"),
    (raw(IPv6(src=B6s, dst=A6s) / IPv6ExtHdrFragment(id=1, m=1) / bytes(16)), "ip6_fragment"),
])
def test_malformed_counted_not_raised(pkt, reason):
    ip = layer()
    assert ip.input(pkt, 0.0) == []
    assert ip.counters[reason] == 1
    clean(ip)


# --------------------------------------------------------------------------- hostile input


@FUZZ
@given(data=st.binary(max_size=200), version=st.sampled_from([None, 4, 6]))
def test_random_bytes_never_raise(data, version):
    ip = layer()
    if version and data:
        data = bytes([(version << 4) | (data[0] & 0xF)]) + data[1:]
    for kind in (bytes, bytearray, memoryview):
        ev = ip.input(kind(data), 0.0)
        assert isinstance(ev, list)
    clean(ip)


def _corpus() -> list[bytes]:
    ours = IpLayer([A4]).output(17, A4, B4, udp_segment(5000, 53, b"q" * 20, A4, B4), 0)[0]
    big = IP(src=B4s, dst=A4s, id=77) / UDP(sport=1, dport=2) / bytes(300)
    v6big = IPv6(src=B6s, dst=A6s) / IPv6ExtHdrFragment(id=9) / UDP() / bytes(300)
    return [
        raw(IP(src=B4s, dst=A4s) / UDP(sport=1, dport=2) / b"data"),
        *[raw(f) for f in fragment(big, 96)],
        raw(IP(src=B4s, dst=A4s) / ICMP(type=8, id=1, seq=2) / b"ping"),
        raw(IP(src=R4s, dst=A4s) / ICMP(type=3, code=4, nexthopmtu=600) / ours[:28]),
        raw(IP(src=R4s, dst=A4s) / ICMP(type=11) / ours[:28]),
        raw(IPv6(src=B6s, dst=A6s) / UDP() / b"v6"),
        *[raw(f) for f in fragment6(v6big, 120)],
        raw(IPv6(src=B6s, dst=A6s) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP()),
        raw(IPv6(src=B6s, dst=solicited_node_s(A6), hlim=255) / ICMPv6ND_NS(tgt=A6s)
            / ICMPv6NDOptSrcLLAddr(lladdr=mac_s(MAC_B))),
        raw(IPv6(src=C6s, dst=A6s, hlim=255) / ICMPv6ND_NA(tgt=C6s, S=1)
            / ICMPv6NDOptDstLLAddr(lladdr=mac_s(MAC_C))),
        raw(IPv6(src=R6s, dst=A6s) / ICMPv6PacketTooBig(mtu=1300)
            / raw(IPv6(src=A6s, dst=B6s) / UDP() / bytes(1400))),
        raw(IPv6(src=B6s, dst=A6s) / ICMPv6EchoRequest(id=1, seq=1, data=b"x")),
    ]


def solicited_node_s(a: bytes) -> str:
    import socket
    return socket.inet_ntop(socket.AF_INET6, solicited_node(a))


CORPUS = _corpus()


def _fix_v4_checksum(b: bytearray) -> None:
    if len(b) >= 20 and b[0] >> 4 == 4:
        ihl = (b[0] & 0xF) * 4
        if 20 <= ihl <= len(b):
            b[10:12] = b"\0\0"
            s = int.from_bytes(b[:ihl], "big") % 0xFFFF
            b[10:12] = (0xFFFF - (s or 0xFFFF)).to_bytes(2, "big") if s else b"\0\0"


@FUZZ
@given(which=st.integers(0, len(CORPUS) - 1),
       flips=st.lists(st.tuples(st.integers(0, 1500), st.integers(0, 255)), max_size=4),
       cut=st.none() | st.integers(0, 1500), tail=st.binary(max_size=8), fix=st.booleans())
def test_mutated_packets_never_raise(which, flips, cut, tail, fix):
    b = bytearray(CORPUS[which])
    for pos, val in flips:
        if pos < len(b):
            b[pos] = val
    if cut is not None:
        del b[cut:]
    b += tail
    if fix:
        _fix_v4_checksum(b)
    ip = layer()
    ip.input(bytes(b), 0.0)
    ip.input(CORPUS[which], 0.0)
    clean(ip)


@FAST
@given(picks=st.lists(st.integers(-2, len(CORPUS) - 1), max_size=12), junk=st.binary(max_size=40))
def test_a_batch_is_its_packets_in_turn(picks, junk):
    """`input_all` (the engine's ring pull) gives the events and counters that `input` gives for
    each packet in turn: one in the middle that is empty (-1) or junk (-2) is counted and
    dropped alone, and the packets behind it are still taken."""
    pkts = [b"" if i == -1 else junk if i == -2 else CORPUS[i] for i in picks]
    one, batch = layer(), layer()
    expected = feed(one, pkts)
    got = batch.input_all(pkts, 0.0)
    assert [tuple(map(_plain, e)) for e in got] == [tuple(map(_plain, e)) for e in expected]
    assert batch.counters == one.counters


def _plain(v):
    return bytes(v) if isinstance(v, memoryview) else v


# --------------------------------------------------------------------------- IPv4 output


@FAST
@given(size=st.integers(0, 4000), mtu=st.integers(68, 1500))
def test_fragmentation_output_defragmented_by_scapy(size, mtu):
    ip = IpLayer([A4], mtu, pmtu_floor=68, ident=1000)
    payload = random.Random(size).randbytes(size)
    udp = udp_segment(1000, 2000, payload, A4, B4)
    pkts = ip.output(17, None, B4, udp, 0.0)
    assert all(len(p) <= mtu for p in pkts)
    if 28 + size <= mtu:
        [p] = pkts
        sp = IP(p)
        assert sp.flags.DF and sp[UDP].load == payload if payload else True
        assert rechecked(sp, (IP, "chksum"), (UDP, "chksum")) == p
        return
    with pytest.raises(OSError) as ei:
        ip.output(17, A4, B4, udp, 0.0, df=True)
    assert ei.value.errno == errno.EMSGSIZE
    frags = [IP(p) for p in pkts]
    assert all(not f.flags.DF for f in frags) and len({f.id for f in frags}) == 1
    for f in frags:
        assert rechecked(f, (IP, "chksum")) == raw(f)
    [whole] = defragment(frags)
    whole = IP(raw(whole))
    assert raw(whole[UDP]) == udp
    assert whole[UDP].chksum == UDP(rechecked(IP(src=A4s, dst=B4s) / UDP(udp), (UDP, "chksum"))[20:]).chksum


def test_output_errors():
    ip = IpLayer([A4])
    with pytest.raises(OSError) as ei:
        ip.output(17, C4, B4, b"x", 0)
    assert ei.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(OSError):
        ip.output(17, None, G6, b"x", 0)
    with pytest.raises(OSError):
        ip.output(17, None, B4, bytes(70000), 0)
    with pytest.raises(ValueError):
        IpLayer([A6], mtu=1000)
    assert IP(ip.output(17, None, B4, b"x", 0, df=False)[0]).flags == 0


@FAST
@given(st.sampled_from([B4, B6]), st.integers(0, 66000), st.sampled_from([None, False, True]),
       st.booleans(), st.integers(0, 255), st.integers(0, 3))
def test_head_is_outputs_header(dst, plen, df, segmented, tos, locked_mtu):
    """`head` gives the header `output` puts in front of the payload, or None exactly when
    `output` fragments (and the same error when it refuses): the engine's gather write."""
    a, b = layer(ident=77), layer(ident=77)
    if locked_mtu:  # a PMTU at the floor clears DF
        for ip in (a, b):
            ip.pmtus.lower(dst, 500, 0.0, len(dst) == 16)
    payload = bytes(plen)
    try:
        want = a.output(6, None, dst, payload, 0.0, tos=tos, df=df, segmented=segmented)
    except (OSError, ValueError) as e:
        with pytest.raises(type(e)):
            h = b.head(6, None, dst, plen, 0.0, tos=tos, df=df, segmented=segmented)
            if h is None:  # fragmented where output refused: only past IPv4's 64 KB
                b.output(6, None, dst, payload, 0.0, tos=tos, df=df, segmented=segmented)
        return
    h = b.head(6, None, dst, plen, 0.0, tos=tos, df=df, segmented=segmented)
    if len(want) > 1:
        assert h is None
    else:
        assert h is not None and h + payload == want[0]
        assert a.counters == b.counters


# --------------------------------------------------------------------------- ICMPv4


def _ours_udp(ip: IpLayer, size=20, sport=5555, dport=53) -> bytes:
    [p] = ip.output(17, A4, B4, udp_segment(sport, dport, bytes(size), A4, B4), 0.0)
    return p


def test_port_unreachable_maps_to_the_socket():
    ip = layer()
    ours = _ours_udp(ip)
    err = IP(src=R4s, dst=A4s) / ICMP(type=3, code=3) / ours[:28]
    [e] = errors(ip.input(raw(err), 1.0))
    assert (e.proto, e.local, e.local_port, e.remote, e.remote_port) == (17, A4, 5555, B4, 53)
    assert (e.errno, e.icmp_type, e.icmp_code, e.mtu, e.reporter) == (errno.ECONNREFUSED, 3, 3, 0, R4)
    assert bytes(e.quote) == ours[20:28]
    # time exceeded, host unreachable, parameter problem
    for typ, code, en in [(11, 0, errno.EHOSTUNREACH), (3, 1, errno.EHOSTUNREACH), (12, 0, errno.EPROTO)]:
        [e] = errors(ip.input(raw(IP(src=R4s, dst=A4s) / ICMP(type=typ, code=code) / ours[:28]), 1.0))
        assert (e.errno, e.local_port, e.remote_port) == (en, 5555, 53)
    # a quote of somebody else's packet is not believed
    theirs = raw(IP(src=C4s, dst=B4s) / UDP(sport=1, dport=2))
    assert ip.input(raw(IP(src=R4s, dst=A4s) / ICMP(type=3, code=3) / theirs[:28]), 1.0) == []
    assert ip.counters["icmp4_bogus_quote"] == 1
    # a quote too short for the header
    assert ip.input(raw(IP(src=R4s, dst=A4s) / ICMP(type=3, code=3) / ours[:12]), 1.0) == []
    assert ip.counters["icmp4_bad_quote"] == 1
    # a quote without the ports: the error still names the addresses
    [e] = errors(ip.input(raw(IP(src=R4s, dst=A4s) / ICMP(type=3, code=1) / ours[:22]), 1.0))
    assert (e.local_port, e.remote_port, e.remote) == (None, None, B4)
    clean(ip)


def test_frag_needed_lowers_pmtu():
    ip = layer()
    big = _ours_udp(ip, 1400)
    assert len(big) == 1428 and IP(big).flags.DF
    err = IP(src=R4s, dst=A4s) / ICMP(type=3, code=4, nexthopmtu=1000) / big[:28]
    [e] = errors(ip.input(raw(err), 1.0))
    assert (e.errno, e.mtu, e.local_port, e.remote) == (errno.EMSGSIZE, 1000, 5555, B4)
    assert ip.pmtus.get(B4, 1.0)[0] == 1500  # not before its transport took it (`lower_pmtu`)
    assert ip.lower_pmtu(e, 1.0) == 1000
    assert ip.pmtus.get(B4, 1.0)[0] == 1000 and ip.pmtus.get(C4, 1.0)[0] == 1500
    pkts = ip.output(17, A4, B4, udp_segment(1, 2, bytes(1400), A4, B4), 2.0)
    assert len(pkts) == 2 and all(len(p) <= 1000 for p in pkts)
    with pytest.raises(OSError):
        ip.output(17, A4, B4, bytes(1000), 2.0, df=True)
    # an increase is ignored
    [e] = errors(ip.input(raw(IP(src=R4s, dst=A4s) / ICMP(type=3, code=4, nexthopmtu=1200) / big[:28]), 3.0))
    assert ip.lower_pmtu(e, 3.0) == 1000
    assert ip.pmtus.get(B4, 3.0)[0] == 1000 and ip.counters["pmtu_ignored"] == 1
    # a report not below the quoted length is bogus
    assert ip.input(raw(IP(src=R4s, dst=A4s) / ICMP(type=3, code=4, nexthopmtu=1428) / big[:28]), 3.0) == []
    assert ip.counters["pmtu_bogus"] == 1
    # below the floor (552, Linux's min_pmtu): set to the floor and locked, so DF is cleared
    [e] = errors(ip.input(raw(IP(src=R4s, dst=A4s) / ICMP(type=3, code=4, nexthopmtu=300) / big[:28]), 4.0))
    assert e.mtu == 300 and ip.lower_pmtu(e, 4.0) == 552 and ip.pmtus.get(B4, 4.0) == (552, True)
    [p] = ip.output(17, A4, B4, bytes(500), 4.0)
    assert not IP(p).flags.DF
    assert all(len(x) <= 552 for x in ip.output(17, A4, B4, bytes(1400), 4.0, df=True))
    # aging back to the link MTU
    assert ip.pmtus.get(B4, 4.0 + 600.0) == (1500, False)


def test_frag_needed_plateau_and_rfc1191_minimum():
    ip = IpLayer([A4], pmtu_floor=68)
    big = _ours_udp(ip, 1400)
    [e] = errors(ip.input(raw(IP(src=R4s, dst=A4s) / ICMP(type=3, code=4, nexthopmtu=0) / big[:28]), 0))
    assert e.mtu == 1006 and ip.lower_pmtu(e, 0) == 1006  # RFC 1191 plateau below 1428
    [e] = errors(ip.input(raw(IP(src=R4s, dst=A4s) / ICMP(type=3, code=4, nexthopmtu=20) / big[:28]), 0))
    assert ip.lower_pmtu(e, 0) == 68
    assert ip.pmtus.get(B4, 0)[0] == 68
    pkts = ip.output(17, A4, B4, bytes(200), 0)
    assert all(len(p) <= 68 for p in pkts) and len(pkts) == 5


# --------------------------------------------------------------------------- IPv6


def test_udp6_delivered_through_extension_headers():
    ip = layer()
    pkt = raw(IPv6(src=B6s, dst=A6s, hlim=7) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
              / UDP(sport=1, dport=2) / b"six")
    [d] = dgrams(ip.input(pkt, 0.0))
    assert (d.proto, d.src, d.dst, d.ttl) == (17, B6, A6, 7)
    assert bytes(d.payload) == pkt[56:]
    [d] = dgrams(ip.input(raw(IPv6(src=P6s, dst=G6s) / UDP() / b"g"), 0.0))
    assert d.dst == G6


def test_packet_too_big_lowers_pmtu6():
    ip = layer()
    [ours] = ip.output(17, G6, P6, raw(UDP(sport=7000, dport=443) / bytes(1400)), 0.0)
    assert len(ours) == 1448
    ptb = IPv6(src="2001:db8:5::1", dst=G6s) / ICMPv6PacketTooBig(mtu=1400) / ours[:1232]
    [e] = errors(ip.input(raw(ptb), 1.0))
    assert (e.proto, e.local, e.local_port, e.remote, e.remote_port) == (17, G6, 7000, P6, 443)
    assert (e.errno, e.mtu) == (errno.EMSGSIZE, 1400)
    assert ip.lower_pmtu(e, 1.0) == 1400 and ip.pmtus.get(P6, 1.0)[0] == 1400
    with pytest.raises(OSError) as ei:
        ip.output(17, G6, P6, bytes(1400), 1.0)
    assert ei.value.errno == errno.EMSGSIZE
    ptb = IPv6(src="2001:db8:5::1", dst=G6s) / ICMPv6PacketTooBig(mtu=600) / ours[:1232]
    [e] = errors(ip.input(raw(ptb), 1.0))
    assert ip.lower_pmtu(e, 1.0) == 1280 and ip.pmtus.get(P6, 1.0)[0] == 1280  # never below the IPv6 minimum
    ptb = IPv6(src="2001:db8:5::1", dst=G6s) / ICMPv6PacketTooBig(mtu=2000) / ours[:1232]
    assert ip.input(raw(ptb), 1.0) == [] and ip.counters["pmtu_bogus"] == 1


def test_dest_unreach6_maps_to_socket():
    ip = layer()
    [ours] = ip.output(17, G6, P6, raw(UDP(sport=7001, dport=53) / b"q"), 0.0)
    err = IPv6(src="2001:db8:5::1", dst=G6s) / ICMPv6DestUnreach(code=4) / ours
    [e] = errors(ip.input(raw(err), 1.0))
    assert (e.local_port, e.remote_port, e.errno) == (7001, 53, errno.ECONNREFUSED)


def test_atomic_fragment6_delivered_whole():
    """RFC 6946: a Fragment header at offset 0 with no more to come; the switch passes it on."""
    ip = layer()
    pkt = raw(IPv6(src=B6s, dst=A6s) / IPv6ExtHdrFragment(nh=253, id=3) / b"atomic")
    [d] = dgrams(ip.input(pkt, 0))
    assert bytes(d.payload) == b"atomic" and d.proto == 253 and ip.counters["ip6_atomic_frag"] == 1


# --- `IpLayer.head`'s cached IPv4 header (wire.ipv4.ipv4_template) ---------------------------

_addr4 = st.binary(min_size=4, max_size=4)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_addr4, min_size=1, max_size=3),
    st.integers(0, 0xFFFF),
    st.lists(st.tuples(
        st.integers(0, 5), st.integers(0, 255), st.integers(0, 65515),
        st.one_of(st.none(), st.integers(0, 255)), st.integers(0, 255),
        st.sampled_from([None, False])), min_size=1, max_size=40),
)
def test_head_cached_ipv4_header_equals_build(srcs, ident, packets):
    """Every header `head` gives, from the per-destination template (the constant words'
    sum plus length and ident), is the one build_ipv4_header makes, byte for byte."""
    ip = IpLayer(srcs, mtu=0xFFFF, ident=ident)
    dsts = [bytes([10, 9, 8, i]) for i in range(6)]
    for k, proto, plen, ttl, tos, df in packets:
        src = srcs[k % len(srcs)]
        h = ip.head(proto, src, dsts[k], plen, 1.0, ttl=ttl, tos=tos, df=df, segmented=True)
        want = build_ipv4_header(src, dsts[k], proto, plen, ident, ip.ttl if ttl is None else ttl, df is None, tos)
        assert h == want
        ident = (ident + 1) & 0xFFFF
