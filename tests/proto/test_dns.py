"""usnet.proto.dns: DNS messages, encoded and parsed (the resolver's wire format).

Two kinds of evidence:

* round trips (hypothesis): any message of names, records and flags encodes
  and parses back to the same fields, compressed or not; names with any
  label bytes survive their text form;
* hostile input: random bytes, truncations of good messages, compression
  pointers that loop or point forwards, over-long names and labels, counts
  that promise more than the message holds, rdata of the wrong size: each
  raises DnsError and nothing else, and no input runs for long (a pointer
  loop would never end).

What scapy builds we parse, and what we build scapy reads, with the same
fields.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.proto import dns as D

labels = st.binary(min_size=1, max_size=20)
names = st.lists(labels, min_size=0, max_size=5).map(
    lambda ls: ".".join(D._label_text(x) for x in ls) or ".")
ldh = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", fullmatch=True)
host_names = st.lists(ldh, min_size=1, max_size=4).map(".".join)


@st.composite
def records(draw) -> D.Record:
    name = draw(names)
    kind = draw(st.sampled_from(["a", "aaaa", "cname", "ptr", "other"]))
    ttl = draw(st.integers(0, 2**32 - 1))
    if kind == "a":
        return D.address_record(name, draw(st.ip_addresses(v=4)).compressed, ttl)
    if kind == "aaaa":
        return D.address_record(name, draw(st.ip_addresses(v=6)).compressed, ttl)
    if kind in ("cname", "ptr"):
        return D.name_record(name, D.TYPE_CNAME if kind == "cname" else D.TYPE_PTR, draw(names), ttl)
    return D.Record(name, draw(st.sampled_from([16, 99, 65280])), draw(st.integers(1, 255)), ttl,
                    draw(st.binary(max_size=40)))


@st.composite
def messages(draw) -> D.Message:
    header = D.Header(draw(st.integers(0, 0xFFFF)), draw(st.booleans()), draw(st.integers(0, 15)),
                      draw(st.booleans()), draw(st.booleans()), draw(st.booleans()), draw(st.booleans()),
                      draw(st.integers(0, 15)))
    qs = draw(st.lists(st.builds(D.Question, names, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)), max_size=3))
    sections = [tuple(draw(st.lists(records(), max_size=4))) for _ in range(3)]
    return D.Message(header, tuple(qs), *sections)


def same_names(a: D.Message, b: D.Message) -> bool:
    def keyed(m: D.Message) -> tuple:
        return (m.header, [(D.name_key(q.name), q.qtype, q.qclass) for q in m.questions],
                [[(D.name_key(r.name), r.rtype, r.rclass, r.ttl, r.rdata,
                   D.name_key(r.value) if r.rtype in (D.TYPE_CNAME, D.TYPE_PTR) else r.value) for r in s]
                 for s in (m.answers, m.authorities, m.additionals)])
    return keyed(a) == keyed(b)


@settings(max_examples=300, deadline=None)
@given(messages(), st.booleans())
def test_any_message_round_trips(msg, compress):
    wire = D.encode_message(msg, compress=compress)
    assert same_names(D.parse_message(wire), msg)


@given(st.lists(labels, min_size=1, max_size=6))
def test_names_with_any_label_bytes_survive_their_text_form(raw_labels):
    text = ".".join(D._label_text(x) for x in raw_labels)
    wire = D.encode_name(text)
    if len(wire) > D.MAX_NAME:
        return
    assert wire == b"".join(bytes([len(x)]) + x for x in raw_labels) + b"\0"
    assert D._read_name(wire, 0) == (text, len(wire))


def test_compression_makes_repeated_suffixes_two_bytes():
    msg = D.Message(D.Header(1, qr=True), (D.Question("www.example.test", 1),),
                    (D.address_record("www.example.test", "10.0.0.1"),
                     D.address_record("Www.Example.Test", "10.0.0.2")))
    plain, packed = D.encode_message(msg, compress=False), D.encode_message(msg)
    assert len(plain) - len(packed) == 2 * (len(D.encode_name("www.example.test")) - 2)
    assert [r.value for r in D.parse_message(packed).answers] == ["10.0.0.1", "10.0.0.2"]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_dns_error(data):
    try:
        D.parse_message(data)
    except D.DnsError:
        pass


@settings(max_examples=200, deadline=None)
@given(messages(), st.data())
def test_every_truncation_and_corruption_raises_only_dns_error(msg, data):
    wire = bytearray(D.encode_message(msg))
    cut = data.draw(st.integers(0, len(wire)))
    try:
        D.parse_message(bytes(wire[:cut]))
    except D.DnsError:
        pass
    for _ in range(data.draw(st.integers(1, 8))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    try:
        D.parse_message(bytes(wire))
    except D.DnsError:
        pass


def header(qd=1, an=0, ns=0, ar=0, ident=7, flags=0x8180) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


@pytest.mark.parametrize("body", [
    b"\xc0\x0c" + b"\x00\x01\x00\x01",                              # points at itself
    b"\x01a\xc0\x0c" + b"\x00\x01\x00\x01",                          # a label, then back to its start
    b"\xc0\x0e\x01a\xc0\x0c",                                       # forwards, then back: a two-step loop
    b"\x01a\xc0\x0e",                                               # forwards into its own pointer
    b"\xc0\xff" + b"\x00\x01\x00\x01",                              # past the message
])
def test_compression_loops_and_forward_pointers_are_refused(body):
    with pytest.raises(D.DnsError, match=r"pointer|runs past"):
        D.parse_message(header() + body)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 80), min_size=1, max_size=40))
def test_any_chain_of_pointers_ends_quickly(targets):
    """A message made only of pointers, to anywhere: it parses or fails, never loops."""
    body = b"".join(struct.pack("!H", 0xC000 | (12 + 2 * t)) for t in targets)
    try:
        D.parse_message(header() + body + b"\x00\x01\x00\x01")
    except D.DnsError:
        pass


def test_a_legitimate_chain_of_backward_pointers_parses():
    first = D.encode_name("a.b.example.test")  # at 12
    second = b"\x01c\xc0\x0e"                 # c + pointer to "b.example.test" (offset 14)
    third = b"\x01d\xc0" + bytes([12 + len(first) + 4])  # d + pointer to the second name
    msg = header(qd=3) + first + b"\0\1\0\1" + second + b"\0\1\0\1" + third + b"\0\1\0\1"
    assert [q.name for q in D.parse_message(msg).questions] == ["a.b.example.test", "c.b.example.test",
                                                                "d.c.b.example.test"]


def test_truncated_names_labels_and_records():
    good = D.encode_message(D.Message(D.Header(1, qr=True), (D.Question("example.test", 1),),
                                      (D.address_record("example.test", "10.0.0.1"),)))
    for cut in range(len(good)):
        with pytest.raises(D.DnsError):
            D.parse_message(good[:cut])
    with pytest.raises(D.DnsError, match="label runs past"):
        D.parse_message(header() + b"\x3fabc")


def test_counts_that_promise_more_than_the_message_holds():
    q = D.encode_name("example.test") + b"\0\1\0\1"
    for counts in [(2, 0, 0, 0), (1, 1, 0, 0), (1, 0, 65535, 0), (65535, 65535, 65535, 65535)]:
        with pytest.raises(D.DnsError):
            D.parse_message(header(*counts) + q)


def test_names_and_labels_past_their_limits():
    with pytest.raises(D.DnsError, match="label"):
        D.encode_name("a" * 64 + ".test")
    with pytest.raises(D.DnsError, match="longer than 255"):
        D.encode_name(".".join(["a" * 63] * 4))
    long_wire = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\0"  # 257 octets
    with pytest.raises(D.DnsError, match="longer than 255"):
        D.parse_message(header() + long_wire + b"\0\1\0\1")
    with pytest.raises(D.DnsError, match="label type"):
        D.parse_message(header() + b"\x41a\0\0\1\0\1")  # 0x40: an extended label type


@pytest.mark.parametrize("rtype,rdata", [(D.TYPE_A, b"\1\2\3"), (D.TYPE_A, b"\1\2\3\4\5"), (D.TYPE_AAAA, b"\0" * 4),
                                         (D.TYPE_CNAME, b"\x01a"), (D.TYPE_CNAME, b"\x01a\0\0")])
def test_rdata_of_the_wrong_size(rtype, rdata):
    rr = D.encode_name("x.test") + struct.pack("!HHIH", rtype, 1, 0, len(rdata)) + rdata
    with pytest.raises(D.DnsError):
        D.parse_message(header(qd=0, an=1) + rr)


def test_query_and_header_fields():
    q = D.query(0xBEEF, "Example.TEST", D.TYPE_AAAA)
    m = D.parse_message(q)
    assert m.header == D.Header(0xBEEF, qr=False, rd=True)
    assert m.questions == (D.Question("Example.TEST", D.TYPE_AAAA, D.CLASS_IN),)
    assert len(q) == 12 + len(D.encode_name("example.test")) + 4
    assert D.name_key("Example.TEST.") == "example.test" == D.name_key("example.test")
    assert D.reverse_name("10.1.2.3") == "3.2.1.10.in-addr.arpa"


def test_scapy_agrees_both_ways():
    """What scapy builds (compressed, as servers send it) we parse; what we build scapy reads."""
    sd = pytest.importorskip("scapy.layers.dns")
    theirs = sd.DNS(id=0x1234, qr=1, rd=1, ra=1, qd=sd.DNSQR(qname="www.example.test", qtype="A"),
                    an=[sd.DNSRR(rrname="www.example.test", type="CNAME", rdata="web.example.test"),
                        sd.DNSRR(rrname="web.example.test", type="A", ttl=60, rdata="10.9.8.7")])
    ours = D.parse_message(sd.dns_compress(theirs).build())
    assert ours.header == D.Header(0x1234, qr=True, rd=True, ra=True)
    assert [(D.name_key(r.name), r.rtype, r.value) for r in ours.answers] == [
        ("www.example.test", D.TYPE_CNAME, "web.example.test"), ("web.example.test", D.TYPE_A, "10.9.8.7")]
    resp = D.Message(D.Header(5, qr=True, ra=True), (D.Question("www.example.test", D.TYPE_AAAA),),
                     (D.name_record("www.example.test", D.TYPE_CNAME, "web.example.test"),
                      D.address_record("web.example.test", "fd00::7", 60)))
    back = sd.DNS(D.encode_message(resp))
    assert (back.id, back.qr, back.qd[0].qname, back.qd[0].qtype) == (5, 1, b"www.example.test.", 28)
    assert [(a.rrname, a.type, a.rdata) for a in back.an] == [
        (b"www.example.test.", 5, b"web.example.test."), (b"web.example.test.", 28, "fd00::7")]
