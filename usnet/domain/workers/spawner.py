"""Forking the workers: at start (`start_workers`) and, for a dead or hung worker, through the
spawner (`Spawner`), a small process forked first, before anything else is open, that keeps every
netif's queues 1 .. N-1 attached and forks a replacement on usnetd's word. Apart from the domain
because forking is about what a child inherits and closes, not about serving flows."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from usnet.abi.transport import recv_msg, send_msg
from usnet.domain.workers.bounds import WORKER_TIMEOUT
from usnet.domain.workers.link import WorkerLink

__all__ = ["Spawner", "start_workers"]

log = logging.getLogger("usnet.domain.workers")


class Spawner:
    """usnetd's end of the spawner: a small process forked at start, before anything else is open,
    that keeps queue 1 .. N-1 of every netif and forks a new worker k on usnetd's word.

    Why a process of its own: usnetd itself cannot fork a replacement well once it serves (its
    threads, every client's memory mapped and descriptors open, all inherited), and a TAP or
    PACKET_FANOUT queue must never be closed: the kernel moves the last queue into a closed one's
    place, and the steering (port mod N) would send another worker's frames there. The spawner
    holds every queue, so a dead worker's stays attached (its frames wait, then drop) until its
    replacement reads it. Its protocol (SEQPACKET): b"W"+k with a command socket: fork worker k,
    answer b"P"+pid; b"R"+pid: reap it, answer b"S"+status; EOF: it exits."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        sock.settimeout(WORKER_TIMEOUT)

    def spawn(self, k: int) -> WorkerLink:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            send_msg(self.sock, b"W" + bytes([k]), [theirs.fileno()])
            theirs.close()
            data, fds = recv_msg(self.sock, 1)
            for fd in fds:
                os.close(fd)
            if data[:1] != b"P" or len(data) != 5:
                raise OSError(errno.EPROTO, f"the spawner answered {data!r}")
        except BaseException:
            ours.close()
            theirs.close()
            raise
        return WorkerLink(k, int.from_bytes(data[1:], "little"), ours, child=False)

    def reap(self, pid: int) -> int | None:
        try:
            send_msg(self.sock, b"R" + pid.to_bytes(4, "little"))
            data, _ = recv_msg(self.sock, 1)
        except OSError:
            return None
        return int.from_bytes(data[1:], "little", signed=True) if data[:1] == b"S" and len(data) == 5 else None

    def stop(self, timeout: float = 5.0) -> None:
        self.sock.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                return
            time.sleep(0.01)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def _fork(what: str, run: Callable[[], int]) -> int:
    """Fork a child that runs `run` and exits with what it returns (1, logged as `what` failing,
    if it raises); in the parent, the child's pid."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = run()
        except BaseException:
            log.exception("%s failed", what)
        finally:
            os._exit(status)
    return pid


def _spawner_main(sock: socket.socket, queues: dict[str, list],
                  make: Callable[[int, socket.socket, dict[str, Any]], int]) -> int:
    """The spawner's loop (see `Spawner`): blocking, single-threaded, its only peer usnetd."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        data, fds = recv_msg(sock, 1)
        if not data:
            return 0
        if data[:1] == b"W" and len(data) == 2 and len(fds) == 1:
            k = data[1]
            cmd = socket.socket(fileno=fds[0])

            def worker(k: int = k, cmd: socket.socket = cmd) -> int:
                sock.close()
                mine = {name: qs[k] for name, qs in queues.items() if 0 < k < len(qs)}
                for q in mine.values():
                    resume = getattr(q, "resume", None)  # a packet queue's ring positions, found again
                    if resume is not None:
                        resume()
                return make(k, cmd, mine)

            pid = _fork(f"worker {k}", worker)
            cmd.close()
            send_msg(sock, b"P" + pid.to_bytes(4, "little"))
        elif data[:1] == b"R" and len(data) == 5:
            try:
                status = os.waitpid(int.from_bytes(data[1:], "little"), 0)[1]
            except ChildProcessError:
                status = -1
            send_msg(sock, b"S" + status.to_bytes(4, "little", signed=True))
        else:
            for fd in fds:
                os.close(fd)


def start_workers(n: int, queues: dict[str, list], make: Callable[[int, socket.socket, dict[str, Any]], int],
                  keep: list[int]) -> tuple[list[WorkerLink], dict[str, Any], Spawner]:
    """Fork workers 1 .. n-1, each given queue k of every netif in `queues` and run by `make`
    (its exit status); returns usnetd's links and its own drivers (queue 0). `keep`: descriptors
    a child closes at once (usnetd's own, such as its control socket). First it forks the
    spawner (`Spawner`, returned third), which keeps every queue and forks a dead worker's
    replacement (a TAP's or a packet netif's: `PacketDriver.resume`)."""
    links: list[WorkerLink] = []
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def spawn() -> int:
        ours.close()
        for fd in keep:
            os.close(fd)
        return _spawner_main(theirs, queues, make)

    pid = _fork("the worker spawner", spawn)
    theirs.close()
    spawner = Spawner(pid, ours)
    for k in range(1, n):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

        def worker(k: int = k, ours: socket.socket = ours, theirs: socket.socket = theirs) -> int:
            ours.close()
            spawner.sock.close()
            for link in links:
                link.cmd.close()
            for fd in keep:
                os.close(fd)
            mine = {}
            for name, qs in queues.items():
                for i, q in enumerate(qs):
                    if i == k:
                        mine[name] = q
                    else:
                        q.close()
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C: usnetd stops us
            return make(k, theirs, mine)

        pid = _fork(f"worker {k}", worker)
        theirs.close()
        links.append(WorkerLink(k, pid, ours))
    own: dict[str, Any] = {}
    for name, qs in queues.items():
        own[name] = qs[0]
        for q in qs[1:]:
            q.close()  # the spawner (if any) keeps its own copies: the queues stay attached
    return links, own, spawner
