"""usnet.proto.reassembly: the bounded fragment reassembler the flow switch runs.

Driven as the switch drives it (usnet.domain.switch: keys ``(src, proto,
ident)`` for IPv4 and ``(6, src, ident)`` for IPv6, strict overlaps for IPv6),
with scapy as the independent peer that cuts the datagrams (`fragment()`,
`fragment6()`). The switch's own use, end to end, is tests/test_fragments.py.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("scapy.all")
from scapy.all import IP, UDP, raw
from scapy.layers.inet import fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6

from usnet.proto.reassembly import Reassembler
from usnet.proto.wire.ipv4 import IP_MF, IP_OFFMASK, IPV4_HLEN, parse_ipv4
from usnet.proto.wire.ipv6 import IPV6_HLEN, parse_ipv6, skip_ext_headers

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

A4s, B4s, C4s = "10.0.0.1", "10.0.0.2", "10.0.0.3"
A6s, B6s = "fe80::1", "fe80::2"


def reasm(**kw) -> Reassembler:
    return Reassembler(Counter(), **kw)


def add4(r: Reassembler, pkt: bytes, now: float = 0.0) -> tuple[int, bytes] | None:
    """One IPv4 fragment, as the switch adds it; (protocol, whole payload) once complete."""
    ihl, total, ident, ff, _ttl, proto, src, _dst = parse_ipv4(pkt, 0)
    got = r.add((src, proto, ident), src, (ff & IP_OFFMASK) << 3, pkt[ihl:total], bool(ff & IP_MF), now,
                False, 0xFFFF - IPV4_HLEN)
    return None if got is None else (proto, b"".join(got[0]))


def add6(r: Reassembler, pkt: bytes, now: float = 0.0) -> tuple[int, bytes] | None:
    """One IPv6 fragment, as the switch adds it; (next header, whole payload) once complete."""
    _tc, _fl, plen, nh, _hop, src, _dst = parse_ipv6(pkt, 0)
    end = IPV6_HLEN + plen
    proto, start, frag = skip_ext_headers(pkt, IPV6_HLEN, end, nh)
    _, foff, more, ident = frag
    got = r.add((6, src, ident), src, foff, pkt[start:end], more, now, True, 0xFFFF,
                first=b"" if foff == 0 else None, meta=proto)
    return None if got is None else (got[1].meta, b"".join(got[0]))


def whole(results) -> list:
    return [x for x in results if x is not None]


def _frag4(ident, off, data, mf, src=B4s, proto=17):
    return raw(IP(src=src, dst=A4s, id=ident, frag=off // 8, flags="MF" if mf else 0, proto=proto) / data)


def _frag6(ident, off, data, more, nh=17):
    fh = IPv6ExtHdrFragment(nh=nh, id=ident, offset=off // 8, m=int(more))
    return raw(IPv6(src=B6s, dst=A6s) / fh / data)


# --------------------------------------------------------------------------- IPv4


@FAST
@given(data=st.data())
def test_reassembly_any_order_with_duplicates(data):
    size = data.draw(st.integers(1, 4000), "size")
    fragsize = 8 * data.draw(st.integers(max(1, (size + 8) // (8 * 40) + 1), 185), "fragsize/8")
    ident = data.draw(st.integers(0, 0xFFFF), "ident")
    payload = random.Random(size).randbytes(size)
    dgram = IP(src=B4s, dst=A4s, id=ident, flags=0) / UDP(sport=7, dport=9) / payload
    frags = [raw(f) for f in fragment(dgram, fragsize)]
    if len(frags) == 1:
        return  # not a fragment: the switch never asks the reassembler
    order = data.draw(st.permutations(range(len(frags))), "order")
    seq = [frags[i] for i in order[:-1]]
    dups = data.draw(st.lists(st.integers(0, max(0, len(seq) - 1)), max_size=4), "dups") if seq else []
    for i in dups:
        seq.insert(data.draw(st.integers(0, len(seq)), "at"), seq[i])
    seq.append(frags[order[-1]])
    r = reasm()
    [(proto, got)] = whole(add4(r, p) for p in seq)
    assert proto == 17 and got == raw(dgram)[20:]
    assert r.c["frag_reassembled"] == 1 and r.c["frag_dup"] == len(dups)
    assert r.bytes == 0 and not r.table


@FAST
@given(data=st.data())
def test_consistent_overlaps_merge_v4(data):
    n = data.draw(st.integers(9, 600), "n")
    payload = random.Random(n).randbytes(n)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, (n - 1) // 8), max_size=12), "cuts")))
    bounds = [0] + [c * 8 for c in cuts] + [n]
    pieces = []
    for a, b in itertools.pairwise(bounds):
        back = 8 * data.draw(st.integers(0, 3), "back")
        pieces.append((max(0, a - back), b))
    if len(pieces) == 1:
        return  # one piece from 0 to the end is no fragment
    random.Random(data.draw(st.integers(0, 1000), "seed")).shuffle(pieces)
    r = reasm()
    [(proto, got)] = whole(add4(r, _frag4(5, a, payload[a:b], b < n, proto=250)) for a, b in pieces)
    assert got == payload and proto == 250


def test_bad_and_too_big_fragments_are_refused():
    r = reasm()
    assert add4(r, _frag4(3, 0, b"1234567", True)) is None  # not a multiple of 8 but more follow
    assert r.c["frag_bad"] == 1
    assert add4(r, _frag4(3, 8190 * 8, bytes(64), False)) is None  # past the largest datagram
    assert r.c["frag_too_big"] == 1 and not r.table


def test_conflicting_overlap_drops_datagram():
    x, y = b"A" * 16, b"B" * 8 + b"A" * 8  # y disagrees with x on bytes 8..16
    r = reasm()
    assert whole(add4(r, p) for p in [_frag4(1, 0, x, True), _frag4(1, 8, y, True),
                                       _frag4(1, 24, b"C" * 8, False)]) == []
    assert r.c["frag_conflict"] == 1
    # a conflicting second "last" fragment (different total length) also drops it
    assert whole(add4(r, p) for p in [_frag4(2, 0, x[:8], True), _frag4(2, 16, b"C" * 8, False),
                                       _frag4(2, 16, b"C" * 16, False), _frag4(2, 8, x[:8], True)]) == []
    assert r.c["frag_conflict"] == 2
    # data beyond a known end
    whole(add4(r, p) for p in [_frag4(3, 16, b"C" * 8, False), _frag4(3, 16, b"C" * 16, True)])
    assert r.c["frag_conflict"] == 3
    r.expire(100.0)
    assert r.bytes == 0


def test_flood_one_source_stays_in_budget_and_others_complete():
    budget = 64 * 1024
    r = reasm(max_bytes=budget, max_datagrams=32, per_source=8)
    legit = [raw(f) for f in fragment(IP(src=B4s, dst=A4s, id=1) / UDP() / bytes(5000), 1000)]
    got = []
    li = 0
    for i in range(3000):
        got += whole([add4(r, _frag4(100 + i, 0, bytes(1000), True, src=C4s), 0.001 * i)])
        assert r.bytes <= budget and len(r.table) <= 32
        if i % 40 == 39 and li < len(legit):
            got += whole([add4(r, legit[li], 0.001 * i)])
            li += 1
    assert li == len(legit)
    assert len(got) == 1 and len(got[0][1]) == 5008
    assert r.c["frag_evicted"] > 2900


def test_flood_spoofed_sources_stays_in_budget():
    budget = 32 * 1024
    r = reasm(max_bytes=budget, max_datagrams=64, per_source=4)
    legit = [raw(f) for f in fragment(IP(src=B4s, dst=A4s, id=1) / UDP() / bytes(3000), 1000)]
    rnd = random.Random(1)
    got = []
    li = 0
    for i in range(2000):
        src = f"10.{rnd.randrange(1, 250)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
        got += whole([add4(r, _frag4(i, 8 * rnd.randrange(100), bytes(800), True, src=src))])
        assert r.bytes <= budget
        if i >= 1000 and i % 3 == 0 and li < len(legit):
            got += whole([add4(r, legit[li])])
            li += 1
    assert len(got) == 1 and len(got[0][1]) == 3008
    assert r.c["frag_evicted"] + r.c["frag_no_memory"] > 1500


def test_per_datagram_budget():
    r = reasm(datagram_bytes=4096)
    assert whole(add4(r, _frag4(1, i * 8, bytes(8), True)) for i in range(100)) == []
    assert r.c["frag_over_budget"] == 1 and r.bytes < 4096


def test_timeout_frees_memory_and_the_timer_is_not_refreshed():
    r = reasm()
    frags = [raw(f) for f in fragment(IP(src=B4s, dst=A4s, id=42) / UDP(sport=3, dport=4) / bytes(3000), 1000)]
    add4(r, frags[0], 1.0)
    add4(r, frags[2], 20.0)
    assert len(r.table) == 1 and r.bytes > 2000
    assert r.next_deadline() == pytest.approx(31.0)
    assert r.expire(30.9) == []
    [gone] = r.expire(31.0)
    assert gone.key[2] == 42 and not r.table and r.bytes == 0
    assert r.c["frag_timeout"] == 1 and r.next_deadline() is None
    # the late fragment starts over
    add4(r, frags[1], 40.0)
    assert len(r.table) == 1


# --------------------------------------------------------------------------- IPv6


@FAST
@given(data=st.data())
def test_reassembly6_any_order(data):
    size = data.draw(st.integers(1, 3000), "size")
    fragsize = data.draw(st.integers(max(64, 48 + (size + 8) // 30 + 16), 1280), "fragsize")
    payload = random.Random(size).randbytes(size)
    ident = data.draw(st.integers(0, 2**32 - 1), "ident")
    dgram = IPv6(src=B6s, dst=A6s) / IPv6ExtHdrFragment(id=ident) / UDP(sport=5, dport=6) / payload
    frags = [raw(f) for f in fragment6(dgram, fragsize)]
    order = data.draw(st.permutations(range(len(frags))), "order")
    seq = [frags[i] for i in order]
    dup = data.draw(st.none() | st.integers(0, len(seq) - 1), "dup")
    if dup is not None and len(seq) > 1:
        seq.insert(len(seq) - 1, seq[min(dup, len(seq) - 2)])
    r = reasm()
    [(nh, got)] = whole(add6(r, p) for p in seq)
    assert nh == 17 and got == raw(dgram)[48:]
    assert r.bytes == 0


def test_reassembly6_any_overlap_drops_but_duplicates_do_not():
    payload = bytes(range(48))
    r = reasm()
    assert whole(add6(r, p) for p in [_frag6(1, 0, payload[:24], True, 253), _frag6(1, 16, payload[16:40], True, 253),
                                       _frag6(1, 40, payload[40:], False, 253)]) == []
    assert r.c["frag_conflict"] == 1
    [(nh, got)] = whole(add6(r, p) for p in [_frag6(2, 0, payload[:24], True, 253),
                                              _frag6(2, 0, payload[:24], True, 253),
                                              _frag6(2, 24, payload[24:], False, 253)])
    assert got == payload and nh == 253 and r.c["frag_dup"] == 1
