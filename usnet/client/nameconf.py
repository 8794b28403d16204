"""The host's name configuration, read as glibc reads it: resolv.conf, the hosts file, nsswitch.conf.

Parsed once per file and kept until the file changes (`read_cached`), so a lookup never re-reads a
file that did not move; `configure` (and the USNET_* variables) override where they are. What
usnet.client.resolver acts on; nothing here sends a packet.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket as _std
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "NOTFOUND", "NSS_DEFAULT", "SUCCESS", "TRYAGAIN", "UNAVAIL", "Hosts", "HostsEntry", "NssSource", "ResolvConf",
    "configure", "parse_nsswitch", "parse_servers", "read_cached", "settings",
]

AF_INET, AF_INET6 = int(_std.AF_INET), int(_std.AF_INET6)


@dataclass
class _Settings:
    """What `configure` set; None: the environment, then the system's files."""

    nameservers: list[tuple[str, int]] | None = None
    hosts: str | None = None
    resolv_conf: str | None = None
    timeout: float | None = None
    attempts: int | None = None
    nsswitch: str | None = None
    gai_conf: str | None = None


_settings = _Settings()


def configure(nameservers: list[str] | str | None = None, hosts: str | None = None, resolv_conf: str | None = None,
              timeout: float | None = None, attempts: int | None = None, nsswitch: str | None = None,
              gai_conf: str | None = None) -> None:
    """Where names are looked up, for every later call (None: the default for each).

    `nameservers`: ``"addr"``, ``"addr#port"``, ``"addr:port"`` (IPv4) or ``"[addr]:port"``,
    as a list or comma-separated, instead of resolv.conf's (default: ``USNET_RESOLVER``, then
    resolv.conf). `hosts`: the hosts file (default ``USNET_HOSTS``, then /etc/hosts).
    `resolv_conf`: default /etc/resolv.conf. `timeout` (seconds per try) and `attempts`
    (rounds over the servers) override resolv.conf's options. `nsswitch`: whose ``hosts:``
    line orders the sources (default ``USNET_NSSWITCH``, then /etc/nsswitch.conf). `gai_conf`:
    the policy several addresses are sorted by (default ``USNET_GAI_CONF``, then /etc/gai.conf).
    """
    global _settings
    servers = None if nameservers is None else parse_servers(nameservers)
    _settings = _Settings(servers, hosts, resolv_conf, timeout, attempts, nsswitch, gai_conf)


def parse_servers(spec: list[str] | str) -> list[tuple[str, int]]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [_parse_server(s.strip()) for s in items if s.strip()]


def _parse_server(s: str) -> tuple[str, int]:
    """("addr", port) of a nameserver written as dnsmasq, bind or a URL would write it."""
    port = 53
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif "#" in s:
        host, _, p = s.partition("#")
        port = int(p)
    elif s.count(":") == 1:
        host, _, p = s.partition(":")
        port = int(p)
    else:
        host = s
    ip = ipaddress.ip_address(host.split("%")[0])
    if not 0 < port < 65536:
        raise ValueError(f"nameserver port out of range: {s!r}")
    return str(ip), port


@dataclass
class ResolvConf:
    """The parts of resolv.conf(5) that a stub resolver acts on, with glibc's defaults."""

    nameservers: list[tuple[str, int]] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    ndots: int = 1
    timeout: float = 5.0
    attempts: int = 2
    rotate: bool = False

    @classmethod
    def parse(cls, text: str) -> ResolvConf:
        conf = cls()
        for raw in text.splitlines():
            words = raw.split("#")[0].split(";")[0].split()
            if not words:
                continue
            key, args = words[0], words[1:]
            if key == "nameserver" and args and len(conf.nameservers) < 3:  # glibc's MAXNS
                try:
                    conf.nameservers.append((str(ipaddress.ip_address(args[0].split("%")[0])), 53))
                except ValueError:
                    pass
            elif key in ("search", "domain") and args:
                conf.search = [a.rstrip(".") for a in args if a != "."][:6] if key == "search" else [args[0]]
            elif key == "options":
                for opt in args:
                    name, _, value = opt.partition(":")
                    with contextlib.suppress(ValueError):
                        if name == "ndots":
                            conf.ndots = min(max(int(value), 0), 15)
                        elif name == "timeout":
                            conf.timeout = float(min(max(int(value), 1), 30))
                        elif name == "attempts":
                            conf.attempts = min(max(int(value), 1), 5)
                        elif name == "rotate":
                            conf.rotate = True
        if not conf.nameservers:
            conf.nameservers = [("127.0.0.1", 53)]  # glibc's default with none listed
        return conf


SUCCESS, NOTFOUND, UNAVAIL, TRYAGAIN = "success", "notfound", "unavail", "tryagain"  # glibc's NSS statuses
_STATUSES = (SUCCESS, NOTFOUND, UNAVAIL, TRYAGAIN)
_ACTIONS = {"return": "return", "continue": "continue", "merge": "continue"}  # merge: of groups only


@dataclass(frozen=True)
class NssSource:
    """One source of an nsswitch.conf line and what to do after it, per status (nsswitch.conf(5)):
    by default return on SUCCESS and go on to the next source otherwise."""

    name: str
    returns: frozenset[str] = frozenset({SUCCESS})  # the statuses after which the lookup stops

    def stops(self, status: str) -> bool:
        return status in self.returns


#: glibc's sources when nsswitch.conf has no ``hosts:`` line (or there is no file)
NSS_DEFAULT = "dns [!UNAVAIL=return] files"


def parse_nsswitch(text: str, database: str = "hosts") -> list[NssSource]:
    """The sources of `database`'s line, as glibc reads nsswitch.conf: the first line for it
    counts (names compared without case), ``#`` starts a comment, ``[STATUS=action ...]`` items
    (``!STATUS``: every other status) change the source before them. A malformed item ends the
    list there, as glibc stops reading a line at a syntax error. No line: `NSS_DEFAULT`."""
    for raw in text.splitlines():
        line = raw.split("#")[0]
        db, colon, rest = line.partition(":")
        if colon and db.strip().lower() == database.lower():
            return _parse_sources(rest)
    return _parse_sources(NSS_DEFAULT)


def _parse_sources(spec: str) -> list[NssSource]:
    out: list[NssSource] = []
    words = spec.replace("[", " [ ").replace("]", " ] ").split()
    i = 0
    while i < len(words):
        w = words[i]
        if w != "[":
            out.append(NssSource(w.lower()))
            i += 1
            continue
        end = words.index("]", i) if "]" in words[i:] else -1
        if end < 0 or not out:
            break  # an unclosed item, or one with no source before it: the rest is ignored
        returns = set(out[-1].returns)
        ok = end > i + 1
        for item in words[i + 1 : end]:
            neg = item.startswith("!")
            status, eq, action = item.lstrip("!").lower().partition("=")
            if not eq or status not in _STATUSES or action not in _ACTIONS:
                ok = False
                break
            for st in ([x for x in _STATUSES if x != status] if neg else [status]):
                if _ACTIONS[action] == "return":
                    returns.add(st)
                else:
                    returns.discard(st)
        if not ok:
            break
        out[-1] = NssSource(out[-1].name, frozenset(returns))
        i = end + 1
    return out


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


_file_cache: dict[str, tuple[tuple[int, int, int], Any]] = {}
_file_lock = threading.Lock()


def read_cached(path: str, parse: Callable[[str], Any]) -> Any:
    """`parse` of a file's text, parsed again when the file changes (as glibc rereads resolv.conf)."""
    try:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        stamp = (0, 0, 0)
    with _file_lock:
        hit = _file_cache.get(path)
        if hit is not None and hit[0] == stamp and stamp != (0, 0, 0):
            return hit[1]
    value = parse(_read_text(path))
    with _file_lock:
        _file_cache[path] = (stamp, value)
    return value


@dataclass(frozen=True)
class HostsEntry:
    family: int
    address: str
    canonical: str
    aliases: tuple[str, ...]


class Hosts:
    """A hosts file (hosts(5)): address, canonical name, aliases; `#` starts a comment."""

    def __init__(self, entries: list[HostsEntry]) -> None:
        self.entries = entries

    @classmethod
    def parse(cls, text: str) -> Hosts:
        entries = []
        for raw in text.splitlines():
            words = raw.split("#")[0].split()
            if len(words) < 2:
                continue
            addr = words[0]
            try:
                entries.append(HostsEntry(AF_INET, _std.inet_ntop(AF_INET, _std.inet_pton(AF_INET, addr)),
                                          words[1], tuple(words[2:])))
                continue
            except OSError:
                pass
            try:
                entries.append(HostsEntry(AF_INET6, _std.inet_ntop(AF_INET6, _std.inet_pton(AF_INET6, addr)),
                                          words[1], tuple(words[2:])))
            except OSError:
                continue  # not an address: glibc skips the line
        return cls(entries)

    def by_name(self, name: str, family: int) -> list[HostsEntry]:
        """Every line that names `name` (any case), of `family` (0: both), in file order. For
        AF_INET, as glibc's files backend reads it, an IPv6 line of ::1 stands for 127.0.0.1 and a
        v4-mapped address for its IPv4 address; other IPv6 lines do not count."""
        key = name.lower()
        out = []
        for e in self.entries:
            if e.canonical.lower() != key and all(a.lower() != key for a in e.aliases):
                continue
            if family == AF_INET and e.family == AF_INET6:
                ip = ipaddress.IPv6Address(e.address)
                v4 = "127.0.0.1" if ip == ipaddress.IPv6Address("::1") else ip.ipv4_mapped
                if v4 is None:
                    continue
                e = HostsEntry(AF_INET, str(v4), e.canonical, e.aliases)
            if family in (0, e.family):
                out.append(e)
        return out

    def by_address(self, address: str) -> HostsEntry | None:
        for e in self.entries:
            if e.address == address:
                return e
        return None


# -- lookups -------------------------------------------------------------------------------------


def settings() -> _Settings:
    """What `configure` set last (read at each lookup: `configure` replaces it)."""
    return _settings

