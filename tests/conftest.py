"""Shared fixtures. Privileged tests (root, TAP, netns) fail rather than skip under CI=true."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import ssl
import tempfile
import time
from pathlib import Path

import pytest

from usnet.drivers.base import PLAIN, DriverStats, random_mac


def require_privileges(what: str = "root and /dev/net/tun") -> None:
    """Skip where the machine cannot give us devices; under CI a missing device is a failure."""
    ok = os.geteuid() == 0 and os.path.exists("/dev/net/tun")
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"privileged test cannot get {what} under CI")
    pytest.skip(f"needs {what}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged"):
        require_privileges()


@pytest.fixture
def sockdir():
    """A fresh directory for AF_UNIX sockets, short enough for them (sun_path stops at 108 bytes)."""
    d = tempfile.mkdtemp(prefix="usn", dir="/tmp")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def net_factory(cls):
    """A `make_net` fixture for a test module's `Net` class: `make_net(**kw)` builds one, and every
    one built is stopped (its domain) after the test."""
    @pytest.fixture
    def make_net():
        nets: list = []

        def make(**kw):
            n = cls(**kw)
            nets.append(n)
            return n

        yield make
        for n in nets:
            n.d.stop()

    return make_net


def send_raw(ch, packets: list[bytes], gso: list[int] | None = None) -> None:
    """What a hostile client does: write bytes of its choosing into packets and send them.

    `gso`: the UMD gso_size of each packet (a super-segment for the device to cut).
    """
    pkts: list[int] = []
    while len(pkts) < len(packets):
        pkts += ch.alloc(len(packets) - len(pkts))
    for p, data, g in zip(pkts, packets, gso or [0] * len(packets)):
        ch.write(p, data, g)
        ch.set_length(p, len(data))
    assert ch.send(pkts) == len(pkts)


class FakeClock:
    """Simulated time (seconds) for a netif, a memwire or a lease desk: the test moves `now`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class ControlledDevice:
    """A device the test controls: it keeps the frames it takes, at most `room` of them
    in each `send_batch` call (`per_call`), or in all until the test sets `room` again."""

    caps = PLAIN
    mtu = 1500

    def __init__(self, name: str, room: int, per_call: bool) -> None:
        self.name = name
        self.mac = random_mac()
        self.stats = DriverStats()
        self.room = room
        self.per_call = per_call
        self.got: list[bytes] = []

    def send_batch(self, frames) -> int:
        n = min(len(frames), self.room)
        self.got += [bytes(f) for f in frames[:n]]
        if not self.per_call:
            self.room -= n
        return n

    def fileno(self) -> int:
        return -1

    def timeout(self):
        return None

    def close(self) -> None:
        pass


def wait_until(pred, timeout: float, what: str) -> None:
    """Bounded polling of a condition (domain state), with a deadline."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)


def recv_n(sock, n: int, timeout: float = 5.0) -> list:
    """Up to `n` datagrams, waiting on the socket until they come or the deadline passes."""
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            out += sock.recv_many(n - len(out), timeout=left)
        except BlockingIOError:
            break
    return out


def digest_of(sock, n: int) -> tuple[int, bytes]:
    """(bytes read, their SHA-256): up to `n` bytes, or until the peer closes (any socket-like)."""
    h = hashlib.sha256()
    got = 0
    while got < n and (b := sock.recv(1 << 20)):
        h.update(b)
        got += len(b)
    return got, h.digest()


@contextlib.contextmanager
def kernel_server(host: str, serve, timeout: float = 60.0):
    """The host kernel's TCP as the peer: a listener on `host` (IPv4 or IPv6) whose first accepted
    connection `serve(sock, peer) -> dict` handles in a thread. Yields (address, result); on leaving
    the block the thread is joined and `result` holds what `serve` returned."""
    import socket
    import threading

    ls = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    ls.bind((host, 0))
    ls.listen()
    ls.settimeout(timeout)
    result: dict = {}

    def run() -> None:
        k, peer = ls.accept()
        k.settimeout(timeout)
        with k:
            result.update(serve(k, peer))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield ls.getsockname()[:2], result
        t.join(timeout)
    finally:
        ls.close()


# -- TAP devices for the privileged tests -----------------------------------------------------------

_seq = itertools.count()


def tap_name() -> str:
    """A device name unique to this test process."""
    name = f"ust{os.getpid() % 100000}x{next(_seq)}"
    assert len(name) <= 15
    return name


def free_subnet_or_fail() -> int:
    """x of a 10.x.0.0/24 nothing on the host uses (spread over the range by pid)."""
    from usnet.drivers.hostnet import free_subnet

    try:
        return free_subnet(start=os.getpid() * 7 + next(_seq) * 13)
    except OSError as e:
        pytest.fail(str(e))


@contextlib.contextmanager
def _domain_on_tap(ipv6: bool, offload: bool = True, **netif_kw):
    """An in-process Domain on a fresh TAP, the host side made through pyroute2.

    `offload`: the TAP's checksum and segmentation offload (the default), or plain frames.
    `netif_kw`: more for `Domain.add_netif` (a link_rate, say).

    The host is 10.x.0.1/24 (and fd00:x::1/64 with `ipv6`), usnet .2 / ::2.
    The host's IPv6 address is added with IFA_F_NODAD, so the kernel uses it
    at once instead of after duplicate address detection. Yields (domain,
    ifname, x); the device goes with the domain.
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

    from usnet.drivers.tap import TapDriver
    from usnet.drivers.hostnet import delete_links, link_exists
    from usnet.domain.loop import Domain

    x = free_subnet_or_fail()
    ifname = tap_name()
    drv = TapDriver(ifname, offload=offload)  # creates the device; it lives as long as the fd
    d = Domain()
    v6 = {"address6": f"fd00:{x}::2/64", "gateway6": f"fd00:{x}::1"} if ipv6 else {}
    try:
        with IPRoute() as ipr:
            (idx,) = ipr.link_lookup(ifname=ifname)
            ipr.link("set", index=idx, state="up")
            ipr.addr("add", index=idx, address=f"10.{x}.0.1", prefixlen=24)
            if ipv6:
                ipr.addr("add", index=idx, address=f"fd00:{x}::1", prefixlen=64, flags=IFA_F_NODAD)
        d.add_netif(ifname, drv, f"10.{x}.0.2/24", gateway=f"10.{x}.0.1", **v6, **netif_kw)
        d.start()
        yield d, ifname, x
    finally:
        d.stop()  # closes the TAP: the kernel removes the device
        if link_exists(ifname):
            drv.close()
            delete_links([ifname])


@pytest.fixture
def tap_domain(request):
    """(domain, ifname, usnet_ip, host_ip) on a fresh TAP: see _domain_on_tap.

    Parametrize it indirectly with False for a TAP without offload (plain frames).
    """
    with _domain_on_tap(ipv6=False, offload=getattr(request, "param", True)) as (d, ifname, x):
        yield d, ifname, f"10.{x}.0.2", f"10.{x}.0.1"


@pytest.fixture
def tap_domain_paced():
    """As tap_domain, the netif paced to 100 Mbit/s with 20 % of its slots for the LL class."""
    with _domain_on_tap(ipv6=False, link_rate=100e6, ll_share=0.2) as (d, ifname, x):
        yield d, ifname, f"10.{x}.0.2", f"10.{x}.0.1"


@pytest.fixture
def tap_domain6():
    """(domain, ifname, usnet_ip6, host_ip6) on a fresh TAP with IPv4 and IPv6: see _domain_on_tap."""
    with _domain_on_tap(ipv6=True) as (d, ifname, x):
        yield d, ifname, f"fd00:{x}::2", f"fd00:{x}::1"


# -- TLS: a throwaway CA per test module (trustme) ---------------------------------------------------


@pytest.fixture(scope="module")
def ca():
    import trustme

    return trustme.CA()


def server_context(ca, *names: str) -> ssl.SSLContext:
    """A server context with a certificate from `ca` for `names` (IP addresses become IP SANs)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


def client_context(ca) -> ssl.SSLContext:
    """A client context that trusts `ca` and checks hostnames, as the standard library does."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx
