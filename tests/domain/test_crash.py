"""A client killed (SIGKILL) while it holds packets and is mid-transfer
(docs/architecture.md, "Memory", "Packet pools").

The parent runs the embedded domain and one end of a pipe; the child
(tests/peers/pipe_peer.py) reaches the domain over a socketpair session and
opens the other end. Once the child is killed the domain must notice (its
control socket closes), defunct the pipe, take every packet back, and tell the
survivor PeerGone on its next call, within a second, while other pipes go on.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers import PEERS
from usnet.abi.events import DefunctReason
from usnet.client import Client
from usnet.client.channel import PeerGone
from usnet.domain.loop import Domain

PEER = PEERS / "pipe_peer.py"


@pytest.fixture
def domain():
    d = Domain()
    try:
        yield d
    finally:
        d.stop()


class Peer:
    """A pipe_peer.py child on a socketpair session of `domain`."""

    def __init__(self, domain: Domain, role: str, name: str, *extra: str) -> None:
        sock = domain.socketpair_session()
        self.ready_r, w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, str(PEER), role, "--fd", str(sock.fileno()), "--ready", str(w), "--name", name,
                 *extra],
                pass_fds=(sock.fileno(), w),
            )
        finally:
            sock.close()  # only the child holds it now: its death is our EOF
            os.close(w)

    def wait_ready(self, timeout: float = 10) -> None:
        r, _, _ = select.select([self.ready_r], [], [], timeout)
        assert r, "peer never signalled readiness"
        assert os.read(self.ready_r, 1) == b"R", f"peer exited early with {self.proc.poll()}"

    def kill(self) -> float:
        """SIGKILL and reap; returns the monotonic time of the kill."""
        t = time.monotonic()
        self.proc.kill()
        assert self.proc.wait(5) == -9
        return t

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.ready_r)


def pipe_status(domain: Domain, name: str) -> dict | None:
    for p in domain.status()["pipes"]:
        if p["name"] == name:
            return p
    return None


def wait_reclaimed(domain: Domain, name: str, since: float, within: float = 1.0) -> None:
    """Poll status until the pipe is gone, or defunct with nothing lent out."""
    deadline = since + within
    while True:
        st = pipe_status(domain, name)
        if st is None:
            return
        if st["defunct"] and st["pool"]["held"] == 0 and st["pool"]["in_alloc"] == 0:
            return
        assert time.monotonic() < deadline, f"pipe {name} not reclaimed within {within}s: {st}"
        time.sleep(0.002)


def roundtrip(tx, rx, data: bytes = b"still served") -> None:
    tx.send_bytes(data)
    assert rx.recv_bytes(timeout=2) == data


def assert_all_back(pipe) -> None:
    pipe.pool.check()
    c = pipe.pool.counts()
    assert c["held"] == 0 and c["in_alloc"] == 0, c
    assert pipe.pool.held == [0, 0]


def test_sender_killed_mid_transfer(domain):
    c = Client.local(domain)
    x = c.open_pipe("bystander")
    y = c.open_pipe("bystander")
    rx = c.open_pipe("victim")
    pipe = domain.pipe("victim")
    peer = Peer(domain, "sender", "victim")
    try:
        peer.wait_ready()
        got = rx.recv(timeout=5)  # everything published so far; kept, never freed
        assert got
        st = pipe_status(domain, "victim")
        assert st["ends"][1]["attached"] and st["defunct"] is None
        assert pipe.pool.held[1] > len(got)  # the child holds packets of its own too
        sessions = len(domain.status()["sessions"])

        killed = peer.kill()
        wait_reclaimed(domain, "victim", killed)

        assert pipe.defunct_reason == DefunctReason.OWNER_GONE
        assert_all_back(pipe)
        assert len(domain.status()["sessions"]) == sessions - 1
        with pytest.raises(PeerGone) as ei:
            rx.recv(timeout=1)
        assert ei.value.errno == errno.EPIPE
        with pytest.raises(PeerGone):
            rx.send(got[:1])
        roundtrip(x, y)
        roundtrip(y, x)
    finally:
        peer.cleanup()


def test_receiver_killed_mid_transfer(domain):
    c = Client.local(domain)
    x = c.open_pipe("bystander")
    y = c.open_pipe("bystander")
    tx = c.open_pipe("victim")
    pipe = domain.pipe("victim")
    peer = Peer(domain, "receiver", "victim")
    try:
        first = tx.alloc(64)
        for p in first:
            tx.write(p, b"first")
        assert tx.send(first) == len(first)
        peer.wait_ready()  # it took (and keeps) some of them
        more = tx.alloc(32)
        for p in more:
            tx.write(p, b"more")
        assert tx.send(more) == len(more)  # on the ring, or in the child's hands
        mine = tx.alloc(8)  # and some the parent holds, unsent
        assert pipe.pool.held[0] >= len(first) + len(more) + len(mine)

        killed = peer.kill()
        wait_reclaimed(domain, "victim", killed)

        assert pipe.defunct_reason == DefunctReason.OWNER_GONE
        assert_all_back(pipe)
        with pytest.raises(PeerGone) as ei:
            tx.send(mine)
        assert ei.value.errno == errno.EPIPE
        with pytest.raises(PeerGone):
            tx.recv(timeout=1)
        roundtrip(x, y)
        roundtrip(y, x)
    finally:
        peer.cleanup()


def test_new_pipe_after_crash_works(domain):
    c = Client.local(domain)
    rx = c.open_pipe("victim")
    peer = Peer(domain, "sender", "victim")
    try:
        peer.wait_ready()
        rx.recv(timeout=5)
        wait_reclaimed(domain, "victim", peer.kill())
    finally:
        peer.cleanup()
    with pytest.raises(PeerGone):
        rx.recv(timeout=1)
    rx.close()
    # the name is free again, and a fresh child can use it
    again = c.open_pipe("victim")
    peer = Peer(domain, "sender", "victim")
    try:
        peer.wait_ready()
        got = again.recv(timeout=5)
        assert got and all(len(again.view(p)) == 64 for p in got)
        again.free(got)
    finally:
        peer.cleanup()


def test_survivor_that_saw_more_than_it_took_gets_peergone(domain):
    c = Client.local(domain)
    rx = c.open_pipe("victim")
    pipe = domain.pipe("victim")
    peer = Peer(domain, "sender-block", "victim")
    try:
        peer.wait_ready()
        got = rx.recv(4, timeout=5)  # 32 were published, 4 taken
        assert len(got) == 4 and rx.poll() == 28
        wait_reclaimed(domain, "victim", peer.kill())
        assert_all_back(pipe)
        with pytest.raises(PeerGone):
            more = rx.recv(timeout=1)
            pytest.fail(f"recv after the peer was killed returned {more[:8]}...")
    finally:
        peer.cleanup()


def test_survivor_blocked_in_recv_gets_peergone(domain):
    """Regression (was a bug): Channel._recv_wait calls rx.available() outside the
    RingCorrupt handler: a survivor asleep in recv() when its peer is killed gets
    RingCorrupt, not PeerGone (usnet/client/channel.py _recv_wait)
    """
    c = Client.local(domain)
    rx = c.open_pipe("victim")
    peer = Peer(domain, "sender-block", "victim")
    out: list = []
    t = threading.Thread(target=lambda: out.append(_catch(lambda: rx.recv(timeout=3))))
    try:
        peer.wait_ready()
        assert len(rx.recv(timeout=5)) == 32  # all of it: the ring is empty now
        t.start()
        deadline = time.monotonic() + 2
        while not rx._rx.need_wakeup():  # asleep on its doorbell
            assert time.monotonic() < deadline, "receiver never went to sleep"
            time.sleep(0.001)
        peer.kill()
        t.join(5)
        assert not t.is_alive(), "recv hung"
        assert isinstance(out[0], PeerGone), repr(out[0])
    finally:
        if t.is_alive():
            t.join(5)
        peer.cleanup()


def _catch(fn):
    try:
        return fn()
    except BaseException as e:
        return e


def test_sender_that_exits_normally_leaves_its_messages_to_the_reader(domain):
    """Issue 16: a sender that exits (no close) before its messages are read must not lose them.

    The interpreter's exit closes its client (usnet.client.session), so its pipe end closes
    cleanly: the reader drains every message, then hears PeerGone, as it would after a close.
    """
    from tests.peers.pipe_peer import message

    c = Client.local(domain)
    rx = c.open_pipe("exit-sender", ring_size=256, packets=512)
    peer = Peer(domain, "send-exit", "exit-sender", "--count", "100")
    try:
        assert peer.proc.wait(10) == 0
        for i in range(100):
            assert rx.recv_bytes(timeout=2) == message(i)
        with pytest.raises(PeerGone):
            rx.recv(timeout=1)
        assert domain.pipe("exit-sender").defunct_reason is None  # closed cleanly, not taken back
    finally:
        peer.cleanup()
