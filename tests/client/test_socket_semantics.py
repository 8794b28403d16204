"""The standard socket semantics of usnet.socket between two usnet stacks on a memwire (no root).

Readiness through select, poll, epoll and selectors; makefile keeping the connection;
recv flags; dup, detach, sendfile; create_connection/create_server; getsockopt;
re-listen; bind; UDP. The same checks against kernel peers are in
tests/interop/test_socket_semantics.py. Waits are select/poll calls with timeouts.
"""

from __future__ import annotations

import errno
import hashlib
import os
import select
import selectors
import socket as std
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers.util import digest_of, listen_on_b, memwire_domain
from usnet import socket as us
from usnet.client import Client

A_IP, B_IP = "10.9.0.1", "10.9.0.2"


@pytest.fixture
def c():
    with memwire_domain() as (_d, client):
        yield client


def _pair(c: Client, port: int) -> tuple[us.socket, us.socket, us.socket]:
    srv = listen_on_b(c, port)
    srv.settimeout(10)
    cl = us.create_connection((B_IP, port), timeout=10, client=c, netif="a")
    conn, _ = srv.accept()
    conn.settimeout(10)
    return srv, cl, conn


def _ready(s: us.socket) -> tuple[bool, bool]:
    r, w, _ = select.select([s], [s], [], 0)
    return bool(r), bool(w)


def test_a_listener_is_readable_only_while_a_connection_waits(c):
    srv = listen_on_b(c, 8100)
    srv.setblocking(False)
    assert _ready(srv) == (False, False)
    clients = [us.create_connection((B_IP, 8100), timeout=10, client=c, netif="a") for _ in range(3)]
    accepted = []
    for _ in range(10):  # each select either finds a connection or times out: never a spin
        if len(accepted) == 3 or not select.select([srv], [], [], 10)[0]:
            break
        accepted.append(srv.accept()[0])  # readable: accept does not block
    assert len(accepted) == 3
    assert _ready(srv) == (False, False)
    with pytest.raises(BlockingIOError):
        srv.accept()
    for s in (*clients, *accepted, srv):
        s.close()


def _descriptors() -> dict[str, str]:
    """The process's descriptors and what each is (a failure names the one made)."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            out[fd] = "(closed while listed: listdir's own)"
    return out


def test_a_socket_nobody_selects_on_holds_no_descriptor_and_shows_its_state_once_asked(c):
    """The readiness descriptor is made when `fileno` is first asked for: blocking calls alone
    cost no descriptor (two a socket before: RLIMIT_NOFILE bounded a server's connections at
    half the kernel's), and the descriptor made late shows the state at once."""
    srv = listen_on_b(c, 8119)
    srv.settimeout(10)
    first = us.create_connection((B_IP, 8119), timeout=10, client=c, netif="a")  # the connector's channel
    pairs = [(first, srv.accept()[0])]
    before = _descriptors()
    for _ in range(20):
        cl = us.create_connection((B_IP, 8119), timeout=10, client=c, netif="a")
        pairs.append((cl, srv.accept()[0]))
    assert _descriptors() == before  # 40 sockets more, no descriptor more (one more: what it is)
    cl, conn = pairs[1]
    cl.sendall(b"waiting")
    conn.settimeout(10)
    assert conn.recv(7, us.MSG_PEEK) == b"waiting"  # arrived, with no descriptor to show it
    assert _ready(conn) == (True, True)  # made now: readable and writable at once
    assert conn.recv(7) == b"waiting"
    assert _ready(conn) == (False, True)
    assert _ready(srv) == (False, False)
    for a, b in pairs:
        a.close()
        b.close()
    srv.close()


def test_poll_epoll_and_selectors_see_a_connection_as_select_does(c):
    srv, cl, conn = _pair(c, 8101)
    ep = select.epoll()
    ep.register(conn.fileno(), select.EPOLLIN | select.EPOLLOUT)
    po = select.poll()
    po.register(conn.fileno(), select.POLLIN | select.POLLOUT)
    sel = selectors.DefaultSelector()
    sel.register(conn, selectors.EVENT_READ | selectors.EVENT_WRITE)
    assert dict(ep.poll(0)) == {conn.fileno(): select.EPOLLOUT}
    assert dict(po.poll(0)) == {conn.fileno(): select.POLLOUT}
    assert [ev for _, ev in sel.select(0)] == [selectors.EVENT_WRITE]
    cl.sendall(b"x")
    assert select.select([conn], [], [], 10)[0]
    assert dict(ep.poll(0)) == {conn.fileno(): select.EPOLLIN | select.EPOLLOUT}
    assert [ev for _, ev in sel.select(0)] == [selectors.EVENT_READ | selectors.EVENT_WRITE]
    assert conn.recv(10) == b"x"
    assert dict(po.poll(0)) == {conn.fileno(): select.POLLOUT}
    ep.close()
    sel.close()
    for s in (cl, conn, srv):
        s.close()


def test_writable_means_send_will_not_block(c):
    srv, cl, conn = _pair(c, 8102)
    cl.setblocking(False)
    sent = 0
    for _ in range(10_000):  # fill the send buffer while it says writable
        if not _ready(cl)[1]:
            break
        sent += cl.send(b"x" * 65536)  # never BlockingIOError: writable means it takes bytes
    assert not _ready(cl)[1], "the send buffer never filled"
    got = 0
    while got < sent:
        assert select.select([conn], [], [], 10)[0]
        got += len(conn.recv(1 << 20))
    assert select.select([], [cl], [], 10)[1], "writable again once the peer read"
    for s in (cl, conn, srv):
        s.close()


def test_a_connecting_socket_is_neither_until_the_handshake_settles(c):
    srv = listen_on_b(c, 8103)
    cl = us.socket(client=c, netif="a")
    cl.setblocking(False)
    assert cl.connect_ex((B_IP, 8103)) == errno.EINPROGRESS
    assert cl.connect_ex((B_IP, 8103)) in (errno.EALREADY, 0)
    assert select.select([], [cl], [], 10)[1]
    assert cl.getsockopt(us.SOL_SOCKET, us.SO_ERROR) == 0
    assert cl.connect_ex((B_IP, 8103)) in (0, errno.EISCONN)
    # Nobody has 10.9.0.77: no ARP answer, so the handshake cannot settle while we look (a refused
    # connect can: its RST may come back before the first look, and then it is rightly ready).
    pending = us.socket(client=c, netif="a")
    pending.setblocking(False)
    with pytest.raises(BlockingIOError):
        pending.connect(("10.9.0.77", 8103))
    assert _ready(pending) == (False, False)
    pending.close()
    refused = us.socket(client=c, netif="a")
    refused.setblocking(False)
    with pytest.raises(BlockingIOError):
        refused.connect((B_IP, 9))
    assert select.select([], [refused], [], 10)[1]
    assert refused.getsockopt(us.SOL_SOCKET, us.SO_ERROR) == errno.ECONNREFUSED
    assert refused.getsockopt(us.SOL_SOCKET, us.SO_ERROR) == 0  # read once, as Linux clears it
    for s in (cl, refused, srv):
        s.close()


def test_close_with_a_makefile_open_keeps_the_connection_until_the_file_closes(c):
    srv, cl, conn = _pair(c, 8104)
    f = conn.makefile("rwb")
    conn.close()  # as http.client does with a response still being read
    assert conn.fileno() != -1
    cl.sendall(b"line one\nline two\n")
    assert f.readline() == b"line one\n"
    f.write(b"reply\n")
    f.flush()
    assert cl.recv(100) == b"reply\n"
    assert f.readline() == b"line two\n"
    f.close()  # the last reference: now the connection closes
    assert conn.fileno() == -1
    assert cl.recv(100) == b""  # the peer sees our FIN
    with pytest.raises(OSError) as e:
        conn.recv(1)
    assert e.value.errno == errno.EBADF
    cl.close()
    srv.close()


def test_recv_flags_peek_dontwait_waitall_and_the_into_calls(c):
    srv, cl, conn = _pair(c, 8105)
    conn.setblocking(True)  # (with a timeout, CPython polls first, MSG_DONTWAIT or not)
    with pytest.raises(BlockingIOError):
        conn.recv(10, us.MSG_DONTWAIT)  # a blocking socket, one call that does not wait
    conn.settimeout(10)
    cl.sendall(b"hello world")
    assert select.select([conn], [], [], 10)[0]
    assert conn.recv(5, us.MSG_PEEK) == b"hello"
    assert conn.recv(5, us.MSG_PEEK) == b"hello"  # not consumed
    buf = bytearray(5)
    assert conn.recv_into(buf, 0, us.MSG_PEEK) == 5 and buf == b"hello"
    assert conn.recvfrom_into(buf) == (5, None) and buf == b"hello"
    assert conn.recvfrom(100) == (b" world", None)
    assert _ready(conn)[0] is False
    cl.sendall(b"abc")
    cl.sendall(b"def")
    assert conn.recv(6, us.MSG_WAITALL) == b"abcdef"
    cl.close()
    assert conn.recv(10, us.MSG_WAITALL) == b""
    conn.close()
    srv.close()


def test_dup_detach_and_sendfile(c, tmp_path):
    srv, cl, conn = _pair(c, 8106)
    twin = conn.dup()
    assert twin.fileno() != conn.fileno()
    conn.close()  # the twin still holds the connection
    cl.sendall(b"to the twin")
    assert select.select([twin], [], [], 10)[0]
    assert twin.recv(100) == b"to the twin"
    fd = twin.detach()
    assert twin.fileno() == -1
    back = us.socket(fileno=fd)
    assert back.fileno() == fd and back.getpeername() == cl.getsockname()
    f = tmp_path / "blob"
    f.write_bytes(bytes(range(256)) * 1000)
    with f.open("rb") as fh:
        assert back.sendfile(fh, 1000, 50_000) == 50_000
        assert fh.tell() == 51_000
    got = b""
    while len(got) < 50_000:
        got += cl.recv(65536)
    assert got == f.read_bytes()[1000:51_000]
    back.close()
    assert cl.recv(10) == b""  # the last of them closed
    cl.close()
    srv.close()


def test_getsockopt_returns_what_was_set_and_real_values(c):
    srv, cl, conn = _pair(c, 8107)
    kernel = std.socket()
    try:
        for s in (cl, kernel):
            assert s.getsockopt(us.SOL_SOCKET, us.SO_TYPE) == std.SOCK_STREAM
            assert s.getsockopt(us.SOL_SOCKET, std.SO_PROTOCOL) == std.IPPROTO_TCP
            s.setsockopt(us.SOL_SOCKET, us.SO_RCVBUF, 65536)
            s.setsockopt(us.SOL_SOCKET, us.SO_SNDBUF, 32768)
            s.setsockopt(us.IPPROTO_TCP, us.TCP_NODELAY, 1)
            s.setsockopt(us.SOL_SOCKET, us.SO_KEEPALIVE, 1)
            s.setsockopt(us.SOL_SOCKET, us.SO_LINGER, struct.pack("ii", 1, 5))
        for opt in ((us.SOL_SOCKET, us.SO_RCVBUF), (us.SOL_SOCKET, us.SO_SNDBUF), (us.IPPROTO_TCP, us.TCP_NODELAY),
                    (us.SOL_SOCKET, us.SO_KEEPALIVE), (us.SOL_SOCKET, std.SO_ACCEPTCONN)):
            assert cl.getsockopt(*opt) == kernel.getsockopt(*opt), opt
        assert cl.getsockopt(us.SOL_SOCKET, us.SO_LINGER, 8) == kernel.getsockopt(us.SOL_SOCKET, us.SO_LINGER, 8)
    finally:
        kernel.close()
    assert cl.connection.rcvbuf_cap == 65536 and cl.connection.sndbuf_cap == 32768  # honoured
    assert srv.getsockopt(us.SOL_SOCKET, std.SO_ACCEPTCONN) == 1
    assert 500 < cl.getsockopt(us.IPPROTO_TCP, std.TCP_MAXSEG) <= 1460
    for s in (cl, conn, srv):
        s.close()


def test_re_listen_sets_the_backlog_and_bind_checks_the_address(c):
    srv = listen_on_b(c, 8108, backlog=1)
    srv.listen(64)  # as asyncio.start_server(sock=...) does: no EADDRINUSE
    with srv.engine.lock:
        assert srv.engine.tcp.listeners[8108].backlog == 64
    other = us.socket(client=c, netif="b")
    with pytest.raises(OSError) as e:
        other.bind(("10.9.0.77", 8109))
    assert e.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(OSError) as e:
        other.bind((B_IP, 8108))
    assert e.value.errno == errno.EADDRINUSE
    other.bind((B_IP, 0))  # the netif's own address; the port is taken at bind, as Linux does
    assert other.getsockname()[0] == B_IP and other.getsockname()[1] != 0
    other.close()
    srv.close()


def test_create_server_and_create_connection_have_the_standard_signatures(c):
    srv = us.create_server(("", 8110), backlog=4, client=c, netif="b")
    with pytest.raises(ValueError):
        us.create_server(("", 8111), dualstack_ipv6=True, client=c, netif="b")  # AF_INET (test_dual_stack)
    cl = us.create_connection((B_IP, 8110), 10, None, all_errors=True, client=c, netif="a")
    srv.settimeout(10)
    conn, addr = srv.accept()
    assert addr == cl.getsockname()
    with pytest.raises(ExceptionGroup):
        us.create_connection((B_IP, 9), 10, all_errors=True, client=c, netif="a")
    for s in (cl, conn, srv):
        s.close()


def test_the_module_has_the_standard_names():
    missing = {n for n in std.__all__ if not hasattr(us, n)}
    assert missing == {"fromfd", "socketpair"}  # kernel sockets (AF_UNIX, descriptors): the standard module's
    assert us.SOCK_DGRAM == std.SOCK_DGRAM and us.inet_aton is std.inet_aton and us.herror is std.herror
    assert us.SocketType is us.socket


def test_both_faces_have_every_method_of_the_standard_socket(c):
    """What a library may call on a socket (werkzeug calls set_inheritable on every server it
    makes) exists on the stream and the datagram face, and behaves as the kernel's does."""
    public = {n for n in dir(std.socket) if not n.startswith("_")}
    tcp = us.socket(client=c, netif="a")
    udp = us.socket(us.AF_INET, us.SOCK_DGRAM, client=c, netif="a")
    for s in (tcp, udp):
        assert {n for n in public if not hasattr(s, n)} == set()
        assert s.get_inheritable() is False  # as the kernel's: descriptors are made non-inheritable
        s.set_inheritable(True)
        assert s.get_inheritable() is True
        s.set_inheritable(False)
        with pytest.raises(OSError, match="AF_ALG"):
            s.sendmsg_afalg([b"x"], op=0)
        s.close()


def test_ipv6_v6only_on_an_inet_socket_is_enoprotoopt(c):
    """(Dual stack on AF_INET6 sockets: tests/client/test_dual_stack.py.)"""
    for kind in (us.SOCK_STREAM, us.SOCK_DGRAM):
        with us.socket(us.AF_INET, kind, client=c, netif="a") as s4, std.socket(std.AF_INET, kind) as k4:
            for sock in (s4, k4):  # the kernel's socket beside: the same errno
                with pytest.raises(OSError) as e:
                    sock.setsockopt(std.IPPROTO_IPV6, std.IPV6_V6ONLY, 1)
                assert e.value.errno == errno.ENOPROTOOPT


def test_recvmsg_into_scatters_as_the_kernels_does(c):
    srv, cl, conn = _pair(c, 8112)
    cl.sendall(b"hello world")
    assert select.select([conn], [], [], 10)[0]
    head, tail = bytearray(4), bytearray(20)
    got = conn.recvmsg_into([head, memoryview(tail)])
    assert got == (11, [], 0, None) and head == b"hell" and tail[:7] == b"o world"
    with pytest.raises(TypeError):
        conn.recvmsg_into([b"read-only"])
    for s in (cl, conn, srv):
        s.close()
    b = us.socket(us.AF_INET, us.SOCK_DGRAM, client=c, netif="b")
    a = us.socket(us.AF_INET, us.SOCK_DGRAM, client=c, netif="a")
    b.bind(("", 7101))
    b.settimeout(10)
    a.sendto(b"abcdef", (B_IP, 7101))
    three = bytearray(3)
    src = (A_IP, a.getsockname()[1])  # (getsockname is the wildcard's: bound by its first send)
    assert b.recvmsg_into([three]) == (3, [], us.MSG_TRUNC, src) and three == b"abc"  # cut: MSG_TRUNC
    a.sendto(b"xy", (B_IP, 7101))
    assert b.recvmsg(10) == (b"xy", [], 0, src)
    for s in (a, b):
        s.close()


def test_udp_through_usnet_socket(c):
    b = us.socket(us.AF_INET, us.SOCK_DGRAM, client=c, netif="b")
    a = us.socket(us.AF_INET, us.SOCK_DGRAM, client=c, netif="a")
    b.bind(("", 7100))
    assert _ready(b) == (False, True)
    a.sendto(b"one", (B_IP, 7100))
    assert select.select([b], [], [], 10)[0]
    assert a.getsockname()[0] == "0.0.0.0"  # bound to the wildcard by its first send, as on Linux
    src = (A_IP, a.getsockname()[1])
    assert b.recvfrom(100, us.MSG_PEEK) == (b"one", src)
    assert b.recvfrom(2) == (b"on", src)  # cut to the buffer; the rest is lost, as Linux
    assert _ready(b) == (False, True)
    with pytest.raises(BlockingIOError):
        b.recv(10, us.MSG_DONTWAIT)
    b.settimeout(0.05)
    with pytest.raises(TimeoutError):
        b.recv(10)
    with pytest.raises(OSError) as e:
        a.send(b"x")
    assert e.value.errno == errno.EDESTADDRREQ
    a.connect((B_IP, 7100))
    assert a.getpeername() == (B_IP, 7100) and a.getsockname() == src  # connected: its own address
    a.send(b"two")
    buf = bytearray(10)
    b.settimeout(10)
    assert b.recvfrom_into(buf) == (3, (A_IP, a.getsockname()[1])) and buf[:3] == b"two"
    b.sendto(b"back", (A_IP, a.getsockname()[1]))
    assert a.recv(10) == b"back"
    assert a.getsockopt(us.SOL_SOCKET, us.SO_TYPE) == us.SOCK_DGRAM
    dead = us.socket(us.AF_INET, us.SOCK_DGRAM, client=c, netif="a")
    dead.connect((B_IP, 7999))  # nobody there: the switch answers port unreachable
    dead.send(b"?")
    assert select.select([dead], [], [], 10)[0]
    with pytest.raises(ConnectionRefusedError):
        dead.recv(10)
    for s in (a, b, dead):
        s.close()


def test_tcp_info_reports_the_connections_state_and_counters(c):
    """TCP_INFO's counterpart under a usnet name: what moved is counted, both ends agree."""
    srv, cl, conn = _pair(c, 7300)
    data = bytes(range(256)) * 400  # 100 KB
    cl.sendall(data)
    got = b""
    while len(got) < len(data):
        got += conn.recv(65536)
    assert got == data
    tx, rx = cl.tcp_info(), conn.tcp_info()
    assert tx["state"] == rx["state"] == "ESTABLISHED"
    assert tx["bytes_written"] == len(data) and rx["bytes_read"] == len(data)
    assert tx["cwnd"] > 0 and tx["mss"] > 0 and tx["segs_out"] > 0 and rx["segs_in"] > 0
    fresh = us.socket(client=c, netif="a")
    with pytest.raises(OSError) as e:
        fresh.tcp_info()
    assert e.value.errno == errno.ENOTCONN
    fresh.close()
    for s in (cl, conn, srv):
        s.close()


def test_tcp_congestion_is_chosen_per_socket_and_read_back_as_on_the_kernel(c):
    """TCP_CONGESTION: set and read back with Linux's names and padding, refused (ENOENT) for a
    name neither has, inherited by accepted sockets, and switched on a live connection."""
    import socket as kernel

    k = kernel.socket()
    try:
        k.setsockopt(kernel.IPPROTO_TCP, kernel.TCP_CONGESTION, b"reno")
        kernel_reno = k.getsockopt(kernel.IPPROTO_TCP, kernel.TCP_CONGESTION, 16)
        with pytest.raises(OSError) as ke:
            k.setsockopt(kernel.IPPROTO_TCP, kernel.TCP_CONGESTION, b"no-such-cc")
    finally:
        k.close()
    u = us.socket(client=c, netif="a")
    assert u.getsockopt(us.IPPROTO_TCP, us.TCP_CONGESTION, 16).rstrip(b"\0") == b"cubic"
    u.setsockopt(us.IPPROTO_TCP, us.TCP_CONGESTION, b"reno")
    assert u.getsockopt(us.IPPROTO_TCP, us.TCP_CONGESTION, 16) == kernel_reno
    with pytest.raises(OSError) as ue:
        u.setsockopt(us.IPPROTO_TCP, us.TCP_CONGESTION, b"no-such-cc")
    assert ue.value.errno == ke.value.errno
    u.close()

    srv = listen_on_b(c, 8120)
    srv.setsockopt(us.IPPROTO_TCP, us.TCP_CONGESTION, b"reno")
    cl = us.create_connection((B_IP, 8120), timeout=10, client=c, netif="a")
    conn, _ = srv.accept()
    assert type(conn.connection.cc).__name__ == "NewReno"  # inherited from the listener
    assert type(cl.connection.cc).__name__ == "Cubic"
    cwnd = cl.connection.cc.cwnd
    cl.setsockopt(us.IPPROTO_TCP, us.TCP_CONGESTION, "reno")  # on a live connection: windows kept
    assert type(cl.connection.cc).__name__ == "NewReno" and cl.connection.cc.cwnd == cwnd
    cl.sendall(b"x" * 100_000)
    got = b""
    while len(got) < 100_000:
        got += conn.recv(65536)
    assert got == b"x" * 100_000
    for s in (cl, conn, srv):
        s.close()


def test_tcp_congestion_bbr_as_the_kernel_names_it_and_a_connection_runs_on_it(c):
    """b"bbr" is accepted and read back NUL-padded as by a kernel socket; a connection made with it
    (and one switched to it while live) runs BBR, paced by BBR's rate, and delivers its data."""
    import socket as kernel

    k = kernel.socket()
    try:
        k.setsockopt(kernel.IPPROTO_TCP, kernel.TCP_CONGESTION, b"bbr")
        kernel_bbr = k.getsockopt(kernel.IPPROTO_TCP, kernel.TCP_CONGESTION, 16)
    finally:
        k.close()
    srv = listen_on_b(c, 8121)
    cl = us.socket(client=c, netif="a")
    cl.setsockopt(us.IPPROTO_TCP, us.TCP_CONGESTION, b"bbr\0")
    assert cl.getsockopt(us.IPPROTO_TCP, us.TCP_CONGESTION, 16) == kernel_bbr
    cl.settimeout(10)
    cl.connect((B_IP, 8121))
    conn, _ = srv.accept()
    assert cl.connection.cc.name == "bbr" and conn.connection.cc.name == "cubic"
    conn.setsockopt(us.IPPROTO_TCP, us.TCP_CONGESTION, "bbr")  # live: the other way too
    assert conn.connection.cc.name == "bbr"
    assert conn.getsockopt(us.IPPROTO_TCP, us.TCP_CONGESTION, 16) == kernel_bbr
    data = bytes(range(256)) * 2000
    # Read while it is sent, as a program must when it sends more than the buffers hold: a
    # sendall before any read ends only if the receive buffer plus the send buffer (twice the
    # largest cwnd, Linux's tcp_sndbuf_expand) hold all 512 kB, and BBR on this memwire's
    # microsecond RTT keeps cwnd at ten segments: under load both windows closed and the
    # sendall timed out (a flow-control deadlock of the test, on main as well).
    conn.settimeout(10)
    with ThreadPoolExecutor(1) as reader:
        got = reader.submit(digest_of, conn, len(data))
        cl.sendall(data)
        assert got.result(10) == (len(data), hashlib.sha256(data).digest())
    info = cl.tcp_info()
    assert info["delivery_rate"] > 0 and info["pacing_rate"] > 0
    assert cl.connection.pacer is not None and cl.connection.cc.pacing_rate > 0
    for s in (cl, conn, srv):
        s.close()


def _outcome(s, level: int, opt: int, value=None):
    """What getsockopt (value None) or setsockopt gives: the value, "ok", or the errno's name."""
    try:
        if value is None:
            return s.getsockopt(level, opt)
        s.setsockopt(level, opt, value)
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]


# (level, option, value to set) that usnet answers as Linux does, on every kind of socket:
# honoured, stored, get-only, and unknown options and levels
_AS_LINUX = [
    (std.SOL_SOCKET, std.SO_TYPE, 1), (std.SOL_SOCKET, std.SO_ERROR, 1), (std.SOL_SOCKET, std.SO_PROTOCOL, 1),
    (std.SOL_SOCKET, std.SO_DOMAIN, 1), (std.SOL_SOCKET, std.SO_ACCEPTCONN, 1), (std.SOL_SOCKET, 19, 1),
    (std.SOL_SOCKET, std.SO_RCVLOWAT, 1), (std.SOL_SOCKET, std.SO_PRIORITY, 3), (std.SOL_SOCKET, std.SO_DEBUG, 0),
    (std.SOL_SOCKET, std.SO_OOBINLINE, 1), (std.SOL_SOCKET, std.SO_BROADCAST, 1), (std.SOL_SOCKET, 999, 1),
    (std.SOL_SOCKET, std.SO_REUSEADDR, 1), (std.SOL_SOCKET, std.SO_KEEPALIVE, 1),
    (std.IPPROTO_TCP, std.TCP_NODELAY, 1), (std.IPPROTO_TCP, std.TCP_QUICKACK, 0),
    (std.IPPROTO_TCP, std.TCP_KEEPIDLE, 30), (std.IPPROTO_TCP, std.TCP_KEEPINTVL, 5),
    (std.IPPROTO_TCP, std.TCP_KEEPCNT, 3), (std.IPPROTO_TCP, std.TCP_KEEPCNT, 0), (std.IPPROTO_TCP, std.TCP_MAXSEG, 1),
    (std.IPPROTO_TCP, std.TCP_MAXSEG, 1200), (std.IPPROTO_TCP, 25, 16384), (std.IPPROTO_TCP, 999, 1),
    (std.IPPROTO_IP, std.IP_TOS, 0x10), (std.IPPROTO_IP, std.IP_TTL, 64), (std.IPPROTO_IP, 999, 1),
    (std.IPPROTO_IPV6, std.IPV6_TCLASS, 0x10), (std.IPPROTO_IPV6, std.IPV6_UNICAST_HOPS, 64),
    (std.IPPROTO_IPV6, 999, 1), (std.IPPROTO_UDP, 999, 1), (99, 1, 1),
    (std.IPPROTO_TCP, std.TCP_CORK, 5), (std.IPPROTO_TCP, std.TCP_QUICKACK, 2),
    (std.IPPROTO_TCP, std.TCP_DEFER_ACCEPT, 5), (std.IPPROTO_TCP, std.TCP_FASTOPEN, 5),
    (std.IPPROTO_TCP, std.TCP_FASTOPEN, -1), (std.IPPROTO_TCP, 30, 1), (std.IPPROTO_TCP, 30, 2),
    # issue 16: timeouts, packet info and header fields (tests/interop/test_sockopts_*.py for the rest)
    (std.SOL_SOCKET, std.SO_RCVTIMEO, bytes([1] + [0] * 7 + [5] + [0] * 7)), (std.SOL_SOCKET, 67, bytes(16)),
    (std.IPPROTO_IP, 8, 1), (std.IPPROTO_IP, 13, 1), (std.IPPROTO_IPV6, 49, 1), (std.IPPROTO_IPV6, 66, 1),
    # SO_RCVLOWAT, honoured (tests/interop/test_programs6.py): a negative one INT_MAX (a stream's capped), 0 is 1
    (std.SOL_SOCKET, std.SO_RCVLOWAT, 100), (std.SOL_SOCKET, std.SO_RCVLOWAT, 0), (std.SOL_SOCKET, std.SO_RCVLOWAT, -5),
]
# Linux has them, usnet does not: ENOPROTOOPT, never stored and read back as if honoured
_NOT_IN_USNET = [
    (std.SOL_SOCKET, std.SO_MARK, 1),
    (std.IPPROTO_IP, std.IP_TRANSPARENT, 1),
]


@pytest.mark.parametrize("family", [std.AF_INET, std.AF_INET6])
@pytest.mark.parametrize("kind", [std.SOCK_STREAM, std.SOCK_DGRAM])
def test_an_option_usnet_does_not_have_is_enoprotoopt_as_on_linux(c, family, kind):
    """Every option is answered as the kernel answers it, from one table (usnet.client.sockopts):
    the stored ones and the real values read back, get-only ones refuse a set, and an option or
    level that does not exist is ENOPROTOOPT (EOPNOTSUPP for a foreign level's get on AF_INET),
    never stored and read back as before."""
    for level, opt, value in _AS_LINUX:
        with std.socket(family, kind) as k, us.socket(family, kind, client=c, netif="a") as u:
            for v in (None, value, None):  # read, set, read back
                assert _outcome(u, level, opt, v) == _outcome(k, level, opt, v), (level, opt, v)
    for level, opt, value in _NOT_IN_USNET:
        with us.socket(family, kind, client=c, netif="a") as u:
            assert _outcome(u, level, opt, value) == "ENOPROTOOPT", (level, opt)
    for opt in (29, 35, 63, 64):  # SO_TIMESTAMP(NS)(_NEW): both faces (tests/interop/test_tcp_rxstamp.py)
        with std.socket(family, kind) as k, us.socket(family, kind, client=c, netif="a") as u:
            for v in (None, 1, None, 0, None):
                assert _outcome(u, std.SOL_SOCKET, opt, v) == _outcome(k, std.SOL_SOCKET, opt, v), (opt, v)
    for opt in (37, 65):  # SO_TIMESTAMPING(_NEW): OPT_ID refused on an unconnected TCP socket
        with std.socket(family, kind) as k, us.socket(family, kind, client=c, netif="a") as u:
            for v in (None, 0x18, None, 0x80, None, 1 << 20, None, 0, None):  # (test_sockopts_timestamping.py)
                assert _outcome(u, std.SOL_SOCKET, opt, v) == _outcome(k, std.SOL_SOCKET, opt, v), (opt, v)
    for level, opt, value in ((std.IPPROTO_IP, 11, 3), (std.IPPROTO_IPV6, 25, 3)):  # IP_RECVERR, IPV6_RECVERR
        with std.socket(family, kind) as k, us.socket(family, kind, client=c, netif="a") as u:
            for v in (None, value, None):  # (tests/client/test_errqueue.py, tests/interop/test_tcp_recverr.py)
                assert _outcome(u, level, opt, v) == _outcome(k, level, opt, v), (level, opt, v)
    with us.socket(family, kind, client=c, netif="a") as u:  # what the earlier ones did not store
        assert _outcome(u, std.SOL_SOCKET, std.SO_MARK) == "ENOPROTOOPT"
        if kind == std.SOCK_STREAM:  # Linux's struct tcp_info is not usnet's: `tcp_info()` says so
            with pytest.raises(OSError, match="tcp_info") as e:
                u.getsockopt(std.IPPROTO_TCP, std.TCP_INFO, 104)
            assert e.value.errno == errno.ENOPROTOOPT
        assert u.getsockopt(std.IPPROTO_IP, std.IP_TTL) == 64


def test_keepalive_timing_and_maxseg_set_before_connect_are_honoured(c):
    """urllib3's `socket_options` set SO_KEEPALIVE and TCP_KEEPIDLE/INTVL/CNT before connect:
    the connection probes on that timing (they were only stored, and SO_KEEPALIVE set before
    connect was lost); TCP_MAXSEG clamps the MSS, as Linux's user_mss; an accepted connection
    inherits the listener's keepalive."""
    srv = listen_on_b(c, 8131)
    srv.settimeout(10)
    srv.setsockopt(std.SOL_SOCKET, std.SO_KEEPALIVE, 1)
    srv.setsockopt(std.IPPROTO_TCP, std.TCP_KEEPIDLE, 40)
    cl = us.socket(client=c, netif="a")
    cl.settimeout(10)
    for opt, v in ((std.TCP_KEEPIDLE, 30), (std.TCP_KEEPINTVL, 5), (std.TCP_KEEPCNT, 3), (std.TCP_MAXSEG, 1000)):
        cl.setsockopt(std.IPPROTO_TCP, opt, v)
    cl.setsockopt(std.SOL_SOCKET, std.SO_KEEPALIVE, 1)
    assert cl.getsockopt(std.IPPROTO_TCP, std.TCP_MAXSEG) == 1000  # as Linux, before the handshake
    cl.connect((B_IP, 8131))
    conn, _ = srv.accept()
    cfg = cl.connection.cfg
    assert (cfg.keepalive, cfg.keepalive_idle, cfg.keepalive_interval, cfg.keepalive_count) == (True, 30, 5, 3)
    assert cl.getsockopt(std.IPPROTO_TCP, std.TCP_MAXSEG) <= 1000
    assert conn.connection.cfg.keepalive and conn.connection.cfg.keepalive_idle == 40
    cl.setsockopt(std.IPPROTO_TCP, std.TCP_KEEPIDLE, 60)  # on a live connection too
    assert cl.connection.cfg.keepalive_idle == 60
    for s in (cl, conn, srv):
        s.close()


@pytest.mark.parametrize("proto", [0, std.IPPROTO_TCP])
def test_an_accepted_socket_has_its_listeners_protocol_number_and_asyncio_turns_nagle_off(c, proto):
    """As the kernel's accept (CPython's: socket(self.family, self.type, self.proto, fileno=...)):
    the accepted socket's `proto` is the listener's, 0 or IPPROTO_TCP (getaddrinfo's, as asyncio's
    create_server makes it). asyncio turns Nagle off only on a socket whose proto is IPPROTO_TCP:
    uvicorn's answers (head, then body) waited 40 ms for the peer's delayed ACK, since its loop (a
    plain SelectorEventLoop) accepted usnet sockets with proto 0."""
    import asyncio.base_events

    srv = us.socket(us.AF_INET, us.SOCK_STREAM, proto, client=c, netif="b")
    srv.bind((B_IP, 8190))
    srv.listen()
    srv.settimeout(10)
    cl = us.create_connection((B_IP, 8190), timeout=10, client=c, netif="a")
    conn, _ = srv.accept()
    assert conn.proto == proto
    asyncio.base_events._set_nodelay(conn)
    assert conn.getsockopt(us.IPPROTO_TCP, us.TCP_NODELAY) == (1 if proto else 0)
    for s in (cl, conn, srv):
        s.close()


def test_a_listener_takes_a_burst_of_handshakes_its_process_is_too_busy_to_read_at_once():
    """A listener's channel carries every connection of it. While this process's stack thread
    cannot pump it (here: its lock held, as the GIL or a long socket call would), 1,500 SYNs
    arrive; usnetd must queue them on the channel, not drop them (rx_client_full): a dropped
    handshake segment is a second's wait for a retransmission (the scale benchmark's level-0
    accept took 1 s instead of 0.13 in one run of four). The rings hold 4,096, as allocated."""
    with memwire_domain() as (d, c):
        srv = listen_on_b(c, 8200, backlog=2048, timeout=10)
        eng = srv._engine
        n = 1500
        clients = []
        with eng.lock:  # nothing drains the listener's ring meanwhile
            for _ in range(n):
                s = us.socket(client=c, netif="a")
                s.setblocking(False)
                assert s.connect_ex((B_IP, 8200)) == errno.EINPROGRESS  # its SYN leaves from this thread
                clients.append(s)
            # every SYN reached the listener's ring, or was dropped, before anything drains it
            # (the domain runs in a thread of its own): polled, bounded
            drops = d.switches["b"].drops
            deadline = time.monotonic() + 10
            while eng.ch._rx.refresh() + drops.get("rx_client_full", 0) < n and time.monotonic() < deadline:
                time.sleep(0.001)
        accepted = [srv.accept()[0] for _ in range(n)]
        assert len(accepted) == n
        assert d.switches["b"].drops.get("rx_client_full", 0) == 0
        for s in clients + accepted + [srv]:
            s.close()


def test_listen_on_a_dup_of_a_listening_socket_is_a_re_listen(c):
    """As Linux, where a dup is the same socket: listen() on a dup of a listening socket only sets
    the backlog (usnet refused it: the port "already listening"), and the dup accepts."""
    srv = listen_on_b(c, 8210, timeout=10)
    d = srv.dup()
    d.listen(5)
    d.settimeout(10)
    cl = us.create_connection((B_IP, 8210), timeout=10, client=c, netif="a")
    conn, _ = d.accept()
    assert conn.getpeername() == cl.getsockname()
    for s in (cl, conn, d, srv):
        s.close()
