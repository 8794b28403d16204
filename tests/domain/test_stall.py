"""Stalled channels (issue 14, "memory comes back by itself").

A channel that leaves packets unread on its RX ring for `stall_after` seconds
is stalled: the domain refuses further arrivals (dropped and counted), posts
RX_STALLED on its EVENT ring and gives back its pool's free segments. When it
reads again it is un-stalled (RX_RESUMED); if it stays stalled `stall_defunct`
seconds longer it is defuncted with STALLED, which takes every packet back.

Driven by hand: an embedded domain that is not started, its own injectable
clock moved by the test, and `serve_once(0)` as the loop's turn. For the flow
case a UDP pair across a memwire, as in tests/test_fault_barrier.py.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.util import FakeClock
from usnet.abi.events import DefunctReason, EventType
from usnet.abi.transport import listen_seqpacket
from usnet.cli.main import main
from usnet.client import Client
from usnet.client.channel import ChannelDefunct, PeerGone
from usnet.domain.loop import Domain
from usnet.domain.mem.pool import FREE, HELD
from usnet.drivers import MemWire

RING = 64


@pytest.fixture
def sockdir():
    """A fresh directory for AF_UNIX sockets, short enough for them (sun_path stops at 108 bytes)."""
    d = tempfile.mkdtemp(prefix="usn", dir="/tmp")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _events(ch, kind: EventType) -> list:
    return [e for e in ch.events() if e.type == kind]


def _tick(d: Domain, clock: FakeClock, seconds: float) -> None:
    """Let `seconds` of the domain's clock pass, one loop turn per housekeeping tick."""
    step = d.housekeeping_interval
    for _ in range(int(seconds / step) + 1):
        clock.now += step
        d.serve_once(0)


def _touch_free(pipe) -> None:
    """Dirty the buffer of every free packet of the pool, as past traffic would: what a purge gives back."""
    lay, stride = pipe.layout, pipe.schema.packet_bytes
    buf = np.frombuffer(pipe.arena.shared, np.uint8, lay.max_packets * stride, lay.buf_offset)
    buf.reshape(lay.max_packets, stride)[np.flatnonzero(pipe.pool.state == FREE)] = 1


def _stalled_pipe(d: Domain, clock: FakeClock, c: Client, name: str):
    """A pipe a -> b whose reader b has left a full RX ring unread past stall_after."""
    a = c.open_pipe(name, packets=64, max_packets=4096, ring_size=RING)
    b = c.open_pipe(name)
    pipe = d.channels[a.id].pipe
    c.resize(a.id, None, 4096)  # a big pool, then idle beyond its opening size
    _touch_free(pipe)
    for i in range(RING):
        a.send_bytes(i.to_bytes(4, "big"))
    assert b.poll() == RING
    d.serve_once(0)  # the watch sees b's counter
    assert not pipe.ends[1].stalled_since
    return a, b, pipe


def test_a_pipe_reader_that_stops_is_stalled_and_reading_again_unstalls_it():
    clock = FakeClock()
    d = Domain(stall_after=10.0, stall_defunct=60.0, purge_after=1e6, purge_below_mb=0, clock=clock)
    try:
        c = Client.local(d)
        a, b, pipe = _stalled_pipe(d, clock, c, "stall")
        _tick(d, clock, 5.0)
        assert not b.stalled and not _events(b, EventType.RX_STALLED)  # not yet
        before = pipe.arena.allocated_bytes()
        _tick(d, clock, 6.0)
        # stalled: told once with what waits, the flag up, the free segments gone back
        (ev,) = _events(b, EventType.RX_STALLED)
        assert ev.value == RING
        assert b.stalled and a.peer_stalled
        assert pipe.info()["ends"][1]["stalled"] and pipe.info()["ends"][1]["stalls"] == 1
        assert pipe.pool.active < 4096
        assert pipe.arena.allocated_bytes() < before // 2
        _tick(d, clock, 5.0)
        assert not _events(b, EventType.RX_STALLED)  # one event, not one a tick
        # arrivals are dropped at the sender and counted there; its packets go back to the pool
        dropped = a.alloc(3)
        assert a.send(dropped) == 3
        assert a.tx_dropped_stalled == 3
        d.kick_channel(a.id)
        assert not (pipe.pool.state[dropped] == HELD).any()  # taken back off a's FREE ring
        assert b.poll() == RING  # what waited still waits: b may read it
        # b reads again: un-stalled, deliveries resume
        got = b.recv(8)
        assert [int.from_bytes(b.view(p), "big") for p in got] == list(range(8))
        b.free(got)
        _tick(d, clock, 1.0)
        assert not b.stalled and not a.peer_stalled
        assert _events(b, EventType.RX_RESUMED)
        a.send_bytes(b"after")
        assert a.tx_dropped_stalled == 3
        rest = []
        while b.poll():
            ps = b.recv(64)
            rest += [bytes(b.view(p)) for p in ps]
            b.free(ps)
        assert rest[-1] == b"after" and len(rest) == RING - 8 + 1
        # the pool grew back on demand, and its books balance
        pipe.pool.check()
    finally:
        d.stop()


def test_a_pipe_reader_that_stays_stalled_is_defunct_with_stalled_and_every_packet_comes_back():
    clock = FakeClock()
    d = Domain(stall_after=10.0, stall_defunct=60.0, purge_after=1e6, purge_below_mb=0, clock=clock)
    try:
        c = Client.local(d)
        a, b, pipe = _stalled_pipe(d, clock, c, "dead")
        _tick(d, clock, 11.0)
        assert b.stalled
        _tick(d, clock, 50.0)
        assert pipe.defunct_reason is None  # stalled, not yet defunct
        _tick(d, clock, 11.0)
        assert pipe.defunct_reason is DefunctReason.STALLED
        with pytest.raises(ChannelDefunct) as ei:
            b.recv(1, timeout=0)
        assert ei.value.reason is DefunctReason.STALLED and "STALLED" in str(ei.value)
        assert "unread" in str(ei.value)
        with pytest.raises(PeerGone):
            a.send_bytes(b"x")
        counts = pipe.pool.counts()  # every packet accounted: none lent, none held
        assert counts["in_alloc"] == 0 and counts["held"] == 0
        assert counts["free"] + counts["purged"] == counts["capacity"]
        assert pipe.arena.allocated_bytes() < 1 << 20
        b.close()
        a.close()
    finally:
        d.stop()


def test_stall_defunct_zero_keeps_a_stalled_pipe_open():
    clock = FakeClock()
    d = Domain(stall_after=10.0, stall_defunct=0, purge_after=1e6, purge_below_mb=0, clock=clock)
    try:
        c = Client.local(d)
        _, b, pipe = _stalled_pipe(d, clock, c, "forever")
        _tick(d, clock, 200.0)
        assert b.stalled and pipe.defunct_reason is None
        assert len(b.recv(RING)) == RING
    finally:
        d.stop()


def test_a_pipe_with_nothing_to_read_is_never_stalled():
    clock = FakeClock()
    d = Domain(stall_after=10.0, stall_defunct=60.0, purge_after=1e6, purge_below_mb=0, clock=clock)
    try:
        c = Client.local(d)
        a = c.open_pipe("quiet", ring_size=RING)
        b = c.open_pipe("quiet")
        _tick(d, clock, 100.0)
        assert not a.stalled and not b.stalled
        a.send_bytes(b"late")
        assert b.recv_bytes(timeout=5) == b"late"
    finally:
        d.stop()


A_IP, B_IP = "10.9.0.1", "10.9.0.2"


def _flow_pair(clock: FakeClock, **kw):
    d = Domain(stall_after=10.0, stall_defunct=60.0, purge_after=1e6, purge_below_mb=0, clock=clock, **kw)
    w = MemWire()
    d.add_netif("a", w.a, f"{A_IP}/24")
    swb = d.add_netif("b", w.b, f"{B_IP}/24")
    c = Client.local(d)
    tx = c.udp_socket("a", 5000)
    rx = c.udp_socket("b", 6000, ring_size=RING)
    return d, swb, tx, rx


def _send(d: Domain, tx, n: int, start: int = 0) -> None:
    """`n` numbered datagrams a -> b, moved across the wire by loop turns (bounded)."""
    for i in range(start, start + n):
        tx.sendto(i.to_bytes(4, "big"), (B_IP, 6000))
        for _ in range(4):
            d.serve_once(0)
    for _ in range(20):
        d.serve_once(0)


def test_a_flow_that_stops_reading_is_stalled_its_arrivals_dropped_and_counted():
    clock = FakeClock()
    d, swb, tx, rx = _flow_pair(clock)
    try:
        ref = d.channels[rx.channel.id]
        port, pipe = ref.flow.port, ref.pipe
        _send(d, tx, RING + 8)  # the ring fills; what does not fit is dropped as ever (client full)
        waiting = rx.channel.poll()
        assert waiting == RING
        full = swb.drops["rx_client_full"]
        assert full == 8
        d.serve_once(0)
        _touch_free(pipe)
        before = pipe.arena.allocated_bytes()
        _tick(d, clock, 11.0)
        (ev,) = _events(rx.channel, EventType.RX_STALLED)
        assert ev.value == waiting
        assert port.stalled and rx.channel.stalled
        assert pipe.arena.allocated_bytes() < before
        # arrivals now: dropped under their own name, and counted on the flow
        _send(d, tx, 5, start=1000)
        assert port.rx_dropped_stalled == 5 and swb.drops["rx_stalled"] == 5
        assert swb.drops["rx_client_full"] == full
        (flow,) = [f for f in swb.info()["flows"] if f["channel"] == rx.channel.id]
        assert flow["stalled"] and flow["stats"]["rx_dropped_stalled"] == 5
        # it reads again: un-stalled (told how many it lost), deliveries resume
        got = rx.recv_many(8, timeout=0)
        assert [int.from_bytes(p, "big") for p, _ in got] == list(range(8))
        _tick(d, clock, 1.0)
        assert not port.stalled
        (ev,) = _events(rx.channel, EventType.RX_RESUMED)
        assert ev.value == 5
        _send(d, tx, 1, start=2000)
        rest = []
        for _ in range(4):  # (a batch ends at what the reader last saw of the producer)
            try:
                rest += rx.recv_many(RING, timeout=0)
            except BlockingIOError:
                break
        assert len(rest) == RING - 8 + 1 and int.from_bytes(rest[-1][0], "big") == 2000
        assert port.rx_dropped_stalled == 5
        pipe.pool.check()
    finally:
        d.stop()


def test_a_flow_that_stays_stalled_is_defunct_and_its_packets_come_back():
    clock = FakeClock()
    d, _, tx, rx = _flow_pair(clock)
    try:
        ref = d.channels[rx.channel.id]
        pipe = ref.pipe
        _send(d, tx, RING)
        d.serve_once(0)
        _tick(d, clock, 11.0)
        assert ref.flow.port.stalled
        _tick(d, clock, 61.0)
        assert pipe.defunct_reason is DefunctReason.STALLED
        with pytest.raises(ChannelDefunct) as ei:
            rx.recv_many(1, timeout=0)
        assert ei.value.reason is DefunctReason.STALLED
        counts = pipe.pool.counts()
        assert counts["in_alloc"] == 0 and counts["held"] == 0
        assert counts["free"] + counts["purged"] == counts["capacity"]
        # the loop goes on: the sender's flow is untouched
        _send(d, tx, 3, start=3000)
        assert d.channels[tx.channel.id].pipe.defunct_reason is None
        assert d.status()["memory"]["stall_after"] == 10.0
    finally:
        d.stop()


def test_usnet_status_and_flows_show_what_stalled(sockdir, capsys, monkeypatch):
    """Through a real control socket: `usnet status` names the stalled end and the stalled flow,
    `usnet flows` says "stalled", and the JSON carries the counters."""
    clock = FakeClock()
    d, _, tx, rx = _flow_pair(clock)
    try:
        c = Client.local(d)
        _stalled_pipe(d, clock, c, "shown")
        _send(d, tx, RING)
        d.serve_once(0)
        _tick(d, clock, 11.0)
        _send(d, tx, 2, start=500)
        path = str(sockdir / "s.sock")
        d.listen(listen_seqpacket(path))
        d.start()  # the loop serves the CLI now; its clock stands still, so nothing changes
        monkeypatch.setenv("COLUMNS", "250")
        assert main(["status", "--socket", path]) == 0
        out = capsys.readouterr().out
        rows = [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if "│" in line]
        (row,) = [r for r in rows if r[0] == "shown"]
        assert row[-2] == "end 1"
        assert "flows that stopped reading" in out
        (frow,) = [r for r in rows if r[:3] == ["b", str(rx.channel.id), "udp"]]
        assert frow[-2:] == ["yes", "2"]
        assert "channels stall after 10 s unread, defunct 60 s later" in out
        assert main(["flows", "--socket", path]) == 0
        out = capsys.readouterr().out
        (frow,) = [line for line in out.splitlines() if ":6000" in line]
        assert frow.rstrip(" │").endswith("stalled")
        assert main(["status", "--socket", path, "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        (p,) = [p for p in info["pipes"] if p["name"] == "shown"]
        assert [e["stalled"] for e in p["ends"]] == [False, True]
        (f,) = [f for n in info["netifs"] for f in n["flows"] if f["channel"] == rx.channel.id]
        assert f["stalled"] and f["stats"]["rx_dropped_stalled"] == 2
    finally:
        d.stop()
