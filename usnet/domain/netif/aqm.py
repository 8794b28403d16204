"""CoDel (RFC 8289) for the general class's per-flow queues at a netif: sans-I/O.

On a paced netif the queue forms in usnet, as it does in a Wi-Fi driver: a
flow that sends faster than its share of the link builds a standing queue
in front of its own packets. Backpressure (the switch suspends a flow whose
queue passes `high_water`) bounds the queue in packets, not in time: at
50 Mbit/s shared by eight flows, 1,024 frames of a flow wait almost two
seconds. CoDel bounds it in time. Each queue is served round-robin by
bytes already (the netif's turns: the "FQ" of FQ-CoDel), so one flow's
standing queue costs only that flow; CoDel drops from its head when the
time its packets spend queued (their sojourn) stays above `target` for an
`interval`, then faster, at `interval / sqrt(count)`, until the sojourn is
back under the target. A sender that slows down for a drop (TCP, an
application reading its TX_DROPPED events or the interface advisory) then
keeps a queue of about `target`.

It never drops while the queue holds at most one full-size packet (`mtu`
bytes behind the head): a sparse flow waits only for the other flows'
turns, and dropping its packets would not shorten that. The LL class has no
AQM: its packets go ahead of the general class and never stand in a queue.

Time is an argument (seconds, monotonic); the netif (usnet.domain.netif.netif)
keeps one CoDel per general-class queue and asks `drop` at each dequeue.
"""

from __future__ import annotations

import math

__all__ = ["INTERVAL", "TARGET", "CoDel"]

TARGET = 0.005  # seconds: the sojourn CoDel lets a queue keep (RFC 8289's default)
INTERVAL = 0.100  # seconds: how long it must stand above the target before the first drop


class CoDel:
    """The CoDel state of one queue (RFC 8289 section 5); `drop` at each dequeue."""

    __slots__ = ("target", "interval", "first_above", "drop_next", "count", "lastcount", "dropping")

    def __init__(self, target: float = TARGET, interval: float = INTERVAL) -> None:
        if not (target > 0 and interval > 0):
            raise ValueError("CoDel needs target > 0 and interval > 0")
        self.target = float(target)
        self.interval = float(interval)
        self.first_above: float | None = None  # when the sojourn may first count as standing
        self.drop_next = 0.0  # when the next drop is due, while dropping
        self.count = 0  # drops since dropping began (carried over a quick re-entry)
        self.lastcount = 0
        self.dropping = False

    def _ok_to_drop(self, sojourn: float, now: float, backlog: int, mtu: int) -> bool:
        if sojourn < self.target or backlog <= mtu:
            self.first_above = None
            return False
        if self.first_above is None:
            self.first_above = now + self.interval
            return False
        return now >= self.first_above

    def _control_law(self, t: float) -> float:
        return t + self.interval / math.sqrt(self.count)

    def drop(self, sojourn: float, now: float, backlog: int, mtu: int) -> bool:
        """Whether to drop the packet at the head of the queue, about to leave it at `now`.

        `sojourn`: how long it has been queued; `backlog`: the bytes queued
        behind it; `mtu`: the largest packet. Call again for the next head
        after a drop (RFC 8289's dequeue loop).
        """
        ok = self._ok_to_drop(sojourn, now, backlog, mtu)
        if self.dropping:
            if not ok:
                self.dropping = False  # the sojourn is back under the target
                return False
            if now < self.drop_next:
                return False
            self.count += 1
            self.drop_next = self._control_law(self.drop_next)
            return True
        if not ok:
            return False
        self.dropping = True
        # Dropping again soon after it stopped: start near the rate that last worked.
        delta = self.count - self.lastcount
        self.count = delta if delta > 1 and now - self.drop_next < 16 * self.interval else 1
        self.lastcount = self.count
        self.drop_next = self._control_law(now)
        return True
