"""Transmit stamps of a TCP connection: SO_TIMESTAMPING's TX_SCHED, TX_SOFTWARE and TX_ACK (issue 16).

Linux's tcp_sendmsg asks, with any of those flags set, for stamps of the *last byte* of each
sendmsg (tcp_tx_timestamp): its sequence is the key (shinfo->tskey), the request's flags are the
ones set at the time. The segment that holds that byte reports SCM_TSTAMP_SCHED (1) as it enters
the device's queue and SCM_TSTAMP_SND (0) as the driver takes it, each time it is sent (a
retransmission's clone shares the skb's flags); the cumulative ACK that first covers it reports
SCM_TSTAMP_ACK (2) (tcp_ack_tstamp: SACKs do not count). A split moves the request with the
last byte (tcp_fragment_tstamp), so a sendmsg larger than a segment is stamped once, at its
end. An skb holds one request: a later sendmsg that appends to a tail not yet sent replaces
the earlier one (timestamping.rst: "silently replaces requests for previous timestamps"). With
OPT_ID, ee_data is the key less sk_tskey (snd_una, or with OPT_ID_TCP the write sequence, when
OPT_ID was set: `base`), the byte offset of the last byte; 0 without.

usnet keeps the requests by sequence (TcpConnection's relative numbering: the first data byte
is 1) and the reports made, as `(ee_info, ee_data, ns)`, for the socket's error queue, charged
to the receive memory as sock_queue_err_skb charges them (`room`). A connection that was never
asked has no `TxStamps`: the output and ACK paths pay one `is None` test.
"""

from __future__ import annotations

import time
from collections import deque

from usnet.proto import cmsg as _cm

__all__ = ["ACK", "SCHED", "SND", "TxStamps"]

SND, SCHED, ACK = 0, 1, 2  # include/uapi/linux/errqueue.h: SCM_TSTAMP_*, a report's ee_info
_TX = _cm.SOF_TIMESTAMPING_TX_SOFTWARE | _cm.SOF_TIMESTAMPING_TX_SCHED | _cm.SOF_TIMESTAMPING_TX_ACK
#: What a queued stamp costs the receive memory (an skb of no payload: sk_buff, shared info, the
#: sock_exterr_skb), as usnet.client.dgram charges a datagram's report.
CHARGE = 768


class TxStamps:
    """The requests pending (`keys`: (sequence of the last byte, flags), in order) and the
    reports made (`reports`: (ee_info, ee_data, realtime ns), oldest first)."""

    __slots__ = ("_id_tcp", "base", "charged", "flags", "id", "keys", "reports")

    def __init__(self) -> None:
        self.keys: deque[tuple[int, int]] = deque()
        self.reports: deque[tuple[int, int, int]] = deque()
        self.base = 0  # sk_tskey: what ee_data counts from
        self.id = False  # SOF_TIMESTAMPING_OPT_ID: the socket's flag now, as the report reads it
        self.charged = 0
        self.flags = 0  # the socket's transmit flags: what a write asks for
        self._id_tcp = False

    @staticmethod
    def wanted(flags: int) -> bool:
        """Whether SO_TIMESTAMPING's `flags` ask for transmit stamps on a stream."""
        return bool(flags & _TX)

    def set_flags(self, flags: int) -> None:
        """The socket's SO_TIMESTAMPING flags now: later writes ask for its transmit stamps,
        reports read OPT_ID."""
        self.flags = flags & _TX
        self.id = bool(flags & _cm.SOF_TIMESTAMPING_OPT_ID)
        self._id_tcp = bool(flags & _cm.SOF_TIMESTAMPING_OPT_ID_TCP)

    def rebase(self, write_seq: int, snd_una: int) -> None:
        """OPT_ID newly set: ee_data counts from SND.UNA, with OPT_ID_TCP from the next byte
        written (sock_set_timestamping's sk_tskey)."""
        self.base = write_seq if self._id_tcp else snd_una

    def request(self, last: int, unsent_from: int) -> None:
        """A write queued bytes up to sequence `last` (tcp_tx_timestamp): a request with the
        socket's flags. A pending request whose byte has not left yet (at or past `unsent_from`,
        SND.NXT) shares the tail segment with this one and is replaced by it."""
        flags = self.flags
        if not flags:
            return
        k = self.keys
        if k and k[-1][0] >= unsent_from:
            k.pop()
        k.append((last, flags))

    def sent(self, start: int, end: int, room: int) -> None:
        """Sequences [start, end) left (first time or again): the requests of their last bytes
        report SCHED then SND, as the device's queue and the driver stamp them."""
        for last, flags in self.keys:
            if last >= end:
                break
            if last >= start:
                ns = time.time_ns()
                if flags & _cm.SOF_TIMESTAMPING_TX_SCHED:
                    self._report(SCHED, last, ns, room)
                if flags & _cm.SOF_TIMESTAMPING_TX_SOFTWARE:
                    self._report(SND, last, ns, room)

    def acked(self, una: int, room: int) -> None:
        """The cumulative ACK reached `una`: each request before it is done, reporting ACK if asked."""
        k = self.keys
        while k and k[0][0] < una:
            last, flags = k.popleft()
            if flags & _cm.SOF_TIMESTAMPING_TX_ACK:
                self._report(ACK, last, time.time_ns(), room)

    def _report(self, info: int, last: int, ns: int, room: int) -> None:
        """Queue one report unless the receive memory is full (sock_queue_err_skb's ENOMEM: dropped)."""
        if room - self.charged <= CHARGE:
            return
        self.reports.append((info, (last - self.base) & 0xFFFFFFFF if self.id else 0, ns))
        self.charged += CHARGE

    def pop(self) -> tuple[int, int, int] | None:
        """The oldest report, taken off (recvmsg(MSG_ERRQUEUE)), or None."""
        if not self.reports:
            return None
        self.charged -= CHARGE
        return self.reports.popleft()
