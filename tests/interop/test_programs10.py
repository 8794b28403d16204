"""A tenth sweep of unmodified programs on usnet (issue 16): servers under usnet, kernel clients
in the test's namespace, compared with the same server on kernel sockets.

The programs are in tests/peers/programs6.py (the sixth sweep's on); each runs under `usnet run`
and, as the reference, on the kernel's sockets: what it prints must be the same on both.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.interop.test_patch import (
    LIMIT,
    child_env,
    kernel_env,
    started,
    stop,
    usnetd_path,  # noqa: F401  (a fixture)
)
from tests.interop.test_programs4 import _same, _serve
from tests.interop.test_programs9 import _P

pytestmark = pytest.mark.privileged


def _connect_back(conn: socket.socket) -> None:
    """A peer that connects back on the program's word: a port on a line, a connection to it
    from here (to the program's address) that says "hello", held until the program closes it."""
    with conn:
        line = conn.recv(20)
        if not line.endswith(b"\n"):
            return
        with socket.create_connection((conn.getpeername()[0], int(line)), timeout=LIMIT) as back:
            back.sendall(b"hello")
            with contextlib.suppress(OSError):
                back.recv(10)


def test_forked_child_closes_its_listener_while_a_connection_comes_as_on_the_kernel(usnetd_path):  # noqa: F811
    """A forked child waits in accept() (a Python timeout) on its inherited listener; another
    thread of the child closes it, then a connection comes. CPython's poll wakes and its accept
    is on descriptor -1: EBADF at once, and the connection stays queued for the listener's
    other holder, the parent, whose accept gets it."""
    path, _usnet_ip, host_ip = usnetd_path
    with _serve(host_ip, _connect_back) as port:
        outs = [_P.run(path, on_usnet, "fork-accept-closed", host_ip, str(port)) for on_usnet in (True, False)]
    found = _same(*outs)
    assert found == {"accept": ["OSError", 9], "before-timeout": True, "status": 0, "parent-got": "hello"}


def _to_end(s: socket.socket) -> tuple[bytes, str]:
    """What came on connection `s` to its end, and how it ended ("eof", "reset", "timeout")."""
    got, end = b"", "limit"
    try:
        for _ in range(100000):
            b = s.recv(1 << 16)
            if not b:
                end = "eof"
                break
            got += b
    except ConnectionResetError:
        end = "reset"
    except TimeoutError:
        end = "timeout"
    return got, end


def _reply(s: socket.socket) -> list:
    """An HTTP answer on `s` to its end: the status line, the body's last bytes (at most 16),
    how it ended."""
    got, end = _to_end(s)
    head, _, body = got.partition(b"\r\n\r\n")
    return [head.split(b"\r\n")[0].decode(), body[-16:].decode(), end]


def _connects(ip: str, port: int) -> str:
    """Whether a new connection to the server is taken ("connected"), else its error's name."""
    try:
        socket.create_connection((ip, port), timeout=LIMIT).close()
        return "connected"
    except OSError as e:
        return type(e).__name__


def _reset(s: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a client that crashed or gave up."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


class _Lines:
    """A server program's output, a line at a time within LIMIT (read unbuffered: select on a
    buffered file misses lines a readline took in already)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        # (`started` read the port's line through the buffer: nothing comes before a request)
        self.fd, self.held, self.seen = proc.stdout.fileno(), b"", []

    def until(self, want: Callable[[list], bool]) -> list | None:
        """Events (JSON lines) read until one that `want`s; None at LIMIT or the end."""
        deadline = time.monotonic() + LIMIT
        while True:
            while b"\n" in self.held:
                line, self.held = self.held.split(b"\n", 1)
                ev = json.loads(line)
                self.seen.append(ev)
                if want(ev):
                    return ev
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            more = os.read(self.fd, 1 << 16)
            if not more:
                return None
            self.held += more


def _both(usnetd: tuple[str, str, str], program: str, clients: Callable[[str, int, _Lines], dict],
          *args: str) -> dict:
    """Server `program` under `usnet run` and on kernel sockets, each met by `clients(ip, port,
    its events)`; then SIGTERM. What the clients saw and the server printed (its events in
    order of their text: threads and processes print as they come), the same on both."""
    path, usnet_ip, host_ip = usnetd
    found = []
    for on_usnet, ip in ((True, usnet_ip), (False, host_ip)):
        proc, port = started(_P.command(on_usnet, program, *args), child_env(path) if on_usnet else kernel_env())
        try:
            lines = _Lines(proc)
            res = clients(ip, port, lines)
            proc.terminate()
            lines.until(lambda ev: ev == ["stopped"])
            res["events"] = sorted(map(json.dumps, lines.seen))
        finally:
            stop(proc)
        found.append(json.dumps(res))
    return _same(*found)


_GET = b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n"


def _shutdown_then_close(ip: str, port: int, lines: _Lines) -> dict:
    """A request with a body the forked child leaves unread; its answer to the end (the child's
    shutdown, then its close at once); then the word for the parent to close its copy."""
    with socket.create_connection((ip, port), timeout=LIMIT) as s:
        s.sendall(_GET % (b"/small", b"Content-Length: 4096\r\n") + b"x" * 4096)
        s.settimeout(LIMIT / 6)  # EOF comes at once; without it, a "timeout" before the parent's own (10 s)
        res = {"answer": _reply(s), "child": lines.until(lambda ev: ev[0] == "child")}
        socket.create_connection((ip, port), timeout=LIMIT).close()  # the parent closes
        lines.until(lambda ev: ev == ["stopped"])
    return res


def test_forked_child_shutdown_then_close_with_data_unread_as_on_the_kernel(usnetd_path):  # noqa: F811
    """A forked child answers, shuts its side down and closes at once, the request's body
    unread, while its parent still holds the connection: the shutdown is the connection's FIN
    (every holder's is, on Linux), so the peer reads the whole answer, then EOF, before the
    parent closes. usnet's splice saw the child's shutdown only as it hung up, and took it for
    a close: no FIN till the parent's close."""
    res = _both(usnetd_path, "fork-shutdown-close", _shutdown_then_close)
    assert res["answer"] == ["HTTP/1.1 200 OK", "small", "eof"]
    assert res["child"] == ["child", 0]



def _shutdown_how(ip: str, port: int, lines: _Lines, how: str) -> dict:
    """The forked child's answer and what followed its shutdown(`how`), as the peer saw them
    while the parent held the connection; then the word for the parent to close its copy."""
    with socket.create_connection((ip, port), timeout=LIMIT) as s:
        s.sendall(b"hello\n")
        s.settimeout(LIMIT / 6)  # the FIN comes at once; without it, a "timeout" before the parent's close
        if how == "RD":  # data after the child's SHUT_RD, then the child's word; nothing ends
            lines.until(lambda ev: ev == ["shut"])
            s.sendall(b"late\n")
            socket.create_connection((ip, port), timeout=LIMIT).close()
            got = b""
            with contextlib.suppress(TimeoutError):  # the child's send after it failed
                for _ in range(100):
                    b = s.recv(64)
                    got += b
                    if not b or got.endswith(b"after\n"):
                        break
            res: dict = {"got": got.decode()}
        else:
            got, end = _to_end(s)
            res = {"got": got.decode(), "end": end}
        res["child"] = lines.until(lambda ev: ev[0] == "child")
        res["exit"] = lines.until(lambda ev: ev[0] == "exit")
        socket.create_connection((ip, port), timeout=LIMIT).close()  # the parent closes
        lines.until(lambda ev: ev == ["stopped"])
        s.settimeout(LIMIT)
        res["after-close"] = _to_end(s)[1]  # SHUT_RD: an RST, the late data unread (as the parent's close)
    return res


def test_forked_child_shutdown_rdwr_sends_the_fin_while_the_parent_holds_as_on_the_kernel(usnetd_path):  # noqa: F811
    """A forked child answers and shuts down both ways (SHUT_RDWR) while its parent still holds
    the connection: on Linux the FIN follows the answer at once, the child's recv is EOF and its
    send EPIPE. usnet's splice took the child's SHUT_RDWR (EOF with a hang-up on the stream pair)
    for a close: no FIN till the parent's close, the peer's read timed out."""
    res = _both(usnetd_path, "fork-shutdown-how", lambda ip, port, lines: _shutdown_how(ip, port, lines, "RDWR"),
                "RDWR")
    assert res["got"] == "answer\n" and res["end"] == "eof"
    assert res["child"] == ["child", {"line": "hello\n", "recv": "", "send": ["BrokenPipeError", 32]}]
    assert res["exit"] == ["exit", 0]


def test_forked_child_shutdown_rd_leaves_sending_as_on_the_kernel(usnetd_path):  # noqa: F811
    """A forked child shuts its reading down (SHUT_RD) while its parent holds the connection:
    Linux sends nothing, the child's recv is EOF at once and its sends go on, after data the peer
    sent later too. usnet's splice, failing to pass that data to the child (EPIPE), shut the
    child's stream pair both ways: its next send failed."""
    res = _both(usnetd_path, "fork-shutdown-how", lambda ip, port, lines: _shutdown_how(ip, port, lines, "RD"),
                "RD")
    assert res["got"] == "answer\nafter\n"
    assert res["child"] == ["child", {"line": "hello\n", "recv": "", "send": 6}]
    assert res["exit"] == ["exit", 0]


def _read_then_reset(ip: str, port: int, lines: _Lines) -> dict:
    """Clients that read 1 MiB of the file (the server's sends drain meanwhile), then reset;
    what the server's sendfile raised for each."""
    res = {}
    for i in range(_SENDFILE_ROUNDS):
        with socket.create_connection((ip, port), timeout=LIMIT) as s:
            got = 0
            for _ in range(10000):
                got += len(s.recv(1 << 16))
                if got >= 1 << 20:
                    break
            _reset(s)
        res[f"sendfile-{i}"] = lines.until(lambda ev: ev[0] == "sendfile")
    return res


_SENDFILE_ROUNDS = 4


def test_asyncio_sendfile_to_a_client_that_reset_raises_as_on_the_kernel(usnetd_path):  # noqa: F811
    """loop.sendfile of 32 MiB to clients that reset after 1 MiB: on the kernel os.sendfile
    fails with ECONNRESET (or EPIPE: "gone"). usnet's transport goes through asyncio's fallback,
    whose drain raised a bare ConnectionError ("Connection closed by peer") when it found the
    transport closing (when the reset came while the transport's writes were not paused)."""
    res = _both(usnetd_path, "sendfile-reset", _read_then_reset)
    assert all(res[f"sendfile-{i}"] == ["sendfile", "gone", True] for i in range(_SENDFILE_ROUNDS))


def _abuse_http(ip: str, port: int, lines: _Lines, kind: str) -> dict:
    """A kernel client's ways of vanishing mid-request, and what each saw."""
    res = {}

    def conn() -> socket.socket:
        return socket.create_connection((ip, port), timeout=LIMIT)

    with conn() as s:
        s.sendall(_GET % (b"/small", b"Connection: close\r\n"))
        res["ok"] = _reply(s)
    s = conn()
    s.sendall(b"GET /small HTTP/1.1\r\nHo")
    _reset(s)
    with conn() as s:  # half a request, then the FIN
        s.sendall(b"GET /small HTTP/1.1\r\nHo")
        s.shutdown(socket.SHUT_WR)
        res["half-headers"] = _reply(s)
    with conn() as s:  # a whole request, then the FIN: the answer still comes
        s.sendall(_GET % (b"/small", b""))
        s.shutdown(socket.SHUT_WR)
        res["half-request"] = _reply(s)
    with conn() as s:  # a body the server does not read: socketserver's shutdown(SHUT_WR), then
        # its close with the body unread, a FIN then an RST: the client reads the FIN first
        s.sendall(_GET % (b"/small", b"Connection: close\r\nContent-Length: 65536\r\n") + b"x" * 65536)
        res["unread"] = _reply(s)
    with conn() as s:  # half a request, then silence: the library's timeout
        s.sendall(b"GET /small HTTP/1.1\r\nHo")
        res["slow"] = _reply(s)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(LIMIT)
    s.connect((ip, port))
    s.sendall(_GET % (b"/big", b""))
    got = b""
    for _ in range(1000):
        got += s.recv(1000 - len(got))
        if len(got) >= 1000:
            break
    if kind == "aiohttp":  # the server says when its writes block: reset then
        res["blocked"] = lines.until(lambda ev: ev == ["big", "blocked"])
    _reset(s)  # the server's writes of 64 MiB end
    res["big"] = lines.until(lambda ev: ev[0] == "big" and ev[1] != "blocked")
    with conn() as s:
        s.sendall(_GET % (b"/small", b"Connection: close\r\n"))
        res["ok-after"] = _reply(s)
    return res


@pytest.mark.parametrize("kind", ["aiohttp", "threading", "forking"])
def test_http_servers_with_clients_that_vanish_as_on_the_kernel(usnetd_path, kind):  # noqa: F811
    """aiohttp's web server, http.server's ThreadingHTTPServer and a ForkingMixIn HTTPServer
    under `usnet run` and on kernel sockets, kernel clients that reset mid-request, half-close
    after half a request or a whole one, send half a request and wait for the library's timeout
    (1 s), and stop reading a 64 MiB answer and reset: what the clients saw, and what the server
    printed, the same on both."""
    res = _both(usnetd_path, "serve-http", lambda ip, port, lines: _abuse_http(ip, port, lines, kind),
                kind)
    assert res["ok"] == res["ok-after"] == ["HTTP/1.1 200 OK", "small", "eof"]


def _lines_of(socks: list[socket.socket]) -> list[bytes]:
    """Each connection's answer to its end."""
    return [_to_end(s)[0] for s in socks]


def _short_then_close(ip: str, port: int, lines: _Lines) -> dict:
    """200 short connections, 40 at a time; three held; the server told to close; a new
    connection tried; the held ones used after."""
    res: dict = {}
    answers = []
    for round_ in range(5):
        socks = [socket.create_connection((ip, port), timeout=LIMIT) for _ in range(40)]
        for i, s in enumerate(socks):
            s.sendall(b"%d\n" % (round_ * 40 + i))
        answers += _lines_of(socks)
        for s in socks:
            s.close()
    res["short"] = answers == [b"%d\n" % i for i in range(200)]
    held = [socket.create_connection((ip, port), timeout=LIMIT) for _ in range(3)]
    for s in held:
        s.sendall(b"hold\n")
    res["held"] = [s.recv(100) == b"held\n" for s in held]
    with socket.create_connection((ip, port), timeout=LIMIT) as s:
        s.sendall(b"close\n")
        res["close-conn"] = _lines_of([s])[0].decode()
    res["waited"] = lines.until(lambda ev: ev[0] == "wait_closed")
    res["after-close"] = _connects(ip, port)
    for s in held:
        s.sendall(b"more\n")
    res["held-after"] = [b.decode() for b in _lines_of(held)]
    for s in held:
        s.close()
    lines.until(lambda ev: ev == ["stopped"])  # (it stops itself: not SIGTERM'd before it says all)
    return res


def test_asyncio_server_many_short_connections_and_close_with_connections_open_as_on_the_kernel(usnetd_path):  # noqa: F811
    """asyncio.start_server: 200 short connections, 40 at a time, each a line echoed and closed;
    then Server.close() and wait_closed() with three connections open: new connections refused,
    the open ones served on, as on the kernel."""
    res = _both(usnetd_path, "serve-aio", _short_then_close)
    assert res["short"] and res["after-close"] == "ConnectionRefusedError"
    assert res["held-after"] == ["more\n"] * 3 and '["held", 3]' in res["events"]


_WS_OPEN = (b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
_WS_HALF = b"GET /echo HTTP/1.1\r\nHost: x\r\nUpg"


def _ws_open(ip: str, port: int, path: bytes, rcvbuf: int = 0) -> socket.socket:
    """A kernel client's WebSocket, opened by hand (a client that can then misbehave)."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(LIMIT)
    s.connect((ip, port))
    s.sendall(_WS_OPEN % path)
    got = b""
    for _ in range(1000):
        got += s.recv(1)  # (byte by byte: not a byte of the frames after the handshake)
        if got.endswith(b"\r\n\r\n"):
            break
    assert got.startswith(b"HTTP/1.1 101"), got
    return s


def _ws_end(s: socket.socket) -> list:
    """What came on WebSocket `s` to its end (in hex), how it ended."""
    got, end = _to_end(s)
    return [got.hex(), end]


def _abuse_ws(ip: str, port: int, lines: _Lines) -> dict:
    """A kernel client's ways of leaving a websockets server, and what each saw."""
    res = {}
    s = _ws_open(ip, port, b"/echo")
    s.sendall(b"\x81\x82\0\0\0\0hi")  # a masked text frame (a zero mask)
    res["echo"] = s.recv(4).hex()
    s.sendall(b"\x88\x82\0\0\0\0\x03\xe8")  # close, 1000
    res["echo-close"] = _ws_end(s)
    s.close()
    res["echo-ended"] = lines.until(lambda ev: ev[0] == "/echo")
    s = _ws_open(ip, port, b"/echo")
    s.shutdown(socket.SHUT_WR)  # the FIN, no close frame
    res["half-close"] = _ws_end(s)
    s.close()
    res["half-close-ended"] = lines.until(lambda ev: ev[0] == "/echo")
    s = _ws_open(ip, port, b"/echo")
    _reset(s)
    res["reset-ended"] = lines.until(lambda ev: ev[0] == "/echo")
    s = socket.create_connection((ip, port), timeout=LIMIT)
    s.sendall(_WS_HALF)
    _reset(s)
    with socket.create_connection((ip, port), timeout=LIMIT) as s:
        s.sendall(_WS_HALF)
        s.shutdown(socket.SHUT_WR)
        res["half-handshake"] = _reply(s)
    with socket.create_connection((ip, port), timeout=LIMIT) as s:
        s.sendall(_WS_HALF)
        res["slow-handshake"] = _reply(s)  # open_timeout
    s = _ws_open(ip, port, b"/flood", rcvbuf=4096)
    res["flood-blocked"] = lines.until(lambda ev: ev[0] == "/flood")
    _reset(s)
    res["flood-ended"] = lines.until(lambda ev: ev[0] == "/flood")
    return res


def test_websockets_server_with_clients_that_vanish_as_on_the_kernel(usnetd_path):  # noqa: F811
    """A websockets server (open and close timeouts 1 s) under `usnet run` and on kernel sockets:
    kernel clients that close properly, half-close without a close frame, reset after the
    handshake or in its middle, half-close or go silent in its middle, and stop reading a flood
    and reset: what they saw and what the server's handlers and logger printed, the same."""
    res = _both(usnetd_path, "serve-ws", _abuse_ws)
    assert res["echo"] == "81026869" and res["flood-blocked"] == ["/flood", "blocked"]


def test_listener_closed_with_connections_queued_as_on_the_kernel(usnetd_path):  # noqa: F811
    """A server that closes its listener with connections queued and never accepted (some sent
    a request): Linux resets each (inet_csk_listen_stop), and a new connection is refused."""
    path, usnet_ip, host_ip = usnetd_path
    found = []
    for on_usnet, ip in ((True, usnet_ip), (False, host_ip)):
        cmd = _P.command(on_usnet, "listener-close")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=child_env(path) if on_usnet else kernel_env())
        try:
            assert proc.stdout is not None and select.select([proc.stdout], [], [], LIMIT)[0]
            port, ctl = map(int, proc.stdout.readline().split()[1:])
            queued = [socket.create_connection((ip, port), timeout=LIMIT) for _ in range(3)]
            queued[0].sendall(b"GET / HTTP/1.1\r\n\r\n")
            with socket.create_connection((ip, ctl), timeout=LIMIT) as c:
                said = c.recv(100)
            res = {"said": said.decode(), "queued": [_ws_end(s)[1] for s in queued]}
            res["new"] = _connects(ip, port)
            for s in queued:
                s.close()
        finally:
            stop(proc)
        found.append(json.dumps(res))
    res = _same(*found)
    assert res == {"said": "closed\n", "queued": ["reset"] * 3, "new": "ConnectionRefusedError"}
