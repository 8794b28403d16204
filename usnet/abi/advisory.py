"""The interface advisory (NEXUSADV): a netif's state, for clients to read, under a sequence lock.

docs/architecture.md, "Low latency": the nexus publishes each netif's advisory every few milliseconds
and on change; a client maps it read-only and takes consistent snapshots.
This module is the one place that knows the bytes (docs/abi.md §16). What
goes into a record is decided elsewhere (usnet.domain.netif.estimate, and
usnet.domain.netif.advisory, which samples a netif).

Memory: one page, in a memfd of its own per netif, sealed read-only like a
channel's read-only memfd (usnet.abi.memfd.seal_readonly). Little-endian.

Header (`ADV_HEADER`, 64 bytes), at offset 0, written once before the memfd
is sealed: magic 0x56444155 (bytes "UADV"), version 1, records 2 (one per
direction), record_size 128, records_offset 64.

Record `d` (Direction: 0 TX, 1 RX; `ADV_RECORD`, 128 bytes) at
``records_offset + d * record_size``: `seq` (the sequence lock: odd while the
nexus writes the record), then the fields of `Record`, in its order:
direction; trend (Trend: 0 HOLD, 1 UP, 2 DOWN, the rate-trend suggestion);
flags (bit 0 PACED: max_bandwidth is the netif's link rate, bit 1 GONE: the
netif was removed, no more updates, bit 2 IDLE: nothing moves, no update until
something does); timestamp_ns (CLOCK_MONOTONIC when the record was computed);
max_bandwidth (bits/s, 0 if unknown); throughput (bits/s, EWMA over the recent
past); bytes and packets (Ethernet frames since the netif was added); the
transmit queues of the low-latency and general classes (packets, bytes);
queue_delay_ns (Little's law); target_delay_ns (what the trend is judged
against); ll_slot_use_ppm (the share of LL slots the LL class used).

The sequence lock, as Linux's seqcount: the writer makes `seq` odd, writes
the fields, then makes `seq` even (two more than before). A reader loads
`seq`, copies the fields, loads `seq` again, and keeps the copy only if both
loads were equal and even; otherwise the writer was at work and it tries
again. The two records are always written together in one pass, so their
`seq` values are equal after each publication and a pair with equal `seq` is
from one publication. The nexus is the only writer, and a single thread.

Ordering: on x86-64 (the only platform, docs/abi.md §12) stores and loads
keep program order, so the plain stores and loads are enough; `fence()`
marks the four places where a weakly ordered port would need a store-store
(writer) or load-load (reader) barrier, and costs two uncontended atomic
operations each, a few times per publication.
"""

from __future__ import annotations

import builtins
import enum
import errno
import itertools
import mmap
import os
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from usnet.abi import memfd
from usnet.abi.layout import RESERVED, Fields
from usnet.abi.ring import fence

__all__ = [
    "ADV_HEADER", "ADV_RECORD", "BODY", "FLAG_GONE", "FLAG_IDLE", "FLAG_PACED", "HEADER", "MAGIC", "RECORDS",
    "RECORDS_OFFSET", "RECORD_SIZE", "SEQ_SIZE", "SIZE", "TRIES", "U64_MAX", "VERSION", "Advisory", "AdvisoryBusy",
    "AdvisoryFormatError", "AdvisoryReader", "AdvisoryWriter", "Direction", "Record", "Trend", "read_record",
    "read_steps", "record_offset", "write_steps",
]

MAGIC = 0x56444155  # b"UADV" read as a little-endian u32
VERSION = 1
ADV_HEADER = Fields(
    "advisory header",
    ("magic", "u32"), ("version", "u16"), ("records", "u16"), ("record_size", "u32"),
    ("records_offset", "u32"), (RESERVED, 48),
)
ADV_RECORD = Fields(
    "advisory record",
    ("seq", "u64"), ("direction", "u16"), ("trend", "u16"), ("flags", "u32"), ("timestamp_ns", "u64"),
    ("max_bandwidth", "u64"), ("throughput", "u64"), ("bytes", "u64"), ("packets", "u64"),
    ("ll_queued_packets", "u64"), ("ll_queued_bytes", "u64"), ("general_queued_packets", "u64"),
    ("general_queued_bytes", "u64"), ("queue_delay_ns", "u64"), ("target_delay_ns", "u64"),
    ("ll_slot_use_ppm", "u32"), (RESERVED, 20),
)
HEADER = ADV_HEADER.struct()  # magic, version, records, record_size, records_offset
RECORDS_OFFSET = ADV_HEADER.size
#: The fields after `seq`, in the order of `Record` (whose fields are these names).
BODY = ADV_RECORD.struct("direction")
SEQ_SIZE = ADV_RECORD.offset("direction")
_SEQ = ADV_RECORD.word("seq", 8)  # in a record viewed as 'Q'
RECORD_SIZE = ADV_RECORD.size  # 128
RECORDS = 2
SIZE = RECORDS_OFFSET + RECORDS * RECORD_SIZE  # bytes in use; the memfd is one page
#: Attempts a reader makes before it gives up on a record the writer keeps changing.
TRIES = 10_000
_SPIN = 64  # attempts before the reader starts yielding the CPU between attempts

FLAG_PACED = 1
FLAG_GONE = 2
FLAG_IDLE = 4
U64_MAX = (1 << 64) - 1


class Direction(enum.IntEnum):
    TX = 0
    RX = 1


class Trend(enum.IntEnum):
    """The rate-trend suggestion: what a sender on this netif should do with its rate."""

    HOLD = 0
    UP = 1
    DOWN = 2


class AdvisoryBusy(OSError):
    """The writer kept a record odd or changing for every try: it stopped mid-update, or is stuck."""

    def __init__(self, direction: int, tries: int, seq: int) -> None:
        super().__init__(errno.EBUSY, f"advisory record {_name(Direction, direction)} was being written "
                                      f"at each of {tries} tries (last seq {seq}): its writer stopped "
                                      f"mid-update or is stuck")


class AdvisoryFormatError(ValueError):
    """The memory is not an interface advisory this code can read."""


class Record(NamedTuple):
    """One direction of one netif's advisory, as one publication left it (see the module docstring).

    A named tuple, its items the body's fields in order: usnetd builds two a publication on every
    active netif every few milliseconds, and a frozen dataclass's 15 guarded stores cost ten times
    a tuple's (issue 16, usnetd's fixed cost per turn); `pack_into` packs the tuple as it is."""

    direction: Direction | int
    trend: Trend | int
    flags: int
    timestamp_ns: int
    max_bandwidth: int
    throughput: int
    bytes: int
    packets: int
    ll_queued_packets: int
    ll_queued_bytes: int
    general_queued_packets: int
    general_queued_bytes: int
    queue_delay_ns: int
    target_delay_ns: int
    ll_slot_use_ppm: int

    @property
    def paced(self) -> bool:
        return bool(self.flags & FLAG_PACED)

    @property
    def gone(self) -> bool:
        return bool(self.flags & FLAG_GONE)

    @property
    def idle(self) -> bool:
        return bool(self.flags & FLAG_IDLE)

    def pack_into(self, buf: Any, offset: int) -> None:
        BODY.pack_into(buf, offset, *self)

    @classmethod
    def unpack(cls, data: builtins.bytes) -> Record:  # `bytes` here is the field
        values = list(BODY.unpack(data))
        values[0] = _enum(Direction, values[0])
        values[1] = _enum(Trend, values[1])
        return cls(*values)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON: the enums by name."""
        d = self._asdict()
        d["direction"] = _name(Direction, self.direction)
        d["trend"] = _name(Trend, self.trend)
        d["paced"], d["gone"], d["idle"] = self.paced, self.gone, self.idle
        return d


_FIELDS = Record._fields
if ADV_RECORD.names()[1:] != _FIELDS:  # Record is the table's fields after seq, by name and in order
    raise ImportError("advisory Record does not match ADV_RECORD")


@dataclass(frozen=True, slots=True)
class Advisory:
    """Both directions of one netif from one publication (`seq` is the records' common sequence)."""

    netif: str
    seq: int
    tx: Record
    rx: Record

    def as_dict(self) -> dict[str, Any]:
        return {"netif": self.netif, "seq": self.seq, "tx": self.tx.as_dict(), "rx": self.rx.as_dict()}


def _enum(kind: type[enum.IntEnum], v: int) -> Any:
    try:
        return kind(v)
    except ValueError:
        return v  # a newer writer's value: kept as a number


def _name(kind: type[enum.IntEnum], v: int) -> str:
    try:
        return kind(v).name
    except ValueError:
        return str(v)


def record_offset(direction: int) -> int:
    return RECORDS_OFFSET + direction * RECORD_SIZE


def _pieces(start: int, end: int, cuts: Iterable[int]) -> list[tuple[int, int]]:
    """[start, end) split at the cut points (relative to start) that fall inside it."""
    points = sorted({start + c for c in cuts if 0 < c < end - start})
    bounds = [start, *points, end]
    return list(itertools.pairwise(bounds))


# -- the sequence lock, step by step (the tests interleave the steps) ---------------------------


def write_steps(mem: memoryview, words: memoryview, direction: int, seq: int, rec: Record,
                cuts: Iterable[int] = ()) -> Generator[None, None, None]:
    """Publish `rec` as record `direction`, whose seq is now `seq` (even); yields between stores.

    The body is stored in pieces split at `cuts` (bytes into the body), as a
    copy another CPU watches may land. Leaves the seq at `seq + 2`.
    """
    off = record_offset(direction)
    w = off // 8 + _SEQ
    base = off + SEQ_SIZE
    words[w] = seq + 1  # odd: readers keep off
    fence()
    yield
    if not cuts:  # the domain's publication: one store of the body, packed in place
        rec.pack_into(mem, base)
        yield
    else:
        body = bytearray(BODY.size)
        rec.pack_into(body, 0)
        for a, b in _pieces(base, base + BODY.size, cuts):
            mem[a:b] = body[a - base : b - base]
            yield
    fence()
    words[w] = seq + 2


def read_steps(mem: memoryview, words: memoryview, direction: int,
               cuts: Iterable[int] = ()) -> Generator[None, None, tuple[int, Record | None]]:
    """One attempt to read record `direction`; yields between loads.

    Returns (seq seen first, the record) if the copy is consistent, else
    (that seq, None): the writer was at work, try again.
    """
    off = record_offset(direction)
    w = off // 8 + _SEQ
    s1 = words[w]
    fence()
    yield
    if s1 & 1:
        return s1, None
    base = off + SEQ_SIZE
    parts = []
    for a, b in _pieces(base, base + BODY.size, cuts):
        parts.append(bytes(mem[a:b]))
        yield
    fence()
    if words[w] != s1:
        return s1, None
    return s1, Record.unpack(b"".join(parts))


def _run(steps: Generator[None, None, Any]) -> Any:
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def read_record(mem: memoryview, words: memoryview, direction: int, tries: int = TRIES) -> tuple[int, Record]:
    """(seq, record) of a consistent copy of record `direction`; AdvisoryBusy after `tries` attempts."""
    if tries < 1:
        raise ValueError(f"tries must be at least 1, not {tries}")
    seq = 0
    for i in range(tries):
        seq, rec = _run(read_steps(mem, words, direction))
        if rec is not None:
            return seq, rec
        if i >= _SPIN:
            os.sched_yield()  # a writer preempted mid-update needs the CPU to finish
    raise AdvisoryBusy(direction, tries, seq)


# -- the two ends ------------------------------------------------------------------------------------


def _check_header(mem: memoryview) -> None:
    if len(mem) < SIZE:
        raise AdvisoryFormatError(f"an interface advisory needs {SIZE} bytes, not {len(mem)}")
    magic, version, records, rsize, roff = HEADER.unpack_from(mem, 0)
    if magic != MAGIC:
        raise AdvisoryFormatError(f"not an interface advisory (magic {magic:#010x})")
    if version != VERSION:
        raise AdvisoryFormatError(f"interface advisory version {version}; this code reads {VERSION}")
    if (records, rsize, roff) != (RECORDS, RECORD_SIZE, RECORDS_OFFSET):
        raise AdvisoryFormatError(f"unexpected advisory geometry: {records} records of {rsize} bytes at {roff}")


class _Mapped:
    """What both ends hold: views of the advisory memory and, if they mapped it, the mapping."""

    mem: memoryview
    words: memoryview
    _map: mmap.mmap | None

    def _unmap(self) -> None:
        """Release the views, then the mapping (a mapping with live views cannot close)."""
        self.words.release()
        self.mem.release()
        if self._map is not None:
            self._map.close()
            self._map = None


class AdvisoryWriter(_Mapped):
    """The nexus end: the header, then publications of both records under their sequence locks.

    Over any writable buffer of at least SIZE bytes; `AdvisoryWriter.memfd`
    makes the sealed memfd a netif's advisory lives in.
    """

    def __init__(self, buf: Any) -> None:
        self.mem = memoryview(buf)
        if len(self.mem) < SIZE:
            raise ValueError(f"an interface advisory needs {SIZE} bytes, not {len(self.mem)}")
        self.words = self.mem[:SIZE].cast("Q")
        HEADER.pack_into(self.mem, 0, MAGIC, VERSION, RECORDS, RECORD_SIZE, RECORDS_OFFSET)
        self.seq = 0  # both records' seq: even between publications
        self.fd: int | None = None
        self._map: mmap.mmap | None = None

    @classmethod
    def memfd(cls, name: str) -> AdvisoryWriter:
        """A one-page memfd, mapped here read-write, then sealed so nobody else can ever write it."""
        fd = memfd.create(f"usnet:nexusadv:{name}", memfd.page_round(SIZE))
        try:
            m = mmap.mmap(fd, memfd.page_round(SIZE), mmap.MAP_SHARED)
            w = cls(m)
            memfd.seal_readonly(fd)
        except BaseException:
            os.close(fd)
            raise
        w.fd, w._map = fd, m
        return w

    def publish(self, tx: Record, rx: Record) -> int:
        """Write both records (TX, then RX); returns their new, common seq."""
        mem, words, seq = self.mem, self.words, self.seq
        for _ in write_steps(mem, words, Direction.TX, seq, tx):
            pass
        for _ in write_steps(mem, words, Direction.RX, seq, rx):
            pass
        self.seq += 2
        return self.seq

    def close(self) -> None:
        """Unmap and close the memfd; readers that mapped it keep their mapping."""
        self._unmap()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class AdvisoryReader(_Mapped):
    """The client end: consistent snapshots of a netif's advisory, from read-only memory.

    `AdvisoryReader.from_fd` maps the memfd the domain hands over (`OpenAdvisory`)
    PROT_READ; the constructor takes any buffer (the tests use a bytearray).
    """

    def __init__(self, buf: Any, netif: str = "") -> None:
        self.netif = netif
        self.mem = memoryview(buf)
        _check_header(self.mem)
        self.words = self.mem[:SIZE].cast("Q")
        self._map: mmap.mmap | None = None

    @classmethod
    def from_fd(cls, fd: int, netif: str = "") -> AdvisoryReader:
        """Map an advisory memfd read-only (the fd stays the caller's to close)."""
        size = os.fstat(fd).st_size
        if size < SIZE:
            raise AdvisoryFormatError(f"an interface advisory needs {SIZE} bytes, the memfd has {size}")
        m = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        try:
            r = cls(m, netif)
        except BaseException:
            m.close()
            raise
        r._map = m
        return r

    def read(self, direction: Direction | int, tries: int = TRIES) -> tuple[int, Record]:
        """(seq, record) of one direction, consistent; AdvisoryBusy after `tries` attempts."""
        return read_record(self.mem, self.words, Direction(direction), tries)

    def snapshot(self, tries: int = TRIES) -> Advisory:
        """Both directions from one publication; AdvisoryBusy after `tries` attempts."""
        seq = 0
        for _ in range(tries):
            seq, tx = self.read(Direction.TX, tries)
            seq_rx, rx = self.read(Direction.RX, tries)
            if seq == seq_rx:
                return Advisory(self.netif, seq, tx, rx)
        raise AdvisoryBusy(Direction.RX, tries, seq)

    def close(self) -> None:
        self._unmap()

    def __enter__(self) -> AdvisoryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
