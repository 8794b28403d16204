"""The low-latency receive lane: frames land in the LL flow's own packet buffers (issue 19 item 3).

A flow of the netif's low-latency class on an AF_XDP netif with an LL queue gets a lane
(usnet.drivers.xdplane): a second XSK whose UMEM is the domain's mapping of the flow channel's
arena. `LaneRx` lends the flow's pool packets to the lane's fill ring (taken from the pool as
`FlowPort.deliver` takes them, held by the nexus) and, when a frame has landed in one, checks
its headers from a private copy (`check_lane_header`, the receive twin of
usnet.domain.switch.llcheck) and publishes the packet's index on the flow's RX ring: no copy of
the payload, no classification, no batch, no receive mitigation. A frame whose headers fail is
dropped (`rx_ll_bad_header`) and its buffer lent again.

While the flow is not in the LL class (its lease revoked, or not yet granted) the lane stays,
and what lands in it takes the copying path: a copy of the packet, framed again, goes through
the general receive path (classification, mitigation, the copy into a fresh buffer), and the
buffer is lent again. So a revocation loses nothing: frames the steering still sends to the lane
reach the flow either way. The lane closes with the flow (before its arena is unmapped).
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Any

import numpy as np

from usnet.domain.switch.port import NEXUS
from usnet.domain.switch.table import Flow
from usnet.proto.wire.checksum import verifies
from usnet.proto.wire.ipv4 import martian_source4

__all__ = ["LANE_SNAPSHOT", "LaneRx", "check_lane_header"]

LANE_SNAPSHOT = 28  # the IPv4 header without options and the ports: what the check reads
_HDR = struct.Struct("!BxH2xHxB2x4s4sHH")  # version/ihl, total, flags/offset, protocol, src, dst, ports
_FRAG = 0x3FFF


def check_lane_header(snap: bytes, length: int, *, proto: int, lport: int, raddr: bytes | None,
                      rport: int | None, local: bytes, local4: Any = None, bcast4: Any = None) -> str | None:
    """None if the packet (its first bytes copied into `snap`, `length` bytes in all, as the
    kernel said) is an IPv4 packet of the flow: version 4 without options, a good header
    checksum, its total length the frame's, not a fragment, to `local`, the flow's protocol
    and port, from the connected peer if the flow has one and from no martian source; else
    the reason, a drop counter's name."""
    if length < LANE_SNAPSHOT or len(snap) < LANE_SNAPSHOT:
        return "rx_ll_runt"
    vihl, total, ff, p, src, dst, sport, dport = _HDR.unpack_from(snap)
    if vihl != 0x45 or total != length or not verifies(int.from_bytes(snap[:20], "big")):
        return "rx_ll_bad_header"
    if ff & _FRAG or p != proto or dport != lport or dst != local:
        return "rx_ll_bad_header"
    if raddr is not None and (src != raddr or sport != rport):
        return "rx_ll_bad_header"
    if local4 is not None and martian_source4(int.from_bytes(src, "big"), local4, bcast4):
        return "rx_ll_bad_header"
    return None


class LaneRx:
    """The domain's end of one lane: lend the flow's packets to it, publish or copy what lands."""

    def __init__(self, flow: Flow, lane: Any, counts: Counter, drops: Counter) -> None:
        self.flow, self.lane = flow, lane
        port = flow.port
        lay = port.pipe.layout
        self.base, self.stride, self.max_packets = lay.buf_offset, port.stride, lay.max_packets
        self.mem = port.pipe.arena.shared
        self.counts, self.drops = counts, drops
        self.lent: set[int] = set()  # packet indices in the lane's fill ring or its RX ring
        self.closed = False

    @staticmethod
    def umem_size(flow: Flow) -> int:
        """Bytes of the arena a lane registers: up to the end of the last packet buffer there can be."""
        lay = flow.port.pipe.layout
        return int(lay.buf_offset + lay.max_packets * flow.port.stride)

    def top_up(self) -> None:
        """Lend the lane as many of the flow's pool packets as its fill ring takes."""
        want = self.lane.room()
        pipe = self.flow.port.pipe
        if want <= 0 or self.closed or pipe.defunct_reason is not None:
            return
        with pipe.lock:
            got = pipe.lend(want, NEXUS)
            if not len(got):
                return
            pipe.pool.take(got)
        self.lent.update(got.tolist())
        self.lane.fill(self.base + got.astype(np.uint64) * np.uint64(self.stride))

    def service(self, ll: bool, local: bytes, local4: Any, bcast4: Any, max_n: int = 64) -> list[bytes]:
        """Take what landed. In the LL class (`ll`): checked, then published where it lies;
        otherwise (the copying path) returned as copies, the caller frames and classifies them.
        Every buffer goes back to the lane."""
        offs, lens = self.lane.poll(max_n)
        if not offs:
            return []
        flow, port = self.flow, self.flow.port
        mem, base, stride = self.mem, self.base, self.stride
        publish: list[int] = []
        plens: list[int] = []
        again: list[int] = []
        copies: list[bytes] = []
        for off, ln in zip(offs, lens):
            i, rem = divmod(off - base, stride)
            if rem or i not in self.lent:  # not where we lent: the kernel would not; count, never trust
                self.drops["rx_ll_bad_descriptor"] += 1
                continue
            if not ll:
                copies.append(bytes(mem[off:off + ln]))  # the copying path
                again.append(i)
                self.counts["rx_ll_lane_copied"] += 1
                continue
            snap = bytes(mem[off:off + LANE_SNAPSHOT])  # private: what is checked decides
            why = check_lane_header(snap, ln, proto=flow.proto, lport=flow.lport, raddr=flow.raddr,
                                    rport=flow.rport, local=local, local4=local4, bcast4=bcast4)
            if why is not None:
                self.drops[why] += 1
                again.append(i)
                continue
            publish.append(i)
            plens.append(ln)
        if publish:
            got = np.array(publish, np.uint32)  # a ring slot is a u32
            with port.pipe.lock:
                space = port.rx.space(len(got)) if port.pipe.defunct_reason is None and not port.stalled else 0
                k = min(space, len(got))
                # counted before the client can see them: whoever reads the packet reads the count
                flow.stats["rx_packets"] += k
                flow.stats["rx_bytes"] += sum(plens[:k])
                self.counts["rx_ll_zero_copy"] += k
                if k:
                    port._publish(got[:k], np.array(plens[:k], np.uint32))
            for j in publish[:k]:
                self.lent.discard(j)
            again.extend(publish[k:])  # the RX ring is full: dropped, as a NIC drops, and lent again
            if k < len(publish):
                port.rx_dropped += len(publish) - k
                flow.stats["rx_dropped"] += len(publish) - k
                self.drops["rx_client_full"] += len(publish) - k
        if again:
            self.lane.fill(np.uint64(base) + np.array(again, np.uint64) * np.uint64(stride))
        self.top_up()
        return copies

    def close(self, driver: Any) -> None:
        """Off the program and unpinned; the packets it held back to the pool (the arena is still mapped)."""
        if self.closed:
            return
        self.closed = True
        driver.close_lane(self.flow.proto, self.flow.lport)
        pipe = self.flow.port.pipe
        if self.lent and pipe.defunct_reason is None:
            with pipe.lock:
                pipe.pool.release(sorted(self.lent), NEXUS)
        self.lent.clear()

