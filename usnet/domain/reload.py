"""usnetd's SIGHUP: re-read the config, apply what can change live, refuse (and log) what cannot.

What changes live, in the loop (Domain.call_soon), where no request is half-served:

- the low-latency policy and `lease_ttl` (leases the new policy no longer entitles are revoked);
- `[limits]`, `[[access]]`, `[[share]]`, `unprivileged_port_start` (for what is opened from now on);
- `log_level`, `stall_after`, `stall_defunct`, `purge_after`, `purge_below_mb`;
- netifs: a new `[[netif]]` is opened and added, one no longer in the file is removed (its
  channels defuncted, as at shutdown), and of a netif that stays, `rx_mitigation` (for flows
  opened from now on).

Everything else (the socket and its permissions, `loopback`, `advisory_interval`,
`delay_target`, `metrics`, the top-level `rx_mitigation`, and a netif's device, addresses,
MTU, pcap, offload, pacing and `aqm`) is fixed at start: a change is logged as refused, names the key,
the value in force and the one asked for, and is not applied (so the next SIGHUP reports it
again). A file that does not load changes nothing.

Each applied or refused change is one structured log line (`reload applied key=...`,
`reload refused key=... in_force=... asked=... reason=needs-restart`), and the outcome is
returned as a `Reload` so that tests and sd_notify's STATUS can say it too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from usnet.domain import config

if TYPE_CHECKING:
    from usnet.domain.loop import Domain

__all__ = ["LIVE_KEYS", "LIVE_NETIF_KEYS", "Reload", "reload"]

log = logging.getLogger("usnetd")

# top-level keys applied live (the tables policy/limits/access/share are the privilege and policy groups)
LIVE_KEYS = frozenset({"log_level", "lease_ttl", "policy", "limits", "access", "share", "unprivileged_port_start",
                       "stall_after", "stall_defunct", "purge_after", "purge_below_mb"})
LIVE_NETIF_KEYS = frozenset({"rx_mitigation"})  # aqm is not: CoDel's state follows every enqueue from the start
_DEFAULTS = {"stall_after": 10.0, "stall_defunct": 60.0, "purge_after": 30.0, "purge_below_mb": 256}


@dataclass
class Reload:
    """What one SIGHUP did: the config now in force, and the keys applied and refused."""

    config: config.Config
    applied: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    error: str | None = None  # the file did not load: nothing changed

    def summary(self) -> str:
        if self.error:
            return f"reload failed: {self.error}"
        return (f"reloaded: {len(self.applied)} applied"
                + (f", {len(self.refused)} refused (need a restart: {', '.join(self.refused)})"
                   if self.refused else ""))


def _q(v: Any) -> str:
    """A log value: quoted if it has spaces, so key=value lines split cleanly."""
    if isinstance(v, list):
        return f"{len(v)}-entries"
    s = str(v)
    return repr(s) if (" " in s or not s) else s


def reload(path: str, domain: Domain, current: config.Config) -> Reload:
    """Load `path` and apply its changes against `current` (the config in force); runs in the loop."""
    try:
        new = config.load(path)
    except (OSError, ValueError) as e:
        log.error("reload failed path=%s error=%s: keeping the config in force", path, _q(e))
        return Reload(current, error=str(e))
    out = Reload(current)
    keep: dict[str, Any] = {}  # refused keys: the value in force stays in the result
    for key in config.Config.__struct_fields__:
        if key == "netif":
            continue
        old, asked = getattr(current, key), getattr(new, key)
        if old == asked:
            continue
        if key in LIVE_KEYS:
            out.applied.append(key)
            if key not in ("policy", "lease_ttl", "limits", "access", "share", "unprivileged_port_start"):
                _apply_top(domain, key, asked)
            log.info("reload applied key=%s old=%s new=%s", key, _q(old), _q(asked))
        else:
            out.refused.append(key)
            keep[key] = old
            log.warning("reload refused key=%s in_force=%s asked=%s reason=needs-restart", key, _q(old), _q(asked))
    # the policy and privilege groups are applied whole every time, as before (idempotent)
    revoked = domain.set_policy(new.agent_policy(), new.lease_ttl)
    domain.set_privileges(**new.privilege_kwargs())
    for lease in revoked:
        log.info("reload revoked lease=%s uid=%d reason=policy", lease.id, lease.who.uid)
    keep["netif"] = _netifs(domain, current, new, out)
    out.config = msgspec.structs.replace(new, **keep)
    log.info("reload done path=%s applied=%d refused=%d policy_entries=%d lease_ttl=%g revoked=%d", path,
             len(out.applied), len(out.refused), len(new.policy), new.lease_ttl, len(revoked))
    return out


def _apply_top(domain: Domain, key: str, value: Any) -> None:
    if key == "log_level":
        logging.getLogger().setLevel(value.upper())
        return
    value = _DEFAULTS[key] if value is None else value
    setattr(domain, key, value)
    if key == "stall_after":  # the housekeeping tick follows it, as Domain.__init__ sets it
        domain.housekeeping_interval = min(1.0, value / 4)


def _netifs(domain: Domain, current: config.Config, new: config.Config, out: Reload) -> list[config.NetifConfig]:
    """Add, remove and adjust netifs; returns the netif list now in force."""
    old = {nc.name: nc for nc in current.netif}
    asked = {nc.name: nc for nc in new.netif}
    result: list[config.NetifConfig] = []
    for name, nc in old.items():
        if name not in asked:
            try:
                sw = domain.switches.get(name)
                domain.remove_netif(name)
                if sw is not None:
                    sw.netif.driver.close()
            except Exception as e:  # one netif's trouble is logged, the reload goes on
                log.error("reload netif=%s remove failed: %s", name, _q(e))
                result.append(nc)
                continue
            out.applied.append(f"netif {name} removed")
            log.info("reload applied netif=%s action=removed", name)
            continue
        want = asked[name]
        if want == nc:
            result.append(nc)
            continue
        live: dict[str, Any] = {}
        for key in config.NetifConfig.__struct_fields__:
            a, b = getattr(nc, key), getattr(want, key)
            if a == b:
                continue
            if key in LIVE_NETIF_KEYS:
                live[key] = b
                _apply_netif(domain, name, key, new.rx_mitigation if b is None and key == "rx_mitigation" else b)
                out.applied.append(f"netif {name} {key}")
                log.info("reload applied netif=%s key=%s old=%s new=%s", name, key, _q(a), _q(b))
            else:
                out.refused.append(f"netif {name} {key}")
                log.warning("reload refused netif=%s key=%s in_force=%s asked=%s reason=needs-restart", name, key,
                            _q(a), _q(b))
        result.append(msgspec.structs.replace(nc, **live))
    for name, nc in asked.items():
        if name in old:
            continue
        try:
            drv = config.make_driver(nc)
            domain.add_netif(nc.name, drv, nc.address, nc.gateway, nc.mtu, address6=nc.address6,
                             gateway6=nc.gateway6, link_rate=nc.link_rate, ll_share=nc.ll_share,
                             work_conserving=nc.work_conserving, rx_mitigation=nc.rx_mitigation, aqm=nc.aqm)
        except (OSError, ValueError) as e:
            log.error("reload netif=%s add failed: %s", name, _q(e))
            continue
        result.append(nc)
        out.applied.append(f"netif {name} added")
        log.info("reload applied netif=%s action=added driver=%s address=%s", name, nc.driver, nc.address)
    return result


def _apply_netif(domain: Domain, name: str, key: str, value: Any) -> None:
    if key == "rx_mitigation":
        domain.switches[name].rx_mitigation = bool(value)  # for flows opened from now on
