"""The netif nexus: one device, its addresses, and its transmit queues.

Transmit queues are per flow and served round-robin, so one busy flow cannot
starve another; a flow whose queue passes `high_water` is suspended by the
flow switch (it stops taking from that flow's TX ring: back-pressure, not
loss) and resumed below `low_water`.

Addresses: one IPv4 address (with its network and an optional gateway),
and optionally one IPv6 address (`address6`, with an optional `gateway6`).
A netif with an IPv6 address also has the link-local address derived from
its MAC (modified EUI-64): Neighbour Discovery and routers speak to it.

Pacing and the low-latency class: a netif given a `link_rate` (bits/s)
sends no faster than that, through a `SlotScheduler` (usnet.domain.netif.txsched:
a frame of time slots, a share `ll_share` of them reserved for the
low-latency class, work-conserving or strict). The queue then forms here,
where flows are suspended and resumed, and not in the kernel or the device.
The queues of the keys in `ll_keys` are the LL class, served round-robin in
LL slots; all others are the general class, served round-robin in general
slots. Without `link_rate` there is no scheduler and `flush` is the plain
round-robin it always was.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from usnet.abi.events import TxDropReason, TxStatus
from usnet.abi.umd import deadline_passed
from usnet.domain.netif import txsched
from usnet.domain.netif.aqm import CoDel
from usnet.domain.netif.linkshare import LinkPeer
from usnet.domain.netif.txsched import LL, SlotScheduler
from usnet.drivers import block
from usnet.drivers.base import Driver, GatherFrame, SegmentedFrame, TrackedFrame
from usnet.drivers.block import FrameBlock
from usnet.proto.route import Routes
from usnet.proto.wire import ecn
from usnet.proto.wire.ethernet import ETH_HLEN
from usnet.proto.wire.ipv4 import ip_bytes
from usnet.proto.wire.ipv6 import ALL_NODES, ip6_bytes, ip6_str, link_local_from_mac, solicited_node

__all__ = ["Netif"]


class Netif:
    def __init__(self, name: str, driver: Driver, address: str, gateway: str | None = None,
                 mtu: int | None = None, mac: bytes | None = None, high_water: int = 1024,
                 low_water: int = 256, address6: str | None = None, gateway6: str | None = None,
                 link_rate: float | None = None, ll_share: float | None = None,
                 work_conserving: bool | None = None, aqm: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, loopback: bool = False,
                 link_peers: LinkPeer | None = None) -> None:
        iface = ipaddress.IPv4Interface(address)
        self.name = name
        # the domain's loopback netif (Domain.add_loopback): every address on it is the domain's own,
        # so its flow switch delivers all it carries locally (usnet.domain.switch.local)
        self.loopback = loopback
        self.driver = driver
        self.mac = mac or driver.mac
        self.mtu = mtu or driver.mtu
        self.caps = driver.caps  # what the device takes beyond plain frames
        # The largest IP packet the device segments itself (TSO through IFF_VNET_HDR); 0: none.
        self.gso_max = self.caps.gso_max
        self.address = iface
        self.ip = iface.ip.packed
        self.ip_str = str(iface.ip)
        self.network = iface.network
        self.broadcast = iface.network.broadcast_address.packed
        self.gateway = ip_bytes(gateway) if gateway else None
        self._init_ipv6(address6, gateway6)
        # the route decision, one for the switch and the clients (usnet.proto.route): per packet,
        # so the bound methods themselves, not a method of ours that calls them
        self.routes = Routes(str(iface), self.gateway, None if self.address6 is None else str(self.address6),
                             self.gateway6, () if self.ll6 is None else (self.ll6,))
        self.on_link: Callable[[bytes], bool] = self.routes.on_link
        self.next_hop: Callable[[bytes], bytes | None] = self.routes.next_hop
        self.high_water, self.low_water = high_water, low_water
        self.queues: dict[int, deque[bytes]] = {}
        self.queued_bytes: dict[int, int] = {}
        self.queued_frames: dict[int, int] = {}
        self.active: deque[int] = deque()  # queue keys with frames, round-robin order
        self.tx_frames = self.tx_bytes = self.rx_frames = self.rx_bytes = 0
        self.tx_expired = 0  # frames dropped at the queue's head, past their deadline
        self.device_gone: str | None = None  # why the device can no longer be read (deleted under us)
        self.monitors: list = []  # FlowPorts that get a copy of every frame (usnet capture)
        self.tracked = 0  # TrackedFrames queued: while 0, nothing looks for them
        # the switch tells the flow: (frame, status, TxDropReason or 0)
        self.on_status: Callable[[TrackedFrame, TxStatus, int], None] | None = None
        self._init_sched(link_rate, ll_share, work_conserving, clock, link_peers)
        self._init_aqm(link_rate is not None if aqm is None else aqm)
        self._retiring: set[int] = set()  # keys of flows gone whose queued frames still leave

    def _init_sched(self, link_rate: float | None, ll_share: float | None,
                    work_conserving: bool | None, clock: Callable[[], float],
                    link_peers: LinkPeer | None = None) -> None:
        """A slot scheduler if there is a link rate; without one, the plain round-robin.
        `link_peers`: this queue's side of the link's shared page, when other processes'
        queues of the same device pace with it (usnetd --workers: usnet.domain.netif.linkshare)."""
        self.clock = clock
        self.ll_keys: set[int] = set()  # queue keys (flow ids) of the low-latency class
        self.active_ll: deque[int] = deque()  # LL keys with frames, when paced (else unused)
        self.sched: SlotScheduler | None = None
        self._stalled = False  # the device refused frames at the last paced flush
        self._ll_seen: set[int] = set()  # ll_keys as the active deques last reflected them
        if link_rate is None:
            if ll_share is not None or work_conserving is not None:
                raise ValueError("ll_share and work_conserving need a link_rate")
            return
        share = 0.2 if ll_share is None else ll_share
        wc = True if work_conserving is None else work_conserving
        txsched.check_params(link_rate, share, wc)
        self.sched = SlotScheduler(link_rate, ll_share=share, work_conserving=wc,
                                   slot_bytes=self.mtu + 14, start=clock(), peers=link_peers)

    def _init_aqm(self, on: bool) -> None:
        """CoDel on the general class's queues (usnet.domain.netif.aqm); by default where a link rate paces them.

        A queue's sojourn is read from byte positions, not per-frame stamps:
        each enqueue call records (bytes ever queued after it, when), and the
        head's bytes are those ever queued less those still queued. Blocks
        split and frames put back keep it true without touching the stamps.
        """
        self.aqm: dict[int, CoDel] | None = {} if on else None
        self._enq_total: dict[int, int] = {}
        self._enq_marks: dict[int, deque[tuple[int, float]]] = {}
        self.aqm_dropped = 0  # frames CoDel dropped, all queues
        self.aqm_marked = 0  # ECN-capable frames CoDel marked CE instead
        self.aqm_drops: dict[int, list[int]] = {}  # per key: [frames, bytes] not yet told to the switch

    def serves_ll(self, key: int) -> bool:
        """Whether queue `key` is served as LL (never without LL slots: it would starve)."""
        return key in self.ll_keys and self.sched is not None and self.sched.ll_slots > 0

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
        if iface.ip.is_multicast or iface.ip.is_unspecified or iface.ip.is_loopback != self.loopback:
            raise ValueError(f"{address6} cannot be an interface address"
                             + (" of the loopback netif" if self.loopback else ""))
        if self.mtu < 1280:
            raise ValueError(f"IPv6 needs an MTU of at least 1280, not {self.mtu}")
        self.address6 = iface
        self.ip6 = iface.ip.packed
        # a loopback netif has no link, so no link-local address (as the kernel's lo)
        self.ll6 = None if self.loopback else link_local_from_mac(self.mac)
        self.gateway6 = ip6_bytes(gateway6) if gateway6 else None
        self.addrs6 = frozenset(a for a in (self.ip6, self.ll6) if a is not None)
        self.groups6 = frozenset({ALL_NODES} | {solicited_node(a) for a in self.addrs6})

    @property
    def ip6_str(self) -> str | None:
        return None if self.ip6 is None else ip6_str(self.ip6)

    def enqueue(self, key: int, frame: bytes) -> int:
        """Queue a frame for flow `key` (0: the switch's own); returns that queue's length.
        One frame, one count: no `totals` pass over a list made for it (a small packet's path)."""
        return self._enqueue(key, (frame,), 1, len(frame))

    def enqueue_many(self, key: int, items: list) -> int:
        """Queue frames and FrameBlocks for flow `key`; returns that queue's length in frames."""
        nframes, nbytes = block.totals(items)
        return self._enqueue(key, items, nframes, nbytes)

    def _enqueue(self, key: int, items: list | tuple, nframes: int, nbytes: int) -> int:
        """`items` (`nframes` frames of `nbytes` bytes) at the tail of flow `key`'s queue."""
        q = self.queues.get(key)
        if q is None:
            q = self.queues[key] = deque()
            self.queued_bytes[key] = 0
            self.queued_frames[key] = 0
        if not q:
            if self.sched is not None and self.serves_ll(key):
                self.active_ll.append(key)
            else:
                self.active.append(key)
        q.extend(items)
        for item in items:
            if type(item) is TrackedFrame:
                self.tracked += 1
        self.queued_bytes[key] += nbytes
        self.queued_frames[key] += nframes
        if self.aqm is not None:
            total = self._enq_total[key] = self._enq_total.get(key, 0) + nbytes
            if not self.serves_ll(key):  # the LL class has no AQM: no stamps to keep
                marks = self._enq_marks.get(key)
                if marks is None:
                    marks = self._enq_marks[key] = deque()
                marks.append((total, self.clock()))
        return self.queued_frames[key]

    def _aqm(self, key: int, q: deque, now: float) -> None:
        """CoDel at the head of a general-class queue: drop from the head while it says so."""
        aqm = self.aqm
        if aqm is None:
            return
        codel = aqm.get(key)
        if codel is None:
            codel = aqm[key] = CoDel()
        marks = self._enq_marks.get(key)
        if not marks:
            return  # its frames were queued in the LL class (revoked since): no stamps, no drops
        while q:
            left = self._enq_total[key] - self.queued_bytes[key]  # bytes that have left the queue
            while len(marks) > 1 and marks[0][0] <= left:
                marks.popleft()
            head = q[0]
            size = int(head.lens[0]) if type(head) is FrameBlock else len(head)
            if not codel.drop(now - marks[0][1], now, self.queued_bytes[key] - size, self.mtu):
                return
            if self._mark_ce(q, head):  # ECN-capable: told by a mark, and it still goes (RFC 3168)
                self.aqm_marked += 1
                return
            if type(head) is FrameBlock and len(head) > 1:
                q[0] = head.rows(slice(1, None))
            else:
                q.popleft()
            self.queued_frames[key] -= 1
            self.queued_bytes[key] -= size
            self.aqm_dropped += 1
            told = self.aqm_drops.setdefault(key, [0, 0])
            told[0] += 1
            told[1] += size
            if type(head) is TrackedFrame:
                self._settle(head, TxStatus.DROPPED, TxDropReason.QUEUE_DELAY)

    @staticmethod
    def _mark_ce(q: deque, head) -> bool:
        """Mark the frame at the head of `q` CE if its packet is ECN-capable; False if it is not."""
        if type(head) is FrameBlock:
            return ecn.mark_ce(head.data[0], ETH_HLEN)  # the block owns its array
        buf = bytearray(head)
        if not ecn.mark_ce(buf, ETH_HLEN):
            return False
        q[0] = head.rewrap(buf) if isinstance(head, SegmentedFrame) else bytes(buf)
        return True

    def queued(self, key: int) -> tuple[int, int]:
        q = self.queues.get(key)
        return (self.queued_frames[key], self.queued_bytes[key]) if q else (0, 0)

    def flush(self, budget: int = 1024) -> int:
        """Hand queued frames to the device, round-robin by flow; returns how many it took.

        Each turn takes up to 32 frames, or one whole FrameBlock, from a flow.
        A device that does not carry blocks gets them opened into frames.
        With a link rate, the slot scheduler decides who sends and how much.
        """
        if self._retiring:
            self._forget_drained()
        if self.sched is not None:
            return self._flush_paced(budget)
        sent_total = 0
        active, queues = self.active, self.queues
        takes_blocks = self.caps.takes_blocks
        aqm = self.aqm
        now = self.clock() if aqm is not None else 0.0
        while active and sent_total < budget:
            batch: list = []
            keys: list[int] = []
            for _ in range(min(len(active), 64)):
                key = active.popleft()
                q = queues[key]
                if aqm is not None:
                    self._aqm(key, q, now)
                take = 0
                while q and take < 32:
                    item = q.popleft()
                    if self.tracked and type(item) is TrackedFrame and self._expired(key, item):
                        continue
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
            sent, _, all_taken = self._send(batch, keys)
            sent_total += sent
            if not all_taken:  # the device is full: the rest went back to the front of its queues
                break
        return sent_total

    # -- paced transmit (a link rate and the slot scheduler) -----------------------------------

    def set_class(self, key: int, ll: bool) -> None:
        """Put queue `key` in the LL class (True) or the general class; frames queued move with it."""
        if ll:
            if self.sched is None or self.sched.ll_slots == 0:
                raise ValueError(f"netif {self.name!r} has no LL slots (it needs a link_rate and an ll_share)")
            self.ll_keys.add(key)
        else:
            self.ll_keys.discard(key)
        if self.sched is not None:
            self._reclass()

    def _reclass(self) -> None:
        """Move active keys whose class changed (ll_keys may also be edited directly)."""
        self._ll_seen = set(self.ll_keys)
        ll = self.serves_ll
        if any(ll(k) for k in self.active) or not all(ll(k) for k in self.active_ll):
            keys = list(self.active_ll) + list(self.active)
            self.active_ll = deque(k for k in keys if ll(k))
            self.active = deque(k for k in keys if not ll(k))

    def next_timeout(self) -> float | None:
        """Seconds until the netif has transmit work to do; None if it has none.

        Unpaced: a short poll while frames wait (the device was full), as the
        flow switch has always done. Paced: when the scheduler's next grant
        is due, so the domain sleeps until then.
        """
        if self.sched is None:
            return 0.0005 if self.active else None
        if not (self.active or self.active_ll):
            return None
        if self._stalled:
            return 0.0005
        now = self.clock()
        t = self.sched.next_time(now, bool(self.active_ll), bool(self.active))
        return None if t is None else max(0.0, t - now)

    def _flush_paced(self, budget: int) -> int:
        """Serve the LL queues in LL slots and the general queues in general slots, paced."""
        sched = self.sched
        assert sched is not None
        if self.ll_keys != self._ll_seen:
            self._reclass()
        now = self.clock()
        self._stalled = False
        sent_total = 0
        while sent_total < budget:
            cls, nbytes = sched.grant(now, bool(self.active_ll), bool(self.active))
            if cls is None:
                break
            batch, keys = self._take(self.active_ll if cls == LL else self.active, nbytes, budget - sent_total,
                                     now if cls != LL and self.aqm is not None else None)
            if not batch:
                break  # cannot happen (a waiting class has frames); never spin if it does
            frames, sent_bytes, done = self._send(batch, keys)
            sched.charge(cls, sent_bytes, now, frames)
            sent_total += frames
            if not done:
                self._stalled = True
                break
        return sent_total

    def transmit_now(self, key: int, frames: list) -> int:
        """The low-latency path: hand an LL flow's frames to the device at once; returns how many went.

        Only while the LL class may send now (txsched: ahead of its slots, or
        in its own) and the flow has nothing queued that they would overtake.
        The frames may be GatherFrames, whose payload is the sender's buffer:
        they go out in this call or not at all, and the caller queues a copy
        of the rest. The sent ones are charged to the LL class as any are.
        """
        sched = self.sched
        if sched is None or not frames or self.queues.get(key) or not self.serves_ll(key):
            return 0
        now = self.clock()
        cls, budget = sched.grant(now, True, bool(self.active))
        if cls != LL:
            return 0
        n = nbytes = 0
        while n < len(frames) and nbytes < budget:  # the last frame may pass the budget
            nbytes += len(frames[n])
            n += 1
        batch = frames[:n]
        if not self.caps.takes_gather:
            batch = [bytes(f) if type(f) is GatherFrame else f for f in batch]
        sent = self.driver.send_batch(batch)
        nbytes = sum(map(len, batch[:sent]))
        self.tx_frames += sent
        self.tx_bytes += nbytes
        sched.charge(LL, nbytes, now, sent)
        if self.monitors and sent:
            copies = [bytes(f) for f in batch[:sent]]
            for m in self.monitors:
                m.deliver(copies)
        if sent < n:
            self._stalled = True
        return sent

    def _take(self, active: deque, nbytes: int, max_frames: int,
              aqm_now: float | None = None) -> tuple[list, list[int]]:
        """Up to `nbytes` (the last frame may pass it) from the class's queues, round-robin by bytes.

        Each key's turn is worth `quantum` bytes (one full frame), as in
        deficit round robin without the carried deficit: a flow of small
        packets gets a packet a turn while a bulk flow gets a frame's worth,
        so a light flow's wait is one round of the busy ones, not their
        backlog. A FrameBlock is split at the turn's bytes and its tail stays
        at the front of its queue. With `aqm_now` (the general class on a
        netif with AQM), CoDel judges each queue's head at its turn.
        """
        queues = self.queues
        takes_blocks = self.caps.takes_blocks
        quantum = self.mtu + 14
        batch: list = []
        keys: list[int] = []
        left, room = nbytes, max_frames
        while active and left > 0 and room > 0:
            key = active.popleft()
            q = queues[key]
            if aqm_now is not None:
                self._aqm(key, q, aqm_now)
            turn = min(left, quantum)
            while q and turn > 0 and room > 0:
                item = q[0]
                if type(item) is FrameBlock:
                    cum = np.cumsum(item.lens)
                    n = min(int(np.searchsorted(cum, turn)) + 1, len(item), room)
                    if n < len(item):
                        q[0] = item.rows(slice(n, None))
                        item = item.rows(slice(0, n))
                    else:
                        q.popleft()
                    took = int(cum[n - 1])
                    if takes_blocks:
                        batch.append(item)
                        keys.append(key)
                    else:
                        batch.extend(item.frames())
                        keys.extend([key] * n)
                else:
                    q.popleft()
                    took = len(item)
                    if self.tracked and type(item) is TrackedFrame and self._expired(key, item):
                        continue
                    n = 1
                    batch.append(item)
                    keys.append(key)
                turn -= took
                left -= took
                room -= n
            if q:
                active.append(key)
        return batch, keys

    def _send(self, batch: list, keys: list[int]) -> tuple[int, int, bool]:
        """Hand a batch to the device; (frames taken, bytes taken, whether it took them all).

        Frames are counted as the device counts them: each frame of a block.

        What the device did not take goes back to the front of its queues, in order.
        """
        if not batch:
            return 0, 0, True
        sent = self.driver.send_batch(batch)
        left = sent
        done = 0
        nbytes = 0
        for item, k in zip(batch, keys):
            n = len(item) if type(item) is FrameBlock else 1
            if left < n:
                if left:  # the device took the head of a block: the tail waits
                    batch[done] = item.rows(slice(left, None))
                    item = item.rows(slice(0, left))
                    nbytes += self._account(k, item)
                    batch.insert(done, item)
                    keys.insert(done, k)
                    done += 1
                break
            left -= n
            nbytes += self._account(k, item)
            done += 1
        if self.monitors:
            frames = block.expand(batch[:done])
            for m in self.monitors:
                m.deliver(frames)
        if self.tracked:
            for item in batch[:done]:
                if type(item) is TrackedFrame:
                    self._settle(item, TxStatus.SENT)
        if done == len(batch):
            return sent, nbytes, True
        for item, k in zip(reversed(batch[done:]), reversed(keys[done:])):
            q = self.queues[k]
            active = self.active_ll if self.serves_ll(k) else self.active
            if not q and k not in active:
                active.appendleft(k)
            q.appendleft(item)
        return sent, nbytes, False

    def _account(self, key: int, item) -> int:
        """A frame or block the device took off queue `key`."""
        n, b = (len(item), item.nbytes()) if type(item) is FrameBlock else (1, len(item))
        self.queued_frames[key] -= n
        self.queued_bytes[key] -= b
        self.tx_bytes += b
        self.tx_frames += n
        return b

    def _expired(self, key: int, item: TrackedFrame) -> bool:
        """Whether a frame just taken off queue `key` is past its deadline: then it is dropped and told."""
        if not deadline_passed(item.deadline_ns):
            return False
        self.queued_frames[key] -= 1
        self.queued_bytes[key] -= len(item)
        self.tx_expired += 1
        self._settle(item, TxStatus.EXPIRED)
        return True

    def _settle(self, item: TrackedFrame, status: TxStatus, reason: int = 0) -> None:
        self.tracked -= 1
        if self.on_status is not None:
            self.on_status(item, status, reason)

    def flush_queue(self, key: int) -> int:
        """Drop the frames queue `key` holds (its tracked ones reported FLUSHED); returns how many."""
        q = self.queues.pop(key, None)
        self.queued_bytes.pop(key, None)
        frames = self.queued_frames.pop(key, 0)
        self._enq_total.pop(key, None)
        self._enq_marks.pop(key, None)
        self._retiring.discard(key)
        if q is None:
            return 0
        if self.tracked:
            for item in q:
                if type(item) is TrackedFrame:
                    self._settle(item, TxStatus.FLUSHED)
        for active in (self.active, self.active_ll):
            try:
                active.remove(key)
            except ValueError:
                pass
        return frames

    def retire(self, key: int) -> None:
        """Queue `key`'s flow is gone but its frames still leave: forget the key once they have.

        Keys are never reused, so without this every closed channel would
        leave its empty queue and counters behind.
        """
        if self.queues.get(key):
            self._retiring.add(key)
        else:
            self.drop_queue(key)

    def _forget_drained(self) -> None:
        for key in [k for k in self._retiring if not self.queues.get(k)]:
            self.drop_queue(key)  # which takes it off _retiring

    def drop_queue(self, key: int) -> int:
        """`flush_queue` for a queue that is going away: its class and its AQM state go with it."""
        self.ll_keys.discard(key)
        if self.aqm is not None:
            self.aqm.pop(key, None)
        self.aqm_drops.pop(key, None)
        return self.flush_queue(key)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "driver": self.driver.name, "mac": self.mac.hex(":"),
                "address": str(self.address), "mtu": self.mtu,
                "gateway": None if self.gateway is None else ".".join(map(str, self.gateway)),
                "address6": None if self.address6 is None else str(self.address6),
                "link_local6": None if self.ll6 is None else ip6_str(self.ll6),
                "gateway6": None if self.gateway6 is None else ip6_str(self.gateway6),
                "rx_frames": self.rx_frames, "rx_bytes": self.rx_bytes,
                "tx_frames": self.tx_frames, "tx_bytes": self.tx_bytes, "tx_expired": self.tx_expired,
                "queued": sum(self.queued_frames.values()),
                "aqm": None if self.aqm is None else {"dropped": self.aqm_dropped, "marked": self.aqm_marked},
                "driver_stats": self.driver.stats.as_dict(), "device_gone": self.device_gone,
                **({} if self.sched is None else {"txsched": self._sched_info()})}

    def queue_totals(self) -> tuple[int, int, int, int]:
        """(LL frames, LL bytes, general frames, general bytes) queued now, by the class each key is served in.

        For reports (the interface advisory, Status), not the data path: it
        walks the few LL keys and sums the per-key counts at C speed.
        """
        ll_frames = ll_bytes = 0
        for k in self.ll_keys:
            if k in self.queued_frames and self.serves_ll(k):
                ll_frames += self.queued_frames[k]
                ll_bytes += self.queued_bytes[k]
        return (ll_frames, ll_bytes, sum(self.queued_frames.values()) - ll_frames,
                sum(self.queued_bytes.values()) - ll_bytes)

    def _sched_info(self) -> dict[str, Any]:
        assert self.sched is not None
        ll_frames, _, general_frames, _ = self.queue_totals()
        return {**self.sched.stats(), "ll_flows": sorted(self.ll_keys),
                "queued_ll": ll_frames, "queued_general": general_frames}
