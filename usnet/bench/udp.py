"""`usnet bench udp` and the demo's UDP part: two applications through flow switches.

Topology: one embedded domain with two netifs joined by a memwire (no rate
limit). Each application is its own process, reaching the domain over a
SEQPACKET session, with a UDP flow on its netif. Every datagram is copied out
of the sender's pool, checked against its flow, framed, carried over the
wire, classified and copied into the receiver's pool: the full flow-switch
path, in the domain's process.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

from usnet.bench.apps import run_pair
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.drivers.memwire import MemWire

__all__ = ["A_ADDR", "B_ADDR", "flow_table", "main", "topology", "usnet_dps"]

A_ADDR, B_ADDR = "10.99.0.1", "10.99.0.2"
PORT_A, PORT_B = 4000, 5000
BATCH = 512
RX_RING = 16384  # the receive ring: as the kernel baseline asks for a large SO_RCVBUF


def topology() -> tuple[Domain, MemWire]:
    dom = Domain()
    wire = MemWire(queue_limit=100_000)
    dom.add_netif("a", wire.a, f"{A_ADDR}/24")
    dom.add_netif("b", wire.b, f"{B_ADDR}/24")
    return dom, wire


def _sender(client: Client, size: int, count: int) -> None:
    s = client.udp_socket("a", PORT_A, ring_size=4096, packets=8192)
    payload = b"\x5a" * size
    batch = [payload] * BATCH
    sent = 0
    while sent < count:
        n = min(BATCH, count - sent)
        sent += s.send_many(batch[:n], (B_ADDR, PORT_B))
    s.close()


def _receiver(client: Client, count: int, out_fd: int, ready_fd: int) -> None:
    s = client.udp_socket("b", PORT_B, ring_size=RX_RING, packets=2 * RX_RING)
    os.write(ready_fd, b"R")
    first = s.recv_many(BATCH)
    t0 = t_last = time.perf_counter()
    got = n0 = len(first)
    s.settimeout(1.0)
    try:
        while got < count:
            got += len(s.recv_many(BATCH))
            t_last = time.perf_counter()
    except BlockingIOError:
        pass  # the rest was lost: the rate counts what arrived, until the last one did
    dt = t_last - t0
    os.write(out_fd, json.dumps([(got - n0) / dt if dt > 0 else 0.0, got]).encode())
    s.close()


def usnet_dps(size: int, count: int, snapshot: list | None = None) -> tuple[float, int]:
    """Datagrams/s from one usnet application to another through two flow switches.

    With `snapshot` (a list), the flow table is appended to it while both flows are open.
    """
    dom, _wire = topology()
    dom.start()

    def look(sender: Any) -> None:
        deadline = time.monotonic() + 10
        # until both flows show, or the sender is done (a short run may open and
        # close its flow between two looks)
        while time.monotonic() < deadline and sender.poll() is None:
            table = flow_table(dom)
            if len(table) >= 2:
                assert snapshot is not None
                snapshot.append(table)
                break
            time.sleep(0.005)  # polling the table for display, not synchronising data

    try:
        rate, got = run_pair(dom, "usnet.bench.udp", (str(count),), (str(count), str(size)),
                             while_sending=look if snapshot is not None else None)
        return float(rate), int(got)
    finally:
        dom.stop()


def flow_table(dom: Domain) -> list[dict[str, Any]]:
    rows = []
    for nif in dom.status()["netifs"]:
        for f in nif["flows"]:
            rows.append({"netif": nif["netif"]["name"], "address": nif["netif"]["address"], **f})
    return rows


def main(argv: list[str]) -> None:
    role, fd, count = argv[0], int(argv[1]), int(argv[2])
    client = Client.from_socket(socket.socket(fileno=fd))
    if role == "send":
        _sender(client, int(argv[3]), count)
    else:
        _receiver(client, count, int(argv[3]), int(argv[4]))


if __name__ == "__main__":
    main(sys.argv[1:])
