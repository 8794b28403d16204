"""The domain loop's fixed cost per turn (issue 18): time `Domain.serve_once(0)` and its parts
before `select`, on an embedded Domain with a MemWire netif and the loopback `lo`, not started
(this thread turns the loop). Three states: both netifs idle; the MemWire netif active (a frame
every turn from the wire's other side, so its advisory is republished every `interval`); and
ten flows of the MemWire netif polled at each turn's start, as after their bells rang (found
with nothing to send, parked).

    PYTHONPATH=. python scripts/bench_turn.py [turns]

Figures in µs per turn (the median turn; the median of 5 runs); only for comparing two trees on one machine.
"""

from __future__ import annotations

import statistics
import sys
import time

from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.drivers import MemWire

PARTS = ("leases", "purge", "housekeeping", "switches", "advisories", "idle_flows", "resume_accept")


def parts(d: Domain) -> dict[str, float]:
    """One pre-select pass, each part timed."""
    pc = time.perf_counter
    steps = (d.leases.tick, d._purge_idle, d._housekeeping, d._service_switches, d._publish_advisories,
             d._idle_flows, d._resume_accept)
    out = {}
    for name, step in zip(PARTS, steps):
        t = pc()
        step()
        out[name] = pc() - t
    return out


def run(state: str, turns: int) -> tuple[float, dict[str, float]]:
    d = Domain()
    w = MemWire()
    sw = d.add_netif("m0", w.a, "10.9.0.1/24")
    d.add_loopback()
    active = state == "active"
    flows = []
    if state == "polled":  # ten flows rang (as after a bell): polled, found idle and parked each turn
        c = Client.local(d)
        socks = [c.udp_socket("m0", 5000 + i) for i in range(10)]
        d.serve_once(0)
        flows = list(sw.flows.values())
        assert len(flows) == len(socks)
    frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x09" + b"\x88\xb5" + b"\x00" * 46  # dropped: unknown type
    for _ in range(200):
        d.serve_once(0)
    sums: dict[str, list[float]] = {k: [] for k in PARTS}
    whole = []
    pc = time.perf_counter
    for _ in range(turns):
        if active:
            w.b.send_batch([frame])
        for f in flows:
            sw.polled[f] = None
        t = pc()
        d.serve_once(0)
        whole.append(pc() - t)
        if active:
            w.b.send_batch([frame])
            d.serve_once(0)
        for f in flows:
            sw.polled[f] = None
        for k, v in parts(d).items():
            sums[k].append(v)
    d.stop()
    med = statistics.median
    return med(whole) * 1e6, {k: med(v) * 1e6 for k, v in sums.items()}


def main() -> None:
    turns = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    for state in ("idle", "active", "polled"):
        wholes, per = [], {k: [] for k in PARTS}
        for _ in range(5):
            w, p = run(state, turns)
            wholes.append(w)
            for k, v in p.items():
                per[k].append(v)
        med = {k: statistics.median(v) for k, v in per.items()}
        print(f"{state:6}: serve_once(0) {statistics.median(wholes):6.2f} µs; "
              f"pre-select parts {sum(med.values()):6.2f} µs: "
              + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))


if __name__ == "__main__":
    main()
