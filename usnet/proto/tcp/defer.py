"""TCP_DEFER_ACCEPT: a listener hands over a connection only once its data came (sans-I/O).

A server that sets TCP_DEFER_ACCEPT (nginx's ``deferred``, HAProxy's ``defer-accept``) wants
``accept`` to wake when there is a request to read, not at the handshake. Linux does it in
the request sock, before the connection exists (``tcp_check_req``, ``reqsk_timer_handler``,
``syn_ack_recalc`` in net/ipv4): the listener keeps the option as a count of SYN-ACK
retransmissions ``R`` (``secs_to_retrans``: the seconds rounded up to whole ones; usnet's
socket face converts it, usnet.client.sockopts.kept), and then

* the handshake's bare final ACK (no data, no FIN: ``end_seq == rcv_isn + 1``) is dropped
  while fewer than ``R`` SYN-ACK timeouts have passed, and the request is marked acknowledged
  (TcpExt TCPDeferAcceptDrop); the connection stays half-open, in the SYN queue;
* data (or a FIN) with the ACK makes the connection at once, and it is acceptable;
* while acknowledged, the SYN-ACK is *not* retransmitted on its timeouts (the peer is there)
  until the timeout that ends the period (``num_timeout >= R - 1``): that SYN-ACK draws one
  more ACK from the peer, which, ``R`` timeouts having passed, is taken: the connection is
  accepted without data (Linux does not drop it);
* an acknowledged request expires only when both the SYN-ACK retries (``tcp_synack_retries``)
  and the ``R`` timeouts are spent (silently, as any expired request).

The timeouts run as for any SYN-ACK: 1 s, doubling. usnet's half-open connection is a
TcpConnection in SYN-RECEIVED in its listener's SYN queue: the endpoint drops the ACK
(`defers`) and the connection's SYN-ACK timer asks `synack_timeout` once one was dropped
(``TcpConnection.defer``, 0 otherwise: a connection without the option pays one test, on a
SYN-ACK timeout only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usnet.proto.tcp.seq import MASK

if TYPE_CHECKING:  # pragma: no cover
    from usnet.proto.tcp.connection import TcpConnection
    from usnet.proto.wire.tcp import TcpSegment

__all__ = ["defers", "synack_timeout"]

_SYN, _FIN, _RST = 0x02, 0x01, 0x04


def defers(conn: TcpConnection, seg: TcpSegment, retrans: int) -> bool:
    """Whether the listener drops `seg`, an acceptable ACK of `conn`'s SYN-ACK (half-open,
    passive), under TCP_DEFER_ACCEPT of `retrans` SYN-ACK retransmissions; if so, `conn`
    remembers that its peer acknowledged (Linux's ``inet_rsk(req)->acked``)."""
    if seg.flags & (_SYN | _FIN | _RST) or len(seg.payload) or seg.seq != (conn.irs + 1) & MASK:
        return False  # data, a FIN, or not the handshake's own ACK: tcp_check_req goes on
    if conn._retries >= retrans:  # SYN-ACK timeouts so far (reset once established)
        return False  # the period is over: the bare ACK makes the connection
    conn.defer = retrans
    return True


def synack_timeout(timeouts: int, limit: int, retrans: int) -> tuple[int, bool]:
    """A SYN-ACK timeout of a half-open connection whose bare ACK was dropped, `timeouts` having
    passed before this one (Linux's ``num_timeout``): the retry limit that applies (its expiry
    needs both the SYN-ACK retries and the deferral spent: ``syn_ack_recalc``) and whether
    the SYN-ACK goes again (only at the period's end: the last chance for data or an ACK)."""
    return max(limit, retrans), timeouts >= retrans - 1
