"""usnet.proto.wire.fragment: a UDP datagram past the MTU cut into IP fragments, checked against
scapy as the independent peer: its reassembly (`defragment`, `defragment6`) gives back the UDP
datagram scapy builds itself, checksum and all, and every fragment is as Linux cuts them."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("scapy.all")
from scapy.all import IP, UDP, raw
from scapy.layers.inet import defragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, defragment6

from usnet.proto.wire.errors import WireError
from usnet.proto.wire.fragment import UDP4_MAX_PAYLOAD, UDP6_MAX_PAYLOAD, udp4_fragments, udp6_fragments
from usnet.proto.wire.ipv4 import IP_DF, IP_MF, IP_OFFMASK, ip_bytes, parse_ipv4
from usnet.proto.wire.ipv6 import ip6_bytes

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
A4, B4, A6, B6 = "10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2"


@FAST
@given(n=st.integers(0, 9000), mtu=st.sampled_from([576, 1280, 1500, 2048, 9000]), ident=st.integers(0, 0xFFFF),
       ports=st.tuples(st.integers(1, 0xFFFF), st.integers(1, 0xFFFF)), seed=st.binary(min_size=1, max_size=64))
def test_ipv4_fragments_reassemble_to_the_datagram(n, mtu, ident, ports, seed):
    payload = (seed * (n // len(seed) + 1))[:n]
    frags = udp4_fragments(ip_bytes(A4), ip_bytes(B4), *ports, payload, ident, mtu, ttl=33, tos=0x10)
    offsets = []
    for i, f in enumerate(frags):
        assert len(f) <= mtu
        _, total, fid, ff, ttl, proto, _, _ = parse_ipv4(f)  # sound headers, checksums included
        assert (total, fid, ttl, proto, f[1]) == (len(f), ident, 33, 17, 0x10)
        assert not ff & IP_DF and bool(ff & IP_MF) == (i < len(frags) - 1)
        offsets.append((ff & IP_OFFMASK) * 8)
        if i < len(frags) - 1:
            assert (len(f) - 20) % 8 == 0 and len(f) > mtu - 28  # as full as a multiple of 8 lets it be
    assert offsets == sorted(offsets) and offsets[0] == 0
    (whole,) = defragment([IP(f) for f in frags])
    want = IP(src=A4, dst=B4, id=ident, proto=17) / UDP(sport=ports[0], dport=ports[1]) / payload
    assert raw(whole[UDP]) == raw(IP(raw(want))[UDP])


@FAST
@given(n=st.integers(0, 9000), mtu=st.sampled_from([1280, 1500, 9000]), ident=st.integers(0, 0xFFFFFFFF),
       seed=st.binary(min_size=1, max_size=64))
def test_ipv6_fragments_reassemble_to_the_datagram(n, mtu, ident, seed):
    payload = (seed * (n // len(seed) + 1))[:n]
    frags = udp6_fragments(ip6_bytes(A6), ip6_bytes(B6), 5353, 53, payload, ident, mtu, hops=7)
    pkts = [IPv6(f) for f in frags]
    for i, (f, p) in enumerate(zip(frags, pkts)):
        assert len(f) <= mtu and p.hlim == 7
        h = p[IPv6ExtHdrFragment]
        assert (h.id, h.m, h.nh) == (ident, int(i < len(frags) - 1), 17)
    whole = defragment6(pkts)
    want = IPv6(src=A6, dst=B6) / UDP(sport=5353, dport=53) / payload
    assert raw(whole[UDP]) == raw(IPv6(raw(want))[UDP])


def test_the_bounds_are_linuxs():
    assert (UDP4_MAX_PAYLOAD, UDP6_MAX_PAYLOAD) == (65507, 65527)
    assert len(udp4_fragments(ip_bytes(A4), ip_bytes(B4), 1, 2, bytes(UDP4_MAX_PAYLOAD), 1, 1500)) == 45
    with pytest.raises(WireError):
        udp4_fragments(ip_bytes(A4), ip_bytes(B4), 1, 2, bytes(UDP4_MAX_PAYLOAD + 1), 1, 1500)
    with pytest.raises(WireError):
        udp6_fragments(ip6_bytes(A6), ip6_bytes(B6), 1, 2, bytes(UDP6_MAX_PAYLOAD + 1), 1, 1500)
