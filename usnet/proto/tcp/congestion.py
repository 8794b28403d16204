"""Congestion control: NewReno (RFC 5681, RFC 6582) and CUBIC (RFC 9438); BBR in usnet.proto.tcp.bbr.

Why the split between this module and the connection: *which* segments to
retransmit during recovery (the SACK scoreboard, NewReno's partial ACKs,
"pipe" accounting per RFC 6675) is loss recovery, and it is the same for
every algorithm, so it lives in the connection. What differs between
algorithms is only the window arithmetic, and that is all this interface
holds: how ``cwnd`` grows on an ACK, and what ``ssthresh``/``cwnd`` become
on a fast retransmit, at the end of recovery and on a timeout. Both
windows are in bytes.

Growth happens only while the sender is using its window (``flight`` at
least half of ``cwnd``): an application-limited sender must not build up a
window it has never tested (RFC 7661's concern, in its simplest form).

The initial slow start of either algorithm ends on rising delay as well as
on loss: HyStart++ (RFC 9406, usnet.proto.tcp.hystart) watches each round's
minimum RTT (`hystart_ack`) and slows the growth to a quarter, then leaves
for congestion avoidance, before a deep buffer fills.

A rate-based algorithm (BBR) sets ``rate_driven``: the connection then hands
it every ACK's delivery-rate sample (`on_rate_sample`, from
usnet.proto.tcp.rate) after loss detection, it sets ``cwnd`` and
``pacing_rate`` there itself, and ``prr`` False keeps Proportional Rate
Reduction from overriding its window in recovery. The loss-based ones leave
``pacing_rate`` 0: the pacer derives its rate from cwnd/srtt as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usnet.proto.tcp.hystart import CSS, HyStart

if TYPE_CHECKING:  # pragma: no cover
    from usnet.proto.tcp.rate import Rate

__all__ = ["INFINITE_SSTHRESH", "CongestionControl", "Cubic", "NewReno", "make_congestion", "switch_congestion"]

INFINITE_SSTHRESH = 1 << 31  # ssthresh before any loss or mark: the initial slow start


class CongestionControl:
    """Slow start and the shared state; subclasses define the loss responses and avoidance."""

    name = "base"
    rate_driven = False  # True: `on_rate_sample` gets every ACK's rate sample
    prr = True  # False: the algorithm sets the window in recovery itself (no PRR)
    pacing_rate = 0.0  # bytes per second the pacer must use; 0: its own cwnd/srtt rate
    __slots__ = ("mss", "cwnd", "ssthresh", "initial_window", "hystart")

    def __init__(self, mss: int, initial_segments: int = 10, hystart: bool = True) -> None:
        self.mss = mss
        self.hystart: HyStart | None = HyStart() if hystart else None
        # RFC 6928: min(10*MSS, max(2*MSS, 14600)) for 10 segments.
        iw = min(initial_segments * mss, max(2 * mss, 14600)) if initial_segments >= 10 else (
            initial_segments * mss)
        self.initial_window = iw
        self.cwnd = iw
        self.ssthresh = INFINITE_SSTHRESH

    def set_mss(self, mss: int, initial_segments: int = 10) -> None:
        """Re-derive the initial window when the MSS is learnt (before any data flows)."""
        hs = self.hystart
        self.__init__(mss, initial_segments, False)  # type: ignore[misc]  # False: no HyStart to discard
        self.hystart = hs

    def hystart_ack(self, ack: int, snd_nxt: int, rtt: float | None) -> None:
        """Every ACK of new data, with its RTT sample if it gave one: HyStart++'s rounds.

        Only the initial slow start (``ssthresh`` still unset): a loss or an
        ECN mark sets ``ssthresh`` and ends HyStart++'s say for good, as the
        RFC recommends.
        """
        hs = self.hystart
        if hs is None:
            return
        if self.ssthresh < INFINITE_SSTHRESH:
            hs.stop()
        elif hs.on_ack(ack, snd_nxt, rtt):
            self.ssthresh = self.cwnd  # RFC 9406 section 4.2: on to congestion avoidance

    def on_ack(self, acked: int, rtt: float | None, now: float, flight: int) -> None:
        """New data acked outside fast recovery; ``flight`` is what was out before the ACK."""
        if 2 * flight < self.cwnd:
            return  # application-limited
        cwnd = self.cwnd
        if cwnd < self.ssthresh:
            hs = self.hystart
            if hs is not None and hs.phase == CSS:
                self.cwnd = cwnd + hs.growth(acked)  # conservative slow start: a quarter
                return
            # Slow start, byte counting as Linux does (one MSS per MSS acked).
            room = self.ssthresh - cwnd
            if acked <= room:
                self.cwnd = cwnd + acked
                return
            self.cwnd = self.ssthresh
            acked -= room
        self._avoid(acked, rtt, now)

    def _avoid(self, acked: int, rtt: float | None, now: float) -> None:
        raise NotImplementedError

    def on_rate_sample(self, rate: Rate, now: float, inflight: int, state: int, srtt: float | None) -> None:
        """Every ACK's delivery-rate sample (``rate.rs``), for a ``rate_driven`` algorithm only."""

    def on_congestion(self, now: float, flight: int) -> None:
        """Fast retransmit: set ``ssthresh`` and ``cwnd`` for the recovery period."""
        raise NotImplementedError

    def on_recovery_end(self, now: float) -> None:
        """Full ACK of the recovery point: deflate to ``ssthresh`` (RFC 6582 §3.2 step 3)."""
        self.cwnd = max(self.ssthresh, 2 * self.mss) if self.ssthresh < INFINITE_SSTHRESH else self.cwnd

    def on_rto(self, now: float, flight: int, first: bool) -> None:
        """Retransmission timeout: loss window of one segment (RFC 5681 §3.1).

        ``first`` is False for the second and later timeouts of one episode,
        which must not lower ``ssthresh`` again (the flight is no longer a
        measure of anything).
        """
        raise NotImplementedError

    def restart_after_idle(self) -> None:
        """RFC 5681 §4.1: after an idle period longer than the RTO, start from the initial window."""
        if self.cwnd > self.initial_window:
            self.cwnd = self.initial_window
        if self.hystart is not None:
            self.hystart.restart()


class NewReno(CongestionControl):
    """Additive increase by one MSS per window of acked bytes, halve on loss."""

    name = "newreno"
    __slots__ = ("_acc",)

    def __init__(self, mss: int, initial_segments: int = 10, hystart: bool = True) -> None:
        super().__init__(mss, initial_segments, hystart)
        self._acc = 0

    def _avoid(self, acked: int, rtt: float | None, now: float) -> None:
        # Appropriate byte counting (RFC 3465): +1 MSS once a cwnd's worth is acked.
        acc = self._acc + acked
        cwnd = self.cwnd
        if acc >= cwnd:
            acc -= cwnd
            self.cwnd = cwnd + self.mss
        self._acc = acc

    def on_congestion(self, now: float, flight: int) -> None:
        self.ssthresh = max(flight // 2, 2 * self.mss)  # RFC 5681 eq. (4)
        self.cwnd = self.ssthresh
        self._acc = 0

    def on_rto(self, now: float, flight: int, first: bool) -> None:
        if first:
            self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss
        self._acc = 0


class Cubic(CongestionControl):
    """RFC 9438: window a cubic function of the time since the last reduction.

    Internally in segments (floats), as the RFC states its formulas;
    ``cwnd`` stays an int of bytes with the fraction carried in ``_rem``.
    """

    name = "cubic"
    C = 0.4
    BETA = 0.7
    ALPHA = 3 * (1 - BETA) / (1 + BETA)
    __slots__ = ("w_max", "k", "epoch", "origin", "w_est", "_rem", "fast_convergence")

    def __init__(
        self, mss: int, initial_segments: int = 10, hystart: bool = True, fast_convergence: bool = True,
    ) -> None:
        super().__init__(mss, initial_segments, hystart)
        self.w_max = 0.0
        self.k = 0.0
        self.epoch: float | None = None
        self.origin = 0.0
        self.w_est = 0.0
        self._rem = 0.0
        self.fast_convergence = fast_convergence

    def _reduce(self) -> None:
        cw = self.cwnd / self.mss
        if self.fast_convergence and cw < self.w_max:
            self.w_max = cw * (1 + self.BETA) / 2  # §4.7: release bandwidth to newer flows
        else:
            self.w_max = cw
        self.ssthresh = max(int(self.cwnd * self.BETA), 2 * self.mss)
        self.epoch = None

    def on_congestion(self, now: float, flight: int) -> None:
        self._reduce()
        self.cwnd = self.ssthresh

    def on_rto(self, now: float, flight: int, first: bool) -> None:
        if first:
            self._reduce()
        self.epoch = None
        self.cwnd = self.mss

    def _avoid(self, acked: int, rtt: float | None, now: float) -> None:
        mss = self.mss
        cw = self.cwnd / mss
        if self.epoch is None:
            # §4.2: a new epoch starts at the first ACK in congestion avoidance.
            self.epoch = now
            if cw < self.w_max:
                self.k = ((self.w_max - cw) / self.C) ** (1 / 3)
                self.origin = self.w_max
            else:
                self.k = 0.0
                self.origin = cw
            self.w_est = cw
        t = now - self.epoch + (rtt if rtt else 0.1)
        target = self.C * (t - self.k) ** 3 + self.origin
        if target < cw:
            target = cw
        elif target > 1.5 * cw:
            target = 1.5 * cw
        segs = acked / mss
        # §4.3: the Reno-friendly estimate; alpha becomes 1 once past W_max.
        alpha = self.ALPHA if self.w_est < self.w_max else 1.0
        self.w_est += alpha * segs / cw
        if target < self.w_est:
            new = self.w_est
        else:
            new = cw + (target - cw) / cw * segs
        grow = (new - cw) * mss + self._rem
        if grow > 0:
            whole = int(grow)
            self._rem = grow - whole
            self.cwnd += whole


def make_congestion(
    name: str, mss: int, initial_segments: int = 10, hystart: bool = True,
) -> CongestionControl:
    """``"cubic"``, ``"newreno"`` (``"reno"`` accepted) or ``"bbr"``; ``hystart``: HyStart++ in
    slow start (not BBR's: its STARTUP ends on the bandwidth)."""
    key = name.lower()
    if key == "bbr":
        from usnet.proto.tcp.bbr import Bbr  # it subclasses CongestionControl

        return Bbr(mss, initial_segments)
    if key == "cubic":
        return Cubic(mss, initial_segments, hystart)
    if key in ("newreno", "reno"):
        return NewReno(mss, initial_segments, hystart)
    raise ValueError(f"unknown congestion control {name!r}")


def switch_congestion(old: CongestionControl, name: str, hystart: bool = True) -> CongestionControl:
    """`name` in place of `old` on a live connection (TCP_CONGESTION after connect), keeping the
    windows as Linux's tcp_reinit_congestion_control does: the new algorithm starts from the
    connection's cwnd and ssthresh, not from an initial window."""
    new = make_congestion(name, old.mss, 10, hystart)
    new.initial_window = old.initial_window
    new.cwnd, new.ssthresh = old.cwnd, old.ssthresh
    return new
