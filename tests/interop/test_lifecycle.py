"""Issue 16, "Lifecycle: nothing is lost": a usnet program's TCP peers (the kernel's) see what
a kernel program's peers would when it closes, exits, or is killed.

- a program that sends, closes and exits (or exits without closing) delivers every byte and
  its FIN: the stack drains at exit (usnet.client.engine `Runner.drain`);
- SO_LINGER: (1, 0) resets on close, (1, t) makes close wait until the data is acknowledged;
- a program killed with SIGKILL: the domain resets its connections from the sequence state the
  switch last validated (usnet.domain.switch.txguard `TcpSeen`), so the peer's recv fails.

Each test runs in its own network namespace (tap_domain); the child programs reach the
embedded domain over `Domain.socketpair_session()` (tests/peers/tcp_peer.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import struct
import subprocess
import sys
import time

import pytest

from tests.helpers import PEERS
from tests.helpers.util import kernel_server
from tests.peers.tcp_peer import payload

pytestmark = pytest.mark.privileged

PEER = PEERS / "tcp_peer.py"


def _spawn(domain, ifname: str, to: tuple, mode: str, nbytes: int, ready_w: int | None = None) -> subprocess.Popen:
    sock = domain.socketpair_session()
    fds = [sock.fileno()] + ([ready_w] if ready_w is not None else [])
    argv = [sys.executable, str(PEER), "--fd", str(sock.fileno()), "--netif", ifname,
            "--to", f"{to[0]}:{to[1]}", "--bytes", str(nbytes), "--mode", mode]
    if ready_w is not None:
        argv += ["--ready", str(ready_w)]
    try:
        return subprocess.Popen(argv, pass_fds=fds, env={**os.environ, "PYTHONPATH": os.getcwd()})
    finally:
        sock.close()  # only the child holds it: its death is the domain's hang-up


def _read_to_eof(k: socket.socket, _peer) -> dict:
    """Everything until EOF, hashed; a reset is recorded instead of raised."""
    h, n = hashlib.sha256(), 0
    try:
        while b := k.recv(1 << 20):
            h.update(b)
            n += len(b)
    except ConnectionResetError:
        return {"n": n, "reset": True}
    return {"n": n, "digest": h.digest(), "reset": False}


@pytest.mark.parametrize("mode", ["close-exit", "exit"])
def test_every_byte_and_the_fin_arrive_after_the_sender_exits(tap_domain, mode):
    """20 MB sent, then close and exit (or exit alone): the kernel reads all of it, then EOF."""
    d, ifname, _usnet_ip, host_ip = tap_domain
    size = 20_000_000
    with kernel_server(host_ip, _read_to_eof, timeout=60) as (addr, result):
        child = _spawn(d, ifname, addr, mode, size)
        try:
            assert child.wait(60) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert result.get("reset") is False, result
    assert result["n"] == size
    assert result["digest"] == hashlib.sha256(payload(size)).digest()


def _send_then_read_to_end(k: socket.socket, peer) -> dict:
    """Bytes the usnet program will leave unread; then how the connection ended."""
    k.sendall(b"left unread\n")
    try:
        return {"end": "reset" if _read_to_eof(k, peer)["reset"] else "eof"}
    except TimeoutError:
        return {"end": "silence"}


_EXITS = 5


def test_an_exit_with_received_data_unread_resets_as_the_kernel_does(tap_domain):
    """A program that exits with bytes it received unread (no close): its exit resets the
    connection, as the kernel's close of a dying process's socket does (RFC 2525 section 2.17).
    The exit's drain aborted it, but the RST stayed queued: the drain found the connection over
    (CLOSED) and stopped the stack thread, which could end before its next pass sent it; the
    peer heard nothing. Several programs at once, each exit its own race."""
    d, ifname, _usnet_ip, host_ip = tap_domain
    with contextlib.ExitStack() as stack:
        served = [stack.enter_context(kernel_server(host_ip, _send_then_read_to_end, timeout=10))
                  for _ in range(_EXITS)]
        children = [_spawn(d, ifname, addr, "exit-unread", 0) for addr, _ in served]
        try:
            assert [c.wait(30) for c in children] == [0] * _EXITS
        finally:
            for c in children:
                if c.poll() is None:
                    c.kill()
                    c.wait()
    assert [result.get("end") for _, result in served] == ["reset"] * _EXITS


def test_a_killed_sender_s_peer_sees_a_reset(tap_domain):
    """SIGKILL: the domain resets the connection; the kernel peer's recv fails within a bound."""
    d, ifname, _usnet_ip, host_ip = tap_domain
    size = 300_000
    ls = socket.create_server((host_ip, 0))
    ls.settimeout(30)
    ready_r, ready_w = os.pipe()
    child = _spawn(d, ifname, ls.getsockname(), "hold", size, ready_w)
    os.close(ready_w)
    try:
        k, _ = ls.accept()
        k.settimeout(30)
        got = 0
        while got < size:
            b = k.recv(1 << 20)
            assert b, "EOF before the data"
            got += len(b)
        assert select.select([ready_r], [], [], 30)[0] and os.read(ready_r, 1) == b"R"
        killed = time.monotonic()
        child.kill()
        assert child.wait(10) == -9
        k.settimeout(5)
        with pytest.raises(ConnectionResetError):
            k.recv(1)
        assert time.monotonic() - killed < 3  # the bound, generously
        assert sum(sw.counts["tcp_rst_owner_gone"] for sw in d.switches.values()) == 1
        k.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(ready_r)
        ls.close()


def _linger_zero_close(sockmod, host_ip: str, **where) -> dict:
    """Connect, send, set SO_LINGER (1, 0) and close: what the kernel peer sees."""
    with kernel_server(host_ip, _read_to_eof, timeout=20) as (addr, result):
        s = sockmod.create_connection(addr, timeout=20, **where)
        s.sendall(b"x" * 1000)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    return result


def test_so_linger_zero_resets_on_close_as_the_kernel_does(tap_domain):
    from usnet import socket as us
    from usnet.client import Client

    d, ifname, _usnet_ip, host_ip = tap_domain
    kernel = _linger_zero_close(socket, host_ip)
    ours = _linger_zero_close(us, host_ip, client=Client.local(d), netif=ifname)
    assert kernel["reset"] is True
    assert ours["reset"] is True


def test_a_lingering_close_returns_once_the_data_is_acknowledged(tap_domain):
    """SO_LINGER (1, 10): close blocks until the data and FIN are acknowledged (or 10 s)."""
    from usnet import socket as us
    from usnet.client import Client
    from usnet.client.engine import delivered

    d, ifname, _usnet_ip, host_ip = tap_domain
    size = 8_000_000
    data = os.urandom(size)
    with kernel_server(host_ip, _read_to_eof, timeout=30) as (addr, result):
        s = us.create_connection(addr, timeout=30, client=Client.local(d), netif=ifname)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 10))
        assert struct.unpack("ii", s.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)) == (1, 10)
        s.sendall(data)
        conn = s.connection
        s.close()
        assert delivered(conn), conn.state  # at once: close waited for the acknowledgements
        assert conn.error is None
    assert result["n"] == size and result["digest"] == hashlib.sha256(data).digest()
