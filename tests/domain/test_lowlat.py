"""The low-latency agent (issue 5): policy, admission, leases, policing, and the domain's wiring.

The agent and the policer are sans-I/O and property-tested on simulated
time. The domain tests run a real Domain with a paced memwire netif and
in-process clients; where it matters when a lease expires, the domain is
given a lease clock the test holds. Anything awaited is awaited on the
channel's EVENT ring, the wire, or the domain's state, with a deadline.
The usnetd test (privileged: its netif is a TAP) reloads a real daemon's
policy with SIGHUP.
"""

from __future__ import annotations

import math
import os
import select
import signal
import socket
import time
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.usnetd import Daemon
from tests.helpers.util import ControlledDevice, FakeClock, close_all, recv_n, tap_name, wait_until
from usnet.abi import protocol as P
from usnet.abi.events import Event, EventType, RevokeReason, TxDropReason
from usnet.abi.protocol import ControlError, LeaseRefusal
from usnet.client import Client
from usnet.client.lease import LeaseRefusedError
from usnet.domain import config
from usnet.domain.loop import Domain
from usnet.domain.lowlat.agent import Agent, Grant, LLLink, Refusal, burst_of
from usnet.domain.lowlat.policer import Policer
from usnet.domain.lowlat.policy import SERVICE_CLASSES, Policy, PolicyEntry, Who
from usnet.domain.netif.netif import Netif
from usnet.domain.netif.txsched import GENERAL, LL, SlotScheduler
from usnet.drivers import MemWire
from usnet.drivers.block import FrameBlock

ME = os.getuid()


# -- the policer -------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([8e3, 1e6, 64e3, 1e9]), st.integers(64, 200_000), st.sampled_from([0, 14]),
       st.lists(st.tuples(st.floats(0, 0.05), st.lists(st.integers(20, 9000), max_size=40)), max_size=60))
def test_policer_never_admits_more_than_rate_times_time_plus_burst(rate, burst, overhead, arrivals):
    pol = Policer(rate, burst)
    t = 100.0
    times, admitted = [], []
    for dt, sizes in arrivals:
        t += dt
        lens = np.array(sizes, np.uint32)
        k = pol.admit(lens, t, overhead)
        assert 0 <= k <= len(sizes)
        times.append(t)
        admitted.append(sum(sizes[:k]) + overhead * k)  # a prefix of the batch
    # every window [t_i, t_j]: at most what the rate brings in that time, plus the burst
    cum = np.concatenate(([0], np.cumsum(admitted, dtype=np.float64)))
    ts = np.array(times)
    for i in range(len(ts)):
        window = cum[i + 1:] - cum[i]
        assert (window <= rate / 8 * (ts[i:] - ts[i]) + burst + 1e-6).all()
    assert pol.passed_bytes == sum(admitted)
    assert pol.passed + pol.dropped == sum(len(s) for _, s in arrivals)


def test_policer_lets_a_full_bucket_through_and_refills_at_its_rate():
    pol = Policer(8000, 3000)  # 1000 bytes/s
    assert pol.admit(np.array([1000, 1000, 1000, 1], np.uint32), 50.0) == 3  # the bucket starts full
    assert pol.admit(np.array([500], np.uint32), 50.4) == 0  # 400 bytes back: not enough
    assert pol.admit(np.array([500], np.uint32), 50.5) == 1
    assert pol.admit(np.array([100], np.uint32), 49.0) == 0  # a clock that steps back refills nothing
    assert pol.admit(np.array([2000, 10], np.uint32), 60.0) == 2  # ten seconds: full again, no more
    assert pol.admit(np.array([986], np.uint32), 60.0) == 1  # 3000 - 2010 = 990 >= 986
    assert pol.admit(np.array([], np.uint32), 60.0) == 0
    assert (pol.passed, pol.dropped) == (7, 3)


# -- the agent ---------------------------------------------------------------------------------------

LINKS = {
    "fast": LLLink.of_scheduler(SlotScheduler(1e9, ll_share=0.2), 1500),
    "slow": LLLink.of_scheduler(SlotScheduler(10e6, ll_share=0.5), 1500),
}
WHO = [Who(0, "a"), Who(1000, "b"), Who(1000, "c"), Who(2000, "")]
ENTRIES = [
    PolicyEntry(frozenset({"voice", "interactive"}), 1e8, 1500, uid=1000),
    PolicyEntry(frozenset({"video"}), 5e8, 1500, program="a"),
    PolicyEntry(frozenset(SERVICE_CLASSES), 1e12, 65535, uid=0),
    PolicyEntry(frozenset({"control"}), 1e6, 200, uid=1000, program="c"),
    PolicyEntry(frozenset({"voice"}), 1e8, 1500, uid=2000, min_target=0.003),  # may ask for tight targets
]
#: An entry whose leases may ask for tight targets (under a netif's full bound).
TIGHT = PolicyEntry(frozenset({"voice"}), 1e8, 1500, uid=1000, program="t", min_target=0.002)
policies = st.lists(st.sampled_from(ENTRIES), max_size=4).map(Policy)
NAN, INF = float("nan"), float("inf")
requests = st.tuples(
    st.just("request"), st.sampled_from(WHO), st.sampled_from(["fast", "slow", "none"]), st.integers(0, 5),
    st.sampled_from([*SERVICE_CLASSES, "gold", ""]),
    st.sampled_from([1e3, 1e6, 3e6, 5e7, 1e8, 1.5e8, 2e8, 5e8, 0, -5, NAN, INF, 2e12, True]),
    st.sampled_from([20, 200, 1500, 0, 19, 1501, 9000, 65536, 1.5]),
    st.sampled_from([1e-4, 0.003, 0.004, 0.008, 0.01, 0.012, 0.05, 1.0, 60.0, 0.0, -1, NAN, INF, 61.0]))
#: Requests with sound parameters, so that entitlement and admission are what decides (tight targets too).
sound_requests = st.tuples(
    st.just("request"), st.sampled_from(WHO), st.sampled_from(["fast", "slow"]), st.integers(0, 5),
    st.sampled_from(SERVICE_CLASSES), st.sampled_from([1e3, 1e6, 3e6, 5e7, 1e8]), st.sampled_from([20, 200, 1500]),
    st.sampled_from([0.003, 0.004, 0.008, 0.012, 0.05]))
ops = st.lists(st.one_of(
    requests, requests, sound_requests,
    st.tuples(st.just("renew"), st.integers(1, 12), st.sampled_from(WHO)),
    st.tuples(st.just("release"), st.integers(1, 12), st.sampled_from(WHO)),
    st.tuples(st.just("wait"), st.floats(0, 40)),
    st.tuples(st.just("expire")),
    st.tuples(st.just("reload"), policies),
), max_size=60)


def snapshot(agent: Agent) -> dict:
    return {lease.id: (lease.owner, lease.netif, lease.flow, lease.service_class, lease.rate, lease.max_packet,
                       lease.latency_target, lease.expires, lease.policer) for lease in agent.leases.values()}


def assert_sound(agent: Agent) -> None:
    """What holds after anything: grants fit, wait bounds hold, every lease is entitled (its target
    too: at least its entry's min_target, or the netif's full bound) and indexed."""
    assert len(agent._by_flow) == len(agent.leases)
    for name, link in LINKS.items():
        mine = [lease for lease in agent.leases.values() if lease.netif == name]
        assert math.fsum(lease.rate for lease in mine) <= link.capacity
        if mine:
            assert agent.wait_bound(name) <= min(lease.latency_target for lease in mine)
    for lease in agent.leases.values():
        assert lease.netif in LINKS and agent._by_flow[(lease.netif, lease.flow)] is lease
        assert agent.policy.check(lease.who, lease.service_class, lease.rate, lease.max_packet,
                                  lease.latency_target, LINKS[lease.netif].full_bound) is None


def vetoed(agent: Agent, netif: str, rate: float, pkt: int) -> bool:
    """Whether a request of `rate` and `pkt` that is refused OVER_SUBSCRIBED had that coming: its
    rate or its burst does not fit the netif (its full bound's window), or an older lease holds a
    target under the full bound, which only a policy entry's min_target gives (assert_sound checks
    that). Anything else is a veto no entitlement allowed (issue 37)."""
    link = LINKS[netif]
    mine = [lease for lease in agent.leases.values() if lease.netif == netif]
    return (math.fsum([*(lease.rate for lease in mine), rate]) > link.capacity
            or agent.wait_bound(netif, burst_of(rate, pkt)) > link.full_bound
            or any(lease.latency_target < link.full_bound for lease in mine))  # assert_sound: by min_target


@settings(max_examples=300, deadline=None)
@given(policies, ops)
def test_agent_never_oversubscribes_and_a_refusal_changes_nothing(policy, ops):
    agent = Agent(policy, ttl=30.0)
    for name, link in LINKS.items():
        agent.set_link(name, link)
    now = 1000.0
    for op in ops:
        before = snapshot(agent)
        kind = op[0]
        if kind == "request":
            _, who, netif, flow, cls, rate, pkt, lat = op
            got = agent.request(who, netif, flow, cls, rate, pkt, lat, now, owner=who)
            if isinstance(got, Refusal) and got.reason is LeaseRefusal.OVER_SUBSCRIBED:
                assert vetoed(agent, netif, rate, pkt), got.message
            if isinstance(got, Refusal):
                assert snapshot(agent) == before and got.message
                nonsense = (cls not in SERVICE_CLASSES or isinstance(rate, bool) or not 0 < rate <= 1e12
                            or not isinstance(pkt, int) or not 20 <= pkt <= 65535 or not 0 < lat <= 60)
                if nonsense:
                    assert got.reason is LeaseRefusal.BAD_PARAMETERS
                elif netif == "none":
                    assert got.reason is LeaseRefusal.NO_LL_CAPACITY
            else:
                assert isinstance(got, Grant) and got.expires == now + 30.0
                assert snapshot(agent) == {**before, got.id: snapshot(agent)[got.id]}
        elif kind == "renew":
            got = agent.renew(op[1], op[2], now)
            if isinstance(got, Refusal):
                assert got.reason is LeaseRefusal.UNKNOWN_LEASE and snapshot(agent) == before
            else:
                assert got.owner == op[2] and got.expires == now + 30.0
                assert {k: v for k, v in snapshot(agent).items() if k != got.id} == \
                    {k: v for k, v in before.items() if k != got.id}
        elif kind == "release":
            got = agent.release(op[1], op[2])
            if isinstance(got, Refusal):
                assert got.reason is LeaseRefusal.UNKNOWN_LEASE and snapshot(agent) == before
            else:
                assert got.id not in agent.leases and snapshot(agent) == {k: v for k, v in before.items()
                                                                          if k != got.id}
        elif kind == "wait":
            now += op[1]
        elif kind == "expire":
            gone = agent.expire(now)
            assert all(lease.expires <= now for lease in gone)
            assert all(lease.expires > now for lease in agent.leases.values())  # expired leases are gone
            assert set(snapshot(agent)) == set(before) - {lease.id for lease in gone}
        else:
            gone = agent.reload(op[1], now)
            assert all(op[1].check(lease.who, lease.service_class, lease.rate, lease.max_packet) for lease in gone)
            assert snapshot(agent) == {k: v for k, v in before.items() if k not in {lease.id for lease in gone}}
        assert_sound(agent)


def test_agent_refusals_each_name_their_reason():
    agent = Agent(Policy([ENTRIES[0], ENTRIES[3], TIGHT]), ttl=10.0)
    agent.set_link("fast", LINKS["fast"])
    agent.set_link("slow", LINKS["slow"])
    b, t = Who(1000, "b"), Who(1000, "t")

    def refused(*args, who=b, now=0.0) -> tuple[LeaseRefusal, str]:
        got = agent.request(who, *args, now, owner=who)
        assert isinstance(got, Refusal), got
        return got.reason, got.message

    assert refused("fast", 1, "gold", 1e6, 200, 0.05)[0] is LeaseRefusal.BAD_PARAMETERS
    assert refused("fast", 1, "voice", 1e6, 1600, 0.05) == (
        LeaseRefusal.BAD_PARAMETERS, "max_packet 1600 is larger than the MTU of 'fast' (1500)")
    assert refused("nowhere", 1, "voice", 1e6, 200, 0.05)[0] is LeaseRefusal.NO_LL_CAPACITY
    assert refused("fast", 1, "voice", 1e6, 200, 0.05, who=Who(7, "b")) == (
        LeaseRefusal.NOT_ENTITLED, "uid 7 (program 'b') has no low-latency entitlement")
    assert refused("fast", 1, "video", 1e6, 200, 0.05) == (
        LeaseRefusal.NOT_ENTITLED, "uid 1000 (program 'b') may have interactive, voice, not 'video'")
    assert refused("fast", 1, "voice", 2e8, 200, 0.05)[0] is LeaseRefusal.ABOVE_ENTITLEMENT
    # slow: 5 Mbit/s of LL, 2.4 ms horizon, LL every other slot of 1.2 ms: access 6.1 ms
    assert LINKS["slow"].capacity == 5e6 and 0.006 < LINKS["slow"].access < 0.0062
    # a target under the netif's full bound (11.1 ms on slow) needs an entry's min_target ...
    assert refused("slow", 1, "voice", 1e6, 200, 0.005) == (
        LeaseRefusal.ABOVE_ENTITLEMENT, "uid 1000 (program 'b') may ask for latency targets of at least 11.1 ms "
        "for 'voice' on this netif, not 5 ms (a tighter one needs a policy entry's min_target)")
    # ... and with one, a target the wait bound with the lease alone passes is still unachievable
    assert refused("slow", 1, "voice", 1e6, 200, 0.005, who=t)[0] is LeaseRefusal.LATENCY_UNACHIEVABLE
    first = agent.request(b, "slow", 1, "voice", 4e6, 1500, 0.05, 0.0, owner=b)
    assert isinstance(first, Grant) and first.burst == burst_of(4e6, 1500) == 3028
    assert refused("slow", 2, "voice", 2e6, 200, 0.05)[0] is LeaseRefusal.OVER_SUBSCRIBED
    assert refused("slow", 1, "voice", 1e3, 200, 0.05)[0] is LeaseRefusal.ALREADY_LEASED
    # a lease whose burst would push the wait past a tight target its entry gave is refused too
    tight = agent.request(t, "fast", 1, "voice", 1e6, 200, 0.003, 0.0, owner=t)
    assert isinstance(tight, Grant)
    reason, msg = refused("fast", 2, "voice", 1e8, 1500, 0.05)
    assert reason is LeaseRefusal.OVER_SUBSCRIBED and f"lease {tight.id}'s target" in msg and "min_target" in msg
    assert agent.renew(first.id, Who(1000, "c"), 1.0).reason is LeaseRefusal.UNKNOWN_LEASE  # not its owner
    assert agent.renew(first.id, b, 10.0).reason is LeaseRefusal.UNKNOWN_LEASE  # expired at 10
    assert agent.refused == {"BAD_PARAMETERS": 2, "NO_LL_CAPACITY": 1, "NOT_ENTITLED": 2,
                             "ABOVE_ENTITLEMENT": 2, "LATENCY_UNACHIEVABLE": 1, "OVER_SUBSCRIBED": 2,
                             "ALREADY_LEASED": 1, "UNKNOWN_LEASE": 2}


def test_a_tight_target_needs_an_entitlement_and_without_one_shuts_nobody_out():
    """The LL veto (docs/design-notes.md, "Tight latency targets are an entitlement"):
    a lease of 1 bit/s whose target was the netif's bound with it alone refused every
    later request there (each burst raised the bound past its target). Without a min_target the
    tightest target is the full bound, and beside it honest leases fill the netif's bursts."""
    agent = Agent(Policy([ENTRIES[2]]), ttl=10.0)
    link = LINKS["fast"]
    agent.set_link("fast", link)
    root = Who(0, "a")
    alone = agent.wait_bound("fast", burst_of(1, 20))
    got = agent.request(root, "fast", 1, "voice", 1, 20, alone, 0.0, owner="hostile")
    assert isinstance(got, Refusal) and got.reason is LeaseRefusal.ABOVE_ENTITLEMENT and "min_target" in got.message
    assert isinstance(agent.request(root, "fast", 1, "voice", 1, 20, link.full_bound, 0.0, owner="hostile"), Grant)
    for flow in range(2, 5):  # 3 x 31,250 bytes of burst: three quarters of what the window drains
        got = agent.request(root, "fast", flow, "voice", link.capacity / 4, 1500, 0.05, 0.0, owner="honest")
        assert isinstance(got, Grant), got
    # with an entry's min_target the same lease is granted, and holds back only what that allows
    agent = Agent(Policy([ENTRIES[2], replace(ENTRIES[2], program="t", min_target=alone)]), ttl=10.0)
    agent.set_link("fast", link)
    assert isinstance(agent.request(Who(0, "t"), "fast", 1, "voice", 1, 20, alone, 0.0, owner="tight"), Grant)
    got = agent.request(root, "fast", 2, "voice", 1e6, 200, 0.05, 0.0, owner="honest")
    assert isinstance(got, Refusal) and got.reason is LeaseRefusal.OVER_SUBSCRIBED


def test_a_reload_that_takes_a_tight_target_away_revokes_its_lease():
    agent = Agent(Policy([TIGHT]), ttl=10.0)
    agent.set_link("fast", LINKS["fast"])
    t = Who(1000, "t")
    tight = agent.request(t, "fast", 1, "voice", 1e6, 200, 0.003, 0.0, owner=t)
    loose = agent.request(t, "fast", 2, "voice", 1e6, 200, 0.05, 0.0, owner=t)
    assert isinstance(tight, Grant) and isinstance(loose, Grant)
    assert agent.reload(Policy([replace(TIGHT, min_target=None)]), 1.0) == [tight]
    assert list(agent.leases.values()) == [loose]


@pytest.mark.parametrize("kw, msg", [
    ({}, "uid or a program"), ({"uid": -1}, "uid"), ({"uid": True}, "uid"), ({"program": ""}, "program"),
    ({"uid": 1, "classes": frozenset()}, "classes"), ({"uid": 1, "classes": frozenset({"gold"})}, "classes"),
    ({"uid": 1, "max_rate": 0}, "max_rate"), ({"uid": 1, "max_rate": NAN}, "max_rate"),
    ({"uid": 1, "max_packet": 10}, "max_packet"),
    ({"uid": 1, "min_target": 0.0}, "min_target"), ({"uid": 1, "min_target": -1.0}, "min_target"),
    ({"uid": 1, "min_target": NAN}, "min_target"), ({"uid": 1, "min_target": INF}, "min_target"),
    ({"uid": 1, "min_target": 61.0}, "min_target"), ({"uid": 1, "min_target": True}, "min_target"),
    ({"uid": 1, "min_target": 10**400}, "min_target"), ({"uid": 1, "max_rate": 10**400}, "max_rate"),
    ({"uid": 1, "total_rate": 10**400}, "total_rate"),
])
def test_policy_entries_refuse_nonsense(kw, msg):
    args = {"classes": frozenset({"voice"}), "max_rate": 1e6, "max_packet": 200, **kw}
    with pytest.raises(ValueError, match=msg):
        PolicyEntry(**args)


def test_a_netif_without_ll_slots_has_no_ll_link():
    assert LLLink.of_scheduler(None, 1500) is None
    assert LLLink.of_scheduler(SlotScheduler(1e9, ll_share=0.0), 1500) is None


# -- the netif: a class change moves queued frames -----------------------------------------------------


@pytest.mark.parametrize("to_ll", [False, True], ids=["ll-to-general", "general-to-ll"])
def test_a_class_change_moves_queued_frames_in_order_and_loses_none(to_ll):
    now = [500.0]
    dev = ControlledDevice("stalled", 0, per_call=False)  # takes frames only when told to
    netif = Netif("a", dev, "10.0.0.1/24", link_rate=1e8, ll_share=0.2, clock=lambda: now[0])
    netif.set_class(7, not to_ll)
    frames = [bytes(14) + i.to_bytes(4, "big") + bytes(300) for i in range(64)]
    rows = np.frombuffer(b"".join(frames), np.uint8).reshape(64, -1)
    netif.enqueue_many(7, [frames[0], FrameBlock(rows[1:40].copy(), np.full(39, 318)), *frames[40:]])
    netif.enqueue(9, bytes(100))  # another flow, general
    dev.room = 5
    netif.flush()  # the device takes a few, then refuses: the rest wait in usnet
    assert netif.queued(7)[0] > 40
    netif.set_class(7, to_ll)
    assert (7 in netif.active_ll) == to_ll and (7 in netif.active) != to_ll
    dev.room = 10**6
    for _ in range(1000):
        if netif.next_timeout() is None:
            break
        netif.flush()
        now[0] += max(netif.next_timeout() or 0.0, 0.0005)
    mine = [int.from_bytes(f[14:18], "big") for f in dev.got if len(f) == 318]
    assert mine == list(range(64)) and netif.queued(7) == (0, 0)
    sent = netif.sched.frames_sent
    assert sent[LL] + sent[GENERAL] == 65 and (sent[LL] > 0) and (sent[GENERAL] > 1)


# -- over a real domain -----------------------------------------------------------------------------------

POLICY = Policy([
    PolicyEntry(frozenset({"voice", "interactive"}), 2e8, 1200, uid=ME),
    PolicyEntry(frozenset({"video"}), 1e8, 1200, uid=ME, program="vip"),
    PolicyEntry(frozenset({"voice", "interactive"}), 1e6, 1200, uid=ME, program="tight", min_target=1e-5),
])
PEER_B = ("10.9.0.2", 6000)  # the wire's b end, as a neighbour the switch knows (`know_b`)


class Net:
    """Netif a (1 Gbit/s, 20 % LL) in a running domain; netif b too, or the wire's b end for the test to read."""

    def __init__(self, policy: Policy = POLICY, *, b: bool = True, **kw) -> None:
        self.wire = MemWire(queue_limit=kw.pop("queue_limit", 10_000))
        self.d = Domain(policy=policy, **kw)
        self.d.add_netif("a", self.wire.a, "10.9.0.1/24", link_rate=1e9, ll_share=0.2)
        if b:
            self.d.add_netif("b", self.wire.b, "10.9.0.2/24")
        self.d.start()
        self.c = Client.local(self.d)

    def txsched(self) -> dict:
        (a,) = [n for n in self.d.status()["netifs"] if n["netif"]["name"] == "a"]
        return a["netif"]["txsched"]

    def flow_id(self, sock) -> int:
        return self.d.channels[sock.channel.id].flow.id

    def know_b(self) -> None:
        """Netif a knows the wire's b end as 10.9.0.2 without asking ARP (nobody answers on b's end
        when it is not a netif; a broadcast destination would not do: clients may not send one)."""
        sw = self.d.switches["a"]
        with self.d.lock:
            sw.arp.learn(bytes([10, 9, 0, 2]), self.wire.b.mac, sw.clock())

    def leases(self) -> dict:
        return {lease.id: (lease.flow, lease.rate, lease.expires, lease.policer)
                for lease in self.d.leases.agent.leases.values()}

    def wire_frames(self, n: int, timeout: float = 10.0) -> list[bytes]:
        """Up to `n` frames off the wire's b end (not a netif here), waiting on its bell until a deadline."""
        out: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(out) < n and (left := deadline - time.monotonic()) > 0:
            for item in self.wire.b.recv_batch(1 << 16):
                out += item.frames() if isinstance(item, FrameBlock) else [bytes(item)]
            if len(out) < n:
                select.select([self.wire.b.fileno()], [], [], min(left, 0.05))
        return out


@pytest.fixture
def net():
    n = Net()
    try:
        yield n
    finally:
        close_all(n.c, n.d, n.wire)


@pytest.fixture
def half():
    """Netif a only: the test writes the frames that arrive from the wire's b end."""
    n = Net(b=False)
    try:
        yield n
    finally:
        close_all(n.c, n.d, n.wire)


def wait_event(ch, etype: EventType, timeout: float = 10.0) -> list[Event]:
    """The channel's events up to the first of type `etype`, that one last, waiting on its bell
    until a deadline. What the same read brought after it is left out: the netif's
    ADVISORY_UPDATED, say, which a trend change posts at any time (usnet.domain.netif.advisory)."""
    seen: list[Event] = []
    deadline = time.monotonic() + timeout
    while True:
        seen += ch.events()
        for i, e in enumerate(seen):
            if e.type == etype:
                return seen[: i + 1]
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"no {etype.name} within {timeout} s; saw {seen}")
        select.select([ch.fileno()], [], [], min(left, 0.05))
        ch.drain_doorbell()


def recv_all(sock, n: int, timeout: float = 10.0) -> list[bytes]:
    """Up to `n` datagrams' payloads, waiting until they come or the deadline passes."""
    return [p for p, _ in recv_n(sock, n, timeout)]


def test_a_grant_puts_the_flow_in_the_ll_class_until_it_is_released(net):
    c = net.c
    sa, sb = c.udp_socket("a", 5000), c.udp_socket("b", 6000)
    lease = c.request_lease(sa.channel, service_class="voice", rate=1e6, max_packet=1200, latency_target=0.05)
    assert (lease.service_class, lease.rate, lease.max_packet, lease.latency_target) == ("voice", 1e6, 1200, 0.05)
    assert lease.channel == sa.channel.id and lease.ttl == 30.0 and lease.burst == burst_of(1e6, 1200)
    assert 29 < lease.expires - time.monotonic() <= 30
    assert net.txsched()["ll_flows"] == [net.flow_id(sa)]
    (ev,) = wait_event(sa.channel, EventType.LEASE_GRANTED)
    assert (ev.code, ev.value, ev.aux) == (0, lease.id, 1_000_000)
    first = lease.expires
    lease.renew()
    assert lease.expires >= first
    # its datagrams go out in the LL class
    sa.sendto(b"resolve", ("10.9.0.2", 6000))
    assert recv_all(sb, 1) == [b"resolve"]
    assert net.txsched()["frames"]["ll"] >= 1
    lease.release()
    assert net.txsched()["ll_flows"] == [] and net.leases() == {}
    (ev,) = wait_event(sa.channel, EventType.LEASE_REVOKED)
    assert (ev.code, ev.value) == (RevokeReason.RELEASED, lease.id)
    with pytest.raises(LeaseRefusedError) as e:
        lease.renew()
    assert e.value.reason is LeaseRefusal.UNKNOWN_LEASE
    sa.sendto(b"general again", ("10.9.0.2", 6000))
    assert recv_all(sb, 1) == [b"general again"]
    lowlat = net.d.status()["lowlat"]
    assert (lowlat["granted"], lowlat["renewed"], lowlat["ended"]) == (1, 1, {"RELEASED": 1})


def test_every_refusal_names_its_reason_and_leaves_existing_grants_alone(net):
    d, c = net.d, net.c
    sa, sa2, sb = c.udp_socket("a", 5000), c.udp_socket("a", 5001), c.udp_socket("b", 6000)
    held = c.request_lease(sa.channel, rate=1.5e8, max_packet=1200, latency_target=0.05)
    before, ll_before = net.leases(), net.txsched()["ll_flows"]

    def refused(reason: LeaseRefusal, ask) -> None:
        with pytest.raises(LeaseRefusedError) as e:
            ask()
        assert e.value.reason is reason and e.value.message, e.value
        assert net.leases() == before and net.txsched()["ll_flows"] == ll_before

    ok = {"rate": 1e6, "max_packet": 1200, "latency_target": 0.05}
    refused(LeaseRefusal.OVER_SUBSCRIBED, lambda: c.request_lease(sa2.channel, **{**ok, "rate": 1e8}))
    refused(LeaseRefusal.ALREADY_LEASED, lambda: c.request_lease(sa.channel, **ok))
    refused(LeaseRefusal.NO_LL_CAPACITY, lambda: c.request_lease(sb.channel, **ok))
    # a target under the netif's full bound: beyond the entitlement, or (with min_target) unachievable
    refused(LeaseRefusal.ABOVE_ENTITLEMENT, lambda: c.request_lease(sa2.channel, **{**ok, "latency_target": 1e-4}))
    tight = Client.local(d, program="tight")
    refused(LeaseRefusal.LATENCY_UNACHIEVABLE, lambda: tight.request_lease(tight.udp_socket("a", 5015).channel,
                                                                            **{**ok, "latency_target": 1e-4}))
    refused(LeaseRefusal.ABOVE_ENTITLEMENT, lambda: c.request_lease(sa2.channel, **{**ok, "max_packet": 1400}))
    refused(LeaseRefusal.NOT_ENTITLED, lambda: c.request_lease(sa2.channel, service_class="video", **ok))
    # nonsense, in process (no decoder between): the agent's own checks
    for bad in ({"rate": float("nan")}, {"rate": float("inf")}, {"rate": -1}, {"rate": 0}, {"rate": 1e13},
                {"max_packet": 0}, {"max_packet": 10**9}, {"max_packet": 1501}, {"latency_target": 0},
                {"latency_target": float("nan")}, {"latency_target": 3600}, {"service_class": "gold"},
                # ints no float holds: refused, not an OverflowError out of the agent (the red team, session 37)
                {"rate": 10**400}, {"latency_target": 10**400}):
        refused(LeaseRefusal.BAD_PARAMETERS, lambda bad=bad: c.request_lease(sa2.channel, **{**ok, **bad}))
    # channels that are not this session's flows
    other = Client.local(d)
    theirs = other.udp_socket("a", 5002)
    pipe = c.open_pipe("not-a-flow")
    for cid in (theirs.channel.id, pipe.id, 99999):
        refused(LeaseRefusal.UNKNOWN_FLOW, lambda cid=cid: c.request_lease(cid, **ok))
    # a program the policy does not name, and a uid it does not name
    named = Client.local(d, program="nobody")
    refused(LeaseRefusal.NOT_ENTITLED, lambda: named.request_lease(named.udp_socket("a", 5003).channel,
                                                                    service_class="video", **ok))
    stranger = d.new_session(ME + 4242, os.getpid())
    opened, _ = d.handle(stranger, P.OpenFlow("a", 17, 5004))  # the domain's own fds: not ours to close
    reply, _ = d.handle(stranger, P.RequestLease(opened.channel, "voice", 1e6, 200, 0.05))
    assert isinstance(reply, P.LeaseRefused) and reply.reason == "NOT_ENTITLED"
    assert f"uid {ME + 4242}" in reply.message
    # someone else's lease cannot be renewed or released
    reply, _ = d.handle(stranger, P.RenewLease(held.id))
    assert isinstance(reply, P.LeaseRefused) and reply.reason == "UNKNOWN_LEASE"
    reply, _ = d.handle(stranger, P.ReleaseLease(held.id))
    assert isinstance(reply, P.LeaseRefused) and reply.reason == "UNKNOWN_LEASE"
    assert net.leases() == before
    # and the entitled program gets its class
    vip = Client.local(d, program="vip")
    got = vip.request_lease(vip.udp_socket("a", 5005).channel, service_class="video", rate=1e7, max_packet=1200,
                            latency_target=0.05)
    assert got.service_class == "video"
    refused_counts = d.status()["lowlat"]["refused"]
    assert refused_counts["BAD_PARAMETERS"] == 14 and refused_counts["UNKNOWN_FLOW"] == 3


def test_nonsense_over_a_socket_is_a_malformed_request_and_changes_nothing(net):
    """As for every request: out-of-bounds fields fail decoding (EPROTO); the session carries on."""
    sock = net.d.socketpair_session()
    c = Client.from_socket(sock)
    s = c.udp_socket("a", 5000)
    for bad in ({"rate": float("nan")}, {"rate": -1.0}, {"rate": float("inf")}, {"max_packet": 0},
                {"max_packet": 70000}, {"latency_target": 0.0}, {"latency_target": float("nan")}):
        args = {"rate": 1e6, "max_packet": 1200, "latency_target": 0.05, **bad}
        with pytest.raises(ControlError) as e:
            c.request_lease(s, **args)
        assert e.value.code == "EPROTO"
    assert net.leases() == {}
    with pytest.raises(LeaseRefusedError) as r:  # in bounds for the decoder, not for the agent
        c.request_lease(s, service_class="gold", rate=1e6, max_packet=1200, latency_target=0.05)
    assert r.value.reason is LeaseRefusal.BAD_PARAMETERS
    lease = c.request_lease(s, rate=1e6, max_packet=1200, latency_target=0.05)
    assert net.txsched()["ll_flows"] == [net.flow_id(s)]
    sock.shutdown(socket.SHUT_RDWR)  # the session ends: its lease goes with it
    wait_until(lambda: net.leases() == {}, 10, "the lease of an ended session to go")
    assert net.txsched()["ll_flows"] == [] and net.d.status()["lowlat"]["ended"] == {"CLOSED": 1}
    assert lease.id == 1


def test_a_short_ttl_expires_and_the_channel_hears_it():
    net = Net(lease_ttl=0.2)
    try:
        c = net.c
        sa, sb = c.udp_socket("a", 5000), c.udp_socket("b", 6000)
        lease = c.request_lease(sa.channel, rate=1e6, max_packet=1200, latency_target=0.05)
        seen = wait_event(sa.channel, EventType.LEASE_REVOKED)
        assert [e.type for e in seen] == [EventType.LEASE_GRANTED, EventType.LEASE_REVOKED]
        assert (seen[-1].code, seen[-1].value) == (RevokeReason.EXPIRED, lease.id)
        assert net.txsched()["ll_flows"] == [] and net.leases() == {}
        with pytest.raises(LeaseRefusedError) as e:
            lease.renew()
        assert e.value.reason is LeaseRefusal.UNKNOWN_LEASE
        sa.sendto(b"after", ("10.9.0.2", 6000))
        assert recv_all(sb, 1) == [b"after"]
    finally:
        close_all(net.c, net.d, net.wire)


def test_expiry_moves_the_queued_packets_to_the_general_class_and_all_go_out():
    """The wire holds 8 frames and the test reads it only after the lease is gone: the rest wait in usnet."""
    clock = FakeClock()
    net = Net(b=False, queue_limit=8, lease_clock=clock)
    try:
        sa = net.c.udp_socket("a", 5000)
        lease = net.c.request_lease(sa.channel, rate=1e8, max_packet=1200, latency_target=0.05)
        n = 50  # 50 frames of 542 bytes: within the lease's burst, so none is policed
        net.know_b()
        assert sa.send_many([i.to_bytes(4, "big") + bytes(496) for i in range(n)], PEER_B) == n
        wait_until(lambda: net.txsched()["queued_ll"] == n - 8, 10, "the LL queue to hold what the wire refused")
        clock.now += 30.0  # the lease's time is up
        net.d.call_soon(lambda: None)  # and the loop looks at once
        ev = wait_event(sa.channel, EventType.LEASE_REVOKED)[-1]
        assert (ev.code, ev.value, ev.aux) == (RevokeReason.EXPIRED, lease.id, n - 8)  # aux: the frames moved
        info = net.txsched()
        assert info["ll_flows"] == [] and info["queued_ll"] == 0 and info["queued_general"] == n - 8
        frames = net.wire_frames(n)
        assert [int.from_bytes(f[42:46], "big") for f in frames] == list(range(n))  # all, in order
    finally:
        close_all(net.c, net.d, net.wire)


def test_policy_reload_revokes_only_what_it_no_longer_entitles(net):
    d = net.d
    keep_c, lose_c = Client.local(d, program="vip"), net.c
    keep, lose, sb = keep_c.udp_socket("a", 5000), lose_c.udp_socket("a", 5001), lose_c.udp_socket("b", 6000)
    kept = keep_c.request_lease(keep, service_class="video", rate=1e7, max_packet=1200, latency_target=0.05)
    lost = lose_c.request_lease(lose, service_class="voice", rate=1e7, max_packet=1200, latency_target=0.05)
    kept_state = net.leases()[kept.id]
    gone = d.set_policy(Policy([POLICY.entries[1]]))  # only the vip entry is left
    assert [lease.id for lease in gone] == [lost.id]
    ev = wait_event(lose.channel, EventType.LEASE_REVOKED)[-1]
    assert (ev.code, ev.value) == (RevokeReason.POLICY, lost.id)
    assert [e.type for e in keep.channel.events()] == [EventType.LEASE_GRANTED]  # untouched, not told
    assert net.leases() == {kept.id: kept_state}
    assert net.txsched()["ll_flows"] == [net.flow_id(keep)]
    kept.renew()
    with pytest.raises(LeaseRefusedError) as e:
        lose_c.request_lease(lose, service_class="voice", rate=1e7, max_packet=1200, latency_target=0.05)
    assert e.value.reason is LeaseRefusal.NOT_ENTITLED
    lose.sendto(b"still carried", ("10.9.0.2", 6000))
    assert recv_all(sb, 1) == [b"still carried"]


def test_closing_a_channel_ends_its_lease_and_its_queued_packets_still_go(net):
    sa = net.c.udp_socket("a", 5000)
    sb = net.c.udp_socket("b", 6000)
    net.c.request_lease(sa.channel, rate=1e8, max_packet=1200, latency_target=0.05)
    sa.sendto(b"resolve", ("10.9.0.2", 6000))
    assert recv_all(sb, 1) == [b"resolve"]
    assert sa.send_many([b"%d" % i for i in range(40)], ("10.9.0.2", 6000)) == 40
    sa.channel.close()
    assert net.leases() == {} and net.txsched()["ll_flows"] == []
    assert recv_all(sb, 40) == [b"%d" % i for i in range(40)]
    assert net.d.status()["lowlat"]["ended"] == {"CLOSED": 1}


def test_a_netif_going_away_ends_its_leases(net):
    sa = net.c.udp_socket("a", 5000)
    net.c.request_lease(sa.channel, rate=1e6, max_packet=1200, latency_target=0.05)
    net.d.remove_netif("a")
    assert net.leases() == {} and "a" not in net.d.leases.agent.links
    assert net.d.status()["lowlat"]["ended"] == {"CLOSED": 1}
    sb = net.c.udp_socket("b", 6000)
    with pytest.raises(LeaseRefusedError) as e:
        net.c.request_lease(sb.channel, rate=1e6, max_packet=1200, latency_target=0.05)
    assert e.value.reason is LeaseRefusal.NO_LL_CAPACITY


def test_an_ll_flow_past_its_rate_is_policed_and_the_general_class_is_unaffected(net):
    c = net.c
    ll, gen = c.udp_socket("a", 5000), c.udp_socket("a", 5001)
    sb, sb2 = c.udp_socket("b", 6000), c.udp_socket("b", 6001)
    gen.sendto(b"resolve", ("10.9.0.2", 6001))
    assert recv_all(sb2, 1) == [b"resolve"]
    rate = 80e3  # 10 kB/s; the burst is two 1214-byte frames
    lease = c.request_lease(ll.channel, rate=rate, max_packet=1200, latency_target=0.05)
    (ll_lease,) = net.d.leases.agent.leases.values()
    payloads = [i.to_bytes(4, "big") + bytes(968) for i in range(100)]  # IP packets of 1000 bytes
    start = time.monotonic()
    assert ll.send_many(payloads, ("10.9.0.2", 6000)) == 100
    assert gen.send_many(payloads, ("10.9.0.2", 6001)) == 100
    pol = ll_lease.policer
    wait_until(lambda: pol.passed + pol.dropped == 100, 10, "the switch to take all 100 LL datagrams")
    elapsed = time.monotonic() - start
    assert pol.dropped > 0 and pol.passed_bytes <= lease.burst + rate / 8 * elapsed
    seqs = [int.from_bytes(p[:4], "big") for p in recv_all(sb, pol.passed)]
    assert len(seqs) == pol.passed and seqs == sorted(set(seqs))  # what conformed went out, in order
    assert seqs[:2] == [0, 1]  # a full bucket: the burst, then the rest of that batch is dropped
    assert recv_all(sb2, 100) == payloads  # the general flow beside it lost nothing
    drops = [e for e in ll.channel.events() if e.type == EventType.TX_DROPPED]
    assert {e.code for e in drops} == {TxDropReason.RATE_EXCEEDED}
    assert sum(e.value for e in drops) == pol.dropped and sum(e.aux for e in drops) == 1000 * pol.dropped
    (a,) = [n for n in net.d.status()["netifs"] if n["netif"]["name"] == "a"]
    assert a["drops"]["tx_rate_exceeded"] == pol.dropped
    (flow,) = [f for f in a["flows"] if f["local_port"] == 5000]
    assert flow["stats"]["tx_dropped"] == pol.dropped
    (info,) = net.d.status()["lowlat"]["leases"]
    assert info["policer"]["dropped"] == pol.dropped


# -- config and usnetd -----------------------------------------------------------------------------------


def test_config_policy_loads_checks_and_survives_dump(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('lease_ttl = 5.0\n[[policy]]\nuid = 1000\nclasses = ["voice"]\nmax_rate = 2e6\n'
                 'max_packet = 1200\n[[policy]]\nprogram = "vip"\nuid = 0\nclasses = ["video", "control"]\n'
                 'max_rate = 1e8\nmax_packet = 1500\nmin_target = 0.004\n')
    cfg = config.load(str(p))
    assert cfg.lease_ttl == 5.0 and len(cfg.agent_policy()) == 2
    assert cfg.agent_policy().check(Who(1000, "x"), "voice", 2e6, 1200) is None
    assert [e.min_target for e in cfg.agent_policy().entries] == [None, 0.004]
    p.write_text(config.dump(cfg))
    assert config.load(str(p)) == cfg


@pytest.mark.parametrize("text, msg", [
    ('[[policy]]\nclasses = ["voice"]\nmax_rate = 1e6\nmax_packet = 200', "uid or a program"),
    ('[[policy]]\nuid = 1\nclasses = ["gold"]\nmax_rate = 1e6\nmax_packet = 200', "classes"),
    ('[[policy]]\nuid = 1\nclasses = ["voice"]\nmax_rate = -1.0\nmax_packet = 200', "max_rate"),
    ('[[policy]]\nuid = 1\nclasses = ["voice"]\nmax_rate = nan\nmax_packet = 200', "max_rate"),
    ('[[policy]]\nuid = 1\nclasses = ["voice"]\nmax_rate = 1e6\nmax_packet = 99999', "max_packet"),
    ('[[policy]]\nuid = 1\nclasses = ["voice"]\nmax_rate = 1e6', "max_packet"),
    ('[[policy]]\nuid = 1\nclasses = ["voice"]\nmax_rate = 1e6\nmax_packet = 200\ncolour = "red"', "colour"),
    ('[[policy]]\nuid = 1\nclasses = ["voice"]\nmax_rate = 1e6\nmax_packet = 200\nmin_target = 0.0', "min_target"),
    ('[[policy]]\nuid = 1\nclasses = ["voice"]\nmax_rate = 1e6\nmax_packet = 200\nmin_target = -inf', "min_target"),
    ('[[policy]]\nuid = 1\nclasses = ["voice"]\nmax_rate = 1e6\nmax_packet = 200\nmin_target = 120', "min_target"),
    ('[[policy]]\nuid = 1\nclasses = ["voice"]\nmax_rate = 1e6\nmax_packet = 200\nmin_target = "5ms"', "min_target"),
    ("lease_ttl = 0", "lease_ttl"), ("lease_ttl = inf", "lease_ttl"),
])
def test_config_refuses_nonsense_policy(tmp_path, text, msg):
    p = tmp_path / "c.toml"
    p.write_text(text + "\n")
    with pytest.raises(ValueError, match=msg) as e:
        config.load(str(p))
    assert "\n" not in str(e.value)  # one line, naming the file and the key


def policy_toml(ifname: str, entries: str) -> str:
    return (f'lease_ttl = 60.0\n\n[[netif]]\nname = "ll0"\ndriver = "tap"\nifname = "{ifname}"\n'
            f'address = "10.213.0.2/24"\nlink_rate = 1e8\nll_share = 0.2\n{entries}')


KEEPER = '\n[[policy]]\nuid = 0\nprogram = "keeper"\nclasses = ["voice"]\nmax_rate = 1e6\nmax_packet = 1200\n'
LOSER = '\n[[policy]]\nuid = 0\nprogram = "loser"\nclasses = ["voice"]\nmax_rate = 1e6\nmax_packet = 1200\n'


@pytest.mark.privileged
def test_usnetd_reloads_its_policy_on_sighup_and_revokes_what_it_no_longer_entitles(tmp_path, sockdir):
    ifname = tap_name()
    path, log = str(sockdir / "s.sock"), tmp_path / "usnetd.log"
    cfg = tmp_path / "usnetd.toml"
    cfg.write_text(policy_toml(ifname, KEEPER + LOSER))
    d = Daemon(path, log, "--config", str(cfg))
    try:
        keeper, loser = Client.connect(path, program="keeper"), Client.connect(path, program="loser")
        ks, ls = keeper.udp_socket("ll0", 5000), loser.udp_socket("ll0", 5001)
        kept = keeper.request_lease(ks, service_class="voice", rate=1e6, max_packet=1200, latency_target=0.05)
        lost = loser.request_lease(ls, service_class="voice", rate=1e6, max_packet=1200, latency_target=0.05)
        # a config that does not load changes nothing, and says so
        cfg.write_text(policy_toml(ifname, KEEPER) + "\n[[policy]]\nuid = \n")
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "keeping the config in force" in log.read_text(), 15, "usnetd to log the bad config")
        assert len(keeper.status()["lowlat"]["leases"]) == 2
        # a policy without the loser's entry revokes the loser's lease, and only that
        cfg.write_text(policy_toml(ifname, KEEPER))
        d.proc.send_signal(signal.SIGHUP)
        ev = wait_event(ls.channel, EventType.LEASE_REVOKED, timeout=15)[-1]
        assert (ev.code, ev.value) == (RevokeReason.POLICY, lost.id)
        assert [e.type for e in ks.channel.events()] == [EventType.LEASE_GRANTED]
        lowlat = keeper.status()["lowlat"]
        assert [lease["id"] for lease in lowlat["leases"]] == [kept.id] and lowlat["policy_entries"] == 1
        kept.renew()
        with pytest.raises(LeaseRefusedError) as e:
            loser.request_lease(ls, service_class="voice", rate=1e6, max_packet=1200, latency_target=0.05)
        assert e.value.reason is LeaseRefusal.NOT_ENTITLED
        assert "reload done" in log.read_text() and "policy_entries=1 " in log.read_text()
    finally:
        returncode = d.stop()
    assert returncode == 0, d.log_text()
