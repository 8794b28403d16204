"""Who may have low-latency access, and how much: the agent's policy (docs/architecture.md, "Low latency").

A policy is a list of entries. An entry names whom it is for, by uid, by
program, or both (then both must match), the service classes it allows,
and the most each lease under it may have: a rate (bit/s, at the link, so
Ethernet headers count) and a largest packet (bytes, the IP packet). An
entry may also bound the sum: `total_rate`, the most all the leases one uid
holds under it on one netif may add up to. Without it a uid that opens many
flows may lease each at the entry's rate, and take a netif's whole LL share
from the other entitled clients (docs/design-notes.md, "The agent"). A
request is entitled if any entry that matches its sender covers its class,
rate and packet size, and has room for its rate. Nothing matches: no LL
access (default deny).

The uid is the kernel's (SO_PEERCRED). The program is what the client said
in `Hello`: a label, not a credential, since any process can say any name.
An entry with only a program entitles every uid that claims it; pair it
with a uid where that matters.

Service classes name the kind of traffic so that a policy can give voice
and not video; the scheduler itself has one LL class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from usnet.abi.protocol import LeaseRefusal

__all__ = [
    "DSCP_BEST_EFFORT", "MAX_LATENCY", "MAX_PACKET", "MAX_RATE", "MIN_PACKET", "SERVICE_CLASSES", "SERVICE_DSCP",
    "Policy", "PolicyEntry", "Who", "latency_ok", "packet_ok", "rate_ok",
]

#: The service classes a lease may ask for.
SERVICE_CLASSES = ("voice", "video", "interactive", "control")
#: The DSCP (RFC 2474) the flow switch writes into every packet of a flow holding a lease of each
#: class; a flow without a lease sends best effort (0). Voice is Expedited Forwarding (RFC 3246),
#: video AF41 (RFC 4594's multimedia conferencing); the other classes have no marking of their
#: own: the LL scheduler is usnet's, and the network beyond owes them nothing more than best effort.
SERVICE_DSCP = {"voice": 46, "video": 34, "interactive": 0, "control": 0}
DSCP_BEST_EFFORT = 0
#: Bounds on any lease's parameters, so nonsense never reaches admission.
MAX_RATE = 1e12  # bit/s
MIN_PACKET, MAX_PACKET = 20, 65535  # bytes: an IP header, the largest IP packet
MAX_LATENCY = 60.0  # seconds


@dataclass(frozen=True)
class Who:
    """Whom a request comes from: the kernel's uid and the program the client named."""

    uid: int
    program: str = ""


# The range tests compare, and convert nothing: NaN and infinities fail them, and an int too large
# for a float (which `math.isfinite` raised OverflowError on, not a refusal) is compared exactly
def rate_ok(rate: object) -> bool:
    return isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 < rate <= MAX_RATE


def latency_ok(latency: object) -> bool:
    return isinstance(latency, (int, float)) and not isinstance(latency, bool) and 0 < latency <= MAX_LATENCY


def packet_ok(size: object) -> bool:
    return isinstance(size, int) and not isinstance(size, bool) and MIN_PACKET <= size <= MAX_PACKET


@dataclass(frozen=True)
class PolicyEntry:
    """One grant of LL access: for whom, which classes, the most per lease (and per uid, `total_rate`),
    the tightest target (`min_target`)."""

    classes: frozenset[str]
    max_rate: float
    max_packet: int
    uid: int | None = None
    program: str | None = None
    total_rate: float | None = None  # bit/s: the most one uid's leases under this entry sum to, per netif
    min_target: float | None = None  # seconds: the tightest latency target (None: the netif's full bound)

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", frozenset(self.classes))
        if self.uid is None and self.program is None:
            raise ValueError("a policy entry needs a uid or a program (or both)")
        if self.uid is not None and (isinstance(self.uid, bool) or not isinstance(self.uid, int)
                                     or not 0 <= self.uid <= 0xFFFFFFFF):
            raise ValueError(f"policy uid must be a uid, not {self.uid!r}")
        if self.program is not None and not (isinstance(self.program, str) and 1 <= len(self.program) <= 255):
            raise ValueError(f"policy program must be a name of 1 to 255 characters, not {self.program!r}")
        if not self.classes or not self.classes <= set(SERVICE_CLASSES):
            raise ValueError(f"policy classes must be some of {', '.join(SERVICE_CLASSES)}, "
                             f"not {sorted(self.classes)!r}")
        if not rate_ok(self.max_rate):
            raise ValueError(f"policy max_rate must be bit/s from 0 to {MAX_RATE:g}, not {self.max_rate!r}")
        if self.total_rate is not None and not rate_ok(self.total_rate):
            raise ValueError(f"policy total_rate must be bit/s from 0 to {MAX_RATE:g}, not {self.total_rate!r}")
        if self.min_target is not None and not latency_ok(self.min_target):
            raise ValueError(f"policy min_target must be seconds above 0 and at most {MAX_LATENCY:g}, "
                             f"not {self.min_target!r}")
        if not packet_ok(self.max_packet):
            raise ValueError(f"policy max_packet must be from {MIN_PACKET} to {MAX_PACKET}, "
                             f"not {self.max_packet!r}")

    def matches(self, who: Who) -> bool:
        return ((self.uid is None or self.uid == who.uid)
                and (self.program is None or self.program == who.program))

    def covers(self, service_class: str, rate: float, max_packet: int) -> bool:
        return service_class in self.classes and rate <= self.max_rate and max_packet <= self.max_packet

    def least_target(self, floor: float) -> float:
        """The tightest latency target a lease under this entry may have on a netif whose full bound is `floor`."""
        return floor if self.min_target is None else self.min_target


class Policy:
    """The entries, in order; `check` says whether a request is entitled, and if not why."""

    def __init__(self, entries: Iterable[PolicyEntry] = ()) -> None:
        self.entries = tuple(entries)

    def check(self, who: Who, service_class: str, rate: float, max_packet: int, latency_target: float | None = None,
              floor: float = 0.0, held: Callable[[PolicyEntry], float] | None = None,
              ) -> tuple[LeaseRefusal, str] | None:
        """None if entitled; else (NOT_ENTITLED or ABOVE_ENTITLEMENT, a message that says why).

        `latency_target`: checked against each entry's least target, its `min_target` or else
        `floor` (the netif's full bound, the agent's to say); None leaves the target unchecked.
        `held(entry)`: the bit/s `who`'s uid holds already under `entry` on the netif asked for
        (the agent's count); None checks the lease alone (a reload: what was granted stays).
        """
        mine = [e for e in self.entries if e.matches(who)]
        sized = [e for e in mine if e.covers(service_class, rate, max_packet)]
        covering = [e for e in sized if latency_target is None or latency_target >= e.least_target(floor)]
        if any(held is None or e.total_rate is None or held(e) + rate <= e.total_rate for e in covering):
            return None
        named = f"uid {who.uid}" + (f" (program {who.program!r})" if who.program else "")
        if covering:  # each has a total_rate, and this rate does not fit what the uid holds
            assert held is not None
            e = max(covering, key=lambda e: (e.total_rate or 0.0) - held(e))
            return (LeaseRefusal.ABOVE_ENTITLEMENT, f"{named} holds {held(e):g} bit/s of leases on this netif "
                    f"under an entry whose total_rate is {e.total_rate:g} bit/s: {rate:g} bit/s more does not fit")
        if sized:  # the rate and size are given, but not so tight a target
            assert latency_target is not None
            least = min(e.least_target(floor) for e in sized)
            return (LeaseRefusal.ABOVE_ENTITLEMENT, f"{named} may ask for latency targets of at least "
                    f"{least * 1e3:.3g} ms for {service_class!r} on this netif, not {latency_target * 1e3:.3g} ms "
                    f"(a tighter one needs a policy entry's min_target)")
        if not mine:
            return LeaseRefusal.NOT_ENTITLED, f"{named} has no low-latency entitlement"
        fits = [e for e in mine if service_class in e.classes]
        if not fits:
            allowed = sorted(set().union(*(e.classes for e in mine)))
            return LeaseRefusal.NOT_ENTITLED, f"{named} may have {', '.join(allowed)}, not {service_class!r}"
        rate_cap = max(e.max_rate for e in fits)
        pkt_cap = max(e.max_packet for e in fits)
        return (LeaseRefusal.ABOVE_ENTITLEMENT, f"{named} may have at most {rate_cap:g} bit/s and {pkt_cap}-byte "
                f"packets of {service_class!r}, not {rate:g} bit/s and {max_packet}-byte packets")

    def __len__(self) -> int:
        return len(self.entries)
