"""A socket's IP marking (IP_TTL / IPV6_UNICAST_HOPS, IP_TOS / IPV6_TCLASS) from TCP to the IP header.

usnet.proto.ipmark folds TTL and TOS into one int that rides where the ECN codepoint rode:
`TcpEndpoint.outgoing`'s fourth item, the IP layer's ``tos``. These check that every header
the IP layer makes for a mark is the one the wire builders make for its TTL and TOS (hypothesis,
against `build_ipv4_header`/`build_ipv6_header`), that a header template is never served for
another mark (the same destination, marks changing), that fragments carry it, and that a
connection's segments, an accepted connection's and a cookie SYN-ACK carry their configs' marks
with TCP's own ECN bits beside them.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.proto.test_tcp_connection import Net
from usnet.proto.ip import IpLayer
from usnet.proto.ipmark import TTL_SET, make_mark, mark_tos, mark_ttl
from usnet.proto.tcp import TcpState
from usnet.proto.tcp.config import TcpConfig
from usnet.proto.wire.checksum import verifies
from usnet.proto.wire.ipv4 import build_ipv4_header, parse_ipv4
from usnet.proto.wire.ipv6 import build_ipv6_header, parse_ipv6

A4, B4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
A6, B6 = bytes(15) + b"\1", bytes(15) + b"\2"
marks = st.builds(make_mark, st.integers(0, 255), st.one_of(st.none(), st.integers(0, 255)))


def test_a_mark_holds_a_ttl_and_a_tos_and_zero_is_the_defaults():
    assert make_mark() == 0 and mark_ttl(0, 64) == 64 and mark_tos(0) == 0
    m = make_mark(0xB8, 7)
    assert (mark_ttl(m, 64), mark_tos(m)) == (7, 0xB8) and m & TTL_SET
    assert mark_ttl(make_mark(0, 0), 64) == 0  # a hop limit of 0 is a value, not "unset"
    assert mark_ttl(make_mark(0xFF), 64) == 64 and mark_tos(make_mark(0xFF) | 2) == 0xFF
    for bad in ((256, None), (-1, None), (0, 256), (0, -1)):
        with pytest.raises(ValueError):
            make_mark(*bad)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(marks, st.sampled_from([0, 1, 2, 3]), st.integers(0, 1460)), min_size=1, max_size=12))
def test_every_ipv4_header_is_the_builders_for_its_mark_and_no_template_goes_stale(sends):
    """The same destination with marks changing: each header has its own mark's TTL and TOS (the
    ECN codepoint ORed in), and equals `build_ipv4_header`'s bytes field for field."""
    ip = IpLayer([A4])
    for mark, ect, plen in sends:
        h = ip.head(6, A4, B4, plen, 0.0, tos=mark | ect)
        assert h is not None and verifies(int.from_bytes(h, "big"))
        ident = int.from_bytes(h[4:6], "big")
        assert h == build_ipv4_header(A4, B4, 6, plen, ident, mark_ttl(mark, 64), True, mark_tos(mark) | ect)
        _ihl, total, _ident, _ff, ttl, proto, src, dst = parse_ipv4(h + bytes(plen), 0, None, True)
        assert (ttl, h[1], total, proto, src, dst) == (mark_ttl(mark, 64), mark_tos(mark) | ect, 20 + plen, 6, A4, B4)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(marks, st.sampled_from([0, 1, 2, 3]), st.integers(0, 65535)), min_size=1, max_size=12))
def test_every_ipv6_header_is_the_builders_for_its_mark(sends):
    ip = IpLayer([A6], mtu=65535)
    for mark, ect, plen in sends:
        h = ip.head(17, A6, B6, plen, 0.0, tos=mark | ect, segmented=True)
        assert h == build_ipv6_header(A6, B6, 17, plen, mark_ttl(mark, 64), mark_tos(mark) | ect)
        tclass, _fl, got_plen, nh, hop, src, dst = parse_ipv6(h + bytes(plen))
        assert (tclass, hop, got_plen, nh, src, dst) == (mark_tos(mark) | ect, mark_ttl(mark, 64), plen, 17, A6, B6)


def test_an_explicit_ttl_stays_the_layers_default_where_the_mark_sets_none():
    ip = IpLayer([A4, A6], ttl=50, hop_limit=51)
    assert ip.head(6, A4, B4, 10, 0.0, tos=make_mark(4))[8] == 50
    assert ip.head(6, A4, B4, 10, 0.0, tos=make_mark(4, 9))[8] == 9
    assert ip.head(6, A6, B6, 10, 0.0, tos=make_mark(4))[7] == 51
    assert ip.head(6, A6, B6, 10, 0.0, tos=make_mark(4, 0))[7] == 0


def test_fragments_carry_the_mark():
    ip = IpLayer([A4], mtu=576)
    mark = make_mark(0xB8, 12)
    frags = ip.output(17, A4, B4, bytes(2000), 0.0, tos=mark, df=False)
    assert len(frags) > 1
    for f in frags:
        assert (f[1], f[8]) == (0xB8, 12) and verifies(int.from_bytes(f[:20], "big"))


@pytest.mark.parametrize("cookies", [False, True])
def test_a_connections_segments_carry_its_mark_and_an_accepted_one_its_listeners(cookies):
    """The connector's connection has its own mark, a second connection on the same endpoint none;
    the listener's config gives its SYN-ACK (a cookie one too) and accepted connection theirs.
    ECN stays TCP's: the low two bits are the ECT codepoint only on segments TCP marks."""
    net = Net(b_opts={"syncookies": 2} if cookies else None)
    m_a, m_b = make_mark(0xB8, 33), make_mark(0x20, 99)
    net.b.listen(80, config=TcpConfig(ip_mark=m_b))
    marked = net.a.connect(B4, 80, net.now, local_port=5000, ip_mark=m_a)
    plain = net.a.connect(B4, 80, net.now, local_port=5001)
    marked.send(b"x" * 5000)
    plain.send(b"y" * 100)
    net.run(lambda: marked.state is TcpState.ESTABLISHED and plain.state is TcpState.ESTABLISHED, limit=5)
    net.run_for(1.0)  # the data and its ACKs
    by_port: dict[tuple[bytes, int], set[int]] = {}
    ect_seen = False
    for src, seg, ect in net.ecn_log:
        port = seg.sport if src == A4 else seg.dport
        by_port.setdefault((src, port), set()).add(ect & ~3)
        ect_seen |= bool(ect & 3)
    assert by_port[A4, 5000] == {m_a} and by_port[A4, 5001] == {0}
    assert by_port[B4, 5000] == {m_b} and by_port[B4, 5001] == {m_b}  # SYN-ACKs and the accepted
    assert ect_seen  # ECN was agreed and data went ECT(0) beside the mark
    assert len(net.b.listeners[80].accept_queue) == 2
    assert all(c.cfg.ip_mark == m_b for c in net.b.listeners[80].accept_queue)
    assert sorted(len(c.recv()) for c in net.b.listeners[80].accept_queue) == [100, 5000]
