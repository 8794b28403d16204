"""usnet.drivers.xdp: an AF_XDP socket on one end of a veth, kernel peers at the other (issue 19).

Every test runs in a namespace of its own (privileged: the autouse `netns` fixture) and makes
its veth pair there; the peer end goes into a second namespace (`peer`), where the kernel
(ping, sockets) is the other host. The peer checksums in software (`tx_checksum_off`): an XDP
frame says nothing of a checksum left to the device. Waits are select() or socket timeouts
against deadlines, never sleeps.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from tests.helpers.util import fresh_subnet, tap_name

pytestmark = pytest.mark.privileged
LIMIT = 30.0  # seconds: reached only when something is broken


@contextlib.contextmanager
def _veth_to_peer(x: int, our_address: bool = False) -> Iterator[tuple[str, object]]:
    """A veth: our end `ifname` here (up; with `our_address`, 10.x.0.2/24 for the kernel here),
    its peer in a fresh namespace with 10.x.0.1/24, checksumming in software."""
    from pyroute2 import IPRoute

    from usnet.drivers.hostnet import NetNs
    from usnet.drivers.xdp import tx_checksum_off

    ifname = tap_name()
    peer_if = ifname + "p"
    with NetNs() as peer:
        with IPRoute() as ipr:
            ipr.link("add", ifname=ifname, kind="veth", peer=peer_if)
            (idx,) = ipr.link_lookup(ifname=ifname)
            ipr.link("set", index=idx, state="up")
            if our_address:
                ipr.addr("add", index=idx, address=f"10.{x}.0.2", prefixlen=24)
        peer.take(peer_if)

        def configure() -> None:
            with IPRoute() as ipr:
                (i,) = ipr.link_lookup(ifname=peer_if)
                ipr.addr("add", index=i, address=f"10.{x}.0.1", prefixlen=24)
                ipr.link("set", index=i, state="up")
            tx_checksum_off(peer_if)

        peer.call(configure)
        yield ifname, peer


@contextlib.contextmanager
def _xdp_domain() -> Iterator[tuple[object, str, object, str, str]]:
    """(domain, ifname, peer namespace, usnet_ip, peer_ip): an in-process Domain on an XdpDriver."""
    from usnet.domain.loop import Domain
    from usnet.drivers.xdp import XdpDriver

    x = fresh_subnet()
    with _veth_to_peer(x) as (ifname, peer):
        drv = XdpDriver(ifname)
        d = Domain()
        try:
            d.add_netif(ifname, drv, f"10.{x}.0.2/24", gateway=f"10.{x}.0.1")
            d.start()
            yield d, ifname, peer, f"10.{x}.0.2", f"10.{x}.0.1"
        finally:
            d.stop()
            drv.close()


def _xdp_prog_ids(ifname: str) -> list[int]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        (link,) = ipr.link("get", ifname=ifname)
    xdp = link.get_attr("IFLA_XDP")
    return [] if xdp is None else [v for k, v in xdp["attrs"] if k == "IFLA_XDP_PROG_ID" and v]


def test_the_verifier_accepts_both_programs():
    from usnet.drivers import bpf
    from usnet.drivers.xdp import xdp_program

    xsks = bpf.map_create(bpf.BPF_MAP_TYPE_XSKMAP, 4, 4, 4)
    flows = bpf.map_create(bpf.BPF_MAP_TYPE_HASH, 4, 1, 16)
    try:
        for prog in (xdp_program(xsks), xdp_program(xsks, flows)):
            fd = bpf.load(prog, bpf.BPF_PROG_TYPE_XDP, "usnet_test")  # OSError with the verifier's log if not
            assert fd >= 0
            os.close(fd)
    finally:
        os.close(xsks)
        os.close(flows)


def test_bind_falls_back_to_copy_mode_on_veth_and_close_removes_the_program():
    from usnet.drivers.xdp import XdpDriver

    with _veth_to_peer(fresh_subnet()) as (ifname, _peer):
        drv = XdpDriver(ifname)
        try:
            assert drv.mode == "copy"  # veth has no zero-copy: the XDP_ZEROCOPY bind was refused
            assert drv.attach_mode == "drv"  # veth runs XDP natively
            assert len(_xdp_prog_ids(ifname)) == 1
            with pytest.raises(OSError):
                XdpDriver(ifname, zerocopy=True)
        finally:
            drv.close()
        assert _xdp_prog_ids(ifname) == []


def test_arp_both_ways_at_the_driver():
    """Our ARP request reaches the peer's kernel through the TX ring; its reply comes back on RX."""
    from usnet.drivers.xdp import XdpDriver

    x = fresh_subnet()
    with _veth_to_peer(x) as (ifname, _peer):
        drv = XdpDriver(ifname)
        try:
            me, them = socket.inet_aton(f"10.{x}.0.2"), socket.inet_aton(f"10.{x}.0.1")
            req = (b"\xff" * 6 + drv.mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
                   + drv.mac + me + b"\0" * 6 + them)
            assert drv.send_batch([req]) == 1
            deadline = time.monotonic() + LIMIT
            reply = None
            while reply is None and time.monotonic() < deadline:
                select.select([drv], [], [], 0.5)
                for f in drv.recv_batch():
                    if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02":
                        reply = f
            assert reply is not None and reply[:6] == drv.mac and reply[28:32] == them
            assert drv.stats.tx_frames == 1 and drv.stats.rx_frames >= 1
        finally:
            drv.close()


def test_kernel_peer_pings_usnet():
    with _xdp_domain() as (d, ifname, peer, usnet_ip, _peer_ip):
        r = subprocess.run(peer.exec_argv(["ping", "-c", "3", "-i", "0.2", "-W", "2", usnet_ip]),
                           capture_output=True, text=True, timeout=LIMIT)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "3 packets transmitted, 3 received" in r.stdout
        assert d.switches[ifname].counts["icmp_echo"] == 3


def test_udp_echo_with_a_kernel_socket():
    from usnet.client import Client

    with _xdp_domain() as (d, ifname, peer, usnet_ip, _peer_ip):
        us = Client.local(d).udp_socket(ifname, 7000)
        k = peer.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        k.settimeout(LIMIT)
        try:
            sent = [os.urandom(1 + i * 7 % 1400) for i in range(200)]
            echoed: list[bytes] = []
            stop = threading.Event()

            def echo() -> None:
                deadline = time.monotonic() + LIMIT
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        got = us.recv_many(64, 0.2)
                    except BlockingIOError:  # nothing within 0.2 s
                        continue
                    for data, addr in got:
                        us.sendto(data, addr)

            t = threading.Thread(target=echo, daemon=True)
            t.start()
            # one round trip first: both ends resolve each other (ARP) before the count begins, so
            # no datagram waits on a resolution while a later one overtakes it
            k.sendto(b"warm", (usnet_ip, 7000))
            assert k.recv(2048) == b"warm"
            for i in range(0, len(sent), 20):  # a window of 20: no loss from overrunning a queue
                for m in sent[i:i + 20]:
                    k.sendto(m, (usnet_ip, 7000))
                for _ in sent[i:i + 20]:
                    echoed.append(k.recv(2048))
            stop.set()
            t.join(LIMIT)
            assert echoed == sent
        finally:
            k.close()
            us.close()


def test_tcp_transfer_each_way_with_a_kernel_socket():
    from usnet import socket as us
    from usnet.client import Client

    with _xdp_domain() as (d, ifname, peer, usnet_ip, _peer_ip):
        up, down = os.urandom(1 << 20), os.urandom(1 << 20)
        srv = us.socket(client=Client.local(d), netif=ifname)
        srv.bind((usnet_ip, 8080))
        srv.listen(1)
        got: dict[str, bytes] = {}

        def serve() -> None:
            conn, _ = srv.accept()
            conn.settimeout(LIMIT)
            buf = bytearray()
            while len(buf) < len(up):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buf += chunk
            got["up"] = bytes(buf)
            conn.sendall(down)
            conn.close()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        k = peer.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        k.settimeout(LIMIT)
        try:
            k.connect((usnet_ip, 8080))
            k.sendall(up)
            buf = bytearray()
            while len(buf) < len(down):
                chunk = k.recv(65536)
                if not chunk:
                    break
                buf += chunk
        finally:
            k.close()
        t.join(LIMIT)
        srv.close()
        assert hashlib.sha256(got["up"]).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(bytes(buf)).digest() == hashlib.sha256(down).digest()


def test_registered_ports_come_to_the_socket_and_the_rest_to_the_kernel():
    """With `ports`, one veth address is shared: UDP to a registered port reaches the XSK, UDP to
    another port reaches a kernel socket on that same address, ARP is the kernel's, and
    unregistering hands the port back to the kernel."""
    from usnet.drivers.xdp import XdpDriver

    x = fresh_subnet()
    with _veth_to_peer(x, our_address=True) as (ifname, peer):
        ours = f"10.{x}.0.2"
        drv = XdpDriver(ifname, ports=True)
        kern = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        kern.bind((ours, 0))
        kern.settimeout(0.2)
        kport = kern.getsockname()[1]
        k = peer.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        try:
            drv.steer(17, 7000)

            def xsk_hears(tag: bytes) -> bool:
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    select.select([drv], [], [], 0.2)
                    if any(f.endswith(tag) for f in drv.recv_batch()):
                        return True
                return False

            def kernel_hears(tag: bytes) -> bool:
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    try:
                        if kern.recv(2048) == tag:
                            return True
                    except TimeoutError:
                        pass
                return False

            # the first datagram needs ARP, which the kernel here answers (it is not ours)
            k.sendto(b"to-usnet-1", (ours, 7000))
            assert xsk_hears(b"to-usnet-1")
            k.sendto(b"to-kernel", (ours, kport))
            assert kernel_hears(b"to-kernel")
            assert drv.unsteer(17, 7000)
            kern2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            kern2.bind((ours, 7000))
            kern2.settimeout(0.2)
            try:
                k.sendto(b"back-to-kernel", (ours, 7000))
                deadline = time.monotonic() + 3.0
                heard = False
                while not heard and time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        heard = kern2.recv(2048) == b"back-to-kernel"
                assert heard
            finally:
                kern2.close()
            assert not drv.unsteer(17, 7000)
        finally:
            k.close()
            kern.close()
            drv.close()


def _serve_once(accept, reply: bytes) -> threading.Thread:
    """A thread that accepts one connection, reads one request and answers `reply`."""

    def run() -> None:
        conn, _ = accept()
        conn.settimeout(LIMIT)
        conn.recv(4096)
        conn.sendall(reply)
        conn.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _fetch(peer, addr: tuple[str, int]) -> bytes:
    """What a kernel client in the peer's namespace gets from the server at `addr` for one request."""
    k = peer.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    k.settimeout(LIMIT)
    try:
        k.connect(addr)
        k.sendall(b"hello")
        buf = bytearray()
        while chunk := k.recv(4096):
            buf += chunk
        return bytes(buf)
    finally:
        k.close()


def test_a_kernel_server_and_a_usnet_server_share_one_address():
    """Issue 19 item 2: on one veth address a kernel TCP server and a usnet one, on different
    ports, both serve a peer; usnet's switch sees only its own port's traffic; closing the usnet
    server hands its port back to the kernel."""
    from usnet import socket as us
    from usnet.client import Client
    from usnet.domain.loop import Domain
    from usnet.drivers.xdp import XdpDriver

    x = fresh_subnet()
    with _veth_to_peer(x, our_address=True) as (ifname, peer):
        shared = f"10.{x}.0.2"
        drv = XdpDriver(ifname, ports=True)
        d = Domain()
        try:
            sw = d.add_netif(ifname, drv, f"{shared}/24", gateway=f"10.{x}.0.1")
            d.start()
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                (link,) = ipr.link("get", ifname=ifname)
            assert drv.mac.hex(":") == link.get_attr("IFLA_ADDRESS")  # the interface's own MAC
            srv = us.socket(client=Client.local(d), netif=ifname)
            srv.bind((shared, 8080))
            srv.listen(1)
            ksrv = socket.socket()
            ksrv.bind((shared, 9090))
            ksrv.listen(1)
            with pytest.raises(OSError):  # usnet holds 8080 in the kernel too (its port reservation)
                socket.socket().bind((shared, 8080))
            tu = _serve_once(srv.accept, b"from usnet")
            tk = _serve_once(ksrv.accept, b"from the kernel")
            assert _fetch(peer, (shared, 8080)) == b"from usnet"
            assert _fetch(peer, (shared, 9090)) == b"from the kernel"
            tu.join(LIMIT)
            tk.join(LIMIT)
            ksrv.close()
            # nothing of port 9090 reached usnet: a segment for a port nobody holds would have had a RST
            assert sw.counts.get("tcp_rst_sent", 0) == 0, sw.counts
            srv.close()
            deadline = time.monotonic() + LIMIT
            back = None
            while back is None and time.monotonic() < deadline:  # the flow goes when the close is done
                s = socket.socket()
                try:
                    s.bind((shared, 8080))
                    back = s
                except OSError:
                    s.close()
                    select.select([], [], [], 0.05)
            assert back is not None
            back.listen(1)
            tb = _serve_once(back.accept, b"the kernel again")
            assert _fetch(peer, (shared, 8080)) == b"the kernel again"
            tb.join(LIMIT)
            back.close()
        finally:
            d.stop()
            drv.close()


# -- the flow program's parser, frame by frame (BPF_PROG_TEST_RUN) -------------------------------------

def _frame(kind: str, proto: int, dport: int, ihl: int, frag: int, cut: int) -> bytes:
    eth = b"\x02" * 6 + b"\x04" * 6
    if kind == "arp":
        f = eth + b"\x08\x06" + bytes(28)
    elif kind == "ipv4":
        hdr = bytes([0x40 | ihl, 0]) + struct.pack("!HHHBBH", 0, 0, frag, 64, proto, 0) + bytes(8)
        f = eth + b"\x08\x00" + hdr + bytes(4 * ihl - 20) + struct.pack("!HH", 1234, dport) + bytes(16)
    else:
        hdr = struct.pack("!IHBB", 0x60000000, 24, proto, 64) + bytes(32)
        f = eth + b"\x86\xdd" + hdr + struct.pack("!HH", 1234, dport) + bytes(16)
    return f[:max(0, len(f) - cut)]  # a cut longer than the frame leaves nothing (not f[:-k])


def _expected(kind: str, proto: int, dport: int, ihl: int, frag: int, cut: int, steered: set) -> int:
    """The program's rule, written plainly: XDP_REDIRECT (4) or XDP_PASS (2)."""
    from usnet.drivers.xdp import XDP_PASS, XDP_REDIRECT

    if kind == "arp" or proto not in (6, 17) or (proto, dport) not in steered:
        return XDP_PASS
    if kind == "ipv4" and frag & 0x1FFF:
        return XDP_PASS  # a later fragment: no ports in it
    l4 = 14 + (4 * ihl if kind == "ipv4" else 40)
    full = len(_frame(kind, proto, dport, ihl, frag, 0))
    return XDP_REDIRECT if full - cut >= l4 + 4 else XDP_PASS


def test_the_flow_program_redirects_exactly_the_steered_ports():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from usnet.drivers import bpf
    from usnet.drivers.xdp import XdpDriver

    with _veth_to_peer(fresh_subnet()) as (ifname, _peer):
        drv = XdpDriver(ifname, ports=True)
        steered = {(6, 80), (17, 53), (17, 7000)}
        for proto, port in steered:
            drv.steer(proto, port)
        try:
            @settings(max_examples=400, deadline=None)
            @given(kind=st.sampled_from(["ipv4", "ipv6", "arp"]), proto=st.sampled_from([6, 17, 1, 58]),
                   dport=st.sampled_from([80, 53, 7000, 81, 0, 65535]), ihl=st.integers(5, 15),
                   frag=st.sampled_from([0, 0x4000, 0x2000, 0x0001, 0x2010]), cut=st.integers(0, 60))
            def check(kind, proto, dport, ihl, frag, cut):
                f = _frame(kind, proto, dport, ihl, frag, cut)
                if len(f) < 14:
                    return  # XDP never sees less than an Ethernet header
                assert bpf.test_run(drv.program_fd, f) == _expected(kind, proto, dport, ihl, frag, cut, steered)

            check()
        finally:
            drv.close()


def test_usnetd_with_share_host_serves_udp_beside_the_kernel(tmp_path, sockdir):
    """usnetd with `driver = "xdp"` and `share_host`: a usnet UDP flow and a kernel UDP socket on
    one address, each answering the peer on its own port."""
    from tests.helpers.usnetd import Daemon
    from usnet.client import Client
    from usnet.domain import config

    x = fresh_subnet()
    with _veth_to_peer(x, our_address=True) as (ifname, peer):
        shared = f"10.{x}.0.2"
        sock = str(sockdir / "usnetd.sock")
        nc = config.NetifConfig(name="eth", address=f"{shared}/24", driver="xdp", ifname=ifname,
                                gateway=f"10.{x}.0.1", share_host=True)
        cfg = tmp_path / "usnetd.toml"
        cfg.write_text(config.dump(config.Config(socket=sock, netif=[nc])))
        daemon = Daemon(sock, tmp_path / "usnetd.log", "--config", str(cfg))
        try:
            c = Client.connect(sock)
            u = c.udp_socket("eth", 7000)
            kern = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            kern.bind((shared, 7001))
            kern.settimeout(LIMIT)
            k = peer.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            k.settimeout(LIMIT)
            try:
                k.sendto(b"to usnet", (shared, 7000))
                data, addr = u.recv_many(1, LIMIT)[0]
                assert data == b"to usnet"
                u.sendto(b"usnet answers", addr)
                assert k.recvfrom(2048) == (b"usnet answers", (shared, 7000))
                k.sendto(b"to the kernel", (shared, 7001))
                data, addr = kern.recvfrom(2048)
                assert data == b"to the kernel"
                kern.sendto(b"the kernel answers", addr)
                assert k.recvfrom(2048) == (b"the kernel answers", (shared, 7001))
            finally:
                k.close()
                kern.close()
                u.close()
        finally:
            daemon.stop()
