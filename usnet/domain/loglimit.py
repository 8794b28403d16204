"""A budget for log lines a client can cause at will.

A session's start and end are logged at INFO (WARNING for an abnormal end), which is what
an operator wants to see for each program. A uid that connects in a loop would make the
domain write two lines per connection, as fast as it connects: its log becomes a flood the
client controls. `LineBudget` is a token bucket (`rate` lines a second, `burst` at once);
past it the lines are counted, not written, and the next line written says how many were
left out, so the log stays honest about what happened.
"""

from __future__ import annotations

__all__ = ["LineBudget"]


class LineBudget:
    """Up to `burst` lines at once, `rate` a second after that."""

    __slots__ = ("rate", "burst", "tokens", "at", "suppressed")

    def __init__(self, rate: float = 10.0, burst: float = 20.0) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.at = 0.0
        self.suppressed = 0  # lines left out since the last one written

    def take(self, now: float) -> int | None:
        """None: leave this line out (counted). Else write it, noting the number left out before it."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            self.suppressed += 1
            return None
        self.tokens -= 1.0
        left_out, self.suppressed = self.suppressed, 0
        return left_out
