"""`usnet bench tcp`: bulk transfer each way and connections per second.

The usnet side is a `usnet.socket` in this process, over the TAP of a
`usnet up --netns` (usnetd in its own process); the peer is the kernel's TCP
in a forked child, inside the namespace that holds the TAP's host end (made
and removed by the benchmark: bench/tap.py), as a real server would be. The reference is the same
program with a kernel socket in place of the usnet one, over loopback. Both
run in one invocation so that the ratio compares like with like on a
machine whose speed drifts from run to run.

Each figure is timed by the side that runs the program: from before the
connect until the peer confirms it has everything (bulk_tx), until EOF
(bulk_rx). Connections are counted both ways round, the server closing
first each time, as an HTTP/1.0 server does:

* connect_rate: the program is the server, and `CONCURRENCY` kernel clients
  (threads of the forked peer) connect, see the close and close, `n` in
  all; timed until the last is accepted and closed and the clients are done;
* connect_out_rate: the program is the client, opening `n` connections one
  after another to a kernel server (each a flow channel of its own on usnet).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from usnet.bench.baselines import _fork, _reap

if TYPE_CHECKING:
    from usnet.drivers.hostnet import NetNs

__all__ = ["Connect", "Listen", "bulk_rx", "bulk_tx", "connect_out_rate", "connect_rate", "run"]

CHUNK = 1 << 20
CONCURRENCY = 8  # kernel clients connecting at once in connect_rate
Connect = Callable[[tuple[str, int]], Any]  # (host, port) -> a connected socket-like object
Listen = Callable[[str], Any]  # host -> a listening socket-like object on it


def _listener(host: str, cc: str | None = None) -> socket.socket:
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if cc is not None:  # TCP_CONGESTION: the accepted sockets inherit it
        ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    ls.bind((host, 0))
    ls.listen(1024)
    return ls


def _read_all(s: Any, buf: memoryview) -> int:
    got = 0
    while n := s.recv_into(buf):
        got += n
    return got


def _peer_fork(ns: NetNs | None, body: Callable[[], None]) -> int:
    """`body` in a forked child: the kernel peer, inside namespace `ns` when one is given."""
    def run() -> None:
        if ns is not None:
            ns.enter()
        body()

    return _fork(run)


@contextlib.contextmanager
def _kernel_peer(host: str, serve: Callable[[socket.socket], None], ns: NetNs | None,
                 cc: str | None = None) -> Iterator[tuple[str, int]]:
    """A kernel listener on `host` (in `ns`, with congestion control `cc` if given) served by
    `serve(listener)` in a forked child; yields its address."""
    ls = _listener(host, cc) if ns is None else ns.call(lambda: _listener(host, cc))
    pid = _peer_fork(ns, lambda: serve(ls))
    ok = False
    try:
        yield ls.getsockname()
        ok = True
    finally:
        ls.close()
        _reap(pid, ok)  # on failure the child is killed, not waited for


def _chunk() -> memoryview:
    """What the senders send: random, made before the clock starts (os.urandom of 1 MiB is some
    4 ms, a tenth of a 20 MB transfer at 500 MB/s)."""
    return memoryview(os.urandom(CHUNK))


def _send_all(s: Any, size: int, data: memoryview) -> None:
    left = size
    while left > 0:
        s.sendall(data[:min(left, CHUNK)])
        left -= CHUNK


def bulk_tx(connect: Connect, host: str, size: int, ns: NetNs | None = None, cc: str | None = None) -> float:
    """MB/s from this program to a kernel receiver that counts and confirms (using `cc`, if given)."""
    def receive(ls: socket.socket) -> None:
        k, _ = ls.accept()
        n = _read_all(k, memoryview(bytearray(CHUNK)))
        k.sendall(struct.pack("!Q", n))
        k.close()

    data = _chunk()
    with _kernel_peer(host, receive, ns, cc) as addr:
        t0 = time.perf_counter()
        s = connect(addr)
        _send_all(s, size, data)
        s.shutdown(socket.SHUT_WR)
        confirm = b""
        while len(confirm) < 8 and (b := s.recv(8 - len(confirm))):
            confirm += b
        t1 = time.perf_counter()
        s.close()
        if len(confirm) != 8 or struct.unpack("!Q", confirm)[0] != size:
            raise OSError(f"the receiver confirmed {confirm!r}, not {size} bytes")
    return size / (t1 - t0) / 1e6


def bulk_rx(connect: Connect, host: str, size: int, ns: NetNs | None = None, cc: str | None = None) -> float:
    """MB/s from a kernel sender (using congestion control `cc`, if given) to this program, counted to EOF."""
    data = _chunk()

    def send(ls: socket.socket) -> None:
        k, _ = ls.accept()
        _send_all(k, size, data)
        k.close()

    with _kernel_peer(host, send, ns, cc) as addr:
        buf = memoryview(bytearray(CHUNK))
        t0 = time.perf_counter()
        s = connect(addr)
        got = _read_all(s, buf)
        t1 = time.perf_counter()
        s.close()
        if got != size:
            raise OSError(f"received {got} bytes of {size}")
    return size / (t1 - t0) / 1e6


def connect_rate(listen: Listen, host: str, n: int, ns: NetNs | None = None) -> float:
    """Connections per second this program accepts from `CONCURRENCY` kernel clients at once."""
    ls = listen(host)
    addr = ls.getsockname()[:2]
    each = n // CONCURRENCY

    def clients() -> None:
        def one_client() -> None:
            for _ in range(each):
                k = socket.create_connection(addr, timeout=30)
                if k.recv(1) != b"":
                    raise OSError("the server sent data; it should only close")
                k.close()
        ts = [threading.Thread(target=one_client) for _ in range(CONCURRENCY)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    t0 = time.perf_counter()
    pid = _peer_fork(ns, clients)
    ok = False
    try:
        for _ in range(each * CONCURRENCY):
            s, _ = ls.accept()
            s.close()
        ok = True
    finally:
        ls.close()
        _reap(pid, ok)
    return each * CONCURRENCY / (time.perf_counter() - t0)


def connect_out_rate(connect: Connect, host: str, n: int, ns: NetNs | None = None) -> float:
    """Connections per second this program opens: connect, see the server's close, close; in a row."""
    def serve(ls: socket.socket) -> None:
        for _ in range(n):
            k, _ = ls.accept()
            k.close()

    with _kernel_peer(host, serve, ns) as addr:
        t0 = time.perf_counter()
        for _ in range(n):
            s = connect(addr)
            if s.recv(1) != b"":
                raise OSError("the server sent data; it should only close")
            s.close()
        t1 = time.perf_counter()
    return n / (t1 - t0)


def _kernel_connect(addr: tuple[str, int]) -> socket.socket:
    return socket.create_connection(addr, timeout=30)


def _kernel_listen(host: str) -> socket.socket:
    ls = _listener(host)
    ls.settimeout(30)
    return ls


def run(quick: bool, progress: Callable[[str], None] = lambda what: None) -> dict:
    """The JSON document of `usnet bench tcp --json` (needs root: it makes a TAP)."""
    from usnet import socket as us
    from usnet.bench import tap

    size = (20 if quick else 100) * 1_000_000
    n = 200 if quick else 1000
    # (name, test, amount, side): the test takes the side's Connect or Listen, by `side`
    tests: tuple[tuple[str, Callable[[Any, str, int, NetNs | None], float], int, str], ...] = (
        ("bulk_tx", bulk_tx, size, "connect"), ("bulk_rx", bulk_rx, size, "connect"),
        ("connect_rate", connect_rate, n, "listen"), ("connect_out_rate", connect_out_rate, n, "connect"))
    figures: dict[str, dict[str, float]] = {name: {} for name, *_ in tests}
    with tap.usnet_up() as up:
        def usnet_connect(addr: tuple[str, int]) -> Any:
            return us.create_connection(addr, timeout=30, client=up.client, netif=up.ifname)

        def usnet_listen(host: str) -> Any:
            ls = us.socket(client=up.client, netif=up.ifname)
            ls.settimeout(30)
            ls.bind((host, 0))
            ls.listen(1024)
            return ls

        usnet_side = {"connect": usnet_connect, "listen": usnet_listen}
        for name, fn, amount, side in tests:
            progress(f"{name}: usnet over TAP")
            figures[name]["usnet"] = fn(usnet_side[side], up.usnet_ip if side == "listen" else up.host_ip,
                                        amount, up.netns)
    kernel_side = {"connect": _kernel_connect, "listen": _kernel_listen}
    for name, fn, amount, side in tests:
        progress(f"{name}: kernel loopback")
        figures[name]["kernel"] = fn(kernel_side[side], "127.0.0.1", amount, None)  # the host's own loopback
    unit = {"bulk_tx": "MBps", "bulk_rx": "MBps", "connect_rate": "cps", "connect_out_rate": "cps"}
    return {
        "results": [{"test": name, f"usnet_{unit[name]}": f["usnet"], f"kernel_{unit[name]}": f["kernel"]}
                    for name, f in figures.items()],
        "bytes": size,
        "connections": n,
        "concurrency": CONCURRENCY,
    }
