"""Byte layouts declared once, as ordered tables of named fields (docs/abi.md).

Every shared-memory layout of the ABI (the SCHEMA region, a ring's header,
an EVENT record, a UMD record, STATS, FLOWADV, the interface advisory) is a
`Fields` table: its fields in memory order, each a name and a type, with the
reserved bytes spelled out. Everything else is derived from the table:
offsets, sizes, `struct` formats, and the word indices the hot paths use on
`memoryview.cast` or numpy views of the memory. The derived indices are plain
ints computed once at import, so a ring counter costs what it did when it was
a hand-counted constant. docs/abi.md's layout tables are checked against
these tables by tests/test_abi_doc.py, so the page cannot drift from them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

__all__ = ["RESERVED", "Field", "Fields"]

#: The name of a reserved span: zero, ignored by readers, packed as `x` pad bytes.
RESERVED = "reserved"

_CODES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q"}
_SIZES = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}

# One row of a table: (name, "u32"), (name, "u32", count), (RESERVED, nbytes), or
# (name, Fields, count) for an array of records.
Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a table, where it sits and what it is."""

    name: str
    type: str  # "u8".."u64", "reserved", or the name of a nested table
    offset: int
    size: int  # bytes of the whole field (all `count` elements)
    count: int = 1  # elements of an array field
    record: Fields | None = None  # the element table of an array of records

    @property
    def elem_size(self) -> int:
        return self.size // self.count


class Fields:
    """An ordered table of named fields: the one declaration of a byte layout.

    Little-endian, no implicit padding: every byte is a named field or a
    reserved span, so the offsets are exactly the running sum of the sizes,
    and each scalar field must sit at a multiple of its own size (the ABI
    reads them as aligned words).
    """

    def __init__(self, name: str, *rows: Row) -> None:
        self.name = name
        self.size: int
        out: list[Field] = []
        at = 0
        for row in rows:
            fname, kind = row[0], row[1]
            if fname == RESERVED:
                if not isinstance(kind, int) or kind <= 0:
                    raise ValueError(f"{name}: a reserved span needs a positive byte count")
                out.append(Field(RESERVED, RESERVED, at, kind))
                at += kind
                continue
            count: int = row[2] if len(row) > 2 else 1
            if isinstance(kind, Fields):
                out.append(Field(fname, kind.name, at, kind.size * count, count, kind))
                at += kind.size * count
                continue
            if kind not in _SIZES:
                raise ValueError(f"{name}.{fname}: unknown type {kind!r}")
            size = _SIZES[kind]
            if at % size:
                raise ValueError(f"{name}.{fname}: a {kind} at offset {at} is not aligned")
            out.append(Field(fname, str(kind), at, size * count, count))
            at += size * count
        self.fields: tuple[Field, ...] = tuple(out)
        self.size = at
        self._by_name = {f.name: f for f in out if f.name != RESERVED}
        if len(self._by_name) != sum(f.name != RESERVED for f in out):
            raise ValueError(f"{name}: a field name appears twice")

    def __repr__(self) -> str:
        return f"Fields({self.name!r}, {self.size} bytes)"

    def __getitem__(self, name: str) -> Field:
        return self._by_name[name]

    def names(self) -> tuple[str, ...]:
        """The named fields (no reserved spans), in memory order."""
        return tuple(self._by_name)

    def offset(self, name: str) -> int:
        """Byte offset of field `name` from the start of the layout."""
        return self._by_name[name].offset

    def word(self, name: str, width: int = 4) -> int:
        """Index of field `name` in the layout viewed as `width`-byte words (a memoryview cast).

        For a field wider than `width` (a u64 read as two u32), the index of
        its first (low, little-endian) word. The field must start on a word.
        """
        off = self._by_name[name].offset
        if off % width:
            raise ValueError(f"{self.name}.{name} at {off} is not on a {width}-byte word")
        return off // width

    def bit(self, name: str, width: int = 4) -> tuple[int, int]:
        """(word index, shift) of a narrow field inside the `width`-byte word holding it."""
        f = self._by_name[name]
        if f.offset // width != (f.offset + f.size - 1) // width:
            raise ValueError(f"{self.name}.{name} straddles a {width}-byte word")
        return f.offset // width, (f.offset % width) * 8

    def struct(self, first: str | None = None, last: str | None = None) -> struct.Struct:
        """A little-endian `struct` over the fields from `first` to `last` (default: all).

        Reserved spans inside the range become pad bytes, so packing and
        unpacking name only the fields. Arrays of records are not packed here.
        """
        fs = self.fields
        lo = 0 if first is None else fs.index(self._by_name[first])
        hi = len(fs) - 1 if last is None else fs.index(self._by_name[last])
        fmt = "<"
        for f in fs[lo : hi + 1]:
            if f.type == RESERVED:
                fmt += f"{f.size}x"
            elif f.record is not None:
                raise ValueError(f"{self.name}.{f.name}: an array of records has no struct code")
            else:
                fmt += (str(f.count) if f.count > 1 else "") + _CODES[f.type]
        return struct.Struct(fmt)
