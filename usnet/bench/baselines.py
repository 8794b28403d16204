"""The alternatives ``usnet bench pipe`` is measured against.

A usnet user pipe moves messages between processes through shared memory. To
show whether that is worth having, the benchmark also measures the ordinary
ways to do the same job in Python, implemented exactly as the issue describes
so the comparison is fair in both directions:

* the sender passes a prepared ``bytes`` payload to ``send``/``put`` (no
  per-message building of the payload);
* the receiver gets each message into memory it can read and touches its
  first and last byte (for sockets, ``recv_into`` a preallocated buffer, so
  the receiver allocates nothing per message; ``multiprocessing.Queue`` has no
  such API, so ``get()`` returns a new object, which is the real cost of it).

Every function has the signature ``fn(size, count) -> float``: it forks a
sender child that sends ``count`` messages of ``size`` bytes, the parent
receives them and returns messages per second measured at the receiver, from
the arrival of the first message to the arrival of the last one (so the first
message starts the clock and is not counted). Process start-up is not timed.

The child always leaves through ``os._exit`` and the parent always reaps it.
The child also dies if the parent dies mid-measurement: it asks the kernel
for SIGKILL on parent death, and a socket sender stops on EPIPE/ECONNREFUSED.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
import socket
import struct
import time
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["UDP_MAX_PAYLOAD", "count_for", "mpqueue_mps", "socketpair_mps", "udp_mps"]

#: Largest UDP/IPv4 payload: 65535 - 20 (IP header) - 8 (UDP header).
#: A 64 KiB (65536-byte) message cannot be one UDP datagram at all.
UDP_MAX_PAYLOAD = 65507

_SOCK_BUF = 4 << 20  # SO_SNDBUF/SO_RCVBUF for the socketpair
_UDP_RCVBUF = 8 << 20  # asked for; the kernel caps it at net.core.rmem_max
_FIRST_TIMEOUT = 5.0  # seconds to wait for the first message (child start-up)
_IDLE_TIMEOUT = 0.5  # UDP: no datagram for this long means the sender is done
_PR_SET_PDEATHSIG = 1


def _child(parent_pid: int, body: Callable[[], None]) -> None:
    """Run ``body`` in the forked sender and leave with ``os._exit``; never returns."""
    code = 1
    try:
        try:  # die with the parent, even if it is SIGKILLed
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if os.getppid() == parent_pid:  # the parent may have died before prctl
            body()
        code = 0
    except (BrokenPipeError, ConnectionError):
        code = 0  # the receiver went away: stop quietly
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _fork(body: Callable[[], None]) -> int:
    parent_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        _child(parent_pid, body)
    return pid


def _reap(pid: int, ok: bool) -> None:
    """Wait for the child; if the measurement failed, kill it first."""
    if not ok:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.waitpid(pid, 0)


def _rcvtimeo(sock: socket.socket, seconds: float) -> None:
    """Kernel receive timeout (SO_RCVTIMEO): no extra poll() per recv."""
    sec = int(seconds)
    sock.setsockopt(
        socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", sec, int((seconds - sec) * 1e6))
    )


def _rate(received: int, t0: float, t1: float) -> float:
    """Messages after the first one, per second between first and last arrival."""
    if received < 2 or t1 <= t0:
        return float("nan")
    return (received - 1) / (t1 - t0)


def _check(size: int, count: int) -> None:
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if count < 2:
        raise ValueError(f"count must be >= 2 (the first message starts the clock), got {count}")


def socketpair_mps(size: int, count: int) -> float:
    """AF_UNIX SOCK_SEQPACKET socketpair, 4 MiB buffers: messages/s at the receiver.

    The sender loops ``send(payload)``; the receiver ``recv_into`` one
    preallocated buffer and reads ``mv[0]`` and ``mv[n - 1]``. Returns nan if
    fewer than two messages arrived (the sender died).
    """
    _check(size, count)
    rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = -1
    ok = False
    try:
        for s in (rx, tx):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCK_BUF)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCK_BUF)
        payload = bytes(size)

        def send() -> None:
            rx.close()
            for _ in range(count):
                tx.send(payload)

        pid = _fork(send)
        tx.close()
        buf = bytearray(size)
        mv = memoryview(buf)
        recv_into = rx.recv_into
        _rcvtimeo(rx, _FIRST_TIMEOUT)
        received = 0
        t0 = t1 = 0.0
        try:
            n = recv_into(mv)
        except (BlockingIOError, TimeoutError):  # the sender never started
            n = 0
        if n:
            t0 = t1 = time.perf_counter()
            mv[0]  # touch the data
            mv[n - 1]
            received = 1
            _rcvtimeo(rx, 0)  # 0 = block forever; EOF ends the loop if the sender dies
            for _ in range(count - 1):
                n = recv_into(mv)
                if not n:
                    break
                mv[0]  # touch the data
                mv[n - 1]
                received += 1
            t1 = time.perf_counter()
        ok = True
        return _rate(received, t0, t1)
    finally:
        rx.close()
        tx.close()
        if pid > 0:
            _reap(pid, ok)


def udp_mps(size: int, count: int) -> float:
    """Two UDP sockets on 127.0.0.1: datagrams/s actually received.

    The sender loops ``send(payload)`` on a connected socket without pacing;
    loopback UDP drops datagrams when the receiver falls behind, so the
    receiver counts what arrives (``recv_into`` a preallocated buffer, reading
    ``mv[0]`` and ``mv[n - 1]``) until ``count`` arrived or nothing came for
    0.5 s, and the rate is taken between the first and last arrival.

    UDP cannot carry a 64 KiB message: the largest IPv4 UDP payload is 65507
    bytes, so for ``size > 65507`` this returns ``nan`` without measuring.
    """
    _check(size, count)
    if size > UDP_MAX_PAYLOAD:
        return float("nan")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pid = -1
    ok = False
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RCVBUF)
        rx.bind(("127.0.0.1", 0))
        tx.bind(("127.0.0.1", 0))
        tx.connect(rx.getsockname())
        payload = bytes(size)

        def send() -> None:
            rx.close()
            for _ in range(count):
                tx.send(payload)

        pid = _fork(send)
        tx.close()
        buf = bytearray(size)
        mv = memoryview(buf)
        recv_into = rx.recv_into
        clock = time.perf_counter
        received = 0
        t0 = t1 = 0.0
        _rcvtimeo(rx, _FIRST_TIMEOUT)
        try:
            n = recv_into(mv)
            t0 = t1 = clock()
            mv[0]  # touch the data
            mv[n - 1]
            received = 1
            _rcvtimeo(rx, _IDLE_TIMEOUT)
            while received < count:
                n = recv_into(mv)
                t1 = clock()
                mv[0]  # touch the data
                mv[n - 1]
                received += 1
        except (BlockingIOError, TimeoutError):  # SO_RCVTIMEO expired: the rest was dropped
            pass
        ok = True
        return _rate(received, t0, t1)
    finally:
        rx.close()
        tx.close()
        if pid > 0:
            _reap(pid, ok)


def mpqueue_mps(size: int, count: int) -> float:
    """``multiprocessing.Queue`` (fork context): messages/s at the receiver.

    The sender loops ``put(payload)`` and then flushes the queue's feeder
    thread; the receiver ``get()``s each message and reads its first and last
    byte. Returns nan if fewer than two messages arrived.
    """
    import multiprocessing
    import queue as queue_mod

    _check(size, count)
    q: Any = multiprocessing.get_context("fork").Queue()
    pid = -1
    ok = False
    try:
        payload = bytes(size)

        def send() -> None:
            put = q.put
            for _ in range(count):
                put(payload)
            q.close()
            q.join_thread()  # wait until the feeder thread wrote everything

        pid = _fork(send)
        # The parent never puts. Dropping its copy of the pipe's write end
        # (multiprocessing has no public API for that) makes get() raise
        # EOFError if the sender dies, instead of blocking forever; a
        # get(timeout=...) would do the same but halves the rate measured.
        q._writer.close()
        received = 0
        t0 = t1 = 0.0
        try:
            msg = q.get(timeout=_FIRST_TIMEOUT)
            t0 = time.perf_counter()
            msg[0]  # touch the data
            msg[-1]
            received = 1
            get = q.get
            for _ in range(count - 1):
                msg = get()
                msg[0]  # touch the data
                msg[-1]
                received += 1
            t1 = time.perf_counter()
        except (queue_mod.Empty, EOFError):  # the sender never started, or died
            pass
        ok = True
        return _rate(received, t0, t1)
    finally:
        if pid > 0:
            _reap(pid, ok)
        q._reader.close()
        q._writer.close()


# Messages per second measured on the development machine (2 CPUs, Linux),
# per function, at these sizes; count_for interpolates on log(size).
_SIZES = (64, 1500, 9000, 65536)
_RATES: dict[str, tuple[float, ...]] = {
    "socketpair_mps": (1.15e6, 9.5e5, 6.4e5, 1.6e5),
    "udp_mps": (8.0e5, 6.8e5, 4.6e5, 1.6e5),
    "mpqueue_mps": (3.1e5, 2.6e5, 2.0e5, 2.5e4),
}


def count_for(size: int, quick: bool, fn: Callable[[int, int], float] = socketpair_mps) -> int:
    """A message count that makes ``fn(size, count)`` take ~1 s (quick) or ~3 s.

    Calibrated per function from rates measured on the development machine;
    ``fn`` defaults to the fastest baseline (socketpair), which gives the
    other baselines several times longer runs.
    """
    rates = _RATES.get(getattr(fn, "__name__", ""), _RATES["socketpair_mps"])
    x = math.log(min(max(size, _SIZES[0]), _SIZES[-1]))
    rate = rates[-1]
    for (s0, r0), (s1, r1) in zip(zip(_SIZES, rates), zip(_SIZES[1:], rates[1:])):
        if x <= math.log(s1):
            f = (x - math.log(s0)) / (math.log(s1) - math.log(s0))
            rate = math.exp(math.log(r0) + f * (math.log(r1) - math.log(r0)))
            break
    return max(1000, round(rate * (1.0 if quick else 3.0)))
