"""Drivers: the devices a netif moves frames through (docs/architecture.md, "Nexuses").

Every driver moves whole Ethernet frames in batches and exposes a pollable
`fileno()`; `timeout()` says when it needs service even if its fd stays quiet
(a memwire frame still in flight). See `base.Driver`.
"""

from usnet.drivers.base import Driver, random_mac
from usnet.drivers.fault import FaultInjector
from usnet.drivers.memwire import MemWire
from usnet.drivers.packet import PacketDriver
from usnet.drivers.pcap import PcapTracer

__all__ = ["Driver", "FaultInjector", "MemWire", "PacketDriver", "PcapTracer", "random_mac"]
