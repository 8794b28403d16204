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

What it declines: a FIN to send (or queued), a connection asked for transmit stamps, loss recovery or anything
RACK wants to resend or probe, SACK blocks or a D-SACK to report (options
other than the timestamp), no timestamps, ECE/CWR to set, an idle restart
due, data that does not fit one segment, the peer's window, the congestion
window or the pacer's budget, a Nagle hold, a set TCP_CORK or MSG_MORE, and super-segments
(more than one MSS of data on a connection with segmentation offload: `_send` sizes them).
Data of one MSS or less on such a connection is taken: it is one plain segment either way
(a TAP with offload gives every connection of `usnet bench http` a `max_segment` above its
MSS, and the lean path was never taken there).

`send_none` is the other half: a connection with nothing unsent, asked for output (the pump
that receives each request asks before the answer is written), skips the general sender and
the pacer's step when they would only find nothing to send.

tests/proto/test_tcp_fastpath.py plays random traffic with the fast paths
on and off and asserts the same segments and the same state after every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usnet.proto.tcp.reassembly import EMPTY_REASSEMBLY
from usnet.proto.tcp.seq import MASK
from usnet.proto.wire.tcp import ACK, PSH, pack_ts

if TYPE_CHECKING:  # pragma: no cover
    from usnet.proto.tcp.connection import TcpConnection

__all__ = ["ENABLED", "NONE_ENABLED", "send_none", "tx_one"]

#: Tests switch them off to compare against the general path (`tx_one`, `send_none`).
ENABLED = True
NONE_ENABLED = True
_INF = float("inf")

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
    if c._fin_queued or not c.ts_ok or c._recovery or c._ece or c._cwr or c.tx_stamps is not None:
        return False  # (transmit stamps: `_emit` reports them)
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


def send_none(c: TcpConnection, now: float) -> bool:
    """For a connection with no data unsent (the caller tested that): what `_paced_send` (or
    `_send`) would do, if it is only to find nothing to send; False (nothing changed) if it
    might do more.

    Why: a request/response server's connection is asked for output by the pump that
    receives each request, with nothing to send yet (the answer comes in the next pump). The
    general way there is `_paced_send` (the pacer's update, begin and end) and `_send`
    (`tx_one`'s decline, `_pipe`, the loss-recovery and idle tests, the app-limited mark).

    Exact: `_send` finds `avail <= 0` at once and, with no FIN due, no loss recovery (no
    RACK probe, lost queue or lost bytes, no NewReno holes), nothing SACKed (pipe is the
    flight), no TCP_CORK state and no idle restart due, does nothing but the app-limited
    mark, done here the same way. The pacer's step sends nothing and holds nothing (the last
    step held nothing: `_t_pace` INF, the pacer not holding), so `Pacer.end` would leave its
    credit and stamp as they were (usnet.proto.tcp.pacing); only its rate is recomputed, here
    too (TCP_INFO reads it)."""
    if (c._fin_queued and not c._fin_sent) or c._recovery or c._cork is not None:
        return False
    rack = c.rack
    if rack is not None and (rack.tlp_now or rack.lost_q or rack.lost_bytes):
        return False
    nxt = c.snd_nxt
    una = c.snd_una
    if c.sb.sacked or (nxt == una and now - c._last_send > c.rto.rto):
        return False  # pipe below the flight, or the congestion window's idle restart
    cc = c.cc
    pacer = c.pacer
    if pacer is not None:
        if pacer.held or c._t_pace != _INF:
            return False
        if cc.pacing_rate:
            pacer.rate = cc.pacing_rate  # as `_paced_send`
        else:
            pacer.update(cc.cwnd, cc.ssthresh, nxt - una, c.rto.srtt)
    pipe = nxt - una
    cwnd = cc.cwnd
    if pipe < cwnd:  # out of data with room in the window (as `_send`)
        c.rate.check_app_limited(0, c.mss, pipe, cwnd, 0)
    return True
