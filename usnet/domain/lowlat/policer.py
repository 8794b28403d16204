"""The token bucket that holds a low-latency flow to its lease's rate.

The flow switch asks it once per transmit batch of a flow that holds a
lease: `admit(lens, now, overhead)` says how many packets at the head of
the batch conform, and takes their bytes from the bucket. The rest are
dropped by the switch (docs/design-notes.md, "The agent": why drop).

The bucket holds at most `burst` bytes and fills at `rate` bytes per
second; it starts full, at the first batch it is asked about, so it runs
on the clock of whoever asks (the switch's), whatever clock granted it. A packet conforms if its bytes (its length plus
`overhead`, the Ethernet header the link also carries) fit in what the
bucket holds. So over any interval [s, t] the bytes admitted are at most
`rate * (t - s) + burst`, whatever the arrivals, which is what admission
counted on. The test is on a prefix of the batch: once one packet does
not fit, the packets behind it are dropped too, so the flow's packets that
do go out keep their order with no gaps filled in from later.

It also carries the lease's largest packet (`max_packet`), which the LL
path's header check holds each packet to.

Sans-I/O: the time is passed in; a clock that steps back refills nothing.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Policer"]


class Policer:
    """A token bucket of `burst` bytes filling at `rate_bps` bits per second (see the module docstring)."""

    __slots__ = ("rate", "burst", "tokens", "last", "passed", "passed_bytes", "dropped", "dropped_bytes",
                 "max_packet")

    def __init__(self, rate_bps: float, burst: int, max_packet: int = 65535) -> None:
        if not (rate_bps > 0 and burst > 0):
            raise ValueError(f"a policer needs a positive rate and burst, not {rate_bps!r}, {burst!r}")
        self.rate = rate_bps / 8.0  # bytes per second
        self.max_packet = max_packet  # the largest IP packet the lease allows
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last: float | None = None  # the time of the last batch
        self.passed = self.passed_bytes = 0  # packets and bytes (with overhead) admitted
        self.dropped = self.dropped_bytes = 0  # and refused

    def admit(self, lens: np.ndarray, now: float, overhead: int = 0) -> int:
        """How many packets at the head of the batch (their lengths) conform; takes their bytes.

        One call per batch: two small numpy arrays, no per-packet work.
        """
        if self.last is None:
            self.last = now
        elif now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        n = len(lens)
        cum = np.cumsum(lens, dtype=np.int64)
        if overhead:
            cum += np.arange(overhead, overhead * (n + 1), overhead, dtype=np.int64)
        total = int(cum[-1]) if n else 0
        if total <= self.tokens:
            k, taken = n, total
        else:
            k = int(np.searchsorted(cum, self.tokens, side="right"))
            taken = int(cum[k - 1]) if k else 0
        self.tokens -= taken
        self.passed += k
        self.passed_bytes += taken
        self.dropped += n - k
        self.dropped_bytes += total - taken
        return k

    def info(self) -> dict:
        return {"rate": self.rate * 8, "burst": int(self.burst), "passed": self.passed,
                "passed_bytes": self.passed_bytes, "dropped": self.dropped, "dropped_bytes": self.dropped_bytes}
