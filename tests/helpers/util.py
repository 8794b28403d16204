"""Small helpers many test modules share: waits with deadlines, fake clocks and devices,
a hostile client's raw send, the host kernel as a TCP peer, device names, TLS contexts.

Plain functions and classes, imported as `from tests.helpers.util import ...`; the fixtures
themselves are in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import itertools
import os
import socket
import ssl
import sys
import time
from collections.abc import Iterator

import pytest

from usnet.drivers.base import PLAIN, DriverStats, random_mac
from usnet.proto.wire.ipv4 import IPV4_HLEN
from usnet.proto.wire.udp import udp_ipv4_headers


def udp_segment(sport: int, dport: int, payload: bytes, src: bytes, dst: bytes) -> bytes:
    """A UDP header and payload, checksummed over the IPv4 pseudo-header of src and dst: the
    production builder's (`udp_ipv4_headers`) UDP part, for tests that frame it themselves."""
    return udp_ipv4_headers(src, dst, sport, dport, payload)[IPV4_HLEN:] + payload


def outcome(call):
    """What `call()` returns, or the errno name of the OSError it raises: one value to compare
    between a kernel socket and a usnet one."""
    try:
        return call()
    except OSError as e:
        return errno.errorcode[e.errno]


def require_privileges(what: str = "root and /dev/net/tun") -> None:
    """Skip where the machine cannot give us devices; under CI a missing device is a failure."""
    ok = os.geteuid() == 0 and os.path.exists("/dev/net/tun")
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"privileged test cannot get {what} under CI")
    pytest.skip(f"needs {what}")


def close_all(client, domain, wire=None) -> None:
    """Close a test's client (its channels' descriptors, else open till a collection finds them:
    the suite's process once passed 1,024), then stop its domain and close its wire."""
    try:
        client.close()
    finally:
        domain.stop()
        if wire is not None:
            wire.close()


def net_factory(cls):
    """A `make_net` fixture for a test module's `Net` class: `make_net(**kw)` builds one, and every
    one built is closed after the test: its client `c` (its channels' descriptors, else open till
    a collection finds them), its domain `d`, its wire `w`."""
    @pytest.fixture
    def make_net():
        nets: list = []

        def make(**kw):
            n = cls(**kw)
            nets.append(n)
            return n

        yield make
        for n in nets:
            close_all(n.c, n.d, n.w)

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


@contextlib.contextmanager
def calls_made() -> Iterator[list[str]]:
    """The qualified names of the Python and C functions called inside the block, in order (as
    `sys.setprofile` sees them: the work a piece of code does, counted without timing it)."""
    names: list[str] = []

    def trace(frame, event: str, arg: object) -> None:
        if event == "call":
            names.append(frame.f_code.co_qualname)
        elif event == "c_call":
            names.append(getattr(arg, "__qualname__", "?"))

    sys.setprofile(trace)
    try:
        yield names
    finally:
        sys.setprofile(None)
    names.remove("setprofile")


class CallNames:
    """A real object (an epoll) with the names of the calls made on it kept: what reached it, as
    tests that count a loop's system calls read it (tests/domain/test_watch.py, test_loop_quiet.py)."""

    def __init__(self, real) -> None:
        self.real = real
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        self.calls.append(name)
        return getattr(self.real, name)


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


# -- device names and subnets for the privileged tests ------------------------------------------------

_seq = itertools.count()


@contextlib.contextmanager
def veth_pair(their_address: str, prefixlen: int = 24):
    """A veth pair in the test's namespace, both ends up, the kernel's end (`theirs`) with
    `their_address`: yields (ours, theirs), our end for a packet netif; removed after."""
    from pyroute2 import IPRoute

    ours, theirs = tap_name(), tap_name()
    with IPRoute() as ipr:
        ipr.link("add", ifname=ours, kind="veth", peer=theirs)
        for name in (ours, theirs):
            (idx,) = ipr.link_lookup(ifname=name)
            ipr.link("set", index=idx, state="up")
        (idx,) = ipr.link_lookup(ifname=theirs)
        ipr.addr("add", index=idx, address=their_address, prefixlen=prefixlen)
    try:
        yield ours, theirs
    finally:
        with IPRoute() as ipr:
            if ipr.link_lookup(ifname=ours):
                ipr.link("del", ifname=ours)


def tap_name() -> str:
    """A device name unique to this test process."""
    name = f"ust{os.getpid() % 100000}x{next(_seq)}"
    assert len(name) <= 15
    return name


def fresh_subnet() -> int:
    """x of a 10.x.0.0/24 for a device: every privileged test has a network namespace of its own
    (the `netns` fixture), where any is free; two in one test get two."""
    return 100 + next(_seq) % 140


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the caller's namespace has a route to or an address in."""
    from pyroute2 import IPRoute

    nets = []
    with IPRoute() as ipr:
        for r in ipr.get_routes(family=socket.AF_INET, table=254) + ipr.get_routes(family=socket.AF_INET, table=255):
            dst = r.get_attr("RTA_DST")
            if dst and r["dst_len"]:
                nets.append(ipaddress.IPv4Network(f"{dst}/{r['dst_len']}", strict=False))
        for a in ipr.get_addr(family=socket.AF_INET):
            nets.append(ipaddress.IPv4Network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", strict=False))
    return nets


# -- TLS contexts from a throwaway CA (the `ca` fixture) -------------------------------------------------


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


@contextlib.contextmanager
def memwire_domain(a6: str | None = None, b6: str | None = None):
    """A started Domain with netifs "a" (10.9.0.1/24) and "b" (10.9.0.2/24) joined by a MemWire,
    and an in-process client of it: (domain, client). `a6`/`b6`: IPv6 addresses with prefix."""
    from usnet.client import Client
    from usnet.domain.loop import Domain
    from usnet.drivers.memwire import MemWire

    d = Domain()
    w = MemWire()
    d.add_netif("a", w.a, "10.9.0.1/24", address6=a6)
    d.add_netif("b", w.b, "10.9.0.2/24", address6=b6)
    d.start()
    try:
        yield d, Client.local(d)
    finally:
        d.stop()


def listen_on_b(client, port: int, backlog: int = 16, timeout: float | None = None):
    """A usnet listener on netif "b" of a `memwire_domain`, on every address of it, at `port`."""
    import usnet.socket as us

    srv = us.socket(client=client, netif="b")
    srv.bind(("", port))
    srv.listen(backlog)
    if timeout is not None:
        srv.settimeout(timeout)
    return srv


@contextlib.contextmanager
def kernel_stamping(limit: float = 5.0):
    """The kernel's receive stamping switched on, and kept on while the block runs.

    Linux stamps arriving packets only while some socket of the host asks for stamps, and the
    first such socket turns stamping on from a work item (net_enable_timestamp), so a packet right
    after the option may go unstamped. A kernel UDP socket on lo with SO_TIMESTAMPING's software
    receive stamps sends to itself until a datagram comes back stamped (for `limit` seconds at
    most), and stays open: every later socket with a timestamp option has its packets stamped."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.settimeout(limit)
        s.setsockopt(socket.SOL_SOCKET, 37, (1 << 3) | (1 << 4))  # SO_TIMESTAMPING: RX_SOFTWARE | SOFTWARE
        deadline = time.monotonic() + limit
        while True:
            s.sendto(b"?", s.getsockname())
            if s.recvmsg(1, 256)[1]:
                break
            if time.monotonic() > deadline:
                raise AssertionError("the kernel never stamped a datagram on lo")
        yield
    finally:
        s.close()
