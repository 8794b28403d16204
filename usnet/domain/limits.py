"""Privilege and limits: who may bind low ports, share pipes, and how much each uid may hold.

The domain serves clients that do not trust each other, so what one uid can
take is bounded and what it can see or reach of another uid's is refused:

* **Privileged ports** (`Access`): a local port below `unprivileged_port_start`
  (default 1024) needs uid 0 or an `[[access]]` entry that names the port, as
  Linux's bind() needs CAP_NET_BIND_SERVICE below
  `net.ipv4.ip_unprivileged_port_start`. Refused: EACCES, as bind() is.
* **Limits** (`Limits`, `Ledger`): per uid and per session, how many sessions,
  channels, flows and ephemeral ports it holds, and how many bytes of arena its
  channels' pools span (the arena's full size, its ceiling: the memfds are
  sparse, but a client can touch every page of its shared one). Each refusal
  names the limit and its value. What a channel was charged is given back
  when it closes, however it closes (a client killed included).
* **Shared pipe names** (`Share`): a pipe name is the opener's own (its key is
  (uid, name)), unless it begins with `SHARED_MARK`; such a name is one
  namespace for the uids of a `[[share]]` entry that covers it, and for them
  only, since a user pipe is zero-copy and joins one trust group.

uid 0 and the domain's own uid (the user itself, for an embedded `Domain`)
are exempt from the limits and from the port rule: they could end the
domain anyway. Their use is still counted, so status shows it.
"""

from __future__ import annotations

import errno
import grp
import pwd
import resource
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

__all__ = [
    "DESCRIPTORS_PER_CHANNEL",
    "DESCRIPTOR_SHARE",
    "SHARED_MARK",
    "Access",
    "AccessRule",
    "Charge",
    "Ledger",
    "Limits",
    "Share",
    "check_share",
    "descriptor_room",
    "groups_of",
    "is_shared",
    "parse_ports",
    "pipe_key",
]

#: A pipe name that begins with this is shared between the uids of a `[[share]]` entry.
SHARED_MARK = "@"

# The errno of each limit, as the kernel's nearest refusal: too many users (sessions),
# too many open files (channels, flows), no local port (ephemeral ports), no buffer space (pool).
_ERRNO = {"sessions": errno.EUSERS, "channels": errno.EMFILE, "flows": errno.EMFILE,
          "ephemeral_ports": errno.EADDRNOTAVAIL, "pool_bytes": errno.ENOBUFS}


@dataclass(frozen=True)
class Limits:
    """The most a uid (all its sessions) and a session may hold; a value of 0 means none at all.

    The defaults are finite and well above what the benches and tests open
    (`usnet bench tcp` opens hundreds of connections, a few at once).
    """

    sessions_per_uid: int = 256
    channels_per_uid: int = 4096
    channels_per_session: int = 1024
    flows_per_uid: int = 2048
    flows_per_session: int = 1024
    ephemeral_ports_per_uid: int = 4096  # a quarter of the ephemeral range (49152-65535)
    ephemeral_ports_per_session: int = 1024
    pool_bytes_per_uid: int = 256 << 30  # about 480 flows of 64 KiB packets, 15,000 default pipes
    pool_bytes_per_session: int = 128 << 30

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"limit {f.name} must be a whole number >= 0, not {v!r}")


@dataclass
class Charge:
    """What one channel holds against its session and uid; given back once, when it closes."""

    uid: int
    session: int
    channels: int = 1
    flows: int = 0
    ephemeral_ports: int = 0
    pool_bytes: int = 0
    released: bool = False

    def amounts(self) -> dict[str, int]:
        return {"channels": self.channels, "flows": self.flows, "ephemeral_ports": self.ephemeral_ports,
                "pool_bytes": self.pool_bytes}


def _refusal(kind: str, who: str, held: int, limit_name: str, limit: int) -> OSError:
    return OSError(_ERRNO[kind], f"{who} holds {held} {kind.replace('_', ' ')} (limit {limit_name} = {limit})")


#: The share of the domain's descriptor table (its RLIMIT_NOFILE) one uid's channels may hold, and
#: what a channel holds: its memfds, doorbells and kick eventfds (16 measured), and the duplicates
#: of the five it hands over while its reply waits unread. The configured limits count channels,
#: not descriptors; where the descriptor limit is low (20000, 4096) a uid within them could still
#: take the whole table, and every other uid's opens and connects would fail (issue 16,
#: hostile-client audit). So a uid's channels are also bounded by this share.
DESCRIPTOR_SHARE = 0.5
DESCRIPTORS_PER_CHANNEL = 21


def descriptor_room() -> tuple[int, int]:
    """(channels one uid may hold by the descriptor share, the domain's descriptor limit): the soft
    RLIMIT_NOFILE, read each time (usnetd raises it when it starts)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 31, soft
    return int(soft * DESCRIPTOR_SHARE) // DESCRIPTORS_PER_CHANNEL, soft


class Ledger:
    """Per-uid and per-session usage, checked against `Limits` before anything is handed out."""

    def __init__(self, limits: Limits, exempt: Iterable[int]) -> None:
        self.limits = limits
        self.exempt = frozenset(exempt)
        self.by_uid: dict[int, dict[str, int]] = {}
        self.by_session: dict[int, dict[str, int]] = {}
        self.refused: dict[str, int] = {}  # refusals by limit name

    def check_session(self, uid: int, sessions_held: int) -> None:
        """Raise (EUSERS) if uid, holding `sessions_held` sessions, may not open one more."""
        lim = self.limits.sessions_per_uid
        if uid not in self.exempt and sessions_held + 1 > lim:
            self.refused["sessions_per_uid"] = self.refused.get("sessions_per_uid", 0) + 1
            raise _refusal("sessions", f"uid {uid}", sessions_held, "sessions_per_uid", lim)

    def admit(self, charge: Charge) -> Charge:
        """Charge a new channel to its uid and session, or raise naming the first limit it passes."""
        if charge.uid not in self.exempt:
            for scope, key, who in (("uid", charge.uid, f"uid {charge.uid}"),
                                    ("session", charge.session, f"session {charge.session}")):
                held = (self.by_uid if scope == "uid" else self.by_session).get(key, {})
                for kind, n in charge.amounts().items():
                    if not n:
                        continue
                    name = f"{kind}_per_{scope}"
                    lim = getattr(self.limits, name)
                    if held.get(kind, 0) + n > lim:
                        self.refused[name] = self.refused.get(name, 0) + 1
                        raise _refusal(kind, who, held.get(kind, 0), name, lim)
            if charge.channels:
                held_ch = self.by_uid.get(charge.uid, {}).get("channels", 0)
                room, nofile = descriptor_room()
                if held_ch + charge.channels > room:
                    self.refused["descriptor_share"] = self.refused.get("descriptor_share", 0) + 1
                    raise OSError(errno.EMFILE, f"uid {charge.uid} holds {held_ch} channels (about "
                                  f"{DESCRIPTORS_PER_CHANNEL} descriptors each): one uid may take at most "
                                  f"{DESCRIPTOR_SHARE:.0%} of usnetd's {nofile} "
                                  "descriptors (raise its RLIMIT_NOFILE, LimitNOFILE= in its unit)")
        for table, key in ((self.by_uid, charge.uid), (self.by_session, charge.session)):
            held = table.setdefault(key, {})
            for kind, n in charge.amounts().items():
                held[kind] = held.get(kind, 0) + n
        return charge

    def room(self, uid: int, session: int, kind: str) -> int:
        """How much more of `kind` (a Charge field) the uid and session may take: the smaller of
        what their limits leave; unbounded (2**31) for an exempt uid."""
        if uid in self.exempt:
            return 1 << 31
        return max(0, min(getattr(self.limits, f"{kind}_per_uid") - self.by_uid.get(uid, {}).get(kind, 0),
                          getattr(self.limits, f"{kind}_per_session") - self.by_session.get(session, {}).get(kind, 0)))

    def release(self, charge: Charge | None) -> None:
        """Give back what `charge` holds (a second call does nothing)."""
        if charge is None or charge.released:
            return
        charge.released = True
        for table, key in ((self.by_uid, charge.uid), (self.by_session, charge.session)):
            held = table.get(key)
            if held is None:
                continue
            for kind, n in charge.amounts().items():
                held[kind] = held.get(kind, 0) - n
            if not any(held.values()):
                del table[key]

    def info(self, uid: int | None = None) -> dict:
        """The limits and usage (of `uid` only, when given: what a non-root viewer may see)."""
        usage = self.by_uid if uid is None else {k: v for k, v in self.by_uid.items() if k == uid}
        return {"limits": {f.name: getattr(self.limits, f.name) for f in fields(self.limits)},
                "exempt_uids": sorted(self.exempt),
                "usage_by_uid": {str(k): dict(v) for k, v in usage.items()},
                **({"refused": dict(self.refused)} if uid is None else {})}


# -- privileged ports -----------------------------------------------------------------


def parse_ports(text: str) -> frozenset[int]:
    """"80,443,8000-8080" as the set of ports it names; ValueError for anything else."""
    ports: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"ports must be like \"80,443,8000-8080\", not {text!r}") from None
        if not 1 <= a <= b <= 65535:
            raise ValueError(f"port range {part!r} is not within 1-65535")
        ports.update(range(a, b + 1))
    return frozenset(ports)


def groups_of(uid: int) -> frozenset[int]:
    """The uid's primary group and the groups that list its user (the group database, not the client)."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return frozenset()
    gids = {pw.pw_gid}
    gids.update(g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem)
    return frozenset(gids)


@dataclass(frozen=True)
class AccessRule:
    """One `[[access]]` entry: whom (uid and/or gid, and optionally a program) may bind which low ports.

    A uid or gid is required: the program is what the client said in Hello,
    a label any process can claim, so it only narrows a rule, never makes one.
    """

    ports: frozenset[int]
    uid: int | None = None
    gid: int | None = None
    program: str | None = None
    text: str = ""  # the ports as written, for messages

    def __post_init__(self) -> None:
        if self.uid is None and self.gid is None:
            raise ValueError("an [[access]] entry needs a uid or a gid (a program alone is no credential)")

    def matches(self, uid: int, program: str) -> bool:
        if self.uid is not None and self.uid != uid:
            return False
        if self.gid is not None and self.gid not in groups_of(uid):
            return False
        return self.program is None or self.program == program

    def describe(self) -> str:
        who = " ".join(f"{k} = {v!r}" for k, v in (("uid", self.uid), ("gid", self.gid),
                                                   ("program", self.program)) if v is not None)
        return f"[[access]] {who} ports = {self.text!r}"


@dataclass(frozen=True)
class Access:
    """Who may bind a local port below `unprivileged_port_start` (Linux: ip_unprivileged_port_start)."""

    rules: tuple[AccessRule, ...] = ()
    unprivileged_port_start: int = 1024
    privileged_uids: frozenset[int] = field(default_factory=lambda: frozenset({0}))

    def __post_init__(self) -> None:
        if not 0 <= self.unprivileged_port_start <= 65536:
            raise ValueError(f"unprivileged_port_start must be from 0 to 65536, not {self.unprivileged_port_start!r}")

    def check_port(self, uid: int, program: str, proto_name: str, port: int) -> None:
        """Raise EACCES unless `uid` may bind `port` (0, an ephemeral port, is always allowed)."""
        if port == 0 or port >= self.unprivileged_port_start or uid in self.privileged_uids:
            return
        for rule in self.rules:
            if port in rule.ports and rule.matches(uid, program):
                return
        raise OSError(errno.EACCES, f"{proto_name} port {port} is below unprivileged_port_start = "
                                    f"{self.unprivileged_port_start}: uid {uid} needs root or an [[access]] "
                                    f"entry for it")


# -- shared pipe names ------------------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """One `[[share]]` entry: the uids that trust each other with the shared pipe names under `prefix`."""

    uids: frozenset[int]
    prefix: str = SHARED_MARK

    def __post_init__(self) -> None:
        if not self.prefix.startswith(SHARED_MARK):
            raise ValueError(f"a [[share]] prefix must begin with {SHARED_MARK!r}, not {self.prefix!r}")
        if len(self.uids) < 1:
            raise ValueError("a [[share]] entry needs uids")

    def covers(self, name: str, *uids: int) -> bool:
        return name.startswith(self.prefix) and all(u in self.uids for u in uids)


def is_shared(name: str) -> bool:
    return name.startswith(SHARED_MARK)


def pipe_key(uid: int, name: str) -> tuple[int | None, str]:
    """The key a pipe name has in the domain: the uid's own, or (None, name) if it is shared."""
    return (None, name) if is_shared(name) else (uid, name)


def check_share(shares: Iterable[Share], name: str, uid: int, owner: int | None, exempt: Iterable[int]) -> None:
    """Raise EACCES unless `uid` may open shared pipe `name` (created by `owner`, or new if None).

    The opener must be in a `[[share]]` entry that covers the name, and with
    the pipe's creator in the same entry; exempt uids (root, the domain's own)
    only with themselves or by such an entry.
    """
    if owner == uid:
        return
    if any(s.covers(name, uid) if owner is None else s.covers(name, uid, owner) for s in shares):
        return
    if owner is None and uid in frozenset(exempt):
        return
    whose = "" if owner is None else f" with uid {owner}, who created it"
    raise OSError(errno.EACCES, f"pipe {name!r} is a shared name ({SHARED_MARK!r}): no [[share]] entry "
                                f"covers it for uid {uid}{whose}")
