"""A usnet listener under a SYN flood and with a full accept queue, through the flow switch (issue 17).

Server and clients are usnet sockets on netifs "b" and "a" of one embedded
domain joined by a memwire (as tests/client/test_tcp_socket.py); spoofed
SYNs, forged by scapy, are put on b's receive side. Waiting is by blocking
socket calls with timeouts or bounded polls of the listener's state.
"""

from __future__ import annotations

import random
import threading

import pytest

from tests.helpers.util import wait_until
from usnet import socket as us
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.drivers.fault import FaultInjector
from usnet.drivers.memwire import MemWire

A_IP, B_IP = "10.9.0.1", "10.9.0.2"


@pytest.fixture
def net():
    made = []

    def make():
        d = Domain()
        w = MemWire()
        b_rx = FaultInjector(w.b)
        d.add_netif("a", w.a, f"{A_IP}/24")
        d.add_netif("b", b_rx, f"{B_IP}/24")
        d.start()
        made.append(d)
        return d, w, b_rx, Client.local(d)

    yield make
    for d in made:
        d.stop()


def _spoofed_syns(w: MemWire, n: int, port: int, seed: int = 7) -> list[bytes]:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        src = f"10.9.0.{rng.randrange(3, 250)}"  # on-link, and nobody there: their SYN-ACKs go nowhere
        out.append(bytes(Ether(src="02:00:00:00:00:42", dst=w.b.mac) / IP(src=src, dst=B_IP)
                         / TCP(sport=rng.randrange(1024, 65536), dport=port, flags="S", seq=rng.getrandbits(32),
                               options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)),
                                        ("NOP", None), ("WScale", 7)])))
    return out


def test_a_client_gets_in_while_the_syn_queue_is_full_of_spoofed_syns(net):
    """300 spoofed SYNs fill the listener's SYN queue (256); a real client's connect succeeds through
    a SYN cookie, and the rebuilt connection kept window scaling and SACK (carried by the timestamp)."""
    d, w, b_rx, c = net()
    srv = us.socket(client=c, netif="b")
    srv.bind(("0.0.0.0", 8200))
    srv.listen()
    srv.settimeout(10)
    lst = srv.engine.tcp.listeners[8200]
    b_rx.inject(_spoofed_syns(w, 300, 8200))
    d.call_soon(lambda: None)  # wake the loop: it takes the injected frames first
    wait_until(lambda: srv.tcp_info()["syncookies_sent"] >= 1, 10, "the SYN queue to fill")
    assert srv.tcp_info()["syn_queue"] == lst.syn_backlog == 256
    cl = us.create_connection((B_IP, 8200), timeout=10, client=c, netif="a")
    conn, _ = srv.accept()
    conn.settimeout(10)
    info = srv.tcp_info()
    assert info["syncookies_recv"] == 1 and info["syncookies_failed"] == 0
    server, client = conn._conn, cl._conn
    assert server.ws_ok and server.snd_wscale == client.rcv_wscale > 0
    assert server.sack_ok and server.ts_ok and client.sack_ok
    body = random.Random(1).randbytes(300_000)
    t = threading.Thread(target=cl.sendall, args=(body,), daemon=True)
    t.start()
    got = bytearray()
    while len(got) < len(body):
        chunk = conn.recv(65536)
        assert chunk
        got += chunk
    t.join(10)
    assert bytes(got) == body
    for s in (cl, conn, srv):
        s.close()


def test_listen_1_with_four_clients_at_once_takes_all_four_once_accepted(net):
    """As Linux: listen(1) holds two; what comes past that (the other clients' last ACKs, or SYNs
    that find the queue full) is dropped, never reset, and each client gets in when the
    application accepts. Every client's request is answered."""
    _d, _w, _b, c = net()
    srv = us.socket(client=c, netif="b")
    srv.bind(("0.0.0.0", 8201))
    srv.listen(1)
    srv.settimeout(20)
    results: dict[int, object] = {}

    def client(i: int) -> None:
        try:
            with us.create_connection((B_IP, 8201), timeout=20, client=c, netif="a") as cl:
                cl.sendall(b"request %d" % i)
                results[i] = cl.recv(100)
        except Exception as e:  # reported below
            results[i] = e

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: srv.tcp_info()["listen_overflows"] >= 2, 10, "the accept queue to overflow")
    assert srv.tcp_info()["accept_queue"] == 2
    for _ in range(4):
        conn, _ = srv.accept()
        conn.settimeout(20)
        with conn:
            conn.sendall(b"answer to " + conn.recv(100))
    for t in threads:
        t.join(20)
    assert results == {i: b"answer to request %d" % i for i in range(4)}  # no ConnectionResetError
    info = srv.tcp_info()
    assert info["resets_sent"] == 0 and info["listen_drops"] == info["listen_overflows"] >= 2
    srv.close()
