"""`usnet bench lowlat`: a small periodic flow beside bulk traffic on a 50 Mbit/s link.

Topology: one embedded domain, two netifs joined by a memwire; netif "a" is
paced to `LINK_RATE` with `LL_SHARE` of its time slots reserved for the
low-latency class (usnet.nexus.txsched). Every application is its own
process on a SEQPACKET session, as in `usnet bench udp`:

* llsend: one UDP flow on "a" sending `LL_SIZE`-byte datagrams every
  `LL_PERIOD`, each carrying its sequence number and CLOCK_MONOTONIC send time;
* llrecv: its receiver on "b", which takes one-way latency per datagram
  (one machine, one monotonic clock);
* bulk: `BULK_FLOWS` UDP flows on "a" sending 1,400-byte datagrams as fast as
  the link takes them (their queues at the netif fill; the switch suspends
  them, so they never lose a datagram to the queue), and a sink on "b".

Three phases in one run: the LL flow alone (idle), beside the bulk flows with
the LL class granted (`Domain.set_flow_class`, the agent's hook), and beside
them as a plain general-class flow. Bulk throughput is the bytes netif "b"
received during the granted phase, less the LL flow's, over the capacity the
LL class does not reserve.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from typing import Any, Callable

from usnet.bench.apps import spawn_app
from usnet.client import Client
from usnet.drivers.memwire import MemWire
from usnet.nexus.domain import Domain

A_ADDR, B_ADDR = "10.98.0.1", "10.98.0.2"
LINK_RATE = 50e6
LL_SHARE = 0.2
LL_SIZE = 200
LL_PERIOD = 0.005
# One port space serves every netif of a domain: senders and receivers take distinct ports.
LL_PORT, LL_SINK, BULK_PORT, BULK_SINK = 7000, 7001, 7100, 7200
BULK_FLOWS = 8
BULK_SIZE = 1400
_STAMP = struct.Struct("!QQ")  # sequence number, send time (ns)


def _percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")


# -- the applications (each a process of its own) -------------------------------------------


def _llsend(client: Client, count: int) -> None:
    s = client.udp_socket("a", LL_PORT)
    pad = bytes(LL_SIZE - _STAMP.size)
    t = time.monotonic()
    for i in range(count):
        t += LL_PERIOD
        while (left := t - time.monotonic()) > 0:
            time.sleep(left)  # the sender's own period, not synchronisation
        s.sendto(_STAMP.pack(i, time.monotonic_ns()) + pad, (B_ADDR, LL_SINK))
    s.close()


def _llrecv(client: Client, count: int, out_fd: int, ready_fd: int) -> None:
    s = client.udp_socket("b", LL_SINK)
    os.write(ready_fd, b"R")
    lat: dict[int, float] = {}
    deadline = time.monotonic() + count * LL_PERIOD + 5.0
    while len(lat) < count and time.monotonic() < deadline:
        try:
            got = s.recv_many(64, timeout=max(0.0, deadline - time.monotonic()))
        except (BlockingIOError, TimeoutError):
            break
        now = time.monotonic_ns()
        for data, _ in got:
            seq, sent = _STAMP.unpack_from(data)
            lat[seq] = (now - sent) / 1e6
    os.write(out_fd, json.dumps(list(lat.values())).encode())
    s.close()


def _bulk(client: Client, seconds: float) -> None:
    socks = [client.udp_socket("a", BULK_PORT + i, ring_size=1024, packets=2048) for i in range(BULK_FLOWS)]
    for s in socks:
        s.settimeout(0.05)
    batch = [bytes(BULK_SIZE)] * 64
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for i, s in enumerate(socks):
            try:
                s.send_many(batch, (B_ADDR, BULK_SINK + i))
            except (BlockingIOError, TimeoutError):
                pass  # suspended: its queue at the netif is full; the next flow's turn
    for s in socks:
        s.close()


def _sink(client: Client, seconds: float) -> None:
    socks = [client.udp_socket("b", BULK_SINK + i, ring_size=1024, packets=2048) for i in range(BULK_FLOWS)]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for s in socks:
            try:
                s.recv_many(256, timeout=0)
            except (BlockingIOError, TimeoutError):
                pass
        time.sleep(0.001)  # a slow reader is fine: the link, not the sink, is the bottleneck
    for s in socks:
        s.close()


# -- the run -------------------------------------------------------------------------------------


class _Run:
    """One domain, the processes of one phase at a time."""

    def __init__(self) -> None:
        self.dom = Domain()
        self.wire = MemWire(queue_limit=100_000)
        self.dom.add_netif("a", self.wire.a, f"{A_ADDR}/24", link_rate=LINK_RATE, ll_share=LL_SHARE)
        self.dom.add_netif("b", self.wire.b, f"{B_ADDR}/24")
        self.dom.start()
        self.procs: list[subprocess.Popen] = []

    def spawn(self, role: str, *args: str, keep: tuple[int, ...] = ()) -> subprocess.Popen:
        p = spawn_app(self.dom, "usnet.bench.lowlat", role, *args, keep=keep)
        self.procs.append(p)
        return p

    def ll_flow_id(self) -> int | None:
        for nif in self.dom.status()["netifs"]:
            if nif["netif"]["name"] == "a":
                for f in nif["flows"]:
                    if f["local_port"] == LL_PORT:
                        return f["id"]
        return None

    def rx_bytes_b(self) -> int:
        return self.dom.switches["b"].netif.rx_bytes

    def phase(self, count: int, bulk: bool, grant: bool, warmup: float) -> tuple[list[float], float]:
        """LL latencies (ms) and bulk frame bytes/s, for one phase."""
        seconds = count * LL_PERIOD
        if bulk:
            self.spawn("sink", str(seconds + warmup + 2))
            self.spawn("bulk", str(seconds + warmup + 1))
            time.sleep(warmup)  # let the bulk flows fill their queues at the netif
        r, w = os.pipe()
        ready_r, ready_w = os.pipe()
        try:
            self.spawn("llrecv", str(count), str(w), str(ready_w), keep=(w, ready_w))
            os.close(w)
            os.close(ready_w)
            if os.read(ready_r, 1) != b"R":
                raise RuntimeError("the LL receiver did not start")
            sender = self.spawn("llsend", str(count))
            if grant:
                deadline = time.monotonic() + 5
                while (fid := self.ll_flow_id()) is None and time.monotonic() < deadline:
                    time.sleep(0.001)  # until the sender's flow exists, to grant it
                if fid is None:
                    raise RuntimeError("the LL flow never appeared")
                self.dom.set_flow_class("a", fid, "ll")
            rx0, t0 = self.rx_bytes_b(), time.monotonic()
            sender.wait(seconds + 30)
            rx1, t1 = self.rx_bytes_b(), time.monotonic()
            data = b""
            while chunk := os.read(r, 65536):
                data += chunk
            lat = json.loads(data)
        finally:
            os.close(r)
            os.close(ready_r)
            for p in self.procs:
                p.wait(30)
            self.procs.clear()
        ll_bytes = len(lat) * (LL_SIZE + 8 + 20 + 14)
        return lat, max(0.0, (rx1 - rx0 - ll_bytes) / (t1 - t0))

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.dom.stop()


def run(quick: bool, progress: Callable[[str], None] = lambda what: None) -> dict[str, Any]:
    """The JSON document of `usnet bench lowlat --json`."""
    count = 400 if quick else 2000  # 2 s or 10 s of LL traffic per phase
    warmup = 0.5 if quick else 1.0
    run_ = _Run()
    try:
        progress("idle: the LL flow alone")
        idle, _ = run_.phase(count, bulk=False, grant=False, warmup=warmup)
        progress("granted: LL class beside the bulk flows")
        granted, bulk_bps = run_.phase(count, bulk=True, grant=True, warmup=warmup)
        progress("general: the same flow without its grant")
        general, _ = run_.phase(count, bulk=True, grant=False, warmup=warmup)
    finally:
        run_.close()
    return {
        "idle_p99_ms": _percentile(idle, 99),
        "ll_p50_ms": _percentile(granted, 50),
        "ll_p99_ms": _percentile(granted, 99),
        "general_p50_ms": _percentile(general, 50),
        "general_p99_ms": _percentile(general, 99),
        "bulk_share": bulk_bps * 8 / (LINK_RATE * (1 - LL_SHARE)),
        "ll_lost": count - len(granted),
        "general_lost": count - len(general),
        "link_rate_bps": LINK_RATE,
        "ll_share": LL_SHARE,
        "bulk_flows": BULK_FLOWS,
        "ll_packets": count,
    }


def main(argv: list[str]) -> None:
    role, fd = argv[0], int(argv[1])
    client = Client.from_socket(socket.socket(fileno=fd))
    if role == "llsend":
        _llsend(client, int(argv[2]))
    elif role == "llrecv":
        _llrecv(client, int(argv[2]), int(argv[3]), int(argv[4]))
    elif role == "bulk":
        _bulk(client, float(argv[2]))
    elif role == "sink":
        _sink(client, float(argv[2]))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
