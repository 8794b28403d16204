"""SO_REUSEPORT groups: several unconnected flows of one uid on one port, and which gets a packet.

As on Linux, a port is shared only by flows that all asked for SO_REUSEPORT, of
the first one's uid (the port space checks both: usnet.domain.switch.ports).
The flow table then holds the port's members in a `ReuseGroup`, and in its
listener table, where a lone flow would be, the group's *front*: a Flow of no
channel of its own, whose `group` names the group. The receive paths gather
packets for it as for any flow (the look-up is the same dict read), and only
when they hand a batch over (per flow, not per packet) do they see `group` and
split the front's packets among the members: a port that is not shared pays
one attribute read per batch.

Which member: `choose`, a salted hash of the remote end (address, port; the
local end is the group's), modulo the members. A new TCP connection (a SYN
without ACK) is pinned: its 4-tuple is put in the exact table, pointing at the
member that got the SYN, so its later segments find that member in the
look-up every packet makes anyway, whatever joins or leaves the group meanwhile
(Linux keeps an accepted connection on its socket the same way). UDP is hashed
per datagram, as Linux's reuseport selection (no connection to pin).

UDP sockets that share a port by SO_REUSEADDR alone (`Flow.reuse_hash` False) are
members too, but Linux's lookup (__udp4_lib_lookup: the first socket of the best
score, and udp_lib_get_port puts a newly bound one at the head of the chain) gives
a unicast datagram to the most recently bound: so `pick` asks the newest member
first, and hashes only if that one asked for SO_REUSEPORT, among those that did
(Linux's reuseport group of that socket). Multicast goes to every member either way.

A member whose listening socket closes (P.Unlisten) is *retired*: new
connections hash over the others at once, its pinned connections stay with it
until its flow closes. A member that leaves takes its pins with it: the
connections it held or had queued are its own (its stack's; the domain resets
them if its process died), and new connections hash over the members left. The
group stays, with its front, while any member is left (one member costs a hash
per packet, not a look-up more). The pins are bounded
(`PINS_MAX` per group, the oldest forgotten first): forgetting a pin is
harmless while the members stay the same, since the hash gives the same member.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from usnet.domain.switch.table import Flow

__all__ = ["PINS_MAX", "ReuseGroup", "choose"]

PINS_MAX = 65536  # pinned TCP connections per group; the oldest is forgotten first
_SALT_MASK = (1 << 64) - 1


def choose(salt: int, raddr: bytes, rport: int, n: int) -> int:
    """The member (index in 0..n-1) the remote end (`raddr`, `rport`) goes to: stable for a
    remote end while `salt` and `n` stay; the salt (random per group) keeps a peer from picking
    its member by choosing its port, as Linux's hash is keyed."""
    return hash((salt, raddr, rport)) % n


class ReuseGroup:
    """The members of one shared port (on one netif), its front in the listener table, its pins."""

    __slots__ = ("front", "hashing", "members", "pins", "retired", "salt", "uid")

    def __init__(self, front: Flow, members: list[Flow], uid: int, rng: random.Random | None = None) -> None:
        self.front = front
        self.members = members  # the listening members, oldest first: new connections and datagrams go to them
        self.hashing = list(members)  # those that asked for SO_REUSEPORT (`regroup` keeps it)
        self.retired: list[Flow] = []  # members whose listener closed: they keep their pins only
        self.uid = uid
        self.salt = (rng or random.SystemRandom()).getrandbits(64) & _SALT_MASK
        # (proto, local port, remote address, remote port) -> member: the exact table's key
        self.pins: dict[tuple[int, int, bytes, int], Flow] = {}

    def regroup(self) -> None:
        """The members changed: which of them hash (the flow table calls this, not the packet path)."""
        self.hashing = [f for f in self.members if f.reuse_hash]

    def pick(self, raddr: bytes, rport: int) -> Flow:
        """The member a packet from (`raddr`, `rport`) goes to: the newest, if it shares by
        SO_REUSEADDR alone; else the hash over the SO_REUSEPORT members."""
        newest = self.members[-1]
        if not newest.reuse_hash:
            return newest
        m = self.hashing
        return m[choose(self.salt, raddr, rport, len(m))]

    def pin(self, exact: dict[tuple, Any], key: tuple[int, int, bytes, int], member: Flow) -> None:
        """A new TCP connection went to `member`: its later segments go there too (the exact table)."""
        pins = self.pins
        if key in pins:
            return
        if len(pins) >= PINS_MAX:  # the oldest goes (dicts keep insertion order)
            old = next(iter(pins))
            if exact.get(old) is pins.pop(old):
                del exact[old]
        pins[key] = member
        exact[key] = member

    def unpin(self, exact: dict[tuple, Any], member: Flow | None = None) -> None:
        """Forget `member`'s pins (every pin if None), from the exact table too."""
        for key, m in list(self.pins.items()):
            if member is None or m is member:
                del self.pins[key]
                if exact.get(key) is m:
                    del exact[key]
