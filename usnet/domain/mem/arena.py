"""Arenas: the memory of one channel group, as page-aligned regions in two memfds.

An arena splits its regions by who may write them (docs/architecture.md, "Memory"):

* the *shared* memfd holds what a client writes: RING, UMD, BUF;
* the *read-only* memfd holds what only the nexus writes: SCHEMA, FLOWADV,
  NEXUSADV, STATS. The nexus maps it, then seals it with F_SEAL_FUTURE_WRITE;
* KMD (kernel metadata, such as the packet owner table) is never placed in a
  memfd at all: it lives in the nexus process's private memory.

Regions are arrays of fixed-size objects grouped in segments of whole pages.
The memfds are sized for each region's maximum and are sparse, so a region
grows by touching its next segment and shrinks by purging an all-free segment
with MADV_REMOVE, which really returns the pages (see `allocated_bytes`).
"""

from __future__ import annotations

import enum
import logging
import mmap
import os
from dataclasses import dataclass

from usnet.abi import memfd

__all__ = ["READ_ONLY_KINDS", "Arena", "Region", "RegionKind", "RegionSpec"]

log = logging.getLogger("usnet.domain")


class RegionKind(enum.IntEnum):
    SCHEMA = 1
    RING = 2
    BUF = 3
    UMD = 4
    KMD = 5
    FLOWADV = 6
    NEXUSADV = 7
    STATS = 8
    TCPINFO = 9  # shared memfd: each TCP connection's statistics, client-written (usnet.abi.tcpinfo)


READ_ONLY_KINDS = frozenset(
    {RegionKind.SCHEMA, RegionKind.FLOWADV, RegionKind.NEXUSADV, RegionKind.STATS}
)


@dataclass(frozen=True)
class RegionSpec:
    kind: RegionKind
    obj_size: int
    obj_count: int
    objs_per_segment: int = 0  # 0: the whole region is one segment


@dataclass(frozen=True)
class Region:
    kind: RegionKind
    offset: int  # within its memfd (page aligned)
    obj_size: int
    obj_count: int
    segment_bytes: int  # whole pages
    objs_per_segment: int

    @property
    def size(self) -> int:
        return memfd.page_round(self.obj_size * self.obj_count)

    @property
    def segments(self) -> int:
        return -(-self.obj_count // self.objs_per_segment)

    def segment_span(self, seg: int) -> tuple[int, int]:
        """(offset, length) of segment `seg` within the region's memfd."""
        start = self.offset + seg * self.segment_bytes
        end = min(start + self.segment_bytes, self.offset + self.size)
        return start, end - start


def _segment_objs(obj_size: int, want: int, count: int) -> int:
    """Objects per segment: at least `want`, and a segment ends on a page boundary."""
    if want <= 0:
        return count
    per = want
    while (per * obj_size) % memfd.PAGE and per < count:
        per += 1
    return min(per, count)


class Arena:
    """Two memfds with their regions, as the nexus maps them (read-write)."""

    def __init__(self, name: str, specs: list[RegionSpec]) -> None:
        self.name = name
        self.regions: dict[RegionKind, Region] = {}
        cursor = {False: 0, True: 0}
        for spec in specs:
            if spec.kind is RegionKind.KMD:
                raise ValueError("KMD is private to the nexus and never lives in an arena memfd")
            ro = spec.kind in READ_ONLY_KINDS
            per = _segment_objs(spec.obj_size, spec.objs_per_segment, spec.obj_count)
            region = Region(
                kind=spec.kind,
                offset=cursor[ro],
                obj_size=spec.obj_size,
                obj_count=spec.obj_count,
                segment_bytes=memfd.page_round(per * spec.obj_size),
                objs_per_segment=per,
            )
            self.regions[spec.kind] = region
            cursor[ro] += region.size
        self.shared_size = max(cursor[False], memfd.PAGE)
        self.ro_size = max(cursor[True], memfd.PAGE)
        made: list = []  # what exists so far: released in reverse if a later step fails (EMFILE, ENOMEM)
        try:
            self.shared_fd = memfd.create(f"usnet:{name}:shared", self.shared_size)
            made.append(self.shared_fd)
            self.ro_fd = memfd.create(f"usnet:{name}:ro", self.ro_size)
            made.append(self.ro_fd)
            self.shared = mmap.mmap(self.shared_fd, self.shared_size, mmap.MAP_SHARED)
            made.append(self.shared)
            self.ro = mmap.mmap(self.ro_fd, self.ro_size, mmap.MAP_SHARED)
            made.append(self.ro)
            memfd.seal_shared(self.shared_fd)
            memfd.seal_readonly(self.ro_fd)
        except BaseException:
            for thing in reversed(made):
                thing.close() if isinstance(thing, mmap.mmap) else os.close(thing)
            raise
        self.closed = False
        self.lingering = False  # closed while a view still existed: the unmap waits for that view

    def region(self, kind: RegionKind) -> Region:
        return self.regions[kind]

    def view(self, kind: RegionKind) -> memoryview:
        """The nexus's writable view of one region."""
        r = self.regions[kind]
        m = self.ro if kind in READ_ONLY_KINDS else self.shared
        return memoryview(m)[r.offset : r.offset + r.size]

    def purge_segment(self, kind: RegionKind, seg: int) -> None:
        """Return one segment's pages to the system; it reads as zeros after."""
        r = self.regions[kind]
        if kind in READ_ONLY_KINDS:
            raise ValueError("read-only regions are not purged")
        off, length = r.segment_span(seg)
        memfd.remove_pages(self.shared, off, length)

    def defunct(self) -> None:
        """Redirect every client-writable page to zero pages, for every process mapping it."""
        memfd.remove_pages(self.shared, 0, self.shared_size)

    def allocated_bytes(self) -> int:
        return memfd.allocated_bytes(self.shared_fd) + memfd.allocated_bytes(self.ro_fd)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for m in (self.shared, self.ro):
            try:
                m.close()
            except BufferError:  # a view its owner did not release: the mapping goes when that view does
                self.lingering = True
                log.warning("arena %s: a view of its memory outlives it; unmapped only when that view goes",
                            self.name)
        os.close(self.shared_fd)
        os.close(self.ro_fd)
