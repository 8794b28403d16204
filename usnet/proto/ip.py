"""The client's IP layer: IPv4 and IPv6 for one flow's TCP, sans-I/O (docs/architecture.md).

`IpLayer` takes whole IP packets and the time, and returns events; it never
reads a clock or touches a device. Everything malformed, unexpected or over
a budget is dropped and counted in ``IpLayer.counters`` (a `Counter` keyed by
reason): nothing that comes from the wire raises out of `IpLayer.input`.

    ip = IpLayer([ip_bytes("10.0.0.1")], mtu=1500)
    for ev in ip.input(packet, now):
        Datagram(proto, src, dst, payload, packet, ttl)  -> hand to TCP
        IcmpError(proto, local, local_port, remote, remote_port, errno, ...)
                                                         -> report to the matching connection
    ip.output(proto, src, dst, payload, now) -> [packet, ...]   (fragments if needed)
    ip.head(proto, src, dst, len(payload), now) -> header   (None: must fragment; use output)

What it does not do, because the flow switch does it once for every flow
of its netif (docs/architecture.md, "Data paths"): ARP and Neighbour
Discovery (usnet.domain.switch.neighbours), echo replies, port unreachable
and RST for ports nobody holds, and reassembly (`usnet.proto.reassembly`,
run by the switch before it classifies). A flow is handed only whole
datagrams for its 5-tuple and the ICMP errors that quote its packets, so a
fragment here is counted and dropped, and any ICMP other than an error is
ignored.

Input (RFC 791, 1122, 8200): header checks (version, lengths, IPv4 header
checksum), the destination must be one of ours, multicast sources are
dropped; IPv6 extension headers are walked
(usnet.proto.wire.ipv6.skip_ext_headers), an atomic fragment (RFC 6946)
taken whole. Payloads are memoryviews into the caller's packet (zero copy);
``Datagram.packet`` is the whole IP packet.

ICMP errors (destination unreachable, time exceeded, parameter problem,
packet too big) become `IcmpError` events with the 5-tuple of *our* packet
taken from the quote (usnet.proto.icmp_errors), only if the quoted source is
one of our addresses. Frag-needed and packet-too-big carry the MTU they
report; the transport that owns the quoted packet lowers the path MTU with it
(`IpLayer.lower_pmtu`, usnet.proto.pmtu) once it has checked that the error is
about a packet it sent (TCP: a sequence number in flight), as Linux lowers it
only from tcp_v4_err/tcp_v6_err after that check: a host off the path that
forges a "fragmentation needed" must guess the sequence number.

Output: IPv4 fragments when the packet exceeds the path MTU and ``df`` is
not True (``df=None``, the default, sets DF on packets that fit: the Linux
"want" mode); IPv6 never fragments, so a too-big packet raises
``OSError(EMSGSIZE)`` (as does IPv4 with ``df=True``). Application errors
(bad arguments) raise; wire input never does.

Counter keys (all ints): rx, rx_truncated, rx_bad_version, rx_malformed,
rx_internal_error; ip4_/ip6_ truncated, bad_header, bad_checksum,
not_for_us, bad_src, fragment, delivered; ip6_bad_ext, ip6_no_next,
ip6_atomic_frag; icmp4_/icmp6_ bad, error, bad_quote, bogus_quote, ignored;
pmtu_lowered, pmtu_ignored, pmtu_bogus; tx, tx_fragments.
"""

from __future__ import annotations

import errno as _errno
import struct as _struct
from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

from usnet.proto.icmp_errors import ICMP4_ERRORS, icmp4_errno, icmp6_errno, quote4, quote6
from usnet.proto.ipmark import mark_ttl
from usnet.proto.pmtu import IPV4_MIN_MTU, IPV4_MIN_PMTU, PathMtuCache, frag_needed_mtu
from usnet.proto.reassembly import Reassembler
from usnet.proto.wire import icmp as _i4
from usnet.proto.wire import icmpv6 as _i6
from usnet.proto.wire.checksum import finish, verifies
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.ipv4 import (
    ICMP,
    IP_MF,
    IP_OFFMASK,
    IPOPT_SRR,
    IPV4_HLEN,
    IPV4_TEMPLATE,
    build_ipv4_header,
    ipv4_source_route,
    ipv4_template,
    parse_ipv4,
)
from usnet.proto.wire.ipv6 import (
    ICMPV6,
    IPV6_HLEN,
    IPV6_MIN_MTU,
    NO_NEXT,
    build_ipv6_header,
    is_link_local6,
    parse_ipv6,
    skip_ext_headers,
)

# Reassembler: re-exported for the flow switch, which imports it from here until its import
# names usnet.proto.reassembly (the switch is being split in another branch).
__all__ = ["Datagram", "IcmpError", "IpLayer", "Reassembler"]

LIMITED_BROADCAST = b"\xff\xff\xff\xff"
_IPV6_TEMPLATE = _struct.Struct("!4sH2s32s")  # version/class/flow, payload length, next header/hops, addresses


class Datagram(NamedTuple):
    """An upper-layer payload for us. ``src``/``dst`` are 4 or 16 bytes."""

    proto: int  # IPv4 protocol / IPv6 upper-layer next header
    src: bytes
    dst: bytes
    payload: memoryview
    packet: memoryview  # the whole IP packet
    ttl: int  # TTL / hop limit as received


class IcmpError(NamedTuple):
    """An ICMP(v6) error about a packet we sent, for the socket (proto, local:lport, remote:rport)."""

    proto: int
    local: bytes
    local_port: int | None  # None when the quote is too short or not from a first fragment
    remote: bytes
    remote_port: int | None
    errno: int
    icmp_type: int
    icmp_code: int
    mtu: int  # the MTU a frag-needed / packet-too-big reports (checked against the quote); else 0
    reporter: bytes  # the ICMP sender
    quote: memoryview  # quoted bytes from the transport header on (TCP: check the seq, RFC 5927)


class IpLayer:
    """IPv4 + IPv6 for one flow's addresses; see the module docstring for the events."""

    def __init__(
        self, addrs: Iterable[bytes] = (), mtu: int = 1500, *, ttl: int = 64, hop_limit: int = 64,
        pmtu_floor: int = IPV4_MIN_PMTU, pmtu_timeout: float = 600.0, pmtu_max_entries: int = 1024,
        ident: int = 0,
    ) -> None:
        if mtu < IPV4_MIN_MTU or mtu > 0xFFFF:
            raise ValueError(f"MTU {mtu} out of range")
        self.mtu = mtu
        self.ttl = ttl
        self.hop_limit = hop_limit
        self.counters: Counter = Counter()
        self.pmtus = PathMtuCache(mtu, self.counters, pmtu_floor, pmtu_timeout, pmtu_max_entries)
        self.addrs4: list[bytes] = []
        self.addrs6: list[bytes] = []
        for a in map(bytes, addrs):
            if len(a) == 4:
                self.addrs4.append(a)
            elif len(a) == 16:
                if mtu < IPV6_MIN_MTU:
                    raise ValueError(f"IPv6 needs an MTU of at least 1280, not {mtu}")
                self.addrs6.append(a)
            else:
                raise ValueError("addresses must be 4 or 16 bytes")
        self._local4 = frozenset(self.addrs4)
        self._local6 = frozenset(self.addrs6)
        self._ident = ident & 0xFFFF
        # (dst, src, proto, ttl, df, tos) -> `ipv4_template`: what `head` fills in per packet;
        # `tos` is the whole mark (usnet.proto.ipmark), so a socket's TTL or TOS has its own
        self._tpl4: dict[tuple, tuple[bytes, bytes, bytes, int]] = {}
        # (dst, src, proto, hop limit, tos) -> the IPv6 header's parts around its payload length
        self._tpl6: dict[tuple, tuple[bytes, bytes, bytes]] = {}

    # -- input ------------------------------------------------------------------------

    def input(self, packet, now: float) -> list:
        """Process one IP packet (starting at the IP header); return events."""
        return self.input_all((packet,), now)

    def input_all(self, packets, now: float) -> list:
        """Process IP packets in turn; return their events, in order, in one list.

        Why a batch: the client's engine hands over what one pull of its RX ring took (packets of
        many connections), so the per-packet work is the header's alone, not a call and a list
        per packet on top (docs/design-notes.md, "The server's receive and write per
        request")."""
        ev: list = []
        c = self.counters
        c["rx"] += len(packets)
        for packet in packets:
            try:
                mv = memoryview(packet)
                if mv.ndim != 1 or mv.itemsize != 1:
                    mv = mv.cast("B")
                if not len(mv):
                    c["rx_truncated"] += 1
                    continue
                v = mv[0] >> 4
                if v == 4:
                    self._input4(mv, now, ev)
                elif v == 6:
                    self._input6(mv, now, ev)
                else:
                    c["rx_bad_version"] += 1
            except WireError:
                c["rx_malformed"] += 1
            except Exception:  # a bug, never the packet's fault: count it, keep the stack alive
                c["rx_internal_error"] += 1
        return ev

    def _input4(self, mv: memoryview, now: float, ev: list) -> None:
        c = self.counters
        n = len(mv)
        if n < IPV4_HLEN:
            c["ip4_truncated"] += 1
            return
        try:
            ihl, total, _ident, ff, ttl, proto, src, dst = parse_ipv4(mv, 0, n, False)
        except WireError:
            c["ip4_bad_header"] += 1
            return
        if not verifies(int.from_bytes(mv[:ihl], "big")):
            c["ip4_bad_checksum"] += 1
            return
        if dst not in self._local4:
            c["ip4_not_for_us"] += 1
            return
        if src[0] >= 224 or src == LIMITED_BROADCAST:
            c["ip4_bad_src"] += 1
            return
        if ff & (IP_MF | IP_OFFMASK):
            c["ip4_fragment"] += 1  # the switch hands over whole datagrams only
            return
        if ihl > IPV4_HLEN:
            why = ipv4_source_route(mv, 0, ihl)
            if why:  # as Linux with accept_source_route=0: never delivered, never answered
                c["ip4_source_route" if why == IPOPT_SRR else "ip4_bad_options"] += 1
                return
        pkt = mv[:total]
        payload = pkt[ihl:]
        if proto == ICMP:
            self._icmp4(src, payload, now, ev)
            return
        c["ip4_delivered"] += 1
        ev.append(Datagram(proto, src, dst, payload, pkt, ttl))

    def _input6(self, mv: memoryview, now: float, ev: list) -> None:
        c = self.counters
        n = len(mv)
        if n < IPV6_HLEN:
            c["ip6_truncated"] += 1
            return
        try:
            _tc, _fl, plen, nh, hop, src, dst = parse_ipv6(mv, 0, n)
        except WireError:
            c["ip6_bad_header"] += 1
            return
        if dst not in self._local6:
            c["ip6_not_for_us"] += 1
            return
        if src[0] == 0xFF:
            c["ip6_bad_src"] += 1
            return
        end = IPV6_HLEN + plen
        pkt = mv[:end]
        try:
            nh, off, frag = skip_ext_headers(pkt, IPV6_HLEN, end, nh)
            if frag is not None:
                if frag[1] or frag[2]:
                    c["ip6_fragment"] += 1  # the switch hands over whole datagrams only
                    return
                c["ip6_atomic_frag"] += 1  # RFC 6946: whole already; what follows it counts
                nh, off, frag = skip_ext_headers(pkt, off, end, nh, first=False)
                if frag is not None:
                    c["ip6_bad_ext"] += 1
                    return
        except WireError:
            c["ip6_bad_ext"] += 1
            return
        if nh == NO_NEXT:
            c["ip6_no_next"] += 1
            return
        payload = pkt[off:end]
        if nh == ICMPV6:
            self._icmp6(src, dst, payload, now, ev)
            return
        c["ip6_delivered"] += 1
        ev.append(Datagram(nh, src, dst, payload, pkt, hop))

    # -- ICMP errors ------------------------------------------------------------------

    def _quoted(self, fam: str, parse, local, payload):
        """The quote of an ICMP error, if it parses and names a packet we sent; else counted."""
        q = parse(payload, 8)
        if q is None:
            self.counters[f"{fam}_bad_quote"] += 1
            return None
        if q[1] not in local:  # the quoted source is not ours: a forged error
            self.counters[f"{fam}_bogus_quote"] += 1
            return None
        return q

    def _icmp4(self, reporter, payload, now, ev) -> None:
        c = self.counters
        try:
            typ, code, _hi, lo, _ = _i4.parse_icmp(payload, 0, len(payload), True)
        except WireError:
            c["icmp4_bad"] += 1
            return
        if typ not in ICMP4_ERRORS:
            c["icmp4_ignored"] += 1  # echo and the rest: the switch's, never a flow's
            return
        q = self._quoted("icmp4", quote4, self._local4, payload)
        if q is None:
            return
        proto, qsrc, qdst, sport, dport, qtotal, quote = q
        mtu = 0
        if typ == _i4.DEST_UNREACH and code == _i4.FRAG_NEEDED:
            mtu = frag_needed_mtu(lo, qtotal)
            if mtu >= qtotal:
                c["pmtu_bogus"] += 1
                return
        c["icmp4_error"] += 1
        ev.append(IcmpError(proto, qsrc, sport, qdst, dport, icmp4_errno(typ, code), typ, code, mtu,
                            reporter, quote))

    def _icmp6(self, reporter, dst, payload, now, ev) -> None:
        c = self.counters
        try:
            typ, code, hi, lo, _ = _i6.parse_icmpv6(payload, 0, len(payload), reporter, dst, True)
        except WireError:
            c["icmp6_bad"] += 1
            return
        if typ not in _i6.ERRORS:
            c["icmp6_ignored"] += 1  # echo, Neighbour Discovery and the rest: the switch's
            return
        q = self._quoted("icmp6", quote6, self._local6, payload)
        if q is None:
            return
        proto, qsrc, qdst, sport, dport, qtotal, quote = q
        mtu = 0
        if typ == _i6.PACKET_TOO_BIG:
            mtu = (hi << 16) | lo
            if mtu >= qtotal:
                c["pmtu_bogus"] += 1
                return
        c["icmp6_error"] += 1
        ev.append(IcmpError(proto, qsrc, sport, qdst, dport, icmp6_errno(typ, code), typ, code, mtu,
                            reporter, quote))

    def lower_pmtu(self, err: IcmpError, now: float) -> int:
        """Take the MTU `err` reports for its destination, now that its transport has found it to
        be about a packet it sent; returns the path MTU now in force (0: `err` reports none)."""
        if not err.mtu:
            return 0
        return self.pmtus.lower(err.remote, err.mtu, now, len(err.remote) == 16)

    # -- output -----------------------------------------------------------------------

    def _src4(self, src):
        if src is None:
            if not self.addrs4:
                raise OSError(_errno.EADDRNOTAVAIL, "no IPv4 address")
            return self.addrs4[0]
        src = bytes(src)
        if src not in self._local4:
            raise OSError(_errno.EADDRNOTAVAIL, "source is not a local address")
        return src

    def _src6(self, src, dst):
        if src is None:
            if not self.addrs6:
                raise OSError(_errno.EADDRNOTAVAIL, "no IPv6 address")
            ll = is_link_local6(dst)
            for a in self.addrs6:
                if is_link_local6(a) == ll:
                    return a
            return self.addrs6[0]
        src = bytes(src)
        if src not in self._local6:
            raise OSError(_errno.EADDRNOTAVAIL, "source is not a local address")
        return src

    def head(self, proto: int, src: bytes | None, dst: bytes, plen: int, now: float, *,
             ttl: int | None = None, tos: int = 0, df: bool | None = None,
             segmented: bool = False) -> bytes | None:
        """The IP header of the one packet `output` would make for ``plen`` bytes of payload.

        For a caller that writes the header and the payload (a view of its
        own buffer) into a packet buffer itself, instead of `output` joining
        them. None when IPv4 must fragment (call `output`, which does); the
        other arguments, counters and errors are `output`'s.
        """
        dst = bytes(dst)
        if len(dst) == 4:
            if type(src) is not bytes or src not in self._local4:
                src = self._src4(src)  # None (ours to pick), a view, or not ours (raises)
            pmtus = self.pmtus
            if pmtus.table:  # an ICMP lowered a path MTU
                pmtu, locked = pmtus.get(dst, now)
            else:
                pmtu, locked = pmtus.mtu, False
            if IPV4_HLEN + plen > pmtu and not segmented:
                if df and not locked:
                    raise OSError(_errno.EMSGSIZE,
                                  f"packet of {IPV4_HLEN + plen} bytes exceeds the path MTU {pmtu}")
                return None
            ident = self._ident
            self._ident = (ident + 1) & 0xFFFF
            self.counters["tx"] += 1
            t = self.ttl if ttl is None else ttl
            key = (dst, src, proto, t, df is not False and not locked, tos)
            tpl = self._tpl4.get(key)
            if tpl is None:  # the constant parts, once per destination (wire.ipv4.ipv4_template)
                if len(self._tpl4) >= 256:
                    self._tpl4.clear()
                tpl = self._tpl4[key] = ipv4_template(src, dst, proto, mark_ttl(tos, t), key[4], tos & 0xFF)
            total = IPV4_HLEN + plen
            if plen < 0 or total > 0xFFFF:
                raise WireError(f"IPv4: payload length {plen} out of range")
            return IPV4_TEMPLATE.pack(tpl[0], total, ident, tpl[1], finish(tpl[3] + total + ident), tpl[2])
        if len(dst) == 16:
            src = self._src6(src, dst)
            pmtu = self.pmtus.get(dst, now)[0]
            if IPV6_HLEN + plen > pmtu and not segmented:
                raise OSError(_errno.EMSGSIZE,
                              f"packet of {IPV6_HLEN + plen} bytes exceeds the path MTU {pmtu}")
            self.counters["tx"] += 1
            hop = self.hop_limit if ttl is None else ttl
            key6 = (dst, src, proto, hop, tos)
            tpl6 = self._tpl6.get(key6)
            if tpl6 is None:  # as IPv4's: the constant parts once per destination and mark
                if len(self._tpl6) >= 256:
                    self._tpl6.clear()
                h6 = build_ipv6_header(src, dst, proto, 0, mark_ttl(tos, hop), tos & 0xFF)  # its checks
                tpl6 = self._tpl6[key6] = (h6[:4], h6[6:8], h6[8:])
            try:
                return _IPV6_TEMPLATE.pack(tpl6[0], plen, tpl6[1], tpl6[2])
            except _struct.error:
                raise WireError(f"IPv6: payload length {plen} out of range") from None
        raise WireError("destination must be 4 or 16 bytes")

    def output(self, proto: int, src: bytes | None, dst: bytes, payload, now: float, *,
               ttl: int | None = None, tos: int = 0, df: bool | None = None,
               segmented: bool = False) -> list[bytes]:
        """Whole IP packets carrying ``payload`` (upper-layer checksums already set).

        ``src`` None picks one of our addresses. IPv4: ``df`` None sets DF when
        the packet fits the path MTU and fragments otherwise; False never sets
        DF; True raises ``OSError(EMSGSIZE)`` rather than fragment. A PMTU
        locked at the floor clears DF. IPv6 (``ttl`` is the hop limit, ``tos``
        the traffic class) raises EMSGSIZE above the path MTU. ``segmented``: a
        TCP super-segment the device cuts itself (segmentation offload), one
        packet whatever its size, and its segments are TCP's to keep within
        the path MTU.
        """
        plen = len(payload)
        hdr = self.head(proto, src, dst, plen, now, ttl=ttl, tos=tos, df=df, segmented=segmented)
        if hdr is not None:
            return [hdr + payload]
        # IPv4 beyond the path MTU, DF not asked for (`head` raised where it was): fragments
        dst = bytes(dst)
        src = self._src4(src)
        pmtu = self.pmtus.get(dst, now)[0]
        if IPV4_HLEN + plen > 0xFFFF:
            raise OSError(_errno.EMSGSIZE, f"payload of {plen} bytes does not fit an IPv4 datagram")
        t = mark_ttl(tos, self.ttl if ttl is None else ttl)
        tos &= 0xFF
        ident = self._ident
        self._ident = (ident + 1) & 0xFFFF
        chunk = (pmtu - IPV4_HLEN) & ~7
        mv = memoryview(payload)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        out = []
        for off in range(0, plen, chunk):
            piece = mv[off : off + chunk]
            out.append(build_ipv4_header(src, dst, proto, len(piece), ident, t, False, tos,
                                         off + chunk < plen, off) + piece)
        c = self.counters
        c["tx"] += 1
        c["tx_fragments"] += len(out)
        return out
