"""The capture filter (usnet.proto.pcapfilter): parser round trips, refusals, and evaluation on frames."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.proto.pcapfilter import (
    And,
    FilterError,
    Host,
    Kind,
    Net,
    Not,
    Or,
    Port,
    Proto,
    compile_filter,
    frame_fields,
    parse,
    unparse,
)

dirs = st.sampled_from(["", "src", "dst"])
v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
v6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
leaves = st.one_of(
    st.builds(Host, st.one_of(v4, v6), dirs),
    st.builds(Net, st.tuples(v4, st.integers(0, 32)).map(lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", False)),
              dirs),
    st.builds(Port, st.integers(0, 65535), dirs, st.sampled_from([0, 6, 17])),
    st.builds(Proto, st.integers(0, 255)),
    st.builds(Kind, st.sampled_from(["ip", "ip6", "arp"])),
)
trees = st.recursive(leaves, lambda sub: st.one_of(st.builds(Not, sub), st.builds(And, sub, sub),
                                                   st.builds(Or, sub, sub)), max_leaves=12)


@given(trees)
@settings(max_examples=300)
def test_unparse_then_parse_is_the_same_tree(node):
    assert parse(unparse(node)) == node


@given(st.text(max_size=60))
@settings(max_examples=500)
def test_any_text_parses_or_is_refused_with_filter_error(text):
    try:
        parse(text)
    except FilterError:
        pass


@given(st.lists(st.sampled_from(["host", "10.0.0.1", "port", "80", "tcp", "udp", "and", "or", "not", "(", ")",
                                 "src", "dst", "net", "10.0.0.0/8", "proto", "icmp", "&&", "||", "!"]),
                max_size=12))
@settings(max_examples=500)
def test_word_salad_parses_or_is_refused(words):
    try:
        node = parse(" ".join(words))
    except FilterError:
        return
    if node is not None:
        assert parse(unparse(node)) == node


def test_precedence_is_pcap_filters():
    assert parse("tcp or udp and port 53") == Or(Proto(6), And(Proto(17), Port(53)))
    assert parse("not tcp and udp") == And(Not(Proto(6)), Proto(17))
    assert parse("tcp port 80") == Port(80, "", 6)
    assert parse("  ") is None


@pytest.mark.parametrize("bad", ["host", "host nothere", "port 65536", "net 10.0.0.0/33", "(tcp", "tcp)",
                                 "icmp port 1", "tcp src host 1.2.3.4", "frobnicate", "host 1.2.3.4 extra"])
def test_refused_with_a_reason(bad):
    with pytest.raises(FilterError):
        parse(bad)


def _frame4(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0, frag: int = 0) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, frag, 64, proto, 0, ipaddress.IPv4Address(src).packed,
                     ipaddress.IPv4Address(dst).packed)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + struct.pack("!HH", sport, dport) + bytes(16)


def _frame6(src: str, dst: str, nh: int, sport: int = 0, dport: int = 0) -> bytes:
    ip = struct.pack("!IHBB16s16s", 6 << 28, 8, nh, 64, ipaddress.IPv6Address(src).packed,
                     ipaddress.IPv6Address(dst).packed)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ip + struct.pack("!HH", sport, dport) + bytes(4)


@pytest.mark.parametrize(("text", "frame", "want"), [
    ("tcp port 80", _frame4("10.0.0.1", "10.0.0.2", 6, 1234, 80), True),
    ("tcp port 80", _frame4("10.0.0.1", "10.0.0.2", 17, 1234, 80), False),
    ("udp port 80", _frame4("10.0.0.1", "10.0.0.2", 17, 80, 9), True),
    ("src port 80", _frame4("10.0.0.1", "10.0.0.2", 6, 1234, 80), False),
    ("dst host 10.0.0.2", _frame4("10.0.0.1", "10.0.0.2", 6), True),
    ("src host 10.0.0.2", _frame4("10.0.0.1", "10.0.0.2", 6), False),
    ("net 10.0.0.0/24 and not icmp", _frame4("10.0.0.1", "9.9.9.9", 6), True),
    ("net 10.0.1.0/24", _frame4("10.0.0.1", "9.9.9.9", 6), False),
    ("port 80", _frame4("10.0.0.1", "10.0.0.2", 6, 1234, 80, frag=100), False),  # a later fragment has no ports
    ("ip6 and tcp port 443", _frame6("fd00::1", "fd00::2", 6, 5555, 443), True),
    ("host fd00::2", _frame6("fd00::1", "fd00::2", 17), True),
    ("host 10.0.0.2", _frame6("fd00::1", "fd00::2", 17), False),
    ("arp", b"\xff" * 6 + b"\x04" * 6 + b"\x08\x06" + bytes(28), True),
    ("ip", b"\x00" * 5, False),  # a runt: nothing matches, nothing raises
])
def test_evaluation_on_frames(text, frame, want):
    assert compile_filter(parse(text))(frame_fields(frame)) is want


@given(st.binary(max_size=80), trees)
@settings(max_examples=300)
def test_any_frame_evaluates_without_raising(frame, node):
    assert compile_filter(node)(frame_fields(frame)) in (True, False)
