"""The application's work per outgoing connect, counted in calls (issue 18).

A connect's CPU in the application is the number of small Python calls it makes: these tests count
them (`sys.setprofile`, this thread) for the socket layer's own part of a connect, see the peer's
close, close, and check that the parts taken out stay out: the resolver for a literal address,
the `setattr` per counter of a connection's statistics, the selectors module around each blocked call.
"""

from __future__ import annotations

import select
import socket as kernel
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers.util import calls_made, listen_on_b, memwire_domain
from usnet import socket as us
from usnet.abi import ring as ringmod
from usnet.client import Client
from usnet.client import resolver as names
from usnet.client.fdwatch import FdWatch
from usnet.client.socket import _literal_info
from usnet.proto.tcp.config import TcpStats

B_IP = "10.9.0.2"  # netif "b" of tests.helpers.util.memwire_domain
PORT = 8093
# The socket layer's calls for connect + recv of the close + close, outside the waits and pumps
# (which vary with which thread serves an arrival): ~480 before issue 18's work, ~375 after.
SOCKET_LAYER_CALLS = 430


@pytest.fixture
def client() -> Iterator[Client]:
    with memwire_domain() as (_d, c):
        yield c


class _Calls:
    """Python and C calls made in this thread, except inside the frames named in `skip` (and
    whatever they call), and the files whose code ran."""

    def __init__(self, skip: tuple[str, ...] = ()) -> None:
        self.n = 0
        self.files: set[str] = set()
        self._skip, self._inside = skip, None

    def __call__(self, frame, event: str, arg: object) -> None:
        if self._inside is not None:
            if event == "return" and frame is self._inside:
                self._inside = None
            return
        if event == "call":
            self.files.add(frame.f_code.co_filename)
            if frame.f_code.co_name in self._skip:
                self._inside = frame
        if event in ("call", "c_call"):
            self.n += 1


@contextmanager
def _counting(calls: _Calls) -> Iterator[_Calls]:
    sys.setprofile(calls)
    try:
        yield calls
    finally:
        sys.setprofile(None)


def _connect_loop_once(c: Client, srv: us.socket, count: Callable[[], _Calls]) -> int:
    """One turn of bench/tcp.py's connect loop (connect, see the close, close); its calls counted
    outside the waits, the pumps, and the server's accept and close."""
    with _counting(count()) as first:
        out = us.create_connection((B_IP, PORT), timeout=10, client=c, netif="a")
    k, _ = srv.accept()
    k.close()
    with _counting(count()) as second:
        got = out.recv(1)
        out.close()
    assert got == b""
    return first.n + second.n


def test_the_socket_layers_calls_per_connect_stay_few(client):
    """Connect to a literal address, see the peer's close, close: the socket layer's own work (what
    is outside the waits and the engine's pumps) stays under SOCKET_LAYER_CALLS calls."""
    srv = listen_on_b(client, PORT, timeout=10)
    counts = []
    for _ in range(8):  # the first ones make the runner, the connector and its port block
        counts.append(_connect_loop_once(client, srv, lambda: _Calls(skip=("_wait", "pump"))))
    srv.close()
    assert min(counts[3:]) <= max(counts[3:]) < SOCKET_LAYER_CALLS, counts


def test_a_connect_to_a_literal_address_never_enters_the_resolver(client):
    srv = listen_on_b(client, PORT, timeout=10)
    calls = _Calls()
    with _counting(calls):
        out = us.create_connection((B_IP, PORT), timeout=10, client=client, netif="a")
    k, _ = srv.accept()
    assert out.getpeername() == (B_IP, PORT) and k.getpeername() == out.getsockname()
    assert names.__file__ not in calls.files
    for s in (out, k, srv):
        s.close()


@given(st.one_of(st.binary(min_size=4, max_size=4).map(lambda b: kernel.inet_ntop(kernel.AF_INET, b)),
                 st.binary(min_size=16, max_size=16).map(lambda b: kernel.inet_ntop(kernel.AF_INET6, b))),
       st.integers(0, 0xFFFF))
def test_a_literals_addrinfo_is_what_getaddrinfo_gives(host, port):
    """create_connection's short cut gives exactly the resolver's answer, types included."""
    mine = _literal_info(host, port)
    theirs = names.getaddrinfo(host, port, 0, kernel.SOCK_STREAM, resolver=None)  # type: ignore[arg-type]
    assert mine == theirs
    assert [tuple(type(x) for x in t[:3]) for t in mine] == [tuple(type(x) for x in t[:3]) for t in theirs]


@pytest.mark.parametrize("host, port", [("1.2", 80), ("010.1.1.1", 80), ("::FFFF:1.2.3.4", 80),
                                        ("fe80::1%1", 80), ("example.com", 80), ("10.0.0.1", "80"),
                                        ("10.0.0.1", 70000), ("10.0.0.1", True), (b"10.0.0.1", 80)])
def test_anything_but_a_canonical_literal_with_an_int_port_goes_to_getaddrinfo(host, port):
    assert _literal_info(host, port) is None


def test_a_connections_statistics_start_at_zero_without_a_call_per_counter():
    empty, calls = _Calls(), _Calls()
    with _counting(empty):
        pass
    with _counting(calls):
        stats = TcpStats(None)  # type: ignore[arg-type]
    assert calls.n - empty.n == 1  # __init__ alone (it was 35: a setattr per counter)
    assert all(getattr(stats, name) == 0 for name in TcpStats.__slots__[1:])


def test_the_runners_watch_list_reports_data_and_forgets_closed_descriptors():
    w = FdWatch()
    r1, w1 = kernel.socketpair()
    r2, w2 = kernel.socketpair()
    try:
        w.register(r1.fileno(), "one")
        w.register(r2.fileno(), "two")
        with pytest.raises(FileExistsError):
            w.register(r1.fileno(), "again")
        assert w.get(r1.fileno()) == "one" and w.get(99999) is None
        assert w.select(0) == []
        w1.send(b"x")
        assert w.select(1.0) == ["one"]
        assert w.select(None) == ["one"]  # level-triggered: until read
        w.unregister(r1.fileno())
        assert w.select(0) == [] and w.get(r1.fileno()) is None
        with pytest.raises(KeyError):
            w.unregister(r1.fileno())
        fd = r2.fileno()
        r2.close()  # closed while watched: epoll forgot it; unregister says nothing
        w.unregister(fd)
        assert w.get(fd) is None
    finally:
        w.close()
        for s in (r1, w1, r2, w2):
            s.close()
    with pytest.raises((ValueError, OSError)):
        w.register(select.POLLIN, "closed")


def test_a_kick_with_nothing_queued_takes_no_lock(client):
    """Half a connect's kicks (a blocked call's first wait) find nothing to send: they return
    before the engine's lock, whose section is ~5 calls (a signal mask pair in the main thread)."""
    srv = listen_on_b(client, PORT, timeout=10)
    out = us.create_connection((B_IP, PORT), timeout=10, client=client, netif="a")
    k, _ = srv.accept()
    eng = out._engine
    assert eng is not None
    with eng.lock:
        idle = not eng._backlog and not eng.tcp.pending()
    entered: list[str] = []

    def trace(frame, event: str, arg: object) -> None:
        if event == "call":
            entered.append(frame.f_code.co_name)

    sys.setprofile(trace)
    try:
        eng.kick()
    finally:
        sys.setprofile(None)
    assert idle
    assert "acquire" not in entered and "runner" not in entered, entered
    out.sendall(b"x")  # and one with something queued still sends it
    assert k.recv(1) == b"x"
    for s in (out, k, srv):
        s.close()


def test_an_engines_empty_receive_reads_no_clock_and_raises_nothing(client):
    """The engine's receive loop ends on an empty ring at every pump (~3.6 times a connect): that
    last look is a ring read and NEED_WAKEUP armed, not a non-blocking recv that read the clock
    three times and raised BlockingIOError for the loop to catch."""
    srv = listen_on_b(client, PORT, timeout=10)
    out = us.create_connection((B_IP, PORT), timeout=10, client=client, netif="a")
    k, _ = srv.accept()
    eng = out._engine
    assert eng is not None
    rx = eng.ch._rx
    with eng.lock:
        assert rx.available() == 0
        rx.clear_need_wakeup()
        with calls_made() as entered:
            eng._receive(0.0)
        armed = rx.w[ringmod.FLAGS] & ringmod.NEED_WAKEUP
    assert armed  # the domain rings the doorbell for the next packet
    names_entered = {n.rsplit(".", 1)[-1] for n in entered}
    assert "monotonic" not in names_entered and "_recv_wait" not in names_entered, entered
    out.sendall(b"x")  # and the engine still receives
    assert k.recv(1) == b"x"
    k.sendall(b"y")
    assert out.recv(1) == b"y"
    for s in (out, k, srv):
        s.close()


def test_a_blocking_recv_in_the_main_thread_holds_the_signals_off_once(client):
    """A blocking recv in the main thread whose data is there already: its lock section and its
    end (the doorbell given back, the call's count) are one hold of the signals
    (usnet.client.sigdefer), one mask pair, not one for each (issue 18: two of a connect's nine)."""
    srv = listen_on_b(client, PORT, timeout=10)
    out = us.create_connection((B_IP, PORT), timeout=None, client=client, netif="a")
    k, _ = srv.accept()
    k.sendall(b"xy")
    assert out.recv(1) == b"x"  # (the rest is in the connection's buffer now)
    with calls_made() as calls:
        got = out.recv(1)
    assert got == b"y"
    assert calls.count("_block") == 1, calls
    for s in (out, k, srv):
        s.close()
