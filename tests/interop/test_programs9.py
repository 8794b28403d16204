"""A ninth sweep of unmodified programs on usnet against kernel peers (issue 16).

Each program (tests/peers/programs6.py, which holds the sixth to eighth sweeps' too) runs under
`usnet run` and, as the reference, on the kernel's sockets, against the same kernel peers in the
test's namespace: what it prints must be the same, and its own checks hold on both.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest

from tests.interop.test_patch import (
    LIMIT,
    PeerProgram,
    usnetd_path,  # noqa: F401  (a fixture)
)
from tests.interop.test_programs4 import _echo, _same, _serve

pytestmark = pytest.mark.privileged
_P = PeerProgram("programs6.py", LIMIT * 2)  # (the sixth to ninth sweeps' programs)


def _held_reader(seen: list) -> Callable[[socket.socket], None]:
    """A handler pair in one: a connection that says "data" is not read until one that says "go"
    comes; then it is read to its end, and what it brought recorded: its byte count, how it
    ended."""
    go = threading.Event()

    def handler(conn: socket.socket) -> None:
        with conn:
            line = conn.recv(5)
            if line == b"data\n":
                if not go.wait(LIMIT):
                    return
                n, end = 0, "limit"
                for _ in range(100000):
                    try:
                        b = conn.recv(1 << 20)
                    except OSError as e:
                        end = type(e).__name__
                        break
                    if not b:
                        end = "eof"
                        break
                    n += len(b)
                seen.append([n, end])
            elif line == b"go\n":
                go.set()
                with contextlib.suppress(OSError):
                    conn.recv(10)

    return handler


def _run_both(path: str, host_ip: str, *args: str, count: bool = True,
              program: PeerProgram = _P) -> tuple[dict, list[list]]:
    """The program on usnet and on the kernel against a `_held_reader`; what it printed (the same
    on both), and what the peer saw (the same on both; `count` False: how it ended alone, as what
    was queued at a close depends on the buffers' sizes)."""
    outs, seen_by_peer = [], []
    for on_usnet in (True, False):
        seen: list = []
        with _serve(host_ip, _held_reader(seen), join=True) as port:
            outs.append(program.run(path, on_usnet, args[0], host_ip, str(port), *args[1:]))
        seen_by_peer.append(seen if count else [end for _n, end in seen])
    assert seen_by_peer[0] == seen_by_peer[1], f"the peer saw: usnet {seen_by_peer[0]} kernel {seen_by_peer[1]}"
    return _same(*outs), seen_by_peer[0]


def test_a_blocking_send_takes_all_of_its_data_as_on_the_kernel(usnetd_path):  # noqa: F811
    """One blocking send() of 4 MiB to a peer that reads nothing for a while: Linux's tcp_sendmsg
    waits for room until it took all of it (a partial count only at SO_SNDTIMEO's end or a
    signal), so send returns the whole length, under SO_SNDTIMEO too once the peer reads."""
    path, _usnet_ip, host_ip = usnetd_path
    found, seen = _run_both(path, host_ip, "send-blocking")
    assert found == {"send": 4 << 20, "send-sndtimeo": 4 << 20}
    assert seen == [[8 << 20, "eof"]]


@pytest.mark.parametrize("mode", ["blocking", "timeout"])
def test_close_from_another_thread_while_sendall_waits_for_window_as_on_the_kernel(usnetd_path, mode):  # noqa: F811
    """close() while sendall waits for the peer's window. Blocking: CPython's one send() holds the
    file and takes all (sendall returns, the peer gets every byte, then the FIN); with a Python
    timeout CPython polls, and its next send is on descriptor -1: EBADF, the peer gets what was
    queued, then the FIN."""
    path, _usnet_ip, host_ip = usnetd_path
    found, seen = _run_both(path, host_ip, "close-thread", "sendall" + ("-blocking" if mode == "blocking" else ""),
                            count=mode == "blocking")
    assert found["fileno"] == -1 and found["again"] == ["OSError", 9]
    if mode == "blocking":
        assert found["sendall"] is None and seen == [[4 << 20, "eof"]]
    else:
        assert found["sendall"] == ["OSError", 9] and seen == ["eof"]


def test_close_from_another_thread_in_a_forked_child_as_on_the_kernel(usnetd_path):  # noqa: F811
    """A forked child's inherited listener and connection (on usnet served through the parent:
    usnet.client.forked), each closed from another thread of the child while a thread waits in
    accept() or recv() with a Python timeout: CPython's poll sleeps on to its timeout, then the
    retry on descriptor -1 is EBADF; the parent's own copies work on."""
    path, _usnet_ip, host_ip = usnetd_path
    with _echo(host_ip) as port:
        outs = [_P.run(path, on_usnet, "fork-close", host_ip, str(port)) for on_usnet in (True, False)]
    found = _same(*outs)
    assert found["status"] == 0 and found["parent-echo"] == "parent\n"
    for what in ("accept", "recv"):
        assert found[what] == ["OSError", 9] and found[what + "-fileno"] == -1
        assert found[what + "-again"] == ["OSError", 9]


def test_getsockopt_ip_msfilter_lengths_as_on_the_kernel(usnetd_path):  # noqa: F811
    """getsockopt(IP_MSFILTER) as a program can call it: an int buffer (no length), lengths under
    the struct's head (EINVAL), lengths CPython refuses itself, and a bytes object where CPython
    wants an int (TypeError)."""
    path, _usnet_ip, _host_ip = usnetd_path
    found = _same(*[_P.run(path, on_usnet, "msfilter") for on_usnet in (True, False)])
    assert found["8"] == ["OSError", 22] and found["bytes"] == found["str"] == ["TypeError", None]
    assert found["negative"] == found["huge"] == ["OSError", None]


class _PoolServer(http.server.BaseHTTPRequestHandler):
    """/LIB/a: "a"; /LIB/drop: "drop", then the connection closed unannounced (keep-alive said);
    /LIB/slow: "slow" after 1.5 s; /LIB/flaky: 503 twice, then 200. Each request is recorded as
    (path, the client's port)."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, int]]] = []
    flaky: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        self.seen.append((self.path, self.client_address[1]))
        what = self.path.rsplit("/", 1)[-1]
        status = 200
        if what == "slow":
            time.sleep(1.5)  # the peer is slow: longer than the clients' read timeouts of 0.5 s
        if what == "flaky":
            self.flaky[self.path] = n = self.flaky.get(self.path, 0) + 1
            status = 503 if n < 3 else 200
        body = what.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if what == "drop":
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def _connections(seen: list[tuple[str, int]]) -> dict[str, list]:
    """Per library, its requests' paths with the connection each came on (numbered in order of
    first use: the ports themselves differ from run to run)."""
    by_lib: dict[str, list] = {}
    ports: dict[int, int] = {}
    for path, port in seen:
        lib = path.split("/")[1]
        n = ports.setdefault(port, len(ports))
        by_lib.setdefault(lib, []).append([path.rsplit("/", 1)[-1], n])
    first: dict[str, int] = {lib: min(n for _p, n in reqs) for lib, reqs in by_lib.items()}
    return {lib: [[p, n - first[lib]] for p, n in reqs] for lib, reqs in by_lib.items()}


def test_http_client_pools_as_on_the_kernel(usnetd_path):  # noqa: F811
    """requests' Session, urllib3's PoolManager (no retries: a dropped idle connection must be
    found before reuse; Retry on 503), httpx sync and async, aiohttp's ClientSession against a
    kernel HTTP/1.1 server: keep-alive reuse, an idle connection the server closed replaced by a
    new one, read timeouts. The same answers, and the server sees the same requests on the same
    connections, under `usnet run` as on the kernel."""
    path, _usnet_ip, host_ip = usnetd_path
    outs, conns = [], []
    for on_usnet in (True, False):
        _PoolServer.seen, _PoolServer.flaky = [], {}
        srv = http.server.ThreadingHTTPServer((host_ip, 0), _PoolServer)
        srv.daemon_threads = True
        t = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
        t.start()
        try:
            outs.append(_P.run(path, on_usnet, "pools", host_ip, str(srv.server_address[1])))
        finally:
            srv.shutdown()
            srv.server_close()
            t.join(LIMIT)
        conns.append(_connections(_PoolServer.seen))
    found = _same(*outs)
    assert conns[0] == conns[1], f"usnet {conns[0]} kernel {conns[1]}"
    assert found["requests"] == ["a", "a", "a", "ReadTimeout", "drop", "a"]
    assert found["urllib3"] == ["drop", "a", 200, "MaxRetryError"]  # (a read timeout, no retry left)
    assert found["httpx"] == ["a", "a", "drop", "a", "ReadTimeout"]
    assert found["httpx-async"] == ["a", "a", "drop", "a"]
    assert found["aiohttp"][:4] == ["a", "a", "drop", "a"]
    assert conns[1]["requests"][:3] == [["a", 0]] * 3  # kept alive


@contextlib.contextmanager
def _ws_server(host: str) -> Iterator[int]:
    """A kernel websockets server in a thread of its own loop: /echo echoes, /close closes with
    4001 "bye", /drop drops the TCP connection without a close frame. Yields its port."""
    import asyncio

    from websockets.asyncio.server import serve

    async def handler(ws) -> None:
        path = ws.request.path
        if path == "/close":
            await ws.close(4001, "bye")
        elif path == "/drop":
            ws.transport.abort()
        else:
            async for m in ws:
                await ws.send(m)

    async def start():  # (websockets' server is made in its running loop)
        return await serve(handler, host, 0)

    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    server = asyncio.run_coroutine_threadsafe(start(), loop).result(LIMIT)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        loop.call_soon_threadsafe(server.close)
        asyncio.run_coroutine_threadsafe(server.wait_closed(), loop).result(LIMIT)
        loop.call_soon_threadsafe(loop.stop)
        t.join(LIMIT)
        loop.close()


def test_websockets_client_ends_as_on_the_kernel(usnetd_path):  # noqa: F811
    """A websockets client: an echo, a ping's pong, the server's close frame (4001 "bye": the
    client's ConnectionClosedError carries it), and a TCP connection dropped without one (no
    close frame received)."""
    path, _usnet_ip, host_ip = usnetd_path
    with _ws_server(host_ip) as port:
        found = _same(*[_P.run(path, on_usnet, "ws", host_ip, str(port)) for on_usnet in (True, False)])
    assert found == {"echo": "hello", "pong": True, "/close": ["ConnectionClosedError", 4001, "bye"],
                     "/drop": ["ConnectionClosedError", None, None]}
