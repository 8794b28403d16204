"""What goes into an interface advisory: rates, queueing delay, the trend rule, LL slot use.

Sans-I/O: these take counter readings and the time, and keep a few floats;
they never look at a netif. They run once per publication (every few
milliseconds), never per packet, so the netif pays nothing for them beyond
the integer counters it keeps anyway (docs/design-notes.md, "The interface
advisory").

- **Throughput** is an exponentially weighted moving average of the rate
  between publications, time constant `TAU` (100 ms): a sample over `dt`
  seconds has weight ``1 - exp(-dt / TAU)``. The first full interval after
  a silence seeds it; the reading that ends a silence only restarts the
  measurement, because what moved then moved at one instant, at no rate
  that can be told.
- **Queueing delay** is Little's law, as PIE (RFC 8033) estimates it: the
  bytes queued now over the rate they drain at, i.e. how long the current
  backlog takes to leave. The drain rate is the measured transmit
  throughput; before there is one, the link rate. Nothing is timestamped per
  packet.
- **The trend** (`suggest`): DOWN while the delay is above the target; UP
  while it is at most half the target, not rising, and the link has
  headroom (throughput under 90 % of a known link rate); HOLD otherwise.
- **LL slot use** is the share of the LL class's slots in which it started
  a frame, as a ratio of two exponentially weighted sums (used slots over
  slots passed) with the same time constant.
"""

from __future__ import annotations

import math

from usnet.abi.advisory import Trend

__all__ = ["MAX_DELAY", "TAU", "UP_HEADROOM", "RateMeter", "ShareMeter", "queue_delay", "suggest"]

TAU = 0.1  # seconds: time constant of every average here
UP_HEADROOM = 0.9  # UP only below this share of a known link rate
MAX_DELAY = 3600.0  # seconds: a queue that does not drain saturates here


class RateMeter:
    """The average rate (units/s) of a counter that only grows, sampled at irregular times."""

    def __init__(self, tau: float = TAU) -> None:
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be a positive number of seconds, not {tau!r}")
        self.tau = tau
        self.rate = 0.0
        self.count: int | None = None  # the counter at the last sample
        self.t = 0.0

    def update(self, now: float, count: int, restart: bool = False) -> int:
        """Take a reading; returns how much the counter moved since the last reading kept.

        `restart`: the reading only starts a new measurement (the end of a
        silence); the rate is left as it is. A reading at the same time as
        the last one is not kept: its movement counts at the next.
        """
        if self.count is None or restart:
            delta = 0 if self.count is None else count - self.count
            self.count, self.t = count, now
            return delta
        delta = count - self.count
        dt = now - self.t
        if dt <= 0:
            return delta
        self.count, self.t = count, now
        sample = delta / dt
        if self.rate == 0.0:
            self.rate = sample  # the first sample after a silence seeds the average
        else:
            self.rate += (1.0 - math.exp(-dt / self.tau)) * (sample - self.rate)
        return delta

    def reset(self) -> None:
        """A silence long enough that the past no longer counts: the rate is zero."""
        self.rate = 0.0


class ShareMeter:
    """An exponentially weighted share: `part` of `whole`, both counters that only grow."""

    def __init__(self, tau: float = TAU) -> None:
        self.tau = tau
        self.part = self.whole = 0.0
        self.last: tuple[int, int] | None = None
        self.t = 0.0

    def update(self, now: float, part: int, whole: int) -> float:
        if self.last is not None:
            decay = math.exp(-max(0.0, now - self.t) / self.tau)
            self.part = self.part * decay + (part - self.last[0])
            self.whole = self.whole * decay + (whole - self.last[1])
        self.last, self.t = (part, whole), now
        return self.share()

    def share(self) -> float:
        return min(1.0, self.part / self.whole) if self.whole > 1e-9 else 0.0


def queue_delay(queued_bytes: int, drain_bps: float, link_rate: float) -> float:
    """Seconds the queued bytes take to leave (Little's law): at the measured rate, else the link's.

    0 when nothing is queued or no rate is known yet (no evidence of a
    delay); MAX_DELAY at most.
    """
    if queued_bytes <= 0:
        return 0.0
    rate = drain_bps if drain_bps > 0 else link_rate
    if rate <= 0:
        return 0.0
    return min(MAX_DELAY, queued_bytes * 8 / rate)


def suggest(delay: float, previous_delay: float, target: float, throughput: float, link_rate: float) -> Trend:
    """The rate-trend suggestion for senders on a netif (the rule in the module docstring)."""
    if delay > target:
        return Trend.DOWN
    headroom = link_rate <= 0 or throughput < UP_HEADROOM * link_rate
    if delay <= target / 2 and delay <= previous_delay and headroom:
        return Trend.UP
    return Trend.HOLD
