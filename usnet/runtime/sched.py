"""The kernel scheduler's slice for latency-sensitive threads.

On a busy machine the tail of a low-latency flow is not the network: it is
how long a woken thread waits for a CPU. In `usnet bench lowlat` (2 cores,
bulk senders and a sink beside the LL flow) the slowest 1 % of LL datagrams
spent most of their time between the domain ringing the receiver's
doorbell and the receiver running: up to 0.5 ms at p99, and up to 4 ms.

Linux's fair scheduler (EEVDF, 6.6 and later) gives each thread a slice,
1.4 ms here, and a woken thread preempts the running one only if its
virtual deadline (eligible time plus slice) is earlier. Since 6.12 a thread
may ask for its own slice, 0.1 to 100 ms, in `sched_attr.sched_runtime` of
sched_setattr(2) under SCHED_OTHER: no privilege is needed, and the kernel
advice is to ask for what the thread runs per wake-up at a high percentile.
A thread that wakes to move one datagram runs well under 0.1 ms, so it asks
for the shortest, `SHORT_SLICE`; it then preempts the bulk work it wakes
beside, and is preempted sooner itself when it does run long.

Python has no binding for sched_setattr, so this calls it through ctypes,
by syscall number (x86-64 and arm64). Everything else (another
architecture, an older kernel that ignores the field, a real-time policy)
leaves the thread as it was and says so by returning None.
"""

from __future__ import annotations

import ctypes
import platform
import struct

__all__ = ["SHORT_SLICE", "get_slice", "set_slice"]

SHORT_SLICE = 100e-6  # seconds: the shortest slice the kernel grants (it clamps to 0.1-100 ms)

# struct sched_attr (include/uapi/linux/sched/types.h), SCHED_ATTR_SIZE_VER1: size, policy, flags,
# nice, priority, runtime, deadline, period, util_min, util_max.
_ATTR = struct.Struct("=IIQiIQQQII")
_SCHED_OTHER, _SCHED_BATCH = 0, 3
_SYSCALLS = {"x86_64": (314, 315), "aarch64": (274, 275)}  # (sched_setattr, sched_getattr)
_NR = _SYSCALLS.get(platform.machine())
_libc = ctypes.CDLL(None, use_errno=True) if _NR is not None else None


def _getattr(tid: int) -> tuple[int, ...] | None:
    if _libc is None or _NR is None:
        return None
    buf = ctypes.create_string_buffer(_ATTR.size)
    if _libc.syscall(_NR[1], tid, buf, _ATTR.size, 0) != 0:
        return None
    return _ATTR.unpack(buf.raw)


def get_slice(tid: int = 0) -> float | None:
    """The slice (seconds) of thread `tid` (0: the calling thread); None if the kernel has none to tell."""
    attr = _getattr(tid)
    if attr is None or attr[1] not in (_SCHED_OTHER, _SCHED_BATCH) or not attr[5]:
        return None
    return attr[5] / 1e9


def set_slice(seconds: float = SHORT_SLICE, tid: int = 0) -> float | None:
    """Ask the scheduler to give thread `tid` (0: the calling thread) slices of `seconds`.

    Keeps the thread's policy and nice value. Returns the slice the kernel
    now reports (it clamps to 0.1-100 ms), or None where custom slices are
    not available: the thread is then unchanged.
    """
    if not 0 < seconds <= 1:
        raise ValueError(f"a scheduling slice is between 0 and 1 s, not {seconds!r}")
    attr = _getattr(tid)
    if attr is None or _libc is None or _NR is None or attr[1] not in (_SCHED_OTHER, _SCHED_BATCH):
        return None
    want = int(seconds * 1e9)
    new = _ATTR.pack(_ATTR.size, attr[1], 0, attr[3], 0, want, 0, 0, 0, 0)
    if _libc.syscall(_NR[0], tid, ctypes.create_string_buffer(new, _ATTR.size), 0) != 0:
        return None
    return get_slice(tid)  # None on a kernel before 6.12, where the field is not a slice
