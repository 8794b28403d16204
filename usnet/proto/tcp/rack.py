"""RACK-TLP loss detection (RFC 8985) for connections that agreed on SACK.

Why time instead of counting: three duplicate ACKs say nothing when the
network reorders (every reordered segment looks like a loss) and nothing
when the last segments of a flight are lost (no later segment makes an
ACK). RACK ("recent acknowledgment") instead remembers when each segment
was sent: once a segment sent *later* than some outstanding one has been
delivered, the outstanding one is lost if it has had a round trip plus a
reordering window to arrive. A tail loss probe (TLP) makes the ACK that
RACK needs when the tail of a flight vanished: two smoothed RTTs after the
last send, one segment (new data, or the last segment again) goes out, and
the ACK for it lets RACK find the hole, or repairs it outright. The
retransmission timer is left for the cases neither can handle.

What is kept, and why so:

* one `Sent` record per segment sent, in sequence order (``segs`` and
  ``starts`` for bisection), never split except for a partial
  retransmission, since a lost record is resent whole (its unSACKed parts);
* the outstanding records in transmit-time order (``tsorted``, Linux's
  tsorted_sent_queue): an OrderedDict, so a retransmission moves a record
  to the end in O(1) and the loss scan stops at the first record sent after
  the most recently delivered one. SACKed and lost records leave it, so the
  scan touches only what might still be in flight;
* the records marked lost and not yet resent in a heap by sequence number,
  with their unSACKed byte count in ``lost_bytes`` for "pipe".

The four containers exist only while something is outstanding: a connection
with nothing in flight (an idle one, every one between a request and the next)
holds the shared empties below (`NO_SEGS`, `NO_TSORTED`), made private by
`sent`, the only place a record is born, and given back when the cumulative
ACK delivers the last record (`cum_ack`). Each container an idle connection
owns is another object every full collection of the cyclic GC walks (issue 18).

The reordering window is min_RTT/4, times a multiplier that a D-SACK (a
retransmission that was not needed) raises once a round trip and that
decays after 16 recoveries without one; zero in recovery or with three
segments SACKed while no reordering has been seen (RFC 8985 §6.2).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from usnet.proto.tcp.prr import Prr
from usnet.proto.tcp.seq import seq_diff

if TYPE_CHECKING:  # pragma: no cover
    from usnet.proto.tcp.connection import TcpConnection
    from usnet.proto.tcp.rate import Rate
    from usnet.proto.tcp.scoreboard import Scoreboard

__all__ = ["NO_SEGS", "NO_TSORTED", "Rack", "Sent", "sent_after"]

INF = float("inf")
_FAST = 1  # the connection's fast-recovery phase (connection._FAST)
_PERSIST = 16  # recoveries a raised reordering window outlives a D-SACK (RFC 8985 §6.2)


class _NoTsorted(OrderedDict):
    """The shared, always empty ``tsorted`` of a Rack with nothing outstanding: reading, ``pop``
    and ``clear`` are what they are on any empty one; a write fails loudly (a record must be
    born in `Rack.sent`, which makes the containers private first)."""

    def __setitem__(self, key, value) -> None:
        raise TypeError("Rack's shared empty tsorted: make the containers private first (Rack.sent)")

    def move_to_end(self, key, last: bool = True) -> None:
        raise KeyError(key)


# Shared by every Rack with nothing outstanding: immutable (a tuple refuses append, insert, del and
# heapq.heappush), so a write that forgot `Rack._own` fails instead of corrupting every connection.
NO_SEGS: Any = ()  # (Any: it stands in for the lists it is typed as)
NO_TSORTED: OrderedDict = _NoTsorted()


def sent_after(t1: float, end1: int, t2: float, end2: int) -> bool:
    """Whether a segment sent at ``t1`` ending at ``end1`` went out after the other (RFC 8985 §6.2)."""
    return t1 > t2 or (t1 == t2 and end1 > end2)


def _sent_order(r: Sent) -> tuple[float, int]:
    """A record's place in transmit-time order (`sent_after`'s order: time, then sequence)."""
    return r.xmit, r.start


def _past_window(conn: TcpConnection, start: int) -> bool:
    """Whether a segment from ``start`` lies past the peer's window, which it shrank since the
    segment was first sent: Linux's __tcp_retransmit_skb does not resend it then, unless it is at
    SND.UNA (with a zero window that resend is the window probe)."""
    una = conn.snd_una
    return start > una and start >= una + conn.snd_wnd


class Sent:
    """One segment sent: ``[start, end)`` (a FIN counts as the last byte)."""

    __slots__ = ("start", "end", "xmit", "first", "rtx", "lost", "sacked", "lost_n",
                 "dlv", "dlv_t", "ftx", "app")

    def __init__(self, start: int, end: int, xmit: float) -> None:
        self.start = start
        self.end = end
        self.xmit = xmit  # when it was last sent
        self.first = xmit  # when it was first sent (TCP_USER_TIMEOUT counts from it)
        self.rtx = False  # sent more than once: an RTT measured from it is ambiguous
        self.lost = False  # marked lost and not yet resent
        self.sacked = False  # wholly SACKed
        self.lost_n = 0  # its unSACKed bytes when marked lost
        # the delivery-rate estimator's state at its last send (usnet.proto.tcp.rate.Rate.sent)
        self.dlv = 0
        self.dlv_t = -1.0
        self.ftx = 0.0
        self.app = False

    def __repr__(self) -> str:
        fl = "".join(c for c, f in (("R", self.rtx), ("L", self.lost), ("S", self.sacked)) if f)
        return f"<Sent {self.start}-{self.end} @{self.xmit:.6f} {fl}>"


class Rack:
    """The sender's RACK-TLP state for one connection (RFC 8985 §5)."""

    __slots__ = (
        "segs", "starts", "tsorted", "lost_q", "lost_bytes", "_n", "xmit_ts", "end_seq", "rtt",
        "fack", "_fack0", "min_rtt", "reordering_seen", "reo_wnd_mult", "reo_wnd_persist",
        "dsack_round", "t_reo", "t_pto", "tlp", "tlp_end", "tlp_rtx", "tlp_now", "rearm",
        "sample", "_una0", "_sacked0", "_echo", "_in_rec", "_dsack",
        "undo_marker", "undo_retrans", "retrans_stamp", "prior_cwnd", "prior_ssthresh",
        "rate", "lost_total", "_prr_state",
    )

    def __init__(self, tlp: bool = True) -> None:
        # shared empties until the first send (`_own`), and again once everything is delivered
        self.segs: list[Sent] = NO_SEGS
        self.starts: list[int] = NO_SEGS
        self.tsorted: OrderedDict[Sent, None] = NO_TSORTED
        self.lost_q: list[tuple[int, int, Sent]] = NO_SEGS
        self.lost_bytes = 0
        self._n = 0  # tie-breaker for lost_q
        self.xmit_ts = -INF  # RACK.xmit_ts: send time of the most recently sent delivered segment
        self.end_seq = 0  # RACK.end_seq
        self.rtt = 0.0  # RACK.rtt: its round trip
        self.fack = 0  # the highest sequence delivered (SACKed or acknowledged)
        self._fack0 = 0
        self.min_rtt = INF
        self.reordering_seen = False
        self.reo_wnd_mult = 1
        self.reo_wnd_persist = 0
        self.dsack_round: int | None = None
        self.t_reo = INF  # reordering timer (RFC 8985 §6.2 step 5)
        self.t_pto = INF  # probe timeout (§7.2)
        self.tlp = tlp
        self.tlp_end: int | None = None  # TLP.end_seq of the probe outstanding
        self.tlp_rtx = False  # TLP.is_retrans
        self.tlp_now = False  # a probe is due at the next `outgoing`
        self.rearm = False  # something was sent or acknowledged: arm the PTO again
        self.sample: float | None = None  # the RTT of the newest first-time segment this ACK delivered
        self._prr_state: Prr | None = None  # made at the first recovery (`prr`): most connections have none
        self._una0 = 0
        self._sacked0 = 0
        self._echo: int | None = None  # the ACK's TSecr
        self._in_rec = False
        self._dsack = False
        # Undo of a recovery that was not needed (Linux's undo_marker and friends; RFC 3522's
        # Eifel detection with timestamps, RFC 3708's with D-SACKs)
        self.undo_marker: int | None = None  # snd_una when the episode began; None: nothing to undo
        self.undo_retrans = 0  # retransmissions of the episode not yet reported duplicate
        self.retrans_stamp: float | None = None  # the episode's first retransmission
        self.prior_cwnd = 0
        self.prior_ssthresh = 0
        self.rate: Rate | None = None  # the delivery-rate estimator, told of sends and deliveries
        self.lost_total = 0  # bytes ever marked lost (an ACK's losses for the rate sample)

    # ------------------------------------------------------------------ sending

    def sent(self, start: int, end: int, now: float, flight_empty: bool = False) -> None:
        """New data ``[start, end)`` went out for the first time (``flight_empty``: nothing before)."""
        rec = Sent(start, end, now)
        if self.segs is NO_SEGS:
            self._own()
        self.segs.append(rec)
        self.starts.append(start)
        self.tsorted[rec] = None
        self.rearm = True
        if self.rate is not None:
            self.rate.sent(rec, now, flight_empty)

    def _own(self) -> None:
        """Containers of its own, for the first record after none was outstanding."""
        self.segs = []
        self.starts = []
        self.tsorted = OrderedDict()
        self.lost_q = []

    def _resent(self, rec: Sent, now: float) -> None:
        if rec.lost:
            rec.lost = False
            self.lost_bytes -= rec.lost_n
        rec.rtx = True
        rec.xmit = now
        if self.rate is not None:
            self.rate.sent(rec, now, False)
        ts = self.tsorted
        ts.pop(rec, None)
        ts[rec] = None
        self.rearm = True

    @property
    def prr(self) -> Prr:
        """PRR's counters (usnet.proto.tcp.prr), made when first needed: in a recovery."""
        p = self._prr_state
        if p is None:
            p = self._prr_state = Prr()
        return p

    def split(self, rec: Sent, at: int, sb: Scoreboard) -> Sent:
        """Cut ``rec`` at ``at``; returns the upper piece (kept in the lost queue if ``rec`` is)."""
        new = Sent(at, rec.end, rec.xmit)
        new.first = rec.first
        new.rtx = rec.rtx
        new.dlv, new.dlv_t, new.ftx, new.app = rec.dlv, rec.dlv_t, rec.ftx, rec.app
        rec.end = at
        i = bisect_left(self.starts, rec.start) + 1
        self.segs.insert(i, new)
        self.starts.insert(i, at)
        if rec.lost:
            self.lost_bytes -= rec.lost_n
            rec.lost_n = (rec.end - rec.start) - sb.sacked_between(rec.start, rec.end)
            new.lost = True
            new.lost_n = (new.end - new.start) - sb.sacked_between(new.start, new.end)
            self.lost_bytes += rec.lost_n + new.lost_n
            self._n += 1
            heapq.heappush(self.lost_q, (at, self._n, new))
        elif rec in self.tsorted:
            # same send time, same place in time order: re-insert the rest behind it
            ts = self.tsorted
            later = []
            found = False
            for r in ts:
                if found:
                    later.append(r)
                elif r is rec:
                    found = True
            ts[new] = None
            for r in later:
                ts.move_to_end(r)
        return new

    def retransmit(self, conn: TcpConnection, now: float, out: list, pipe: int, cwnd: int) -> int:
        """Resend the lost records, lowest first, as the window allows.

        Returns the new pipe, or -1 when the window is full (no new data either).
        """
        sb = conn.sb
        mss = conn.mss
        seg_max = conn.max_segment if conn.max_segment > mss else mss
        q = self.lost_q
        while q:
            rec = q[0][2]
            una = conn.snd_una
            if not rec.lost or rec.end <= una:
                heapq.heappop(q)
                continue
            if _past_window(conn, rec.start):
                return -1  # the peer shrank its window below it (nothing new may go either)
            need = rec.lost_n
            room = cwnd - pipe
            if room < need:
                if room < mss:
                    return -1
                at = (rec.start if rec.start > una else una) + room // mss * mss
                if at < rec.end:
                    self.split(rec, at, sb)
                    need = rec.lost_n
            heapq.heappop(q)
            p = rec.start if rec.start > una else una
            end = rec.end
            while p < end:
                h = sb.next_hole(p, end) if sb.starts else (p, end)
                if h is None:
                    break
                x, y = h
                while x < y:
                    e = x + seg_max
                    if e > y:
                        e = y
                    conn._emit(out, x, e, now, True)
                    x = e
                p = y
            self._resent(rec, now)
            pipe += need if need > 0 else 0
            if self.undo_marker is not None:
                self.undo_retrans += 1
                if self.retrans_stamp is None:
                    self.retrans_stamp = now
        return pipe

    # ------------------------------------------------------------------ ACK processing

    def begin_ack(self, conn: TcpConnection, tsecr: int | None) -> None:
        """Snapshot what one ACK's processing compares against."""
        self._una0 = conn.snd_una
        self._sacked0 = conn.sb.sacked
        self._fack0 = self.fack
        self.sample = None
        self._dsack = False
        self._echo = tsecr if conn.ts_ok else None

    def whole(self, lo: int, hi: int, mss: int) -> tuple[int, int]:
        """The part of the SACK block ``[lo, hi)`` that covers whole segments sent.

        Linux's tcp_match_skb_to_sack: a segment is SACKed only whole, and a super-segment
        (GSO) in whole MSS from its start. A peer that SACKs odd bytes (CVE-2019-11478's
        attack) then cannot cut the scoreboard finer than what was sent, nor have each
        lost segment resent as a train of slivers: the scoreboard holds at most one range
        per segment in flight. An honest receiver reports whole segments, which pass as
        they are. An empty result (``hi <= lo``) means nothing whole was covered.
        """
        starts = self.starts
        k = bisect_right(starts, lo) - 1
        if k >= 0:
            r = self.segs[k]
            if r.start < lo < r.end:  # starts inside a segment: from its next MSS boundary
                c = r.start + -(-(lo - r.start) // mss) * mss
                lo = c if c < r.end else r.end
        k = bisect_left(starts, hi) - 1
        if k >= 0:
            r = self.segs[k]
            if r.start < hi < r.end:  # ends inside a segment: at its last MSS boundary
                hi = r.start + (hi - r.start) // mss * mss
        return lo, hi

    def sack(self, lo: int, hi: int, sb: Scoreboard, now: float) -> None:
        """Record the SACK block ``[lo, hi)`` in ``sb`` and deliver the records it completes."""
        starts = self.starts
        segs = self.segs
        cands = []
        p = lo
        n = len(segs)
        while p < hi:
            h = sb.next_hole(p, hi)
            if h is None:
                break
            x, y = h
            k = bisect_right(starts, x) - 1
            if k < 0:
                k = 0
            while k < n:
                r = segs[k]
                if r.start >= y:
                    break
                if r.end > x and not r.sacked:
                    cands.append(r)
                k += 1
            p = y
        if sb.add(lo, hi) and cands:
            for r in cands:
                if r.sacked or sb.sacked_between(r.start, r.end) < r.end - r.start:
                    continue
                r.sacked = True
                self.tsorted.pop(r, None)
                if r.lost:
                    r.lost = False
                    self.lost_bytes -= r.lost_n
                self._delivered(r, now)

    def dsack(self, lo: int, hi: int) -> None:
        """The ACK reported ``[lo, hi)`` arrived twice (RFC 2883)."""
        self._dsack = True
        m = self.undo_marker
        if m is not None and lo >= m and self.undo_retrans > 0:
            self.undo_retrans -= 1  # one retransmission of the episode was not needed

    def cum_ack(self, una: int, now: float) -> None:
        """The cumulative ACK reached ``una``: deliver and forget the records below it."""
        segs = self.segs
        n = len(segs)
        i = 0
        ts = self.tsorted
        while i < n:
            r = segs[i]
            if r.end > una:
                break
            if not r.sacked:
                ts.pop(r, None)
                if r.lost:
                    r.lost = False
                    self.lost_bytes -= r.lost_n
                self._delivered(r, now)
            i += 1
        if i:
            if i == n:  # everything delivered: the shared empties again (a stale lost_q entry too)
                self.segs = self.starts = self.lost_q = NO_SEGS
                self.tsorted = NO_TSORTED
                return
            del segs[:i]
            del self.starts[:i]
        if segs and segs[0].start < una:
            r = segs[0]
            if r.lost:
                cut = una - r.start
                cut = cut if cut < r.lost_n else r.lost_n
                r.lost_n -= cut
                self.lost_bytes -= cut
            r.start = una
            self.starts[0] = una

    def _delivered(self, r: Sent, now: float) -> None:
        """RACK_update (RFC 8985 §6.2 step 2) and reordering detection (§6.2 step 3)."""
        if self.rate is not None:
            self.rate.on_delivered(r)
        rtt = now - r.xmit
        if r.rtx:
            # Which copy was delivered? Ignore it if it could be the original's (§6.2 step 2).
            # Only by min_RTT, as Linux's tcp_rack_advance: the TSecr of an ACK for data out
            # of order echoes the last in-order segment (RFC 7323 §4.3), older than any copy.
            if rtt < self.min_rtt:
                return
        else:
            if r.end < self._fack0:
                self.reordering_seen = True  # delivered below what was delivered before, never resent
            s = self.sample
            if s is None or rtt < s:
                self.sample = rtt
        if rtt < self.min_rtt:
            self.min_rtt = rtt
        if r.end > self.fack:
            self.fack = r.end
        xmit = r.xmit
        if xmit > self.xmit_ts or (xmit == self.xmit_ts and r.end > self.end_seq):  # sent_after()
            self.rtt = rtt
            self.xmit_ts = r.xmit
            self.end_seq = r.end

    def reo_wnd(self, conn: TcpConnection) -> float:
        """RACK.reo_wnd (RFC 8985 §6.2 step 4)."""
        if not self.reordering_seen and (
                conn._recovery or conn.sb.sacked >= conn.cfg.dupthresh * conn.mss):
            return 0.0
        srtt = conn.rto.srtt or 0.0
        m = self.min_rtt if self.min_rtt != INF else srtt
        w = self.reo_wnd_mult * m / 4
        return w if w < srtt else srtt

    def detect(self, conn: TcpConnection, now: float) -> int:
        """Mark lost what RACK says is (§6.2 step 5); arm the reordering timer; returns how many."""
        if self.xmit_ts == -INF:
            return 0
        if not self.tsorted:
            self.t_reo = INF  # nothing outstanding that could be lost
            return 0
        reo = self.reo_wnd(conn)
        rx, re, rtt = self.xmit_ts, self.end_seq, self.rtt
        timeout = 0.0
        lost = None
        for r in self.tsorted:  # oldest first
            t = r.xmit
            if t >= rx:
                if t > rx:
                    break  # this and the rest went out after the newest delivered segment
                if r.end >= re:
                    continue  # sent in the same instant, and after it in sequence
            remaining = t + rtt + reo - now
            if remaining <= 0:
                if lost is None:
                    lost = [r]
                else:
                    lost.append(r)
            elif remaining > timeout:
                timeout = remaining
        self.t_reo = now + timeout if timeout > 0 else INF
        if lost is None:
            return 0
        sb = conn.sb
        for r in lost:
            self._mark_lost(r, sb)
        conn.stats.rack_losses += len(lost)
        return len(lost)

    def _mark_lost(self, r: Sent, sb: Scoreboard) -> None:
        r.lost = True
        n = (r.end - r.start) - (sb.sacked_between(r.start, r.end) if sb.starts else 0)
        r.lost_n = n
        self.lost_bytes += n
        self.lost_total += n
        self.tsorted.pop(r, None)
        self._n += 1
        heapq.heappush(self.lost_q, (r.start, self._n, r))

    def end_ack(self, conn: TcpConnection, now: float) -> None:
        """After an ACK's SACK blocks and cumulative ACK: RACK, TLP and PRR (RFC 8985 §6.2, §7.4)."""
        a = conn.snd_una
        sb = conn.sb
        delivered = (a - self._una0) + (sb.sacked - self._sacked0)
        if delivered > 0 or self._dsack:
            self.rearm = True
        if self._dsack:
            conn.stats.dsacks += 1
            # a D-SACK in a new round trip widens the reordering window (§6.2 step 4)
            if self.dsack_round is None or a >= self.dsack_round:
                self.dsack_round = conn.snd_nxt
                if self.reo_wnd_mult < 255:
                    self.reo_wnd_mult += 1
                self.reo_wnd_persist = _PERSIST
        if self.sample is not None and a == self._una0:
            conn.rto.sample(self.sample)  # a SACK-only ACK times the newest segment it delivered
        if self.undo_marker is not None and (conn._recovery == _FAST or self._in_rec):
            echo = self._echo
            rs = self.retrans_stamp
            if self._dsack and not self.undo_retrans and rs is not None:
                self.undo(conn)  # every retransmission came back as a duplicate
            elif (not conn._recovery and echo and rs is not None
                  and seq_diff(echo, conn._ts_now(rs)) < 0):
                self.undo(conn)  # the ACK ending recovery echoes a copy sent before it began
        te = self.tlp_end
        if te is not None and a >= te:
            self.tlp_end = None
            if self.tlp_rtx and not self._dsack and delivered > 0 and not conn._recovery:
                # the probe itself repaired a loss (§7.4.2): respond as to one
                conn.cc.on_congestion(now, conn.snd_nxt - a)
                conn.stats.tlp_recoveries += 1
        if self.detect(conn, now) and not conn._recovery:
            self.enter_recovery(conn, now)
        rec = conn._recovery
        if rec == _FAST:
            self._prr(conn, delivered)
        elif self._in_rec and not rec:
            self._in_rec = False
            if self.reo_wnd_persist > 0:
                self.reo_wnd_persist -= 1
                if not self.reo_wnd_persist:
                    self.reo_wnd_mult = 1

    def _prr(self, conn: TcpConnection, delivered: int) -> None:
        cc = conn.cc
        if not cc.prr:
            return  # the algorithm sets its window in recovery itself (BBR)
        pipe = conn._pipe()
        cc.cwnd = pipe + self.prr.sndcnt(delivered, pipe, cc.ssthresh, conn.mss)

    def enter_recovery(self, conn: TcpConnection, now: float) -> None:
        """RACK found a loss while the connection was open: fast recovery, paced by PRR."""
        cc = conn.cc
        prior = cc.cwnd
        self.prior_ssthresh = cc.ssthresh
        conn._recovery = _FAST
        conn._recover = conn.snd_nxt
        cc.on_congestion(now, conn.snd_nxt - conn.snd_una)
        self.prr.start(prior)
        self._in_rec = True
        self.undo_marker = conn.snd_una
        self.undo_retrans = 0
        self.retrans_stamp = None
        self.prior_cwnd = prior
        self.tlp_end = None
        self.t_pto = INF
        conn._rtt_seq = None
        conn.stats.fast_retransmits += 1

    def undo(self, conn: TcpConnection) -> None:
        """The recovery was spurious (reordering, not loss): the window it took back is returned.

        As Linux's tcp_undo_cwnd_reduction: cwnd back to at least what it was,
        ssthresh to what it was, and recovery ends; what is still marked lost
        is resent under the restored window. A spurious recovery is also
        reordering seen, so the reordering window applies from now on.
        """
        cc = conn.cc
        if cc.cwnd < self.prior_cwnd:
            cc.cwnd = self.prior_cwnd
        if cc.ssthresh < self.prior_ssthresh:
            cc.ssthresh = self.prior_ssthresh
        self.undo_marker = None
        self.reordering_seen = True
        if conn._recovery == _FAST:
            conn._recovery = 0
        conn.stats.recovery_undos += 1

    def renege(self) -> None:
        """The receiver dropped data it had SACKed: nothing counts as SACKed any more.

        The records come back into ``tsorted`` at their place in time, not at its end: `detect`
        stops at the first record sent after RACK.xmit_ts, so an old record appended behind a
        newer retransmission would never be checked (RFC 8985 §6.2 step 5 checks every segment
        not yet acknowledged). A renege is rare: rebuilding the order costs what a sort does."""
        back = [r for r in self.segs if r.sacked]
        if not back:
            return
        for r in back:
            r.sacked = False
        ts = self.tsorted
        recs = list(ts)
        recs.extend(back)
        recs.sort(key=_sent_order)
        ts.clear()
        for r in recs:
            ts[r] = None

    # ------------------------------------------------------------------ timers

    def on_timer(self, conn: TcpConnection, now: float) -> None:
        if now >= self.t_reo:
            self.t_reo = INF
            if self.detect(conn, now):
                if not conn._recovery:
                    self.enter_recovery(conn, now)
                if conn._recovery == _FAST:
                    self._prr(conn, 0)
        if now >= self.t_pto:
            self.t_pto = INF
            if not conn._recovery and self.tlp_end is None and conn.snd_nxt > conn.snd_una:
                self.tlp_now = True
                conn.stats.tlp_probes += 1
                conn._t_rtx = now + conn.rto.rto  # the RTO counts from the probe (§7.3)

    def arm_pto(self, conn: TcpConnection, now: float) -> None:
        """(Re)arm the probe timeout after a send or an ACK (RFC 8985 §7.2)."""
        self.rearm = False
        if (not self.tlp or conn._recovery or self.tlp_end is not None
                or conn.snd_nxt <= conn.snd_una or self.lost_bytes):
            self.t_pto = INF
            return
        srtt = conn.rto.srtt
        if srtt is None:
            pto = 1.0
        else:
            pto = 2 * srtt
            # a lone segment may wait for the receiver's delayed ACK (WCDelAckT; Linux: rto_min)
            pto += conn.cfg.rto_min if conn.snd_nxt - conn.snd_una <= conn.mss else 0.002
        t = now + pto
        self.t_pto = t if t < conn._t_rtx else conn._t_rtx

    def probe(self, conn: TcpConnection, now: float, out: list) -> None:
        """Send the loss probe (§7.3): a new segment if one may go, else the last one again."""
        self.tlp_now = False
        mss = conn.mss
        nxt = conn.snd_nxt
        avail = conn._snd_base + conn._sndbuf.size - nxt
        fin_due = conn._fin_queued and not conn._fin_sent
        wroom = conn.snd_una + conn.snd_wnd - nxt
        if (avail > 0 and wroom > 0) or (avail <= 0 and fin_due):
            n = avail if avail < mss else mss
            if n > wroom:
                n = wroom
            if n < 0:
                n = 0
            end = nxt + n
            if fin_due and end == conn._fin_seq:
                end += 1
            conn._emit(out, nxt, end, now, False)
            self.tlp_rtx = False
        else:
            if not self.segs:
                return
            sb = conn.sb
            rec = self.segs[-1]
            if rec.end - rec.start > mss:
                rec = self.split(rec, rec.end - mss, sb)
            if _past_window(conn, rec.start):
                return  # a shrunk window: the retransmission timer is left to deal with it
            p = rec.start
            sent = False
            while p < rec.end:
                h = sb.next_hole(p, rec.end) if sb.starts else (p, rec.end)
                if h is None:
                    break
                conn._emit(out, h[0], h[1], now, True)
                sent = True
                p = h[1]
            if not sent:
                return
            self._resent(rec, now)
            self.tlp_rtx = True
        self.tlp_end = conn.snd_nxt

    def on_rto(self, sb: Scoreboard) -> None:
        """The retransmission timer fired: every unSACKed segment is lost (RFC 8985 §6.3)."""
        for r in self.segs:
            if not r.sacked and not r.lost:
                self._mark_lost(r, sb)
        self.tsorted.clear()
        self.tlp_end = None
        self.tlp_now = False
        self.t_reo = self.t_pto = INF
        self._in_rec = False

    def stop(self) -> None:
        self.t_reo = self.t_pto = INF
        self.tlp_now = False
