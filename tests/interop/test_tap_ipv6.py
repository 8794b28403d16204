"""IPv6 on a TAP device, with the host kernel as the other end of the wire.

The host has fd00:x::1/64 on the TAP and usnet fd00:x::2/64 (the
`tap_domain6` fixture in conftest.py, or `usnet up --address6`). The
kernel's own ping, TCP sockets and Neighbour Discovery are the peers: what
they accept is what a real IPv6 host accepts.

No sleeps: waits are blocking socket calls with timeouts, thread joins with
deadlines, or a child's exit.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading

import pytest

from tests.helpers.util import digest_of, fresh_subnet, kernel_server, tap_name
from usnet.drivers.hostnet import delete_links

pytestmark = pytest.mark.privileged


def _ping6(addr: str, count: int = 3) -> subprocess.CompletedProcess:
    return subprocess.run(["ping", "-6", "-c", str(count), "-W", "2", "-i", "0.2", addr],
                          capture_output=True, text=True, timeout=30)


def test_ping6_from_the_host_is_answered_by_the_flow_switch(tap_domain6):
    d, ifname, usnet_ip6, host_ip6 = tap_domain6
    r = _ping6(usnet_ip6)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 packets transmitted, 3 received" in r.stdout
    sw = d.switches[ifname]
    assert sw.counts["icmp6_echo"] == 3
    assert sw.info()["nd"][host_ip6]  # learnt from the kernel's solicitation
    # the link-local address (fe80:: from the MAC) answers too
    ll = sw.info()["netif"]["link_local6"]
    r = _ping6(f"{ll}%{ifname}", count=1)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sw.counts["icmp6_echo"] == 4
    assert not any(k.startswith("tx_") for k in sw.drops), dict(sw.drops)


def test_usnet_socket_and_kernel_tcp_socket_exchange_4_mb_each_way_over_ipv6(tap_domain6):
    """usnet connects to the kernel: 4 MB each way, digest-checked at each receiver."""
    from usnet import socket as us
    from usnet.client import Client

    d, ifname, usnet_ip6, host_ip6 = tap_domain6
    size = 4_000_000
    up, down = os.urandom(size), os.urandom(size)

    def kernel_side(k, peer) -> dict:
        digest = digest_of(k, size)[1]
        k.sendall(down)
        return {"peer": peer, "digest": digest}

    with kernel_server(host_ip6, kernel_side, timeout=20) as (addr, result):
        s = us.create_connection(addr, timeout=20, client=Client.local(d), netif=ifname)
        assert s.family == us.AF_INET6 and s.getpeername() == (host_ip6, addr[1], 0, 0)
        s.sendall(up)
        n, digest = digest_of(s, size)
        name = s.getsockname()
        s.close()
    assert result.get("digest") == hashlib.sha256(up).digest()
    assert n == size and digest == hashlib.sha256(down).digest()
    assert result["peer"][:2] == name[:2] == (usnet_ip6, name[1])


def test_kernel_tcp_client_connects_to_a_usnet_listener_over_ipv6(tap_domain6):
    """The kernel connects to usnet: 2 MB up, the digest and 2 MB down."""
    from usnet import socket as us
    from usnet.client import Client

    d, ifname, usnet_ip6, host_ip6 = tap_domain6
    up, down = os.urandom(2_000_000), os.urandom(2_000_000)
    srv = us.socket(us.AF_INET6, client=Client.local(d), netif=ifname)
    srv.bind(("::", 8086))
    srv.listen()
    srv.settimeout(20)
    result: dict = {}

    def kernel_side() -> None:
        try:
            with socket.create_connection((usnet_ip6, 8086), timeout=20) as k:
                result["name"] = k.getsockname()
                k.sendall(up)
                k.shutdown(socket.SHUT_WR)
                got = bytearray()
                while b := k.recv(1 << 20):
                    got += b
                result["got"] = bytes(got)
        except OSError as e:
            result["error"] = e

    t = threading.Thread(target=kernel_side, daemon=True)
    t.start()
    conn, addr = srv.accept()
    conn.settimeout(20)
    n, digest = digest_of(conn, len(up) + 1)
    conn.sendall(digest + down)
    conn.close()
    t.join(20)
    srv.close()
    assert "error" not in result, result.get("error")
    assert n == len(up) and digest == hashlib.sha256(up).digest()
    assert result["got"][:32] == digest and hashlib.sha256(result["got"][32:]).digest() == hashlib.sha256(down).digest()
    assert addr == (host_ip6, result["name"][1], 0, 0)


def test_kernel_udp_socket_and_usnet_udp_endpoint_exchange_over_ipv6(tap_domain6):
    """500 datagrams each way, in windows of 50, between an AF_INET6 kernel socket and usnet."""
    from usnet.client import Client

    d, ifname, usnet_ip6, host_ip6 = tap_domain6
    s = Client.local(d).udp_socket(ifname, 7006, family=6)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as k:
        k.bind((host_ip6, 0))
        k.settimeout(5)
        kport = k.getsockname()[1]
        to_us, to_k = [], []
        for start in range(0, 500, 50):
            idx = range(start, start + 50)
            for i in idx:
                k.sendto(b"K%d" % i + bytes(i), (usnet_ip6, 7006))
            assert s.send_many([b"U%d" % i + bytes(i) for i in idx], (host_ip6, kport)) == 50
            got: list = []
            while len(got) < 50:
                got += s.recv_many(50 - len(got), timeout=5)
            to_us += got
            to_k += [k.recvfrom(65536) for _ in idx]
    assert sorted(p for p, _ in to_us) == sorted(b"K%d" % i + bytes(i) for i in range(500))
    assert {a for _, a in to_us} == {(host_ip6, kport)}
    assert sorted(p for p, _ in to_k) == sorted(b"U%d" % i + bytes(i) for i in range(500))
    assert {a[:2] for _, a in to_k} == {(usnet_ip6, 7006)}  # the kernel checked every UDP checksum
    assert s.rx_bad == 0
    s.close()


def test_usnet_up_with_address6_answers_ping6_at_once(tmp_path):
    """`usnet up --address6`: the host's address is usable without waiting for DAD, usnetd answers."""
    from usnet.client import Client
    from usnet.domain import launch as updown

    x = fresh_subnet()
    ifname = tap_name()
    run_dir = str(tmp_path)
    try:  # up() inside: whatever it started is stopped, however the test ends
        rc = updown.up("tap", ifname, f"10.{x}.0.2/24", f"10.{x}.0.1/24", run_dir=run_dir,
                       address6=f"fd00:{x}::2/64")
        assert rc == 0, (tmp_path / "usnetd.log").read_text()
        r = _ping6(f"fd00:{x}::2")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "3 packets transmitted, 3 received" in r.stdout
        with open(os.path.join(run_dir, "state.json")) as f:
            sock = json.load(f)["socket"]
        (n,) = [x for x in Client.connect(sock).status()["netifs"] if x["netif"]["name"] != "lo"]
        assert n["netif"]["address6"] == f"fd00:{x}::2/64" and n["netif"]["gateway6"] == f"fd00:{x}::1"
        assert n["counts"]["icmp6_echo"] == 3 and f"fd00:{x}::1" in n["nd"]
    finally:
        if updown.is_up(run_dir):
            updown.down(run_dir)
        delete_links([ifname])
