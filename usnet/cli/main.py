"""The `usnet` command: demo, bench, status."""

from __future__ import annotations

import argparse
import json
import math
import sys

from rich.console import Console
from rich.table import Table

from usnet.client import DEFAULT_SOCKET


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:,.0f}"


def cmd_bench(args: argparse.Namespace) -> int:
    from usnet.bench.report import run_pipe_bench

    console = Console(stderr=True, quiet=args.json)
    result = run_pipe_bench(quick=args.quick, console=console)
    if args.json:
        print(json.dumps(result))
        return 0
    table = Table(title="usnet bench pipe: messages/s, one process to another")
    for col in ("size", "usnet", "socketpair", "udp", "mp.Queue", "× socketpair"):
        table.add_column(col, justify="right")
    for r in result["results"]:
        table.add_row(str(r["size"]), _fmt(r["usnet_mps"]), _fmt(r["socketpair_mps"]),
                      _fmt(r["udp_mps"]), _fmt(r["mpqueue_mps"]), f"{r['ratio_socketpair']:.2f}")
    out = Console()
    out.print(table)
    extra = result["extra"]
    out.print(f"one process sending to itself through a pipe: {_fmt(extra['self_pps_64'])} packets/s at 64 B "
              f"(per-packet cost without a context switch)")
    out.print(f"memory per channel: {extra['memory_per_channel']['touched_bytes']:,} bytes touched at open, "
              f"{extra['memory_per_channel']['reserved_bytes']:,} bytes reserved (sparse)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from usnet.bench.demo import run_demo

    return run_demo(Console(), packets=args.packets)


def cmd_up(args: argparse.Namespace) -> int:
    from usnet.cli import updown

    return updown.up(args.driver, args.ifname, args.address, args.host_address,
                     args.run_dir or updown.RUN_DIR, pcap=args.pcap)


def cmd_down(args: argparse.Namespace) -> int:
    from usnet.cli import updown

    return updown.down(args.run_dir or updown.RUN_DIR)


def cmd_status(args: argparse.Namespace) -> int:
    from usnet.client import Client

    try:
        client = Client.connect(args.socket)
    except OSError as e:
        print(f"usnet: cannot reach usnetd at {args.socket}: {e}", file=sys.stderr)
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
        t.add_row(str(s["id"]), str(s["uid"]), str(s["pid"]), s["program"], str(s["channels"]), str(s["refused"]))
    con.print(t)
    t = Table(title="user pipes")
    for c in ("name", "schema", "uid", "free", "in alloc", "held", "purged", "memory", "defunct"):
        t.add_column(c)
    for p in info["pipes"]:
        pool = p["pool"]
        t.add_row(p["name"], p["schema"], str(p["uid"]), str(pool["free"]), str(pool["in_alloc"]),
                  str(pool["held"]), str(pool["purged"]), f"{p['memory_bytes']:,}", str(p["defunct"] or ""))
    con.print(t)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="usnet", description="user-space networking stack")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="two processes through a user pipe, beside a socketpair")
    d.add_argument("--packets", type=int, default=300_000, help="packets per size (default %(default)s)")
    d.set_defaults(fn=cmd_demo)
    b = sub.add_parser("bench", help="benchmarks against the alternatives")
    b.add_argument("what", choices=["pipe"])
    b.add_argument("--quick", action="store_true", help="finish in under 30 s")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(fn=cmd_bench)
    u = sub.add_parser("up", help="create the device, give the host its address, start usnetd")
    u.add_argument("--driver", choices=["tap", "packet"], default="tap")
    u.add_argument("--ifname", default="usnet0")
    u.add_argument("--address", default="10.77.0.2/24", help="usnet's address (default %(default)s)")
    u.add_argument("--host-address", default="10.77.0.1/24", help="the host's address (default %(default)s)")
    u.add_argument("--pcap", help="trace every frame of the netif to this file")
    u.add_argument("--run-dir", default=None)
    u.set_defaults(fn=cmd_up)
    dn = sub.add_parser("down", help="stop usnetd and remove what `usnet up` made")
    dn.add_argument("--run-dir", default=None)
    dn.set_defaults(fn=cmd_down)
    s = sub.add_parser("status", help="sessions, pipes and pools of a running usnetd")
    s.add_argument("--socket", default=DEFAULT_SOCKET)
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_status)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
