"""The low-latency transmit path: a granted flow's packets to the device now, zero-copy.

A flow the netif serves in its low-latency class (usnet.domain.lowlat: a
lease granted it) skips the general path's batch copy: each packet's headers
are copied and checked (usnet.domain.switch.llcheck) and the frame goes to
the device as that checked copy plus a view of the payload in the client's
buffer. The domain loop serves LL flows first, at every larger piece of
work (docs/architecture.md, "Data paths").
"""

from __future__ import annotations

from usnet.abi.events import TxDropReason, TxStatus
from usnet.abi.umd import deadline_passed
from usnet.domain.switch.host import ETH
from usnet.domain.switch.llcheck import GENERAL_PATH, SNAPSHOT, check_ll_header
from usnet.domain.switch.port import TxMark, TxMeta
from usnet.domain.switch.table import Flow
from usnet.domain.switch.tx import TX_BATCH, TransmitPath
from usnet.drivers.base import GatherFrame
from usnet.proto.wire import ecn
from usnet.proto.wire.ethernet import ETHERTYPE_IPV4, ETHERTYPE_IPV6

__all__ = ["LowLatencyPath"]


class LowLatencyPath(TransmitPath):
    """The transmit path of the low-latency class, beside the general one it falls back on."""

    def service_tx(self, flow: Flow, max_packets: int = TX_BATCH, draining: bool = False) -> int:
        """Take what a client sent: a flow the netif serves in its LL class by the LL path
        (`_service_ll`), any other, or one closing (`draining`), by the general path."""
        if not draining and self.netif.ll_keys and self.netif.serves_ll(flow.id):  # no LL queue: no call
            self.host_read = False  # a new batch (`host_up_to_date`)
            return self._service_ll(flow, self._bite(flow, max_packets))
        return super().service_tx(flow, max_packets, draining)

    def serve_ll(self) -> int:
        """Serve the flows of the netif's low-latency class and hand their frames to the device now."""
        flows = self.flows
        served = 0
        for fid in self.netif.ll_keys:
            flow = flows.get(fid)
            if flow is not None and flow.port.tx_pending() and not flow.port.suspended:
                served += self.service_tx(flow)
        if served and self.netif.active_ll:
            self.netif.flush()  # what the LL class queued: the rest went to the device in service_tx
        return served

    def _service_ll(self, flow: Flow, max_packets: int) -> int:
        """The low-latency path: a granted flow's packets to the device now, zero-copy.

        No batch copy and no column-wise pass: each packet's headers are
        copied (SNAPSHOT bytes) and checked against the flow (usnet.domain.switch.llcheck),
        and the frame goes to the device as that checked copy plus a view of
        the payload in the client's buffer (a GatherFrame), in this call. What
        the LL class cannot send now is copied into the flow's queue, as the
        general path would have queued it, and goes first when it can. A
        packet the LL path does not carry (IP options, a super-segment, a
        neighbour not yet resolved) takes the general path's per-packet check.
        """
        port, netif = flow.port, self.netif
        local = netif.ip if flow.family == 4 else netif.ip6
        assert local is not None, "add_flow refuses an IPv6 flow on a netif without an IPv6 address"
        etype = ETHERTYPE_IPV4 if flow.family == 4 else ETHERTYPE_IPV6
        tx_one = self._tx_one if flow.family == 4 else self._tx_one6
        limit = netif.mtu if flow.policer is None else min(netif.mtu, flow.policer.max_packet)
        mv, stride = port.buf_mv, port.stride
        sent = 0
        with port.pipe.lock:  # until top_up: the buffers are read until the device has them
            idx, lens, gso, meta = port.take(max_packets)
            n = len(idx)
            if not n:
                return 0
            if flow.policer is not None:
                idx, lens, gso = self._police(flow, idx, lens, gso, meta)
            now = self.clock()
            taken_ns = 0 if meta is None else meta.taken_ns
            frames: list[GatherFrame] = []
            marks: list[TxMark | None] = []  # per frame: its mark or None
            for pos, (i, ln, g) in enumerate(zip(idx.tolist(), lens.tolist(), gso.tolist())):
                at = i * stride
                mark = None if meta is None else meta.marks.get(pos)
                if mark is not None and deadline_passed(mark.deadline_ns):
                    self._expire(flow, mark, taken_ns)
                    continue
                snap = bytearray(mv[at : at + min(ln, SNAPSHOT)])  # private: what is checked is what is sent
                got = GENERAL_PATH if g else check_ll_header(
                    snap, ln, proto=flow.proto, lport=flow.lport, raddr=flow.raddr, rport=flow.rport,
                    local=local, max_packet=limit, not_a_peer=self.not_a_peer)
                mac = None
                if isinstance(got, tuple):  # checked: (bytes of headers to send, destination)
                    hdr, dst = got
                    mac = self._neighbour(dst, now)[1]
                elif got != GENERAL_PATH:
                    self._tx_drop(flow, TxDropReason(got), ln)
                    if mark is not None:
                        flow.post_status(TxStatus.DROPPED, mark, taken_ns, got)
                    continue
                if mac is None:  # the general path's check, neighbour wait or refusal, in order
                    sent += self._ll_emit(flow, frames, marks, meta)
                    whole = bytearray(mv[at : at + ln])
                    if ln >= 20:
                        ecn.set_dscp(whole, 0, flow.dscp)
                    sent += self._tx_marked(flow, bytes(whole), now, g, tx_one, meta, pos)
                    frames, marks = [], []
                    continue
                ecn.set_dscp(snap, 0, flow.dscp)  # checked, so IPv4 or IPv6 with a sound header
                frames.append(GatherFrame(ETH.pack(mac, netif.mac, etype) + snap[:hdr], mv[at + hdr : at + ln]))
                marks.append(mark)
            sent += self._ll_emit(flow, frames, marks, meta)
            port.top_up()
        flow.stats["tx_packets"] += sent
        self._advise(flow)
        return n

    def _ll_emit(self, flow: Flow, frames: list[GatherFrame], marks: list[TxMark | None],
                 meta: TxMeta | None) -> int:
        """Send checked LL frames now; queue a copy of what the class cannot send yet. Returns len(frames)."""
        if not frames:
            return 0
        k = self.netif.transmit_now(flow.id, frames)
        if meta is not None:
            for mark in marks[:k]:
                if mark is not None:
                    flow.post_status(TxStatus.SENT, mark, meta.taken_ns)
        if k < len(frames):
            rest: list = [bytes(f) for f in frames[k:]]
            if meta is not None:
                rest = [f if m is None else self._tracked(flow, f, m, meta.taken_ns)
                        for f, m in zip(rest, marks[k:])]
            self.netif.enqueue_many(flow.id, rest)
        self.counts["tx_ll_zero_copy"] += k
        self.counts["tx_ll_queued"] += len(frames) - k
        return len(frames)
