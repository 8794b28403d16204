"""`usnet bench tcp --quick --json`: the command a user runs, end to end (root: it makes a TAP).

Asserts the document's shape and that every figure was measured (positive,
finite); the figures themselves belong in docs/benchmarks.md, not here.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_bench_tcp_quick_json_reports_every_test_for_both_stacks():
    r = subprocess.run([sys.executable, "-m", "usnet.cli.main", "bench", "tcp", "--quick", "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    by_test = {row["test"]: row for row in doc["results"]}
    assert set(by_test) == {"bulk_tx", "bulk_rx", "connect_rate", "connect_out_rate"}
    for name, unit in (("bulk_tx", "MBps"), ("bulk_rx", "MBps"), ("connect_rate", "cps"),
                       ("connect_out_rate", "cps")):
        for side in ("usnet", "kernel"):
            v = by_test[name][f"{side}_{unit}"]
            assert math.isfinite(v) and v > 0, (name, side, v)
