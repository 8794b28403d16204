"""Issue 18, "a dead worker is restarted": `usnetd --workers 2` on a multi-queue TAP, worker 1
killed (SIGKILL) under its clients.

What a user of a networking stack expects, and the rule for "usnetd killed under its clients":
the blocked calls on worker 1's TCP connection fail at once with a clear reason
("usnetd worker 1 ... died"), the flows of worker 0 go on undisturbed (a TCP transfer runs
across the kill), usnetd releases what it held for the dead channels (their ports bind again),
and a new worker 1 serves new flows on its ports with a kernel peer; the status says so.
A listener or UDP socket on worker 1 holds nothing that died but its port: as after a usnetd
restart (usnet.client.rebind) it waits and binds the same port again on the new worker, its
blocked calls served by it. On a packet netif as on a TAP (the replacement finds its rings'
positions again: PacketDriver.resume).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
import time

import pytest

from tests.domain.test_workers import _workers
from tests.helpers.util import wait_until

pytestmark = pytest.mark.privileged


def _blocked(call) -> tuple[threading.Thread, dict]:
    """Run `call` in a thread; what it returned or raised, and when, lands in the dict."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = call()
        except BaseException as e:  # the test looks at it
            out["error"] = e
        out["at"] = time.monotonic()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def _udp_echo_once(ip: str, port: int) -> None:
    """A kernel peer's datagram to usnet `port` comes back (a usnet echo bound there)."""
    from usnet import socket as us

    s = us.socket(us.AF_INET, us.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.settimeout(10)
    with s, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k:
        k.settimeout(1)
        for i in range(20):  # a restarted worker may still be starting: the first may wait in the queue
            k.sendto(b"hello %d" % i, (ip, port))
            try:
                data, peer = s.recvfrom(2048)
            except TimeoutError:
                continue
            s.sendto(data, peer)
            assert k.recvfrom(2048)[0] == data
            return
    raise AssertionError(f"no echo on port {port}")


def _connection(usnet_ip: str, port: int) -> tuple:
    """(a usnet listener on `port`, a kernel client's connection to it, the accepted connection)."""
    from usnet import socket as us

    ls = us.socket(us.AF_INET, us.SOCK_STREAM)
    ls.bind(("0.0.0.0", port))
    ls.listen(1)
    ls.settimeout(10)
    k = socket.create_connection((usnet_ip, port), timeout=10)
    c, _ = ls.accept()
    return ls, k, c


def test_a_killed_worker_fails_its_channels_and_is_restarted(tapd2):
    # worker 1 (odd ports): an accepted TCP connection with a call blocked on it (a UDP socket or a
    # listener there binds again instead: test_a_listener_and_a_udp_socket_of_a_dead_worker_bind_again)
    ls1, k1, c1 = _connection(tapd2.usnet_ip, 7101)
    # worker 0 (even ports): a TCP connection that carries a transfer across the kill
    ls0, k0, c0 = _connection(tapd2.usnet_ip, 7100)
    c0.settimeout(10)
    blob = os.urandom(1 << 16)
    got = bytearray()

    def sink() -> int:
        while len(got) < 40 * len(blob):
            chunk = c0.recv(65536)
            if not chunk:
                break
            got.extend(chunk)
        return len(got)
    t0, out0 = _blocked(sink)
    for _ in range(10):
        k0.sendall(blob)
    t_tcp, out_tcp = _blocked(lambda: c1.recv(2048))

    before = _workers(tapd2.path)
    pid = before[1]["pid"]
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    for _ in range(10):
        k0.sendall(blob)  # worker 0's connection keeps going meanwhile
    t_tcp.join(10)
    e = out_tcp.get("error")
    assert isinstance(e, ConnectionAbortedError), out_tcp  # its TCP state died with the worker
    assert "worker 1" in str(e) and "died" in str(e), e
    assert out_tcp["at"] - killed < 3.0, out_tcp  # the "within ~1-2 s", asserted generously
    for _ in range(20):
        k0.sendall(blob)
    t0.join(10)
    assert out0.get("value") == 40 * len(blob), out0
    assert bytes(got[:len(blob)]) == blob
    for s in (c1, ls1, c0, ls0, k0, k1):
        s.close()

    after = _workers(tapd2.path)
    assert after[1]["pid"] not in (0, pid) and after[1]["restarts"] == 1, after
    assert not os.path.exists(f"/proc/{pid}")  # reaped
    _udp_echo_once(tapd2.usnet_ip, 7001)  # the dead flow's port is free again, on the new worker 1
    _udp_echo_once(tapd2.usnet_ip, 7003)
    _udp_echo_once(tapd2.usnet_ip, 7000)
    assert f"usnetd worker 1 (pid {pid}) died (killed by SIGKILL)" in tapd2.daemon.log_text()
    table = _status_text(tapd2.path)
    assert "workers" in table and str(after[1]["pid"]) in table, table
    new = after[1]["pid"]
    assert tapd2.daemon.stop() == 0  # SIGTERM: the new worker (the spawner's child) and the spawner go too
    assert not os.path.exists(f"/proc/{new}")


def _status_text(path: str) -> str:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "usnet.cli.main", "status", "--socket", path], capture_output=True,
                          text=True, timeout=30, env={**os.environ, "COLUMNS": "200"}).stdout


def _wait_new_pid(path: str, old: int) -> int:
    """Worker 1's pid once it is not `old` (0: down), bounded."""
    for _ in range(100):
        pid = _workers(path)[1]["pid"]
        if pid != old:
            return pid
        time.sleep(0.05)  # polling the status: a restart is asynchronous to this test
    raise AssertionError("worker 1 was not restarted")


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_a_worker_that_keeps_dying_at_start_is_not_restarted_for_ever(tapd2):
    from usnet import socket as us
    from usnet.domain.workers.bounds import RESTART_LIMIT

    u1 = us.socket(us.AF_INET, us.SOCK_DGRAM)  # bound again after each restart; fails once left down
    u1.bind(("0.0.0.0", 7001))
    u1.settimeout(30)
    t, out = _blocked(lambda: u1.recvfrom(2048))
    pid = _workers(tapd2.path)[1]["pid"]
    for _ in range(RESTART_LIMIT):
        os.kill(pid, signal.SIGKILL)
        pid = _wait_new_pid(tapd2.path, pid)
    assert pid == 0
    t.join(10)
    e = out.get("error")
    assert isinstance(e, OSError) and e.errno == errno.ENETDOWN and "not restarted" in str(e), out
    u1.close()
    (w,) = [w for w in _workers(tapd2.path) if w["index"] == 1]
    assert w["restarts"] == RESTART_LIMIT - 1 and "not restarted" in w["error"], w
    s = us.socket(us.AF_INET, us.SOCK_DGRAM)
    with pytest.raises(OSError, match="worker 1"):
        s.bind(("0.0.0.0", 7003))
    s.close()
    _udp_echo_once(tapd2.usnet_ip, 7000)  # worker 0 serves on
    assert tapd2.daemon.log_text().count("restarted as pid") == RESTART_LIMIT - 1


def test_a_listener_and_a_udp_socket_of_a_dead_worker_bind_again(tapd2):
    """A kernel server outlives its link going down and up; a usnet server outlives the worker
    serving its port: the listener (and its dup), a UDP socket of the default domain and one of
    a client the program made all wait across worker 1's death (their blocked accept and
    recvfrom neither fail nor return), then serve on the same port once usnetd has a new worker
    1. A worker-0 listener and connection are untouched (on a TAP and on a packet netif)."""
    from usnet import socket as us
    from usnet.client import Client, rebind

    ls1 = us.socket(us.AF_INET, us.SOCK_STREAM)  # worker 1 (odd ports)
    ls1.setsockopt(us.SOL_SOCKET, us.SO_REUSEADDR, 1)
    ls1.bind(("0.0.0.0", 7101))
    ls1.listen(5)
    ls1.settimeout(20)
    twin = ls1.dup()
    u1 = us.socket(us.AF_INET, us.SOCK_DGRAM)
    u1.bind(("0.0.0.0", 7001))
    u1.settimeout(20)
    own = Client.connect(tapd2.path)
    u3 = us.socket(us.AF_INET, us.SOCK_DGRAM, client=own, netif="usnet0")
    u3.bind(("0.0.0.0", 7003))
    u3.settimeout(20)
    ls0, k0, c0 = _connection(tapd2.usnet_ip, 7100)  # worker 0 (even ports)
    c0.settimeout(10)
    t_acc, out_acc = _blocked(ls1.accept)
    t_u1, out_u1 = _blocked(lambda: u1.recvfrom(2048))
    t_u3, out_u3 = _blocked(lambda: u3.recvfrom(2048))

    pid = _workers(tapd2.path)[1]["pid"]
    os.kill(pid, signal.SIGKILL)
    k0.sendall(b"across the kill")  # worker 0's connection is undisturbed
    assert c0.recv(100) == b"across the kill"

    assert _wait_new_pid(tapd2.path, pid) not in (0, pid)
    wait_until(lambda: rebind.waiting() == 0, 10, "the sockets to bind again on the new worker 1")
    assert ls1.getsockname() == ("0.0.0.0", 7101) and twin.getsockname() == ("0.0.0.0", 7101)
    with socket.create_connection((tapd2.usnet_ip, 7101), timeout=10) as k:
        t_acc.join(10)
        assert "error" not in out_acc, out_acc  # the blocked accept returned this connection
        c, _ = out_acc["value"]
        with c:
            k.sendall(b"after")
            assert c.recv(100) == b"after"
    with socket.create_connection((tapd2.usnet_ip, 7101), timeout=10) as k:
        c, _ = twin.accept()  # the dup moved with it
        with c:
            c.sendall(b"twin")
            assert k.recv(100) == b"twin"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k:
        k.bind((tapd2.host_ip, 0))
        k.settimeout(10)
        for port, (t, out) in ((7001, (t_u1, out_u1)), (7003, (t_u3, out_u3))):
            k.sendto(b"to %d" % port, (tapd2.usnet_ip, port))
            t.join(10)
            assert out.get("value") == (b"to %d" % port, k.getsockname()), out
        u1.sendto(b"back", k.getsockname())  # and sends from the same port
        assert k.recvfrom(100) == (b"back", (tapd2.usnet_ip, 7001))
    with socket.create_connection((tapd2.usnet_ip, 7100), timeout=10) as k:
        c, _ = ls0.accept()  # worker 0's listener, untouched
        with c:
            k.sendall(b"worker 0")
            assert c.recv(100) == b"worker 0"
    for s in (ls1, twin, u1, u3, ls0, c0, k0):
        s.close()
    own.close()


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
@pytest.mark.parametrize("program", ["http.server", "asyncio"])
def test_an_unmodified_server_on_a_port_of_a_dead_worker_serves_again(tapd2, tmp_path, program):
    """`usnet run` servers on port 8001 (worker 1): socketserver's selector loop, and asyncio's
    start_server on usnet's loop (its server watches the listener's new engine, `_Watcher.moved`),
    answer curl again once usnetd has restarted worker 1 under them."""
    import subprocess
    import sys

    from tests.interop.test_patch import child_env, started, stop
    from tests.interop.test_usnetd_gone import _ASYNCIO_SERVER

    (tmp_path / "f").write_bytes(b"ok")
    script = tmp_path / "server.py"
    script.write_text(_ASYNCIO_SERVER)  # on port 8001
    cmd = ([sys.executable, "-m", "http.server", "-d", str(tmp_path), "8001"] if program == "http.server"
           else [sys.executable, str(script)])
    env = child_env(tapd2.path)
    env["USNET_NETIF"] = "usnet0"
    server, port = started([sys.executable, "-m", "usnet", "run", "--", *cmd], env)
    assert port == 8001
    url = f"http://{tapd2.usnet_ip}:{port}/f"

    def answers() -> bool:
        got = subprocess.run(["curl", "-sS", "--max-time", "5", url], capture_output=True, timeout=10)
        return got.returncode == 0 and got.stdout == b"ok"

    try:
        assert answers()
        pid = _workers(tapd2.path)[1]["pid"]
        os.kill(pid, signal.SIGKILL)
        assert _wait_new_pid(tapd2.path, pid) not in (0, pid)
        wait_until(answers, 10, f"{program} to answer again on the new worker 1")
        assert server.poll() is None
    finally:
        stop(server)


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_an_asyncio_datagram_endpoint_of_a_dead_worker_binds_again(tapd2):
    """usnet.aio's datagram transport is over a usnet UDP socket, which a worker's death orphans
    (`Runner.on_worker_gone`) and usnet.client.rebind binds again: it answers on the same port of
    the new worker 1."""
    import asyncio

    from usnet import aio

    k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    k.bind((tapd2.host_ip, 0))
    k.settimeout(0.5)

    class Upper(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.t = transport

        def datagram_received(self, data, addr):
            self.t.sendto(data.upper(), addr)

    def answered(word: bytes) -> bool:
        for _ in range(20):  # bounded: the new worker may still be starting, a datagram may wait
            k.sendto(word, (tapd2.usnet_ip, 7005))
            try:
                if k.recvfrom(100) == (word.upper(), (tapd2.usnet_ip, 7005)):
                    return True
            except TimeoutError:
                continue
        return False

    async def main() -> None:
        loop = asyncio.get_running_loop()
        t, _ = await loop.create_datagram_endpoint(Upper, local_addr=("0.0.0.0", 7005))  # worker 1
        assert await loop.run_in_executor(None, answered, b"before")
        first = t._sock._engine  # type: ignore[attr-defined]
        assert first.driver is loop._usnet_driver  # the loop pumps the flow (usnet.client.aio)
        pid = _workers(tapd2.path)[1]["pid"]
        os.kill(pid, signal.SIGKILL)
        assert await loop.run_in_executor(None, _wait_new_pid, tapd2.path, pid) not in (0, pid)
        assert await loop.run_in_executor(None, answered, b"after")
        again = t._sock._engine  # type: ignore[attr-defined]
        assert again is not first and again.driver is loop._usnet_driver  # the new flow is lent again
        t.close()

    loop = aio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 60))
    finally:
        loop.close()
    k.close()
