"""AF_UNIX SOCK_SEQPACKET transport for control messages (docs/architecture.md, "Two domains").

SEQPACKET keeps message boundaries (one recv = one control message, no
framing to get wrong) and is connection-oriented (EOF tells the domain a
client died, SO_PEERCRED tells it who the client is).  Memory and doorbells
travel as SCM_RIGHTS file descriptors.  Received descriptors are always
close-on-exec, and every error path closes what arrived: a hostile peer must
not be able to exhaust our descriptor table.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Sequence

from .protocol import (
    MAX_MESSAGE,
    NOTICES,
    REQUEST_TYPES,
    ControlError,
    Error,
    ProtocolError,
    Reply,
    Request,
    decode_reply,
    encode,
)

__all__ = ["ControlClient", "connect_seqpacket", "listen_seqpacket", "peer_credentials", "recv_msg", "send_msg"]

_UCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
_FD_SIZE = array.array("i").itemsize


def _close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def send_msg(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """Send one message, with ``fds`` as SCM_RIGHTS.

    Empty messages are refused because a zero-length read is how the receiver
    recognises EOF.
    """
    if not data:
        raise ProtocolError("empty control message (would read as EOF)")
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"control message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sent = sock.sendmsg([data], anc)
    if sent != len(data):  # cannot happen on SEQPACKET, but never send half a message silently
        raise ProtocolError(f"short send: {sent} of {len(data)} bytes")


def recv_msg(sock: socket.socket, max_fds: int = 16,
             close: Callable[[list[int]], None] | None = None, max_bytes: int = MAX_MESSAGE) -> tuple[bytes, list[int]]:
    """Receive one message and its descriptors; ``(b"", [])`` on orderly EOF.

    A message longer than ``max_bytes`` (MAX_MESSAGE; more only between usnetd and its workers,
    which pass whole datagrams), or carrying more than ``max_fds``
    descriptors, raises ProtocolError after closing every descriptor that did
    arrive (the kernel closes the ones that did not fit), with ``close`` if
    given: the domain passes its reaper, since closing a descriptor a client
    chose can wait.
    """
    data, anc, flags, _ = sock.recvmsg(
        max_bytes + 1, socket.CMSG_SPACE(max_fds * _FD_SIZE), socket.MSG_CMSG_CLOEXEC
    )
    fds: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", payload[: len(payload) - len(payload) % _FD_SIZE]))
    problem = None
    if flags & socket.MSG_TRUNC or len(data) > max_bytes:
        problem = f"control message exceeds {max_bytes} bytes"
    elif flags & socket.MSG_CTRUNC:
        problem = f"control message carried more than {max_fds} descriptors"
    elif not data and fds:
        problem = "descriptors without a message"
    if problem:
        (close or _close_all)(fds)
        raise ProtocolError(problem)
    return data, fds


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer as the kernel recorded it at connect time.

    This, never a field of a message, is the client's identity.
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def _seqpacket() -> socket.socket:
    return socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


def listen_seqpacket(path: str, backlog: int = 64, mode: int | None = None) -> socket.socket:
    """Bind and listen at ``path``.

    A leftover socket file from a dead daemon is removed; a live one (something
    accepts connections there) raises OSError(EADDRINUSE) rather than stealing
    its path.  A non-socket file at ``path`` is never removed.  Two daemons
    starting at the very same instant can still race; guard with a lock file if
    that matters.
    """
    sock = _seqpacket()
    try:
        try:
            sock.bind(path)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise FileExistsError(errno.EEXIST, "exists and is not a socket", path) from None
            probe = _seqpacket()
            probe.settimeout(1.0)
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                os.unlink(path)  # stale: nobody listening
            except FileNotFoundError:
                pass  # vanished meanwhile
            except OSError as pe:  # timeout (backlog full), EPROTOTYPE (other socket type)...
                raise OSError(errno.EADDRINUSE, f"{path} is in use ({pe})") from None
            else:
                raise OSError(errno.EADDRINUSE, f"another daemon is listening on {path}")
            finally:
                probe.close()
            sock.bind(path)
        if mode is not None:
            os.chmod(path, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def connect_seqpacket(path: str, timeout: float | None = None) -> socket.socket:
    """Connect to a domain's control socket at ``path``."""
    sock = _seqpacket()
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


class ControlClient:
    """Client end of a control session: one request in flight, one reply back.

    Replies carry no request id, so a reply that misses its timeout would be
    taken for the answer to the next request.  Rather than risk that, a
    timeout or protocol error closes the connection (the domain then tears
    the session down) and later requests raise ConnectionError.
    """

    def __init__(self, sock: socket.socket, timeout: float = 10.0) -> None:
        self._sock: socket.socket | None = sock
        self.timeout = timeout
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, path: str, timeout: float = 10.0) -> ControlClient:
        return cls(connect_seqpacket(path, timeout), timeout)

    def fileno(self) -> int:
        return -1 if self._sock is None else self._sock.fileno()

    def request(self, msg: Request, timeout: float | None = None) -> tuple[Reply, list[int]]:
        """Send ``msg`` and return the reply with any descriptors that came with it.

        The caller owns the returned descriptors.  An ``Error`` reply raises
        ControlError; no reply within ``timeout`` raises TimeoutError.
        """
        if not isinstance(msg, REQUEST_TYPES):
            raise TypeError(f"not a request: {type(msg).__name__}")
        data = encode(msg)
        with self._lock:
            sock = self._sock
            if sock is None:
                raise ConnectionError("control connection is closed")
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.0))
                send_msg(sock, data)
                sock.settimeout(max(deadline - time.monotonic(), 1e-6))
                raw, fds = recv_msg(sock)
            except (OSError, ProtocolError):  # includes TimeoutError
                self._close_locked()
                raise
            if not raw:
                self._close_locked()
                raise ConnectionResetError(errno.ECONNRESET, "domain closed the control connection")
            try:
                reply = decode_reply(raw)
            except ProtocolError:
                _close_all(fds)
                self._close_locked()
                raise
        if isinstance(reply, Error):
            _close_all(fds)
            raise ControlError(reply.code, reply.message)
        return reply, fds

    def notify(self, msg: Request) -> None:
        """Send a notice (one of NOTICES), which the domain answers with nothing: no waiting.

        Not under the request lock: a SEQPACKET message is atomic, and since no reply
        comes, a request in flight on another thread still gets its own reply next.
        """
        if not isinstance(msg, NOTICES):
            raise TypeError(f"not a notice: {type(msg).__name__}")
        sock = self._sock
        if sock is None:
            raise ConnectionError("control connection is closed")
        send_msg(sock, encode(msg))

    def _close_locked(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def forget(self) -> None:
        """In a child of fork(): close this process's copy of the socket and nothing else (the
        parent's session goes on). Not under the lock, which a thread of the parent may have
        held at the fork, and which no thread of the child will ever release."""
        self._lock = threading.Lock()
        self._close_locked()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
