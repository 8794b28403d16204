"""The netif nexus: one device, its addresses, and its transmit queues.

Transmit queues are per flow and served round-robin, so one busy flow cannot
starve another; a flow whose queue passes `high_water` is suspended by the
flow switch (it stops taking from that flow's TX ring: back-pressure, not
loss) and resumed below `low_water`.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from typing import Any

from usnet.drivers.base import Driver, random_mac
from usnet.wire.ipv4 import ip_bytes


class Netif:
    def __init__(self, name: str, driver: Driver, address: str, gateway: str | None = None,
                 mtu: int | None = None, mac: bytes | None = None, high_water: int = 512,
                 low_water: int = 128) -> None:
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
        self.high_water, self.low_water = high_water, low_water
        self.queues: dict[int, deque[bytes]] = {}
        self.queued_bytes: dict[int, int] = {}
        self.active: deque[int] = deque()  # queue keys with frames, round-robin order
        self.tx_frames = self.tx_bytes = self.rx_frames = self.rx_bytes = 0
        self.monitors: list = []  # FlowPorts that get a copy of every frame (usnet capture)

    def on_link(self, ip: bytes) -> bool:
        return int.from_bytes(ip, "big") & self._mask == self._net

    def next_hop(self, dst: bytes) -> bytes | None:
        """The neighbour to hand a packet for `dst` to, or None if there is no route."""
        if self.on_link(dst) or dst == b"\xff\xff\xff\xff":
            return dst
        return self.gateway

    def enqueue(self, key: int, frame: bytes) -> int:
        """Queue a frame for flow `key` (0: the switch's own); returns that queue's length."""
        return self.enqueue_many(key, [frame])

    def enqueue_many(self, key: int, frames: list[bytes]) -> int:
        """Queue a batch of frames for flow `key`; returns that queue's length."""
        q = self.queues.get(key)
        if q is None:
            q = self.queues[key] = deque()
            self.queued_bytes[key] = 0
        if not q:
            self.active.append(key)
        q.extend(frames)
        self.queued_bytes[key] += sum(map(len, frames))
        return len(q)

    def queued(self, key: int) -> tuple[int, int]:
        q = self.queues.get(key)
        return (len(q), self.queued_bytes[key]) if q else (0, 0)

    def flush(self, budget: int = 1024) -> int:
        """Hand queued frames to the device, round-robin by flow; returns how many it took."""
        sent_total = 0
        active, queues = self.active, self.queues
        while active and sent_total < budget:
            batch: list[bytes] = []
            keys: list[int] = []
            for _ in range(min(len(active), 64)):
                key = active.popleft()
                q = queues[key]
                take = min(len(q), 32)
                for _ in range(take):
                    batch.append(q.popleft())
                    keys.append(key)
                if q:
                    active.append(key)
            sent = self.driver.send_batch(batch)
            for m in self.monitors:
                m.deliver(batch[:sent])
            for f, k in zip(batch[:sent], keys[:sent]):
                self.queued_bytes[k] -= len(f)
                self.tx_bytes += len(f)
            self.tx_frames += sent
            sent_total += sent
            if sent < len(batch):
                # the device is full: put the rest back at the front, in order
                for f, k in zip(reversed(batch[sent:]), reversed(keys[sent:])):
                    q = queues[k]
                    if not q and k not in active:
                        active.appendleft(k)
                    q.appendleft(f)
                break
        return sent_total

    def drop_queue(self, key: int) -> int:
        q = self.queues.pop(key, None)
        self.queued_bytes.pop(key, None)
        if q is None:
            return 0
        try:
            self.active.remove(key)
        except ValueError:
            pass
        return len(q)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "driver": self.driver.name, "mac": self.mac.hex(":"),
                "address": str(self.address), "mtu": self.mtu,
                "gateway": None if self.gateway is None else ".".join(map(str, self.gateway)),
                "rx_frames": self.rx_frames, "rx_bytes": self.rx_bytes,
                "tx_frames": self.tx_frames, "tx_bytes": self.tx_bytes,
                "queued": sum(len(q) for q in self.queues.values()),
                "driver_stats": getattr(getattr(self.driver, "stats", None), "as_dict", dict)()}
