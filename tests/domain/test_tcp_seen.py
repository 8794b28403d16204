"""The switch's TCP sequence state per remote end (usnet.domain.switch.txguard.TcpSeen), from which
the domain resets a dead owner's connections (issue 16, "Lifecycle")."""

from __future__ import annotations

import numpy as np

from usnet.domain.switch.txguard import TCP_SEEN_MAX, TcpSeen
from usnet.proto.wire.ipv4 import build_ipv4_header
from usnet.proto.wire.ipv6 import build_ipv6_header
from usnet.proto.wire.tcp import pack_segment, pseudo_sum

LOCAL4, LOCAL6 = bytes([10, 0, 0, 2]), bytes(15) + b"\x02"
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


def packet(dst: bytes, dport: int, seq: int, ack: int, flags: int, data: bytes = b"") -> bytes:
    local = LOCAL4 if len(dst) == 4 else LOCAL6
    seg = pack_segment(pseudo_sum(local, dst), 8080, dport, seq, ack, flags, 1000, payload=data)
    hdr = build_ipv4_header(local, dst, 6, len(seg)) if len(dst) == 4 else build_ipv6_header(local, dst, 6, len(seg))
    return hdr + seg


def rows_of(pkts: list[bytes], base: int = 14) -> tuple[np.ndarray, np.ndarray]:
    width = base + max(map(len, pkts))
    rows = np.zeros((len(pkts), width), np.uint8)
    for i, p in enumerate(pkts):
        rows[i, base : base + len(p)] = np.frombuffer(p, np.uint8)
    return rows, np.array([len(p) for p in pkts], np.int64)


def test_a_listener_s_batch_keeps_the_last_state_of_each_remote_end():
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 3])
    pkts = [packet(a, 1000, 100, 7, ACK, b"x" * 10), packet(b, 2000, 500, 9, ACK),
            packet(a, 1000, 110, 8, ACK | FIN, b"y" * 5), packet(b, 2000, 500, 9, ACK, b"z" * 100),
            packet(a, 1001, 1, 0, 0xFF & ~RST, b"")]  # a third end, never valid (not in idx)
    rows, lens = rows_of(pkts)
    seen = TcpSeen()
    seen.note_rows(rows, lens, np.array([0, 1, 2, 3]), 14, 4, connected=False)
    assert seen.ends == {(a, 1000): [116, 8], (b, 2000): [600, 9]}  # 110 + 5 + FIN


def test_a_retransmission_does_not_move_the_state_back_and_a_rst_ends_it():
    r = bytes([10, 0, 0, 1])
    seen = TcpSeen()
    seen.note(packet(r, 80, 1000, 5, ACK, b"a" * 100), 4)
    seen.note(packet(r, 80, 900, 4, ACK, b"a" * 50), 4)  # an old segment sent again
    assert seen.ends[(r, 80)] == [1100, 5]
    seen.note(packet(r, 80, 0xFFFFFFF0, 0, SYN), 4)  # a new connection on the 4-tuple starts afresh
    assert seen.ends[(r, 80)] == [0xFFFFFFF1, None]
    seen.note(packet(r, 80, 0xFFFFFFF1, 77, ACK, b"b" * 32), 4)  # wraps
    assert seen.ends[(r, 80)] == [0x11, 77]
    seen.note(packet(r, 80, 0x11, 77, RST | ACK), 4)
    assert seen.ends == {}


def test_ipv6_and_a_connected_flow_take_the_last_valid_row():
    r = bytes(15) + b"\x01"
    pkts = [packet(r, 443, 10, 1, SYN | ACK), packet(r, 443, 11, 2, ACK, b"q" * 20), packet(r, 443, 31, 2, ACK)]
    rows, lens = rows_of(pkts)
    seen = TcpSeen()
    seen.note_rows(rows, lens, np.array([0, 1]), 14, 6, connected=True)
    assert seen.ends == {(r, 443): [31, 2]}
    seen.note_rows(rows, lens, np.array([0, 1, 2]), 14, 6, connected=False)
    assert seen.ends == {(r, 443): [31, 2]}


def test_the_table_is_bounded():
    seen = TcpSeen()
    for i in range(TCP_SEEN_MAX + 10):
        seen.note(packet(bytes([10, 0, i >> 8, i & 0xFF]), 9, i, 0, ACK), 4)
    assert len(seen) == TCP_SEEN_MAX
    assert (bytes([10, 0, 0, 0]), 9) not in seen.ends  # the least recently seen went first


def test_a_super_segment_row_is_read_by_its_headers_and_its_length():
    """The guard reads a row's headers in place of copying it whole (a 64 KB super-segment): the
    next sequence number still counts every payload byte the row's length says it carries."""
    r = bytes([10, 0, 0, 1])
    big = packet(r, 80, 5000, 3, ACK, bytes(range(256)) * 250)  # 64000 bytes of payload
    rows, lens = rows_of([packet(r, 80, 4000, 3, ACK, b"a" * 1000), big])
    seen = TcpSeen()
    seen.note_rows(rows, lens, np.array([0, 1]), 14, 4, connected=True)
    assert seen.ends == {(r, 80): [5000 + 64000, 3]}
    seen.note(big[:30], 4, len(big) + 100)  # too few bytes to hold both headers: ignored
    seen.note(big[:40], 4, 39)  # a length shorter than its headers: ignored
    seen.note(big[:40], 4, 40 + 10)  # headers and a length: 10 bytes from 5000
    assert seen.ends == {(r, 80): [5000 + 64000, 3]}
