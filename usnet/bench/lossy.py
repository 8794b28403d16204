"""`usnet bench lossy`: bulk TCP over one impaired path, usnet against the kernel (issue 17).

The path is a veth between two namespaces of the benchmark's own, impaired on both egress
ingress hooks by usnet/bench/impair.py (2 % loss, 1 % duplication, 10 % held back 2 ms so later
packets overtake it, as the issue measured; data and ACKs alike):

    usnet ── TAP ── [near: usnetd's TAP host end, forwarding] ══ impaired veth ══ [far]

`usnet up --netns` (bench/tap.py) makes the TAP and the near namespace; usnet's gateway is
the TAP's host end, so its traffic to the far side crosses the veth. Four transfers, one
after another, in the same run and over the same veth:

* usnet_tx: usnet (this process) sends to a kernel receiver in far;
* usnet_rx: a kernel sender in far sends to usnet;
* kernel_tx: a kernel sender in near sends to a kernel receiver in far (usnet_tx's reference);
* kernel_rx: a kernel sender in far sends to a kernel receiver in near (usnet_rx's reference).

Each is timed from before the connect until the receiver confirms (tx) or EOF (rx), as in
`usnet bench tcp` (whose bulk_tx/bulk_rx it runs): 4 MB once each with --quick, otherwise
20 MB three times each, the four interleaved; the median throughput is reported. The
sender's RTO count and retransmitted segments, summed over the runs: for usnet, its
connection's `tcp_info()` (rto_timeouts, retransmits; a TSO super-segment counts once); for
the kernel, the delta of TcpExt TCPTimeouts and Tcp RetransSegs in the sender's namespace,
where nothing else speaks TCP meanwhile. In the kernel → usnet direction the RTOs are the
kernel sender's: what usnet's ACKs (SACK, DSACK) let it recover without.

Every sender of a run uses one congestion control, `--cc` (cubic by default, or bbr, or
reno), set per socket with TCP_CONGESTION as a Linux program does: usnet's sockets before
they connect, the kernel's connecting sockets and listeners (whose accepted sockets inherit
it) in their namespaces. So each usnet row and its kernel reference compare like with like;
the algorithm is in the JSON (``cc``) and in the table's title.

Target (issue 17), for each algorithm: usnet at least 0.7 times the kernel's throughput each
way with the same algorithm, and, as a sender, at most one RTO per 20 MB. The impairment is
not seeded (the kernel's random numbers), so figures vary from run to run, and more on a
busy machine.
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import subprocess
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from usnet.bench import impair, tcp

if TYPE_CHECKING:
    from usnet.drivers.hostnet import NetNs

__all__ = ["CCS", "DELAY", "IMPAIRMENT", "LABELS", "NAMES", "TARGET_RATIO", "TARGET_RTO_PER_20MB", "run"]

IMPAIRMENT = impair.Impairment(drop=0.02, duplicate=0.01, reorder=0.10)
DELAY = 0.002  # seconds a held (reordered) packet waits
TARGET_RATIO = 0.7
TARGET_RTO_PER_20MB = 1.0
NEAR_CIDR, FAR_CIDR = "10.232.0.1/24", "10.232.0.2/24"
FAR_IP = FAR_CIDR.partition("/")[0]
NEAR_IP = NEAR_CIDR.partition("/")[0]
LABELS = {"usnet_tx": "usnet → kernel", "usnet_rx": "kernel → usnet",
          "kernel_tx": "kernel → kernel (near → far)", "kernel_rx": "kernel → kernel (far → near)"}
NAMES = tuple(LABELS)
CCS = ("cubic", "bbr", "reno")  # what both usnet and the kernel here have


def _counters() -> dict[str, int]:
    """Tcp RetransSegs and TcpExt TCPTimeouts of the calling thread's namespace."""
    out: dict[str, int] = {}
    for path, want in (("/proc/thread-self/net/snmp", {"Tcp": "RetransSegs"}),
                       ("/proc/thread-self/net/netstat", {"TcpExt": "TCPTimeouts"})):
        with open(path) as f:
            lines = f.read().splitlines()
        for head, vals in zip(lines[::2], lines[1::2]):
            prefix, _, names = head.partition(": ")
            if prefix in want:
                out[want[prefix]] = int(dict(zip(names.split(), vals.partition(": ")[2].split()))[want[prefix]])
    return out


@contextlib.contextmanager
def _kernel_sender_stats(ns: NetNs, into: dict[str, Any]) -> Iterator[None]:
    before = ns.call(_counters)
    yield
    after = ns.call(_counters)
    into["rto"] = after["TCPTimeouts"] - before["TCPTimeouts"]
    into["retrans"] = after["RetransSegs"] - before["RetransSegs"]


class _Recorded:
    """A usnet socket whose TCP statistics are read just before it closes (bulk_tx closes it)."""

    def __init__(self, sock: Any, into: dict[str, Any]) -> None:
        self._sock, self._into = sock, into

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def close(self) -> None:
        info = self._sock.tcp_info()
        self._into.update(rto=info["rto_timeouts"], retrans=info["retransmits"], tcp_info=info)
        self._sock.close()


def _sysctl(ns: NetNs, key: str, value: str) -> None:
    subprocess.run(ns.exec_argv(["sysctl", "-qw", f"{key}={value}"]), check=True, timeout=10)


def _route_back(far: NetNs, prefix: str, via: str) -> None:
    def add() -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ipr.route("add", dst=prefix, gateway=via)

    far.call(add)


def _row(name: str, size: int, runs: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    """One direction's figures over its runs: the median throughput, the sender's RTOs and
    retransmitted segments summed, and RTOs per 20 MB over all the bytes sent."""
    rto = sum(st["rto"] for _, st in runs)
    return {"test": name, "MBps": statistics.median(m for m, _ in runs), "runs_MBps": [m for m, _ in runs],
            "rto": rto, "retrans": sum(st["retrans"] for _, st in runs),
            "rto_per_20MB": rto * 20e6 / (size * len(runs))}


def run(quick: bool, progress: Callable[[str], None] = lambda what: None, cc: str = "cubic") -> dict:
    """The JSON document of `usnet bench lossy --json` (needs root: it makes a TAP, a veth, namespaces);
    every sender uses congestion control `cc`."""
    from usnet import socket as us
    from usnet.bench import tap
    from usnet.drivers.hostnet import NetNs

    if cc not in CCS:
        raise ValueError(f"congestion control {cc!r}: one of {', '.join(CCS)}")
    name_cc = cc.encode()
    size = (4 if quick else 20) * 1_000_000
    rounds = 1 if quick else 3
    figures: dict[str, list[tuple[float, dict[str, Any]]]] = {n: [] for n in NAMES}
    usnet_info: dict[str, Any] = {}
    with tap.usnet_up() as up, NetNs() as far:
        near = up.netns
        progress("impairing the path")
        _sysctl(near, "net.ipv4.ip_forward", "1")
        with impair.impaired_veth(near, far, NEAR_CIDR, FAR_CIDR, IMPAIRMENT, DELAY):
            _route_back(far, up.usnet_ip.rsplit(".", 1)[0] + ".0/24", NEAR_IP)

            def usnet_connect(addr: tuple[str, int]) -> Any:
                s = us.socket(client=up.client, netif=up.ifname)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name_cc)  # usnet takes Linux's numbers
                s.settimeout(60)
                s.connect(addr)
                return s

            def kernel_connect(addr: tuple[str, int]) -> socket.socket:
                def connect() -> socket.socket:
                    s = socket.socket()
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name_cc)
                    s.settimeout(60)
                    s.connect(addr)
                    return s

                return near.call(connect)

            def usnet_tx() -> tuple[float, dict[str, Any]]:
                stats: dict[str, Any] = {}
                mbps = tcp.bulk_tx(lambda addr: _Recorded(usnet_connect(addr), stats), FAR_IP, size, far, cc)
                usnet_info.update(stats.pop("tcp_info"))
                return mbps, stats

            def kernel_sends(ns: NetNs, fn: Callable[[], float]) -> tuple[float, dict[str, Any]]:
                stats: dict[str, Any] = {}
                with _kernel_sender_stats(ns, stats):
                    mbps = fn()
                return mbps, stats

            transfers: dict[str, Callable[[], tuple[float, dict[str, Any]]]] = {
                "usnet_tx": usnet_tx,
                "usnet_rx": lambda: kernel_sends(far, lambda: tcp.bulk_rx(usnet_connect, FAR_IP, size, far, cc)),
                "kernel_tx": lambda: kernel_sends(near, lambda: tcp.bulk_tx(kernel_connect, FAR_IP, size, far, cc)),
                "kernel_rx": lambda: kernel_sends(far, lambda: tcp.bulk_rx(kernel_connect, FAR_IP, size, far, cc)),
            }
            for r in range(rounds):  # interleaved, so that a machine whose speed drifts affects all alike
                for name, fn in transfers.items():
                    progress(f"round {r + 1}/{rounds}: {LABELS[name]}, {size // 1_000_000} MB")
                    figures[name].append(fn())
    rows = {name: {**_row(name, size, runs), "cc": cc} for name, runs in figures.items()}
    ratio_tx = rows["usnet_tx"]["MBps"] / rows["kernel_tx"]["MBps"]
    ratio_rx = rows["usnet_rx"]["MBps"] / rows["kernel_rx"]["MBps"]
    return {
        "cc": cc,  # every sender's congestion control, usnet's and the kernel's
        "results": list(rows.values()),
        "ratio_tx": ratio_tx,
        "ratio_rx": ratio_rx,
        "bytes": size,
        "rounds": rounds,
        "impairment": {"drop": IMPAIRMENT.drop, "duplicate": IMPAIRMENT.duplicate,
                       "reorder": IMPAIRMENT.reorder, "reorder_delay_ms": DELAY * 1e3,
                       "where": "ingress of both ends of the veth (data and ACKs)"},
        "usnet_tcp_info": usnet_info,  # the last usnet sender's whole TCP statistics, for the note
        "target": {"cc": cc, "ratio": TARGET_RATIO, "rto_per_20MB": TARGET_RTO_PER_20MB,
                   "met": (ratio_tx >= TARGET_RATIO and ratio_rx >= TARGET_RATIO
                           and rows["usnet_tx"]["rto_per_20MB"] <= TARGET_RTO_PER_20MB)},
    }
