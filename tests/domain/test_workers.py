"""Issue 18, "More than one core": `usnetd --workers 2` on a multi-queue TAP, and on a packet
netif (a veth end) whose two queues are a PACKET_FANOUT group.

Kernel peers in the test's namespace reach usnet flows on ports of both workers (UDP echo and a
TCP transfer each); both processes carry traffic (their netif counters, in the status's
"workers"); SIGTERM stops usnetd and its worker. On the veth the kernel's end has the host's
address and usnet's end none: the kernel's frames cross the pair to usnetd's packet sockets.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.helpers.util import tap_name
from tests.interop.test_usnetd_gone import TapDaemon

pytestmark = pytest.mark.privileged


@pytest.fixture(params=["tap", "packet"])
def tapd2(request, sockdir, monkeypatch):
    d = TapDaemon(sockdir)
    d.kind = request.param
    if request.param == "packet":
        _on_veth(d)
        request.addfinalizer(lambda: _del_link(d.ifname))
    yield from serving(d, request.param, monkeypatch)


def serving(d: TapDaemon, kind: str, monkeypatch) -> Iterator[TapDaemon]:
    """A fixture's body: `d` started with two workers, the socket face's default usnetd and netif
    set to it while the test runs, stopped after."""
    from usnet import socket as us

    d.start = _start_with_workers(d, kind)  # type: ignore[method-assign]
    monkeypatch.setenv("USNET_SOCKET", d.path)
    monkeypatch.setenv("USNET_NETIF", "usnet0")
    us.configure(None, None)
    d.start()
    try:
        yield d
    finally:
        us.configure(None, None)
        d.stop()


def _on_veth(d: TapDaemon) -> None:
    """Make `d` a packet netif: usnet on one end of a veth pair, the host's address on the other."""
    from pyroute2 import IPRoute

    usnet_end, d.ifname = d.ifname, tap_name()  # d.ifname: the kernel's end, addressed at start
    d.config.write_text(f'[[netif]]\nname = "usnet0"\ndriver = "packet"\nifname = "{usnet_end}"\n'
                        f'address = "{d.usnet_ip}/24"\ngateway = "{d.host_ip}"\n')
    with IPRoute() as ipr:
        ipr.link("add", ifname=usnet_end, kind="veth", peer=d.ifname)
        (idx,) = ipr.link_lookup(ifname=usnet_end)
        ipr.link("set", index=idx, state="up")


def _del_link(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        if ipr.link_lookup(ifname=name):
            ipr.link("del", ifname=name)  # takes its peer with it


def _start_with_workers(d: TapDaemon, kind: str):
    def start() -> None:
        from pyroute2 import IPRoute

        from tests.helpers.usnetd import Daemon

        d.daemon = Daemon(d.path, d.logs / "usnetd.log", "--config", str(d.config), "--workers", "2")
        with IPRoute() as ipr:
            (idx,) = ipr.link_lookup(ifname=d.ifname)
            ipr.link("set", index=idx, state="up")
            ipr.addr("add", index=idx, address=d.host_ip, prefixlen=24)
        # the veth's offloads stay as the kernel sets them: its TSO super-segments reach the packet
        # netif whole and the switch cuts them for the TCP flows' 2 KB packets (rx_resegmented)
    return start


def _udp_echo(port: int, n: int) -> threading.Thread:
    from usnet import socket as us

    s = us.socket(us.AF_INET, us.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.settimeout(10)

    def serve() -> None:
        with s:
            for _ in range(n):
                data, peer = s.recvfrom(2048)
                s.sendto(data, peer)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def _tcp_sink(port: int, out: dict) -> threading.Thread:
    """Accept one connection, read it to the end, answer with the byte count."""
    from usnet import socket as us

    ls = us.socket(us.AF_INET, us.SOCK_STREAM)
    ls.bind(("0.0.0.0", port))
    ls.listen(1)
    ls.settimeout(10)

    def serve() -> None:
        with ls:
            c, _ = ls.accept()
            with c:
                c.settimeout(10)
                total = 0
                while chunk := c.recv(65536):
                    total += len(chunk)
                c.sendall(str(total).encode())
                out[port] = total
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def _workers(path: str) -> list[dict]:
    from usnet.client import Client

    with Client.connect(path) as c:
        return c.status()["workers"]


def test_two_workers_serve_udp_and_tcp_on_ports_of_both(tapd2):
    ports = (7000, 7001)  # worker 0 and worker 1 (port mod 2)
    servers = [_udp_echo(p, 20) for p in ports]
    for p in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k:
            k.settimeout(5)
            for i in range(20):
                k.sendto(b"ping %d" % i, (tapd2.usnet_ip, p))
                assert k.recvfrom(2048)[0] == b"ping %d" % i
    for t in servers:
        t.join(5)
    got: dict = {}
    sinks = [_tcp_sink(p, got) for p in (7100, 7101)]
    blob = os.urandom(1 << 20)
    for p in (7100, 7101):
        with socket.create_connection((tapd2.usnet_ip, p), timeout=10) as k:
            k.sendall(blob)
            k.shutdown(socket.SHUT_WR)
            assert k.recv(64) == str(len(blob)).encode()
    for t in sinks:
        t.join(5)
    assert got == {7100: len(blob), 7101: len(blob)}
    workers = _workers(tapd2.path)
    assert [w["index"] for w in workers] == [0, 1]
    for w in workers:  # each process received and sent its own flows' frames
        (nif,) = w["netifs"]
        assert nif["netif"]["rx_frames"] > 40 and nif["netif"]["tx_frames"] > 20, w
        assert "rx_client_full" not in nif["drops"] and "rx_too_big" not in nif["drops"], nif["drops"]
    if tapd2.kind == "packet":  # the kernel's super-segments came, and were cut
        assert sum(w["netifs"][0]["counts"].get("rx_resegmented", 0) for w in workers) > 0, workers


def test_outgoing_connections_of_the_connector_reach_a_kernel_server(tapd2):
    """Connections from the process's connectors (one per worker: each a channel whose blocks hold
    only its worker's ports) to a kernel server in the namespace: each handshake, request and
    answer arrives. The server's SYN-ACK goes to the queue of the connection's local port, so each
    connector's blocks take only the ports steered to its own worker (before that rule an odd
    port's SYN-ACK reached worker 1, which had no such connection: half the connects timed out).
    Connects take the connectors in turn: both workers carry them (their ports' parity, and each
    worker's switch bound ports of its connector by their SYN)."""
    from usnet import socket as us

    srv = socket.create_server((tapd2.host_ip, 0))
    srv.settimeout(10)
    port = srv.getsockname()[1]
    seen: list[int] = []

    def serve() -> None:
        with srv:
            for _ in range(20):
                c, peer = srv.accept()
                with c:
                    c.settimeout(10)
                    seen.append(peer[1])
                    c.sendall(b"hi " + c.recv(64))
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    mine = []
    for i in range(20):
        with us.socket(us.AF_INET, us.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect((tapd2.host_ip, port))
            s.sendall(b"%d" % i)
            assert s.recv(10) == b"hi %d" % i
            mine.append(s.getsockname()[1])
    t.join(10)
    assert seen == mine  # the kernel saw the ports the sockets report
    assert {p % 2 for p in mine} == {0, 1}, mine  # both workers' connectors carried connections
    binds = [w["netifs"][0]["counts"].get("connector_binds", 0) for w in _workers(tapd2.path)]
    assert binds == [sum(p % 2 == k for p in mine) for k in (0, 1)], (binds, mine)


def test_sigterm_stops_the_workers_too(tapd2):
    pids = [w["pid"] for w in _workers(tapd2.path)]
    assert len(set(pids)) == 2
    assert tapd2.daemon is not None
    assert tapd2.daemon.stop() == 0
    for pid in pids[1:]:  # the worker was usnetd's child, reaped by it before it exited
        assert not os.path.exists(f"/proc/{pid}")


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_a_lease_on_a_flow_of_another_worker_is_refused_where_the_netif_has_no_ll_slots(tapd2):
    """A lease for a worker-1 flow goes to the one agent in usnetd, as any (test_worker_pacing.py
    has the grants): on this unpaced netif it is the agent's refusal with the netif's reason
    (LeaseRefusedError, as for any refusal), counted with the agent's refusals."""
    from usnet.abi.protocol import LeaseRefusal
    from usnet.client import Client
    from usnet.client.lease import LeaseRefusedError

    with Client.connect(tapd2.path) as c:
        s = c.udp_socket("usnet0", 7001)  # worker 1's port
        with pytest.raises(LeaseRefusedError) as e:
            c.request_lease(s.channel, rate=1e6, max_packet=1200, latency_target=0.05)
        assert e.value.reason == LeaseRefusal.NO_LL_CAPACITY and "no low-latency slots" in e.value.message
        assert c.status()["lowlat"]["refused"].get("NO_LL_CAPACITY") == 1
        s.close()
