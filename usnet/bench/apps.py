"""Benchmark applications as processes of their own, each on a control session of an embedded domain.

Why processes: a benchmark that puts sender, receiver and domain in one
interpreter measures the GIL, not the channels. Each child is
`python -m MODULE ROLE FD ARGS...`, where FD is its end of a SEQPACKET
session (`Domain.socketpair_session`); it builds its client with
`Client.from_socket(socket.socket(fileno=FD))`.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys

from usnet.domain.loop import Domain

__all__ = ["kill_all", "read_all", "spawn_app", "wait_exit"]


def spawn_app(dom: Domain, module: str, role: str, *args: str, keep: tuple[int, ...] = ()) -> subprocess.Popen:
    """Start `python -m module role FD args...` on a new session of `dom`; `keep`: more fds it inherits."""
    s = dom.socketpair_session()
    try:
        return subprocess.Popen([sys.executable, "-m", module, role, str(s.fileno()), *args],
                                pass_fds=(s.fileno(), *keep))
    finally:
        s.close()  # the child has its own copy


def read_all(fd: int) -> bytes:
    """Everything written to a pipe until every writer closed it (a child's result)."""
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data


def kill_all(procs: list[subprocess.Popen]) -> None:
    """Kill and reap the children still running (a benchmark that failed half-way)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def wait_exit(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait for a child to exit, asleep in the kernel on its pidfd; True if it did within `timeout`.

    `Popen.wait(timeout)` polls instead, waking up to every 50 ms. In the
    process of an embedded domain each of those wake-ups takes the GIL from
    the domain's thread: a benchmark should not add work of its own there.
    """
    if proc.poll() is not None:
        return True
    fd = os.pidfd_open(proc.pid)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            return False
    finally:
        os.close(fd)
    proc.wait()
    return True
