"""The flow switch: the multiplexer between one netif and many applications (DESIGN §5).

It owns the link layer for its clients: ARP (answers for its address,
resolves neighbours), Ethernet framing, ICMP echo replies for its address.
Clients hand it IP packets and receive IP packets.

* Flows: a listener matches (protocol, local port); a connected flow matches
  the full 5-tuple and wins over a listener.
* Transmit: each packet is copied out of the client's pool once (FlowPort),
  and the copy is checked against the flow entry: a well-formed IPv4 header,
  the flow's protocol, source address and port, and for a connected flow its
  destination. A packet that fails is dropped, counted by reason, and reported
  on the client's event ring: no client can send as another.
* Receive: classify, then copy into the owning channel's pool and ring its
  doorbell. Anything malformed is counted and dropped; nothing from the wire
  can raise out of here.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from usnet.channel.events import EventType, TxDropReason
from usnet.drivers import block
from usnet.drivers.block import FrameBlock
from usnet.nexus.arp import ArpCache
from usnet.nexus.flowport import CLIENT, FlowPort
from usnet.nexus.netif import Netif
from usnet.nexus.ports import PortSpace, host_owns
from usnet.stack.tcp.connection import rst_reply
from usnet.wire import arp as warp
from usnet.wire import icmp as wicmp
from usnet.wire import tcp as wtcp
from usnet.wire.errors import WireError
from usnet.wire.ethernet import BROADCAST, ETH_HLEN, ETHERTYPE_ARP, ETHERTYPE_IPV4
from usnet.wire.ipv4 import IP_MF, IP_OFFMASK, build_ipv4_header, ip_str, parse_ipv4
from usnet.wire.rows import be_u16, be_u32, row_sums

_ETH = struct.Struct("!6s6sH")
_PORTS = struct.Struct("!HH")
# Ethernet dst, src, type; IPv4 version/ihl, total length, flags/fragment, protocol, src, dst; ports
_FAST = struct.Struct("!6s6sHBxH2xHxB2x4s4sHH")
_IPFIX = struct.Struct("!BxH4xBB2x4s4s")  # version/ihl, total length, ttl, protocol, src, dst
ICMP, TCP, UDP = 1, 6, 17
TX_BATCH = 512


# The frame bytes every row of the RX fast path has: destination MAC, EtherType,
# version/IHL, flags/fragment offset with DF masked out, destination address.
_RX_SIG_COLS = np.r_[0:6, 12:15, 20:22, 30:34]
_RX_SIG_MASK = np.array([0xFF] * 9 + [0xBF, 0xFF] + [0xFF] * 4, np.uint8)


@dataclass(eq=False)
class Flow:
    id: int
    proto: int
    lport: int
    raddr: bytes | None
    rport: int | None
    port: FlowPort
    channel: int = 0
    stats: Counter = field(default_factory=Counter)
    parked: int = 0  # packets waiting for a neighbour: the flow is not served meanwhile
    raddr_int: int = 0

    def __post_init__(self) -> None:
        if self.raddr is not None:
            self.raddr_int = int.from_bytes(self.raddr, "big")
        self._tx_sig: tuple[np.ndarray, np.ndarray] | None = None

    def tx_signature(self, local_ip: bytes) -> tuple[np.ndarray, np.ndarray]:
        """(columns, values) every packet of this flow has in its first 24 bytes.

        Version/IHL 0x45, the flow's protocol, the local address and port, and
        for a connected flow the remote address and port: what the switch
        checks column-wise in one comparison.
        """
        if self._tx_sig is None:
            sig = {0: 0x45, 9: self.proto, 20: self.lport >> 8, 21: self.lport & 0xFF}
            sig.update({12 + i: b for i, b in enumerate(local_ip)})
            if self.raddr is not None:
                sig.update({16 + i: b for i, b in enumerate(self.raddr)})
                sig.update({22: self.rport >> 8, 23: self.rport & 0xFF})
            self._tx_sig = (np.array(list(sig), np.intp), np.array(list(sig.values()), np.uint8))
        return self._tx_sig

    def key(self) -> tuple:
        if self.raddr is None:
            return (self.proto, self.lport)
        return (self.proto, self.lport, self.raddr, self.rport)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "channel": self.channel, "proto": {6: "tcp", 17: "udp"}.get(self.proto, self.proto),
                "local_port": self.lport,
                "remote": None if self.raddr is None else f"{ip_str(self.raddr)}:{self.rport}",
                "suspended": self.port.suspended, "stats": dict(self.stats)}


class FlowSwitch:
    def __init__(self, netif: Netif, ports: PortSpace | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.netif = netif
        self.ports = ports or PortSpace()
        self.clock = clock
        self.arp = ArpCache()
        self.flows: dict[int, Flow] = {}
        self.exact: dict[tuple, Flow] = {}
        self.listeners: dict[tuple, Flow] = {}
        self.drops: Counter = Counter()
        self.counts: Counter = Counter()
        self._ids = itertools.count(1)
        self._ident = 0
        self._host_addr = netif.ip_str if host_owns(netif.ip_str) else None
        self._rx_sig = np.frombuffer(netif.mac + b"\x08\x00\x45\x00\x00" + netif.ip, np.uint8)
        self._src_and_type = np.frombuffer(netif.mac + ETHERTYPE_IPV4.to_bytes(2, "big"), np.uint8)

    # -- flows ---------------------------------------------------------------------------

    def add_flow(self, proto: int, lport: int, raddr: bytes | None, rport: int | None,
                 port: FlowPort, channel: int = 0) -> Flow:
        """Register a flow; reserves its local port (PortInUse if taken)."""
        if proto not in (TCP, UDP):
            raise ValueError(f"flows carry TCP or UDP, not protocol {proto}")
        if (raddr is None) != (rport is None):
            raise ValueError("a connected flow needs both remote address and port")
        fid = next(self._ids)
        lport = self.ports.reserve(proto, lport, fid, self._host_addr)
        flow = Flow(fid, proto, lport, raddr, rport, port, channel)
        self.flows[fid] = flow
        (self.exact if raddr is not None else self.listeners)[flow.key()] = flow
        return flow

    def remove_flow(self, flow: Flow, keep_queued: bool = False) -> None:
        """Unregister a flow and free its port; its queued frames still leave if `keep_queued`."""
        if self.flows.pop(flow.id, None) is None:
            return
        table = self.exact if flow.raddr is not None else self.listeners
        table.pop(flow.key(), None)
        self.ports.release(flow.proto, flow.lport)
        if not keep_queued:
            self.netif.drop_queue(flow.id)

    # -- receive ---------------------------------------------------------------------------

    def service_rx(self, max_frames: int = 256) -> int:
        """Take frames from the device, answer what is ours, deliver the rest to flows."""
        frames = self.netif.driver.recv_batch(max_frames)
        if not frames:
            return 0
        now = self.clock()
        netif = self.netif
        total_frames = block.count(frames)
        netif.rx_frames += total_frames
        if netif.monitors:
            copies = block.expand(frames)
            for m in netif.monitors:
                m.deliver(copies)
        per_flow: dict[Flow, list[bytes]] = {}
        mymac, myip = netif.mac, netif.ip
        exact, listeners = self.exact, self.listeners
        unpack, from_bytes = _FAST.unpack_from, int.from_bytes
        for f in frames:
            if type(f) is FrameBlock:
                netif.rx_bytes += f.nbytes()
                self._rx_block(f, now, per_flow)
                continue
            n = len(f)
            netif.rx_bytes += n
            if n >= 38:
                # The common case in one unpack: to us, IPv4 without options, not a
                # fragment, UDP or TCP to a flow, header checksum good.
                dmac, _s, etype, vihl, total, ff, proto, sip, dip, sport, dport = unpack(f)
                if (etype == ETHERTYPE_IPV4 and vihl == 0x45 and dmac == mymac and dip == myip
                        and not ff & (IP_MF | IP_OFFMASK) and (proto == UDP or proto == TCP)
                        and 24 <= total <= n - ETH_HLEN and not from_bytes(f[14:34], "big") % 0xFFFF):
                    flow = exact.get((proto, dport, sip, sport)) or listeners.get((proto, dport))
                    if flow is not None:
                        lst = per_flow.get(flow)
                        if lst is None:
                            lst = per_flow[flow] = []
                        lst.append(f[ETH_HLEN : ETH_HLEN + total])
                        continue
            try:
                self._rx_frame(f, now, per_flow)
            except (WireError, struct.error, ValueError, IndexError) as e:
                self.drops["rx_malformed"] += 1
                self.counts["last_error:" + type(e).__name__] = 1
        for flow, pkts in per_flow.items():
            n = flow.port.deliver(pkts)
            flow.stats["rx_packets"] += n
            if n < len(pkts):
                flow.stats["rx_dropped"] += len(pkts) - n
                self.drops["rx_client_full"] += len(pkts) - n
        return total_frames

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
            # source address and both ports in one word per row, grouped per protocol
            key = be_u32(d[:, 26:30]).astype(np.uint64) << 32 | be_u32(d[:, 34:38])
            for pr in (UDP, TCP):
                m = ok & (proto == pr)
                if not m.any():
                    continue
                ks = key[m]
                uniq = [ks[0]] if (ks == ks[0]).all() else np.unique(ks)
                for k in uniq:
                    sel = m if len(uniq) == 1 else m & (key == k)
                    k = int(k)
                    flow = (self.exact.get((pr, k & 0xFFFF, (k >> 32).to_bytes(4, "big"), k >> 16 & 0xFFFF))
                            or self.listeners.get((pr, k & 0xFFFF)))
                    if flow is None:
                        ok &= ~sel  # the per-frame path counts it and answers port unreachable
                        continue
                    if sel.all():
                        rows, ln = d, total
                    else:
                        rows, ln = d[sel], total[sel]
                    got = flow.port.deliver_rows(rows, ETH_HLEN, ln)
                    flow.stats["rx_packets"] += got
                    if got < len(ln):
                        flow.stats["rx_dropped"] += len(ln) - got
                        self.drops["rx_client_full"] += len(ln) - got
        if not ok.all():
            for i in np.flatnonzero(~ok).tolist():
                try:
                    self._rx_frame(d[i, : int(lens[i])].tobytes(), now, per_flow)
                except (WireError, struct.error, ValueError, IndexError) as e:
                    self.drops["rx_malformed"] += 1
                    self.counts["last_error:" + type(e).__name__] = 1

    def _rx_frame(self, f: bytes, now: float, per_flow: dict) -> None:
        if len(f) < ETH_HLEN:
            self.drops["rx_runt"] += 1
            return
        dst, src, etype = _ETH.unpack_from(f)
        if dst != self.netif.mac and dst != BROADCAST:
            self.drops["rx_not_our_mac"] += 1
            return
        if etype == ETHERTYPE_IPV4:
            self._rx_ip(f, now, per_flow)
        elif etype == ETHERTYPE_ARP:
            self._rx_arp(f, src, now)
        else:
            self.drops["rx_ethertype"] += 1

    def _rx_arp(self, f: bytes, src_mac: bytes, now: float) -> None:
        op, sha, spa, tha, tpa = warp.parse_arp(f, ETH_HLEN)
        if sha != src_mac or sha == BROADCAST or sha[0] & 1:
            self.drops["arp_bogus_sender"] += 1
            return
        if tpa != self.netif.ip:
            self.drops["arp_not_for_us"] += 1
            return
        self.counts["arp_rx"] += 1
        for key, packet in self.arp.learn(spa, sha, now):
            flow = self.flows.get(key)
            if flow is not None:
                flow.parked -= 1
            self._emit(key, sha, packet)
        if op == warp.ARP_REQUEST:
            self._send_frame(0, sha, ETHERTYPE_ARP,
                             warp.build_arp(warp.ARP_REPLY, self.netif.mac, self.netif.ip, sha, spa))

    def _rx_ip(self, f: bytes, now: float, per_flow: dict) -> None:
        ihl, total, _ident, ff, _ttl, proto, src, dst = parse_ipv4(f, ETH_HLEN)
        netif = self.netif
        if dst != netif.ip and dst != netif.broadcast and dst != b"\xff\xff\xff\xff":
            self.drops["rx_not_our_ip"] += 1
            return
        if ff & (IP_MF | IP_OFFMASK):
            self.drops["rx_fragment"] += 1  # reassembly belongs to the client stack (next issue)
            return
        start = ETH_HLEN + ihl
        end = ETH_HLEN + total
        if proto == ICMP:
            self._rx_icmp(f, start, end, src, dst)
            return
        if proto not in (UDP, TCP) or end - start < 4:
            self.drops["rx_no_flow"] += 1
            return
        sport, dport = _PORTS.unpack_from(f, start)
        flow = self.exact.get((proto, dport, src, sport)) or self.listeners.get((proto, dport))
        if flow is None:
            self.drops["rx_no_flow"] += 1
            if dst == netif.ip:
                self._no_socket(proto, f, start, end, src, now)
            return
        lst = per_flow.get(flow)
        if lst is None:
            lst = per_flow[flow] = []
        lst.append(f[ETH_HLEN:end])

    def _no_socket(self, proto: int, f: bytes, start: int, end: int, src: bytes, now: float) -> None:
        """Nobody has this port: answer as a host does (UDP: port unreachable, TCP: RST)."""
        if proto == UDP:
            self._send_ip(0, src, ICMP, wicmp.build_dest_unreach(wicmp.PORT_UNREACH, f[ETH_HLEN:end]), now)
            return
        try:
            seg = wtcp.parse_tcp(f, start, end - start, src, self.netif.ip)
        except WireError:
            return  # a bad segment earns no answer
        rst = rst_reply(wtcp.pseudo_sum(self.netif.ip, src), seg)
        if rst is not None:
            self.counts["tcp_rst_sent"] += 1
            self._send_ip(0, src, TCP, rst, now)

    def _rx_icmp(self, f: bytes, start: int, end: int, src: bytes, dst: bytes) -> None:
        typ, code, ident, seq, poff = wicmp.parse_icmp(f, start, end - start)
        if typ == wicmp.ECHO_REQUEST and dst == self.netif.ip:
            self.counts["icmp_echo"] += 1
            reply = wicmp.build_echo(wicmp.ECHO_REPLY, ident, seq, f[poff:end])
            self._send_ip(0, src, ICMP, reply, self.clock())
        else:
            self.drops["rx_icmp_other"] += 1

    # -- transmit ----------------------------------------------------------------------------

    def service_tx(self, flow: Flow, max_packets: int = TX_BATCH, draining: bool = False) -> int:
        """Take what a client sent, check each copy against its flow, queue frames.

        The batch is copied out of the client's pool into one array with room
        for the Ethernet header in front, checked column-wise, framed in place
        and queued as one FrameBlock. Rows that fail the column-wise check (or
        carry IP options) go through `_tx_one`, which finds the reason, reports
        it, or sends the packet on its own.
        """
        rows, lens = flow.port.pull(max_packets, ETH_HLEN, draining)
        n = len(lens)
        if not n:
            return 0
        now = self.clock()
        ok = self._tx_fast_ok(flow, rows, lens)
        sent = int(ok.sum())
        if sent < n:
            for i in np.flatnonzero(~ok).tolist():
                sent += self._tx_one(flow, bytes(rows[i, ETH_HLEN : ETH_HLEN + int(lens[i])]), now)
            rows, lens = rows[ok], lens[ok]
        if len(lens):
            sent -= self._tx_rows(flow, rows, lens, now)
        flow.stats["tx_packets"] += sent
        self._advise(flow)
        return n

    def _tx_fast_ok(self, flow: Flow, rows: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Rows that are, column-wise, a well-formed option-less IPv4 packet of this flow."""
        if rows.shape[1] < ETH_HLEN + 24:
            return np.zeros(len(lens), bool)
        h = rows[:, ETH_HLEN : ETH_HLEN + 24]
        cols, want = flow.tx_signature(self.netif.ip)
        ok = (h[:, cols] == want).all(axis=1)  # version/ihl, protocol, source, ports
        total = be_u16(h[:, 2:4])
        ok &= (total == lens) & (lens >= 24) & (lens <= self.netif.mtu)
        ok &= row_sums(h[:, :20]) == 0  # a valid header sums to a multiple of 0xFFFF
        return ok

    def _tx_rows(self, flow: Flow, rows: np.ndarray, lens: np.ndarray, now: float) -> int:
        """Frame checked rows by destination and queue them; returns how many were dropped."""
        dst = be_u32(rows[:, ETH_HLEN + 16 : ETH_HLEN + 20])
        first = dst[0]
        if (dst == first).all():
            groups = [(int(first), rows, lens)]
        else:
            groups = [(int(d), rows[dst == d], lens[dst == d]) for d in np.unique(dst)]
        dropped = 0
        for d, r, ln in groups:
            hop, mac = self._neighbour(d.to_bytes(4, "big"), now)
            if mac is not None:
                r[:, 0:6] = np.frombuffer(mac, np.uint8)
                r[:, 6:14] = self._src_and_type
                self.netif.enqueue_many(flow.id, [FrameBlock(r, ln + ETH_HLEN)])
            elif hop is not None:
                for i, n in enumerate(ln.tolist()):
                    self._await_neighbour(flow.id, hop, r[i, ETH_HLEN : ETH_HLEN + n].tobytes(), now)
            else:
                for n in ln.tolist():
                    self._tx_drop(flow, TxDropReason.NO_ROUTE, n)
                dropped += len(ln)
        return dropped

    def _tx_one(self, flow: Flow, p: bytes, now: float) -> int:
        """Check one packet the slow way; queue it (1) or drop it with its reason (0)."""
        n = len(p)
        if n < 20:
            self._tx_drop(flow, TxDropReason.MALFORMED, n)
            return 0
        vihl, total, _ttl, proto, src, dst = _IPFIX.unpack_from(p)
        if vihl >> 4 != 4:
            self._tx_drop(flow, TxDropReason.NOT_IPV4, n)
            return 0
        ihl = (vihl & 0xF) << 2
        if ihl < 20 or total != n or n < ihl + 4 or int.from_bytes(p[:ihl], "big") % 0xFFFF:
            self._tx_drop(flow, TxDropReason.MALFORMED, n)
            return 0
        if proto != flow.proto:
            self._tx_drop(flow, TxDropReason.WRONG_PROTOCOL, n)
            return 0
        sport, dport = _PORTS.unpack_from(p, ihl)
        if src != self.netif.ip or sport != flow.lport:
            self._tx_drop(flow, TxDropReason.SPOOFED_SOURCE, n)
            return 0
        if flow.raddr is not None and (dst != flow.raddr or dport != flow.rport):
            self._tx_drop(flow, TxDropReason.WRONG_DESTINATION, n)
            return 0
        if n > self.netif.mtu:
            self._tx_drop(flow, TxDropReason.TOO_BIG, n)
            return 0
        if not self._route(flow.id, dst, p, now):
            self._tx_drop(flow, TxDropReason.NO_ROUTE, n)
            return 0
        return 1

    def _tx_drop(self, flow: Flow, reason: TxDropReason, length: int) -> None:
        self.drops["tx_" + reason.name.lower()] += 1
        flow.stats["tx_dropped"] += 1
        flow.port.pipe.ends[CLIENT].events.post(EventType.TX_DROPPED, reason, value=length)

    def _neighbour(self, dst: bytes, now: float) -> tuple[bytes | None, bytes | None]:
        """(next hop or None if no route, its MAC or None while unresolved) for `dst`."""
        hop = self.netif.next_hop(dst)
        if hop is None:
            return None, None
        if hop == self.netif.broadcast or hop == b"\xff\xff\xff\xff":
            return hop, BROADCAST
        return hop, self.arp.lookup(hop, now)

    def _route(self, key: int, dst: bytes, packet: bytes, now: float) -> bool:
        """Frame and queue `packet`, or park it until its neighbour answers; False if no route."""
        hop, mac = self._neighbour(dst, now)
        if hop is None:
            return False
        if mac is not None:
            self._emit(key, mac, packet)
        else:
            self._await_neighbour(key, hop, packet, now)
        return True

    def _await_neighbour(self, key: int, hop: bytes, packet: bytes, now: float) -> None:
        flow = self.flows.get(key)
        if flow is not None:
            flow.parked += 1
        ask, dropped = self.arp.wait(hop, (key, packet), now)
        if ask:
            self._arp_request(hop)
        if dropped is not None:
            self._unresolved(dropped)

    def _unresolved(self, item: tuple[int, bytes]) -> None:
        """A packet that waited for a neighbour in vain: counted, and told to its flow."""
        key, packet = item
        self.drops["tx_neighbour_unresolved"] += 1
        flow = self.flows.get(key)
        if flow is not None:
            flow.parked -= 1
            flow.stats["tx_dropped"] += 1
            flow.stats["tx_packets"] -= 1  # counted as sent when it was queued for ARP
            flow.port.pipe.ends[CLIENT].events.post(EventType.TX_DROPPED, TxDropReason.NEIGHBOUR_UNRESOLVED,
                                                    value=len(packet))

    def _emit(self, key: int, mac: bytes, packet: bytes) -> None:
        self._send_frame(key, mac, ETHERTYPE_IPV4, packet)

    def _send_frame(self, key: int, dst_mac: bytes, etype: int, payload: bytes) -> None:
        self.netif.enqueue(key, _ETH.pack(dst_mac, self.netif.mac, etype) + payload)

    def _send_ip(self, key: int, dst: bytes, proto: int, payload: bytes, now: float) -> None:
        """A packet of the switch's own (ICMP): it builds the IP header itself."""
        self._ident = (self._ident + 1) & 0xFFFF
        hdr = build_ipv4_header(self.netif.ip, dst, proto, len(payload), ident=self._ident)
        self._route(key, dst, hdr + payload, now)

    def _arp_request(self, ip: bytes) -> None:
        self.counts["arp_requests"] += 1
        self._send_frame(0, BROADCAST, ETHERTYPE_ARP,
                         warp.build_arp(warp.ARP_REQUEST, self.netif.mac, self.netif.ip, b"\x00" * 6, ip))

    def _advise(self, flow: Flow) -> None:
        qp, qb = self.netif.queued(flow.id)
        port = flow.port
        if not port.suspended and qp >= self.netif.high_water:
            port.advise(True, qp, qb)
            flow.stats["suspended"] += 1
        elif port.suspended and qp <= self.netif.low_water:
            port.advise(False, qp, qb)

    # -- time and the device ----------------------------------------------------------------

    def service_timers(self) -> None:
        now = self.clock()
        ask, gave_up = self.arp.due(now)
        for ip in ask:
            self._arp_request(ip)
        for item in gave_up:
            self._unresolved(item)

    def flush(self) -> int:
        n = self.netif.flush()
        for flow in self.flows.values():
            if flow.port.suspended:
                self._advise(flow)
        return n

    def next_timeout(self) -> float | None:
        t = [x for x in (self.arp.next_timer(self.clock()), self.netif.driver.timeout()) if x is not None]
        if self.netif.active:
            t.append(0.0005)
        return min(t) if t else None

    def info(self) -> dict[str, Any]:
        return {"netif": self.netif.info(), "flows": [f.describe() for f in self.flows.values()],
                "drops": dict(self.drops), "counts": {k: v for k, v in self.counts.items() if ":" not in k},
                "arp": {ip_str(k): v[0].hex(":") for k, v in self.arp.entries.items()}}

