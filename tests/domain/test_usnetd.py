"""usnetd as a real daemon: clients in separate processes over its SEQPACKET socket."""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import PEERS
from tests.helpers.usnetd import DAEMON, Daemon
from usnet.client import Client
from usnet.client.channel import ChannelDefunct, PeerGone

PEER = PEERS / "pipe_peer.py"
sys.path.insert(0, str(PEERS))
from pipe_peer import message  # noqa: E402


@pytest.fixture
def usnetd(sockdir):
    d = Daemon(str(sockdir / "s.sock"), sockdir / "usnetd.log")
    try:
        yield d
    finally:
        d.stop()


def spawn(role: str, path: str, name: str, *extra: str, ready: bool = True):
    """A pipe_peer.py child connected to usnetd; returns (proc, ready read end or None)."""
    r = w = None
    if ready:
        r, w = os.pipe()
    cmd = [sys.executable, str(PEER), role, "--path", path, "--name", name, *extra]
    if w is not None:
        cmd += ["--ready", str(w)]
    try:
        proc = subprocess.Popen(cmd, pass_fds=(w,) if w is not None else ())
    finally:
        if w is not None:
            os.close(w)
    return proc, r


def wait_ready(proc, r, timeout: float = 15) -> None:
    ok, _, _ = select.select([r], [], [], timeout)
    assert ok, "peer never signalled readiness"
    assert os.read(r, 1) == b"R", f"peer exited early with {proc.poll()}"


def reap(proc, r) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if r is not None:
        os.close(r)


def status(path: str) -> dict:
    with Client.connect(path) as c:
        return c.status()


def roundtrip(tx, rx, data: bytes = b"still served") -> None:
    tx.send_bytes(data)
    assert rx.recv_bytes(timeout=5) == data


# ---------------------------------------------------------------- tests


def test_two_processes_exchange_1000_messages(usnetd):
    me = Client.connect(usnetd.path)
    ch = me.open_pipe("echo")
    proc, r = spawn("echo", usnetd.path, "echo", "--count", "1000")
    try:
        wait_ready(proc, r)  # it has opened its end

        st = status(usnetd.path)
        pids = {s["pid"] for s in st["sessions"]}
        assert {os.getpid(), proc.pid} <= pids  # identities from SO_PEERCRED
        assert len(st["sessions"]) >= 3  # me, the child, this status request
        (pipe,) = [p for p in st["pipes"] if p["name"] == "echo"]
        assert pipe["defunct"] is None
        assert [e["attached"] for e in pipe["ends"]] == [True, True]
        assert pipe["uid"] == os.getuid()

        i = 0
        while i < 1000:
            window = range(i, min(i + 64, 1000))
            for k in window:
                ch.send_bytes(message(k))
            for k in window:
                assert ch.recv_bytes(timeout=10) == message(k), f"echo {k} differs"
            i = window.stop
        assert proc.wait(15) == 0

        st = status(usnetd.path)
        (pipe,) = [p for p in st["pipes"] if p["name"] == "echo"]
        assert pipe["ends"][1]["closed"]
        ch.close()
        assert all(p["name"] != "echo" for p in status(usnetd.path)["pipes"])
    finally:
        reap(proc, r)


def test_sigterm_exits_0_removes_socket_and_defuncts_clients(sockdir):
    d = Daemon(str(sockdir / "s.sock"), sockdir / "usnetd.log")
    try:
        c = Client.connect(d.path)
        a = c.open_pipe("p")
        b = c.open_pipe("p")
        roundtrip(a, b)
        assert os.path.exists(d.path)
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(10) == 0, d.log_text()
        assert not os.path.exists(d.path)
        # the clients are told, not left hanging
        for ch in (a, b):
            with pytest.raises(ChannelDefunct):
                ch.recv(timeout=1)
        with pytest.raises(OSError):
            Client.connect(d.path)
    finally:
        d.stop()


def test_second_daemon_on_same_socket_fails(usnetd):
    second = subprocess.run(DAEMON + ["--socket", usnetd.path], capture_output=True, timeout=30)
    assert second.returncode == 1, second
    assert b"usnetd ready" not in second.stdout
    assert os.path.exists(usnetd.path)
    st = status(usnetd.path)  # the first one is untouched
    assert st["control_errors"] == 0
    assert usnetd.proc.poll() is None


def test_stale_socket_of_a_killed_daemon_is_replaced(sockdir):
    path = str(sockdir / "s.sock")
    first = Daemon(path, sockdir / "1.log")
    first.proc.kill()
    first.proc.wait(5)
    first.stop()
    assert os.path.exists(path)  # SIGKILL left it behind
    second = Daemon(path, sockdir / "2.log")
    try:
        c = Client.connect(path)
        a = c.open_pipe("p")
        b = c.open_pipe("p")
        roundtrip(a, b)
    finally:
        assert second.stop() == 0


def test_sigkill_of_a_client_defuncts_its_pipe_within_a_second(usnetd):
    me = Client.connect(usnetd.path)
    ch = me.open_pipe("victim")
    x = me.open_pipe("bystander")
    y = me.open_pipe("bystander")
    proc, r = spawn("sender", usnetd.path, "victim")
    try:
        wait_ready(proc, r)
        got = ch.recv(timeout=5)  # all published so far; kept
        assert got
        killed = time.monotonic()
        proc.kill()
        assert proc.wait(5) == -9
        deadline = killed + 1.0
        while not ch.defunct:  # woken by the doorbell the defunct rings
            left = deadline - time.monotonic()
            assert left > 0, "pipe not defunct within 1 s of the kill"
            if select.select([ch.fileno()], [], [], min(left, 0.01))[0]:
                ch.drain_doorbell()
        with pytest.raises(PeerGone) as ei:
            ch.recv(timeout=1)
        assert ei.value.errno == errno.EPIPE
        with pytest.raises(PeerGone):
            ch.send(got[:1])

        st = status(usnetd.path)
        assert proc.pid not in {s["pid"] for s in st["sessions"]}
        for p in st["pipes"]:
            if p["name"] == "victim":
                assert p["defunct"] and p["pool"]["held"] == 0 and p["pool"]["in_alloc"] == 0
        roundtrip(x, y)
        roundtrip(y, x)
    finally:
        reap(proc, r)


def test_client_close_ends_its_session_in_usnetd(usnetd):
    """close() ends the control session: usnetd forgets it and its pipe while the process lives on."""
    with Client.connect(usnetd.path) as c:
        c.open_pipe("closing")
        sid = c.session
        assert sid in {s["id"] for s in status(usnetd.path)["sessions"]}
    deadline = time.monotonic() + 5
    while (st := status(usnetd.path)) and sid in {s["id"] for s in st["sessions"]}:
        assert time.monotonic() < deadline, "usnetd never saw the session end"
        time.sleep(0.01)
    assert not st["pipes"]
    ended = [ln for ln in usnetd.log_text().splitlines() if f"session end session={sid} " in ln]
    assert len(ended) == 1 and "how=closed" in ended[0] and " INFO " in ended[0]  # a normal end, said so


def test_daemon_serves_everyone_after_a_crash_and_a_close(usnetd):
    """Regression (was a bug): after a client is killed its pipe is destroyed (fds
    closed); when the survivor then closes its channel UserPipe.destroy() runs again
    and closes the same fd numbers, which by then are other clients' session sockets in
    usnetd (usnet/domain/userpipe.py close_end/destroy)
    """
    me = Client.connect(usnetd.path)
    ch = me.open_pipe("victim")
    proc, r = spawn("sender", usnetd.path, "victim")
    others: list[Client] = []
    try:
        wait_ready(proc, r)
        proc.kill()
        proc.wait(5)
        deadline = time.monotonic() + 2
        while not ch.defunct:
            assert time.monotonic() < deadline
            if select.select([ch.fileno()], [], [], 0.01)[0]:
                ch.drain_doorbell()
        # new clients take the descriptor numbers the dead pipe gave back
        others = [Client.connect(usnetd.path) for _ in range(8)]
        ch.close()
        failures = []
        for i, c in enumerate(others):
            try:
                c.status()
            except OSError as e:
                failures.append((i, repr(e)))
        try:
            status(usnetd.path)
        except OSError as e:
            failures.append(("new", repr(e)))
        assert failures == [], f"{failures}\n{usnetd.log_text()[-2000:]}"
        assert usnetd.proc.poll() is None
    finally:
        reap(proc, r)


def test_cli_without_a_daemon_says_what_to_do_in_one_line(tmp_path, capsys):
    """No usnetd at the socket: one line on stderr naming the path and `usnet up`, no traceback."""
    from usnet.cli.main import main

    path = str(tmp_path / "none.sock")
    for cmd in (["status"], ["flows"]):
        assert main([*cmd, "--socket", path]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and path in err and "usnet up" in err and "Traceback" not in err
