"""A flow's packet to a known neighbour is framed from what the switch remembers (issues 16, 18).

`HostDuties._link` keeps, per unicast destination (IPv4 or IPv6), the Ethernet header its packets went out
with, so the transmit path skips the route, the neighbour's lookup and the framing's calls. It
must stand only while what it was made from does: the neighbour's ARP entry, the very one. Here a
neighbour changes its MAC, a neighbour's entry expires, a gateway changes its MAC, and the
remembered destinations stay bounded; each packet is read off the wire (a MemWire's far end) and
decoded by scapy.
"""

from __future__ import annotations

import ipaddress
import time

import pytest
from scapy.all import ARP, IP, UDP, Ether, IPv6, raw

from tests.helpers.util import FakeClock, send_raw
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.domain.switch import host
from usnet.drivers import MemWire, block

A_IP, B_IP, GW_IP, FAR_IP = "10.9.0.1", "10.9.0.2", "10.9.0.254", "192.0.2.7"
A6, B6 = "fd00:9::1", "fd00:9::2"
MAC1, MAC2 = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"


def _ip(s: str) -> bytes:
    return bytes(int(x) for x in s.split("."))


class _Side:
    """A domain with netif "a" (gateway 10.9.0.254) on a MemWire, read at its b end, and an
    unconnected UDP flow on port 5000."""

    def __init__(self) -> None:
        self.d = Domain()
        self.w = MemWire()
        self.clock = FakeClock(time.monotonic())  # the netif's: its neighbours age by it
        self.sw = self.d.add_netif("a", self.w.a, f"{A_IP}/24", gateway=GW_IP, clock=self.clock,
                                   address6=f"{A6}/64")
        c = Client.local(self.d)
        self.ch = c.open_flow("a", 17, 5000)[0]
        self.ch6 = c.open_flow("a", 17, 5000, family=6)[0]

    def send(self, dst: str, n: int = 1) -> list[Ether]:
        """`n` datagrams to `dst`, one batch; the frames that left, decoded."""
        send_raw(self.ch, [raw(IP(src=A_IP, dst=dst, id=i) / UDP(sport=5000, dport=6000) / b"x")
                           for i in range(n)])
        for _ in range(3):
            self.d.serve_once(0)
        return [Ether(bytes(f)) for f in block.expand(self.w.b.recv_batch(64))]

    def send6(self, dst: str) -> list[Ether]:
        """A datagram to `dst` on the IPv6 flow; the frames that left, decoded."""
        send_raw(self.ch6, [raw(IPv6(src=A6, dst=dst) / UDP(sport=5000, dport=6000) / b"x")])
        for _ in range(3):
            self.d.serve_once(0)
        return [Ether(bytes(f)) for f in block.expand(self.w.b.recv_batch(64))]

    def answer(self, ip: str, mac: bytes) -> None:
        """An ARP reply from `ip` at `mac`, on the wire."""
        us = self.sw.netif.mac.hex(":")
        self.w.b.send_batch([raw(Ether(src=mac.hex(":"), dst=us) / ARP(
            op=2, hwsrc=mac.hex(":"), psrc=ip, hwdst=us, pdst=A_IP))])

    def close(self) -> None:
        self.d.stop()
        self.w.close()


@pytest.fixture
def side():
    s = _Side()
    yield s
    s.close()


def test_a_neighbour_that_changes_its_mac_gets_the_next_packet_at_the_new_one(side):
    now = side.clock()
    side.sw.arp.learn(_ip(B_IP), MAC1, now)
    first = side.send(B_IP, 2)
    assert [f.dst for f in first] == [MAC1.hex(":")] * 2 and all(UDP in f for f in first)
    assert all(f.src == side.sw.netif.mac.hex(":") and f.type == 0x0800 for f in first)
    side.sw.arp.learn(_ip(B_IP), MAC2, now)  # it answered again from another MAC
    again = side.send(B_IP)
    assert [f.dst for f in again] == [MAC2.hex(":")] and UDP in again[0]


def test_an_expired_neighbour_is_asked_for_again_not_framed_from_memory(side):
    side.sw.arp.learn(_ip(B_IP), MAC1, side.clock())
    assert [f.dst for f in side.send(B_IP)] == [MAC1.hex(":")]
    side.clock.now += side.sw.arp.ttl + 1  # the same entry, now past its time
    frames = side.send(B_IP)
    # the datagram waits for the neighbour: what leaves is the question, broadcast
    assert [f.dst for f in frames] == ["ff:ff:ff:ff:ff:ff"]
    assert ARP in frames[0] and frames[0][ARP].op == 1 and frames[0][ARP].pdst == B_IP
    side.answer(B_IP, MAC2)
    # the datagram held for it, then the next one, both at the MAC it answered with
    frames += side.send(B_IP)
    got = [f for f in frames if UDP in f]
    assert [f.dst for f in got] == [MAC2.hex(":")] * 2


def test_a_destination_beyond_the_gateway_follows_the_gateways_mac(side):
    now = side.clock()
    side.sw.arp.learn(_ip(GW_IP), MAC1, now)
    assert [(f.dst, f[IP].dst) for f in side.send(FAR_IP)] == [(MAC1.hex(":"), FAR_IP)]
    side.sw.arp.learn(_ip(GW_IP), MAC2, now)
    assert [(f.dst, f[IP].dst) for f in side.send(FAR_IP)] == [(MAC2.hex(":"), FAR_IP)]


def test_the_remembered_destinations_stay_bounded(side, monkeypatch):
    monkeypatch.setattr(host, "_LINKS_MAX", 4)
    side.sw.arp.learn(_ip(GW_IP), MAC1, side.clock())
    for i in range(10):
        frames = side.send(f"192.0.2.{i + 1}")
        assert [(f.dst, f[IP].dst) for f in frames] == [(MAC1.hex(":"), f"192.0.2.{i + 1}")]
        assert len(side.sw._links) <= 4


def test_a_group_is_not_framed_from_the_arp_table(side):
    """Even with an ARP entry claiming it (made up here), and the gateway known, a group's datagram
    goes to its group MAC, as `_route` frames it."""
    side.sw.arp.learn(_ip("239.1.2.3"), MAC1, side.clock())
    side.sw.arp.learn(_ip(GW_IP), MAC2, side.clock())  # and the gateway known
    for _ in range(2):  # the second time too: nothing remembered for them
        assert [f.dst for f in side.send("239.1.2.3")] == ["01:00:5e:01:02:03"]
    assert side.sw._links == {}


def test_an_ipv6_neighbour_that_changes_its_mac_gets_the_next_packet_at_the_new_one(side):
    b6 = ipaddress.IPv6Address(B6).packed
    side.sw.nd.learn(b6, MAC1, side.clock())
    first = side.send6(B6)
    assert [(f.dst, f.type) for f in first] == [(MAC1.hex(":"), 0x86DD)] and UDP in first[0]
    side.sw.nd.learn(b6, MAC2, side.clock())
    again = side.send6(B6)
    assert [f.dst for f in again] == [MAC2.hex(":")] and UDP in again[0]
    side.clock.now += side.sw.nd.ttl + 1  # past its time: asked for (a solicitation), not framed
    asked = side.send6(B6)
    assert asked and all(UDP not in f for f in asked), asked
