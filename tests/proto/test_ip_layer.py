"""usnet.proto.ip: the sans-I/O IP layer (IPv4, IPv6, ICMP, reassembly, PMTU, ND).

A fake clock throughout (``now`` is a number the test picks), scapy as the
independent peer: it builds what we receive (including its own `fragment()`
and `fragment6()`), and decodes and re-checksums what we send (`defragment()`
for our fragments). Hostile input (random, truncated, mutated packets) must
only ever move counters.
"""

from __future__ import annotations

import errno
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("scapy.all")
from scapy.all import ICMP, IP, UDP, raw  # noqa: E402
from scapy.layers.inet import IPerror, UDPerror, defragment, fragment  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS,
    ICMPv6ND_RA, ICMPv6NDOptDstLLAddr, ICMPv6NDOptSrcLLAddr, ICMPv6PacketTooBig,
    ICMPv6TimeExceeded, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
    fragment6, in6_chksum,
)

from usnet.proto.ip import (  # noqa: E402
    INCOMPLETE, REACHABLE, STALE, Datagram, IcmpError, IpLayer, NeighborCache,
    NeighborResolved, Transmit,
)
from usnet.proto.wire.ipv4 import ip_bytes  # noqa: E402
from usnet.proto.wire.ipv6 import ip6_bytes, solicited_node  # noqa: E402
from usnet.proto.wire.udp import build_udp  # noqa: E402

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

A4s, B4s, C4s, R4s = "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.254"
A4, B4, C4, R4 = map(ip_bytes, (A4s, B4s, C4s, R4s))
A6s, B6s, C6s, G6s, P6s, R6s = "fe80::1", "fe80::2", "fe80::3", "2001:db8::1", "2001:db8:9::9", "fe80::fe"
A6, B6, C6, G6, P6, R6 = map(ip6_bytes, (A6s, B6s, C6s, G6s, P6s, R6s))
MAC_A, MAC_B, MAC_C = (bytes.fromhex(h) for h in ("020000000001", "020000000002", "020000000003"))


def mac_s(m: bytes) -> str:
    return ":".join(f"{b:02x}" for b in m)


def layer(**kw) -> IpLayer:
    return IpLayer([A4, A6, G6], 1500, lladdr=MAC_A, **kw)


def feed(ip: IpLayer, pkts, now: float = 0.0) -> list:
    ev = []
    for p in pkts:
        ev += ip.input(p if isinstance(p, (bytes, bytearray, memoryview)) else raw(p), now)
    return ev


def dgrams(ev):
    return [e for e in ev if isinstance(e, Datagram)]


def sent(ev):
    return [e.packet for e in ev if isinstance(e, Transmit)]


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
    proto, src, dst, payload = d[:4]
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
    (raw(IP(src=B4s, dst=A4s, flags="MF", id=3) / b"1234567"), "frag_bad"),
    (raw(IP(src=B4s, dst=A4s, frag=8190, id=3) / bytes(64)), "frag_too_big"),
    (raw(IP(src=B4s, dst=A4s) / ICMP(type=8, chksum=7)), "icmp4_bad"),
    (raw(IPv6(src=B6s, dst=A6s) / UDP())[:39], "ip6_truncated"),
    (raw(IPv6(src=B6s, dst=A6s, plen=50) / UDP()), "ip6_bad_header"),
    (raw(IPv6(src=B6s, dst=P6s) / UDP()), "ip6_not_for_us"),
    (raw(IPv6(src="ff02::1", dst=A6s) / UDP()), "ip6_bad_src"),
    (raw(IPv6(src=B6s, dst=A6s) / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / UDP()), "ip6_bad_ext"),
    (raw(IPv6(src=B6s, dst=A6s, nh=59)), "ip6_no_next"),
    (raw(IPv6(src=B6s, dst=A6s) / ICMPv6EchoRequest(cksum=5)), "icmp6_bad"),
])
def test_malformed_counted_not_raised(pkt, reason):
    ip = layer()
    assert ip.input(pkt, 0.0) == []
    assert ip.counters[reason] == 1
    clean(ip)


def test_broadcast_and_extra_destinations():
    ip = IpLayer([A4], extra_dst=[ip_bytes("10.0.0.255"), ip_bytes("239.1.1.1")])
    for dst in ("255.255.255.255", "10.0.0.255", "239.1.1.1"):
        assert len(dgrams(ip.input(raw(IP(src=B4s, dst=dst) / UDP()), 0))) == 1
    assert ip.input(raw(IP(src="10.0.0.255", dst=A4s) / UDP()), 0) == []
    assert ip.counters["ip4_bad_src"] == 1
    # no echo reply to a broadcast
    assert ip.input(raw(IP(src=B4s, dst="10.0.0.255") / ICMP()), 0) == []


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
    ours = IpLayer([A4]).output(17, A4, B4, build_udp(5000, 53, b"q" * 20, A4, B4), 0)[0]
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
    ip.timeout(100.0)
    clean(ip)


# --------------------------------------------------------------------------- reassembly


def _frag4(ident, off, data, mf, src=B4s, proto=17):
    return raw(IP(src=src, dst=A4s, id=ident, frag=off // 8, flags="MF" if mf else 0, proto=proto) / data)


@FAST
@given(data=st.data())
def test_reassembly_any_order_with_duplicates(data):
    size = data.draw(st.integers(1, 4000), "size")
    fragsize = 8 * data.draw(st.integers(max(1, (size + 8) // (8 * 40) + 1), 185), "fragsize/8")
    ident = data.draw(st.integers(0, 0xFFFF), "ident")
    payload = random.Random(size).randbytes(size)
    whole = IP(src=B4s, dst=A4s, id=ident, flags=0) / UDP(sport=7, dport=9) / payload
    frags = [raw(f) for f in fragment(whole, fragsize)]
    order = data.draw(st.permutations(range(len(frags))), "order")
    seq = [frags[i] for i in order[:-1]]
    dups = data.draw(st.lists(st.integers(0, max(0, len(seq) - 1)), max_size=4), "dups") if seq else []
    for i in dups:
        seq.insert(data.draw(st.integers(0, len(seq)), "at"), seq[i])
    seq.append(frags[order[-1]])
    ip = layer()
    ev = feed(ip, seq)
    if len(frags) == 1:
        assert len(dgrams(ev)) == 1 + len(dups)
        return
    [d] = dgrams(ev)
    assert (d.proto, d.src, d.dst) == (17, B4, A4)
    assert bytes(d.payload) == raw(whole)[20:]
    assert IP(bytes(d.packet))[UDP].dport == 9
    assert ip.counters["frag_reassembled"] == 1 and ip.counters["frag_dup"] == len(dups)
    assert ip.reassembly_bytes == 0 and ip.reassembly_pending == 0
    clean(ip)


@FAST
@given(data=st.data())
def test_consistent_overlaps_merge_v4(data):
    n = data.draw(st.integers(9, 600), "n")
    payload = random.Random(n).randbytes(n)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, (n - 1) // 8), max_size=12), "cuts")))
    bounds = [0] + [c * 8 for c in cuts] + [n]
    pieces = []
    for a, b in zip(bounds, bounds[1:]):
        back = 8 * data.draw(st.integers(0, 3), "back")
        a2 = max(0, a - back)
        pieces.append((a2, b))
    random.Random(data.draw(st.integers(0, 1000), "seed")).shuffle(pieces)
    ip = layer()
    ev = feed(ip, [_frag4(5, a, payload[a:b], b < n, proto=250) for a, b in pieces])
    if len(pieces) == 1 and pieces[0] == (0, n):
        assert len(dgrams(ev)) == 1
        return
    [d] = dgrams(ev)
    assert bytes(d.payload) == payload and d.proto == 250
    clean(ip)


def test_conflicting_overlap_drops_datagram():
    x, y = b"A" * 16, b"B" * 8 + b"A" * 8  # y disagrees with x on bytes 8..16
    ip = layer()
    ev = feed(ip, [_frag4(1, 0, x, True), _frag4(1, 8, y, True), _frag4(1, 24, b"C" * 8, False)])
    assert dgrams(ev) == []
    assert ip.counters["frag_conflict"] == 1
    # a conflicting second "last" fragment (different total length) also drops it
    ev = feed(ip, [_frag4(2, 0, x[:8], True), _frag4(2, 16, b"C" * 8, False),
                   _frag4(2, 16, b"C" * 16, False), _frag4(2, 8, x[:8], True)])
    assert dgrams(ev) == [] and ip.counters["frag_conflict"] == 2
    # data beyond a known end
    ev = feed(ip, [_frag4(3, 16, b"C" * 8, False), _frag4(3, 16, b"C" * 16, True)])
    assert ip.counters["frag_conflict"] == 3
    clean(ip)
    ip.timeout(100.0)
    assert ip.reassembly_bytes == 0


def test_flood_one_source_stays_in_budget_and_others_complete():
    budget = 64 * 1024
    ip = IpLayer([A4], reasm_max_bytes=budget, reasm_max_datagrams=32, reasm_per_source=8)
    legit = [raw(f) for f in fragment(IP(src=B4s, dst=A4s, id=1) / UDP() / bytes(5000), 1000)]
    got = []
    li = 0
    for i in range(3000):
        got += dgrams(ip.input(_frag4(100 + i, 0, bytes(1000), True, src=C4s), 0.001 * i))
        assert ip.reassembly_bytes <= budget and ip.reassembly_pending <= 32
        if i % 40 == 39 and li < len(legit):
            got += dgrams(ip.input(legit[li], 0.001 * i))
            li += 1
    assert li == len(legit)
    assert len(got) == 1 and got[0].src == B4 and len(got[0].payload) == 5008
    assert ip.counters["frag_evicted"] > 2900
    clean(ip)


def test_flood_spoofed_sources_stays_in_budget():
    budget = 32 * 1024
    ip = IpLayer([A4], reasm_max_bytes=budget, reasm_max_datagrams=64, reasm_per_source=4)
    legit = [raw(f) for f in fragment(IP(src=B4s, dst=A4s, id=1) / UDP() / bytes(3000), 1000)]
    rnd = random.Random(1)
    got = []
    li = 0
    for i in range(2000):
        src = f"10.{rnd.randrange(1, 250)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
        got += dgrams(ip.input(_frag4(i, 8 * rnd.randrange(100), bytes(800), True, src=src), 0.0))
        assert ip.reassembly_bytes <= budget
        if i >= 1000 and i % 3 == 0 and li < len(legit):
            got += dgrams(ip.input(legit[li], 0.0))
            li += 1
    assert len(got) == 1 and got[0].src == B4
    assert ip.counters["frag_evicted"] + ip.counters["frag_no_memory"] > 1500
    clean(ip)


def test_per_datagram_budget():
    ip = IpLayer([A4], reasm_datagram_bytes=4096)
    ev = feed(ip, [_frag4(1, i * 8, bytes(8), True) for i in range(100)])
    assert dgrams(ev) == [] and ip.counters["frag_over_budget"] == 1
    assert ip.reassembly_bytes < 4096


def test_reassembly_timeout_frees_memory_and_sends_time_exceeded():
    ip = layer()
    whole = IP(src=B4s, dst=A4s, id=42) / UDP(sport=3, dport=4) / bytes(3000)
    frags = [raw(f) for f in fragment(whole, 1000)]
    feed(ip, [frags[0], frags[2]], 1.0)
    assert ip.reassembly_pending == 1 and ip.reassembly_bytes > 2000
    assert ip.next_timeout(1.0) == pytest.approx(30.0)
    assert ip.timeout(30.9) == []
    ev = ip.timeout(31.0)
    assert ip.reassembly_pending == 0 and ip.reassembly_bytes == 0
    assert ip.counters["frag_timeout"] == 1 and ip.next_timeout(31.0) is None
    [te] = sent(ev)
    p = IP(te)
    assert (p.src, p.dst, p[ICMP].type, p[ICMP].code) == (A4s, B4s, 11, 1)
    assert p[IPerror].id == 42 and p[UDPerror].dport == 4
    assert rechecked(p, (IP, "chksum"), (ICMP, "chksum")) == te
    # the late fragment starts over; without fragment zero no error is sent on expiry
    feed(ip, [frags[1]], 40.0)
    assert ip.reassembly_pending == 1
    # expiry also happens on input, without a call to timeout()
    ev = ip.input(raw(IP(src=B4s, dst=A4s) / UDP()), 71.0)
    assert ip.reassembly_pending == 0 and sent(ev) == [] and len(dgrams(ev)) == 1


# --------------------------------------------------------------------------- IPv4 output


@FAST
@given(size=st.integers(0, 4000), mtu=st.integers(68, 1500))
def test_fragmentation_output_defragmented_by_scapy(size, mtu):
    ip = IpLayer([A4], mtu, pmtu_floor=68, ident=1000)
    payload = random.Random(size).randbytes(size)
    udp = build_udp(1000, 2000, payload, A4, B4)
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
    # and our own input reassembles them, in any order
    peer = IpLayer([B4])
    random.Random(size).shuffle(pkts)
    [d] = dgrams(feed(peer, pkts))
    assert bytes(d.payload) == udp


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


# --------------------------------------------------------------------------- ICMPv4


def test_echo_reply_valid_per_scapy():
    ip = layer()
    req = IP(src=B4s, dst=A4s) / ICMP(type=8, id=0x1234, seq=7) / b"ping payload"
    [tx] = sent(ip.input(raw(req), 0.0))
    p = IP(tx)
    assert (p.src, p.dst, p[ICMP].type, p[ICMP].code, p[ICMP].id, p[ICMP].seq) == (
        A4s, B4s, 0, 0, 0x1234, 7)
    assert p[ICMP].load == b"ping payload"
    assert rechecked(p, (IP, "chksum"), (ICMP, "chksum")) == tx
    assert ip.counters["icmp4_echo_replied"] == 1


def test_big_fragmented_echo_gets_fragmented_reply():
    ip = layer()
    body = random.Random(3).randbytes(4000)
    req = IP(src=B4s, dst=A4s, id=5) / ICMP(type=8, id=1, seq=1) / body
    ev = feed(ip, reversed([raw(f) for f in fragment(req, 1200)]))
    out = sent(ev)
    assert len(out) == 3 and all(len(x) <= 1500 for x in out)
    [whole] = defragment([IP(x) for x in out])
    whole = IP(raw(whole))
    assert whole[ICMP].type == 0 and whole[ICMP].load == body
    assert rechecked(whole, (ICMP, "chksum")) == raw(whole)


def test_echo_reply_delivered_to_sockets():
    ip = layer()
    [d] = dgrams(ip.input(raw(IP(src=B4s, dst=A4s) / ICMP(type=0, id=9, seq=1)), 0))
    assert d.proto == 1 and d.payload[0] == 0


def _ours_udp(ip: IpLayer, size=20, sport=5555, dport=53) -> bytes:
    [p] = ip.output(17, A4, B4, build_udp(sport, dport, bytes(size), A4, B4), 0.0)
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
    assert ip.pmtu(B4, 1.0) == 1000 and ip.pmtu(C4, 1.0) == 1500
    pkts = ip.output(17, A4, B4, build_udp(1, 2, bytes(1400), A4, B4), 2.0)
    assert len(pkts) == 2 and all(len(p) <= 1000 for p in pkts)
    with pytest.raises(OSError):
        ip.output(17, A4, B4, bytes(1000), 2.0, df=True)
    # an increase is ignored
    ip.input(raw(IP(src=R4s, dst=A4s) / ICMP(type=3, code=4, nexthopmtu=1200) / big[:28]), 3.0)
    assert ip.pmtu(B4, 3.0) == 1000 and ip.counters["pmtu_ignored"] == 1
    # a report not below the quoted length is bogus
    assert ip.input(raw(IP(src=R4s, dst=A4s) / ICMP(type=3, code=4, nexthopmtu=1428) / big[:28]), 3.0) == []
    assert ip.counters["pmtu_bogus"] == 1
    # below the floor (576): set to the floor and locked, so DF is cleared
    [e] = errors(ip.input(raw(IP(src=R4s, dst=A4s) / ICMP(type=3, code=4, nexthopmtu=300) / big[:28]), 4.0))
    assert e.mtu == 576 and ip.pmtu(B4, 4.0) == 576
    [p] = ip.output(17, A4, B4, bytes(500), 4.0)
    assert not IP(p).flags.DF
    assert all(len(x) <= 576 for x in ip.output(17, A4, B4, bytes(1400), 4.0, df=True))
    # aging back to the link MTU
    assert ip.pmtu(B4, 4.0 + 600.0) == 1500


def test_frag_needed_plateau_and_rfc1191_minimum():
    ip = IpLayer([A4], pmtu_floor=68)
    big = _ours_udp(ip, 1400)
    [e] = errors(ip.input(raw(IP(src=R4s, dst=A4s) / ICMP(type=3, code=4, nexthopmtu=0) / big[:28]), 0))
    assert e.mtu == 1006  # RFC 1191 plateau below 1428
    ip.input(raw(IP(src=R4s, dst=A4s) / ICMP(type=3, code=4, nexthopmtu=20) / big[:28]), 0)
    assert ip.pmtu(B4, 0) == 68
    pkts = ip.output(17, A4, B4, bytes(200), 0)
    assert all(len(p) <= 68 for p in pkts) and len(pkts) == 5


def test_unreachable_builds_port_unreachable_rate_limited():
    ip = layer(icmp_rate=1.0, icmp_burst=3)
    pkt = raw(IP(src=B4s, dst=A4s) / UDP(sport=40000, dport=9) / b"x")
    [d] = dgrams(ip.input(pkt, 0.0))
    [out] = ip.unreachable(d, 0.0)
    p = IP(out)
    assert (p.src, p.dst, p[ICMP].type, p[ICMP].code) == (A4s, B4s, 3, 3)
    assert p[IPerror].src == B4s and p[UDPerror].sport == 40000 and p[UDPerror].dport == 9
    assert rechecked(p, (IP, "chksum"), (ICMP, "chksum")) == out
    assert [len(ip.unreachable(d, 0.0)) for _ in range(4)] == [1, 1, 0, 0]
    assert ip.counters["icmp_rate_limited"] == 2
    assert len(ip.unreachable(d, 1.0)) == 1
    # never about broadcasts
    [b] = dgrams(ip.input(raw(IP(src=B4s, dst="255.255.255.255") / UDP()), 5.0))
    assert ip.unreachable(b, 5.0) == [] and ip.counters["icmp_err_suppressed"] == 1


def test_our_port_unreachable_round_trips():
    """What unreachable() sends, the peer's IP layer maps back to its socket."""
    me, peer = IpLayer([A4]), IpLayer([B4])
    [q] = peer.output(17, B4, A4, build_udp(6000, 7, b"hi", B4, A4), 0)
    [d] = dgrams(me.input(q, 0))
    [err] = me.unreachable(d, 0)
    [e] = errors(peer.input(err, 0))
    assert (e.local, e.local_port, e.remote, e.remote_port, e.errno) == (B4, 6000, A4, 7, errno.ECONNREFUSED)


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


def test_echo6_reply_valid_per_scapy():
    ip = layer()
    req = IPv6(src=B6s, dst=A6s) / ICMPv6EchoRequest(id=3, seq=4, data=b"hello six")
    [tx] = sent(ip.input(raw(req), 0.0))
    p = IPv6(tx)
    assert (p.src, p.dst, p[ICMPv6EchoReply].id, p[ICMPv6EchoReply].seq) == (A6s, B6s, 3, 4)
    assert p[ICMPv6EchoReply].data == b"hello six"
    assert rechecked(p, (ICMPv6EchoReply, "cksum")) == tx
    # not to multicast
    assert sent(ip.input(raw(IPv6(src=B6s, dst="ff02::1") / ICMPv6EchoRequest()), 0.0)) == []


@FAST
@given(data=st.data())
def test_reassembly6_any_order(data):
    size = data.draw(st.integers(1, 3000), "size")
    fragsize = data.draw(st.integers(max(64, 48 + (size + 8) // 30 + 16), 1280), "fragsize")
    payload = random.Random(size).randbytes(size)
    ident = data.draw(st.integers(0, 2**32 - 1), "ident")
    whole = IPv6(src=B6s, dst=A6s) / IPv6ExtHdrFragment(id=ident) / UDP(sport=5, dport=6) / payload
    frags = [raw(f) for f in fragment6(whole, fragsize)]
    order = data.draw(st.permutations(range(len(frags))), "order")
    seq = [frags[i] for i in order]
    dup = data.draw(st.none() | st.integers(0, len(seq) - 1), "dup")
    if dup is not None and len(seq) > 1:
        seq.insert(len(seq) - 1, seq[min(dup, len(seq) - 2)])
    ip = layer()
    [d] = dgrams(feed(ip, seq))
    assert (d.proto, d.src) == (17, B6)
    assert bytes(d.payload) == raw(whole)[48:]
    assert ip.reassembly_bytes == 0
    clean(ip)


def _frag6(ident, off, data, more, nh=17):
    fh = IPv6ExtHdrFragment(nh=nh, id=ident, offset=off // 8, m=int(more))
    return raw(IPv6(src=B6s, dst=A6s) / fh / data)


def test_reassembly6_any_overlap_drops_but_duplicates_do_not():
    payload = bytes(range(48))
    ip = layer()
    ev = feed(ip, [_frag6(1, 0, payload[:24], True, 253), _frag6(1, 16, payload[16:40], True, 253),
                   _frag6(1, 40, payload[40:], False, 253)])
    assert dgrams(ev) == [] and ip.counters["frag_conflict"] == 1
    ev = feed(ip, [_frag6(2, 0, payload[:24], True, 253), _frag6(2, 0, payload[:24], True, 253),
                   _frag6(2, 24, payload[24:], False, 253)])
    [d] = dgrams(ev)
    assert bytes(d.payload) == payload and d.proto == 253 and ip.counters["frag_dup"] == 1
    # atomic fragment: delivered at once
    [d] = dgrams(ip.input(_frag6(3, 0, b"atomic", False, 253), 0))
    assert bytes(d.payload) == b"atomic"


def test_reassembly6_timeout_sends_time_exceeded():
    ip = layer()
    ip.input(_frag6(9, 0, bytes(64), True), 0.0)
    [tx] = sent(ip.timeout(30.0))
    p = IPv6(tx)
    assert (p[ICMPv6TimeExceeded].code, p.dst) == (1, B6s)
    # scapy's rebuild would reshape the quoted fragment, so check the sum with its in6_chksum
    assert in6_chksum(58, p, tx[40:42] + b"\0\0" + tx[44:]) == int.from_bytes(tx[42:44], "big")
    assert p[IPv6ExtHdrFragment].id == 9
    assert ip.reassembly_bytes == 0


def test_packet_too_big_lowers_pmtu6():
    ip = layer()
    [ours] = ip.output(17, G6, P6, raw(UDP(sport=7000, dport=443) / bytes(1400)), 0.0)
    assert len(ours) == 1448
    ptb = IPv6(src="2001:db8:5::1", dst=G6s) / ICMPv6PacketTooBig(mtu=1400) / ours[:1232]
    [e] = errors(ip.input(raw(ptb), 1.0))
    assert (e.proto, e.local, e.local_port, e.remote, e.remote_port) == (17, G6, 7000, P6, 443)
    assert (e.errno, e.mtu) == (errno.EMSGSIZE, 1400)
    assert ip.pmtu(P6, 1.0) == 1400
    with pytest.raises(OSError) as ei:
        ip.output(17, G6, P6, bytes(1400), 1.0)
    assert ei.value.errno == errno.EMSGSIZE
    ptb = IPv6(src="2001:db8:5::1", dst=G6s) / ICMPv6PacketTooBig(mtu=600) / ours[:1232]
    [e] = errors(ip.input(raw(ptb), 1.0))
    assert e.mtu == 1280 and ip.pmtu(P6, 1.0) == 1280  # never below the IPv6 minimum
    ptb = IPv6(src="2001:db8:5::1", dst=G6s) / ICMPv6PacketTooBig(mtu=2000) / ours[:1232]
    assert ip.input(raw(ptb), 1.0) == [] and ip.counters["pmtu_bogus"] == 1


def test_dest_unreach6_maps_to_socket_and_unreachable6():
    ip = layer()
    [ours] = ip.output(17, G6, P6, raw(UDP(sport=7001, dport=53) / b"q"), 0.0)
    err = IPv6(src="2001:db8:5::1", dst=G6s) / ICMPv6DestUnreach(code=4) / ours
    [e] = errors(ip.input(raw(err), 1.0))
    assert (e.local_port, e.remote_port, e.errno) == (7001, 53, errno.ECONNREFUSED)
    [d] = dgrams(ip.input(raw(IPv6(src=P6s, dst=G6s) / UDP(sport=9, dport=10) / b"z"), 2.0))
    [out] = ip.unreachable(d, 2.0)
    p = IPv6(out)
    assert (p.src, p.dst, p[ICMPv6DestUnreach].code) == (G6s, P6s, 4)
    assert p["UDPerror"].dport == 10
    assert rechecked(p, (ICMPv6DestUnreach, "cksum")) == out


# --------------------------------------------------------------------------- Neighbour Discovery


def test_ns_for_us_answered_and_sender_learned():
    ip = layer()
    ns = (IPv6(src=B6s, dst=solicited_node_s(A6), hlim=255) / ICMPv6ND_NS(tgt=A6s)
          / ICMPv6NDOptSrcLLAddr(lladdr=mac_s(MAC_B)))
    [tx] = sent(ip.input(raw(ns), 0.0))
    p = IPv6(tx)
    na = p[ICMPv6ND_NA]
    assert (p.src, p.dst, p.hlim, na.tgt, na.R, na.S, na.O) == (A6s, B6s, 255, A6s, 0, 1, 1)
    assert p[ICMPv6NDOptDstLLAddr].lladdr == mac_s(MAC_A)
    assert rechecked(p, (ICMPv6ND_NA, "cksum")) == tx
    assert ip.nd.state(B6, 0.0) == STALE and ip.nd.lookup(B6, 0.0) == MAC_B
    # the reply's next hop is resolvable without another solicitation
    assert ip.nd.resolve(B6, tx, 0.0) == (MAC_B, [])
    # hop limit other than 255: dropped
    low = (IPv6(src=B6s, dst=solicited_node_s(A6), hlim=64) / ICMPv6ND_NS(tgt=A6s)
           / ICMPv6NDOptSrcLLAddr(lladdr=mac_s(MAC_B)))
    assert ip.input(raw(low), 0.0) == []
    assert ip.counters["nd_bad"] == 1
    # a target that is not ours
    ns2 = IPv6(src=B6s, dst=solicited_node_s(A6), hlim=255) / ICMPv6ND_NS(tgt="fe80::77")
    assert ip.input(raw(ns2), 0.0) == [] and ip.counters["nd_ns_not_ours"] == 1


def test_dad_ns_answered_to_all_nodes():
    ip = layer()
    ns = IPv6(src="::", dst=solicited_node_s(A6), hlim=255) / ICMPv6ND_NS(tgt=A6s)
    [tx] = sent(ip.input(raw(ns), 0.0))
    p = IPv6(tx)
    assert p.dst == "ff02::1" and p[ICMPv6ND_NA].S == 0 and p[ICMPv6ND_NA].O == 1
    bad = ns / ICMPv6NDOptSrcLLAddr(lladdr=mac_s(MAC_B))  # no SLLA from the unspecified address
    assert ip.input(raw(bad), 0.0) == []


def test_resolution_queue_advert_and_states():
    ip = layer()
    nd = ip.nd
    mac, ns = nd.resolve(C6, b"p0", 0.0)
    assert mac is None
    p = IPv6(ns[0])
    assert (p.src, p.dst, p.hlim, p[ICMPv6ND_NS].tgt) == (A6s, solicited_node_s(C6), 255, C6s)
    assert p[ICMPv6NDOptSrcLLAddr].lladdr == mac_s(MAC_A)
    assert rechecked(p, (ICMPv6ND_NS, "cksum")) == ns[0]
    for i in range(1, 20):
        assert nd.resolve(C6, b"p%d" % i, 0.1) == (None, [])
    assert nd.state(C6, 0.1) == INCOMPLETE and ip.counters["nd_queue_dropped"] == 4
    na = (IPv6(src=C6s, dst=A6s, hlim=255) / ICMPv6ND_NA(tgt=C6s, S=1, O=1)
          / ICMPv6NDOptDstLLAddr(lladdr=mac_s(MAC_C)))
    [r] = [e for e in ip.input(raw(na), 0.2) if isinstance(e, NeighborResolved)]
    assert (r.addr, r.lladdr, r.packets) == (C6, MAC_C, [b"p%d" % i for i in range(4, 20)])
    assert nd.state(C6, 0.2) == REACHABLE and nd.resolve(C6, b"x", 0.3) == (MAC_C, [])
    assert nd.state(C6, 30.2) == STALE and nd.lookup(C6, 31.0) == MAC_C
    nd.confirm(C6, 32.0)
    assert nd.state(C6, 32.0) == REACHABLE
    # NA without override and another address: ignored (REACHABLE -> STALE)
    na2 = (IPv6(src=C6s, dst=A6s, hlim=255) / ICMPv6ND_NA(tgt=C6s, S=1, O=0)
           / ICMPv6NDOptDstLLAddr(lladdr=mac_s(MAC_B)))
    ip.input(raw(na2), 33.0)
    assert nd.lookup(C6, 33.0) == MAC_C and nd.state(C6, 33.0) == STALE
    # with override, unsolicited: updated, STALE
    na3 = (IPv6(src=C6s, dst="ff02::1", hlim=255) / ICMPv6ND_NA(tgt=C6s, S=0, O=1)
           / ICMPv6NDOptDstLLAddr(lladdr=mac_s(MAC_B)))
    ip.input(raw(na3), 34.0)
    assert nd.lookup(C6, 34.0) == MAC_B and nd.state(C6, 34.0) == STALE
    # a solicited NA to a multicast address is invalid; an NA for an unknown neighbour creates nothing
    bad = IPv6(src=C6s, dst="ff02::1", hlim=255) / ICMPv6ND_NA(tgt=C6s, S=1, O=1)
    ip.input(raw(bad), 35.0)
    assert ip.counters["nd_bad"] == 1
    ip.input(raw(IPv6(src=B6s, dst=A6s, hlim=255) / ICMPv6ND_NA(tgt="fe80::99", S=1)), 35.0)
    assert nd.state(ip6_bytes("fe80::99"), 35.0) is None
    # multicast next hops map directly
    assert nd.resolve(ip6_bytes("ff02::1"), b"m", 0) == (bytes.fromhex("333300000001"), [])


def test_resolution_retries_then_gives_up_with_errors():
    ip = layer()
    [q] = ip.output(17, A6, C6, raw(UDP(sport=4444, dport=80) / b"syn"), 0.0)
    mac, ns = ip.nd.resolve(C6, q, 0.0)
    assert mac is None and len(ns) == 1
    assert ip.next_timeout(0.0) == pytest.approx(1.0)
    assert ip.timeout(0.5) == []
    assert len(sent(ip.timeout(1.0))) == 1
    assert len(sent(ip.timeout(2.0))) == 1
    ev = ip.timeout(3.0)
    assert sent(ev) == []
    [e] = errors(ev)
    assert (e.proto, e.local, e.local_port, e.remote, e.remote_port, e.errno) == (
        17, A6, 4444, C6, 80, errno.EHOSTUNREACH)
    assert ip.nd.state(C6, 3.0) is None and ip.counters["nd_failed"] == 1
    assert ip.next_timeout(3.0) is None


def test_neighbor_table_bounded():
    nd = NeighborCache(MAC_A, [A6], max_entries=4)
    for i in range(10):
        nd.resolve(ip6_bytes(f"fe80::{i + 10:x}"), b"p", 0.0)
    assert len(nd.entries) == 4 and nd.counters["nd_table_full"] == 6
    nd2 = NeighborCache(MAC_A, [A6], max_entries=4)
    for i in range(10):  # learned (STALE) entries make room for each other
        nd2.on_solicit(ip6_bytes(f"fe80::{i + 10:x}"), MAC_B, 0.0)
    assert len(nd2.entries) == 4 and nd2.counters["nd_evicted"] == 6


def test_router_advert_learned_and_delivered():
    ip = layer()
    ra = (IPv6(src=R6s, dst="ff02::1", hlim=255) / ICMPv6ND_RA(routerlifetime=1800)
          / ICMPv6NDOptSrcLLAddr(lladdr=mac_s(MAC_C)))
    [d] = dgrams(ip.input(raw(ra), 0.0))
    assert d.proto == 58 and d.payload[0] == 134
    assert ip.nd.lookup(R6, 0.0) == MAC_C
    # from a global source: invalid
    bad = IPv6(src=P6s, dst="ff02::1", hlim=255) / ICMPv6ND_RA()
    assert ip.input(raw(bad), 0.0) == [] and ip.counters["nd_bad"] == 1


def test_no_lladdr_layer_still_answers_ns():
    ip = IpLayer([A6])
    assert ip.nd is None
    ns = IPv6(src=B6s, dst=solicited_node_s(A6), hlim=255) / ICMPv6ND_NS(tgt=A6s)
    [tx] = sent(ip.input(raw(ns), 0.0))
    assert IPv6(tx)[ICMPv6ND_NA].tgt == A6s and ICMPv6NDOptDstLLAddr not in IPv6(tx)
