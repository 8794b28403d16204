"""Many connections, one channel (issue 18 item 2), through a TAP in the test's namespace: a process's
outgoing usnet connections share one connector channel, and a kernel listener gets every byte. Each
connection takes a free port of the connector's blocks: no control message per connect."""

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
        blocks = -(-N // 64)  # blocks of 64 ports, asked for as the connections needed them
        assert flows[0]["connector"] and flows[0]["ports"] == 64 * blocks
        assert d.requests["AddPorts"] == blocks
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
    eng = socks[0].engine
    with eng.lock:
        held = len(eng.ports.users)
    assert held <= N
    # one the kernel closes first ends at once: its port is free again for the next connect
    ls = socket.create_server((host_ip, 0))
    ls.settimeout(30)
    try:
        s = us.socket(client=c, netif=ifname)
        s.settimeout(30)
        s.connect(ls.getsockname())
        port = s.getsockname()[1]
        assert s.engine is eng and port in eng.ports.users
        k, _ = ls.accept()
        k.close()
        assert s.recv(1) == b""
        s.close()
        wait_until(lambda: port not in eng.ports.users, 10, "its port to be free again")
        assert d.switches[ifname].ports.owner(6, port) is not None  # still the connector's block's
        assert len(_flows(d, ifname)) == 1
    finally:
        ls.close()


def test_2000_sequential_connects_send_no_control_message_and_take_few_blocks(tap_domain):
    """Connect, see the kernel's close, close; 2,000 times, one after another (the bench's
    connect_out_rate). The kernel closes first, so each port is free again at once (the
    kernel holds the TIME-WAIT), and the same few blocks serve every connection."""
    from usnet import socket as us
    from usnet.client import Client

    d, ifname, _usnet_ip, host_ip = tap_domain
    c = Client.local(d)
    ls = socket.create_server((host_ip, 0), backlog=128)
    ls.settimeout(30)
    errors: list = []

    def serve() -> None:
        try:
            for _ in range(2000):
                k, _ = ls.accept()
                k.close()
        except OSError as e:
            errors.append(e)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        first = us.socket(client=c, netif=ifname)  # the connector and its first block
        first.settimeout(30)
        first.connect(ls.getsockname())
        assert first.recv(1) == b""
        first.close()
        before = dict(d.requests)
        for i in range(1999):
            s = us.socket(client=c, netif=ifname)
            s.settimeout(30)
            s.connect(ls.getsockname())
            assert s.recv(1) == b"", f"connection {i}"
            s.close()
        asked = {k: v - before.get(k, 0) for k, v in d.requests.items() if v != before.get(k, 0)}
        # no message per connect or per close: at most a block now and then, and a release notice
        # for the ports whose connections are over when a block's free ports run out, or each second
        assert set(asked) <= {"AddPorts", "ReturnPorts", "ReleasePorts"} and asked.get("AddPorts", 0) <= 2, asked
        assert asked.get("ReleasePorts", 0) <= 1999 // 60 + 30, asked
        assert first.engine.ports.requested <= 3
        server.join(30)
        assert errors == []
        assert _flows(d, ifname)[0]["stats"].get("tx_dropped", 0) == 0
    finally:
        ls.close()
