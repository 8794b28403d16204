"""TCP as sans-I/O state machines (RFC 9293; docs/architecture.md, "The protocol stack").

Modules, one job each:

* `config` — states, tunables (`TcpConfig`), event bits and counters;
* `seq` — sequence-number arithmetic modulo 2**32;
* `rto` — the retransmission timeout estimator (RFC 6298);
* `congestion` — NewReno and CUBIC window arithmetic;
* `scoreboard` — the sender's record of SACKed ranges;
* `reassembly` — the receiver's out-of-order queue;
* `connection` — one connection's state machine (`TcpConnection`);
* `endpoint` — demultiplexing, listeners and resets for one address (`TcpEndpoint`).

Nothing here imports a socket, a clock or a thread: callers pass bytes and
``now`` in and take segments and events out.
"""

from usnet.proto.tcp.config import (
    EV_CLOSED,
    EV_CONNECTED,
    EV_EOF,
    EV_ERROR,
    EV_READABLE,
    EV_WRITABLE,
    TcpConfig,
    TcpState,
    TcpStats,
)
from usnet.proto.tcp.congestion import CongestionControl, Cubic, NewReno, make_congestion
from usnet.proto.tcp.connection import TcpConnection, rst_reply
from usnet.proto.tcp.endpoint import EndpointStats, Listener, TcpEndpoint
from usnet.proto.tcp.reassembly import Reassembly
from usnet.proto.tcp.rto import RtoEstimator
from usnet.proto.tcp.scoreboard import Scoreboard

__all__ = [
    "EV_CLOSED", "EV_CONNECTED", "EV_EOF", "EV_ERROR", "EV_READABLE", "EV_WRITABLE",
    "CongestionControl", "Cubic", "EndpointStats", "Listener", "NewReno", "Reassembly",
    "RtoEstimator", "Scoreboard", "TcpConfig", "TcpConnection", "TcpEndpoint", "TcpState",
    "TcpStats", "make_congestion", "rst_reply",
]
