"""The control dispatch: each request type to the one handler that serves it.

Control requests arrive as method calls (an in-process client) or as typed
messages on a session's socket (usnet.abi.protocol); both end in `handle()`,
the barrier of the control path: whatever a request makes go wrong ends as an
Error reply to that session and nowhere else. `_HANDLERS` maps each request
type to its handler; a handler is registered with `@_serves(type, ...)`
beside its code, so a new request is one function, not a branch in a chain.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from usnet.abi import protocol as P
from usnet.domain.fairshare import ControlShare
from usnet.domain.netif.advisory import NetifAdvisory
from usnet.domain.sessions import Session, SessionRegistry, s_ident
from usnet.domain.switch import echo
from usnet.domain.userpipe import UserPipe
from usnet.proto.wire.icmp import ECHO_REQUEST, build_echo
from usnet.proto.wire.msf import Filter

log = logging.getLogger("usnet.domain")

__all__ = ["Control"]

Handler = Callable[["Control", Session, Any], tuple[P.Reply, list[int]]]
_HANDLERS: dict[type, Handler] = {}  # request type -> the Control method that serves it


def _serves(*types: type) -> Callable[[Handler], Handler]:
    """Register the decorated Control method as the handler of requests of `types`."""
    def register(fn: Handler) -> Handler:
        for t in types:
            _HANDLERS[t] = fn
        return fn
    return register



def viewed_uid(viewer: Session | None) -> int | None:
    """Whose state a status `viewer` may see: None (all) for root, the domain's own uid or no
    session (an embedded caller); else its own uid's alone."""
    return None if viewer is None or viewer.uid in (0, os.getuid()) else viewer.uid


def owner(s: Session) -> dict:
    """Who owns a flow, as `usnet ss -p` shows it: the session's pid, uid and program (as the
    kernel said: SO_PEERCRED, /proc)."""
    return {"pid": s.pid, "uid": s.uid, "program": s.proc or s.program or "?"}

class Control(SessionRegistry):
    """Serve control requests: `handle` behind its barrier, then the handler of the request's type."""

    control_errors: int
    requests: Counter[str]  # control requests served, by type (metrics)
    request_errors: Counter[str]  # refusals, by error code (metrics)
    advisories: dict[str, NetifAdvisory]
    control_share: ControlShare  # the loop's (usnet.domain.fairshare)
    call_soon: Callable[[Callable[[], None]], None]  # the loop's (usnet.domain.loop)
    memory_pressure: bool  # these five: Housekeeping's (usnet.domain.housekeeping)
    purge_below_mb: int
    pressure_purges: int
    stall_after: float
    stall_defunct: float

    def handle(self, session: Session, req: P.Request) -> tuple[P.Reply, list[int]]:
        """Serve one control request; errors become an Error reply, never an exception.

        This is the barrier of the control path: whatever a request makes go
        wrong, a refusal (ValueError, OSError, ...) or a fault of ours that the
        request found (anything else, logged with its traceback), ends as an
        Error reply to that session and nowhere else.
        """
        kind = type(req).__name__
        session.requests[kind] = session.requests.get(kind, 0) + 1
        self.requests[kind] += 1
        try:
            with self.lock:
                reply = self._dispatch(session, req)
            if log.isEnabledFor(logging.DEBUG):  # the control plane, not the data path: a line per request
                log.debug("request %s type=%s reply=%s", s_ident(session), kind, type(reply[0]).__name__)
            return reply
        except Exception as e:
            return self._refusal(session, req, e)

    def _refusal(self, session: Session, req: P.Request, e: Exception) -> tuple[P.Reply, list[int]]:
        """The Error reply for a request whose serving raised `e`, counted: a refusal (ValueError,
        OSError, ...) as itself, anything else as a fault of ours, logged with its traceback. Also
        the end of a request answered later (a relayed one: usnet.domain.workers)."""
        session.refused += 1
        self.control_errors += 1
        if isinstance(e, (ValueError, OSError, KeyError, P.ProtocolError)):
            if log.isEnabledFor(logging.DEBUG):
                log.debug("request %s type=%s refused=%s", s_ident(session), type(req).__name__,
                          " ".join(str(e).split()))
            err = P.error_reply(e)
            self.request_errors[err.code] += 1
            return err, []
        self.request_errors["EPROTO"] += 1
        self._log_fault(f"session {session.id}: {type(req).__name__}", e)
        return P.Error("EPROTO", f"{type(req).__name__} failed in the domain: {type(e).__name__}: {e}"), []

    def _dispatch(self, session: Session, req: P.Request) -> tuple[P.Reply, list[int]]:
        if session.over_limit is not None:  # refused at its start: say why, then end it (after this reply)
            self.call_soon(lambda: self.end_session(session, None))
            raise session.over_limit
        handler = _HANDLERS.get(type(req))
        if handler is None:
            raise P.ProtocolError(f"unexpected request {type(req).__name__}")
        return handler(self, session, req)

    # -- the handlers -----------------------------------------------------------------

    @_serves(P.Hello)
    def _on_hello(self, session: Session, req: P.Hello) -> tuple[P.Reply, list[int]]:
        if req.version != P.PROTOCOL_VERSION:
            raise P.ProtocolError(f"protocol version {req.version} unsupported (speak {P.PROTOCOL_VERSION})")
        session.program = req.program
        return P.Welcome(P.PROTOCOL_VERSION, session.id, session.uid, session.pid), []

    @_serves(P.OpenPipe)
    def _on_open_pipe(self, session: Session, req: P.OpenPipe) -> tuple[P.Reply, list[int]]:
        cid, role, fds = self.open_pipe(session, req.name, req.schema, dict(req.attrs))
        ref = self.channels[cid]
        return P.ChannelOpened(cid, role, ref.pipe.schema.name, b""), fds

    @_serves(P.OpenFlow)
    def _on_open_flow(self, session: Session, req: P.OpenFlow) -> tuple[P.Reply, list[int]]:
        return self.open_flow(session, req)

    @_serves(P.AddPorts)
    def _on_add_ports(self, session: Session, req: P.AddPorts) -> tuple[P.Reply, list[int]]:
        block, ports = self.add_ports(session, req)
        return P.PortsAdded(req.channel, block, ports), []

    @_serves(P.ReturnPorts)
    def _on_return_ports(self, session: Session, req: P.ReturnPorts) -> tuple[P.Reply, list[int]]:
        self.return_ports(session, req)
        return P.Done(), []  # a notice: a socket session is sent no reply (usnet.domain.loop)

    @_serves(P.ReleasePorts)
    def _on_release_ports(self, session: Session, req: P.ReleasePorts) -> tuple[P.Reply, list[int]]:
        self.release_ports(session, req)
        return P.Done(), []  # a notice, as ReturnPorts

    @_serves(P.Unlisten)
    def _on_unlisten(self, session: Session, req: P.Unlisten) -> tuple[P.Reply, list[int]]:
        ref = self._own(session, req.channel)
        if ref.flow is not None and ref.switch is not None:
            ref.switch.retire_member(ref.flow)
        return P.Done(), []

    @_serves(P.JoinGroup)
    def _on_join_group(self, session: Session, req: P.JoinGroup) -> tuple[P.Reply, list[int]]:
        """A flow joins or leaves an IPv4 or IPv6 group (usnet.domain.switch.multicast checks it)."""
        ref = self._own(session, req.channel)
        if ref.flow is None or ref.switch is None:
            raise OSError(errno.EINVAL, f"channel {req.channel} is not a flow")
        if req.join:
            ref.switch.join_group(ref.flow, req.group, _asked_filter(req.include, req.sources))
        else:
            ref.switch.leave_group(ref.flow, req.group)
        return P.Done(), []

    @_serves(P.SourceFilter)
    def _on_source_filter(self, session: Session, req: P.SourceFilter) -> tuple[P.Reply, list[int]]:
        """A flow's membership takes a new source filter (usnet.domain.switch.groups checks it)."""
        ref = self._own(session, req.channel)
        if ref.flow is None or ref.switch is None:
            raise OSError(errno.EINVAL, f"channel {req.channel} is not a flow")
        ref.switch.set_source_filter(ref.flow, req.group, _asked_filter(req.include, req.sources))
        return P.Done(), []

    @_serves(P.MulticastOptions)
    def _on_multicast_loop(self, session: Session, req: P.MulticastOptions) -> tuple[P.Reply, list[int]]:
        ref = self._own(session, req.channel)
        if ref.flow is None:
            raise OSError(errno.EINVAL, f"channel {req.channel} is not a flow")
        ref.flow.mc_loop, ref.flow.mc_all = req.loop, req.all
        return P.Done(), []

    @_serves(P.OpenMonitor)
    def _on_open_monitor(self, session: Session, req: P.OpenMonitor) -> tuple[P.Reply, list[int]]:
        cid, fds = self.open_monitor(session, req.netif, req.filter)
        return P.ChannelOpened(cid, 0, "default", b""), fds

    @_serves(P.OpenAdvisory)
    def _on_open_advisory(self, session: Session, req: P.OpenAdvisory) -> tuple[P.Reply, list[int]]:
        adv = self.advisories.get(req.netif)
        if adv is None:
            raise OSError(errno.ENODEV, f"no netif {req.netif!r}")
        return P.AdvisoryOpened(req.netif, adv.size), [adv.fd]

    @_serves(P.Resize)
    def _on_resize(self, session: Session, req: P.Resize) -> tuple[P.Reply, list[int]]:
        ref = self._own(session, req.channel)
        with ref.pipe.lock:
            ref.pipe.resize(ref.role, req.ring_size, req.packets)
        return P.Done(), []

    @_serves(P.CloseChannel)
    def _on_close_channel(self, session: Session, req: P.CloseChannel) -> tuple[P.Reply, list[int]]:
        self.close_channel(session, req.channel)
        return P.Done(), []

    @_serves(P.Kick)
    def _on_kick(self, session: Session, req: P.Kick) -> tuple[P.Reply, list[int]]:
        self.kick(self._own(session, req.channel))
        return P.Done(), []

    @_serves(P.FlushQueue)
    def _on_flush_queue(self, session: Session, req: P.FlushQueue) -> tuple[P.Reply, list[int]]:
        ref = self._own(session, req.channel)
        if ref.flow is None or ref.switch is None:
            raise OSError(errno.EINVAL, f"channel {req.channel} is not a flow")
        return P.Flushed(ref.switch.flush_flow(ref.flow)), []

    @_serves(P.Ping)
    def _on_ping(self, session: Session, req: P.Ping) -> tuple[P.Reply, list[int]]:
        """`usnet ping`: an echo request sent by the switch for this session, and the replies so far
        (usnet.domain.switch.echo says why a duty and not a flow)."""
        sw = self.switches.get(req.netif)
        if sw is None:
            raise OSError(errno.ENODEV, f"no netif {req.netif!r}")
        desk = sw.echo
        p = desk.probe(session.id)
        if req.send:
            try:
                dst = ipaddress.IPv4Address(req.address)
            except ValueError:
                raise OSError(errno.EINVAL, f"{req.address!r} is not an IPv4 address") from None
            if dst.is_multicast or dst.is_unspecified or dst == sw.netif.network.broadcast_address:
                raise OSError(errno.EINVAL, f"{dst} is not a unicast address")
            now = sw.clock()
            if session.uid not in (0, os.getuid()) and now - p.last_send < echo.MIN_GAP:
                raise OSError(errno.EPERM, f"an interval below {echo.MIN_GAP} s needs root")
            desk.sent(p, req.seq, now)
            payload = bytes(i & 0xFF for i in range(req.size))
            sw._send_ip(0, sw.netif.ip, dst.packed, 1, build_echo(ECHO_REQUEST, p.ident, req.seq, payload), now)
        return P.Pong(desk.take(p)), []

    @_serves(P.Status)
    def _on_status(self, session: Session, req: P.Status) -> tuple[P.Reply, list[int]]:
        return self._status_part(session, req.part), []

    @_serves(*P.LEASE_REQUESTS)
    def _on_lease(self, session: Session, req: Any) -> tuple[P.Reply, list[int]]:
        return self.leases.handle(session, req), []

    # -- status -----------------------------------------------------------------------

    def _status_part(self, session: Session, part: int) -> P.StatusReply:
        """Part `part` of a Status snapshot: any size of status fits, in as many replies as it takes.

        Part 0 takes a new snapshot (its encoding cut into pieces that each fit
        a control message); later parts page out that same snapshot, so the
        pieces always join into one consistent document.
        """
        if part == 0:
            data = P.encode_status(self.status(session))
            step = P.STATUS_PART
            session.status_parts = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
        if not part < len(session.status_parts):
            raise ValueError(f"status part {part} out of range (the snapshot has {len(session.status_parts)})")
        return P.StatusReply(session.status_parts[part], part, len(session.status_parts))

    def status(self, viewer: Session | None = None) -> dict:
        """The domain's state; a `viewer` other than root or the domain's own uid sees only its uid's
        sessions, pipes, flows and leases (and its own usage of the limits)."""
        with self.lock:
            uid = viewed_uid(viewer)
            netifs = [sw.info() for sw in self.switches.values()]
            lowlat = self.leases.info()
            if uid is not None:
                for nif in netifs:
                    nif["flows"] = [f for f in nif["flows"] if self._channel_uid(f["channel"]) == uid]
                lowlat["leases"] = [g for g in lowlat["leases"] if g["uid"] == uid]
            for nif in netifs:  # who owns each flow, as the kernel said (SO_PEERCRED, /proc): `usnet ss -p`
                for f in nif["flows"]:
                    ref = self.channels.get(f["channel"])
                    if ref is not None:
                        f["owner"] = owner(ref.session)
            return {
                "sessions": [{"id": s.id, "uid": s.uid, "pid": s.pid, "program": s.program,
                              "channels": sorted(s.channels), "refused": s.refused}
                             for s in self.sessions.values() if uid in (None, s.uid)],
                "pipes": [p.info() for p in self.pipes.values() if uid is None or self._pipe_seen_by(p, uid)],
                "netifs": netifs,
                "control_errors": self.control_errors,
                "control_requests": dict(self.requests),
                "control_waits": self.control_share.waits,
                "faults": self.faults,
                "memory": {"pressure": self.memory_pressure, "purge_below_mb": self.purge_below_mb,
                           "pressure_purges": self.pressure_purges, "stall_after": self.stall_after,
                           "stall_defunct": self.stall_defunct},
                "lowlat": lowlat,
                "limits": self.ledger.info(uid),
            }

    def _channel_uid(self, cid: int) -> int | None:
        ref = self.channels.get(cid)
        return None if ref is None else ref.session.uid

    def _pipe_seen_by(self, pipe: UserPipe, uid: int) -> bool:
        """A pipe is shown to its creator, and to a uid holding one of its ends (a shared pipe)."""
        return pipe.uid == uid or any(self._channel_uid(e.channel_id) == uid for e in pipe.ends if e.attached)


def _asked_filter(include: bool, sources: list[bytes]) -> Filter:
    """A source filter as a request states it (JoinGroup, SourceFilter): EINVAL for a source named twice
    (the rest is usnet.domain.switch.groups.check_filter's)."""
    f = Filter(include, frozenset(sources))
    if len(f.sources) != len(sources):
        raise OSError(errno.EINVAL, "Invalid argument (a source twice in a filter)")
    return f
