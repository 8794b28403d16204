"""SO_REUSEPORT (issue 16): several flows of one uid on one port, each new TCP connection and
each UDP datagram to one of them by a hash of its remote end (usnet.domain.switch.reuseport).

Memwire, no root: netif a stands for the peers (a connector's block of ports for TCP, UDP flows
for datagrams), netif b has the group; what each member's channel receives is what a real
member's stack would. The kernel's own behaviour for the same binds is compared in
tests/interop/test_reuseport.py.
"""

from __future__ import annotations

import errno
import socket

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, raw

from tests.domain.test_connector import received
from tests.domain.test_flowswitch import A_IP, B_IP, Net
from tests.domain.test_limits import hello, ok, refused
from tests.helpers.util import close_all, send_raw
from usnet.abi import protocol as P
from usnet.domain.loop import Domain
from usnet.domain.switch.reuseport import choose
from usnet.drivers import MemWire

PORT = 7000


@pytest.fixture
def net():
    n = Net()
    try:
        n.conn, _ = n.c.open_connector("a")
        n.conn.setblocking(False)
        _, n.ports = n.c.add_ports(n.conn.id, 64)
        yield n
    finally:
        close_all(n.c, n.d, n.w)


def seg(sport: int, flags: str = "S", data: bytes = b"", seq: int = 1000) -> bytes:
    return raw(IP(src=A_IP, dst=B_IP) / TCP(sport=sport, dport=PORT, seq=seq, ack=0 if flags == "S" else 1,
                                           flags=flags) / data)


def member(n: Net, port: int = PORT, proto: int = 6):
    ch, info = n.c.open_flow("b", proto, port, reuse_port=True)
    ch.setblocking(False)
    assert info.local_port == port
    return ch


def sources(pkts: list[bytes]) -> list[int]:
    """The source port of each IPv4 TCP/UDP packet (no options: scapy's)."""
    return [int.from_bytes(p[20:22], "big") for p in pkts]


def test_new_connections_spread_over_the_members_and_stay_with_theirs(net):
    n = net
    m1, m2 = member(n), member(n)
    first = n.ports[:40]
    send_raw(n.conn, [seg(p) for p in first])
    got = {m1: sources(received(m1, 40, 1.0)), m2: sources(received(m2, 40, 0.5))}
    assert sorted(got[m1] + got[m2]) == sorted(first)  # each SYN to exactly one member
    assert got[m1] and got[m2]  # both get some (40 connections, two members)
    owner = {p: m for m, ps in got.items() for p in ps}
    m3 = member(n)  # a member joins: the connections made stay where they are
    send_raw(n.conn, [seg(p, "A", b"x%d" % p, 1001) for p in first])
    after = {m: sources(received(m, len(got.get(m, [])) or 1, 1.0)) for m in (m1, m2, m3)}
    assert after[m3] == []
    for m in (m1, m2):
        assert sorted(after[m]) == sorted(got[m])
    # the first member goes: new connections over the two left, the second's stay with it
    m1.close()
    rest = n.ports[40:64]
    send_raw(n.conn, [seg(p) for p in rest] + [seg(p, "A", b"y", 1002) for p in first if owner[p] is m2])
    got2 = sources(received(m2, 64, 1.0))
    got3 = sources(received(m3, 64, 0.5))
    assert sorted(p for p in got2 if p in rest) + sorted(got3) != []
    assert sorted([p for p in got2 if p in rest] + got3) == sorted(rest)  # every new one reached a member
    assert sorted(p for p in got2 if p not in rest) == sorted(got[m2])  # m2's connections: still m2's


def test_a_member_whose_listener_closed_keeps_its_connections_and_gets_no_new_ones(net):
    n = net
    m1, m2 = member(n), member(n)
    send_raw(n.conn, [seg(p) for p in n.ports[:32]])
    g1, g2 = sources(received(m1, 32, 1.0)), sources(received(m2, 32, 0.5))
    assert sorted(g1 + g2) == sorted(n.ports[:32]) and g1 and g2
    n.c.unlisten(m1.id)  # a notice: the in-process session serves it at once
    send_raw(n.conn, [seg(p) for p in n.ports[32:64]] + [seg(p, "A", b"z", 1001) for p in g1])
    assert sorted(sources(received(m2, 32, 1.0))) == sorted(n.ports[32:64])
    assert sorted(sources(received(m1, len(g1), 1.0))) == sorted(g1)


def test_datagrams_spread_by_their_source_and_each_source_keeps_its_member(net):
    n = net
    m1, m2 = member(n, 7001, 17), member(n, 7001, 17)
    senders = [n.c.udp_socket("a", 0) for _ in range(24)]
    for rnd in range(2):
        for s in senders:
            s.sendto(b"d%d" % rnd, (B_IP, 7001))
    g1, g2 = sources(received(m1, 48, 1.0)), sources(received(m2, 48, 0.5))
    assert len(g1) + len(g2) == 48
    assert g1 and g2
    assert not set(g1) & set(g2)  # a source's datagrams all to one member
    assert set(g1) | set(g2) == {s.local[1] for s in senders}


def test_the_binds_linux_refuses_are_refused():
    d = Domain()
    d.add_netif("a", MemWire().a, "10.9.0.1/24")
    try:
        u1, u1b, u2 = hello(d, 1000), hello(d, 1000), hello(d, 1001)

        def req(port: int, reuse: bool, proto: int = 6) -> P.OpenFlow:
            return P.OpenFlow("a", proto, port, reuse_port=reuse)

        assert ok(d, u1, req(7000, True)).local_port == 7000
        assert ok(d, u1b, req(7000, True)).local_port == 7000  # another session, the same uid
        refused(d, u1, req(7000, False), "EADDRINUSE")  # without SO_REUSEPORT
        assert "another user's" in refused(d, u2, req(7000, True), "EADDRINUSE")  # another uid
        ok(d, u1, req(7001, False))
        refused(d, u1, req(7001, True), "EADDRINUSE")  # the holder did not ask for it
        assert ok(d, u2, req(7000, True, 17)).local_port == 7000  # UDP is another namespace
        refused(d, u1, req(7000, True, 17), "EADDRINUSE")  # ... whose port is uid 1001's
    finally:
        d.stop()


def test_the_port_is_free_when_the_last_member_goes(net):
    n = net
    m1, m2 = member(n), member(n)
    m1.close()
    m2.close()
    _ch, info = n.c.open_flow("b", 6, PORT)  # no SO_REUSEPORT: the port is free again
    assert info.local_port == PORT
    with pytest.raises(OSError) as e:
        n.c.open_flow("b", 6, PORT, reuse_port=True)
    assert e.value.errno == errno.EADDRINUSE


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**64 - 1), st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16),
       st.integers(1, 8))
def test_the_member_choice_is_stable_and_reaches_every_member(salt, raddr, n):
    picks = [choose(salt, raddr, p, n) for p in range(1024, 1024 + 64 * n)]
    assert all(0 <= i < n for i in picks)
    assert set(picks) == set(range(n))  # every member gets connections
    assert picks == [choose(salt, raddr, p, n) for p in range(1024, 1024 + 64 * n)]  # and always the same


def test_a_block_of_frames_is_split_among_the_members_as_frames_are():
    """The receive path's column-wise pass (a FrameBlock, as a TAP or memwire brings many frames
    at once) splits a shared port's rows as the per-frame path does, and pins each SYN."""
    from scapy.all import Ether

    from usnet.drivers.block import FrameBlock

    n = Net(start=False)  # the test thread is the receive path: no loop beside it
    try:
        m1, m2 = member(n), member(n)
        sports = list(range(20000, 20040))
        frames = [raw(Ether(dst=n.swb.netif.mac, src="02:00:00:00:00:01") / IP(src=A_IP, dst=B_IP)
                      / TCP(sport=p, dport=PORT, seq=1000, flags="S")) for p in sports]
        width = max(map(len, frames))
        data = np.zeros((len(frames), width), np.uint8)
        for i, f in enumerate(frames):
            data[i, : len(f)] = np.frombuffer(f, np.uint8)
        per_flow: dict = {}
        n.swb._rx_block(FrameBlock(data, np.array(list(map(len, frames)), np.int64)), 0.0, per_flow)
        n.swb._deliver(per_flow)
        g1, g2 = sources(received(m1, 40, 0.5)), sources(received(m2, 40, 0.5))
        assert sorted(g1 + g2) == sports and g1 and g2
        for p in g1:  # pinned: the exact table has each SYN's 4-tuple, to the member that got it
            assert n.swb.exact[(6, PORT, socket.inet_aton(A_IP), p)].channel == m1.id
    finally:
        close_all(n.c, n.d, n.w)
