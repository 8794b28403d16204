"""usnet: a user-space networking stack for Linux (see DESIGN.md and docs/)."""

from usnet import sched
from usnet.channel.channel import Channel, ChannelDefunct, ChannelError, NoBuffers, PeerGone
from usnet.channel.events import Event, EventType, TxStatus
from usnet.client import Client
from usnet.nexus.domain import Domain

__all__ = ["Channel", "ChannelDefunct", "ChannelError", "Client", "Domain", "Event", "EventType", "NoBuffers",
           "PeerGone", "TxStatus", "sched"]
__version__ = "0.1.0"
