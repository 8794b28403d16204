"""usnetd's end of worker k (`WorkerLink`): its process (stopped and reaped here) and its command
socket, and what usnetd sends on it without a reply: a new session, a neighbour, the host's
groups, a frame handed over. The supervision that decides when a worker is dead or hung is
ShardedDomain's (usnet.domain.workers.sharded); this is the handle it holds."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
from typing import TYPE_CHECKING

from usnet.abi.transport import send_msg
from usnet.domain.workers.bounds import WORKER_TIMEOUT
from usnet.domain.workers.gate import TOLD_SHARE, hand_over_room, send_handed, send_within
from usnet.domain.workers.messages import neighbour_msg
from usnet.drivers.base import Received

if TYPE_CHECKING:
    from usnet.domain.workers.spawner import Spawner

__all__ = ["WorkerLink"]

log = logging.getLogger("usnet.domain.workers")


class WorkerLink:
    """usnetd's end of worker k: its process and its command socket (sessions and neighbours)."""

    def __init__(self, index: int, pid: int, cmd: socket.socket, child: bool = True) -> None:
        self.index = index
        self.pid = pid
        self.cmd = cmd
        self.child = child  # usnetd's own child (forked at start), else the spawner's (a restart)
        self.started = time.monotonic()
        self.asked: float | None = None  # when the heartbeat it has not answered yet was sent
        self.ready = False  # it answered a heartbeat: its loop runs (until then START_TIMEOUT applies)
        # when a passed deadline last made usnetd look at it (/proc: `Supervisor.suspect`), and
        # its CPU ticks then; whether it was found starved since it last answered (logged once)
        self.probe: tuple[float, int] | None = None
        self.starved = False
        # the bytes of its command socket's send buffer that hand-overs may fill (`hand_over`)
        self.hand_over_room = hand_over_room(cmd)
        self.told_room = hand_over_room(cmd, TOLD_SHARE)  # what b"G" and b"M" may fill with them
        # a b"G" or b"M" could not be sent (past `told_room`): the whole list goes again (`tell_groups`)
        self.groups_stale = False

    def new_session(self) -> socket.socket:
        """A session in the worker, on a new SEQPACKET pair; usnetd's end, with a timeout."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            send_msg(self.cmd, b"S", [theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(WORKER_TIMEOUT)
        return ours

    def neighbour(self, netif: str, family: int, addr: bytes, mac: bytes) -> None:
        try:
            send_msg(self.cmd, neighbour_msg(b"N", netif, family, addr + mac))
        except OSError as e:  # a worker gone: its flows are lost; the log says so
            log.warning("worker %d: cannot pass a neighbour: %s", self.index, e)

    def tell_groups(self, msgs: list[bytes]) -> None:
        """b"G" and b"M" messages (`group_msgs`, `filter_msg`), sent without waiting within
        `told_room` (`send_within`: a client's joins and leaves never take the room of usnetd's
        own commands); one that cannot be sent marks the worker `groups_stale`, and the rest wait
        with it: the whole list goes again with the next heartbeat (a worker gone: its EOF is
        heard in the loop)."""
        if self.groups_stale:
            return  # (its whole list is due: what changes meanwhile is in it)
        for m in msgs:
            if not send_within(self.cmd, self.told_room, m):
                self.groups_stale = True
                return

    def hand_over(self, netif: str, family: int, frame: Received, looped: bool = False) -> bool:
        """A datagram usnetd put back together for a port of this worker, or an ICMP error about
        one, or a group datagram sent with IP_MULTICAST_LOOP (`looped`), sent without waiting
        (`send_handed`); False if it could not be."""
        return send_handed(self.cmd, self.hand_over_room, b"L" if looped else b"F", netif, family, frame)

    def stop(self, timeout: float = 5.0, spawner: Spawner | None = None) -> None:
        """Close its command socket (it stops) and reap it; killed if it takes longer than `timeout`.
        A restarted worker is the spawner's child: waited for on a pidfd, reaped by the spawner."""
        self.cmd.close()
        if not self.child:
            try:
                pidfd = os.pidfd_open(self.pid)
            except OSError:  # gone already
                return
            try:
                if not select.select([pidfd], [], [], timeout)[0]:
                    os.kill(self.pid, signal.SIGKILL)
            finally:
                os.close(pidfd)
            if spawner is not None:
                spawner.reap(self.pid)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return
            time.sleep(0.01)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)

    def reap(self, spawner: Spawner | None) -> str:
        """The dead (or useless: its command socket closed) worker killed and reaped: how it ended."""
        try:
            os.kill(self.pid, signal.SIGKILL)  # still ours to signal: nobody reaped it yet
        except ProcessLookupError:
            pass
        status: int | None = None
        if self.child:
            try:
                status = os.waitpid(self.pid, 0)[1]
            except ChildProcessError:
                pass
        elif spawner is not None:
            status = spawner.reap(self.pid)
        return _describe(status)


def _describe(status: int | None) -> str:
    if status is None:
        return "ended"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
