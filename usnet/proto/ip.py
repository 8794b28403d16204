"""The IP layer of the user-space stack: IPv4 and IPv6, sans-I/O (DESIGN §7).

`IpLayer` takes whole IP packets and the time, and returns events; it never
reads a clock or touches a device. Everything malformed, unexpected or over
a budget is dropped and counted in ``IpLayer.counters`` (a `Counter` keyed by
reason): nothing that comes from the wire raises out of `IpLayer.input`.

    ip = IpLayer([ip_bytes("10.0.0.1"), ip6_bytes("fe80::1")], mtu=1500, lladdr=mac)
    for ev in ip.input(packet, now):
        Datagram(proto, src, dst, payload, packet, ttl)  -> hand to UDP/TCP/ICMP sockets
        IcmpError(proto, local, local_port, remote, remote_port, errno, ...)
                                                         -> report to the matching socket
        Transmit(packet)                                 -> send (echo reply, NA, ...)
        NeighborResolved(addr, lladdr, packets)          -> send the packets that waited
    ip.output(proto, src, dst, payload, now) -> [packet, ...]   (fragments if needed)
    ip.unreachable(datagram, now)            -> [packet] or []  (port unreachable, rate-limited)
    ip.timeout(now) -> events;  ip.next_timeout(now) -> seconds or None

Input (RFC 791, 1122, 8200): header checks (version, lengths, IPv4 header
checksum), destination must be ours (or broadcast / all-nodes /
solicited-node / ``extra_dst``), multicast sources are dropped; IPv6
extension headers are walked (usnet.proto.wire.ipv6.skip_ext_headers). Payloads
are memoryviews into the caller's packet (zero copy) or into a fresh buffer
after reassembly; ``Datagram.packet`` is the whole IP packet, for quoting in
an ICMP error (after reassembly a synthesised header without options).

ICMP: echo requests to a unicast address of ours are answered here; errors
(destination unreachable, time exceeded, parameter problem, packet too big)
become `IcmpError` events with the 5-tuple of *our* packet taken from the
quote (TCP/UDP ports; for ICMP echo, ``local_port`` is the identifier), only
if the quoted source is one of our addresses. Echo replies and other
informational messages are delivered as `Datagram`s (ICMP echo sockets).

Path MTU (RFC 1191, RFC 8201): per-destination cache, lowered only, aged out
after ``pmtu_timeout``. IPv4 frag-needed: a next-hop MTU of 0 falls back to
the RFC 1191 plateau below the quoted length; a report not below the quoted
total length is bogus and ignored; never below 68; below ``pmtu_floor``
(576 by default; set 68 for the strict RFC behaviour) the PMTU is set to the
floor and *locked*: packets then go out without DF, so routers fragment
(what Linux does with min_pmtu). IPv6 Packet Too Big is clamped to 1280.

Reassembly (RFC 791/815, RFC 8200 §4.5, RFC 5722): see `Reassembler`.
IPv4 fragments that overlap with identical bytes are merged; any
conflicting overlap drops the whole datagram. For IPv6 any overlap other
than an exact duplicate drops it. Memory is bounded per datagram, globally,
in datagram count and per source; the timer starts with the first fragment
and is not refreshed. On expiry an ICMP Time Exceeded (reassembly) is sent if
fragment zero had arrived (RFC 792/1122, RFC 8200), rate-limited.

Output: IPv4 fragments when the packet exceeds the path MTU and ``df`` is
not True (``df=None``, the default, sets DF on packets that fit: the Linux
"want" mode); IPv6 never fragments, so a too-big packet raises
``OSError(EMSGSIZE)`` (as does IPv4 with ``df=True``). Application errors
(bad arguments) raise; wire input never does.

Neighbour Discovery (RFC 4861): `NeighborCache` is the per-link table a link
layer consults (`resolve`); the IP layer feeds it NS/NA/RS/RA and answers NS
for our addresses. States are INCOMPLETE, REACHABLE and STALE (no DELAY or
PROBE: a STALE entry is used as is until an advertisement or upper-layer
confirmation refreshes it). No DAD, no redirects, no router/prefix lists
(RAs are delivered as Datagrams for a SLAAC module).

Counter keys (all ints): rx, rx_truncated, rx_bad_version, rx_malformed,
rx_internal_error; ip4_/ip6_ truncated, bad_header, bad_checksum,
not_for_us, bad_src, bad_ext, no_next, atomic_frag, delivered; frag_in,
frag_dup, frag_bad, frag_conflict, frag_too_big, frag_over_budget,
frag_evicted, frag_no_memory, frag_timeout, frag_reassembled; icmp4_/icmp6_
bad, echo_replied, echo_not_unicast, echo_dropped, error, bad_quote,
bogus_quote, ignored, delivered; pmtu_lowered, pmtu_ignored, pmtu_bogus;
icmp_err_sent, icmp_err_suppressed, icmp_rate_limited, time_exceeded_sent;
nd_bad, nd_ns_not_ours, nd_na_sent, nd_dup_addr, nd_learned, nd_resolved,
nd_failed, nd_dropped, nd_queue_dropped, nd_evicted, nd_table_full,
nd_na_unsolicited, nd_na_no_lladdr; tx, tx_fragments.
"""

from __future__ import annotations

import errno as _errno
import struct
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Iterable
from typing import NamedTuple

from usnet.proto.wire import icmp as _i4
from usnet.proto.wire import icmpv6 as _i6
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.ipv4 import ICMP, IP_MF, IP_OFFMASK, IPV4_HLEN, build_ipv4_header, parse_ipv4
from usnet.proto.wire.ipv6 import (
    ALL_NODES,
    ICMPV6,
    IPV6_HLEN,
    IPV6_MIN_MTU,
    NO_NEXT,
    UNSPECIFIED,
    build_ipv6_header,
    is_link_local6,
    multicast_mac,
    parse_ipv6,
    skip_ext_headers,
    solicited_node,
)

__all__ = [
    "INCOMPLETE", "REACHABLE", "STALE", "Datagram", "IcmpError", "IpLayer", "NeighborCache", "NeighborResolved",
    "Reassembler", "Transmit", "icmp4_error", "icmp6_error",
]

_from_bytes = int.from_bytes

LIMITED_BROADCAST = b"\xff\xff\xff\xff"
ALL_HOSTS4 = bytes((224, 0, 0, 1))
IPV4_MIN_MTU = 68

# RFC 1191 §7 plateau table, for frag-needed messages without a next-hop MTU.
_PLATEAUS = (65535, 32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68)

# errno for ICMPv4 destination-unreachable codes, as Linux maps them.
_UNREACH4_ERRNO = {
    0: _errno.ENETUNREACH, 1: _errno.EHOSTUNREACH, 2: _errno.ENOPROTOOPT, 3: _errno.ECONNREFUSED,
    4: _errno.EMSGSIZE, 5: _errno.EOPNOTSUPP, 6: _errno.ENETUNREACH, 7: _errno.EHOSTDOWN,
    8: _errno.ENONET, 9: _errno.ENETUNREACH, 10: _errno.EHOSTUNREACH, 11: _errno.ENETUNREACH,
    12: _errno.EHOSTUNREACH, 13: _errno.EHOSTUNREACH, 14: _errno.EHOSTUNREACH,
    15: _errno.EHOSTUNREACH,
}
_UNREACH6_ERRNO = {
    0: _errno.ENETUNREACH, 1: _errno.EACCES, 2: _errno.EHOSTUNREACH, 3: _errno.EHOSTUNREACH,
    4: _errno.ECONNREFUSED, 5: _errno.EACCES, 6: _errno.EACCES,
}
_ICMP4_ERRORS = (_i4.DEST_UNREACH, _i4.TIME_EXCEEDED, _i4.PARAM_PROBLEM)  # the ones a socket hears of
_ICMP4_ERROR_TYPES = frozenset((3, 4, 5, 11, 12))
_PORTED = frozenset((6, 17, 33, 132, 136))  # TCP, UDP, DCCP, SCTP, UDP-Lite: ports first


# --------------------------------------------------------------------------- events


class Datagram(NamedTuple):
    """An upper-layer payload for us. ``src``/``dst`` are 4 or 16 bytes."""

    proto: int  # IPv4 protocol / IPv6 upper-layer next header
    src: bytes
    dst: bytes
    payload: memoryview
    packet: memoryview  # the whole IP packet (what an ICMP error quotes)
    ttl: int  # TTL / hop limit as received


class IcmpError(NamedTuple):
    """An ICMP(v6) error about a packet we sent, for the socket (proto, local:lport, remote:rport)."""

    proto: int
    local: bytes
    local_port: int | None  # None when the quote is too short or not from a first fragment
    remote: bytes
    remote_port: int | None
    errno: int
    icmp_type: int
    icmp_code: int
    mtu: int  # the path MTU now in force, for EMSGSIZE; else 0
    reporter: bytes | None  # the ICMP sender; None when generated locally (ND gave up)
    quote: memoryview  # quoted bytes from the transport header on (TCP: check the seq, RFC 5927)


class Transmit(NamedTuple):
    """A whole IP packet to send."""

    packet: bytes


class NeighborResolved(NamedTuple):
    """``addr`` is at ``lladdr``; ``packets`` waited for it and can go now."""

    addr: bytes
    lladdr: bytes
    packets: list


# --------------------------------------------------------------------------- reassembly

_FRAG_OVERHEAD = 64  # bytes charged per stored fragment piece, on top of its data
_DG_OVERHEAD = 256  # bytes charged per datagram in progress


class _Partial:
    __slots__ = ("key", "src", "starts", "frags", "have", "total", "nbytes", "deadline",
                 "first", "meta")

    def __init__(self, key, src, deadline):
        self.key = key
        self.src = src
        self.starts: list[int] = []
        self.frags: list[tuple[int, int, bytes]] = []  # sorted, non-overlapping
        self.have = 0
        self.total: int | None = None
        self.nbytes = _DG_OVERHEAD
        self.deadline = deadline
        self.first: bytes | None = None  # head of fragment zero, for Time Exceeded
        self.meta = None  # IPv6: next header from fragment zero


class Reassembler:
    """Fragment reassembly with bounded memory, shared by IPv4 and IPv6.

    Keys are opaque (the caller's: (4, src, dst, proto, ident) or (6, src,
    dst, ident)). Budgets: ``datagram_bytes`` per datagram and ``max_bytes``
    in all, each charging data plus a fixed overhead per piece and per
    datagram; at most ``max_datagrams`` in progress and ``per_source`` from
    one source. A new datagram beyond a count limit evicts the oldest of its
    source (if that source is at its limit) or the oldest overall; global
    memory pressure evicts the oldest others. So a flood of distinct ids from
    one source only churns that source's slots.

    Memory is bounded per source too (``source_bytes``, default a quarter of
    ``max_bytes``, as Linux's ipfrag_high_thresh but per source): a piece that
    would take its source past it evicts that source's oldest other datagram,
    and if none is left the datagram it belongs to is dropped
    (``frag_source_over_budget``). One source, however many ids it sends,
    cannot take the memory other sources' datagrams need.
    """

    def __init__(self, counters: Counter, timeout: float = 30.0, max_bytes: int = 1 << 20,
                 datagram_bytes: int = 128 << 10, max_datagrams: int = 64,
                 per_source: int = 16, source_bytes: int | None = None) -> None:
        self.c = counters
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.datagram_bytes = datagram_bytes
        self.max_datagrams = max_datagrams
        self.per_source = per_source
        self.source_bytes = max_bytes // 4 if source_bytes is None else source_bytes
        self.src_bytes: Counter = Counter()  # bytes charged per source
        self.table: dict = {}  # key -> _Partial, in creation order (== deadline order)
        self.per_src: Counter = Counter()
        self.bytes = 0

    def _drop(self, p: _Partial, reason: str) -> None:
        if self.table.pop(p.key, None) is None:
            return
        self.bytes -= p.nbytes
        left = self.src_bytes[p.src] - p.nbytes
        if left:
            self.src_bytes[p.src] = left
        else:
            del self.src_bytes[p.src]
        n = self.per_src[p.src] - 1
        if n:
            self.per_src[p.src] = n
        else:
            del self.per_src[p.src]
        self.c[reason] += 1

    def _evict_oldest(self, src=None, keep=None) -> bool:
        for p in self.table.values():
            if p is not keep and (src is None or p.src == src):
                self._drop(p, "frag_evicted")
                return True
        return False

    def add(self, key, src, offset: int, data, more: bool, now: float, strict: bool, limit: int,
            first=None, meta=None):
        """Add one fragment; returns ``(pieces, partial)`` when the datagram is complete.

        ``pieces`` are the data in order (join them, perhaps behind a header);
        ``limit`` is the largest end offset allowed; ``strict`` makes any
        non-duplicate overlap a conflict (IPv6). ``first``/``meta`` are kept
        from fragment zero.
        """
        c = self.c
        c["frag_in"] += 1
        ln = len(data)
        end = offset + ln
        if more and (ln & 7 or not ln):
            c["frag_bad"] += 1
            return None
        p = self.table.get(key)
        if end > limit:
            if p is not None:
                self._drop(p, "frag_too_big")
            else:
                c["frag_too_big"] += 1
            return None
        if p is None:
            if self.per_src[src] >= self.per_source:
                self._evict_oldest(src)
            elif len(self.table) >= self.max_datagrams:
                self._evict_oldest()
            p = _Partial(key, src, now + self.timeout)
            self.table[key] = p
            self.per_src[src] += 1
            self.bytes += p.nbytes
            self.src_bytes[src] += p.nbytes
        frags = p.frags
        if not more:
            if (p.total is not None and p.total != end) or (frags and frags[-1][1] > end):
                self._drop(p, "frag_conflict")
                return None
            p.total = end
        elif p.total is not None and end > p.total:
            self._drop(p, "frag_conflict")
            return None
        pieces = self._pieces(p, offset, end, data, strict) if ln else []
        if pieces is None:
            self._drop(p, "frag_conflict")
            return None
        if ln and not pieces:
            c["frag_dup"] += 1
        keep_first = first is not None and offset == 0 and p.first is None
        cost = sum(len(d) + _FRAG_OVERHEAD for _, _, d in pieces)
        if keep_first:
            cost += len(first)
        if cost:
            if p.nbytes + cost > self.datagram_bytes:
                self._drop(p, "frag_over_budget")
                return None
            while self.src_bytes[src] + cost > self.source_bytes:
                if not self._evict_oldest(src, keep=p):
                    self._drop(p, "frag_source_over_budget")
                    return None
            while self.bytes + cost > self.max_bytes:
                if not self._evict_oldest(keep=p):
                    self._drop(p, "frag_no_memory")
                    return None
            p.nbytes += cost
            self.bytes += cost
            self.src_bytes[src] += cost
        if keep_first:
            p.first = bytes(first)
            p.meta = meta
        starts = p.starts
        for piece in pieces:
            i = bisect_right(starts, piece[0])
            starts.insert(i, piece[0])
            frags.insert(i, piece)
            p.have += piece[1] - piece[0]
        if p.total is not None and p.have == p.total:
            self._drop(p, "frag_reassembled")
            return [d for _, _, d in frags], p
        return None

    @staticmethod
    def _pieces(p: _Partial, s: int, e: int, data, strict: bool):
        """The parts of [s, e) not held yet, as (start, end, bytes); None on a conflict."""
        frags = p.frags
        j = bisect_right(p.starts, s) - 1
        if j < 0:
            j = 0
        cur = s
        gaps = []
        n = len(frags)
        while j < n:
            fs, fe, fd = frags[j]
            if fs >= e:
                break
            if fe > s:
                if strict and (fs != s or fe != e):
                    return None
                lo = fs if fs > s else s
                hi = fe if fe < e else e
                if fd[lo - fs : hi - fs] != data[lo - s : hi - s]:
                    return None
                if lo > cur:
                    gaps.append((cur, lo))
                if hi > cur:
                    cur = hi
            j += 1
        if cur < e:
            gaps.append((cur, e))
        return [(a, b, bytes(data[a - s : b - s])) for a, b in gaps]

    def expire(self, now: float) -> list[_Partial]:
        """Drop and return the datagrams whose time is up."""
        out = []
        for p in self.table.values():
            if p.deadline > now:
                break
            out.append(p)
        for p in out:
            self._drop(p, "frag_timeout")
        return out

    def next_deadline(self) -> float | None:
        for p in self.table.values():
            return p.deadline
        return None


# --------------------------------------------------------------------------- neighbour cache

INCOMPLETE = "INCOMPLETE"
REACHABLE = "REACHABLE"
STALE = "STALE"


class _Neighbor:
    __slots__ = ("state", "lladdr", "confirmed", "queue", "probes", "next_probe", "src")

    def __init__(self, state, lladdr, confirmed, src=None):
        self.state = state
        self.lladdr = lladdr
        self.confirmed = confirmed
        self.queue: deque = deque()
        self.probes = 0
        self.next_probe = 0.0
        self.src = src


class NeighborCache:
    """IPv6 neighbour cache for one link (RFC 4861 §7.2-7.3, minimal), sans-I/O.

    The link layer calls `resolve` for each IPv6 packet's next hop: it gets
    the link-layer address, or the packet is queued (at most ``queue_len``
    per neighbour, oldest dropped) and NS packets (whole IPv6 packets, to the
    solicited-node multicast group) come back to send. `timeout` resends NS
    every ``retrans_time`` up to ``max_probes`` times, then gives up on the
    queued packets. REACHABLE turns STALE after ``reachable_time`` (checked
    lazily); STALE is still used. At most ``max_entries`` neighbours: STALE
    ones are evicted first; when none can go, new ones are refused (counted).
    """

    def __init__(self, lladdr: bytes | None, addrs: list | None = None, *,
                 reachable_time: float = 30.0, retrans_time: float = 1.0, max_probes: int = 3,
                 queue_len: int = 16, max_entries: int = 256,
                 counters: Counter | None = None) -> None:
        self.lladdr = lladdr
        self.addrs = addrs if addrs is not None else []  # our IPv6 addresses (shared list)
        self.reachable_time = reachable_time
        self.retrans_time = retrans_time
        self.max_probes = max_probes
        self.queue_len = queue_len
        self.max_entries = max_entries
        self.entries: dict[bytes, _Neighbor] = {}
        self.counters = counters if counters is not None else Counter()

    def _age(self, e: _Neighbor, now: float) -> None:
        if e.state == REACHABLE and now - e.confirmed >= self.reachable_time:
            e.state = STALE

    def state(self, addr: bytes, now: float) -> str | None:
        e = self.entries.get(addr)
        if e is None:
            return None
        self._age(e, now)
        return e.state

    def lookup(self, addr: bytes, now: float) -> bytes | None:
        """The link-layer address of a REACHABLE or STALE neighbour, else None."""
        e = self.entries.get(addr)
        if e is None or e.state == INCOMPLETE:
            return None
        self._age(e, now)
        return e.lladdr

    def _source(self, src: bytes | None) -> bytes:
        addrs = self.addrs
        if src is not None and src in addrs:
            return src
        for a in addrs:
            if is_link_local6(a):
                return a
        return addrs[0] if addrs else UNSPECIFIED

    def solicit(self, target: bytes, src: bytes | None = None) -> bytes:
        """A multicast NS for ``target``, as a whole IPv6 packet (hop limit 255)."""
        s = self._source(src)
        dst = solicited_node(target)
        ns = _i6.build_ns(s, dst, target, self.lladdr if s != UNSPECIFIED else None)
        return build_ipv6_header(s, dst, ICMPV6, len(ns), 255) + ns

    def _make_room(self, now: float) -> bool:
        if len(self.entries) < self.max_entries:
            return True
        for a, e in self.entries.items():
            self._age(e, now)
            if e.state == STALE:
                del self.entries[a]
                self.counters["nd_evicted"] += 1
                return True
        self.counters["nd_table_full"] += 1
        return False

    def resolve(self, addr: bytes, packet: object, now: float,
                src: bytes | None = None) -> tuple[bytes | None, list[bytes]]:
        """``(lladdr, [])`` when known (multicast maps directly).

        Otherwise ``packet`` is queued and ``(None, NS packets to send)`` returned;
        ``src`` is the queued packet's source, used for the NS."""
        if addr[0] == 0xFF:
            return multicast_mac(addr), []
        e = self.entries.get(addr)
        if e is not None and e.state != INCOMPLETE:
            self._age(e, now)
            return e.lladdr, []
        c = self.counters
        if e is None:
            if not self._make_room(now):
                c["nd_dropped"] += 1
                return None, []
            e = self.entries[addr] = _Neighbor(INCOMPLETE, None, now, src)
            e.queue.append(packet)
            e.probes = 1
            e.next_probe = now + self.retrans_time
            return None, [self.solicit(addr, src)]
        if len(e.queue) >= self.queue_len:
            e.queue.popleft()
            c["nd_queue_dropped"] += 1
        e.queue.append(packet)
        return None, []

    def _release(self, addr: bytes, e: _Neighbor):
        pk = list(e.queue)
        e.queue.clear()
        self.counters["nd_resolved"] += 1
        return addr, e.lladdr, pk

    def on_solicit(self, addr: bytes, lladdr: bytes, now: float):
        """A source link-layer address from an NS, RS or RA (RFC 4861 §7.2.3, §6.3.4).

        Returns ``(addr, lladdr, waiting packets)`` when it resolves an INCOMPLETE entry."""
        e = self.entries.get(addr)
        if e is None:
            if self._make_room(now):
                self.entries[addr] = _Neighbor(STALE, lladdr, now)
                self.counters["nd_learned"] += 1
            return None
        if e.state == INCOMPLETE:
            e.state = STALE
            e.lladdr = lladdr
            return self._release(addr, e)
        if e.lladdr != lladdr:
            e.lladdr = lladdr
            e.state = STALE
        return None

    def on_advert(self, target: bytes, lladdr: bytes | None, flags: int, now: float):
        """An NA (RFC 4861 §7.2.5); returns ``(addr, lladdr, waiting packets)`` on resolution."""
        c = self.counters
        e = self.entries.get(target)
        if e is None:
            c["nd_na_unsolicited"] += 1
            return None
        solicited = flags & _i6.NA_SOLICITED
        if e.state == INCOMPLETE:
            if lladdr is None:
                c["nd_na_no_lladdr"] += 1
                return None
            e.lladdr = lladdr
            e.state = REACHABLE if solicited else STALE
            e.confirmed = now
            return self._release(target, e)
        changed = lladdr is not None and lladdr != e.lladdr
        if changed and not flags & _i6.NA_OVERRIDE:
            self._age(e, now)
            e.state = STALE
            return None
        if lladdr is not None:
            e.lladdr = lladdr
        if solicited:
            e.state = REACHABLE
            e.confirmed = now
        elif changed:
            e.state = STALE
        return None

    def confirm(self, addr: bytes, now: float) -> None:
        """Upper-layer reachability confirmation (e.g. TCP progress), RFC 4861 §7.3.1."""
        e = self.entries.get(addr)
        if e is not None and e.state != INCOMPLETE:
            e.state = REACHABLE
            e.confirmed = now

    def timeout(self, now: float) -> tuple[list[bytes], list[tuple[bytes, list]]]:
        """``(NS packets to send, [(addr, packets given up on), ...])``."""
        sends: list[bytes] = []
        failed: list[tuple[bytes, list]] = []
        c = self.counters
        for addr, e in list(self.entries.items()):
            if e.state != INCOMPLETE or now < e.next_probe:
                continue
            if e.probes >= self.max_probes:
                del self.entries[addr]
                c["nd_failed"] += 1
                c["nd_dropped"] += len(e.queue)
                failed.append((addr, list(e.queue)))
                continue
            e.probes += 1
            e.next_probe = now + self.retrans_time
            sends.append(self.solicit(addr, e.src))
        return sends, failed

    def next_timeout(self, now: float) -> float | None:
        t = [e.next_probe for e in self.entries.values() if e.state == INCOMPLETE]
        return max(0.0, min(t) - now) if t else None


# --------------------------------------------------------------------------- helpers


class _Bucket:
    """Token bucket: ``rate`` per second, ``burst`` deep."""

    __slots__ = ("rate", "burst", "tokens", "last")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.last: float | None = None

    def take(self, now: float) -> bool:
        if self.last is not None and now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        if self.last is None or now > self.last:
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _ports(proto: int, t) -> tuple[int | None, int | None]:
    if proto in _PORTED:
        if len(t) >= 4:
            return (t[0] << 8) | t[1], (t[2] << 8) | t[3]
    elif proto in (ICMP, ICMPV6) and len(t) >= 6:
        return (t[4] << 8) | t[5], 0
    return None, None


def _quote4(buf, off: int):
    """(proto, src, dst, sport, dport, total_length, transport bytes) of a quoted IPv4 header."""
    end = len(buf)
    if end - off < IPV4_HLEN:
        return None
    vihl = buf[off]
    ihl = (vihl & 0xF) << 2
    if vihl >> 4 != 4 or ihl < IPV4_HLEN or end - off < ihl:
        return None
    total = (buf[off + 2] << 8) | buf[off + 3]
    ff = (buf[off + 6] << 8) | buf[off + 7]
    proto = buf[off + 9]
    src = bytes(buf[off + 12 : off + 16])
    dst = bytes(buf[off + 16 : off + 20])
    t = buf[off + ihl : end]
    sport, dport = (None, None) if ff & IP_OFFMASK else _ports(proto, t)
    return proto, src, dst, sport, dport, total, t


def icmp4_error(packet: bytes) -> tuple[int, int, bytes, int, bytes, int] | None:
    """(errno, protocol, quoted source, source port, quoted destination, destination port) of an
    IPv4 ICMP error (unreachable, time exceeded, parameter problem) in `packet`; None if it is not
    one, or its checksum or quote is bad. For a socket without an IpLayer (usnet.client.datagram)."""
    try:
        ihl, total, _i, _f, _t, proto, _s, _d = parse_ipv4(packet, 0, verify_checksum=False)
        if proto != ICMP:
            return None
        typ, code, _id, _seq, q = _i4.parse_icmp(packet, ihl, total - ihl)
    except (WireError, struct.error):
        return None
    if typ not in _ICMP4_ERRORS:
        return None
    return _quoted_error(_icmp4_errno(typ, code), _quote4(packet[:total], q))


def _quoted_error(err: int, quoted) -> tuple[int, int, bytes, int, bytes, int] | None:
    """`icmp4_error`'s answer from the errno and the quote (`_quote4`, `_quote6`): None if the
    quote is bad or names no ports."""
    if quoted is None or quoted[3] is None:
        return None
    qproto, qsrc, qdst, sport, dport = quoted[:5]
    return err, qproto, qsrc, sport, qdst, dport


def _icmp4_errno(typ: int, code: int) -> int:
    """The errno of an ICMPv4 error, as Linux maps it (destination unreachable by code)."""
    if typ == _i4.DEST_UNREACH:
        return _UNREACH4_ERRNO.get(code, _errno.EHOSTUNREACH)
    return _errno.EHOSTUNREACH if typ == _i4.TIME_EXCEEDED else _errno.EPROTO


def _quote6(buf, off: int):
    """(proto, src, dst, sport, dport, total_length, transport bytes) of a quoted IPv6 packet."""
    end = len(buf)
    if end - off < IPV6_HLEN or buf[off] >> 4 != 6:
        return None
    total = IPV6_HLEN + ((buf[off + 4] << 8) | buf[off + 5])
    nh = buf[off + 6]
    src = bytes(buf[off + 8 : off + 24])
    dst = bytes(buf[off + 24 : off + 40])
    t0 = off + IPV6_HLEN
    try:
        proto, t, frag = skip_ext_headers(buf, t0, end, nh)
        if frag is not None:
            if frag[1]:
                return proto, src, dst, None, None, total, buf[t:end]
            proto, t, frag = skip_ext_headers(buf, t, end, proto, first=False)
            if frag is not None:
                return proto, src, dst, None, None, total, buf[t:end]
    except WireError:
        return nh, src, dst, None, None, total, buf[t0:end]
    sport, dport = _ports(proto, buf[t:end])
    return proto, src, dst, sport, dport, total, buf[t:end]


def icmp6_error(packet: bytes) -> tuple[int, int, bytes, int, bytes, int] | None:
    """`icmp4_error` for an IPv6 packet: an ICMPv6 error (unreachable, packet too big, time
    exceeded, parameter problem) with a good checksum, whose quote names the ports; else None."""
    try:
        _tc, _fl, plen, nh, _hop, src, dst = parse_ipv6(packet, 0)
        if nh != ICMPV6:
            return None
        typ, code, _hi, _lo, q = _i6.parse_icmpv6(packet, IPV6_HLEN, plen, src, dst)
    except (WireError, struct.error):
        return None
    if typ not in _i6.ERRORS:
        return None
    return _quoted_error(_icmp6_errno(typ, code), _quote6(packet[: IPV6_HLEN + plen], q))


def _icmp6_errno(typ: int, code: int) -> int:
    """The errno of an ICMPv6 error, as Linux maps it (destination unreachable by code)."""
    if typ == _i6.DEST_UNREACH:
        return _UNREACH6_ERRNO.get(code, _errno.EHOSTUNREACH)
    if typ == _i6.PACKET_TOO_BIG:
        return _errno.EMSGSIZE
    return _errno.EHOSTUNREACH if typ == _i6.TIME_EXCEEDED else _errno.EPROTO


# --------------------------------------------------------------------------- the layer


class IpLayer:
    """IPv4 + IPv6 for one interface; see the module docstring for the events."""

    def __init__(
        self, addrs: Iterable[bytes] = (), mtu: int = 1500, *, lladdr: bytes | None = None,
        ttl: int = 64, hop_limit: int = 64, extra_dst: Iterable[bytes] = (),
        reasm_timeout: float = 30.0, reasm_max_bytes: int = 1 << 20,
        reasm_datagram_bytes: int = 128 << 10, reasm_max_datagrams: int = 64,
        reasm_per_source: int = 16, pmtu_floor: int = 576, pmtu_timeout: float = 600.0,
        pmtu_max_entries: int = 1024, icmp_rate: float = 100.0, icmp_burst: int = 50,
        time_exceeded: bool = True, ident: int = 0, nd: NeighborCache | None = None,
    ) -> None:
        if mtu < IPV4_MIN_MTU or mtu > 0xFFFF:
            raise ValueError(f"MTU {mtu} out of range")
        if not IPV4_MIN_MTU <= pmtu_floor <= mtu:
            raise ValueError(f"pmtu_floor {pmtu_floor} must be within 68..mtu")
        self.mtu = mtu
        self.ttl = ttl
        self.hop_limit = hop_limit
        self.lladdr = lladdr
        self.pmtu_floor = pmtu_floor
        self.pmtu_timeout = pmtu_timeout
        self.pmtu_max_entries = pmtu_max_entries
        self.time_exceeded = time_exceeded
        self.counters: Counter = Counter()
        self.addrs4: list[bytes] = []
        self.addrs6: list[bytes] = []
        self._local4: set[bytes] = set()
        self._local6: set[bytes] = set()
        self._accept4: set[bytes] = {LIMITED_BROADCAST, ALL_HOSTS4}
        self._accept6: set[bytes] = {ALL_NODES}
        self._bcast4: set[bytes] = {LIMITED_BROADCAST}
        for a in extra_dst:
            a = bytes(a)
            if len(a) == 4:
                self._accept4.add(a)
                if a[0] < 224:
                    self._bcast4.add(a)  # a subnet broadcast: never a source, never answered
            elif len(a) == 16:
                self._accept6.add(a)
            else:
                raise ValueError("addresses must be 4 or 16 bytes")
        if nd is None and lladdr is not None:
            nd = NeighborCache(lladdr, self.addrs6, counters=self.counters)
        elif nd is not None:
            nd.addrs = self.addrs6
            nd.counters = self.counters
        self.nd = nd
        for a in addrs:
            self.add_address(a)
        self._reasm = Reassembler(self.counters, reasm_timeout, reasm_max_bytes,
                                  reasm_datagram_bytes, reasm_max_datagrams, reasm_per_source)
        self._pmtu: dict[bytes, list] = {}  # dst -> [mtu, expires, locked]
        self._icmp_bucket = _Bucket(icmp_rate, icmp_burst)
        self._ident = ident & 0xFFFF

    # -- configuration ----------------------------------------------------------------

    def add_address(self, addr: bytes) -> None:
        a = bytes(addr)
        if len(a) == 4:
            if a not in self._local4:
                self.addrs4.append(a)
                self._local4.add(a)
                self._accept4.add(a)
        elif len(a) == 16:
            if self.mtu < IPV6_MIN_MTU:
                raise ValueError(f"IPv6 needs an MTU of at least 1280, not {self.mtu}")
            if a not in self._local6:
                self.addrs6.append(a)
                self._local6.add(a)
                self._accept6.add(a)
                self._accept6.add(solicited_node(a))
        else:
            raise ValueError("addresses must be 4 or 16 bytes")

    def remove_address(self, addr: bytes) -> None:
        a = bytes(addr)
        if a in self._local4:
            self.addrs4.remove(a)
            self._local4.discard(a)
            self._accept4.discard(a)
        elif a in self._local6:
            self.addrs6.remove(a)
            self._local6.discard(a)
            self._accept6.discard(a)
            sn = solicited_node(a)
            if not any(solicited_node(b) == sn for b in self.addrs6):
                self._accept6.discard(sn)

    # -- path MTU ---------------------------------------------------------------------

    def _pmtu_entry(self, dst: bytes, now: float) -> tuple[int, bool]:
        e = self._pmtu.get(dst)
        if e is not None:
            if e[1] <= now:
                del self._pmtu[dst]
            else:
                return min(self.mtu, e[0]), e[2]
        return self.mtu, False

    def pmtu(self, dst: bytes, now: float) -> int:
        """The path MTU to ``dst`` now (the link MTU unless an ICMP lowered it)."""
        return self._pmtu_entry(bytes(dst), now)[0]

    def _lower_pmtu(self, dst: bytes, reported: int, now: float, v6: bool) -> int:
        c = self.counters
        if v6:
            new, locked = max(reported, IPV6_MIN_MTU), False
        else:
            reported = max(reported, IPV4_MIN_MTU)
            locked = reported < self.pmtu_floor
            new = max(reported, self.pmtu_floor)
        cur, cur_locked = self._pmtu_entry(dst, now)
        if new < cur or (new == cur and locked and not cur_locked):
            tbl = self._pmtu
            if dst not in tbl and len(tbl) >= self.pmtu_max_entries:
                for k in [k for k, e in tbl.items() if e[1] <= now]:
                    del tbl[k]
                if len(tbl) >= self.pmtu_max_entries:
                    del tbl[next(iter(tbl))]
            tbl.pop(dst, None)
            tbl[dst] = [new, now + self.pmtu_timeout, locked]
            c["pmtu_lowered"] += 1
            return new
        c["pmtu_ignored"] += 1
        return cur

    # -- input ------------------------------------------------------------------------

    def input(self, packet, now: float) -> list:
        """Process one IP packet (starting at the IP header); return events."""
        ev: list = []
        c = self.counters
        c["rx"] += 1
        try:
            mv = memoryview(packet)
            if mv.ndim != 1 or mv.itemsize != 1:
                mv = mv.cast("B")
            if self._reasm.table:
                self._expire(now, ev)
            if not len(mv):
                c["rx_truncated"] += 1
                return ev
            v = mv[0] >> 4
            if v == 4:
                self._input4(mv, now, ev)
            elif v == 6:
                self._input6(mv, now, ev)
            else:
                c["rx_bad_version"] += 1
        except WireError:
            c["rx_malformed"] += 1
        except Exception:  # a bug, never the packet's fault: count it, keep the stack alive
            c["rx_internal_error"] += 1
        return ev

    def _input4(self, mv: memoryview, now: float, ev: list) -> None:
        c = self.counters
        n = len(mv)
        if n < IPV4_HLEN:
            c["ip4_truncated"] += 1
            return
        try:
            ihl, total, ident, ff, ttl, proto, src, dst = parse_ipv4(mv, 0, n, False)
        except WireError:
            c["ip4_bad_header"] += 1
            return
        if _from_bytes(mv[:ihl], "big") % 0xFFFF:
            c["ip4_bad_checksum"] += 1
            return
        if dst not in self._accept4:
            c["ip4_not_for_us"] += 1
            return
        if src[0] >= 224 or src in self._bcast4:
            c["ip4_bad_src"] += 1
            return
        pkt = mv[:total]
        if ff & (IP_MF | IP_OFFMASK):
            foff = (ff & IP_OFFMASK) << 3
            r = self._reasm.add(
                (4, src, dst, proto, ident), src, foff, pkt[ihl:], bool(ff & IP_MF), now, False,
                0xFFFF - ihl, first=pkt[: ihl + 8] if foff == 0 else None)
            if r is None:
                return
            pieces, part = r
            hdr = build_ipv4_header(src, dst, proto, part.total, ident, ttl, False, mv[1])
            pkt = memoryview(b"".join([hdr, *pieces]))
            ihl = IPV4_HLEN
        payload = pkt[ihl:]
        if proto == ICMP:
            self._icmp4(src, dst, payload, pkt, ttl, now, ev)
            return
        c["ip4_delivered"] += 1
        ev.append(Datagram(proto, src, dst, payload, pkt, ttl))

    def _input6(self, mv: memoryview, now: float, ev: list) -> None:
        c = self.counters
        n = len(mv)
        if n < IPV6_HLEN:
            c["ip6_truncated"] += 1
            return
        try:
            tc, fl, plen, nh, hop, src, dst = parse_ipv6(mv, 0, n)
        except WireError:
            c["ip6_bad_header"] += 1
            return
        if dst not in self._accept6:
            c["ip6_not_for_us"] += 1
            return
        if src[0] == 0xFF:
            c["ip6_bad_src"] += 1
            return
        end = IPV6_HLEN + plen
        pkt = mv[:end]
        try:
            nh, off, frag = skip_ext_headers(pkt, IPV6_HLEN, end, nh)
            if frag is not None:
                _, foff, more, ident = frag
                if foff == 0 and not more:  # atomic fragment (RFC 6946)
                    c["ip6_atomic_frag"] += 1
                else:
                    r = self._reasm.add(
                        (6, src, dst, ident), src, foff, pkt[off:end], more, now, True, 0xFFFF,
                        first=pkt[: _i6.MAX_QUOTE] if foff == 0 else None, meta=nh)
                    if r is None:
                        return
                    pieces, part = r
                    if part.meta is None:  # cannot happen: fragment zero was stored
                        c["ip6_bad_ext"] += 1
                        return
                    hdr = build_ipv6_header(src, dst, part.meta, part.total, hop, tc, fl)
                    pkt = memoryview(b"".join([hdr, *pieces]))
                    end = len(pkt)
                    off = IPV6_HLEN
                    nh = part.meta
                nh, off, frag = skip_ext_headers(pkt, off, end, nh, first=False)
                if frag is not None:
                    c["ip6_bad_ext"] += 1
                    return
        except WireError:
            c["ip6_bad_ext"] += 1
            return
        if nh == NO_NEXT:
            c["ip6_no_next"] += 1
            return
        payload = pkt[off:end]
        if nh == ICMPV6:
            self._icmp6(src, dst, payload, pkt, hop, now, ev)
            return
        c["ip6_delivered"] += 1
        ev.append(Datagram(nh, src, dst, payload, pkt, hop))

    # -- ICMPv4 -----------------------------------------------------------------------

    def _icmp4(self, src, dst, payload, pkt, ttl, now, ev) -> None:
        c = self.counters
        try:
            typ, code, hi, lo, _ = _i4.parse_icmp(payload, 0, len(payload), True)
        except WireError:
            c["icmp4_bad"] += 1
            return
        if typ == _i4.ECHO_REQUEST:
            reply = _i4.build_echo(_i4.ECHO_REPLY, hi, lo, payload[8:])
            self._answer_echo("icmp4", ICMP, self._local4, src, dst, reply, now, ev)
            return
        if typ in _ICMP4_ERRORS:
            self._icmp4_error(typ, code, lo, src, payload, now, ev)
            return
        if typ in _ICMP4_ERROR_TYPES:  # source quench, redirect
            c["icmp4_ignored"] += 1
            return
        c["icmp4_delivered"] += 1
        ev.append(Datagram(ICMP, src, dst, payload, pkt, ttl))

    def _answer_echo(self, fam: str, proto: int, local, src, dst, reply: bytes, now, ev) -> None:
        """An echo request to one of our unicast addresses gets `reply`; counted under `fam`."""
        c = self.counters
        if dst not in local:
            c[f"{fam}_echo_not_unicast"] += 1
            return
        try:
            out = self.output(proto, dst, src, reply, now)
        except (OSError, WireError):
            c[f"{fam}_echo_dropped"] += 1
            return
        c[f"{fam}_echo_replied"] += 1
        ev.extend(Transmit(p) for p in out)

    def _quoted(self, fam: str, parse, local, payload):
        """The quote of an ICMP error, if it parses and names a packet we sent; else counted."""
        q = parse(payload, 8)
        if q is None:
            self.counters[f"{fam}_bad_quote"] += 1
            return None
        if q[1] not in local:  # the quoted source is not ours: a forged error
            self.counters[f"{fam}_bogus_quote"] += 1
            return None
        return q

    def _icmp4_error(self, typ, code, lo, reporter, payload, now, ev) -> None:
        c = self.counters
        q = self._quoted("icmp4", _quote4, self._local4, payload)
        if q is None:
            return
        proto, qsrc, qdst, sport, dport, qtotal, quote = q
        mtu = 0
        err = _icmp4_errno(typ, code)
        if typ == _i4.DEST_UNREACH and code == _i4.FRAG_NEEDED:
            reported = lo
            if not reported:  # pre-RFC 1191 router: guess from the plateau table
                reported = next((p for p in _PLATEAUS if p < qtotal), IPV4_MIN_MTU)
            if reported >= qtotal:
                c["pmtu_bogus"] += 1
                return
            mtu = self._lower_pmtu(qdst, reported, now, False)
        c["icmp4_error"] += 1
        ev.append(IcmpError(proto, qsrc, sport, qdst, dport, err, typ, code, mtu, reporter, quote))

    # -- ICMPv6 -----------------------------------------------------------------------

    def _icmp6(self, src, dst, payload, pkt, hop, now, ev) -> None:
        c = self.counters
        try:
            typ, code, hi, lo, _ = _i6.parse_icmpv6(payload, 0, len(payload), src, dst, True)
        except WireError:
            c["icmp6_bad"] += 1
            return
        if typ == _i6.ECHO_REQUEST:
            reply = _i6.build_echo6(_i6.ECHO_REPLY, hi, lo, payload[8:], dst, src)
            self._answer_echo("icmp6", ICMPV6, self._local6, src, dst, reply, now, ev)
            return
        if typ < 128:
            if typ in _i6.ERRORS:
                self._icmp6_error(typ, code, (hi << 16) | lo, src, payload, now, ev)
            else:
                c["icmp6_ignored"] += 1
            return
        if typ == _i6.NEIGHBOR_SOLICIT:
            self._nd_ns(src, dst, hop, payload, now, ev)
            return
        if typ == _i6.NEIGHBOR_ADVERT:
            self._nd_na(src, dst, hop, payload, now, ev)
            return
        if typ in (_i6.ROUTER_SOLICIT, _i6.ROUTER_ADVERT):
            if not self._nd_router(typ, src, hop, payload, now, ev):
                return
        elif typ == _i6.REDIRECT:
            c["icmp6_ignored"] += 1
            return
        c["icmp6_delivered"] += 1
        ev.append(Datagram(ICMPV6, src, dst, payload, pkt, hop))

    def _icmp6_error(self, typ, code, param, reporter, payload, now, ev) -> None:
        c = self.counters
        q = self._quoted("icmp6", _quote6, self._local6, payload)
        if q is None:
            return
        proto, qsrc, qdst, sport, dport, qtotal, quote = q
        mtu = 0
        err = _icmp6_errno(typ, code)
        if typ == _i6.PACKET_TOO_BIG:
            if param >= qtotal:
                c["pmtu_bogus"] += 1
                return
            mtu = self._lower_pmtu(qdst, param, now, True)
        c["icmp6_error"] += 1
        ev.append(IcmpError(proto, qsrc, sport, qdst, dport, err, typ, code, mtu, reporter, quote))

    # -- Neighbour Discovery ----------------------------------------------------------

    def _nd_learned(self, r, ev) -> None:
        if r is not None and r[2]:
            ev.append(NeighborResolved(*r))

    def _nd_ns(self, src, dst, hop, payload, now, ev) -> None:
        c = self.counters
        if hop != 255:
            c["nd_bad"] += 1
            return
        try:
            target, opts = _i6.parse_ns(payload)
        except WireError:
            c["nd_bad"] += 1
            return
        slla = _i6.find_option(opts, _i6.OPT_SOURCE_LLADDR)
        dad = src == UNSPECIFIED
        if dad and (dst != solicited_node(target) or slla is not None):
            c["nd_bad"] += 1
            return
        if target not in self._local6:
            c["nd_ns_not_ours"] += 1
            return
        if slla is not None and self.nd is not None:
            self._nd_learned(self.nd.on_solicit(src, slla, now), ev)
        if dad:
            na_dst, flags = ALL_NODES, _i6.NA_OVERRIDE
        else:
            na_dst, flags = src, _i6.NA_SOLICITED | _i6.NA_OVERRIDE
        na = _i6.build_na(target, na_dst, target, flags, self.lladdr)
        c["nd_na_sent"] += 1
        ev.append(Transmit(build_ipv6_header(target, na_dst, ICMPV6, len(na), 255) + na))

    def _nd_na(self, src, dst, hop, payload, now, ev) -> None:
        c = self.counters
        if hop != 255:
            c["nd_bad"] += 1
            return
        try:
            flags, target, opts = _i6.parse_na(payload)
        except WireError:
            c["nd_bad"] += 1
            return
        if dst[0] == 0xFF and flags & _i6.NA_SOLICITED:
            c["nd_bad"] += 1
            return
        if target in self._local6:
            c["nd_dup_addr"] += 1
            return
        if self.nd is None:
            c["icmp6_ignored"] += 1
            return
        tlla = _i6.find_option(opts, _i6.OPT_TARGET_LLADDR)
        self._nd_learned(self.nd.on_advert(target, tlla, flags, now), ev)

    def _nd_router(self, typ, src, hop, payload, now, ev) -> bool:
        """RS/RA checks (RFC 4861 §6.1); learns the source link-layer address; True to deliver."""
        c = self.counters
        if hop != 255:
            c["nd_bad"] += 1
            return False
        try:
            if typ == _i6.ROUTER_SOLICIT:
                opts = _i6.parse_rs(payload)
            else:
                if not (src[0] == 0xFE and src[1] & 0xC0 == 0x80):
                    c["nd_bad"] += 1
                    return False
                opts = _i6.parse_ra(payload)[5]
        except WireError:
            c["nd_bad"] += 1
            return False
        slla = _i6.find_option(opts, _i6.OPT_SOURCE_LLADDR)
        if slla is not None:
            if src == UNSPECIFIED:
                c["nd_bad"] += 1
                return False
            if self.nd is not None:
                self._nd_learned(self.nd.on_solicit(src, slla, now), ev)
        return True

    # -- errors we send ---------------------------------------------------------------

    def _may_send_error(self, now: float) -> bool:
        if self._icmp_bucket.take(now):
            return True
        self.counters["icmp_rate_limited"] += 1
        return False

    def unreachable(self, dgram: Datagram, now: float, code: int | None = None) -> list[bytes]:
        """ICMP(v6) destination unreachable (default: port unreachable) about a delivered
        `Datagram` nobody wanted. Returns packets to send, or [] when the rules of RFC 1122
        §3.2.2 / RFC 4443 §2.4 forbid an error (to or from broadcast or multicast, about
        an ICMP error) or the rate limit says no."""
        c = self.counters
        me, peer, pkt = dgram.dst, dgram.src, dgram.packet
        pl = dgram.payload
        try:
            if len(me) == 4:
                if (me not in self._local4 or peer[0] >= 224 or peer in self._bcast4
                        or peer == b"\0\0\0\0"
                        or (dgram.proto == ICMP and (not len(pl) or pl[0] in _ICMP4_ERROR_TYPES))):
                    c["icmp_err_suppressed"] += 1
                    return []
                if not self._may_send_error(now):
                    return []
                msg = _i4.build_dest_unreach(_i4.PORT_UNREACH if code is None else code, pkt)
                out = self.output(ICMP, me, peer, msg, now)
            else:
                if (me not in self._local6 or peer[0] == 0xFF or peer == UNSPECIFIED
                        or (dgram.proto == ICMPV6 and (not len(pl) or pl[0] < 128))):
                    c["icmp_err_suppressed"] += 1
                    return []
                if not self._may_send_error(now):
                    return []
                msg = _i6.build_error6(
                    _i6.DEST_UNREACH, _i6.PORT_UNREACH if code is None else code, pkt, me, peer)
                out = self.output(ICMPV6, me, peer, msg, now)
        except (OSError, WireError):
            c["icmp_err_suppressed"] += 1
            return []
        c["icmp_err_sent"] += 1
        return out

    # -- output -----------------------------------------------------------------------

    def _src4(self, src):
        if src is None:
            if not self.addrs4:
                raise OSError(_errno.EADDRNOTAVAIL, "no IPv4 address")
            return self.addrs4[0]
        src = bytes(src)
        if src not in self._local4:
            raise OSError(_errno.EADDRNOTAVAIL, "source is not a local address")
        return src

    def _src6(self, src, dst):
        if src is None:
            if not self.addrs6:
                raise OSError(_errno.EADDRNOTAVAIL, "no IPv6 address")
            ll = is_link_local6(dst)
            for a in self.addrs6:
                if is_link_local6(a) == ll:
                    return a
            return self.addrs6[0]
        src = bytes(src)
        if src not in self._local6:
            raise OSError(_errno.EADDRNOTAVAIL, "source is not a local address")
        return src

    def output(self, proto: int, src: bytes | None, dst: bytes, payload, now: float, *,
               ttl: int | None = None, tos: int = 0, df: bool | None = None,
               segmented: bool = False) -> list[bytes]:
        """Whole IP packets carrying ``payload`` (upper-layer checksums already set).

        ``src`` None picks one of our addresses. IPv4: ``df`` None sets DF when
        the packet fits the path MTU and fragments otherwise; False never sets
        DF; True raises ``OSError(EMSGSIZE)`` rather than fragment. A PMTU
        locked at the floor clears DF. IPv6 (``ttl`` is the hop limit, ``tos``
        the traffic class) raises EMSGSIZE above the path MTU. ``segmented``: a
        TCP super-segment the device cuts itself (segmentation offload), one
        packet whatever its size, and its segments are TCP's to keep within
        the path MTU.
        """
        dst = bytes(dst)
        plen = len(payload)
        c = self.counters
        if len(dst) == 4:
            src = self._src4(src)
            pmtu, locked = self._pmtu_entry(dst, now)
            t = self.ttl if ttl is None else ttl
            ident = self._ident
            self._ident = (ident + 1) & 0xFFFF
            if IPV4_HLEN + plen <= pmtu or segmented:
                c["tx"] += 1
                hdr = build_ipv4_header(
                    src, dst, proto, plen, ident, t, df is not False and not locked, tos)
                return [hdr + payload]
            if df and not locked:
                raise OSError(_errno.EMSGSIZE,
                              f"packet of {IPV4_HLEN + plen} bytes exceeds the path MTU {pmtu}")
            if IPV4_HLEN + plen > 0xFFFF:
                raise OSError(_errno.EMSGSIZE,
                              f"payload of {plen} bytes does not fit an IPv4 datagram")
            chunk = (pmtu - IPV4_HLEN) & ~7
            mv = memoryview(payload)
            if mv.ndim != 1 or mv.itemsize != 1:
                mv = mv.cast("B")
            out = []
            for off in range(0, plen, chunk):
                piece = mv[off : off + chunk]
                hdr = build_ipv4_header(src, dst, proto, len(piece), ident, t, False, tos,
                                        off + chunk < plen, off)
                out.append(hdr + piece)
            c["tx"] += 1
            c["tx_fragments"] += len(out)
            return out
        if len(dst) == 16:
            src = self._src6(src, dst)
            pmtu = self._pmtu_entry(dst, now)[0]
            if IPV6_HLEN + plen > pmtu and not segmented:
                raise OSError(_errno.EMSGSIZE,
                              f"packet of {IPV6_HLEN + plen} bytes exceeds the path MTU {pmtu}")
            c["tx"] += 1
            hop = self.hop_limit if ttl is None else ttl
            hdr = build_ipv6_header(src, dst, proto, plen, hop, tos)
            return [hdr + payload]
        raise WireError("destination must be 4 or 16 bytes")

    # -- timers -----------------------------------------------------------------------

    def _expire(self, now: float, ev: list) -> None:
        for p in self._reasm.expire(now):
            if not self.time_exceeded or p.first is None:
                continue
            key = p.key
            peer, me = key[1], key[2]
            try:
                if key[0] == 4:
                    if me not in self._local4 or peer[0] >= 224 or peer in self._bcast4:
                        continue
                    if not self._may_send_error(now):
                        continue
                    msg = _i4.build_icmp(_i4.TIME_EXCEEDED, 1, 0, 0, p.first)
                    out = self.output(ICMP, me, peer, msg, now)
                else:
                    if me not in self._local6 or peer[0] == 0xFF or peer == UNSPECIFIED:
                        continue
                    if not self._may_send_error(now):
                        continue
                    msg = _i6.build_error6(
                        _i6.TIME_EXCEEDED, _i6.REASSEMBLY_TIMEOUT, p.first, me, peer)
                    out = self.output(ICMPV6, me, peer, msg, now)
            except (OSError, WireError):
                continue
            self.counters["time_exceeded_sent"] += 1
            ev.extend(Transmit(x) for x in out)

    def timeout(self, now: float) -> list:
        """Expire reassembly, resend or give up ND solicitations, age the PMTU cache.

        Returns `Transmit` events (Time Exceeded, NS) and, for packets ND gave up
        on, `IcmpError`s (EHOSTUNREACH) for the sockets that sent them."""
        ev: list = []
        self._expire(now, ev)
        if self.nd is not None:
            sends, failed = self.nd.timeout(now)
            ev.extend(Transmit(s) for s in sends)
            for _addr, pkts in failed:
                for pk in pkts:
                    try:
                        q = _quote6(memoryview(pk), 0)
                    except (TypeError, ValueError):
                        q = None
                    if q is not None and q[1] in self._local6:
                        proto, qsrc, qdst, sport, dport, _total, quote = q
                        ev.append(IcmpError(proto, qsrc, sport, qdst, dport, _errno.EHOSTUNREACH,
                                            _i6.DEST_UNREACH, _i6.ADDR_UNREACH, 0, None, quote))
        if self._pmtu:
            for k in [k for k, e in self._pmtu.items() if e[1] <= now]:
                del self._pmtu[k]
        return ev

    def next_timeout(self, now: float) -> float | None:
        """Seconds until `timeout` has work (reassembly expiry, ND retransmit), or None."""
        t = self._reasm.next_deadline()
        best = None if t is None else max(0.0, t - now)
        if self.nd is not None:
            n = self.nd.next_timeout(now)
            if n is not None and (best is None or n < best):
                best = n
        return best

    @property
    def reassembly_bytes(self) -> int:
        """Bytes charged to fragments in progress (data plus fixed overheads)."""
        return self._reasm.bytes

    @property
    def reassembly_pending(self) -> int:
        return len(self._reasm.table)
