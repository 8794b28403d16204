"""memfd creation, sealing and page reclaim: the OS primitives the arenas stand on.

Access rules are enforced by the kernel, not by convention (docs/architecture.md, "Memory"):
a memory a client may only read is sealed with F_SEAL_FUTURE_WRITE after the
nexus has mapped it, so no process can map it writable again; every memfd a
client can reach is sealed against shrinking, so no client can truncate it and
make the nexus fault with SIGBUS.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os

__all__ = [
    "F_ADD_SEALS", "F_GET_SEALS", "F_SEAL_FUTURE_WRITE", "F_SEAL_GROW", "F_SEAL_SEAL", "F_SEAL_SHRINK", "F_SEAL_WRITE",
    "MADV_REMOVE", "NAME_MAX", "PAGE", "add_seals", "allocated_bytes", "create", "get_seals", "memfd_name",
    "page_round", "remove_pages", "seal_readonly", "seal_shared",
]

PAGE = mmap.PAGESIZE

F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
F_SEAL_SEAL = 0x0001
F_SEAL_SHRINK = 0x0002
F_SEAL_GROW = 0x0004
F_SEAL_WRITE = 0x0008
F_SEAL_FUTURE_WRITE = 0x0010

MADV_REMOVE = getattr(mmap, "MADV_REMOVE", 9)


def page_round(n: int) -> int:
    """Round up to a whole number of pages."""
    return (n + PAGE - 1) // PAGE * PAGE


#: The longest memfd name the kernel takes, in bytes (NAME_MAX less its "memfd:" prefix, and the NUL).
NAME_MAX = 249


def memfd_name(name: str) -> str:
    """`name` as a memfd may carry it: if longer than NAME_MAX bytes, its start and a digest of the whole.

    The name only labels the memfd in /proc (what it belongs to); the object it
    belongs to keeps its full name. Cut at a character, so it stays UTF-8.
    """
    raw = name.encode("utf-8", "surrogatepass")
    if len(raw) <= NAME_MAX:
        return name
    tail = "~" + hashlib.blake2s(raw, digest_size=8).hexdigest()
    head = raw[:NAME_MAX - len(tail)].decode("utf-8", "ignore")
    return head + tail


def create(name: str, size: int) -> int:
    """A sparse memfd of `size` bytes: pages cost memory only once touched."""
    fd = os.memfd_create(memfd_name(name), os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    return fd


def add_seals(fd: int, seals: int) -> None:
    fcntl.fcntl(fd, F_ADD_SEALS, seals)


def get_seals(fd: int) -> int:
    return fcntl.fcntl(fd, F_GET_SEALS)


def seal_shared(fd: int) -> None:
    """Seal a client-writable memfd: it may not shrink, and nobody may add seals."""
    add_seals(fd, F_SEAL_SHRINK | F_SEAL_SEAL)


def seal_readonly(fd: int) -> None:
    """Seal a nexus-written, client-read memfd: no new writable mapping or write() ever.

    Must be called after the nexus mapped it writable: F_SEAL_FUTURE_WRITE keeps
    existing writable mappings working and refuses every later one.
    """
    add_seals(fd, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL)


def remove_pages(m: mmap.mmap, offset: int, length: int) -> None:
    """Give the pages behind [offset, offset+length) back to the system.

    MADV_REMOVE on a shared mapping punches a hole in the memfd: every process
    mapping it now reads zeros there, and the memory is freed.
    """
    if length <= 0:
        return
    if offset % PAGE:
        raise ValueError(f"offset {offset} is not page aligned")
    m.madvise(MADV_REMOVE, offset, page_round(length))


def allocated_bytes(fd: int) -> int:
    """Bytes of memory the memfd holds now (512-byte blocks from fstat)."""
    return os.fstat(fd).st_blocks * 512


def available_memory(path: str = "/proc/meminfo") -> int | None:
    """The host's MemAvailable in bytes (the kernel's estimate of what can be had without
    swapping), or None where there is no such line: the domain's memory-pressure signal."""
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None
