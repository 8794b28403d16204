"""Arenas and memfd helpers (docs/architecture.md, "Memory"): OS-enforced access, seals, purge, defunct.

Every check here is one the kernel performs, so each test asserts that an
operation a client could try actually fails (or that memory really goes back
to the system), not that the library says so.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os

import pytest

from usnet.abi import memfd
from usnet.domain.mem.arena import READ_ONLY_KINDS, Arena, RegionKind, RegionSpec

PAGE = mmap.PAGESIZE
PACKET_BYTES = 2048
PACKETS = 64
PER_SEGMENT = 16  # 16 * 2048 = 32 KiB: 8 pages per segment


def _specs() -> list[RegionSpec]:
    return [
        RegionSpec(RegionKind.RING, 1, 2 * PAGE),
        RegionSpec(RegionKind.UMD, 16, PACKETS),
        RegionSpec(RegionKind.BUF, PACKET_BYTES, PACKETS, objs_per_segment=PER_SEGMENT),
        RegionSpec(RegionKind.SCHEMA, 1, 512),
        RegionSpec(RegionKind.STATS, 128, 2),
    ]


@pytest.fixture
def arena():
    a = Arena("test-mem", _specs())
    try:
        yield a
    finally:
        a.close()


def _touch(m: mmap.mmap, off: int, length: int, byte: int = 0xA5) -> None:
    """Write every byte of [off, off+length) so each page is really allocated."""
    m[off : off + length] = bytes([byte]) * length


# -- layout -----------------------------------------------------------------------


def test_regions_are_page_aligned_and_split_by_writer(arena):
    for kind, r in arena.regions.items():
        assert r.offset % PAGE == 0, kind
        assert r.segment_bytes % PAGE == 0, kind
    shared = sorted((r.offset, r.offset + r.size) for k, r in arena.regions.items() if k not in READ_ONLY_KINDS)
    ro = sorted((r.offset, r.offset + r.size) for k, r in arena.regions.items() if k in READ_ONLY_KINDS)
    for spans, size in ((shared, arena.shared_size), (ro, arena.ro_size)):
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert end <= start, "regions overlap"
        assert spans[-1][1] <= size
    buf = arena.region(RegionKind.BUF)
    assert buf.objs_per_segment == PER_SEGMENT
    assert buf.segments == PACKETS // PER_SEGMENT
    assert os.fstat(arena.shared_fd).st_size == arena.shared_size
    assert os.fstat(arena.ro_fd).st_size == arena.ro_size


def test_view_of_read_only_region_writes_the_ro_memfd(arena):
    v = arena.view(RegionKind.STATS)
    v[:4] = b"\x01\x02\x03\x04"
    off = arena.region(RegionKind.STATS).offset
    assert os.pread(arena.ro_fd, 4, off) == b"\x01\x02\x03\x04"
    v.release()


def test_segment_objs_end_on_page_boundary():
    # 3000-byte objects: a segment of "at least 2" objects must end on a page
    a = Arena("odd", [RegionSpec(RegionKind.BUF, 3000, 100, objs_per_segment=2)])
    try:
        r = a.region(RegionKind.BUF)
        assert r.objs_per_segment >= 2
        assert (r.objs_per_segment * 3000) % PAGE == 0 or r.objs_per_segment == 100
        # segments tile the region without gaps or overlap
        spans = [r.segment_span(s) for s in range(r.segments)]
        assert spans[0][0] == r.offset
        for (o1, l1), (o2, _) in zip(spans, spans[1:]):
            assert o1 + l1 == o2
        assert spans[-1][0] + spans[-1][1] == r.offset + r.size
    finally:
        a.close()


def test_kmd_region_is_refused():
    with pytest.raises(ValueError):
        Arena("kmd", [RegionSpec(RegionKind.BUF, 2048, 4), RegionSpec(RegionKind.KMD, 8, 4)])


# -- the read-only memfd ------------------------------------------------------------


def test_ro_memfd_cannot_be_mapped_writable(arena):
    with pytest.raises(OSError) as ei:
        mmap.mmap(arena.ro_fd, arena.ro_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    assert ei.value.errno == errno.EPERM


def test_ro_memfd_reopened_read_write_cannot_write(arena):
    path = f"/proc/self/fd/{arena.ro_fd}"
    try:
        fd = os.open(path, os.O_RDWR)
    except PermissionError:
        return  # refused at open: also fine
    try:
        with pytest.raises(OSError) as ei:
            os.write(fd, b"owned")
        assert ei.value.errno == errno.EPERM
        with pytest.raises(OSError):
            mmap.mmap(fd, arena.ro_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    assert os.pread(arena.ro_fd, 5, 0) != b"owned"


def test_ro_memfd_write_and_pwrite_fail(arena):
    with pytest.raises(OSError) as ei:
        os.write(arena.ro_fd, b"x")
    assert ei.value.errno == errno.EPERM
    with pytest.raises(OSError) as ei:
        os.pwrite(arena.ro_fd, b"x", 0)
    assert ei.value.errno == errno.EPERM


def test_ro_memfd_read_mapping_sees_nexus_writes(arena):
    m = mmap.mmap(arena.ro_fd, arena.ro_size, mmap.MAP_SHARED, mmap.PROT_READ)
    try:
        off = arena.region(RegionKind.SCHEMA).offset
        assert m[off : off + 8] == bytes(8)
        arena.ro[off : off + 8] = b"USNT\x01\x00\x02\x00"
        assert m[off : off + 8] == b"USNT\x01\x00\x02\x00"
        arena.ro[off : off + 8] = b"changed!"
        assert m[off : off + 8] == b"changed!"
        with pytest.raises(TypeError):
            m[off] = 0  # the mapping itself is read-only
    finally:
        m.close()


def test_ro_read_mapping_cannot_be_mprotected_writable(arena):
    """A PROT_READ mapping may not later be upgraded with mprotect (VM_MAYWRITE is gone)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    addr = libc.mmap(None, arena.ro_size, mmap.PROT_READ, mmap.MAP_SHARED, arena.ro_fd, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value)
    try:
        rc = libc.mprotect(addr, arena.ro_size, mmap.PROT_READ | mmap.PROT_WRITE)
        assert rc == -1
        assert ctypes.get_errno() in (errno.EACCES, errno.EPERM)
    finally:
        libc.munmap(addr, arena.ro_size)


def test_ro_memfd_seals_cannot_be_removed_or_extended(arena):
    seals = memfd.get_seals(arena.ro_fd)
    assert seals & memfd.F_SEAL_FUTURE_WRITE
    assert seals & memfd.F_SEAL_SEAL
    with pytest.raises(PermissionError):
        memfd.add_seals(arena.ro_fd, memfd.F_SEAL_WRITE)
    with pytest.raises(PermissionError):
        os.ftruncate(arena.ro_fd, arena.ro_size + PAGE)  # F_SEAL_GROW


# -- shrink seal on both memfds ------------------------------------------------------


@pytest.mark.parametrize("which", ["shared_fd", "ro_fd"])
def test_both_memfds_sealed_against_shrinking(arena, which):
    fd = getattr(arena, which)
    assert memfd.get_seals(fd) & memfd.F_SEAL_SHRINK
    size = os.fstat(fd).st_size
    with pytest.raises(PermissionError):
        os.ftruncate(fd, size - PAGE)
    with pytest.raises(PermissionError):
        os.ftruncate(fd, 0)
    assert os.fstat(fd).st_size == size
    # a client reopening the memfd gets no further
    fd2 = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            os.ftruncate(fd2, 0)
    finally:
        os.close(fd2)


def test_shared_memfd_may_grow_and_is_sealed_against_new_seals(arena):
    seals = memfd.get_seals(arena.shared_fd)
    assert not seals & memfd.F_SEAL_GROW
    assert not seals & (memfd.F_SEAL_WRITE | memfd.F_SEAL_FUTURE_WRITE)
    assert seals & memfd.F_SEAL_SEAL
    # a client may not add seals of its own (say F_SEAL_WRITE, to break the nexus)
    with pytest.raises(PermissionError):
        memfd.add_seals(arena.shared_fd, memfd.F_SEAL_WRITE)
    os.ftruncate(arena.shared_fd, arena.shared_size + 4 * PAGE)
    assert os.fstat(arena.shared_fd).st_size == arena.shared_size + 4 * PAGE
    # the existing mapping still works
    arena.shared[0:3] = b"abc"
    assert os.pread(arena.shared_fd, 3, 0) == b"abc"


def test_shared_memfd_writable_by_client_mapping(arena):
    m = mmap.mmap(arena.shared_fd, arena.shared_size, mmap.MAP_SHARED)
    try:
        off = arena.region(RegionKind.UMD).offset
        m[off : off + 4] = b"\x10\x00\x00\x00"
        assert arena.shared[off : off + 4] == b"\x10\x00\x00\x00"
    finally:
        m.close()


# -- purge -------------------------------------------------------------------------


def test_fresh_arena_is_sparse(arena):
    assert arena.allocated_bytes() <= arena.ro_size + PAGE  # nothing touched in the shared memfd
    assert memfd.allocated_bytes(arena.shared_fd) == 0


def test_purge_segment_gives_pages_back_and_reads_zero(arena):
    buf = arena.region(RegionKind.BUF)
    seg = 1
    off, length = buf.segment_span(seg)
    assert length == PER_SEGMENT * PACKET_BYTES
    # an independent mapping of the same memfd (through a fresh open file, as another process would)
    fd2 = os.open(f"/proc/self/fd/{arena.shared_fd}", os.O_RDWR)
    other = mmap.mmap(fd2, arena.shared_size, mmap.MAP_SHARED)
    try:
        before = os.fstat(arena.shared_fd).st_blocks
        before_bytes = arena.allocated_bytes()
        _touch(arena.shared, off, length)
        # and a neighbour segment that must survive the purge
        n_off, n_len = buf.segment_span(seg + 1)
        _touch(arena.shared, n_off, n_len, 0x5A)
        touched = os.fstat(arena.shared_fd).st_blocks
        assert touched * 512 >= before * 512 + length + n_len
        assert arena.allocated_bytes() >= before_bytes + length + n_len
        assert other[off : off + length] == b"\xa5" * length

        arena.purge_segment(RegionKind.BUF, seg)

        after = os.fstat(arena.shared_fd).st_blocks
        assert (touched - after) * 512 >= length
        assert arena.allocated_bytes() < before_bytes + length + n_len
        assert arena.shared[off : off + length] == bytes(length)
        assert other[off : off + length] == bytes(length)
        assert os.pread(fd2, length, off) == bytes(length)
        # only that segment went
        assert other[n_off : n_off + n_len] == b"\x5a" * n_len
    finally:
        other.close()
        os.close(fd2)


def test_purge_then_reuse_allocates_again(arena):
    off, length = arena.region(RegionKind.BUF).segment_span(0)
    _touch(arena.shared, off, length)
    arena.purge_segment(RegionKind.BUF, 0)
    low = os.fstat(arena.shared_fd).st_blocks
    _touch(arena.shared, off, length, 0x11)
    assert os.fstat(arena.shared_fd).st_blocks * 512 >= low * 512 + length
    assert arena.shared[off : off + length] == b"\x11" * length


def test_purge_of_read_only_region_is_refused(arena):
    with pytest.raises(ValueError):
        arena.purge_segment(RegionKind.STATS, 0)


def test_purge_seen_by_another_process(arena):
    """A child process maps the memfd itself; after the parent purges, it reads zeros."""
    off, length = arena.region(RegionKind.BUF).segment_span(2)
    _touch(arena.shared, off, length)
    r, w = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(r)
            os.close(w2)
            m = mmap.mmap(arena.shared_fd, arena.shared_size, mmap.MAP_SHARED)
            ok1 = m[off : off + length] == b"\xa5" * length
            os.write(w, b"1" if ok1 else b"0")
            os.read(r2, 1)  # parent purged
            ok2 = m[off : off + length] == bytes(length)
            code = 0 if ok1 and ok2 else 3
        finally:
            os._exit(code)
    os.close(w)
    os.close(r2)
    try:
        assert os.read(r, 1) == b"1"
        arena.purge_segment(RegionKind.BUF, 2)
        os.write(w2, b"g")
    finally:
        os.close(r)
        os.close(w2)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"child killed by signal {os.WTERMSIG(status)}"
    assert os.WEXITSTATUS(status) == 0


def test_remove_pages_checks_alignment(arena):
    with pytest.raises(ValueError):
        memfd.remove_pages(arena.shared, 1, PAGE)
    memfd.remove_pages(arena.shared, 0, 0)  # nothing to do, no error


# -- defunct -----------------------------------------------------------------------


def test_defunct_zeroes_every_mapping_without_sigbus(arena):
    size = arena.shared_size
    pattern = bytes(range(256)) * (size // 256)
    arena.shared[:size] = pattern
    second = mmap.mmap(arena.shared_fd, size, mmap.MAP_SHARED)
    try:
        assert second[:size] == pattern
        blocks = os.fstat(arena.shared_fd).st_blocks
        assert blocks * 512 >= size

        arena.defunct()

        # measured before reading: a read fault on a shmem hole allocates a page again
        assert os.fstat(arena.shared_fd).st_blocks == 0 < blocks
        assert second[:size] == bytes(size)  # would SIGBUS if the file had been truncated
        assert arena.shared[:size] == bytes(size)
        assert os.fstat(arena.shared_fd).st_size == size
        # still ordinary memory: a late writer does not fault either
        second[0:4] = b"late"
        assert arena.shared[0:4] == b"late"
    finally:
        second.close()


def test_defunct_seen_by_another_process_without_sigbus(arena):
    size = arena.shared_size
    arena.shared[:size] = b"\x7f" * size
    r, w = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(r)
            os.close(w2)
            m = mmap.mmap(arena.shared_fd, size, mmap.MAP_SHARED)
            os.write(w, b"1" if m[:size] == b"\x7f" * size else b"0")
            os.read(r2, 1)
            # touch every page: a truncated file would kill us with SIGBUS here
            code = 0 if m[:size] == bytes(size) else 3
        finally:
            os._exit(code)
    os.close(w)
    os.close(r2)
    try:
        assert os.read(r, 1) == b"1"
        arena.defunct()
        os.write(w2, b"g")
    finally:
        os.close(r)
        os.close(w2)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), f"child killed by signal {os.WTERMSIG(status)}"
    assert os.WEXITSTATUS(status) == 0


def test_defunct_leaves_read_only_memfd_alone(arena):
    off = arena.region(RegionKind.SCHEMA).offset
    arena.ro[off : off + 4] = b"keep"
    arena.defunct()
    assert arena.ro[off : off + 4] == b"keep"


# -- close ---------------------------------------------------------------------------


def test_close_is_idempotent_and_closes_fds():
    a = Arena("closing", _specs())
    fds = (a.shared_fd, a.ro_fd)
    a.close()
    a.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_close_with_live_view_does_not_raise():
    a = Arena("viewed", _specs())
    fds = (a.shared_fd, a.ro_fd)
    v = a.view(RegionKind.BUF)
    a.close()
    assert a.closed
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    v[0] = 1  # the mapping lives as long as the view
    assert v[0] == 1
    v.release()
