"""The cost of an event does not grow with the number of connections (issue 18, item 1).

Two sans-I/O endpoints joined in memory open N connections; then one
connection sends, the other side answers, and a timer fires. The test counts
work, not time: the connections each endpoint visited (`TcpEndpoint.visits`)
while serving those events must be the same at N = 10 and N = 10,000.
"""

from __future__ import annotations

from usnet.proto.tcp.endpoint import TcpEndpoint

A, B = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


def _exchange(server: TcpEndpoint, client: TcpEndpoint, now: float, rounds: int = 20) -> None:
    """Move segments both ways until neither side has anything to send."""
    for _ in range(rounds):
        moved = False
        for src, dst, frm, to in ((B, A, client, server), (A, B, server, client)):
            for _dst, seg, _cut, _ecn in frm.outgoing(now):
                to.input(src, dst, seg, now)
                moved = True
        if not moved:
            return
    raise AssertionError("the endpoints kept talking")


def _work_per_event(n: int) -> tuple[int, int, int]:
    server = TcpEndpoint(A)
    client = TcpEndpoint(B, ephemeral=(10000, 60000))
    server.listen(80, backlog=n + 1, syn_backlog=n + 1)
    now = 1.0
    conns = [client.connect(A, 80, now) for _ in range(n)]
    _exchange(server, client, now)
    accepted = []
    while (c := server.accept(80)) is not None:
        accepted.append(c)
    assert len(accepted) == n and all(c.state.name == "ESTABLISHED" for c in conns)

    # one request and its answer, on the last connection opened
    now += 0.001
    server.visits = client.visits = 0
    conns[-1].send(b"GET / HTTP/1.1\r\n\r\n")
    _exchange(server, client, now)
    peer = accepted[-1]
    assert peer.recv() == b"GET / HTTP/1.1\r\n\r\n"
    peer.send(b"HTTP/1.1 200 OK\r\n\r\n")
    _exchange(server, client, now)
    assert conns[-1].recv() == b"HTTP/1.1 200 OK\r\n\r\n"
    data_work = server.visits + client.visits

    # the deadlines: asking for the next one, and running the timers when nothing is due
    server.visits = client.visits = 0
    for _ in range(10):
        server.timeout(now)
        client.timeout(now)
        server.on_timer(now)
        client.on_timer(now)
    idle_work = server.visits + client.visits

    # a delayed ACK's timer: data with nothing to answer, then the timer fires on one connection
    # (the one that just answered a request: interactive, so not in quick-ACK mode, as Linux)
    server.visits = client.visits = 0
    conns[-1].send(b"x" * 100)
    for _d, seg, _c, _e in client.outgoing(now):
        server.input(B, A, seg, now)
    t = server.timeout(now)
    assert t is not None and t > now  # the ACK waits for its timer
    server.on_timer(t)
    assert server.outgoing(t), "the delayed ACK goes when its timer fires"
    timer_work = server.visits + client.visits
    return data_work, idle_work, timer_work


def test_work_per_event_is_flat_in_the_number_of_connections():
    small = _work_per_event(10)
    large = _work_per_event(10_000)
    assert large == small, f"connections visited per event: {small} at 10, {large} at 10,000"
    assert max(small) <= 12
