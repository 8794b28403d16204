"""The `usnet` command: demo, bench, status, flows, stats, advisory, capture, up, down and run."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import signal
import sys
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from usnet.abi.paths import DEFAULT_SOCKET
from usnet.bench.tables import fmt_rate as _rate
from usnet.cli import errors
from usnet.cli.shown import shown

__all__ = ["main"]


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:,.0f}"


def _unwind_on_sigterm() -> None:
    """A bench stopped by SIGTERM (timeout(1), a CI's kill) unwinds as an exception does, so its
    `finally` blocks stop its usnetd and peers and remove its namespace and TAP: with SIGTERM's
    default action the process died at once and left them behind (three usnetd processes and
    their namespaces were found orphaned after benchmarks run under `timeout`). Exit status
    128 + SIGTERM, as a process the signal killed reports to a shell.

    Python drops an exception raised in a `__del__` or a weakref callback ("Exception ignored
    in"), and a handler runs in whatever code is at hand, so the SystemExit can be lost and the
    bench go on to its end: the signal is also recorded, and cmd_bench then exits 143 all the same
    (a run of the SIGTERM test exited 0 once)."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)


_TERMINATED: list[int] = []  # the signal that asked the bench to stop, if one did


def _terminate(signum: int, _frame: object) -> None:
    _TERMINATED.append(signum)
    sys.exit(128 + signum)


def cmd_bench(args: argparse.Namespace) -> int:
    """Measure (progress on stderr), then print one JSON object or the tables."""
    _unwind_on_sigterm()
    measure, show = _BENCHES[args.what]
    result = measure(args, Console(stderr=True, quiet=args.json))
    if _TERMINATED:  # its SystemExit was lost (see _unwind_on_sigterm): not a result
        return 128 + _TERMINATED[0]
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        show(result, Console())
    return 0


def _measure_udp(args: argparse.Namespace, console: Console) -> dict:
    from usnet.bench.report import run_udp_bench

    return run_udp_bench(quick=args.quick, console=console)


def _show_udp(result: dict, out: Console) -> None:
    table = Table(title="usnet bench udp: datagrams/s, one application to another")
    for col in ("size", "usnet (flow switch, memwire)", "kernel UDP loopback", "ratio", "delivered"):
        table.add_column(col, justify="right")
    for r in result["results"]:
        table.add_row(str(r["size"]), _fmt(r["usnet_dps"]), _fmt(r["kernel_dps"]), f"{r['ratio']:.2f}",
                      f"{r['usnet_delivered']:,}/{r['sent']:,}")
    out.print(table)
    t = result["tap"]
    if "skipped" in t:
        out.print(f"TAP frames/s: skipped ({t['skipped']})")
    else:
        out.print(f"TAP frames/s (64 B, the kernel as peer, in a namespace of the bench's own): usnet → kernel "
                  f"{_fmt(t['usnet_to_kernel_fps'])}, kernel → usnet {_fmt(t['kernel_to_usnet_fps'])}")


_NEEDS_TAP = "needs root and /dev/net/tun (it makes a TAP device)"


def _run_bench(name: str, run: Callable[..., dict], args: argparse.Namespace, console: Console,
               lacks: str | None = None) -> dict | None:
    """`run(quick, progress=...)` under a status line; None, said in one line, if it `lacks` something."""
    if lacks is not None:
        print(f"usnet bench {name} {lacks}", file=sys.stderr)
        return None
    with console.status(f"bench {name}") as status:
        return run(args.quick, progress=lambda what: status.update(what))


def _tap_lacks(what: str = _NEEDS_TAP) -> str | None:
    from usnet.bench import tap

    return None if tap.available() else what


def _measure_tcp(args: argparse.Namespace, console: Console) -> dict | None:
    from usnet.bench import tcp

    return _run_bench("tcp", tcp.run, args, console, _tap_lacks())


def _show_tcp(result: dict, out: Console) -> None:
    table = Table(title="usnet bench tcp: usnet over TAP (the kernel as peer, in a namespace of its own) "
                        f"against kernel TCP loopback; "
                        f"{result['bytes'] // 1_000_000} MB each way; {result['connections']:,} connections "
                        f"accepted ({result['concurrency']} clients at once) and {result['connections']:,} "
                        f"opened one by one")
    for col in ("test", "usnet", "kernel loopback", "ratio"):
        table.add_column(col, justify="right")
    for r in result["results"]:
        unit = "MBps" if "usnet_MBps" in r else "cps"
        us, k = r[f"usnet_{unit}"], r[f"kernel_{unit}"]
        label = "MB/s" if unit == "MBps" else "connections/s"
        table.add_row(r["test"], f"{us:,.1f} {label}", f"{k:,.1f} {label}", f"{us / k:.2f}")
    out.print(table)


def _measure_http(args: argparse.Namespace, console: Console) -> dict | None:
    from usnet.bench import http_bench

    return _run_bench("http", http_bench.run, args, console, http_bench.available())


def _show_http(result: dict, out: Console) -> None:
    table = Table(title=f"usnet bench http: one HTTP/1.1 keep-alive asyncio server under wrk, "
                        f"{result['seconds']:g} s a point; usnet over TAP against kernel loopback "
                        f"(wrk and the kernel server in a namespace of the bench's own)")
    for col in ("conns", "usnet req/s", "kernel req/s", "ratio", "usnet p99", "kernel p99", "ratio"):
        table.add_column(col, justify="right")
    for r in result["results"]:
        table.add_row(str(r["connections"]), _fmt(r["usnet_rps"]), _fmt(r["kernel_rps"]), f"{r['ratio_rps']:.2f}",
                      f"{r['usnet_p99_ms']:.2f} ms", f"{r['kernel_p99_ms']:.2f} ms", f"{r['ratio_p99']:.2f}")
    out.print(table)
    t = result["target"]
    out.print(f"target at 10 connections: usnet ≥ {t['ratio_rps_at_10']:g}× kernel requests/s and p99 ≤ "
              f"{t['ratio_p99_at_10']:g}× kernel's: {'met' if t['met'] else 'not met'}")
    bad = [f"{r['connections']} conn {side}: {r[side]['socket_errors']}, non-2xx {r[side]['non_2xx']}"
           for r in result["results"] for side in ("usnet", "kernel")
           if any(r[side]["socket_errors"].values()) or r[side]["non_2xx"]]
    if bad:
        out.print("[red]wrk saw errors:[/red] " + "; ".join(bad))


def _measure_lossy(args: argparse.Namespace, console: Console) -> dict | None:
    from usnet.bench import lossy

    return _run_bench("lossy", functools.partial(lossy.run, cc=args.cc), args, console,
                      _tap_lacks("needs root and /dev/net/tun (it makes a TAP, a veth and namespaces)"))


def _show_lossy(result: dict, out: Console) -> None:
    imp = result["impairment"]
    cc = result.get("cc", "cubic")
    table = Table(title=f"usnet bench lossy ({cc} on every sender): {result['bytes'] // 1_000_000} MB each way "
                        f"(median of {result['rounds']}) over one veth that drops "
                        f"{imp['drop']:.0%}, duplicates {imp['duplicate']:.0%} and holds back "
                        f"{imp['reorder']:.0%} for {imp['reorder_delay_ms']:g} ms (tc BPF, both ways); "
                        f"usnet through its TAP, the kernel between the veth's namespaces")
    for col in ("direction", "MB/s", "sender's RTOs", "RTOs per 20 MB", "retransmitted segments"):
        table.add_column(col, justify="right")
    from usnet.bench.lossy import LABELS

    for r in result["results"]:
        table.add_row(LABELS[r["test"]], f"{r['MBps']:,.1f}", str(r["rto"]), f"{r['rto_per_20MB']:.1f}",
                      f"{r['retrans']:,}")
    out.print(table)
    t = result["target"]
    out.print(f"usnet/kernel throughput: sending {result['ratio_tx']:.2f}, receiving {result['ratio_rx']:.2f}")
    out.print(f"target ({cc} against {cc}): usnet ≥ {t['ratio']:g}× the kernel's throughput each way and "
              f"≤ {t['rto_per_20MB']:g} RTO per 20 MB as a sender: {'met' if t['met'] else 'not met'}")


def _measure_pipe(args: argparse.Namespace, console: Console) -> dict:
    from usnet.bench.report import run_pipe_bench

    return run_pipe_bench(quick=args.quick, console=console)


def _show_pipe(result: dict, out: Console) -> None:
    table = Table(title="usnet bench pipe: messages/s, one process to another")
    for col in ("size", "usnet", "socketpair", "udp", "mp.Queue", "× socketpair"):
        table.add_column(col, justify="right")
    for r in result["results"]:
        size = f"{r['size']} zero-copy" if r.get("zero_copy") else str(r["size"])
        table.add_row(size, _fmt(r["usnet_mps"]), _fmt(r["socketpair_mps"]),
                      _fmt(r["udp_mps"]), _fmt(r["mpqueue_mps"]), f"{r['ratio_socketpair']:.2f}")
    out.print(table)
    extra = result["extra"]
    out.print(f"one process sending to itself through a pipe: {_fmt(extra['self_pps_64'])} packets/s at 64 B "
              f"(per-packet cost without a context switch)")
    out.print(f"memory per channel: {extra['memory_per_channel']['touched_bytes']:,} bytes touched at open, "
              f"{extra['memory_per_channel']['reserved_bytes']:,} bytes reserved (sparse)")


def _measure_lowlat(args: argparse.Namespace, console: Console) -> dict | None:
    from usnet.bench import lowlat

    return _run_bench("lowlat", lowlat.run, args, console)


def _show_lowlat(result: dict, out: Console) -> None:
    table = Table(title=f"usnet bench lowlat: a {result['ll_packets']}-datagram LL flow (200 B every 5 ms) beside "
                        f"{result['bulk_flows']} bulk flows on a {result['link_rate_bps'] / 1e6:g} Mbit/s memwire, "
                        f"{result['ll_share']:.0%} of the slots reserved for LL")
    for col in ("figure", "value", "target"):
        table.add_column(col, justify="right")
    idle, ll99, gen99 = result["idle_p99_ms"], result["ll_p99_ms"], result["general_p99_ms"]
    rows = [
        ("idle p99", f"{idle:.2f} ms", ""),
        ("LL p50 (granted)", f"{result['ll_p50_ms']:.2f} ms", ""),
        ("LL p99 (granted)", f"{ll99:.2f} ms", f"<= {min(2 * idle, gen99 / 10):.2f} ms"),
        ("general p50", f"{result['general_p50_ms']:.2f} ms", ""),
        ("general p99", f"{gen99:.2f} ms", ""),
        ("bulk share of the general capacity", f"{result['bulk_share']:.2f}", ">= 0.90"),
        ("LL datagrams lost", str(result["ll_lost"]), "0"),
    ]
    xdp = result.get("xdp") or {}
    if "lane" in xdp:  # receive through AF_XDP under the same bulk load (issue 19): lane beside copy
        lane, copy = xdp["lane"], xdp["copy"]
        rows += [
            ("AF_XDP LL receive p50: zero-copy lane / copying path",
             f"{lane['p50_ms']:.2f} / {copy['p50_ms']:.2f} ms", ""),
            ("AF_XDP LL receive p99: zero-copy lane / copying path",
             f"{lane['p99_ms']:.2f} / {copy['p99_ms']:.2f} ms", "lane < copy"),
            # the copying path may lose LL frames with the bulk: that is what the lane is for
            ("AF_XDP LL lost: lane / copy", f"{lane['lost']} / {copy['lost']}", "0 / -"),
        ]
    elif "skipped" in xdp:
        rows.append(("AF_XDP lane", f"skipped: {xdp['skipped']}", ""))
    for r in rows:
        table.add_row(*r)
    out.print(table)


def _measure_rxmit(args: argparse.Namespace, console: Console) -> dict | None:
    from usnet.bench import rxmit

    return _run_bench("rxmit", rxmit.run, args, console)


def _show_rxmit(result: dict, out: Console) -> None:
    table = Table(title=f"usnet bench rxmit: {result['size']} B datagrams to a client asleep on its bell; "
                        f"wake-ups and bells per 1,000 received (median of {result['runs']} runs)")
    for col in ("sender", "mitigation", "datagrams/s", "delivered", "wake-ups/1k", "bells/1k"):
        table.add_column(col, justify="right")
    for r in result["results"]:
        table.add_row(r["mode"], "on" if r["rx_mitigation"] else "off", _fmt(r["dps"]),
                      f"{r['got']:,}/{r['sent']:,}", f"{r['wakeups_per_1k']:.1f}", f"{r['bells_per_1k']:.1f}")
    out.print(table)


def _measure_scale(args: argparse.Namespace, console: Console) -> dict | None:
    from usnet.bench import scale

    return _run_bench("scale", scale.run, args, console, _tap_lacks())


def _show_scale(result: dict, out: Console) -> None:
    table = Table(title=f"usnet bench scale: the next {result['accepts_per_point']:,} accepts and "
                        f"{result['connects_per_point']:,} outgoing connections with N already open; "
                        f"usnet over TAP against kernel loopback (kernel clients and servers in a "
                        f"namespace of the bench's own)")
    for col in ("open", "usnet accept/s", "kernel accept/s", "ratio", "usnet connect/s", "kernel connect/s",
                "ratio"):
        table.add_column(col, justify="right")
    for r in result["results"]:
        table.add_row(f"{r['open']:,}", _fmt(r["usnet_accept_cps"]), _fmt(r["kernel_accept_cps"]),
                      f"{r['ratio_accept']:.2f}", _fmt(r["usnet_connect_cps"]), _fmt(r["kernel_connect_cps"]),
                      f"{r['ratio_connect']:.2f}")
    out.print(table)
    out.print("the collector in usnet's timed accepts (settled before each): "
              + ", ".join(f"{r['open']:,} open {r['usnet_gc_seconds'] * 1e3:,.0f} ms ({r['usnet_gc_full']} full)"
                          for r in result["results"]))
    udp = Table(title=f"UDP datagrams/s through the flow switch (embedded domain, memwire), 64 B, "
                      f"N flows of one application taking turns ({result['udp_batch']} a turn) to one flow")
    for col in ("flows", "datagrams/s", "× 1 flow", "delivered"):
        udp.add_column(col, justify="right")
    for r in result["udp"]:
        udp.add_row(f"{r['flows']:,}", _fmt(r["dps"]), f"{r['ratio_to_1']:.2f}", f"{r['delivered']:,}/{r['sent']:,}")
    out.print(udp)
    m = result["memory"]
    usnetd = m["usnetd_bytes_per_conn"]
    out.print(f"memory per open connection ({m['connections']:,} held): application RSS "
              f"{m['app_bytes_per_conn'] / 1024:,.1f} KiB, usnetd RSS "
              f"{'n/a' if usnetd is None else f'{usnetd / 1024:,.1f} KiB'}")
    out.print(f"RLIMIT_NOFILE {result['nofile']:,}: the kernel's side holds a descriptor a connection (a usnet "
              f"socket none until its fileno() is asked for), so the top count is at most what the limit leaves")
    t = result["target"]
    top = result["levels"][-1]
    out.print(f"target: accept ≥ {t['accept_cps_at_top']:,.0f}/s at {top:,} open and within 20 % of the rate at 0 "
              f"({_fmt(t['accept_at_top'])}/s, {t['accept_ratio']:.2f}×): {'met' if t['accept_met'] else 'not met'}")
    out.print(f"target: outgoing connect ≥ {t['connect_cps']:,.0f}/s at every count: "
              f"{'met' if t['connect_met'] else 'not met'}")
    out.print(f"target: UDP at {result['udp'][-1]['flows']:,} flows within 20 % of 1 flow ({t['udp_ratio']:.2f}×): "
              f"{'met' if t['udp_met'] else 'not met'}")


def _measure_xdp(args: argparse.Namespace, console: Console) -> dict | None:
    from usnet.bench import xdp

    return _run_bench("xdp", xdp.run, args, console, xdp.available())


def _show_xdp(result: dict, out: Console) -> None:
    table = Table(title=f"usnet bench xdp: frames/s of each driver alone on one veth ({result['count']:,} frames "
                        f"a run; the kernel as peer, in a namespace of the bench's own)")
    for col in ("driver", "mode", "direction", "frame", "frames/s", "delivered"):
        table.add_column(col, justify="right")
    for r in result["results"]:
        way = "driver → kernel" if r["direction"] == "tx" else "kernel → driver"
        table.add_row(r["driver"], r["mode"], way, f"{r['size']} B", _fmt(r["fps"]),
                      f"{r['delivered']:,}/{r['sent']:,}")
    out.print(table)


_BENCHES = {"pipe": (_measure_pipe, _show_pipe), "udp": (_measure_udp, _show_udp), "tcp": (_measure_tcp, _show_tcp),
            "http": (_measure_http, _show_http), "lowlat": (_measure_lowlat, _show_lowlat),
            "rxmit": (_measure_rxmit, _show_rxmit), "lossy": (_measure_lossy, _show_lossy),
            "scale": (_measure_scale, _show_scale), "xdp": (_measure_xdp, _show_xdp)}


def cmd_demo(args: argparse.Namespace) -> int:
    from usnet.bench.demo import run_demo

    if args.plot:
        from usnet.bench.plot import PlotUnavailable, require_matplotlib

        try:
            require_matplotlib()  # before measuring: a missing matplotlib should cost one line, not a demo
        except PlotUnavailable as e:
            print(f"usnet demo: {e}", file=sys.stderr)
            return 2
    return run_demo(Console(), packets=args.packets, phase=args.phase, plot=args.plot)


_seconds = errors.seconds  # argparse types (usnet.cli.errors); the old names stay for their tests
_bits = errors.bits


def _connect(path: str):
    from usnet.client import Client

    try:
        return Client.connect(path)
    except PermissionError:
        print(f"usnet: usnetd at {path} lets only root (or its socket_group) in; "
              f"{errors.ROOT_HINT}", file=sys.stderr)
        return None
    except OSError as e:
        why = e.strerror or str(e)
        if "usnetd" not in why:
            why = f"cannot reach usnetd at {path} ({why})"
        print(f"usnet: {why}; or name its socket with --socket", file=sys.stderr)
        return None


def cmd_flows(args: argparse.Namespace) -> int:
    """Every flow of every netif, with its TCP connections under it (a listener's accepted ones, a
    connector's outgoing ones) in their TCP state, and the process that owns it. Addresses are
    never cut: they fold, or with --wide the table is as wide as it needs."""
    client = _connect(args.socket)
    if client is None:
        return 1
    info = client.status()
    if args.json:
        print(json.dumps(info["netifs"], default=str))
        return 0
    t = Table(title="flows")
    for c in ("netif", "proto", "local", "remote", "process", "channel", "tx", "rx", "dropped", "state"):
        t.add_column(c, overflow="fold", no_wrap=args.wide,
                     min_width={"local": 15, "remote": 15, "proto": 8, "state": 10}.get(c, len(c)))
    for nif in info["netifs"]:
        ip = nif["netif"]["address"].split("/")[0]
        ip6 = f"[{(nif['netif'].get('address6') or '').split('/')[0]}]"
        for f in nif["flows"]:
            st = f["stats"]
            addr = ip6 if f.get("family") == 6 else ip
            o = f.get("owner")
            proc = shown(f"{o['pid']}/{o['program']}" if o else "")
            tcp = (f.get("tcp") or {}).get("rows", [])
            conns = [r for r in tcp if not r["listener"]]
            if f.get("stalled"):
                state = "stalled"
            elif f["suspended"]:
                state = "suspended"
            elif f.get("connector"):
                state = "connector"
            elif f["remote"]:  # a connected TCP flow: its connection's own state (SYN-SENT until it is)
                state = conns[0]["state"] if f["proto"] == "tcp" and conns else "connected"
            else:
                state = "LISTEN" if f["proto"] == "tcp" else "bound"
            local = f"{addr}:{f['local_port']}" if not f.get("connector") else f"{addr}:*"
            t.add_row(nif["netif"]["name"], f["proto"], local, f["remote"] or "*:*", proc,
                      str(f["channel"]), str(st.get("tx_packets", 0)), str(st.get("rx_packets", 0)),
                      str(st.get("tx_dropped", 0) + st.get("rx_dropped", 0)), state)
            if f["remote"]:
                continue
            kind = "outgoing" if f.get("connector") else "accepted"
            for r in conns:  # each connection the listener accepted, or the connector opened
                t.add_row("", kind, f"{addr}:{r['local_port']}", r["remote"], proc, "", "", "", "", r["state"])
    # Never narrower than the columns' least widths: rich would crop the columns past the edge; a
    # line wider than the terminal wraps there instead, and every cell folds within its column.
    Console(width=10_000 if args.wide else max(Console().width, 132)).print(t)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    client = _connect(args.socket)
    if client is None:
        return 1
    info = client.status()
    if args.json:
        print(json.dumps({n["netif"]["name"]: {"netif": n["netif"], "drops": n["drops"], "counts": n["counts"],
                                               "fragments": n.get("fragments", {})}
                          for n in info["netifs"]}, default=str))
        return 0
    con = Console()
    for n in info["netifs"]:
        nif = n["netif"]
        t = Table(title=f"{nif['name']} ({nif['driver']}, {nif['address']}, mac {nif['mac']})")
        t.add_column("counter")
        t.add_column("value", justify="right")
        for k in ("rx_frames", "rx_bytes", "tx_frames", "tx_bytes", "queued"):
            t.add_row(k, f"{nif[k]:,}")
        for k, v in sorted(n["counts"].items()):
            t.add_row(k, f"{v:,}")
        for k, v in sorted(n["drops"].items()):
            t.add_row(f"drop: {k}", f"{v:,}")
        for k, v in sorted(n.get("fragments", {}).items()):  # the reassembler's (usnet.proto.reassembly)
            t.add_row(f"reassembly: {k}", f"{v:,}")
        con.print(t)
    return 0


def _advisory_table(a) -> Table:
    """One netif's advisory (a consistent snapshot, usnet.abi.advisory): fields down, TX and RX across."""
    import time

    t = Table(title=f"{a.netif}: interface advisory (seq {a.seq})")
    for c in ("", "TX", "RX"):
        t.add_column(c, justify="left" if not c else "right")
    now = time.monotonic_ns()
    tx, rx = a.tx, a.rx
    colour = {"DOWN": "[red]DOWN[/]", "UP": "[green]UP[/]"}
    t.add_row("rate trend", *(colour.get(n, n) for n in (tx.as_dict()["trend"], rx.as_dict()["trend"])))
    t.add_row("throughput", _rate(tx.throughput), _rate(rx.throughput))
    t.add_row("max bandwidth", *(_rate(r.max_bandwidth) if r.max_bandwidth else "unknown" for r in (tx, rx)))
    t.add_row("bytes", f"{tx.bytes:,}", f"{rx.bytes:,}")
    t.add_row("packets", f"{tx.packets:,}", f"{rx.packets:,}")
    t.add_row("LL queue", f"{tx.ll_queued_packets:,} pkts, {tx.ll_queued_bytes:,} B", "")
    t.add_row("general queue", f"{tx.general_queued_packets:,} pkts, {tx.general_queued_bytes:,} B", "")
    t.add_row("queueing delay", f"{tx.queue_delay_ns / 1e6:,.2f} ms (target {tx.target_delay_ns / 1e6:g})", "")
    t.add_row("LL slot use", f"{tx.ll_slot_use_ppm / 1e4:.1f} %" if tx.paced else "not paced", "")
    t.add_row("published", *("netif gone" if r.gone else f"{max(0, now - r.timestamp_ns) / 1e9:.1f} s ago"
                             + (" (idle)" if r.idle else "") for r in (tx, rx)))
    return t


def cmd_advisory(args: argparse.Namespace) -> int:
    """Read the advisories straight from their read-only memory; the daemon is asked only for the fds."""
    import time

    from rich.console import Group
    from rich.live import Live

    client = _connect(args.socket)
    if client is None:
        return 1
    names = [args.netif] if args.netif else [n["netif"]["name"] for n in client.status()["netifs"]]
    readers = []
    try:
        for name in names:
            readers.append(client.advisory(name))  # an unknown netif: one line from usnet.cli.errors
        if args.json:
            print(json.dumps({r.netif: r.snapshot().as_dict() for r in readers}))
            return 0
        if args.once:
            Console().print(*(_advisory_table(r.snapshot()) for r in readers))
            return 0
        try:
            with Live(refresh_per_second=4) as live:
                while True:
                    snaps = [r.snapshot() for r in readers]
                    live.update(Group(*map(_advisory_table, snaps)))
                    if snaps and all(a.tx.gone for a in snaps):
                        return 0  # every netif went away: nothing more will come
                    time.sleep(0.25)
        except KeyboardInterrupt:
            return 0
    finally:
        for r in readers:
            r.close()


def cmd_up(args: argparse.Namespace) -> int:
    from usnet.domain import launch as updown
    return updown.up(args.driver, args.ifname, args.address, args.host_address,
                     args.run_dir or updown.RUN_DIR, pcap=args.pcap, address6=args.address6,
                     host_address6=args.host_address6, link_rate=args.link_rate, ll_share=args.ll_share,
                     strict=args.strict, netns=args.netns, config_file=args.config, policy_file=args.policy,
                     metrics=args.metrics)


def cmd_down(args: argparse.Namespace) -> int:
    from usnet.domain import launch as updown
    return updown.down(args.run_dir or updown.RUN_DIR)


def cmd_status(args: argparse.Namespace) -> int:
    client = _connect(args.socket)
    if client is None:
        return 1
    info = client.status()
    if args.json:
        print(json.dumps(info, default=str))
        return 0
    con = Console()
    t = Table(title="sessions")
    for c in ("id", "uid", "pid", "program", "channels", "refused"):
        t.add_column(c)
    for s in info["sessions"]:
        t.add_row(str(s["id"]), str(s["uid"]), str(s["pid"]), shown(s["program"]), str(s["channels"]),
                  str(s["refused"]))
    con.print(t)
    t = Table(title="user pipes")
    for c in ("name", "schema", "uid", "free", "in alloc", "held", "purged", "memory", "stalled", "defunct"):
        t.add_column(c)
    for p in info["pipes"]:
        pool = p["pool"]
        stalled = ", ".join(f"end {e['role']}" for e in p["ends"] if e.get("stalled"))
        t.add_row(shown(p["name"]), shown(p["schema"]), str(p["uid"]), str(pool["free"]), str(pool["in_alloc"]),
                  str(pool["held"]), str(pool["purged"]), f"{p['memory_bytes']:,}", stalled,
                  str(p["defunct"] or ""))
    con.print(t)
    stalled_flows = [(n["netif"]["name"], f) for n in info.get("netifs", ()) for f in n["flows"]
                     if f.get("stalled") or f["stats"].get("rx_dropped_stalled")]
    if stalled_flows:
        t = Table(title="flows that stopped reading")
        for c in ("netif", "channel", "proto", "local port", "stalled", "dropped while stalled"):
            t.add_column(c)
        for name, f in stalled_flows:
            t.add_row(name, str(f["channel"]), str(f["proto"]), str(f["local_port"]), "yes" if f["stalled"] else "no",
                      f"{f['stats'].get('rx_dropped_stalled', 0):,}")
        con.print(t)
    if "memory" in info:  # a usnetd from before issue 14 reports none
        m = info["memory"]
        below = f"purge below {m['purge_below_mb']} MiB available" if m["purge_below_mb"] else "check off"
        con.print(f"memory: {'[red]under pressure[/]' if m['pressure'] else 'no pressure'} "
                  f"({below}; {m['pressure_purges']} segments given back under pressure); "
                  f"channels stall after {m['stall_after']:g} s unread, "
                  + (f"defunct {m['stall_defunct']:g} s later" if m["stall_defunct"] else "never defunct"))
    if info.get("workers"):  # usnetd --workers N: its processes, and how often each was restarted
        t = Table(title="workers")
        for c in ("worker", "pid", "restarts", "draining", "state"):
            t.add_column(c)
        for w in info["workers"]:
            # departed clients' sessions it has not ended yet, whose ports usnetd holds till it has
            d = w.get("draining") or {}
            t.add_row(str(w["index"]), str(w["pid"] or "-"), str(w.get("restarts", 0)),
                      f"{d['sessions']} session(s), {d['ports']} port(s)" if d.get("sessions") else "-",
                      f"[red]{w['error']}[/]" if "error" in w else "serving")
        con.print(t)
    if "lowlat" in info:  # a usnetd from before issue 5 has no low-latency agent
        from usnet.bench.tables import lease_table

        con.print(lease_table(info["lowlat"]))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """A program on usnet, unmodified: in this process (a script or -m), or a command patched at its start."""
    import os

    from usnet.client.patch import child_environment, run_in_process

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if args.socket:
        os.environ["USNET_SOCKET"] = args.socket
    if args.netif:
        os.environ["USNET_NETIF"] = args.netif
    if args.module is not None:
        run_in_process(command, module=args.module)
        return 0
    if not command:
        print("usnet run: what to run? a script (app.py), -m MODULE, or -- COMMAND ...", file=sys.stderr)
        return 2
    if command[0].endswith(".py"):
        run_in_process(command)
        return 0
    try:
        os.execvpe(command[0], command, child_environment())
    except OSError as e:
        print(f"usnet run: cannot run {command[0]}: {e.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached: exec replaced this process


def main(argv: list[str] | None = None) -> int:
    ap = errors.Parser(prog="usnet", description="user-space networking stack")
    ap.add_argument("--debug", action="store_true", help="let errors through with their tracebacks")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="a user pipe beside a socketpair, UDP through the flow switch, "
                                          "HTTP over a lossy link on usnet's TCP, low latency beside bulk "
                                          "traffic and a sender that adapts to the interface advisory")
    d.add_argument("--packets", type=errors.count, default=300_000, help="packets per size (default %(default)s)")
    d.add_argument("--phase", type=_seconds, default=1.0, metavar="SECONDS",
                   help="length of each low-latency phase (default %(default)s)")
    d.add_argument("--plot", metavar="FILE", type=errors.writable_path, help="write the low-latency series to this PNG "
                                                  "(needs matplotlib: pip install 'usnet[plot]')")
    d.set_defaults(fn=cmd_demo)
    b = sub.add_parser("bench", help="benchmarks against the alternatives")
    b.add_argument("what", choices=["pipe", "udp", "tcp", "http", "lowlat", "rxmit", "lossy", "scale", "xdp"])
    b.add_argument("--quick", action="store_true", help="finish in under 30 s")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--cc", choices=["cubic", "bbr", "reno"], default="cubic",
                   help="lossy: the congestion control of every sender, usnet's and the kernel's "
                        "(TCP_CONGESTION per socket; default %(default)s)")
    b.set_defaults(fn=cmd_bench)
    u = sub.add_parser("up", help="create the device, give the host its address, start usnetd")
    u.add_argument("--driver", choices=["tap", "packet", "xdp"], default="tap")
    u.add_argument("--ifname", default="usnet0", type=errors.ifname)
    u.add_argument("--address", default="10.77.0.2/24", type=errors.interface4,
                   help="usnet's address (default %(default)s)")
    u.add_argument("--host-address", default="10.77.0.1/24", type=errors.interface4,
                   help="the host's address (default %(default)s)")
    u.add_argument("--address6", type=errors.interface6,
                   help="usnet's IPv6 address too, e.g. fd00:77::2/64 (default: IPv4 only)")
    u.add_argument("--host-address6", type=errors.interface6,
                   help="the host's IPv6 address (default: ::1 of usnet's prefix)")
    u.add_argument("--pcap", help="trace every frame of the netif to this file")
    u.add_argument("--link-rate", type=_bits, metavar="BITS",
                   help="pace transmit to this many bits/s, e.g. 50e6 or 50M (usnetd's link_rate)")
    u.add_argument("--ll-share", type=float, metavar="F",
                   help="share of the time slots reserved for the low-latency class, 0 to 0.9 "
                        "(default 0.2; needs --link-rate)")
    u.add_argument("--strict", action="store_true",
                   help="idle low-latency slots stay idle instead of carrying general traffic "
                        "(work_conserving = false; needs --link-rate)")
    u.add_argument("--netns", metavar="NAME",
                   help="put the host end of the device and its addresses in this network namespace "
                        "(made if missing, removed by `usnet down`), so the kernel peer runs there: "
                        "`ip netns exec NAME ...`")
    u.add_argument("--config", metavar="FILE",
                   help="a usnetd config to start from: its limits, access, policy, more netifs "
                        "(the device's netif comes from the flags; see usnet/domain/config.py)")
    u.add_argument("--policy", metavar="FILE",
                   help="a TOML file of [[policy]] entries: who may lease the low-latency class")
    u.add_argument("--metrics", metavar="ADDR",
                   help="serve usnetd's metrics here (a Unix socket or a loopback address; the config's metrics)")
    u.add_argument("--run-dir", default=None)
    u.set_defaults(fn=cmd_up)
    dn = sub.add_parser("down", help="stop usnetd and remove what `usnet up` made")
    dn.add_argument("--run-dir", default=None)
    dn.set_defaults(fn=cmd_down)
    fl = sub.add_parser("flows", help="flows on every netif, like ss")
    fl.add_argument("--socket", default=DEFAULT_SOCKET)
    fl.add_argument("--json", action="store_true")
    fl.add_argument("--wide", action="store_true", help="one line a flow, however wide (addresses fold otherwise)")
    fl.set_defaults(fn=cmd_flows)
    ssp = sub.add_parser("ss", help="every TCP connection of every client, like ss -tepn (-i: its TCP figures)")
    ssp.add_argument("-i", "--info", action="store_true", help="rtt, cwnd, ssthresh, retransmits, pacing and "
                                                                "delivery rate, bytes and segments")
    ssp.add_argument("-l", "--listening", action="store_true", help="listening sockets only")
    ssp.add_argument("-a", "--all", action="store_true", help="listening sockets too")
    ssp.add_argument("-t", "-e", "-p", "-n", dest="_ss_compat", action="store_true",
                     help="accepted for ss's habits: usnet ss is always TCP, numeric, with owners")
    ssp.add_argument("--json", action="store_true")
    ssp.add_argument("--socket", default=DEFAULT_SOCKET)
    stt = sub.add_parser("stats", help="netif counters and drops by reason")
    stt.add_argument("--socket", default=DEFAULT_SOCKET)
    stt.add_argument("--json", action="store_true")
    stt.set_defaults(fn=cmd_stats)
    ad = sub.add_parser("advisory", help="the interface advisory of every netif (or one), live")
    ad.add_argument("netif", nargs="?", help="only this netif")
    ad.add_argument("--once", action="store_true", help="print one snapshot and exit")
    ad.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    ad.add_argument("--socket", default=DEFAULT_SOCKET)
    ad.set_defaults(fn=cmd_advisory)
    from usnet.cli import ops

    cp = sub.add_parser("capture", help="write a netif's frames (those matching a filter) to a pcap file (root)",
                        description="usnet capture -w FILE|- [-i NETIF] [-c N] [FILTER ...]: frames whole, "
                                    "64 KB super-segments too; FILTER is a subset of pcap-filter syntax "
                                    "(host, net, port, proto, tcp, udp, icmp, ip, ip6, arp, src, dst, and, "
                                    "or, not), evaluated in usnetd before the copy")
    cp.add_argument("-w", "--write", required=True, type=errors.writable_path,
                    help="pcap file to write; - for standard output")
    cp.add_argument("-i", "--netif", default="usnet0")
    cp.add_argument("-c", "--count", type=errors.count, default=None, help="stop after this many frames")
    cp.add_argument("--seconds", type=errors.seconds, default=None, help="stop after this long")
    cp.add_argument("-q", "--quiet", action="store_true", help="no live count on a terminal")
    cp.add_argument("--socket", default=DEFAULT_SOCKET)
    cp.add_argument("filter", nargs="*", help="e.g. tcp port 80 and host 10.77.0.1")
    cp.set_defaults(fn=ops.cmd_capture)
    ssp.set_defaults(fn=ops.cmd_ss)
    pg = sub.add_parser("ping", help="ICMP echo from usnet's own address, like ping(8)")
    pg.add_argument("host")
    pg.add_argument("-c", "--count", type=errors.count, default=None, help="stop after this many requests")
    pg.add_argument("-i", "--interval", type=errors.seconds, default=1.0, help="seconds between requests (default 1)")
    pg.add_argument("-s", "--size", type=ops.echo_size, default=56, metavar="BYTES",
                    help="payload bytes, 0 to 1472 (default 56)")
    pg.add_argument("-W", "--wait", type=errors.seconds, default=2.0,
                    help="seconds to wait for the last reply (default 2)")
    pg.add_argument("-I", "--netif", help="the netif to ping from (default: usnetd's first)")
    pg.add_argument("--socket", default=DEFAULT_SOCKET)
    pg.set_defaults(fn=ops.cmd_ping)
    me = sub.add_parser("metrics", help="usnetd's Prometheus metrics, printed once")
    me.add_argument("--socket", default=DEFAULT_SOCKET, help="usnetd's control socket: the endpoint is "
                                                            "metrics.sock beside it unless --metrics")
    me.add_argument("--metrics", help="the endpoint: unix:PATH or 127.0.0.1:PORT (usnetd's `metrics` key)")
    me.set_defaults(fn=ops.cmd_metrics)
    s = sub.add_parser("status", help="sessions, pipes, pools and low-latency leases of a running usnetd")
    s.add_argument("--socket", default=DEFAULT_SOCKET)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_status)
    rn = sub.add_parser("run", help="run an unmodified program on usnet: its sockets, names, TLS and asyncio",
                        description="usnet run app.py ARGS | usnet run -m MODULE ARGS (in this process) | "
                                    "usnet run -- COMMAND ARGS (every Python program it starts is patched)")
    rn.add_argument("--socket", help=f"usnetd's socket (default {DEFAULT_SOCKET})")
    rn.add_argument("--netif", help="the netif (default: USNET_NETIF or usnetd's first)")
    rn.add_argument("-m", dest="module", metavar="MODULE", help="run a module as `python -m` does")
    rn.add_argument("command", nargs=argparse.REMAINDER, help="a script and its arguments, or -- COMMAND ...")
    rn.set_defaults(fn=cmd_run)
    args = ap.parse_args(argv)
    return errors.run(f"usnet {args.cmd}", lambda: args.fn(args), args.debug or bool(os.environ.get("USNET_DEBUG")))


if __name__ == "__main__":
    sys.exit(main())
