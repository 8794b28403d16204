"""usnet.socket over the flow switch: TCP between two usnet stacks on a memwire, no root.

Server and client are usnet sockets on netifs "b" and "a" of one embedded
domain; the sans-I/O TCP (usnet.stack.tcp) runs in the process's stack
thread. Waiting is by blocking socket calls with timeouts, never sleeps.
"""

from __future__ import annotations

import hashlib
import os
import selectors
import threading

import pytest

from usnet import socket as us
from usnet.client import Client
from usnet.drivers.memwire import MemWire
from usnet.nexus.domain import Domain

A_IP, B_IP = "10.9.0.1", "10.9.0.2"


@pytest.fixture
def net():
    made = []

    def make(**wire_kw) -> Client:
        d = Domain()
        w = MemWire(**wire_kw)
        d.add_netif("a", w.a, f"{A_IP}/24")
        d.add_netif("b", w.b, f"{B_IP}/24")
        d.start()
        made.append(d)
        return Client.local(d)

    yield make
    for d in made:
        d.stop()


def _read_to_eof(sock: us.socket) -> bytes:
    got = bytearray()
    while b := sock.recv(65536):
        got += b
    return bytes(got)


def _serve(srv: us.socket, payload: bytes, results: list) -> None:
    try:
        conn, addr = srv.accept()
        with conn:
            got = _read_to_eof(conn)
            conn.sendall(hashlib.sha256(got).digest() + payload)
            results.append((addr, got))
    except Exception as e:  # reported by the test thread
        results.append(e)


def _exchange(c: Client, up: bytes, down: bytes, timeout: float = 30) -> tuple[bytes, list]:
    srv = us.socket(client=c, netif="b")
    srv.bind(("0.0.0.0", 8080))
    srv.listen()
    results: list = []
    t = threading.Thread(target=_serve, args=(srv, down, results), daemon=True)
    t.start()
    cl = us.create_connection((B_IP, 8080), timeout=timeout, client=c, netif="a")
    cl.sendall(up)
    cl.shutdown(us.SHUT_WR)
    got = _read_to_eof(cl)
    cl.close()
    t.join(timeout)
    srv.close()
    assert not t.is_alive()
    assert results and not isinstance(results[0], Exception), results
    return got, results


def test_both_ways_digest_checked(net):
    c = net()
    up, down = os.urandom(1_000_000), os.urandom(2_000_000)
    got, results = _exchange(c, up, down)
    (addr, received), = results
    assert received == up and addr[0] == A_IP
    assert got[:32] == hashlib.sha256(up).digest() and got[32:] == down


def test_lossy_reordering_duplicating_link_delivers_intact_and_closes_cleanly(net):
    """2 % loss, reordering and duplication: every byte, in order, and both sides see EOF."""
    c = net(loss=0.02, reorder=0.02, duplicate=0.02, delay=0.0005, seed=11)
    down = os.urandom(3_000_000)
    got, results = _exchange(c, b"request", down, timeout=60)
    assert results[0][1] == b"request"
    assert got[32:] == down


def test_connecting_to_a_port_nobody_listens_on_is_refused(net):
    c = net()
    with pytest.raises(ConnectionRefusedError):
        us.create_connection((B_IP, 9), timeout=10, client=c, netif="a")


def test_non_blocking_accept_and_recv_and_selectors(net):
    c = net()
    srv = us.socket(client=c, netif="b")
    srv.bind(("0.0.0.0", 8081))
    srv.listen()
    srv.setblocking(False)
    with pytest.raises(BlockingIOError):
        srv.accept()
    cl = us.create_connection((B_IP, 8081), timeout=10, client=c, netif="a")
    sel = selectors.DefaultSelector()
    sel.register(srv.fileno(), selectors.EVENT_READ)
    assert sel.select(10), "the listener never became readable"
    conn, _ = srv.accept()
    conn.setblocking(False)
    with pytest.raises(BlockingIOError):
        conn.recv(10)
    sel.unregister(srv.fileno())
    sel.register(conn.fileno(), selectors.EVENT_READ)
    assert cl.send(b"") == 0  # as the standard socket: nothing to send is not a wait
    cl.sendall(b"ping")
    assert sel.select(10)
    assert conn.recv(10) == b"ping"
    conn.settimeout(0.2)
    with pytest.raises(TimeoutError):
        conn.recv(10)
    for s in (cl, conn, srv):
        s.close()


def test_makefile_reads_lines(net):
    c = net()
    srv = us.socket(client=c, netif="b")
    srv.bind(("0.0.0.0", 8082))
    srv.listen()
    cl = us.create_connection((B_IP, 8082), timeout=10, client=c, netif="a")
    conn, _ = srv.accept()
    conn.settimeout(10)
    with cl.makefile("wb") as w:
        w.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    with conn.makefile("rb") as r:
        assert r.readline() == b"GET / HTTP/1.0\r\n"
        assert r.readline() == b"Host: x\r\n"
    for s in (cl, conn, srv):
        s.close()


def test_literal_addresses_only():
    assert us.getaddrinfo("10.1.2.3", 80)[0][4] == ("10.1.2.3", 80)
    with pytest.raises(us.gaierror):
        us.getaddrinfo("example.invalid", 80)
