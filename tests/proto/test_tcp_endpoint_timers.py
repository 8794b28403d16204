"""The endpoint's timer heap (usnet.proto.tcp.endpoint): the deadline it reports is every
connection's earliest, and a pump (usnet.client.engine: receive, `timeout`, timers,
`outgoing`, `timeout`) puts each connection touched on the heap once, in `outgoing`: the
`timeout` before it reads the touched connections' deadlines without scheduling them.

Hypothesis plays random traffic between two endpoints with a few connections (writes,
segments delivered or lost, time passing) and checks, at every `timeout`, the value
against the connections' own `timeout()`, and per pump the heap's growth.
"""

from __future__ import annotations

import heapq
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.proto.tcp import endpoint
from usnet.proto.tcp.endpoint import TcpEndpoint

A, B = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


def _truth(ep: TcpEndpoint) -> float | None:
    ts = [t for c in ep.connections.values() if (t := c.timeout()) is not None]
    return min(ts) if ts else None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["send", "lose", "tick"]), st.integers(0, 7),
                          st.integers(1, 60000)), min_size=1, max_size=40))
def test_timeout_is_the_earliest_deadline_and_a_pump_pushes_once(ops):
    pushes = [0]

    def push(h, e):
        pushes[0] += 1
        heapq.heappush(h, e)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(endpoint, "heapq", types.SimpleNamespace(
            heappush=push, heappop=heapq.heappop, heapify=heapq.heapify))
        _play(ops, pushes)


def _play(ops, pushes):
    server = TcpEndpoint(A)
    client = TcpEndpoint(B, ephemeral=(10000, 60000))
    server.listen(80)
    now = 1.0
    conns = [client.connect(A, 80, now) for _ in range(4)]
    wire: dict[bool, list] = {True: [], False: []}  # True: from the client
    eps = {True: client, False: server}
    lose = [0]

    def pump(side: bool) -> None:
        ep = eps[side]
        src, dst = (A, B) if side else (B, A)
        for seg in wire[not side]:
            if lose[0]:
                lose[0] -= 1
                continue
            ep.input(src, dst, seg, now)
        wire[not side].clear()
        due = len(ep.due)
        before = pushes[0]
        t = ep.timeout(now)
        assert t == _truth(ep)
        assert pushes[0] == before  # asking schedules nothing: `outgoing` does, once
        if t is not None and t <= now:
            due += len(ep.on_timer(now))
        for _d, seg, _c, _e in ep.outgoing(now):
            wire[side].append(bytes(seg))
        assert ep.timeout(now) == _truth(ep)
        assert pushes[0] - before <= due  # one entry per connection touched, at most

    for _ in range(4):
        pump(True)
        pump(False)
    while (a := server.accept(80)) is not None:
        conns.append(a)
    for op, i, n in ops:
        if op == "send":
            c = conns[i % len(conns)]
            if c.state.name == "ESTABLISHED":
                c.send(b"x" * n)
        elif op == "lose":
            lose[0] = i % 4
        else:
            now += n / 1000000.0
        for _ in range(3):
            now += 0.0002
            pump(True)
            pump(False)
            for c in conns:
                c.recv()
