"""Channel schemas: named presets, their attributes, and the SCHEMA region layout.

A client maps a channel knowing nothing but the SCHEMA region at offset 0 of
the read-only memfd: it names every ring, the pool's geometry and the
per-channel state words. The byte layout is defined here and only here
(docs/abi.md mirrors it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields, replace
from typing import Any

__all__ = [
    "ABI_VERSION", "FLOWADV", "FLOWADV_AT", "HEADER", "MAGIC", "PRESETS", "RING_ENTRY", "RING_TABLE", "SCHEMA_BYTES",
    "STATE_OFFSET", "STATS_PER_ROLE", "TCPINFO_AT", "W_ACTIVE", "W_GENERATION", "W_LIMIT", "W_REASON", "W_STATE",
    "W_SYNC",
    "ChannelState", "FlowState", "Layout", "RingInfo", "RingKind", "Schema", "Stat", "resolve",
]

from usnet.abi.layout import RESERVED, Fields

MAGIC = 0x544E5355  # "USNT" little-endian
ABI_VERSION = 2  # 2: 32-byte UMD records with a deadline and flags

#: The SCHEMA region's header, packed with the ring table when the channel opens.
SCHEMA_HEADER = Fields(
    "SCHEMA header",
    ("magic", "u32"), ("abi", "u16"), ("nrings", "u16"), ("buf_size", "u32"), ("buflets", "u32"),
    ("max_packets", "u32"), ("active_packets", "u32"), ("shared_size", "u64"), ("ro_size", "u64"),
    ("umd_offset", "u64"), ("buf_offset", "u64"), ("stats_offset", "u64"), ("umd_size", "u32"),
    ("generation", "u32"),
)
#: One entry of the ring table.
RING_ENTRY_FIELDS = Fields(
    "ring table entry",
    ("kind", "u8"), ("role", "u8"), (RESERVED, 2), ("capacity", "u32"), ("offset", "u64"),
)
MAX_RINGS = 16
#: The whole SCHEMA region: the header, the per-role state words (one u32 per
#: role, nexus-written), the FLOWADV region's offset, and the ring table.
SCHEMA = Fields(
    "SCHEMA region",
    ("header", SCHEMA_HEADER, 1),
    ("state", "u32", 2), ("reason", "u32", 2),
    ("ring_limit", "u32", 2),  # the TX fill limit of each role's PIPE ring (ring resize)
    ("sync", "u32", 2),  # bumped each time the nexus answers a kick
    ("flowadv_offset", "u64"),
    ("stalled", "u32", 2),  # 1 while the role's RX ring is judged stalled (Domain stall_after)
    ("tcpinfo_offset", "u64"),  # a TCP flow channel's TCPINFO region in the shared memfd (0: none)
    ("rings", RING_ENTRY_FIELDS, MAX_RINGS),
)

HEADER = SCHEMA_HEADER.struct()
RING_ENTRY = RING_ENTRY_FIELDS.struct()
STATE_OFFSET = SCHEMA.offset("state")
FLOWADV_AT = SCHEMA.offset("flowadv_offset")
RING_TABLE = SCHEMA.offset("rings")
SCHEMA_BYTES = SCHEMA.size
_FLOWADV_AT = SCHEMA.struct("flowadv_offset", "flowadv_offset")
TCPINFO_AT = SCHEMA.offset("tcpinfo_offset")
_TCPINFO_AT = SCHEMA.struct("tcpinfo_offset", "tcpinfo_offset")

# u32 indices into the SCHEMA region viewed as 'I' (a state word: W_x + role)
W_ACTIVE = SCHEMA_HEADER.word("active_packets")
W_GENERATION = SCHEMA_HEADER.word("generation")
W_STATE = SCHEMA.word("state")
W_REASON = SCHEMA.word("reason")
W_LIMIT = SCHEMA.word("ring_limit")
W_SYNC = SCHEMA.word("sync")
W_STALLED = SCHEMA.word("stalled")  # + role: the role stopped reading its RX ring


class ChannelState(enum.IntEnum):
    OPEN = 0
    DEFUNCT = 1


class RingKind(enum.IntEnum):
    PIPE = 1  # the TX ring of `role`, which is the RX ring of the other role
    ALLOC = 2
    FREE = 3
    EVENT = 4


@dataclass(frozen=True)
class Schema:
    """The geometry of a channel group; presets below, attributes override."""

    name: str
    ring_size: int  # TX/RX slots, a power of two
    packets: int  # packets in the pool when it opens
    max_packets: int  # the most the pool may grow to
    buf_size: int  # bytes per buflet
    buflets: int  # buflets per packet: the largest packet is buf_size * buflets
    event_ring: int  # EVENT ring records
    quota: int  # most packets one channel may hold at once

    @property
    def packet_bytes(self) -> int:
        return self.buf_size * self.buflets

    def with_attrs(self, attrs: dict[str, int]) -> Schema:
        """A copy with attributes changed, checked so that nonsense is refused early."""
        known = {f.name for f in fields(self)} - {"name"}
        bad = set(attrs) - known
        if bad:
            raise ValueError(f"unknown schema attributes: {sorted(bad)}")
        for k, v in attrs.items():
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"schema attribute {k} must be an integer")
        changes: dict[str, Any] = attrs  # ints, `name` refused above
        s = replace(self, **changes)
        if "quota" not in attrs and s.quota > s.max_packets:
            s = replace(s, quota=s.max_packets)
        if "max_packets" not in attrs and s.max_packets < s.packets:
            s = replace(s, max_packets=s.packets)
        s.check()
        return s

    def check(self) -> None:
        def pow2(n: int) -> bool:
            return n > 0 and not n & (n - 1)

        if not pow2(self.ring_size) or not 8 <= self.ring_size <= 65536:
            raise ValueError("ring_size must be a power of two from 8 to 65536")
        if not pow2(self.event_ring) or not 8 <= self.event_ring <= 65536:
            raise ValueError("event_ring must be a power of two from 8 to 65536")
        if not 64 <= self.buf_size <= 65536 or self.buf_size % 64:
            raise ValueError("buf_size must be a multiple of 64 from 64 to 65536")
        if not 1 <= self.buflets <= 64:
            raise ValueError("buflets must be from 1 to 64")
        if self.packet_bytes > 1 << 20:
            raise ValueError("a packet may not exceed 1 MiB")
        if not 1 <= self.packets <= self.max_packets <= 1 << 20:
            raise ValueError("need 1 <= packets <= max_packets <= 1048576")
        if self.max_packets * self.packet_bytes > 1 << 30:
            raise ValueError("a pool may not exceed 1 GiB")
        if not 1 <= self.quota <= self.max_packets:
            raise ValueError("quota must be from 1 to max_packets")

    @property
    def alloc_ring(self) -> int:
        return self.ring_size

    @property
    def free_ring(self) -> int:
        """Big enough for every packet of the pool, so honest frees never wait."""
        n = 8
        while n < self.max_packets:
            n <<= 1
        return n


PRESETS: dict[str, Schema] = {
    s.name: s
    for s in (
        Schema("default", ring_size=1024, packets=2048, max_packets=8192, buf_size=2048,
               buflets=1, event_ring=256, quota=8192),
        Schema("bulk", ring_size=1024, packets=1024, max_packets=4096, buf_size=16384,
               buflets=4, event_ring=256, quota=4096),
        Schema("low-latency", ring_size=64, packets=256, max_packets=1024, buf_size=2048,
               buflets=1, event_ring=1024, quota=1024),
    )
}


def resolve(name: str, attrs: dict[str, int] | None = None) -> Schema:
    """A preset by name, tuned by attributes; ValueError for anything unknown."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown schema {name!r}; presets: {sorted(PRESETS)}") from None
    base.check()
    return base.with_attrs(attrs or {})


@dataclass(frozen=True)
class RingInfo:
    kind: RingKind
    role: int
    capacity: int
    offset: int


@dataclass(frozen=True)
class Layout:
    """What the SCHEMA region says: enough for a client to map everything."""

    buf_size: int
    buflets: int
    max_packets: int
    active_packets: int
    shared_size: int
    ro_size: int
    umd_offset: int
    buf_offset: int
    stats_offset: int
    umd_size: int
    generation: int
    rings: tuple[RingInfo, ...]
    flowadv_offset: int = 0
    tcpinfo_offset: int = 0  # the TCPINFO region (usnet.abi.tcpinfo) in the shared memfd; 0: none

    def ring(self, kind: RingKind, role: int) -> RingInfo:
        for r in self.rings:
            if r.kind == kind and r.role == role:
                return r
        raise KeyError((kind, role))

    def write(self, mem: memoryview) -> None:
        HEADER.pack_into(
            mem, 0, MAGIC, ABI_VERSION, len(self.rings), self.buf_size, self.buflets,
            self.max_packets, self.active_packets, self.shared_size, self.ro_size,
            self.umd_offset, self.buf_offset, self.stats_offset, self.umd_size, self.generation,
        )
        _FLOWADV_AT.pack_into(mem, FLOWADV_AT, self.flowadv_offset)
        _TCPINFO_AT.pack_into(mem, TCPINFO_AT, self.tcpinfo_offset)
        for i, r in enumerate(self.rings):
            RING_ENTRY.pack_into(mem, RING_TABLE + i * RING_ENTRY.size, r.kind, r.role, r.capacity, r.offset)

    @classmethod
    def read(cls, mem: memoryview | bytes) -> Layout:
        (magic, abi, nrings, buf_size, buflets, max_packets, active, shared_size, ro_size,
         umd_offset, buf_offset, stats_offset, umd_size, generation) = HEADER.unpack_from(mem, 0)
        if magic != MAGIC:
            raise ValueError(f"not a usnet schema (magic {magic:#x})")
        if abi != ABI_VERSION:
            raise ValueError(f"schema ABI {abi}, this library speaks {ABI_VERSION}")
        if nrings > MAX_RINGS:
            raise ValueError("schema names too many rings")
        rings = []
        for i in range(nrings):
            kind, role, cap, off = RING_ENTRY.unpack_from(mem, RING_TABLE + i * RING_ENTRY.size)
            rings.append(RingInfo(RingKind(kind), role, cap, off))
        (flowadv,) = _FLOWADV_AT.unpack_from(mem, FLOWADV_AT)
        (tcpinfo,) = _TCPINFO_AT.unpack_from(mem, TCPINFO_AT)
        return cls(buf_size, buflets, max_packets, active, shared_size, ro_size, umd_offset,
                   buf_offset, stats_offset, umd_size, generation, tuple(rings), flowadv, tcpinfo)


#: FLOWADV: one record per role, written by the nexus (no sequence lock: independent words).
FLOWADV_FIELDS = Fields(
    "FLOWADV record",
    ("state", "u32"),  # FlowState
    (RESERVED, 4), ("queued_packets", "u64"), ("queued_bytes", "u64"), ("suspensions", "u64"),
)
FLOWADV = FLOWADV_FIELDS.struct()  # state, queued packets, queued bytes, suspensions


class FlowState(enum.IntEnum):
    ACTIVE = 0
    SUSPENDED = 1  # the flow's queue at the netif is full: the switch stops taking from its TX ring


#: STATS: u64 counters per role (nexus-written, client-readable), role r's at `stats_offset + r * size`.
STATS = Fields(
    "STATS (one role)",
    ("allocated", "u64"),  # packets handed out on the ALLOC ring
    ("freed", "u64"),  # packets taken back from the FREE ring
    ("refused", "u64"),  # indices refused on the FREE ring
    ("bad_counter", "u64"),  # impossible ring counters seen
    ("events_dropped", "u64"),  # events lost to a full EVENT ring
    ("held", "u64"),  # packets this channel holds now
    ("quota", "u64"),
    ("rx_offered", "u64"),  # a monitor channel: frames that matched its filter (the rest are not offered)
    ("rx_dropped", "u64"),  # a monitor channel: of those, frames it could not keep (ring or pool full)
    (RESERVED, 56),
)
STATS_PER_ROLE = STATS.size // 8  # u64 words


class Stat(enum.IntEnum):
    """The u64 word index of each STATS counter (the STATS table's fields, by name)."""

    ALLOCATED = STATS.word("allocated", 8)
    FREED = STATS.word("freed", 8)
    REFUSED = STATS.word("refused", 8)
    BAD_COUNTER = STATS.word("bad_counter", 8)
    EVENTS_DROPPED = STATS.word("events_dropped", 8)
    HELD = STATS.word("held", 8)
    QUOTA = STATS.word("quota", 8)
    RX_OFFERED = STATS.word("rx_offered", 8)
    RX_DROPPED = STATS.word("rx_dropped", 8)
