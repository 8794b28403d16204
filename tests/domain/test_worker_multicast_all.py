"""Issue 16 under issue 18's `usnetd --workers 2`: every worker knows the host's groups, as Linux's
host-wide membership, compared with kernel sockets in the test's namespace.

Linux's host is in a group any of its sockets joined. A socket bound to port p that did not join
hears a datagram to (group, p) while IP_MULTICAST_ALL is on (the default) if the host is in the
group, from the wire or looped; and a socket's IP_MULTICAST_LOOP copies a datagram back only when
the host is in the group. Under workers a member of (group, p) is worker p mod 2's, so a group
joined on worker 0's port and a listener on worker 1's are in different processes: usnetd tells
every worker the host's first joins and last leaves (b"G", docs/abi.md), and a replaced worker the
whole list at its start.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from tests.domain import test_worker_multicast_loop as _loop
from tests.domain.test_worker_multicast_loop import (
    IP6,
    IPP,
    LOOP,
    M_JOIN,
    MC_ALL,
    P0,
    P1,
    S0,
    S1,
    WAIT,
    _drain,
    _greq,
    _key,
    _netif,
)
from tests.domain.test_workers import _workers

tapd2 = _loop.tapd2  # the fixture: usnetd with two workers on a TAP or a veth, either family

pytestmark = pytest.mark.privileged
M_LEAVE = 45  # MCAST_LEAVE_GROUP (include/uapi/linux/in.h)
B0, B1 = 47620, 47621  # the barriers' ports: worker 0's, worker 1's
# usnet's and the kernel's groups differ: what each stack sends to the link is not the other's
GROUPS = {socket.AF_INET: ("239.1.6.3", "239.1.6.4"), socket.AF_INET6: ("ff05::16:3", "ff05::16:4")}


def _heard(s, ends: int) -> list[tuple[int, bytes]]:
    """What `s` hears up to `ends` datagrams tagged "end", then what it has without waiting; short,
    not failing, if they never come: the comparison shows what was missing."""
    got: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + WAIT
    while sum(tag == b"end" for _, tag in got) < ends and time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(_key(s.recv(65536)))
        except TimeoutError:
            break
    return sorted(got + _drain(s))


def _scenario(family: int, new, me: str, group: str, ifindex: int) -> dict[str, list[tuple[int, bytes]]]:
    """On sockets `new()` makes (kernel or usnet) whose own address is `me`: senders with loop on
    of worker 0's port (S0) and worker 1's (S1) send to the group on worker 1's port (and S1 on
    worker 0's) before anyone joins ("pre"), while m0 on worker 0's port is in it ("on"), after m0
    left ("off"), and after it joined again ("end"). c1 on worker 1's port never joins, with
    IP_MULTICAST_ALL on, d1 with it off. What each receiver heard, sorted."""
    level = IPP if family == socket.AF_INET else IP6
    made = []

    def sock(port: int, bind: str = ""):
        s = new(family, socket.SOCK_DGRAM)
        made.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((bind, port))
        return s

    try:
        m0, c1, d1 = sock(P0), sock(P1), sock(P1)
        d1.setsockopt(*MC_ALL[family], 0)
        bars = [sock(port, me) for port in (B0, B1)]
        senders = []
        for port in (S0, S1):
            s = sock(port, me)
            if family == socket.AF_INET:
                s.setsockopt(IPP, socket.IP_MULTICAST_IF, socket.inet_aton(me))
            else:
                s.setsockopt(IP6, socket.IPV6_MULTICAST_IF, ifindex)
            s.setsockopt(*LOOP[family], 1)
            senders.append(s)
        s0, s1 = senders
        join = _greq(family, ifindex, group)

        def send(tag: bytes) -> None:
            """Each sender's datagrams of the phase `tag`, then a barrier: a datagram of each to a
            socket of the other worker's port, heard after the stack took the phase's (a usnet
            socket's send returns before its worker has: the next join must not overtake them).
            The other worker's: a group datagram looped to a port of the other worker goes by
            usnetd (b"L"), and so does this barrier, behind it on the same command sockets; a
            barrier to the sender's own worker was heard while the looped one could still be on
            its way, and a leave relayed meanwhile overtook it (c1 missed worker 0's "on")."""
            for s, port, to in ((s0, S0, P1), (s1, S1, P1), (s1, S1, P0)):
                s.sendto(b"%d" % (port % 2) + tag.ljust(7), (group, to))
            for s, bar in zip(senders, reversed(bars)):
                s.sendto(tag, (me, bar.getsockname()[1]))
                bar.settimeout(WAIT)
                assert bar.recv(100) == tag

        send(b"pre")
        m0.setsockopt(level, M_JOIN, join)
        send(b"on")
        m0.setsockopt(level, M_LEAVE, join)
        send(b"off")
        m0.setsockopt(level, M_JOIN, join)
        send(b"end")
        return {"m0": _heard(m0, 1), "c1": _heard(c1, 2), "d1": _drain(d1)}
    finally:
        for s in made:
            s.close()


def test_a_listener_hears_a_group_the_host_holds_on_the_other_worker_and_loops_go_by_the_host_as_on_linux(tapd2):
    """c1 (worker 1's port, not joined, IP_MULTICAST_ALL on) hears what both workers' senders loop
    to the group while m0 on worker 0's port is in it, and nothing before the join or after the
    leave; d1 (MC_ALL off) nothing; m0 what worker 1's sender loops to its port while it is in;
    as the kernel's sockets. Worker 1 handed usnetd only its two datagrams for a group the host
    held (none of "pre" and "off"), and usnetd worker 1 only its sender's two; besides those, each
    hand-over way carried the four barriers (one a phase)."""
    from usnet import socket as us

    d, family = tapd2, tapd2.family
    g_kernel, g_usnet = GROUPS[family]
    host, mine = (d.host_ip, d.usnet_ip) if family == socket.AF_INET else (d.host_ip6, d.usnet_ip6)
    kernel = _scenario(family, socket.socket, host, g_kernel, socket.if_nametoindex(d.ifname))
    assert kernel == {"m0": [(1, b"end"), (1, b"on")], "c1": sorted((i, t) for i in (0, 1) for t in (b"on", b"end")),
                      "d1": []}, kernel
    assert _scenario(family, us.socket, mine, g_usnet, 0) == kernel
    (counts0, _), (counts1, drops1) = _netif(d.path)
    barriers = 4  # one a phase each way: `send`'s, to the other worker's port
    assert counts1.get("rx_handed_over") == counts0.get("rx_handed_over") == 2 + barriers, (counts0, counts1)
    assert "host_groups_refused" not in drops1, drops1


def _listener(port: int, mc_all: bool = True):
    from usnet import socket as us

    s = us.socket(us.AF_INET, us.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", port))
    if not mc_all:
        s.setsockopt(*MC_ALL[socket.AF_INET], 0)
    s.settimeout(WAIT)
    return s


def _kernel_sender(d) -> socket.socket:
    k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    k.setsockopt(IPP, socket.IP_MULTICAST_IF, socket.inet_aton(d.host_ip))
    k.setsockopt(*LOOP[socket.AF_INET], 0)
    return k


@pytest.mark.parametrize("tapd2", [("tap", socket.AF_INET), ("packet", socket.AF_INET)], ids=["tap-ipv4",
                                                                                              "packet-ipv4"],
                         indirect=True)
def test_a_listener_of_worker_1_hears_from_the_wire_a_group_joined_on_worker_0(tapd2):
    """A kernel peer on the link sends to (group, worker 1's port): c1 there, never joined, hears
    it while m0 on worker 0's port is in the group (Linux's MC_ALL: the host is in it), d1 with
    MC_ALL off never; after m0's leave the datagram is not taken (the netif is in no such group),
    after its join again it is."""
    d = tapd2
    group = GROUPS[socket.AF_INET][1]
    m0, c1, d1, bar = _listener(P0), _listener(P1), _listener(P1, mc_all=False), _listener(B1)
    k = _kernel_sender(d)
    join = _greq(socket.AF_INET, 0, group)
    try:
        m0.setsockopt(IPP, M_JOIN, join)
        k.sendto(b"first", (group, P1))
        assert c1.recv(100) == b"first"
        m0.setsockopt(IPP, M_LEAVE, join)
        k.sendto(b"left", (group, P1))
        # a barrier: worker 1 takes its queue in order, so "left" was judged when this is heard
        # (it waits in the device meanwhile, and is judged by the state when it is taken)
        k.sendto(b"bar", (d.usnet_ip, B1))
        assert bar.recv(100) == b"bar"
        m0.setsockopt(IPP, M_JOIN, join)
        k.sendto(b"again", (group, P1))
        assert c1.recv(100) == b"again"  # not "left"
        assert _drain(d1) == []  # worker 1 gave c1 both before this: d1's would be in by now
    finally:
        for s in (m0, c1, d1, bar, k):
            s.close()


def kill_worker_1(d) -> None:
    """Kill worker 1 and wait (bounded) until usnetd has forked its replacement and it answers."""
    pid = _workers(d.path)[1]["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        w = _workers(d.path)[1]
        if w.get("pid") not in (None, pid) and w.get("netifs"):
            break


@pytest.mark.parametrize("tapd2", [("tap", socket.AF_INET)], ids=["tap-ipv4"], indirect=True)
def test_a_replaced_worker_gets_the_hosts_groups_at_its_start(tapd2):
    """m0 on worker 0's port is in the group; worker 1 is killed and replaced: a listener bound on
    the replacement hears a kernel peer's datagram to the group on its port, which only the whole
    list usnetd gives a new worker at its start tells it the host is in."""
    d = tapd2
    group = GROUPS[socket.AF_INET][1]
    m0 = _listener(P0)
    k = _kernel_sender(d)
    c1 = None
    try:
        m0.setsockopt(IPP, M_JOIN, _greq(socket.AF_INET, 0, group))
        kill_worker_1(d)
        c1 = _listener(P1)
        k.sendto(b"to the new one", (group, P1))
        assert c1.recv(100) == b"to the new one"
    finally:
        for s in (m0, k, *([c1] if c1 is not None else [])):
            s.close()
