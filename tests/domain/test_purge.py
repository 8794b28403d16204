"""Memory comes back by itself (issue 14): an idle pool gives back its free segments.

Driven by hand with a simulated clock: the domain's housekeeping tick runs
every `purge_after` seconds; a pool whose free and active counts did not move
between two ticks purges its all-free segments beyond its opening size, and
the pages go back to the system (the memfd's allocated bytes fall).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.helpers.util import FakeClock
from usnet.abi.memfd import available_memory
from usnet.client import Client
from usnet.domain import config
from usnet.domain.loop import Domain
from usnet.domain.mem.pool import FREE


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
        x, _y, busy = _grown(d, c, "busy")
        assert pipe.pool.active == 4096 and busy.pool.active == 4096
        before = pipe.arena.allocated_bytes()
        for _ in range(3):
            clock.now += 10.0
            x.free(x.alloc(300))  # the busy pool lends and takes back between every two ticks
            d.kick_channel(x.id)
            d.serve_once(0)
        # idle: every all-free segment went (what stays is lent out on the ALLOC rings)
        pool = pipe.pool
        assert pool.active < 4096
        for seg in np.flatnonzero(pool.seg_active).tolist():
            r = pool._segment_range(seg)
            assert not np.all(pool.state[r.start : r.stop] == FREE), f"segment {seg} is all free and kept"
        assert pipe.arena.allocated_bytes() < before // 2  # and its pages went back
        assert busy.pool.active == 4096  # busy: kept
        pipe.pool.check()
        # it grows again on demand, and the channel works
        a.send_bytes(b"after the purge")
        assert b.recv_bytes(timeout=5) == b"after the purge"
    finally:
        d.stop()


def test_memory_pressure_purges_every_pool_at_the_next_tick_idle_or_not():
    """The real /proc/meminfo: a threshold above this host's MemAvailable is pressure now."""
    avail = available_memory()
    assert avail is not None
    clock = FakeClock()
    d = Domain(purge_after=1e6, purge_below_mb=(avail >> 20) + (1 << 20), clock=clock)  # 1 TiB above it
    try:
        c = Client.local(d)
        a, b, pipe = _grown(d, c, "pressed")
        before = pipe.arena.allocated_bytes()
        a.free(a.alloc(300))  # it moved since the last tick: an idle purge would keep it
        d.kick_channel(a.id)
        clock.now += d.housekeeping_interval
        d.serve_once(0)
        assert d.memory_pressure and d.status()["memory"]["pressure"]
        assert d.pressure_purges > 0
        assert pipe.pool.active < 4096 and pipe.arena.allocated_bytes() < before // 2
        pipe.pool.check()
        a.send_bytes(b"still works")
        assert b.recv_bytes(timeout=5) == b"still works"
    finally:
        d.stop()


def test_no_pressure_no_purge_and_zero_turns_the_check_off():
    avail = available_memory()
    assert avail is not None and avail > 64 << 20  # the host is not short of memory itself
    clock = FakeClock()
    for threshold in (0, 1):  # 0: off; 1 MiB: far below this host's MemAvailable
        d = Domain(purge_after=1e6, purge_below_mb=threshold, clock=clock)
        try:
            c = Client.local(d)
            _, _, pipe = _grown(d, c, "calm")
            for _ in range(3):
                clock.now += d.housekeeping_interval
                d.serve_once(0)
            assert not d.memory_pressure and d.pressure_purges == 0
            assert pipe.pool.active == 4096
        finally:
            d.stop()


def test_usnetd_config_keys_for_purge_and_stalls(tmp_path):
    p = tmp_path / "usnetd.toml"
    p.write_text("purge_below_mb = 512\nstall_after = 5\nstall_defunct = 0\n")
    cfg = config.load(str(p))
    assert cfg.domain_kwargs() == {"purge_below_mb": 512, "stall_after": 5.0, "stall_defunct": 0.0}
    (tmp_path / "again.toml").write_text(config.dump(cfg))
    assert config.load(str(tmp_path / "again.toml")) == cfg  # `usnet up` writes what usnetd reads
    with Domain(**cfg.domain_kwargs()) as d:
        assert (d.purge_below_mb, d.stall_after, d.stall_defunct) == (512, 5.0, 0.0)
    for text, words in (("stall_defunct = -1", "stall_defunct must be 0 (never) or a positive number"),
                        ("stall_after = 0", "stall_after must be a positive number of seconds"),
                        ("purge_below_mb = -5", "purge_below_mb must be a whole number of MiB")):
        p.write_text(text + "\n")
        with pytest.raises(ValueError, match=re.escape(words)):
            config.load(str(p))
