"""The GIL switch interval of a process that runs usnet's threads.

A thread that makes a system call per frame (the domain writing a TAP
without offload: one `write` per 1,514-byte frame) gives up the GIL at each
call and must win it back. Beside a thread that is busy in Python (the TCP
stack thread working through a window of ACKs, the application), it waits
for that thread to be forced off, which CPython does every switch interval,
5 ms by default: a convoy in which a 1,000-frame burst takes seconds. In
the 50 MB TAP test without offload that stalled the sender long enough for
spurious retransmission timeouts, and their backoff, in about one run in
four (up to 80 s); at 0.5 ms, none in twenty. The interval is per process,
so usnet shortens it only when it starts a thread of its own, and never
lengthens one the application chose.
"""

from __future__ import annotations

import sys

__all__ = ["SWITCH_INTERVAL", "short_switch_interval"]

SWITCH_INTERVAL = 0.0005  # seconds


def short_switch_interval() -> None:
    """Make the interpreter switch threads at least every SWITCH_INTERVAL."""
    if sys.getswitchinterval() > SWITCH_INTERVAL:
        sys.setswitchinterval(SWITCH_INTERVAL)
