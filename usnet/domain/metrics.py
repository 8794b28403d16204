"""Prometheus metrics of a domain, read from its own counters at scrape time.

Nothing here runs on the packet path: the collector reads the counters the
domain already keeps (the netifs', the switches' drops by reason, the flows',
the pools', the agent's, the control plane's) when a scraper asks, under the
domain lock, and builds the families after letting go of it. The endpoint is
served from a thread of its own (`MetricsServer`): a slow scraper holds only its
own connection, never the loop; a scrape holds the lock only while it copies the
figures.

The address is the config's `metrics` key: "unix:PATH" (the default, next to the
control socket), "HOST:PORT" on a loopback address, or "off". A non-loopback
address is refused: the endpoint has no authentication, and the figures say who
runs what.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import socketserver
import threading
from collections.abc import Iterator
from http.server import HTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from usnet.domain.loop import Domain

__all__ = ["DomainCollector", "MetricsServer", "parse_address", "render"]


def parse_address(text: str) -> tuple[str, Any] | None:
    """("unix", path) or ("tcp", (host, port)) of a `metrics` value; None for "off".

    A TCP address must be a loopback literal (127.0.0.0/8, ::1, or "localhost"):
    anything else is a ValueError that says why, in one line.
    """
    text = text.strip()
    if text in ("off", "none", "false"):
        return None
    if text.startswith("unix:"):
        path = text[5:]
        if not path.startswith("/"):
            raise ValueError(f"metrics: a Unix socket needs an absolute path, not {path!r}")
        return "unix", path
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"metrics must be \"unix:/PATH\", \"127.0.0.1:PORT\", \"[::1]:PORT\" or \"off\", "
                         f"not {text!r}")
    host = host.strip("[]")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"metrics: {host!r} is not an IP address (give a loopback address)") from None
    if not addr.is_loopback:
        raise ValueError(f"metrics: {host} is not a loopback address: the endpoint has no authentication, "
                         "so serve it on 127.0.0.1, ::1 or a Unix socket")
    return "tcp", (str(addr), int(port))


def _flow_label(f: dict) -> str:
    return f"{f['proto']}:{f['local_port']}" + (f"->{f['remote']}" if f.get("remote") else "")


class DomainCollector(Collector):
    """Families built from one snapshot of a domain's counters (taken under its lock)."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain

    def _snapshot(self) -> dict[str, Any]:
        d = self.domain
        with d.lock:
            st = d.status()
            extra: dict[str, Any] = {}
            for name, sw in d.switches.items():
                net = sw.netif
                adv = d.advisories.get(name)
                ll_f, ll_b, gen_f, gen_b = net.queue_totals()
                rings = {}
                for f in sw.flows.values():
                    port = f.port
                    if port.pipe.defunct_reason is None and not port.pipe.destroyed:
                        rings[f.id] = (port.rx.published_unconsumed(), port.tx_pending(),
                                       port.rx.capacity, port.rx_dropped)
                extra[name] = {
                    "queue": (ll_f, ll_b, gen_f, gen_b),
                    "delay": None if adv is None else adv.delay,
                    "trend": None if adv is None else int(adv.trend),
                    "tx_rate": None if adv is None else adv.tx_rate.rate,
                    "rx_rate": None if adv is None else adv.rx_rate.rate,
                    "rings": rings,
                    "monitors": [(m.offered, m.kept) for m in net.monitors if hasattr(m, "offered")],
                }
            ctl = {"requests": dict(getattr(d, "requests", {})), "errors": dict(getattr(d, "request_errors", {})),
                   "sessions_opened": getattr(d, "sessions_opened", 0)}
        return {"status": st, "extra": extra, "control": ctl}

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        st, extra, ctl = snap["status"], snap["extra"], snap["control"]
        yield from self._netifs(st, extra)
        yield from self._flows(st, extra)
        yield from self._pools(st)
        yield from self._agent(st)
        yield from self._control(st, ctl)

    def _netifs(self, st: dict, extra: dict) -> Iterator[Metric]:
        c = lambda n, h, lab=("netif",): CounterMetricFamily(f"usnet_netif_{n}", h, labels=list(lab))
        g = lambda n, h, lab=("netif",): GaugeMetricFamily(f"usnet_netif_{n}", h, labels=list(lab))
        fam = {
            "rx_frames": c("rx_frames", "Frames received from the device"),
            "rx_bytes": c("rx_bytes", "Bytes received from the device"),
            "tx_frames": c("tx_frames", "Frames the device took (a super-segment counts once)"),
            "tx_bytes": c("tx_bytes", "Bytes the device took"),
            "tx_expired": c("tx_expired", "Frames dropped at the netif past their deadline"),
        }
        drops = c("drops", "Frames and packets the flow switch dropped, by reason", ("netif", "reason"))
        counts = c("events", "Host duties and other counted events of the flow switch, by kind", ("netif", "kind"))
        frags = c("reassembly", "IP reassembly counters, by kind", ("netif", "kind"))
        drv = c("driver", "The device driver's own counters, by kind", ("netif", "kind"))
        queued = g("queue_frames", "Frames queued at the netif, by traffic class", ("netif", "class"))
        qbytes = g("queue_bytes", "Bytes queued at the netif, by traffic class", ("netif", "class"))
        aqm_d = c("codel_drops", "Frames CoDel dropped")
        aqm_m = c("codel_marks", "Frames CoDel marked CE")
        delay = g("advisory_queue_delay_seconds", "Transmit queueing delay the interface advisory published")
        trend = g("advisory_trend", "Rate trend the interface advisory suggests (1 up, 0 hold, -1 down)")
        rate = g("advisory_throughput_bits", "Throughput the interface advisory measured (bit/s)",
                 ("netif", "direction"))
        mon_o = c("monitor_frames_offered", "Frames that matched a monitor's filter (usnet capture)")
        mon_d = c("monitor_frames_dropped", "Of those, frames a monitor could not keep")
        for n in st["netifs"]:
            nif = n["netif"]
            name = nif["name"]
            for k, f in fam.items():
                f.add_metric([name], nif.get(k, 0))
            for reason, v in n["drops"].items():
                drops.add_metric([name, str(reason)], v)
            for kind, v in n["counts"].items():
                counts.add_metric([name, str(kind)], v)
            for kind, v in n.get("fragments", {}).items():
                if isinstance(v, (int, float)):
                    frags.add_metric([name, str(kind)], v)
            for kind, v in nif.get("driver_stats", {}).items():
                drv.add_metric([name, kind], v)
            if nif.get("aqm"):
                aqm_d.add_metric([name], nif["aqm"]["dropped"])
                aqm_m.add_metric([name], nif["aqm"]["marked"])
            x = extra.get(name)
            if x is not None:
                ll_f, ll_b, gen_f, gen_b = x["queue"]
                queued.add_metric([name, "ll"], ll_f)
                queued.add_metric([name, "general"], gen_f)
                qbytes.add_metric([name, "ll"], ll_b)
                qbytes.add_metric([name, "general"], gen_b)
                if x["delay"] is not None:
                    delay.add_metric([name], x["delay"])
                    trend.add_metric([name], _trend(x["trend"]))
                    rate.add_metric([name, "tx"], x["tx_rate"])
                    rate.add_metric([name, "rx"], x["rx_rate"])
                offered = sum(o for o, _ in x["monitors"])
                kept = sum(k for _, k in x["monitors"])
                mon_o.add_metric([name], offered)
                mon_d.add_metric([name], offered - kept)
        yield from fam.values()
        yield from (drops, counts, frags, drv, queued, qbytes, aqm_d, aqm_m, delay, trend, rate, mon_o, mon_d)

    def _flows(self, st: dict, extra: dict) -> Iterator[Metric]:
        lab = ["netif", "flow", "channel", "uid"]
        pk = CounterMetricFamily("usnet_flow_packets", "Packets of a flow, by direction", labels=[*lab, "direction"])
        by = CounterMetricFamily("usnet_flow_bytes", "Bytes of a flow, by direction", labels=[*lab, "direction"])
        dr = CounterMetricFamily("usnet_flow_drops", "Packets of a flow dropped, by direction",
                                 labels=[*lab, "direction"])
        ring = GaugeMetricFamily("usnet_flow_ring_occupancy", "Slots in use on a flow channel's ring",
                                 labels=[*lab, "ring"])
        cap = GaugeMetricFamily("usnet_flow_ring_capacity", "Slots of a flow channel's RX ring", labels=lab)
        susp = GaugeMetricFamily("usnet_flow_suspended", "1 while the flow's netif queue is full", labels=lab)
        flows = GaugeMetricFamily("usnet_flows", "Flows open on a netif", labels=["netif"])
        for n in st["netifs"]:
            name = n["netif"]["name"]
            rings = extra.get(name, {}).get("rings", {})
            flows.add_metric([name], len(n["flows"]))
            for f in n["flows"]:
                s = f["stats"]
                labels = [name, _flow_label(f), str(f["channel"]), str(f["pipe"]["uid"])]
                for d in ("tx", "rx"):
                    pk.add_metric([*labels, d], s.get(f"{d}_packets", 0))
                    by.add_metric([*labels, d], s.get(f"{d}_bytes", 0))
                r = rings.get(f["id"])
                dr.add_metric([*labels, "tx"], s.get("tx_dropped", 0))
                dr.add_metric([*labels, "rx"], s.get("rx_dropped", 0) if r is None else max(s.get("rx_dropped", 0),
                                                                                           r[3]))
                if r is not None:
                    ring.add_metric([*labels, "rx"], r[0])
                    ring.add_metric([*labels, "tx"], r[1])
                    cap.add_metric(labels, r[2])
                susp.add_metric(labels, 1 if f["suspended"] else 0)
        yield from (flows, pk, by, dr, ring, cap, susp)

    def _pools(self, st: dict) -> Iterator[Metric]:
        lab = ["pool", "kind"]
        seg = GaugeMetricFamily("usnet_pool_packets", "Packets of a pool, by state (free, in_alloc, held, purged)",
                                labels=lab)
        mem = GaugeMetricFamily("usnet_pool_memory_bytes", "Memory a pool's arena holds now", labels=["pool"])
        cap = GaugeMetricFamily("usnet_pool_capacity_packets", "The most packets a pool may grow to", labels=["pool"])
        pipes = list(st["pipes"]) + [f["pipe"] for n in st["netifs"] for f in n["flows"]]
        for p in pipes:
            pool = p["pool"]
            for k in ("free", "in_alloc", "held", "purged"):
                seg.add_metric([p["name"], k], pool.get(k, 0))
            cap.add_metric([p["name"]], pool.get("capacity", 0))
            mem.add_metric([p["name"]], p.get("memory_bytes", 0))
        purges = CounterMetricFamily("usnet_pool_pressure_purges", "Segments given back under memory pressure")
        purges.add_metric([], st["memory"]["pressure_purges"])
        pressure = GaugeMetricFamily("usnet_memory_pressure", "1 while MemAvailable is below purge_below_mb")
        pressure.add_metric([], 1 if st["memory"]["pressure"] else 0)
        yield from (seg, cap, mem, purges, pressure)

    def _agent(self, st: dict) -> Iterator[Metric]:
        ll = st["lowlat"]
        granted = CounterMetricFamily("usnet_leases_granted", "Low-latency leases granted")
        granted.add_metric([], ll["granted"])
        renewed = CounterMetricFamily("usnet_leases_renewed", "Low-latency leases renewed")
        renewed.add_metric([], ll["renewed"])
        refused = CounterMetricFamily("usnet_leases_refused", "Lease requests refused, by reason", labels=["reason"])
        for k, v in ll["refused"].items():
            refused.add_metric([str(k)], v)
        ended = CounterMetricFamily("usnet_leases_ended", "Leases ended (revoked, expired, released), by reason",
                                    labels=["reason"])
        for k, v in ll["ended"].items():
            ended.add_metric([str(k)], v)
        active = GaugeMetricFamily("usnet_leases", "Leases held now", labels=["netif"])
        for nif in ll["capacity"]:
            active.add_metric([nif], sum(1 for g in ll["leases"] if g["netif"] == nif))
        yield from (granted, renewed, refused, ended, active)

    def _control(self, st: dict, ctl: dict) -> Iterator[Metric]:
        sessions = GaugeMetricFamily("usnet_sessions", "Control sessions open")
        sessions.add_metric([], len(st["sessions"]))
        opened = CounterMetricFamily("usnet_sessions_opened", "Control sessions accepted")
        opened.add_metric([], ctl["sessions_opened"])
        req = CounterMetricFamily("usnet_control_requests", "Control requests served, by type", labels=["type"])
        for k, v in sorted(ctl["requests"].items()):
            req.add_metric([k], v)
        err = CounterMetricFamily("usnet_control_errors", "Control requests refused, by error code", labels=["code"])
        for k, v in sorted(ctl["errors"].items()):
            err.add_metric([k], v)
        faults = CounterMetricFamily("usnet_faults", "Exceptions stopped by a fault barrier")
        faults.add_metric([], st["faults"])
        yield from (sessions, opened, req, err, faults)


def _trend(t: int | None) -> int:
    """The advisory's Trend as -1 (DOWN), 0 (HOLD), 1 (UP)."""
    from usnet.abi.advisory import Trend

    return {Trend.UP: 1, Trend.DOWN: -1}.get(Trend(t), 0) if t is not None else 0


def render(domain: Domain) -> bytes:
    """The domain's metrics in the Prometheus text format, once."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DomainCollector(domain))
    return generate_latest(reg)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, _ = self.socket.accept()
        return conn, ("unix", 0)  # BaseHTTPRequestHandler wants (host, port)


class _TcpHTTPServer(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True


class MetricsServer:
    """The metrics endpoint: HTTP GET /metrics on a Unix socket or a loopback address, in a thread.

    Each scrape is served by a thread of its own, which takes the domain lock only
    while it copies the figures: the loop never waits on a scraper.
    """

    def __init__(self, domain: Domain, address: str, mode: int = 0o600, gid: int | None = None) -> None:
        where = parse_address(address)
        if where is None:
            raise ValueError("metrics are off")
        reg = CollectorRegistry(auto_describe=False)
        reg.register(DomainCollector(domain))
        handler = MetricsHandler.factory(reg)
        self.kind, self.address = where
        self.server: socketserver.BaseServer
        if self.kind == "unix":
            path = self.address
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if os.path.exists(path):
                os.unlink(path)  # a leftover of a usnetd that did not stop cleanly
            self.server = _UnixHTTPServer(path, handler)
            os.chmod(path, mode)
            if gid is not None:
                os.chown(path, -1, gid)
        else:
            host, port = self.address
            cls = type("_Tcp6", (_TcpHTTPServer,), {"address_family": socket.AF_INET6}) if ":" in host \
                else _TcpHTTPServer
            srv = cls((host, port), handler)
            self.server = srv
            self.address = (host, int(srv.server_address[1]))
        self._thread = threading.Thread(target=self.server.serve_forever, name="usnet-metrics", daemon=True)
        self._thread.start()

    def describe(self) -> str:
        return f"unix:{self.address}" if self.kind == "unix" else f"{self.address[0]}:{self.address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.kind == "unix":
            try:
                os.unlink(self.address)
            except FileNotFoundError:
                pass
