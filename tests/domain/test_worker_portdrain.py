"""Issue 18: a departed client's ports on worker k are not handed out till worker k has let them go.

`usnetd --workers 2`. When a client's session ends, usnetd closes its session in worker 1 (half:
the worker ends it as OWNER_GONE, then closes its end) and keeps the ports of the client's flows
and connector blocks there reserved till that close is heard ("draining"). Before, it released
them at once, and another client given one of them in that window was refused by worker 1, which
still held it: EADDRINUSE for an explicit bind, caused by someone else's exit.

The window is held open deterministically: worker 1 is stopped (SIGSTOP) before A leaves, and A
leaves a few relayed notices (ReleasePorts on its worker-1 connector, which do not park it)
unread in its session there; a worker serves one request per session per turn, so on SIGCONT it
serves B's request before A's end, unless usnetd made B wait. B's request must then succeed.
"""

from __future__ import annotations

import os
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

pytestmark = pytest.mark.privileged


def _ask(sock: socket.socket, req: P.Request) -> P.Reply:
    send_msg(sock, P.encode(req))
    return _answer(sock)


def _leave_while_stopped(d, a: socket.socket, a_id: int, connector: int, pid: int) -> None:
    """Worker 1 (`pid`) stopped; A queues three relayed notices in its session there, then leaves."""
    os.kill(pid, signal.SIGSTOP)
    for _ in range(3):
        send_msg(a, P.encode(P.ReleasePorts(connector, [1])))  # (answered EINVAL there: no port of its)
    wait_until(lambda: _unread(a) == 0, 10, "usnetd to read A's notices")
    a.close()
    wait_until(lambda: f"session end session={a_id} " in d.daemon.log_text(), 10, "A's session to end")


def _a_with_connector(d) -> tuple[socket.socket, int, int, list[int]]:
    """Client A with a connector on worker 1 and a block of 4 of its ports."""
    a, a_id = raw_session(d.path, "a")
    opened = _ask(a, P.OpenFlow("usnet0", 6, connector=True, worker=1))
    assert isinstance(opened, P.FlowOpened), opened
    block = _ask(a, P.AddPorts(opened.channel, 4))
    assert isinstance(block, P.PortsAdded) and all(p % 2 == 1 for p in block.ports), block
    return a, a_id, opened.channel, block.ports


def _b_asks_in_the_window(d, pid: int, req: P.Request) -> P.Reply:
    """B sends `req` while worker 1 is stopped, after A's end; the worker goes on; B's answer."""
    b, _ = raw_session(d.path, "b")
    try:
        send_msg(b, P.encode(req))
        wait_until(lambda: _unread(b) == 0, 10, "usnetd to read B's request")
        os.kill(pid, signal.SIGCONT)
        return _answer(b)
    finally:
        b.close()


def _same_worker(d, pid: int) -> None:
    """The window was held by a stopped worker, not ended by its replacement (a hung worker is
    killed after HUNG_AFTER s, which frees everything: then the test proved nothing)."""
    assert _workers(d.path)[1]["pid"] == pid, "worker 1 was found hung and replaced: the window closed early"


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_a_departed_clients_port_on_worker_1_is_bound_by_the_next_client(tapd2):
    """A holds UDP port 7011 (worker 1's) and leaves; B binds 7011 at once: it gets it."""
    a, a_id, connector, _ = _a_with_connector(tapd2)
    got = _ask(a, P.OpenFlow("usnet0", 17, 7011))
    assert isinstance(got, P.FlowOpened), got
    pid = _workers(tapd2.path)[1]["pid"]
    try:
        _leave_while_stopped(tapd2, a, a_id, connector, pid)
        got = _b_asks_in_the_window(tapd2, pid, P.OpenFlow("usnet0", 17, 7011))
        assert isinstance(got, P.FlowOpened) and got.local_port == 7011, got
        _same_worker(tapd2, pid)
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_a_departed_clients_connector_block_is_held_till_worker_1_lets_it_go(tapd2):
    """A's connector on worker 1 holds a block and A leaves; B listens on a port of that block at
    once: it gets it (waiting for worker 1 to end A's session, not refused by it)."""
    a, a_id, connector, ports = _a_with_connector(tapd2)
    pid = _workers(tapd2.path)[1]["pid"]
    try:
        _leave_while_stopped(tapd2, a, a_id, connector, pid)
        got = _b_asks_in_the_window(tapd2, pid, P.OpenFlow("usnet0", 6, ports[0]))
        assert isinstance(got, P.FlowOpened) and got.local_port == ports[0], got
        _same_worker(tapd2, pid)
    finally:
        os.kill(pid, signal.SIGCONT)


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
