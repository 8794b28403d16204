"""Property test: random alloc, send, receive, free, resize, abuse and defunct on a user pipe.

After every step the nexus's books must match what the two applications hold:
no packet lost, none owned twice, payloads intact and in order.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import usnet
from usnet.abi.protocol import ControlError
from usnet.client.channel import ChannelDefunct, NoBuffers
from usnet.domain.mem.pool import FREE, HELD

pytestmark = pytest.mark.slow


class PipeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.domain = usnet.Domain()
        self.client = usnet.Client.local(self.domain)
        self.ch = [self.client.open_pipe("prop", "default", packets=16, max_packets=64, ring_size=8, quota=40),
                   self.client.open_pipe("prop")]
        self.pipe = self.domain.pipe("prop")
        self.hand: list[list[int]] = [[], []]  # allocated, not sent
        self.flight: list[deque[int]] = [deque(), deque()]  # sent by role r, not yet received
        self.got: list[list[int]] = [[], []]  # received, not freed
        self.serial = 0
        self.tags: dict[int, bytes] = {}
        self.dead = False

    def teardown(self) -> None:
        for ch in self.ch:
            ch.close()
        self.domain.stop()

    # -- the applications ----------------------------------------------------------

    @precondition(lambda self: not self.dead)
    @rule(r=st.integers(0, 1), n=st.integers(1, 12))
    def alloc(self, r: int, n: int) -> None:
        try:
            pkts = self.ch[r].alloc(n, timeout=0)
        except NoBuffers:
            return
        assert 1 <= len(pkts) <= n
        self.hand[r] += pkts

    @precondition(lambda self: not self.dead)
    @rule(r=st.integers(0, 1), k=st.integers(1, 12))
    def send(self, r: int, k: int) -> None:
        ch = self.ch[r]
        pkts = self.hand[r][:k]
        for p in pkts:
            self.serial += 1
            payload = b"%d:%d:" % (p, self.serial) + bytes([self.serial % 251]) * (self.serial % 300)
            ch.write(p, payload)
            self.tags[p] = payload
        try:
            sent = ch.send(pkts, timeout=0) if pkts else 0
        except BlockingIOError:
            sent = 0  # ring full: like a non-blocking socket
            assert len(self.flight[r]) >= ch.ring_limit or ch._tx.space() == 0
        self.flight[r].extend(pkts[:sent])
        del self.hand[r][:sent]

    @precondition(lambda self: not self.dead)
    @rule(r=st.integers(0, 1), k=st.integers(1, 12))
    def recv(self, r: int, k: int) -> None:
        ch = self.ch[r]
        try:
            pkts = ch.recv(k, timeout=0)
        except BlockingIOError:
            assert not self.flight[1 - r]
            return
        for p in pkts:
            assert self.flight[1 - r].popleft() == p, "out of order or unknown packet"
            assert bytes(ch.view(p)) == self.tags[p]
        self.got[r] += pkts

    @precondition(lambda self: not self.dead)
    @rule(r=st.integers(0, 1), k=st.integers(1, 12), mine=st.booleans())
    def free(self, r: int, k: int, mine: bool) -> None:
        src = self.hand[r] if mine else self.got[r]
        pkts = src[:k]
        del src[:k]
        self.ch[r].free(pkts)

    @precondition(lambda self: not self.dead)
    @rule(r=st.integers(0, 1), packets=st.integers(1, 64), ring=st.sampled_from([8, 16, 4096, 3]))
    def resize(self, r: int, packets: int, ring: int) -> None:
        try:
            self.ch[r].resize(ring_size=ring, packets=packets)
        except ControlError as e:
            assert ring == 3 and e.code == "EINVAL"
            return
        assert self.ch[r].ring_limit == ring

    @precondition(lambda self: not self.dead)
    @rule(r=st.integers(0, 1), which=st.sampled_from(["range", "free", "dup"]))
    def hostile_free(self, r: int, which: str) -> None:
        """Hand back what this channel does not hold: refused and counted, nothing disturbed."""
        pool = self.pipe.pool
        if which == "range":
            bad = [pool.capacity + 5]
        elif which == "free":
            free = np.flatnonzero(pool.state == FREE)
            if not free.size:
                return
            bad = [int(free[0])]
        else:
            if not self.got[r]:
                return
            p = self.got[r].pop()
            bad = [p, p]  # the first is a real free, the second a duplicate
        before = pool.refused[r]
        self.ch[r]._free.push(bad)
        self.domain.kick_channel(self.ch[r].id)
        if self.pipe.defunct_reason is not None:
            self.dead = True  # abused past the limit: the whole group went back
            return
        assert pool.refused[r] == before + 1

    @rule(r=st.integers(0, 1))
    def kick(self, r: int) -> None:
        self.domain.kick_channel(self.ch[r].id)

    @precondition(lambda self: not self.dead)
    @rule(r=st.integers(0, 1))
    def crash(self, r: int) -> None:
        """The owner of one end vanishes: both ends defunct, every packet reclaimed."""
        from usnet.abi.events import DefunctReason

        self.pipe.defunct(DefunctReason.OWNER_GONE, culprit=r)
        self.dead = True
        with pytest.raises(ChannelDefunct):
            self.ch[1 - r].recv(1, timeout=0)

    # -- the books -------------------------------------------------------------------

    @invariant()
    def books_balance(self) -> None:
        pool = self.pipe.pool
        for ch in self.ch:
            self.domain.kick_channel(ch.id)
        pool.check()
        if self.dead:
            c = pool.counts()
            assert c["held"] == 0 and c["in_alloc"] == 0
            return
        app = self.hand[0] + self.hand[1] + self.got[0] + self.got[1] + list(self.flight[0]) \
            + list(self.flight[1]) + self.ch[0]._cache + self.ch[1]._cache
        assert len(app) == len(set(app)), "a packet is held twice"
        assert set(app) == set(np.flatnonzero(pool.state == HELD).tolist())


TestPipeProperty = PipeMachine.TestCase
TestPipeProperty.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
