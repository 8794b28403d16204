"""The LL lane's header check (usnet.domain.switch.lllane.check_lane_header): what a frame that
landed in an LL flow's own buffer must be before the switch publishes it.

A property test: any bytes mutated in a genuine packet's headers are accepted exactly when a
model built on the wire parser (usnet.proto.wire.ipv4.parse_ipv4) finds the packet is still an
option-less, unfragmented IPv4 packet of the flow: to our address, its protocol and port, from
its connected peer, its total length the frame's.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.domain.switch.lllane import LANE_SNAPSHOT, check_lane_header
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.ipv4 import build_ipv4_header, parse_ipv4

LOCAL, PEER = bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1])
FLOW = {"proto": 17, "lport": 9000, "raddr": PEER, "rport": 5555, "local": LOCAL}


def _packet(payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 5555, 9000, 8 + len(payload), 0) + payload
    return build_ipv4_header(PEER, LOCAL, 17, len(udp)) + udp


def _model(pkt: bytes, length: int) -> bool:
    try:
        ihl, total, _ident, ff, _ttl, proto, src, dst = parse_ipv4(pkt[:length])
    except (WireError, ValueError, IndexError, struct.error):
        return False
    if ihl != 20 or total != length or length < LANE_SNAPSHOT or ff & 0x3FFF:
        return False
    sport, dport = struct.unpack_from("!HH", pkt, 20)
    return (proto, dport, dst, src, sport) == (17, 9000, LOCAL, PEER, 5555)


def test_a_genuine_packet_passes_and_a_wrong_port_does_not():
    pkt = _packet(b"x" * 40)
    assert check_lane_header(pkt[:LANE_SNAPSHOT], len(pkt), **FLOW) is None
    assert check_lane_header(pkt[:LANE_SNAPSHOT], len(pkt), **{**FLOW, "rport": 5556}) == "rx_ll_bad_header"
    assert check_lane_header(pkt[:LANE_SNAPSHOT], len(pkt) + 1, **FLOW) == "rx_ll_bad_header"
    assert check_lane_header(pkt[:20], 20, **FLOW) == "rx_ll_runt"


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=0, max_size=200),
       st.lists(st.tuples(st.integers(0, LANE_SNAPSHOT - 1), st.integers(0, 255)), max_size=3),
       st.integers(-2, 2))
def test_accepted_exactly_when_the_model_says_it_is_the_flows(payload, edits, dlen):
    pkt = bytearray(_packet(payload))
    for at, v in edits:
        pkt[at] = v
    length = max(0, len(pkt) + dlen)
    pkt += bytes(max(0, dlen))
    got = check_lane_header(bytes(pkt[:LANE_SNAPSHOT]), length, **FLOW)
    assert (got is None) == _model(bytes(pkt), length), (bytes(pkt[:28]).hex(), length, got)
