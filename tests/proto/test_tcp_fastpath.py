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


def run(scenario, enabled: bool, opts: dict, tx: bool | None = None, none: bool | None = None):
    """Play ``scenario`` with header prediction ``enabled``, the lean output path ``tx``
    (default: as ``enabled``) and the skip of an empty send ``none`` (default: as ``tx``);
    returns the trace (segments and state after each step) and the number of times the fast
    paths were taken (segments received, segments sent, empty sends skipped)."""
    taken = [0, 0, 0]
    real = fastpath.rx_established
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

    fastpath.ENABLED = enabled
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
        assert n_slow == (0, 0, 0)
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
