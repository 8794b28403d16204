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
  least two segments, may leave at once. Linux caps a TSO packet at 64 KB
  and sends the next one len/rate later, with a timer precise to
  microseconds; a Python stack wakes about once a millisecond at best, so
  the burst here is the 1 ms worth itself, uncapped: a cap below it would
  make the scheduler's wake-up rate, not the pacing rate, the limit.

Linux stamps each packet with its departure time; here the same schedule is
a token bucket of one burst: credit accrues at the rate, a send may start
while there is credit (a whole segment leaves even if it overdraws it), and
held data waits until half a burst has accrued. Small writes at one instant
(TCP_NODELAY) therefore pass as the bucket allows instead of each waiting
a few microseconds, and a wake-up that comes late (the scheduler's slack)
loses no rate as long as it is late by less than half a burst.

No RTT estimate yet (the handshake's first data): no pacing, as Linux.

Sans-I/O: the connection asks `begin` how many bytes may leave now, tells
`end` how many did, and turns ``next_time`` into a timer deadline when
pacing held data back (the credit is brought up to date only by a step that
sent or held: one that did neither leaves the bucket as it was, so a
connection with nothing to send skips the step, usnet.proto.tcp.txfast's
`send_none`); whoever drives the connection already wakes for its
deadlines (`TcpConnection.timeout`), so nothing else changes. Only new
data is held back; retransmissions are counted against the rate but never
wait for it, as loss recovery has its own clock (the ACKs).
"""

from __future__ import annotations

__all__ = ["UNPACED", "Pacer"]

UNPACED = 1 << 62  # "as much as the window allows"
_BURST_TIME = 1 / 1024  # Linux: sk_pacing_shift 10, about a millisecond worth


class Pacer:
    """The pacing rate and the credit of bytes that may leave now."""

    __slots__ = ("ss_ratio", "ca_ratio", "rate", "credit", "stamp", "next_time", "holds", "held", "pending")

    def __init__(self, ss_ratio: int = 200, ca_ratio: int = 120) -> None:
        self.ss_ratio = ss_ratio  # percent, as net.ipv4.tcp_pacing_ss_ratio
        self.ca_ratio = ca_ratio  # percent, as net.ipv4.tcp_pacing_ca_ratio
        self.rate = 0.0  # bytes per second; 0: not paced (no RTT yet)
        self.credit = 0.0  # bytes that may leave now; negative: overdrawn by the last segment
        self.stamp = 0.0  # when `credit` was last brought up to date
        self.next_time = 0.0  # when held data may go (valid while `held`)
        self.holds = 0  # times new data was held back to keep the rate (for TcpStats)
        self.held = False
        self.pending = 0.0  # `begin`'s credit, for `end` to commit (0.0 outside a step)

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
        """Bytes one burst may hold: ~1 ms at the rate, two segments at least."""
        b = int(self.rate * _BURST_TIME)
        return b if b > 2 * mss else 2 * mss

    def begin(self, now: float, mss: int) -> int:
        """Bytes that may leave now (a segment may overdraw them), 0 if none, or `UNPACED`.

        The credit accrued since `stamp` is computed, not yet stored: `end` stores it if the
        step sent or held something. A step that did neither leaves credit and stamp as they
        were, so skipping such a step changes nothing (the next step accrues over both
        intervals at its own rate, the same float expression either way)."""
        rate = self.rate
        if not rate:
            return UNPACED
        c = self.credit + (now - self.stamp) * rate
        cap = int(rate * _BURST_TIME)  # burst()
        if cap <= 2 * mss:
            cap = 2 * mss
        self.pending = c = c if c < cap else cap
        return int(c) if c >= 1 else 0

    def end(self, now: float, sent: int, mss: int, held: bool) -> None:
        """``sent`` bytes (new and retransmitted) left at ``now``; ``held``: new data waits.

        Held data waits until half a burst (at least a segment) has accrued:
        `next_time`, which the connection makes a timer deadline.
        """
        rate = self.rate
        if not rate:
            self.held = False
            return
        c, self.pending = self.pending, 0.0
        if not sent and not held:
            self.held = False
            return  # nothing happened: the bucket stays as it was (see `begin`)
        self.credit = c - sent
        self.stamp = now
        if held:
            want = self.burst(mss) >> 1
            if want < mss:
                want = mss
            self.next_time = now + (want - self.credit) / rate
            if not self.held:
                self.holds += 1
        self.held = held
