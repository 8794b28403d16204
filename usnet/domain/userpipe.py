"""The user pipe nexus: two channels of one owner, back to back (docs/architecture.md, "Nexuses").

Both ends share one arena and one packet pool (one trust group). The TX ring
of one end is the RX ring of the other, so packets move between the two
processes by index, zero-copy, and no third process touches the data path.

The nexus stays out of that path. It serves the pool side of each channel:
it fills the ALLOC ring in batches, drains the FREE ring and checks every
index handed back against its private owner table, checks every counter a
client advances, and when an end goes away it defuncts the group and takes
every packet back. That is where a hostile or crashing client meets the
domain, and where the accounting is kept exact.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

import numpy as np

from usnet.abi import ring as ringmod
from usnet.abi import tcpinfo
from usnet.abi.doorbell import Doorbell
from usnet.abi.events import RECORD_SIZE as EVENT_RECORD
from usnet.abi.events import DefunctReason, EventProducer, EventType, RefusalReason
from usnet.abi.ring import Consumer, Producer
from usnet.abi.schema import (
    FLOWADV,
    SCHEMA_BYTES,
    STATS,
    STATS_PER_ROLE,
    W_ACTIVE,
    W_GENERATION,
    W_LIMIT,
    W_REASON,
    W_STALLED,
    W_STATE,
    W_SYNC,
    ChannelState,
    Layout,
    RingInfo,
    RingKind,
    Schema,
    Stat,
)
from usnet.abi.umd import UMD_SIZE, UMD_WORDS, W_DEADLINE, W_FLAGS, W_GSO
from usnet.domain.barrier import log_fault
from usnet.domain.mem.arena import Arena, RegionKind, RegionSpec
from usnet.domain.mem.pool import PacketPool

__all__ = ["ABUSE_LIMIT", "PipeEnd", "UserPipe", "pipe_ring_capacity"]

ROLES = 2
ABUSE_LIMIT = 8  # bad batches tolerated before the group is defuncted
EVENTS_PER_BATCH = 16  # refusal events posted per sync, the rest only counted
# What an ALLOC ring is filled to: at most this many bytes of packets (at least ALLOC_MIN packets,
# at most the ring). An end starts at ALLOC_MIN and doubles towards that each time its client
# found the ring empty and had to kick (`PipeEnd.fill`). See `_refill`.
ALLOC_BYTES = 4 << 20
ALLOC_MIN = 64
# Freed packets (bytes of them) waiting on a FREE ring that `lend` collects before it takes from
# the free stack. See `lend`.
WARM_BYTES = 256 << 10
_CLEAN = np.array([W_GSO, W_DEADLINE, W_DEADLINE + 1, W_FLAGS])  # the UMD words a lent packet starts at 0


def pipe_ring_capacity(schema: Schema) -> int:
    """Pipe rings are allocated for their largest size so a resize needs no quiescence."""
    return max(schema.ring_size, 4096)


def _layout_rings(schema: Schema) -> list[tuple[RingKind, int, int, int]]:
    """(kind, role, capacity, slot size) of every ring of a pipe, in memory order."""
    rings = []
    for role in range(ROLES):
        rings.append((RingKind.PIPE, role, pipe_ring_capacity(schema), ringmod.SLOT))
    for role in range(ROLES):
        rings.append((RingKind.ALLOC, role, schema.alloc_ring, ringmod.SLOT))
        rings.append((RingKind.FREE, role, schema.free_ring, ringmod.SLOT))
        rings.append((RingKind.EVENT, role, schema.event_ring, EVENT_RECORD))
    return rings


class PipeEnd:
    """The nexus's side of one channel of a pipe."""

    def __init__(self, pipe: UserPipe, role: int, rings: dict[tuple[RingKind, int], RingInfo]) -> None:
        mem = pipe.shared_mv
        a = rings[RingKind.ALLOC, role]
        f = rings[RingKind.FREE, role]
        e = rings[RingKind.EVENT, role]
        self.role = role
        # Both counters the client writes here are read only through the rings' validated
        # reader: an impossible one is a violation of this end, never an exception. (Weak
        # references: a cycle through the rings would keep the arena's mappings, and their
        # descriptors, alive after destroy until the garbage collector ran.)
        wpipe, wend = weakref.ref(pipe), weakref.ref(self)

        def on_corrupt(what: str) -> None:
            p, e = wpipe(), wend()
            if p is not None and e is not None:
                p._violation(e, RefusalReason.BAD_COUNTER)

        self.on_corrupt = on_corrupt  # also the flow switch's, for the PIPE rings it reads (FlowPort)
        self.alloc = Producer(mem, a.offset, a.capacity, on_corrupt=on_corrupt)
        self.alloc_mirror = np.zeros(a.capacity, dtype=np.uint32)  # what we put in each slot
        self.taken = 0  # ALLOC slots the client has consumed, as far as we believe
        # What its ALLOC ring is filled to: ALLOC_MIN, doubled (to the pipe's lend limit) by each
        # kick that found the ring empty. So a flow lends what it uses, not its ring: 1,000 flows
        # of 256-slot rings kept 1 GB in rotation, each datagram's buffer cold (issue 18).
        self.fill = min(a.capacity, pipe._lend_limit, ALLOC_MIN)
        self.free = Consumer(mem, f.offset, f.capacity, on_corrupt=on_corrupt)
        # a dropped event is counted where the client sees it at once (STATS events_dropped)
        self.events = EventProducer(mem, e.offset, e.capacity,
                                    (pipe.stats, role * STATS_PER_ROLE + Stat.EVENTS_DROPPED))
        self.bell = Doorbell()  # rung for the client (by us, or by the peer of a user pipe)
        try:
            self.kick = Doorbell()  # rung by the client
        except BaseException:
            self.bell.close()
            raise
        self.channel_id = 0
        self.attached = False
        self.closed = False
        self.violations = 0
        self.peer_causable = False  # a refusal its peer (a user pipe's other client) could have caused
        # This end's RX ring is the other role's PIPE ring (the peer's TX ring, or the flow
        # switch's). The domain reads its header only to see whether the end still reads
        # (Domain._check_stalls); a flow's producer count is the domain's own (`rx_producer`).
        rx = rings[RingKind.PIPE, 1 - role]
        self.rx_q = mem[rx.offset : rx.offset + ringmod.HEADER].cast("Q")
        self.rx_capacity = rx.capacity
        self.rx_producer: Producer | None = None
        self.rx_mark = -1  # its consumer counter at the domain's last look
        self.rx_since = 0.0  # when that counter last moved, or the ring was last empty (the domain's clock)
        self.stalled_since: float | None = None  # when it was judged stalled; None while it reads
        self.stalls = 0  # times it was judged stalled
        self.dropped_mark = 0  # a flow port's rx_dropped_stalled when it was stalled (RX_RESUMED's count)

    def ring_bell(self) -> None:
        self.bell.ring()  # a closed doorbell's ring is a no-op

    def release_views(self) -> None:
        """Let go of every view of the arena this end holds (UserPipe.destroy, before the unmap)."""
        for ring in (self.alloc, self.free):
            ring.release()
        self.events.release()
        self.rx_q.release()

    def close_fds(self) -> None:
        """Close our doorbells (once: a closed Doorbell forgets its numbers, which may be someone else's now)."""
        self.bell.close()
        self.kick.close()


#: Refusals of a free that the other client of a user pipe can cause by passing an index.
_PEER_CAUSABLE = frozenset({RefusalReason.NOT_OWNED, RefusalReason.DUPLICATE, RefusalReason.IN_ALLOC_RING})


class UserPipe:
    """One user pipe: arena, pool, two ends. Callers hold `lock` around every method."""

    def __init__(self, name: str, schema: Schema, uid: int, tcpinfo_slots: int = 0) -> None:
        """`tcpinfo_slots`: a TCP flow channel's TCPINFO records (usnet.abi.tcpinfo), 0 for none."""
        self.name = name
        self.tcpinfo_slots = tcpinfo_slots
        self.schema = schema
        self._lend_limit = max(ALLOC_MIN, ALLOC_BYTES // schema.packet_bytes)  # packets an ALLOC ring is filled to
        self._warm_packets = max(1, WARM_BYTES // schema.packet_bytes)  # freed packets `lend` takes back first
        self.uid = uid
        # both ends are clients' (a named user pipe), not a client's and the switch's (a flow
        # channel): then either end can pass the other indices, and a refused free can be the
        # peer's doing (`_violation`)
        self.two_clients = False
        self.lock = threading.RLock()
        rings = _layout_rings(schema)
        ring_bytes = sum(ringmod.ring_bytes(cap, slot) for _, _, cap, slot in rings)
        self.arena = Arena(
            f"pipe:{name}",
            [
                RegionSpec(RegionKind.RING, 1, ring_bytes),
                RegionSpec(RegionKind.UMD, UMD_SIZE, schema.max_packets),
                RegionSpec(RegionKind.BUF, schema.packet_bytes, schema.max_packets,
                           objs_per_segment=max(1, (256 * 1024) // schema.packet_bytes)),
                RegionSpec(RegionKind.SCHEMA, 1, SCHEMA_BYTES),
                RegionSpec(RegionKind.STATS, STATS.size, ROLES),
                RegionSpec(RegionKind.FLOWADV, FLOWADV.size, ROLES),
                *([RegionSpec(RegionKind.TCPINFO, 1, tcpinfo.region_bytes(tcpinfo_slots))] if tcpinfo_slots else []),
            ],
        )
        self.ends: list[PipeEnd] = []
        try:
            self._build(schema, rings)
        except BaseException:  # half made (out of descriptors, say): release all of it
            for end in self.ends:
                end.close_fds()
            self.arena.close()
            raise

    def _build(self, schema: Schema, rings: list[tuple[RingKind, int, int, int]]) -> None:
        """Everything of the pipe inside its arena: views, layout, pool and ends."""
        self.shared_mv = memoryview(self.arena.shared)
        ring_base = self.arena.region(RegionKind.RING).offset
        infos: dict[tuple[RingKind, int], RingInfo] = {}
        off = ring_base
        for kind, role, cap, slot in rings:
            infos[kind, role] = RingInfo(kind, role, cap, off)
            off += ringmod.ring_bytes(cap, slot)
        self.layout = Layout(
            buf_size=schema.buf_size, buflets=schema.buflets, max_packets=schema.max_packets,
            active_packets=0, shared_size=self.arena.shared_size, ro_size=self.arena.ro_size,
            umd_offset=self.arena.region(RegionKind.UMD).offset,
            buf_offset=self.arena.region(RegionKind.BUF).offset,
            stats_offset=self.arena.region(RegionKind.STATS).offset,
            umd_size=UMD_SIZE, generation=0, rings=tuple(infos.values()),
            flowadv_offset=self.arena.region(RegionKind.FLOWADV).offset,
            tcpinfo_offset=self.arena.region(RegionKind.TCPINFO).offset if self.tcpinfo_slots else 0,
        )
        # the client's statistics records: read only for display, through tcpinfo.read_records
        self.tcpinfo: memoryview | None = None
        if self.tcpinfo_slots:
            self.tcpinfo = self.arena.view(RegionKind.TCPINFO)
            tcpinfo.write_header(self.tcpinfo, self.tcpinfo_slots)
        self.flowadv = self.arena.view(RegionKind.FLOWADV)
        self.schema_words = self.arena.view(RegionKind.SCHEMA).cast("I")
        self.layout.write(self.arena.view(RegionKind.SCHEMA))
        self.stats = self.arena.view(RegionKind.STATS).cast("Q")
        self.umd_words = np.frombuffer(self.arena.shared, np.uint32, schema.max_packets * UMD_WORDS,
                                       self.layout.umd_offset)
        self.pool = PacketPool(self.arena, schema.max_packets, schema.packets, ROLES, schema.quota)
        for role in range(ROLES):
            self.ends.append(PipeEnd(self, role, infos))
        for role in range(ROLES):
            self.schema_words[W_LIMIT + role] = schema.ring_size
            self.stats[role * STATS_PER_ROLE + Stat.QUOTA] = schema.quota
        self._publish_active()
        self.defunct_reason: DefunctReason | None = None
        self.faults = 0  # exceptions its fault barrier stopped
        self.idle_mark = -1  # the pool's `moves` at the domain's last purge tick
        self.pressure_mark = -1  # the pool's `moves` after its last memory-pressure purge
        self.destroyed = False
        self.on_destroy: Callable[[UserPipe], None] | None = None
        # Whoever else made views of the arena (a FlowPort) lets go of them here, before the unmap.
        self.view_holders: list[Callable[[], None]] = []

    # -- the pool side of the data path ------------------------------------------

    def sync(self, role: int) -> None:
        """Serve one end: account what it took, take back what it freed, refill its ALLOC ring.

        The other end's FREE ring is drained too, since in a pipe the receiver
        frees what the sender allocated.
        """
        if self.defunct_reason is not None:
            return
        self.collect()
        end = self.ends[role]
        if end.attached and not end.closed and self.defunct_reason is None:
            if end.alloc.prod and end.alloc.prod == end.taken:  # it took all we lent, and kicked: lend more
                end.fill = min(2 * end.fill, end.alloc.capacity, self._lend_limit)
            self._refill(end)
            self.schema_words[W_SYNC + role] = (self.schema_words[W_SYNC + role] + 1) & 0xFFFFFFFF
            end.ring_bell()
        self._publish_stats()

    def lend_first(self, role: int) -> None:
        """Fill one end's ALLOC ring now, as its first refill would (`fill`: ALLOC_MIN packets), for
        an end that sends at once: a connector is opened by a connect whose SYN needs a packet, and
        an empty ring cost that first connect a refill round trip to the domain (a kick, the naps
        of `Channel._refill`: issue 18). No bell: nothing waits on the ring yet."""
        end = self.ends[role]
        if end.attached and not end.closed:
            self._refill(end)

    def _violation(self, end: PipeEnd, reason: RefusalReason, packet: int = 0xFFFFFFFF,
                   posted: bool = False) -> None:
        """Count one bad batch against an end (posting its event unless already posted)."""
        if self.defunct_reason is not None:
            return  # its memory is zeroed: nothing it reads there is the client's any more
        end.violations += 1
        if reason in _PEER_CAUSABLE:
            end.peer_causable = True
        if reason is RefusalReason.BAD_COUNTER:
            self.stats[end.role * STATS_PER_ROLE + Stat.BAD_COUNTER] += 1
        if not posted:
            end.events.post(EventType.REFUSED, reason, packet)
        end.ring_bell()
        if end.violations >= ABUSE_LIMIT:
            # Between two clients the end that frees a packet it may not free need not be the one
            # that lied: its peer may have passed it the index (one in its ALLOC ring, one free in
            # the pool, one freed already), and its client frees what it received. The nexus
            # cannot tell which of the two it was, so the group is ABUSE on both ends, and a liar
            # cannot pass for its victim's PEER_GONE. A counter, or an index out of range (a
            # receiving client refuses it: BadPacket), is an end's own doing alone.
            shared = self.two_clients and end.peer_causable
            self.defunct(DefunctReason.ABUSE, culprit=None if shared else end.role)

    def fault(self, role: int, where: str, exc: BaseException) -> None:
        """The fault barrier of one end: an exception serving it defuncts its group (ABUSE), nothing else.

        Defunct takes every packet back into the pool, so whatever the fault
        interrupted leaves nothing unaccounted.
        """
        self.faults += 1
        log_fault(f"{where} of {self.name} (end {role})", exc)
        self.defunct(DefunctReason.ABUSE, culprit=role)

    def _collect_taken(self, end: PipeEnd) -> None:
        """What the client took from its ALLOC ring (never trusting its counter)."""
        cons = end.alloc.q[ringmod.CONS]
        if not end.taken <= cons <= end.alloc.prod:
            self._violation(end, RefusalReason.BAD_COUNTER)
        elif cons != end.taken:
            cap = end.alloc.capacity
            lo, hi = end.taken & (cap - 1), cons & (cap - 1)
            if lo < hi:  # no wrap (most batches): a slice, not an index array
                self.pool.take(end.alloc_mirror[lo:hi])
            else:
                self.pool.take(end.alloc_mirror[np.arange(end.taken, cons) & (cap - 1)])
            end.taken = cons

    def _collect_freed(self, end: PipeEnd) -> None:
        """What the client handed back on its FREE ring."""
        freed = end.free.pop(end.free.capacity)
        if not freed or self.defunct_reason is not None:
            return
        refused = self.pool.release(freed, end.role)
        base = end.role * STATS_PER_ROLE
        self.stats[base + Stat.FREED] += len(freed) - len(refused)
        if refused:
            self.stats[base + Stat.REFUSED] += len(refused)
            for pkt, reason in refused[:EVENTS_PER_BATCH]:
                end.events.post(EventType.REFUSED, reason, pkt)
            self._violation(end, refused[0][1], refused[0][0], posted=True)

    def lend(self, n: int, role: int) -> np.ndarray:
        """Up to `n` packets for `role` (IN_ALLOC): what the clients freed, once it adds up to
        `WARM_BYTES`, then the free stack, then (collecting whatever was freed) new segments.

        Freed packets go on top of the free stack (LIFO), so they are lent first, warm: their
        pages mapped in both processes and in the caches. Left on their FREE ring until the
        stack ran dry, they would wait while the whole stack went by: a TSO flow's pool opens
        with 4,096 packets of 64 KB, and a receiver took a page fault per 4 KB it received for
        the first 256 MB (usnetd's copy into a page it had never mapped, then the client's
        read of it). Collected at every lend, a small packet's batch would pay the collection's
        array calls each time; a few hundred KB of freed packets between collections keeps the
        pages in rotation to about that.

        Growing while freed packets wait on a FREE ring would make a busy pool
        walk all its segments up to `max_packets` (each packet's first page
        touched by whoever writes it), although the clients never hold that
        many: the pool must grow for packets in use, never for uncollected ones.
        """
        warm = self._warm_packets
        for e in self.ends:  # a loop, not any(genexpr): asked at every delivery, nothing made
            if e.attached and not e.closed and e.free.refresh() >= warm:
                self.collect()
                if self.defunct_reason is not None:
                    return self.pool.stack[:0]
                break
        got = self.pool.alloc(n, role, grow=False)
        if len(got) < n:
            self.collect()
            if self.defunct_reason is not None:  # collecting found abuse: defunct took back all, `got` too
                return got[:0]
            more = self.pool.alloc(n - len(got), role)
            if len(more):
                got = np.concatenate([got, more]) if len(got) else more
        return got

    def _refill(self, end: PipeEnd) -> None:
        # Room counts from what we have accounted as taken, never from the live
        # counter: a slot the client took since we looked must keep its mirror
        # entry until _collect_taken has recorded it.
        #
        # Filled to a few MB of packets, not to the ring's size: the free stack gives back the
        # packets freed last, so a client that cycles through what it is lent keeps touching the
        # same memory, warm in the caches and mapped. A ring of 1,024 64 KB packets (a TSO
        # flow's) kept 64 MB in rotation: a fresh process took a page fault per 4 KB it sent,
        # for the first hundreds of MB, and every packet missed the caches. And filled to what
        # the client uses (`PipeEnd.fill`), not to that bound: per flow, the rotation is
        # multiplied by the number of flows.
        room = end.fill - (end.alloc.prod - end.taken)
        if room <= 0 or self.defunct_reason is not None:
            return
        got = self.lend(room, end.role)
        if len(got) == 0:
            return
        # a clean record: no stale gso_size, deadline or flag (one scatter, not one per word)
        self.umd_words.reshape(-1, UMD_WORDS)[got[:, None], _CLEAN] = 0
        cap = end.alloc.capacity
        lo = end.alloc.prod & (cap - 1)
        if lo + len(got) <= cap:  # no wrap (most refills): a slice, not an index array
            end.alloc_mirror[lo : lo + len(got)] = got
        else:
            end.alloc_mirror[np.arange(lo, lo + len(got)) & (cap - 1)] = got
        pushed = end.alloc.push(got)
        if pushed < len(got):  # its consumer counter turned impossible: what did not fit goes back
            self.pool.reclaim(got[pushed:].astype(np.int64))
            got = got[:pushed]
        self.stats[end.role * STATS_PER_ROLE + Stat.ALLOCATED] += len(got)
        self._publish_active()

    def give_back(self, keep: int) -> int:
        """Return the pages of every all-free segment beyond `keep` packets, and tell the clients
        the pool's new size; how many segments went."""
        n = self.pool.purge(keep=keep)
        if n:
            self.publish_pool()
        return n

    def publish_pool(self) -> None:
        """Tell the clients the pool's size changed (a purge, a resize): SCHEMA active, a new generation."""
        self._publish_active()
        self.schema_words[W_GENERATION] = (self.schema_words[W_GENERATION] + 1) & 0xFFFFFFFF

    def _publish_active(self) -> None:
        self.schema_words[W_ACTIVE] = self.pool.active

    # -- stalled readers (the domain's housekeeping tick: Domain._check_stalls) ------------

    def rx_backlog(self, role: int) -> tuple[int, int] | None:
        """(consumer counter, packets waiting) of end `role`'s RX ring; None when its counters
        cannot be true (a client's nonsense is the validated reader's business, not judged here)."""
        end = self.ends[role]
        cons = end.rx_q[ringmod.CONS]
        prod = end.rx_producer.prod if end.rx_producer is not None else end.rx_q[ringmod.PROD]
        waiting = prod - cons
        return (cons, waiting) if 0 <= waiting <= end.rx_capacity else None

    def stall(self, role: int, now: float, waiting: int) -> int:
        """End `role` stopped reading: flag it (SCHEMA stalled word), tell it (RX_STALLED), and
        give back every all-free segment of the pool. Returns the segments purged.

        What waits on its ring stays there: it may still read it. Arrivals are
        refused from now on, by the flow switch (FlowPort.stalled) or by the
        peer's `send`, which sees the word.
        """
        end = self.ends[role]
        end.stalled_since = now
        end.stalls += 1
        self.schema_words[W_STALLED + role] = 1
        end.events.post(EventType.RX_STALLED, value=waiting)
        end.ring_bell()
        self.collect()  # what was freed meanwhile makes its segment all-free
        return self.give_back(0)

    def unstall(self, role: int, dropped: int = 0) -> None:
        """End `role` reads again: deliveries resume (RX_RESUMED, value: arrivals dropped meanwhile)."""
        end = self.ends[role]
        end.stalled_since = None
        self.schema_words[W_STALLED + role] = 0
        end.events.post(EventType.RX_RESUMED, value=dropped)
        end.ring_bell()

    def _publish_stats(self) -> None:
        for end in self.ends:
            base = end.role * STATS_PER_ROLE
            self.stats[base + Stat.HELD] = self.pool.held[end.role]  # (events_dropped: at each drop)

    # -- control ----------------------------------------------------------------------

    def resize(self, role: int, ring_size: int | None, packets: int | None) -> tuple[int, int]:
        """Change a channel's TX ring limit and the pool's packet count, without closing.

        Growing activates segments; shrinking purges the segments that are all
        free, so the pool may stay larger than asked while packets are in use.
        """
        if ring_size is not None:
            cap = pipe_ring_capacity(self.schema)
            if ring_size < 8 or ring_size > cap or ring_size & (ring_size - 1):
                raise ValueError(f"ring_size must be a power of two from 8 to {cap}")
            self.schema_words[W_LIMIT + role] = ring_size
        if packets is not None:
            if not 1 <= packets <= self.schema.max_packets:
                raise ValueError(f"packets must be from 1 to {self.schema.max_packets}")
            if packets > self.pool.active:
                self.pool.grow_to(packets)
            else:
                self.collect()
                self.pool.purge(keep=packets)
        self.publish_pool()
        limit = self.schema_words[W_LIMIT + role]
        for end in self.ends:
            end.events.post(EventType.RESIZED, 0, value=limit, aux=self.pool.active)
            end.ring_bell()
        return limit, self.pool.active

    def collect(self) -> None:
        """Account every end's takes and frees, lending nothing new."""
        if self.defunct_reason is not None:
            return
        live = [e for e in self.ends if e.attached and not e.closed]
        # Every end's ALLOC takes first, then every FREE ring: a packet one end
        # took may already have been freed by the other.
        for e in live:
            self._collect_taken(e)
        for e in live:
            self._collect_freed(e)
        self._publish_stats()

    def close_end(self, role: int) -> None:
        """A clean close: the other end may still read what is on its RX ring.

        What sat on the closing end's ALLOC ring goes back to the pool; what it
        sent stays with the peer, who frees it.
        """
        end = self.ends[role]
        if end.closed or self.destroyed:  # (destroyed: the other end's close took it all, memory too)
            end.closed = True
            return
        if self.defunct_reason is None and end.attached:
            self.collect()
            untaken = np.arange(end.taken, end.alloc.prod) & (end.alloc.capacity - 1)
            if untaken.size:
                self.pool.reclaim(end.alloc_mirror[untaken].astype(np.int64))
            end.taken = end.alloc.prod
        end.closed = True
        if self.schema_words[W_STATE + role] != ChannelState.DEFUNCT:  # a defunct end keeps its reason
            self.schema_words[W_STATE + role] = ChannelState.DEFUNCT
            self.schema_words[W_REASON + role] = DefunctReason.CLOSED
        other = self.ends[1 - role]
        if other.attached and not other.closed and self.defunct_reason is None:
            other.events.post(EventType.PEER_CLOSED)
            other.ring_bell()
        else:
            self.destroy()

    def defunct(self, reason: DefunctReason, culprit: int | None = None) -> int:
        """Take the group back: zero its shared memory for every mapper, reclaim every packet.

        The state words in the read-only region say why, so each client's next
        call raises a clear error instead of reading zeros as data.
        """
        if self.defunct_reason is not None:
            return 0
        self.defunct_reason = reason
        for end in self.ends:
            if culprit is None or end.role == culprit:
                why = reason
            else:
                why = DefunctReason.PEER_GONE
            if self.schema_words[W_STATE + end.role] != ChannelState.DEFUNCT:
                self.schema_words[W_REASON + end.role] = why
                self.schema_words[W_STATE + end.role] = ChannelState.DEFUNCT
        ringmod.fence()
        self.arena.defunct()
        reclaimed = self.pool.reclaim()
        self._publish_stats()
        for end in self.ends:
            end.ring_bell()
        return reclaimed

    def destroy(self) -> None:
        if self.destroyed:
            return
        self.destroyed = True
        if self.defunct_reason is None:
            self.defunct(DefunctReason.CLOSED)
        if self.on_destroy is not None:
            self.on_destroy(self)  # the domain stops watching our kick fds before they close
            self.on_destroy = None
        for end in self.ends:
            end.close_fds()
        self._release_views()
        self.arena.close()

    def _release_views(self) -> None:
        """Let go of every view of the arena, ours and others', so its close really unmaps it.

        mmap.close() refuses while any view exists; left to reference counting
        and the garbage collector, a flow's whole mapping stayed in the domain
        for as long as anything (a cycle, a kept traceback) reached its port.
        """
        for release in self.view_holders:
            release()
        self.view_holders.clear()
        for end in self.ends:
            end.release_views()
        for v in (self.stats, self.schema_words, self.flowadv, self.shared_mv):
            v.release()
        if self.tcpinfo is not None:
            self.tcpinfo.release()
            self.tcpinfo = None
        self.umd_words = self.umd_words[:0].copy()

    def info(self) -> dict:
        return {
            "name": self.name, "schema": self.schema.name, "uid": self.uid,
            "pool": self.pool.counts(), "active": self.pool.active,
            "memory_bytes": self.arena.allocated_bytes(),
            "defunct": None if self.defunct_reason is None else self.defunct_reason.name,
            "faults": self.faults,
            "ends": [{"role": e.role, "channel": e.channel_id, "attached": e.attached,
                      "closed": e.closed, "held": self.pool.held[e.role],
                      "refused": self.pool.refused[e.role], "violations": e.violations,
                      "stalled": e.stalled_since is not None, "stalls": e.stalls}
                     for e in self.ends],
        }
