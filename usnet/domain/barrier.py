"""Fault barriers: where an exception caused by one client ends (docs/architecture.md, trust boundary).

The domain serves every channel, session and netif behind a barrier: an
exception raised while serving one is caught at that object's boundary,
counted, logged, and turned into that owner's loss alone (its channel
defunct with ABUSE, its session ended with PROTOCOL), never propagated to the
loop. This module holds the one way such a fault is logged: with its
traceback at most once a second, so a client that faults in a tight loop
cannot flood the log.
"""

from __future__ import annotations

import logging
import time

__all__ = ["log_fault"]

log = logging.getLogger("usnet.domain")
_last_traceback = [0.0]


def log_fault(where: str, exc: BaseException) -> None:
    """Log one contained fault: a traceback at most once a second, else one DEBUG line."""
    now = time.monotonic()
    if now - _last_traceback[0] >= 1.0:
        _last_traceback[0] = now
        log.error("fault in %s, contained: %s: %s", where, type(exc).__name__, exc, exc_info=exc)
    else:
        log.debug("fault in %s, contained: %s: %s", where, type(exc).__name__, exc)
