"""Worker 0 and the control plane of `usnetd --workers N` (`ShardedDomain`; the design is in
usnet.domain.workers): usnetd's own Domain. It composes the duties, each a class of its own module
with a narrow interface: relaying a client's requests to the workers and gathering their answers
(usnet.domain.workers.relay: `Relay`, which owns the lines and their deadlines), watching the
workers and replacing a lost one (supervisor: `Supervisor`), holding a departed client's ports till
its worker lets them go (drains: `Drains`), the client channels a worker serves (channels:
`WorkerChannels`: opens, connectors, their requests, leases and groups), and gathering `usnet
status` (status: `StatusGather`). Here stay what is the domain's own: the dispatch of a client's
requests to those duties, the ends of its sessions, and telling the workers the host's neighbours
and groups (and handing them frames of their ports that arrive here)."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import Any

from usnet.abi import protocol as P
from usnet.domain.loop import Domain
from usnet.domain.sessions import Session
from usnet.domain.switch.table import TCP
from usnet.domain.workers.channels import WorkerChannels
from usnet.domain.workers.drains import Drains
from usnet.domain.workers.gate import count_hand_over, frame_family
from usnet.domain.workers.link import WorkerLink
from usnet.domain.workers.messages import (
    GROUP_ALL,
    GROUP_JOIN,
    GROUP_LEAVE,
    HOST_SOURCES_MAX,
    filter_msg,
    group_msgs,
    neighbour_of,
)
from usnet.domain.workers.relay import Relay
from usnet.domain.workers.relayed import LATER, Line, Proxied, WorkerLost
from usnet.domain.workers.spawner import Spawner
from usnet.domain.workers.status import StatusGather
from usnet.domain.workers.steering import worker_of
from usnet.domain.workers.supervisor import Supervisor
from usnet.drivers.base import Received
from usnet.proto.wire.msf import ANY_SOURCE, Filter

__all__ = ["ShardedDomain"]

log = logging.getLogger("usnet.domain.workers")


class ShardedDomain(Domain):
    """Worker 0 and the control plane of a domain with workers (see the module's docstring)."""

    def __init__(self, links: list[WorkerLink], sharded: set[str], spawner: Spawner | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.links = {link.index: link for link in links}
        self.n = len(links) + 1
        self.sharded = set(sharded)
        self.proxied: dict[int, Proxied] = {}
        self.down: dict[int, str] = {}  # worker -> why it is down (not restarted)
        draining: set[Line] = set()  # the drains' (`Drains.draining`), read by the relay
        # the duties call each other in cycles (a line's end is a drain's or a worker's death; a
        # lost worker undoes relayed requests and drains): each is given the others' hooks here
        self.relay = Relay(self._sel, self.links, self.down, draining,
                           drained=lambda line: self.drains.drained(line),
                           died=lambda link: self.supervisor.died(link),
                           suspect=lambda *a: self.supervisor.suspect(*a),
                           refusal=self._refusal, unpark=self._unpark)
        self.drains = Drains(self.relay, self.links, self.ports, self.proxied, draining,
                             suspect=lambda *a: self.supervisor.suspect(*a),
                             drop=lambda cid: self.worker_channels.drop(cid),
                             dispatch=self._dispatch)
        self.supervisor = Supervisor(self._sel, self.links, spawner, self.relay, self.drains, self.down,
                                     drop_worker=lambda k: self.worker_channels.drop_worker(k),
                                     stopping=lambda: self._stopping,
                                     welcome=self._welcome, tell_groups=self._tell_groups,
                                     heard=self._heard_worker)
        self.worker_channels = WorkerChannels(self, self._ids, self.n, self.relay, self.supervisor, self.proxied,
                                              self._serve_here)
        self.statuses = StatusGather(self.status, self._ask_status, self._unpark, self.supervisor.losses,
                                     self.proxied, self.sessions)
        for link in links:
            self.supervisor.watch(link)
        self.leases.remote_end = self.worker_channels.end_lease

    def _serve_event(self, kind: str, obj: Any, fd: int, mask: int) -> None:
        if kind == "relay":
            with self.lock:
                self.relay.hear(obj)
        elif kind == "worker":
            with self.lock:
                self.supervisor.hear(obj)
        else:
            super()._serve_event(kind, obj, fd, mask)

    def _heard_worker(self, data: bytes) -> None:
        """A worker wrote b"A" (it asked for a neighbour) or b"L" (a group datagram its flow looped)."""
        if data[:1] == b"A":
            self._expect_neighbour(data)
        elif data[:1] == b"L":  # a group datagram worker k's flow looped: its port's members' (maybe ours)
            sw, _, frame = neighbour_of(self.switches, data)
            if sw is not None:
                sw.take_looped(frame)

    def _expect_neighbour(self, data: bytes) -> None:
        """A worker asked for a neighbour (its own ARP request or solicitation, for packets on its
        queue): the answer comes to queue 0, here, and is believed only for an address asked for
        (Linux's arp_accept=0, `HostDuties._rx_arp`), so usnetd waits for it too; when it comes,
        every worker is told (`add_netif`'s tell_workers)."""
        sw, cache, addr = neighbour_of(self.switches, data)
        if sw is not None and len(addr) == (4 if cache is sw.arp else 16):
            for item in cache.expect(addr, sw.clock()):
                sw._unresolved(item)

    def _housekeeping(self) -> float:
        wait = super()._housekeeping()
        return min(wait, self.supervisor.check(), self.statuses.check(), self.relay.check(), self.drains.check())

    def _unpark(self, s: Session, reply: P.Reply, fds: list[int]) -> None:
        """Answer parked session `s`'s request, and read it again (its next request, its end)."""
        s.waiting = s.unread = False
        self._watch_session(s)
        self._reply(s, reply, fds)

    def _ask_status(self, k: int, req: P.Request, done: Callable[[P.Reply, list[int]], tuple[P.Reply, list[int]]],
                    lost: Callable[[], None]) -> None:
        """`StatusGather`'s question to worker k: on usnetd's own session there, not judged."""
        self.relay.send(self.relay.line(None, k), None, req, done, lost, judged=False)

    def _welcome(self, link: WorkerLink) -> None:
        """A new worker is told what the host knows: its neighbours and its groups."""
        self._tell_neighbours(link)
        self._tell_groups(link)

    def _tell_neighbours(self, link: WorkerLink) -> None:
        """A new worker knows no neighbour (ARP and ND arrive on queue 0): everything usnetd knows."""
        for name in self.sharded:
            sw = self.switches.get(name)
            if sw is None:
                continue
            for family, cache in ((4, sw.arp), (6, sw.nd)):
                for addr, (mac, _expires) in list(cache.entries.items()):
                    link.neighbour(name, family, addr, mac)

    def _tell_groups(self, link: WorkerLink) -> None:
        """A new worker (or one that missed a b"G" or b"M") is told every group the host is in on
        each sharded netif (usnetd's table is the union): the whole list of each family
        (GROUP_ALL), then the union's filter of each group whose filter is not any-source (b"M")."""
        link.groups_stale = False
        for name in self.sharded:
            sw = self.switches.get(name)
            if sw is not None:
                for family, size in ((4, 4), (6, 16)):
                    link.tell_groups(group_msgs(name, family, GROUP_ALL, [g for g in sw.groups.refs if len(g) == size]))
                link.tell_groups([_host_filter_msg(sw, name, g, f) for g, f in sw.groups.states.items()])

    def add_netif(self, name: str, driver: Any, *args: Any, **kwargs: Any):
        sw = super().add_netif(name, driver, *args, **kwargs)
        if name in self.sharded:
            # worker 0's connectors are this process's: their blocks take only the ports steered to
            # queue 0 (another port's SYN-ACK would reach a worker without the connection: it timed out)
            n = self.n
            sw.connector_ports = lambda port: worker_of(port, n) == 0
            learn = sw._learn

            def tell_workers(cache: Any, addr: bytes, mac: bytes, now: float) -> None:
                learn(cache, addr, mac, now)
                for link in self.links.values():
                    link.neighbour(name, 4 if cache is sw.arp else 6, addr, mac)

            sw._learn = tell_workers  # type: ignore[method-assign]

            def hand_over(port: int, frame: Received, looped: bool) -> bool:
                return self._hand_over(name, port, frame, looped)

            sw.hand_over = hand_over

            def tell_group(group: bytes, member: bool) -> None:  # a first join or last leave here
                op, family = GROUP_JOIN if member else GROUP_LEAVE, 4 if len(group) == 4 else 6
                for link in self.links.values():
                    link.tell_groups(group_msgs(name, family, op, [group]))

            def tell_filter(group: bytes, f: Filter) -> None:  # the union's filter changed (after its b"G")
                msg = _host_filter_msg(sw, name, group, f)
                for link in self.links.values():
                    link.tell_groups([msg])

            sw.membership_changed = tell_group
            sw.host_filter_changed = tell_filter
            for link in self.links.values():
                self._tell_groups(link)
        return sw

    def _hand_over(self, netif: str, port: int, frame: Received, looped: bool) -> bool:
        """A datagram put back together on queue 0 (`ReceivePath._handed_over`), an ICMP error
        quoting a packet from `port` (`HostDuties._icmp_error`), or a packet of a local queue
        (`looped`: a group datagram sent with IP_MULTICAST_LOOP, a packet to the netif's own
        address or the host's answer to one; by a flow here, or by worker j's, which handed it here):
        False if `port` is ours; else handed to its worker (counted), or dropped if it cannot take
        it now (counted)."""
        k = worker_of(port, self.n)
        if k == 0:
            return False
        link = self.links.get(k)
        count_hand_over(self.switches[netif],
                        link is not None and link.hand_over(netif, frame_family(frame), frame, looped))
        return True

    def _dispatch(self, session: Session, req: P.Request) -> tuple[P.Reply, list[int]]:
        """A client's request: `usnet status` gathered from every worker, a flow or connector on a
        sharded netif opened where its port is steered, a request on a worker's channel relayed
        (usnet.domain.workers.channels); one refused only for a port a departed client's session
        still holds in a worker waits for the drain (usnet.domain.workers.drains)."""
        if session.over_limit is None:
            if type(req) is P.Status and req.part == 0 and self.n > 1:
                return self.statuses.gather(session)
            if type(req) is P.OpenFlow and req.netif in self.sharded:
                try:
                    return self.worker_channels.open(session, req)
                except OSError as e:
                    family = req.family or (6 if req.remote_addr is not None and ":" in req.remote_addr else 4)
                    if self.drains.must_wait(e, TCP if req.connector else req.proto, req.local_port, family):
                        return self.drains.defer(session, req)
                    raise
            channel = getattr(req, "channel", None)
            px = self.proxied.get(channel) if isinstance(channel, int) else None
            if px is not None:
                if px.session_id != session.id:
                    raise OSError(errno.ENOENT, f"no channel {channel} in this session")
                try:
                    return self.worker_channels.request(session, px, req)
                except WorkerLost:
                    raise
                except OSError as e:
                    if type(req) is P.AddPorts and self.drains.must_wait(e, TCP, 0, px.family):
                        return self.drains.defer(session, req)
                    raise
        return super()._dispatch(session, req)

    def _reply(self, s: Session, reply: P.Reply, fds: list[int]) -> None:
        if reply is not LATER:  # (a relayed request's answer comes when its worker's does: `Relay.answer`)
            super()._reply(s, reply, fds)

    def _serve_here(self, session: Session, req: P.Request) -> tuple[P.Reply, list[int]]:
        """Worker 0's own dispatch (a flow or connector whose port is steered here)."""
        return super()._dispatch(session, req)

    def end_session(self, session: Session, reason: Any) -> None:
        """The client is gone: its sessions in the workers are closed (half: the worker ends its own
        as OWNER_GONE, its flows defunct, TCP peers reset, and then closes its end), and their
        channels' ports and charges stay held here till it has (`_drained`), so no other client is
        given a port the worker still holds. A worker that dies or hangs meanwhile frees them by
        its death (`_worker_died`)."""
        super().end_session(session, reason)
        with self.lock:
            self.drains.forget(session)
            for line in self.relay.leave(session.id):
                self.drains.start(line)
            for cid in [c for c, px in self.proxied.items()
                        if px.session_id == session.id and px.line not in self.drains.draining]:
                self.worker_channels.drop(cid)
            self.supervisor.forget(session.id)

    def status(self, viewer: Session | None = None) -> dict:
        """usnetd's own status, with an entry per worker: its pid and restarts, and why it is down
        (`error`). A worker's netifs are its own to tell: `usnet status` asks each one
        without waiting (`StatusGather`); this snapshot (metrics, an embedded caller) never asks."""
        info = super().status(viewer)
        workers: list[dict] = [{"index": 0, "pid": os.getpid(),
                                "netifs": [n for n in info["netifs"] if n["netif"]["name"] in self.sharded]}]
        for k in range(1, self.n):
            link = self.links.get(k)
            entry: dict = {"index": k, "pid": 0 if link is None else link.pid,
                           "restarts": self.supervisor.restarts.get(k, 0), "draining": self.drains.status(k)}
            if link is None:
                entry["error"] = self.down.get(k, "down")
            workers.append(entry)
        info["workers"] = workers
        info["port_waits"] = len(self.drains.deferred)  # requests waiting for a drain (`Drains.defer`)
        return info

    def stop(self) -> None:
        super().stop()
        self.relay.stop()
        self.drains.stop()
        self.supervisor.stop()



def _host_filter_msg(sw: Any, netif: str, group: bytes, f: Filter) -> bytes:
    """The b"M" of `group`'s union filter `f` in usnetd's switch `sw`: any-source (counted
    `host_filter_too_big`) if it names more than HOST_SOURCES_MAX sources."""
    if len(f.sources) > HOST_SOURCES_MAX:
        sw.drops["host_filter_too_big"] += 1
        f = ANY_SOURCE
    return filter_msg(netif, 4 if len(group) == 4 else 6, group, f)
