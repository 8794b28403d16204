"""TCP_CORK (usnet.proto.tcp.cork) on the sans-I/O connection, through the simulated link of
test_tcp_connection: only full segments leave while corked; the partial tail goes when the cork
is cleared, 200 ms after it was first held, when TCP_NODELAY is set, or with a FIN; and a
property test of that rule over random writes, waits and option changes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.proto.test_tcp_connection import A, Net, data_seg
from usnet.proto.tcp.cork import CORK_MAX
from usnet.proto.wire.tcp import FIN

MASK = 0xFFFFFFFF


def _data(net, since=0):
    """A's data segments sent from log index `since` on."""
    return [s for _, src, s in net.log[since:] if src == A and data_seg(s)]


def _send(net, c, data: bytes) -> None:
    assert c.send(data) == len(data)
    net.flush()


def test_corked_header_and_body_leave_as_one_segment():
    """An HTTP server's pattern (nginx: TCP_NODELAY and TCP_CORK): header, body, uncork: one
    segment; uncorked, the same writes make two."""
    for cork, expected in ((True, [b"H" * 120 + b"B" * 900]), (False, [b"H" * 120, b"B" * 900])):
        net = Net(a_opts=dict(nodelay=True, pacing=False))
        c, s = net.pair()
        c.cork = cork
        mark = len(net.log)
        _send(net, c, b"H" * 120)
        _send(net, c, b"B" * 900)
        c.cork = False
        net.flush()
        assert [bytes(x.payload) for x in _data(net, mark)] == expected
        net.run(lambda s=s: s.rcv_queued == 1020, limit=5)
        assert not c.cork


def test_full_segments_leave_while_corked_and_the_tail_waits():
    net = Net(a_opts=dict(nodelay=True, pacing=False))
    c, _s = net.pair()
    c.cork = True
    mark = len(net.log)
    _send(net, c, b"x" * (3 * c.mss + 100))
    assert [len(x.payload) for x in _data(net, mark)] == [c.mss] * 3
    assert c.unsent == 100
    _send(net, c, b"y" * (c.mss - 100))  # the tail fills up: a full segment
    assert [len(x.payload) for x in _data(net, mark)] == [c.mss] * 4
    assert c.unsent == 0


def test_the_corked_tail_goes_after_200_ms():
    """tcp(7): "a 200 millisecond ceiling on the time for which output is corked"."""
    net = Net(a_opts=dict(nodelay=True, pacing=False))
    c, s = net.pair()
    c.cork = True
    t0, mark = net.now, len(net.log)
    _send(net, c, b"z" * 10)
    assert c.timeout() is not None and c.timeout() <= t0 + CORK_MAX
    net.run(lambda: s.rcv_queued == 10, limit=5)
    (t, _, _seg), = [e for e in net.log[mark:] if e[1] == A and data_seg(e[2])]
    assert abs(t - (t0 + CORK_MAX)) < 1e-6
    assert c.cork  # still corked: the next tail waits again
    mark = len(net.log)
    _send(net, c, b"w" * 10)
    assert not _data(net, mark)


def test_nodelay_while_corked_pushes_what_is_queued_once():
    """Linux's TCP_NAGLE_PUSH: setting TCP_NODELAY sends the corked tail; later writes are
    corked again (the cork overrides TCP_NODELAY)."""
    net = Net(a_opts=dict(nodelay=True, pacing=False))
    c, _s = net.pair()
    c.cork = True
    mark = len(net.log)
    _send(net, c, b"a" * 50)
    assert not _data(net, mark)
    c.nodelay = True
    net.flush()
    assert [len(x.payload) for x in _data(net, mark)] == [50]
    mark = len(net.log)
    _send(net, c, b"b" * 50)
    assert not _data(net, mark)


def test_a_fin_takes_the_corked_tail_and_clearing_the_cork_leaves_nagle():
    net = Net(a_opts=dict(nodelay=True, pacing=False))
    c, s = net.pair()
    c.cork = True
    mark = len(net.log)
    _send(net, c, b"a" * 50)
    c.shutdown_write(net.now)
    net.flush()
    (seg,) = _data(net, mark)
    assert len(seg.payload) == 50 and seg.flags & FIN
    # without TCP_NODELAY, uncorking leaves the tail to Nagle: held while data is in flight
    net = Net(a_opts=dict(pacing=False))
    c, s = net.pair()
    c.cork = True
    mark = len(net.log)
    _send(net, c, b"a" * (c.mss + 10))
    assert [len(x.payload) for x in _data(net, mark)] == [c.mss]
    c.cork = False
    net.flush()
    assert [len(x.payload) for x in _data(net, mark)] == [c.mss]  # Nagle: the full one is in flight
    net.run(lambda: s.rcv_queued == c.mss + 10, limit=5)
    assert [len(x.payload) for x in _data(net, mark)] == [c.mss, 10]


_OPS = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(1, 3000)),
    st.tuples(st.just("more"), st.integers(1, 3000)),  # a write with MSG_MORE
    st.tuples(st.just("wait"), st.floats(0.0, 0.3)),
    st.tuples(st.just("cork"), st.booleans()),
    st.tuples(st.just("nodelay"), st.booleans()),
), max_size=25)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS, nodelay=st.booleans(), mss=st.sampled_from([536, 1460]))
def test_no_partial_segment_leaves_while_corked_and_every_byte_leaves(ops, nodelay, mss):
    """The segmenting rule: while the cork is on (or the last write had MSG_MORE), a first transmission shorter
    than the MSS leaves only with a FIN, after TCP_NODELAY was set (until what was queued has left), or once its
    first byte has waited 200 ms; and every byte written arrives, in order, with the cork still on at the end."""
    net = Net(a_opts=dict(nodelay=nodelay, mss=mss), delay=0.01)
    c, s = net.pair()
    c.cork = True
    more = False  # the last write had MSG_MORE
    base = (c.iss + 1) & MASK
    written = bytearray()
    at: list[tuple[int, float]] = []  # (stream offset, time) of each write
    pushed = False
    budget = 8 * c.mss  # within the initial window: no window or congestion limits a segment
    for op, arg in ops:
        corked, mark = c.cork or more, len(net.log)
        if op in ("write", "more"):
            n = min(arg, budget - len(written))
            if n <= 0:
                continue
            at.append((len(written), net.now))
            data = bytes([len(at) & 0xFF]) * n
            more = op == "more"
            assert c.send(data, more) == n
            written += data
            net.flush()
        elif op == "wait":
            net.run_for(arg)
        elif op == "cork":
            c.cork = arg
            net.flush()
        else:
            c.nodelay = arg
            net.flush()
        if op == "nodelay" and arg and corked:
            pushed = True  # what is queued goes, when the window and the pacer let it
        if not (corked and (c.cork or more)) or pushed:
            pushed = pushed and c.unsent > 0
            continue  # uncorked for a moment, or a push: anything may leave
        for t, src, seg in net.log[mark:]:
            if src != A or not data_seg(seg) or len(seg.payload) >= c.mss or seg.flags & FIN:
                continue
            off = (seg.seq - base) & MASK
            wrote = max(w for o, w in at if o <= off)
            assert t >= wrote + CORK_MAX - 1e-9, (off, len(seg.payload), t, wrote)
    net.run(lambda: s.rcv_queued == len(written), limit=5)
    assert s.recv(1 << 20) == bytes(written)


def test_quickack_reads_the_interactive_bit_and_setting_it_sends_a_delayed_ack_now():
    """TCP_QUICKACK (usnet.proto.tcp.quickack): 0 makes the connection interactive, so the
    ACK of data waits (for an answer, or the delayed-ACK timer); 1 sends that ACK at once."""
    from tests.proto.test_tcp_connection import B, pure_ack

    net = Net(a_opts=dict(nodelay=True, pacing=False))
    c, s = net.pair()
    s.quickack = False
    assert not s.quickack
    _send(net, c, b"q" * 10)
    net.run(lambda: s.rcv_queued == 10, limit=1)
    mark = len(net.log)
    net.flush()
    assert not [x for _, src, x in net.log[mark:] if src == B and pure_ack(x)]  # delayed
    s.quickack = True
    assert s.quickack
    net.flush()
    assert [x for _, src, x in net.log[mark:] if src == B and pure_ack(x)]  # now


def test_msg_more_holds_the_tail_until_a_write_without_it():
    """MSG_MORE corks one write: header with it, body without: one segment (nodelay or not)."""
    for nodelay in (True, False):
        net = Net(a_opts=dict(nodelay=nodelay, pacing=False))
        c, s = net.pair()
        mark = len(net.log)
        assert c.send(b"H" * 100, True) == 100
        net.flush()
        assert not _data(net, mark)
        _send(net, c, b"B" * 300)
        assert [len(x.payload) for x in _data(net, mark)] == [400]
        mark = len(net.log)
        assert c.send(b"T" * 10, True) == 10  # no write follows: the ceiling sends it
        net.run(lambda s=s: s.rcv_queued == 410, limit=5)
        assert [len(x.payload) for x in _data(net, mark)] == [10]
        assert not c.cork
