"""`usnet demo`: the embedded domain, a user pipe between two processes, a socketpair beside it;
UDP through the flow switch; HTTP over usnet TCP across a lossy memwire."""

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
    return 0 if _http_part(console) else 1


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


def _http_part(console: Console, size: int = 4_000_000) -> bool:
    """HTTP/1.1 between two usnet TCP stacks over a memwire with 1 % loss; True if the digest checked."""
    from usnet.bench import http_demo
    from usnet.stack.tcp.config import TcpConfig

    console.print()
    console.print(f"[bold]HTTP over usnet TCP[/]: Python's own http.server on one usnet stack (netif b, "
                  f"{http_demo.SERVER_IP}) serves {size / 1e6:g} MB of random bytes to Python's own "
                  f"http.client on another (netif a, {http_demo.CLIENT_IP}), both on usnet sockets and "
                  "otherwise unchanged. The memwire between them drops 1 % of the frames each way and "
                  "delays each by 1 ms; TCP recovers every loss (fast retransmit on SACK and duplicate "
                  "ACKs, a retransmission timeout otherwise) and the client checks the body's SHA-256.")
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,} B"),
                  TimeElapsedColumn(), console=console) as prog:
        task = prog.add_task("GET /blob", total=size)
        r = http_demo.run(size=size, progress=lambda n: prog.update(task, completed=n))
    c, s, w = r["client_tcp"], r["server_tcp"], r["wire"]

    def ms(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f} ms"

    def num(x: int | None) -> str:
        return "not set" if x is None else f"{x:,}"

    t = Table(title="TCP statistics at the end of the transfer")
    t.add_column("")
    t.add_column(f"server (sender, {http_demo.SERVER_IP})", justify="right")
    t.add_column(f"client (receiver, {http_demo.CLIENT_IP})", justify="right")
    rows = (
        ("frames sent onto the wire", f"{w['frames_to_client']:,}", f"{w['frames_to_server']:,}"),
        ("  of which the wire dropped", f"{w['dropped_to_client']:,}", f"{w['dropped_to_server']:,}"),
        ("retransmitted segments", f"{s['retransmits']:,}", f"{c['retransmits']:,}"),
        ("  of which fast retransmits", f"{s['fast_retransmits']:,}", f"{c['fast_retransmits']:,}"),
        ("retransmission timeouts", f"{s['rto_timeouts']:,}", f"{c['rto_timeouts']:,}"),
        ("segments out / in", f"{s['segs_out']:,} / {s['segs_in']:,}", f"{c['segs_out']:,} / {c['segs_in']:,}"),
        ("out-of-order segments received", f"{s['ooo_segments']:,}", f"{c['ooo_segments']:,}"),
        ("smoothed RTT (rttvar)", f"{ms(s['srtt_ms'])} ({ms(s['rttvar_ms'])})",
         f"{ms(c['srtt_ms'])} ({ms(c['rttvar_ms'])})"),
        ("RTO", ms(s["rto_ms"]), ms(c["rto_ms"])),
        ("cwnd", f"{s['cwnd']:,} B ({s['cwnd_segments']:.1f} MSS)", f"{c['cwnd']:,} B ({c['cwnd_segments']:.1f} MSS)"),
        ("ssthresh", num(s["ssthresh"]), num(c["ssthresh"])),
    )
    for row in rows:
        t.add_row(*row)
    console.print(t)
    verdict = "[green]SHA-256 digest ok[/]" if r["digest_ok"] else "[red]SHA-256 digest MISMATCH[/]"
    console.print(f"HTTP {r['status']}: {r['bytes']:,} bytes in {r['seconds']:.2f} s "
                  f"({r['MBps']:.2f} MB/s), {verdict}; the wire dropped {w['dropped']:,} frames, "
                  f"the sender retransmitted {s['retransmits']:,} segments. (cwnd and ssthresh are in "
                  f"bytes; ssthresh is set at the first loss; the RTO has a {TcpConfig().rto_min * 1000:.0f} ms "
                  "floor, so each timeout costs far more than a round trip of this link.)")
    return bool(r["digest_ok"])
