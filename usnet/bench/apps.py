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
import tempfile
from collections.abc import Callable
from typing import Any

from usnet.domain.loop import Domain

__all__ = ["App", "kill_all", "read_all", "run_pair", "spawn_app", "wait_exit"]


class App(subprocess.Popen):
    """A benchmark application whose standard error goes to a file of its own.

    Why: when one fails, the exception that says so should carry the child's
    own last words (a CI log keeps only the end of the run, and the child's
    traceback was printed long before).
    """

    def __init__(self, argv: list[str], pass_fds: tuple[int, ...]) -> None:
        self.errlog = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the child; kill_all closes it
        super().__init__(argv, pass_fds=pass_fds, stderr=self.errlog)

    def failure(self) -> str:
        """`exit status N: <the last lines it wrote to stderr>` (after it exited)."""
        self.errlog.seek(0)
        lines = self.errlog.read().decode(errors="replace").strip().splitlines()[-6:]
        return f"exit status {self.returncode}" + (": " + " | ".join(lines) if lines else "")


def spawn_app(dom: Domain, module: str, role: str, *args: str, keep: tuple[int, ...] = ()) -> App:
    """Start `python -m module role FD args...` on a new session of `dom`; `keep`: more fds it inherits."""
    s = dom.socketpair_session()
    try:
        return App([sys.executable, "-m", module, role, str(s.fileno()), *args], pass_fds=(s.fileno(), *keep))
    finally:
        s.close()  # the child has its own copy


def run_pair(dom: Domain, module: str, recv_args: tuple[str, ...], send_args: tuple[str, ...],
             timeout: float = 60, while_sending: Callable[[subprocess.Popen], None] | None = None) -> Any:
    """A receiver and a sender of `module` on sessions of `dom` (started): the receiver's result.

    The receiver (`module recv FD *recv_args OUT READY`) says b"R" on READY once it listens, then
    writes its result, JSON, to OUT; only then does the sender (`module send FD *send_args`)
    start. `while_sending(sender)` runs meanwhile (a look at the flow table, say).
    """
    procs: list[App] = []
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    try:
        procs.append(spawn_app(dom, module, "recv", *recv_args, str(w), str(ready_w), keep=(w, ready_w)))
        os.close(w)
        os.close(ready_w)
        if os.read(ready_r, 1) != b"R":
            procs[0].wait(timeout)
            raise RuntimeError(f"the {module} receiver failed to start ({procs[0].failure()})")
        procs.append(spawn_app(dom, module, "send", *send_args))
        if while_sending is not None:
            while_sending(procs[-1])
        data = read_all(r)
        for p in procs:
            p.wait(timeout)
        if failed := [f"{role}: {p.failure()}" for role, p in zip(("receiver", "sender"), procs) if p.returncode]:
            raise RuntimeError(f"the {module} " + "; ".join(failed))
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


def kill_all(procs: list[App]) -> None:
    """Kill and reap the children still running (a benchmark that failed half-way)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.errlog.close()


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
