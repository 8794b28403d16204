"""The control plane's time, shared among uids: no uid's requests may take the loop from the rest.

The domain serves control requests in the same loop that moves every channel's packets. Most
requests cost microseconds, but some cost in proportion to the whole domain (Status walks every
netif, flow, pipe and lease), and a uid may hold `sessions_per_uid` sessions that each ask one
request a turn. Without a bound, one uid asking Status in a loop from its 256 sessions turns each
loop turn into seconds: every other client's packets wait (issue 16, hostile-client audit).

So each uid has a budget of the loop's time for its requests (a token bucket of seconds: `share`
of a second each second, at most `burst` saved). The time a request took (read, decode, serve,
reply) is charged to its uid after it ran; a uid in debt is not read from until its budget is
back above zero. Nothing is refused and nothing is lost: its sessions wait as a process waits for
its turn on a CPU, and other uids, and the data path, go on. The domain's own uid and root are
not limited (they are the administrator's tools).
"""

from __future__ import annotations

__all__ = ["CONTROL_BURST", "CONTROL_SHARE", "ControlShare"]

CONTROL_SHARE = 0.2  # seconds of the loop per second a uid's control requests may take
CONTROL_BURST = 0.25  # seconds a uid may save up (a `usnet status` of a large domain is one burst)


class ControlShare:
    """Per-uid token buckets of loop time for control requests."""

    def __init__(self, share: float = CONTROL_SHARE, burst: float = CONTROL_BURST,
                 exempt: frozenset[int] | set[int] = frozenset()) -> None:
        self.share = share
        self.burst = burst
        self.exempt = exempt
        self._buckets: dict[int, tuple[float, float]] = {}  # uid -> (seconds left, as of when)
        self.waits = 0  # times a uid in debt had a session held back (status: control_waits)

    def _left(self, uid: int, now: float) -> float:
        got = self._buckets.get(uid)
        if got is None:
            return self.burst
        left, at = got
        return min(self.burst, left + (now - at) * self.share)

    def charge(self, uid: int, seconds: float, now: float) -> None:
        """`uid`'s request took `seconds` of the loop."""
        if uid in self.exempt:
            return
        left = self._left(uid, now) - seconds
        if left >= self.burst:
            self._buckets.pop(uid, None)  # full: nothing to remember (the table holds only the indebted)
        else:
            self._buckets[uid] = (left, now)

    def wait(self, uid: int, now: float) -> float:
        """Seconds until `uid` may be served again (0: now)."""
        if uid in self.exempt or uid not in self._buckets:
            return 0.0
        left = self._left(uid, now)
        if left >= 0.0:
            return 0.0
        return -left / self.share
