"""The ECN field (RFC 3168): the two low bits of the IPv4 TOS octet and of the IPv6 traffic class.

Why a module of its own: the same two bits sit at different places in the
two headers, and three parts of usnet read or write them (TCP's sender and
receiver, and the netif's AQM, which marks instead of dropping).

IPv4 byte 1 is the TOS octet: DSCP in the high six bits, ECN in the low two.
IPv6 bytes 0-1 are version (4 bits), traffic class (8), the start of the
flow label: ECN is bits 4-5 of byte 1.
"""

from __future__ import annotations

NOT_ECT, ECT1, ECT0, CE = 0, 1, 2, 3  # the codepoints; ECT0 is what an ECN-capable sender sets


def ecn(packet, off: int = 0) -> int:
    """The ECN codepoint of the IPv4 or IPv6 packet at `off` (NOT_ECT for anything else)."""
    version = int(packet[off]) >> 4
    if version == 4:
        return int(packet[off + 1]) & 3
    if version == 6:
        return (int(packet[off + 1]) >> 4) & 3
    return NOT_ECT


def mark_ce(buf, off: int = 0) -> bool:
    """Set CE in the ECN-capable IP packet at `off` of a writable buffer (bytearray, numpy row).

    Returns False, leaving it untouched, for a packet that is not
    ECN-capable (NOT_ECT) or not IP: a router must drop those instead. The
    IPv4 header checksum is updated incrementally (RFC 1624, eqn. 3), so a
    packet whose checksum was right stays right.
    """
    version = int(buf[off]) >> 4
    if version == 4:
        tos = int(buf[off + 1])
        if not tos & 3:
            return False
        if tos & 3 != CE:
            old = int(buf[off]) << 8 | tos  # the 16-bit word the checksum sums: version/IHL, TOS
            hc = int(buf[off + 10]) << 8 | int(buf[off + 11])
            s = (~hc & 0xFFFF) + (~old & 0xFFFF) + (old | CE)
            s = (s & 0xFFFF) + (s >> 16)
            s = (s & 0xFFFF) + (s >> 16)
            hc = ~s & 0xFFFF
            buf[off + 1] = tos | CE
            buf[off + 10] = hc >> 8
            buf[off + 11] = hc & 0xFF
        return True
    if version == 6:
        b = int(buf[off + 1])
        if not (b >> 4) & 3:
            return False
        buf[off + 1] = b | CE << 4
        return True
    return False
