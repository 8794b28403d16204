"""Unmodified standard-library programs on usnet.socket against the kernel's peers, over a TAP (root).

usnet runs in this process on a fresh TAP in the test's own namespace (`tap_domain`); the
peers are kernel sockets, socketserver, http.server and http.client. Where a behaviour can be
compared, the same function runs once on kernel sockets and once on usnet, and the two
transcripts must agree. Waits are select calls, joins and socket timeouts with deadlines.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import http.client
import http.server
import select
import socket
import socketserver
import threading
import time

import pytest

from usnet import aio
from usnet import socket as us
from usnet.client import Client

pytestmark = pytest.mark.privileged
LIMIT = 20  # seconds for any single wait: only reached when something is broken


@pytest.fixture
def net(tap_domain):
    """(client, ifname, usnet_ip, host_ip), with usnet.socket configured to use them; the domain
    has its loopback netif too, as usnetd's has."""
    d, ifname, usnet_ip, host_ip = tap_domain
    d.add_loopback()
    client = Client.local(d)
    us.configure(client, ifname)
    try:
        yield client, ifname, usnet_ip, host_ip
    finally:
        us.configure(None, None)


def _chat_server(lst, rounds: dict) -> None:
    """A select()-based chat server, as written for the standard socket module: every line a
    client sends goes to every other client. Runs until the listener is closed by a "quit" line."""
    lst.setblocking(False)
    clients: list = []
    while True:
        rounds["n"] += 1
        readable, _, _ = select.select([lst, *clients], [], [], LIMIT)
        if not readable:
            return
        for s in readable:
            if s is lst:
                conn, _ = lst.accept()  # readable: it does not block (and does not raise)
                conn.setblocking(False)
                conn.sendall(b"welcome\n")
                clients.append(conn)
                continue
            data = s.recv(4096)
            if not data or data == b"quit\n":
                for c in clients:
                    c.close()
                return
            for c in clients:
                if c is not s:
                    c.sendall(data)


def test_a_select_chat_server_on_usnet_with_kernel_clients(net):
    _client, _ifname, usnet_ip, _host_ip = net
    lst = us.socket()
    lst.bind((usnet_ip, 0))
    lst.listen()
    port = lst.getsockname()[1]
    rounds = {"n": 0}
    t = threading.Thread(target=_chat_server, args=(lst, rounds), daemon=True)
    t.start()
    peers = [socket.create_connection((usnet_ip, port), timeout=LIMIT) for _ in range(4)]
    for p in peers:  # each one accepted: it hears every line from here on
        assert p.recv(8, socket.MSG_WAITALL) == b"welcome\n"
    for i, p in enumerate(peers):
        p.sendall(b"hello from %d\n" % i)
        for j, q in enumerate(peers):
            if j != i:
                got = b""
                while not got.endswith(b"\n"):
                    got += q.recv(100)
                assert got == b"hello from %d\n" % i
    peers[0].sendall(b"quit\n")
    t.join(LIMIT)
    assert not t.is_alive()
    assert rounds["n"] < 100, f"select returned {rounds['n']} times for 4 connections and 4 lines: a spin"
    for p in peers:
        p.close()
    lst.close()


class _Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.upper())


def test_socketserver_threading_tcp_server_serves_and_shuts_down(net, monkeypatch):
    _client, _ifname, usnet_ip, _host_ip = net
    monkeypatch.setattr(socketserver, "socket", us)  # the module socketserver builds its sockets from
    server = socketserver.ThreadingTCPServer((usnet_ip, 0), _Echo)
    assert isinstance(server.socket, us.socket)
    port = server.server_address[1]
    assert port != 0  # bound at bind(), as on the kernel
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    with socket.create_connection((usnet_ip, port), timeout=LIMIT) as k:
        k.sendall(b"one\ntwo\n")
        with k.makefile("rb") as f:  # closed before k, or k's close would wait for it (as usnet's does)
            assert f.readline() == b"ONE\n" and f.readline() == b"TWO\n"
    stopper = threading.Thread(target=server.shutdown, daemon=True)
    stopper.start()
    stopper.join(LIMIT)
    assert not stopper.is_alive(), "shutdown() did not return"
    t.join(LIMIT)
    server.server_close()


def test_http_client_two_requests_on_one_kept_alive_connection_to_a_kernel_http_server(net):
    client, ifname, _usnet_ip, host_ip = net
    peers: list = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            peers.append(self.client_address)
            body = (self.path * 1000).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((host_ip, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        conn = http.client.HTTPConnection(host_ip, server.server_address[1], timeout=LIMIT)
        conn._create_connection = functools.partial(us.create_connection, client=client, netif=ifname)
        bodies = []
        for path in ("/first", "/second"):
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 200 and not resp.will_close
            bodies.append(resp.read())
        assert isinstance(conn.sock, us.socket)
        conn.close()
    finally:
        server.shutdown()
        server.server_close()
    assert bodies == [b"/first" * 1000, b"/second" * 1000]
    assert len(peers) == 2 and peers[0] == peers[1]  # one connection carried both


def _connect_refused(make: callable, addr: tuple) -> tuple:
    """A non-blocking connect to a closed port: what select and SO_ERROR say, as a transcript."""
    s = make()
    s.setblocking(False)
    first = s.connect_ex(addr)
    deadline = time.monotonic() + LIMIT
    seen = []
    while time.monotonic() < deadline:
        _, w, _ = select.select([], [s], [], LIMIT)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        seen.append((bool(w), err))
        if w:
            break
    after = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    s.close()
    return first, seen[-1], after, all(e == 0 for _, e in seen[:-1])


def test_non_blocking_connect_to_a_closed_kernel_port_reports_econnrefused_through_so_error(net):
    _client, _ifname, _usnet_ip, host_ip = net
    closed = socket.socket()
    closed.bind((host_ip, 0))  # a port nobody listens on
    port = closed.getsockname()[1]
    try:
        on_usnet = _connect_refused(us.socket, (host_ip, port))
        on_kernel = _connect_refused(socket.socket, (host_ip, port))
    finally:
        closed.close()
    assert on_usnet == on_kernel == (errno.EINPROGRESS, (True, errno.ECONNREFUSED), 0, True)


def _reset(make, lst: socket.socket):
    """A socket from `make` connected to the kernel listener `lst`, whose accepted end resets it
    (SO_LINGER 0), once the reset came (select)."""
    s = make()
    s.settimeout(LIMIT)
    s.connect(lst.getsockname())
    peer, _ = lst.accept()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    peer.close()
    select.select([s], [], [], LIMIT)
    return s


def _after_reset(make, where: tuple) -> list:
    """Connections the kernel peer resets: each call in turn, the error or what it gave, and
    what select says."""

    def call(f):
        try:
            return f()
        except OSError as e:
            return errno.errorcode[e.errno]

    with socket.create_server(where) as lst:
        with _reset(make, lst) as s:
            out = [call(lambda: s.recv(10)), call(lambda: s.recv(10)), s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR),
                   call(lambda: s.send(b"x")), call(lambda: s.send(b"x")), call(lambda: s.recv(10))]
        with _reset(make, lst) as s:  # reported first by SO_ERROR, then send: the same, in that order
            out += [s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), call(lambda: s.send(b"x")),
                    call(lambda: s.recv(10)), select.select([s], [s], [], 0) == ([s], [s], [])]
    return out


def test_a_connections_error_is_reported_once_as_on_the_kernel(net):
    """Linux's sock_error takes sk_err as it reports it: after a reset the first recv (or send,
    or SO_ERROR) gives ECONNRESET, then recv is EOF, send EPIPE and SO_ERROR 0. usnet raised
    ECONNRESET from every call, and SO_ERROR still said it after recv had."""
    _client, _ifname, _usnet_ip, host_ip = net
    on_kernel = _after_reset(socket.socket, (host_ip, 0))
    assert _after_reset(us.socket, (host_ip, 0)) == on_kernel
    assert on_kernel == ["ECONNRESET", b"", 0, "EPIPE", "EPIPE", b"", errno.ECONNRESET, "EPIPE", b"", True]


def _reset_after_fin(make, lst: socket.socket) -> list:
    """A socket from `make` connected to the kernel listener `lst`, whose accepted end sends
    "abc" and closes (FIN); our "x" then meets its closed socket, which resets us in CLOSE_WAIT
    (once POLLERR says so). Each call in turn: the error or what it gave."""

    def call(f):
        try:
            return f()
        except OSError as e:
            return errno.errorcode[e.errno]

    s = make()
    s.settimeout(LIMIT)
    s.connect(lst.getsockname())
    peer, _ = lst.accept()
    peer.sendall(b"abc")
    peer.close()
    select.select([s], [], [], LIMIT)  # the data and the FIN
    s.send(b"x")
    p = select.poll()
    p.register(s, select.POLLERR)
    got = p.poll(LIMIT * 1000)  # the reset
    out = [bool(got and got[0][1] & select.POLLERR), call(lambda: s.recv(10)), call(lambda: s.recv(10)),
           call(lambda: s.recv(10)), s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), call(lambda: s.send(b"x")),
           call(lambda: s.recv(10))]
    s.close()
    return out


def test_a_reset_after_the_peers_fin_leaves_recv_at_eof_as_on_the_kernel(net):
    """Linux's tcp_fin marks the socket done (SOCK_DONE) and tcp_recvmsg looks at that before
    sk_err: once the peer's FIN came, recv is the data, then EOF, even after a reset (EPIPE in
    CLOSE_WAIT), whose error is left to send or SO_ERROR. usnet's recv raised EPIPE after the
    data (paramiko's transport thread, reading an sshd killed mid-stream: a BrokenPipeError
    where the kernel's ends in EOF; tests/interop/test_programs12.py)."""
    _client, _ifname, _usnet_ip, host_ip = net
    with socket.create_server((host_ip, 0)) as lst:
        on_kernel = _reset_after_fin(socket.socket, lst)
        on_usnet = _reset_after_fin(us.socket, lst)
    assert on_usnet == on_kernel
    assert on_kernel == [True, b"abc", b"", b"", errno.EPIPE, "EPIPE", b""]


def _peek_dontwait(receiver, sender) -> list:
    """recv flags on a connected pair, as a transcript of what each call gave."""
    out = []

    def call(*args: int) -> None:
        try:
            out.append(receiver.recv(*args))
        except BlockingIOError:
            out.append("EAGAIN")

    receiver.setblocking(True)  # with a timeout, CPython polls before every recv, MSG_DONTWAIT or not
    call(10, socket.MSG_DONTWAIT)
    sender.sendall(b"hello world")
    out.append(bool(select.select([receiver], [], [], LIMIT)[0]))
    call(5, socket.MSG_PEEK)
    call(5, socket.MSG_PEEK)
    call(5)
    while receiver.recv(100, socket.MSG_PEEK) != b" world":  # the rest may come in a second segment
        select.select([receiver], [], [], LIMIT)
    call(100)
    out.append(bool(select.select([receiver], [], [], 0)[0]))
    call(10, socket.MSG_DONTWAIT)
    sender.sendall(b"abc")
    sender.sendall(b"def")
    call(6, socket.MSG_WAITALL)
    buf = bytearray(4)
    sender.sendall(b"wxyz")
    out.append(receiver.recv_into(buf, 0, socket.MSG_WAITALL))
    out.append(bytes(buf))
    sender.close()
    call(10, socket.MSG_WAITALL)
    return out


def test_recv_flags_behave_as_on_a_kernel_socket(net):
    _client, _ifname, usnet_ip, host_ip = net
    with socket.create_server((host_ip, 0)) as ks:  # the kernel pair, inside the namespace
        a = socket.create_connection(ks.getsockname(), timeout=LIMIT)
        b, _ = ks.accept()
        on_kernel = _peek_dontwait(b, a)
        b.close()
    with us.create_server((usnet_ip, 0)) as srv:  # usnet receives, the kernel sends
        srv.settimeout(LIMIT)
        a = socket.create_connection(srv.getsockname(), timeout=LIMIT)
        b, _ = srv.accept()
        on_usnet = _peek_dontwait(b, a)
        b.close()
    assert on_usnet == on_kernel
    assert on_kernel[:3] == ["EAGAIN", True, b"hello"]


def test_udp_through_usnet_socket_with_a_kernel_peer(net):
    _client, _ifname, usnet_ip, host_ip = net
    k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    k.bind((host_ip, 0))
    k.settimeout(LIMIT)
    u = us.socket(us.AF_INET, us.SOCK_DGRAM)
    u.bind((usnet_ip, 0))
    u.setblocking(False)
    assert select.select([u], [u], [], 0)[:2] == ([], [u])
    k.sendto(b"ping", u.getsockname())
    assert select.select([u], [], [], LIMIT)[0] == [u]
    data, addr = u.recvfrom(100)
    assert (data, addr) == (b"ping", k.getsockname())
    with pytest.raises(BlockingIOError):
        u.recvfrom(100)
    u.connect(addr)
    u.send(b"pong")
    assert k.recvfrom(100) == (b"pong", u.getsockname())
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind((host_ip, 0))
    gone = closed.getsockname()
    closed.close()
    u.connect(gone)  # the kernel answers port unreachable; a connected socket hears it
    u.send(b"anyone?")
    assert select.select([u], [], [], LIMIT)[0] == [u]
    with pytest.raises(ConnectionRefusedError):
        u.recv(100)
    u.close()
    k.close()


def _wildcard_server_answers(make_server, make_client, addrs: list[str]) -> list[bytes]:
    """A server bound to 0.0.0.0 answers one connection per address in `addrs` with the address
    the client connected to (its getsockname); what each client read."""
    ls = make_server()
    ls.bind(("0.0.0.0", 0))
    ls.listen()
    port = ls.getsockname()[1]
    got = []

    def serve() -> None:
        for _ in addrs:
            conn, _peer = ls.accept()
            with conn:
                conn.sendall(conn.getsockname()[0].encode())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    for a in addrs:
        c = make_client(a)
        c.settimeout(LIMIT)
        c.connect((a, port))
        got.append(c.recv(100))
        c.close()
    t.join(LIMIT)
    ls.close()
    return got


def test_a_server_on_0_0_0_0_is_reached_through_127_0_0_1_as_on_the_kernel(net):
    """The same program on both stacks: a server on 0.0.0.0, clients to 127.0.0.1 and to the
    server's link address. On usnet the loopback client is a usnet one (127.0.0.1 is the domain's
    loopback netif) and the link one a kernel client in the namespace, to the TAP address."""
    _client, _ifname, usnet_ip, host_ip = net
    kernel = _wildcard_server_answers(
        lambda: socket.socket(), lambda a: socket.socket(), ["127.0.0.1", host_ip])
    assert kernel == [b"127.0.0.1", host_ip.encode()]

    def usnet_or_kernel_client(a: str):
        return us.socket() if a == "127.0.0.1" else socket.socket()

    on_usnet = _wildcard_server_answers(lambda: us.socket(), usnet_or_kernel_client, ["127.0.0.1", usnet_ip])
    assert on_usnet == [b"127.0.0.1", usnet_ip.encode()]


def _udp_on_loopback(make, family=socket.AF_INET) -> list:
    """A UDP program of loopback datagrams: a server on the wildcard, one on the loopback
    address, an unbound client that sends first, and a connected one; what each side saw."""
    lo, any_ = ("::1", "::") if family == socket.AF_INET6 else ("127.0.0.1", "0.0.0.0")
    seen = []
    wild, bound = make(family), make(family)
    wild.bind((any_, 0))
    bound.bind((lo, 0))
    seen.append(bound.getsockname()[0])
    for srv in (wild, bound):
        srv.settimeout(LIMIT)
        cli = make(family)
        cli.settimeout(LIMIT)
        cli.sendto(b"ping", (lo, srv.getsockname()[1]))
        data, peer = srv.recvfrom(100)
        seen.append((data, peer[0], peer[1] == cli.getsockname()[1]))
        srv.sendto(data.upper(), peer)  # the answer finds the client's port on loopback
        got, frm = cli.recvfrom(100)
        seen.append((got, frm[0], frm[1] == srv.getsockname()[1]))
        con = make(family)
        con.settimeout(LIMIT)
        con.connect((lo, srv.getsockname()[1]))
        con.send(b"again")
        data, peer = srv.recvfrom(100)
        srv.sendto(data[::-1], peer)
        seen.append((con.recv(100), con.getpeername()[0]))
        for s in (cli, con):
            s.close()
    ports = [wild.getsockname()[1], bound.getsockname()[1]]
    wild.close()
    bound.close()
    for port in ports:  # closed, both halves: the port is free for the loopback address
        again = make(family)
        again.bind((lo, port))
        seen.append(again.getsockname()[1] == port)
        again.close()
    return seen


def test_udp_on_loopback_as_on_the_kernel(net):
    """Datagrams to 127.0.0.1 (::1) reach a UDP socket bound to the wildcard or to the loopback
    address, from unbound and connected clients, and the answers come back, as on the kernel
    (in the test's namespace). On usnet every socket is a usnet one: 127.0.0.1 is the domain's
    loopback netif, which a wildcard socket hears beside its netif."""
    kernel = _udp_on_loopback(lambda f: socket.socket(f, socket.SOCK_DGRAM))
    on_usnet = _udp_on_loopback(lambda f: us.socket(f, socket.SOCK_DGRAM))
    assert on_usnet == kernel
    assert kernel[1][0] == b"ping" and kernel[2][0] == b"PING" and kernel[3][0] == b"niaga"


def test_udp_ipv6_wildcard_on_a_netif_without_ipv6_as_on_the_kernel(net):
    """AF_INET6 UDP where the netif has no IPv6 address (the TAP's is IPv4 only): :: binds and
    hears ::1, an unbound client's first send to ::1 binds it, and the answers come back, as on
    Linux, whose :: hears lo's ::1; on usnet both are flows on the domain's loopback netif."""
    kernel = _udp_on_loopback(lambda f: socket.socket(f, socket.SOCK_DGRAM), socket.AF_INET6)
    on_usnet = _udp_on_loopback(lambda f: us.socket(f, socket.SOCK_DGRAM), socket.AF_INET6)
    assert on_usnet == kernel
    assert kernel[1] == (b"ping", "::1", True) and kernel[2][0] == b"PING" and kernel[3][0] == b"niaga"
    s = us.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::", 0))
    assert s.getsockname()[0] == "::"  # the wildcard, as Linux says it
    s.close()
    errs = []
    for make in (socket.socket, us.socket):  # beyond ::1 there is no IPv6 route, on either
        s = make(socket.AF_INET6, socket.SOCK_DGRAM)
        with pytest.raises(OSError) as info:
            s.sendto(b"x", ("fd00:99::1", 9))
        errs.append(info.value.errno)
        s.close()
    assert errs == [errno.ENETUNREACH, errno.ENETUNREACH]


def _listen_on_every_passive_address(gai, make) -> list:
    """What tornado's bind_sockets (and asyncio's create_server) does with no host: a listener on
    every address getaddrinfo gives for AI_PASSIVE (IPv6 ones IPV6_V6ONLY), all on the first one's
    port; then a client to ::1 on it. Their names, the port left out, and what the client reached."""
    names, listeners, port = [], [], 0
    for family, kind, proto, _, addr in sorted(gai(None, 0, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                                   socket.AI_PASSIVE)):
        s = make(family, kind, proto)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr[0], port))
        s.listen()
        port = s.getsockname()[1]
        names.append(s.getsockname()[:1] + s.getsockname()[2:])
        listeners.append(s)
    cli = make(socket.AF_INET6, socket.SOCK_STREAM, 0)
    cli.settimeout(LIMIT)
    cli.connect(("::1", port))
    (six,) = [s for s in listeners if s.family == socket.AF_INET6]
    six.settimeout(LIMIT)
    conn, _ = six.accept()
    names.append(conn.getsockname()[:1])
    for s in (conn, cli, *listeners):
        s.close()
    return names


def test_a_server_on_every_passive_address_as_on_the_kernel(net):
    """No host (tornado's `listen(port, "")`): 0.0.0.0 and :: both bind, and say so, though the
    netif has no IPv6 address: :: then hears the loopback netif's ::1, as Linux's :: hears lo's
    when no other interface has IPv6."""
    kernel = _listen_on_every_passive_address(socket.getaddrinfo, socket.socket)
    assert kernel == [("0.0.0.0",), ("::", 0, 0), ("::1",)]
    assert _listen_on_every_passive_address(us.getaddrinfo, us.socket) == kernel


def _udp_names(make, peer: str) -> list:
    """A UDP socket's name: bound to the wildcard, bound by a first send, and once connected."""
    names = []
    for first in ("bind", "send"):
        s = make(socket.AF_INET, socket.SOCK_DGRAM)
        if first == "bind":
            s.bind(("", 0))
        else:
            s.sendto(b"x", (peer, 9))
        names.append(s.getsockname()[0])
        s.connect((peer, 9))
        names.append(s.getsockname()[0])
        s.close()
    return names


def test_a_udp_socket_on_the_wildcard_names_it_until_connected_as_on_the_kernel(net):
    _client, _ifname, usnet_ip, host_ip = net
    assert _udp_names(socket.socket, host_ip) == ["0.0.0.0", host_ip, "0.0.0.0", host_ip]
    assert _udp_names(us.socket, host_ip) == ["0.0.0.0", usnet_ip, "0.0.0.0", usnet_ip]


def _wildcard_server_sends_to_loopback(make, n: int) -> bytes:
    """A server on 0.0.0.0 sends `n` bytes to a client of 127.0.0.1; the digest of what came."""
    import hashlib

    ls = make()
    ls.bind(("0.0.0.0", 0))
    ls.listen()
    data = bytes(range(256)) * (n // 256)

    def serve() -> None:
        conn, _peer = ls.accept()
        with conn:
            conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    c = make()
    c.settimeout(LIMIT)
    c.connect(("127.0.0.1", ls.getsockname()[1]))
    h, got = hashlib.sha256(), 0
    while got < len(data) and (b := c.recv(1 << 16)):
        h.update(b)
        got += len(b)
    c.close()
    t.join(LIMIT)
    ls.close()
    return h.digest() + hashlib.sha256(data).digest()


def test_a_wildcard_server_sends_much_to_a_loopback_client_as_on_the_kernel(net):
    """More than a segment from a server on 0.0.0.0 to a client of 127.0.0.1 (both usnet): the
    connection accepted on the loopback netif segments for that netif, which has no segmentation
    offload, not for the TAP's, whose listener config it shared (a 3 kB answer failed the stack:
    "3052 bytes do not fit a 2048-byte packet")."""
    for make in (socket.socket, us.socket):
        got = _wildcard_server_sends_to_loopback(make, 200_000)
        assert got[:32] == got[32:], make


async def _asyncio_server_on_every_address(port: int) -> list:
    """asyncio's servers with no host, as aiohttp's and websockets' start them: `start_server(cb,
    port=P)`, `create_server(factory, "", P)`, and `create_server(factory, None, 0)` (each socket
    its own port, as Linux gives them). Per server: its sockets' names (sorted, port left out),
    whether they share one port, and what a client to each family's loopback address read back
    (the name the connection arrived on)."""
    loop = asyncio.get_running_loop()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(writer.get_extra_info("sockname")[0].encode() + b" " + await reader.read())
        await writer.drain()
        writer.close()

    def factory() -> asyncio.StreamReaderProtocol:
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(), echo)

    out = []
    for make in (lambda: asyncio.start_server(echo, port=port),
                 lambda: loop.create_server(factory, "", port + 1),
                 lambda: loop.create_server(factory, None, 0)):
        server = await make()
        socks = sorted(server.sockets, key=lambda s: s.family)
        names = [(s.family, s.getsockname()[0], *s.getsockname()[2:]) for s in socks]
        got = []
        for s, loopback in zip(socks, ("127.0.0.1", "::1"), strict=False):
            reader, writer = await asyncio.open_connection(loopback, s.getsockname()[1])
            writer.write(b"hi")
            writer.write_eof()
            got.append(await reader.read())
            writer.close()
            await writer.wait_closed()
        out.append((names, len({s.getsockname()[1] for s in socks}), got))
        server.close()
        await server.wait_closed()
    return out


def test_asyncio_servers_with_no_host_on_every_address_as_on_the_kernel(net):
    """No host: one listening socket for 0.0.0.0 and one for :: (IPV6_V6ONLY), both in `sockets`,
    and a client reaches the server over each family, as asyncio's servers on the kernel; the
    same program on usnet's event loop, whose netif has no IPv6 address (:: hears the loopback
    netif's ::1, as Linux's hears lo's)."""
    program = functools.partial(_asyncio_server_on_every_address, 8440)
    kernel = asyncio.run(asyncio.wait_for(program(), LIMIT))
    assert kernel[0] == ([(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::", 0, 0)], 1,
                         [b"127.0.0.1 hi", b"::1 hi"])
    assert kernel[2][1] == 2  # port 0: each socket its own
    loop = aio.new_event_loop()
    try:
        on_usnet = loop.run_until_complete(asyncio.wait_for(program(), LIMIT))
    finally:
        loop.close()
    assert on_usnet == kernel


def _udp_error_polls(make, host_ip: str) -> list:
    """A connected UDP socket from `make` sends to a closed kernel port: its poll masks while the
    ICMP port unreachable's error is pending, after recv reported it, and the same again read by
    SO_ERROR; a select beside the first."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.bind((host_ip, 0))
        closed = c.getsockname()[1]
    everything = select.POLLIN | select.POLLOUT | select.POLLERR | select.POLLHUP
    out: list = []
    s = make(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host_ip, closed))
    for read_by in ("recv", "SO_ERROR"):
        s.send(b"anyone?")
        p = select.poll()
        p.register(s, select.POLLIN)  # (POLLERR is always reported)
        got = p.poll(LIMIT * 1000)
        p.modify(s, everything)
        out += [got[0][1] if got else None, p.poll(0)[0][1], select.select([s], [s], [], 0) == ([s], [s], [])]
        if read_by == "recv":
            try:
                out.append(s.recv(10))
            except OSError as e:
                out.append(errno.errorcode[e.errno])
        else:
            out.append(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
        out.append(p.poll(0)[0][1])
    s.close()
    return out


def test_a_udp_sockets_pending_error_polls_pollerr_alone_as_on_the_kernel(net):
    """Linux's datagram_poll: an ICMP error pending on a connected UDP socket is EPOLLERR with
    EPOLLOUT, never EPOLLIN (select counts it readable all the same); reading it (recv or
    SO_ERROR) leaves EPOLLOUT. usnet showed POLLIN|POLLOUT: Twisted's epoll reactor, which takes
    EPOLLERR without EPOLLIN for the end of the port, called connectionRefused on usnet and
    stopped the port on Linux (tests/interop/test_programs13.py)."""
    _client, _ifname, _usnet_ip, host_ip = net
    on_kernel = _udp_error_polls(socket.socket, host_ip)
    assert _udp_error_polls(us.socket, host_ip) == on_kernel
    err, out = select.POLLERR, select.POLLOUT
    assert on_kernel == [err, err | out, True, "ECONNREFUSED", out, err, err | out, True, errno.ECONNREFUSED, out]
