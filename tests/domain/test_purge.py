"""Memory comes back by itself (issue 14): an idle pool gives back its free segments.

Driven by hand with a simulated clock: the domain's housekeeping tick runs
every `purge_after` seconds; a pool whose free and active counts did not move
between two ticks purges its all-free segments beyond its opening size, and
the pages go back to the system (the memfd's allocated bytes fall).
"""

from __future__ import annotations

from tests.helpers.util import FakeClock

from usnet.client import Client
from usnet.domain.loop import Domain


def _grown(d: Domain, c: Client, name: str):
    a = c.open_pipe(name, packets=64, max_packets=4096)
    b = c.open_pipe(name)
    c.resize(a.id, None, 4096)
    pipe = d.channels[a.id].pipe
    # touch every buffer, as traffic would: those pages are what a purge gives back
    pkts = a.alloc(32)
    for p in pkts:
        a.write(p, b"x" * 100)
    a.free(pkts)
    pipe.arena.shared[pipe.layout.buf_offset : pipe.layout.buf_offset + 4096 * pipe.schema.packet_bytes] = \
        b"\x01" * (4096 * pipe.schema.packet_bytes)
    return a, b, pipe


def test_an_idle_pool_purges_its_free_segments_and_a_busy_one_does_not():
    clock = FakeClock()
    d = Domain(purge_after=10.0, clock=clock)
    try:
        c = Client.local(d)
        a, b, pipe = _grown(d, c, "idle")
        x, y, busy = _grown(d, c, "busy")
        assert pipe.pool.active == 4096 and busy.pool.active == 4096
        before = pipe.arena.allocated_bytes()
        for tick in range(3):
            clock.now += 10.0
            x.free(x.alloc(300))  # the busy pool lends and takes back between every two ticks
            d.kick_channel(x.id)
            d.serve_once(0)
        # idle: every all-free segment went (what stays is lent out on the ALLOC rings)
        lent = int(pipe.pool.counts()["in_alloc"]) + int(pipe.pool.counts()["held"])
        assert pipe.pool.active < 4096 and pipe.pool.active - lent < pipe.pool.active // 4
        assert pipe.arena.allocated_bytes() < before // 2  # and its pages went back
        assert busy.pool.active == 4096  # busy: kept
        pipe.pool.check()
        # it grows again on demand, and the channel works
        a.send_bytes(b"after the purge")
        assert b.recv_bytes(timeout=5) == b"after the purge"
    finally:
        d.stop()
