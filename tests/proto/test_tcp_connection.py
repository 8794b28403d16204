"""TCP end to end through a simulated link, with a fake clock.

Two `TcpEndpoint`s talk through `Net`, a pure-Python link with a one-way
delay, an optional bottleneck rate, and seeded random loss, duplication and
reordering. Nothing sleeps: when nothing is in flight the clock jumps to the
next timer or arrival. Every segment either side sends is re-parsed with
its checksum verified, so every test also checks the wire format.

What is covered: handshake, data both ways, orderly and simultaneous close,
TIME-WAIT, simultaneous open, RST to a closed port, a vanishing peer (the
RTO back-off sequence and TimeoutError, SYN retries too), 2 MB through 2%
loss with reordering and duplication under CUBIC and NewReno, window
scaling, SACK, Nagle, delayed ACK, keep-alive, zero window and persist
probes, RFC 5961 hardening, out-of-window and malformed segments,
pause/resume, MSS clamping, IPv6, and random arrival orders (hypothesis).
"""

from __future__ import annotations

import errno
import hashlib
import heapq
import os
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.proto.tcp import (
    EV_CLOSED,
    EV_CONNECTED,
    EV_EOF,
    EV_ERROR,
    EV_READABLE,
    TcpConnection,
    TcpEndpoint,
    TcpState,
)
from usnet.proto.tcp.quickack import MAX_QUICKACKS
from usnet.proto.wire import ecn
from usnet.proto.wire.tcp import ACK, CWR, ECE, FIN, PSH, RST, SYN, TcpSegment, build_tcp, parse_tcp, tcp_options

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])
A6 = bytes.fromhex("20010db8000000000000000000000001")
B6 = bytes.fromhex("20010db8000000000000000000000002")
MASK = 0xFFFFFFFF

ESTABLISHED = TcpState.ESTABLISHED
CLOSED = TcpState.CLOSED
SYN_SENT = TcpState.SYN_SENT


class Net:
    """Two endpoints joined by a lossy link; the clock jumps from event to event."""

    def __init__(self, seed=1, delay=0.005, loss=0.0, dup=0.0, reorder=0.0, rate=None,
                 addrs=(A, B), a_opts=None, b_opts=None, mtu=1500, a_mtu=None, b_mtu=None,
                 **common):
        self.now = 0.0
        self.rng = random.Random(seed)
        self.A, self.B = addrs
        self.a = TcpEndpoint(self.A, mtu=a_mtu or mtu, **{**common, **(a_opts or {})})
        self.b = TcpEndpoint(self.B, mtu=b_mtu or mtu, **{**common, **(b_opts or {})})
        self.eps = {self.A: self.a, self.B: self.b}
        self.delay, self.loss, self.dup, self.reorder, self.rate = delay, loss, dup, reorder, rate
        self.busy = {self.A: 0.0, self.B: 0.0}
        self.heap = []
        self.n = 0
        self.drop = None  # drop(src, seg: TcpSegment) -> bool, for targeted losses
        self.mark = None  # mark(src, seg) -> bool: an ECN-capable segment arrives marked CE
        self.ecn_log = []  # (src, TcpSegment, ECN codepoint it was sent with) of every segment
        self.blackhole: set[bytes] = set()  # addresses whose traffic vanishes (both ways)
        self.log = []  # (time, src, TcpSegment) of every segment sent
        self.apps = []  # callables run after every step

    def transmit(self, src, dst, data, ect=0):
        seg = parse_tcp(data, 0, None, src, dst)  # our checksum must always be right
        self.log.append((self.now, src, seg))
        self.ecn_log.append((src, seg, ect))
        ce = bool(ect) and self.mark is not None and self.mark(src, seg)
        if src in self.blackhole or dst in self.blackhole:
            return
        if self.drop is not None and self.drop(src, seg):
            return
        r = self.rng
        if r.random() < self.loss:
            return
        for _ in range(2 if r.random() < self.dup else 1):
            t = self.now
            if self.rate:
                t = max(t, self.busy[src]) + len(data) / self.rate
                self.busy[src] = t
            t += self.delay
            if r.random() < self.reorder:
                t += r.random() * 3 * self.delay
            self.n += 1
            heapq.heappush(self.heap, (t, self.n, src, dst, bytes(data), ce))

    def flush(self):
        for src, ep in self.eps.items():
            for dst, data, _, ect in ep.outgoing(self.now):
                self.transmit(src, dst, data, ect)

    def step(self) -> bool:
        for app in self.apps:
            app()
        self.flush()
        ts = [self.heap[0][0]] if self.heap else []
        ts += [t for t in (self.a.timeout(), self.b.timeout()) if t is not None]
        if not ts:
            return False
        self.now = max(self.now, min(ts))
        while self.heap and self.heap[0][0] <= self.now:
            _, _, src, dst, data, ce = heapq.heappop(self.heap)
            self.eps[dst].input(src, dst, data, self.now, ce)
        for ep in self.eps.values():
            ep.on_timer(self.now)
        for app in self.apps:
            app()
        self.flush()
        return True

    def run(self, until=lambda: False, limit=600.0):
        start = self.now
        while not until():
            if not self.step():
                break
            if self.now - start > limit:
                raise AssertionError(f"simulation passed {limit} s without reaching the goal")
        return self.now

    def run_for(self, dt):
        end = self.now + dt
        while True:
            self.flush()
            ts = [self.heap[0][0]] if self.heap else []
            ts += [t for t in (self.a.timeout(), self.b.timeout()) if t is not None]
            if not ts or min(ts) > end:
                self.now = end
                return
            self.step()

    def sent_by(self, src, pred=lambda s: True):
        return [(t, s) for t, x, s in self.log if x == src and pred(s)]

    def pair(self, port=80, a_opts=None, b_opts=None):
        """An established (client on A, server on B) pair."""
        lst = self.b.listeners.get(port) or self.b.listen(port)
        if b_opts:
            lst.config = replace(lst.config, **b_opts)
        c = self.a.connect(self.B, port, self.now, **(a_opts or {}))
        self.run(lambda: lst.accept_queue and c.state is ESTABLISHED, limit=30)
        return c, self.b.accept(port)


def data_seg(s: TcpSegment) -> bool:
    return len(s.payload) > 0


def pure_ack(s: TcpSegment) -> bool:
    return s.flags == ACK and not len(s.payload)


class Pump:
    """Application: write ``data`` as space allows, then optionally FIN."""

    def __init__(self, net, conn, data, fin=True, chunk=65536):
        self.net, self.conn, self.data, self.fin, self.chunk = net, conn, data, fin, chunk
        self.off = 0
        self.shut = False

    def __call__(self):
        c = self.conn
        if c.state not in (ESTABLISHED, TcpState.CLOSE_WAIT) or c.error:
            return
        while self.off < len(self.data):
            n = c.send(memoryview(self.data)[self.off : self.off + self.chunk])
            if not n:
                break
            self.off += n
        if self.off >= len(self.data) and self.fin and not self.shut:
            c.shutdown_write(self.net.now)
            self.shut = True


class Sink:
    """Application: read everything, optionally only after ``start``."""

    def __init__(self, net, conn, start=0.0):
        self.net, self.conn, self.start = net, conn, start
        self.buf = bytearray()
        self.paused = False

    def __call__(self):
        if self.paused or self.net.now < self.start:
            return
        while True:
            d = self.conn.recv(1 << 20)
            if not d:
                break
            self.buf += d


def transfer(net, c, s, data, fin=True):
    pump, sink = Pump(net, c, data, fin), Sink(net, s)
    net.apps += [pump, sink]
    return pump, sink


def digest(b) -> str:
    return hashlib.sha256(b).hexdigest()


def wire_seq(conn, n=None):
    return (conn.irs + (conn.rcv_nxt if n is None else n)) & MASK


def wire_ack(conn, n=None):
    return (conn.iss + (conn.snd_nxt if n is None else n)) & MASK


def inject(net, src_conn, dst_conn, flags, seq, ack, payload=b"", window=1000, ts=True):
    """Hand ``dst_conn``'s endpoint a crafted segment from ``src_conn``'s 4-tuple."""
    opts = b""
    if ts and dst_conn.ts_ok:
        opts = tcp_options(ts=((dst_conn.ts_recent + 1) & MASK, 0))
    src, dst = src_conn.local_addr, dst_conn.local_addr
    data = build_tcp(src, dst, src_conn.local_port, dst_conn.local_port, seq, ack, flags, window,
                     payload, 0, opts)
    net.eps[dst].input(src, dst, data, net.now)
    return [parse_tcp(x, 0, None, dst, src) for d, x, _, _ in net.eps[dst].outgoing(net.now)]



def base(flags: int) -> int:
    """The flags less ECN's (a handshake asks for ECN by default: TcpConfig.ecn)."""
    return flags & ~(ECE | CWR)


# --------------------------------------------------------------------------- handshake and data


def test_handshake_and_data_both_ways():
    net = Net()
    c, s = net.pair()
    assert c.state is ESTABLISHED and s.state is ESTABLISHED
    assert c.take_events() & EV_CONNECTED and s.take_events() & EV_CONNECTED
    assert c.ts_ok and c.sack_ok and c.ws_ok and s.ts_ok and s.sack_ok
    syn = net.sent_by(A, lambda x: base(x.flags) == SYN)[0][1]
    synack = net.sent_by(B, lambda x: base(x.flags) == SYN | ACK)[0][1]
    assert syn.mss == 1460 and syn.sack_ok and syn.wscale is not None and syn.tsval is not None
    assert syn.flags & (ECE | CWR) == ECE | CWR and synack.flags & (ECE | CWR) == ECE  # ECN asked, granted
    assert c.ecn_ok and s.ecn_ok
    assert synack.ack == (syn.seq + 1) & MASK and synack.mss == 1460
    c.send(b"hello from a")
    s.send(b"hello from b")
    net.run(lambda: s.rcv_queued == 12 and c.rcv_queued == 12, limit=5)
    assert s.take_events() & EV_READABLE
    assert s.recv() == b"hello from a" and c.recv() == b"hello from b"
    assert s.recv() == b"" and not s.eof
    # bigger, both ways at once
    d1, d2 = random.Random(1).randbytes(300_000), random.Random(2).randbytes(200_000)
    _, k1 = transfer(net, c, s, d1, fin=False)
    _, k2 = transfer(net, s, c, d2, fin=False)
    net.run(lambda: len(k1.buf) == len(d1) and len(k2.buf) == len(d2), limit=30)
    assert k1.buf == d1 and k2.buf == d2
    assert c.stats.retransmits == 0 and s.stats.retransmits == 0
    assert c.stats.srtt == pytest.approx(0.01, abs=0.01)


def test_orderly_close_time_wait_then_closed():
    net = Net(time_wait=2.0)
    c, s = net.pair()
    c.send(b"bye")
    c.shutdown_write(net.now)
    assert c.state is TcpState.FIN_WAIT_1
    net.run(lambda: s.state is TcpState.CLOSE_WAIT and c.state is TcpState.FIN_WAIT_2, limit=5)
    assert not s.eof  # FIN seen, but data before it is unread
    assert s.recv() == b"bye" and s.eof and s.take_events() & EV_EOF
    with pytest.raises(BrokenPipeError):
        c.send(b"more")
    s.send(b"last words")  # half-close: B may still send
    net.run(lambda: c.rcv_queued == 10, limit=5)
    s.shutdown_write(net.now)
    assert s.state is TcpState.LAST_ACK
    net.run(lambda: c.state is TcpState.TIME_WAIT, limit=5)
    t_tw = net.now
    net.run(lambda: s.state is CLOSED, limit=5)
    assert s.error is None and s.take_events() & EV_CLOSED
    assert c.recv() == b"last words" and c.eof
    net.run(lambda: c.state is CLOSED, limit=10)
    assert net.now == pytest.approx(t_tw + 2.0, abs=0.02)
    assert c.error is None and not net.a.connections and not net.b.connections


def test_the_ack_of_a_fin_rides_on_the_close_that_follows_it():
    """As Linux's tcp_fin (CLOSE_WAIT enters ping-pong): the passive closer's close carries the
    ACK of the peer's FIN, three segments for the close instead of four."""
    net = Net(delay=0.001)
    c, s = net.pair()
    n_b = len(net.sent_by(B))
    c.shutdown_write(net.now)
    net.run(lambda: s.state is TcpState.CLOSE_WAIT, limit=1)
    assert s.eof and not [x for x in net.b.outgoing(net.now)]  # no ACK of its own yet
    s.close(net.now)
    net.run(lambda: s.state is CLOSED and c.state is TcpState.TIME_WAIT, limit=1)
    from_b = [x for _, x in net.sent_by(B)[n_b:]]
    assert [base(x.flags) for x in from_b] == [FIN | ACK]
    assert from_b[0].ack == wire_ack(c)  # it acknowledges A's FIN


def test_the_ack_of_a_fin_goes_alone_after_the_delayed_ack_time():
    net = Net(delay=0.001)
    c, s = net.pair()
    c.shutdown_write(net.now)
    net.run(lambda: s.state is TcpState.CLOSE_WAIT, limit=1)
    t_fin = net.now
    net.run(lambda: c.state is TcpState.FIN_WAIT_2, limit=1)  # the application never closes
    assert net.now == pytest.approx(t_fin + 0.040 + 0.001)
    assert [base(x.flags) for _, x in net.sent_by(B)[-1:]] == [ACK]


def test_a_fin_after_unacknowledged_data_is_acknowledged_at_once():
    net = Net(delay=0.001)
    c, s = net.pair()
    c.send(b"d" * (2 * c.mss))  # more than a segment, with the FIN behind it: no delay (Linux alike)
    c.shutdown_write(net.now)
    net.run(lambda: s.state is TcpState.CLOSE_WAIT, limit=1)
    t_fin = net.now
    net.run(lambda: c.state is TcpState.FIN_WAIT_2, limit=1)
    assert net.now - t_fin <= 0.002


def test_time_wait_reacks_a_repeated_fin():
    net = Net(time_wait=30.0)
    c, s = net.pair()
    c.shutdown_write(net.now)
    net.run(lambda: s.state is TcpState.CLOSE_WAIT, limit=5)
    s.shutdown_write(net.now)
    # lose A's ACK of B's FIN, once
    lost = []
    net.drop = lambda src, seg: src == A and not lost and seg.flags == ACK and not lost.append(1)
    net.run(lambda: s.state is CLOSED, limit=10)
    assert lost and c.state is TcpState.TIME_WAIT
    fins = net.sent_by(B, lambda x: x.flags & FIN)
    assert len(fins) == 2  # B retransmitted its FIN and A, in TIME-WAIT, answered it
    assert s.error is None


def test_syn_to_a_time_wait_entry_opens_a_new_incarnation():
    net = Net(time_wait=60.0)
    c, s = net.pair()
    s.shutdown_write(net.now)  # the server closes first, so it holds TIME-WAIT
    net.run(lambda: c.state is TcpState.CLOSE_WAIT, limit=5)
    c.shutdown_write(net.now)
    net.run(lambda: s.state is TcpState.TIME_WAIT and c.state is CLOSED, limit=5)
    net.now += 1.0  # a later ISN (RFC 6528 clock) lies above the old sequence space
    c2 = net.a.connect(B, 80, net.now, local_port=c.local_port)
    net.run(lambda: c2.state is ESTABLISHED and net.b.listeners[80].accept_queue, limit=5)
    s2 = net.b.accept(80)
    assert s2 is not s and net.b.stats.time_wait_reused == 1
    c2.send(b"again")
    net.run(lambda: s2.rcv_queued, limit=5)
    assert s2.recv() == b"again"


def test_simultaneous_open():
    net = Net()
    c = net.a.connect(B, 7000, 0.0, local_port=6000)
    d = net.b.connect(A, 6000, 0.0, local_port=7000)
    net.run(lambda: c.state is ESTABLISHED and d.state is ESTABLISHED, limit=10)
    # each side sent a SYN, then a SYN-ACK carrying its own SYN again
    for src in (A, B):
        flags = [base(x.flags) for _, x in net.sent_by(src) if x.flags & SYN]
        assert flags[:2] == [SYN, SYN | ACK]
    assert not c.ecn_ok and not d.ecn_ok  # RFC 3168 sets ECN up in a SYN and its SYN-ACK only
    c.send(b"ping")
    d.send(b"pong")
    net.run(lambda: c.rcv_queued and d.rcv_queued, limit=5)
    assert d.recv() == b"ping" and c.recv() == b"pong"
    assert c.ts_ok and d.ts_ok and c.snd_wscale == d.rcv_wscale


def test_simultaneous_close():
    net = Net(time_wait=1.0)
    c, s = net.pair()
    c.shutdown_write(net.now)
    s.shutdown_write(net.now)
    states = set()
    net.apps.append(lambda: states.update({c.state, s.state}))
    net.run(lambda: c.state is CLOSED and s.state is CLOSED, limit=10)
    assert TcpState.CLOSING in states and TcpState.TIME_WAIT in states
    assert c.error is None and s.error is None


def test_rst_to_closed_port_refuses():
    net = Net()
    c = net.a.connect(B, 9, 0.0)
    net.run(lambda: c.state is CLOSED, limit=5)
    assert isinstance(c.error, ConnectionRefusedError)
    assert c.take_events() & EV_ERROR
    assert net.b.stats.no_socket == 1 and net.b.stats.resets_sent == 1
    rst = net.sent_by(B, lambda x: x.flags & RST)[0][1]
    syn = net.sent_by(A)[0][1]
    assert rst.flags == RST | ACK and rst.ack == (syn.seq + 1) & MASK
    with pytest.raises(ConnectionRefusedError):
        c.send(b"x")


@pytest.mark.parametrize("cookies", [0, 1])
def test_listener_answers_stray_ack_with_rst_and_bounds_the_syn_queue(cookies):
    """Past the SYN queue's bound a SYN gets a cookie, or with syncookies=0 is dropped."""
    net = Net(b_opts={"syncookies": cookies})
    net.b.listen(80, syn_backlog=2)
    out = inject(net, TcpConnection(A, 5555, B, 80, now=0), TcpConnection(B, 80, A, 5555, now=0),
                 ACK, 1000, 777)
    assert len(out) == 1 and out[0].flags == RST and out[0].seq == 777
    net.blackhole.add(A)  # SYN-ACKs vanish, so SYN-RECEIVED connections pile up
    for port in (1001, 1002, 1003, 1004):
        net.a.connect(B, 80, net.now, local_port=port)
        net.flush()
    net.blackhole.clear()
    for (_t, src, seg) in list(net.log):
        if src == A and base(seg.flags) == SYN:
            data = build_tcp(A, B, seg.sport, seg.dport, seg.seq, 0, SYN, 1000, b"", 0,
                             tcp_options(mss=1460))
            net.b.input(A, B, data, net.now)
    assert len(net.b.listeners[80].syn_queue) == 2
    assert (net.b.stats.syn_dropped, net.b.stats.syncookies_sent) == ((0, 2) if cookies else (2, 0))
    assert net.b.stats.listen_drops == (0 if cookies else 2)


def test_lost_synack_is_sent_again():
    net = Net()
    lost = []
    net.drop = lambda src, seg: base(seg.flags) == SYN | ACK and not lost and not lost.append(1)
    c, s = net.pair()
    assert lost and len(net.sent_by(B, lambda x: base(x.flags) == SYN | ACK)) == 2
    assert net.now == pytest.approx(1.0, abs=0.05)  # one initial RTO
    assert s.state is ESTABLISHED and c.stats.srtt is not None


def test_rst_to_a_half_open_passive_connection_removes_it():
    net = Net()
    lst = net.b.listen(80)
    peer = TcpConnection(A, 4444, B, 80, now=0.0)
    syn = build_tcp(A, B, 4444, 80, 1000, 0, SYN, 1000, b"", 0, tcp_options(mss=1460))
    net.b.input(A, B, syn, 0.0)
    assert len(lst.syn_queue) == 1
    half = next(iter(lst.syn_queue.values()))
    out = inject(net, peer, half, RST, 1001, 0)
    assert not out and not lst.syn_queue and not lst.accept_queue
    net.b.outgoing(net.now)
    assert not net.b.connections and net.b.accept(80) is None


def test_port_chooser_callback_and_ephemeral_ports():
    asked = []
    ep = TcpEndpoint(A, port_chooser=lambda addr, port: asked.append((addr, port)) or 40000)
    c = ep.connect(B, 80, 0.0)
    assert c.local_port == 40000 and asked == [(B, 80)]
    ep2 = TcpEndpoint(A, ephemeral=(50000, 50002))
    ports = {ep2.connect(B, 80, 0.0).local_port for _ in range(3)}
    assert ports == {50000, 50001, 50002}
    with pytest.raises(OSError):
        ep2.connect(B, 80, 0.0)



def _syn(ep: TcpEndpoint, now: float) -> TcpSegment:
    ((dst, data, _, _),) = ep.outgoing(now)
    return parse_tcp(data, 0, None, ep.local_addr, dst)


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 1e5), st.floats(0.001, 120), st.integers(1, 0xFFFF))
def test_a_later_connection_on_the_same_4_tuple_has_a_later_isn_and_tsval(t1, gap, port):
    """Each usnet socket has an endpoint of its own (usnet.client.engine); a connection on a 4-tuple the
    peer may still hold in TIME_WAIT must still start after the last one in sequence space and
    in timestamps, or the peer refuses its SYN (RFC 6191): the keys are the process's."""
    first = TcpEndpoint(A, port_chooser=lambda addr, p: port)
    second = TcpEndpoint(A, port_chooser=lambda addr, p: port)
    first.connect(B, 80, t1)
    a = _syn(first, t1)
    second.connect(B, 80, t1 + gap)
    b = _syn(second, t1 + gap)
    assert 2 < (b.seq - a.seq) % 2**32 < 2**31  # past the old one's SYN and FIN
    assert a.tsval is not None and 0 <= (b.tsval - a.tsval) % 2**32 < 2**31



# --------------------------------------------------------------------------- ECN (RFC 3168)


def marked_transfer(mark_at: list[int], size: int = 2_000_000, **kw):
    """`size` bytes from a to b at 12.5 MB/s; the i-th ECN-capable data segment a sends, for i in
    `mark_at`, arrives marked CE. Returns the net, both connections and what b read."""
    net = Net(delay=0.01, rate=12.5e6, **kw)
    c, s = net.pair()
    ect_sent = []

    def mark(src, seg):
        if src != net.A or not len(seg.payload):
            return False
        ect_sent.append(seg)
        return len(ect_sent) - 1 in mark_at

    net.mark = mark
    data = random.Random(5).randbytes(size)
    _, sink = transfer(net, c, s, data)
    net.run(lambda: len(sink.buf) == size and c.state is not ESTABLISHED, limit=60)
    assert bytes(sink.buf) == data
    return net, c, s


def test_a_ce_mark_halves_the_window_once_a_window_and_loses_nothing():
    _net, c, s = marked_transfer([200, 201, 202, 203])  # four marks in one window
    assert s.stats.ce_received == 4
    assert c.stats.ecn_reductions == 1  # the same news four times: one cut
    assert c.stats.retransmits == 0 and c.stats.rto_timeouts == 0  # and nothing was lost for it
    _net, c, s = marked_transfer([200, 900])  # windows apart: two cuts
    assert c.stats.ecn_reductions == 2 and c.stats.retransmits == 0


def test_ece_is_echoed_until_the_sender_s_cwr_and_only_new_data_is_ecn_capable():
    net, _c, _s = marked_transfer([300])
    log = net.ecn_log
    # the sender: SYN, pure ACKs and the FIN-only segment go NOT_ECT, every data segment ECT(0)
    assert all(ect == ecn.ECT0 for src, seg, ect in log if src == net.A and len(seg.payload))
    assert all(ect == ecn.NOT_ECT for src, seg, ect in log if not len(seg.payload))
    # the receiver's ACKs carry ECE from the mark until the first data segment with CWR arrives
    sent = [(i, seg) for i, (src, seg, _) in enumerate(log) if src == net.A and len(seg.payload)]
    (cwr,) = [i for i, seg in sent if seg.flags & CWR]
    marked_at = sent[300][0]
    assert cwr > marked_at
    acks = [(i, bool(seg.flags & ECE)) for i, (src, seg, _) in enumerate(log) if src == net.B and not seg.flags & SYN]
    run = [k for k, (_, ece) in enumerate(acks) if ece]
    assert run and acks[run[0]][0] > marked_at  # from the first ACK after the mark
    assert run == list(range(run[0], run[-1] + 1))  # on every ACK, in one run
    assert acks[run[-1]][0] > cwr and not acks[-1][1]  # until the CWR (on its way meanwhile), and no longer


def test_retransmissions_are_never_ecn_capable():
    net = Net(delay=0.01, rate=12.5e6, loss=0.02, seed=9)
    c, s = net.pair()
    data = random.Random(6).randbytes(500_000)
    _, sink = transfer(net, c, s, data)
    net.run(lambda: len(sink.buf) == len(data), limit=120)
    assert c.stats.retransmits > 0
    seen: set[int] = set()
    for src, seg, ect in net.ecn_log:
        if src == net.A and len(seg.payload):
            assert ect == (ecn.NOT_ECT if seg.seq in seen else ecn.ECT0)
            seen.add(seg.seq)


@pytest.mark.parametrize("a_ecn, b_ecn", [(True, False), (False, True), (False, False)])
def test_ecn_is_used_only_when_both_ends_agree(a_ecn, b_ecn):
    net = Net(a_opts={"ecn": a_ecn}, b_opts={"ecn": b_ecn})
    c, s = net.pair()
    assert not c.ecn_ok and not s.ecn_ok
    c.send(b"x" * 5000)
    net.run(lambda: s.rcv_queued == 5000, limit=5)
    assert all(ect == ecn.NOT_ECT for _, _, ect in net.ecn_log)
    assert not any(seg.flags & (ECE | CWR) for _, seg, _ in net.ecn_log if not seg.flags & SYN)


# --------------------------------------------------------------------------- timeouts


def test_peer_vanishing_times_out_after_rto_backoff():
    net = Net(rto_min=0.2, max_retries=5, rto_max=1.5)
    c, _s = net.pair()
    c.send(b"x" * 100)
    net.blackhole.add(B)
    t0 = net.now
    net.run(lambda: c.state is CLOSED, limit=60)
    assert isinstance(c.error, TimeoutError) and c.error.errno == errno.ETIMEDOUT
    times = [t for t, seg in net.sent_by(A, data_seg) if t >= t0]
    gaps = [round(b - a, 6) for a, b in zip(times, times[1:])]
    # initial send; the tail loss probe when the RTO would fire (2*srtt + 0.2 s for a lone
    # segment is later, so the RTO's time bounds it: RFC 8985 §7.2, as Linux); then 5
    # retransmissions at RTO 0.2 from the probe, doubling, capped at 1.5
    assert len(times) == 7
    assert gaps == pytest.approx([0.2, 0.2, 0.4, 0.8, 1.5, 1.5], abs=1e-6)
    assert net.now - times[-1] == pytest.approx(1.5, abs=1e-6)  # the 6th expiry gives up
    assert c.stats.retransmits == 6 and c.stats.rto_timeouts == 5 and c.stats.tlp_probes == 1


def test_user_timeout_gives_up_before_max_retries():
    """TCP_USER_TIMEOUT (RFC 5482): the clock, not the retry count, ends the wait."""
    net = Net(rto_min=0.2, max_retries=15, rto_max=60.0, user_timeout=1.0)
    c, _s = net.pair()
    c.send(b"x" * 100)
    net.blackhole.add(B)
    t0 = net.now
    net.run(lambda: c.state is CLOSED, limit=60)
    assert isinstance(c.error, TimeoutError) and c.error.errno == errno.ETIMEDOUT
    # sent at t0, probed at +0.2 (TLP), retransmitted at +0.4 and +0.8; the next RTO is
    # clamped to the user timeout (as Linux's tcp_clamp_rto_to_user_timeout) and gives up at +1.0
    assert net.now - t0 == pytest.approx(1.0, abs=1e-6)
    assert c.stats.retransmits == 3 and c.stats.tlp_probes == 1 and c.stats.rto_timeouts == 2


def test_syn_retries_then_timeout():
    net = Net(syn_retries=3, rto_initial=1.0)
    net.blackhole.add(B)
    c = net.a.connect(B, 80, 0.0)
    net.run(lambda: c.state is CLOSED, limit=60)
    assert isinstance(c.error, TimeoutError)
    times = [t for t, seg in net.sent_by(A, lambda x: base(x.flags) == SYN)]
    assert times == pytest.approx([0, 1, 3, 7])
    assert net.now == pytest.approx(15)


def test_keepalive_probes_and_death():
    net = Net(a_opts=dict(keepalive=True, keepalive_idle=10.0, keepalive_interval=2.0,
                          keepalive_count=3))
    c, s = net.pair()
    net.run_for(35.0)
    assert c.state is ESTABLISHED and c.stats.keepalive_probes == 3  # ~10 s, 20 s, 30 s
    probes = net.sent_by(A, lambda x: pure_ack(x) and x.seq == wire_ack(c, c.snd_una - 1))
    assert len(probes) == 3
    last_heard = c._last_rx
    net.blackhole.add(B)
    net.run(lambda: c.state is CLOSED, limit=60)
    assert isinstance(c.error, TimeoutError)
    assert net.now == pytest.approx(last_heard + 10 + 3 * 2.0, abs=0.01)
    assert s.state is ESTABLISHED  # B never knew


# --------------------------------------------------------------------------- bulk and loss


@pytest.mark.parametrize("algo", ["cubic", "newreno"])
def test_2mb_through_loss_reorder_and_duplication(algo):
    net = Net(seed=7, delay=0.01, loss=0.02, dup=0.01, reorder=0.05, rate=12.5e6, congestion=algo,
              time_wait=1.0)
    c, s = net.pair()
    data = random.Random(3).randbytes(2_000_000)
    _, sink = transfer(net, c, s, data)
    net.run(lambda: s.eof, limit=120)
    assert len(sink.buf) == len(data) and digest(sink.buf) == digest(data)
    assert c.cc.name == algo
    assert c.stats.retransmits > 0 and c.stats.fast_retransmits > 0
    assert s.stats.ooo_segments > 0 and s.stats.dup_segments > 0
    s.shutdown_write(net.now)
    net.run(lambda: c.state is CLOSED and s.state is CLOSED, limit=30)
    assert c.error is None and s.error is None


def test_window_scaling_and_buffer_autotuning_allow_large_flights():
    # default buffers (128 KiB receive, 64 KiB send) must grow for a 10 ms x 50 MB/s path
    net = Net(delay=0.05, rate=50e6)
    c, s = net.pair()
    assert c.snd_wscale > 0 and s.rcv_wscale == c.snd_wscale
    rcv0, snd0 = s.rcvbuf_cap, c.sndbuf_cap
    data = bytes(8_000_000)
    _, sink = transfer(net, c, s, data, fin=False)
    peak = [0]
    net.apps.append(lambda: peak.__setitem__(0, max(peak[0], c.in_flight)))
    net.run(lambda: len(sink.buf) == len(data), limit=60)
    assert peak[0] > 4 * 65535
    assert s.rcvbuf_cap >= 4 * rcv0 and c.sndbuf_cap >= 4 * snd0
    assert s.rcvbuf_cap <= s.cfg.rcvbuf_max and c.sndbuf_cap <= c.cfg.sndbuf_max
    assert all(x.window <= 0xFFFF for _, x in net.sent_by(B))


def test_without_window_scaling_flight_stays_below_64k():
    net = Net(delay=0.02, rcvbuf=1 << 20, rcvbuf_max=1 << 20, b_opts=dict(window_scaling=False))
    c, s = net.pair()
    assert not c.ws_ok and c.snd_wscale == 0 and c.rcv_wscale == 0
    data = bytes(1_000_000)
    _, sink = transfer(net, c, s, data, fin=False)
    peak = [0]
    net.apps.append(lambda: peak.__setitem__(0, max(peak[0], c.in_flight)))
    net.run(lambda: len(sink.buf) == len(data), limit=60)
    assert 60_000 < peak[0] <= 65535


def _burst_loss_run(sack):
    """Lose 5 segments of one window on their first transmission; return (conn, time)."""
    net = Net(delay=0.02, rate=12.5e6, sack=sack, rcvbuf=1 << 20)
    c, s = net.pair()
    data = random.Random(9).randbytes(400_000)
    seen = set()
    victims = {c.iss + 1 + k * c.mss for k in (40, 43, 46, 49, 52)}

    def drop(src, seg):
        if src != A or not len(seg.payload):
            return False
        u = seg.seq - c.iss if seg.seq >= c.iss else seg.seq + (1 << 32) - c.iss
        key = c.iss + u
        if key in victims and key not in seen:
            seen.add(key)
            return True
        return False

    net.drop = drop
    t0 = net.now
    _, sink = transfer(net, c, s, data, fin=False)
    net.run(lambda: len(sink.buf) == len(data), limit=60)
    assert sink.buf == data and len(seen) == 5
    return net, c, s, net.now - t0


def test_sack_recovers_a_burst_exactly_and_faster():
    net, c, _s, t_sack = _burst_loss_run(True)
    assert c.sack_ok
    assert c.stats.retransmits == 5 and c.stats.retransmitted_bytes == 5 * c.mss
    assert c.stats.rto_timeouts == 0 and c.stats.fast_retransmits == 1
    sack_acks = [x for _, x in net.sent_by(B) if x.sacks]
    assert sack_acks and max(len(x.sacks) for x in sack_acks) == 3
    net2, c2, _s2, t_plain = _burst_loss_run(False)
    assert not c2.sack_ok and not [x for _, x in net2.sent_by(B) if x.sacks]
    assert c2.stats.retransmits >= 5
    assert t_sack < t_plain  # NewReno finds one hole per round trip


def test_lossy_transfer_both_directions_ipv6():
    net = Net(seed=3, addrs=(A6, B6), loss=0.01, reorder=0.02, delay=0.005, rate=20e6)
    c, s = net.pair()
    assert c.mss == 1500 - 40 - 20 - 12
    d1, d2 = random.Random(4).randbytes(300_000), random.Random(5).randbytes(300_000)
    _, k1 = transfer(net, c, s, d1)
    _, k2 = transfer(net, s, c, d2)
    net.run(lambda: s.eof and c.eof, limit=60)
    assert k1.buf == d1 and k2.buf == d2


# --------------------------------------------------------------------------- Nagle, delayed ACK


def test_nagle_holds_small_segments_until_acked_and_nodelay_does_not():
    for nodelay, expected in ((False, 1), (True, 3)):
        net = Net(a_opts=dict(nodelay=nodelay))
        c, s = net.pair()
        for ch in (b"a", b"b", b"c"):
            c.send(ch)
            for dst, data, _, _ in net.a.outgoing(net.now):
                net.transmit(A, dst, data)
        sent = net.sent_by(A, data_seg)
        assert len(sent) == expected
        if not nodelay:
            net.run(lambda s=s: s.rcv_queued == 3, limit=5)
            assert len(net.sent_by(A, data_seg)) == 2  # "bc" together once "a" was acked
        assert c.nodelay is nodelay


def test_delayed_ack_every_second_segment_or_after_40ms():
    net = Net(a_opts=dict(nodelay=True), delay=0.001)
    c, s = net.pair()
    # The first segments are acknowledged one by one, at once (Linux's quick-ACK mode on a
    # connection's first data: usnet.proto.tcp.quickack), 16 of them; then ACKs are delayed.
    quick = 0
    for _ in range(MAX_QUICKACKS + 1):
        n = len(net.sent_by(B, pure_ack))
        c.send(b"q" * c.mss)
        net.flush()
        sent = net.now
        net.run(lambda n=n: len(net.sent_by(B, pure_ack)) > n, limit=1)
        if net.now - sent > 0.030:
            break
        quick += 1
    assert quick == MAX_QUICKACKS
    s.recv()
    net.run_for(0.1)
    n0 = len(net.sent_by(B, pure_ack))
    c.send(b"x" * c.mss)
    net.flush()
    net.run(lambda: s.rcv_queued == c.mss, limit=1)
    t_arrival = net.now
    assert not [x for x in net.b.outgoing(net.now)]  # no ACK yet
    assert s.timeout() == pytest.approx(t_arrival + 0.040)
    net.run(lambda: len(net.sent_by(B, pure_ack)) > n0, limit=1)
    assert net.now == pytest.approx(t_arrival + 0.040)
    # two full segments: the second is acknowledged at once
    n1 = len(net.sent_by(B, pure_ack))
    c.send(b"y" * 2 * c.mss)
    net.run(lambda: len(net.sent_by(B, pure_ack)) > n1, limit=1)
    assert net.now - net.sent_by(A, data_seg)[-1][0] < 0.005


# --------------------------------------------------------------------------- flow control


def test_zero_window_persist_probes_and_lost_window_update():
    net = Net(b_opts=dict(rcvbuf=16384, autotune=False), rto_min=0.2)
    c, s = net.pair()
    data = random.Random(6).randbytes(100_000)
    pump = Pump(net, c, data, fin=False)
    net.apps.append(pump)
    net.run(lambda: c.stats.window_probes >= 4, limit=30)
    # Never shrinking a scaled window rounds its edge up (as Linux ALIGNs the current window), up
    # to 127 bytes an ACK; paced segments draw more ACKs, so less than a segment more may fit.
    assert c.snd_wnd == 0 and s.rcv_window == 0 and 16384 <= s.rcv_queued < 16384 + c.mss
    probes = [t for t, x in net.sent_by(A, lambda x: pure_ack(x) and x.seq == wire_ack(c, c.snd_una - 1))]
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert all(g2 > g1 * 1.5 for g1, g2 in zip(gaps, gaps[1:]))  # persist back-off
    assert c.state is ESTABLISHED and c.error is None
    net.run_for(0.1)  # the last probe's answer is in; no probe outstanding
    # B reads; its window update is lost; the next probe fetches the window
    lost = []
    net.drop = lambda src, seg: (src == B and seg.window > 0 and not lost and not lost.append(seg))
    sink = Sink(net, s)
    net.apps.append(sink)
    net.run(lambda: len(sink.buf) == len(data), limit=60)
    assert lost and sink.buf == data
    assert c.stats.window_probes >= 5


def test_pause_resume_loses_nothing_and_acks_still_flow():
    net = Net(seed=2, loss=0.01, max_retries=3, rto_min=0.2)
    c, s = net.pair()
    d1, d2 = random.Random(7).randbytes(500_000), random.Random(8).randbytes(200_000)
    _, k1 = transfer(net, c, s, d1)
    _, k2 = transfer(net, s, c, d2)
    net.run(lambda: len(k1.buf) > 100_000, limit=30)
    c.pause()
    t_pause = net.now
    net.run(lambda: len(k2.buf) == len(d2), limit=60)  # A still ACKs B's data while paused
    net.run_for(120.0)  # far longer than 3 backed-off retries would survive
    paused_data = [x for t, x in net.sent_by(A, data_seg) if t > t_pause + 0.001]
    assert not paused_data and c.state is not CLOSED and c.error is None
    assert net.sent_by(A, lambda x: pure_ack(x))[-1][0] > t_pause
    c.resume()
    net.run(lambda: s.eof, limit=60)
    assert k1.buf == d1 and k2.buf == d2


def test_mss_clamped_by_mtu_and_config():
    net = Net(a_mtu=1500, b_mtu=1280)
    c, s = net.pair()
    assert s.mss_local == 1240 and c.mss == 1240 - 12 and s.mss == 1240 - 12
    _, sink = transfer(net, c, s, bytes(50_000), fin=False)
    net.run(lambda: len(sink.buf) == 50_000, limit=10)
    assert max(len(x.payload) for _, x in net.sent_by(A)) == 1228
    net2 = Net(a_opts=dict(mss=1000))
    c2, s2 = net2.pair()
    assert c2.mss_local == 1000 and s2.mss == 1000 - 12


def test_path_mtu_shrinks_segments_mid_transfer():
    net = Net(delay=0.01, rate=12.5e6, rcvbuf=1 << 20)
    c, s = net.pair()
    data = random.Random(11).randbytes(400_000)
    _, sink = transfer(net, c, s, data, fin=False)
    net.run(lambda: len(sink.buf) > 100_000, limit=10)
    c.set_path_mtu(1000)
    t = net.now
    c.set_path_mtu(1400)  # never grows back this way
    assert c.mss == 1000 - 20 - 20 - 12
    net.run(lambda: len(sink.buf) == len(data), limit=10)
    assert sink.buf == data
    assert max(len(x.payload) for tt, x in net.sent_by(A) if tt > t) == c.mss


def test_max_segment_for_offload():
    net = Net(rcvbuf=1 << 20)
    c, s = net.pair()
    c.max_segment = 16 * c.mss
    _, sink = transfer(net, c, s, bytes(500_000), fin=False)
    net.run(lambda: len(sink.buf) == 500_000, limit=10)
    assert max(len(x.payload) for _, x in net.sent_by(A)) == 16 * c.mss


# --------------------------------------------------------------------------- RFC 5961 and bad input


def test_rst_in_window_but_not_exact_gets_a_challenge_ack():
    net = Net()
    c, s = net.pair()
    out = inject(net, c, s, RST, wire_seq(s, s.rcv_nxt + 100), 0)
    assert s.state is ESTABLISHED and s.stats.challenge_acks == 1
    assert len(out) == 1 and out[0].flags == ACK and out[0].ack == wire_seq(s)
    out = inject(net, c, s, RST, wire_seq(s, s.rcv_nxt + 10 * s.rcv_window), 0)
    assert not out and s.state is ESTABLISHED and s.stats.out_of_window == 1
    c.send(b"still alive")
    net.run(lambda: s.rcv_queued, limit=5)
    assert s.recv() == b"still alive"


def test_exact_rst_resets():
    net = Net()
    c, s = net.pair()
    assert not inject(net, c, s, RST, wire_seq(s), 0)
    assert s.state is CLOSED and isinstance(s.error, ConnectionResetError)
    assert s.take_events() & EV_ERROR and s.readable
    with pytest.raises(ConnectionResetError):
        s.send(b"x")


def test_a_reset_after_the_peers_fin_is_a_broken_pipe():
    """Linux's tcp_reset: a reset in CLOSE_WAIT (the peer closed first, then answered our data
    with RST) sets EPIPE, not ECONNRESET: the next send is BrokenPipeError."""
    net = Net()
    c, s = net.pair()
    c.close(net.now)
    net.run(lambda: s.state is TcpState.CLOSE_WAIT, limit=5)
    assert not inject(net, c, s, RST, wire_seq(s), 0)
    assert s.state is CLOSED and isinstance(s.error, BrokenPipeError) and s.error.errno == errno.EPIPE
    with pytest.raises(BrokenPipeError):
        s.send(b"x")


def test_syn_in_established_state_gets_a_challenge_ack():
    net = Net()
    c, s = net.pair()
    out = inject(net, c, s, SYN, wire_seq(s, s.rcv_nxt + 5), 0)
    assert s.state is ESTABLISHED and s.stats.challenge_acks == 1
    assert len(out) == 1 and out[0].flags == ACK
    out = inject(net, c, s, SYN, (wire_seq(s) - 1000) & MASK, 0)  # old SYN: plain dup ACK
    assert len(out) == 1 and s.state is ESTABLISHED
    c.send(b"ok")
    net.run(lambda: s.rcv_queued, limit=5)
    assert s.recv() == b"ok"


def test_ack_too_new_or_too_old_is_dropped_with_a_challenge():
    net = Net()
    c, s = net.pair()
    s.send(b"z" * 1000)
    net.run(lambda: s.snd_una == s.snd_nxt, limit=5)
    for ack in (wire_ack(s, s.snd_nxt + 5000), wire_ack(s, s.snd_una - s.max_snd_wnd - 10)):
        before = s.stats.challenge_acks
        out = inject(net, c, s, ACK | PSH, wire_seq(s), ack, b"data")
        assert s.rcv_queued == 0 and s.stats.challenge_acks == before + 1
        assert len(out) == 1 and out[0].ack == wire_seq(s)
    # a merely old ACK (within MAX.SND.WND) is fine: the data is taken
    inject(net, c, s, ACK | PSH, wire_seq(s), wire_ack(s, s.snd_una - 100), b"data")
    assert s.recv() == b"data" and s.stats.bad_acks == 2


def test_challenge_acks_are_rate_limited():
    net = Net(b_opts=dict(challenge_ack_limit=10))
    c, s = net.pair()
    for i in range(30):
        inject(net, c, s, RST, wire_seq(s, s.rcv_nxt + 1 + i), 0)
    assert s.stats.challenge_acks == 10 and s.stats.challenge_acks_suppressed == 20
    net.now += 1.5
    inject(net, c, s, RST, wire_seq(s, s.rcv_nxt + 1), 0)
    assert s.stats.challenge_acks == 11 and s.state is ESTABLISHED


def test_out_of_window_data_dropped_and_counted():
    net = Net()
    c, s = net.pair()
    out = inject(net, c, s, ACK, wire_seq(s, s.rcv_nxt + s.rcv_window + 5000), wire_ack(s), b"far")
    assert s.stats.out_of_window == 1 and s.stats.bad_segments == 1 and not s.rcv_queued
    assert len(out) == 1 and out[0].ack == wire_seq(s)  # a duplicate ACK says where we are
    old_ts = inject(net, c, s, ACK, wire_seq(s), wire_ack(s), b"old", ts=False)
    assert s.rcv_queued == 3  # no timestamp on a data segment: accepted (Linux leniency)
    s.recv()
    # PAWS: a timestamp older than TS.Recent marks an old duplicate
    data = build_tcp(A, B, c.local_port, s.local_port, wire_seq(s), wire_ack(s), ACK, 1000, b"dup",
                     0, tcp_options(ts=((s.ts_recent - 5) & MASK, 0)))
    net.b.input(A, B, data, net.now)
    assert s.stats.paws_rejected == 1 and not s.rcv_queued
    assert old_ts is not None


def test_bad_checksum_and_garbage_are_counted_not_raised():
    net = Net()
    c, s = net.pair()
    good = build_tcp(A, B, c.local_port, s.local_port, wire_seq(s), wire_ack(s), ACK, 1000, b"hi")
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    net.b.input(A, B, bytes(bad), net.now)
    assert net.b.stats.bad_checksum == 1 and not s.rcv_queued
    rng = random.Random(1)
    for _ in range(200):
        net.b.input(A, B, rng.randbytes(rng.randrange(0, 60)), net.now)
    garbage = bytearray(good)
    garbage[12] = 0x30  # data offset 3 words
    net.b.input(A, B, bytes(garbage), net.now)
    bad_opt = build_tcp(A, B, c.local_port, s.local_port, 1, 2, ACK, 1000, b"", 0,
                        bytes([2, 3, 0, 0]))
    net.b.input(A, B, bad_opt, net.now)
    st_ = net.b.stats
    assert st_.bad_header + st_.bad_checksum == 203 and st_.bad_header >= 2
    assert s.state is ESTABLISHED
    net.b.input(A, B, good, net.now)
    assert s.recv() == b"hi"


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_into_an_endpoint_never_raise(data):
    ep = TcpEndpoint(B, verify_checksum=False)
    ep.listen(80)
    ep.input(A, B, data, 0.0)
    ep.outgoing(0.0)
    st_ = ep.stats
    assert st_.segs_in == 1


# --------------------------------------------------------------------------- reassembly property


def _established_server(rcvbuf=1 << 20):
    s = TcpConnection(B, 80, A, 4321, now=0.0, iss=0xFFFFFF00, rcvbuf=rcvbuf, rcvbuf_max=rcvbuf)
    irs = 0xFFFFF000  # close to the wrap, so the stream crosses it
    s.accept_syn(TcpSegment(4321, 80, irs, 0, SYN, 65535, mss=1460, wscale=7, sack_ok=True), 0.0)
    synack = parse_tcp(s.outgoing(0.0)[0], 0, None, B, A)
    assert base(synack.flags) == SYN | ACK
    s.on_segment(TcpSegment(4321, 80, (irs + 1) & MASK, (synack.seq + 1) & MASK, ACK, 512), 0.01)
    assert s.state is ESTABLISHED
    return s, (irs + 1) & MASK


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_random_arrival_orders_reassemble_the_stream(data):
    stream = random.Random(data.draw(st.integers(0, 99))).randbytes(data.draw(st.integers(1, 20000)))
    s, base = _established_server()
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=40)))) if len(stream) > 1 else []
    edges = [0, *cuts, len(stream)]
    segs = [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
    segs += data.draw(st.lists(st.sampled_from(segs), max_size=10))  # duplicates
    order = data.draw(st.permutations(segs))
    got = bytearray()
    sacks_seen = False
    for i, (a, b) in enumerate(order):
        s.on_segment(TcpSegment(4321, 80, (base + a) & MASK, (s.iss + 1) & MASK, ACK, 512,
                                stream[a:b]), 0.02 + i * 1e-4)
        for x in s.outgoing(0.02 + i * 1e-4):
            sacks_seen |= parse_tcp(x, 0, None, B, A).sacks is not None
        if data.draw(st.booleans()):
            got += s.recv(data.draw(st.integers(1, 5000)))
    got += s.recv()
    assert bytes(got) == stream
    assert not s._reasm and s.rcv_nxt == 1 + len(stream)
    if any(a > 0 for a, _ in order[:1]):
        assert sacks_seen  # data beyond a hole was announced with SACK


@settings(max_examples=int(os.environ.get("TCP_FUZZ_EXAMPLES", "60")), deadline=None)
@given(st.data())
def test_hostile_segments_never_raise_and_keep_invariants(data):
    """Random flags, numbers near and far from the windows, SACK blocks and timestamps."""
    net = Net(seed=data.draw(st.integers(0, 9)))
    c, s = net.pair()
    c.send(b"q" * 5000)
    s.send(b"r" * 5000)
    net.run_for(0.002)  # data in flight both ways
    near = lambda base: st.one_of(st.integers(0, MASK), st.integers(-70000, 70000).map(lambda d: (base + d) & MASK))
    for _ in range(data.draw(st.integers(1, 15))):
        flags = data.draw(st.integers(0, 0x3F))
        seq = data.draw(near(wire_seq(s)))
        ack = data.draw(near(wire_ack(s)))
        sacks = data.draw(st.one_of(st.none(), st.lists(st.tuples(near(wire_ack(s)), near(wire_ack(s))),
                                                        min_size=1, max_size=3)))
        tsval = data.draw(st.one_of(st.none(), near(s.ts_recent)))
        seg = TcpSegment(c.local_port, s.local_port, seq, ack, flags, data.draw(st.integers(0, 0xFFFF)),
                         data.draw(st.binary(max_size=3000)), sacks=tuple(sacks) if sacks else None,
                         tsval=tsval, tsecr=data.draw(st.one_of(st.none(), st.integers(0, MASK))))
        una, rcv = s.snd_una, s.rcv_nxt
        s.on_segment(seg, net.now)
        for x in s.outgoing(net.now):
            parse_tcp(x, 0, None, B, A)
        s.on_timer(net.now + data.draw(st.floats(0, 100)))
        s.outgoing(net.now)
        if s.state is CLOSED:
            assert s.error is None or isinstance(s.error, (ConnectionResetError, TimeoutError))
            break
        assert s.snd_una >= una and s.snd_una <= s.snd_nxt and s.rcv_nxt >= rcv
        assert s.sb.sacked == sum(e - b for b, e in zip(s.sb.starts, s.sb.ends))
        assert all(b >= s.snd_una and e <= s.snd_nxt for b, e in zip(s.sb.starts, s.sb.ends))
        assert s._reasm.nbytes <= s.rcvbuf_cap + (1 << s.rcv_wscale)


@settings(max_examples=int(os.environ.get("TCP_FUZZ_EXAMPLES", "60")), deadline=None)
@given(st.data())
def test_hostile_segments_at_the_endpoint_never_raise_and_are_counted(data):
    """Any ports (0 too), flags and lengths, valid checksums, at a listener and a live connection."""
    net = Net(seed=data.draw(st.integers(0, 9)))
    c, s = net.pair()
    ep = net.eps[B]
    ports = st.one_of(st.sampled_from([0, c.local_port, s.local_port, 80]), st.integers(0, 0xFFFF))
    for _ in range(data.draw(st.integers(1, 20))):
        sport, dport = data.draw(ports), data.draw(ports)
        seg = build_tcp(A, B, sport, dport, data.draw(st.integers(0, MASK)), data.draw(st.integers(0, MASK)),
                        data.draw(st.integers(0, 0xFF)), data.draw(st.integers(0, 0xFFFF)),
                        data.draw(st.binary(max_size=200)), 0, b"")
        cut = data.draw(st.integers(0, len(seg)))
        before = ep.stats.segs_in
        ep.input(A, B, seg[:cut] if data.draw(st.booleans()) else seg, net.now)
        assert ep.stats.segs_in == before + 1
        if sport == 0 or dport == 0:
            assert ep.stats.bad_header + ep.stats.bad_checksum >= 1
        for dst, x, _, _ in ep.outgoing(net.now):
            parse_tcp(x, 0, None, B, dst)  # whatever we answer is well-formed
        net.run_for(0.01)
    assert all(k[1] and k[2] for k in ep.connections)  # no connection was made for port 0


def test_an_icmp_error_never_ends_an_established_connection_and_needs_a_sequence_in_flight():
    net = Net()
    c, s = net.pair()
    c.send(b"x" * 3000)
    net.flush()  # on the wire, not yet acknowledged: [una, nxt) is in flight
    in_flight = (c.iss + c.snd_una) & MASK
    assert c.snd_nxt > c.snd_una
    assert not c.icmp_error(errno.ECONNREFUSED, (c.iss + c.snd_nxt + 5000) & MASK)  # never sent
    assert c.soft_error is None
    assert c.icmp_error(errno.ECONNREFUSED, in_flight)  # a hard error, but established: kept, not fatal
    assert c.state is ESTABLISHED and c.error is None and c.soft_error == errno.ECONNREFUSED
    net.run(lambda: s.rcv_queued == 3000, limit=5)  # and the data still goes


def test_with_ip_recverr_an_icmp_error_is_pending_at_once_and_the_connection_goes_on():
    """tcp_v4_err with inet->recverr: an established connection's error is the socket's (sk_err,
    here `pending_error`) instead of a soft one; "fragmentation needed" (EMSGSIZE) stays no error."""
    net = Net()
    c, s = net.pair()
    c.cfg.recverr = True
    c.send(b"x" * 3000)
    net.flush()
    in_flight = (c.iss + c.snd_una) & MASK
    assert c.icmp_error(errno.EMSGSIZE, in_flight)
    assert c.pending_error is None
    assert not c.icmp_error(errno.EHOSTUNREACH, (c.iss + c.snd_nxt + 5000) & MASK)  # never sent
    assert c.pending_error is None
    assert c.icmp_error(errno.EHOSTUNREACH, in_flight)
    assert c.pending_error == errno.EHOSTUNREACH and c.soft_error == errno.EMSGSIZE
    assert c.state is ESTABLISHED and c.error is None
    net.run(lambda: s.rcv_queued == 3000, limit=5)


@pytest.mark.parametrize("err", [errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPROTO,
                                 errno.ECONNREFUSED])
def test_any_icmp_error_ends_a_connect_in_syn_sent_as_linux_does(err):
    """tcp_v4_err/tcp_v6_err: in SYN-SENT every error but "fragmentation needed" ends the connect with
    its errno (a neighbour that never answered: EHOSTUNREACH), only for the SYN's sequence number."""
    net = Net()
    net.blackhole.add(B)
    c = net.a.connect(B, 80, 0.0)
    net.run_for(0.1)
    assert not c.icmp_error(err, (c.iss + 5000) & MASK)  # not our SYN: nothing happens
    assert c.state is SYN_SENT and c.error is None
    assert c.icmp_error(errno.EMSGSIZE, c.iss)  # "fragmentation needed": a path MTU, no failure
    assert c.state is SYN_SENT and c.error is None
    assert c.icmp_error(err, c.iss)
    assert c.state is CLOSED and c.error is not None and c.error.errno == err
    assert c.error.strerror == os.strerror(err)


def test_segments_with_sack_blocks_stay_within_the_mss_both_ways():
    """Data both ways with losses: a full-sized data segment sent while its own receive side has a
    hole carried SACK blocks on top of its MSS of payload (1,512 bytes of IPv6 for a 1,500-byte
    path: EMSGSIZE, and the client's engine failed: usnetd logged its flow "stalled"). Every
    segment stays within the negotiated MSS plus the TCP header, and both transfers finish."""
    net = Net(loss=0.03, seed=5, rate=12.5e6, delay=0.01)
    sizes, sacks = [], []
    send = net.transmit

    def transmit(src, dst, data, ect=0):
        sizes.append(len(data))
        seg = parse_tcp(data, 0, None, src, dst)
        if seg.sacks:
            sacks.append(len(seg.payload))
        send(src, dst, data, ect)

    net.transmit = transmit
    c, s = net.pair()
    up, down = os.urandom(400_000), os.urandom(400_000)
    _, k_up = transfer(net, c, s, up)
    _, k_down = transfer(net, s, c, down)
    net.run(lambda: len(k_up.buf) == len(up) and len(k_down.buf) == len(down), limit=120)
    assert bytes(k_up.buf) == up and bytes(k_down.buf) == down
    assert c.sack_ok and c.ts_ok and sacks  # there were holes, and blocks told of them
    assert max(sizes) <= c._mss_base + 20, max(sizes)
