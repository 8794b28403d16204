"""The domain loop's cost per packet does not grow with the number of flows (issue 18, item 1).

An embedded domain, two netifs joined by a memwire, N idle UDP flows and one
busy pair. The loop polls for transmits only the flows that sent lately; the
rest sleep with NEED_WAKEUP set and ring when they send. The test counts the
flows the loop looked at (`Domain.polls`) per datagram, not time, at N = 10
and N = 500 (each flow holds descriptors at both ends: one process is both here).
"""

from __future__ import annotations

from tests.helpers.util import close_all
from usnet.client.session import Client
from usnet.domain.loop import Domain
from usnet.drivers.memwire import MemWire

A, B = "10.90.0.1", "10.90.0.2"


def _polls_per_datagram(idle_flows: int, count: int = 50) -> tuple[float, int]:
    d = Domain()
    wire = MemWire()
    d.add_netif("a", wire.a, f"{A}/24")
    d.add_netif("b", wire.b, f"{B}/24")
    c = Client.local(d)
    try:
        idle = [c.udp_socket("b", 7000 + i, ring_size=16, packets=16) for i in range(idle_flows)]
        tx, rx = c.udp_socket("a", 5000), c.udp_socket("b", 6000)
        tx.sendto(b"arp", (B, 6000))
        for _ in range(50):
            d.serve_once(0)
        assert rx.recv_many(8, timeout=0) == [(b"arp", (A, 5000))]
        for _ in range(5):  # every idle flow falls idle and is parked
            d.serve_once(0)
        d.polls = 0
        got = []
        for i in range(count):
            tx.sendto(i.to_bytes(4, "big"), (B, 6000))
            for _ in range(3):
                d.serve_once(0)
            try:
                got += [p for p, _ in rx.recv_many(8, timeout=0)]
            except BlockingIOError:
                pass
        assert got == [i.to_bytes(4, "big") for i in range(count)]
        for s in idle[:3]:  # a parked flow that sends is served: it rang its bell
            s.sendto(b"late", (A, 5000))
        late = []
        for _ in range(10):
            d.serve_once(0)
            try:
                late += tx.recv_many(8, timeout=0)
            except BlockingIOError:
                pass
        assert [p for p, _ in late] == [b"late"] * 3
        return d.polls / count, len(idle)
    finally:
        close_all(c, d, wire)


def test_flows_polled_per_datagram_do_not_grow_with_idle_flows():
    small, _ = _polls_per_datagram(10)
    large, n = _polls_per_datagram(500)
    assert n == 500
    assert large == small, f"flows polled per datagram: {small} with 10 idle flows, {large} with 500"
    assert small <= 12
