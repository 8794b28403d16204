"""The loop's quiet switch (issue 18): `Domain._service_switches` skips a switch with nothing to
do (`FlowSwitch.quiet`) in one test. These prove the rule loses no work: each brings one kind of
work to a switch that is otherwise idle (no flow polled, nothing else queued) and checks that the
loop's next turns serve it, and that the turn asks to wake for it. Driven by hand (`serve_once(0)`)
on a clock the test holds; a rule that skipped the work fails the test.
"""

from __future__ import annotations

import socket
import sys

import pytest

from tests.helpers.util import CallNames, FakeClock, calls_made
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.drivers import MemWire
from usnet.drivers.base import random_mac
from usnet.drivers.fault import FaultInjector
from usnet.drivers.loopback import LoopbackDriver
from usnet.proto.wire.ipv4 import build_ipv4_header, ip_bytes

A_IP = "10.9.0.1"


class Quiet:
    """A domain (not started: the test turns it) with a MemWire netif "a" on the test's clock, whose
    other end the test holds, and the loopback. The domain's housekeeping is on that clock too: on
    the real one, a turn that a stall under load carried past its next tick (once a second) would
    do the tick's work among the turns a test counts."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.d = Domain(clock=self.clock)
        self.w = MemWire()
        self.sw = self.d.add_netif("a", self.w.a, f"{A_IP}/24", clock=self.clock)
        self.lo = self.d.add_loopback()

    def settle(self) -> None:
        """Turns until every flow is parked: the switch's only work is what the test gave it."""
        for _ in range(10):
            self.d.serve_once(0)
            if not any(sw.polled for sw in self.d.switches.values()):
                return
        pytest.fail("flows still polled after 10 turns")


@pytest.fixture
def q():
    n = Quiet()
    yield n
    n.d.stop()


def test_idle_switches_are_quiet_and_ask_for_no_wakeup(q):
    q.settle()
    assert q.sw.quiet() and q.lo.quiet()
    assert q.d._service_switches() is None


def test_an_arp_retry_at_an_otherwise_idle_switch_is_sent(q):
    """A datagram to a silent neighbour: its flow falls idle, the ARP request's retry is still due."""
    c = Client.local(q.d)
    s = c.udp_socket("a", 5000)
    assert s.send_many([b"x"], ("10.9.0.77", 6000)) == 1
    q.settle()
    asked = q.sw.counts["arp_requests"]
    assert asked >= 1 and q.sw.arp.pending and not q.sw.polled and not q.sw.netif.active
    assert not q.sw.quiet()
    wait = q.d._service_switches()
    assert wait is not None and wait <= q.sw.arp.retry  # the turn wakes for the retry
    q.clock.now += q.sw.arp.retry
    q.d.serve_once(0)
    assert q.sw.counts["arp_requests"] == asked + 1


def test_a_frame_queued_at_an_idle_switch_leaves(q):
    q.settle()
    frame = b"\xff" * 6 + q.sw.netif.mac + b"\x88\xb5" + b"queued".ljust(46, b".")
    q.sw.netif.enqueue(0, frame)
    assert not q.sw.quiet()
    q.d.serve_once(0)
    assert [bytes(f) for f in q.w.b.recv_batch(8)] == [frame]
    assert q.sw.quiet()


def test_a_local_delivery_left_over_is_served(q):
    q.settle()
    q.lo.local_queue.append(b"\x45" + b"\x00" * 3)  # malformed: counted as delivered, dropped
    assert not q.lo.quiet()
    q.d.serve_once(0)
    assert q.lo.counts["local_delivered"] == 1 and not q.lo.local_queue


def test_a_fragment_waiting_at_an_idle_switch_times_out(q):
    """The first fragment of a datagram whose rest never comes: expired by the reassembly timer."""
    q.settle()
    src, dst = ip_bytes("10.9.0.9"), ip_bytes(A_IP)
    body = b"\x00" * 16
    ip = build_ipv4_header(src, dst, 17, len(body), ident=7, df=False, mf=True) + body
    q.w.b.send_batch([q.sw.netif.mac + random_mac() + b"\x08\x00" + ip])
    for _ in range(3):
        q.d.serve_once(0)
    assert q.sw.reasm.table and not q.sw.polled
    assert not q.sw.quiet()
    q.clock.now += q.sw.reasm.timeout + 1
    q.d.serve_once(0)
    assert q.sw.frags["frag_timeout"] == 1 and not q.sw.reasm.table


def test_a_gone_flows_drained_queue_is_forgotten(q):
    """A flow gone while its frames waited (`Netif.retire`): they leave, then its queue is forgotten,
    though nothing else is left to do at the switch."""
    q.settle()
    frame = b"\xff" * 6 + q.sw.netif.mac + b"\x88\xb5" + b"retiring".ljust(46, b".")
    key = 999_999  # no flow's: the switch has none
    q.sw.netif.enqueue(key, frame)
    q.sw.netif.retire(key)
    assert q.sw.netif._retiring == {key}
    for _ in range(2):
        q.d.serve_once(0)
    assert [bytes(f) for f in q.w.b.recv_batch(8)] == [frame]
    assert key not in q.sw.netif.queues and not q.sw.netif._retiring


def test_aqm_drops_left_by_the_ll_path_are_reported(q):
    """What AQM dropped in a flush the LL path made (no report there) is reported on the next turn."""
    c = Client.local(q.d)
    c.udp_socket("a", 5000)
    q.settle()
    (flow,) = q.sw.flows.values()
    q.sw.netif.aqm_drops[flow.id] = [2, 200]
    assert not q.sw.quiet()
    q.d.serve_once(0)
    assert q.sw.drops["tx_queue_delay"] == 2 and not q.sw.netif.aqm_drops
    assert flow.stats["tx_dropped"] == 2


def test_a_device_whose_timeout_fails_is_a_netif_fault_not_the_loops(q, monkeypatch):
    """The quiet test asks the device; its error stays behind the netif's barrier, as the round's did."""
    q.settle()

    def broken():
        raise RuntimeError("device timeout")

    monkeypatch.setattr(q.w.a, "timeout", broken)
    faults = q.d.faults
    assert not q.sw.quiet()
    q.d.serve_once(0)  # does not raise
    assert q.d.faults > faults


def test_a_quiet_switchs_test_makes_no_list_for_igmp(q):
    """`quiet` is asked up to twice a turn per switch: with no IGMP/MLD timer pending, its IGMP
    part is three reads, no dict view and no list (usnetd's fixed cost per turn, issue 18)."""
    q.settle()
    called: list[str] = []

    def trace(frame, event: str, arg: object) -> None:
        if event == "c_call":
            called.append(getattr(arg, "__name__", "?"))

    sys.setprofile(trace)
    try:
        quiet = q.sw.quiet()
    finally:
        sys.setprofile(None)
    assert quiet
    assert "values" not in called and "min" not in called, called


@pytest.mark.parametrize("query, outbox, again", [({}, {}, None), ({}, {}, 5.0), ({4: 3.0}, {}, None),
                                                  ({}, {6: 2.0}, 9.0), ({4: 3.0, 6: 1.0}, {4: 7.0}, 0.5)])
def test_igmp_next_is_the_soonest_of_its_timers(q, query, outbox, again):
    q.sw._query_due, q.sw._outbox_due, q.sw._again_due = dict(query), dict(outbox), again
    every = [*query.values(), *outbox.values(), *([] if again is None else [again])]
    assert q.sw.igmp_next() == (min(every) if every else None)
    assert q.sw._waits_for_time() is bool(every)


def test_an_idle_turn_makes_few_calls_and_no_system_call_but_its_wait(q):
    """usnetd's fixed cost per turn (issue 18): with a netif, the loopback, a flow parked and a
    client session connected, and nothing to do, a turn of the loop is its tests and its one wait.
    Counted in calls (Python and C, as `sys.setprofile` sees them; 36 a turn with the loop's
    selector, two advisories' `_moved`, `igmp_next` in the quiet test and a second clock read for
    the purge) and in what reached the epoll (one `poll`: no interest changed)."""
    c = Client.local(q.d)
    c.udp_socket("a", 5000)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    q.d.add_socket_session(ours)
    q.settle()
    for _ in range(3):
        q.d.serve_once(0.001)  # (a timeout: the turn that may sleep asks its flows to ring, as usnetd's)
    ep = q.d._sel._ep = CallNames(q.d._sel._ep)
    turns = 20
    with calls_made() as calls:
        for _ in range(turns):
            q.d.serve_once(0.001)
    assert ep.calls == ["poll"] * turns
    assert len(calls) <= 30 * turns, sorted(set(calls))
    theirs.close()



def _python_calls(fn) -> list[str]:
    """The names of the Python functions `fn()` calls (and they call)."""
    called: list[str] = []

    def trace(frame, event: str, arg: object) -> None:
        if event == "call":
            called.append(frame.f_code.co_name)

    sys.setprofile(trace)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return called


def test_a_quiet_switch_whose_device_is_never_due_asks_it_nothing(q):
    """A device whose `timeout()` is always None (`Capabilities.never_due`: the loopback, a TAP) is
    not asked in `quiet` nor in `next_timeout`, twice a switch a turn (issue 18); a wrapper whose own
    timeout can say "due" (the fault injector's injected frame) is asked, and its frame is served."""
    q.settle()
    assert q.lo.netif.caps.never_due
    assert q.lo.quiet()
    assert "timeout" not in _python_calls(q.lo.quiet)
    assert "timeout" not in _python_calls(q.lo.next_timeout)
    assert q.lo.next_timeout() is None

    lo = LoopbackDriver("lo2")
    f = FaultInjector(lo)
    assert not f.caps.never_due  # the wrapper's `timeout` is its own
    sw = q.d.add_netif("f", f, "10.8.0.1/24", clock=q.clock)
    q.settle()
    assert sw.quiet() and "timeout" in _python_calls(sw.quiet)
    udp = (build_ipv4_header(ip_bytes("10.8.0.9"), ip_bytes("10.8.0.1"), 17, 8 + 4)
           + b"\x30\x39\x13\x88\x00\x0c\x00\x00ping")  # 12345 -> 5000, no UDP checksum
    f.inject([b"\x00" * 6 + random_mac() + b"\x08\x00" + udp])
    assert not sw.quiet()  # the injected frame is due without the loopback's eventfd
    q.d.serve_once(0)
    assert not f.injected and sw.netif.rx_frames >= 1  # (and what the switch answered, looped back)
