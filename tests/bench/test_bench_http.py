"""`usnet bench http --quick --json`: the command a user runs, end to end (root: a TAP; and wrk).

Asserts the document's shape, that every figure was measured, and that every
request succeeded on both stacks (no socket errors, no non-2xx answers, the
servers answered at least what wrk counted and could parse all of it); the
figures themselves belong in docs/benchmarks.md, not here. The parser of wrk's
report is checked on its own, on a report with errors in it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from usnet.bench.http_bench import CONNECTIONS, parse_wrk

REPO = Path(__file__).resolve().parents[2]

WRK_REPORT = """\
Running 3s test @ http://10.231.0.2:40000/
  1 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  400.00us   9.80ms   70.00%
    Req/Sec     8.05k   300.00     8.50k    80.00%
  Latency Distribution
     50%    1.10ms
     75%    1.52ms
     90%    1.97ms
     99%  850.00us
  24152 requests in 3.00s, 2.35MB read
  Socket errors: connect 0, read 2, write 0, timeout 7
  Non-2xx or 3xx responses: 3
Requests/sec:   8050.10
Transfer/sec:    802.11KB
"""


def test_parse_wrk_reads_rate_percentiles_and_errors():
    r = parse_wrk(WRK_REPORT)
    assert r["rps"] == 8050.10
    assert r["requests"] == 24152
    assert r["seconds"] == 3.0
    assert (r["p50_ms"], r["p90_ms"], r["p99_ms"]) == (1.1, 1.97, 0.85)
    assert r["socket_errors"] == {"connect": 0, "read": 2, "write": 0, "timeout": 7}
    assert r["non_2xx"] == 3


def test_parse_wrk_without_a_latency_distribution_is_an_error():
    with pytest.raises(ValueError):
        parse_wrk(WRK_REPORT.split("  Latency Distribution")[0])


@pytest.mark.privileged
@pytest.mark.slow
def test_bench_http_quick_json_every_request_succeeds_on_both_stacks():
    if shutil.which("wrk") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("wrk is missing (scripts/test-deps.sh installs it)")
        pytest.skip("needs wrk")
    r = subprocess.run([sys.executable, "-m", "usnet.cli.main", "bench", "http", "--quick", "--json"],
                       cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [row["connections"] for row in doc["results"]] == list(CONNECTIONS)
    wrk_total = {"usnet": 0, "kernel": 0}
    for row in doc["results"]:
        for side in ("usnet", "kernel"):
            for key in ("rps", "p99_ms"):
                v = row[f"{side}_{key}"]
                assert math.isfinite(v) and v > 0, (row["connections"], side, key, v)
            point = row[side]
            assert point["requests"] > 0
            assert point["socket_errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 0}, (row, side)
            assert point["non_2xx"] == 0, (row, side)
            wrk_total[side] += point["requests"]
        assert row["ratio_rps"] == pytest.approx(row["usnet_rps"] / row["kernel_rps"])
    for side, served in doc["served"].items():
        assert served["errors"] == 0, side
        assert served["requests"] >= wrk_total[side], (side, served, wrk_total)  # plus the warm-up's
    assert isinstance(doc["target"]["met"], bool)
