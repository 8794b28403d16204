"""`usnet bench lowlat`'s AF_XDP part: LL receive latency through the zero-copy lane beside the copying path.

Issue 19 item 3. The bench makes two network namespaces of its own joined by a veth with two
queues each way. The near end is an embedded domain's netif on an XdpDriver; the far end is the
kernel, where two forked senders run:

* ll: a kernel UDP socket sending `LL_SIZE`-byte datagrams every `LL_PERIOD`, each carrying its
  sequence number and CLOCK_MONOTONIC send time (one machine, one clock), to the LL flow;
* bulk: a kernel UDP socket sending 1,400-byte datagrams to a sink flow, paced to `BULK_PPS`: more
  than the domain takes here, so the general queue backs up (the load the lane is for).

A tc classifier on the far end's egress plays the NIC's flow rule: the LL flow's frames leave on
queue 1, the rest on queue 0. The LL flow is in the LL class in both phases (no receive
mitigation); what differs is the receive path:

* lane: the driver has an LL queue (`ll_queue=1`), the flow a lane: its frames land in its own
  pool, checked from a copy of the headers and published, no copy (usnet.domain.switch.lllane);
* copy: no LL queue, the classifier sends everything to queue 0: the LL flow's frames share the
  general XSK with the bulk, and are copied and classified with it.

The receivers are threads of this process over `Client.local` (the domain is a thread too), so
the figures carry the GIL's share; both phases carry the same. Needs root.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from usnet.drivers.hostnet import NetNs

__all__ = ["BULK_PPS", "LL_PERIOD", "LL_SIZE", "available", "pin_neighbour", "run", "steer_to_queue", "steered_veth"]

LL_PORT, SINK_PORT = 9000, 9100
LL_SIZE = 200
LL_PERIOD = 0.002
BULK_PPS = 200_000  # more than the domain takes on this machine: its general queue backs up
_HDR = struct.Struct("!IQ")  # sequence, send time (CLOCK_MONOTONIC ns)


def available() -> str | None:
    """Why this part cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (a veth, two network namespaces, XDP and tc programs)"
    return None


def steer_to_queue(port: int, queue: int) -> list:
    """A tc egress classifier: UDP/IPv4 to `port` leaves on transmit queue `queue`, the rest on 0.

    It records the queue as the skb's receive queue (skb->queue_mapping = q + 1), which the
    kernel's transmit queue choice follows when no socket has one cached (unconnected UDP):
    what a NIC's flow rule does for a real interface."""
    from usnet.drivers.bpf import ABS, JMP, JNE, LD, B, H, Insn, K, Label, exit_, jump, link, mov_imm, mov_reg, store_w

    qmap = 12  # offsetof(struct __sk_buff, queue_mapping)
    return link([
        mov_reg(6, 1), mov_imm(2, 1), store_w(6, qmap, 2),
        Insn(LD | ABS | H, 0, 0, 0, 12), jump(Insn(JMP | JNE | K, 0, 0, 0, 0x0800), "out"),
        Insn(LD | ABS | B, 0, 0, 0, 23), jump(Insn(JMP | JNE | K, 0, 0, 0, 17), "out"),
        Insn(LD | ABS | H, 0, 0, 0, 36), jump(Insn(JMP | JNE | K, 0, 0, 0, port), "out"),
        mov_imm(2, queue + 1), store_w(6, qmap, 2),
        Label("out"), mov_imm(0, 0), exit_()])


def steered_veth(near_if: str, peer_if: str, far: NetNs, peer_ip: str, queue: int) -> None:
    """A veth with two queues each way, `near_if` here and `peer_if` in `far` at `peer_ip`/24 (its
    checksum offload off, so frames reach an XSK complete), whose sends to `LL_PORT` arrive on the
    near end's queue `queue` (`steer_to_queue` on the peer's egress: the NIC rule the veth lacks)."""
    from pyroute2 import IPRoute

    from usnet.bench import impair
    from usnet.drivers import bpf
    from usnet.drivers.xdp import tx_checksum_off

    with IPRoute() as ipr:
        ipr.link("add", ifname=near_if, kind="veth", num_tx_queues=2, num_rx_queues=2,
                 peer={"ifname": peer_if, "num_tx_queues": 2, "num_rx_queues": 2})
        (idx,) = ipr.link_lookup(ifname=near_if)
        ipr.link("set", index=idx, state="up")
    far.take(peer_if)

    def far_up() -> None:
        with IPRoute() as ipr:
            (i,) = ipr.link_lookup(ifname=peer_if)
            ipr.addr("add", index=i, address=peer_ip, prefixlen=24)
            ipr.link("set", index=i, state="up")
        tx_checksum_off(peer_if)
        fd = bpf.load(steer_to_queue(LL_PORT, queue), bpf.BPF_PROG_TYPE_SCHED_CLS, "usnet_steer")
        try:
            impair.attach(socket.if_nametoindex(peer_if), fd, impair.EGRESS, "usnet_steer")
        finally:
            os.close(fd)

    far.call(far_up)


def pin_neighbour(far: NetNs, peer_if: str, ip: str, mac: bytes) -> None:
    """`ip` is at `mac`, permanently, for `peer_if` in `far`: no ARP before the first datagram (in a
    measurement, or where the kernel could reorder the datagrams it queued for the answer)."""
    from pyroute2 import IPRoute

    def pin() -> None:
        with IPRoute() as ipr:
            (i,) = ipr.link_lookup(ifname=peer_if)
            ipr.neigh("add", dst=ip, lladdr=mac.hex(":"), ifindex=i, state=0x80)  # NUD_PERMANENT

    far.call(pin)


def _fork_sender(far: NetNs, target: tuple[str, int], count: int, period: float, size: int,
                 stamp: bool) -> int:
    """A child in `far` sending `count` datagrams of `size` bytes every `period` (paced in bursts)."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        far.enter()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        pad = bytes(size - _HDR.size)
        start = time.monotonic()
        for i in range(count):
            due = start + i * period
            delay = due - time.monotonic()
            if delay > 0.0005:
                time.sleep(delay)
            try:
                s.sendto(_HDR.pack(i, time.monotonic_ns()) + pad if stamp else pad, target)
            except OSError:
                pass  # a full queue: the bulk loses some, as it may
        code = 0
    finally:
        os._exit(code)


def _phase(lane: bool, count: int, progress: Callable[[str], None]) -> dict[str, Any]:
    from usnet.client import Client
    from usnet.domain.loop import Domain
    from usnet.drivers.xdp import XdpDriver

    near_if, peer_if = "uxll0", "uxll0p"
    with NetNs() as near, NetNs() as far, near.entered():
        steered_veth(near_if, peer_if, far, "10.97.0.1", 1 if lane else 0)
        drv = XdpDriver(near_if, ll_queue=1 if lane else None)
        pin_neighbour(far, peer_if, "10.97.0.2", drv.mac)  # no ARP in the measurement
        d = Domain()
        pids: list[int] = []
        try:
            d.add_netif(near_if, drv, "10.97.0.2/24", link_rate=1e9, ll_share=0.2, rx_mitigation=True)
            d.start()
            client = Client.local(d)
            ll = client.udp_socket(near_if, LL_PORT)
            sink = client.udp_socket(near_if, SINK_PORT)
            (fid,) = [f.id for f in d.switches[near_if].flows.values() if f.lport == LL_PORT]
            d.set_flow_class(near_if, fid, "ll")
            stop = threading.Event()
            bulk_got = [0]

            def drain() -> None:
                while not stop.is_set():
                    try:
                        bulk_got[0] += len(sink.recv_many(256, 0.05))
                    except BlockingIOError:
                        continue

            t = threading.Thread(target=drain, daemon=True)
            t.start()
            bulk_n = int(BULK_PPS * (count * LL_PERIOD + 1.0))
            pids.append(_fork_sender(far, ("10.97.0.2", SINK_PORT), bulk_n, 1 / BULK_PPS, 1400, False))
            time.sleep(0.3)  # the bulk under way before the LL flow starts
            progress(f"xdp {'lane' if lane else 'copy'}: {count} LL datagrams beside {BULK_PPS} bulk/s")
            pids.append(_fork_sender(far, ("10.97.0.2", LL_PORT), count, LL_PERIOD, LL_SIZE, True))
            lat: list[float] = []
            seen: set[int] = set()
            deadline = time.monotonic() + count * LL_PERIOD + 10
            while len(seen) < count and time.monotonic() < deadline:
                try:
                    got = ll.recv_many(64, 0.5)
                except BlockingIOError:
                    continue
                now = time.monotonic_ns()
                for data, _addr in got:
                    seq, sent_ns = _HDR.unpack_from(data)
                    if seq not in seen:
                        seen.add(seq)
                        lat.append((now - sent_ns) / 1e6)
            stop.set()
            t.join(5)
            sw = d.switches[near_if]
            counts = {k: int(sw.counts[k]) for k in ("rx_ll_zero_copy", "rx_ll_lane_copied")}
            ll.close()
            sink.close()
        finally:
            for pid in pids:
                os.waitpid(pid, 0)
            d.stop()
            drv.close()
    lat.sort()

    def p(q: float) -> float:
        return lat[min(len(lat) - 1, int(len(lat) * q / 100))] if lat else float("nan")

    return {"p50_ms": p(50), "p99_ms": p(99), "lost": count - len(seen), "bulk_received": bulk_got[0], **counts}


def run(quick: bool, progress: Callable[[str], None] = lambda what: None) -> dict[str, Any]:
    """Both phases: {"lane": ..., "copy": ...} with p50/p99 in ms, LL datagrams lost, and counters."""
    why = available()
    if why:
        return {"skipped": why}
    count = 500 if quick else 2500
    return {"lane": _phase(True, count, progress), "copy": _phase(False, count, progress),
            "ll_packets": count, "ll_period_ms": LL_PERIOD * 1e3, "bulk_pps": BULK_PPS}
