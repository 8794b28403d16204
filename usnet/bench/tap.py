"""`usnet bench udp`'s TAP figures: frames/s through the TAP driver, each way.

The real deployment: `usnet up --netns` (a TAP whose host end and address are
in a network namespace the benchmark makes and removes, usnetd in its own
process), a usnet application in this process, and the kernel's UDP socket
in that namespace as the peer, in a forked child. Each direction sends `count` 64-byte
datagrams as fast as the sender can and counts, at the receiver, what arrived
between the first and the last arrival. Needs root and /dev/net/tun.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from usnet.bench.baselines import _fork, _rate, _rcvtimeo, _reap
from usnet.client import Client
from usnet.drivers.hostnet import NetNs

__all__ = ["UsnetUp", "available", "tap_fps", "usnet_up"]

SIZE = 64
BATCH = 512
_IDLE = 0.5  # seconds without a datagram: the sender is done


def available() -> bool:
    return os.geteuid() == 0 and os.path.exists("/dev/net/tun")


@dataclass
class UsnetUp:
    """What `usnet up` made for a benchmark: the netif, both addresses, a client of its usnetd, and
    the namespace of the host end, where the kernel peer's sockets must be made (`NetNs.call`);
    `socket_path` is usnetd's, for a program in another process to connect to."""

    client: Client
    ifname: str
    usnet_ip: str
    host_ip: str
    netns: NetNs
    socket_path: str


@contextlib.contextmanager
def usnet_up() -> Iterator[UsnetUp]:
    """`usnet up --netns` on a fresh TAP, in a temporary run directory and a namespace of the
    benchmark's own; `usnet down` and the namespace removed afterwards, whatever happens.

    The host's own namespace gains nothing: the TAP's host end and its address are in the
    benchmark's namespace (docs/architecture.md, "Devices and namespaces"), so any subnet will do.
    """
    from usnet.domain import launch as updown
    us_ip, host_ip = "10.231.0.2", "10.231.0.1"
    with tempfile.TemporaryDirectory(prefix="usnet-bench-") as run_dir, NetNs() as ns:
        ifname = f"usb{os.getpid() % 100000}"
        # down() is in the finally of a try that up() is inside: a SIGTERM (which `usnet bench`
        # turns into SystemExit) taken after up() started usnetd and before a try after it was
        # entered left usnetd running (seen under CI's load).
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout may be carrying --json
                rc = updown.up("tap", ifname, f"{us_ip}/24", f"{host_ip}/24", run_dir=run_dir, netns=ns.name)
            if rc != 0:
                raise OSError("usnet up failed for the TAP benchmark")
            path = os.path.join(run_dir, "usnetd.sock")
            client = Client.connect(path)
            try:
                yield UsnetUp(client, ifname, us_ip, host_ip, ns, path)
            finally:
                client.close()
        finally:
            if updown.is_up(run_dir):
                with contextlib.redirect_stdout(sys.stderr):
                    updown.down(run_dir)


def tap_fps(count: int) -> dict[str, float]:
    """{"usnet_to_kernel_fps", "kernel_to_usnet_fps", and how many arrived of `count`, each way}."""
    with usnet_up() as up:
        us = up.client.udp_socket(up.ifname, 7000, ring_size=8192, packets=16384)
        k = up.netns.call(lambda: _kernel_socket(up.host_ip))
        try:
            _warm(us, k, (up.usnet_ip, 7000))
            out = _usnet_to_kernel(us, k, count)
            out.update(_kernel_to_usnet(us, k, (up.usnet_ip, 7000), count))
        finally:
            k.close()
            us.close()
    return out


def _kernel_socket(host_ip: str) -> socket.socket:
    """The kernel peer's UDP socket on `host_ip` (made inside the namespace: see tap_fps)."""
    k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    k.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    k.bind((host_ip, 0))
    return k


def _warm(us, k: socket.socket, us_addr: tuple[str, int]) -> None:
    """One datagram each way, so both sides have resolved the other's MAC."""
    k.settimeout(5)
    us.sendto(b"hello", k.getsockname())
    k.recvfrom(100)
    k.sendto(b"hello", us_addr)
    us.recvfrom(timeout=5)


def _usnet_to_kernel(us, k: socket.socket, count: int) -> dict[str, float]:
    r, w = os.pipe()

    def receive() -> None:
        os.close(r)
        _rcvtimeo(k, _IDLE)
        got, t0, t1 = 0, 0.0, 0.0
        buf = bytearray(2048)
        try:
            while got < count:
                k.recv_into(buf)
                t1 = time.perf_counter()
                if not got:
                    t0 = t1
                got += 1
        except (BlockingIOError, TimeoutError):
            pass
        os.write(w, f"{got} {_rate(got, t0, t1)}".encode())

    pid = _fork(receive)
    os.close(w)
    payload = [bytes(SIZE)] * BATCH
    dst = k.getsockname()
    sent = 0
    while sent < count:
        sent += us.send_many(payload[: min(BATCH, count - sent)], dst)
    got, rate = os.read(r, 100).split()
    os.close(r)
    _reap(pid, True)
    return {"usnet_to_kernel_fps": float(rate), "usnet_to_kernel_arrived": int(got)}


def _kernel_to_usnet(us, k: socket.socket, us_addr: tuple[str, int], count: int) -> dict[str, float]:
    def send() -> None:
        payload = bytes(SIZE)
        for _ in range(count):
            k.sendto(payload, us_addr)

    pid = _fork(send)
    first = len(us.recv_many(BATCH, timeout=5))
    t0 = t1 = time.perf_counter()
    got = first
    try:
        while got < count:
            got += len(us.recv_many(BATCH, timeout=_IDLE))
            t1 = time.perf_counter()
    except BlockingIOError:
        pass
    _reap(pid, True)
    rate = (got - first) / (t1 - t0) if t1 > t0 else float("nan")  # the clock starts after the first batch
    return {"kernel_to_usnet_fps": rate, "kernel_to_usnet_arrived": got}
