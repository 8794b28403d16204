"""usnetd: the nexus domain as a daemon, serving clients on a SEQPACKET socket.

Clients connect with `usnet.Client.connect(path)`; their identity is the uid
the kernel reports (SO_PEERCRED). SIGTERM and SIGINT stop it cleanly: every
channel is defuncted, so no client hangs, and every packet is back in its pool.
SIGHUP re-reads the config file and applies its low-latency policy
(`[[policy]]`, `lease_ttl`): leases it no longer entitles are revoked; and
its privilege rules (`[limits]`, `[[access]]`, `[[share]]`,
`unprivileged_port_start`) for what is opened from then on. A file that does
not load leaves the old rules in force, and the log says why.

The control socket gets the config's `socket_mode` and `socket_group`
(default 0o600, only root may connect; 0o660 with a group): who may connect
at all is the first privilege.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import sys

from usnet.abi.paths import DEFAULT_SOCKET
from usnet.abi.transport import listen_seqpacket
from usnet.domain import config
from usnet.domain.loop import LOOPBACK, Domain
from usnet.domain.metrics import MetricsServer, parse_address

__all__ = ["main"]

log = logging.getLogger("usnetd")


def _raise_nofile() -> None:
    """Take the whole descriptor allowance: every channel holds about a dozen (memfds, mappings,
    doorbells), and the soft limit (1024 by default) would cap usnetd at some tens of clients.
    The hard limit stays the operator's bound; past it accept() backs off (Domain._accept)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="usnetd", description="the usnet nexus domain daemon")
    ap.add_argument("--config", help="TOML config file (netifs, socket, log level)")
    ap.add_argument("--socket", default=None, help=f"control socket path (default {DEFAULT_SOCKET})")
    ap.add_argument("--mode", type=lambda s: int(s, 8), default=None,
                    help="socket file mode, octal (default: the config's socket_mode; 0600, or 0660 with socket_group)")
    ap.add_argument("--log-level", default=None)
    args = ap.parse_args(argv)
    try:
        cfg = config.load(args.config) if args.config else config.Config()
    except (OSError, ValueError) as e:
        print(f"usnetd: {e}", file=sys.stderr)
        return 2
    args.socket = args.socket or cfg.socket
    _raise_nofile()
    logging.basicConfig(level=(args.log_level or cfg.log_level).upper(),
                        format="%(asctime)s usnetd %(levelname)s %(message)s")
    os.makedirs(os.path.dirname(os.path.abspath(args.socket)), exist_ok=True)
    mode, gid = cfg.socket_perms()
    try:
        sock = listen_seqpacket(args.socket, mode=mode if args.mode is None else args.mode)
        if gid is not None:
            os.chown(args.socket, -1, gid)  # after the mode: until then only root may connect
    except OSError as e:
        log.error("cannot listen on %s: %s", args.socket, e)
        return 1
    domain = Domain(policy=cfg.agent_policy(), lease_ttl=cfg.lease_ttl, rx_mitigation=cfg.rx_mitigation,
                    **cfg.domain_kwargs(), **cfg.privilege_kwargs())
    try:
        for nc in cfg.netif:
            drv = config.make_driver(nc)
            domain.add_netif(nc.name, drv, nc.address, nc.gateway, nc.mtu, address6=nc.address6,
                             gateway6=nc.gateway6, link_rate=nc.link_rate, ll_share=nc.ll_share,
                             work_conserving=nc.work_conserving, rx_mitigation=nc.rx_mitigation,
                             aqm=nc.aqm)
            log.info("netif %s: %s driver on %s, address %s%s%s", nc.name, nc.driver, nc.ifname or nc.name,
                     nc.address, f", {nc.address6}" if nc.address6 else "",
                     f", paced to {nc.link_rate:g} bit/s" if nc.link_rate else "")
        if cfg.loopback and all(nc.name != LOOPBACK for nc in cfg.netif):
            domain.add_loopback()  # local applications reach each other at 127.0.0.1 and ::1
    except (OSError, ValueError) as e:
        log.error("cannot open netif: %s", e)
        domain.stop()
        sock.close()
        os.unlink(args.socket)
        return 1
    domain.listen(sock)
    metrics = None
    where = cfg.metrics_address(args.socket)
    if parse_address(where) is not None:
        try:
            metrics = MetricsServer(domain, where, mode=mode if args.mode is None else args.mode, gid=gid)
            log.info("metrics on %s", metrics.describe())
        except OSError as e:
            log.error("metrics: cannot listen on %s: %s (usnetd goes on without them)", where, e)

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        domain.request_stop()

    def hangup(_signum: int, _frame: object) -> None:
        domain.call_soon(lambda: reload_policy(args.config, domain))  # in the loop, not in the handler

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, hangup)
    if cfg.policy:
        log.info("low-latency policy: %d entries, leases last %g s", len(cfg.policy), cfg.lease_ttl)
    log.info("interface advisories: published every %g s, delay target %g s", domain.advisory_interval,
             domain.delay_target)
    log.info("listening on %s (pid %d)", args.socket, os.getpid())
    print(f"usnetd ready on {args.socket}", flush=True)
    try:
        domain.run()
    finally:
        if metrics is not None:
            metrics.close()
        domain.stop()
        sock.close()
        try:
            os.unlink(args.socket)
        except FileNotFoundError:
            pass
        log.info("stopped")
    return 0


def reload_policy(path: str | None, domain: Domain) -> None:
    """SIGHUP: the config file's policy and lease TTL, or, if it does not load, no change at all."""
    if path is None:
        log.warning("SIGHUP: started without --config, nothing to reload")
        return
    try:
        cfg = config.load(path)
    except (OSError, ValueError) as e:
        log.error("SIGHUP: keeping the old policy, the config does not load: %s", e)
        return
    revoked = domain.set_policy(cfg.agent_policy(), cfg.lease_ttl)
    domain.set_privileges(**cfg.privilege_kwargs())
    log.info("SIGHUP: policy reloaded: %d entries, leases last %g s, %d leases revoked%s", len(cfg.policy),
             cfg.lease_ttl, len(revoked), "".join(f" ({lease.id}: uid {lease.who.uid})" for lease in revoked))


if __name__ == "__main__":
    sys.exit(main())
