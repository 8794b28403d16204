"""The stack thread's work per event does not grow with the sockets a process has (issue 18).

Counted, not timed: `Runner.pumps` is the number of engine pumps so far. A pass pumps the
engines whose doorbell rang, that were woken, or whose timer is due, so idle sockets cost
nothing per datagram; a runner that pumped every engine on every pass would count at least
one pump per idle socket per datagram.
"""

from __future__ import annotations

import socket

import pytest

import usnet.socket as us
from tests.helpers.util import listen_on_b, memwire_domain
from usnet.client import Client
from usnet.client.engine import runner
from usnet.domain.loop import Domain
from usnet.drivers.memwire import MemWire

ROUNDS = 40


@pytest.fixture
def dom():
    d = Domain()
    w = MemWire()
    d.add_netif("a", w.a, "10.9.0.2/24")
    d.start()
    us.configure(Client.local(d), "a")
    try:
        yield d
    finally:
        us.configure(None, None)
        d.stop()


def _pumps_per_round(idle: int) -> float:
    """Engine pumps per request/response between two UDP sockets, beside `idle` idle ones."""
    quiet = []
    for _ in range(idle):
        s = us.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("10.9.0.2", 0))
        quiet.append(s)
    a = us.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = us.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for s in (a, b):
            s.bind(("10.9.0.2", 0))
            s.settimeout(10)
        a.sendto(b"warm", b.getsockname())
        b.recvfrom(10)
        before = runner().pumps
        for i in range(ROUNDS):
            a.sendto(b"%d" % i, b.getsockname())
            data, peer = b.recvfrom(10)
            b.sendto(data, peer)
            assert a.recvfrom(10)[0] == b"%d" % i
        return (runner().pumps - before) / ROUNDS
    finally:
        for s in (a, b, *quiet):
            s.close()


def test_idle_sockets_add_no_work_per_datagram(dom):
    few = _pumps_per_round(2)
    many = _pumps_per_round(60)
    # each round is two datagrams: a few pumps each, however many sockets sit idle
    assert many < 12, (few, many)
    assert many <= few + 4, (few, many)


def test_sockets_share_one_key_table_for_their_attributes():
    """A TCP socket's attributes (listener, connector's socket, accepted) stay under 30, so
    CPython 3.11 shares one key table among all sockets' instance dicts: at 30 every socket's
    dict became a table of its own (sys.getsizeof 296 -> 1,584 bytes), 1.3 KB more per open
    connection (`usnet bench scale`'s memory). Rarely set attributes are defaults of the class."""
    with memwire_domain() as (_d, c):
        srv = listen_on_b(c, 8310, timeout=10)
        cl = us.create_connection(("10.9.0.2", 8310), timeout=10, client=c, netif="a")
        conn, _ = srv.accept()
        for s in (srv, cl, conn):
            assert len(vars(s)) < 30, sorted(vars(s))
        for s in (cl, conn, srv):
            s.close()


def test_a_listeners_readiness_is_recomputed_only_when_its_accept_queue_moves():
    """Every accepted connection shares its listener's engine, so every pump of a request signals
    the listening socket; its readiness depends on the accept queues alone (and the engine's
    error), so it is recomputed only when one moved (`TcpEndpoint.accept_moves`): not once per
    round trip on an accepted connection. Still exact: a new connection makes it readable, an
    accept makes it not."""
    import select

    rounds = 100
    with memwire_domain() as (_d, c):
        srv = listen_on_b(c, 8311, timeout=10)
        srv.fileno()  # selected on: its descriptor is set from now on
        cl = us.create_connection(("10.9.0.2", 8311), timeout=10, client=c, netif="a")
        conn, _ = srv.accept()
        assert select.select([srv], [], [], 0)[0] == []
        computed = [0]
        real = srv._poll_state

        def counting() -> tuple[bool, bool]:
            computed[0] += 1
            return real()

        srv._poll_state = counting
        try:
            for i in range(rounds):
                cl.sendall(b"%d." % i)
                got = b""
                while not got.endswith(b"."):
                    got += conn.recv(100)
                conn.sendall(got)
                back = b""
                while not back.endswith(b"."):
                    back += cl.recv(100)
                assert back == b"%d." % i
            assert computed[0] < rounds // 10, computed[0]
            cl2 = us.create_connection(("10.9.0.2", 8311), timeout=10, client=c, netif="a")
            assert select.select([srv], [], [], 10)[0] == [srv]
            conn2, _ = srv.accept()
            assert select.select([srv], [], [], 0)[0] == []
        finally:
            del srv._poll_state
        for s in (cl, conn, cl2, conn2, srv):
            s.close()
