"""A connector's ports and the 4-tuple each one is bound to: what its connections may send.

A connector channel (one per process, netif and family) is given blocks of
ephemeral ports (P.AddPorts); its connections take ports of them with no
message. The switch still checks every packet against its own connection's
4-tuple: a port of the blocks is *free* until the first SYN (no ACK) leaves
from it, which *binds* it to that SYN's remote (address, port), with no round
trip. From then on a packet from that port must go to exactly that remote end,
and a SYN from it to another one is refused, so no connection of the process
can send as a sibling. A free port sends nothing but that SYN, or a RST (the
stack's answer to a stray segment, which binds nothing). The binding goes when
the client says the connection is over (P.ReleasePorts, a notice, after
TIME-WAIT), when its block goes back, or with the channel.

Pure bookkeeping, O(1) per call: a dict and two 65,536-entry arrays (`mask`,
`keys`) that let the switch's column-wise pass check a whole batch of IPv4
rows with two fancy indexes (usnet.domain.switch.tx `_tx_fast_ok`).
"""

from __future__ import annotations

from enum import Enum

import numpy as np

__all__ = ["PortBindings", "Verdict", "key4"]

def key4(raddr: bytes, rport: int) -> int:
    """The u64 a bound IPv4 remote end has in `PortBindings.keys`: address << 16 | port, flagged."""
    return 1 << 48 | int.from_bytes(raddr, "big") << 16 | rport


class Verdict(Enum):
    """What a packet from a connector's local port may do (`PortBindings.check`)."""

    PASS = "pass"  # its port is bound to this remote end
    BIND = "bind"  # a SYN from a free port: it binds the port to this remote end
    FREE = "free"  # a RST from a free port: it may go, binding nothing
    NOT_HELD = "not_held"  # not a port of the blocks: SPOOFED_SOURCE
    UNBOUND = "unbound"  # anything else from a free port: SPOOFED_SOURCE (no connection holds it)
    ELSEWHERE = "elsewhere"  # its port is bound to another remote end: WRONG_DESTINATION


class PortBindings:
    """The ports a connector holds, and the remote end each bound one sends to."""

    def __init__(self) -> None:
        self.held: set[int] = set()
        self.bound: dict[int, tuple[bytes, int]] = {}  # local port -> (remote address, remote port)
        self.mask = np.zeros(65536, bool)  # held ports
        self.keys = np.zeros(65536, np.uint64)  # bound IPv4 ports: key4 of their remote end, else 0
        # the ports of a release being served (the domain drains the ring first, so the old
        # connections' last packets leave bound): a SYN from one of them was sent after the
        # release, and frees it at once (usnet.domain.switch.tx `_tx_connector`)
        self.releasing: set[int] = set()

    def hold(self, ports: list[int]) -> None:
        """Ports of a new block: held, free."""
        for p in ports:
            self.held.add(p)
            self.mask[p] = True

    def drop(self, ports: list[int]) -> list[tuple[int, bytes, int]]:
        """Ports no longer held (their block went back, or the channel): the (local port, remote
        address, remote port) of those that were bound, for the caller's tables."""
        gone = []
        for p in ports:
            if p not in self.held:
                continue
            self.held.discard(p)
            self.mask[p] = False
            b = self.unbind(p)
            if b is not None:
                gone.append((p, *b))
        return gone

    def check(self, sport: int, raddr: bytes, rport: int, syn: bool, rst: bool) -> Verdict:
        """Whether a packet from `sport` to (`raddr`, `rport`) may go; `syn`: a SYN without ACK."""
        b = self.bound.get(sport)
        if b is not None:
            if b == (raddr, rport):
                return Verdict.PASS
            return Verdict.ELSEWHERE
        if sport not in self.held:
            return Verdict.NOT_HELD
        if syn:
            return Verdict.BIND
        return Verdict.FREE if rst else Verdict.UNBOUND

    def bind(self, sport: int, raddr: bytes, rport: int) -> None:
        """Bind free port `sport` to the remote end its first SYN went to."""
        assert sport in self.held and sport not in self.bound
        self.bound[sport] = (raddr, rport)
        if len(raddr) == 4:
            self.keys[sport] = key4(raddr, rport)

    def unbind(self, sport: int) -> tuple[bytes, int] | None:
        """The connection on `sport` is over: the port is free again. Returns the remote end it
        was bound to, None if it was not bound (nothing changes: releasing twice is harmless)."""
        b = self.bound.pop(sport, None)
        if b is not None:
            self.keys[sport] = 0
        return b
