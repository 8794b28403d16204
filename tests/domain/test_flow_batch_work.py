"""The domain's work per flow batch at 1 and at 100 UDP flows, counted (issue 18: datagrams/s with
1,000 flows within 20 % of 1 flow).

One flow sends 8 batches of 32 a round (the switch takes them as one batch of 256); 100 flows one
each. What the switch pays per batch is then paid 8 times as often per datagram at 100 flows,
whatever the flow count itself: so the work that must not grow with the flows is the work per
batch. Counted with a trend change of the sending netif's advisory every round (as
a loaded link's trend moves while 1,000 flows send):

- the switch's looks at a flow's TX ring, each under the pipe's lock (`FlowPort.pull`,
  `pull_few`, `pull_any`), per batch: one (it asked `pull_few`, then `pull`: two);
- the doorbells the domain writes, per datagram: no more at 100 flows than at 1 (each trend
  change rang every flow's bell, although none of these senders reads its events: 100 `write`s a
  change).

Every datagram still arrives, from its own sender. No timing.
"""

from __future__ import annotations

import select

from tests.helpers.util import close_all
from usnet.abi.advisory import Trend
from usnet.abi.events import EventType
from usnet.client.session import Client
from usnet.domain.loop import Domain
from usnet.domain.switch.port import FlowPort
from usnet.domain.userpipe import PipeEnd
from usnet.drivers.memwire import MemWire

A, B = "10.94.0.1", "10.94.0.2"
BATCH = 32
ROUNDS = 3


def _work_per_batch(flows: int, per: int, monkeypatch) -> dict[str, float]:
    d = Domain()
    w = MemWire()
    d.add_netif("a", w.a, f"{A}/24")
    d.add_netif("b", w.b, f"{B}/24")
    c = Client.local(d)
    try:
        rx = c.udp_socket("b", 6000, ring_size=8192, packets=16384)
        socks = [c.udp_socket("a", 0, ring_size=256, packets=512) for _ in range(flows)]
        ports = {s.getsockname()[1]: i for i, s in enumerate(socks)}
        adv = d.advisories["a"]
        work = {"looks": 0, "bells": 0, "batches": 0}

        def counted(name: str, key: str):
            orig = getattr(FlowPort, name)

            def f(self, *a, **kw):
                work[key] += 1
                return orig(self, *a, **kw)
            monkeypatch.setattr(FlowPort, name, f)

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

        def change(k: int) -> None:  # the trend moves, as `NetifAdvisory.publish` finds it (with the loop's lock)
            with d.lock:
                adv.trend = Trend.DOWN if k % 2 else Trend.UP
                adv._announce(adv.trend)

        for s in socks:  # each flow warmed (ARP, its first lending) and told of a first change: not counted
            s.sendto(b"w", (B, 6000))
        assert drain(flows) == flows
        change(0)
        for name in ("pull", "pull_few", "pull_any"):
            if hasattr(FlowPort, name):
                counted(name, "looks")
        orig_take = FlowPort._take

        def take(self, *a, **kw):
            out = orig_take(self, *a, **kw)
            work["batches"] += len(out[0]) > 0
            return out
        monkeypatch.setattr(FlowPort, "_take", take)
        orig_bell = PipeEnd.ring_bell

        def bell(self):
            work["bells"] += 1
            orig_bell(self)
        monkeypatch.setattr(PipeEnd, "ring_bell", bell)
        got = 0
        for k in range(1, ROUNDS + 1):
            for i, s in enumerate(socks):
                for _ in range(per):
                    assert s.send_many([i.to_bytes(2, "big") * 32] * BATCH, (B, 6000)) == BATCH
            change(k)
            got += drain(flows * BATCH * per)
        assert got == ROUNDS * flows * BATCH * per  # every datagram arrived
        for s in socks:  # every change reached every sender, one event each (not coalesced; the advisory's
            # own publications may have found more changes meanwhile)
            assert [e.type for e in s.events()].count(EventType.ADVISORY_UPDATED) >= ROUNDS + 1
        return {"looks_a_batch": work["looks"] / work["batches"], "bells_a_datagram": work["bells"] / got,
                "batches": work["batches"]}
    finally:
        close_all(c, d, w)


def test_the_switchs_work_per_flow_batch_does_not_grow_with_the_flows(monkeypatch):
    one = _work_per_batch(1, 8, monkeypatch)
    monkeypatch.undo()
    many = _work_per_batch(100, 1, monkeypatch)
    assert one["batches"] >= ROUNDS and many["batches"] == ROUNDS * 100  # one batch a flow a round
    assert one["looks_a_batch"] == many["looks_a_batch"] == 1  # one look a batch, under one lock (it was 2)
    # the doorbells the domain writes, per datagram: at 100 flows no more than at 1 (each change rang
    # all 100 senders: 0.05 a datagram against 0.009); they were rung for the first change, uncounted
    assert many["bells_a_datagram"] <= 1.2 * one["bells_a_datagram"]


def test_a_trend_change_rings_a_channel_that_read_the_last_one_and_not_one_that_did_not():
    """The announcement's bell (usnet.domain.netif.advisory `_announce`): rung when the channel has read
    the last announcement rung, not again while it has not; every change is still its own event."""
    d = Domain()
    w = MemWire()
    d.add_netif("a", w.a, f"{A}/24")
    d.add_netif("b", w.b, f"{B}/24")
    c = Client.local(d)
    try:
        s = c.udp_socket("a", 0)
        bell = s.channel.doorbell_fd
        adv = d.advisories["a"]

        def change(trend: Trend) -> bool:
            """Announce `trend`; whether it rang the channel's bell (which is then drained)."""
            with d.lock:
                adv.trend = trend
                adv._announce(trend)
            rung = bool(select.select([bell], [], [], 0)[0])
            s.channel.drain_doorbell()
            return rung

        def read() -> list[int]:
            return [e.value for e in s.events() if e.type == EventType.ADVISORY_UPDATED]

        s.channel.drain_doorbell()
        read()
        assert change(Trend.DOWN)  # nothing unread: rung
        assert not change(Trend.UP)  # the last one rung is unread: its bell woke the client already
        assert not change(Trend.DOWN)
        assert read() == [Trend.DOWN, Trend.UP, Trend.DOWN]  # each change its own event, in order
        assert change(Trend.UP)  # read: the next change rings again
        assert read() == [Trend.UP]
        assert change(Trend.DOWN)
    finally:
        close_all(c, d, w)
