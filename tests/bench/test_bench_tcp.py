"""`usnet bench tcp --quick --json`: the command a user runs, end to end (root: it makes a TAP).

Asserts the document's shape and that every figure was measured (positive,
finite); the figures themselves belong in docs/benchmarks.md, not here.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
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


def test_a_bench_stopped_by_sigterm_leaves_no_usnetd_and_no_namespace():
    """SIGTERM once the bench's usnetd is up (its "usnet up: ..." line on stderr): the bench
    unwinds, exits 143 as a killed process would, and its usnetd and namespace are gone."""
    p = subprocess.Popen([sys.executable, "-m", "usnet.cli.main", "bench", "tcp", "--json"],
                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    netns, pid = "", 0
    try:
        assert p.stderr is not None
        line = p.stderr.readline()
        m = re.search(r"in netns (\S+), usnetd pid (\d+)", line)
        assert m, line
        netns, pid = m.group(1), int(m.group(2))
        p.send_signal(signal.SIGTERM)
        err = p.stderr.read()  # (shown on a failure: where the bench was, an "Exception ignored" line)
        assert p.wait(timeout=60) == 128 + signal.SIGTERM, err[-3000:]
        left = [f"namespace {netns}"] * os.path.exists(f"/run/netns/{netns}") + [f"usnetd {pid}"] * _is_usnetd(pid)
        assert not left, left
    finally:  # (what a failure left behind, removed: nothing of the test's outlives it)
        if p.poll() is None:
            p.kill()
            p.wait()
        if pid and _is_usnetd(pid):
            os.kill(pid, signal.SIGKILL)
        if netns and os.path.exists(f"/run/netns/{netns}"):
            subprocess.run(["ip", "netns", "del", netns], check=False)


def _is_usnetd(pid: int) -> bool:
    try:
        return b"usnetd" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
