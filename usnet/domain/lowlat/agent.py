"""The low-latency agent: leases of the LL class, for flows.

See docs/architecture.md, "Low latency", and docs/design-notes.md, "The agent".

An application asks for LL access for one of its flows: a service class, a
rate, a largest packet and a latency target. The agent

1. checks the parameters (BAD_PARAMETERS: what no lease can have);
2. checks the netif has LL capacity (NO_LL_CAPACITY): a link rate and LL slots;
3. checks entitlement against the policy (NOT_ENTITLED, ABOVE_ENTITLEMENT): the
   class, rate and packet size, and the latency target, which must be at least
   the entry's `min_target`, or without one the netif's `full_bound`;
4. admits: the rates granted on the netif, this one included, must fit its
   LL capacity, `ll_share * link_rate` (OVER_SUBSCRIBED); and the LL wait
   bound with this lease's burst added must stay within this lease's latency
   target (LATENCY_UNACHIEVABLE) and every other lease's on the netif
   (OVER_SUBSCRIBED: granting it would break theirs);
5. grants: a `Grant` (the agent's record of a lease) with an id, an expiry `ttl` seconds ahead, and a
   `Policer` that holds the flow to its rate.

A refusal changes nothing. Leases end by release, by expiry (`expire(now)`),
by a policy reload that no longer entitles them (`reload`), or when their
flow or netif goes (`revoke_flow`, `drop_link`); each of these returns the
leases it ended, for the domain to move their flows back to the general
class and tell their channels.

Sans-I/O: the time is passed in, nothing here touches a netif, a clock or a
channel. Flows, owners and netifs are opaque keys to the agent; the domain
checks that a flow is the asker's own before it asks.

The wait bound (the latency target is checked against it): an LL frame
with nothing ahead of it in its class waits at most `access`: a horizon of
general frames already handed to the device, the longest run of general
slots, the slot in progress and one frame (`LLLink.of_scheduler`). Policed
flows whose rates sum to at most the LL capacity never have more than their
bursts queued ahead of it, and the class drains those at its capacity, so
the bound is `access + 8 * sum(bursts) / capacity` (the delay bound of a
rate-latency server under token-bucket arrivals). It is the wait inside the
domain, not the path's latency, and not the domain loop's own lateness.

Why a target needs an entitlement to be tight (docs/design-notes.md, "Tight latency
targets are an entitlement"):
a granted target is a promise, and step 4 keeps it by refusing later leases
whose bursts would break it. A target at the netif's full bound, `access +
window`, refuses nobody while the netif's bursts fit what its LL class drains
in `window`: that much every lease may have. A tighter target shrinks the
room every later lease on the netif shares (one of 1 bit/s, at the bound with
itself alone, once refused everyone), so only a policy entry's `min_target`
gives one, and the refusals it can cause are the ones its entry allows.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from usnet.abi.events import RevokeReason
from usnet.abi.protocol import LeaseRefusal
from usnet.domain.lowlat.policer import Policer
from usnet.domain.lowlat.policy import (
    MAX_LATENCY,
    MAX_PACKET,
    MAX_RATE,
    MIN_PACKET,
    SERVICE_CLASSES,
    Policy,
    PolicyEntry,
    Who,
    latency_ok,
    packet_ok,
    rate_ok,
)

__all__ = ["DEFAULT_TTL", "Agent", "Grant", "LLLink", "Refusal", "burst_of", "check_seconds", "check_ttl"]

ETH_OVERHEAD = 14  # the link carries an Ethernet header per packet: rates and bursts count it
DEFAULT_TTL = 30.0  # seconds a grant or renewal lasts
#: The burst a lease's policer allows: two of its largest frames, or what its rate
#: carries in BURST_TIME, whichever is more. The domain takes a flow's packets when
#: its loop wakes, so what a client sent at its rate over one wake-up arrives at once.
BURST_FRAMES = 2
BURST_TIME = 0.005


@dataclass(frozen=True)
class LLLink:
    """What the agent needs of a netif: its LL capacity, its LL access wait, its MTU."""

    capacity: float  # bit/s of the link reserved for the LL class
    access: float  # seconds: the longest an LL frame waits with no LL frame ahead of it
    mtu: int

    @classmethod
    def of_scheduler(cls, sched: Any, mtu: int) -> LLLink | None:
        """From a netif's SlotScheduler (usnet.domain.netif.txsched); None if it has no LL slots."""
        if sched is None or not sched.ll_slots:
            return None
        n, k = sched.frame_slots, sched.ll_slots
        gap = math.ceil((n - k) / k)  # the longest run of general slots
        access = sched.horizon + (gap + 2) * sched.slot_time
        peers = getattr(sched, "peers", None)
        if peers is not None:  # other workers' queues of the same link: what each granted before it saw ours
            access += (peers.n - 1) * sched.horizon
        return cls(capacity=sched.link_rate * k / n, access=access, mtu=mtu)

    @property
    def window(self) -> float:
        """Seconds: BURST_TIME, or two of the netif's largest frames at its LL capacity if they take longer."""
        return max(BURST_TIME, 8 * BURST_FRAMES * (self.mtu + ETH_OVERHEAD) / self.capacity)

    @property
    def full_bound(self) -> float:
        """The wait bound with `window` of bursts queued: the tightest target a policy entry without
        `min_target` gives, and one no later lease can break while the bursts fit that window."""
        return self.access + self.window


def burst_of(rate: float, max_packet: int) -> int:
    """The bytes a lease's policer lets through at once (see BURST_TIME)."""
    return max(BURST_FRAMES * (max_packet + ETH_OVERHEAD), math.ceil(rate * BURST_TIME / 8))


@dataclass(frozen=True)
class Refusal:
    reason: LeaseRefusal
    message: str


@dataclass(eq=False)
class Grant:
    """A lease as the agent keeps it: holder, flow, terms and policer. (The client's handle on
    it is usnet.client.lease.Lease; the two are named apart because they live on different sides.)"""

    id: int
    owner: Hashable  # who may renew and release it (the domain's session)
    who: Who
    netif: str
    flow: Hashable  # the domain's key for the flow: its channel id
    service_class: str
    rate: float
    max_packet: int
    latency_target: float
    burst: int
    expires: float
    policer: Policer

    def info(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "netif": self.netif, "channel": self.flow, "uid": self.who.uid,
                "program": self.who.program, "service_class": self.service_class, "rate": self.rate,
                "max_packet": self.max_packet, "latency_target": self.latency_target, "burst": self.burst,
                "expires_in": round(self.expires - now, 3), "policer": self.policer.info()}


class Agent:
    """Leases of the LL class per netif, under a policy (see the module docstring)."""

    def __init__(self, policy: Policy | None = None, ttl: float = DEFAULT_TTL) -> None:
        self.policy = policy or Policy()
        self.ttl = check_ttl(ttl)
        self.links: dict[str, LLLink] = {}
        self.leases: dict[int, Grant] = {}
        self._by_flow: dict[tuple[str, Hashable], Grant] = {}
        self._ids = itertools.count(1)
        self.granted = 0
        self.renewed = 0
        self.refused: Counter = Counter()  # by LeaseRefusal
        self.ended: Counter = Counter()  # by RevokeReason name

    # -- netifs ---------------------------------------------------------------------------

    def set_link(self, netif: str, link: LLLink | None) -> None:
        """A netif and its LL capacity (None: it has none, and every request for it is refused)."""
        if link is None:
            self.links.pop(netif, None)
        else:
            self.links[netif] = link

    def drop_link(self, netif: str) -> list[Grant]:
        """The netif went away: its leases end."""
        self.links.pop(netif, None)
        return self._end([lease for lease in self.leases.values() if lease.netif == netif], RevokeReason.CLOSED)

    def floor(self, netif: str) -> float:
        """The tightest target a policy entry without `min_target` gives on `netif` (0: no LL link now)."""
        link = self.links.get(netif)
        return 0.0 if link is None else link.full_bound

    def granted_rate(self, netif: str) -> float:
        return math.fsum(lease.rate for lease in self.leases.values() if lease.netif == netif)

    def held_under(self, entry: PolicyEntry, uid: int, netif: str) -> float:
        """Bit/s of leases `uid` holds on `netif` that `entry` matches (what its total_rate bounds)."""
        return math.fsum(lease.rate for lease in self.leases.values()
                         if lease.netif == netif and lease.who.uid == uid and entry.matches(lease.who))

    def wait_bound(self, netif: str, extra_burst: int = 0) -> float:
        """The LL wait bound of a netif with its leases (and `extra_burst` more bytes of burst)."""
        link = self.links[netif]
        bursts = sum(lease.burst for lease in self.leases.values() if lease.netif == netif) + extra_burst
        return link.access + 8 * bursts / link.capacity

    # -- requests -------------------------------------------------------------------------

    def request(self, who: Who, netif: str, flow: Hashable, service_class: str, rate_bps: float,
                max_packet: int, latency_target: float, now: float, owner: Hashable = None) -> Grant | Refusal:
        """A lease for `flow` on `netif`, or the refusal that says why not (and changes nothing)."""
        bad = _bad_parameters(service_class, rate_bps, max_packet, latency_target)
        if bad:
            return self.refuse(LeaseRefusal.BAD_PARAMETERS, bad)
        link = self.links.get(netif)
        if link is None:
            return self.refuse(LeaseRefusal.NO_LL_CAPACITY,
                                f"netif {netif!r} has no low-latency slots (it needs a link_rate and an ll_share)")
        if max_packet > link.mtu:
            return self.refuse(LeaseRefusal.BAD_PARAMETERS,
                                f"max_packet {max_packet} is larger than the MTU of {netif!r} ({link.mtu})")
        held = self._by_flow.get((netif, flow))
        if held is not None:
            return self.refuse(LeaseRefusal.ALREADY_LEASED, f"the flow holds lease {held.id}: renew or release it")
        denied = self.policy.check(who, service_class, rate_bps, max_packet, latency_target, link.full_bound,
                                   held=lambda e: self.held_under(e, who.uid, netif))
        if denied:
            return self.refuse(*denied)
        rates = [lease.rate for lease in self.leases.values() if lease.netif == netif]
        if math.fsum([*rates, rate_bps]) > link.capacity:  # the sum the property test checks, exactly
            used = math.fsum(rates)
            return self.refuse(LeaseRefusal.OVER_SUBSCRIBED,
                                f"{rate_bps:g} bit/s does not fit the LL share of {netif!r}: "
                                f"{used:g} of {link.capacity:g} bit/s are granted")
        burst = burst_of(rate_bps, max_packet)
        bound = self.wait_bound(netif, burst)
        if bound > latency_target:
            return self.refuse(LeaseRefusal.LATENCY_UNACHIEVABLE,
                                f"the LL wait on {netif!r} can reach {bound * 1e3:.3g} ms with this lease, "
                                f"above the target of {latency_target * 1e3:.3g} ms")
        hurt = [lease for lease in self.leases.values() if lease.netif == netif and lease.latency_target < bound]
        if hurt:
            why = (f"a target under the netif's full bound of {link.full_bound * 1e3:.3g} ms, given by its "
                   f"policy entry's min_target" if hurt[0].latency_target < link.full_bound else
                   f"the bursts granted fill what the LL class drains in {link.window * 1e3:.3g} ms")
            return self.refuse(LeaseRefusal.OVER_SUBSCRIBED,
                                f"granting it would raise the LL wait on {netif!r} to {bound * 1e3:.3g} ms, "
                                f"past lease {hurt[0].id}'s target of {hurt[0].latency_target * 1e3:.3g} ms ({why})")
        lease = Grant(next(self._ids), owner, who, netif, flow, service_class, float(rate_bps), max_packet,
                      float(latency_target), burst, now + self.ttl, Policer(rate_bps, burst, max_packet))
        self.leases[lease.id] = lease
        self._by_flow[(netif, flow)] = lease
        self.granted += 1
        return lease

    def renew(self, lease_id: int, owner: Hashable, now: float) -> Grant | Refusal:
        """Extend a live lease of `owner` to `ttl` seconds from now."""
        lease = self.leases.get(lease_id)
        if lease is None or lease.owner != owner:
            return self.refuse(LeaseRefusal.UNKNOWN_LEASE, f"no lease {lease_id} of yours")
        if lease.expires <= now:
            return self.refuse(LeaseRefusal.UNKNOWN_LEASE, f"lease {lease_id} has expired")
        lease.expires = now + self.ttl
        self.renewed += 1
        return lease

    def release(self, lease_id: int, owner: Hashable) -> Grant | Refusal:
        """End a lease of `owner` (the domain moves its flow back to the general class)."""
        lease = self.leases.get(lease_id)
        if lease is None or lease.owner != owner:
            return self.refuse(LeaseRefusal.UNKNOWN_LEASE, f"no lease {lease_id} of yours")
        return self._end([lease], RevokeReason.RELEASED)[0]

    def revoke_flow(self, netif: str, flow: Hashable) -> Grant | None:
        """The flow is closing: its lease, if it has one, ends."""
        lease = self._by_flow.get((netif, flow))
        return None if lease is None else self._end([lease], RevokeReason.CLOSED)[0]

    # -- time and policy ------------------------------------------------------------------

    def expire(self, now: float) -> list[Grant]:
        """End the leases whose time is up; returns them."""
        return self._end([lease for lease in self.leases.values() if lease.expires <= now], RevokeReason.EXPIRED)

    def next_expiry(self) -> float | None:
        return min((lease.expires for lease in self.leases.values()), default=None)

    def reload(self, policy: Policy, now: float, ttl: float | None = None) -> list[Grant]:
        """A new policy (and TTL, for grants and renewals from now on); returns the leases it no longer entitles.

        Leases it still entitles keep their expiry, rate and policer. Admission
        is not redone: capacity has not changed, and a reload only removes.
        """
        self.policy = policy
        if ttl is not None:
            self.ttl = check_ttl(ttl)
        gone = [lease for lease in self.leases.values()
                if policy.check(lease.who, lease.service_class, lease.rate, lease.max_packet, lease.latency_target,
                                self.floor(lease.netif)) is not None]
        return self._end(gone, RevokeReason.POLICY)

    # -- inside -----------------------------------------------------------------------------

    def refuse(self, reason: LeaseRefusal, message: str) -> Refusal:
        """A refusal, counted (the domain refuses UNKNOWN_FLOW itself, through here)."""
        self.refused[reason.value] += 1
        return Refusal(reason, message)

    def _end(self, leases: list[Grant], reason: RevokeReason) -> list[Grant]:
        for lease in leases:
            del self.leases[lease.id]
            del self._by_flow[(lease.netif, lease.flow)]
            self.ended[reason.name] += 1
        return leases

    def info(self, now: float) -> dict[str, Any]:
        return {"policy_entries": len(self.policy), "ttl": self.ttl,
                "capacity": {n: link.capacity for n, link in self.links.items()},
                "full_bound": {n: link.full_bound for n, link in self.links.items()},
                "granted_rate": {n: self.granted_rate(n) for n in self.links},
                "leases": [lease.info(now) for lease in self.leases.values()],
                "granted": self.granted, "renewed": self.renewed,
                "refused": dict(self.refused), "ended": dict(self.ended)}


def check_seconds(what: str, v: object) -> float:
    """`v` as seconds if it is a positive, finite number (not a bool); else ValueError naming `what`."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
        raise ValueError(f"{what} must be a positive number of seconds, not {v!r}")
    return float(v)


def check_seconds_or_off(what: str, v: object) -> float:
    """`v` as seconds, or 0 (the feature is off); else ValueError naming `what`."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0:
        return 0.0
    try:
        return check_seconds(what, v)
    except ValueError:
        raise ValueError(f"{what} must be 0 (never) or a positive number of seconds, not {v!r}") from None


def check_megabytes(what: str, v: object) -> int:
    """`v` as a whole number of MiB, 0 or more (0: off); else ValueError naming `what`."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{what} must be a whole number of MiB, 0 or more, not {v!r}")
    return v


def check_ttl(ttl: object) -> float:
    return check_seconds("lease_ttl", ttl)


def _bad_parameters(service_class: object, rate: object, max_packet: object, latency: object) -> str | None:
    """What is wrong with a request's parameters whatever the netif and policy, or None.

    The control protocol's decoder holds requests from other processes to the
    same bounds; these checks are for requests that arrive without decoding
    (an in-process client) and for anyone calling the agent directly.
    """
    if not (isinstance(service_class, str) and service_class in SERVICE_CLASSES):
        return f"service_class must be one of {', '.join(SERVICE_CLASSES)}, not {service_class!r}"
    if not rate_ok(rate):
        return f"rate must be bit/s above 0 and at most {MAX_RATE:g}, not {rate!r}"
    if not packet_ok(max_packet):
        return f"max_packet must be bytes from {MIN_PACKET} to {MAX_PACKET}, not {max_packet!r}"
    if not latency_ok(latency):
        return f"latency_target must be seconds above 0 and at most {MAX_LATENCY:g}, not {latency!r}"
    return None
