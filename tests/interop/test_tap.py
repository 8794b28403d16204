"""usnet on a TAP device, with the host kernel as the other end of the wire (docs/architecture.md, "Nexuses").

Two ways in: `usnet up` (usnet.domain.launch.up: a TAP made through netlink, the
host's address on it, usnetd serving a control socket; clients connect with
`Client.connect`) and an in-process Domain with a TapDriver whose host side
the test configures through pyroute2. Every test runs in a network namespace
of its own (the `netns` fixture: tests/conftest.py), makes its own device
there and removes it.

The peers are the namespace kernel's own: `ping` and ordinary UDP sockets; scapy
and tshark read the traces. No sleeps: waits are select() on sockets, the
usnet channel's own blocking receive with a deadline, or a child's exit.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.util import digest_of, fresh_subnet, kernel_server, recv_n, tap_name, used_networks, wait_until
from usnet.drivers.hostnet import delete_links, link_exists

pytestmark = pytest.mark.privileged

# -- devices and subnets -----------------------------------------------------------------------


def _ping(ip: str, count: int = 3) -> subprocess.CompletedProcess:
    return subprocess.run(["ping", "-c", str(count), "-W", "2", "-i", "0.2", ip],
                          capture_output=True, text=True, timeout=30)


# -- usnet up ----------------------------------------------------------------------------------


class Up:
    """What `usnet up` made: a TAP, the host's address on it, usnetd and its socket."""

    def __init__(self, run_dir: Path, pcap: bool = False) -> None:
        from usnet.domain import launch as updown
        x = fresh_subnet()
        self.updown = updown
        self.ifname = tap_name()
        self.usnet_ip, self.host_ip = f"10.{x}.0.2", f"10.{x}.0.1"
        self.run_dir = str(run_dir)
        self.socket = os.path.join(self.run_dir, "usnetd.sock")
        self.pcap = os.path.join(self.run_dir, "trace.pcap") if pcap else None
        assert len(self.socket) < 100, "AF_UNIX path too long"

    def start(self) -> None:
        """`usnet up`; called once the fixture holds us, so its cleanup stops whatever started."""
        rc = self.updown.up(driver="tap", ifname=self.ifname, address=f"{self.usnet_ip}/24",
                            host_address=f"{self.host_ip}/24", run_dir=self.run_dir, pcap=self.pcap)
        assert rc == 0, f"usnet up failed: {self.log()}"
        with open(os.path.join(self.run_dir, "state.json")) as f:
            self.pid = json.load(f)["pid"]

    def log(self) -> str:
        try:
            return Path(self.run_dir, "usnetd.log").read_text()
        except FileNotFoundError:
            return "(no log)"

    def down(self) -> int:
        return self.updown.down(self.run_dir)

    def cleanup(self) -> None:
        if self.updown.is_up(self.run_dir):  # up's state file: there from usnetd's start until down
            self.down()
        delete_links([self.ifname])  # whatever happened, the device goes


@pytest.fixture
def up(tmp_path):
    made: list[Up] = []

    def make(**kw) -> Up:
        u = Up(tmp_path, **kw)
        made.append(u)
        u.start()
        return u

    yield make
    for u in made:
        u.cleanup()


def test_up_interrupted_once_usnetd_runs_leaves_nothing_behind(tmp_path, monkeypatch):
    """An exception inside `usnet up` after it started usnetd (a SIGTERM's SystemExit, a test's
    timeout; here raised in its wait for usnetd's ready line) stops usnetd and removes the TAP and
    the state file before it goes on: up() is all or nothing, as when it returns 1. (Before, the
    usnetd ran on, recorded in a state file whose owner never got to call down.)"""
    import types

    from usnet.domain import launch as updown

    x, ifname, run_dir = fresh_subnet(), tap_name(), str(tmp_path)
    pids = []

    def interrupted(*_args):
        with open(os.path.join(run_dir, "state.json")) as f:
            pids.append(json.load(f)["pid"])
        raise SystemExit(143)

    monkeypatch.setattr(updown, "select", types.SimpleNamespace(select=interrupted))
    try:
        with pytest.raises(SystemExit):
            updown.up("tap", ifname, f"10.{x}.0.2/24", f"10.{x}.0.1/24", run_dir=run_dir)
        assert len(pids) == 1
        with pytest.raises(ProcessLookupError):  # stopped and reaped
            os.kill(pids[0], 0)
        assert not updown.is_up(run_dir) and not link_exists(ifname)
    finally:  # (what the old up() left, removed: nothing of the test's outlives it)
        if updown.is_up(run_dir):
            updown.down(run_dir)
        delete_links([ifname])


def test_ping_answered_through_usnetd(up):
    u = up()
    r = _ping(u.usnet_ip)
    assert r.returncode == 0, r.stdout + r.stderr + u.log()
    assert "3 packets transmitted, 3 received" in r.stdout
    from usnet.client import Client

    c = Client.connect(u.socket)
    (n,) = [x for x in c.status()["netifs"] if x["netif"]["name"] != "lo"]  # and usnetd's loopback netif
    assert n["counts"]["icmp_echo"] == 3
    assert n["arp"] != {} and u.host_ip in n["arp"]


def _recv_kernel(k: socket.socket, n: int, timeout: float = 5.0) -> list[tuple[bytes, tuple]]:
    """Up to n datagrams from a kernel socket, each waited for with select against a deadline."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([k], [], [], left)[0]:
            break
        while len(out) < n:
            try:
                out.append(k.recvfrom(65536, socket.MSG_DONTWAIT))
            except BlockingIOError:
                break
    return out


def _msg(direction: bytes, i: int) -> bytes:
    size = (i * 131) % 1400
    return direction + i.to_bytes(4, "big") + bytes((i * 3 + j) & 0xFF for j in range(size))


def _exchange(us, us_addr: tuple[str, int], k: socket.socket, count: int, window: int = 64) -> None:
    """`count` datagrams each way between a usnet socket and a kernel socket, in windows.

    Each round the kernel sends a window to usnet and usnet a window to the kernel, then
    each side receives its window before the next: the link is never asked to hold more.
    """
    k_addr = k.getsockname()
    got_us: list[bytes] = []
    got_k: list[bytes] = []
    for start in range(0, count, window):
        idx = range(start, min(count, start + window))
        for i in idx:
            k.sendto(_msg(b"K", i), us_addr)
        assert us.send_many([_msg(b"U", i) for i in idx], k_addr) == len(idx)
        r_us = recv_n(us, len(idx))
        r_k = _recv_kernel(k, len(idx))
        assert len(r_us) == len(idx), f"usnet received {len(r_us)} of datagrams {idx}"
        assert len(r_k) == len(idx), f"kernel received {len(r_k)} of datagrams {idx}"
        assert {src for _, src in r_us} == {k_addr}
        assert {src for _, src in r_k} == {us_addr}
        got_us += [p for p, _ in r_us]
        got_k += [p for p, _ in r_k]
    assert sorted(got_us, key=lambda p: int.from_bytes(p[1:5], "big")) == [_msg(b"K", i) for i in range(count)]
    assert sorted(got_k, key=lambda p: int.from_bytes(p[1:5], "big")) == [_msg(b"U", i) for i in range(count)]
    assert us.rx_bad == 0


def _kernel_socket(host_ip: str) -> socket.socket:
    k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    k.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    k.bind((host_ip, 0))
    return k


def test_kernel_udp_socket_and_usnet_client_exchange_10000_each_way(up):
    from usnet.client import Client

    u = up()
    c = Client.connect(u.socket)
    us = c.udp_socket(u.ifname, 7000)
    assert us.getsockname() == (u.usnet_ip, 7000)
    with _kernel_socket(u.host_ip) as k:
        _exchange(us, (u.usnet_ip, 7000), k, 10_000)
    (n,) = [x for x in c.status()["netifs"] if x["netif"]["name"] != "lo"]  # and usnetd's loopback netif
    (flow,) = n["flows"]
    assert flow["stats"]["rx_packets"] == 10_000 and flow["stats"]["tx_packets"] == 10_000
    assert not any(key.startswith("tx_") or key in ("rx_client_full", "rx_malformed") for key in n["drops"]), n["drops"]
    us.close()


def _check_ipv4_frame(p) -> str:
    from scapy.all import ICMP, IP, UDP, Padding, raw

    ip = p[IP]
    assert ip.version == 4 and ip.ihl >= 5
    pad = len(ip[Padding].load) if Padding in ip else 0
    assert ip.len == len(raw(ip)) - pad, "IP total length disagrees with the frame"
    ref = ip.copy()
    del ref.chksum
    assert IP(raw(ref)).chksum == ip.chksum, "bad IP header checksum"
    if ip.proto == 17:
        ref = ip.copy()
        del ref[UDP].chksum
        assert IP(raw(ref))[UDP].chksum == ip[UDP].chksum, "bad UDP checksum"
        assert ip[UDP].len == ip.len - ip.ihl * 4
        return "udp"
    if ip.proto == 1:
        ref = ip.copy()
        del ref[ICMP].chksum
        assert IP(raw(ref))[ICMP].chksum == ip[ICMP].chksum, "bad ICMP checksum"
        return "icmp"
    return f"ip{ip.proto}"


def test_usnetd_pcap_is_read_back_well_formed(up):
    from scapy.all import ARP, ICMP, IP, Ether, rdpcap

    from usnet.client import Client

    u = up(pcap=True)
    assert _ping(u.usnet_ip, 2).returncode == 0
    c = Client.connect(u.socket)
    us = c.udp_socket(u.ifname, 7001)
    mac = c.status()["netifs"][0]["netif"]["mac"]
    with _kernel_socket(u.host_ip) as k:
        _exchange(us, (u.usnet_ip, 7001), k, 200)
    us.close()
    assert u.down() == 0  # usnetd stops: the trace is flushed and closed

    pkts = rdpcap(u.pcap)
    kinds = []
    for p in pkts:
        assert Ether in p
        assert len(p) >= 14
        if ARP in p:
            a = p[ARP]
            assert (a.hwtype, a.ptype, a.hwlen, a.plen) == (1, 0x800, 6, 4) and a.op in (1, 2)
            kinds.append(("arp", p[Ether].src == mac))
        elif IP in p:
            kinds.append((_check_ipv4_frame(p), p[Ether].src == mac))
        else:  # the host's own IPv6 chatter on the new link: not ours, only has to decode
            assert p[Ether].src != mac and p[Ether].type == 0x86DD, p.summary()
    assert kinds.count(("udp", True)) == 200 and kinds.count(("udp", False)) == 200
    assert kinds.count(("icmp", True)) == 2 and kinds.count(("icmp", False)) == 2
    assert ("arp", True) in kinds
    ours = [p for p in pkts if p[Ether].src == mac]
    assert all(ARP in p or IP in p for p in ours)
    assert {p[IP].src for p in ours if IP in p} == {u.usnet_ip}
    assert [p[ICMP].type for p in ours if ICMP in p] == [0, 0]

    if shutil.which("tshark") is None:
        return
    decode_as = [a for port in (7001, k_port(pkts, u.host_ip)) for a in ("-d", f"udp.port=={port},data")]
    r = subprocess.run(["tshark", "-r", u.pcap, "-o", "ip.check_checksum:TRUE",
                        "-o", "udp.check_checksum:TRUE", *decode_as],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    text = (r.stdout + r.stderr).lower()
    assert "malformed" not in text and "incorrect" not in text and "bad checksum" not in text
    assert len(r.stdout.splitlines()) == len(pkts)


def k_port(pkts, host_ip: str) -> int:
    from scapy.all import IP, UDP

    return next(p[UDP].sport for p in pkts if UDP in p and p[IP].src == host_ip)


def test_usnet_down_removes_the_device_and_the_socket(up):
    u = up()
    assert link_exists(u.ifname) and os.path.exists(u.socket)
    os.kill(u.pid, 0)  # usnetd runs
    assert u.down() == 0
    assert not link_exists(u.ifname)
    assert not os.path.exists(u.socket)
    assert not os.path.exists(os.path.join(u.run_dir, "state.json"))
    with pytest.raises(ProcessLookupError):
        os.kill(u.pid, 0)  # gone and reaped
    net = ipaddress.IPv4Network(f"{u.host_ip}/24", strict=False)
    assert not any(net.overlaps(n) for n in used_networks())  # the host's address and route went too
    assert u.updown.down(u.run_dir) == 1  # down again: nothing is up


# -- an in-process domain on a TAP (the tap_domain fixture: conftest.py) ----------------------


def test_in_process_domain_on_tap_answers_ping_and_udp(tap_domain):
    from usnet.client import Client

    d, ifname, usnet_ip, host_ip = tap_domain
    r = _ping(usnet_ip)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 packets transmitted, 3 received" in r.stdout
    c = Client.local(d)
    us = c.udp_socket(ifname, 7002)
    with _kernel_socket(host_ip) as k:
        _exchange(us, (usnet_ip, 7002), k, 1000)
    sw = d.switches[ifname]
    assert sw.counts["icmp_echo"] == 3
    assert sw.info()["arp"][host_ip]
    us.close()


def test_in_process_tap_device_goes_with_the_domain():
    from pyroute2 import IPRoute

    from usnet.domain.loop import Domain
    from usnet.drivers.tap import TapDriver

    ifname = tap_name()
    d = Domain()
    try:
        d.add_netif(ifname, TapDriver(ifname), "10.254.254.2/24")
        with IPRoute() as ipr:
            (idx,) = ipr.link_lookup(ifname=ifname)
            assert ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
    finally:
        d.stop()
    assert not link_exists(ifname)


# -- TCP with the host kernel as the peer (usnet.socket) ---------------------------------------


def _kernel_tcp_state(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The host's state for one IPv4 TCP 4-tuple, from /proc/net/tcp (6: TIME_WAIT), or None."""
    def hexaddr(a: tuple[str, int]) -> str:
        return f"{int.from_bytes(ipaddress.IPv4Address(a[0]).packed, 'little'):08X}:{a[1]:04X}"

    want = (hexaddr(local), hexaddr(remote))
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if (fields[1], fields[2]) == want:
                return int(fields[3], 16)
    return None


@pytest.mark.privileged
def test_a_4_tuple_the_host_holds_in_time_wait_connects_again_without_a_retry(tap_domain):
    """The host closes first, so it keeps each connection's 4-tuple in TIME_WAIT. Eight connections
    in a row from one local port: each SYN must be taken (RFC 6191: a later ISN and a later TSval
    than the old connection's), not answered with the old connection's ACK and sent again a second
    later. Before the ISN and timestamp keys were one per process, about half of them were."""
    from usnet import socket as us
    from usnet.client import Client

    d, ifname, usnet_ip, host_ip = tap_domain
    c = Client.local(d)
    ls = socket.socket()
    ls.bind((host_ip, 0))
    ls.listen()
    ls.settimeout(30)
    server = ls.getsockname()
    port = 0
    for i in range(8):
        s = us.socket(client=c, netif=ifname)
        s.settimeout(30)
        s.bind((usnet_ip, port))
        s.connect(server)
        port = s.getsockname()[1]
        k, _ = ls.accept()
        k.close()
        assert s.recv(1) == b""
        assert (s._conn.stats.retransmits, s._conn.stats.rto_timeouts) == (0, 0), f"connection {i}"
        s.close()
        wait_until(lambda port=port: _kernel_tcp_state(server, (usnet_ip, port)) == 6, 10, "the host's TIME_WAIT")
        wait_until(lambda port=port: not any(f["local_port"] == port for n in d.status()["netifs"] for f in n["flows"]),
                   10, "the flow to let its port go")
    ls.close()


def test_usnet_client_fetches_from_the_host_s_http_server(tap_domain, tmp_path):
    """Python's http.server on the host (kernel TCP); a usnet socket fetches 2 MB, digest-checked."""
    import hashlib

    from usnet import socket as us
    from usnet.client import Client

    d, ifname, _usnet_ip, host_ip = tap_domain
    body = os.urandom(2_000_000)
    (tmp_path / "blob").write_bytes(body)
    srv = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", host_ip,
                            "--directory", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        line = srv.stdout.readline().decode()  # "Serving HTTP on <ip> port <n> ..."
        port = int(line.split(" port ")[1].split()[0])
        c = Client.local(d)
        s = us.create_connection((host_ip, port), timeout=20, client=c, netif=ifname)
        s.sendall(f"GET /blob HTTP/1.0\r\nHost: {host_ip}\r\n\r\n".encode())
        got = bytearray()
        while chunk := s.recv(65536):
            got += chunk
        s.close()
    finally:
        srv.kill()
        srv.wait()
    head, _, content = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert hashlib.sha256(content).digest() == hashlib.sha256(body).digest()


def test_curl_fetches_from_a_usnet_server(tap_domain, tmp_path):
    """A usnet socket serves one HTTP response; the host's curl (kernel TCP) fetches it."""
    import hashlib

    from usnet import socket as us
    from usnet.client import Client

    d, ifname, usnet_ip, host_ip = tap_domain
    if shutil.which("curl") is None:
        pytest.fail("curl is missing (scripts/test-deps.sh installs it)")
    body = os.urandom(1_000_000)
    srv = us.socket(client=Client.local(d), netif=ifname)
    srv.bind(("0.0.0.0", 8080))
    srv.listen()
    srv.settimeout(20)
    out_file = tmp_path / "fetched"  # a file, not a pipe nobody reads while we send
    curl = subprocess.Popen(["curl", "-sS", "--max-time", "20", "-o", str(out_file), f"http://{usnet_ip}:8080/x"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        conn, addr = srv.accept()
        conn.settimeout(20)
        with conn.makefile("rb") as r:
            while r.readline() not in (b"\r\n", b""):
                pass
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        conn.close()
        _, err = curl.communicate(timeout=30)
    finally:
        if curl.poll() is None:
            curl.kill()
        srv.close()
    assert curl.returncode == 0, err
    assert addr[0] == host_ip
    assert hashlib.sha256(out_file.read_bytes()).digest() == hashlib.sha256(body).digest()


@pytest.mark.parametrize("tap_domain", [True, False], ids=["offload", "plain"], indirect=True)
def test_50_mb_each_way_with_a_kernel_tcp_socket(tap_domain):
    """usnet → kernel and kernel → usnet, 50 MB each, digest-checked at the receiver.

    With offload, both directions go as 64 KB super-segments (the driver
    counts them) and the kernel's partial checksums are completed; without
    it, no frame is larger than the MTU.
    """
    import hashlib

    from usnet import socket as us
    from usnet.client import Client

    d, ifname, _usnet_ip, host_ip = tap_domain
    size = 50_000_000
    up, down = os.urandom(size), os.urandom(size)

    def kernel_side(k, _) -> dict:
        digest = digest_of(k, size)[1]
        k.sendall(down)
        return {"digest": digest}

    with kernel_server(host_ip, kernel_side) as (addr, result):
        s = us.create_connection(addr, timeout=60, client=Client.local(d), netif=ifname)
        s.sendall(up)
        n, digest = digest_of(s, size)
        s.close()
    assert result.get("digest") == hashlib.sha256(up).digest()
    assert n == size and digest == hashlib.sha256(down).digest()
    stats = d.switches[ifname].netif.driver.stats
    if d.switches[ifname].netif.gso_max:
        assert stats.tx_gso_frames > 100 and stats.rx_gso_frames > 100 and stats.rx_csum_completed > 100
        assert stats.tx_bytes / stats.tx_frames > 10_000  # most bytes went out as super-segments
    else:
        assert stats.tx_gso_frames == stats.rx_gso_frames == stats.rx_csum_completed == 0
        assert stats.tx_bytes / stats.tx_frames < 1514
