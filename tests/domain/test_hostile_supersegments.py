"""Hostile super-segments among a few packets, on a TAP that segments (docs/architecture.md, "Trust boundary").

A few packets with a super-segment among them come off the TX ring as rows, each copied once
into the rows the device writes from (`FlowPort.pull_any`'s `widest`, issue 18 bulk), where
`pull` would give them. From a hostile client (a gso size of 0, 1, under TCP's least MSS,
past the MTU's room, 65535; a UMD length past its buffer; a TCP header too short) they must
be refused exactly as the batch path refuses them: the same drops with the same reasons, the
same frames to the kernel, the channel kept. Two domains alike, each on a TAP of its own
(the kernel the peer), one with the few path, one with `pull`; the kernel's view of what
each TAP wrote is read with an AF_PACKET socket on the host side of each.
"""

from __future__ import annotations

import select
import socket

import pytest
from pyroute2 import IPRoute
from scapy.all import IP, TCP, raw

from tests.helpers.util import fresh_subnet, tap_name
from usnet.abi.events import EventType
from usnet.abi.umd import UMD_WORDS
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.domain.switch import tx
from usnet.drivers.hostnet import delete_links, link_exists
from usnet.drivers.tap import TapDriver

PORT, RPORT = 5100, 7100
ETH_P_IP = 0x0800


class _TapSide:
    """A domain (its loop turned by hand) on a TAP with offload; the host's side 10.x.0.1, ours
    .2, the host's MAC known; one connected TCP flow; an AF_PACKET socket on the host side."""

    def __init__(self) -> None:
        x = fresh_subnet()
        self.ifname = tap_name()
        self.drv = TapDriver(self.ifname, offload=True)
        self.d = Domain()
        with IPRoute() as ipr:
            (idx,) = ipr.link_lookup(ifname=self.ifname)
            ipr.link("set", index=idx, state="up")
            ipr.addr("add", index=idx, address=f"10.{x}.0.1", prefixlen=24)
            mac = bytes.fromhex(ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS").replace(":", ""))
        self.us, self.host = f"10.{x}.0.2", f"10.{x}.0.1"
        self.sw = self.d.add_netif(self.ifname, self.drv, f"{self.us}/24")
        self.sw.arp.learn(socket.inet_aton(self.host), mac, self.sw.clock())
        self.c = Client.local(self.d)
        self.ch, self.info = self.c.open_flow(self.ifname, 6, PORT, (self.host, RPORT))
        self.sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        self.sniff.bind((self.ifname, 0))
        self.sniff.setblocking(False)

    def close(self) -> None:
        self.sniff.close()
        self.c.close()
        self.d.stop()
        if link_exists(self.ifname):
            self.drv.close()
            delete_links([self.ifname])

    def run(self, items: list[tuple[bytes, int, int]], scalar_max: int) -> tuple:
        """Send (data, gso, UMD length past the buffer by) as one batch through the path that
        `scalar_max` picks; what was dropped (with reasons), reported, and what the kernel got."""
        before = dict(self.sw.drops)
        pkts: list[int] = []
        while len(pkts) < len(items):
            pkts += self.ch.alloc(len(items) - len(pkts))
        for p, (data, gso, over) in zip(pkts, items):
            self.ch.write(p, data, gso)
            self.ch.set_length(p, len(data))
            if over:
                self.ch.umd[p * UMD_WORDS] = self.ch.stride + over
        saved = tx._SCALAR_MAX
        tx._SCALAR_MAX = scalar_max
        try:
            assert self.ch.send(pkts) == len(pkts)
            for _ in range(4):
                self.d.serve_once(0)
        finally:
            tx._SCALAR_MAX = saved
        seen: list[tuple[int, int, int]] = []
        last = IP(items[-1][0])[TCP].seq  # the batch's last packet, a good one: the kernel's view ends there
        for _ in range(64):  # bounded: at most a few frames a batch, 2 s for each
            if not select.select([self.sniff], [], [], 2.0)[0]:
                break
            ip = IP(self.sniff.recv(1 << 17)[14:])
            if TCP in ip and ip[TCP].sport == PORT:
                seen.append((ip.len, ip[TCP].seq, ip[TCP].dataofs))
                if ip[TCP].seq == last:
                    break
        drops = {k: v - before.get(k, 0) for k, v in self.sw.drops.items()
                 if k.startswith("tx_") and v != before.get(k, 0)}  # (the kernel's own frames: not ours)
        events = [(e.type, e.code, e.value) for e in self.ch.events() if e.type == EventType.TX_DROPPED]
        return drops, events, seen


def _seg(side: _TapSide, seq: int, size: int, off: int = 5) -> bytes:
    p = bytearray(raw(IP(src=side.us, dst=side.host, id=seq & 0xFFFF)
                      / TCP(sport=PORT, dport=RPORT, seq=seq, ack=1, flags="A") / bytes(size)))
    if off != 5:
        p[32] = off << 4 | p[32] & 0xF  # the TCP data offset, from the 20-byte IP header on
    return bytes(p)


# (name, super-segment's payload, gso, UMD length past its buffer by, TCP data offset)
HOSTILE = [
    ("gso_0_too_big", 20000, 0, 0, 5),
    ("gso_1", 20000, 1, 0, 5),
    ("gso_under_tcp_min_mss", 20000, 87, 0, 5),
    ("gso_past_the_mtu_room", 20000, 1461, 0, 5),
    ("gso_65535", 20000, 65535, 0, 5),
    ("length_past_the_buffer", 20000, 1448, 5000, 5),
    ("tcp_header_too_short", 20000, 1448, 0, 4),
    ("good", 20000, 1448, 0, 5),
]


@pytest.mark.privileged
def test_hostile_super_segments_among_a_few_are_refused_as_the_batch_path_refuses_them(netns):
    few, batch = _TapSide(), _TapSide()
    try:
        assert few.sw.netif.gso_max and few.ch.stride >= 65536  # a TAP that segments; 64 KB packets
        for i, (name, size, gso, over, off) in enumerate(HOSTILE):
            out = []
            for side, scalar_max in ((few, tx._SCALAR_MAX), (batch, 0)):
                base = 10000 * (i + 1)
                items = [(_seg(side, base, 100), 0, 0), (_seg(side, base + 100, size, off), gso, over),
                         (_seg(side, base + 100 + size, 1000), 0, 0)]
                out.append(side.run(items, scalar_max))
            assert out[0] == out[1], name
            drops, events, seen = out[0]
            assert [s[1] for s in seen] == ([base, base + 100, base + 100 + size] if name == "good"
                                            else [base, base + 100 + size]), name
            if name != "good":
                assert sum(drops.values()) == 1 and len(events) == 1, (name, drops, events)
        for side in (few, batch):
            assert next(iter(side.sw.flows.values())).port.pipe.defunct_reason is None
    finally:
        few.close()
        batch.close()
