"""The flow switch: the multiplexer between one netif and many applications (DESIGN §5).

It owns the link layer for its clients: ARP and IPv6 Neighbour Discovery
(answers for its addresses, resolves neighbours; one NeighbourCache class,
an instance per family), Ethernet framing, ICMP and ICMPv6 echo replies for
its addresses. Clients hand it IP packets and receive IP packets.

* Flows: a listener matches (protocol, local port); a connected flow matches
  the full 5-tuple and wins over a listener.
* Transmit: each packet is copied out of the client's pool once (FlowPort),
  and the copy is checked against the flow entry: a well-formed IPv4 header,
  the flow's protocol, source address and port, and for a connected flow its
  destination (an unconnected flow's: an address a peer can have,
  `not_a_peer`), its TTL, options (no source route) and fragments (a later
  fragment only of a datagram the flow began: usnet.domain.switch.txguard). A
  packet that fails is dropped, counted by reason, and reported on the
  client's event ring: no client can send as another. The DSCP is
  overwritten with the flow's class (`Flow.dscp`); ECN stays the client's.
* Receive: classify, then copy into the owning channel's pool and ring its
  doorbell. Anything malformed is counted and dropped; nothing from the wire
  can raise out of here. With `rx_mitigation`, a general-class flow's bell
  may be held (usnet.domain.netif.mitigation); `ring_held` rings the held bells
  that are due and says when the next one is.
* IPv6 (a netif with `address6`): flows carry a family; an IPv6 flow's
  packets are checked one at a time (`_tx_one6`: version 6, payload length,
  next header = the flow's protocol or a Fragment header and then it, so
  no other extension header can be smuggled past the port check, source
  address and port, destination), and
  received IPv6 frames take the per-frame path (`_rx_ip6`). The numpy batch
  paths (`_tx_fast_ok`, `_tx_rows`, `_rx_block`) are IPv4 only, so IPv4
  pays nothing for IPv6.
"""

from __future__ import annotations

import errno
import itertools
import logging
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# np.unique imports numpy.ma on first use (numpy 2.x): a 6-13 ms stall of the service loop the first
# time a batch holds two flows or a channel closes; here it is paid at import
import numpy.ma

from usnet.abi.events import EventType, TxDropReason, TxStatus
from usnet.abi.umd import deadline_passed
from usnet.domain.netif.netif import Netif
from usnet.domain.switch.llcheck import GENERAL_PATH, SNAPSHOT, check_ll_header
from usnet.domain.switch.neighbours import NeighbourCache
from usnet.domain.switch.port import CLIENT, FlowPort, TxMeta
from usnet.domain.switch.ports import PortSpace, host_owns
from usnet.domain.switch.txguard import SentFragments, ipv4_options, whole_l4_header
from usnet.drivers import block
from usnet.drivers.base import Coalesced, GatherFrame, SegmentedFrame, TrackedFrame
from usnet.drivers.block import FrameBlock
from usnet.proto.ip import Reassembler
from usnet.proto.tcp.connection import rst_reply
from usnet.proto.wire import arp as warp
from usnet.proto.wire import ecn
from usnet.proto.wire import icmp as wicmp
from usnet.proto.wire import icmpv6 as wicmp6
from usnet.proto.wire import tcp as wtcp
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.ethernet import BROADCAST, ETH_HLEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6
from usnet.proto.wire.ipv4 import (
    IP_MF,
    IP_OFFMASK,
    IPV4_HLEN,
    build_ipv4_header,
    ip_str,
    martian_source4,
    not_unicast4,
    parse_ipv4,
)
from usnet.proto.wire.ipv6 import (
    ALL_NODES,
    FRAG_HLEN,
    FRAGMENT,
    ICMPV6,
    IPV6_HLEN,
    ROUTING,
    UNSPECIFIED,
    build_ipv6_header,
    ip6_str,
    martian_source6,
    multicast_mac,
    not_unicast6,
    parse_frag_header,
    parse_ipv6,
    skip_ext_headers,
    solicited_node,
    verify_upper_v6,
)
from usnet.proto.wire.rows import be_u16, be_u32, row_sums
from usnet.proto.wire.udp import parse_udp

__all__ = ["ROWWISE_MAX", "TX_BATCH", "Flow", "FlowSwitch"]

log = logging.getLogger(__name__)

_ETH = struct.Struct("!6s6sH")
_PORTS = struct.Struct("!HH")
# Ethernet dst, src, type; IPv4 version/ihl, total length, flags/fragment, protocol, src, dst; ports
_FAST = struct.Struct("!6s6sHBxH2xHxB2x4s4sHH")
_IPFIX = struct.Struct("!BxHHHBB2x4s4s")  # version/ihl, total length, ident, flags/offset, ttl, protocol, src, dst
_IP6FIX = struct.Struct("!4xHBB16s16s")  # payload length, next header, hop limit, src, dst
ICMP, TCP, UDP = 1, 6, 17
# the ICMP errors passed on to the flow whose packet they quote (its stack judges them further)
_ICMP_ERRORS = frozenset((wicmp.DEST_UNREACH, wicmp.SOURCE_QUENCH, wicmp.TIME_EXCEEDED, wicmp.PARAM_PROBLEM))
TX_BATCH = 512
_PULL_BYTES = 4 << 20  # the most packet-buffer bytes one service_tx copies out of a pool
_MIN_GSO = 88  # Linux's TCP_MIN_MSS: no super-segment is cut finer than this
ROWWISE_MAX = 8  # received blocks of up to this many frames are classified row by row (block.open_small)
DEFEND_INTERVAL = 10.0  # RFC 5227: at most one announcement defending our address per this many seconds


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
    raddr_int: int = 0
    family: int = 4  # 4 or 6: which address the flow sends from, and which listener table has it
    policer: Any = None  # an LL lease's usnet.domain.lowlat.policer.Policer, while the flow holds one
    dscp: int = 0  # written into every packet it sends: its lease's class (usnet.domain.lowlat.policy.SERVICE_DSCP)
    sent_frags: SentFragments | None = None  # datagrams it began in fragments (made at its first)

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
            if self.raddr is not None and self.rport is not None:  # connected: both, or neither
                sig.update({16 + i: b for i, b in enumerate(self.raddr)})
                sig.update({22: self.rport >> 8, 23: self.rport & 0xFF})
            self._tx_sig = (np.array(list(sig), np.intp), np.array(list(sig.values()), np.uint8))
        return self._tx_sig

    def key(self) -> tuple:
        if self.raddr is None:
            return (self.proto, self.lport)
        return (self.proto, self.lport, self.raddr, self.rport)

    def describe(self) -> dict[str, Any]:
        if self.raddr is None:
            remote = None
        elif self.family == 6:
            remote = f"[{ip6_str(self.raddr)}]:{self.rport}"
        else:
            remote = f"{ip_str(self.raddr)}:{self.rport}"
        return {"id": self.id, "channel": self.channel, "proto": {6: "tcp", 17: "udp"}.get(self.proto, self.proto),
                "family": self.family, "local_port": self.lport, "remote": remote,
                "suspended": self.port.suspended, "rx_mitigation": self.port.mitigate,
                "stats": {**self.stats, **self.port.bell_stats()}}


class FlowSwitch:
    def __init__(self, netif: Netif, ports: PortSpace | None = None,
                 clock: Callable[[], float] = time.monotonic, rx_mitigation: bool = False) -> None:
        self.netif = netif
        self.rx_mitigation = rx_mitigation  # coalesce the receive bells of new flows (usnet.domain.netif.mitigation)
        self._held_bells: dict[FlowPort, None] = {}  # ports holding a receive bell: an ordered set
        self.ports = ports or PortSpace()
        self.clock = clock
        self.arp = NeighbourCache()  # IPv4 neighbours, asked for with ARP
        self.nd = NeighbourCache()  # IPv6 neighbours, asked for with Neighbour Solicitations
        self.flows: dict[int, Flow] = {}
        self.exact: dict[tuple, Flow] = {}  # both families: the remote address's length tells them apart
        self.listeners: dict[tuple, Flow] = {}
        self.listeners6: dict[tuple, Flow] = {}
        self.drops: Counter = Counter()
        self.counts: Counter = Counter()
        # fragments to us (IPv4 and IPv6), put back together before classification (a fragment past
        # the first names no ports); bounded memory, per-source limits (usnet.proto.ip.Reassembler)
        self.frags: Counter = Counter()
        self.reasm = Reassembler(self.frags)
        self._ids = itertools.count(1)
        self._ident = 0
        self._host_addr = netif.ip_str if host_owns(netif.ip_str) else None
        self._host_addr6 = netif.ip6_str if netif.ip6_str and host_owns(netif.ip6_str) else None
        # the multicast MACs of the groups we are in (all-nodes, our solicited-node groups)
        self._macs6 = frozenset(multicast_mac(g) for g in netif.groups6)
        self._rx_sig = np.frombuffer(netif.mac + b"\x08\x00\x45\x00\x00" + netif.ip, np.uint8)
        netif.on_status = self._frame_status
        self._last_drop = 0  # the reason of the last _tx_drop, for a tracked packet's status
        self._src_and_type = np.frombuffer(netif.mac + ETHERTYPE_IPV4.to_bytes(2, "big"), np.uint8)
        # what a received frame is held to: its length (a Coalesced frame excepted) and martian sources
        self._rx_max = netif.mtu + ETH_HLEN
        self._local4 = int.from_bytes(netif.ip, "big")
        # The subnet's broadcast address. A /31 or /32 has none (both addresses of a /31 are
        # hosts): there it is our own address again, which every check refuses first anyway.
        self._bcast4 = (int.from_bytes(netif.broadcast, "big") if netif.network.prefixlen < 31
                        else self._local4)
        self._defended_at: float | None = None  # when we last announced our address against a conflict

    # -- flows ---------------------------------------------------------------------------

    def add_flow(self, proto: int, lport: int, raddr: bytes | None, rport: int | None,
                 port: FlowPort, channel: int = 0, family: int = 4) -> Flow:
        """Register a flow of `family` (4 or 6); reserves its local port (PortInUse if taken)."""
        if proto not in (TCP, UDP):
            raise ValueError(f"flows carry TCP or UDP, not protocol {proto}")
        if (raddr is None) != (rport is None):
            raise ValueError("a connected flow needs both remote address and port")
        if family not in (4, 6) or (raddr is not None and len(raddr) != (4 if family == 4 else 16)):
            raise ValueError(f"a remote address of {len(raddr or b'')} bytes is not IPv{family}")
        if family == 6 and self.netif.ip6 is None:
            raise OSError(errno.EADDRNOTAVAIL, f"netif {self.netif.name!r} has no IPv6 address")
        if raddr is not None:
            why = self.not_a_peer(raddr)
            if why is not None:
                shown = ip6_str(raddr) if family == 6 else ip_str(raddr)
                raise OSError(errno.EADDRNOTAVAIL, f"a connected flow's remote address must be a unicast "
                                                  f"address of a peer: {shown} is {why}")
            if rport == 0:
                raise OSError(errno.EINVAL, "a connected flow's remote port must not be 0")
        fid = next(self._ids)
        lport = self.ports.reserve(proto, lport, fid, self._host_addr6 if family == 6 else self._host_addr,
                                   family=family)
        flow = Flow(fid, proto, lport, raddr, rport, port, channel, family=family)
        if self.rx_mitigation:
            port.enable_mitigation(self.clock, self._held_bells)
        self.flows[fid] = flow
        self._table(flow)[flow.key()] = flow
        return flow

    def not_a_peer(self, addr: bytes) -> str | None:
        """Why no peer can have `addr` (4 or 16 bytes), or None for a unicast address not ours.

        A flow may be connected to, and a client's packet may go to, only such
        an address: not unspecified, loopback, multicast, broadcast (all-ones
        or the subnet's), v4-mapped, nor the netif's own.
        """
        if len(addr) == 4:
            a = int.from_bytes(addr, "big")
            if a == self._local4:
                return "this netif's own address"
            if a == self._bcast4:
                return "the subnet's broadcast address"
            if not_unicast4(a):
                top = a >> 24
                return {0: "unspecified (0.0.0.0/8)", 127: "loopback (127.0.0.0/8)"}.get(
                    top, "multicast (224.0.0.0/4)" if top < 240 else "the limited broadcast (255.255.255.255)")
            return None
        if addr in self.netif.addrs6:
            return "this netif's own address"
        if not_unicast6(addr):
            return ("unspecified (::)" if addr == UNSPECIFIED else "multicast (ff00::/8)" if addr[0] == 0xFF
                    else "loopback (::1)" if addr[:15] == bytes(15) else "v4-mapped (::ffff:0:0/96)")
        return None

    def _table(self, flow: Flow) -> dict[tuple, Flow]:
        """Where a flow is looked up: the 5-tuples, or its family's listeners."""
        if flow.raddr is not None:
            return self.exact
        return self.listeners6 if flow.family == 6 else self.listeners

    def remove_flow(self, flow: Flow, keep_queued: bool = False) -> None:
        """Unregister a flow and free its port; its queued frames still leave if `keep_queued`."""
        if flow.id not in self.flows:
            return
        if keep_queued:
            self.netif.retire(flow.id)  # its frames go, then the netif forgets the key
        else:
            self.netif.drop_queue(flow.id)  # first: its tracked frames are reported FLUSHED to it
        del self.flows[flow.id]
        self._table(flow).pop(flow.key(), None)
        self._held_bells.pop(flow.port, None)
        self.ports.release(flow.proto, flow.lport, family=flow.family)

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

    # -- receive ---------------------------------------------------------------------------

    def service_rx(self, max_frames: int = 256) -> int:
        """Take frames from the device, answer what is ours, deliver the rest to flows."""
        netif = self.netif
        frames = netif.driver.recv_batch(max_frames)
        if not frames:
            return 0
        if getattr(netif.driver, "takes_blocks", False):  # only a wire that carries blocks brings them
            frames = block.open_small(frames, ROWWISE_MAX)
        now = self.clock()
        total_frames = block.count(frames)
        netif.rx_frames += total_frames
        if netif.monitors:
            copies = block.expand(frames)
            for m in netif.monitors:
                m.deliver(copies)
        per_flow: dict[Flow, list[bytes | bytearray]] = {}
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
                        and not ff & (IP_MF | IP_OFFMASK) and (proto == UDP or proto == TCP)  # noqa: SIM109
                        and 24 <= total <= n - ETH_HLEN and not from_bytes(f[14:34], "big") % 0xFFFF
                        and not smac[0] & 1 and not martian_source4(from_bytes(sip, "big"), local4, bcast4)
                        and (n <= rx_max or type(f) is Coalesced)):
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
        self._deliver(per_flow)
        return total_frames

    def _deliver(self, per_flow: dict) -> None:
        """Hand each flow the packets gathered for it, and forget them."""
        for flow, pkts in per_flow.items():
            n = flow.port.deliver(pkts)
            flow.stats["rx_packets"] += n
            if n < len(pkts):
                flow.stats["rx_dropped"] += len(pkts) - n
                self.drops["rx_client_full"] += len(pkts) - n
        per_flow.clear()

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
            mit = port.mitigation
            if mit is None or mit.deadline is None:  # rung as packets came, or the client woke up on its own
                del held[port]
            elif mit.due(now):
                del held[port]
                port.ring_held()
            elif nxt is None or mit.deadline < nxt:
                nxt = mit.deadline
        return None if nxt is None else max(0.0, nxt - now)

    def _rx_frame(self, f: bytes | bytearray, now: float, per_flow: dict) -> None:
        if len(f) < ETH_HLEN:
            self.drops["rx_runt"] += 1
            return
        if len(f) > self._rx_max and type(f) is not Coalesced:
            self.drops["rx_oversize"] += 1  # longer than the MTU, and the device did not make it so
            return
        dst, src, etype = _ETH.unpack_from(f)
        if dst != self.netif.mac and dst != BROADCAST and dst not in self._macs6:
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

    def _rx_arp(self, f: bytes | bytearray, src_mac: bytes, now: float) -> None:
        """An ARP packet: conflicts on our address first (RFC 5227), then requests and replies for us.

        Learnt only from a sender whose address could be a neighbour's: a
        probe (sender 0.0.0.0, RFC 5227 §2.1.1) is answered as Linux does and
        teaches nothing; a martian sender earns nothing.
        """
        op, sha, spa, _tha, tpa = warp.parse_arp(f, ETH_HLEN)
        if sha != src_mac or sha == BROADCAST or sha[0] & 1:
            self.drops["arp_bogus_sender"] += 1
            return
        netif = self.netif
        if spa == netif.ip:
            self._arp_conflict(sha, now)
            return
        if tpa != netif.ip:
            self.drops["arp_not_for_us"] += 1
            return
        if spa == b"\x00\x00\x00\x00":
            if op != warp.ARP_REQUEST:
                self.drops["arp_martian"] += 1
                return
            self.counts["arp_probe_answered"] += 1  # our address is taken: we say so, learning nothing
        elif martian_source4(int.from_bytes(spa, "big"), self._local4, self._bcast4):
            self.drops["arp_martian"] += 1
            return
        else:
            self.counts["arp_rx"] += 1
            self._learn(self.arp, spa, sha, now)
        if op == warp.ARP_REQUEST:
            self._send_frame(0, sha, ETHERTYPE_ARP, warp.build_arp(warp.ARP_REPLY, netif.mac, netif.ip, sha, spa))

    def _arp_conflict(self, mac: bytes, now: float) -> None:
        """Another MAC says it has our address (RFC 5227 §2.4): count it, never answer it or learn it,
        and defend (§2.4 (b)): one announcement of ours, and one log line, per DEFEND_INTERVAL."""
        self.drops["arp_conflict"] += 1
        if self._defended_at is not None and now - self._defended_at < DEFEND_INTERVAL:
            return
        self._defended_at = now
        self.counts["arp_defended"] += 1
        netif = self.netif
        log.warning("netif %s: %s claims our address %s; announcing ours (%s)", netif.name, mac.hex(":"),
                    netif.ip_str, netif.mac.hex(":"))
        self._send_frame(0, BROADCAST, ETHERTYPE_ARP,
                         warp.build_arp(warp.ARP_REQUEST, netif.mac, netif.ip, b"\x00" * 6, netif.ip))

    def _learn(self, cache: NeighbourCache, addr: bytes, mac: bytes, now: float) -> None:
        """A neighbour's link-layer address: remember it, and send what waited for it."""
        for key, packet in cache.learn(addr, mac, now):
            self._emit(key, mac, packet)

    def _rx_ip(self, f: bytes | bytearray, now: float, per_flow: dict) -> None:
        ihl, total, ident, ff, ttl, proto, src, dst = parse_ipv4(f, ETH_HLEN)
        netif = self.netif
        if dst != netif.ip and dst != netif.broadcast and dst != b"\xff\xff\xff\xff":
            self.drops["rx_not_our_ip"] += 1
            return
        if martian_source4(int.from_bytes(src, "big"), self._local4, self._bcast4):
            self.drops["rx_martian_source"] += 1  # answered, it would go to broadcast, loopback, us
            return
        if ff & (IP_MF | IP_OFFMASK):
            if dst != netif.ip:
                self.drops["rx_fragment"] += 1  # a broadcast in pieces: nobody's
                return
            r = self.reasm.add((src, proto, ident), src, (ff & IP_OFFMASK) << 3, f[ETH_HLEN + ihl : ETH_HLEN + total],
                               bool(ff & IP_MF), now, False, 0xFFFF - IPV4_HLEN)
            if r is None:
                return  # a piece kept, or refused (the reassembler counts which, in `frags`)
            pieces, part = r
            # the whole datagram behind a header without options, as the sender's stack built it
            f = b"".join([f[:ETH_HLEN], build_ipv4_header(src, dst, proto, part.total, ident, ttl, False,
                                                          f[ETH_HLEN + 1]), *pieces])
            ihl, total = IPV4_HLEN, IPV4_HLEN + part.total
        start = ETH_HLEN + ihl
        end = ETH_HLEN + total
        if proto == ICMP:
            self._rx_icmp(f, start, end, src, dst, per_flow)
            return
        if proto not in (UDP, TCP) or end - start < 4:
            self.drops["rx_no_flow"] += 1
            return
        if proto == TCP and dst != netif.ip:
            self.drops["rx_tcp_not_unicast"] += 1  # TCP is unicast only (Linux: PACKET_HOST only)
            return
        sport, dport = _PORTS.unpack_from(f, start)
        flow = self.exact.get((proto, dport, src, sport)) or self.listeners.get((proto, dport))
        if flow is None:
            bad = self._bad_udp(f, start, end, src, dst) if proto == UDP else None
            if bad is not None:
                self.drops[bad] += 1  # nobody's, and damaged: no ICMP about it (as Linux)
                return
            self.drops["rx_no_flow"] += 1
            if dst == netif.ip:
                self._no_socket(proto, f, start, end, src, now)
            return
        lst = per_flow.get(flow)
        if lst is None:
            lst = per_flow[flow] = []
        lst.append(f[ETH_HLEN:end])

    @staticmethod
    def _bad_udp(f: bytes | bytearray, start: int, end: int, src: bytes, dst: bytes) -> str | None:
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

    def _no_socket(self, proto: int, f: bytes | bytearray, start: int, end: int, src: bytes, now: float) -> None:
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

    def _rx_icmp(self, f: bytes | bytearray, start: int, end: int, src: bytes, dst: bytes, per_flow: dict) -> None:
        typ, _code, ident, seq, poff = wicmp.parse_icmp(f, start, end - start)
        if typ == wicmp.ECHO_REQUEST and dst == self.netif.ip:
            self.counts["icmp_echo"] += 1
            reply = wicmp.build_echo(wicmp.ECHO_REPLY, ident, seq, f[poff:end])
            self._send_ip(0, src, ICMP, reply, self.clock())
        elif typ in _ICMP_ERRORS and dst == self.netif.ip:
            self._icmp_error_to(self._quoted_flow(f, poff, end), f[ETH_HLEN:end], per_flow)
        else:
            self.drops["rx_icmp_other"] += 1

    def _icmp_error_to(self, flow: Flow | None, packet: bytes | bytearray, per_flow: dict) -> None:
        """Pass an ICMP(v6) error, the whole IP packet, to the flow whose packet it quotes (None: nobody's).
        The flow's stack judges it further (a TCP sequence in flight, a connected peer)."""
        if flow is None:
            self.drops["rx_icmp_unmatched"] += 1
            return
        self.counts["rx_icmp_error"] += 1
        per_flow.setdefault(flow, []).append(packet)

    def _quoted_flow(self, f: bytes | bytearray, q: int, end: int) -> Flow | None:
        """The flow that sent the packet an ICMP error quotes: from our address, its protocol and ports.

        Only that flow hears of it; an error quoting anything else (another
        source, a port nobody holds, a quote too short to name the ports) goes nowhere.
        """
        if end - q < IPV4_HLEN + 4:
            return None
        vihl = f[q]
        ihl = (vihl & 0xF) << 2
        proto = f[q + 9]
        if vihl >> 4 != 4 or ihl < IPV4_HLEN or end - q < ihl + 4 or proto not in (UDP, TCP):
            return None
        if f[q + 12 : q + 16] != self.netif.ip:
            return None
        sport, dport = _PORTS.unpack_from(f, q + ihl)
        return self.exact.get((proto, sport, bytes(f[q + 16 : q + 20]), dport)) or self.listeners.get((proto, sport))

    # -- receive, IPv6 ------------------------------------------------------------------------

    def _rx_ip6(self, f: bytes | bytearray, src_mac: bytes, now: float, per_flow: dict) -> None:
        """An IPv6 frame: Neighbour Discovery and echo are ours, TCP and UDP go to flows."""
        _tc, _fl, plen, nh, hop, src, dst = parse_ipv6(f, ETH_HLEN)
        netif = self.netif
        if dst not in netif.addrs6 and dst not in netif.groups6:
            self.drops["rx_not_our_ip"] += 1
            return
        if martian_source6(src, netif.addrs6):
            self.drops["rx_martian_source"] += 1
            return
        end = ETH_HLEN + IPV6_HLEN + plen
        proto, start, frag = skip_ext_headers(f, ETH_HLEN + IPV6_HLEN, end, nh)
        if frag is not None:
            _, foff, more, ident = frag
            if foff or more:  # an atomic fragment (RFC 6946) is whole already
                if dst != netif.ip6:
                    self.drops["rx_fragment"] += 1  # to a group or the link-local address: no flow has it
                    return
                # strict: pieces that overlap at all drop the datagram (RFC 5722)
                r = self.reasm.add((6, src, ident), src, foff, f[start:end], more, now, True, 0xFFFF,
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
            self._rx_icmp6(f, start, end, src, dst, hop, src_mac, now, per_flow)
            return
        if src == UNSPECIFIED:
            self.drops["rx_martian_source"] += 1  # only Neighbour Discovery (DAD) may come from ::
            return
        if proto not in (UDP, TCP) or end - start < 4 or dst[0] == 0xFF:
            self.drops["rx_no_flow"] += 1
            return
        sport, dport = _PORTS.unpack_from(f, start)
        flow = None
        if dst == netif.ip6:  # flows have the global address; the link-local one has no ports
            flow = self.exact.get((proto, dport, src, sport)) or self.listeners6.get((proto, dport))
        if flow is None:
            bad = self._bad_udp(f, start, end, src, dst) if proto == UDP else None
            if bad is not None:
                self.drops[bad] += 1
                return
            self.drops["rx_no_flow"] += 1
            self._no_socket6(proto, f, start, end, src, dst, now)
            return
        lst = per_flow.get(flow)
        if lst is None:
            lst = per_flow[flow] = []
        lst.append(f[ETH_HLEN:end])

    def _no_socket6(self, proto: int, f: bytes | bytearray, start: int, end: int, src: bytes, dst: bytes,
                    now: float) -> None:
        """Nobody has this port: ICMPv6 port unreachable for UDP, RST for TCP, from the address asked."""
        if proto == UDP:
            self.counts["icmp6_unreach_sent"] += 1
            msg = wicmp6.build_error6(wicmp6.DEST_UNREACH, wicmp6.PORT_UNREACH, f[ETH_HLEN:end], dst, src)
            self._send_ip6(0, dst, src, ICMPV6, msg, now)
            return
        try:
            seg = wtcp.parse_tcp(f, start, end - start, src, dst)
        except WireError:
            return  # a bad segment earns no answer
        rst = rst_reply(wtcp.pseudo_sum(dst, src), seg)
        if rst is not None:
            self.counts["tcp_rst_sent"] += 1
            self._send_ip6(0, dst, src, TCP, rst, now)

    def _rx_icmp6(self, f: bytes | bytearray, start: int, end: int, src: bytes, dst: bytes, hop: int,
                  src_mac: bytes, now: float, per_flow: dict) -> None:
        typ, _code, ident, seq, body = wicmp6.parse_icmpv6(f, start, end - start, src, dst)  # checksum too
        if typ == wicmp6.NEIGHBOR_SOLICIT:
            self._rx_ns(f, start, end, src, dst, hop, src_mac, now)
        elif typ == wicmp6.NEIGHBOR_ADVERT:
            self._rx_na(f, start, end, dst, hop, now)
        elif typ == wicmp6.ECHO_REQUEST and dst in self.netif.addrs6 and src != UNSPECIFIED:
            self.counts["icmp6_echo"] += 1
            reply = wicmp6.build_echo6(wicmp6.ECHO_REPLY, ident, seq, f[body:end], dst, src)
            self._send_ip6(0, dst, src, ICMPV6, reply, now)
        elif typ in wicmp6.ERRORS and dst == self.netif.ip6:
            self._icmp_error_to(self._quoted_flow6(f, body, end), f[ETH_HLEN:end], per_flow)
        else:
            self.drops["rx_icmp6_other"] += 1  # router discovery, MLD: nobody here wants them

    def _quoted_flow6(self, f: bytes | bytearray, q: int, end: int) -> Flow | None:
        """`_quoted_flow` for an ICMPv6 error: a quote from the netif's global address (flows have it)."""
        if end - q < IPV6_HLEN + 4 or f[q] >> 4 != 6 or f[q + 8 : q + 24] != self.netif.ip6:
            return None
        try:
            proto, start, frag = skip_ext_headers(f, q + IPV6_HLEN, end, f[q + 6])
        except WireError:
            return None
        if frag is not None or proto not in (UDP, TCP) or end - start < 4:
            return None
        sport, dport = _PORTS.unpack_from(f, start)
        return self.exact.get((proto, sport, bytes(f[q + 24 : q + 40]), dport)) or self.listeners6.get((proto, sport))

    def _rx_ns(self, f: bytes | bytearray, start: int, end: int, src: bytes, dst: bytes, hop: int,
               src_mac: bytes, now: float) -> None:
        """A Neighbour Solicitation: learn the asker (as from an ARP request) and advertise ourselves."""
        if hop != 255:
            self.drops["nd_bad"] += 1  # RFC 4861 §7.1.1: only from this link
            return
        target, opts = wicmp6.parse_ns(f, start, end - start)
        netif = self.netif
        if target not in netif.addrs6:
            self.drops["nd_not_for_us"] += 1
            return
        slla = wicmp6.find_option(opts, wicmp6.OPT_SOURCE_LLADDR)
        if src == UNSPECIFIED:  # duplicate address detection: someone wants our address
            if slla is not None or dst != solicited_node(target):
                self.drops["nd_bad"] += 1
                return
            self.counts["nd_dad_defended"] += 1
            self._advertise(target, ALL_NODES, multicast_mac(ALL_NODES), wicmp6.NA_OVERRIDE)
            return
        if src_mac[0] & 1 or (slla is not None and (slla != src_mac)):
            self.drops["nd_bogus_sender"] += 1
            return
        self.counts["nd_rx"] += 1
        if slla is not None:
            self._learn(self.nd, src, slla, now)
        self._advertise(target, src, src_mac, wicmp6.NA_SOLICITED | wicmp6.NA_OVERRIDE)

    def _advertise(self, target: bytes, dst: bytes, dst_mac: bytes, flags: int) -> None:
        """A Neighbour Advertisement for one of our addresses, straight to the asker's MAC."""
        na = wicmp6.build_na(target, dst, target, flags, self.netif.mac)
        self.counts["nd_na_sent"] += 1
        self._send_frame(0, dst_mac, ETHERTYPE_IPV6, build_ipv6_header(target, dst, ICMPV6, len(na), 255) + na)

    def _rx_na(self, f: bytes | bytearray, start: int, end: int, dst: bytes, hop: int, now: float) -> None:
        """A Neighbour Advertisement: believed only for an address we have or are asking for."""
        if hop != 255:
            self.drops["nd_bad"] += 1
            return
        flags, target, opts = wicmp6.parse_na(f, start, end - start)
        if dst[0] == 0xFF and flags & wicmp6.NA_SOLICITED:
            self.drops["nd_bad"] += 1
            return
        if target in self.netif.addrs6:
            self.drops["nd_dup_addr"] += 1  # someone else claims our address: keep it
            return
        tlla = wicmp6.find_option(opts, wicmp6.OPT_TARGET_LLADDR)
        if tlla is None or tlla[0] & 1:
            self.drops["nd_no_lladdr"] += 1
            return
        if not self.nd.knows(target):
            self.drops["nd_unsolicited"] += 1
            return
        self.counts["nd_rx"] += 1
        self._learn(self.nd, target, tlla, now)

    # -- transmit ----------------------------------------------------------------------------

    def service_tx(self, flow: Flow, max_packets: int = TX_BATCH, draining: bool = False) -> int:
        """Take what a client sent, check each copy against its flow, queue frames.

        The batch is copied out of the client's pool into one array with room
        for the Ethernet header in front, checked column-wise, framed in place
        and queued as one FrameBlock. Rows that fail the column-wise check (or
        carry IP options) go through `_tx_one`, which finds the reason, reports
        it, or sends the packet on its own.
        """
        # A batch of 64 KB packets (a flow on an offload netif) is pulled in smaller
        # bites: the copy stays a few MB, not 32 MB of fresh pages per call.
        max_packets = min(max_packets, _PULL_BYTES // flow.port.stride or 1)
        if not draining and self.netif.serves_ll(flow.id):
            return self._service_ll(flow, max_packets)
        rows, lens, gso, meta = flow.port.pull(max_packets, ETH_HLEN, draining)
        if flow.policer is not None and len(lens):  # an LL lease: past its rate is dropped
            rows, lens, gso = self._police(flow, rows, lens, gso, meta)
        n = len(lens)
        if not n:
            return 0
        if rows.shape[1] >= ETH_HLEN + 12:  # DSCP is the flow's class, ECN the client's: one column pass
            ecn.set_dscp_rows(rows, ETH_HLEN, flow.dscp, flow.family)
        now = self.clock()
        if flow.family == 6:
            ok, tx_one = np.zeros(n, bool), self._tx_one6  # IPv6: packet by packet
        else:
            ok, tx_one = self._tx_fast_ok(flow, rows, lens), self._tx_one
        if meta is not None:  # a deadline or a report: packet by packet, tracked
            ok[[i for i in meta.marks if i < n]] = False
        sent = int(ok.sum())
        if sent == n:
            sent -= self._tx_rows(flow, rows, lens, now)
        else:  # in order: runs of checked rows as blocks, the others one by one between them
            start = 0
            for i in [*np.flatnonzero(~ok).tolist(), n]:
                if i > start:
                    sent -= self._tx_rows(flow, rows[start:i], lens[start:i], now)
                if i == n:
                    break
                start = i + 1
                p = bytes(rows[i, ETH_HLEN : ETH_HLEN + int(lens[i])])
                sent += self._tx_marked(flow, p, now, int(gso[i]), tx_one, meta, i)
        flow.stats["tx_packets"] += sent
        self._advise(flow)
        return n

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
        assert local is not None  # a flow is of a family its netif has an address of (add_flow)
        etype = ETHERTYPE_IPV4 if flow.family == 4 else ETHERTYPE_IPV6
        tx_one = self._tx_one if flow.family == 4 else self._tx_one6
        limit = netif.mtu if flow.policer is None else min(netif.mtu, flow.policer.max_packet)
        mv, stride = port.buf_mv, port.stride
        sent = 0
        with port.pipe.lock:  # until top_up: the buffers are read until the device has them
            idx, lens, gso, meta = port.take(max_packets)
            taken_ns = 0 if meta is None else meta.taken_ns
            n = len(idx)
            if not n:
                return 0
            if flow.policer is not None:
                idx, lens, gso = self._police(flow, idx, lens, gso, meta)
            now = self.clock()
            frames: list[GatherFrame] = []
            marks: list = []  # per frame: its TxMeta mark or None
            for pos, (i, ln, g) in enumerate(zip(idx.tolist(), lens.tolist(), gso.tolist())):
                at = i * stride
                mark = None if meta is None else meta.marks.get(pos)
                if mark is not None and deadline_passed(mark[1]):
                    self._expire(flow, mark, taken_ns)
                    continue
                snap = bytearray(mv[at : at + min(ln, SNAPSHOT)])  # private: what is checked is what is sent
                got = GENERAL_PATH if g else check_ll_header(
                    snap, ln, proto=flow.proto, lport=flow.lport, raddr=flow.raddr, rport=flow.rport,
                    local=local, max_packet=limit, not_a_peer=self.not_a_peer)
                mac = None
                hdr = 0
                if isinstance(got, tuple):
                    hdr, dst = got
                    mac = self._neighbour(dst, now)[1]
                elif got != GENERAL_PATH:
                    self._tx_drop(flow, TxDropReason(got), ln)
                    if mark is not None:
                        self._post_status(flow, TxStatus.DROPPED, mark, taken_ns, got)
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
                frames.append(GatherFrame(_ETH.pack(mac, netif.mac, etype) + snap[:hdr], mv[at + hdr : at + ln]))
                marks.append(mark)
            sent += self._ll_emit(flow, frames, marks, meta)
            port.top_up()
        flow.stats["tx_packets"] += sent
        self._advise(flow)
        return n

    def _ll_emit(self, flow: Flow, frames: list[GatherFrame], marks: list, meta: TxMeta | None) -> int:
        """Send checked LL frames now; queue a copy of what the class cannot send yet. Returns len(frames)."""
        if not frames:
            return 0
        k = self.netif.transmit_now(flow.id, frames)
        if meta is not None:
            for mark in marks[:k]:
                if mark is not None:
                    self._post_status(flow, TxStatus.SENT, mark, meta.taken_ns)
        if k < len(frames):
            rest: list = [bytes(f) for f in frames[k:]]
            if meta is not None:
                rest = [f if m is None else self._tracked(flow, f, m, meta.taken_ns)
                        for f, m in zip(rest, marks[k:])]
            self.netif.enqueue_many(flow.id, rest)
        self.counts["tx_ll_zero_copy"] += k
        self.counts["tx_ll_queued"] += len(frames) - k
        return len(frames)

    # -- packets that carry a deadline or ask for a report (UMD, docs/abi.md section 8) -----------

    def _tx_marked(self, flow: Flow, p: bytes, now: float, gso: int, tx_one: Callable,
                   meta: TxMeta | None, pos: int) -> int:
        """Packet `pos` of a batch on the per-packet path (`tx_one`); if it is marked (`meta`):
        expired, or checked and queued as a TrackedFrame, its drop reported."""
        mark = None if meta is None else meta.marks.get(pos)
        if mark is None or meta is None:
            return tx_one(flow, p, now, gso)
        taken_ns = meta.taken_ns
        if deadline_passed(mark[1]):
            self._expire(flow, mark, taken_ns)
            return 0
        self._last_drop = 0
        took = tx_one(flow, self._tracked(flow, p, mark, taken_ns), now, gso)
        if not took:
            self._post_status(flow, TxStatus.DROPPED, mark, taken_ns, self._last_drop)
        return took

    @staticmethod
    def _tracked(flow: Flow, p: bytes, mark: tuple, taken_ns: int) -> TrackedFrame:
        f = TrackedFrame(p, 0)
        f.key, f.mark, f.taken_ns = flow.id, mark, taken_ns
        return f

    def _expire(self, flow: Flow, mark: tuple, taken_ns: int) -> None:
        self.drops["tx_expired"] += 1
        flow.stats["tx_expired"] += 1
        self._post_status(flow, TxStatus.EXPIRED, mark, taken_ns)

    def _post_status(self, flow: Flow, status: TxStatus, mark: tuple, taken_ns: int, reason: int = 0) -> None:
        """One packet's TX_STATUS; SENT only if it asked for reports (a deadline alone asks for the rest)."""
        if status == TxStatus.SENT and not mark[2]:
            return
        flow.port.pipe.ends[CLIENT].events.post(EventType.TX_STATUS, status | reason << 8, mark[3],
                                                value=mark[0], aux=taken_ns)

    def _frame_status(self, f: TrackedFrame, status: TxStatus, reason: int = 0) -> None:
        """The netif's word on a queued TrackedFrame: sent, expired at the head of its queue, dropped
        there by its AQM (`reason`), or flushed."""
        flow = self.flows.get(f.key)
        if flow is None:
            return  # its flow is gone: nobody to tell
        if status == TxStatus.EXPIRED:
            self._expire(flow, f.mark, f.taken_ns)
        else:
            self._post_status(flow, status, f.mark, f.taken_ns, reason)

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

    def _tx_fast_ok(self, flow: Flow, rows: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Rows that are, column-wise, a well-formed option-less IPv4 packet of this flow.

        Not a fragment (DF alone is fine), a TTL above 0, and for an
        unconnected flow a destination a peer can have (`not_a_peer`) and a
        port other than 0. The rest go to `_tx_one`, which finds the reason.
        """
        if rows.shape[1] < ETH_HLEN + 24:
            return np.zeros(len(lens), bool)
        h = rows[:, ETH_HLEN : ETH_HLEN + 24]
        cols, want = flow.tx_signature(self.netif.ip)
        ok = (h[:, cols] == want).all(axis=1)  # version/ihl, protocol, source, ports
        total = be_u16(h[:, 2:4])
        ok &= (total == lens) & (lens >= 24) & (lens <= self.netif.mtu)
        ok &= ((h[:, 6] & 0x3F) == 0) & (h[:, 7] == 0) & (h[:, 8] != 0)  # no MF, no offset; TTL
        if flow.raddr is None:  # a connected flow's destination is in its signature
            d = be_u32(h[:, 16:20]).astype(np.int64)
            ok &= ~not_unicast4(d) & (d != self._local4) & (d != self._bcast4)
            ok &= (h[:, 22] | h[:, 23]) != 0
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
        if ihl < 20 or total != n or n < ihl or int.from_bytes(p[:ihl], "big") % 0xFFFF:
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
        if frag is not None:
            return self._tx_fragment(flow, p, l4, src, self.netif.ip6, dst, frag[1], frag[0], now)
        if n < l4 + 4:
            self._tx_drop(flow, TxDropReason.MALFORMED, n)
            return 0
        return self._tx_addressed(flow, p, l4, src, self.netif.ip6, dst, now, gso)

    def _tx_fragment(self, flow: Flow, p: bytes, l4: int, src: bytes, local: bytes | None, dst: bytes,
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

    def _tx_addressed(self, flow: Flow, p: bytes, l4: int, src: bytes, local: bytes | None, dst: bytes,
                      now: float, gso: int = 0, ports: bool = True) -> int:
        """The checks both families share, once the IP header is sound: who sends, to whom, how big.

        `ports` False: a later fragment, whose transport header went in its first.
        """
        n = len(p)
        sport, dport = _PORTS.unpack_from(p, l4) if ports else (flow.lport, flow.rport)
        if src != local or sport != flow.lport:
            self._tx_drop(flow, TxDropReason.SPOOFED_SOURCE, n)
            return 0
        if flow.raddr is not None:
            if dst != flow.raddr or dport != flow.rport:
                self._tx_drop(flow, TxDropReason.WRONG_DESTINATION, n)
                return 0
        elif dport == 0 or self.not_a_peer(dst) is not None:  # sendto: unicast to a peer, as Linux
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
        if not self._route(flow.id, dst, p, now):
            self._tx_drop(flow, TxDropReason.NO_ROUTE, n)
            return 0
        return 1

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
                        self._post_status(flow, TxStatus.DROPPED, meta.marks[pos], meta.taken_ns,
                                          TxDropReason.RATE_EXCEEDED)
            rows, lens, gso = rows[:k], lens[:k], gso[:k]
        return rows, lens, gso

    def _tx_drop(self, flow: Flow, reason: TxDropReason, length: int) -> None:
        self._last_drop = reason
        self.drops["tx_" + reason.name.lower()] += 1
        flow.stats["tx_dropped"] += 1
        flow.port.pipe.ends[CLIENT].events.post(EventType.TX_DROPPED, reason, value=length)

    def _neighbour(self, dst: bytes, now: float) -> tuple[bytes | None, bytes | None]:
        """(next hop or None if no route, its MAC or None while unresolved) for `dst` (4 or 16 bytes)."""
        hop = self.netif.next_hop(dst)
        if hop is None:
            return None, None
        if len(hop) == 16:
            return hop, multicast_mac(hop) if hop[0] == 0xFF else self.nd.lookup(hop, now)
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
        """Hold `packet` for `hop` in that neighbour's own bounded queue: nothing else waits with it."""
        ipv4 = len(hop) == 4
        ask, dropped = (self.arp if ipv4 else self.nd).wait(hop, (key, packet), len(packet) + ETH_HLEN, now)
        if ask and ipv4:
            self._arp_request(hop)
        elif ask:
            self._solicit(hop)
        for item in dropped:
            self._unresolved(item)

    def _unresolved(self, item: tuple[int, bytes]) -> None:
        """A packet that waited for a neighbour in vain: counted, and told to its flow."""
        key, packet = item
        self.drops["tx_neighbour_unresolved"] += 1
        flow = self.flows.get(key)
        if flow is not None:
            flow.stats["tx_dropped"] += 1
            flow.stats["tx_packets"] -= 1  # counted as sent when it was queued for ARP
            flow.port.pipe.ends[CLIENT].events.post(EventType.TX_DROPPED, TxDropReason.NEIGHBOUR_UNRESOLVED,
                                                    value=len(packet))
            if type(packet) is TrackedFrame:
                self._post_status(flow, TxStatus.DROPPED, packet.mark, packet.taken_ns,
                                  TxDropReason.NEIGHBOUR_UNRESOLVED)

    def _emit(self, key: int, mac: bytes, packet: bytes) -> None:
        self._send_frame(key, mac, ETHERTYPE_IPV6 if packet[0] >> 4 == 6 else ETHERTYPE_IPV4, packet)

    def _send_frame(self, key: int, dst_mac: bytes, etype: int, payload: bytes) -> None:
        frame = _ETH.pack(dst_mac, self.netif.mac, etype) + payload
        if isinstance(payload, SegmentedFrame):  # a super-segment, a tracked frame: keep what it carries
            frame = payload.rewrap(frame)
        self.netif.enqueue(key, frame)

    def _send_ip(self, key: int, dst: bytes, proto: int, payload: bytes, now: float) -> None:
        """A packet of the switch's own (ICMP): it builds the IP header itself."""
        self._ident = (self._ident + 1) & 0xFFFF
        hdr = build_ipv4_header(self.netif.ip, dst, proto, len(payload), ident=self._ident)
        self._route(key, dst, hdr + payload, now)

    def _send_ip6(self, key: int, src: bytes, dst: bytes, nh: int, payload: bytes, now: float) -> None:
        """An IPv6 packet of the switch's own (echo reply, port unreachable, RST)."""
        self._route(key, dst, build_ipv6_header(src, dst, nh, len(payload)) + payload, now)

    def _solicit(self, target: bytes) -> None:
        """Ask for `target`'s MAC: a Neighbour Solicitation to its solicited-node group.

        From our link-local address, which every neighbour can answer whatever its prefix.
        """
        src, group = self.netif.ll6, solicited_node(target)
        assert src is not None
        ns = wicmp6.build_ns(src, group, target, self.netif.mac)
        self.counts["nd_solicits"] += 1
        self._send_frame(0, multicast_mac(group), ETHERTYPE_IPV6,
                         build_ipv6_header(src, group, ICMPV6, len(ns), 255) + ns)

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
        if self.reasm.table:
            self.reasm.expire(now)  # counted as frag_timeout
        for cache, ask_for in ((self.arp, self._arp_request), (self.nd, self._solicit)):
            if not cache.pending:
                continue
            ask, gave_up = cache.due(now)
            for ip in ask:
                ask_for(ip)
            for item in gave_up:
                self._unresolved(item)

    def flush(self) -> int:
        n = self.netif.flush()
        for flow in self.flows.values():
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

    def next_timeout(self) -> float | None:
        now = self.clock()
        frag = self.reasm.next_deadline()
        t = [x for x in (self.arp.next_timer(now), self.nd.next_timer(now), self.netif.driver.timeout(),
                         self.netif.next_timeout(), None if frag is None else max(0.0, frag - now))
             if x is not None]  # the netif: queued frames, pacing
        return min(t) if t else None

    def info(self) -> dict[str, Any]:
        return {"netif": self.netif.info(), "flows": [f.describe() for f in self.flows.values()],
                "drops": dict(self.drops), "counts": {k: v for k, v in self.counts.items() if ":" not in k},
                "fragments": dict(self.frags),
                "arp": {ip_str(k): v[0].hex(":") for k, v in self.arp.entries.items()},
                "nd": {ip6_str(k): v[0].hex(":") for k, v in self.nd.entries.items()}}

