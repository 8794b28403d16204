"""Dual stack, as Linux's: an AF_INET6 TCP socket with IPV6_V6ONLY off (the default) takes IPv4
too, naming its IPv4 peers as IPv4-mapped addresses (::ffff:a.b.c.d). The option's rules are
compared with a kernel socket's (no traffic leaves: the kernel sockets are never bound to send)."""

import errno
import socket as std

import pytest

import usnet.socket as us
from tests.helpers.util import memwire_domain

A_IP, B_IP, A6, B6 = "10.9.0.1", "10.9.0.2", "fd00:9::1", "fd00:9::2"


@pytest.fixture
def c():
    with memwire_domain(a6=f"{A6}/64", b6=f"{B6}/64") as (_d, client):
        yield client


def _kernel_v6only_default() -> int:
    with std.socket(std.AF_INET6, std.SOCK_STREAM) as k:
        return k.getsockopt(std.IPPROTO_IPV6, std.IPV6_V6ONLY)


def test_the_option_reads_and_sets_as_the_kernels(c):
    """IPV6_V6ONLY reads what the kernel's default is (net.ipv6.bindv6only), sets either way
    before bind, and is EINVAL once bound, on usnet's socket as on the kernel's."""
    assert us.has_dualstack_ipv6() is std.has_dualstack_ipv6() is True
    with us.socket(us.AF_INET6, client=c, netif="b") as s, std.socket(std.AF_INET6) as k:
        assert s.getsockopt(std.IPPROTO_IPV6, std.IPV6_V6ONLY) == _kernel_v6only_default()
        for sock in (s, k):
            sock.setsockopt(std.IPPROTO_IPV6, std.IPV6_V6ONLY, 1)
            assert sock.getsockopt(std.IPPROTO_IPV6, std.IPV6_V6ONLY) == 1
            sock.setsockopt(std.IPPROTO_IPV6, std.IPV6_V6ONLY, 0)
            assert sock.getsockopt(std.IPPROTO_IPV6, std.IPV6_V6ONLY) == 0
        s.bind(("", 0))
        k.bind(("::1", 0))  # bound, on the kernel's loopback: nothing is sent
        for sock in (s, k):
            with pytest.raises(OSError) as e:
                sock.setsockopt(std.IPPROTO_IPV6, std.IPV6_V6ONLY, 1)
            assert e.value.errno == errno.EINVAL


def _listener6(c, port: int, v6only: int) -> us.socket:
    """An AF_INET6 listener on netif b at [::]:`port` with IPV6_V6ONLY `v6only`."""
    srv = us.socket(us.AF_INET6, client=c, netif="b")
    srv.setsockopt(std.IPPROTO_IPV6, std.IPV6_V6ONLY, v6only)
    srv.bind(("::", port))
    srv.listen(8)
    srv.settimeout(10)
    return srv


def test_a_dual_stack_listener_takes_ipv4_and_names_it_mapped(c):
    srv = _listener6(c, 8201, 0)
    cl4 = us.create_connection((B_IP, 8201), timeout=10, client=c, netif="a")
    conn4, peer4 = srv.accept()
    assert peer4 == ("::ffff:" + A_IP, cl4.getsockname()[1], 0, 0)
    assert conn4.family == us.AF_INET6 and conn4.getpeername() == peer4
    assert conn4.getsockname() == ("::ffff:" + B_IP, 8201, 0, 0)
    cl6 = us.create_connection((B6, 8201), timeout=10, client=c, netif="a")
    conn6, peer6 = srv.accept()
    assert peer6[0] == A6 and conn6.getsockname()[:2] == (B6, 8201)
    for conn, cl in ((conn4, cl4), (conn6, cl6)):
        conn.settimeout(10)
        cl.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        conn.sendall(b"pong")
        assert cl.recv(4) == b"pong"
    for s in (cl4, conn4, cl6, conn6, srv):
        s.close()


def test_a_dual_stack_socket_holds_the_port_in_ipv4_and_a_v6only_one_does_not(c):
    """Linux binds a dual-stack :: port in both families (EADDRINUSE for IPv4's after it, and
    before it); IPV6_V6ONLY leaves IPv4's free. An ephemeral port is one free in both."""
    dual = us.socket(us.AF_INET6, client=c, netif="b")
    dual.bind(("::", 8202))
    with us.socket(us.AF_INET, client=c, netif="b") as s4, pytest.raises(OSError) as e:
        s4.bind(("", 8202))
    assert e.value.errno == errno.EADDRINUSE
    dual.close()
    with us.socket(us.AF_INET, client=c, netif="b") as s4:
        s4.bind(("", 8203))
        with us.socket(us.AF_INET6, client=c, netif="b") as d2, pytest.raises(OSError) as e:
            d2.bind(("::", 8203))
        assert e.value.errno == errno.EADDRINUSE
        with us.socket(us.AF_INET6, client=c, netif="b") as only6:
            only6.setsockopt(std.IPPROTO_IPV6, std.IPV6_V6ONLY, 1)
            only6.bind(("::", 8203))
    with us.socket(us.AF_INET6, client=c, netif="b") as eph:
        eph.bind(("::", 0))
        port = eph.getsockname()[1]
        with us.socket(us.AF_INET, client=c, netif="b") as s4, pytest.raises(OSError) as e:
            s4.bind(("", port))
        assert e.value.errno == errno.EADDRINUSE


def test_a_v6only_listener_is_deaf_to_ipv4(c):
    srv = _listener6(c, 8204, 1)
    with pytest.raises(ConnectionRefusedError):
        us.create_connection((B_IP, 8204), timeout=10, client=c, netif="a")
    srv.close()


def test_connect_to_a_mapped_address_goes_over_ipv4(c):
    """tcp_v6_connect: a dual-stack socket connects to ::ffff:a.b.c.d over IPv4 and names both
    ends mapped; a v6only one is ENETUNREACH."""
    srv = us.create_server(("", 8205), client=c, netif="b")
    srv.settimeout(10)
    cl = us.socket(us.AF_INET6, client=c, netif="a")
    cl.settimeout(10)
    cl.connect(("::ffff:" + B_IP, 8205))
    conn, peer = srv.accept()
    assert peer == (A_IP, cl.getsockname()[1])
    assert cl.getpeername() == ("::ffff:" + B_IP, 8205, 0, 0) and cl.getsockname()[0] == "::ffff:" + A_IP
    cl.sendall(b"x")
    conn.settimeout(10)
    assert conn.recv(1) == b"x"
    with us.socket(us.AF_INET6, client=c, netif="a") as only6:
        only6.setsockopt(std.IPPROTO_IPV6, std.IPV6_V6ONLY, 1)
        with pytest.raises(OSError) as e:
            only6.connect(("::ffff:" + B_IP, 8205))
        assert e.value.errno == errno.ENETUNREACH
    for s in (cl, conn, srv):
        s.close()


def test_create_server_dualstack_as_the_standard_ones(c):
    """The standard create_server: dualstack_ipv6 takes IPv4 too; without it an AF_INET6 server is
    IPV6_V6ONLY (so 0.0.0.0 may share its port); dualstack_ipv6 on AF_INET is ValueError."""
    with pytest.raises(ValueError, match="requires AF_INET6"):
        us.create_server(("", 8206), dualstack_ipv6=True, client=c, netif="b")
    srv = us.create_server(("", 8206), family=us.AF_INET6, dualstack_ipv6=True, client=c, netif="b")
    srv.settimeout(10)
    cl = us.create_connection((B_IP, 8206), timeout=10, client=c, netif="a")
    conn, peer = srv.accept()
    assert peer[0] == "::ffff:" + A_IP
    only6 = us.create_server(("", 8207), family=us.AF_INET6, client=c, netif="b")
    assert only6.getsockopt(std.IPPROTO_IPV6, std.IPV6_V6ONLY) == 1
    four = us.create_server(("", 8207), client=c, netif="b")  # the same port, IPv4's
    for s in (cl, conn, srv, only6, four):
        s.close()


def test_a_dual_stack_udp_socket_takes_ipv4_and_names_it_mapped(c):
    """UDP as TCP: :: hears IPv4 datagrams (from ::ffff:a.b.c.d), answers to that name leave over
    IPv4, a connected one names both ends mapped; its port is IPv4's too; a v6only one refuses
    a mapped destination (ENETUNREACH, as udpv6_sendmsg) and leaves IPv4's port free."""
    srv = us.socket(us.AF_INET6, us.SOCK_DGRAM, client=c, netif="b")
    assert srv.getsockopt(std.IPPROTO_IPV6, std.IPV6_V6ONLY) == _kernel_v6only_default()
    srv.bind(("::", 8211))
    srv.settimeout(10)
    with us.socket(us.AF_INET, us.SOCK_DGRAM, client=c, netif="b") as s4, pytest.raises(OSError) as e:
        s4.bind(("", 8211))
    assert e.value.errno == errno.EADDRINUSE
    c4 = us.socket(us.AF_INET, us.SOCK_DGRAM, client=c, netif="a")
    c6 = us.socket(us.AF_INET6, us.SOCK_DGRAM, client=c, netif="a")
    for cl, dest in ((c4, B_IP), (c6, B6)):
        cl.settimeout(10)
        cl.sendto(b"hi", (dest, 8211))
        data, peer = srv.recvfrom(100)
        srv.sendto(data.upper(), peer)
        assert cl.recvfrom(100) == (b"HI", (dest, 8211) if cl is c4 else (dest, 8211, 0, 0))
    assert peer[0] == A6
    c4.sendto(b"again", (B_IP, 8211))
    assert srv.recvfrom(100)[1] == ("::ffff:" + A_IP, c4.getsockname()[1], 0, 0)
    dual = us.socket(us.AF_INET6, us.SOCK_DGRAM, client=c, netif="a")
    dual.settimeout(10)
    dual.connect(("::ffff:" + B_IP, 8211))
    dual.send(b"mapped")
    assert srv.recvfrom(100)[0] == b"mapped"
    assert dual.getpeername() == ("::ffff:" + B_IP, 8211, 0, 0) and dual.getsockname()[0] == "::ffff:" + A_IP
    only6 = us.socket(us.AF_INET6, us.SOCK_DGRAM, client=c, netif="b")
    only6.setsockopt(std.IPPROTO_IPV6, std.IPV6_V6ONLY, 1)
    only6.bind(("::", 8212))
    with pytest.raises(OSError) as e:
        only6.sendto(b"x", ("::ffff:" + A_IP, 9))
    assert e.value.errno == errno.ENETUNREACH
    with us.socket(us.AF_INET, us.SOCK_DGRAM, client=c, netif="b") as s4:
        s4.bind(("", 8212))
    for s in (srv, c4, c6, dual, only6):
        s.close()


def test_a_closed_listeners_port_binds_again_at_once(c):
    """Linux frees a listener's port at its close when no connection is left on it, so a server
    restarted in the same process binds it again at once, SO_REUSEADDR or not (usnet's flow goes a
    little after the close: bind waits for it). Both families of a dual-stack one; a socket that
    was bound only, too."""
    for family, host in ((us.AF_INET, ""), (us.AF_INET6, "::")):
        for _ in range(20):
            srv = us.socket(family, client=c, netif="b")
            srv.bind((host, 8208))
            srv.listen(4)
            srv.close()
        for _ in range(20):  # bound only, never listening: its port too
            with us.socket(family, client=c, netif="b") as s:
                s.bind((host, 8208))


def test_a_dual_stack_listener_without_ipv6_anywhere_takes_ipv4():
    """A domain with no IPv6 address and no loopback netif: Linux binds :: all the same, and a
    dual-stack one takes IPv4; a v6only one has nowhere to listen (EADDRNOTAVAIL, as before)."""
    with memwire_domain() as (_d, c):
        srv = us.create_server(("::", 8209), family=us.AF_INET6, dualstack_ipv6=True, client=c, netif="b")
        srv.settimeout(10)
        assert srv.getsockname() == ("::", 8209, 0, 0)
        cl = us.create_connection((B_IP, 8209), timeout=10, client=c, netif="a")
        conn, peer = srv.accept()
        assert peer == ("::ffff:" + A_IP, cl.getsockname()[1], 0, 0)
        with pytest.raises(OSError) as e:
            us.create_server(("::", 8210), family=us.AF_INET6, client=c, netif="b")
        assert e.value.errno == errno.EADDRNOTAVAIL
        u = us.socket(us.AF_INET6, us.SOCK_DGRAM, client=c, netif="b")  # UDP alike
        u.bind(("::", 8210))
        u.settimeout(10)
        with us.socket(us.AF_INET, us.SOCK_DGRAM, client=c, netif="a") as c4:
            c4.sendto(b"v4", (B_IP, 8210))
            assert u.recvfrom(10) == (b"v4", ("::ffff:" + A_IP, c4.getsockname()[1], 0, 0))
        for s in (cl, conn, srv, u):
            s.close()


def test_a_mapped_address_binds_that_ipv4_address(c):
    """inet6_bind: a dual-stack socket bound to ::ffff:a.b.c.d is bound to that IPv4 address alone
    (named mapped; IPv6 clients refused); with IPV6_V6ONLY it is EINVAL, on the kernel's socket
    as on usnet's (the kernel's bound on its loopback only: nothing is sent)."""
    with std.socket(std.AF_INET6) as k:
        k.bind(("::ffff:127.0.0.1", 0))
        assert k.getsockname()[0] == "::ffff:127.0.0.1"
    srv = us.socket(us.AF_INET6, client=c, netif="b")
    srv.bind(("::ffff:" + B_IP, 8213))
    srv.listen(4)
    srv.settimeout(10)
    assert srv.getsockname() == ("::ffff:" + B_IP, 8213, 0, 0)
    cl = us.create_connection((B_IP, 8213), timeout=10, client=c, netif="a")
    conn, peer = srv.accept()
    assert peer == ("::ffff:" + A_IP, cl.getsockname()[1], 0, 0)
    with pytest.raises(ConnectionRefusedError):
        us.create_connection((B6, 8213), timeout=10, client=c, netif="a")
    u = us.socket(us.AF_INET6, us.SOCK_DGRAM, client=c, netif="b")
    u.bind(("::ffff:" + B_IP, 8214))
    u.settimeout(10)
    with us.socket(us.AF_INET, us.SOCK_DGRAM, client=c, netif="a") as c4:
        c4.sendto(b"to a mapped name", (B_IP, 8214))
        assert u.recvfrom(100) == (b"to a mapped name", ("::ffff:" + A_IP, c4.getsockname()[1], 0, 0))
    for kind in (us.SOCK_STREAM, us.SOCK_DGRAM):
        with us.socket(us.AF_INET6, kind, client=c, netif="b") as s6, std.socket(std.AF_INET6, kind) as k6:
            for sock, host in ((s6, B_IP), (k6, "127.0.0.1")):
                sock.setsockopt(std.IPPROTO_IPV6, std.IPV6_V6ONLY, 1)
                with pytest.raises(OSError) as e:
                    sock.bind(("::ffff:" + host, 0))
                assert e.value.errno == errno.EINVAL
    for s in (cl, conn, srv, u):
        s.close()


def _mapped_any_walk(bind_port, make) -> list:
    """What binds beside a dual-stack socket bound to ::ffff:0.0.0.0: its name, an IPv6-only :: on
    its port (free: it holds no IPv6), an IPv4 0.0.0.0 on it (held), and IPV6_V6ONLY's refusal."""
    got = []
    s = make(std.AF_INET6)
    s.bind(("::ffff:0.0.0.0", bind_port))
    port = s.getsockname()[1]
    got.append(s.getsockname()[0])
    six = make(std.AF_INET6)
    six.setsockopt(std.IPPROTO_IPV6, std.IPV6_V6ONLY, 1)
    four = make(std.AF_INET)
    for other, addr in ((six, "::"), (four, "0.0.0.0")):
        try:
            other.bind((addr, port))
            got.append("ok")
        except OSError as e:
            got.append(errno.errorcode[e.errno])
    v6only = make(std.AF_INET6)
    v6only.setsockopt(std.IPPROTO_IPV6, std.IPV6_V6ONLY, 1)
    try:
        v6only.bind(("::ffff:0.0.0.0", 0))
        got.append("ok")
    except OSError as e:
        got.append(errno.errorcode[e.errno])
    for x in (six, four, v6only):
        x.close()
    return [*got, s]


@pytest.mark.parametrize("kind", [std.SOCK_STREAM, std.SOCK_DGRAM])
def test_the_mapped_wildcard_binds_ipv4s_wildcard_alone(c, kind):
    """inet6_bind: ::ffff:0.0.0.0 on a dual-stack socket is IPv4's wildcard, not ::: named so, it
    takes IPv4 (to any address of it) and not IPv6, and holds IPv4's port alone (an IPV6_V6ONLY ::
    binds beside it, 0.0.0.0 does not); EINVAL with IPV6_V6ONLY. The same binds on the kernel's
    sockets (bound, never sending)."""
    *kernel, k = _mapped_any_walk(0, lambda f: std.socket(f, kind))
    k.close()
    *usnet, s = _mapped_any_walk(8216 if kind == std.SOCK_STREAM else 8217,
                                 lambda f: us.socket(f, kind, client=c, netif="b"))
    assert usnet == kernel == ["::ffff:0.0.0.0", "ok", "EADDRINUSE", "EINVAL"]
    port = s.getsockname()[1]
    s.settimeout(10)
    if kind == std.SOCK_STREAM:
        s.listen(4)
        assert s.getsockname() == ("::ffff:0.0.0.0", port, 0, 0)
        cl = us.create_connection((B_IP, port), timeout=10, client=c, netif="a")
        conn, peer = s.accept()
        assert peer == ("::ffff:" + A_IP, cl.getsockname()[1], 0, 0)
        with pytest.raises(ConnectionRefusedError):
            us.create_connection((B6, port), timeout=10, client=c, netif="a")
        for x in (cl, conn):
            x.close()
    else:
        with us.socket(us.AF_INET, us.SOCK_DGRAM, client=c, netif="a") as c4:
            c4.sendto(b"to the mapped wildcard", (B_IP, port))
            assert s.recvfrom(100) == (b"to the mapped wildcard", ("::ffff:" + A_IP, c4.getsockname()[1], 0, 0))
    s.close()
