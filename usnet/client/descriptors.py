"""System calls on a usnet socket's descriptor: what `usnet.patch()` puts in place of os.read,
os.write, os.sendfile and os.close.

A usnet socket's `fileno()` is a kernel descriptor that shows the socket's readiness (one end of
an AF_UNIX pair, `usnet.client.engine.Readiness`), not a kernel socket carrying its bytes. Most
programs only select on it; some use the number itself: multiprocessing.connection detaches the
socket and reads and writes the descriptor with os.read/os.write, pyftpdlib sends files with
os.sendfile(sock.fileno(), ...). On the bare descriptor those bytes would go into the readiness
pair (lost, and the readiness wrong from then on). These replacements give a usnet socket's
descriptor (`usnet.socket.by_descriptor`) the socket's own recv/send/close, with the
descriptor's blocking mode: a socket with a timeout (or none blocking) has an O_NONBLOCK
descriptor in Python, so the call does not wait, as on Linux; any other descriptor goes to the
kernel's call unchanged, after one dictionary look-up.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from usnet.client import socket as _us

__all__ = ["KERNEL", "close", "read", "sendfile", "write"]

KERNEL = {name: getattr(os, name) for name in ("read", "write", "sendfile", "close")}  # before anyone replaced them
_read, _write, _sendfile, _close = KERNEL["read"], KERNEL["write"], KERNEL["sendfile"], KERNEL["close"]
_CHUNK = 1 << 18  # what one sendfile call takes from the file at most (Linux: it may send less than asked too)


def _flags(s: Any) -> int:
    """usnet's no-wait unless the socket is blocking without a timeout: Python gives the descriptor
    of a socket with a timeout O_NONBLOCK, so a system call on the number does not wait (EAGAIN at
    once), where the socket's MSG_DONTWAIT would wait within the timeout, as CPython's does."""
    return 0 if s.gettimeout() is None else _us._NOWAIT


def read(fd: int, n: int, /) -> bytes:
    s = _us.by_descriptor(fd)
    if s is None:
        return _read(fd, n)
    return s.recv(n, _flags(s))


def write(fd: int, data: Any, /) -> int:
    s = _us.by_descriptor(fd)
    if s is None:
        return _write(fd, data)
    return s.send(data, _flags(s))


def sendfile(out_fd: int, in_fd: int, offset: int | None, count: int, /, *args: Any, **kw: Any) -> int:
    """os.sendfile to a usnet socket: the file's bytes from `offset` (from the file position, which
    advances by what was sent, when None) through the socket's send; what was sent, 0 at the end of
    the file; EAGAIN where the socket cannot take any now and does not wait."""
    s = _us.by_descriptor(out_fd)
    if s is None:
        return _sendfile(out_fd, in_fd, offset, count, *args, **kw)
    if count <= 0:
        return 0
    start = os.lseek(in_fd, 0, os.SEEK_CUR) if offset is None else offset
    data = os.pread(in_fd, min(count, _CHUNK), start)
    if not data:
        return 0
    try:
        sent = s.send(data, _flags(s))
    except OSError as e:
        if e.errno == errno.EPIPE:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe") from None
        raise
    if offset is None:
        os.lseek(in_fd, start + sent, os.SEEK_SET)
    return sent


def close(fd: int, /) -> None:
    """os.close of a usnet socket's descriptor closes the socket (the connection ends, as the
    kernel's would with the last descriptor of a socket)."""
    s = _us.by_descriptor(fd)
    if s is None:
        _close(fd)
    else:
        s.close()
