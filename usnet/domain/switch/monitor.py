"""The nexus end of a monitor channel (`usnet capture`): a copy of every frame of a netif
that matches the channel's filter.

The filter (usnet.proto.pcapfilter) is evaluated here, on the frame the netif
holds, before anything is copied: a frame that does not match costs one parse of
its headers. Frames that match but cannot be kept (the RX ring or the pool is
full) are counted in the channel's STATS (`rx_offered`, `rx_dropped`), which the
capturing client reads and reports; none is dropped without a count.

Its packets are large enough for a whole 64 KB TCP super-segment as the device
carries it (MONITOR_SCHEMA), so a capture shows what tcpdump on the device shows.
"""

from __future__ import annotations

from usnet.abi import schema as schemamod
from usnet.abi.schema import STATS_PER_ROLE, Stat
from usnet.domain.switch.port import CLIENT, FlowPort
from usnet.domain.userpipe import UserPipe
from usnet.proto.pcapfilter import Filter, compile_filter, frame_fields, parse

__all__ = ["MONITOR_SCHEMA", "MonitorPort"]

# 4 x 16,640 = 66,560 bytes a packet: an Ethernet frame around a 65,535-byte IP packet, with
# room to spare (the "default" preset's 2 KB packets lost every super-segment). The pool starts
# small and grows as a capture falls behind; its pages are touched only as they are used.
MONITOR_SCHEMA = schemamod.resolve("default", {"ring_size": 4096, "buf_size": 16640, "buflets": 4,
                                               "packets": 512, "max_packets": 4096, "quota": 4096})


class MonitorPort(FlowPort):
    """A FlowPort that the netif offers every frame it sends and receives (Netif.monitors)."""

    def __init__(self, pipe: UserPipe, text: str = "") -> None:
        super().__init__(pipe)
        self.filter_text = text
        node = parse(text)
        self._match: Filter | None = None if node is None else compile_filter(node)
        self.offered = 0  # frames that matched
        self.kept = 0

    def deliver(self, payloads: list) -> int:
        """Offer frames: those the filter takes are copied into the channel; counted either way."""
        match = self._match
        if match is not None:
            payloads = [p for p in payloads if match(frame_fields(p))]
        if not payloads:
            return 0
        got = super().deliver(payloads)
        self.offered += len(payloads)
        self.kept += got
        stats = self.pipe.stats
        if self.pipe.defunct_reason is None and not self.pipe.destroyed:
            base = CLIENT * STATS_PER_ROLE
            stats[base + Stat.RX_OFFERED] = self.offered
            stats[base + Stat.RX_DROPPED] = self.offered - self.kept
        return got
