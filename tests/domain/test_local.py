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

import errno
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


WILD = [(us.AF_INET, "0.0.0.0", "127.0.0.1", A4), (us.AF_INET6, "::", "::1", A6)]


@pytest.mark.parametrize("family,wild,loop,own", WILD, ids=["0.0.0.0", "::"])
def test_a_wildcard_listener_is_reached_through_loopback_as_on_linux(local, family, wild, loop, own):
    """Bound to 0.0.0.0 (::), a listener takes connections to 127.0.0.1 (::1) as well as to its
    netif's address, as Linux's does: one accept and one readiness for both; its port is the
    domain's for as long as it lives, on both netifs, and free on both once it is closed."""
    import select

    from tests.helpers.util import wait_until

    def addr(a: str, p: int) -> tuple:
        return (a, p) if family == us.AF_INET else (a, p, 0, 0)

    ls = us.socket(family, client=local.server, netif="a")
    ls.bind(addr(wild, 0))
    ls.listen()
    port = ls.getsockname()[1]
    assert select.select([ls], [], [], 0)[0] == []
    for dst in (loop, own, loop):
        cs = us.socket(family, client=local.client, netif="a")
        cs.settimeout(5)
        cs.connect(addr(dst, port))
        assert select.select([ls], [], [], 5)[0] == [ls]  # readable: accept will not block
        conn, peer = ls.accept()
        assert conn.getsockname()[:2] == (dst, port) and peer[:2] == cs.getsockname()[:2]
        conn.sendall(dst.encode())
        assert cs.recv(100) == dst.encode()
        assert select.select([ls], [], [], 0)[0] == []
        for s in (cs, conn):
            s.close()
    other = us.socket(family, client=local.client, netif="a")
    with pytest.raises(OSError) as e:  # the port is taken on the loopback netif too
        other.bind(addr(loop, port))
    assert e.value.errno == errno.EADDRINUSE
    other.close()
    ls.close()
    # (the client's connector keeps its block of ports: only the listener's port is to go)
    wait_until(lambda: all(k[2] != port for k in local.d.ports.used) and not local.d.ports.sharers, 5,
               "the port given back")
    again = us.socket(family, client=local.server, netif="a")
    again.bind(addr(loop, port))  # free on both netifs once the last holder closed
    again.close()


def test_a_listener_bound_to_its_netifs_address_is_not_reached_through_loopback(local):
    """As Linux: only the wildcard address takes every address's connections."""
    ls = us.socket(us.AF_INET, client=local.server, netif="a")
    ls.bind((A4, 0))
    ls.listen()
    cs = us.socket(us.AF_INET, client=local.client, netif="a")
    cs.settimeout(5)
    with pytest.raises(ConnectionRefusedError):
        cs.connect(("127.0.0.1", ls.getsockname()[1]))
    cs.close()
    ls.close()


def test_a_port_is_shared_only_with_the_sessions_own_listener_on_another_netif(local):
    """OpenFlow.with_channel: a flow of another session, a connected one, or one on the same netif is refused."""
    lsn, _info = local.server.open_flow("a", 6, 0)
    port = _info.local_port
    with pytest.raises(ControlError) as e:
        local.client.open_flow("lo", 6, port, with_channel=lsn.id)  # not the client's channel
    assert e.value.code == "EINVAL"
    with pytest.raises(ControlError):
        local.server.open_flow("a", 6, port, with_channel=lsn.id)  # the same netif
    with pytest.raises(ControlError):
        local.server.open_flow("lo", 6, port + 1 if port < 65535 else port - 1, with_channel=lsn.id)  # another port
    ok, _ = local.server.open_flow("lo", 6, port, with_channel=lsn.id)
    ok.close()
    lsn.close()


def test_an_asyncio_server_on_0_0_0_0_is_reached_through_127_0_0_1(local):
    """usnet.aio's server and sock_accept take the loopback half's connections too."""
    import asyncio

    from usnet import aio

    async def main() -> list[bytes]:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(await r.readexactly(4))
            await w.drain()
            w.close()

        srv = await asyncio.start_server(echo, "0.0.0.0", 0)
        port = srv.sockets[0].getsockname()[1]
        got = []
        async with srv:
            for host in ("127.0.0.1", A4):
                r, w = await asyncio.open_connection(host, port)
                w.write(b"ping")
                got.append(await r.readexactly(4))
                w.close()
        loop = asyncio.get_running_loop()
        ls = us.socket(us.AF_INET)
        ls.bind(("0.0.0.0", 0))
        ls.listen()
        ls.setblocking(False)
        c = us.socket(us.AF_INET)
        c.setblocking(False)
        await loop.sock_connect(c, ("127.0.0.1", ls.getsockname()[1]))
        conn, _ = await asyncio.wait_for(loop.sock_accept(ls), 5)
        got.append(conn.getsockname()[0].encode())
        for s in (conn, c, ls):
            s.close()
        return got

    us.configure(local.server, "a")
    before = asyncio.get_event_loop_policy()
    aio.install()
    try:
        assert asyncio.run(asyncio.wait_for(main(), 10)) == [b"ping", b"ping", b"127.0.0.1"]
    finally:
        asyncio.set_event_loop_policy(before)
        us.configure(None, None)
