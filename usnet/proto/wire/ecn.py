"""The TOS octet of IPv4 and the traffic class of IPv6: DSCP in the high six bits, ECN in the low two.

Why a module of its own: the same eight bits sit at different places in the
two headers, and several parts of usnet read or write them: TCP's sender
and receiver and the netif's AQM (which marks instead of dropping) the ECN
field (RFC 3168), the flow switch the DSCP (RFC 2474), which it forces to
the flow's service class on every packet a client sends.

IPv4 byte 1 is the TOS octet: DSCP in the high six bits, ECN in the low two.
IPv6 bytes 0-1 are version (4 bits), traffic class (8), the start of the
flow label: DSCP is the low nibble of byte 0 and bits 6-7 of byte 1, ECN is
bits 4-5 of byte 1.
"""

from __future__ import annotations

import numpy as np

from usnet.proto.wire.checksum import update16

__all__ = ["CE", "ECT0", "ECT1", "NOT_ECT", "ecn", "mark_ce", "set_dscp", "set_dscp_rows"]

NOT_ECT, ECT1, ECT0, CE = 0, 1, 2, 3  # the codepoints; ECT0 is what an ECN-capable sender sets


def ecn(packet, off: int = 0) -> int:
    """The ECN codepoint of the IPv4 or IPv6 packet at `off` (NOT_ECT for anything else)."""
    version = int(packet[off]) >> 4
    if version == 4:
        return int(packet[off + 1]) & 3
    if version == 6:
        return (int(packet[off + 1]) >> 4) & 3
    return NOT_ECT


def _set_tos4(buf, off: int, tos: int) -> None:
    """Write IPv4 TOS octet `tos`, the header checksum updated incrementally (RFC 1624)."""
    old = int(buf[off]) << 8 | int(buf[off + 1])  # the 16-bit word the checksum sums: version/IHL, TOS
    hc = update16(int(buf[off + 10]) << 8 | int(buf[off + 11]), old, old & 0xFF00 | tos)
    buf[off + 1] = tos
    buf[off + 10] = hc >> 8
    buf[off + 11] = hc & 0xFF


def mark_ce(buf, off: int = 0) -> bool:
    """Set CE in the ECN-capable IP packet at `off` of a writable buffer (bytearray, numpy row).

    Returns False, leaving it untouched, for a packet that is not
    ECN-capable (NOT_ECT) or not IP: a router must drop those instead. The
    IPv4 header checksum is updated incrementally, so a packet whose
    checksum was right stays right.
    """
    version = int(buf[off]) >> 4
    if version == 4:
        tos = int(buf[off + 1])
        if not tos & 3:
            return False
        if tos & 3 != CE:
            _set_tos4(buf, off, tos | CE)
        return True
    if version == 6:
        b = int(buf[off + 1])
        if not (b >> 4) & 3:
            return False
        buf[off + 1] = b | CE << 4
        return True
    return False


def set_dscp(buf, off: int, dscp: int) -> bool:
    """Force the DSCP of the IPv4 or IPv6 packet at `off` of a writable buffer to `dscp`, keeping its ECN.

    Returns whether it changed anything. IPv4's header checksum is updated
    incrementally; anything that is not IPv4 or IPv6 is left alone (the
    flow switch refuses it anyway).
    """
    version = int(buf[off]) >> 4
    if version == 4:
        tos = int(buf[off + 1])
        if tos >> 2 == dscp:
            return False
        _set_tos4(buf, off, dscp << 2 | tos & 3)
        return True
    if version == 6:
        b0, b1 = int(buf[off]), int(buf[off + 1])
        if (b0 & 0xF) << 2 | b1 >> 6 == dscp:
            return False
        buf[off] = b0 & 0xF0 | dscp >> 2
        buf[off + 1] = (dscp & 3) << 6 | b1 & 0x3F
        return True
    return False


def set_dscp_rows(rows: np.ndarray, off: int, dscp: int, version: int) -> int:
    """`set_dscp` column-wise, for the IPv`version` packets in the rows of a uint8 batch at column `off`.

    Only rows of that version whose DSCP differs are written; returns how
    many. A row must be at least `off` + 12 bytes wide (an IPv4 header's
    checksum); what is past a short packet's length is never sent.
    """
    b0, b1 = rows[:, off], rows[:, off + 1]
    if version == 4:
        bad = (b0 >> 4 == 4) & (b1 >> 2 != dscp)
        if not bad.any():
            return 0
        idx = np.flatnonzero(bad)
        v, tos = rows[idx, off].astype(np.int64), rows[idx, off + 1].astype(np.int64)
        hc = rows[idx, off + 10].astype(np.int64) << 8 | rows[idx, off + 11]
        new = dscp << 2 | tos & 3
        hc = update16(hc, v << 8 | tos, v << 8 | new)
        rows[idx, off + 1] = new
        rows[idx, off + 10] = hc >> 8
        rows[idx, off + 11] = hc & 0xFF
        return len(idx)
    bad = (b0 >> 4 == 6) & (((b0 & 0xF) << 2 | b1 >> 6) != dscp)
    if not bad.any():
        return 0
    idx = np.flatnonzero(bad)
    rows[idx, off] = rows[idx, off] & 0xF0 | dscp >> 2
    rows[idx, off + 1] = (dscp & 3) << 6 | rows[idx, off + 1] & 0x3F
    return len(idx)
