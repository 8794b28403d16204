"""Benchmark applications as processes of their own, each on a control session of an embedded domain.

Why processes: a benchmark that puts sender, receiver and domain in one
interpreter measures the GIL, not the channels. Each child is
`python -m MODULE ROLE FD ARGS...`, where FD is its end of a SEQPACKET
session (`Domain.socketpair_session`); it builds its client with
`Client.from_socket(socket.socket(fileno=FD))`.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from usnet.domain.loop import Domain

__all__ = ["kill_all", "read_all", "run_pair", "spawn_app", "wait_exit"]


def spawn_app(dom: Domain, module: str, role: str, *args: str, keep: tuple[int, ...] = ()) -> subprocess.Popen:
    """Start `python -m module role FD args...` on a new session of `dom`; `keep`: more fds it inherits."""
    s = dom.socketpair_session()
    try:
        return subprocess.Popen([sys.executable, "-m", module, role, str(s.fileno()), *args],
                                pass_fds=(s.fileno(), *keep))
    finally:
        s.close()  # the child has its own copy


def run_pair(dom: Domain, module: str, recv_args: tuple[str, ...], send_args: tuple[str, ...],
             timeout: float = 60, while_sending: Callable[[subprocess.Popen], None] | None = None) -> Any:
    """A receiver and a sender of `module` on sessions of `dom` (started): the receiver's result.

    The receiver (`module recv FD *recv_args OUT READY`) says b"R" on READY once it listens, then
    writes its result, JSON, to OUT; only then does the sender (`module send FD *send_args`)
    start. `while_sending(sender)` runs meanwhile (a look at the flow table, say).
    """
    procs = []
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    try:
        procs.append(spawn_app(dom, module, "recv", *recv_args, str(w), str(ready_w), keep=(w, ready_w)))
        os.close(w)
        os.close(ready_w)
        if os.read(ready_r, 1) != b"R":
            raise RuntimeError(f"the {module} receiver failed to start")
        procs.append(spawn_app(dom, module, "send", *send_args))
        if while_sending is not None:
            while_sending(procs[-1])
        data = read_all(r)
        for p in procs:
            p.wait(timeout)
        return json.loads(data)
    finally:
        os.close(r)
        os.close(ready_r)
        kill_all(procs)


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
