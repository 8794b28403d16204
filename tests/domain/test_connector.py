"""Many connections, one channel (issue 18 item 2): a connector flow carries a process's outgoing
TCP connections, which send from the ports of the blocks the connector was given (P.AddPorts).

The switch checks every packet a connector sends against its own connection's 4-tuple
(usnet.domain.switch.binding): the first SYN from a free port of its blocks binds the
port to that SYN's remote end, with no round trip, and from then on the port sends to
that end only, until the client's release notice (P.ReleasePorts). A packet from a
port outside the blocks, from a free port (other than its SYN or a RST), or from
another address, is dropped as SPOOFED_SOURCE; one from a bound port to another
remote end (a sibling's port towards this connection's peer, a SYN to a new peer) or
to what no peer can be, as WRONG_DESTINATION; each is reported on the channel's event
ring and counted, and the other connections go on undisturbed.
Memwire, no root: a raw listener flow on netif b stands for the peers and shows
what reaches the wire.
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
    """Netif a with a connector holding a block of 8 ports, of which the connections to b:6000
    and b:6001 use p1 and p2; netif b has raw TCP listener flows on both ports, which receive
    what a's connector sends."""
    n = Net()
    try:
        n.ch, n.info = n.c.open_connector("a")
        n.ch.setblocking(False)
        n.block, n.ports = n.c.add_ports(n.ch.id, 8)
        n.p1, n.p2 = n.ports[:2]
        n.peer0, _ = n.c.open_flow("b", 6, 6000)
        n.peer1, _ = n.c.open_flow("b", 6, 6001)
        n.peer0.setblocking(False)
        n.peer1.setblocking(False)
        send_raw(n.ch, [seg(n.p1, 6000, seq=999, flags="S"), seg(n.p2, 6001, seq=999, flags="S")])
        assert len(received(n.peer0, 1)) == 1 and len(received(n.peer1, 1)) == 1  # p1, p2 now bound
        yield n
    finally:
        n.d.stop()


def seg(sport: int, dport: int, seq: int = 1000, flags: str = "A", data: bytes = b"", src: str = A_IP,
        dst: str = B_IP) -> bytes:
    return raw(IP(src=src, dst=dst, id=seq & 0xFFFF) / TCP(sport=sport, dport=dport, seq=seq, ack=1,
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


def test_a_connector_opens_with_packets_lent_so_its_first_syn_asks_the_domain_for_none():
    """A connector is opened by a connect, whose SYN needs a packet at once: its ALLOC ring is
    filled at open (issue 18: the first connect waited for a refill round trip), so that first
    alloc neither kicks the domain nor waits for its answer."""
    n = Net()
    try:
        ch, _ = n.c.open_connector("a")
        assert ch._alloc.refresh() > 0
        kicks = []
        real = ch._kick
        ch._kick = lambda: (kicks.append(1), real())[1]
        assert len(ch.alloc(1)) == 1
        assert kicks == []
        plain, _ = n.c.open_flow("b", 6, 6002)  # other flows lend what they use, from their first ask
        assert plain._alloc.refresh() == 0
    finally:
        n.d.stop()


def test_connections_share_one_channel_and_each_port_is_bound_by_its_first_syn(cnet):
    n = cnet
    assert len(set(n.ports)) == 8 and all(49152 <= p <= 65535 for p in n.ports) and n.info.local_port == 0
    flows = n.flows("a")
    assert len(flows) == 1 and flows[0]["connector"] and flows[0]["ports"] == 8
    assert flows[0]["connections"] == 2
    conn = n.swa.flows[flows[0]["id"]]
    assert conn.conns == {n.p1: (bytes(map(int, B_IP.split("."))), 6000),
                          n.p2: (bytes(map(int, B_IP.split("."))), 6001)}
    b = bytes(map(int, B_IP.split(".")))
    for p in n.ports[2:]:  # a free port: whoever sends to it, the connector's TCP answers with RST
        assert n.swa.ports.owner(TCP_PROTO, p) is not None
        for remote in ((b, 6000), (bytes([10, 9, 0, 77]), 1234)):
            assert n.swa.lookup(TCP_PROTO, p, *remote) is conn
    # a bound port: its own 4-tuple only, as a connected flow's
    assert n.swa.lookup(TCP_PROTO, n.p1, b, 6000) is conn
    assert n.swa.lookup(TCP_PROTO, n.p1, b, 6001) is None
    # both leave from the one channel, and the answers come back to it
    send_raw(n.ch, [seg(n.p1, 6000, data=b"one"), seg(n.p2, 6001, data=b"two")])
    assert ports_of(received(n.peer0, 1)) == [(n.p1, 6000, b"one")]
    assert ports_of(received(n.peer1, 1)) == [(n.p2, 6001, b"two")]
    # a RST from a free port (the answer to a stray) goes to anyone, binding nothing
    send_raw(n.ch, [seg(n.ports[2], 6000, flags="R")])
    assert ports_of(received(n.peer0, 1)) == [(n.ports[2], 6000, b"")]
    assert n.ports[2] not in conn.conns and list(n.ch.events()) == []


def test_a_release_frees_the_binding_and_the_port_binds_anew(cnet):
    n = cnet
    conn = n.swa.flows[n.flows("a")[0]["id"]]
    before = dict(n.swa.drops)
    n.c.release_ports(n.ch.id, [n.p1, n.ports[3]])  # a port of its blocks not bound: left as it is
    assert n.p1 not in conn.conns and n.p2 in conn.conns and n.flows("a")[0]["ports"] == 8
    assert n.swa.lookup(TCP_PROTO, n.p1, bytes(map(int, B_IP.split("."))), 6001) is conn  # free again
    send_raw(n.ch, [seg(n.p1, 6001, seq=7, flags="S")])  # to another peer now: binds anew
    assert ports_of(received(n.peer1, 1)) == [(n.p1, 6001, b"")]
    assert conn.conns[n.p1] == (bytes(map(int, B_IP.split("."))), 6001)
    assert dict(n.swa.drops) == before and list(n.ch.events()) == []


def test_a_release_of_a_port_not_of_its_blocks_is_refused_and_the_domain_goes_on(cnet):
    n = cnet
    conn = n.swa.flows[n.flows("a")[0]["id"]]
    errors = n.d.control_errors
    for bad in ([40000], [n.p1, 40000], [0]):
        n.c.release_ports(n.ch.id, bad)  # a notice: nobody waits for the refusal
    assert n.d.control_errors == errors + 3
    assert set(conn.conns) == {n.p1, n.p2}  # nothing changed, not even the good port of the second
    n.c.release_ports(n.peer0.id, [n.p1])  # not a connector
    n.c.release_ports(987654, [n.p1])  # not a channel of this session
    assert n.d.control_errors == errors + 5
    send_raw(n.ch, [seg(n.p1, 6000, data=b"still")])
    assert ports_of(received(n.peer0, 1)) == [(n.p1, 6000, b"still")]


def test_a_block_is_given_back_with_a_notice_and_its_ports_freed(cnet):
    n = cnet
    before = n.d.requests["ReturnPorts"]
    n.c.return_ports(n.ch.id, n.block)
    assert n.d.requests["ReturnPorts"] == before + 1
    assert n.flows("a")[0]["ports"] == 0
    assert all(n.swa.ports.owner(TCP_PROTO, p) is None for p in n.ports)
    assert n.swa.lookup(TCP_PROTO, n.p1, bytes(map(int, B_IP.split("."))), 6000) is None
    assert n.flows("a")[0]["connections"] == 0
    errors = n.d.control_errors
    n.c.return_ports(n.ch.id, n.block)  # twice: refused, and nobody waits for the refusal
    assert n.d.control_errors == errors + 1
    drops = dict(n.swa.drops)
    send_raw(n.ch, [seg(n.p1, 6000, data=b"gone")])  # its port is no longer the connector's
    wait_until(lambda: n.swa.drops["tx_spoofed_source"] == drops.get("tx_spoofed_source", 0) + 1, 3.0,
               "the given-back port's packet refused")
    assert [(e.type, e.code) for e in n.ch.events()] == [(EventType.TX_DROPPED, TxDropReason.SPOOFED_SOURCE)]


def test_a_block_for_what_is_no_connector_is_refused(cnet):
    n = cnet
    with pytest.raises(ControlError):
        n.c.add_ports(n.peer0.id)  # not a connector
    with pytest.raises(ControlError):
        n.c.add_ports(987654)  # not a channel of this session


FORGED = [
    # a port outside the connector's blocks (below the ephemeral range: nobody's block)
    ("port_outside_blocks", lambda n: seg(40000, 6000, data=b"forged"), TxDropReason.SPOOFED_SOURCE),
    # an ephemeral port of someone else's block (another connector of the session)
    ("another_connector_s_port", lambda n: seg(n.other_port, 6000, data=b"forged"), TxDropReason.SPOOFED_SOURCE),
    # another address as the source
    ("spoofed_address", lambda n: seg(n.p1, 6000, data=b"forged", src="10.9.0.77"), TxDropReason.SPOOFED_SOURCE),
    # a port of its blocks to what no peer can be: the subnet's broadcast, or port 0
    ("to_broadcast", lambda n: seg(n.p1, 6000, data=b"forged", dst="10.9.0.255"), TxDropReason.WRONG_DESTINATION),
    ("to_port_0", lambda n: seg(n.p1, 0, data=b"forged"), TxDropReason.WRONG_DESTINATION),
    # a sibling's port (bound to b:6001) towards this connection's peer (b:6000)
    ("sibling_port_to_my_peer", lambda n: seg(n.p2, 6000, data=b"forged"), TxDropReason.WRONG_DESTINATION),
    # this connection's port (bound to b:6000) towards the sibling's peer
    ("my_port_to_sibling_peer", lambda n: seg(n.p1, 6001, data=b"forged"), TxDropReason.WRONG_DESTINATION),
    # a SYN from a bound port to a new remote end: a port holds one 4-tuple at a time
    ("syn_from_bound_port_to_new_remote", lambda n: seg(n.p2, 6000, flags="S"), TxDropReason.WRONG_DESTINATION),
    # data from a free port of its blocks: no connection holds it (only a SYN binds one)
    ("data_from_free_port", lambda n: seg(n.ports[4], 6000, data=b"forged"), TxDropReason.SPOOFED_SOURCE),
    # a SYN from a free port to what no peer can be: refused, and it binds nothing
    ("syn_from_free_port_to_broadcast", lambda n: seg(n.ports[4], 6000, flags="S", dst="10.9.0.255"),
     TxDropReason.WRONG_DESTINATION),
]


@pytest.mark.parametrize("batch", [False, True], ids=["per-packet", "column-wise"])
@pytest.mark.parametrize("case,build,reason", FORGED, ids=[c[0] for c in FORGED])
def test_a_forged_4tuple_is_dropped_reported_and_the_siblings_go_on(cnet, case, build, reason, batch):
    n = cnet
    other, _ = n.c.open_connector("a")  # its block is its own: not this connector's
    n.other_port = n.c.add_ports(other.id, 1)[1][0]
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
    flow = n.swa.flows[n.flows("a")[0]["id"]]
    assert set(flow.conns) == {n.p1, n.p2}  # no forged packet bound a port
    # nor is it noted (TcpSeen.note_last, note_rows): the owner's death resets what it noted, so
    # a forged 4-tuple noted would earn a sibling's or a stranger's connection usnetd's RST
    dst = bytes(map(int, B_IP.split(".")))
    assert flow.tcp_seen.ends == {(dst, 6000, n.p1): [2000 + len(good) - 1 + 5, 1], (dst, 6001, n.p2): [1000 + 7, 1]}


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


def test_a_release_still_unread_on_the_control_socket_is_served_before_a_syn_is_refused(cnet):
    """The client sends its release notice before a SYN that reuses the port, but on its control
    socket, which the loop may read after the ring: the transmit path reads the channel's release
    notices waiting at the head of that socket first (and nothing else), so the SYN binds."""
    import socket

    from usnet.abi import protocol as P
    from usnet.abi.transport import send_msg

    n = cnet
    conn = n.swa.flows[n.flows("a")[0]["id"]]
    session = n.d.channels[n.ch.id].session
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    session.sock = ours  # as a socket session's, which the loop has not read yet
    try:
        send_msg(theirs, P.encode(P.ReleasePorts(n.ch.id, [n.p1])))
        send_msg(theirs, P.encode(P.Status()))  # not a release: stays for the loop
        before = dict(n.swa.drops)
        send_raw(n.ch, [seg(n.p1, 6001, seq=7, flags="S")])
        assert ports_of(received(n.peer1, 1)) == [(n.p1, 6001, b"")]
        assert conn.conns[n.p1] == (bytes(map(int, B_IP.split("."))), 6001)
        assert dict(n.swa.drops) == before
        assert isinstance(P.decode_request(ours.recv(P.MAX_MESSAGE, socket.MSG_DONTWAIT)), P.Status)
    finally:
        session.sock = None
        ours.close()
        theirs.close()


def test_a_syn_met_while_a_release_drains_the_ring_keeps_its_new_binding():
    """The domain drains a connector's ring before a release unbinds its ports (the old
    connections' last packets leave bound), and the drain can meet a SYN the client sent after the
    release, reusing a port for the same remote end: it frees the port at once and binds it anew,
    and the release does not take the new binding away (its ACK then goes)."""
    n = Net(start=False)
    try:
        ch, _ = n.c.open_connector("a")
        ch.setblocking(False)
        _, ports = n.c.add_ports(ch.id, 2)
        p = ports[0]
        peer, _ = n.c.open_flow("b", 6, 6000)
        peer.setblocking(False)
        for host in (1, 2):
            n.swa.arp.learn(bytes([10, 9, 0, host]), n.w.b.mac, n.swa.clock())

        def serve() -> None:
            for _ in range(4):
                n.d.serve_once(0)

        send_raw(ch, [seg(p, 6000, seq=100, flags="S")])
        serve()
        conn = n.swa.flows[n.flows("a")[0]["id"]]
        assert conn.conns[p] == (bytes(map(int, B_IP.split("."))), 6000)
        send_raw(ch, [seg(p, 6000, seq=101, data=b"last")])  # the old connection's last segment
        send_raw(ch, [seg(p, 6000, seq=9000, flags="S")])  # a new connection on the port, after its release
        n.c.release_ports(ch.id, [p])  # served now: its drain meets both
        send_raw(ch, [seg(p, 6000, seq=9001, data=b"new")])
        serve()
        assert conn.conns[p] == (bytes(map(int, B_IP.split("."))), 6000)
        got = [(IP(q)[TCP].seq, bytes(IP(q)[TCP].payload)) for q in received(peer, 4)]
        assert got == [(100, b""), (101, b"last"), (9000, b""), (9001, b"new")]
        assert total_drops(n.swa) == 0 and list(ch.events()) == []
    finally:
        n.d.stop()


def test_a_connector_closed_mid_handshake_has_the_late_syn_ack_reset_and_counted(cnet):
    """A connector sends a SYN and closes its channel before the answer: the port goes back, and
    the peer's SYN-ACK that comes after is answered as Linux answers one to a closed port (a RST
    whose seq is the SYN-ACK's ack, RFC 9293 3.10.7.1), counted, and delivered to no flow."""
    n = cnet
    p = n.ports[3]
    send_raw(n.ch, [seg(p, 6000, seq=500, flags="S")])
    assert ports_of(received(n.peer0, 1)) == [(p, 6000, b"")]
    ref = n.d.channels[n.ch.id]
    drops, counts = dict(n.swa.drops), dict(n.swa.counts)
    n.d.close_channel(ref.session, n.ch.id)
    assert n.swa.ports.owner(TCP_PROTO, p) is None
    send_raw(n.peer0, [raw(IP(src=B_IP, dst=A_IP) / TCP(sport=6000, dport=p, seq=77, ack=501, flags="SA"))])
    (rst,) = [IP(x)[TCP] for x in received(n.peer0, 1)]
    assert (rst.sport, rst.dport, rst.seq, rst.flags.R, rst.flags.A) == (p, 6000, 501, True, False)
    assert n.swa.drops["rx_no_flow"] == drops.get("rx_no_flow", 0) + 1
    assert n.swa.counts["tcp_rst_sent"] == counts.get("tcp_rst_sent", 0) + 1
    assert total_drops(n.swa) == sum(drops.values()) + 1  # that one, and nothing else
