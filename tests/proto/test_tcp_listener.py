"""Listeners under floods, full queues and odd segments (issue 17), sans-I/O.

scapy is the independent forger: it builds the segments fed to a
`TcpEndpoint` and parses what the endpoint answers, so neither side of a
check is usnet's own wire code. The cookie arithmetic has property tests
(usnet.proto.tcp.syncookie); the end-to-end cases run two endpoints through
the simulated link of test_tcp_connection (`Net`).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.proto.test_tcp_connection import Net
from usnet.proto.ip import IpLayer
from usnet.proto.tcp import TcpEndpoint, TcpState
from usnet.proto.tcp.syncookie import (
    MAX_AGE,
    MSSTAB4,
    MSSTAB6,
    TS_BITS,
    SynCookies,
    mss_index,
    ts_decode,
    ts_encode,
)
from usnet.proto.wire.ipv4 import IPOPT_BAD, IPOPT_SRR, ipv4_source_route

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])
A_S, B_S = "10.0.0.1", "10.0.0.2"
MASK = 0xFFFFFFFF
ESTABLISHED = TcpState.ESTABLISHED

addr4 = st.binary(min_size=4, max_size=4)
addr6 = st.binary(min_size=16, max_size=16)
port = st.integers(1, 65535)
u32 = st.integers(0, MASK)


# -- the cookie itself --------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.tuples(addr4, addr4), st.tuples(addr6, addr6)), port, port, u32,
       st.integers(0, 70000), st.floats(0, 1e8), st.floats(0, 59.999), st.binary(min_size=1, max_size=32))
def test_a_cookie_checks_within_a_minute_and_gives_back_its_mss(addrs, lport, rport, isn, mss, now, dt, secret):
    laddr, raddr = addrs
    table = MSSTAB4 if len(laddr) == 4 else MSSTAB6
    c = SynCookies(secret)
    cookie, got_mss = c.make(laddr, lport, raddr, rport, isn, mss, now)
    assert got_mss == table[mss_index(mss, table)]
    assert got_mss <= mss or got_mss == table[0]  # rounded down, never up (but to the table's floor)
    assert c.check(laddr, lport, raddr, rport, isn, cookie, now + dt) == got_mss
    assert SynCookies(secret).check(laddr, lport, raddr, rport, isn, cookie, now) == got_mss  # key, not state


@settings(max_examples=300, deadline=None)
@given(addr4, addr4, port, port, u32, st.integers(536, 9000), st.floats(0, 1e8),
       st.floats(MAX_AGE * 60.0, 200 * 60.0))
def test_an_old_cookie_is_refused(laddr, raddr, lport, rport, isn, mss, now, age):
    c = SynCookies(b"k")
    cookie, _ = c.make(laddr, lport, raddr, rport, isn, mss, now)
    assert c.check(laddr, lport, raddr, rport, isn, cookie, now + age) == 0


@settings(max_examples=300, deadline=None)
@given(addr4, addr4, port, port, u32, st.integers(536, 9000), st.floats(0, 1e8),
       st.sampled_from(["raddr", "rport", "lport", "isn", "secret", "cookie"]), st.integers(1, MASK))
def test_a_cookie_for_something_else_or_forged_is_refused(laddr, raddr, lport, rport, isn, mss, now, what, delta):
    c = SynCookies(b"k")
    cookie, _ = c.make(laddr, lport, raddr, rport, isn, mss, now)
    args = {"laddr": laddr, "lport": lport, "raddr": raddr, "rport": rport, "peer_isn": isn, "cookie": cookie}
    checker = c
    if what == "raddr":
        args["raddr"] = ((int.from_bytes(raddr, "big") + delta) & MASK).to_bytes(4, "big")
    elif what == "rport" or what == "lport":
        args[what] = (args[what] + delta) % 65535 + 1
        if args[what] == (rport if what == "rport" else lport):
            return
    elif what == "isn":  # added into the cookie as Linux does: past the MSS index, as for "cookie"
        args["peer_isn"] = (isn + 4 + delta % ((1 << 24) - 12)) & MASK
    elif what == "secret":
        checker = SynCookies(b"another key")
    else:  # past the MSS index: a small change there would only name another table entry (as Linux)
        args["cookie"] = (cookie + 4 + delta % ((1 << 24) - 12)) & MASK
    # a forgery passes with probability ~8 / 2**24: hypothesis' few hundred tries never see one
    assert checker.check(now=now, **args) == 0


@given(u32, st.one_of(st.none(), st.integers(0, 14)), st.booleans(), st.booleans())
def test_the_timestamp_carries_the_options_and_never_runs_ahead(ts_now, ws, sack, ecn):
    ts = ts_encode(ts_now, ws, sack, ecn)
    assert ts_decode(ts) == (ws, sack, ecn)
    assert 0 <= (ts_now - ts) & MASK < 1 << TS_BITS  # at most 63 ms behind the clock, never ahead


def test_mss_index_is_linuxs():
    assert [MSSTAB4[mss_index(m, MSSTAB4)] for m in (0, 535, 536, 1299, 1300, 1452, 1460, 9000)] == \
        [536, 536, 536, 536, 1300, 1440, 1460, 1460]


# -- scapy against the endpoint -------------------------------------------------------------------


def tcp(flags: str, sport: int = 4000, dport: int = 80, seq: int = 1000, ack: int = 0, src: str = A_S,
        options=(), payload: bytes = b"", window: int = 8192):
    """A segment forged by scapy: (source address bytes, the TCP bytes with a right checksum)."""
    from scapy.layers.inet import IP, TCP

    p = IP(src=src, dst=B_S) / TCP(sport=sport, dport=dport, flags=flags, seq=seq & MASK, ack=ack & MASK,
                                   window=window, options=list(options)) / payload
    p = IP(bytes(p))
    return bytes(map(int, src.split("."))), bytes(p[TCP])


def answers(ep: TcpEndpoint, now: float = 0.0) -> list:
    """What the endpoint sends, parsed by scapy."""
    from scapy.layers.inet import TCP

    return [(dst, TCP(seg)) for dst, seg, _cut, _ecn in ep.outgoing(now)]


def feed(ep: TcpEndpoint, seg, now: float = 0.0):
    src, data = seg
    return ep.input(src, B, data, now)


SYN_OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (777, 0)), ("NOP", None), ("WScale", 7)]
ODD = {"NULL": "", "FIN": "F", "XMAS": "FPU", "SYN+FIN": "SF", "RST": "R", "SYN+FIN+PSH+URG": "SFPU"}


@pytest.mark.parametrize("name", list(ODD))
def test_odd_flags_to_a_listener_get_no_answer_and_to_a_closed_port_a_reset(name):
    """RFC 9293 §3.10.7.2 as Linux applies it: at a listener, a segment with neither SYN, ACK nor
    RST (NULL, FIN, XMAS scans) and SYN+FIN are discarded; a SYN is answered (so silence is not a
    deaf endpoint). At a closed port, everything but a RST earns a RST."""
    ep = TcpEndpoint(B)
    ep.listen(80)
    feed(ep, tcp(ODD[name], options=SYN_OPTS if "S" in ODD[name] else ()))
    assert answers(ep) == [] and not ep.connections
    assert ep.stats.bad_flags == 1 and ep.stats.resets_sent == 0
    feed(ep, tcp("S", sport=4001, options=SYN_OPTS))
    ((dst, synack),) = answers(ep)
    assert dst == A and synack.flags == "SA" and synack.dport == 4001
    feed(ep, tcp(ODD[name], dport=81))
    out = answers(ep)
    assert [str(t.flags) for _, t in out] == ([] if "R" in ODD[name] else ["RA"])


def test_an_ack_to_a_listener_is_reset_and_a_bad_cookie_counted_once_the_queue_overflowed():
    ep = TcpEndpoint(B, cookie_secret=b"s")
    ep.listen(80, syn_backlog=1)
    feed(ep, tcp("A", ack=5000))
    ((_, rst),) = answers(ep)
    assert rst.flags == "R" and rst.seq == 5000 and ep.stats.syncookies_failed == 0  # no overflow yet
    feed(ep, tcp("S", sport=1, options=SYN_OPTS))  # fills the SYN queue
    feed(ep, tcp("S", sport=2, options=SYN_OPTS))  # overflows it: a cookie
    assert ep.stats.syncookies_sent == 1
    answers(ep)
    feed(ep, tcp("A", sport=3, seq=1001, ack=5000))  # a forged cookie
    ((_, rst),) = answers(ep)
    assert rst.flags == "R" and ep.stats.syncookies_failed == 1 and len(ep.connections) == 1


def _cookie_synack(ep: TcpEndpoint, opts, sport: int = 5000, seq: int = 1000, flags: str = "S", now=100.0):
    """Fill the SYN queue of port 80 (syn_backlog 2) and send one more SYN: the cookie SYN-ACK."""
    for i in range(2):
        feed(ep, tcp("S", sport=100 + i, src=f"10.0.1.{i + 1}", options=SYN_OPTS), now)
    answers(ep, now)
    feed(ep, tcp(flags, sport=sport, seq=seq, options=opts), now)
    ((dst, synack),) = answers(ep, now)
    assert dst == A and len(ep.listeners[80].syn_queue) == 2 and ep.stats.syncookies_sent == 1
    assert (A, sport, 80) not in ep.connections  # nothing kept
    return synack


def test_the_cookie_ack_rebuilds_the_connection_with_window_scale_sack_and_mss():
    """The cookie SYN-ACK carries the peer's window scale and SACK-permitted in its TSval's low bits;
    the ACK echoing it rebuilds a connection that has them, with the MSS rounded to Linux's table."""
    from scapy.layers.inet import TCP

    ep = TcpEndpoint(B, cookie_secret=b"s")
    ep.listen(80, syn_backlog=2)
    synack = _cookie_synack(ep, [("MSS", 1400), ("SAckOK", b""), ("Timestamp", (777, 0)), ("NOP", None),
                                 ("WScale", 7)])
    opts = dict(synack.options)
    assert synack.flags == "SA" and synack.ack == 1001
    tsval, tsecr = opts["Timestamp"]
    assert tsecr == 777 and ts_decode(tsval) == (7, True, False)
    assert opts["MSS"] == 1460 and "SAckOK" in opts and opts["WScale"] == 7  # ours, for a 6 MB rcvbuf_max
    ack = tcp("A", sport=5000, seq=1001, ack=synack.seq + 1, options=[("Timestamp", (778, tsval))],
              payload=b"hello", window=1000)
    conn = feed(ep, ack, 100.5)
    assert conn is not None and conn.state is ESTABLISHED
    assert ep.stats.syncookies_recv == 1 and ep.stats.syncookies_failed == 0
    assert conn.ws_ok and conn.snd_wscale == 7 and conn.snd_wnd == 1000 << 7
    assert conn.sack_ok and conn.ts_ok and conn.ts_recent == 778
    assert conn.mss == 1300 - 12  # 1400 rounds down to msstab's 1300, less the timestamp option
    assert conn.iss == synack.seq and ep.accept(80) is conn
    assert conn.recv() == b"hello"
    out = answers(ep, 100.6)
    assert out and all(TCP in t for _, t in out)


def test_without_timestamps_a_cookie_connection_has_no_window_scale_and_no_sack():
    ep = TcpEndpoint(B, cookie_secret=b"s")
    ep.listen(80, syn_backlog=2)
    synack = _cookie_synack(ep, [("MSS", 1460), ("SAckOK", b""), ("NOP", None), ("WScale", 7)])
    opts = dict(synack.options)
    assert "WScale" not in opts and "SAckOK" not in opts and "Timestamp" not in opts  # as Linux
    conn = feed(ep, tcp("A", sport=5000, seq=1001, ack=synack.seq + 1), 100.2)
    assert conn is not None and conn.state is ESTABLISHED
    assert not conn.ws_ok and not conn.sack_ok and not conn.ts_ok and conn.mss == 1460


def test_an_ecn_setup_syn_gets_ecn_through_the_cookie():
    ep = TcpEndpoint(B, cookie_secret=b"s")
    ep.listen(80, syn_backlog=2)
    synack = _cookie_synack(ep, [("MSS", 1460), ("Timestamp", (5, 0))], flags="SEC")
    assert synack.flags == "SAE"
    tsval = dict(synack.options)["Timestamp"][0]
    conn = feed(ep, tcp("A", sport=5000, seq=1001, ack=synack.seq + 1, options=[("Timestamp", (6, tsval))]),
                100.1)
    assert conn is not None and conn.ecn_ok and not conn.ws_ok and not conn.sack_ok


@pytest.mark.parametrize("later", [121.0, 200.0])
def test_a_cookie_returned_too_late_or_changed_is_refused(later):
    ep = TcpEndpoint(B, cookie_secret=b"s")
    ep.listen(80, syn_backlog=2)
    synack = _cookie_synack(ep, [("MSS", 1460)], now=0.0)
    feed(ep, tcp("A", sport=5000, seq=1001, ack=synack.seq + 5), 1.0)  # in time, but not the cookie
    assert [str(t.flags) for _, t in answers(ep, 1.0)] == ["R"] and ep.stats.syncookies_failed == 1
    feed(ep, tcp("S", sport=7, options=SYN_OPTS), later - 1)  # the queue overflows again: cookies checked
    answers(ep, later)
    feed(ep, tcp("A", sport=5000, seq=1001, ack=synack.seq + 1), later)  # the cookie, too late
    assert ep.stats.syncookies_failed == 2 and ep.stats.syncookies_recv == 0
    assert [str(t.flags) for _, t in answers(ep, later)] == ["R"]
    assert (A, 5000, 80) not in ep.connections


def test_a_syn_cookie_with_a_full_accept_queue_is_dropped_and_the_retry_gets_in():
    """The cookie checks but the accept queue is full: the ACK is dropped without a RST; the peer's
    next segment (its data, sent again) returns the same cookie and gets in once there is room."""
    ep = TcpEndpoint(B, cookie_secret=b"s")
    lst = ep.listen(80, backlog=0, syn_backlog=1)  # listen(0): one may wait
    feed(ep, tcp("S", sport=200, seq=10, src="10.0.2.1", options=SYN_OPTS), 1.0)
    ((_, first),) = answers(ep, 1.0)
    feed(ep, tcp("S", sport=5000, seq=1000, options=[("MSS", 1460)]), 1.1)  # the SYN queue is full
    ((_, synack),) = answers(ep, 1.1)
    assert ep.stats.syncookies_sent == 1
    feed(ep, tcp("A", sport=200, seq=11, ack=first.seq + 1, src="10.0.2.1"), 1.2)
    assert len(lst.accept_queue) == 1 and not lst.syn_queue
    ack = tcp("PA", sport=5000, seq=1001, ack=synack.seq + 1, payload=b"data")
    assert feed(ep, ack, 1.3) is None
    assert answers(ep, 1.3) == [] and ep.stats.listen_overflows == 1 and ep.stats.syncookies_recv == 1
    feed(ep, tcp("S", sport=5001, options=[("MSS", 1460)]), 1.35)  # a SYN now: dropped too, as Linux
    assert answers(ep, 1.35) == [] and ep.stats.listen_overflows == 2 and ep.stats.listen_drops == 2
    assert ep.accept(80) is not None
    conn = feed(ep, ack, 1.6)  # the retransmission
    assert conn is not None and conn.state is ESTABLISHED and conn.recv() == b"data"
    assert ep.accept(80) is conn and ep.stats.resets_sent == 0


# -- two endpoints: the whole handshake through a full SYN queue and a full accept queue -----------


def test_a_client_gets_in_through_a_syn_queue_full_of_spoofed_syns_and_keeps_its_options():
    net = Net(delay=0.002, b_opts={"cookie_secret": b"x"})
    lst = net.b.listen(80, syn_backlog=64)
    for i in range(200):  # spoofed: their SYN-ACKs go nowhere
        src = f"10.1.{i // 250}.{i % 250 + 1}"
        net.blackhole.add(bytes(map(int, src.split("."))))
        s, data = tcp("S", sport=10000 + i, seq=i * 7919, src=src, options=SYN_OPTS)
        net.b.input(s, B, data, net.now)
    assert len(lst.syn_queue) == 64 and net.b.stats.syncookies_sent == 136
    c = net.a.connect(B, 80, net.now)
    net.run(lambda: lst.accept_queue and c.state is ESTABLISHED, limit=5)
    s = net.b.accept(80)
    assert net.b.stats.syncookies_recv == 1 and net.b.stats.syncookies_failed == 0
    assert s.ws_ok and s.snd_wscale == c.rcv_wscale and c.snd_wscale == s.rcv_wscale
    assert s.sack_ok and c.sack_ok and s.ts_ok and s.mss == c.mss
    net.loss = 0.03  # SACK at work in both directions
    net.rng.seed(5)
    up, down = bytes(range(256)) * 2000, bytes(reversed(range(256))) * 2000
    got_s, got_c = bytearray(), bytearray()

    sent = [len(up[:0]), 0]

    def pump():
        got_s.extend(s.recv())
        got_c.extend(c.recv())
        sent[0] += c.send(up[sent[0]:])
        sent[1] += s.send(down[sent[1]:])

    net.apps.append(pump)
    net.run(lambda: len(got_s) == len(up) and len(got_c) == len(down), limit=60)
    assert bytes(got_s) == up and bytes(got_c) == down
    assert s.stats.retransmits and (s.stats.fast_retransmits or s.stats.rto_timeouts)


def test_listen_zero_or_one_with_four_clients_at_once_takes_all_four_once_accepted_and_resets_none():
    """Linux's accept queue takes backlog + 1; the others' last ACKs are dropped (listen_overflows),
    their SYN-ACKs go again, and each gets in as the application accepts. Nothing is reset."""
    net = Net(delay=0.002)
    lst = net.b.listen(80, backlog=1)
    clients = [net.a.connect(B, 80, net.now, local_port=6000 + i) for i in range(4)]
    for c in clients:
        c.send(b"hi from %d" % c.local_port)
    net.run(lambda: all(c.state is ESTABLISHED for c in clients), limit=5)
    net.run_for(0.5)
    assert len(lst.accept_queue) == 2 and net.b.stats.listen_overflows >= 2
    accepted = []

    def app():
        if net.now >= 1.0:  # the application starts accepting a second in
            while (s := net.b.accept(80)) is not None:
                accepted.append(s)

    net.apps.append(app)
    net.run(lambda: len(accepted) == 4 and all(s.rcv_queued for s in accepted), limit=30)
    assert sorted(bytes(s.recv()) for s in accepted) == sorted(b"hi from %d" % c.local_port for c in clients)
    assert not net.sent_by(B, lambda x: x.flags & 0x04) and not net.sent_by(A, lambda x: x.flags & 0x04)
    assert all(c.error is None for c in clients) and net.b.stats.listen_drops == net.b.stats.listen_overflows


# -- source routes --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["LSRR", "SSRR"])
@pytest.mark.parametrize("hops_left", [True, False])
def test_a_source_routed_syn_is_not_delivered(kind, hops_left):
    """As a Linux host (accept_source_route=0): dropped whether hops are left or the route is done;
    the same SYN without the option is delivered."""
    from scapy.layers.inet import IP, TCP, IPOption_LSRR, IPOption_SSRR

    opt = (IPOption_LSRR if kind == "LSRR" else IPOption_SSRR)(
        routers=["10.0.0.9", B_S], pointer=4 if hops_left else 12)
    ip = IpLayer([B])
    plain = bytes(IP(src=A_S, dst=B_S) / TCP(sport=1, dport=80, flags="S"))
    routed = bytes(IP(src=A_S, dst=B_S, options=[opt]) / TCP(sport=1, dport=80, flags="S"))
    assert ipv4_source_route(routed, 0, (routed[0] & 15) * 4) == IPOPT_SRR
    assert ip.input(routed, 0.0) == [] and ip.counters["ip4_source_route"] == 1
    assert len(ip.input(plain, 0.0)) == 1


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(
    st.just(b"\x01"),
    st.binary(max_size=8).map(lambda b: bytes([7, 3 + len(b), 4]) + b),  # record route
    st.sampled_from([0x83, 0x89]).flatmap(
        lambda t: st.integers(4, 40).map(lambda p: bytes([t, 11, p]) + bytes(8))),
), max_size=4), st.binary(max_size=6))
def test_ipv4_source_route_finds_a_route_wherever_it_is_and_never_raises(opts, junk):
    raw = b"".join(opts)
    if len(raw) > 40:
        return
    pad = (-len(raw)) % 4
    hdr = bytes(20) + raw + bytes(pad)
    want = IPOPT_SRR if any(o[0] in (0x83, 0x89) for o in opts) else 0
    assert ipv4_source_route(hdr, 0, len(hdr)) == want
    tail = (raw + junk)[:40]
    hdr = bytes(20) + tail + bytes((-len(tail)) % 4)
    assert ipv4_source_route(hdr, 0, len(hdr)) in (0, IPOPT_SRR, IPOPT_BAD)
