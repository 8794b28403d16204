"""A hostile client and the packets a connector is lent at open (docs/architecture.md, "Packet pools").

A connector's ALLOC ring is filled when it opens (`UserPipe.lend_first`, issue 18: its first
connect's SYN asked the domain for a refill). Packets lent are the client's to keep: one that
never takes them, or takes every packet and never frees one, must be lent no more than its
fill, hold no more than its own pool, and cost no other channel a packet; when it goes, every
packet comes back. Memwire, no root; the loop is turned by hand (`kick_channel`).
"""

from __future__ import annotations

from scapy.all import IP, TCP, raw

from tests.domain.test_flowswitch import A_IP, B_IP, Net
from tests.helpers.util import send_raw
from usnet.abi.ring import CONS, PROD
from usnet.client import Client
from usnet.domain.mem.pool import FREE
from usnet.domain.switch.port import CLIENT
from usnet.domain.userpipe import ALLOC_MIN


def _pipe(n: Net, ch):
    return n.d.channels[ch.id].pipe


def test_a_connector_that_never_takes_its_first_packets_is_lent_no_more():
    """Lent ALLOC_MIN at open, and not one more however often it kicks the domain while it
    takes none; closed, they all come back to its pool."""
    n = Net(start=False)
    try:
        ch, _ = n.c.open_connector("a")
        pipe = _pipe(n, ch)
        assert ch._alloc.q[PROD] == ALLOC_MIN
        assert pipe.pool.counts()["in_alloc"] == ALLOC_MIN and pipe.pool.held == [ALLOC_MIN, 0]
        for _ in range(50):
            n.d.kick_channel(ch.id)
        assert ch._alloc.q[PROD] == ALLOC_MIN and pipe.pool.held == [ALLOC_MIN, 0]
        pool = pipe.pool
        ch.close()
        n.d.serve_once(0)
        pool.check()
        assert pool.held == [0, 0] and pool.counts()["in_alloc"] == 0
    finally:
        n.d.stop()


def test_a_connector_that_hoards_every_packet_costs_only_its_own_pool():
    """A client that takes every packet its connector is lent (its ALLOC consumer counter moved
    to the producer's) and frees none: it ends holding its own pool, each packet once, and is
    lent nothing past it; a connector of another session opens with its packets lent, connects
    without a refill, and its SYN leaves; the hoarder's close gives every packet back."""
    n = Net(start=False)
    other = Client.local(n.d)
    try:
        ch, _ = n.c.open_connector("a")
        pipe = _pipe(n, ch)
        pool = pipe.pool
        ring = ch._alloc
        for _ in range(4 * pool.capacity // ALLOC_MIN):  # bounded: each round takes at least ALLOC_MIN
            if ring.q[CONS] == ring.q[PROD] and pool.held[CLIENT] >= pool.quota:
                break
            ring.q[CONS] = ring.q[PROD]
            n.d.kick_channel(ch.id)
        assert pool.held[CLIENT] == min(pool.quota, pool.capacity)
        assert pool.counts()["held"] == pool.held[CLIENT] and pipe.defunct_reason is None
        pool.check()  # each packet in one place: none lent twice
        ring.q[CONS] = ring.q[PROD]
        n.d.kick_channel(ch.id)
        assert pool.held[CLIENT] == min(pool.quota, pool.capacity)  # nothing past its pool

        # another session's connector: its own pool, lent at open, untouched by the hoarder
        ch2, _ = other.open_connector("a")
        pool2 = _pipe(n, ch2).pool
        assert pool2 is not pool and pool2.held == [ALLOC_MIN, 0]
        _, ports = other.add_ports(ch2.id, 1)
        peer, _ = other.open_flow("b", 6, 6000)
        syn = raw(IP(src=A_IP, dst=B_IP) / TCP(sport=ports[0], dport=6000, seq=1, flags="S"))
        kicks: list[int] = []
        real = ch2._kick
        ch2._kick = lambda: (kicks.append(1), real())[1]
        send_raw(ch2, [syn])
        assert kicks.count(1) <= 1  # the send's own kick, no refill's
        for _ in range(4):
            n.d.serve_once(0)
        got = peer.recv(8, 0)
        assert [bytes(peer.view(p)) for p in got] == [syn]
        peer.free(got)

        ch.close()
        n.d.serve_once(0)
        pool.check()
        assert pool.held == [0, 0] and pool.counts()["free"] + pool.counts()["purged"] == pool.capacity
    finally:
        other.close()
        n.d.stop()


def test_a_hoarder_s_packets_are_never_lent_to_it_twice():
    """Taken, never freed, the hoarder's packets stay HELD: the refills that follow lend only FREE
    packets (the scalar `alloc` of a few, the array one of many alike)."""
    n = Net(start=False)
    try:
        ch, _ = n.c.open_connector("a")
        pool = _pipe(n, ch).pool
        ring = ch._alloc
        seen: set[int] = set()
        for _ in range(8):
            lo, hi = ring.q[CONS], ring.q[PROD]
            got = [int(ring.slots[i & (ring.capacity - 1)]) for i in range(lo, hi)]
            assert not seen & set(got)
            assert all(pool.state[i] != FREE for i in got)
            seen |= set(got)
            ring.q[CONS] = hi
            n.d.kick_channel(ch.id)
        pool.check()
        assert pool.held[CLIENT] == len(seen) + ring.q[PROD] - ring.q[CONS]
    finally:
        n.d.stop()
