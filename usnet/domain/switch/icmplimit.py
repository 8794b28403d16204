"""How many ICMP errors the switch sends: Linux's two limits, per peer and for the host.

A host on the link (or anyone spoofing sources) that sends datagrams to ports nobody holds
would otherwise earn one ICMP port unreachable each: the domain's transmit budget spent on
answers, and a reflector for spoofed floods. Linux limits these errors twice, and so does the
switch, with Linux's numbers (issue 16, hostile-client audit):

* per peer (inet_peer_xrlim_allow, net.ipv4.icmp_ratelimit = 1000 ms, XRLIM_BURST_FACTOR 6):
  a token every second, at most six saved, a new peer starting with all six;
* for the host (icmp_global_allow, net.ipv4.icmp_msgs_per_sec = 1000, icmp_msgs_burst = 50).

Errors to our own addresses are not limited (Linux exempts the loopback device). The peer
table is bounded (`MAX_PEERS`, the oldest forgotten first): a flood from a million spoofed
sources costs a bounded dict, and the host limit still holds. Echo replies are not limited (not
in Linux's icmp_ratemask either).
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["BURST", "GLOBAL_BURST", "GLOBAL_PER_SEC", "INTERVAL", "MAX_PEERS", "IcmpLimiter"]

INTERVAL = 1.0  # seconds per token of a peer (icmp_ratelimit)
BURST = 6  # tokens a peer may save (XRLIM_BURST_FACTOR)
GLOBAL_PER_SEC = 1000.0  # icmp_msgs_per_sec
GLOBAL_BURST = 50  # icmp_msgs_burst
MAX_PEERS = 4096


class IcmpLimiter:
    """Token buckets deciding whether one more ICMP error may go to a peer."""

    def __init__(self, interval: float = INTERVAL, burst: int = BURST, global_per_sec: float = GLOBAL_PER_SEC,
                 global_burst: int = GLOBAL_BURST, max_peers: int = MAX_PEERS) -> None:
        self.interval = interval
        self.burst = burst
        self.global_per_sec = global_per_sec
        self.global_burst = global_burst
        self.max_peers = max_peers
        self._peers: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # peer -> (tokens, at)
        self._global = float(global_burst)
        self._global_at: float | None = None
        self.limited_host = 0  # refused by a peer's bucket (Linux: OutRateLimitHost)
        self.limited_global = 0  # refused by the host's bucket (Linux: OutRateLimitGlobal)

    def allow(self, peer: bytes, now: float) -> bool:
        """Whether an ICMP error to `peer` may go now; if so, it is charged to both buckets."""
        g = self._global
        if self._global_at is not None:
            g = min(float(self.global_burst), g + (now - self._global_at) * self.global_per_sec)
        self._global_at = now
        if g < 1.0:
            self._global = g
            self.limited_global += 1
            return False
        got = self._peers.pop(peer, None)
        tokens = float(self.burst) if got is None else min(float(self.burst), got[0] + (now - got[1]) / self.interval)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
            g -= 1.0
        else:
            self.limited_host += 1
        self._global = g
        self._peers[peer] = (tokens, now)  # the most recent last: the oldest is forgotten first
        if len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)
        return ok
