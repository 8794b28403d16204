"""TCP for one local address: demultiplexing, listeners, resets (sans-I/O).

The IP layer hands `TcpEndpoint.input` the raw TCP bytes of each segment
with the source and destination addresses; the endpoint verifies and parses
it, finds the connection by its 4-tuple (or a listener by port), and
collects everything to send from `outgoing` as ``(destination address,
segment)`` pairs for the IP layer to wrap. Time comes in as ``now``.

Why a separate object from the connection: everything here concerns *many*
connections or none — a SYN that creates one, a segment that belongs to
none (answered with a RST per RFC 9293 §3.10.7.1, never a RST for a RST),
the bounded SYN and accept queues, the choice of a free ephemeral port and
of an initial sequence number (RFC 6528: a clock plus a keyed hash of the
4-tuple, so sequence numbers are neither guessable nor reused too soon).
Malformed segments are counted, never raised: they come from the network.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
import random
from collections import deque
from collections.abc import Callable
from dataclasses import replace

from usnet.proto.tcp.connection import (
    CLOSED,
    SYN_RECEIVED,
    TIME_WAIT,
    TcpConfig,
    TcpConnection,
    rst_reply,
)
from usnet.proto.tcp.seq import MASK, seq_diff
from usnet.proto.wire.ecn import ECT0, NOT_ECT
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.tcp import ACK, RST, SYN, TcpChecksumError, parse_tcp, pseudo_sum

__all__ = ["EndpointStats", "Listener", "TcpEndpoint"]

Key = tuple[bytes, int, int]  # (remote address, remote port, local port)


class EndpointStats:
    __slots__ = (
        "segs_in", "bad_checksum", "bad_header", "wrong_address", "no_socket", "resets_sent",
        "syn_received", "syn_dropped", "listen_overflow", "accepted", "time_wait_reused",
    )
    segs_in: int
    bad_checksum: int
    bad_header: int
    wrong_address: int
    no_socket: int
    resets_sent: int
    syn_received: int
    syn_dropped: int
    listen_overflow: int
    accepted: int
    time_wait_reused: int

    def __init__(self) -> None:
        for n in self.__slots__:
            setattr(self, n, 0)

    def as_dict(self) -> dict:
        return {n: getattr(self, n) for n in self.__slots__}

    def __repr__(self) -> str:
        return f"EndpointStats({self.as_dict()})"


class Listener:
    """A listening port: half-open connections and established ones awaiting accept."""

    __slots__ = ("port", "backlog", "syn_backlog", "config", "syn_queue", "accept_queue")

    def __init__(self, port: int, backlog: int, syn_backlog: int, config: TcpConfig) -> None:
        self.port = port
        self.backlog = backlog
        self.syn_backlog = syn_backlog
        self.config = config
        self.syn_queue: dict[Key, TcpConnection] = {}
        self.accept_queue: deque[TcpConnection] = deque()


#: The key of the ISN and timestamp-offset hashes, one per process as a kernel has one per boot. An
#: application's connections each have their own endpoint (one flow channel each, usnet.client.engine); with
#: a key per endpoint, a new connection on a 4-tuple a peer still holds in TIME_WAIT would get a random
#: ISN and TSval against the old one's, and half the time have its SYN refused for a second (RFC 6191).
_SECRET = os.urandom(16)


class TcpEndpoint:
    """All TCP connections and listeners of one local address (4 or 16 bytes)."""

    def __init__(
        self, local_addr: bytes, *, mtu: int = 1500, config: TcpConfig | None = None,
        port_chooser: Callable[[bytes, int], int] | None = None,
        ephemeral: tuple[int, int] = (49152, 65535), verify_checksum: bool = True,
        isn: Callable[[bytes, int, int, float], int] | None = None, **options,
    ) -> None:
        if len(local_addr) not in (4, 16):
            raise ValueError("local address must be 4 or 16 bytes")
        self.local_addr = bytes(local_addr)
        self.mtu = mtu
        self.config = replace(config, **options) if config is not None else TcpConfig(**options)
        self.port_chooser = port_chooser
        self.ephemeral = ephemeral
        self.verify = verify_checksum
        self._isn = isn
        self._secret = _SECRET
        self.connections: dict[Key, TcpConnection] = {}
        self.listeners: dict[int, Listener] = {}
        self.stats = EndpointStats()
        self._out: list[tuple[bytes, bytes, int, int]] = []
        # The schedule: connections something happened to since `outgoing` last visited them
        # (insertion-ordered, a set), and a heap of (deadline, tie, connection) whose stale
        # entries (timer_at moved on) are skipped. Nothing per event walks every connection.
        self.due: dict[TcpConnection, None] = {}
        self._timers: list[tuple[float, int, TcpConnection]] = []
        self._tie = itertools.count()
        self.visits = 0  # connections visited by outgoing/timeout/on_timer: what the scale test counts

    # ------------------------------------------------------------------ user calls

    def listen(
        self, port: int, backlog: int = 128, syn_backlog: int = 256,
        config: TcpConfig | None = None,
    ) -> Listener:
        if port in self.listeners:
            raise OSError(98, f"port {port} already listening")  # EADDRINUSE
        lst = Listener(port, backlog, syn_backlog, config or self.config)
        self.listeners[port] = lst
        return lst

    def unlisten(self, port: int, now: float) -> None:
        """Stop listening; half-open connections are reset, unaccepted ones aborted."""
        lst = self.listeners.pop(port, None)
        if lst is None:
            return
        for conn in list(lst.syn_queue.values()) + list(lst.accept_queue):
            conn.abort(now)

    def accept(self, port: int) -> TcpConnection | None:
        """The next established connection on ``port``, or None."""
        lst = self.listeners.get(port)
        if lst is None or not lst.accept_queue:
            return None
        self.stats.accepted += 1
        return lst.accept_queue.popleft()

    def connect(
        self, remote_addr: bytes, remote_port: int, now: float, local_port: int | None = None,
        config: TcpConfig | None = None, **options,
    ) -> TcpConnection:
        """Active open; the SYN leaves with the next `outgoing`."""
        remote_addr = bytes(remote_addr)
        if local_port is None:
            local_port = self._choose_port(remote_addr, remote_port)
        key = (remote_addr, remote_port, local_port)
        if key in self.connections:
            raise OSError(98, "4-tuple in use")  # EADDRINUSE
        cfg = replace(config or self.config, **options)
        conn = TcpConnection(
            self.local_addr, local_port, remote_addr, remote_port, now=now, mtu=self.mtu,
            iss=self._make_isn(remote_addr, remote_port, local_port, now), config=cfg,
            ts_offset=self._ts_offset(remote_addr))
        self._adopt(key, conn)
        conn.connect(now)
        return conn

    def _choose_port(self, remote_addr: bytes, remote_port: int) -> int:
        if self.port_chooser is not None:
            return self.port_chooser(remote_addr, remote_port)
        lo, hi = self.ephemeral
        span = hi - lo + 1
        start = random.randrange(span)
        for i in range(span):
            p = lo + (start + i) % span
            if p not in self.listeners and (remote_addr, remote_port, p) not in self.connections:
                return p
        raise OSError(99, "no ephemeral port free")  # EADDRNOTAVAIL

    def _make_isn(self, raddr: bytes, rport: int, lport: int, now: float) -> int:
        if self._isn is not None:
            return self._isn(raddr, rport, lport, now) & MASK
        h = hashlib.blake2b(
            raddr + rport.to_bytes(2, "big") + lport.to_bytes(2, "big"),
            key=self._secret, digest_size=4).digest()
        return (int(now * 250_000) + int.from_bytes(h, "big")) & MASK  # RFC 6528: 4 us clock

    def _ts_offset(self, raddr: bytes) -> int:
        """The timestamp clock's offset towards `raddr`: secret, and the same for every connection to it.

        Random per connection, a new connection's TSval would be older than
        the last one's half the time; a peer holding that 4-tuple in
        TIME_WAIT then rejects the SYN (PAWS) and answers with an ACK of the
        old connection, and the connect waits a second for its SYN's retry.
        One offset per address pair (as Linux keeps) keeps TSval rising
        across connections, and still tells a peer nothing of our clock
        (RFC 7323 section 7.1).
        """
        h = hashlib.blake2b(b"tsval" + self.local_addr + raddr, key=self._secret, digest_size=4).digest()
        return int.from_bytes(h, "big")

    # ------------------------------------------------------------------ input

    def input(self, src: bytes, dst: bytes, data, now: float, ce: bool = False) -> TcpConnection | None:
        """One segment from the IP layer; returns the connection it went to, if any.

        `ce`: its IP header was marked Congestion Experienced (usnet.proto.wire.ecn).
        """
        stats = self.stats
        stats.segs_in += 1
        try:
            seg = parse_tcp(data, 0, None, src, dst, self.verify)
        except TcpChecksumError:
            stats.bad_checksum += 1
            return None
        except WireError:
            stats.bad_header += 1
            return None
        if dst != self.local_addr:
            stats.wrong_address += 1
            return None
        if not seg.sport or not seg.dport:  # port 0 names no connection (RFC 9293 §3.1)
            stats.bad_header += 1
            return None
        src = bytes(src)
        key = (src, seg.sport, seg.dport)
        conn = self.connections.get(key)
        fl = seg.flags
        if conn is not None:
            st = conn.state
            if st is TIME_WAIT and fl & SYN and not fl & ACK and seg.dport in self.listeners \
                    and seq_diff(seg.seq, conn.irs + conn.rcv_nxt) >= 0 \
                    and seg.seq != (conn.irs + conn.rcv_nxt - 1) & MASK:
                # A new incarnation whose SYN is above the old one's sequence space
                # may take over the 4-tuple (RFC 9293 §3.10.7.4, RFC 6191).
                stats.time_wait_reused += 1
                self._forget(conn)
            elif st is not CLOSED:
                conn.on_segment(seg, now, ce)
                self.due[conn] = None
                if conn.passive:
                    self._promote(conn, key, now)
                return conn
            else:
                self._forget(conn)
        lst = self.listeners.get(seg.dport)
        if lst is None or fl & (RST | ACK) or not fl & SYN:
            if lst is None:
                stats.no_socket += 1
            r = rst_reply(pseudo_sum(self.local_addr, src), seg)
            if r is not None:
                stats.resets_sent += 1
                self._out.append((src, r, 0, NOT_ECT))
            return None
        stats.syn_received += 1
        if len(lst.syn_queue) >= lst.syn_backlog:
            stats.syn_dropped += 1
            return None
        if len(lst.accept_queue) >= lst.backlog:
            stats.listen_overflow += 1  # as Linux: drop the SYN, the client retries
            return None
        conn = TcpConnection(
            self.local_addr, seg.dport, src, seg.sport, now=now, mtu=self.mtu,
            iss=self._make_isn(src, seg.sport, seg.dport, now), config=replace(lst.config),
            ts_offset=self._ts_offset(src))
        self._adopt(key, conn)
        conn.accept_syn(seg, now)
        lst.syn_queue[key] = conn
        return conn

    def _adopt(self, key: Key, conn: TcpConnection) -> None:
        """`conn` joins the table and the schedule (it touches `_due` from now on)."""
        self.connections[key] = conn
        conn.due = self.due

    def _promote(self, conn: TcpConnection, key: Key, now: float) -> None:
        """Move a passive connection from the SYN queue once it is established (or gone)."""
        lst = self.listeners.get(conn.local_port)
        if lst is None or key not in lst.syn_queue or conn.state is SYN_RECEIVED:
            return
        del lst.syn_queue[key]
        if conn.state is CLOSED:
            return
        if len(lst.accept_queue) >= lst.backlog:
            self.stats.listen_overflow += 1
            conn.abort(now)
            return
        lst.accept_queue.append(conn)

    # ------------------------------------------------------------------ output and timers

    def outgoing(self, now: float) -> list[tuple[bytes, bytes, int, int]]:
        """Every segment due now, as ``(destination address, TCP segment, cut, ecn)``.

        ``cut`` is 0, or for a super-segment (``TcpConfig.gso_max``) the payload
        of each segment the layer below must cut it into. ``ecn`` is the
        codepoint for its IP header: ECT(0) for new data on a connection that
        agreed to ECN, else NOT_ECT (usnet.proto.wire.ecn).
        """
        out = self._out
        self._out = []
        due = self.due
        if not due:
            return out
        self.visits += len(due)
        todo = list(due)
        due.clear()
        for conn in todo:
            segs = conn.outgoing(now)
            if segs:
                dst = conn.remote_addr
                cut = conn.segment_cut if conn.max_segment > conn.mss else None
                ect = conn.ect if conn.ecn_ok else None
                for s in segs:
                    out.append((dst, s, cut(s) if cut else 0, ECT0 if ect and ect(s) else NOT_ECT))
            if conn.state is CLOSED:
                self._forget(conn)
            else:
                self._schedule(conn)
        return out

    def _forget(self, conn: TcpConnection) -> None:
        """A closed connection leaves the table, its listener's SYN queue and the schedule."""
        key = (conn.remote_addr, conn.remote_port, conn.local_port)
        if self.connections.get(key) is conn:
            del self.connections[key]
        lst = self.listeners.get(conn.local_port)
        if lst is not None and lst.syn_queue.get(key) is conn:
            del lst.syn_queue[key]
        conn.due = None
        conn.timer_at = None
        self.due.pop(conn, None)

    def _schedule(self, conn: TcpConnection) -> None:
        """Put `conn`'s deadline on the heap if it moved (the old entry goes stale)."""
        t = conn.timeout()
        if t != conn.timer_at:
            conn.timer_at = t
            if t is not None:
                heapq.heappush(self._timers, (t, next(self._tie), conn))
                if len(self._timers) > 2 * len(self.connections) + 64:
                    self._compact()

    def _compact(self) -> None:
        """Drop the stale heap entries (each connection keeps one live entry at most)."""
        self._timers = [e for e in self._timers if e[2].timer_at == e[0] and e[2].due is not None]
        heapq.heapify(self._timers)

    def timeout(self, now: float | None = None) -> float | None:
        """The earliest deadline of any connection, or None."""
        for conn in self.due:  # what happened since may have moved a deadline
            self._schedule(conn)
        self.visits += len(self.due)
        h = self._timers
        while h:
            t, _, conn = h[0]
            if conn.timer_at == t and conn.due is not None:
                return t
            heapq.heappop(h)  # stale: the connection moved on or left
        return None

    def on_timer(self, now: float) -> list[TcpConnection]:
        """Run the timers of the connections whose deadline has come (and only theirs); returns them."""
        for conn in self.due:
            self._schedule(conn)
        h = self._timers
        fired = []
        while h and h[0][0] <= now:
            t, _, conn = heapq.heappop(h)
            if conn.timer_at != t or conn.due is None:
                continue
            conn.timer_at = None
            fired.append(conn)
        self.visits += len(fired)
        for conn in fired:
            due_at = conn.timeout()
            if due_at is not None and due_at <= now:
                conn.on_timer(now)
                if conn.passive:
                    self._promote(conn, (conn.remote_addr, conn.remote_port, conn.local_port), now)
            self.due[conn] = None  # its output and its next deadline: at the next `outgoing`
        return fired
