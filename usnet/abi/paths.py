"""Where the two domains find each other: the control socket's default path, and the loopback netif's name."""

from __future__ import annotations

import os

__all__ = ["DEFAULT_SOCKET", "LOOPBACK_NETIF"]

DEFAULT_SOCKET = os.environ.get("USNET_SOCKET", "/run/usnet/usnetd.sock")
# The domain's loopback netif (127.0.0.1/8, ::1: Domain.add_loopback); usnet.socket routes
# loopback destinations to it, as the kernel routes them to its lo.
LOOPBACK_NETIF = "lo"
