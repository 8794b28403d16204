"""TCP headers and options (RFC 9293, RFC 7323, RFC 2018), over IPv4 or IPv6.

The TCP state machine (usnet.proto.tcp) parses every received segment with
`parse_tcp` and builds every sent one with `pack_segment`, so both are on
the bulk path: one precompiled struct call for the fixed header, a direct
unpack for the common "NOP NOP timestamp" option block, and a checksum made
of one ``int.from_bytes`` over the segment plus the pseudo-header fields as
plain ints (see usnet.proto.wire.checksum). Nothing else is allocated per segment
but the `TcpSegment` and a memoryview of the payload.

Options: MSS, window scale, SACK-permitted, SACK blocks, timestamps, NOP and
EOL are interpreted; unknown kinds are skipped by their length byte. A known
option with the wrong length, a length byte below 2, or an option running
past the header is malformed and raises `WireError` (the only exception that
leaves this module): a peer sending that is broken or hostile, and guessing
what it meant is how stacks get confused.

Layout (20 bytes plus 0..40 bytes of options, big-endian):

    0       2       4     8     12          13      14       16         18      20
    | sport | dport | seq | ack | doff|rsvd | flags | window | checksum | urgent | options | data
                                  4 bits      CWR ECE URG ACK PSH RST SYN FIN

``doff`` is the header length in 32-bit words (5..15). Options, each
``kind`` or ``kind, length, value``:

    EOL 0 | NOP 1 | MSS 2,4,u16 | WS 3,3,u8 | SACK_OK 4,2 | SACK 5,2+8n,(left,right)*n
    | TS 8,10,tsval u32,tsecr u32

Checksum: the one's-complement sum over a pseudo-header and the segment.
IPv4 (RFC 9293): src(4) dst(4) zero(1) proto=6(1) tcp_length(2). IPv6
(RFC 8200 §8.1): src(16) dst(16) tcp_length(4) zero(3) next_header=6(1).
Modulo 0xFFFF both reduce to ``int(src) + int(dst) + 6 + tcp_length``
(a 32- or 128-bit address, like a 32-bit length, is congruent to the sum of
its 16-bit words), so one formula serves both families; the family is the
address length.
"""

from __future__ import annotations

import struct

from usnet.proto.wire.checksum import acc, acc_at, finish, verifies
from usnet.proto.wire.errors import WireError, readable
from usnet.proto.wire.header import Header

__all__ = [
    "ACK", "CWR", "ECE", "FIN", "MAX_OPTIONS", "OPT_EOL", "OPT_MSS", "OPT_NOP", "OPT_SACK",
    "OPT_SACK_OK", "OPT_TS", "OPT_WSCALE", "PSH", "RST", "SYN", "TCP_HEADER", "TCP_HLEN", "TCP_PROTO", "URG",
    "TcpChecksumError", "TcpParts", "TcpSegment", "build_tcp", "pack_parts", "pack_segment", "pack_ts",
    "parse_tcp",
    "pseudo_sum",
    "tcp_checksum", "tcp_options", "write_tcp",
]

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

TCP_HLEN = 20
TCP_PROTO = 6
MAX_OPTIONS = 40

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_OK = 4
OPT_SACK = 5
OPT_TS = 8

#: The fixed header, declared once: its struct and field offsets.
TCP_HEADER = Header(
    ("sport", "H"), ("dport", "H"), ("seq", "I"), ("ack", "I"), ("doff_flags", "H"), ("window", "H"),
    ("checksum", "H"), ("urgent", "H"),
)
_HDR = TCP_HEADER.struct
_unpack = _HDR.unpack_from
_pack = _HDR.pack
_pack_into = _HDR.pack_into
_TSBLOCK = struct.Struct("!III")  # NOP NOP TS 10 | tsval | tsecr (the usual 12 option bytes)
_ts_unpack = _TSBLOCK.unpack_from
_TS_MARK = 0x0101080A
_II = struct.Struct("!II")
_ii_unpack = _II.unpack_from
_from_bytes = int.from_bytes


class TcpChecksumError(WireError):
    """The segment is well-formed but its checksum is wrong (counted apart from garbage)."""


class TcpSegment:
    """One parsed (or to-be-built) segment.

    A plain slotted object rather than a tuple: the state machine reads a
    dozen fields by name per segment, and absent options are ``None``/False
    so a bare ACK costs no option parsing at all. ``payload`` is a
    memoryview into the caller's buffer (no copy): it is valid as long as
    that buffer is, and whoever keeps data must copy it.
    """

    __slots__ = (
        "sport", "dport", "seq", "ack", "flags", "window", "urg", "payload",
        "mss", "wscale", "sack_ok", "sacks", "tsval", "tsecr",
    )

    def __init__(
        self, sport: int, dport: int, seq: int, ack: int, flags: int, window: int,
        payload=b"", urg: int = 0, mss: int | None = None, wscale: int | None = None,
        sack_ok: bool = False, sacks: tuple[tuple[int, int], ...] | None = None,
        tsval: int | None = None, tsecr: int | None = None,
    ) -> None:
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.window = window
        self.payload = payload
        self.urg = urg
        self.mss = mss
        self.wscale = wscale
        self.sack_ok = sack_ok
        self.sacks = sacks
        self.tsval = tsval
        self.tsecr = tsecr

    def __repr__(self) -> str:
        names = "FSRPAUEC"
        fl = "".join(n for i, n in enumerate(names) if self.flags >> i & 1) or "."
        opt = []
        if self.mss is not None:
            opt.append(f"mss={self.mss}")
        if self.wscale is not None:
            opt.append(f"ws={self.wscale}")
        if self.sack_ok:
            opt.append("sackOK")
        if self.sacks:
            opt.append(f"sack={list(self.sacks)}")
        if self.tsval is not None:
            opt.append(f"ts={self.tsval}/{self.tsecr}")
        return (
            f"TcpSegment({self.sport}->{self.dport} [{fl}] seq={self.seq} ack={self.ack} "
            f"win={self.window} len={len(self.payload)}{' ' if opt else ''}{' '.join(opt)})"
        )


_new = TcpSegment.__new__


def _parse_options(buf, i: int, end: int, seg: TcpSegment) -> None:
    while i < end:
        kind = buf[i]
        if kind == OPT_EOL:
            return
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            raise WireError(f"TCP: option {kind} has no length byte")
        ln = buf[i + 1]
        if ln < 2 or i + ln > end:
            raise WireError(f"TCP: option {kind} length {ln} runs past the header")
        if kind == OPT_TS:
            if ln != 10:
                raise WireError(f"TCP: timestamp option length {ln}")
            seg.tsval, seg.tsecr = _ii_unpack(buf, i + 2)
        elif kind == OPT_SACK:
            if ln < 10 or (ln - 2) & 7:
                raise WireError(f"TCP: SACK option length {ln}")
            vals = struct.unpack_from(f"!{(ln - 2) >> 2}I", buf, i + 2)
            seg.sacks = tuple(zip(vals[::2], vals[1::2]))
        elif kind == OPT_MSS:
            if ln != 4:
                raise WireError(f"TCP: MSS option length {ln}")
            seg.mss = (buf[i + 2] << 8) | buf[i + 3]
        elif kind == OPT_WSCALE:
            if ln != 3:
                raise WireError(f"TCP: window scale option length {ln}")
            seg.wscale = buf[i + 2]
        elif kind == OPT_SACK_OK:
            if ln != 2:
                raise WireError(f"TCP: SACK-permitted option length {ln}")
            seg.sack_ok = True
        i += ln


def parse_tcp(
    buf, off: int = 0, length: int | None = None, src: bytes | None = None,
    dst: bytes | None = None, verify: bool = True,
) -> TcpSegment:
    """Validate the segment of ``length`` bytes at ``buf[off:]`` and return it parsed.

    ``length`` is the TCP length the IP layer delivered (default: to the end
    of ``buf``). ``src``/``dst`` are the IP addresses (4 or 16 bytes, same
    family), needed only when ``verify``. A bad checksum raises
    `TcpChecksumError`, anything else malformed `WireError`.
    """
    avail = readable(buf, off, length, TCP_HLEN, "TCP")
    sport, dport, seq, ack, offflags, window, _csum, urg = _unpack(buf, off)
    hlen = (offflags >> 12) << 2
    if hlen < TCP_HLEN:
        raise WireError(f"TCP: header length {hlen} < 20")
    if hlen > avail:
        raise WireError(f"TCP: header length {hlen} exceeds the {avail} bytes present")
    mv = memoryview(buf)
    if verify:
        if src is None or dst is None or (ln := len(src)) != len(dst) or ln not in (4, 16):
            raise WireError("TCP: verifying needs 4- or 16-byte source and destination addresses")
        n = acc_at(buf, off, off + avail) + _from_bytes(src, "big") + _from_bytes(dst, "big") + TCP_PROTO + avail
        if not verifies(n):
            raise TcpChecksumError("TCP: bad checksum")
    seg = _new(TcpSegment)
    seg.sport = sport
    seg.dport = dport
    seg.seq = seq
    seg.ack = ack
    seg.flags = offflags & 0x1FF
    seg.window = window
    seg.urg = urg
    seg.payload = mv[off + hlen : off + avail]
    seg.mss = seg.wscale = seg.sacks = seg.tsval = seg.tsecr = None
    seg.sack_ok = False
    if hlen > TCP_HLEN:
        if hlen == 32:
            mark, tsval, tsecr = _ts_unpack(buf, off + 20)
            if mark == _TS_MARK:
                seg.tsval = tsval
                seg.tsecr = tsecr
                return seg
        try:
            _parse_options(buf, off + TCP_HLEN, off + hlen, seg)
        except (IndexError, struct.error, TypeError) as e:  # pragma: no cover - belt and braces
            raise WireError(f"TCP: malformed options: {e}") from None
    return seg


def tcp_options(
    mss: int | None = None, wscale: int | None = None, sack_ok: bool = False,
    ts: tuple[int, int] | None = None, sacks=(),
) -> bytes:
    """The option bytes, laid out as Linux does (so every option is 4-aligned).

    SYN: ``MSS, SACK_OK+TS`` (or ``NOP NOP TS`` / ``NOP NOP SACK_OK``), ``NOP WS``;
    data: ``NOP NOP TS``, ``NOP NOP SACK``. ``ts`` is ``(tsval, tsecr)``;
    ``sacks`` is a sequence of ``(left, right)`` edges (at most 4, 3 with
    timestamps, to fit 40 bytes).
    """
    parts = []
    try:
        if mss is not None:
            parts.append(struct.pack("!BBH", OPT_MSS, 4, mss))
        if ts is not None:
            head = struct.pack("!BB", OPT_SACK_OK, 2) if sack_ok else b"\x01\x01"
            parts.append(head + struct.pack("!BBII", OPT_TS, 10, ts[0], ts[1]))
        elif sack_ok:
            parts.append(b"\x01\x01" + struct.pack("!BB", OPT_SACK_OK, 2))
        if wscale is not None:
            parts.append(struct.pack("!BBBB", OPT_NOP, OPT_WSCALE, 3, wscale))
        if sacks:
            flat = [e for block in sacks for e in block]
            parts.append(struct.pack(f"!BBBB{len(flat)}I", 1, 1, OPT_SACK, 2 + 4 * len(flat), *flat))
    except struct.error as e:
        raise WireError(f"TCP: bad option value: {e}") from None
    out = b"".join(parts)
    if len(out) > MAX_OPTIONS:
        raise WireError(f"TCP: {len(out)} option bytes exceed {MAX_OPTIONS}")
    return out


def pseudo_sum(src: bytes, dst: bytes) -> int:
    """Accumulator of the pseudo-header without its length: ``int(src) + int(dst) + 6``.

    Connections compute it once; `pack_segment` adds the length.
    """
    if len(src) != len(dst) or len(src) not in (4, 16):
        raise WireError("TCP: addresses must both be 4 or both be 16 bytes")
    return _from_bytes(src, "big") + _from_bytes(dst, "big") + TCP_PROTO


def pack_segment(
    psum: int, sport: int, dport: int, seq: int, ack: int, flags: int, window: int,
    options=b"", payload=b"", urg: int = 0,
) -> bytes:
    """A whole segment with its checksum, from a precomputed `pseudo_sum`.

    The checksum adds the header fields as ints (a 32-bit field is congruent
    to the sum of its halves) and the options and payload as two integers:
    the header and options have even length, so the payload starts at an
    even offset and needs no shift. ``options`` must be 4-aligned.
    """
    olen = len(options)
    plen = len(payload)
    hlen = TCP_HLEN + olen
    tlen = hlen + plen
    offflags = (hlen << 10) | flags
    n = acc(payload) + (
        psum + tlen + sport + dport + seq + ack + offflags + window + urg
        + _from_bytes(options, "big")
    )
    csum = finish(n)
    try:
        hdr = _pack(sport, dport, seq, ack, offflags, window, csum, urg)
    except struct.error as e:
        raise WireError(f"TCP: bad header field: {e}") from None
    if olen:
        return b"".join((hdr, options, payload))
    return hdr + payload if plen else hdr


_HDR_TS = struct.Struct("!HHIIHHHHIII")  # the fixed header and NOP NOP TS, in one call
_pack_ts = _HDR_TS.pack


def pack_ts(
    psum: int, sport: int, dport: int, seq: int, ack: int, flags: int, window: int,
    tsval: int, tsecr: int, payload=b"", parts: bool = False,
) -> bytes | TcpParts:
    """`pack_segment` (or with ``parts`` and a payload, `pack_parts`) of a segment whose only
    option is the usual ``NOP NOP TS`` block: nearly every segment of an established
    connection. The same bytes, in one struct call; the option's words go into the checksum
    as ints, as the header's do."""
    tlen = 32 + len(payload)
    offflags = 0x8000 | flags  # 32 bytes of header: 8 words
    n = acc(payload) + (psum + tlen + sport + dport + seq + ack + offflags + window
                        + _TS_MARK + tsval + tsecr)
    try:
        hdr = _pack_ts(sport, dport, seq, ack, offflags, window, finish(n), 0, _TS_MARK, tsval, tsecr)
    except struct.error as e:
        raise WireError(f"TCP: bad header field: {e}") from None
    if parts and payload:
        return TcpParts(hdr, payload)
    return hdr + payload if payload else hdr


class TcpParts:
    """A built segment in two parts: ``head`` (header and options, checksum set) and ``payload``.

    What `pack_parts` returns for a caller that writes segments into its own
    packet buffers (usnet.client.engine): the payload stays a view of the
    sender's buffer and is copied once, into the packet, instead of being
    joined to the header here and to the IP header below. ``len`` is the
    whole segment's and indexing reads the header, so what inspects a built
    segment's header (``segment[12]``, ``segment[4:8]``) reads either kind;
    ``bytes(parts)`` is the segment `pack_segment` would have built.
    """

    __slots__ = ("head", "payload")

    def __init__(self, head: bytes, payload) -> None:
        self.head = head
        self.payload = payload

    def __len__(self) -> int:
        return len(self.head) + len(self.payload)

    def __getitem__(self, i):
        return self.head[i]

    def __bytes__(self) -> bytes:
        return b"".join((self.head, self.payload))


def pack_parts(
    psum: int, sport: int, dport: int, seq: int, ack: int, flags: int, window: int,
    options=b"", payload=b"", urg: int = 0,
) -> TcpParts:
    """`pack_segment`'s segment as `TcpParts`: the same bytes, the payload not copied."""
    hlen = TCP_HLEN + len(options)
    tlen = hlen + len(payload)
    offflags = (hlen << 10) | flags
    n = acc(payload) + (
        psum + tlen + sport + dport + seq + ack + offflags + window + urg
        + _from_bytes(options, "big")
    )
    try:
        hdr = _pack(sport, dport, seq, ack, offflags, window, finish(n), urg)
    except struct.error as e:
        raise WireError(f"TCP: bad header field: {e}") from None
    return TcpParts(hdr + options if options else hdr, payload)


def _check_options(options) -> None:
    if len(options) & 3 or len(options) > MAX_OPTIONS:
        raise WireError(f"TCP: options must be a multiple of 4 bytes up to 40, got {len(options)}")


def build_tcp(
    src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
    window: int, payload=b"", urg: int = 0, options=b"",
) -> bytes:
    """Header, options and payload with the checksum over the IPv4 or IPv6 pseudo-header."""
    _check_options(options)
    return pack_segment(
        pseudo_sum(src, dst), sport, dport, seq, ack, flags, window, options, payload, urg)


def write_tcp(
    buf, off: int, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int,
    flags: int, window: int, payload_len: int = 0, urg: int = 0, options=b"", payload=None,
) -> int:
    """Write a segment into ``buf`` at ``off``; return its length.

    With ``payload`` given it is copied behind the header; without it the
    ``payload_len`` bytes already there are the payload (zero-copy: written
    into the packet buffer first) and are checksummed in place.
    """
    _check_options(options)
    psum = pseudo_sum(src, dst)
    if payload is not None:
        payload_len = len(payload)
    hlen = TCP_HLEN + len(options)
    tlen = hlen + payload_len
    if off < 0 or payload_len < 0 or len(buf) - off < tlen:
        raise WireError("buffer too small for TCP segment")
    with memoryview(buf) as mv, mv[off + hlen : off + tlen] as body:
        if payload is not None:
            body[:] = payload
        if options:
            mv[off + TCP_HLEN : off + hlen] = options
        n = acc(body)
    offflags = (hlen << 10) | flags
    n += psum + tlen + sport + dport + seq + ack + offflags + window + urg + _from_bytes(options, "big")
    csum = finish(n)
    try:
        _pack_into(buf, off, sport, dport, seq, ack, offflags, window, csum, urg)
    except struct.error as e:
        raise WireError(f"TCP: bad header field: {e}") from None
    return tlen


def tcp_checksum(src: bytes, dst: bytes, segment) -> int:
    """The value the checksum field of ``segment`` should hold (its own field ignored)."""
    if len(segment) < TCP_HLEN:
        raise WireError("TCP: truncated header")
    body = bytes(segment[:16]) + b"\0\0" + bytes(segment[18:])
    n = acc(body) + pseudo_sum(src, dst) + len(body)
    return finish(n)
