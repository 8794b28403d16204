"""Issue 18: the workers of `usnetd --workers 2` share a paced netif's link rate.

A TAP netif with `link_rate` set, served by two workers: UDP flows on ports of both (7000 on
worker 0, 7001 on worker 1) send flat out to a kernel socket in the test's namespace. The bytes
the workers' queues hand to the device (their netif counters, in the status's "workers") over a
window that ends when a byte count is reached: together about the link rate, not twice it (as
when each worker paced at the whole rate); one worker alone still gets most of it.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from tests.domain.test_workers import _workers, serving
from tests.helpers.usnetd import TapDaemon

pytestmark = pytest.mark.privileged

RATE = 8e6  # bits/s: ~660 full frames a second, well within what a loaded machine's Python sends
PAYLOAD = 1400


@pytest.fixture
def paced2(request, sockdir, monkeypatch):
    d = TapDaemon(sockdir)
    ttl = getattr(request, "param", 30.0)  # lease_ttl
    d.config.write_text(f"lease_ttl = {ttl}\n" + d.config.read_text() + f"link_rate = {RATE:g}\n"
                        f'[[policy]]\nuid = {os.getuid()}\nclasses = ["voice", "interactive"]\n'
                        "max_rate = 2e6\nmax_packet = 1200\n")
    yield from serving(d, "tap", monkeypatch)


def _senders(d: TapDaemon, ports: tuple[int, ...], sink: int, stop: threading.Event) -> list[threading.Thread]:
    """A usnet UDP socket on each port sending to the kernel's `sink` as fast as it may (bounded)."""
    from usnet import socket as us

    def send(port: int) -> None:
        with us.socket(us.AF_INET, us.SOCK_DGRAM) as s:
            s.bind(("0.0.0.0", port))
            s.settimeout(5)
            payload = bytes(PAYLOAD)
            for _ in range(200_000):
                if stop.is_set():
                    return
                try:
                    s.sendto(payload, (d.host_ip, sink))
                except (BlockingIOError, TimeoutError):
                    continue
    threads = [threading.Thread(target=send, args=(p,), daemon=True) for p in ports]
    for t in threads:
        t.start()
    return threads


def _sent(d: TapDaemon) -> list[int]:
    """Bytes each worker's queue has handed to the device."""
    return [w["netifs"][0]["netif"]["tx_bytes"] for w in _workers(d.path)]


def _unasked(d: TapDaemon) -> list[int]:
    """Link time, in bytes, each worker's scheduler let pass with nothing waiting (its idle time
    less what it held back while frames waited)."""
    scheds = [w["netifs"][0]["netif"]["txsched"] for w in _workers(d.path)]
    return [s["idle_bytes"] - s["held_bytes"] for s in scheds]


def _measure(d: TapDaemon, ports: tuple[int, ...], want: int) -> tuple[float, list[int], list[int]]:
    """(bits/s of all workers together, bytes per worker, link bytes per worker that passed with
    nothing waiting) over a window that ends once `want` bytes more were sent, after a start of
    ~0.3 s worth (bounded: 20 s)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind((d.host_ip, 0))  # read by nobody: its buffer fills and the kernel drops the rest
        stop = threading.Event()
        threads = _senders(d, ports, sink.getsockname()[1], stop)
        try:
            deadline = time.monotonic() + 20
            base = _sent(d)
            while sum(_sent(d)) - sum(base) < RATE / 8 * 0.3 and time.monotonic() < deadline:
                time.sleep(0.05)  # polling the counters, not synchronising
            unasked0 = _unasked(d)
            t0, first = time.monotonic(), _sent(d)
            while time.monotonic() < deadline:
                now = _sent(d)
                if sum(now) - sum(first) >= want:
                    break
                time.sleep(0.02)
            t1 = time.monotonic()
            unasked = [b - a for a, b in zip(unasked0, _unasked(d))]
        finally:
            stop.set()
            for t in threads:
                t.join(10)
    got = [b - a for a, b in zip(first, now)]
    assert sum(got) >= want, ("the senders stalled", got)
    return sum(got) * 8 / (t1 - t0), got, unasked


def test_two_workers_sending_flat_out_share_the_link_rate(paced2):
    rate, per, _unasked_bytes = _measure(paced2, (7000, 7001), int(RATE / 8 * 1.5))
    assert rate < 1.4 * RATE, (rate, per)  # each pacing at the whole rate made it ~2x
    assert rate > 0.5 * RATE, (rate, per)
    assert min(per) > 0.2 * sum(per), per  # both had a part of it (fair: about half each)
    for w in _workers(paced2.path):
        sched = w["netifs"][0]["netif"]["txsched"]
        assert sched["workers"] == 2 and sched["peer_bytes"] > 0, sched


def test_one_worker_alone_uses_most_of_the_link_rate(paced2):
    """Worker 1 alone is given most of the link, not a static half: its rate over the link time
    it had frames waiting. A sender slower than the link (a loaded machine's Python thread once
    sent 5.4 Mbit/s of the 8) leaves the rest with nothing waiting, which no pacer withheld; time
    held back while frames waited counts as given (a static half's would). A sender that offered
    less than half the link cannot tell a split from none: that window fails as such."""
    rate, per, unasked = _measure(paced2, (7001,), int(RATE / 8 * 1.5))
    assert rate > 0.5 * RATE, ("the sender offered less than a static half would give", rate, per)
    asked = sum(per) * 8 / rate - unasked[1] * 8 / RATE  # seconds of the window with frames waiting
    given = sum(per) * 8 / asked if asked > 0 else 0.0
    assert given > 0.7 * RATE, (rate, given, unasked, per)  # a static split would give it half
    assert rate < 1.4 * RATE, (rate, per)


def _txsched(d: TapDaemon, k: int) -> dict:
    return _workers(d.path)[k]["netifs"][0]["netif"]["txsched"]


def test_a_lease_on_a_flow_of_worker_1_is_granted_by_usnetd_and_applied_there(paced2):
    """usnetd's agent admits it against the netif's LL capacity over both workers; worker 1 serves
    the flow in the LL class and posts LEASE_GRANTED and LEASE_REVOKED with usnetd's lease id."""
    from tests.domain.test_lowlat import wait_event
    from usnet.abi.events import EventType, RevokeReason
    from usnet.abi.protocol import LeaseRefusal
    from usnet.client import Client
    from usnet.client.lease import LeaseRefusedError

    with Client.connect(paced2.path) as c, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind((paced2.host_ip, 0))
        sink.settimeout(5)
        s1, s0 = c.udp_socket("usnet0", 7001), c.udp_socket("usnet0", 7000)  # worker 1's, worker 0's
        lease = c.request_lease(s1.channel, service_class="voice", rate=1e6, max_packet=1200, latency_target=0.05)
        assert (lease.channel, lease.rate, lease.service_class) == (s1.channel.id, 1e6, "voice")
        (ev,) = wait_event(s1.channel, EventType.LEASE_GRANTED)
        assert (ev.code, ev.value, ev.aux) == (0, lease.id, 1_000_000)
        assert len(_txsched(paced2, 1)["ll_flows"]) == 1 and _txsched(paced2, 0)["ll_flows"] == []
        assert [g["channel"] for g in c.status()["lowlat"]["leases"]] == [s1.channel.id]
        # its datagrams go out in worker 1's LL class
        for i in range(5):
            s1.sendto(b"ll %d" % i, (paced2.host_ip, sink.getsockname()[1]))
        assert sorted(sink.recvfrom(2048)[0] for _ in range(5)) == [b"ll %d" % i for i in range(5)]
        assert _txsched(paced2, 1)["frames"]["ll"] >= 5
        # one agent: worker 0's flow cannot take what worker 1's lease holds of the netif's LL capacity
        with pytest.raises(LeaseRefusedError) as e:
            c.request_lease(s0.channel, rate=1e6, max_packet=1200, latency_target=0.05)
        assert e.value.reason == LeaseRefusal.OVER_SUBSCRIBED
        first = lease.expires
        lease.renew()
        assert lease.expires >= first
        lease.release()
        (ev,) = wait_event(s1.channel, EventType.LEASE_REVOKED)
        assert (ev.code, ev.value) == (RevokeReason.RELEASED, lease.id)
        assert _txsched(paced2, 1)["ll_flows"] == []
        # and again, then the channel closes: its lease ends with it
        again = c.request_lease(s1.channel, rate=1e6, max_packet=1200, latency_target=0.05)
        assert again.id != lease.id and len(_txsched(paced2, 1)["ll_flows"]) == 1
        s1.close()
        assert c.status()["lowlat"]["leases"] == []
        assert c.request_lease(s0.channel, rate=1e6, max_packet=1200, latency_target=0.05).rate == 1e6
        s0.close()


def test_a_client_cannot_send_usnetd_s_lease_messages(paced2):
    """ApplyLease and EndLease are usnetd's to its workers: from a client, on a channel of either
    worker, they are refused and nothing changes class."""
    from usnet.abi import protocol as P
    from usnet.client import Client

    with Client.connect(paced2.path) as c:
        s1, s0 = c.udp_socket("usnet0", 7001), c.udp_socket("usnet0", 7000)
        for s in (s0, s1):
            with pytest.raises(OSError):
                c._call(P.ApplyLease(s.channel.id, 1, "voice", 1e6, 4000, 1200))
            with pytest.raises(OSError):
                c._call(P.EndLease(s.channel.id, 1, 1))
        assert _txsched(paced2, 0)["ll_flows"] == [] and _txsched(paced2, 1)["ll_flows"] == []
        s0.close()
        s1.close()


@pytest.mark.parametrize("paced2", [1.0], indirect=True)
def test_a_worker_1_lease_left_to_expire_ends_there_with_expired(paced2):
    """usnetd owns the expiry: its loop ends the lease and tells worker 1, which moves the flow back
    and posts LEASE_REVOKED(EXPIRED) with usnetd's id."""
    from tests.domain.test_lowlat import wait_event
    from usnet.abi.events import EventType, RevokeReason
    from usnet.client import Client

    with Client.connect(paced2.path) as c:
        s1 = c.udp_socket("usnet0", 7001)
        lease = c.request_lease(s1.channel, rate=1e6, max_packet=1200, latency_target=0.05)
        assert lease.ttl == 1.0 and len(_txsched(paced2, 1)["ll_flows"]) == 1
        ev = wait_event(s1.channel, EventType.LEASE_REVOKED, timeout=10)[-1]
        assert (ev.code, ev.value) == (RevokeReason.EXPIRED, lease.id)
        assert _txsched(paced2, 1)["ll_flows"] == [] and c.status()["lowlat"]["leases"] == []
        s1.close()
