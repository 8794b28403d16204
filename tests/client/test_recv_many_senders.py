"""A receive batch from many senders names each sender once a run (issue 18: UDP with 1,000 flows).

With 1,000 flows sending to one socket, each `recv_many` batch holds
datagrams from many senders, a flow's `send_many` arriving as a run of
consecutive datagrams. The address tuple is made once a run, so the work per
datagram is the same as from one sender, whatever the number of senders.
Counted (the address lookups made), with the right address checked for every
datagram. No timing.
"""

from __future__ import annotations

import pytest

from usnet.client.datagram import DatagramSocket
from usnet.client.session import Client
from usnet.domain.loop import Domain
from usnet.drivers.memwire import MemWire

A, B = "10.93.0.1", "10.93.0.2"
BATCH = 32


def _run(flows: int, monkeypatch) -> tuple[int, int]:
    """(datagrams received, address lookups made) of every flow sending one batch to one socket."""
    d = Domain()
    w = MemWire()
    d.add_netif("a", w.a, f"{A}/24")
    d.add_netif("b", w.b, f"{B}/24")
    c = Client.local(d)
    try:
        rx = c.udp_socket("b", 6000, ring_size=8192, packets=16384)
        socks = [c.udp_socket("a", 0, ring_size=256, packets=512) for _ in range(flows)]
        ports = {s.getsockname()[1]: i for i, s in enumerate(socks)}
        for s in socks:  # ARP, each flow's first lending: not counted
            s.sendto(b"w", (B, 6000))
        warm = 0
        for _ in range(200):
            d.serve_once(0)
            try:
                warm += len(rx.recv_many(8192, timeout=0))
            except BlockingIOError:
                pass
            if warm >= flows:
                break
        assert warm == flows
        lookups = 0
        orig = DatagramSocket._name

        def name(self, ip):
            nonlocal lookups
            lookups += 1
            return orig(self, ip)

        monkeypatch.setattr(DatagramSocket, "_name", name)
        for i, s in enumerate(socks):
            assert s.send_many([i.to_bytes(2, "big") * 16] * BATCH, (B, 6000)) == BATCH
        got = 0
        for _ in range(200):
            d.serve_once(0)
            try:
                for payload, (host, port) in rx.recv_many(8192, timeout=0):
                    assert host == A
                    assert payload == ports[port].to_bytes(2, "big") * 16  # each datagram names its own sender
                    got += 1
            except BlockingIOError:
                pass
            if got >= flows * BATCH:
                break
        return got, lookups
    finally:  # the client too: its flows' descriptors, else open till a collection finds them
        c.close()
        d.stop()


@pytest.mark.parametrize("flows", [10, 100])
def test_a_batch_from_many_senders_makes_one_address_a_run_not_one_a_datagram(flows, monkeypatch):
    got, lookups = _run(flows, monkeypatch)
    assert got == flows * BATCH
    assert lookups <= flows  # one a sender's run: 1/32 a datagram at 10 flows as at 100 (it was 1 a datagram)
