"""BBR congestion control, version 1 (Linux's tcp_bbr.c; draft-cardwell-iccrg-bbr-congestion-control-00).

Why: a loss-based algorithm (CUBIC, NewReno) takes every loss for a full
queue and cuts its window. On a path that loses 1-2 % at random, and with
a round trip as long as a Python stack's, the window then never grows back
far enough to fill the pipe. BBR does not read loss as congestion: it
models the path by two numbers it measures, the bottleneck bandwidth
(the most delivered per second over the last 10 round trips, from
`usnet.proto.tcp.rate`) and the round-trip propagation time (the least RTT
over 10 s), sends at a pacing rate of ``pacing_gain x bw``, and keeps at
most ``cwnd_gain x bw x min_rtt`` in flight.

The state machine, as Linux's:

* STARTUP: pacing and cwnd gain 2/ln 2, doubling the rate each round trip,
  until the bandwidth has not grown by 25 % for three rounds;
* DRAIN: the inverse gain until what is in flight is one BDP again;
* PROBE_BW: an eight-phase cycle of pacing gains, 5/4 (probe for more),
  3/4 (drain what that queued), then six rounds at 1, each phase a min_rtt
  long; cwnd gain 2;
* PROBE_RTT: when min_rtt has not been refreshed for 10 s, four segments
  in flight for 200 ms and a round trip, to let the queue drain and see the
  propagation time again.

In loss recovery the window follows packet conservation for the first
round (what was delivered may be sent again, no more), losses are taken
off the window, and on leaving recovery the window goes back to what it
was. An allowance for ACK aggregation (the most bytes acknowledged beyond
what the bandwidth explains, over 5-10 rounds) is added to the window
once the bandwidth is known: ACKs reach a Python stack in batches, and a
window of exactly 2 BDP would stall between batches.

Not ported: the long-term bandwidth sampling that detects token-bucket
policers (lt_bw), and the "ACK delayed" exemption of the min_rtt filter.

Units are bytes and seconds (Linux counts packets and microseconds).
``pacing_rate`` is what the connection's pacer (usnet.proto.tcp.pacing)
uses instead of its own cwnd/srtt rate.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from usnet.proto.tcp.congestion import CongestionControl

if TYPE_CHECKING:  # pragma: no cover
    from usnet.proto.tcp.rate import Rate

__all__ = ["DRAIN", "PROBE_BW", "PROBE_RTT", "STARTUP", "Bbr", "WindowedMax"]

INF = float("inf")
STARTUP, DRAIN, PROBE_BW, PROBE_RTT = 0, 1, 2, 3
MODE_NAMES = ("STARTUP", "DRAIN", "PROBE_BW", "PROBE_RTT")
# The connection's loss-recovery phases (connection._OPEN/_FAST/_LOSS); Linux's CA states
# Open < Recovery < Loss in the same order.
_OPEN, _FAST, _LOSS = 0, 1, 2

HIGH_GAIN = 2885 / 1000 + 1 / 256  # 2/ln(2), as Linux rounds it up (BBR_UNIT * 2885 / 1000 + 1)
DRAIN_GAIN = 1000 / 2885
CWND_GAIN = 2.0
PACING_GAINS = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
CYCLE_LEN = len(PACING_GAINS)
CYCLE_RAND = 7  # PROBE_BW starts at a random phase other than the draining one
BW_RTTS = CYCLE_LEN + 2  # the bandwidth filter's window, in round trips
MIN_RTT_WIN = 10.0  # seconds the min_rtt estimate stands before PROBE_RTT refreshes it
PROBE_RTT_TIME = 0.2  # seconds at least in PROBE_RTT
MIN_CWND_SEGS = 4
FULL_BW_THRESH = 1.25  # STARTUP continues while the bandwidth grows by 25 % a round ...
FULL_BW_CNT = 3  # ... and ends after three rounds without
PACING_MARGIN = 0.99  # pace 1 % below the estimate so that the bottleneck queue drains
EXTRA_ACKED_GAIN = 1.0
EXTRA_ACKED_WIN_RTTS = 5
EXTRA_ACKED_MAX = 0.1  # seconds worth of bandwidth at most for ACK aggregation
_BURST_TIME = 1 / 1024  # the pacer's burst (usnet.proto.tcp.pacing): Linux's TSO autosizing goal


class WindowedMax:
    """The maximum of a value over a sliding window of "time" (Linux's lib/minmax.c, after
    Kathleen Nichols): three samples, the best, the second best after it and the third best
    after that, so an update is O(1) and the best's expiry promotes the next one.

    The result is a value seen within the last ``win`` units of time, and at least the
    newest value.
    """

    __slots__ = ("t", "v")

    def __init__(self) -> None:
        self.t = [0.0, 0.0, 0.0]
        self.v = [0.0, 0.0, 0.0]

    def get(self) -> float:
        return self.v[0]

    def reset(self, t: float, v: float) -> float:
        self.t[:] = (t, t, t)
        self.v[:] = (v, v, v)
        return v

    def update(self, win: float, t: float, v: float) -> float:
        """A new sample ``v`` at ``t`` (never before the last sample's time); returns the max."""
        tt, vv = self.t, self.v
        if v >= vv[0] or t - tt[2] > win:
            return self.reset(t, v)  # a new best, or nothing in the window any more
        if v >= vv[1]:
            tt[1] = tt[2] = t
            vv[1] = vv[2] = v
        elif v >= vv[2]:
            tt[2] = t
            vv[2] = v
        dt = t - tt[0]
        if dt > win:
            # the best expired: promote the others, the newest sample last
            tt[0], vv[0] = tt[1], vv[1]
            tt[1], vv[1] = tt[2], vv[2]
            tt[2], vv[2] = t, v
            if t - tt[0] > win:
                tt[0], vv[0] = tt[1], vv[1]
                tt[1], vv[1] = tt[2], vv[2]
                tt[2], vv[2] = t, v
        elif tt[1] == tt[0] and dt > win / 4:
            # a quarter of the window passed with one sample for all: take a second best
            tt[1] = tt[2] = t
            vv[1] = vv[2] = v
        elif tt[2] == tt[1] and dt > win / 2:
            tt[2] = t
            vv[2] = v
        return vv[0]


class Bbr(CongestionControl):
    """BBRv1 on a connection's rate samples; ``cwnd`` and ``pacing_rate`` are its outputs."""

    name = "bbr"
    rate_driven = True  # steered by `on_rate_sample`
    prr = False  # the window in recovery is BBR's own (packet conservation), not PRR's
    __slots__ = (
        "mode", "pacing_gain", "cwnd_gain", "bw", "rtt_cnt", "next_rtt_delivered", "round_start",
        "min_rtt", "min_rtt_stamp", "probe_rtt_done", "probe_rtt_round_done", "prior_cwnd",
        "packet_conservation", "prev_state", "full_bw", "full_bw_cnt", "full_bw_reached",
        "cycle_idx", "cycle_stamp", "pacing_rate", "has_seen_rtt", "idle_restart",
        "ack_epoch_stamp", "ack_epoch_acked", "extra_acked", "extra_acked_idx", "extra_acked_rtts",
        "probe_rtt_entries",
    )

    def __init__(self, mss: int, initial_segments: int = 10, hystart: bool = True) -> None:
        super().__init__(mss, initial_segments, False)  # no HyStart: STARTUP ends on bandwidth
        self.mode = STARTUP
        self.pacing_gain = HIGH_GAIN
        self.cwnd_gain = HIGH_GAIN
        self.bw = WindowedMax()  # bytes per second, over round trips
        self.rtt_cnt = 0  # round trips counted (the bandwidth filter's clock)
        self.next_rtt_delivered = 0  # `Rate.delivered` that ends the current round
        self.round_start = False
        self.min_rtt = INF
        self.min_rtt_stamp = -1.0  # when min_rtt was last set; < 0: not yet (the first ACK)
        self.probe_rtt_done = -1.0  # when PROBE_RTT may end; < 0: not yet down to 4 segments
        self.probe_rtt_round_done = False
        self.prior_cwnd = 0
        self.packet_conservation = False
        self.prev_state = _OPEN
        self.full_bw = 0.0
        self.full_bw_cnt = 0
        self.full_bw_reached = False
        self.cycle_idx = 0
        self.cycle_stamp = 0.0
        self.pacing_rate = 0.0  # bytes per second; 0 until an RTT is known (the pacer's own rate)
        self.has_seen_rtt = False
        self.idle_restart = False
        self.ack_epoch_stamp = 0.0
        self.ack_epoch_acked = 0
        self.extra_acked = [0, 0]
        self.extra_acked_idx = 0
        self.extra_acked_rtts = 0
        self.probe_rtt_entries = 0

    # ------------------------------------------------------------------ the CongestionControl hooks

    def on_ack(self, acked: int, rtt: float | None, now: float, flight: int) -> None:
        """The window is set per rate sample (`on_rate_sample`), not per ACK of new data."""

    def _avoid(self, acked: int, rtt: float | None, now: float) -> None:  # pragma: no cover
        pass

    def on_congestion(self, now: float, flight: int) -> None:
        """A loss (or an ECN mark): BBRv1 only remembers the window (bbr_ssthresh)."""
        self._save_cwnd()

    def on_recovery_end(self, now: float) -> None:
        """The restore happens on the next rate sample (`_recover_or_restore`)."""

    def on_rto(self, now: float, flight: int, first: bool) -> None:
        """As tcp_enter_loss with bbr_set_state(TCP_CA_Loss): one segment, a new round, and
        STARTUP's plateau detection starts over."""
        if first:
            self._save_cwnd()
        self.cwnd = self.mss
        self.prev_state = _LOSS
        self.full_bw = 0.0
        self.round_start = True

    def restart_after_idle(self) -> None:
        super().restart_after_idle()
        self.idle_restart = True
        if self.mode == PROBE_BW:
            bw = self.bw.get()
            if bw > 0:
                self.pacing_rate = bw * PACING_MARGIN  # no probing gain on an idle restart

    # ------------------------------------------------------------------ the model

    def on_rate_sample(self, rate: Rate, now: float, inflight: int, state: int, srtt: float | None) -> None:
        """One ACK's processing is done (bbr_main): update the model, the pacing rate, the window.

        ``inflight``: bytes in flight after the ACK ("pipe"); ``state``: the connection's
        recovery phase (0 open, 1 fast recovery, 2 after a timeout).
        """
        rs = rate.rs
        if self.min_rtt_stamp < 0:
            self.min_rtt_stamp = now
        self._update_bw(rs)
        self._update_ack_aggregation(rs, now)
        if self.mode == PROBE_BW and self._next_cycle_phase(rs, now):
            self._advance_cycle_phase(now)
        self._check_full_bw_reached(rs)
        self._check_drain(now, inflight)
        self._update_min_rtt(rate, now, inflight)
        self._update_gains()
        bw = self.bw.get()
        self._set_pacing_rate(bw, self.pacing_gain, srtt)
        self._set_cwnd(rs.acked_sacked, rs.losses, rs.total_delivered, bw, inflight, state)

    def _update_bw(self, rs) -> None:
        self.round_start = False
        if rs.delivered < 0 or rs.interval <= 0:
            return  # not a valid observation
        if rs.prior_delivered >= self.next_rtt_delivered:
            # the segment sampled left after the round began: a round trip has passed
            self.next_rtt_delivered = rs.total_delivered
            self.rtt_cnt += 1
            self.round_start = True
            self.packet_conservation = False
        bw = rs.delivered / rs.interval
        # an app-limited sample says only "at least this much"; it counts if it raises the max
        if not rs.is_app_limited or bw >= self.bw.get():
            self.bw.update(BW_RTTS, self.rtt_cnt, bw)

    def _update_ack_aggregation(self, rs, now: float) -> None:
        """How many bytes the ACKs delivered beyond what the bandwidth explains (Linux's
        bbr_update_ack_aggregation): the window's allowance for ACKs that come in batches."""
        acked = rs.acked_sacked
        if acked <= 0 or rs.delivered < 0 or rs.interval <= 0:
            return
        if self.round_start:
            self.extra_acked_rtts += 1
            if self.extra_acked_rtts >= EXTRA_ACKED_WIN_RTTS:
                self.extra_acked_rtts = 0
                self.extra_acked_idx ^= 1
                self.extra_acked[self.extra_acked_idx] = 0
        expected = self.bw.get() * (now - self.ack_epoch_stamp)
        if self.ack_epoch_acked <= expected or self.ack_epoch_acked + acked >= (1 << 20) * self.mss:
            self.ack_epoch_acked = 0
            self.ack_epoch_stamp = now
            expected = 0.0
        self.ack_epoch_acked += acked
        extra = int(self.ack_epoch_acked - expected)
        if extra > self.cwnd:
            extra = self.cwnd
        if extra > self.extra_acked[self.extra_acked_idx]:
            self.extra_acked[self.extra_acked_idx] = extra

    def _ack_aggregation_cwnd(self, bw: float) -> int:
        if not self.full_bw_reached:
            return 0
        a = EXTRA_ACKED_GAIN * max(self.extra_acked)
        cap = bw * EXTRA_ACKED_MAX
        return int(a if a < cap else cap)

    def _next_cycle_phase(self, rs, now: float) -> bool:
        full_length = now - self.cycle_stamp > self.min_rtt
        gain = self.pacing_gain
        if gain == 1.0:
            return full_length
        inflight = rs.prior_in_flight
        bw = self.bw.get()
        if gain > 1.0:
            # probing: until the extra is in flight, or a loss says the pipe is full
            return full_length and (rs.losses > 0 or inflight >= self._inflight(bw, gain))
        # draining: as soon as the queue the probe built is gone
        return full_length or inflight <= self._inflight(bw, 1.0)

    def _advance_cycle_phase(self, now: float) -> None:
        self.cycle_idx = (self.cycle_idx + 1) % CYCLE_LEN
        self.cycle_stamp = now

    def _check_full_bw_reached(self, rs) -> None:
        if self.full_bw_reached or not self.round_start or rs.is_app_limited:
            return
        bw = self.bw.get()
        if bw >= self.full_bw * FULL_BW_THRESH:
            self.full_bw = bw
            self.full_bw_cnt = 0
            return
        self.full_bw_cnt += 1
        self.full_bw_reached = self.full_bw_cnt >= FULL_BW_CNT

    def _check_drain(self, now: float, inflight: int) -> None:
        if self.mode == STARTUP and self.full_bw_reached:
            self.mode = DRAIN
            self.ssthresh = self._inflight(self.bw.get(), 1.0)
        if self.mode == DRAIN and inflight <= self._inflight(self.bw.get(), 1.0):
            self._reset_probe_bw(now)

    def _reset_probe_bw(self, now: float) -> None:
        self.mode = PROBE_BW
        self.cycle_idx = CYCLE_LEN - 1 - random.randrange(CYCLE_RAND)
        self._advance_cycle_phase(now)

    def _update_min_rtt(self, rate: Rate, now: float, inflight: int) -> None:
        rs = rate.rs
        expired = now > self.min_rtt_stamp + MIN_RTT_WIN
        if rs.rtt >= 0 and (rs.rtt < self.min_rtt or expired):
            self.min_rtt = rs.rtt
            self.min_rtt_stamp = now
        if expired and not self.idle_restart and self.mode != PROBE_RTT:
            self.mode = PROBE_RTT
            self.probe_rtt_entries += 1
            self._save_cwnd()
            self.probe_rtt_done = -1.0
        if self.mode == PROBE_RTT:
            # what is in flight now is all there will be: the samples are app-limited
            a = rate.delivered + inflight
            rate.app_limited = a if a > 0 else 1
            if self.probe_rtt_done < 0 and inflight <= MIN_CWND_SEGS * self.mss:
                self.probe_rtt_done = now + PROBE_RTT_TIME
                self.probe_rtt_round_done = False
                self.next_rtt_delivered = rate.delivered
            elif self.probe_rtt_done >= 0:
                if self.round_start:
                    self.probe_rtt_round_done = True
                if self.probe_rtt_round_done and now > self.probe_rtt_done:
                    self.min_rtt_stamp = now
                    if self.prior_cwnd > self.cwnd:
                        self.cwnd = self.prior_cwnd
                    if self.full_bw_reached:
                        self._reset_probe_bw(now)
                    else:
                        self.mode = STARTUP
        if rs.delivered > 0:
            self.idle_restart = False

    def _update_gains(self) -> None:
        m = self.mode
        if m == STARTUP:
            self.pacing_gain = self.cwnd_gain = HIGH_GAIN
        elif m == DRAIN:
            self.pacing_gain = DRAIN_GAIN
            self.cwnd_gain = HIGH_GAIN
        elif m == PROBE_BW:
            self.pacing_gain = PACING_GAINS[self.cycle_idx]
            self.cwnd_gain = CWND_GAIN
        else:
            self.pacing_gain = self.cwnd_gain = 1.0

    def _set_pacing_rate(self, bw: float, gain: float, srtt: float | None) -> None:
        if not self.has_seen_rtt and srtt:
            # before a bandwidth sample: the initial window over the handshake's RTT, at STARTUP's gain
            self.has_seen_rtt = True
            self.pacing_rate = HIGH_GAIN * self.cwnd / srtt * PACING_MARGIN
        rate = gain * bw * PACING_MARGIN
        if rate > 0 and (self.full_bw_reached or rate > self.pacing_rate):
            self.pacing_rate = rate

    def _bdp(self, bw: float, gain: float) -> int:
        if self.min_rtt == INF:
            return self.initial_window  # no RTT yet: the initial window, as Linux's TCP_INIT_CWND
        return int(gain * bw * self.min_rtt + 0.999)

    def _quantization_budget(self, cwnd: int) -> int:
        """Room for the bursts the pacer sends at once (three of them, Linux's 3 x TSO goal),
        rounded up to an even number of segments, and two more in the probing phase."""
        mss = self.mss
        goal = int(self.pacing_rate * _BURST_TIME)
        goal = 2 * mss if goal < 2 * mss else 65536 if goal > 65536 else goal
        cwnd += 3 * goal
        segs = -(-cwnd // mss)
        segs += segs & 1
        if self.mode == PROBE_BW and self.cycle_idx == 0:
            segs += 2
        return segs * mss

    def _inflight(self, bw: float, gain: float) -> int:
        return self._quantization_budget(self._bdp(bw, gain))

    def _save_cwnd(self) -> None:
        # outside recovery the window now; inside, the largest of the episode (bbr_save_cwnd)
        if (self.prev_state < _FAST and self.mode != PROBE_RTT) or self.cwnd > self.prior_cwnd:
            self.prior_cwnd = self.cwnd

    def _set_cwnd(self, acked: int, losses: int, delivered: int, bw: float, inflight: int, state: int) -> None:
        mss = self.mss
        cwnd = self.cwnd
        if acked > 0:
            # recovery: losses come off the window; the first round conserves packets
            if losses > 0:
                cwnd = cwnd - losses if cwnd - losses > mss else mss
            prev = self.prev_state
            if state == _FAST and prev != _FAST:
                self.packet_conservation = True
                self.next_rtt_delivered = delivered  # the round of conservation starts now
                cwnd = inflight + acked
            elif prev >= _FAST and state == _OPEN:
                if self.prior_cwnd > cwnd:
                    cwnd = self.prior_cwnd
                self.packet_conservation = False
            self.prev_state = state
            if self.packet_conservation:
                if cwnd < inflight + acked:
                    cwnd = inflight + acked
            else:
                target = self._bdp(bw, self.cwnd_gain) + self._ack_aggregation_cwnd(bw)
                target = self._quantization_budget(target)
                if self.full_bw_reached:
                    cwnd = cwnd + acked if cwnd + acked < target else target
                elif cwnd < target or delivered < self.initial_window:
                    cwnd += acked  # STARTUP: grow by what was delivered, as slow start
                if cwnd < MIN_CWND_SEGS * mss:
                    cwnd = MIN_CWND_SEGS * mss
        if self.mode == PROBE_RTT and cwnd > MIN_CWND_SEGS * mss:
            cwnd = MIN_CWND_SEGS * mss
        self.cwnd = cwnd
