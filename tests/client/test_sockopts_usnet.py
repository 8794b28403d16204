"""Socket options of issue 16 between two usnet stacks on a memwire (no root): SO_BINDTODEVICE
names a netif of the domain, TCP_CORK holds a header for its body through the socket face and
an accepted connection inherits it, TCP_QUICKACK reads the connection's interactive bit. The
kernel's answers to the same calls are compared in tests/interop/test_sockopts_linux.py."""

from __future__ import annotations

import errno
import socket as std

import pytest

from tests.helpers.util import listen_on_b, memwire_domain
from usnet import socket as us

B_IP = "10.9.0.2"
SO_BINDTODEVICE, TCP_CORK, TCP_QUICKACK = 25, 3, 12


@pytest.fixture
def c():
    with memwire_domain() as (_d, client):
        yield client


def _errno(f, *args) -> str:
    try:
        f(*args)
    except OSError as e:
        return errno.errorcode[e.errno]
    return "ok"


@pytest.mark.parametrize("kind", [std.SOCK_STREAM, std.SOCK_DGRAM])
def test_bindtodevice_chooses_a_netif_of_the_domain_by_name(c, kind):
    """No netif= given: SO_BINDTODEVICE "a" puts the socket on netif "a" (it connects from its
    address); a name the domain lacks is ENODEV (Linux's answer for a device it lacks); once
    the flow is on "a", "b" is EINVAL, "a" and "" are taken."""
    srv = listen_on_b(c, 8301, timeout=10) if kind == std.SOCK_STREAM else None
    peer = None
    if kind == std.SOCK_DGRAM:
        peer = us.socket(std.AF_INET, std.SOCK_DGRAM, client=c, netif="b")
        peer.bind(("", 8301))
    s = us.socket(std.AF_INET, kind, client=c)
    try:
        s.settimeout(10)
        assert _errno(s.setsockopt, std.SOL_SOCKET, SO_BINDTODEVICE, b"eth9") == "ENODEV"
        assert s.getsockopt(std.SOL_SOCKET, SO_BINDTODEVICE) == 0  # unbound: nothing
        s.setsockopt(std.SOL_SOCKET, SO_BINDTODEVICE, b"a")
        assert s.getsockopt(std.SOL_SOCKET, SO_BINDTODEVICE, 16) == b"a\0"
        assert _errno(s.getsockopt, std.SOL_SOCKET, SO_BINDTODEVICE, 4) == "EINVAL"  # < IFNAMSIZ
        s.connect((B_IP, 8301))
        assert s.getsockname()[0] == "10.9.0.1"
        assert _errno(s.setsockopt, std.SOL_SOCKET, SO_BINDTODEVICE, b"b") == "EINVAL"
        s.setsockopt(std.SOL_SOCKET, SO_BINDTODEVICE, b"a")
        if srv is not None:
            conn, addr = srv.accept()
            assert addr[0] == "10.9.0.1"
            conn.close()
        else:
            s.send(b"x")
            assert peer is not None and peer.recvfrom(10) == (b"x", ("10.9.0.1", s.getsockname()[1]))
    finally:
        s.close()
        for x in (srv, peer):
            if x is not None:
                x.close()


def test_cork_holds_a_header_for_its_body_and_is_inherited(c):
    """Corked through the socket face, a header and a body written apart leave as one segment
    (the sender's segment count says so); a listener's cork is its accepted connections'."""
    srv = listen_on_b(c, 8302, timeout=10)
    srv.setsockopt(std.IPPROTO_TCP, TCP_CORK, 1)
    cl = us.create_connection((B_IP, 8302), timeout=10, client=c, netif="a")
    conn, _ = srv.accept()
    try:
        conn.settimeout(10)
        assert conn.getsockopt(std.IPPROTO_TCP, TCP_CORK) == 1
        conn.setsockopt(std.IPPROTO_TCP, std.TCP_NODELAY, 0)  # (no push: the cork holds)
        before = conn.tcp_info()["segs_out"]
        conn.sendall(b"H" * 100)
        conn.sendall(b"B" * 500)
        conn.setsockopt(std.IPPROTO_TCP, TCP_CORK, 0)
        got = b""
        for _ in range(100):
            if len(got) >= 600:
                break
            got += cl.recv(1000)
        assert got == b"H" * 100 + b"B" * 500
        assert conn.tcp_info()["segs_out"] - before == 1
        # TCP_QUICKACK: 0 makes the connection interactive, 1 ends it; it reads back so
        conn.setsockopt(std.IPPROTO_TCP, TCP_QUICKACK, 0)
        assert conn.getsockopt(std.IPPROTO_TCP, TCP_QUICKACK) == 0
        conn.setsockopt(std.IPPROTO_TCP, TCP_QUICKACK, 1)
        assert conn.getsockopt(std.IPPROTO_TCP, TCP_QUICKACK) == 1
    finally:
        for s in (cl, conn, srv):
            s.close()
