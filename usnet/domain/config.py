"""usnetd's configuration file (TOML), typed and checked on load.

    socket = "/run/usnet/usnetd.sock"
    socket_group = "usnet"   # optional: the control socket's group (a name or a gid)
    socket_mode = 0o660      # optional: its mode (default 0o660 with socket_group, else
                             # 0o600: only root may connect). usnetd --mode overrides it
    unprivileged_port_start = 1024  # local ports below this need uid 0 or an [[access]]
                             # entry (Linux: net.ipv4.ip_unprivileged_port_start)
    log_level = "INFO"       # DEBUG adds a line per control request; SIGHUP applies a change
    metrics = "unix:/run/usnet/metrics.sock"  # optional: where usnetd serves its metrics
                             # (a Unix socket or a loopback address; `usnet up --metrics`)
    rx_mitigation = true     # coalesce the receive doorbells of fast general-class flows
                             # (default); false: ring a sleeping client on every batch
    lease_ttl = 30.0         # seconds a low-latency lease lasts unless renewed (default 30)
    advisory_interval = 0.005  # optional: seconds between republications of an active
                             # netif's interface advisory (default 5 ms)
    delay_target = 0.005     # optional: the transmit queueing delay (seconds) above which
                             # the advisory suggests DOWN (default 5 ms)
    purge_after = 30.0       # optional: seconds a pool must stay idle before its free
                             # segments go back to the system (default 30)
    purge_below_mb = 256     # optional: below this MemAvailable (MiB) every pool gives back
                             # its free segments at once, idle or not (default 256; 0: never)
    stall_after = 10.0       # optional: seconds a channel may leave packets unread on its RX
                             # ring before it is stalled: arrivals dropped, RX_STALLED (default 10)
    stall_defunct = 60.0     # optional: seconds more stalled before it is defunct with STALLED
                             # (default 60; 0: never)

    [[netif]]
    name = "usnet0"          # the netif's name, as clients ask for it
    driver = "tap"           # tap | packet | xdp
    ifname = "usnet0"        # the device: TAP name, or the interface for packet or xdp
    address = "10.77.0.2/24" # usnet's own address on it
    gateway = "10.77.0.1"    # optional
    address6 = "fd00:77::2/64"  # optional: IPv6 too (and the link-local address from the MAC)
    gateway6 = "fd00:77::1"  # optional
    pcap = "/tmp/usnet0.pcap"  # optional: trace every frame
    offload = true           # tap: checksum and TCP segmentation offload through
                             # IFF_VNET_HDR (default); false: plain 1,500-byte frames
    link_rate = 50e6         # optional: pace transmit to this many bits/s, so the
                             # queue forms in usnet and not in the kernel
    ll_share = 0.2           # optional, needs link_rate: share of the time slots
                             # reserved for the low-latency class (0 to 0.9; default 0.2)
    work_conserving = true   # optional, needs link_rate: idle LL slots carry general
                             # traffic and the reverse (default); false: they stay idle
    rx_mitigation = false    # optional: this netif's own choice (default: the top-level key)
    aqm = true               # optional: CoDel on the general class's queues (default: on
                             # with link_rate, where the queue forms in usnet; off without)
    share_host = false       # xdp: share the interface, its MAC and its address (`address`
                             # is then the host's own) with the host's stack: only the ports
                             # usnet holds come to usnet, the rest stays the kernel's (IPv4 only)
    ll_queue = 1             # xdp, optional: the receive queue of the LL lane (the NIC's flow
                             # rule sends LL flows there): a granted IPv4 flow's frames land in
                             # its own buffers, no copy (one lane per queue; copy mode)

    [[policy]]               # who may lease the LL class; none: nobody (default deny)
    uid = 1000               # the client's uid (SO_PEERCRED) ...
    program = "voipd"        # ... and/or the program it names in Hello (a label, not
                             # a credential: pair it with uid where that matters)
    classes = ["voice", "interactive"]  # of voice, video, interactive, control
    max_rate = 2e6           # the most bit/s one lease may have (at the link)
    total_rate = 4e6         # optional: the most all of one uid's leases under this entry may
                             # add up to on one netif (without it, a uid with many flows may
                             # lease the netif's whole LL share)
    max_packet = 1200        # the largest IP packet one lease may send (20 to 65535)
    min_target = 0.005       # optional: the tightest latency target (s) a lease may ask for;
                             # without it, the netif's full bound (access + 5 ms, `usnet
                             # lowlat`), which no later lease can break. A tighter one holds
                             # back the bursts of every later lease on the netif: give it
                             # only to programs whose promise is worth that

    [[access]]               # who may bind local ports below unprivileged_port_start
    uid = 1000               # the client's uid (SO_PEERCRED) and/or ...
    gid = "www"              # ... a group (name or gid) the uid is in (the group database);
                             # one of them is needed
    program = "httpd"        # optional: and the program it names in Hello (narrows only)
    ports = "80,443"         # ports and ranges: "80,443,8000-8080"

    [[share]]                # uids that trust each other with shared pipe names
    uids = [1000, 1001]
    prefix = "@media"        # the shared names it covers (they begin with "@"; default "@")

    [limits]                 # per uid (all its sessions) and per session; uid 0 and
    sessions_per_uid = 256   # usnetd's own uid are exempt. Defaults shown; 0: none at all
    channels_per_uid = 4096
    channels_per_session = 1024
    flows_per_uid = 2048
    flows_per_session = 1024
    ephemeral_ports_per_uid = 4096
    ephemeral_ports_per_session = 1024
    pool_bytes_per_uid = 274877906944     # 256 GiB of arena (its full, sparse size)
    pool_bytes_per_session = 137438953472 # 128 GiB

A request is entitled if any entry matching its uid and program covers its
class, rate and packet size. SIGHUP re-reads the file and applies its
`[[policy]]` and `lease_ttl`: leases the new policy no longer entitles are
revoked, the others are untouched; and its `[limits]`, `[[access]]`,
`[[share]]` and `unprivileged_port_start`, for what is opened from then on
(nothing already open is taken back). A file that does not load changes
nothing (usnetd logs why). Other keys take effect at the next start.

A refusal by these rules is an Error reply that names the rule: EACCES for a
low port or a shared pipe name, and for a limit its errno (EUSERS sessions,
EMFILE channels and flows, EADDRNOTAVAIL ephemeral ports, ENOBUFS pool
bytes) and "uid 1000 holds 64 flows (limit flows_per_uid = 64)". See
usnet.domain.limits and docs/design-notes.md, "Privilege and limits".

Top-level keys go before the first `[[netif]]` or `[[policy]]` table (TOML
puts anything after a table header into that table). `advisory_interval`
and `delay_target` are handed to the domain (`Domain(advisory_interval=,
delay_target=)`, docs/abi.md §16): every netif's advisory is published that
often and judged against that delay. A value that is not a positive, finite
number of seconds is refused by name.

See docs/design-notes.md, "The transmit multiplexer", "The agent" and
"Receive mitigation".
"""

from __future__ import annotations

import grp
import ipaddress
import math
import os
import tomllib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import msgspec

from usnet.abi.paths import DEFAULT_SOCKET
from usnet.domain.limits import Access, AccessRule, Limits, Share, parse_ports
from usnet.domain.lowlat.agent import (
    DEFAULT_TTL,
    check_megabytes,
    check_seconds,
    check_seconds_or_off,
    check_ttl,
)
from usnet.domain.lowlat.policy import Policy, PolicyEntry
from usnet.domain.netif import txsched

if TYPE_CHECKING:
    from usnet.drivers.base import Driver

__all__ = [
    "LOG_LEVELS", "AccessConfig", "Config", "DomainKwargs", "DriverName", "NetifConfig", "PolicyConfig",
    "PrivilegeKwargs", "ShareConfig", "dump", "group_id", "load", "make_driver",
]

DriverName = Literal["tap", "packet", "xdp"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")  # logging's names; any case in the file


class NetifConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    address: str
    driver: DriverName = "tap"
    ifname: str | None = None
    gateway: str | None = None
    mtu: int = 1500
    pcap: str | None = None
    offload: bool = True
    address6: str | None = None
    gateway6: str | None = None
    link_rate: float | None = None
    ll_share: float | None = None
    work_conserving: bool | None = None
    rx_mitigation: bool | None = None  # None: the file's top-level rx_mitigation
    aqm: bool | None = None  # None: on with link_rate
    share_host: bool = False  # xdp only: the host's interface and address, shared port by port
    ll_queue: int | None = None  # xdp only: the queue of the low-latency receive lane (issue 19)

    def __post_init__(self) -> None:
        ipaddress.IPv4Interface(self.address)
        if self.share_host and self.driver != "xdp":
            raise ValueError("share_host needs driver = \"xdp\" (its XDP program takes the ports usnet holds)")
        if self.ll_queue is not None and (self.driver != "xdp" or self.ll_queue < 1):
            raise ValueError("ll_queue needs driver = \"xdp\" and a queue other than 0 (the general one)")
        if self.share_host and self.address6:
            raise ValueError("share_host is IPv4 only: neighbour discovery is not shared yet")
        if self.gateway:
            ipaddress.IPv4Address(self.gateway)
        if not 576 <= self.mtu <= 9000:
            raise ValueError("mtu must be from 576 to 9000")
        if self.address6:
            ipaddress.IPv6Interface(self.address6)
            if self.mtu < 1280:
                raise ValueError("IPv6 needs an mtu of at least 1280")
        if self.gateway6:
            if not self.address6:
                raise ValueError("gateway6 needs address6")
            ipaddress.IPv6Address(self.gateway6)
        if self.link_rate is None:
            if self.ll_share is not None or self.work_conserving is not None:
                raise ValueError("ll_share and work_conserving need link_rate (the rate to pace to, bits/s)")
        else:
            txsched.check_params(self.link_rate, 0.2 if self.ll_share is None else self.ll_share,
                                 True if self.work_conserving is None else self.work_conserving)


class PolicyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One `[[policy]]` entry (usnet.domain.lowlat.policy.PolicyEntry checks it)."""

    classes: list[str]
    max_rate: float
    max_packet: int
    uid: int | None = None
    program: str | None = None
    total_rate: float | None = None
    min_target: float | None = None

    def __post_init__(self) -> None:
        self.entry()

    def entry(self) -> PolicyEntry:
        return PolicyEntry(frozenset(self.classes), self.max_rate, self.max_packet, self.uid, self.program,
                           self.total_rate, self.min_target)


def group_id(group: str | int) -> int:
    """A group given by name or number, as a gid; ValueError if there is no such group."""
    if isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"no group {group!r}") from None


class AccessConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One `[[access]]` entry (usnet.domain.limits.AccessRule checks it)."""

    ports: str | int
    uid: int | None = None
    gid: str | int | None = None
    program: str | None = None

    def __post_init__(self) -> None:
        self.rule()

    def rule(self) -> AccessRule:
        return AccessRule(parse_ports(str(self.ports)), self.uid, None if self.gid is None else group_id(self.gid),
                          self.program, str(self.ports))


class ShareConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One `[[share]]` entry: uids that trust each other with the shared pipe names under `prefix`."""

    uids: list[int]
    prefix: str = "@"

    def __post_init__(self) -> None:
        self.share()

    def share(self) -> Share:
        return Share(frozenset(self.uids), self.prefix)


class DomainKwargs(TypedDict, total=False):
    """The `Domain(...)` keywords a config may set, those it sets (`Config.domain_kwargs`): unset
    ones are absent and keep the domain's defaults."""

    advisory_interval: float
    delay_target: float
    purge_after: float
    stall_after: float
    stall_defunct: float
    purge_below_mb: int


class PrivilegeKwargs(TypedDict):
    """`Domain(...)`'s and `Domain.set_privileges`'s privilege keywords (`Config.privilege_kwargs`)."""

    limits: Limits
    access: Access
    shares: tuple[Share, ...]


DomainKey = Literal["advisory_interval", "delay_target", "purge_after", "stall_after", "stall_defunct",
                    "purge_below_mb"]  # the keys of DomainKwargs, so mypy checks `domain_kwargs` by name

# Domain(...) keywords and their checks: seconds, seconds or 0 (off), MiB or 0 (off)
_DOMAIN_KEYS: dict[DomainKey, Callable[[str, Any], Any]] = {
    "advisory_interval": check_seconds, "delay_target": check_seconds, "purge_after": check_seconds,
    "stall_after": check_seconds, "stall_defunct": check_seconds_or_off, "purge_below_mb": check_megabytes}


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    socket: str = DEFAULT_SOCKET
    socket_mode: int | None = None  # None: 0o660 with socket_group, else 0o600
    socket_group: str | int | None = None
    unprivileged_port_start: int = 1024
    log_level: str = "INFO"
    # the Prometheus endpoint (usnet.domain.metrics): "unix:PATH", a loopback "HOST:PORT", or "off";
    # "" (the default): "metrics.sock" beside the control socket
    metrics: str = ""
    lease_ttl: float = DEFAULT_TTL
    rx_mitigation: bool = True
    loopback: bool = True  # the loopback netif "lo" (127.0.0.1/8, ::1): Domain.add_loopback
    advisory_interval: float | None = None
    delay_target: float | None = None
    purge_after: float | None = None
    purge_below_mb: int | None = None
    stall_after: float | None = None
    stall_defunct: float | None = None
    netif: list[NetifConfig] = []
    policy: list[PolicyConfig] = []
    access: list[AccessConfig] = []
    share: list[ShareConfig] = []
    limits: dict[str, int] = {}

    def __post_init__(self) -> None:
        check_ttl(self.lease_ttl)
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        if self.metrics:
            from usnet.domain.metrics import parse_address

            parse_address(self.metrics)  # a public address is refused here, with its reason
        if self.socket_mode is not None and not 0 <= self.socket_mode <= 0o777:
            raise ValueError(f"socket_mode must be a file mode from 0 to 0o777, not {self.socket_mode!r}")
        if self.socket_group is not None:
            group_id(self.socket_group)
        self.privilege_kwargs()
        for what, check in _DOMAIN_KEYS.items():
            if (v := getattr(self, what)) is not None:
                check(what, v)

    def domain_kwargs(self) -> DomainKwargs:
        """The advisory, purge and stall keys that are set, as `Domain(...)` keyword arguments
        (unset: the domain's defaults)."""
        kw = DomainKwargs()
        for k in _DOMAIN_KEYS:
            if (v := getattr(self, k)) is not None:
                kw[k] = v
        return kw

    def metrics_address(self, socket_path: str) -> str:
        """Where the metrics endpoint listens: the `metrics` key, or "metrics.sock" beside the control socket."""
        import os

        return self.metrics or f"unix:{os.path.join(os.path.dirname(os.path.abspath(socket_path)), 'metrics.sock')}"

    def socket_perms(self) -> tuple[int, int | None]:
        """(mode, gid or None) of the control socket: 0o660 with a group, 0o600 without, unless set."""
        gid = None if self.socket_group is None else group_id(self.socket_group)
        mode = self.socket_mode if self.socket_mode is not None else (0o600 if gid is None else 0o660)
        return mode, gid

    def privilege_kwargs(self) -> PrivilegeKwargs:
        """`limits`, `access` and `shares` as `Domain(...)` keyword arguments (usnet.domain.limits)."""
        try:
            limits = Limits(**self.limits)
        except TypeError:
            unknown = sorted(set(self.limits) - set(Limits.__dataclass_fields__))
            raise ValueError(f"unknown limits {unknown}; known: {sorted(Limits.__dataclass_fields__)}") from None
        access = Access(tuple(a.rule() for a in self.access), self.unprivileged_port_start,
                        frozenset({0, os.getuid()}))
        return PrivilegeKwargs(limits=limits, access=access, shares=tuple(s.share() for s in self.share))

    def agent_policy(self) -> Policy:
        """The low-latency agent's policy from the `[[policy]]` entries."""
        return Policy(p.entry() for p in self.policy)


def load(path: str) -> Config:
    """Read and check a config file; ValueError says what is wrong and where."""
    with open(path, "rb") as f:
        try:
            raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: {e}") from None
    try:
        return msgspec.convert(raw, Config)
    except (msgspec.ValidationError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def dump(cfg: Config) -> str:
    """TOML text for a config (what `usnet up` writes for usnetd)."""
    lines = [f'socket = "{cfg.socket}"', f'log_level = "{cfg.log_level}"']
    for k in ("socket_mode", "socket_group"):
        if (v := getattr(cfg, k)) is not None:
            lines.append(f"{k} = {_toml_value(v)}")
    if cfg.metrics:
        lines.append(f"metrics = {_toml_value(cfg.metrics)}")
    if cfg.unprivileged_port_start != 1024:
        lines.append(f"unprivileged_port_start = {cfg.unprivileged_port_start}")
    if cfg.lease_ttl != DEFAULT_TTL:
        lines.append(f"lease_ttl = {_toml_value(cfg.lease_ttl)}")
    if not cfg.rx_mitigation:
        lines.append("rx_mitigation = false")
    for k, v in cfg.domain_kwargs().items():
        lines.append(f"{k} = {_toml_value(v)}")
    if cfg.limits:
        lines.append("\n[limits]")
        lines += [f"{k} = {v}" for k, v in cfg.limits.items()]
    for table, items in (("netif", cfg.netif), ("policy", cfg.policy), ("access", cfg.access),
                         ("share", cfg.share)):
        for item in items:
            lines.append(f"\n[[{table}]]")
            for k in type(item).__struct_fields__:
                v = getattr(item, k)
                if v is None:
                    continue
                lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ", ".join(map(_toml_value, v)) + "]"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and math.isfinite(v):
        return repr(v)  # 50000000.0, 1e+20: both TOML floats
    return repr(str(v)).replace(chr(39), chr(34))


def make_driver(nc: NetifConfig) -> Driver:
    """Open the device a netif config names (and wrap it in a pcap tracer if asked)."""
    if nc.driver == "tap":
        from usnet.drivers.tap import TapDriver

        drv: Driver = TapDriver(nc.ifname or nc.name, mtu=nc.mtu, offload=nc.offload)
    elif nc.driver == "xdp":
        from usnet.drivers.xdp import XdpDriver

        drv = XdpDriver(nc.ifname or nc.name, mtu=nc.mtu, ports=nc.share_host, ll_queue=nc.ll_queue)
    else:
        from usnet.drivers.packet import PacketDriver

        drv = PacketDriver(nc.ifname or nc.name, mtu=nc.mtu)
    if nc.pcap:
        from usnet.drivers.pcap import PcapTracer

        drv = PcapTracer(drv, nc.pcap)
    return drv
