"""The retransmission timer's value (RFC 6298).

Why a separate object: the estimator is pure arithmetic over RTT samples
and timeouts, so it is tested on its own; the connection decides *which*
samples are valid. Karn's rule (no sample from a segment that was
retransmitted, since the ACK cannot say which copy it answers) is the
connection's business, but `sample` also takes ``retransmitted`` so the
rule can be stated at the call site. Timestamps (RFC 7323) make every ACK
of new data a valid sample, retransmitted or not.

The RFC's floor is 1 s; the default here is 0.2 s as in Linux (``min_rto``
is configurable), because a 1 s floor makes every tail loss on a LAN cost a
second. Back-off doubles the timeout per expiry up to ``max_rto`` (60 s)
and, per RFC 6298 §5.7, stays backed off until a new valid sample arrives.
"""

from __future__ import annotations

__all__ = ["RtoEstimator"]


class RtoEstimator:
    """SRTT/RTTVAR per RFC 6298 §2 with exponential back-off."""

    __slots__ = ("srtt", "rttvar", "rto", "base_rto", "backoffs", "min_rto", "max_rto", "granularity")

    def __init__(
        self, initial: float = 1.0, min_rto: float = 0.2, max_rto: float = 60.0,
        granularity: float = 0.001,
    ) -> None:
        self.srtt: float | None = None
        self.rttvar: float = 0.0
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.granularity = granularity
        self.base_rto = min(max(initial, min_rto), max_rto)
        self.rto = self.base_rto  # current value, back-off included
        self.backoffs = 0

    def sample(self, rtt: float, retransmitted: bool = False) -> bool:
        """Feed one measurement (seconds); returns False if Karn's rule discards it."""
        if retransmitted or rtt < 0:
            return False
        srtt = self.srtt
        if srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            d = srtt - rtt
            self.rttvar = 0.75 * self.rttvar + 0.25 * (d if d >= 0 else -d)
            self.srtt = 0.875 * srtt + 0.125 * rtt
        v = 4 * self.rttvar
        rto = self.srtt + (v if v > self.granularity else self.granularity)
        rto = self.min_rto if rto < self.min_rto else rto
        self.base_rto = rto if rto < self.max_rto else self.max_rto
        self.rto = self.base_rto
        self.backoffs = 0
        return True

    def backoff(self) -> float:
        """Double the timeout after an expiry (RFC 6298 §5.5); returns the new value."""
        self.backoffs += 1
        rto = self.rto * 2
        self.rto = rto if rto < self.max_rto else self.max_rto
        return self.rto

    def reset_backoff(self) -> None:
        """Forget the back-off (e.g. when the connection is re-established)."""
        self.backoffs = 0
        self.rto = self.base_rto
