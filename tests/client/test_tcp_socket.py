"""usnet.socket over the flow switch: TCP between two usnet stacks on a memwire, no root.

Server and client are usnet sockets on netifs "b" and "a" of one embedded
domain; the sans-I/O TCP (usnet.proto.tcp) runs in the process's stack
thread. Waiting is by blocking socket calls with timeouts, never sleeps.
"""

from __future__ import annotations

import errno
import hashlib
import os
import selectors
import struct
import threading
from dataclasses import dataclass

import pytest

from usnet import socket as us
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.drivers.fault import FaultInjector
from usnet.drivers.memwire import MemWire

A_IP, B_IP = "10.9.0.1", "10.9.0.2"


@dataclass
class Link:
    """Two netifs of one domain joined by a memwire; `b_rx` puts frames on b's receive side."""

    client: Client
    wire: MemWire
    b_rx: FaultInjector


@pytest.fixture
def link():
    made = []

    def make(**wire_kw) -> Link:
        d = Domain()
        w = MemWire(**wire_kw)
        b_rx = FaultInjector(w.b)
        d.add_netif("a", w.a, f"{A_IP}/24")
        d.add_netif("b", b_rx, f"{B_IP}/24")
        d.start()
        made.append(d)
        return Link(Client.local(d), w, b_rx)

    yield make
    for d in made:
        d.stop()


@pytest.fixture
def net(link):
    return lambda **wire_kw: link(**wire_kw).client


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


@pytest.mark.slow
def test_lossy_reordering_duplicating_link_delivers_20_mb_intact_and_closes_cleanly(net):
    """2 % loss, reordering and duplication: every byte, in order, and both sides see EOF."""
    c = net(loss=0.02, reorder=0.02, duplicate=0.02, delay=0.0005, seed=11)
    down = os.urandom(20_000_000)
    got, results = _exchange(c, b"request", down, timeout=60)
    assert results[0][1] == b"request"
    assert len(got) == 32 + len(down) and got[32:] == down


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


# -- peers that vanish or reset, and segments nobody should have sent ------------------------------


def _pair(c: Client, port: int) -> tuple[us.socket, us.socket, us.socket]:
    """(listener on b, client on a, the accepted connection), blocking with 10 s timeouts."""
    srv = us.socket(client=c, netif="b")
    srv.bind(("0.0.0.0", port))
    srv.listen()
    srv.settimeout(10)
    cl = us.create_connection((B_IP, port), timeout=10, client=c, netif="a")
    conn, _ = srv.accept()
    conn.settimeout(10)
    return srv, cl, conn


@pytest.mark.slow
def test_a_peer_that_vanishes_times_out_with_etimedout(link):
    """The link goes dead mid-connection: RTO back-off, then TimeoutError (ETIMEDOUT) as Linux raises."""
    lk = link()
    srv, cl, conn = _pair(lk.client, 8090)
    cl.setsockopt(us.IPPROTO_TCP, us.TCP_USER_TIMEOUT, 1500)
    assert cl.getsockopt(us.IPPROTO_TCP, us.TCP_USER_TIMEOUT) == 1500
    cl.sendall(b"before")
    assert conn.recv(100) == b"before"
    lk.wire.loss = 1.0  # every frame from here on is lost, both ways
    cl.sendall(b"into the void")
    cl.settimeout(30)  # longer than the user timeout: the error must come from TCP
    with pytest.raises(TimeoutError) as e:
        cl.recv(100)
    assert e.value.errno == errno.ETIMEDOUT
    assert cl._conn.stats.rto_timeouts >= 2  # it backed off and retried before giving up
    with pytest.raises(BrokenPipeError):
        cl.send(b"more")  # the connection stays failed: EPIPE, its error reported once, as Linux's
    for s in (cl, conn, srv):
        s.close()


def test_a_peer_that_resets_raises_connection_reset(net):
    """SO_LINGER {1, 0} then close sends RST; the other side's recv raises ConnectionResetError."""
    c = net()
    srv, cl, conn = _pair(c, 8091)
    conn.setsockopt(us.SOL_SOCKET, us.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    with pytest.raises(ConnectionResetError):
        while cl.recv(100):
            pass
    cl.close()
    srv.close()


def _segment(lk: Link, cport: int, flags: str, seq: int, ack: int, payload: bytes = b"",
             chksum: int | None = None, ts: int | None = None) -> bytes:
    """A TCP segment from the client's address and port to the server, built by scapy."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    opts = [("Timestamp", (ts, 0))] if ts is not None else []
    tcp = TCP(sport=cport, dport=8092, flags=flags, seq=seq % 2**32, ack=ack % 2**32, window=4000,
              options=opts)
    if chksum is not None:
        tcp.chksum = chksum
    return bytes(Ether(src=lk.wire.a.mac, dst=lk.wire.b.mac) / IP(src=A_IP, dst=B_IP) / tcp / payload)


def test_injected_rst_syn_and_bad_segments_do_not_break_a_connection(link):
    """RFC 5961 and RFC 9293 cases thrown at an established connection through the real path.

    In-window RST and SYN get a challenge ACK, an out-of-window RST and
    data outside the window are dropped, a bad checksum and truncated or
    garbage headers are counted; the connection carries on. A RST at exactly
    the expected sequence number resets it, as the RFC says it must.
    """
    lk = link()
    srv, cl, conn = _pair(lk.client, 8092)
    cl.sendall(b"hello")
    assert conn.recv(100) == b"hello"
    server = conn._conn
    eng = conn._engine
    cport = cl.getsockname()[1]
    with eng.lock:  # the numbers on the wire: the connection keeps them relative to irs and iss
        nxt, una, ts = server.irs + server.rcv_nxt, server.iss + server.snd_nxt, server.ts_recent + 1
    ok = bytes(_segment(lk, cport, "PA", nxt, una, b"X", ts=ts))
    lk.b_rx.inject([
        _segment(lk, cport, "R", nxt + 100, 0),  # in the window, not exact: challenge ACK
        _segment(lk, cport, "R", nxt + 2**30, 0),  # far outside: dropped
        _segment(lk, cport, "S", nxt + 10, 0, ts=ts),  # SYN in a synchronised state: challenge ACK
        _segment(lk, cport, "PA", nxt + 2**30, una, b"Y" * 100, ts=ts),  # data outside the window
        _segment(lk, cport, "PA", nxt, una, b"Z" * 100, chksum=0x1234, ts=ts),  # bad checksum
        ok[:14 + 20 + 10],  # a truncated TCP header
        ok[:14] + os.urandom(60),  # garbage where the IP header should be
    ])
    with eng.lock:
        challenges, bad_sums = server.stats.challenge_acks, eng.tcp.stats.bad_checksum
    body = os.urandom(200_000)
    cl.sendall(body)  # traffic wakes the domain, which takes the injected frames first
    got = bytearray()
    while len(got) < len(body):
        got += conn.recv(65536)
    assert bytes(got) == body  # none of the above reached the byte stream
    with eng.lock:
        assert server.stats.challenge_acks >= challenges + 2
        assert eng.tcp.stats.bad_checksum >= bad_sums + 1
    conn.sendall(b"still here")
    assert cl.recv(100) == b"still here"
    with eng.lock:
        nxt = server.irs + server.rcv_nxt
    lk.b_rx.inject([_segment(lk, cport, "R", nxt, 0)])  # exact: the connection is reset
    cl.sendall(b"wake")  # may itself be what the RST overtakes: its bytes need not arrive
    with pytest.raises(ConnectionResetError):
        while conn.recv(100):
            pass
    for s in (cl, conn, srv):
        s.close()


def test_an_engine_that_breaks_wakes_its_selectors_and_fails_its_calls(net):
    """A bug in the stack must not leave a socket waiting forever: selectors wake, calls raise."""
    c = net()
    srv, cl, conn = _pair(c, 8093)
    eng = conn._engine

    def broken(*args: object) -> None:
        raise RuntimeError("a bug in the stack")

    with eng.lock:
        eng.tcp.input = broken  # the next segment the listener's engine takes raises
    sel = selectors.DefaultSelector()
    sel.register(conn.fileno(), selectors.EVENT_READ)
    cl.sendall(b"trigger")
    assert sel.select(10), "the socket's fileno never became readable"
    with pytest.raises(OSError) as e:
        conn.recv(100)
    assert e.value.errno == errno.EIO
    for s in (cl, conn, srv):
        s.close()
