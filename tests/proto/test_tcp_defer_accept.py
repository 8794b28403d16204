"""TCP_DEFER_ACCEPT in the sans-I/O endpoint (usnet.proto.tcp.defer), as Linux's request sock does it.

Two endpoints on a simulated link (tests.proto.test_tcp_connection.Net): the listener drops the
handshake's bare last ACK while the period lasts, does not resend its SYN-ACK until the period's
last timeout, then takes the ACK that SYN-ACK draws; data makes the connection at once. The
timer rule is checked against a transcription of Linux's ``syn_ack_recalc``.
"""

from __future__ import annotations

import pytest

from tests.proto.test_tcp_connection import ESTABLISHED, B, Net
from usnet.client.sockopts import _retrans_to_secs, _secs_to_retrans
from usnet.proto.tcp import TcpState
from usnet.proto.tcp.defer import synack_timeout
from usnet.proto.wire.tcp import ACK, SYN

SYN_RECEIVED, CLOSED = TcpState.SYN_RECEIVED, TcpState.CLOSED


def _synacks(net: Net) -> list[float]:
    return [t for t, s in net.sent_by(B, lambda s: s.flags & (SYN | ACK) == SYN | ACK)]


@pytest.mark.parametrize("seconds", [1, 2, 5])
def test_a_connection_without_data_is_acceptable_only_when_the_period_is_over(seconds):
    """The bare ACK is dropped (the connection stays half-open, nothing to accept); the SYN-ACK
    goes again only on the period's last timeout, and the ACK it draws is taken then, at
    retrans_to_secs(R) seconds (1, 3, 7): what getsockopt reads back."""
    r = _secs_to_retrans(seconds)
    net = Net(delay=0.002)
    lst = net.b.listen(80, defer_accept=r)
    c = net.a.connect(B, 80, net.now)
    net.run(lambda: c.state is ESTABLISHED, limit=1)
    net.run_for(0.5)
    assert c.state is ESTABLISHED and len(lst.syn_queue) == 1 and not lst.accept_queue
    (half,) = lst.syn_queue.values()
    assert half.state is SYN_RECEIVED and net.b.stats.defer_accept_drops == 1
    net.run(lambda: lst.accept_queue, limit=200)
    period = _retrans_to_secs(r)
    assert period <= net.now < period + 0.1
    # the first SYN-ACK (the SYN came at 2 ms) and the last chance, the period after it
    assert _synacks(net) == [pytest.approx(0.002), pytest.approx(0.002 + period)]
    s = net.b.accept(80)
    assert s is half and s.state is ESTABLISHED and net.b.stats.defer_accept_drops == 1
    s.send(b"hello")  # an ordinary connection from then on
    net.run(lambda: c.rcv_queued, limit=1)
    assert bytes(c.recv()) == b"hello"


@pytest.mark.parametrize("after", [0.0, 0.5, 2.5])
def test_data_makes_the_connection_acceptable_at_once(after):
    """Data with the handshake's ACK, or any time after the dropped bare ACK, is taken at once."""
    net = Net(delay=0.002)
    lst = net.b.listen(80, defer_accept=_secs_to_retrans(30))
    c = net.a.connect(B, 80, net.now)
    if not after:
        c.send(b"GET / HTTP/1.0\r\n\r\n")
    net.run(lambda: c.state is ESTABLISHED, limit=1)
    net.run_for(after)
    assert not lst.accept_queue
    c.send(b"GET / HTTP/1.0\r\n\r\n" if after else b"")
    start = net.now
    net.run(lambda: lst.accept_queue, limit=1)
    assert net.now - start < 0.1
    s = net.b.accept(80)
    assert s.state is ESTABLISHED and bytes(s.recv()) == b"GET / HTTP/1.0\r\n\r\n"
    assert len(_synacks(net)) == 1 and c.stats.retransmits == 0


def test_a_fin_after_the_bare_ack_is_accepted_too():
    """A client that closes without sending: its FIN is not a bare ACK, the server accepts and reads EOF."""
    net = Net(delay=0.002)
    lst = net.b.listen(80, defer_accept=_secs_to_retrans(30))
    c = net.a.connect(B, 80, net.now)
    net.run(lambda: c.state is ESTABLISHED, limit=1)
    net.run_for(0.3)
    c.close(net.now)
    net.run(lambda: lst.accept_queue, limit=1)
    s = net.b.accept(80)
    assert s.state is TcpState.CLOSE_WAIT and net.now < 0.4


def test_a_silent_peer_expires_when_both_the_retries_and_the_period_are_spent():
    """Acknowledged, then gone: the half-open connection lives past its SYN-ACK retries while the
    period lasts (and gets its last-chance SYN-ACKs), then goes without a RST, as Linux's."""
    net = Net(delay=0.002, b_opts={"synack_retries": 1})
    lst = net.b.listen(80, defer_accept=3)  # 7 s
    c = net.a.connect(B, 80, net.now)
    net.run(lambda: c.state is ESTABLISHED, limit=1)
    net.blackhole.add(net.A)
    (half,) = lst.syn_queue.values()
    net.run(lambda: half.state is CLOSED, limit=60)
    # timeouts at 1, 3, 7 (no resend before the third: num_timeout >= R - 1), and the fourth expires
    assert _synacks(net) == [pytest.approx(0.002), pytest.approx(7.002)]
    assert net.now == pytest.approx(15.002) and not lst.syn_queue and not lst.accept_queue
    assert not net.sent_by(B, lambda s: s.flags & 0x04)


def _linux(num_timeout: int, max_retries: int, defer: int, acked: bool) -> tuple[bool, bool]:
    """Linux's syn_ack_recalc (thresh = max_retries, no young-request pruning): (expire, resend)."""
    if not defer:
        return num_timeout >= max_retries, True
    return (num_timeout >= max_retries and (not acked or num_timeout >= defer),
            not acked or num_timeout >= defer - 1)


def test_the_timer_rule_is_linuxs():
    for retries in range(8):
        for defer in range(1, 12):
            for n in range(20):
                limit, resend = synack_timeout(n, retries, defer)
                assert (n + 1 > limit, resend) == _linux(n, retries, defer, True), (n, retries, defer)


def test_a_connection_made_from_a_syn_cookie_is_not_deferred_as_linux():
    """Linux's cookie path (cookie_v4_check -> tcp_get_cookie_sock -> syn_recv_sock) makes the
    child and queues it for accept at the cookie's ACK, bare or not: no request sock is kept, so
    there is nothing to defer and no SYN-ACK left to resend (tcp_check_req, where TCP_DEFER_ACCEPT
    acts, is not on it). usnet's cookie ACK (`TcpEndpoint._cookie_ack`) does the same: with
    syncookies=2 (every SYN gets a cookie) the bare ACK is accepted at once, nothing dropped.
    tests/interop/test_sockopts_linux.py runs a kernel listener so, side by side."""
    net = Net(delay=0.002, b_opts={"syncookies": 2})
    lst = net.b.listen(80, defer_accept=_secs_to_retrans(30))
    c = net.a.connect(B, 80, net.now)
    net.run(lambda: c.state is ESTABLISHED, limit=1)
    net.run(lambda: lst.accept_queue, limit=0.1)
    assert net.b.stats.syncookies_recv == 1 and net.b.stats.defer_accept_drops == 0
    assert not lst.syn_queue and len(_synacks(net)) == 1
    s = net.b.accept(80)
    assert s.state is ESTABLISHED
