"""Issue 16, "Lifecycle": usnetd dies mid-transfer (SIGKILL), and comes back.

A program's blocked calls (TCP sendall and recv, UDP recvfrom) fail within a second with an
error that names usnetd, not "refused"; UDP sends fail too; a new socket while no daemon runs
says usnetd is not running at the socket path and suggests `usnet up`; once a new usnetd
serves the same path, new sockets work without restarting the program.

usnetd runs as a child (tests/helpers/usnetd.Daemon) on a TAP of its own, in the test's network
namespace; the kernel's sockets there are the peers.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time

import pytest

from tests.helpers.usnetd import TapDaemon
from tests.helpers.util import wait_until

pytestmark = pytest.mark.privileged


@pytest.fixture
def tapd(sockdir, monkeypatch):
    from usnet import socket as us

    d = TapDaemon(sockdir)
    monkeypatch.setenv("USNET_SOCKET", d.path)
    monkeypatch.setenv("USNET_NETIF", "usnet0")
    us.configure(None, None)  # the environment decides, as for an unmodified program
    d.start()
    try:
        yield d
    finally:
        us.configure(None, None)
        d.stop()


def _blocked(call, out: dict, key: str) -> threading.Thread:
    def run() -> None:
        try:
            call()
            out[key] = (None, time.monotonic())
        except BaseException as e:  # noqa: BLE001 (the test judges it)
            out[key] = (e, time.monotonic())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _names_usnetd(e: BaseException | None) -> bool:
    return (isinstance(e, ConnectionAbortedError) or getattr(e, "errno", None) == errno.ENETDOWN) and \
        "usnetd" in str(e) and not isinstance(e, ConnectionRefusedError)


def test_usnetd_killed_mid_transfer_then_back(tapd):
    from usnet import socket as us
    from usnet.client import Client

    ls = socket.create_server((tapd.host_ip, 0))
    ls.settimeout(20)
    addr = ls.getsockname()
    s1 = us.create_connection(addr, timeout=None)
    k1, _ = ls.accept()  # never reads: s1's sendall blocks once the windows are full
    s2 = us.create_connection(addr, timeout=None)
    k2, _ = ls.accept()  # never sends: s2's recv blocks
    udp_client = Client.connect(tapd.path)
    u = udp_client.udp_socket("usnet0")
    out: dict = {}
    threads = [_blocked(lambda: s1.sendall(b"z" * 50_000_000), out, "sendall"),
               _blocked(lambda: s2.recv(100), out, "recv"),
               _blocked(lambda: u.recvfrom(None), out, "recvfrom")]
    wait_until(lambda: s1.connection.send_space == 0, 20, "sendall to fill the send buffer")

    killed = tapd.kill()
    for t in threads:
        t.join(5)
    for key in ("sendall", "recv", "recvfrom"):
        assert key in out, f"{key} still blocked 5 s after usnetd died"
        e, when = out[key]
        assert _names_usnetd(e), f"{key}: {e!r}"
        assert when - killed < 1.5, f"{key} failed {when - killed:.2f} s after usnetd died"  # the issue: ~1 s

    raised = None  # UDP sends fail too (the sender notices the hang-up within a fraction of a second)
    until = time.monotonic() + 2
    while raised is None and time.monotonic() < until:
        try:
            u.sendto(b"anyone?", (tapd.host_ip, 9))
        except OSError as e:
            raised = e
        else:
            threading.Event().wait(0.01)
    assert _names_usnetd(raised), repr(raised)

    with pytest.raises(OSError) as ei:  # no daemon: say so, and where, and what to do
        us.create_connection(addr, timeout=5)
    assert ei.value.errno == errno.ENETDOWN and not isinstance(ei.value, ConnectionRefusedError)
    assert f"usnetd is not running at {tapd.path}" in str(ei.value) and "usnet up" in str(ei.value)
    for s in (s1, s2, u, udp_client):
        s.close()
    k1.close()
    k2.close()
    ls.close()

    tapd.start()  # usnetd is back at the same path: the same program's new sockets work
    ls = socket.create_server((tapd.host_ip, 0))
    ls.settimeout(20)
    with ls:
        s3 = us.create_connection(ls.getsockname(), timeout=20)
        k3, _ = ls.accept()
        with s3, k3:
            s3.sendall(b"hello again")
            assert k3.recv(100) == b"hello again"
            k3.sendall(b"welcome back")
            assert s3.recv(100) == b"welcome back"


def test_a_client_without_a_daemon_names_the_path_and_usnet_up(sockdir):
    from usnet.client import Client

    path = str(sockdir / "nobody.sock")
    with pytest.raises(OSError) as ei:
        Client.connect(path)
    assert ei.value.errno == errno.ENETDOWN
    assert not isinstance(ei.value, FileNotFoundError)
    assert f"usnetd is not running at {path}" in str(ei.value) and "usnet up" in str(ei.value)
    assert os.path.exists(str(sockdir))
