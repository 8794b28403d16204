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

from tests.domain import test_hostile_usnetd as _hu
from tests.helpers.hostile_harness import deadline_loop
from usnet.abi.events import DefunctReason
from usnet.abi.ring import RingCorrupt
from usnet.client import Client
from usnet.client.channel import ChannelDefunct

LIAR = r"""
import sys, time
from usnet.client import Client
path, name, how = sys.argv[1:4]
c = Client.connect(path, program="liar")
ch = c.open_pipe(name)
q, prod = ch._rx.q, ch._rx.q[0]
CONS = 8  # usnet.abi.ring.CONS: the consumer counter, the liar's word on the honest side's TX ring
cap = ch._rx.capacity
q[CONS] = {"u64max": (1 << 64) - 1, "past": prod + cap + 7, "behind": (prod - cap - 1) % (1 << 64)}[how]
print("ready", flush=True)
time.sleep(60)
"""


REPEATER = r"""
import sys, time
from usnet.client import Client
from usnet.client.channel import ChannelDefunct
path, name = sys.argv[1:3]
c = Client.connect(path, program="repeater")
ch = c.open_pipe(name)
(p,) = ch.alloc(1)
ch.write(p, b"once")
ch.send([p])  # once honestly; then the same index again, which is no longer the liar's to pass
print("ready", flush=True)
for _ in range(30):  # one at a time, so that each is a batch of the victim's frees of its own
    ch._tx.push([p])
    ch._ring_peer()
    end = time.monotonic() + 2
    while ch._tx.q[8] != ch._tx.prod and time.monotonic() < end:  # 8: usnet.abi.ring.CONS
        time.sleep(0.001)
    if ch._tx.q[8] != ch._tx.prod:
        break  # not taken: the group is defunct (its memory zeroed)
print("done", flush=True)
sys.stdin.readline()
try:
    ch.recv(timeout=0)
    print("open", flush=True)
except ChannelDefunct as e:
    print(getattr(e, "reason", e).name, flush=True)
"""


hostile = _hu.hostile  # the fixture: usnetd, and an attacker session beside it


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
        # the ring has room for many: the lie is seen when it must be read, within one ring's worth
        # (sent back to back: nothing here waits on the liar, so no pause between them)
        for _ in range(a._tx.capacity + 1):
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


def test_a_peer_that_passes_an_index_again_cannot_pass_for_the_victim(hostile):
    """The liar sends one packet, then puts its index on the ring 12 times more. The honest side
    frees what it receives, as any client does; from the second free on the nexus refuses them
    (the packet is no longer the group's to free) and counts them against the end that freed.
    At the abuse limit the group is defunct: the honest end used to be named the culprit (ABUSE)
    and the liar the innocent peer (PEER_GONE). Both are ABUSE now: the nexus cannot tell which
    one lied."""
    h = hostile
    honest = Client.connect(h.path, program="honest")
    try:
        a = honest.open_pipe("repeated")
        p = subprocess.Popen([sys.executable, "-c", REPEATER, h.path, "repeated"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        h.children.append(p)
        assert p.stdout.readline().strip() == "ready"
        got = None
        for _ in deadline_loop(10):
            try:
                pkts = a.recv(8, timeout=0.05)
                a.free(pkts)
                a._kick()  # what its next refill does: usnetd takes the FREE ring back
            except BlockingIOError:
                continue
            except ChannelDefunct as e:
                got = e
                break
        assert got is not None and got.reason == DefunctReason.ABUSE, got
        assert p.stdout.readline().strip() == "done"
        p.stdin.write("report\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "ABUSE"  # not PEER_GONE: the liar is not the victim
        st = h.assert_served("an index passed again")
        assert [x["defunct"] for x in st["pipes"] if x["name"] == "repeated"] in ([], ["ABUSE"])
    finally:
        honest.close()
    h.kill(p)
    h.assert_recovered("an index passed again")
    h.finish("an index passed again")
