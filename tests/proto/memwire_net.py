"""Two `TcpEndpoint`s joined by a `usnet.drivers.MemWire` on a simulated clock.

The same link model the stacks meet in the domain tests (seeded loss,
duplication, reordering, rate, delay), driven event by event: the clock
jumps to the next arrival or timer, so a multi-megabyte transfer through a
lossy path is deterministic and takes a fraction of a second.
"""

from __future__ import annotations

from tests.proto.test_tcp_connection import Net
from usnet.drivers import MemWire
from usnet.proto.wire.tcp import parse_tcp

__all__ = ["WireNet"]


class WireNet(Net):
    """`Net` with a MemWire for a link: A sends on port a, B on port b."""

    def __init__(self, seed: int = 1, delay: float = 0.005, loss: float = 0.0, duplicate: float = 0.0,
                 reorder: float = 0.0, rate_bps: float = 0.0, **kw) -> None:
        super().__init__(seed=seed, delay=delay, **kw)
        self.wire = MemWire(rate_bps=rate_bps, delay=delay, loss=loss, duplicate=duplicate,
                            reorder=reorder, seed=seed, queue_limit=1 << 20, clock=lambda: self.now)

    def transmit(self, src, dst, data, ect=0):
        seg = parse_tcp(data, 0, None, src, dst)  # our checksum must always be right
        self.log.append((self.now, src, seg))
        if src in self.blackhole or dst in self.blackhole:
            return
        if self.drop is not None and self.drop(src, seg):
            return
        self.wire._send(0 if src == self.A else 1, [bytes(data)])

    def _due(self) -> float | None:
        ds = [d for d in (self.wire._next_due(0), self.wire._next_due(1)) if d is not None]
        return self.now + min(ds) if ds else None

    def _deliver(self) -> None:
        for side, dst, src in ((0, self.A, self.B), (1, self.B, self.A)):
            for data in self.wire._recv(side, 1 << 20):
                self.eps[dst].input(src, dst, data, self.now)

    def step(self) -> bool:
        for app in self.apps:
            app()
        self.flush()
        ts = [t for t in (self._due(), self.a.timeout(), self.b.timeout()) if t is not None]
        if not ts:
            return False
        self.now = max(self.now, min(ts))
        self._deliver()
        for ep in self.eps.values():
            ep.on_timer(self.now)
        for app in self.apps:
            app()
        self.flush()
        return True

    def run_for(self, dt):
        end = self.now + dt
        while True:
            self.flush()
            ts = [t for t in (self._due(), self.a.timeout(), self.b.timeout()) if t is not None]
            if not ts or min(ts) > end:
                self.now = end
                return
            self.step()
