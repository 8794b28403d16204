"""The low-latency path (issue 5 item 3): zero-copy transmit of a granted flow, judged by a header copy.

* `check_ll_header` gives, for any bytes, the verdict the general path's
  per-packet check gives (hypothesis, against the real `_tx_one`);
* a granted flow's datagrams leave zero-copy, intact and in order, ahead of
  saturating general traffic; what the class cannot send at once is queued
  as a copy and still goes, in order;
* a granted channel that sends a header not matching its grant (spoofed
  source, wrong protocol, another destination, a packet over the lease's
  largest) has those packets dropped, counted and reported on its event
  ring, and a general flow beside it loses nothing;
* over a real TAP device the frames reach a kernel UDP socket (writev of
  the checked header copy and the payload from the client's buffer).
"""

from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.domain.test_lowlat import POLICY, Net, recv_all
from tests.helpers.util import FakeClock, close_all, send_raw, udp_segment, wait_until
from usnet.abi.events import EventType, TxDropReason
from usnet.client import Client
from usnet.domain.loop import LL_BITE, Domain
from usnet.domain.switch.llcheck import GENERAL_PATH, check_ll_header
from usnet.drivers import MemWire
from usnet.proto.wire.ipv4 import build_ipv4_header, ip_bytes

A, B = "10.9.0.1", "10.9.0.2"


def udp_packet(payload: bytes, src: str = A, sport: int = 5000, dst: str = B, dport: int = 6000,
               proto: int = 17) -> bytes:
    seg = udp_segment(sport, dport, payload, ip_bytes(src), ip_bytes(dst))
    return build_ipv4_header(ip_bytes(src), ip_bytes(dst), proto, len(seg)) + seg


# -- the header check against the general path ------------------------------------------------------


@pytest.fixture(scope="module")
def switch_and_flows():
    """A domain's switch with a listening and a connected UDP flow (their verdicts, not their traffic)."""
    net = Net(b=False)
    try:
        s1 = net.c.udp_socket("a", 5000)
        s2 = net.c.udp_socket("a", 5002, remote=(B, 6000))
        sw = net.d.switches["a"]
        flows = [net.d.channels[s.channel.id].flow for s in (s1, s2)]
        yield net, sw, flows
    finally:
        close_all(net.c, net.d, net.wire)


def general_verdict(net: Net, sw, flow, p: bytes) -> int | None:
    """None if the general path accepts `p`, else its drop reason (found in the switch's counters)."""
    with net.d.lock:  # the domain's loop runs beside the test
        before = dict(sw.drops)
        took = sw._tx_one(flow, p, sw.clock())
        after = dict(sw.drops)
    if took:
        return None
    (reason,) = [k for k in after if after[k] != before.get(k, 0)]
    return TxDropReason[reason[3:].upper()]


@st.composite
def mutated_packets(draw) -> bytes:
    p = bytearray(udp_packet(draw(st.binary(max_size=64)), sport=draw(st.sampled_from([5000, 5002, 5001])),
                             dst=draw(st.sampled_from([B, "10.9.0.3"])), dport=draw(st.sampled_from([6000, 6001]))))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, min(len(p), 44) - 1))
        p[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(p)))
    return bytes(p[:cut] if draw(st.booleans()) else p)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutated_packets(), st.integers(0, 1))
def test_the_ll_check_gives_the_general_path_s_verdict(switch_and_flows, p, which):
    net, sw, flows = switch_and_flows
    flow = flows[which]
    got = check_ll_header(p[:80], len(p), proto=flow.proto, lport=flow.lport, raddr=flow.raddr,
                          rport=flow.rport, local=sw.netif.ip, max_packet=sw.netif.mtu)
    if got == GENERAL_PATH:
        return  # IP options: the general path judges those itself
    want = general_verdict(net, sw, flow, p)
    if type(got) is tuple:
        assert want is None, (p.hex(), want)
        assert got[1] == p[16:20] and got[0] == 28
    else:
        assert want == got, (p.hex(), got, want)


# -- a running domain: the LL path carries, checks and reports ----------------------------------------


def granted(net: Net, port: int = 5000, rate: float = 150e6, max_packet: int = 1200):
    s = net.c.udp_socket("a", port)
    lease = net.c.request_lease(s.channel, rate=rate, max_packet=max_packet, latency_target=0.05)
    return s, lease


def test_a_granted_flow_leaves_zero_copy_in_order_and_intact():
    net = Net(policy=POLICY)
    try:
        sb = net.c.udp_socket("b", 6000)
        ll, _ = granted(net)
        ll.sendto(b"resolve", (B, 6000))
        assert recv_all(sb, 1) == [b"resolve"]
        sw = net.d.switches["a"]
        before = sw.counts["tx_ll_zero_copy"] + sw.counts["tx_ll_queued"]
        payloads = [i.to_bytes(4, "big") + bytes([i % 251]) * 300 for i in range(200)]
        sent = 0
        for i in range(0, 200, 10):  # batches well within the lease's burst
            sent += ll.send_many(payloads[i : i + 10], (B, 6000))
            assert recv_all(sb, 10) == payloads[i : i + 10]
        assert sent == 200
        after = sw.counts["tx_ll_zero_copy"] + sw.counts["tx_ll_queued"]
        assert after - before == 200  # every one took the LL path
        assert sw.counts["tx_ll_zero_copy"] > 0  # and most left from the client's buffer
        assert net.txsched()["frames"]["ll"] >= 201
    finally:
        close_all(net.c, net.d, net.wire)


@pytest.mark.parametrize("bad, reason", [
    (dict(src="10.9.0.7"), TxDropReason.SPOOFED_SOURCE),
    (dict(sport=5999), TxDropReason.SPOOFED_SOURCE),
    (dict(proto=6), TxDropReason.WRONG_PROTOCOL),
    ("big", TxDropReason.TOO_BIG),
    ("short", TxDropReason.MALFORMED),
], ids=["spoofed-address", "spoofed-port", "wrong-protocol", "over-the-lease", "bad-length"])
def test_a_header_not_matching_the_grant_is_dropped_counted_reported_and_general_is_unaffected(bad, reason):
    net = Net(policy=POLICY)
    try:
        sb, sb2 = net.c.udp_socket("b", 6000), net.c.udp_socket("b", 6001)
        gen = net.c.udp_socket("a", 5001)
        ll, _lease = granted(net, max_packet=600)
        ll.sendto(b"resolve", (B, 6000))
        assert recv_all(sb, 1) == [b"resolve"]
        if bad == "big":
            evil = udp_packet(bytes(700))  # 728 bytes: within the MTU, over the lease's 600
        elif bad == "short":
            evil = udp_packet(b"x" * 40)[:-10]  # the IP total length says 10 bytes more than were written
        else:
            evil = udp_packet(b"evil", **bad)
        good = udp_packet(b"good")
        send_raw(ll.channel, [evil, good, evil])
        gen.send_many([b"g%d" % i for i in range(50)], (B, 6001))
        assert recv_all(sb, 1) == [b"good"]  # the honest packet between them went
        assert recv_all(sb2, 50) == [b"g%d" % i for i in range(50)]
        sw = net.d.switches["a"]
        wait_until(lambda: sw.drops["tx_" + reason.name.lower()] == 2, 5, "both bad packets counted")
        drops = [e for e in ll.channel.events() if e.type == EventType.TX_DROPPED]
        assert [(e.code, e.value) for e in drops] == [(reason, len(evil))] * 2
        assert recv_all(sb, 1, timeout=0.2) == []  # and nothing else came out
    finally:
        close_all(net.c, net.d, net.wire)


def test_what_the_ll_class_cannot_send_at_once_is_queued_and_keeps_its_order():
    """On a netif whose clock stands still, the class may go one slot ahead and no further:
    the rest of a burst is copied into its queue, and goes, in order, once time moves."""
    clock = FakeClock()
    net = Net(policy=POLICY)
    wire = MemWire()
    net.d.add_netif("c", wire.a, "10.7.0.1/24", link_rate=10e6, ll_share=0.2, clock=clock)
    net.d.add_netif("d", wire.b, "10.7.0.2/24")
    try:
        sink = net.c.udp_socket("d", 6300)
        ll = net.c.udp_socket("c", 5300)
        sw = net.d.switches["c"]
        net.d.set_flow_class("c", net.d.channels[ll.channel.id].flow.id, "ll")
        ll.sendto(b"resolve", ("10.7.0.2", 6300))
        clock.now += 1.0  # let the ARP exchange and the first datagram through
        net.d._wake()
        assert recv_all(sink, 1) == [b"resolve"]
        payloads = [i.to_bytes(4, "big") + bytes(1100) for i in range(20)]
        assert ll.send_many(payloads, ("10.7.0.2", 6300)) == 20
        wait_until(lambda: sw.counts["tx_ll_zero_copy"] + sw.counts["tx_ll_queued"] == 20, 5,
                   "the switch to take the burst")
        assert sw.counts["tx_ll_zero_copy"] <= 2 and sw.counts["tx_ll_queued"] >= 18  # one slot ahead
        got: list[bytes] = []
        for _ in range(400):  # time moves: 5 ms of link time a step, as long as it takes
            clock.now += 0.005
            net.d._wake()
            got += recv_all(sink, 20 - len(got), timeout=0.02)
            if len(got) == 20:
                break
        assert got == payloads
    finally:
        close_all(net.c, net.d, net.wire)


# -- a real device --------------------------------------------------------------------------------------


@pytest.mark.privileged
def test_over_a_tap_the_ll_path_writes_header_copy_and_payload_to_a_kernel_socket(tap_domain_paced):
    dom, ifname, our_ip, host_ip = tap_domain_paced
    client = Client.local(dom)
    kernel = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    kernel.bind((host_ip, 0))
    kernel.settimeout(5)
    kport = kernel.getsockname()[1]
    try:
        s = client.udp_socket(ifname, 0)
        sw = dom.switches[ifname]
        flow = dom.channels[s.channel.id].flow
        dom.set_flow_class(ifname, flow.id, "ll")
        payloads = [b"%04d" % i + bytes([i]) * 500 for i in range(50)]
        got = []
        for p in payloads:  # one at a time: a flow within its share goes at once, zero-copy
            s.sendto(p, (host_ip, kport))
            got.append(kernel.recvfrom(2048))
        assert [d for d, _ in got] == payloads  # the kernel checked the UDP checksum of each
        assert {a for _, a in got} == {(our_ip, s.getsockname()[1])}
        assert sw.counts["tx_ll_zero_copy"] >= 40  # the first may wait for ARP
    finally:
        kernel.close()


# -- how long an LL packet waits in the domain's loop ------------------------------------------------------


def test_an_ll_datagram_waits_for_one_bite_of_a_general_backlog_and_is_received_at_once():
    """The loop takes a general flow's backlog in bites (`LL_BITE`) while LL flows are served, with
    the LL class after each bite; an LL frame for a netif of the same domain is taken off the wire
    then and there. Driven by hand: the LL sender writes after the first bite."""
    d = Domain()
    wire = MemWire(queue_limit=10_000)
    d.add_netif("a", wire.a, f"{A}/24", link_rate=1e9, ll_share=0.2)
    d.add_netif("b", wire.b, f"{B}/24")
    c = Client.local(d)
    try:
        sink, gsink = c.udp_socket("b", 6000), c.udp_socket("b", 6001, ring_size=1024, packets=2048)
        ll = c.udp_socket("a", 5000)
        gen = c.udp_socket("a", 5001, ring_size=1024, packets=2048)
        sw = d.switches["a"]
        gflow = d.channels[gen.channel.id].flow
        d.set_flow_class("a", d.channels[ll.channel.id].flow.id, "ll")
        ll.sendto(b"resolve", (B, 6000))
        for _ in range(20):  # ARP, and the first datagram
            d.serve_once(0)
        assert sink.recv_many(8, timeout=0) == [(b"resolve", (A, 5000))]
        backlog = [i.to_bytes(4, "big") + bytes(600) for i in range(300)]
        assert gen.send_many(backlog, (B, 6001)) == 300
        taken_when_ll_left: list[int] = []
        service_tx, service_ll = sw.service_tx, sw._service_ll

        def first_bite_then_ll(flow, *args, **kw):
            n = service_tx(flow, *args, **kw)
            if flow is gflow and not taken_when_ll_left:
                ll.sendto(b"now", (B, 6000))
            return n

        def ll_leaves(flow, max_packets):
            taken_when_ll_left.append(gflow.stats["tx_packets"])
            return service_ll(flow, max_packets)

        sw.service_tx, sw._service_ll = first_bite_then_ll, ll_leaves
        d.serve_once(0)  # one round: gen's bell (it sent while parked) has the loop serve it
        assert taken_when_ll_left == [LL_BITE]  # it waited for one bite, not the whole batch
        assert sink.recv_many(8, timeout=0) == [(b"now", (A, 5000))]  # and was received in that round
        got: list[bytes] = []
        for _ in range(200):
            d.serve_once(0)
            try:
                got += [p for p, _ in gsink.recv_many(512, timeout=0)]
            except BlockingIOError:
                pass
            if len(got) == 300:
                break
        assert got == backlog  # the bites lost and reordered nothing
    finally:
        d.stop()
