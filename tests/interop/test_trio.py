"""trio, and anyio on its trio backend, unmodified on usnet (`usnet.patch()`, `usnet run`).

trio wraps standard sockets in its own class and waits on their descriptors through epoll;
`usnet.client.trioface` makes its one constructor (`trio.socket.from_stdlib_socket`) wrap a
usnet socket too. Each test runs trio's own high-level and socket-level APIs in this process,
patched onto a TAP domain (`patched`), against the kernel's sockets on the far side of the TAP,
in the test's network namespace: TCP both ways (SHA-256 of a few hundred KB each way), UDP both
ways, names (dnsmasq and a hosts file, `world`), cancellation, TLS (trustme), anyio, and a trio
program under `usnet run`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Callable
from functools import partial

import anyio
import anyio.abc
import pytest
import trio

from tests.helpers.util import client_context, server_context
from tests.interop.test_names import world  # noqa: F401  (a fixture)
from tests.interop.test_patch import LIMIT, child_env, patched, patched_onto, started, stop, usnetd_path  # noqa: F401
from usnet import socket as us
from usnet.client import patch as patching
from usnet.client import trioface


def KERNEL(*args: int) -> socket.socket:
    """A kernel socket: the peers. (socket.socket is usnet's under the patch, and a module-level name
    bound to the standard class would be rebound by it, so the class is looked up at each call.)"""
    return patching._KERNEL(*args)

SIZE = 300_000


def kernel_listener(host: str) -> socket.socket:
    ls = KERNEL(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind((host, 0))
    ls.listen()
    ls.settimeout(LIMIT)
    return ls


def read_to_eof(k: socket.socket) -> bytes:
    chunks = []
    while b := k.recv(1 << 16):
        chunks.append(b)
    return b"".join(chunks)


def digest_then_data(k: socket.socket, data: bytes) -> bytes:
    """The kernel side of an exchange: read to EOF, answer with its SHA-256 and then `data`, close.
    Returns what it read."""
    got = read_to_eof(k)
    k.sendall(hashlib.sha256(got).digest() + data)
    return got


def kernel_serve_once(ls: socket.socket, data: bytes) -> bytes:
    k, _ = ls.accept()
    k.settimeout(LIMIT)
    with k:
        return digest_then_data(k, data)


def kernel_fetch(addr: tuple[str, int], payload: bytes) -> Callable[[], bytes]:
    """A kernel client, to run in a thread: send `payload`, half-close, read the answer to EOF.
    Its socket is made here, in the calling thread: a socket is made in its thread's network
    namespace, and trio's worker threads are kept from one trio.run to the next (an earlier test's
    thread is in that test's namespace)."""
    k = KERNEL(socket.AF_INET, socket.SOCK_STREAM)
    k.settimeout(LIMIT)

    def fetch() -> bytes:
        with k:
            k.connect(addr)
            k.sendall(payload)
            k.shutdown(socket.SHUT_WR)
            return read_to_eof(k)
    return fetch


async def receive_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    chunks = []
    while b := await stream.receive_some(1 << 16):
        chunks.append(b)
    return b"".join(chunks)


async def trio_digest_then_data(stream: trio.abc.Stream, data: bytes) -> None:
    """The trio side of the same exchange as `digest_then_data`."""
    got = await receive_to_eof(stream)
    await stream.send_all(hashlib.sha256(got).digest() + data)
    await stream.aclose()


def run(fn, *args, backend: str | None = None):
    """trio.run (or anyio.run on trio) with a deadline: a hang fails the test instead of holding it."""
    async def bounded():
        with trio.fail_after(LIMIT):
            return await fn(*args)
    return anyio.run(bounded, backend="trio") if backend == "anyio" else trio.run(bounded)


@pytest.fixture(params=["usnet", "kernel"])
def stack(request, tap_domain):
    """(stack, our address, the kernel peer's address): trio on usnet (this process patched), or the
    same test on the kernel's own sockets, from the kernel's address, for what Linux gives."""
    if request.param == "usnet":
        return ("usnet", *request.getfixturevalue("patched"))
    _, _, _, host_ip = tap_domain
    return "kernel", host_ip, host_ip


# -- TCP ---------------------------------------------------------------------------------------------


@pytest.mark.privileged
def test_trio_stream_to_a_kernel_server(patched):  # noqa: F811 (a fixture)
    """trio.open_tcp_stream on usnet to a kernel listener: 300 KB each way, SHA-256 on both sides."""
    usnet_ip, host_ip = patched
    up, down = os.urandom(SIZE), os.urandom(SIZE)
    ls = kernel_listener(host_ip)

    async def main():
        got: dict = {}
        async with trio.open_nursery() as n:
            async def server():
                got["kernel"] = await trio.to_thread.run_sync(kernel_serve_once, ls, down)
            n.start_soon(server)
            stream = await trio.open_tcp_stream(host_ip, ls.getsockname()[1])
            assert trioface.is_usnet(stream.socket._sock)
            assert stream.socket.getsockname()[0] == usnet_ip
            assert stream.socket.getpeername() == ls.getsockname()
            await stream.send_all(up)
            await stream.send_eof()
            got["trio"] = await receive_to_eof(stream)
            await stream.aclose()
        return got

    with ls:
        got = run(main)
    assert got["kernel"] == up
    assert got["trio"] == hashlib.sha256(up).digest() + down


@pytest.mark.privileged
def test_trio_serve_tcp_fetched_by_kernel_clients(patched):  # noqa: F811 (a fixture)
    """trio.serve_tcp on usnet (open_tcp_listeners, accept through trio's epoll wait); three kernel
    clients at once, 300 KB each way each."""
    usnet_ip, _host_ip = patched
    down = os.urandom(SIZE)
    payloads = [os.urandom(SIZE) for _ in range(3)]

    async def main():
        answers: list = [None] * len(payloads)
        async with trio.open_nursery() as n:
            serve = partial(trio.serve_tcp, lambda s: trio_digest_then_data(s, down), 0, host=usnet_ip)
            listeners = await n.start(serve)
            sock = listeners[0].socket
            assert trioface.is_usnet(sock._sock)
            addr = sock.getsockname()
            assert addr[0] == usnet_ip and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1

            async def fetch(i):
                answers[i] = await trio.to_thread.run_sync(kernel_fetch(addr, payloads[i]))
            async with trio.open_nursery() as clients:
                for i in range(len(payloads)):
                    clients.start_soon(fetch, i)
            n.cancel_scope.cancel()
        return answers

    answers = run(main)
    assert answers == [hashlib.sha256(p).digest() + down for p in payloads]


@pytest.fixture
def patched6(tap_domain6):
    """As `patched`, on a TAP with IPv6 too: (usnet_ip6, host_ip6)."""
    yield from patched_onto(tap_domain6)


@pytest.mark.privileged
def test_trio_over_ipv6_both_ways(patched6):
    """AF_INET6: trio's address checks ask IPV6_V6ONLY; a trio client to a kernel listener and a
    trio listener fetched by a kernel client, on IPv6 addresses."""
    usnet_ip6, host_ip6 = patched6
    ls = KERNEL(socket.AF_INET6, socket.SOCK_STREAM)
    ls.bind((host_ip6, 0))
    ls.listen()
    ls.settimeout(LIMIT)
    back = KERNEL(socket.AF_INET6, socket.SOCK_STREAM)  # made here: see kernel_fetch
    back.settimeout(LIMIT)

    def fetch(addr) -> bytes:
        with back:
            back.connect(addr)
            back.sendall(b"six")
            back.shutdown(socket.SHUT_WR)
            return read_to_eof(back)

    async def main():
        got: dict = {}
        async with trio.open_nursery() as n:
            n.start_soon(trio.to_thread.run_sync, kernel_serve_once, ls, b"v6")
            stream = await trio.open_tcp_stream(host_ip6, ls.getsockname()[1])
            assert trioface.is_usnet(stream.socket._sock) and stream.socket.family == socket.AF_INET6
            assert stream.socket.getsockname()[0] == usnet_ip6
            await stream.send_eof()
            got["client"] = await receive_to_eof(stream)
            await stream.aclose()
        [listener] = await trio.open_tcp_listeners(0, host=usnet_ip6)
        async with trio.open_nursery() as n:
            async def ask():
                got["server"] = await trio.to_thread.run_sync(fetch, listener.socket.getsockname()[:2])
            n.start_soon(ask)
            await trio_digest_then_data(await listener.accept(), b"")
        await listener.aclose()
        return got

    with ls:
        got = run(main)
    assert got == {"client": hashlib.sha256(b"").digest() + b"v6", "server": hashlib.sha256(b"six").digest()}


@pytest.mark.privileged
def test_trio_listeners_on_no_host_as_on_the_kernel(stack, tap_domain):
    """open_tcp_listeners(0) with no host, as trio.serve_tcp(handler, port) does: 0.0.0.0 and ::
    (each on a port of its own), as on Linux, though usnet's netif has no IPv6 address (the ::
    listener is on the domain's loopback netif, as Linux's is reached at ::1); a kernel client
    reaches the IPv4 one."""
    on, our_ip, _ = stack
    if on == "usnet":
        tap_domain[0].add_loopback()  # as usnetd's own config has it

    async def main():
        listeners = await trio.open_tcp_listeners(0)
        try:
            names = sorted((int(ln.socket.family), ln.socket.getsockname()[0]) for ln in listeners)
            assert names == [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
            assert all(trioface.is_usnet(ln.socket._sock) == (on == "usnet") for ln in listeners)
            [v4] = [ln for ln in listeners if ln.socket.family == socket.AF_INET]
            async with trio.open_nursery() as n:
                n.start_soon(trio.to_thread.run_sync, kernel_fetch((our_ip, v4.socket.getsockname()[1]), b"x"))
                stream = await v4.accept()
                await trio_digest_then_data(stream, b"")
        finally:
            for ln in listeners:
                await ln.aclose()

    run(main)


@pytest.mark.privileged
def test_trio_socket_level_calls_as_on_the_kernel(stack):
    """trio.socket.socket() itself: non-blocking connect, recv/send, recv_into, dup, is_readable,
    SHUT_WR, close; what each gives is what Linux gives."""
    on, _, host_ip = stack
    ls = kernel_listener(host_ip)

    async def main():
        s = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        assert isinstance(s, trio.socket.SocketType) and trioface.is_usnet(s._sock) == (on == "usnet")
        assert s.type == socket.SOCK_STREAM and s.family == socket.AF_INET
        await s.connect(ls.getsockname())
        k, _ = await trio.to_thread.run_sync(ls.accept)
        with k:
            assert not s.is_readable()
            with pytest.raises(BlockingIOError):  # trio made it non-blocking: what its waits rely on
                s._sock.recv(1)
            with trio.fail_after(1):
                await s.wait_writable()  # connected, nothing queued: writable at once
            c = trio.socket.socket()
            with pytest.raises(BlockingIOError) as e:
                c._sock.connect(ls.getsockname())  # what trio's connect waits on
            assert e.value.errno == errno.EINPROGRESS
            c.close()
            k.sendall(b"hello")
            assert await s.recv(5) == b"hello"
            buf = bytearray(10)
            k.sendall(b"world")
            assert await s.recv_into(buf) == 5 and buf[:5] == b"world"
            d = s.dup()
            assert isinstance(d, type(s)) and d.fileno() != s.fileno()
            assert await d.send(b"via dup") == 7
            d.close()
            assert await trio.to_thread.run_sync(k.recv, 100) == b"via dup"
            s.shutdown(socket.SHUT_WR)
            assert s.did_shutdown_SHUT_WR
            assert await trio.to_thread.run_sync(k.recv, 100) == b""  # the FIN
            k.close()
            assert await s.recv(100) == b""
            assert s.is_readable()  # at EOF: readable, as on Linux
        s.close()
        assert s.fileno() == -1
        with pytest.raises(OSError):
            await s.recv(1)
        # a refused connect: trio's wait for writable, then SO_ERROR, as on the kernel
        r = trio.socket.socket()
        with pytest.raises(ConnectionRefusedError):
            await r.connect((host_ip, closed_port))
        r.close()

    closed = KERNEL(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind((host_ip, 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    with ls:
        run(main)


# -- UDP ---------------------------------------------------------------------------------------------


@pytest.mark.privileged
def test_trio_udp_both_ways_with_a_kernel_socket(stack):
    """SOCK_DGRAM through trio.socket: an echo of a kernel socket's datagrams, and a trio socket that
    sends first (names resolved by trio's sendto), each datagram whole and its sender's address right."""
    on, usnet_ip, host_ip = stack

    async def main():
        with KERNEL(socket.AF_INET, socket.SOCK_DGRAM) as k, trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            assert trioface.is_usnet(u._sock) == (on == "usnet")
            k.bind((host_ip, 0))
            k.settimeout(LIMIT)
            await u.bind((usnet_ip, 0))
            uaddr = u.getsockname()
            got = []
            for i in range(5):
                msg = b"ping %d " % i + os.urandom(1000)
                await trio.to_thread.run_sync(k.sendto, msg, uaddr)
                data, addr = await u.recvfrom(2048)
                assert data == msg and addr == k.getsockname()
                await u.sendto(data.upper(), addr)
                got.append(await trio.to_thread.run_sync(k.recvfrom, 2048))
            assert got == [(m.upper(), uaddr) for m in [g[0].lower() for g in got]]
            # trio first: an unbound socket, to a kernel socket's address
            v = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await v.sendto(b"first", k.getsockname())
            data, addr = await trio.to_thread.run_sync(k.recvfrom, 100)
            assert data == b"first" and addr == (usnet_ip, v.getsockname()[1])
            assert v.getsockname()[0] == "0.0.0.0"  # bound by its first sendto, to the wildcard (Linux)
            await trio.to_thread.run_sync(k.sendto, b"answer", addr)
            assert await v.recvfrom(100) == (b"answer", k.getsockname())
            v.close()

    run(main)


# -- names ---------------------------------------------------------------------------------------------


@pytest.mark.privileged
def test_trio_names_resolve_through_usnet(patched, world):  # noqa: F811 (a fixture)
    """trio.socket.getaddrinfo asks usnet's resolver (dnsmasq over usnet's UDP, the hosts file first),
    and gives what usnet.socket.getaddrinfo gives; open_tcp_stream connects to a name."""
    _usnet_ip, host_ip = patched
    x = world.x
    ls = kernel_listener(host_ip)

    async def main():
        www = await trio.socket.getaddrinfo("www.usnet.test", 80, type=socket.SOCK_STREAM)
        assert sorted(a[4][0] for a in www) == sorted([f"10.{x}.0.7", f"fd00:{x}::7"])
        assert www == us.getaddrinfo("www.usnet.test", 80, type=socket.SOCK_STREAM)
        hosted = await trio.socket.getaddrinfo("hosted.test", 80, socket.AF_INET, socket.SOCK_STREAM)
        assert [a[4] for a in hosted] == [(f"10.{x}.0.9", 80)]  # the hosts file, not DNS's .99
        with pytest.raises(socket.gaierror) as e:
            await trio.socket.getaddrinfo("nx.test", 80)
        assert e.value.errno == socket.EAI_NONAME
        async with trio.open_nursery() as n:  # example.test is host_ip in dnsmasq
            n.start_soon(trio.to_thread.run_sync, kernel_serve_once, ls, b"named")
            stream = await trio.open_tcp_stream("example.test", ls.getsockname()[1])
            await stream.send_eof()
            assert await receive_to_eof(stream) == hashlib.sha256(b"").digest() + b"named"
            await stream.aclose()

    with ls:
        run(main)


# -- cancellation --------------------------------------------------------------------------------------


@pytest.mark.privileged
def test_trio_cancellation_leaves_the_socket_usable_or_closed(stack):
    """move_on_after around a recv that never completes returns in time; the stream then still
    carries data both ways. A connect cancelled before the handshake completes closes the socket
    (trio's rule), and fail_after raises TooSlowError."""
    _on, _, host_ip = stack
    ls = kernel_listener(host_ip)
    x = host_ip.split(".")[1]

    async def main():
        stream = await trio.open_tcp_stream(host_ip, ls.getsockname()[1])
        k, _ = await trio.to_thread.run_sync(ls.accept)
        with k:
            k.settimeout(LIMIT)
            start = trio.current_time()
            with trio.move_on_after(0.3) as cs:
                await stream.receive_some(100)
            assert cs.cancelled_caught
            assert trio.current_time() - start < 3  # generous: it returned, it did not wait for data
            with pytest.raises(trio.TooSlowError):
                with trio.fail_after(0.2):
                    await stream.receive_some(100)
            await trio.to_thread.run_sync(k.sendall, b"late")
            assert await stream.receive_some(100) == b"late"
            await stream.send_all(b"still here")
            assert await trio.to_thread.run_sync(k.recv, 100) == b"still here"
            await stream.aclose()
            assert await trio.to_thread.run_sync(k.recv, 100) == b""  # closed cleanly: FIN
        # a connect to an address nobody answers (no ARP reply) cancelled mid-handshake
        s = trio.socket.socket()
        with trio.move_on_after(0.3) as cs:
            await s.connect((f"10.{x}.0.77", 9))
        assert cs.cancelled_caught
        assert s.fileno() == -1 and s._sock.fileno() == -1  # trio closes a socket whose connect it cancelled

    with ls:
        run(main)


# -- TLS -------------------------------------------------------------------------------------------------


@pytest.mark.privileged
def test_trio_tls_both_ways_with_a_trustme_ca(patched, ca):  # noqa: F811 (a fixture)
    """trio.open_ssl_over_tcp_stream to a kernel TLS server, and trio.serve_ssl_over_tcp fetched by a
    kernel TLS client; certificates from a trustme CA, hostnames checked."""
    usnet_ip, host_ip = patched
    up = os.urandom(SIZE)
    ls = kernel_listener(host_ip)
    kernel_server_ctx = server_context(ca, host_ip)

    def kernel_tls_serve() -> bytes:
        k, _ = ls.accept()
        k.settimeout(LIMIT)
        with kernel_server_ctx.wrap_socket(k, server_side=True) as t:
            got = b""
            while len(got) < SIZE:
                got += t.recv(1 << 16)
            t.sendall(hashlib.sha256(got).digest())
            return got

    def kernel_tls_fetch(k, addr) -> bytes:
        with k:
            k.settimeout(LIMIT)
            k.connect(addr)
            with client_context(ca).wrap_socket(k, server_hostname=usnet_ip) as t:
                assert isinstance(t, ssl.SSLSocket)
                t.sendall(up)
                got = b""
                while len(got) < 32:
                    got += t.recv(100)
                return got

    async def main():
        got: dict = {}
        async with trio.open_nursery() as n:
            async def serve():
                got["kernel"] = await trio.to_thread.run_sync(kernel_tls_serve)
            n.start_soon(serve)
            stream = await trio.open_ssl_over_tcp_stream(host_ip, ls.getsockname()[1], ssl_context=client_context(ca))
            assert trioface.is_usnet(stream.transport_stream.socket._sock)
            await stream.send_all(up)
            got["digest"] = await stream.receive_some(100)
            await stream.aclose()

        async def handler(stream: trio.SSLStream) -> None:
            data = b""
            while len(data) < SIZE:
                data += await stream.receive_some(1 << 16)
            await stream.send_all(hashlib.sha256(data).digest())
            await stream.aclose()

        async with trio.open_nursery() as n:
            listeners = await n.start(partial(trio.serve_ssl_over_tcp, handler, 0, server_context(ca, usnet_ip),
                                                    host=usnet_ip))
            addr = listeners[0].transport_listener.socket.getsockname()
            k = KERNEL(socket.AF_INET, socket.SOCK_STREAM)  # in this thread's namespace: see kernel_fetch
            got["trio server"] = await trio.to_thread.run_sync(kernel_tls_fetch, k, addr)
            n.cancel_scope.cancel()
        return got

    with ls:
        got = run(main)
    assert got["kernel"] == up
    assert got["digest"] == got["trio server"] == hashlib.sha256(up).digest()


# -- anyio on trio ---------------------------------------------------------------------------------------


async def anyio_serve_once(listener: anyio.abc.SocketListener, data: bytes) -> None:
    """One connection from `listener` (its accept: serve() runs until cancelled), answered as
    `digest_then_data` answers."""
    async with await listener.accept() as stream:
        got = b""
        async for chunk in stream:
            got += chunk
        await stream.send(hashlib.sha256(got).digest() + data)


@pytest.mark.privileged
def test_anyio_on_trio_create_tcp_listener_fetched_by_a_kernel_client(patched):  # noqa: F811 (a fixture)
    """anyio.create_tcp_listener on the trio backend: a standard socket (usnet's, under the patch)
    that anyio hands to trio.socket.from_stdlib_socket; a kernel client, 300 KB each way."""
    usnet_ip, _host_ip = patched
    up, down = os.urandom(SIZE), os.urandom(SIZE)

    async def main():
        got: dict = {}
        multi = await anyio.create_tcp_listener(local_host=usnet_ip)
        [listener] = multi.listeners  # one address: one listener
        assert trioface.is_usnet(listener.extra(anyio.abc.SocketAttribute.raw_socket))
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with multi, anyio.create_task_group() as tg:
            async def fetch():
                got["served"] = await trio.to_thread.run_sync(kernel_fetch((usnet_ip, port), up))
            tg.start_soon(fetch)
            await anyio_serve_once(listener, down)
        return got

    got = run(main, backend="anyio")
    assert got["served"] == hashlib.sha256(up).digest() + down


@pytest.mark.privileged
def test_anyio_on_trio_connect_tcp_to_a_kernel_server(patched):  # noqa: F811 (a fixture)
    """anyio.connect_tcp on the trio backend to a kernel listener, 300 KB each way."""
    _usnet_ip, host_ip = patched
    up, down = os.urandom(SIZE), os.urandom(SIZE)
    ls = kernel_listener(host_ip)

    async def main():
        got: dict = {}
        async with anyio.create_task_group() as tg:
            async def serve():
                got["kernel"] = await trio.to_thread.run_sync(kernel_serve_once, ls, down)
            tg.start_soon(serve)
            async with await anyio.connect_tcp(host_ip, ls.getsockname()[1]) as stream:
                assert trioface.is_usnet(stream.extra(anyio.abc.SocketAttribute.raw_socket))
                await stream.send(up)
                await stream.send_eof()
                chunks = []
                async for chunk in stream:
                    chunks.append(chunk)
                got["anyio"] = b"".join(chunks)
        return got

    with ls:
        got = run(main, backend="anyio")
    assert got["kernel"] == up
    assert got["anyio"] == hashlib.sha256(up).digest() + down


# -- usnet run -----------------------------------------------------------------------------------------


PROGRAM = textwrap.dedent("""
    import hashlib, sys
    from functools import partial
    import trio

    async def handler(stream):
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
        await stream.send_all(hashlib.sha256(data).digest())
        await stream.aclose()

    async def main():
        async with trio.open_nursery() as n:
            listeners = await n.start(partial(trio.serve_tcp, handler, 0, host=sys.argv[1]))
            sock = listeners[0].socket
            print("port", sock.getsockname()[1], type(sock._sock).__module__, flush=True)

    trio.run(main)
""")


@pytest.mark.privileged
def test_usnet_run_a_trio_server_as_on_the_kernel(usnetd_path, tmp_path):  # noqa: F811 (a fixture)
    """The same trio program (trio imported after the patch: `usnet run`'s import hook) serves a
    kernel client under `usnet run` and on the kernel itself, with the same answers."""
    path, usnet_ip, host_ip = usnetd_path
    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    up = os.urandom(SIZE)
    answers = {}
    for where, cmd in (("usnet", [sys.executable, "-m", "usnet", "run", "--", sys.executable, str(prog), usnet_ip]),
                       ("kernel", [sys.executable, str(prog), host_ip])):
        env = child_env(path) if where == "usnet" else {k: v for k, v in os.environ.items() if k != "USNET_PATCH"}
        proc, port = started(cmd, env)
        try:
            answers[where] = kernel_fetch((usnet_ip if where == "usnet" else host_ip, port), up)()
        finally:
            stop(proc)
    assert answers["usnet"] == answers["kernel"] == hashlib.sha256(up).digest()


def test_trio_imported_after_the_patch_wraps_usnet_sockets_and_unpatch_restores():
    """In a fresh interpreter: patch, then import trio (as under `usnet run`): trio's constructor is
    usnet's and still wraps kernel sockets (socketpair) as before; unpatch gives trio its own back."""
    prog = textwrap.dedent("""
        import usnet
        from usnet.client import patch, trioface
        patch.patch()
        import trio, trio.socket, trio._socket
        original = trioface._saved["from_stdlib_socket"]
        assert trio.socket.from_stdlib_socket is trio._socket.from_stdlib_socket is not original
        assert trio.socket.from_stdlib_socket.__wrapped__ is original
        a, b = trio.socket.socketpair()
        assert isinstance(a, trio.socket.SocketType) and not trioface.is_usnet(a._sock)
        async def pair():
            await a.send(b"kernel")
            assert await b.recv(10) == b"kernel"
            a.close(); b.close()
        trio.run(pair)
        patch.unpatch()
        assert trio.socket.from_stdlib_socket is trio._socket.from_stdlib_socket is original
        patch.patch()
        assert trio.socket.from_stdlib_socket.__wrapped__ is original
        print("ok")
    """)
    got = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=LIMIT,
                         env={**os.environ, "USNET_PATCH": ""})
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "ok"
