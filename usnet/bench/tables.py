"""Rich tables that more than one command prints (`usnet status`, `usnet demo`).

They live here, not in cli/, because nothing imports cli.

They take the plain dicts of `Status` (docs/abi.md §13, §15), so the same
table shows a daemon's state and an embedded domain's.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

__all__ = ["fmt_rate", "lease_table"]


def fmt_rate(bps: float) -> str:
    """Bits per second in the largest unit that keeps the number at least 1."""
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:,.1f} {unit}"
    return f"{bps:g} bit/s"


def lease_table(lowlat: dict[str, Any]) -> Table:
    """The low-latency leases of `Status["lowlat"]` (usnet.domain.lowlat.agent.Agent.info), one row each.

    The caption carries what is per domain rather than per lease: each
    paced netif's LL capacity, how much of it is granted and the tightest
    target a policy entry without `min_target` gives there (its full bound), and the
    agent's counters, so that a refused or ended lease leaves a trace here.
    """
    n = lowlat["policy_entries"]
    t = Table(title=f"low-latency leases (policy: {n} {'entry' if n == 1 else 'entries'}; "
                    f"a grant or renewal lasts {lowlat['ttl']:g} s)", box=box.SIMPLE_HEAD, pad_edge=False,
              show_edge=False, padding=(0, 1), collapse_padding=True)
    # Few, short columns: it should read on an 80-column terminal. The burst is left out: it follows
    # from the rate and the packet size (docs/abi.md §15).
    for c in ("id", "flow", "uid program", "class", "rate", "max pkt", "target", "expires", "pass/drop"):
        t.add_column(c, justify="left" if c in ("flow", "uid program", "class") else "right")
    for lease in lowlat["leases"]:
        pol = lease["policer"]
        t.add_row(str(lease["id"]), f"{lease['netif']} ch {lease['channel']}",
                  f"{lease['uid']} {lease['program'] or ''}".strip(),
                  lease["service_class"], fmt_rate(lease["rate"]), f"{lease['max_packet']:,} B",
                  f"{lease['latency_target'] * 1e3:g} ms", f"{lease['expires_in']:.0f} s",
                  f"{pol['passed']:,}/{pol['dropped']:,}")
    floors = lowlat.get("full_bound", {})  # a usnetd from before issue 37 does not say
    links = [f"{n}: {fmt_rate(lowlat['granted_rate'].get(n, 0.0)) if lowlat['granted_rate'].get(n) else 'none'} "
             f"of {fmt_rate(cap)} granted" + (f", targets from {floors[n] * 1e3:.3g} ms" if n in floors else "")
             for n, cap in sorted(lowlat["capacity"].items())]
    refused = ", ".join(f"{k} {v}" for k, v in sorted(lowlat["refused"].items())) or "0"
    ended = ", ".join(f"{k} {v}" for k, v in sorted(lowlat["ended"].items())) or "0"
    t.caption = (f"LL capacity: {'; '.join(links) or 'no paced netif'}. Granted {lowlat['granted']}, "
                 f"renewed {lowlat['renewed']}, refused {refused}, ended {ended}.")
    return t
