"""`usnet bench scale --quick --json`: the command a user runs, end to end (root: a TAP and namespaces).

Asserts the document's shape, that every figure was measured (positive,
finite) and that every UDP point delivered something; the figures themselves
belong in docs/benchmarks.md, not here (the targets are reported, not asserted).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from usnet.bench.scale import FLOWS, QUICK_LEVELS

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _positive(v: object) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_bench_scale_quick_json_reports_every_count_for_both_stacks():
    r = subprocess.run([sys.executable, "-m", "usnet.cli.main", "bench", "scale", "--quick", "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [row["open"] for row in doc["results"]] == list(QUICK_LEVELS) == doc["levels"]
    for row in doc["results"]:
        for key in ("usnet_accept_cps", "kernel_accept_cps", "usnet_connect_cps", "kernel_connect_cps"):
            assert _positive(row[key]), (row["open"], key, row[key])
        assert row["ratio_accept"] == pytest.approx(row["usnet_accept_cps"] / row["kernel_accept_cps"])
        assert row["ratio_connect"] == pytest.approx(row["usnet_connect_cps"] / row["kernel_connect_cps"])
    mem = doc["memory"]
    assert mem["connections"] >= QUICK_LEVELS[-1]
    for key in ("app_bytes_per_conn", "usnetd_bytes_per_conn"):
        assert isinstance(mem[key], (int, float)) and math.isfinite(mem[key]), (key, mem[key])
    assert [row["flows"] for row in doc["udp"]] == list(FLOWS)
    for row in doc["udp"]:
        assert _positive(row["dps"]), row
        assert 0 < row["delivered"] <= row["sent"], row
    assert doc["udp"][0]["ratio_to_1"] == pytest.approx(1.0)
    for key in ("accept_met", "connect_met", "udp_met"):
        assert isinstance(doc["target"][key], bool), key
