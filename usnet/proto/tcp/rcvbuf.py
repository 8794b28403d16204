"""Receive-buffer auto-tuning: how large a window the next round trip needs (Linux's DRS).

Dynamic right-sizing (tcp_input.c, ``tcp_rcv_space_adjust``): once a receiver round trip, the
buffer is set from the bytes that arrived in order during it, ``copied``:

* twice that, so that a loss (whose hole holds back a window of data behind it) does not
  close the window, plus 16 segments of cushion;
* and, when ``copied`` grew since the last round, that growth again, doubled: the sender in
  slow start doubles each round, and the window we advertise now is the one it will use in
  the round after the next.

It only grows (up to the configured maximum). The bytes counted are all that became in-order,
including what a segment released from the out-of-order queue: on a lossy path most data
arrives behind a hole, and counting only the segments that arrived in order (issue 17) left the
window at its initial size while the sender waited for it (``rwnd_limited`` in ``ss``).
"""

from __future__ import annotations

__all__ = ["drs_window"]


def drs_window(copied: int, last: int, mss: int) -> int:
    """The window the next round trip needs after ``copied`` bytes in this one, ``last`` the
    most in one before (0: none), ``mss`` our segment size."""
    win = 2 * copied + 16 * mss
    if last > 0 and copied > last:
        win += 2 * win * (copied - last) // last
    return win
