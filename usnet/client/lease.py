"""A low-latency lease as the client holds it (`Client.request_lease`).

The domain's agent grants the lease; this object renews and releases it.
Whether it is still in force is on the channel's EVENT ring, not here: the
domain revokes a lease when it expires or the policy changes and posts
LEASE_REVOKED (usnet.abi.events.RevokeReason says why). A client that
wants to keep a lease renews it well before `expires`.

A refusal raises `LeaseRefusedError`: the exception the client sees, named
apart from `usnet.abi.protocol.LeaseRefused`, the message that carries it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from usnet.abi import protocol as P
from usnet.abi.protocol import LeaseRefusal

if TYPE_CHECKING:
    from usnet.client import Client

__all__ = ["Lease", "LeaseRefusedError"]


class LeaseRefusedError(Exception):
    """The agent refused a lease request, renewal or release; `reason` says why (a LeaseRefusal)."""

    def __init__(self, reason: LeaseRefusal | str, message: str) -> None:
        self.reason: LeaseRefusal | str = reason
        try:
            self.reason = LeaseRefusal(reason)
        except ValueError:
            pass  # a reason this client does not know yet: keep the name
        super().__init__(f"{self.reason}: {message}")
        self.message = message

    def __reduce__(self) -> tuple[type[LeaseRefusedError], tuple[str, str]]:
        return (type(self), (str(self.reason), self.message))


class Lease:
    """LL access for one flow channel: what was granted, until when, and how to renew or release it."""

    def __init__(self, client: Client, granted: P.LeaseGranted) -> None:
        self._client = client
        self.id = granted.lease
        self.channel = granted.channel
        self.released = False
        self._update(granted)

    def _update(self, g: P.LeaseGranted) -> None:
        self.service_class = g.service_class
        self.rate = g.rate  # bit/s at the link, Ethernet headers included
        self.max_packet = g.max_packet
        self.latency_target = g.latency_target
        self.expires = g.expires  # time.monotonic() seconds
        self.ttl = g.ttl
        self.burst = g.burst  # bytes the policer lets through at once

    def renew(self) -> None:
        """Extend the lease by its TTL from now; LeaseRefusedError(UNKNOWN_LEASE) if it has ended."""
        self._update(self._client._lease_call(P.RenewLease(self.id), P.LeaseGranted))

    def release(self) -> None:
        """Give the lease back: the flow returns to the general class, queued packets and all."""
        self._client._lease_call(P.ReleaseLease(self.id), P.Done)
        self.released = True

    def __repr__(self) -> str:
        return (f"Lease({self.id}, channel {self.channel}, {self.service_class}, {self.rate:g} bit/s, "
                f"{self.max_packet} B, {self.latency_target * 1e3:g} ms)")
