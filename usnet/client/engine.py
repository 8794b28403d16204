"""The engine: the sans-I/O stack (usnet.proto) driven over flow channels.

Why a thread: TCP has to answer in time (ACKs, retransmissions, window
updates, keep-alives) whether or not the application is inside a socket call,
as the kernel does. One runner thread per process services every engine: it
sleeps on the channels' doorbells and on the earliest protocol deadline,
and applications' socket calls take the engine's lock, change the
connection's buffers, and wake the runner to send what became due.

One engine is one flow channel (a TCP listener, a bound socket's connection,
or a connector: every outgoing connection of the process on one netif and
family, `connector()`) with its own IP layer and TCP endpoint; the flow
switch only ever sees IP packets that match the flow, or the connector's
4-tuples, it registered. A flow is IPv4 or IPv6: the engine's
local address is then 4 or 16 bytes, and the IP layer and TCP follow it.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import heapq
import ipaddress
import itertools
import logging
import math
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from usnet.abi.protocol import Family, ProtocolError
from usnet.client import Client
from usnet.client.channel import WAIT_SLICE, Channel, ChannelError, NoBuffers, PeerGone, worker_gone_reason
from usnet.client.fdwatch import FdWatch
from usnet.client.portblocks import BLOCK, PortBlocks
from usnet.client.session import DomainGone, WorkerGone
from usnet.client.sigdefer import EngineLock, block_in_this_thread, step
from usnet.client.tcpstats import Publisher
from usnet.proto.errqueue import tcp_connect_report
from usnet.proto.icmp_errors import icmp4_tcp_ignores
from usnet.proto.ip import Datagram, IcmpError, IpLayer
from usnet.proto.route import Routes
from usnet.proto.tcp import TcpEndpoint, TcpState
from usnet.proto.wire import ecn
from usnet.proto.wire.ipv4 import not_unicast4
from usnet.proto.wire.ipv6 import not_unicast6
from usnet.proto.wire.tcp import TCP_HEADER, TcpParts
from usnet.runtime import gil

__all__ = ["EXIT_LINGER", "FlowEngine", "Readiness", "Runner", "Served", "broke", "connector", "delivered",
           "exiting", "park_at_exit", "runner"]

_SEQ = TCP_HEADER.off["seq"]  # where a quoted TCP header (an ICMP error's) holds its sequence number

log = logging.getLogger(__name__)
TCP = 6
RX_BATCH = 256
RING_SLOTS = 4096  # a TCP flow channel's TX and RX ring fill limit (see FlowEngine.__init__)
POOL_PACKETS = 4096  # its packet pool, as it opens (it may grow to the schema's max_packets)
EXIT_LINGER = 10.0  # seconds a normal interpreter exit waits for queued data and FINs to be acknowledged
# A connection whose FIN (and so every byte before it) the peer acknowledged, or that is over
_DELIVERED = (TcpState.CLOSED, TcpState.TIME_WAIT, TcpState.FIN_WAIT_2)


def _seg_key(dst: bytes, seg: Any) -> tuple[bytes, int, int]:
    """The endpoint's key (remote address, remote port, local port) of an outgoing segment."""
    h = seg.head if type(seg) is TcpParts else seg
    return (dst, (h[2] << 8) | h[3], (h[0] << 8) | h[1])


def _addr(a: bytes) -> str:
    try:
        return str(ipaddress.ip_address(a))
    except ValueError:
        return a.hex()


def broke(engine: Any, exc: Exception) -> None:
    """An exception escaped `engine`'s pump, whoever pumped it (the stack thread, an event loop,
    a blocked call): logged, and its calls fail with it (EIO for one that is no OSError); one
    broken engine stops none of the others. Takes the engine's lock (an RLock: may be held)."""
    log.warning("stack engine failed: %r", exc, exc_info=exc)
    with engine.lock:
        engine.error = exc if isinstance(exc, OSError) else OSError(errno.EIO, repr(exc))
        engine.notify()


def delivered(conn: Any) -> bool:
    """Whether nothing of `conn` waits any more: its data and FIN are acknowledged, or it failed."""
    return conn.state in _DELIVERED or conn.error is not None


_FILL = bytes(4096)  # more than a quarter of the least SO_SNDBUF: one send makes the descriptor unwritable


class Readiness:
    """A kernel descriptor whose poll state the stack sets: readable and writable, each on its own.

    A usnet socket has no kernel socket of its own, yet select, poll, epoll,
    selectors and asyncio all need a descriptor whose readiness is exactly the
    socket's: readable when recv/accept will not block, writable when send
    will not block, and neither while a connect is in progress. An eventfd
    cannot be "neither" (it is writable whenever it is not full), so this is
    one end (`fileno`) of an AF_UNIX stream pair: one byte from the other end
    makes it readable; a few kilobytes it sent and the other end has not read
    make it unwritable (Linux: writable while a quarter of SO_SNDBUF is free,
    and SO_SNDBUF is set to the least it takes). System calls happen only on
    a change, never per pump. Call `set`, `hang_up`, `clear_error` and `fileno`
    with the owner's lock held.

    A connection that is over shows POLLHUP, and POLLERR while its error is
    unread, as Linux's tcp_poll: `hang_up` closes the other end, which leaves
    this one readable (EOF), writable and hung up for good, and with a byte
    the other end had not read, with an error too (the AF_UNIX peer's close
    sets ECONNRESET on it, unix_release_sock) until `clear_error` reads it
    (SO_ERROR). An error that does not end the socket (IP_RECVERR's, an error
    queue entry) cannot be shown so, as it must go again: the socket is then
    readable and writable, which is what select shows of Linux's POLLERR and
    what selectors and asyncio make of it (design note "IP_RECVERR on TCP, local errors, POLLERR, ...").
    A datagram socket's error can be shown as Linux does (`DatagramReadiness`).

    The pair is made when `fileno` is first asked for, and shows the state kept
    until then: a program that only makes blocking calls never selects on its
    sockets, and pays neither two descriptors a socket (RLIMIT_NOFILE: a server
    holding 10,000 connections needed 20,000) nor two system calls a round trip.
    """

    __slots__ = ("_a", "_b", "_made", "hup", "readable", "writable")

    def __init__(self, readable: bool = False, writable: bool = False) -> None:
        self._a: socket.socket | None = None
        self._b: socket.socket | None = None
        self._made = -1
        self.readable, self.writable = readable, writable  # what the pair shows, once made
        self.hup = 0  # 1: hung up (`hang_up`); 2: and its error not yet read (POLLERR)

    @property
    def made(self) -> int:
        """The descriptor's number, -1 if nobody asked for it yet (none is made here); still the
        same after `close`, so that a socket object sharing it never takes it for one of its own
        (two threads closing two objects of one socket: the one that checks after the other
        closed the pair would close the number again, or another file that got it meanwhile)."""
        return self._made

    def fileno(self) -> int:
        if self._a is None:
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            a.setblocking(False)
            b.setblocking(False)
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the kernel makes it its least (4608)
            self._a, self._b = a, b
            self._made = a.fileno()
            readable, writable = self.readable, self.writable
            self.readable, self.writable = False, True  # what a new pair shows
            self.set(readable, writable)
            if self.hup:
                self._close_other(self.hup == 2)
        return self._a.fileno()

    def hang_up(self, error: bool) -> None:
        """The socket is over for good: POLLHUP (with POLLIN, POLLOUT), and POLLERR if `error`."""
        if self.hup:
            return
        self.hup = 2 if error else 1
        self.readable = self.writable = True  # by the close alone, all at once (no "r" first)
        if self._a is not None:
            self._close_other(error)

    def clear_error(self) -> None:
        """The error was read: POLLERR goes, POLLHUP stays."""
        if self.hup == 2:
            self.hup = 1
            if self._a is not None:
                self._a.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # clears the pair's sk_err

    def _close_other(self, error: bool) -> None:
        a, b = self._a, self._b
        if a is None or b is None:
            return
        if error:
            try:
                a.send(b"e")  # unread by b at its close: a gets ECONNRESET (POLLERR)
            except BlockingIOError:
                pass  # full: b has unread bytes already
        else:
            self._drain(b)  # nothing unread: a hang-up without an error
        b.close()
        self._b = None

    def set(self, readable: bool, writable: bool) -> None:
        a, b = self._a, self._b
        if a is None or b is None:
            self.readable, self.writable = readable, writable
            return
        if readable != self.readable:
            if readable:
                b.send(b"r")
            else:
                self._drain(a)
            self.readable = readable
        if writable != self.writable:
            if writable:
                self._drain(b)
            else:
                try:
                    a.send(_FILL)
                except BlockingIOError:
                    pass  # already full
            self.writable = writable

    @staticmethod
    def _drain(s: socket.socket) -> None:
        for _ in range(64):  # bounded: there are at most a few kilobytes
            try:
                if not s.recv(65536):
                    return
            except BlockingIOError:
                return

    def close(self) -> None:
        for s in (self._a, self._b):
            if s is not None:
                s.close()


_libc = ctypes.CDLL(None, use_errno=True)
_UNSPEC = ctypes.c_ushort(socket.AF_UNSPEC)  # a sockaddr of sa_family alone (Python's connect takes no AF_UNSPEC)


def _disconnect(s: socket.socket) -> None:
    """connect(AF_UNSPEC): an AF_UNIX datagram socket leaves its peer (unix_dgram_connect)."""
    if _libc.connect(s.fileno(), ctypes.byref(_UNSPEC), ctypes.sizeof(_UNSPEC)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class DatagramReadiness(Readiness):
    """A datagram socket's readiness: as `Readiness`, plus POLLERR that comes and goes.

    Linux's datagram_poll shows a pending error (an ICMP error on a connected UDP socket, an
    IP_RECVERR error queue entry) as EPOLLERR with EPOLLOUT and without EPOLLIN, until it is
    read; a program tells them apart: Twisted's epoll reactor takes EPOLLERR without EPOLLIN
    for a disconnection and stops the port (connectionRefused is not called). A stream pair
    can show POLLERR only once, at its end, so this is an AF_UNIX *datagram* pair: one
    datagram from the other end (`_b`) makes `fileno` (`_a`) readable; for the error `_a` sends
    a datagram to `_b` and `_b` disconnects (connect AF_UNSPEC, `_disconnect`) and connects back
    to `_a`'s name, which leaves `_a` with ECONNRESET pending (unix_dgram_disconnected: the peer
    that left had our datagram unread) until SO_ERROR reads it. `_a` is autobound (an abstract name) the first
    time, so `_b` can connect back. Always writable: a usnet datagram socket never blocks a
    send on its buffer (`DatagramFace._poll_state`).
    """

    __slots__ = ("_name", "error")

    def __init__(self, readable: bool = False) -> None:
        super().__init__(readable, True)
        self.error = False  # what the pair shows, once made
        self._name = b""  # `_a`'s name, once an error was shown

    def fileno(self) -> int:
        if self._a is None:
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            a.setblocking(False)
            b.setblocking(False)
            self._a, self._b = a, b
            self._made = a.fileno()
            readable, error = self.readable, self.error
            self.readable = self.error = False  # what a new pair shows
            self.set_error(readable, error)
        return self._a.fileno()

    def hang_up(self, error: bool) -> None:
        raise NotImplementedError("a datagram socket does not hang up")  # (a stream's only)

    def set(self, readable: bool, writable: bool) -> None:
        self.set_error(readable, self.error)

    def set_error(self, readable: bool, error: bool) -> None:
        """Readable when a datagram waits; POLLERR while an error is pending."""
        a, b = self._a, self._b
        if a is None or b is None:
            self.readable, self.error = readable, error
            return
        if readable != self.readable:
            if readable:
                b.send(b"r")
            else:
                if self.error:  # (a recv would read the error first, and clear it)
                    a.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    self.error = False
                self._drain(a)
            self.readable = readable
        if error != self.error:
            if error:
                self._raise_error(a, b)
            else:
                a.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # clears it
            self.error = error

    def _raise_error(self, a: socket.socket, b: socket.socket) -> None:
        if not self._name:
            a.bind("")
            self._name = a.getsockname()
        a.send(b"e")  # unread by b when it leaves: a gets ECONNRESET
        _disconnect(b)
        b.connect(self._name)


class FlowEngine:
    """One flow channel and the stack above it."""

    ch: Channel

    def __init__(self, client: Client, netif: str, local_port: int = 0,
                 remote: tuple[str, int] | None = None, family: Family = 0, share: FlowEngine | None = None,
                 is_connector: bool = False, reuse_port: bool = False, worker: int = 0, **tcp_options: Any) -> None:
        """`family` 4 or 6 (0: the remote address's, IPv4 for a listener). `share`: another engine of
        the same socket, whose lock, condition and watchers this one uses, so one wait and one
        readiness serve both (a wildcard listener's loopback half, a dual-stack socket's IPv4 flow:
        usnet.client.socket); of the same family, it is on another netif and this one holds its
        port too. `reuse_port`: SO_REUSEPORT (`P.OpenFlow.reuse_port`). `worker`: a connector's
        usnetd worker (`P.OpenFlow.worker`)."""
        self.client = client
        # the same port on another netif, in the same family (a dual-stack socket's IPv4 flow holds
        # IPv4's port of its own: the families' ports are apart, as in Linux)
        sibling: int = 0 if share is None or share.family != family else share.ch.id
        # The rings' whole capacity (they are allocated with 4,096 slots whatever their fill limit,
        # docs/design-notes.md "Ring resize changes a fill limit"): a listener's or a connector's
        # channel carries every connection of it, and a burst (a thousand handshakes and resets
        # while this process's stack thread waits for the GIL) overran 1,024 slots: usnetd dropped
        # segments (rx_client_full), a handshake's last ACK among them, and an accept waited a
        # second for the SYN-ACK's retransmission. Linux's listener takes such a burst.
        if is_connector:
            self.ch, self.info = client.open_connector(netif, family or 4, worker, ring_size=RING_SLOTS,
                                                       packets=POOL_PACKETS)
        else:
            self.ch, self.info = client.open_flow(netif, TCP, local_port, remote, family=family,
                                                  with_channel=sibling, reuse_port=reuse_port,
                                                  ring_size=RING_SLOTS, packets=POOL_PACKETS)
        self.ch.setblocking(False)
        self.family: Family = self.info.family
        self.local = ipaddress.ip_address(self.info.local_addr).packed
        self.ip = IpLayer([self.local], mtu=self.info.mtu)
        tcp_options.setdefault("gather", True)  # data segments as parts, written into packets (`_transmit`)
        if self.info.gso_max:  # the netif segments: TCP may hand it super-segments
            tcp_options.setdefault("gso_max", self.info.gso_max - (20 if len(self.local) == 4 else 40))
        port = self.info.local_port
        self.tcp = TcpEndpoint(self.local, mtu=self.info.mtu, port_chooser=lambda a, p: port, **tcp_options)
        # The fault barrier (docs/design-notes.md, issue 16): an exception in one connection's work
        # aborts that connection alone (TcpEndpoint.fault); those aborted since the last notify
        # are told then (`pump`, `kick`). A fault no connection owns still fails the engine.
        self.tcp.on_fault = self._faulted_conn
        self._faulted: list = []
        self.is_connector = is_connector
        # a connector's blocks of ephemeral ports (usnet.client.portblocks): a connect takes one
        # with no message; TCP forgetting a connection (CLOSED, or TIME-WAIT over) frees it
        self.ports: PortBlocks | None = PortBlocks() if is_connector else None
        # a connector of usnetd's worker k > 0 hears of a release through usnetd, not from this
        # channel's own control socket: its releases are requests, waited for before a port is reused
        self.relayed = is_connector and worker > 0
        self._block_lock = threading.Lock()  # one AddPorts at a time
        self._next_return = 0.0  # when a connector next looks for idle blocks to give back
        if is_connector:
            self.tcp.on_forget = lambda c: self._port_free(c.local_port)
            self.routes = Routes.for_flow(self.info.local_addr, self.info.prefix, self.info.gateway)
            self._bcast = self.routes.broadcast4  # no peer has it, as the switch judges it
        self.lock: Any = EngineLock() if share is None else share.lock  # signals wait for its release
        # notified after every pump
        self.changed: threading.Condition = self.lock.condition() if share is None else share.changed
        # (IP packet, cut: 0 or a super-segment's segment payload) the TX ring had no room for
        self._backlog: list[tuple[bytes, Any, int]] = []  # (packet or headers, payload view or None, cut)
        self.closed = False
        self.gone = threading.Event()  # closed, and its channel too: the domain has heard
        self.error: OSError | None = None  # the channel itself failed (defunct, domain gone)
        self.watchers: set = set() if share is None else share.watchers  # usnet sockets to signal after each pump
        # watchers of a listener's accept queues (usnet.aio's servers): signalled after a pump only if
        # this engine's queues moved (`TcpEndpoint.accept_moves`) since it last told them, or it failed
        self.accept_watchers: set = set() if share is None else share.accept_watchers
        self._accepts_told = 0
        # watchers of one connection each (usnet.aio's transports): signalled after a pump only if
        # a segment reached that connection, or if something may have changed any (a timer, an error)
        self.conn_watchers: dict[Any, set] = {}
        self._touched: set | None = set()  # the connections this pump's segments reached; None: any
        self._now = 0.0  # the latest clock TCP was given (`pump`, `kick`): it never goes back
        self.release_when_idle = False  # its sockets closed: go once the connections have
        # Who pumps it: None, the stack thread (Runner); or an event loop's driver (usnet.aio), which
        # pumps it in the loop's own thread, so that a request costs no wake-up of another thread.
        self.driver: Any = None
        self.pinned = False  # went back to the stack thread for good (a blocking call used it)
        self._bell_poll: Any = None  # a poll object on the doorbell, for a blocked call that pumps (`pump_wait`)
        self.pumper: int | None = None  # the thread (ident) that pumps it while it waits, if one does
        # no other engine shares its lock and condition (a listener's halves do): only such an engine
        # is pumped by a blocked call, which then hears every arrival its waiters wait for
        self.alone = share is None
        if share is not None:
            share.alone = False
        # each connection's statistics, published in the channel for `usnet ss` (usnet.client.tcpstats)
        self.stats_out: Publisher | None = None
        if self.ch.tcpinfo is not None:
            try:
                self.stats_out = Publisher(self.ch.tcpinfo, self.family)
            except ValueError:
                pass  # a region this library cannot write: no figures for `usnet ss`, nothing else lost

    def watch(self, w: Any, conn: Any = None, accepts: bool = False) -> None:
        """Signal `w` after every pump, or (`conn`) after the pumps that reached that connection,
        or (`accepts`) after the pumps that moved the accept queues: a pump costs the connections
        it touched, not every socket, nor a listener's look at its queues. With the lock held."""
        if accepts:
            self.accept_watchers.add(w)
        elif conn is None:
            self.watchers.add(w)
        else:
            self.conn_watchers.setdefault(conn, set()).add(w)

    def unwatch(self, w: Any, conn: Any = None, accepts: bool = False) -> None:
        """Undo `watch` (the same `conn`, `accepts`). With the lock held."""
        if accepts:
            self.accept_watchers.discard(w)
        elif conn is None:
            self.watchers.discard(w)
        elif (ws := self.conn_watchers.get(conn)) is not None:
            ws.discard(w)
            if not ws:
                del self.conn_watchers[conn]

    def wake(self, wait: bool = False) -> None:
        """Have what a socket call queued (data, a FIN, a window update) sent soon, by whoever pumps
        this engine. `wait`: the caller is about to block on `changed`; only the stack thread serves
        a blocked caller whatever the loops do, so such an engine goes back to it for good."""
        if self.closed and self.error is not None:
            return  # failed and closed (a parent's, in a child of fork()): nobody pumps it
        d = self.driver
        if d is None:
            runner().wake(self)
        else:
            d.wake(self, wait)

    def kick(self) -> None:
        """Send what a socket call just queued, from the calling thread (not under the lock).

        Why here and not by the stack thread: handing it over costs an eventfd write, a wake-up
        of that thread, the GIL twice and a pass over every engine, for the same segments (a
        request/response is a third slower for it). The runner is woken only if it must be: a
        backlog the channel did not take, or a timer sooner than the one it sleeps towards. An
        engine an event loop pumps is that loop's to serve (`wake`).

        Nothing queued is seen before the lock and costs no lock section (~5 calls; a signal
        mask pair when the main thread holds nothing else): half the kicks of a connect, those
        of a blocked call's first wait (`socket._wait`), find nothing (issue 18). The read needs
        no lock: what this thread queued stays in `due` until a pump takes it, under the lock,
        and that pump hands it to the channel before it lets the lock go.
        """
        if self.driver is not None:
            self.wake()
            return
        if not self._backlog and not self.tcp.pending():
            return  # nothing queued, no deadline moved: the runner's schedule is still right
        r = runner()
        with self.lock:
            if self.closed or self.error is not None:
                return
            if not self._backlog and not self.tcp.pending():
                return  # nothing queued, no deadline moved: the runner's schedule is still right
            self._now = now = max(time.monotonic(), self._now)
            try:
                self._transmit(now)
            except (ChannelError, PeerGone) as e:
                self.error = e
                self.notify()
                return
            if self._faulted:  # a connection's segment faulted (`_wrap`): its callers hear now
                touched = set(self._faulted)
                self._faulted.clear()
                self.notify(touched)
            r.schedule(self, self.deadline(now))  # under the lock: no pass can set an older one after it

    def delivered(self) -> bool:
        """Every connection has its data and FIN acknowledged (or is over), nothing waits to go."""
        return self.error is not None or (
            not self._backlog and all(delivered(c) for c in self.tcp.connections.values()))

    def close_all(self, now: float) -> None:
        """What the kernel does to a process's sockets when it exits: listeners stop (their
        unaccepted connections are reset), each connection closes (FIN after its data; RST
        if received data is left unread, or if its socket asked for that with SO_LINGER 0).
        With the lock held."""
        for w in list(self.watchers):
            conn = getattr(w, "connection", None)
            if conn is not None and getattr(w, "abort_on_close", False):
                conn.abort(now)
        for port in list(self.tcp.listeners):
            self.tcp.unlisten(port, now)
        for c in list(self.tcp.connections.values()):
            c.close(now)
        self.release_when_idle = True

    def idle(self) -> bool:
        """Nothing left to do: every connection closed (or waiting out TIME-WAIT), nothing queued."""
        return not self._backlog and not self.tcp.listeners and all(
            c.state in (TcpState.CLOSED, TcpState.TIME_WAIT) for c in self.tcp.connections.values())

    def fileno(self) -> int:
        return self.ch.doorbell_fd

    def pump(self, now: float, receive: bool = True) -> None:
        """Receive, run timers, send; then tell waiting socket calls. Call with the lock held.

        `receive` False: no look at the RX ring, for a pump right behind one whose receive ended
        on an empty ring in the same loop callback (usnet.aio's `_LoopDriver._serve`: the pump
        that sends the answers its callbacks wrote). Lossless: that empty receive armed
        NEED_WAKEUP, so whatever arrived since has rung the doorbell, which the loop reads; the
        look would have cost an empty `Channel.recv` (ten calls and a BlockingIOError)."""
        if self.closed or self.error is not None:
            return
        # Time never goes back for TCP: the runner reads its clock before it waits for this lock,
        # which a socket call may hold while it sends (`kick`) with a later one; a segment sent
        # with the older clock would carry an older timestamp than the one before it, and the
        # peer's PAWS drops it (RFC 7323 section 5): a handshake's last ACK, and a second's stall.
        if now < self._now:
            now = self._now
        self._now = now
        cw = self.conn_watchers
        # the connections user calls gave output to: sending it changes only what a watcher that
        # says `after_send` reads (`notify`); the ones segments, timers or faults reach, `touched`
        calls = tuple(self.tcp.due) if cw else ()
        touched = self._touched = set() if cw else None
        try:
            if receive:
                self._receive(now)
            t = self.tcp.timeout(now)
            if t is not None and t <= now:
                fired = self.tcp.on_timer(now)
                if touched is not None:
                    touched.update(fired)
            self._take_output(now)
        except (ChannelError, PeerGone) as e:
            self.error = e
            self._touched = None
        touched, self._touched = self._touched, None
        if self._faulted:
            if touched is not None:
                touched.update(self._faulted)
            self._faulted.clear()
        if self.ports is not None and now >= self._next_return:
            self._return_idle_blocks(now)
        if self.stats_out is not None and self.error is None:
            self.stats_out.publish(self.tcp, now)
        # The sockets are told before the segments leave, not after: what TCP has sent is in its
        # books now (its unsent count, TCP_NOTSENT_LOWAT's writability), and once the segments
        # are on the channel the peer can have them, and answer, before this thread is scheduled
        # again; a readiness told after that is stale meanwhile. Linux's tcp_poll reads the
        # books when asked (docs/design-notes.md, "the TCP_NOTSENT_LOWAT test's stall").
        self.notify(touched, calls, pumped=True)
        if self._backlog and self.error is None:
            try:
                self._hand_over()
            except (ChannelError, PeerGone) as e:
                self.error = e
                self.notify()

    def pump_wait(self, left: float | None) -> None:
        """A blocked socket call waits by pumping the engine itself (it borrowed the doorbell from
        the runner: `Runner.borrow`): it sleeps on the doorbell (and the engine's deadline, at most
        `left`, at most WAIT_SLICE), then pumps. With the lock held, as `changed.wait`, which it
        stands for: the lock is let go while it sleeps.

        Why: handing each arrival over from the stack thread to the caller costs a doorbell wake of
        the stack thread, the GIL and a Condition notify/wait (a futex wake of the caller) on every
        exchange; a connect, recv and close cost three of them. Here the thread that waits for the
        segment is the one the domain's doorbell wakes. No lost wake-up: the doorbell is drained
        before the pump, whose empty receive arms NEED_WAKEUP, and what rings after that stays in
        the pipe for whoever sleeps on it next (this call, or the runner once it is given back)."""
        if self.closed or self.error is not None or self.ch.closed:
            self.changed.wait(left)  # nobody pumps it any more (an orphaned listener's waits for its rebind)
            return
        now = time.monotonic()
        t = WAIT_SLICE if left is None else max(0.0, min(left, WAIT_SLICE))
        # The engine's deadline as last scheduled, not computed again (issue 18: it was computed
        # twice a wait, here and after the pump below): every change of it is scheduled with the
        # lock held, after whatever made it (this call's pumps, `kick`, the runner's passes), and the
        # runner sleeps towards the same figure, so a wait bounded by it wakes no later than the
        # runner would have for this engine's timers.
        r = runner()
        d = r._due.get(self)  # (a dict read: no lock; the runner's own table, in line)
        if d is not None:
            t = max(0.0, min(t, d - now))
        p = self._bell_poll
        if p is None:
            p = self._bell_poll = select.poll()
            p.register(self.ch.doorbell_fd, select.POLLIN)
        saved = self.changed._release_save()  # type: ignore[attr-defined]  # as Condition.wait
        try:
            rung = p.poll(t * 1000.0)
        finally:
            self.changed._acquire_restore(saved)  # type: ignore[attr-defined]
        # Drained under the lock, once it is known to be open: a close sets `closed` under the
        # lock before its descriptors go, and a number closed meanwhile may be another file's now.
        if self.closed or self.error is not None or self.ch.closed:
            return
        if rung:
            self.ch.drain_doorbell()
        now = time.monotonic()
        try:
            self.pump(now)
        except Exception as exc:  # as the runner: a broken engine fails its calls, not this thread's caller alone
            broke(self, exc)
            return
        r.schedule(self, self.deadline(now), wake=False)  # the runner hears of it when given back

    def take_port(self, raddr: bytes, rport: int) -> int:
        """A connector's: a free port of its blocks for a connection to (`raddr`, `rport`), with no
        message; a new block (one control round trip) only when every port is in use. Out of
        blocks (the limits, or the range): EADDRNOTAVAIL (the switch binds each port to one
        4-tuple at a time, so no port is shared). Without the lock held."""
        assert self.ports is not None
        self._check_remote(raddr, rport)
        with self.lock:
            p = self.ports.take()
            if p is None and self.ports.bound and not self.relayed:  # the ports whose connections are over
                self._release()
                p = self.ports.take()
        if p is not None:
            return p
        with self._block_lock:
            with self.lock:
                p = self.ports.take()  # another thread's block may have come meanwhile
                gone = self.ports.unbinding() if p is None and self.relayed else []
            if gone:  # released by a request, waited for: the SYN that reuses one goes after it
                try:
                    self.client.release_ports(self.ch.id, gone, wait=True)
                except (OSError, ProtocolError) as e:
                    with self.lock:
                        self.ports.bound[:0] = gone
                    raise OSError(errno.EADDRNOTAVAIL, f"no local port left for a connection: {e}") from e
                with self.lock:
                    self.ports.released(gone)
                    p = self.ports.take()
            if p is not None:
                return p
            try:
                block, got = self.client.add_ports(self.ch.id, BLOCK)
            except OSError as e:
                raise OSError(errno.EADDRNOTAVAIL, f"no local port left for a connection: {e}") from e
            with self.lock:
                self.ports.add(block, got, time.monotonic())
                p = self.ports.take()
        if p is None:  # the domain granted an empty block: cannot happen, never loop on it
            raise OSError(errno.EADDRNOTAVAIL, "no local port left for a connection")
        return p

    def port_at_hand(self) -> bool:
        """`take_port` would find a port without waiting for the domain (a free one, or freed ones
        it can release with a notice): a connect may take it inside its one signal hold
        (socket._connect). Read without the lock: a guess, which another thread's connect can
        make stale (its `take_port` then waits for a block inside the hold: rare, and still right)."""
        ports = self.ports
        return ports is not None and (ports.has_free() or (bool(ports.bound) and not self.relayed))

    def _check_remote(self, raddr: bytes, rport: int) -> None:
        """What the switch would refuse anyway (it checks every packet), said at once as Linux's
        connect says it: no peer can have that address, or no route reaches it."""
        if raddr != self.local:
            if len(raddr) == 4:
                bad = bool(not_unicast4(int.from_bytes(raddr, "big"))) or raddr == self._bcast
            else:
                bad = not_unicast6(raddr)
            if bad or not self.routes.reaches(raddr):
                raise OSError(errno.ENETUNREACH, "Network is unreachable")
        if rport == 0:
            raise OSError(errno.ECONNREFUSED, "Connection refused")

    def _port_free(self, port: int) -> None:
        """TCP forgot a connector's connection (with the lock held): its port, bound in the switch
        to the connection's 4-tuple since its SYN, is free once the domain is told (`_release`:
        when a connect finds no other port free, or within a second)."""
        if self.ports is not None:
            self.ports.free(port, time.monotonic(), bound=True)

    def _release(self) -> None:
        """Tell the domain the bound free ports' connections are over (one P.ReleasePorts, a
        notice: no waiting); they can be taken again. The notice leaves before any SYN that reuses
        one of them, which the switch would otherwise refuse as sent from a port bound to another
        4-tuple (the domain reads pending releases before it refuses: usnet.domain.loop
        `_catch_up`). With the lock held."""
        assert self.ports is not None
        self.client.release_ports(self.ch.id, self.ports.unbound())

    def port_unused(self, port: int) -> None:
        """A port `take_port` gave whose connection never began (its connect failed before a SYN
        could leave): free at once, nothing to release."""
        with self.lock:
            if self.ports is not None:
                self.ports.free(port, time.monotonic())

    def _return_idle_blocks(self, now: float) -> None:
        """Give back the blocks whose ports have all been free a while (a notice: no waiting)."""
        assert self.ports is not None
        self._next_return = now + 1.0
        if self.ports.bound and not self.relayed:  # (a relayed one's: when a connect needs them, `take_port`)
            self._release()  # before a block goes: its ports are still this channel's
        for b in self.ports.idle(now):
            self.ports.drop(b)
            self.client.return_ports(self.ch.id, b)

    def notify(self, touched: set | None = None, calls: tuple = (), pumped: bool = False) -> None:
        """Tell the sockets (selectors, asyncio) and the blocked socket calls. With the lock held.
        `touched`: only these connections' own watchers (`conn_watchers`) can have news; None: any.
        `calls`: connections the pump only sent for (what user calls queued): a send changes no
        received data, state or error, only the unsent count (TCP_NOTSENT_LOWAT's writability), so
        only the watchers that read it hear (a socket's readiness: `after_send`; any watcher of a
        connection under TCP_NOTSENT_LOWAT, whose send space it is). usnet.aio's transport is
        signalled so once a request (its answer's pump) for nothing: its `_wants` reads no unsent count.
        `pumped`: after this engine's pump, whose accept queues, unless they moved, are as they were
        when `accept_watchers` were last told (any other notice tells them)."""
        for w in self.watchers:
            w._signal()
        aw = self.accept_watchers
        if aw:
            moves = self.tcp.accept_moves
            if not pumped or moves != self._accepts_told or self.error is not None:
                self._accepts_told = moves
                for w in aw:
                    w._signal()
        cw = self.conn_watchers
        if cw:
            if touched is None:
                for ws in cw.values():
                    for w in ws:
                        w._signal()
            else:
                for c in touched:
                    for w in cw.get(c, ()):
                        w._signal()
                for c in calls:
                    if c not in touched:
                        for w in cw.get(c, ()):
                            if c.notsent_lowat or getattr(w, "after_send", True):
                                w._signal()
        # Nobody waits on `changed` under an asyncio loop or a selector: notify_all would still
        # cost three Python calls a pump (its ownership check, notify), for nothing.
        if self.changed._waiters:  # type: ignore[attr-defined]  # (as pump_wait's _release_save)
            self.changed.notify_all()
        p = self.pumper
        if p is not None and p != threading.get_ident():
            # a blocked call sleeps on the doorbell, not on `changed`: ring it (rare: the runner's
            # timers, another thread's call; the pumper's own pumps need not)
            try:
                self.ch.ring_own_bell()
            except OSError:
                pass

    def _receive(self, now: float) -> None:
        ch = self.ch
        while True:
            pkts = ch.recv_ready(RX_BATCH)  # [] once empty, NEED_WAKEUP armed
            if not pkts:
                return
            try:
                copies = ch.copies(pkts)
            finally:
                ch.free(pkts)  # raises if the channel went defunct while we copied (zeros, not data)
            self._ip_events(self.ip.input_all(copies, now), now)  # the batch's packets, then their events
            # No early return on a short batch: only the empty recv that ends this loop
            # arms NEED_WAKEUP, and without it the domain would not ring the doorbell the
            # runner is about to sleep on (a lost wake-up whenever no timer is pending).

    def _ip_events(self, events: list, now: float) -> None:
        for ev in events:
            if type(ev) is Datagram:
                if ev.proto == TCP:
                    c = self.tcp.input(ev.src, ev.dst, ev.payload, now, ecn.ecn(ev.packet) == ecn.CE)
                    if c is not None and self._touched is not None:
                        self._touched.add(c)
            elif (type(ev) is IcmpError and ev.proto == TCP and len(ev.quote) >= _SEQ + 4
                  and ev.remote_port is not None and ev.local_port is not None  # None: no ports quoted
                  and not (len(ev.remote) == 4 and icmp4_tcp_ignores(ev.icmp_type, ev.icmp_code))):
                conn = self.tcp.connections.get((ev.remote, ev.remote_port, ev.local_port))
                if conn is not None:
                    connecting = conn.state is TcpState.SYN_SENT
                    try:
                        # a sequence number in flight: only then does a frag-needed lower the path MTU
                        taken = conn.icmp_error(ev.errno, int.from_bytes(ev.quote[_SEQ : _SEQ + 4], "big"))
                    except Exception as exc:  # the barrier: that connection's fault
                        self.tcp.fault(conn, exc, now)
                        taken = False
                    if taken and connecting and conn.error is not None and (len(ev.remote) == 4 or conn.cfg.recverr):
                        # the connect it ended leaves it on the error queue: tcp_v4_err's ip_icmp_error
                        # always, tcp_v6_err's ipv6_icmp_error with IPV6_RECVERR
                        conn.error_report = tcp_connect_report(
                            ev.errno, ev.icmp_type, ev.icmp_code, ev.reporter, ev.local, ev.local_port, ev.remote,
                            ev.remote_port, ev.quote)
                    if taken and ev.mtu:
                        self.ip.lower_pmtu(ev, now)
                    if self._touched is not None:
                        self._touched.add(conn)

    def _transmit(self, now: float) -> None:
        """TCP's output wrapped (`_take_output`) and handed to the channel (`_hand_over`)."""
        self._take_output(now)
        if self._backlog:
            self._hand_over()

    def _take_output(self, now: float) -> None:
        """TCP's output, wrapped into IP packets, onto the backlog: only once the channel took the
        last burst (below). TCP counts it sent from here."""
        out = self._backlog
        if not out:
            # Ask TCP for more only once the channel took the last burst: what waits
            # here has left TCP's books as sent, so a queue here would read as path
            # delay (RTT, RTO) and retransmit into itself. Held back, it waits in TCP.
            # A data segment comes as TcpParts (TcpConfig.gather): its IP header and TCP
            # header go into the packet first and its payload, a view of the send buffer,
            # is copied once, behind them, instead of being joined twice on the way.
            # `ect` is the ECN codepoint ORed with the connection's IP_TTL/IP_TOS mark
            # (usnet.proto.ipmark): the IP layer's header templates are keyed by it.
            faulted = self._wrap(self.tcp.outgoing(now), out, now)
            if faulted:
                self._wrap(self.tcp.outgoing(now), out, now)  # the faulted connections' RSTs

    def _hand_over(self) -> None:
        """The backlog's packets into the channel's buffers and onto its TX ring, as many as it
        takes; the rest waits, as bytes, for the next pump."""
        out = self._backlog
        ch = self.ch
        sent = 0
        total = len(out)
        while sent < total:
            try:
                pkts = ch.alloc(total - sent, 0)
            except (BlockingIOError, NoBuffers):
                break  # no buffers now: the rest waits for the next pump
            for p, (data, payload, cut) in zip(pkts, out[sent:] if sent else out):
                if payload is None:
                    ch.write(p, data, cut)
                else:
                    ch.write_parts(p, data, payload, cut)
            try:
                done = ch.send(pkts, 0)
            except BlockingIOError:
                done = 0
            sent += done
            if done < len(pkts):
                ch.give_back(pkts[done:])
                break
        # What waits outlives this call: its payload views could be overwritten once the
        # send buffer's bytes are acknowledged and reused, so it waits as bytes.
        self._backlog = [(d if pl is None else d + pl, None, cut) for d, pl, cut in out[sent:]] if sent < total else []

    def _wrap(self, segs: list, out: list, now: float) -> bool:
        """Put TCP's segments (`TcpEndpoint.outgoing`) into IP packets on `out`; True if one of them
        faulted. The barrier: a segment the IP layer refuses (EMSGSIZE for one over the path MTU)
        or whose wrapping raises aborts its connection alone (`TcpEndpoint.fault`), and that
        connection's later segments in the batch are dropped; the others go on. One try per
        segment: free in CPython 3.11 until something raises."""
        output, head, local = self.ip.output, self.ip.head, self.local
        faulted: set | None = None
        for dst, seg, cut, ect in segs:
            try:
                if faulted is not None and _seg_key(dst, seg) in faulted:
                    continue
                if type(seg) is TcpParts:
                    # (its two parts' lengths, not `len(seg)`: TcpParts.__len__ is a Python call)
                    h = head(TCP, local, dst, len(seg.head) + len(seg.payload), now, tos=ect, segmented=bool(cut))
                    if h is not None:
                        out.append((h + seg.head, seg.payload, cut))
                        continue
                    seg = bytes(seg)  # to be fragmented
                if cut:
                    out.append((output(TCP, local, dst, seg, now, tos=ect, segmented=True)[0], None, cut))
                else:
                    for pkt in output(TCP, local, dst, seg, now, tos=ect):
                        out.append((pkt, None, 0))
            except Exception as exc:
                if faulted is None:
                    faulted = set()
                faulted.add(self._segment_fault(dst, seg, exc, now))
        return faulted is not None

    def _segment_fault(self, dst: bytes, seg: Any, exc: Exception, now: float) -> tuple:
        """Wrapping `seg` for `dst` raised: abort its connection (found by the segment's ports).
        Returns its 4-tuple key. A segment of no connection (the endpoint's own RST) is the
        engine's fault: `exc` goes on up, as before the barrier."""
        key = _seg_key(dst, seg)
        conn = self.tcp.connections.get(key)
        if conn is None:
            raise exc
        self.tcp.fault(conn, exc, now)
        return key

    def _faulted_conn(self, conn: Any, exc: BaseException) -> None:
        """TcpEndpoint.on_fault: `conn` was aborted alone after `exc`; logged once, its waiters told
        after this pump (`pump`, `kick`)."""
        log.warning("usnet: connection %s:%d -> %s:%d aborted (ECONNABORTED, RST sent if it could be): "
                    "%r escaped its processing; the other connections go on",
                    _addr(self.local), conn.local_port, _addr(conn.remote_addr), conn.remote_port, exc,
                    exc_info=exc)
        self._faulted.append(conn)

    def deadline(self, now: float) -> float | None:
        """When this engine next needs the runner, absent traffic."""
        if self._backlog:
            return now + 0.0005
        # (compared in line, not through a tuple and min over a generator: this runs after
        # every pump of an asyncio loop, twice a request)
        d = self.tcp.timeout(now)  # the IP layer has no timers: the switch reassembles
        if self.stats_out is not None:
            t = self.stats_out.due()
            if t is not None and (d is None or t < d):
                d = t
        ports = self.ports
        if ports is not None and (ports.bound or ports.idle_since):
            # a connector's freed ports to release, or an idle block to give back
            t = self._next_return
            if d is None or t < d:
                d = t
        return d

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.changed.notify_all()
        try:
            self.ch.close()
        except OSError:
            pass  # the domain is gone already: nothing left to tell it
        self.gone.set()


class Served(Protocol):
    """What the stack thread serves: a FlowEngine, or a UDP socket's flow (usnet.client.dgram)."""

    lock: Any
    client: Any  # its Client: a hang-up of that client's control socket fails it
    error: OSError | None
    release_when_idle: bool
    ch: Any  # its channel: the runner drains the doorbell it sleeps on

    def pump(self, now: float) -> None: ...
    def deadline(self, now: float) -> float | None: ...
    def idle(self) -> bool: ...
    def fileno(self) -> int: ...
    def notify(self) -> None: ...
    def close(self) -> None: ...


class Runner:
    """The process's stack thread: services every engine, sleeps on doorbells and deadlines."""

    def __init__(self) -> None:
        gil.short_switch_interval()  # the stack thread shares the GIL with the application's
        self._sel = FdWatch()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poked = False  # the eventfd was written since the runner's pass began: no need again
        self._sel.register(self._wake, "wake")
        # The control sockets of the clients our engines use, watched for a hang-up only
        # (mask 0: EPOLLHUP/EPOLLERR): a killed usnetd says nothing else, and its doorbells
        # then read as always ready, so its engines must fail and leave at once.
        self._hup = select.epoll()
        self._sel.register(self._hup.fileno(), "hup")
        self._watched: dict[int, Client] = {}  # domain_fd -> client
        # what else wants to hear of a client's hang-up (`on_hangup`)
        self._hangup: weakref.WeakKeyDictionary[Client, list[Callable[[], None]]] = weakref.WeakKeyDictionary()
        # the liveness fds of engines whose flow a worker of `usnetd --workers` serves (Channel.alive_fd),
        # in the same epoll: a hang-up says that worker died, and fails that engine alone
        self._alive: dict[int, Served] = {}
        self._alive_told: dict[int, Callable[[], None]] = {}  # liveness fds without an engine (`on_worker_gone`)
        self.engines: set[Served] = set()
        # What a pass pumps, so that its cost does not grow with the engines a process has: those
        # whose doorbell rang or that were woken (`_ready`), and those whose timer is due (`_timers`,
        # a heap of (deadline, n, engine); an entry is live while it is `_due[engine]`'s).
        self._ready: set[Served] = set()
        self._timers: list[tuple[float, int, Served]] = []
        self._due: dict[Served, float] = {}
        self._seq = itertools.count()
        self.pumps = 0  # engine pumps so far: what tests count to show a pass is not O(engines)
        # engines an event loop pumps (FlowEngine.driver): the runner only watches their client's hang-up
        self.lent: set[FlowEngine] = set()
        # engines whose doorbell a blocked socket call sleeps on and pumps itself (`borrow`)
        self._borrowed: set[Served] = set()
        self.borrows = 0  # doorbells lent to blocked calls so far: what tests count to see they pump
        self._lock = threading.Lock()
        self._stopping = False
        # When the runner's sleep ends by itself (monotonic), read and written under `_lock`:
        # infinity while it sleeps with no deadline, so that a deadline set then wakes it;
        # minus infinity during a pass until the pass reads the deadlines (`_next_deadline`),
        # which sees any set before, so that a deadline set then wakes nobody (issue 18: a
        # connect's kicks woke the runner for another pass of every engine, ~0.3 a connect).
        self.wake_at = math.inf
        # A daemon thread, so that a connection that cannot finish never keeps the process
        # alive; a normal exit drains first instead (`drain`, run by atexit).
        self._thread = threading.Thread(target=self._run, name="usnet-stack", daemon=True)
        self._thread.start()

    def drain(self, linger: float = EXIT_LINGER) -> bool:
        """At interpreter exit: close every connection the program left open, as the kernel
        closes a process's sockets, and wait up to `linger` seconds in all until each one's
        queued data and FIN are acknowledged. What is left then is reset (the peer gets a RST,
        never silence), and the stack stops. True if everything was delivered in time.
        """
        until = time.monotonic() + linger
        with self._lock:
            lent = list(self.lent)
        for e in lent:  # at exit no loop runs: the runner takes them back to finish them
            e.driver = None
            self.add(e)
        with self._lock:
            engines = [e for e in self.engines if isinstance(e, FlowEngine)]  # TCP: datagrams need no drain
        for e in engines:
            with e.lock:
                e.close_all(time.monotonic())
        self.wake()
        ok = True
        for e in engines:
            with e.lock:
                while not e.delivered():
                    left = until - time.monotonic()
                    if left <= 0:
                        ok = False
                        break
                    e.changed.wait(min(left, 0.1))
        if not ok:
            for e in engines:
                with e.lock:
                    now = time.monotonic()
                    for c in list(e.tcp.connections.values()):
                        if not delivered(c):
                            c.abort(now)
        self._stopping = True
        self.wake()
        self._thread.join(1.0)
        # What is queued and no pass sent goes now, from this thread: the runner may have stopped
        # before its next pass. An aborted connection (data left unread, SO_LINGER 0, or above)
        # is over at once, so nothing waited for its RST to leave, and a close another thread
        # made just before (a fork's splice letting its reference go) only woke the runner.
        for e in engines:
            with e.lock:
                e.pump(time.monotonic())
        return ok

    def disown(self, why: OSError) -> None:
        """In a child of fork(): every engine this (dead) runner served fails with `why`, on a
        lock of its own (a thread of the parent may have held the old one at the fork), and the
        runner's own descriptors close. Nothing is sent: the engines are the parent's."""
        for served in [*self.engines, *self.lent]:
            e: Any = served
            if not hasattr(e, "changed"):
                continue  # a loopback half: its datagram engine is served here too, and fails
            e.lock = EngineLock()
            e.changed = e.lock.condition()
            e.error = why
            e.closed = True
        self.engines.clear()
        self.lent.clear()
        self._sel.close()
        self._hup.close()
        os.close(self._wake)

    def add(self, engine: Served) -> None:
        with step, self._lock:  # (the watch list whole whatever a handler raises: usnet.client.sigdefer)
            self._watch_client(engine.client)
            self.engines.add(engine)
            if engine in self.lent:
                self.lent.discard(engine)
            self._borrowed.discard(engine)  # registered again below: a borrower's give_back then has nothing to undo
            fd = engine.fileno()
            stale = self._sel.get(fd)
            if stale is not engine:  # (added again: a listener's flow taken over)
                if stale is not None:  # a closed engine's number, reused by the kernel
                    self.engines.discard(stale)
                    self._due.pop(stale, None)
                    self._sel.unregister(fd)
                self._sel.register(fd, engine)
            self._watch_alive(engine)
        self.wake(engine)

    def _watch_client(self, client: Client) -> None:
        """Watch `client`'s control socket for usnetd's hang-up (`_domain_gone`). With the lock held."""
        fd = client.domain_fd
        if fd is not None and self._watched.get(fd) is not client:
            try:  # a number a closed client had (its entry went with its descriptor, or not)
                self._hup.unregister(fd)
            except OSError:
                pass
            self._hup.register(fd, 0)
            self._watched[fd] = client

    def on_hangup(self, client: Client, callback: Callable[[], None]) -> None:
        """Call `callback` (in the stack thread; once) when usnetd hangs up on `client`: for what
        reads a channel of it without an engine here (usnet.aio's datagram transport), which would
        otherwise never hear of it (its doorbell does not read as closed)."""
        with self._lock:
            self._watch_client(client)
            self._hangup.setdefault(client, []).append(callback)  # (epoll in epoll: a hang-up wakes the runner)

    def on_worker_gone(self, fd: int, callback: Callable[[], None]) -> None:
        """Call `callback` (in the stack thread; once) when the usnetd worker serving the flow whose
        liveness fd (Channel.alive_fd) is `fd` dies: for what reads a channel without an engine here
        (usnet.aio's datagram transport), whose doorbell a dead worker never rings. `forget_worker_fd`
        before the fd closes: usnetd holds the same socket, which outlives our fd in the epoll."""
        with self._lock:
            self._alive.pop(fd, None)  # a number a closed engine's channel had
            try:
                self._hup.unregister(fd)
            except OSError:
                pass
            self._hup.register(fd, 0)
            self._alive_told[fd] = callback

    def forget_worker_fd(self, fd: int) -> None:
        """Undo `on_worker_gone`."""
        with self._lock:
            if self._alive_told.pop(fd, None) is not None:
                try:
                    self._hup.unregister(fd)
                except OSError:
                    pass

    def _watch_alive(self, engine: Served) -> None:
        """Watch the hang-up of `engine`'s liveness fd, if its flow is a worker's. With the lock held."""
        fd = getattr(engine.ch, "alive_fd", None)
        if fd is not None and self._alive.get(fd) is not engine:
            self._alive_told.pop(fd, None)
            if fd in self._alive:
                self._alive.pop(fd)
            try:
                self._hup.unregister(fd)  # a number another (closed) channel had
            except OSError:
                pass
            self._hup.register(fd, 0)
            self._alive[fd] = engine

    def _unwatch_alive(self, engine: Served) -> None:
        """Stop watching: explicitly, since usnetd holds the same socket, which outlives our fd in epoll."""
        fd = getattr(engine.ch, "alive_fd", None)
        if fd is not None and self._alive.get(fd) is engine:
            del self._alive[fd]
            try:
                self._hup.unregister(fd)
            except OSError:
                pass

    def lend(self, engine: FlowEngine) -> None:
        """An event loop pumps `engine` from now on (usnet.aio): the runner stops pumping it and
        sleeping on its doorbell, and watches only its client's hang-up (`_domain_gone`)."""
        self.remove(engine)
        with self._lock:
            self.lent.add(engine)
            self._watch_alive(engine)

    def remove(self, engine: Served) -> None:
        with step, self._lock:
            self._unwatch_alive(engine)
            self.lent.discard(engine)
            self._borrowed.discard(engine)
            self._due.pop(engine, None)  # its heap entries are dead now
            self._ready.discard(engine)
            if engine in self.engines:
                self.engines.discard(engine)
                try:
                    self._sel.unregister(engine.fileno())
                except (KeyError, ValueError):
                    pass

    def borrow(self, engine: FlowEngine) -> bool:
        """A blocked socket call sleeps on `engine`'s doorbell and pumps it itself
        (`FlowEngine.pump_wait`) until `give_back`: the runner stops sleeping on that doorbell, so a
        ring wakes only the thread that waits for it. False (wait on `changed` then): not the
        runner's to lend, or another call has it. Timers and wakes still reach the runner. With
        the engine's lock held (engine lock, then the runner's: the order of `_run`)."""
        with self._lock:
            if engine not in self.engines or engine in self._borrowed or engine.pumper is not None or not engine.alone:
                # (`pumper` too: one taken back by `add` may still be pumped by its borrower.) The
                # main thread borrows too: its pump runs under the engine's lock, an EngineLock,
                # which holds the asynchronous signals off in the main thread (usnet.client.sigdefer),
                # and its sleep lets every hold go (`_release_save`), so a handler's exception comes
                # out of the sleep, as out of `changed.wait`, never out of the middle of a pump.
                return False
            fd = engine.fileno()
            if self._sel.get(fd) is not engine:
                return False
            self._sel.unregister(fd)
            self._borrowed.add(engine)
            self.borrows += 1
            engine.pumper = threading.get_ident()
            return True

    def give_back(self, engine: FlowEngine) -> None:
        """Undo `borrow`: the runner sleeps on the doorbell again (a ring that came meanwhile and
        was not drained reads as ready at once: epoll is level-triggered), and is woken if the
        engine failed or its deadline is now sooner than the one it sleeps towards."""
        with step, self._lock:
            if engine.pumper != threading.get_ident():
                return  # not this thread's (any more): never undo another borrower's
            engine.pumper = None
            if engine not in self._borrowed:
                return
            self._borrowed.discard(engine)
            if engine not in self.engines:
                return
            fd = engine.fileno()
            if self._sel.get(fd) is None:
                self._sel.register(fd, engine)
            due = self._due.get(engine)
            failed = engine.error is not None
            sooner = due is not None and due < self.wake_at
        if failed:
            self.wake(engine)
        elif sooner:  # (a connect's recv of the server's FIN: its delayed ACK's 40 ms)
            self._retime()

    def wake(self, engine: Served | None = None) -> None:
        """Make the runner pump `engine` soon (None: every engine). One eventfd write per runner
        pass at most: `_run` clears `_poked` before it takes the ready set, so a wake after that
        always reaches it."""
        with self._lock:
            if engine is None:
                self._ready.update(self.engines)
            else:
                self._ready.add(engine)
        if not self._poked:
            self._poked = True
            os.eventfd_write(self._wake, 1)

    def schedule(self, engine: Served, deadline: float | None, wake: bool = True) -> None:
        """`engine`'s next deadline is `deadline`. Called with the engine's lock held, after
        whatever computed it, so that a later computation always overwrites an earlier one. From
        outside a pass (`FlowEngine.kick`) the runner is woken if that is sooner than what it
        sleeps towards (`_retime`); a pass that has not yet read the deadlines will see it."""
        with self._lock:
            if engine in self.engines:
                self._set_due(engine, deadline)
            sooner = wake and deadline is not None and deadline < self.wake_at
        if sooner:
            self._retime()

    def _retime(self) -> None:
        """Wake the runner to sleep towards a sooner deadline, and for nothing else: it pumps
        only what is due or rang then. (`wake` would pump the engine too, under the lock the
        waking socket call is about to take again: issue 18's connects waited for it.)"""
        if not self._poked:
            self._poked = True
            os.eventfd_write(self._wake, 1)

    def _set_due(self, engine: Served, deadline: float | None) -> None:
        """With `_lock` held: the one live timer of `engine` (None: none); the old entry dies."""
        if deadline is None:
            self._due.pop(engine, None)
        elif self._due.get(engine) != deadline:
            self._due[engine] = deadline
            heapq.heappush(self._timers, (deadline, next(self._seq), engine))

    def _take_work(self, now: float) -> list[Served]:
        """The engines this pass pumps: those woken or rung, and those whose timer is due."""
        with self._lock:
            work, self._ready = self._ready, set()
            timers, due = self._timers, self._due
            while timers and timers[0][0] <= now:
                d, _, e = heapq.heappop(timers)
                if due.get(e) == d:
                    del due[e]
                    work.add(e)
            return [e for e in work if e in self.engines]

    def _next_deadline(self) -> float:
        """The soonest live timer (infinity if none), which the runner sleeps towards from now
        (`wake_at`, set in the same lock section as the read); dead entries at the top are dropped."""
        with self._lock:
            timers, due = self._timers, self._due
            while timers and due.get(timers[0][2]) != timers[0][0]:
                heapq.heappop(timers)
            self.wake_at = soonest = timers[0][0] if timers else math.inf
            return soonest

    def _domain_gone(self) -> None:
        """usnetd hung up on a client: each engine of it fails (its socket calls raise at once)
        and leaves the runner, and the client is forgotten here."""
        for fd, _ in self._hup.poll(0):
            if fd in self._alive:
                self._worker_gone(self._alive[fd])
                continue
            with self._lock:
                heard = self._alive_told.pop(fd, None)
            if heard is not None:
                try:
                    self._hup.unregister(fd)
                except OSError:
                    pass
                try:
                    heard()
                except Exception:  # one listener's fault must not keep the others from hearing
                    log.warning("a worker-gone callback failed", exc_info=True)
                continue
            if fd not in self._watched:  # a liveness fd of an engine failed earlier in this pass (its
                continue  # client's hang-up came first: closed, and unwatched, with that engine)
            try:
                self._hup.unregister(fd)
            except OSError:  # the client closed its descriptor after the poll: the number is gone
                pass  # (EBADF) while its socket, still held, hung up; this thread must live on
            client = self._watched.pop(fd, None)
            with self._lock:
                gone = [e for e in self.engines if e.client is client]
                lent = [e for e in self.lent if e.client is client]
                told = self._hangup.pop(client, []) if client is not None else []
            for callback in told:
                try:
                    callback()
                except Exception:  # one listener's fault must not keep the others from hearing
                    log.warning("a hang-up callback failed", exc_info=True)
            where = f" at {client.path}" if client is not None and client.path else ""
            for le in lent:
                self._abort(le, where)
                d = le.driver
                if d is not None:
                    d.gone(le)  # its loop closes it, in its own thread: the loop watches its doorbell
                else:
                    le.close()
            for e in gone:
                self._abort(e, where)
                e.close()  # its memory and descriptors go now, not when its sockets are collected

    def _worker_gone(self, e: Served) -> None:
        """The usnetd worker serving `e`'s flow died (its liveness fd hung up): `e` alone fails, its
        socket calls raise at once with usnetd's word why; the other engines go on."""
        why = worker_gone_reason(e.ch.alive_fd)
        with self._lock:
            lent = e in self.lent
        # not DomainGone: usnetd lives on and restarts the worker; a connection fails, a listener or
        # UDP socket binds again on the new worker (usnet.client.rebind)
        self._fail(e, WorkerGone(errno.ECONNABORTED, why + ": this connection is lost"))
        d = getattr(e, "driver", None) if lent else None
        if d is not None:
            d.gone(e)
        else:
            e.close()

    def _abort(self, e: Served, where: str) -> None:
        """An engine of a usnetd that went away: out of the runner, its socket calls raise at once."""
        self._fail(e, DomainGone(errno.ECONNABORTED, f"usnetd{where} went away (its control socket closed): "
                                 "this connection is lost; new sockets reconnect once it runs again (`usnet up`)"))

    def _fail(self, e: Served, error: OSError) -> None:
        """`e` out of the runner, failed with `error` unless it failed already; its watchers told."""
        self.remove(e)
        with e.lock:
            if e.error is None:
                e.error = error
            e.notify()

    def _run(self) -> None:
        block_in_this_thread()  # a signal for the process waits for the main thread (usnet.client.sigdefer)
        while not self._stopping:
            self._poked = False
            with self._lock:
                self.wake_at = -math.inf  # until `_next_deadline` reads the deadlines
            now = time.monotonic()
            for e in self._take_work(now):
                self.pumps += 1
                try:
                    with e.lock:
                        e.pump(now)
                        # a failed engine is done: its channel is defunct or its domain gone, and a
                        # closed doorbell reads as always ready (it would spin this thread)
                        done = e.error is not None or (e.release_when_idle and e.idle())
                        if not done:  # under the engine's lock, as `schedule` is: the last word wins
                            self.schedule(e, e.deadline(now), wake=False)
                    if done:
                        self.remove(e)
                        e.close()
                        continue
                    d = getattr(e, "driver", None)
                    if d is not None:
                        # an event loop took it over during this pump (`lend`): `schedule` kept
                        # none of the timer this pump set, so the loop pumps it once more and
                        # sets it (an RTO or delayed ACK the loop never heard of would not fire)
                        d.wake(e)
                except Exception as exc:  # one broken engine must not stop the others
                    self.remove(e)
                    broke(e, exc)
                    continue
            soonest = self._next_deadline()  # (sets `wake_at`: from then a sooner deadline wakes us)
            timeout = None if soonest == math.inf else max(0.0, soonest - time.monotonic())
            rung = []
            for what in self._sel.select(timeout):
                if what == "hup":
                    self._domain_gone()
                elif what == "wake":
                    try:
                        os.eventfd_read(self._wake)
                    except BlockingIOError:
                        pass
                else:
                    rung.append(what)
            if rung:
                # Drained under the lock `lend` takes, and only while still ours: an engine an event
                # loop took over since select returned is that loop's to drain. A ring drained here
                # after the loop's pump armed NEED_WAKEUP would be lost: the loop's reader would
                # never fire for the packet that rang it, and nothing else would read it.
                # Nor one a blocked call borrowed since (`borrow`): the ring is its borrower's, who
                # sleeps on that doorbell and pumps; drained and pumped here instead, it cost the
                # borrower the engine's lock, a ring of its own bell and a wake-up (issue 18: the
                # server's FIN that came as a connect's recv began to wait).
                with self._lock:
                    for e in rung:
                        if e in self.engines and e not in self._borrowed:
                            e.ch.drain_doorbell()
                            self._ready.add(e)


_runner: Runner | None = None
_runner_lock = threading.Lock()
# Each client's connectors, by (netif, family): one engine per usnetd worker carries its outgoing connections
_connectors: weakref.WeakKeyDictionary[Client, dict[tuple[str, int], Connectors]] = weakref.WeakKeyDictionary()
_connectors_lock = threading.Lock()


class Connectors:
    """A process's connectors on one netif and family: one per usnetd worker (`usnetd --workers N`:
    worker 0's FlowOpened says N), each holding only ports of its worker, opened when first
    picked. Connects take them in turn, so they spread over the workers' cores as a listener's
    port spreads its flows; a failed or closing one is replaced (its connections finish on their
    own), and a worker that cannot give one (down) leaves its turn to worker 0's."""

    def __init__(self, client: Client, netif: str, family: int) -> None:
        self.client, self.netif = client, netif
        self.family: Family = 6 if family == 6 else 4
        self.engines: list[FlowEngine | None] = [None]
        self.turn = 0

    def pick(self) -> FlowEngine:
        """The connector for the next connect (with `_connectors_lock` held)."""
        k = self.turn % len(self.engines)
        self.turn += 1
        try:
            return self._engine(k)
        except OSError:
            if k == 0:
                raise
            return self._engine(0)

    def _engine(self, k: int) -> FlowEngine:
        eng = self.engines[k]
        if eng is None or eng.closed or eng.error is not None or eng.release_when_idle:
            eng = FlowEngine(self.client, self.netif, family=self.family, is_connector=True, worker=k)
            self.engines[k] = eng
            runner().add(eng)
            if len(self.engines) < eng.info.workers:
                self.engines += [None] * (eng.info.workers - len(self.engines))
        return eng


def connector(client: Client, netif: str, family: int) -> FlowEngine:
    """A connector engine of the process on `netif` for `family` (4 or 6), made on first use: every
    outgoing connection of a usnet socket shares one (one flow switch entry per 4-tuple), as a
    listener's accepted connections share the listener's; under `usnetd --workers N` there is
    one per worker, taken in turn (`Connectors`)."""
    with _connectors_lock:
        mine = _connectors.setdefault(client, {})
        group = mine.get((netif, family))
        if group is None:
            group = mine[(netif, family)] = Connectors(client, netif, family)
        return group.pick()


def _after_fork_in_child() -> None:
    """A child of fork() has no stack thread, and every engine it inherited is its parent's (its
    connections, its channel, its timers): it gets a runner and connectors of its own when it
    makes sockets, and the inherited engines fail every call with a clear error (`Runner.disown`)
    instead of racing the parent on the same rings. Linux lets both processes use an inherited
    socket; a user-space stack lives in one process (docs/architecture.md)."""
    global _runner, _runner_lock, _connectors, _connectors_lock
    old, _runner = _runner, None
    _runner_lock = threading.Lock()  # held by a thread of the parent at the fork, maybe: never released here
    _connectors, _connectors_lock = weakref.WeakKeyDictionary(), threading.Lock()
    if old is not None:
        old.disown(OSError(errno.EBADF, f"usnet: this socket belongs to the process that made it (pid "
                           f"{os.getppid()}); a child of fork() cannot use it, but can make sockets of its own"))


os.register_at_fork(after_in_child=_after_fork_in_child)


def runner() -> Runner:
    """The process's runner, made at the first call. A socket call asks for it several times a
    connect: once made, it is returned without the lock (a global's read is atomic)."""
    global _runner
    made = _runner
    if made is not None:
        return made
    with _runner_lock:
        if _runner is None:
            _runner = Runner()
            # after usnet.client.session's own hook (registered at import), so it runs first:
            # the connections drain before the clients close their channels
            atexit.register(_drain_at_exit)
        return _runner


_exiting = False  # the interpreter's exit has begun closing this process's connections (`_drain_at_exit`)


def exiting() -> bool:
    """This is a thread the exit's drain parks (`park_at_exit`): the drain began, not the main thread."""
    return _exiting and threading.current_thread() is not threading.main_thread()


def park_at_exit(cond: threading.Condition) -> None:
    """A blocked call of another thread than the main one, once the exit's drain has begun, waits
    for ever on `cond` (held) instead of waking to what the drain does to its socket.

    Why: by atexit time only daemon threads run beside the main one (threading joined the others
    first), and the kernel closes a process's sockets only after all its threads are gone, so a
    daemon thread blocked in recv or accept at exit never returns there: it is stopped with the
    interpreter. usnet closes the connections before that, in the drain; without this the
    daemon thread would wake to the close (EOF, EBADF, the channel's end) and run on: a
    socketserver handler printed "Exception occurred during processing of request" at a Ctrl-C
    that is silent on the kernel. A call that returns without waiting is left alone."""
    if exiting():
        while True:
            cond.wait()


def _drain_at_exit() -> None:
    global _exiting
    _exiting = True
    r = _runner
    if r is None or r._stopping:
        return
    try:
        r.drain(EXIT_LINGER)
    except Exception as exc:  # at exit: report, never raise
        log.warning("usnet: draining at exit failed: %r", exc)
