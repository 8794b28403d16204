"""A host on the link floods the neighbour tables: the neighbours we ask for are still learnt.

Every ARP request for our address (and every Neighbour Solicitation with a source link-layer
option) teaches the switch its sender, as Linux's arp_process and ndisc_recv_ns do. A host that
sends them from thousands of made-up addresses filled the table (4096 entries, refreshed by the
flood faster than the 60 s they live), and then no neighbour the switch asked for could be learnt:
every flow's packets to a new or expired neighbour (the gateway's entry expires too) waited for
an answer that was refused, and were dropped after three requests. One host on the link starved
every client of the netif. Now an answer to our own question always finds room (the oldest entry
learnt gives way), an unsolicited sender never pushes one out, and a full table costs O(1) per
frame, not a scan of it.
"""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import ARP, Ether, ICMPv6EchoRequest, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6, raw

from tests.helpers.util import FakeClock, recv_n
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.domain.switch.neighbours import NeighbourCache
from usnet.drivers import FaultInjector, MemWire

A_IP, B_IP = "10.9.0.1", "10.9.0.2"

A6, B6 = "fd00:9::1", "fd00:9::2"


def _arp_flood(our_mac: bytes, n: int, seed: int) -> list[bytes]:
    """`n` ARP requests for B_IP, each from a different made-up unicast address and MAC."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        mac = bytes([0x02, 0x66]) + i.to_bytes(4, "big")
        spa = str(ipaddress.IPv4Address(0x0B000000 + rng.randrange(1, 1 << 24)))  # 11/8: unicast, off-link
        out.append(raw(Ether(dst="ff:ff:ff:ff:ff:ff", src=mac) / ARP(op=1, hwsrc=mac, psrc=spa, pdst=B_IP)))
    return out


def _ns_flood(our_mac: bytes, n: int) -> list[bytes]:
    """`n` Neighbour Solicitations for B6, each from a different made-up address with its MAC."""
    out = []
    for i in range(n):
        mac = bytes([0x02, 0x67]) + i.to_bytes(4, "big")
        m = mac.hex(":")
        src = str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("fd00:9::")) + 0x10000 + i))
        out.append(raw(Ether(dst=our_mac, src=m) / IPv6(src=src, dst=B6, hlim=255)
                       / ICMPv6ND_NS(tgt=B6) / ICMPv6NDOptSrcLLAddr(lladdr=m)))
    return out


class Net6:
    """One domain, a memwire, netifs "a" and "b" with both families; the test injects frames into b."""

    def __init__(self) -> None:
        self.d = Domain()
        self.w = MemWire()
        self.fi = FaultInjector(self.w.b)
        self.d.add_netif("a", self.w.a, f"{A_IP}/24", address6=f"{A6}/64")
        self.swb = self.d.add_netif("b", self.fi, f"{B_IP}/24", address6=f"{B6}/64")
        self.c = Client.local(self.d)

    def inject(self, frames: list[bytes]) -> None:
        """Hand `frames` to b's switch as if they came from the wire (before the loop runs)."""
        self.fi.inject(frames)
        for _ in range(len(frames) // 64 + 10):
            if not self.fi.injected:
                break
            self.swb.service_rx(256)
        assert not self.fi.injected


@pytest.fixture
def net6():
    n = Net6()
    yield n
    n.d.stop()


@pytest.mark.parametrize("family", [4, 6])
def test_a_flood_of_made_up_neighbours_does_not_keep_a_real_one_out(net6, family):
    n = net6
    cache = n.swb.arp if family == 4 else n.swb.nd
    flood = (_arp_flood(n.w.b.mac, cache.max_entries + 200, 1) if family == 4
             else _ns_flood(n.w.b.mac, cache.max_entries + 200))
    n.inject(flood)
    assert len(cache.entries) == cache.max_entries  # the table is full of the flood's addresses
    n.d.start()
    # A client on b sends to a's address, which b has never resolved: b asks, a answers.
    peer, ours = (A_IP, B_IP) if family == 4 else (A6, B6)
    sa = n.c.udp_socket("a", 5000, family=family)
    sb = n.c.udp_socket("b", 6000, family=family)
    sb.sendto(b"through the flood", (peer, 5000))
    got = recv_n(sa, 1)
    assert [g[0] for g in got] == [b"through the flood"] and got[0][1][0] == ours
    assert len(cache.entries) <= cache.max_entries
    tables = n.swb.info()["neighbour_tables"]["arp" if family == 4 else "nd"]
    assert tables["evicted"] == 1 and tables["refused"] >= 200


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["flood", "ask", "answer", "tick", "retry"]), st.integers(0, 40)),
                max_size=200))
def test_the_table_stays_bounded_and_an_answer_to_our_question_is_always_learnt(ops):
    """Any mix of unsolicited senders, our questions, their answers and time: never more than
    `max_entries`, an address we asked for is learnt when it answers (its packet handed back),
    an unsolicited sender never pushes an entry out, the dict stays in expiry order, and the
    queues hold no more than their bounds, each and together, their books exact."""
    c = NeighbourCache(ttl=10.0, retry=1.0, max_entries=8, queue_bytes=3 * 676, held_max=5 * 676)
    now = 0.0
    for op, k in ops:
        ip = struct.pack("!I", k)
        if op == "flood":
            before = dict(c.entries)
            c.learn(ip, b"\x02" * 6, now)
            assert set(before) - set(c.entries) <= {a for a, (_, exp) in before.items() if exp < now}
        elif op == "ask":
            was = ip in c.pending
            full = not was and len(c.pending) >= c.max_entries
            oldest = next(iter(c.pending)) if full else None
            ask, dropped = c.wait(ip, ("pkt", k), 100, now)
            assert ip in c.pending and ask == (not was)  # a new question is asked at once
            if full:  # the oldest question gave way, its packets handed back to be reported
                assert oldest not in c.pending and dropped and len(c.pending) == c.max_entries
        elif op == "retry":
            c.due(now)
        elif op == "answer":
            waited = ip in c.pending
            got = c.learn(ip, b"\x04" * 6, now)
            if waited:
                assert ("pkt", k) in got and c.lookup(ip, now) == b"\x04" * 6
        else:
            now += k / 4
            c.expire(now)
            assert all(exp >= now for _, exp in c.entries.values())
        assert len(c.entries) <= c.max_entries and len(c.pending) <= c.max_entries
        assert c.held == sum(p.nbytes for p in c.pending.values()) <= c.held_max
        assert all(p.nbytes == sum(ch for ch, _ in p.packets) <= c.queue_bytes for p in c.pending.values())
        exps = [exp for _, exp in c.entries.values()]
        assert exps == sorted(exps)
        asked = [p.asked_at for p in c.pending.values()]
        assert asked == sorted(asked)  # the timer and the retries read the front only
        if c.pending:
            assert c.next_timer(now) == max(0.0, min(asked) + c.retry - now)


def test_a_flood_of_stimuli_from_made_up_on_link_sources_does_not_close_neighbour_discovery(net6):
    """Echo requests from thousands of addresses of our /64: each reply waits for a Neighbour
    Solicitation nobody answers, so the questions fill the pending table; a client's datagram to a
    real neighbour then still gets its question asked and answered (the oldest question gives way,
    its reply reported unresolved), where it used to be dropped at once for three seconds."""
    n = net6
    cache = n.swb.nd
    mac = "02:68:00:00:00:01"
    base = int(ipaddress.IPv6Address("fd00:9::"))
    flood = [raw(Ether(dst=n.w.b.mac.hex(":"), src=mac)
                 / IPv6(src=str(ipaddress.IPv6Address(base + 0x20000 + i)), dst=B6) / ICMPv6EchoRequest(id=i))
             for i in range(cache.max_entries + 100)]
    n.inject(flood)
    assert len(cache.pending) == cache.max_entries and cache.abandoned == 100
    assert n.swb.drops["tx_neighbour_unresolved"] == 100  # every abandoned reply accounted for
    n.d.start()
    sa = n.c.udp_socket("a", 5000, family=6)
    sb = n.c.udp_socket("b", 6000, family=6)
    sb.sendto(b"asked and answered", (A6, 5000))
    got = recv_n(sa, 1)
    assert [g[0] for g in got] == [b"asked and answered"]


def test_a_client_sending_to_many_silent_neighbours_parks_a_bounded_amount_in_usnetd(net6):
    """A client's unconnected flow sends full datagrams to 40 silent addresses of the /64, 110
    each: each address's queue is bounded, and all the queues together hold no more than the
    table's `held_max` (here 8 queues' worth); every datagram is either waiting or reported
    dropped, and another client's datagram to a real neighbour still goes. The test drives the
    loop itself on a clock that stands still, so no question is given up on time."""
    n = net6
    n.swb.clock = FakeClock()
    cache = n.swb.nd
    cache.held_max = 8 * cache.queue_bytes
    hog = n.c.udp_socket("b", 7000, family=6)
    base = int(ipaddress.IPv6Address("fd00:9::"))
    sent = 0
    for i in range(40):
        dst = str(ipaddress.IPv6Address(base + 0x30000 + i))
        for _ in range(50):  # bounded: each round the domain takes what the ring holds
            if sent == 110 * (i + 1):
                break
            sent += hog.send_many([b"x" * 1400] * (110 * (i + 1) - sent), (dst, 9))
            n.d.serve_once(0)
        assert sent == 110 * (i + 1)
    n.d.serve_once(0)
    waiting = sum(len(p.packets) for p in cache.pending.values())
    assert cache.held <= cache.held_max and cache.abandoned > 0
    assert waiting + n.swb.drops["tx_neighbour_unresolved"] == sent  # every datagram accounted for
    assert cache.held == sum(p.nbytes for p in cache.pending.values())
    sa = n.c.udp_socket("a", 5000, family=6)
    sb = n.c.udp_socket("b", 6000, family=6)
    sb.sendto(b"still resolved", (A6, 5000))
    got: list = []
    for _ in range(50):
        n.d.serve_once(0)
        try:
            got += sa.recv_many(1, timeout=0)
        except BlockingIOError:
            pass
        if got:
            break
    assert [g[0] for g in got] == [b"still resolved"]


def test_an_address_another_queue_asked_for_is_believed_once_and_asked_again():
    """Under usnetd --workers, worker k asks on its own queue but the answer reaches queue 0:
    usnetd `expect`s it (no packet of its own waits), so the reply is learnt, not dropped as
    unsolicited; unanswered, it is asked again like our own question and then forgotten."""
    c = NeighbourCache(ttl=10.0, retry=1.0, tries=2, max_entries=2)
    ip, other = b"\x0a\x00\x00\x07", b"\x0a\x00\x00\x08"
    assert not c.knows(ip)
    assert c.expect(ip, 0.0) == []
    assert c.knows(ip) and not c.knows(other)
    assert c.due(1.0) == ([ip], [])  # asked again, as ours
    assert c.due(2.0) == ([], [])  # given up: nothing of ours waited
    assert not c.knows(ip)
    c.expect(ip, 3.0)
    assert c.learn(ip, b"\x02" * 6, 3.1) == [] and c.lookup(ip, 3.2) == b"\x02" * 6
    assert c.expect(ip, 3.3) == [] and not c.pending  # known: nothing to wait for
