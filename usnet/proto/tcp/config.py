"""What a TCP connection exposes besides its methods: states, tunables, events, counters.

Kept apart from the state machine so that a socket or asyncio layer can
import the vocabulary (``TcpState``, ``TcpConfig``, the ``EV_*`` bits,
``TcpStats``) without the machinery, and so that connection.py holds only
protocol logic.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, fields, replace
from enum import IntEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from usnet.proto.tcp.connection import TcpConnection

__all__ = [
    "CLOSED", "CLOSE_WAIT", "CLOSING", "ESTABLISHED", "EV_CLOSED", "EV_CONNECTED", "EV_EOF",
    "EV_ERROR", "EV_READABLE", "EV_WRITABLE", "FIN_WAIT_1", "FIN_WAIT_2", "LAST_ACK", "LISTEN",
    "MIN_SND_MSS", "SYN_RECEIVED", "SYN_SENT", "TIME_WAIT", "TcpConfig", "TcpState", "TcpStats", "copy_config",
]


# The smallest segment size a peer's MSS option (or a learnt path MTU) can impose, before TCP
# options: Linux's tcp_min_snd_mss (CVE-2019-11479). An MSS of 1 would otherwise turn every
# byte sent into a segment of its own, 40 bytes of headers each, and every ACK into work.
MIN_SND_MSS = 48


class TcpState(IntEnum):
    CLOSED = 0
    LISTEN = 1
    SYN_SENT = 2
    SYN_RECEIVED = 3
    ESTABLISHED = 4
    FIN_WAIT_1 = 5
    FIN_WAIT_2 = 6
    CLOSE_WAIT = 7
    CLOSING = 8
    LAST_ACK = 9
    TIME_WAIT = 10


CLOSED = TcpState.CLOSED
LISTEN = TcpState.LISTEN
SYN_SENT = TcpState.SYN_SENT
SYN_RECEIVED = TcpState.SYN_RECEIVED
ESTABLISHED = TcpState.ESTABLISHED
FIN_WAIT_1 = TcpState.FIN_WAIT_1
FIN_WAIT_2 = TcpState.FIN_WAIT_2
CLOSE_WAIT = TcpState.CLOSE_WAIT
CLOSING = TcpState.CLOSING
LAST_ACK = TcpState.LAST_ACK
TIME_WAIT = TcpState.TIME_WAIT

# Event bits (``TcpConnection.events``), for a socket layer to wake waiters.
EV_CONNECTED = 0x01  # handshake completed
EV_READABLE = 0x02  # data (or EOF, or an error) to read
EV_WRITABLE = 0x04  # send-buffer space freed
EV_EOF = 0x08  # the peer's FIN arrived
EV_CLOSED = 0x10  # the connection reached CLOSED
EV_ERROR = 0x20  # ``error`` was set



@dataclass(slots=True)
class TcpConfig:
    """Per-connection tunables; every field may be overridden by keyword at construction."""

    mss: int | None = None  # clamp below what the MTU allows
    # Segmentation offload: the largest TCP segment (header and payload) the layer
    # below takes and cuts into MSS-sized segments itself; 0: none. With it, bulk
    # data goes out in super-segments of whole MSS multiples (see `segment_cut`).
    gso_max: int = 0
    # Data segments as `TcpParts` (header, view of the send buffer) rather than bytes, for a
    # caller that writes them straight into its packet buffers and is done with them before
    # the connection next takes input or data (usnet.client.engine).
    gather: bool = False
    rcvbuf: int = 128 * 1024  # initial receive buffer (and window)
    rcvbuf_max: int = 6 * 1024 * 1024  # auto-tuning ceiling; sets the window scale
    sndbuf: int = 64 * 1024
    sndbuf_max: int = 4 * 1024 * 1024
    autotune: bool = True
    nodelay: bool = False
    delack: float = 0.040
    delack_segments: int = 2
    keepalive: bool = False
    keepalive_idle: float = 7200.0
    keepalive_interval: float = 75.0
    keepalive_count: int = 9
    rto_initial: float = 1.0
    rto_min: float = 0.2
    rto_max: float = 60.0
    max_retries: int = 15
    # TCP_USER_TIMEOUT (RFC 5482): seconds data may stay unacknowledged before the
    # connection fails with ETIMEDOUT; 0 leaves it to max_retries
    user_timeout: float = 0.0
    syn_retries: int = 6
    synack_retries: int = 5
    time_wait: float = 60.0  # 2*MSL
    congestion: str = "cubic"
    initial_cwnd: int = 10  # segments
    # HyStart++ (RFC 9406): the initial slow start ends when the RTT rises, not only on loss
    hystart: bool = True
    # Linux's internal pacing: new data leaves at (cwnd / srtt) x pacing_ss_ratio % in slow start
    # (cwnd below half of ssthresh), x pacing_ca_ratio % after, in bursts of about 1 ms
    pacing: bool = True
    pacing_ss_ratio: int = 200
    pacing_ca_ratio: int = 120
    sack: bool = True
    timestamps: bool = True
    window_scaling: bool = True
    # RFC 3168 ECN: ask for it when connecting, grant it when a peer's SYN asks (Linux's tcp_ecn=1).
    # A congested queue that marks (usnet's CoDel does) then slows the sender without a loss.
    ecn: bool = True
    dupthresh: int = 3
    # RFC 8985 loss detection by time with SACK (Linux's tcp_recovery=1), and its tail
    # loss probe (tcp_early_retrans=3); without them SACK recovery counts dupthresh
    rack: bool = True
    tlp: bool = True
    challenge_ack_limit: int = 100  # per second
    # The socket's IP_TTL/IPV6_UNICAST_HOPS and IP_TOS/IPV6_TCLASS for the IP headers of this
    # connection's segments (usnet.proto.ipmark; its ECN bits are 0: TCP sets ECN). 0: the defaults.
    # A listener's config carries it to the connections it accepts, as Linux's children inherit it.
    ip_mark: int = 0
    # IP_RECVERR / IPV6_RECVERR: an ICMP error about a synchronised connection is the socket's
    # error at once (`TcpConnection.pending_error`), not only a soft one kept for a timeout
    # (tcp_v4_err, tcp_v6_err with inet->recverr). A listener's children inherit it, as Linux's.
    recverr: bool = False
    # SO_TIMESTAMP(NS): reads learn when the bytes they take arrived (usnet.proto.tcp.rxstamp).
    # A listener's children inherit it, as Linux's copy the socket's flags.
    rx_stamps: bool = False


_CONFIG_VALUES = operator.attrgetter(*(f.name for f in fields(TcpConfig)))


def copy_config(cfg: TcpConfig, **options) -> TcpConfig:
    """A connection's own copy of ``cfg`` (setsockopt changes it), with ``options`` over it.

    As `dataclasses.replace`, but without options (every accept and most connects) it takes
    the values in one C call and passes them by position: ~2.5 us, not ~10 (issue 18).
    """
    if options or type(cfg) is not TcpConfig:
        return replace(cfg, **options)
    return TcpConfig(*_CONFIG_VALUES(cfg))


def _zeroing_init(counters: tuple[str, ...]) -> Any:
    """`__init__(self, conn)` of a class with slot `_c` and `counters`: `_c` is `conn`, the
    counters 0, assigned in one statement (made with exec, as dataclasses make theirs)."""
    if not all(name.isidentifier() for name in counters):
        raise ValueError(f"not counter names: {counters!r}")
    chain = " = ".join(f"self.{name}" for name in counters)
    namespace: dict[str, Any] = {}
    exec(f"def __init__(self, conn):\n    self._c = conn\n    {chain} = 0\n", namespace)
    return namespace["__init__"]


class TcpStats:
    """Counters, plus live views of the estimator and congestion state."""

    __slots__ = (
        "_c", "segs_in", "segs_out", "bytes_in", "bytes_out", "bytes_acked", "bytes_read",
        "bytes_written", "retransmits", "retransmitted_bytes", "fast_retransmits",
        "rto_timeouts", "dup_acks", "challenge_acks", "challenge_acks_suppressed",
        "bad_segments", "out_of_window", "paws_rejected", "bad_acks", "ooo_segments",
        "dup_segments", "keepalive_probes", "window_probes", "sack_reneges",
        "ce_received", "ecn_reductions", "rack_losses", "tlp_probes", "tlp_recoveries",
        "dsacks", "dsacks_sent", "recovery_undos", "sacks_discarded", "ofo_pruned", "ofo_drops",
    )
    _c: TcpConnection
    segs_in: int
    segs_out: int
    bytes_in: int
    bytes_out: int
    bytes_acked: int
    bytes_read: int
    bytes_written: int
    retransmits: int
    retransmitted_bytes: int
    fast_retransmits: int
    rto_timeouts: int
    dup_acks: int
    challenge_acks: int
    challenge_acks_suppressed: int
    bad_segments: int
    out_of_window: int
    paws_rejected: int
    bad_acks: int
    ooo_segments: int
    dup_segments: int
    keepalive_probes: int
    window_probes: int
    sack_reneges: int
    ce_received: int
    ecn_reductions: int
    rack_losses: int  # segments RACK marked lost (RFC 8985), the RTO's not counted
    tlp_probes: int  # tail loss probes sent
    tlp_recoveries: int  # probes that repaired a loss themselves (Linux's TCPLossProbeRecovery)
    dsacks: int  # D-SACKs received: a segment arrived twice (RFC 2883)
    dsacks_sent: int  # D-SACKs sent
    recovery_undos: int  # recoveries found spurious (timestamps or D-SACKs) and undone
    sacks_discarded: int  # SACK blocks ignored: past SND.NXT, empty, or no whole segment (TCPSACKDiscard)
    ofo_pruned: int  # out-of-order blocks dropped to keep the queue in its memory budget (OfoPruned)
    ofo_drops: int  # out-of-order segments dropped for want of room (TCPOFODrop)

    # every counter starts at 0: one chained assignment, made once, not a `setattr` call each
    # (34 calls a connection, a tenth of a connect's in the application: issue 18)
    __init__ = _zeroing_init(__slots__[1:])

    @property
    def srtt(self) -> float | None:
        return self._c.rto.srtt

    @property
    def rttvar(self) -> float:
        return self._c.rto.rttvar

    @property
    def rto(self) -> float:
        return self._c.rto.rto

    @property
    def cwnd(self) -> int:
        return self._c.cc.cwnd

    @property
    def ssthresh(self) -> int:
        return self._c.cc.ssthresh

    @property
    def pacing_rate(self) -> int:
        """Bytes per second new data is paced at (Linux's tcpi_pacing_rate); 0: not paced."""
        p = self._c.pacer
        return int(p.rate) if p is not None else 0

    @property
    def delivery_rate(self) -> int:
        """Bytes per second of the last delivery-rate sample (Linux's tcpi_delivery_rate, from
        usnet.proto.tcp.rate); 0 before the first."""
        return int(self._c.rate.last_rate)

    @property
    def delivery_rate_app_limited(self) -> bool:
        """Whether that sample was app-limited (tcpi_delivery_rate_app_limited)."""
        return self._c.rate.last_app_limited

    @property
    def pacing_holds(self) -> int:
        """Times new data waited for the pacing rate."""
        p = self._c.pacer
        return p.holds if p is not None else 0

    @property
    def hystart_exits(self) -> int:
        """1 if HyStart++ ended the initial slow start on rising delay (RFC 9406)."""
        h = self._c.cc.hystart
        return h.exits if h is not None else 0

    @property
    def css_entries(self) -> int:
        """Times HyStart++'s delay test sent slow start into Conservative Slow Start."""
        h = self._c.cc.hystart
        return h.css_entries if h is not None else 0

    @property
    def css_rounds(self) -> int:
        """Rounds spent in Conservative Slow Start."""
        h = self._c.cc.hystart
        return h.css_rounds if h is not None else 0

    def as_dict(self) -> dict:
        d = {n: getattr(self, n) for n in self.__slots__[1:]}
        d.update(srtt=self.srtt, rttvar=self.rttvar, rto=self.rto, cwnd=self.cwnd,
                 ssthresh=self.ssthresh, pacing_rate=self.pacing_rate, pacing_holds=self.pacing_holds,
                 delivery_rate=self.delivery_rate, delivery_rate_app_limited=self.delivery_rate_app_limited,
                 hystart_exits=self.hystart_exits, css_entries=self.css_entries,
                 css_rounds=self.css_rounds)
        return d

    def __repr__(self) -> str:
        return f"TcpStats({self.as_dict()})"
