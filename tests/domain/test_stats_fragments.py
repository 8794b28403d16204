"""`usnet stats` shows the reassembly counters (issue 20), as a user runs it against a domain."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.l2 import Ether

from tests.helpers.util import wait_until
from usnet.domain.loop import Domain
from usnet.drivers.memwire import MemWire

ROOT = str(Path(__file__).resolve().parents[2])


def test_usnet_stats_shows_the_reassembly_counters(sockdir):
    w = MemWire()
    d = Domain()
    sw = d.add_netif("b", w.b, "10.9.0.2/24")
    path = str(sockdir / "d.sock")
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ls.bind(path)
    ls.listen()
    d.listen(ls)
    d.start()
    try:
        dg = IP(src="10.9.0.1", dst="10.9.0.2", id=7) / UDP(sport=5000, dport=5001) / (b"z" * 3000)
        frames = [bytes(Ether(dst=sw.netif.mac, src="02:00:00:00:00:01") / f) for f in fragment(dg, fragsize=1400)]
        w.a.send_batch(frames)
        wait_until(lambda: d.switches["b"].frags["frag_in"] >= len(frames), 10, "the fragments counted")
        env = {**os.environ, "PYTHONPATH": ROOT, "COLUMNS": "200"}
        run = [sys.executable, "-m", "usnet.cli.main", "stats", "--socket", path]
        doc = json.loads(subprocess.run([*run, "--json"], capture_output=True, text=True, env=env,
                                        timeout=30, check=True).stdout)
        assert doc["b"]["fragments"]["frag_in"] == len(frames) == 3
        table = subprocess.run(run, capture_output=True, text=True, env=env, timeout=30, check=True).stdout
        assert "reassembly: frag_in" in table
    finally:
        d.stop()
        ls.close()
