"""Issue 16 under issue 18's `usnetd --workers 2`: a flow's datagram or segment to the netif's own
address reaches the socket of its port on the other worker, as two sockets of one Linux host talk
through its address whatever CPU each runs on.

The local path (usnet.domain.switch.local) hairpinned such a packet into the sender's own switch,
which found no flow for a port of the other worker and answered as a host does for a closed port:
a port unreachable, a RST (a connect refused, a datagram lost). Now a packet of the local queue
whose port is another worker's goes the looped group datagram's way (b"L": the worker to usnetd,
usnetd on to the port's worker), and so does the host's answer to one (a port unreachable, a RST).
The same walk runs on kernel sockets bound to the kernel's address in the test's namespace and on
usnet's bound to usnet's: what each socket heard, or the error it met, must be equal.
"""

from __future__ import annotations

import socket

import pytest

from tests.domain import test_worker_multicast_loop as _loop
from tests.domain.test_worker_multicast import _counts
from tests.domain.test_worker_multicast_loop import flood_from_worker_1
from tests.helpers.util import outcome

pytestmark = pytest.mark.privileged
WAIT = 5.0  # seconds for what is due: only reached when something is broken
U0, U1 = 47700, 47701  # UDP receivers: worker 0's port, worker 1's
S0, S1 = 47710, 47711  # UDP senders
C0, C1 = 47720, 47721  # connected UDP senders to a closed port of the other worker (Z1, Z0)
Z0, Z1 = 47730, 47731  # ports nobody holds
T0, T1 = 47740, 47741  # TCP listeners
K0, K1 = 47750, 47751  # TCP clients' own ports
tapd2 = _loop.tapd2  # the fixture: usnetd with two workers on a TAP or a veth, either family
BLOB = 200_000  # bytes each TCP client sends and has echoed: many segments each way


def _walk(family: int, new, me: str) -> dict:
    """The walk on sockets `new()` makes (kernel or usnet), all bound to `me` or the wildcard."""
    made = []

    def sock(kind: int, port: int, wild: bool = False):
        s = new(family, kind)
        made.append(s)
        s.settimeout(WAIT)
        s.bind(("" if wild else me, port))
        return s

    got: dict = {}
    try:
        rx = {U0: sock(socket.SOCK_DGRAM, U0, True), U1: sock(socket.SOCK_DGRAM, U1, True)}
        tx = {S0: sock(socket.SOCK_DGRAM, S0), S1: sock(socket.SOCK_DGRAM, S1)}
        for sport, s in tx.items():
            for dport in (U0, U1):
                s.sendto(b"%d>%d" % (sport, dport), (me, dport))
        for dport, r in rx.items():  # each hears both senders, and answers each
            heard = []
            for _ in range(2):
                data, src = r.recvfrom(2048)
                heard.append((data, src[0] == me, src[1]))
                r.sendto(b"re " + data, src[:2])
            got[f"udp {dport}"] = sorted(heard)
        for sport, s in tx.items():
            got[f"udp re {sport}"] = sorted(s.recvfrom(2048)[0] for _ in range(2))
        for cport, closed in ((C0, Z1), (C1, Z0)):  # the port unreachable comes back to the sender
            c = sock(socket.SOCK_DGRAM, cport)
            c.connect((me, closed))
            c.send(b"anyone?")
            got[f"udp closed {closed}"] = outcome(lambda c=c: c.recv(2048))
        listeners = {T0: sock(socket.SOCK_STREAM, T0, True), T1: sock(socket.SOCK_STREAM, T1, True)}
        for ln in listeners.values():
            ln.listen(4)
        blob = bytes(range(256)) * (BLOB // 256)
        for kport, tport in ((K0, T1), (K1, T0)):
            c = sock(socket.SOCK_STREAM, kport)
            c.connect((me, tport))
            a, peer = listeners[tport].accept()
            made.append(a)
            a.settimeout(WAIT)
            c.sendall(blob)
            c.shutdown(socket.SHUT_WR)
            echoed = bytearray()
            while True:  # the server echoes what it reads; the client reads the echo
                chunk = a.recv(65536)
                if not chunk:
                    break
                a.sendall(chunk)
            a.close()
            while len(echoed) < len(blob):
                chunk = c.recv(65536)
                if not chunk:
                    break
                echoed += chunk
            got[f"tcp {kport}>{tport}"] = (peer[1], bytes(echoed) == blob, c.recv(1))
        for kport, closed in ((K0 + 2, Z1), (K1 + 2, Z0)):
            c = sock(socket.SOCK_STREAM, kport)
            got[f"tcp closed {closed}"] = outcome(lambda c=c, closed=closed: c.connect((me, closed)))
        return got
    finally:
        for s in made:
            s.close()


@pytest.mark.parametrize("tapd2", [("tap", socket.AF_INET), ("tap", socket.AF_INET6),
                                   ("packet", socket.AF_INET)], ids=["tap-ipv4", "tap-ipv6", "packet-ipv4"],
                         indirect=True)
def test_a_flow_reaches_its_own_address_on_a_port_of_the_other_worker_as_on_linux(tapd2):
    """UDP both ways between the workers' ports through the netif's own address (and the answers
    back), a connected socket's datagram to a closed port of the other worker refused, TCP
    connections each way carrying BLOB bytes and their echo, a connect to a closed port of the
    other worker refused: as on kernel sockets. usnetd and worker 1 handed over what crossed, and
    none was dropped."""
    from usnet import socket as us

    d, family = tapd2, tapd2.family
    host, mine = (d.host_ip, d.usnet_ip) if family == socket.AF_INET else (d.host_ip6, d.usnet_ip6)
    kernel = _walk(family, socket.socket, host)
    assert kernel[f"udp {U1}"] == sorted((b"%d>%d" % (s, U1), True, s) for s in (S0, S1)), kernel
    assert kernel[f"udp closed {Z1}"] == kernel[f"udp closed {Z0}"] == "ECONNREFUSED", kernel
    assert kernel[f"tcp {K0}>{T1}"] == (K0, True, b""), kernel
    assert kernel[f"tcp closed {Z0}"] == "ECONNREFUSED", kernel
    before = _counts(d.path)
    assert _walk(family, us.socket, mine) == kernel
    after = _counts(d.path)
    for b, a in zip(before, after, strict=True):  # both ways crossed: from worker 1 and from usnetd
        assert a.get("rx_handed_over", 0) > b.get("rx_handed_over", 0), (before, after)


@pytest.mark.parametrize("tapd2", [("tap", socket.AF_INET)], ids=["tap-ipv4"], indirect=True)
def test_a_flood_to_the_own_address_of_the_other_workers_port_is_bounded_and_counted(tapd2):
    """Worker 1's sender sends FLOOD datagrams of 60,000 bytes to the netif's own address and
    worker 0's port as fast as it can: each is handed to usnetd or, past the room the hand-overs
    may fill of the command socket, dropped; counted either way (none lost uncounted), usnetd
    delivered each one handed over, the worker is not taken for hung, a datagram after is heard."""
    from usnet import socket as us

    d = tapd2
    rx, tx = us.socket(us.AF_INET, us.SOCK_DGRAM), us.socket(us.AF_INET, us.SOCK_DGRAM)
    try:
        rx.bind(("", U0))
        tx.bind((d.usnet_ip, S1))
        flood_from_worker_1(d, tx, rx, (d.usnet_ip, U0))
    finally:
        tx.close()
        rx.close()
