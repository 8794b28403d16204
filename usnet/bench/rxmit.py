"""`usnet bench rxmit`: receive mitigation on and off, for a client that sleeps on its bell.

Topology as `usnet bench udp`: one embedded domain, two netifs joined by a
memwire (no rate limit), a sender and a receiver each in its own process on
a SEQPACKET session. The receiver behaves as an event loop does (asyncio,
the TCP engine's runner): it takes what is on its ring without waiting,
and when the ring is empty it sleeps in `select` on its doorbell (no spin).
Every return from `select` is a wake-up.

Two senders:

* flood: `send_many` batches of 512 64-byte datagrams, as fast as it can
  (the `usnet bench udp` sender);
* stream: one 64-byte datagram per `sendto`, as fast as it can: many small
  batches, the case receive mitigation is for.

Figures per run: datagrams/s as the receiver saw them, how many arrived,
the client's wake-ups and the bells the switch rang (its flow's `rx_bells`),
per 1,000 datagrams received.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time
from collections.abc import Callable

from usnet.bench.apps import run_pair
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.drivers.memwire import MemWire

__all__ = ["main", "run"]

A_ADDR, B_ADDR = "10.97.0.1", "10.97.0.2"
PORT_A, PORT_B = 4100, 5100
BATCH = 512
RX_RING = 16384
SIZE = 64


def _sender(client: Client, mode: str, count: int) -> None:
    s = client.udp_socket("a", PORT_A, ring_size=4096, packets=8192)
    payload = b"\x5a" * SIZE
    dst = (B_ADDR, PORT_B)
    if mode == "flood":
        batch = [payload] * BATCH
        sent = 0
        while sent < count:
            sent += s.send_many(batch[: min(BATCH, count - sent)], dst)
    else:
        one = [payload]
        sent = 0
        while sent < count:
            sent += s.send_many(one, dst)
    s.close()


def _receiver(client: Client, count: int, out_fd: int, ready_fd: int) -> None:
    s = client.udp_socket("b", PORT_B, ring_size=RX_RING, packets=2 * RX_RING)
    fd = s.fileno()
    os.write(ready_fd, b"R")
    got = n0 = wakeups = 0
    t0 = t_last = 0.0
    while got < count:
        try:
            n = len(s.recv_many(BATCH, timeout=0))
        except BlockingIOError:  # the ring is empty and NEED_WAKEUP is set: sleep on the bell
            if not select.select([fd], [], [], 1.0 if got else 20.0)[0]:
                break  # a second of silence: the sender is done and the rest was lost (before the
                # first datagram, the sender may still be starting on a busy machine)
            s.channel.drain_doorbell()
            wakeups += 1
            continue
        if not got:
            t0, n0, wakeups = time.perf_counter(), n, 0  # from the first datagram on
        got += n
        t_last = time.perf_counter()
    (flow,) = [f for nif in client.status()["netifs"] for f in nif["flows"] if f["channel"] == s.channel.id]
    dt = t_last - t0
    os.write(out_fd, json.dumps({"dps": (got - n0) / dt if dt > 0 else 0.0, "got": got, "wakeups": wakeups,
                                 "bells": flow["stats"]["rx_bells"]}).encode())
    s.close()


def run_once(mode: str, count: int, rx_mitigation: bool) -> dict:
    """One sender and one receiver through a fresh domain; the receiver's figures."""
    dom = Domain(rx_mitigation=rx_mitigation)
    wire = MemWire(queue_limit=100_000)
    dom.add_netif("a", wire.a, f"{A_ADDR}/24")
    dom.add_netif("b", wire.b, f"{B_ADDR}/24")
    dom.start()
    try:
        return run_pair(dom, "usnet.bench.rxmit", (str(count),), (str(count), mode))
    finally:
        dom.stop()


def run(quick: bool, progress: Callable[[str], None] | None = None, runs: int = 3) -> dict:
    """Each mode with mitigation off and on, the median of `runs` runs by throughput."""
    counts = {"flood": 100_000 if quick else 300_000, "stream": 30_000 if quick else 150_000}
    results = []
    for mode, count in counts.items():
        for on in (False, True):
            if progress:
                progress(f"{mode}, mitigation {'on' if on else 'off'}")
            rs = sorted((run_once(mode, count, on) for _ in range(runs)), key=lambda x: x["dps"])
            m = rs[len(rs) // 2]
            got = max(m["got"], 1)
            results.append({"mode": mode, "rx_mitigation": on, "sent": count, "got": m["got"], "dps": m["dps"],
                            "wakeups_per_1k": 1000 * m["wakeups"] / got, "bells_per_1k": 1000 * m["bells"] / got,
                            "dps_runs": [x["dps"] for x in rs],
                            "wakeups_per_1k_runs": [1000 * x["wakeups"] / max(x["got"], 1) for x in rs]})
    return {"size": SIZE, "runs": runs, "results": results}


def main(argv: list[str]) -> None:
    role, fd, count = argv[0], int(argv[1]), int(argv[2])
    client = Client.from_socket(socket.socket(fileno=fd))
    if role == "send":
        _sender(client, argv[3], count)
    else:
        _receiver(client, count, int(argv[3]), int(argv[4]))


if __name__ == "__main__":
    main(sys.argv[1:])
