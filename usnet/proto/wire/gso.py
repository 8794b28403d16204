"""TCP segmentation in software: a super-segment cut into the packets its sender's stack would have sent.

Why: a device with segmentation offload (a TAP's virtio_net_hdr, a veth's
GRO/TSO seen through AF_PACKET as TP_STATUS_GSO_TCP) hands the flow switch
TCP packets of up to 64 KB, made of several segments; a flow channel's
packets may be smaller than that (a packet netif gives TCP flows 2 KB
packets; a client may choose small ones). Dropping the big one makes the
sender retransmit the same big one forever; cutting it, as the kernel's own
GSO would have on a device without offload, lets the receiver see ordinary
segments. The cutter is Linux's tcp_gso_segment and inet_gso_segment /
ipv6_gso_segment done on one packet:

* every segment carries a copy of the IP header (options included) and of the
  TCP header (options included: timestamps are the same on each, as Linux's);
* IPv4: total length, identification (the first segment's is the packet's,
  then +1 per segment, modulo 2**16) and header checksum per segment;
  IPv6: the payload length (no extension headers: a packet with any is not cut);
* TCP: the sequence number advanced by the payload before it; CWR only on the
  first segment, FIN and PSH only on the last, every other flag (ACK, ECE,
  URG with its pointer) as it was; the checksum computed afresh.

No layout is new: the headers are those of usnet.proto.wire.ipv4, ipv6 and
tcp, and their fields are written by their declared offsets
(`IPV4_HEADER.off`, `IPV6_HEADER.off`, `TCP_HEADER.off`).

Shape: the segments are the rows of one numpy array (`cut_tcp`), the
payload copied in with one reshape, the per-segment fields written a column at
a time and both checksums summed per row (usnet.proto.wire.rows), so a 64 KB
packet cut in 32 costs a handful of numpy calls, not 32 rounds of Python.
"""

from __future__ import annotations

import numpy as np

from usnet.proto.wire.errors import WireError
from usnet.proto.wire.ipv4 import IP_MF, IP_OFFMASK, IPV4_HEADER, parse_ipv4
from usnet.proto.wire.ipv6 import IPV6_HEADER, IPV6_HLEN, parse_ipv6
from usnet.proto.wire.rows import finish_rows, padded_width, row_sums
from usnet.proto.wire.tcp import CWR, FIN, PSH, TCP_HEADER, TCP_HLEN, TCP_PROTO

__all__ = ["cut_tcp", "headers_len", "tcp_segments"]

_from_bytes = int.from_bytes
_V4_TOTAL = IPV4_HEADER.off["total_length"]
_V4_IDENT = IPV4_HEADER.off["ident"]
_V4_CSUM = IPV4_HEADER.off["checksum"]
_V6_PLEN = IPV6_HEADER.off["payload_length"]
_SEQ = TCP_HEADER.off["seq"]
_FLAGS = TCP_HEADER.off["doff_flags"] + 1  # the low byte: CWR ECE URG ACK PSH RST SYN FIN
_DOFF = TCP_HEADER.off["doff_flags"]
_TCSUM = TCP_HEADER.off["checksum"]


def _layout(pkt) -> tuple[int, int, int, bytes, bytes]:
    """(IP header length, TCP header length, IP packet length, src, dst) of a TCP packet that may be cut.

    IPv4 with a good header checksum (options allowed), not a fragment; or
    IPv6 whose next header is TCP. Anything else is a WireError.
    """
    if len(pkt) < 1:
        raise WireError("GSO: empty packet")
    version = pkt[0] >> 4
    if version == 4:
        ihl, total, _ident, ff, _ttl, proto, src, dst = parse_ipv4(pkt)
        if ff & (IP_MF | IP_OFFMASK):
            raise WireError("GSO: a fragment is not cut")
    elif version == 6:
        _tc, _fl, plen, proto, _hop, src, dst = parse_ipv6(pkt)
        ihl, total = IPV6_HLEN, IPV6_HLEN + plen
    else:
        raise WireError(f"GSO: IP version {version}")
    if proto != TCP_PROTO:
        raise WireError(f"GSO: protocol {proto} is not TCP (or IPv6 extension headers)")
    if total - ihl < TCP_HLEN:
        raise WireError("GSO: truncated TCP header")
    thl = (pkt[ihl + _DOFF] >> 4) << 2
    if thl < TCP_HLEN or ihl + thl > total:
        raise WireError(f"GSO: TCP header length {thl} does not fit")
    return ihl, thl, total, bytes(src), bytes(dst)


def headers_len(pkt) -> int:
    """The IP and TCP header bytes each segment of `pkt` carries (WireError: `pkt` is not one to cut)."""
    ihl, thl, _total, _src, _dst = _layout(pkt)
    return ihl + thl


def _put16(rows: np.ndarray, at: int, vals) -> None:
    rows[:, at] = vals >> 8
    rows[:, at + 1] = vals & 0xFF


def cut_tcp(pkt, max_payload: int) -> tuple[np.ndarray, np.ndarray]:
    """The segments of TCP packet `pkt` (the IP packet, from its IP header) with at most
    `max_payload` payload bytes each: (rows, lens), segment i is rows[i, :lens[i]].

    A packet whose payload fits is one row, unchanged. Bytes past the IP
    length (link padding) are ignored. WireError if `pkt` is not a TCP
    packet `_layout` accepts, or `max_payload` < 1.
    """
    if max_payload < 1:
        raise WireError(f"GSO: segment payload {max_payload}")
    ihl, thl, total, src, dst = _layout(pkt)
    hl = ihl + thl
    size = total - hl
    src_np = np.frombuffer(pkt, np.uint8, total)
    if size <= max_payload:
        return src_np.reshape(1, total).copy(), np.array([total], np.int64)
    k = -(-size // max_payload)
    full = size // max_payload
    rest = size - full * max_payload
    rows = np.zeros((k, padded_width(hl + max_payload)), np.uint8)  # zero padding: the row sums stay right
    rows[:, :hl] = src_np[:hl]
    pay = src_np[hl:]
    rows[:full, hl : hl + max_payload] = pay[: full * max_payload].reshape(full, max_payload)
    sizes = np.full(k, max_payload, np.int64)
    if rest:
        rows[full, hl : hl + rest] = pay[full * max_payload :]
        sizes[-1] = rest
    lens = sizes + hl
    at = np.arange(k, dtype=np.int64)
    # TCP: the sequence number advanced by the payload before it
    seq0 = _from_bytes(pkt[ihl + _SEQ : ihl + _SEQ + 4], "big")
    seq = (seq0 + at * max_payload) & 0xFFFFFFFF
    s = ihl + _SEQ
    rows[:, s] = seq >> 24
    rows[:, s + 1] = seq >> 16 & 0xFF
    rows[:, s + 2] = seq >> 8 & 0xFF
    rows[:, s + 3] = seq & 0xFF
    # flags as tcp_gso_segment: CWR on the first only, FIN and PSH on the last only
    fl = ihl + _FLAGS
    flags = int(pkt[fl])
    rows[:, fl] = flags & ~(CWR | FIN | PSH)
    rows[0, fl] = flags & ~(FIN | PSH)
    rows[-1, fl] = flags & ~CWR
    # IP: the lengths (and IPv4's identification and header checksum)
    if pkt[0] >> 4 == 6:
        _put16(rows, _V6_PLEN, lens - IPV6_HLEN)
    else:
        _put16(rows, _V4_TOTAL, lens)
        _put16(rows, _V4_IDENT, (_from_bytes(pkt[_V4_IDENT : _V4_IDENT + 2], "big") + at) & 0xFFFF)
        rows[:, _V4_CSUM : _V4_CSUM + 2] = 0
        _put16(rows, _V4_CSUM, finish_rows(row_sums(rows[:, :ihl])))
    # TCP checksum: the pseudo-header (src + dst + 6 + TCP length, modulo 0xFFFF) and the row from the TCP header on
    rows[:, ihl + _TCSUM : ihl + _TCSUM + 2] = 0
    psum = (_from_bytes(src, "big") + _from_bytes(dst, "big") + TCP_PROTO) % 0xFFFF
    sums = (row_sums(rows[:, ihl:]) + psum + (lens - ihl)) % 0xFFFF
    _put16(rows, ihl + _TCSUM, finish_rows(sums))
    return rows, lens


def tcp_segments(pkt, max_payload: int) -> list[memoryview]:
    """As `cut_tcp`, the segments as a list of memoryviews (of one array), in order."""
    rows, lens = cut_tcp(pkt, max_payload)
    flat = rows.data.cast("B")
    w = rows.shape[1]
    return [flat[i * w : i * w + n] for i, n in enumerate(lens.tolist())]
