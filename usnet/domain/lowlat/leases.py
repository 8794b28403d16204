"""The domain's side of the low-latency agent: lease requests in, traffic classes and events out.

The agent (usnet.domain.lowlat.agent) decides; this applies what it decided to the
domain's flows:

- a grant puts the flow's netif queue in the LL class (`Domain.set_flow_class`),
  gives the flow its policer (the switch asks it once per transmit batch),
  and posts LEASE_GRANTED on the flow channel's EVENT ring;
- when a lease ends (release, expiry, a policy reload, its channel closing,
  its netif going) the flow goes back to the general class with the frames
  it has queued, in order, and loses its policer; unless its channel is
  going too, LEASE_REVOKED is posted with the reason and the number of
  frames that moved.

A session may ask only for its own flow channels, and renew or release only
its own leases. Expiry runs from the domain's loop (`tick`), whose sleep is
cut short for the next expiry: no timer thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from usnet.abi import protocol as P
from usnet.abi.events import EventType, RevokeReason
from usnet.abi.protocol import LeaseRefusal
from usnet.domain.lowlat.agent import Agent, Grant, LLLink, Refusal
from usnet.domain.lowlat.policer import Policer
from usnet.domain.lowlat.policy import DSCP_BEST_EFFORT, SERVICE_DSCP, Policy, Who

if TYPE_CHECKING:
    from usnet.domain.loop import Domain
    from usnet.domain.sessions import ChannelRef, Session
    from usnet.domain.switch.flowswitch import FlowSwitch

__all__ = ["LeaseDesk"]

log = logging.getLogger("usnet.domain.lowlat")


class LeaseDesk:
    """The agent, wired to one domain's flows and channels (see the module docstring)."""

    def __init__(self, domain: Domain, agent: Agent, clock: Callable[[], float]) -> None:
        self.domain = domain
        self.agent = agent
        self.clock = clock
        # leases on flows another process serves (usnetd --workers: usnet.domain.workers): told
        # there that the lease ended; True if the flow was such a one
        self.remote_end: Callable[[Grant, RevokeReason], bool] | None = None

    # -- netifs ------------------------------------------------------------------------------

    def add_netif(self, sw: FlowSwitch) -> None:
        self.agent.set_link(sw.netif.name, LLLink.of_scheduler(sw.netif.sched, sw.netif.mtu))

    def remove_netif(self, name: str) -> None:
        for lease in self.agent.drop_link(name):
            self._fall_back(lease, RevokeReason.CLOSED)

    # -- control requests ----------------------------------------------------------------------

    def handle(self, session: Session, req: P.Request) -> P.Reply:
        """RequestLease, RenewLease or ReleaseLease from `session`: a grant, Done, or a refusal."""
        self.tick()  # a lease whose time is up is gone before anyone renews it
        now = self.clock()
        if isinstance(req, P.RequestLease):
            ref = self.domain.channels.get(req.channel)
            if ref is None or ref.session is not session or ref.flow is None or ref.switch is None:
                return _refused(self.agent.refuse(
                    LeaseRefusal.UNKNOWN_FLOW, f"channel {req.channel} is not a flow channel of this session"))
            got = self.agent.request(Who(session.uid, session.program), ref.switch.netif.name, req.channel,
                                     req.service_class, req.rate, req.max_packet, req.latency_target, now,
                                     owner=session.id)
            if isinstance(got, Refusal):
                return _refused(got)
            self.apply(ref, got.netif, got.id, got.service_class, got.rate, got.policer)
            log.info("lease %d: %s %g bit/s for channel %d of uid %d (%s) on %s", got.id, got.service_class,
                     got.rate, req.channel, session.uid, session.program or "-", got.netif)
            return self._granted(got, req.channel)
        if isinstance(req, P.RenewLease):
            got = self.agent.renew(req.lease, session.id, now)
            return _refused(got) if isinstance(got, Refusal) else self._granted(got, got.flow)
        if isinstance(req, P.ReleaseLease):
            got = self.agent.release(req.lease, session.id)
            if isinstance(got, Refusal):
                return _refused(got)
            self._fall_back(got, RevokeReason.RELEASED)
            return P.Done()
        raise P.ProtocolError(f"not a lease request: {type(req).__name__}")

    def apply(self, ref: ChannelRef, netif: str, lease: int, service_class: str, rate: float,
              policer: Policer) -> None:
        """Serve the flow of `ref` under a lease granted (here, or by usnetd for a worker's flow)."""
        assert ref.flow is not None
        self.domain.set_flow_class(netif, ref.flow.id, "ll")
        ref.flow.policer = policer
        ref.flow.dscp = SERVICE_DSCP[service_class]  # what the switch writes into its packets
        _post(ref, EventType.LEASE_GRANTED, 0, lease, int(rate))

    def _granted(self, lease: Grant, channel: Any) -> P.LeaseGranted:
        return P.LeaseGranted(lease.id, channel, lease.service_class, lease.rate, lease.max_packet,
                              lease.latency_target, lease.expires, self.agent.ttl, lease.burst)

    # -- ends of leases ------------------------------------------------------------------------

    def tick(self) -> float | None:
        """End the leases whose time is up; seconds until the next one is due (None: no lease)."""
        if not self.agent.leases:  # every turn of the loop asks: with no lease, nothing to read
            return None
        now = self.clock()
        for lease in self.agent.expire(now):
            self._fall_back(lease, RevokeReason.EXPIRED)
        due = self.agent.next_expiry()
        return None if due is None else max(0.0, due - now)

    def set_policy(self, policy: Policy, ttl: float | None = None) -> list[Grant]:
        """Apply a new policy: the leases it no longer entitles are revoked; returns them."""
        gone = self.agent.reload(policy, self.clock(), ttl)
        for lease in gone:
            self._fall_back(lease, RevokeReason.POLICY)
        return gone

    def channel_closing(self, ref: ChannelRef) -> None:
        """A flow channel is closing (or its session ended): its lease ends with it, silently."""
        if ref.flow is not None and ref.switch is not None:
            lease = self.agent.revoke_flow(ref.switch.netif.name, ref.flow.channel)
            if lease is not None:
                self._fall_back(lease, RevokeReason.CLOSED, ref)

    def _fall_back(self, lease: Grant, reason: RevokeReason, ref: ChannelRef | None = None) -> None:
        """The lease's flow back to the general class, its queued frames with it; tell the channel."""
        if ref is None and isinstance(lease.flow, int):  # the domain's key for a flow: its channel id
            ref = self.domain.channels.get(lease.flow)
            if ref is None and self.remote_end is not None and self.remote_end(lease, reason):
                return
        if ref is not None:
            self.unapply(ref, lease.netif, lease.id, reason)

    def unapply(self, ref: ChannelRef, netif: str, lease: int, reason: RevokeReason) -> None:
        """The flow of `ref` back to the general class, its queued frames with it; tell the channel
        (unless it is closing)."""
        if ref.flow is None or ref.switch is None:
            return
        flow, sw = ref.flow, ref.switch
        flow.policer = None
        flow.dscp = DSCP_BEST_EFFORT
        moved = 0
        if sw.flows.get(flow.id) is flow and self.domain.switches.get(netif) is sw:
            moved = sw.netif.queued(flow.id)[0]
            self.domain.set_flow_class(netif, flow.id, "general")
        if reason != RevokeReason.CLOSED:
            _post(ref, EventType.LEASE_REVOKED, reason, lease, moved)
        log.info("lease %d ended (%s): channel %s back in the general class with %d frames queued",
                 lease, reason.name.lower(), flow.channel, moved)

    def info(self) -> dict[str, Any]:
        return self.agent.info(self.clock())


def _refused(r: Refusal) -> P.LeaseRefused:
    return P.LeaseRefused(r.reason.value, r.message)


def _post(ref: ChannelRef, type_: int, code: int, value: int, aux: int) -> None:
    """An event on the flow channel's EVENT ring, and its bell.

    Under the pipe's lock: an in-process client's kick posts on the same ring from its own thread.
    """
    with ref.pipe.lock:
        if ref.pipe.defunct_reason is None:
            end = ref.pipe.ends[ref.role]
            end.events.post(type_, code, value=value, aux=aux)
            end.ring_bell()
