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
from usnet.wire.errors import WireError
from usnet.wire.ipv4 import IPV4_HLEN, ip_bytes, ip_str, parse_ipv4, write_ipv4_header
from usnet.wire.udp import UDP_HLEN, parse_udp, write_udp

HEADERS = IPV4_HLEN + UDP_HLEN
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
        sent = 0
        while sent < len(payloads):
            pkts = ch.alloc(len(payloads) - sent)
            for pkt, data in zip(pkts, payloads[sent:]):
                v = views[pkt]
                n = len(data)
                self._ident = (self._ident + 1) & 0xFFFF
                write_ipv4_header(v, 0, src, dst, 17, UDP_HLEN + n, ident=self._ident)
                write_udp(v, IPV4_HLEN, sport, dport, n, src, dst, data)
                umd[pkt * UMD_WORDS] = HEADERS + n
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
        try:
            for pkt in pkts:
                v = ch.view(pkt)
                try:
                    ihl, total, _i, _f, _t, proto, src, dst = parse_ipv4(v, 0, verify_checksum=False)
                    if proto != 17:
                        raise WireError("not UDP")
                    sport, _dport, off, n = parse_udp(v, ihl, total - ihl, src, dst)
                except (WireError, struct.error):
                    self.rx_bad += 1
                    continue
                out.append((bytes(v[off : off + n]), (ip_str(src), sport)))
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
