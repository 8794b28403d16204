"""`usnet bench pipe`: a user pipe between two processes against Python's sockets and queues.

The embedded domain and the sender run in this process; the receiver is a
second process that reaches the domain over a SEQPACKET control socket. Both
ends belong to one owner, so packets cross by index through shared memory
with no third process. Each side does what the issue prescribes: the sender
puts a prepared payload into a packet, the receiver gets a view of the packet
and reads its first and last byte. The alternatives in `baselines` do the same
through their own APIs.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable

from usnet.abi.umd import UMD_WORDS
from usnet.bench.apps import kill_all, read_all, spawn_app
from usnet.client import Client
from usnet.client.channel import Channel
from usnet.domain.loop import Domain

__all__ = ["SIZES", "ZERO_COPY_SIZE", "memory_per_channel", "self_pps", "usnet_mps"]

SIZES = (64, 1500, 9000, 65536)
ZERO_COPY_SIZE = 65536  # the row where the copy is the cost: issue 18's zero-copy row
BATCH = 256


def schema_for(size: int) -> tuple[str, dict[str, int]]:
    """Packets big enough for `size` in one buffer: the bulk schema for jumbo sizes."""
    if size <= 2048:
        return "default", {"ring_size": 2048, "packets": 4096}
    if size <= 16384:
        return "bulk", {"buf_size": 16384, "buflets": 1, "packets": 2048, "ring_size": 1024}
    return "bulk", {"buf_size": 16384, "buflets": 4, "packets": 1024, "ring_size": 512}


def send_loop(ch: Channel, size: int, count: int, progress: Callable[[int], None] | None = None,
              zero_copy: bool = False) -> None:
    """Send `count` packets of `size` bytes; `progress(n)` is told every 64 batches.

    By default the sender copies a prepared payload into each packet, as a
    socket's `send` copies it into the kernel. With `zero_copy` it builds each
    message where it will be read, in the packet: it writes the message's first
    and last byte (a sequence number's low byte, the bytes the receiver reads)
    and copies nothing, as an application that formats its data straight into
    the buffer does. The socketpair it is set beside has no such path.
    """
    payload = b"\xa5" * size
    views, umd = ch.packet_views(), ch.umd
    sent = 0
    batches = 0
    last = size - 1
    while sent < count:
        pkts = ch.alloc(min(BATCH, count - sent))
        if zero_copy:
            for p in pkts:
                v = views[p]
                v[0] = v[last] = p & 0xFF
                umd[p * UMD_WORDS] = size
        else:
            for p in pkts:
                views[p][:size] = payload
                umd[p * UMD_WORDS] = size
        ch.send(pkts)
        sent += len(pkts)
        batches += 1
        if progress is not None and not batches & 63:
            progress(sent)
    if progress is not None:
        progress(sent)


def recv_loop(ch: Channel, count: int) -> float:
    """Receive `count` packets; returns messages/s from the first to the last."""
    views, umd = ch.packet_views(), ch.umd
    got = 0
    first = ch.recv(BATCH)
    t0 = time.perf_counter()
    pkts = first
    total = 0
    while True:
        for p in pkts:
            v = views[p][: umd[p * UMD_WORDS]]  # cannot reach past the packet's buffer
            total += v[0] + v[-1]
        ch.free(pkts)
        got += len(pkts)
        if got >= count:
            break
        pkts = ch.recv(BATCH)
    dt = time.perf_counter() - t0
    return (got - len(first)) / dt if dt > 0 else float("nan")


def _peer_main(fd: int, result_fd: int, name: str, count: int) -> None:
    client = Client.from_socket(socket.socket(fileno=fd))
    ch = client.open_pipe(name)
    rate = recv_loop(ch, count)
    os.write(result_fd, repr(rate).encode())
    ch.close()


def usnet_mps(size: int, count: int, domain: Domain | None = None,
              progress: Callable[[int], None] | None = None, zero_copy: bool = False) -> float:
    """Messages/s through a user pipe from this process to a receiving child process (`send_loop`'s `zero_copy`)."""
    own = domain is None
    dom = domain or Domain()
    name = f"bench-{os.getpid()}-{size}-{time.monotonic_ns()}"
    schema, attrs = schema_for(size)
    local = Client.local(dom)
    tx = local.open_pipe(name, schema, **attrs)
    r, w = os.pipe()
    child = spawn_app(dom, "usnet.bench.pipe", "--peer", str(w), name, str(count), keep=(w,))
    os.close(w)
    try:
        send_loop(tx, size, count, progress, zero_copy)
        data = read_all(r)
        if child.wait(60) != 0 or not data:
            raise RuntimeError(f"pipe bench receiver failed ({child.failure()})")
        return float(data)
    finally:
        os.close(r)
        kill_all([child])
        tx.close()
        if own:
            dom.stop()


def self_pps(size: int, count: int) -> float:
    """Packets/s of one process sending to itself through a pipe: the per-packet cost alone."""
    with Domain() as dom:
        c = Client.local(dom)
        schema, attrs = schema_for(size)
        a = c.open_pipe("self", schema, **attrs)
        b = c.open_pipe("self")
        payload = b"\xa5" * size
        views, umd = a.packet_views(), a.umd
        rviews, rumd = b.packet_views(), b.umd
        t0 = time.perf_counter()
        done = 0
        while done < count:
            pkts = a.alloc(BATCH)
            for p in pkts:
                views[p][:size] = payload
                umd[p * UMD_WORDS] = size
            a.send(pkts)
            got = b.recv(BATCH)
            for p in got:
                v = rviews[p][: rumd[p * UMD_WORDS]]
                v[0], v[-1]
            b.free(got)
            done += len(got)
        dt = time.perf_counter() - t0
        a.close()
        b.close()
        return done / dt


def memory_per_channel(size: int = 64) -> dict[str, int]:
    """Bytes a freshly opened pipe's arena holds, per channel (two channels a pipe)."""
    with Domain() as dom:
        c = Client.local(dom)
        schema, attrs = schema_for(size)
        a = c.open_pipe("mem", schema, **attrs)
        b = c.open_pipe("mem")
        pipe = dom.pipe("mem")
        touched = pipe.arena.allocated_bytes()
        reserved = pipe.arena.shared_size + pipe.arena.ro_size
        a.close()
        b.close()
        return {"touched_bytes": touched // 2, "reserved_bytes": reserved // 2}


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--peer":
        _peer_main(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
