"""Delivery-rate estimation (draft-cheng-iccrg-delivery-rate-estimation, Linux's tcp_rate.c).

Why a module of its own: the rate at which the receiver gets data is a
property of the connection, not of one congestion control. BBR steers by
it, ``usnet ss``/`tcp_info` report it (Linux's tcpi_delivery_rate), and a
loss-based algorithm could use it for HyStart-like decisions; each would
otherwise measure it its own way. And it is bookkeeping of the send queue,
as RACK's is: what was delivered by the time a segment left, so that when
that segment is delivered, the bytes delivered in between over the time in
between is a rate sample.

The draft's scheme, in bytes and seconds:

* the connection counts ``delivered`` (bytes cumulatively acknowledged or
  SACKed) and stamps ``delivered_time`` at each ACK that delivered some;
* each segment sent records ``delivered``, ``delivered_time`` and
  ``first_sent_time`` (when the flight it belongs to began) as they were at
  its send, and whether the sender was application-limited;
* an ACK's sample comes from the most recently sent segment it delivered:
  ``delivered - seg.delivered`` bytes over the longer of the send interval
  (``seg.sent - seg.first_sent``) and the ACK interval
  (``now - seg.delivered_time``); the longer, because data can neither be
  delivered faster than it was sent nor faster than it was acknowledged
  (ACK compression would otherwise overstate the rate);
* a sample whose interval is shorter than the minimum RTT is discarded, as
  Linux does: it can only be an artefact (a stretched ACK, a burst).

The per-segment state lives on the records the connection already keeps
for every segment sent: RACK's `usnet.proto.tcp.rack.Sent` (four slots), so
no allocation per segment or per ACK beyond those. Without SACK there are
no such records, and one `Marker` stands in: a segment is timed per round
trip, which is coarse but keeps BBR and the reported rate working there too.

Sans-I/O: the connection calls `sent` for each segment it sends (first
transmission or not), `delivered` for each record an ACK delivers, and
`finish` once per ACK; the one `RateSample` it returns is reused.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Marker", "Rate", "RateSample", "Stamped"]

INF = float("inf")


class Stamped(Protocol):
    """What a sent-segment record carries for the estimator (RACK's `Sent` or a `Marker`)."""

    end: int
    xmit: float
    dlv: int
    dlv_t: float
    ftx: float
    app: bool


class Marker:
    """The one timed segment of a connection without SACK (no per-segment records there)."""

    __slots__ = ("end", "xmit", "dlv", "dlv_t", "ftx", "app", "live")

    def __init__(self) -> None:
        self.end = 0
        self.xmit = 0.0
        self.dlv = 0
        self.dlv_t = -1.0  # < 0: no delivery state recorded (not sent or already delivered)
        self.ftx = 0.0
        self.app = False
        self.live = False  # a segment is being timed


class RateSample:
    """One ACK's rate sample (Linux's struct rate_sample), in bytes and seconds."""

    __slots__ = (
        "delivered", "interval", "is_app_limited", "prior_delivered", "prior_time", "acked_sacked",
        "losses", "rtt", "prior_in_flight", "total_delivered", "_send_iv",
    )

    def __init__(self) -> None:
        self.reset(0)

    def reset(self, prior_in_flight: int) -> None:
        self.delivered = -1  # bytes delivered over `interval`; -1: no valid sample this ACK
        self.interval = -1.0  # seconds; < 0: no valid sample
        self.is_app_limited = False
        self.prior_delivered = 0  # `Rate.delivered` when the sampled segment left
        self.prior_time = -1.0  # `Rate.delivered_time` then; < 0: nothing delivered this ACK
        self.acked_sacked = 0  # bytes this ACK newly acknowledged or SACKed
        self.losses = 0  # bytes this ACK newly marked lost
        self.rtt = -1.0  # this ACK's RTT sample, < 0 if none
        self.prior_in_flight = prior_in_flight  # bytes in flight before the ACK
        self.total_delivered = 0  # `Rate.delivered` after the ACK
        self._send_iv = 0.0

    @property
    def rate(self) -> float:
        """Bytes per second, 0 when the sample is not valid."""
        iv = self.interval
        return self.delivered / iv if iv > 0 and self.delivered > 0 else 0.0


class Rate:
    """The connection's delivery counters and the sample of the ACK being processed."""

    __slots__ = ("delivered", "delivered_time", "first_sent", "app_limited", "rs", "last_rate",
                 "last_app_limited", "marker", "min_rtt")

    def __init__(self, now: float = 0.0, sack: bool = True) -> None:
        self.delivered = 0  # bytes delivered so far (Linux's tp->delivered, in bytes)
        self.delivered_time = now  # when `delivered` last grew
        self.first_sent = now  # send time of the segment the last sample came from
        self.app_limited = 0  # nonzero: samples are app-limited until `delivered` passes it
        self.rs = RateSample()
        self.last_rate = 0.0  # the last valid sample's rate (tcpi_delivery_rate)
        self.last_app_limited = False
        self.marker: Marker | None = None if sack else Marker()
        self.min_rtt = INF  # the least RTT seen: samples over a shorter interval are artefacts

    # ------------------------------------------------------------------ sending

    def sent(self, rec: Stamped, now: float, flight_empty: bool) -> None:
        """``rec`` is (re)transmitted at ``now`` (tcp_rate_skb_sent).

        When nothing was in flight, the send and delivery clocks restart here:
        the idle time before must not count as a slow delivery.
        """
        if flight_empty:
            self.first_sent = now
            self.delivered_time = now
        rec.ftx = self.first_sent
        rec.dlv_t = self.delivered_time
        rec.dlv = self.delivered
        rec.app = self.app_limited != 0

    def sent_range(self, end: int, now: float, flight_empty: bool) -> None:
        """Without SACK: time the segment ending at ``end`` unless one is being timed."""
        m = self.marker
        if m is not None and (not m.live or flight_empty):
            m.live = True
            m.end = end
            m.xmit = now
            self.sent(m, now, flight_empty)

    def check_app_limited(self, unsent: int, mss: int, pipe: int, cwnd: int, lost: int) -> None:
        """The sender ran out of data while the window had room: what is in flight now is all
        there will be, so samples until it is delivered measure the application, not the path
        (tcp_rate_check_app_limited)."""
        if unsent < mss and pipe < cwnd and not lost:
            a = self.delivered + pipe
            self.app_limited = a if a > 0 else 1

    # ------------------------------------------------------------------ acknowledgement

    def begin(self, prior_in_flight: int) -> None:
        """An ACK arrives: a fresh sample."""
        self.rs.reset(prior_in_flight)

    def on_delivered(self, rec: Stamped) -> None:
        """``rec`` was delivered by this ACK (tcp_rate_skb_delivered): the most recently sent
        such record gives the sample."""
        if rec.dlv_t < 0:
            return
        rs = self.rs
        if rs.prior_time < 0 or rec.dlv > rs.prior_delivered:
            rs.prior_delivered = rec.dlv
            rs.prior_time = rec.dlv_t
            rs.is_app_limited = rec.app
            rs._send_iv = rec.xmit - rec.ftx
            self.first_sent = rec.xmit
        rec.dlv_t = -1.0  # a SACKed record is not sampled again when the cumulative ACK passes it

    def on_cum_ack(self, una: int) -> None:
        """Without SACK: the cumulative ACK reached ``una``; the timed segment may be delivered."""
        m = self.marker
        if m is not None and m.live and una >= m.end:
            m.live = False
            self.on_delivered(m)

    def finish(self, now: float, acked_sacked: int, losses: int) -> RateSample:
        """The ACK's processing is done (tcp_rate_gen): the sample, valid if ``interval > 0``.

        ``rs.rtt`` is the ACK's RTT sample if the connection set one (before this call).
        """
        rs = self.rs
        rtt = rs.rtt
        if 0 <= rtt < self.min_rtt:
            self.min_rtt = rtt
        if self.app_limited and self.delivered + acked_sacked > self.app_limited:
            self.app_limited = 0  # the app-limited flight has been delivered
        if acked_sacked > 0:
            self.delivered += acked_sacked
            self.delivered_time = now
        rs.acked_sacked = acked_sacked
        rs.losses = losses
        rs.total_delivered = self.delivered
        if rs.prior_time < 0:
            return rs  # nothing newly delivered carried a send record: no sample
        rs.delivered = self.delivered - rs.prior_delivered
        ack_iv = now - rs.prior_time
        iv = rs._send_iv if rs._send_iv > ack_iv else ack_iv
        if iv < self.min_rtt or iv <= 0:
            rs.interval = -1.0  # shorter than a round trip: an artefact, not a rate
            return rs
        rs.interval = iv
        r = rs.delivered / iv
        # as Linux's tcp_rate_gen: an app-limited sample only if it does not lower the estimate
        if not rs.is_app_limited or r >= self.last_rate:
            self.last_rate = r
            self.last_app_limited = rs.is_app_limited
        return rs
