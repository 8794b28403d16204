"""The low-latency agent (issue 5): policy, admission, leases and the policer, on simulated time.

The agent and the policer are sans-I/O and property-tested with hypothesis.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.daemon.protocol import LeaseRefusal
from usnet.lowlat.agent import Agent, Lease, LLLink, Refusal, burst_of
from usnet.lowlat.policer import Policer
from usnet.lowlat.policy import SERVICE_CLASSES, Policy, PolicyEntry, Who
from usnet.nexus.txsched import SlotScheduler


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
]
policies = st.lists(st.sampled_from(ENTRIES), max_size=4).map(Policy)
NAN, INF = float("nan"), float("inf")
requests = st.tuples(
    st.just("request"), st.sampled_from(WHO), st.sampled_from(["fast", "slow", "none"]), st.integers(0, 5),
    st.sampled_from([*SERVICE_CLASSES, "gold", ""]),
    st.sampled_from([1e3, 1e6, 3e6, 5e7, 1e8, 1.5e8, 2e8, 5e8, 0, -5, NAN, INF, 2e12, True]),
    st.sampled_from([20, 200, 1500, 0, 19, 1501, 9000, 65536, 1.5]),
    st.sampled_from([1e-4, 0.003, 0.01, 0.05, 1.0, 60.0, 0.0, -1, NAN, INF, 61.0]))
ops = st.lists(st.one_of(
    requests, requests,
    st.tuples(st.just("renew"), st.integers(1, 12), st.sampled_from(WHO)),
    st.tuples(st.just("release"), st.integers(1, 12), st.sampled_from(WHO)),
    st.tuples(st.just("wait"), st.floats(0, 40)),
    st.tuples(st.just("expire")),
    st.tuples(st.just("reload"), policies),
), max_size=60)


def snapshot(agent: Agent) -> dict:
    return {l.id: (l.owner, l.netif, l.flow, l.service_class, l.rate, l.max_packet, l.latency_target, l.expires,
                   l.policer) for l in agent.leases.values()}


def assert_sound(agent: Agent) -> None:
    """What holds after anything: grants fit, wait bounds hold, every lease is entitled and indexed."""
    assert len(agent._by_flow) == len(agent.leases)
    for name, link in LINKS.items():
        mine = [l for l in agent.leases.values() if l.netif == name]
        assert math.fsum(l.rate for l in mine) <= link.capacity
        if mine:
            assert agent.wait_bound(name) <= min(l.latency_target for l in mine)
    for l in agent.leases.values():
        assert l.netif in LINKS and agent._by_flow[(l.netif, l.flow)] is l
        assert agent.policy.check(l.who, l.service_class, l.rate, l.max_packet) is None


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
            if isinstance(got, Refusal):
                assert snapshot(agent) == before and got.message
                nonsense = (cls not in SERVICE_CLASSES or isinstance(rate, bool) or not 0 < rate <= 1e12
                            or not isinstance(pkt, int) or not 20 <= pkt <= 65535 or not 0 < lat <= 60)
                if nonsense:
                    assert got.reason is LeaseRefusal.BAD_PARAMETERS
                elif netif == "none":
                    assert got.reason is LeaseRefusal.NO_LL_CAPACITY
            else:
                assert isinstance(got, Lease) and got.expires == now + 30.0
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
            assert all(l.expires <= now for l in gone)
            assert all(l.expires > now for l in agent.leases.values())  # expired leases are gone
            assert set(snapshot(agent)) == set(before) - {l.id for l in gone}
        else:
            gone = agent.reload(op[1], now)
            assert all(op[1].check(l.who, l.service_class, l.rate, l.max_packet) for l in gone)
            assert snapshot(agent) == {k: v for k, v in before.items() if k not in {l.id for l in gone}}
        assert_sound(agent)


def test_agent_refusals_each_name_their_reason():
    agent = Agent(Policy([ENTRIES[0], ENTRIES[3]]), ttl=10.0)
    agent.set_link("fast", LINKS["fast"])
    agent.set_link("slow", LINKS["slow"])
    b = Who(1000, "b")

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
    assert refused("slow", 1, "voice", 1e6, 200, 0.005)[0] is LeaseRefusal.LATENCY_UNACHIEVABLE
    first = agent.request(b, "slow", 1, "voice", 4e6, 1500, 0.05, 0.0, owner=b)
    assert isinstance(first, Lease) and first.burst == burst_of(4e6, 1500) == 3028
    assert refused("slow", 2, "voice", 2e6, 200, 0.05)[0] is LeaseRefusal.OVER_SUBSCRIBED
    assert refused("slow", 1, "voice", 1e3, 200, 0.05)[0] is LeaseRefusal.ALREADY_LEASED
    # a lease whose burst would push the wait past the first lease's target is refused too
    tight = agent.request(b, "fast", 1, "voice", 1e6, 200, 0.003, 0.0, owner=b)
    assert isinstance(tight, Lease)
    reason, msg = refused("fast", 2, "voice", 1e8, 1500, 0.05)
    assert reason is LeaseRefusal.OVER_SUBSCRIBED and f"lease {tight.id}'s target" in msg
    assert agent.renew(first.id, Who(1000, "c"), 1.0).reason is LeaseRefusal.UNKNOWN_LEASE  # not its owner
    assert agent.renew(first.id, b, 10.0).reason is LeaseRefusal.UNKNOWN_LEASE  # expired at 10
    assert agent.refused == {"BAD_PARAMETERS": 2, "NO_LL_CAPACITY": 1, "NOT_ENTITLED": 2,
                             "ABOVE_ENTITLEMENT": 1, "LATENCY_UNACHIEVABLE": 1, "OVER_SUBSCRIBED": 2,
                             "ALREADY_LEASED": 1, "UNKNOWN_LEASE": 2}


@pytest.mark.parametrize("kw, msg", [
    ({}, "uid or a program"), ({"uid": -1}, "uid"), ({"uid": True}, "uid"), ({"program": ""}, "program"),
    ({"uid": 1, "classes": frozenset()}, "classes"), ({"uid": 1, "classes": frozenset({"gold"})}, "classes"),
    ({"uid": 1, "max_rate": 0}, "max_rate"), ({"uid": 1, "max_rate": NAN}, "max_rate"),
    ({"uid": 1, "max_packet": 10}, "max_packet"),
])
def test_policy_entries_refuse_nonsense(kw, msg):
    args = {"classes": frozenset({"voice"}), "max_rate": 1e6, "max_packet": 200, **kw}
    with pytest.raises(ValueError, match=msg):
        PolicyEntry(**args)


def test_a_netif_without_ll_slots_has_no_ll_link():
    assert LLLink.of_scheduler(None, 1500) is None
    assert LLLink.of_scheduler(SlotScheduler(1e9, ll_share=0.0), 1500) is None
