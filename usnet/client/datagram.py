"""The UDP endpoint: datagrams over a flow channel (`Client.udp_socket`).

It lives beside `usnet.socket`, not in `usnet.proto`, because it does I/O
on its channel; the stack's modules are sans-I/O.

The application's process builds the IPv4 and UDP headers itself, into the
packet buffer (one datagram: `wire.udp.udp_ipv4_headers`; a batch: column-wise from
the same `udp_ipv4_sums`), and the flow switch only checks them.
Receive verifies the UDP checksum here, in the user domain: the switch
classifies but never trusts or fixes a payload.

IPv6 flows (`FlowOpened.family == 6`) build and check one datagram at a
time (`_send_many6`, `_recv_copies`): the column-wise batch code is IPv4's. The
IPv6 UDP checksum is mandatory, so a datagram that arrives without one is
dropped. Addresses are (host, port) pairs in both families.
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import os
import struct
from collections.abc import Callable, Iterator
from socket import inet_ntoa
from typing import Final, Literal, NoReturn

import numpy as np

from usnet.abi.events import Event
from usnet.abi.protocol import FlowOpened
from usnet.abi.rxchain import chains, max_slots
from usnet.abi.umd import RX_MORE, UMD_WORDS, W_FLAGS
from usnet.client.channel import _UNSET, Channel
from usnet.client.mcast import is_group, is_group6
from usnet.proto.icmp_errors import icmp4_error, icmp6_error
from usnet.proto.ipmark import mark_tos, mark_ttl
from usnet.proto.route import Routes
from usnet.proto.wire.checksum import acc, verifies
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.fragment import UDP4_MAX_PAYLOAD, UDP6_MAX_PAYLOAD, udp4_fragments, udp6_fragments
from usnet.proto.wire.ipv4 import IPV4_HLEN, ip_bytes, ip_str, parse_ipv4
from usnet.proto.wire.ipv6 import (
    IPV6_HLEN,
    build_ipv6_header,
    ip6_bytes,
    ip6_str,
    parse_ipv6,
    skip_ext_headers,
    upper_checksum_v6,
    verify_upper_v6,
)
from usnet.proto.wire.rows import be_u16, be_u32, finish_rows, padded_width, row_sums
from usnet.proto.wire.udp import (
    UDP_HEADER,
    UDP_HLEN,
    UDP_IPV4_HEADER,
    parse_udp,
    udp_ipv4_headers,
    udp_ipv4_marked_headers,
    udp_ipv4_sums,
)

__all__ = ["Address", "DatagramSocket"]

HEADERS = IPV4_HLEN + UDP_HLEN
HEADERS6 = IPV6_HLEN + UDP_HLEN
_UDP = UDP_HEADER.struct
_UDP_CSUM = UDP_HEADER.off["checksum"]
# The IPv4 header (no options) and the UDP header as a numpy record, so a batch's headers
# are written a field (column) at a time, and the offsets at which a batch's received
# headers are read as columns.
_IP_UDP = UDP_IPV4_HEADER
_HDR_DTYPE = _IP_UDP.dtype()
_VER_IHL, _PROTO, _TOTAL, _SRC = (_IP_UDP.off[f] for f in ("ver_ihl", "proto", "total_length", "src"))
_SPORT, _ULEN, _UCSUM = (_IP_UDP.off[f] for f in ("udp_sport", "udp_length", "udp_checksum"))
Address = tuple[str, int]


def _payload_rows(payloads: list, lens: np.ndarray, big: int) -> np.ndarray:
    """The payloads as rows of one array, zero-padded to a width `row_sums` takes."""
    n = len(payloads)
    width = padded_width(big)
    if int(lens.min()) == big:
        joined = np.frombuffer(b"".join(payloads), np.uint8).reshape(n, big)
        if big == width:
            return joined
        rows = np.zeros((n, width), np.uint8)
        rows[:, :big] = joined
        return rows
    rows = np.zeros((n, width), np.uint8)
    for i, p in enumerate(payloads):
        rows[i, : len(p)] = np.frombuffer(p, np.uint8)
    return rows


class _Icmp(enum.Enum):
    ERROR = 0


_ICMP: Final = _Icmp.ERROR  # what `_parse_slow` returns for an ICMP error: no datagram, not a bad one
_Parsed = tuple[bytes, Address] | Literal[_Icmp.ERROR] | None  # a datagram, _ICMP, or None: a bad one


def _header(v: bytes) -> tuple[int, int, bytes]:
    """An IP packet's (TOS, TTL, destination), or an IPv6 one's (traffic class, hop limit,
    destination): the destination is a group's for a datagram to a group (IP_PKTINFO's ipi_addr)."""
    if v[0] >> 4 == 6:
        return ((v[0] & 0xF) << 4) | (v[1] >> 4), v[7], bytes(v[24:40])
    return v[1], v[8], bytes(v[16:20])


class DatagramSocket:
    """sendto/recvfrom over a flow channel; batches on the `*_many` calls."""

    def __init__(self, channel: Channel, info: FlowOpened) -> None:
        self.channel = channel
        self.local = (info.local_addr, info.local_port)
        self.remote: Address | None = None
        if info.remote_addr and info.remote_port is not None:
            self.remote = (info.remote_addr, info.remote_port)
        self.mtu = info.mtu
        self._v6 = getattr(info, "family", 4) == 6
        self.v6 = self._v6
        self.loopback = ipaddress.ip_address(info.local_addr).is_loopback  # on the domain's loopback netif
        self._src = ip6_bytes(info.local_addr) if self._v6 else ip_bytes(info.local_addr)
        self._ident = 0
        self._ident6 = int.from_bytes(os.urandom(4), "big")  # IPv6 fragments' identification
        self.rx_bad = 0  # datagrams dropped here: bad checksum or malformed
        # IP_RECVTOS, IP_RECVTTL, IPV6_RECVTCLASS, IPV6_RECVHOPLIMIT (usnet.client.rxinfo): each
        # datagram comes with its header's (TOS, TTL) or (traffic class, hop limit) as a third item
        self.keep_header = False
        self.rx_chain_bad = 0  # of those, chains of packets cut or too long (`_recv_chained`)
        # An ICMP error about what this connected socket sent (port unreachable: ECONNREFUSED),
        # raised by the next call, as a kernel socket's pending error (SO_ERROR) is.
        self.pending_error: int | None = None
        # IP_RECVERR / IPV6_RECVERR on: told of every ICMP error about what this socket sent (the
        # whole IP packet), for its error queue (usnet.client.dgram, usnet.proto.errqueue)
        self.on_error: Callable[[bytes], None] | None = None
        self.max_payload = min(info.mtu, channel.stride) - (HEADERS6 if self._v6 else HEADERS)
        self._names: dict[int, str] = {}  # sender addresses as strings, made once each
        self._templates: dict[tuple[bytes, int], tuple[np.ndarray, tuple[int, int]]] = {}
        # The netif's routes of our family (usnet.proto.route, the switch's own decision): a
        # destination with none fails at once with ENETUNREACH, as on Linux. With a default
        # route every destination has one, and nothing is checked per datagram.
        self.routes = Routes.for_flow(info.local_addr, getattr(info, "prefix", -1), getattr(info, "gateway", None))
        # the addresses a datagram to which is a broadcast: the limited one and the subnet's (a
        # /31 or /32 has none), which usnet does not send (usnet.client.dgram `_no_group`)
        self.broadcasts: frozenset[str] = frozenset()
        if not self._v6:
            bcast = self.routes.broadcast4
            self.broadcasts = frozenset(("255.255.255.255", *([inet_ntoa(bcast)] if bcast else [])))
        self._routed_all = (self.routes.gateway6 if self._v6 else self.routes.gateway) is not None
        self._ttl, self._tos = 64, 0  # IP_TTL / IPV6_UNICAST_HOPS, IP_TOS / IPV6_TCLASS (`set_marking`)
        self.mc_ttl = 1  # the TTL (hop limit) of a datagram to a group (IP_MULTICAST_TTL, IPV6_MULTICAST_HOPS)

    def set_marking(self, mark: int) -> None:
        """The TTL (hop limit) and TOS (traffic class) of the datagrams sent from now on, as a
        mark (usnet.proto.ipmark; 0: 64 and 0). The batch path's header templates are made
        again for them; the one-datagram IPv4 path of a socket that sets either is
        `_send_one_marked`, put in `_send_one`'s place, so one that sets none pays nothing."""
        self._ttl, self._tos = mark_ttl(mark, 64), mark_tos(mark)
        self._templates.clear()
        if mark:
            self._send_one = self._send_one_marked  # type: ignore[method-assign]
        else:
            self.__dict__.pop("_send_one", None)

    # -- sockets-like surface ---------------------------------------------------------

    def fileno(self) -> int:
        return self.channel.fileno()

    def settimeout(self, t: float | None) -> None:
        self.channel.settimeout(t)

    def setblocking(self, flag: bool) -> None:
        self.channel.setblocking(flag)

    def getsockname(self) -> Address:
        return self.local

    def need_route(self, addr: Address) -> None:
        """ENETUNREACH if the netif has no route to `addr`'s host, as Linux's sendto and connect say."""
        if self._routed_all or (self._v6 and is_group6(addr[0])):
            return  # (an IPv6 group is on the link, as an IPv4 one: `sendto`)
        if not self.routes.reaches(ip6_bytes(addr[0]) if self._v6 else ip_bytes(addr[0])):
            raise OSError(errno.ENETUNREACH, f"Network is unreachable: no route to {addr[0]}")

    def sendto(self, data: bytes | bytearray | memoryview, addr: Address, *, tag: int | None = None,
               deadline: float | None = None, report: bool = False) -> int:
        """Send one datagram; `tag`, `deadline` and `report` as for `send_many`."""
        if self.pending_error is not None:
            self._raise_pending(self.pending_error)
        if not self._v6 and is_group(addr[0]):
            self._send_group(data, addr)  # a group is on the link: no route asked
            return len(data)
        self.need_route(addr)
        if self._v6 or tag is not None or deadline is not None or report:
            self.send_many([data], addr, tags=None if tag is None else [tag], deadline=deadline, report=report)
        else:
            self._send_one(data, addr)
        return len(data)

    def _send_one(self, data: bytes | bytearray | memoryview, addr: Address) -> None:
        """One IPv4 datagram without numpy: a voice frame's path, where a batch's fixed costs
        (the gather, the column arrays) would be most of the work. The same bytes as `send_many`."""
        n = len(data)
        if n > self.max_payload:
            self._send_fragmented(data, addr)
            return
        ident = (self._ident + 1) & 0xFFFF
        self._put_one(udp_ipv4_headers(self._src, ip_bytes(addr[0]), self.local[1], addr[1], data, ident),
                      data, ident)

    def _send_one_marked(self, data: bytes | bytearray | memoryview, addr: Address) -> None:
        """`_send_one` with the socket's TTL and TOS (`set_marking`)."""
        n = len(data)
        if n > self.max_payload:
            self._send_fragmented(data, addr)
            return
        ident = (self._ident + 1) & 0xFFFF
        self._put_one(udp_ipv4_marked_headers(self._src, ip_bytes(addr[0]), self.local[1], addr[1], data, ident,
                                              self._ttl, self._tos), data, ident)

    def _send_group(self, data: bytes | bytearray | memoryview, addr: Address) -> None:
        """One datagram to an IPv4 group, with the multicast TTL (`mc_ttl`, default 1, as Linux's
        inet->mc_ttl), not the unicast one; the switch frames it to the group's MAC."""
        if len(data) > self.max_payload:
            self._send_fragmented(data, addr, self.mc_ttl)
            return
        ident = (self._ident + 1) & 0xFFFF
        self._put_one(udp_ipv4_marked_headers(self._src, ip_bytes(addr[0]), self.local[1], addr[1], data, ident,
                                              self.mc_ttl, self._tos), data, ident)

    def _send_fragmented(self, data: bytes | bytearray | memoryview, addr: Address, ttl: int | None = None) -> None:
        """A datagram bigger than the MTU, in IP fragments (usnet.proto.wire.fragment), as Linux
        sends one on a socket with the default path MTU discovery; EMSGSIZE past IP's bound. The
        fragments go in one batch, or none of them: a datagram with a piece missing is lost."""
        n = len(data)
        if n > (UDP6_MAX_PAYLOAD if self._v6 else UDP4_MAX_PAYLOAD):
            raise OSError(errno.EMSGSIZE, "Message too long")
        room = min(self.mtu, self.channel.stride)
        if self._v6:
            self._ident6 = ident = (self._ident6 + 1) & 0xFFFFFFFF
            dst = ip6_bytes(addr[0])
            frags = udp6_fragments(self._src, dst, self.local[1], addr[1], data, ident, room,
                                   self.mc_ttl if dst[0] == 0xFF else self._ttl, self._tos)
        else:
            ident = (self._ident + 1) & 0xFFFF
            frags = udp4_fragments(self._src, ip_bytes(addr[0]), self.local[1], addr[1], data, ident, room,
                                   self._ttl if ttl is None else ttl, self._tos)
            self._ident = ident
        ch = self.channel
        pkts: list[int] = []
        for _ in range(len(frags)):  # alloc gives at least one packet a call
            pkts += ch.alloc(len(frags) - len(pkts))
            if len(pkts) >= len(frags):
                break
        for p, frag in zip(pkts, frags):
            ch.write(p, frag)
        _, full = self._push(pkts, 0)
        if full:  # the ring took a part: the rest is not sent (the receiver drops the part in time)
            raise BlockingIOError(errno.EAGAIN, "no room for the datagram's fragments")

    def _put_one(self, hdr: bytes, data: bytes | bytearray | memoryview, ident: int) -> None:
        """One packet of headers `hdr` and payload `data` onto the TX ring; `ident` its IPv4 id."""
        ch = self.channel
        (p,) = ch.alloc(1)
        o = p * ch.stride
        total = len(data) + HEADERS
        ch.buf[o : o + HEADERS] = hdr
        ch.buf[o + HEADERS : o + total] = data
        ch.set_length(p, total)
        self._push([p], 0)
        self._ident = ident

    def send(self, data: bytes | bytearray | memoryview) -> int:
        if self.remote is None:
            raise OSError(errno.EDESTADDRREQ, "not connected: use sendto")
        return self.sendto(data, self.remote)

    def recvfrom(self, timeout: object = _UNSET) -> tuple[bytes, Address]:
        while True:
            got = self.recv_many(1, timeout)
            if got:
                return got[0]

    def recv(self, timeout: object = _UNSET) -> bytes:
        return self.recvfrom(timeout)[0]

    # -- batches ---------------------------------------------------------------------

    def send_many(self, payloads: list, addr: Address, *, tags: list[int] | None = None,
                  deadline: float | None = None, report: bool = False) -> int:
        """Build and send one datagram per payload to `addr`; returns how many were sent.

        The whole batch is built column-wise: payloads gathered into one array,
        both checksums summed per row by numpy, headers written as columns, and
        one scatter into the packet buffers.

        `deadline` (seconds of `time.monotonic()`): a datagram still unsent
        then is not sent, and a TX_STATUS EXPIRED event on the channel says
        so. `report`: a TX_STATUS event for each (SENT, DROPPED, EXPIRED or
        FLUSHED), with its tag (`tags`, one per payload; default 0).
        """
        if self.pending_error is not None:
            self._raise_pending(self.pending_error)
        if not payloads:
            return 0
        self.need_route(addr)
        marks = None
        if tags is not None or deadline is not None or report:
            if tags is not None and len(tags) != len(payloads):
                raise ValueError("one tag per payload")
            marks = (tags or [0] * len(payloads), 0 if deadline is None else max(1, int(deadline * 1e9)), report)
        if self._v6:
            return self._send_many6(payloads, addr, marks)
        lens = np.fromiter(map(len, payloads), np.int64, len(payloads))
        big = int(lens.max())
        if big > self.max_payload:
            return self._send_big(payloads, addr, marks)
        ch = self.channel
        rows = _payload_rows(payloads, lens, big)
        hdr = self._headers(rows, lens, ip_bytes(addr[0]), addr[1])
        packets, umd = ch.arrays()
        totals = lens + HEADERS
        sent = 0
        while sent < len(payloads):
            pkts = ch.alloc(len(payloads) - sent)
            idx = np.array(pkts, np.int64)
            end = sent + len(pkts)
            packets[idx, :HEADERS] = hdr[sent:end]
            if big:
                packets[idx, HEADERS : HEADERS + big] = rows[sent:end, :big]
            umd[idx * UMD_WORDS] = totals[sent:end]
            if marks is not None:
                ch.mark_many(idx, marks[0][sent:end], deadline_ns=marks[1], report=marks[2])
            done, full = self._push(pkts, sent, marked=marks is not None)
            sent += done
            if full:
                break
        self._ident = (self._ident + sent) & 0xFFFF
        return sent

    def _send_big(self, payloads: list, addr: Address, marks: tuple | None) -> int:
        """A batch with a datagram bigger than the MTU: one at a time, the big ones in fragments.
        Marks (tags, deadlines, reports: one TX_STATUS per packet) are not for fragments: EMSGSIZE."""
        if marks is not None:
            raise OSError(errno.EMSGSIZE, f"a marked datagram is at most {self.max_payload} bytes")
        for i, p in enumerate(payloads):
            try:
                if len(p) > self.max_payload:
                    self._send_fragmented(p, addr)
                elif not (self._send_many6([p], addr, None) if self._v6 else self.send_many([p], addr)):
                    return i
            except BlockingIOError:
                if not i:
                    raise
                return i
        return len(payloads)

    def _send_many6(self, payloads: list, addr: Address, marks: tuple | None) -> int:
        """IPv6: each datagram built on its own (header, UDP checksum over the pseudo-header)."""
        big = max(map(len, payloads))
        if big > self.max_payload:
            return self._send_big(payloads, addr, marks)
        src, dst, sport, dport = self._src, ip6_bytes(addr[0]), self.local[1], addr[1]
        hops, tclass = self.mc_ttl if dst[0] == 0xFF else self._ttl, self._tos  # IPV6_MULTICAST_HOPS to a group
        packets = []
        for p in payloads:
            ulen = UDP_HLEN + len(p)
            seg = _UDP.pack(sport, dport, ulen, 0) + bytes(p)
            csum = upper_checksum_v6(src, dst, 17, seg)
            packets.append(build_ipv6_header(src, dst, 17, ulen, hops, tclass) + seg[:_UDP_CSUM]
                           + csum.to_bytes(2, "big") + seg[_UDP_CSUM + 2 :])
        ch = self.channel
        sent = 0
        while sent < len(packets):
            pkts = ch.alloc(len(packets) - sent)
            for i, (p, data) in enumerate(zip(pkts, packets[sent:])):
                ch.write(p, data)
                if marks is not None:
                    ch.mark(p, tag=marks[0][sent + i], deadline_ns=marks[1], report=marks[2])
            done, full = self._push(pkts, sent, marked=marks is not None)
            sent += done
            if full:
                break
        return sent

    def _push(self, pkts: list[int], sent: int, marked: bool = False) -> tuple[int, bool]:
        """Send written packets: (how many went, whether the ring is full).

        What the ring did not take goes back to the channel's cache, not
        leaked (its marks cleared, so no later send inherits a deadline); a
        full ring before anything went raises BlockingIOError.
        """
        ch = self.channel
        try:
            done = ch.send(pkts)
        except BlockingIOError:
            done = 0
            if not sent:
                self._give_back(pkts, marked)
                raise
        if done < len(pkts):
            self._give_back(pkts[done:], marked)
            return done, True
        return done, False

    def _give_back(self, pkts: list[int], marked: bool) -> None:
        if marked:
            for p in pkts:
                self.channel.mark(p)
        self.channel.give_back(pkts)

    def _headers(self, rows: np.ndarray, lens: np.ndarray, dst: bytes, dport: int) -> np.ndarray:
        """The IPv4 and UDP headers of a batch, one row each, checksums included."""
        n = len(lens)
        template, base_sum = self._template(dst, dport)
        hdr = np.empty(n, _HDR_DTYPE)
        hdr[:] = template
        total = lens + HEADERS
        ulen = lens + UDP_HLEN
        ident = (np.arange(1, n + 1, dtype=np.int64) + self._ident) & 0xFFFF
        # Both checksums from sums: a 16-bit one's complement sum is the sum of the
        # words modulo 0xFFFF, with 0 standing for 0xFFFF (the sums here are never 0).
        ip_sum = (base_sum[0] + total + ident) % 0xFFFF
        udp_sum = (base_sum[1] + 2 * ulen + (row_sums(rows) if rows.shape[1] else 0)) % 0xFFFF
        hdr["total_length"] = total
        hdr["ident"] = ident
        hdr["checksum"] = finish_rows(ip_sum)
        hdr["udp_length"] = ulen
        udp_csum = finish_rows(udp_sum)
        hdr["udp_checksum"] = np.where(udp_csum == 0, 0xFFFF, udp_csum)  # 0 means "no checksum" in UDP
        return hdr.view(np.uint8).reshape(n, HEADERS)

    def _template(self, dst: bytes, dport: int) -> tuple[np.ndarray, tuple[int, int]]:
        """The fixed fields of datagrams to (dst, dport), and the sums they contribute; made once."""
        key = (dst, dport)
        t = self._templates.get(key)
        if t is None:
            src, sport = self._src, self.local[1]
            # the variable fields (lengths, ident, checksums) are overwritten per datagram
            ttl, tos = self._ttl, self._tos  # IP_TTL, IP_TOS: `set_marking` clears the templates
            fixed = np.frombuffer(udp_ipv4_marked_headers(src, dst, sport, dport, b"", 0, ttl, tos), _HDR_DTYPE)[0]
            t = (fixed, udp_ipv4_sums(src, dst, sport, dport, ttl, tos))
            if len(self._templates) > 64:
                self._templates.clear()
            self._templates[key] = t
        return t

    def recv_many(self, max_n: int = 64, timeout: object = _UNSET) -> list[tuple[bytes, Address]]:
        """Up to `max_n` datagrams as (payload, (address, port)); bad ones are counted and skipped.

        The batch is copied out of the pool in one gather and checked on the
        copy, column-wise: the UDP checksum is ours to verify (the switch
        checked the IP header and never trusts a payload).
        """
        if self.pending_error is not None:
            self._raise_pending(self.pending_error)
        ch = self.channel
        pkts = ch.recv(max_n, timeout)
        if len(pkts) == 1:
            more = bool(ch.umd[pkts[0] * UMD_WORDS + W_FLAGS] & RX_MORE)
        else:  # one gather of the flags: a chain is rare, looking for one is not
            more = bool((ch.arrays()[1][np.array(pkts, np.int64) * UMD_WORDS + W_FLAGS] & RX_MORE).any())
        got = self._recv_chained(pkts) if more else self._recv_plain(pkts)
        if not got and self.pending_error is not None:
            self._raise_pending(self.pending_error)  # what came was the ICMP error itself
        return got

    def _recv_plain(self, pkts: list[int]) -> list[tuple[bytes, Address]]:
        """Datagrams of one packet each, by the family's path (`keep_header`: packet by packet,
        each with its header's fields; only a socket that asked for them pays for it)."""
        if self.keep_header or self._v6:
            return self._recv_copies(pkts)
        return self._recv_one(pkts[0]) if len(pkts) == 1 else self._recv_batch(pkts)

    def _recv_chained(self, pkts: list[int]) -> list[tuple[bytes, Address]]:
        """A batch with a datagram bigger than one packet: its packets are consecutive on the ring,
        each but the last flagged RX_MORE (usnet.abi.rxchain); they are joined into one copy and
        checked there. The switch publishes a chain whole, so the rest of one the batch cut is on
        the ring already; a chain whose rest is not there, or longer than any IP packet, is
        dropped and counted (`rx_bad`, `rx_chain_bad`), the datagrams around it kept, in order."""
        ch = self.channel
        umd = ch.umd
        limit = max_slots(ch.stride)
        more = [bool(umd[p * UMD_WORDS + W_FLAGS] & RX_MORE) for p in pkts]
        for _ in range(limit):  # the rest of a chain the batch cut
            if not more[-1]:
                break
            try:
                (p,) = ch.recv(1, 0)
            except BlockingIOError:
                break
            pkts.append(p)
            more.append(bool(umd[p * UMD_WORDS + W_FLAGS] & RX_MORE))
        groups, tail = chains(more)
        if tail < len(pkts):  # cut: its rest never came (or it is longer than any datagram)
            self._chain_bad(pkts[tail:])
        out: list[tuple[bytes, Address]] = []
        single: list[int] = []
        for a, b in groups:
            if b - a == 1:
                single.append(pkts[a])
                continue
            if single:
                out += self._recv_plain(single)
                single = []
            chain = pkts[a:b]
            if b - a > limit:
                self._chain_bad(chain)
                continue
            try:
                d = b"".join([ch.view(p) for p in chain])
            finally:
                ch.free(chain)
            self._keep(d, out)
        if single:
            out += self._recv_plain(single)
        return out

    def _chain_bad(self, pkts: list[int]) -> None:
        """A chain that is cut or too long: its packets back to the pool, counted, no datagram."""
        self.channel.free(pkts)
        self.rx_bad += 1
        self.rx_chain_bad += 1

    def _recv_batch(self, pkts: list[int]) -> list[tuple[bytes, Address]]:
        """IPv4 datagrams, checked column-wise on one gathered copy (see `recv_many`)."""
        ch = self.channel
        try:
            packets, umd = ch.arrays()
            idx = np.array(pkts, np.int64)
            lens = np.minimum(umd[idx * UMD_WORDS], ch.stride).astype(np.int64)
            big = int(lens.max())
            width = padded_width(max(big, HEADERS))
            if width <= ch.stride:
                rows = packets[idx, :width]  # one gather; what lies past a datagram is zeroed below
            else:
                rows = np.zeros((len(pkts), width), np.uint8)
                rows[:, :big] = packets[idx, :big]
        finally:
            ch.free(pkts)
        total = be_u16(rows[:, _TOTAL : _TOTAL + 2])
        ulen = be_u16(rows[:, _ULEN : _ULEN + 2])
        fast = ((rows[:, _VER_IHL] == 0x45) & (rows[:, _PROTO] == 17) & (ulen >= UDP_HLEN)
                & (IPV4_HLEN + ulen <= np.minimum(total, lens)))
        end = np.where(fast, IPV4_HLEN + ulen, lens)
        e0 = int(end[0])
        if (end == e0).all():
            rows[:, e0:] = 0  # what lies past the datagrams, for the checksum
        else:
            rows[np.arange(rows.shape[1]) >= end[:, None]] = 0
        words = row_sums(rows[:, _SRC:])  # addresses, UDP header, payload
        has_sum = (rows[:, _UCSUM] | rows[:, _UCSUM + 1]) != 0
        fast &= ~has_sum | ((words + 17 + ulen) % 0xFFFF == 0)
        return self._datagrams(rows, lens, fast, ulen)

    def _raise_pending(self, err: int) -> NoReturn:
        self.pending_error = None
        raise OSError(err, os.strerror(err))  # ConnectionRefusedError for ECONNREFUSED

    def _recv_one(self, pkt: int) -> list[tuple[bytes, Address]]:
        """One datagram without numpy (a voice flow's receive): the checks of the batch path."""
        ch = self.channel
        try:
            d = bytes(ch.view(pkt))
        finally:
            ch.free([pkt])
        n = len(d)
        if n >= HEADERS and d[_VER_IHL] == 0x45 and d[_PROTO] == 17:
            total = int.from_bytes(d[_TOTAL : _TOTAL + 2], "big")
            ulen = int.from_bytes(d[_ULEN : _ULEN + 2], "big")
            end = IPV4_HLEN + ulen
            # the checksum over addresses, UDP header and payload, as the batch path sums it
            if ulen >= UDP_HLEN and end <= min(total, n) and (
                    not (d[_UCSUM] | d[_UCSUM + 1]) or verifies(acc(d[_SRC:end]) + 17 + ulen)):
                    return [(d[HEADERS:end], (self._name(int.from_bytes(d[_SRC : _SRC + 4], "big")),
                                              int.from_bytes(d[_SPORT : _SPORT + 2], "big")))]
        got = self._parse_slow(d)
        if got is None:
            self.rx_bad += 1
            return []
        return [] if got is _ICMP else [got]

    def _datagrams(self, rows: np.ndarray, lens: np.ndarray, fast: np.ndarray, ulen: np.ndarray) -> list:
        """The payloads and senders of a checked batch; rows that failed get the full parse."""
        width = rows.shape[1]
        raw = rows.tobytes()
        src = be_u32(rows[:, _SRC : _SRC + 4])
        sport = be_u16(rows[:, _SPORT : _SPORT + 2])
        starts = np.arange(len(lens), dtype=np.int64) * width
        ends = (starts + IPV4_HLEN + ulen).tolist()
        starts = (starts + HEADERS).tolist()
        if fast.all():
            return self._by_sender(raw, src, sport, starts, ends)
        out = []
        for i, (ok, ip, sp) in enumerate(zip(fast.tolist(), src.tolist(), sport.tolist())):
            if ok:
                out.append((raw[starts[i] : ends[i]], (self._name(ip), sp)))
                continue
            o = i * width
            got = self._parse_slow(raw[o : o + int(lens[i])])
            if got is None:
                self.rx_bad += 1
            elif got is not _ICMP:
                out.append(got)
        return out

    def _by_sender(self, raw: bytes, src: np.ndarray, sport: np.ndarray, starts: list[int],
                   ends: list[int]) -> list[tuple[bytes, Address]]:
        """The payloads of a checked batch, each run of one sender's datagrams sharing one address tuple.

        A batch from one sender is the common case; from many (issue 18: 1,000
        flows sending to one), a flow's send comes as a run of consecutive
        datagrams, so the address is made once a run, not once a datagram.
        """
        key = src.astype(np.int64) << 16 | sport  # 48 bits: address and port
        cut = np.flatnonzero(key[1:] != key[:-1]) + 1
        if not len(cut):
            addr = (self._name(int(src[0])), int(sport[0]))
            return [(raw[a:b], addr) for a, b in zip(starts, ends)]
        bounds = [0, *cut.tolist(), len(starts)]
        firsts = bounds[:-1]
        out: list[tuple[bytes, Address]] = []
        for lo, hi, ip, sp in zip(firsts, bounds[1:], src[firsts].tolist(), sport[firsts].tolist()):
            addr = (self._name(ip), sp)
            out += [(raw[a:b], addr) for a, b in zip(starts[lo:hi], ends[lo:hi])]
        return out

    def _recv_copies(self, pkts: list[int]) -> list:
        """Copy each packet out of the pool and free it, then check it on the copy (memory the
        client alone holds): IPv6's path, and that of a socket keeping header fields."""
        ch = self.channel
        try:
            copies = ch.copies(pkts)
        finally:
            ch.free(pkts)
        out: list = []
        for v in copies:
            self._keep(v, out)
        return out

    def _keep(self, v: bytes, out: list) -> None:
        """The datagram in packet copy `v` onto `out` (with its header's fields if `keep_header`),
        once checked by the family's parser; a bad one counted, an ICMP error taken."""
        got = self._parse6(v) if self._v6 else self._parse_slow(v)
        if got is None:
            self.rx_bad += 1
        elif got is not _ICMP:
            out.append((got[0], got[1], _header(v)) if self.keep_header else got)

    def _parse6(self, v: bytes) -> _Parsed:
        """(payload, sender) of an IPv6 UDP datagram with a good checksum, `_ICMP` for an ICMPv6
        error (see `_icmp_error`), else None."""
        try:
            _tc, _fl, plen, nh, _hop, src, dst = parse_ipv6(v)
            if nh == 58:
                return self._icmp_error(v)
            at = IPV6_HLEN
            if nh != 17:  # extension headers first (the switch checked them): walked, as Linux delivers it
                nh, at, frag = skip_ext_headers(v, IPV6_HLEN, IPV6_HLEN + plen, nh)
                if nh != 17 or frag is not None:
                    return None
            sport, _dport, off, n = parse_udp(v, at, IPV6_HLEN + plen - at, None, None, verify=False)
            if v[at + 6 : at + 8] == b"\0\0" or not verify_upper_v6(v, at, n + UDP_HLEN, src, dst, 17):
                return None  # IPv6 has no checksum-less UDP (RFC 8200 §8.1)
        except (WireError, struct.error):
            return None
        return v[off : off + n], (ip6_str(src), sport)

    def _name(self, ip: int) -> str:
        name = self._names.get(ip)
        if name is None:
            name = self._names[ip] = ip_str(ip.to_bytes(4, "big"))
        return name

    def _parse_slow(self, v: bytes) -> _Parsed:
        """A datagram that is not the common case (IP options, bad checksum, not UDP), or `_ICMP`:
        an ICMP error the switch passed on, which may leave this socket a pending error."""
        try:
            ihl, total, _i, _f, _t, proto, src, dst = parse_ipv4(v, 0, verify_checksum=False)
            if proto == 1:
                return self._icmp_error(v)
            if proto != 17:
                return None
            sport, _dport, off, n = parse_udp(v, ihl, total - ihl, src, dst)
        except (WireError, struct.error):
            return None
        return bytes(v[off : off + n]), (ip_str(src), sport)

    def _icmp_error(self, v: bytes) -> Literal[_Icmp.ERROR] | None:
        """An ICMP error quoting a datagram of ours: pending for a connected socket that sent it to
        its peer, if Linux calls it fatal (as Linux reports it without IP_RECVERR: unconnected
        sockets, and soft errors such as host unreachable or time exceeded, are not told); with
        IP_RECVERR (`on_error`), every one is pending and queued, as Linux's __udp4_lib_err.
        None if it is malformed."""
        err = icmp6_error(v) if self._v6 else icmp4_error(v)
        if err is None:
            return None
        errno_, proto, qsrc, sport, qdst, dport, fatal = err
        name = ip6_str(qdst) if self._v6 else ip_str(qdst)
        if proto == 17 and qsrc == self._src and sport == self.local[1] and (
                self.remote is None or (name, dport) == self.remote):
            if self.on_error is not None:  # IP_RECVERR: every error, queued, and sk_err (usnet.proto.errqueue)
                self.on_error(v)
                self.pending_error = errno_
            elif fatal and self.remote is not None:
                self.pending_error = errno_
        return _ICMP

    def events(self) -> Iterator[Event]:
        return self.channel.events()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> DatagramSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
