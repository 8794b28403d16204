"""A program on a usnetd in another process: what an in-process domain hides.

An embedded domain (the `tap_domain` fixture) runs in a thread of the test's own process, and
often answers a client's request before the client looks for the answer. usnetd never does,
so a client must wait for its answers where a call needs them. Here usnetd runs as a child on
a TAP of its own (tests/helpers/usnetd.TapDaemon), in the test's network namespace, and the
kernel's sockets there are the peers.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import struct

import pytest

from tests.helpers.util import fresh_subnet, wait_until
from tests.helpers.util import outcome as outcome_of
from usnet import aio
from usnet.client import Client

pytestmark = pytest.mark.privileged

LIMIT = 20  # seconds: reached only when something is broken


def _take_local_buffers(ch) -> list[int]:
    """Every packet buffer `ch` holds on its side (its cache and its ALLOC ring), without asking
    usnetd for more: its next allocation must then wait for usnetd's answer (a refill)."""
    held = list(ch._cache)
    ch._cache.clear()
    held += ch._alloc.pop(ch._alloc.capacity)
    return held


def test_an_asyncio_udp_server_answers_its_first_datagram(tapd):
    """A non-blocking send whose packet buffers must come from usnetd waits for its answer: the
    first reply of an asyncio datagram server failed with ENOBUFS ("the nexus did not answer a
    pool refill in time"), since a fresh channel's first send needs a refill and a non-blocking
    call waited for none."""
    client = Client.connect(tapd.path)
    errors: list[Exception] = []

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple) -> None:
            self.transport.sendto(data.upper(), addr)  # type: ignore[attr-defined]

        def error_received(self, exc: Exception) -> None:
            errors.append(exc)

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=(tapd.usnet_ip, 0))
        port = transport.get_extra_info("sockname")[1]
        ch = transport._sock.engine.ch  # type: ignore[attr-defined]  # (its usnet socket's flow)
        held = _take_local_buffers(ch)  # as a fresh channel's: its first reply needs a refill
        got = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k:
            k.bind((tapd.host_ip, 0))
            k.setblocking(False)
            for i in range(5):
                await loop.sock_sendto(k, b"ping %d" % i, (tapd.usnet_ip, port))
                data, _ = await asyncio.wait_for(loop.sock_recvfrom(k, 100), LIMIT)
                got.append(data)
        ch.free(held)
        transport.close()
        return got

    loop = aio.EventLoop(client=client, netif="usnet0")
    try:
        got = loop.run_until_complete(asyncio.wait_for(main(), LIMIT))
    finally:
        loop.close()
        client.close()
    assert errors == []
    assert got == [b"PING %d" % i for i in range(5)]


def test_a_non_blocking_send_waits_for_usnetd_to_refill_the_pool(tapd):
    with Client.connect(tapd.path) as client, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k:
        k.bind((tapd.host_ip, 0))
        k.settimeout(LIMIT)
        ds = client.udp_socket("usnet0")
        ds.setblocking(False)
        held = _take_local_buffers(ds.channel)
        for i in range(3):
            ds.sendto(b"hello %d" % i, k.getsockname())
        assert [k.recv(100) for _ in range(3)] == [b"hello %d" % i for i in range(3)]
        ds.channel.free(held)
        ds.close()


def test_a_wait_for_a_refill_leaves_a_waiting_datagram_announced(tapd):
    """The wait for usnetd's answer sleeps on the channel's doorbell, and takes every ring of it,
    also the one that announced a datagram nobody has read yet: the wait rings it again, or a
    select (or the stack thread) would not hear of that datagram until the next one came."""
    with Client.connect(tapd.path) as client, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k:
        k.bind((tapd.host_ip, 0))
        ds = client.udp_socket("usnet0")
        ds.settimeout(LIMIT)
        assert select.select([ds], [], [], 0)[0] == []
        held = _take_local_buffers(ds.channel)
        k.sendto(b"waiting", (tapd.usnet_ip, ds.getsockname()[1]))
        assert select.select([ds], [], [], LIMIT)[0] == [ds]  # announced, not read
        ds.sendto(b"out", k.getsockname())  # blocking: waits for a refill on the same doorbell
        assert select.select([ds], [], [], 0)[0] == [ds]  # still announced
        assert ds.recvfrom()[0] == b"waiting"
        ds.channel.free(held)
        ds.close()


def test_a_child_of_fork_makes_its_own_sockets_and_leaves_its_parents_alone(tapd, monkeypatch):
    """After fork(), the parent's stack (its runner, session, channels) is not the child's: the
    child's new sockets work on a session of its own (they hung: no stack thread ran them). An
    inherited connection is shared as Linux shares it, served by the parent's stack
    (usnet.client.forked; tests/interop/test_fork.py): the child's data reaches the peer, and
    its close leaves the parent's connection open."""
    from usnet import socket as us

    monkeypatch.setenv("USNET_SOCKET", tapd.path)
    monkeypatch.setenv("USNET_NETIF", "usnet0")
    us.configure(None, None)
    ls = socket.create_server((tapd.host_ip, 0))
    ls.settimeout(LIMIT)
    addr = ls.getsockname()
    s = us.create_connection(addr, timeout=LIMIT)
    k1, _ = ls.accept()
    k1.settimeout(LIMIT)
    s.sendall(b"ping")
    assert k1.recv(10) == b"ping"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report on the pipe, never return into pytest
        out = []
        try:
            try:
                s.sendall(b"from the child")
                out.append("inherited: sent")
            except OSError as e:
                out.append(f"inherited: {e.errno} {'fork()' in str(e)}")
            s.close()  # the child's reference: the parent's keeps the connection open
            c = us.create_connection(addr, timeout=LIMIT)
            c.sendall(b"child")
            c.shutdown(socket.SHUT_WR)
            # until the parent closes: os._exit ends the stack as SIGKILL would (what was not yet
            # delivered is lost, and the peer is reset), with no exit drain to wait for it
            out.append(f"own: {c.recv(100)!r}")
            c.close()
        except BaseException as e:
            out.append(f"failed: {e!r}")
        finally:
            os.write(w, "\n".join(out).encode())
            os._exit(0)
    os.close(w)
    try:
        k2, _ = ls.accept()  # the child's own connection
        k2.settimeout(LIMIT)
        got = b""
        while chunk := k2.recv(100):
            got += chunk
        assert got == b"child"
        k2.close()
        _, status = os.waitpid(pid, 0)
        report = os.read(r, 4096).decode().splitlines()
    finally:
        os.close(r)
    assert status == 0
    assert report == ["inherited: sent", "own: b''"]
    s.sendall(b"parent again")  # the parent's connection is open: the child's close was not its last
    want = b"from the childparent again"
    got = b""
    while len(got) < len(want) and (chunk := k1.recv(100)):
        got += chunk
    assert got == want
    k1.sendall(b"pong")
    assert s.recv(10) == b"pong"
    for x in (s, k1, ls):
        x.close()
    us.configure(None, None)


def _restart(mod, ip: str, peer, reuse: bool, keep_open: bool) -> list[str]:
    """A server restarts on its port at once: its old listener closes with one connection in
    TIME-WAIT (the server closed first) and (`keep_open`) one still open; a new listener binds the
    same port.
    What happens, in words, for `mod` (the kernel's socket module or usnet's) serving at `ip`,
    `peer` (the other module) connecting."""
    out = []

    def listener(port: int):
        ls = mod.socket(mod.AF_INET, mod.SOCK_STREAM)
        if reuse:
            ls.setsockopt(mod.SOL_SOCKET, mod.SO_REUSEADDR, 1)
        ls.bind((ip, port))
        ls.listen()
        ls.settimeout(LIMIT)
        return ls

    ls = listener(0)
    port = ls.getsockname()[1]
    c1 = peer.create_connection((ip, port), timeout=LIMIT)
    a1, _ = ls.accept()
    a1.close()  # the server closes first: its side waits out TIME-WAIT
    assert c1.recv(10) == b""
    c1.close()
    if keep_open:
        c2 = peer.create_connection((ip, port), timeout=LIMIT)
        a2, _ = ls.accept()  # still open after the listener goes
        a2.settimeout(LIMIT)
    ls.close()
    try:
        ls2 = listener(port)
    except OSError as e:
        out.append(f"bind: {errno.errorcode[e.errno]}")
    else:
        out.append("bind: ok")
        with peer.create_connection((ip, port), timeout=LIMIT) as c3:
            a3, _ = ls2.accept()
            c3.sendall(b"new")
            out.append(f"new: {a3.recv(10)!r}")
            a3.close()
        ls2.close()
    if keep_open:
        c2.sendall(b"old")
        out.append(f"old: {a2.recv(10)!r}")
        for x in (a2, c2):
            x.close()
    return out


@pytest.mark.parametrize(("reuse", "keep_open"), [(True, True), (True, False), (False, True)])
def test_a_server_restarts_on_its_port_at_once_as_on_linux(tapd, monkeypatch, reuse, keep_open):
    """With SO_REUSEADDR a new listener takes the port of one that just closed, whose connections
    linger (in TIME-WAIT, or open), as Linux's does: usnet refused (EADDRINUSE) until its old
    flow had gone; without SO_REUSEADDR both refuse while a connection of the port is open.
    (Without SO_REUSEADDR and only TIME-WAIT left, Linux refuses and usnet may not: its flow does
    not outlive its connections' TIME-WAIT in the domain.)"""
    from usnet import socket as us

    monkeypatch.setenv("USNET_SOCKET", tapd.path)
    monkeypatch.setenv("USNET_NETIF", "usnet0")
    us.configure(None, None)
    try:
        kernel = _restart(socket, tapd.host_ip, us, reuse, keep_open)
        usnet = _restart(us, tapd.usnet_ip, socket, reuse, keep_open)
    finally:
        us.configure(None, None)
    old = ["old: b'old'"] if keep_open else []
    assert kernel == (["bind: ok", "new: b'new'"] if reuse else ["bind: EADDRINUSE"]) + old
    assert usnet == kernel


def test_broadcast_fails_at_once_and_multicast_is_as_on_linux(tapd, monkeypatch):
    """usnet sends no broadcast: each such datagram was "sent" and reached nobody; now it fails at
    once: without SO_BROADCAST with EACCES, as Linux's; with it EOPNOTSUPP. Multicast, refused
    before (EOPNOTSUPP, IP_ADD_MEMBERSHIP ENOPROTOOPT), is as Linux's now: a datagram to a group is
    sent, a join succeeds, connect to a group too (tests/interop/test_multicast.py for the rest)."""
    from usnet import socket as us

    monkeypatch.setenv("USNET_SOCKET", tapd.path)
    monkeypatch.setenv("USNET_NETIF", "usnet0")
    us.configure(None, None)
    subnet_bcast = tapd.host_ip.rsplit(".", 1)[0] + ".255"

    def outcome(mod, ip: str, dest: str, broadcast: bool) -> str:
        with mod.socket(mod.AF_INET, mod.SOCK_DGRAM) as s:
            s.bind((ip, 0))
            if broadcast:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            try:
                s.sendto(b"x", (dest, 9))
            except OSError as e:
                return errno.errorcode[e.errno]
            return "sent"

    def group_calls(mod, ip: str) -> list:
        with mod.socket(mod.AF_INET, mod.SOCK_DGRAM) as s:
            s.bind((ip, 0))
            group = struct.pack("4s4s", socket.inet_aton("239.1.2.3"), socket.inet_aton(ip))
            return [outcome_of(lambda: s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)),
                    outcome_of(lambda: s.connect(("239.1.2.3", 9))),
                    outcome_of(lambda: s.send(b"x")),
                    outcome_of(lambda: s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)),
                    s.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL)]

    try:
        for dest in ("255.255.255.255", subnet_bcast):
            assert outcome(socket, tapd.host_ip, dest, False) == outcome(us, tapd.usnet_ip, dest, False) == "EACCES"
            assert outcome(socket, tapd.host_ip, dest, True) == "sent"
            assert outcome(us, tapd.usnet_ip, dest, True) == errno.errorcode[errno.EOPNOTSUPP]
        assert outcome(socket, tapd.host_ip, "239.1.2.3", False) == outcome(us, tapd.usnet_ip, "239.1.2.3", False)
        assert group_calls(us, tapd.usnet_ip) == group_calls(socket, tapd.host_ip) == [None, None, 1, None, 2]
    finally:
        us.configure(None, None)


def test_the_subnets_network_address_is_a_host_as_on_linux(tapd, monkeypatch):
    """Linux (since 5.14) routes the lowest address of a connected /24 as an ordinary host's: a
    datagram to it is sent without SO_BROADCAST and a connect to it goes out (only the all-ones
    address is the broadcast). usnet refused the connect with ENETUNREACH and "sent" the
    datagram, which its switch then dropped (TX_DROPPED). The kernel's answer is read on a
    veth /24 of its own; then the host takes the network address of usnet's subnet, and usnet's
    datagram and connection reach it there."""
    from pyroute2 import IPRoute

    from usnet import socket as us

    monkeypatch.setenv("USNET_SOCKET", tapd.path)
    monkeypatch.setenv("USNET_NETIF", "usnet0")
    us.configure(None, None)
    other = f"10.{fresh_subnet()}.0"
    with IPRoute() as ipr:
        ipr.link("add", ifname="nadr0", kind="veth", peer="nadr1")
        idx = ipr.link_lookup(ifname="nadr0")[0]
        ipr.addr("add", index=idx, address=f"{other}.1", prefixlen=24)
        for name in ("nadr0", "nadr1"):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")

    def outcome(mod, dest: str) -> tuple[str, str]:
        with mod.socket(mod.AF_INET, mod.SOCK_DGRAM) as s:
            try:
                s.sendto(b"x", (dest, 9))
                udp = "sent"
            except OSError as e:
                udp = errno.errorcode[e.errno]
        with mod.socket(mod.AF_INET, mod.SOCK_STREAM) as s:
            s.setblocking(False)
            try:
                s.connect((dest, 9))
                tcp = "connected"
            except OSError as e:
                tcp = errno.errorcode[e.errno]
        return udp, tcp

    ours = tapd.host_ip.rsplit(".", 1)[0]
    try:
        assert outcome(socket, f"{other}.0") == ("sent", "EINPROGRESS")  # the kernel's own answer
        assert outcome(socket, f"{other}.255") == ("EACCES", "ENETUNREACH")
        assert outcome(us, f"{ours}.0") == outcome(socket, f"{other}.0")
        assert outcome(us, f"{ours}.255") == outcome(socket, f"{other}.255")
        with IPRoute() as ipr:  # the network address is a host's: the host's, now
            ipr.addr("add", index=ipr.link_lookup(ifname=tapd.ifname)[0], address=f"{ours}.0", prefixlen=24)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k, \
                socket.create_server((f"{ours}.0", 0)) as ls, us.socket(us.AF_INET, us.SOCK_DGRAM) as u:
            k.bind((f"{ours}.0", 0))
            k.settimeout(LIMIT)
            u.sendto(b"to the network address", k.getsockname())
            assert k.recvfrom(100) == (b"to the network address", (tapd.usnet_ip, u.getsockname()[1]))
            with us.create_connection(ls.getsockname(), timeout=LIMIT) as c:
                ls.settimeout(LIMIT)
                conn, peer = ls.accept()
                with conn:
                    assert peer[0] == tapd.usnet_ip
                    c.sendall(b"hello")
                    conn.settimeout(LIMIT)
                    assert conn.recv(5) == b"hello"
    finally:
        us.configure(None, None)
        with IPRoute() as ipr:
            ipr.link("del", index=ipr.link_lookup(ifname="nadr0")[0])


def test_a_second_listener_with_so_reuseport_shares_the_port(tapd, monkeypatch):
    """As Linux: listeners that all bound with SO_REUSEPORT share the port and the connections
    (create_server(reuse_port=True) twice; it was EADDRINUSE once); a third socket without it is
    EADDRINUSE. Spreading and processes: tests/interop/test_reuseport.py."""
    from usnet import socket as us

    monkeypatch.setenv("USNET_SOCKET", tapd.path)
    monkeypatch.setenv("USNET_NETIF", "usnet0")
    us.configure(None, None)
    try:
        first = us.create_server((tapd.usnet_ip, 0), reuse_port=True)
        second = us.create_server(first.getsockname(), reuse_port=True)
        assert second.getsockname() == first.getsockname()
        with pytest.raises(OSError) as e:
            us.create_server(first.getsockname())
        assert e.value.errno == errno.EADDRINUSE
        second.settimeout(LIMIT)
        first.close()  # it returns once the domain has it: every new connection is the second's
        for _ in range(8):
            with socket.create_connection(second.getsockname(), timeout=LIMIT) as k:
                c, _ = second.accept()
                assert c.getpeername() == k.getsockname()
                c.close()
        second.close()
    finally:
        us.configure(None, None)


def test_a_netif_whose_tap_is_deleted_under_usnetd_is_reported_gone_and_usnetd_goes_on(tapd):
    """Its TAP deleted under it (`ip link del`, or its namespace removed), usnetd's descriptor for
    it polls as an error for ever: the netif leaves the poll set and says so in its status (the
    loop spun at a quarter of a core, logging the same fault), and usnetd keeps serving."""
    from pyroute2 import IPRoute

    with Client.connect(tapd.path) as c:
        def netif() -> dict:
            return next(s["netif"] for s in c.status()["netifs"] if s["netif"]["name"] == "usnet0")

        assert netif()["device_gone"] is None
        with IPRoute() as ipr:
            (idx,) = ipr.link_lookup(ifname=tapd.ifname)
            ipr.link("del", index=idx)
        wait_until(lambda: netif()["device_gone"] is not None, LIMIT, "the netif reported gone")
        assert "state" in netif()["device_gone"]  # EBADFD: "File descriptor in bad state"
    with Client.connect(tapd.path) as c2:  # a new session is served
        assert any(s["netif"]["name"] == "usnet0" for s in c2.status()["netifs"])
    assert "its device is gone" in tapd.daemon.log_text()
    assert tapd.daemon.log_text().count("its device is gone") == 1


def test_a_gone_device_met_by_a_send_is_recognised_on_the_switch_round_too(tapd):
    """The loop meets a device's errors on two paths: the poll set (its descriptor rang) and its
    round of the switches, which reads devices with frames due and flushes what flows sent.
    Only the first knew a gone device: on the second its EBADFD was a fault logged every round
    and counted, for every datagram a client sent to the dead TAP. Now one recognition serves
    both: the sends after it are dropped quietly, and the netif says gone once."""
    from pyroute2 import IPRoute

    with Client.connect(tapd.path) as c:
        def status() -> dict:
            return c.status()

        def netif() -> dict:
            return next(s["netif"] for s in status()["netifs"] if s["netif"]["name"] == "usnet0")

        u = c.udp_socket("usnet0", 0)
        u.sendto(b"before", (tapd.host_ip, 9))
        with IPRoute() as ipr:
            (idx,) = ipr.link_lookup(ifname=tapd.ifname)
            ipr.link("del", index=idx)
        for i in range(50):  # into the dead TAP, whichever path meets it first
            try:
                u.sendto(b"after %d" % i, (tapd.host_ip, 9))
            except OSError:
                break
        wait_until(lambda: netif()["device_gone"] is not None, LIMIT, "the netif reported gone")
        faults = status()["faults"]
        for i in range(50):
            u.sendto(b"later %d" % i, (tapd.host_ip, 9))
        assert status()["faults"] == faults, tapd.daemon.log_text()  # a status after the sends: served
        u.close()
    text = tapd.daemon.log_text()
    assert text.count("its device is gone") == 1
    assert "fault in netif usnet0" not in text
