"""DNS messages (RFC 1035, 3596): encode and parse, sans-I/O.

The resolver (usnet.client.resolver) sends what `query` builds and reads
answers with `parse_message`. Answers come from the network, so the parser
treats every byte as hostile and raises exactly one type, `DnsError`, for
anything malformed: a count that promises more records than the bytes hold,
a name that runs off the end, a label longer than 63 octets, a name longer
than 255, a compression pointer that does not point strictly backwards of
where the last one led (which is what makes a pointer loop impossible: every
jump goes to a smaller offset), an A record that is not 4 bytes.

Names are text in presentation form: labels joined by dots, a byte that is
not printable ASCII, or is a dot or backslash inside a label, escaped as
``\\DDD`` (decimal). So any label bytes survive a parse and an encode, and
comparing two names is comparing ``.lower()`` of their texts (DNS names are
case-insensitive in ASCII only, and nothing else in the text is a letter).
The root is ``"."``; other names have no trailing dot.

Layout of the header (12 bytes, big-endian), then the four sections:

    0    2       4        6        8        10       12
    | id | flags | qdcount| ancount| nscount| arcount| question ... answer ... authority ... additional
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

__all__ = [
    "CLASS_IN", "FORMERR", "NOERROR", "NOTIMP", "NXDOMAIN", "REFUSED", "SERVFAIL", "TYPE_A", "TYPE_AAAA",
    "TYPE_CNAME", "TYPE_NS", "TYPE_PTR", "DnsError", "Header", "Message", "Question", "Record", "address_record",
    "encode_message", "encode_name", "name_key", "name_record", "parse_message", "query", "reverse_name",
]

TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_PTR, TYPE_AAAA = 1, 2, 5, 12, 28
CLASS_IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5

_HEADER = struct.Struct("!HHHHHH")
_QTAIL = struct.Struct("!HH")
_RRTAIL = struct.Struct("!HHIH")
MAX_NAME = 255  # octets on the wire, the root's zero included (RFC 1035 §2.3.4)
MAX_LABEL = 63
_NAME_TYPES = (TYPE_CNAME, TYPE_NS, TYPE_PTR)  # rdata that is one (compressible) name


class DnsError(ValueError):
    """A DNS message (or a name for one) does not fit the format."""


@dataclass(frozen=True)
class Header:
    """The header's fields by name; the four counts are the sections' lengths, not stored here."""

    id: int
    qr: bool = False  # an answer
    opcode: int = 0
    aa: bool = False  # authoritative
    tc: bool = False  # truncated: ask again over TCP
    rd: bool = True  # recursion desired
    ra: bool = False  # recursion available
    rcode: int = NOERROR

    def flags(self) -> int:
        if not (0 <= self.opcode < 16 and 0 <= self.rcode < 16):
            raise DnsError("opcode and rcode are 4 bits")
        return (self.qr << 15 | self.opcode << 11 | self.aa << 10 | self.tc << 9 | self.rd << 8 | self.ra << 7
                | self.rcode)

    @classmethod
    def from_wire(cls, ident: int, flags: int) -> Header:
        return cls(ident, bool(flags >> 15), flags >> 11 & 15, bool(flags >> 10 & 1), bool(flags >> 9 & 1),
                   bool(flags >> 8 & 1), bool(flags >> 7 & 1), flags & 15)


@dataclass(frozen=True)
class Question:
    name: str
    qtype: int
    qclass: int = CLASS_IN


@dataclass(frozen=True)
class Record:
    """A resource record. `rdata` is the wire form with any names in it expanded, so it can be
    encoded again on its own; `value` is what a resolver wants of it: the address text of an A or
    AAAA record, the target name of a CNAME, NS or PTR, else None."""

    name: str
    rtype: int
    rclass: int
    ttl: int
    rdata: bytes
    value: str | None = None


@dataclass(frozen=True)
class Message:
    header: Header
    questions: tuple[Question, ...] = ()
    answers: tuple[Record, ...] = ()
    authorities: tuple[Record, ...] = ()
    additionals: tuple[Record, ...] = field(default=())


# -- names ---------------------------------------------------------------------------------------


def _label_text(label: bytes) -> str:
    out = []
    for b in label:
        if b in (0x2E, 0x5C):  # '.' and '\' inside a label
            out.append("\\" + chr(b))
        elif 0x21 <= b <= 0x7E:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03d}")
    return "".join(out)


def _labels(name: str) -> list[bytes]:
    """The labels of a name in presentation form (escapes undone); [] for the root."""
    if name in ("", "."):
        return []
    labels: list[bytes] = []
    cur = bytearray()
    i, n = 0, len(name)
    while i < n:
        c = name[i]
        if c == "\\":
            if name[i + 1 : i + 4].isdigit() and len(name[i + 1 : i + 4]) == 3:
                v = int(name[i + 1 : i + 4])
                if v > 255:
                    raise DnsError(f"bad escape in {name!r}")
                cur.append(v)
                i += 4
                continue
            if i + 1 >= n:
                raise DnsError(f"a name ends in a backslash: {name!r}")
            c = name[i + 1]
            i += 1
        elif c == ".":
            if not cur:
                raise DnsError(f"empty label in {name!r}")
            labels.append(bytes(cur))
            cur = bytearray()
            i += 1
            continue
        o = ord(c)
        if o > 0x7F:
            raise DnsError(f"not ASCII (IDNA-encode it first): {name!r}")
        cur.append(o)
        i += 1
    if cur:
        labels.append(bytes(cur))  # else the name ended in a dot: its absolute form, the same name
    for label in labels:
        if len(label) > MAX_LABEL:
            raise DnsError(f"a label longer than {MAX_LABEL} octets in {name!r}")
    if sum(len(label) + 1 for label in labels) + 1 > MAX_NAME:
        raise DnsError(f"a name longer than {MAX_NAME} octets: {name[:40]!r}...")
    return labels


def name_key(name: str) -> str:
    """The form in which two names compare equal when DNS says they are: lower case, no trailing dot."""
    return ".".join(_label_text(label) for label in _labels(name)).lower() or "."


def encode_name(name: str, out: bytearray | None = None, table: dict[tuple[bytes, ...], int] | None = None) -> bytes:
    """A name in wire form; with `out` and `table`, appended to `out`, compressed against the suffixes
    already written (their offsets in `table`, which this adds to)."""
    labels = _labels(name)
    buf = bytearray() if out is None else out
    start = len(buf)
    for i in range(len(labels)):
        if table is not None:
            key = tuple(label.lower() for label in labels[i:])
            where = table.get(key)
            if where is not None:
                buf += struct.pack("!H", 0xC000 | where)
                return bytes(buf[start:])
            if len(buf) < 0x4000:
                table[key] = len(buf)
        buf.append(len(labels[i]))
        buf += labels[i]
    buf.append(0)
    return bytes(buf[start:])


def _read_name(buf: bytes, off: int) -> tuple[str, int]:
    """The name at `off` and the offset just past it (past its first pointer, if compressed)."""
    labels: list[str] = []
    wire_len = 1
    end = -1
    pos = off
    limit = off  # a pointer must go strictly below where the previous one led
    n = len(buf)
    while True:
        if pos >= n:
            raise DnsError("a name runs past the message")
        length = buf[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= n:
                raise DnsError("a compression pointer runs past the message")
            target = (length & 0x3F) << 8 | buf[pos + 1]
            if target >= limit:
                raise DnsError("a compression pointer that does not point backwards (a loop)")
            if end < 0:
                end = pos + 2
            pos = limit = target
            continue
        if kind:
            raise DnsError(f"label type {kind >> 6:#x} is not supported")
        if length == 0:
            return (".".join(labels) or "."), (pos + 1 if end < 0 else end)
        wire_len += length + 1
        if wire_len > MAX_NAME:
            raise DnsError(f"a name longer than {MAX_NAME} octets")
        if pos + 1 + length > n:
            raise DnsError("a label runs past the message")
        labels.append(_label_text(buf[pos + 1 : pos + 1 + length]))
        pos += 1 + length


def reverse_name(address: str) -> str:
    """The PTR name of an address: 4.3.2.1.in-addr.arpa, or the nibbles under ip6.arpa."""
    return ipaddress.ip_address(address).reverse_pointer


# -- messages ------------------------------------------------------------------------------------


def query(ident: int, name: str, qtype: int, rd: bool = True) -> bytes:
    """A standard query for one name and type (no EDNS: answers over 512 bytes come truncated, and
    then the resolver asks over TCP, as glibc's does by default)."""
    return encode_message(Message(Header(ident & 0xFFFF, rd=rd), (Question(name, qtype),)))


def encode_message(msg: Message, compress: bool = True) -> bytes:
    """The wire form of a message (names compressed unless `compress` is False)."""
    h = msg.header
    if not 0 <= h.id <= 0xFFFF:
        raise DnsError("the id is 16 bits")
    sections = (msg.questions, msg.answers, msg.authorities, msg.additionals)
    if any(len(s) > 0xFFFF for s in sections):
        raise DnsError("a section holds at most 65535 entries")
    out = bytearray(_HEADER.pack(h.id, h.flags(), *map(len, sections)))
    table: dict[tuple[bytes, ...], int] | None = {} if compress else None
    for q in msg.questions:
        encode_name(q.name, out, table)
        out += _QTAIL.pack(q.qtype, q.qclass)
    for rr in msg.answers + msg.authorities + msg.additionals:
        encode_name(rr.name, out, table)
        rdata = rr.rdata
        if rr.rtype in _NAME_TYPES and rr.value is not None:
            rdata = encode_name(rr.value)  # uncompressed: rdata stays position-independent
        if len(rdata) > 0xFFFF:
            raise DnsError("rdata longer than 65535 bytes")
        out += _RRTAIL.pack(rr.rtype, rr.rclass, rr.ttl & 0xFFFFFFFF, len(rdata))
        out += rdata
    return bytes(out)


def address_record(name: str, address: str, ttl: int = 0) -> Record:
    """An A or AAAA record for `address` (a test server's answer, say)."""
    ip = ipaddress.ip_address(address)
    return Record(name, TYPE_AAAA if ip.version == 6 else TYPE_A, CLASS_IN, ttl, ip.packed, str(ip))


def name_record(name: str, rtype: int, target: str, ttl: int = 0) -> Record:
    """A CNAME, NS or PTR record pointing at `target`."""
    return Record(name, rtype, CLASS_IN, ttl, encode_name(target), target)


def parse_message(data: bytes | bytearray | memoryview) -> Message:
    """A message from the wire; DnsError if any part of it is malformed (trailing bytes are ignored,
    as resolvers do)."""
    buf = bytes(data)
    if len(buf) < _HEADER.size:
        raise DnsError("shorter than a DNS header")
    ident, flags, qd, an, ns, ar = _HEADER.unpack_from(buf)
    pos = _HEADER.size
    questions = []
    for _ in range(qd):
        name, pos = _read_name(buf, pos)
        if pos + 4 > len(buf):
            raise DnsError("a question runs past the message")
        qtype, qclass = _QTAIL.unpack_from(buf, pos)
        pos += 4
        questions.append(Question(name, qtype, qclass))
    sections: list[list[Record]] = [[], [], []]
    for count, section in zip((an, ns, ar), sections):
        for _ in range(count):
            rr, pos = _read_record(buf, pos)
            section.append(rr)
    return Message(Header.from_wire(ident, flags), tuple(questions), *map(tuple, sections))


def _read_record(buf: bytes, pos: int) -> tuple[Record, int]:
    name, pos = _read_name(buf, pos)
    if pos + _RRTAIL.size > len(buf):
        raise DnsError("a record runs past the message")
    rtype, rclass, ttl, rdlen = _RRTAIL.unpack_from(buf, pos)
    pos += _RRTAIL.size
    end = pos + rdlen
    if end > len(buf):
        raise DnsError("rdata runs past the message")
    rdata = buf[pos:end]
    value: str | None = None
    if rclass == CLASS_IN and rtype == TYPE_A:
        if rdlen != 4:
            raise DnsError(f"an A record of {rdlen} bytes")
        value = str(ipaddress.IPv4Address(rdata))
    elif rclass == CLASS_IN and rtype == TYPE_AAAA:
        if rdlen != 16:
            raise DnsError(f"an AAAA record of {rdlen} bytes")
        value = str(ipaddress.IPv6Address(rdata))
    elif rtype in _NAME_TYPES:
        value, after = _read_name(buf, pos)
        if after != end:
            raise DnsError("a name in rdata does not fill its rdata")
        rdata = encode_name(value)
    return Record(name, rtype, rclass, ttl, rdata, value), end
