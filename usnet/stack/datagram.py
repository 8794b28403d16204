"""A minimal UDP endpoint over a flow channel, before the full stack exists.

The application's process builds the IPv4 and UDP headers itself, straight
into the packet buffer (`wire.write_*`), and the flow switch only checks them.
Receive verifies the UDP checksum here, in the user domain: the switch
classifies but never trusts or fixes a payload.
"""

from __future__ import annotations

import errno
import struct
from typing import Iterator

from usnet.channel.channel import Channel, _UNSET
from usnet.channel.events import Event
from usnet.daemon.protocol import FlowOpened
from usnet.pool.umd import UMD_WORDS
from usnet.wire.checksum import FOLD_MIN, mod_ffff
from usnet.wire.errors import WireError
from usnet.wire.ipv4 import IPV4_HLEN, ip_bytes, ip_str, parse_ipv4
from usnet.wire.udp import UDP_HLEN, parse_udp

HEADERS = IPV4_HLEN + UDP_HLEN
_HEADERS = struct.Struct("!BBHHHBBH4s4sHHHH")  # the IPv4 header (no options) and the UDP header
Address = tuple[str, int]


class DatagramSocket:
    """sendto/recvfrom over a flow channel; batches on the `*_many` calls."""

    def __init__(self, channel: Channel, info: FlowOpened) -> None:
        self.channel = channel
        self.local = (info.local_addr, info.local_port)
        self.remote: Address | None = (info.remote_addr, info.remote_port) if info.remote_addr else None
        self.mtu = info.mtu
        self._src = ip_bytes(info.local_addr)
        self._ident = 0
        self.rx_bad = 0  # datagrams dropped here: bad checksum or malformed
        self.max_payload = min(info.mtu, channel.stride) - HEADERS

    # -- sockets-like surface ---------------------------------------------------------

    def fileno(self) -> int:
        return self.channel.fileno()

    def settimeout(self, t: float | None) -> None:
        self.channel.settimeout(t)

    def setblocking(self, flag: bool) -> None:
        self.channel.setblocking(flag)

    def getsockname(self) -> Address:
        return self.local

    def sendto(self, data: bytes | bytearray | memoryview, addr: Address) -> int:
        self.send_many([data], addr)
        return len(data)

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

    def send_many(self, payloads: list, addr: Address) -> int:
        """Build and send one datagram per payload to `addr`; returns how many were sent."""
        ch = self.channel
        dst = ip_bytes(addr[0])
        dport = addr[1]
        src, sport = self._src, self.local[1]
        for p in payloads:
            if len(p) > self.max_payload:
                raise OSError(errno.EMSGSIZE, f"{len(p)} bytes exceed the {self.max_payload}-byte datagram limit")
        views, umd = ch.packet_views(), ch.umd
        # Both checksums from sums that do not change within the batch: a 16-bit
        # one's complement sum is the big-endian integer modulo 0xFFFF.
        addr_sum = int.from_bytes(src, "big") + int.from_bytes(dst, "big")
        ip_base = 0x4500 + 0x4000 + (64 << 8 | 17) + addr_sum
        udp_base = addr_sum + 17 + sport + dport
        pack = _HEADERS.pack_into
        from_bytes = int.from_bytes
        ident = self._ident
        sent = 0
        while sent < len(payloads):
            pkts = ch.alloc(len(payloads) - sent)
            for pkt, data in zip(pkts, payloads[sent:]):
                v = views[pkt]
                n = len(data)
                ident = (ident + 1) & 0xFFFF
                total = HEADERS + n
                ulen = UDP_HLEN + n
                r = (ip_base + total + ident) % 0xFFFF
                ip_csum = 0xFFFF - (r or 0xFFFF)
                body = from_bytes(data, "big") << 8 if n & 1 else from_bytes(data, "big")
                r = (udp_base + 2 * ulen + body)
                r = r % 0xFFFF if n < FOLD_MIN else mod_ffff(r)
                udp_csum = 0xFFFF - (r or 0xFFFF) or 0xFFFF
                pack(v, 0, 0x45, 0, total, ident, 0x4000, 64, 17, ip_csum, src, dst,
                     sport, dport, ulen, udp_csum)
                v[HEADERS : total] = data
                umd[pkt * UMD_WORDS] = total
            self._ident = ident
            try:
                done = ch.send(pkts)
            except BlockingIOError:
                ch.give_back(pkts)  # not sent: back to the channel's cache, not leaked
                if sent:
                    return sent
                raise
            if done < len(pkts):
                ch.give_back(pkts[done:])
                return sent + done
            sent += done
        return sent

    def recv_many(self, max_n: int = 64, timeout: object = _UNSET) -> list[tuple[bytes, Address]]:
        """Up to `max_n` datagrams as (payload, (address, port)); bad ones are counted and skipped."""
        ch = self.channel
        pkts = ch.recv(max_n, timeout)
        out = []
        views, umd = ch.packet_views(), ch.umd
        unpack = _HEADERS.unpack_from
        from_bytes = int.from_bytes
        names: dict[bytes, str] = {}
        try:
            for pkt in pkts:
                length = umd[pkt * UMD_WORDS]
                v = views[pkt][:length]
                if length >= HEADERS and v[0] == 0x45:
                    # the common case: no IP options. The switch checked the IP header;
                    # the UDP checksum is ours to check.
                    (_v, _tos, total, _id, _ff, _ttl, proto, _c, src, dst,
                     sport, _dport, ulen, csum) = unpack(v)
                    if proto != 17 or ulen < UDP_HLEN or IPV4_HLEN + ulen > min(total, length):
                        self.rx_bad += 1
                        continue
                    if csum:
                        body = from_bytes(v[IPV4_HLEN : IPV4_HLEN + ulen], "big")
                        if ulen & 1:
                            body <<= 8
                        total_sum = body + from_bytes(src, "big") + from_bytes(dst, "big") + 17 + ulen
                        if (total_sum % 0xFFFF if ulen < FOLD_MIN else mod_ffff(total_sum)):
                            self.rx_bad += 1
                            continue
                    off, n = HEADERS, ulen - UDP_HLEN
                else:
                    try:
                        ihl, total, _i, _f, _t, proto, src, dst = parse_ipv4(v, 0, verify_checksum=False)
                        if proto != 17:
                            raise WireError("not UDP")
                        sport, _dport, off, n = parse_udp(v, ihl, total - ihl, src, dst)
                    except (WireError, struct.error):
                        self.rx_bad += 1
                        continue
                name = names.get(src)
                if name is None:
                    name = names[src] = ip_str(src)
                out.append((bytes(v[off : off + n]), (name, sport)))
        finally:
            ch.free(pkts)
        return out

    def events(self) -> Iterator[Event]:
        return self.channel.events()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "DatagramSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
