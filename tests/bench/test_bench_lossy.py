"""`usnet bench lossy --quick --json`: the command a user runs, end to end (root: it makes a
TAP, a veth and two namespaces, all removed afterwards).

Asserts the document's shape and that every figure was measured; the figures themselves
belong in the note of issue 17, not here.
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


@pytest.mark.parametrize("cc", [None, "bbr"])
def test_bench_lossy_quick_json_reports_every_direction(cc):
    extra = [] if cc is None else ["--cc", cc]
    r = subprocess.run([sys.executable, "-m", "usnet.cli.main", "bench", "lossy", "--quick", "--json", *extra],
                       cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    want = cc or "cubic"  # the default: every sender on cubic, whatever the host's default is
    assert doc["cc"] == doc["target"]["cc"] == want
    rows = {row["test"]: row for row in doc["results"]}
    assert {row["cc"] for row in rows.values()} == {want}
    assert set(rows) == {"usnet_tx", "usnet_rx", "kernel_tx", "kernel_rx"}
    for name, row in rows.items():
        assert math.isfinite(row["MBps"]) and row["MBps"] > 0, (name, row)
        assert len(row["runs_MBps"]) == doc["rounds"] == 1
        assert row["rto"] >= 0 and row["rto_per_20MB"] == pytest.approx(row["rto"] * 20e6 / doc["bytes"])
        # 2 % of a few thousand segments is lost: every sender retransmitted something
        assert row["retrans"] > 0, (name, row)
    assert doc["ratio_tx"] == pytest.approx(rows["usnet_tx"]["MBps"] / rows["kernel_tx"]["MBps"])
    assert doc["ratio_rx"] == pytest.approx(rows["usnet_rx"]["MBps"] / rows["kernel_rx"]["MBps"])
    assert doc["impairment"] == {"drop": 0.02, "duplicate": 0.01, "reorder": 0.10, "reorder_delay_ms": 2.0,
                                 "where": "ingress of both ends of the veth (data and ACKs)"}
    assert doc["usnet_tcp_info"]["bytes_acked"] == doc["bytes"]
    t = doc["target"]
    assert (t["ratio"], t["rto_per_20MB"]) == (0.7, 1.0) and isinstance(t["met"], bool)


def test_bench_lossy_prints_the_table_and_the_target():
    r = subprocess.run([sys.executable, "-m", "usnet.cli.main", "bench", "lossy", "--quick"],
                       cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "usnet → kernel" in r.stdout and "kernel → usnet" in r.stdout
    assert "cubic on every sender" in r.stdout and "target (cubic against cubic): usnet ≥ 0.7×" in r.stdout
