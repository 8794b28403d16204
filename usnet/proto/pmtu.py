"""Path MTU discovery (RFC 1191, RFC 8201): a per-destination cache, lowered only, sans-I/O.

An ICMP "fragmentation needed" (IPv4) or "packet too big" (IPv6) about a
packet we sent lowers the path MTU to its destination; entries age out
after ``timeout`` seconds, so a path that got better is found again.

IPv4: a next-hop MTU of 0 (a router from before RFC 1191) falls back to the
RFC 1191 plateau below the quoted length (`frag_needed_mtu`); a report not
below the quoted total length is bogus and ignored; never below 68. Below
``floor`` (552 by default, Linux's min_pmtu: 512 + 20 + 20; 68 for the strict RFC behaviour) the PMTU is set
to the floor and *locked*: packets then go out without DF, so routers
fragment (what Linux does with min_pmtu). IPv6 is clamped to 1280.

Counter keys: pmtu_lowered, pmtu_ignored (a report not below what we have).
"""

from __future__ import annotations

from collections import Counter

from usnet.proto.wire.ipv6 import IPV6_MIN_MTU

__all__ = ["IPV4_MIN_MTU", "IPV4_MIN_PMTU", "PathMtuCache", "frag_needed_mtu"]

IPV4_MIN_MTU = 68
IPV4_MIN_PMTU = 552  # Linux's ip_rt_min_pmtu (net.ipv4.route.min_pmtu): a report below it is locked at it

# RFC 1191 §7 plateau table, for frag-needed messages without a next-hop MTU.
_PLATEAUS = (65535, 32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68)


def frag_needed_mtu(reported: int, quoted_total: int) -> int:
    """The next-hop MTU of an IPv4 frag-needed: the reported one, or (0 reported) the plateau
    below the quoted packet's length."""
    if reported:
        return reported
    return next((p for p in _PLATEAUS if p < quoted_total), IPV4_MIN_MTU)


class PathMtuCache:
    """Path MTUs below the link MTU, per destination (4 or 16 bytes), at most ``max_entries``."""

    def __init__(self, mtu: int, counters: Counter, floor: int = IPV4_MIN_PMTU, timeout: float = 600.0,
                 max_entries: int = 1024) -> None:
        if not IPV4_MIN_MTU <= floor <= mtu:
            raise ValueError(f"pmtu_floor {floor} must be within 68..mtu")
        self.mtu = mtu
        self.counters = counters
        self.floor = floor
        self.timeout = timeout
        self.max_entries = max_entries
        self.table: dict[bytes, list] = {}  # dst -> [mtu, expires, locked]

    def get(self, dst: bytes, now: float) -> tuple[int, bool]:
        """``(path MTU, locked)`` to ``dst`` now: the link MTU unless an ICMP lowered it."""
        e = self.table.get(dst)
        if e is not None:
            if e[1] <= now:
                del self.table[dst]
            else:
                return min(self.mtu, e[0]), e[2]
        return self.mtu, False

    def lower(self, dst: bytes, reported: int, now: float, v6: bool) -> int:
        """Take a reported next-hop MTU for ``dst``; returns the path MTU now in force."""
        if v6:
            new, locked = max(reported, IPV6_MIN_MTU), False
        else:
            reported = max(reported, IPV4_MIN_MTU)
            locked = reported < self.floor
            new = max(reported, self.floor)
        cur, cur_locked = self.get(dst, now)
        if new < cur or (new == cur and locked and not cur_locked):
            tbl = self.table
            if dst not in tbl and len(tbl) >= self.max_entries:
                for k in [k for k, e in tbl.items() if e[1] <= now]:
                    del tbl[k]
                if len(tbl) >= self.max_entries:
                    del tbl[next(iter(tbl))]
            tbl.pop(dst, None)
            tbl[dst] = [new, now + self.timeout, locked]
            self.counters["pmtu_lowered"] += 1
            return new
        self.counters["pmtu_ignored"] += 1
        return cur
