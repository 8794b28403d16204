"""Issue 18, "connectors on every worker": under `usnetd --workers 2` a process has a connector on
each worker (each one channel whose blocks hold only that worker's ports: the device steers port p
to queue p mod N), and its connects take them in turn.

usnetd chooses and charges every block (one port namespace) and hands worker k's as a list of
ports (`AddPorts.ports`), which only usnetd may send; the worker's switch binds each port by its
SYN and checks every packet as worker 0's does. A worker killed: the connections of its connector
fail with the reason, usnetd releases its blocks, and new connects go to its replacement. A
release of ports on worker k's connector is a request the client waits for before a SYN reuses
a port (the worker hears of it through usnetd, so it could otherwise meet the SYN first).
On a multi-queue TAP and a packet netif (the fixture of test_workers.py), the kernel as peer.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading

import pytest

from tests.domain.test_worker_restart import _blocked
from tests.domain.test_workers import _workers
from usnet.abi import protocol as P
from usnet.abi.protocol import ControlError

pytestmark = pytest.mark.privileged


def _server(host: str, n: int) -> tuple[int, threading.Thread]:
    """A kernel server that accepts `n` connections, answers each with b"hi" and closes it first
    (so the client's port is freed at once, as after Linux's LAST-ACK)."""
    srv = socket.create_server((host, 0), backlog=64)
    srv.settimeout(10)

    def serve() -> None:
        with srv:
            for _ in range(n):
                c, _ = srv.accept()
                with c:
                    c.sendall(b"hi")
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv.getsockname()[1], t


def test_a_client_may_not_name_the_ports_of_a_block(tapd2):
    """AddPorts with a list of ports is usnetd's own request to a worker: a client that sends one,
    on worker 0's connector or on worker 1's, is refused (EPERM) and its session goes on. Each
    worker's connector gets blocks of its own worker's ports only, held in usnetd's namespace (no
    one else binds them); FlowOpened says how many workers have a connector; no worker 2."""
    from usnet.client import Client

    with Client.connect(tapd2.path) as c, Client.connect(tapd2.path) as other:
        ch0, info0 = c.open_connector("usnet0")
        ch1, info1 = c.open_connector("usnet0", worker=1)
        assert (info0.workers, info1.workers) == (2, 2)
        for ch in (ch0, ch1):
            with pytest.raises(ControlError) as e:
                c._expect(P.AddPorts(ch.id, 2, ports=[40001, 40003]), P.PortsAdded)
            assert e.value.errno == errno.EPERM, e.value
        _, ports0 = c.add_ports(ch0.id, 8)
        b1, ports1 = c.add_ports(ch1.id, 8)
        assert len(ports0) == len(ports1) == 8
        assert all(p % 2 == 0 for p in ports0) and all(p % 2 == 1 for p in ports1), (ports0, ports1)
        for p in (ports0[0], ports1[0]):  # usnetd holds them: another client cannot have them
            with pytest.raises(ControlError) as e:
                other.open_flow("usnet0", 6, p)
            assert e.value.errno == errno.EADDRINUSE, e.value
        with pytest.raises(ControlError) as e:
            c.open_connector("usnet0", worker=2)
        assert e.value.errno == errno.EINVAL, e.value
        c.return_ports(ch1.id, b1)  # a notice, relayed: usnetd lets the ports go once worker 1 has
        # a request relayed after it on the same line: answered after the return's answer was read
        c.release_ports(ch1.id, [], wait=True)
        other.open_flow("usnet0", 6, ports1[0])[0].close()  # the returned block's port binds again
        ch0.close()
        ch1.close()


def test_a_killed_workers_connector_fails_its_connections_and_its_ports_go(tapd2):
    """Two connects from one process: one on each worker's connector. Worker 1 killed: the
    connection on its connector fails at once with the reason, worker 0's goes on, usnetd
    releases the dead connector's blocks (their ports bind again), and new connects work, on the
    replacement worker 1 too."""
    from usnet import socket as us

    srv = socket.create_server((tapd2.host_ip, 0))
    srv.settimeout(10)
    socks, peers = [], {}
    for _ in range(2):
        s = us.socket(us.AF_INET, us.SOCK_STREAM)
        s.settimeout(5)
        s.connect((tapd2.host_ip, srv.getsockname()[1]))
        c, peer = srv.accept()
        c.settimeout(10)
        peers[peer[1]] = c
        socks.append(s)
    srv.close()
    by_worker = {s.getsockname()[1] % 2: s for s in socks}
    assert set(by_worker) == {0, 1}, [s.getsockname() for s in socks]
    s0, s1 = by_worker[0], by_worker[1]
    p1 = s1.getsockname()[1]
    s1.settimeout(10)
    waiting, out = _blocked(lambda: s1.recv(10))
    pid = _workers(tapd2.path)[1]["pid"]
    os.kill(pid, signal.SIGKILL)
    waiting.join(10)
    err = out.get("error")
    assert isinstance(err, ConnectionAbortedError), out
    assert "worker 1" in str(err) and "died" in str(err), err
    k0 = peers[s0.getsockname()[1]]  # worker 0's connection is untouched, both ways
    s0.sendall(b"still")
    assert k0.recv(10) == b"still"
    k0.sendall(b"here")
    assert s0.recv(10) == b"here"
    for s in (*socks, *peers.values()):
        s.close()

    ls = us.socket(us.AF_INET, us.SOCK_STREAM)  # the dead connector's port is free in usnetd again
    ls.bind(("0.0.0.0", p1))
    ls.close()

    port, t = _server(tapd2.host_ip, 6)
    got = []
    for _ in range(6):
        with us.socket(us.AF_INET, us.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect((tapd2.host_ip, port))
            assert s.recv(2) == b"hi"
            got.append(s.getsockname()[1])
    t.join(10)
    assert {p % 2 for p in got} == {0, 1}, got  # the replacement worker 1 has a connector again


def test_ports_of_a_workers_connector_are_released_before_they_are_reused(tapd2):
    """150 connects, the server closing each first (the port is freed at once): worker 1's
    connector uses up its 64-port block and takes freed ports again. Each reuse waits for its
    release (a request relayed to the worker), so no SYN from a reused port meets the old binding:
    worker 1's switch drops nothing as WRONG_DESTINATION, and every connect completes."""
    from usnet import socket as us

    n = 150
    port, t = _server(tapd2.host_ip, n)
    got = []
    for _ in range(n):
        with us.socket(us.AF_INET, us.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect((tapd2.host_ip, port))
            assert s.recv(2) == b"hi"
            assert s.recv(2) == b""
            got.append(s.getsockname()[1])
    t.join(10)
    odd = [p for p in got if p % 2]
    assert len(odd) > 64 and len(set(odd)) < len(odd), (len(odd), len(set(odd)))  # reused
    w1 = _workers(tapd2.path)[1]["netifs"][0]
    assert w1["drops"].get("tx_wrong_destination", 0) == 0, w1["drops"]
    assert w1["counts"].get("connector_binds", 0) == len(odd), w1["counts"]


def test_worker_1s_connector_drops_a_siblings_4_tuple_and_a_port_not_its_own(tapd2):
    """The trust boundary on worker 1's switch, as on worker 0's: two ports of the connector's
    block bound by their SYNs to two kernel ports; data from one port towards the other's peer
    (each way) is WRONG_DESTINATION, from an odd port outside the block SPOOFED_SOURCE; each is
    reported on the channel and counted by worker 1, and nothing else is dropped."""
    from scapy.all import IP, TCP, raw

    from tests.helpers.util import send_raw, wait_until
    from usnet.abi.events import EventType, TxDropReason
    from usnet.client import Client

    def seg(sport: int, dport: int, flags: str = "A") -> bytes:
        return raw(IP(src=tapd2.usnet_ip, dst=tapd2.host_ip) / TCP(sport=sport, dport=dport, seq=1000, ack=1,
                                                                   flags=flags) / b"x")

    def drops() -> dict:
        return _workers(tapd2.path)[1]["netifs"][0]["drops"]

    with Client.connect(tapd2.path) as c:
        ch, _ = c.open_connector("usnet0", worker=1)
        ch.setblocking(False)
        _, ports = c.add_ports(ch.id, 4)
        p1, p2 = ports[:2]
        stranger = next(p for p in range(60001, 65535, 2) if p not in ports)
        send_raw(ch, [seg(p1, 9001, "S"), seg(p2, 9002, "S")])  # bind p1 -> :9001, p2 -> :9002
        wait_until(lambda: _workers(tapd2.path)[1]["netifs"][0]["counts"].get("connector_binds", 0) == 2, 5.0,
                   "worker 1 bound both ports")
        before = drops()
        send_raw(ch, [seg(p2, 9001), seg(p1, 9002), seg(stranger, 9001)])
        wait_until(lambda: sum(drops().values()) == sum(before.values()) + 3, 5.0, "three refusals")
        after = drops()
        assert after.get("tx_wrong_destination", 0) == before.get("tx_wrong_destination", 0) + 2, after
        assert after.get("tx_spoofed_source", 0) == before.get("tx_spoofed_source", 0) + 1, after
        got = sorted((e.type, e.code) for e in ch.events())
        assert got == sorted([(EventType.TX_DROPPED, TxDropReason.WRONG_DESTINATION)] * 2
                             + [(EventType.TX_DROPPED, TxDropReason.SPOOFED_SOURCE)]), got
        ch.close()
