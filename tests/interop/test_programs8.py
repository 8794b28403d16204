"""An eighth sweep of unmodified programs on usnet against kernel peers (issue 16).

Each program (tests/peers/programs6.py, which holds the sixth and seventh sweeps' too) runs under
`usnet run` and, as the reference, on the kernel's sockets, against the same kernel peers in the
test's namespace: what it prints must be the same, and its own checks hold on both.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.interop.test_patch import (
    LIMIT,
    PeerProgram,
    child_env,
    kernel_env,
    started,
    stop,
    usnetd_path,  # noqa: F401  (a fixture)
)
from tests.interop.test_programs4 import _echo, _same, _serve
from tests.interop.test_programs7 import _closed_port

pytestmark = pytest.mark.privileged
_P = PeerProgram("programs6.py", LIMIT * 2)


def _close_at_once(conn: socket.socket) -> None:
    conn.close()


def _recorder(seen: list) -> Callable[[socket.socket], None]:
    """A handler that records what a connection brought: its data, then how it ended."""

    def handler(conn: socket.socket) -> None:
        got = b""
        with conn:
            for _ in range(1000):
                try:
                    b = conn.recv(65536)
                except OSError as e:
                    seen.append([got.decode(), type(e).__name__])
                    return
                if not b:
                    seen.append([got.decode(), "eof"])
                    return
                got += b

    return handler


def _reset_after_a_line(conn: socket.socket) -> None:
    conn.recv(100)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def test_socket_calls_on_a_connection_as_on_the_kernel(usnetd_path):  # noqa: F811
    """settimeout(0)/setblocking readback, a non-blocking connect, half-close (SHUT_WR, then the
    rest of the echo), SO_LINGER 0 (the kernel peer sees the data, then a reset), sends after the
    peer closed (EPIPE once its reset came), os.sendfile on the socket's descriptor, select over
    70 connections and 10 kernel socketpairs at once, send_fds/recv_fds over AF_UNIX."""
    path, _usnet_ip, host_ip = usnetd_path
    outs, seen_by_peer = [], []
    for on_usnet in (True, False):
        seen: list = []
        with _echo(host_ip) as echo, _serve(host_ip, _close_at_once) as closer, \
                _serve(host_ip, _recorder(seen), join=True) as rec:
            outs.append(_P.run(path, on_usnet, "calls", host_ip, str(echo), str(closer), str(rec)))
        seen_by_peer.append(seen)
    found = _same(*outs)
    assert seen_by_peer[0] == seen_by_peer[1] == [["bye", "ConnectionResetError"]]
    assert found["modes"] == [["settimeout(0)", 0.0, False], ["setblocking(True)", None, True],
                              ["settimeout(2.5)", 2.5, True], ["setblocking(False)", 0.0, False],
                              ["settimeout(None)", None, True]]
    assert found["connect-nb"] == ["BlockingIOError", 115] and found["connect-error"] == 0
    assert found["half-close"] == [100000, True, ""] and found["send-after-shut-wr"] == ["BrokenPipeError", 32]
    assert found["linger"] == [1, 0] and found["closer-eof"] == ""
    assert found["send-after-close"] == [["BrokenPipeError", 32]] * 2
    assert found["sendfile-sent"] == 102400 and found["sendfile-echo"] == [102400, True]
    assert found["fds-over-64"] is True and found["select-reads"] == ["e", "p"]
    assert found["select-readable"] == sorted({i for i in range(0, 70, 3)} | {70, 72, 74, 76, 78})
    assert found["recv-fds"] == ["fd", 1, 0, "through the passed descriptor"]


def _relay() -> Callable[[socket.socket], None]:
    """A handler pair in one: a connection that says "data" waits; one that says "go" makes the
    relay send b"late" on the waiting one (then it waits for that one's end)."""
    waiting: list[socket.socket] = []
    go = threading.Event()

    def handler(conn: socket.socket) -> None:
        with conn:
            line = conn.recv(10)
            if line == b"data\n":
                waiting.append(conn)
                if go.wait(LIMIT):
                    conn.sendall(b"late")
                    with contextlib.suppress(OSError):
                        conn.recv(10)  # the end of it (FIN or reset), or the limit
            elif line == b"go\n":
                go.set()

    return handler


@pytest.mark.parametrize("mode", ["recv", "accept", "recv-late", "recv-late-blocking"])
def test_close_from_another_thread_while_one_waits_as_on_the_kernel(usnetd_path, mode):  # noqa: F811
    """close() while another thread waits in recv/accept: with a Python timeout CPython's call
    polls, and ends in EBADF (the descriptor is -1 when it retries), data or not; a blocking recv
    without one is one system call, which holds the file: the peer's data that comes after the
    close is its answer (usnet: EBADF, and its FIN went at the close). The socket is closed after."""
    path, _usnet_ip, host_ip = usnetd_path
    outs = []
    for on_usnet in (True, False):
        with (_serve(host_ip, _relay()) if "late" in mode else _echo(host_ip)) as port:
            outs.append(_P.run(path, on_usnet, "close-thread", host_ip, str(port), mode))
    found = _same(*outs)
    assert found["fileno"] == -1 and found["again"] == ["OSError", 9]
    assert found["accept" if mode == "accept" else "recv"] == {
        "recv": ["OSError", 9], "accept": ["OSError", 9], "recv-late": ["OSError", 9],
        "recv-late-blocking": "late"}[mode]


def test_asyncio_sock_calls_and_reuse_port_servers_as_on_the_kernel(usnetd_path):  # noqa: F811
    """loop.sock_connect to a closed port is ConnectionRefusedError, sock_recv after the peer's
    reset ConnectionResetError; start_server with reuse_port twice on one port, backlog=5."""
    path, usnet_ip, host_ip = usnetd_path
    closed = _closed_port(host_ip)
    with _serve(host_ip, _reset_after_a_line) as rst:  # (the test's domain has no loopback netif)
        found = _same(_P.run(path, True, "aio", host_ip, str(closed), str(rst), usnet_ip),
                      _P.run(path, False, "aio", host_ip, str(closed), str(rst), host_ip))
    assert found["refused"] == ["ConnectionRefusedError", 111]
    assert found["after-rst"] == ["ConnectionResetError", 104]
    assert found["reuse-port"] == [1, 1] and found["listening"] == [1, 1]
    assert found["without-reuse"] == ["OSError", 98]
    assert found["answers"] == [f"HI {i}\n" for i in range(6)]


def test_tls_handshake_driven_by_a_selector_as_on_the_kernel(usnetd_path, ca, tmp_path):  # noqa: F811
    """ssl with do_handshake_on_connect=False on a non-blocking socket: the handshake, 300 kB each
    way and unwrap() driven by SSLWantRead/WriteError and a selector; the plain connection after."""
    path, _usnet_ip, host_ip = usnetd_path
    cacert, cert, key = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(cacert))
    leaf = ca.issue_cert(host_ip)
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(str(cert), str(key))

    def tls_echo(conn: socket.socket) -> None:
        with sctx.wrap_socket(conn, server_side=True) as t:
            for _ in range(10000):
                b = t.recv(65536)
                if b == b"QUIT\n" or not b:
                    break
                t.sendall(b)
            plain = t.unwrap()
            plain.sendall(b"plain " + plain.recv(8))
            plain.close()

    with _serve(host_ip, tls_echo) as port:
        found = _same(_P.run(path, True, "tls-nb", host_ip, str(port), str(cacert)),
                      _P.run(path, False, "tls-nb", host_ip, str(port), str(cacert)))
    assert found["version"] == "TLSv1.3" and found["echo"] == [300000, True]
    assert found["unwrapped"] == [True, True, False, None] and found["unwrap-again"][0] == "ValueError"
    assert found["plain-after"] == ["plain in clear", ""]


def _imap(conn: socket.socket) -> None:
    f = conn.makefile("rwb")
    f.write(b"* OK tiny IMAP4rev1 ready\r\n")
    f.flush()
    mail = b"Subject: hi\r\n\r\nhello\r\n"
    for _ in range(20):
        line = f.readline()
        if not line:
            return
        tag, cmd = line.split(b" ", 2)[:2]
        cmd = cmd.strip().upper()
        if cmd == b"CAPABILITY":
            f.write(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n")
        elif cmd == b"SELECT":
            f.write(b"* 1 EXISTS\r\n* 0 RECENT\r\n")
        elif cmd == b"FETCH":
            f.write(b"* 1 FETCH (RFC822 {%d}\r\n%s)\r\n" % (len(mail), mail))
        elif cmd == b"LOGOUT":
            f.write(b"* BYE\r\n" + tag + b" OK LOGOUT done\r\n")
            f.flush()
            return
        f.write(tag + b" OK " + cmd + b" done\r\n")
        f.flush()


def _pop(conn: socket.socket) -> None:
    f = conn.makefile("rwb")
    f.write(b"+OK tiny POP3 ready\r\n")
    f.flush()
    for _ in range(20):
        line = f.readline().strip().upper()
        if not line:
            return
        if line.startswith(b"STAT"):
            f.write(b"+OK 1 24\r\n")
        elif line.startswith(b"RETR"):
            f.write(b"+OK 24 octets\r\nSubject: hi\r\n\r\n..dot\r\nhello\r\n.\r\n")
        elif line.startswith(b"QUIT"):
            f.write(b"+OK bye\r\n")
            f.flush()
            return
        else:
            f.write(b"+OK " + line.split(b" ")[0] + b"\r\n")
        f.flush()


def test_imaplib_and_poplib_as_on_the_kernel(usnetd_path):  # noqa: F811
    """imaplib (login, select, fetch of a literal, logout) and poplib (user, pass, stat, retr with
    a dot-stuffed line, quit) against tiny kernel line servers."""
    path, _usnet_ip, host_ip = usnetd_path
    with _serve(host_ip, _imap) as iport, _serve(host_ip, _pop) as pport:
        found = _same(_P.run(path, True, "mail", host_ip, str(iport), str(pport)),
                      _P.run(path, False, "mail", host_ip, str(iport), str(pport)))
    assert found["imap-select"] == ["OK", "1"] and found["imap-fetch"][1].endswith("hello\r\n")
    assert found["pop-retr"][1] == ["Subject: hi", "", ".dot", "hello"] and found["pop-quit"] == "+OK bye"


def _clients(ip: str, port: int, n: int = 50, each: int = 4) -> list:
    """n kernel clients at once, each `each` keep-alive requests on one connection: the answers."""

    def one(i: int) -> list:
        c = http.client.HTTPConnection(ip, port, timeout=LIMIT)
        got = []
        for j in range(each):
            c.request("GET", f"/{i}-{j}")
            r = c.getresponse()
            got.append([r.status, r.read() == f"/{i}-{j}".encode() * 50])
        c.close()
        return got

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_threading_http_server_under_many_clients_as_on_the_kernel(usnetd_path):  # noqa: F811
    """http.server.ThreadingHTTPServer on usnet: 50 kernel clients at once, 4 keep-alive requests
    each, every answer right; /quit shuts it down (shutdown() from a handler's thread) and it exits."""
    path, usnet_ip, host_ip = usnetd_path
    outs = []
    for on_usnet, ip in ((True, usnet_ip), (False, host_ip)):
        proc, port = started(_P.command(on_usnet, "http-server", "0.0.0.0"),
                             child_env(path) if on_usnet else kernel_env())
        try:
            answers = _clients(ip, port)
            c = http.client.HTTPConnection(ip, port, timeout=LIMIT)
            c.request("GET", "/quit")
            quit_status = c.getresponse().status
            c.close()
            stdout, stderr = proc.communicate(timeout=LIMIT * 2)
            assert proc.returncode == 0, stderr.decode()[-3000:]
        finally:
            stop(proc)
        assert answers == [[[200, True]] * 4] * 50 and quit_status == 200
        outs.append(stdout.decode().strip().split("\n")[-1])
    found = _same(*outs)
    assert found == {"stopped": True, "served": 201, "distinct": 201}
    assert json.loads(outs[0]) == found
