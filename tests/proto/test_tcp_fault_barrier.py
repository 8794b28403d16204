"""The fault barrier per connection, sans-I/O (usnet.proto.tcp.fault, `TcpEndpoint.fault`).

Two endpoints joined by test_tcp_connection's simulated link (`Net`), several connections
between them; exceptions planted in some connections (their input, output, timers, deadline)
at random. Property: each faulted connection alone is aborted (ECONNABORTED with the reason,
out of the table, its owner told once, its peer reset), and every other connection delivers
all its data both ways, intact.
"""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.proto.test_tcp_connection import Net
from usnet.proto.tcp import TcpState
from usnet.proto.tcp.fault import abort_faulted
from usnet.proto.wire.tcp import RST, parse_tcp

PORT = 80
SITES = ("receive", "transmit", "timer", "deadline")


class Planted(RuntimeError):
    """The fault planted in a connection."""


def _plant(conn, site: str) -> None:
    """`conn` alone raises in `site` from now on (its class becomes a subclass that does)."""
    if site == "receive":
        def on_segment(self, seg, now, ce=False):
            raise Planted(site)
        body = {"on_segment": on_segment}
    elif site == "transmit":
        def outgoing(self, now):
            raise Planted(site)
        body = {"outgoing": outgoing}
    elif site == "timer":
        def timeout(self, now=None):
            return 0.0  # due at once
        def on_timer(self, now):
            raise Planted(site)
        body = {"timeout": timeout, "on_timer": on_timer}
    else:  # its deadline itself raises (read by the endpoint's schedule and `timeout`)
        def timeout(self, now=None):
            raise Planted(site)
        body = {"timeout": timeout}
    conn.__class__ = type("Planted" + site, (type(conn),), {"__slots__": (), **body})


def _setup(n: int, seed: int = 1):
    net = Net(seed=seed)
    told: dict = {net.a: [], net.b: []}
    forgot: dict = {net.a: [], net.b: []}
    for ep in (net.a, net.b):
        ep.on_fault = lambda c, e, ep=ep: told[ep].append((c, e))
        ep.on_forget = lambda c, ep=ep: forgot[ep].append(c)
    net.b.listen(PORT)
    actives = [net.a.connect(net.B, PORT, net.now) for _ in range(n)]
    net.run(until=lambda: all(c.state is TcpState.ESTABLISHED for c in actives) and
            len(net.b.listeners[PORT].accept_queue) == n, limit=10)
    passives = {c.remote_port: c for c in (net.b.accept(PORT) for _ in range(n))}
    pairs = [(a, passives[a.local_port]) for a in actives]
    return net, pairs, told, forgot


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SITES), st.booleans()), min_size=4, max_size=4),
       st.sets(st.integers(0, 3), min_size=1, max_size=3), st.lists(st.integers(1, 30000), min_size=4, max_size=4))
def test_faults_abort_their_connections_alone(faults, which, sizes):
    net, pairs, told, forgot = _setup(4)
    planted = {}
    for i in which:
        site, on_a = faults[i]
        a, b = pairs[i]
        planted[i] = (a, b) if on_a else (b, a)
        _plant(planted[i][0], site)
    data = [(bytes([i + 1]) * sizes[i], bytes([i + 101]) * sizes[i]) for i in range(4)]
    got = [[b"", b""] for _ in range(4)]
    left = [[d[0], d[1]] for d in data]

    def app() -> None:
        for i, (a, b) in enumerate(pairs):
            for k, (src, dst) in enumerate(((a, b), (b, a))):
                if left[i][k] and src.error is None and src.state is TcpState.ESTABLISHED:
                    n = src.send(left[i][k])
                    left[i][k] = left[i][k][n:]
                got[i][k] += dst.recv()

    net.apps.append(app)

    def done() -> bool:
        for i in range(len(pairs)):
            if i in planted:
                faulty, peer = planted[i]
                if faulty.state is not TcpState.CLOSED or peer.state is not TcpState.CLOSED:
                    return False
            elif got[i] != [data[i][0], data[i][1]]:
                return False
        return True

    net.run(until=done, limit=60)
    for i, (a, b) in enumerate(pairs):
        if i not in planted:
            assert got[i] == [data[i][0], data[i][1]]
            assert a.error is None and b.error is None
            continue
        faulty, peer = planted[i]
        site = faults[i][0]
        ep = net.a if faulty is a else net.b
        assert isinstance(faulty.error, ConnectionAbortedError) and faulty.error.errno == errno.ECONNABORTED
        assert site in str(faulty.error)  # the reason
        key = (faulty.remote_addr, faulty.remote_port, faulty.local_port)
        assert ep.connections.get(key) is not faulty
        assert [c for c, _ in told[ep]].count(faulty) == 1  # told once
        assert type(dict(told[ep])[faulty]) is Planted
        assert faulty in forgot[ep]  # its 4-tuple (and port) free
        assert isinstance(peer.error, ConnectionResetError), peer.error  # its peer was reset
    for ep in (net.a, net.b):
        assert ep.stats.conn_faults == len(told[ep])


def test_a_segment_to_a_connection_that_faults_is_answered_and_the_rst_leaves_at_once():
    """The receive fault: the RST is among the very next `outgoing`, with the faulted
    connection's own sequence number (the peer takes it at once: RFC 5961's exact match)."""
    net, pairs, _, _ = _setup(2)
    a, b = pairs[0]
    _plant(b, "receive")
    a.send(b"x")
    out = net.a.outgoing(net.now)
    for dst, seg, _, _ in out:
        net.b.input(net.A, dst, bytes(seg), net.now)
    segs = [parse_tcp(bytes(s), 0, None, net.B, d) for d, s, _, _ in net.b.outgoing(net.now)]
    rsts = [s for s in segs if s.flags & RST]
    assert len(rsts) == 1 and rsts[0].dport == a.local_port
    assert rsts[0].seq == (a.irs + a.rcv_nxt) & 0xFFFFFFFF
    other_a, other_b = pairs[1]
    other_a.send(b"still")
    net.run(until=lambda: other_b.rcv_queued == 5, limit=5)
    assert other_b.recv() == b"still"


def test_a_fault_before_a_new_connection_is_made_is_the_callers():
    """A segment whose fault no connection owns (the parser, before the demux) is not hidden:
    it goes on up (the engine fails, as before the barrier)."""
    net, _, _, _ = _setup(1)

    def broken(*args, **kw):
        raise Planted("parser")

    import usnet.proto.tcp.endpoint as endpoint

    saved = endpoint.parse_tcp
    endpoint.parse_tcp = broken
    try:
        with pytest.raises(Planted):
            net.b.input(net.A, net.B, b"\0" * 20, net.now)
    finally:
        endpoint.parse_tcp = saved


def test_aborting_twice_keeps_the_first_error_and_sends_one_rst():
    net, pairs, _, _ = _setup(1)
    a, _ = pairs[0]
    assert abort_faulted(a, Planted("first"), net.A) is not None
    assert abort_faulted(a, Planted("second"), net.A) is None
    assert "first" in str(a.error)
