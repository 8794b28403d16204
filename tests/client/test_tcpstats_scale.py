"""A `usnet ss` publication costs the channel's slots, not its connections (issue 18).

The engine publishes each connection's figures (usnet.client.tcpstats) every quarter
second while busy; it walked the whole connection table to do it, so a listener
holding 9,000 connections paid ~9,000 dictionary look-ups per publication on its
accept path. The test counts the entries a publication looks at (`Publisher.looked`)
while connections come and go beside 10 and beside 2,000 held ones, with a region of
8 slots (full at both sizes), and checks that the records are still right: every
slot holds a live connection, a slot given back is taken by one that waited, and the
header counts the rest.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.tcpmem import A, B, exchange
from usnet.abi.tcpinfo import read_records, region_bytes, write_header
from usnet.client.tcpstats import INTERVAL, Publisher
from usnet.proto.tcp.endpoint import TcpEndpoint

SLOTS = 8
FEW = 3  # the property test's region: full most of the time, so slots change hands


def _open(server: TcpEndpoint, client: TcpEndpoint, n: int, now: float) -> list:
    for _ in range(n):
        client.connect(A, 80, now)
    exchange(server, client, now)
    got = []
    while (c := server.accept(80)) is not None:
        got.append(c)
    assert len(got) == n
    return got


def _rows(region: bytearray, n_slots: int = SLOTS) -> list[tuple[int, int]]:
    """(local port, remote port) of every used slot but the listener's."""
    slots, torn, bad = read_records(memoryview(region), n_slots)
    assert torn == bad == 0
    return [(s.fields["local_port"], s.fields["remote_port"]) for s in slots if s.fields["remote_port"]]


def _unlisted(region: bytearray) -> int:
    return int.from_bytes(region[12:16], "little")


def _churn_work(n: int) -> int:
    server = TcpEndpoint(A)
    client = TcpEndpoint(B, ephemeral=(10000, 60000))
    server.listen(80, backlog=n + 100, syn_backlog=n + 100)
    region = bytearray(region_bytes(SLOTS))
    write_header(memoryview(region), SLOTS)
    pub = Publisher(memoryview(region), 4)
    now = 1.0
    held = _open(server, client, n, now)
    pub.publish(server, now)  # the first publication: every connection is news
    assert len(_rows(region)) == SLOTS - 1  # and the listener's row
    assert _unlisted(region) == n + 1 - SLOTS

    # what an accept benchmark does beside the held connections: 20 come, 20 go, twice
    pub.looked = 0
    for _ in range(2):
        now += INTERVAL
        fresh = _open(server, client, 20, now)
        for c in fresh:
            c.abort(now)
        exchange(server, client, now)
        pub.publish(server, now)
    work = pub.looked

    # slot holders go: the slots are retaken by connections that waited, the count follows
    live = {(c.local_port, c.remote_port) for c in server.connections.values()}
    rows = _rows(region)
    assert set(rows) <= live and len(rows) == SLOTS - 1
    holders = [c for c in held if (c.local_port, c.remote_port) in set(rows)][:3]
    for c in holders:
        c.abort(now)
    exchange(server, client, now)
    now += INTERVAL
    pub.publish(server, now)
    live = {(c.local_port, c.remote_port) for c in server.connections.values()}
    rows = _rows(region)
    assert len(rows) == min(SLOTS - 1, n - 3) and len(set(rows)) == len(rows) and set(rows) <= live
    assert _unlisted(region) == max(0, n - 3 + 1 - SLOTS)
    return work


def test_a_publication_costs_the_slots_not_the_connections() -> None:
    few, many = _churn_work(10), _churn_work(2000)
    assert few == many, (few, many)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=12))
def test_slots_always_hold_live_connections(steps: list[tuple[int, int]]) -> None:
    """Any sequence of connections opened and closed between publications: each slot holds a
    live connection, no connection holds two, the slots are used as far as there are connections,
    the header counts the rest, and nothing of a forgotten connection is kept (hypothesis)."""
    server = TcpEndpoint(A)
    client = TcpEndpoint(B, ephemeral=(10000, 60000))
    server.listen(80, backlog=200, syn_backlog=200)
    region = bytearray(region_bytes(FEW))
    write_header(memoryview(region), FEW)
    pub = Publisher(memoryview(region), 4)
    now = 1.0
    held: list = []
    for opened, closed in steps:
        held += _open(server, client, opened, now)
        for c in held[:closed]:
            c.abort(now)
        del held[:closed]
        exchange(server, client, now)
        now += INTERVAL
        pub.publish(server, now)
        live = {(c.local_port, c.remote_port) for c in server.connections.values()}
        rows = _rows(region, FEW)
        assert len(set(rows)) == len(rows) and set(rows) <= live
        assert len(rows) == min(FEW - 1, len(live))
        assert _unlisted(region) == max(0, len(live) + 1 - FEW)
        # and it keeps nothing of a connection TCP forgot (no leak as connections come and go)
        table = {id(c) for c in server.connections.values()}
        assert {id(c) for c in pub.waiting} <= table and {id(c) for c in pub.rates} <= table
