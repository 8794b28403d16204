"""`usnet demo --plot FILE`: the low-latency part's series as a PNG.

matplotlib is optional (`pip install 'usnet[plot]'`): nothing imports this
module unless a plot was asked for, so `usnet demo` runs without it. The
figure is drawn on the Agg canvas directly (no pyplot, no display, no global
backend switch), which is what a command-line tool writing a file wants.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from usnet.bench.lowlat import DemoResult

__all__ = ["DPI", "HEIGHT_IN", "INSTALL_HINT", "WIDTH_IN", "PlotUnavailable", "require_matplotlib", "write_demo_plot"]

INSTALL_HINT = "pip install 'usnet[plot]'"
WIDTH_IN, HEIGHT_IN, DPI = 10.0, 7.0, 100  # the PNG is 1000 x 700 pixels


class PlotUnavailable(RuntimeError):
    """--plot was asked for and matplotlib cannot be imported."""


def require_matplotlib() -> None:
    """Raise PlotUnavailable, with the command that fixes it, unless matplotlib imports.

    `usnet demo --plot` calls this before it measures anything, so a missing
    matplotlib costs a one-line error, not a demo run.
    """
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise PlotUnavailable(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}") from None


def write_demo_plot(path: str, result: DemoResult) -> None:
    """Two panels: the LL flow's one-way latency per datagram with its lease and without (top), and the
    adaptive sender's rate and the advisory's queueing delay over time (bottom)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from usnet.bench import lowlat

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1)
    for phase, label, colour in ((result.general, "without a lease (general class)", "tab:red"),
                                 (result.granted, "with its lease (LL class)", "tab:blue")):
        top.plot(phase.seqs, phase.latencies_ms, ".", markersize=3, color=colour,
                 label=f"{label}: p50 {phase.p(50):.2f} ms, p99 {phase.p(99):.2f} ms")
    top.set_xlabel(f"datagram number ({lowlat.LL_SIZE} B every {lowlat.LL_PERIOD * 1e3:g} ms)")
    top.set_ylabel("one-way latency (ms)")
    top.set_yscale("log")
    top.set_title(f"an LL flow beside {lowlat.BULK_FLOWS} bulk flows on a {lowlat.LINK_RATE / 1e6:g} Mbit/s link, "
                  f"{lowlat.LL_SHARE:.0%} of its slots for the LL class")
    top.legend(loc="upper right", fontsize="small")
    top.grid(True, which="both", alpha=0.3)

    a = result.adaptive
    t = [s[0] for s in a.samples]
    bottom.step(t, [s[1] / 1e6 for s in a.samples], where="post", color="tab:green", label="sending rate")
    bottom.plot(t[1:], [s[4] / 1e6 for s in a.samples[1:]], color="tab:olive", alpha=0.6, label="sent")
    bottom.axhline(a.link_rate / 1e6, color="grey", linestyle="--", linewidth=1, label="link rate")
    bottom.set_xlabel("time (s)")
    bottom.set_ylabel("Mbit/s")
    bottom.set_title("an adaptive sender following the interface advisory")
    delay = bottom.twinx()
    delay.plot(t, [s[2] for s in a.samples], color="tab:purple", alpha=0.7, label="queueing delay")
    delay.axhline(a.delay_target_ms, color="tab:purple", linestyle=":", linewidth=1, label="delay target")
    delay.set_ylabel("queueing delay (ms)")
    lines = bottom.get_legend_handles_labels()
    more = delay.get_legend_handles_labels()
    bottom.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize="small", ncols=3)
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=DPI)
