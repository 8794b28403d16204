"""Proportional Rate Reduction (RFC 6937) for the window during fast recovery.

Why: halving ``cwnd`` at the start of recovery and then sending only when
"pipe" falls below it either stalls the sender for half a round trip (when
many segments were lost) or bursts (when few were). PRR spreads the
reduction over the recovery round trip instead: for every byte the
receiver reports delivered, ``ssthresh / prior_cwnd`` bytes may go out, and
once pipe has fallen below ``ssthresh`` the slow-start reduction bound
(PRR-SSRB) lets it grow back by at most one MSS more than was delivered.

The result is the send quota of the ACK; the connection turns it into a
window as Linux's tcp_cwnd_reduction does: ``cwnd = pipe + sndcnt``.
"""

from __future__ import annotations

__all__ = ["Prr"]


class Prr:
    """The counters of one recovery episode (RFC 6937 §3)."""

    __slots__ = ("delivered", "out", "recover_fs")

    def __init__(self) -> None:
        self.delivered = 0  # bytes the receiver reported delivered since recovery began
        self.out = 0  # bytes sent (retransmitted or new) since recovery began
        self.recover_fs = 1  # the window when recovery began (Linux's prior_cwnd)

    def start(self, prior_cwnd: int) -> None:
        """Recovery begins: forget the last episode."""
        self.delivered = 0
        self.out = 0
        self.recover_fs = prior_cwnd if prior_cwnd > 0 else 1

    def sndcnt(self, delivered: int, pipe: int, ssthresh: int, mss: int) -> int:
        """How many bytes this ACK lets go out (RFC 6937 §3, with PRR-SSRB)."""
        self.delivered += delivered
        if pipe > ssthresh:
            # proportional part: ceil(delivered * ssthresh / RecoverFS) - out
            n = -(-self.delivered * ssthresh // self.recover_fs) - self.out
        else:
            limit = self.delivered - self.out
            if delivered > limit:
                limit = delivered
            limit += mss
            n = ssthresh - pipe
            if n > limit:
                n = limit
        if n <= 0:
            # the first retransmission of an episode goes at once (as Linux)
            n = mss if self.out == 0 else 0
        return n
