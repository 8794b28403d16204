"""Many connections, one channel (issue 18 item 2): a connector flow carries a process's outgoing
TCP connections, each a 4-tuple with its own port registered in the switch's exact table.

The switch checks every packet a connector sends against its registered 4-tuples
(`Flow.peer_of`, the one rule both transmit checks use): a packet from a
sibling's port to another remote end, or from a port no connection holds, is
dropped with its reason, reported on the channel's event ring and counted, and
the other connections go on undisturbed. Memwire, no root: a raw listener flow
on netif b stands for the peers and shows what reaches the wire.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scapy.all import IP, TCP, raw

from tests.domain.test_flowswitch import A_IP, B_IP, Net, total_drops
from tests.helpers.util import send_raw, wait_until
from usnet.abi.events import EventType, TxDropReason
from usnet.abi.protocol import ControlError
from usnet.domain.switch.table import TCP as TCP_PROTO
from usnet.domain.switch.txguard import TcpSeen


@pytest.fixture
def cnet():
    """Netif a with a connector holding two connections, to b:6000 and b:6001; netif b has raw
    TCP listener flows on both ports, which receive what a's connector sends."""
    n = Net()
    try:
        n.ch, n.info = n.c.open_connector("a")
        n.ch.setblocking(False)
        n.p1 = n.c.add_connection(n.ch.id, (B_IP, 6000))
        n.p2 = n.c.add_connection(n.ch.id, (B_IP, 6001))
        n.peer0, _ = n.c.open_flow("b", 6, 6000)
        n.peer1, _ = n.c.open_flow("b", 6, 6001)
        n.peer0.setblocking(False)
        n.peer1.setblocking(False)
        yield n
    finally:
        n.d.stop()


def seg(sport: int, dport: int, seq: int = 1000, flags: str = "A", data: bytes = b"", src: str = A_IP) -> bytes:
    return raw(IP(src=src, dst=B_IP, id=seq & 0xFFFF) / TCP(sport=sport, dport=dport, seq=seq, ack=1,
                                                             flags=flags) / data)


def received(ch, want: int, timeout: float = 3.0) -> list[bytes]:
    """The IP packets `ch` receives, until `want` have (bounded by `timeout`)."""
    got: list[bytes] = []
    until = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < until:
        try:
            pkts = ch.recv(64, 0)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        got += [bytes(ch.view(p)) for p in pkts]
        ch.free(pkts)
    return got


def ports_of(pkts: list[bytes]) -> list[tuple[int, int, bytes]]:
    return [(IP(p)[TCP].sport, IP(p)[TCP].dport, bytes(IP(p)[TCP].payload)) for p in pkts]


def test_connections_share_one_channel_and_the_exact_table_finds_each(cnet):
    n = cnet
    assert n.p1 != n.p2 and n.info.local_port == 0
    flows = n.flows("a")
    assert len(flows) == 1 and flows[0]["connector"] and flows[0]["connections"] == 2
    conn = n.swa.flows[flows[0]["id"]]
    for p, rport in ((n.p1, 6000), (n.p2, 6001)):
        assert n.swa.lookup(TCP_PROTO, p, bytes(map(int, B_IP.split("."))), rport) is conn
    # both leave from the one channel, and the answers come back to it
    send_raw(n.ch, [seg(n.p1, 6000, data=b"one"), seg(n.p2, 6001, data=b"two")])
    assert ports_of(received(n.peer0, 1)) == [(n.p1, 6000, b"one")]
    assert ports_of(received(n.peer1, 1)) == [(n.p2, 6001, b"two")]


def test_a_connection_is_removed_and_its_port_freed(cnet):
    n = cnet
    n.c.remove_connection(n.ch.id, n.p1)
    assert n.flows("a")[0]["connections"] == 1
    assert n.swa.ports.owner(TCP_PROTO, n.p1) is None
    with pytest.raises(ControlError):
        n.c.remove_connection(n.ch.id, n.p1)
    before = dict(n.swa.drops)
    send_raw(n.ch, [seg(n.p1, 6000, data=b"gone")])  # its port is no longer the connector's
    wait_until(lambda: n.swa.drops["tx_spoofed_source"] == before.get("tx_spoofed_source", 0) + 1, 3.0,
               "the removed connection's packet refused")


def test_a_connection_to_what_no_peer_can_be_or_a_taken_port_is_refused(cnet):
    n = cnet
    for remote in (("10.9.0.255", 80), ("127.0.0.1", 80), ("224.0.0.1", 80), (B_IP, 0)):
        with pytest.raises((ControlError, ValueError)):
            n.c.add_connection(n.ch.id, remote)
    with pytest.raises(ControlError):
        n.c.add_connection(n.ch.id, (B_IP, 7000), local_port=n.p1)  # the port is held already
    with pytest.raises(ControlError):
        n.c.add_connection(n.peer0.id, (B_IP, 7000))  # not a connector


FORGED = [
    # a sibling's source port, towards this connection's remote end: an unregistered 4-tuple
    ("sibling_port", lambda n: seg(n.p2, 6000, data=b"forged"), TxDropReason.WRONG_DESTINATION),
    # a port no connection of the connector holds
    ("unregistered_port", lambda n: seg(40000, 6000, data=b"forged"), TxDropReason.SPOOFED_SOURCE),
    # another address as the source
    ("spoofed_address", lambda n: seg(n.p1, 6000, data=b"forged", src="10.9.0.77"), TxDropReason.SPOOFED_SOURCE),
    # a registered port to a remote end nobody registered
    ("unregistered_remote", lambda n: seg(n.p1, 6002, data=b"forged"), TxDropReason.WRONG_DESTINATION),
]


@pytest.mark.parametrize("batch", [False, True], ids=["per-packet", "column-wise"])
@pytest.mark.parametrize("case,build,reason", FORGED, ids=[c[0] for c in FORGED])
def test_a_forged_4tuple_is_dropped_reported_and_the_siblings_go_on(cnet, case, build, reason, batch):
    n = cnet
    before = dict(n.swa.drops)
    bad = build(n)
    # a batch of more than a few packets takes the column-wise pass; one alone the per-packet one
    good = [seg(n.p1, 6000, seq=2000 + i, data=b"good%d" % i) for i in range(4 if batch else 1)]
    send_raw(n.ch, [good[0], bad, *good[1:], seg(n.p2, 6001, data=b"sibling")])
    got0 = received(n.peer0, len(good))
    assert ports_of(got0) == [(n.p1, 6000, b"good%d" % i) for i in range(len(good))]
    assert ports_of(received(n.peer1, 1)) == [(n.p2, 6001, b"sibling")]
    key = "tx_" + reason.name.lower()
    assert n.swa.drops[key] == before.get(key, 0) + 1
    assert total_drops(n.swa) == sum(before.values()) + 1
    assert [(e.type, e.code, e.value) for e in n.ch.events()] == [(EventType.TX_DROPPED, reason, len(bad))]
    assert received(n.peer0, 1, timeout=0.05) == [] and received(n.peer1, 1, timeout=0.05) == []


def test_the_owner_s_death_resets_each_connection_from_its_own_port(cnet):
    n = cnet
    send_raw(n.ch, [seg(n.p1, 6000, seq=500, flags="S"), seg(n.p2, 6001, seq=900, flags="S")])
    assert len(received(n.peer0, 1)) == 1 and len(received(n.peer1, 1)) == 1
    send_raw(n.ch, [seg(n.p1, 6000, seq=501, data=b"abc"), seg(n.p2, 6001, seq=901, data=b"hello")])
    assert len(received(n.peer0, 1)) == 1 and len(received(n.peer1, 1)) == 1
    ref = n.d.channels[n.ch.id]
    ref.pipe.defunct_reason = 1  # as a SIGKILL leaves it: the stack died with its owner
    n.d.close_channel(ref.session, n.ch.id)
    rst0, rst1 = IP(received(n.peer0, 1)[0])[TCP], IP(received(n.peer1, 1)[0])[TCP]
    assert (rst0.sport, rst0.seq, rst0.flags.R) == (n.p1, 504, True)
    assert (rst1.sport, rst1.seq, rst1.flags.R) == (n.p2, 906, True)
    assert n.swa.counts["tcp_rst_owner_gone"] == 2
    assert n.swa.ports.owner(TCP_PROTO, n.p1) is None and n.swa.ports.owner(TCP_PROTO, n.p2) is None


def test_tcp_seen_by_port_keeps_each_connection_to_one_remote_apart():
    """Two connections to the same remote end differ only in their local port: a connector's
    TcpSeen keeps one state per local port, in the batch and per-packet paths alike."""
    from tests.domain.test_tcp_seen import rows_of

    pkts = [seg(50000, 80, seq=10, data=b"a"), seg(50001, 80, seq=20, data=b"bb"), seg(50000, 80, seq=11)]
    seen = TcpSeen(by_port=True)
    rows, lens = rows_of(pkts)
    seen.note_rows(rows, lens, np.arange(3), 14, 4, False)
    dst = bytes(map(int, B_IP.split(".")))
    assert seen.ends == {(dst, 80, 50001): [22, 1], (dst, 80, 50000): [11, 1]}
