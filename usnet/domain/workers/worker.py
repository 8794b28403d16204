"""Worker k of `usnetd --workers N` (`WorkerDomain`): an ordinary Domain on queue k of every
sharded netif, whose only peer is usnetd. What differs from one core is here: it obeys usnetd's
command socket (heartbeats, sessions, neighbours, frames handed over, the host's groups and
filters), asks usnetd for neighbours, says no IGMP or MLD, and hands usnetd what it loops to a
port of another worker."""

from __future__ import annotations

import errno
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

from usnet.abi import protocol as P
from usnet.abi.events import RevokeReason
from usnet.abi.transport import recv_msg
from usnet.domain.loop import Domain
from usnet.domain.lowlat.policer import Policer
from usnet.domain.sessions import Session
from usnet.domain.watch import READ
from usnet.domain.workers.gate import count_hand_over, frame_family, hand_over_room, send_handed
from usnet.domain.workers.messages import (
    COMMAND_MAX,
    GROUP_ALL,
    GROUP_LEAVE,
    filter_of,
    groups_of,
    neighbour_msg,
    neighbour_of,
)
from usnet.domain.workers.steering import worker_of
from usnet.drivers.base import Received

__all__ = ["WorkerDomain"]

READ_AHEAD = 16  # the messages a worker's `_read_host_groups` reads at most


class WorkerDomain(Domain):
    """Worker k: a Domain whose only peer is usnetd, on its command socket `cmd`."""

    def __init__(self, cmd: socket.socket, index: int = 1, workers: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cmd = cmd
        self.index, self.n = index, workers
        self.hand_over_room = hand_over_room(cmd)  # what our looped group datagrams may fill of it
        cmd.setblocking(False)  # read when ready, or by `_read_host_groups` when it may be
        self._sel.register(cmd, READ, ("command", None))
        # the messages `_read_host_groups` read that are not b"G", served (in order, before any
        # later one) at the turn's end
        self._backlog: deque[tuple[bytes, list[int]]] = deque()

    def serve_once(self, timeout: float | None = None) -> None:
        super().serve_once(timeout)
        self._serve_backlog()

    def _serve_backlog(self) -> None:
        """The messages `_read_host_groups` read ahead and kept, in order, each behind the
        command's fault barrier (as the loop's own read of one)."""
        while self._backlog:
            data, fds = self._backlog.popleft()
            try:
                self._command(data, fds)
            except Exception as e:
                self._fault("command", None, e)

    def _read_host_groups(self) -> None:
        """A group missed our table (usnet.domain.switch.multicast `read_host_groups`): read the b"G"
        usnetd sent and we have not read yet, once a batch of input (`host_up_to_date`: a packet
        sent after a join's answer finds the join, since usnetd told us before it answered).
        Whatever else comes with it is kept for the turn's end (`serve_once`), served in order
        then; at most READ_AHEAD messages."""
        for _ in range(READ_AHEAD):
            try:
                data, fds = recv_msg(self.cmd, 4, max_bytes=COMMAND_MAX)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # a bad message or usnetd gone: the loop's own read meets it
            if data[:1] == b"G":  # (before a hand-over read with it: what the host holds is news)
                self._host_groups(data)
            elif data[:1] == b"M":
                self._host_filter(data)
            else:
                self._backlog.append((data, fds))
            if not data:
                return

    def add_netif(self, name: str, driver: Any, *args: Any, **kwargs: Any):
        """A netif whose queue k is ours: each neighbour we ask for is also told to usnetd, which
        receives the answer (ARP and ND come to queue 0) and tells it back (`_expect_neighbour`).
        Its groups are usnetd's to report: we say no IGMP or MLD."""
        sw = super().add_netif(name, driver, *args, **kwargs)
        sw.speaks = False
        sw.read_host_groups = self._read_host_groups
        sw.groups.host_states = {}  # the netif's filter of a group is the host's (usnetd's b"M")
        for family, ask_name in ((4, "_arp_request"), (6, "_solicit")):
            ask = getattr(sw, ask_name)

            def ask_and_tell(addr: bytes, ask: Callable[[bytes], None] = ask, family: int = family) -> None:
                ask(addr)
                try:
                    self.cmd.send(neighbour_msg(b"A", name, family, addr), socket.MSG_DONTWAIT)
                except OSError:  # usnetd's socket full or gone: our own requests go on; its EOF comes
                    pass

            setattr(sw, ask_name, ask_and_tell)

        def hand_over(port: int, frame: Received, looped: bool) -> bool:
            return looped and self._loop_out(sw, name, port, frame)

        sw.hand_over = hand_over
        return sw

    def _loop_out(self, sw: Any, netif: str, port: int, frame: Received) -> bool:
        """A packet of our local queue to `port` (a group datagram a flow here sent with
        IP_MULTICAST_LOOP, a flow's packet to the netif's own address, the host's answer to one):
        False if `port` is ours (its members, its flow are here); else handed to usnetd (counted),
        which delivers it to its own or hands it on to the port's worker (`ShardedDomain._hand_over`);
        dropped if our room on the command socket is full (counted). The local path loops only to a group
        the host is in (usnetd's b"G": `groups.host`); which of the other workers holds it only
        usnetd knows, so every such datagram of another worker's port goes to it."""
        if worker_of(port, self.n) == self.index:
            return False
        count_hand_over(sw, send_handed(self.cmd, self.hand_over_room, b"L", netif, frame_family(frame), frame))
        return True

    def _dispatch(self, session: Session, req: P.Request) -> tuple[P.Reply, list[int]]:
        """usnetd's leases on our flows, besides what any Domain serves: every session here is one
        usnetd opened (a client never reaches a worker's control socket), so it is obeyed."""
        if session.over_limit is None and type(req) is P.AddPorts and req.ports is not None:
            block, ports = self.add_ports(session, req, listed=True)  # usnetd's block for its connector here
            return P.PortsAdded(req.channel, block, ports), []
        if session.over_limit is None and isinstance(req, (P.ApplyLease, P.EndLease)):
            ref = self._own(session, req.channel)
            if ref.flow is None or ref.switch is None:
                raise OSError(errno.EINVAL, f"channel {req.channel} is not a flow")
            netif = ref.switch.netif.name
            with self.lock:
                if isinstance(req, P.ApplyLease):
                    self.leases.apply(ref, netif, req.lease, req.service_class, req.rate,
                                      Policer(req.rate, req.burst, req.max_packet))
                else:
                    self.leases.unapply(ref, netif, req.lease, RevokeReason(req.reason))
            return P.Done(), []
        return super()._dispatch(session, req)

    def _serve_event(self, kind: str, obj: Any, fd: int, mask: int) -> None:
        if kind != "command":
            super()._serve_event(kind, obj, fd, mask)
            return
        self._serve_backlog()  # what `_read_host_groups` read first comes first
        try:
            data, fds = recv_msg(self.cmd, 4, max_bytes=COMMAND_MAX)
        except (BlockingIOError, InterruptedError):
            return
        self._command(data, fds)

    def _command(self, data: bytes, fds: list[int]) -> None:
        """One message of usnetd's on the command socket (docs/abi.md, "A worker's command socket")."""
        if not data:  # usnetd is gone or stopping: so are we
            self.request_stop()
            return
        if data[:1] == b"H":  # usnetd's heartbeat: this loop turns
            try:
                self.cmd.send(b"h", socket.MSG_DONTWAIT)
            except OSError:  # usnetd reads its answers; gone, its EOF comes next
                pass
        elif data[:1] == b"S" and len(fds) == 1:
            self.add_socket_session(socket.socket(fileno=fds[0]))  # its sessions are usnetd's alone
        elif data[:1] in (b"F", b"L"):
            sw, _, frame = neighbour_of(self.switches, data)
            if sw is not None:
                with self.lock:
                    if data[:1] == b"F":
                        sw.rx_whole(frame)
                    else:
                        sw.take_looped(frame)
        elif data[:1] == b"G":
            with self.lock:
                self._host_groups(data)
        elif data[:1] == b"M":
            with self.lock:
                self._host_filter(data)
        elif data[:1] == b"N":
            sw, cache, rest = neighbour_of(self.switches, data)
            if sw is not None and len(rest) == (4 if cache is sw.arp else 16) + 6:
                with self.lock:
                    sw._learn(cache, rest[:-6], rest[-6:], sw.clock())
        else:
            for fd in fds:
                os.close(fd)


    def _host_filter(self, data: bytes) -> None:
        """usnetd's b"M" (`filter_msg`): the host's union of one group's source filters on a netif,
        kept in its switch's table (`host_filter`); a message that does not parse is counted
        (`host_groups_refused`) and changes nothing."""
        sw, got = self._host_msg(data, filter_of)
        if got is not None:
            sw.host_filter(*got)

    def _host_msg(self, data: bytes, parse: Callable[[bytes, int], Any]) -> tuple[Any, Any]:
        """(switch, what `parse` read of the rest) of usnetd's b"G" or b"M" on a netif; (None, None)
        for a netif we do not have, (switch, None) if it does not parse (counted `host_groups_refused`)."""
        sw, _, rest = neighbour_of(self.switches, data)
        if sw is None:
            return None, None
        got = parse(rest, data[1])
        if got is None:
            sw.drops["host_groups_refused"] += 1
        return sw, got

    def _host_groups(self, data: bytes) -> None:
        """usnetd's b"G" (`group_msgs`): the host's first joins, last leaves or whole list of one
        family on a netif, kept in its switch's table (`host_group`); a message that does not
        parse is counted (`host_groups_refused`) and changes nothing."""
        sw, got = self._host_msg(data, groups_of)
        if got is None:
            return
        op, groups = got
        if op == GROUP_ALL:
            sw.groups.forget_host(4 if data[1] == 4 else 16)
        for g in groups:
            sw.host_group(g, op != GROUP_LEAVE)
