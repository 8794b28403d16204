"""Issue 20, `usnet ss` and `usnet flows` against a real usnetd on a TAP in the test's namespace,
with the kernel's own sockets (and its `ss`) as the peer of each connection.

The figures come from the TCPINFO records each client's stack publishes in its flow channel
(usnet.abi.tcpinfo), which usnetd reads for display; usnet's figures of a connection are compared
with the kernel's own figures of the same connection, once it is quiet.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import socket
import subprocess

import pytest

from tests.helpers.util import wait_until
from tests.interop.test_ops import tapd  # noqa: F401 (the fixture)

pytestmark = pytest.mark.privileged


def _ss_rows(tapd, *args: str) -> list[dict]:  # noqa: F811
    r = tapd.cli("ss", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _kernel_ss(port: int) -> dict[str, float]:
    """The kernel's `ss -tin` figures of its end of the connection on local port `port`."""
    out = subprocess.run(["ss", "-tinH", "state", "established", "sport", f"= :{port}"], capture_output=True,
                         text=True, check=True).stdout
    info: dict[str, float] = {}
    for k in ("bytes_acked", "bytes_received", "segs_out", "segs_in"):
        m = re.search(rf"\b{k}:(\d+)", out)
        assert m, (k, out)
        info[k] = int(m.group(1))
    m = re.search(r"\brtt:([\d.]+)/([\d.]+)", out)
    assert m, out
    info["rtt_ms"] = float(m.group(1))
    return info


def _read(sock, size: int) -> int:
    """Read `size` bytes from `sock` (its timeout bounds each read); how many came."""
    n = 0
    while n < size:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        n += len(chunk)
    return n


def test_ss_i_agrees_with_the_kernel_peers_own_ss(tapd):  # noqa: F811
    """Bytes each way and segments agree with the kernel's figures of the same connection; rtt in its range."""
    from usnet import socket as us

    ls = socket.create_server((tapd.host_ip, 0))
    ls.settimeout(20)
    port = ls.getsockname()[1]
    s = us.create_connection((tapd.host_ip, port), timeout=20)
    k, _ = ls.accept()
    k.settimeout(20)
    # each side reads while the other sends: what one side may send before the other reads is
    # the buffers' (the kernel's receive buffer grows only as its program reads), not the test's
    for sender, receiver, size in ((s, k, 300_000), (k, s, 200_000)):
        reader = concurrent.futures.ThreadPoolExecutor(1)
        got = reader.submit(_read, receiver, size)
        sender.sendall(b"x" * size)
        assert got.result(timeout=20) == size
        reader.shutdown()

    def mine() -> dict | None:
        rows = [r for r in _ss_rows(tapd) if r["remote"] == f"{tapd.host_ip}:{port}"]
        return rows[0] if rows and rows[0]["bytes_acked"] == 300_000 and rows[0]["bytes_received"] == 200_000 \
            else None

    wait_until(lambda: mine() is not None, 10, "usnet ss to show the whole exchange")
    row = mine()
    ker = _kernel_ss(port)
    assert row["state"] == "ESTAB"
    assert row["owner"]["pid"] == os.getpid() and row["owner"]["uid"] == os.getuid()
    assert ker["bytes_received"] == row["bytes_acked"] == 300_000
    assert ker["bytes_acked"] == row["bytes_received"] == 200_000
    # segments: each side counts what crossed the wire (the kernel counts a super-segment's segments)
    assert row["segs_out"] <= ker["segs_in"] <= row["segs_out"] * 50, (row, ker)
    assert row["segs_in"] > 0 and ker["segs_out"] > 0
    # rtt: the kernel times usnet's ACKs and usnet the kernel's, over the same TAP: the same range
    assert 0 < row["rtt_us"] / 1000 < 1000 and 0 < ker["rtt_ms"] < 1000
    assert row["cwnd"] > 0 and row["mss"] > 0 and row["pacing_rate"] > 0
    text = tapd.cli("ss", "-tiepn")
    assert text.returncode == 0, text.stderr
    assert f"{tapd.host_ip}:{port}" in text.stdout and f"pid={os.getpid()}" in text.stdout
    assert "rtt:" in text.stdout and "bytes_acked:300000" in text.stdout and "cwnd:" in text.stdout
    s.close()
    k.close()
    ls.close()


def test_flows_shows_accepted_connections_with_state_and_owner(tapd):  # noqa: F811
    """A usnet listener's accepted connection is a row of its own, ESTAB, with the listener's process;
    a connect still in its handshake is SYN-SENT, not "connected"; no address is cut."""
    from usnet import socket as us

    srv = us.create_server(("", 0))
    port = srv.getsockname()[1]
    k = socket.create_connection((tapd.usnet_ip, port), timeout=20)
    a, _ = srv.accept()
    a.sendall(b"hello")
    assert k.recv(5) == b"hello"
    kport = k.getsockname()[1]

    def flows() -> str:
        r = tapd.cli("flows", env={**os.environ, "COLUMNS": "80"})
        assert r.returncode == 0, r.stderr
        return r.stdout

    wait_until(lambda: "accepted" in flows() and "ESTAB" in flows(), 10, "flows to show the accepted connection")
    out = flows()
    joined = out.replace("│", " ")
    assert "LISTEN" in out and f"{os.getpid()}/" in out
    wide = tapd.cli("flows", "--wide").stdout
    line = [ln for ln in wide.splitlines() if "accepted" in ln]
    assert line and f"{tapd.host_ip}:{kport}" in line[0] and "ESTAB" in line[0] and f"{os.getpid()}/" in line[0]
    assert "10.77.0…" not in joined and "…" not in out  # folded, never cut
    # a bound socket's connect to an address nobody answers: its own flow, SYN-SENT for ~3 s
    b = us.socket(us.AF_INET, us.SOCK_STREAM)
    b.bind(("", 0))
    b.setblocking(False)
    dead = f"10.{tapd.x}.0.77"
    try:
        b.connect((dead, 9))
    except BlockingIOError:
        pass
    wait_until(lambda: any(dead in ln and "SYN-SENT" in ln for ln in tapd.cli("flows", "--wide").stdout.splitlines()),
               3, "the handshaking flow to show SYN-SENT")
    b.close()
    a.close()
    k.close()
    srv.close()


def test_ping_the_kernel_peer_and_an_address_nobody_answers(tapd):  # noqa: F811
    """`usnet ping` from usnet's address gets the kernel's replies (seq, ttl, time, a summary); to an
    address in the subnet that nobody holds, every request is lost and the summary says so."""
    r = tapd.cli("ping", "-c", "3", "-i", "0.2", tapd.host_ip)
    assert r.returncode == 0, (r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"PING {tapd.host_ip} ({tapd.host_ip}) from {tapd.usnet_ip} usnet0")
    for seq in (1, 2, 3):
        assert any(f"icmp_seq={seq} ttl=64 time=" in ln for ln in lines), r.stdout
    assert "3 packets transmitted, 3 received, 0% packet loss" in r.stdout
    m = re.search(r"rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", r.stdout)
    assert m and 0 < float(m[1]) <= float(m[2]) <= float(m[3]) < 1000, r.stdout
    dead = f"10.{tapd.x}.0.77"
    r = tapd.cli("ping", "-c", "2", "-i", "0.2", "-W", "1", dead)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "2 packets transmitted, 0 received, 100% packet loss" in r.stdout
    assert "icmp_seq" not in r.stdout and "rtt min" not in r.stdout


def test_a_client_scribbling_on_its_records_leaves_usnetd_and_other_rows_alone(tapd):  # noqa: F811
    """Through a real usnetd: random bytes in one client's TCPINFO region, every `usnet ss` still answers,
    the other client's connection is shown as it is, and the scribbler's own listener shows only its port."""
    from usnet import socket as us
    from usnet.abi.tcpinfo import TCPINFO_HEADER
    from usnet.client import Client

    ls = socket.create_server((tapd.host_ip, 0))
    ls.settimeout(20)
    port = ls.getsockname()[1]
    s = us.create_connection((tapd.host_ip, port), timeout=20)
    k, _ = ls.accept()
    wait_until(lambda: any(r["remote"] == f"{tapd.host_ip}:{port}" for r in _ss_rows(tapd)), 10, "the honest row")
    with Client.connect(tapd.path) as liar:
        ch, _ = liar.open_flow("usnet0", 6, 0)
        mem = ch.tcpinfo
        for _ in range(5):
            mem[TCPINFO_HEADER.size:] = os.urandom(len(mem) - TCPINFO_HEADER.size)
            rows = _ss_rows(tapd, "-a")
            honest = [r for r in rows if r["remote"] == f"{tapd.host_ip}:{port}"]
            assert len(honest) == 1 and honest[0]["state"] == "ESTAB"
            theirs = [r for r in rows if r["channel"] == ch.id]
            assert all(r["local_port"] == theirs[0]["local_port"] for r in theirs)
        ch.close()
    assert tapd.daemon.proc.poll() is None, tapd.daemon.log_text()
    s.close()
    k.close()
    ls.close()
