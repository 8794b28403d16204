"""SYN cookies (RFC 4987 §3.6), laid out as Linux's net/ipv4/syncookies.c lays them out.

When a listener's SYN queue is full, the SYN-ACK's initial sequence number
carries everything the listener would have kept, and nothing is kept: the
ACK that completes the handshake gives it back (its acknowledgement number
minus one is the cookie, its sequence number minus one the peer's ISN), and
the connection is rebuilt from it. A flood of SYNs from forged sources then
costs one hash and one SYN-ACK each, and a legitimate client still gets in.

The cookie, as Linux builds it (``secure_tcp_syn_cookie``)::

    H0(4-tuple) + peer ISN + (count << 24) + ((H1(4-tuple, count) + mss_index) mod 2**24)

``count`` is a minute counter; a cookie is good in the minute it was made
and the next (``MAX_AGE``). ``mss_index`` points into a table of four MSS
values (Linux's msstab, the most common MSSs seen on the Internet): the
peer's MSS rounded down to one of them. H0 and H1 are keyed hashes (BLAKE2s
with a secret of the endpoint's own; Linux uses SipHash) of the addresses
and ports. A forged cookie passes with probability about 2 * 4 / 2**24.

The options a cookie cannot hold travel in the low ``TS_BITS`` bits of the
SYN-ACK's TSval, which the peer echoes in every TSecr (Linux's
``cookie_init_timestamp``): the peer's window scale (15: none), SACK
permitted, ECN. Without timestamps a cookie connection has neither window
scaling nor SACK, as on Linux. The TSval is rounded *down* so the rebuilt
connection's clock never runs behind what the peer has seen.
"""

from __future__ import annotations

import hashlib
import os

__all__ = [
    "COOKIE_BITS", "MAX_AGE", "MSSTAB4", "MSSTAB6", "TS_BITS", "TS_ECN", "TS_SACK", "TS_WSCALE_MASK",
    "SynCookies", "mss_index", "ts_decode", "ts_encode",
]

MASK = 0xFFFFFFFF
COOKIE_BITS = 24
COOKIE_MASK = (1 << COOKIE_BITS) - 1
MAX_AGE = 2  # minutes of the counter a cookie stays good: the one it was made in and the next
COUNTER_PERIOD = 60.0  # seconds per count (Linux: jiffies / (60 * HZ))

#: Linux's msstab (net/ipv4/syncookies.c): sorted, the first is what a peer below the second gets.
MSSTAB4 = (536, 1300, 1440, 1460)
#: Linux's IPv6 msstab (net/ipv6/syncookies.c): the IPv6 minimum MTU, 1480, 1500 and 9000, less 60.
MSSTAB6 = (1280 - 60, 1480 - 60, 1500 - 60, 9000 - 60)

TS_BITS = 6
TS_WSCALE_MASK = 0xF  # 15: the peer sent no window scale (a real one is at most 14)
TS_SACK = 1 << 4
TS_ECN = 1 << 5


def mss_index(mss: int, table: tuple[int, ...]) -> int:
    """The index of the largest table MSS not above `mss` (0 when it is below them all), as Linux."""
    i = len(table) - 1
    while i and mss < table[i]:
        i -= 1
    return i


def ts_encode(ts_now: int, wscale: int | None, sack: bool, ecn: bool) -> int:
    """The cookie SYN-ACK's TSval: `ts_now` with the options in its low TS_BITS bits, never above it."""
    opts = (TS_WSCALE_MASK if wscale is None else wscale & TS_WSCALE_MASK) | (TS_SACK if sack else 0) \
        | (TS_ECN if ecn else 0)
    ts = (ts_now & MASK & ~((1 << TS_BITS) - 1)) | opts
    if ts > ts_now & MASK:
        ts = (ts - (1 << TS_BITS)) & MASK
    return ts


def ts_decode(tsecr: int) -> tuple[int | None, bool, bool]:
    """(window scale or None, SACK permitted, ECN) from the TSecr echoing a cookie's TSval."""
    ws = tsecr & TS_WSCALE_MASK
    return (None if ws == TS_WSCALE_MASK else ws), bool(tsecr & TS_SACK), bool(tsecr & TS_ECN)


class SynCookies:
    """Makes and checks cookies with a secret of its own (one per endpoint; `secret` for tests)."""

    __slots__ = ("_k0", "_k1")

    def __init__(self, secret: bytes | None = None) -> None:
        s = os.urandom(32) if secret is None else hashlib.blake2s(secret).digest()
        self._k0 = s[:16]
        self._k1 = s[16:]

    @staticmethod
    def counter(now: float) -> int:
        return int(now // COUNTER_PERIOD)

    def _hash(self, key: bytes, raddr: bytes, laddr: bytes, rport: int, lport: int, count: int) -> int:
        h = hashlib.blake2s(raddr + laddr + ((rport << 16 | lport) << 32 | count & MASK).to_bytes(8, "big"),
                            key=key, digest_size=4).digest()
        return int.from_bytes(h, "big")

    def make(self, laddr: bytes, lport: int, raddr: bytes, rport: int, peer_isn: int, mss: int,
             now: float) -> tuple[int, int]:
        """(our ISN, the MSS it stands for) for a SYN from raddr:rport with ISN `peer_isn` and MSS `mss`."""
        table = MSSTAB4 if len(laddr) == 4 else MSSTAB6
        idx = mss_index(mss, table)
        count = self.counter(now)
        h0 = self._hash(self._k0, raddr, laddr, rport, lport, 0)
        h1 = self._hash(self._k1, raddr, laddr, rport, lport, count)
        cookie = (h0 + peer_isn + (count << COOKIE_BITS) + ((h1 + idx) & COOKIE_MASK)) & MASK
        return cookie, table[idx]

    def check(self, laddr: bytes, lport: int, raddr: bytes, rport: int, peer_isn: int, cookie: int,
              now: float) -> int:
        """The MSS `cookie` stands for, or 0 if it is forged, for another connection, or too old.

        `cookie` is the ACK's acknowledgement number minus one, `peer_isn` its
        sequence number minus one (Linux's ``__cookie_v4_check``).
        """
        table = MSSTAB4 if len(laddr) == 4 else MSSTAB6
        count = self.counter(now)
        c = (cookie - self._hash(self._k0, raddr, laddr, rport, lport, 0) - peer_isn) & MASK
        diff = (count - (c >> COOKIE_BITS)) & (MASK >> COOKIE_BITS)
        if diff >= MAX_AGE:
            return 0
        idx = (c - self._hash(self._k1, raddr, laddr, rport, lport, count - diff)) & COOKIE_MASK
        return table[idx] if idx < len(table) else 0
