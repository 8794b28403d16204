"""The TAP driver's completion of a partial checksum (`TapDriver._unwrap`), against a model.

The host's stack writes its frames to a TAP with VIRTIO_NET_HDR_F_NEEDS_CSUM: the transport
checksum field holds the pseudo-header sum, and the reader completes it, as a NIC would, by
summing from `csum_start` to the end and writing the inverted sum at `csum_start + csum_offset`.
No device: the method reads the frame it is given and counts into its driver's stats.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from usnet.drivers.base import DriverStats
from usnet.drivers.tap import VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR, TapDriver


def _model(frame: bytes, start: int, offset: int) -> bytes:
    """The RFC 1071 sum over frame[start:] (an odd length padded with a zero byte), inverted,
    written at start + offset."""
    data = frame[start:] + (b"\x00" if (len(frame) - start) & 1 else b"")
    s = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    c = 0xFFFF - s
    out = bytearray(frame)
    out[start + offset : start + offset + 2] = c.to_bytes(2, "big")
    return bytes(out)


def _driver() -> TapDriver:
    d = TapDriver.__new__(TapDriver)  # no device: `_unwrap` needs only the stats
    d.stats = DriverStats()
    return d


@given(st.binary(min_size=2, max_size=3000), st.data())
def test_a_partial_checksum_is_completed_as_a_nic_would(frame, data):
    start = data.draw(st.integers(0, len(frame) - 2))
    offset = data.draw(st.integers(0, len(frame) - 2 - start))
    raw = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, start, offset, 0) + frame
    d = _driver()
    assert bytes(d._unwrap(raw)) == _model(frame, start, offset)
    assert d.stats.rx_csum_completed == 1


@given(st.binary(min_size=0, max_size=64), st.integers(0, 80), st.integers(0, 80))
def test_a_checksum_field_past_the_frame_is_an_error(frame, start, offset):
    raw = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, start, offset, 0) + frame
    d = _driver()
    got = d._unwrap(raw)
    if start + offset + 2 > len(frame):
        assert got is None and d.stats.rx_errors == 1
    else:
        assert bytes(got) == _model(frame, start, offset)
