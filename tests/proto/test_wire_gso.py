"""usnet.proto.wire.gso: a TCP super-segment cut into the segments its sender's GSO would have made.

Evidence: for packets scapy builds (IPv4 with and without options, IPv6; TCP
with options, any flags, any sequence number, payloads of every size against
every segment size), the segments' payloads joined are the original's, each
segment carries at most the payload asked for, its checksums verify by our
sums and by scapy's (delete the field, rebuild, compare), and scapy decodes
the fields Linux's tcp_gso_segment / inet_gso_segment would have written:
sequence numbers advanced, IPv4 identification +1 per segment, CWR on the
first only, FIN and PSH on the last only. What is not a TCP packet to cut
(UDP, a fragment, an extension header, a short header) is a WireError.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytest.importorskip("scapy.all")
from scapy.all import IP, TCP, UDP, IPOption, raw
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt

from tests.helpers.scapy_plain import payload_as_bytes
from usnet.proto.wire.checksum import acc, verifies
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.gso import cut_tcp, headers_len, tcp_segments

PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CWR, FIN, PSH = 0x80, 0x01, 0x08


@st.composite
def packets(draw):
    """(packet bytes, version, payload) of a TCP packet as a sender's stack hands it to GSO."""
    v6 = draw(st.booleans())
    size = draw(st.integers(0, 9000))
    payload = random.Random(draw(st.integers(0, 1 << 32))).randbytes(size)  # one draw, not one a byte
    tcp = TCP(sport=draw(st.integers(1, 0xFFFF)), dport=draw(st.integers(1, 0xFFFF)),
              seq=draw(st.integers(0, 0xFFFFFFFF)), ack=draw(st.integers(0, 0xFFFFFFFF)),
              flags=draw(st.integers(0, 0xFF)), window=draw(st.integers(0, 0xFFFF)),
              urgptr=draw(st.integers(0, 0xFFFF)),
              options=draw(st.sampled_from([[], [("Timestamp", (1, 2))], [("NOP", None)] * 4 + [("SAck", (5, 9))]])))
    if v6:
        ip = IPv6(src="fd00::1", dst="fd00:1::2", tc=draw(st.integers(0, 255)), fl=draw(st.integers(0, 0xFFFFF)))
    else:
        opts = draw(st.integers(0, 3))
        ip = IP(src="10.1.2.3", dst="10.9.8.7", id=draw(st.integers(0, 0xFFFF)), tos=draw(st.integers(0, 255)),
                flags="DF", options=[IPOption(b"\x01" * 4 * opts)] if opts else [])
    return raw(ip / tcp / payload), v6, payload


def _decode(seg: bytes, v6: bool):
    """scapy's reading of ``seg``, the payload as bytes whatever the ports (a random port may be
    one scapy binds an application layer to, whose re-serialisation need not be the bytes)."""
    with payload_as_bytes():
        return IPv6(seg) if v6 else IP(seg)


_DCE = bytes(9) + b"\x01\x00\x01" + bytes(4)  # to port 135 scapy reads DCE/RPC and writes back 24 bytes


@PROPS
@given(packets(), st.integers(1, 3000))
@example((raw(IPv6(src="fd00::1", dst="fd00:1::2") / TCP(sport=1, dport=135, flags=0) / _DCE), True, _DCE), 16)
def test_the_segments_are_what_the_senders_gso_makes(p, max_payload):
    pkt, v6, payload = p
    max_payload = max(max_payload, len(payload) // 24 + 1)  # at most 24 segments for scapy to decode
    orig = _decode(pkt, v6)
    segs = [bytes(s) for s in tcp_segments(pkt, max_payload)]
    hl = headers_len(pkt)
    # the payloads joined are the original's; each is within the bound; all but the last are full
    assert b"".join(s[hl:] for s in segs) == payload
    assert all(len(s) - hl <= max_payload for s in segs)
    assert all(len(s) - hl == max_payload for s in segs[:-1])
    assert len(segs) == max(1, -(-len(payload) // max_payload))
    flags = int(orig[TCP].flags)
    seq = orig[TCP].seq
    src, dst = (orig.src, orig.dst)
    for i, s in enumerate(segs):
        got = _decode(s, v6)
        t = got[TCP]
        # our sums: the IPv4 header and the TCP segment with its pseudo-header verify
        if v6:
            assert got.plen == len(s) - 40 and got.tc == orig.tc and got.fl == orig.fl
            ph = acc(bytes(got)[8:40]) + len(s) - 40 + 6
            assert verifies(acc(s[40:]) + ph)
        else:
            ihl = got.ihl * 4
            assert got.len == len(s) and got.id == (orig.id + i) & 0xFFFF and got.options == orig.options
            assert got.flags == orig.flags and got.tos == orig.tos and got.ttl == orig.ttl
            assert verifies(acc(s[:ihl]))
            assert verifies(acc(s[ihl:]) + acc(s[12:20]) + len(s) - ihl + 6)
        assert (got.src, got.dst) == (src, dst)
        assert (t.sport, t.dport, t.ack, t.window, t.urgptr, t.options) == (
            orig[TCP].sport, orig[TCP].dport, orig[TCP].ack, orig[TCP].window, orig[TCP].urgptr, orig[TCP].options)
        assert t.seq == (seq + i * max_payload) & 0xFFFFFFFF
        # the flags rule (tcp_gso_segment): CWR on the first only, FIN and PSH on the last only
        want = flags
        if i > 0:
            want &= ~CWR
        if i < len(segs) - 1:
            want &= ~(FIN | PSH)
        assert int(t.flags) == want
        # scapy's checksums agree with ours
        csum_t = t.chksum
        del got[TCP].chksum
        if not v6:
            csum_ip = got.chksum
            del got.chksum
        again = _decode(raw(got), v6)
        assert again[TCP].chksum == csum_t
        if not v6:
            assert again.chksum == csum_ip


@PROPS
@given(packets(), st.integers(1, 3000), st.binary(min_size=0, max_size=7))
def test_link_padding_after_the_packet_is_ignored(p, max_payload, pad):
    pkt, _v6, _payload = p
    assert [bytes(s) for s in tcp_segments(pkt + pad, max_payload)] == [
        bytes(s) for s in tcp_segments(pkt, max_payload)]


def test_a_packet_that_fits_is_one_segment_unchanged():
    pkt = raw(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="FPAC") / (b"x" * 100))
    rows, lens = cut_tcp(pkt, 100)
    assert lens.tolist() == [len(pkt)] and rows[0].tobytes() == pkt


@pytest.mark.parametrize("pkt", [
    raw(IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / (b"x" * 3000)),
    raw(IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / TCP() / (b"x" * 3000)),
    raw(IP(src="10.0.0.1", dst="10.0.0.2", frag=100) / TCP() / (b"x" * 3000)),
    raw(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrDestOpt() / TCP() / (b"x" * 3000)),
    raw(IP(src="10.0.0.1", dst="10.0.0.2", proto=6) / (b"\0" * 19)),  # a TCP header cut short
    raw(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(dataofs=15) / (b"x" * 20)),  # its header past the packet
    raw(IP(src="10.0.0.1", dst="10.0.0.2", chksum=1) / TCP() / (b"x" * 3000)),  # a bad header checksum
    b"\x50" + bytes(60), b"",
], ids=["udp", "mf", "offset", "ext-header", "short-tcp", "doff", "ip-csum", "version", "empty"])
def test_what_is_not_a_tcp_packet_to_cut_is_a_wire_error(pkt):
    with pytest.raises(WireError):
        cut_tcp(pkt, 1000)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(-2, 300))
def test_garbage_raises_wire_error_and_nothing_else(data, max_payload):
    try:
        cut_tcp(data, max_payload)
    except WireError:
        pass
