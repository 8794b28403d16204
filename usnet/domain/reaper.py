"""Closing descriptors a client handed us, without ever waiting on them.

A client may send the domain any descriptor with SCM_RIGHTS. Closing the last
reference of some can block the closer: a TCP socket with SO_LINGER set and
unsent data waits up to its linger time, a file on a FUSE mount waits for the
FUSE server's answer to flush. The domain loop must never wait on anything a
client controls (docs/architecture.md, "Rules of the trust boundary"), so
received descriptors go to this reaper: a socket first has its linger turned
into an abortive close (l_onoff=1, l_linger=0, which never waits), and every
close happens on the reaper's own thread. If a close still blocks, only the
reaper waits; `backlog` tells the domain, which then refuses the sessions
that keep sending descriptors.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
import threading
from collections import deque

__all__ = ["Reaper"]

log = logging.getLogger("usnet.reaper")
_NO_LINGER = struct.pack("ii", 1, 0)


def _abortive(fd: int) -> None:
    """Make closing socket `fd` abortive: linger on, zero seconds (never waits)."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)
    except OSError:
        pass  # not a socket type with linger: its close does not wait for it
    finally:
        s.close()


class Reaper:
    """A thread that closes descriptors handed to it, so that no close can hold the caller."""

    def __init__(self) -> None:
        self._fds: deque[int] = deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self.closed = 0  # descriptors closed so far

    @property
    def backlog(self) -> int:
        """Descriptors handed over and not yet closed (a close stuck somewhere shows here)."""
        return len(self._fds)

    def close_later(self, fds: list[int]) -> None:
        """Hand `fds` over: they are closed on the reaper's thread, abortively if sockets."""
        if not fds:
            return
        with self._cv:
            self._fds.extend(fds)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="usnet-reaper", daemon=True)
                self._thread.start()
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._fds:
                    self._cv.wait()
                fd = self._fds[0]
            _abortive(fd)
            try:
                os.close(fd)
            except OSError:
                pass
            with self._cv:
                self._fds.popleft()
                self.closed += 1
                self._cv.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every descriptor handed over is closed (tests); False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._fds, timeout)
