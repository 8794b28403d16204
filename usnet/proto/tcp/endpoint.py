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

Listeners behave as Linux's under floods and full queues:

* the SYN queue (half-open connections) has its own bound, `syn_backlog`;
  when it is full, a SYN is answered with a SYN cookie
  (usnet.proto.tcp.syncookie; ``syncookies=1``, Linux's default) and the
  ACK that returns the cookie rebuilds the connection;
* the accept queue is full when it holds more than `backlog` (Linux's
  ``sk_acceptq_is_full``): a SYN is then dropped, and so is the ACK that
  would complete a handshake (no RST: the peer's retransmitted ACK or data
  gets in once the application accepts);
* segments to a listener with neither SYN, ACK nor RST (NULL, FIN, XMAS
  scans) and SYN+FIN are discarded silently (RFC 9293 §3.10.7.2, as Linux);
  an ACK without a connection or a good cookie is answered with a RST.

Each drop has its counter in `EndpointStats` under Linux's TcpExt name.
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
from usnet.proto.tcp.defer import defers
from usnet.proto.tcp.fault import abort_faulted
from usnet.proto.tcp.seq import MASK, seq_diff
from usnet.proto.tcp.syncookie import SynCookies, ts_decode, ts_encode
from usnet.proto.wire.ecn import ECT0, NOT_ECT
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.tcp import (
    ACK,
    CWR,
    ECE,
    FIN,
    RST,
    SYN,
    TcpChecksumError,
    TcpParts,
    TcpSegment,
    pack_segment,
    parse_tcp,
    pseudo_sum,
    tcp_options,
)

__all__ = ["EndpointStats", "Listener", "TcpEndpoint"]

Key = tuple[bytes, int, int]  # (remote address, remote port, local port)


class EndpointStats:
    """The endpoint's counters; the listener ones carry the names of Linux's TcpExt counters.

    ``listen_overflows``: a SYN or a handshake's last ACK dropped because the
    accept queue was full (ListenOverflows). ``listen_drops``: every SYN or
    last ACK a listener dropped, overflows included (ListenDrops).
    ``syn_dropped``: a SYN dropped because the SYN queue was full and SYN
    cookies are off. ``syncookies_sent`` / ``_recv`` / ``_failed``: cookie
    SYN-ACKs sent, cookie ACKs that rebuilt (or would have rebuilt) a
    connection, ACKs whose cookie did not check (SyncookiesSent/Recv/Failed).
    ``bad_flags``: segments to a listener with no SYN, ACK or RST, or
    SYN+FIN, discarded. ``defer_accept_drops``: a handshake's bare last ACK
    dropped under TCP_DEFER_ACCEPT (TCPDeferAcceptDrop). ``conn_faults``: connections
    aborted alone because an exception escaped their own work (usnet.proto.tcp.fault; no
    Linux counter: a kernel bug there is an oops).
    """

    __slots__ = (
        "segs_in", "bad_checksum", "bad_header", "wrong_address", "no_socket", "resets_sent",
        "syn_received", "syn_dropped", "listen_overflows", "listen_drops", "syncookies_sent",
        "syncookies_recv", "syncookies_failed", "bad_flags", "accepted", "time_wait_reused",
        "defer_accept_drops", "conn_faults",
    )
    segs_in: int
    bad_checksum: int
    bad_header: int
    wrong_address: int
    no_socket: int
    resets_sent: int
    syn_received: int
    syn_dropped: int
    listen_overflows: int
    listen_drops: int
    syncookies_sent: int
    syncookies_recv: int
    syncookies_failed: int
    bad_flags: int
    accepted: int
    time_wait_reused: int
    defer_accept_drops: int
    conn_faults: int

    def __init__(self) -> None:
        for n in self.__slots__:
            setattr(self, n, 0)

    def as_dict(self) -> dict:
        return {n: getattr(self, n) for n in self.__slots__}

    def __repr__(self) -> str:
        return f"EndpointStats({self.as_dict()})"


#: Seconds after the SYN queue last overflowed during which ACKs are checked for cookies (Linux's
#: TCP_SYNCOOKIE_VALID): before any overflow, and long after, a stray ACK is only a stray ACK.
COOKIE_VALID = 120.0


class Listener:
    """A listening port: half-open connections and established ones awaiting accept.

    `backlog` bounds the accept queue as Linux's listen(2) backlog does (full
    when it holds *more* than `backlog`); `syn_backlog` bounds the SYN queue
    (half-open connections), past which SYNs get cookies. `defer_accept`:
    TCP_DEFER_ACCEPT as Linux keeps it, in SYN-ACK retransmissions (0: off;
    usnet.proto.tcp.defer); it may change while listening, as Linux's.
    """

    __slots__ = ("port", "backlog", "syn_backlog", "config", "syn_queue", "accept_queue", "overflowed_at",
                 "defer_accept")

    def __init__(self, port: int, backlog: int, syn_backlog: int, config: TcpConfig,
                 defer_accept: int = 0) -> None:
        self.defer_accept = defer_accept
        self.port = port
        self.backlog = backlog
        self.syn_backlog = syn_backlog
        self.config = config
        self.syn_queue: dict[Key, TcpConnection] = {}
        self.accept_queue: deque[TcpConnection] = deque()
        self.overflowed_at: float | None = None  # when a SYN last found the SYN queue full

    def accept_full(self) -> bool:
        """As Linux's sk_acceptq_is_full: more waiting than the backlog (listen(0) takes one)."""
        return len(self.accept_queue) > self.backlog


#: The key of the ISN and timestamp-offset hashes, one per process as a kernel has one per boot. An
#: application's connections each have their own endpoint (one flow channel each, usnet.client.engine); with
#: a key per endpoint, a new connection on a 4-tuple a peer still holds in TIME_WAIT would get a random
#: ISN and TSval against the old one's, and half the time have its SYN refused for a second (RFC 6191).
_SECRET = os.urandom(16)


def _rcv_wscale(cfg: TcpConfig) -> int:
    """The window scale a connection with `cfg` offers (as TcpConnection computes it)."""
    ws = 0
    while ws < 14 and (cfg.rcvbuf_max >> ws) > 0xFFFF:
        ws += 1
    return ws


class TcpEndpoint:
    """All TCP connections and listeners of one local address (4 or 16 bytes)."""

    def __init__(
        self, local_addr: bytes, *, mtu: int = 1500, config: TcpConfig | None = None,
        port_chooser: Callable[[bytes, int], int] | None = None,
        ephemeral: tuple[int, int] = (49152, 65535), verify_checksum: bool = True,
        isn: Callable[[bytes, int, int, float], int] | None = None, syncookies: int = 1,
        cookie_secret: bytes | None = None, **options,
    ) -> None:
        """`syncookies` as Linux's net.ipv4.tcp_syncookies: 0 never (a full SYN queue drops SYNs),
        1 when a listener's SYN queue is full, 2 always. `cookie_secret`: a fixed key (tests)."""
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
        self.syncookies = syncookies
        self._cookies = SynCookies(cookie_secret)
        self.connections: dict[Key, TcpConnection] = {}
        # told of each connection that leaves the table (its 4-tuple is free): a connector's
        # engine gives the port back to the domain (usnet.client.engine)
        self.on_forget: Callable[[TcpConnection], None] | None = None
        # The connections that joined or left the table since a reader last took this (insertion-
        # ordered, a set), kept only once a reader asked for it (not None): the engine's `usnet ss`
        # publisher (usnet.client.tcpstats) learns which connection wants a slot and which gives one
        # back from it, without walking the table at every publication.
        self.churn: dict[TcpConnection, None] | None = None
        # told of each connection aborted by its own fault (`fault`), with the exception: the
        # engine logs the reason once and wakes that connection's waiters
        self.on_fault: Callable[[TcpConnection, BaseException], None] | None = None
        self.listeners: dict[int, Listener] = {}
        # Counts every change of what waits to be accepted (a listener added or gone, a connection
        # into or out of an accept queue): a listener's readiness depends on nothing else of TCP's,
        # so its watchers recompute it only when this moved (usnet.client.socket `_signal`).
        self.accept_moves = 0
        self.stats = EndpointStats()
        self._out: list[tuple[bytes, bytes | TcpParts, int, int]] = []
        # The schedule: connections something happened to since `outgoing` last visited them
        # (insertion-ordered, a set), and a heap of (deadline, tie, connection) whose stale
        # entries (timer_at moved on) are skipped. Nothing per event walks every connection.
        self.due: dict[TcpConnection, None] = {}
        self._timers: list[tuple[float, int, TcpConnection]] = []
        self._tie = itertools.count()
        # the heap's size that calls for a `_compact`: 2 * len(connections) + 64, kept as the
        # table changes (`_adopt`, `_forget`) rather than computed at every push (twice a request)
        self._timers_max = 64
        self.visits = 0  # connections visited by outgoing/timeout/on_timer: what the scale test counts

    # ------------------------------------------------------------------ user calls

    def listen(
        self, port: int, backlog: int = 128, syn_backlog: int = 256,
        config: TcpConfig | None = None, defer_accept: int = 0,
    ) -> Listener:
        """Listen on `port`: `backlog` bounds the accept queue, `syn_backlog` the SYN queue
        (half-open connections; past it SYNs get cookies, see the module docstring);
        `defer_accept`: TCP_DEFER_ACCEPT in SYN-ACK retransmissions (`Listener`)."""
        if port in self.listeners:
            raise OSError(98, f"port {port} already listening")  # EADDRINUSE
        lst = Listener(port, backlog, syn_backlog, config or self.config, defer_accept)
        self.listeners[port] = lst
        self.accept_moves += 1
        return lst

    def unlisten(self, port: int, now: float) -> None:
        """Stop listening; half-open connections are reset, unaccepted ones aborted."""
        lst = self.listeners.pop(port, None)
        if lst is None:
            return
        self.accept_moves += 1
        for conn in list(lst.syn_queue.values()) + list(lst.accept_queue):
            conn.abort(now)

    def accept(self, port: int) -> TcpConnection | None:
        """The next established connection on ``port``, or None."""
        lst = self.listeners.get(port)
        if lst is None or not lst.accept_queue:
            return None
        self.stats.accepted += 1
        self.accept_moves += 1
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
        conn = TcpConnection(  # which copies the config (with `options`) for itself: once
            self.local_addr, local_port, remote_addr, remote_port, now=now, mtu=self.mtu,
            iss=self._make_isn(remote_addr, remote_port, local_port, now), config=config or self.config,
            ts_offset=self._ts_offset(remote_addr), **options)
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
                try:  # the barrier (usnet.proto.tcp.fault): this connection's fault is its own
                    if st is SYN_RECEIVED and conn.passive and fl & ACK and not fl & (SYN | RST) \
                            and (seg.ack - conn.iss) & MASK == 1 and self._hold_ack(conn, seg):
                        return None
                    conn.on_segment(seg, now, ce)
                    self.due[conn] = None
                    if st is SYN_RECEIVED and conn.passive:  # only the handshake's end leaves the SYN queue
                        self._promote(conn, key, now)
                except Exception as exc:
                    self.fault(conn, exc, now)
                return conn
            else:
                self._forget(conn)
        lst = self.listeners.get(seg.dport)
        if lst is None:
            stats.no_socket += 1
            self._reset(src, seg)
            return None
        try:
            return self._to_listener(lst, key, src, seg, now, ce)
        except Exception as exc:
            conn = self.connections.get(key)
            if conn is None:
                raise  # no connection of its own yet: not one connection's fault (the engine fails, as before)
            self.fault(conn, exc, now)  # the one this SYN (or cookie ACK) just made
            return conn

    def fault(self, conn: TcpConnection, exc: BaseException, now: float) -> None:
        """`exc` escaped `conn`'s own work (its segment's processing, its output, its timers):
        abort `conn` alone, as Linux aborts a connection (usnet.proto.tcp.fault): ECONNABORTED
        with the reason, a RST to the peer if one can be built, out of the table (its 4-tuple
        and port free: `on_forget`) and the schedule; then `on_fault`. The other connections
        and the endpoint go on. Also for the owner, when what it does with a connection's
        segment raises (the engine's IP layer refusing it)."""
        self.stats.conn_faults += 1
        rst = abort_faulted(conn, exc, self.local_addr)
        if rst is not None:
            self.stats.resets_sent += 1
            self._out.append((conn.remote_addr, rst, 0, NOT_ECT))
        self._forget(conn)
        if self.on_fault is not None:
            self.on_fault(conn, exc)

    def _reset(self, src: bytes, seg: TcpSegment) -> None:
        r = rst_reply(pseudo_sum(self.local_addr, src), seg)
        if r is not None:
            self.stats.resets_sent += 1
            self._out.append((src, r, 0, NOT_ECT))

    def _to_listener(
        self, lst: Listener, key: Key, src: bytes, seg: TcpSegment, now: float, ce: bool,
    ) -> TcpConnection | None:
        """A segment for a listener and no connection: RFC 9293 §3.10.7.2 in Linux's order."""
        stats = self.stats
        fl = seg.flags
        if fl & ACK:
            if not fl & (SYN | RST) and self.syncookies and lst.overflowed_at is not None \
                    and now - lst.overflowed_at < COOKIE_VALID:
                conn = self._cookie_ack(lst, key, src, seg, now, ce)
                if conn is not False:
                    return conn  # type: ignore[return-value]  # rebuilt, or dropped (None)
            self._reset(src, seg)  # an ACK to a listener: RST (never one for a RST)
            return None
        if fl & RST or not fl & SYN or fl & FIN:
            stats.bad_flags += 1  # RST, NULL, FIN, XMAS, SYN+FIN: discarded, as Linux does
            return None
        stats.syn_received += 1
        want_cookie = self.syncookies == 2
        if len(lst.syn_queue) >= lst.syn_backlog:
            lst.overflowed_at = now
            if not self.syncookies:
                stats.syn_dropped += 1
                stats.listen_drops += 1
                return None
            want_cookie = True
        if lst.accept_full():
            stats.listen_overflows += 1  # as Linux: drop the SYN, the client retries
            stats.listen_drops += 1
            return None
        if want_cookie:
            if self.syncookies == 2:
                lst.overflowed_at = now
            self._cookie_synack(lst, src, seg, now)
            return None
        conn = TcpConnection(
            self.local_addr, seg.dport, src, seg.sport, now=now, mtu=self.mtu,
            iss=self._make_isn(src, seg.sport, seg.dport, now), config=lst.config,
            ts_offset=self._ts_offset(src))
        self._adopt(key, conn)
        conn.accept_syn(seg, now)
        lst.syn_queue[key] = conn
        return conn

    def _adopt(self, key: Key, conn: TcpConnection) -> None:
        """`conn` joins the table and the schedule (it touches `due` from now on)."""
        self.connections[key] = conn
        self._timers_max = 2 * len(self.connections) + 64
        conn.due = self.due
        if self.churn is not None:
            self.churn[conn] = None

    def _cookie_synack(self, lst: Listener, src: bytes, seg: TcpSegment, now: float) -> None:
        """Answer a SYN with a cookie SYN-ACK and keep nothing (usnet.proto.tcp.syncookie).

        The SYN-ACK is the one a connection would send (usnet.proto.tcp.connection
        `_syn_segment`): our MSS, window and window scale, with SACK and
        the window scale only if timestamps can carry them back.
        """
        cfg = lst.config
        v4 = len(src) == 4
        peer_mss = seg.mss if seg.mss else (536 if v4 else 1220)
        iss, _mss = self._cookies.make(self.local_addr, seg.dport, src, seg.sport, seg.seq, peer_mss, now)
        ecn = bool(cfg.ecn and seg.flags & (ECE | CWR) == ECE | CWR)
        ts = None
        ws = None
        sack = False
        if cfg.timestamps and seg.tsval is not None:
            ws = _rcv_wscale(cfg) if cfg.window_scaling and seg.wscale is not None else None
            sack = bool(cfg.sack and seg.sack_ok)
            peer_ws = min(seg.wscale, 14) if ws is not None and seg.wscale is not None else None
            ts_now = (int(now * 1000) + self._ts_offset(src)) & MASK  # the connection's own clock
            ts = (ts_encode(ts_now, peer_ws, sack, ecn), seg.tsval)
        mss_local = self.mtu - (20 if v4 else 40) - 20
        if cfg.mss:
            mss_local = min(mss_local, cfg.mss)
        seg_out = pack_segment(
            pseudo_sum(self.local_addr, src), seg.dport, seg.sport, iss, (seg.seq + 1) & MASK,
            SYN | ACK | ECE if ecn else SYN | ACK, min(cfg.rcvbuf, 0xFFFF),
            tcp_options(mss=mss_local, wscale=ws, sack_ok=sack, ts=ts))
        self.stats.syncookies_sent += 1
        self._out.append((src, seg_out, 0, cfg.ip_mark))  # the listener's IP_TTL/IP_TOS, as its connections'

    def _cookie_ack(
        self, lst: Listener, key: Key, src: bytes, seg: TcpSegment, now: float, ce: bool,
    ) -> TcpConnection | bool | None:
        """An ACK that may return a cookie: the rebuilt connection, None if dropped (accept queue
        full), False if the cookie does not check (the caller answers with a RST)."""
        stats = self.stats
        cfg = lst.config
        peer_isn = (seg.seq - 1) & MASK
        mss = self._cookies.check(self.local_addr, seg.dport, src, seg.sport, peer_isn, (seg.ack - 1) & MASK, now)
        ws = None
        sack = ecn = False
        if mss and seg.tsval is not None and seg.tsecr is not None:  # Linux's cookie_timestamp_decode
            ws, sack, ecn = ts_decode(seg.tsecr)
            if not cfg.timestamps or (sack and not cfg.sack) or (ws is not None and not cfg.window_scaling):
                mss = 0
        if not mss:
            stats.syncookies_failed += 1
            return False
        stats.syncookies_recv += 1
        if lst.accept_full():
            stats.listen_overflows += 1  # as for a half-open connection: drop, the peer sends again
            stats.listen_drops += 1
            return None
        conn = TcpConnection(
            self.local_addr, seg.dport, src, seg.sport, now=now, mtu=self.mtu,
            iss=(seg.ack - 1) & MASK, config=cfg, ts_offset=self._ts_offset(src))
        syn = TcpSegment(seg.sport, seg.dport, peer_isn, 0, SYN | (ECE | CWR if ecn else 0), seg.window,
                         mss=mss, wscale=ws, sack_ok=sack,
                         tsval=seg.tsval if seg.tsecr is not None else None)
        self._adopt(key, conn)
        conn.accept_syn(syn, now, synack_sent=True)
        lst.syn_queue[key] = conn
        conn.on_segment(seg, now, ce)
        self._promote(conn, key, now)
        return conn

    def _hold_ack(self, conn: TcpConnection, seg: TcpSegment) -> bool:
        """Whether the listener drops `seg`, the ACK of half-open `conn`'s SYN-ACK, in Linux's
        order (tcp_check_req, then the child's creation): a bare ACK under TCP_DEFER_ACCEPT
        (usnet.proto.tcp.defer; TCPDeferAcceptDrop), then any while the accept queue is full,
        not reset (tcp_abort_on_overflow=0): the SYN-ACK goes again, the peer acks again."""
        lst = self.listeners.get(conn.local_port)
        if lst is None:
            return False
        if lst.defer_accept and defers(conn, seg, lst.defer_accept):
            self.stats.defer_accept_drops += 1
            return True
        if lst.accept_full():
            self.stats.listen_overflows += 1
            self.stats.listen_drops += 1
            return True
        return False

    def _promote(self, conn: TcpConnection, key: Key, now: float) -> None:
        """Move a passive connection from the SYN queue once it is established (or gone)."""
        lst = self.listeners.get(conn.local_port)
        if lst is None or key not in lst.syn_queue or conn.state is SYN_RECEIVED:
            return
        del lst.syn_queue[key]
        if conn.state is CLOSED:
            return
        # No bound here: `input` dropped the last ACK of the handshake while the accept queue was
        # full, so one that got this far has room.
        lst.accept_queue.append(conn)
        self.accept_moves += 1

    # ------------------------------------------------------------------ output and timers

    def pending(self) -> bool:
        """Whether `outgoing` may have anything: a connection touched since (`due`), or a segment
        of the endpoint's own (a RST) waiting. False: neither output nor any deadline changed."""
        return bool(self.due or self._out)

    def outgoing(self, now: float) -> list[tuple[bytes, bytes | TcpParts, int, int]]:
        """Every segment due now, as ``(destination address, TCP segment, cut, ecn)``.

        With ``TcpConfig.gather`` a data segment is `TcpParts`, valid until the next
        `input` or application call on its connection (it views the send buffer).

        ``cut`` is 0, or for a super-segment (``TcpConfig.gso_max``) the payload
        of each segment the layer below must cut it into. ``ecn`` is the
        codepoint for its IP header: ECT(0) for new data on a connection that
        agreed to ECN, else NOT_ECT (usnet.proto.wire.ecn), ORed with the connection's
        IP mark (``TcpConfig.ip_mark``: its IP_TTL and IP_TOS, usnet.proto.ipmark), which
        the IP layer takes as its ``tos``.
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
            n = len(out)
            try:  # the barrier (usnet.proto.tcp.fault): a faulted connection sends its RST alone
                segs = conn.outgoing(now)
                if segs:
                    dst = conn.remote_addr
                    cut = conn.segment_cut if conn.max_segment > conn.mss else None
                    ect = conn.ect if conn.ecn_ok else None
                    mark = conn.cfg.ip_mark  # IP_TTL, IP_TOS (usnet.proto.ipmark): once per connection
                    ect0 = ECT0 | mark
                    for s in segs:
                        out.append((dst, s, cut(s) if cut else 0, ect0 if ect and ect(s) else mark))
                if conn.state is CLOSED:
                    self._forget(conn)
                else:
                    self._schedule(conn)
            except Exception as exc:
                del out[n:]
                self.fault(conn, exc, now)
        if self._out:  # the RSTs of connections that faulted just now
            out += self._out
            self._out = []
        return out

    def _forget(self, conn: TcpConnection) -> None:
        """A closed connection leaves the table, its listener's SYN queue and the schedule."""
        key = (conn.remote_addr, conn.remote_port, conn.local_port)
        if self.connections.get(key) is conn:
            del self.connections[key]
            self._timers_max = 2 * len(self.connections) + 64
            if self.on_forget is not None:
                self.on_forget(conn)
            if self.churn is not None:
                self.churn[conn] = None
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
                h = self._timers
                heapq.heappush(h, (t, next(self._tie), conn))
                if len(h) > self._timers_max:
                    self._compact()

    def _compact(self) -> None:
        """Drop the stale heap entries (each connection keeps one live entry at most)."""
        self._timers = [e for e in self._timers if e[2].timer_at == e[0] and e[2].due is not None]
        heapq.heapify(self._timers)

    def timeout(self, now: float | None = None) -> float | None:
        """The earliest deadline of any connection, or None.

        A connection in `due` (touched since the last `outgoing`) may have moved its
        deadline: that is read from the connection here, but not put on the heap, because
        the `outgoing` that follows (usnet.client.engine's pump: receive, `timeout`, timers,
        `outgoing`) moves it again and schedules it then; pushing it here too made two heap
        entries per connection and pump, one of them stale at once. Its old heap entry,
        if it comes to the top, is taken off (``timer_at`` None: `_schedule` pushes anew).
        """
        due = self.due
        best = None
        bad = None
        for conn in due:  # what happened since may have moved a deadline
            try:
                t = conn.timeout()
            except Exception as exc:  # the barrier: after the loop (`fault` changes `due`)
                bad = [] if bad is None else bad
                bad.append((conn, exc))
                continue
            if t is not None and (best is None or t < best):
                best = t
        self.visits += len(due)
        if bad is not None:
            for conn, why in bad:
                self.fault(conn, why, now if now is not None else 0.0)
            return now if now is not None else 0.0  # their RSTs are due
        h = self._timers
        while h:
            t, _, conn = h[0]
            if conn.timer_at == t and conn.due is not None:
                if conn not in due:
                    return t if best is None or t < best else best
                conn.timer_at = None  # its deadline is `best`'s business until it is scheduled
            heapq.heappop(h)  # stale: the connection moved on or left
        return best

    def on_timer(self, now: float) -> list[TcpConnection]:
        """Run the timers of the connections whose deadline has come (and only theirs); returns them."""
        bad = None
        for conn in self.due:
            try:
                self._schedule(conn)
            except Exception as exc:  # the barrier: after the loop (`fault` changes `due`)
                bad = [] if bad is None else bad
                bad.append((conn, exc))
        if bad is not None:
            for conn, why in bad:
                self.fault(conn, why, now)
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
            try:  # the barrier (usnet.proto.tcp.fault)
                due_at = conn.timeout()
                if due_at is not None and due_at <= now:
                    conn.on_timer(now)
                    if conn.passive:
                        self._promote(conn, (conn.remote_addr, conn.remote_port, conn.local_port), now)
            except Exception as exc:
                self.fault(conn, exc, now)
                continue
            self.due[conn] = None  # its output and its next deadline: at the next `outgoing`
        return fired
