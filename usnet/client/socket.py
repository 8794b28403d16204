"""`usnet.socket`: TCP and UDP over usnet, shaped like the standard `socket` module.

An ordinary program swaps ``import socket`` for ``from usnet import socket``.
Which usnet to use comes from `configure(client, netif)`, or else from the
environment: ``USNET_SOCKET`` (usnetd's control socket, default
/run/usnet/usnetd.sock) and ``USNET_NETIF`` (default: the domain's first netif, usnet0 after `usnet up`).

Each bound, listening or connecting TCP socket is one flow channel served by the
process's stack thread (usnet.client.engine); accepted connections share their
listener's channel. A SOCK_DGRAM socket is a UDP flow (`usnet.client.dgram`).
AF_INET and AF_INET6 both work: an AF_INET6 socket is an IPv6 flow (addresses
are 4-tuples, as in the standard module) and takes no IPv4 traffic (as with
IPV6_V6ONLY). Blocking, timeouts (TimeoutError), non-blocking (BlockingIOError)
and errors are the standard module's.

`fileno()` is a kernel descriptor whose readiness is the socket's, exactly
(`engine.Readiness`): select, poll, epoll, selectors and asyncio see a
listener readable only while a connection waits, a connection readable when
recv will not block and writable when send will not block, and a connecting
socket neither until the handshake completes or fails (SO_ERROR then says
which). The module's other names (constants, exceptions, functions that make
no socket) are the standard module's own.
"""

from __future__ import annotations

import errno
import io
import ipaddress
import os
import socket as _std
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from typing import Any, Literal, TypeVar, cast

from usnet.abi.events import DefunctReason
from usnet.abi.paths import DEFAULT_SOCKET, LOOPBACK_NETIF
from usnet.client import rebind as _rebind
from usnet.client import resolver as _names
from usnet.client import rxinfo as _rx
from usnet.client import sockopts as _so
from usnet.client.channel import ChannelDefunct
from usnet.client.engine import FlowEngine, Readiness, connector, delivered, exiting, park_at_exit, runner
from usnet.client.session import Client, DomainGone, WorkerGone
from usnet.client.sigdefer import step
from usnet.client.sockopts import IP_MARKING, check_fixed, ip_mark, ip_option, lookup
from usnet.proto.cmsg import SO_RCVTIMEO as _SO_RCVTIMEO
from usnet.proto.cmsg import SO_SNDTIMEO as _SO_SNDTIMEO
from usnet.proto.cmsg import SOF_TIMESTAMPING_OPT_ID
from usnet.proto.errqueue import SO_EE_ORIGIN_TIMESTAMPING, ErrorReport, as_mapped, pack_cmsg, tx_stamp_report
from usnet.proto.tcp.connection import (
    CLOSE_WAIT,
    CLOSED,
    CLOSING,
    ESTABLISHED,
    LAST_ACK,
    SYN_RECEIVED,
    SYN_SENT,
    TIME_WAIT,
    TcpConnection,
)

# The standard module's names that make no socket are its own objects here, so that
# `from usnet import socket` is a drop-in; what makes sockets (and the resolver's
# entry points, whose usnet versions follow) is defined below.
_MAKES_SOCKETS = frozenset({"socket", "SocketType", "socketpair", "fromfd", "create_connection",
                            "create_server", "has_dualstack_ipv6"})
_STANDARD = [n for n in _std.__all__ if n not in _MAKES_SOCKETS]
globals().update((n, getattr(_std, n)) for n in _STANDARD)

__all__ = [
    "AF_INET", "AF_INET6", "IPPROTO_TCP", "SHUT_RD", "SHUT_RDWR", "SHUT_WR", "SOCK_DGRAM", "SOCK_STREAM",
    "SOL_SOCKET", "SO_KEEPALIVE", "SO_LINGER", "SO_REUSEADDR", "TCP_NODELAY", "TCP_USER_TIMEOUT", "SocketType",
    "configure", "create_connection", "create_server", "error", "gaierror", "getaddrinfo", "getdefaulttimeout",
    "gethostbyaddr", "gethostbyname", "gethostbyname_ex", "getnameinfo", "has_dualstack_ipv6", "herror",
    "setdefaulttimeout", "socket", "timeout",
]
__all__ += [n for n in _STANDARD if n not in __all__]

AF_INET, AF_INET6 = _std.AF_INET, _std.AF_INET6
SOCK_STREAM, SOCK_DGRAM = _std.SOCK_STREAM, _std.SOCK_DGRAM
SOL_SOCKET, SO_REUSEADDR, SO_KEEPALIVE = _std.SOL_SOCKET, _std.SO_REUSEADDR, _std.SO_KEEPALIVE
IPPROTO_TCP, TCP_NODELAY, TCP_USER_TIMEOUT = _std.IPPROTO_TCP, _std.TCP_NODELAY, _std.TCP_USER_TIMEOUT
TCP_CORK, TCP_DEFER_ACCEPT, TCP_QUICKACK, TCP_NOTSENT_LOWAT, SO_BINDTODEVICE = 3, 9, 12, 25, 25
SO_LINGER = _std.SO_LINGER
SHUT_RD, SHUT_WR, SHUT_RDWR = _std.SHUT_RD, _std.SHUT_WR, _std.SHUT_RDWR
error, timeout, gaierror, herror = OSError, TimeoutError, _std.gaierror, _std.herror
MSG_PEEK, MSG_DONTWAIT, MSG_WAITALL, MSG_TRUNC = _std.MSG_PEEK, _std.MSG_DONTWAIT, _std.MSG_WAITALL, _std.MSG_TRUNC
# the same flags as plain ints, for the tests on every call: `int & IntFlag` goes through enum's
# __rand__, a few microseconds each, several times a round trip
_PEEK, _DONTWAIT, _WAITALL, _MORE = int(MSG_PEEK), int(MSG_DONTWAIT), int(MSG_WAITALL), int(_std.MSG_MORE)
# usnet's own "do not wait, whatever the timeout", for os.read/os.write of an O_NONBLOCK
# descriptor (usnet.client.descriptors): past a C int, so no program's flags carry it (CPython's
# recv refuses such a number with OverflowError); MSG_DONTWAIT alone waits within a Python
# timeout, as CPython's (`socket._no_wait`)
_NOWAIT = 1 << 32
_ERRQUEUE = 0x2000  # MSG_ERRQUEUE
_CTRUNC, _TRUNC = 0x8, 0x20  # MSG_CTRUNC, MSG_TRUNC
_IP_RECVERR, _IPV6_RECVERR = _so.IP_RECVERR, _so.IPV6_RECVERR
SO_ERROR, SO_RCVBUF, SO_SNDBUF = _std.SO_ERROR, _std.SO_RCVBUF, _std.SO_SNDBUF
IPPROTO_IPV6, IPV6_V6ONLY = _std.IPPROTO_IPV6, _std.IPV6_V6ONLY
_GLOBAL_DEFAULT_TIMEOUT = _std._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]  # the stdlib's private sentinel

_default: dict[str, Any] = {"client": None, "netif": None, "timeout": None}
_default_lock = threading.Lock()


def configure(client: Client | None = None, netif: str | None = None) -> None:
    """Which usnet domain and netif new sockets use (default: from the environment)."""
    _default["client"], _default["netif"] = client, netif


def _target() -> tuple[Client, str]:
    """The client and netif new sockets use. A client of a usnetd that went away is replaced
    by a new connection to the same socket path, so a program outlives a usnetd restart
    (`usnet down`/`up`): its old connections failed, its new sockets work."""
    with _default_lock:
        c = _default["client"]
        if c is not None and c.path is not None and c.gone:
            fresh = Client.connect(c.path)  # ENETDOWN while none serves it: the old one (and its path) stays
            _default["client"] = fresh
            try:
                c.close()
            except OSError:
                pass  # its control socket is dead already
            c = fresh
        if c is None:
            c = _default["client"] = Client.connect(os.environ.get("USNET_SOCKET", DEFAULT_SOCKET))
        if not (_default["netif"] or os.environ.get("USNET_NETIF")):
            _default["netif"] = _first_netif(c)  # asked once, then kept as if configured
        return c, _default["netif"] or os.environ["USNET_NETIF"]


def _first_netif(client: Client) -> str:
    """The domain's first netif other than its loopback: what a program uses when neither
    `configure` nor USNET_NETIF names one."""
    names = [str(n["netif"]["name"]) for n in client.status()["netifs"]]
    names = [n for n in names if n != LOOPBACK_NETIF]
    if not names:
        raise OSError(errno.ENETDOWN, "the usnet domain has no netif (usnetd's config names none)")
    return names[0]


def getdefaulttimeout() -> float | None:
    return _default["timeout"]


def setdefaulttimeout(t: float | None) -> None:
    _default["timeout"] = t


def _resolver(client: Client | None = None, netif: str | None = None) -> _names.Resolver:
    """Names resolved through this client and netif (default: `configure`, then the environment)."""
    def where() -> tuple[Client, str]:
        if client is not None and netif is not None:
            return client, netif
        dc, dn = _target()
        return client or dc, netif or dn
    return _names.Resolver(where)


def getaddrinfo(host: str | bytes | None, port: int | str | bytes | None, family: int = 0, type: int = 0,
                proto: int = 0, flags: int = 0, *, client: Client | None = None,
                netif: str | None = None) -> list[tuple]:
    """As the standard getaddrinfo: numeric addresses, the hosts file, localhost, then DNS over usnet
    (usnet.client.resolver; its `configure` says which nameservers and hosts file)."""
    return _names.getaddrinfo(host, port, family, type, proto, flags, resolver=_resolver(client, netif))


def gethostbyname(hostname: str | bytes, *, client: Client | None = None, netif: str | None = None) -> str:
    return _names.gethostbyname(hostname, resolver=_resolver(client, netif))


def gethostbyname_ex(hostname: str | bytes, *, client: Client | None = None,
                     netif: str | None = None) -> tuple[str, list[str], list[str]]:
    return _names.gethostbyname_ex(hostname, resolver=_resolver(client, netif))


def gethostbyaddr(ip_address: str | bytes, *, client: Client | None = None,
                  netif: str | None = None) -> tuple[str, list[str], list[str]]:
    return _names.gethostbyaddr(ip_address, resolver=_resolver(client, netif))


def getnameinfo(sockaddr: tuple, flags: int, *, client: Client | None = None,
                netif: str | None = None) -> tuple[str, str]:
    return _names.getnameinfo(sockaddr, flags, resolver=_resolver(client, netif))


def _no_loopback(ip_version: int) -> OSError:
    """What connecting to a loopback address raises when the domain has no loopback netif: Linux's
    answers with its loopback down (127.0.0.1: ENETUNREACH; ::1, which is then on no interface:
    EADDRNOTAVAIL), not the domain's ENODEV, which no program expects."""
    if ip_version == 6:
        return OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
    return OSError(errno.ENETUNREACH, "Network is unreachable")


def _is_loopback(host: str) -> bool:
    """Whether `host` is a literal loopback address (127.0.0.0/8, ::1)."""
    try:
        return _std.inet_pton(AF_INET, host)[0] == 127  # the usual case, without ipaddress (~3 us)
    except OSError:
        pass
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _literal(family: int, address: tuple) -> tuple[str, int, bytes] | None:
    """(host, port, packed) for a numeric address of `family` with an int port, as getaddrinfo
    would give them, without it (~12 us a call); None: getaddrinfo decides (names, scopes, "1.2",
    a port by name, errors)."""
    host, port = address[0], address[1]
    if type(host) is not str or type(port) is not int or not 0 <= port <= 0xFFFF:
        return None
    try:
        packed = _std.inet_pton(family, host)
    except (OSError, ValueError):
        return None
    return _std.inet_ntop(family, packed), port, packed


def _literal_info(host: object, port: object) -> list[tuple] | None:
    """What `getaddrinfo(host, port, 0, SOCK_STREAM)` gives for an address written as inet_ntop
    writes it, with an int port: that one address. None for anything else (getaddrinfo decides).
    A connect to a literal skips the resolver's ~30 calls this way (issue 18)."""
    for family in (AF_INET, AF_INET6):
        lit = _literal(family, (host, port))
        if lit is not None and lit[0] == host:
            return [(family, SOCK_STREAM, IPPROTO_TCP, "", (host, port) if family == AF_INET else (host, port, 0, 0))]
    return None


def _sockaddr(family: int, addr: bytes | str, port: int) -> tuple:
    """The standard module's address tuple: (host, port), or (host, port, 0, 0) for AF_INET6, where
    an IPv4 address (a dual-stack socket's IPv4 connection) is IPv4-mapped, ::ffff:a.b.c.d."""
    if type(addr) is bytes and len(addr) == 4:
        host = _std.inet_ntop(AF_INET, addr)  # an accept's usual case, without ipaddress
    else:
        host = str(ipaddress.ip_address(addr))
    if family != AF_INET6:
        return (host, port)
    return (host if ":" in host else "::ffff:" + host, port, 0, 0)


def _error_message(r: ErrorReport, family: int, bufsize: int, ancbufsize: int,
                   opts: dict[tuple[int, int], Any] | None = None) -> tuple[bytes, list, int, Any]:
    """recvmsg(MSG_ERRQUEUE) of report `r` (both faces): the quoted payload, the IP_RECVERR
    (IPV6_RECVERR) control message (usnet.proto.errqueue) cut as Linux's put_cmsg cuts it to
    `ancbufsize` (MSG_CTRUNC), MSG_ERRQUEUE (MSG_TRUNC for a longer payload) and the quoted
    destination; an AF_INET6 socket reads an IPv4 report with mapped addresses (ipv6_recv_error).
    A transmit stamp comes after its timestamp messages (ip_recv_error's sock_recv_timestamp, by
    the socket's `opts`) and names no address (ip_recv_error gives one only with a port)."""
    if family == AF_INET6:
        r = as_mapped(r)
    stamped = r.origin == SO_EE_ORIGIN_TIMESTAMPING
    msgs = _rx.timestamp_cmsgs(opts or {}, r.stamp, errqueue=True) if stamped else []
    anc, cut = _rx.put_cmsgs([*msgs, pack_cmsg(r)], ancbufsize)
    flags = _ERRQUEUE | (_TRUNC if len(r.payload) > bufsize else 0) | (_CTRUNC if cut else 0)
    return r.payload[:bufsize], anc, flags, None if stamped else _sockaddr(family, r.dst, r.dport)


def create_connection(address: tuple[str, int], timeout: object = _GLOBAL_DEFAULT_TIMEOUT,
                      source_address: tuple[str, int] | None = None, *, all_errors: bool = False,
                      **where: Any) -> socket:
    """As the standard create_connection: each address `getaddrinfo` gives, in turn.

    `where`: `client=` and `netif=`, as for `socket`.
    """
    host, port = address[0], address[1]
    exceptions: list[Exception] = []
    infos = _literal_info(host, port)
    for af, socktype, proto, _canon, sa in infos or getaddrinfo(host, port, 0, SOCK_STREAM, **where):
        sock = None
        try:
            sock = socket(af, socktype, proto, **where)
            if timeout is not _GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)  # type: ignore[arg-type]
            if source_address:
                sock.bind(source_address)
            sock.connect(sa)
            exceptions.clear()  # no reference cycle through the tracebacks
            return sock
        except OSError as exc:
            if not all_errors:
                exceptions.clear()
            exceptions.append(exc)
            if sock is not None:
                sock.close()
    if not exceptions:
        raise OSError("getaddrinfo returns an empty list")
    try:
        if not all_errors:
            raise exceptions[0]
        raise ExceptionGroup("create_connection failed", exceptions)
    finally:
        exceptions.clear()


def has_dualstack_ipv6() -> bool:
    """True, as on Linux: an AF_INET6 socket with IPV6_V6ONLY off takes IPv4 too (`socket._dual`)."""
    return True


def create_server(address: tuple, *, family: int = AF_INET, backlog: int | None = None, reuse_port: bool = False,
                  dualstack_ipv6: bool = False, **where: Any) -> socket:
    """As the standard create_server: a listening TCP socket bound to `address`; an AF_INET6 one
    takes IPv4 too only with `dualstack_ipv6` (IPV6_V6ONLY is set otherwise, as the standard one sets it)."""
    if dualstack_ipv6 and family != AF_INET6:
        raise ValueError("dualstack_ipv6 requires AF_INET6 family")
    sock = socket(family, SOCK_STREAM, **where)
    try:
        sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(SOL_SOCKET, _std.SO_REUSEPORT, 1)
        if family == AF_INET6:
            sock.setsockopt(IPPROTO_IPV6, IPV6_V6ONLY, int(not dualstack_ipv6))
        sock.bind(address)
        if backlog is None:
            sock.listen()
        else:
            sock.listen(backlog)
        return sock
    except OSError as err:
        sock.close()
        raise OSError(err.errno, f"{err.strerror} (while attempting to bind on address {address!r})") from None


_UNSET: Any = object()
_MOVED: Any = object()  # accept's wait: the listener moved to a new flow (`socket._rebind`)
_T = TypeVar("_T")


def _any_name(family: int, v4any: bool) -> str:
    """The wildcard a socket bound to it names: 0.0.0.0, ::, or ::ffff:0.0.0.0 (`_v4any`)."""
    return "0.0.0.0" if family != AF_INET6 or v4any else "::"  # (_sockaddr maps it: ::ffff:0.0.0.0)


_OVER = frozenset((CLOSED, TIME_WAIT, LAST_ACK, CLOSING))  # both ways shut: Linux's tcp_poll says POLLHUP


def _went_away(e: BaseException | None) -> bool:
    """Whether `e` says usnetd went away (killed, or stopped), not that a flow failed."""
    return isinstance(e, DomainGone) or (isinstance(e, ChannelDefunct) and e.reason == DefunctReason.DOMAIN_SHUTDOWN)


def _worker_died(e: BaseException | None) -> bool:
    """Whether `e` says the usnetd worker serving the flow died (usnetd lives on and restarts it):
    the runner heard its liveness socket hang up (`WorkerGone`), or the channel did first."""
    return isinstance(e, WorkerGone) or (isinstance(e, ChannelDefunct) and e.reason == DefunctReason.WORKER_GONE)


def _v6_wildcard_refused(e: OSError, host: object, ip_version: int, netif: str) -> bool:
    """Whether the netif refused "::" for want of an IPv6 address: Linux binds the wildcard all the
    same and takes what comes to the host's IPv6 addresses, here only the loopback netif's ::1
    (tornado and trio.serve_tcp bind every address getaddrinfo gives for "")."""
    return e.errno == errno.EADDRNOTAVAIL and host is None and ip_version == 6 and netif != LOOPBACK_NETIF


def _going(eng: FlowEngine) -> bool:
    """Whether a closed listener's (or bound socket's) flow has nothing left on it: the stack
    thread lets it go (with its lock held, where the stack thread decides it)."""
    return eng.closed or eng.error is not None or eng.idle()


def _wait_gone(engines: Iterable[FlowEngine]) -> None:
    """Wait (bounded) until each of a closed listener's flows is let go by the stack thread and
    its channel closed, so the domain has the close before the next open of its port."""
    for e in engines:
        if not e.closed:
            e.wake()
            with e.lock:
                e.changed.wait_for(lambda: e.closed, 2.0)  # noqa: B023 (the stack thread lets it go now)
        e.gone.wait(2.0)


def _on_loopback(eng: FlowEngine) -> bool:
    """Whether `eng` is a flow on the domain's loopback netif (127.0.0.1, ::1)."""
    return ipaddress.ip_address(eng.info.local_addr).is_loopback


def _open_bound(open_: Callable[[str, Literal[4, 6]], _T], netif: str, host: object, family: Literal[4, 6],
                ip_version: int, dual: bool) -> tuple[_T, str]:
    """A socket's bound flow, TCP's or UDP's (`open_(netif, family)`), and the netif it is on. The
    wildcard IPv6 flow of a netif without IPv6 (`_v6_wildcard_refused`) goes on the domain's
    loopback netif (::1) alone; without one, the netif's refusal stands, unless the socket is
    dual stack (`dual`): its flow is then IPv4's on the netif, the only family its :: takes."""
    try:
        return open_(netif, family), netif
    except OSError as e:
        if not _v6_wildcard_refused(e, host, ip_version, netif):
            raise
        refused = e
    try:
        return open_(LOOPBACK_NETIF, 6), LOOPBACK_NETIF
    except OSError as e:
        err = refused if e.errno == errno.ENODEV else e
    if not dual or err.errno != errno.EADDRNOTAVAIL:
        raise err from None
    return open_(netif, 4), netif


_SOMAXCONN = 4096
_BINDV6ONLY = "/proc/sys/net/ipv6/bindv6only"  # IPV6_V6ONLY's default (0 on Linux: dual stack)
_V4MAPPED = bytes(10) + b"\xff\xff"  # an IPv4-mapped IPv6 address's first 12 bytes (::ffff:0:0/96)
_DUAL_TRIES = 8  # ephemeral ports a dual-stack bind tries for one free in IPv4 too
_detached: dict[int, socket] = {}  # fileno -> a detached socket, until socket(fileno=...) takes it back
# fileno -> the open socket whose descriptor it is (made by fileno, dup or a take-back), so that
# system calls a program makes on the number itself (os.read, os.write, os.sendfile, os.close:
# multiprocessing.connection, pyftpdlib) reach the connection: `by_descriptor`, usnet.patch's os.
_descriptors: dict[int, socket] = {}
_held: dict[int, socket] = {}  # fileno -> a detached socket taken back for its descriptor's system calls
# Blocking calls without a Python timeout waiting now, per socket (changed under its engine's
# lock), and the sockets closed meanwhile: as the kernel's system call holds the file, the call
# goes on and the socket ends when the last such call returns (`socket._wait`, `_real_close`).
# Module tables, not attributes: a socket's instance dict stays under CPython's shared-key limit.
_in_call: dict[socket, int] = {}
_close_after_call: set[socket] = set()


def duplicated(fd: int) -> socket | None:
    """The open usnet socket whose descriptor `fd` duplicates (the same open file, as os.dup
    makes: socket.fromfd dups the number it is given), or None. Asked only by socket(fileno=...)
    of a descriptor that is no usnet socket's own: one fstat per usnet descriptor in use."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    for d, s in list(_descriptors.items()):
        try:
            o = os.fstat(d)
        except OSError:
            continue
        if (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino) and d != fd and not s._closed:
            return s
    return None


def adopts(fd: int) -> bool:
    """Whether `socket(fileno=fd)` makes a usnet socket: `fd` is a detached usnet socket's
    descriptor, or a duplicate of an open one's (`duplicated`); else it is a kernel socket's."""
    return fd in _detached or fd in _held or duplicated(fd) is not None


def by_descriptor(fd: int) -> socket | None:
    """The usnet socket whose descriptor `fd` is, or None (a kernel descriptor).

    A usnet socket's descriptor only shows its readiness (an AF_UNIX socket: `Readiness`); bytes a
    program writes to it with os.write or os.sendfile would vanish there, and os.read would take
    the readiness byte. So a program that uses the number itself gets the socket here: an open one,
    or a detached one (multiprocessing.connection detaches, then reads and writes the number),
    which is taken back and held until the descriptor is closed or `socket(fileno=...)` takes it."""
    s = _descriptors.get(fd)
    if s is not None:
        return s
    if fd in _detached:
        s = socket(fileno=fd)
        _held[fd] = s
        return s
    return None
# A closed listener's flows (its netif's, its loopback half) stay while its connections finish
# (TIME-WAIT, or still open): (client, netif, IP version, port) -> (engine, loopback half or None,
# whether it had SO_REUSEADDR). A bind with SO_REUSEADDR takes them over (`_take_lingering`).
_lingering: dict[tuple[int, str, int, int], tuple[FlowEngine, tuple[FlowEngine, ...], bool]] = {}
_lingering_lock = threading.Lock()
# This process's socket objects that have a flow (TCP: bound, listening, connected or accepted;
# UDP: bound or sent from): what a fork() shares with the child (usnet.client.inherit)
open_sockets: weakref.WeakSet[socket] = weakref.WeakSet()


def _sysctl(path: str, default: int) -> int:
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return default


# SO_RCVBUF/SO_SNDBUF as Linux takes them: clamped to the maximum, doubled for bookkeeping
# overhead (what getsockopt reads back), never below the least; usnet's buffer is the half.
_BUF_LIMITS = {SO_RCVBUF: ("/proc/sys/net/core/rmem_max", 2304), SO_SNDBUF: ("/proc/sys/net/core/wmem_max", 4608)}
# TCP_KEEPIDLE, TCP_KEEPINTVL (seconds) and TCP_KEEPCNT: Linux's upper bounds (the least is 1)
_KEEPALIVE_LIMITS = {_std.TCP_KEEPIDLE: 32767, _std.TCP_KEEPINTVL: 32767, _std.TCP_KEEPCNT: 127}
_TOS_OPTS = ((_std.IPPROTO_IP, 1), (IPPROTO_IPV6, 67))  # IP_TOS, IPV6_TCLASS
_ECT0 = 2  # the ECN codepoint ECT(0) (RFC 3168)
_LOWAT_KEY = (_std.SOL_SOCKET, _so.SO_RCVLOWAT)
_KEEPALIVE_OPTS = frozenset([(_std.SOL_SOCKET, _std.SO_KEEPALIVE)] + [(_std.IPPROTO_TCP, o) for o in _KEEPALIVE_LIMITS])


class socket:
    """A usnet socket: TCP (SOCK_STREAM) here; SOCK_DGRAM makes a `usnet.client.dgram.DatagramFace`."""

    # Rarely set, so defaults of the class: an instance's attributes stay few enough (30 at most)
    # for CPython to share one key table among all sockets' dicts; past that every socket's dict
    # is a table of its own, 1.3 KB more per connection (measured: `usnet bench scale`'s memory).
    _held: tuple[FlowEngine, ...] = ()  # a closed listener's other flows, bind took it over
    _refused: OSError | None = None  # why a rebind could not be (`_rebind_failed`): its calls raise it
    # a listener whose usnetd went away: it listens again once one is back (a class default: rare;
    # it leaves room in the instance's shared key table for `_accepts_seen` below)
    _orphan = False
    # a listener's readiness was last set at this count of its engines' accept-queue changes
    # (`TcpEndpoint.accept_moves`, summed); -1: never (a class default: only listeners set it)
    _accepts_seen = -1

    def __new__(cls, family: int = AF_INET, type: int = SOCK_STREAM, *args: Any, **kwargs: Any) -> Any:
        if cls is socket and type & 0xF == SOCK_DGRAM:
            from usnet.client.dgram import DatagramFace

            cls = DatagramFace
        return object.__new__(cls)

    def __init__(self, family: int = AF_INET, type: int = SOCK_STREAM, proto: int = 0,
                 fileno: int | None = None, *, client: Client | None = None, netif: str | None = None) -> None:
        if fileno is not None:
            self._adopt(fileno)
            return
        if family not in (AF_INET, AF_INET6) or type & 0xF != SOCK_STREAM or proto not in (0, _std.IPPROTO_TCP):
            raise OSError(errno.EAFNOSUPPORT, "usnet.socket carries AF_INET and AF_INET6, SOCK_STREAM and SOCK_DGRAM")
        # unconnected: POLLHUP | POLLOUT, as Linux says
        self._init_face(family, _std.SOCK_STREAM, proto, type, Readiness(True, True), client, netif)
        self._engine: FlowEngine | None = None
        self._owns_engine = False
        self._nodelay = False
        self._user_timeout = 0.0  # seconds (TCP_USER_TIMEOUT is set in milliseconds)
        self._abort_on_close = False  # SO_LINGER on with a zero timeout: close sends RST
        self._connected = False  # connect reported success (a later connect gives EISCONN)
        self._shut_rd = False

    def _init_face(self, family: int, kind: int, proto: int, flags: int, ready: Readiness,
                   client: Client | None, netif: str | None) -> None:
        """What every usnet socket object holds, stream or datagram (DatagramFace calls it too)."""
        # (the enums themselves, as a connect passes them, need no lookup: two Python calls each)
        self.family = family if type(family) is _std.AddressFamily else _std.AddressFamily(family)
        self.type = kind if type(kind) is _std.SocketKind else _std.SocketKind(kind)
        self.proto = proto
        self._timeout: float | None = 0.0 if flags & _std.SOCK_NONBLOCK else getdefaulttimeout()
        self._port = 0
        self._conn: TcpConnection | None = None
        self._listening = False
        self._closed = False  # close() was called (the connection may live on in a makefile)
        self._dead = False  # really closed: no file refers to it any more
        self._io_refs = 0
        self._ready = ready
        self._fd = -1  # `fileno` makes the descriptor when first asked (Readiness)
        self._share = [1]  # how many socket objects (dup) share this connection
        self._opts: dict[tuple[int, int], Any] = {}  # what setsockopt was given, for getsockopt
        self._linger: int | None = None  # SO_LINGER on: close waits up to this many seconds for delivery
        self._reported: OSError | None = None  # the error SO_ERROR or connect already reported
        self._where = (client, netif)  # None: `configure` or the environment decides
        self._wildcard = False  # bound to 0.0.0.0 or :: (or ::ffff:0.0.0.0)
        self._v4any = False  # an AF_INET6 socket bound to ::ffff:0.0.0.0: IPv4's wildcard alone, as Linux's
        # a wildcard socket's other flows, sharing its port, lock and watchers: the IPv4 flow of a
        # dual-stack AF_INET6 socket (`_dual`, made by bind), and a listener's on the loopback netif
        self._halves: tuple[FlowEngine, ...] = ()
        self._netif = ""  # the netif bind chose

    def _target(self, host: str | None = None) -> tuple[Client, str]:
        """The domain and netif; a loopback `host` (127.0.0.0/8, ::1) is the domain's loopback netif."""
        client, netif = self._where
        netif = self._opts.get((SOL_SOCKET, SO_BINDTODEVICE)) or netif  # a name `_device` checked
        if client is None or netif is None:
            dc, dn = _target()
            client, netif = client or dc, netif or dn
        if host is not None and _is_loopback(host):
            netif = LOOPBACK_NETIF
        return client, netif

    # -- the standard surface -------------------------------------------------------

    @property
    def timeout(self) -> float | None:
        return self._timeout

    def settimeout(self, t: float | None) -> None:
        if t is not None and t < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = None if t is None else float(t)

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    def fileno(self) -> int:
        """A descriptor whose readiness is this socket's (see the module docstring); -1 once closed.
        Made on first use, under the lock of the engine that sets its state."""
        if self._dead:
            return -1
        if self._fd < 0:
            eng = self._engine
            if eng is None:
                self._fd = self._ready.fileno()
            else:
                with eng.lock:
                    self._fd = self._ready.fileno()
            _descriptors.setdefault(self._fd, self)  # (a `reference` shares the number: the socket keeps it)
        return self._fd

    def bind(self, address: tuple) -> None:
        """Take the port now, as the kernel does (EADDRINUSE here, getsockname says which);
        an address other than the netif's (or the wildcard) is EADDRNOTAVAIL."""
        self._need_open()
        if self._engine is not None:
            raise OSError(errno.EINVAL, "Invalid argument")
        host, port = self._bind_args(address)
        self._v4any = host is not None and host.is_unspecified  # ::ffff:0.0.0.0: IPv4's wildcard alone
        if self._v4any:
            host = None
        client, netif = self._target(None if host is None else str(host))
        dual = host is None and self._dual() and not self._v4any
        if port and _lingering:
            self._let_closed_go(client, port)
        for attempt in range(_DUAL_TRIES):
            eng, where = self._bind_flow(client, netif, host, port, dual)
            try:
                halves = self._v4_half(client, netif, eng) if dual and eng.family == 6 else ()
            except OSError as e:
                eng.close()
                if e.errno == errno.EADDRINUSE and port == 0 and attempt + 1 < _DUAL_TRIES:
                    continue  # the port it chose is IPv6's only: Linux takes one free in both
                raise e from None
            break
        self._port = eng.info.local_port
        self._wildcard = host is None
        self._netif = where
        self._halves = halves
        self._attach(eng, owns=True)
        for h in halves:
            runner().add(h)  # served, and let go when the socket closes, as its own flow

    def _bind_flow(self, client: Client, netif: str, host: Any, port: int, dual: bool) -> tuple[FlowEngine, str]:
        """The bound flow of this socket's own family (`dual`: IPv4's where IPv6 is nowhere, the
        only family a dual-stack :: then takes), and the netif it is on."""
        v4 = (host is not None and host.version == 4) or self._v4any  # (a mapped address: IPv4)
        family: Literal[4, 6] = 4 if v4 else self._ip_version
        try:
            eng, netif = _open_bound(lambda n, f: FlowEngine(client, n, port, family=f, reuse_port=self._reuse_port()),
                                     netif, host, family, family, dual)
        except OSError as e:
            if e.errno == errno.ENODEV and netif == LOOPBACK_NETIF:
                # a loopback address, and a domain without a loopback netif: the address is on no
                # interface, which Linux's bind says as EADDRNOTAVAIL (aiosmtpd probes ::1 so)
                raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address") from None
            if e.errno != errno.EADDRINUSE or not port:
                raise e from None
            eng = self._take_lingering(client, netif, port, e)
        if host is not None and ipaddress.ip_address(eng.info.local_addr) != host:
            eng.close()
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        return eng, netif

    def _dual(self) -> bool:
        """A dual-stack socket: AF_INET6 with IPV6_V6ONLY off (Linux's default, net.ipv6.bindv6only
        0), so bound to :: it takes IPv4 too, its peers named as IPv4-mapped addresses."""
        if self.family != AF_INET6:
            return False
        v6only = self._opts.get((IPPROTO_IPV6, IPV6_V6ONLY))
        return not (_sysctl(_BINDV6ONLY, 0) if v6only is None else v6only)

    def _v4_half(self, client: Client, netif: str, eng: FlowEngine) -> tuple[FlowEngine, ...]:
        """A dual-stack socket bound to ::: its IPv4 flow on the netif, on the same port, taken at
        bind as Linux takes the port in both families (EADDRINUSE if IPv4's is held). None where
        the netif has no IPv4 address (Linux's :: then takes what comes to the others)."""
        held = [e for e in self._held if e.family == 4 and not e.closed and not _on_loopback(e)]
        if held:  # a closed listener's, taken over with its flow (`_take_lingering`)
            held[0].release_when_idle = False
            return (held[0],)
        try:
            return (FlowEngine(client, netif, eng.info.local_port, family=4, share=eng,
                               reuse_port=self._reuse_port()),)
        except OSError as e:
            if e.errno in (errno.EADDRNOTAVAIL, errno.ENODEV):
                return ()
            raise

    def _take_lingering(self, client: Client, netif: str, port: int, refused: OSError) -> FlowEngine:
        """usnetd says the port is in use, and a listener of this process that closed holds it.
        With nothing left on it, Linux would have freed the port at its close: the flow is let go
        now (its close reaches usnetd a little after the program's), and the port asked for again.
        With connections still on it, Linux lets a new listener bind the port (a server restarts at
        once) where both sockets asked for SO_REUSEADDR; so the new socket takes that flow over,
        with its connections. Otherwise `refused` (EADDRINUSE) stands."""
        key = (id(client), netif, self._ip_version, port)
        with _lingering_lock:
            held = _lingering.get(key)
        if held is None:
            raise refused
        eng, halves, reuse = held
        with eng.lock:
            if not _going(eng):  # the stack thread decides under this lock whether it lets the flow go
                if not (reuse and self._opts.get((SOL_SOCKET, SO_REUSEADDR))):
                    raise refused
                eng.release_when_idle = False
                self._held = tuple(h for h in halves if not h.closed)
                for h in self._held:
                    h.release_when_idle = False
                with _lingering_lock:
                    _lingering.pop(key, None)
                return eng
        with _lingering_lock:
            _lingering.pop(key, None)
        _wait_gone((eng, *halves))
        return FlowEngine(client, netif, port, family=eng.family, reuse_port=self._reuse_port())

    def _let_closed_go(self, client: Client, port: int) -> None:
        """A listener of this process that closed with nothing left on it holds `port` (in either
        family, on any netif) until the stack thread lets its flows go and usnetd hears of it;
        Linux freed the port at the close, so bind waits for that first (milliseconds): else a
        dual-stack bind could find IPv6's port free and IPv4's not yet."""
        with _lingering_lock:
            found = [(k, v) for k, v in _lingering.items() if k[0] == id(client) and k[3] == port]
        for key, (eng, halves, _) in found:
            with eng.lock:
                if not _going(eng):
                    continue  # connections on it: SO_REUSEADDR may take it over (`_take_lingering`)
            with _lingering_lock:
                _lingering.pop(key, None)
            _wait_gone((eng, *halves))

    def _reuse_port(self) -> bool:
        """SO_REUSEPORT was set before bind: the port may be shared (usnet.abi.protocol.OpenFlow)."""
        return bool(self._opts.get((SOL_SOCKET, _std.SO_REUSEPORT)))

    def _bind_args(self, address: Any) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address | None, int]:
        """(the address, None for the wildcard; the port) of a bind address of this family."""
        if not isinstance(address, tuple) or len(address) not in ((2,) if self.family == AF_INET else (2, 3, 4)):
            raise TypeError(f"{_std.AddressFamily(self.family).name} address must be a tuple (host, port)")
        host, port = address[0], address[1]
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise OverflowError("bind(): port must be 0-65535.")
        if host in ("", "0.0.0.0", "::", None):
            return None, port
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = ipaddress.ip_address(getaddrinfo(host, port, self.family, SOCK_STREAM)[0][4][0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            # ::ffff:a.b.c.d: that IPv4 address, for a dual-stack socket (inet6_bind; EINVAL with IPV6_V6ONLY);
            # ::ffff:0.0.0.0 is IPv4's wildcard alone (0.0.0.0 here: bind takes it as `_v4any`)
            if self.family != AF_INET6 or not self._dual():
                raise OSError(errno.EINVAL, "Invalid argument")
            return ip.ipv4_mapped, port
        if ip.version != self._ip_version:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return (None if ip.is_unspecified else ip), port

    def listen(self, backlog: int = min(_std.SOMAXCONN, 128)) -> None:
        """Listen; again on a listening socket, set the backlog (as Linux does)."""
        self._need_open()
        if self._conn is not None:
            raise OSError(errno.EINVAL, "Invalid argument")
        backlog = _SOMAXCONN if backlog < 0 else min(backlog, _SOMAXCONN)  # as Linux: 0 lets one wait
        eng = self._engine
        if not self._listening and eng is not None and self._port in eng.tcp.listeners:
            # another object of this socket (a dup; a reference another process holds, usnet.client.
            # inherit) listens already: they are one socket, so this one listens too, as on Linux
            with eng.lock:
                self._halves = next((w._halves for w in eng.watchers if getattr(w, "_listening", False)
                                     and w._port == self._port), self._halves)
            self._listening = True
        if self._listening:
            eng = self._engine
            assert eng is not None
            with eng.lock:
                for lst in self._listeners():
                    lst.backlog = backlog
            return
        if self._engine is None:
            self.bind(("", 0))
        eng = self._engine
        assert eng is not None
        lo = self._loopback_halves(eng, self._halves)
        with eng.lock:
            self._halves += lo  # their watchers are the engine's: this socket hears them all
            self._listen_on((eng, *self._halves), backlog)
            self._listening = True
            self._update()
        for h in lo:
            runner().add(h)

    def _listen_on(self, engines: Iterable[FlowEngine], backlog: int) -> None:
        """Listen on each of a listener's flows, each with its own netif's TCP config (no
        segmentation offload on lo) and the socket's options. With the lock held."""
        for e in engines:
            e.tcp.listen(self._port, backlog=backlog, config=replace(e.tcp.config, **self._buffer_options(),
                                                                     recverr=self._tcp_recverr(e.family == 4)),
                         defer_accept=self._defer_retrans())

    def _listeners(self) -> list[Any]:
        """The listener of each of this socket's flows (`usnet.proto.tcp` Listener). With the lock held."""
        eng = self._engine
        if eng is None:
            return []
        return [lst for e in (eng, *self._halves) if (lst := e.tcp.listeners.get(self._port)) is not None]

    def _tcp_recverr(self, v4: bool) -> bool:
        """Whether a connection of this socket (`v4`: over IPv4) reports ICMP errors at once:
        IP_RECVERR for IPv4, IPV6_RECVERR for IPv6, as tcp_v4_err and tcp_v6_err read them (so
        an AF_INET6 socket's IPv4-mapped connection reads IP_RECVERR, as Linux's does)."""
        key = (_std.IPPROTO_IP, _IP_RECVERR) if v4 else (IPPROTO_IPV6, _IPV6_RECVERR)
        return bool(self._opts.get(key))

    def _defer_retrans(self) -> int:
        """TCP_DEFER_ACCEPT as the endpoint's listener takes it (SYN-ACK retransmissions)."""
        return _so.defer_retrans(self._opts.get((IPPROTO_TCP, TCP_DEFER_ACCEPT), 0))

    def _loopback_halves(self, eng: FlowEngine, others: tuple[FlowEngine, ...]) -> tuple[FlowEngine, ...]:
        """A listener bound to the wildcard address listens on the domain's loopback netif too, as
        Linux's 0.0.0.0 (::) takes connections to 127.0.0.1 (::1): a flow there for each family it
        takes (a dual-stack one's IPv4 flow `others` gets its own), sharing the port and the
        engine's lock, so one accept (and one readiness) serves them all. None where that cannot
        be (bound to an address, on the loopback netif already, or a domain without one)."""
        wanted = [e for e in (eng, *others) if not _on_loopback(e)] if self._wildcard else []
        held = self._held
        if held:
            del self._held  # the class's () again
        families = {e.family for e in wanted}
        kept = {h.family: h for h in held if _on_loopback(h) and h.family in families}  # taken over
        for h in held:
            if h not in others and h not in kept.values():
                with h.lock:  # a closed listener's flow this socket does not listen on: it goes when idle
                    h.release_when_idle = True
                h.wake()
        client, _ = self._target()
        made = []
        for e in wanted:
            held_one = kept.get(e.family)
            if held_one is not None:
                made.append(held_one)
                continue
            try:
                made.append(FlowEngine(client, LOOPBACK_NETIF, self._port, family=e.family, share=e,
                                       reuse_port=self._reuse_port()))
            except OSError:  # no loopback netif (ENODEV), or it cannot take the port: the netif's own only
                pass
        return tuple(made)

    def accept(self) -> tuple[socket, tuple]:
        t, eagain = self._limit("accept")
        deadline = None if t is None else time.monotonic() + t
        while True:
            eng = self._need_engine()
            if not self._listening:
                raise OSError(errno.EINVAL, "Invalid argument")
            left = None if deadline is None or t == 0 else max(0.0, deadline - time.monotonic())
            got = self._wait(partial(self._accepted, eng), "accept", t if t == 0 else left, eagain)
            if got is not _MOVED:  # (moved: the listener listens again on a new flow, `_rebind`)
                break
        conn, on = got
        # its protocol number as the listener's, as the kernel's accept gives it (asyncio turns
        # Nagle off only for a socket whose proto is IPPROTO_TCP)
        child = socket(self.family, SOCK_STREAM, self.proto, client=self._where[0], netif=self._where[1])
        child._timeout = self._timeout if self._timeout != 0.0 else getdefaulttimeout()  # as accept(2): blocking
        child._port = self._port
        child._nodelay, child._user_timeout = self._nodelay, self._user_timeout  # inherited, as in Linux
        child._opts = dict(self._opts)
        with eng.lock:
            child._apply_options(conn)
        child._attach(on, owns=False, conn=conn)
        return child, _sockaddr(self.family, conn.remote_addr, conn.remote_port)

    def _accepted(self, eng: FlowEngine) -> tuple[TcpConnection, FlowEngine] | None:
        """The next connection to accept and its engine: the netif's, then its other flows';
        _MOVED once the listener listens on a new flow (`_rebind`)."""
        if self._engine is not eng:
            return _MOVED
        if not self._listening:  # shut down (`_shutdown_listener`) while this waited
            raise OSError(errno.EINVAL, "Invalid argument")
        conn = eng.tcp.accept(self._port)
        if conn is not None:
            return conn, eng
        for h in self._halves:
            conn = h.tcp.accept(self._port)
            if conn is not None:
                return conn, h
        return None

    def connect(self, address: tuple) -> None:
        """As the standard connect: BlockingIOError (EINPROGRESS) at once when non-blocking."""
        err = self._connect(address)
        if err:
            raise OSError(err, os.strerror(err))

    def connect_ex(self, address: tuple) -> int:
        """As connect, but the error's number is returned (0: connected) instead of raised."""
        try:
            return self._connect(address)
        except _std.gaierror:
            raise
        except TimeoutError as e:
            return e.errno or errno.EAGAIN
        except OSError as e:
            if e.errno is None:
                raise
            return e.errno

    def _connect(self, address: tuple) -> int:
        """0 once connected; EINPROGRESS/EALREADY for a non-blocking call; raises what failed."""
        self._need_open()
        if self._listening or self._connected:
            return errno.EISCONN
        if self._conn is None:
            lit = _literal(self.family, address)  # create_connection resolved it already
            if lit is not None:
                host, port, raddr = lit
            else:
                host, port = getaddrinfo(address[0], address[1], self.family, SOCK_STREAM,
                                         client=self._where[0], netif=self._where[1])[0][4][:2]
                raddr = ipaddress.ip_address(host).packed
            family = self._ip_version
            if raddr[:12] == _V4MAPPED:  # ::ffff:a.b.c.d: IPv4, for a dual-stack socket (tcp_v6_connect)
                if not self._dual():
                    raise OSError(errno.ENETUNREACH, "Network is unreachable")
                raddr, family = raddr[12:], 4
                host = _std.inet_ntop(AF_INET, raddr)
            # The call's time counts from here, as the kernel's connect(2) with a timeout does from
            # its start: a first connect's connector (channel, ports: a few round trips to usnetd,
            # 10-100 ms) is inside the caller's timeout, not before it (redis-py's first
            # socket_connect_timeout=0.5 to a dead address took 0.56-0.61 s)
            began = time.monotonic()
            client, netif = self._target(host)
            try:
                if self._engine is not None:  # bound: the port goes over to the connected flow
                    self._drop_engine()
                    eng = FlowEngine(client, netif, self._port, remote=(host, port), family=family)
                    self._port = eng.info.local_port
                    owns = True
                else:  # the process's connector on this netif carries it: one channel for all of them
                    eng = connector(client, netif, family)
                    owns = False
            except OSError as e:
                if e.errno == errno.ENODEV and netif == LOOPBACK_NETIF:
                    raise _no_loopback(family) from None
                raise
            # a free port of the connector's blocks: no message to the domain, so taken in the hold
            port_in_hold = not owns and eng.port_at_hand()
            if not owns and not port_in_hold:  # a block to ask for: a round trip, outside any hold
                self._port = eng.take_port(raddr, port)
            # One step for the whole call (usnet.client.sigdefer): the port, the connection made and
            # attached, its SYN sent, and the wait for the handshake (which lets the signals through
            # while it sleeps, `_wait`) are one hold, not three: two mask pairs fewer a connect (issue 18).
            with step:
                if port_in_hold:
                    self._port = eng.take_port(raddr, port)
                try:
                    with eng.lock:
                        conn = eng.tcp.connect(raddr, port, time.monotonic(), local_port=self._port,
                                               **self._buffer_options())
                        self._apply_options(conn)
                except BaseException:
                    if not owns:
                        eng.port_unused(self._port)
                    raise
                self._attach(eng, owns=owns, conn=conn)
                if not owns:
                    eng.kick()  # its SYN goes now, from this thread
                if self._timeout == 0.0:
                    return errno.EINPROGRESS  # always, as Linux: even if the handshake already finished
                left: Any = _UNSET if self._timeout is None else max(self._timeout - (time.monotonic() - began), 1e-9)
                if not self._handshake_ended(conn, left):
                    return errno.EINPROGRESS
        else:
            conn = self._conn
            if not self._handshake_ended(conn):
                return errno.EALREADY
        err = conn.error or (self._engine.error if self._engine is not None else None)
        if err is not None:
            if err is self._reported:  # SO_ERROR told it already: Linux's connect says ECONNABORTED
                return errno.ECONNABORTED
            self._reported = err
            self._updated()  # POLLERR goes
            raise err
        if conn.state is CLOSED:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        self._connected = True
        return 0

    def _handshake_ended(self, conn: TcpConnection, left: Any = _UNSET) -> bool:
        """Wait (`_wait`, within `left`) until `conn`'s handshake has ended, either way; False if a
        non-blocking socket would have to wait for it (BlockingIOError)."""
        try:
            self._wait(lambda: conn.state is not SYN_SENT or conn.error is not None or None, "connect", left)
        except BlockingIOError:
            return False
        return True

    def send(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        conn = self._need_conn(errno.EPIPE)
        eng = self._engine
        assert eng is not None  # _need_conn checked it
        if not len(data):
            return 0
        # conn.send raises once the connection can no longer send; 0 means its buffer is full
        more = bool(flags & _MORE)  # MSG_MORE: the tail waits for the next send (usnet.proto.tcp.cork)

        # A blocking socket's send (no Python timeout, no MSG_DONTWAIT) takes all of `data`, as
        # Linux's tcp_sendmsg waits for room until it copied everything: a partial count only at
        # SO_SNDTIMEO's end, an error or a signal after some was taken. Any other send takes
        # what fits once there is room (CPython's socket is O_NONBLOCK under a timeout).
        timeout = self._call_timeout(flags)
        whole = self._timeout is None and timeout is _UNSET
        mv = memoryview(data).cast("B") if whole else data
        size = len(mv)
        taken = 0

        def attempt() -> int | None:
            nonlocal taken
            self._take_pending(conn)  # IP_RECVERR's pending error first, as tcp_sendmsg's sk_err
            if conn.error is not None:  # its error once, then EPIPE (sk_stream_error)
                if taken:
                    return taken  # (do_error: what was copied, the error at the next call)
                raise self._error_once(conn) or BrokenPipeError(errno.EPIPE, "Broken pipe")
            if not whole:
                return conn.send(data, more) or None
            n = conn.send(mv[taken:] if taken else mv, more)
            taken += n
            if taken == size:
                return taken
            if n:
                eng.kick()  # what it took goes now (the engine's lock is re-entrant); then wait for room
            return None

        with step:  # what TCP took and the kick that sends it: one step for a signal (usnet.client.sigdefer)
            try:
                n = self._wait(attempt, "send", timeout)
            except (OSError, InterruptedError):
                if not taken:
                    raise
                n = taken  # SO_SNDTIMEO's end, or an error, after some was taken: the count
            eng.kick()
        return n

    def sendall(self, data: bytes | bytearray | memoryview, flags: int = 0) -> None:
        mv = memoryview(data).cast("B")
        while mv:
            n = self.send(mv, flags)
            mv = mv[n:]

    def sendto(self, data: bytes | bytearray | memoryview, flags_or_address: Any, address: Any = None) -> int:
        """TCP ignores the address, as Linux does for a connected stream socket."""
        return self.send(data, flags_or_address if address is not None else 0)

    def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0, address: Any = None) -> int:
        if ancdata:
            raise OSError(errno.EOPNOTSUPP, "usnet sockets carry no ancillary data")
        return self.send(b"".join(bytes(memoryview(b).cast("B")) for b in buffers), flags)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """As the standard sendfile on Linux, which takes two paths. A file with a descriptor
        (os.sendfile's path) is sent from `offset` whatever its position (read here with os.pread),
        and an empty one (size 0 by fstat: a pipe too) sends nothing; anything else (the send()
        fallback) is read from its position, after a seek to a non-zero `offset`. Either way a
        non-blocking socket is refused (ValueError), a count that is no int is a TypeError, and the
        position is left after the last byte sent, untouched if nothing was."""
        if "b" not in getattr(file, "mode", "b"):
            raise ValueError("file should be opened in binary mode")
        if count is not None:
            if not isinstance(count, int):
                raise TypeError(f"count must be a positive integer (got {count!r})")
            if count <= 0:
                raise ValueError(f"count must be a positive integer (got {count!r})")
        fd = _file_descriptor(file)
        if fd is not None and not fd[1]:
            return 0  # an empty file, before the check below, as socket._sendfile_use_sendfile
        if self._timeout == 0:
            raise ValueError("non-blocking sockets are not supported")
        if fd is None and offset:
            file.seek(offset)
        total = 0
        try:
            while count is None or total < count:
                n = 65536 if count is None else min(65536, count - total)
                data = file.read(n) if fd is None else os.pread(fd[0], n, offset + total)
                if not data:
                    break
                self.sendall(data)
                total += len(data)
        finally:
            if total > 0 and hasattr(file, "seek"):
                file.seek(offset + total)
        return total

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        """As the standard recv, with MSG_PEEK (data stays queued), MSG_DONTWAIT and MSG_WAITALL."""
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if flags & _ERRQUEUE:
            return self._tcp_error_queue(bufsize, 0)[0]
        conn = self._need_conn()
        if bufsize == 0:
            return b""
        if flags & _WAITALL and not flags & _PEEK:
            return self._recv_all(conn, bufsize, flags)
        take = partial(conn.peek if flags & _PEEK else conn.recv, bufsize)
        if (want := self._rcv_target(conn, bufsize)) > 1:
            return self._recv_lowat(conn, take, flags, want)
        return self._wait(lambda: self._read(conn, take, b""), "recv", self._call_timeout(flags))

    def _recv_all(self, conn: TcpConnection, bufsize: int, flags: int) -> bytes:
        """MSG_WAITALL: until `bufsize` bytes, EOF or an error; what came when the timeout ends it."""
        t, eagain = (0.0, False) if self._no_wait(flags) else self._limit("recv")
        deadline = None if t is None else time.monotonic() + t
        got = bytearray()
        while len(got) < bufsize:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            take = partial(conn.recv, bufsize - len(got))
            try:
                chunk = self._wait(lambda t=take: self._read(conn, t, b""), "recv", left, eagain)
            except (BlockingIOError, TimeoutError):
                if got:
                    break
                raise
            if not chunk:
                break
            got += chunk
        return bytes(got)

    def _recv_lowat(self, conn: TcpConnection, take: Callable[[], bytes], flags: int, want: int) -> bytes:
        """recv under SO_RCVLOWAT: `take` (a read or, MSG_PEEK, a peek) once `want` bytes are
        queued (or no more will come). A peek waits for the mark as a read does (tcp_recvmsg's
        target is sock_rcvlowat's for both). A call that may not wait (non-blocking, MSG_DONTWAIT,
        SO_RCVTIMEO's end) takes what is queued, as tcp_recvmsg returns what it copied; a Python
        timeout ends in TimeoutError, as CPython's poll for readiness (which needs the target) runs
        out first."""

        def attempt() -> bytes | None:
            return self._read(conn, take, b"") if self._enough(conn, want) else None

        t, eagain = (0.0, False) if self._call_timeout(flags) == 0.0 else self._limit("recv")
        try:
            return cast(bytes, self._wait(attempt, "recv", t, eagain))
        except BlockingIOError:
            return cast(bytes, self._wait(lambda: self._read(conn, take, b""), "recv", 0.0))

    def _enough(self, conn: TcpConnection, want: int) -> bool:
        """Whether a read for `want` bytes need not wait: they are queued, or no more will come
        (the peer's FIN, an error, SHUT_RD). With the engine's lock held."""
        return (conn.rcv_queued >= want or conn.fin_received or conn.error is not None
                or conn.pending_error is not None or self._shut_rd or conn.state is CLOSED)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        mv = memoryview(buffer).cast("B")
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        if nbytes > len(mv):
            raise ValueError("buffer too small for requested bytes")
        if nbytes:
            mv = mv[:nbytes]
        if flags & (_PEEK | _WAITALL | _ERRQUEUE) or self._rcv_target(self._conn, len(mv)) > 1:
            data = self.recv(len(mv), flags)
            mv[: len(data)] = data
            return len(data)
        conn = self._need_conn()
        if not len(mv):
            return 0
        return self._wait(lambda: self._read(conn, lambda: conn.recv_into(mv), 0), "recv", self._call_timeout(flags))

    def _take_pending(self, conn: TcpConnection) -> None:
        """Raise IP_RECVERR's pending error of `conn` (`_pop_pending`), if it has one."""
        err = self._pop_pending(conn)
        if err is not None:
            raise OSError(err, os.strerror(err))

    def _pop_pending(self, conn: TcpConnection) -> int | None:
        """IP_RECVERR's pending error of `conn`, cleared (sock_error), or None; the descriptor
        shows the socket without it. With the engine's lock held."""
        err = conn.pending_error
        if err is not None:
            conn.pending_error = None
            self._update()
        return err

    def _tcp_error_queue(self, bufsize: int, ancbufsize: int) -> tuple[bytes, list, int, tuple]:
        """recvmsg(MSG_ERRQUEUE): a TCP socket's error queue holds the ICMP error that ended
        its connect in SYN-SENT (tcp_v4_err's ip_icmp_error, always; tcp_v6_err's with
        IPV6_RECVERR: `FlowEngine._ip_events` keeps it as the connection's `error_report`),
        whose taking clears the socket's error, as sock_dequeue_err_skb clears sk_err after the
        last ICMP report; then SO_TIMESTAMPING's transmit stamps (usnet.proto.tcp.txstamp), which
        leave the error be. Empty: EAGAIN whether or not the socket blocks, as inet_recv_error's."""
        self._need_open()
        conn, eng = self._conn, self._engine
        r = None
        if conn is not None and eng is not None:
            with eng.lock:
                r, conn.error_report = conn.error_report, None
                if r is not None and conn.error is not None:
                    self._reported = conn.error  # SO_ERROR reads 0 now, and POLLERR goes
                    self._update()
                elif r is None and (stamp := conn.take_tx_stamp()) is not None:
                    info, key, ns = stamp
                    r = tx_stamp_report(ns, key, self.family == AF_INET6, info)
                    self._update()  # POLLERR goes with the last one
        if not isinstance(r, ErrorReport):
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return _error_message(r, self.family, bufsize, ancbufsize, self._opts)

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:
        """A stream socket names no sender: (data, None), as Linux gives."""
        return self.recv(bufsize, flags), None

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, Any]:
        return self.recv_into(buffer, nbytes, flags), None

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0) -> tuple[bytes, list, int, Any]:
        """As recv; with SO_TIMESTAMP(NS) or SO_TIMESTAMPING's software receive stamps on, the
        control messages of when the last byte read arrived (none if it came before the option),
        as Linux's tcp_recv_timestamp, cut to `ancbufsize` with MSG_CTRUNC as put_cmsg cuts it."""
        if flags & _ERRQUEUE:
            return self._tcp_error_queue(bufsize, ancbufsize)
        conn = self._conn
        stamps = conn.rx_stamps if conn is not None and _rx.rx_stamps(self._opts) else None
        if stamps is None:
            return self.recv(bufsize, flags), [], 0, None
        stamps.last = None
        data = self.recv(bufsize, flags)
        if (t := stamps.last) is None:
            return data, [], 0, None
        ns = time.time_ns() - round((time.monotonic() - t) * 1e9)  # TCP's clock is the monotonic one
        anc, cut = _rx.put_cmsgs(_rx.timestamp_cmsgs(self._opts, ns), ancbufsize)
        return data, anc, _CTRUNC if cut else 0, None

    def recvmsg_into(self, buffers: Any, ancbufsize: int = 0, flags: int = 0) -> tuple[int, list, int, Any]:
        """As the standard recvmsg_into: what `recvmsg` returns, scattered over `buffers` in order."""
        views = [memoryview(b).cast("B") for b in buffers]
        if any(v.readonly for v in views):
            raise TypeError("recvmsg_into() argument 1 must be an iterable of writable buffers")
        data, anc, mflags, addr = self.recvmsg(sum(map(len, views)), ancbufsize, flags)
        at = 0
        for v in views:
            piece = data[at : at + len(v)]
            v[: len(piece)] = piece
            at += len(piece)
        return len(data), anc, mflags, addr

    def sendmsg_afalg(self, msg: Any = (), *, op: int, iv: Any = None, assoclen: int | None = None,
                      flags: int = 0) -> int:
        """Only for AF_ALG sockets, which usnet has none of: the error Linux's socket module gives."""
        raise OSError("algset is only supported for AF_ALG")

    def get_inheritable(self) -> bool:
        """Of the descriptor `fileno` gives, as the standard's (the stack itself stays in this process)."""
        return os.get_inheritable(self.fileno())

    def set_inheritable(self, inheritable: bool) -> None:
        os.set_inheritable(self.fileno(), inheritable)

    def shutdown(self, how: int) -> None:
        if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
            raise OSError(errno.EINVAL, "Invalid argument")
        if self._listening and self._conn is None and not self._dead:
            self._shutdown_listener(how)
            return
        conn = self._need_conn()
        eng = self._engine
        assert eng is not None
        with step:  # (as send: the FIN queued and sent)
            with eng.lock:
                if how in (SHUT_RD, SHUT_RDWR):
                    self._shut_rd = True
                if how in (SHUT_WR, SHUT_RDWR):
                    conn.shutdown_write(time.monotonic())
                self._update()
                if how != SHUT_WR:
                    eng.notify()  # a recv blocked in another thread returns b"" now, as Linux's (sk_state_change)
            eng.kick()

    def _shutdown_listener(self, how: int) -> None:
        """shutdown() of a listening socket, as Linux's inet_shutdown: SHUT_WR does nothing;
        SHUT_RD or SHUT_RDWR stops listening (the connections not yet accepted are reset, as
        `unlisten` does) and wakes a thread blocked in accept, which fails with EINVAL, as every
        later accept does: the usual way to stop a server thread, since close() from another
        thread wakes nothing on Linux. The socket stays bound to its port and may listen again."""
        if how == SHUT_WR:
            return
        eng = self._engine
        assert eng is not None
        now = time.monotonic()
        with step:  # (as send: the pending connections reset, and the RSTs sent)
            with eng.lock:
                self._listening = False
                for e in (eng, *self._halves):
                    e.tcp.unlisten(self._port, now)
                    if self._reuse_port() and not e.closed:  # the port's other SO_REUSEPORT listeners take
                        e.client.unlisten(e.ch.id)           # new connections now
                self._update()
                eng.notify()  # a blocked accept looks again (on `changed` or the doorbell), finds no listener
            eng.kick()

    def close(self) -> None:
        """As the standard close: the connection lives on while a makefile() refers to it."""
        self._closed = True
        if self._io_refs <= 0:
            self._real_close()

    def _real_close(self) -> None:
        if self._dead:
            return
        self._dead = True  # fileno() -1, every new call EBADF
        eng = self._engine
        if eng is not None and _in_call:  # (a call that begins to wait once this was read: it was not yet waiting)
            with eng.lock:
                if self in _in_call:  # a blocking call waits in it: it ends the socket (`_wait`)
                    _close_after_call.add(self)
                    return
        self._release()

    def _release(self) -> None:
        """The end of a closed socket: its share of the connection, its descriptor."""
        self._share[0] -= 1
        last = self._share[0] == 0
        eng = self._engine
        if eng is not None:
            lingers = bool(last and self._linger and self._conn is not None and not self._abort_on_close)
            with step:  # (as send: the FIN queued and sent, or handed to the stack thread)
                with eng.lock:
                    eng.unwatch(self, self._conn)
                    if last:
                        self._last_close(eng)
                if (isinstance(eng, FlowEngine) and eng.driver is None and not lingers
                        and not eng.release_when_idle and not self._halves):
                    eng.kick()  # the FIN (or RST) goes from this thread: no hand-off to the stack thread
                else:
                    eng.wake(wait=lingers)  # a lingering close blocks: the stack thread must serve it; an
                    # engine to let go when idle is the stack thread's to close
            if lingers:
                self._linger_close(eng, self._conn, self._linger)  # type: ignore[arg-type]
        if _descriptors.get(self._fd) is self:
            del _descriptors[self._fd]
        if _held.get(self._fd) is self:
            del _held[self._fd]
        if self._fd >= 0 and self._fd != self._ready.made:
            os.close(self._fd)  # a dup's own descriptor
        if last:
            self._ready.close()

    def _last_close(self, eng: Any) -> None:
        """The last socket object of this connection closed: end it (with the engine's lock held)."""
        now = time.monotonic()
        if self._conn is not None:
            if self._abort_on_close:
                self._conn.abort(now)
            else:
                self._conn.close(now)
        if self._listening:
            for e in (eng, *self._halves):
                e.tcp.unlisten(self._port, now)
                if self._reuse_port() and not e.closed:  # the port's other SO_REUSEPORT listeners take
                    e.client.unlisten(e.ch.id)           # new connections now
        for h in self._halves:
            h.release_when_idle = True
            h.wake()  # whoever pumps it lets it go
        if self._owns_engine:
            eng.release_when_idle = True
            if self._conn is None:  # a bind waits for it to go, or takes a listener's over (SO_REUSEADDR)
                key = (id(eng.client), self._netif, self._ip_version, self._port)
                with _lingering_lock:
                    for k in [k for k, v in _lingering.items() if v[0].closed]:
                        del _lingering[k]
                    _lingering[key] = (eng, self._halves, bool(self._opts.get((SOL_SOCKET, SO_REUSEADDR))))

    def dup(self) -> socket:
        """Another socket object for the same connection; it ends when the last of them closes."""
        self._need_open()
        d = object.__new__(type(self))
        self._share_into(d, os.dup(self.fileno()))
        return d

    def _share_into(self, d: socket, fd: int) -> None:
        """Make `d` another object for this socket's connection (`dup`), with `fd`, a duplicate
        of this socket's descriptor, as its own."""
        d.__dict__.update(self.__dict__)
        d._fd = fd
        d._closed, d._io_refs = False, 0
        _descriptors[d._fd] = d
        self._share[0] += 1
        open_sockets.add(d)
        if self._engine is not None:
            with self._engine.lock:
                self._engine.watch(d, d._conn)

    def reference(self) -> socket:
        """Another socket object for the same connection, as `dup` makes, without a descriptor of
        its own (its `fileno` is the socket's): a reference the library holds, not the program
        (the one a child of fork() has, usnet.client.forked). It keeps the connection open
        until it closes too."""
        self._need_open()
        d = object.__new__(type(self))
        d.__dict__.update(self.__dict__)
        d._fd = -1
        d._closed, d._io_refs = False, 0
        self._share[0] += 1
        if self._engine is not None:
            with self._engine.lock:
                self._engine.watch(d, d._conn)
        return d

    @staticmethod
    def _linger_close(eng: FlowEngine, conn: TcpConnection, linger: float) -> None:
        """SO_LINGER on: wait until the data and FIN are acknowledged, or `linger` seconds
        pass, as Linux's close does (whatever the socket's blocking mode). After that
        the connection goes on finishing in the background, as the kernel's does."""
        until = time.monotonic() + linger
        with eng.lock:
            while not delivered(conn) and eng.error is None:
                left = until - time.monotonic()
                if left <= 0:
                    return
                eng.changed.wait(left)

    @property
    def abort_on_close(self) -> bool:
        """SO_LINGER is on with a zero timeout: closing sends a RST (the stack's exit drain asks)."""
        return self._abort_on_close

    def detach(self) -> int:
        """Close this object, not the connection: `socket(fileno=n)` takes the returned n back."""
        self._need_open()
        fd = self.fileno()
        if self._engine is not None:
            with self._engine.lock:
                self._engine.unwatch(self, self._conn)
        if _descriptors.get(fd) is self:
            del _descriptors[fd]
        _detached[fd] = self
        self._closed = self._dead = True
        return fd

    def _adopt(self, fd: int) -> None:
        src = _detached.pop(fd, None)
        if src is None and fd in _held:  # held for the descriptor's system calls: this object takes over
            src = _held.pop(fd)
            if src._engine is not None:
                with src._engine.lock:
                    src._engine.unwatch(src, src._conn)
            src._closed = src._dead = True
        if src is None and (orig := duplicated(fd)) is not None:
            # a duplicate of an open socket's descriptor (socket.fromfd): another object for its
            # connection, as `dup` makes, owning `fd`, as a kernel socket's dup shares the file
            orig._share_into(self, fd)
            return
        if src is None:
            raise OSError(errno.EAFNOSUPPORT, f"descriptor {fd} is no detached usnet socket")
        self.__dict__.update(src.__dict__)
        _descriptors[fd] = self
        self._closed = self._dead = False
        self._io_refs = 0
        if self._engine is not None:
            with self._engine.lock:
                self._engine.watch(self, self._conn)
                self._update()

    def getsockname(self) -> tuple:
        """The bound address: the wildcard for a socket bound to it until it connects (a listener
        stays so), as Linux says, though the flow is on the netif's (or the loopback's) address."""
        if self._engine is None or (self._wildcard and self._conn is None):
            # bound to the wildcard and not connected: the wildcard, as Linux says (http.server
            # prints it, tornado and aiohttp log it), not the netif's address it happens to listen on
            return _sockaddr(self.family, _any_name(self.family, self._v4any), self._port)
        return _sockaddr(self.family, self._engine.info.local_addr, self._port)

    def getpeername(self) -> tuple:
        conn = self._need_conn()
        return _sockaddr(self.family, conn.remote_addr, conn.remote_port)

    def setsockopt(self, level: int, opt: int, value: Any, optlen: int | None = None) -> None:
        """Set an option of `usnet.client.sockopts.OPTIONS`; any other is ENOPROTOOPT, as Linux's."""
        self._need_open()
        check_fixed(lookup(self.family, self.type, level, opt, True), level, opt, value)
        conn, eng = self._conn, self._engine
        value = _so.kept(level, opt, value, listening=self._listening, connected=conn is not None)
        if level == IPPROTO_TCP and opt in (TCP_CORK, TCP_QUICKACK, TCP_NOTSENT_LOWAT):
            if conn is not None and eng is not None:
                with eng.lock:  # usnet.proto.tcp.cork, usnet.proto.tcp.quickack, TcpConnection.send_space
                    self._apply_tcp(conn, opt, value)
        elif level == SOL_SOCKET and opt == SO_BINDTODEVICE:
            value = self._device(value)
        elif level == IPPROTO_IPV6 and opt == IPV6_V6ONLY:
            value = self._v6only(value)
        elif level == SOL_SOCKET and opt == _so.SO_RCVLOWAT:
            self._opts[level, opt] = min(value, self._rcvlowat_cap())
            if conn is not None and eng is not None:
                with eng.lock:  # readiness by the new mark, as tcp_set_rcvlowat's tcp_data_ready
                    self._update()
            return
        elif level == SOL_SOCKET and opt in _BUF_LIMITS:
            path, least = _BUF_LIMITS[opt]
            value = max(2 * min(int(value), _sysctl(path, 212992)), least)  # what Linux keeps
            if conn is not None and eng is not None:
                with eng.lock:
                    self._apply_buffer(conn, opt, value // 2)
        elif level == IPPROTO_TCP and opt == TCP_NODELAY:
            self._nodelay = bool(value)
            if conn is not None:
                conn.nodelay = bool(value)
        elif level == IPPROTO_TCP and opt == _std.TCP_CONGESTION:
            value = _congestion_name(value)  # raises as Linux does for a name it does not have
            if conn is not None and eng is not None:
                with eng.lock:
                    conn.set_congestion(value.decode())
        elif level == IPPROTO_TCP and opt == TCP_USER_TIMEOUT:
            self._user_timeout = int(value) / 1000
            if conn is not None:
                conn.cfg.user_timeout = self._user_timeout
        elif level == SOL_SOCKET and opt == SO_LINGER:
            onoff, linger = struct.unpack("ii", value)
            self._abort_on_close = bool(onoff) and linger == 0
            self._linger = max(0, linger) if onoff else None
        elif level == IPPROTO_TCP and opt in _KEEPALIVE_LIMITS:
            value = int(value)
            if not 1 <= value <= _KEEPALIVE_LIMITS[opt]:
                raise OSError(errno.EINVAL, "Invalid argument")
        elif level == IPPROTO_TCP and opt == _std.TCP_MAXSEG:
            value = int(value)
            if value and not 88 <= value <= 32767:  # Linux: TCP_MIN_MSS .. MAX_TCP_WINDOW, or 0 (none)
                raise OSError(errno.EINVAL, "Invalid argument")
        elif (level, opt) in IP_MARKING:
            self._set_marking(level, opt, ip_option(self.type, level, opt, value))
            return
        elif (level, opt) in _so.TIMEO_OPTIONS:
            self._set_timeo(opt, value)
            return
        elif (level, opt) in _rx.IP_OPTIONS:  # kept as Linux's TCP keeps them: a bit, never acted on
            _rx.set_option(self._opts, level, opt, value)
            return
        elif (level, opt) in _rx.TIMESTAMP_OPTIONS:  # SO_TIMESTAMPING's OPT_ID: EINVAL while closed or listening
            old = _rx.timestamping_flags(self._opts)
            _rx.set_option(self._opts, level, opt, value, tcp_idle=conn is None or self._listening)
            self._set_rx_stamps()
            self._set_tx_stamps(old)
            return
        # SO_REUSEADDR and the STORED options: nothing to do in usnet beyond reading them back
        self._opts[level, opt] = value
        if (level, opt) in ((_std.IPPROTO_IP, _IP_RECVERR), (IPPROTO_IPV6, _IPV6_RECVERR)) and eng is not None:
            with eng.lock:  # the next ICMP error sees it (TcpConfig.recverr); a listener's children inherit it
                if conn is not None:
                    conn.cfg.recverr = self._tcp_recverr(len(conn.remote_addr) == 4)
                for e in (eng, *self._halves) if self._listening else ():
                    if (lst := e.tcp.listeners.get(self._port)) is not None:
                        lst.config.recverr = self._tcp_recverr(e.family == 4)
        if level == IPPROTO_TCP and opt == TCP_DEFER_ACCEPT and self._listening and eng is not None:
            with eng.lock:  # a listener's: its half-open connections' next ACK sees it, as Linux's
                for lst in self._listeners():
                    lst.defer_accept = self._defer_retrans()
        if (level, opt) in _KEEPALIVE_OPTS and conn is not None and eng is not None:
            with eng.lock:
                conn.set_keepalive(time.monotonic(), **self._keepalive())
        if conn is not None and eng is not None:
            eng.kick()  # what the option lets go now (TCP_NODELAY, a window) goes; a new timer is heard

    def _device(self, value: Any) -> str:
        """SO_BINDTODEVICE: a netif of the socket's domain by name (`sockopts.bind_device`);
        bind and connect then take it, as Linux's route through the device."""
        client = self._where[0] or _target()[0]
        names = [str(n["netif"]["name"]) for n in client.status()["netifs"]]
        return _so.bind_device(value, (self._netif or self._target()[1]) if self._engine is not None else "", names)

    def _set_marking(self, level: int, opt: int, value: int | None) -> None:
        """IP_TTL, IP_TOS, IPV6_UNICAST_HOPS, IPV6_TCLASS (checked: `sockopts.ip_option`; None:
        the default again). The IP headers of the socket's segments carry them from the next one
        on: its connection's, or a listener's (and the connections it accepts from then on, which
        inherit them as on Linux). A connection's mark is its own (`TcpConfig.ip_mark`), though a
        connector's or a listener's engine carries many: the IP layer keys its header templates
        by it (usnet.proto.ipmark), and a socket that sets none costs nothing per packet."""
        mark = self._keep_mark(level, opt, value)
        conn, eng = self._conn, self._engine
        if eng is None:
            return  # connect or listen takes it (`_buffer_options`)
        with eng.lock:
            if conn is not None:
                conn.cfg.ip_mark = mark
            elif self._listening:
                for lst in self._listeners():
                    lst.config.ip_mark = mark

    def _keep_mark(self, level: int, opt: int, value: int | None) -> int:
        """Keep an IP marking option's value (None: the default again); the socket's mark now
        (usnet.proto.ipmark), for the stream and the datagram face alike."""
        if value is None:
            self._opts.pop((level, opt), None)
        else:
            self._opts[level, opt] = value
        return ip_mark(self.family, self._opts)

    def _v6only(self, value: Any = None) -> int:
        """IPV6_V6ONLY, read (`value` None) or set: whether an AF_INET6 socket takes IPv6 only, or
        IPv4 too (`_dual`). As on Linux: ENOPROTOOPT on another family, and EINVAL once bound (the
        port is held in the families it said)."""
        if self.family != AF_INET6:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        if value is None:
            return int(not self._dual())
        if self._engine is not None:
            raise OSError(errno.EINVAL, "Invalid argument")
        if isinstance(value, (bytes, bytearray)):
            value = int.from_bytes(bytes(value[:4]), sys.byteorder, signed=True)
        return int(value != 0)

    def tcp_info(self) -> dict[str, Any]:
        """The connection's TCP statistics, as Linux's TCP_INFO gives them, under a usnet name:
        its state, the RTT estimate (srtt, rttvar, rto), the congestion window and ssthresh, and
        the counters of usnet.proto.tcp.config.TcpStats (segments, bytes, retransmissions, ...).

        A name of its own because Linux's `struct tcp_info` is a kernel ABI whose fields usnet
        does not all have; a dict names what it does have.

        On a listening socket: state LISTEN, the accept and SYN queues' lengths and bounds (Linux
        gives the first two as tcpi_unacked and tcpi_sacked), and the listener's counters of
        usnet.proto.tcp.endpoint.EndpointStats (listen_overflows, listen_drops, syncookies_*).
        """
        self._need_open()
        conn, eng = self._conn, self._engine
        if self._listening and eng is not None:
            with eng.lock:
                lst = eng.tcp.listeners.get(self._port)
                if lst is not None:
                    return {"state": "LISTEN", "accept_queue": len(lst.accept_queue), "backlog": lst.backlog,
                            "syn_queue": len(lst.syn_queue), "syn_backlog": lst.syn_backlog,
                            **eng.tcp.stats.as_dict()}
        if conn is None or eng is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        with eng.lock:
            return {"state": conn.state.name, "mss": conn.mss, **conn.stats.as_dict()}

    def getsockopt(self, level: int, opt: int, buflen: int = 0) -> Any:
        """What was set, or the real value (SO_TYPE, SO_ERROR, buffer sizes, TCP_MAXSEG, ...)."""
        buflen = _so.buflen_arg(buflen)
        self._need_open()
        value = self._option(level, opt)
        if level == SOL_SOCKET and opt == SO_BINDTODEVICE:
            return _so.device_value(value, buflen)
        if buflen:
            if isinstance(value, (bytes, bytearray)):
                return bytes(value[:buflen])
            return struct.pack("i", int(value))[:buflen].ljust(buflen, b"\0")
        if isinstance(value, (bytes, bytearray)):  # an option set as bytes (SO_LINGER): its first int
            return struct.unpack_from("i", bytes(value).ljust(4, b"\0"))[0]
        return int(value)

    def _set_timeo(self, opt: int, value: Any) -> None:
        """SO_RCVTIMEO, SO_SNDTIMEO (old or _NEW number): kept in jiffies as Linux keeps it (for
        the stream and the datagram face; `_limit` acts on it)."""
        j = _so.timeo_set(value)
        if j is None:
            self._opts.pop(_so.timeo_key(opt), None)
        else:
            self._opts[_so.timeo_key(opt)] = j

    def _limit(self, what: str) -> tuple[float | None, bool]:
        """How long a call may wait, and whether running out is EAGAIN: the Python timeout
        (settimeout: TimeoutError), or on a blocking socket SO_RCVTIMEO (recv, accept) or
        SO_SNDTIMEO (send), whose end the kernel's call returns as EAGAIN, which CPython, polling
        for no timeout of its own, raises as BlockingIOError. connect is not limited: Linux's
        returns EINPROGRESS at SO_SNDTIMEO, and CPython then waits for the handshake anyway."""
        t = self._timeout
        if t is None and what != "connect":
            j = self._opts.get(_so.timeo_key(_SO_SNDTIMEO if what == "send" else _SO_RCVTIMEO))
            if j is not None:
                return _so.timeo_seconds(j), True
        return t, False

    def _option(self, level: int, opt: int) -> Any:
        spec = lookup(self.family, self.type, level, opt, False)
        if (level, opt) in _so.TIMEO_OPTIONS:
            return _so.timeo_get(self._opts.get(_so.timeo_key(opt)))
        if (level, opt) in _rx.IP_OPTIONS or (level, opt) in _rx.TIMESTAMP_OPTIONS:
            return _rx.option_value(self._opts, level, opt)
        conn = self._conn
        if level == SOL_SOCKET:
            if opt == SO_ERROR:
                return self._take_error()
            if opt == _std.SO_TYPE:
                return int(self.type)
            if opt == _std.SO_DOMAIN:
                return int(self.family)
            if opt == _std.SO_PROTOCOL:
                return _std.IPPROTO_TCP
            if opt == _std.SO_ACCEPTCONN:
                return int(self._listening)
            if opt in _BUF_LIMITS and (level, opt) not in self._opts:
                cfg = conn.cfg if conn is not None else None
                if opt == SO_RCVBUF:
                    return conn.rcvbuf_cap if conn is not None else (cfg or _tcp_defaults()).rcvbuf
                return conn.sndbuf_cap if conn is not None else (cfg or _tcp_defaults()).sndbuf
            if opt == SO_LINGER and (level, opt) not in self._opts:
                return struct.pack("ii", 0, 0)
        if level == IPPROTO_IPV6 and opt == IPV6_V6ONLY:
            return self._v6only()
        if (level, opt) in _TOS_OPTS and conn is not None and conn.ecn_ok:
            # as Linux's, whose TCP sets ECT(0) in the socket's TOS once ECN is agreed (INET_ECN_xmit)
            return self._opts.get((level, opt), 0) | _ECT0
        if level == IPPROTO_TCP:
            if opt == TCP_NODELAY:
                return int(self._nodelay)
            if opt == TCP_QUICKACK and conn is not None:
                return int(conn.quickack)
            if opt == TCP_USER_TIMEOUT:
                return int(self._user_timeout * 1000)
            if opt == _std.TCP_MAXSEG:
                if conn is not None and conn.state is not SYN_SENT:
                    return conn.mss
                return self._opts.get((level, opt)) or 536  # Linux: what was set, until the handshake
            if opt == _std.TCP_CONGESTION:  # the name, zero-padded to TCP_CA_NAME_MAX as Linux gives it
                name = self._opts.get((level, opt)) or _congestion_name(
                    (conn.cfg if conn is not None else _tcp_defaults()).congestion)
                return name.ljust(_CA_NAME_MAX, b"\0")
        return self._opts.get((level, opt), spec.default)

    def _take_error(self) -> int:
        """SO_ERROR: the pending error, once (as Linux clears sk_err when it is read)."""
        eng = self._engine
        conn = self._conn
        if conn is not None and conn.pending_error is not None and eng is not None:
            with eng.lock:
                pending = self._pop_pending(conn)
            if pending is not None:
                return pending
        err = ((self._conn.error if self._conn is not None else None) or self._refused
               or (eng.error if eng is not None else None))
        if err is None or err is self._reported:
            return 0
        self._reported = err
        self._updated()  # POLLERR goes
        return err.errno or errno.EIO

    def _updated(self) -> None:
        """`_update`, taking the engine's lock."""
        eng = self._engine
        if eng is not None:
            with eng.lock:
                self._update()

    def makefile(self, mode: str = "r", buffering: int | None = None, *, encoding: str | None = None,
                 errors: str | None = None, newline: str | None = None) -> Any:
        """As the standard socket.makefile: a SocketIO in a buffer (and a text wrapper)."""
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        rw = "".join(c for c in mode if c in "rw") or "r"
        raw = _std.SocketIO(self, rw)  # type: ignore[arg-type]
        self._io_refs += 1
        if buffering is None:
            buffering = -1
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if "b" not in mode:
                raise ValueError("unbuffered streams must be binary")
            return raw
        if "r" in rw and "w" in rw:
            buf: Any = io.BufferedRWPair(raw, raw, buffering)
        elif "r" in rw:
            buf = io.BufferedReader(raw, buffering)
        else:
            buf = io.BufferedWriter(raw, buffering)
        if "b" in mode:
            return buf
        text = io.TextIOWrapper(buf, encoding, errors, newline)
        text.mode = mode  # type: ignore[misc]  # as the stdlib's makefile: settable, though typeshed says not
        return text

    def _decref_socketios(self) -> None:
        """A makefile() file closed (SocketIO.close): the last one ends a closed socket."""
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._closed:
            self.close()

    def _checkClosed(self) -> None:
        if self._dead:
            raise OSError(errno.EBADF, "Bad file descriptor")

    def __enter__(self) -> socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "" if self._dead else f", laddr={self.getsockname()}"
        return (f"<usnet.socket fd={self.fileno()}, family={self.family!s}, type={_std.SocketKind(self.type)!s}, "
                f"proto={self.proto}{where}>")

    def __getstate__(self) -> Any:
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    # -- for faces that drive the connection themselves (usnet.aio) ---------------------------

    @property
    def engine(self) -> FlowEngine | None:
        """The engine serving this socket (None before bind/listen/connect): its lock guards the connection."""
        return self._engine

    @property
    def listening_engines(self) -> tuple[FlowEngine, ...]:
        """The engines whose accept queues a listener takes from: its netif's, and for one bound to
        the wildcard address its other flows (`_halves`: IPv4 for a dual-stack one, the loopback
        netif's); they share one lock and one set of watchers."""
        return (self._engine, *self._halves) if self._listening and self._engine is not None else ()

    @property
    def connection(self) -> Any:
        """The TCP connection (usnet.proto.tcp.TcpConnection), None until connect/accept."""
        return self._conn

    # -- plumbing -----------------------------------------------------------------------

    @property
    def _ip_version(self) -> Literal[4, 6]:
        """What the flow switch calls the family: 4 or 6."""
        return 6 if self.family == AF_INET6 else 4

    def _attach(self, eng: FlowEngine, owns: bool, conn: Any = None) -> None:
        open_sockets.add(self)
        self._engine = eng
        self._owns_engine = owns
        self._conn = conn
        with eng.lock:  # the stack thread iterates `watchers` while it pumps
            eng.watch(self, conn)
            self._update()
        if owns:
            runner().add(eng)

    def _drop_engine(self) -> None:
        """Give back a bound socket's flows at once (its port goes to the flow that follows)."""
        eng = self._engine
        assert eng is not None
        for e in (*self._halves, eng):
            runner().remove(e)
        with eng.lock:
            eng.unwatch(self, self._conn)
        for e in (*self._halves, eng):
            e.close()
        self._engine, self._halves = None, ()

    def _keepalive(self) -> dict[str, Any]:
        """`TcpConnection.set_keepalive`'s arguments from SO_KEEPALIVE and TCP_KEEPIDLE/INTVL/CNT."""
        o = self._opts
        return {"enabled": bool(o.get((SOL_SOCKET, SO_KEEPALIVE))), "idle": o.get((IPPROTO_TCP, _std.TCP_KEEPIDLE)),
                "interval": o.get((IPPROTO_TCP, _std.TCP_KEEPINTVL)), "count": o.get((IPPROTO_TCP, _std.TCP_KEEPCNT))}

    def _buffer_options(self) -> dict[str, Any]:
        """TcpConfig fields for the options that were set before connect or listen: SO_RCVBUF
        and SO_SNDBUF (none: auto-tuned), TCP_MAXSEG, keepalive and its timing."""
        out: dict[str, Any] = {}
        if not self._opts:
            return out  # (most sockets: what the lines below make of an empty table)
        if mss := self._opts.get((IPPROTO_TCP, _std.TCP_MAXSEG)):
            out["mss"] = mss
        ka = self._keepalive()
        if (SOL_SOCKET, SO_KEEPALIVE) in self._opts:
            out["keepalive"] = ka["enabled"]
        for key, field in (("idle", "keepalive_idle"), ("interval", "keepalive_interval"),
                           ("count", "keepalive_count")):
            if ka[key] is not None:
                out[field] = ka[key]
        if (v := self._opts.get((SOL_SOCKET, SO_RCVBUF))) is not None:
            out["rcvbuf"] = out["rcvbuf_max"] = v // 2
        if (v := self._opts.get((SOL_SOCKET, SO_SNDBUF))) is not None:
            out["sndbuf"] = out["sndbuf_max"] = v // 2
        if mark := ip_mark(self.family, self._opts):  # IP_TTL, IP_TOS (`_set_marking`)
            out["ip_mark"] = mark
        if _rx.rx_stamps(self._opts):
            out["rx_stamps"] = True
        return out

    def _set_rx_stamps(self) -> None:
        """SO_TIMESTAMP(NS) set or cleared: the connection stamps what arrives from now on, and a
        listener's connections from their first segment (TcpConfig.rx_stamps), as Linux's."""
        on, conn, eng = _rx.rx_stamps(self._opts), self._conn, self._engine
        if eng is None:
            return
        with eng.lock:
            if conn is not None:
                conn.set_rx_stamps(on)
            for lst in self._listeners() if self._listening else ():
                lst.config.rx_stamps = on

    def _set_tx_stamps(self, old: int) -> None:
        """SO_TIMESTAMPING set: the connection's later writes ask for the transmit stamps it
        says (usnet.proto.tcp.txstamp); OPT_ID newly set (not in `old`) restarts ee_data's count."""
        flags, conn, eng = _rx.timestamping_flags(self._opts), self._conn, self._engine
        if conn is None or eng is None:
            return  # (a connection made later takes them in `_apply_options`)
        with eng.lock:
            conn.set_tx_stamps(flags, bool(flags & ~old & SOF_TIMESTAMPING_OPT_ID))

    @staticmethod
    def _apply_buffer(conn: TcpConnection, opt: int, size: int) -> None:
        """A buffer size set on a live connection; auto-tuning stops at it (Linux locks it)."""
        if opt == SO_RCVBUF:
            conn.rcvbuf_cap = conn.cfg.rcvbuf_max = size
        else:
            conn.sndbuf_cap = conn.cfg.sndbuf_max = size

    def _apply_options(self, conn: Any) -> None:
        """The options set on this socket (an accepted connection: the listener's), on `conn`."""
        conn.nodelay = self._nodelay
        conn.cfg.user_timeout = self._user_timeout
        cfg = conn.cfg
        if not self._opts and not (conn.cork or conn.notsent_lowat or cfg.recverr or cfg.rx_stamps or cfg.ip_mark):
            return  # none set, and `conn` is already what the lines below make of an empty table (issue 18)
        for opt in (TCP_CORK, TCP_NOTSENT_LOWAT):
            self._apply_tcp(conn, opt, self._opts.get((IPPROTO_TCP, opt), 0))
        if (cc := self._opts.get((IPPROTO_TCP, _std.TCP_CONGESTION))) is not None:
            conn.set_congestion(cc.decode())
        conn.cfg.recverr = self._tcp_recverr(len(conn.remote_addr) == 4)
        conn.set_rx_stamps(_rx.rx_stamps(self._opts))
        conn.set_tx_stamps(_rx.timestamping_flags(self._opts), False)
        conn.cfg.ip_mark = ip_mark(self.family, self._opts)  # accepted: the listener's, as Linux's
        if not _KEEPALIVE_OPTS.isdisjoint(self._opts):  # an accepted connection: the listener's, as Linux's
            conn.set_keepalive(time.monotonic(), **self._keepalive())
        for opt in _BUF_LIMITS:
            if (v := self._opts.get((SOL_SOCKET, opt))) is not None:
                self._apply_buffer(conn, opt, v // 2)

    @staticmethod
    def _apply_tcp(conn: TcpConnection, opt: int, value: int) -> None:
        """TCP_CORK, TCP_QUICKACK, TCP_NOTSENT_LOWAT (0 or negative: no bound, as Linux's u32
        0 takes the sysctl's default, 4G)."""
        if opt == TCP_CORK:
            conn.cork = bool(value)
        elif opt == TCP_QUICKACK:
            conn.quickack = bool(value)
        else:
            conn.notsent_lowat = max(0, int(value))  # (readiness: the next pump's `_update`)

    def _need_open(self) -> None:
        if self._dead:
            raise OSError(errno.EBADF, "Bad file descriptor")

    def _need_engine(self) -> FlowEngine:
        self._need_open()
        if self._engine is None:
            raise OSError(errno.EINVAL, "Invalid argument")
        return self._engine

    def _need_conn(self, err: int = errno.ENOTCONN) -> Any:
        """The connection; `err` if there is none (Linux: ENOTCONN for recv, EPIPE for send)."""
        self._need_open()
        if self._conn is None or self._engine is None:
            raise OSError(err, os.strerror(err))
        return self._conn

    def _no_wait(self, flags: int) -> bool:
        """Whether a call may not wait: usnet's `_NOWAIT`, or MSG_DONTWAIT on a socket without a
        Python timeout. With one, CPython polls for readiness within the timeout before every call,
        flag or not (sock_call_ex), so there the flag changes nothing: the call waits, and ends in
        TimeoutError."""
        return bool(flags & _NOWAIT) or (bool(flags & _DONTWAIT) and not self._timeout)

    def _call_timeout(self, flags: int) -> Any:
        return 0.0 if self._no_wait(flags) else _UNSET

    def _read(self, conn: Any, take: Callable[[], Any], at_eof: Any) -> Any:
        """What `take` reads if data is queued; `at_eof` once no more will come; None: wait."""
        if conn.rcv_queued:
            return take()
        if conn.fin_received:  # tcp_fin's SOCK_DONE: EOF, before any sk_err (a reset in CLOSE_WAIT,
            return at_eof  # an ICMP error), which stays for send and SO_ERROR (tcp_recvmsg)
        if conn.pending_error is not None:
            self._take_pending(conn)  # raises it: sk_err, after the data, before our SHUT_RD's EOF
        if conn.error is not None and (err := self._error_once(conn)) is not None:
            raise err
        if conn.eof or conn.state is CLOSED or self._shut_rd:
            return at_eof  # (an error reported once: over both ways, EOF, as tcp_done's shutdown)
        return None

    def _error_once(self, conn: TcpConnection) -> OSError | None:
        """The error that ended `conn`, the first time a call asks (recv, send, connect, SO_ERROR
        report it once, as Linux's sock_error takes sk_err); None once it was reported. With
        the engine's lock held."""
        err = conn.error
        if err is None or err is self._reported:
            return None
        self._reported = err
        self._update()  # POLLERR goes
        return err

    def _wait(self, attempt: Any, what: str, timeout: Any = _UNSET, eagain: bool = False) -> Any:
        """Run `attempt` under the engine lock until it returns non-None, within the timeout
        (unset: `_limit`'s for `what`; `eagain`: its end is EAGAIN, as SO_RCVTIMEO's).
        An orphaned listener's failed engine is waited on as one with nothing to accept: its
        `_rebind` wakes the waiters."""
        eng = self._need_engine()
        if eng.error is not None and not self._orphan:
            raise self._refused or eng.error
        if timeout is _UNSET:
            t, eagain = self._limit(what)
        else:
            t = timeout
        deadline = None if t is None else time.monotonic() + t
        # CPython makes a blocking call without a timeout of its own (SO_RCVTIMEO's is the
        # kernel's) as one system call, which holds the socket's file: a close() from another
        # thread meanwhile wakes nothing there, and the call returns what comes
        held = self._timeout is None and t != 0
        woken = borrowed = counted = False
        # One step for the whole call (usnet.client.sigdefer): the lock's sections and the end's
        # below are one hold of the signals, not two (a mask pair fewer a blocked call: issue 18);
        # its waits let the signals through as before (`_release_save` lets go of every hold).
        with step:
            try:
                with eng.lock:
                    while True:
                        try:
                            got = attempt()
                        except OSError:
                            self._park_at_exit(eng, borrowed)
                            if self._dead and not held:  # (as below: the socket's end, our close's, is
                                raise OSError(errno.EBADF, "Bad file descriptor") from None  # no answer)
                            raise
                        if got is not None:
                            if self._dead and not held:
                                # closed by another thread while this call waited: CPython's poll
                                # on the kernel goes on waiting (close wakes nothing there) and, woken
                                # (or timed out, below), retries on descriptor -1
                                raise OSError(errno.EBADF, "Bad file descriptor")
                            self._update()
                            return got
                        self._park_at_exit(eng, borrowed)
                        if eng.error is not None and not self._orphan:
                            raise self._refused or eng.error
                        if deadline is not None:
                            left = deadline - time.monotonic()
                            if left <= 0:
                                if self._dead and not held:
                                    raise OSError(errno.EBADF, "Bad file descriptor")
                                if t == 0 or eagain:
                                    raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
                                raise TimeoutError("timed out")
                        else:
                            left = None
                        if held and not counted:
                            _in_call[self] = _in_call.get(self, 0) + 1
                            counted = True
                        if not woken:
                            # Once, so that what earlier calls queued (data, a window update) goes:
                            # sent from here (kick), or by the stack thread, which serves a blocked
                            # call from now on (wake). After that only the network makes progress;
                            # waking the runner on every pump would spin both threads while we wait.
                            # An engine the stack thread serves is then pumped by this call itself
                            # while it waits, on the doorbell the runner lends it (`pump_wait`): no
                            # hand-off between threads per arrival (docs/design-notes.md, issue 18).
                            if eng.driver is None:
                                eng.kick()
                                borrowed = runner().borrow(eng)
                            else:
                                eng.wake(wait=True)
                            woken = True
                        if borrowed:
                            eng.pump_wait(left)
                        else:
                            eng.changed.wait(left)
            finally:
                # One step for a signal (usnet.client.sigdefer): a handler's exception (Ctrl-C during
                # a round-trip loop) that landed inside give_back left the runner's watch list half
                # updated (its epoll holding the doorbell, its dict not: EEXIST at the next add), and
                # one before `_end_call` left the call counted, a close waiting for it for good.
                with step:
                    if borrowed:
                        runner().give_back(eng)
                    if counted:
                        self._end_call(eng)

    def _end_call(self, eng: Any) -> None:
        """A blocking call that waited is over: the last one ends a socket closed meanwhile."""
        with eng.lock:
            n = _in_call.pop(self) - 1
            if n:
                _in_call[self] = n
                return
            if self not in _close_after_call:
                return
            _close_after_call.discard(self)
        self._release()

    def _rcv_target(self, conn: TcpConnection | None, bufsize: int | None = None) -> int:
        """The bytes a recv of `bufsize` waits for (None: that readiness needs): SO_RCVLOWAT, no
        more than asked (sock_rcvlowat), and no more than half the receive buffer, which a
        connection can always queue (Linux's tcp_epollin_ready also says readable once the
        window has closed, and tcp_set_rcvlowat grows an unlocked buffer to fit). 1 without it."""
        lowat = self._opts.get(_LOWAT_KEY, 1)
        if lowat == 1 or conn is None:
            return 1
        return max(1, min(lowat, conn.rcvbuf_cap // 2, bufsize or lowat))

    def _rcvlowat_cap(self) -> int:
        """SO_RCVLOWAT's ceiling on a stream socket, as tcp_set_rcvlowat: half SO_RCVBUF once it
        was set (the kernel's SOCK_RCVBUF_LOCK), else half tcp_rmem's maximum."""
        if (v := self._opts.get((SOL_SOCKET, SO_RCVBUF))) is not None:
            return int(v) >> 1
        try:
            with open("/proc/sys/net/ipv4/tcp_rmem") as f:
                return int(f.read().split()[2]) >> 1
        except (OSError, ValueError, IndexError):
            return 6291456 >> 1  # Linux's default tcp_rmem[2]

    @staticmethod
    def _park_at_exit(eng: FlowEngine, borrowed: bool) -> None:
        """`park_at_exit`, the doorbell given back first: the exit's drain needs the runner to hear it."""
        if exiting():
            if borrowed:
                runner().give_back(eng)
            park_at_exit(eng.changed)

    # Bytes its owner took out of TCP's queue and holds, undelivered, for the socket's reader
    # (usnet.aio's transport: what its loop's pump read, `UsnetTransport._read_early`, while the
    # transport is paused): still unread for the descriptor, as in the kernel's queue.
    _unread_held = 0

    def _poll_state(self) -> tuple[bool, bool]:
        """(readable, writable) as Linux's tcp_poll would say. With the engine's lock held."""
        eng = self._engine
        if eng is None or eng.error is not None:
            if self._orphan:
                return False, False  # a listener whose usnetd is away: as a kernel one on a link that is down
            return True, True  # unconnected (POLLHUP | POLLOUT), or every call fails at once
        conn = self._conn
        if conn is None:
            if not self._listening:
                return True, True  # bound only
            for e in (eng, *self._halves):
                lst = e.tcp.listeners.get(self._port)
                if lst is not None and lst.accept_queue:
                    return True, False
            return False, False
        st = conn.state
        if (conn.error is not None or st is CLOSED or conn.pending_error is not None
                or (conn.tx_stamps is not None and conn.tx_stamps.reports)):
            return True, True  # (a pending error or stamp: what select shows of Linux's POLLERR)
        if st is SYN_SENT or st is SYN_RECEIVED:
            return False, False  # the handshake decides
        held = self._unread_held
        readable = conn.readable or self._shut_rd or held > 0
        if readable and (target := self._rcv_target(conn)) > 1:  # SO_RCVLOWAT: tcp_epollin_ready's target
            readable = held + conn.rcv_queued >= target or self._enough(conn, target)
        if st is ESTABLISHED or st is CLOSE_WAIT:
            space = conn.send_space  # writable as Linux: a third of the buffer free (space >= queued / 2)
            return readable, space > 0 and 2 * space >= conn.pending and conn.notsent_ok
        return readable, True  # our FIN is queued: send fails at once (EPIPE)

    def _update(self) -> None:
        """Set the descriptor's readiness to the socket's. With the engine's lock held."""
        if not self._dead:
            ready, conn = self._ready, self._conn
            if conn is not None and (conn.error is not None or conn.state in _OVER):
                # over both ways: POLLHUP for good, POLLERR until its error is read (tcp_poll);
                # all at once, by `hang_up` alone (a "readable" first would be seen without them)
                err = conn.error is not None and conn.error is not self._reported
                if not ready.hup:
                    ready.hang_up(err)
                elif ready.hup == 2 and not err:
                    ready.clear_error()
                return
            if conn is None and self._listening and self._engine is not None:
                self._accepts_seen = self._accept_moves(self._engine)
            r, w = self._poll_state()
            ready.set(r, w)

    def _accept_moves(self, eng: FlowEngine) -> int:
        """The accept-queue changes of the listener's engines, summed (each count only grows, so
        the sum moves whenever one of them does). With the engine's lock held."""
        n = eng.tcp.accept_moves
        for h in self._halves:
            n += h.tcp.accept_moves
        return n

    def _signal(self) -> None:
        """Called by the engine after each pump, with its lock held."""
        eng = self._engine
        if self._listening and eng is not None:
            if eng.error is not None:
                if not self._orphan:
                    self._orphan_if_gone()  # (only an engine's error can orphan it: not looked for otherwise)
            elif self._conn is None and not self._dead and self._accepts_seen == self._accept_moves(eng):
                # A listener's readiness is its accept queues' (and its engine's error): nothing
                # moved since it was set, and a pump that changed nothing else of it (two pumps a
                # request, the listener's engine being every accepted connection's) sets nothing.
                return
        self._update()

    def _orphan_if_gone(self) -> None:
        """Its usnetd went away (died: `DomainGone`; or stopped, `usnet down`: its channels defunct
        with DOMAIN_SHUTDOWN first), and it is a socket of the default domain; or the usnetd worker
        serving its flow died (`WorkerGone`), whatever its client (usnetd, and so its session,
        lives on): orphaned, it waits to be bound again once usnetd (the new worker) is back
        (usnet.client.rebind). With the engine's lock held."""
        eng = self._engine
        if eng is None or self._dead or self._refused is not None:  # (refused: it failed for good)
            return
        if (_went_away(eng.error) and self._where[0] is None) or _worker_died(eng.error):
            self._orphan = True
            _rebind.orphaned(self)

    def _reopen(self, client: Client, open_: Callable[[], _T]) -> _T:
        """`open_()`, the rebind's new flow on `client`, its refusals sorted (usnet.client.rebind.reopen)."""
        return _rebind.reopen(client, self._where[0] is not None, open_)

    def _lost_to(self) -> str:
        """What took the orphan's flow, in words: its usnetd, or its usnetd worker."""
        return "its usnetd worker died" if self._engine is not None and _worker_died(self._engine.error) \
            else "usnetd came back"

    def _rebind(self) -> None:
        """usnetd is back (usnet.client.rebind): listen again on the same port, address and netif,
        with the same backlog and options. The socket's dups, and an asyncio server serving it
        (`moved`), move to the new flow with it; the old one's waiters wake and find it moved.
        ENETDOWN while no usnetd serves the path; another error fails the listener
        (`_rebind_failed`)."""
        old = self._engine
        if self._dead or old is None or not self._orphan:
            return
        client, netif = self._target()  # a new session to the same socket path (ENETDOWN: not yet)
        eng = self._reopen(client, lambda: FlowEngine(client, self._netif, self._port, family=old.family,
                                                      reuse_port=self._reuse_port()))
        halves: tuple[FlowEngine, ...] = ()
        try:
            if not self._wildcard and eng.info.local_addr != old.info.local_addr:
                raise OSError(errno.EADDRNOTAVAIL, f"usnetd came back without {old.info.local_addr}, "
                                                   "the address this socket listened on")
            if self._wildcard and self._dual() and eng.family == 6:
                halves = self._v4_half(client, netif, eng)
            halves += self._loopback_halves(eng, halves)
        except BaseException:
            for e in (*halves, eng):
                e.close()
            raise
        with old.lock:
            was = old.tcp.listeners.get(self._port)
            backlog = 128 if was is None else was.backlog
            group = self._dups(old)
            movers = [m for m in (getattr(w, "moved", None) for w in (*old.watchers, *old.accept_watchers))
                      if m is not None]
            with eng.lock:
                self._listen_on((eng, *halves), backlog)
                for w in group:
                    w._engine, w._halves, w._orphan = eng, halves, False
                    eng.watch(w)
                    w._update()
            old.changed.notify_all()  # blocked accepts: moved
            old.notify()  # asyncio waits on it (usnet.aio)
        runner().add(eng)
        for h in halves:
            runner().add(h)
        for moved in movers:
            moved()
        if self._dead:  # closed meanwhile: the new flow goes too
            with eng.lock:
                self._last_close(eng)
            eng.wake()

    def _dups(self, eng: Any) -> list[Any]:
        """The socket objects of this socket (itself, its dups, its references) that watch `eng`.
        With its lock held."""
        return [w for w in eng.watchers if isinstance(w, socket) and w._share is self._share]

    def _rebind_failed(self, e: OSError) -> None:
        """usnetd came back but this listener cannot listen again (its port taken, its address
        gone, its worker left down): it and its dups fail with that error, as its bind would have.
        On the sockets, not the engine: connections it accepted share the engine and keep their
        own error (their TCP state died with the flow)."""
        eng = self._engine
        if eng is None:
            return
        with eng.lock:
            why = e.strerror or str(e)
            refused = OSError(e.errno, f"binding port {self._port} again after {self._lost_to()}: {why}")
            for w in self._dups(eng):
                w._orphan, w._refused = False, refused
            eng.changed.notify_all()
            eng.notify()


SocketType = socket


_CA_NAME_MAX = 16  # TCP_CA_NAME_MAX: the longest congestion control name, with its NUL


def _congestion_name(value: Any) -> bytes:
    """A TCP_CONGESTION value (bytes or str, NUL-padded or not) as Linux names it: b"cubic",
    b"reno" or b"bbr"; ENOENT for an algorithm usnet does not have, as Linux says for one not loaded."""
    from usnet.proto.tcp.congestion import make_congestion

    raw = value.encode() if isinstance(value, str) else bytes(value)
    name = raw.split(b"\0", 1)[0][: _CA_NAME_MAX - 1].decode(errors="replace")
    try:
        make_congestion(name, 1460)
    except ValueError:
        raise OSError(errno.ENOENT, f"No such file or directory: no congestion control {name!r} "
                                    "in usnet (it has cubic, reno and bbr)") from None
    return b"reno" if name.lower() in ("reno", "newreno") else name.lower().encode()


def _tcp_defaults() -> Any:
    from usnet.proto.tcp.config import TcpConfig

    return TcpConfig()


def _file_descriptor(file: Any) -> tuple[int, int] | None:
    """(descriptor, size) of a file socket.sendfile would give to os.sendfile; None for one it reads
    through its read() (no descriptor, or fstat fails), as socket._sendfile_use_sendfile decides."""
    try:
        fd = file.fileno()
    except (AttributeError, io.UnsupportedOperation):
        return None
    try:
        return fd, os.fstat(fd).st_size
    except OSError:
        return None


# The fork() hooks that share this process's TCP sockets with a child: the module uses this one
from usnet.client import inherit as _inherit  # noqa: E402,F401
