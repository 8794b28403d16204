"""ICMP echo for `usnet ping`: a host duty of the switch, on behalf of a session.

Why a duty and not an ICMP flow: a flow would need a new kind of flow in the
table, the receive demux by echo identifier, and a transmit check that lets a
client's channel send only echo requests with its own identifier, from its
netif's address, at a bounded rate (everything Linux's ping sockets check).
The switch already builds and sends ICMP of its own (echo replies, unreachables)
and already parses every echo reply that reaches usnet's address; sending an
echo request for a session and keeping the replies whose identifier is that
session's is a few lines here, and the client sends no packet at all, so there
is nothing of its to check. The rtt is the switch's: from when it queued the
request to when the reply came in, without the control round trips.

Bounds: one identifier per session and netif, at most `KEEP` requests
remembered and `KEEP` replies held until taken; a session that is not root's
(or the domain's uid) sends at most one request per `MIN_GAP` seconds, as
ping(8) refuses an interval below 0.2 s to users.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

__all__ = ["KEEP", "MIN_GAP", "EchoDesk", "Probe"]

KEEP = 64
MIN_GAP = 0.2


@dataclass
class Probe:
    session: int
    ident: int
    sent: OrderedDict[int, float] = field(default_factory=OrderedDict)  # seq -> when it went out
    replies: deque[tuple[int, int, int, int]] = field(default_factory=lambda: deque(maxlen=KEEP))
    last_send: float = -1e9


class EchoDesk:
    """The echo identifiers of one switch's sessions and what came back for them."""

    def __init__(self) -> None:
        self.by_ident: dict[int, Probe] = {}
        self.by_session: dict[int, Probe] = {}
        self._next = 0x5500

    def probe(self, session: int) -> Probe:
        p = self.by_session.get(session)
        if p is None:
            for _ in range(0x10000):  # an identifier no other session here holds
                self._next = (self._next + 1) & 0xFFFF
                if self._next not in self.by_ident:
                    break
            else:
                raise OSError(11, "no echo identifier free")
            p = self.by_session[session] = self.by_ident[self._next] = Probe(session, self._next)
        return p

    def sent(self, p: Probe, seq: int, now: float) -> None:
        p.sent[seq] = now
        p.sent.move_to_end(seq)
        while len(p.sent) > KEEP:
            p.sent.popitem(last=False)
        p.last_send = now

    def reply(self, ident: int, seq: int, ttl: int, size: int, now: float) -> bool:
        """An echo reply reached usnet's address: True if it answers one of our sessions' requests."""
        p = self.by_ident.get(ident)
        if p is None:
            return False
        t = p.sent.get(seq)
        if t is None:
            return False
        p.replies.append((seq, ttl, int((now - t) * 1e9), size))
        return True

    def take(self, p: Probe) -> list[tuple[int, int, int, int]]:
        out = list(p.replies)
        p.replies.clear()
        return out

    def forget(self, session: int) -> None:
        p = self.by_session.pop(session, None)
        if p is not None:
            self.by_ident.pop(p.ident, None)
