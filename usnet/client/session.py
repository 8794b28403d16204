"""The client library: one API whether the domain is embedded or is usnetd.

`Client.local(domain)` talks to an in-process Domain by method calls;
`Client.connect(path)` or `Client.from_socket(sock)` talks to usnetd, or to an
embedded domain in a parent process, over SOCK_SEQPACKET. Both return the
same `Channel` objects; only the control path differs.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from usnet.abi import doorbell
from usnet.abi import protocol as P
from usnet.abi.advisory import AdvisoryReader
from usnet.abi.paths import DEFAULT_SOCKET
from usnet.abi.transport import ControlClient, connect_seqpacket
from usnet.client.channel import Channel
from usnet.client.lease import Lease, LeaseRefused

if TYPE_CHECKING:
    from usnet.client.datagram import DatagramSocket
    from usnet.domain.loop import Domain, Session



class Client:
    def __init__(self, request: Callable[[P.Request], tuple[P.Reply, list[int]]],
                 kick_for: Callable[[int, int], tuple[Callable[[], None], int | None]],
                 program: str | None = None, domain_fd: int | None = None) -> None:
        """`program` is the name given in Hello (default: this script's); the LL policy may match it.

        `domain_fd` is a descriptor of the control socket (ours to close) whose hang-up
        tells a channel's sleeper that usnetd died; None in process, where the domain
        cannot die apart from us.
        """
        self.domain_fd = domain_fd
        self._request = request
        self._kick_for = kick_for
        self.channels: dict[int, Channel] = {}
        if program is None:
            program = os.path.basename(sys.argv[0] or "python")
        welcome, _ = self._call(P.Hello(P.PROTOCOL_VERSION, program))
        assert isinstance(welcome, P.Welcome)
        self.session = welcome.session
        self.uid = welcome.uid

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

        return cls(request, kick_for, program)

    @classmethod
    def from_socket(cls, sock: socket.socket, program: str | None = None) -> Client:
        """A client over a connected SEQPACKET socket (usnetd, or a parent's embedded domain)."""
        ctl = ControlClient(sock)

        def kick_for(cid: int, kick_fd: int) -> tuple[Callable[[], None], int | None]:
            def kick() -> None:
                doorbell.ring(kick_fd)
            return kick, kick_fd

        return cls(ctl.request, kick_for, program, domain_fd=os.dup(ctl.fileno()))

    @classmethod
    def connect(cls, path: str = DEFAULT_SOCKET, program: str | None = None) -> Client:
        return cls.from_socket(connect_seqpacket(path), program)

    # -- requests ------------------------------------------------------------------

    def _call(self, req: P.Request) -> tuple[P.Reply, list[int]]:
        reply, fds = self._request(req)
        if isinstance(reply, P.Error):
            for fd in fds:
                os.close(fd)
            raise P.ControlError(reply.code, reply.message)
        return reply, fds

    def open_pipe(self, name: str, schema: str = "default", **attrs: int) -> Channel:
        """Open one end of the named user pipe (created by the first opener)."""
        return self._open(P.OpenPipe(name, schema, attrs), P.ChannelOpened)[0]

    def open_flow(self, netif: str, proto: int, local_port: int = 0,
                  remote: tuple[str, int] | None = None, schema: str = "default",
                  family: int = 0, **attrs: int) -> tuple[Channel, P.FlowOpened]:
        """Register a flow on a netif's flow switch; returns its channel and what the switch enforces.

        `family` 4 or 6 picks the IP version; 0 takes the remote address's
        (IPv4 for a listener). `remote` may be a socket-style 4-tuple.
        """
        raddr, rport = (remote[0], remote[1]) if remote is not None else (None, None)
        req = P.OpenFlow(netif, proto, local_port, raddr, rport, schema, attrs, family)
        return self._open(req, P.FlowOpened)

    def open_monitor(self, netif: str) -> Channel:
        """A read-only channel with a copy of every frame the netif sends and receives."""
        return self._open(P.OpenMonitor(netif), P.ChannelOpened)[0]

    def advisory(self, netif: str) -> AdvisoryReader:
        """A netif's interface advisory, mapped read-only: `.snapshot()` gives both directions.

        Close it when done (it is a context manager). ENODEV for an unknown netif.
        """
        reply, fds = self._call(P.OpenAdvisory(netif))
        if not isinstance(reply, P.AdvisoryOpened) or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise P.ProtocolError("OpenAdvisory answered without an advisory and its one descriptor")
        try:
            return AdvisoryReader.from_fd(fds[0], reply.netif)
        finally:
            os.close(fds[0])

    def _open(self, req: P.Request, expect: type) -> tuple[Channel, Any]:
        """Send an open request; build the channel from the reply and its five descriptors."""
        reply, fds = self._call(req)
        if not isinstance(reply, expect) or len(fds) != 5:
            for fd in fds:
                os.close(fd)
            raise P.ProtocolError(f"{type(req).__name__} answered without a channel and its five descriptors")
        shared, ro, bell, peer_bell, kick_fd = fds
        kick, keep_fd = self._kick_for(reply.channel, kick_fd)
        ch = Channel(
            channel_id=reply.channel, role=reply.role, shared_fd=shared, ro_fd=ro,
            bell_fd=bell, peer_bell_fd=peer_bell, kick=kick, control=self,
        )
        if keep_fd is not None:
            ch._fds.append(keep_fd)
        self.channels[ch.id] = ch
        return ch, reply

    def udp_socket(self, netif: str = "usnet0", port: int = 0,
                   remote: tuple[str, int] | None = None, family: int = 0, **attrs: int) -> DatagramSocket:
        """A UDP endpoint on a netif: the minimal datagram API over a flow channel.

        `family` 6 (or an IPv6 `remote`) makes it IPv6.
        """
        from usnet.client.datagram import DatagramSocket

        ch, info = self.open_flow(netif, 17, port, remote, family=family, **attrs)
        return DatagramSocket(ch, info)

    def resize(self, channel: int, ring_size: int | None, packets: int | None) -> None:
        self._call(P.Resize(channel, ring_size, packets))

    def close_channel(self, channel: int) -> None:
        self.channels.pop(channel, None)
        self._call(P.CloseChannel(channel))

    def flush_queue(self, channel: Channel | DatagramSocket | int) -> int:
        """Drop what a flow channel sent that still waits in its netif's queue; returns how many.

        For data that went stale while it waited (a sender that changes its
        rate, a frame superseded by the next): each reported packet among
        them gets TX_STATUS FLUSHED. What is still on the TX ring is not touched.
        """
        reply, _ = self._call(P.FlushQueue(_channel_id(channel)))
        if not isinstance(reply, P.Flushed):
            raise P.ProtocolError(f"FlushQueue answered with {type(reply).__name__}")
        return reply.packets

    def request_lease(self, channel: Channel | DatagramSocket | int, *, service_class: str = "interactive",
                      rate: float, max_packet: int, latency_target: float) -> Lease:
        """Ask for low-latency service for a flow channel of this client; LeaseRefused says why not.

        `channel` is a flow Channel, a socket over one, or a channel id.
        `rate` is bit/s at the link (Ethernet headers count), `max_packet`
        the largest IP packet, `latency_target` seconds. Packets past the
        rate are dropped and reported (TX_DROPPED, RATE_EXCEEDED); the grant
        and its end arrive on the channel's EVENT ring too.
        """
        reply = self._lease_call(P.RequestLease(_channel_id(channel), service_class, rate, max_packet, latency_target))
        assert isinstance(reply, P.LeaseGranted)
        return Lease(self, reply)

    def _lease_call(self, req: P.Request) -> P.Reply:
        reply, _ = self._call(req)
        if isinstance(reply, P.LeaseRefused):
            raise LeaseRefused(reply.reason, reply.message)
        if not isinstance(reply, (P.LeaseGranted, P.Done)):
            raise P.ProtocolError(f"{type(req).__name__} answered with {type(reply).__name__}")
        return reply

    def status(self) -> dict:
        """The domain's status document, joined from as many StatusReply parts as it takes."""
        parts: list[bytes] = []
        total = 1
        while len(parts) < total:
            reply, _ = self._call(P.Status(len(parts)))
            if not isinstance(reply, P.StatusReply) or reply.part != len(parts) or (parts and reply.parts != total):
                raise P.ProtocolError(f"Status part {len(parts)} answered with {reply!r:.80}")
            total = reply.parts
            parts.append(reply.data)
        return P.decode_status(b"".join(parts))

    def close(self) -> None:
        for ch in list(self.channels.values()):
            ch.close()
        if self.domain_fd is not None:
            os.close(self.domain_fd)
            self.domain_fd = None


def _channel_id(channel: Channel | DatagramSocket | int) -> int:
    """The id of a flow Channel, of the channel under a socket, or an id as given."""
    return channel if isinstance(channel, int) else getattr(channel, "channel", channel).id
