"""`usnet bench http`: one HTTP/1.1 keep-alive asyncio server, on kernel sockets and on usnet, under wrk.

The server is one program (usnet/bench/http_server.py) run twice, each time in
a process of its own:

* usnet: the program's listener is usnet's (`usnet.aio`), through a usnetd that
  `usnet up --netns` started on a fresh TAP (bench/tap.py); the TAP's host end
  is in a network namespace the benchmark makes and removes;
* kernel: the same program on the loop's own kernel sockets, inside that same
  namespace, listening on the namespace's loopback. Loopback is the honest
  "kernel asyncio" figure: no device in the way, the best the kernel does.

The load is `wrk` from Debian, run inside the namespace (`ip netns exec`), so
it reaches the usnet server through the TAP and the kernel one through the
namespace's loopback: `wrk -t1 -cN -d<secs> --latency` at 1, 10 and 100
connections. The two servers run side by side and the points alternate
(kernel, then usnet, at each connection count), so that a machine whose speed
drifts during the run affects both alike. Each server is warmed by a short wrk
run first (connections, ARP, the code paths).

Every figure is wrk's: requests/s and the 99th percentile of latency from its
`--latency` distribution. A point also carries what could make its figure
meaningless: wrk's socket errors and non-2xx answers, and, per server, the
requests it answered, which must be at least the ones wrk counted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CONNECTIONS", "parse_wrk", "run"]

CONNECTIONS = (1, 10, 100)
_READY_TIMEOUT = 20.0
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DUR = re.compile(r"([\d.]+)(us|ms|s|m|h)\b")


def _seconds(text: str) -> float:
    m = _DUR.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    """wrk's `--latency` report as numbers: requests/s, requests, latency percentiles (ms), errors.

    The lines it reads (wrk 4.x):
        Latency Distribution / 50%  68.00us / ... / 99%  164.00us
        401883 requests in 3.10s, 39.09MB read
        Socket errors: connect 0, read 0, write 0, timeout 0      (only when there are some)
        Non-2xx or 3xx responses: 5                                (likewise)
        Requests/sec: 129637.88
    """
    pct: dict[str, float] = {}
    for m in re.finditer(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", out, re.M):
        pct[m.group(1)] = round(_seconds(m.group(2)) * 1e3, 6)  # wrk prints to the microsecond at best
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    total = re.search(r"^\s+(\d+) requests in (\S+),", out, re.M)
    if rps is None or total is None or "99" not in pct:
        raise ValueError(f"wrk's output has no requests/s or latency distribution:\n{out}")
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    if sock := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors = dict(zip(errors, map(int, sock.groups())))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(rps.group(1)),
        "requests": int(total.group(1)),
        "seconds": _seconds(total.group(2)),
        "p50_ms": pct.get("50"), "p75_ms": pct.get("75"), "p90_ms": pct.get("90"), "p99_ms": pct["99"],
        "socket_errors": errors,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


@dataclass
class _Server:
    """A server process: its address, its stderr file, and the counts it printed when stopped."""

    proc: subprocess.Popen
    host: str
    port: int
    stderr: Any
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise RuntimeError(f"the HTTP server did not stop on SIGTERM: {self._err()}") from None
        if self.proc.returncode != 0:
            raise RuntimeError(f"the HTTP server exited {self.proc.returncode}: {self._err()}")
        last = out.strip().splitlines()[-1] if out.strip() else "{}"
        self.stats = json.loads(last)

    def _err(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-2000:]


@contextlib.contextmanager
def _server(argv: list[str]) -> Iterator[_Server]:
    """`python -m usnet.bench.http_server <argv>` (argv may start with an `ip netns exec` prefix)
    until it says `ready`; stopped (SIGTERM, its counts read) afterwards, killed on failure."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=_env())
        try:
            srv = _Server(proc, *_ready(proc, err), err)
            yield srv
            srv.stop()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _env() -> dict[str, str]:
    """This process's environment, with the usnet it runs first on PYTHONPATH (a worktree, say)."""
    import usnet

    root = os.path.dirname(os.path.dirname(os.path.abspath(usnet.__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))


def _ready(proc: subprocess.Popen, err: Any) -> tuple[str, int]:
    """The address in the server's `ready <host> <port>` line, read within _READY_TIMEOUT."""
    assert proc.stdout is not None
    line = b""
    deadline = time.monotonic() + _READY_TIMEOUT
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            raise TimeoutError(f"the HTTP server was not ready in {_READY_TIMEOUT:g} s")
        b = os.read(proc.stdout.fileno(), 1)
        if not b:
            break
        line += b
    words = line.split()
    if len(words) != 3 or words[0] != b"ready":
        err.seek(0)
        raise RuntimeError(f"the HTTP server did not start: {line!r} {err.read().decode(errors='replace')}")
    return words[1].decode(), int(words[2])


def _wrk(ns_name: str, url: str, connections: int, seconds: float) -> dict[str, Any]:
    argv = ["ip", "netns", "exec", ns_name, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
            "--timeout", "5s", "--latency", url]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        raise RuntimeError(f"wrk failed ({r.returncode}): {r.stderr or r.stdout}")
    return parse_wrk(r.stdout)


def available() -> str | None:
    """None when the benchmark can run; otherwise what it lacks."""
    from usnet.bench import tap

    if not tap.available():
        return "needs root and /dev/net/tun (it makes a TAP device)"
    if shutil.which("wrk") is None:
        return "needs wrk (apt-get install wrk)"
    return None


def _server_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "usnet.bench.http_server", *args]


def _wrk_version() -> str:
    r = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    return (r.stdout or r.stderr).split("\n")[0].strip()


def run(quick: bool, progress: Callable[[str], None] = lambda what: None) -> dict:
    """The JSON document of `usnet bench http --json` (needs root and wrk)."""
    from usnet.bench import tap

    seconds = 3.0 if quick else 10.0
    warm = 1.0 if quick else 2.0
    points: dict[int, dict[str, dict[str, Any]]] = {c: {} for c in CONNECTIONS}
    with tap.usnet_up() as up:
        ns = up.netns.name
        progress("starting the servers")
        with _server(up.netns.exec_argv(_server_argv("--stack", "kernel", "--host", "127.0.0.1"))) as kern, \
                _server(_server_argv("--stack", "usnet", "--host", up.usnet_ip, "--usnetd", up.socket_path,
                                     "--netif", up.ifname)) as usn:
            servers = {"kernel": kern, "usnet": usn}
            for name, srv in servers.items():
                progress(f"warming {name}")
                _wrk(ns, srv.url, 10, warm)
            for c in CONNECTIONS:
                for name, srv in servers.items():
                    progress(f"{c} connection{'s' if c > 1 else ''}: {name}")
                    points[c][name] = _wrk(ns, srv.url, c, seconds)
        served = {name: srv.stats for name, srv in servers.items()}
    results = []
    for c in CONNECTIONS:
        k, u = points[c]["kernel"], points[c]["usnet"]
        results.append({
            "connections": c,
            "usnet_rps": u["rps"], "kernel_rps": k["rps"], "ratio_rps": u["rps"] / k["rps"],
            "usnet_p99_ms": u["p99_ms"], "kernel_p99_ms": k["p99_ms"], "ratio_p99": u["p99_ms"] / k["p99_ms"],
            "usnet": u, "kernel": k,
        })
    at10 = next(r for r in results if r["connections"] == 10)
    return {
        "results": results,
        "seconds": seconds,
        "wrk": _wrk_version(),
        "kernel_path": "loopback inside the benchmark's namespace",
        "usnet_path": "TAP (usnet up --netns), wrk in the namespace holding its host end",
        "served": served,  # the servers' own counts: requests answered, connections, parse errors
        "target": {"ratio_rps_at_10": 0.8, "ratio_p99_at_10": 2.0,
                   "met": at10["ratio_rps"] >= 0.8 and at10["ratio_p99"] <= 2.0},
    }
