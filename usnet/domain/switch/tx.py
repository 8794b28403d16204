"""The transmit path of the flow switch: pull what a client sent, check it, hand it to the netif.

Each packet is copied out of the client's pool once (FlowPort), and the copy
is checked against the flow entry: a well-formed IPv4 header, the flow's
protocol, source address and port, and for a connected flow its destination
(an unconnected flow's: an address a peer can have, `not_a_peer`), its TTL,
options (no source route) and fragments (a later fragment only of a datagram
the flow began: usnet.domain.switch.txguard). A packet that fails is dropped,
counted by reason, and reported on the client's event ring: no client can
send as another. The DSCP is overwritten with the flow's class (`Flow.dscp`);
ECN stays the client's.

An IPv4 batch is checked column-wise (`_tx_fast_ok`) and queued as
FrameBlocks (`_tx_rows`); the rows that fail, and every IPv6 packet, are
checked one at a time (`_tx_one`, `_tx_one6`: version 6, payload length,
next header = the flow's protocol or a Fragment header and then it, so no
other extension header can be smuggled past the port check). Both families
share the checks past the IP header (`_tx_addressed`, `_tx_fragment`).
A flow in the netif's low-latency class takes usnet.domain.switch.llpath.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from usnet.abi.events import EventType, TxDropReason, TxStatus
from usnet.abi.umd import deadline_passed
from usnet.domain.switch.binding import Verdict
from usnet.domain.switch.host import HostDuties
from usnet.domain.switch.port import CLIENT, TxMark, TxMeta
from usnet.domain.switch.table import PORTS, TCP, UDP, Flow
from usnet.domain.switch.txguard import SentFragments, TcpSeen, ipv4_options, whole_l4_header
from usnet.drivers.base import SegmentedFrame, TrackedFrame
from usnet.drivers.block import FrameBlock
from usnet.proto.wire import ecn
from usnet.proto.wire.checksum import verifies
from usnet.proto.wire.ethernet import ETH_HLEN, ETHERTYPE_IPV4
from usnet.proto.wire.igmp import is_multicast4
from usnet.proto.wire.ipv4 import IP_MF, IP_OFFMASK, not_unicast4
from usnet.proto.wire.ipv6 import FRAG_HLEN, FRAGMENT, IPV6_HLEN, ROUTING, parse_frag_header
from usnet.proto.wire.mld import is_multicast6
from usnet.proto.wire.rows import be_u16, be_u32, row_sums
from usnet.proto.wire.tcp import pack_segment, pseudo_sum

__all__ = ["TX_BATCH", "TransmitPath"]

_IPFIX = struct.Struct("!BxHHHBB2x4s4s")  # version/ihl, total length, ident, flags/offset, ttl, protocol, src, dst
_IP6FIX = struct.Struct("!4xHBB16s16s")  # payload length, next header, hop limit, src, dst
TX_BATCH = 512
_PULL_BYTES = 4 << 20  # the most packet-buffer bytes one service_tx copies out of a pool
_MIN_GSO = 88  # Linux's TCP_MIN_MSS: no super-segment is cut finer than this
_RST, _RST_ACK = 0x04, 0x14
_DSCP_SPAN = 12  # the bytes `ecn.set_dscp` reads and writes of an IPv4 packet (its checksum's the last)
# A batch of at most this many packets is checked packet by packet (`_tx_few`): the column-wise
# pass costs a dozen numpy calls of a few microseconds each whatever the batch's size, most of
# what one request's answer costs the domain, and request/response traffic sends one or two.
# Measured (issue 18, a MemWire, batches of UDP datagrams): one by one is cheaper up to some 8-12
# packets; issue 16 (a listener's TCP answers, 140 bytes, each to its own remote end): up to ~20,
# UDP datagrams up to ~14. 12 takes a server's answers to 10 connections in one batch (the HTTP
# benchmark's) and a connector's usual batch (the ACK of a FIN, our FIN, the next connect's SYN).
_SCALAR_MAX = 12
# ... unless a row is wider than this (a super-segment): one by one, a 64 KB packet is copied
# four times more (bytes, SegmentedFrame, framed, rewrapped) than the column pass's block, which
# the device writes from the rows themselves
_SCALAR_WIDTH = ETH_HLEN + 9216
# `service_tx_many` joins the batches of more than this many packets into its one pass: there
# a row costs a fraction of a packet's check however few rows each flow brings
_JOIN_ABOVE = 2
_FEW_JOINED = min(_JOIN_ABOVE, _SCALAR_MAX)  # what `service_tx_many` sends one by one


def _is_syn(p: bytes, l4: int) -> bool:
    """A TCP SYN without ACK (the first of a connection): for a connector, it binds its port."""
    return len(p) > l4 + 13 and p[l4 + 13] & 0x12 == 0x02


class TransmitPath(HostDuties):
    """The general transmit path, and what every transmit path reports to its flow."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.netif.on_status = self._frame_status
        self._last_drop = 0  # the reason of the last _tx_drop, for a tracked packet's status
        # the destinations `_tx_rows` found no route to in this batch: `_tx_pulled` unmarks their
        # rows, which were not sent (as `_tx_one`, which returns 0 for them)
        self._unrouted: set[int] = set()
        self._src_and_type = np.frombuffer(self.netif.mac + ETHERTYPE_IPV4.to_bytes(2, "big"), np.uint8)

    @staticmethod
    def _bite(flow: Flow, max_packets: int) -> int:
        """At most `max_packets`, and no more than `_PULL_BYTES` of the flow's buffers: a batch of
        64 KB packets (a flow on an offload netif) is pulled in smaller bites, so the copy stays a
        few MB, not 32 MB of fresh pages per call."""
        return min(max_packets, _PULL_BYTES // flow.port.stride or 1)

    def service_tx(self, flow: Flow, max_packets: int = TX_BATCH, draining: bool = False) -> int:
        """Take what a client sent, check each copy against its flow, queue frames.

        The batch is copied out of the client's pool into one array with room
        for the Ethernet header in front, checked column-wise, framed in place
        and queued as one FrameBlock. Rows that fail the column-wise check (or
        carry IP options) go through `_tx_one`, which finds the reason, reports
        it, or sends the packet on its own.
        """
        bite = self._bite(flow, max_packets)
        self.host_read = False  # a new batch (`host_up_to_date`)
        if flow.policer is None:
            taken, pulled = self._tx_if_few(flow, bite, _SCALAR_MAX, draining)
            if pulled is None:
                return taken
            rows, lens, gso, meta = pulled
        else:
            rows, lens, gso, meta = flow.port.pull(bite, ETH_HLEN, draining)
        if flow.policer is not None and len(lens):  # an LL lease: past its rate is dropped
            rows, lens, gso = self._police(flow, rows, lens, gso, meta)
        return self._tx_pulled(flow, rows, lens, gso, meta)

    def service_tx_many(self, flows: list[Flow], on_fault: Callable[[Flow, Exception], None]) -> int:
        """`service_tx` for each of `flows`, with one column-wise pass over all their batches.

        Many flows that each sent a few dozen packets (a server's many UDP
        flows, each with one `send_many`'s worth) would otherwise each pay
        the dozen numpy calls of the column-wise check, whatever their
        batch's size. Here each flow's batch is pulled from its own pool as
        before, the batches are laid end to end, and every row is held to its
        own flow's signature (`Flow.tx_signature_row`: version, protocol,
        source address and port, and a connected flow's destination) and to
        the same checks `_tx_fast_ok` makes, in one pass; each flow then
        takes its own rows on from there (`_tx_pulled`), so a row that fails
        is judged, reported and counted for its flow exactly as before.
        A flow the joined pass does not cover (IPv6, a connector, an LL
        lease or class, a batch of a few, tracked packets) takes its own path,
        and so does a lone busy flow (`service_tx`: up to `_SCALAR_MAX` one by one).
        A fault in one flow's channel goes to `on_fault(flow, exc)`, and only
        that flow's batch is lost. Returns how many packets were taken.
        """
        if len(flows) == 1:  # nothing to join with: `service_tx`'s few path takes up to `_SCALAR_MAX`
            try:
                return self.service_tx(flows[0])
            except Exception as e:
                on_fault(flows[0], e)
                return 0
        joined: list[tuple[Flow, np.ndarray, np.ndarray, np.ndarray]] = []
        taken = 0
        netif = self.netif
        for flow in flows:
            self.host_read = False  # each flow's batch is new input (`host_up_to_date`)
            try:
                if (flow.family != 4 or flow.binds is not None or flow.policer is not None
                        or (netif.ll_keys and netif.serves_ll(flow.id))):  # no LL queue: no call
                    taken += self.service_tx(flow)
                    continue
                bite = self._bite(flow, TX_BATCH)
                few, pulled = self._tx_if_few(flow, bite, _FEW_JOINED)
                if pulled is None:
                    taken += few
                    continue
                rows, lens, gso, meta = pulled
                if len(lens) <= _JOIN_ABOVE or meta is not None or rows.shape[1] < ETH_HLEN + 24:
                    taken += self._tx_pulled(flow, rows, lens, gso, meta)
                    continue
                joined.append((flow, rows, lens, gso))
                taken += len(lens)
            except Exception as e:  # the channel's barrier: the others go on
                on_fault(flow, e)
        if not joined:
            return taken
        if len(joined) == 1:
            flow, rows, lens, gso = joined[0]
            try:
                self._tx_pulled(flow, rows, lens, gso, None)
            except Exception as e:
                on_fault(flow, e)
        else:
            self._tx_joined(joined, on_fault)
        return taken

    def _tx_joined(self, joined: list[tuple[Flow, np.ndarray, np.ndarray, np.ndarray]],
                   on_fault: Callable[[Flow, Exception], None]) -> None:
        """The joined pass of `service_tx_many`: IPv4 batches of several flows, checked as one."""
        counts = [len(lens) for _, _, lens, _ in joined]
        ends = np.cumsum(counts).tolist()
        width = max(rows.shape[1] for _, rows, _, _ in joined)
        if all(rows.shape[1] == width for _, rows, _, _ in joined):
            big = np.concatenate([rows for _, rows, _, _ in joined])
        else:  # narrower rows padded: what is past a packet's length is never sent
            big = np.empty((ends[-1], width), np.uint8)
            start = 0
            for (_, rows, _, _), end in zip(joined, ends):
                big[start:end, : rows.shape[1]] = rows
                start = end
        lens = np.concatenate([lens for _, _, lens, _ in joined])
        per_flow = np.array([(f.dscp, f.raddr is None) for f, _, _, _ in joined], np.int64)
        sig = np.repeat(np.stack([f.tx_signature_row(self.netif.ip) for f, _, _, _ in joined]), counts, axis=0)
        # DSCP is each flow's class: the flows whose rows carry another rewrite theirs
        b0, b1 = big[:, ETH_HLEN], big[:, ETH_HLEN + 1]
        redo = (b0 >> 4 == 4) & (b1 >> 2 != np.repeat(per_flow[:, 0], counts))
        if redo.any():
            start = 0
            for (f, _, _, _), end in zip(joined, ends):
                if redo[start:end].any():
                    ecn.set_dscp_rows(big[start:end], ETH_HLEN, f.dscp, 4)
                start = end
        h = big[:, ETH_HLEN : ETH_HLEN + 24]
        ok = ((h & sig[:, :24]) == sig[:, 24:]).all(axis=1)  # version/ihl, protocol, source, ports, peer
        ok &= self._rows_ok4(h, lens)
        loose = np.repeat(per_flow[:, 1].astype(bool), counts)  # unconnected: a destination a peer can have
        if loose.any():
            ok &= ~loose | self._to_a_peer4(h)
        now = self.clock()
        if ok.all() and self._frame_joined(joined, ends, big, lens, now, on_fault):
            return
        start = 0
        for (flow, _, _, gso), end in zip(joined, ends):
            try:
                self._tx_pulled(flow, big[start:end], lens[start:end], gso, None, ok[start:end].copy(), now)
            except Exception as e:
                on_fault(flow, e)
            start = end

    def _frame_joined(self, joined: list[tuple[Flow, np.ndarray, np.ndarray, np.ndarray]], ends: list[int],
                      big: np.ndarray, lens: np.ndarray, now: float,
                      on_fault: Callable[[Flow, Exception], None]) -> bool:
        """Every row of the joined pass passed and goes to one neighbour we know (many flows sending
        to one peer): frame them all at once and queue each flow's rows as its block; False (nothing
        done) otherwise, and each flow frames its own rows (`_tx_pulled`)."""
        dst = be_u32(big[:, ETH_HLEN + 16 : ETH_HLEN + 20])
        first = int(dst[0])
        if first == self._local4 or not (dst == first).all():
            return False
        _, mac = self._neighbour(first.to_bytes(4, "big"), now)
        if mac is None:
            return False
        big[:, 0:6] = np.frombuffer(mac, np.uint8)
        big[:, 6:14] = self._src_and_type
        flen = lens + ETH_HLEN
        sums = np.cumsum(lens).tolist()
        start = 0
        for (flow, _, _, _), end in zip(joined, ends):
            try:
                ip_bytes = sums[end - 1] - (sums[start - 1] if start else 0)
                self.netif.enqueue_many(flow.id, [FrameBlock(big[start:end], flen[start:end],
                                                             nbytes=ip_bytes + ETH_HLEN * (end - start))])
                if flow.proto == TCP:  # as `_tx_pulled`
                    if flow.tcp_seen is None:
                        flow.tcp_seen = TcpSeen(by_port=flow.binds is not None)
                    flow.tcp_seen.note_rows(big[start:end], lens[start:end], np.arange(end - start), ETH_HLEN,
                                            flow.family, flow.raddr is not None)
                flow.stats["tx_packets"] += end - start
                flow.stats["tx_bytes"] += ip_bytes
                self._advise(flow)
            except Exception as e:
                on_fault(flow, e)
            start = end
        return True

    def _tx_pulled(self, flow: Flow, rows: np.ndarray, lens: np.ndarray, gso: np.ndarray,
                   meta: TxMeta | None, ok: np.ndarray | None = None, now: float | None = None) -> int:
        """`service_tx` past the pull: check, frame and queue one flow's batch; returns its size.

        `ok`: the column-wise verdict on each row, already reached (with the DSCP already set)
        by a pass over the batches of many flows (`service_tx_many`).
        """
        n = len(lens)
        if not n:
            return 0
        if n <= _SCALAR_MAX and ok is None and (rows.shape[1] <= _SCALAR_WIDTH or meta is not None):
            pkts = [rows[i, ETH_HLEN : ETH_HLEN + ln].tobytes() for i, ln in enumerate(lens.tolist())]
            return self._tx_few(flow, pkts, gso.tolist(), meta)
        if now is None:
            now = self.clock()
        if ok is not None:
            tx_one = self._tx_one
        elif flow.family == 6:
            if rows.shape[1] >= ETH_HLEN + 12:  # DSCP is the flow's class, ECN the client's: one column pass
                ecn.set_dscp_rows(rows, ETH_HLEN, flow.dscp, 6)
            ok, tx_one = np.zeros(n, bool), self._tx_one6  # IPv6: packet by packet
        else:
            if rows.shape[1] >= ETH_HLEN + 12:
                ecn.set_dscp_rows(rows, ETH_HLEN, flow.dscp, 4)
            ok, tx_one = self._tx_fast_ok(flow, rows, lens, gso), self._tx_one
        if meta is not None:  # a deadline or a report: packet by packet, tracked
            ok[[i for i in meta.marks if i < n]] = False
        sent = int(ok.sum())
        # the super-segments among the checked rows (`_tx_fast_ok` passed them as `_segmentable`)
        cut = None
        if self.netif.gso_max and int(lens.max()) > self.netif.mtu:
            cut = np.where(ok & (lens > self.netif.mtu), gso, 0).astype(np.uint32)
            if cut.any():
                self.counts["tx_segmented"] += int(np.count_nonzero(cut))
            else:
                cut = None
        if self._unrouted:  # left by a batch a fault cut short
            self._unrouted.clear()
        if sent == n:
            sent -= self._tx_rows(flow, rows, lens, now, cut)
        else:  # in order: runs of checked rows as blocks, the others one by one between them
            start = 0
            for i in [*np.flatnonzero(~ok).tolist(), n]:
                if i > start:
                    sent -= self._tx_rows(flow, rows[start:i], lens[start:i], now,
                                          None if cut is None else cut[start:i])
                if i == n:
                    break
                start = i + 1
                p = bytes(rows[i, ETH_HLEN : ETH_HLEN + int(lens[i])])
                took = self._tx_marked(flow, p, now, int(gso[i]), tx_one, meta, i)
                sent += took
                ok[i] = took  # for the TCP state below: what passed the checks, either way
        if self._unrouted:  # checked, but dropped for want of a route: not sent, not noted, not counted
            ok &= ~np.isin(be_u32(rows[:, ETH_HLEN + 16 : ETH_HLEN + 20]), list(self._unrouted))
            self._unrouted.clear()
        if flow.proto == TCP:  # the sequence state a reset would start from (txguard.TcpSeen)
            if flow.tcp_seen is None:
                flow.tcp_seen = TcpSeen(by_port=flow.binds is not None)
            flow.tcp_seen.note_rows(rows, lens, np.flatnonzero(ok), ETH_HLEN, flow.family, flow.raddr is not None)
        flow.stats["tx_packets"] += sent
        flow.stats["tx_bytes"] += int(lens[ok].sum())  # IP bytes that passed the checks (metrics)
        self._advise(flow)
        return n

    def _tx_if_few(self, flow: Flow, bite: int, few: int, draining: bool = False) -> tuple[
            int, tuple[np.ndarray, np.ndarray, np.ndarray, TxMeta | None] | None]:
        """`service_tx` of at most `few` packets without arrays (`FlowPort.pull_any`, `_tx_few`):
        (packets taken, None); when more wait, (0, the batch `FlowPort.pull` took, with room for
        the link header) for the caller's array path: one look at the ring (`FlowPort.pull_any`).
        A batch with a packet too wide for the scalar path (a super-segment, which only the batch
        path cuts) comes from the port as rows already, for the array path."""
        got, pulled = flow.port.pull_any(bite, few, ETH_HLEN, draining, _SCALAR_WIDTH)
        if got is None:
            return 0, pulled
        pkts, gsos, meta = got
        if not pkts:
            return 0, None
        return self._tx_few(flow, pkts, gsos, meta), None

    def _tx_few(self, flow: Flow, pkts: list[bytes], gsos: list[int], meta: TxMeta | None) -> int:
        """`service_tx` for a batch of a few packets (each its own copy, made by `FlowPort._pull_few`
        and checked and sent as it is: a packet whose class is rewritten is copied once more, the
        rare case, where every packet paid a second copy): the same DSCP rewrite and
        the same checks, one packet at a time by `_tx_one`/`_tx_one6` (which decide every packet
        the column-wise pass does not accept, so they accept exactly what the batch path sends),
        and the same TCP state: the last packet that passed, per remote end."""
        now = self.clock()
        family, dscp = flow.family, flow.dscp
        tx_one = self._tx_one6 if family == 6 else self._tx_one
        sent = nbytes = 0
        passed: list[bytes] = []
        for i, pb in enumerate(pkts):
            # the flow's class: a call only for an IPv4 packet that carries another (IPv6: always).
            # Not for one shorter than the bytes `set_dscp` writes (IPv4's checksum ends at 12): no
            # IP packet, refused below as the column pass refuses it (which rewrites its row, never
            # sent); a hostile client's 1-byte packet beside a good one faulted its channel here
            if len(pb) >= _DSCP_SPAN and pb[0] >> 4 == family and (family == 6 or pb[1] >> 2 != dscp):
                w = bytearray(pb)
                if ecn.set_dscp(w, 0, dscp):
                    pb = bytes(w)
            if meta is None:  # nothing marked: `_tx_marked` would only call `tx_one`
                took = tx_one(flow, pb, now, gsos[i])
            else:
                took = self._tx_marked(flow, pb, now, gsos[i], tx_one, meta, i)
            sent += took
            if took:
                passed.append(pb)
                nbytes += len(pb)
        if flow.proto == TCP and passed:  # as TcpSeen.note_rows: the last of each remote end
            if flow.tcp_seen is None:
                flow.tcp_seen = TcpSeen(by_port=flow.binds is not None)
            # one remote end: its last; a listener's or a connector's: each end's last, in one call
            flow.tcp_seen.note_last(passed[-1:] if flow.raddr is not None else passed, family)
        flow.stats["tx_packets"] += sent
        flow.stats["tx_bytes"] += nbytes
        self._advise(flow)
        return len(pkts)

    def _tx_fast_ok(self, flow: Flow, rows: np.ndarray, lens: np.ndarray,
                    gso: np.ndarray | None = None) -> np.ndarray:
        """Rows that are, column-wise, a well-formed option-less IPv4 packet of this flow.

        Not a fragment (DF alone is fine), a TTL above 0, and for an
        unconnected flow a destination a peer can have (`not_a_peer`) and a
        port other than 0. Within the MTU, or a TCP super-segment the device
        may cut (`_segmentable_rows`, given the rows' `gso` sizes). The rest
        go to `_tx_one`, which finds the reason.
        """
        if rows.shape[1] < ETH_HLEN + 24:
            return np.zeros(len(lens), bool)
        h = rows[:, ETH_HLEN : ETH_HLEN + 24]
        cols, want = flow.tx_signature(self.netif.ip)
        ok = (h[:, cols] == want).all(axis=1)  # version/ihl, protocol, source, ports
        ok &= self._rows_ok4(h, lens, self._segmentable_rows(flow, rows, lens, gso))
        if flow.binds is not None:  # a connector: each row's port bound to its remote end (`Flow.peer_of`)
            if rows.shape[1] < ETH_HLEN + 34:
                return np.zeros(len(lens), bool)
            k = (be_u32(h[:, 16:20]).astype(np.uint64) << np.uint64(16)) | be_u16(h[:, 22:24]).astype(np.uint64)
            ok &= flow.binds.keys[be_u16(h[:, 20:22])] == (k | np.uint64(1 << 48))  # a RST from a free port: `_tx_one`
            ok &= (rows[:, ETH_HLEN + 33] & 0x12) != 0x02  # a SYN binds: `_tx_one` (an option-less header: TCP at 20)
        elif flow.raddr is None:  # a connected flow's destination is in its signature
            ok &= self._to_a_peer4(h)
        return ok

    def _segmentable_rows(self, flow: Flow, rows: np.ndarray, lens: np.ndarray,
                          gso: np.ndarray | None) -> np.ndarray | None:
        """`_segmentable`, column-wise, for rows whose IP header is option-less (20 bytes: the
        flow's signature checks version and IHL); None when no row can be one."""
        nif = self.netif
        if (gso is None or flow.proto != TCP or not nif.gso_max or rows.shape[1] < ETH_HLEN + 34
                or int(lens.max()) <= nif.mtu):
            return None
        thl = (rows[:, ETH_HLEN + 32] >> 4).astype(np.int64) << 2
        return ((lens <= nif.gso_max) & (thl >= 20) & (20 + thl < lens)
                & (gso >= _MIN_GSO) & (gso <= nif.mtu - 20 - thl))

    def _rows_ok4(self, h: np.ndarray, lens: np.ndarray, big: np.ndarray | None = None) -> np.ndarray:
        """What every IPv4 row must be, whatever its flow (`h`: its first 24 header bytes): its
        total length the packet's, within the MTU (or `big`: a super-segment the device may cut),
        not a fragment (DF alone is fine), a TTL, and a header that sums to a multiple of 0xFFFF
        (a valid checksum)."""
        fits = lens <= self.netif.mtu
        if big is not None:
            fits |= big
        ok = (be_u16(h[:, 2:4]) == lens) & (lens >= 24) & fits
        ok &= ((h[:, 6] & 0x3F) == 0) & (h[:, 7] == 0) & (h[:, 8] != 0)  # no MF, no offset; TTL
        ok &= row_sums(h[:, :20]) == 0
        return ok

    def _to_a_peer4(self, h: np.ndarray) -> np.ndarray:
        """Rows an unconnected flow may send: to an address a peer can have (unicast, not ours,
        not the subnet's broadcast: `not_a_peer`) and a port other than 0."""
        d = be_u32(h[:, 16:20]).astype(np.int64)
        return (~not_unicast4(d) & (d != self._local4) & (d != self._bcast4)
                & ((h[:, 22] | h[:, 23]) != 0))

    def _tx_rows(self, flow: Flow, rows: np.ndarray, lens: np.ndarray, now: float,
                 cut: np.ndarray | None = None) -> int:
        """Frame checked rows by destination and queue them; returns how many were dropped.
        `cut`: each row's gso size if it is a super-segment the device is to cut, else 0."""
        dst = be_u32(rows[:, ETH_HLEN + 16 : ETH_HLEN + 20])
        first = dst[0]
        if (dst == first).all():
            groups = [(int(first), rows, lens, cut)]
        else:
            groups = [(int(d), rows[dst == d], lens[dst == d], None if cut is None else cut[dst == d])
                      for d in np.unique(dst)]
        dropped = 0
        for d, r, ln, c in groups:
            hop, mac = self._neighbour(d.to_bytes(4, "big"), now)
            if mac is not None:
                r[:, 0:6] = np.frombuffer(mac, np.uint8)
                r[:, 6:14] = self._src_and_type
                self.netif.enqueue_many(flow.id, [FrameBlock(r, ln + ETH_HLEN, c)])
            elif hop is not None:
                for i, n in enumerate(ln.tolist()):
                    p = r[i, ETH_HLEN : ETH_HLEN + n].tobytes()
                    if c is not None and c[i]:
                        p = SegmentedFrame(p, int(c[i]))
                    self._await_neighbour(flow.id, hop, p, now)
            else:
                for n in ln.tolist():
                    self._tx_drop(flow, TxDropReason.NO_ROUTE, n)
                dropped += len(ln)
                self._unrouted.add(d)
        return dropped

    def _tx_one(self, flow: Flow, p: bytes, now: float, gso: int = 0) -> int:
        """Check one packet the slow way; queue it (1) or drop it with its reason (0).

        `gso` non-zero asks for a TCP super-segment to be cut at that payload size.
        Options are parsed (usnet.domain.switch.txguard.ipv4_options) and fragments
        judged (`_tx_fragment`) here only: the batch path leaves them to it.
        """
        n = len(p)
        if n < 20:
            self._tx_drop(flow, TxDropReason.MALFORMED, n)
            return 0
        vihl, total, ident, ff, ttl, proto, src, dst = _IPFIX.unpack_from(p)
        if vihl >> 4 != 4:
            self._tx_drop(flow, TxDropReason.NOT_IPV4, n)
            return 0
        ihl = (vihl & 0xF) << 2
        if ihl < 20 or total != n or n < ihl or not verifies(int.from_bytes(p[:ihl], "big")):
            self._tx_drop(flow, TxDropReason.MALFORMED, n)
            return 0
        if proto != flow.proto:
            self._tx_drop(flow, TxDropReason.WRONG_PROTOCOL, n)
            return 0
        why = ipv4_options(p, ihl) if ihl > 20 else 0
        if not why and ttl == 0:
            why = TxDropReason.ZERO_TTL
        if why:
            self._tx_drop(flow, TxDropReason(why), n)
            return 0
        if ff & (IP_MF | IP_OFFMASK):
            return self._tx_fragment(flow, p, ihl, src, self.netif.ip, dst, ident, ff & IP_OFFMASK, now)
        if n < ihl + 4:
            self._tx_drop(flow, TxDropReason.MALFORMED, n)
            return 0
        return self._tx_addressed(flow, p, ihl, src, self.netif.ip, dst, now, gso)

    def _tx_one6(self, flow: Flow, p: bytes, now: float, gso: int = 0) -> int:
        """Check one packet of an IPv6 flow; queue it (1) or drop it with its reason (0).

        The next header must be the flow's protocol itself, or a Fragment
        header and then the flow's protocol (judged by `_tx_fragment`): any
        other extension header is refused (a Routing header, RFC 5095's
        type 0 or any other, as SOURCE_ROUTE), so the ports checked are the
        ports sent.
        """
        n = len(p)
        if n and p[0] >> 4 != 6:
            self._tx_drop(flow, TxDropReason.NOT_IPV4, n)  # code 2: not the flow's IP version
            return 0
        if n < IPV6_HLEN:
            self._tx_drop(flow, TxDropReason.MALFORMED, n)
            return 0
        plen, nh, hops, src, dst = _IP6FIX.unpack_from(p)
        if IPV6_HLEN + plen != n:
            self._tx_drop(flow, TxDropReason.MALFORMED, n)
            return 0
        frag = None
        if nh == FRAGMENT and plen >= FRAG_HLEN:
            nh, foff, more, ident = parse_frag_header(p, IPV6_HLEN)
            if foff or more:  # an atomic fragment (RFC 6946) is a whole packet
                frag = (foff, ident)
        if nh == ROUTING:
            self._tx_drop(flow, TxDropReason.SOURCE_ROUTE, n)
            return 0
        if nh != flow.proto:
            self._tx_drop(flow, TxDropReason.WRONG_PROTOCOL, n)
            return 0
        if hops == 0:
            self._tx_drop(flow, TxDropReason.ZERO_TTL, n)
            return 0
        l4 = IPV6_HLEN if p[6] != FRAGMENT else IPV6_HLEN + FRAG_HLEN
        local = self.netif.ip6
        assert local is not None, "add_flow refuses an IPv6 flow on a netif without an IPv6 address"
        if frag is not None:
            return self._tx_fragment(flow, p, l4, src, local, dst, frag[1], frag[0], now)
        if n < l4 + 4:
            self._tx_drop(flow, TxDropReason.MALFORMED, n)
            return 0
        return self._tx_addressed(flow, p, l4, src, local, dst, now, gso)

    def _tx_fragment(self, flow: Flow, p: bytes, l4: int, src: bytes, local: bytes, dst: bytes,
                     ident: int, offset: int, now: float) -> int:
        """One fragment of either family (usnet.domain.switch.txguard): a first one with the flow's whole
        transport header, checked as any packet; a later one only of a datagram the flow began."""
        n = len(p)
        if not offset:
            if not whole_l4_header(p, l4, flow.proto):
                self._tx_drop(flow, TxDropReason.FRAGMENT, n)
                return 0
            took = self._tx_addressed(flow, p, l4, src, local, dst, now)
            if took:
                if flow.sent_frags is None:
                    flow.sent_frags = SentFragments()
                flow.sent_frags.began(dst, ident, now)
            return took
        if flow.sent_frags is None or not flow.sent_frags.knows(dst, ident, now):
            if src != local:  # the reason a packet of the flow would have had
                self._tx_drop(flow, TxDropReason.SPOOFED_SOURCE, n)
            elif (dst != flow.raddr) if flow.raddr is not None else self.not_a_peer(dst) is not None:
                self._tx_drop(flow, TxDropReason.WRONG_DESTINATION, n)
            else:
                self._tx_drop(flow, TxDropReason.FRAGMENT, n)
            return 0
        return self._tx_addressed(flow, p, l4, src, local, dst, now, ports=False)

    def _tx_addressed(self, flow: Flow, p: bytes, l4: int, src: bytes, local: bytes, dst: bytes,
                      now: float, gso: int = 0, ports: bool = True) -> int:
        """The checks both families share, once the IP header is sound: who sends, to whom, how big.

        `ports` False: a later fragment, whose transport header went in its first.
        """
        n = len(p)
        if ports:
            sport, dport = PORTS.unpack_from(p, l4)
            peer = flow.peer_of(sport)  # the one rule of which 4-tuples the flow owns
            if flow.binds is not None and src == local and (peer != (dst, dport) or _is_syn(p, l4)):
                peer = self._tx_connector(flow, p, l4, dst, sport, dport)
                if peer is None:
                    return 0
        else:  # a later fragment: its first carried the ports and passed
            peer, dport = (flow.raddr, flow.rport), flow.rport
        if src != local or peer is None:
            self._tx_drop(flow, TxDropReason.SPOOFED_SOURCE, n)
            return 0
        raddr, rport = peer
        if raddr is not None:
            if dst != raddr or dport != rport:
                self._tx_drop(flow, TxDropReason.WRONG_DESTINATION, n)
                return 0
        elif dport == 0 or (self.not_a_peer(dst) is not None  # sendto: unicast to a peer, as Linux,
                            and not (flow.proto == UDP  # or UDP to a group
                                     and (is_multicast4(dst) or is_multicast6(dst)))):
            self._tx_drop(flow, TxDropReason.WRONG_DESTINATION, n)  # without SO_BROADCAST
            return 0
        if n > self.netif.mtu:
            if not gso or not self._segmentable(flow, p, l4, gso):
                self._tx_drop(flow, TxDropReason.TOO_BIG, n)
                return 0
            if type(p) is TrackedFrame:
                p.gso_size = gso
            else:
                p = SegmentedFrame(p, gso)
            self.counts["tx_segmented"] += 1
        # a plain packet to a known neighbour: framed and queued here, not by `_route`'s chain
        if type(p) is bytes and (eth := self._link(dst, now)) is not None:
            self.netif.enqueue(flow.id, eth + p)
        elif not self._route(flow.id, dst, p, now):
            self._tx_drop(flow, TxDropReason.NO_ROUTE, n)
            return 0
        return 1

    def _tx_connector(self, flow: Flow, p: bytes, l4: int, dst: bytes, sport: int,
                      dport: int) -> tuple[bytes | None, int | None] | None:
        """A connector's packet whose port is not bound to its destination (usnet.domain.switch.binding):
        a SYN from a free port binds it (and goes on as any packet of a bound port), a RST from a
        free port goes unbound; a port not of its blocks is SPOOFED_SOURCE, a bound port towards
        another remote end WRONG_DESTINATION (a sibling's 4-tuple cannot be forged). Returns the
        peer `_tx_addressed` goes on with, None when dropped (reported and counted here)."""
        binds = flow.binds
        assert binds is not None
        flags = p[l4 + 13] if len(p) >= l4 + 14 and flow.proto == TCP else 0
        syn, rst = flags & 0x12 == 0x02, bool(flags & 0x04)
        v = binds.check(sport, dst, dport, syn, rst)
        # a SYN from a bound port: a retransmission, or a new connection whose release (which
        # would have freed the port) is being served (its drain of the ring met this SYN, sent
        # after it), or still waits unread, towards another peer or the same one
        if syn and v in (Verdict.ELSEWHERE, Verdict.PASS) and binds.releasing and sport in binds.releasing:
            binds.releasing.discard(sport)
            self.release_ports(flow, [sport])
            v = binds.check(sport, dst, dport, syn, rst)
        if syn and v in (Verdict.ELSEWHERE, Verdict.PASS) and self.catch_up is not None:
            self.in_tx = True  # a release sent before this SYN may wait, unread, on the control socket
            try:
                self.catch_up(flow)
            finally:
                self.in_tx = False
            v = binds.check(sport, dst, dport, syn, rst)
        if v is Verdict.NOT_HELD or v is Verdict.UNBOUND:
            self._tx_drop(flow, TxDropReason.SPOOFED_SOURCE, len(p))
            return None
        if v is Verdict.ELSEWHERE or dport == 0 or self.not_a_peer(dst) is not None:
            self._tx_drop(flow, TxDropReason.WRONG_DESTINATION, len(p))
            return None
        if v is Verdict.BIND:
            self.bind_port(flow, sport, dst, dport)
        return dst, dport

    def _segmentable(self, flow: Flow, p: bytes, l4: int, gso: int) -> bool:
        """Whether the device may cut `p` into TCP segments of `gso` payload bytes.

        Only a TCP flow on a netif whose device segments (`gso_max`), with a
        whole TCP header, and a segment size that puts every piece within the
        MTU and at least Linux's smallest MSS (88) apart: the device then only
        ever emits what the flow could have sent segment by segment.
        """
        if flow.proto != TCP or len(p) > self.netif.gso_max or len(p) < l4 + 20:
            return False
        thl = (p[l4 + 12] >> 4) << 2
        return thl >= 20 and l4 + thl < len(p) and _MIN_GSO <= gso <= self.netif.mtu - l4 - thl

    def _police(self, flow: Flow, rows: np.ndarray, lens: np.ndarray, gso: np.ndarray,
                meta: TxMeta | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The head of the batch within the flow's lease rate; the rest dropped, counted, reported once
        (and each marked packet among them on its own)."""
        k = flow.policer.admit(lens, self.clock(), ETH_HLEN)
        if k < len(lens):
            over = len(lens) - k
            self.drops["tx_rate_exceeded"] += over
            flow.stats["tx_dropped"] += over
            flow.port.pipe.ends[CLIENT].events.post(EventType.TX_DROPPED, TxDropReason.RATE_EXCEEDED,
                                                    value=over, aux=int(lens[k:].sum()))
            if meta is not None:
                for pos in sorted(meta.marks):
                    if pos >= k:
                        flow.post_status(TxStatus.DROPPED, meta.marks[pos], meta.taken_ns,
                                         TxDropReason.RATE_EXCEEDED)
            rows, lens, gso = rows[:k], lens[:k], gso[:k]
        return rows, lens, gso

    def reset_peers(self, flow: Flow) -> int:
        """The flow's owner is gone without closing: send each remote end it talked TCP with
        a RST|ACK from the last sequence state it validated (TcpSeen), so no peer stays
        ESTABLISHED with a dead process. Queued under the flow, before it is removed
        (`remove_flow(keep_queued=True)` lets them go out). Returns how many."""
        seen, flow.tcp_seen = flow.tcp_seen, None
        local = self.netif.ip if flow.family == 4 else self.netif.ip6
        if not seen or local is None:
            return 0
        now = self.clock()
        for end, (nxt, ack) in seen.ends.items():
            dst, dport = end[0], end[1]
            sport = end[2] if len(end) > 2 else flow.lport  # a connector's: each connection's own port
            flags = _RST_ACK if ack is not None else _RST
            seg = pack_segment(pseudo_sum(local, dst), sport, dport, nxt, ack or 0, flags, 0)
            self._send_ip(flow.id, local, dst, TCP, seg, now)
        self.counts["tcp_rst_owner_gone"] += len(seen)
        return len(seen)

    # -- what a flow is told -------------------------------------------------------------------

    def _tx_drop(self, flow: Flow, reason: TxDropReason, length: int) -> None:
        self._last_drop = reason
        self.drops["tx_" + reason.name.lower()] += 1
        flow.stats["tx_dropped"] += 1
        flow.port.pipe.ends[CLIENT].events.post(EventType.TX_DROPPED, reason, value=length)

    def _tx_marked(self, flow: Flow, p: bytes, now: float, gso: int, tx_one: Callable,
                   meta: TxMeta | None, pos: int) -> int:
        """Packet `pos` of a batch on the per-packet path (`tx_one`); if it is marked (`meta`):
        expired, or checked and queued as a TrackedFrame, its drop reported."""
        if meta is None or (mark := meta.marks.get(pos)) is None:
            return tx_one(flow, p, now, gso)
        taken_ns = meta.taken_ns
        if deadline_passed(mark.deadline_ns):
            self._expire(flow, mark, taken_ns)
            return 0
        self._last_drop = 0
        took = tx_one(flow, self._tracked(flow, p, mark, taken_ns), now, gso)
        if not took:
            flow.post_status(TxStatus.DROPPED, mark, taken_ns, self._last_drop)
        return took

    @staticmethod
    def _tracked(flow: Flow, p: bytes, mark: TxMark, taken_ns: int) -> TrackedFrame:
        f = TrackedFrame(p, 0)
        f.key, f.mark, f.taken_ns = flow.id, mark, taken_ns
        return f

    def _expire(self, flow: Flow, mark: TxMark, taken_ns: int) -> None:
        self.drops["tx_expired"] += 1
        flow.stats["tx_expired"] += 1
        flow.post_status(TxStatus.EXPIRED, mark, taken_ns)

    def _frame_status(self, f: TrackedFrame, status: TxStatus, reason: int = 0) -> None:
        """The netif's word on a queued TrackedFrame: sent, expired at the head of its queue, dropped
        there by its AQM (`reason`), or flushed."""
        flow = self.flows.get(f.key)
        if flow is None:
            return  # its flow is gone: nobody to tell
        if status == TxStatus.EXPIRED:
            self._expire(flow, f.mark, f.taken_ns)
        else:
            flow.post_status(status, f.mark, f.taken_ns, reason)

    # -- the queue at the netif ----------------------------------------------------------------

    def _advise(self, flow: Flow) -> None:
        qp, qb = self.netif.queued(flow.id)
        port = flow.port
        if not port.suspended and qp >= self.netif.high_water:
            port.advise(True, qp, qb)
            flow.stats["suspended"] += 1
        elif port.suspended and qp <= self.netif.low_water:
            port.advise(False, qp, qb)

    def flush_flow(self, flow: Flow) -> int:
        """Drop what `flow` has queued at the netif (the client asked: FlushQueue); returns how many.

        Its reported packets get TX_STATUS FLUSHED; a flow suspended for its
        full queue resumes.
        """
        n = self.netif.flush_queue(flow.id)
        flow.stats["tx_flushed"] += n
        self.counts["tx_flushed"] += n
        self._advise(flow)
        return n

    def flush(self) -> int:
        n = self.netif.flush()
        for flow in self.polled:  # a suspended flow stays polled until it resumes (`Domain._park`)
            if flow.port.suspended:
                self._advise(flow)
        if self.netif.aqm_drops:
            self._report_aqm_drops()
        return n

    def _report_aqm_drops(self) -> None:
        """What the netif's AQM dropped since the last report: one TX_DROPPED (QUEUE_DELAY) per flow."""
        drops, self.netif.aqm_drops = self.netif.aqm_drops, {}
        for key, (frames, nbytes) in drops.items():
            self.drops["tx_queue_delay"] += frames
            flow = self.flows.get(key)
            if flow is None:
                continue  # the switch's own frames (ARP, ICMP replies), or a flow gone since
            flow.stats["tx_dropped"] += frames
            flow.port.pipe.ends[CLIENT].events.post(EventType.TX_DROPPED, TxDropReason.QUEUE_DELAY,
                                                    value=frames, aux=nbytes)
