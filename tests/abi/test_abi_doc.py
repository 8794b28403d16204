"""docs/abi.md's layout tables against the one declaration of each layout (usnet.abi.layout).

Each layout table in docs/abi.md follows a marker naming the declaration it
documents, and optionally the bytes it covers:

    <!-- layout: usnet.abi.schema.SCHEMA bytes=72..103 -->

The table's rows (offset, type, field name; a `word` column if it has one)
must be exactly the declaration's fields in those bytes, reserved spans
included, and together the tables must cover every byte of every layout the
ABI declares. So a field added, moved or renamed in the code fails here until
the page says so too.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import usnet.abi
from usnet.abi.layout import RESERVED, Fields

DOC = Path(__file__).resolve().parents[2] / "docs" / "abi.md"
MARKER = re.compile(r"<!--\s*layout:\s*(?P<decl>[\w.]+)(?:\s+bytes=(?P<lo>\d+)\.\.(?P<hi>\d+))?\s*-->")


def declared() -> dict[str, Fields]:
    """Every Fields table of the usnet.abi modules, by its dotted name."""
    out: dict[str, Fields] = {}
    for m in pkgutil.iter_modules(usnet.abi.__path__):
        mod = importlib.import_module(f"usnet.abi.{m.name}")
        for k, v in vars(mod).items():
            if isinstance(v, Fields) and v.__class__ is Fields:
                out.setdefault(f"usnet.abi.{m.name}.{k}", v)
    return out


def doc_tables() -> list[tuple[str, int | None, int | None, list[dict[str, str]], int]]:
    """(declaration, first byte, last byte, rows as {column: cell}, line) for each marked table."""
    lines = DOC.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        m = MARKER.search(line)
        if not m:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("|"):
            assert not lines[j].strip(), f"abi.md:{i + 1}: a layout marker must be followed by its table"
            j += 1
        table = []
        while j < len(lines) and lines[j].startswith("|"):
            table.append([c.strip() for c in lines[j].strip().strip("|").split("|")])
            j += 1
        head, rows = table[0], table[2:]
        lo = int(m["lo"]) if m["lo"] else None
        hi = int(m["hi"]) if m["hi"] else None
        out.append((m["decl"], lo, hi, [dict(zip(head, r)) for r in rows], i + 1))
    return out


TABLES = doc_tables()


def expected(decl: Fields, lo: int, hi: int) -> list[tuple[str, tuple[int, int | None, int | None], str]]:
    """(name, (offset, stride, last byte), type) of each field within bytes lo..hi."""
    rows = []
    for f in decl.fields:
        if f.offset < lo or f.offset + f.size - 1 > hi:
            assert f.offset + f.size <= lo or f.offset > hi, f"{decl.name}.{f.name} straddles bytes {lo}..{hi}"
            continue
        if f.type == RESERVED:
            rows.append((RESERVED, (f.offset, None, f.offset + f.size - 1), ""))
        elif f.count > 1:
            rows.append((f.name, (f.offset, f.elem_size, None), f.type))
        else:
            rows.append((f.name, (f.offset, None, None), f.type))
    return rows


def parse_offset(cell: str) -> tuple[int, int | None, int | None]:
    """`12` -> (12, None, None); `8..63` -> (8, None, 63); `72 + 4r` -> (72, 4, None)."""
    cell = cell.strip("`")
    if m := re.fullmatch(r"(\d+)\.\.(\d+)", cell):
        return int(m[1]), None, int(m[2])
    if m := re.fullmatch(r"(\d+)\s*\+\s*(\d*)\s*[a-z]", cell):
        return int(m[1]), int(m[2] or 1), None
    return int(cell), None, None


def field_name(cell: str) -> str:
    """The field's name: the cell's first word (`state[r]` -> state, `producer: ...` -> producer)."""
    m = re.match(r"`?([A-Za-z_][A-Za-z0-9_]*)", cell)
    assert m, f"no field name in {cell!r}"
    return m[1]


def test_every_layout_is_documented_whole():
    """Each declared layout's bytes are covered by its tables (a nested record: by the record's own)."""
    decls = declared()
    spans: dict[str, list[tuple[int, int]]] = {}
    for name, lo, hi, _, line in TABLES:
        assert name in decls, f"abi.md:{line}: {name} is not a layout declared in usnet.abi"
        d = decls[name]
        spans.setdefault(name, []).append((lo or 0, d.size - 1 if hi is None else hi))
    whole = {n for n, s in spans.items() if _covers(s, decls[n].size)}
    for n, d in decls.items():
        covered = list(spans.get(n, []))
        for f in d.fields:
            if f.record is not None and any(decls[w] is f.record for w in whole):
                covered.append((f.offset, f.offset + f.size - 1))
        assert _covers(covered, d.size), f"docs/abi.md does not document every byte of {n} ({d.name})"


def _covers(spans: list[tuple[int, int]], size: int) -> bool:
    at = 0
    for lo, hi in sorted(spans):
        if lo > at:
            return False
        at = max(at, hi + 1)
    return at >= size


@pytest.mark.parametrize("name,lo,hi,rows,line", TABLES, ids=[f"abi.md:{t[4]}" for t in TABLES])
def test_doc_table_matches_declaration(name, lo, hi, rows, line):
    decl = declared()[name]
    want = expected(decl, lo or 0, decl.size - 1 if hi is None else hi)
    got = []
    for r in rows:
        offset_col = next(k for k in r if k.startswith("offset"))
        got.append((field_name(r["field"]), parse_offset(r[offset_col]), r.get("type", "").strip("`")))
        if r.get("word") and r["field"] != RESERVED:  # the index in the memory viewed as words of the field's type
            off, stride, _ = got[-1][1]
            size = int(got[-1][2][1:]) // 8
            assert parse_offset(r["word"])[:2] == (off // size, None if stride is None else 1), \
                f"abi.md:{line}: word of {got[-1][0]}"
    assert got == want, f"abi.md:{line}: the table of {name} does not match its declaration"


CONSTANT = re.compile(r"`([A-Z][A-Z0-9_]*)` (?:= |\()(0x[0-9A-Fa-f]+|[0-9][0-9,]*)\b(?!\.)")


def test_constants_the_page_quotes():
    """`NAME` = value (or `NAME` (value) in docs/abi.md, for every NAME an ABI module defines once."""
    values: dict[str, set[int]] = {}
    for m in pkgutil.iter_modules(usnet.abi.__path__):
        for k, v in vars(importlib.import_module(f"usnet.abi.{m.name}")).items():
            if k.isupper() and type(v) is int:
                values.setdefault(k, set()).add(v)
    checked = 0
    for i, line in enumerate(DOC.read_text().splitlines(), 1):
        for name, text in CONSTANT.findall(line):
            if len(values.get(name, ())) == 1:
                assert int(text.replace(",", ""), 0) in values[name], f"abi.md:{i}: {name} is {values[name]}"
                checked += 1
    assert checked >= 5  # the pattern still finds the page's constants


def test_records_name_the_fields():
    """The typed views of the tables name exactly their fields."""
    from usnet.abi.schema import STATS, Stat

    assert [s.name.lower() for s in Stat] == list(STATS.names())
    assert [STATS.word(s.name.lower(), 8) for s in Stat] == [int(s) for s in Stat]
