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

from usnet.proto.tcp.config import EV_READABLE, EV_WRITABLE
from usnet.proto.tcp.congestion import INFINITE_SSTHRESH
from usnet.proto.tcp.hystart import DONE, SS
from usnet.proto.tcp.rack import NO_SEGS, NO_TSORTED
from usnet.proto.tcp.reassembly import EMPTY_REASSEMBLY
from usnet.proto.tcp.seq import HALF, MASK

if TYPE_CHECKING:  # pragma: no cover
    from usnet.proto.tcp.connection import TcpConnection
    from usnet.proto.tcp.rack import Rack
    from usnet.proto.wire.tcp import TcpSegment

__all__ = ["ENABLED", "rx_established"]

#: Tests switch them off to compare against the general path: `rx_established` itself, and its
#: steps written out (`_ack_whole`, the in-order data) against the connection's methods.
ENABLED = True
INLINE_ENABLED = True
_INF = float("inf")


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
    a = una + d
    # The ACK of everything in flight, with nothing unusual about the sender (see `_ack_whole`)
    rack = c.rack
    tsecr = seg.tsecr
    sb = c.sb
    whole = (d and una and a == nxt and rack is not None and ts_ok and tsecr and INLINE_ENABLED
             and not c._recovery and not sb.sacked and not sb.starts and c.tx_stamps is None
             and rack.tlp_end is None and not rack._in_rec)
    # Taken: from here on, what `_rx` does for this segment, in its order.
    if ts_ok and rcv_nxt == last_ack and tsval is not None:  # (not None: tested above)
        c.ts_recent = tsval  # RFC 7323 §4.3: the segment at the last ACK sent
    prev_rx = c._last_rx
    c._last_rx = now
    c._ka_probes = 0
    c._probes = 0
    w = seg.window << c.snd_wscale
    if whole:
        _ack_whole(c, rack, una, a, tsecr, now)  # type: ignore[arg-type]  # `whole`: not None
    elif d or nxt > una:  # (nothing acknowledged and nothing in flight: `_on_ack` does nothing)
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
    if not plen:
        return True
    quick = c._quick
    if not INLINE_ENABLED or quick.last_in is None or c.rx_stamps is not None:
        c._deliver(payload, plen, now)  # the connection's first data, receive stamps: in full
        if ts_ok and tsecr:
            c._rcv_rtt_sample(tsecr, plen, now, prev_rx)
        return True
    # `_deliver` in line: the data joins nothing (no reassembly queue: tested above); the
    # quick-ACK mode's `data_in` after the first data; the delayed ACK decision; autotuning's
    # byte count (its round, when due, in `_autotune_rcv`)
    rcv_nxt += plen
    c._rcvq.append(payload)
    c.stats.bytes_in += plen
    c.rcv_nxt = rcv_nxt
    c.events |= EV_READABLE
    rcv_mss = c._rcv_mss
    quick.last_in = now
    cfg = c.cfg
    if not c._ack_now:
        if plen > rcv_mss:
            ml = c.mss_local
            c._rcv_mss = rcv_mss = plen if plen < ml else ml
        unacked = c._rcv_unacked = c._rcv_unacked + plen
        if ((quick.left > 0 and not quick.pingpong) or unacked >= cfg.delack_segments * rcv_mss
                or not cfg.delack):
            c._ack_now = True
        elif c._t_delack == _INF:
            c._t_delack = now + cfg.delack
    if cfg.autotune:
        rtt = c._rcv_rtt or c.rto.srtt or 0.1
        if now - c._rs_time >= rtt:
            c._autotune_rcv(plen, now)
        else:
            c._rs_bytes += plen
    # `_rcv_rtt_sample` in line: the receiver's RTT estimate; a pure receiver's RTO sample is a call
    if ts_ok and tsecr:
        r = ((((int(now * 1000) + c._ts_off) & MASK) - tsecr + HALF) & MASK) - HALF  # `_ts_age`
        if r >= 0:
            if not r:
                r = 1
            rr = c._rcv_rtt
            c._rcv_rtt = r / 1000.0 if rr is None else rr + (r / 1000.0 - rr) / 8
            if c.snd_nxt <= c.snd_una and plen >= c._rcv_mss:
                c._rx_rtt_sample(tsecr, r / 1000.0, now - prev_rx)
    return True


def _ack_whole(c: TcpConnection, rack: Rack, una: int, a: int, tsecr: int, now: float) -> None:
    """`TcpConnection._on_ack` for an ACK of everything in flight (``a`` is SND.NXT, above
    ``una``), written out in one frame.

    Why: a request/response server's every request carries the ACK of the whole last answer,
    and the general way through it is some twenty calls (`_on_ack`, `_ack_new`, RACK's
    `begin_ack`, `cum_ack`, `_delivered`, `end_ack` and `detect`, the rate sampler's `reset`,
    `on_delivered` and `finish`, `_rate_end`, `_pipe`, the RTO's `sample`, `hystart_ack` and
    HyStart++'s `on_ack`, the congestion control's `on_ack`), each a few stores (issue 16).

    The caller (`rx_established`) has checked: RACK is on (SACK agreed), timestamps are on and
    the ACK echoes one, no loss recovery (neither the connection's nor RACK's `_in_rec`), no
    tail-loss probe outstanding, nothing SACKed, no transmit stamps, and the segment has no
    SACK blocks. Then every RACK record is delivered, none is lost afterwards, no recovery
    begins or ends and nothing is undone, and what is left of each step is what follows, in
    the general path's order. What stays a call: the byte queue's `drop`, an RTO estimator's
    first sample, HyStart++ outside its usual step (a round that does not end, or CSS), the
    congestion control's growth when the window is used (`on_ack`) and a rate-driven
    algorithm's sample (BBR). tests/proto/test_tcp_fastpath.py compares it with `_on_ack`.
    """
    rate = c.rate
    rs = rate.rs
    stats = c.stats
    acked = a - una  # the flight, all of it (and `una` is past the SYN: ESTABLISHED)
    # rs.reset(_pipe()) and rack.begin_ack: the sample's start (stored below, at its end)
    lost_bytes = rack.lost_bytes
    pipe0 = acked - lost_bytes
    if pipe0 < 0:
        pipe0 = 0
    rack._una0 = una
    rack._sacked0 = 0
    fack0 = rack._fack0 = rack.fack
    rack._dsack = False
    rack._echo = tsecr
    # _ack_new: the send buffer
    base = c._snd_base
    buf = c._sndbuf
    dend = base + buf.size
    upto = a if a < dend else dend
    if upto > base:
        n = upto - base
        buf.drop(n)
        c._snd_base = upto
        stats.bytes_acked += n
        c.events |= EV_WRITABLE
    c.snd_una = a
    # rack.cum_ack: every record is delivered (each ends at or below SND.NXT); `_delivered` and
    # the rate sampler's `on_delivered` for each. The records and their transmit-order dict go
    # with the shared empties after, so what `cum_ack` clears in them (the dict's entries, a
    # record's lost mark, its rate stamp) is not cleared here: nothing can see them again.
    sample: float | None = None
    prior_time = -1.0
    prior_dlv = 0
    app = False
    send_iv = 0.0
    segs = rack.segs
    if segs:
        min_rtt = rack.min_rtt
        fack = rack.fack
        xmit_ts = rack.xmit_ts
        end_seq = rack.end_seq
        rtt_r = rack.rtt
        for rec in segs:
            if rec.sacked:
                continue
            if rec.lost:
                lost_bytes -= rec.lost_n
            if rec.dlv_t >= 0 and (prior_time < 0 or rec.dlv > prior_dlv):
                prior_dlv = rec.dlv
                prior_time = rec.dlv_t
                app = rec.app
                send_iv = rec.xmit - rec.ftx
                rate.first_sent = rec.xmit
            xmit = rec.xmit
            rtt = now - xmit
            end = rec.end
            if rec.rtx:
                if rtt < min_rtt:
                    continue
            else:
                if end < fack0:
                    rack.reordering_seen = True
                if sample is None or rtt < sample:
                    sample = rtt
            if rtt < min_rtt:
                min_rtt = rtt
            if end > fack:
                fack = end
            if xmit > xmit_ts or (xmit == xmit_ts and end > end_seq):
                rtt_r = rtt
                xmit_ts = xmit
                end_seq = end
        rack.min_rtt = min_rtt
        rack.fack = fack
        rack.xmit_ts = xmit_ts
        rack.end_seq = end_seq
        rack.rtt = rtt_r
        rack.lost_bytes = lost_bytes
        rack.segs = rack.starts = rack.lost_q = NO_SEGS
        rack.tsorted = NO_TSORTED
    rack.sample = sample
    # _ack_new: the RTT sample (timestamps: every ACK of new data is one), RFC 6298 in line
    rto = c.rto
    ack_rtt: float | None = None
    r_ms = ((((int(now * 1000) + c._ts_off) & MASK) - tsecr + HALF) & MASK) - HALF  # `_ts_age`
    if r_ms >= 0:
        ack_rtt = rtt = r_ms / 1000.0
        srtt = rto.srtt
        if srtt is None:
            rto.sample(rtt)
        else:
            dv = srtt - rtt
            rttvar = rto.rttvar = 0.75 * rto.rttvar + 0.25 * (dv if dv >= 0 else -dv)
            srtt = rto.srtt = 0.875 * srtt + 0.125 * rtt
            v = 4 * rttvar
            g = rto.granularity
            rv = srtt + (v if v > g else g)
            if rv < rto.min_rto:
                rv = rto.min_rto
            mx = rto.max_rto
            rto.base_rto = rto.rto = rv if rv < mx else mx
            rto.backoffs = 0
    # cc.hystart_ack: HyStart++'s usual step in line (a round ends with each ACK of a whole
    # flight, and its first sample cannot reach N_RTT_SAMPLE), the rest in `HyStart.on_ack`
    cc = c.cc
    hs = cc.hystart
    if hs is not None:
        if cc.ssthresh < INFINITE_SSTHRESH:
            hs.phase = DONE  # `hs.stop()`
        else:
            we = hs.window_end
            if hs.phase == SS and ack_rtt is not None and (we is None or a >= we):
                hs.window_end = a  # SND.NXT
                hs.last_round_min = hs.cur_round_min
                hs.cur_round_min = ack_rtt
                hs.samples = 1
                hs.rounds += 1
            elif hs.on_ack(a, a, ack_rtt):
                cc.ssthresh = cc.cwnd
    c._retries = 0
    # no recovery (`_OPEN`): the window grows, if the flight used it (the base class's first
    # test in `on_ack`, which no algorithm overrides with effect: BBR's does nothing)
    if 2 * acked >= cc.cwnd:
        cc.on_ack(acked, rto.srtt, now, acked)
    c._dupacks = 0
    c._t_rtx = _INF  # nothing in flight
    if c.cfg.autotune:
        want = 2 * cc.cwnd
        if want > c.sndbuf_cap:
            cap = c.cfg.sndbuf_max
            c.sndbuf_cap = want if want < cap else cap
    # rack.end_ack: new data delivered (the PTO is armed again); no D-SACK, no SACK-only sample,
    # no undo (no recovery), no probe outstanding; `detect` finds nothing outstanding
    rack.rearm = True
    if rack.xmit_ts != -_INF and not rack.tsorted:
        rack.t_reo = _INF
    # _rate_end and rate.finish: the sample
    rs_rtt = sample if sample is not None else -1.0
    if 0 <= rs_rtt < rate.min_rtt:
        rate.min_rtt = rs_rtt
    al = rate.app_limited
    delivered = rate.delivered + acked
    if al and delivered > al:
        rate.app_limited = 0
    rate.delivered = delivered
    rate.delivered_time = now
    rs.is_app_limited = app
    rs.prior_delivered = prior_dlv
    rs.prior_time = prior_time
    rs.acked_sacked = acked
    rs.losses = 0  # nothing is marked lost: nothing is left outstanding
    rs.rtt = rs_rtt
    rs.prior_in_flight = pipe0
    rs.total_delivered = delivered
    rs._send_iv = send_iv
    rs.delivered = -1
    rs.interval = -1.0
    if prior_time >= 0:
        rs.delivered = dn = delivered - prior_dlv
        ack_iv = now - prior_time
        iv = send_iv if send_iv > ack_iv else ack_iv
        if iv >= rate.min_rtt and iv > 0:
            rs.interval = iv
            dr = dn / iv
            if not app or dr >= rate.last_rate:
                rate.last_rate = dr
                rate.last_app_limited = app
    if cc.rate_driven:
        cc.on_rate_sample(rate, now, c._pipe(), c._recovery, rto.srtt)
