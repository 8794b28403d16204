"""A trend change's bell (issue 18: 1,000 UDP flows, each rung at every change though none reads its
events): rung for a channel that has read the last announcement rung, not again while it has not.
Every change is still its own event, in order. No timing.
"""

from __future__ import annotations

import select

from tests.helpers.util import close_all
from usnet.abi.advisory import Trend
from usnet.abi.events import EventType
from usnet.client.session import Client
from usnet.domain.loop import Domain
from usnet.drivers.memwire import MemWire

A, B = "10.94.0.1", "10.94.0.2"


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
