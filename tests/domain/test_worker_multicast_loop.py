"""Issue 16 under issue 18's `usnetd --workers 2`: a group datagram sent with IP_MULTICAST_LOOP reaches
every member on the host, whichever worker serves it, as kernel sockets in the test's namespace do.

A member of (group, p) holds port p, so it is worker p mod 2's. A flow of worker k that sends to
(group, p) of the other worker reached nobody: its switch's local path delivered to its own
members only, and the kernel does not send the TAP's frame back. Now the local path hands the copy
to the port's worker (through usnetd, which alone knows the other workers' groups). Here the same
sequence runs on kernel sockets and on usnet's: senders on either worker's port, loop off then on,
small datagrams and one in fragments, to members on either worker's port; among the members of
worker 1's port one blocks the senders' source (MCAST_BLOCK_SOURCE), one listens without joining
with IP_MULTICAST_ALL on and one with it off. Who heard what, how many times, must be the kernel's.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time

import pytest

from tests.domain.test_worker_multicast import _counts, _records
from tests.domain.test_workers import _workers, serving
from tests.helpers.usnetd import TapDaemon
from tests.interop.test_multicast import _Wire
from tests.interop.test_multicast_sources import _ss

pytestmark = pytest.mark.privileged
WAIT = 5.0  # seconds for a datagram that is due: only reached when something is broken
IPP, IP6 = socket.IPPROTO_IP, socket.IPPROTO_IPV6
M_JOIN, M_BLOCK = 42, 43  # MCAST_JOIN_GROUP, MCAST_BLOCK_SOURCE (include/uapi/linux/in.h)
LOOP = {socket.AF_INET: (IPP, 34), socket.AF_INET6: (IP6, 19)}  # IP(V6)_MULTICAST_LOOP
MC_ALL = {socket.AF_INET: (IPP, 49), socket.AF_INET6: (IP6, 29)}  # IP(V6)_MULTICAST_ALL
P0, P1 = 47600, 47601  # worker 0's port, worker 1's
S0, S1 = 47610, 47611  # the looping senders': worker 0's, worker 1's (those two above, not looping)
BIG = 3000  # in fragments on a 1500-byte link
FLOOD = 40  # datagrams of 60,000 bytes: the room of a command socket holds one or two
# usnet's and the kernel's groups differ: what each stack sends to the link is not the other's
GROUPS = {socket.AF_INET: ("239.1.6.1", "239.1.6.2"), socket.AF_INET6: ("ff05::16:1", "ff05::16:2")}


@pytest.fixture(params=[("tap", socket.AF_INET), ("tap", socket.AF_INET6), ("packet", socket.AF_INET),
                        ("packet", socket.AF_INET6)], ids=["tap-ipv4", "tap-ipv6", "packet-ipv4", "packet-ipv6"])
def tapd2(request, sockdir, monkeypatch):
    """usnetd with two workers on a TAP or a packet netif (a veth pair), IPv6 too; the kernel's end
    addressed in both families."""
    kind, family = request.param
    d = TapDaemon(sockdir, ipv6=True)
    for got in serving(d, kind, monkeypatch):
        if family == socket.AF_INET6:
            from pyroute2 import IPRoute

            from usnet.drivers.hostnet import add_address6

            with IPRoute() as ipr:
                add_address6(ipr, socket.if_nametoindex(d.ifname), d.host_ip6, 64)
        got.family = family
        yield got


def _greq(family: int, ifindex: int, group: str, source: str | None = None) -> bytes:
    """struct group_req (or group_source_req with `source`): the interface, padding, sockaddr_storages."""
    return struct.pack("=I4x", ifindex) + _ss(family, group) + (b"" if source is None else _ss(family, source))


def _scenario(family: int, new, me: str, group: str, ifindex: int) -> dict[str, list[tuple[int, bytes]]]:
    """The sequence, on sockets `new()` makes (kernel or usnet) whose own address is `me`: what
    each receiver heard, as sorted (sender, first 8 bytes) pairs (one per datagram heard)."""
    level = IPP if family == socket.AF_INET else IP6
    made = []

    def sock(port: int, reuse: bool = True):
        s = new(family, socket.SOCK_DGRAM)
        made.append(s)
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((me, port) if port >= S0 else ("", port))
        return s

    try:
        rx = {"a0": sock(P0), "a1": sock(P1), "b1": sock(P1), "c1": sock(P1), "d1": sock(P1)}
        for name in ("a0", "a1", "b1"):
            rx[name].setsockopt(level, M_JOIN, _greq(family, ifindex, group))
        rx["b1"].setsockopt(level, M_BLOCK, _greq(family, ifindex, group, me))  # not from us
        rx["d1"].setsockopt(*MC_ALL[family], 0)  # c1 keeps it on: it hears the host's groups
        # a sender of each worker with loop off, one with it on; none changes it between sends (the
        # kernel's looped copy over a TAP reads the option later than the send: it would be racy)
        for port, loop, tags in ((S0 + 2, 0, (b"off", b"off2")), (S1 + 2, 0, (b"off", b"off2")),
                                 (S0, 1, (b"on", b"big", b"end")), (S1, 1, (b"on", b"big", b"end"))):
            s = sock(port, False)
            if family == socket.AF_INET:
                s.setsockopt(IPP, socket.IP_MULTICAST_IF, socket.inet_aton(me))
            else:
                s.setsockopt(IP6, socket.IPV6_MULTICAST_IF, ifindex)
            s.setsockopt(*LOOP[family], loop)
            for tag in tags:
                for to in (P0, P1):
                    body = b"%d" % (port % 2) + tag.ljust(7)
                    s.sendto(body.ljust(BIG, b".") if tag == b"big" else body, (group, to))
        heard: dict[str, list[tuple[int, bytes]]] = {}
        for name in ("a0", "a1", "c1"):  # each hears both senders' "end", the last thing each sent it
            heard[name] = _until_ends(rx[name])
        for name in ("b1", "d1"):  # worker 1's delivery to a1 and c1 was theirs too: all in by now
            heard[name] = _drain(rx[name])
        return {name: sorted(got) for name, got in heard.items()}
    finally:
        for s in made:
            s.close()


def _key(data: bytes) -> tuple[int, bytes]:
    return int(data[:1]), data[1:8].rstrip(b" ") + (b"+%d" % len(data) if len(data) > 8 else b"")


def _until_ends(s) -> list[tuple[int, bytes]]:
    """What `s` hears up to both senders' "end" (each sender's datagrams to one port come in order);
    short, not failing, if they never come: the comparison shows what was missing."""
    got: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + WAIT
    while sum(tag == b"end" for _, tag in got) < 2 and time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(_key(s.recv(65536)))
        except TimeoutError:
            break
    return got + _drain(s)


def _drain(s) -> list[tuple[int, bytes]]:
    """What `s` has now, without waiting."""
    s.setblocking(False)
    got = []
    for _ in range(64):
        try:
            got.append(_key(s.recv(65536)))
        except (BlockingIOError, TimeoutError):
            break
    return got


def test_a_looped_group_datagram_reaches_the_members_on_every_worker_as_on_linux(tapd2):
    """Both senders (worker 0's port, worker 1's), loop off, on, a datagram in fragments, off, on:
    each member of either port hears each looped datagram once, the one blocking the source and
    the one with MULTICAST_ALL off nothing, none a datagram sent with loop off; as the kernel's
    sockets. usnetd handed worker 1 the copies worker 0's sender looped to worker 1's port, and
    worker 1 handed usnetd those its sender looped to worker 0's."""
    from usnet import socket as us

    d, family = tapd2, tapd2.family
    g_kernel, g_usnet = GROUPS[family]
    host, mine = (d.host_ip, d.usnet_ip) if family == socket.AF_INET else (d.host_ip6, d.usnet_ip6)
    kernel = _scenario(family, socket.socket, host, g_kernel, socket.if_nametoindex(d.ifname))
    on = [(i, tag) for i in (0, 1) for tag in (b"on", b"big+%d" % BIG, b"end")]
    assert kernel == {"a0": sorted(on), "a1": sorted(on), "c1": sorted(on), "b1": [], "d1": []}, kernel
    assert _scenario(family, us.socket, mine, g_usnet, 0) == kernel
    usnetd, worker1 = _counts(d.path)
    assert usnetd.get("rx_handed_over") == 3 and worker1.get("rx_handed_over") == 3, (usnetd, worker1)
    assert "rx_hand_over_failed" not in usnetd and "rx_hand_over_failed" not in worker1


def _netif(path: str) -> list[tuple[dict, dict]]:
    """(counts, drops) of the netif in usnetd and in worker 1."""
    return [(w["netifs"][0]["counts"], w["netifs"][0]["drops"]) for w in _workers(path)]


def flood_from_worker_1(d, sender, receiver, to: tuple[str, int]) -> None:
    """FLOOD datagrams of 60,000 bytes from `sender`, a socket of worker 1's port, to `to` (worker
    0's port, where `receiver` is), as fast as it can: each handed to usnetd or dropped, counted
    either way in worker 1, usnetd delivered each one handed over, worker 1 kept its pid (not taken
    for hung), and `receiver` hears a datagram sent after the flood."""
    pid = _workers(d.path)[1]["pid"]
    (counts0, _), _ = _netif(d.path)
    before = counts0.get("local_delivered", 0)
    for _ in range(FLOOD):
        sender.sendto(b"f" * 60000, to)
    deadline = time.monotonic() + WAIT  # until worker 1 has judged each and usnetd read each handed
    while time.monotonic() < deadline:
        (counts0, _), (counts1, drops1) = _netif(d.path)
        handed = counts1.get("rx_handed_over", 0)
        if handed + drops1.get("rx_hand_over_failed", 0) == FLOOD and \
                counts0.get("local_delivered", 0) - before == handed:
            break
    assert handed + drops1.get("rx_hand_over_failed", 0) == FLOOD, (counts1, drops1)
    assert counts0.get("local_delivered", 0) - before == handed, counts0
    sender.sendto(b"after", to)
    receiver.settimeout(WAIT)
    for _ in range(FLOOD + 1):
        if receiver.recv(65536) == b"after":
            break
    else:
        raise AssertionError("no 'after'")
    assert _workers(d.path)[1]["pid"] == pid


@pytest.mark.parametrize("tapd2", [("tap", socket.AF_INET)], ids=["tap-ipv4"], indirect=True)
def test_a_flood_of_looped_datagrams_is_bounded_and_counted_and_the_worker_goes_on(tapd2):
    """Worker 1's sender loops FLOOD datagrams of 60,000 bytes to worker 0's port as fast as it
    can: each is handed to usnetd or, when what it handed and usnetd has not read yet fills the
    room (`hand_over_room`: the rest of the socket is for the heartbeat's answers), dropped;
    counted either way, none lost uncounted, and usnetd delivered each one handed over. The
    worker is not taken for hung (the same pid), and a datagram after the flood is heard."""
    from usnet import socket as us

    d = tapd2
    group = GROUPS[socket.AF_INET][1]
    member = us.socket(us.AF_INET, us.SOCK_DGRAM)
    sender = us.socket(us.AF_INET, us.SOCK_DGRAM)
    try:
        member.bind(("", P0))
        member.setsockopt(IPP, M_JOIN, _greq(socket.AF_INET, 0, group))
        sender.bind((d.usnet_ip, S1))
        sender.setsockopt(IPP, socket.IP_MULTICAST_IF, socket.inet_aton(d.usnet_ip))
        flood_from_worker_1(d, sender, member, (group, P0))
    finally:
        sender.close()
        member.close()


@pytest.mark.parametrize("tapd2", [("tap", socket.AF_INET)], ids=["tap-ipv4"], indirect=True)
def test_after_worker_1_dies_its_replacement_hears_what_usnetd_loops(tapd2):
    """Worker 1 killed under a member of its port: usnetd's sender loops on meanwhile (each copy
    to the dead worker counted as a failed hand-over, never raised); the member's socket, bound
    again on the replacement (as any UDP socket of a dead worker) and joined again, hears the next
    looped datagram, and the replacement hands what its own sender loops to usnetd's port."""
    from usnet import socket as us

    d = tapd2
    group = GROUPS[socket.AF_INET][1]
    socks = [us.socket(us.AF_INET, us.SOCK_DGRAM) for _ in range(4)]
    b, a, s0, s1 = socks
    wire = _Wire(d.ifname)
    try:
        b.bind(("", P1))
        b.setsockopt(IPP, M_JOIN, _greq(socket.AF_INET, 0, group))
        b.settimeout(WAIT)
        assert [_records(wire, d.usnet_ip) for _ in range(2)] == [[(4, group)]] * 2  # b's join, said twice
        s0.bind((d.usnet_ip, S0))
        s0.setsockopt(IPP, socket.IP_MULTICAST_IF, socket.inet_aton(d.usnet_ip))
        s0.sendto(b"before", (group, P1))
        assert b.recv(100) == b"before"
        os.kill(_workers(d.path)[1]["pid"], signal.SIGKILL)
        assert _records(wire, d.usnet_ip) == [(3, group)]  # b's membership went with its worker
        s0.sendto(b"while", (group, P1))  # to nobody: the dead worker, or its replacement before b's join
        # b binds again on the replacement when it is up, and joins again: a first join, said by usnetd
        for _ in range(3):
            if _records(wire, d.usnet_ip) == [(4, group)]:
                break
        s0.sendto(b"again", (group, P1))
        got = b.recv(100)
        assert got in (b"while", b"again")  # "while" only if it came after the join: a member's then
        assert got == b"again" or b.recv(100) == b"again"
        a.bind(("", P0))
        a.setsockopt(IPP, M_JOIN, _greq(socket.AF_INET, 0, group))
        a.settimeout(WAIT)
        s1.bind((d.usnet_ip, S1))
        s1.setsockopt(IPP, socket.IP_MULTICAST_IF, socket.inet_aton(d.usnet_ip))
        s1.sendto(b"from the new one", (group, P0))
        assert a.recv(100) == b"from the new one"
    finally:
        wire.close()
        for s in socks:
            s.close()
