"""/etc/gai.conf, read as glibc reads it: the policy tables getaddrinfo sorts several addresses by.

glibc (sysdeps/posix/getaddrinfo.c, `gaiconf_init`) reads the file once per process, at the first
lookup that has more than one address to sort, and again at such a lookup only when the file said
``reload yes`` and its modification time changed (a file gone since means the built-in tables).
Each line is a keyword and two words; ``#`` ends it; anything malformed is skipped, never an error:

- ``label <prefix>[/<bits>] <value>`` and ``precedence ...``: any one line of a kind replaces that
  built-in table whole (gai.conf(5)); ``::/0`` (label 1, precedence 40) is added when no line has
  zero bits; entries are tried longest prefix first, file order among equals.
- ``scopev4 <IPv4 or ::ffff:IPv4>[/<bits>] <scope>``: the scopes of IPv4 addresses (RFC 6724's
  rule 2 and 8), 0.0.0.0/0 scope 14 added likewise.
- ``reload yes|no``: the last such line counts.

Numbers are C's strtoul: an optional sign, decimal digits, nothing after them; an empty word is 0,
as glibc reads it (``precedence ::/0`` with no value is precedence 0). A value must fit an int.
A prefix with no ``/bits`` is the whole address (glibc leaves that case to an uninitialised
pointer: usnet takes the documented meaning). This module only parses and looks up; which file, and
when it is read again, is `policy`'s.
"""

from __future__ import annotations

import ipaddress
import os
import socket as _std
import threading
from dataclasses import dataclass

__all__ = ["DEFAULT", "Policy", "parse_gai_conf", "policy"]

_INT_MAX = 2**31 - 1
_ULONG_MAX = 2**64 - 1
_MAPPED = 0xFFFF << 32  # ::ffff:0:0, as an integer

# (prefix as a 128-bit integer, bits, value): one table entry
Entry = tuple[int, int, int]


def _v6(text: str) -> int:
    return int(ipaddress.IPv6Address(text))


@dataclass(frozen=True)
class Policy:
    """The three tables, longest prefix first, and whether the file asked to be reread.

    `scopes` holds IPv4 entries as (address, bits of the IPv4 address, scope)."""

    labels: tuple[Entry, ...]
    precedence: tuple[Entry, ...]
    scopes: tuple[Entry, ...]
    reload: bool = False

    def label(self, addr: int) -> int:
        """The label of an IPv6 address (IPv4 as ::ffff:a.b.c.d), as glibc's get_label."""
        return _match(self.labels, addr, 128, _INT_MAX)

    def precedence_of(self, addr: int) -> int:
        """The precedence of an IPv6 address (IPv4 as ::ffff:a.b.c.d), as glibc's get_precedence."""
        return _match(self.precedence, addr, 128, 0)

    def scope4(self, addr: int) -> int:
        """The scope of an IPv4 address (as an integer), as glibc's get_scope."""
        return _match(self.scopes, addr, 32, 14)


def _match(table: tuple[Entry, ...], addr: int, width: int, default: int) -> int:
    for prefix, bits, value in table:
        shift = width - bits
        if addr >> shift == prefix >> shift:
            return value
    return default


#: glibc's built-in tables (RFC 3484's, with labels for site-local, unique-local and Teredo), here
#: longest prefix first as a file's are (glibc lists them otherwise; they overlap only in ::/0)
DEFAULT = Policy(
    labels=((_v6("::1"), 128, 0), (0, 96, 3), (_MAPPED, 96, 4), (_v6("2001::"), 32, 7), (_v6("2002::"), 16, 2),
            (_v6("fec0::"), 10, 5), (_v6("fc00::"), 7, 6), (0, 0, 1)),
    precedence=((_v6("::1"), 128, 50), (0, 96, 20), (_MAPPED, 96, 10), (_v6("2002::"), 16, 30), (0, 0, 40)),
    scopes=((0xA9FE0000, 16, 2), (0x7F000000, 8, 2), (0, 0, 14)),
)


def _strtoul(word: bytes) -> int | None:
    """C's strtoul(word, &end, 10) when it must consume all of `word`: None where glibc's check
    fails (trailing bytes, overflow). Leading white space cannot occur: words are split on it."""
    digits = word[1:] if word[:1] in (b"+", b"-") else word
    if not digits:
        return 0 if not word else None  # "" is 0 with end == word == ""; "+" leaves end at "+"
    if not digits.isdigit() or not digits.isascii():
        return None
    n = int(digits)
    if n > _ULONG_MAX:
        return None  # ERANGE
    return (-n) & _ULONG_MAX if word[:1] == b"-" else n


def _pton(family: int, text: bytes) -> bytes | None:
    try:
        return _std.inet_pton(family, text.decode("ascii"))
    except (OSError, UnicodeError, ValueError):
        return None


def _prefix(word: bytes, value: bytes) -> Entry | None:
    """A label or precedence line's (prefix, bits, value), None when glibc skips the line."""
    addr, slash, bits_word = word.partition(b"/")
    packed = _pton(_std.AF_INET6, addr)
    bits = _strtoul(bits_word) if slash else 128
    val = _strtoul(value)
    if packed is None or bits is None or bits > 128 or val is None or val > _INT_MAX:
        return None
    return int.from_bytes(packed, "big"), bits, val


def _scope(word: bytes, value: bytes) -> Entry | None:
    """A scopev4 line's (IPv4 address, IPv4 bits, scope), None when glibc skips the line: the
    address as ::ffff:a.b.c.d with 96..128 bits, or as a.b.c.d with up to 32."""
    addr, slash, bits_word = word.partition(b"/")
    val = _strtoul(value)
    packed6 = _pton(_std.AF_INET6, addr)
    if packed6 is not None:
        bits = _strtoul(bits_word) if slash else 128
        if packed6[:12] != b"\0" * 10 + b"\xff\xff" or bits is None or not 96 <= bits <= 128:
            return None
        packed, bits = packed6[12:], bits - 96
    else:
        p4 = _pton(_std.AF_INET, addr)
        bits = _strtoul(bits_word) if slash else 32
        if p4 is None or bits is None or bits > 32:
            return None
        packed = p4
    if val is None or val > _INT_MAX:
        return None
    a = int.from_bytes(packed, "big")
    return a & ~((1 << (32 - bits)) - 1) & 0xFFFFFFFF, bits, val


def parse_gai_conf(data: bytes | str) -> Policy:
    """The policy a gai.conf's text gives, read line by line as glibc's gaiconf_init reads it.
    Any input gives a Policy: what glibc would skip is skipped."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)
    labels: list[Entry] = []
    precedence: list[Entry] = []
    scopes: list[Entry] = []
    reload = False
    for line in raw.split(b"\n"):
        words = line.split(b"\0", 1)[0].split(b"#", 1)[0].split()  # a C string ends at NUL
        if not words:
            continue
        cmd = words[0]
        val1 = words[1] if len(words) > 1 else b""
        val2 = words[2] if len(words) > 2 else b""
        if cmd == b"label":
            if (e := _prefix(val1, val2)) is not None:
                labels.append(e)
        elif cmd == b"precedence":
            if (e := _prefix(val1, val2)) is not None:
                precedence.append(e)
        elif cmd == b"scopev4":
            if (e := _scope(val1, val2)) is not None:
                scopes.append(e)
        elif cmd == b"reload":
            reload = val1 == b"yes"
    return Policy(
        labels=_sorted(labels, (0, 0, 1)) or DEFAULT.labels,
        precedence=_sorted(precedence, (0, 0, 40)) or DEFAULT.precedence,
        scopes=_sorted(scopes, (0, 0, 14)) or DEFAULT.scopes,
        reload=reload,
    )


def _sorted(entries: list[Entry], catch_all: Entry) -> tuple[Entry, ...]:
    """A table from the file's lines: empty when there were none (the built-in one stays), else
    with `catch_all` added unless a line has zero bits, longest prefix first (stable)."""
    if not entries:
        return ()
    if not any(bits == 0 for _p, bits, _v in entries):
        entries = [*entries, catch_all]
    return tuple(sorted(entries, key=lambda e: -e[1]))


# -- which file, and when it is read again ---------------------------------------------------------

_cache: dict[str, tuple[int | None, Policy]] = {}
_lock = threading.Lock()


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _load(path: str) -> tuple[int | None, Policy]:
    try:
        with open(path, "rb") as f:
            stamp = os.fstat(f.fileno()).st_mtime_ns
            return stamp, parse_gai_conf(f.read())
    except OSError:
        return None, DEFAULT


def policy(path: str) -> Policy:
    """`path`'s policy: read at the first call for it, then kept for the process, as glibc keeps
    it; read again when its last reading said ``reload yes`` and its modification time is not
    the one read (a file that is gone: the built-in tables, the reload flag kept, as glibc)."""
    with _lock:
        hit = _cache.get(path)
        if hit is None:
            hit = _cache[path] = _load(path)
        elif hit[1].reload and _mtime(path) != hit[0]:
            stamp, got = _load(path)
            hit = _cache[path] = (stamp, got if stamp is not None else _keep_reload(got))
        return hit[1]


def _keep_reload(p: Policy) -> Policy:
    return Policy(p.labels, p.precedence, p.scopes, reload=True)
