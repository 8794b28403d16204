"""When the bytes a TCP read takes arrived: SO_TIMESTAMP on a stream socket (issue 16).

Linux's tcp_recvmsg gives, with SO_TIMESTAMP(NS) on, the receive time of the last segment
(skb) the read copied from (tcp_update_recv_tstamps, tcp_recv_timestamp), and none when that
segment was never stamped (it came before the option was set). A connection that was asked
keeps one mark per batch of in-order data (a pump's `now`: every segment of one batch shares
it, as a UDP socket's datagrams of one ring batch do), as the byte range of the stream it
covers; a read takes the mark of its last byte. Without the option a connection has no
`RxStamps` and pays one `is None` per delivery and per read. The marks are bounded by the
receive queue: each covers at least one queued byte, and a read drops those it passed.
"""

from __future__ import annotations

from collections import deque

__all__ = ["RxStamps"]


class RxStamps:
    """Arrival marks over the stream's bytes: (start, end, now), `start`/`end` counted as
    `TcpStats.bytes_in` counts them; `last` is the mark of the latest read (None: unstamped)."""

    __slots__ = ("_marks", "last")

    def __init__(self) -> None:
        self._marks: deque[tuple[int, int, float]] = deque()
        self.last: float | None = None

    def mark(self, start: int, end: int, now: float) -> None:
        """Bytes [start, end) of the stream arrived at `now` (the clock TCP is given)."""
        m = self._marks
        if m and m[-1][2] == now and m[-1][1] == start:
            m[-1] = (m[-1][0], end, now)  # the same batch: one mark
        else:
            m.append((start, end, now))

    def read(self, end: int, consume: bool) -> None:
        """A read took the stream up to byte `end`: `last` is the mark of its last byte; a
        consuming read (not MSG_PEEK) drops the marks it passed."""
        m = self._marks
        if consume:
            while m and m[0][1] < end:
                m.popleft()
            first = m[0] if m else None
            if first is not None and first[1] == end:
                m.popleft()
        else:
            first = next((x for x in m if x[1] >= end), None)
        self.last = first[2] if first is not None and first[0] < end else None
