"""`usnet.aio`: asyncio streams over usnet TCP, on the running event loop.

    reader, writer = await usnet.aio.open_connection("10.9.0.2", 8080, client=c, netif="a")
    server = await usnet.aio.start_server(handle, port=8080, client=c, netif="b")

The streams are asyncio's own (StreamReader, StreamWriter,
StreamReaderProtocol); only the transport is usnet's, so everything written
against asyncio streams or protocols runs unchanged. TLS is asyncio's too:
`loop.start_tls` puts its SSLProtocol (an `SSLContext.wrap_bio` over memory
BIOs) on top of the usnet transport, so certificate and hostname checks are
exactly the standard library's.

Under usnet's own event loop (`EventLoop`, `install()`) the loop pumps the engines of
its connections itself (`_LoopDriver`: doorbells are loop readers, TCP's timers
`call_at`), so a request crosses no thread in the client. Otherwise the stack runs
in usnet's stack thread (usnet.client.engine), not in the loop, and the
loop learns of new data, free send space, EOF and errors without polling:
each transport registers a watcher with its engine; after every pump the
stack thread asks the watcher whether the loop has anything to do and, if
so, schedules one callback with `call_soon_threadsafe` (never more than one
in flight). Sends and reads take the engine's lock, as the blocking
`usnet.socket` calls do, and wake the stack thread.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import os
import socket as _stdsocket
import ssl as _ssl
import sys
import threading
import time
import weakref
from asyncio import staggered as _staggered
from asyncio import trsock as _trsock
from asyncio.constants import _SendfileMode
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

from usnet.client import socket as _us
from usnet.client.engine import FlowEngine, broke, runner
from usnet.client.sigdefer import step
from usnet.proto.tcp.connection import CLOSED, SYN_SENT

__all__ = ["EventLoop", "EventLoopPolicy", "Server", "UsnetTransport", "create_connection", "create_server",
           "install", "new_event_loop", "open_connection", "start_server"]

log = logging.getLogger(__name__)

_DEFAULT_LIMIT = 2 ** 16  # asyncio.streams' default line/read limit
_HIGH_WATER = 64 * 1024  # asyncio's default write-buffer limits
_READ_MAX = 256 * 1024  # per callback: one busy connection must not keep the loop to itself
_ACCEPT_MAX = 128  # per callback, likewise for a listener with a full accept queue
_LOG_LOST_WRITES = 5  # as asyncio: warn about writes to a lost connection after this many


T = TypeVar("T")
_FAILED = object()  # what _protocol_call returns when the protocol raised
_Writable = bytearray | memoryview  # what a BufferedProtocol's get_buffer hands us, as we use it


def _usable_buffer(proto: asyncio.BufferedProtocol) -> Any:
    # any buffer asyncio allows; sized and writable, as asyncio's own transports take it
    buf = cast(_Writable, proto.get_buffer(-1))
    if not len(buf):
        raise RuntimeError("get_buffer() returned an empty buffer")
    return buf


class _Pumping(threading.local):
    """Per thread: the `_LoopDriver` whose `_serve` this thread is in, else None.

    What the stack's callbacks ask (`_Watcher._signal`, `_read_early`, `_news`, `defer`): "is this
    the loop's own pump?", which was the loop's `_thread_id` against `threading.get_ident()` and
    the loop's driver's `collect`: three C calls a signal, two pumps a request (issue 16). A
    `_serve` runs only in its loop's thread, and `collect`/`later` are set only inside one."""

    driver: _LoopDriver | None = None


_pumping = _Pumping()


class _Watcher:
    """Carries "this flow changed" from the stack thread to the event loop.

    The engine calls `_signal` after every pump of its channel, with its lock
    held, whether or not this connection was touched. `wants` (cheap, run
    under that lock) decides whether the loop has work; the `pending` flag
    keeps a busy stack from queueing more than one callback at a time. A
    wake-up is never lost: the loop side changes what `wants` reads under
    the same lock, and `fire` clears the flag before the callback runs.
    """

    __slots__ = ("loop", "wants", "callback", "pending", "dead", "moved")
    # not signalled after a pump that only sent what its connection's user calls queued
    # (FlowEngine.notify): a send changes nothing `wants` reads (a transport's; a listener's is
    # not a connection's watcher)
    after_send = False

    def __init__(self, loop: asyncio.AbstractEventLoop, wants: Callable[[], Any],
                 callback: Callable[[], None]) -> None:
        self.loop, self.wants, self.callback = loop, wants, callback
        self.pending = False
        self.dead = False
        # a listener's server: called (from any thread) when the socket listens again on a new
        # flow after a usnetd restart (usnet.client.socket.socket._rebind)
        self.moved: Callable[[], None] | None = None

    def _signal(self) -> None:
        if self.pending or self.dead:
            return
        try:
            if not self.wants():
                return
            self.pending = True
            d = _pumping.driver
            if d is not None and d.collect is not None and d.loop is self.loop:
                d.collect.append(self)  # the loop's own pump: run right after it (`_LoopDriver._serve`)
            elif getattr(self.loop, "_thread_id", None) == threading.get_ident():
                self.loop.call_soon(self.fire)  # no self-pipe: we are in the loop's thread
            else:
                self.loop.call_soon_threadsafe(self.fire)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            self.dead = True
        except Exception:  # an exception here would take the whole engine down
            log.exception("usnet.aio watcher failed")
            self.dead = True

    def kick(self) -> None:
        """From the loop: run the callback soon (as if the stack had signalled)."""
        if not self.pending and not self.dead:
            self.pending = True
            self.loop.call_soon(self.fire)

    def fire(self) -> None:
        self.pending = False
        if not self.dead:
            self.callback()


class _LoopDriver:
    """Pumps engines in an `EventLoop`'s own thread, instead of usnet's stack thread.

    Under the stack thread a request crossed threads twice in the client (stack thread to
    the loop by `call_soon_threadsafe`, and back by the runner's eventfd), with a GIL
    hand-over each time. Here each engine's doorbell is a loop reader: a ring drains it and
    pumps the engine at once; what the loop's callbacks queue (writes, window updates) marks
    the engine and one `call_soon` pumps every marked engine once per loop iteration; TCP's
    timers are `call_at`. The runner still watches the client's hang-up (`Runner.lend`).

    An engine goes back to the stack thread for good (`_return`) when a socket call would
    block on it (a blocked caller needs a pump whatever the loop does; every engine of the
    loop when the call blocks the loop's own thread), when it is woken while the loop is not
    running, and when the loop closes.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.engines: set[FlowEngine] = set()
        self._dirty: dict[FlowEngine, None] = {}  # in order; one pump each per iteration
        self._scheduled = False
        self._timers: dict[FlowEngine, asyncio.TimerHandle] = {}
        # while `_serve` pumps: the watchers the pump signalled, run as soon as it is done
        self.collect: list[_Watcher] | None = None
        # while `_serve` runs: the datagram sockets whose descriptor's readiness waits for its end
        # (`defer`)
        self.later: list[Any] | None = None
        self._serving = False

    def adopt(self, eng: FlowEngine) -> None:
        """Pump `eng` in this loop from now on (from the loop's thread; not one that already went back)."""
        if eng.driver is not None or eng.closed or eng.error is not None or eng.pinned:
            return
        runner().lend(eng)
        eng.driver = self
        self.engines.add(eng)
        self.loop.add_reader(eng.fileno(), self._bell, eng)
        self._mark(eng)  # whatever rang before the reader was there

    def wake(self, eng: FlowEngine, wait: bool = False) -> None:
        loop = self.loop
        # (inside our own `_serve`, as a protocol's write from its callback is, the thread is known)
        here = _pumping.driver is self or getattr(loop, "_thread_id", None) == threading.get_ident()
        if here and not wait:
            self._mark(eng)
        elif here:
            # A blocking call in the loop's own thread: the loop pumps nothing until it returns,
            # and what it waits for may need another of its connections (a peer in this very
            # process must acknowledge): every engine of the loop goes back to the stack thread.
            for e in list(self.engines):
                self._return(e)
            self._return(eng)
        elif wait or not loop.is_running():
            self._return(eng)
        else:
            try:
                loop.call_soon_threadsafe(self._mark, eng)
            except RuntimeError:  # closed meanwhile
                self._return(eng)

    def _mark(self, eng: FlowEngine) -> None:
        self._dirty[eng] = None
        if not self._scheduled and not self._serving:  # `_serve` flushes at its end
            self._scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self, drained: FlowEngine | None = None) -> None:
        """Pump every marked engine once. `drained`: an engine pumped earlier in this same loop
        callback (`_serve`), whose receive ended on an empty ring: its pump skips the receive
        (FlowEngine.pump's `receive`)."""
        with step:  # every engine marked is pumped before a signal's exception (usnet.client.sigdefer)
            self._scheduled = False
            dirty, self._dirty = self._dirty, {}
            for eng in dirty:
                self._pump(eng, eng is not drained)

    def _bell(self, eng: FlowEngine) -> None:
        eng.ch.drain_doorbell()  # before the pump: its empty receive re-arms the doorbell
        if eng.driver is not self:
            # It went back to the stack thread (`_return`, from another thread) and our reader is
            # not gone yet (`_drop` comes on a later turn): the ring we just took is the stack
            # thread's, which sleeps on the same doorbell and would not hear it again.
            runner().wake(eng)
            return
        self._serve(eng)

    def defer(self, sock: Any) -> bool:
        """A pump of ours signals datagram socket `sock` (usnet.client.dgram.DatagramFace._signal,
        lock held): whether its descriptor's readiness may wait for the end of this `_serve`
        (`_settle`). The transport reads what the pump queued in the same callback, so a
        readiness set here would be cleared there: a pair of system calls a batch that nobody
        selecting on the descriptor could see but for a moment. Only in the loop's own thread."""
        later = self.later
        if later is None or _pumping.driver is not self:
            return False
        if sock not in later:  # (a socket or two: one per flow this callback pumps)
            later.append(sock)
        return True

    def _settle(self, later: list[Any]) -> None:
        """The readiness `defer` held back, now right (a call that does not change it makes no
        system call); what a signal's exception cut short, on the next turn."""
        for i, sock in enumerate(later):
            try:
                sock._settle()
            except BaseException:
                for rest in later[i:]:
                    self.loop.call_soon(rest._settle)
                raise

    def _timer(self, eng: FlowEngine) -> None:
        self._timers.pop(eng, None)
        self._serve(eng)

    def _serve(self, eng: FlowEngine) -> None:
        """Pump `eng`, run the callbacks of the watchers it signalled at once (the protocols get
        their data), then pump what they wrote: a request and its answer in one loop callback,
        as asyncio's own transports call `data_received` from their reader, instead of three
        loop iterations (pump, callbacks, pump), each with its `select`."""
        if self._serving:  # not re-entered: a callback of ours that ran the loop's machinery
            self._pump(eng)
            return
        self._serving = True
        outer, _pumping.driver = _pumping.driver, self
        self.collect = []
        self.later = []
        fired: list[_Watcher] = []
        try:
            self._pump(eng)
            fired, self.collect = self.collect, None
            fired.reverse()  # (taken from the end: what is left is what did not run)
            while fired:
                try:
                    fired.pop().fire()
                except Exception as exc:  # as the loop would report a failed callback; the rest still run
                    self.loop.call_exception_handler({"message": "usnet.aio watcher callback failed",
                                                      "exception": exc})
        finally:
            # A signal's exception (KeyboardInterrupt; usnet.client.sigdefer lets it out after the
            # pump) cut this turn short: the watchers it had signalled (each `pending`, so signalled
            # never again) run on the next, as a readable descriptor is reported again.
            left = [*reversed(fired), *(self.collect or ())]
            self.collect = None
            later, self.later = self.later, None
            self._serving = False
            _pumping.driver = outer
            for w in left:
                self.loop.call_soon(w.fire)
            if later:
                self._settle(later)
        if self._dirty and not self._scheduled:
            self._flush(eng)

    def _pump(self, eng: FlowEngine, receive: bool = True) -> None:
        """One step for a signal (usnet.client.sigdefer): the pump and what the loop keeps of it (the
        engine's timer, its end), or a signal's exception after the pump leaves it with no timer."""
        with step:
            self._pump_step(eng, receive)

    def _pump_step(self, eng: FlowEngine, receive: bool = True) -> None:
        if eng.driver is not self:
            return
        now = time.monotonic()
        fault: Exception | None = None
        # The barrier inside the lock: a signal handler's exception, held off by the lock until its
        # release (usnet.client.sigdefer), comes out of the `with`, to the program, not to `broke`.
        with eng.lock:
            try:
                eng.pump(now, receive)
                d = eng.deadline(now)
                done = eng.release_when_idle and (eng.idle() or eng.error is not None)
            except Exception as exc:  # as the runner: one broken engine must not stop the loop
                fault = exc
        if fault is not None:
            broke(eng, fault)
            self._drop(eng)
            runner().remove(eng)
            return
        if done:
            self._drop(eng)
            runner().remove(eng)
            eng.close()
            return
        if d is not None:
            h = self._timers.get(eng)
            if h is None or h.when() > d:  # an earlier timer that finds nothing due just re-arms
                if h is not None:
                    h.cancel()
                self._timers[eng] = self.loop.call_at(d, self._timer, eng)

    def _drop(self, eng: FlowEngine, fd: int | None = None) -> None:
        """Stop pumping `eng` here (in the loop's thread, or with the loop not running); `fd`: its
        doorbell's number, taken before it closed (`forget`)."""
        self.engines.discard(eng)
        self._dirty.pop(eng, None)
        h = self._timers.pop(eng, None)
        if h is not None:
            h.cancel()
        if eng.driver is self:
            eng.driver = None
        try:
            self.loop.remove_reader(eng.fileno() if fd is None else fd)
        except (ValueError, OSError, RuntimeError):  # closed loop or descriptor
            pass

    def forget(self, eng: FlowEngine) -> None:
        """`eng` closes (a datagram socket's flow, from any thread): the loop stops watching its
        doorbell, at once in the loop's own thread (the usual case: the transport closes it), so
        that no reader outlives the descriptor."""
        if eng.driver is not self:
            return
        eng.driver = None
        if getattr(self.loop, "_thread_id", None) == threading.get_ident() or not self.loop.is_running():
            self._drop(eng)
            return
        try:
            self.loop.call_soon_threadsafe(self._drop, eng, eng.fileno())
        except RuntimeError:
            pass

    def _return(self, eng: FlowEngine) -> None:
        """Give `eng` back to the stack thread for good; the loop forgets it in its own thread."""
        if eng.driver is not self:
            return
        eng.driver = None
        eng.pinned = True
        runner().add(eng)  # wakes the runner
        if getattr(self.loop, "_thread_id", None) == threading.get_ident() or not self.loop.is_running():
            self._drop(eng)
        else:
            try:
                self.loop.call_soon_threadsafe(self._drop, eng)
            except RuntimeError:
                pass

    def gone(self, eng: FlowEngine) -> None:
        """From the stack thread: `eng`'s domain went away; drop and close it in the loop's thread."""
        def close() -> None:
            self._drop(eng)
            eng.close()
        try:
            self.loop.call_soon_threadsafe(close)
        except RuntimeError:
            close()

    def close(self) -> None:
        """The loop closes: its engines go back to the stack thread."""
        for eng in list(self.engines):
            if eng.driver is self:
                eng.driver = None
                self._drop(eng)
                if not eng.closed:
                    runner().add(eng)


def _drive(loop: asyncio.AbstractEventLoop, eng: FlowEngine) -> None:
    """Under usnet's event loop, the loop pumps `eng` itself (`_LoopDriver`)."""
    d = getattr(loop, "_usnet_driver", None)
    if d is not None:
        d.adopt(eng)


def _accept_waits(engines: tuple[FlowEngine, ...], port: int) -> bool:
    """Whether a connection waits to be accepted on `port` of any of a listener's engines (lock held)."""
    for e in engines:
        lst = e.tcp.listeners.get(port)
        if lst is not None and lst.accept_queue:
            return True
    return False


def _accept_or_moved(sock: _us.socket, eng: FlowEngine, engines: tuple[FlowEngine, ...], port: int) -> bool:
    """`sock_accept`'s wait on `eng` ends: a connection waits, the listener ended or failed, or it
    moved to a new flow (an orphaned listener's failed engine waits for that, usnet.client.rebind)."""
    if sock.engine is not eng:
        return True
    if eng.error is not None:
        return not sock._orphan
    return eng.tcp.listeners.get(port) is None or _accept_waits(engines, port)


def _watch(eng: FlowEngine, w: _Watcher, conn: Any = None, accepts: bool = False) -> None:
    """Signal `w` after the engine's pumps: every pump, or (`conn`) those that reached that
    connection, or (`accepts`) those that moved the accept queues (FlowEngine.watch)."""
    _drive(w.loop, eng)
    with eng.lock:  # the stack thread iterates `watchers` while pumping
        if accepts:  # (a TCP engine's: a datagram engine has no accept queues)
            eng.watch(w, accepts=True)
        else:
            eng.watch(w, conn)
    w.kick()  # whatever happened before it was registered


def _unwatch(eng: FlowEngine, w: _Watcher, conn: Any = None, accepts: bool = False) -> None:
    w.dead = True
    with eng.lock:
        if accepts:
            eng.unwatch(w, accepts=True)
        else:
            eng.unwatch(w, conn)


class UsnetTransport(asyncio.transports._FlowControlMixin):
    """An asyncio transport over one usnet TCP connection.

    Behaves as asyncio's selector socket transport does (buffering, flow
    control, half-close, close after flushing), so asyncio's streams and its
    SSLProtocol (`loop.start_tls`) can sit on top unchanged. A `_FlowControlMixin`,
    as asyncio's own socket transports are, because `loop.sendfile` accepts no
    other; the write flow control itself is this class's.
    """

    _start_tls_compatible = True
    # loop.sendfile: asyncio's fallback (read the file, write it through the transport with its
    # flow control), as for its own SSL transports; there is no kernel socket for os.sendfile
    _sendfile_compatible = _SendfileMode.FALLBACK

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: _us.socket,
                 protocol: asyncio.BaseProtocol | None, *, server: Server | None = None,
                 waiter: asyncio.Future | None = None, notify: bool = True) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname(),
                          "peername": sock.getpeername()}, loop)
        eng, conn = sock.engine, sock.connection
        assert eng is not None and conn is not None, "a connected usnet socket"
        self._loop = loop
        self._sock = sock
        self._eng: FlowEngine = eng
        self._conn = conn
        self._protocol: Any = protocol
        # whether it is a BufferedProtocol, as `set_protocol` keeps it: read twice a request
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._server = server
        self._buffer = bytearray()  # what the TCP send buffer had no room for yet
        self._high, self._low = _HIGH_WATER, _HIGH_WATER // 4
        self._protocol_paused = False
        self._reading_paused = False
        self._closing = False
        self._eof_requested = False  # write_eof() asked; FIN once the buffer drains
        self._eof_seen = False  # the peer's EOF was reported to the protocol
        self._conn_lost = 0  # >0: connection_lost is scheduled; nothing more to report
        self._lost: BaseException | None = None  # what the connection was lost with (`send_error`)
        self._wrote = False  # write() woke the stack since `_pull` began: `_pull` need not
        # (data, more): what the loop's own pump read for `_pull` under its signal hold (`_wants`)
        self._early: tuple[bytes, bool] | None = None
        self._watcher = _Watcher(loop, self._wants, self._ready)
        # Nagle off, as asyncio's own socket transports turn it off (base_events._set_nodelay: for
        # a socket whose proto is IPPROTO_TCP, as create_server's and create_connection's are): a
        # protocol that writes an answer in two parts (the head, then the body) would otherwise
        # wait for the peer's delayed ACK (40 ms on Linux) before the second
        if sock.proto == _us.IPPROTO_TCP:
            sock.setsockopt(_us.IPPROTO_TCP, _us.TCP_NODELAY, 1)
        if server is not None:
            server._attach(self)
        if notify and protocol is not None:
            loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._start, waiter)  # after connection_made: no data before it

    def __repr__(self) -> str:
        state = "closing" if self._closing else "open"
        return f"<UsnetTransport {state} {self.get_extra_info('sockname')}->{self.get_extra_info('peername')}>"

    def _start(self, waiter: asyncio.Future | None) -> None:
        if not self._conn_lost:
            if not self._reading_paused:  # (paused already: the stack keeps it, `pause_reading`)
                with self._eng.lock:
                    # The transport owns the socket: nobody polls its descriptor per pump, so the
                    # stack stops setting its readiness after every pump (two system calls per
                    # request); `_taken` and the end of the stream set it when it matters.
                    self._eng.unwatch(self._sock, self._conn)
            _watch(self._eng, self._watcher, self._conn)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- what the stack thread asks (engine lock held) ----------------------------------------

    def _meets_error(self, c: Any) -> bool:
        """Whether the kernel's transport would meet the connection's error now: with a write to
        do (its send fails), or a read to do that finds nothing before the error (tcp_recvmsg
        gives the queued data first, and after the peer's FIN, EOF: tcp_fin's SOCK_DONE comes
        before sk_err). Paused, past its EOF, or with the data or FIN still to deliver, the
        kernel's selector transport makes no call that would see it."""
        if c.error is None:
            return False
        if self._buffer:
            return True
        if self._reading_paused or self._eof_seen or self._closing:
            return False
        return not c.rcv_queued and self._early is None and not c.fin_received

    def _wants(self) -> bool:
        if self._conn_lost:
            return False
        c = self._conn
        if self._eng.error is not None or (c.error is not None and self._meets_error(c)):
            return True
        if self._buffer and c.send_space:
            return True
        if self._reading_paused or self._eof_seen or self._closing:
            return False
        if self._early is not None:
            return True
        if c.rcv_queued:
            self._read_early(c)
            return True
        return c.eof or c.state is CLOSED

    def _read_early(self, c: Any) -> None:
        """In the loop's own pump (`_LoopDriver._serve`, which runs this watcher's callback right
        after it), read what came, under the pump's signal hold: `_pull` then delivers it with no
        hold of its own, one outermost hold (two system calls in the main thread,
        usnet.client.sigdefer) less a request. Only where `_Watcher._signal` hands the watcher to that
        same `_serve`, and not for a BufferedProtocol (its `get_buffer` is the protocol's code, not
        to be run under the engine's lock). Data read so and never delivered makes the close a RST,
        as unread data does on the kernel (`_call_connection_lost`)."""
        d = _pumping.driver
        if d is None or d.collect is None or d.loop is not self._loop or self._buffered:
            return
        try:
            data = c.recv(_READ_MAX)
        except OSError:  # (none is expected without an error): `_pull`'s own read meets it again
            return
        more = c.readable  # (more data, or the end behind it: `_pull`)
        self._early = (data, more)
        self._taken(more)

    # -- the loop side ------------------------------------------------------------------------

    def _ready(self) -> None:
        if self._conn_lost:
            return
        c = self._conn
        err = self._eng.error or (c.error if c.error is not None and self._meets_error(c) else None)
        if err is not None:
            self._fatal_error(err, "Fatal error on usnet transport")
            return
        pushed = bool(self._buffer)
        if pushed:
            self._push()
        settled = False
        if not (self._conn_lost or self._reading_paused or self._eof_seen or self._closing):
            settled = self._pull()
        if not (self._conn_lost or (settled and not pushed)):
            # The stack signals a connection's watcher only after a pump that reached it
            # (FlowEngine.conn_watchers): what is still to do now (an EOF behind the data
            # just read, say) will not be signalled again, so look once more (a look: the
            # plain lock, no signal hold, usnet.client.sigdefer). Not after a plain delivery of
            # data (`settled`): it looked at what came behind that data when it read it.
            with self._eng.lock.plain:
                again = self._wants()
            if again:
                self._watcher.kick()

    def _push(self) -> None:
        """TCP freed send space: refill it, and finish the close or write_eof that waited for the buffer."""
        n = 0
        with self._eng.lock:  # (as `write`: the wake inside)
            try:
                n = self._conn.send(self._buffer) if self._conn.send_space else 0
            except OSError as e:
                exc: OSError | None = e
            else:
                exc = None
                del self._buffer[:n]
            if n:
                self._eng.wake()
        if exc is not None:
            self._fatal_error(exc, "Fatal write error on usnet transport")
            return
        self._maybe_resume_protocol()
        if not self._buffer:
            if self._closing:
                self._lose(None)
            elif self._eof_requested:
                self._shutdown_write()

    def _pull(self) -> bool:
        """Deliver what came (data, else the end); True if it was data, read with a look at what
        came behind it (`more`: more data, the peer's FIN, an error), which `_deliver` acts on."""
        proto = self._protocol
        eng, c = self._eng, self._conn
        if self._early is not None:  # read by the pump (`_read_early`)
            (data, more), self._early = self._early, None
            if self._sock._unread_held:  # paused in between (`pause_reading`): it counted for readable
                with eng.lock:
                    self._sock._unread_held = 0
                    self._taken(c.readable)
            self._deliver(proto, data, more)
            return True
        if self._buffered:
            # get_buffer is the protocol's code: not under the lock the stack thread needs.
            with eng.lock.plain:  # (a look: no signal hold)
                queued = c.rcv_queued
            if queued:
                buf = self._protocol_call("get_buffer", _usable_buffer, proto)
                if buf is _FAILED:
                    return False
                with eng.lock:
                    n = c.recv_into(buf)
                    more = c.rcv_queued > 0
                    self._taken(c.readable)
                self._wrote = False
                ok = self._protocol_call("buffer_updated", proto.buffer_updated, n) is not _FAILED
                if not self._wrote:  # the window opened: let the stack say so (a reply's write did)
                    self._eng.wake()
                if ok and more:
                    self._watcher.kick()
                return False
        else:
            with eng.lock:
                data = c.recv(_READ_MAX) if c.rcv_queued else b""
                more = c.readable  # (more data, or the end behind it)
                self._taken(more)
            if data:
                self._deliver(proto, data, more)
                return True
        with eng.lock:
            end = not c.rcv_queued and (c.eof or (c.error is None and c.state is CLOSED))  # (`_meets_error`)
            if end:
                self._sock._update()  # readable at EOF, as the kernel's (recv returns b"" at once)
        if end:
            self._eof_seen = True
            keep_open = self._protocol_call("eof_received", proto.eof_received)
            if keep_open is not _FAILED and not keep_open:
                self.close()
        return False

    def _deliver(self, proto: Any, data: bytes, more: bool) -> None:
        """Hand `data`, read from TCP, to the protocol (`more`: TCP has more queued, or the peer's
        FIN or an error is behind it: the watcher runs again for it)."""
        self._wrote = False
        if self._buffered:  # (set_protocol since the pump read it)
            ok = self._feed(proto, data)
        else:
            ok = self._protocol_call("data_received", proto.data_received, data) is not _FAILED
        if not self._wrote:  # as above: one wake per request, not one for the read and one for the reply
            self._eng.wake()
        if ok and more:
            self._watcher.kick()

    def _feed(self, proto: asyncio.BufferedProtocol, data: bytes) -> bool:
        """`data` through the protocol's buffers, as many as it takes; False if the protocol failed."""
        view = memoryview(data)
        while view:
            buf = self._protocol_call("get_buffer", _usable_buffer, proto)
            if buf is _FAILED:
                return False
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            view = view[n:]
            if self._protocol_call("buffer_updated", proto.buffer_updated, n) is _FAILED:
                return False
        return True

    def _taken(self, readable: bool) -> None:
        """After a read, with the engine lock held: the socket stops looking readable once its data
        is gone. A pool that probes an idle connection with select() for a drop (readable with
        nothing to read means EOF) would otherwise discard every connection it kept. Only when the
        descriptor says readable: the transport's socket is not watched (`_start`), so once cleared
        nothing sets it again short of the end of the stream, and the look (`socket._update`: the
        poll state, the readiness compared) would find nothing to change, on every request.
        `readable`: the connection's `readable` now, which the caller has just read."""
        if not readable and self._sock._ready.readable:
            self._sock._update()

    def _protocol_call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run the protocol's code; if it raises, that is a fatal error of this transport (as in asyncio)."""
        try:
            return fn(*args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, f"Fatal error: protocol.{what}() call failed.")
            return _FAILED

    def _shutdown_write(self) -> None:
        with self._eng.lock:  # (as `write`: the FIN and the wake that sends it)
            self._conn.shutdown_write(time.monotonic())
            self._eng.wake()

    # -- asyncio.Transport ----------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        plain = type(data) is bytes  # (the common case: no isinstance, no cast)
        if not plain and not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof_requested:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        if self._conn_lost:
            if self._conn_lost >= _LOG_LOST_WRITES:
                log.warning("usnet transport: write to a lost connection")
            self._conn_lost += 1
            return
        mv = data if plain else memoryview(data).cast("B")
        sent = 0
        exc: OSError | None = None
        # What TCP took and the wake that sends it: one section for a signal (usnet.client.sigdefer),
        # the wake inside the lock (engine lock, then the runner's or the loop's: the order of the
        # stack thread's `_run`), so no `step` around it. The buffer, too: `_wants` reads it under it.
        with self._eng.lock:
            if not self._buffer:
                try:
                    sent = self._conn.send(mv)
                except OSError as e:
                    exc = e
            if exc is None and sent < len(mv):
                self._buffer += mv[sent:]
            if sent:
                self._eng.wake()
                self._wrote = True
        if exc is not None:
            self._fatal_error(exc, "Fatal write error on usnet transport")
            return
        if self._buffer:  # (an empty buffer is never above the high-water mark, which is >= 0)
            self._maybe_pause_protocol()

    def write_eof(self) -> None:
        if self._closing or self._eof_requested:
            return
        self._eof_requested = True
        if not self._buffer:
            self._shutdown_write()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if not self._buffer:
            self._lose(None)
        # else: `_push` finishes the close once the buffer has drained

    def abort(self) -> None:
        """As asyncio's on the kernel: what is buffered here is dropped and the socket closed, which
        is a FIN after what TCP has taken (a RST only if data came that nobody read), not a RST:
        anyio closes every stream so, and its peer must see a clean end."""
        self._force_close(None)

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return not (self._closing or self._reading_paused)

    def pause_reading(self) -> None:
        """While the transport does not read, the socket's descriptor says what the kernel's would
        (data or the peer's FIN queued): the stack keeps its readiness again, as before `_start`.
        anyio pauses between receives, and httpcore (httpx's async client) probes a pooled idle
        connection's descriptor with poll() for a drop before reusing it."""
        if self._closing or self._reading_paused:
            return
        self._reading_paused = True
        if not self._conn_lost:
            with self._eng.lock:
                if self._early is not None:  # read by the pump, not delivered: unread for the kernel
                    self._sock._unread_held = len(self._early[0])
                self._eng.watch(self._sock, self._conn)
                self._sock._update()

    def resume_reading(self) -> None:
        if self._closing or not self._reading_paused:
            return
        self._reading_paused = False
        if not self._conn_lost:
            with self._eng.lock:
                self._eng.unwatch(self._sock, self._conn)
        self._watcher.kick()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = _HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    # -- flow control and ending ------------------------------------------------------------------

    def _maybe_pause_protocol(self) -> None:
        if len(self._buffer) <= self._high or self._protocol_paused:
            return
        self._protocol_paused = True
        try:
            self._protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": "protocol.pause_writing() failed", "exception": exc,
                "transport": self, "protocol": self._protocol})

    def _maybe_resume_protocol(self) -> None:
        if not self._protocol_paused or len(self._buffer) > self._low:
            return
        self._protocol_paused = False
        try:
            self._protocol.resume_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": "protocol.resume_writing() failed", "exception": exc,
                "transport": self, "protocol": self._protocol})

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        if not isinstance(exc, OSError):  # as asyncio: I/O errors are the peer's business
            self._loop.call_exception_handler({
                "message": message, "exception": exc, "transport": self, "protocol": self._protocol})
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        with self._eng.lock:
            self._buffer.clear()
        self._closing = True
        self._lost = exc
        self._lose(exc)

    def send_error(self) -> OSError:
        """What a send on this connection, once lost, fails with on the kernel: the error it was
        lost with (ECONNRESET from the peer's reset, say), else EPIPE (closed for sending)."""
        if isinstance(self._lost, OSError) and self._lost.errno:
            return self._lost
        return BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    def _lose(self, exc: BaseException | None) -> None:
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            if self._protocol is not None:
                self._protocol.connection_lost(exc)
        finally:
            _unwatch(self._eng, self._watcher, self._conn)
            if self._early is not None:  # read by the pump, never delivered: unread, for the kernel
                self._early = None
                self._sock._abort_on_close = True
            self._sock.close()  # FIN after what was sent (RST if unread data, as the kernel)
            server, self._server = self._server, None
            if server is not None:
                server._detach(self)


class _HandOver(asyncio.Protocol):
    """Stands in for the application's protocol while `loop.start_tls` runs.

    start_tls returns after the handshake, but by then SSLProtocol may have
    passed on data that came with the peer's last handshake flight, or
    even EOF. The application's protocol must see `connection_made` first,
    as on asyncio's own ``ssl=`` path, so what arrives early is held and
    replayed after it.
    """

    def __init__(self) -> None:
        self._held: list[tuple[str, tuple]] = []
        self._target: Any = None

    def _deliver(self, name: str, *args: Any) -> Any:
        if self._target is None:
            self._held.append((name, args))
            return None
        if name == "data_received":
            return _feed(self._target, args[0])
        return getattr(self._target, name)(*args)

    def data_received(self, data: bytes) -> None:
        self._deliver("data_received", data)

    def eof_received(self) -> bool | None:
        return self._deliver("eof_received")

    def connection_lost(self, exc: Exception | None) -> None:
        self._deliver("connection_lost", exc)

    def pause_writing(self) -> None:
        self._deliver("pause_writing")

    def resume_writing(self) -> None:
        self._deliver("resume_writing")

    def hand_over(self, transport: asyncio.Transport, protocol: asyncio.BaseProtocol) -> None:
        transport.set_protocol(protocol)  # from now on SSLProtocol calls it directly
        self._target = protocol
        protocol.connection_made(transport)
        held, self._held = self._held, []
        for name, args in held:
            self._deliver(name, *args)


def _feed(protocol: Any, data: bytes) -> None:
    if not isinstance(protocol, asyncio.BufferedProtocol):
        protocol.data_received(data)
        return
    mv = memoryview(data)
    while mv:
        buf = cast(_Writable, protocol.get_buffer(len(mv)))
        n = min(len(buf), len(mv))
        buf[:n] = mv[:n]
        protocol.buffer_updated(n)
        mv = mv[n:]


async def _start_tls(loop: asyncio.AbstractEventLoop, sock: _us.socket, protocol: asyncio.BaseProtocol,
                     context: _ssl.SSLContext, *, server_side: bool, server_hostname: str | None,
                     server: Server | None, handshake_timeout: float | None,
                     shutdown_timeout: float | None) -> asyncio.Transport:
    raw = UsnetTransport(loop, sock, None, server=server, notify=False)
    stand_in = _HandOver()
    tls = await loop.start_tls(raw, stand_in, context, server_side=server_side,
                               server_hostname=server_hostname, ssl_handshake_timeout=handshake_timeout,
                               ssl_shutdown_timeout=shutdown_timeout)
    if tls is None:  # typeshed allows None; asyncio's start_tls always returns its SSL transport
        raise RuntimeError("loop.start_tls returned no transport")
    stand_in.hand_over(tls, protocol)
    return tls


def _client_context(ssl: Any, server_hostname: str | None,
                    host: str) -> tuple[_ssl.SSLContext | None, str | None]:
    """asyncio.open_connection's rules for ``ssl`` and ``server_hostname``."""
    if server_hostname is not None and not ssl:
        raise ValueError("server_hostname is only meaningful with ssl")
    if not ssl:
        return None, None
    ctx = ssl if isinstance(ssl, _ssl.SSLContext) else _ssl.create_default_context()
    return ctx, host if server_hostname is None else server_hostname


async def _until(loop: asyncio.AbstractEventLoop, eng: FlowEngine, ready: Callable[[], Any]) -> None:
    """Wait on the loop, without a thread or polling, until `ready()` (run under the engine lock) holds.

    `ready` must also hold once the engine has failed (`eng.error`), or the wait would not end.
    """
    with eng.lock:
        if ready():
            return
    done = loop.create_future()

    def wake() -> None:
        with eng.lock:
            now = ready()
        if now and not done.done():
            done.set_result(None)

    w = _Watcher(loop, ready, wake)
    _watch(eng, w)
    try:
        await done
    finally:
        _unwatch(eng, w)


def _interleaved(infos: list[tuple], first_family_count: int) -> list[tuple]:
    """`infos` with their families alternating, `first_family_count` of the first family first
    (RFC 8305 §4; asyncio's `interleave`)."""
    by_family: dict[int, list[tuple]] = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    lists = list(by_family.values())
    out = lists[0][:first_family_count - 1]
    lists[0] = lists[0][first_family_count - 1:]
    for i in range(max(len(lst) for lst in lists)):
        out += [lst[i] for lst in lists if i < len(lst)]
    return out


async def _connect(loop: asyncio.AbstractEventLoop, host: str, port: int, client: Any, netif: str | None,
                   local_port: int) -> _us.socket:
    """A connected, non-blocking usnet socket; the wait for SYN-ACK is a watcher, not a thread."""
    # as asyncio's: the family and protocol number getaddrinfo gives (IPPROTO_TCP: Nagle goes off)
    family, _, proto = _us.getaddrinfo(host, port, type=_stdsocket.SOCK_STREAM, client=client, netif=netif)[0][:3]
    sock = _us.socket(family, _stdsocket.SOCK_STREAM, proto, client=client, netif=netif)
    try:
        sock.setblocking(False)
        if local_port:
            sock.bind((host, local_port))  # only the port counts: the netif has one address
        await _sock_connect(loop, sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _sock_connect(loop: asyncio.AbstractEventLoop, sock: _us.socket, address: tuple) -> None:
    """Connect a non-blocking usnet socket to a literal address; raise what the handshake failed
    with, as asyncio's sock_connect says it: "Connect call failed (address)" (aiohttp and others
    show that text), the socket address in its family's form."""
    err = sock.connect_ex(address)
    if err == errno.EINPROGRESS:
        eng, conn = sock.engine, sock.connection
        assert eng is not None and conn is not None
        await _until(loop, eng, lambda: conn.state is not SYN_SENT or conn.error is not None
                     or eng.error is not None)
        err = sock.connect_ex(address)
        if err:
            where = address if sock.family != _stdsocket.AF_INET6 else (*address[:2], 0, 0)
            raise OSError(err, f"Connect call failed {where}")
    if err:
        raise OSError(err, os.strerror(err))


async def _transport(loop: asyncio.AbstractEventLoop, sock: _us.socket,
                     protocol_factory: Callable[[], asyncio.BaseProtocol], ctx: _ssl.SSLContext | None,
                     hostname: str | None, handshake_timeout: float | None, shutdown_timeout: float | None,
                     server_side: bool = False) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
    """A connected usnet socket under a transport (TLS if `ctx`), its protocol made and connected."""
    try:
        protocol = protocol_factory()
        if ctx is None:
            waiter = loop.create_future()
            transport: asyncio.Transport = UsnetTransport(loop, sock, protocol, waiter=waiter)
            try:
                await waiter
            except BaseException:
                transport.close()
                raise
        else:
            transport = await _start_tls(loop, sock, protocol, ctx, server_side=server_side,
                                         server_hostname=hostname, server=None,
                                         handshake_timeout=handshake_timeout, shutdown_timeout=shutdown_timeout)
    except BaseException:
        sock.close()  # no-op if the transport closed it already
        raise
    return transport, protocol


async def create_connection(protocol_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, *,
                            client: Any = None, netif: str | None = None, ssl: Any = None,
                            server_hostname: str | None = None, ssl_handshake_timeout: float | None = None,
                            ssl_shutdown_timeout: float | None = None,
                            local_port: int = 0) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
    """As `loop.create_connection`, over usnet; `client`/`netif` as for `usnet.socket.socket`."""
    loop = asyncio.get_running_loop()
    ctx, hostname = _client_context(ssl, server_hostname, host)
    sock = await _connect(loop, host, port, client, netif, local_port)
    return await _transport(loop, sock, protocol_factory, ctx, hostname, ssl_handshake_timeout,
                            ssl_shutdown_timeout)


async def open_connection(host: str, port: int, *, client: Any = None, netif: str | None = None,
                          ssl: Any = None, server_hostname: str | None = None, limit: int = _DEFAULT_LIMIT,
                          **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """As `asyncio.open_connection`, over usnet: asyncio's own stream objects."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(lambda: protocol, host, port, client=client, netif=netif,
                                           ssl=ssl, server_hostname=server_hostname, **kwargs)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class _Listener:
    """One listening usnet socket of a `Server`: its engines, its watcher and its accepts.

    A server with no host listens on every passive address (0.0.0.0 and ::, as asyncio's on the
    kernel), so it has one of these per socket; each watches its own engine and hands what it
    accepts to the server, which serves them all alike.
    """

    def __init__(self, server: Server, sock: _us.socket) -> None:
        self.server = server
        self.sock: _us.socket | None = sock
        self.eng: FlowEngine = sock.engine  # type: ignore[assignment]
        # with the loopback half of a wildcard listener (same lock and watchers as eng)
        self.engines = sock.listening_engines or (self.eng,)
        self.port: int = sock.getsockname()[1]
        self.watcher = _Watcher(server._loop, self._wants, self._accept_ready)
        self.watcher.moved = self._moved
        # the engines' accept-queue changes (`TcpEndpoint.accept_moves`, summed) when the queues
        # were last found empty; -1: not known
        self._empty_at = -1

    def _wants(self) -> bool:
        """After a pump of the listener's engine (every accepted connection's) that moved its accept
        queues (FlowEngine.watch's `accepts`), or a notice that anything may have: whether a
        connection waits. The queues change only with `accept_moves`, so once found empty they
        are not looked at again until it moved."""
        if not self.server._serving:
            return False
        n = 0
        for e in self.engines:
            n += e.tcp.accept_moves
        if n == self._empty_at:
            return False
        if _accept_waits(self.engines, self.port):
            return True
        self._empty_at = n
        return False

    def _moved(self) -> None:
        """The socket listens again on a new flow (usnetd came back): serve that one."""
        try:
            self.server._loop.call_soon_threadsafe(self._rewatch)
        except RuntimeError:
            pass  # the loop is closed: nothing serves this server any more

    def _rewatch(self) -> None:
        sock = self.sock
        if sock is None or sock.engine is None or sock.engine is self.eng:
            return
        _unwatch(self.eng, self.watcher, accepts=True)
        self.eng = sock.engine
        self.engines = sock.listening_engines or (self.eng,)
        self._empty_at = -1  # other engines, other counts
        if self.server._serving:
            self.start()

    def start(self) -> None:
        """Serve the socket's engines as they are now: it listens from the server's start
        (`Server._start_serving`), and a wildcard's listen makes its loopback half."""
        sock = self.sock
        if sock is not None and sock.engine is not None:
            self.eng = sock.engine
            self.engines = sock.listening_engines or (self.eng,)
        self.watcher.dead = False
        _watch(self.eng, self.watcher, accepts=True)

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            _unwatch(self.eng, self.watcher, accepts=True)
            sock.close()

    def _accept_ready(self) -> None:
        server = self.server
        for _ in range(_ACCEPT_MAX):
            if not server._serving or self.sock is None:
                return
            try:
                child, _addr = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                server._loop.call_exception_handler({
                    "message": "usnet accept failed", "exception": exc, "socket": self.sock})
                return
            child.setblocking(False)
            server._new_connection(child)
        self.watcher.kick()  # a full accept queue: the rest on the next turn


# asyncio.Server.wait_closed waits for the server's connections too from 3.12.1 (gh-79033); before,
# it returns at once once the server is closed
_WAIT_CLOSED_FOR_CLIENTS = sys.version_info >= (3, 12, 1)


class Server(asyncio.AbstractServer):
    """Listening usnet sockets serving protocols on the loop, as asyncio.Server.

    One socket per address it listens on (`sockets`; with no host, 0.0.0.0 and ::, as asyncio's
    on the kernel), each a `_Listener`. `wait_closed` waits for the listeners and (from Python
    3.12.1, as asyncio's) every connection they accepted; `close_clients`/`abort_clients` end them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, socks: _us.socket | Sequence[_us.socket],
                 protocol_factory: Callable[[], asyncio.BaseProtocol], ssl: _ssl.SSLContext | None,
                 ssl_handshake_timeout: float | None, ssl_shutdown_timeout: float | None,
                 backlog: int = 100) -> None:
        self._loop = loop
        self._backlog = backlog
        self._factory = protocol_factory
        self._ssl = ssl
        self._timeouts = (ssl_handshake_timeout, ssl_shutdown_timeout)
        self._serving = False
        self._transports: weakref.WeakSet[UsnetTransport] = weakref.WeakSet()
        self._active = 0
        self._waiters: list[asyncio.Future] | None = []
        self._handshakes: set[asyncio.Task] = set()
        self._serving_forever_fut: asyncio.Future | None = None
        socks = [socks] if isinstance(socks, _us.socket) else list(socks)
        self._listeners: list[_Listener] | None = [_Listener(self, s) for s in socks]
        self._port = self._listeners[0].port if self._listeners else 0

    def __repr__(self) -> str:
        return f"<usnet.aio.Server port={self._port} {'serving' if self._serving else 'idle'}>"

    @property
    def sockets(self) -> tuple[_us.socket, ...]:
        return tuple(lst.sock for lst in self._listeners or () if lst.sock is not None)

    @property
    def port(self) -> int:
        """The first socket's port (each has its own when the server was asked for port 0, as on Linux)."""
        return self._port

    def getsockname(self) -> tuple[str, int]:
        """The first socket's name."""
        if not self._listeners:
            raise OSError(errno.EBADF, "server is closed")
        return self.sockets[0].getsockname()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    def _start_serving(self) -> None:
        """Listen and serve, as asyncio's `Server._start_serving`: a socket listens only from here,
        so until then (`start_serving=False`) a connection is refused, as on the kernel."""
        if self._serving or self._listeners is None:
            return
        for lst in self._listeners:
            if lst.sock is not None:
                lst.sock.listen(self._backlog)  # a listening socket takes the backlog, as on Linux
        self._serving = True
        for lst in self._listeners:
            lst.start()

    async def start_serving(self) -> None:
        self._start_serving()
        await asyncio.sleep(0)

    def _new_connection(self, child: _us.socket) -> None:
        try:
            protocol = self._factory()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({"message": "protocol factory failed", "exception": exc})
            child.close()
            return
        if self._ssl is None:
            UsnetTransport(self._loop, child, protocol, server=self)
            return
        task = self._loop.create_task(self._handshake(child, protocol))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, child: _us.socket, protocol: asyncio.BaseProtocol) -> None:
        try:
            await _start_tls(self._loop, child, protocol, self._ssl,  # type: ignore[arg-type]
                             server_side=True, server_hostname=None, server=self,
                             handshake_timeout=self._timeouts[0], shutdown_timeout=self._timeouts[1])
        except (TimeoutError, OSError) as exc:  # a failed handshake is the peer's problem
            log.debug("usnet.aio: TLS handshake with %s failed: %r", _peer(child), exc)
        except Exception as exc:
            self._loop.call_exception_handler({"message": "TLS handshake failed", "exception": exc})

    def _attach(self, transport: UsnetTransport) -> None:
        self._active += 1
        self._transports.add(transport)

    def _detach(self, transport: UsnetTransport) -> None:
        self._active -= 1
        self._transports.discard(transport)
        if self._active == 0 and self._listeners is None:
            self._wakeup()

    def _wakeup(self) -> None:
        waiters, self._waiters = self._waiters, None
        for w in waiters or ():
            if not w.done():
                w.set_result(None)

    def close(self) -> None:
        """Stop listening; connections already accepted carry on (see close_clients)."""
        listeners, self._listeners = self._listeners, None
        if listeners is None:
            return
        self._serving = False
        for lst in listeners:
            lst.close()
        fut = self._serving_forever_fut
        if fut is not None and not fut.done():
            fut.cancel()
            self._serving_forever_fut = None
        if self._active == 0:
            self._wakeup()

    def close_clients(self) -> None:
        for t in list(self._transports):
            t.close()

    def abort_clients(self) -> None:
        for t in list(self._transports):
            t.abort()

    async def wait_closed(self) -> None:
        """Until the server is closed and, from Python 3.12.1 (as asyncio's), every connection it
        accepted has ended. Before 3.12.1 asyncio's returns at once once the server is closed,
        connections or not, and so does this: else a program that closes its server on Ctrl-C
        (serve_forever, `async with server`) with a client connected hangs on usnet where it exits
        on the kernel."""
        if self._waiters is None or (self._listeners is None and not _WAIT_CLOSED_FOR_CLIENTS):
            return
        fut = self._loop.create_future()
        self._waiters.append(fut)
        await fut

    async def serve_forever(self) -> None:
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._listeners is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except asyncio.CancelledError:
            try:
                self.close()  # the listener; accepted connections end on their own terms
            finally:
                raise
        finally:
            self._serving_forever_fut = None


def _peer(sock: _us.socket) -> Any:
    try:
        return sock.getpeername()
    except OSError:
        return "?"


def _hosts(host: Any) -> list[Any]:
    """asyncio's reading of create_server's `host`: None or "" is every passive address (None for
    getaddrinfo), a string one host, any other iterable several."""
    if host is None or host == "":
        return [None]
    if isinstance(host, str) or not isinstance(host, Iterable):
        return [host]
    return list(host)


def _bound_on(infos: Iterable[tuple], make: Callable[[int, int], _us.socket],
              reuse_port: bool | None = None, reuse_address: bool | None = None) -> list[_us.socket]:
    """A bound socket on each distinct address of `infos` (getaddrinfo's answers), to listen when
    its server starts serving, as asyncio's create_server makes them on the kernel: for no host,
    0.0.0.0 and ::, each on its own port if the port is 0, the AF_INET6 one with IPV6_V6ONLY set
    (Linux's default is dual stack, which would take 0.0.0.0's port in IPv4 too), with
    SO_REUSEADDR unless `reuse_address` is False.

    A wildcard the domain cannot listen on (EADDRNOTAVAIL: :: where the netif has no IPv6 and the
    domain no loopback netif to put it on, usnet.client.socket's `_open_bound`) is left out,
    as asyncio leaves out a family the kernel lacks (its socket() fails), unless nothing else
    listens; any other failure closes the rest and raises, with asyncio's message."""
    socks: list[_us.socket] = []
    skipped: list[OSError] = []
    seen: set[tuple] = set()
    try:
        for af, _kind, proto, _canon, addr in infos:
            if (af, addr) in seen:
                continue
            seen.add((af, addr))
            sock = make(af, proto)
            try:
                if reuse_address is not False:  # asyncio's default on POSIX
                    sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEADDR, 1)
                if reuse_port:  # SO_REUSEPORT: several servers (processes) on one port
                    sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEPORT, 1)
                if af == _stdsocket.AF_INET6:
                    sock.setsockopt(_stdsocket.IPPROTO_IPV6, _stdsocket.IPV6_V6ONLY, 1)
                sock.bind(addr)
                sock.setblocking(False)
            except OSError as err:
                sock.close()
                wrapped = OSError(err.errno, f"error while attempting to bind on address {addr!r}: "
                                             f"{(err.strerror or str(err)).lower()}")
                if err.errno == errno.EADDRNOTAVAIL and addr[0] in ("0.0.0.0", "::"):
                    skipped.append(wrapped)
                    continue
                raise wrapped from None
            socks.append(sock)
        if not socks:
            raise skipped[0] if skipped else OSError("getaddrinfo() returned empty list")
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


async def create_server(protocol_factory: Callable[[], asyncio.BaseProtocol],
                        host: str | Sequence[str] | None = None, port: int = 0, *, client: Any = None,
                        netif: str | None = None,
                        ssl: _ssl.SSLContext | None = None, backlog: int = 128,
                        ssl_handshake_timeout: float | None = None, ssl_shutdown_timeout: float | None = None,
                        start_serving: bool = True) -> Server:
    """As `loop.create_server`, over usnet: a listening socket on every address `host` gives (no
    host or "": 0.0.0.0 and ::, as asyncio's on the kernel; a list: each host's)."""
    if ssl is not None and not isinstance(ssl, _ssl.SSLContext):
        raise TypeError(f"ssl argument must be an SSLContext or None, got {ssl!r}")
    if ssl is None and (ssl_handshake_timeout is not None or ssl_shutdown_timeout is not None):
        raise ValueError("ssl_handshake_timeout and ssl_shutdown_timeout are only meaningful with ssl")
    loop = asyncio.get_running_loop()
    infos = [info for h in _hosts(host) for info in _us.getaddrinfo(
        h, port, type=_stdsocket.SOCK_STREAM, flags=_stdsocket.AI_PASSIVE, client=client, netif=netif)]

    # getaddrinfo's protocol number, as asyncio's listener has: its connections' transports turn Nagle off
    def make(family: int, proto: int) -> _us.socket:
        return _us.socket(family, _stdsocket.SOCK_STREAM, proto, client=client, netif=netif)

    socks = _bound_on(infos, make)
    server = Server(loop, socks, protocol_factory, ssl, ssl_handshake_timeout, ssl_shutdown_timeout, backlog)
    if start_serving:
        await server.start_serving()
    return server


async def start_server(client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
                       host: str | None = None, port: int = 0, *, client: Any = None,
                       netif: str | None = None,
                       ssl: _ssl.SSLContext | None = None, backlog: int = 128, limit: int = _DEFAULT_LIMIT,
                       **kwargs: Any) -> Server:
    """As `asyncio.start_server`, over usnet: the callback gets asyncio's own streams."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(factory, host, port, client=client, netif=netif, ssl=ssl, backlog=backlog,
                               **kwargs)


# -- an event loop whose network calls use usnet: `install()`, as uvloop.install() ------------------------


def _is_literal(host: Any) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class EventLoop(asyncio.SelectorEventLoop):
    """asyncio's own selector loop, with its TCP calls on usnet.

    `create_connection`, `create_server`, `connect_accepted_socket`, `create_datagram_endpoint`,
    `sock_connect`/`sock_accept`/`sock_recv`/`sock_recv_into`/`sock_sendall` and `getaddrinfo` use
    usnet; given a kernel socket (``sock=``), each is asyncio's. Everything else is the selector loop
    unchanged: AF_UNIX, pipes, subprocesses, signals and the loop's own self-pipe stay on the kernel,
    and `add_reader` works on a usnet socket's `fileno()` as on any descriptor.
    """

    def __init__(self, selector: Any = None, *, client: Any = None, netif: str | None = None) -> None:
        super().__init__(selector)
        self._usnet_where = (client, netif)  # None: `usnet.socket.configure` or the environment decides
        self._usnet_driver = _LoopDriver(self)  # the loop pumps its usnet engines itself

    def close(self) -> None:
        if not self.is_running() and not self.is_closed():
            self._usnet_driver.close()
        super().close()

    def _usnet_socket(self, family: int, proto: int = _stdsocket.IPPROTO_TCP) -> _us.socket:
        """A stream socket as asyncio makes one: getaddrinfo's protocol number (IPPROTO_TCP), so
        that its transports turn Nagle off as asyncio's do."""
        client, netif = self._usnet_where
        return _us.socket(family, _stdsocket.SOCK_STREAM, proto, client=client, netif=netif)

    async def _usnet_resolve(self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0,
                             flags: int = 0) -> list[tuple]:
        """usnet's getaddrinfo: literal addresses at once, names in the executor (a resolver may wait)."""
        if host is None or _is_literal(host):
            return _us.getaddrinfo(host, port, family, type, proto, flags)
        return await self.run_in_executor(None, _us.getaddrinfo, host, port, family, type, proto, flags)

    async def getaddrinfo(self, host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0,
                          flags: int = 0) -> list[tuple]:
        return await self._usnet_resolve(host, port, family, type, proto, flags)

    # -- streams ------------------------------------------------------------------------------------------

    async def create_connection(  # type: ignore[override]
            self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str | None = None,
            port: int | None = None, *, ssl: Any = None, family: int = 0, proto: int = 0, flags: int = 0,
            sock: Any = None, local_addr: tuple[str, int] | None = None, server_hostname: str | None = None,
            ssl_handshake_timeout: float | None = None, ssl_shutdown_timeout: float | None = None,
            happy_eyeballs_delay: float | None = None,
            interleave: int | None = None, all_errors: bool = False) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        if all_errors and sys.version_info < (3, 12):  # 3.12's argument: 3.11's asyncio takes none
            raise TypeError("BaseEventLoop.create_connection() got an unexpected keyword argument 'all_errors'")
        if sock is not None and not isinstance(sock, _us.socket):
            base: Any = super()  # asyncio's overloads, which this method's one signature covers
            more = {"all_errors": all_errors} if all_errors else {}
            return await base.create_connection(
                protocol_factory, host, port, ssl=ssl, family=family, proto=proto, flags=flags, sock=sock,
                local_addr=local_addr, server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout,
                happy_eyeballs_delay=happy_eyeballs_delay, interleave=interleave, **more)
        # asyncio's argument rules, with its messages
        if server_hostname is not None and not ssl:
            raise ValueError("server_hostname is only meaningful with ssl")
        if server_hostname is None and ssl:
            if not host:
                raise ValueError("You must set server_hostname when using ssl without a host")
            server_hostname = host
        if (ssl_handshake_timeout is not None or ssl_shutdown_timeout is not None) and not ssl:
            raise ValueError("ssl_handshake_timeout and ssl_shutdown_timeout are only meaningful with ssl")
        ctx = None if not ssl else ssl if isinstance(ssl, _ssl.SSLContext) else _ssl.create_default_context()
        if sock is not None:
            if host is not None or port is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            sock.setblocking(False)
        else:
            if host is None and port is None:
                raise ValueError("host and port was not specified and no sock specified")
            infos = await self._usnet_resolve(host, port, family, _stdsocket.SOCK_STREAM, proto, flags)
            local_port = int(local_addr[1]) if local_addr else 0  # the netif has one address per family
            if happy_eyeballs_delay is not None and interleave is None:
                interleave = 1  # as asyncio: happy eyeballs alternates the families by default
            if interleave:
                infos = _interleaved(infos, interleave)
            sock = await self._connect_first(infos, local_port, happy_eyeballs_delay, all_errors)
        return await _transport(self, sock, protocol_factory, ctx, server_hostname, ssl_handshake_timeout,
                                ssl_shutdown_timeout)

    async def _connect_first(self, infos: list[tuple], local_port: int, happy_eyeballs_delay: float | None = None,
                             all_errors: bool = False) -> _us.socket:
        """The first address to answer, as asyncio connects: each in turn, or with
        `happy_eyeballs_delay` (RFC 8305) the next one started that long after the last (or at
        once when it failed), the first connected winning and the others cancelled (their
        sockets closed). If none answers, its errors as asyncio raises them: the one, or one if
        all say the same, else "Multiple exceptions: ..." (in the order the attempts began), or
        with `all_errors` (3.12) an ExceptionGroup of them all."""
        client, netif = self._usnet_where
        began: list[list[OSError]] = []  # each attempt's error, in the order the attempts began

        async def attempt(addr: tuple) -> _us.socket:
            mine: list[OSError] = []
            began.append(mine)
            try:
                return await _connect(self, addr[0], addr[1], client, netif, local_port)
            except OSError as exc:
                mine.append(exc)
                raise

        if happy_eyeballs_delay is None:
            for info in infos:
                try:
                    return await attempt(info[4])
                except OSError:
                    continue
        else:
            sock, _, _ = await _staggered.staggered_race(
                (functools.partial(attempt, info[4]) for info in infos), happy_eyeballs_delay, loop=self)
            if sock is not None:
                return cast(_us.socket, sock)
        errors = [e for mine in began for e in mine]
        if not errors:
            raise OSError("getaddrinfo() returned empty list")
        if all_errors:
            raise ExceptionGroup("create_connection failed", errors)
        if len(errors) == 1 or all(str(e) == str(errors[0]) for e in errors):
            raise errors[0]
        raise OSError(f"Multiple exceptions: {', '.join(str(e) for e in errors)}")

    async def create_server(  # type: ignore[override]
            self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: Any = None,
            port: int | None = None, *, family: int = _stdsocket.AF_UNSPEC,
            flags: int = _stdsocket.AI_PASSIVE, sock: Any = None, backlog: int = 100,
            ssl: _ssl.SSLContext | None = None, reuse_address: bool | None = None,
            reuse_port: bool | None = None, ssl_handshake_timeout: float | None = None,
            ssl_shutdown_timeout: float | None = None, start_serving: bool = True) -> asyncio.AbstractServer:
        """As asyncio's: a listening socket on every address `host` gives (no host: 0.0.0.0 and ::;
        a list of hosts: each one's), or on `sock`."""
        if sock is not None and (not isinstance(sock, _us.socket) or getattr(sock, "inherited", False)):
            # a kernel socket, or one another process's stack serves (usnet.client.inherit): asyncio's
            # own way, on its descriptor's readiness and its accept
            return await super().create_server(
                protocol_factory, host, port, family=family, flags=flags, sock=sock, backlog=backlog, ssl=ssl,
                reuse_address=reuse_address, reuse_port=reuse_port, ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout, start_serving=start_serving)
        if isinstance(ssl, bool) or (ssl is not None and not isinstance(ssl, _ssl.SSLContext)):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl is None and (ssl_handshake_timeout is not None or ssl_shutdown_timeout is not None):
            raise ValueError("ssl_handshake_timeout and ssl_shutdown_timeout are only meaningful with ssl")
        if sock is not None:
            if host is not None or port is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            # asyncio listens on it whatever its state, when it starts serving (`Server._start_serving`):
            # a socket that is only bound (it has a flow already) listens then, a listening one takes the backlog
            sock.setblocking(False)
            socks = [sock]
        else:
            found = await asyncio.gather(*(self._usnet_resolve(h, port or 0, family, _stdsocket.SOCK_STREAM, 0,
                                                               flags) for h in _hosts(host)))
            socks = _bound_on((info for infos in found for info in infos), self._usnet_socket,
                              reuse_port, reuse_address)
        server = Server(self, socks, protocol_factory, ssl, ssl_handshake_timeout, ssl_shutdown_timeout, backlog)
        if start_serving:
            await server.start_serving()
        return server

    async def connect_accepted_socket(  # type: ignore[override]
            self, protocol_factory: Callable[[], asyncio.BaseProtocol], sock: Any, *,
            ssl: _ssl.SSLContext | None = None, ssl_handshake_timeout: float | None = None,
            ssl_shutdown_timeout: float | None = None) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        if not isinstance(sock, _us.socket):
            return await super().connect_accepted_socket(
                protocol_factory, sock, ssl=ssl, ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout)
        sock.setblocking(False)
        return await _transport(self, sock, protocol_factory, ssl, None, ssl_handshake_timeout,
                                ssl_shutdown_timeout, server_side=True)

    # -- datagrams ---------------------------------------------------------------------------------------

    async def create_datagram_endpoint(  # type: ignore[override]
            self, protocol_factory: Callable[[], asyncio.BaseProtocol], local_addr: Any = None,
            remote_addr: Any = None, *, family: int = 0, proto: int = 0, flags: int = 0,
            reuse_port: bool | None = None, allow_broadcast: bool | None = None,
            sock: Any = None) -> tuple[asyncio.DatagramTransport, asyncio.BaseProtocol]:
        """As asyncio's, on a usnet UDP socket (``usnet.socket(family, SOCK_DGRAM)``, or ``sock``
        if it is one), set up as asyncio sets up its own: SO_REUSEPORT, SO_BROADCAST, bound to
        `local_addr`, connected to `remote_addr`. AF_UNIX and a kernel ``sock`` are asyncio's."""
        if family == _stdsocket.AF_UNIX or (sock is not None and not isinstance(sock, _us.socket)):
            base: Any = super()
            return await base.create_datagram_endpoint(
                protocol_factory, local_addr, remote_addr, family=family, proto=proto, flags=flags,
                reuse_port=reuse_port, allow_broadcast=allow_broadcast, sock=sock)
        if sock is not None:
            if sock.type != _stdsocket.SOCK_DGRAM:
                raise ValueError(f"A datagram socket was expected, got {sock!r}")
            if local_addr or remote_addr or family or proto or flags or reuse_port or allow_broadcast:
                raise ValueError("socket modifier keyword arguments can not be used when sock is specified.")
            sock.setblocking(False)
            try:
                remote = tuple(sock.getpeername()[:2])
            except OSError:
                remote = None
        else:
            sock, remote = await self._udp_socket(local_addr, remote_addr, family, reuse_port, allow_broadcast)
        protocol = protocol_factory()
        return _DatagramTransport(self, sock, protocol, remote), protocol

    async def _udp_socket(self, local_addr: Any, remote_addr: Any, family: int, reuse_port: bool | None,
                          allow_broadcast: bool | None) -> tuple[Any, tuple | None]:
        """A usnet UDP socket as asyncio's create_datagram_endpoint makes one (base_events), and
        its connected peer."""
        remote = local = None
        if remote_addr is not None:
            infos = await self._usnet_resolve(remote_addr[0], remote_addr[1], family, _stdsocket.SOCK_DGRAM)
            family, remote = infos[0][0], tuple(infos[0][4][:2])
        if local_addr is not None:
            infos = await self._usnet_resolve(local_addr[0], local_addr[1], family, _stdsocket.SOCK_DGRAM)
            family, local = infos[0][0], infos[0][4]
        if family not in (_stdsocket.AF_INET, _stdsocket.AF_INET6):
            raise ValueError("unexpected address family")  # (as asyncio's, given no address nor family)
        client, netif = self._usnet_where
        sock = _us.socket(family, _stdsocket.SOCK_DGRAM, _stdsocket.IPPROTO_UDP, client=client, netif=netif)
        try:
            sock.setblocking(False)
            if reuse_port:
                sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEPORT, 1)
            if allow_broadcast:
                sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_BROADCAST, 1)
            if local is not None:
                sock.bind(local)
            if remote is not None:
                sock.connect(remote)
        except BaseException:
            sock.close()
            raise
        return sock, remote

    # -- sock_*: a watcher says when to retry, never a busy descriptor -------------------------------------

    async def sock_connect(self, sock: Any, address: Any) -> None:
        if not isinstance(sock, _us.socket):
            return await super().sock_connect(sock, address)
        host, port = address[:2]
        if not _is_literal(host):
            infos = await self._usnet_resolve(host, port, sock.family, _stdsocket.SOCK_STREAM)
            host, port = infos[0][4][:2]
        await _sock_connect(self, sock, (host, port))

    async def sock_accept(self, sock: Any) -> tuple[Any, Any]:
        if not isinstance(sock, _us.socket):
            return await super().sock_accept(sock)
        port = sock.getsockname()[1]
        while True:
            eng = sock.engine
            if eng is None:
                raise OSError(errno.EINVAL, "Invalid argument")
            engines = sock.listening_engines or (eng,)
            try:
                child, addr = _nonblocking(sock, sock.accept)
            except BlockingIOError:
                # an orphaned listener's engine has failed, yet it waits (usnet.client.rebind): until
                # it moves to a new flow
                await _until(self, eng, functools.partial(_accept_or_moved, sock, eng, engines, port))
                continue
            child.setblocking(False)
            return child, addr

    async def sock_recv(self, sock: Any, n: int) -> bytes:
        if not isinstance(sock, _us.socket):
            return await super().sock_recv(sock, n)
        return await self._usnet_read(sock, lambda: sock.recv(n))

    async def sock_recv_into(self, sock: Any, buf: Any) -> int:
        if not isinstance(sock, _us.socket):
            return await super().sock_recv_into(sock, buf)
        return await self._usnet_read(sock, lambda: sock.recv_into(buf))

    async def _usnet_read(self, sock: _us.socket, take: Callable[[], T]) -> T:
        while True:
            try:
                return _nonblocking(sock, take)
            except BlockingIOError:
                eng, conn = sock.engine, sock.connection
                assert eng is not None and conn is not None  # recv got past its checks
                await _until(self, eng, _settled(eng, conn, "readable"))

    async def sock_sendall(self, sock: Any, data: Any) -> None:
        if not isinstance(sock, _us.socket):
            return await super().sock_sendall(sock, data)
        mv = memoryview(data).cast("B")
        while mv:
            try:
                n = _nonblocking(sock, functools.partial(sock.send, mv))
            except BlockingIOError:
                eng, conn = sock.engine, sock.connection
                assert eng is not None and conn is not None
                await _until(self, eng, _settled(eng, conn, "writable"))
                continue
            mv = mv[n:]

    async def _sock_sendfile_native(self, sock: Any, file: Any, offset: int, count: int | None) -> int:
        """A usnet socket has no kernel descriptor for os.sendfile, so the file goes through
        asyncio's fallback (read, sock_sendall), with os.sendfile's meaning kept (`_as_native`)."""
        if isinstance(sock, _us.socket):
            return await _as_native(file, offset, count, self._sock_sendfile_fallback, sock)  # type: ignore[attr-defined]
        return await super()._sock_sendfile_native(sock, file, offset, count)  # type: ignore[misc]

    async def _sendfile_fallback(self, transp: Any, file: Any, offset: int, count: int | None) -> int:
        """loop.sendfile on a usnet transport: asyncio's fallback, as os.sendfile would send
        (`_as_native`): on the kernel a plain TCP transport takes the native path. That path
        fails as os.sendfile does when the connection is lost midway (ECONNRESET, EPIPE); the
        fallback's drain raises a bare ConnectionError ("Connection closed by peer") when it
        finds the transport closing: raised as the send's error instead (`send_error`)."""
        if isinstance(transp, UsnetTransport) and _us._file_descriptor(file) is not None:
            try:
                return await _as_native(file, offset, count, super()._sendfile_fallback, transp)  # type: ignore[misc]
            except ConnectionError as e:
                if type(e) is not ConnectionError:
                    raise
                raise transp.send_error() from e
        return await super()._sendfile_fallback(transp, file, offset, count)  # type: ignore[misc]


async def _as_native(file: Any, offset: int, count: int | None, fallback: Callable[..., Any], to: Any) -> int:
    """asyncio's read-and-write `fallback` (sock_sendfile's or sendfile's) giving what its native
    path gives on the kernel, where os.sendfile reads a file with a descriptor from `offset`
    whatever its position: an empty file sends nothing; the file is read from `offset`; its
    position ends after the last byte sent, and stays where it was if nothing was sent. A file
    with no descriptor is not native: SendfileNotAvailableError, and asyncio falls back itself."""
    native = _us._file_descriptor(file)
    if native is None:
        raise asyncio.SendfileNotAvailableError("not a regular file")
    if not (count or native[1]):
        return 0
    was = file.tell()
    file.seek(offset)
    sent = cast(int, await fallback(to, file, offset, count))
    if not sent:
        file.seek(was)
    return sent


class _DatagramTransport(asyncio.DatagramTransport):
    """An asyncio datagram transport over a usnet UDP socket (`usnet.client.dgram.DatagramFace`, what
    ``usnet.socket(AF_INET, SOCK_DGRAM)`` makes), as asyncio's own is over a kernel socket.

    - ``get_extra_info("socket")`` is an asyncio TransportSocket over it, as asyncio's: a program
      sets and reads its options (SO_RCVBUF, IP_TTL, a multicast group) through the socket's own
      option table.
    - Under usnet's `EventLoop` the loop pumps the socket's flow itself (`_LoopDriver`, as a TCP
      transport's engine): its doorbell is a loop reader, and the pump signals the transport's
      watcher, which reads in the same callback; the stack thread is not woken per datagram. A
      call that blocks on the socket (another thread's recvfrom) gives the flow back to the
      stack thread for good (`DatagramEngine.wake(wait=True)`); the loop then watches the
      socket's descriptor, as it always does (a flow bound again after a usnetd restart is lent
      to the loop again on its first read). A read takes what a turn brought in batches
      (`DatagramFace.recv_batch`), not one datagram per callback.
    - An ICMP error for the connected peer, a datagram the pool had no buffer for, a send that
      failed: `error_received`, as asyncio's does with the kernel's errors.
    - The socket outlives a usnetd restart itself (usnet.client.rebind: the same port on a new flow,
      sends ENETDOWN meanwhile, the same descriptor); a socket that could not be bound again fails
      the transport with why.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: Any, protocol: Any, remote: tuple | None) -> None:
        peer = sock.getpeername() if remote is not None else None
        super().__init__({"socket": _trsock.TransportSocket(sock), "sockname": sock.getsockname(),
                          "peername": peer})
        self._loop, self._sock, self._protocol, self._remote = loop, sock, protocol, remote
        self._fd = sock.fileno()
        self._closing = False
        self._eng: Any = None  # the flow the watcher is on (the socket's, until it is bound again)
        self._watcher: _Watcher | None = None
        self._early: list[tuple[bytes, tuple]] | None = None  # a batch taken in the loop's pump (`_news`)
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._start)  # after connection_made: no datagram before it

    def _start(self) -> None:
        if not self._closing:
            self._loop.add_reader(self._fd, self._read_ready)
            self._read_ready()  # what came before the reader (and the flow, opened by that read)
            if self._sock._engine is not self._eng:
                self._attach(self._sock._engine)

    def _attach(self, eng: Any) -> None:
        """Watch the socket's flow `eng` (its first, or a new one after a rebind), lent to the loop
        if it is usnet's (`_watch`: `_LoopDriver.adopt`)."""
        if self._watcher is not None:
            _unwatch(self._eng, self._watcher)
        self._eng, self._watcher = eng, None
        if eng is not None and not self._closing:
            self._watcher = _Watcher(self._loop, functools.partial(self._news, eng), self._read_ready)
            _watch(eng, self._watcher)

    def _news(self, eng: Any) -> bool:
        """The watcher's `wants` (`_datagram_news`), with the flow's lock held. In the loop's own
        pump (`_LoopDriver._serve`, which runs the watcher's callback right after it) it also takes
        the batch, under the pump's signal hold: one hold less a batch (two system calls in the
        main thread, usnet.client.sigdefer), and the callback delivers it. Not with an error to
        report (the callback's own read raises it, after these datagrams)."""
        if not _datagram_news(eng):
            return False
        d = eng.driver
        if (self._early is None and d.collect is not None and eng.pending is None and eng.error is None
                and _pumping.driver is d):
            try:
                self._early = self._sock.recv_batch(64)
            except OSError:
                pass  # (none is expected without an error): the callback's read meets it again
        return True

    def _read_ready(self) -> None:
        if self._sock._engine is not self._eng:
            self._attach(self._sock._engine)
        got, self._early = self._early, None
        for _ in range(_ACCEPT_MAX):  # bounded, as asyncio reads one datagram per callback
            if self._closing:
                return
            try:
                if got is None:
                    got = self._sock.recv_batch(64)
            except OSError as exc:
                if self._sock._refused is not None or self._sock.fileno() < 0:
                    self._fail(exc)  # the socket is done for: no retrying it on every turn
                    return
                self._protocol.error_received(exc)
                continue
            if not got:
                return  # the descriptor (or the loop's pump) says when more came
            for data, addr in got:
                self._protocol.datagram_received(data, addr)
            eng = self._eng
            if len(got) < 64 and eng is not None and eng.pending is None and eng.error is None:
                return  # the queue was empty (a short batch stops early only for an error)
            got = None
        self._loop.call_soon(self._read_ready)  # more than a turn's worth: the rest on the next

    def _fail(self, exc: BaseException) -> None:
        if not self._closing:
            self._closing = True
            self._loop.remove_reader(self._fd)
            self._loop.call_soon(self._lost, exc)

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._closing or not data:  # (as asyncio's: an empty datagram is not sent)
            return
        if self._remote is not None:
            if addr is not None and tuple(addr[:2]) != self._remote:
                raise ValueError(f"Invalid address: must be None or {self._remote}")
            addr = None
        elif addr is None:
            raise ValueError("Invalid address: must be None or a (host, port) pair")
        try:
            if addr is None:
                self._sock.send(data)
            else:
                self._sock.sendto(data, addr)
        except OSError as exc:
            self._protocol.error_received(exc)

    def get_write_buffer_size(self) -> int:
        return 0  # sent straight into the channel, never buffered here

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._loop.call_soon(self._lost, None)

    def abort(self) -> None:
        self.close()

    def _lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            if self._watcher is not None:
                _unwatch(self._eng, self._watcher)
            self._sock.close()


def _datagram_news(eng: Any) -> bool:
    """A datagram transport's watcher (`_Watcher.wants`, lock held): the loop that pumps `eng`
    has something for the protocol. Only while the loop pumps it: the stack thread's pumps set
    the socket's descriptor, which the transport watches too (once is enough)."""
    return eng.driver is not None and bool(eng.rxq or eng.pending is not None or eng.error is not None)


def _settled(eng: FlowEngine, conn: Any, what: str) -> Callable[[], bool]:
    """A `_until` condition: the connection is `what` ("readable"/"writable"), closed, or the engine failed."""
    return lambda: getattr(conn, what) or conn.state is CLOSED or eng.error is not None


def _nonblocking(sock: _us.socket, op: Callable[[], T]) -> T:
    """`op` on the socket as a non-blocking call: the loop must never wait in the socket's own wait."""
    t = sock.gettimeout()
    if t == 0.0:
        return op()
    sock.settimeout(0.0)
    try:
        return op()
    finally:
        sock.settimeout(t)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """asyncio's default policy whose loops are `EventLoop`s (usnet's TCP), as uvloop's policy is uvloop's."""

    def _loop_factory(self) -> EventLoop:
        return EventLoop()


def new_event_loop() -> EventLoop:
    """A new `EventLoop` (usnet's TCP on asyncio's selector loop)."""
    return EventLoop()


def install() -> None:
    """Make every new event loop an `EventLoop`: `asyncio.run(main())` then runs on usnet.

    The same as `asyncio.set_event_loop_policy(usnet.aio.EventLoopPolicy())`, as `uvloop.install()` is.
    """
    asyncio.set_event_loop_policy(EventLoopPolicy())
