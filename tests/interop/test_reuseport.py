"""SO_REUSEPORT across processes (issue 16): two servers, each `usnet run` of the same unmodified
program, listen on one port; real kernel peers connect and send, and both servers get their
share, every connection's data intact; when one server goes, the other takes every new
connection. The same program on kernel sockets in the namespace shows what Linux does with the
same sequence, and the binds Linux refuses are refused alike.

usnetd runs as a child process on a TAP of its own in the test's namespace
(tests/helpers/usnetd.TapDaemon); the domain-level rules (the uid, the hash, pinning) are in
tests/domain/test_reuseport.py.
"""

from __future__ import annotations

import errno
import hashlib
import os
import select
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.helpers.util import wait_until
from usnet.client import Client

pytestmark = pytest.mark.privileged

LIMIT = 20  # seconds: reached only when something is broken
PORT = 7300

SERVER = textwrap.dedent("""
    import hashlib, os, select, socket, sys

    proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    if proto == "tcp":
        s.listen(64)
    print("ready", os.getpid(), flush=True)
    while True:
        if proto == "tcp" and select.select([s, sys.stdin], [], [])[0] != [s]:
            if sys.stdin.readline() == "close\\n":  # the listener closes; the process stays
                s.close()
                print("closed", flush=True)
                sys.stdin.read()
                break
        if proto == "udp":
            data, peer = s.recvfrom(65536)
            s.sendto(f"{os.getpid()} ".encode() + data, peer)
            continue
        c, _ = s.accept()
        with c:
            data = b""
            while chunk := c.recv(65536):
                data += chunk
            c.sendall(f"{os.getpid()} {hashlib.sha256(data).hexdigest()}".encode())
""")


# the same server in asyncio: several processes of `asyncio.start_server(reuse_port=True)`
SERVER_AIO = textwrap.dedent("""
    import asyncio, hashlib, os, sys

    async def handle(r, w):
        data = await r.read()
        w.write(f"{os.getpid()} {hashlib.sha256(data).hexdigest()}".encode())
        await w.drain()
        w.close()

    async def main():
        srv = await asyncio.start_server(handle, sys.argv[2], int(sys.argv[3]), reuse_port=True)
        print("ready", os.getpid(), flush=True)
        async with srv:
            await srv.serve_forever()

    asyncio.run(main())
""")


def _servers(tmp_path, proto: str, host: str, n: int, usnet: str | None,
             text: str = SERVER) -> list[tuple[subprocess.Popen, str]]:
    """`n` processes of SERVER (or `text`) on (`host`, PORT): under `usnet run` on the daemon at
    `usnet`, or on the kernel's sockets (None). Each with the pid it printed once ready."""
    prog = tmp_path / "server.py"
    prog.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "USNET_PATCH"}
    cmd = [sys.executable, str(prog), proto, host, str(PORT)]
    if usnet is not None:
        env.update(USNET_SOCKET=usnet, USNET_NETIF="usnet0")
        cmd = [sys.executable, "-m", "usnet", "run", "--", *cmd]
    procs = []
    try:
        for _ in range(n):
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            procs.append(p)
            ready, _, _ = select.select([p.stdout], [], [], LIMIT)
            line = p.stdout.readline().decode() if ready else ""
            assert line.startswith("ready"), f"a server did not start: {line!r} {p.stderr.read1().decode()}"
        return [(p, str(p.pid)) for p in procs]
    except BaseException:
        for p in procs:
            p.kill()
            p.wait()
        raise


def _stop(servers) -> None:
    for p, _ in servers:
        p.kill()
        p.wait()
        p.stdin.close()
        p.stdout.close()
        err = p.stderr.read().decode()
        p.stderr.close()
        assert "Traceback" not in err, err[-3000:]


def _connects(host: str, count: int, size: int = 30_000) -> list[str]:
    """`count` kernel connections to (`host`, PORT), each sending its own data: the pid of the
    server process that answered each (its digest checked)."""
    pids = []
    for i in range(count):
        data = os.urandom(size + i)
        with socket.create_connection((host, PORT), timeout=LIMIT) as c:
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := c.recv(65536):
                got += chunk
        pid, digest = got.decode().split()
        assert digest == hashlib.sha256(data).hexdigest()
        pids.append(pid)
    return pids


def _listening(path: str) -> int:
    """How many flows on PORT take new connections (a closed listener's flow may stay a while)."""
    with Client.connect(path) as c:
        st = c.status()
    return sum(1 for n in st["netifs"] for f in n["flows"]
               if f["local_port"] == PORT and f["proto"] == "tcp" and f["reuseport"] != "closed")


@pytest.mark.parametrize("how", ["killed", "closed"])
@pytest.mark.parametrize("stack", ["usnet", "kernel"])
def test_two_servers_share_a_port_and_the_survivor_takes_every_new_connection(tapd, tmp_path, stack, how):
    """Both servers get connections; then the first is killed, or closes its listener and
    lives on: the other one gets every new connection."""
    usnet = stack == "usnet"
    host = tapd.usnet_ip if usnet else tapd.host_ip
    servers = _servers(tmp_path, "tcp", host, 2, tapd.path if usnet else None)
    try:
        pids = _connects(host, 40)
        by = {pid: pids.count(pid) for _, pid in servers}
        assert sum(by.values()) == 40 and all(by.values()), by  # both served, and nobody else
        (p1, _), (_, pid2) = servers
        if how == "killed":
            p1.kill()
            p1.wait()
        else:
            p1.stdin.write(b"close\n")
            p1.stdin.flush()
            ready, _, _ = select.select([p1.stdout], [], [], LIMIT)
            assert ready and p1.stdout.readline() == b"closed\n"
        if usnet:  # its notice or its end reaches the domain on another socket than the SYNs
            wait_until(lambda: _listening(tapd.path) == 1, LIMIT, "the domain to see the first listener go")
        assert _connects(host, 20) == [pid2] * 20
    finally:
        _stop(servers)


@pytest.mark.parametrize("stack", ["usnet", "kernel"])
def test_asyncio_servers_in_two_processes_share_a_port(tapd, tmp_path, stack):
    usnet = stack == "usnet"
    host = tapd.usnet_ip if usnet else tapd.host_ip
    servers = _servers(tmp_path, "tcp", host, 2, tapd.path if usnet else None, SERVER_AIO)
    try:
        pids = _connects(host, 40)
        by = {pid: pids.count(pid) for _, pid in servers}
        assert sum(by.values()) == 40 and all(by.values()), by
    finally:
        _stop(servers)


@pytest.mark.parametrize("stack", ["usnet", "kernel"])
def test_two_udp_servers_share_a_port_by_source(tapd, tmp_path, stack):
    usnet = stack == "usnet"
    host = tapd.usnet_ip if usnet else tapd.host_ip
    servers = _servers(tmp_path, "udp", host, 2, tapd.path if usnet else None)
    try:
        seen: dict[str, set] = {pid: set() for _, pid in servers}
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(40)]
        try:
            for rnd in range(2):
                for i, k in enumerate(socks):
                    k.settimeout(LIMIT)
                    msg = b"%d-%d" % (rnd, i)
                    k.sendto(msg, (host, PORT))
                    reply, _ = k.recvfrom(65536)
                    pid, echoed = reply.split(b" ", 1)
                    assert echoed == msg
                    seen[pid.decode()].add(k.getsockname()[1])
        finally:
            for k in socks:
                k.close()
        assert all(seen.values()), seen  # both servers got datagrams
        a, b = seen.values()
        assert not a & b and len(a | b) == 40  # each source port to one server, both rounds
    finally:
        _stop(servers)


def _bind_sequence(make, host: str) -> list[str]:
    """The outcome of each bind of one sequence: two SO_REUSEPORT listeners, a third without,
    and one with SO_REUSEPORT on a port held without it."""
    out, held = [], []

    def bind(port: int, reuse: bool) -> None:
        s = make()
        held.append(s)
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind((host, port))
            s.listen(4)
            out.append("ok")
        except OSError as e:
            out.append(errno.errorcode.get(e.errno or 0, str(e.errno)))

    try:
        bind(PORT, True)
        bind(PORT, True)
        bind(PORT, False)
        bind(PORT + 1, False)
        bind(PORT + 1, True)
    finally:
        for s in held:
            s.close()
    return out


def test_the_binds_linux_refuses_usnet_refuses(tapd):
    from usnet import socket as us

    client = Client.connect(tapd.path)
    us.configure(client, "usnet0")
    try:
        got = _bind_sequence(us.socket, tapd.usnet_ip)
    finally:
        us.configure(None, None)
        client.close()
    kernel = _bind_sequence(socket.socket, tapd.host_ip)
    assert kernel == ["ok", "ok", "EADDRINUSE", "ok", "EADDRINUSE"]
    assert got == kernel
