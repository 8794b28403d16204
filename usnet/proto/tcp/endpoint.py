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
        self.connections[key] = conn
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
                del self.connections[key]
            elif st is not CLOSED:
                conn.on_segment(seg, now, ce)
                if conn.passive:
                    self._promote(conn, key, now)
                return conn
            else:
                del self.connections[key]
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
        conn.accept_syn(seg, now)
        self.connections[key] = conn
        lst.syn_queue[key] = conn
        return conn

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
        dead = []
        for key, conn in self.connections.items():
            segs = conn.outgoing(now)
            if segs:
                dst = conn.remote_addr
                cut = conn.segment_cut if conn.max_segment > conn.mss else None
                ect = conn.ect if conn.ecn_ok else None
                for s in segs:
                    out.append((dst, s, cut(s) if cut else 0, ECT0 if ect and ect(s) else NOT_ECT))
            if conn.state is CLOSED:
                dead.append(key)
        for key in dead:
            conn = self.connections.pop(key)
            lst = self.listeners.get(conn.local_port)
            if lst is not None:
                lst.syn_queue.pop(key, None)
        return out

    def timeout(self, now: float | None = None) -> float | None:
        """The earliest deadline of any connection, or None."""
        best = None
        for conn in self.connections.values():
            t = conn.timeout()
            if t is not None and (best is None or t < best):
                best = t
        return best

    def on_timer(self, now: float) -> None:
        for key, conn in list(self.connections.items()):
            t = conn.timeout()
            if t is not None and t <= now:
                conn.on_timer(now)
                if conn.passive:
                    self._promote(conn, key, now)
