"""`usnet bench xdp`: frames/s through the AF_XDP driver beside the AF_PACKET driver, each way.

The drivers alone, without a domain above them: what each moves between Python and a veth.
The bench makes two network namespaces of its own: the near one holds the veth end the driver
under test opens, the far one its peer. Both drivers are measured on the same veth, one after
the other.

- driver → kernel: the driver sends `count` frames (EtherType 0x88B5, IEEE local experimental,
  which the far kernel counts and drops) in batches of 256, as fast as `send_batch` takes them;
  the rate is what the far end's `rx_packets` counted, over the time from the first batch
  until the counter stopped moving.
- kernel → driver: a forked child in the far namespace blasts `count` frames with a packet
  driver's TX ring (the fastest sender Python has here); the rate is what the driver under test
  received between its first and its last frame.

Frame sizes: 64 bytes and 1514 (a 1500-byte IP packet). Needs root (veth, namespaces, XDP).
On a veth the XDP driver runs in copy mode (no zero-copy there); the figures are Python's cost
per frame around each kernel interface, not the NIC's.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

from usnet.drivers.base import Driver
from usnet.drivers.hostnet import NetNs
from usnet.drivers.packet import PacketDriver
from usnet.drivers.xdp import XdpDriver

__all__ = ["available", "run"]

ETHERTYPE = b"\x88\xb5"
BATCH = 256
SIZES = (64, 1514)
_IDLE = 0.3  # seconds without progress: the other side is done


def available() -> str | None:
    """Why the bench cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (it makes a veth, two network namespaces and attaches an XDP program)"
    return None


def _frames(dst: bytes, src: bytes, size: int, n: int) -> list[bytes]:
    head = dst + src + ETHERTYPE
    return [head + i.to_bytes(4, "big") + bytes(size - len(head) - 4) for i in range(n)]


def _rx_packets(ns: NetNs, ifname: str) -> int:
    def look() -> int:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            (link,) = ipr.link("get", ifname=ifname)
        return int(link.get_attr("IFLA_STATS64")["rx_packets"])

    return ns.call(look)


def _tx_rate(drv: Driver, far: NetNs, peer_if: str, peer_mac: bytes, size: int, count: int) -> dict:
    batch = _frames(peer_mac, drv.mac, size, BATCH)
    before = _rx_packets(far, peer_if)
    t0 = time.perf_counter()
    sent = 0
    deadline = time.monotonic() + 60
    while sent < count and time.monotonic() < deadline:
        n = drv.send_batch(batch[:min(BATCH, count - sent)])
        sent += n
        if not n:
            select.select([], [drv], [], 0.001)  # the ring is full: let the kernel catch up
    t_sent = time.perf_counter()
    # the last frames may still be on their way: wait until the far counter stops moving
    seen = _rx_packets(far, peer_if) - before
    t_end = time.perf_counter()
    while seen < sent:
        time.sleep(0.02)
        now_seen = _rx_packets(far, peer_if) - before
        if now_seen == seen:
            break
        seen, t_end = now_seen, time.perf_counter()
    elapsed = max(t_end if seen else t_sent, t_sent) - t0
    seen = min(seen, sent)  # the far counter also counts the near kernel's own frames (IPv6 ND, MLD) at times
    return {"fps": seen / elapsed if elapsed > 0 else 0.0, "sent": sent, "delivered": seen}


def _rx_rate(drv: Driver, far: NetNs, peer_if: str, size: int, count: int) -> dict:
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.close(go_w)
            far.enter()
            d = PacketDriver(peer_if, promisc=False)
            batch = _frames(drv.mac, d.mac, size, BATCH)
            os.write(w, b"R")
            os.read(go_r, 1)
            sent = 0
            deadline = time.monotonic() + 60
            while sent < count and time.monotonic() < deadline:
                n = d.send_batch(batch[:min(BATCH, count - sent)])
                sent += n
                if not n:
                    select.select([], [], [], 0.0005)
            d.close()
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.close(go_r)
    got = first = 0
    t0 = t_last = 0.0
    try:
        os.read(r, 1)  # the blaster is ready
        while drv.recv_batch(BATCH):  # whatever was there before (the peer's own chatter)
            pass
        os.write(go_w, b"G")
        while got < count:
            if not select.select([drv], [], [], _IDLE)[0]:
                break  # the blaster is done; what did not come was lost
            n = len(drv.recv_batch(BATCH))
            if not n:
                continue
            if not got:
                t0, first = time.perf_counter(), n  # the clock starts at the first batch
            got += n
            t_last = time.perf_counter()
    finally:
        os.close(r)
        os.close(go_w)
        os.waitpid(pid, 0)
    fps = (got - first) / (t_last - t0) if t_last > t0 else 0.0
    return {"fps": fps, "sent": count, "delivered": got}


def run(quick: bool = False, progress: Callable[[str], None] = lambda _s: None) -> dict:
    """Every (driver, direction, size) on one veth between two namespaces of the bench's own."""
    from pyroute2 import IPRoute

    from usnet.drivers.xdp import tx_checksum_off

    count = 100_000 if quick else 1_000_000
    near_if, peer_if = "uxbench0", "uxbench0p"
    results: list[dict] = []
    with NetNs() as near, NetNs() as far, near.entered():
        with IPRoute() as ipr:
            ipr.link("add", ifname=near_if, kind="veth", peer=peer_if)
            (idx,) = ipr.link_lookup(ifname=near_if)
            ipr.link("set", index=idx, state="up", txqlen=10000)
        far.take(peer_if)

        def far_up() -> bytes:
            with IPRoute() as ipr:
                (i,) = ipr.link_lookup(ifname=peer_if)
                ipr.link("set", index=i, state="up", txqlen=10000)
                (link,) = ipr.link("get", index=i)
            tx_checksum_off(peer_if)
            return bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))

        peer_mac = far.call(far_up)
        makers: dict[str, Callable[[], Driver]] = {"xdp": lambda: XdpDriver(near_if),
                                                   "packet": lambda: PacketDriver(near_if)}
        for name, make in makers.items():
            for size in SIZES:
                for way in ("tx", "rx"):
                    progress(f"{name} {way} {size} B")
                    drv = make()
                    try:
                        r = (_tx_rate(drv, far, peer_if, peer_mac, size, count) if way == "tx"
                             else _rx_rate(drv, far, peer_if, size, count))
                    finally:
                        drv.close()
                    mode = f"{drv.mode}, {drv.attach_mode}" if isinstance(drv, XdpDriver) else "TPACKET_V3"
                    results.append({"driver": name, "mode": mode, "direction": way, "size": size, **r})
    return {"count": count, "results": results}
