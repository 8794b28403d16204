"""Local traffic: what a flow sends to one of the netif's own addresses goes to the flow that owns it.

Two applications of one domain talk through their netif's own address as two
processes on one kernel host do, and on the loopback netif ("lo",
`Domain.add_loopback`) every address is the domain's own. Such a packet
never goes to the device: the wire would not bring it back (a TAP's kernel
end drops a frame to our own MAC), and asking the link for our own address
would be answered by nobody. So the switch hairpins it: once the transmit
path has checked it like any other packet (a client's copy, its source, its
ports, usnet.domain.switch.tx), it is queued here and handed, at the next
flush, to the receive path's classification (`_rx_ip`, `_rx_ip6` with
`wire=False`: our own source is no martian here). There it finds its flow,
or the host's answer to a port nobody holds (a RST, a port unreachable),
which is hairpinned back the same way: a connect to a closed local port is
refused at once, never left to time out.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from usnet.abi.events import TxStatus
from usnet.domain.switch.host import ETH
from usnet.domain.switch.llpath import LowLatencyPath
from usnet.domain.switch.rx import ReceivePath
from usnet.domain.switch.table import Flow
from usnet.drivers.base import TrackedFrame
from usnet.proto.wire.errors import WireError
from usnet.proto.wire.ethernet import ETH_HLEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6
from usnet.proto.wire.rows import be_u32

__all__ = ["LOCAL_ROUNDS", "LocalPath"]

# Rounds of local delivery per flush: a packet, the host's answer to it (a RST), and room to
# spare; what is left waits for the next flush, which the switch's next_timeout makes immediate.
LOCAL_ROUNDS = 4


class LocalPath(ReceivePath, LowLatencyPath):
    """The flow switch's transmit and receive paths, joined for packets to the netif's own addresses."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.local_queue: list[bytes] = []  # checked IP packets to our own addresses, in order
        mac = self.netif.mac
        self._local_eth4 = ETH.pack(mac, mac, ETHERTYPE_IPV4)
        self._local_eth6 = ETH.pack(mac, mac, ETHERTYPE_IPV6)

    def is_local(self, dst: bytes) -> bool:
        """Whether `dst` (4 or 16 bytes) is one of this netif's own addresses."""
        return dst == self.netif.ip if len(dst) == 4 else dst in self.netif.addrs6

    def _route(self, key: int, dst: bytes, packet: bytes, now: float) -> bool:
        if self.is_local(dst):
            self._hairpin(packet)
            return True
        # a group with members here (IP_MULTICAST_LOOP), or on a worker's switch one the host is in
        # (`groups.host`, as usnetd tells: the receive path hands it to the port's worker)
        if (self.groups.refs or self.read_host_groups is not None) and self._loops_to(dst, packet):
            flow = self.flows.get(key)
            if flow is not None and flow.mc_loop:
                self.local_queue.append(bytes(packet))  # a copy; the packet itself goes to the link too
        return super()._route(key, dst, packet, now)

    def _loops_to(self, dst: bytes, packet: bytes) -> bool:
        """Whether a flow's datagram `packet` to `dst` is copied back (IP_MULTICAST_LOOP): a group
        with members here or, on a worker's switch, one the host is in (`groups.host`, read up to
        date with `read_host_groups`), whose filter lets our own source in, as Linux's
        ip_mc_output loops only what its route marks local (ip_check_mc_rcv of the source)."""
        groups = self.groups
        if dst not in groups.refs:
            if self.read_host_groups is None or not (dst[0] >> 4 == 14 if len(dst) == 4 else dst[0] == 0xFF):
                return False
            self.host_up_to_date()
            if dst not in groups.host:
                return False
        return groups.netif_admits(dst, bytes(packet[12:16] if len(dst) == 4 else packet[8:24]))

    def take_looped(self, frame: bytes | memoryview) -> None:
        """A packet of another worker's local queue whose port is ours, handed here (`_handed_over`,
        looped): a group datagram its flow sent with IP_MULTICAST_LOOP, a flow's datagram or
        segment to the netif's own address, or the host's answer to one, as the Ethernet frame
        its local path made: delivered as our own flows' packets to ourselves are, from the local
        queue (the receive path, `wire` False: its source is the netif's own), at once."""
        self.local_queue.append(bytes(frame[ETH_HLEN:]))
        self.service_local()

    def _tx_rows(self, flow: Flow, rows: np.ndarray, lens: np.ndarray, now: float,
                 cut: np.ndarray | None = None) -> int:
        """Checked IPv4 rows: those to our own address go local (a super-segment whole, as
        `_route` hairpins one), the rest to the link as before."""
        mine = be_u32(rows[:, ETH_HLEN + 16 : ETH_HLEN + 20]) == self._local4
        if not mine.any():
            return super()._tx_rows(flow, rows, lens, now, cut)
        for i in np.flatnonzero(mine).tolist():
            self._hairpin(rows[i, ETH_HLEN : ETH_HLEN + int(lens[i])].tobytes())
        if mine.all():
            return 0
        return super()._tx_rows(flow, rows[~mine], lens[~mine], now, None if cut is None else cut[~mine])

    def _hairpin(self, packet: bytes) -> None:
        """Queue a checked packet for local delivery; a tracked one is told SENT, as the device would."""
        if type(packet) is TrackedFrame:
            self._frame_status(packet, TxStatus.SENT)
        self.local_queue.append(bytes(packet))

    def service_local(self) -> int:
        """Deliver what was sent to our own addresses, with the answers it earns; returns how many."""
        done = 0
        now = self.clock()
        per_flow: dict = {}
        for _ in range(LOCAL_ROUNDS):
            batch = self.local_queue
            if not batch:
                break
            self.local_queue = []
            for p in batch:
                try:
                    if p[0] >> 4 == 6:
                        self._rx_ip6(self._local_eth6 + p, self.netif.mac, now, per_flow, wire=False)
                    else:
                        self._rx_ip(self._local_eth4 + p, now, per_flow, wire=False)
                except (WireError, struct.error, ValueError, IndexError):
                    self.drops["local_malformed"] += 1
            done += len(batch)
            self._deliver(per_flow)
        self.counts["local_delivered"] += done
        return done

    def flush(self) -> int:
        if self.local_queue:
            self.service_local()
        return super().flush()
