"""The flow switch: the multiplexer between one netif and many applications (docs/architecture.md).

One FlowSwitch per netif, made of parts with one job each, in this package:

* table   the flows, the tables that find a packet's flow, local ports (usnet.domain.switch.table);
* host    the link and the host's duties: ARP and Neighbour Discovery, framing, echo, port
          unreachable and RST for ports nobody holds, ICMP errors to the flow they quote;
* rx      the receive path: classify what the netif brings and deliver it to flows;
* tx      the general transmit path: pull a client's batch, check it against its flow
          (usnet.domain.switch.txguard), hand it to the netif;
* llpath  the low-latency transmit path, for the flows of the netif's LL class;
* local   packets to the netif's own addresses, from the transmit path straight to the receive path.

The class below only joins them, and keeps the time-driven duties that span
them (timers, the next deadline) and the status report.
"""

from __future__ import annotations

from typing import Any

from usnet.domain.switch.local import LocalPath
from usnet.proto.wire.ipv4 import ip_str
from usnet.proto.wire.ipv6 import ip6_str

__all__ = ["FlowSwitch"]


class FlowSwitch(LocalPath):
    """FlowSwitch(netif, ports=None, clock=time.monotonic, rx_mitigation=False) (usnet.domain.switch.table)."""

    def quiet(self) -> bool:
        """Whether a round of the domain loop would find nothing to do here (`Domain._service_switches`
        skips the switch): no polled flow, nothing queued at the netif or leaving a gone flow's queue,
        no AQM drop to report, no local delivery, no held receive bell, no neighbour being asked,
        no fragment waiting, and the device has nothing due (not asked of one that never has:
        `Capabilities.never_due`).

        Read from the state the round itself reads, not kept as a flag: whatever gives the switch
        work (a frame queued, a bell held, an ARP request sent) makes it busy by being there, and
        no path can forget to say so. One test in place of the round's dozen calls (issue 18).
        """
        n = self.netif
        if (self.polled or self.local_queue or self._held_bells or n.active or n.active_ll
                or n._retiring or n.aqm_drops or self._waits_for_time()):
            return False
        if n.caps.never_due:
            return True
        try:
            return n.driver.timeout() is None
        except Exception:  # busy: the round meets the device's error within its barrier, as it always did
            return False

    def _waits_for_time(self) -> bool:
        """Whether a fragment, a neighbour being asked or IGMP (usnet.domain.switch.multicast) waits for the clock
        (mostly not: the round then reads no clock for them). IGMP waits while one of the three timers
        `igmp_next` takes the soonest of is set: read here without that call, as `quiet` asks this up
        to twice a turn per switch (issue 18, usnetd's fixed cost per turn)."""
        return bool(self.reasm.table or self.arp.pending or self.nd.pending
                    or self._query_due or self._outbox_due or self._again_due is not None)

    def service_timers(self) -> None:
        """What is due by the clock: fragments that waited too long, neighbours to ask again."""
        if not self._waits_for_time():
            return  # no clock read (asked every turn a switch is busy)
        now = self.clock()
        if self.reasm.table:
            self.reasm.expire(now)  # counted as frag_timeout
        self.service_neighbours(now)
        self.igmp_timers(now)  # a query's answer, a report said again (usnet.domain.switch.multicast)

    def next_timeout(self) -> float | None:
        """Seconds until something of this switch is due: neighbours, the device, the netif's
        queued frames and pacing, fragments; None if nothing is."""
        if self.local_queue:
            return 0.0  # local deliveries left over from the last flush
        soonest = None if self.netif.caps.never_due else self.netif.driver.timeout()
        t = self.netif.next_timeout()
        if t is not None and (soonest is None or t < soonest):
            soonest = t
        if self._waits_for_time():
            now = self.clock()
            frag = self.reasm.next_deadline()
            for t in (self.arp.next_timer(now), self.nd.next_timer(now),
                      None if frag is None else max(0.0, frag - now),
                      None if (igmp := self.igmp_next()) is None else max(0.0, igmp - now)):
                if t is not None and (soonest is None or t < soonest):
                    soonest = t
        return soonest

    def info(self) -> dict[str, Any]:
        """The switch, its netif and its flows, for the domain's status; with the domain lock held
        (the loop closes flows and their memory: `Domain.status` is the way in from another thread)."""
        return {"netif": self.netif.info(), "flows": [f.describe() for f in self.flows.values()],
                "drops": dict(self.drops), "counts": {k: v for k, v in self.counts.items() if ":" not in k},
                "fragments": dict(self.frags),
                "arp": {ip_str(k): v[0].hex(":") for k, v in self.arp.entries.items()},
                "nd": {ip6_str(k): v[0].hex(":") for k, v in self.nd.entries.items()},
                "neighbour_tables": {name: {"entries": len(c.entries), "refused": c.refused, "evicted": c.evicted,
                                            "asking": len(c.pending), "abandoned": c.abandoned}
                                     for name, c in (("arp", self.arp), ("nd", self.nd))}}
