"""Issue 16 under issue 18's `usnetd --workers 2`: a worker judges a group datagram's source by the
host's union of the sockets' source filters, as Linux's ip_check_mc_rcv asks the device's (RFC 3376
§3.2), not by its own flows' part of it.

A worker knew the host's groups (b"G") but not their filters: for a group held only on another
worker's port it let every source in for its IP_MULTICAST_ALL listeners, and for a group its own
flows held with a filter it let in only what theirs did, however the other workers' members widened
the host's state. Now usnetd tells every worker the union's filter of each group whenever it changes
(b"M"), and a worker judges by it. Here a listener of worker 1's port that joined nothing hears a
datagram to the group on its port exactly when the host's union lets the sender in, through a walk of
joins, source additions, a leave and blocks on both workers' ports: kernel sockets hear usnet's
sender, usnet's sockets the kernel's, and what each hears must be equal.
"""

from __future__ import annotations

import socket

import pytest

from tests.domain import test_worker_multicast_loop as _loop
from tests.domain.test_worker_multicast import _counts
from tests.domain.test_worker_multicast_all import kill_worker_1
from tests.interop.test_multicast import _mreq
from tests.interop.test_multicast_sources import ADD, ADD_SRC, BLOCK, DROP, OTHER, _src

tapd2 = _loop.tapd2  # the fixture: usnetd with two workers on a TAP or a veth, either family

pytestmark = pytest.mark.privileged
WAIT = 5.0  # seconds for a datagram that is due: only reached when something is broken
IPP = socket.IPPROTO_IP
G = "239.1.6.7"


def _tag_or_barrier(s) -> bytes:
    """What `s` hears first of a phase's group datagram and the unicast barrier sent after it (to
    the same port, so in order): the datagram's tag, or b"unicast" if it was dropped."""
    got = s.recv(100)
    if got != b"unicast":
        assert s.recv(100) == b"unicast"
    return got


@pytest.fixture
def opened():
    """A maker of UDP sockets (`new`: socket.socket or usnet's) with a timeout, bound to (`addr`,
    `port`); each closed after the test (before the daemon of `tapd2` stops)."""
    made = []

    def make(new, port: int, addr: str = ""):
        s = new(socket.AF_INET, socket.SOCK_DGRAM)
        made.append(s)
        s.settimeout(WAIT)
        s.bind((addr, port))
        return s

    yield make
    for s in made:
        s.close()


def _walk(sender, sender_ip: str, recv_sock, me: str, base: int) -> list[bytes]:
    """What e, a socket of worker 1's port (`base` + 1) that joins nothing (IP_MULTICAST_ALL on), hears
    of `sender`'s datagram to the group on its port in each phase: its tag, or b"unicast" (the
    barrier that follows it: the datagram was dropped). m is of worker 0's port, n of worker 1's."""
    m, e, n = recv_sock(base), recv_sock(base + 1), recv_sock(base + 3)
    heard = []

    def phase(tag: bytes) -> None:
        sender.sendto(tag, (G, base + 1))
        sender.sendto(b"unicast", (me, base + 1))
        heard.append(_tag_or_barrier(e))

    m.setsockopt(IPP, ADD_SRC, _src(G, me, OTHER))  # the host: INCLUDE {OTHER}
    phase(b"only other")
    m.setsockopt(IPP, ADD_SRC, _src(G, me, sender_ip))  # INCLUDE {OTHER, sender}
    phase(b"let in")
    n.setsockopt(IPP, ADD_SRC, _src(G, me, OTHER))
    m.setsockopt(IPP, DROP, _mreq(G, me))  # n's alone: INCLUDE {OTHER}
    phase(b"m left")
    m.setsockopt(IPP, ADD, _mreq(G, me))  # any-source beside n's: EXCLUDE {}
    phase(b"any")
    m.setsockopt(IPP, BLOCK, _src(G, me, sender_ip))  # EXCLUDE {sender} beside n's: EXCLUDE {sender}
    phase(b"blocked")
    return heard


@pytest.mark.parametrize("tapd2", [("tap", socket.AF_INET), ("packet", socket.AF_INET)],
                         ids=["tap-ipv4", "packet-ipv4"], indirect=True)
def test_a_listener_hears_a_source_as_the_hosts_union_of_filters_says_as_on_linux(tapd2, opened):
    from usnet import socket as us

    d = tapd2
    k = opened(socket.socket, 0, d.host_ip)
    k.setsockopt(IPP, socket.IP_MULTICAST_IF, socket.inet_aton(d.host_ip))
    u = opened(us.socket, 0, d.usnet_ip)
    u.setsockopt(IPP, socket.IP_MULTICAST_IF, socket.inet_aton(d.usnet_ip))
    on_kernel = _walk(u, d.usnet_ip, lambda p: opened(socket.socket, p), d.host_ip, 47810)
    assert on_kernel == [b"unicast", b"let in", b"unicast", b"any", b"unicast"], on_kernel
    on_usnet = _walk(k, d.host_ip, lambda p: opened(us.socket, p), d.usnet_ip, 47800)
    assert on_usnet == on_kernel


@pytest.mark.parametrize("tapd2", [("tap", socket.AF_INET)], ids=["tap-ipv4"], indirect=True)
def test_a_replaced_worker_gets_the_hosts_filters_at_its_start(tapd2, opened):
    """m on worker 0's port is in the group for OTHER only; worker 1 is killed and replaced: a
    listener bound on the replacement does not hear the kernel's datagram to the group on its port
    (the barrier after it comes first), which only the filters usnetd gives a new worker at its
    start (after the whole list of groups) tell it; once m lets the kernel in, it hears it."""
    from usnet import socket as us

    d = tapd2
    m = opened(us.socket, 47820)
    m.setsockopt(IPP, ADD_SRC, _src(G, d.usnet_ip, OTHER))
    k = opened(socket.socket, 0, d.host_ip)
    k.setsockopt(IPP, socket.IP_MULTICAST_IF, socket.inet_aton(d.host_ip))
    kill_worker_1(d)
    e = opened(us.socket, 47821)
    heard = []
    for tag in (b"filtered", b"let in"):
        if tag == b"let in":
            m.setsockopt(IPP, ADD_SRC, _src(G, d.usnet_ip, d.host_ip))
        k.sendto(tag, (G, 47821))
        k.sendto(b"unicast", (d.usnet_ip, 47821))
        heard.append(_tag_or_barrier(e))
    assert heard == [b"unicast", b"let in"]


@pytest.mark.parametrize("tapd2", [("tap", socket.AF_INET)], ids=["tap-ipv4"], indirect=True)
def test_a_group_whose_host_filter_refuses_our_address_is_not_looped_to_another_worker(tapd2, opened):
    """m on worker 0's port is in the group for OTHER only: worker 1's sender with loop on sends
    to the group on m's port; Linux loops nothing (its route is not local: ip_check_mc_rcv refuses
    our own source), and worker 1 hands it not over (only the unicast barrier after it); once m
    lets our address in, the next is handed over and heard. The same on kernel sockets."""
    from usnet import socket as us

    d = tapd2
    handed: list[int] = []

    def walk(new, me: str, base: int) -> list[bytes]:
        m = opened(new, base)
        s = opened(new, base + 1, me)  # worker 1's port
        s.setsockopt(IPP, socket.IP_MULTICAST_IF, socket.inet_aton(me))
        m.setsockopt(IPP, ADD_SRC, _src(G, me, OTHER))
        heard = []
        for tag in (b"refused", b"let in"):
            if tag == b"let in":
                m.setsockopt(IPP, ADD_SRC, _src(G, me, me))
            s.sendto(tag, (G, base))
            s.sendto(b"unicast", (me, base))  # a barrier on m's port
            heard.append(_tag_or_barrier(m))
            handed.append(_handed(d))
        return heard

    assert walk(socket.socket, d.host_ip, 47830) == [b"unicast", b"let in"]
    handed.clear()
    before = _handed(d)
    assert walk(us.socket, d.usnet_ip, 47840) == [b"unicast", b"let in"]
    # each phase's barrier is handed over too (unicast to our own address, worker 0's port)
    assert handed == [before + 1, before + 3], (before, handed)


def _handed(d) -> int:
    """Worker 1's `rx_handed_over`."""
    return _counts(d.path)[1].get("rx_handed_over", 0)
