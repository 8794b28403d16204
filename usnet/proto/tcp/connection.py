"""One TCP connection as a sans-I/O state machine (RFC 9293).

The connection never touches a socket, a ring or a clock: the caller hands
it parsed segments (`on_segment`) and the current time, asks it for the
segments to send (`outgoing`), and drives its timers (`timeout`,
`on_timer`). That keeps the protocol testable against a simulated link with
a fake clock, and lets the same code run behind a channel, a socket facade
or asyncio.

Calling convention: after *any* call that can change state (`connect`,
`on_segment`, `send`, `recv`, `shutdown_write`, `abort`, `on_timer`,
`resume`), call ``outgoing(now)`` and transmit what it returns. Then wait
until ``timeout()`` (or the next segment) and call ``on_timer(now)``.
Wake-ups for a socket layer are bit flags in ``events`` (``EV_*``),
drained with `take_events`.

Sequence numbers are kept *unwrapped*: plain ints counted from ISS (send
side) and IRS (receive side), so SYN is 0 and the first data byte 1. Only
the wire conversion (``& MASK``) and `unwrap` see the modulo; everything
else compares ints directly, which is both faster and harder to get wrong.

What is implemented, and where the RFC allows a choice, which one:

* Handshake incl. simultaneous open (RFC 9293 §3.5) and simultaneous close;
  TIME-WAIT for ``time_wait`` seconds (2*MSL), re-ACKing a repeated FIN.
* Retransmission timer per RFC 6298 (usnet.proto.tcp.rto) with Karn's rule,
  exponential back-off, ``max_retries`` then ``TimeoutError``; SYN and
  SYN-ACK retries separately counted.
* Loss recovery: fast retransmit on 3 duplicate ACKs or on SACK evidence,
  then RFC 6675-style "pipe" accounting with a scoreboard
  (usnet.proto.tcp.scoreboard) so SACKed data is never resent; without
  SACK, NewReno partial-ACK retransmission (RFC 6582). After an RTO, every
  unSACKed byte is lost and is resent under slow start. Window arithmetic
  is pluggable: NewReno or CUBIC (usnet.proto.tcp.congestion), whose initial
  slow start ends on rising delay (HyStart++, usnet.proto.tcp.hystart), or
  BBR (usnet.proto.tcp.bbr), which steers by the delivery-rate samples of
  usnet.proto.tcp.rate and sets the pacing rate itself.
* Pacing of new data at a rate derived from cwnd/srtt, as Linux's internal
  pacing (usnet.proto.tcp.pacing): a held send is one more timer deadline.
* RFC 7323 window scaling and timestamps (RTT on every ACK of new data,
  PAWS); RFC 2018 SACK blocks for out-of-order data, most recent first.
* RFC 5961: an in-window RST not exactly at RCV.NXT, any SYN in a
  synchronized state, and an ACK outside [SND.UNA - MAX.SND.WND, SND.NXT]
  get a challenge ACK (rate-limited per second) instead of acting on them.
* Sequence acceptability follows Linux rather than the letter of RFC 9293:
  a segment is acceptable if it starts at most at the right window edge and
  ends at or after the last ACK we sent. The strict rule throws away the
  ACK fields of pure ACKs that a busy peer sends at its SND.NXT when that
  is at our window edge, which stalls bidirectional bulk transfers.
* Delayed ACK (every second full segment, else after ``delack``), immediate
  ACK for out-of-order data and gap fills; Nagle unless ``nodelay``;
  TCP_CORK (``cork``: only full segments, usnet.proto.tcp.cork);
  sender and receiver silly-window avoidance; the right window edge never
  moves left.
* Zero-window probing with a backed-off persist timer; keep-alive.
* Buffers that grow: the send buffer to twice ``cwnd``, the receive buffer
  (and so the advertised window) with the data delivered per RTT, each up
  to its configured maximum.
* ``pause()``/``resume()`` for flow advisories: while paused no data leaves
  (ACKs still do), no retransmission is counted against the retry limit,
  and nothing is dropped.
"""

from __future__ import annotations

import errno
import os
import random
import struct
from typing import Any

from usnet.proto.tcp import fastpath, txfast
from usnet.proto.tcp.bytequeue import ByteQueue
from usnet.proto.tcp.config import (
    CLOSE_WAIT,
    CLOSED,
    CLOSING,
    ESTABLISHED,
    EV_CLOSED,
    EV_CONNECTED,
    EV_EOF,
    EV_ERROR,
    EV_READABLE,
    EV_WRITABLE,
    FIN_WAIT_1,
    FIN_WAIT_2,
    LAST_ACK,
    LISTEN,
    MIN_SND_MSS,
    SYN_RECEIVED,
    SYN_SENT,
    TIME_WAIT,
    TcpConfig,
    TcpState,
    TcpStats,
    copy_config,
)
from usnet.proto.tcp.congestion import CongestionControl, make_congestion, switch_congestion
from usnet.proto.tcp.cork import Cork
from usnet.proto.tcp.defer import synack_timeout
from usnet.proto.tcp.pacing import UNPACED, Pacer
from usnet.proto.tcp.quickack import QuickAck
from usnet.proto.tcp.rack import Rack
from usnet.proto.tcp.rate import Rate
from usnet.proto.tcp.rcvbuf import drs_window
from usnet.proto.tcp.reassembly import EMPTY_REASSEMBLY, Reassembly
from usnet.proto.tcp.rto import RtoEstimator
from usnet.proto.tcp.rxstamp import RxStamps
from usnet.proto.tcp.scoreboard import EMPTY_SCOREBOARD, Scoreboard
from usnet.proto.tcp.seq import HALF, MASK, seq_diff, unwrap
from usnet.proto.tcp.txstamp import TxStamps
from usnet.proto.wire.tcp import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    TCP_HLEN,
    TcpParts,
    TcpSegment,
    pack_parts,
    pack_segment,
    pack_ts,
    pseudo_sum,
    tcp_options,
)

__all__ = [
    "EV_CLOSED", "EV_CONNECTED", "EV_EOF", "EV_ERROR", "EV_READABLE", "EV_WRITABLE",
    "TcpConfig", "TcpConnection", "TcpState", "TcpStats", "rst_reply",
]

INF = float("inf")
_NO_OUT: Any = ()  # `_out` with nothing waiting: shared, immutable (see `_queue`)

_DATA_IN = (ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2)  # states that accept new data
_CAN_SEND = (SYN_SENT, SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT)
_KEEPALIVE = (ESTABLISHED, CLOSE_WAIT, FIN_WAIT_2)

# Loss-recovery phases
_OPEN = 0
_FAST = 1  # fast retransmit / fast recovery
_LOSS = 2  # after a retransmission timeout

_TSOPT = struct.Struct("!III")
_TS_MARK = 0x0101080A
_MAX_TCP_HLEN = 60  # header with 40 bytes of options: what a super-segment must leave room for


def _err(cls: type[OSError], code: int, msg: str) -> OSError:
    return cls(code, msg)


def rst_reply(psum: int, seg: TcpSegment) -> bytes | None:
    """The RST answering ``seg`` when no connection wants it (RFC 9293 §3.10.7.1).

    ``psum`` is `usnet.proto.wire.tcp.pseudo_sum` of (our address, their address).
    Never answer a RST; if the segment has an ACK, the RST takes its ACK
    number as sequence number; otherwise it acknowledges everything the
    segment occupied.
    """
    fl = seg.flags
    if fl & RST:
        return None
    if fl & ACK:
        return pack_segment(psum, seg.dport, seg.sport, seg.ack, 0, RST, 0)
    seglen = len(seg.payload) + (1 if fl & SYN else 0) + (1 if fl & FIN else 0)
    return pack_segment(psum, seg.dport, seg.sport, 0, (seg.seq + seglen) & MASK, RST | ACK, 0)


class TcpConnection:
    """A TCP connection between ``local_addr:local_port`` and ``remote_addr:remote_port``.

    Addresses are 4 (IPv4) or 16 (IPv6) bytes; the family decides the MSS
    derived from ``mtu`` and the pseudo-header of the checksum. Active open:
    construct, then `connect`. Passive open: the endpoint constructs it and
    calls `accept_syn` with the listener's SYN.
    """

    __slots__ = (
        "local_addr", "local_port", "remote_addr", "remote_port", "cfg", "state", "error", "soft_error",
        "pending_error",
        "events", "suspended", "passive", "stats", "rto", "cc", "sb", "mss_local", "mss",
        "max_segment", "_mss_base", "ts_ok", "sack_ok", "ws_ok", "snd_wscale", "rcv_wscale",
        "_ts_off", "ts_recent", "_psum", "iss", "snd_una", "snd_nxt", "snd_wnd", "max_snd_wnd",
        "snd_wl1", "snd_wl2", "_sndbuf", "_snd_base", "sndbuf_cap", "_fin_queued", "_fin_seq",
        "_fin_sent", "irs", "rcv_nxt", "rcv_adv", "_last_ack_sent", "_rcvq", "_reasm",
        "rcvbuf_cap", "_fin_rcvd", "_rx_fin_at", "_rcv_mss", "_rcv_unacked", "_ack_now",
        "_probe_now", "_syn_pending", "_syn_time", "_syn_rtx", "_t_rtx", "_t_delack", "_t_ka",
        "_t_tw", "_t_persist", "_retries", "_rtx_since", "_rtt_seq", "_rtt_time", "_persist_backoff",
        "_probes", "_ka_probes", "_recovery", "_recover", "_high_rxt", "_lost_limit",
        "_dupacks", "_dupack_est", "_force_rtx", "_last_rx", "_last_send", "_ch_t", "_ch_n",
        "_out", "_rs_bytes", "_rs_last", "_rs_time", "_rcv_rtt", "_syn_window", "context",
        "ecn_ok", "_ece", "_cwr", "_ecn_high", "_new_from", "rack", "_dsack", "_rx_tsecr", "due", "timer_at",
        "_quick", "_cork", "notsent_lowat", "defer",
        "pacer", "_t_pace", "_pace_left", "_pace_held", "rate", "rx_stamps", "tx_stamps", "error_report",
    )

    def __init__(
        self, local_addr: bytes, local_port: int, remote_addr: bytes, remote_port: int, *,
        now: float, mtu: int = 1500, iss: int | None = None, config: TcpConfig | None = None,
        ts_offset: int | None = None, **options,
    ) -> None:
        if len(local_addr) not in (4, 16) or len(remote_addr) != len(local_addr):
            raise ValueError("addresses must both be 4 (IPv4) or both 16 (IPv6) bytes")
        if not (0 < local_port <= 0xFFFF and 0 < remote_port <= 0xFFFF):
            raise ValueError("ports must be 1..65535")
        cfg = copy_config(config, **options) if config is not None else TcpConfig(**options)
        self.cfg = cfg
        self.local_addr = bytes(local_addr)
        self.local_port = local_port
        self.remote_addr = bytes(remote_addr)
        self.remote_port = remote_port
        self.context = None  # free for the owner (endpoint, socket layer)
        # The owner's schedule (TcpEndpoint): `due` is the set a user call adds this connection
        # to, because it may have something to send or a timer to move (`_touch`); `timer_at`
        # is the deadline the owner's timer heap holds for it. None/None: nobody schedules it.
        self.due: dict | None = None
        self.timer_at: float | None = None
        self.state = CLOSED
        self.error: OSError | None = None
        self.soft_error: int | None = None  # the last ICMP error that did not end the connection (errno)
        # IP_RECVERR's error (Linux's sk_err without tcp_done): the next recv, send or SO_ERROR
        # reports it once and takes it; the connection goes on (`icmp_error`, `cfg.recverr`)
        self.pending_error: int | None = None
        # The owner's report of the ICMP error that ended a connect in SYN-SENT, for the socket's
        # error queue (recvmsg(MSG_ERRQUEUE): usnet.proto.errqueue.tcp_connect_report); None: empty
        self.error_report: object | None = None
        self.events = 0
        self.suspended = False
        self.passive = False
        self.stats = TcpStats(self)
        self.rto = RtoEstimator(cfg.rto_initial, cfg.rto_min, cfg.rto_max)
        ip_hdr = 20 if len(local_addr) == 4 else 40
        mss = mtu - ip_hdr - 20
        if cfg.mss:
            mss = min(mss, cfg.mss)
        if mss < 64:
            raise ValueError(f"MTU {mtu} leaves no room for TCP segments")
        self.mss_local = mss  # what we advertise
        self._mss_base = mss  # min(ours, peer's), before options
        self.mss = mss  # payload of a full-sized segment with our usual options
        self.max_segment = mss  # the most payload in one segment we build (`_size_segments`)
        self.cc: CongestionControl = make_congestion(cfg.congestion, mss, cfg.initial_cwnd, cfg.hystart)
        # BBR needs pacing (as Linux's, which paces internally for it without fq)
        self.pacer = (Pacer(cfg.pacing_ss_ratio, cfg.pacing_ca_ratio)
                      if cfg.pacing or self.cc.rate_driven else None)
        self._t_pace = INF  # pacing held new data back until then
        self._pace_left = UNPACED  # bytes the pacer lets `_send` put out in this call
        self._pace_held = False  # `_send` stopped for the pacer, not for a window
        self.sb = EMPTY_SCOREBOARD  # shared until the first SACK block (`_rx_sacks`)
        self.rack: Rack | None = None  # RACK-TLP (usnet.proto.tcp.rack), once SACK is agreed
        # delivery-rate samples (usnet.proto.tcp.rate): on RACK's records once SACK is agreed
        self.rate = Rate(now, sack=False)
        self._dsack: tuple[int, int] | None = None  # a duplicate to report in the next SACK option
        self._rx_tsecr = 0  # TSecr of the last segment a receiver timed (one sample per echo)
        self.ts_ok = self.sack_ok = self.ws_ok = False
        self.ecn_ok = False  # RFC 3168 ECN agreed in the handshake
        self._ece = False  # a CE came: set ECE on what we send until the peer's CWR
        self._cwr = False  # we slowed down for an ECE: set CWR on the next new data
        self._ecn_high = 0  # snd_nxt at that slowdown: at most one a window of data
        self._new_from = 0  # snd_nxt when `outgoing` began: segments at or past it carry new data
        self.snd_wscale = 0
        ws = 0
        if cfg.window_scaling:
            while ws < 14 and (cfg.rcvbuf_max >> ws) > 0xFFFF:
                ws += 1
        self.rcv_wscale = ws
        # What TSval adds to the millisecond clock. The endpoint gives one per address pair, so a new
        # connection's timestamps follow the last one's and a peer's TIME_WAIT takes its SYN (RFC 6191).
        self._ts_off = random.getrandbits(32) if ts_offset is None else ts_offset & MASK
        self.ts_recent = 0
        self._psum = pseudo_sum(self.local_addr, self.remote_addr)
        self.iss = random.getrandbits(32) if iss is None else iss & MASK
        self.snd_una = 0
        self.snd_nxt = 0
        self.snd_wnd = 0
        self.max_snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = 0
        self._sndbuf = ByteQueue()
        self._snd_base = 1
        self.sndbuf_cap = cfg.sndbuf
        self._fin_queued = False
        self._fin_seq = -1
        self._fin_sent = False
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0
        self._last_ack_sent = 0
        self._rcvq = ByteQueue()
        # SO_TIMESTAMP(NS): when the bytes queued arrived, for the reads (None: not asked)
        self.rx_stamps: RxStamps | None = RxStamps() if cfg.rx_stamps else None
        # SO_TIMESTAMPING's transmit stamps: requests and reports (None: never asked)
        self.tx_stamps: TxStamps | None = None
        self._reasm = EMPTY_REASSEMBLY  # shared until data comes out of order (`_rx_data`)
        self.rcvbuf_cap = cfg.rcvbuf
        self._syn_window = min(cfg.rcvbuf, 0xFFFF)
        self._fin_rcvd = False
        self._rx_fin_at: int | None = None
        self._rcv_mss = min(536, mss)
        self._rcv_unacked = 0
        self._quick = QuickAck()  # ACK every segment for a while (usnet.proto.tcp.quickack)
        self._cork: Cork | None = None  # TCP_CORK, once set (usnet.proto.tcp.cork)
        self.notsent_lowat = 0  # TCP_NOTSENT_LOWAT: unsent bytes that make `send` wait (0: no bound)
        self.defer = 0  # TCP_DEFER_ACCEPT's retransmissions once it dropped our bare ACK (usnet.proto.tcp.defer)
        self._ack_now = False
        self._probe_now = False
        self._syn_pending = False
        self._syn_time = now
        self._syn_rtx = False
        self._t_rtx = self._t_delack = self._t_ka = self._t_tw = self._t_persist = INF
        self._retries = 0
        self._rtx_since = now  # when the oldest unacknowledged data went out (first RTO's estimate)
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self._persist_backoff = 0
        self._probes = 0
        self._ka_probes = 0
        self._recovery = _OPEN
        self._recover = 0
        self._high_rxt = 0
        self._lost_limit = 0
        self._dupacks = 0
        self._dupack_est = 0
        self._force_rtx = False
        self._last_rx = now
        self._last_send = now
        self._ch_t = -INF
        self._ch_n = 0
        # segments made outside `outgoing` (RSTs, an immediate ACK of out-of-order data): rare,
        # so the shared empty tuple until the first (`_queue`), not a list every connection owns
        self._out: list[bytes | TcpParts] = _NO_OUT
        self._rs_bytes = 0
        self._rs_last = 10 * mss  # the most `_rs_bytes` came to in a round trip (Linux: an initial window)
        self._rs_time = now
        self._rcv_rtt: float | None = None

    def __repr__(self) -> str:
        return (
            f"<TcpConnection {self.local_port}->{self.remote_port} {self.state.name} "
            f"una={self.snd_una} nxt={self.snd_nxt} rcv={self.rcv_nxt}>"
        )

    def _touch(self) -> None:
        """Tell the owner that this connection may have output or a new deadline (see `due`).

        Every user call that can change either calls it, so the owner visits only the
        connections something happened to, not every connection on every event.
        """
        due = self.due
        if due is not None:
            due[self] = None

    # ------------------------------------------------------------------ user calls

    def connect(self, now: float) -> None:
        """Active open: the SYN goes out on the next `outgoing`."""
        if self.state is not CLOSED or self.error is not None:
            raise OSError(errno.EISCONN, "connection already used")
        self.state = SYN_SENT
        self._syn_pending = True
        self._syn_time = now
        self._touch()

    def accept_syn(self, seg: TcpSegment, now: float, synack_sent: bool = False) -> None:
        """Passive open from a listener's SYN: enter SYN-RECEIVED, SYN-ACK on next `outgoing`.

        `synack_sent`: the SYN as rebuilt from a SYN cookie (usnet.proto.tcp.syncookie), whose
        SYN-ACK the endpoint already sent; the ACK that returned the cookie follows.
        """
        self.passive = True
        self.state = SYN_RECEIVED
        self._take_syn(seg)
        self.ecn_ok = self.cfg.ecn and seg.flags & (ECE | CWR) == ECE | CWR  # an ECN-setup SYN
        self.snd_wnd = self.max_snd_wnd = seg.window  # never scaled in a SYN
        self._syn_pending = not synack_sent
        self._syn_time = now
        self._last_rx = now
        if synack_sent:
            self.snd_nxt = 1
            self._syn_rtx = True  # when it went is unknown: no RTT sample from the handshake's timing
        self._touch()

    def send(self, data, more: bool = False) -> int:
        """Queue bytes; returns how many fit in the send buffer (0 when full). `more`: MSG_MORE,
        the tail waits for the next write (usnet.proto.tcp.cork)."""
        if more or self._cork is not None:
            self._more(more)
        if self.error is not None:
            raise _err(type(self.error), self.error.errno or 0, self.error.strerror or "")
        if self._fin_queued or self.state not in _CAN_SEND:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        space = self.sndbuf_cap - self._sndbuf.size
        if self.notsent_lowat:
            space = self._lowat_room(space)
        n = len(data)
        if space <= 0 or not n:
            return 0
        if n > space:
            self._sndbuf.append(memoryview(data)[:space])
            n = space
        else:
            self._sndbuf.append(data)
        self.stats.bytes_written += n
        if self.tx_stamps is not None:  # SO_TIMESTAMPING: the last byte of this write (tcp_tx_timestamp)
            self.tx_stamps.request(self._snd_base + self._sndbuf.size - 1, self.snd_nxt)
        self._touch()
        return n

    def recv(self, max_bytes: int = 1 << 20) -> bytes:
        """Up to ``max_bytes`` of in-order data; ``b""`` when none (check ``eof``/``error``)."""
        q = self._rcvq
        n = q.size
        if not n or max_bytes <= 0:
            return b""
        if max_bytes < n:
            n = max_bytes
        data = q.take(n)
        q.drop(n)
        self._consumed(n)
        return data

    def peek(self, max_bytes: int = 1 << 20) -> bytes:
        """Up to ``max_bytes`` of in-order data, left queued (a socket's MSG_PEEK)."""
        data = self._rcvq.take(max_bytes) if max_bytes > 0 else b""
        if data and self.rx_stamps is not None:
            self.rx_stamps.read(self.stats.bytes_read + len(data), False)
        return data

    def set_rx_stamps(self, on: bool) -> None:
        """SO_TIMESTAMP(NS) set or cleared on a live connection: data from now on is stamped."""
        self.cfg.rx_stamps = on
        if not on:
            self.rx_stamps = None
        elif self.rx_stamps is None:
            self.rx_stamps = RxStamps()

    def set_tx_stamps(self, flags: int, rebase: bool) -> None:
        """SO_TIMESTAMPING's flags set (or inherited): later writes are stamped as they ask
        (usnet.proto.tcp.txstamp); `rebase`, OPT_ID newly set: ee_data counts from SND.UNA, or
        with OPT_ID_TCP from the next byte written (sock_set_timestamping's sk_tskey). Requests
        and reports made stay when the flags go, as on an skb."""
        ts = self.tx_stamps
        if ts is None:
            if not TxStamps.wanted(flags) and not rebase:
                return
            ts = self.tx_stamps = TxStamps()
        ts.set_flags(flags)
        if rebase:
            ts.rebase(self._snd_base + self._sndbuf.size, self.snd_una)

    def take_tx_stamp(self) -> tuple[int, int, int] | None:
        """The oldest transmit stamp report (ee_info, ee_data, ns), taken off; None: none."""
        return None if self.tx_stamps is None else self.tx_stamps.pop()

    def recv_into(self, buf) -> int:
        """Copy in-order data into ``buf``; returns the byte count."""
        q = self._rcvq
        n = min(q.size, len(buf))
        if not n:
            return 0
        q.read_into(buf, n)
        q.drop(n)
        self._consumed(n)
        return n

    def _consumed(self, n: int) -> None:
        self.stats.bytes_read += n
        if self.rx_stamps is not None:
            self.rx_stamps.read(self.stats.bytes_read, True)
        if self.state in _DATA_IN and not self._fin_rcvd:
            cap = self.rcvbuf_cap
            inc = (cap - self._rcvq.size) - (self.rcv_adv - self.rcv_nxt)
            if inc >= min(cap >> 1, 2 * self._rcv_mss):
                self._ack_now = True  # window update
                self._touch()

    def shutdown_write(self, now: float) -> None:
        """Send FIN after the queued data (half-close)."""
        st = self.state
        if self._fin_queued or st in (CLOSED, LISTEN):
            return
        if st not in _CAN_SEND:
            return
        self._fin_queued = True
        self._fin_seq = self._snd_base + self._sndbuf.size
        self._touch()
        if st is ESTABLISHED:
            self.state = FIN_WAIT_1
        elif st is CLOSE_WAIT:
            self.state = LAST_ACK
        # SYN-SENT/SYN-RECEIVED: the transition happens on establishment.

    def close(self, now: float) -> None:
        """Application close: FIN, or RST if received data would be lost (RFC 2525 §2.17)."""
        if self._rcvq and self.state not in (CLOSED, TIME_WAIT):
            self.abort(now)
        elif self.state in (SYN_SENT, LISTEN):
            self._close()
        else:
            self.shutdown_write(now)

    def abort(self, now: float) -> None:
        """Drop the connection; the peer gets a RST if it knew about us."""
        st = self.state
        if st in (SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT):
            self._queue(pack_segment(
                self._psum, self.local_port, self.remote_port, (self.iss + self.snd_nxt) & MASK,
                0, RST, 0))
        if st is not CLOSED:
            self._close()
        self._touch()

    def icmp_error(self, err: int, seq: int) -> bool:
        """An ICMP error quoting our segment with sequence number `seq`; True if it was taken.

        Only for a sequence number in flight (RFC 5927 section 4.1): a forged
        error must guess it. In SYN-SENT any error ends the connection with its
        errno, as Linux's tcp_v4_err/tcp_v6_err do (EHOSTUNREACH for a
        neighbour that never answered, ECONNREFUSED for a closed port), except
        EMSGSIZE, which only lowers the path MTU. Once synchronised an error is
        kept as `soft_error` and never ends a connection (RFC 5461; Linux
        without IP_RECVERR); with IP_RECVERR (`cfg.recverr`) it is instead the
        socket's error at once (`pending_error`), as tcp_v4_err makes it, but
        for EMSGSIZE, which only lowers the path MTU there too.
        """
        rel = (seq - self.iss) & MASK
        if not self.snd_una <= rel < max(self.snd_nxt, self.snd_una + 1):
            return False
        if self.state is SYN_SENT and err != errno.EMSGSIZE:
            self._fail(OSError(err, os.strerror(err)))  # ECONNREFUSED makes a ConnectionRefusedError
        elif self.cfg.recverr and err != errno.EMSGSIZE and self.state is not SYN_SENT:
            self.pending_error = err  # (not kept as the soft one too: Linux's tcp_v4_err sets one of them)
        else:
            self.soft_error = err
        self._touch()
        return True

    def pause(self) -> None:
        """Flow advisory "suspended": hold data (ACKs still go), keep everything queued."""
        self.suspended = True

    def resume(self) -> None:
        self.suspended = False
        self._touch()

    def set_keepalive(
        self, now: float, enabled: bool, idle: float | None = None,
        interval: float | None = None, count: int | None = None,
    ) -> None:
        cfg = self.cfg
        cfg.keepalive = enabled
        if idle is not None:
            cfg.keepalive_idle = idle
        if interval is not None:
            cfg.keepalive_interval = interval
        if count is not None:
            cfg.keepalive_count = count
        self._t_ka = self._last_rx + cfg.keepalive_idle if enabled and self.state in _KEEPALIVE else INF
        self._touch()

    def set_path_mtu(self, mtu: int) -> None:
        """A smaller path MTU was learnt (ICMP "fragmentation needed", RFC 1191/8201).

        Only ever shrinks the segment size; data already queued is cut to
        the new size when it is (re)sent, so nothing has to be re-queued.
        """
        base = mtu - (20 if len(self.local_addr) == 4 else 40) - 20
        if base < MIN_SND_MSS:
            base = MIN_SND_MSS
        if base >= self._mss_base:
            return
        self._mss_base = base
        self.mss = base - (12 if self.ts_ok else 0)
        self._size_segments()
        self.cc.mss = self.mss
        self._touch()

    def _size_segments(self) -> None:
        """One MSS per segment, or with segmentation offload as many whole MSS as fit."""
        mss = self.mss
        room = self.cfg.gso_max - _MAX_TCP_HLEN
        self.max_segment = room // mss * mss if room >= 2 * mss else mss

    def ect(self, segment) -> bool:
        """Whether `segment`, from the last `outgoing`, goes as ECN-capable (ECT(0) in its IP header).

        New data only (RFC 3168 6.1.4-6.1.5): not SYNs, pure ACKs, window
        probes or retransmissions, whose loss or mark could not be told
        from the congestion they would report.
        """
        if not self.ecn_ok:
            return False
        if type(segment) is TcpParts:
            if not segment.payload:
                return False
            segment = segment.head
        elif len(segment) <= (segment[12] >> 4) << 2:
            return False
        # seq_diff(SEG.SEQ, the first new byte) >= 0, inline: once per segment sent
        return (int.from_bytes(segment[4:8], "big") - self.iss - self._new_from + HALF) & MASK >= HALF

    def segment_cut(self, segment) -> int:
        """0 for a segment the wire carries as is; for a super-segment, its pieces' payload.

        Each piece repeats the super-segment's header, options included, so a
        piece carries the negotiated MSS less the options (RFC 6691).
        """
        hlen = (segment[12] >> 4) << 2
        cut = self._mss_base + TCP_HLEN - hlen
        return cut if len(segment) - hlen > cut else 0

    def set_congestion(self, name: str) -> None:
        """Another congestion control from now on (TCP_CONGESTION), the windows kept."""
        self.cc = switch_congestion(self.cc, name, self.cfg.hystart)
        self.cfg.congestion = name
        if self.cc.rate_driven and self.pacer is None:
            self.pacer = Pacer(self.cfg.pacing_ss_ratio, self.cfg.pacing_ca_ratio)
        self._touch()

    @property
    def nodelay(self) -> bool:
        return self.cfg.nodelay

    @nodelay.setter
    def nodelay(self, flag: bool) -> None:
        self.cfg.nodelay = flag
        if flag and self._cork is not None:
            self._cork.nodelay()  # corked: what is queued goes once (usnet.proto.tcp.cork)
        self._touch()

    @property
    def quickack(self) -> bool:
        """TCP_QUICKACK: whether the connection is not interactive (usnet.proto.tcp.quickack)."""
        return not self._quick.pingpong

    @quickack.setter
    def quickack(self, flag: bool) -> None:
        if self._quick.set(flag) and self._t_delack != INF:
            self._t_delack = INF  # the delayed ACK goes now
            self._ack_now = True
        self._touch()

    def _more(self, more: bool) -> None:
        if self._cork is None:
            self._cork = Cork()
        self._cork.more = more

    @property
    def cork(self) -> bool:
        """TCP_CORK: only full segments leave while set (usnet.proto.tcp.cork)."""
        return self._cork is not None and self._cork.on

    @cork.setter
    def cork(self, flag: bool) -> None:
        if self._cork is None:
            if not flag:
                return
            self._cork = Cork()
        self._cork.set(flag)
        self._touch()

    def take_events(self) -> int:
        """Return and clear the pending ``EV_*`` bits."""
        ev = self.events
        self.events = 0
        return ev

    @property
    def readable(self) -> bool:
        """True if `recv` has data, or will never have more (EOF or error)."""
        return self._rcvq.size > 0 or self._fin_rcvd or self.error is not None

    @property
    def fin_received(self) -> bool:
        """The peer's FIN arrived (bytes before it may still be queued): no more data will come."""
        return self._fin_rcvd

    @property
    def eof(self) -> bool:
        """The peer's FIN arrived and every byte before it was read."""
        return self._fin_rcvd and not self._rcvq.size

    @property
    def send_space(self) -> int:
        if self._fin_queued or self.state not in _CAN_SEND:
            return 0
        n = self.sndbuf_cap - self._sndbuf.size
        if self.notsent_lowat:
            n = self._lowat_room(n)
        return n if n > 0 else 0

    def _lowat_room(self, space: int) -> int:
        """TCP_NOTSENT_LOWAT: no room while `notsent_lowat` bytes wait to be sent once; else
        up to that bound and a segment over it, as Linux's tcp_sendmsg checks the bound before
        each buffer it fills (tcp_stream_memory_free)."""
        lw = self.notsent_lowat
        unsent = self.unsent
        if unsent >= lw:
            return 0
        room = lw - unsent + self.mss
        return room if room < space else space

    @property
    def notsent_ok(self) -> bool:
        """Writable as poll says under TCP_NOTSENT_LOWAT (tcp_stream_memory_free with wake=1):
        twice the unsent bytes below it, so a waiter wakes with room for half of it."""
        lw = self.notsent_lowat
        return not lw or 2 * self.unsent < lw

    @property
    def writable(self) -> bool:
        return self.error is not None or self.send_space > 0

    @property
    def unsent(self) -> int:
        """Bytes queued but not yet sent once."""
        return self._snd_base + self._sndbuf.size - max(self.snd_nxt, self._snd_base)

    @property
    def in_flight(self) -> int:
        return self.snd_nxt - self.snd_una

    @property
    def pending(self) -> int:
        """Bytes in the send buffer not yet acknowledged."""
        return self._sndbuf.size

    @property
    def rcv_queued(self) -> int:
        return self._rcvq.size

    @property
    def rcv_window(self) -> int:
        return self.rcv_adv - self.rcv_nxt

    # ------------------------------------------------------------------ timers

    def timeout(self, now: float | None = None) -> float | None:
        """The next deadline (absolute, same clock as ``now``), or None."""
        t = self._t_rtx
        x = self._t_delack
        if x < t:
            t = x
        x = self._t_persist
        if x < t:
            t = x
        x = self._t_ka
        if x < t:
            t = x
        x = self._t_tw
        if x < t:
            t = x
        x = self._t_pace
        if x < t:
            t = x
        if self._cork is not None and self._cork.deadline < t:
            t = self._cork.deadline
        rack = self.rack
        if rack is not None:
            if rack.t_reo < t:
                t = rack.t_reo
            if rack.t_pto < t:
                t = rack.t_pto
        return None if t == INF else t

    def on_timer(self, now: float) -> None:
        """Run every timer whose deadline is at or before ``now``."""
        if self.state is CLOSED:
            return
        if now >= self._t_tw:
            self._t_tw = INF
            self._close()
            return
        rack = self.rack
        if rack is not None and (now >= rack.t_reo or now >= rack.t_pto):
            rack.on_timer(self, now)  # before the RTO: a probe due with it puts it off
        if now >= self._t_rtx:
            self._t_rtx = INF
            self._on_rto(now)
            if self.state is CLOSED:
                return
        if now >= self._t_persist:
            self._t_persist = INF
            self._on_persist(now)
            if self.state is CLOSED:
                return
        if now >= self._t_delack:
            self._t_delack = INF
            self._ack_now = True
            self._quick.pingpong = False  # the answer did not come in time (usnet.proto.tcp.quickack)
        if now >= self._t_pace:
            self._t_pace = INF  # the next `outgoing` sends the next burst
        if self._cork is not None:
            self._cork.on_timer(now, self.snd_nxt)  # the corked tail's 200 ms passed: the next `outgoing` sends it
        if now >= self._t_ka:
            self._t_ka = INF
            self._on_keepalive(now)

    def _on_rto(self, now: float) -> None:
        st = self.state
        cfg = self.cfg
        if st is SYN_SENT or st is SYN_RECEIVED:
            self._retries += 1
            limit = cfg.synack_retries if self.passive else cfg.syn_retries
            resend = True
            if self.defer:  # TCP_DEFER_ACCEPT dropped the bare ACK (usnet.proto.tcp.defer)
                limit, resend = synack_timeout(self._retries - 1, limit, self.defer)
            if self._retries > limit:
                self._fail(_err(TimeoutError, errno.ETIMEDOUT, "Connection timed out"))
                return
            self.rto.backoff()
            if resend:
                self._syn_pending = True
                self._syn_rtx = True
                self.stats.retransmits += 1
            self._t_rtx = now + self.rto.rto
            return
        una = self.snd_una
        if self.snd_nxt <= una:
            return
        if self.suspended:
            # Our own queue is full: a timeout says nothing about the path.
            self._t_rtx = now + self.rto.rto
            return
        # A receiver that closed its window is alive (Linux tcp_retransmit_timer).
        if not (self.snd_wnd == 0 and now - self._last_rx < cfg.rto_max):
            if self._retries == 0:
                rack = self.rack
                # when the oldest data went out: known with RACK's records, else the RTO's estimate
                self._rtx_since = rack.segs[0].first if rack is not None and rack.segs else now - self.rto.rto
            self._retries += 1
            if self._retries > cfg.max_retries or (
                    cfg.user_timeout and now - self._rtx_since >= cfg.user_timeout - 1e-6):
                self._fail(_err(TimeoutError, errno.ETIMEDOUT, "Connection timed out"))
                return
        self.stats.rto_timeouts += 1
        first = self._recovery == _OPEN  # no second reduction for one episode (as Linux)
        self.cc.on_rto(now, self.snd_nxt - una - self.sb.sacked, first)
        self.rto.backoff()
        self._recovery = _LOSS
        self._recover = self.snd_nxt
        self._high_rxt = una
        self._lost_limit = self.snd_nxt
        self._dupacks = 0
        self._dupack_est = 0
        self._force_rtx = True
        self._rtt_seq = None
        self._t_rtx = now + self.rto.rto
        if cfg.user_timeout:
            # no later than the user timeout (Linux's tcp_clamp_rto_to_user_timeout)
            left = self._rtx_since + cfg.user_timeout - now
            if left < self.rto.rto:
                self._t_rtx = now + (left if left > 0.001 else 0.001)
        if self.rack is not None:
            self.rack.on_rto(self.sb)

    def _on_persist(self, now: float) -> None:
        if self.snd_wnd or not self._has_unsent():
            self._persist_backoff = 0
            return
        self._probes += 1
        if self._probes > self.cfg.max_retries:
            self._fail(_err(TimeoutError, errno.ETIMEDOUT, "Connection timed out"))
            return
        self.stats.window_probes += 1
        self._probe_now = True
        self._persist_backoff += 1
        self._t_persist = now + self._persist_interval()

    def _persist_interval(self) -> float:
        t = self.rto.rto * (1 << min(self._persist_backoff, 16))
        return t if t < self.cfg.rto_max else self.cfg.rto_max

    def _on_keepalive(self, now: float) -> None:
        cfg = self.cfg
        if not cfg.keepalive or self.state not in _KEEPALIVE:
            return
        if self.snd_nxt > self.snd_una or self._has_unsent():
            self._t_ka = now + cfg.keepalive_idle  # the retransmission timer watches the peer
            return
        if self._ka_probes == 0 and now - self._last_rx < cfg.keepalive_idle:
            self._t_ka = self._last_rx + cfg.keepalive_idle
            return
        if self._ka_probes >= cfg.keepalive_count:
            self._fail(_err(TimeoutError, errno.ETIMEDOUT, "Connection timed out"))
            return
        self._ka_probes += 1
        self.stats.keepalive_probes += 1
        self._probe_now = True
        self._t_ka = now + cfg.keepalive_interval

    # ------------------------------------------------------------------ closing

    def _close(self) -> None:
        self.state = CLOSED
        self._t_rtx = self._t_delack = self._t_ka = self._t_tw = self._t_persist = self._t_pace = INF
        if self.rack is not None:
            self.rack.stop()
        self._syn_pending = self._ack_now = self._probe_now = False
        self.events |= EV_CLOSED | EV_READABLE | EV_WRITABLE

    def _fail(self, err: OSError) -> None:
        self.error = err
        self._sndbuf.clear()
        self._close()
        self.events |= EV_ERROR

    def _enter_time_wait(self, now: float) -> None:
        self.state = TIME_WAIT
        self._t_rtx = self._t_delack = self._t_ka = self._t_persist = self._t_pace = INF
        self._t_tw = now + self.cfg.time_wait
        if self.rack is not None:
            self.rack.stop()

    def _on_rst(self) -> None:
        st = self.state
        if st is SYN_RECEIVED:
            self._fail(_err(ConnectionRefusedError, errno.ECONNREFUSED, "Connection refused"))
        elif st is CLOSE_WAIT:  # the peer closed first: Linux's tcp_reset says EPIPE, not a reset
            self._fail(_err(BrokenPipeError, errno.EPIPE, "Broken pipe"))
        elif st in (ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2):
            self._fail(_err(ConnectionResetError, errno.ECONNRESET, "Connection reset by peer"))
        else:
            self._close()

    # ------------------------------------------------------------------ input

    def on_segment(self, seg: TcpSegment, now: float, ce: bool = False) -> None:
        """Process one received segment (already parsed and checksum-verified).

        `ce`: its IP header carried ECN's Congestion Experienced mark.
        """
        self.stats.segs_in += 1
        st = self.state
        # header prediction (usnet.proto.tcp.fastpath): in order, ACK or ACK|PSH only, no CE
        if (st is ESTABLISHED and seg.flags & ~PSH == ACK and not ce and fastpath.ENABLED
                and fastpath.rx_established(self, seg, now)):
            return
        if self.ecn_ok and st is not SYN_SENT:
            if seg.flags & CWR:
                self._ece = False  # the sender slowed down (a CE in the same segment sets it again)
            if ce:
                self.stats.ce_received += 1
                if not self._ece:
                    self._ece = True
                    self._ack_now = True  # tell the sender now, not after a delayed ACK
        if st is SYN_SENT:
            self._rx_syn_sent(seg, now)
        elif st is CLOSED or st is LISTEN:
            r = rst_reply(self._psum, seg)
            if r is not None:
                self._queue(r)
        else:
            self._rx(seg, now)

    def _take_syn(self, seg: TcpSegment) -> None:
        """The peer's SYN, passive or active: its options, its ISN, our first window."""
        self._negotiate(seg)
        self.irs = seg.seq
        self.rcv_nxt = 1
        self.rcv_adv = 1 + self._syn_window
        self._last_ack_sent = 1
        if self.ts_ok and seg.tsval is not None:  # ts_ok: the SYN had one
            self.ts_recent = seg.tsval

    def _negotiate(self, seg: TcpSegment) -> None:
        cfg = self.cfg
        v4 = len(self.local_addr) == 4
        peer_mss = seg.mss if seg.mss else (536 if v4 else 1220)
        base = min(self._mss_base, peer_mss)  # _mss_base: ours, or a path MTU learnt since
        if base < MIN_SND_MSS:
            base = MIN_SND_MSS  # a tiny MSS option is clamped as Linux clamps it
        self._mss_base = base
        wscale = seg.wscale if cfg.window_scaling else None
        self.ws_ok = wscale is not None
        if wscale is not None:
            self.snd_wscale = min(wscale, 14)
        else:
            self.snd_wscale = self.rcv_wscale = 0
        self.sack_ok = cfg.sack and seg.sack_ok
        self.rack = Rack(cfg.tlp) if self.sack_ok and cfg.rack else None
        if self.rack is not None:
            self.rate.marker = None
            self.rack.rate = self.rate
        self.ts_ok = cfg.timestamps and seg.tsval is not None
        self.mss = base - (12 if self.ts_ok else 0)
        self._size_segments()
        self.cc.set_mss(self.mss, cfg.initial_cwnd)
        if self._rcv_mss > self.mss:
            self._rcv_mss = self.mss

    def _rx_syn_sent(self, seg: TcpSegment, now: float) -> None:
        fl = seg.flags
        ack_ok = False
        if fl & ACK:
            if (seg.ack - self.iss) & MASK != 1:  # must acknowledge exactly our SYN
                if not fl & RST:
                    self._queue(pack_segment(
                        self._psum, self.local_port, self.remote_port, seg.ack, 0, RST, 0))
                self.stats.bad_segments += 1
                self.stats.bad_acks += 1
                return
            ack_ok = True
        if fl & RST:
            if ack_ok:
                self._fail(_err(ConnectionRefusedError, errno.ECONNREFUSED, "Connection refused"))
            return
        if not fl & SYN:
            return
        self._take_syn(seg)
        self._last_rx = now
        if not ack_ok:
            # Simultaneous open: answer with SYN-ACK, our SYN sequence number again.
            self.state = SYN_RECEIVED
            self.snd_wnd = self.max_snd_wnd = seg.window
            self._syn_pending = True
            return
        self.snd_una = 1
        self.snd_wnd = self.max_snd_wnd = seg.window  # never scaled in a SYN
        self.snd_wl1 = 0
        self.snd_wl2 = 1
        self.ecn_ok = self.cfg.ecn and fl & (ECE | CWR) == ECE  # an ECN-setup SYN-ACK
        self._rtt_sample_syn(seg, now)
        self._t_rtx = INF
        self._established(now)
        self._ack_now = True
        if len(seg.payload) or fl & FIN:
            self._rx_text(seg.payload, 1, len(seg.payload), fl & FIN, now)

    def _rtt_sample_syn(self, seg: TcpSegment, now: float) -> None:
        self._retries = 0
        if self.ts_ok and seg.tsecr:
            r = self._ts_age(seg.tsecr, now)
            if r >= 0:
                self.rto.sample(r / 1000.0)
        elif not self._syn_rtx:
            self.rto.sample(now - self._syn_time)

    def _established(self, now: float) -> None:
        self.state = ESTABLISHED
        self.events |= EV_CONNECTED | EV_WRITABLE
        self._syn_pending = False
        if self._fin_queued:
            self._fin_seq = self._snd_base + self._sndbuf.size
            self.state = FIN_WAIT_1
        if self.cfg.keepalive:
            self._t_ka = now + self.cfg.keepalive_idle

    def _challenge_ack(self, now: float) -> None:
        if now - self._ch_t >= 1.0:
            self._ch_t = now
            self._ch_n = 0
        if self._ch_n >= self.cfg.challenge_ack_limit:
            self.stats.challenge_acks_suppressed += 1
            return
        self._ch_n += 1
        self.stats.challenge_acks += 1
        self._ack_now = True

    def _ts_now(self, now: float) -> int:
        return (int(now * 1000) + self._ts_off) & MASK

    def _ts_age(self, tsecr: int, now: float) -> int:
        """Milliseconds since the timestamp the peer echoes (negative: one we never sent).

        `seq_diff(self._ts_now(now), tsecr)`, written out: it runs twice for almost every segment
        received (the RTT sample of its ACK, the receiver's RTT sample), and the two calls were
        two thirds of its cost (issue 16)."""
        return ((((int(now * 1000) + self._ts_off) & MASK) - tsecr + HALF) & MASK) - HALF

    def _rx(self, seg: TcpSegment, now: float) -> None:
        """Synchronized states and SYN-RECEIVED (RFC 9293 §3.10.7.4)."""
        fl = seg.flags
        st = self.state
        stats = self.stats
        rcv_nxt = self.rcv_nxt
        s = unwrap(seg.seq, self.irs, rcv_nxt)
        if fl & SYN and s == 0 and st is SYN_RECEIVED:
            if not fl & ACK:
                self._syn_pending = True  # the peer repeated its SYN: our SYN-ACK was lost
                return
            if (seg.ack - self.iss) & MASK == 1:
                fl &= ~SYN  # simultaneous open: the peer's SYN-ACK, its SYN already counted
                s = 1
        payload = seg.payload
        plen = len(payload)
        seglen = plen + (1 if fl & SYN else 0) + (1 if fl & FIN else 0)
        tsval = seg.tsval
        ts_ok = self.ts_ok
        # PAWS (RFC 7323 §5.3): an older timestamp than TS.Recent is an old duplicate.
        # Linux allows one tick of slack (TCP_PAWS_WINDOW): a segment held back behind its own
        # retransmission is then taken as the duplicate it is.
        if (ts_ok and tsval is not None and not fl & RST and seq_diff(self.ts_recent, tsval) > 1
                and not self._disordered_ack(seg, s, seglen, tsval)):
            stats.paws_rejected += 1
            stats.bad_segments += 1
            self._ack_now = True
            if plen and s < rcv_nxt:
                self._rx_dup(s, s + plen, now)
            return
        wnd = self.rcv_adv - rcv_nxt
        if wnd < 0:
            wnd = 0
        if s > rcv_nxt + wnd or s + seglen < self._last_ack_sent:
            stats.out_of_window += 1
            stats.bad_segments += 1
            if not fl & RST:
                self._ack_now = True
                if plen and s < rcv_nxt:
                    self._rx_dup(s, s + plen, now)
            return
        if fl & RST:
            if s == rcv_nxt:
                self._on_rst()
            else:
                self._challenge_ack(now)  # RFC 5961 §3.2
            return
        if fl & SYN:
            self._challenge_ack(now)  # RFC 5961 §4.2
            return
        if not fl & ACK:
            return
        una = self.snd_una
        a = unwrap(seg.ack, self.iss, una)
        if st is SYN_RECEIVED:
            if not 0 < a <= self.snd_nxt:
                self._queue(pack_segment(
                    self._psum, self.local_port, self.remote_port, seg.ack, 0, RST, 0))
                stats.bad_acks += 1
                stats.bad_segments += 1
                return
            self.snd_wnd = seg.window << self.snd_wscale
            if self.snd_wnd > self.max_snd_wnd:
                self.max_snd_wnd = self.snd_wnd
            self.snd_wl1 = s
            self.snd_wl2 = a
            self._retries = 0
            if not ts_ok and not self._syn_rtx:  # with timestamps _ack_new samples
                self.rto.sample(now - self._syn_time)
            self._established(now)
            st = self.state
        elif a > self.snd_nxt or a < una - self.max_snd_wnd:
            stats.bad_acks += 1
            stats.bad_segments += 1
            self._challenge_ack(now)  # RFC 5961 §5.2
            return
        # TS.Recent only from a segment whose ACK was acceptable too (Linux: tcp_ack, under
        # FLAG_UPDATE_TS_RECENT): a blind in-window segment with a far-off TSval and a wrong
        # ACK (or a SYN, or no ACK) would otherwise make every true segment after it look old.
        if ts_ok and tsval is not None and s <= self._last_ack_sent and seq_diff(tsval, self.ts_recent) >= 0:
            self.ts_recent = tsval
        prev_rx = self._last_rx
        self._last_rx = now
        self._ka_probes = 0
        self._probes = 0
        w = seg.window << self.snd_wscale
        self._on_ack(seg, una, a, w, plen, fl, now)
        if fl & ECE and self.ecn_ok and self._recovery == _OPEN and self.snd_una > self._ecn_high:
            # RFC 3168 6.1.2: a mark is a loss without the loss: the window halves, once a window
            # of data (ECEs about data sent before the cut are the same news again)
            self.cc.on_congestion(now, self.snd_nxt - self.snd_una)
            self._ecn_high = self.snd_nxt
            self._cwr = True
            stats.ecn_reductions += 1
        # Window update (RFC 9293 §3.10.7.4, SND.WL1/WL2 guard against old segments).
        if self.snd_wl1 < s or (self.snd_wl1 == s and self.snd_wl2 <= a):
            self.snd_wnd = w
            self.snd_wl1 = s
            self.snd_wl2 = a
            if w > self.max_snd_wnd:
                self.max_snd_wnd = w
        if self._fin_sent and self.snd_una > self._fin_seq:
            if st is FIN_WAIT_1:
                self.state = st = FIN_WAIT_2
            elif st is CLOSING:
                self._enter_time_wait(now)
                return
            elif st is LAST_ACK:
                self._close()
                return
        if st in _DATA_IN:
            if plen or fl & FIN:
                self._rx_text(payload, s, plen, fl & FIN, now)
            if ts_ok and plen and seg.tsecr:
                self._rcv_rtt_sample(seg.tsecr, plen, now, prev_rx)
        elif plen or fl & FIN:
            # Retransmitted data or FIN after the peer's FIN: re-ACK it.
            self._ack_now = True
            if st is TIME_WAIT and fl & FIN:
                self._t_tw = now + self.cfg.time_wait

    def _on_ack(self, seg: TcpSegment, una: int, a: int, w: int, plen: int, fl: int, now: float) -> None:
        """The ACK field of an acceptable segment (``a`` unwrapped, ``una`` SND.UNA before it,
        ``w`` its scaled window): SACK blocks, new data acknowledged, duplicate ACKs, RACK's
        loss detection and the delivery-rate sample. The general path and the fast path
        (usnet.proto.tcp.fastpath) both come here."""
        rack = self.rack
        sampling = self.snd_nxt > una
        if sampling:  # a fresh delivery-rate sample (usnet.proto.tcp.rate), `_rate_end` finishes it
            sacked0 = self.sb.sacked
            lost0 = rack.lost_total if rack is not None else 0
            self.rate.rs.reset(self._pipe())
        if rack is not None and (sampling or seg.sacks is not None):
            rack.begin_ack(self, seg.tsecr)
        else:
            rack = None  # nothing of ours in flight: nothing for RACK to learn (a pure receiver)
        if seg.sacks is not None and self.sack_ok:
            self._rx_sacks(seg.sacks, now)
        if a > una:
            self._ack_new(seg, a, now)
        elif (a == una and not plen and not fl & FIN and self.snd_nxt > una
              and w == self.snd_wnd):
            self._dupacks += 1
            self.stats.dup_acks += 1
            rec = self._recovery
            if rec == _OPEN:
                if self._dupacks >= self.cfg.dupthresh and rack is None:
                    self._enter_recovery(now)
            elif rec == _FAST and not self.sack_ok:
                self._dupack_est += self.mss
        if rack is not None:
            rack.end_ack(self, now)  # RACK replaces the duplicate-ACK threshold (RFC 8985 §6)
        elif (self._recovery == _OPEN and self.sack_ok and self.sb.sacked
                and self.sb.sacked >= self.cfg.dupthresh * self.mss and self.snd_nxt > self.snd_una):
            self._enter_recovery(now)
        if sampling:
            self._rate_end(sacked0, lost0, una, now)

    def _rcv_rtt_sample(self, tsecr: int, plen: int, now: float, prev_rx: float) -> None:
        """Data with a timestamp echo: the receiver's RTT estimate (for autotuning), and the
        pure receiver's RTO sample (`_rx_rtt_sample`)."""
        r = self._ts_age(tsecr, now)
        if r >= 0:
            if not r:
                r = 1  # a millisecond clock's 0 is under a tick, as Linux's min_delta
            rr = self._rcv_rtt
            self._rcv_rtt = r / 1000.0 if rr is None else rr + (r / 1000.0 - rr) / 8
            # (a segment under the receiver's MSS times nothing: tested here, not in a call, since
            # a request/response server's requests are such segments, one a request)
            if self.snd_nxt <= self.snd_una and plen >= self._rcv_mss:
                self._rx_rtt_sample(tsecr, r / 1000.0, now - prev_rx)

    def _disordered_ack(self, seg: TcpSegment, s: int, seglen: int, tsval: int) -> bool:
        """A pure ACK overtaken by a later one: exempt from PAWS (as Linux).

        Reordered pure ACKs carry timestamps older than TS.Recent, and
        rejecting them would answer each with a duplicate ACK for nothing.
        They hold no data, repeat an old ACK number and are at most an RTO
        old, so they cannot be old duplicates from a previous incarnation.
        """
        if seglen or s != self.rcv_nxt:
            return False
        una = self.snd_una
        a = unwrap(seg.ack, self.iss, una)
        return a <= una and (self.ts_recent - tsval) & MASK <= self.rto.rto * 1000

    def _rx_rtt_sample(self, tsecr: int, r: float, gap: float) -> None:
        """A pure receiver times the data it gets (Linux's tcp_rcv_rtt_measure_ts).

        With nothing of its own in flight no ACK ever times anything, so the
        srtt of the handshake (1 s after a retransmitted SYN-ACK) would stay.
        The TSecr of a full-sized segment echoes the ACK that let it go; one
        sample per echoed value, and none when the sender was idle (the echo
        then answers the segment before the pause, and the pause is not RTT).
        Only for a full-sized segment (`_rcv_rtt_sample` tests ``plen``).
        """
        if tsecr == self._rx_tsecr or gap > r / 2:
            return
        self._rx_tsecr = tsecr
        self.rto.sample(r)

    def _rx_sacks(self, sacks, now: float) -> None:
        una = self.snd_una
        nxt = self.snd_nxt
        base = self.iss
        sb = self.sb
        rack = self.rack
        first = True
        prev = None
        for left, r in sacks:
            lo = unwrap(left, base, una)
            hi = lo + ((r - left) & MASK)
            if first:
                first = False
                prev = (lo, hi)
                if hi <= una and lo < hi:
                    prev = None
                    self._rx_dsack(lo, hi)  # below the cumulative ACK: a duplicate (RFC 2883 §4)
                    continue
            elif prev is not None:
                p, prev = prev, None
                if lo <= p[0] and p[1] <= hi and p[0] < p[1]:
                    self._rx_dsack(p[0], p[1])  # the first block inside the second: a duplicate
            if lo <= una:
                continue  # D-SACK or stale
            if hi > nxt or hi <= lo:
                self.stats.sacks_discarded += 1  # bogus (RFC 2018 §5; Linux's tcp_is_sackblock_valid)
                continue
            if sb is EMPTY_SCOREBOARD:
                sb = self.sb = Scoreboard()
            if rack is not None:
                lo, hi = rack.whole(lo, hi, self.mss)  # whole segments only: a bounded scoreboard
                if hi <= lo:
                    self.stats.sacks_discarded += 1
                    continue
                rack.sack(lo, hi, sb, now)
            elif len(sb.starts) > (nxt - una) // self.mss + 16 and sb.isolated(lo, hi):
                self.stats.sacks_discarded += 1  # no segment records to check against: a budget
            else:
                sb.add(lo, hi)
        if self._recovery == _FAST and sb.ends and sb.ends[-1] > self._lost_limit:
            self._lost_limit = sb.ends[-1]

    def _rx_dsack(self, lo: int, hi: int) -> None:
        if self.rack is not None:
            self.rack.dsack(lo, hi)
        else:
            self.stats.dsacks += 1

    def _ack_new(self, seg: TcpSegment, a: int, now: float) -> None:
        una = self.snd_una
        acked = a - una
        flight = self.snd_nxt - una
        stats = self.stats
        base = self._snd_base
        buf = self._sndbuf
        dend = base + buf.size
        upto = a if a < dend else dend
        if upto > base:
            n = upto - base
            buf.drop(n)
            self._snd_base = upto
            stats.bytes_acked += n
            self.events |= EV_WRITABLE
        self.snd_una = a
        if self.tx_stamps is not None:
            self.tx_stamps.acked(a, self.rcvbuf_cap - self._rcvq.size)
        if una == 0:
            acked -= 1  # the SYN
        sb = self.sb
        rack = self.rack
        if rack is not None:
            rack.cum_ack(a, now)
        if sb.starts:
            if sb.advance(a):
                stats.sack_reneges += 1
                sb.clear()
                if rack is not None:
                    rack.renege()
            if not sb.starts:
                self.sb = EMPTY_SCOREBOARD  # all acknowledged: the scoreboard goes
        # RTT: timestamps make every ACK of new data a sample; otherwise one timed segment.
        rto = self.rto
        tsecr = seg.tsecr
        rtt = None
        if self.ts_ok and tsecr:
            r = self._ts_age(tsecr, now)
            if r >= 0:
                rtt = r / 1000.0
                rto.sample(rtt)
        elif self._rtt_seq is not None and a >= self._rtt_seq:
            rtt = now - self._rtt_time
            rto.sample(rtt)
            self._rtt_seq = None
        if rack is None:
            self.rate.on_cum_ack(a)
            if rtt is not None:
                self.rate.rs.rtt = rtt
        self.cc.hystart_ack(a, self.snd_nxt, rtt)
        self._retries = 0
        rec = self._recovery
        if rec == _FAST:
            if a >= self._recover:
                self._recovery = _OPEN
                self.cc.on_recovery_end(now)
                self._dupacks = 0
            elif rack is None:
                # Partial ACK (RFC 6582 §3.2 step 4): the next hole is lost too.
                if self._high_rxt < a:
                    self._high_rxt = a
                if not self.sack_ok:
                    self._high_rxt = a
                    self._lost_limit = a + min(self.mss, self.snd_nxt - a)
                    self._force_rtx = True
                    est = self._dupack_est - acked + self.mss
                    self._dupack_est = est if est > 0 else 0
        else:
            if rec == _LOSS:
                if a >= self._recover:
                    self._recovery = _OPEN
                elif self._high_rxt < a:
                    self._high_rxt = a
            if acked > 0:
                self.cc.on_ack(acked, rto.srtt, now, flight)
            self._dupacks = 0
        self._t_rtx = INF if a >= self.snd_nxt else now + rto.rto
        if self.cfg.autotune:
            want = 2 * self.cc.cwnd
            if want > self.sndbuf_cap:
                cap = self.cfg.sndbuf_max
                self.sndbuf_cap = want if want < cap else cap

    def _rate_end(self, sacked0: int, lost0: int, una: int, now: float) -> None:
        """The ACK is processed: its rate sample, and a rate-driven algorithm's turn (BBR).

        ``sacked0``, ``lost0``: the SACKed and RACK's lost-ever bytes before the ACK."""
        rack = self.rack
        rate = self.rate
        acked = self.snd_una - una - (1 if una == 0 < self.snd_una else 0) + self.sb.sacked - sacked0
        if rack is not None:
            rate.rs.rtt = rack.sample if rack.sample is not None else -1.0
            losses = rack.lost_total - lost0
        else:
            losses = 0
        rate.finish(now, acked if acked > 0 else 0, losses)
        cc = self.cc
        if cc.rate_driven:
            cc.on_rate_sample(rate, now, self._pipe(), self._recovery, self.rto.srtt)

    def _enter_recovery(self, now: float) -> None:
        una = self.snd_una
        nxt = self.snd_nxt
        self._recovery = _FAST
        self._recover = nxt
        self.cc.on_congestion(now, nxt - una)
        self._high_rxt = una
        first = una + min(self.mss, nxt - una)
        if self.sack_ok:
            hi = self.sb.ends[-1] if self.sb.ends else 0
            self._lost_limit = hi if hi > first else first
        else:
            self._lost_limit = first
            self._dupack_est = self._dupacks * self.mss
        self._force_rtx = True
        self._rtt_seq = None
        self.stats.fast_retransmits += 1

    def _rx_text(self, payload, s: int, plen: int, fin: int, now: float) -> None:
        """Data and FIN processing (RFC 9293 §3.10.7.4 steps 7 and 8)."""
        rcv_nxt = self.rcv_nxt
        fs = s + plen  # where a FIN would sit
        if s < rcv_nxt:
            cut = rcv_nxt - s
            if plen and self.sack_ok:
                self._dsack = (s, s + (cut if cut < plen else plen))  # RFC 2883: report the duplicate
            if cut >= plen:
                if plen:
                    self.stats.dup_segments += 1
                    self._rx_dup(s, s + plen, now)
                plen = 0
            else:
                payload = payload[cut:]
                plen -= cut
            s = rcv_nxt
        edge = self.rcv_adv
        if s + plen > edge:
            keep = edge - s
            if keep < 0:
                keep = 0
            payload = payload[:keep]
            plen = keep
            fin = 0
            self._ack_now = True
        if plen:
            if s == rcv_nxt:
                self._deliver(payload, plen, now)
            else:
                reasm = self._reasm
                if self._ack_now and self.sack_ok and reasm and not reasm.continues_recent(s):
                    self._ack_apart(now)  # the blocks so far, before this one pushes one out
                if reasm is EMPTY_REASSEMBLY:
                    reasm = self._reasm = Reassembly()
                pruned, fits = reasm.make_room(s, plen, 2 * self.rcvbuf_cap)  # Linux: rcvbuf ~ 2x window
                if pruned:
                    self.stats.ofo_pruned += pruned
                if not fits:
                    self.stats.ofo_drops += 1
                elif reasm.add(s, payload) < plen and self.sack_ok and reasm.dup is not None:
                    self._dsack = reasm.dup  # RFC 2883: a duplicate above a hole, too
                self.stats.ooo_segments += 1
                self._ack_now = True  # duplicate ACK with SACK blocks
        if fin:
            if fs == self.rcv_nxt:
                self._rx_fin(now)
            elif fs > self.rcv_nxt:
                self._rx_fin_at = fs
                self._ack_now = True
            else:
                self._ack_now = True  # repeated FIN
        elif self._rx_fin_at is not None and self._rx_fin_at == self.rcv_nxt:
            self._rx_fin(now)

    def _deliver(self, payload, plen: int, now: float) -> None:
        """In-order data at RCV.NXT, within the window: queue it with what it joins from the
        reassembly queue, and decide the ACK (delayed, every second segment, or quick)."""
        rcv_nxt = self.rcv_nxt + plen
        self._rcvq.append(payload)
        reasm = self._reasm
        if reasm is not EMPTY_REASSEMBLY and reasm:  # (`is not`: as in `_segment`)
            data, nxt = reasm.pop_ready(rcv_nxt)
            if data is not None:
                self._rcvq.append(data)
                rcv_nxt = nxt
                if not reasm:
                    self._reasm = EMPTY_REASSEMBLY  # the holes are filled: the queue goes
            self._ack_now = True  # a gap (partly) filled: tell the sender at once
        got = rcv_nxt - self.rcv_nxt  # this segment and what it joined from the queue
        self.stats.bytes_in += got
        if self.rx_stamps is not None:
            self.rx_stamps.mark(self.stats.bytes_in - got, self.stats.bytes_in, now)
        self.rcv_nxt = rcv_nxt
        self.events |= EV_READABLE
        rcv_mss = self._rcv_mss
        quick = self._quick.data_in(now, self.rcv_adv - rcv_nxt, rcv_mss)
        cfg = self.cfg
        if not self._ack_now:
            if plen > rcv_mss:
                self._rcv_mss = rcv_mss = plen if plen < self.mss_local else self.mss_local
            self._rcv_unacked += plen
            if quick or self._rcv_unacked >= cfg.delack_segments * rcv_mss or not cfg.delack:
                self._ack_now = True
            elif self._t_delack == INF:
                self._t_delack = now + cfg.delack
        if cfg.autotune:
            self._autotune_rcv(got, now)  # all of it: on a lossy path most comes from the queue

    def _rx_dup(self, s: int, end: int, now: float) -> None:
        """Data we already had (`s` below RCV.NXT) came again, as Linux's tcp_send_dupack: the
        sender retransmitted, so our ACK was lost or late, or the path reordered the original
        behind its retransmission. Report it at once in a D-SACK (RFC 2883), which lets the
        sender undo a recovery it began for nothing, and acknowledge every segment for a while
        (usnet.proto.tcp.quickack): the sender is likely in recovery with a small window."""
        rcv_nxt = self.rcv_nxt
        if self.sack_ok:
            if self._dsack is not None and self._ack_now:
                self._ack_apart(now)  # the pending D-SACK goes out, not overwritten
            self._dsack = (s, end if end < rcv_nxt else rcv_nxt)
        self._quick.duplicate(self.rcv_adv - rcv_nxt, self._rcv_mss)
        self._ack_now = True

    def _ack_apart(self, now: float) -> None:
        """The pending ACK now, on its own, instead of one for a whole batch of segments.

        The caller hands us every segment that arrived since it last asked for output, and
        `outgoing` would answer them all with one ACK, whose SACK option holds only 3 blocks,
        the most recent first, and one D-SACK. A run of out-of-order segments that each open
        or touch a different block (several losses in a window) would then tell the sender
        about 3 of them, and later ACKs report the newest blocks first, so the sender learns
        of the others late or never, and recovers by timeouts. Linux acknowledges each
        out-of-order segment (its SACK compression merely delays, and keeps its 4 blocks).
        An ACK that only grows the most recent block loses nothing and is not split."""
        self._queue(self._segment(ACK, self.snd_nxt, b"", now))

    def _rx_fin(self, now: float) -> None:
        """The peer's FIN, in order. In ESTABLISHED its ACK waits, as Linux's tcp_fin makes it
        (CLOSE_WAIT enters ping-pong mode): the application's close (or its last answer) most
        often follows at once, and its FIN then carries the ACK: one packet instead of two
        (one fewer segment, doorbell and usnetd turn a connection; `_fin_ack_waits`). Within
        `delack` without one it goes alone, as any delayed ACK."""
        self.rcv_nxt += 1
        self._rx_fin_at = None
        self._fin_rcvd = True
        self.events |= EV_EOF | EV_READABLE
        st = self.state
        if st is ESTABLISHED:
            self.state = CLOSE_WAIT
            if self._fin_ack_waits():
                self._quick.pingpong = True
                if self._t_delack == INF:
                    self._t_delack = now + self.cfg.delack
                return
            self._ack_now = True
            return
        self._ack_now = True
        if st is FIN_WAIT_1:
            self.state = CLOSING
        elif st is FIN_WAIT_2:
            self._enter_time_wait(now)

    def _fin_ack_waits(self) -> bool:
        """Whether the ACK of a FIN received in ESTABLISHED may be delayed: not when an ACK is
        due anyway (the data with it asked for one, a gap), nor with delayed ACKs off, nor with
        more than a full segment unacknowledged (Linux's __tcp_ack_snd_check sends those now)."""
        return (not self._ack_now and self.cfg.delack > 0 and (self._reasm is EMPTY_REASSEMBLY or not self._reasm)
                and self._rcv_unacked <= self._rcv_mss)

    def _autotune_rcv(self, n: int, now: float) -> None:
        """Dynamic right-sizing: the buffer follows what arrives per round trip."""
        self._rs_bytes += n
        rtt = self._rcv_rtt or self.rto.srtt or 0.1
        if now - self._rs_time >= rtt:
            copied = self._rs_bytes
            cap = self.rcvbuf_cap
            if copied > self._rs_last and cap < self.cfg.rcvbuf_max:  # usnet.proto.tcp.rcvbuf
                need = drs_window(copied, self._rs_last, self.mss_local)
                if need > cap:
                    self.rcvbuf_cap = need if need < self.cfg.rcvbuf_max else self.cfg.rcvbuf_max
            if copied > self._rs_last:
                self._rs_last = copied
            self._rs_bytes = 0
            self._rs_time = now

    # ------------------------------------------------------------------ output

    def _queue(self, seg: bytes | TcpParts) -> None:
        """Hold a segment made outside `outgoing` for its next call."""
        out = self._out
        if out is _NO_OUT:
            out = self._out = []
        out.append(seg)

    def outgoing(self, now: float) -> list[bytes | TcpParts]:
        """Every segment due now: whole TCP segments (header + payload, checksummed); with
        ``cfg.gather``, data segments as `TcpParts`, valid until the next input or `send`."""
        self._new_from = self.snd_nxt
        out = self._out
        if out:
            self._out = _NO_OUT
        else:
            out = []
        st = self.state
        if st is CLOSED or st is LISTEN:
            return out
        if self._syn_pending:
            self._syn_pending = False
            out.append(self._syn_segment(now))
            self.stats.segs_out += len(out)
            return out
        if st is not SYN_SENT and st is not SYN_RECEIVED and st is not TIME_WAIT:
            # (nothing unsent, tested in line first: the pump that takes a request asks once a
            # request, and `txfast.send_none` spares it the sender and the pacer's step)
            if not self.suspended and (self._snd_base + self._sndbuf.size > self.snd_nxt
                                       or not (txfast.NONE_ENABLED and txfast.send_none(self, now))):
                pacer = self.pacer
                if pacer is None:
                    self._send(now, out)
                else:
                    self._paced_send(pacer, now, out)
            rack = self.rack
            if rack is not None and rack.rearm:
                if self.snd_nxt <= self.snd_una:
                    # nothing in flight, so no probe: `arm_pto`'s first case, in line (the pump
                    # that takes a request takes the ACK of the last answer with it)
                    rack.rearm = False
                    rack.t_pto = INF
                else:
                    rack.arm_pto(self, now)
            if self.snd_wnd == 0 and self.snd_nxt == self.snd_una and self._has_unsent():
                if self._t_persist == INF:
                    self._t_persist = now + self._persist_interval()
            elif self._t_persist != INF:
                self._t_persist = INF
                self._persist_backoff = 0
        if self._probe_now:
            self._probe_now = False
            out.append(self._segment(ACK, self.snd_una - 1, b"", now))
        elif self._ack_now:
            out.append(self._segment(ACK, self.snd_nxt, b"", now))
        self.stats.segs_out += len(out)
        return out

    def _paced_send(self, pacer: Pacer, now: float, out: list) -> None:
        """`_send` within what the pacer lets out now; a deadline for the rest (usnet.proto.tcp.pacing)."""
        mss = self.mss
        cc = self.cc
        if cc.pacing_rate:
            pacer.rate = cc.pacing_rate  # the algorithm's own rate (BBR)
        else:
            pacer.update(cc.cwnd, cc.ssthresh, self.snd_nxt - self.snd_una, self.rto.srtt)
        self._pace_left = pacer.begin(now, mss)
        before = self.stats.bytes_out
        self._pace_held = False
        self._send(now, out)
        held = self._pace_held
        pacer.end(now, self.stats.bytes_out - before, mss, held)
        self._pace_left = UNPACED
        self._t_pace = pacer.next_time if held else INF

    def _has_unsent(self) -> bool:
        return (self._snd_base + self._sndbuf.size > self.snd_nxt
                or (self._fin_queued and not self._fin_sent))

    def _window_field(self) -> int:
        cap = self.rcvbuf_cap
        free = cap - self._rcvq.size
        rcv_nxt = self.rcv_nxt
        cur = self.rcv_adv - rcv_nxt
        if cur < 0:
            cur = 0
        if free > cur:
            thresh = cap >> 1
            if self._rcv_mss < thresh:
                thresh = self._rcv_mss
            wnd = free if free - cur >= thresh else cur  # receiver SWS avoidance
        else:
            wnd = cur  # never shrink
        sc = self.rcv_wscale
        field = (wnd + (1 << sc) - 1) >> sc
        if field > 0xFFFF:
            field = 0xFFFF
        self.rcv_adv = rcv_nxt + (field << sc)
        if self._quick.left and (rcv_nxt != self._last_ack_sent or self._dsack
                                 or (self._reasm is not EMPTY_REASSEMBLY and self._reasm)):
            self._quick.ack_sent()
        self._last_ack_sent = rcv_nxt
        self._ack_now = False
        self._t_delack = INF
        self._rcv_unacked = 0
        return field

    def _segment(self, flags: int, seq: int, payload, now: float) -> bytes | TcpParts:
        """Build an ACK-bearing segment at unwrapped ``seq`` with the current options."""
        if self._ece:
            flags |= ECE
        win = self._window_field()
        # (`is not`: the shared empty queue of an in-order connection needs no __bool__ call)
        sacks = self.sack_ok and ((self._reasm is not EMPTY_REASSEMBLY and self._reasm) or self._dsack)
        if self.ts_ok:
            tsval = self._ts_now(now)
            fit = self._sack_fit(12, payload) if sacks else 0
            if fit <= 0:  # the usual: timestamps only
                return pack_ts(
                    self._psum, self.local_port, self.remote_port, (self.iss + seq) & MASK,
                    (self.irs + self.rcv_nxt) & MASK, flags, win, tsval, self.ts_recent, payload,
                    self.cfg.gather)
            opts = _TSOPT.pack(_TS_MARK, tsval, self.ts_recent) + self._sack_option(min(3, fit))
        elif sacks and (fit := self._sack_fit(0, payload)) > 0:
            opts = self._sack_option(min(4, fit))
        else:
            opts = b""
        return (pack_parts if payload and self.cfg.gather else pack_segment)(
            self._psum, self.local_port, self.remote_port, (self.iss + seq) & MASK,
            (self.irs + self.rcv_nxt) & MASK, flags, win, opts, payload)

    def _sack_fit(self, used: int, payload) -> int:
        """SACK blocks that fit in a segment beside `used` bytes of other options and `payload`.

        A full-sized segment has no room: its payload is the MSS less the usual options, and a
        SACK option on it made a packet the path MTU does not take (IPv6's 1,512 bytes for 1,500:
        EMSGSIZE, and the engine failed). The pure ACKs carry the blocks. A super-segment (more
        than an MSS) is cut to fit its header by `segment_cut`."""
        plen = len(payload)
        if plen > self.mss:
            return 4
        return (self._mss_base - used - plen - 4) // 8  # the option: NOP, NOP, kind, length, 8 a block

    def _sack_option(self, limit: int) -> bytes:
        irs = self.irs
        flat = []
        d = self._dsack
        if d is not None:
            self._dsack = None
            flat.append((irs + d[0]) & MASK)
            flat.append((irs + d[1]) & MASK)
            limit -= 1
            self.stats.dsacks_sent += 1
        fin = self._rx_fin_at  # a FIN beyond a hole is in its block, as Linux's end_seq counts it:
        for lo, hi in self._reasm.blocks(limit):  # the sender's last segment is then wholly SACKed
            flat.append((irs + lo) & MASK)
            flat.append((irs + (hi + 1 if hi == fin else hi)) & MASK)
        n = len(flat)
        return struct.pack(f"!BBBB{n}I", 1, 1, 5, 2 + 4 * n, *flat)

    def _syn_segment(self, now: float) -> bytes:
        cfg = self.cfg
        st = self.state
        if st is SYN_SENT:
            flags = SYN | ECE | CWR if cfg.ecn else SYN  # an ECN-setup SYN asks for ECN
            ack = 0
            ws = self.rcv_wscale if cfg.window_scaling else None
            sack_ok = cfg.sack
            ts = (self._ts_now(now), 0) if cfg.timestamps else None
        else:
            flags = SYN | ACK | ECE if self.ecn_ok else SYN | ACK  # and an ECN-setup SYN-ACK grants it
            ack = (self.irs + 1) & MASK
            ws = self.rcv_wscale if self.ws_ok else None
            sack_ok = self.sack_ok
            ts = (self._ts_now(now), self.ts_recent) if self.ts_ok else None
            self._last_ack_sent = self.rcv_nxt
            self._ack_now = False
        opts = tcp_options(mss=self.mss_local, wscale=ws, sack_ok=sack_ok, ts=ts)
        if self.snd_nxt < 1:
            self.snd_nxt = 1
        if self._t_rtx == INF:
            self._t_rtx = now + self.rto.rto
        self._last_send = now
        return pack_segment(
            self._psum, self.local_port, self.remote_port, self.iss, ack, flags,
            self._syn_window, opts)

    def _pipe(self) -> int:
        """Bytes believed in the network (RFC 6675 "pipe")."""
        sb = self.sb
        una = self.snd_una
        v = self.snd_nxt - una - sb.sacked
        if self.rack is not None:
            v -= self.rack.lost_bytes  # lost and not yet resent (RFC 6675's pipe, RACK's marks)
            return v if v > 0 else 0
        rec = self._recovery
        if rec:
            p = self._high_rxt if self._high_rxt > una else una
            lim = self._lost_limit
            if p < lim:
                v -= (lim - p) - (sb.sacked_between(p, lim) if sb.sacked else 0)
            if rec == _FAST and not self.sack_ok:
                v -= self._dupack_est
        return v if v > 0 else 0

    def _send(self, now: float, out: list) -> None:
        if txfast.ENABLED and txfast.tx_one(self, now, out):
            return  # one segment of new data, nothing special (usnet.proto.tcp.txfast)
        mss = self.mss
        seg_max = self.max_segment if self.max_segment > mss else mss
        cwnd = self.cc.cwnd
        pipe = self._pipe()
        # 1. Loss recovery: resend the holes below the loss limit, lowest first.
        rack = self.rack
        if rack is not None:
            if rack.tlp_now:
                rack.probe(self, now, out)
                pipe = self._pipe()
            if rack.lost_q:
                pipe = rack.retransmit(self, now, out, pipe, cwnd)
                if pipe < 0:
                    return
        elif self._recovery:
            sb = self.sb
            while True:
                una = self.snd_una
                p = self._high_rxt if self._high_rxt > una else una
                lim = self._lost_limit
                if p >= lim:
                    break
                hole = sb.next_hole(p, lim) if sb.starts else (p, lim)
                if hole is None:
                    self._high_rxt = lim
                    self._force_rtx = False
                    break
                hs, he = hole
                n = he - hs
                if n > seg_max:
                    n = seg_max
                if self._force_rtx:
                    self._force_rtx = False
                else:
                    room = cwnd - pipe
                    if room < n:
                        if room < mss:
                            return  # cwnd full: no new data either
                        n = room
                self._emit(out, hs, hs + n, now, True)
                self._high_rxt = hs + n
                pipe += n
        # 2. New data.
        cfg = self.cfg
        data_end = self._snd_base + self._sndbuf.size
        if self.snd_nxt == self.snd_una and now - self._last_send > self.rto.rto:
            self.cc.restart_after_idle()
            cwnd = self.cc.cwnd
        while True:
            nxt = self.snd_nxt
            avail = data_end - nxt
            fin_due = self._fin_queued and not self._fin_sent
            if avail <= 0:
                if self._cork is not None:
                    self._cork.drained()
                if fin_due:
                    self._emit(out, nxt, nxt + 1, now, False)  # a bare FIN needs no window
                elif pipe < cwnd:
                    # out of data with room in the window: the samples measure the application
                    self.rate.check_app_limited(0, mss, pipe, cwnd, rack.lost_bytes if rack is not None else 0)
                return
            n = avail if avail < seg_max else seg_max
            wroom = self.snd_una + self.snd_wnd - nxt
            if n > wroom:
                n = wroom
            room = cwnd - pipe
            if n > room:
                n = room
            if n <= 0:
                return
            pace = self._pace_left
            if n > pace:  # pacing: this much now, the rest at `_t_pace`
                if pace <= 0:
                    self._pace_held = True
                    return
                if pace >= mss:
                    n = pace - pace % mss
            in_flight = nxt > self.snd_una
            if n < avail and n < mss:
                # Window- or cwnd-limited runt: wait for ACKs rather than send a sliver
                # (sender SWS avoidance), unless nothing is in flight to bring ACKs.
                if in_flight and n < (self.max_snd_wnd >> 1):
                    return
            elif n == avail and n % mss and not fin_due and self._cork is not None \
                    and self._cork.holds(now, nxt + n - n % mss):
                if n < mss:
                    return  # TCP_CORK: the partial tail waits (usnet.proto.tcp.cork)
                n -= n % mss  # super-segments: the full ones go
            elif n == avail and n < mss and in_flight and not fin_due and not cfg.nodelay \
                    and (self._cork is None or not self._cork.push):
                return  # Nagle: one small segment outstanding at a time
            end = nxt + n
            if fin_due and end == self._fin_seq:
                end += 1
            self._emit(out, nxt, end, now, False)
            pipe += n
            self._pace_left -= n

    def _emit(self, out: list, start: int, end: int, now: float, rtx: bool) -> None:
        base = self._snd_base
        buf = self._sndbuf
        dend = base + buf.size
        flags = ACK
        pend = end
        if end > dend:  # the FIN is in this range
            flags = ACK | FIN
            pend = dend
        plen = pend - start
        if plen > 0:
            if pend == dend:
                flags |= PSH
            if self._cwr and not rtx:
                flags |= CWR  # the first new data after a slowdown for ECE says so
                self._cwr = False
            if not rtx:
                self._quick.data_out(now, self.cfg.delack)  # an answer: interactive
            payload: memoryview | bytes | None = buf.view(start - base, pend - base)
        else:
            plen = 0
            payload = b""
        out.append(self._segment(flags, start, payload, now))
        payload = None  # release the view before the buffer can be resized
        if self.tx_stamps is not None and plen:
            self.tx_stamps.sent(start, pend, self.rcvbuf_cap - self._rcvq.size)
        stats = self.stats
        stats.bytes_out += plen
        if flags & FIN:
            self._fin_sent = True
        if not rtx:
            self._sent_new(start, end, now)
            return
        if end > self.snd_nxt:
            self.snd_nxt = end
        stats.retransmits += 1
        stats.retransmitted_bytes += plen
        if self._rtt_seq is not None and start < self._rtt_seq:
            self._rtt_seq = None  # Karn
        rack = self.rack
        if rack is not None and self._recovery == _FAST:
            rack.prr.out += end - start
        if self._t_rtx == INF:
            self._t_rtx = now + self.rto.rto
        self._last_send = now

    def _sent_new(self, start: int, end: int, now: float) -> None:
        """The book-keeping of ``[start, end)`` leaving for the first time (`_emit`, and the
        lean path of usnet.proto.tcp.txfast): SND.NXT, the RTT and rate samples, RACK's
        record, PRR's count, the retransmission timer."""
        empty = self.snd_nxt <= self.snd_una  # nothing was in flight (the rate sampler's restart)
        rack = self.rack
        if rack is None:
            self.rate.sent_range(end, now, empty)
        if end > self.snd_nxt:
            self.snd_nxt = end
        if self._rtt_seq is None and not self.ts_ok:
            self._rtt_seq = end
            self._rtt_time = now
        if rack is not None:
            rack.sent(start, end, now, empty)
            if self._recovery == _FAST:
                rack.prr.out += end - start
        if self._t_rtx == INF:
            self._t_rtx = now + self.rto.rto
        self._last_send = now
