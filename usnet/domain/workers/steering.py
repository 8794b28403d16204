"""Which worker serves a port: the rule the device's steering follows (usnet.drivers.steer), and
that usnetd (choosing a port, a connector's block, where to hand a frame over) and each worker
(what to loop out) must follow the same way. One function, so it is said once."""

from __future__ import annotations

__all__ = ["worker_of"]


def worker_of(port: int, n: int) -> int:
    """The worker that serves local port `port` of `n`: the queue the steering program picks."""
    return port % n
