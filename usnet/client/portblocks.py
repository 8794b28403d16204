"""A connector's blocks of ephemeral ports: which are free, which are in use, which block can go back.

A connector channel (usnet.client.engine `connector`) asks the domain for a
block of ephemeral ports at a time (P.AddPorts), and the switch lets it send
from any port of its blocks. Each outgoing connection then takes a free port
here, with no message, and gives it back when TCP forgets the connection
(CLOSED, or the end of TIME-WAIT: a port is held as long as Linux holds it,
so the next connect simply takes another and never meets its own TIME-WAIT).

Free ports are taken oldest-freed first: a port comes round again only after
every other free port has been used, so a server still holding the last
connection's 4-tuple in TIME-WAIT rarely sees it again soon.

A port whose connection sent its SYN is bound in the switch to that connection's
4-tuple (usnet.domain.switch.binding) until the client says it is over: freed, it
waits in `bound` until the engine sends one notice for all of them (when no other
port is free, or once a second), and only then can it be taken again.

A block whose ports have all been free for `return_after` seconds may go back
to the domain (a notice, not waited for), the last block excepted.

Pure bookkeeping, no I/O and no lock: the engine calls it under its own lock.
"""

from __future__ import annotations

from collections import deque

__all__ = ["BLOCK", "PortBlocks"]

BLOCK = 64  # ports asked for at a time: one control round trip per 64 connects at most


class PortBlocks:
    """The ports of a connector's blocks and who uses them."""

    def __init__(self, return_after: float = 10.0) -> None:
        self.return_after = return_after
        self.blocks: dict[int, list[int]] = {}  # block -> its ports
        self.block_of: dict[int, int] = {}  # port -> its block
        self.users: dict[int, int] = {}  # port -> connections on it (one: the switch binds a port to one 4-tuple)
        self.busy: dict[int, int] = {}  # block -> its ports in use
        self.idle_since: dict[int, float] = {}  # block -> since when all its ports are free
        self._free: deque[int] = deque()  # free ports, oldest freed first
        # freed ports still bound in the switch to their last connection's 4-tuple: free for the
        # blocks' bookkeeping, taken again only after the domain is told (`unbound`)
        self.bound: list[int] = []
        self.requested = 0  # blocks asked for, for the tests and the status

    def __len__(self) -> int:
        """How many ports the blocks hold."""
        return len(self.block_of)

    def add(self, block: int, ports: list[int], now: float) -> None:
        """A block the domain granted: its ports are free."""
        self.requested += 1
        self.blocks[block] = list(ports)
        for p in ports:
            self.block_of[p] = block
        self.busy[block] = 0
        self.idle_since[block] = now
        self._free.extend(ports)

    def has_free(self) -> bool:
        """A `take` would give a port."""
        return bool(self._free)

    def take(self) -> int | None:
        """A free port, now in use; None if every port of the blocks is."""
        if not self._free:
            return None
        p = self._free.popleft()
        self._use(p)
        return p

    def _use(self, p: int) -> None:
        n = self.users.get(p, 0)
        self.users[p] = n + 1
        if not n:
            b = self.block_of[p]
            self.busy[b] += 1
            self.idle_since.pop(b, None)

    def free(self, port: int, now: float, bound: bool = False) -> None:
        """A connection on `port` is over (or never began): the port is free once its last is;
        `bound`: its SYN left, so the switch holds it to its 4-tuple until `unbound`."""
        n = self.users.get(port)
        if n is None:
            return
        if n > 1:
            self.users[port] = n - 1
            return
        del self.users[port]
        b = self.block_of.get(port)
        if b is None:
            return
        (self.bound if bound else self._free).append(port)
        self.busy[b] -= 1
        if not self.busy[b]:
            self.idle_since[b] = now

    def unbound(self) -> list[int]:
        """The domain is being told the `bound` ports' connections are over: they go to the
        free ports, in the order they were freed. Returns them (for the notice)."""
        gone = self.unbinding()
        self.released(gone)
        return gone

    def unbinding(self) -> list[int]:
        """The `bound` ports, taken out to be released by a request the caller waits for: they are
        neither bound nor free until `released`."""
        gone, self.bound = self.bound, []
        return gone

    def released(self, ports: list[int]) -> None:
        """Ports of `unbinding` the domain has freed: free ports again, but those of a block given
        back meanwhile (`drop`), which are no longer ours (or came back in a new block, free already)."""
        free = set(self._free)
        self._free.extend(p for p in ports if p in self.block_of and p not in free and p not in self.users)

    def idle(self, now: float) -> list[int]:
        """The blocks that have been all free for `return_after` seconds, to give back: all of
        them but one while any other block remains."""
        due = [b for b, t in self.idle_since.items() if now - t >= self.return_after]
        if len(due) >= len(self.blocks):
            due = due[1:]
        return due

    def drop(self, block: int) -> list[int]:
        """Forget `block` (given back to the domain); returns its ports. Its ports must be free."""
        ports = self.blocks.pop(block)
        gone = set(ports)
        for p in ports:
            del self.block_of[p]
        del self.busy[block]
        self.idle_since.pop(block, None)
        self._free = deque(p for p in self._free if p not in gone)
        self.bound = [p for p in self.bound if p not in gone]
        return ports
