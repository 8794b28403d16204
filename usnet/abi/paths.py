"""Where the two domains find each other: the control socket's default path."""

from __future__ import annotations

import os

__all__ = ["DEFAULT_SOCKET"]

DEFAULT_SOCKET = os.environ.get("USNET_SOCKET", "/run/usnet/usnetd.sock")
