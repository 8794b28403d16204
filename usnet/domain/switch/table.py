"""The flow table: which flow a packet belongs to, and which flows may exist.

A listener matches (protocol, local port); a connected flow matches the full
5-tuple and wins over a listener. Both families' connected flows share one
table (the remote address's length tells them apart); listeners have one
table per family. Local ports are reserved in the domain's PortSpace
(usnet.domain.switch.ports), one namespace per protocol shared by every netif.
The receive and transmit paths (usnet.domain.switch.rx, .tx) read these
tables directly on their hot paths; `lookup` is the same lookup for the
per-packet paths (docs/architecture.md, "Data paths").
"""

from __future__ import annotations

import errno
import itertools
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from usnet.abi.events import EventType, TxStatus
from usnet.domain.netif.netif import Netif
from usnet.domain.switch.binding import PortBindings
from usnet.domain.switch.echo import EchoDesk
from usnet.domain.switch.port import CLIENT, FlowPort, TxMark
from usnet.domain.switch.ports import PortSpace, host_owns
from usnet.domain.switch.reuseport import ReuseGroup
from usnet.domain.switch.txguard import SentFragments, TcpSeen
from usnet.domain.tcpinfo import flow_connections
from usnet.drivers.base import FlowSteering, Received
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.ipv4 import IPV4_HLEN, ip_str, not_unicast4
from usnet.proto.wire.ipv6 import IPV6_HLEN, UNSPECIFIED, ip6_str, not_unicast6, skip_ext_headers

__all__ = ["ICMP", "PORTS", "TCP", "UDP", "Flow", "FlowTable"]

ICMP, TCP, UDP = 1, 6, 17
PORTS = struct.Struct("!HH")  # a transport header's source and destination ports


@dataclass(eq=False)
class Flow:
    """One application's flow: what it may send and receive, its port (the far end of its channel), its counts."""

    id: int
    proto: int
    lport: int
    raddr: bytes | None
    rport: int | None
    port: FlowPort
    channel: int = 0
    stats: Counter = field(default_factory=Counter)
    raddr_int: int = 0
    family: int = 4  # 4 or 6: which address the flow sends from, and which listener table has it
    policer: Any = None  # an LL lease's usnet.domain.lowlat.policer.Policer, while the flow holds one
    dscp: int = 0  # written into every packet it sends: its lease's class (usnet.domain.lowlat.policy.SERVICE_DSCP)
    sent_frags: SentFragments | None = None  # datagrams it began in fragments (made at its first)
    tcp_seen: TcpSeen | None = None  # TCP: sequence state per remote end, for resets when its owner dies
    owner: Any = None  # whose reservation of the port it holds (PortSpace): its own, or the flow's it shares
    # A connector (TCP, no port of its own): the ephemeral ports of the blocks it was given
    # (`FlowTable.add_ports`), each reserved in the port space, and the 4-tuple each is bound to
    # by its first SYN (usnet.domain.switch.binding): a free port is in its family's listener
    # table, a bound one's 4-tuple in the exact table, as a connected flow's
    binds: PortBindings | None = None
    # SO_REUSEPORT (usnet.domain.switch.reuseport): `reuse` is the uid of a flow that asked for
    # it; `member_of` its group once the port is shared; `group` is set only on a group's front,
    # the listener table's entry for a shared port, which the receive paths split among the members
    reuse: int | None = None
    # SO_REUSEPORT asked (else SO_REUSEADDR alone, a UDP flow's): while it is its group's newest
    # member, unicast datagrams hash among the group's such members; else they all go to it
    reuse_hash: bool = True
    member_of: ReuseGroup | None = None
    group: ReuseGroup | None = None
    mc_loop: bool = True  # IP_MULTICAST_LOOP: what it sends to a group reaches this netif's members too
    mc_all: bool = True  # IP_MULTICAST_ALL: it hears a group another flow of its port joined

    @property
    def conns(self) -> dict[int, tuple[bytes, int]] | None:
        """A connector's bound ports: local port -> (remote address, remote port); None otherwise."""
        return None if self.binds is None else self.binds.bound

    def __post_init__(self) -> None:
        if self.raddr is not None:
            self.raddr_int = int.from_bytes(self.raddr, "big")
        self._tx_sig: tuple[np.ndarray, np.ndarray] | None = None
        self._tx_sig_row: np.ndarray | None = None

    def peer_of(self, sport: int) -> tuple[bytes | None, int | None] | None:
        """Where a packet from local port `sport` may go: (remote address, port) of a connected
        flow or of a connector's bound port, (None, None) for an unconnected flow (any peer);
        None if the flow may not send from that port at all (a connector's free port: see
        `PortBindings.check`, which `_tx_addressed` asks first).

        The one rule of which 4-tuples a flow owns: the per-packet checks (usnet.domain.switch.tx
        `_tx_addressed`) ask it, and the column-wise pass (`PortBindings.keys`) only accelerates it.
        """
        if self.binds is not None:
            return self.binds.bound.get(sport)
        return (self.raddr, self.rport) if sport == self.lport else None

    def tx_signature(self, local_ip: bytes) -> tuple[np.ndarray, np.ndarray]:
        """(columns, values) every packet of this flow has in its first 24 bytes.

        Version/IHL 0x45, the flow's protocol, the local address and port, and
        for a connected flow the remote address and port: what the switch
        checks column-wise in one comparison.
        """
        if self._tx_sig is None:
            sig = {0: 0x45, 9: self.proto}
            if self.binds is None:  # a connector's ports are its bound ones' (`PortBindings.keys`)
                sig.update({20: self.lport >> 8, 21: self.lport & 0xFF})
            sig.update({12 + i: b for i, b in enumerate(local_ip)})
            raddr, rport = self.raddr, self.rport
            if raddr is not None and rport is not None:  # connected: add_flow gives a flow both or neither
                sig.update({16 + i: b for i, b in enumerate(raddr)})
                sig.update({22: rport >> 8, 23: rport & 0xFF})
            self._tx_sig = (np.array(list(sig), np.intp), np.array(list(sig.values()), np.uint8))
        return self._tx_sig

    def tx_signature_row(self, local_ip: bytes) -> np.ndarray:
        """`tx_signature` as one row of 48 bytes: a mask of the 24 header bytes it fixes, then their
        values, so that a pass over the packets of many flows (`TransmitPath.service_tx_many`) holds
        each row to its own flow's values with one masked comparison."""
        if self._tx_sig_row is None:
            cols, want = self.tx_signature(local_ip)
            row = np.zeros(48, np.uint8)
            row[cols] = 0xFF
            row[24 + cols] = want
            self._tx_sig_row = row
        return self._tx_sig_row

    def key(self) -> tuple:
        if self.binds is not None:
            return ("connector", self.id)
        if self.raddr is None:
            return (self.proto, self.lport)
        return (self.proto, self.lport, self.raddr, self.rport)

    def describe(self) -> dict[str, Any]:
        if self.raddr is None:
            remote = None
        elif self.family == 6:
            remote = f"[{ip6_str(self.raddr)}]:{self.rport}"
        else:
            remote = f"{ip_str(self.raddr)}:{self.rport}"
        return {"id": self.id, "channel": self.channel, "proto": {6: "tcp", 17: "udp"}.get(self.proto, self.proto),
                "family": self.family, "local_port": self.lport, "remote": remote,
                "connector": self.binds is not None, "ports": len(self.binds.held) if self.binds else 0,
                "connections": len(self.binds.bound) if self.binds else 0,
                # SO_REUSEPORT: a member that takes new connections, or one whose listener closed
                "reuseport": (None if self.member_of is None
                              else "listening" if self in self.member_of.members else "closed"),
                "suspended": self.port.suspended, "rx_mitigation": self.port.mitigate,
                "stalled": self.port.stalled,
                "stats": {**self.stats, **self.port.bell_stats(), "rx_dropped_stalled": self.port.rx_dropped_stalled},
                # its channel's pool, defunct reason, faults and ends, as a user pipe shows them
                # (a flow's pipe is no named pipe of the domain's: it shows here, with its flow)
                "pipe": self.port.pipe.info(),
                # its TCP connections as its client's stack published them, checked (usnet ss)
                "tcp": flow_connections(self) if self.proto == 6 else None}

    def post_status(self, status: TxStatus, mark: TxMark, taken_ns: int, reason: int = 0) -> None:
        """One packet's TX_STATUS on the client's event ring; SENT only if it asked for reports
        (a deadline alone asks for the rest)."""
        if status == TxStatus.SENT and not mark.report:
            return
        self.port.pipe.ends[CLIENT].events.post(EventType.TX_STATUS, status | reason << 8, mark.packet,
                                                value=mark.tag, aux=taken_ns)


class FlowTable:
    """The flows of one netif, the tables that find them, and the counters every part of the switch keeps."""

    def __init__(self, netif: Netif, ports: PortSpace | None = None,
                 clock: Callable[[], float] = time.monotonic, rx_mitigation: bool = False) -> None:
        self.netif = netif
        self.rx_mitigation = rx_mitigation  # coalesce the receive bells of new flows (usnet.domain.netif.mitigation)
        self._held_bells: dict[FlowPort, None] = {}  # ports holding a receive bell: an ordered set
        self.ports = ports or PortSpace()
        self.clock = clock
        self.flows: dict[int, Flow] = {}
        # The flows the loop polls for transmits, an ordered set: those that sent lately. The
        # others sleep with NEED_WAKEUP set and ring their bell when they send (the domain loop's
        # `_park`), so a turn costs the flows at work, not every flow (docs/architecture.md).
        self.polled: dict[Flow, None] = {}
        self.exact: dict[tuple, Flow] = {}  # both families: the remote address's length tells them apart
        self.listeners: dict[tuple, Flow] = {}
        self.listeners6: dict[tuple, Flow] = {}
        self.drops: Counter = Counter()
        self.counts: Counter = Counter()
        # the domain's: read a connector's owner's pending P.ReleasePorts before its SYN is refused
        # (the notice left the client before the SYN, on another socket: usnet.domain.loop)
        self.catch_up: Callable[[Flow], None] | None = None
        self.in_tx = False  # within a catch-up, called from the transmit path: no draining there
        # which ephemeral ports a connector's blocks may take (None: any): under `usnetd --workers N`
        # only those the device steers to this process's queue (usnet.domain.workers)
        self.connector_ports: Callable[[int], bool] | None = None
        self.echo = EchoDesk()  # `usnet ping`'s echo requests and their replies (usnet.domain.switch.echo)
        self._ids = itertools.count(1)
        # the loopback netif's addresses are the domain's own, not the host's: its ports are usnet's alone
        self._host_addr = netif.ip_str if not netif.loopback and host_owns(netif.ip_str) else None
        self._host_addr6 = (netif.ip6_str if not netif.loopback and netif.ip6_str and host_owns(netif.ip6_str)
                            else None)
        # a device sharing the host's interface takes only the ports we steer to it (issue 19)
        drv = netif.driver
        self._steering: FlowSteering | None = drv if netif.caps.steers_flows and isinstance(drv, FlowSteering) else None
        self._local4 = int.from_bytes(netif.ip, "big")
        # The subnet's broadcast address. A /31 or /32 has none (both addresses of a /31 are
        # hosts): there it is our own address again, which every check refuses first anyway.
        self._bcast4 = (int.from_bytes(netif.broadcast, "big") if netif.network.prefixlen < 31
                        else self._local4)
        # Its network address is a host's like any other: Linux routes it as unicast since 5.14
        # (usnet.proto.route.Routes.broadcast4).

    def add_flow(self, proto: int, lport: int, raddr: bytes | None, rport: int | None,
                 port: FlowPort, channel: int = 0, family: int = 4, share: Flow | None = None,
                 reuse: int | None = None, reuse_hash: bool = True) -> Flow:
        """Register a flow of `family` (4 or 6); reserves its local port (PortInUse if taken).

        `share`: an unconnected flow of another netif whose port this unconnected flow
        holds too (a wildcard listener's on the loopback netif; `PortSpace.reserve`).
        `reuse`: SO_REUSEPORT, the uid of the session asking: an unconnected flow joins the
        port's other such flows of that uid (usnet.domain.switch.reuseport); a `share`
        flow is a member on its netif if the flow it shares is one on its own. `reuse_hash`
        False: it shares by SO_REUSEADDR alone (`ReuseGroup.pick`).
        """
        if proto not in (TCP, UDP):
            raise ValueError(f"flows carry TCP or UDP, not protocol {proto}")
        if (raddr is None) != (rport is None):
            raise ValueError("a connected flow needs both remote address and port")
        if family not in (4, 6) or (raddr is not None and len(raddr) != (4 if family == 4 else 16)):
            raise ValueError(f"a remote address of {len(raddr or b'')} bytes is not IPv{family}")
        if family == 6 and self.netif.ip6 is None:
            raise OSError(errno.EADDRNOTAVAIL, f"netif {self.netif.name!r} has no IPv6 address")
        if raddr is not None:
            self._check_remote(raddr, rport, family)
        if share is not None and (raddr is not None or share.raddr is not None or share.proto != proto
                                  or share.family != family or share.lport != lport):
            raise OSError(errno.EINVAL, "only an unconnected flow of the same protocol, family and port "
                                        "may share an unconnected flow's port")
        if share is not None:
            reuse, reuse_hash = share.reuse, share.reuse_hash
        elif raddr is not None:
            reuse = None  # a connected flow is one 4-tuple: nothing to share
        fid = next(self._ids)
        # the owner names the netif too: flow ids are per netif, the port space is the domain's
        lport = self.ports.reserve(proto, lport, (self.netif.name, fid),
                                   self._host_addr6 if family == 6 else self._host_addr, family=family,
                                   share=None if share is None else share.owner,
                                   reuse=reuse if share is None else None)
        if self._steering is not None:
            try:
                self._steering.steer(proto, lport)
            except BaseException:
                self.ports.release(proto, lport, family=family)
                raise
        flow = Flow(fid, proto, lport, raddr, rport, port, channel, family=family, reuse=reuse, reuse_hash=reuse_hash)
        # whose reservation it holds: its own, the flow's it shares, or its SO_REUSEPORT group's first
        flow.owner = share.owner if share is not None else self.ports.owner(proto, lport, family)
        if self.rx_mitigation:
            port.enable_mitigation(self.clock, self._held_bells)
        self.flows[fid] = flow
        self.polled[flow] = None
        table, key = self._table(flow), flow.key()
        cur = table.get(key) if reuse is not None else None
        if cur is not None:  # the port space let it join: cur is a member, or the group's front
            self._join(table, key, cur, flow)
        else:
            table[key] = flow
        return flow

    def _join(self, table: dict[tuple, Flow], key: tuple, cur: Flow, flow: Flow) -> None:
        """SO_REUSEPORT: `flow` joins the port's group; the first join makes the group and puts
        its front where the lone flow `cur` was (usnet.domain.switch.reuseport)."""
        assert flow.reuse is not None and cur.reuse == flow.reuse
        g = cur.group
        if g is None:
            front = Flow(next(self._ids), cur.proto, cur.lport, None, None, cur.port, family=cur.family,
                         reuse=cur.reuse)
            g = front.group = cur.member_of = ReuseGroup(front, [cur], flow.reuse)
            table[key] = front
        g.members.append(flow)
        g.regroup()
        flow.member_of = g
        self.counts["reuseport_joins"] += 1

    def retire_member(self, flow: Flow) -> None:
        """SO_REUSEPORT: `flow`'s listening socket closed (P.Unlisten) while its connections
        go on: new connections and datagrams hash over the other members from now on, its
        pinned connections stay with it (usnet.domain.switch.reuseport). The last member
        left is not retired: a port needs somebody to answer it (its stack's RST, as
        Linux's to a SYN nobody listens for)."""
        g = flow.member_of
        if g is None or flow not in g.members or len(g.members) == 1:
            return
        g.members.remove(flow)
        g.regroup()
        g.retired.append(flow)
        g.front.port = g.members[0].port
        self.counts["reuseport_retired"] += 1

    def _leave(self, flow: Flow) -> None:
        """A member goes: its pinned connections with it (those it held, those queued on its
        listener: Linux drops those too); new ones hash over the members left. The group
        goes with its last flow, and its front out of the listener table."""
        g = flow.member_of
        assert g is not None
        g.unpin(self.exact, flow)
        flow.member_of = None
        if flow in g.members:
            g.members.remove(flow)
            if not g.members and g.retired:  # only closed listeners left: one of them answers
                g.members.append(g.retired.pop())
        else:
            g.retired.remove(flow)
        g.regroup()
        if g.members:
            g.front.port = g.members[0].port  # what the receive path reads of it: its packets' size
            return
        g.front.group = None
        table = self._table(flow)
        if table.get(flow.key()) is g.front:
            del table[flow.key()]

    def _check_remote(self, raddr: bytes, rport: int | None, family: int) -> None:
        """Refuse a remote end no connection may have: not a peer's address, port 0, no route."""
        why = self.not_a_peer(raddr)
        if why is not None:
            shown = ip6_str(raddr) if family == 6 else ip_str(raddr)
            raise OSError(errno.EADDRNOTAVAIL, f"a connected flow's remote address must be a unicast "
                                              f"address of a peer: {shown} is {why}")
        if rport == 0:
            raise OSError(errno.EINVAL, "a connected flow's remote port must not be 0")
        if not self.netif.routes.reaches(raddr):  # usnet.proto.route: the clients ask it too
            # as the kernel's connect: no route is known at once, not after the handshake times out
            shown = ip6_str(raddr) if family == 6 else ip_str(raddr)
            raise OSError(errno.ENETUNREACH, f"Network is unreachable: netif {self.netif.name!r} "
                                             f"has no route to {shown}")

    def host_of(self, family: int) -> str | None:
        """The host's address of `family` when the host owns it too (its stack then holds each port
        usnet reserves: usnet.domain.switch.ports), else None."""
        return self._host_addr6 if family == 6 else self._host_addr

    def add_connector(self, port: FlowPort, channel: int = 0, family: int = 4) -> Flow:
        """A TCP connector of `family`: a flow with no port of its own, given blocks of ephemeral
        ports (`add_ports`) from which a process's outgoing connections send, so they share one
        channel as a listener's accepted connections share its own."""
        if family not in (4, 6):
            raise ValueError(f"IPv{family}")
        if family == 6 and self.netif.ip6 is None:
            raise OSError(errno.EADDRNOTAVAIL, f"netif {self.netif.name!r} has no IPv6 address")
        flow = Flow(next(self._ids), TCP, 0, None, None, port, channel, family=family)
        flow.binds = PortBindings()
        if self.rx_mitigation:
            port.enable_mitigation(self.clock, self._held_bells)
        self.flows[flow.id] = flow
        self.polled[flow] = None
        return flow

    def add_ports(self, flow: Flow, count: int, listed: list[int] | None = None) -> list[int]:
        """A block of up to `count` ephemeral ports for connector `flow` (fewer if the range runs
        out; EADDRNOTAVAIL if none is left): each reserved in the domain's port space, free (not
        bound), and put in its family's listener table, so a stray segment to it from anyone finds
        the connector in the one lookup the receive paths make anyway (its TCP answers with RST).
        `listed`: exactly these ports instead (a worker's connector: usnetd chose and reserved them
        in its namespace, the host's binding included), all or none."""
        binds = flow.binds
        if binds is None or self.flows.get(flow.id) is not flow:
            raise OSError(errno.EINVAL, "not a connector of this netif")
        table = self.listeners6 if flow.family == 6 else self.listeners
        owner = (self.netif.name, flow.id, "block")
        if listed is None:
            got = self.ports.reserve_some(TCP, count, owner, self.host_of(flow.family), flow.family,
                                          self.connector_ports)
        else:
            got = []
            try:
                for p in listed:
                    got.append(self.ports.reserve(TCP, p, owner, family=flow.family))
            except BaseException:
                for p in got:
                    self.ports.release(TCP, p, family=flow.family)
                raise
        for p in got:
            table[(TCP, p)] = flow
        binds.hold(got)
        return got

    def bind_port(self, flow: Flow, lport: int, raddr: bytes, rport: int) -> None:
        """A connector's first SYN from free port `lport` left for (`raddr`, `rport`): the port is
        bound to that 4-tuple, which the exact table now finds (out of the listener table: a stray
        from another remote end meets no flow, as it would meet a connected flow)."""
        assert flow.binds is not None
        flow.binds.bind(lport, raddr, rport)
        table = self.listeners6 if flow.family == 6 else self.listeners
        if table.get((TCP, lport)) is flow:
            del table[(TCP, lport)]
        self.exact[(TCP, lport, raddr, rport)] = flow
        self.counts["connector_binds"] += 1

    def release_ports(self, flow: Flow, ports: list[int]) -> int:
        """The client's connections on `ports` are over (P.ReleasePorts): each bound port is free
        again, its 4-tuple out of the exact table and its TCP state forgotten (the client closed
        it: no reset is owed); a held port not bound is left as it is. Returns how many were
        bound. EINVAL, changing nothing, if a port is not one of the connector's blocks."""
        binds = flow.binds
        if binds is None:
            raise OSError(errno.EINVAL, "not a connector")
        stray = [p for p in ports if p not in binds.held]
        if stray:
            raise OSError(errno.EINVAL, f"port(s) {stray[:8]} are not of this connector's blocks")
        table = self.listeners6 if flow.family == 6 else self.listeners
        n = 0
        for p in ports:
            b = binds.unbind(p)
            if b is None:
                continue
            n += 1
            self._unbound(flow, p, *b)
            table[(TCP, p)] = flow
        return n

    def _unbound(self, flow: Flow, lport: int, raddr: bytes, rport: int) -> None:
        if self.exact.get((TCP, lport, raddr, rport)) is flow:
            del self.exact[(TCP, lport, raddr, rport)]
        if flow.tcp_seen is not None:
            flow.tcp_seen.ends.pop((raddr, rport, lport), None)

    def remove_ports(self, flow: Flow, ports: list[int]) -> None:
        """Take ports of connector `flow`'s blocks back: their bindings, their listener entries,
        their reservations in the port space; their TCP state goes too (no reset is owed)."""
        binds = flow.binds
        if binds is None:
            return
        table = self.listeners6 if flow.family == 6 else self.listeners
        mine = [p for p in ports if p in binds.held]
        for p, raddr, rport in binds.drop(mine):
            self._unbound(flow, p, raddr, rport)
        for p in mine:
            if table.get((TCP, p)) is flow:
                del table[(TCP, p)]
            self.ports.release(TCP, p, family=flow.family)

    def not_a_peer(self, addr: bytes) -> str | None:
        """Why no peer can have `addr` (4 or 16 bytes), or None for a unicast address not ours.

        A flow may be connected to, and a client's packet may go to, only such
        an address: not unspecified, loopback, multicast, broadcast (all-ones
        or the subnet's; its network address is a host's, as on Linux
        since 5.14), nor v4-mapped. The netif's own addresses are peers
        too: another application of the domain may hold them, and the switch
        delivers to it locally (usnet.domain.switch.local); on the loopback
        netif those are 127.0.0.1 and ::1.
        """
        if len(addr) == 4:
            a = int.from_bytes(addr, "big")
            if a == self._local4:
                return None
            if a == self._bcast4:
                return "the subnet's broadcast address"
            if not_unicast4(a):
                top = a >> 24
                return {0: "unspecified (0.0.0.0/8)", 127: "loopback (127.0.0.0/8)"}.get(
                    top, "multicast (224.0.0.0/4)" if top < 240 else "the limited broadcast (255.255.255.255)")
            return None
        if addr in self.netif.addrs6:
            return None
        if not_unicast6(addr):
            return ("unspecified (::)" if addr == UNSPECIFIED else "multicast (ff00::/8)" if addr[0] == 0xFF
                    else "loopback (::1)" if addr[:15] == bytes(15) else "v4-mapped (::ffff:0:0/96)")
        return None

    def _table(self, flow: Flow) -> dict[tuple, Flow]:
        """Where a flow is looked up: the 5-tuples, or its family's listeners."""
        if flow.raddr is not None:
            return self.exact
        return self.listeners6 if flow.family == 6 else self.listeners

    def remove_flow(self, flow: Flow, keep_queued: bool = False) -> None:
        """Unregister a flow and free its port; its queued frames still leave if `keep_queued`."""
        if flow.id not in self.flows:
            return
        if keep_queued:
            self.netif.retire(flow.id)  # its frames go, then the netif forgets the key
        else:
            self.netif.drop_queue(flow.id)  # first: its tracked frames are reported FLUSHED to it
        del self.flows[flow.id]
        self.polled.pop(flow, None)
        self._held_bells.pop(flow.port, None)
        if flow.binds is not None:  # a connector: the ports of its blocks
            tcp_seen, flow.tcp_seen = flow.tcp_seen, None  # kept: its resets are sent after this
            self.remove_ports(flow, list(flow.binds.held))
            flow.tcp_seen = tcp_seen
            return
        if flow.member_of is not None:
            self._leave(flow)
        else:
            self._table(flow).pop(flow.key(), None)
        self.ports.release(flow.proto, flow.lport, family=flow.family)
        if self._steering is not None and self.ports.owner(flow.proto, flow.lport, 4) is None \
                and self.ports.owner(flow.proto, flow.lport, 6) is None:
            self._steering.unsteer(flow.proto, flow.lport)  # the port is the host's again

    def lookup(self, proto: int, lport: int, raddr: bytes, rport: int) -> Flow | None:
        """The flow a packet from (`raddr`, `rport`) to local port `lport` belongs to: its connected
        flow, else its family's listener (the family is the address's length)."""
        listeners = self.listeners if len(raddr) == 4 else self.listeners6
        return self.exact.get((proto, lport, raddr, rport)) or listeners.get((proto, lport))

    def _quoted(self, f: Received, q: int, end: int, family: int) -> tuple[int, int, bytes, int] | None:
        """What names the flow that sent the packet an ICMP (`family` 4) or ICMPv6 (6) error quotes
        at `q`: (protocol, local port, remote address, remote port), as `lookup` takes them; None
        if the quote is not a UDP or TCP packet from our address of that family.

        Only that flow hears of it; an error quoting anything else (another
        source, a port nobody holds, a quote too short to name the ports) goes
        nowhere. An IPv6 quote is from the netif's global address (flows have it).
        The local port alone says which worker of usnetd owns the flow (usnet.domain.switch.host
        `_icmp_error`).
        """
        if family == 4:
            if end - q < IPV4_HLEN + 4:
                return None
            vihl = f[q]
            ihl = (vihl & 0xF) << 2
            if vihl >> 4 != 4 or ihl < IPV4_HLEN or end - q < ihl + 4 or f[q + 12 : q + 16] != self.netif.ip:
                return None
            proto, start, raddr = f[q + 9], q + ihl, bytes(f[q + 16 : q + 20])
        else:
            if end - q < IPV6_HLEN + 4 or f[q] >> 4 != 6 or f[q + 8 : q + 24] != self.netif.ip6:
                return None
            try:
                proto, start, frag = skip_ext_headers(f, q + IPV6_HLEN, end, f[q + 6])
            except WireError:
                return None
            if frag is not None or end - start < 4:
                return None
            raddr = bytes(f[q + 24 : q + 40])
        if proto not in (UDP, TCP):
            return None
        sport, dport = PORTS.unpack_from(f, start)
        return proto, sport, raddr, dport
