"""Issue 18 and "a hostile or failing part must not freeze usnetd": `usnetd --workers 2`, worker 1
alive but silent (SIGSTOP: as a worker stuck in a loop or blocked would be).

Before, a relayed open on worker 1's ports held usnetd's loop 5 s and then failed, and worker 1's
clients hung for ever. Now usnetd bounds every wait on a worker: a relayed request unanswered
within WORKER_TIMEOUT, or a heartbeat unanswered HUNG_AFTER, makes the worker hung; usnetd kills
it (SIGKILL ends a stopped process too) and replaces it as it does a dead one. Its clients' blocked
calls fail with the reason ("usnetd worker 1 (pid N) hung (...)"), an open that found it hung is
asked again of the new worker and succeeds, and worker 0's flows go on.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from tests.domain.test_worker_restart import _blocked, _connection, _wait_new_pid
from tests.domain.test_workers import _workers

pytestmark = pytest.mark.privileged


def _transfer_across(c0, k0) -> tuple:
    """A worker-0 transfer (kernel to usnet) running across what the test does to worker 1."""
    blob = os.urandom(1 << 16)
    got = bytearray()

    def sink() -> int:
        while len(got) < 20 * len(blob):
            chunk = c0.recv(65536)
            if not chunk:
                break
            got.extend(chunk)
        return len(got)
    c0.settimeout(20)
    t, out = _blocked(sink)
    return blob, got, t, out


@pytest.mark.parametrize("tapd2", ["tap", "packet"], indirect=True)
def test_an_open_on_a_hung_worker_is_served_by_its_replacement(tapd2):
    from usnet import socket as us
    from usnet.domain.workers.bounds import START_TIMEOUT, WORKER_TIMEOUT

    ls1, k1, c1 = _connection(tapd2.usnet_ip, 7101)  # worker 1 (odd ports)
    ls0, k0, c0 = _connection(tapd2.usnet_ip, 7100)  # worker 0 (even ports)
    blob, got, t0, out0 = _transfer_across(c0, k0)
    for _ in range(10):
        k0.sendall(blob)
    t1, out1 = _blocked(lambda: c1.recv(2048))
    pid = _workers(tapd2.path)[1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        u3 = us.socket(us.AF_INET, us.SOCK_DGRAM)
        asked = time.monotonic()
        u3.bind(("0.0.0.0", 7003))  # worker 1's port: the open finds it hung, then its replacement
        took = time.monotonic() - asked
        assert took < WORKER_TIMEOUT + START_TIMEOUT + 2, took  # bounded (it was 5 s and a failure)
        u3.settimeout(10)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k:
            k.bind((tapd2.host_ip, 0))
            k.settimeout(0.5)
            for _ in range(20):  # the new worker serves the port (a first datagram may wait for ARP)
                k.sendto(b"to the new worker", (tapd2.usnet_ip, 7003))
                try:
                    u3.settimeout(0.5)
                    data, peer = u3.recvfrom(100)
                    break
                except TimeoutError:
                    continue
            else:
                raise AssertionError("nothing reached port 7003 on the new worker 1")
            assert (data, peer) == (b"to the new worker", k.getsockname())
        t1.join(10)
        e = out1.get("error")
        assert isinstance(e, ConnectionAbortedError), out1  # its connection died with the hung worker
        assert "worker 1" in str(e) and "hung" in str(e), e
        for _ in range(10):
            k0.sendall(blob)  # worker 0's connection went on throughout
        t0.join(20)
        assert out0.get("value") == 20 * len(blob), out0
        assert bytes(got[:len(blob)]) == blob
        new = _workers(tapd2.path)[1]
        assert new["pid"] not in (0, pid) and new["restarts"] == 1, new
        assert not os.path.exists(f"/proc/{pid}")  # killed and reaped, stopped as it was
        assert f"usnetd worker 1 (pid {pid}) hung (no answer to OpenFlow within" in tapd2.daemon.log_text()
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)
    for s in (u3, c1, ls1, k1, c0, ls0, k0):
        s.close()


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_a_hung_worker_is_noticed_without_any_request(tapd2):
    """No client asks anything of usnetd: the heartbeat finds worker 1 hung, and its clients'
    blocked calls fail with why instead of hanging for ever."""
    from usnet.domain.workers.bounds import HEARTBEAT, HUNG_AFTER

    ls1, k1, c1 = _connection(tapd2.usnet_ip, 7101)
    t1, out1 = _blocked(lambda: c1.recv(2048))
    pid = _workers(tapd2.path)[1]["pid"]
    stopped = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        t1.join(HUNG_AFTER + HEARTBEAT + 10)
        e = out1.get("error")
        assert isinstance(e, ConnectionAbortedError), out1
        assert "worker 1" in str(e) and "hung (no answer to a heartbeat" in str(e), e
        assert out1["at"] - stopped < HUNG_AFTER + HEARTBEAT + 3, out1  # generous: a loaded machine
        assert _wait_new_pid(tapd2.path, pid) not in (0, pid)
        assert not os.path.exists(f"/proc/{pid}")
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)
    for s in (c1, ls1, k1):
        s.close()
