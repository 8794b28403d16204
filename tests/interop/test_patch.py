"""One line to run an unmodified program on usnet: `usnet run`, `usnet.patch()` and `usnet.aio.install()`.

Real programs and libraries (Python's http.server, urllib, http.client with TLS, asyncio) run on
usnet against real kernel peers (curl, http.server, kernel sockets) on the far end of a TAP, in the
test's own network namespace. The domain is embedded in the test process and listens on a socket
path, as usnetd does, so programs in child processes find it through USNET_SOCKET and use its
first (only) netif without being told.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import select
import socket
import ssl
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator

import pytest

from tests.helpers import PEERS
from tests.helpers.util import client_context
from usnet import aio
from usnet import socket as us
from usnet.abi.transport import listen_seqpacket
from usnet.client import Client
from usnet.client import patch as patching

LIMIT = 30  # seconds: reached only when something is broken
BODY = os.urandom(1500).hex().encode() + b"\n"  # no "|": curl's write-out below splits on it


@pytest.fixture
def usnetd_path(tap_domain, sockdir):
    """(socket path, usnet_ip, host_ip): the TAP domain, reachable at a socket path as usnetd is."""
    d, _ifname, usnet_ip, host_ip = tap_domain
    path = str(sockdir / "usnetd.sock")
    d.listen(listen_seqpacket(path))
    yield path, usnet_ip, host_ip


@pytest.fixture
def site(tmp_path):
    """A directory to serve, with one file of known contents."""
    (tmp_path / "f.bin").write_bytes(BODY)
    return tmp_path


def patched_onto(tap) -> Iterator[tuple[str, str]]:
    """This process patched onto a TAP domain (`tap_domain`'s tuple) while the generator runs;
    unpatched and unconfigured afterwards. Yields (usnet_ip, host_ip)."""
    d, ifname, usnet_ip, host_ip = tap
    patching.patch(Client.local(d), ifname)
    try:
        yield usnet_ip, host_ip
    finally:
        patching.unpatch()
        us.configure(None, None)


@pytest.fixture
def patched(tap_domain):
    """This process patched onto the TAP domain (`patched_onto`)."""
    yield from patched_onto(tap_domain)


def child_env(path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("USNET_NETIF", "USNET_PATCH")}
    env["USNET_SOCKET"] = path
    env["PYTHONUNBUFFERED"] = "1"
    return env


def kernel_env() -> dict[str, str]:
    """The environment of a program run on kernel sockets beside its run under `usnet run`."""
    return {k: v for k, v in os.environ.items() if k != "USNET_PATCH"}


class PeerProgram:
    """A program of tests/peers, run as it is (kernel sockets) or under `usnet run`, the same
    arguments both ways: the comparisons of the programs sweeps."""

    def __init__(self, name: str, limit: float = LIMIT) -> None:
        self.path = str(PEERS / name)
        self.limit = limit

    def command(self, on_usnet: bool, *args: str) -> list[str]:
        program = [sys.executable, "-u", self.path, *args]
        return [sys.executable, "-m", "usnet", "run", "--", *program] if on_usnet else program

    def run(self, path: str, on_usnet: bool, *args: str) -> str:
        """The program's output (its last line), on usnet or on the kernel; it must exit 0."""
        got = subprocess.run(self.command(on_usnet, *args), capture_output=True, timeout=self.limit,
                             env=child_env(path) if on_usnet else kernel_env())
        assert got.returncode == 0, ("usnet" if on_usnet else "kernel", got.stderr.decode()[-3000:])
        return got.stdout.decode().strip().split("\n")[-1]


def started(cmd: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """A server process and the port it says it listens on (http.server's line, or "port N")."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    ready, _, _ = select.select([proc.stdout], [], [], LIMIT)
    line = proc.stdout.readline().decode() if ready else ""
    m = re.search(r"port (\d+)", line)
    if m is None:
        proc.kill()
        err = proc.stderr.read().decode()[-2000:] if proc.stderr is not None else ""
        stop(proc)
        pytest.fail(f"{cmd} did not start: {line!r} {err}")
    return proc, int(m.group(1))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


def kernel_http_server(site, host_ip: str) -> tuple[subprocess.Popen, int]:
    """Python's own http.server on the kernel side (no usnet in its environment), HTTP/1.1."""
    env = {k: v for k, v in os.environ.items() if k != "USNET_PATCH"}
    return started([sys.executable, "-u", "-m", "http.server", "-b", host_ip, "-p", "HTTP/1.1",
                    "-d", str(site), "0"], env)


# -- usnet run ------------------------------------------------------------------------------------------


@pytest.mark.privileged
def test_http_server_bound_to_ipv6_wildcard_takes_ipv4_as_on_linux(usnetd_path, site):
    """`http.server --bind ::` is one dual-stack socket (IPV6_V6ONLY off, Linux's default): curl
    reaches it over IPv4 and it logs the client as ::ffff:a.b.c.d, on usnet (from the kernel
    side of the TAP) as on kernel sockets (the namespace's own loopback)."""
    path, usnet_ip, host_ip = usnetd_path
    unpatched = {k: v for k, v in os.environ.items() if k != "USNET_PATCH"}
    for cmd, env, addr, client in (
            ([sys.executable, "-m", "usnet", "run", "--"], child_env(path), usnet_ip, host_ip),
            ([], unpatched, "127.0.0.1", "127.0.0.1")):
        server, port = started([*cmd, sys.executable, "-u", "-m", "http.server", "--bind", "::", "-d", str(site), "0"],
                               env)
        try:
            got = subprocess.run(["curl", "-sS", "--fail", "--max-time", str(LIMIT), f"http://{addr}:{port}/f.bin"],
                                 capture_output=True, timeout=LIMIT + 5)
            assert got.returncode == 0 and got.stdout == BODY, got.stderr.decode()
        finally:
            stop_proc = server
            stop_proc.terminate()
            _, err = stop_proc.communicate(timeout=10)
        assert f"::ffff:{client} - - " in err.decode(), err.decode()[-1000:]




@pytest.mark.privileged
def test_usnet_run_http_server_serves_curl_100_requests_on_one_connection(usnetd_path, site):
    """`usnet run -- python -m http.server`: unmodified, on usnet; curl (kernel) keeps one connection."""
    path, usnet_ip, _ = usnetd_path
    server, port = started([sys.executable, "-m", "usnet", "run", "--", sys.executable, "-m", "http.server",
                            "-p", "HTTP/1.1", "-d", str(site), "8000"], child_env(path))
    try:
        assert port == 8000
        url = f"http://{usnet_ip}:{port}/f.bin"
        got = subprocess.run(["curl", "-sS", "--fail", "--max-time", str(LIMIT),
                              "-w", "|%{http_code} %{num_connects}\n", *[url] * 100],
                             capture_output=True, timeout=LIMIT + 5)
        assert got.returncode == 0, got.stderr.decode()
        parts = got.stdout.split(b"|")
        bodies = [parts[0]] + [p.split(b"\n", 1)[1] for p in parts[1:-1]]
        codes = [p.split(b"\n", 1)[0].decode().split() for p in parts[1:]]
        assert len(codes) == 100
        assert all(b == BODY for b in bodies)
        assert {c for c, _ in codes} == {"200"}
        assert sum(int(n) for _, n in codes) == 1  # keep-alive: one connection for all 100 requests
        assert server.poll() is None
    finally:
        stop(server)


@pytest.mark.privileged
@pytest.mark.parametrize("workers", [0, 2])
def test_usnet_run_uvicorn_answers_on_one_kept_alive_connection(usnetd_path, tmp_path, workers):
    """uvicorn, unmodified under `usnet run`: it makes its loop from asyncio.SelectorEventLoop
    itself (not through the policy), which the patch makes usnet's; http.client (kernel) sends
    POSTs on one kept-alive connection and gets each body's SHA-256 back. With `--workers 2`
    it binds the socket and hands it to two spawned processes (multiprocessing pickles it), which
    listen and accept on it through the parent's stack (usnet.client.inherit)."""
    pytest.importorskip("uvicorn")
    path, usnet_ip, _ = usnetd_path
    (tmp_path / "asgi.py").write_text(
        "import hashlib\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    body = b''\n"
        "    while True:\n"
        "        m = await receive()\n"
        "        body += m.get('body', b'')\n"
        "        if not m.get('more_body'):\n"
        "            break\n"
        "    out = hashlib.sha256(body).hexdigest().encode()\n"
        "    await send({'type': 'http.response.start', 'status': 200,\n"
        "                'headers': [(b'content-length', str(len(out)).encode())]})\n"
        "    await send({'type': 'http.response.body', 'body': out})\n")
    env = child_env(path)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp_path), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen([sys.executable, "-m", "usnet", "run", "--", sys.executable, "-m", "uvicorn",
                             "--host", usnet_ip, "--port", "8124", *(["--workers", "2"] if workers else []),
                             "asgi:app"],  # unbuffered: select() below sees every line that is not read yet
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, bufsize=0)
    try:
        log = b""
        # uvicorn's line once it listens; with workers, each worker's "Started server process"
        while b"running on" not in log.lower() or log.count(b"Application startup complete") < max(workers, 1):
            ready, _, _ = select.select([proc.stdout], [], [], LIMIT)
            line = proc.stdout.readline() if ready else b""
            assert line, f"uvicorn did not start: {log.decode()[-2000:]}"
            log += line
        import http.client

        conn = http.client.HTTPConnection(usnet_ip, 8124, timeout=LIMIT)
        for i in range(5):
            body = os.urandom(20_000 + i)
            conn.request("POST", "/", body=body)
            r = conn.getresponse()
            assert r.status == 200 and r.read().decode() == hashlib.sha256(body).hexdigest()
        conn.close()
    finally:
        stop(proc)


@pytest.mark.privileged
def test_python_m_usnet_run_script_fetches_twice_with_urllib(usnetd_path, site):
    """`python -m usnet run fetch.py URL URL`: an ordinary urllib script, run in-process on usnet."""
    path, _, host_ip = usnetd_path
    server, port = kernel_http_server(site, host_ip)
    try:
        url = f"http://{host_ip}:{port}/f.bin"
        got = subprocess.run([sys.executable, "-m", "usnet", "run", str(PEERS / "fetch.py"), url, url],
                             capture_output=True, timeout=LIMIT, env=child_env(path))
        assert got.returncode == 0, got.stderr.decode()[-3000:]
        digest = hashlib.sha256(BODY).hexdigest()
        assert got.stdout.decode().split("\n") == [f"200 {digest}", f"200 {digest}", ""]
    finally:
        stop(server)


# -- usnet.patch() in this process ------------------------------------------------------------------------


@pytest.mark.privileged
def test_patch_urllib_fetches_twice_from_a_kernel_http_server(patched, site):
    _usnet_ip, host_ip = patched
    server, port = kernel_http_server(site, host_ip)
    try:
        for _ in range(2):
            with urllib.request.urlopen(f"http://{host_ip}:{port}/f.bin", timeout=LIMIT) as r:
                assert isinstance(r.fp.raw._sock, us.socket)  # it went over usnet, not the kernel
                assert r.read() == BODY
    finally:
        stop(server)


@pytest.mark.privileged
def test_patch_https_through_urllib_with_a_trustme_ca(patched, site, ca, tmp_path):
    """HTTPS through urllib: http.client calls SSLContext.wrap_socket on a usnet socket (usnet.tls)."""
    _usnet_ip, host_ip = patched
    pem = tmp_path / "server.pem"
    ca.issue_cert(host_ip).private_key_and_cert_chain_pem.write_to_path(str(pem))
    server, port = started([sys.executable, "-u", str(PEERS / "https_server.py"), "--bind", host_ip,
                            "--cert", str(pem), "--directory", str(site)])
    try:
        ctx = client_context(ca)
        for _ in range(2):
            with urllib.request.urlopen(f"https://{host_ip}:{port}/f.bin", context=ctx, timeout=LIMIT) as r:
                assert r.read() == BODY
        with pytest.raises(urllib.error.URLError) as e:  # the certificate check is still ssl's own
            urllib.request.urlopen(f"https://{host_ip}:{port}/f.bin", context=ssl.create_default_context(),
                                   timeout=LIMIT)
        assert isinstance(e.value.reason, ssl.SSLCertVerificationError)
    finally:
        stop(server)


_EARLY = """
import http.client
from socket import AF_INET, AF_UNIX, SOCK_STREAM, create_connection, getaddrinfo, gethostbyname, socket

conn = None


def make_connection(host, port):  # an HTTPConnection made before the patch holds create_connection
    global conn
    conn = http.client.HTTPConnection(host, port, timeout=30)
"""


@pytest.mark.privileged
def test_names_a_module_bound_before_the_patch_are_usnets_after_it(tap_domain, site, tmp_path, monkeypatch):
    """`from socket import socket, getaddrinfo, ...` and an http.client connection made before
    patch(): after it, the module's names are the patched ones (its AF_INET sockets usnet's, AF_UNIX
    still the kernel's), its early create_connection and HTTPConnection fetch over usnet; unpatch
    puts the names back."""
    d, ifname, _usnet_ip, host_ip = tap_domain
    (tmp_path / "early_app.py").write_text(_EARLY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import early_app

    early_app.make_connection(host_ip, 0)  # the port comes later: only its create_connection matters
    kernel_class, kernel_gai = early_app.socket, early_app.getaddrinfo
    assert kernel_class is patching._KERNEL and kernel_gai is socket.getaddrinfo
    server, port = kernel_http_server(site, host_ip)
    patching.patch(Client.local(d), ifname)
    try:
        assert early_app.socket is socket.socket and early_app.getaddrinfo is socket.getaddrinfo
        assert early_app.gethostbyname is socket.gethostbyname
        with early_app.socket(early_app.AF_INET, early_app.SOCK_STREAM) as s:
            assert isinstance(s, us.socket)
        with early_app.socket(early_app.AF_UNIX, early_app.SOCK_STREAM) as u:
            assert type(u) is patching._KERNEL
        assert early_app.getaddrinfo("localhost", 80, early_app.AF_INET)[0][4] == ("127.0.0.1", 80)
        with early_app.create_connection((host_ip, port), timeout=LIMIT) as c:  # the standard function
            assert isinstance(c, us.socket)
            c.sendall(b"GET /f.bin HTTP/1.0\r\n\r\n")
            assert c.makefile("rb").read().endswith(BODY)
        conn = early_app.conn
        conn.port = port
        for _ in range(2):  # two requests on the connection made before the patch, over usnet
            conn.request("GET", "/f.bin")
            r = conn.getresponse()
            assert r.read() == BODY
            assert isinstance(conn.sock, us.socket)
        conn.close()
    finally:
        patching.unpatch()
        us.configure(None, None)
        stop(server)
        sys.modules.pop("early_app", None)
    assert early_app.socket is kernel_class and early_app.getaddrinfo is kernel_gai


def test_patch_keeps_kernel_sockets_af_unix_socketpair_and_fd_built(sockdir):
    """Under the patch, what usnet does not carry is the kernel's, exactly as before; no usnetd needed."""
    patching.patch()
    try:
        a, b = socket.socketpair()
        with a, b:
            assert type(a) is patching._KERNEL
            a.sendall(b"pair")
            assert b.recv(4) == b"pair"
            dup = socket.socket(fileno=os.dup(a.fileno()))
            with dup:
                assert type(dup) is patching._KERNEL and dup.family == socket.AF_UNIX
                dup.sendall(b"dup")
                assert b.recv(3) == b"dup"
        path = str(sockdir / "u.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ls:
            ls.bind(path)
            ls.listen()
            with socket.socket(socket.AF_UNIX) as c:
                c.connect(path)
                k, _ = ls.accept()
                with k:
                    c.sendall(b"unix")
                    assert k.recv(4) == b"unix"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as u:
            assert isinstance(u, socket.socket)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with tcp:
            assert isinstance(tcp, us.socket) and isinstance(tcp, socket.socket)

        async def over_unix() -> bytes:  # asyncio's loop (its self-pipe is a socketpair) and AF_UNIX streams
            assert isinstance(asyncio.get_running_loop(), aio.EventLoop)

            async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                w.write(await r.readexactly(5))
                await w.drain()
                w.close()

            srv = await asyncio.start_unix_server(echo, str(sockdir / "a.sock"))
            async with srv:
                r, w = await asyncio.open_unix_connection(str(sockdir / "a.sock"))
                w.write(b"async")
                got = await r.readexactly(5)
                w.close()
                return got

        assert asyncio.run(asyncio.wait_for(over_unix(), LIMIT)) == b"async"
    finally:
        patching.unpatch()
    assert socket.socket is patching._KERNEL
    assert not isinstance(asyncio.get_event_loop_policy(), aio.EventLoopPolicy)


# -- asyncio under the policy ------------------------------------------------------------------------------


@pytest.fixture
def policy(tap_domain):
    """usnet.aio.install() on the TAP domain (sockets themselves unpatched: the peers are the kernel's)."""
    d, ifname, usnet_ip, host_ip = tap_domain
    us.configure(Client.local(d), ifname)
    before = asyncio.get_event_loop_policy()
    aio.install()
    try:
        yield usnet_ip, host_ip
    finally:
        asyncio.set_event_loop_policy(before)
        us.configure(None, None)


def kernel_client(addr: tuple[str, int], payload: bytes, out: dict) -> threading.Thread:
    """A kernel TCP client in a thread: send `payload`, half-close, read to EOF into out["got"]."""
    def run() -> None:
        with socket.create_connection(addr, timeout=LIMIT) as k:
            k.sendall(payload)
            k.shutdown(socket.SHUT_WR)
            chunks = []
            while b := k.recv(65536):
                chunks.append(b)
            out["got"] = b"".join(chunks)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.privileged
def test_policy_asyncio_streams_against_kernel_peers(policy):
    usnet_ip, host_ip = policy
    data = os.urandom(300_000)

    async def main() -> tuple[bytes, bytes]:
        async def upper(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            got = await r.read()
            w.write(hashlib.sha256(got).digest())
            await w.drain()
            w.close()
            await w.wait_closed()

        server = await asyncio.start_server(upper, usnet_ip, 0)  # plain asyncio: the policy makes it usnet's
        assert isinstance(server, aio.Server)
        port = server.sockets[0].getsockname()[1]
        out: dict = {}
        t = kernel_client((usnet_ip, port), data, out)
        await asyncio.get_running_loop().run_in_executor(None, t.join, LIMIT)
        server.close()
        await server.wait_closed()

        # and the other way: asyncio's open_connection on usnet to a kernel listener
        with socket.create_server((host_ip, 0)) as ls:
            ls.setblocking(False)
            loop = asyncio.get_running_loop()
            connecting = asyncio.ensure_future(asyncio.open_connection(host_ip, ls.getsockname()[1]))
            k, _ = await loop.sock_accept(ls)  # a kernel socket: asyncio's own sock_accept
            with k:
                r, w = await connecting
                assert isinstance(w.get_extra_info("socket"), us.socket)

                async def read_all() -> bytes:
                    got = b""
                    while len(got) < len(data):
                        got += await loop.sock_recv(k, 65536)
                    return got

                # the kernel end reads while the writer drains, as a program's peer does: a drain
                # that waited for a reader started only after it would wait on how much the
                # send and receive buffers happen to hold (on kernel sockets too)
                reading = asyncio.ensure_future(read_all())
                w.write(data)
                await w.drain()
                w.write_eof()
                got = await reading
                await loop.sock_sendall(k, b"bye")
                k.shutdown(socket.SHUT_WR)
                assert await r.read() == b"bye"
                w.close()
        return out.get("got", b""), got

    digest, echoed = asyncio.run(asyncio.wait_for(main(), LIMIT))
    assert digest == hashlib.sha256(data).digest()
    assert echoed == data


@pytest.mark.privileged
def test_policy_sock_accept_recv_sendall_on_usnet_sockets(policy):
    """loop.sock_accept/sock_recv/sock_sendall on a usnet socket: a watcher wakes them, nothing spins."""
    usnet_ip, _ = policy
    data = os.urandom(200_000)

    async def main() -> tuple[bytes, int]:
        loop = asyncio.get_running_loop()
        ls = us.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.bind((usnet_ip, 0))
        ls.listen()
        ls.setblocking(False)
        calls = 0
        accept = ls.accept

        def counted() -> tuple:
            nonlocal calls
            calls += 1
            return accept()

        ls.accept = counted  # type: ignore[method-assign]
        with ls:
            out: dict = {}
            accepting = asyncio.ensure_future(loop.sock_accept(ls))
            await asyncio.sleep(0.2)  # not synchronisation: the window in which a busy wait would retry
            t = kernel_client((usnet_ip, ls.getsockname()[1]), data, out)
            conn, _addr = await accepting
            with conn:
                assert conn.gettimeout() == 0.0
                got = b""
                while chunk := await loop.sock_recv(conn, 65536):
                    got += chunk
                await loop.sock_sendall(conn, hashlib.sha256(got).digest() + got)
            await loop.run_in_executor(None, t.join, LIMIT)
        return out.get("got", b""), calls

    got, calls = asyncio.run(asyncio.wait_for(main(), LIMIT))
    assert got == hashlib.sha256(data).digest() + data
    assert calls == 2  # once to find the queue empty, once when the watcher said a connection waits


@pytest.mark.privileged
def test_transport_readiness_clears_once_its_data_is_taken(policy):
    """An idle connection under a transport does not look readable (a pool's "dropped?" probe)."""
    _usnet_ip, host_ip = policy

    async def main() -> tuple[bool, bool, bool]:
        with socket.create_server((host_ip, 0)) as ls:
            ls.setblocking(False)
            loop = asyncio.get_running_loop()
            connecting = asyncio.ensure_future(asyncio.open_connection(host_ip, ls.getsockname()[1]))
            k, _ = await loop.sock_accept(ls)
            with k:
                r, w = await connecting
                sock = w.get_extra_info("socket")
                await loop.sock_sendall(k, b"hello")
                assert await r.readexactly(5) == b"hello"
                idle = bool(select.select([sock], [], [], 0)[0])
                await loop.sock_sendall(k, b"more")
                assert await r.readexactly(4) == b"more"
                idle_again = bool(select.select([sock], [], [], 0)[0])
                k.shutdown(socket.SHUT_WR)
                assert await r.read() == b""
                at_eof = bool(select.select([sock], [], [], 0)[0])
                w.close()
                return idle, idle_again, at_eof

    idle, idle_again, at_eof = asyncio.run(asyncio.wait_for(main(), LIMIT))
    assert not idle and not idle_again
    assert at_eof  # EOF is readable, as on the kernel: recv would return b"" at once


async def _paused_through_an_error(host_ip: str, fin: bool) -> list:
    """A transport paused from its start while its kernel peer sends "abc" and ends: with a FIN
    (`fin`: our "x", written after, meets its closed socket, which resets us in CLOSE_WAIT) or
    with a reset (SO_LINGER 0). Once the socket says POLLERR, reading resumes: what the protocol
    saw, in order."""
    loop = asyncio.get_running_loop()
    seen: list = []
    lost: asyncio.Future = loop.create_future()

    class Paused(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            transport.pause_reading()

        def data_received(self, data: bytes) -> None:
            seen.append(data)

        def eof_received(self) -> None:
            seen.append("eof")

        def connection_lost(self, exc) -> None:
            seen.append(["lost", type(exc).__name__ if exc else None])
            lost.set_result(None)

    with socket.create_server((host_ip, 0)) as ls:
        t, _p = await loop.create_connection(Paused, host_ip, ls.getsockname()[1])
        peer, _ = ls.accept()
        peer.sendall(b"abc")
        if not fin:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        peer.close()
        if fin:
            t.write(b"x")  # (after the close: its answer is a RST, behind the FIN)
        p = select.poll()
        p.register(t.get_extra_info("socket").fileno(), select.POLLERR)
        for _ in range(int(LIMIT / 0.01)):  # (the loop runs between looks: usnet's pump may need it)
            if any(ev & select.POLLERR for _fd, ev in p.poll(0)):
                break
            await asyncio.sleep(0.01)
        seen.append(bool(any(ev & select.POLLERR for _fd, ev in p.poll(0))))
        t.resume_reading()
        await asyncio.wait_for(lost, LIMIT)
    return seen


@pytest.mark.privileged
@pytest.mark.parametrize("fin", [True, False], ids=["fin-then-reset", "reset"])
def test_a_paused_transport_meets_its_connections_error_as_on_the_kernel(policy, fin):
    """The kernel's selector transport meets a connection's error only by a read or a write:
    paused, it sees nothing; resumed, it reads the data queued before the error, then, after the
    peer's FIN, EOF (tcp_fin's SOCK_DONE comes before sk_err), else the error. usnet's transport
    ended at the error at once: connection_lost(EPIPE) while paused, the data and the EOF lost."""
    _usnet_ip, host_ip = policy
    on_usnet = asyncio.run(_paused_through_an_error(host_ip, fin))
    asyncio.set_event_loop_policy(None)  # (the fixture puts usnet's back at its end)
    on_kernel = asyncio.run(_paused_through_an_error(host_ip, fin))
    assert on_usnet == on_kernel
    assert on_kernel == ([True, b"abc", "eof", ["lost", None]] if fin
                         else [True, b"abc", ["lost", "ConnectionResetError"]])


@pytest.mark.privileged
def test_policy_datagram_endpoint_with_a_kernel_udp_peer(policy):
    """create_datagram_endpoint on usnet: an echo of a kernel UDP socket's datagrams, both ways."""
    usnet_ip, host_ip = policy

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple) -> None:
            self.transport.sendto(data.upper(), addr)  # type: ignore[attr-defined]

    async def main() -> list[tuple[bytes, tuple]]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=(usnet_ip, 0))
        port = transport.get_extra_info("sockname")[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k:  # unpatched: the kernel's
            k.bind((host_ip, 0))
            k.setblocking(False)
            got = []
            for i in range(5):
                await loop.sock_sendto(k, b"ping %d" % i, (usnet_ip, port))
                got.append(await loop.sock_recvfrom(k, 100))
            # and a connected endpoint of ours, sending first
            received: asyncio.Queue = asyncio.Queue()

            class Client_(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: tuple) -> None:
                    received.put_nowait((data, addr))

            t2, _ = await loop.create_datagram_endpoint(Client_, remote_addr=k.getsockname())
            t2.sendto(b"hello")
            data, addr = await loop.sock_recvfrom(k, 100)
            await loop.sock_sendto(k, data[::-1], addr)
            got.append(await received.get())
            t2.close()
        transport.close()
        return got

    got = asyncio.run(asyncio.wait_for(main(), LIMIT))
    assert [d for d, _ in got[:5]] == [b"PING %d" % i for i in range(5)]
    assert {addr[0] for _, addr in got[:5]} == {usnet_ip}
    assert got[5] == (b"olleh", (host_ip, got[5][1][1]))


def test_a_loop_made_from_asyncio_selector_event_loop_is_usnets(patched):
    """uvicorn makes its loop from the class (`asyncio.SelectorEventLoop()`), not through the
    policy: after the patch that class is usnet's loop, a subclass of the standard one; after
    unpatch it is the standard class again."""
    standard = patching._saved["SelectorEventLoop"]
    loop = asyncio.SelectorEventLoop()
    try:
        assert isinstance(loop, aio.EventLoop) and isinstance(loop, standard)
    finally:
        loop.close()
    patching.unpatch()
    assert asyncio.SelectorEventLoop is standard
