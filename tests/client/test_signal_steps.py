"""A signal handler's exception never lands inside an engine's step (usnet.client.sigdefer, issue 16).

Python runs a signal handler in the main thread between two bytecodes; on the kernel, the code
there is a system call, which completed or was interrupted whole. Here the main thread runs TCP
itself: a send's `kick`, close's FIN, an asyncio loop's pump. Each test sends a signal to the
main thread at every chosen line of that code in turn (a `sys.settrace` hook counts the lines
of usnet's client and TCP code and raises the signal at the k-th: deterministic, no timer), with
a handler that raises. The exception must reach the program, and the connection must stay
whole: each message arrives once, in order, whole (one whose send raised may be missing, as a
kernel send interrupted before it copied anything), and the engine and connection carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.helpers.util import listen_on_b, memwire_domain
from usnet import socket as us
from usnet.client import Client, sigdefer
from usnet.client.engine import FlowEngine

B_IP = "10.9.0.2"  # netif "b" of memwire_domain
WATCHED = ("/usnet/client/", "/usnet/proto/")  # the code a step runs in the main thread
MAX_POINTS = 400  # chosen lines a test sweeps at most (spread over the step when it has more)


class Alarm(Exception):
    """What the handler raises (an Exception, as an alarm handler's usually is: a fault barrier's
    `except Exception` would take it for a fault of the engine's)."""


@pytest.fixture
def client():
    old = signal.signal(signal.SIGUSR1, _raise)
    try:
        with memwire_domain() as (_, c):
            yield c
    finally:
        signal.signal(signal.SIGUSR1, old)


def _raise(signum, frame) -> None:
    raise Alarm()


def _to_this_thread() -> None:
    signal.raise_signal(signal.SIGUSR1)


@contextmanager
def _signal_at(point: int, lock, send: Callable[[], None] = _to_this_thread) -> Iterator[list[int]]:
    """Raise SIGUSR1 in this thread (or `send` it otherwise) at the `point`-th line of usnet's code
    run here with the engine's `lock` held, a step (0: never); yields [lines counted, signals
    raised (0 or 1)].

    (Only in a step, where this thread holds the signals off (`_main.held`): under sys.settrace
    the interpreter looks for due handlers at every line, so anywhere else a handler's exception
    could land where it never does untraced, between a `with` block's last line and its lock's
    __exit__, say. The lock owned is not enough: a look under the plain lock (`EngineLock.plain`,
    usnet.aio's `_ready`) holds nothing off, and a signal raised at its `with`'s exit line left
    the lock taken for good, and the stack thread, waiting for it, stopped every later test.)"""
    seen = [0, 0]

    def local(frame, event, arg):
        if event == "line" and lock._is_owned() and sigdefer._main.held:
            seen[0] += 1
            if seen[0] == point:
                seen[1] += 1
                send()
        return local

    def tracer(frame, event, arg):
        if event == "call" and any(w in frame.f_code.co_filename for w in WATCHED):
            return local(frame, event, arg)
        return None

    sys.settrace(tracer)
    try:
        yield seen
    finally:
        sys.settrace(None)


def _points(step: Callable[[], None], lock) -> list[int]:
    """The lines to raise the signal at: every line `step` runs with `lock` held (counted once), at
    most MAX_POINTS."""
    with _signal_at(0, lock) as seen:
        step()
    n = seen[0]
    assert n > 20, n  # the step ran usnet's code in this thread, or there is nothing to test
    stride = max(1, n // MAX_POINTS)
    return list(range(1, n + 1, stride))


def _pair(c: Client, port: int) -> tuple[us.socket, us.socket, us.socket]:
    srv = listen_on_b(c, port, timeout=10)
    cl = us.create_connection((B_IP, port), timeout=10, client=c, netif="a")
    conn = srv.accept()[0]
    conn.settimeout(10)
    return srv, cl, conn


def _engine_sound(s: us.socket) -> None:
    eng: FlowEngine = s.engine
    assert eng.error is None and not eng._faulted and not eng.lock._is_owned()


class _OwnThread:
    """`_taken_by_a_thread_of_the_programs`'s send (SIGUSR1 unless told), and the wakeup fd's read end."""

    def __init__(self, wakeup: int) -> None:
        self.wakeup = wakeup

    def __call__(self, signum: int = signal.SIGUSR1) -> None:
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) >= {signum}  # this thread holds it off
        os.kill(os.getpid(), signum)
        ready, _, _ = select.select([self.wakeup], [], [], 10)  # bounded
        assert ready, "no thread took the signal"
        assert os.read(self.wakeup, 16) == bytes([signum])  # (the C handler ran, in the other thread)


_SENT = [signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT]  # what `_OwnThread` sends


@contextmanager
def _taken_by_a_thread_of_the_programs() -> Iterator[_OwnThread]:
    """usnet patched (`sigdefer.defer_handlers`), and a thread of the program's own that does not
    block signals; yields a `send` for `_signal_at` that sends SIGUSR1 to the process while this
    thread blocks it, so the kernel gives it to that thread, and returns once the C
    handler has run there (it writes the wakeup fd): CPython's handler is then due in this
    thread, inside the step, at its next bytecode."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    stop = threading.Event()
    idle = threading.Thread(target=stop.wait, args=(120,), daemon=True)  # (our mask now: none blocked)
    idle.start()
    old_fd = signal.set_wakeup_fd(w)
    handler = signal.getsignal(signal.SIGUSR1)
    sigdefer.defer_handlers()
    # Patched, the holds block nothing (the deferral holds the handler off): this thread blocks
    # the signals the tests send itself, so that the kernel gives them to the other thread,
    # whichever line they are sent at.
    signal.pthread_sigmask(signal.SIG_BLOCK, _SENT)

    send = _OwnThread(r)
    try:
        assert signal.getsignal(signal.SIGUSR1) is handler  # the program sees its own handler
        yield send
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SENT)
        sigdefer.undefer_handlers()
        signal.set_wakeup_fd(old_fd)
        stop.set()
        idle.join(10)
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("taker", ["main", "own-thread", "main-patched"])
def test_a_signal_at_any_line_of_a_main_thread_send_reaches_the_program_and_spares_the_connection(client, taker):
    """Sent to the main thread (held off by the mask), or to the process while a thread of the
    program's own does not block it (issue 16: the kernel gives it to that thread, CPython's handler
    comes due in the main thread inside the step, and usnet.patch's deferral runs it at the last
    release), or to the main thread under the patch, whose holds do not block (the deferral holds
    the handler off); each way the exception comes after the step."""
    with contextlib.ExitStack() as stack:
        send = _taker(stack, taker)
        _sweep_sends(client, send)


def _taker(stack: contextlib.ExitStack, taker: str) -> Callable[[], None]:
    """The `send` of a sweep for `taker`: "main" (unpatched, this thread), "own-thread"
    (`_taken_by_a_thread_of_the_programs`) or "main-patched" (`_patched`, this thread)."""
    if taker == "own-thread":
        return stack.enter_context(_taken_by_a_thread_of_the_programs())
    if taker == "main-patched":
        stack.enter_context(_patched())
    return _to_this_thread


@contextmanager
def _patched() -> Iterator[None]:
    """usnet.patch's deferral of the handlers (`sigdefer.defer_handlers`) and nothing else."""
    sigdefer.defer_handlers()
    try:
        yield
    finally:
        sigdefer.undefer_handlers()


def _sweep_sends(client: Client, send: Callable[[], None]) -> None:
    srv, cl, conn = _pair(client, 8201)
    msg = iter(range(1_000_000))
    sent: list[int] = []  # the messages whose send returned
    maybe: set[int] = set()  # those whose send raised: they may or may not have gone
    lock = cl.engine.lock

    def one() -> None:
        i = next(msg)
        cl.sendall(b"%08d" % i)
        sent.append(i)

    points = _points(one, lock)
    raised = fired = 0
    for k in points:
        i = next(msg)
        seen = [0, 0]
        try:
            with _signal_at(k, lock, send) as seen:
                cl.sendall(b"%08d" % i)
            sent.append(i)
        except Alarm:
            raised += 1
            maybe.add(i)
        fired += seen[1]
        _engine_sound(cl)
    i = next(msg)
    cl.sendall(b"%08d" % i)  # and it carries on
    sent.append(i)
    got = _read_numbers(conn, last=i)
    assert got == sorted(got) and len(got) == len(set(got))  # in order, once each
    assert set(sent) <= set(got) <= set(sent) | maybe  # nothing lost but what a raising send may not have sent
    assert raised == fired > len(points) // 2  # every signal reached the program (deferred, never dropped)
    for s in (cl, conn, srv):
        s.close()


def _read_numbers(conn: us.socket, last: int) -> list[int]:
    buf = b""
    got: list[int] = []
    for _ in range(100_000):  # bounded: a message at a time at worst
        while len(buf) >= 8:
            got.append(int(buf[:8]))
            buf = buf[8:]
        if got and got[-1] == last:
            return got
        chunk = conn.recv(65536)
        assert chunk, f"EOF before message {last}: {got[-5:]}"
        buf += chunk
    raise AssertionError("not all messages arrived")


def test_a_signal_at_any_line_of_a_main_thread_close_leaves_a_whole_close(client):
    """close() sends its FIN from the calling thread: a signal at any line of it reaches the program,
    and the peer still reads the data then EOF (the FIN went, or goes with the stack thread)."""
    port = 8300
    srv, cl, conn = _pair(client, port)
    cl.sendall(b"last words")
    points = _points(cl.close, cl.engine.lock)
    assert conn.recv(100) == b"last words" and conn.recv(100) == b""
    conn.close()
    srv.close()
    raised = fired = 0
    for k in points:
        port += 1
        srv, cl, conn = _pair(client, port)
        cl.sendall(b"last words")
        eng = cl.engine
        seen = [0, 0]
        try:
            with _signal_at(k, eng.lock) as seen:
                cl.close()
        except Alarm:
            raised += 1
        fired += seen[1]
        assert eng.error is None and not eng._faulted
        got = b""
        for _ in range(100):
            chunk = conn.recv(100)
            if not chunk:
                break
            got += chunk
        assert got == b"last words"  # and the FIN: recv returned b""
        if cl.fileno() != -1:  # the signal came before close did anything: close it now
            cl.close()
        conn.close()
        srv.close()
    assert raised == fired > len(points) // 2


class _Collect(asyncio.Protocol):
    """Takes what arrives; `round_trip(i)` sends message i and waits for it to come back."""

    def __init__(self) -> None:
        self.buf = b""
        self.waiting: list[asyncio.Future] = []  # every round trip's (one a signal cut short may still wait)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.wake()

    async def round_trip(self, i: int, reported: list) -> None:
        """Send message i (from the running loop: its engine stays the loop's) and wait until it is
        back, or an exception is reported (what it interrupted may be lost)."""
        self.transport.write(b"<%06d>" % i)
        mark, before = b"<%06d>" % i, len(reported)
        while mark not in self.buf and len(reported) == before:
            f = asyncio.get_running_loop().create_future()
            self.waiting.append(f)
            await asyncio.wait_for(f, 10)

    def wake(self) -> None:
        waiting, self.waiting = self.waiting, []
        for f in waiting:
            if not f.done():
                f.set_result(None)


@pytest.mark.parametrize("patched", [False, True])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, Alarm])
def test_a_signal_at_any_line_of_an_asyncio_loops_step_reaches_the_program_and_spares_the_engine(client, exc, patched):
    """usnet.aio's loop pumps its engines in the loop's thread, here the main one, and the handler
    raises at every line of a step in turn of an echo round trip. asyncio lets only
    KeyboardInterrupt and SystemExit out of a callback, and reports any other exception to its
    exception handler and goes on: each signal's exception reaches `run_until_complete` or that
    handler, the engine is never failed as a broken one (an alarm's exception came out of the
    engine lock's release inside the loop's pump barrier, and failed the engine and every
    connection on it), and the connection carries on. What an interrupted callback had taken may
    be lost, as data asyncio's own transport has read when the interrupt lands; every other
    message comes back once and in order. Patched (`_patched`: the holds do not block, the
    deferral holds the handler off), the same."""
    with contextlib.ExitStack() as stack:
        if patched:
            stack.enter_context(_patched())
        _sweep_loop_steps(client, exc)


def _sweep_loop_steps(client: Client, exc: type[BaseException]) -> None:
    from usnet import aio

    def interrupt(signum, frame):
        raise exc()

    signal.signal(signal.SIGUSR1, interrupt)
    reported: list[BaseException] = []
    srv, cl, conn = _pair(client, 8400)
    echo = threading.Thread(target=_echo, args=(conn,), daemon=True)
    echo.start()
    loop = aio.new_event_loop()
    try:
        _, proto = loop.run_until_complete(loop.create_connection(_Collect, sock=cl))

        def report(loop, ctx) -> None:
            if "future" in ctx:  # a round trip's task the signal ended ("never retrieved"): counted as raised
                return
            reported.append(ctx.get("exception"))  # a loop callback's (asyncio reports it, goes on)
            proto.wake()

        loop.set_exception_handler(report)
        lock = cl.engine.lock
        n = iter(range(1_000_000))
        whole: list[int] = []  # the messages of round trips that were not interrupted

        def one(i: int) -> None:
            loop.run_until_complete(proto.round_trip(i, reported))

        first = next(n)
        points = _points(lambda: one(first), lock)
        whole.append(first)
        raised = fired = 0
        for k in points:
            seen = [0, 0]
            i = next(n)
            before = len(reported)
            try:
                with _signal_at(k, lock) as seen:
                    one(i)
            except exc:
                raised += 1
                # asyncio's, not usnet's: an exception out of run_until_complete just after its
                # task finished leaves that task's done callback (_run_until_complete_cb, which
                # stops the loop) queued, and the next run_until_complete would stop at once
                # ("Event loop stopped before Future completed"). One pass of the loop runs it.
                loop.call_soon(loop.stop)
                loop.run_forever()
            else:
                if len(reported) == before:
                    whole.append(i)
            fired += seen[1]
            assert cl.engine.error is None and not lock._is_owned()  # not failed (`broke`), nothing held
            assert cl.engine.driver is not None  # (the loop's to pump, as this test means)
        last = next(n)
        one(last)  # the connection carries on
        whole.append(last)
        got = [int(m) for m in re.findall(rb"<(\d{6})>", proto.buf)]
        assert got == sorted(got) and len(got) == len(set(got))  # in order, once each
        assert set(whole) <= set(got)
        assert all(isinstance(e, exc) for e in reported)
        assert raised + len(reported) == fired > len(points) // 2
        proto.transport.close()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
        conn.close()
        srv.close()
        echo.join(10)


def _echo(conn: us.socket) -> None:
    try:
        while chunk := conn.recv(65536):
            conn.sendall(chunk)
    except OSError:
        pass


@pytest.mark.parametrize("taker", ["main", "own-thread", "main-patched"])
def test_a_signal_at_any_line_of_a_main_thread_recv_that_pumps_its_engine_spares_the_connection(client, taker):
    """A blocked recv of the main thread pumps its engine itself on the borrowed doorbell (issue 18:
    no hand-off through the stack thread per arrival), so TCP's input runs in the main thread. The
    pump runs under the engine's lock, which holds the signal off; the sleep lets it through. At
    every line of the wait, the peer's message arriving meanwhile: the exception reaches the
    program, the engine is never failed, and every message arrives once and in order (only one
    that a raising recv had taken may be lost, as on the kernel). The signal sent to the main
    thread, or taken by a thread of the program's own (as in the send's sweep)."""
    with contextlib.ExitStack() as stack:
        send = _taker(stack, taker)
        _sweep_pumping_recvs(client, send)


def _sweep_pumping_recvs(client: Client, send: Callable[[], None]) -> None:
    from usnet.client.engine import runner

    srv, cl, conn = _pair(client, 8500)
    conn.setsockopt(us.IPPROTO_TCP, us.TCP_NODELAY, 1)  # the mark after a message goes at once
    eng = cl.engine
    main = threading.get_ident()
    msg = iter(range(1_000_000))
    got: list[int] = []
    borrows_before = runner().borrows

    def send_when_pumping(i: int) -> tuple[threading.Thread, threading.Event]:
        """Message i, sent once the recv sleeps on the lent doorbell (or has returned: a signal
        before the wait ends it early)."""
        def run() -> None:
            for _ in range(2000):  # bounded
                if eng.pumper == main or done.wait(0.001):
                    break
            conn.sendall(b"%08d" % i)

        done = threading.Event()
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t, done

    def one() -> None:
        i = next(msg)
        t, done = send_when_pumping(i)
        data = cl.recv(8)
        done.set()
        t.join(10)
        got.append(int(data))

    points = _points(one, eng.lock)
    assert runner().borrows > borrows_before  # the main thread pumped: this is the case under test
    raised = fired = 0
    last = -1
    for k in points:
        i = last = next(msg)
        t, done = send_when_pumping(i)
        seen = [0, 0]
        try:
            with _signal_at(k, eng.lock, send) as seen:
                data = cl.recv(8)
            got.append(int(data))
        except Alarm:
            raised += 1
            done.set()
            t.join(10)
            # what the raising recv left unread, up to a mark sent after it: each step starts
            # with nothing to read, so it waits and pumps
            conn.sendall(b"--mark--")
            for _ in range(3):  # message i at most, then the mark
                data = cl.recv(8)
                if data == b"--mark--":
                    break
                got.append(int(data))
            else:
                raise AssertionError("the mark did not come")
        done.set()
        t.join(10)
        fired += seen[1]
        _engine_sound(cl)
        assert eng.pumper is None  # the doorbell given back whatever came out of the wait
    assert got == sorted(got) and len(got) == len(set(got))  # in order, once each
    # nothing lost but what a raising recv took (its exception came at the step's end, the
    # oldest unread message taken): at most one each
    assert len(set(range(last + 1)) - set(got)) <= raised
    assert raised == fired > len(points) // 2
    conn.sendall(b"%08d" % (last + 1))  # and it carries on
    cl.settimeout(10)
    assert cl.recv(8) == b"%08d" % (last + 1)
    for s in (cl, conn, srv):
        s.close()


@pytest.mark.parametrize("taker", ["main", "own-thread"])
def test_a_signal_at_any_line_of_a_main_thread_connect_reaches_the_program_and_spares_the_connector(client, taker):
    """A blocking connect through the process's connector is one hold from its port to the end of
    its wait for the handshake (issue 18): the port taken, the connection made and attached, its
    SYN sent, the wait pumping the connector. At every line of it: the exception reaches the
    program (out of the wait's sleep or the call's end, never out of the middle of a section),
    the connector is never failed and no hold or mask is left, and a connect after it works; a
    socket whose connect raised closes cleanly, its port back with the connector's."""
    with contextlib.ExitStack() as stack:
        send = _taker(stack, taker)
        _sweep_connects(client, send)


def _sweep_connects(client: Client, send: Callable[[], None]) -> None:
    srv = listen_on_b(client, 8600, backlog=64, timeout=10)
    stop = threading.Event()

    def accept_all() -> None:  # bounded: each accept by the listener's timeout, the loop by `stop`
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                srv.accept()[0].close()
            except (TimeoutError, OSError):
                pass

    acceptor = threading.Thread(target=accept_all, daemon=True)
    acceptor.start()

    def connect() -> us.socket:
        return us.create_connection((B_IP, 8600), timeout=10, client=client, netif="a")

    first = connect()  # the connector opened, its first block of ports taken: what follows is the common case
    eng: FlowEngine = first.engine
    first.close()
    try:
        points = _points(lambda: connect().close(), eng.lock)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        raised = fired = 0
        for k in points:
            s = us.socket(client=client, netif="a")
            s.settimeout(10)
            seen = [0, 0]
            try:
                with _signal_at(k, eng.lock, send) as seen:
                    s.connect((B_IP, 8600))
            except Alarm:
                raised += 1
            finally:
                s.close()
            fired += seen[1]
            assert eng.error is None and not eng._faulted and not eng.lock._is_owned()
            assert eng.pumper is None and sigdefer._main.held == 0
            assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask  # no hold left its mask
        assert raised == fired > len(points) // 2
        last = connect()  # and it carries on
        assert last.engine is eng
        last.close()
    finally:
        stop.set()
        acceptor.join(10)
        srv.close()


def test_a_blocking_connect_takes_one_hold_and_one_more_a_wait(client):
    """The holds of the main thread's blocking connect (issue 18): one for the call (its port, its
    SYN, its wait), and one taken back after each sleep of the wait, whose pump runs under it; no
    hold of its own for the port or for the SYN. Counted as the outermost holds (`_block`)."""
    srv = listen_on_b(client, 8601, backlog=16, timeout=10)
    s0 = us.create_connection((B_IP, 8601), timeout=10, client=client, netif="a")  # the connector and its ports
    eng: FlowEngine = s0.engine
    s0.close()
    srv.accept()[0].close()
    blocks = waits = 0
    block, pump_wait, cond_wait = sigdefer._block, FlowEngine.pump_wait, eng.changed.wait

    def counting_block(m):
        nonlocal blocks
        blocks += 1
        return block(m)

    def counting_pump_wait(self, left):
        nonlocal waits
        waits += 1
        return pump_wait(self, left)

    def counting_cond_wait(timeout=None):
        nonlocal waits
        waits += 1
        return cond_wait(timeout)

    sigdefer._block = counting_block
    FlowEngine.pump_wait = counting_pump_wait  # type: ignore[method-assign]
    eng.changed.wait = counting_cond_wait  # type: ignore[method-assign]
    try:
        s = us.socket(client=client, netif="a")
        s.settimeout(10)
        s.connect((B_IP, 8601))
    finally:
        sigdefer._block = block
        FlowEngine.pump_wait = pump_wait  # type: ignore[method-assign]
        del eng.changed.wait
    assert s.engine is eng
    assert blocks == 1 + waits, (blocks, waits)
    s.close()
    srv.accept()[0].close()
    srv.close()


def test_every_thread_usnet_brings_blocks_the_asynchronous_signals():
    """A signal sent to the process (setitimer's SIGALRM, a terminal's SIGINT) must wait for the
    main thread while it holds an engine: no thread that usnet or its imports start may take it,
    else CPython runs the handler in the main thread inside the step. numpy's BLAS starts a thread
    as it is imported, with the importer's mask (usnet.runtime.nativethreads): before, it took
    every signal the main thread blocked, and an alarm's exception failed the stack engine. In a
    fresh interpreter, after usnet is imported (numpy with it) and a socket made, every thread but
    the main one blocks SIGALRM, SIGINT and SIGTERM; the main thread blocks none of them."""
    probe = (
        "import os, threading, usnet, usnet.socket as s, numpy\n"
        "s.socket(s.AF_INET, s.SOCK_STREAM).close()\n"
        "main = threading.main_thread().native_id\n"
        "for t in os.listdir('/proc/self/task'):\n"
        "    blk = [l for l in open(f'/proc/self/task/{t}/status') if l.startswith('SigBlk')][0]\n"
        "    print(int(t) == main, int(blk.split()[1], 16))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "USNET_SOCKET": "/nonexistent/usnetd.sock"})
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines()]
    bits = [1 << (int(s) - 1) for s in (signal.SIGALRM, signal.SIGINT, signal.SIGTERM)]
    others = [int(m) for is_main, m in rows if is_main == "False"]
    assert others or os.cpu_count() == 1, "numpy starts a BLAS thread per further core; none seen"
    assert all(m & b for m in others for b in bits), rows
    assert all(not int(m) & b for is_main, m in rows if is_main == "True" for b in bits), rows


# -- the deferral itself (usnet.patch's `defer_handlers`), with no engine: a hold is a `step` ---------


@pytest.fixture
def own_thread():
    """SIGUSR1's handler `_raise`, then `_taken_by_a_thread_of_the_programs`'s send (and the pipe's
    read end, to see what the C handler wrote)."""
    old = signal.signal(signal.SIGUSR1, _raise)
    try:
        with _taken_by_a_thread_of_the_programs() as send:
            yield send
    finally:
        signal.signal(signal.SIGUSR1, old)


def _bytecodes() -> int:
    """Calls and loops: the points where CPython runs the handlers due."""
    return sum(len(str(i)) for i in range(200))


def test_a_handler_another_thread_made_due_inside_a_hold_runs_at_its_end(own_thread):
    """The handler's exception comes out of the hold's end, not out of the code inside it: on the
    kernel the signal would have waited for the main thread's mask (a system call completed)."""
    body_done = False
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with pytest.raises(Alarm), sigdefer.step:
        own_thread()
        _bytecodes()  # (due here; CPython would run it at the first of these)
        body_done = True
    assert body_done and sigdefer._main.held == 0 and not sigdefer._main.deferred
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask  # (as the hold found it)


def test_a_deferred_handler_is_the_one_in_force_at_the_end_and_runs_once(own_thread):
    """Pending twice is pending once (the kernel's standard signals); changed to SIG_IGN meanwhile,
    the pending signal is dropped, as the kernel drops it; a handler that returns runs once."""
    ran: list[int] = []
    signal.signal(signal.SIGUSR1, lambda s, f: ran.append(s))
    with sigdefer.step:
        own_thread()
        _bytecodes()
        own_thread()
        _bytecodes()
        assert ran == []
    assert ran == [signal.SIGUSR1]
    with sigdefer.step:
        own_thread()
        _bytecodes()
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    assert ran == [signal.SIGUSR1]


def test_the_wakeup_fd_hears_a_deferred_signal_once(own_thread):
    """asyncio's add_signal_handler: the C handler writes the signal to the wakeup fd as the other
    thread takes it, and the loop runs the callback from there; the Python handler (a no-op) runs
    at the hold's end. Running it must not send the signal again: the callback would run twice."""
    ran: list[int] = []
    signal.signal(signal.SIGUSR1, lambda s, f: ran.append(s))
    with sigdefer.step:
        own_thread()  # (reads the byte the taking thread wrote)
        _bytecodes()
    assert ran == [signal.SIGUSR1]
    assert select.select([own_thread.wakeup], [], [], 0)[0] == []  # nothing more written


def test_ctrl_c_with_pythons_own_handler_is_deferred_too(own_thread):
    """Python's SIGINT handler, installed before the patch, is deferred as well (wrapped at patch
    time): KeyboardInterrupt comes at the hold's end; `signal.getsignal` still says
    `default_int_handler`, and `signal.signal` returns it."""
    sigdefer.undefer_handlers()
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        sigdefer.defer_handlers()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        body_done = False
        with pytest.raises(KeyboardInterrupt), sigdefer.step:
            own_thread(signal.SIGINT)
            _bytecodes()
            body_done = True
        assert body_done
        assert signal.signal(signal.SIGINT, signal.SIG_IGN) is signal.default_int_handler
        assert signal.signal(signal.SIGINT, signal.default_int_handler) is signal.SIG_IGN
    finally:
        sigdefer.undefer_handlers()
        signal.signal(signal.SIGINT, old)
        sigdefer.defer_handlers()  # (as the fixture left it)


def test_under_the_patch_a_hold_blocks_nothing_and_a_signal_this_thread_takes_waits_for_its_end():
    """Patched, every Python handler is deferred, so an outermost hold needs no `pthread_sigmask`
    (two system calls, a good part of an asyncio request's cost in the main thread): the signal is
    taken by this very thread inside the hold, and its handler still runs at the hold's end. A
    hold blocked before the patch is unblocked at its end; unpatched, the holds block again."""
    calls: list[int] = []
    real = sigdefer._sigmask

    def counting(how, *a):  # type: ignore[no-untyped-def]
        calls.append(how)
        return real(how, *a)

    old = signal.signal(signal.SIGUSR1, _raise)
    sigdefer._sigmask = counting
    try:
        with _patched():
            body_done = False
            with pytest.raises(Alarm), sigdefer.step:
                assert signal.SIGUSR1 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # not blocked
                signal.raise_signal(signal.SIGUSR1)  # (taken here: the C handler runs at once)
                _bytecodes()  # (the Python handler comes due here, and is deferred)
                body_done = True
            assert body_done and calls == [] and not sigdefer._main.deferred
        with pytest.raises(Alarm), sigdefer.step:  # unpatched again: the hold blocks
            assert signal.SIGUSR1 in signal.pthread_sigmask(signal.SIG_BLOCK, [])
            signal.raise_signal(signal.SIGUSR1)  # (pending in the kernel until the hold's end)
            _bytecodes()
        assert calls == [signal.SIG_BLOCK, signal.SIG_SETMASK]
        with pytest.raises(Alarm), sigdefer.step:  # patched inside a blocking hold: unblocked at its end
            sigdefer.defer_handlers()
            signal.raise_signal(signal.SIGUSR1)
            _bytecodes()
        sigdefer.undefer_handlers()
        assert calls == [signal.SIG_BLOCK, signal.SIG_SETMASK] * 2
    finally:
        sigdefer._sigmask = real
        sigdefer.undefer_handlers()
        signal.signal(signal.SIGUSR1, old)
    assert signal.SIGUSR1 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_unpatched_the_handlers_are_the_programs_again(own_thread):
    """`undefer_handlers` (usnet.unpatch) leaves CPython holding the program's own handlers and the
    signal module's own functions."""
    sigdefer.undefer_handlers()
    import _signal

    assert _signal.getsignal(signal.SIGUSR1) is _raise
    assert signal.signal is not sigdefer._signal and signal.getsignal is not sigdefer._getsignal
    sigdefer.defer_handlers()
    assert isinstance(_signal.getsignal(signal.SIGUSR1), sigdefer._Deferring)
    assert signal.getsignal(signal.SIGUSR1) is _raise


def test_a_handler_that_raises_leaves_the_other_deferred_signals_due_not_parked(own_thread):
    """Issue 36's audit: two signals another thread took inside a hold; at its end the first's
    handler raises. The second's handler still runs with no hold to come, as CPython runs a
    second due handler after a first raised (it trips it again): never parked till the program's
    next usnet call (a program that waits for its SIGTERM's flag without usnet would never end)."""
    ran: list[int] = []
    old = signal.signal(signal.SIGUSR2, lambda s, f: ran.append(s))
    try:
        with pytest.raises(Alarm), sigdefer.step:
            own_thread(signal.SIGUSR1)
            own_thread(signal.SIGUSR2)
            _bytecodes()
            assert ran == []
        # pending again in the kernel for this thread, whose own mask (the fixture's) holds it
        # until the program lets it go: then it runs, with no hold to come
        assert signal.SIGUSR2 in signal.sigpending() and ran == []
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR2])
        _bytecodes()  # CPython runs what is due here at the latest
        assert ran == [signal.SIGUSR2]
        assert not sigdefer._main.deferred and sigdefer._main.held == 0
    finally:
        signal.signal(signal.SIGUSR2, old)
