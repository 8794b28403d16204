"""Header prediction: the common segment of an established connection, without the general checks.

Why: on an established connection almost every segment is the next one in
sequence, carries only ACK (and maybe PSH), acknowledges nothing we have not
sent, and has a timestamp no older than the last. The general receive path
(`TcpConnection._rx`, RFC 9293 §3.10.7.4) tests for a SYN, a RST, PAWS,
the window's edges, challenge ACKs, FIN and state changes first, each with
sequence-number unwrapping, before it reaches the two things such a segment
needs: its ACK field and its data. Van Jacobson's header prediction, and
Linux's tcp_rcv_established after him, recognise the common case with a few
comparisons and go straight there.

`rx_established` is that recognition. It must leave exactly the state, and
cause exactly the segments, that `_rx` would: it decides *before changing
anything* whether the segment qualifies, and returns False otherwise, so the
general path then sees the segment untouched. What it then does is the same
steps `_rx` takes for such a segment, through the same methods
(`_on_ack`, `_deliver`, `_rcv_rtt_sample`); only the acceptance tests are
its own. tests/proto/test_tcp_fastpath.py drives connections through random
in-order, out-of-order and lossy traffic with the fast path on and off and
compares every segment sent and the state after each step.

The caller (`TcpConnection.on_segment`) has already checked: the state is
ESTABLISHED, the IP header had no CE mark, and the flags are ACK or ACK|PSH
(no SYN, FIN, RST, URG, ECE or CWR).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usnet.proto.tcp.reassembly import EMPTY_REASSEMBLY
from usnet.proto.tcp.seq import HALF, MASK

if TYPE_CHECKING:  # pragma: no cover
    from usnet.proto.tcp.connection import TcpConnection
    from usnet.proto.wire.tcp import TcpSegment

__all__ = ["ENABLED", "rx_established"]

#: Tests switch it off to compare against the general path.
ENABLED = True


def rx_established(c: TcpConnection, seg: TcpSegment, now: float) -> bool:
    """Process ``seg`` if it is the predicted kind (see the module); False: not taken, untouched."""
    if seg.sacks is not None:
        return False  # SACK blocks: the scoreboard, D-SACKs
    rcv_nxt = c.rcv_nxt
    if (seg.seq - c.irs - rcv_nxt) & MASK:
        return False  # not exactly at RCV.NXT: duplicate, out of order or out of window
    payload = seg.payload
    plen = len(payload)
    if plen and ((c._reasm is not EMPTY_REASSEMBLY and c._reasm) or c._rx_fin_at is not None
                 or rcv_nxt + plen > c.rcv_adv):
        # a hole to fill, a FIN waiting behind one, or past the window's edge (the shared empty
        # queue told by identity: a truth test of it is a Python call)
        return False
    last_ack = c._last_ack_sent
    if last_ack > rcv_nxt:
        return False  # cannot happen (RCV.NXT only grows past what we acknowledged); for safety
    ts_ok = c.ts_ok
    tsval = seg.tsval
    if ts_ok and (tsval is None or (tsval - c.ts_recent) & MASK >= HALF):
        return False  # no timestamp, or an older one: PAWS, or a reordered pure ACK
    una = c.snd_una
    nxt = c.snd_nxt
    d = (seg.ack - c.iss - una) & MASK
    if d > nxt - una:
        return False  # acknowledges what we never sent, or is below SND.UNA
    if not d and not plen and nxt > una:
        return False  # a duplicate ACK (or a window update while data is out): the counting
    # Taken: from here on, what `_rx` does for this segment, in its order.
    a = una + d
    if ts_ok and rcv_nxt == last_ack and tsval is not None:  # (not None: tested above)
        c.ts_recent = tsval  # RFC 7323 §4.3: the segment at the last ACK sent
    prev_rx = c._last_rx
    c._last_rx = now
    c._ka_probes = 0
    c._probes = 0
    w = seg.window << c.snd_wscale
    c._on_ack(seg, una, a, w, plen, seg.flags, now)
    # Window update (SND.WL1/WL2): the segment is at RCV.NXT, never older than the last update.
    s = rcv_nxt
    wl1 = c.snd_wl1
    if wl1 < s or (wl1 == s and c.snd_wl2 <= a):
        c.snd_wnd = w
        c.snd_wl1 = s
        c.snd_wl2 = a
        if w > c.max_snd_wnd:
            c.max_snd_wnd = w
    if plen:
        c._deliver(payload, plen, now)
        if ts_ok and seg.tsecr:
            c._rcv_rtt_sample(seg.tsecr, plen, now, prev_rx)
    return True
