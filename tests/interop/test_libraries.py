"""Popular third-party libraries, unmodified, on usnet against kernel peers (issue 16).

requests (urllib3), httpx (sync, and async through anyio), aiohttp and tornado as clients of a
kernel HTTP(S) server; aiohttp, tornado, Flask (werkzeug's threaded server) and websockets as
servers for a kernel client; websockets echo both ways. Each program (tests/peers/libraries.py)
runs under `usnet run`, and the same program on the kernel's sockets is the reference: what it
checks holds on both (keep-alive on one connection, a large body read in pieces, a POST, HTTPS
with a trustme CA, the library's timeout error against a server that never answers, and its
connection error, with ECONNREFUSED underneath, from a port nothing listens on).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from tests.helpers import PEERS
from tests.helpers.util import client_context, kernel_server, server_context
from tests.interop.test_patch import LIMIT, child_env, started, stop, usnetd_path  # noqa: F401  (a fixture)

PROGRAM = str(PEERS / "libraries.py")
BODY = b"usnet!" * 500  # as in libraries.py
BIG = hashlib.sha256(b"big").hexdigest().encode() * 65536
POSTED = bytes(range(256)) * 1024
TIMEOUT = 1.0


def _command(on_usnet: bool, *args: str) -> list[str]:
    program = [sys.executable, "-u", PROGRAM, *args]
    return [sys.executable, "-m", "usnet", "run", "--", *program] if on_usnet else program


def _kernel_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "USNET_PATCH"}


class _Server(http.server.ThreadingHTTPServer):
    """Knows when the connection a GET /close ended is closed, for GET /closed to wait on."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.ending: object = None  # the connection a GET /close ends
        self.ended = threading.Event()

    def shutdown_request(self, request) -> None:  # type: ignore[no-untyped-def]
        super().shutdown_request(request)
        if request is self.ending:
            self.ended.set()


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /f.bin, GET /big, GET /peer, GET /close, GET /closed, POST /sha (the body's SHA-256);
    HTTP/1.1, kept alive. GET /closed answers once the connection of the last GET /close is closed:
    the client asks it on another connection, so that its next request on the dropped one finds
    the FIN already there (without it, whether the FIN or the next request comes first is a race)."""

    server: _Server

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        peer = f"{self.client_address[0]}:{self.client_address[1]}"  # the same for every request on one connection
        if self.path == "/closed":
            self.server.ended.wait(LIMIT)
        bodies = {"/f.bin": BODY, "/close": BODY, "/closed": BODY, "/big": BIG, "/peer": peer.encode()}
        self._send(bodies.get(self.path, b""))
        if self.path == "/close":  # closed after the answer, though its headers kept it alive
            self.server.ending, self.close_connection = self.request, True

    def do_POST(self) -> None:
        self._send(hashlib.sha256(self.rfile.read(int(self.headers["Content-Length"]))).hexdigest().encode())


@contextlib.contextmanager
def _kernel_http(host: str, ctx: ssl.SSLContext | None = None):
    """The kernel's HTTP server (HTTPS with `ctx`) in a thread of the test; yields its base URL."""
    srv = _Server((host, 0))
    if ctx is not None:
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"{'https' if ctx else 'http'}://{host}:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(LIMIT)


@contextlib.contextmanager
def _silent_and_refused(host: str):
    """(silent port, refused port): a kernel listener that never accepts (the handshake completes in
    its backlog, no answer ever comes) and a port that is bound but not listening (RST to a SYN)."""
    silent = socket.create_server((host, 0))
    closed = socket.socket()
    closed.bind((host, 0))
    try:
        yield silent.getsockname()[1], closed.getsockname()[1]
    finally:
        silent.close()
        closed.close()


def _run(cmd: list[str], env: dict[str, str]) -> list[str]:
    got = subprocess.run(cmd, capture_output=True, timeout=LIMIT, env=env)
    assert got.returncode == 0, (got.stdout.decode()[-1000:], got.stderr.decode()[-4000:])
    return got.stdout.decode().split("\n")[:-1]


@pytest.mark.privileged
@pytest.mark.slow
@pytest.mark.parametrize("on_usnet", [True, False], ids=["usnet", "kernel"])
@pytest.mark.parametrize("lib", ["requests", "httpx", "httpx-async", "aiohttp", "tornado"])
def test_client_library_against_a_kernel_http_server(usnetd_path, ca, tmp_path, lib, on_usnet):  # noqa: F811
    """The library's own checks (tests/peers/libraries.py) all pass, and its timeout comes within
    its bound: not before it, and well within a second after it."""
    pytest.importorskip(lib.split("-")[0])
    path, _, host_ip = usnetd_path
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    with _kernel_http(host_ip) as base, _kernel_http(host_ip, server_context(ca, host_ip)) as https, \
            _silent_and_refused(host_ip) as (silent, refused):
        lines = _run(_command(on_usnet, lib, "client", base, https, str(pem), str(silent), str(refused)),
                     child_env(path) if on_usnet else _kernel_env())
    checks = [line.split()[0] for line in lines]
    assert checks == {"requests": ["keepalive", "stream", "post", "https", "dropped", "connect-timeout", "timeout",
                                   "refused"],
                      "httpx-async": ["keepalive", "stream", "post", "https", "connect-timeout", "timeout", "refused"],
                      "tornado": ["stream", "post", "https", "timeout", "refused"],
                      }.get(lib, ["keepalive", "stream", "post", "https", "timeout", "refused"])
    for line in lines:
        if "timeout" in line:
            assert TIMEOUT * 0.9 <= float(line.split()[1]) < TIMEOUT + 1.5, line


def _kernel_client_checks(ip: str, port: int, ctx: ssl.SSLContext | None = None) -> None:
    """http.client (kernel) on one kept-alive connection: a small body twice, the large one, POSTs
    (over TLS with `ctx`)."""
    conn = (http.client.HTTPConnection(ip, port, timeout=LIMIT) if ctx is None else
            http.client.HTTPSConnection(ip, port, timeout=LIMIT, context=ctx))
    try:
        conn.request("GET", "/f.bin")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == BODY
        first = conn.sock
        conn.request("GET", "/f.bin")
        assert conn.getresponse().read() == BODY
        conn.request("GET", "/big")
        assert hashlib.sha256(conn.getresponse().read()).digest() == hashlib.sha256(BIG).digest()
        for n in (0, 1, len(POSTED)):
            conn.request("POST", "/sha", body=POSTED[:n])
            assert conn.getresponse().read().decode() == hashlib.sha256(POSTED[:n]).hexdigest()
        assert conn.sock is first  # every request on the one connection
    finally:
        conn.close()


@pytest.mark.privileged
@pytest.mark.slow
@pytest.mark.parametrize("on_usnet", [True, False], ids=["usnet", "kernel"])
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("lib", ["aiohttp", "tornado", "flask"])
def test_server_library_serves_a_kernel_client(usnetd_path, ca, tmp_path, lib, tls, on_usnet):  # noqa: F811
    """The library's server, on usnet (or the kernel), answers http.client and curl on the kernel;
    over TLS too (aiohttp: asyncio's SSL protocol on usnet's transport; tornado: SSLContext.wrap_socket
    of each accepted socket; werkzeug: of the listening socket)."""
    pytest.importorskip(lib)
    path, usnet_ip, host_ip = usnetd_path
    ip = usnet_ip if on_usnet else host_ip
    pem = ca_pem = tmp_path / "server.pem"
    extra, scheme, curl_ca = [], "http", []
    if tls:
        ca.issue_cert(ip).private_key_and_cert_chain_pem.write_to_path(str(pem))
        ca_pem = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_pem))
        extra, scheme, curl_ca = [str(pem)], "https", ["--cacert", str(ca_pem)]
    server, port = started(_command(on_usnet, lib, "server", ip, *extra),
                           child_env(path) if on_usnet else _kernel_env())
    try:
        _kernel_client_checks(ip, port, client_context(ca) if tls else None)
        got = subprocess.run(["curl", "-sS", "--fail", *curl_ca, "--max-time", str(LIMIT),
                              f"{scheme}://{ip}:{port}/big", f"{scheme}://{ip}:{port}/f.bin"],
                             capture_output=True, timeout=LIMIT + 5)
        assert got.returncode == 0, got.stderr.decode()
        assert got.stdout == BIG + BODY
        if lib == "aiohttp":  # a FileResponse: sent by sendfile
            got = subprocess.run(["curl", "-sS", "--fail", *curl_ca, "--max-time", str(LIMIT),
                                  f"{scheme}://{ip}:{port}/file"], capture_output=True, timeout=LIMIT + 5)
            assert got.returncode == 0 and got.stdout == BIG, got.stderr.decode()
        assert server.poll() is None
    finally:
        stop(server)


@pytest.mark.privileged
@pytest.mark.slow
@pytest.mark.parametrize("server_on_usnet", [True, False], ids=["usnet-server", "usnet-client"])
@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
@pytest.mark.parametrize("lib", ["websockets", "websockets-sync"])
def test_websockets_echo(usnetd_path, ca, tmp_path, lib, server_on_usnet, tls):  # noqa: F811
    """websockets' server on one side and its client on the other, one of them on usnet (wss: TLS);
    its asyncio implementation, and its threaded one on blocking sockets (whose TLS server asserts
    that the socket SSLContext.wrap_socket gave is an ssl.SSLSocket)."""
    pytest.importorskip("websockets")
    path, usnet_ip, host_ip = usnetd_path
    ip = usnet_ip if server_on_usnet else host_ip
    env_usnet, env_kernel = child_env(path), _kernel_env()
    pem, ca_pem = tmp_path / "server.pem", tmp_path / "ca.pem"
    ca.issue_cert(ip).private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    server, port = started(_command(server_on_usnet, lib, "server", ip, *([str(pem)] if tls else [])),
                           env_usnet if server_on_usnet else env_kernel)
    try:
        url = f"{'wss' if tls else 'ws'}://{ip}:{port}/"
        assert _run(_command(not server_on_usnet, lib, "client", url, *([str(ca_pem)] if tls else [])),
                    env_kernel if server_on_usnet else env_usnet) == ["echo"]
        assert server.poll() is None
    finally:
        stop(server)


@pytest.mark.privileged
@pytest.mark.slow
@pytest.mark.parametrize("on_usnet", [True, False], ids=["usnet", "kernel"])
def test_tornado_listens_on_every_address(usnetd_path, tap_domain, on_usnet):  # noqa: F811
    """tornado's `listen(port, "")` binds a socket for each address getaddrinfo gives (0.0.0.0 and
    ::) and gives up on any that fails: on usnet, whose netif has no IPv6 address, the :: one
    binds as on Linux (it hears the loopback netif's ::1) and both say the wildcard, as Linux's do."""
    pytest.importorskip("tornado")
    path, usnet_ip, host_ip = usnetd_path
    tap_domain[0].add_loopback()  # as usnetd has
    server, port = started(_command(on_usnet, "tornado", "server", ""), child_env(path) if on_usnet else _kernel_env())
    try:
        _kernel_client_checks(usnet_ip if on_usnet else host_ip, port)
        conn = http.client.HTTPConnection(usnet_ip if on_usnet else host_ip, port, timeout=LIMIT)
        conn.request("GET", "/names")
        assert json.loads(conn.getresponse().read()) == [["0.0.0.0", port], ["::", port, 0, 0]]
        conn.close()
    finally:
        stop(server)


def _echo_until_eof(sock, peer) -> dict:
    """Echo until the peer's end, and say how it ended: a clean EOF, or a reset."""
    n = 0
    try:
        while data := sock.recv(1 << 16):
            sock.sendall(data)
            n += len(data)
    except ConnectionResetError:
        return {"end": "reset", "n": n}
    return {"end": "eof", "n": n}


@pytest.mark.privileged
@pytest.mark.parametrize("on_usnet", [True, False], ids=["usnet", "kernel"])
def test_anyio_stream_ends_cleanly_for_a_kernel_peer(usnetd_path, on_usnet):  # noqa: F811
    """anyio's TCP stream, the one under httpx's async client, against a kernel echo server: the
    echo comes back whole, and the stream's close (anyio aborts the transport) ends the
    connection with a FIN, as asyncio's abort does on the kernel, not with a reset."""
    pytest.importorskip("anyio")
    path, _, host_ip = usnetd_path
    with kernel_server(host_ip, _echo_until_eof, timeout=LIMIT) as ((host, port), result):
        assert _run(_command(on_usnet, "anyio", "client", host, str(port)),
                    child_env(path) if on_usnet else _kernel_env()) == ["echo"]
    assert result == {"end": "eof", "n": len(POSTED)}


@pytest.mark.privileged
@pytest.mark.parametrize("on_usnet", [True, False], ids=["usnet", "kernel"])
def test_anyio_listener_serves_a_kernel_client(usnetd_path, on_usnet):  # noqa: F811
    """anyio's create_tcp_listener on every address (as for local_host=None): a kernel client's
    data echoed, and after its shutdown(SHUT_WR) a clean EOF from the listener's side."""
    pytest.importorskip("anyio")
    path, usnet_ip, host_ip = usnetd_path
    ip = usnet_ip if on_usnet else host_ip
    server, port = started(_command(on_usnet, "anyio", "server", ""), child_env(path) if on_usnet else _kernel_env())
    try:
        with socket.create_connection((ip, port), timeout=LIMIT) as k:
            sender = threading.Thread(target=k.sendall, args=(POSTED,))
            sender.start()
            got = bytearray()
            while len(got) < len(POSTED) and (data := k.recv(1 << 16)):
                got += data
            sender.join(LIMIT)
            k.shutdown(socket.SHUT_WR)
            assert got == POSTED
            assert k.recv(100) == b""  # the server's close: a FIN, not a reset
    finally:
        stop(server)


@pytest.mark.privileged
@pytest.mark.slow
@pytest.mark.parametrize("on_usnet", [True, False], ids=["usnet", "kernel"])
def test_requests_to_localhost_reaches_a_server_on_every_address(usnetd_path, tap_domain, on_usnet):  # noqa: F811
    """A server on 0.0.0.0 (aiohttp) and requests in another process fetching from localhost and
    127.0.0.1: on usnet both through the domain's loopback netif, as usnetd has one."""
    pytest.importorskip("aiohttp")
    pytest.importorskip("requests")
    path, _, _ = usnetd_path
    tap_domain[0].add_loopback()
    env = child_env(path) if on_usnet else _kernel_env()
    server, port = started(_command(on_usnet, "aiohttp", "server", "0.0.0.0"), env)
    try:
        urls = [f"http://{host}:{port}/{p}" for host in ("localhost", "127.0.0.1") for p in ("big", "f.bin")]
        want = [f"200 {hashlib.sha256(b).hexdigest()}" for b in (BIG, BODY)] * 2
        assert _run(_command(on_usnet, "requests", "fetch", *urls), env) == want
    finally:
        stop(server)


@pytest.mark.privileged
@pytest.mark.slow
@pytest.mark.parametrize("on_usnet", [True, False], ids=["usnet", "kernel"])
@pytest.mark.parametrize("lib", ["aiohttp", "websockets"])
def test_an_asyncio_server_with_no_host_is_reached_over_ipv6(usnetd_path, tap_domain, lib, on_usnet):  # noqa: F811
    """aiohttp's and websockets' servers started with no host (asyncio's create_server with host
    ""): a socket for 0.0.0.0 and one for ::, so a client in another process reaches them at
    [::1] (on usnet: the domain's loopback netif, as usnetd has one; the netif has no IPv6)."""
    pytest.importorskip(lib)
    if lib == "aiohttp":
        pytest.importorskip("requests")
    path, _, _ = usnetd_path
    tap_domain[0].add_loopback()
    env = child_env(path) if on_usnet else _kernel_env()
    server, port = started(_command(on_usnet, lib, "server", ""), env)
    try:
        if lib == "aiohttp":
            got = _run(_command(on_usnet, "requests", "fetch", f"http://[::1]:{port}/f.bin"), env)
            assert got == [f"200 {hashlib.sha256(BODY).hexdigest()}"]
        else:
            assert _run(_command(on_usnet, lib, "client", f"ws://[::1]:{port}/"), env) == ["echo"]
        assert server.poll() is None
    finally:
        stop(server)
