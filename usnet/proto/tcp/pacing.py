"""Pacing: spread a window's segments over the round trip instead of sending them in one burst.

Why: an ACK clock that opens the window by N segments at once lets N
segments leave back to back at the host's speed. Where the path narrows,
they arrive faster than the bottleneck drains them, and a shallow queue
overflows although the average rate is well below the link's. Slow start
is the worst case: every ACK releases two segments, and the whole
doubled window lands on the bottleneck in a fraction of the RTT.

This is Linux's internal TCP pacing (tcp_update_pacing_rate, and
tcp_tso_autosize for the burst size), which it uses when no ``fq`` qdisc
paces for it:

* rate = max(cwnd, bytes in flight) / srtt, times 200 % while cwnd is
  below half of ssthresh (slow start: the window will double within the
  RTT, so the rate must run ahead of it) and 120 % otherwise;
* a burst (Linux: one TSO packet) of about 1 ms worth at that rate, at
  least two segments and at most 64 KB, may leave at once; after it the
  next may leave ``burst / rate`` later.

No RTT estimate yet (the handshake's first data): no pacing, as Linux.

Sans-I/O: the connection asks `begin` how many bytes may leave now, tells
`end` how many did, and turns ``next_time`` into a timer deadline when
pacing held data back; whoever drives the connection already wakes for its
deadlines (`TcpConnection.timeout`), so nothing else changes. Only new
data is held back; retransmissions are counted against the rate but never
wait for it, as loss recovery has its own clock (the ACKs).
"""

from __future__ import annotations

__all__ = ["UNPACED", "Pacer"]

UNPACED = 1 << 62  # "as much as the window allows"
_MAX_BURST = 65536  # GSO/TSO's ceiling in Linux
_BURST_TIME = 1 / 1024  # Linux: sk_pacing_shift 10, about a millisecond worth


class Pacer:
    """The pacing rate and the earliest time the next burst may leave."""

    __slots__ = ("ss_ratio", "ca_ratio", "rate", "next_time", "holds", "held")

    def __init__(self, ss_ratio: int = 200, ca_ratio: int = 120) -> None:
        self.ss_ratio = ss_ratio  # percent, as net.ipv4.tcp_pacing_ss_ratio
        self.ca_ratio = ca_ratio  # percent, as net.ipv4.tcp_pacing_ca_ratio
        self.rate = 0.0  # bytes per second; 0: not paced (no RTT yet)
        self.next_time = 0.0
        self.holds = 0  # times new data was held back to keep the rate (for TcpStats)
        self.held = False  # the last send stopped for the rate: a timer runs the schedule

    def update(self, cwnd: int, ssthresh: int, flight: int, srtt: float | None) -> float:
        """Recompute the rate from the window (Linux tcp_update_pacing_rate); returns it."""
        if not srtt or srtt <= 0:
            self.rate = 0.0
            return 0.0
        w = cwnd if cwnd > flight else flight
        ratio = self.ss_ratio if cwnd < ssthresh >> 1 else self.ca_ratio
        self.rate = w * ratio / (100.0 * srtt)
        return self.rate

    def burst(self, mss: int) -> int:
        """Bytes one burst may hold: ~1 ms at the rate, two segments at least, 64 KB at most."""
        b = int(self.rate * _BURST_TIME)
        if b > _MAX_BURST:
            b = _MAX_BURST
        return b if b > 2 * mss else 2 * mss

    def begin(self, now: float, mss: int) -> int:
        """Bytes that may leave now: a burst, or 0 before ``next_time``, or `UNPACED`."""
        if not self.rate:
            return UNPACED
        if now < self.next_time:
            return 0
        return self.burst(mss)

    def end(self, now: float, sent: int, mss: int, held: bool) -> None:
        """``sent`` bytes (new and retransmitted) left at ``now``: push ``next_time`` on.

        ``held``: new data waits for ``next_time``. A wake-up by that timer
        which comes late (the scheduler's slack) may catch up at most one
        burst, so lateness does not lower the rate; any other send (after
        idle, or when the window had been full) starts the schedule at
        ``now``, so no larger burst is saved up.
        """
        rate = self.rate
        if sent and rate:
            floor = now - self.burst(mss) / rate if self.held else now
            t = self.next_time
            self.next_time = (t if t > floor else floor) + sent / rate
        if held and not self.held:
            self.holds += 1
        self.held = held
