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

from usnet.drivers import block
from usnet.drivers.base import Driver, random_mac
from usnet.drivers.block import FrameBlock
from usnet.wire.ipv4 import ip_bytes


class Netif:
    def __init__(self, name: str, driver: Driver, address: str, gateway: str | None = None,
                 mtu: int | None = None, mac: bytes | None = None, high_water: int = 1024,
                 low_water: int = 256) -> None:
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
        self.queued_frames: dict[int, int] = {}
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
                "rx_frames": self.rx_frames, "rx_bytes": self.rx_bytes,
                "tx_frames": self.tx_frames, "tx_bytes": self.tx_bytes,
                "queued": sum(self.queued_frames.values()),
                "driver_stats": getattr(getattr(self.driver, "stats", None), "as_dict", dict)()}
