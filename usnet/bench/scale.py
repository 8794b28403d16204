"""`usnet bench scale`: what one more connection or flow costs when many are already open (issue 18).

Four figures, each at several counts of connections or flows already open, so
that a cost that grows with them shows as a falling rate:

* accept rate: kernel clients in a network namespace of the bench's own open
  connections to a `usnet.socket` listener in this process, reached through
  the TAP of `usnet up --netns` (bench/tap.py). The figure is the time for the
  next `k` accepts with 0, 1,000 and 10,000 connections already accepted and
  held open. The kernel row is the same program on a kernel listener in the
  same namespace, over its loopback.
* outgoing connect rate: at each of those counts (the accepted connections
  still open), this program opens connections one after another to a kernel
  listener in the namespace: connect, see the server's close, close
  (bench/tcp.py's connect_out_rate, unchanged). Kernel beside, likewise.
* memory per open connection: the growth of this process's RSS and of
  usnetd's, from before the first held connection to the last, per connection.
* UDP datagrams/s through the flow switch of an embedded domain (two netifs
  on a memwire, as `usnet bench udp`), with 1, 100 and 1,000 sending flows in
  one application process taking turns, `BATCH` datagrams a turn, to one
  receiving flow in another process.

How the clients are driven: one forked child in the namespace holds every
client socket; the bench tells it over a pipe "open n", it opens them with at
most `WINDOW` handshakes in flight (so the listener's queues never overflow and
no SYN waits for a retransmission timer) and says when all n are connected.
The accept figure is timed by the listener, from the order to the n-th accept;
the accepted sockets it times are closed as they come (and the clients reset
them), so the count open stays at the level.

Python's cyclic collector: filling to a level makes every held connection's
objects long-lived, and CPython owes a full collection once those exceed a
quarter of the long-lived heap; it runs it at one of the next young
collections, which fell in the timed take in most runs (0.1 s at 10,000 held,
half the take). That debt is the fill's, so the bench settles it
(`gc.collect()`) before each timed take, as the warm-up settles ARP and cold
paths. What the collector does inside a take is still in the figure, and
counted beside it (`gc_full`, `gc_seconds`).

Client sockets close with SO_LINGER 0 (a reset) at the end, so that tearing
10,000 connections down does not take longer than the bench.

The namespace gets `tcp_tw_reuse`, most of the port range as ephemeral ports
and somaxconn 4096. A usnet socket nobody selects on holds no descriptor (its
readiness pair is made on first `fileno()`), but the kernel's side holds one a
connection, so the bench raises its RLIMIT_NOFILE to what the top level
needs: past the hard limit when it may (CAP_SYS_RESOURCE; the children
inherit it). When it may not, the top level is capped at what the limit leaves
room for, and the document's `levels` and `open` say so.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from usnet.bench.baselines import _fork, _reap

if TYPE_CHECKING:
    from usnet.drivers.hostnet import NetNs

__all__ = ["FLOWS", "LEVELS", "main", "run", "udp_flows_dps"]

LEVELS = (0, 1_000, 10_000)
QUICK_LEVELS = (0, 1_000, 3_000)
FLOWS = (1, 100, 1_000)
WINDOW = 64  # client handshakes in flight at once
BATCH = 32  # datagrams a sending flow hands over in one turn
PORT_RX = 5000
_BACKLOG = 4096
_FD_SPARE = 1200  # descriptors beside the held sockets: the accepts being timed, channels, files
_RESET = 1 << 31  # in an order to the clients: reset the connections once connected


def _raise_nofile(need: int) -> int:
    """Raise this process's RLIMIT_NOFILE to at least `need` if it can; returns the soft limit now.

    The kernel's accepted sockets hold a descriptor each (a usnet socket holds none until its
    `fileno()` is asked for: usnet/client/engine.py, Readiness). The soft limit goes up to the hard
    one; root (CAP_SYS_RESOURCE) may raise the hard one too, up to fs.nr_open.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            soft, hard = need, need
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft


def _tune_netns(ns: NetNs) -> None:
    """Many short connections from one address in the namespace: reuse TIME_WAIT ports, use them all."""
    for key, value in (("net.ipv4.tcp_tw_reuse", "1"), ("net.ipv4.ip_local_port_range", "1024 65000"),
                       ("net.core.somaxconn", str(_BACKLOG)), ("net.ipv4.tcp_max_syn_backlog", str(_BACKLOG))):
        subprocess.run(ns.exec_argv(["sysctl", "-q", "-w", f"{key}={value}"]), check=True, timeout=10)


def _rss(pid: int | None = None) -> int:
    """Resident set size in bytes of `pid` (this process by default), from /proc."""
    with open(f"/proc/{pid or 'self'}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- the kernel clients: one child in the namespace, driven over pipes ----------------------------------


class _Clients:
    """A forked child in `ns` that opens connections to `addr` when told, and holds them."""

    def __init__(self, ns: NetNs | None, addr: tuple[str, int]) -> None:
        self._cmd_r, self._cmd_w = os.pipe()
        self._done_r, self._done_w = os.pipe()

        def body() -> None:
            if ns is not None:
                ns.enter()
            os.close(self._cmd_w)
            os.close(self._done_r)
            _client_loop(addr, self._cmd_r, self._done_w)

        self.pid = _fork(body)
        os.close(self._cmd_r)
        os.close(self._done_w)

    def order(self, n: int, reset: bool = False) -> None:
        """Open `n` connections and hold them; with `reset`, reset each once it is accepted instead."""
        os.write(self._cmd_w, struct.pack("!I", n | (_RESET if reset else 0)))

    def wait(self, timeout: float = 120.0) -> None:
        if not select.select([self._done_r], [], [], timeout)[0]:
            raise TimeoutError("the kernel clients did not connect in time")
        word = os.read(self._done_r, 4)
        if len(word) != 4 or struct.unpack("!I", word)[0] != 0:
            raise OSError(f"the kernel clients failed: {word!r}")

    def close(self, ok: bool) -> None:
        os.write(self._cmd_w, struct.pack("!I", 0xFFFFFFFF))
        os.close(self._cmd_w)
        os.close(self._done_r)
        _reap(self.pid, ok)


def _client_loop(addr: tuple[str, int], cmd: int, done: int) -> None:
    held: list[socket.socket] = []
    linger = struct.pack("ii", 1, 0)
    while len(word := os.read(cmd, 4)) == 4:
        n = struct.unpack("!I", word)[0]
        if n == 0xFFFFFFFF:
            break
        reset, n = bool(n & _RESET), n & ~_RESET
        ep = select.epoll()
        pending: dict[int, socket.socket] = {}
        started = 0
        ok = 0
        deadline = time.monotonic() + 120
        while ok < n and time.monotonic() < deadline:
            while started < n and len(pending) < WINDOW:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                s.setblocking(False)
                s.connect_ex(addr)
                pending[s.fileno()] = s
                ep.register(s.fileno(), select.EPOLLOUT)
                started += 1
            for fd, _ in ep.poll(1.0):
                s = pending.pop(fd)
                ep.unregister(fd)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    os.write(done, struct.pack("!I", 1))
                    return
                held.append(s)
                ok += 1
        ep.close()
        os.write(done, struct.pack("!I", 0 if ok == n else 2))
        if reset:  # after the listener took them all: a reset, not a FIN (SO_LINGER 0)
            for s in held[len(held) - n:]:
                s.close()
            del held[len(held) - n:]
    for s in held:
        s.close()


# -- accept and connect at each level ----------------------------------------------------------------


class _Collections:
    """The cyclic collector's work while it is installed: full (generation 2) collections, seconds of all.

    A `gc.callbacks` entry, so it sees collections whichever thread runs them.
    """

    def __init__(self) -> None:
        self.full = 0
        self.seconds = 0.0
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        self.seconds += time.perf_counter() - self._t0
        self.full += info["generation"] == 2


def timed_take(take: Callable[[], object]) -> tuple[float, int, float]:
    """Run `take` timed: (seconds, full collections in it, seconds of collection in it).

    The collector is settled first: what the connections made before the take owe it (a full
    collection, 0.1 s at 10,000 held) is theirs, not the take's; what the take's own objects
    make it do stays in the figure, and is counted.
    """
    gc.collect()
    seen = _Collections()
    gc.callbacks.append(seen)
    try:
        t0 = time.perf_counter()
        take()
        dt = time.perf_counter() - t0
    finally:
        gc.callbacks.remove(seen)
    return dt, seen.full, seen.seconds


def _levels(listen: Callable[[], Any], connect: Callable[[tuple[str, int]], Any], out_host: str,
            levels: tuple[int, ...], k: int, k_out: int, ns: NetNs | None,
            rss_pid: int | None, progress: Callable[[str], None], side: str) -> dict[str, Any]:
    """Accept and connect rates at each level of held connections, and the RSS growth per connection."""
    from usnet.bench.tcp import connect_out_rate

    ls = listen()
    addr = ls.getsockname()[:2]
    clients = _Clients(ns, addr)
    held: list[Any] = []
    rows = []
    ok = False

    def take(n: int, keep: bool = True) -> None:
        clients.order(n, reset=not keep)
        for _ in range(n):
            s, _ = ls.accept()
            if keep:
                held.append(s)
            else:
                s.close()
        clients.wait()

    try:
        take(k, keep=False)  # warm (ARP, the code paths), then gone: the clients reset them
        mem0 = (_rss(), _rss(rss_pid) if rss_pid else 0)
        n0 = len(held)
        for level in levels:
            progress(f"{side}: filling to {level:,} open")
            fill = level + n0 - len(held)
            while fill > 0:
                step = min(fill, 1000)
                take(step)
                fill -= step
            progress(f"{side}: {k:,} accepts at {level:,} open")
            # accepted and closed: the count open stays at the level
            dt, full, gc_s = timed_take(lambda: take(k, keep=False))
            progress(f"{side}: {k_out:,} outgoing connections at {level:,} open")
            out = connect_out_rate(connect, out_host, k_out, ns)
            rows.append({"open": level, "accept_cps": k / dt, "accept_seconds": dt, "gc_full": full,
                         "gc_seconds": gc_s, "connect_cps": out})
        mem1 = (_rss(), _rss(rss_pid) if rss_pid else 0)
        n = len(held) - n0
        ok = True
    finally:
        for s in held:
            s.close()
        ls.close()
        clients.close(ok)
    return {"rows": rows, "app_bytes_per_conn": (mem1[0] - mem0[0]) / n,
            "usnetd_bytes_per_conn": (mem1[1] - mem0[1]) / n if rss_pid else None, "held": n}


def _usnetd_pid(socket_path: str) -> int | None:
    """usnetd's pid, from the state file `usnet up` left beside its socket."""
    state = os.path.join(os.path.dirname(socket_path), "state.json")
    with contextlib.suppress(OSError, ValueError, KeyError), open(state) as f:
        return int(json.load(f)["pid"])
    return None


# -- UDP through the switch with many flows ----------------------------------------------------------


def udp_flows_dps(flows: int, count: int) -> tuple[float, int]:
    """Datagrams/s from `flows` UDP flows of one application to one flow of another, through the switch."""
    from usnet.bench.apps import run_pair
    from usnet.bench.udp import topology

    dom, _wire = topology()
    dom.start()
    try:
        rate, got = run_pair(dom, "usnet.bench.scale", (str(count),), (str(count), str(flows)), timeout=120)
        return float(rate), int(got)
    finally:
        dom.stop()


def _sender(client: Any, count: int, flows: int) -> None:
    from usnet.bench.udp import B_ADDR

    _raise_nofile(4 * flows)
    socks = [client.udp_socket("a", 0, ring_size=256, packets=512) for _ in range(flows)]
    batch = [b"\x5a" * 64] * BATCH
    dst = (B_ADDR, PORT_RX)
    for s in socks:  # every flow sends once before the clock starts: ARP, and each flow is seen
        s.sendto(b"warm", dst)
    time.sleep(0.2)  # not synchronisation: lets the warm-up datagrams drain before the count starts
    sent = 0
    while sent < count:
        for s in socks:
            sent += s.send_many(batch[:min(BATCH, count - sent)], dst)
            if sent >= count:
                break
    for s in socks:
        s.close()


def _receiver(client: Any, count: int, out_fd: int, ready_fd: int) -> None:
    s = client.udp_socket("b", PORT_RX, ring_size=16384, packets=32768)
    os.write(ready_fd, b"R")
    got = n0 = 0
    s.settimeout(60.0)  # the sender opens its flows first: 1,000 opens took over 5 s on a loaded machine
    while True:  # the warm-up datagrams ("warm", 4 bytes) are not counted
        first = s.recv_many(512)
        n0 = sum(1 for p, _ in first if len(p) != 4)
        if n0:
            break
    t0 = t_last = time.perf_counter()
    got = n0
    s.settimeout(1.0)
    try:
        while got < count:
            got += sum(1 for p, _ in s.recv_many(512) if len(p) != 4)
            t_last = time.perf_counter()
    except BlockingIOError:
        pass  # the rest was lost: the rate counts what arrived, until the last one did
    dt = t_last - t0
    os.write(out_fd, json.dumps([(got - n0) / dt if dt > 0 else 0.0, got]).encode())
    s.close()


def main(argv: list[str]) -> None:
    """A UDP application of `udp_flows_dps`, in a process of its own (bench/apps.py)."""
    from usnet.client import Client

    role, fd, count = argv[0], int(argv[1]), int(argv[2])
    client = Client.from_socket(socket.socket(fileno=fd))
    if role == "send":
        _sender(client, count, int(argv[3]))
    else:
        _receiver(client, count, int(argv[3]), int(argv[4]))


# -- the whole run -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _kernel_ns() -> Iterator[NetNs]:
    from usnet.drivers.hostnet import NetNs

    with NetNs() as ns:
        _tune_netns(ns)
        yield ns


def run(quick: bool, progress: Callable[[str], None] = lambda what: None) -> dict:
    """The JSON document of `usnet bench scale --json` (needs root: it makes a TAP and namespaces)."""
    from usnet import socket as us
    from usnet.bench import tap
    from usnet.bench.tcp import _kernel_connect

    levels: tuple[int, ...] = QUICK_LEVELS if quick else LEVELS
    k = 500 if quick else 1000
    k_out = 100 if quick else 500
    udp_count = 100_000 if quick else 400_000
    nofile = _raise_nofile(max(levels) + _FD_SPARE)  # one fd a kernel socket
    # Without CAP_SYS_RESOURCE the hard limit holds: the top level is what it leaves room for.
    levels = tuple(min(level, nofile - _FD_SPARE) for level in levels)

    with tap.usnet_up() as up:
        _tune_netns(up.netns)

        def usnet_listen() -> Any:
            ls = us.socket(client=up.client, netif=up.ifname)
            ls.settimeout(60)
            ls.bind((up.usnet_ip, 0))
            ls.listen(_BACKLOG)
            return ls

        def usnet_connect(addr: tuple[str, int]) -> Any:
            return us.create_connection(addr, timeout=30, client=up.client, netif=up.ifname)

        usnet = _levels(usnet_listen, usnet_connect, up.host_ip, levels, k, k_out, up.netns,
                        _usnetd_pid(up.socket_path), progress, "usnet")

    with _kernel_ns() as kns:
        def kernel_listen() -> socket.socket:
            ls = socket.socket()
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(("127.0.0.1", 0))
            ls.listen(_BACKLOG)
            ls.settimeout(60)
            return ls

        # the whole kernel run in a thread inside the namespace: its sockets are made there
        kernel = kns.call(lambda: _levels(kernel_listen, _kernel_connect, "127.0.0.1", levels, k, k_out, kns,
                                          None, progress, "kernel"))

    udp_rows = []
    for f in FLOWS:
        progress(f"UDP through the switch: {f:,} flows")
        dps, got = udp_flows_dps(f, udp_count)
        udp_rows.append({"flows": f, "dps": dps, "delivered": got, "sent": udp_count})

    results = []
    for u, kr in zip(usnet["rows"], kernel["rows"]):
        results.append({"open": u["open"],
                        "usnet_accept_cps": u["accept_cps"], "kernel_accept_cps": kr["accept_cps"],
                        "ratio_accept": u["accept_cps"] / kr["accept_cps"],
                        "usnet_gc_full": u["gc_full"], "usnet_gc_seconds": u["gc_seconds"],
                        "usnet_connect_cps": u["connect_cps"], "kernel_connect_cps": kr["connect_cps"],
                        "ratio_connect": u["connect_cps"] / kr["connect_cps"]})
    base, top = results[0], results[-1]
    accept_flat = top["usnet_accept_cps"] / base["usnet_accept_cps"]
    udp_flat = udp_rows[-1]["dps"] / udp_rows[0]["dps"]
    for row in udp_rows:
        row["ratio_to_1"] = row["dps"] / udp_rows[0]["dps"]
    return {
        "results": results,
        "memory": {"app_bytes_per_conn": usnet["app_bytes_per_conn"],
                   "usnetd_bytes_per_conn": usnet["usnetd_bytes_per_conn"], "connections": usnet["held"]},
        "udp": udp_rows,
        "accepts_per_point": k, "connects_per_point": k_out, "levels": list(levels), "window": WINDOW,
        "udp_batch": BATCH, "nofile": nofile,
        "kernel_path": "loopback inside a namespace of the bench's own",
        "usnet_path": "TAP (usnet up --netns), the kernel clients in the namespace holding its host end",
        "target": {
            "accept_cps_at_top": 2000.0, "accept_ratio_top_to_0": 0.8, "connect_cps": 5000.0,
            "udp_ratio_most_to_1": 0.8,
            "accept_at_top": top["usnet_accept_cps"], "accept_ratio": accept_flat, "udp_ratio": udp_flat,
            "accept_met": top["usnet_accept_cps"] >= 2000.0 and accept_flat >= 0.8,
            "connect_met": min(r["usnet_connect_cps"] for r in results) >= 5000.0,
            "udp_met": udp_flat >= 0.8,
        },
    }


if __name__ == "__main__":
    main(sys.argv[1:])
