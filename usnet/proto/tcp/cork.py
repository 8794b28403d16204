"""TCP_CORK: hold the partial segment at the tail of the send queue, as Linux's tcp(7) says.

Why: an HTTP server writes its header and then its body (or a file through sendfile); with
Nagle off, the header leaves alone in a small segment and the body after it, one segment more
per response for the peer to take and acknowledge. Corked, the stack sends only full-sized
segments; what is left over at the tail waits for more data, until

* the cork is cleared (`TcpConnection.cork = False`): the tail goes as Nagle lets it (Linux's
  ``__tcp_sock_set_cork``: pushed at once with TCP_NODELAY, else held while data is in flight);
* 200 ms (`CORK_MAX`) passed since the partial tail was first held (tcp(7): "a 200 millisecond
  ceiling on the time for which output is corked"; a tail that starts further on, because full
  segments took the held bytes, is a new one): the tail goes then, Nagle or not, as Linux's
  probe timer sends it through ``tcp_write_wakeup``;
* TCP_NODELAY is set while corked: what is queued then is pushed once (Linux's
  ``TCP_NAGLE_PUSH``); later writes are corked again;
* a FIN is due (shutdown or close): the tail goes with it, as Linux's ``tcp_nagle_test``
  lets a FIN through.

MSG_MORE (``TcpConnection.send(data, more=True)``) corks the tail of that one write: it waits
as under TCP_CORK until a write without MSG_MORE (or the ceiling), as Linux's tcp_sendmsg
pushes it with TCP_NAGLE_CORK. (Linux may also send it when an ACK comes in meanwhile; usnet
holds it until the next write: a segment no smaller than Linux's, never later than 200 ms.)

TCP_CORK overrides TCP_NODELAY otherwise (Linux's ``tcp_nagle_check`` tests the cork before
the Nagle-off bit). The decision is `Cork.holds`, asked by `TcpConnection._send` only for the
last segment of the queue when it is shorter than the MSS: full segments are never held.
A connection that never set the option has no `Cork` (None), so the usual send path pays one
test for it.
"""

from __future__ import annotations

__all__ = ["CORK_MAX", "Cork"]

#: The ceiling on how long a partial segment stays corked (tcp(7): 200 ms)
CORK_MAX = 0.2

INF = float("inf")


class Cork:
    """The cork of one connection: whether it is set (``on``), when the partial tail that
    starts at ``at`` was first held (``since``; INF: none is), and whether the tail is to go whatever the cork says
    (``push``: the 200 ms passed, or TCP_NODELAY was set), until the queue has all left."""

    __slots__ = ("on", "more", "since", "at", "push")

    def __init__(self) -> None:
        self.on = False
        self.more = False  # the last write had MSG_MORE
        self.since = INF
        self.at = -1
        self.push = False

    def set(self, on: bool) -> None:
        """TCP_CORK set or cleared; clearing forgets the held tail's age."""
        self.on = on
        if not on:
            self.since = INF
            self.push = False

    def nodelay(self) -> None:
        """TCP_NODELAY set: while corked, push what is queued now (Linux's TCP_NAGLE_PUSH)."""
        if self.on or self.more:
            self.push = True

    def holds(self, now: float, start: int) -> bool:
        """Whether the partial segment at the tail, which starts at `start`, waits now; the
        first hold of a tail starts the ceiling."""
        if not (self.on or self.more) or self.push:
            return False
        if self.since == INF or start != self.at:
            self.since = now
            self.at = start
            return True
        if now >= self.since + CORK_MAX:
            self.push = True  # the ceiling passed (on_timer may not have run yet)
            return False
        return True

    def drained(self) -> None:
        """Everything queued has been sent: the next partial tail is corked afresh."""
        self.since = INF
        self.push = False

    @property
    def deadline(self) -> float:
        """When the held tail must go (INF: nothing is held)."""
        return self.since + CORK_MAX if (self.on or self.more) and not self.push else INF

    def on_timer(self, now: float, nxt: int) -> bool:
        """The ceiling passed: True if the held tail is now to go (the caller sends it). If it
        has gone meanwhile (SND.NXT `nxt` is past its start: full segments took it), the next
        tail is a new one and waits its own 200 ms."""
        if now >= self.deadline and nxt > self.at:
            self.since = INF
            return False
        if now >= self.deadline:
            self.push = True
            self.since = INF
            return True
        return False
