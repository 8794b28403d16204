"""The channel EVENT ring: what the nexus tells a channel (docs/architecture.md, "Low latency", docs/abi.md).

The ring header is the one of `usnet.abi.ring`; each slot is an `EVENT`
record (32 bytes): its type (an EventType), a code (a detail: a
RefusalReason, a DefunctReason, ...), the packet index concerned or
NO_PACKET, the CLOCK_MONOTONIC ns when the nexus posted it, a value (a
count or an argument) and aux (a second argument).

The nexus is the only producer. A full ring never blocks it: the event is
dropped and counted in the channel's STATS (`events_dropped`, published at
the drop), which the client reads as `Channel.events_lost`.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

from usnet.abi.layout import Fields
from usnet.abi.ring import CONS, HEADER, PROD, RingCorrupt

__all__ = [
    "EVENT", "NO_PACKET", "RECORD", "RECORD_SIZE", "DefunctReason", "Event", "EventConsumer", "EventProducer",
    "EventType", "RefusalReason", "RevokeReason", "TxDropReason", "TxStatus",
]

EVENT = Fields(
    "EVENT record",
    ("type", "u16"), ("code", "u16"), ("packet", "u32"), ("time_ns", "u64"), ("value", "u64"), ("aux", "u64"),
)
RECORD = EVENT.struct()
RECORD_SIZE = EVENT.size
NO_PACKET = 0xFFFFFFFF


class EventType(enum.IntEnum):
    REFUSED = 1  # the nexus refused something the client wrote (code: RefusalReason)
    DEFUNCT = 2  # the channel is defunct (code: DefunctReason)
    RESIZED = 3  # ring or pool size changed (value: ring limit, aux: packets)
    PEER_CLOSED = 4  # the other end of a user pipe closed cleanly
    TX_DROPPED = 5  # the flow switch dropped a packet the client sent (code: TxDropReason)
    FLOW_SUSPENDED = 6  # the flow's queue at the netif is full (value: packets, aux: bytes queued)
    FLOW_RESUMED = 7
    ADVISORY_UPDATED = 8  # the netif's rate-trend suggestion changed (code: direction, value: Trend, aux: seq)
    LEASE_GRANTED = 9  # the flow is in the low-latency class (value: lease id, aux: granted rate, bit/s)
    LEASE_REVOKED = 10  # back in the general class (code: RevokeReason, value: lease id, aux: frames moved)
    TX_STATUS = 11  # one packet's fate (code: TxStatus | TxDropReason << 8, value: tag, aux: taken_ns)
    # the channel left its RX ring unread for `stall_after`: arrivals are dropped (value: packets waiting)
    RX_STALLED = 12
    RX_RESUMED = 13  # it read again after RX_STALLED: deliveries resume (value: arrivals dropped meanwhile)


class TxStatus(enum.IntEnum):
    """What became of a packet that asked for a report (UMD TX_REPORT) or carried a deadline."""

    SENT = 1  # handed to the device (time_ns: when)
    DROPPED = 2  # refused or lost before the device (the code's high byte: its TxDropReason)
    EXPIRED = 3  # its deadline passed before it could be sent: not sent
    FLUSHED = 4  # still queued when its flow went away: not sent


class TxDropReason(enum.IntEnum):
    """Why the flow switch refused to transmit a client's packet (validated on its copy)."""

    MALFORMED = 1  # not a well-formed IPv4 packet (header length, total length, header checksum)
    NOT_IPV4 = 2  # version is not 4 (an ARP frame, say: clients hand the switch IP packets only)
    WRONG_PROTOCOL = 3  # not the flow's protocol
    SPOOFED_SOURCE = 4  # source address or port is not the flow's
    WRONG_DESTINATION = 5  # a connected flow sending elsewhere
    TOO_BIG = 6  # larger than the MTU
    NO_ROUTE = 7
    NEIGHBOUR_UNRESOLVED = 8  # ARP got no answer, or too many packets waited for one
    RATE_EXCEEDED = 9  # past its LL lease's rate (one event per batch: value packets, aux bytes)
    # dropped by the netif's AQM (CoDel): its queue stood too long (one event per flush: value packets, aux bytes)
    QUEUE_DELAY = 10
    # a fragment not of this flow's own datagram: a later one whose first the flow did not send, or a first
    # without the whole L4 header
    FRAGMENT = 11
    # IPv4 LSRR/SSRR option or an IPv6 Routing header: it would take the packet past its checked destination
    SOURCE_ROUTE = 12
    IP_OPTION = 13  # an IPv4 option other than EOL, NOP, record route, timestamp (Linux wants CAP_NET_RAW for the rest)
    ZERO_TTL = 14  # IPv4 TTL or IPv6 hop limit 0: dead on arrival at the first hop (Linux never sends one)


class RefusalReason(enum.IntEnum):
    OUT_OF_RANGE = 1
    NOT_OWNED = 2  # free in the pool, or owned by another channel group
    DUPLICATE = 3  # handed back twice
    IN_ALLOC_RING = 4  # handed back before the client took it
    BAD_COUNTER = 5  # a ring counter that cannot be true


class RevokeReason(enum.IntEnum):
    """Why a low-latency lease ended (the code of LEASE_REVOKED)."""

    RELEASED = 1  # the client released it
    EXPIRED = 2  # its time ran out without a renewal
    POLICY = 3  # the policy was reloaded and no longer entitles it
    CLOSED = 4  # its channel closed or its netif went away (never posted: nobody is left to read it)


class DefunctReason(enum.IntEnum):
    CLOSED = 1
    OWNER_GONE = 2  # the channel's own process went away
    PEER_GONE = 3  # the other end of the pipe went away
    ABUSE = 4  # repeated invalid input, or its memory made the domain fault (the fault barrier)
    DOMAIN_SHUTDOWN = 5
    PROTOCOL = 6  # its session broke the control protocol and was ended
    SLOW_CONSUMER = 7  # its session did not read its control replies and was ended
    STALLED = 8  # it left its RX ring unread for `stall_after` + `stall_defunct` seconds (usnetd config)
    WORKER_GONE = 9  # the usnetd worker process that served it died (`usnetd --workers`); its liveness fd said so


class Event(NamedTuple):
    type: EventType | int
    code: int
    packet: int
    time_ns: int
    value: int
    aux: int

    # TX_STATUS records, read by name
    @property
    def status(self) -> TxStatus | None:
        """A TX_STATUS event's TxStatus (None for other events)."""
        return TxStatus(self.code & 0xFF) if self.type == EventType.TX_STATUS else None

    @property
    def reason(self) -> TxDropReason | None:
        """Why a TX_STATUS DROPPED packet was dropped, or a TX_DROPPED event's reason."""
        if self.type == EventType.TX_DROPPED:
            return TxDropReason(self.code)
        if self.type == EventType.TX_STATUS and self.code >> 8:
            return TxDropReason(self.code >> 8)
        return None

    @property
    def tag(self) -> int:
        """A TX_STATUS event's packet tag (the UMD tag the sender set)."""
        return self.value

    @property
    def taken_ns(self) -> int:
        """A TX_STATUS event's CLOCK_MONOTONIC ns when the nexus took the packet off the TX ring."""
        return self.aux


class EventProducer:
    """Nexus side: post records, dropping (and counting) when the ring is full."""

    def __init__(self, mem: memoryview, offset: int, capacity: int,
                 counter: tuple[memoryview, int] | None = None) -> None:
        self.mem = mem
        self.offset = offset
        self.capacity = capacity
        hdr = mem[offset : offset + HEADER]
        self.q = hdr.cast("Q")
        self.prod = self.q[PROD]
        self.dropped = 0
        self._counter = counter  # (u64 words, index) where each drop is published at once

    def post(self, type_: int, code: int = 0, packet: int = NO_PACKET, value: int = 0, aux: int = 0) -> bool:
        cons = self.q[CONS]
        used = self.prod - cons
        if used < 0 or used >= self.capacity:
            # full, or a client wrote nonsense into its consumer counter: either way, drop
            self.dropped += 1
            if self._counter is not None:
                words, i = self._counter
                words[i] = self.dropped
            return False
        slot = self.offset + HEADER + (self.prod % self.capacity) * RECORD_SIZE
        RECORD.pack_into(self.mem, slot, type_, code, packet & 0xFFFFFFFF, time.monotonic_ns(), value, aux)
        self.prod += 1
        self.q[PROD] = self.prod
        return True

    def consumed(self) -> int:
        """The client's consumer counter: how many records it has read (its word, so maybe nonsense)."""
        return int(self.q[CONS])

    def release(self) -> None:
        """Let go of the ring's memory (its owner unmaps it next); posting after this raises."""
        self.q.release()
        self.mem = self._counter = None  # type: ignore[assignment]


class EventConsumer:
    """Client side: a typed iterator over the records the nexus posted."""

    def __init__(self, mem: memoryview, offset: int, capacity: int,
                 on_corrupt: Callable[[str], None] | None = None) -> None:
        self.mem = mem
        self.offset = offset
        self.capacity = capacity
        self.q = mem[offset : offset + HEADER].cast("Q")
        self.cons = self.q[CONS]
        self.on_corrupt = on_corrupt  # may raise a better error first, as the rings' (usnet/abi/ring.py)

    def drain(self) -> Iterator[Event]:
        prod = self.q[PROD]
        avail = prod - self.cons
        if avail < 0 or avail > self.capacity:
            what = f"event producer counter {prod} impossible against {self.cons}"
            if self.on_corrupt is not None:
                self.on_corrupt(what)
            raise RingCorrupt(what)
        for _ in range(avail):
            slot = self.offset + HEADER + (self.cons % self.capacity) * RECORD_SIZE
            t, code, pkt, ts, value, aux = RECORD.unpack_from(self.mem, slot)
            try:
                t = EventType(t)
            except ValueError:
                pass
            self.cons += 1
            self.q[CONS] = self.cons
            yield Event(t, code, pkt, ts, value, aux)
