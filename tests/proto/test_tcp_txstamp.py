"""TCP transmit stamps (usnet.proto.tcp.txstamp): a property test of the requests against a
per-write model, and the connection's use of them over test_tcp_connection's simulated link
(a send split across segments, its last segment lost and sent again, the receive memory bound,
and no cost for a connection that never asked). The kernel comparison is
tests/interop/test_tcp_txstamp.py."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.proto.test_tcp_connection import A, Net
from usnet.proto import cmsg as _cm
from usnet.proto.tcp import txstamp as _tx

ALL = (_cm.SOF_TIMESTAMPING_TX_SOFTWARE | _cm.SOF_TIMESTAMPING_TX_SCHED | _cm.SOF_TIMESTAMPING_TX_ACK
       | _cm.SOF_TIMESTAMPING_OPT_ID)
_ops = st.lists(st.tuples(st.sampled_from(["write", "send", "resend", "ack"]), st.integers(1, 40)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops=_ops)
def test_each_writes_last_byte_is_reported_when_sent_and_once_when_acked(ops):
    """Writes, segments sent in order (and again), cumulative ACKs: each segment holding a
    pending write's last byte reports SCHED then SND; the first ACK past it reports ACK; a write
    whose predecessor's last byte has not left yet replaces that request (one per skb)."""
    ts = _tx.TxStamps()
    ts.set_flags(ALL)
    ts.rebase(1, 1)
    written, nxt, una = 1, 1, 1  # sequences: the next byte written, sent, acknowledged
    pending: list[int] = []  # the model: last bytes still waiting for their ACK
    want: list[tuple[int, int]] = []
    for op, n in ops:
        if op == "write":
            if pending and pending[-1] >= nxt:
                pending.pop()
            written += n
            ts.request(written - 1, nxt)
            pending.append(written - 1)
        elif op in ("send", "resend"):
            start = nxt if op == "send" else una
            end = min(written, start + n)
            if end <= start:
                continue
            ts.sent(start, end, 1 << 30)
            want += [(info, k - 1) for k in pending if start <= k < end for info in (_tx.SCHED, _tx.SND)]
            nxt = max(nxt, end)
        else:
            a = min(nxt, una + n)
            ts.acked(a, 1 << 30)
            want += [(_tx.ACK, k - 1) for k in pending if k < a]
            pending = [k for k in pending if k >= a]
            una = a
        assert [(i, d) for i, d, _ns in ts.reports] == want
        assert len(ts.keys) == len(pending)


def _stamped_pair(net: Net, flags: int = ALL):
    c, s = net.pair()
    c.nodelay = True
    c.set_tx_stamps(flags, True)
    return c, s


def _reports(c) -> list[tuple[int, int]]:
    out = []
    while (r := c.take_tx_stamp()) is not None:
        out.append(r[:2])
    return out


def test_a_send_split_across_segments_is_stamped_at_its_last_byte_and_again_when_resent():
    net = Net()
    c, s = _stamped_pair(net)
    lost = []

    def drop(src, seg):  # the segment with the send's last byte, on its first transmission
        if src == A and len(seg.payload) and (seg.seq - c.iss + len(seg.payload)) & 0xFFFFFFFF == 5001 and not lost:
            lost.append(seg.seq)
            return True
        return False

    net.drop = drop
    assert c.send(b"x" * 5000) == 5000
    net.run(lambda: s.rcv_queued == 5000 and c.snd_una == 5001, limit=30)
    assert lost and c.stats.retransmits >= 1
    got = _reports(c)
    first = [(_tx.SCHED, 4999), (_tx.SND, 4999)]
    assert got[:2] == first and got[-1] == (_tx.ACK, 4999)
    assert got[2:-1] == first * c.stats.retransmits  # each transmission of that segment
    assert c.tx_stamps is not None and not c.tx_stamps.keys and c.tx_stamps.charged == 0


def test_reports_past_the_receive_memory_are_dropped_as_sock_queue_err_skb_drops_them():
    net = Net()
    c, _s = _stamped_pair(net)
    c.rcvbuf_cap = 4 * _tx.CHARGE  # room for three: `charged + CHARGE` must stay under it
    for i in range(3):
        c.send(b"y")
        net.run(lambda i=i: c.snd_una == 2 + i, limit=5)
    assert [i for i, _d in _reports(c)] == [_tx.SCHED, _tx.SND, _tx.ACK]  # the others dropped
    c.send(b"z")
    net.run(lambda: c.snd_una == 5, limit=5)
    assert _reports(c) == [(_tx.SCHED, 3), (_tx.SND, 3), (_tx.ACK, 3)]  # read: room again


def test_a_connection_never_asked_keeps_no_stamps_and_its_lean_path():
    net = Net()
    c, _s = net.pair()
    c.set_tx_stamps(_cm.SOF_TIMESTAMPING_SOFTWARE | _cm.SOF_TIMESTAMPING_RX_SOFTWARE, False)
    assert c.tx_stamps is None and c.take_tx_stamp() is None
    c.nodelay = True
    c.send(b"q")
    out = c.outgoing(net.now)
    assert len(out) == 1 and c.tx_stamps is None


def test_opt_id_counts_from_snd_una_and_opt_id_tcp_from_the_next_byte_written():
    """sock_set_timestamping's sk_tskey with bytes written and not yet acknowledged: OPT_ID
    counts them, OPT_ID_TCP does not."""
    got = []
    for extra in (0, _cm.SOF_TIMESTAMPING_OPT_ID_TCP):
        net = Net()
        c, _s = net.pair()
        c.nodelay = True
        c.send(b"u" * 100)  # queued: SND.UNA 1, the next byte written 101
        c.set_tx_stamps(ALL | extra, True)
        c.send(b"v" * 10)
        net.run(lambda c=c: c.snd_una == 111, limit=5)
        got.append(_reports(c))
    assert got == [[(_tx.SCHED, 109), (_tx.SND, 109), (_tx.ACK, 109)], [(_tx.SCHED, 9), (_tx.SND, 9), (_tx.ACK, 9)]]
