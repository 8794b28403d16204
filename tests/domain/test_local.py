"""Local traffic: two usnet applications of one domain reach each other (issue 16, item 3).

Through the netif's own address the flow switch hairpins what one flow sends
to the flow that owns the destination, after checking it as any transmit
(usnet.domain.switch.local); through 127.0.0.1 and ::1 the same happens on
the domain's loopback netif, which has no wire at all (`Domain.add_loopback`).
Nothing of it reaches the device, and a closed local port is refused at
once (a RST, a port unreachable), never left to a timeout.

The two "applications" are two clients of one embedded domain, each with
its own stack (`usnet.socket` with client= and netif=, `Client.udp_socket`).
"""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from usnet import socket as us
from usnet.abi.protocol import ControlError
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.drivers import MemWire

A4, A6 = "10.9.0.1", "fd00:9::1"
FAST = 1.0  # generous bound for "at once": a timeout would be a retransmission (1 s) or more


class Local:
    """One domain: netif "a" on a memwire nobody else is on, and the loopback netif; two clients."""

    def __init__(self) -> None:
        self.d = Domain()
        self.w = MemWire()
        self.sw = self.d.add_netif("a", self.w.a, f"{A4}/24", address6=f"{A6}/64")
        self.lo = self.d.add_loopback()
        self.d.start()
        self.server, self.client = Client.local(self.d), Client.local(self.d)


@pytest.fixture
def local():
    n = Local()
    try:
        yield n
    finally:
        n.d.stop()


PLACES = [("a", A4, us.AF_INET), ("a", A6, us.AF_INET6), ("lo", "127.0.0.1", us.AF_INET), ("lo", "::1", us.AF_INET6)]


@pytest.mark.parametrize("netif,addr,family", PLACES, ids=[p[1] for p in PLACES])
def test_tcp_between_two_applications_of_one_domain(local, netif, addr, family):
    """A listener of one client, a connect from another, 1 MB each way checked by SHA-256."""
    ls = us.socket(family, client=local.server, netif="a")  # bind() to the address picks the netif
    ls.bind((addr, 0) if family == us.AF_INET else (addr, 0, 0, 0))
    ls.listen()
    port = ls.getsockname()[1]
    assert ls.getsockname()[0] == addr
    cs = us.socket(family, client=local.client, netif="a")  # the destination picks lo for loopback
    cs.settimeout(5)
    t0 = time.monotonic()
    cs.connect((addr, port))
    assert time.monotonic() - t0 < FAST
    conn, peer = ls.accept()
    conn.settimeout(10)
    assert peer[:2] == cs.getsockname()[:2] and cs.getpeername()[:2] == (addr, port)
    data = bytes(range(256)) * 4096
    got: list[bytes] = []

    def serve() -> None:  # read it all, then send it all back: each phase one way only
        n = 0
        while n < len(data):
            chunk = conn.recv(65536)
            if not chunk:
                return
            got.append(chunk)
            n += len(chunk)
        conn.sendall(b"".join(got))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    cs.sendall(data)
    back = b""
    while len(back) < len(data):
        chunk = cs.recv(65536)
        assert chunk
        back += chunk
    t.join(10)
    assert hashlib.sha256(b"".join(got)).digest() == hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    for s in (cs, conn, ls):
        s.close()
    sw = local.sw if netif == "a" else local.lo
    assert sw.counts["local_delivered"] > 2 * len(data) // 1500
    assert local.w.a.stats.tx_frames == 0  # nothing went to the wire


@pytest.mark.parametrize("netif,addr,family", PLACES, ids=[p[1] for p in PLACES])
def test_a_connect_to_a_closed_local_port_is_refused_at_once(local, netif, addr, family):
    cs = us.socket(family, client=local.client, netif="a")
    cs.settimeout(10)
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        cs.connect((addr, 7))  # nobody has port 7 anywhere in the domain
    assert time.monotonic() - t0 < FAST  # the switch's RST, hairpinned: no retransmission waited for
    cs.close()
    sw = local.sw if netif == "a" else local.lo
    assert sw.counts["tcp_rst_sent"] == 1


@pytest.mark.parametrize("netif,addr", [("a", A4), ("a", A6), ("lo", "127.0.0.1"), ("lo", "::1")])
def test_udp_between_two_applications_of_one_domain(local, netif, addr):
    fam = 6 if ":" in addr else 4
    s = local.server.udp_socket(netif, 7000, family=fam)
    c = local.client.udp_socket(netif, 0, family=fam)
    c.sendto(b"ping", (addr, 7000))
    data, src = s.recvfrom(timeout=5)
    assert data == b"ping" and src == (addr, c.getsockname()[1])
    s.sendto(b"pong", src)
    assert c.recvfrom(timeout=5) == (b"pong", (addr, 7000))
    s.close()
    c.close()


@pytest.mark.parametrize("netif,addr", [("a", A4), ("lo", "127.0.0.1")])
def test_a_connected_udp_socket_to_a_closed_local_port_is_refused(local, netif, addr):
    c = local.client.udp_socket(netif, 0, remote=(addr, 7))
    c.send(b"anyone?")
    with pytest.raises(ConnectionRefusedError):
        c.recv(timeout=FAST)  # the switch's port unreachable, hairpinned back, as a kernel host's


def test_a_listener_of_the_netif_hears_its_own_address_from_a_flow_of_the_same_client(local):
    """One client talking to itself through the netif's address (a server and its own health check)."""
    ls = us.socket(client=local.server, netif="a")
    ls.bind(("", 0))
    ls.listen()
    cs = us.socket(client=local.server, netif="a")
    cs.settimeout(5)
    cs.connect((A4, ls.getsockname()[1]))
    conn, _ = ls.accept()
    cs.sendall(b"hello")
    conn.settimeout(5)
    assert conn.recv(5) == b"hello"
    for s in (cs, conn, ls):
        s.close()


def test_the_loopback_netif_carries_nothing_but_its_own(local):
    """Anything off the loopback netif is refused at OpenFlow at once (no route), as is a loopback
    address on another netif; the loopback device itself never sends anything."""
    with pytest.raises(ControlError) as e:
        local.client.udp_socket("lo", 0, remote=("10.9.0.5", 9))
    assert e.value.code == "ENETUNREACH"
    with pytest.raises(ControlError) as e:
        local.client.udp_socket("a", 0, remote=("127.0.0.1", 9))
    assert e.value.code == "EADDRNOTAVAIL"
    assert local.lo.netif.driver.stats.tx_frames == 0
    assert not local.lo.drops
