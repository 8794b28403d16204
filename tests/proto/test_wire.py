"""usnet.proto.wire: packet formats and checksums (docs/architecture.md, "The protocol stack").

Three kinds of evidence:

* the checksum against a word-by-word RFC 1071 reference (hypothesis, with
  odd lengths, all-zero and all-0xFF buffers);
* cross-checks with scapy both ways: what we build, scapy decodes with the
  same fields, and scapy recomputes the very same checksums (rebuild with
  the checksum fields deleted, compare bytes); what scapy builds, we parse;
* hostile input: truncated, corrupted and random buffers, offsets and
  lengths into every parser raise WireError and nothing else.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

scapy_all = pytest.importorskip("scapy.all")
from scapy.all import ARP, ICMP, IP, UDP, Ether, IPOption_NOP, IPOption_RR, raw  # noqa: E402
from scapy.layers.inet import IPerror, UDPerror  # noqa: E402

import usnet.proto.wire as W  # noqa: E402
from usnet.proto.wire import arp as A  # noqa: E402
from usnet.proto.wire import checksum as C  # noqa: E402
from usnet.proto.wire import ethernet as E  # noqa: E402
from usnet.proto.wire import icmp as I  # noqa: E402
from usnet.proto.wire import ipv4 as V4  # noqa: E402
from usnet.proto.wire import udp as U  # noqa: E402
from usnet.proto.wire.errors import WireError  # noqa: E402
from usnet.proto.wire.tcp import pseudo_sum  # noqa: E402

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SCAPY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
IP_A = bytes([10, 0, 0, 1])
IP_B = bytes([10, 0, 0, 2])

BUFTYPES = [bytes, bytearray, memoryview]


def as_type(kind, data: bytes):
    return memoryview(bytearray(data)) if kind is memoryview else kind(data)


ip4 = st.binary(min_size=4, max_size=4)
mac = st.binary(min_size=6, max_size=6)
port = st.integers(0, 0xFFFF)
u16 = st.integers(0, 0xFFFF)
payloads = st.binary(max_size=200)


def udp_packet(src: bytes, dst: bytes, sport: int, dport: int, payload, ident: int = 0) -> bytes:
    """A UDP/IPv4 packet from the one production builder (`udp_ipv4_headers`) and its payload."""
    return U.udp_ipv4_headers(src, dst, sport, dport, payload, ident) + bytes(payload)


# --------------------------------------------------------------------------- checksum


def ref_ones_sum(data: bytes) -> int:
    """RFC 1071, word by word with end-around carry."""
    if len(data) % 2:
        data += b"\x00"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ref_checksum(data: bytes) -> int:
    return ~ref_ones_sum(data) & 0xFFFF


def ones_sum(data) -> int:
    return C.fold(C.acc(data))


def checksum(data) -> int:
    return C.finish(C.acc(data))


@FAST
@given(st.binary(max_size=300))
def test_ones_sum_matches_reference(data):
    for kind in (bytes, memoryview, bytearray):
        assert ones_sum(kind(data)) == ref_ones_sum(data)
        assert checksum(kind(data)) == ref_checksum(data)
    even = data[: len(data) & ~1]  # the field at an even offset, as in every header
    assert C.verifies(C.acc(even + checksum(even).to_bytes(2, "big")))


@settings(max_examples=15, deadline=None)
@given(st.binary(min_size=C.FOLD_MIN - 3, max_size=5000))
def test_ones_sum_large_buffers_fold_path(data):
    assert ones_sum(data) == ref_ones_sum(data)
    assert checksum(data) == ref_checksum(data)


@pytest.mark.parametrize("data", [b"\xff" * 65535, b"\xff" * 65536, bytes(65535),
                                  bytes(range(256)) * 256 + b"\x01"])
def test_ones_sum_jumbo(data):
    assert ones_sum(data) == ref_ones_sum(data)


@FAST
@given(st.binary(max_size=4000).map(lambda b: int.from_bytes(b, "big")))
def test_mod_ffff(n):
    assert C.mod_ffff(n) == n % 0xFFFF


def test_mod_ffff_big_and_edge_values():
    import random

    rng = random.Random(1071)
    for bits in (0, 1, 16, 2047, 2048, 2049, 4096, 12000, 100_000, 524_288):
        for n in (rng.getrandbits(bits), (1 << bits) - 1, 1 << bits):
            assert C.mod_ffff(n) == n % 0xFFFF, bits
    assert C.mod_ffff((1 << 16 * 700) - 1) == 0  # a multiple of 0xFFFF


@pytest.mark.parametrize("n", range(0, 12))
@pytest.mark.parametrize("fill", [0x00, 0xFF, 0x01, 0x80])
def test_ones_sum_uniform_buffers(n, fill):
    data = bytes([fill]) * n
    assert ones_sum(data) == ref_ones_sum(data)
    assert checksum(data) == ref_checksum(data)


def test_ones_sum_zero_versus_ffff():
    assert ones_sum(b"") == 0
    assert ones_sum(b"\x00" * 7) == 0
    assert ones_sum(b"\xff\xff") == 0xFFFF  # non-zero input: never 0
    assert ones_sum(b"\x00\x01\xff\xfe") == 0xFFFF
    assert ones_sum(b"\xff") == 0xFF00
    assert checksum(b"\x00\x00") == 0xFFFF
    assert checksum(b"\xff\xff") == 0
    assert not C.verifies(0)  # all zero sums to 0, not 0xFFFF
    assert C.verifies(C.acc(b"\xff\xff"))


def test_rfc1071_example():
    assert ones_sum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2


@FAST
@given(ip4, ip4, u16)
def test_tcp_pseudo_header_sum(src, dst, length):
    ph = src + dst + bytes([0, 6]) + length.to_bytes(2, "big")
    assert C.fold(pseudo_sum(src, dst) + length) == ref_ones_sum(ph)


def test_wire_error_is_value_error():
    assert issubclass(WireError, ValueError)


# --------------------------------------------------------------------------- ethernet


@pytest.mark.parametrize("kind", BUFTYPES)
def test_eth_parse_scapy(kind):
    frame = raw(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01", type=0x0806) / b"xyz")
    assert E.parse_eth(as_type(kind, frame)) == (E.BROADCAST, MAC_A, E.ETHERTYPE_ARP)
    assert E.parse_eth(as_type(kind, b"\x00\x00" + frame), 2) == (E.BROADCAST, MAC_A, 0x0806)


@FAST
@given(mac, mac, st.integers(0x0600, 0xFFFF))  # below 0x600 scapy decodes an 802.3 length
def test_eth_build_decoded_by_scapy(dst, src, et):
    hdr = E.build_eth(dst, src, et)
    assert len(hdr) == E.ETH_HLEN
    p = Ether(hdr)
    assert (p.dst, p.src, p.type) == (E.mac_str(dst), E.mac_str(src), et)
    buf = bytearray(20)
    assert E.write_eth(buf, 3, dst, src, et) == 14
    assert bytes(buf[3:17]) == hdr and buf[:3] == b"\0\0\0" and buf[17:] == b"\0\0\0"
    assert E.parse_eth(hdr) == (dst, src, et)


def test_eth_errors():
    for n in range(14):
        with pytest.raises(WireError, match="truncated"):
            E.parse_eth(b"\x00" * n)
    with pytest.raises(WireError):
        E.parse_eth(b"\x00" * 20, 7)
    with pytest.raises(WireError):
        E.parse_eth(b"\x00" * 20, -1)
    with pytest.raises(WireError):
        E.build_eth(MAC_A[:5], MAC_B, 0x800)
    with pytest.raises(WireError):
        E.build_eth(MAC_A, MAC_B, 0x10000)
    with pytest.raises(WireError):
        E.write_eth(bytearray(13), 0, MAC_A, MAC_B, 0x800)


def test_mac_helpers():
    assert E.mac_str(MAC_A) == "02:00:00:00:00:01"
    assert E.mac_bytes("02:00:00:00:00:01") == MAC_A
    assert E.mac_bytes("02-00-00-00-00-0A") == bytes.fromhex("02000000000a")
    for bad in ["", "02:00:00:00:00", "02:00:00:00:00:01:02", "0g:00:00:00:00:01",
                "2:00:00:00:00:001", "02:00:00:00:00:0١"]:
        with pytest.raises(WireError):
            E.mac_bytes(bad)
    with pytest.raises(WireError):
        E.mac_str(b"\x01")
    assert E.is_multicast(E.BROADCAST) and not E.is_multicast(MAC_A)


# --------------------------------------------------------------------------- arp


@pytest.mark.parametrize("kind", BUFTYPES)
@pytest.mark.parametrize("op", [1, 2])
def test_arp_parse_scapy(kind, op):
    frame = raw(Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=op, hwsrc="02:00:00:00:00:01", psrc="10.0.0.1", hwdst="00:00:00:00:00:00",
        pdst="10.0.0.2") / (b"\x00" * 18))  # Ethernet minimum-size padding
    _dst, _src, et = E.parse_eth(frame)
    assert et == E.ETHERTYPE_ARP
    buf = as_type(kind, frame)
    assert A.parse_arp(buf, E.ETH_HLEN) == (op, MAC_A, IP_A, b"\x00" * 6, IP_B)


@FAST
@given(st.integers(0, 0xFFFF), mac, ip4, mac, ip4)
def test_arp_build_decoded_by_scapy(op, sha, spa, tha, tpa):
    pkt = A.build_arp(op, sha, spa, tha, tpa)
    assert len(pkt) == A.ARP_LEN == 28
    p = ARP(pkt)
    assert (p.hwtype, p.ptype, p.hwlen, p.plen, p.op) == (1, 0x0800, 6, 4, op)
    assert (p.hwsrc, p.psrc) == (E.mac_str(sha), V4.ip_str(spa))
    assert (p.hwdst, p.pdst) == (E.mac_str(tha), V4.ip_str(tpa))
    assert A.parse_arp(pkt) == (op, sha, spa, tha, tpa)
    buf = bytearray(30)
    assert A.write_arp(buf, 2, op, sha, spa, tha, tpa) == 28
    assert bytes(buf[2:]) == pkt


@pytest.mark.parametrize("offset,value,msg", [
    (0, b"\x00\x06", "hardware type"),
    (2, b"\x86\xdd", "protocol type"),
    (4, b"\x08", "address lengths"),
    (5, b"\x10", "address lengths"),
])
def test_arp_rejects_other_formats(offset, value, msg):
    pkt = bytearray(A.build_arp(1, MAC_A, IP_A, MAC_B, IP_B))
    pkt[offset : offset + len(value)] = value
    with pytest.raises(WireError, match=msg):
        A.parse_arp(pkt)


def test_arp_errors():
    pkt = A.build_arp(A.ARP_REQUEST, MAC_A, IP_A, E.ETH_ZERO, IP_B)
    for n in range(28):
        with pytest.raises(WireError, match="truncated"):
            A.parse_arp(pkt[:n])
    with pytest.raises(WireError):
        A.build_arp(1, MAC_A, IP_A[:3], MAC_B, IP_B)
    with pytest.raises(WireError):
        A.build_arp(1, MAC_A + b"\x00", IP_A, MAC_B, IP_B)
    with pytest.raises(WireError):
        A.build_arp(-1, MAC_A, IP_A, MAC_B, IP_B)


# --------------------------------------------------------------------------- ipv4


@SCAPY
@given(ip4, ip4, st.integers(0, 255), st.integers(0, 400), u16, st.integers(0, 255),
       st.booleans(), st.integers(0, 255))
def test_ipv4_build_matches_scapy(src, dst, proto, plen, ident, ttl, df, tos):
    hdr = V4.build_ipv4_header(src, dst, proto, plen, ident=ident, ttl=ttl, df=df, tos=tos)
    pkt = hdr + bytes(plen)
    p = IP(hdr)  # header alone: scapy rewrites payloads it recognises (IGMP adds an option)
    assert (p.version, p.ihl, p.len, p.id, p.ttl, p.proto, p.tos) == (
        4, 5, 20 + plen, ident, ttl, proto, tos)
    assert (p.src, p.dst, bool(p.flags.DF), p.frag) == (V4.ip_str(src), V4.ip_str(dst), df, 0)
    del p.chksum
    assert raw(p) == hdr  # scapy computes the same checksum
    assert V4.parse_ipv4(pkt) == (20, 20 + plen, ident, 0x4000 if df else 0, ttl, proto, src, dst)
    buf = bytearray(25)
    assert V4.write_ipv4_header(buf, 5, src, dst, proto, plen, ident=ident, ttl=ttl, df=df,
                                tos=tos) == 20
    assert bytes(buf[5:]) == hdr


@pytest.mark.parametrize("kind", BUFTYPES)
def test_ipv4_parse_scapy_with_options_and_padding(kind):
    p = IP(src="192.168.1.7", dst="8.8.8.8", id=0xBEEF, ttl=3, proto=17, flags="MF", frag=100,
           options=[IPOption_NOP(), IPOption_RR(routers=["1.2.3.4"])]) / (b"z" * 11)
    pkt = raw(p)
    ihl = IP(pkt).ihl * 4
    assert ihl > 20
    buf = as_type(kind, b"\xaa" * 3 + pkt + b"\x00" * 6)  # leading junk, trailing padding
    r = V4.parse_ipv4(buf, 3, len(pkt) + 6)
    assert r == (ihl, len(pkt), 0xBEEF, 0x2000 | 100, 3, 17, bytes([192, 168, 1, 7]),
                 bytes([8, 8, 8, 8]))
    ff = r[3]
    assert V4.frag_offset(ff) == 800
    assert V4.more_fragments(ff) and not V4.dont_fragment(ff) and V4.is_fragment(ff)
    assert V4.parse_ipv4(buf, 3) == r  # length defaults to the rest of the buffer


def test_ipv4_fragment_fields_against_scapy():
    hdr = V4.build_ipv4_header(IP_A, IP_B, 17, 100, ident=7, df=False, mf=True, frag_off=1480)
    p = IP(hdr + bytes(100))
    assert (bool(p.flags.MF), bool(p.flags.DF), p.frag) == (True, False, 185)
    del p.chksum
    assert raw(p)[:20] == hdr
    assert V4.make_flags_frag(True, False, 0) == 0x4000
    assert V4.make_flags_frag(False, True, 8) == 0x2001
    assert not V4.is_fragment(0x4000)
    assert V4.is_fragment(0x0001)
    for bad in (4, -8, 65536):
        with pytest.raises(WireError):
            V4.make_flags_frag(False, False, bad)


def _good_ipv4() -> bytearray:
    return bytearray(V4.build_ipv4_header(IP_A, IP_B, 17, 8) + bytes(8))


def test_ipv4_specific_errors():
    pkt = _good_ipv4()
    for n in range(20):
        with pytest.raises(WireError, match="truncated"):
            V4.parse_ipv4(pkt[:n])
    with pytest.raises(WireError, match="past the buffer"):
        V4.parse_ipv4(pkt, 0, len(pkt) + 1)
    with pytest.raises(WireError, match="truncated"):
        V4.parse_ipv4(pkt, -1)

    bad = bytearray(pkt)
    bad[0] = 0x65
    with pytest.raises(WireError, match="version 6"):
        V4.parse_ipv4(bad)
    bad = bytearray(pkt)
    bad[0] = 0x44
    with pytest.raises(WireError, match="header length 16"):
        V4.parse_ipv4(bad)
    bad = bytearray(pkt)
    bad[2:4] = (29).to_bytes(2, "big")
    with pytest.raises(WireError, match="exceeds"):
        V4.parse_ipv4(bad)
    with pytest.raises(WireError, match="exceeds"):
        V4.parse_ipv4(pkt, 0, 27)  # the length argument, not the buffer, bounds the packet
    bad = bytearray(pkt)
    bad[2:4] = (19).to_bytes(2, "big")
    with pytest.raises(WireError, match="< header length"):
        V4.parse_ipv4(bad, verify_checksum=False)
    bad = bytearray(pkt)
    bad[0] = 0x46  # 24-byte header claimed; total length 28 still fits
    with pytest.raises(WireError, match="checksum"):
        V4.parse_ipv4(bad)
    bad = bytearray(pkt)
    bad[8] ^= 1  # ttl
    with pytest.raises(WireError, match="checksum"):
        V4.parse_ipv4(bad)
    assert V4.parse_ipv4(bad, verify_checksum=False)[4] == 65


@FAST
@given(st.integers(0, 19), st.integers(0, 7))
def test_ipv4_any_single_bit_flip_in_header_is_caught(byte, bit):
    pkt = _good_ipv4()
    pkt[byte] ^= 1 << bit
    with pytest.raises(WireError):
        V4.parse_ipv4(pkt)


def test_ipv4_build_errors():
    with pytest.raises(WireError):
        V4.build_ipv4_header(IP_A[:3], IP_B, 17, 0)
    with pytest.raises(WireError):
        V4.build_ipv4_header(IP_A, IP_B, 17, 65516)
    with pytest.raises(WireError):
        V4.build_ipv4_header(IP_A, IP_B, 17, -1)
    with pytest.raises(WireError):
        V4.build_ipv4_header(IP_A, IP_B, 17, 0, ttl=256)
    with pytest.raises(WireError):
        V4.build_ipv4_header(IP_A, IP_B, 17, 0, ident=-1)
    with pytest.raises(WireError):
        V4.write_ipv4_header(bytearray(19), 0, IP_A, IP_B, 17, 0)
    assert len(V4.build_ipv4_header(IP_A, IP_B, 17, 65515)) == 20


def test_ip_helpers():
    assert V4.ip_bytes("10.0.0.1") == IP_A
    assert V4.ip_bytes("255.255.255.255") == b"\xff" * 4
    assert V4.ip_str(bytes([192, 168, 0, 254])) == "192.168.0.254"
    for bad in ["", "1.2.3", "1.2.3.4.5", "1.2.3.256", "01.2.3.4", "1.2.3.-4", "1.2.3. 4",
                "1.2.3.+4", "1.2.3.1_0", "1.2.3.٤", "a.b.c.d", "1..3.4"]:
        with pytest.raises(WireError):
            V4.ip_bytes(bad)
    with pytest.raises(WireError):
        V4.ip_str(b"\x01\x02")


@FAST
@given(ip4)
def test_ip_roundtrip(a):
    assert V4.ip_bytes(V4.ip_str(a)) == a


# --------------------------------------------------------------------------- icmp


@SCAPY
@given(st.sampled_from([I.ECHO_REQUEST, I.ECHO_REPLY]), u16, u16,
       payloads | st.binary(min_size=1000, max_size=3000))
def test_icmp_echo_matches_scapy(typ, ident, seq, payload):
    msg = I.build_echo(typ, ident, seq, payload)
    p = ICMP(msg)
    assert (p.type, p.code, p.id, p.seq, bytes(p.payload)) == (typ, 0, ident, seq, payload)
    del p.chksum
    assert raw(p) == msg
    assert I.parse_icmp(msg, 0, len(msg)) == (typ, 0, ident, seq, 8)


@pytest.mark.parametrize("kind", BUFTYPES)
@pytest.mark.parametrize("payload", [b"", b"a", b"abcdefg", bytes(range(256)) * 3,
                                     bytes(range(251)) * 37, b"\xff" * 9001])
def test_icmp_parse_scapy(kind, payload):
    pkt = raw(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=0x1234, seq=9) / payload)
    buf = as_type(kind, pkt)
    ihl, total, *_ = V4.parse_ipv4(buf)
    assert I.parse_icmp(buf, ihl, total - ihl) == (8, 0, 0x1234, 9, ihl + 8)


def test_icmp_all_zero_message_and_bad_checksums():
    msg = I.build_echo(I.ECHO_REPLY, 0, 0, b"")
    assert msg == b"\x00\x00\xff\xff\x00\x00\x00\x00"  # sum 0 -> checksum 0xFFFF
    assert I.parse_icmp(msg) == (0, 0, 0, 0, 8)
    with pytest.raises(WireError, match="checksum"):
        I.parse_icmp(bytes(8))  # checksum field 0 over an all-zero message is wrong
    msg = bytearray(I.build_echo(I.ECHO_REQUEST, 1, 2, b"odd"))
    msg[-1] ^= 0x40
    with pytest.raises(WireError, match="checksum"):
        I.parse_icmp(msg)
    assert I.parse_icmp(msg, verify=False)[:4] == (8, 0, 1, 2)
    for n in range(8):
        with pytest.raises(WireError, match="truncated"):
            I.parse_icmp(bytes(msg[:n]))
    with pytest.raises(WireError):
        I.parse_icmp(msg, 0, len(msg) + 1)
    with pytest.raises(WireError):
        I.build_echo(I.ECHO_REQUEST, 0x10000, 0)


def test_icmp_port_unreachable_quotes_original():
    orig = udp_packet(IP_B, IP_A, 5555, 9, b"payload that is longer than 8")
    msg = I.build_dest_unreach(I.PORT_UNREACH, orig)
    assert len(msg) == 8 + 20 + 8
    pkt = V4.build_ipv4_header(IP_A, IP_B, V4.ICMP, len(msg)) + msg
    p = IP(pkt)
    assert (p[ICMP].type, p[ICMP].code) == (3, 3)
    assert p[IPerror].src == "10.0.0.2" and p[UDPerror].sport == 5555 and p[UDPerror].dport == 9
    q = IP(pkt)
    del q.chksum
    del q[ICMP].chksum
    assert raw(q) == pkt
    assert I.parse_icmp(msg)[:2] == (I.DEST_UNREACH, I.PORT_UNREACH)


def test_icmp_frag_needed_carries_mtu():
    orig = udp_packet(IP_B, IP_A, 1, 2, bytes(1500))
    msg = I.build_dest_unreach(I.FRAG_NEEDED, orig, mtu=1400)
    p = ICMP(msg)
    assert (p.type, p.code, p.nexthopmtu) == (3, 4, 1400)
    del p.chksum
    assert raw(p) == msg
    typ, code, unused, mtu, off = I.parse_icmp(msg)
    assert (typ, code, unused, mtu) == (3, 4, 0, 1400)
    assert msg[off:] == orig[:28]
    # a short or odd original is quoted as far as it goes
    assert I.build_dest_unreach(I.PORT_UNREACH, b"\x45\x00\x00")[8:] == b"\x45\x00\x00"
    assert I.build_dest_unreach(I.PORT_UNREACH, b"")[8:] == b""


# --------------------------------------------------------------------------- udp


@SCAPY
@given(ip4, ip4, port, port, payloads | st.binary(min_size=1000, max_size=3000), u16)
def test_udp_ipv4_headers_match_scapy(src, dst, sport, dport, payload, ident):
    pkt = udp_packet(src, dst, sport, dport, payload, ident)
    p = IP(pkt)
    assert (p.src, p.dst, p.id, p.ttl, p.flags, p.proto) == (V4.ip_str(src), V4.ip_str(dst), ident, 64, "DF", 17)
    u = p[UDP]
    assert (u.sport, u.dport, u.len, bytes(u.payload)) == (sport, dport, 8 + len(payload), payload)
    del p.chksum
    del p[UDP].chksum
    assert raw(p) == pkt  # scapy computes the same checksums
    assert pkt[:20] == V4.build_ipv4_header(src, dst, V4.UDP, 8 + len(payload), ident=ident)
    assert U.parse_udp(pkt, 20, len(pkt) - 20, src, dst) == (sport, dport, 28, len(payload))


@pytest.mark.parametrize("kind", BUFTYPES)
@pytest.mark.parametrize("payload", [b"", b"x", b"hello", bytes(1473), bytes(range(251)) * 6,
                                     b"\xff" * 8999])
def test_udp_parse_scapy_frame(kind, payload):
    frame = raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                / IP(src="10.0.0.1", dst="10.0.0.2", id=77) / UDP(sport=40000, dport=53) / payload)
    frame += b"\x00" * max(0, 60 - len(frame))  # Ethernet minimum-size padding
    buf = as_type(kind, frame)
    dst, src, et = W.parse_eth(buf)
    assert (dst, src, et) == (MAC_B, MAC_A, W.ETHERTYPE_IPV4)
    ihl, total, ident, _ff, _ttl, proto, sip, dip = W.parse_ipv4(buf, 14, len(frame) - 14)
    assert (ihl, total, ident, proto, sip, dip) == (20, 28 + len(payload), 77, 17, IP_A, IP_B)
    sport, dport, poff, plen = W.parse_udp(buf, 14 + ihl, total - ihl, sip, dip)
    assert (sport, dport, plen) == (40000, 53, len(payload))
    assert bytes(buf[poff : poff + plen]) == payload


def test_udp_zero_checksum_means_none_and_zero_result_sent_as_ffff():
    seg = bytearray(raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"abc")[20:])
    seg[6:8] = b"\x00\x00"
    assert U.parse_udp(seg, 0, len(seg), IP_A, IP_B) == (1, 2, 8, 3)
    # Choose a payload word that makes the computed sum 0xFFFF, i.e. the checksum 0.
    c = udp_packet(IP_A, IP_B, 1000, 2000, b"\x00\x00")[26:28]
    pkt = udp_packet(IP_A, IP_B, 1000, 2000, c)
    assert pkt[26:28] == b"\xff\xff"
    assert U.parse_udp(pkt, 20, len(pkt) - 20, IP_A, IP_B)[3] == 2
    p = IP(pkt)
    assert p[UDP].chksum == 0xFFFF
    del p[UDP].chksum
    assert raw(p) == pkt  # scapy, too, sends 0xFFFF for a computed 0


def test_udp_errors():
    seg = raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=7, dport=8) / b"hello!")[20:]
    for n in range(8):
        with pytest.raises(WireError, match="truncated"):
            U.parse_udp(seg[:n], 0, n, IP_A, IP_B)
    with pytest.raises(WireError, match="exceeds"):
        U.parse_udp(seg, 0, len(seg) - 1, IP_A, IP_B)
    bad = bytearray(seg)
    bad[4:6] = (7).to_bytes(2, "big")
    with pytest.raises(WireError, match="< 8"):
        U.parse_udp(bad, 0, len(bad), IP_A, IP_B)
    bad = bytearray(seg)
    bad[-1] ^= 0x10
    with pytest.raises(WireError, match="checksum"):
        U.parse_udp(bad, 0, len(bad), IP_A, IP_B)
    assert U.parse_udp(bad, 0, len(bad), None, None, verify=False) == (7, 8, 8, 6)
    with pytest.raises(WireError, match="checksum"):  # wrong pseudo-header
        U.parse_udp(seg, 0, len(seg), IP_A, bytes([10, 0, 0, 3]))
    with pytest.raises(WireError):
        U.parse_udp(seg, 0, len(seg), None, IP_B)
    with pytest.raises(WireError):
        U.parse_udp(seg, 0, len(seg) + 1, IP_A, IP_B)
    # trailing bytes past the UDP length are ignored
    assert U.parse_udp(seg + b"\x00\x00", 0, len(seg) + 2, IP_A, IP_B) == (7, 8, 8, 6)


def test_udp_ipv4_headers_errors():
    with pytest.raises(WireError):
        U.udp_ipv4_headers(IP_A, IP_B, 70000, 1, b"")
    with pytest.raises(WireError):
        U.udp_ipv4_headers(IP_A, IP_B, 1, 2, b"", ident=1 << 16)
    with pytest.raises(WireError):
        U.udp_ipv4_headers(IP_A, IP_B, 1, 2, bytes(65508))
    with pytest.raises(WireError):
        U.udp_ipv4_headers(IP_A, b"\x00", 1, 1, b"")
    assert len(udp_packet(IP_A, IP_B, 1, 2, bytes(65507))) == 65535


@FAST
@given(ip4, ip4, port, port, st.binary(max_size=40), st.integers(0, 1000))
def test_udp_checksum_any_bit_flip_caught(src, dst, sport, dport, payload, which):
    seg = bytearray(udp_packet(src, dst, sport, dport, payload)[20:])
    i = which % len(seg)
    if i in (6, 7):
        i = 0  # flipping the checksum field itself could produce the "no checksum" 0
    seg[i] ^= 0x01
    if i in (4, 5):
        return  # the length field: caught either as a length error or a checksum error
    with pytest.raises(WireError, match="checksum"):
        U.parse_udp(seg, 0, len(seg), src, dst)


def test_payload_may_be_a_memoryview():
    payload = memoryview(bytearray(b"zero-copy payload"))[5:]
    assert U.udp_ipv4_headers(IP_A, IP_B, 1, 2, payload) == U.udp_ipv4_headers(IP_A, IP_B, 1, 2, bytes(payload))
    assert I.build_echo(8, 1, 2, payload) == I.build_echo(8, 1, 2, bytes(payload))


# --------------------------------------------------------------------------- hostile input


def _parsers(buf, off, length):
    """Every parser on one buffer; each call may raise only WireError."""
    yield lambda: E.parse_eth(buf, off)
    yield lambda: A.parse_arp(buf, off)
    yield lambda: V4.parse_ipv4(buf, off, length)
    yield lambda: V4.parse_ipv4(buf, off, length, verify_checksum=False)
    yield lambda: I.parse_icmp(buf, off, length)
    yield lambda: I.parse_icmp(buf, off, length, verify=False)
    yield lambda: U.parse_udp(buf, off, length, IP_A, IP_B)
    yield lambda: U.parse_udp(buf, off, length, None, None, verify=False)


_VALID = [
    A.build_arp(1, MAC_A, IP_A, MAC_B, IP_B),
    udp_packet(IP_A, IP_B, 1, 2, b"abcde"),
    V4.build_ipv4_header(IP_A, IP_B, 1, 12) + I.build_echo(8, 1, 2, b"ping"),
    udp_packet(IP_A, IP_B, 1, 2, b"xyz")[20:],
    I.build_echo(0, 3, 4, b""),
]


@st.composite
def hostile(draw):
    if draw(st.booleans()):
        data = draw(st.binary(max_size=64))
    else:  # a valid packet, corrupted: gets past the early checks
        data = bytearray(draw(st.sampled_from(_VALID)))
        for _ in range(draw(st.integers(0, 3))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        data = bytes(data[: draw(st.integers(0, len(data)))])
    n = len(data)
    off = draw(st.integers(-3, n + 3))
    length = draw(st.none() | st.integers(-3, n + 3))
    kind = draw(st.sampled_from(BUFTYPES))
    return as_type(kind, data), off, length


@settings(max_examples=600, deadline=None)
@given(hostile())
def test_parsers_raise_only_wire_error(case):
    buf, off, length = case
    for parse in _parsers(buf, off, length):
        try:
            parse()
        except WireError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=24))
def test_address_parsers_raise_only_wire_error(s):
    for f in (V4.ip_bytes, E.mac_bytes):
        try:
            f(s)
        except WireError:
            pass


def test_wire_imports_no_nexus_or_channel():
    import ast
    import pathlib

    for path in pathlib.Path(W.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(("usnet.domain", "usnet.client", "usnet.abi", "socket", "time")), (
                    path.name, name)


@given(st.lists(st.binary(min_size=0, max_size=200), min_size=1, max_size=20))
def test_row_sums_equal_the_one_s_complement_sum_of_each_row(bufs):
    """The numpy batch sum (32-bit little-endian words, times 256) against the integer one."""
    import numpy as np

    from usnet.proto.wire.rows import padded_width, row_sums

    width = padded_width(max(map(len, bufs)))
    rows = np.zeros((len(bufs), width), np.uint8)
    for i, b in enumerate(bufs):
        rows[i, : len(b)] = np.frombuffer(b, np.uint8)
    want = [int.from_bytes(b + b"\0" * (len(b) & 1), "big") % 0xFFFF for b in bufs]
    assert row_sums(rows).tolist() == want
