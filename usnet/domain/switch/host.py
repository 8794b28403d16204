"""The host's duties on the link, which the switch does for all its flows (docs/architecture.md).

Clients hand the switch IP packets and receive IP packets; the link layer is
the switch's: ARP and IPv6 Neighbour Discovery (answers for its addresses,
resolves neighbours; one NeighbourCache class, an instance per family, and a
packet waits for its neighbour in that neighbour's own bounded queue),
Ethernet framing, and what a host answers itself: ICMP and ICMPv6 echo,
port unreachable or a RST for a port nobody holds. An ICMP error is passed to
the flow whose packet it quotes.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

from usnet.abi.events import EventType, TxDropReason, TxStatus
from usnet.domain.switch.icmplimit import IcmpLimiter
from usnet.domain.switch.neighbours import NeighbourCache
from usnet.domain.switch.port import CLIENT
from usnet.domain.switch.table import ICMP, TCP, UDP, FlowTable
from usnet.drivers.base import Received, SegmentedFrame, TrackedFrame
from usnet.proto.tcp.connection import rst_reply
from usnet.proto.wire import arp as warp
from usnet.proto.wire import icmp as wicmp
from usnet.proto.wire import icmpv6 as wicmp6
from usnet.proto.wire import tcp as wtcp
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.ethernet import BROADCAST, ETH_HLEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6
from usnet.proto.wire.fragment import ip4_fragments, ip6_fragments
from usnet.proto.wire.igmp import group_mac4
from usnet.proto.wire.ipv4 import IPV4_HLEN, build_ipv4_header, martian_source4
from usnet.proto.wire.ipv6 import (
    ALL_NODES,
    ICMPV6,
    IPV6_HLEN,
    UNSPECIFIED,
    build_ipv6_header,
    multicast_mac,
    solicited_node,
)

__all__ = ["DEFEND_INTERVAL", "ETH", "HostDuties"]

log = logging.getLogger(__name__)

ETH = struct.Struct("!6s6sH")  # Ethernet destination, source, type
# the ICMP errors passed on to the flow whose packet they quote (its stack judges them further)
_ICMP_ERRORS = frozenset((wicmp.DEST_UNREACH, wicmp.SOURCE_QUENCH, wicmp.TIME_EXCEEDED, wicmp.PARAM_PROBLEM))
DEFEND_INTERVAL = 10.0  # RFC 5227: at most one announcement defending our address per this many seconds
_LINKS_MAX = 4096  # destinations whose framing `_link` remembers (a neighbour table's own bound); then it starts over


class HostDuties(FlowTable):
    """Neighbours (ARP, ND), framing and routing onto the link, and the host's own answers."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.arp = NeighbourCache()  # IPv4 neighbours, asked for with ARP
        self.nd = NeighbourCache()  # IPv6 neighbours, asked for with Neighbour Solicitations
        self._ident = 0  # the IPv4 ident of the switch's own packets
        self._defended_at: float | None = None  # when we last announced our address against a conflict
        self.icmp_limit = IcmpLimiter()  # Linux's limits on the ICMP errors we send (port unreachable)
        # under `usnetd --workers N`: (port, frame, looped) -> whether the port is another worker's,
        # to which the frame has been handed: in usnetd, one from queue 0, its port not steered
        # (usnet.domain.switch.rx `_handed_over`, `_icmp_error`); in any, `looped`, a packet of the
        # local queue (usnet.domain.switch.local): a group datagram a flow sent with IP_MULTICAST_LOOP,
        # the port's members' to hear, or a flow's packet to the netif's own address, or the host's
        # answer to one (an ICMP error from our own address), the port's flow's
        self.hand_over: Callable[[int, Received, bool], bool] | None = None
        # `_link`: unicast destination -> (its family's neighbour table, the next hop, that
        # neighbour's entry in it, the Ethernet header)
        self._links: dict[bytes, tuple[dict[bytes, tuple[bytes, float]], bytes, tuple[bytes, float], bytes]] = {}

    # -- neighbours and the link ---------------------------------------------------------------

    def _neighbour(self, dst: bytes, now: float) -> tuple[bytes | None, bytes | None]:
        """(next hop or None if no route, its MAC or None while unresolved) for `dst` (4 or 16 bytes).
        A group is on the link, at its group MAC (no ARP, no ND), as Linux's ip_mc_map and
        ipv6_eth_mc_map."""
        v4 = len(dst) == 4  # a next hop is of its destination's family
        if v4:
            if dst[0] >> 4 == 14 and self.netif.ip is not None:
                return dst, group_mac4(dst)
        elif dst[0] == 0xFF:
            return dst, multicast_mac(dst)
        hop = self.netif.next_hop(dst)
        if hop is None:
            return None, None
        if not v4:
            return hop, multicast_mac(hop) if hop[0] == 0xFF else self.nd.lookup(hop, now)
        if hop == self.netif.broadcast or hop == b"\xff\xff\xff\xff":
            return hop, BROADCAST
        return hop, self.arp.lookup(hop, now)

    def _link(self, dst: bytes, now: float) -> bytes | None:
        """The Ethernet header a flow's packet to unicast `dst` (4 or 16 bytes) goes out with, if
        its neighbour is known; None for anything else (a group, a broadcast, our own address, no
        route, the neighbour not resolved), which takes `_route`.

        What `_route` would do for such a packet (the route, the neighbour's lookup, the framing:
        some ten calls a packet, issues 16 and 18), remembered per destination: the routes and
        our MAC never change, and the remembered header stands exactly while the neighbour's ARP
        or ND entry is the very one it was made from (`NeighbourCache.learn` makes a new one,
        `lookup` and `expire` drop it) and has not expired (as `lookup` judges it).
        """
        link = self._links.get(dst)
        if link is not None:
            known = link[2]
            if link[0].get(link[1]) is known and known[1] >= now:
                return link[3]
        netif = self.netif
        # a group or a broadcast is not framed from the neighbour table, our own address is not
        # framed at all (usnet.domain.switch.local), and a group may loop back to members here
        if len(dst) == 4:
            if dst[0] >> 4 >= 14 or dst == netif.ip or dst == netif.broadcast:
                return None
            entries, etype = self.arp.entries, ETHERTYPE_IPV4
        else:
            if dst[0] == 0xFF or dst in netif.addrs6:
                return None
            entries, etype = self.nd.entries, ETHERTYPE_IPV6
        hop = netif.next_hop(dst)
        if hop is None or hop == netif.broadcast or hop[0] == 0xFF:
            return None
        entry = entries.get(hop)
        if entry is None or entry[1] < now:
            return None  # `_route` looks it up (dropping it if expired) and asks for it
        links = self._links
        if len(links) >= _LINKS_MAX:
            links.clear()
        header = ETH.pack(entry[0], netif.mac, etype)
        links[dst] = (entries, hop, entry, header)
        return header

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
                flow.post_status(TxStatus.DROPPED, packet.mark, packet.taken_ns, TxDropReason.NEIGHBOUR_UNRESOLVED)

    def _emit(self, key: int, mac: bytes, packet: bytes) -> None:
        self._send_frame(key, mac, ETHERTYPE_IPV6 if packet[0] >> 4 == 6 else ETHERTYPE_IPV4, packet)

    def _send_frame(self, key: int, dst_mac: bytes, etype: int, payload: bytes) -> None:
        frame = ETH.pack(dst_mac, self.netif.mac, etype) + payload
        # a super-segment, a tracked frame: keep what it carries (a plain packet: no isinstance)
        if type(payload) is not bytes and isinstance(payload, SegmentedFrame):
            frame = payload.rewrap(frame)
        self.netif.enqueue(key, frame)

    def _send_ip(self, key: int, src: bytes, dst: bytes, proto: int, payload: bytes, now: float) -> None:
        """A packet of the switch's own (echo reply, port unreachable, RST) from `src` to `dst`, either
        family (the addresses' length): it builds the IP header itself. One over the MTU (the reply to
        an echo request that came in fragments) leaves in fragments, as Linux's icmp_reply does; it
        used to be handed to the device whole and refused there (a tx error, no reply)."""
        mtu = self.netif.mtu
        if len(dst) == 4:
            self._ident = (self._ident + 1) & 0xFFFF
            if len(payload) + IPV4_HLEN > mtu:
                for piece in ip4_fragments(src, dst, proto, payload, self._ident, mtu):
                    self._route(key, dst, piece, now)
                return
            hdr = build_ipv4_header(src, dst, proto, len(payload), ident=self._ident)
        else:
            if len(payload) + IPV6_HLEN > mtu:
                self._ident = (self._ident + 1) & 0xFFFF
                for piece in ip6_fragments(src, dst, proto, payload, self._ident, mtu):
                    self._route(key, dst, piece, now)
                return
            hdr = build_ipv6_header(src, dst, proto, len(payload))
        self._route(key, dst, hdr + payload, now)

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

    def service_neighbours(self, now: float) -> None:
        """Ask again for the neighbours still unresolved; drop, and report, what waited in vain."""
        for cache, ask_for in ((self.arp, self._arp_request), (self.nd, self._solicit)):
            if not cache.pending:
                continue
            ask, gave_up = cache.due(now)
            for ip in ask:
                ask_for(ip)
            for item in gave_up:
                self._unresolved(item)
            if gave_up:
                self._link_failure(gave_up)

    def _link_failure(self, gave_up: list[tuple[int, bytes]]) -> None:
        """Tell each flow whose packets waited for a neighbour in vain that its destination is
        unreachable, as Linux's dst_link_failure does: an ICMP host unreachable (ICMPv6 address
        unreachable) from our own address, quoting the flow's last such packet, handed to the flow
        as any ICMP error. Its stack judges it: a TCP connect fails with EHOSTUNREACH (about 3 s
        after the first packet: `tries` requests `retry` apart, Linux's 3 and 1 s), a UDP socket
        is not told (a soft error, usnet.proto.icmp_errors). Once per flow and give-up."""
        last: dict[int, bytes] = {}
        for key, packet in gave_up:
            if key:  # 0: the switch's own packets
                last[key] = packet
        netif = self.netif
        for key, packet in last.items():
            flow = self.flows.get(key)
            if flow is None:
                continue
            if packet[0] >> 4 == 6 and netif.ip6 is not None:
                msg = wicmp6.build_error6(wicmp6.DEST_UNREACH, wicmp6.ADDR_UNREACH, packet, netif.ip6, netif.ip6)
                err = build_ipv6_header(netif.ip6, netif.ip6, ICMPV6, len(msg)) + msg
            else:
                msg = wicmp.build_dest_unreach(wicmp.HOST_UNREACH, packet)
                self._ident = (self._ident + 1) & 0xFFFF
                err = build_ipv4_header(netif.ip, netif.ip, ICMP, len(msg), ident=self._ident) + msg
            self.counts["tx_link_failure"] += 1
            flow.port.deliver([err])

    # -- ARP and Neighbour Discovery -----------------------------------------------------------

    def _rx_arp(self, f: Received, src_mac: bytes, now: float) -> None:
        """An ARP packet: conflicts on our address first (RFC 5227), then requests and replies for us.

        Learnt only from a sender whose address could be a neighbour's: a
        probe (sender 0.0.0.0, RFC 5227 §2.1.1) is answered as Linux does and
        teaches nothing; a martian sender earns nothing. A request for our
        address teaches its sender (Linux's neigh_event_ns); a reply only
        updates an address we know or asked for, as Linux's default
        arp_accept=0 (no entry is made from an unsolicited reply).
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
        elif op != warp.ARP_REQUEST and not self.arp.knows(spa):
            self.drops["arp_unsolicited"] += 1  # Linux's arp_accept=0: a reply nobody asked for creates nothing
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

    def _rx_ns(self, f: Received, start: int, end: int, src: bytes, dst: bytes, hop: int,
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

    def _rx_na(self, f: Received, start: int, end: int, dst: bytes, hop: int, now: float) -> None:
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

    # -- ICMP, and ports nobody holds ----------------------------------------------------------

    def _rx_icmp(self, f: Received, start: int, end: int, src: bytes, dst: bytes, per_flow: dict) -> None:
        typ, _code, ident, seq, poff = wicmp.parse_icmp(f, start, end - start)
        if typ == wicmp.ECHO_REQUEST and dst == self.netif.ip:
            self.counts["icmp_echo"] += 1
            reply = wicmp.build_echo(wicmp.ECHO_REPLY, ident, seq, f[poff:end])
            self._send_ip(0, dst, src, ICMP, reply, self.clock())
        elif typ == wicmp.ECHO_REPLY and dst == self.netif.ip and self.echo.reply(
                ident, seq, f[ETH_HLEN + 8], end - poff + 8, self.clock()):  # `usnet ping`'s (switch.echo)
            self.counts["icmp_echo_replies"] += 1
        elif typ in _ICMP_ERRORS and dst == self.netif.ip:
            self._icmp_error(f, poff, end, 4, per_flow)
        else:
            self.drops["rx_icmp_other"] += 1

    def _rx_icmp6(self, f: Received, start: int, end: int, src: bytes, dst: bytes, hop: int,
                  src_mac: bytes, now: float, per_flow: dict) -> None:
        typ, _code, ident, seq, body = wicmp6.parse_icmpv6(f, start, end - start, src, dst)  # checksum too
        if typ == wicmp6.NEIGHBOR_SOLICIT:
            self._rx_ns(f, start, end, src, dst, hop, src_mac, now)
        elif typ == wicmp6.NEIGHBOR_ADVERT:
            self._rx_na(f, start, end, dst, hop, now)
        elif typ == wicmp6.ECHO_REQUEST and dst in self.netif.addrs6 and src != UNSPECIFIED:
            self.counts["icmp6_echo"] += 1
            reply = wicmp6.build_echo6(wicmp6.ECHO_REPLY, ident, seq, f[body:end], dst, src)
            self._send_ip(0, dst, src, ICMPV6, reply, now)
        elif typ in wicmp6.ERRORS and dst == self.netif.ip6:
            self._icmp_error(f, body, end, 6, per_flow)
        else:
            self.drops["rx_icmp6_other"] += 1  # router discovery, MLD: nobody here wants them

    def _icmp_error(self, f: Received, q: int, end: int, family: int, per_flow: dict) -> None:
        """Pass an ICMP(v6) error, the whole IP packet, to the flow whose packet it quotes at `q`
        (`_quoted`), or, under `usnetd --workers N`, the whole frame to the worker that owns the
        quoted local port (`hand_over`, as a datagram put back together is: an error has no port of
        its own, so the device steers every one to queue 0, usnetd's). That worker takes it as if it
        came off the wire (`rx_whole`) and runs this again: the same lookup, the flow's stack the
        same judge (a TCP sequence in flight, a connected peer) as on a single loop. An error from
        our own address is the local path's (the answer to a flow's datagram to a port of ours
        nobody holds: from the wire it is a martian): looped, as the datagram was."""
        quote = self._quoted(f, q, end, family)
        if quote is None:
            self.drops["rx_icmp_unmatched"] += 1
            return
        if self.hand_over is not None and self.hand_over(quote[1], f, self._from_us(f, family)):
            return  # another worker's port: its flow, if any, is there
        flow = self.lookup(*quote)
        if flow is None:
            self.drops["rx_icmp_unmatched"] += 1
            return
        self.counts["rx_icmp_error"] += 1
        per_flow.setdefault(flow, []).append(f[ETH_HLEN:end])

    def _from_us(self, f: Received, family: int) -> bool:
        """Whether IP packet `f`'s source is one of the netif's own addresses."""
        if family == 4:
            return f[ETH_HLEN + 12 : ETH_HLEN + 16] == self.netif.ip
        return bytes(f[ETH_HLEN + 8 : ETH_HLEN + 24]) in self.netif.addrs6

    def _no_socket(self, proto: int, f: Received, start: int, end: int, src: bytes, dst: bytes,
                   now: float) -> None:
        """Nobody has this port: answer as a host does, from the address asked (UDP: port
        unreachable, ICMP or ICMPv6 by the family; TCP: RST)."""
        if proto == UDP:
            if (not self.netif.loopback and src != self.netif.ip and src not in self.netif.addrs6
                    and not self.icmp_limit.allow(src, now)):
                self.counts["icmp_ratelimited"] += 1  # as Linux's OutRateLimitHost/OutRateLimitGlobal
                return
            if len(src) == 4:
                self.counts["icmp_unreach_sent"] += 1
                msg, nh = wicmp.build_dest_unreach(wicmp.PORT_UNREACH, f[ETH_HLEN:end]), ICMP
            else:
                self.counts["icmp6_unreach_sent"] += 1
                msg = wicmp6.build_error6(wicmp6.DEST_UNREACH, wicmp6.PORT_UNREACH, f[ETH_HLEN:end], dst, src)
                nh = ICMPV6
            self._send_ip(0, dst, src, nh, msg, now)
            return
        try:
            seg = wtcp.parse_tcp(f, start, end - start, src, dst)
        except WireError:
            return  # a bad segment earns no answer
        rst = rst_reply(wtcp.pseudo_sum(dst, src), seg)
        if rst is not None:
            self.counts["tcp_rst_sent"] += 1
            self._send_ip(0, dst, src, TCP, rst, now)
