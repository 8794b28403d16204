"""A flow switch's neighbour cache: resolved neighbours, and packets waiting for one.

One class serves ARP (4-byte IPv4 keys) and IPv6 Neighbour Discovery
(16-byte keys): what differs between the two is only how the switch asks
(an ARP request or a Neighbour Solicitation) and what it learns from, so
the queue discipline for packets whose next hop is unknown is written once.
The switch keeps one instance per family.

An unresolved neighbour holds back only the packets to it, in its own
queue of at most `queue_bytes` (Linux's unres_qlen_bytes, SK_WMEM_MAX =
212992), each packet charged its length plus Linux's sk_buff overhead
(576 bytes), so 101 full-sized frames fit, Linux's unres_qlen. When full,
the oldest are pushed out and the caller counts them (NEIGHBOUR_UNRESOLVED),
as Linux's __neigh_event_send does. Nothing else waits: not the flow that
sent it, not the port, not other neighbours. So a spoofed SYN from an
on-link address nobody answers for costs one queued SYN-ACK and three ARP
requests, and established connections on that port go on.

Sans-I/O: it is told the time and returns what to ask for. Entries live
`ttl` seconds; an unresolved address is asked for every `retry` seconds up to
`tries` times, after which its waiting packets are dropped and counted.

A host on the link chooses what the switch learns from it (every ARP request
for our address teaches its sender, as Linux's arp_process does), so the table
of at most `max_entries` is kept in the order entries were learnt, which with
one `ttl` is the order they expire: expiry pops from the front, O(expired),
and a full table is never scanned. When it is full, an address we asked for
(someone's packets wait for it) takes the place of the oldest entry, while an
unsolicited sender is not learnt (its request is answered from the frame
itself): a flood of made-up senders can neither keep a real neighbour out
nor push one out (Linux's forced GC likewise makes room for a new entry).
The addresses being asked for are kept in the order they were last asked,
so the timer and the retries read only the front; when `max_entries` are
being asked for, a new question pushes out the oldest (its packets reported
as unresolved): a flood of stimuli from made-up on-link sources (an IPv6
/64 has plenty), each earning an answer that waits for ND, cycles through the
table instead of closing it to every flow for the three seconds a question
lives, and a real neighbour, which answers within a round trip, is learnt.
The queues together hold at most `held_max` bytes, past which the oldest
other question goes the same way: a client sending to thousands of silent
on-link addresses (a /64 again) could otherwise park 4096 full queues,
some 870 MB, in usnetd.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["SKB_OVERHEAD", "NeighbourCache"]

UNRES_QLEN_BYTES = 212992  # Linux's default unres_qlen_bytes (SK_WMEM_MAX)
SKB_OVERHEAD = 576  # what Linux's truesize adds to a packet: sk_buff and skb_shared_info, aligned
# What all the queues of one table may hold together: 64 neighbours' full queues (13 MB). Linux
# charges a queued packet to its socket's send buffer, which bounds what one socket can park; here
# the packets are copies in usnetd's memory, so one bound over all of them stands in for that.
HELD_MAX = 64 * UNRES_QLEN_BYTES


@dataclass
class _Pending:
    packets: deque = field(default_factory=deque)  # (charge, item)
    asked_at: float = 0.0
    tries: int = 0
    nbytes: int = 0  # charged for the packets held


class NeighbourCache:
    """Link-layer addresses by IP address (4 or 16 bytes), and packets waiting for them."""

    def __init__(self, ttl: float = 60.0, retry: float = 1.0, tries: int = 3,
                 queue_bytes: int = UNRES_QLEN_BYTES, max_entries: int = 4096,
                 held_max: int = HELD_MAX) -> None:
        self.ttl, self.retry, self.tries, self.max_entries = ttl, retry, tries, max_entries
        self.queue_bytes = queue_bytes
        self.held_max = max(held_max, queue_bytes)  # all the queues together (one queue always fits)
        self.held = 0  # charged bytes waiting, over all the queues
        self.entries: dict[bytes, tuple[bytes, float]] = {}  # address -> (mac, expires)
        self.pending: dict[bytes, _Pending] = {}
        self.dropped = 0
        self.refused = 0  # unsolicited senders not learnt: the table was full
        self.evicted = 0  # entries pushed out by an address we asked for
        self.abandoned = 0  # questions given up early: the pending table was full and a new one came

    def lookup(self, ip: bytes, now: float) -> bytes | None:
        e = self.entries.get(ip)
        if e is None:
            return None
        if e[1] < now:
            del self.entries[ip]
            return None
        return e[0]

    def knows(self, ip: bytes) -> bool:
        """True if `ip` has an entry or is being asked for.

        Why: an unsolicited advertisement about an address nobody asked for
        is not believed (RFC 4861 §7.2.5), so a neighbour cannot fill the
        table with addresses of its choosing.
        """
        return ip in self.entries or ip in self.pending

    def learn(self, ip: bytes, mac: bytes, now: float) -> list:
        """Record a neighbour; returns the packets that were waiting for it.

        Re-learnt entries move to the end, so the dict stays in expiry order.
        """
        entries = self.entries
        if entries.pop(ip, None) is None and len(entries) >= self.max_entries:
            self.expire(now)
            if len(entries) >= self.max_entries:
                if ip not in self.pending:
                    self.refused += 1  # a flood of made-up neighbours does not grow us, nor evict
                    return []
                del entries[next(iter(entries))]  # we asked: the oldest entry makes room
                self.evicted += 1
        entries[ip] = (mac, now + self.ttl)
        p = self.pending.pop(ip, None)
        if p is None:
            return []
        self.held -= p.nbytes
        return [item for _, item in p.packets]

    def wait(self, ip: bytes, packet: object, size: int, now: float) -> tuple[bool, list]:
        """Queue a packet of `size` bytes for an unresolved address.

        Returns (ask now?, the packets pushed out: of a full queue, oldest
        first, perhaps this one, or of the oldest question when `max_entries`
        are asked already); the caller accounts for the dropped ones.
        """
        charge = size + SKB_OVERHEAD
        if charge > self.queue_bytes:
            self.dropped += 1
            return False, [packet]
        pending = self.pending
        p = pending.get(ip)
        ask = p is None
        dropped: list = []
        if p is None:
            p = self._ask(ip, now, dropped)
        while self.held + charge > self.held_max:  # all the queues full: the oldest other question goes
            other = next((a for a in pending if a != ip), None)
            if other is None:
                break  # ours alone: its own bound (below) is the tighter one
            self._abandon(other, dropped)
        while p.nbytes + charge > self.queue_bytes:
            c, old = p.packets.popleft()
            p.nbytes -= c
            self.held -= c
            dropped.append(old)
        self.dropped += len(dropped)
        p.packets.append((charge, packet))
        p.nbytes += charge
        self.held += charge
        return ask, dropped

    def expect(self, ip: bytes, now: float) -> list:
        """Another party on this link (a worker of usnetd, sending on its own queue) asked for
        `ip`, and the answer arrives here (ARP and ND come to queue 0): wait for it as for our own
        question, with no packet queued, so the reply is believed (`knows`) and learnt. Returns
        the packets of a question pushed out to make room (`wait`), to be reported."""
        dropped: list = []
        if ip not in self.entries and ip not in self.pending:
            self._ask(ip, now, dropped)
            self.dropped += len(dropped)
        return dropped

    def _ask(self, ip: bytes, now: float, dropped: list) -> _Pending:
        """A new question for `ip`, asked now; when `max_entries` are asked already the oldest
        gives way, its packets going to `dropped` (to be counted and reported)."""
        if len(self.pending) >= self.max_entries:
            self._abandon(next(iter(self.pending)), dropped)
        p = self.pending[ip] = _Pending(asked_at=now, tries=1)
        return p

    def _abandon(self, ip: bytes, dropped: list) -> None:
        """Give up asking for `ip` early; its packets go to `dropped`, to be reported."""
        p = self.pending.pop(ip)
        self.held -= p.nbytes
        dropped.extend(item for _, item in p.packets)
        self.abandoned += 1

    def due(self, now: float) -> tuple[list[bytes], list]:
        """(addresses to ask again, packets given up on after `tries` unanswered requests)."""
        ask = []
        gave_up: list = []
        pending = self.pending
        while pending:  # in the order they were asked: the due ones are first
            ip = next(iter(pending))
            p = pending[ip]
            if now - p.asked_at < self.retry:
                break
            del pending[ip]
            if p.tries >= self.tries:
                self.held -= p.nbytes
                self.dropped += len(p.packets)
                gave_up.extend(item for _, item in p.packets)
                continue
            p.tries += 1
            p.asked_at = now
            pending[ip] = p  # asked again: to the end
            ask.append(ip)
        return ask, gave_up

    def expire(self, now: float) -> None:
        """Forget the entries past their time: they are the first ones (learn keeps expiry order)."""
        entries = self.entries
        while entries:
            ip = next(iter(entries))
            if entries[ip][1] >= now:
                break
            del entries[ip]

    def next_timer(self, now: float) -> float | None:
        if not self.pending:
            return None
        return max(0.0, self.pending[next(iter(self.pending))].asked_at + self.retry - now)
