"""The client channels a worker serves (`WorkerChannels`, composed by `ShardedDomain`; the design
is in usnet.domain.workers): opening a flow or a connector in worker k for a client (its port
reserved and charged here, in the one namespace, and the open relayed), the requests on such a
channel (relayed, a connector's port blocks chosen and charged here, a lease admitted here and
applied there, a group membership counted here when the worker confirms it), and their release
when the channel closes, its client leaves or its worker is lost (`drop`, `drop_worker`).

What it needs of the domain is the control plane's tables (`Plane`), the relay to send on
(usnet.domain.workers.relay), the supervisor's liveness pairs and its word on a worker that is
down (usnet.domain.workers.supervisor), and `serve_here` for what worker 0 serves itself."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import msgspec

from usnet.abi import protocol as P
from usnet.abi.events import RevokeReason
from usnet.domain.limits import Charge
from usnet.domain.lowlat.agent import Grant, Refusal
from usnet.domain.lowlat.policy import Who
from usnet.domain.sessions import Session, shares_port
from usnet.domain.switch.ports import PROTO_NAMES
from usnet.domain.switch.table import TCP
from usnet.domain.workers.relay import Answer, Relay
from usnet.domain.workers.relayed import Proxied, WorkerLost
from usnet.domain.workers.steering import worker_of
from usnet.domain.workers.supervisor import Supervisor
from usnet.proto.wire.msf import Filter

if TYPE_CHECKING:
    from usnet.domain.limits import Access, Ledger
    from usnet.domain.lowlat.leases import LeaseDesk
    from usnet.domain.sessions import ChannelRef
    from usnet.domain.switch.flowswitch import FlowSwitch
    from usnet.domain.switch.ports import PortSpace

__all__ = ["Plane", "WorkerChannels"]

log = logging.getLogger("usnet.domain.workers")

_RELAYED = (P.Kick, P.Resize, P.CloseChannel, P.FlushQueue, P.Unlisten, P.JoinGroup, P.SourceFilter,
            P.MulticastOptions)


class Plane(Protocol):
    """What of usnetd's control plane (its Domain) the channels on workers use: the one port
    namespace, the limits and port rules, the switches, the lease desk, worker 0's channels."""

    ports: PortSpace
    ledger: Ledger
    access: Access
    switches: dict[str, FlowSwitch]
    leases: LeaseDesk
    channels: dict[int, ChannelRef]

    def charge_ports(self, session: Session, count: int,
                     take: Callable[[int], list[int]]) -> tuple[list[int], Charge]: ...


class WorkerChannels:
    """The client channels served by workers (`proxied`: usnetd's channel id -> its record). Given:
    the domain's `plane`, its channel `ids`, `n` workers, the `relay`, the `supervisor`, and
    `serve_here` (worker 0's own dispatch, for a flow or connector whose worker is 0)."""

    def __init__(self, plane: Plane, ids: Iterator[int], n: int, relay: Relay, supervisor: Supervisor,
                 proxied: dict[int, Proxied], serve_here: Callable[[Session, P.Request], Answer]) -> None:
        self._plane = plane
        self._ids = ids
        self.n = n
        self._relay = relay
        self._supervisor = supervisor
        self.proxied = proxied
        self._serve_here = serve_here

    def open(self, session: Session, req: P.OpenFlow) -> Answer:
        """A flow or connector on a sharded netif: served here (its worker is 0) or opened in its worker."""
        return self._open_connector(session, req) if req.connector else self._open_sharded(session, req)

    def request(self, session: Session, px: Proxied, req: P.Request) -> Answer:
        """A request on channel `px` of worker k: a lease admitted here, a connector's ports chosen
        here, the rest relayed (answered when the worker's reply is read: `Relay.send`)."""
        if type(req) is P.RequestLease:
            return self._lease_on_worker(session, px, req)
        if isinstance(req, (P.AddPorts, P.ReturnPorts, P.ReleasePorts)):
            try:
                return self._worker_ports(session, px, req)
            except WorkerLost:  # the channel is gone with it (WORKER_GONE, on its liveness socket)
                self.drop(req.channel)
                raise
        if not isinstance(req, _RELAYED):
            raise OSError(errno.EOPNOTSUPP, f"{type(req).__name__} on a flow of worker {px.index}")
        cid = req.channel

        def done(reply: P.Reply, fds: list[int]) -> Answer:
            if isinstance(req, P.CloseChannel):
                self.drop(cid)
            elif isinstance(req, P.JoinGroup) and type(reply) is P.Done:
                self._worker_joined(cid, req.group, req.join, Filter(req.include, frozenset(req.sources)))
            elif isinstance(req, P.SourceFilter) and type(reply) is P.Done:
                self._worker_filtered(cid, req.group, Filter(req.include, frozenset(req.sources)))
            return reply, fds
        try:
            return self._relay.send(px.line, session, msgspec.structs.replace(req, channel=px.wcid), done)
        except WorkerLost:  # the channel is gone with it (WORKER_GONE, on its liveness socket)
            self.drop(cid)
            raise

    def drop_worker(self, k: int) -> int:
        """Worker k is gone: every channel it served is released here (`drop`). How many."""
        lost = [cid for cid, px in self.proxied.items() if px.index == k]
        for cid in lost:
            self.drop(cid)
        return len(lost)

    def _open_connector(self, session: Session, req: P.OpenFlow) -> Answer:
        """The connector of worker `req.worker` on a sharded netif: worker 0's here, another's
        opened there as any relayed flow (it holds no port until AddPorts: `_worker_ports`). Its
        FlowOpened says how many workers have one (`workers`), so a client can spread its connects."""
        k = req.worker
        if k >= self.n:
            raise OSError(errno.EINVAL, f"no worker {k}: usnetd runs {self.n}")
        if k == 0:
            reply, fds = self._serve_here(session, req)
            return (msgspec.structs.replace(reply, workers=self.n) if type(reply) is P.FlowOpened else reply), fds
        self._plane.access.check_port(session.uid, session.program, "tcp", 0)
        charge = self._plane.ledger.admit(Charge(session.uid, session.id, flows=1))
        return self._relay_open(session, msgspec.structs.replace(req, worker=0), k, None, charge)

    def _worker_ports(self, session: Session, px: Proxied,
                      req: P.AddPorts | P.ReturnPorts | P.ReleasePorts) -> Answer:
        """A connector of worker k: its ports are usnetd's to choose (the one namespace, worker k's
        share: the device steers port p to queue p mod N) and to charge, the worker's to bind (its
        switch checks every packet: usnet.domain.switch.binding). AddPorts is reserved here and
        relayed as the list of its ports; ReturnPorts relayed, the ports released here when the
        worker has let them go; ReleasePorts relayed (answered to the client if it asks: it then
        waits before a SYN reuses a port, which the worker could otherwise meet first)."""
        k, n, fwd_to = px.index, self.n, px.wcid
        if isinstance(req, P.AddPorts):
            if req.ports is not None:
                raise OSError(errno.EPERM, "AddPorts with a list of ports is usnetd's own request to its workers")
            sw = self._plane.switches[px.netif]
            owner = ("workers", session.id, "block")
            ports, charge = self._plane.charge_ports(session, req.count, lambda c: self._plane.ports.reserve_some(
                TCP, c, owner, sw.host_of(px.family), px.family, lambda p: worker_of(p, n) == k))

            def undo() -> None:
                self._release_block(px, ports, charge)

            def done(reply: P.Reply, fds: list[int]) -> Answer:
                if type(reply) is not P.PortsAdded:
                    undo()
                    return reply, fds
                if sorted(reply.ports) != sorted(ports) or reply.block in px.blocks:  # (undone by `Relay.hear`)
                    raise OSError(errno.EPROTO, f"usnetd worker {k} held other ports than usnetd gave it")
                px.blocks[reply.block] = (ports, charge)
                return msgspec.structs.replace(reply, channel=req.channel), fds
            try:
                return self._relay.send(px.line, session, P.AddPorts(fwd_to, len(ports), ports), done, undo)
            except BaseException:
                undo()
                raise
        fwd = msgspec.structs.replace(req, channel=fwd_to, answer=True)
        asker = session if req.answer else None  # a notice: usnetd's own request there, the client not parked
        if isinstance(req, P.ReturnPorts):
            ports, charge = px.blocks.pop(req.block)  # KeyError: no block of this channel

            def gone() -> None:  # the worker let them go (or died: its port space with it)
                self._release_block(px, ports, charge)

            def returned(reply: P.Reply, fds: list[int]) -> Answer:
                gone()
                return reply, fds
            try:
                answer = self._relay.send(px.line, asker, fwd, returned, gone)
            except BaseException:
                gone()
                raise
        else:
            answer = self._relay.send(px.line, asker, fwd)
        return answer if asker is not None else (P.Done(), [])

    def _release_block(self, px: Proxied, ports: list[int], charge: Charge) -> None:
        for p in ports:
            self._plane.ports.release(TCP, p, px.family)
        self._plane.ledger.release(charge)

    def _open_sharded(self, session: Session, req: P.OpenFlow) -> Answer:
        """A flow on a sharded netif: served here (its port's worker is 0) or relayed to its worker."""
        family = req.family or (6 if req.remote_addr is not None and ":" in req.remote_addr else 4)
        sib = self.proxied.get(req.with_channel) if req.with_channel else None
        if req.with_channel and sib is None and req.with_channel not in self._plane.channels:
            raise OSError(errno.EINVAL, f"channel {req.with_channel} is no flow of this session")
        if req.with_channel and (sib is None) != (req.local_port == 0 or worker_of(req.local_port, self.n) == 0):
            raise OSError(errno.EOPNOTSUPP, "a flow sharing a port with a flow of another worker")
        if sib is not None:  # the same port on another sharded netif: the same worker
            return self._relay_open(session, req, sib.index, sib.key, None, with_channel=sib.wcid)
        self._plane.access.check_port(session.uid, session.program, PROTO_NAMES.get(req.proto, str(req.proto)),
                               req.local_port)
        port = req.local_port
        if port == 0:  # the port decides the worker: choose it here, from the one namespace
            port = self._plane.ports.reserve(req.proto, 0, ("workers", session.id), family=family)
            self._plane.ports.release(req.proto, port, family)
            req = msgspec.structs.replace(req, local_port=port)
        k = worker_of(port, self.n)
        if k == 0:
            return self._serve_here(session, req)
        charge = self._plane.ledger.admit(Charge(session.uid, session.id, flows=1))
        try:
            self._plane.ports.reserve(req.proto, port, ("workers", session.id), family=family,
                               reuse=session.uid if shares_port(req) and req.remote_addr is None else None)
        except BaseException:
            self._plane.ledger.release(charge)
            raise
        return self._relay_open(session, req, k, (req.proto, port, family), charge)

    def _relay_open(self, session: Session, req: P.OpenFlow, k: int, key: tuple[int, int, int] | None,
                    charge: Charge | None, with_channel: int = 0, again: bool = True) -> Answer:
        """Open the flow in worker k on usnetd's session there for `session` (answered later: `Relay.send`).
        `charge`: the port and limits held for it here, released if it is not opened. A worker that
        dies or hangs under the open is replaced and asked once more (`again`); left down, or a flow
        sharing a port of the lost worker (gone with it), the client hears why (ENETDOWN)."""
        def undo() -> None:
            if charge is not None:
                if key is not None:
                    self._plane.ports.release(*key)
                self._plane.ledger.release(charge)

        def done(reply: P.Reply, fds: list[int]) -> Answer:
            if type(reply) is not P.FlowOpened:
                undo()
                return reply, fds
            cid = next(self._ids)
            self.proxied[cid] = Proxied(k, reply.channel, session.id, line, key, charge, req.netif, reply.family)
            if session.sock is None:  # the client went meanwhile: the flow goes with its session there,
                return reply, []  # its port released when that has ended (`Drains.drained`)
            return (msgspec.structs.replace(reply, channel=cid, workers=self.n if req.connector else 1),
                    [*fds, alive[1].fileno()])

        def retry() -> Answer:
            if k not in self._supervisor.links:  # left down
                undo()
                raise OSError(errno.ENETDOWN, self._supervisor.down.get(k, f"usnetd worker {k} is down"))
            if not again:  # its replacement died under it too, and has been replaced in turn
                undo()
                raise _died_again(k)
            return self._relay_open(session, req, k, key, charge, with_channel, again=False)

        # ENETDOWN from a usnetd that answers is final (usnet.client.rebind): only for a worker left
        # down, or a flow sharing a port of the lost worker; a worker that died under the open
        # twice but is restarted is EAGAIN, as one that died as its session was made
        retried, again = not again, again and not with_channel
        try:
            try:
                line = self._relay.line(session, k)
            except (BrokenPipeError, ConnectionResetError) as e:  # (from new_session)
                if retried:  # the replacement asked again died too, its death not heard yet
                    raise _died_again(k) from e
                raise OSError(errno.EAGAIN, f"usnetd worker {k} died during this open "
                                            f"({e.strerror or e}); it is being restarted: try again") from e
            alive = self._supervisor.pair(session.id, k)
            return self._relay.send(line, session, msgspec.structs.replace(req, with_channel=with_channel),
                              done, undo, retry if again or retried else None)
        except WorkerLost as e:  # it died as this open was sent, and usnetd has replaced it
            if again and k in self._supervisor.links:
                return self._relay_open(session, req, k, key, charge, with_channel, again=False)
            undo()
            if retried and k in self._supervisor.links:
                raise _died_again(k) from e
            raise OSError(errno.ENETDOWN, self._supervisor.down.get(k) or e.strerror) from e
        except BaseException:
            undo()
            raise

    def _lease_on_worker(self, session: Session, px: Proxied, req: P.RequestLease) -> Answer:
        """A lease for a flow of worker k: admitted here, by the one agent, against the netif's LL
        capacity over all workers (their queues share the link: usnet.domain.netif.linkshare);
        applied there (ApplyLease: class, policer, DSCP, and LEASE_GRANTED on the channel's EVENT
        ring, which only the worker writes). Renewal and expiry stay here; an end is told to the
        worker (`end_lease`)."""
        desk = self._plane.leases
        desk.tick()
        got = desk.agent.request(Who(session.uid, session.program), px.netif, req.channel, req.service_class,
                                 req.rate, req.max_packet, req.latency_target, desk.clock(), owner=session.id)
        if isinstance(got, Refusal):
            return P.LeaseRefused(got.reason.value, got.message), []

        def undo() -> None:
            desk.agent.revoke_flow(px.netif, req.channel)

        def done(reply: P.Reply, fds: list[int]) -> Answer:
            if type(reply) is not P.Done:
                undo()
                return reply, []
            log.info("lease %d: %s %g bit/s for channel %d of uid %d (%s) on %s, served by worker %d", got.id,
                     got.service_class, got.rate, req.channel, session.uid, session.program or "-", got.netif,
                     px.index)
            return P.LeaseGranted(got.id, req.channel, got.service_class, got.rate, got.max_packet,
                                  got.latency_target, got.expires, desk.agent.ttl, got.burst), []
        try:
            return self._relay.send(px.line, session, P.ApplyLease(px.wcid, got.id, got.service_class, got.rate,
                                                             got.burst, got.max_packet), done, undo)
        except WorkerLost:
            undo()
            self.drop(req.channel)
            raise
        except OSError:
            undo()
            raise

    def end_lease(self, lease: Grant, reason: RevokeReason) -> bool:
        """A lease on a worker's flow ended here (release, expiry, policy): the worker moves the
        flow back and tells its channel. False if the flow is no worker's."""
        px = self.proxied.get(lease.flow) if isinstance(lease.flow, int) else None
        if px is None:
            return False
        if reason == RevokeReason.CLOSED:  # the channel is going: the worker drops its queue with it
            return True
        try:
            self._relay.send(px.line, None, P.EndLease(px.wcid, lease.id, int(reason)))  # (its answer: dropped)
        except WorkerLost:  # its channels are defunct: nothing to tell
            self.drop(lease.flow)  # type: ignore[arg-type]
        except OSError as e:
            log.warning("lease %d: worker %d not told of its end: %s", lease.id, px.index, e)
        return True

    def _worker_joined(self, cid: int, group: bytes, join: bool, f: Filter) -> None:
        """Worker k confirmed that channel `cid` joined (left) `group` with source filter `f`:
        counted in the netif's union, whose reports usnetd sends (usnet.domain.switch.multicast:
        `join_remote`)."""
        px = self.proxied.get(cid)
        sw = self._plane.switches.get(px.netif) if px is not None else None
        if px is None or sw is None:
            return
        if join:
            px.groups.append(group)
            sw.join_remote(group, cid, f)
        elif group in px.groups:
            px.groups.remove(group)
            sw.leave_remote(group, cid)

    def _worker_filtered(self, cid: int, group: bytes, f: Filter) -> None:
        """Worker k confirmed that channel `cid`'s membership of `group` took source filter `f`."""
        px = self.proxied.get(cid)
        sw = self._plane.switches.get(px.netif) if px is not None else None
        if px is not None and sw is not None and group in px.groups:
            sw.set_remote_filter(group, cid, f)

    def drop(self, cid: int) -> None:
        """Channel `cid` is gone (closed, its client's session ended, its worker lost): its port,
        charges, blocks, memberships and lease are released here."""
        px = self.proxied.pop(cid, None)
        sw = self._plane.switches.get(px.netif) if px is not None else None
        if px is not None and sw is not None:
            for g in px.groups:  # its memberships end with it
                sw.leave_remote(g, cid)
            px.groups.clear()
        if px is not None and px.netif:
            self._plane.leases.agent.revoke_flow(px.netif, cid)  # its lease ends with it, silently
        if px is not None and px.charge is not None:
            if px.key is not None:
                self._plane.ports.release(*px.key)
            self._plane.ledger.release(px.charge)
        if px is not None:
            for ports, charge in px.blocks.values():  # a connector's: the worker's port space went with it
                self._release_block(px, ports, charge)
            px.blocks.clear()


def _died_again(k: int) -> OSError:
    """An open whose worker died under it, and whose replacement died under it too: worker k is
    restarted once more, so the client may ask again (EAGAIN; ENETDOWN would say "left down")."""
    return OSError(errno.EAGAIN, f"usnetd worker {k} died twice during this open; it is being "
                                 "restarted: try again")
