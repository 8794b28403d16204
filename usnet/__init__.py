"""usnet: a user-space networking stack for Linux (docs/architecture.md).

What users reach from here: `Client`, the channel types and events, `sched`,
and the faces `usnet.socket`, `usnet.aio` and `usnet.tls`; `usnet.patch()` puts an unmodified
program's sockets, names, TLS and asyncio on usnet (usnet.client.patch). `Domain` (the
trusted side, every driver and the agent) is imported only when it is first
named, so `from usnet import socket` loads the client side alone.
"""

from typing import TYPE_CHECKING, Any

# First of all (isort keeps a plain import ahead of the `from` ones): numpy imported with the
# signals blocked, so that the threads it starts block them too (usnet.runtime.nativethreads)
import usnet.runtime.nativethreads  # noqa: F401
from usnet.abi.events import Event, EventType, TxStatus
from usnet.client.channel import Channel, ChannelDefunct, ChannelError, NoBuffers, PeerGone
from usnet.client.session import Client
from usnet.runtime import sched

if TYPE_CHECKING:
    from usnet.domain.loop import Domain

__all__ = ["Channel", "ChannelDefunct", "ChannelError", "Client", "Domain", "Event", "EventType", "NoBuffers",
           "PeerGone", "TxStatus", "patch", "sched"]
__version__ = "0.1.0"


def patch(client: Client | None = None, netif: str | None = None) -> None:
    """Run this program on usnet from here on: see usnet.client.patch (loaded only when called)."""
    from usnet.client.patch import patch as _patch

    _patch(client, netif)


def __getattr__(name: str) -> Any:
    if name == "Domain":
        from usnet.domain.loop import Domain
        return Domain
    raise AttributeError(f"module 'usnet' has no attribute {name!r}")
