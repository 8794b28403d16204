"""Receive mitigation (issue 5 item 3): coalescing a sleeping client's doorbells.

The rule (usnet.domain.netif.mitigation) is sans-I/O and tested on simulated time,
with a hypothesis property over any arrival sequence. The domain tests run
a real Domain over a MemWire with in-process clients; the ones that count
bells drive the loop by hand (`serve_once(0)`) on a clock the test holds,
and the client acts as an event loop does: it reads only when its bell is
readable, and re-arms NEED_WAKEUP with an empty non-blocking receive. The
real-time test waits on the bell with a generous failure deadline only.
"""

from __future__ import annotations

import math
import os
import select
import threading

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.helpers.util import FakeClock, net_factory
from usnet.client import Client
from usnet.domain import config
from usnet.domain.loop import Domain
from usnet.domain.lowlat.policy import Policy, PolicyEntry
from usnet.domain.netif.mitigation import HOLD, MIN_FRAMES, TAU, RxMitigation
from usnet.drivers import MemWire

A_IP, B_IP = "10.9.0.1", "10.9.0.2"
ME = os.getuid()


# -- the rule, on simulated time ---------------------------------------------------------------------


def feed(m: RxMitigation, n: int, gap: float, t: float = 100.0) -> float:
    """`n` one-packet arrivals `gap` seconds apart, the client asleep; returns the last one's time."""
    for _ in range(n):
        t += gap
        m.arrive(t, 1, asleep=True)
    return t


def hold_one(m: RxMitigation, t: float, gap: float) -> float:
    """If the last arrival rang, one more, which must be held; returns the time of the last arrival."""
    if m.deadline is None:
        t += gap
        assert not m.arrive(t, 1, asleep=True)
    return t


def test_a_sparse_flow_rings_on_every_batch():
    m = RxMitigation()
    t = 100.0
    for _ in range(1000):
        t += 0.001  # 1,000 packets/s: a hold would gather a quarter of a packet
        assert m.arrive(t, 1, asleep=True)
        assert m.deadline is None


def test_a_fast_flow_rings_once_per_hold_and_never_later():
    m = RxMitigation(max_frames=1024)
    t, bells, n = 100.0, 0, 20_000
    for _ in range(n):
        t += 10e-6  # 100,000 packets/s, one at a time
        bells += m.arrive(t, 1, asleep=True)
        assert m.deadline is None or m.deadline - t <= HOLD
    # past the first few ms (the estimate warming up), a bell every rate * hold = 25 packets
    assert n / 26 <= bells <= n / 22
    assert m.frames() == math.ceil(m.rate() * HOLD) == 26  # the estimate: 100,250/s (it counts the arrival)


def test_the_deadline_rings_a_flow_that_stops():
    m = RxMitigation()
    t = feed(m, 200, 10e-6) + 10e-6
    assert not m.arrive(t, 1, asleep=True) and m.held >= 1
    due = m.deadline
    assert t < due <= t + HOLD
    assert not m.due(due - 1e-7)
    assert m.due(due) and m.deadline is None and m.held == 0
    assert not m.due(due + 1)  # rung once


def test_an_arrival_past_the_deadline_rings_even_if_the_loop_was_late():
    m = RxMitigation()
    hold_one(m, feed(m, 400, 5e-6), 5e-6)
    late = m.deadline + 1e-6  # no pass of the loop came in time
    assert m.frames() > m.held + 1
    assert m.arrive(late, 1, asleep=True) and m.deadline is None


def test_a_burst_in_one_batch_rings_at_once_and_max_frames_caps_the_wait():
    m = RxMitigation(max_frames=64)
    assert m.arrive(100.0, 256, asleep=True)  # one batch, after silence
    t = 100.0
    for _ in range(20_000):  # 2 M packets/s: rate * hold = 500, but a quarter of a 256 ring is 64
        t += 0.5e-6
        m.arrive(t, 1, asleep=True)
        assert m.held < m.frames() <= 64
    assert m.frames() == 64


def test_an_awake_client_needs_no_bell_and_drops_what_was_held():
    m = RxMitigation()
    t = hold_one(m, feed(m, 300, 5e-6), 5e-6)
    assert m.held >= 1 and m.deadline is not None
    assert not m.arrive(t + 1e-6, 3, asleep=False)
    assert m.deadline is None and m.held == 0
    assert not m.due(t + 1)


def test_parameters_are_checked():
    for kw in ({"hold": 0}, {"tau": -1}, {"max_frames": 1}):
        with pytest.raises(ValueError):
            RxMitigation(**kw)


# (gap before it, what: packets arriving (k > 0, asleep) or a pass of the loop (k == 0))
_ops = st.lists(st.tuples(st.one_of(st.just(0.0), st.floats(0, 5e-6), st.floats(0, 2e-4), st.floats(0, 3e-3)),
                          st.integers(0, 300), st.booleans() | st.just(True)), max_size=400)


@settings(max_examples=300, deadline=None)
@given(_ops, st.sampled_from([MIN_FRAMES, 16, 256, 1024]))
@example([(5e-6, 1, True)] * 300 + [(3e-4, 1, True)], 256)  # a held bell, and no pass before the next arrival
def test_every_packet_is_rung_or_seen_within_the_bound_and_bells_never_outnumber_batches(ops, max_frames):
    """For any arrivals and passes of the loop: no packet waits for its bell past the first
    pass (or arrival) at or after `hold` from its own arrival; a bell only ever answers
    an arrival that found the client asleep; nothing is left unrung at the end."""
    m = RxMitigation(max_frames=max_frames)
    t = 1000.0
    pending: list[float] = []  # arrival times of packets the client has neither been rung for nor seen
    covered: list[tuple[float, float]] = []  # (arrival, when it was rung or seen)
    checkpoints: list[float] = []
    bells = batches = 0

    def cover(now: float) -> None:
        covered.extend((a, now) for a in pending)
        pending.clear()

    for gap, k, asleep in ops:
        t += gap
        checkpoints.append(t)
        if k:
            pending.extend([t] * k)
            batches += asleep
            ring = m.arrive(t, k, asleep)
            if ring:
                bells += 1
            if ring or not asleep:  # rung, or the client is awake and takes everything
                cover(t)
        elif m.due(t):
            bells += 1
            cover(t)
        # the rule's view agrees with the client's: held packets are exactly the pending ones
        assert m.held == len(pending) and (m.deadline is None) == (not pending)
        if pending:
            assert m.deadline <= pending[0] + m.hold
    end = t + m.hold  # the loop's pass at the last deadline
    checkpoints.append(end)
    if m.due(end):
        bells += 1
        cover(end)
    assert not pending
    assert bells <= batches
    for a, c in covered:
        bound = min(x for x in checkpoints if x >= a + m.hold)
        assert a <= c <= bound


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(5e-4, 0.1), st.integers(1, 2)), min_size=1, max_size=300))
def test_a_low_rate_flow_is_rung_on_every_batch(arrivals):
    """At most 2 packets per 0.5 ms (4,000 packets/s) the estimate stays below MIN_FRAMES / hold:
    the weighted count is at most 2 / (1 - exp(-0.5 ms / tau)) = 9.0 < 2 * tau / hold = 16."""
    assert 2 / (1 - math.exp(-5e-4 / TAU)) * HOLD / TAU < MIN_FRAMES
    m = RxMitigation()
    t = 50.0
    for gap, k in arrivals:
        t += gap
        assert m.arrive(t, k, asleep=True)


# -- a real domain, driven by hand on a clock the test holds -------------------------------------------


POLICY = Policy([PolicyEntry(frozenset({"interactive"}), 2e8, 1500, uid=ME)])


class Net:
    """Netifs a (paced, with an LL class) and b over a memwire, in a domain the test drives."""

    def __init__(self, rx_mitigation: bool = True) -> None:
        self.clock = FakeClock()
        self.w = MemWire(queue_limit=100_000)
        self.d = Domain(policy=POLICY, rx_mitigation=rx_mitigation)
        self.swa = self.d.add_netif("a", self.w.a, f"{A_IP}/24", link_rate=1e9, ll_share=0.2, clock=self.clock)
        self.swb = self.d.add_netif("b", self.w.b, f"{B_IP}/24", clock=self.clock)
        self.c = Client.local(self.d)

    def stats(self, sock) -> dict:
        for n in self.d.status()["netifs"]:
            for f in n["flows"]:
                if f["channel"] == sock.channel.id:
                    return f
        raise KeyError(sock.channel.id)


make_net = net_factory(Net)


class Sleeper:
    """A client that acts as an event loop: it reads only when its bell rang, then sleeps again."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.got: list[bytes] = []
        self.wakeups = 0
        sock.channel.drain_doorbell()  # a bell of what came before (resolve's datagram) is no wake-up of ours
        self.read_all()  # nothing yet: this arms NEED_WAKEUP

    def read_all(self) -> None:
        while True:
            try:
                self.got += [p for p, _ in self.sock.recv_many(1024, timeout=0)]
            except BlockingIOError:
                return  # the ring is empty and NEED_WAKEUP is set: asleep

    def poll(self) -> None:
        """If the bell rang: wake up, read everything, go back to sleep."""
        bell = select.poll()  # (not select(): the suite may have descriptors past FD_SETSIZE open)
        bell.register(self.sock.fileno(), select.POLLIN)
        if bell.poll(0):
            self.sock.channel.drain_doorbell()
            self.wakeups += 1
            self.read_all()


def flood(n: Net, sender, to: tuple[str, int], sleeper: Sleeper, count: int, gap: float) -> None:
    """`count` datagrams one at a time, `gap` simulated seconds apart, each carried through by two
    passes: the sender's bell has the first send it (an idle flow is not polled), the second
    takes it off the wire at the receiving netif."""
    for i in range(count):
        sender.sendto(i.to_bytes(4, "big"), to)
        n.clock.now += gap
        n.d.serve_once(0)
        n.d.serve_once(0)
        sleeper.poll()
    for _ in range(3):  # the held bell's deadline passes: the loop rings it
        n.clock.now += HOLD
        n.d.serve_once(0)
        sleeper.poll()


def resolve(n: Net, sender, to: tuple[str, int], receiver) -> None:
    """One datagram first, so that the flood does not wait for ARP."""
    sender.sendto(b"arp", to)
    for _ in range(50):
        n.d.serve_once(0)
        try:
            if receiver.recv_many(1, timeout=0):
                return
        except BlockingIOError:
            pass
    pytest.fail("the first datagram never arrived")


@pytest.mark.parametrize("on", [True, False], ids=["mitigation", "off"])
def test_a_flood_to_a_sleeping_client_rings_far_fewer_bells_and_loses_nothing(make_net, on):
    n = make_net(rx_mitigation=on)
    sa = n.c.udp_socket("a", 5000)
    sb = n.c.udp_socket("b", 6000, ring_size=4096, packets=8192)
    resolve(n, sa, (B_IP, 6000), sb)
    sleeper = Sleeper(sb)
    before = n.stats(sb)["stats"]["rx_bells"]
    count = 3000
    flood(n, sa, (B_IP, 6000), sleeper, count, gap=10e-6)  # 100,000 datagrams/s
    assert sleeper.got == [i.to_bytes(4, "big") for i in range(count)]  # all of them, in order
    f = n.stats(sb)
    bells = f["stats"]["rx_bells"] - before
    assert f["rx_mitigation"] is on and f["stats"]["rx_packets"] == count + 1
    assert not f["stats"].get("rx_dropped")
    assert sleeper.wakeups == bells  # one wake-up per bell: the client reads after each pass
    if on:
        assert bells * 10 < count  # about one per 25 datagrams (rate * hold), once the estimate is up
        assert f["stats"]["rx_bells_held"] > count / 2 and f["stats"]["rx_bells_late"] >= 1
    else:
        assert bells == count  # as without mitigation: every batch that finds the client asleep
        assert f["stats"]["rx_bells_held"] == 0


def test_a_sparse_flow_is_rung_on_every_datagram(make_net):
    n = make_net()
    sa = n.c.udp_socket("a", 5000)
    sb = n.c.udp_socket("b", 6000)
    resolve(n, sa, (B_IP, 6000), sb)
    sleeper = Sleeper(sb)
    before = n.stats(sb)["stats"]["rx_bells"]
    flood(n, sa, (B_IP, 6000), sleeper, 300, gap=0.002)  # 500 datagrams/s
    assert len(sleeper.got) == 300
    f = n.stats(sb)
    assert f["stats"]["rx_bells"] - before == 300 == sleeper.wakeups and f["stats"]["rx_bells_held"] == 0


def test_a_flow_in_the_ll_class_is_rung_on_every_batch_until_its_lease_ends(make_net):
    n = make_net()
    ll = n.c.udp_socket("a", 5000, ring_size=4096, packets=8192)  # on the paced netif: it can hold a lease
    sb = n.c.udp_socket("b", 6000)
    resolve(n, sb, (A_IP, 5000), ll)
    lease = n.c.request_lease(ll.channel, rate=1e6, max_packet=1200, latency_target=0.05)
    assert n.stats(ll)["rx_mitigation"] is False
    sleeper = Sleeper(ll)
    before = n.stats(ll)["stats"]["rx_bells"]
    count = 2000
    flood(n, sb, (A_IP, 5000), sleeper, count, gap=10e-6)
    assert sleeper.got == [i.to_bytes(4, "big") for i in range(count)]
    f = n.stats(ll)
    assert f["stats"]["rx_bells"] - before == count  # a bell per batch, never held
    assert f["stats"]["rx_bells_held"] == 0
    lease.release()
    assert n.stats(ll)["rx_mitigation"] is True  # back in the general class
    before = n.stats(ll)["stats"]["rx_bells"]
    sleeper.got.clear()
    flood(n, sb, (A_IP, 5000), sleeper, count, gap=10e-6)
    assert len(sleeper.got) == count and (n.stats(ll)["stats"]["rx_bells"] - before) * 10 < count


def test_a_grant_rings_a_held_bell_at_once_and_a_closed_flow_leaves_nothing_held(make_net):
    n = make_net()
    ll = n.c.udp_socket("a", 5000, ring_size=4096, packets=8192)
    sb = n.c.udp_socket("b", 6000)
    resolve(n, sb, (A_IP, 5000), ll)
    sleeper = Sleeper(ll)
    port = n.d.channels[ll.channel.id].flow.port
    sent = 200
    for _ in range(sent):  # fast enough to be held, and stop with a bell held
        sb.sendto(b"x", (A_IP, 5000))
        n.clock.now += 5e-6
        n.d.serve_once(0)
        sleeper.poll()
    if port.mitigation.deadline is None:
        sb.sendto(b"x", (A_IP, 5000))
        n.d.serve_once(0)
        sent += 1
    assert port.mitigation.deadline is not None and port in n.swa._held_bells
    wakeups = sleeper.wakeups
    n.c.request_lease(ll.channel, rate=1e6, max_packet=1200, latency_target=0.05)
    sleeper.poll()  # no time passed: the grant itself rang
    assert sleeper.wakeups == wakeups + 1 and len(sleeper.got) == sent
    # a general flow that closes while it holds a bell is forgotten with it
    sb2 = n.c.udp_socket("b", 6001)
    l2 = n.c.udp_socket("a", 5001)
    Sleeper(l2)  # asleep, and it will not wake: its bells go unanswered
    p2 = n.d.channels[l2.channel.id].flow.port
    for _ in range(200):
        sb2.sendto(b"y", (A_IP, 5001))
        n.clock.now += 5e-6
        n.d.serve_once(0)
    if p2.mitigation.deadline is None:
        sb2.sendto(b"y", (A_IP, 5001))
        n.d.serve_once(0)
    assert p2 in n.swa._held_bells
    l2.close()
    n.d.serve_once(0)
    assert p2 not in n.swa._held_bells
    n.clock.now += 1
    n.d.serve_once(0)  # nothing to ring, nothing rung on a closed channel


# -- in real time: the loop's own wait rings the held bells ------------------------------------------


def test_in_real_time_every_held_bell_rings_and_nothing_is_lost():
    """A client that sleeps on its bell with no timeout (bar a failure deadline) gets every datagram."""
    d = Domain()
    try:
        w = MemWire(queue_limit=100_000)
        d.add_netif("a", w.a, f"{A_IP}/24")
        d.add_netif("b", w.b, f"{B_IP}/24")
        d.start()
        c = Client.local(d)
        sa = c.udp_socket("a", 5000)
        sb = c.udp_socket("b", 6000, ring_size=8192, packets=16384)
        sa.sendto(b"arp", (B_IP, 6000))
        assert sb.recv_many(1, timeout=10)
        count = 6000
        got: list[bytes] = []
        wakeups = 0
        done = threading.Event()

        def send() -> None:
            for i in range(count):  # one at a time: many small batches, fast
                sa.sendto(i.to_bytes(4, "big"), (B_IP, 6000))
            done.set()

        t = threading.Thread(target=send)
        t.start()
        try:
            while len(got) < count:
                try:
                    got += [p for p, _ in sb.recv_many(1024, timeout=0)]
                    continue
                except BlockingIOError:
                    pass  # asleep: NEED_WAKEUP set
                bell = select.poll()  # (not select(): the suite may have descriptors past FD_SETSIZE open)
                bell.register(sb.fileno(), select.POLLIN)
                if not bell.poll(10_000):
                    pytest.fail(f"no bell for 10 s with {len(got)} of {count} received")
                sb.channel.drain_doorbell()
                wakeups += 1
        finally:
            t.join(30)
        assert done.is_set() and got == [i.to_bytes(4, "big") for i in range(count)]
        (fb,) = [f for nif in d.status()["netifs"] for f in nif["flows"] if f["channel"] == sb.channel.id]
        assert fb["rx_mitigation"] is True and not fb["stats"].get("rx_dropped")
        assert wakeups <= fb["stats"]["rx_bells"]  # every wake-up answered a bell
    finally:
        d.stop()


# -- configuration ---------------------------------------------------------------------------------------


def test_rx_mitigation_is_configurable_per_domain_and_per_netif(tmp_path):
    d = Domain(rx_mitigation=False)
    try:
        w1, w2 = MemWire(), MemWire()
        off = d.add_netif("off", w1.a, "10.9.1.1/24")
        on = d.add_netif("on", w2.a, "10.9.2.1/24", rx_mitigation=True)
        assert (off.rx_mitigation, on.rx_mitigation) == (False, True)
        c = Client.local(d)
        s_off, s_on = c.udp_socket("off", 5000), c.udp_socket("on", 5001)
        flows = {n["netif"]["name"]: n["flows"][0] for n in d.status()["netifs"]}
        assert flows["off"]["rx_mitigation"] is False and flows["on"]["rx_mitigation"] is True
        assert flows["off"]["stats"]["rx_bells"] == 0
        s_off.close()
        s_on.close()
    finally:
        d.stop()
    assert Domain().rx_mitigation is True  # the default
    p = tmp_path / "usnetd.toml"
    p.write_text('rx_mitigation = false\n[[netif]]\nname = "x"\naddress = "10.9.3.1/24"\nrx_mitigation = true\n'
                 '[[netif]]\nname = "y"\naddress = "10.9.4.1/24"\n')
    cfg = config.load(str(p))
    assert cfg.rx_mitigation is False and [nc.rx_mitigation for nc in cfg.netif] == [True, None]
    p.write_text(config.dump(cfg))
    assert config.load(str(p)) == cfg
    assert config.Config().rx_mitigation is True
    p.write_text('[[netif]]\nname = "x"\naddress = "10.9.3.1/24"\nrx_mitigation = "yes"\n')
    with pytest.raises(ValueError):
        config.load(str(p))
