"""The nexus domain: sessions, nexus instances, and the loop that serves them.

The same Domain runs embedded (`usnet.Domain()`, no daemon, no root) or inside
`usnetd`. Control requests arrive either as method calls (an in-process
client) or as typed messages on an AF_UNIX SOCK_SEQPACKET socket (a client in
another process); both end in `handle()`. A client's identity is the uid the
kernel reports for its socket (SO_PEERCRED), never what it says.

The service loop waits on every session socket and every channel's kick
doorbell. A session whose socket closes (its process exited or was killed) has
its channels defuncted and its packets reclaimed at once. The same loop
publishes each netif's interface advisory (usnet.domain.netif.advisory): the next
publication is one more deadline folded into its wait, not a thread.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
import os
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from usnet.abi import protocol as P
from usnet.abi import ring as ringmod
from usnet.abi import schema as schemamod
from usnet.abi.doorbell import Doorbell, drain
from usnet.abi.events import DefunctReason
from usnet.abi.transport import peer_credentials, recv_msg, send_msg
from usnet.domain.barrier import log_fault
from usnet.domain.limits import Access, Charge, Ledger, Limits, Share, check_share, is_shared, pipe_key
from usnet.domain.lowlat.agent import DEFAULT_TTL, Agent, check_seconds
from usnet.domain.lowlat.leases import LeaseDesk
from usnet.domain.lowlat.policy import Policy
from usnet.domain.netif.advisory import NetifAdvisory
from usnet.domain.netif.netif import Netif
from usnet.domain.reaper import Reaper
from usnet.domain.switch.flowswitch import TX_BATCH, Flow, FlowSwitch
from usnet.domain.switch.port import NEXUS, FlowPort
from usnet.domain.switch.ports import PROTO_NAMES, PortSpace
from usnet.domain.userpipe import UserPipe
from usnet.proto.wire.ipv4 import ip_bytes
from usnet.runtime import gil

__all__ = ["LL_BITE", "REAPER_BACKLOG", "ChannelRef", "Domain", "Session"]

log = logging.getLogger("usnet.domain")
# Packet geometry of a flow on a netif whose device segments (gso_max): 64 KiB
# packets, so the kernel's super-segments fit whole, unless the client chose its own.
_SUPER_PACKETS = {"buf_size": 16384, "buflets": 4}
LL_BITE = 64  # general packets taken from a flow at a time while LL flows are served (Domain._service_tx)
MAX_PENDING_REPLIES = 16  # replies a session may leave unread before it is ended (SLOW_CONSUMER)
# SCM_MAX_FD: room for every descriptor one message can carry (none is closed by the kernel in our thread)
MAX_RECEIVED_FDS = 253
REAPER_BACKLOG = 64  # descriptors waiting to be closed beyond which a session sending more is ended
ACCEPT_BACKOFF = (0.05, 1.0)  # first and longest pause of accept() after EMFILE/ENFILE


def _sooner(a: float | None, b: float | None) -> float | None:
    """The shorter of two waits, where None is no deadline (as `select` takes it)."""
    return b if a is None else a if b is None else min(a, b)


def _ll_first(event: tuple[selectors.SelectorKey, int]) -> bool:
    """Sort key of the loop's events: a low-latency flow's doorbell before everything else."""
    kind, obj = event[0].data
    return not (kind == "flowtx" and obj[1].id in obj[0].netif.ll_keys)


@dataclass
class Session:
    id: int
    uid: int
    pid: int
    program: str = ""
    sock: socket.socket | None = None
    channels: set[int] = field(default_factory=set)
    refused: int = 0  # malformed or invalid control messages
    # Replies the socket had no room for, each with its own duplicates of the descriptors it
    # carries (the originals may close meanwhile); bounded by MAX_PENDING_REPLIES.
    pending: deque[tuple[bytes, list[int]]] = field(default_factory=deque)
    status_parts: list[bytes] = field(default_factory=list)  # the Status snapshot being paged out
    over_limit: OSError | None = None  # sessions_per_uid refused it: every request gets this, then it ends


@dataclass
class ChannelRef:
    pipe: UserPipe
    role: int
    session: Session
    switch: FlowSwitch | None = None
    flow: Flow | None = None
    monitor: FlowPort | None = None
    charge: Charge | None = None  # what it holds against its uid's and session's limits (usnet.domain.limits)


def _flow_family(req: P.OpenFlow) -> tuple[Literal[4, 6], bytes | None]:
    """(4 or 6, the remote address's bytes or None) of a flow request.

    The family is the request's, else the remote address's, else IPv4; a
    request whose family and remote address disagree is refused.
    """
    if not req.remote_addr:
        return req.family or 4, None
    try:
        addr = ipaddress.ip_address(req.remote_addr)
    except ValueError:
        raise ValueError(f"remote_addr {req.remote_addr!r} is not an IP address") from None
    if getattr(addr, "scope_id", None):
        raise ValueError(f"remote_addr {req.remote_addr!r}: zones are not supported")
    if req.family and req.family != addr.version:
        raise ValueError(f"remote_addr {req.remote_addr!r} is not IPv{req.family}")
    if addr.version == 4:
        return 4, ip_bytes(req.remote_addr)  # strict dotted quad, as before
    return 6, addr.packed


class Domain:
    """The trusted side: owns arenas, pools and nexus instances.

    `policy` says who may have low-latency leases (usnet.domain.lowlat.policy; by
    default nobody), `lease_ttl` how long a grant or renewal lasts, and
    `lease_clock` the time leases are granted and expire by (tests pass one
    they control).

    `advisory_interval` (seconds, default 5 ms) is how often an active
    netif's interface advisory is republished; `delay_target` (seconds,
    default 5 ms) is the queueing delay above which it suggests DOWN.

    `rx_mitigation` is the default of `add_netif`'s: whether a netif
    coalesces the receive doorbells of its general-class flows
    (usnet.domain.netif.mitigation).

    `limits` bound what each uid and session may hold, `access` who may bind
    ports below 1024, `shares` which uids may share pipe names beginning
    with "@" (usnet.domain.limits). uid 0 and the domain's own uid are exempt
    from limits and port rules.
    """

    def __init__(self, *, policy: Policy | None = None, lease_ttl: float = DEFAULT_TTL,
                 lease_clock: Callable[[], float] = time.monotonic,
                 advisory_interval: float = 0.005, delay_target: float = 0.005,
                 rx_mitigation: bool = True, limits: Limits | None = None, access: Access | None = None,
                 shares: tuple[Share, ...] = (), purge_after: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.advisory_interval = check_seconds("advisory_interval", advisory_interval)
        self.purge_after = check_seconds("purge_after", purge_after)
        self.clock = clock  # the time of the domain's housekeeping (idle purge); tests pass their own
        self._purge_at = clock() + self.purge_after
        self.delay_target = check_seconds("delay_target", delay_target)
        self.rx_mitigation = bool(rx_mitigation)
        self.advisories: dict[str, NetifAdvisory] = {}
        self.lock = threading.RLock()
        self.pipes: dict[tuple[int | None, str], UserPipe] = {}  # by limits.pipe_key: (uid or None if shared, name)
        self.ledger = Ledger(limits or Limits(), exempt={0, os.getuid()})
        self.access = access or Access(privileged_uids=frozenset({0, os.getuid()}))
        self.shares = tuple(shares)
        self._pool_charges: dict[UserPipe, Charge] = {}  # a pipe's arena, charged to its creator until destroyed
        self.channels: dict[int, ChannelRef] = {}
        self.sessions: dict[int, Session] = {}
        self.switches: dict[str, FlowSwitch] = {}
        self.ports = PortSpace()  # one namespace per protocol, shared by every netif
        self._ids = itertools.count(1)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stopped = False
        self.control_errors = 0
        self.faults = 0  # exceptions stopped by a fault barrier (each also defuncts, ends or is logged)
        self.reaper = Reaper()  # closes what clients send us, off the loop
        self._accept_pause = 0.0  # the current EMFILE back-off of accept(), 0 when accepting
        self._accept_resume: float | None = None  # monotonic time the listener is watched again
        self._listeners: list[socket.socket] = []
        self.leases = LeaseDesk(self, Agent(policy, lease_ttl), lease_clock)
        self._soon: deque[Callable[[], None]] = deque()  # call_soon: run by the loop, before it waits

    # -- sessions -----------------------------------------------------------------

    def new_session(self, uid: int, pid: int, sock: socket.socket | None = None) -> Session:
        """A session of `uid`. One past `sessions_per_uid` is still made, so that its first
        request can be answered with the refusal; then it is ended (see `_dispatch`)."""
        with self.lock:
            s = Session(next(self._ids), uid, pid, sock=sock)
            try:
                self.ledger.check_session(uid, sum(1 for o in self.sessions.values()
                                                   if o.uid == uid and o.over_limit is None))
            except OSError as e:
                s.over_limit = e
            self.sessions[s.id] = s
        return s

    def end_session(self, session: Session, reason: DefunctReason | None) -> None:
        """The session is over: close what it closed, defunct what it left open, with `reason`.

        `reason` None is a clean end (each channel closes as CloseChannel would);
        otherwise every channel it still holds is defuncted with it: OWNER_GONE
        when its process went away, PROTOCOL or SLOW_CONSUMER when we ended it,
        DOMAIN_SHUTDOWN when the domain stops.
        """
        with self.lock:
            if self.sessions.pop(session.id, None) is None:
                return
            for cid in sorted(session.channels):
                ref = self.channels.pop(cid, None)
                if ref is None:
                    continue
                self._unregister_kick(ref)
                try:
                    if reason is not None:
                        with ref.pipe.lock:
                            ref.pipe.defunct(reason, culprit=ref.role)
                    self._close_ref(ref)
                except Exception as e:  # one channel's fault does not keep the others open
                    self._fault_channel(ref.pipe, ref.role, "close", e)
            session.channels.clear()
            self._drop_pending(session)
            if session.sock is not None:
                try:
                    self._sel.unregister(session.sock)
                except (KeyError, ValueError):
                    pass
                session.sock.close()
                session.sock = None
        if reason in (None, DefunctReason.OWNER_GONE, DefunctReason.DOMAIN_SHUTDOWN):
            log.info("session %d (pid %d) ended", session.id, session.pid)
        else:
            log.warning("session %d (uid %d, pid %d, %r) ended: %s", session.id, session.uid, session.pid,
                        session.program, reason.name)

    @staticmethod
    def _drop_pending(session: Session) -> None:
        for _, fds in session.pending:
            for fd in fds:
                os.close(fd)
        session.pending.clear()

    # -- control --------------------------------------------------------------------

    def handle(self, session: Session, req: P.Request) -> tuple[P.Reply, list[int]]:
        """Serve one control request; errors become an Error reply, never an exception.

        This is the barrier of the control path: whatever a request makes go
        wrong, a refusal (ValueError, OSError, ...) or a fault of ours that the
        request found (anything else, logged with its traceback), ends as an
        Error reply to that session and nowhere else.
        """
        try:
            with self.lock:
                return self._dispatch(session, req)
        except (ValueError, OSError, KeyError, P.ProtocolError) as e:
            session.refused += 1
            self.control_errors += 1
            return P.error_reply(e), []
        except Exception as e:
            session.refused += 1
            self.control_errors += 1
            self._log_fault(f"session {session.id}: {type(req).__name__}", e)
            return P.Error("EPROTO", f"{type(req).__name__} failed in the domain: {type(e).__name__}: {e}"), []

    def _dispatch(self, session: Session, req: P.Request) -> tuple[P.Reply, list[int]]:
        if session.over_limit is not None:  # refused at its start: say why, then end it (after this reply)
            self.call_soon(lambda: self.end_session(session, None))
            raise session.over_limit
        if isinstance(req, P.Hello):
            if req.version != P.PROTOCOL_VERSION:
                raise P.ProtocolError(f"protocol version {req.version} unsupported (speak {P.PROTOCOL_VERSION})")
            session.program = req.program
            return P.Welcome(P.PROTOCOL_VERSION, session.id, session.uid, session.pid), []
        if isinstance(req, P.OpenPipe):
            cid, role, fds = self.open_pipe(session, req.name, req.schema, dict(req.attrs))
            ref = self.channels[cid]
            return P.ChannelOpened(cid, role, ref.pipe.schema.name, b""), fds
        if isinstance(req, P.OpenFlow):
            return self.open_flow(session, req)
        if isinstance(req, P.OpenMonitor):
            cid, fds = self.open_monitor(session, req.netif)
            return P.ChannelOpened(cid, 0, "default", b""), fds
        if isinstance(req, P.OpenAdvisory):
            adv = self.advisories.get(req.netif)
            if adv is None:
                raise OSError(errno.ENODEV, f"no netif {req.netif!r}")
            return P.AdvisoryOpened(req.netif, adv.size), [adv.fd]
        if isinstance(req, P.Resize):
            ref = self._own(session, req.channel)
            with ref.pipe.lock:
                ref.pipe.resize(ref.role, req.ring_size, req.packets)
            return P.Done(), []
        if isinstance(req, P.CloseChannel):
            self.close_channel(session, req.channel)
            return P.Done(), []
        if isinstance(req, P.Kick):
            self.kick(self._own(session, req.channel))
            return P.Done(), []
        if isinstance(req, P.FlushQueue):
            ref = self._own(session, req.channel)
            if ref.flow is None or ref.switch is None:
                raise OSError(errno.EINVAL, f"channel {req.channel} is not a flow")
            return P.Flushed(ref.switch.flush_flow(ref.flow)), []
        if isinstance(req, P.Status):
            return self._status_part(session, req.part), []
        if isinstance(req, P.LEASE_REQUESTS):
            return self.leases.handle(session, req), []
        raise P.ProtocolError(f"unexpected request {type(req).__name__}")

    def _own(self, session: Session, cid: int) -> ChannelRef:
        ref = self.channels.get(cid)
        if ref is None or ref.session is not session:
            raise OSError(errno.ENOENT, f"no channel {cid} in this session")
        return ref

    def open_pipe(self, session: Session, name: str, schema: str, attrs: dict[str, int]) -> tuple[int, int, list[int]]:
        """Open one end of a named user pipe; returns (channel id, role, fds to hand over).

        The first opener creates the pipe and its pool; the second attaches.
        A name is the opener's uid's own (another uid's pipe of the same name
        is another pipe): a user pipe is zero-copy, so it only ever joins one
        owner's channels. A name beginning with "@" is shared, between the
        uids of a `[[share]]` entry that covers it (usnet.domain.limits).
        """
        with self.lock:
            key = pipe_key(session.uid, name)
            pipe = self.pipes.get(key)
            created = pipe is None
            if pipe is None:
                if is_shared(name):
                    check_share(self.shares, name, session.uid, None, self.ledger.exempt)
                sch = schemamod.resolve(schema, attrs)
                charge = self.ledger.admit(Charge(session.uid, session.id))
                try:
                    pipe = self._new_pipe(name, sch, session)
                except BaseException:
                    self.ledger.release(charge)
                    raise
                self.pipes[key] = pipe
                role = 0
            else:
                if is_shared(name):
                    check_share(self.shares, name, session.uid, pipe.uid, self.ledger.exempt)
                if pipe.ends[1].attached or pipe.defunct_reason is not None:
                    raise OSError(errno.EADDRINUSE, f"pipe {name!r} already has both ends")
                charge = self.ledger.admit(Charge(session.uid, session.id))
                role = 1
            cid = next(self._ids)
            try:
                fds = self._attach(cid, ChannelRef(pipe, role, session, charge=charge), pipe.ends[1 - role].bell)
            except BaseException:
                self._detach(cid, session)
                self.ledger.release(charge)
                if created:
                    pipe.destroy()
                raise
            return cid, role, fds

    def _detach(self, cid: int, session: Session) -> None:
        """Undo a half-made `_attach` (the selector refused the kick fd, say)."""
        ref = self.channels.pop(cid, None)
        session.channels.discard(cid)
        if ref is not None:
            end = ref.pipe.ends[ref.role]
            end.attached = False
            self._unregister_kick(ref)

    def _new_pipe(self, name: str, sch: schemamod.Schema, session: Session) -> UserPipe:
        """A pipe whose arena is charged to its creator (pool_bytes) until it is destroyed."""
        pipe = UserPipe(name, sch, session.uid)
        try:
            charge = self.ledger.admit(Charge(session.uid, session.id, channels=0,
                                              pool_bytes=pipe.arena.shared_size + pipe.arena.ro_size))
        except BaseException:
            pipe.destroy()
            raise
        self._pool_charges[pipe] = charge
        pipe.on_destroy = self._forget_pipe
        return pipe

    def pipe(self, name: str, uid: int | None = None) -> UserPipe:
        """The user pipe `name` of `uid` (default: the domain's own uid); KeyError if there is none."""
        return self.pipes[pipe_key(os.getuid() if uid is None else uid, name)]

    def _attach(self, cid: int, ref: ChannelRef, peer_bell: Doorbell) -> list[int]:
        """Give a session its end of a pipe: registered, watched, and the five fds to hand over."""
        end = ref.pipe.ends[ref.role]
        end.channel_id = cid
        end.attached = True
        self.channels[cid] = ref
        ref.session.channels.add(cid)
        self._sel.register(end.kick.wait_fd, selectors.EVENT_READ, ("kick", cid))
        self._wake()
        # the client sleeps on its bell, rings its peer's, rings our kick (docs/abi.md, "Doorbells")
        return [ref.pipe.arena.shared_fd, ref.pipe.arena.ro_fd, end.bell.wait_fd, peer_bell.ring_fd,
                end.kick.ring_fd]

    # -- netifs and flows ----------------------------------------------------------------

    def add_netif(self, name: str, driver, address: str, gateway: str | None = None,
                  mtu: int | None = None, *, address6: str | None = None,
                  gateway6: str | None = None, link_rate: float | None = None,
                  ll_share: float | None = None, work_conserving: bool | None = None,
                  clock: Callable[[], float] = time.monotonic,
                  rx_mitigation: bool | None = None, aqm: bool | None = None) -> FlowSwitch:
        """Attach a device: a netif with its flow switch, served by the domain loop.

        `address6` ("fd00::2/64") gives the netif IPv6 as well, with its
        link-local address derived from the MAC.

        `link_rate` (bits/s) paces the netif's transmit to that rate through
        the slot multiplexer (usnet.domain.netif.txsched), so the queue forms in
        usnet and not in the device; `ll_share` (0 to 0.9, default 0.2) of
        its slots are reserved for the low-latency class (`set_flow_class`),
        lent to general traffic when idle unless `work_conserving` is False.
        Without `link_rate` the netif is not paced and has no LL class.

        Each netif gets its interface advisory (OpenAdvisory). `clock` is the
        netif's and its switch's time (seconds, monotonic); tests pass their own.

        `rx_mitigation` (default: the domain's) coalesces the receive
        doorbells of the netif's general-class flows (usnet.domain.netif.mitigation).
        `aqm` (default: on where `link_rate` paces the netif) runs CoDel on
        the general class's queues (usnet.domain.netif.aqm).
        """
        with self.lock:
            if name in self.switches:
                raise OSError(errno.EEXIST, f"netif {name!r} exists")
            netif = Netif(name, driver, address, gateway, mtu, address6=address6, gateway6=gateway6,
                          link_rate=link_rate, ll_share=ll_share, work_conserving=work_conserving,
                          aqm=aqm, clock=clock)
            sw = FlowSwitch(netif, self.ports, clock=clock,
                            rx_mitigation=self.rx_mitigation if rx_mitigation is None else rx_mitigation)
            self.advisories[name] = NetifAdvisory(sw, self.advisory_interval, self.delay_target)
            self.switches[name] = sw
            self.leases.add_netif(sw)
            self._sel.register(driver.fileno(), selectors.EVENT_READ, ("netif", sw))
        self._wake()
        return sw

    def set_flow_class(self, netif_name: str, flow_id: int, cls: str) -> None:
        """Serve flow `flow_id` (its id on the switch, its netif queue key) in class "ll" or "general".

        The hook the low-latency agent calls when it grants or revokes a
        lease. Frames the flow has queued move with it, in order; none is
        lost. In the LL class its transmit takes the LL path and its receive
        is not mitigated. "ll" needs a netif with a `link_rate` and a non-zero `ll_share`.
        """
        if cls not in ("ll", "general"):
            raise ValueError(f"traffic class must be 'll' or 'general', not {cls!r}")
        with self.lock:
            sw = self.switches.get(netif_name)
            if sw is None:
                raise OSError(errno.ENODEV, f"no netif {netif_name!r}")
            if flow_id not in sw.flows:
                raise OSError(errno.ENOENT, f"no flow {flow_id} on netif {netif_name!r}")
            sw.netif.set_class(flow_id, cls == "ll")
            sw.flows[flow_id].port.set_low_latency(cls == "ll")  # the LL class skips receive mitigation
        self._wake()

    def set_policy(self, policy: Policy, lease_ttl: float | None = None) -> list:
        """A new low-latency policy (usnetd's SIGHUP): leases it no longer entitles are revoked.

        Their flows go back to the general class with what they have queued,
        and their channels get LEASE_REVOKED (POLICY); other leases are untouched.
        Returns the leases revoked.
        """
        with self.lock:
            return self.leases.set_policy(policy, lease_ttl)

    def set_privileges(self, limits: Limits, access: Access, shares: tuple[Share, ...]) -> None:
        """New limits, port rules and share groups (usnetd's SIGHUP), for what is opened from now on:
        nothing already held is taken back."""
        with self.lock:
            self.ledger.limits = limits
            self.access = access
            self.shares = tuple(shares)

    def remove_netif(self, name: str) -> None:
        with self.lock:
            self.leases.remove_netif(name)
            sw = self.switches.pop(name)
            for ref in list(self.channels.values()):
                if ref.switch is sw:
                    ref.pipe.defunct(DefunctReason.DOMAIN_SHUTDOWN)
            try:
                self._sel.unregister(sw.netif.driver.fileno())
            except (KeyError, ValueError):
                pass
            self.advisories.pop(name).close()

    def open_flow(self, session: Session, req: P.OpenFlow) -> tuple[P.Reply, list[int]]:
        """Register a flow on a netif and open the channel that carries it.

        The channel's pool is the client's own; the flow switch is the other
        end of its rings, and copies and checks everything it sends.
        """
        sw = self.switches.get(req.netif)
        if sw is None:
            raise OSError(errno.ENODEV, f"no netif {req.netif!r}")
        family, raddr = _flow_family(req)
        if (raddr is None) != (req.remote_port is None):
            raise ValueError("a connected flow needs both remote_addr and remote_port")
        attrs = dict(req.attrs)
        gso_max = sw.netif.gso_max
        if gso_max and "buf_size" not in attrs and "buflets" not in attrs:
            attrs.update(_SUPER_PACKETS)  # the device hands over 64 KB super-segments
        sch = schemamod.resolve(req.schema, attrs)
        if sch.packet_bytes < gso_max:
            gso_max = 0  # the client chose small packets: it sends no super-segments
        if sch.packet_bytes < sw.netif.mtu:
            raise ValueError(f"packets of {sch.packet_bytes} bytes cannot carry the MTU {sw.netif.mtu}")
        self.access.check_port(session.uid, session.program, PROTO_NAMES.get(req.proto, str(req.proto)),
                               req.local_port)
        charge = self.ledger.admit(Charge(session.uid, session.id, flows=1,
                                          ephemeral_ports=int(req.local_port == 0)))
        cid = next(self._ids)
        try:
            pipe = self._new_pipe(f"flow:{cid}", sch, session)
        except BaseException:
            self.ledger.release(charge)
            raise
        port = FlowPort(pipe)
        try:
            flow = sw.add_flow(req.proto, req.local_port, raddr, req.remote_port, port, cid, family)
        except BaseException:
            self.ledger.release(charge)
            pipe.destroy()
            raise
        try:
            self._sel.register(port.bell, selectors.EVENT_READ, ("flowtx", (sw, flow)))
            fds = self._attach(cid, ChannelRef(pipe, 0, session, sw, flow, charge=charge), pipe.ends[NEXUS].bell)
        except BaseException:  # half made: the flow, its port reservation and the pipe all go
            self._detach(cid, session)
            try:
                self._sel.unregister(port.bell)
            except (KeyError, ValueError):
                pass
            sw.remove_flow(flow)
            self.ledger.release(charge)
            pipe.destroy()
            raise
        local = sw.netif.ip6_str if family == 6 else sw.netif.ip_str
        assert local is not None  # add_flow refused IPv6 on a netif without an IPv6 address
        remote = None if raddr is None else str(ipaddress.ip_address(raddr))  # the canonical text
        reply = P.FlowOpened(cid, 0, sch.name, local, flow.lport, remote, req.remote_port,
                             sw.netif.mtu, sw.netif.name, family, gso_max)
        return reply, fds

    def open_monitor(self, session: Session, netif: str) -> tuple[int, list[int]]:
        """A channel that receives a copy of every frame of a netif: root or the domain's own uid only."""
        sw = self.switches.get(netif)
        if sw is None:
            raise OSError(errno.ENODEV, f"no netif {netif!r}")
        if session.uid not in (0, os.getuid()):
            raise OSError(errno.EPERM, "monitoring a netif needs root")
        charge = self.ledger.admit(Charge(session.uid, session.id))
        cid = next(self._ids)
        try:
            pipe = self._new_pipe(f"monitor:{cid}", schemamod.resolve("default", {"ring_size": 4096}), session)
        except BaseException:
            self.ledger.release(charge)
            raise
        port = FlowPort(pipe)
        sw.netif.monitors.append(port)
        return cid, self._attach(cid, ChannelRef(pipe, 0, session, sw, None, monitor=port, charge=charge),
                                 pipe.ends[NEXUS].bell)

    def _serve_ll(self) -> None:
        """The low-latency class first: what its flows sent goes to the device now.

        Called before each larger piece of work (a round of every switch, a
        receive burst), so an LL packet waits for at most one such piece,
        never for a whole loop of bulk traffic.
        """
        served = 0
        for sw in self.switches.values():
            if sw.netif.ll_keys:
                served += sw.serve_ll()
        if served:
            self._receive_due()  # an LL frame to a netif of ours (memwire) is taken off the wire now

    def _serves_ll(self) -> bool:
        """Whether any netif has LL flows: `_serve_ll` serves them all, from any point of the loop."""
        return any(sw.netif.ll_keys for sw in self.switches.values())

    def _receive_due(self) -> None:
        """Receive now what a device already holds for us without its fd having been seen (a memwire's
        frames in flight): after an LL send, the frame it may have made due waits for no round."""
        for sw in self.switches.values():
            if sw.netif.driver.timeout() == 0:
                sw.service_rx()

    def _service_switches(self) -> float | None:
        """One round of data-path work on every flow switch; returns how long we may sleep."""
        timeout: float | None = None
        self._serve_ll()
        ll = self._serves_ll()
        for sw in self.switches.values():  # receive first: a frame in hand waits for no bulk batch
            try:
                sw.service_timers()
                if sw.netif.driver.timeout() is not None:
                    # the device has something due without ringing its fd: frames in flight
                    # on a memwire, a packet-ring kick to retry
                    sw.service_rx()
            except Exception as e:
                self._log_fault(f"netif {sw.netif.name}", e)
        for sw in self.switches.values():
            for flow in list(sw.flows.values()):
                try:
                    if flow.port.tx_pending() and not flow.port.suspended:
                        self._service_tx(sw, flow, ll)
                except Exception as e:  # the barrier of one flow channel
                    self._fault_channel(flow.port.pipe, 0, "transmit", e)
            try:
                sw.flush()
                timeout = _sooner(timeout, sw.ring_held())  # receive bells held by mitigation that are due
                timeout = _sooner(timeout, sw.next_timeout())
            except Exception as e:
                self._log_fault(f"netif {sw.netif.name}", e)
        return timeout

    def _service_tx(self, sw: FlowSwitch, flow: Flow, ll: bool) -> None:
        """What `flow` sent, into its switch; beside LL flows (`ll`) in bites, the LL class served after each.

        A bite (`LL_BITE` packets, about 0.1 ms of copying and checking) is
        then the longest an LL packet waits for general traffic; a flow still
        gets up to a whole batch (`TX_BATCH`) a round.
        """
        if not ll or sw.netif.serves_ll(flow.id):
            sw.service_tx(flow)
            return
        left = TX_BATCH
        while left > 0:
            n = sw.service_tx(flow, min(LL_BITE, left))
            self._serve_ll()
            if n < LL_BITE or flow.port.suspended:
                return
            left -= n

    def _publish_advisories(self) -> float | None:
        """Publish the interface advisories that are due; returns how long we may sleep."""
        timeout: float | None = None
        for adv in self.advisories.values():
            try:
                timeout = _sooner(timeout, adv.poll(adv.netif.clock()))
            except Exception as e:
                self._log_fault(f"advisory of {adv.netif.name}", e)
        return timeout

    def _idle_flows(self) -> bool:
        """Before sleeping: ask every client to ring us when it sends; True if one already did."""
        ports = [f.port for sw in self.switches.values() for f in sw.flows.values()
                 if not f.port.suspended]
        for port in ports:
            port.set_need_wakeup()
        ringmod.fence()
        if any(port.tx_pending() for port in ports):
            for port in ports:
                port.clear_need_wakeup()
            return True
        return False

    def _forget_pipe(self, pipe: UserPipe) -> None:
        for end in pipe.ends:
            try:
                self._sel.unregister(end.kick.wait_fd)
            except (KeyError, ValueError):
                pass
        self.ledger.release(self._pool_charges.pop(pipe, None))
        key = pipe_key(pipe.uid, pipe.name)
        if self.pipes.get(key) is pipe:
            del self.pipes[key]

    def close_channel(self, session: Session, cid: int) -> None:
        with self.lock:
            ref = self._own(session, cid)
            self._unregister_kick(ref)
            del self.channels[cid]
            session.channels.discard(cid)
            self._close_ref(ref)

    def _close_ref(self, ref: ChannelRef) -> None:
        self.leases.channel_closing(ref)  # first: what it sent before closing leaves unpoliced, as general
        self.ledger.release(ref.charge)  # its channel, flow and port count again for its uid (its pool: when destroyed)
        with ref.pipe.lock:
            if ref.flow is not None and ref.switch is not None:
                if ref.pipe.defunct_reason is None:
                    # what it sent before closing still goes out, as with a kernel socket
                    # (bounded: a client may not keep us here by sending while it closes)
                    for _ in range(ref.flow.port.tx.capacity // 64 + 1):
                        if not ref.switch.service_tx(ref.flow, draining=True):
                            break
                ref.switch.remove_flow(ref.flow, keep_queued=True)
                try:
                    self._sel.unregister(ref.flow.port.bell)
                except (KeyError, ValueError):
                    pass
                ref.pipe.close_end(NEXUS)
            if ref.monitor is not None and ref.switch is not None:
                if ref.monitor in ref.switch.netif.monitors:
                    ref.switch.netif.monitors.remove(ref.monitor)
                ref.pipe.close_end(NEXUS)
            ref.pipe.close_end(ref.role)

    def _unregister_kick(self, ref: ChannelRef) -> None:
        try:
            self._sel.unregister(ref.pipe.ends[ref.role].kick.wait_fd)
        except (KeyError, ValueError):
            pass

    def kick(self, ref: ChannelRef) -> None:
        """Serve one end's pool side; behind its barrier (an in-process client calls this itself)."""
        with ref.pipe.lock:
            try:
                ref.pipe.sync(ref.role)
            except Exception as e:
                self._fault_channel(ref.pipe, ref.role, "kick", e)

    def kick_channel(self, cid: int) -> None:
        """The data-path nudge of an in-process channel: a method call, no system call."""
        ref = self.channels.get(cid)
        if ref is not None:
            self.kick(ref)

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
            uid = None if viewer is None or viewer.uid in (0, os.getuid()) else viewer.uid
            netifs = [sw.info() for sw in self.switches.values()]
            lowlat = self.leases.info()
            if uid is not None:
                for nif in netifs:
                    nif["flows"] = [f for f in nif["flows"] if self._channel_uid(f["channel"]) == uid]
                lowlat["leases"] = [lease for lease in lowlat["leases"] if lease["uid"] == uid]
            return {
                "sessions": [{"id": s.id, "uid": s.uid, "pid": s.pid, "program": s.program,
                              "channels": sorted(s.channels), "refused": s.refused}
                             for s in self.sessions.values() if uid in (None, s.uid)],
                "pipes": [p.info() for p in self.pipes.values() if uid is None or self._pipe_seen_by(p, uid)],
                "netifs": netifs,
                "control_errors": self.control_errors,
                "faults": self.faults,
                "lowlat": lowlat,
                "limits": self.ledger.info(uid),
            }

    def _channel_uid(self, cid: int) -> int | None:
        ref = self.channels.get(cid)
        return None if ref is None else ref.session.uid

    def _pipe_seen_by(self, pipe: UserPipe, uid: int) -> bool:
        """A pipe is shown to its creator, and to a uid holding one of its ends (a shared pipe)."""
        return pipe.uid == uid or any(self._channel_uid(e.channel_id) == uid for e in pipe.ends if e.attached)

    def _purge_idle(self) -> float:
        """Memory comes back by itself: every `purge_after` seconds, each pool that did not move
        over the last period (no batch allocated or taken back between two ticks) gives back its
        all-free segments beyond its opening size. Returns how long until the next tick."""
        now = self.clock()
        if now < self._purge_at:
            return self._purge_at - now
        self._purge_at = now + self.purge_after
        for p in list(self.pipes.values()):
            with p.lock:
                if p.defunct_reason is not None:
                    continue
                if (p.idle_mark == p.pool.moves and p.pool.active > p.schema.packets
                        and p.pool.purge(keep=p.schema.packets)):
                    p.publish_pool()
                p.idle_mark = p.pool.moves
        return self.purge_after

    def purge(self) -> int:
        """Give back the pages of every all-free segment beyond each pool's opening size."""
        with self.lock:
            n = 0
            for p in list(self.pipes.values()):
                with p.lock:
                    if p.defunct_reason is None:
                        n += p.pool.purge(keep=p.schema.packets)
            return n

    # -- socket sessions and the service loop -------------------------------------------

    def add_socket_session(self, sock: socket.socket) -> Session:
        """Serve a connected SEQPACKET socket; identity from SO_PEERCRED.

        The socket is non-blocking: the loop never waits on a client, and a
        reply the client has no room for waits in its session (`_reply`).
        """
        pid, uid, _ = peer_credentials(sock)
        sock.setblocking(False)
        s = self.new_session(uid, pid, sock)
        with self.lock:
            self._sel.register(sock, selectors.EVENT_READ, ("session", s))
        self._wake()
        return s

    def socketpair_session(self) -> socket.socket:
        """A control socket for a child process of this one (embedded mode across processes)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.add_socket_session(ours)
        self.start()
        return theirs

    def listen(self, sock: socket.socket) -> None:
        """Accept clients on a listening SEQPACKET socket (usnetd)."""
        sock.setblocking(False)
        with self.lock:
            self._listeners.append(sock)
            self._sel.register(sock, selectors.EVENT_READ, ("listen", sock))
        self._wake()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` in the service loop, under the domain lock, before it next waits.

        Safe from a signal handler (usnetd's SIGHUP) or another thread: the
        handler only queues and wakes the loop, and the work runs where the
        domain's state is not half-changed.
        """
        self._soon.append(fn)
        self._wake()

    def _run_soon(self) -> None:
        while self._soon:
            fn = self._soon.popleft()
            try:
                with self.lock:
                    fn()
            except Exception:
                log.exception("deferred call %r failed", fn)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    # -- fault barriers -----------------------------------------------------------------

    def _log_fault(self, where: str, exc: BaseException) -> None:
        self.faults += 1
        log_fault(where, exc)

    def _fault_channel(self, pipe: UserPipe, role: int, where: str, exc: BaseException) -> None:
        """The barrier of one channel: what its memory made go wrong defuncts it (ABUSE), nothing else."""
        self.faults += 1
        with pipe.lock:
            pipe.fault(role, where, exc)

    def _fault(self, kind: str, obj: object, exc: Exception) -> None:
        """The loop's barrier: an exception from serving one object ends at that object's owner."""
        if kind == "kick" and isinstance(obj, int):
            ref = self.channels.get(obj)
            if ref is not None:
                self._fault_channel(ref.pipe, ref.role, "kick", exc)
                return
        elif kind == "flowtx" and isinstance(obj, tuple):
            _, flow = obj
            self._fault_channel(flow.port.pipe, 0, "transmit", exc)
            return
        elif kind == "session" and isinstance(obj, Session):
            self._log_fault(f"session {obj.id}", exc)
            self.end_session(obj, DefunctReason.PROTOCOL)
            return
        self._log_fault(kind, exc)  # a netif, a listener, the wake pipe: logged, the loop goes on

    # -- socket sessions ------------------------------------------------------------------

    def _refuse(self, s: Session, reply: P.Error) -> None:
        s.refused += 1
        self.control_errors += 1
        self._reply(s, reply, [])

    def _serve_session(self, s: Session) -> None:
        """One request of a socket session: read, decode, serve, reply; nothing here can wait."""
        if s.sock is None:
            return
        try:
            data, fds = recv_msg(s.sock, MAX_RECEIVED_FDS, close=self.reaper.close_later)
        except (BlockingIOError, InterruptedError):
            return
        except P.ProtocolError as e:
            self._refuse(s, P.error_reply(e))
            return
        except OSError:
            self.end_session(s, DefunctReason.OWNER_GONE)
            return
        if not data:
            self.end_session(s, DefunctReason.OWNER_GONE)
            return
        if fds:  # clients have no business sending us descriptors: closed off the loop, refused
            self.reaper.close_later(fds)
            if self.reaper.backlog > REAPER_BACKLOG:
                self.end_session(s, DefunctReason.PROTOCOL)
            else:
                self._refuse(s, P.Error("EPROTO", f"{len(fds)} descriptor(s) sent to the domain: "
                                                  "clients may not send descriptors"))
            return
        try:
            req = P.decode_request(data)
        except P.ProtocolError as e:
            self._refuse(s, P.error_reply(e))
            return
        reply, out_fds = self.handle(s, req)
        self._reply(s, reply, out_fds)

    def _reply(self, s: Session, reply: P.Reply, fds: list[int]) -> None:
        """Send a reply without waiting: what the socket has no room for waits in the session.

        A reply too large to encode becomes an Error the client can read.
        """
        if s.sock is None:
            return
        try:
            data = P.encode(reply)
        except P.ProtocolError as e:
            data, fds = P.encode(P.Error("EMSGSIZE", str(e))), []
        if not s.pending:
            try:
                send_msg(s.sock, data, fds)
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.end_session(s, DefunctReason.OWNER_GONE)
                return
        self._queue_reply(s, data, fds)

    def _queue_reply(self, s: Session, data: bytes, fds: list[int]) -> None:
        """Keep a reply the client has not made room for; a session that lets them pile up is ended."""
        if len(s.pending) >= MAX_PENDING_REPLIES:
            self.end_session(s, DefunctReason.SLOW_CONSUMER)
            return
        copies: list[int] = []
        try:
            for fd in fds:  # its own copies: the channel may close before the reply leaves
                copies.append(os.dup(fd))
        except OSError:
            for fd in copies:
                os.close(fd)
            self.end_session(s, DefunctReason.SLOW_CONSUMER)
            return
        s.pending.append((data, copies))
        if len(s.pending) == 1 and s.sock is not None:
            self._sel.modify(s.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, ("session", s))

    def _send_pending(self, s: Session) -> None:
        """The socket has room again: send what waited, in order."""
        while s.pending and s.sock is not None:
            data, fds = s.pending[0]
            try:
                send_msg(s.sock, data, fds)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.end_session(s, DefunctReason.OWNER_GONE)
                return
            s.pending.popleft()
            for fd in fds:
                os.close(fd)
        if s.sock is not None:
            self._sel.modify(s.sock, selectors.EVENT_READ, ("session", s))

    def _accept(self, lsock: socket.socket) -> None:
        """Take one client; out of descriptors, stop watching the listener for a while, doubling."""
        try:
            conn, _ = lsock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                first, longest = ACCEPT_BACKOFF
                self._accept_pause = min(max(self._accept_pause * 2, first), longest)
                self._accept_resume = time.monotonic() + self._accept_pause
                for ls in self._listeners:
                    self._sel.unregister(ls)
                log.warning("accept: %s; not accepting for %.2f s (raise the descriptor limit, "
                            "`ulimit -n`, or lower the session limits)", e.strerror, self._accept_pause)
            return
        self._accept_pause = 0.0
        try:
            self.add_socket_session(conn)
        except OSError:  # gone before we could ask who it is
            conn.close()

    def _resume_accept(self) -> float | None:
        """Watch the listeners again once the back-off is over; returns how long until then."""
        if self._accept_resume is None:
            return None
        left = self._accept_resume - time.monotonic()
        if left > 0:
            return left
        self._accept_resume = None
        for ls in self._listeners:
            self._sel.register(ls, selectors.EVENT_READ, ("listen", ls))
        return None

    # -- the service loop -------------------------------------------------------------------

    def serve_once(self, timeout: float | None = None) -> None:
        """One turn of the loop: timers and data path, then wait for and serve what became ready.

        Every object served is behind a barrier (`_fault`): whatever one
        channel's memory or one session's messages contain ends at its owner.
        """
        self._run_soon()
        with self.lock:
            try:
                timeout = _sooner(timeout, self.leases.tick())  # sleep no later than the next lease expiry
                timeout = _sooner(timeout, self._purge_idle())
            except Exception as e:
                self._log_fault("timers", e)
        if self.switches:
            with self.lock:
                timeout = _sooner(timeout, self._service_switches())
                timeout = _sooner(timeout, self._publish_advisories())
                if timeout != 0 and self._idle_flows():
                    timeout = 0
        timeout = _sooner(timeout, self._resume_accept())
        for key, mask in sorted(self._sel.select(timeout), key=_ll_first):
            kind, obj = key.data
            try:
                self._serve_event(kind, obj, key.fd, mask)
            except Exception as e:
                self._fault(kind, obj, e)

    def _serve_event(self, kind: str, obj, fd: int, mask: int) -> None:
        if kind == "wake":
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        elif kind == "kick":
            drain(fd)
            ref = self.channels.get(obj)
            if ref is not None:
                self.kick(ref)
        elif kind == "netif":
            with self.lock:
                for _ in range(8):  # up to 2048 frames a round, then kicks and TX get a turn
                    if not obj.service_rx():
                        break
                    self._serve_ll()
        elif kind == "flowtx":
            drain(fd)
            sw, flow = obj
            with self.lock:
                flow.port.clear_need_wakeup()
                if flow.id in sw.flows and flow.port.pipe.defunct_reason is None:
                    self._service_tx(sw, flow, self._serves_ll())
                    if flow.id in sw.netif.ll_keys:
                        if sw.netif.active_ll:
                            sw.netif.flush()  # what the LL path queued: to the device now, not next round
                        self._receive_due()
        elif kind == "session":
            if mask & selectors.EVENT_WRITE:
                self._send_pending(obj)
            if mask & selectors.EVENT_READ:
                self._serve_session(obj)
        elif kind == "listen":
            self._accept(obj)

    def run(self) -> None:
        """Serve until stop() (the body of usnetd, or of the embedded service thread)."""
        while not self._stopping:
            self.serve_once(0.5)

    def start(self) -> None:
        """Run the service loop in a daemon thread (embedded mode).

        It also shortens the interpreter's GIL switch interval (see
        `usnet.runtime.gil`): the loop makes a system call per frame on some devices,
        and beside a busy thread each one would wait up to 5 ms for the GIL.
        """
        gil.short_switch_interval()
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="usnet-domain", daemon=True)
            self._thread.start()

    def request_stop(self) -> None:
        """Ask the service loop to end (safe from a signal handler)."""
        self._stopping = True
        self._wake()

    def stop(self) -> None:
        """Stop serving; defunct every channel so no client hangs, and free all memory."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        with self.lock:
            for s in list(self.sessions.values()):
                self.end_session(s, DefunctReason.DOMAIN_SHUTDOWN)
            for p in list(self.pipes.values()):
                with p.lock:
                    p.defunct(DefunctReason.DOMAIN_SHUTDOWN)
                    p.destroy()
            for sw in self.switches.values():
                sw.netif.driver.close()
            self.switches.clear()
            for adv in self.advisories.values():
                adv.close()
            self.advisories.clear()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> Domain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
