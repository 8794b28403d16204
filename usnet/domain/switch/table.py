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
from usnet.domain.switch.echo import EchoDesk
from usnet.domain.switch.port import CLIENT, FlowPort, TxMark
from usnet.domain.switch.ports import PortSpace, host_owns
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
    # A connector (TCP, no port of its own): the connections registered on it, local port ->
    # (remote address, remote port); each port its own reservation, each 4-tuple in the exact table
    conns: dict[int, tuple[bytes, int]] | None = None

    def __post_init__(self) -> None:
        if self.raddr is not None:
            self.raddr_int = int.from_bytes(self.raddr, "big")
        self._tx_sig: tuple[np.ndarray, np.ndarray] | None = None
        self._tx_sig_row: np.ndarray | None = None
        self._conn_keys: np.ndarray | None = None  # a connector's 4-tuples as sorted u64 keys (`conn_keys`)

    def peer_of(self, sport: int) -> tuple[bytes | None, int | None] | None:
        """Where a packet from local port `sport` may go: (remote address, port) of a connected
        flow or of a connector's connection on that port, (None, None) for an unconnected flow
        (any peer); None if the flow may not send from that port at all.

        The one rule of which 4-tuples a flow owns: the per-packet checks (usnet.domain.switch.tx
        `_tx_addressed`) ask it, and the column-wise pass (`conn_keys`) only accelerates it.
        """
        if self.conns is not None:
            return self.conns.get(sport)
        return (self.raddr, self.rport) if sport == self.lport else None

    def conn_keys(self) -> np.ndarray:
        """A connector's 4-tuples as sorted u64 (remote IPv4 address << 32 | local port << 16 |
        remote port): a batch's rows are looked up in it with one searchsorted."""
        if self._conn_keys is None:
            conns = self.conns or {}
            self._conn_keys = np.sort(np.array(
                [int.from_bytes(ra, "big") << 32 | lp << 16 | rp for lp, (ra, rp) in conns.items() if len(ra) == 4],
                np.uint64))
        return self._conn_keys
    def tx_signature(self, local_ip: bytes) -> tuple[np.ndarray, np.ndarray]:
        """(columns, values) every packet of this flow has in its first 24 bytes.

        Version/IHL 0x45, the flow's protocol, the local address and port, and
        for a connected flow the remote address and port: what the switch
        checks column-wise in one comparison.
        """
        if self._tx_sig is None:
            sig = {0: 0x45, 9: self.proto}
            if self.conns is None:  # a connector's ports are its connections' (`conn_keys`)
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
        if self.conns is not None:
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
                "connector": self.conns is not None, "connections": len(self.conns or ()),
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
        # Its network address, which Linux routes as a broadcast too (fib_add_ifaddr adds both for a
        # prefix of 30 or less): no peer has it. A /31 or /32: our own address again, as above.
        self._net4 = (int(netif.network.network_address) if netif.network.prefixlen < 31
                      else self._local4)

    def add_flow(self, proto: int, lport: int, raddr: bytes | None, rport: int | None,
                 port: FlowPort, channel: int = 0, family: int = 4, share: Flow | None = None) -> Flow:
        """Register a flow of `family` (4 or 6); reserves its local port (PortInUse if taken).

        `share`: an unconnected flow of another netif whose port this unconnected flow
        holds too (a wildcard listener's on the loopback netif; `PortSpace.reserve`).
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
        fid = next(self._ids)
        # the owner names the netif too: flow ids are per netif, the port space is the domain's
        lport = self.ports.reserve(proto, lport, (self.netif.name, fid),
                                   self._host_addr6 if family == 6 else self._host_addr, family=family,
                                   share=None if share is None else share.owner)
        if self._steering is not None:
            try:
                self._steering.steer(proto, lport)
            except BaseException:
                self.ports.release(proto, lport, family=family)
                raise
        flow = Flow(fid, proto, lport, raddr, rport, port, channel, family=family)
        flow.owner = (self.netif.name, fid) if share is None else share.owner
        if self.rx_mitigation:
            port.enable_mitigation(self.clock, self._held_bells)
        self.flows[fid] = flow
        self.polled[flow] = None
        self._table(flow)[flow.key()] = flow
        return flow

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

    def add_connector(self, port: FlowPort, channel: int = 0, family: int = 4) -> Flow:
        """A TCP connector of `family`: a flow with no port of its own, on which a process's
        outgoing connections are registered one by one (`add_conn`), so they share one channel
        as a listener's accepted connections share its own."""
        if family not in (4, 6):
            raise ValueError(f"IPv{family}")
        if family == 6 and self.netif.ip6 is None:
            raise OSError(errno.EADDRNOTAVAIL, f"netif {self.netif.name!r} has no IPv6 address")
        flow = Flow(next(self._ids), TCP, 0, None, None, port, channel, family=family)
        flow.conns = {}
        if self.rx_mitigation:
            port.enable_mitigation(self.clock, self._held_bells)
        self.flows[flow.id] = flow
        self.polled[flow] = None
        return flow

    def add_conn(self, flow: Flow, lport: int, raddr: bytes, rport: int) -> int:
        """Register the connection (`lport`, 0: an ephemeral port; `raddr`, `rport`) on connector
        `flow`: its port is reserved in the domain's port space and its 4-tuple found by hash in
        the exact table, as a connected flow's. Returns the local port."""
        if flow.conns is None or self.flows.get(flow.id) is not flow:
            raise OSError(errno.EINVAL, "not a connector of this netif")
        if len(raddr) != (4 if flow.family == 4 else 16):
            raise ValueError(f"a remote address of {len(raddr)} bytes is not IPv{flow.family}")
        if not 0 < rport <= 65535:
            raise OSError(errno.EINVAL, "a connection's remote port must be 1-65535")
        self._check_remote(raddr, rport, flow.family)
        lport = self.ports.reserve(TCP, lport, (self.netif.name, flow.id, "conn"),
                                   self._host_addr6 if flow.family == 6 else self._host_addr, family=flow.family)
        flow.conns[lport] = (raddr, rport)
        flow._conn_keys = None
        self.exact[(TCP, lport, raddr, rport)] = flow
        return lport

    def remove_conn(self, flow: Flow, lport: int) -> None:
        """Unregister the connector's connection on `lport` and free its port; its TCP state
        goes too (the client closed it: no reset is owed). KeyError if it has none there."""
        if flow.conns is None or lport not in flow.conns:
            raise KeyError(f"no connection on local port {lport}")
        raddr, rport = flow.conns.pop(lport)
        flow._conn_keys = None
        if self.exact.get((TCP, lport, raddr, rport)) is flow:
            del self.exact[(TCP, lport, raddr, rport)]
        if flow.tcp_seen is not None:
            flow.tcp_seen.ends.pop((raddr, rport, lport), None)
        self.ports.release(TCP, lport, family=flow.family)

    def not_a_peer(self, addr: bytes) -> str | None:
        """Why no peer can have `addr` (4 or 16 bytes), or None for a unicast address not ours.

        A flow may be connected to, and a client's packet may go to, only such
        an address: not unspecified, loopback, multicast, broadcast (all-ones
        or the subnet's), nor v4-mapped. The netif's own addresses are peers
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
            if a == self._net4:
                return "the subnet's network address (a broadcast, as Linux routes it)"
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
        if flow.conns is not None:  # a connector: each connection's 4-tuple and port
            for lport, (raddr, rport) in flow.conns.items():
                if self.exact.get((TCP, lport, raddr, rport)) is flow:
                    del self.exact[(TCP, lport, raddr, rport)]
                self.ports.release(TCP, lport, family=flow.family)
            flow.conns.clear()
            flow._conn_keys = None
            return
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

    def _quoted_flow(self, f: Received, q: int, end: int, family: int) -> Flow | None:
        """The flow that sent the packet an ICMP (`family` 4) or ICMPv6 (6) error quotes at `q`:
        from our address of that family, its protocol and ports.

        Only that flow hears of it; an error quoting anything else (another
        source, a port nobody holds, a quote too short to name the ports) goes
        nowhere. An IPv6 quote is from the netif's global address (flows have it).
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
        return self.lookup(proto, sport, raddr, dport)
