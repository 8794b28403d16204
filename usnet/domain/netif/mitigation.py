"""Receive mitigation: when the flow switch rings a sleeping client's doorbell.

Ringing a client's bell is a pipe write, a system call, and a process
wake-up on the other side. A client that sleeps between small batches of a
fast flow would be woken once per batch; NICs solve the same problem with
interrupt moderation (ethtool's adaptive-rx). This is the rule, sans-I/O:
time is an argument, and the flow port (usnet.domain.switch.port) does the
ringing. docs/design-notes.md, "Receive mitigation", explains it.

The rule, per flow port:

* The packet rate is estimated from the arrivals: `score` is the packets
  published, exponentially weighted with time constant `tau` (2 ms), so
  `score / tau` is the recent rate in packets per second.
* At the measured rate, a hold of `hold` (250 us) would gather
  `rate * hold` packets. Below two (under 8,000 packets/s with the
  defaults) holding would only add latency: the bell rings at once, on
  every batch, as without mitigation.
* Above, the bell is held until `frames = min(max_frames, ceil(rate *
  hold))` packets wait unrung (checked as they arrive: at a steady rate
  this fires after about `hold` without a timer), or until `hold` has
  passed since the first unrung packet (the deadline, which the domain
  loop folds into its wait: the backstop for a flow that stops).
* A client that is awake (it has not set NEED_WAKEUP) needs no bell: it
  checks the ring before it sleeps. Its arrivals only feed the estimate,
  and anything held is forgotten.

So a fast flow costs its client about one wake-up per `hold` (4,000 a
second), or one per `max_frames` packets if that comes sooner, and a packet
waits at most `hold` past its arrival, or until the loop's next pass after
that, before its bell.
"""

from __future__ import annotations

import math

__all__ = ["HOLD", "MIN_FRAMES", "TAU", "RxMitigation"]

HOLD = 250e-6  # seconds: the longest a bell is held past the first unrung packet
TAU = 0.002  # seconds: time constant of the rate estimate
MIN_FRAMES = 2  # a hold that would not gather this many packets is not worth its latency


class RxMitigation:
    """The receive-mitigation state of one flow port (see the module docstring).

    `arrive` at every publication on the RX ring, `due` at every pass of the
    domain loop while `deadline` is set; each returns True when the bell
    should ring now.
    """

    __slots__ = ("hold", "tau", "max_frames", "score", "last", "held", "deadline")

    def __init__(self, max_frames: int = 256, hold: float = HOLD, tau: float = TAU) -> None:
        if not (hold > 0 and tau > 0 and max_frames >= MIN_FRAMES):
            raise ValueError(f"receive mitigation needs hold > 0, tau > 0 and max_frames >= {MIN_FRAMES}")
        self.hold = float(hold)
        self.tau = float(tau)
        self.max_frames = int(max_frames)
        self.score = 0.0  # packets, exponentially weighted over time (constant tau)
        self.last: float | None = None  # the time of the last arrival
        self.held = 0  # packets published since the last bell while the client sleeps
        self.deadline: float | None = None  # when the held bell must ring; None: nothing held

    def rate(self) -> float:
        """The estimated packet rate (packets per second) as of the last arrival."""
        return self.score / self.tau

    def frames(self) -> int:
        """How many unrung packets make the bell ring at the present rate; 0: ring at once."""
        want = self.score * self.hold / self.tau  # rate * hold: what a hold would gather
        if want < MIN_FRAMES:
            return 0
        return min(self.max_frames, math.ceil(want))

    def arrive(self, now: float, k: int, asleep: bool) -> bool:
        """`k` packets were published at `now`, the client asleep or not; True: ring now."""
        last = self.last
        if last is not None and now > last:
            self.score *= math.exp((last - now) / self.tau)
        self.score += k
        if last is None or now > last:
            self.last = now
        if not asleep:
            # it will see them before it sleeps (it checks the ring after setting NEED_WAKEUP)
            self.cancel()
            return False
        if self.deadline is None:
            self.deadline = now + self.hold
        self.held += k
        frames = self.frames()
        if frames == 0 or self.held >= frames or now >= self.deadline:
            self.cancel()
            return True
        return False

    def due(self, now: float) -> bool:
        """At a pass of the loop: True if a held bell's time has come (it is then no longer held)."""
        if self.deadline is not None and now >= self.deadline:
            self.cancel()
            return True
        return False

    def cancel(self) -> None:
        """Forget a held bell (rung now, or another way, or not needed)."""
        self.held = 0
        self.deadline = None
