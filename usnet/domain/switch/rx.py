"""The receive path of the flow switch: classify what the netif brings, deliver it to flows.

Classify, then copy into the owning channel's pool and ring its doorbell.
Anything malformed is counted and dropped; nothing from the wire can raise
out of here. With `rx_mitigation`, a general-class flow's bell may be held
(usnet.domain.netif.mitigation); `ring_held` rings the held bells that are
due and says when the next one is.

The common case (option-less, unfragmented IPv4 TCP or UDP to a flow) is
taken in one unpack per frame, or column-wise for a FrameBlock
(`_rx_block`); everything else, IPv6 included, takes the per-frame path
(`_rx_frame`), so IPv4 pays nothing for IPv6. ARP, Neighbour Discovery,
ICMP and ports nobody holds are the host's duties (usnet.domain.switch.host).
Fragments to us (IPv4 and IPv6) are put back together before classification
(a fragment past the first names no ports): bounded memory, per-source
limits (usnet.proto.ip.Reassembler).
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Any

import numpy as np

# np.unique imports numpy.ma on first use (numpy 2.x): a 6-13 ms stall of the service loop the
# first time a batch holds two flows or a channel closes; here it is paid at import
import numpy.ma

from usnet.abi.rxchain import CHAIN_MAX_BYTES
from usnet.domain.switch.host import ETH
from usnet.domain.switch.lllane import LaneRx
from usnet.domain.switch.multicast import MulticastDuties
from usnet.domain.switch.reuseport import ReuseGroup
from usnet.domain.switch.table import ICMP, PORTS, TCP, UDP, Flow
from usnet.drivers import block
from usnet.drivers.base import Coalesced, Received
from usnet.drivers.block import FrameBlock
from usnet.proto.reassembly import Reassembler
from usnet.proto.wire.checksum import verifies
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.ethernet import BROADCAST, ETH_HLEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6
from usnet.proto.wire.gso import headers_len, tcp_segments
from usnet.proto.wire.igmp import IGMP
from usnet.proto.wire.ipv4 import (
    IP_MF,
    IP_OFFMASK,
    IPOPT_SRR,
    IPV4_HLEN,
    build_ipv4_header,
    ipv4_source_route,
    martian_source4,
    parse_ipv4,
)
from usnet.proto.wire.ipv6 import (
    ICMPV6,
    IPV6_HLEN,
    UNSPECIFIED,
    build_ipv6_header,
    martian_source6,
    multicast_mac,
    parse_ipv6,
    skip_ext_headers,
    verify_upper_v6,
)
from usnet.proto.wire.mld import MLD_TYPES
from usnet.proto.wire.rows import be_u16, be_u32, row_sums
from usnet.proto.wire.udp import parse_udp

__all__ = ["ROWWISE_MAX", "ReceivePath"]

# Ethernet dst, src, type; IPv4 version/ihl, total length, flags/fragment, protocol, src, dst; ports
_FAST = struct.Struct("!6s6sHBxH2xHxB2x4s4sHH")
_LANE_SRC = b"\x02\0\0\0\0\0"  # the source MAC of a lane's copy (the lane strips the frame's own)
ROWWISE_MAX = 8  # received blocks of up to this many frames are classified row by row (block.open_small)

# The frame bytes every row of the RX fast path has: destination MAC, EtherType,
# version/IHL, flags/fragment offset with DF masked out, destination address.
_RX_SIG_COLS = np.r_[0:6, 12:15, 20:22, 30:34]
_RX_SIG_MASK = np.array([0xFF] * 9 + [0xBF, 0xFF] + [0xFF] * 4, np.uint8)


class ReceivePath(MulticastDuties):
    """Frames from the device to the flows they belong to, or to the host's duties."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        netif = self.netif
        self.frags: Counter = Counter()  # the reassembler's counts
        self.reasm = Reassembler(self.frags)
        # the multicast MACs of the groups we are in (all-nodes, our solicited-node groups)
        self._macs6 = frozenset(multicast_mac(g) for g in netif.groups6)
        self._rx_sig = np.frombuffer(netif.mac + b"\x08\x00\x45\x00\x00" + netif.ip, np.uint8)
        # what a received frame is held to: its length (a Coalesced frame excepted) and martian sources
        self._rx_max = netif.mtu + ETH_HLEN
        self.lanes: dict[int, LaneRx] = {}  # flow id -> its LL receive lane (usnet.domain.switch.lllane)

    def set_lane(self, flow: Flow, ll: bool) -> bool:
        """The hook of a lease's grant (`ll`) and end: a granted IPv4 flow on a device with a free
        LL queue gets a lane (its frames land in its own pool), kept until the flow goes; at the
        end of the lease the lane's frames take the copying path. True if the flow has a lane."""
        if flow.id in self.lanes:
            return True
        drv: Any = self.netif.driver  # an XdpDriver with an LL queue, or any other (no lane)
        if (not ll or getattr(drv, "ll_queue", None) is None or getattr(drv, "lanes", True)
                or flow.family != 4 or flow.binds is not None or self.netif.ip is None
                or flow.reuse is not None):  # a lane takes its port's every frame: not a shared port's
            return False
        lane = drv.open_lane(flow.proto, flow.lport, flow.port.pipe.arena.shared, LaneRx.umem_size(flow))
        lr = self.lanes[flow.id] = LaneRx(flow, lane, self.counts, self.drops)
        flow.port.pipe.view_holders.insert(0, lambda: self._close_lane(flow))  # before the arena goes
        lr.top_up()
        return True

    def _close_lane(self, flow: Flow) -> None:
        lr = self.lanes.pop(flow.id, None)
        if lr is not None:
            lr.close(self.netif.driver)

    def remove_flow(self, flow: Flow, keep_queued: bool = False) -> None:
        self._close_lane(flow)
        super().remove_flow(flow, keep_queued)

    def _service_lanes(self) -> list[Received]:
        """The LL lanes first: published where they landed, or (copying path) framed copies."""
        netif = self.netif
        out: list[Received] = []
        for fid, lr in self.lanes.items():
            copies = lr.service(fid in netif.ll_keys, netif.ip, self._local4, self._bcast4)
            if copies:
                head = ETH.pack(netif.mac, _LANE_SRC, ETHERTYPE_IPV4)
                out.extend(head + c for c in copies)
        return out

    def service_rx(self, max_frames: int = 256) -> int:
        """Take frames from the device, answer what is ours, deliver the rest to flows."""
        netif = self.netif
        frames = netif.driver.recv_batch(max_frames)
        self.host_read = False  # a new batch: a worker reads usnetd's news of the host's groups again
        if self.lanes:
            copied = self._service_lanes()
            if copied:
                frames = copied + list(frames)
        if not frames:
            return 0
        if block.has_blocks(frames):  # only a wire that carries blocks brings them
            if netif.caps.takes_blocks:
                frames = block.open_small(block.join_runs(frames), ROWWISE_MAX)  # one block a run of them
            total_frames = block.count(frames)
        else:  # single frames (a TAP's, a packet socket's): no block to open, join or count
            total_frames = len(frames)
        now = self.clock()
        netif.rx_frames += total_frames
        if netif.monitors:
            copies = block.expand(frames)
            for m in netif.monitors:
                m.deliver(copies)
        # Each packet a view of its frame: a copy would be a second one (the pool's is the one
        # that counts) and, for a 64 KB super-segment, a fresh heap block that faults its pages in.
        per_flow: dict[Flow, list[Received | memoryview]] = {}
        mymac, myip = netif.mac, netif.ip
        exact, listeners = self.exact, self.listeners
        unpack, from_bytes = _FAST.unpack_from, int.from_bytes
        rx_max, local4, bcast4 = self._rx_max, self._local4, self._bcast4
        for f in frames:
            if type(f) is FrameBlock:
                netif.rx_bytes += f.nbytes()
                if per_flow:  # frames before the block go first: a flow's packets keep their order
                    self._deliver(per_flow)
                self._rx_block(f, now, per_flow)
                continue
            n = len(f)
            netif.rx_bytes += n
            if n >= 38:
                # The common case in one unpack: to us, IPv4 without options, not a
                # fragment, UDP or TCP to a flow, header checksum good, from a unicast
                # MAC and a source that is no martian, within the MTU.
                dmac, smac, etype, vihl, total, ff, proto, sip, dip, sport, dport = unpack(f)
                if (etype == ETHERTYPE_IPV4 and vihl == 0x45 and dmac == mymac and dip == myip
                        and not ff & (IP_MF | IP_OFFMASK) and (proto == UDP or proto == TCP)  # noqa: SIM109 (no tuple per frame)
                        and 24 <= total <= n - ETH_HLEN and verifies(from_bytes(f[14:34], "big"))
                        and not smac[0] & 1 and not martian_source4(from_bytes(sip, "big"), local4, bcast4)
                        and (n <= rx_max or type(f) is Coalesced)):
                    flow = exact.get((proto, dport, sip, sport)) or listeners.get((proto, dport))
                    if flow is not None:
                        lst = per_flow.get(flow)
                        if lst is None:
                            lst = per_flow[flow] = []
                        if n > rx_max and total > flow.port.stride:  # a super-segment bigger than its packets
                            self._too_big(flow, memoryview(f)[ETH_HLEN : ETH_HLEN + total], lst)
                        else:
                            lst.append(memoryview(f)[ETH_HLEN : ETH_HLEN + total])
                        continue
            try:
                self._rx_frame(f, now, per_flow)
            except (WireError, struct.error, ValueError, IndexError) as e:
                self.drops["rx_malformed"] += 1
                self.counts["last_error:" + type(e).__name__] = 1
        self._deliver(per_flow)
        return total_frames

    def _deliver(self, per_flow: dict[Flow, list[Received | memoryview]]) -> None:
        """Hand each flow the packets gathered for it, and forget them."""
        for flow, pkts in per_flow.items():
            if flow.group is not None:  # a shared port's front (SO_REUSEPORT): per batch, not per packet
                self._deliver_group(flow.group, pkts)
                continue
            n = flow.port.deliver(pkts)
            stats = flow.stats
            stats["rx_packets"] += n
            offered = len(pkts)
            stats["rx_bytes"] += sum(map(len, pkts[:n]))  # IP bytes (metrics; once a batch)
            if n < offered:
                stats["rx_dropped"] += offered - n
                self.drops["rx_stalled" if flow.port.stalled else "rx_client_full"] += offered - n
        per_flow.clear()

    def _deliver_group(self, g: ReuseGroup, pkts: list[Received | memoryview]) -> None:
        """A shared port's packets, each to the member its remote end hashes to; a new TCP
        connection's SYN pins its 4-tuple to that member (usnet.domain.switch.reuseport)."""
        out: dict[Flow, list[Received | memoryview]] = {}
        exact = self.exact
        for p in pkts:
            m = self._member_for(g, p, exact)
            lst = out.get(m)
            if lst is None:
                lst = out[m] = []
            if len(p) > m.port.stride:
                self._too_big(m, memoryview(p), lst)
            else:
                lst.append(p)
        self._deliver(out)  # members only: none of them is a front

    @staticmethod
    def _member_for(g: ReuseGroup, p: Received | memoryview, exact: dict) -> Flow:
        """The member an IP packet to a shared port goes to; an ICMP error about a datagram the
        port sent goes to the member the quoted remote end hashes to (the first if unreadable)."""
        try:
            if p[0] >> 4 == 4:
                start, raddr, proto = (p[0] & 0xF) << 2, bytes(p[12:16]), p[9]
            else:
                raddr = bytes(p[8:24])
                proto, start, _ = skip_ext_headers(p, IPV6_HLEN, len(p), p[6])
            if proto == TCP or proto == UDP:  # noqa: SIM109
                sport = p[start] << 8 | p[start + 1]
                m = g.pick(raddr, sport)
                if proto == TCP and p[start + 13] & 0x12 == 0x02:  # a SYN without ACK: a new connection
                    g.pin(exact, (TCP, p[start + 2] << 8 | p[start + 3], raddr, sport), m)
                return m
            q = start + 8  # ICMP/ICMPv6 error: the quoted packet, ours, to the remote end
            if proto == ICMP and p[q] >> 4 == 4:
                ql4 = q + ((p[q] & 0xF) << 2)
                return g.pick(bytes(p[q + 16 : q + 20]), p[ql4 + 2] << 8 | p[ql4 + 3])
            if proto == ICMPV6 and p[q] >> 4 == 6:
                return g.pick(bytes(p[q + 24 : q + 40]), p[q + 42] << 8 | p[q + 43])
        except (IndexError, WireError):
            pass
        return g.members[0]

    def _rx_block(self, blk: FrameBlock, now: float, per_flow: dict) -> None:
        """A FrameBlock from the wire: the common case column-wise, straight into pools.

        Rows that are not an option-less, unfragmented IPv4 TCP/UDP packet to
        us with a good header checksum, or that match no flow, take the
        per-frame path (ARP, ICMP, errors, counters).
        """
        d, lens = blk.data, blk.lens
        if d.shape[1] < ETH_HLEN + 24:
            ok = np.zeros(len(lens), bool)
        else:
            total = be_u16(d[:, 16:18])
            proto = d[:, 23]
            # our MAC, IPv4, version/IHL 0x45, not a fragment, our address: one comparison
            ok = (d[:, _RX_SIG_COLS] & _RX_SIG_MASK == self._rx_sig).all(axis=1)
            ok &= ((proto == UDP) | (proto == TCP)) & (total >= 24) & (total + ETH_HLEN <= lens)
            ok &= row_sums(d[:, 14:34]) == 0
            # within the MTU, from a unicast MAC, from no martian: the per-frame path counts the rest
            ok &= (lens <= self._rx_max) & (d[:, 6] & 1 == 0)
            ok &= ~martian_source4(be_u32(d[:, 26:30]), self._local4, self._bcast4)
            # source address and both ports in one word per row, grouped per protocol
            key = be_u32(d[:, 26:30]).astype(np.uint64) << 32 | be_u32(d[:, 34:38])
            for pr in (UDP, TCP):
                m = ok & (proto == pr)
                if not m.any():
                    continue
                for flow, sel in self._rows_by_flow(pr, key, m):
                    if flow is None:
                        ok &= ~sel  # the per-frame path counts it and answers port unreachable
                        continue
                    if flow.group is not None:  # a shared port (SO_REUSEPORT): its rows split
                        self._rows_to_group(flow.group, d, sel, total, pr)
                        continue
                    if sel.all():
                        rows, ln = d, total
                    else:
                        rows, ln = d[sel], total[sel]
                    got = flow.port.deliver_rows(rows, ETH_HLEN, ln)
                    flow.stats["rx_packets"] += got
                    flow.stats["rx_bytes"] += int(ln[:got].sum())
                    if got < len(ln):
                        flow.stats["rx_dropped"] += len(ln) - got
                        self.drops["rx_stalled" if flow.port.stalled else "rx_client_full"] += len(ln) - got
        if not ok.all():
            for i in np.flatnonzero(~ok).tolist():
                try:
                    self._rx_frame(d[i, : int(lens[i])].tobytes(), now, per_flow)
                except (WireError, struct.error, ValueError, IndexError) as e:
                    self.drops["rx_malformed"] += 1
                    self.counts["last_error:" + type(e).__name__] = 1

    def _rows_to_group(self, g: ReuseGroup, d: np.ndarray, sel: np.ndarray, total: np.ndarray, pr: int) -> None:
        """The rows `sel` of a block (IPv4, no options) to a shared port, each to its member, as
        `_deliver_group` does frame by frame."""
        idx = np.flatnonzero(sel)
        by: dict[Flow, list[int]] = {}
        exact = self.exact
        for i in idx.tolist():
            r = d[i]
            raddr, sport = r[26:30].tobytes(), int(r[34]) << 8 | int(r[35])
            m = g.pick(raddr, sport)
            if pr == TCP and int(r[47]) & 0x12 == 0x02:  # a SYN without ACK: a new connection
                g.pin(exact, (TCP, int(r[36]) << 8 | int(r[37]), raddr, sport), m)
            by.setdefault(m, []).append(i)
        for m, rows_i in by.items():
            ix = np.array(rows_i, np.intp)
            ln = total[ix]
            got = m.port.deliver_rows(d[ix], ETH_HLEN, ln)
            m.stats["rx_packets"] += got
            m.stats["rx_bytes"] += int(ln[:got].sum())
            if got < len(ln):
                m.stats["rx_dropped"] += len(ln) - got
                self.drops["rx_stalled" if m.port.stalled else "rx_client_full"] += len(ln) - got

    def _rows_by_flow(self, pr: int, key: np.ndarray, m: np.ndarray) -> list[tuple[Flow | None, np.ndarray]]:
        """The rows `m` of protocol `pr` grouped by the flow each goes to (None: no flow), as
        (flow, mask), each flow once (in the order of their smallest key).

        `key`: each row's source address and both ports. Each distinct key is
        looked up once; then one mask per flow, so many remote ends talking to
        one listener (a block joined from many senders' flows) cost a
        look-up each and one pass, not a pass each.
        """
        ks = key[m]
        if (ks == ks[0]).all():
            uniq, inv = ks[:1], None
        else:
            uniq, inv = np.unique(ks, return_inverse=True)
        exact, listeners = self.exact, self.listeners
        found: list[Flow | None] = []
        for k in uniq.tolist():
            found.append(exact.get((pr, k & 0xFFFF, (k >> 32).to_bytes(4, "big"), k >> 16 & 0xFFFF))
                         or listeners.get((pr, k & 0xFFFF)))
        first = found[0]
        if inv is None or all(f is first for f in found):
            return [(first, m)]
        codes: dict[int, int] = {}
        flows: list[Flow | None] = []
        for f in found:
            if codes.setdefault(id(f), len(flows)) == len(flows):
                flows.append(f)
        code = np.full(len(key), -1, np.int64)
        code[m] = np.array([codes[id(f)] for f in found], np.int64)[inv.ravel()]
        return [(f, code == j) for j, f in enumerate(flows)]

    def ring_held(self) -> float | None:
        """Ring the held receive bells that are due; seconds until the next one is (None: none held).

        The domain loop calls this on every pass and sleeps no longer than it says.
        """
        held = self._held_bells
        if not held:
            return None
        now = self.clock()
        nxt: float | None = None
        for port in list(held):
            mit = port.mitigation  # a port is listed only once enable_mitigation gave it one
            if mit is None or mit.deadline is None:  # rung as packets came, or the client woke up on its own
                del held[port]
            elif mit.due(now):
                del held[port]
                port.ring_held()
            elif nxt is None or mit.deadline < nxt:
                nxt = mit.deadline
        return None if nxt is None else max(0.0, nxt - now)

    def _rx_frame(self, f: Received, now: float, per_flow: dict) -> None:
        if len(f) < ETH_HLEN:
            self.drops["rx_runt"] += 1
            return
        if len(f) > self._rx_max and type(f) is not Coalesced:
            self.drops["rx_oversize"] += 1  # longer than the MTU, and the device did not make it so
            return
        dst, src, etype = ETH.unpack_from(f)
        if dst != self.netif.mac and dst != BROADCAST and dst not in self._macs6 and dst not in self.groups.macs \
                and not self.is_group_mac(dst):
            self.drops["rx_not_our_mac"] += 1
            return
        if src[0] & 1:
            self.drops["rx_bad_mac_source"] += 1  # a group address never sends (IEEE 802.3)
            return
        if etype == ETHERTYPE_IPV4:
            self._rx_ip(f, now, per_flow)
        elif etype == ETHERTYPE_ARP:
            self._rx_arp(f, src, now)
        elif etype == ETHERTYPE_IPV6 and self.netif.ip6 is not None:
            self._rx_ip6(f, src, now, per_flow)
        else:
            self.drops["rx_ethertype"] += 1

    def _rx_ip(self, f: Received, now: float, per_flow: dict, wire: bool = True) -> None:
        """An IPv4 frame the fast path did not take: fragments, ICMP, broadcasts, errors, counters.

        `wire` False: a packet of this domain's own, to one of our addresses
        (usnet.domain.switch.local), whose source is ours by right.
        """
        ihl, total, ident, ff, ttl, proto, src, dst = parse_ipv4(f, ETH_HLEN)
        netif = self.netif
        group = dst[0] >> 4 == 14  # multicast: taken only while the netif is in the group
        if dst != netif.ip and dst != netif.broadcast and dst != b"\xff\xff\xff\xff" and not (
                group and self.is_joined(dst)):
            self.drops["rx_not_our_ip"] += 1
            return
        if wire and martian_source4(int.from_bytes(src, "big"), self._local4, self._bcast4):
            self.drops["rx_martian_source"] += 1  # answered, it would go to broadcast, loopback, us
            return
        if ihl > IPV4_HLEN:
            why = ipv4_source_route(f, ETH_HLEN, ihl)
            if why:  # as a Linux host (accept_source_route=0): a source route, or options that do not parse
                self.drops["rx_source_route" if why == IPOPT_SRR else "rx_bad_ip_options"] += 1
                return
        if ff & (IP_MF | IP_OFFMASK):
            if dst != netif.ip and not group:
                self.drops["rx_fragment"] += 1  # a broadcast datagram in pieces: not put back (as Linux)
                return
            # keyed as Linux's ip_defrag: (source, destination, protocol, identification), so a
            # group's datagram and a unicast one of the same identification stay apart
            r = self.reasm.add((src, dst, proto, ident), src, (ff & IP_OFFMASK) << 3,
                               f[ETH_HLEN + ihl : ETH_HLEN + total], bool(ff & IP_MF), now, False, 0xFFFF - IPV4_HLEN)
            if r is None:
                return  # a piece kept, or refused (the reassembler counts which, in `frags`)
            pieces, part = r
            # the whole datagram behind a header without options, as the sender's stack built it
            f = b"".join([f[:ETH_HLEN], build_ipv4_header(src, dst, proto, part.total, ident, ttl, False,
                                                          f[ETH_HLEN + 1]), *pieces])
            ihl, total = IPV4_HLEN, IPV4_HLEN + part.total
        start = ETH_HLEN + ihl
        end = ETH_HLEN + total
        if self._handed_over(proto, f, start, end, not wire):  # from the wire, or our own (any worker's port)
            return
        if group:
            self._rx_group(f, proto, start, end, src, dst, per_flow)
            return
        if proto == ICMP:
            self._rx_icmp(f, start, end, src, dst, per_flow)
            return
        if proto not in (UDP, TCP) or end - start < 4:
            self.drops["rx_no_flow"] += 1
            return
        if proto == TCP and dst != netif.ip:
            self.drops["rx_tcp_not_unicast"] += 1  # TCP is unicast only (Linux: PACKET_HOST only)
            return
        sport, dport = PORTS.unpack_from(f, start)
        flow = self.lookup(proto, dport, src, sport)
        self._to_flow(flow, proto, f, start, end, src, dst, dst == netif.ip, now, per_flow)

    def _handed_over(self, proto: int, f: Received, start: int, end: int, looped: bool = False) -> bool:
        """A UDP or TCP datagram whose port another worker serves, handed to that worker
        (`hand_over`, set by usnet.domain.workers). Under `usnetd --workers N` the device steers
        by port only what shows it: every fragment (only the first names ports; here it has been
        put back together) and IPv6 with an extension header come to queue 0, usnetd's, whatever
        their port. Unicast or to a group: a group's members and MC_ALL listeners all hold its
        port, so they are all that worker's. `looped`: not from the wire but from the local queue
        (usnet.domain.switch.local): a group datagram a flow here sent with IP_MULTICAST_LOOP, whose
        members are likewise all the port's worker's, or a datagram or segment a flow sent to the
        netif's own address, whose port may be another worker's (as two sockets of one Linux host
        talk through its address whatever their CPUs). The slow path only: what the fast path took
        was a flow's here."""
        if self.hand_over is None or (proto != UDP and proto != TCP) or end - start < 4:
            return False
        return self.hand_over(int.from_bytes(f[start + 2 : start + 4], "big"), f, looped)

    def rx_whole(self, f: bytes) -> None:
        """A datagram another worker of usnetd put back together for a port of ours (`_handed_over`
        there), as an Ethernet frame: taken as if it came whole off the wire, past the MTU check
        (it is the reassembler's, not the device's) and the MAC (the frame's first fragment's)."""
        per_flow: dict[Flow, list[Received | memoryview]] = {}
        etype = int.from_bytes(f[12:14], "big") if len(f) >= ETH_HLEN else 0
        try:
            if etype == ETHERTYPE_IPV4:
                self._rx_ip(f, self.clock(), per_flow)
            elif etype == ETHERTYPE_IPV6 and self.netif.ip6 is not None:
                self._rx_ip6(f, f[6:12], self.clock(), per_flow)
            else:
                self.drops["rx_ethertype"] += 1
        except (WireError, struct.error, ValueError, IndexError):
            self.drops["rx_malformed"] += 1
        self._deliver(per_flow)

    def _rx_group(self, f: Received, proto: int, start: int, end: int, src: bytes, dst: bytes,
                  per_flow: dict) -> None:
        """A packet to a group the netif is in (either family; IPv6's ICMPv6, MLD among it, went its
        own way before): IGMP to the host's duty; a UDP datagram into each
        member's batch, the same bytes for all (each member's port copies them into its own pool,
        usnet.domain.switch.multicast); anything else, or nobody's, counted."""
        if proto == IGMP and len(dst) == 4:
            self._rx_igmp(f, start, end, dst)
            return
        if proto != UDP or end - start < 8:
            self.drops["rx_group_not_udp"] += 1
            return
        sport, dport = PORTS.unpack_from(f, start)
        members = self.members_for(dst, dport, src, sport)
        if not members:
            self.drops["rx_group_no_member"] += 1
            return
        self.counts["rx_group_datagrams"] += 1
        for m in members:
            self._to_flow(m, proto, f, start, end, src, dst, False, 0.0, per_flow)

    def _rx_ip6(self, f: Received, src_mac: bytes, now: float, per_flow: dict, wire: bool = True) -> None:
        """An IPv6 frame: Neighbour Discovery and echo are ours, TCP and UDP go to flows (`wire`: as `_rx_ip`)."""
        _tc, _fl, plen, nh, hop, src, dst = parse_ipv6(f, ETH_HLEN)
        netif = self.netif
        if dst not in netif.addrs6 and dst not in netif.groups6 and not (
                dst[0] == 0xFF and self.is_joined(dst)):
            self.drops["rx_not_our_ip"] += 1
            return
        if wire and martian_source6(src, netif.addrs6):
            self.drops["rx_martian_source"] += 1
            return
        end = ETH_HLEN + IPV6_HLEN + plen
        proto, start, frag = skip_ext_headers(f, ETH_HLEN + IPV6_HLEN, end, nh)
        if frag is not None:
            _, foff, more, ident = frag
            if foff or more:  # an atomic fragment (RFC 6946) is whole already
                if dst != netif.ip6 and dst[0] != 0xFF:
                    self.drops["rx_fragment"] += 1  # to the link-local address: no flow has it
                    return
                # strict: pieces that overlap at all drop the datagram (RFC 5722); keyed with the
                # destination, as Linux's ip6_frag_queue
                r = self.reasm.add((6, src, dst, ident), src, foff, f[start:end], more, now, True, 0xFFFF,
                                   first=b"" if foff == 0 else None, meta=proto)
                if r is None:
                    return
                pieces, part = r
                if part.meta is None:  # cannot happen: fragment zero was kept with its next header
                    self.drops["rx_fragment"] += 1
                    return
                f = b"".join([f[:ETH_HLEN], build_ipv6_header(src, dst, part.meta, part.total, hop), *pieces])
                end = len(f)
                proto, start, frag = skip_ext_headers(f, ETH_HLEN + IPV6_HLEN, end, part.meta, first=False)
                if frag is not None:
                    self.drops["rx_fragment"] += 1  # a fragment inside a fragment
                    return
        if proto == ICMPV6:
            if end - start >= 4 and f[start] in MLD_TYPES:
                self._rx_mld(f, start, end, src, dst, hop)  # usnet.domain.switch.multicast
            else:
                self._rx_icmp6(f, start, end, src, dst, hop, src_mac, now, per_flow)
            return
        if src == UNSPECIFIED:
            self.drops["rx_martian_source"] += 1  # only Neighbour Discovery (DAD) may come from ::
            return
        if self._handed_over(proto, f, start, end, not wire):
            return
        if dst[0] == 0xFF:
            self._rx_group(f, proto, start, end, src, dst, per_flow)  # a group's: UDP to its members
            return
        if proto not in (UDP, TCP) or end - start < 4:
            self.drops["rx_no_flow"] += 1
            return
        sport, dport = PORTS.unpack_from(f, start)
        flow = None
        if dst == netif.ip6:  # flows have the global address; the link-local one has no ports
            flow = self.lookup(proto, dport, src, sport)
        self._to_flow(flow, proto, f, start, end, src, dst, True, now, per_flow)

    def _to_flow(self, flow: Flow | None, proto: int, f: Received, start: int, end: int, src: bytes, dst: bytes,
                 answer: bool, now: float, per_flow: dict) -> None:
        """The end of either family's per-frame path: the packet to its flow, or nobody's: counted,
        and if `answer` (unicast to us), answered as a host does."""
        if flow is None:
            bad = self._bad_udp(f, start, end, src, dst) if proto == UDP else None
            if bad is not None:
                self.drops[bad] += 1  # nobody's, and damaged: no ICMP about it (as Linux)
                return
            self.drops["rx_no_flow"] += 1
            if answer:
                self._no_socket(proto, f, start, end, src, dst, now)
            return
        lst = per_flow.get(flow)
        if lst is None:
            lst = per_flow[flow] = []
        if end - ETH_HLEN > flow.port.stride:  # a super-segment, or a reassembled datagram, too big for its packets
            self._too_big(flow, memoryview(f)[ETH_HLEN:end], lst)
        else:
            lst.append(f[ETH_HLEN:end])

    def _too_big(self, flow: Flow, pkt: memoryview, lst: list) -> None:
        """A packet longer than the flow's packets: cut to fit if it is TCP, else dropped.

        The device made it (a `Coalesced` super-segment: GRO, a TAP's GSO, a
        veth's TSO) or the reassembler did; the flow's packets are smaller (a
        packet netif's TCP flows, a client that chose small packets). Dropped,
        a TCP super-segment would come back whole with every retransmission
        and the connection would never move; so it is cut as the sender's own
        GSO would have cut it (usnet.proto.wire.gso), each segment's payload
        the packet size less the headers, a multiple of 8 bytes, and the
        segments join the flow's batch in its place. A UDP flow's datagram
        the reassembler made (up to 65,535 bytes of IP payload) goes whole:
        the port copies it into consecutive packets, flagged as one chain
        (usnet.abi.rxchain), so nothing Linux would receive is lost for want
        of a bigger packet; a device's `Coalesced` frame is TCP by its
        contract (TSO/GRO only), so a UDP one is no datagram. What cannot be
        cut or chained is dropped as `rx_too_big`.
        """
        if flow.proto == UDP and len(pkt) <= CHAIN_MAX_BYTES and type(pkt.obj) is not Coalesced:
            self.counts["rx_chained"] += 1  # datagrams delivered over several packets
            lst.append(pkt)
            return
        try:
            segs = tcp_segments(pkt, (flow.port.stride - headers_len(pkt)) & ~7)
        except WireError:
            self.drops["rx_too_big"] += 1
            flow.stats["rx_dropped"] += 1
            return
        self.counts["rx_resegmented"] += 1  # super-segments cut
        self.counts["rx_resegmented_packets"] += len(segs)  # the packets they made
        lst.extend(segs)

    @staticmethod
    def _bad_udp(f: Received, start: int, end: int, src: bytes, dst: bytes) -> str | None:
        """Why a UDP datagram nobody listens for is damaged (a drop reason), or None if it is sound.

        As Linux's __udp4_lib_rcv / __udp6_lib_rcv before they send port
        unreachable: a length field under 8 or past the IP payload is
        `rx_udp_bad_length`; a wrong checksum, or none over IPv6 (RFC 8200
        §8.1), is `rx_udp_csum_error` (Linux's InCsumErrors). Only a sound
        datagram earns an ICMP error.
        """
        ulen = int.from_bytes(f[start + 4 : start + 6], "big") if end - start >= 8 else 0
        if ulen < 8 or ulen > end - start:
            return "rx_udp_bad_length"
        if len(src) == 4:
            try:
                parse_udp(f, start, ulen, src, dst)
            except WireError:
                return "rx_udp_csum_error"
            return None
        if f[start + 6 : start + 8] == b"\x00\x00" or not verify_upper_v6(f, start, ulen, src, dst, UDP):
            return "rx_udp_csum_error"
        return None
