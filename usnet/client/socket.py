"""`usnet.socket`: TCP over usnet, shaped like the standard `socket` module.

An ordinary program swaps ``import socket`` for ``from usnet import socket``.
Which usnet to use comes from `configure(client, netif)`, or else from the
environment: ``USNET_SOCKET`` (usnetd's control socket, default
/run/usnet/usnetd.sock) and ``USNET_NETIF`` (default usnet0).

Each listening or connecting socket is one flow channel served by the
process's stack thread (usnet.client.engine); accepted connections share their
listener's channel. AF_INET and AF_INET6 both work: an AF_INET6 socket is
an IPv6 flow (addresses are 4-tuples, as in the standard module) and takes
no IPv4 traffic (as with IPV6_V6ONLY). Blocking, timeouts (TimeoutError), non-blocking
(BlockingIOError) and `fileno()` for selectors behave as in the standard
module; errors are the standard library's (ConnectionRefusedError,
ConnectionResetError, TimeoutError, BrokenPipeError).
"""

from __future__ import annotations

import errno
import io
import ipaddress
import os
import socket as _std
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from usnet.abi.paths import DEFAULT_SOCKET
from usnet.client import resolver as _names
from usnet.client.engine import FlowEngine, runner
from usnet.client.session import Client
from usnet.proto.tcp.connection import CLOSED, SYN_SENT, TcpConnection

__all__ = [
    "AF_INET", "AF_INET6", "IPPROTO_TCP", "SHUT_RD", "SHUT_RDWR", "SHUT_WR", "SOCK_STREAM", "SOL_SOCKET",
    "SO_KEEPALIVE", "SO_LINGER", "SO_REUSEADDR", "TCP_NODELAY", "TCP_USER_TIMEOUT", "configure", "create_connection",
    "error", "gaierror", "getaddrinfo", "getdefaulttimeout", "gethostbyaddr", "gethostbyname", "gethostbyname_ex",
    "getnameinfo", "herror", "setdefaulttimeout", "socket", "timeout",
]

AF_INET, AF_INET6 = _std.AF_INET, _std.AF_INET6
SOCK_STREAM = _std.SOCK_STREAM
SOL_SOCKET, SO_REUSEADDR, SO_KEEPALIVE = _std.SOL_SOCKET, _std.SO_REUSEADDR, _std.SO_KEEPALIVE
IPPROTO_TCP, TCP_NODELAY, TCP_USER_TIMEOUT = _std.IPPROTO_TCP, _std.TCP_NODELAY, _std.TCP_USER_TIMEOUT
SO_LINGER = _std.SO_LINGER
SHUT_RD, SHUT_WR, SHUT_RDWR = _std.SHUT_RD, _std.SHUT_WR, _std.SHUT_RDWR
error, timeout, gaierror, herror = OSError, TimeoutError, _std.gaierror, _std.herror
_GLOBAL_DEFAULT_TIMEOUT = _std._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]  # the stdlib's private sentinel

_default: dict[str, Any] = {"client": None, "netif": None, "timeout": None}
_default_lock = threading.Lock()


def configure(client: Client | None = None, netif: str | None = None) -> None:
    """Which usnet domain and netif new sockets use (default: from the environment)."""
    _default["client"], _default["netif"] = client, netif


def _target() -> tuple[Client, str]:
    with _default_lock:
        if _default["client"] is None:
            _default["client"] = Client.connect(os.environ.get("USNET_SOCKET", DEFAULT_SOCKET))
        return _default["client"], _default["netif"] or os.environ.get("USNET_NETIF", "usnet0")


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


def _sockaddr(family: int, addr: bytes | str, port: int) -> tuple:
    """The standard module's address tuple: (host, port), or (host, port, 0, 0) for AF_INET6."""
    host = str(ipaddress.ip_address(addr))
    return (host, port, 0, 0) if family == AF_INET6 else (host, port)


def create_connection(address: tuple[str, int], timeout: object = _GLOBAL_DEFAULT_TIMEOUT,
                      source_address: tuple[str, int] | None = None, **where: Any) -> socket:
    """As the standard create_connection; the family is the address's."""
    family = getaddrinfo(address[0], address[1], type=SOCK_STREAM, **where)[0][0]
    s = socket(family, **where)
    if timeout is not _GLOBAL_DEFAULT_TIMEOUT:
        s.settimeout(timeout)  # type: ignore[arg-type]
    if source_address is not None:
        s.bind(source_address)
    try:
        s.connect(address)
    except BaseException:
        s.close()
        raise
    return s


class socket:
    """A TCP socket over usnet (AF_INET or AF_INET6, SOCK_STREAM)."""

    def __init__(self, family: int = AF_INET, type: int = SOCK_STREAM, proto: int = 0,
                 fileno: int | None = None, *, client: Client | None = None, netif: str | None = None) -> None:
        if family not in (AF_INET, AF_INET6) or type & 0xF != SOCK_STREAM or fileno is not None:
            raise OSError(errno.EAFNOSUPPORT, "usnet.socket carries AF_INET and AF_INET6 SOCK_STREAM")
        self.family, self.type, self.proto = family, SOCK_STREAM, proto
        self._timeout: float | None = getdefaulttimeout()
        self._port = 0
        self._engine: FlowEngine | None = None
        self._conn: TcpConnection | None = None
        self._listening = False
        self._owns_engine = False
        self._closed = False
        self._io_refs = 0
        self._ready = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # for selectors: readable data
        self._nodelay = False
        self._user_timeout = 0.0  # seconds (TCP_USER_TIMEOUT is set in milliseconds)
        self._abort_on_close = False  # SO_LINGER on with a zero timeout: close sends RST
        self._where = (client, netif)  # None: `configure` or the environment decides

    def _target(self) -> tuple[Client, str]:
        client, netif = self._where
        if client is None or netif is None:
            dc, dn = _target()
            client, netif = client or dc, netif or dn
        return client, netif

    # -- the standard surface -------------------------------------------------------

    def settimeout(self, t: float | None) -> None:
        if t is not None and t < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = t

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    def fileno(self) -> int:
        """Readable when recv/accept would not block (an eventfd the stack thread signals)."""
        return self._ready

    def bind(self, address: tuple[str, int]) -> None:
        self._port = int(address[1])

    def listen(self, backlog: int = 128) -> None:
        client, netif = self._target()
        eng = FlowEngine(client, netif, self._port, family=self._ip_version)
        self._port = eng.info.local_port
        with eng.lock:
            eng.tcp.listen(self._port, backlog=max(1, backlog))
        self._attach(eng, owns=True)
        self._listening = True

    def accept(self) -> tuple[socket, tuple[str, int]]:
        eng = self._need_engine()
        conn = self._wait(lambda: eng.tcp.accept(self._port), "accept")
        child = socket(self.family, client=self._where[0], netif=self._where[1])
        child._timeout = self._timeout
        child._port = self._port
        child._nodelay, child._user_timeout = self._nodelay, self._user_timeout  # inherited, as in Linux
        with eng.lock:
            child._apply_options(conn)
        child._attach(eng, owns=False, conn=conn)
        return child, _sockaddr(self.family, conn.remote_addr, conn.remote_port)

    def connect(self, address: tuple[str, int]) -> None:
        err = self.connect_ex(address)
        if err:
            raise OSError(err, os.strerror(err))

    def connect_ex(self, address: tuple[str, int]) -> int:
        host, port = getaddrinfo(address[0], address[1], self.family, client=self._where[0],
                                 netif=self._where[1])[0][4][:2]
        client, netif = self._target()
        if self._engine is None:
            eng = FlowEngine(client, netif, self._port, remote=(host, port), family=self._ip_version)
            self._port = eng.info.local_port  # the ephemeral port the switch chose, for getsockname
            with eng.lock:
                self._conn = eng.tcp.connect(ipaddress.ip_address(host).packed, port, time.monotonic(),
                                             local_port=eng.info.local_port)
                self._apply_options(self._conn)
            self._attach(eng, owns=True, conn=self._conn)
        conn = self._conn
        if conn is None:  # a listener
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        try:
            self._wait(lambda: conn.state is not SYN_SENT or conn.error is not None or None, "connect")
        except BlockingIOError:
            return errno.EINPROGRESS
        if conn.error is not None:
            raise conn.error
        if conn.state is CLOSED:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        return 0

    def send(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        conn = self._need_conn()
        if not len(data):
            return 0
        # conn.send raises once the connection can no longer send; 0 means its buffer is full
        n = self._wait(lambda: conn.send(data) or None, "send")
        runner().wake()
        return n

    def sendall(self, data: bytes | bytearray | memoryview, flags: int = 0) -> None:
        mv = memoryview(data).cast("B")
        while mv:
            n = self.send(mv)
            mv = mv[n:]

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        conn = self._need_conn()
        return self._wait(lambda: self._read(conn, lambda: conn.recv(bufsize), b""), "recv")

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        conn = self._need_conn()
        mv = memoryview(buffer).cast("B")
        if nbytes:
            mv = mv[:nbytes]
        return self._wait(lambda: self._read(conn, lambda: conn.recv_into(mv), 0), "recv")

    def shutdown(self, how: int) -> None:
        conn = self._need_conn()
        if how in (SHUT_WR, SHUT_RDWR):
            with self._engine.lock:  # type: ignore[union-attr]
                conn.shutdown_write(time.monotonic())
            runner().wake()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        eng = self._engine
        if eng is not None:
            with eng.lock:
                now = time.monotonic()
                if self._conn is not None:
                    if self._abort_on_close:
                        self._conn.abort(now)
                    else:
                        self._conn.close(now)
                if self._listening:
                    eng.tcp.unlisten(self._port, now)
                if self._owns_engine:
                    eng.release_when_idle = True
                eng.watchers.discard(self)
            runner().wake()
        os.close(self._ready)

    def detach(self) -> int:
        raise OSError(errno.EOPNOTSUPP, "a usnet socket has no kernel descriptor to detach")

    def getsockname(self) -> tuple:
        if self._engine is None:
            return _sockaddr(self.family, "::" if self.family == AF_INET6 else "0.0.0.0", self._port)
        return _sockaddr(self.family, self._engine.info.local_addr, self._port)

    def getpeername(self) -> tuple:
        conn = self._need_conn()
        return _sockaddr(self.family, conn.remote_addr, conn.remote_port)

    def setsockopt(self, level: int, opt: int, value: Any) -> None:
        if level == IPPROTO_TCP and opt == TCP_NODELAY:
            self._nodelay = bool(value)
            if self._conn is not None:
                self._conn.nodelay = bool(value)
        elif level == IPPROTO_TCP and opt == TCP_USER_TIMEOUT:
            self._user_timeout = int(value) / 1000
            if self._conn is not None:
                self._conn.cfg.user_timeout = self._user_timeout
        elif level == SOL_SOCKET and opt == SO_LINGER:
            onoff, linger = struct.unpack("ii", value)
            self._abort_on_close = bool(onoff) and linger == 0  # a lingering close: not modelled
        elif level == SOL_SOCKET and opt == SO_KEEPALIVE and self._conn is not None:
            with self._engine.lock:  # type: ignore[union-attr]
                self._conn.set_keepalive(time.monotonic(), bool(value))
        # SO_REUSEADDR and the rest: nothing to do in usnet

    def getsockopt(self, level: int, opt: int, buflen: int = 0) -> int:
        if level == IPPROTO_TCP and opt == TCP_NODELAY:
            return int(self._nodelay)
        if level == IPPROTO_TCP and opt == TCP_USER_TIMEOUT:
            return int(self._user_timeout * 1000)
        if level == SOL_SOCKET and opt == _std.SO_ERROR:
            conn = self._conn
            return (conn.error.errno or 0) if conn is not None and conn.error is not None else 0
        return 0

    def makefile(self, mode: str = "r", buffering: int | None = None, *, encoding: str | None = None,
                 errors: str | None = None, newline: str | None = None) -> Any:
        """As the standard socket.makefile: a SocketIO in a buffer (and a text wrapper)."""
        rw = "".join(c for c in mode if c in "rw")
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
        self._io_refs -= 1

    def _checkClosed(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")

    def __enter__(self) -> socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<usnet.socket fd={self._ready} laddr={self.getsockname()}>"

    # -- for faces that drive the connection themselves (usnet.aio) ---------------------------

    @property
    def engine(self) -> FlowEngine | None:
        """The engine serving this socket (None before listen/connect): its lock guards the connection."""
        return self._engine

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
        self._engine = eng
        self._owns_engine = owns
        self._conn = conn
        with eng.lock:  # the stack thread iterates `watchers` while it pumps
            eng.watchers.add(self)
        if owns:
            runner().add(eng)

    def _apply_options(self, conn: Any) -> None:
        conn.nodelay = self._nodelay
        conn.cfg.user_timeout = self._user_timeout

    def _need_engine(self) -> FlowEngine:
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if self._engine is None:
            raise OSError(errno.EINVAL, "Invalid argument")
        return self._engine

    def _need_conn(self) -> Any:
        self._need_engine()
        if self._conn is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return self._conn

    @staticmethod
    def _read(conn: Any, take: Callable[[], Any], at_eof: Any) -> Any:
        """What `take` reads if data is queued; `at_eof` once no more will come; None: wait."""
        if conn.rcv_queued:
            return take()
        if conn.error is not None:
            raise conn.error
        if conn.eof or conn.state is CLOSED:
            return at_eof
        return None

    def _wait(self, attempt: Any, what: str) -> Any:
        """Run `attempt` under the engine lock until it returns non-None, within the timeout."""
        eng = self._need_engine()
        if eng.error is not None:
            raise eng.error
        t = self._timeout
        deadline = None if t is None else time.monotonic() + t
        woken = False
        with eng.lock:
            while True:
                got = attempt()
                if got is not None:
                    if self._conn is not None and self._conn.readable is False:
                        self._unready()
                    return got
                if eng.error is not None:
                    raise eng.error
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        if t == 0:
                            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
                        raise TimeoutError("timed out")
                else:
                    left = None
                if not woken:
                    # Once, so the stack sends what earlier calls queued (data, a window
                    # update). After that only the network makes progress; waking the
                    # runner on every pump would spin both threads while we wait.
                    runner().wake()
                    woken = True
                eng.changed.wait(left)

    def _unready(self) -> None:
        try:
            os.eventfd_read(self._ready)
        except BlockingIOError:
            pass

    def _signal(self) -> None:
        """Called by the engine after each pump, with its lock held."""
        conn, eng = self._conn, self._engine
        if self._closed or eng is None:
            return
        if eng.error is not None:
            ready = True  # recv and accept raise at once
        elif conn is not None:
            ready = conn.readable
        else:
            lst = eng.tcp.listeners.get(self._port) if self._listening else None
            ready = bool(lst and lst.accept_queue)
        if ready:
            os.eventfd_write(self._ready, 1)
