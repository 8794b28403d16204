"""Issue 18: a departed client's ports on worker k are not handed out till worker k has let them go.

`usnetd --workers 2`. When a client's session ends, usnetd half-closes its session in worker 1
(the worker ends it as OWNER_GONE, its flows closed and their TCP peers reset, then closes its
end) and keeps the ports of the client's flows and connector blocks there reserved, "draining",
till it hears that close; a request for one of them meanwhile waits (its session parked, as for
a relayed request) and is served when the drain ends. Before, usnetd released them at once and
could hand one to another client while worker 1 still held it, which then depended on worker 1
ending the first session before serving the second's request.

The window is held open by stopping worker 1 (SIGSTOP) before A leaves; usnetd's status shows
what drains and how many requests wait for it (`draining`, `port_waits`).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys

import pytest

from tests.domain.test_worker_relay import _answer, _unread
from tests.domain.test_workers import _workers
from tests.helpers.hostile_harness import raw_session
from tests.helpers.util import wait_until
from usnet.abi import protocol as P
from usnet.abi.transport import send_msg
from usnet.client import Client

pytestmark = pytest.mark.privileged


def _ask(sock: socket.socket, req: P.Request) -> P.Reply:
    send_msg(sock, P.encode(req))
    return _answer(sock)


def _a_on_worker_1(d) -> tuple[socket.socket, int, list[int]]:
    """Client A with UDP port 7011 (worker 1's) and a connector on worker 1 holding a block of 4."""
    a, a_id = raw_session(d.path, "a")
    assert isinstance(got := _ask(a, P.OpenFlow("usnet0", 17, 7011)), P.FlowOpened), got
    opened = _ask(a, P.OpenFlow("usnet0", 6, connector=True, worker=1))
    assert isinstance(opened, P.FlowOpened), opened
    block = _ask(a, P.AddPorts(opened.channel, 4))
    assert isinstance(block, P.PortsAdded) and all(p % 2 == 1 for p in block.ports), block
    return a, a_id, block.ports


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_a_departed_clients_ports_wait_for_worker_1_then_bind_for_the_next_clients(tapd2):
    """Worker 1 stopped, A leaves; B1 binds A's UDP port 7011 and B2 listens on a port of A's
    connector block at once. usnetd holds A's five ports, draining, while worker 1 has not ended
    A's session, and B1 and B2 wait (not refused, not relayed to a worker that still holds the
    ports); worker 1 goes on, ends A's session, and both get their port."""
    a, a_id, block = _a_on_worker_1(tapd2)
    pid = _workers(tapd2.path)[1]["pid"]
    b1, _ = raw_session(tapd2.path, "b1")
    b2, _ = raw_session(tapd2.path, "b2")
    os.kill(pid, signal.SIGSTOP)
    try:
        a.close()
        wait_until(lambda: f"session end session={a_id} " in tapd2.daemon.log_text(), 10, "A's session to end")
        for b, req in ((b1, P.OpenFlow("usnet0", 17, 7011)), (b2, P.OpenFlow("usnet0", 6, block[0]))):
            send_msg(b, P.encode(req))
            wait_until(lambda b=b: _unread(b) == 0, 10, "usnetd to read B's open")
        with Client.connect(tapd2.path) as c:
            info = c.status()
        assert info["workers"][1]["draining"] == {"sessions": 1, "ports": 5}, info["workers"][1]
        assert info["port_waits"] == 2
        assert not select.select([b1, b2], [], [], 0)[0], "an open was answered while its port drained"
        os.kill(pid, signal.SIGCONT)
        got1, got2 = _answer(b1), _answer(b2)
        assert isinstance(got1, P.FlowOpened) and got1.local_port == 7011, got1
        assert isinstance(got2, P.FlowOpened) and got2.local_port == block[0], got2
        with Client.connect(tapd2.path) as c:
            info = c.status()
        assert info["workers"][1]["draining"] == {"sessions": 0, "ports": 0} and info["port_waits"] == 0, info
        # the window was held by the stopped worker, not closed by its replacement (a worker
        # found hung is killed after HUNG_AFTER s, which frees everything: then this proved nothing)
        assert info["workers"][1]["pid"] == pid, "worker 1 was found hung and replaced"
    finally:
        os.kill(pid, signal.SIGCONT)
        b1.close()
        b2.close()


_CONNECT_TWICE = """
import sys, time
from usnet import socket as us
conns = [us.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) for _ in range(2)]
print(" ".join(str(c.getsockname()[1]) for c in conns), flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_a_killed_clients_connections_on_worker_1_are_reset_and_its_port_comes_back(tapd2):
    """A real client process with a connection on each worker's connector is SIGKILLed: the kernel
    peer of each gets a RST (the workers end its sessions as OWNER_GONE), and the port of worker
    1's binds again for another client once worker 1 has let it go."""
    srv = socket.create_server((tapd2.host_ip, 0))
    srv.settimeout(10)
    proc = subprocess.Popen([sys.executable, "-c", _CONNECT_TWICE, tapd2.host_ip, str(srv.getsockname()[1])],
                            stdout=subprocess.PIPE, text=True)
    peers: list[socket.socket] = []
    try:
        for _ in range(2):
            peers.append(srv.accept()[0])
        line = proc.stdout.readline() if proc.stdout else ""
        ports = [int(p) for p in line.split()]
        assert sorted(p % 2 for p in ports) == [0, 1], ports  # one connection on each worker
        proc.kill()
        proc.wait(10)
        for k in peers:
            k.settimeout(10)
            with pytest.raises(ConnectionResetError):
                k.recv(16)
        b, _ = raw_session(tapd2.path, "b")  # worker 1's port: B waits, if need be, till it is free
        with b:
            odd = next(p for p in ports if p % 2 == 1)
            got = _ask(b, P.OpenFlow("usnet0", 6, odd))
            assert isinstance(got, P.FlowOpened) and got.local_port == odd, got
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for k in peers:
            k.close()
        srv.close()


# A drain's bound (usnet.domain.workers DRAIN_LIMIT, `Drains.check`): a worker that has not ended a
# departed client's session that long after usnetd half-closed it is judged as one that leaves a
# request unanswered (usnet.domain.liveness), found hung, killed and replaced, which ends the drain.

_PIDFD_GETFD = 438  # the syscall's number on x86_64 and aarch64 (Linux 5.6)


def _sockets_of(pid: int) -> set[int]:
    """The descriptors of process `pid` that are sockets."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                out.add(int(fd))
        except OSError:  # closed meanwhile
            pass
    return out


def _hold(pid: int, fds: set[int]) -> list[int]:
    """Copies of process `pid`'s descriptors `fds` in this one (pidfd_getfd, as a debugger takes
    them): while a copy is open the socket is, whatever `pid` does with its own."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        held = []
        for fd in fds:
            got = libc.syscall(_PIDFD_GETFD, pidfd, fd, 0)
            assert got >= 0, os.strerror(ctypes.get_errno())
            held.append(got)
        return held
    finally:
        os.close(pidfd)


def _b_waits_for_7011(d, a: socket.socket, a_id: int) -> socket.socket:
    """A leaves; B asks for A's port 7011 (worker 1's), which is draining: B waits (parked)."""
    b, _ = raw_session(d.path, "b")
    b.settimeout(10)
    a.close()
    wait_until(lambda: f"session end session={a_id} " in d.daemon.log_text(), 10, "A's session to end")
    send_msg(b, P.encode(P.OpenFlow("usnet0", 17, 7011)))
    return b


def _a_drained_on_a_new_worker_1(d, pid: int) -> None:
    """While B holds 7011: worker 1 is a new process, nothing drains, nobody waits."""
    with Client.connect(d.path) as c:
        info = c.status()
    assert info["workers"][1]["pid"] != pid and info["workers"][1]["draining"] == {"sessions": 0, "ports": 0}, info
    assert info["port_waits"] == 0


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_a_drain_on_a_stopped_worker_ends_with_the_worker_found_hung(tapd2):
    """Worker 1 stopped (SIGSTOP) and never continued, A leaves, B asks for A's port 7011: B is not
    left waiting for ever. The stopped worker is found hung (its drain past DRAIN_LIMIT, or its
    heartbeat past HUNG_AFTER: whichever comes first, /proc says stopped), killed and replaced; its
    port space went with it, so the drain ends and B gets 7011 from the new worker 1."""
    a, a_id, _ = _a_on_worker_1(tapd2)
    pid = _workers(tapd2.path)[1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        with _b_waits_for_7011(tapd2, a, a_id) as b:
            got = _answer(b)
            assert isinstance(got, P.FlowOpened) and got.local_port == 7011, got
            _a_drained_on_a_new_worker_1(tapd2, pid)
    finally:
        with contextlib.suppress(ProcessLookupError):  # (killed and reaped by then)
            os.kill(pid, signal.SIGCONT)
    assert f"usnetd worker 1 (pid {pid}) hung (" in tapd2.daemon.log_text()
    assert "stopped): killed" in tapd2.daemon.log_text()


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_a_live_worker_that_never_lets_a_departed_session_go_is_found_hung(tapd2):
    """Worker 1 answers its heartbeats but its end of A's session never closes: the test holds a
    copy of it (pidfd_getfd), so usnetd never reads the close that ends the drain, as with a worker
    that forgot to end the session. DRAIN_LIMIT s after A left, worker 1 is suspect, found asleep
    with the session's end unread (hung), killed and replaced; B gets 7011. Without the bound B
    waited for ever (its answer's timeout)."""
    from usnet.domain.workers.bounds import DRAIN_LIMIT

    pid = _workers(tapd2.path)[1]["pid"]
    before = _sockets_of(pid)
    a, a_id, _ = _a_on_worker_1(tapd2)
    held = _hold(pid, _sockets_of(pid) - before)  # A's session in worker 1, and its flows' sockets
    try:
        assert held
        with _b_waits_for_7011(tapd2, a, a_id) as b:
            got = _answer(b)
            assert isinstance(got, P.FlowOpened) and got.local_port == 7011, got
            _a_drained_on_a_new_worker_1(tapd2, pid)
    finally:
        for fd in held:
            os.close(fd)
    log_text = tapd2.daemon.log_text()
    assert (f"usnetd worker 1 (pid {pid}) hung (a departed client's session not ended within {DRAIN_LIMIT:g} s; "
            "asleep (state S) with the request unread): killed") in log_text, log_text[-2000:]
