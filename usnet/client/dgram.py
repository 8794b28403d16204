"""UDP through `usnet.socket`: ``socket(AF_INET, SOCK_DGRAM)`` on the flow path of `Client.udp_socket`.

The datagrams are built, sent, received and checked by `usnet.client.datagram.DatagramSocket`,
as for `Client.udp_socket`; this module puts the standard socket face on it (bind, connect,
sendto, recvfrom, send, recv, the `*_into` calls, MSG_PEEK and MSG_DONTWAIT, timeouts and
non-blocking calls) and makes its `fileno()` exact for select, poll, epoll and asyncio.

Why the stack thread serves a UDP flow too: readiness must change when a datagram arrives,
while the application is elsewhere (in select). `DatagramEngine` is one more thing the
runner serves: woken by the channel's doorbell, it moves what arrived into the socket's
receive queue, sets the descriptor readable and wakes blocked calls. The application's calls
take from that queue first and from the ring themselves when it is empty (no thread hop
while datagrams keep coming); both run under the engine's lock. The queue is bounded as
Linux bounds a socket's by SO_RCVBUF: past it, datagrams wait in the channel's ring, and
what the ring cannot hold the domain drops. An asyncio endpoint's flow under usnet's event loop is
pumped by that loop instead (`DatagramEngine.driver`, usnet.client.aio), until a call blocks on it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket as _std
import time
from collections import deque
from typing import Any, Literal

from usnet.abi.paths import LOOPBACK_NETIF
from usnet.abi.ring import RingCorrupt
from usnet.client import sockopts as _so
from usnet.client.channel import ChannelError, PeerGone
from usnet.client.datagram import DatagramSocket
from usnet.client.engine import DatagramReadiness, park_at_exit, runner
from usnet.client.mcast import (
    FILTER_OPTIONS,
    MULTICAST6_OPTIONS,
    MULTICAST_OPTIONS,
    Multicast,
)
from usnet.client.rxinfo import (
    IP_OPTIONS,
    TIMESTAMP_OPTIONS,
    RxMeta,
    keeps_header,
    option_value,
    pktinfo_source,
    put_cmsgs,
    rx_cmsgs,
    set_option,
    tx_stamp_key,
    wants_meta,
)
from usnet.client.session import Client
from usnet.client.sigdefer import EngineLock
from usnet.client.socket import (
    _DUAL_TRIES,
    _PEEK,
    AF_INET,
    AF_INET6,
    IPPROTO_IPV6,
    IPV6_V6ONLY,
    MSG_TRUNC,
    SO_ERROR,
    SO_RCVBUF,
    SO_SNDBUF,
    SOCK_DGRAM,
    SOL_SOCKET,
    _any_name,
    _error_message,
    _is_loopback,
    _open_bound,
    _sockaddr,
    _worker_died,
    getaddrinfo,
    open_sockets,
    socket,
)
from usnet.client.sockopts import (
    IP_MARKING,
    TIMEO_OPTIONS,
    check_fixed,
    ip_mark,
    ip_option,
    kept,
    lookup,
    timeo_get,
    timeo_key,
)
from usnet.proto import cmsg as _cm
from usnet.proto.errqueue import (
    IP_RECVERR,
    IPV6_RECVERR,
    SO_EE_ORIGIN_TIMESTAMPING,
    ErrorReport,
    icmp_report,
    is_icmp,
    local_report,
    tx_stamp_report,
)

__all__ = ["DatagramEngine", "DatagramFace", "FlowHalf"]

RX_BATCH = 64
RCVBUF = 212992  # Linux's default SO_RCVBUF (net.core.rmem_default)
# joining a multicast group in ways usnet does not (source-specific, the protocol-independent
# MCAST_* ones) (Linux's numbers; the standard module lacks some of the names). IP_ADD_MEMBERSHIP,
# IP_DROP_MEMBERSHIP and an AF_INET6 socket's IPV6_JOIN_GROUP and IPV6_LEAVE_GROUP are
# usnet.client.mcast's, checked before these (an AF_INET socket's IPv6 ones stay ENOPROTOOPT).
_OVERHEAD = 768  # what Linux charges a datagram beyond its payload (skb truesize), for the queue bound
MSG_ERRQUEUE, MSG_CTRUNC = 0x2000, 0x8


class DatagramEngine:
    """A UDP flow served by the stack thread (see the module docstring); `Runner` serves it."""

    def __init__(self, dsock: DatagramSocket, client: Client) -> None:
        self.d = dsock
        # A wildcard socket's other flows, on the same port: on the loopback netif (as Linux's
        # 0.0.0.0 hears 127.0.0.1), and IPv4's for a dual-stack AF_INET6 one. Their datagrams join
        # the one queue; a datagram leaves by the flow of its destination's family and netif (`via`).
        self.more: list[DatagramSocket] = []
        self._halves: list[FlowHalf] = []  # what the runner sleeps on for their doorbells
        self.client = client  # whose control socket's hang-up fails this flow (Runner._domain_gone)
        self.ch = dsock.channel
        self.lock = EngineLock()  # signals wait for its release (usnet.client.sigdefer)
        self.changed = self.lock.condition()
        self.rxq: deque[tuple[bytes, tuple[str, int]]] = deque()
        self.rx_bytes = 0  # what rxq holds, charged as Linux charges SO_RCVBUF
        self.rcvbuf = RCVBUF
        self.remote: tuple[str, int] | None = None  # connect(): only its datagrams are taken
        self.pending: OSError | None = None  # an ICMP error for the connected peer (SO_ERROR)
        # IP_RECVERR's error queue (usnet.proto.errqueue), charged to rx_bytes as Linux charges
        # sk_error_queue to the socket's receive memory (sock_queue_err_skb): bounded by SO_RCVBUF
        self.errq: deque[ErrorReport] = deque()
        self.recverr = False
        self.want_meta = False  # SO_TIMESTAMP or IP_PKTINFO on: datagrams carry an RxMeta
        self.error: OSError | None = None  # the channel failed
        self.closed = False
        self.release_when_idle = False
        self.watchers: set = set()
        # Who pumps it: None, the stack thread (Runner); or an event loop's driver (usnet.aio's
        # `_LoopDriver`, for a datagram endpoint's socket), as FlowEngine.driver. `pinned`: went
        # back to the stack thread for good (a call blocked on it, `wake(wait=True)`).
        self.driver: Any = None
        self.pinned = False
        # The last `take` left every ring empty, with NEED_WAKEUP armed: what arrives since rings a
        # doorbell. While a loop pumps the flow, a read right behind its pump need not look at the
        # rings again (`pop`'s `refill`): the loop hears the doorbell and pumps again.
        self.drained = False
        # `via`'s last answer: (host, flow, how many `more` it chose among); `more` only grows
        self.route: tuple[str, DatagramSocket, int] | None = None

    def fileno(self) -> int:
        return self.ch.fileno()

    def add_flow(self, d: DatagramSocket) -> None:
        """Hear `d` (the same port on another netif or in IPv4) too; the runner serves its doorbell."""
        d.remote = self.d.remote
        d.keep_header = self.d.keep_header
        d.on_error = self.d.on_error
        self.more.append(d)
        self.drained = False  # its ring not looked at yet: the next `take` looks at every ring
        half = FlowHalf(self, d)
        self._halves.append(half)
        runner().add(half)

    def hears(self, v6: bool, loopback: bool) -> bool:
        """Whether one of its flows is of that family and on (or off) the loopback netif."""
        return any(d.v6 == v6 and d.loopback == loopback for d in self.flows())

    def flows(self) -> tuple[DatagramSocket, ...]:
        """Its flow, and the others on its port (`more`)."""
        return (self.d, *self.more) if self.more else (self.d,)

    def via(self, host: str) -> DatagramSocket:
        """The flow a datagram to `host` leaves by: the one of its family, on the loopback netif
        for a loopback address; the socket's own where none is (its route decides)."""
        if not self.more:
            return self.d
        r = self.route  # an answer to the last sender: the same host again, from any thread
        if r is not None and r[0] == host and r[2] == len(self.more):
            return r[1]
        n = len(self.more)
        v6, lo = ":" in host, _is_loopback(host)
        flows = self.flows()
        same = next((d for d in flows if d.v6 == v6 and d.loopback == lo), None)
        d = same if same is not None else next((d for d in flows if d.v6 == v6), self.d)
        self.route = (host, d, n)
        return d

    def wake(self, wait: bool = False) -> None:
        """As FlowEngine.wake: whoever pumps the flow, soon. `wait`: the caller is about to block
        on `changed`; a loop-pumped flow then goes back to the stack thread for good, which
        serves a blocked caller whatever the loop does (it may not run again)."""
        if self.closed and self.error is not None:
            return  # failed and closed (a parent's, in a child of fork()): nobody serves it
        d = self.driver
        if d is None:
            runner().wake(self)
        else:
            d.wake(self, wait)

    def idle(self) -> bool:
        return True  # nothing of its own to finish: it goes once its socket closed

    def deadline(self, now: float) -> float | None:
        return None

    def pump(self, now: float, receive: bool = True, rang: DatagramSocket | None = None) -> None:
        """Take what arrived (up to the receive bound); then tell the sockets. With the lock held.
        `receive` False (as FlowEngine.pump's): a pump right behind one that ended on an empty
        ring in the same loop callback; a datagram flow has nothing else to do then. `rang`: the
        flow whose doorbell woke the pump (a `FlowHalf`'s), else the socket's own (`take`)."""
        if self.closed or self.error is not None or not receive:
            return
        self.take(self.d if rang is None else rang)
        self.notify()

    def take(self, rang: DatagramSocket | None = None) -> None:
        """Move datagrams from the rings into the queue while there is room. With the lock held.

        An empty ring is left with NEED_WAKEUP armed (the channel's non-blocking recv does
        it), so the domain rings the doorbell the runner sleeps on for the next one. `rang`: a
        pump for that flow's doorbell; while the last look left every ring so (`drained`) it
        looks at that ring alone: another flow's doorbell rings for what it gets, and wakes
        its own pump (the runner's `FlowHalf`). A wildcard socket's loopback half is not looked
        at on every pump of the loop that pumps its own flow (a doorbell read and an exception).
        """
        flows = (rang,) if rang is not None and self.drained else self.flows()
        self.drained = False
        empty = 0
        for d in flows:
            while self.rx_bytes < self.rcvbuf:
                try:
                    got = d.recv_many(RX_BATCH, 0)
                except BlockingIOError:
                    empty += 1
                    break
                except (ChannelError, PeerGone, RingCorrupt) as e:  # (RingCorrupt: an OSError, no ICMP error)
                    self.error = e
                    return
                except OSError as e:  # the connected peer's ICMP error: pending, as sk_err
                    self.pending = e
                    continue
                remote = self.remote
                if self.want_meta:  # one RxMeta for the batch (usnet.client.rxinfo), or each its header's
                    meta = RxMeta(time.time_ns(), d.local[0], d.loopback)
                    got = [(dg[0], dg[1], meta if len(dg) < 3 else meta._replace(header=dg[2]))  # type: ignore[misc]
                           for dg in got]
                for dg in got:
                    if remote is None or dg[1] == remote:
                        self.rxq.append(dg)
                        self.rx_bytes += len(dg[0]) + _OVERHEAD
        self.drained = empty == len(flows)

    def set_meta(self, opts: dict, groups: bool = False) -> None:
        """The socket's receive options changed (usnet.client.rxinfo): whether datagrams carry
        an RxMeta, and whether the flows keep their headers' fields: for IP_RECVTTL and the like,
        and for IP_PKTINFO once the socket is in a group (`groups`), whose datagrams' destination
        is the group's, not the flow's. With the lock held."""
        self.want_meta = wants_meta(opts)
        keep = keeps_header(opts) or (groups and (_std.IPPROTO_IP, _cm.IP_PKTINFO) in opts)
        for d in self.flows():
            d.keep_header = keep

    def set_recverr(self, on: bool) -> None:
        """IP_RECVERR (IPV6_RECVERR) on or off; off empties the queue, as Linux's. With the lock held."""
        self.recverr = on
        for d in self.flows():
            d.on_error = self.queue_error if on else None
        if not on:
            while self.errq:
                self.pop_error()

    def queue_error(self, packet: bytes) -> None:
        """An ICMP error about a datagram of ours (the flow's `on_error`): onto the error queue,
        unless the receive memory is full (Linux drops it then: sock_queue_err_skb's ENOMEM)."""
        r = icmp_report(packet)
        if r is not None:
            self.queue_report(r)

    def queue_report(self, r: ErrorReport) -> None:
        """`r` onto the error queue, unless the receive memory is full. With the lock held."""
        charge = len(r.payload) + _OVERHEAD
        if self.rx_bytes + charge >= self.rcvbuf:
            return
        self.errq.append(r)
        self.rx_bytes += charge

    def pop_error(self) -> ErrorReport | None:
        """The oldest queued error, or None; the socket's pending error (sk_err) is then the next
        one's, or none, as Linux's sock_dequeue_err_skb sets it. With the lock held."""
        if not self.errq:
            self.take()  # what waits in the ring may hold one
            if not self.errq:
                return None
        r = self.errq.popleft()
        self.rx_bytes -= len(r.payload) + _OVERHEAD
        if self.errq and is_icmp(self.errq[0]):  # an ICMP error next: its errno
            self.pending = OSError(self.errq[0].errno, os.strerror(self.errq[0].errno))
        elif is_icmp(r):  # (a local error or a stamp was never sk_err: it leaves it be)
            self.pending = None
        for d in self.flows():
            d.pending_error = None
        return r

    def pop(self, peek: bool, refill: bool = True) -> tuple[bytes, tuple[str, int]] | None:
        """The next datagram, or None. With the lock held. `refill` False: from the queue alone,
        not the rings (see `drained`)."""
        if not self.rxq:
            if not refill:
                return None
            self.take()
            if not self.rxq:
                return None
        if peek:
            return self.rxq[0]
        dg = self.rxq.popleft()
        self.rx_bytes -= len(dg[0]) + _OVERHEAD
        return dg

    def watch(self, w: Any, conn: Any = None) -> None:
        """As FlowEngine.watch; a datagram socket has no connection to narrow it to."""
        self.watchers.add(w)

    def unwatch(self, w: Any, conn: Any = None) -> None:
        self.watchers.discard(w)

    def notify(self) -> None:
        for w in self.watchers:
            w._signal()
        self.changed.notify_all()

    def close(self) -> None:
        d = self.driver
        if d is not None:  # an event loop watches its doorbell: not after the descriptor is gone
            d.forget(self)
        with self.lock:
            self.closed = True
            self.changed.notify_all()
        for half in self._halves:
            runner().remove(half)
        for d in self.flows():
            try:
                d.close()
            except OSError:
                pass  # the domain is gone already


class FlowHalf:
    """The runner's handle on one of a datagram socket's other flows (`DatagramEngine.more`): its
    doorbell to sleep on; everything else is the engine's (one lock, one queue, one readiness)."""

    def __init__(self, eng: DatagramEngine, d: DatagramSocket) -> None:
        self.eng = eng
        self.ch = d.channel
        self.lock = eng.lock
        self.client = eng.client
        self.d = d
        self.release_when_idle = False  # the engine's close takes it out of the runner

    @property
    def error(self) -> OSError | None:
        return self.eng.error

    @error.setter
    def error(self, e: OSError | None) -> None:
        self.eng.error = e

    def fileno(self) -> int:
        return self.ch.fileno()

    def pump(self, now: float) -> None:
        self.eng.pump(now, rang=self.d)

    def deadline(self, now: float) -> float | None:
        return None

    def idle(self) -> bool:
        return True

    def notify(self) -> None:
        self.eng.notify()

    def close(self) -> None:
        pass  # the engine closes the flow (it owns it)


class DatagramFace(socket):
    """A UDP socket over usnet (AF_INET or AF_INET6, SOCK_DGRAM): what ``socket(..., SOCK_DGRAM)`` makes."""

    _ready: DatagramReadiness  # (POLLERR that comes and goes: a stream's `Readiness` cannot)

    def __init__(self, family: int = AF_INET, type: int = SOCK_DGRAM, proto: int = 0,
                 fileno: int | None = None, *, client: Any = None, netif: str | None = None) -> None:
        if fileno is not None:
            self._adopt(fileno)
            return
        if family not in (AF_INET, AF_INET6) or type & 0xF != SOCK_DGRAM or proto not in (0, 17):
            raise OSError(errno.EAFNOSUPPORT, "usnet.socket carries AF_INET and AF_INET6, SOCK_STREAM and SOCK_DGRAM")
        # as Linux: an idle UDP socket is writable
        self._init_face(family, SOCK_DGRAM, proto, type, DatagramReadiness(False), client, netif)
        self._engine: DatagramEngine | None = None  # type: ignore[assignment]
        self._owns_engine = True
        self._mc = Multicast(4)  # IPv4 memberships and multicast options (usnet.client.mcast)
        self._mc6 = Multicast(6)  # IPv6 ones (an AF_INET6 socket's)

    # -- addresses ------------------------------------------------------------------------

    # The last (host, port) `_resolve` found already in the flows' form (a literal address): an
    # answer's sendto names the sender recvfrom gave, and needs no getaddrinfo and ipaddress again.
    _literal: tuple[str, int] | None = None

    def _resolve(self, address: Any) -> tuple[str, int]:
        """(host, port) as the flows name it: an IPv4-mapped address (::ffff:a.b.c.d) as IPv4's,
        for a dual-stack socket (ENETUNREACH for an IPV6_V6ONLY one, as Linux's udpv6_sendmsg)."""
        lit = self._literal
        if lit is not None and type(address) is tuple and address == lit and type(address[1]) is int:
            return lit
        if not isinstance(address, tuple) or len(address) < 2:
            raise TypeError(f"{self.family.name} address must be a tuple (host, port)")
        host, port = getaddrinfo(address[0], address[1], self.family, SOCK_DGRAM)[0][4][:2]
        ip = ipaddress.ip_address(host)
        if ip.version == 6 and ip.ipv4_mapped is not None:
            if not self._dual():
                raise OSError(errno.ENETUNREACH, "Network is unreachable")
            ip = ip.ipv4_mapped
        out = (str(ip), int(port))
        if out == address:
            self._literal = out
        return out

    def _open(self, port: int = 0, host: str | None = None) -> DatagramEngine:
        """The flow: on the loopback netif for a loopback `host`, else on the socket's netif."""
        eng = self._new_engine(port, host)
        self._port = eng.d.local[1]
        self._engine = eng
        open_sockets.add(self)  # a fork shares it with the child (usnet.client.inherit)
        with eng.lock:
            eng.watch(self)
            self._update()
        runner().add(eng)
        return eng

    def _new_engine(self, port: int, host: str | None) -> DatagramEngine:
        """A flow on `port` with the socket's options (what `_open` and `_rebind` open)."""
        client, netif = self._target(host)
        dual = host is None and self._dual() and not self._v4any
        for attempt in range(_DUAL_TRIES):
            flow, where = self._flow(client, netif, host, port, dual)
            try:  # a dual-stack :: holds the port in IPv4 too, as Linux's (its own ephemeral one: again)
                v4 = self._v4_flow(client, netif, flow) if dual and flow.v6 else None
            except OSError as e:
                flow.close()
                if e.errno == errno.EADDRINUSE and port == 0 and attempt + 1 < _DUAL_TRIES:
                    continue
                raise
            break
        self._netif = where
        eng = DatagramEngine(flow, client)
        eng.d.setblocking(self._timeout != 0.0)
        self._mark(flow)
        if v4 is not None:
            self._mark(v4)
            with eng.lock:
                eng.add_flow(v4)
        if (v := self._opts.get((SOL_SOCKET, SO_RCVBUF))) is not None:
            eng.rcvbuf = v
        if self._recverr():
            eng.set_recverr(True)
        with eng.lock:
            eng.set_meta(self._opts, self._member())
        for m in (self._mc, self._mc6):
            mc = self._mc_flow(eng, m.family)
            if mc is not None:
                m.attach(mc, client)
        return eng

    def _member(self) -> bool:
        """Whether the socket is in any group (its flows keep each datagram's destination then)."""
        return bool(self._mc.groups or self._mc6.groups)

    def _reuse(self) -> tuple[bool, bool]:
        """SO_REUSEPORT and SO_REUSEADDR, as `udp_socket`'s arguments: Linux lets UDP sockets that
        all set SO_REUSEADDR share a port (multicast receivers do: each member gets its copy), and
        gives a unicast datagram to the newest of them (P.OpenFlow.reuse_addr); the port is one
        uid's, where Linux's SO_REUSEADDR does not ask (docs/design-notes.md, "SO_REUSEADDR")."""
        return (bool(self._opts.get((SOL_SOCKET, _std.SO_REUSEPORT))),
                bool(self._opts.get((SOL_SOCKET, _std.SO_REUSEADDR))))

    @staticmethod
    def _mc_flow(eng: DatagramEngine | None, family: int = 4) -> tuple[int, bytes] | None:
        """(channel id, local address) of the flow that joins groups of `family`: the socket's flow
        of it off the loopback netif; None before the socket has one."""
        if eng is None:
            return None
        v6 = family == 6
        d = next((d for d in eng.flows() if d.v6 == v6 and not d.loopback), None)
        if d is None:
            return None
        return d.channel.id, _std.inet_pton(AF_INET6 if v6 else _std.AF_INET, d.local[0])

    def _flow(self, client: Client, netif: str, host: str | None, port: int,
              dual: bool) -> tuple[DatagramSocket, str]:
        """The socket's flow of its own family (`dual`: IPv4's where IPv6 is nowhere, the only
        family a dual-stack :: then takes), and the netif it is on."""
        rp, ra = self._reuse()
        v4 = (host is not None and ":" not in host) or self._v4any  # (a mapped address: IPv4)
        family: Literal[4, 6] = 4 if v4 else self._ip_version
        return _open_bound(lambda n, f: client.udp_socket(n, port, family=f, reuse_port=rp, reuse_addr=ra),
                           netif, host, family, family, dual)

    def _v4_flow(self, client: Client, netif: str, flow: DatagramSocket) -> DatagramSocket | None:
        """A dual-stack socket's IPv4 flow on the netif, on `flow`'s port (None: no IPv4 there)."""
        rp, ra = self._reuse()
        try:
            return client.udp_socket(netif, flow.local[1], family=4, reuse_port=rp, reuse_addr=ra)
        except OSError as e:
            if e.errno in (errno.EADDRNOTAVAIL, errno.ENODEV):
                return None
            raise

    def _mark(self, d: DatagramSocket) -> None:
        """IP_TTL, IP_TOS (IPV6_UNICAST_HOPS, IPV6_TCLASS) set before the flow was: its family's."""
        if mark := ip_mark(AF_INET6 if d.v6 else AF_INET, self._opts):
            d.set_marking(mark)

    def _recverr(self) -> bool:
        """Whether the socket's flows report ICMP errors to its error queue: IP_RECVERR on an
        AF_INET socket, IPV6_RECVERR on an AF_INET6 one (for its IPv4 flow too, if dual stack,
        where Linux would read IP_RECVERR: stored, not acted on)."""
        key = (IPPROTO_IPV6, IPV6_RECVERR) if self.family == AF_INET6 else (_std.IPPROTO_IP, IP_RECVERR)
        return bool(self._opts.get(key))

    def _eng(self, dest: str | None = None) -> DatagramEngine:
        """The flow, opened (an ephemeral port) on first use, as Linux binds on first send (to
        the wildcard: so a first datagram to a loopback `dest` opens the loopback half too)."""
        self._need_open()
        eng = self._engine
        if eng is None:
            eng = self._open()
            self._wildcard = True
        if dest is not None and self._wildcard and _is_loopback(dest) and not eng.hears(":" in dest, True):
            self._hear_loopback(eng)
        return eng

    def _hear_loopback(self, eng: DatagramEngine) -> None:
        """A socket bound to the wildcard hears the loopback netif too, as Linux's 0.0.0.0 (::)
        takes datagrams to 127.0.0.1 (::1): a flow there on the same port for each family it
        takes (the domain shares the port: `OpenFlow.with_channel`). Not where that cannot be (the
        socket is on the loopback netif already, or the domain has none): then loopback stays
        unreachable."""
        client, _ = self._target()
        rp, ra = self._reuse()
        for d in eng.flows():
            if d.loopback or eng.hears(d.v6, True):
                continue
            try:
                lo = client.udp_socket(LOOPBACK_NETIF, self._port, family=6 if d.v6 else 4,
                                       with_channel=d.channel.id, reuse_port=rp, reuse_addr=ra)
            except OSError:  # no loopback netif (ENODEV), or it cannot take the port
                continue
            self._mark(lo)
            with eng.lock:
                eng.add_flow(lo)

    def bind(self, address: tuple) -> None:
        self._need_open()
        if self._engine is not None:
            raise OSError(errno.EINVAL, "Invalid argument")
        host, port = self._bind_args(address)
        self._v4any = host is not None and host.is_unspecified  # ::ffff:0.0.0.0: IPv4's wildcard alone
        if self._v4any:
            host = None
        eng = self._open(port, None if host is None else str(host))
        if host is not None and ipaddress.ip_address(eng.d.local[0]) != host:
            self._real_close()
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        self._wildcard = host is None
        if self._wildcard:
            self._hear_loopback(eng)

    def connect(self, address: tuple) -> None:
        """Set the default destination and take datagrams only from it, as Linux does."""
        remote = self._resolve(address)
        eng = self._eng(remote[0])
        self._no_group(eng.via(remote[0]), remote[0])
        eng.via(remote[0]).need_route(remote)  # ENETUNREACH at once, as Linux's connect of a UDP socket
        with eng.lock:
            eng.remote = remote
            for d in eng.flows():
                d.remote = remote
            kept = [dg for dg in eng.rxq if dg[1] == remote]
            eng.rxq.clear()
            eng.rxq.extend(kept)
            eng.rx_bytes = sum(len(dg[0]) + _OVERHEAD for dg in kept)
            self._update()

    def connect_ex(self, address: tuple) -> int:
        try:
            self.connect(address)
        except OSError as e:
            if e.errno is None:
                raise
            return e.errno
        return 0

    def listen(self, backlog: int = 0) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    def accept(self) -> Any:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    def getsockname(self) -> tuple:
        """As Linux: the wildcard for a socket bound to it (by bind, or by its first send) until it
        connects, though the flow is on the netif's address."""
        eng = self._engine
        if eng is None:
            return _sockaddr(self.family, "::" if self.family == AF_INET6 else "0.0.0.0", 0)
        if self._wildcard and eng.remote is None:  # as Linux: the wildcard until connected
            return _sockaddr(self.family, _any_name(self.family, self._v4any), eng.d.local[1])
        local = eng.d.local if eng.remote is None else eng.via(eng.remote[0]).local  # the connected flow's
        return _sockaddr(self.family, local[0], local[1])

    def getpeername(self) -> tuple:
        self._need_open()
        eng = self._engine
        if eng is None or eng.remote is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return _sockaddr(self.family, *eng.remote)

    # -- sending ----------------------------------------------------------------------------

    def sendto(self, data: Any, flags_or_address: Any, address: Any = None) -> int:
        flags, addr = (0, flags_or_address) if address is None else (flags_or_address, address)
        return self._send(data, flags, self._resolve(addr))

    def send(self, data: Any, flags: int = 0) -> int:
        eng = self._engine
        if eng is None or eng.remote is None:
            self._need_open()
            raise OSError(errno.EDESTADDRREQ, "Destination address required")
        return self._send(data, flags, eng.remote)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.send(data, flags)

    def _check_df(self, eng: DatagramEngine, d: DatagramSocket, data: Any, addr: tuple[str, int]) -> None:
        """IP_MTU_DISCOVER (IPV6_MTU_DISCOVER) DO, PROBE or INTERFACE: a datagram over the MTU is not
        sent in fragments but refused with EMSGSIZE, and with IP_RECVERR a local error is queued
        (ip_local_error in __ip_append_data; ipv6_local_error in __ip6_append_data), its info the
        MTU. IPv4 names the connected port (0 unconnected: inet_dport), IPv6 the destination's.
        With the lock held."""
        key = (IPPROTO_IPV6, _so.IPV6_MTU_DISCOVER) if d.v6 else (_std.IPPROTO_IP, _so.IP_MTU_DISCOVER)
        how = self._opts.get(key, 1)
        if how < _so.PMTUDISC_DO or how == _so.PMTUDISC_OMIT:
            return  # DONT, WANT, OMIT: fragments, as Linux's ip_sk_ignore_df
        n = memoryview(data).nbytes
        if n <= d.mtu - (48 if d.v6 else 28):
            return
        if eng.recverr:
            dst = ipaddress.ip_address(addr[0]).packed
            port = addr[1] if d.v6 else (eng.remote[1] if eng.remote is not None else 0)
            eng.queue_report(local_report(errno.EMSGSIZE, dst, port, d.mtu))
            self._update()
        raise OSError(errno.EMSGSIZE, "Message too long")

    def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0, address: Any = None) -> int:
        """As Linux's: to `address` (else the connected peer), from the source an IP_PKTINFO
        (IPV6_PKTINFO) control message chooses, which must be one of the socket's addresses
        (usnet.client.rxinfo.pktinfo_source; EINVAL otherwise, as Linux's route lookup says of
        a source no interface has)."""
        data = b"".join(bytes(memoryview(b).cast("B")) for b in buffers)
        src = pktinfo_source(self.family, ancdata) if ancdata else None
        if address is not None:
            return self._send(data, flags, self._resolve(address), src)
        eng = self._engine
        if eng is None or eng.remote is None:
            self._need_open()
            raise OSError(errno.EDESTADDRREQ, "Destination address required")
        return self._send(data, flags, eng.remote, src)

    def _no_group(self, d: DatagramSocket, dest: str) -> None:
        """usnet sends no broadcast: refused at once, not sent to nobody. Without SO_BROADCAST a
        broadcast is EACCES, as Linux's; with it EOPNOTSUPP that says why. A group is sent to
        (usnet.client.mcast): an IPv6 one from an AF_INET6 socket, an IPv4 one from either (a
        dual-stack socket's IPv4 flow, as a kernel socket's)."""
        if dest in d.broadcasts:
            if not self._opts.get((SOL_SOCKET, _std.SO_BROADCAST)):
                raise OSError(errno.EACCES, "Permission denied")
            raise OSError(errno.EOPNOTSUPP, f"usnet sends no broadcast ({dest})")

    def _send(self, data: Any, flags: int, addr: tuple[str, int], src: str | None = None) -> int:
        eng = self._eng(addr[0])
        if self._refused is not None:  # it could not bind its port again (`_rebind_failed`)
            raise self._refused
        if self._orphan:  # as a kernel socket's send on a link that is down
            back = "its usnetd worker" if _worker_died(eng.error) else "usnetd"
            raise OSError(errno.ENETDOWN, f"Network is down ({eng.error}; this socket binds port {self._port} "
                                          f"again once {back} is back)")
        with eng.lock:
            d = eng.via(addr[0])
            self._no_group(d, addr[0])
            self._raise_pending(eng)
            if src is not None:
                d = self._flow_from(eng, src)
            d.mc_ttl = (self._mc6 if d.v6 else self._mc).ttl  # IP(V6)_MULTICAST_TTL (HOPS): a group datagram's
            self._check_df(eng, d, data, addr)
            t, eagain = (0.0, False) if self._no_wait(flags) else self._limit("send")
            d.settimeout(t)
            try:
                sent = d.sendto(data, addr)
            except TimeoutError:
                if eagain:  # SO_SNDTIMEO ran out: EAGAIN, as the kernel's (see `_limit`)
                    raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable") from None
                raise
            except OSError as e:
                if e.errno in (errno.ENOBUFS, errno.EAGAIN) and not isinstance(e, BlockingIOError):
                    raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable") from None
                raise
            if (key := tx_stamp_key(self._opts)) is not None:  # SO_TIMESTAMPING's TX_SOFTWARE
                eng.queue_report(tx_stamp_report(time.time_ns(), key, self.family == AF_INET6))
                self._update()
            return sent

    def _flow_from(self, eng: DatagramEngine, src: str) -> DatagramSocket:
        """The socket's flow on address `src` (IP_PKTINFO's choice). None is: IPv4's route lookup
        says ENETUNREACH for a source no interface has (EINVAL for a multicast, broadcast or 0/8
        one), IPv6's ip6_datagram_send_ctl EINVAL."""
        want = ipaddress.ip_address(src)
        for d in eng.flows():
            if ipaddress.ip_address(d.local[0]) == want:
                return d
        if want.version == 4 and not (want.is_multicast or src == "255.255.255.255" or src.startswith("0.")):
            raise OSError(errno.ENETUNREACH, f"Network is unreachable (usnet: the socket has no flow on {src})")
        raise OSError(errno.EINVAL, f"Invalid argument (usnet: the socket has no flow on {src})")

    # -- receiving --------------------------------------------------------------------------

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, tuple]:
        """One datagram, cut to `bufsize` (the rest is lost, as on Linux), and its sender."""
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        if flags & MSG_ERRQUEUE:
            r = self._error_report()
            if r.origin == SO_EE_ORIGIN_TIMESTAMPING:  # a transmit stamp names no address
                return r.payload[:bufsize], None  # type: ignore[return-value]
            return r.payload[:bufsize], _sockaddr(self.family, self._ip_str(r.dst), r.dport)
        dg = self._recv(flags)
        return dg[0][:bufsize], _sockaddr(self.family, *dg[1])

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return self.recvfrom(bufsize, flags)[0]

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, tuple]:
        mv = memoryview(buffer).cast("B")
        if nbytes < 0:
            raise ValueError("negative buffersize in recvfrom_into")
        if nbytes > len(mv):
            raise ValueError("nbytes is greater than the length of the buffer")
        data, addr = self.recvfrom(nbytes or len(mv), flags)
        mv[: len(data)] = data
        return len(data), addr

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        return self.recvfrom_into(buffer, nbytes, flags)[0]

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0) -> Any:
        """As Linux's: a datagram longer than `bufsize` is cut, and MSG_TRUNC in the flags says so."""
        if bufsize < 0:
            raise ValueError("negative buffer size in recvmsg()")
        if flags & MSG_ERRQUEUE:
            return self._recv_error(bufsize, ancbufsize)
        dg = self._recv(flags)
        data, mflags = dg[0], MSG_TRUNC if len(dg[0]) > bufsize else 0
        anc: list[tuple[int, int, bytes]] = []
        if wants_meta(self._opts):  # SO_TIMESTAMP, IP_PKTINFO, ... (usnet.client.rxinfo)
            meta: RxMeta = dg[2] if len(dg) > 2 else RxMeta(0, self._engine.d.local[0], False)  # type: ignore
            anc, cut = put_cmsgs(rx_cmsgs(self.family, self._opts, meta, self._ifindex(meta.loopback)), ancbufsize)
            mflags |= MSG_CTRUNC if cut else 0
        return data[:bufsize], anc, mflags, _sockaddr(self.family, *dg[1])

    def _ifindex(self, loopback: bool) -> int:
        """The index IP_PKTINFO gives for a netif: the kernel interface of its name in this
        process's namespace ("lo" for the loopback netif; a TAP's or a NIC's name for the netif
        on it), 0 where there is none."""
        name = LOOPBACK_NETIF if loopback else self._netif
        try:
            return _std.if_nametoindex(name) if name else 0
        except OSError:
            return 0

    def _error_report(self) -> ErrorReport:
        """The oldest report on the error queue; EAGAIN when there is none, blocking or not, as
        Linux's ip_recv_error (an error queue is never waited on)."""
        self._need_open()
        eng = self._engine
        r = None
        if eng is not None:
            with eng.lock:
                r = eng.pop_error()
                self._update()
        if r is None:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return r

    def _recv_error(self, bufsize: int, ancbufsize: int) -> Any:
        """recvmsg(MSG_ERRQUEUE): the quoted payload, the quoted destination, MSG_ERRQUEUE and the
        IP_RECVERR (IPV6_RECVERR) control message (usnet.proto.errqueue), cut as Linux's put_cmsg
        cuts it to `ancbufsize` (MSG_CTRUNC)."""
        return _error_message(self._error_report(), self.family, bufsize, ancbufsize, self._opts)

    def _ip_str(self, addr: bytes) -> str:
        return str(ipaddress.ip_address(addr))

    def _recv(self, flags: int) -> tuple[bytes, tuple[str, int]]:
        t, eagain = (0.0, False) if self._no_wait(flags) else self._limit("recv")
        deadline = None if t is None else time.monotonic() + t
        while True:  # again on the new flow if the socket is bound again meanwhile (`_rebind`)
            eng = self._eng()
            with eng.lock:
                while self._engine is eng:
                    dg = self._pop(eng, bool(flags & _PEEK))
                    if dg is not None:
                        self._update()
                        return dg
                    self._update()
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        if t == 0 or eagain:
                            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
                        raise TimeoutError("timed out")
                    if eng.driver is not None:  # an event loop pumps it: the stack thread must now
                        eng.wake(True)
                    park_at_exit(eng.changed)
                    eng.changed.wait(left)

    def _pop(self, eng: DatagramEngine, peek: bool, refill: bool = True) -> tuple[bytes, tuple[str, int]] | None:
        """The next datagram, or None while none is queued (or its usnetd is away: what it queued
        first, usnet.client.rebind); the connected peer's ICMP error once, or the flow's failure,
        raised as a receive raises them. With the lock held."""
        self._raise_pending(eng)
        orphan = self._orphan
        if (eng.error is not None or eng.closed) and not orphan:
            park_at_exit(eng.changed)  # the exit's close is not this daemon thread's to see
        if eng.error is not None and not orphan:
            raise self._refused or eng.error
        if eng.closed and not orphan:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return eng.pop(peek, refill) if not orphan or eng.rxq else None

    def recv_batch(self, n: int) -> list[tuple[bytes, tuple]]:
        """Up to `n` datagrams and their senders, without waiting, under one lock: [] when none
        is queued. asyncio's datagram transport reads so (usnet.client.aio), one callback for what
        a turn brought. An error is raised as recvfrom raises it, after the datagrams before it.

        A flow an event loop pumps, whose last look at its rings found them empty (`drained`), is
        read from its queue alone: the loop pumps what rang since (an empty look at a ring is a
        system call and an exception, twice for a wildcard socket's loopback half)."""
        eng = self._eng()
        got: list[tuple[bytes, tuple]] = []
        v4 = self.family == AF_INET  # the flow's (host, port) is the standard tuple then, as it is
        with eng.lock:
            refill = eng.driver is None or not eng.drained
            try:
                while len(got) < n and (not got or (eng.pending is None and eng.error is None)):
                    dg = self._pop(eng, False, refill)
                    if dg is None:
                        break
                    got.append((dg[0], dg[1] if v4 else _sockaddr(self.family, *dg[1])))
            finally:
                self._update()
        return got

    def _raise_pending(self, eng: DatagramEngine) -> None:
        err = eng.pending
        if err is not None:
            eng.pending = None
            self._update()
            raise err

    # -- options, readiness, close ------------------------------------------------------------

    def _kernel_index(self) -> int:
        """The kernel's index of the socket's netif's interface, which multicast options name."""
        try:
            return _std.if_nametoindex(self._netif or self._target()[1])
        except OSError:
            return 0  # a netif on no kernel interface of this namespace (a memwire's)

    def getsockopt(self, level: int, opt: int, buflen: int = 0) -> Any:
        """As the socket's; IP_MSFILTER and MCAST_MSFILTER read a struct of `buflen` zeros first
        (usnet.client.mcast `Multicast.get_filter`), where CPython's uninitialised buffer goes in."""
        buflen = _so.buflen_arg(buflen)
        mc = self._mc_of(level, opt)
        if mc is not None and opt in FILTER_OPTIONS:
            return self.getsockopt_in(level, opt, bytes(buflen or 4))
        return super().getsockopt(level, opt, buflen)

    def getsockopt_in(self, level: int, opt: int, buf: bytes | bytearray | memoryview) -> Any:
        """usnet's own: getsockopt(IP_MSFILTER) or getsockopt(MCAST_MSFILTER) with the caller's
        struct `buf` in the buffer, as a C program calls it (Python's getsockopt cannot pass
        one in, and takes only an int): what Linux leaves in the buffer, or its error."""
        mc = self._mc_of(level, opt)
        if mc is None or opt not in FILTER_OPTIONS:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available (usnet: a struct is read in "
                                             "for the filter options alone)")
        self._need_open()
        return mc.get_filter(opt, buf, self._mc_flow(self._engine, mc.family), self._kernel_index())

    def setsockopt(self, level: int, opt: int, value: Any, optlen: int | None = None) -> None:
        """Set an option of `usnet.client.sockopts.OPTIONS`; any other is ENOPROTOOPT, as Linux's."""
        self._need_open()
        mc = self._mc_of(level, opt)
        if mc is not None:
            eng = self._engine
            client = eng.client if eng is not None else self._target()[0]
            mc.set(opt, value, self._mc_flow(eng, mc.family), self._kernel_index(), client)
            if eng is not None and mc.changes_membership(opt):
                with eng.lock:
                    eng.set_meta(self._opts, self._member())
            return
        check_fixed(lookup(self.family, self.type, level, opt, True), level, opt, value)
        if level == IPPROTO_IPV6 and opt == IPV6_V6ONLY:
            self._v6only(value)
        if level == SOL_SOCKET and opt == _std.SO_BINDTODEVICE:
            value = self._device(value)  # a netif of the domain by name, as the stream face
        if level == SOL_SOCKET and opt in (SO_RCVBUF, SO_SNDBUF):
            value = max(2 * int(value), 2304 if opt == SO_RCVBUF else 4608)  # as Linux keeps it
            if opt == SO_RCVBUF and self._engine is not None:
                self._engine.rcvbuf = value
        if (level, opt) in TIMEO_OPTIONS:
            self._set_timeo(opt, value)
            return
        if (level, opt) in TIMESTAMP_OPTIONS or (level, opt) in IP_OPTIONS:
            set_option(self._opts, level, opt, value)
            if self._engine is not None:
                with self._engine.lock:
                    self._engine.set_meta(self._opts, self._member())
            return
        if (level, opt) in IP_MARKING:  # IP_TTL, IP_TOS, IPV6_UNICAST_HOPS, IPV6_TCLASS: the next datagram's
            mark = self._keep_mark(level, opt, ip_option(self.type, level, opt, value))
            eng = self._engine
            if eng is not None:
                with eng.lock:
                    for d in eng.flows():
                        d.set_marking(mark)
            return
        value = kept(level, opt, value, listening=False, connected=False)
        self._opts[level, opt] = value
        if (level, opt) in ((_std.IPPROTO_IP, IP_RECVERR), (IPPROTO_IPV6, IPV6_RECVERR)) and self._engine is not None:
            eng = self._engine
            with eng.lock:
                eng.set_recverr(self._recverr())
                self._update()

    def _mc_of(self, level: int, opt: int) -> Multicast | None:
        """The multicast state an option is of (usnet.client.mcast): IPv4's for IPPROTO_IP's, IPv6's
        for IPPROTO_IPV6's on an AF_INET6 socket; None for any other option."""
        if level == _std.IPPROTO_IP and opt in MULTICAST_OPTIONS:
            return self._mc
        if level == IPPROTO_IPV6 and opt in MULTICAST6_OPTIONS and self.family == AF_INET6:
            return self._mc6
        return None

    def _option(self, level: int, opt: int) -> Any:
        mc = self._mc_of(level, opt)
        if mc is not None:
            return mc.get(opt)
        spec = lookup(self.family, self.type, level, opt, False)
        if (level, opt) in TIMEO_OPTIONS:
            return timeo_get(self._opts.get(timeo_key(opt)))
        if (level, opt) in TIMESTAMP_OPTIONS or (level, opt) in IP_OPTIONS:
            return option_value(self._opts, level, opt)
        if level == SOL_SOCKET:
            if opt == SO_ERROR:
                eng = self._engine
                if eng is None:
                    return 0
                # under the lock, as the pump that set the error: its `_update` half done (the
                # pair showing POLLERR, its `error` not yet True) would leave POLLERR after the read
                with eng.lock:
                    err = eng.pending or eng.error
                    if eng.pending is not None:
                        eng.pending = None
                        self._update()
                return 0 if err is None else err.errno or errno.EIO
            if opt == _std.SO_TYPE:
                return SOCK_DGRAM
            if opt == _std.SO_PROTOCOL:
                return _std.IPPROTO_UDP
            if opt == _std.SO_DOMAIN:
                return int(self.family)
            if opt in (SO_RCVBUF, SO_SNDBUF) and (level, opt) not in self._opts:
                return RCVBUF
        if level == IPPROTO_IPV6 and opt == IPV6_V6ONLY:
            return self._v6only()
        return self._opts.get((level, opt), spec.default)

    def shutdown(self, how: int) -> None:
        self._need_open()
        eng = self._engine
        if eng is None or eng.remote is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    def _poll_state(self) -> tuple[bool, bool]:
        """What select shows: readable with a datagram or an error (POLLERR counts as both)."""
        readable, error = self._poll_bits()
        return readable or error, True

    def _poll_bits(self) -> tuple[bool, bool]:
        """(POLLIN, POLLERR) as Linux's datagram_poll: a datagram waits; an error is pending (an
        ICMP error on a connected socket, the error queue) or the flow failed. Never POLLIN for
        the error alone: epoll and poll tell them apart (`DatagramReadiness`)."""
        eng: DatagramEngine | None = self._engine
        if eng is None:
            return False, False
        error = (eng.error is not None and not self._orphan) or eng.pending is not None or bool(eng.errq)
        return bool(eng.rxq), error

    def _update(self) -> None:
        """Set the descriptor's readiness to the socket's. With the engine's lock held."""
        if not self._dead:
            readable, error = self._poll_bits()
            self._ready.set_error(readable, error)

    def _signal(self) -> None:
        """As socket._signal: a UDP socket of the default domain is bound again after a usnetd
        restart. A pump by the event loop that owns the flow sets the descriptor's readiness at
        the end of its callback instead (usnet.client.aio `_LoopDriver.defer`), after the
        transport read what it queued: no system call then for a batch the loop delivered."""
        eng = self._engine
        if not self._orphan and eng is not None and eng.error is not None:
            self._orphan_if_gone()
        elif eng is not None and (d := eng.driver) is not None and d.defer(self):
            return
        self._update()

    def _settle(self) -> None:
        """The readiness a deferred `_signal` held back, set from the loop's thread after its
        callback. Looked at without the lock first: a change the loop did not make is one
        another thread made under the lock, and it set the readiness itself; so the lock (two
        system calls in the main thread, usnet.client.sigdefer) is taken only for a change."""
        ready = self._ready
        if self._dead or (ready.readable, ready.error) == self._poll_bits():
            return
        eng = self._engine
        if eng is None:
            return
        with eng.lock:
            self._update()

    def _rebind(self) -> None:
        """usnetd is back (usnet.client.rebind): the same port, address and options on a new flow,
        with the datagrams the old one had queued; its dups move with it. ENETDOWN while none
        serves the path; another error fails the socket (`_rebind_failed`)."""
        old = self._engine
        if self._dead or old is None or not self._orphan:
            return
        host = None if self._wildcard else old.d.local[0]
        client, _ = self._target(host)  # (ENETDOWN: usnetd not back yet)
        eng = self._reopen(client, lambda: self._new_engine(self._port, host))
        if host is not None and eng.d.local[0] != host:
            eng.close()
            raise OSError(errno.EADDRNOTAVAIL, f"usnetd came back without {host}, the address this socket was bound to")
        with old.lock:
            group = self._dups(old)
            with eng.lock:
                eng.remote = old.remote
                for d in eng.flows():
                    d.remote = old.remote
                eng.rxq, eng.rx_bytes = old.rxq, old.rx_bytes  # received before usnetd went: still theirs
                eng.errq = old.errq
                old.rxq, old.errq, old.rx_bytes = deque(), deque(), 0
                for w in group:
                    w._engine, w._orphan = eng, False
                    eng.watch(w)
                    w._update()
            old.changed.notify_all()  # blocked receives: moved
        runner().add(eng)
        if self._wildcard:
            self._hear_loopback(eng)
        if self._dead:  # closed meanwhile: the new flow goes too
            self._last_close(eng)

    def _last_close(self, eng: Any) -> None:
        """A datagram flow has nothing to finish: it goes now, as Linux's close of a UDP socket
        frees its port before it returns (a bind of the same port right after succeeds)."""
        if self._owns_engine:
            runner().remove(eng)
            eng.close()

    def __repr__(self) -> str:
        where = "" if self._dead else f", laddr={self.getsockname()}"
        return f"<usnet.socket fd={self.fileno()}, family={self.family!s}, type=2, proto={self.proto}{where}>"

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        raise ValueError("only SOCK_STREAM type sockets are supported")
