"""Many connections, one channel (issue 18 item 2), through a TAP in the test's namespace: a process's
outgoing usnet connections share one connector channel, and a kernel listener gets every byte."""

from __future__ import annotations

import hashlib
import socket
import threading

import pytest

from tests.helpers.util import wait_until

pytestmark = pytest.mark.privileged

N = 200


def _serve(ls: socket.socket, n: int, errors: list) -> None:
    """Accept `n` connections; answer each with the SHA-256 of all it sent, then close."""
    def one(k: socket.socket) -> None:
        try:
            with k:
                k.settimeout(30)
                h = hashlib.sha256()
                while chunk := k.recv(65536):
                    h.update(chunk)
                k.sendall(h.digest())
        except OSError as e:
            errors.append(e)

    workers = []
    try:
        for _ in range(n):
            k, _ = ls.accept()
            t = threading.Thread(target=one, args=(k,), daemon=True)
            t.start()
            workers.append(t)
    except OSError as e:
        errors.append(e)
    for t in workers:
        t.join(30)


def _flows(d, ifname: str) -> list[dict]:
    return [f for n in d.status()["netifs"] if n["netif"]["name"] == ifname for f in n["flows"]]


def test_200_connections_to_a_kernel_listener_share_one_channel(tap_domain):
    from usnet import socket as us
    from usnet.client import Client

    d, ifname, _usnet_ip, host_ip = tap_domain
    c = Client.local(d)
    ls = socket.socket()
    ls.bind((host_ip, 0))
    ls.listen(N)
    ls.settimeout(30)
    errors: list = []
    server = threading.Thread(target=_serve, args=(ls, N, errors), daemon=True)
    server.start()
    socks = []
    try:
        for _ in range(N):
            s = us.socket(client=c, netif=ifname)
            s.settimeout(30)
            s.connect(ls.getsockname())
            socks.append(s)
        flows = _flows(d, ifname)
        assert len(flows) == 1, flows  # one channel for all of them
        assert flows[0]["connector"] and flows[0]["connections"] == N
        assert len({s.getsockname()[1] for s in socks}) == N
        payloads = [bytes([i & 0xFF]) * (1000 + 37 * i) + i.to_bytes(4, "big") for i in range(N)]
        for s, p in zip(socks, payloads):
            s.sendall(p)
            s.shutdown(socket.SHUT_WR)
        for i, (s, p) in enumerate(zip(socks, payloads)):
            got = b""
            while len(got) < 32 and (chunk := s.recv(32 - len(got))):
                got += chunk
            assert got == hashlib.sha256(p).digest(), f"connection {i}"
        assert errors == []
        assert _flows(d, ifname)[0]["stats"].get("tx_dropped", 0) == 0
    finally:
        for s in socks:
            s.close()
        server.join(30)
        ls.close()
    # usnet closed first: its connections wait out TIME-WAIT, their ports held as the kernel's are
    held = _flows(d, ifname)[0]["connections"]
    assert held <= N
    # one the kernel closes first ends at once: its 4-tuple and port go back, after its last ACK
    ls = socket.create_server((host_ip, 0))
    ls.settimeout(30)
    try:
        s = us.socket(client=c, netif=ifname)
        s.settimeout(30)
        s.connect(ls.getsockname())
        port = s.getsockname()[1]
        assert _flows(d, ifname)[0]["connections"] >= 1
        k, _ = ls.accept()
        k.close()
        assert s.recv(1) == b""
        s.close()
        wait_until(lambda: d.switches[ifname].ports.owner(6, port) is None, 10, "its port to go back")
        assert all(f["local_port"] != port for f in _flows(d, ifname))
        assert len(_flows(d, ifname)) == 1
    finally:
        ls.close()
