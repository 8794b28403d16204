"""A fault barrier per connection: an exception in one connection's work aborts it alone (sans-I/O).

Many connections share one endpoint (a listener's accepted ones, a connector's outgoing ones),
and one engine pumps them all in one batch. An exception raised while one connection's
segment is processed or built, or its timers run (a bug, a parser edge case, a segment the
IP layer refuses), used to escape the batch and fail the whole engine: every connection on it
went silent. `TcpEndpoint` (usnet.proto.tcp.endpoint) catches it around that connection's work
and calls `abort_faulted`, which ends that connection as Linux aborts one (tcp_abort,
SOCK_DESTROY's path): its error ECONNABORTED with the reason, its send buffer dropped, CLOSED,
and a RST for the peer when the peer knows of it (the states Linux's tcp_need_reset names).
The endpoint then forgets it (its 4-tuple and port go free) and tells its owner
(`TcpEndpoint.on_fault`), which logs the reason once.

Nothing here trusts the faulted connection's methods: the state that raised may be
inconsistent, so the RST is built from its addresses and sequence numbers alone, and each
step that could raise again is guarded (a connection too broken even for that is closed
without a RST; the peer's next segment then gets the endpoint's own RST).
"""

from __future__ import annotations

import errno

from usnet.proto.tcp.config import EV_CLOSED, EV_ERROR, EV_READABLE, EV_WRITABLE, TcpState
from usnet.proto.tcp.seq import MASK
from usnet.proto.wire.tcp import RST, pack_segment, pseudo_sum

__all__ = ["abort_faulted", "fault_error"]

# the states in which the peer knows of the connection (Linux's tcp_need_reset)
_NEED_RESET = frozenset((TcpState.SYN_RECEIVED, TcpState.ESTABLISHED, TcpState.FIN_WAIT_1,
                         TcpState.FIN_WAIT_2, TcpState.CLOSE_WAIT))


def fault_error(exc: BaseException) -> ConnectionAbortedError:
    """The error a faulted connection's socket calls raise: ECONNABORTED, with the reason."""
    return ConnectionAbortedError(
        errno.ECONNABORTED,
        f"Software caused connection abort (usnet aborted this connection alone after an internal "
        f"fault in its processing: {type(exc).__name__}: {exc})")


def abort_faulted(conn, exc: BaseException, local_addr: bytes) -> bytes | None:
    """Fail `conn` after `exc` escaped its work; returns the RST for its peer, or None.

    Idempotent: a connection already failed by a fault keeps its first error (and gets no
    second RST)."""
    err = conn.error
    if isinstance(err, ConnectionAbortedError) and err.errno == errno.ECONNABORTED and conn.state is TcpState.CLOSED:
        return None
    rst = None
    try:
        if conn.state in _NEED_RESET:
            rst = pack_segment(pseudo_sum(local_addr, conn.remote_addr), conn.local_port, conn.remote_port,
                               (conn.iss + conn.snd_nxt) & MASK, 0, RST, 0)
    except Exception:
        rst = None  # too broken for a RST: the peer's next segment gets the endpoint's own
    error = fault_error(exc)
    try:
        conn._fail(error)  # its send buffer dropped, timers off, CLOSED, EV_ERROR
    except Exception:
        conn.state = TcpState.CLOSED
    conn.error = error
    conn.events |= EV_ERROR | EV_CLOSED | EV_READABLE | EV_WRITABLE
    return rst
