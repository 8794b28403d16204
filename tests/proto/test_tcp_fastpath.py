"""Header prediction (usnet.proto.tcp.fastpath) and the lean output path
(usnet.proto.tcp.txfast: `tx_one`, and `send_none` for a connection with nothing to send)
change nothing but the cost.

Two connections talk directly (no endpoint, fixed ISNs and timestamp offsets, a fake clock);
hypothesis draws the traffic: writes of random sizes either way, reads, segments delivered
in order, out of order (any segment of those in flight), duplicated or lost, and time
passing (delayed ACKs, RTOs, probes). The same scenario runs with the fast paths on and with
them off (and with each alone); every segment either side sends, and every field of both connections (with their
RTO estimator, congestion control, RACK, rate, pacing and buffers) after every step, must be
the same. A third run counts that the fast paths are really taken.
"""

from __future__ import annotations

import random
from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.proto.tcp import TcpConnection, fastpath, txfast
from usnet.proto.tcp.bytequeue import ByteQueue
from usnet.proto.tcp.pacing import Pacer
from usnet.proto.wire.tcp import TcpParts, parse_tcp

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])
_SKIP = {"_c", "context", "due", "timer_at"}  # back references and the owner's fields


def snap(obj, depth: int = 0):
    """Every value reachable from ``obj`` through slots, as comparable plain data."""
    if depth > 6:
        return "..."
    if obj is None or isinstance(obj, (int, float, str, bytes, bool)):
        return obj
    if isinstance(obj, ByteQueue):
        return ("ByteQueue", obj.take(len(obj)))
    if isinstance(obj, (memoryview, bytearray)):
        return bytes(obj)
    if isinstance(obj, TcpParts):
        return bytes(obj)
    if isinstance(obj, (list, tuple)):
        return [snap(x, depth + 1) for x in obj]
    if isinstance(obj, (dict, OrderedDict)):
        return [(snap(k, depth + 1), snap(v, depth + 1)) for k, v in obj.items()]
    if hasattr(obj, "__slots__"):
        names = []
        for cls in type(obj).__mro__:
            for n in getattr(cls, "__slots__", ()):
                if n not in _SKIP and n not in names:
                    names.append(n)
        return (type(obj).__name__, [(n, snap(getattr(obj, n, "<unset>"), depth + 1)) for n in names])
    if hasattr(obj, "__dict__"):  # dataclass config and the like
        return (type(obj).__name__, sorted((k, snap(v, depth + 1)) for k, v in vars(obj).items()
                                           if k not in _SKIP))
    return repr(obj)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.booleans(), st.integers(1, 9000) | st.integers(1, 1500)),
        st.tuples(st.just("recv"), st.booleans(), st.integers(0, 70000)),
        st.tuples(st.just("deliver"), st.booleans(), st.integers(0, 40)),
        st.tuples(st.just("drop"), st.booleans(), st.integers(0, 40)),
        st.tuples(st.just("dup"), st.booleans(), st.integers(0, 40)),
        st.tuples(st.just("flush"), st.booleans(), st.integers(0, 3)),
        st.tuples(st.just("tick"), st.booleans(), st.integers(0, 300)),
    ),
    min_size=1, max_size=60,
)


def run(scenario, enabled: bool, opts: dict, tx: bool | None = None, none: bool | None = None,
        whole: bool | None = None):
    """Play ``scenario`` with header prediction ``enabled``, the lean output path ``tx``
    (default: as ``enabled``), the skip of an empty send ``none`` (default: as ``tx``) and
    header prediction's ACK of everything in flight ``whole`` (default: as ``enabled``);
    returns the trace (segments and state after each step) and the number of times the fast
    paths were taken (segments received, segments sent, empty sends skipped, whole ACKs)."""
    taken = [0, 0, 0, 0]
    real = fastpath.rx_established
    real_whole = fastpath._ack_whole
    real_tx = txfast.tx_one
    real_none = txfast.send_none

    def counting(c, seg, now):
        ok = real(c, seg, now)
        taken[0] += ok
        return ok

    def counting_tx(c, now, out):
        ok = real_tx(c, now, out)
        taken[1] += ok
        return ok

    def counting_none(c, now):
        ok = real_none(c, now)
        taken[2] += ok
        return ok

    def counting_whole(c, rack, una, a, tsecr, now):
        taken[3] += 1
        real_whole(c, rack, una, a, tsecr, now)

    fastpath.ENABLED = enabled
    fastpath.INLINE_ENABLED = enabled if whole is None else whole
    fastpath._ack_whole = counting_whole
    fastpath.rx_established = counting
    txfast.ENABLED = enabled if tx is None else tx
    txfast.tx_one = counting_tx
    txfast.NONE_ENABLED = txfast.ENABLED if none is None else none
    txfast.send_none = counting_none
    try:
        now = 1.0
        a = TcpConnection(A, 40000, B, 80, now=now, iss=0xFFFFF000, ts_offset=12345, **opts)
        b = TcpConnection(B, 80, A, 40000, now=now, iss=0x7FFFFF00, ts_offset=999, **opts)
        conns = {True: a, False: b}
        wire = {True: [], False: []}  # segments from a (True) or from b, in flight
        trace = []

        def pump():
            for side in (True, False):
                c = conns[side]
                for s in c.outgoing(now):
                    data = bytes(s)
                    trace.append((side, data))
                    wire[side].append(data)

        def arrive(side, data):
            src, dst = (A, B) if side else (B, A)
            conns[not side].on_segment(parse_tcp(data, 0, None, src, dst), now)

        a.connect(now)
        pump()
        b.accept_syn(parse_tcp(wire[True].pop(0), 0, None, A, B), now)
        pump()
        for _ in range(3):  # the handshake
            for side in (True, False):
                while wire[side]:
                    arrive(side, wire[side].pop(0))
            pump()
        payload = bytes(range(256)) * 40
        for op, side, n in scenario:
            c = conns[side]
            if op == "send":
                if c.state.name in ("ESTABLISHED", "CLOSE_WAIT"):
                    c.send(payload[: n % len(payload)] or b"x")
            elif op == "recv":
                trace.append(("read", side, c.recv(n)))
            elif op in ("deliver", "drop", "dup") and wire[side]:
                i = n % len(wire[side])
                data = wire[side][i] if op == "dup" else wire[side].pop(i)
                if op != "drop":
                    arrive(side, data)
            elif op == "flush":
                while wire[side]:
                    arrive(side, wire[side].pop(0))
            elif op == "tick":
                now += n / 1000.0
                for x in (a, b):
                    t = x.timeout()
                    if t is not None and t <= now:
                        x.on_timer(now)
            pump()
            trace.append((snap(a), snap(b), a.take_events(), b.take_events()))
        assert a.state.name != "SYN_SENT" and b.state.name != "SYN_RECEIVED"
        return trace, tuple(taken)
    finally:
        fastpath.ENABLED = True
        fastpath.rx_established = real
        fastpath.INLINE_ENABLED = True
        fastpath._ack_whole = real_whole
        txfast.ENABLED = True
        txfast.tx_one = real_tx
        txfast.NONE_ENABLED = True
        txfast.send_none = real_none


@settings(max_examples=150, deadline=None)
@given(ops, st.sampled_from([
    {}, {"sack": False}, {"timestamps": False}, {"congestion": "newreno", "pacing": False},
    {"congestion": "bbr"}, {"rack": False}, {"nodelay": True}, {"ecn": True},
    {"rcvbuf": 4096, "rcvbuf_max": 8192}, {"window_scaling": False, "delack_segments": 4},
    {"gather": True, "mss": 600}, {"sndbuf": 3000, "nodelay": True},
    {"gso_max": 9000}, {"gso_max": 6000, "gather": True, "mss": 600, "nodelay": True},
]), st.sampled_from([None, True, False]))
def test_fast_path_equals_general_path(scenario, opts, tx):
    fast, _ = run(scenario, True, opts, tx)  # tx False: header prediction alone; True: both
    slow, n_slow = run(scenario, False, opts, None if tx is None else not tx)  # the lean output alone
    if tx is None:
        assert n_slow == (0, 0, 0, 0)
    assert len(fast) == len(slow)
    for i, (x, y) in enumerate(zip(fast, slow)):
        assert x == y, f"step {i} differs"


_REQUEST_RESPONSE = [("send", True, 100), ("flush", True, 0), ("recv", False, 1000), ("send", False, 200),
                     ("flush", False, 0), ("recv", True, 1000)] * 10


def test_fast_path_is_taken_by_bulk_and_request_response():
    scenario = [("send", True, 3000), ("flush", True, 0), ("flush", False, 0)] * 10
    scenario += [("send", True, 100), ("flush", True, 0), ("recv", False, 1000), ("send", False, 200),
                 ("flush", False, 0), ("recv", True, 1000)] * 10
    trace, taken = run(scenario, True, {})
    assert taken[0] >= 40
    assert taken[1] >= 20  # the responses, and the requests after the first
    assert taken[3] >= 19  # the answers' ACKs on the requests, the requests' on the answers
    assert run(scenario, False, {})[0] == trace


def test_lean_output_is_taken_with_segmentation_offload():
    """A TAP with offload gives every connection a `max_segment` above its MSS: a request or an
    answer that fits one MSS is still one plain segment, and takes the lean path (it was never
    taken there, and `usnet bench http` paid the general sender twice a request)."""
    trace, taken = run(_REQUEST_RESPONSE, True, {"gso_max": 9000})
    assert taken[1] >= 19  # the responses, and the requests after the first
    assert run(_REQUEST_RESPONSE, False, {"gso_max": 9000})[0] == trace


_OPTIONS = [
    {}, {"sack": False}, {"congestion": "newreno", "pacing": False}, {"congestion": "newreno"},
    {"congestion": "bbr"}, {"rack": False}, {"nodelay": True}, {"ecn": True},
    {"rcvbuf": 4096, "rcvbuf_max": 8192}, {"sndbuf": 3000, "nodelay": True},
    {"gso_max": 9000}, {"gso_max": 6000, "gather": True, "mss": 600, "nodelay": True},
]


@settings(max_examples=200, deadline=None)
@given(ops, st.sampled_from(_OPTIONS), st.booleans())
def test_skipping_an_empty_send_changes_nothing(scenario, opts, others):
    """`txfast.send_none` on against off (the other fast paths both on or both off): the same
    segments, and every field of both connections (the pacer's rate, credit, stamp and hold,
    the rate sampler's app-limited mark, the timers) after every step. Scenarios draw bulk
    writes that overdraw the pacer's credit, empty pumps in between, losses (recovery, RACK's
    probe), and time (delayed ACKs, RTOs, idle restarts)."""
    on, _ = run(scenario, others, opts, others, True)
    off, n_off = run(scenario, others, opts, others, False)
    assert n_off[2] == 0
    assert len(on) == len(off)
    for i, (x, y) in enumerate(zip(on, off)):
        assert x == y, f"step {i} differs"


def test_only_a_send_is_a_step_of_the_pacer():
    """A connection is asked for output after every event (here both sides after each of the
    six steps of a round: write, deliver, read, ...), as an engine's pump asks each connection
    an event touched: the server's pump that receives a request asks before the answer is
    written. Only a pump with something to send is a step of the pacer (and of the general
    sender); the others are `send_none`. Without it: 125 pacer steps for 10 requests and
    their 10 answers."""
    steps = [0]
    real = Pacer.begin

    def counting(self, now, mss):
        steps[0] += 1
        return real(self, now, mss)

    Pacer.begin = counting
    try:
        trace, taken = run(_REQUEST_RESPONSE, True, {"gso_max": 9000})
    finally:
        Pacer.begin = real
    assert taken[2] >= 100, f"only {taken[2]} empty sends skipped"
    assert steps[0] <= 22, f"{steps[0]} pacer steps for 10 requests and 10 answers"
    assert run(_REQUEST_RESPONSE, True, {"gso_max": 9000}, none=False)[0] == trace


# Header prediction on, its ACK of everything in flight (`fastpath._ack_whole`) on against off:
# every configuration of the connection that changes what an ACK does (no RACK, no timestamps,
# NewReno, BBR's rate samples, no HyStart++, autotuning off, a tiny send buffer, pacing off).
_WHOLE_OPTIONS = _OPTIONS + [
    {"timestamps": False}, {"hystart": False}, {"congestion": "newreno", "hystart": False},
    {"autotune": False}, {"tlp": False}, {"delack": 0.0},
]


@settings(max_examples=250, deadline=None)
@given(ops, st.sampled_from(_WHOLE_OPTIONS), st.booleans())
def test_the_whole_ack_in_one_frame_changes_nothing(scenario, opts, tx):
    """An ACK of everything in flight, in `_ack_whole`, against the general `_on_ack`: the same
    segments and every field of both connections (RACK's records and clocks, the rate sample
    and the sampler's counters, the RTO estimator, HyStart++'s rounds, the windows, the
    timers) after every step. The random traffic reaches it from many states: in slow start
    and after it, after losses, recoveries, probes and RTOs, with the pacer and the lean
    output on or off."""
    on, _ = run(scenario, True, opts, tx, whole=True)
    off, n_off = run(scenario, True, opts, tx, whole=False)
    assert n_off[3] == 0
    assert len(on) == len(off)
    for i, (x, y) in enumerate(zip(on, off)):
        assert x == y, f"step {i} differs"


def test_the_whole_ack_is_taken_by_request_response_and_bulk():
    """Lockstep requests and answers: every segment after the first acknowledges all the other
    side has in flight; a bulk sender's last ACK of each burst does too."""
    trace, taken = run(_REQUEST_RESPONSE, True, {})
    assert taken[3] >= 19, taken
    assert run(_REQUEST_RESPONSE, True, {}, whole=False)[0] == trace
    bulk = [("send", True, 9000), ("flush", True, 0), ("flush", False, 0)] * 5
    trace, taken = run(bulk, True, {})
    assert taken[3] >= 5, taken
    assert run(bulk, True, {}, whole=False)[0] == trace


# Random sender states, one ACK of everything in flight: built twice from the same drawing, the ACK
# taken by `_ack_whole` in one and by `_on_ack` in the other. The traffic above reaches the usual
# states; these reach the corners it rarely does: records resent or marked lost, deliveries
# progressing between sends (the rate sample's choice of record), a raised FACK (reordering), an
# RTO backed off, retries counted, a reordering timer armed, no RTT estimate yet, HyStart++ in any
# phase, an app-limited mark, ssthresh set, an echo from the future; data in the ACK's segment
# (after data before it, or not), an ACK due or not, the quick-ACK mode's count and ping-pong.
_sends = st.lists(st.tuples(st.integers(0, 30), st.integers(1, 3000), st.booleans(), st.integers(0, 1448)),
                  min_size=1, max_size=8)
_state = st.fixed_dictionaries({
    "rtx": st.lists(st.integers(0, 20), max_size=3),
    "lost": st.lists(st.integers(0, 20), max_size=2),
    "backoffs": st.integers(0, 3),
    "retries": st.integers(0, 2),
    "t_reo": st.booleans(),
    "no_srtt": st.booleans(),
    "fack_up": st.booleans(),
    "app_limited": st.integers(0, 1) | st.integers(1, 1 << 20),
    "hs": st.tuples(st.sampled_from([0, 1, 2]), st.integers(-3, 3), st.integers(0, 9)),
    "ssthresh": st.none() | st.integers(1000, 200000),
    "cwnd": st.none() | st.integers(1000, 200000),
    "echo": st.integers(-50, 5),
    "reply": st.integers(0, 300) | st.integers(0, 1448),
    "ack_now": st.booleans(),
    "quick": st.tuples(st.integers(0, 3), st.booleans()),
    "unacked": st.integers(0, 3000),
    "gap": st.integers(0, 50),
})


def _sender_after(opts: dict, sends, state: dict, whole: bool):
    """The sender `a` after ``sends`` ((ms before, bytes, ACK what is out first)), ``state``'s
    perturbations, and the ACK of everything it has in flight; its snapshot, its output and
    events, and whether `_ack_whole` took the ACK."""
    from usnet.proto.wire.tcp import ACK, PSH, pack_ts

    taken = [0]
    real_whole = fastpath._ack_whole

    def counting(c, rack, una, a, tsecr, now):
        taken[0] += 1
        real_whole(c, rack, una, a, tsecr, now)

    fastpath.INLINE_ENABLED = whole
    fastpath._ack_whole = counting
    random.seed(7)  # BBR draws PROBE_BW's first phase: the same draws in both builds
    try:
        now = 1.0
        a = TcpConnection(A, 40000, B, 80, now=now, iss=0xFFFFF000, ts_offset=12345, **opts)
        b = TcpConnection(B, 80, A, 40000, now=now, iss=0x7FFFFF00, ts_offset=999, **opts)

        def to_b(segs):
            for s in segs:
                b.on_segment(parse_tcp(bytes(s), 0, None, A, B), now)

        def to_a(segs):
            for s in segs:
                a.on_segment(parse_tcp(bytes(s), 0, None, B, A), now)

        a.connect(now)
        b.accept_syn(parse_tcp(bytes(a.outgoing(now)[0]), 0, None, A, B), now)
        to_a(b.outgoing(now))
        to_b(a.outgoing(now))
        to_a(b.outgoing(now))
        payload = bytes(range(256)) * 12
        for ms, n, ack_first, back in sends:
            now += ms / 1000.0
            if back:  # b sends data (it carries the ACK of what b has)
                b.send(payload[:back])
                to_a(b.outgoing(now))
            elif ack_first:  # a partial delivery: what is out arrives, b's ACK comes back
                b.quickack = True
                to_a(b.outgoing(now))
            a.send(payload[:n])
            to_b(a.outgoing(now))
        rack = a.rack
        if rack is not None and rack.segs:
            segs = rack.segs
            for i in state["rtx"]:
                r = segs[i % len(segs)]
                r.rtx = True
                r.xmit = now - 0.0005 * (i % 3)
            for i in state["lost"]:
                r = segs[i % len(segs)]
                if not r.lost and r in rack.tsorted:
                    rack._mark_lost(r, a.sb)
            if state["fack_up"]:
                rack.fack = a.snd_nxt
            if state["t_reo"]:
                rack.t_reo = now + 0.01  # a reordering timer armed
        for _ in range(state["backoffs"]):
            a.rto.backoff()
        a._retries = state["retries"]
        if state["no_srtt"]:
            a.rto.srtt = None
        a.rate.app_limited = state["app_limited"]
        hs = a.cc.hystart
        if hs is not None:
            hs.phase, we, hs.samples = state["hs"]
            hs.window_end = None if we == -3 else a.snd_nxt + we * 500
        if state["ssthresh"] is not None:
            a.cc.ssthresh = state["ssthresh"]
        if state["cwnd"] is not None:
            a.cc.cwnd = state["cwnd"]
        a._ack_now = state["ack_now"]
        a._quick.left, a._quick.pingpong = state["quick"]
        a._rcv_unacked = state["unacked"]
        now += state["gap"] / 1000.0
        reply = payload[: state["reply"]]
        seg = pack_ts(b._psum, 80, 40000, (b.iss + b.snd_nxt) & 0xFFFFFFFF, (a.iss + a.snd_nxt) & 0xFFFFFFFF,
                      ACK | PSH if reply else ACK, 4000, b._ts_now(now), (a._ts_now(now) + state["echo"]) & 0xFFFFFFFF,
                      reply)
        taken[0] = 0  # (the partial deliveries' ACKs may have been whole ones too)
        a.on_segment(parse_tcp(bytes(seg), 0, None, B, A), now)
        out = [bytes(s) for s in a.outgoing(now)]
        return snap(a), out, a.take_events(), taken[0]
    finally:
        fastpath.INLINE_ENABLED = True
        fastpath._ack_whole = real_whole


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([{}, {"congestion": "newreno"}, {"congestion": "bbr"}, {"pacing": False},
                        {"hystart": False}, {"autotune": False}, {"nodelay": True}]), _sends, _state)
def test_the_whole_ack_from_random_sender_states(opts, sends, state):
    on = _sender_after(opts, sends, state, True)
    off = _sender_after(opts, sends, state, False)
    assert off[3] == 0
    assert on[:3] == off[:3]


def test_the_whole_ack_is_taken_from_a_perturbed_state():
    """The drawing above reaches `_ack_whole` (a check of the check)."""
    state = {"rtx": [1], "lost": [0], "backoffs": 2, "retries": 1, "t_reo": True, "no_srtt": False,
             "fack_up": True, "app_limited": 5, "hs": (0, -3, 0), "ssthresh": None, "cwnd": None, "echo": -3,
             "reply": 100, "gap": 5, "ack_now": False, "quick": (0, True), "unacked": 0}
    sends = [(0, 1400, False, 0), (3, 2000, True, 0), (2, 500, False, 300)]
    on = _sender_after({}, sends, state, True)
    assert on[3] == 1
    assert on[:3] == _sender_after({}, sends, state, False)[:3]
