"""`usnet demo`: the embedded domain, a user pipe between two processes, a socketpair beside it."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from usnet.bench import baselines, pipe
from usnet.nexus.domain import Domain

SIZES = (64, 1500, 9000)


def run_demo(console: Console, packets: int = 300_000) -> int:
    console.print("[bold]usnet demo[/]: an embedded domain (no daemon, no root), a user pipe "
                  "from this process to a child process, zero-copy through shared memory.")
    rows = []
    with Domain() as dom, Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                   TimeElapsedColumn(), console=console) as prog:
        for size in SIZES:
            task = prog.add_task(f"{size:>5} B through the pipe", total=packets)
            mps = pipe.usnet_mps(size, packets, domain=dom,
                                 progress=lambda n, t=task: prog.update(t, completed=n))
            task2 = prog.add_task(f"{size:>5} B through a socketpair", total=1)
            sp = baselines.socketpair_mps(size, min(packets, 200_000))
            prog.update(task2, completed=1)
            rows.append((size, packets, mps, sp))
        status = dom.status()
    t = Table(title="what moved, one process to another")
    for c in ("size", "packets", "bytes", "usnet msg/s", "socketpair msg/s", "ratio"):
        t.add_column(c, justify="right")
    for size, n, mps, sp in rows:
        t.add_row(f"{size} B", f"{n:,}", f"{n * size:,}", f"{mps:,.0f}", f"{sp:,.0f}", f"{mps / sp:.2f}×")
    console.print(t)
    console.print(f"control errors: {status['control_errors']}; every pool balanced at the end: "
                  f"{all(p['pool']['held'] == 0 for p in status['pipes'])}")
    _udp_part(console, min(packets, 100_000))
    return 0


def _udp_part(console: Console, count: int) -> None:
    """Two applications exchanging UDP through flow switches over a memwire link."""
    from usnet.bench import udp

    console.print()
    console.print(f"[bold]UDP through the flow switch[/]: application A ({udp.A_ADDR}) sends {count:,} "
                  f"datagrams to application B ({udp.B_ADDR}) over a memwire link; each is copied "
                  "once out of A's pool, checked against A's flow, framed, ARP-resolved, classified "
                  "and copied into B's pool.")
    snap: list = []
    with console.status("sending"):
        dps, got = udp.usnet_dps(64, count, snapshot=snap)
    t = Table(title="flow table (while both applications ran)")
    for c in ("netif", "address", "proto", "local port", "remote", "channel"):
        t.add_column(c)
    for f in (snap[0] if snap else []):
        t.add_row(f["netif"], f["address"], f["proto"], str(f["local_port"]), f["remote"] or "*", str(f["channel"]))
    console.print(t)
    console.print(f"B received {got:,} of {count:,} datagrams at {dps:,.0f} datagrams/s "
                  "(UDP: a receiver that falls behind loses datagrams, as with the kernel's sockets)")
