"""A blocked socket call pumps its engine itself (usnet.client.engine `pump_wait`, issue 18).

While one call waits, the runner lends it the engine's doorbell: the arrivals of every
connection on that engine (a connector carries all the process's outgoing connections) are
pumped by that thread, and the other waiters hear them through the engine's condition. When it
returns, the runner sleeps on the doorbell again. These tests look for lost wake-ups on both
sides of that hand-over; each wait is bounded by a socket timeout, none by a sleep.
"""

from __future__ import annotations

import threading

import pytest

from usnet import socket as us
from usnet.client import Client
from usnet.client.engine import runner
from usnet.domain.loop import Domain
from usnet.drivers.memwire import MemWire

A_IP, B_IP = "10.9.7.1", "10.9.7.2"
PORT = 8090


@pytest.fixture
def client():
    d = Domain()
    w = MemWire()
    d.add_netif("a", w.a, f"{A_IP}/24")
    d.add_netif("b", w.b, f"{B_IP}/24")
    d.start()
    try:
        yield Client.local(d)
    finally:
        d.stop()


def _pairs(c: Client, n: int) -> tuple[us.socket, list[us.socket], list[us.socket]]:
    srv = us.socket(client=c, netif="b")
    srv.bind(("0.0.0.0", PORT))
    srv.listen()
    srv.settimeout(10)
    outs = [us.create_connection((B_IP, PORT), timeout=10, client=c, netif="a") for _ in range(n)]
    ins = [srv.accept()[0] for _ in range(n)]
    by_port = {s.getpeername()[1]: s for s in ins}
    return srv, outs, [by_port[o.getsockname()[1]] for o in outs]  # ins[i] is outs[i]'s peer


def _recv_in_thread(s: us.socket, got: dict, key: int, started: threading.Barrier | None = None) -> threading.Thread:
    def run() -> None:
        try:
            if started is not None:
                started.wait(10)
            got[key] = s.recv(100)
        except Exception as e:  # reported by the test thread
            got[key] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_blocked_recv_pumps_the_connector_itself(client):
    srv, outs, ins = _pairs(client, 1)
    before = runner().borrows
    got: dict = {}
    t = _recv_in_thread(outs[0], got, 0)
    ins[0].sendall(b"hello")
    t.join(10)
    assert got == {0: b"hello"}
    assert runner().borrows > before  # the recv waited on the lent doorbell, not on the condition
    for s in (*outs, *ins, srv):
        s.close()


def test_waiters_of_one_connector_each_hear_their_data_in_any_order(client):
    """Eight threads block in recv on eight connections of one connector: one of them pumps, the
    others wait on the condition. The data comes for them one by one, the pumper's first or
    last: each recv returns its own, so neither the pumper's pumps nor the runner's after the
    pumper returned (the doorbell given back) miss a waiter."""
    n = 8
    srv, outs, ins = _pairs(client, n)
    for order in (list(range(n)), list(reversed(range(n)))):
        got: dict = {}
        started = threading.Barrier(n + 1)
        threads = [_recv_in_thread(outs[i], got, i, started) for i in range(n)]
        started.wait(10)
        for i in order:
            ins[i].sendall(b"x%d" % i)
            threads[i].join(10)  # the next send only once this one arrived: a waiter at a time returns
            assert got.get(i) == b"x%d" % i, (i, got.get(i))
        for t in threads:
            t.join(10)
        assert got == {i: b"x%d" % i for i in range(n)}
    for s in (*outs, *ins, srv):
        s.close()


def test_a_connection_closed_by_another_thread_wakes_the_pumping_recv(client):
    """The peer's FIN reaches a recv that pumps; and an RST made by another thread's call on a
    sibling connection (a close with unread data) does not leave the pumping recv asleep."""
    srv, outs, ins = _pairs(client, 2)
    got: dict = {}
    t = _recv_in_thread(outs[0], got, 0)
    ins[1].sendall(b"unread")
    outs[1].settimeout(10)
    assert outs[1].recv(1) == b"u"
    outs[1].close()  # data left unread: a RST, sent from this thread while the other pumps
    ins[0].close()  # the FIN the pumping recv waits for
    t.join(10)
    assert got == {0: b""}
    for s in (outs[0], ins[1], srv):
        s.close()


def test_shutdown_rd_by_another_thread_ends_the_pumping_recv(client):
    """As Linux: a recv blocked in one thread returns b"" when another shuts the socket's reading
    down, while the blocked call sleeps on the doorbell (the shutdown rings it; a missed ring
    would cost at most WAIT_SLICE, which a test cannot tell from a prompt wake-up without timing)."""
    srv, outs, ins = _pairs(client, 1)
    before = runner().borrows
    got: dict = {}
    started = threading.Barrier(2)
    t = _recv_in_thread(outs[0], got, 0, started)
    started.wait(10)
    for _ in range(1000):  # until the recv pumps (bounded): a shutdown before it would be no test
        if runner().borrows > before:
            break
        t.join(0.005)
    assert runner().borrows > before
    outs[0].shutdown(us.SHUT_RD)
    t.join(5)
    assert got == {0: b""}
    for s in (*outs, *ins, srv):
        s.close()


def test_the_main_thread_pumps_too_and_a_signal_interrupts_its_wait_cleanly(client):
    """A blocked call of the main thread borrows the doorbell as any other thread's does (its pump
    runs under the engine's lock, which holds signals off in the main thread: usnet.client.sigdefer;
    the sleep lets them through). The alarm interrupts the recv, the doorbell goes back to the
    runner, and the connection carries on. (Every line of such a wait:
    tests/client/test_signal_steps.py.)"""
    import signal

    class Alarm(Exception):
        pass

    def ring(signum, frame):
        raise Alarm()

    srv, outs, ins = _pairs(client, 1)
    before = runner().borrows
    old = signal.signal(signal.SIGALRM, ring)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        outs[0].settimeout(10)
        with pytest.raises(Alarm):
            outs[0].recv(10)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert runner().borrows > before  # it waited on the lent doorbell, pumping itself
    eng = outs[0].engine
    assert eng.pumper is None and eng.error is None and not eng.lock._is_owned()
    ins[0].sendall(b"still")
    assert outs[0].recv(10) == b"still"
    for s in (*outs, *ins, srv):
        s.close()


def test_a_connect_see_the_close_close_exchange_takes_three_segments_each_way(client):
    """The benchmark's connect loop (bench/tcp.py `connect_out_rate`): connect, see the server's
    FIN, close. The close's FIN carries the ACK of the server's FIN (delayed as Linux's tcp_fin
    delays it), so the client sends SYN, ACK, FIN|ACK: three segments, not four, a packet and a
    usnetd turn fewer a connection. Counted at the server, which half-closes to keep its socket."""
    srv, (out,), (conn,) = _pairs(client, 1)
    conn.settimeout(10)
    conn.shutdown(us.SHUT_WR)  # its FIN
    assert out.recv(1) == b""
    assert out.tcp_info()["segs_out"] == 2  # SYN, ACK: the FIN's ACK waits for the close
    out.close()
    assert conn.recv(1) == b""  # the client's FIN came
    assert conn.tcp_info()["segs_in"] == 2  # the handshake's ACK, FIN|ACK (the SYN was the listener's)
    for s in (conn, srv):
        s.close()


def test_a_wait_reads_the_engines_deadline_once_the_one_its_pump_schedules(client):
    """Each sleep of a pumping wait is bounded by the engine's deadline as last scheduled (the
    runner's table), not computed again: the engine works it out once a wait, after its pump,
    for the runner (issue 18: twice before, a tenth of a connect's Python calls in TCP's timers).
    A recv that times out waits several slices here, each one pump."""
    from usnet.client.engine import FlowEngine

    srv, outs, ins = _pairs(client, 1)
    eng = outs[0].engine
    me = threading.get_ident()
    waits = deadlines = 0
    pump_wait, deadline = FlowEngine.pump_wait, FlowEngine.deadline

    def counting_pump_wait(self, left):
        nonlocal waits
        if threading.get_ident() == me:
            waits += 1
        return pump_wait(self, left)

    def counting_deadline(self, now):
        nonlocal deadlines
        if threading.get_ident() == me:  # (the runner's passes compute it too, for their own schedule)
            deadlines += 1
        return deadline(self, now)

    FlowEngine.pump_wait = counting_pump_wait  # type: ignore[method-assign]
    FlowEngine.deadline = counting_deadline  # type: ignore[method-assign]
    try:
        outs[0].settimeout(0.3)
        with pytest.raises(TimeoutError):
            outs[0].recv(10)
    finally:
        FlowEngine.pump_wait = pump_wait  # type: ignore[method-assign]
        FlowEngine.deadline = deadline  # type: ignore[method-assign]
    assert outs[0].engine is eng
    assert waits >= 2  # it waited, pumping (not on the condition)
    assert deadlines == waits, (deadlines, waits)
    for s in (*outs, *ins, srv):
        s.close()
