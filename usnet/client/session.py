"""The client library: one API whether the domain is embedded or is usnetd.

`Client.local(domain)` talks to an in-process Domain by method calls;
`Client.connect(path)` or `Client.from_socket(sock)` talks to usnetd, or to an
embedded domain in a parent process, over SOCK_SEQPACKET. Both return the
same `Channel` objects; only the control path differs.

A Client is a context manager; `close()` closes its channels and ends its
control session, so the domain forgets it at once rather than when the
process exits. Every reply is checked for the kind its request expects: any
other kind raises `ProtocolError` naming both (a check that `python -O`
keeps, unlike an assert).
"""

from __future__ import annotations

import atexit
import errno
import os
import select
import socket
import sys
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from usnet.abi import doorbell
from usnet.abi import protocol as P
from usnet.abi.advisory import AdvisoryReader
from usnet.abi.paths import DEFAULT_SOCKET
from usnet.abi.transport import ControlClient, connect_seqpacket
from usnet.client.channel import Channel
from usnet.client.lease import Lease, LeaseRefusedError

if TYPE_CHECKING:
    from usnet.client.datagram import DatagramSocket
    from usnet.domain.loop import Domain
    from usnet.domain.sessions import Session

__all__ = ["Client", "DomainGone", "OverChannel", "WorkerGone", "not_running"]

_R = TypeVar("_R", bound=P.Reply)
_Opened = TypeVar("_Opened", P.ChannelOpened, P.FlowOpened)


class DomainGone(ConnectionAbortedError):
    """usnetd went away (stopped, killed, crashed) while this client was connected to it."""


class WorkerGone(ConnectionAbortedError):
    """The worker of `usnetd --workers N` serving a flow died; usnetd lives on (and restarts it):
    a connection of that flow is lost, a listener or UDP socket binds again (usnet.client.rebind)."""


def not_running(path: str, why: OSError | None = None) -> OSError:
    """The error for a control socket nobody serves: it names the path and the way out.

    ENETDOWN, not "refused" or "no such file": the remote peer refused
    nothing, the domain that would carry the traffic is not there.
    """
    detail = f" ({why.strerror or why})" if why is not None else ""
    return OSError(errno.ENETDOWN, f"usnetd is not running at {path}{detail}: start it with `usnet up` "
                                   "(or point USNET_SOCKET at the socket of a running usnetd)")


class OverChannel(Protocol):
    """Anything that runs over one flow channel (a DatagramSocket, say): it names its channel."""

    @property
    def channel(self) -> Channel: ...


class Client:
    def __init__(self, request: Callable[[P.Request], tuple[P.Reply, list[int]]],
                 kick_for: Callable[[int, int], tuple[Callable[[], None], int | None]],
                 end: Callable[[], None], program: str | None = None, domain_fd: int | None = None,
                 notify: Callable[[P.Request], None] | None = None,
                 forget: Callable[[], None] | None = None) -> None:
        """`program` is the name given in Hello (default: this script's); the LL policy may match it.

        `end` ends the control session (the domain forgets it and everything it held).
        `domain_fd` is a descriptor of the control socket (ours to close) whose hang-up
        tells a channel's sleeper that usnetd died; None in process, where the domain
        cannot die apart from us.
        """
        self.domain_fd = domain_fd
        self.path: str | None = None  # the control socket's path, for Client.connect's clients
        self._request = request
        # a notice (P.NOTICES) is sent and not waited for; in process, it is a call like any request
        self._notify: Callable[[P.Request], object] = notify if notify is not None else request
        self._kick_for = kick_for
        self._end = end
        self._forget = forget  # in a child of fork(): let go of the control socket, say nothing
        self.closed = False
        self.channels: dict[int, Channel] = {}
        if program is None:
            program = os.path.basename(sys.argv[0] or "python")
        try:
            welcome = self._expect(P.Hello(P.PROTOCOL_VERSION, program), P.Welcome)[0]
        except BaseException:
            self.close()
            raise
        self.session = welcome.session
        self.uid = welcome.uid
        _live.add(self)

    # -- constructors -------------------------------------------------------------

    @classmethod
    def local(cls, domain: Domain, program: str | None = None) -> Client:
        """An in-process client: control requests are method calls, kicks too."""
        session: Session = domain.new_session(os.getuid(), os.getpid())

        def request(req: P.Request) -> tuple[P.Reply, list[int]]:
            reply, fds = domain.handle(session, req)
            return reply, [os.dup(fd) for fd in fds]

        def kick_for(cid: int, kick_fd: int) -> tuple[Callable[[], None], int | None]:
            os.close(kick_fd)
            return (lambda: domain.kick_channel(cid)), None

        return cls(request, kick_for, lambda: domain.end_session(session, None), program)

    @classmethod
    def from_socket(cls, sock: socket.socket, program: str | None = None) -> Client:
        """A client over a connected SEQPACKET socket (usnetd, or a parent's embedded domain)."""
        ctl = ControlClient(sock)

        def kick_for(cid: int, kick_fd: int) -> tuple[Callable[[], None], int | None]:
            def kick() -> None:
                doorbell.ring(kick_fd)
            return kick, kick_fd

        return cls(ctl.request, kick_for, ctl.close, program, domain_fd=os.dup(ctl.fileno()), notify=ctl.notify,
                   forget=ctl.forget)

    @classmethod
    def connect(cls, path: str = DEFAULT_SOCKET, program: str | None = None) -> Client:
        """A client of the usnetd serving `path`; ENETDOWN naming the path if none does."""
        try:
            sock = connect_seqpacket(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise not_running(path, e) from None
        c = cls.from_socket(sock, program)
        c.path = path
        return c

    @property
    def gone(self) -> bool:
        """usnetd hung up on this client (it stopped or died); False in process."""
        if self.closed:
            return True
        if self.domain_fd is None:
            return False
        p = select.poll()
        p.register(self.domain_fd, 0)  # 0: only POLLHUP/POLLERR/POLLNVAL are reported
        return bool(p.poll(0))

    # -- requests ------------------------------------------------------------------

    def _call(self, req: P.Request) -> tuple[P.Reply, list[int]]:
        if self.closed:
            raise ConnectionError(f"{type(req).__name__} on a closed client: its control session has ended")
        try:
            reply, fds = self._request(req)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as e:
            if self.domain_fd is None:
                raise
            raise DomainGone(errno.ECONNABORTED, f"usnetd went away{f' (at {self.path})' if self.path else ''}: "
                                                 f"its control socket closed ({e.strerror or e}); start it again "
                                                 "with `usnet up`, then make new sockets") from None
        if isinstance(reply, P.Error):
            _close_all(fds)
            raise P.ControlError(reply.code, reply.message)
        return reply, fds

    def _expect(self, req: P.Request, kind: type[_R], nfds: int = 0) -> tuple[_R, list[int]]:
        """The reply to `req`, which must be a `kind` with `nfds` descriptors; anything else is a ProtocolError."""
        reply, fds = self._call(req)
        if not isinstance(reply, kind) or len(fds) != nfds:
            _close_all(fds)
            raise P.ProtocolError(f"{type(req).__name__} expects {kind.__name__} and {nfds} descriptor(s), "
                                  f"got {type(reply).__name__} and {len(fds)}")
        return reply, fds

    def open_pipe(self, name: str, schema: str = "default", **attrs: int) -> Channel:
        """Open one end of the named user pipe (created by the first opener)."""
        return self._open(P.OpenPipe(name, schema, attrs), P.ChannelOpened)[0]

    def open_flow(self, netif: str, proto: int, local_port: int = 0,
                  remote: tuple[str, int] | None = None, schema: str = "default",
                  family: P.Family = 0, with_channel: int = 0, reuse_port: bool = False,
                  **attrs: int) -> tuple[Channel, P.FlowOpened]:
        """Register a flow on a netif's flow switch; returns its channel and what the switch enforces.

        `family` 4 or 6 picks the IP version; 0 takes the remote address's
        (IPv4 for a listener). `remote` may be a socket-style 4-tuple.
        `with_channel`: an unconnected flow channel of this client on another netif whose
        port (`local_port`) this unconnected flow shares (a wildcard listener's loopback half).
        `reuse_port`: SO_REUSEPORT (`P.OpenFlow.reuse_port`).
        """
        return self._open_flow(netif, proto, local_port, remote, schema, family, attrs, with_channel, reuse_port)

    def _open_flow(self, netif: str, proto: int, local_port: int, remote: tuple[str, int] | None, schema: str,
                   family: P.Family, attrs: dict[str, int], with_channel: int = 0,
                   reuse_port: bool = False, reuse_addr: bool = False) -> tuple[Channel, P.FlowOpened]:
        raddr, rport = (remote[0], remote[1]) if remote is not None else (None, None)
        req = P.OpenFlow(netif, proto, local_port, raddr, rport, schema, attrs, family, with_channel,
                         reuse_port=reuse_port, reuse_addr=reuse_addr)
        return self._open(req, P.FlowOpened)

    def open_connector(self, netif: str, family: P.Family = 4, worker: int = 0,
                       **attrs: int) -> tuple[Channel, P.FlowOpened]:
        """A TCP connector channel on a netif: outgoing connections send from the ports of its
        blocks (`add_ports`) and share it, as a listener's accepted connections share its channel.
        `worker`: under `usnetd --workers N`, the connector of that worker (FlowOpened.workers says N)."""
        req = P.OpenFlow(netif, 6, 0, None, None, "default", attrs, family, 0, connector=True, worker=worker)
        return self._open(req, P.FlowOpened)

    def add_ports(self, channel: int, count: int = 64) -> tuple[int, list[int]]:
        """A block of up to `count` ephemeral ports for connector `channel`: (block, ports). Its
        connections send from them with no further message (usnet.client.engine)."""
        reply, _ = self._expect(P.AddPorts(channel, count), P.PortsAdded)
        return reply.block, list(reply.ports)

    def return_ports(self, channel: int, block: int) -> None:
        """Give a connector's block back, without waiting (a notice: the domain sends no answer)."""
        if self.closed:
            return
        try:
            self._notify(P.ReturnPorts(channel, block))
        except (OSError, P.ControlError, P.ProtocolError):
            pass  # the domain or the channel is gone: the block went with it

    def release_ports(self, channel: int, ports: list[int], wait: bool = False) -> None:
        """A connector's connections on `ports` are over: each port, bound in the switch to its
        connection's 4-tuple, is free for another. A notice: no waiting. `wait`: a request, back
        once the switch has freed them (a worker's connector, which hears of it through usnetd:
        a SYN that reuses a port must not overtake its release); errors raise."""
        if wait:  # (none: an empty request all the same, answered after what this session sent before)
            for i in range(0, max(len(ports), 1), 1024):
                self._expect(P.ReleasePorts(channel, ports[i : i + 1024], answer=True), P.Done)
            return
        if self.closed:
            return
        for i in range(0, len(ports), 1024):
            try:
                self._notify(P.ReleasePorts(channel, ports[i : i + 1024]))
            except (OSError, P.ControlError, P.ProtocolError):
                return  # the domain or the channel is gone: the bindings went with it

    def unlisten(self, channel: int) -> None:
        """An SO_REUSEPORT listener on flow `channel` closed: new connections go to the port's
        other members once this returns (P.Unlisten)."""
        if self.closed:
            return
        try:
            self._expect(P.Unlisten(channel), P.Done)
        except (OSError, P.ControlError, P.ProtocolError):
            pass  # the domain or the channel is gone: the flow left its group with it

    def join_group(self, channel: int, group: bytes, join: bool = True, include: bool = False,
                   sources: list[bytes] | None = None) -> None:
        """Flow `channel` joins (or leaves) group `group` (P.JoinGroup), with a source filter
        (`include`, `sources`; default any source); the domain's refusal is raised as the OSError
        it names (EINVAL, EADDRINUSE, ENOBUFS, EADDRNOTAVAIL)."""
        self._expect(P.JoinGroup(channel, group, join, include, sources or []), P.Done)

    def source_filter(self, channel: int, group: bytes, include: bool, sources: list[bytes]) -> None:
        """Flow `channel`'s membership of `group` takes a new source filter (P.SourceFilter)."""
        self._expect(P.SourceFilter(channel, group, include, sources), P.Done)

    def multicast_options(self, channel: int, loop: bool, all: bool) -> None:
        """IP_MULTICAST_LOOP and IP_MULTICAST_ALL of flow `channel` (P.MulticastOptions)."""
        self._expect(P.MulticastOptions(channel, loop, all), P.Done)

    def open_monitor(self, netif: str, filter: str = "") -> Channel:
        """A read-only channel with a copy of every frame the netif sends and receives that matches
        `filter` (a subset of pcap-filter syntax, usnet.proto.pcapfilter; evaluated in the domain).

        Its STATS `rx_offered` and `rx_dropped` (`Channel.stats()`) count the frames that matched
        and those the channel could not keep."""
        return self._open(P.OpenMonitor(netif, filter), P.ChannelOpened)[0]

    def advisory(self, netif: str) -> AdvisoryReader:
        """A netif's interface advisory, mapped read-only: `.snapshot()` gives both directions.

        Close it when done (it is a context manager). ENODEV for an unknown netif.
        """
        reply, fds = self._expect(P.OpenAdvisory(netif), P.AdvisoryOpened, 1)
        try:
            return AdvisoryReader.from_fd(fds[0], reply.netif)
        finally:
            os.close(fds[0])

    def _open(self, req: P.Request, expect: type[_Opened]) -> tuple[Channel, _Opened]:
        """Send an open request; build the channel from the reply and its six descriptors (seven
        for a flow served by a worker of `usnetd --workers`: the seventh hangs up if that worker dies)."""
        reply, fds = self._call(req)
        if not isinstance(reply, expect) or len(fds) not in (6, 7):
            _close_all(fds)
            raise P.ProtocolError(f"{type(req).__name__} expects {expect.__name__} and 6 or 7 descriptors, "
                                  f"got {type(reply).__name__} and {len(fds)}")
        shared, ro, bell, bell_ring, peer_bell, kick_fd = fds[:6]
        alive = fds[6] if len(fds) == 7 else None
        kick, keep_fd = self._kick_for(reply.channel, kick_fd)
        try:
            ch = Channel(
                channel_id=reply.channel, role=reply.role, shared_fd=shared, ro_fd=ro, bell_fd=bell,
                bell_ring_fd=bell_ring, peer_bell_fd=peer_bell, kick=kick, control=self, alive_fd=alive,
            )
        except BaseException:
            _close_all([fd for fd in fds if fd != kick_fd] + ([] if keep_fd is None else [keep_fd]))
            raise
        if keep_fd is not None:
            ch._fds.append(keep_fd)
        self.channels[ch.id] = ch
        return ch, reply

    def udp_socket(self, netif: str = "usnet0", port: int = 0,
                   remote: tuple[str, int] | None = None, family: P.Family = 0, with_channel: int = 0,
                   reuse_port: bool = False, reuse_addr: bool = False, **attrs: int) -> DatagramSocket:
        """A UDP endpoint on a netif: the minimal datagram API over a flow channel.

        `family` 6 (or an IPv6 `remote`) makes it IPv6. `with_channel`: as for `open_flow`, an
        unconnected UDP flow of this client on another netif whose port this one shares.
        `reuse_port`, `reuse_addr`: SO_REUSEPORT, SO_REUSEADDR (`P.OpenFlow`).
        """
        from usnet.client.datagram import DatagramSocket

        ch, info = self._open_flow(netif, 17, port, remote, "default", family, attrs, with_channel, reuse_port,
                                   reuse_addr)
        return DatagramSocket(ch, info)

    def resize(self, channel: int, ring_size: int | None, packets: int | None) -> None:
        self._call(P.Resize(channel, ring_size, packets))

    def close_channel(self, channel: int) -> None:
        self.channels.pop(channel, None)
        self._call(P.CloseChannel(channel))

    def flush_queue(self, channel: Channel | OverChannel | int) -> int:
        """Drop what a flow channel sent that still waits in its netif's queue; returns how many.

        For data that went stale while it waited (a sender that changes its
        rate, a frame superseded by the next): each reported packet among
        them gets TX_STATUS FLUSHED. What is still on the TX ring is not touched.
        """
        return self._expect(P.FlushQueue(_channel_id(channel)), P.Flushed)[0].packets

    def request_lease(self, channel: Channel | OverChannel | int, *, service_class: str = "interactive",
                      rate: float, max_packet: int, latency_target: float) -> Lease:
        """Ask for low-latency service for a flow channel of this client; LeaseRefusedError says why not.

        `channel` is a flow Channel, a socket over one, or a channel id.
        `rate` is bit/s at the link (Ethernet headers count), `max_packet`
        the largest IP packet, `latency_target` seconds. Packets past the
        rate are dropped and reported (TX_DROPPED, RATE_EXCEEDED); the grant
        and its end arrive on the channel's EVENT ring too.
        """
        req = P.RequestLease(_channel_id(channel), service_class, rate, max_packet, latency_target)
        return Lease(self, self._lease_call(req, P.LeaseGranted))

    def _lease_call(self, req: P.Request, kind: type[_R]) -> _R:
        """A lease request's answer: a `kind`, or LeaseRefusedError with the agent's reason."""
        reply, fds = self._call(req)
        if isinstance(reply, P.LeaseRefused) and not fds:
            raise LeaseRefusedError(reply.reason, reply.message)
        if not isinstance(reply, kind) or fds:
            _close_all(fds)
            raise P.ProtocolError(f"{type(req).__name__} expects {kind.__name__} or LeaseRefused, "
                                  f"got {type(reply).__name__} and {len(fds)} descriptor(s)")
        return reply

    def ping(self, netif: str, address: str, seq: int = 0, size: int = 56,
             send: bool = True) -> list[tuple[int, int, int, int]]:
        """Have the switch of `netif` send an ICMP echo request to `address` (`send`), and return the
        replies to this client's requests since the last call: (seq, ttl, rtt ns, ICMP bytes)."""
        return self._expect(P.Ping(netif, address, seq, size, send), P.Pong)[0].replies

    def status(self) -> dict:
        """The domain's status document, joined from as many StatusReply parts as it takes."""
        parts: list[bytes] = []
        total = 1
        while len(parts) < total:
            reply = self._expect(P.Status(len(parts)), P.StatusReply)[0]
            if reply.part != len(parts) or (parts and reply.parts != total):
                raise P.ProtocolError(f"Status part {len(parts)} answered with {reply!r:.80}")
            total = reply.parts
            parts.append(reply.data)
        return P.decode_status(b"".join(parts))

    def close(self) -> None:
        """Close every channel, then end the control session; idempotent.

        The domain sees the session end now (a socket session: the hang-up),
        not when the process exits.
        """
        if self.closed:
            return
        try:
            for ch in list(self.channels.values()):
                ch.close()
        finally:
            self.closed = True
            try:
                self._end()
            finally:
                if self.domain_fd is not None:
                    os.close(self.domain_fd)
                    self.domain_fd = None

    def disown(self) -> None:
        """In a child of fork(): this client is the parent's. Its session, channels and packets
        stay the parent's, untouched: the child only unmaps its copies of the channels' memory
        and closes its copies of their descriptors and of the control socket, so that nothing
        it does (a send, a close, its exit) reaches the parent's rings or session. Closed from
        here on; `gone` says so, and a default client is replaced by a new session of the
        child's own (usnet.client.socket)."""
        for ch in self.channels.values():
            ch.disown()
        self.channels.clear()
        self.closed = True
        if self._forget is not None:
            self._forget()
        if self.domain_fd is not None:
            os.close(self.domain_fd)
            self.domain_fd = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_live: weakref.WeakSet[Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Every client a child of fork() inherits is its parent's (`Client.disown`): a usnet stack
    lives in one process, so the child starts its own sessions when it makes sockets."""
    for c in list(_live):
        c.disown()
    _live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _close_at_exit() -> None:
    """Close every client still open when the interpreter exits normally, as the kernel closes
    a process's sockets: its pipe ends close cleanly (the survivor drains what was sent,
    where a hang-up would defunct the pipe and zero what it held), its flows are closed
    rather than found abandoned. Registered at import, so it runs after the stack's own
    drain (usnet.client.engine), which atexit registers later and so runs first."""
    for c in list(_live):
        try:
            c.close()
        except Exception:  # at exit: a domain already gone must not stop the others
            pass


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _channel_id(channel: Channel | OverChannel | int) -> int:
    """The id of a flow Channel, of the channel under a socket, or an id as given."""
    if isinstance(channel, int):
        return channel
    if isinstance(channel, Channel):
        return channel.id
    return channel.channel.id
