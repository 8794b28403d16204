"""A user pipe's peer that lies, in a process of its own, against a real usnetd.

A user pipe joins two channels of one uid and shares their pool (docs/design-notes.md, "User
pipes join only the channels of one uid"): the peer is inside the trust group, so what it can
do is bounded by the group; but a peer that writes nonsense into the counters it owns must give
the honest side a clear error, never a hang, a crash or a write over slots the peer still holds,
and usnetd and its other clients must not notice (the hostile suite's victim pair runs beside).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.hostile_harness import Harness, deadline_loop
from usnet.abi.ring import RingCorrupt
from usnet.client import Client

LIAR = r"""
import sys, time
from usnet.client import Client
path, name, how = sys.argv[1:4]
c = Client.connect(path, program="liar")
ch = c.open_pipe(name)
q, prod = ch._rx.q, ch._rx.q[0]
CONS = 8  # usnet.abi.ring.CONS: the consumer counter, the liar's word on the honest side's TX ring
q[CONS] = {"u64max": (1 << 64) - 1, "past": prod + ch._rx.capacity + 7, "behind": (prod - ch._rx.capacity - 1) % (1 << 64)}[how]
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def hostile(sockdir):
    h = Harness(sockdir)
    try:
        yield h
    finally:
        h.close()


@pytest.mark.parametrize("how", ["u64max", "past", "behind"])
def test_a_peer_s_impossible_consumer_counter_is_a_clear_error_for_the_sender(hostile, how):
    """(A counter past what was sent by less than the ring cannot be told from a peer that read
    that much once the sender catches up: the sender then overwrites only slots the liar said it
    had read, which costs the liar its own data. That one is not judged.)"""
    h = hostile
    honest = Client.connect(h.path, program="honest")
    try:
        a = honest.open_pipe("lied-to")
        # a few sent before the lie: they sit on the liar's RX ring, unread
        for i in range(3):
            a.send_bytes(b"before %d" % i)
        p = subprocess.Popen([sys.executable, "-c", LIAR, h.path, "lied-to", how], stdout=subprocess.PIPE, text=True)
        h.children.append(p)
        assert p.stdout.readline().strip() == "ready"
        err = None
        for _ in deadline_loop(10):  # the ring has room for many: the lie is seen when it must be read
            try:
                a.send_bytes(b"after")
            except RingCorrupt as e:
                err = e
                break
        assert err is not None and "consumer counter" in str(err), err
        st = h.assert_served(f"a consumer counter {how}")
        pipe = next(x for x in st["pipes"] if x["name"] == "lied-to")
        assert pipe["defunct"] is None  # a lie inside the group is the group's: usnetd's books hold
        h.assert_books(st, f"a consumer counter {how}")
    finally:
        honest.close()
    h.kill(p)
    h.assert_recovered(f"a consumer counter {how}")
    h.finish(f"a consumer counter {how}")
