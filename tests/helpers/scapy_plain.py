"""scapy as the independent decoder of our segments, with their payloads left as bytes.

scapy binds application layers to well-known ports (TCP: DCE/RPC to 135, DNS to 53, HTTP to 80,
TLS to 443, SMB to 139 and 445, and more). A payload dissected as one of them and written back is
that layer's re-serialisation, which need not be the bytes it came from: DCE/RPC writes a 16-byte
payload back as a 24-byte header. A checksum scapy recomputes over it (delete the field, rebuild)
then covers other bytes. To usnet's wire code a payload is opaque, so scapy is told not to guess:
what it decodes and recomputes is the transport header over the very bytes we wrote.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def payload_as_bytes() -> Iterator[None]:
    """Within: scapy dissects what follows a TCP or UDP header as Raw, whatever the ports.

    Dissection asks `payload_guess` of the layer's class; this empties TCP's and UDP's for the
    block and puts them back after (scapy's own split_layers would lose the bindings for good)."""
    from scapy.layers.inet import TCP, UDP

    saved = [(cls, cls.payload_guess) for cls in (TCP, UDP)]
    try:
        for cls, _ in saved:
            cls.payload_guess = []
        yield
    finally:
        for cls, guess in saved:
            cls.payload_guess = guess
