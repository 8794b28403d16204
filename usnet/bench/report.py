"""Runs `usnet bench pipe`: usnet and the alternatives, in one run, with ratios."""

from __future__ import annotations

import statistics
from typing import Any

from rich.console import Console
from rich.progress import Progress

from usnet.bench import baselines, pipe

__all__ = ["run_pipe_bench", "run_udp_bench"]


def run_pipe_bench(quick: bool, console: Console | None = None) -> dict:
    """Measure every size; returns the issue's JSON shape plus an `extra` section."""
    console = console or Console(stderr=True)
    results = []
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("bench pipe", total=len(pipe.SIZES) * 4 + 3)
        for size in pipe.SIZES:
            base = baselines.count_for(size, quick)
            row: dict = {"size": size}
            prog.update(task, description=f"{size} B: usnet")
            row["usnet_mps"] = pipe.usnet_mps(size, base * 2)
            prog.advance(task)
            for name, fn in (("socketpair_mps", baselines.socketpair_mps),
                             ("udp_mps", baselines.udp_mps),
                             ("mpqueue_mps", baselines.mpqueue_mps)):
                prog.update(task, description=f"{size} B: {name.split('_')[0]}")
                row[name] = fn(size, baselines.count_for(size, quick, fn))
                prog.advance(task)
            row["ratio_socketpair"] = row["usnet_mps"] / row["socketpair_mps"]
            results.append(row)
            if size == pipe.ZERO_COPY_SIZE:  # the same socketpair, against a sender that copies nothing
                prog.update(task, description=f"{size} B: usnet, zero-copy")
                zc = {"size": size, "zero_copy": True, "usnet_mps": pipe.usnet_mps(size, base * 2, zero_copy=True)}
                zc.update({k: row[k] for k in ("socketpair_mps", "udp_mps", "mpqueue_mps")})
                zc["ratio_socketpair"] = zc["usnet_mps"] / zc["socketpair_mps"]
                results.append(zc)
                prog.advance(task)
        prog.update(task, description="one process to itself")
        self_pps = pipe.self_pps(64, 200_000 if quick else 1_000_000)
        prog.advance(task)
        mem = pipe.memory_per_channel()
        prog.advance(task)
    # JSON has no NaN: UDP cannot carry 64 KiB, say so with null
    for row in results:
        for k, v in row.items():
            if isinstance(v, float) and v != v:
                row[k] = None
    return {"results": results, "extra": {"self_pps_64": self_pps, "memory_per_channel": mem}}


RUNS = 3


def run_udp_bench(quick: bool, console: Console | None = None) -> dict:
    """usnet through two flow switches against two processes on kernel UDP loopback."""
    from usnet.bench import tap, udp

    console = console or Console(stderr=True)
    results = []
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("bench udp", total=4)
        for size in (64, 1400):
            # At a million datagrams/s a run lasts a fraction of a second, and three
            # processes share two cores: each side gets the median of RUNS runs.
            count = 200_000 if quick else 600_000
            prog.update(task, description=f"{size} B: usnet")
            runs = [udp.usnet_dps(size, count) for _ in range(RUNS)]
            dps, got = sorted(runs)[RUNS // 2]
            prog.advance(task)
            prog.update(task, description=f"{size} B: kernel")
            kdps = statistics.median(baselines.udp_mps(size, count) for _ in range(RUNS))
            prog.advance(task)
            results.append({"size": size, "usnet_dps": dps, "kernel_dps": kdps, "ratio": dps / kdps,
                            "usnet_delivered": got, "sent": count})
        if tap.available():
            prog.update(task, description="TAP, each way")
            tap_figures: dict[str, Any] = tap.tap_fps(100_000 if quick else 300_000)
        else:
            tap_figures = {"skipped": "needs root and /dev/net/tun"}
    return {"results": results, "tap": tap_figures}
