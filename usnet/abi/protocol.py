"""Control messages between a client and the nexus domain (docs/architecture.md, "Two domains").

The control path is the only place where an untrusted client talks to the
nexus domain with structured data, so every message is a typed, versioned
``msgspec.Struct`` and every decode is validated: a malformed, oversize or
wrong-direction message becomes one exception type, :class:`ProtocolError`,
which the domain turns into an ``EPROTO`` reply or a dropped session instead
of a crash.

Wire format: one msgpack map per SOCK_SEQPACKET message, tagged by field
``"t"`` with the class name.  Unknown fields are ignored so a later protocol
version can add optional fields; incompatible changes bump
:data:`PROTOCOL_VERSION`, which the client announces in :class:`Hello`.
File descriptors never appear in a message: they travel beside it as
SCM_RIGHTS (see :mod:`usnet.abi.transport`).
"""

from __future__ import annotations

import enum
import errno as _errno
from typing import Annotated, Any, Literal, get_args

import msgspec

__all__ = [
    "LEASE_REQUESTS",
    "MAX_MESSAGE",
    "NOTICES",
    "PROTOCOL_VERSION",
    "REPLY_TYPES",
    "REQUEST_TYPES",
    "STATUS_PART",
    "U32",
    "AddPorts",
    "AdvisoryOpened",
    "ApplyLease",
    "ChannelOpened",
    "CloseChannel",
    "ControlError",
    "Done",
    "EndLease",
    "ErrCode",
    "Error",
    "Family",
    "FlowOpened",
    "FlushQueue",
    "Flushed",
    "Hello",
    "JoinGroup",
    "Kick",
    "Latency",
    "LeaseGranted",
    "LeaseRefusal",
    "LeaseRefused",
    "MulticastOptions",
    "Name",
    "OpenAdvisory",
    "OpenFlow",
    "OpenMonitor",
    "OpenPipe",
    "PacketSize",
    "Ping",
    "Pong",
    "PortsAdded",
    "PosU32",
    "ProtocolError",
    "Rate",
    "ReleaseLease",
    "ReleasePorts",
    "RenewLease",
    "Reply",
    "Request",
    "RequestLease",
    "Resize",
    "ReturnPorts",
    "SourceFilter",
    "Status",
    "StatusReply",
    "Unlisten",
    "Welcome",
    "decode_reply",
    "decode_request",
    "decode_status",
    "encode",
    "encode_status",
    "error_reply",
    "is_notice",
]

PROTOCOL_VERSION = 2  # 2: Status is paged (StatusReply parts)
#: Largest encoded control message (bytes).  Bounds what one client can make
#: the domain allocate and parse per message.
MAX_MESSAGE = 65536

U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF_FFFF)]
PosU32 = Annotated[int, msgspec.Meta(ge=1, le=0xFFFF_FFFF)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
# a multicast source filter's sources (JoinGroup, SourceFilter): 4 (IPv4) or 16 bytes (IPv6) each,
# at most 64 on the wire (the domain takes 10: Linux's igmp_max_msf)
Sources = Annotated[list[Annotated[bytes, msgspec.Meta(min_length=4, max_length=16)]], msgspec.Meta(max_length=64)]
ErrCode = Annotated[str, msgspec.Meta(pattern=r"^E[A-Z0-9]{1,31}$")]


#: Low-latency lease parameters (usnet.domain.lowlat.policy holds the same bounds, for in-process requests).
Rate = Annotated[float, msgspec.Meta(gt=0, le=1e12)]  # bit/s; NaN and inf fail these bounds too
PacketSize = Annotated[int, msgspec.Meta(ge=20, le=65535)]
Latency = Annotated[float, msgspec.Meta(gt=0, le=60.0)]  # seconds
Family = Literal[0, 4, 6]  # a flow's IP version; 0: the remote address's, or IPv4 for a listener


class LeaseRefusal(enum.StrEnum):
    """Why the low-latency agent refused a lease request, renewal or release (LeaseRefused.reason)."""

    BAD_PARAMETERS = "BAD_PARAMETERS"  # a value no lease can have (a packet past the MTU, an unknown class, ...)
    NOT_ENTITLED = "NOT_ENTITLED"  # no policy entry gives this uid/program this service class
    ABOVE_ENTITLEMENT = "ABOVE_ENTITLEMENT"  # entitled to the class, but to less rate or smaller packets
    OVER_SUBSCRIBED = "OVER_SUBSCRIBED"  # the LL share of the netif cannot carry it beside the grants it has
    NO_LL_CAPACITY = "NO_LL_CAPACITY"  # the netif has no LL slots (no link_rate, or ll_share 0)
    LATENCY_UNACHIEVABLE = "LATENCY_UNACHIEVABLE"  # the netif cannot bound the LL wait that low
    UNKNOWN_FLOW = "UNKNOWN_FLOW"  # the channel is not a flow channel of this session
    ALREADY_LEASED = "ALREADY_LEASED"  # the flow holds a lease: renew it, or release it first
    UNKNOWN_LEASE = "UNKNOWN_LEASE"  # no such lease of this session (never granted, released, or expired)


class ProtocolError(ValueError):
    """A control message was malformed, oversize, truncated or of the wrong kind."""


class ControlError(OSError):
    """The domain refused a request with an ``Error`` reply.

    Subclasses OSError so callers can handle it like the system call it stands
    in for: ``errno`` is set from ``code`` when the ``errno`` module knows the
    name (domain-specific codes leave it ``None``).
    """

    def __init__(self, code: str, message: str) -> None:
        num = getattr(_errno, code, None) if code.startswith("E") and code.isupper() else None
        if isinstance(num, int):
            super().__init__(num, f"{code}: {message}")
        else:
            super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:  # keep (code, message) across pickling
        return (type(self), (self.code, self.message))


class _Msg(msgspec.Struct, frozen=True, tag=True, tag_field="t", omit_defaults=True):
    """Base of every control message: tagged map, immutable once built."""


# ---- requests: client -> domain -------------------------------------------------


class Hello(_Msg, frozen=True):
    """First message of a session; the domain answers Welcome or Error(EPROTO)."""

    version: U32
    program: Annotated[str, msgspec.Meta(max_length=255)] = ""


class OpenPipe(_Msg, frozen=True):
    """Open one end of the named user pipe: first opener creates it, second attaches."""

    name: Name
    schema: Name = "default"
    attrs: dict[Name, int] = {}


class OpenFlow(_Msg, frozen=True):
    """Register a flow on a netif's flow switch and open its channel.

    A listener gives only the local port (0: an ephemeral one); a connected
    flow also gives the remote address and port. proto: 17 UDP, 6 TCP.
    family: 4 (IPv4) or 6 (IPv6); 0, the default, means the remote address's
    family, or IPv4 for a listener. A family that contradicts the remote
    address is EINVAL.
    with_channel, when not 0, is a flow channel of the same session whose
    port this listener shares on another netif: a socket bound to the
    wildcard address listens on the loopback netif too, as Linux's does,
    though ports are one namespace per domain.
    reuse_port: SO_REUSEPORT. An unconnected flow that sets it may take a port
    that flows of the same uid which all set it hold; the switch spreads new
    TCP connections and UDP datagrams among them by a hash of the remote
    end. Any other bind of a held port is EADDRINUSE, as on Linux.
    reuse_addr: SO_REUSEADDR (UDP). Such a flow shares the port as reuse_port
    does, but a unicast datagram goes to the most recently opened member when
    that member did not ask for reuse_port, as Linux's lookup takes the newest
    socket first (multicast goes to every member either way).
    """

    netif: Name
    proto: Annotated[int, msgspec.Meta(ge=0, le=255)]
    local_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    remote_addr: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    remote_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    schema: Name = "default"
    attrs: dict[Name, int] = {}
    family: Family = 0
    with_channel: U32 = 0
    connector: bool = False
    reuse_port: bool = False
    # a connector under `usnetd --workers N`: the one of worker `worker` (0 .. N-1), whose blocks
    # hold only that worker's ports (the device steers port p to queue p mod N); 0 elsewhere
    worker: U32 = 0
    reuse_addr: bool = False


class AddPorts(_Msg, frozen=True):
    """Ask for a block of up to `count` ephemeral TCP ports for a connector channel of this session
    (an OpenFlow with connector set). The connector then sends from any of them to any unicast peer,
    and the switch delivers to it what comes to them; its stack picks a port of its blocks for each
    connection with no message. Each port counts as an ephemeral port of the session and uid, and
    the block is cut to what their limits leave. Answered with PortsAdded.
    `ports`: usnetd's own, in its session in a worker (the block it reserved for that worker's
    connector, which the worker holds as it is); from any other session EPERM."""

    channel: U32
    count: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 64
    ports: Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=65535)]], msgspec.Meta(max_length=1024)] | None = None


class ReturnPorts(_Msg, frozen=True):
    """A notice, not a request: the connector gives block `block` back (its ports are all free).
    A socket session is sent no reply (the client does not wait); an in-process one gets Done.
    `answer`: a request instead, answered Done once the ports are gone (usnetd's relay to a worker)."""

    channel: U32
    block: U32
    answer: bool = False


class ReleasePorts(_Msg, frozen=True):
    """A notice, not a request: the connector's connections on `ports` are over (CLOSED, or
    TIME-WAIT ended), so each port, bound to its connection's 4-tuple by the first SYN it sent,
    is free for another. A port of its blocks that is not bound is left as it is; one not of its
    blocks is an error (EINVAL, counted: a notice is answered only to an in-process session).
    `answer`: a request instead, answered Done once the ports are free: the client of a worker's
    connector waits for it before a SYN reuses one (the worker hears the release through usnetd,
    so it could otherwise meet the SYN first); usnetd's relay to a worker sets it too."""

    channel: U32
    ports: Annotated[list[int], msgspec.Meta(max_length=1024)]
    answer: bool = False


class Unlisten(_Msg, frozen=True):
    """The listening socket of flow `channel`, a member of an SO_REUSEPORT group, closed. New
    connections (and datagrams) to the port go to the group's other members from the reply on,
    as from Linux's close; the connections the flow already has stay with it until it closes.
    A flow that is no member: nothing happens. Answered with Done (a request, not a notice: the
    close waits for it, so that no SYN after it reaches the closed listener)."""

    channel: U32


class JoinGroup(_Msg, frozen=True):
    """Flow `channel` (a UDP flow of this session) joins (`join`) or leaves multicast group
    `group` on its netif: 4 bytes (network order) for an IPv4 flow, 16 for an IPv6 one. From then
    on every datagram to (group, the flow's port) is copied to it too. The domain checks it as
    Linux's ip_mc_join_group and __ipv6_sock_mc_join do: EINVAL for an address outside
    224.0.0.0/4 or ff00::/8 or of the other family, EADDRINUSE for a group the flow is in,
    ENOBUFS past 20 IPv4 groups a flow (igmp_max_memberships), ENOMEM past 256 IPv6 ones,
    EADDRNOTAVAIL to leave a group it is not in, EPROTO for a TCP flow. The membership ends
    with the flow. Answered with Done.

    A join's source filter (RFC 3376 §3; default: any source, EXCLUDE {}): `include` (INCLUDE
    mode, source-specific: only `sources`) or not (EXCLUDE `sources`), each source as long as
    the group. Checked as SourceFilter's."""

    channel: U32
    group: Annotated[bytes, msgspec.Meta(min_length=4, max_length=16)]
    join: bool = True
    include: bool = False
    sources: Sources = []


class SourceFilter(_Msg, frozen=True):
    """Flow `channel`'s membership of `group` (JoinGroup) takes a new source filter, the whole
    of it (RFC 3678's full-state setsourcefilter): `include` and `sources`, as JoinGroup's. From
    the reply on a datagram to the group reaches the flow only from a source the filter lets
    through. EADDRNOTAVAIL if the flow is no member; EINVAL for a source not as long as the
    group, a source twice, or INCLUDE {} (a leave is JoinGroup's); ENOBUFS past 10 sources
    (Linux's igmp_max_msf; 64 for an IPv6 group, mld_max_msf), or when the flow's memberships and
    filters would reach Linux's net.core.optmem_max as a socket's are charged; a list longer than 64, or a
    source outside 4..16 bytes, is a protocol error. Answered with Done."""

    channel: U32
    group: Annotated[bytes, msgspec.Meta(min_length=4, max_length=16)]
    include: bool = False
    sources: Sources = []


class MulticastOptions(_Msg, frozen=True):
    """The multicast options of flow `channel` the domain acts on: `loop` (IP_MULTICAST_LOOP),
    whether what it sends to a group reaches the group's members on its own netif too; `all`
    (IP_MULTICAST_ALL), whether it hears a group it did not join when another flow of its port
    did. Both default to Linux's 1. Answered with Done."""

    channel: U32
    loop: bool = True
    all: bool = True


class OpenMonitor(_Msg, frozen=True):
    """A read-only channel that receives a copy of every frame a netif sends and receives.

    filter: a capture filter (usnet.proto.pcapfilter, a subset of pcap-filter
    syntax) the domain evaluates before it copies a frame; "" takes every frame.
    """

    netif: Name
    filter: Annotated[str, msgspec.Meta(max_length=4096)] = ""


class OpenAdvisory(_Msg, frozen=True):
    """Map a netif's interface advisory (NEXUSADV): the reply carries its read-only memfd."""

    netif: Name


class Resize(_Msg, frozen=True):
    """Grow or shrink a channel's rings and/or packet pool without closing it."""

    channel: U32
    ring_size: PosU32 | None = None
    packets: PosU32 | None = None


class CloseChannel(_Msg, frozen=True):
    channel: U32


class Kick(_Msg, frozen=True):
    """Data-path nudge for a client that has no eventfd doorbell."""

    channel: U32


class FlushQueue(_Msg, frozen=True):
    """Drop what a flow channel sent that still waits in its netif's queue (stale media, say).

    Packets the nexus has not taken from the TX ring yet are not touched.
    """

    channel: U32


class Status(_Msg, frozen=True):
    """Ask for part `part` of the domain's status; part 0 takes a new snapshot (StatusReply pages it)."""

    part: U32 = 0


class RequestLease(_Msg, frozen=True):
    """Ask the low-latency agent to serve a flow channel of this session in the LL class.

    rate: bit/s at the link (Ethernet headers count); max_packet: the largest
    IP packet; latency_target: seconds, the longest a packet may wait in the
    domain before the device has it. Granted: LeaseGranted; refused: LeaseRefused.
    """

    channel: U32
    service_class: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    rate: Rate
    max_packet: PacketSize
    latency_target: Latency


class RenewLease(_Msg, frozen=True):
    """Extend a lease by its time to live, from now: LeaseGranted, or LeaseRefused(UNKNOWN_LEASE)."""

    lease: U32


class ReleaseLease(_Msg, frozen=True):
    """Give a lease back: the flow returns to the general class. Done, or LeaseRefused(UNKNOWN_LEASE)."""

    lease: U32


class ApplyLease(_Msg, frozen=True):
    """usnetd to one of its workers (`usnetd --workers`), never from a client: serve flow channel
    `channel` in the LL class under lease `lease`, which usnetd's agent granted (policed to `rate`
    bit/s with `burst` bytes, packets of at most `max_packet`); the worker posts LEASE_GRANTED. Done."""

    channel: U32
    lease: U32
    service_class: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    rate: Rate
    burst: Annotated[int, msgspec.Meta(ge=1, le=0xFFFF_FFFF)]
    max_packet: PacketSize


class EndLease(_Msg, frozen=True):
    """usnetd to one of its workers: lease `lease` on flow channel `channel` ended for `reason` (a
    RevokeReason); the flow goes back to the general class and the worker posts LEASE_REVOKED. Done."""

    channel: U32
    lease: U32
    reason: U32


# ---- replies: domain -> client --------------------------------------------------


class Welcome(_Msg, frozen=True):
    """Accepts a Hello; uid/pid are what SO_PEERCRED said, not what the client claimed."""

    version: U32
    session: U32
    uid: U32
    pid: U32


class ChannelOpened(_Msg, frozen=True):
    """A channel is ready; its memfds/eventfds arrive as SCM_RIGHTS with this message."""

    channel: U32
    role: U32
    schema: str
    layout: bytes


class FlowOpened(_Msg, frozen=True):
    """A flow channel is ready (fds as with ChannelOpened); the addresses the switch enforces.

    family is the flow's IP version (4 or 6); local_addr is the netif's
    address of that family. gso_max, when not 0, is the largest IP packet
    the flow may send as a TCP super-segment (UMD gso_size) for the device to
    cut, and the largest it may receive: the netif segments in its device.
    prefix and gateway are the netif's routes of that family (its connected
    prefix length, its default gateway or None): the client decides with them
    that a destination has no route (usnet.proto.route), as the switch does;
    prefix -1 says nothing is known (every destination is left to the switch).
    """

    channel: U32
    role: U32
    schema: str
    local_addr: str
    local_port: int
    remote_addr: str | None
    remote_port: int | None
    mtu: int
    netif: str
    family: Literal[4, 6] = 4
    gso_max: int = 0
    prefix: int = -1
    gateway: str | None = None
    workers: U32 = 1  # a connector's: how many workers' connectors this netif has (OpenFlow.worker)


class PortsAdded(_Msg, frozen=True):
    """AddPorts's answer: the block's number (to give it back by) and its ports."""

    channel: U32
    block: U32
    ports: list[int]


class AdvisoryOpened(_Msg, frozen=True):
    """A netif's advisory memfd arrives as the one SCM_RIGHTS fd with this message.

    The client maps `size` bytes of it PROT_READ (usnet.abi.advisory); the
    memfd is sealed, so nothing else is possible.
    """

    netif: str
    size: U32


class Ping(_Msg, frozen=True):
    """`usnet ping`: the switch of `netif` sends an ICMP echo request (`send`) from usnet's address to
    `address` with sequence `seq` and `size` payload bytes, and answers with the replies its session's
    requests got since it last asked (Pong). The identifier is the session's own on that netif."""

    netif: Name
    address: Annotated[str, msgspec.Meta(max_length=64)]
    seq: Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)] = 0
    size: Annotated[int, msgspec.Meta(ge=0, le=1472)] = 56
    send: bool = True


class Pong(_Msg, frozen=True):
    """The reply to Ping: echo replies as (seq, ttl, rtt in ns measured by the switch, ICMP bytes)."""

    replies: list[tuple[int, int, int, int]]


class Done(_Msg, frozen=True):
    pass


class Flushed(_Msg, frozen=True):
    """The reply to FlushQueue: how many packets were dropped from the queue."""

    packets: U32


class StatusReply(_Msg, frozen=True):
    """One piece of a status snapshot: join `data` of parts 0 .. parts-1, then `decode_status`."""

    data: bytes
    part: U32
    parts: PosU32


class LeaseGranted(_Msg, frozen=True):
    """A lease (or its renewal): what was granted and until when.

    expires is CLOCK_MONOTONIC seconds (time.monotonic(), the clock of event
    time_ns); ttl is how long a grant or renewal lasts; burst is the bytes the
    policer lets through at once.
    """

    lease: U32
    channel: U32
    service_class: str
    rate: float
    max_packet: int
    latency_target: float
    expires: float
    ttl: float
    burst: int


class LeaseRefused(_Msg, frozen=True):
    """The agent said no: reason is a LeaseRefusal name, message says why in words."""

    reason: Annotated[str, msgspec.Meta(pattern=r"^[A-Z][A-Z_]{0,31}$")]
    message: str = ""


class Error(_Msg, frozen=True):
    """A refusal: ``code`` is an errno-style name ("EINVAL", "EBUSY", ...)."""

    code: ErrCode
    message: str = ""


Request = (Hello | OpenPipe | OpenFlow | OpenMonitor | OpenAdvisory | Resize | CloseChannel | Kick | FlushQueue
           | Status | RequestLease | RenewLease | ReleaseLease | AddPorts | ReturnPorts | ReleasePorts | Ping
           | Unlisten | ApplyLease | EndLease | JoinGroup | SourceFilter | MulticastOptions)
Reply = (Welcome | ChannelOpened | FlowOpened | PortsAdded | AdvisoryOpened | Done | Flushed | StatusReply
         | LeaseGranted | LeaseRefused | Pong | Error)

REQUEST_TYPES: tuple[type, ...] = get_args(Request)
LEASE_REQUESTS = (RequestLease, RenewLease, ReleaseLease)
# requests the domain answers no socket session (`ControlClient.notify`), unless `answer` is set
NOTICES = (ReturnPorts, ReleasePorts)


def is_notice(req: Request) -> bool:
    """A request the domain answers no socket session: a notice (NOTICES) without `answer`."""
    return isinstance(req, NOTICES) and not req.answer
REPLY_TYPES: tuple[type, ...] = get_args(Reply)

_encoder = msgspec.msgpack.Encoder()
# Separate decoders: a reply tag is simply not a valid request, and vice versa.
_request_decoder = msgspec.msgpack.Decoder(Request)
_reply_decoder = msgspec.msgpack.Decoder(Reply)


def encode(msg: Request | Reply) -> bytes:
    """Encode one message; refuses non-messages and anything the peer would reject as oversize."""
    if not isinstance(msg, REQUEST_TYPES + REPLY_TYPES):
        raise TypeError(f"not a control message: {type(msg).__name__}")
    data = _encoder.encode(msg)
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"{type(msg).__name__} encodes to {len(data)} bytes > {MAX_MESSAGE}")
    return data


def _decode(decoder: msgspec.msgpack.Decoder, data: bytes | bytearray | memoryview, what: str) -> Any:
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"{what} of {len(data)} bytes exceeds {MAX_MESSAGE}")
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as e:  # ValidationError is a subclass
        raise ProtocolError(f"bad {what}: {e}") from None
    except RecursionError:  # absurdly nested StatusReply.info
        raise ProtocolError(f"bad {what}: nested too deeply") from None


STATUS_PART = MAX_MESSAGE - 1024  # bytes of status snapshot per StatusReply: room for its framing
_status_decoder = msgspec.msgpack.Decoder(dict[str, Any])


def encode_status(info: dict[str, Any]) -> bytes:
    """The whole status document, to be paged out in StatusReply parts."""
    return _encoder.encode(info)


def decode_status(data: bytes) -> dict[str, Any]:
    """The status document joined from its parts; garbage raises ProtocolError."""
    try:
        return _status_decoder.decode(data)
    except msgspec.DecodeError as e:
        raise ProtocolError(f"bad status document: {e}") from None
    except RecursionError:
        raise ProtocolError("bad status document: nested too deeply") from None


def decode_request(data: bytes | bytearray | memoryview) -> Request:
    """Decode a client message; anything but a valid Request raises ProtocolError."""
    return _decode(_request_decoder, data, "request")


def decode_reply(data: bytes | bytearray | memoryview) -> Reply:
    """Decode a domain message; anything but a valid Reply raises ProtocolError."""
    return _decode(_reply_decoder, data, "reply")


def error_reply(exc: BaseException) -> Error:
    """Map an exception raised while serving a request to the Error reply to send back."""
    if isinstance(exc, ControlError):
        return Error(exc.code, exc.message)
    if isinstance(exc, ProtocolError):
        return Error("EPROTO", str(exc))
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in _errno.errorcode:
        return Error(_errno.errorcode[exc.errno], exc.strerror or str(exc))
    return Error("EINVAL", str(exc) or type(exc).__name__)
