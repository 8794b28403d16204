"""The netif nexus: one device, its addresses, and its transmit queues.

Transmit queues are per flow and served round-robin, so one busy flow cannot
starve another; a flow whose queue passes `high_water` is suspended by the
flow switch (it stops taking from that flow's TX ring: back-pressure, not
loss) and resumed below `low_water`.

Addresses: one IPv4 address (with its network and an optional gateway),
and optionally one IPv6 address (`address6`, with an optional `gateway6`).
A netif with an IPv6 address also has the link-local address derived from
its MAC (modified EUI-64): Neighbour Discovery and routers speak to it.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from typing import Any

from usnet.drivers import block
from usnet.drivers.base import Driver, random_mac
from usnet.drivers.block import FrameBlock
from usnet.wire.ipv4 import ip_bytes
from usnet.wire.ipv6 import ALL_NODES, ip6_bytes, ip6_str, is_link_local6, link_local_from_mac, solicited_node


class Netif:
    def __init__(self, name: str, driver: Driver, address: str, gateway: str | None = None,
                 mtu: int | None = None, mac: bytes | None = None, high_water: int = 1024,
                 low_water: int = 256, address6: str | None = None, gateway6: str | None = None) -> None:
        iface = ipaddress.IPv4Interface(address)
        self.name = name
        self.driver = driver
        self.mac = mac or getattr(driver, "mac", None) or random_mac()
        self.mtu = mtu or driver.mtu
        self.address = iface
        self.ip = iface.ip.packed
        self.ip_str = str(iface.ip)
        self.network = iface.network
        self._net = int(iface.network.network_address)
        self._mask = int(iface.network.netmask)
        self.broadcast = iface.network.broadcast_address.packed
        self.gateway = ip_bytes(gateway) if gateway else None
        self._init_ipv6(address6, gateway6)
        self.high_water, self.low_water = high_water, low_water
        self.queues: dict[int, deque[bytes]] = {}
        self.queued_bytes: dict[int, int] = {}
        self.queued_frames: dict[int, int] = {}
        self.active: deque[int] = deque()  # queue keys with frames, round-robin order
        self.tx_frames = self.tx_bytes = self.rx_frames = self.rx_bytes = 0
        self.monitors: list = []  # FlowPorts that get a copy of every frame (usnet capture)

    def _init_ipv6(self, address6: str | None, gateway6: str | None) -> None:
        """IPv6 is on only with an address: then the netif has it and its link-local address."""
        self.ip6: bytes | None = None
        self.ll6: bytes | None = None
        self.address6: ipaddress.IPv6Interface | None = None
        self.gateway6: bytes | None = None
        self.addrs6: frozenset[bytes] = frozenset()  # unicast addresses we answer for
        self.groups6: frozenset[bytes] = frozenset()  # multicast groups we listen to
        if address6 is None:
            if gateway6:
                raise ValueError("gateway6 without address6")
            return
        iface = ipaddress.IPv6Interface(address6)
        if iface.ip.is_multicast or iface.ip.is_unspecified or iface.ip.is_loopback:
            raise ValueError(f"{address6} cannot be an interface address")
        if self.mtu < 1280:
            raise ValueError(f"IPv6 needs an MTU of at least 1280, not {self.mtu}")
        self.address6 = iface
        self.ip6 = iface.ip.packed
        self.ll6 = link_local_from_mac(self.mac)
        self._net6 = int(iface.network.network_address)
        self._mask6 = int(iface.network.netmask)
        self.gateway6 = ip6_bytes(gateway6) if gateway6 else None
        self.addrs6 = frozenset((self.ip6, self.ll6))
        self.groups6 = frozenset({ALL_NODES} | {solicited_node(a) for a in self.addrs6})

    @property
    def ip6_str(self) -> str | None:
        return None if self.ip6 is None else ip6_str(self.ip6)

    def on_link(self, ip: bytes) -> bool:
        if len(ip) == 16:
            return self.ip6 is not None and (
                int.from_bytes(ip, "big") & self._mask6 == self._net6 or is_link_local6(ip))
        return int.from_bytes(ip, "big") & self._mask == self._net

    def next_hop(self, dst: bytes) -> bytes | None:
        """The neighbour to hand a packet for `dst` (4 or 16 bytes) to, or None if there is no route."""
        if len(dst) == 16:
            return self._next_hop6(dst)
        if self.on_link(dst) or dst == b"\xff\xff\xff\xff":
            return dst
        return self.gateway

    def _next_hop6(self, dst: bytes) -> bytes | None:
        if self.ip6 is None or dst == bytes(16) or dst == bytes(15) + b"\x01":
            return None  # no IPv6 here; the unspecified and loopback addresses never leave
        if dst[0] == 0xFF or self.on_link(dst):
            return dst  # multicast maps to its MAC; on-link neighbours are asked for
        return self.gateway6

    def enqueue(self, key: int, frame: bytes) -> int:
        """Queue a frame for flow `key` (0: the switch's own); returns that queue's length."""
        return self.enqueue_many(key, [frame])

    def enqueue_many(self, key: int, items: list) -> int:
        """Queue frames and FrameBlocks for flow `key`; returns that queue's length in frames."""
        q = self.queues.get(key)
        if q is None:
            q = self.queues[key] = deque()
            self.queued_bytes[key] = 0
            self.queued_frames[key] = 0
        if not q:
            self.active.append(key)
        q.extend(items)
        self.queued_bytes[key] += sum(map(block.size, items))
        self.queued_frames[key] += block.count(items)
        return self.queued_frames[key]

    def queued(self, key: int) -> tuple[int, int]:
        q = self.queues.get(key)
        return (self.queued_frames[key], self.queued_bytes[key]) if q else (0, 0)

    def flush(self, budget: int = 1024) -> int:
        """Hand queued frames to the device, round-robin by flow; returns how many it took.

        Each turn takes up to 32 frames, or one whole FrameBlock, from a flow.
        A device that does not carry blocks gets them opened into frames.
        """
        sent_total = 0
        active, queues = self.active, self.queues
        takes_blocks = getattr(self.driver, "takes_blocks", False)
        while active and sent_total < budget:
            batch: list = []
            keys: list[int] = []
            for _ in range(min(len(active), 64)):
                key = active.popleft()
                q = queues[key]
                take = 0
                while q and take < 32:
                    item = q.popleft()
                    if type(item) is FrameBlock and not takes_blocks:
                        frames = item.frames()
                        batch.extend(frames)
                        keys.extend([key] * len(frames))
                        take += len(frames)
                        continue
                    batch.append(item)
                    keys.append(key)
                    take += 1 if type(item) is not FrameBlock else len(item)
                if q:
                    active.append(key)
            sent = self.driver.send_batch(batch)  # in frames, a block's frames each counted
            left = sent
            done = 0
            for item, k in zip(batch, keys):
                n = len(item) if type(item) is FrameBlock else 1
                if left < n:
                    if left:  # the device took the head of a block: the tail waits
                        batch[done] = item.rows(slice(left, None))
                        item = item.rows(slice(0, left))
                        self._account(k, item)
                        batch.insert(done, item)
                        keys.insert(done, k)
                        done += 1
                    break
                left -= n
                self._account(k, item)
                done += 1
            sent_total += sent
            if self.monitors:
                frames = block.expand(batch[:done])
                for m in self.monitors:
                    m.deliver(frames)
            if done < len(batch):
                # the device is full: put the rest back at the front, in order
                for item, k in zip(reversed(batch[done:]), reversed(keys[done:])):
                    q = queues[k]
                    if not q and k not in active:
                        active.appendleft(k)
                    q.appendleft(item)
                break
        return sent_total

    def _account(self, key: int, item) -> None:
        """A frame or block the device took off queue `key`."""
        n, b = (len(item), item.nbytes()) if type(item) is FrameBlock else (1, len(item))
        self.queued_frames[key] -= n
        self.queued_bytes[key] -= b
        self.tx_bytes += b
        self.tx_frames += n

    def drop_queue(self, key: int) -> int:
        q = self.queues.pop(key, None)
        self.queued_bytes.pop(key, None)
        frames = self.queued_frames.pop(key, 0)
        if q is None:
            return 0
        try:
            self.active.remove(key)
        except ValueError:
            pass
        return frames

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "driver": self.driver.name, "mac": self.mac.hex(":"),
                "address": str(self.address), "mtu": self.mtu,
                "gateway": None if self.gateway is None else ".".join(map(str, self.gateway)),
                "address6": None if self.address6 is None else str(self.address6),
                "link_local6": None if self.ll6 is None else ip6_str(self.ll6),
                "gateway6": None if self.gateway6 is None else ip6_str(self.gateway6),
                "rx_frames": self.rx_frames, "rx_bytes": self.rx_bytes,
                "tx_frames": self.tx_frames, "tx_bytes": self.tx_bytes,
                "queued": sum(self.queued_frames.values()),
                "driver_stats": getattr(getattr(self.driver, "stats", None), "as_dict", dict)()}
