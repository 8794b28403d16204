"""`usnet demo`: the embedded domain, a user pipe between two processes, a socketpair beside it;
UDP through the flow switch; HTTP over usnet TCP across a lossy memwire; a low-latency flow and
bulk traffic sharing a rate-limited link, and a sender that adapts to the interface advisory.

Nothing here imports matplotlib: only `--plot` does (usnet.bench.plot), so the demo runs without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from usnet.bench import baselines, pipe
from usnet.domain.loop import Domain

if TYPE_CHECKING:
    from usnet.bench.adaptive import AdaptiveResult
    from usnet.bench.lowlat import DemoResult

__all__ = ["run_demo"]

SIZES = (64, 1500, 9000)


def _progress(prog: Progress, task: TaskID) -> Callable[[int], None]:
    """A callback that shows `n` packets done on `task`."""
    return lambda n: prog.update(task, completed=n)


def run_demo(console: Console, packets: int = 300_000, phase: float = 1.0, plot: str | None = None) -> int:
    """Every part of the demo in turn; 0 if each checked out. `phase`: seconds per low-latency phase;
    `plot`: also write the low-latency series to this PNG (needs matplotlib)."""
    console.print("[bold]usnet demo[/]: an embedded domain (no daemon, no root), a user pipe "
                  "from this process to a child process, zero-copy through shared memory.")
    rows = []
    with Domain() as dom, Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                   TimeElapsedColumn(), console=console) as prog:
        for size in SIZES:
            task = prog.add_task(f"{size:>5} B through the pipe", total=packets)
            mps = pipe.usnet_mps(size, packets, domain=dom, progress=_progress(prog, task))
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
    http_ok = _http_part(console)
    _lowlat_part(console, phase, plot)
    return 0 if http_ok else 1


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
    from usnet.proto.tcp.config import TcpConfig

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


def _ms(x: float) -> str:
    return f"{x:,.2f} ms"


def _mbit(bps: float) -> str:
    return f"{bps / 1e6:,.1f} Mbit/s"


def _lowlat_part(console: Console, phase: float = 1.0, plot: str | None = None) -> DemoResult:
    """An LL flow beside bulk flows with its lease and without, and an adaptive sender; returns the figures."""
    from usnet.bench import lowlat
    from usnet.bench.tables import lease_table

    console.print()
    console.print(f"[bold]Low latency on a shared link[/]: netif a is paced to {_mbit(lowlat.LINK_RATE)} "
                  f"with {lowlat.LL_SHARE:.0%} of its time slots reserved for the low-latency class. A voice-like "
                  f"flow sends {lowlat.LL_SIZE} B every {lowlat.LL_PERIOD * 1e3:g} ms beside "
                  f"{lowlat.BULK_FLOWS} bulk flows that fill the link, each application a process of its own. "
                  "First its sender asks the agent for a lease (voice, "
                  f"{_mbit(lowlat.LEASE['rate'])}, {lowlat.LEASE['latency_target'] * 1e3:g} ms target) and "
                  "its datagrams take the LL slots; then the same flow runs without one, queued round-robin "
                  "with the bulk flows in the general class.")
    with console.status("low latency") as status:
        r = lowlat.demo_run(phase, warmup=min(0.5, phase), adaptive_seconds=1.5 * phase,
                            progress=lambda what: status.update(what))
    t = Table(title=f"the LL flow's one-way latency, {r.granted.sent} datagrams per phase "
                    f"({phase:g} s), beside {lowlat.BULK_FLOWS} bulk flows")
    for c in ("", "p50", "p99", "max", "lost"):
        t.add_column(c, justify="left" if not c else "right")
    for label, ph in (("with its lease (LL class)", r.granted), ("without (general class)", r.general)):
        t.add_row(label, _ms(ph.p(50)), _ms(ph.p(99)), _ms(max(ph.latencies_ms, default=float("nan"))),
                  f"{ph.lost:,}")
    console.print(t)
    if r.granted.lowlat:
        console.print(lease_table(r.granted.lowlat))
    bulk = r.granted.bulk_bps * 8
    g99, l99 = r.general.p(99), r.granted.p(99)
    verdict = (f"the lease cut the LL flow's p99 from {_ms(g99)} to {_ms(l99)}" if l99 < g99 else
               f"the lease did not help the LL flow's p99 on this run ({_ms(l99)} with it, {_ms(g99)} without)")
    console.print(f"bulk throughput beside the leased flow: {_mbit(bulk)}, {bulk / lowlat.LINK_RATE:.0%} of the "
                  f"link (work-conserving: LL slots the flow leaves idle carry bulk traffic); {verdict}.")
    _adaptive_report(console, r.adaptive)
    if plot:
        from usnet.bench.plot import write_demo_plot

        write_demo_plot(plot, r)
        console.print(f"wrote the latency series and the adaptive sender's rate to {plot}")
    return r


def _adaptive_report(console: Console, a: AdaptiveResult) -> None:
    """The adaptive sender's story: where it started, its first cut and raise, its rate over time."""
    from usnet.bench import adaptive

    console.print()
    console.print(f"[bold]An adaptive sender[/] ({adaptive.PAYLOAD:,}-byte datagrams) alone on the same link reads "
                  "netif a's interface advisory (Client.advisory) and sleeps on its channel, so an "
                  "ADVISORY_UPDATED event wakes it when the trend changes. DOWN halves its rate, UP raises it by a "
                  "quarter, HOLD keeps it; a trend that persists acts again after 50 ms. It starts at "
                  f"{_mbit(a.start_rate)}, above the link's {_mbit(a.link_rate)}; the advisory says DOWN while "
                  f"the queueing delay is above {a.delay_target_ms:g} ms.")
    # its first changes, up to the first UP after the first DOWN: how it reacted, both ways
    down = next((i for i, c in enumerate(a.changes) if c.trend == "DOWN"), None)
    up = None if down is None else next((i for i in range(down, len(a.changes)) if a.changes[i].trend == "UP"), None)
    last = len(a.changes) - 1 if up is None else up
    for i, c in enumerate(a.changes[:min(last + 1, 8)]):
        if i == down:
            what = "the first DOWN"
        elif i == up:
            what = "the first UP after it"
        elif down is None or i < down:
            what = "nothing queued yet"  # an idle link has room: the advisory starts at UP
        else:
            what = "still DOWN 50 ms later"  # between the first DOWN and the first UP every change is a cut
        console.print(f"  {c.t:.3f} s  {c.trend:<4}  queueing delay {_ms(c.queue_delay_ms):>9}:  "
                      f"{_mbit(c.rate_before)} -> {_mbit(c.rate_after)}  ({what})")
    t = Table(title="the adaptive sender's rate over time")
    # "sent": what it put on its ring over the last sample (above the link while its queue builds)
    for col in ("time", "advisory trend", "queueing delay", "sending rate", "sent"):
        t.add_column(col, justify="right")
    step = max(1, len(a.samples) // 8)
    for s in a.samples[::step]:
        t.add_row(f"{s[0]:.2f} s", s[3], _ms(s[2]), _mbit(s[1]), _mbit(s[4]) if s[0] else "")
    console.print(t)
    later = [s for s in a.samples if s[0] >= a.seconds / 3]
    if later:
        mean_rate = sum(s[4] for s in later) / len(later)
        mean_delay = sum(s[2] for s in later) / len(later)
        console.print(f"over {a.seconds:.1f} s: {sum(c.trend == 'DOWN' for c in a.changes)} cuts, "
                      f"{sum(c.trend == 'UP' for c in a.changes)} raises, {a.events} ADVISORY_UPDATED events; "
                      f"after the first third it sent {_mbit(mean_rate)} on average "
                      f"({mean_rate / a.link_rate:.0%} of the link) at a mean queueing delay of {_ms(mean_delay)} "
                      f"(max {_ms(max(s[2] for s in later))}).")
