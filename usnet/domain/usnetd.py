"""usnetd: the nexus domain as a daemon, serving clients on a SEQPACKET socket.

Clients connect with `usnet.Client.connect(path)`; their identity is the uid
the kernel reports (SO_PEERCRED). SIGTERM and SIGINT stop it cleanly: every
channel is defuncted, so no client hangs, and every packet is back in its pool.
SIGHUP re-reads the config file and applies what changed and can change live
(usnet.domain.reload: policy, limits and privileges, log level, the stall and
purge knobs, netifs added, removed, and their rx_mitigation); what cannot
(the socket, a netif's device, addresses or pacing) is logged as refused and
stays as it was. A file that does not load leaves everything as it was, and
the log says why. Under systemd (`Type=notify`, `usnetd --print-unit`) it
says READY=1 once it serves, RELOADING=1/READY=1 around a reload and
STOPPING=1 (usnet.domain.sdnotify).

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
from typing import NoReturn

from usnet.abi.paths import DEFAULT_SOCKET
from usnet.abi.transport import listen_seqpacket
from usnet.domain import config, reload, sdnotify
from usnet.domain.loop import LOOPBACK, Domain
from usnet.domain.metrics import MetricsServer, parse_address
from usnet.domain.netif.linkshare import LinkShare

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


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (as the `usnet` command's, usnet.cli.errors.Parser)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}; see {self.prog} --help\n")


def _log_level(text: str) -> str:
    """An argparse type: one of logging's level names, any case."""
    if text.upper() not in config.LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"not a log level: {text!r} (one of {', '.join(config.LOG_LEVELS)})")
    return text.upper()


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="usnetd", description="the usnet nexus domain daemon")
    ap.add_argument("--config", help="TOML config file (netifs, socket, log level)")
    ap.add_argument("--socket", default=None, help=f"control socket path (default {DEFAULT_SOCKET})")
    ap.add_argument("--mode", type=lambda s: int(s, 8), default=None,
                    help="socket file mode, octal (default: the config's socket_mode; 0600, or 0660 with socket_group)")
    ap.add_argument("--log-level", default=None, type=_log_level, help="DEBUG, INFO, WARNING or ERROR")
    ap.add_argument("--workers", type=int, default=1,
                    help="processes serving the data path (default 1); with N > 1 each TAP netif gets N queues "
                         "(IFF_MULTI_QUEUE) and each packet netif N sockets in a PACKET_FANOUT group, the "
                         "kernel steering a received frame to queue (local port mod N) and ARP, ICMP and "
                         "fragments to queue 0, and a flow is served by the worker of its local port mod N "
                         "(usnet.domain.workers); an xdp netif stays on worker 0")
    ap.add_argument("--print-unit", action="store_true",
                    help="print a systemd unit that starts this usnetd (with --config, or /etc/usnet/usnetd.toml)")
    args = ap.parse_args(argv)
    if args.print_unit:
        print(sdnotify.unit_text(f"{sys.executable} -m usnet.domain.usnetd",
                                 os.path.abspath(args.config) if args.config else "/etc/usnet/usnetd.toml"), end="")
        return 0
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
    if args.workers < 1:
        print("usnetd: --workers must be at least 1", file=sys.stderr)
        return 2
    links: list = []
    own: dict = {}
    spawner = None
    shares: dict = {}  # netif name -> LinkShare: its paced queues' schedulers share its link_rate
    if args.workers > 1:  # before anything else is open: the workers are forked now
        from usnet.domain.workers.spawner import start_workers

        try:
            queues = _open_queues(cfg, args.workers)
        except (OSError, ValueError) as e:
            log.error("cannot open netif queues: %s", e)
            return 1
        # mapped before the fork: worker k (and its replacements) inherit the page and pace with us
        shares = {nc.name: LinkShare(args.workers) for nc in cfg.netif
                  if nc.name in queues and nc.link_rate is not None}
        # a dead worker is restarted by the spawner, which keeps the queues (a packet queue's
        # replacement finds its rings' positions again: PacketDriver.resume)
        links, own, spawner = start_workers(args.workers, queues,
                                            lambda k, cmd, drv: _worker(k, cmd, drv, cfg, shares, args.workers),
                                            keep=[])
    mode, gid = cfg.socket_perms()
    try:
        sock = listen_seqpacket(args.socket, mode=mode if args.mode is None else args.mode)
        if gid is not None:
            os.chown(args.socket, -1, gid)  # after the mode: until then only root may connect
    except OSError as e:
        log.error("cannot listen on %s: %s", args.socket, e)
        return 1
    make: type[Domain] = Domain
    extra: dict = {}
    if links:
        from usnet.domain.workers.sharded import ShardedDomain

        make, extra = ShardedDomain, {"links": links, "sharded": set(own), "spawner": spawner}
    domain = make(**extra, policy=cfg.agent_policy(), lease_ttl=cfg.lease_ttl, rx_mitigation=cfg.rx_mitigation,
                    **cfg.domain_kwargs(), **cfg.privilege_kwargs())
    try:
        for nc in cfg.netif:
            drv = own[nc.name] if nc.name in own else config.make_driver(nc)
            domain.add_netif(nc.name, drv, nc.address, nc.gateway, nc.mtu, address6=nc.address6,
                             gateway6=nc.gateway6, link_rate=nc.link_rate, ll_share=nc.ll_share,
                             work_conserving=nc.work_conserving, rx_mitigation=nc.rx_mitigation,
                             aqm=nc.aqm, link_peers=shares[nc.name].peer(0) if nc.name in shares else None)
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
    in_force = [cfg]  # the config applied: SIGHUP compares the file against it

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        sdnotify.notify("STOPPING=1")
        domain.request_stop()

    def hangup(_signum: int, _frame: object) -> None:
        domain.call_soon(lambda: _reload(args.config, domain, in_force))  # in the loop, not in the handler

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, hangup)
    if cfg.policy:
        log.info("low-latency policy: %d entries, leases last %g s", len(cfg.policy), cfg.lease_ttl)
    log.info("interface advisories: published every %g s, delay target %g s", domain.advisory_interval,
             domain.delay_target)
    log.info("listening on %s (pid %d)", args.socket, os.getpid())
    print(f"usnetd ready on {args.socket}", flush=True)
    sdnotify.notify("READY=1", f"MAINPID={os.getpid()}", f"STATUS=serving on {args.socket}")
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


def _open_queues(cfg: config.Config, n: int) -> dict:
    """`n` queues of every TAP netif (usnet.drivers.tap.TapDriver.queues) and every packet netif
    (usnet.drivers.packet.PacketDriver.queues, a PACKET_FANOUT group), by netif name: both steer
    a received frame to queue (local port mod n), as the workers share the ports."""
    from usnet.drivers.packet import PacketDriver
    from usnet.drivers.tap import TapDriver

    out: dict = {}
    try:
        for nc in cfg.netif:
            if nc.driver == "tap":
                out[nc.name] = TapDriver.queues(nc.ifname or nc.name, n, mtu=nc.mtu, offload=nc.offload)
            elif nc.driver == "packet":
                out[nc.name] = PacketDriver.queues(nc.ifname or nc.name, n, mtu=nc.mtu)
    except BaseException:
        for qs in out.values():
            for q in qs:
                q.close()
        raise
    if not out:
        raise ValueError("--workers needs a TAP or packet netif")
    return out


def _worker(k: int, cmd, drivers: dict, cfg: config.Config, shares: dict, n: int) -> int:
    """The body of worker k (a forked child): a Domain on queue k of every TAP and packet netif, until usnetd
    closes its command socket. SIGTERM stops it as it stops usnetd. A paced netif's queue paces
    with the other workers' through `shares` (usnet.domain.netif.linkshare): together at its link_rate."""
    from usnet.domain.workers.worker import WorkerDomain

    domain = WorkerDomain(cmd, index=k, workers=n, rx_mitigation=cfg.rx_mitigation, **cfg.domain_kwargs())
    signal.signal(signal.SIGTERM, lambda _s, _f: domain.request_stop())
    try:
        for nc in cfg.netif:
            if nc.name in drivers:
                domain.add_netif(nc.name, drivers[nc.name], nc.address, nc.gateway, nc.mtu, address6=nc.address6,
                                 gateway6=nc.gateway6, link_rate=nc.link_rate, ll_share=nc.ll_share,
                                 work_conserving=nc.work_conserving, rx_mitigation=nc.rx_mitigation, aqm=nc.aqm,
                                 link_peers=shares[nc.name].peer(k) if nc.name in shares else None)
        log.info("worker %d (pid %d): %d netif queue(s)", k, os.getpid(), len(drivers))
        domain.run()
    finally:
        domain.stop()
    return 0


def _reload(path: str | None, domain: Domain, in_force: list[config.Config]) -> None:
    """SIGHUP: apply the config file's changes (usnet.domain.reload), telling systemd around it."""
    if path is None:
        log.warning("reload skipped reason=no-config: started without --config, nothing to reload")
        return
    sdnotify.reloading()
    done = reload.reload(path, domain, in_force[0])
    in_force[0] = done.config
    sdnotify.notify("READY=1", f"STATUS={done.summary()}")


if __name__ == "__main__":
    sys.exit(main())
