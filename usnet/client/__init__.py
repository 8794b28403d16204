"""The untrusted application side (docs/architecture.md): the control session
(`Client`), channels, datagram and TCP sockets, the asyncio and TLS faces,
and leases. It never imports the domain or a driver."""

from usnet.client.lease import Lease, LeaseRefusedError
from usnet.client.session import Client

__all__ = ["Client", "Lease", "LeaseRefusedError"]
