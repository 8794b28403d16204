"""A fault barrier per connection (docs/design-notes.md, "A fault barrier per connection").

One engine carries many connections (a listener's accepted ones, a connector's outgoing ones).
An exception raised in one connection's work (its receive processing, its output, its timers,
or the IP layer refusing its segment: the EMSGSIZE of a segment over the path MTU that took a
`::` listener down) aborts that connection alone, as Linux aborts one: its calls raise
ECONNABORTED with the reason, its peer gets a RST, it leaves the demux and frees its port; the
engine and the other connections go on, and no packet is left held.
"""

from __future__ import annotations

import errno
import logging

import numpy as np
import pytest

from tests.helpers.util import listen_on_b, memwire_domain, wait_until
from usnet import socket as us
from usnet.domain.mem.pool import IN_ALLOC
from usnet.proto.tcp import TcpState

B_IP = {4: "10.9.0.2", 6: "fd00:9::2"}
PORT = 8093
N = 3
VICTIM = 1


@pytest.fixture
def net():
    with memwire_domain(a6="fd00:9::1/64", b6="fd00:9::2/64") as (d, c):
        yield d, c


def _pairs(c, n: int, family: int):
    if family == 4:
        srv = listen_on_b(c, PORT, timeout=10)
    else:  # a `::` listener, as the one whose engine the EMSGSIZE took down
        srv = us.socket(us.AF_INET6, client=c, netif="b")
        srv.bind(("::", PORT))
        srv.listen(16)
        srv.settimeout(10)
    outs = [us.create_connection((B_IP[family], PORT), timeout=10, client=c, netif="a") for _ in range(n)]
    ins = [srv.accept()[0] for _ in range(n)]
    by_port = {s.getpeername()[1]: s for s in ins}
    ins = [by_port[o.getsockname()[1]] for o in outs]  # ins[i] is outs[i]'s peer
    for s in ins:
        s.settimeout(10)
    return srv, outs, ins


class Injected(RuntimeError):
    """The fault these tests plant in one connection."""


def _inject(conn, site: str) -> None:
    """Make `conn` (that one object) raise in `site`: its class becomes a subclass that does."""
    base = type(conn)
    if site == "oversize":
        # the bug this barrier was built after: segments over the path MTU (EMSGSIZE in the IP layer)
        conn.mss = conn.max_segment = 9000
        return
    if site == "receive":
        def on_segment(self, seg, now, ce=False):
            raise Injected("receive: injected")
        body = {"on_segment": on_segment}
    elif site == "transmit":
        def outgoing(self, now):
            raise Injected("transmit: injected")
        body = {"outgoing": outgoing}
    else:  # timer: a deadline that is due at once, and a timer that raises
        def timeout(self, now=None):
            return 0.0
        def on_timer(self, now):
            raise Injected("timer: injected")
        body = {"timeout": timeout, "on_timer": on_timer}
    conn.__class__ = type("Faulty", (base,), {"__slots__": (), **body})


def _trigger(site: str, victim, peer) -> None:
    if site == "receive":
        peer.sendall(b"ping")  # its segment reaches the faulty connection
    elif site == "oversize":
        victim.send(bytes(20000))  # queued; its segments are too big to wrap
    else:
        victim.send(b"ping")  # touched: its output and its timer are visited


def _until_reset(s) -> bytes:
    """What `s` reads before its connection is reset (its RST must come: a bounded wait)."""
    got = b""
    for _ in range(50):
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            return got
        assert data, "an orderly EOF instead of the RST"
        got += data
    pytest.fail("no RST")


def _in_hand(d, eng) -> int:
    """The packets charged to `eng`'s end of its channel that are neither on its ALLOC ring nor in
    its channel's cache of free ones: those it holds (received and not freed, allocated and not
    sent). At rest, none."""
    role = eng.ch.role
    with eng.lock, d.lock:
        pool = d.channels[eng.ch.id].pipe.pool
        on_ring = int(np.count_nonzero((pool.state == IN_ALLOC) & (pool.owner == role)))
        return pool.held[role] - on_ring - len(eng.ch._cache)


# (family, site): "oversize" over IPv6 alone, as IPv4 fragments a segment over the path MTU (no
# DF on it): no EMSGSIZE there
_SITES = [(f, s) for f in (4, 6) for s in ("receive", "transmit", "timer", "oversize") if (f, s) != (4, "oversize")]


@pytest.mark.parametrize("side", ["listener", "connector"])
@pytest.mark.parametrize(("family", "site"), _SITES)
def test_a_fault_in_one_connection_aborts_it_alone(net, family, side, site, caplog):
    d, c = net
    srv, outs, ins = _pairs(c, N, family)
    mine, peers = (ins, outs) if side == "listener" else (outs, ins)
    victim, vpeer = mine[VICTIM], peers[VICTIM]
    eng = victim._engine
    conn = victim._conn
    key = (conn.remote_addr, conn.remote_port, conn.local_port)
    assert eng.tcp.connections.get(key) is conn
    caplog.set_level(logging.WARNING, logger="usnet.client.engine")
    with eng.lock:
        _inject(conn, site)
    _trigger(site, victim, vpeer)

    # the faulted connection: ECONNABORTED with the reason, once, as Linux reports an aborted
    # connection's error (sock_error); then it is over both ways: EPIPE, EOF
    with pytest.raises(ConnectionAbortedError) as e:
        for _ in range(50):  # (timer: the "ping" may be read back by nobody; bounded)
            victim.recv(100)
    assert e.value.errno == errno.ECONNABORTED
    why = "EMSGSIZE|path MTU|exceeds" if site == "oversize" else "injected"
    assert any(w in str(e.value) for w in why.split("|")), str(e.value)
    with pytest.raises(BrokenPipeError):
        victim.send(b"more")
    assert victim.recv(100) == b""
    assert conn.state is TcpState.CLOSED
    # its peer was reset (RST), not left waiting
    _until_reset(vpeer)
    # out of the demux, counted, logged once
    assert key not in eng.tcp.connections
    assert eng.tcp.stats.conn_faults == 1
    aborted = [r for r in caplog.records if "aborted" in r.getMessage()]
    assert len(aborted) == 1, [r.getMessage() for r in caplog.records]
    if side == "connector":
        assert conn.local_port not in eng.ports.users  # its port is free

    # the engine and the siblings carry on, both ways
    assert eng.error is None and not eng.closed
    for i in range(N):
        if i == VICTIM:
            continue
        mine[i].sendall(b"to %d" % i)
        assert peers[i].recv(100) == b"to %d" % i
        peers[i].sendall(b"from %d" % i)
        assert mine[i].recv(100) == b"from %d" % i
    # and it takes new connections
    new_out = us.create_connection((B_IP[family], PORT), timeout=10, client=c, netif="a")
    new_in, _ = srv.accept()
    new_in.settimeout(10)
    new_out.sendall(b"new")
    assert new_in.recv(10) == b"new"
    if side == "connector":
        assert new_out._engine is eng
    else:
        assert new_in._engine is eng
    # nothing leaks: once the traffic is over, no packet of the engine's pool is held by anyone
    wait_until(lambda: _in_hand(d, eng) == 0, 5.0, "the engine's packets to come back")
    with d.lock:
        d.channels[eng.ch.id].pipe.pool.check()
    assert eng.error is None and not eng._backlog
    for s in (*outs, *ins, new_out, new_in):
        s.close()
    srv.close()


def test_a_fault_on_a_loop_pumped_connection_aborts_it_alone(net):
    """The same under usnet.aio's event loop, which pumps the engines itself (their `driver`): the
    faulted connection's stream raises ECONNABORTED, the server's end of it is reset, the other
    connections on the same (connector) engine still echo, and the loop still pumps that engine."""
    import asyncio

    from usnet import aio

    _d, c = net
    server_saw: dict = {}
    heard: list[asyncio.Event] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("peername")[1]
        try:
            while data := await reader.read(100):
                writer.write(data)
                await writer.drain()
            server_saw[port] = "eof"
        except OSError as exc:
            server_saw[port] = exc
            heard[0].set()
        finally:
            writer.close()
            if len(server_saw) == N:
                heard[1].set()

    async def main() -> None:
        heard.extend((asyncio.Event(), asyncio.Event()))
        server = await aio.start_server(echo, B_IP[4], PORT, client=c, netif="b")
        streams = [await aio.open_connection(B_IP[4], PORT, client=c, netif="a") for _ in range(N)]
        socks = [w.get_extra_info("socket") for _, w in streams]
        ports = [s.getsockname()[1] for s in socks]
        eng = socks[VICTIM].engine
        assert all(s.engine is eng for s in socks) and eng.driver is not None  # one connector, loop-pumped
        conn = socks[VICTIM].connection
        with eng.lock:
            _inject(conn, "receive")
        reader, writer = streams[VICTIM]
        writer.write(b"ping")  # its echo reaches the faulty connection
        with pytest.raises(ConnectionAbortedError, match="injected"):
            await reader.read(100)
        port = ports[VICTIM]
        await asyncio.wait_for(heard[0].wait(), 10)  # the server's end hears the RST
        assert isinstance(server_saw.get(port), ConnectionResetError), server_saw
        for i, (r, w) in enumerate(streams):
            if i != VICTIM:
                w.write(b"still %d" % i)
                assert await r.readexactly(7) == b"still %d" % i
        assert eng.error is None and eng.driver is not None and eng.tcp.stats.conn_faults == 1
        for _, w in streams:
            w.close()
        await asyncio.wait_for(heard[1].wait(), 10)  # every handler is done (the others at EOF)
        assert [server_saw[p] for i, p in enumerate(ports) if i != VICTIM] == ["eof"] * (N - 1)
        server.close()
        await server.wait_closed()

    loop = aio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 30))
    finally:
        loop.close()


def test_a_connection_that_faults_before_it_is_accepted_is_accepted_and_fails_its_first_call(net):
    """As Linux accepts a child reset in its accept queue: accept returns it, its first call says why."""
    _d, c = net
    srv = listen_on_b(c, PORT, timeout=10)
    out = us.create_connection((B_IP[4], PORT), timeout=10, client=c, netif="a")
    eng = srv._engine
    wait = eng.tcp.listeners[PORT].accept_queue
    wait_until(lambda: len(wait) == 1, 5.0, "the handshake's last ACK")
    with eng.lock:
        _inject(wait[0], "receive")
    out.sendall(b"early")
    assert _until_reset(out) == b""
    conn, _ = srv.accept()
    with pytest.raises(ConnectionAbortedError, match="injected"):
        conn.recv(10)
    assert eng.error is None
    for s in (out, conn, srv):
        s.close()
