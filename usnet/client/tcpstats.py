"""Publishing each connection's TCP statistics in the flow channel's TCPINFO records (usnet.abi.tcpinfo).

`usnet ss` reads them from the domain without asking this process. The engine
calls `publish` at the end of every pump; the records are rewritten at most
every `INTERVAL` seconds (a coarse timer: a pump costs nothing more between
publications), and `due` makes the engine wake once more after its last pump
so that the final figures of a connection that went quiet are published too.
A connection takes a slot when first seen and gives it back when TCP forgets
it; listening sockets have a row of their own. Connections past the region's
slots are counted in its header (`unlisted`), not shown.

The delivery rate is TCP's own (usnet.proto.tcp.rate, Linux's
tcpi_delivery_rate); before its first sample, bytes acknowledged over the last
round trip (at least 50 ms), from one publication to the next, measured here.
"""

from __future__ import annotations

import time
from typing import Any

from usnet.abi.tcpinfo import FLAG_LISTENER, TcpInfoWriter

__all__ = ["INTERVAL", "Publisher"]

#: Seconds between two publications of an active channel's records.
INTERVAL = 0.25
U32 = 0xFFFFFFFF
U64 = (1 << 64) - 1
LISTEN = 1


def _u32(x: float | None) -> int:
    if x is None or x != x or x < 0:
        return 0
    return U32 if x >= U32 else int(x)


def _u64(x: float | None) -> int:
    if x is None or x != x or x < 0:
        return 0
    return U64 if x >= U64 else int(x)


def _us(seconds: float | None) -> int:
    return 0 if seconds is None else _u32(seconds * 1e6)


class Publisher:
    """One channel's records: which connection holds which slot, and when to write them next.

    A publication costs the slots, never the connections: it rewrites the records of the
    slot holders (at most `slots`, a constant of the channel), and learns which connections
    came and went from the endpoint's `churn` (TcpEndpoint), not by walking its table. A
    listener holding 10,000 connections publishes as cheaply as one holding 100 (issue 18).
    """

    def __init__(self, mem: memoryview, family: int) -> None:
        self.w = TcpInfoWriter(mem)
        self.family = family
        self.slot_of: dict[Any, int] = {}  # a TcpConnection, or ("L", port) for a listener
        self.free = list(range(self.w.slots - 1, -1, -1))
        # live connections that found no free slot (a set): they take the slots others give back
        self.waiting: dict[Any, None] = {}
        self.next_at = 0.0
        self.dirty = False
        self.rates: dict[Any, list] = {}  # connection -> [window start, bytes_acked then, rate]
        self.unlisted = 0
        self.looked = 0  # entries a publication looked at (slots, churn, listeners): what the scale test counts

    def due(self) -> float | None:
        """When the engine must pump again to publish what changed since the last publication."""
        return self.next_at if self.dirty else None

    def publish(self, tcp: Any, now: float) -> None:
        """Called at the end of every pump (with the engine's lock held)."""
        self.dirty = True
        if now < self.next_at:
            return
        self.next_at = now + INTERVAL
        self.dirty = False
        conns, listeners = tcp.connections, tcp.listeners
        churn = tcp.churn
        if churn is None:  # the first publication: every connection so far is news
            churn = dict.fromkeys(conns.values())
        tcp.churn = {}
        slot_of, w, free, waiting = self.slot_of, self.w, self.free, self.waiting
        self.looked += len(slot_of) + len(churn) + len(listeners)

        def live(key: Any) -> bool:
            if type(key) is tuple:
                return key[1] in listeners
            return conns.get((key.remote_addr, key.remote_port, key.local_port)) is key

        for key in [k for k in slot_of if not live(k)]:
            gone = slot_of.pop(key)
            w.clear(gone)
            free.append(gone)
            self.rates.pop(key, None)
        for c in churn:
            if c in slot_of:
                continue
            if live(c):
                waiting[c] = None
            else:
                waiting.pop(c, None)
        for p in listeners:
            if ("L", p) not in slot_of and free:
                slot_of["L", p] = free.pop()
        while free and waiting:
            c = waiting.popitem()[0]  # (not the first: popping a dict's head again and again rescans it)
            self.looked += 1
            if live(c):
                slot_of[c] = free.pop()
        ns = time.monotonic_ns()
        for key, s in slot_of.items():
            if type(key) is tuple:
                w.publish(s, self._listener(listeners[key[1]], ns))
            else:
                w.publish(s, self._connection(key, now, ns))
        unlisted = len(conns) + len(listeners) - len(slot_of)
        if unlisted != self.unlisted:
            self.unlisted = unlisted
            w.set_unlisted(unlisted)

    def _listener(self, lst: Any, ns: int) -> tuple:
        z16 = bytes(16)
        return (LISTEN, self.family, FLAG_LISTENER, lst.port, 0, 0, *z16,
                0, 0, 0, 0, 0, _u32(len(lst.accept_queue)), _u32(lst.backlog), 0, 0, 0,
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, ns)

    def _connection(self, c: Any, now: float, ns: int) -> tuple:
        st = c.stats
        srtt = st.srtt
        r = self.rates.get(c)
        if r is None:
            r = self.rates[c] = [now, st.bytes_acked, 0]
        elif now - r[0] >= max(srtt or 0.0, 0.05):
            if st.bytes_acked > r[1]:  # as Linux, the last sample stays while nothing is acknowledged
                r[2] = (st.bytes_acked - r[1]) / (now - r[0])
            r[0], r[1] = now, st.bytes_acked
        return (int(c.state), self.family, 0, c.local_port, c.remote_port, _u32(c.mss),
                *c.remote_addr.ljust(16, b"\0")[:16],
                _us(srtt), _us(st.rttvar), _us(st.rto), _u32(st.cwnd), _u32(st.ssthresh),
                _u32(c.rcv_queued), _u32(c.pending), _u32(c.in_flight), _u32(c.snd_wnd), _u32(c.rcv_window),
                _u64(st.retransmits), _u64(st.retransmitted_bytes), _u64(st.rto_timeouts),
                _u64(st.bytes_acked), _u64(st.bytes_in), _u64(st.bytes_out), _u64(st.segs_out), _u64(st.segs_in),
                _u64(st.pacing_rate), _u64(st.delivery_rate or r[2]), ns)
