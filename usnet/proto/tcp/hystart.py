"""HyStart++ (RFC 9406): leave slow start when the delay rises, before the queue overflows.

Why: slow start doubles the window each round trip until something is
lost. Behind a deep buffer nothing is lost for a long time: the queue (and
with it the RTT) grows to the buffer's size, and the eventual loss is a
whole window's worth. HyStart++ watches the minimum RTT of each round
(a window of data acknowledged); when a round's minimum exceeds the last
one's by ``clamp(last / 8, 4 ms, 16 ms)``, the path's queue is filling, and
slow start gives way to Conservative Slow Start (CSS): growth at a quarter
of the slow-start rate for up to ``CSS_ROUNDS`` rounds, then congestion
avoidance. If the delay falls back below the baseline during CSS, the rise
was a spurious one (jitter, a burst of cross traffic) and slow start
resumes.

This is pure state: the congestion controller (usnet.proto.tcp.congestion)
owns one, feeds it every ACK of new data while ``cwnd < ssthresh`` in the
initial slow start, and asks it how much of an ACK may grow the window
(`growth`). The constants are the RFC's recommended values; rounds are
counted in sequence space (a round ends when the ACK passes what was
``SND.NXT`` when it began), so they work with any ACK pattern (delayed,
stretched, lost).
"""

from __future__ import annotations

__all__ = [
    "CSS",
    "CSS_GROWTH_DIVISOR",
    "CSS_ROUNDS",
    "DONE",
    "MAX_RTT_THRESH",
    "MIN_RTT_DIVISOR",
    "MIN_RTT_THRESH",
    "N_RTT_SAMPLE",
    "SS",
    "HyStart",
]

MIN_RTT_THRESH = 0.004  # s
MAX_RTT_THRESH = 0.016  # s
MIN_RTT_DIVISOR = 8
N_RTT_SAMPLE = 8
CSS_GROWTH_DIVISOR = 4
CSS_ROUNDS = 5

SS = 0  # standard slow start, watching the delay
CSS = 1  # conservative slow start
DONE = 2  # left for congestion avoidance (or HyStart++ no longer applies)

_INF = float("inf")


class HyStart:
    """One connection's HyStart++ state; `on_ack` per ACK, `growth` for the window increase."""

    __slots__ = (
        "phase", "window_end", "last_round_min", "cur_round_min", "samples", "css_baseline",
        "css_round", "_rem", "css_entries", "css_rounds", "exits", "rounds",
    )

    def __init__(self) -> None:
        self.phase = SS
        self.window_end: int | None = None  # the sequence number whose ACK ends this round
        self.last_round_min = _INF
        self.cur_round_min = _INF
        self.samples = 0  # RTT samples in this round
        self.css_baseline = _INF
        self.css_round = 0  # rounds begun in the current CSS episode
        self._rem = 0  # acked bytes not yet turned into growth in CSS (whole-byte arithmetic)
        # counters, for TcpStats
        self.rounds = 0  # rounds begun while HyStart++ watched
        self.css_entries = 0  # times the delay test sent slow start into CSS
        self.css_rounds = 0  # rounds spent in CSS, all episodes
        self.exits = 0  # 1 once CSS ran its rounds out and congestion avoidance began

    def on_ack(self, ack: int, snd_nxt: int, rtt: float | None) -> bool:
        """An ACK up to ``ack`` arrived with ``snd_nxt`` sent; True: leave slow start now.

        ``rtt`` is this ACK's RTT sample, or None when it gave none (Karn's
        rule, no timestamp). Leaving means the caller sets ``ssthresh`` to
        the current window (RFC 9406 section 4.2: "enter congestion
        avoidance by setting ssthresh to the current cwnd").
        """
        if self.phase == DONE:
            return False
        we = self.window_end
        if we is None or ack >= we:
            # A round ends and the next begins (RFC 9406 section 4.2).
            self.window_end = snd_nxt
            self.last_round_min = self.cur_round_min
            self.cur_round_min = _INF
            self.samples = 0
            self.rounds += 1
            if self.phase == CSS:
                self.css_round += 1
                self.css_rounds += 1
                if self.css_round >= CSS_ROUNDS:
                    self.phase = DONE
                    self.exits += 1
                    return True
        if rtt is None:
            return False
        if rtt < self.cur_round_min:
            self.cur_round_min = rtt
        self.samples += 1
        if self.samples < N_RTT_SAMPLE:
            return False
        if self.phase == SS:
            last = self.last_round_min
            if last == _INF:
                return False
            thresh = last / MIN_RTT_DIVISOR
            if thresh < MIN_RTT_THRESH:
                thresh = MIN_RTT_THRESH
            elif thresh > MAX_RTT_THRESH:
                thresh = MAX_RTT_THRESH
            if self.cur_round_min >= last + thresh:
                self.phase = CSS
                self.css_baseline = self.cur_round_min
                self.css_round = 0
                self._rem = 0
                self.css_entries += 1
        elif self.cur_round_min < self.css_baseline:
            # The rise was spurious: back to slow start (section 4.2).
            self.phase = SS
            self.css_baseline = _INF
            self.css_round = 0
        return False

    def growth(self, acked: int) -> int:
        """How many of ``acked`` bytes grow the window: all in slow start, a quarter in CSS."""
        if self.phase != CSS:
            return acked
        n = acked + self._rem
        self._rem = n % CSS_GROWTH_DIVISOR
        return n // CSS_GROWTH_DIVISOR

    def stop(self) -> None:
        """A loss, a mark or a timeout ended slow start: HyStart++ has no more say (section 4.2)."""
        self.phase = DONE

    def restart(self) -> None:
        """Slow start begins again from the initial window (after idle): new rounds, no history."""
        if self.phase != DONE:
            self.phase = SS
            self.window_end = None
            self.last_round_min = self.cur_round_min = self.css_baseline = _INF
            self.samples = 0
            self.css_round = 0
