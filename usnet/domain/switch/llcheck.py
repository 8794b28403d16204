"""The low-latency path's header check: a granted flow's packet, judged by a private copy of its headers.

Sans-I/O. The LL path (usnet.domain.switch.llpath `_service_ll`) copies only the
first `SNAPSHOT` bytes of a packet out of the client's buffer, checks that copy
here against the flow it was granted for, and sends that copy as the frame's
headers, with the payload straight from the client's buffer. The client can
still write its buffer while the device reads it, but only its own payload
changes: what names the sender, the receiver and the protocol is the checked
copy. No checksum pass over the payload and no classification: the flow is
known, and the transport checksum is the sender's business, as on any path.

The rules are the general path's (`_tx_one`, `_tx_one6`), plus the lease's
largest packet, and minus what the LL path does not carry (IP options,
extension headers, super-segments: those packets take the general path's
per-packet check, which finds the reason or sends them).

Fragments are among what the LL path does not carry: an IPv4 packet with
MF or an offset, or an IPv6 packet with a Fragment (or Routing) header,
goes to the general path, which keeps the flow's table of datagrams begun
in fragments (usnet.domain.switch.txguard). So a later fragment leaves only if its
flow sent the first, on whichever path, and a first fragment is checked in
full. LL packets are small; a fragment there is rare, not fast.
The DSCP the flow's class wants is written by the caller into the checked
copy (usnet.proto.wire.ecn.set_dscp), so what goes out is the class's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from usnet.abi.events import TxDropReason
from usnet.proto.wire.checksum import verifies

__all__ = ["GENERAL_PATH", "SNAPSHOT", "check_ll_header"]

SNAPSHOT = 80  # IPv4 (20) and the longest TCP header (60); IPv6 (40) and a TCP header of up to 40
TCP, UDP = 6, 17
_V4 = struct.Struct("!BxH2xHBB2x4s4sHH")  # version/ihl, total length, flags/offset, ttl, protocol, src, dst, ports
_V6 = struct.Struct("!4xHBB16s16s")  # payload length, next header, hop limit, src, dst
_V4_FRAG = 0x3FFF  # MF and the offset: DF alone is not a fragment
_V6_ROUTING, _V6_FRAGMENT = 43, 44
GENERAL_PATH = 0  # not an LL-path packet: let the general path judge it


def check_ll_header(snap: bytes | bytearray, length: int, *, proto: int, lport: int, raddr: bytes | None,
                    rport: int | None, local: bytes, max_packet: int,
                    not_a_peer: Callable[[bytes], str | None] | None = None) -> tuple[int, bytes] | int:
    """(bytes of headers to send from `snap`, destination address), or a TxDropReason, or GENERAL_PATH.

    `snap` is the private copy of the packet's first bytes (up to SNAPSHOT),
    `length` its length from the UMD; the rest are the flow's entry: its
    protocol, local port, remote address and port if connected, the
    netif's address of the flow's family, and the lease's largest packet;
    `not_a_peer` judges an unconnected flow's destinations (the switch's).
    """
    if len(local) == 4:  # the order of the general path's checks, so the verdicts agree
        if length < 20:
            return TxDropReason.MALFORMED
        if snap[0] >> 4 != 4:
            return TxDropReason.NOT_IPV4
        if snap[0] & 0xF < 5:
            return TxDropReason.MALFORMED
        if snap[0] != 0x45:
            return GENERAL_PATH  # options: the general path checks them
        _vihl, total, ff, hops, p, src, dst, sport, dport = _V4.unpack_from(snap) if length >= 24 else (0,) * 9
        if total != length or length < 24 or not verifies(int.from_bytes(snap[:20], "big")):
            return TxDropReason.MALFORMED
        if p == proto and ff & _V4_FRAG:
            return GENERAL_PATH  # a fragment: judged against the flow's fragment table there
        ip_len = 20
    else:
        if length and snap[0] >> 4 != 6:
            return TxDropReason.NOT_IPV4  # not the flow's IP version (the code the general path uses)
        if length < 40:
            return TxDropReason.MALFORMED
        plen, p, hops, src, dst = _V6.unpack_from(snap)
        if plen + 40 != length:
            return TxDropReason.MALFORMED
        if p == _V6_FRAGMENT or p == _V6_ROUTING:  # noqa: SIM109 (per packet: no tuple built)
            return GENERAL_PATH  # fragments and routing headers are judged there
        if p != proto:
            return TxDropReason.WRONG_PROTOCOL
        if plen < 4:
            return TxDropReason.MALFORMED
        sport, dport = struct.unpack_from("!HH", snap, 40)
        ip_len = 40
    if p != proto:
        return TxDropReason.WRONG_PROTOCOL
    if hops == 0:
        return TxDropReason.ZERO_TTL
    if src != local or sport != lport:
        return TxDropReason.SPOOFED_SOURCE
    if raddr is not None:
        if dst != raddr or dport != rport:
            return TxDropReason.WRONG_DESTINATION
    elif dport == 0 or (not_a_peer is not None and not_a_peer(dst) is not None):
        return TxDropReason.WRONG_DESTINATION
    if length > max_packet:
        return TxDropReason.TOO_BIG
    if p == UDP:
        hdr = ip_len + 8
    else:
        hdr = ip_len + ((snap[ip_len + 12] >> 4) << 2) if len(snap) > ip_len + 12 else 0
        if hdr < ip_len + 20 or hdr > len(snap):
            return GENERAL_PATH  # a TCP header the split cannot take: the general path sends it whole
    if hdr > length:
        return GENERAL_PATH
    return hdr, dst
