"""TCP's clock never goes back in an engine (usnet.client.engine.FlowEngine).

A socket call sends from its own thread (`kick`) with the clock it reads under the engine's lock;
the stack thread reads its clock before it waits for that lock. Had a pump sent with its older
clock, the segment would carry an older timestamp than the one before it and the peer's PAWS
would drop it (RFC 7323 section 5): it dropped a handshake's last ACK, and connects stalled for
the second the peer waits to send its SYN-ACK again. Here the stale pass is made on purpose, and
the peer, a usnet stack over memwire, counts what PAWS rejected.
"""

from __future__ import annotations

import time

import pytest

import usnet.socket as us
from tests.helpers.util import memwire_domain


@pytest.fixture
def two_netifs():
    with memwire_domain() as (_d, client):
        yield client


def test_a_pump_with_an_older_clock_sends_no_older_timestamp(two_netifs):
    c = two_netifs
    ls = us.socket(client=c, netif="b")
    ls.bind(("10.9.0.2", 0))
    ls.listen()
    ls.settimeout(10)
    s = us.socket(client=c, netif="a")
    s.settimeout(10)
    s.setsockopt(6, 1, 1)  # TCP_NODELAY: B leaves in the pump below, not held behind A's ACK
    t0 = time.monotonic()
    s.connect(("10.9.0.2", ls.getsockname()[1]))
    k, _ = ls.accept()
    k.settimeout(10)
    s.sendall(b"A")  # sent from this thread, with the clock of now
    assert k.recv(10) == b"A"
    eng, conn = s._engine, s._conn
    latest = eng._now  # the clock A went with
    assert latest >= t0
    with eng.lock:
        conn.send(b"B")
        eng.pump(t0 - 0.01)  # a stack-thread pass that read its clock before the connect began
    assert eng._now >= latest  # B went with it too, not with the pass's older clock
    assert k.recv(10) == b"B"
    assert k.tcp_info()["paws_rejected"] == 0
    for x in (s, k, ls):
        x.close()
