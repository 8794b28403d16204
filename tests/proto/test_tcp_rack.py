"""Loss recovery by time: RACK-TLP (RFC 8985), PRR (RFC 6937), undo, and RTT samples.

Transfers run between two usnet TCP stacks joined by a MemWire on a simulated
clock (tests.proto.memwire_net): seeded loss, duplication and reordering,
deterministic, and each megabyte takes a fraction of a second. The claims are
read from the connections' statistics, as `tcp_info()` shows them: which
mechanism repaired what (rack_losses, tlp_probes, tlp_recoveries,
recovery_undos) and that the retransmission timer never had to.

The bookkeeping of `usnet.proto.tcp.rack.Rack` and `usnet.proto.tcp.prr.Prr`
is checked against its invariants with hypothesis.
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.proto.memwire_net import WireNet
from tests.proto.test_tcp_connection import (
    ACK,
    CLOSED,
    ESTABLISHED,
    SYN,
    B,
    Net,
    base,
    data_seg,
    digest,
    transfer,
)
from usnet.proto.tcp import TcpState
from usnet.proto.tcp.prr import Prr
from usnet.proto.tcp.rack import Rack, sent_after
from usnet.proto.tcp.scoreboard import Scoreboard
from usnet.proto.wire.tcp import build_tcp, tcp_options

MASK = 0xFFFFFFFF
A = bytes([10, 0, 0, 1])

LOSSY = dict(loss=0.02, duplicate=0.01, reorder=0.10)  # the impaired path


def _bulk(net, c, s, size, seed=3):
    data = random.Random(seed).randbytes(size)
    _, sink = transfer(net, c, s, data)
    net.run(lambda: s.eof, limit=300)
    assert len(sink.buf) == len(data) and digest(sink.buf) == digest(data)
    return sink


# --------------------------------------------------------------------------- memwire transfers


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lossy_reordering_duplicating_memwire_recovers_without_rto(seed):
    """4 MB through 2 % loss, 10 % reordering, 1 % duplication: RACK repairs it all, no RTO."""
    net = WireNet(seed=seed, delay=0.005, rate_bps=200e6, time_wait=1.0, **LOSSY)
    c, s = net.pair()
    t0 = net.now
    _bulk(net, c, s, 4_000_000)
    st = c.stats
    assert net.wire.dropped > 50  # the path really lost segments
    assert st.rto_timeouts == 0
    assert st.rack_losses > 0 and st.fast_retransmits > 0 and st.retransmits > 0
    assert st.dsacks > 0 and s.stats.dsacks_sent > 0  # duplicates reported and heard (RFC 2883)
    assert c.rack.reordering_seen and c.rack.reo_wnd_mult > 1  # the window adapted to D-SACKs
    # loss-limited, not timer-limited: a few MB/s on a 10 ms path through 2 % loss
    assert 4_000_000 / (net.now - t0) > 500_000
    s.shutdown_write(net.now)
    net.run(lambda: c.state is CLOSED and s.state is CLOSED, limit=30)
    assert c.error is None and s.error is None


def test_lossy_memwire_both_directions_at_once():
    net = WireNet(seed=11, delay=0.003, rate_bps=100e6, time_wait=1.0, **LOSSY)
    c, s = net.pair()
    d1, d2 = random.Random(1).randbytes(2_000_000), random.Random(2).randbytes(2_000_000)
    _, k1 = transfer(net, c, s, d1)
    _, k2 = transfer(net, s, c, d2)
    net.run(lambda: s.eof and c.eof, limit=300)
    assert k1.buf == d1 and k2.buf == d2
    assert c.stats.rto_timeouts == 0 and s.stats.rto_timeouts == 0
    assert c.stats.rack_losses > 0 and s.stats.rack_losses > 0


def test_random_loss_is_repaired_by_rack_without_rto():
    net = WireNet(seed=5, delay=0.005, rate_bps=200e6, loss=0.02)
    c, s = net.pair()
    _bulk(net, c, s, 3_000_000)
    st = c.stats
    assert st.rto_timeouts == 0 and st.rack_losses > 0
    # without reordering every retransmission was needed: no D-SACK for a spurious one
    assert st.recovery_undos == 0
    assert st.retransmits <= st.rack_losses + st.tlp_probes


def test_reordering_alone_costs_no_window():
    """10 % reordering, nothing lost: what RACK took for losses is undone (timestamps, D-SACKs)."""
    net = WireNet(seed=4, delay=0.005, rate_bps=200e6, reorder=0.10)
    c, s = net.pair()
    _bulk(net, c, s, 3_000_000)
    st = c.stats
    assert net.wire.dropped == 0 and st.rto_timeouts == 0
    assert st.retransmits == 0 or st.recovery_undos > 0
    assert c.rack.reordering_seen
    assert st.retransmits < 30  # a handful while the reordering window learns, not one per reorder


def test_without_rack_the_same_path_needs_rtos():
    """The contrast the issue measured: dupthresh recovery alone falls back on the timer."""
    rtos = 0
    for seed in (1, 2, 3):
        net = WireNet(seed=seed, delay=0.005, rate_bps=200e6, time_wait=1.0, rack=False, tlp=False,
                      **LOSSY)
        c, s = net.pair()
        _bulk(net, c, s, 4_000_000)
        assert c.rack is None and c.stats.rack_losses == 0
        rtos += c.stats.rto_timeouts
    assert rtos > 0


# --------------------------------------------------------------------------- tail loss probe


def _tail_drop_run(segs: int, drop_last: int, **kw):
    """Send `segs` full segments (no FIN); lose the last `drop_last` of them once each."""
    net = WireNet(delay=0.01, rate_bps=100e6, **kw)
    c, s = net.pair()
    size = segs * c.mss
    dropped = set()

    def drop(src, seg):
        if src != A or not len(seg.payload):
            return False
        e = (seg.seq + len(seg.payload) - c.iss) & MASK
        if e > size + 1 - drop_last * c.mss and e not in dropped:  # seq 1 is the first byte
            dropped.add(e)
            return True
        return False

    net.drop = drop
    data = random.Random(7).randbytes(size)
    _, sink = transfer(net, c, s, data, fin=False)
    net.run(lambda: len(sink.buf) == size and c.snd_una == c.snd_nxt, limit=30)
    assert sink.buf == data and len(dropped) == drop_last
    return net, c, s


def test_single_tail_loss_is_repaired_by_the_probe_without_rto():
    _net, c, _s = _tail_drop_run(200, 1)
    st = c.stats
    assert st.tlp_probes == 1 and st.tlp_recoveries == 1
    assert st.rto_timeouts == 0 and st.retransmits == 1 and st.fast_retransmits == 0
    # with one segment left in flight the probe allows for a delayed ACK and so goes when the
    # RTO would have (RFC 8985 §7.2), but in its place: the window is cut as for one loss
    # (to ssthresh), not collapsed to one segment
    assert c.cc.cwnd >= c.cc.ssthresh > 10 * c.mss


def test_tail_burst_loss_probe_lets_rack_find_the_rest():
    """Three segments lost at the tail: the probe's SACK lets RACK mark the others, no RTO."""
    net, c, _s = _tail_drop_run(200, 3)
    st = c.stats
    assert st.tlp_probes == 1 and st.rto_timeouts == 0
    assert st.rack_losses == 2 and st.retransmits == 3 and st.fast_retransmits == 1
    # three segments in flight: the probe went 2*srtt (+2 ms) after the last ACK, not at the RTO
    sends = [t for t, seg in net.sent_by(A, data_seg)]
    acks = [t for t, seg in net.sent_by(B) if t < sends[-3]]
    assert sends[-3] - (acks[-1] + 0.01) < 2 * c.stats.srtt + 0.01 < c.rto.rto


def test_lone_segment_probe_waits_for_a_delayed_ack():
    """One segment in flight: PTO = 2*srtt + the worst delayed ACK (rto_min), not 2*srtt alone.

    That is later than the RTO here, and the RTO's time bounds it (RFC 8985 §7.2): the probe
    goes when the RTO would have, in its place.
    """
    net = WireNet(delay=0.01)
    c, s = net.pair()
    done: list = []
    net.drop = lambda src, seg: src == A and len(seg.payload) == 100 and not done and not done.append(1)
    c.send(b"x" * 100)
    net.run(lambda: s.rcv_queued == 100, limit=5)
    sends = [t for t, seg in net.sent_by(A, data_seg)]
    assert len(sends) == 2 and c.stats.tlp_probes == 1 and c.stats.rto_timeouts == 0
    assert sends[1] - sends[0] == pytest.approx(min(2 * 0.02 + c.cfg.rto_min, c.rto.rto), abs=0.005)
    assert sends[1] - sends[0] > 2 * 0.02 + 0.1


def test_new_data_is_the_probe_when_there_is_some():
    """Window full of losses at the tail but more data queued and allowed: the probe is new data."""
    net = WireNet(delay=0.01, rate_bps=100e6)
    c, s = net.pair()
    lost = []

    def drop(src, seg):
        if src == A and len(seg.payload) and not lost:
            lost.append((seg.seq - c.iss) & MASK)
            return True
        return False

    c.send(b"y" * 1000)  # one small segment; lost
    net.drop = drop
    net.flush()
    c.send(b"z" * 1000)  # Nagle holds it while the first is out: the probe sends it
    net.run(lambda: s.rcv_queued == 2000, limit=5)
    assert c.stats.tlp_probes == 1 and c.stats.rto_timeouts == 0
    assert c.stats.rack_losses == 1  # the probe's SACK showed the first lost


# --------------------------------------------------------------------------- RTO beside them


def test_rto_fires_only_when_probe_and_rack_cannot_help():
    """A blackhole: one probe, then the RTO sequence; min_rto stays Linux's 200 ms."""
    net = WireNet(delay=0.005, rto_min=0.2, max_retries=3)
    c, _s = net.pair()
    c.send(b"q" * 5000)
    net.flush()
    net.blackhole.add(B)
    net.run(lambda: c.state is CLOSED, limit=60)
    assert c.stats.tlp_probes == 1 and c.stats.rto_timeouts == 3
    assert c.rto.min_rto == 0.2


# --------------------------------------------------------------------------- RTT samples


def test_receiver_whose_synack_was_retransmitted_converges_to_the_path_rtt():
    """The issue's last bullet: the handshake's sample is 1 s; data must correct it.

    The client's ACK of the SYN-ACK is lost, the server retransmits the SYN-ACK
    after 1 s, and the ACK that finally arrives echoes the *first* SYN-ACK's
    timestamp (a Linux client whose TS.Recent was not updated by the repeat
    does just that). Then the client sends 2 MB: the server, a pure
    receiver, only has the TSecr of the data to time the path with.
    """
    net = Net(delay=0.005, rate=10e6)
    lst = net.b.listen(80)
    net.drop = lambda src, seg: src == A and base(seg.flags) == ACK and net.now < 1.5
    c = net.a.connect(B, 80, net.now)
    net.run(lambda: c.state is ESTABLISHED, limit=5)
    net.run_for(1.2)
    synacks = [x for _, x in net.sent_by(B, lambda x: base(x.flags) == SYN | ACK)]
    assert len(synacks) == 2 and not lst.accept_queue
    first_tsval = synacks[0].tsval
    opts = tcp_options(ts=(c._ts_now(net.now), first_tsval))
    ack = build_tcp(A, B, c.local_port, 80, (c.iss + 1) & MASK, (c.irs + 1) & MASK, ACK,
                    c.rcv_window >> c.rcv_wscale, b"", 0, opts)
    net.b.input(A, B, ack, net.now)
    s = net.b.accept(80)
    assert s is not None and s.state is ESTABLISHED
    assert s.stats.srtt >= 1.0  # what the handshake measured
    net.drop = None
    data = random.Random(8).randbytes(2_000_000)
    _, sink = transfer(net, c, s, data, fin=False)
    net.run(lambda: len(sink.buf) == len(data), limit=60)
    assert sink.buf == data
    # the path's 10 ms, give or take the queue the sender builds (its own srtt says how much)
    assert s.stats.srtt < 2 * c.stats.srtt + 0.01 and s.stats.srtt < 0.25
    assert s.rto.rto == pytest.approx(0.2, abs=0.05)
    # an idle sender's first segment echoes an ACK from before the pause: not a sample
    net.run_for(3.0)
    net.apps.clear()
    c.send(b"w" * c.mss)
    net.run(lambda: s.rcv_queued >= c.mss, limit=5)
    assert s.stats.srtt < 0.25


def test_sack_only_acks_time_the_path(monkeypatch):
    """An ACK that only SACKs still times a segment sent once (Linux's sack_rtt)."""
    net = WireNet(seed=6, delay=0.005, rate_bps=200e6, loss=0.05)
    c, s = net.pair()
    samples = []
    orig = Rack.end_ack

    def spy(rack, conn, now):
        una0, before = rack._una0, conn.rto.srtt
        orig(rack, conn, now)
        if conn is c and conn.snd_una == una0 and rack.sample is not None:
            assert conn.rto.srtt != before or rack.sample == before
            samples.append(rack.sample)

    monkeypatch.setattr(Rack, "end_ack", spy)
    _bulk(net, c, s, 1_000_000)
    assert len(samples) > 10 and max(samples) < 0.05


# --------------------------------------------------------------------------- properties


def _check(r: Rack, sb: Scoreboard, una: int) -> None:
    segs = r.segs
    assert [x.start for x in segs] == list(r.starts)
    for x, y in itertools.pairwise(segs):
        assert x.end == y.start  # contiguous, in order
    assert all(x.end > una for x in segs) and (not segs or segs[0].start >= una)
    assert r.lost_bytes == sum(x.lost_n for x in segs if x.lost)
    assert all(not (x.lost and x.sacked) for x in segs)
    ts = list(r.tsorted)
    assert set(map(id, ts)) == {id(x) for x in segs if not x.sacked and not x.lost}
    for x, y in itertools.pairwise(ts):
        assert x.xmit <= y.xmit  # time order
    for x in segs:
        if x.sacked:
            assert sb.sacked_between(x.start, x.end) == x.end - x.start


class _Conn:
    """The few connection fields `Rack` reads, for driving it alone."""

    def __init__(self) -> None:
        from usnet.proto.tcp.config import TcpConfig

        self.sb = Scoreboard()
        self.snd_una = 1
        self.snd_nxt = 1
        self.snd_wnd = 1 << 30  # the peer's window never stops a retransmission here
        self.mss = 100
        self.max_segment = 100
        self.ts_ok = False
        self._recovery = 0
        self._recover = 0
        self._rtt_seq = None
        self.cfg = TcpConfig()
        self.out: list = []

        class _Rto:
            srtt = 0.05
            rto = 0.2

            def sample(self, rtt, retransmitted=False):
                return True

        class _Cc:
            cwnd = 100_000
            ssthresh = 1 << 31
            prr = True  # the window in recovery is PRR's (CongestionControl.prr)

            def on_congestion(self, now, flight):
                self.ssthresh = self.cwnd = max(flight // 2, 200)

        class _Stats:
            rack_losses = tlp_probes = tlp_recoveries = dsacks = fast_retransmits = recovery_undos = 0

        self.rto, self.cc, self.stats = _Rto(), _Cc(), _Stats()

    def _pipe(self) -> int:
        return 0

    def _emit(self, out, s, e, now, rtx):
        self.out.append((s, e, rtx))


ops = st.lists(st.one_of(
    st.tuples(st.just("send"), st.integers(1, 3)),
    st.tuples(st.just("sack"), st.integers(0, 40), st.integers(1, 6)),
    st.tuples(st.just("ack"), st.integers(0, 6)),
    st.tuples(st.just("tick"), st.floats(0.0, 0.05)),
    st.tuples(st.just("rtx"), st.just(0)),
    st.tuples(st.just("rto"), st.just(0)),
), max_size=60)


@given(ops)
@settings(max_examples=300, deadline=None)
# a renege puts a record sent at 0 back behind the retransmission sent at 0.03125
@example([("send", 1), ("send", 1), ("send", 1), ("sack", 0, 3), ("sack", 4, 2), ("tick", 0.03125),
          ("rtx", 0), ("ack", 1)])
def test_rack_bookkeeping_invariants(program):
    r = Rack()
    conn = _Conn()
    sb = conn.sb
    now = 0.0
    for op in program:
        kind = op[0]
        ran = False  # whether RACK's loss scan ran on this step
        if kind == "send":
            for _ in range(op[1]):
                n = conn.snd_nxt
                r.sent(n, n + 100, now)
                conn.snd_nxt = n + 100
        elif kind == "sack":
            lo = conn.snd_una + op[1] * 50
            hi = min(lo + op[2] * 50, conn.snd_nxt)
            if lo < hi:
                r.begin_ack(conn, None)
                r.sack(lo, hi, sb, now)
                r.end_ack(conn, now)
                ran = True
        elif kind == "ack":
            a = min(conn.snd_una + op[1] * 100, conn.snd_nxt)
            r.begin_ack(conn, None)
            if a > conn.snd_una:
                conn.snd_una = a
                r.cum_ack(a, now)
                if sb.starts and sb.advance(a):
                    sb.clear()
                    r.renege()
            r.end_ack(conn, now)
            ran = True
            if conn._recovery and a >= conn._recover:
                conn._recovery = 0
        elif kind == "tick":
            now += op[1]
            r.on_timer(conn, now)
        elif kind == "rtx":
            conn.out.clear()
            r.retransmit(conn, now, conn.out, 0, 1 << 30)
            assert all(rtx for _, _, rtx in conn.out)
            assert all(conn.snd_una <= s0 < e0 <= conn.snd_nxt for s0, e0, _ in conn.out)
            assert not r.lost_bytes
        elif kind == "rto":
            r.on_rto(sb)
            assert not r.tsorted
        _check(r, sb, conn.snd_una)
        # what RACK leaves in flight is not overdue by its own rule
        reo = r.reo_wnd(conn)
        for x in r.tsorted:
            if ran and sent_after(r.xmit_ts, r.end_seq, x.xmit, x.end):
                assert x.xmit + r.rtt + reo - now > 0


def test_reneged_record_is_still_found_lost_behind_a_later_retransmission():
    """After a renege the records once SACKed are outstanding again, at their place in time.

    C (sent at 0) was SACKed, B retransmitted at 0.03, then the receiver reneged. When D (sent
    at 0.01) is SACKed at 0.2, C has had RACK.rtt (0.19) and is overdue: lost (RFC 8985 §6.2
    step 5), although B, sent after D, is not.
    """
    r = Rack()
    conn = _Conn()
    sb = conn.sb
    for i in range(3):  # A, B, C at 0
        r.sent(1 + 100 * i, 101 + 100 * i, 0.0)
    conn.snd_nxt = 301
    r.begin_ack(conn, None)
    r.sack(1, 151, sb, 0.0)  # A whole, half of B
    r.sack(201, 301, sb, 0.0)  # C
    r.end_ack(conn, 0.0)
    b, c = r.segs[1], r.segs[2]
    assert b.lost and c.sacked and conn._recovery
    r.sent(301, 401, 0.01)  # D
    conn.snd_nxt = 401
    r.retransmit(conn, 0.03, conn.out, 0, 1 << 30)
    assert b.xmit == 0.03 and not b.lost
    r.begin_ack(conn, None)
    conn.snd_una = 101
    r.cum_ack(101, 0.03)
    assert sb.advance(101)  # the ACK ends inside [1, 151): the receiver dropped what it SACKed
    sb.clear()
    r.renege()
    r.end_ack(conn, 0.03)
    assert not c.sacked and [x.xmit for x in r.tsorted] == sorted(x.xmit for x in r.tsorted)
    r.begin_ack(conn, None)
    r.sack(301, 401, sb, 0.2)  # D
    r.end_ack(conn, 0.2)
    assert r.xmit_ts == 0.01
    assert c.lost and not b.lost


@given(st.integers(1, 200), st.lists(st.integers(0, 5000), max_size=50), st.integers(100, 2000))
@settings(max_examples=300, deadline=None)
def test_prr_never_sends_more_than_proportional_plus_one_mss(prior_segs, deliveries, mss):
    """RFC 6937: while pipe > ssthresh, out <= ceil(delivered * ssthresh / RecoverFS) (+ the first MSS)."""
    prior = prior_segs * mss
    ssthresh = max(prior * 7 // 10, 2 * mss)
    p = Prr()
    p.start(prior)
    pipe = prior
    for d in deliveries:
        pipe = max(pipe - d, 0)
        n = p.sndcnt(d, pipe, ssthresh, mss)
        assert n >= 0
        p.out += n
        pipe += n
        if pipe > ssthresh:
            assert p.out <= -(-p.delivered * ssthresh // prior) + mss
        else:
            assert pipe <= max(ssthresh, pipe - n + max(d, 0) + mss) + mss


def test_sent_after_orders_by_time_then_sequence():
    assert sent_after(2.0, 10, 1.0, 20) and not sent_after(1.0, 20, 2.0, 10)
    assert sent_after(1.0, 20, 1.0, 10) and not sent_after(1.0, 10, 1.0, 10)


def test_tcp_stats_show_the_new_counters():
    net = Net()
    c, _s = net.pair()
    d = c.stats.as_dict()
    for k in ("rack_losses", "tlp_probes", "tlp_recoveries", "dsacks", "dsacks_sent",
              "recovery_undos", "rto_timeouts"):
        assert d[k] == 0
    assert c.rack is not None and c.state is TcpState.ESTABLISHED
