"""The lean output path: one segment of new data on an established connection.

Why: a request/response server sends, per request, one segment that holds
everything the application wrote. The general sender (`TcpConnection._send`)
gets there through loss recovery (RACK's lost queue, the probe, NewReno's
holes), the idle restart, a loop over segments with window, congestion,
pacing, silly-window and Nagle limits, and then `_emit` (FIN, CWR, PSH,
retransmission accounting) and `_segment` (ECE, which options), each a
call with its own attribute reads, for a segment none of which applies to.

`tx_one` recognises that case with a few comparisons and builds the segment
directly: the window field (`TcpConnection._window_field`), the header with
the timestamp option (`usnet.proto.wire.tcp.pack_ts`, as `_segment` packs
it) and the book-keeping of a first transmission (`TcpConnection._sent_new`,
which `_emit` calls too). As the receive side's header prediction
(usnet.proto.tcp.fastpath) it decides *before changing anything*, and
returns False otherwise, so `_send` then runs untouched.

What it declines: a FIN to send (or queued), loss recovery or anything
RACK wants to resend or probe, SACK blocks or a D-SACK to report (options
other than the timestamp), no timestamps, ECE/CWR to set, an idle restart
due, data that does not fit one segment, the peer's window, the congestion
window or the pacer's budget, a Nagle hold, a set TCP_CORK or MSG_MORE, and super-segments
(more than one MSS of data on a connection with segmentation offload: `_send` sizes them).
Data of one MSS or less on such a connection is taken: it is one plain segment either way
(a TAP with offload gives every connection of `usnet bench http` a `max_segment` above its
MSS, and the lean path was never taken there).

tests/proto/test_tcp_fastpath.py plays random traffic with both fast paths
on and off and asserts the same segments and the same state after every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usnet.proto.tcp.reassembly import EMPTY_REASSEMBLY
from usnet.proto.tcp.seq import MASK
from usnet.proto.wire.tcp import ACK, PSH, pack_ts

if TYPE_CHECKING:  # pragma: no cover
    from usnet.proto.tcp.connection import TcpConnection

__all__ = ["ENABLED", "tx_one"]

#: Tests switch it off to compare against the general path.
ENABLED = True

_ACK_PSH = ACK | PSH


def tx_one(c: TcpConnection, now: float, out: list) -> bool:
    """Send all unsent data as one segment if nothing special applies (see the module);
    False: not taken, nothing changed."""
    mss = c.mss
    base = c._snd_base
    buf = c._sndbuf
    dend = base + buf.size
    nxt = c.snd_nxt
    n = dend - nxt
    if n <= 0 or n > mss:
        # nothing to send (first: the pump that takes a request asks once a request), or more
        # than one segment (super-segments: `_send` sizes them)
        return False
    if c._fin_queued or not c.ts_ok or c._recovery or c._ece or c._cwr:
        return False
    cork = c._cork
    if cork is not None and (cork.on or cork.more):
        return False  # TCP_CORK or MSG_MORE: `_send` decides (usnet.proto.tcp.cork)
    rack = c.rack
    if rack is not None and (rack.tlp_now or rack.lost_q or rack.lost_bytes):
        return False
    if c.sb.sacked or (c.sack_ok and ((c._reasm is not EMPTY_REASSEMBLY and c._reasm) or c._dsack)):
        return False  # pipe less than the flight, or a SACK option to send
    una = c.snd_una
    pipe = nxt - una  # `_pipe()` with nothing SACKed, nothing lost and no recovery
    if nxt == una:
        if now - c._last_send > c.rto.rto:
            return False  # the congestion window restarts after idle
    elif n < mss and not c.cfg.nodelay:
        return False  # Nagle (or, with nodelay, nothing to hold it)
    cwnd = c.cc.cwnd
    if n > una + c.snd_wnd - nxt or n > cwnd - pipe or n > c._pace_left:
        return False  # the peer's window, the congestion window or the pacer holds some back
    # Taken: what `_send` and `_emit` do for this segment, in their order.
    c._quick.data_out(now, c.cfg.delack)  # an answer: interactive
    win = c._window_field()
    payload: memoryview | bytes | None = buf.view(nxt - base, n + nxt - base)
    out.append(pack_ts(
        c._psum, c.local_port, c.remote_port, (c.iss + nxt) & MASK, (c.irs + c.rcv_nxt) & MASK,
        _ACK_PSH, win, c._ts_now(now), c.ts_recent, payload, c.cfg.gather))
    payload = None  # release the view before the buffer can be resized
    c.stats.bytes_out += n
    c._sent_new(nxt, dend, now)
    c._pace_left -= n
    pipe += n
    if pipe < cwnd:  # out of data with room in the window: the samples measure the application
        c.rate.check_app_limited(0, mss, pipe, cwnd, 0)
    return True
