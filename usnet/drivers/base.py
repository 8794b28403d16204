"""The driver interface every device and wrapper implements."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from usnet.domain.switch.port import TxMark
    from usnet.drivers.block import FrameBlock

__all__ = [
    "Coalesced", "Driver", "DriverStats", "FlowSteering", "Frame", "GatherFrame", "Received", "SegmentedFrame",
    "TrackedFrame", "random_mac",
]

Frame = bytes | bytearray | memoryview
Received = bytes | bytearray  # what a device hands up: bytes, or a Coalesced (a bytearray) made of several


class SegmentedFrame(bytes):
    """A frame holding one TCP super-segment, for a device that segments (TSO).

    The flow switch makes one only after validating the packet and only for
    a netif whose driver's `caps.gso_max` is non-zero; `gso_size` is the payload of each
    segment the device cuts it into. To everything else it is plain bytes.
    """

    gso_size: int

    def __new__(cls, data: Frame, gso_size: int) -> SegmentedFrame:
        self = super().__new__(cls, data)
        self.gso_size = gso_size
        return self

    def rewrap(self, data: Frame) -> SegmentedFrame:
        """The same frame attributes on new bytes (the packet, framed)."""
        f = type(self)(data, self.gso_size)
        f.__dict__.update(self.__dict__)
        return f


class TrackedFrame(SegmentedFrame):
    """A frame whose fate its sender asked to hear of, or that has a deadline.

    To the device it is plain bytes (or a super-segment, if `gso_size`).
    The netif checks its deadline when it takes it off the queue (past it,
    the frame is dropped: EXPIRED) and tells `Netif.on_status` what became
    of it: sent, expired, or flushed with its queue. Only packets that ask
    for it become one, so the bulk of traffic, in FrameBlocks, pays nothing.
    """

    key: int  # its queue (flow id)
    mark: TxMark  # what its packet asked for (the flow switch's)
    taken_ns: int  # when the nexus took it off the client's TX ring

    @property
    def deadline_ns(self) -> int:
        """CLOCK_MONOTONIC ns past which it must not be sent; 0: none."""
        return self.mark.deadline_ns


class Coalesced(bytearray):
    """A received frame the kernel made of several (GRO, or a TAP's GSO super-segment).

    Larger than the MTU by right: the device says so (virtio_net_hdr
    gso_type, TP_STATUS_GSO_TCP), and only a driver that was told so makes
    one. The flow switch drops any other frame longer than the MTU allows
    (`rx_oversize`), so a host on the link cannot hand us jumbo frames the
    netif never agreed to. To everything else it is a bytearray.
    """

    __slots__ = ()


class GatherFrame:
    """A frame in two pieces, for the low-latency path's zero-copy transmit.

    `head` is private memory: the Ethernet header and the copy of the IP and
    transport headers that the flow switch checked. `body` is the payload,
    a view of the sender's packet buffer, never copied into the nexus. A
    device whose `caps.takes_gather` writes both pieces straight out (writev,
    a TX ring); to anything else the netif hands `bytes(frame)`. A
    GatherFrame lives for one `send_batch` call only: the packet buffer
    goes back to its pool after it, so nothing may keep one.
    """

    __slots__ = ("head", "body")

    def __init__(self, head: bytes, body: memoryview) -> None:
        self.head = head
        self.body = body

    def __len__(self) -> int:
        return len(self.head) + len(self.body)

    def __bytes__(self) -> bytes:
        return self.head + bytes(self.body)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a device takes beyond plain frames: the netif reads these fields and nothing else.

    A driver declares its record as `caps`; a wrapper (a fault injector, a
    pcap tracer) passes on its device's, less what it cannot carry.
    """

    #: The largest IP packet the device segments itself (TSO: a TAP with
    #: IFF_VNET_HDR): it takes SegmentedFrames up to that size and may return
    #: received frames that large (as `Coalesced`). 0: no segmentation offload,
    #: and it is never handed a SegmentedFrame.
    gso_max: int = 0
    #: It takes GatherFrames, written out piece by piece, the payload straight
    #: from the sender's buffer (writev, a TX ring slot); else the netif joins them.
    takes_gather: bool = False
    #: It takes FrameBlocks (usnet.drivers.block) among the frames, counts each
    #: of their frames in what `send_batch` returns (it may take the head of a
    #: block and leave the tail), and its `recv_batch` may return the blocks its
    #: peer sent.
    takes_blocks: bool = False
    #: It shares its interface with the host's own stack and takes from the wire only the
    #: frames of ports it was told of (`FlowSteering`: an XDP program's flow map); the
    #: flow table steers each port it reserves there and unsteers it when it frees it.
    steers_flows: bool = False
    #: Its peer is this host's stack, which takes each written frame inside the write and
    #: queues what it answers at once (a SYN's SYN-ACK, a FIN's ACK) on the device before
    #: `send_batch` returns: a TAP. The domain reads such a device again in the turn that
    #: flushed a woken flow's packets, instead of a turn later (issue 18).
    answers_in_send: bool = False
    #: Its `timeout()` is always None: nothing of it ever falls due without its fd ringing (a
    #: TAP, the loopback device). The domain's per-turn tests (`FlowSwitch.quiet`, the round,
    #: `next_timeout`) then do not ask it: two calls a switch a turn (issue 18). A wrapper whose
    #: own `timeout()` may say otherwise (the fault injector's injected frames) clears it.
    never_due: bool = False


@runtime_checkable
class FlowSteering(Protocol):
    """A device with `caps.steers_flows`: which (IP protocol, local port) frames come to usnet."""

    def steer(self, proto: int, port: int) -> None: ...
    def unsteer(self, proto: int, port: int) -> bool: ...


@runtime_checkable
class GroupFilter(Protocol):
    """A device whose interface passes a multicast MAC only when asked (a NIC's filter, when it
    is not promiscuous): the switch asks for an IPv4 group's MAC at the group's first member on
    the netif and lets it go at its last (usnet.domain.switch.multicast), as the kernel's own
    ip_mc_filter_add. Asked once per group; groups that share a MAC ask as many times."""

    def add_group_mac(self, mac: bytes) -> None: ...
    def drop_group_mac(self, mac: bytes) -> None: ...


#: A device that takes plain frames only.
PLAIN = Capabilities()


@runtime_checkable
class Driver(Protocol):
    """A device that moves Ethernet frames in batches.

    `recv_batch` returns frames the caller owns (bytes); `send_batch` takes
    frames and returns how many the device accepted (the rest stay the
    caller's, as with a full socket buffer). What it takes beyond plain
    frames is its `caps`. A received frame longer than the MTU is taken
    only as a `Coalesced` (the device says it was aggregated); any other is
    dropped above as oversize.
    """

    name: str
    mtu: int
    mac: bytes
    caps: Capabilities
    stats: DriverStats

    def fileno(self) -> int: ...
    def recv_batch(self, max_n: int = 64) -> Sequence[Received | FrameBlock]: ...
    def send_batch(self, frames: Sequence[Frame]) -> int: ...
    def timeout(self) -> float | None: ...
    def close(self) -> None: ...


def random_mac() -> bytes:
    """A random locally administered unicast MAC."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return bytes(b)


class DriverStats:
    """Counters kept by every driver (read by `usnet stats`)."""

    # *_gso_frames: TCP super-segments (segmentation offload) among the frames;
    # rx_csum_completed: partial checksums the driver finished (checksum offload).
    __slots__ = ("rx_frames", "rx_bytes", "tx_frames", "tx_bytes", "rx_errors", "tx_errors", "tx_dropped",
                 "tx_gso_frames", "rx_gso_frames", "rx_csum_completed")
    rx_frames: int
    rx_bytes: int
    tx_frames: int
    tx_bytes: int
    rx_errors: int
    tx_errors: int
    tx_dropped: int
    tx_gso_frames: int
    rx_gso_frames: int
    rx_csum_completed: int

    def __init__(self) -> None:
        for k in self.__slots__:
            setattr(self, k, 0)

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}
