"""The session registry: who is connected, which channels each holds, and the pipes behind them.

A session is one client's control connection (a socket, or an in-process
client's method calls); its identity is the uid the kernel reports for its
socket (SO_PEERCRED), never what it says. Its channels are ends of user
pipes, or flows and monitors on a netif's switch, each charged to its uid
and session (usnet.domain.limits). A session that ends, cleanly or not,
takes its channels with it: closed as CloseChannel would, or defuncted with
the reason (docs/architecture.md, "Domains and the trust boundary"). Pools
give idle memory back here too (`_purge_idle`).

Domain (usnet.domain.loop) owns the state declared below; the control
dispatch (usnet.domain.control) and the loop call these.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from usnet.abi import protocol as P
from usnet.abi import schema as schemamod
from usnet.abi.doorbell import Doorbell
from usnet.abi.events import DefunctReason
from usnet.domain.barrier import log_fault
from usnet.domain.limits import Access, Charge, Ledger, Share, check_share, is_shared, pipe_key
from usnet.domain.loglimit import LineBudget
from usnet.domain.lowlat.leases import LeaseDesk
from usnet.domain.switch.flowswitch import FlowSwitch
from usnet.domain.switch.monitor import MONITOR_SCHEMA, MonitorPort
from usnet.domain.switch.port import NEXUS, FlowPort
from usnet.domain.switch.ports import PROTO_NAMES
from usnet.domain.switch.table import Flow
from usnet.domain.userpipe import UserPipe
from usnet.domain.watch import READ, Watch
from usnet.proto.pcapfilter import parse as parse_filter
from usnet.proto.wire.ipv4 import ip_bytes

__all__ = ["TCPINFO_SLOTS", "ChannelRef", "Session", "SessionRegistry", "proc_program", "s_ident", "shares_port"]

log = logging.getLogger("usnet.domain")
# Packet geometry of a flow on a netif whose device segments (gso_max): 64 KiB
# packets, so the kernel's super-segments fit whole, unless the client chose its own.
_SUPER_PACKETS = {"buf_size": 16384, "buflets": 4}
#: TCPINFO records of a listener's or a connector's channel: connections past this many are
#: counted, not shown, by `usnet ss` (192 bytes each, sparse: pages are touched as slots are used).
TCPINFO_SLOTS = 256
_CMDLINE_BYTES = 4096  # of /proc/<pid>/cmdline read at a session's start (proc_program)


def proc_program(pid: int) -> str:
    """The program behind `pid`, from /proc (comm, or argv[0]'s base name when comm is an
    interpreter's: `python3 app.py` is `app.py`); "?" if the process is gone or hidden.

    This is what the kernel says, unlike the `program` a client names in Hello (a label)."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            comm = f.read().strip().decode(errors="replace")
    except OSError:
        return "?"
    if comm.startswith("python"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb", buffering=0) as f:
                # the first few arguments are all we show; a client's argv may be megabytes, copied
                # out of its memory by the kernel on every connect were it read whole
                argv = [a.decode(errors="replace") for a in f.read(_CMDLINE_BYTES).split(b"\0") if a]
        except OSError:
            argv = []
        rest = iter(argv[1:])
        for a in rest:
            if a == "-c":
                return _field(f"{comm}:-c")
            if a == "-m":
                return _field(f"{comm}:-m:{next(rest, '')}")
            if not a.startswith("-"):
                return _field(f"{comm}:{os.path.basename(a)}")
    return _field(comm)


def _field(text: str) -> str:
    """A log field value: no spaces or control characters, so key=value lines split cleanly."""
    return "".join(c if c.isprintable() and not c.isspace() else "_" for c in text)[:64] or "?"


@dataclass
class Session:
    id: int
    uid: int
    pid: int
    program: str = ""  # what the client named in Hello (a label)
    proc: str = ""  # what /proc says the process runs (proc_program)
    requests: dict[str, int] = field(default_factory=dict)  # control requests served, by type (for DEBUG)
    sock: socket.socket | None = None
    channels: set[int] = field(default_factory=set)
    refused: int = 0  # malformed or invalid control messages
    # Replies the socket had no room for, each with its own duplicates of the descriptors it
    # carries (the originals may close meanwhile); bounded by MAX_PENDING_REPLIES.
    pending: deque[tuple[bytes, list[int]]] = field(default_factory=deque)
    status_parts: list[bytes] = field(default_factory=list)  # the Status snapshot being paged out
    over_limit: OSError | None = None  # sessions_per_uid refused it: every request gets this, then it ends
    held_until: float | None = None  # its uid spent its share of the loop (usnet.domain.fairshare): not read till then
    # a request of it was relayed to a worker and is not answered yet (usnet.domain.workers): its
    # later requests are not read till then, so none overtakes that answer; its socket is watched
    # only for its end (a client gone meanwhile), till a later request waits there (`unread`)
    waiting: bool = False
    unread: bool = False


def s_ident(s: Session) -> str:
    """A session's identity as log fields: id, uid, pid, the program /proc names and its Hello label."""
    label = f" label={_field(s.program)}" if s.program and s.program not in (s.proc, s.proc.partition(":")[2]) else ""
    return f"session={s.id} uid={s.uid} pid={s.pid} program={s.proc or '-'}{label}"


@dataclass
class ChannelRef:
    pipe: UserPipe
    role: int
    session: Session
    switch: FlowSwitch | None = None
    flow: Flow | None = None
    monitor: FlowPort | None = None
    charge: Charge | None = None  # what it holds against its uid's and session's limits (usnet.domain.limits)
    # a connector's blocks of ephemeral ports (P.AddPorts), by block number: the ports and their charge
    blocks: dict[int, tuple[list[int], Charge]] = field(default_factory=dict)


def shares_port(req: P.OpenFlow) -> bool:
    """Whether an OpenFlow asks to share its port: SO_REUSEPORT, or SO_REUSEADDR on UDP (Linux's
    sk_reuse lets UDP sockets that all set it share a port; a TCP listener's SO_REUSEADDR is about
    TIME-WAIT, not sharing)."""
    return req.reuse_port or (req.reuse_addr and req.proto == 17)


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


def _left_out(n: int) -> str:
    return f" ({n} session lines left out before this one: usnet.domain.loglimit)" if n else ""


class SessionRegistry:
    """Sessions, their channels, and the pipes behind them: made, attached, closed, ended."""

    lock: threading.RLock
    sessions: dict[int, Session]
    channels: dict[int, ChannelRef]
    pipes: dict[tuple[int | None, str], UserPipe]  # by limits.pipe_key: (uid or None if shared, name)
    switches: dict[str, FlowSwitch]
    ledger: Ledger
    access: Access
    sessions_opened: int
    _session_lines: LineBudget  # session start/end log lines: a client cannot flood the log
    shares: tuple[Share, ...]
    leases: LeaseDesk
    clock: Callable[[], float]
    faults: int
    _pool_charges: dict[UserPipe, Charge]  # a pipe's arena, charged to its creator until destroyed
    _ids: itertools.count
    _sel: Watch
    _wake_w: int

    def _wake(self) -> None:
        """Wake the service loop from its wait (a new fd to watch, work queued)."""
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    # -- sessions -----------------------------------------------------------------

    def new_session(self, uid: int, pid: int, sock: socket.socket | None = None) -> Session:
        """A session of `uid`. One past `sessions_per_uid` is still made, so that its first
        request can be answered with the refusal; then it is ended (see `_dispatch`)."""
        with self.lock:
            s = Session(next(self._ids), uid, pid, sock=sock, proc=proc_program(pid) if sock is not None else "")
            self.sessions_opened += 1
            try:
                self.ledger.check_session(uid, sum(1 for o in self.sessions.values()
                                                   if o.uid == uid and o.over_limit is None))
            except OSError as e:
                s.over_limit = e
            self.sessions[s.id] = s
        left_out = self._session_lines.take(time.monotonic())
        if left_out is not None:
            log.info("session start %s%s", s_ident(s), _left_out(left_out))
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
            left = len(session.channels)
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
            for sw in self.switches.values():
                sw.echo.forget(session.id)  # its `usnet ping` identifier
            self._drop_pending(session)
            if session.sock is not None:
                try:
                    self._sel.unregister(session.sock)
                except (KeyError, ValueError):
                    pass
                session.sock.close()
                session.sock = None
        # A client that closed (or exited: the hang-up) ended normally; what it left open was closed
        # for it. Only the domain's own reasons (a protocol fault, a slow consumer) are warnings.
        how = ("closed" if reason is None or (reason is DefunctReason.OWNER_GONE and not left)
               else "exited" if reason is DefunctReason.OWNER_GONE
               else "shutdown" if reason is DefunctReason.DOMAIN_SHUTDOWN else reason.name.lower())
        normal = how in ("closed", "exited", "shutdown")
        left_out = self._session_lines.take(time.monotonic())
        if left_out is not None:
            log.log(logging.INFO if normal else logging.WARNING,
                    "session end %s how=%s channels_left=%d refused=%d%s%s",
                    s_ident(session), how, left, session.refused,
                    "" if not log.isEnabledFor(logging.DEBUG) else
                    " requests=" + (",".join(f"{k}:{v}" for k, v in sorted(session.requests.items())) or "none"),
                    _left_out(left_out))

    @staticmethod
    def _drop_pending(session: Session) -> None:
        for _, fds in session.pending:
            for fd in fds:
                os.close(fd)
        session.pending.clear()

    def _own(self, session: Session, cid: int) -> ChannelRef:
        ref = self.channels.get(cid)
        if ref is None or ref.session is not session:
            raise OSError(errno.ENOENT, f"no channel {cid} in this session")
        return ref

    # -- channels -----------------------------------------------------------------

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
                    pipe.two_clients = True
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

    def _new_pipe(self, name: str, sch: schemamod.Schema, session: Session, tcpinfo_slots: int = 0) -> UserPipe:
        """A pipe whose arena is charged to its creator (pool_bytes) until it is destroyed."""
        pipe = UserPipe(name, sch, session.uid, tcpinfo_slots)
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
        """Give a session its end of a pipe: registered, watched, and the six fds to hand over."""
        end = ref.pipe.ends[ref.role]
        own_ring = end.bell.lend_sleeper_ring()  # first: an OSError (EMFILE) leaves nothing half made
        end.channel_id = cid
        end.attached = True
        self.channels[cid] = ref
        ref.session.channels.add(cid)
        self._sel.register(end.kick.wait_fd, READ, ("kick", cid))
        self._wake()
        # the client sleeps on its bell and rings it too (a write end of its own), rings its peer's,
        # rings our kick (docs/abi.md, "Doorbells")
        return [ref.pipe.arena.shared_fd, ref.pipe.arena.ro_fd, end.bell.wait_fd, own_ring, peer_bell.ring_fd,
                end.kick.ring_fd]

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
        if req.connector and (raddr is not None or req.local_port or req.with_channel or req.proto != 6
                              or shares_port(req)):
            raise ValueError("a connector is TCP, with no port, remote end or shared channel of its own")
        if req.worker:
            raise OSError(errno.EINVAL, f"no worker {req.worker}: this domain runs as one process")
        share = None
        if req.with_channel:  # a wildcard listener's second netif: the port of a flow of this session
            sib = self.channels.get(req.with_channel)
            if sib is None or sib.session is not session or sib.flow is None or sib.switch is sw:
                raise OSError(errno.EINVAL, f"channel {req.with_channel} is no flow of this session on another netif")
            share = sib.flow
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
                                          ephemeral_ports=int(req.local_port == 0 and not req.connector)))
        cid = next(self._ids)
        try:
            # a TCP flow's connections publish their statistics here (usnet.abi.tcpinfo, `usnet ss`)
            slots = 0 if req.proto != 6 else 1 if raddr is not None else TCPINFO_SLOTS
            pipe = self._new_pipe(f"flow:{cid}", sch, session, slots)
        except BaseException:
            self.ledger.release(charge)
            raise
        port = FlowPort(pipe)
        port.on_fault = lambda where, exc: self._fault_channel(pipe, 0, where, exc)
        try:
            if req.connector:
                flow = sw.add_connector(port, cid, family)
            else:
                flow = sw.add_flow(req.proto, req.local_port, raddr, req.remote_port, port, cid, family, share=share,
                                   reuse=session.uid if shares_port(req) and raddr is None else None,
                                   reuse_hash=req.reuse_port)
        except BaseException:
            self.ledger.release(charge)
            pipe.destroy()
            raise
        try:
            self._sel.register(port.bell, READ, ("flowtx", (sw, flow)))
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
        if req.connector:  # its first connect's SYN needs a packet at once (UserPipe.lend_first)
            pipe.lend_first(0)
        local = sw.netif.ip6_str if family == 6 else sw.netif.ip_str
        assert local is not None, "add_flow refuses an IPv6 flow on a netif without an IPv6 address"
        remote = None if raddr is None else str(ipaddress.ip_address(raddr))  # the canonical text
        net = sw.netif
        prefix = net.address6.network.prefixlen if family == 6 and net.address6 is not None else net.network.prefixlen
        gw = net.gateway6 if family == 6 else net.gateway
        reply = P.FlowOpened(cid, 0, sch.name, local, flow.lport, remote, req.remote_port, net.mtu, net.name,
                             family, gso_max, prefix, None if gw is None else str(ipaddress.ip_address(gw)))
        return reply, fds

    def _connector(self, session: Session, channel: int) -> ChannelRef:
        ref = self._own(session, channel)
        if ref.flow is None or ref.switch is None or ref.flow.binds is None:
            raise OSError(errno.EINVAL, f"channel {channel} is not a connector")
        return ref

    def add_ports(self, session: Session, req: P.AddPorts, listed: bool = False) -> tuple[int, list[int]]:
        """A block of ephemeral ports for a connector channel of `session` (P.AddPorts): up to
        `count`, as many as the session's and uid's ephemeral port limits leave room for (none:
        refused as the limit's refusal), each charged as one ephemeral port. Returns (block, ports).
        `listed`: the request may name its ports (`req.ports`), as usnetd's own sessions in a worker
        do (usnet.domain.workers); from anyone else a list is refused (EPERM): a client would choose
        ports of another worker or owner."""
        if req.ports is not None and not listed:
            raise OSError(errno.EPERM, "AddPorts with a list of ports is usnetd's own request to its workers")
        ref = self._connector(session, req.channel)
        assert ref.flow is not None and ref.switch is not None
        sw, flow, listed_ports = ref.switch, ref.flow, req.ports
        ports, charge = self.charge_ports(session, req.count if listed_ports is None else len(listed_ports),
                                          lambda n: sw.add_ports(flow, n, listed_ports))
        block = next(self._ids)
        ref.blocks[block] = (ports, charge)
        return block, ports

    def charge_ports(self, session: Session, count: int, take: Callable[[int], list[int]]) -> tuple[list[int], Charge]:
        """Up to `count` ports from `take(n)` (n: what the session's and uid's ephemeral port limits
        leave room for; none: the limit's refusal), charged as ephemeral ports, the charge cut to
        what `take` gave. `take` raises with nothing taken, or gives at least one port."""
        n = min(count, self.ledger.room(session.uid, session.id, "ephemeral_ports"))
        charge = self.ledger.admit(Charge(session.uid, session.id, channels=0, ephemeral_ports=max(n, 1)))
        try:
            ports = take(charge.ephemeral_ports)
        except BaseException:
            self.ledger.release(charge)
            raise
        if len(ports) != charge.ephemeral_ports:  # the range ran short: charge what was given
            self.ledger.release(charge)
            charge = self.ledger.admit(Charge(session.uid, session.id, channels=0, ephemeral_ports=len(ports)))
        return ports, charge

    def return_ports(self, session: Session, req: P.ReturnPorts) -> None:
        """A connector's block is given back (P.ReturnPorts, a notice): its ports and charge go,
        after what the channel sent before (a last ACK, a RST) has left."""
        ref = self._connector(session, req.channel)
        assert ref.flow is not None and ref.switch is not None
        ports, charge = ref.blocks.pop(req.block)  # KeyError: not a block of this channel
        with ref.pipe.lock:
            if ref.pipe.defunct_reason is None:
                for _ in range(ref.flow.port.tx.capacity // 64 + 1):
                    if not ref.switch.service_tx(ref.flow, draining=True):
                        break
            ref.switch.remove_ports(ref.flow, ports)
        self.ledger.release(charge)

    def release_ports(self, session: Session, req: P.ReleasePorts) -> int:
        """A connector's connections on `req.ports` are over (P.ReleasePorts, a notice): each
        bound port is free for another 4-tuple. A port of its blocks not bound is left as it is; a
        port not of its blocks is refused (EINVAL), changing nothing. What the channel sent before
        leaves first, as in `return_ports`. Returns how many ports were bound."""
        ref = self._connector(session, req.channel)
        assert ref.flow is not None and ref.switch is not None
        binds = ref.flow.binds
        assert binds is not None
        with ref.pipe.lock:
            if ref.pipe.defunct_reason is None and not ref.switch.in_tx:
                binds.releasing = set(req.ports) & binds.held  # a SYN met in the drain came after
                try:
                    for _ in range(ref.flow.port.tx.capacity // 64 + 1):
                        if not ref.switch.service_tx(ref.flow, draining=True):
                            break
                    left = [p for p in req.ports if p in binds.releasing or p not in binds.held]
                finally:
                    binds.releasing = set()
                return ref.switch.release_ports(ref.flow, left)
            return ref.switch.release_ports(ref.flow, list(req.ports))

    def open_monitor(self, session: Session, netif: str, filter_text: str = "") -> tuple[int, list[int]]:
        """A channel that receives a copy of every frame of a netif that matches `filter_text`
        (usnet.proto.pcapfilter; "" takes all): root or the domain's own uid only."""
        sw = self.switches.get(netif)
        if sw is None:
            raise OSError(errno.ENODEV, f"no netif {netif!r}")
        if session.uid not in (0, os.getuid()):
            raise OSError(errno.EPERM, "monitoring a netif needs root")
        parse_filter(filter_text)  # a malformed filter is refused (FilterError is a ValueError: EINVAL)
        charge = self.ledger.admit(Charge(session.uid, session.id))
        cid = next(self._ids)
        try:
            pipe = self._new_pipe(f"monitor:{cid}", MONITOR_SCHEMA, session)
        except BaseException:
            self.ledger.release(charge)
            raise
        port = MonitorPort(pipe, filter_text)
        sw.netif.monitors.append(port)
        return cid, self._attach(cid, ChannelRef(pipe, 0, session, sw, None, monitor=port, charge=charge),
                                 pipe.ends[NEXUS].bell)

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
        for _, c in ref.blocks.values():  # a connector's blocks (their ports: with its flow, below)
            self.ledger.release(c)
        ref.blocks.clear()
        with ref.pipe.lock:
            if ref.flow is not None and ref.switch is not None:
                if ref.pipe.defunct_reason is None:
                    # what it sent before closing still goes out, as with a kernel socket
                    # (bounded: a client may not keep us here by sending while it closes)
                    for _ in range(ref.flow.port.tx.capacity // 64 + 1):
                        if not ref.switch.service_tx(ref.flow, draining=True):
                            break
                else:
                    # its stack died with it (SIGKILL, a crash) or was cut off: its TCP peers
                    # hear a RST from the sequence state the switch last validated
                    ref.switch.reset_peers(ref.flow)
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

    # -- fault barriers -------------------------------------------------------------

    def _log_fault(self, where: str, exc: BaseException) -> None:
        self.faults += 1
        log_fault(where, exc)

    def _fault_channel(self, pipe: UserPipe, role: int, where: str, exc: BaseException) -> None:
        """The barrier of one channel: what its memory made go wrong defuncts it (ABUSE), nothing else."""
        self.faults += 1
        with pipe.lock:
            pipe.fault(role, where, exc)
