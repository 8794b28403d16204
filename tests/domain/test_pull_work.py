"""The work of one flow's transmit batch, counted (issue 18: UDP datagrams/s with 1,000 flows).

At 1,000 flows each flow's turn carries one `send_many` (32 datagrams), so
what `FlowPort.pull` pays per batch (ring pop, ownership check, the UMD
reads, the ALLOC top-up) is paid 1,000 times a round where one flow pays it
once for hundreds. These tests count, with 10 and with 100 flows sending,
the reads of the flows' UMD (one gather of the batch's records, not one per
word) and the pools' duplicate-check scratch (one array for every pool, not
one per pool). The receiver's side too: its batches hold many senders' runs of
32, and it makes a sender's address once a run, not once a datagram, each
datagram still naming its own sender. And what a flow's batch costs besides
the pull itself, per datagram, with 1 flow sending 256 at a time against 10
and 100 sending 32 each: no pass over a whole pool's state (its active count
is kept, not counted at every ALLOC refill), and a block's bytes summed at
most once (the joined pass knows them: none). With the sending netif's trend changing
every round: one look at a flow's TX ring a batch (not `pull_few`, then `pull`), and no
more doorbells per datagram at 100 flows than at 1 (a change rings a channel only if it
read the last one rung). No timing.
"""

from __future__ import annotations

import select

import numpy as np
import pytest

from usnet.abi.advisory import Trend
from usnet.abi.events import EventProducer, EventType
from usnet.client.datagram import DatagramSocket
from usnet.client.session import Client
from usnet.domain.loop import Domain
from usnet.domain.mem import pool as poolmod
from usnet.domain.netif.advisory import RECHECK
from usnet.domain.switch.port import FlowPort
from usnet.domain.userpipe import PipeEnd
from usnet.drivers.block import FrameBlock
from usnet.drivers.memwire import MemWire

A, B = "10.92.0.1", "10.92.0.2"
BATCH = 32


class _Counted(np.ndarray):
    """A view of a flow's UMD words that counts the reads by index array (gathers) made of it."""

    gathers = 0

    def __getitem__(self, key):
        if isinstance(key, np.ndarray) or (isinstance(key, tuple) and any(isinstance(k, np.ndarray) for k in key)):
            _Counted.gathers += 1
        return np.ndarray.__getitem__(self, key)


class _Scanned(np.ndarray):
    """A pool's `state` that counts the comparisons of the whole array (a scan of the pool)."""

    scans = 0

    def __ne__(self, other):
        _Scanned.scans += 1
        return np.ndarray.__ne__(self, other)


class _Summed(np.ndarray):
    """A block's `lens` that counts its sums."""

    sums = 0

    def sum(self, *a, **kw):
        _Summed.sums += 1
        return np.ndarray.sum(self, *a, **kw)


def _local() -> tuple[Domain, MemWire, Client]:
    """A domain with netifs a and b on a MemWire, and an in-process client of it."""
    d = Domain()
    w = MemWire()
    d.add_netif("a", w.a, f"{A}/24")
    d.add_netif("b", w.b, f"{B}/24")
    return d, w, Client.local(d)


def _run(flows: int, monkeypatch, per: int = 1, changes: bool = False) -> dict:
    """`flows` flows each send `per` batches of 32 a round, three rounds, all delivered; what the
    domain did, counted. `changes`: the sending netif's trend changes once before the count and
    once a round (as a loaded link's moves while 1,000 flows send)."""
    d, _wire, c = _local()
    try:
        rx = c.udp_socket("b", 6000, ring_size=8192, packets=16384)
        socks = [c.udp_socket("a", 0, ring_size=256, packets=512) for _ in range(flows)]
        ports = {s.getsockname()[1]: i for i, s in enumerate(socks)}
        work = {"pulls": 0, "umd_gathers": 0, "scratches": set(), "lookups": 0, "blocks": 0, "looks": 0, "bells": 0,
                "adv_posts": 0}
        adv = d.advisories["a"]
        orig_pull, orig_marks, orig_name = FlowPort._pull, poolmod._marks, DatagramSocket._name
        orig_block = FrameBlock.__init__

        def block(self, data, lens, *a, **kw):
            work["blocks"] += 1
            orig_block(self, data, lens.view(_Summed), *a, **kw)

        def pull(self, max_n, headroom, draining):
            for name in ("umd_np", "umd_rec"):
                if hasattr(self, name) and type(getattr(self, name)) is np.ndarray:
                    setattr(self, name, getattr(self, name).view(_Counted))
            before = _Counted.gathers
            out = orig_pull(self, max_n, headroom, draining)
            work["pulls"] += 1
            work["umd_gathers"] += _Counted.gathers - before
            return out

        def name(self, ip):
            work["lookups"] += 1
            return orig_name(self, ip)

        def marks(capacity):
            m = orig_marks(capacity)
            work["scratches"].add(id(m))
            return m

        def drain(want: int) -> int:
            got = 0
            for _ in range(200):
                d.serve_once(0)
                try:
                    for payload, (host, port) in rx.recv_many(8192, timeout=0):
                        assert host == A
                        assert payload in (b"w", ports[port].to_bytes(2, "big") * 32)  # its own sender's
                        got += 1
                except BlockingIOError:
                    pass
                if got >= want:
                    break
            return got

        def change(k: int) -> None:  # the trend moves, as `NetifAdvisory.publish` finds it (under the loop's lock)
            if changes:
                with d.lock:
                    adv.trend = Trend.DOWN if k % 2 else Trend.UP
                    adv._announce(adv.trend)

        def counted(cls, name: str, key: str, busy: bool = False) -> None:
            orig = getattr(cls, name)

            def f(self, *a, **kw):  # `busy`: only a look that finds packets (a woken flow may find none)
                work[key] += not busy or self.tx_pending() > 0
                return orig(self, *a, **kw)
            monkeypatch.setattr(cls, name, f)

        for s in socks:  # each flow warmed (ARP, its first lending) and told of a first change: not counted
            s.sendto(b"w", (B, 6000))
        assert drain(flows) == flows
        change(0)
        for look in ("pull", "pull_any"):  # a look at a flow's TX ring, under its pipe's lock
            counted(FlowPort, look, "looks", busy=True)
        counted(PipeEnd, "ring_bell", "bells")
        orig_post = EventProducer.post

        def post(self, type_, *a, **kw):
            work["adv_posts"] += type_ == EventType.ADVISORY_UPDATED
            return orig_post(self, type_, *a, **kw)
        monkeypatch.setattr(EventProducer, "post", post)
        monkeypatch.setattr(FlowPort, "_pull", pull)
        monkeypatch.setattr(poolmod, "_marks", marks)
        monkeypatch.setattr(DatagramSocket, "_name", name)
        monkeypatch.setattr(FrameBlock, "__init__", block)
        for port in {id(f.port): f.port for sw in d.switches.values() for f in sw.flows.values()}.values():
            port.pipe.pool.state = port.pipe.pool.state.view(_Scanned)
        _Scanned.scans = _Summed.sums = 0
        got = 0
        for k in range(1, 4):
            for i, s in enumerate(socks):
                for _ in range(per):
                    assert s.send_many([i.to_bytes(2, "big") * 32] * BATCH, (B, 6000)) == BATCH
            change(k)
            got += drain(flows * BATCH * per)
        assert got == 3 * flows * BATCH * per  # every datagram arrived
        for s in socks if changes else ():  # each sender holds the first announcement it never read:
            # the later changes skipped it (the advisory holds the newest trend)
            assert [e.type for e in s.events()].count(EventType.ADVISORY_UPDATED) == 1
        work.update(datagrams=got, pool_scans=_Scanned.scans, block_sums=_Summed.sums)
        return dict(work)  # as it stood: the closes below ring bells too
    finally:  # the client too: 100 flows' descriptors, else open till a collection finds them
        c.close()
        d.stop()


@pytest.mark.parametrize("flows", [10, 100])
def test_a_flows_batch_reads_its_umd_records_in_one_gather_and_every_pool_shares_one_scratch(flows, monkeypatch):
    work = _run(flows, monkeypatch)
    assert work["pulls"] == 3 * flows  # one pull a flow a round, each a whole batch of 32
    assert work["umd_gathers"] == work["pulls"]  # one per batch: the lengths, gso sizes and marks are its columns
    # 10 or 100 pools, one duplicate-check scratch (grown once, for the receiver's bigger pool)
    assert len(work["scratches"]) <= 2


@pytest.mark.parametrize("flows", [10, 100])
def test_a_receive_batch_from_many_senders_makes_one_address_a_run_not_one_a_datagram(flows, monkeypatch):
    work = _run(flows, monkeypatch)
    # at most one a flow's send (a run of 32): 1/32 a datagram at 10 flows as at 100 (it was 1 a datagram)
    assert work["lookups"] <= 3 * flows


@pytest.mark.parametrize(("flows", "per"), [(1, 8), (10, 1), (100, 1)])
def test_a_batchs_bookkeeping_scans_no_pool_and_sums_a_block_once_whatever_the_flow_count(flows, per, monkeypatch):
    work = _run(flows, monkeypatch, per)
    # per datagram: no pass over a pool's state at 1 flow (a batch of 256) as at 100 (batches of 32);
    # before, one a refill, so one per batch or two: some 1/32 a datagram at 100 flows
    assert work["pool_scans"] == 0
    # a block's bytes: summed at most once, and not at all by the joined pass of many flows (it knows
    # them); before, four sums a block on its way (netif queue and account, wire, receiving netif),
    # so 4/32 a datagram at 100 flows against 4/256 at 1
    assert work["block_sums"] <= work["blocks"]
    assert work["block_sums"] * 256 <= work["datagrams"]  # at most one a 256, as 1 flow's one block a pull


def test_the_switchs_looks_and_bells_do_not_grow_with_the_flows(monkeypatch):
    """Per flow batch, one look at its TX ring under one lock (it asked `pull_few`, then `pull`: two);
    per datagram, no more doorbells at 100 flows than at 1 while the trend changes every round
    (each change rang all 100 senders, though none reads its events: 0.05 a datagram against
    0.009 at 1 flow, whose one batch of 256 a round carries 8 times the datagrams)."""
    one = _run(1, monkeypatch, 8, changes=True)
    monkeypatch.undo()
    many = _run(100, monkeypatch, 1, changes=True)
    assert many["looks"] == many["pulls"] == 300  # one a flow's batch
    assert many["bells"] / many["datagrams"] <= 1.2 * one["bells"] / one["datagrams"]
    # no sender read the announcement before the count: the three changes in it post none (each
    # posted to all 100, a cold ring and a lock each: 300)
    assert many["adv_posts"] == one["adv_posts"] == 0


class _Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_trend_change_tells_a_channel_that_read_the_last_one_and_skips_one_that_did_not():
    """The announcement (usnet.domain.netif.advisory `_announce`, `_recheck`): posted and rung when the
    channel has read the last one posted to it; skipped (no event, no bell) while it has not; once it
    has read, the recheck within RECHECK tells it the newest trend it missed, and every change after
    is its own event again. A channel that never reads costs nothing at a change after its first."""
    clock = _Clock()
    d = Domain()
    w = MemWire()
    d.add_netif("a", w.a, f"{A}/24", clock=clock)
    c = Client.local(d)
    try:
        s = c.udp_socket("a", 0)
        mute = [c.udp_socket("a", 0) for _ in range(20)]  # never read their events
        bell = s.channel.doorbell_fd
        adv = d.advisories["a"]

        def change(trend: Trend) -> bool:
            """Announce `trend`; whether it rang the channel's bell (which is then drained)."""
            with d.lock:
                adv.trend = trend
                adv._announce(trend)
            return rung()

        def rung() -> bool:
            got = bool(select.select([bell], [], [], 0)[0])
            s.channel.drain_doorbell()
            return got

        def read() -> list[int]:
            return [e.value for e in s.events() if e.type == EventType.ADVISORY_UPDATED]

        s.channel.drain_doorbell()
        read()
        assert change(Trend.DOWN)  # never told: posted, rung
        assert not change(Trend.UP)  # the last one is unread: skipped, no bell
        assert not change(Trend.DOWN)
        assert read() == [Trend.DOWN]  # only what was posted; the advisory holds the newest
        assert not change(Trend.UP)  # read, but not yet rechecked
        with d.lock:
            assert adv.turn() is not None  # a recheck is owed: the loop wakes for it
            clock.now += 0.1
            adv.turn()
        assert not rung()  # not yet due
        clock.now += RECHECK
        with d.lock:
            adv.turn()
        assert rung()  # the recheck: it read, and missed a change, so it is told the newest
        assert read() == [Trend.UP]
        assert change(Trend.DOWN)  # watched again: every change it reads in between is its own event
        assert read() == [Trend.DOWN]
        assert change(Trend.UP)
        assert read() == [Trend.UP]
        for m in mute:  # the first change posted to each, nothing since
            assert [e.value for e in m.events() if e.type == EventType.ADVISORY_UPDATED] == [Trend.DOWN]
    finally:
        c.close()
        d.stop()
