"""The nexus end of a flow-switch channel.

A flow channel is a user pipe whose second end is the flow switch itself: the
client's TX ring is consumed here and its RX ring produced here. The pool is
the client's (one entity); the switch takes packets out of it for receive and
puts sent packets back.

Transmit copies each packet out of the client's pool exactly once, into
memory only the nexus can reach, after the packet's ownership is checked;
validation happens on that copy, never on the client-writable original.
"""

from __future__ import annotations

import os

import numpy as np

from usnet.channel import ring as ringmod
from usnet.channel.events import EventType, RefusalReason
from usnet.channel.ring import Consumer, Producer, RingCorrupt
from usnet.channel.schema import FLOWADV, STATS_PER_ROLE, FlowState, RingKind, Stat
from usnet.nexus.userpipe import UserPipe
from usnet.pool.pool import HELD
from usnet.pool.umd import UMD_WORDS

CLIENT, NEXUS = 0, 1


class FlowPort:
    def __init__(self, pipe: UserPipe) -> None:
        self.pipe = pipe
        lay = pipe.layout
        mem = pipe.shared_mv
        tx = lay.ring(RingKind.PIPE, CLIENT)
        rx = lay.ring(RingKind.PIPE, NEXUS)
        self.tx = Consumer(mem, tx.offset, tx.capacity)
        self.rx = Producer(mem, rx.offset, rx.capacity, pipe.schema.ring_size)
        stride = pipe.schema.packet_bytes
        self.stride = stride
        buf = mem[lay.buf_offset : lay.buf_offset + lay.max_packets * stride]
        self.views = [buf[i * stride : (i + 1) * stride] for i in range(lay.max_packets)]
        self.umd = mem[lay.umd_offset : lay.umd_offset + lay.max_packets * lay.umd_size].cast("I")
        self.client_bell = pipe.ends[CLIENT].bell
        self.bell = pipe.ends[NEXUS].bell  # the client rings this when it sends
        pipe.ends[NEXUS].attached = True
        self.suspended = False
        self.suspensions = 0
        self.rx_dropped = 0
        self.refused = 0

    @property
    def pool(self):
        return self.pipe.pool

    def pull(self, max_n: int) -> list[bytes]:
        """Take up to `max_n` packets the client sent: copies, ownership checked, packets freed."""
        pipe = self.pipe
        if pipe.defunct_reason is not None or self.suspended:
            return []
        try:
            idx = self.tx.pop(max_n)
        except RingCorrupt:
            pipe._violation(pipe.ends[CLIENT], RefusalReason.BAD_COUNTER)
            return []
        if not idx:
            return []
        pipe._collect_taken(pipe.ends[CLIENT])  # what it took from ALLOC since we last looked
        good, refused = pipe.pool.release_checked(idx, NEXUS)
        if refused:
            self.refused += len(refused)
            end = pipe.ends[CLIENT]
            pipe.stats[CLIENT * STATS_PER_ROLE + Stat.REFUSED] += len(refused)
            for pkt, reason in refused[:16]:
                end.events.post(EventType.REFUSED, reason, pkt)
            pipe._violation(end, refused[0][1], refused[0][0], posted=True)
        views, umd, stride = self.views, self.umd, self.stride
        # The packets are back in the pool but nothing reuses them before we return:
        # the domain is single-threaded, so this copy reads what the client wrote.
        out = []
        for p in good:
            n = umd[p * UMD_WORDS]
            out.append(bytes(views[p][: n if n <= stride else stride]))
        self._top_up()
        return out

    def _top_up(self) -> None:
        """Refill the client's ALLOC ring as we take its packets, as a NIC refills its ring.

        A client that keeps sending then never has to kick us for buffers.
        """
        pipe = self.pipe
        end = pipe.ends[CLIENT]
        if end.alloc.prod - end.taken <= end.alloc.capacity // 2:
            pipe._refill(end)

    def deliver(self, payloads: list[bytes]) -> int:
        """Copy received packets into the client's pool and publish them on its RX ring.

        Returns how many were delivered; the rest are dropped (pool exhausted
        or RX ring full) and counted, as a NIC drops when its ring is full.
        """
        pipe = self.pipe
        if pipe.defunct_reason is not None or not payloads:
            return 0
        want = min(len(payloads), self.rx.space(len(payloads)))
        if want <= 0:
            self.rx_dropped += len(payloads)
            return 0
        got = pipe.pool.alloc(want, NEXUS)
        if len(got) < want:
            pipe.collect()  # take back what the client freed, then retry
            more = pipe.pool.alloc(want - len(got), NEXUS)
            if len(more):
                got = np.concatenate([got, more])
        pipe.pool.take(got)
        pkts = got.tolist()
        views, umd, stride = self.views, self.umd, self.stride
        for p, data in zip(pkts, payloads):
            n = len(data)
            if n > stride:
                n = stride
                data = data[:stride]
            views[p][:n] = data
            umd[p * UMD_WORDS] = n
        self.rx.push(got)
        self.rx_dropped += len(payloads) - len(pkts)
        ringmod.fence()
        if self.rx.need_wakeup():
            try:
                os.eventfd_write(self.client_bell, 1)
            except OSError:
                pass
        return len(pkts)

    def tx_pending(self) -> int:
        try:
            return self.tx.available()
        except RingCorrupt:
            return 0

    def set_need_wakeup(self) -> None:
        """Going idle: ask the client to ring our bell when it sends."""
        self.tx.set_need_wakeup()

    def clear_need_wakeup(self) -> None:
        self.tx.clear_need_wakeup()

    def advise(self, suspended: bool, queued_packets: int, queued_bytes: int) -> None:
        """Publish the flow advisory; on a change, tell the client on its event ring."""
        if suspended != self.suspended:
            self.suspended = suspended
            if suspended:
                self.suspensions += 1
            end = self.pipe.ends[CLIENT]
            end.events.post(EventType.FLOW_SUSPENDED if suspended else EventType.FLOW_RESUMED,
                            value=queued_packets, aux=queued_bytes)
            end.ring_bell()
        FLOWADV.pack_into(self.pipe.flowadv, CLIENT * FLOWADV.size,
                          FlowState.SUSPENDED if suspended else FlowState.ACTIVE, 0,
                          queued_packets, queued_bytes, self.suspensions)

    def held_by_client(self) -> int:
        return int(np.count_nonzero((self.pool.state == HELD) & (self.pool.owner == CLIENT)))
