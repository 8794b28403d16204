"""Hostile readers of a netif's advisory announcements (docs/architecture.md, "Interface advisory").

A trend change is posted only to the channels that read the last announcement posted to
them; the others are looked at again once after a change (`_recheck`, issue 18). The event
ring's consumer counter that decides it is the client's to write. Clients that read only
when looked at, that write nonsense there (past the producer, far past it), or that never
read, must cost usnetd at most one post attempt per channel a change, no bell for nothing,
at most one recheck a change and none at all while nothing changes; and an honest reader
beside them is told every change. Memwire, no root; a clock the test moves.
"""

from __future__ import annotations

import select

from usnet.abi.advisory import Trend
from usnet.abi.events import EventProducer, EventType
from usnet.abi.ring import CONS
from usnet.client.session import Client
from usnet.domain.loop import Domain
from usnet.domain.netif.advisory import RECHECK, RECHECK_MAX
from usnet.drivers.memwire import MemWire


class _Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def _told(s) -> list[int]:
    return [e.value for e in s.events() if e.type == EventType.ADVISORY_UPDATED]


def test_readers_that_read_when_looked_at_or_lie_cost_one_post_a_change_and_one_recheck(monkeypatch):
    clock = _Clock()
    d = Domain()
    w = MemWire()
    d.add_netif("a", w.a, "10.93.0.1/24", clock=clock)
    c = Client.local(d)
    posts: dict[int, int] = {}
    real_post = EventProducer.post

    def post(self, *a, **kw):
        posts[id(self)] = posts.get(id(self), 0) + 1
        return real_post(self, *a, **kw)

    monkeypatch.setattr(EventProducer, "post", post)
    try:
        honest = c.udp_socket("a", 0)
        lurkers = [c.udp_socket("a", 0) for _ in range(10)]  # read only when a recheck is due
        liars = [c.udp_socket("a", 0) for _ in range(10)]  # their consumer counter: nonsense
        mute = [c.udp_socket("a", 0) for _ in range(30)]  # never read
        adv = d.advisories["a"]
        ring_of = {s: d.channels[s.channel.id].pipe.ends[0].events for s in (honest, *lurkers, *liars, *mute)}
        rechecks = []
        real_recheck = adv._recheck
        monkeypatch.setattr(adv, "_recheck", lambda now: (rechecks.append(now), real_recheck(now))[1])
        for s in ring_of:
            s.channel.drain_doorbell()
        for i, s in enumerate(liars):
            s.channel._events.q[CONS] = (1 << 63) if i % 2 else 1 << 40  # far past, or past, the producer
        posts.clear()

        changes = 0
        start = clock.now
        for _round in range(12):
            for _ in range(3):  # three changes at the same instant
                changes += 1
                with d.lock:
                    adv.trend = Trend.UP if changes % 2 else Trend.DOWN
                    adv._announce(adv.trend)
                assert _told(honest) == [adv.trend]  # the honest reader: every change, at once
            for s in lurkers:  # they read just before a recheck may look
                _told(s)
            clock.now += RECHECK / 2
            with d.lock:
                adv.turn()
        elapsed = clock.now - start
        assert 1 <= len(rechecks) <= min(12, elapsed / RECHECK + 1)  # at most one a change, one per RECHECK
        for s in liars:  # a post attempt a change at most (each refused: the counter is nonsense)
            assert posts.get(id(ring_of[s]), 0) <= changes
            assert not select.select([s.channel.doorbell_fd], [], [], 0)[0]  # no bell: nothing was posted
        for s in mute:  # the first change only
            assert posts.get(id(ring_of[s]), 0) == 1
        for s in lurkers:  # their own change, then a recheck's at most for each round
            assert posts.get(id(ring_of[s]), 0) <= 1 + 12
        # nothing changes any more: no recheck, and an idle netif's turn asks for no wake-up
        seen = len(rechecks)
        for _ in range(40):
            clock.now += RECHECK_MAX
            with d.lock:
                adv.turn()
        assert len(rechecks) <= seen + 1  # the one owed by the last change, then none
        with d.lock:
            assert adv.turn() is None
    finally:
        c.close()
        d.stop()
