"""IP_TTL, IPV6_UNICAST_HOPS, IP_TOS and IPV6_TCLASS on usnet.socket, against the kernel's (no root).

Each option's values are set and read back on a usnet socket and a kernel socket of the same
family and type, and must give the same answers (EINVAL where Linux refuses, -1 as the default,
TCP's ECN bits cleared). Then the mark reaches the connection: set before connect, on a live
connection, on a listener (before and after listen) for what it accepts, and on a UDP socket's
flow. The packets themselves are checked on a TAP in tests/interop/test_ip_marking.py.
"""

from __future__ import annotations

import errno
import socket as std

import pytest

from tests.helpers.util import listen_on_b, memwire_domain
from usnet import socket as us
from usnet.proto.ipmark import make_mark

B_IP = "10.9.0.2"
_VALUES = [None, 0xB9, None, 0, 1, 255, None, -1, None, 256, -2, 1000, 64, 0x2E, 3, None]
_OPTIONS = [(std.IPPROTO_IP, std.IP_TOS), (std.IPPROTO_IP, std.IP_TTL),
            (std.IPPROTO_IPV6, std.IPV6_UNICAST_HOPS), (std.IPPROTO_IPV6, std.IPV6_TCLASS)]


@pytest.fixture
def c():
    with memwire_domain() as (_d, client):
        yield client


def _outcome(s, level: int, opt: int, value=None):
    try:
        if value is None:
            return s.getsockopt(level, opt)
        s.setsockopt(level, opt, value)
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]


@pytest.mark.parametrize("family", [std.AF_INET, std.AF_INET6])
@pytest.mark.parametrize("kind", [std.SOCK_STREAM, std.SOCK_DGRAM])
def test_the_marking_options_answer_as_the_kernels(c, family, kind):
    for level, opt in _OPTIONS:
        with std.socket(family, kind) as k, us.socket(family, kind, client=c, netif="a") as u:
            for v in _VALUES:
                assert _outcome(u, level, opt, v) == _outcome(k, level, opt, v), (level, opt, v)
            # a one-byte value, as Linux's IPv4 options take it (IPv6's want an int: EINVAL)
            assert _outcome(u, level, opt, b"\x21") == _outcome(k, level, opt, b"\x21"), (level, opt)
            assert _outcome(u, level, opt) == _outcome(k, level, opt)


def test_a_connection_takes_its_sockets_mark_and_an_accepted_one_its_listeners(c):
    srv = listen_on_b(c, 8200, timeout=10)
    srv.setsockopt(std.IPPROTO_IP, std.IP_TTL, 99)  # after listen: what it accepts from now on
    cl = us.socket(client=c, netif="a")
    cl.settimeout(10)
    cl.setsockopt(std.IPPROTO_IP, std.IP_TTL, 33)
    cl.setsockopt(std.IPPROTO_IP, std.IP_TOS, 0xBB)  # TCP: the ECN bits are the stack's
    assert cl.getsockopt(std.IPPROTO_IP, std.IP_TOS) == 0xB8
    cl.connect((B_IP, 8200))
    other = us.create_connection((B_IP, 8200), timeout=10, client=c, netif="a")  # the same connector
    conn, _ = srv.accept()
    conn2, _ = srv.accept()
    try:
        assert cl.connection.cfg.ip_mark == make_mark(0xB8, 33)
        assert other.connection.cfg.ip_mark == 0  # a connection's mark is its own
        for a in (conn, conn2):
            assert a.connection.cfg.ip_mark == make_mark(0, 99)
            assert a.getsockopt(std.IPPROTO_IP, std.IP_TTL) == 99  # inherited, as on Linux
        cl.setsockopt(std.IPPROTO_IP, std.IP_TTL, -1)  # on a live connection: the default again
        assert cl.connection.cfg.ip_mark == make_mark(0xB8) and cl.getsockopt(std.IPPROTO_IP, std.IP_TTL) == 64
        if cl.connection.ecn_ok:  # as Linux, whose TCP puts ECT(0) into the socket's TOS with ECN
            assert cl.getsockopt(std.IPPROTO_IP, std.IP_TOS) == 0xBA
        cl.sendall(b"hello")  # the connection goes on with its new mark
        peer = conn if conn.getpeername()[1] == cl.getsockname()[1] else conn2
        assert peer.recv(5) == b"hello"
    finally:
        for s in (cl, other, conn, conn2, srv):
            s.close()


def test_a_listener_set_before_listen_marks_what_it_accepts(c):
    srv = us.socket(client=c, netif="b")
    srv.setsockopt(std.IPPROTO_IP, std.IP_TOS, 0x48)
    srv.bind(("", 8201))
    srv.listen()
    srv.settimeout(10)
    cl = us.create_connection((B_IP, 8201), timeout=10, client=c, netif="a")
    conn, _ = srv.accept()
    try:
        assert conn.connection.cfg.ip_mark == make_mark(0x48)
        assert conn.getsockopt(std.IPPROTO_IP, std.IP_TOS) & ~3 == 0x48
    finally:
        for s in (cl, conn, srv):
            s.close()


def test_a_udp_socket_marks_its_flow_before_and_after_it_has_one(c):
    u = us.socket(std.AF_INET, std.SOCK_DGRAM, client=c, netif="a")
    v = us.socket(std.AF_INET, std.SOCK_DGRAM, client=c, netif="b")
    v.bind(("", 8202))
    v.settimeout(10)
    try:
        u.setsockopt(std.IPPROTO_IP, std.IP_TOS, 0xB9)  # UDP: taken whole, ECN bits too
        u.sendto(b"one", (B_IP, 8202))  # the flow opens marked
        d = u._engine.d
        assert (d._ttl, d._tos) == (64, 0xB9)
        u.setsockopt(std.IPPROTO_IP, std.IP_TTL, 5)
        assert (d._ttl, d._tos) == (5, 0xB9)
        u.sendto(b"two", (B_IP, 8202))
        u.setsockopt(std.IPPROTO_IP, std.IP_TOS, 0)
        u.setsockopt(std.IPPROTO_IP, std.IP_TTL, -1)
        assert (d._ttl, d._tos) == (64, 0) and "_send_one" not in vars(d)  # back on the plain path
        u.sendto(b"three", (B_IP, 8202))
        assert [v.recv(10) for _ in range(3)] == [b"one", b"two", b"three"]
    finally:
        u.close()
        v.close()
