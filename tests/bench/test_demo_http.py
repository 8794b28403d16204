"""`usnet demo`'s HTTP part: http.server and http.client on two usnet stacks over a lossy memwire, no root.

The memwire draws its losses from a seeded generator per direction, one draw
per frame, so with seed 1 the frames it drops toward the client are always
the same ones by position (the 14th, 92nd, ... 532nd of about 700): inside
the body of a 1 MB response, whatever the timing. Waiting is by blocking
socket calls and joins with timeouts, never sleeps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from usnet.bench import http_demo

ROOT = Path(__file__).resolve().parents[2]


def test_a_megabyte_over_http_with_one_percent_loss_arrives_intact_after_retransmissions():
    r = http_demo.run(size=1_000_000, loss=0.01, delay=0.001, seed=1, timeout=30)
    assert r["status"] == 200 and r["bytes"] == 1_000_000
    assert r["digest_ok"]
    assert any('"GET /blob HTTP/1.1" 200' in line for line in r["server_log"])  # http.server's own log line

    wire, server, client = r["wire"], r["server_tcp"], r["client_tcp"]
    assert wire["dropped"] == wire["dropped_to_client"] + wire["dropped_to_server"]
    assert wire["dropped_to_client"] >= 1  # seed 1: 8 body segments
    # every data segment the wire lost was sent again (a resent one may be lost too: hence >=)
    assert server["retransmits"] >= wire["dropped_to_client"]
    assert server["fast_retransmits"] + server["rto_timeouts"] >= 1
    assert server["ssthresh"] is not None  # the sender's congestion control saw the loss
    assert client["ooo_segments"] >= 1  # segments after a hole, held until it was filled
    for side in (server, client):
        assert side["srtt_ms"] is not None and side["srtt_ms"] > 0
        assert side["cwnd"] > 0 and side["mss"] > 0
    assert server["segs_out"] >= 1_000_000 // server["mss"]


@pytest.mark.slow
def test_usnet_demo_runs_end_to_end_without_matplotlib_and_prints_every_part(tmp_path):
    # --packets 20000 rather than 2000: with 2000 the UDP part's flow-table snapshot
    # (usnet/bench/udp.py) can miss the sender's short-lived flow and then polls for 10 s.
    # A matplotlib that cannot be imported stands first on the path: the demo without --plot
    # must never import it (it is an optional dependency).
    (tmp_path / "matplotlib.py").write_text("raise ImportError('usnet demo imported matplotlib without --plot')\n")
    env = dict(os.environ, COLUMNS="200",  # rich wraps at 80 columns when not on a terminal
               PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    p = subprocess.run([sys.executable, "-m", "usnet.cli.main", "demo", "--packets", "20000", "--phase", "0.3"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    assert "HTTP over usnet TCP" in out
    assert "TCP statistics at the end of the transfer" in out
    assert "retransmitted segments" in out and "smoothed RTT" in out and "cwnd" in out
    assert "HTTP 200: 4,000,000 bytes" in out
    assert "SHA-256 digest ok" in out
    # the low-latency part (its figures are checked in tests/bench/test_demo_lowlat.py)
    assert "Low latency on a shared link" in out
    assert "with its lease (LL class)" in out and "without (general class)" in out
    assert "low-latency leases" in out and "voice" in out
    assert "bulk throughput beside the leased flow" in out
    assert "(the first DOWN)" in out and "(the first UP after it)" in out
    assert "the adaptive sender's rate over time" in out
