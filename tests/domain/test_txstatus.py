"""Per-packet transmit status and deadlines on the EVENT ring (issue 5 item 4; docs/abi.md sections 7, 8).

A packet may carry a tag, a deadline and a report flag (UMD). Every reported
packet gets exactly one TX_STATUS event (SENT, DROPPED with its reason,
EXPIRED, FLUSHED) carrying its tag and when the nexus took it; a packet
whose deadline has passed is never sent, whether it expires when the
nexus takes it or while it waits in the netif's queue. A full event ring
loses events, counted where the client sees them, never packets.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.domain import test_lowlat
from tests.domain.test_llpath import udp_packet
from tests.domain.test_lowlat import Net, recv_all
from tests.helpers.util import wait_until
from usnet.abi.events import EventType, TxDropReason, TxStatus
from usnet.abi.protocol import ControlError
from usnet.client import Client
from usnet.domain.netif.netif import Netif
from usnet.drivers import MemWire
from usnet.drivers.base import TrackedFrame

B = "10.9.0.2"


def statuses(ch, n: int, timeout: float = 5.0) -> list:
    """The first `n` TX_STATUS events of a channel, waiting on its bell until a deadline."""
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += [e for e in ch.events() if e.type == EventType.TX_STATUS]
        if len(out) < n:
            ch._sleep(min(deadline, time.monotonic() + 0.05))
    return out


net = test_lowlat.net  # the same fixture: netifs a and b over a memwire in a running domain


def resolved(net: Net, sock, sink) -> None:
    sock.sendto(b"resolve", (B, sink.getsockname()[1]))
    assert recv_all(sink, 1) == [b"resolve"]


def sender_and_sink(net: Net, ll: bool = False) -> tuple:
    """A sender on netif a (with an LL lease if `ll`) and its sink on b, the neighbour resolved."""
    s, sink = net.c.udp_socket("a", 5000), net.c.udp_socket("b", 6000)
    if ll:
        net.c.request_lease(s.channel, rate=100e6, max_packet=1200, latency_target=0.05)
    resolved(net, s, sink)
    return s, sink


@pytest.mark.parametrize("ll", [False, True], ids=["general", "ll"])
def test_every_reported_datagram_is_sent_and_says_so_with_its_tag(net, ll):
    s, sink = sender_and_sink(net, ll)
    before = time.monotonic_ns()
    tags = [1000 + i for i in range(20)]
    assert s.send_many([b"%d" % t for t in tags], (B, 6000), tags=tags, report=True) == 20
    assert recv_all(sink, 20) == [b"%d" % t for t in tags]
    got = statuses(s.channel, 20)
    assert [e.tag for e in got] == tags  # one each, in order
    assert {e.status for e in got} == {TxStatus.SENT} and {e.reason for e in got} == {None}
    assert all(before <= e.taken_ns <= e.time_ns for e in got)
    s.sendto(b"unreported", (B, 6000))  # the marks do not outlive their send
    assert recv_all(sink, 1) == [b"unreported"]
    assert statuses(s.channel, 1, timeout=0.2) == []


@pytest.mark.parametrize("ll", [False, True], ids=["general", "ll"])
def test_a_datagram_past_its_deadline_is_not_sent_and_is_reported_expired(net, ll):
    s, sink = sender_and_sink(net, ll)
    past = time.monotonic() - 1
    s.send_many([b"late1", b"late2"], (B, 6000), tags=[7, 8], deadline=past)  # expired: always reported
    s.send_many([b"on time"], (B, 6000), deadline=time.monotonic() + 60)
    s.sendto(b"after", (B, 6000))
    assert recv_all(sink, 2) == [b"on time", b"after"]
    got = statuses(s.channel, 2)
    assert [(e.status, e.tag) for e in got] == [(TxStatus.EXPIRED, 7), (TxStatus.EXPIRED, 8)]
    (a,) = [n for n in net.d.status()["netifs"] if n["netif"]["name"] == "a"]
    assert a["drops"]["tx_expired"] == 2
    # and the packets that carried the deadline, reused, carry it no more
    for i in range(40):
        s.sendto(b"%d" % i, (B, 6000))
    assert recv_all(sink, 40) == [b"%d" % i for i in range(40)]


def slow_link(net: Net) -> tuple:
    """A sender on a 1 Mbit/s netif "slow" (no AQM: every datagram is counted) and its sink on "sink"."""
    wire = MemWire()
    net.d.add_netif("slow", wire.a, "10.8.0.1/24", link_rate=1e6, ll_share=0.2, aqm=False)
    net.d.add_netif("sink", wire.b, "10.8.0.2/24")
    s, sink = net.c.udp_socket("slow", 5100), net.c.udp_socket("sink", 6100)
    s.sendto(b"resolve", ("10.8.0.2", 6100))
    assert recv_all(sink, 1) == [b"resolve"]
    return s, sink


@pytest.mark.slow
def test_a_deadline_that_passes_in_the_netif_queue_drops_the_datagram_there(net):
    """At 1 Mbit/s the flood ahead takes a second to drain; the marked datagram behind it has 20 ms."""
    s, sink = slow_link(net)
    assert s.send_many([bytes(1200)] * 100, ("10.8.0.2", 6100)) == 100
    s.send_many([b"stale"], ("10.8.0.2", 6100), tags=[42], deadline=time.monotonic() + 0.02, report=True)
    (e,) = statuses(s.channel, 1, timeout=10)
    assert (e.status, e.tag) == (TxStatus.EXPIRED, 42)
    assert e.time_ns - e.taken_ns >= 0.02e9  # it waited in the queue past its deadline
    assert len(recv_all(sink, 101, timeout=3)) == 100  # the flood came; the stale one did not
    assert net.d.switches["slow"].netif.tx_expired == 1


def test_a_reported_packet_the_switch_refuses_is_reported_dropped_with_its_reason(net):
    s, sink = sender_and_sink(net)
    ch = s.channel
    pkts = ch.alloc(2)
    ch.write(pkts[0], udp_packet(b"spoof", src="10.9.0.9"))
    ch.write(pkts[1], udp_packet(b"fine"))
    ch.mark(pkts[0], tag=1, report=True)
    ch.mark(pkts[1], tag=2, report=True)
    assert ch.send(pkts) == 2
    assert recv_all(sink, 1) == [b"fine"]
    got = statuses(ch, 2)
    assert [(e.tag, e.status, e.reason) for e in got] == [
        (1, TxStatus.DROPPED, TxDropReason.SPOOFED_SOURCE), (2, TxStatus.SENT, None)]


def test_reported_packets_past_the_lease_rate_are_each_reported_dropped(net):
    s, sink = net.c.udp_socket("a", 5000), net.c.udp_socket("b", 6000)
    lease = net.c.request_lease(s.channel, rate=80e3, max_packet=1200, latency_target=0.05)
    resolved(net, s, sink)  # takes a small bite of the burst
    tags = list(range(10))
    s.send_many([bytes(1000)] * 10, (B, 6000), tags=tags, report=True)  # a burst of two frames' worth
    got = statuses(s.channel, 10)
    assert sorted(e.tag for e in got) == tags
    sent = [e for e in got if e.status == TxStatus.SENT]
    dropped = [e for e in got if e.status == TxStatus.DROPPED]
    assert sent and dropped and {e.reason for e in dropped} == {TxDropReason.RATE_EXCEEDED}
    assert len(recv_all(sink, 10, timeout=0.5)) == len(sent)
    assert lease.burst < 10 * 1042


@pytest.mark.parametrize("how", ["flush_queue", "drop_queue"])
def test_tracked_frames_still_queued_when_their_queue_goes_are_reported_flushed(how):
    wire = MemWire()
    netif = Netif("a", wire.a, "10.0.0.1/24", link_rate=1e6)
    netif.set_class(7, True)
    told: list = []
    netif.on_status = lambda f, status, reason: told.append((f.mark[0], status))
    frames = []
    for i in range(3):
        f = TrackedFrame(bytes(100), 0)
        f.key, f.mark, f.taken_ns = 7, (i, 0, True, i), 0
        frames.append(f)
    netif.enqueue_many(7, [bytes(1500)] * 5 + frames)  # behind five frames at 1 Mbit/s: not sent yet
    netif.flush()
    assert told == [] and netif.tracked == 3
    assert getattr(netif, how)(7) == 8 - netif.tx_frames
    assert told == [(0, TxStatus.FLUSHED), (1, TxStatus.FLUSHED), (2, TxStatus.FLUSHED)]
    assert netif.tracked == 0 and netif.queued(7) == (0, 0)
    assert (7 in netif.ll_keys) == (how == "flush_queue")  # a flush keeps the queue's class; a drop ends it


def test_a_client_flushes_its_queued_datagrams_and_hears_of_each(net):
    """FlushQueue: what waits at a 1 Mbit/s netif is dropped and reported FLUSHED; the rest is sent."""
    s, sink = slow_link(net)
    netif, flow = net.d.switches["slow"].netif, net.d.channels[s.channel.id].flow
    payloads = [b"%d" % i + bytes(1200) for i in range(40)]
    assert s.send_many(payloads, ("10.8.0.2", 6100), tags=list(range(40)), report=True) == 40
    wait_until(lambda: netif.queued(flow.id)[0] >= 20, 5, "the datagrams to queue at the slow netif")
    k = net.c.flush_queue(s)
    assert k >= 1 and netif.queued(flow.id) == (0, 0)
    got = statuses(s.channel, 40, timeout=10)
    flushed = [e.tag for e in got if e.status == TxStatus.FLUSHED]
    sent = [e.tag for e in got if e.status == TxStatus.SENT]
    assert len(flushed) == k and sorted(flushed + sent) == list(range(40))
    assert recv_all(sink, 40 - k, timeout=5) == [payloads[t] for t in sorted(sent)]
    assert flow.stats["tx_flushed"] == k


def test_flush_queue_refuses_what_is_not_the_callers_flow(net):
    s = net.c.udp_socket("a", 5000)
    pipe = net.c.open_pipe("p")
    other = Client.local(net.d)
    with pytest.raises(ControlError) as e:
        other.flush_queue(s)  # another session's channel
    assert e.value.code == "ENOENT"
    with pytest.raises(ControlError) as e:
        net.c.flush_queue(pipe)
    assert e.value.code == "EINVAL"
    assert net.c.flush_queue(s) == 0  # nothing queued: nothing to drop


def test_a_full_event_ring_loses_events_not_packets_and_the_client_sees_how_many(net):
    s = net.c.udp_socket("a", 5000, event_ring=8)
    sink = net.c.udp_socket("b", 6000)
    resolved(net, s, sink)
    assert s.channel.events_lost == 0
    payloads = [b"%d" % i for i in range(50)]
    assert s.send_many(payloads, (B, 6000), tags=list(range(50)), report=True) == 50
    assert recv_all(sink, 50) == payloads  # every datagram went
    wait_until(lambda: s.channel.events_lost >= 50 - 8, 5, "the lost events to be counted")
    got = [e for e in s.channel.events() if e.type == EventType.TX_STATUS]
    assert len(got) + s.channel.events_lost == 50  # each one posted or counted, none both


def test_marks_are_refused_when_they_do_not_fit_their_words(net):
    s = net.c.udp_socket("a", 5000)
    (p,) = s.channel.alloc(1)
    with pytest.raises(ValueError):
        s.channel.mark(p, tag=-1)
    with pytest.raises(ValueError):
        s.channel.mark(p, deadline_ns=1 << 64)
    s.channel.give_back([p])


def test_the_nexus_hands_out_packets_with_clean_marks(net):
    """A client that marked packets and freed them gets them back unmarked (no stale deadline)."""
    s = net.c.udp_socket("a", 5000)
    ch = s.channel
    pkts = ch.alloc(8)
    for p in pkts:
        ch.mark(p, tag=5, deadline_ns=123, report=True)
    ch.free(pkts)
    _packets, umd = ch.arrays()
    seen: set[int] = set()
    deadline = time.monotonic() + 5
    while not set(pkts) <= seen and time.monotonic() < deadline:
        got = ch.alloc(ch.max_packets // 2)
        seen |= set(got)
        at = np.array(got, np.int64) * 8
        assert not umd[at + 4].any() and not umd[at + 5].any() and not umd[at + 6].any()
        ch.free(got)


def test_a_closed_channel_s_queued_datagrams_still_go_and_then_the_netif_forgets_it(net):
    s, sink = slow_link(net)
    netif = net.d.switches["slow"].netif
    key = net.d.channels[s.channel.id].flow.id
    assert s.send_many([b"%d" % i + bytes(1200) for i in range(20)], ("10.8.0.2", 6100)) == 20
    wait_until(lambda: netif.queued(key)[0] > 0, 5, "the datagrams to queue at the slow netif")
    s.close()
    assert len(recv_all(sink, 20, timeout=5)) == 20  # sent, as a kernel socket's would be
    wait_until(lambda: key not in netif.queues, 5, "the netif to forget the closed flow's queue")
    assert key not in netif.queued_frames and key not in netif.queued_bytes and key not in netif._enq_total
    for i in range(30):  # and channels closed with nothing queued leave nothing either
        u = net.c.udp_socket("slow", 5200 + i)
        u.sendto(b"x", ("10.8.0.2", 6100))
        u.close()
    assert len(recv_all(sink, 30, timeout=5)) == 30
    wait_until(lambda: set(netif.queues) <= {0}, 5, "the closed flows' queues to go")  # 0: the switch's own (ARP)
