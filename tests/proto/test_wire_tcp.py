"""usnet.proto.wire.tcp: TCP headers, options and checksums over IPv4 and IPv6.

Evidence, as for the other wire modules:

* scapy both ways: what we build, scapy decodes with the same fields and
  recomputes the very same checksum (delete the field, rebuild, compare);
  what scapy builds (options included), we parse;
* the fast paths agree with the general ones (`write_tcp` with `build_tcp`,
  the "NOP NOP TS" shortcut with the option walker);
* hostile input: random buffers, offsets, lengths and mutated options raise
  WireError and nothing else; malformed options are refused, unknown ones
  skipped.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytest.importorskip("scapy.all")
from scapy.all import IP, TCP, Raw, raw
from scapy.layers.inet6 import IPv6

from tests.helpers.scapy_plain import payload_as_bytes
from usnet.proto.wire import tcp as T
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.ipv4 import build_ipv4_header

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

A4 = bytes([10, 0, 0, 1])
B4 = bytes([192, 168, 7, 9])
A6 = bytes.fromhex("20010db8000000000000000000000001")
B6 = bytes.fromhex("fe800000000000000211223344556677")

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
addr4 = st.binary(min_size=4, max_size=4)
addr6 = st.binary(min_size=16, max_size=16)
sack_blocks = st.lists(st.tuples(u32, u32), min_size=1, max_size=3)


def ip_str6(b: bytes) -> str:
    return ":".join(b[i : i + 2].hex() for i in range(0, 16, 2))


def with_ip(src: bytes, dst: bytes, seg: bytes):
    """Wrap our segment in an IP header and let scapy decode the whole packet, the TCP payload
    as bytes whatever the ports (tests.helpers.scapy_plain)."""
    if len(src) == 4:
        with payload_as_bytes():
            return IP(build_ipv4_header(src, dst, 6, len(seg)) + seg)
    hdr = raw(IPv6(src=ip_str6(src), dst=ip_str6(dst), nh=6, plen=len(seg), hlim=64))
    with payload_as_bytes():
        return IPv6(hdr + seg)


def scapy_checksum(pkt) -> int:
    """The checksum scapy computes for the TCP layer of ``pkt``."""
    p = pkt.copy()
    del p[TCP].chksum
    with payload_as_bytes():
        return type(pkt)(raw(p))[TCP].chksum


def scapy_opts(pkt) -> dict:
    return {name: val for name, val in pkt[TCP].options}


# --------------------------------------------------------------------------- build -> scapy


@FAST
@given(
    st.sampled_from(["v4", "v6"]), addr4, addr4, addr6, addr6, u16, u16, u32, u32,
    st.integers(0, 0xFF), u16, u16, st.binary(max_size=300),
    st.one_of(st.none(), st.integers(0, 0xFFFF)), st.one_of(st.none(), st.integers(0, 14)),
    st.booleans(), st.one_of(st.none(), st.tuples(u32, u32)), st.one_of(st.none(), sack_blocks),
)
# to port 135 scapy would read DCE/RPC, and write 24 bytes back for these 16 (tests.helpers.scapy_plain)
@example("v4", bytes(4), bytes(4), bytes(16), bytes(16), 0, 135, 0, 0, 0, 0, 0,
         bytes(9) + b"\x01\x00\x01" + bytes(4), None, None, False, None, None)
@example("v6", bytes(4), bytes(4), bytes(16), bytes(16), 0, 135, 0, 0, 0, 0, 0,
         bytes(9) + b"\x01\x00\x01" + bytes(4), None, None, False, None, None)
def test_build_decoded_by_scapy(fam, s4, d4, s6, d6, sport, dport, seq, ack, flags, win, urg,
                                payload, mss, ws, sack_ok, ts, sacks):
    src, dst = (s4, d4) if fam == "v4" else (s6, d6)
    size = ((mss is not None) * 4 + (ts is not None) * 12 + (sack_ok and ts is None) * 4
            + (ws is not None) * 4 + (4 + 8 * len(sacks) if sacks else 0))
    if size > T.MAX_OPTIONS:
        with pytest.raises(WireError):
            T.tcp_options(mss=mss, wscale=ws, sack_ok=sack_ok, ts=ts, sacks=sacks or ())
        return
    opts = T.tcp_options(mss=mss, wscale=ws, sack_ok=sack_ok, ts=ts, sacks=sacks or ())
    assert len(opts) == size
    seg = T.build_tcp(src, dst, sport, dport, seq, ack, flags, win, payload, urg, opts)
    pkt = with_ip(src, dst, seg)
    t = pkt[TCP]
    assert (t.sport, t.dport, t.seq, t.ack, int(t.flags), t.window, t.urgptr) == (
        sport, dport, seq, ack, flags, win, urg)
    assert t.dataofs * 4 == 20 + len(opts)
    assert bytes(t.payload) == payload
    assert t.chksum == scapy_checksum(pkt)
    o = scapy_opts(pkt)
    if mss is not None:
        assert o["MSS"] == mss
    if ws is not None:
        assert o["WScale"] == ws
    assert ("SAckOK" in o) == sack_ok
    if ts is not None:
        assert o["Timestamp"] == ts
    if sacks:
        assert o["SAck"] == tuple(e for b in sacks for e in b)
    # and we read back what we wrote
    p = T.parse_tcp(seg, 0, None, src, dst)
    assert (p.sport, p.dport, p.seq, p.ack, p.flags, p.window, p.urg) == (
        sport, dport, seq, ack, flags, win, urg)
    assert bytes(p.payload) == payload
    assert (p.mss, p.wscale, p.sack_ok) == (mss, ws, sack_ok)
    assert (p.tsval, p.tsecr) == (ts if ts else (None, None))
    assert p.sacks == (tuple(sacks) if sacks else None)
    assert T.tcp_checksum(src, dst, seg) == struct.unpack_from("!H", seg, 16)[0]


@FAST
@given(addr4, addr4, u16, u16, u32, u32, u16, st.binary(max_size=200), st.integers(0, 3))
def test_write_tcp_equals_build_tcp(src, dst, sport, dport, seq, ack, win, payload, pad):
    opts = T.tcp_options(ts=(seq, ack))
    want = T.build_tcp(src, dst, sport, dport, seq, ack, T.ACK | T.PSH, win, payload, 0, opts)
    buf = bytearray(pad + len(want) + 3)
    n = T.write_tcp(buf, pad, src, dst, sport, dport, seq, ack, T.ACK | T.PSH, win,
                    options=opts, payload=payload)
    assert n == len(want) and bytes(buf[pad : pad + n]) == want
    # zero-copy form: payload already in place
    buf2 = bytearray(pad + len(want))
    buf2[pad + 20 + len(opts) :] = payload
    T.write_tcp(buf2, pad, src, dst, sport, dport, seq, ack, T.ACK | T.PSH, win, len(payload),
                options=opts)
    assert bytes(buf2[pad:]) == want


def test_big_segment_checksum_fold_path():
    payload = bytes(range(256)) * 200 + b"x"  # odd, > FOLD_MIN, fits one IPv4 packet
    for src, dst in ((A4, B4), (A6, B6)):
        seg = T.build_tcp(src, dst, 1, 2, 3, 4, T.ACK, 5, payload)
        assert with_ip(src, dst, seg)[TCP].chksum == scapy_checksum(with_ip(src, dst, seg))
        T.parse_tcp(seg, 0, None, src, dst)


# --------------------------------------------------------------------------- scapy -> parse


def _scapy_segment(src, dst, tcp_layer, payload=b""):
    if len(src) == 4:
        pkt = IP(src=".".join(map(str, src)), dst=".".join(map(str, dst))) / tcp_layer / Raw(payload)
        return raw(pkt)[20:]
    pkt = IPv6(src=ip_str6(src), dst=ip_str6(dst)) / tcp_layer / Raw(payload)
    return raw(pkt)[40:]


@FAST
@given(
    st.sampled_from([(A4, B4), (A6, B6)]), u16, u16, u32, u32, st.integers(0, 0xFF), u16,
    st.binary(max_size=100), st.integers(536, 9000), st.integers(0, 14), st.tuples(u32, u32),
    st.lists(u32, min_size=2, max_size=4).filter(lambda v: len(v) % 2 == 0),
)
def test_parse_scapy_built(addrs, sport, dport, seq, ack, flags, win, payload, mss, ws, ts, sack):
    src, dst = addrs
    opts = [("MSS", mss), ("SAckOK", b""), ("Timestamp", ts), ("NOP", None), ("WScale", ws),
            ("NOP", None), ("NOP", None), ("SAck", tuple(sack))]
    layer = TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=win, options=opts)
    seg = _scapy_segment(src, dst, layer, payload)
    p = T.parse_tcp(seg, 0, len(seg), src, dst)
    assert (p.sport, p.dport, p.seq, p.ack, p.flags, p.window) == (sport, dport, seq, ack, flags, win)
    assert (p.mss, p.wscale, p.sack_ok, p.tsval, p.tsecr) == (mss, ws, True, ts[0], ts[1])
    assert p.sacks == tuple(zip(sack[::2], sack[1::2]))
    assert bytes(p.payload) == payload


def test_parse_common_ts_fast_path_and_unknown_options():
    seg = _scapy_segment(A4, B4, TCP(flags="A", options=[("NOP", None), ("NOP", None),
                                                          ("Timestamp", (7, 9))]), b"abc")
    p = T.parse_tcp(seg, 0, None, A4, B4)
    assert (p.tsval, p.tsecr, bytes(p.payload)) == (7, 9, b"abc")
    # An unknown option (kind 30, length 6) is skipped; EOL ends the list.
    opts = bytes([30, 6, 1, 2, 3, 4]) + bytes([2, 4, 5, 180]) + bytes([0, 99])
    seg = T.build_tcp(A4, B4, 1, 2, 3, 4, T.SYN, 100, b"", 0, opts)
    p = T.parse_tcp(seg, 0, None, A4, B4)
    assert p.mss == 1460 and p.flags == T.SYN


def test_parse_in_place_with_offset_and_padding():
    seg = T.build_tcp(A4, B4, 1000, 80, 1, 2, T.ACK, 512, b"hello", 0, T.tcp_options(ts=(1, 2)))
    buf = bytearray(b"\xaa" * 14 + seg + b"\0" * 6)  # e.g. behind a header, with padding
    p = T.parse_tcp(memoryview(buf), 14, len(seg), A4, B4)
    assert bytes(p.payload) == b"hello" and p.tsval == 1


# --------------------------------------------------------------------------- errors


def test_bad_checksum_is_a_wire_error_subclass():
    seg = bytearray(T.build_tcp(A4, B4, 1, 2, 3, 4, T.ACK, 5, b"data"))
    seg[-1] ^= 1
    with pytest.raises(T.TcpChecksumError):
        T.parse_tcp(seg, 0, None, A4, B4)
    assert issubclass(T.TcpChecksumError, WireError)
    T.parse_tcp(seg, 0, None, A4, B4, verify=False)
    with pytest.raises(WireError):  # another address: the pseudo-header differs
        T.parse_tcp(T.build_tcp(A4, B4, 1, 2, 3, 4, T.ACK, 5), 0, None, A4, bytes([10, 0, 0, 9]))
    with pytest.raises(WireError):  # mixed families
        T.parse_tcp(T.build_tcp(A4, B4, 1, 2, 3, 4, T.ACK, 5), 0, None, A4, B6)


@pytest.mark.parametrize("opts", [
    bytes([2, 3, 0, 0]),  # MSS with length 3
    bytes([3, 4, 1, 0]),  # window scale with length 4
    bytes([4, 3, 0, 0]),  # SACK-permitted with length 3
    bytes([8, 8, 0, 0, 0, 0, 0, 0]),  # timestamps with length 8
    bytes([5, 6, 0, 0, 0, 0, 0, 0]),  # SACK, not 2 + 8n
    bytes([5, 2, 1, 1]),  # SACK with no block
    bytes([30, 1, 0, 0]),  # length below 2
    bytes([30, 9, 0, 0]),  # runs past the header
    bytes([1, 1, 1, 30]),  # no length byte
])
def test_malformed_options_rejected(opts):
    seg = T.build_tcp(A4, B4, 1, 2, 3, 4, T.ACK, 5, b"", 0, opts)
    with pytest.raises(WireError):
        T.parse_tcp(seg, 0, None, A4, B4)


def test_header_length_errors_and_builder_errors():
    seg = bytearray(T.build_tcp(A4, B4, 1, 2, 3, 4, T.ACK, 5))
    for doff in (0, 4, 6, 15):
        s = bytearray(seg)
        s[12] = doff << 4
        with pytest.raises(WireError):
            T.parse_tcp(s, 0, None, A4, B4, verify=False)
    with pytest.raises(WireError):
        T.parse_tcp(seg[:19], 0, None, A4, B4)
    with pytest.raises(WireError):
        T.parse_tcp(seg, 0, 30, A4, B4)
    with pytest.raises(WireError):
        T.build_tcp(A4, B4, 70000, 2, 3, 4, T.ACK, 5)
    with pytest.raises(WireError):
        T.build_tcp(A4, B4, 1, 2, 3, 4, T.ACK, 5, b"", 0, b"\x01\x01\x01")
    with pytest.raises(WireError):
        T.tcp_options(sacks=[(1, 2)] * 5)
    with pytest.raises(WireError):
        T.pseudo_sum(A4, A6)
    with pytest.raises(WireError):
        T.write_tcp(bytearray(10), 0, A4, B4, 1, 2, 3, 4, T.ACK, 5)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.integers(-5, 90), st.one_of(st.none(), st.integers(-5, 90)),
       st.booleans())
def test_garbage_only_wire_error(data, off, length, verify):
    try:
        T.parse_tcp(data, off, length, A4, B4, verify)
    except WireError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=40), st.integers(5, 15), st.binary(max_size=20))
def test_random_options_only_wire_error(opts, doff, payload):
    hdr = struct.pack("!HHIIHHHH", 1, 2, 3, 4, (doff << 12) | T.ACK, 5, 0, 0)
    seg = hdr + opts + payload
    try:
        p = T.parse_tcp(seg, 0, None, A4, B4, verify=False)
    except WireError:
        return
    assert p.wscale is None or 0 <= p.wscale <= 255
    assert p.sacks is None or all(len(b) == 2 for b in p.sacks)


# --------------------------------------------------------------------------- parts (gather write)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["v4", "v6"]), addr4, addr4, addr6, addr6, u16, u16, u32, u32,
    st.integers(0, 0xFF), u16,
    st.one_of(st.integers(0, 3000), st.integers(60000, 65000)), st.integers(0, 255),
    st.one_of(st.none(), st.tuples(u32, u32)), st.one_of(st.none(), sack_blocks),
)
def test_pack_parts_is_pack_segment_in_two_parts(fam, s4, d4, s6, d6, sport, dport, seq, ack, flags,
                                                 win, plen, fill, ts, sacks):
    """The engine's gather write (IP header, `TcpParts.head`, payload view) makes the very bytes
    the joined path made, for payloads on either side of numpy's threshold, odd and even,
    with and without options; scapy finds the checksum right."""
    src, dst = (s4, d4) if fam == "v4" else (s6, d6)
    if sacks and ts and len(sacks) > 3:
        sacks = sacks[:3]
    opts = T.tcp_options(ts=ts, sacks=sacks or ())
    backing = bytearray((fill + i * 7) & 0xFF for i in range(plen + 5))
    payload = memoryview(backing)[5:]  # a view at an odd offset, as into a send buffer
    psum = T.pseudo_sum(src, dst)
    want = T.pack_segment(psum, sport, dport, seq, ack, flags, win, opts, payload)
    parts = T.pack_parts(psum, sport, dport, seq, ack, flags, win, opts, payload)
    assert bytes(parts) == want
    assert len(parts) == len(want)
    assert parts[12] == want[12] and parts[4:8] == want[4:8]
    assert parts.payload is payload  # not copied
    if plen <= 1400:
        pkt = with_ip(src, dst, parts.head + bytes(parts.payload))
        assert pkt[TCP].chksum == scapy_checksum(pkt)
