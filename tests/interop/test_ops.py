"""Issue 20, operations: `usnet capture`, `usnet metrics` and `usnet ss` against a real usnetd
on a TAP in the test's namespace, with the kernel's own sockets (and tools: tshark, ss) as peers.

usnetd runs as a child (tests/helpers/usnetd.Daemon); the commands run as `python -m
usnet.cli.main`, as an operator would run them.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from tests.helpers.usnetd import Daemon
from tests.helpers.util import fresh_subnet, tap_name, wait_until

pytestmark = pytest.mark.privileged

CLI = [sys.executable, "-m", "usnet.cli.main"]


class TapDaemon:
    """usnetd with one TAP netif "usnet0" (10.x.0.2, offload on: 64 KB super-segments), the host 10.x.0.1."""

    def __init__(self, sockdir, extra: str = "") -> None:
        from pyroute2 import IPRoute

        self.x, self.ifname = fresh_subnet(), tap_name()
        self.usnet_ip, self.host_ip = f"10.{self.x}.0.2", f"10.{self.x}.0.1"
        self.path = str(sockdir / "usnetd.sock")
        self.metrics = str(sockdir / "metrics.sock")
        config = sockdir / "usnetd.toml"
        config.write_text(f'metrics = "unix:{self.metrics}"\n{extra}'
                          f'[[netif]]\nname = "usnet0"\ndriver = "tap"\nifname = "{self.ifname}"\n'
                          f'address = "{self.usnet_ip}/24"\ngateway = "{self.host_ip}"\n')
        self.daemon = Daemon(self.path, sockdir / "usnetd.log", "--config", str(config))
        with IPRoute() as ipr:
            (idx,) = ipr.link_lookup(ifname=self.ifname)
            ipr.link("set", index=idx, state="up")
            ipr.addr("add", index=idx, address=self.host_ip, prefixlen=24)

    def cli(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(CLI + [args[0], "--socket", self.path, *args[1:]], capture_output=True,
                              text=True, timeout=60, **kw)

    def sessions(self) -> list[dict]:
        from usnet.client import Client

        with Client.connect(self.path) as c:
            return c.status()["sessions"]


@pytest.fixture
def tapd(sockdir, monkeypatch):
    from usnet import socket as us

    d = TapDaemon(sockdir)
    monkeypatch.setenv("USNET_SOCKET", d.path)
    monkeypatch.setenv("USNET_NETIF", "usnet0")
    us.configure(None, None)
    try:
        yield d
    finally:
        us.configure(None, None)
        d.daemon.stop()


def _sink(ls: socket.socket, got: dict) -> threading.Thread:
    """A kernel server that reads one connection to its end."""
    def run() -> None:
        c, _ = ls.accept()
        n = 0
        while data := c.recv(1 << 20):
            n += len(data)
        got["bytes"] = n
        got["conn"] = c

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")
def test_capture_filter_piped_into_tshark(tapd):
    """`usnet capture -w - 'tcp port P'` | tshark -r -: only port P's frames, none malformed, super-segments whole."""
    from usnet import socket as us

    ls = socket.create_server((tapd.host_ip, 0))
    ls.settimeout(20)
    port = ls.getsockname()[1]
    noise = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # UDP the filter must leave out
    noise.bind((tapd.host_ip, 0))
    cap = subprocess.Popen(CLI + ["capture", "--socket", tapd.path, "-w", "-", "tcp", "port", str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    shark = subprocess.Popen(["tshark", "-r", "-", "-T", "fields", "-E", "separator=,", "-e", "frame.len",
                              "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "_ws.malformed"],
                             stdin=cap.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cap.stdout.close()
    try:
        wait_until(lambda: any(s["channels"] for s in tapd.sessions()), 20, "the monitor to open")
        got: dict = {}
        t = _sink(ls, got)
        u = us.socket(us.AF_INET, us.SOCK_DGRAM)
        for _ in range(20):
            u.sendto(b"n" * 100, noise.getsockname())
        s = us.create_connection((tapd.host_ip, port), timeout=20)
        s.sendall(b"x" * 2_000_000)
        s.close()
        t.join(20)
        assert got.get("bytes") == 2_000_000
        noise.settimeout(10)
        for _ in range(20):
            noise.recv(200)  # the UDP noise crossed the netif before the capture stops
        u.close()
    finally:
        cap.send_signal(signal.SIGINT)
        err = cap.stderr.read().decode()
        cap.wait(20)
        out, shark_err = shark.communicate(timeout=60)
    assert cap.returncode == 0, err
    rows = [line.split(",") for line in out.splitlines() if line]
    assert rows, f"tshark read no frames: {shark_err}\n{err}"
    assert all(str(port) in (r[1], r[2]) for r in rows), "a frame the filter should have left out"
    assert not any(r[3] for r in rows), "tshark found malformed frames"
    assert max(int(r[0]) for r in rows) > 2048, "no super-segment was captured whole"
    assert "captured" in err and "could not keep" not in err, err


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_metrics_scraped_during_traffic_agree_with_stats(tapd):
    """The endpoint answers while a transfer runs; once it ends, its figures are `usnet stats`' and the flows'."""
    import json

    from usnet import socket as us
    from usnet.cli.ops import fetch_metrics

    ls = socket.create_server((tapd.host_ip, 0))
    ls.settimeout(20)
    got: dict = {}
    t = _sink(ls, got)
    s = us.create_connection(ls.getsockname(), timeout=20)
    during = []
    for _ in range(20):
        s.sendall(b"y" * 100_000)
        during.append(_samples(fetch_metrics(f"unix:{tapd.metrics}")))  # mid-transfer: the loop keeps going
    assert during[-1][("usnet_netif_tx_frames_total", frozenset({("netif", "usnet0")}))] > 0
    s.close()
    t.join(20)
    assert got.get("bytes") == 2_000_000
    # quiet now (the kernel's own chatter aside, which both reads would see): compare
    for _ in range(10):  # a read of the metrics between two equal reads of the stats and flows
        stats, flows0 = json.loads(tapd.cli("stats", "--json").stdout)["usnet0"], tapd.cli("flows", "--json").stdout
        m = _samples(tapd.cli("metrics").stdout)
        stats2, flows1 = json.loads(tapd.cli("stats", "--json").stdout)["usnet0"], tapd.cli("flows", "--json").stdout
        if stats == stats2 and flows0 == flows1:
            break
    nif = frozenset({("netif", "usnet0")})
    for k in ("rx_frames", "rx_bytes", "tx_frames", "tx_bytes"):
        assert m[(f"usnet_netif_{k}_total", nif)] == stats["netif"][k], k
    for reason, v in stats["drops"].items():
        assert m[("usnet_netif_drops_total", frozenset({("netif", "usnet0"), ("reason", reason)}))] == v
    for n in json.loads(flows0):
        for f in n["flows"]:
            lab = {("netif", n["netif"]["name"]), ("channel", str(f["channel"]))}
            for d in ("tx", "rx"):
                (v,) = [v for k, v in m.items() if k[0] == "usnet_flow_packets_total" and lab | {("direction", d)}
                        <= k[1]]
                assert v == f["stats"].get(f"{d}_packets", 0), (f, d)
    # a flow's counters, read mid-transfer, never ran ahead of the netif's, and it sent what TCP sent
    flows = [(k, v) for k, v in during[-1].items() if k[0] == "usnet_flow_packets_total"
             and ("direction", "tx") in k[1] and any(lab == "flow" and "tcp" in val for lab, val in k[1])]
    assert flows and all(v <= during[-1][("usnet_netif_tx_frames_total", nif)] * 64 for _, v in flows)
    assert any(v > 0 for _, v in flows)
    # the connection's flow (in TIME-WAIT now) counted bytes, no more than the netif sent
    byts = [v for k, v in m.items() if k[0] == "usnet_flow_bytes_total" and ("direction", "tx") in k[1]]
    assert 0 < max(byts) <= m[("usnet_netif_tx_bytes_total", nif)]
    assert m[("usnet_control_requests_total", frozenset({("type", "OpenFlow")}))] >= 1
    assert m[("usnet_sessions_opened_total", frozenset())] >= 1


def test_a_program_named_as_markup_cannot_break_usnet_flows(tapd):
    """A client process names itself (its comm, which /proc shows) as rich markup that does not
    close: `usnet flows`, which shows every flow's program to whoever runs it, prints the name as
    text and exits 0 (usnet.cli.shown)."""
    prog = textwrap.dedent(f"""
        import ctypes, sys
        ctypes.CDLL(None).prctl(15, b"[/x][bold]", 0, 0, 0)  # PR_SET_NAME, before usnetd reads it
        from usnet.client import Client
        c = Client.connect({tapd.path!r})
        ch, info = c.open_flow("usnet0", 17, 0)
        print("ready", info.local_port, flush=True)
        sys.stdin.read()
    """)
    p = subprocess.Popen([sys.executable, "-c", prog], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline() if select.select([p.stdout], [], [], 20)[0] else ""
        assert line.startswith("ready"), line
        r = tapd.cli("flows", env={**os.environ, "COLUMNS": "300"})
    finally:
        p.stdin.close()
        p.wait(10)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[/x][bold]" in r.stdout, r.stdout
