"""The receiver's quick-ACK mode: when a delayed ACK would cost the sender more than an ACK costs us.

RFC 5681 §4.2 lets a receiver delay the ACK of one in-order full segment (up to ``delack``, 40 ms
here as in Linux) and asks for an ACK at least every second one. Linux adds a mode in which
every data segment is acknowledged at once (tcp_input.c: ``tcp_incr_quickack``,
``tcp_enter_quickack_mode``, ``tcp_in_quickack_mode``), for the next so many ACKs, entered

* on the first data of a connection (``tcp_event_data_recv``): the sender is in slow start,
  and a held ACK is a held doubling;
* on a duplicate (a retransmission of data we had: ``tcp_send_dupack``, DelayedACKLost): our
  ACK was lost or late, and the sender is probably in loss recovery with a window of one or
  two segments, where a 40 ms delayed ACK, and the sender's tail-loss probe that it provokes,
  stalls the transfer (issue 17: a kernel sender on a lossy path to usnet spent most of its
  time waiting for usnet's delayed ACKs).

How many: half the window in segments, at least 2, at most ``MAX_QUICKACKS`` (16), as Linux's
``tcp_incr_quickack``; an ACK we send of new data uses one (``tcp_dec_quickack_mode``).

Not in an exchange: when we send data within a delayed-ACK time of data arriving, the
connection is interactive ("ping-pong", ``inet_csk_inc_pingpong_cnt``) and its ACKs ride on
the answers, so the mode waits (a request gets no ACK of its own before its answer). A
duplicate, or a delayed ACK that had to go alone (the answer did not come in time), ends that.

TCP_QUICKACK sets and reads the interactive bit (`set`): a program that has answered what
it will answer (or wants the peer's next segment acknowledged at once) sets 1; Linux reads
``!pingpong`` back, so does usnet.
"""

from __future__ import annotations

__all__ = ["MAX_QUICKACKS", "QuickAck"]

MAX_QUICKACKS = 16  # Linux's TCP_MAX_QUICKACKS


class QuickAck:
    """How many of the next ACKs go out at once (``left``); when in-order data last came
    (``last_in``, None before the first); whether the connection is interactive (``pingpong``)."""

    __slots__ = ("left", "last_in", "pingpong")

    def __init__(self) -> None:
        self.left = 0
        self.last_in: float | None = None
        self.pingpong = False

    def enter(self, window: int, rcv_mss: int, most: int = MAX_QUICKACKS) -> None:
        """Acknowledge at once for a while: half `window` in `rcv_mss` segments, 2..`most`
        (Linux's tcp_incr_quickack: it leaves ping-pong alone)."""
        n = window // (2 * rcv_mss) if rcv_mss > 0 else most
        if n < 2:
            n = 2
        if n > most:
            n = most
        if n > self.left:
            self.left = n

    def duplicate(self, window: int, rcv_mss: int) -> None:
        """A duplicate came (tcp_enter_quickack_mode): quick ACKs, interactive or not."""
        self.pingpong = False
        self.enter(window, rcv_mss)

    def data_in(self, now: float, window: int, rcv_mss: int) -> bool:
        """In-order data arrived: True if it is to be acknowledged now (quick-ACK mode); the
        connection's first data enters the mode."""
        if self.last_in is None:
            self.enter(window, rcv_mss)
        self.last_in = now
        return self.left > 0 and not self.pingpong

    def data_out(self, now: float, ato: float) -> None:
        """We send new data: within `ato` of data arriving, the connection is interactive."""
        last = self.last_in
        if last is not None and now - last < ato:
            self.pingpong = True

    def set(self, flag: bool) -> bool:
        """TCP_QUICKACK (Linux's __tcp_sock_set_quickack): 0 makes the connection interactive,
        its ACKs wait for an answer; 1 ends that, and True says a pending delayed ACK is to go now."""
        self.pingpong = not flag
        return flag

    def ack_sent(self) -> None:
        """An ACK of new data left: one quick ACK fewer."""
        if self.left:
            self.left -= 1
