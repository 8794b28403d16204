"""IP_RECVERR's error queue on usnet's datagram face (usnet.proto.errqueue, usnet.client.dgram).

ICMP errors forged onto a memwire (no root) quoting what the socket sent: every one is queued
(soft ones too, on an unconnected socket), read with recvmsg(MSG_ERRQUEUE) as Linux's
sock_extended_err with the ICMP type, code and info; reading one makes the next one's errno the
socket's error (Linux's sock_dequeue_err_skb); turning the option off empties the queue; the
queue is bounded by SO_RCVBUF. The kernel's answers to the same calls are compared in
tests/interop/test_sockopts_linux.py.
"""

from __future__ import annotations

import errno
import select
import socket as std
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.domain import test_lowlat
from tests.domain.test_icmp_errors import A, B, delivered, icmp_error_frame, sent_by
from tests.helpers.util import wait_until
from usnet import socket as us
from usnet.proto.errqueue import SO_EE_ORIGIN_ICMP, icmp_report
from usnet.proto.wire import icmp as wicmp
from usnet.proto.wire.ipv4 import build_ipv4_header, ip_bytes

half = test_lowlat.half
MSG_ERRQUEUE, IP_RECVERR = 0x2000, 11
SOL_IP = std.IPPROTO_IP


def _sock(half) -> us.socket:
    s = us.socket(std.AF_INET, std.SOCK_DGRAM, client=half.c, netif="a")
    s.bind((A, 5000))
    s.setsockopt(SOL_IP, IP_RECVERR, 1)
    return s


def _forge(half, n: int = 1, **kw) -> None:
    _forge_each(half, *[kw] * n)


def _forge_each(half, *kws: dict) -> None:
    """ICMP errors about a datagram A:5000 sent to B:6000, one a `kws` entry, in one batch: they
    reach the flow's ring together, so the socket takes them in one pump (sent one by one, the
    stack thread could take the first before the second came, and a read of SO_ERROR, which looks
    at the socket and not at its ring, would miss the second)."""
    before = delivered(half.d, 5000)
    half.wire.b.send_batch([icmp_error_frame(half, sent_by(A, 5000, B, 6000), **kw) for kw in kws])
    wait_until(lambda: delivered(half.d, 5000) == before + len(kws), 5, "the errors to reach the flow's ring")


def _ee(s) -> tuple:
    data, anc, flags, addr = s.recvmsg(64, 256, MSG_ERRQUEUE)
    ((level, kind, blob),) = anc
    assert (level, kind, flags, addr, data) == (SOL_IP, IP_RECVERR, MSG_ERRQUEUE, (B, 6000), b"x" * 8)
    return struct.unpack("=IBBBBII", blob[:16])


@pytest.mark.parametrize("typ, code, mtu, want", [
    (11, 0, 0, (errno.EHOSTUNREACH, SO_EE_ORIGIN_ICMP, 11, 0, 0, 0, 0)),  # soft: told with IP_RECVERR only
    (3, 1, 0, (errno.EHOSTUNREACH, SO_EE_ORIGIN_ICMP, 3, 1, 0, 0, 0)),  # host unreachable: soft too
    (3, 4, 1400, (errno.EMSGSIZE, SO_EE_ORIGIN_ICMP, 3, 4, 0, 1400, 0)),  # fragmentation needed: the MTU
    (12, 0, 0, (errno.EPROTO, SO_EE_ORIGIN_ICMP, 12, 0, 0, 0, 0)),
])
def test_every_error_is_queued_with_its_type_code_and_info(half, typ, code, mtu, want):
    s = _sock(half)
    with s:
        _forge(half, typ=typ, code=code, mtu=mtu)
        assert select.select([s], [], [], 5)[0]
        assert _ee(s) == want
        with pytest.raises(BlockingIOError):
            s.recvmsg(64, 256, MSG_ERRQUEUE)
        assert s.getsockopt(std.SOL_SOCKET, std.SO_ERROR) == 0 and not select.select([s], [], [], 0)[0]


def test_reading_one_makes_the_next_ones_errno_the_sockets_error(half):
    s = _sock(half)
    with s:
        _forge_each(half, {"typ": 3, "code": 3}, {"typ": 11, "code": 0})
        assert _ee(s)[0] == errno.ECONNREFUSED
        assert s.getsockopt(std.SOL_SOCKET, std.SO_ERROR) == errno.EHOSTUNREACH  # the next one's
        assert _ee(s)[0] == errno.EHOSTUNREACH
        assert s.getsockopt(std.SOL_SOCKET, std.SO_ERROR) == 0


def test_turning_it_off_empties_the_queue_and_queues_no_more(half):
    s = _sock(half)
    with s:
        _forge(half, n=2)
        assert select.select([s], [], [], 5)[0]
        s.setsockopt(SOL_IP, IP_RECVERR, 0)
        with pytest.raises(BlockingIOError):
            s.recvmsg(64, 256, MSG_ERRQUEUE)
        _forge(half)  # port unreachable on an unconnected socket without the option: not told
        with pytest.raises(BlockingIOError):
            s.recvmsg(64, 256, MSG_ERRQUEUE)
        with pytest.raises(BlockingIOError):
            s.recv(100, std.MSG_DONTWAIT)


def test_the_queue_is_bounded_by_the_receive_buffer(half):
    """Charged as datagrams are (payload and Linux's skb overhead) against SO_RCVBUF's 2304 minimum:
    two reports of eight bytes fit, the rest are dropped, as Linux's sock_queue_err_skb drops."""
    s = _sock(half)
    with s:
        s.setsockopt(std.SOL_SOCKET, std.SO_RCVBUF, 1)
        _forge(half, n=5)
        got = 0
        for _ in range(10):
            try:
                _ee(s)
            except BlockingIOError:
                break
            got += 1
        assert got == 2


def test_a_stream_sockets_ip_recverr_is_kept_and_its_error_queue_is_empty():
    """IP_RECVERR on TCP (tests/interop/test_tcp_recverr.py): kept as Linux keeps it, and
    recvmsg(MSG_ERRQUEUE) of a TCP socket is EAGAIN, blocking or not, as Linux's empty queue."""
    with us.socket(std.AF_INET, std.SOCK_STREAM) as t, std.socket(std.AF_INET, std.SOCK_STREAM) as k:
        for s in (t, k):
            s.setsockopt(SOL_IP, IP_RECVERR, 5)
            assert s.getsockopt(SOL_IP, IP_RECVERR) == 1
            with pytest.raises(BlockingIOError):
                s.recvmsg(100, 100, std.MSG_ERRQUEUE)


# -- the report of an ICMP error, sans-I/O ------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_any_bytes_give_a_report_or_none_never_an_exception(junk):
    icmp_report(junk)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([(3, 3), (3, 4), (3, 13), (11, 0), (12, 0)]), st.integers(0, 0xFFFF),
       st.binary(max_size=64), st.integers(1, 0xFFFF), st.integers(1, 0xFFFF), st.integers(0, 60))
def test_a_forged_error_reads_back_what_it_quotes(tc, word, payload, sport, dport, cut):
    typ, code = tc
    from tests.helpers.util import udp_segment

    seg = udp_segment(sport, dport, payload, ip_bytes(A), ip_bytes(B))
    quoted = build_ipv4_header(ip_bytes(A), ip_bytes(B), 17, len(seg)) + seg
    quoted = quoted[: max(28, len(quoted) - cut)]
    msg = wicmp.build_icmp(typ, code, word, word, quoted)
    r = icmp_report(build_ipv4_header(b"\x0a\x09\x00\x07", ip_bytes(A), 1, len(msg)) + msg)
    assert r is not None
    assert (r.type, r.code, r.src, r.sport, r.dst, r.dport, r.offender) == (
        typ, code, ip_bytes(A), sport, ip_bytes(B), dport, b"\x0a\x09\x00\x07")
    assert r.payload == quoted[28:]
    assert r.info == (word >> 8 if typ == 12 else word if (typ, code) == (3, 4) else 0)


def test_an_icmpv6_packet_too_big_reports_its_mtu_and_the_ipv6_layout():
    from usnet.proto.errqueue import IPV6_RECVERR, SO_EE_ORIGIN_ICMP6, SOL_IPV6, pack_cmsg
    from usnet.proto.wire import icmpv6 as w6
    from usnet.proto.wire.ipv6 import build_ipv6_header

    a, b, router = (bytes.fromhex("fd00000000000000000000000000000" + x) for x in "129")
    seg = struct.pack("!HHHH", 5000, 6000, 12, 0) + b"ping"  # (the quote's checksum is not checked)
    quoted = build_ipv6_header(a, b, 17, len(seg), 64, 0) + seg
    msg = w6.build_error6(w6.PACKET_TOO_BIG, 0, quoted, router, a, param=1280)
    r = icmp_report(build_ipv6_header(router, a, 58, len(msg), 64, 0) + msg)
    assert r is not None and (r.errno, r.origin, r.type, r.info, r.payload) == (
        errno.EMSGSIZE, SO_EE_ORIGIN_ICMP6, w6.PACKET_TOO_BIG, 1280, b"ping")
    level, kind, blob = pack_cmsg(r)
    assert (level, kind, len(blob)) == (SOL_IPV6, IPV6_RECVERR, 16 + 28)  # sock_extended_err + sockaddr_in6
    assert struct.unpack("=H", blob[16:18])[0] == std.AF_INET6 and blob[24:40] == router
