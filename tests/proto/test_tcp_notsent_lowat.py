"""TCP_NOTSENT_LOWAT on the sans-I/O connection: `send` takes nothing while that many bytes
wait to be sent once, and up to the bound and a segment over it otherwise (Linux's
tcp_stream_memory_free before each buffer); `notsent_ok` is poll's test, twice the unsent
bytes below the bound."""

from __future__ import annotations

from tests.proto.test_tcp_connection import Net


def test_unsent_bytes_bound_what_send_takes_and_writability():
    net = Net(a_opts=dict(nodelay=True, pacing=False))
    c, s = net.pair()
    c.notsent_lowat = 10_000
    assert c.send(b"x" * 100_000) == 10_000 + c.mss  # the bound and a segment over it
    assert c.send(b"x") == 0 and c.send_space == 0 and not c.notsent_ok
    net.flush()  # the initial window sends it all: nothing unsent
    assert c.unsent == 0 and c.notsent_ok and c.send_space == 10_000 + c.mss
    assert c.send(b"y" * 6_000) == 6_000
    assert c.notsent_ok is False  # poll: 2 * 6000 is not below 10000 ...
    assert c.send_space > 0  # ... though send takes more (Linux: wake=1 for poll, 0 for send)
    c.notsent_lowat = 0  # no bound: the send buffer's
    assert c.send_space == c.sndbuf_cap - c.pending
    net.run(lambda: s.rcv_queued == 10_000 + c.mss + 6_000, limit=5)
