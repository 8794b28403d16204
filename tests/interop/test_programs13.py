"""A thirteenth sweep of unmodified programs on usnet against kernel peers (issue 16): Twisted on
its own reactor (epoll: a socket's readiness descriptor is all it looks at), as a TCP client
(half-close, a peer's reset, abortConnection, a refused port, a connect timeout), a UDP client
(an ICMP port unreachable ends the port) and a TCP server; pg8000 (a pure-Python PostgreSQL
driver) against a real postgres; `python -m http.server` against curl --parallel; asyncio's
subprocesses beside its sockets in one loop.

Each program (tests/peers/twisted_peer.py, pg_client.py, aio_subproc.py) runs under `usnet run` and,
as the reference, on the kernel's sockets, against the same kernel peer: what it prints must be
the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

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
from tests.interop.test_programs4 import _same, _serve
from tests.interop.test_programs11 import _server, need

pytest.importorskip("twisted")
pytestmark = pytest.mark.privileged
_T = PeerProgram("twisted_peer.py", LIMIT * 2)


def _read_all(conn: socket.socket, first: bytes = b"") -> tuple[bytes, str]:
    got = first
    try:
        for _ in range(100000):
            b = conn.recv(1 << 16)
            if not b:
                return got, "eof"
            got += b
    except ConnectionResetError:
        return got, "reset"
    return got, "limit"


class _TcpPeer:
    """The kernel's side of client-tcp: by its first bytes, a half-closing sender (answered with
    the SHA-256 of all it sent), "go" (100 KB, then a reset), "abort" (read to the end: the end
    is noted), "what" (closed at once)."""

    def __init__(self) -> None:
        self.aborts: list[str] = []

    def __call__(self, conn: socket.socket) -> None:
        with conn:
            try:
                first = conn.recv(1 << 16)
            except ConnectionResetError:
                self.aborts.append("reset before a byte")
                return
            if first.startswith(b"go\n"):
                conn.sendall(b"r" * 100_000)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif first.startswith(b"abort\n"):
                conn.sendall(b"ok\n")
                self.aborts.append(_read_all(conn)[1])
            elif first.startswith(b"what\n"):
                _read_all(conn)
            else:
                got, _end = _read_all(conn, first)
                conn.sendall(hashlib.sha256(got).hexdigest().encode() + b"\n")


def test_twisted_tcp_client_as_on_the_kernel(usnetd_path):  # noqa: F811
    """Twisted's TCP client: 2 MB then loseWriteConnection (the peer's answer read to its EOF,
    readConnectionLost, ConnectionDone); a peer that resets after 100 KB (ConnectionLost);
    abortConnection (the peer reads a reset); a refused port (ConnectionRefusedError); an address
    of the link nobody has with a 1 s timeout (TimeoutError)."""
    path, _usnet_ip, host_ip = usnetd_path
    dead = host_ip.rsplit(".", 1)[0] + ".99"
    peer = _TcpPeer()
    with _serve(host_ip, peer, join=True) as port:
        outs = [_T.run(path, on_usnet, "client-tcp", host_ip, str(port), dead) for on_usnet in (True, False)]
    found = _same(*outs)
    assert found == {"n": 65, "read-end": "eof", "end": "ConnectionDone", "reset-end": "ConnectionLost",
                     "reset-read-end": None, "abort-end": "ConnectionAborted", "refused": "ConnectionRefusedError",
                     "timeout": "TimeoutError"}
    assert peer.aborts == ["reset", "reset"]


@contextlib.contextmanager
def _udp_echo(host: str) -> Iterator[int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(0.1)
    done = threading.Event()

    def run() -> None:
        for _ in range(int(LIMIT * 4 / 0.1)):
            if done.is_set():
                return
            try:
                data, addr = s.recvfrom(65536)
            except TimeoutError:
                continue
            s.sendto(data, addr)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield s.getsockname()[1]
    finally:
        done.set()
        t.join(LIMIT)
        s.close()


def test_twisted_udp_client_as_on_the_kernel(usnetd_path):  # noqa: F811
    """Twisted's UDP: listenUDP and datagrams of 1, 1400 and 8,000 bytes to a kernel echo (the
    last in fragments), then connect() and one more; a connected transport to a closed port hears
    the kernel's ICMP port unreachable: the error pending shows as EPOLLERR without EPOLLIN, and
    Twisted's epoll reactor stops the port for it (stopProtocol), without connectionRefused."""
    path, _usnet_ip, host_ip = usnetd_path
    with _udp_echo(host_ip) as port:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.bind((host_ip, 0))
            closed = c.getsockname()[1]  # (bound, never read from: then closed below)
        outs = [_T.run(path, on_usnet, "client-udp", host_ip, str(port), str(closed)) for on_usnet in (True, False)]
    found = _same(*outs)
    assert [n for n, _ in found["echo"]] == [1, 1400, 8000, 100] and found["refused"] == 0 and found["stopped"]


def _sum_client(host: str, port: int, size: int, how: str) -> str:
    """A kernel client of serve-sum: `size` bytes, then shutdown(SHUT_WR) ("half") or a reset
    after the bytes ("reset"); the answer line ("" when the connection was reset)."""
    with socket.create_connection((host, port), timeout=LIMIT) as c:
        data = bytes(range(256)) * (size // 256)
        c.sendall(data)
        if how == "reset":
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return ""
        c.shutdown(socket.SHUT_WR)
        got, end = _read_all(c)
        assert end == "eof"
        assert got == hashlib.sha256(data).hexdigest().encode() + b"\n"
        return "ok"


def test_twisted_tcp_server_as_on_the_kernel(usnetd_path):  # noqa: F811
    """Twisted's listenTCP: 20 kernel clients at once, each 256 KB then a half-close (the server's
    readConnectionLost answers the SHA-256 and closes: ConnectionDone), then one that resets
    (ConnectionLost). What the server saw, the same on both."""
    path, usnet_ip, host_ip = usnetd_path
    outs = []
    for on_usnet in (True, False):
        where = usnet_ip if on_usnet else host_ip
        proc, port = started(_T.command(on_usnet, "serve-sum", where, "0", "21"),
                             child_env(path) if on_usnet else kernel_env())
        try:
            results: list[str] = []

            def client(results: list[str] = results, where: str = where, port: int = port) -> None:
                results.append(_sum_client(where, port, 256 << 10, "half"))

            threads = [threading.Thread(target=client) for _ in range(20)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(LIMIT)
            assert results == ["ok"] * 20
            _sum_client(where, port, 4096, "reset")
            got, err = proc.communicate(timeout=LIMIT)
            assert proc.returncode == 0, err.decode()[-3000:]
            outs.append(got.decode().strip().split("\n")[-1])
        finally:
            stop(proc)
    found = _same(*outs)
    assert found["ends"] == ["ConnectionDone"] * 20 + ["ConnectionLost"]


_PG = PeerProgram("pg_client.py", LIMIT * 3)
PG_PORT = 5432  # (the test's own namespace: nothing else there)


@pytest.fixture
def postgres(usnetd_path, ca) -> Iterator[tuple[str, str]]:  # noqa: F811
    """A postgres on the kernel's side of the TAP, listening on its address alone, trust
    authentication, no fsync; its cluster made by initdb in a directory of /tmp the postgres
    user owns (postgres refuses root; pytest's tmp_path is root's alone), removed after.
    Yields (the socket path of usnetd, its address); TLS is offered with a certificate of the
    module's `ca`."""
    pytest.importorskip("pg8000")
    path, _usnet_ip, host_ip = usnetd_path
    bindir = Path("/usr/lib/postgresql")
    found = sorted(bindir.glob("*/bin/postgres"))
    if not found:
        pytest.fail("postgres is missing (scripts/test-deps.sh installs postgresql)")
    bins = found[-1].parent
    as_pg = [need("setpriv"), "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
    top = Path(tempfile.mkdtemp(prefix="usnet-pg-"))
    try:
        shutil.chown(top, "postgres")
        data = top / "data"
        subprocess.run([*as_pg, str(bins / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                        "--no-sync"], check=True, capture_output=True, timeout=LIMIT * 3, cwd=top)
        with (data / "pg_hba.conf").open("a") as hba:  # (initdb's trusts the loopback's addresses alone)
            hba.write(f"host all all {host_ip}/24 trust\n")
        # TLS offered too (a client asks for it or not: pg8000 does not, the fifteenth sweep's
        # asyncpg does), with a certificate for the address from the module's trustme CA
        cert = ca.issue_cert(host_ip)
        cert.cert_chain_pems[0].write_to_path(str(top / "server.crt"))
        cert.private_key_pem.write_to_path(str(top / "server.key"))
        for f in ("server.crt", "server.key"):
            shutil.chown(top / f, "postgres")
        (top / "server.key").chmod(0o600)  # (postgres refuses a key others may read)
        with _server([*as_pg, str(bins / "postgres"), "-D", str(data), "-c", f"listen_addresses={host_ip}", "-p",
                      str(PG_PORT), "-k", str(top), "-c", "fsync=off", "-c", "max_connections=50", "-c", "ssl=on",
                      "-c", f"ssl_cert_file={top / 'server.crt'}", "-c", f"ssl_key_file={top / 'server.key'}"],
                     b"database system is ready to accept connections"):
            yield path, host_ip
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("program", ["big", "notify", "terminated", "timeouts", "short", "refused"])
def test_pg8000_against_postgres_as_on_the_kernel(postgres, program):
    """pg8000 against a real postgres: 1 MB bytea values and COPY of 20,000 rows both ways;
    LISTEN/NOTIFY across connections; a backend terminated by another (its next query's error);
    a socket timeout under a long query, and a statement_timeout the server cancels; 60 short
    connections (the server left with one backend); a refused port. The same on both."""
    path, host_ip = postgres
    found = _same(*(_PG.run(path, on_usnet, program, host_ip, str(PG_PORT)) for on_usnet in (True, False)))
    expected = {
        "big": {"back": [True] * 4, "copy": [True, [20000, 199990000]]},
        "notify": {"notes": [["ch", "n0"], ["ch", "n1"], ["ch", "n2"]]},
        "short": {"rows": [60, 1770], "backends": 1},
    }
    if program in expected:
        assert found == expected[program]
    elif program == "terminated":
        assert found["terminate"] is True and found["admin"] == 2 and found["next"] != "answered"
    elif program == "timeouts":
        assert found["statement"] == ["pg8000.exceptions.DatabaseError", "57014"] and found["after"] == 3
    else:
        assert found["refused"][0][0] == "pg8000.exceptions.InterfaceError"


def test_http_server_under_usnet_run_serves_curl_parallel_as_on_the_kernel(usnetd_path, tmp_path):  # noqa: F811
    """`python -m http.server` (its ThreadingHTTPServer, HTTP/1.1) under `usnet run`, and on kernel
    sockets: curl --parallel (20 at once, each its own connection at first) fetches a 2 MB file 60
    times and a missing one once. Every answer, its size and its SHA-256, the same; the server
    still up and logging each request."""
    path, usnet_ip, host_ip = usnetd_path
    body = os.urandom(2 << 20)
    (tmp_path / "big.bin").write_bytes(body)
    outs = []
    for on_usnet in (True, False):
        where = usnet_ip if on_usnet else host_ip
        cmd = [sys.executable, "-u", "-m", "http.server", "-b", where, "-p", "HTTP/1.1", "-d", str(tmp_path), "0"]
        if on_usnet:
            cmd = [sys.executable, "-m", "usnet", "run", "--", *cmd]
        server, port = started(cmd, child_env(path) if on_usnet else kernel_env())
        try:
            urls = [f"http://{where}:{port}/big.bin"] * 60 + [f"http://{where}:{port}/missing"]
            got = subprocess.run(["curl", "-sS", "--parallel", "--parallel-immediate", "--parallel-max", "20",
                                  "--max-time", str(LIMIT), "-w", "%{http_code} %{size_download}\n",
                                  *[a for u in urls for a in (u, "-o", "/dev/null")]],
                                 capture_output=True, timeout=LIMIT + 5)
            assert got.returncode == 0, got.stderr.decode()
            one = subprocess.run(["curl", "-sS", "--fail", "--max-time", str(LIMIT), urls[0]], capture_output=True,
                                 timeout=LIMIT + 5)
            assert server.poll() is None
            server.terminate()
            _out, err = server.communicate(timeout=LIMIT)
        finally:
            stop(server)
        logged = sum(1 for line in err.decode().splitlines() if '"GET /' in line)
        outs.append({"answers": sorted(got.stdout.decode().splitlines()), "one": hashlib.sha256(one.stdout).hexdigest(),
                     "logged": logged})
    assert outs[0] == outs[1]
    answers = outs[0]["answers"]
    assert len(answers) == 61 and answers[:60] == [f"200 {2 << 20}"] * 60 and answers[60].startswith("404 ")
    assert outs[0]["one"] == hashlib.sha256(body).hexdigest() and outs[0]["logged"] == 62


def _sum_peer(conn: socket.socket) -> None:
    """Reads to the client's half-close and answers the SHA-256 of what came."""
    with conn:
        got, end = _read_all(conn)
        if end == "eof":
            conn.sendall(hashlib.sha256(got).hexdigest().encode() + b"\n")


def test_asyncio_subprocesses_and_sockets_in_one_loop_as_on_the_kernel(usnetd_path):  # noqa: F811
    """asyncio.create_subprocess_exec (pipes, the loop's child watcher) beside the loop's own
    connection streaming 1 MB each way: three children at once, each a Python that connects to the
    kernel peer itself (on usnet too: `usnet run` hands its environment to children), a child
    killed while it waits (-9), and 3 MB written to a child's stdin. The same on both."""
    path, _usnet_ip, host_ip = usnetd_path
    prog = PeerProgram("aio_subproc.py", LIMIT * 2)
    with _serve(host_ip, _sum_peer, join=True) as port:
        outs = [json.loads(prog.run(path, on_usnet, host_ip, str(port))) for on_usnet in (True, False)]
    assert [o.pop("on") for o in outs] == [["usnet"], ["socket"]]  # (the children's sockets: usnet's, the kernel's)
    found = _same(*(json.dumps(o) for o in outs))
    child = [0, hashlib.sha256(b"c" * 100000).hexdigest(), ""]
    assert found == {"stream": [True], "children": [child] * 3, "killed": -9, "stdin": True}
