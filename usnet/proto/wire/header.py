"""Network-order headers declared once, as ordered tables of (name, struct code).

A header's `struct` (for the per-packet paths), its field offsets (for code
that reads a batch of headers column-wise out of a numpy array of rows), and
its numpy record dtype (for code that writes a batch a field at a time) all
come from the one table, so the three can never disagree.
"""

from __future__ import annotations

import struct

import numpy as np

__all__ = ["Header"]

# struct code -> numpy type (network order)
_NP = {"B": "u1", "H": ">u2", "I": ">u4"}


class Header:
    """A big-endian header: its fields in wire order, each a name and a `struct` code (B, H, I, 4s)."""

    def __init__(self, *fields: tuple[str, str]) -> None:
        self.fields = fields
        self.struct = struct.Struct("!" + "".join(code for _, code in fields))
        self.size = self.struct.size
        self.off: dict[str, int] = {}
        at = 0
        for name, code in fields:
            if name in self.off:
                raise ValueError(f"header field {name} appears twice")
            self.off[name] = at
            at += struct.calcsize("!" + code)

    def then(self, other: Header, prefix: str) -> Header:
        """This header followed by `other`, whose field names get `prefix` (IPv4 then UDP: `udp_`)."""
        return Header(*self.fields, *((prefix + n, c) for n, c in other.fields))

    def dtype(self) -> np.dtype:
        """The header as a numpy record (network order): `rows.view(dtype)` names each column."""
        return np.dtype([(n, _NP.get(c, "S" + c[:-1])) for n, c in self.fields])
