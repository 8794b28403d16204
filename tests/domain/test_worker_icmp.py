"""Issue 18: ICMP errors under `usnetd --workers 2` reach the flow on the worker that owns it.

An ICMP or ICMPv6 error has no port of its own, so the device's steering program sends every one
to queue 0, usnetd's, whatever flow it quotes. usnetd hands the frame to the worker that owns the
quoted packet's local port (b"F", as a datagram in fragments), where the switch matches the quote
against the flow and the flow's stack judges it exactly as on one loop. The kernel in the test's
namespace is the peer that sends each error:

* port unreachable to a connected UDP socket on worker 1's port (and on worker 0's, as before):
  ConnectionRefusedError, once; with IP_RECVERR its error queue entry;
* host unreachable (a route of type unreachable, the namespace forwarding) for a TCP SYN from
  worker 1's port: the connect fails with EHOSTUNREACH at once, not at its timeout;
* ICMPv6: port unreachable to a connected UDP socket on worker 1's port, and packet too big (a
  route with a locked MTU of 1280 behind the kernel) in its IPV6_RECVERR queue with the MTU.

Each fails without the hand-over: usnetd found no flow for the quote (`rx_icmp_unmatched`).
"""

from __future__ import annotations

import errno
import socket
import struct
import subprocess

import pytest

from tests.domain import test_worker_multicast
from tests.domain.test_worker_multicast import _counts
from tests.helpers.util import wait_until

pytestmark = pytest.mark.privileged
LIMIT = 10.0
CLOSED = 9  # discard: nothing in the test's namespace listens on it
MSG_ERRQUEUE, IP_RECVERR, IPV6_RECVERR = 0x2000, 11, 25

# usnetd with two workers: `tapd2` (tests/domain/conftest.py) on a TAP or a veth; this one on a
# TAP with IPv6 too
tapd2v6 = test_worker_multicast.tapd2v6


def _udp(family: int, port: int, recverr: bool = False):
    from usnet import socket as us

    s = us.socket(family, us.SOCK_DGRAM)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    s.settimeout(LIMIT)
    if recverr:
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    return s


def _refused_once(s, to: tuple) -> None:
    s.connect(to)
    s.send(b"anyone?")
    with pytest.raises(ConnectionRefusedError):
        s.recv(2048)
    s.settimeout(0)
    with pytest.raises(BlockingIOError):  # told once, as SO_ERROR is
        s.recv(2048)
    s.settimeout(LIMIT)


def _sysctl(path: str, value: str) -> None:
    """A sysctl of the test's own namespace (net.* are per namespace)."""
    with open(f"/proc/sys/net/{path}", "w") as f:
        f.write(value)


def _ee(s, level: int, kind: int) -> tuple:
    """The next error queue entry's sock_extended_err, waited for up to LIMIT (an error queue is
    never waited on by recvmsg: EAGAIN at once, as Linux's ip_recv_error)."""
    got: list = []

    def entry() -> bool:
        try:
            got.append(s.recvmsg(2048, 256, MSG_ERRQUEUE))
        except BlockingIOError:
            return False
        return True
    wait_until(entry, LIMIT, "an error queue entry")
    _data, anc, flags, _addr = got[0]
    ((lvl, knd, blob),) = anc
    assert (lvl, knd, flags & MSG_ERRQUEUE) == (level, kind, MSG_ERRQUEUE)
    return struct.unpack("=IBBBBII", blob[:16])


def test_port_unreachable_reaches_a_connected_udp_socket_on_either_worker(tapd2):
    """The kernel's port unreachable for a datagram from worker 1's port 47501 and from worker 0's
    47500: each socket hears it once (ConnectionRefusedError), and one with IP_RECVERR finds it in
    its error queue (ECONNREFUSED, type 3 code 3); usnetd handed the two of worker 1 over and
    worker 1's switch matched them to the flow."""
    d = tapd2
    for port in (47500, 47501):
        with _udp(socket.AF_INET, port) as s:
            _refused_once(s, (d.host_ip, CLOSED))
    with _udp(socket.AF_INET, 47503, recverr=True) as s:
        s.connect((d.host_ip, CLOSED))
        s.send(b"anyone?")
        ee = _ee(s, socket.IPPROTO_IP, IP_RECVERR)
        assert ee[:4] == (errno.ECONNREFUSED, 2, 3, 3), ee  # SO_EE_ORIGIN_ICMP, port unreachable
    usnetd, worker1 = _counts(d.path)
    assert usnetd.get("rx_handed_over") == 2 and usnetd.get("rx_icmp_error") == 1, usnetd
    assert worker1.get("rx_icmp_error") == 2, worker1
    assert "rx_icmp_unmatched" not in usnetd, usnetd


def test_a_tcp_connect_from_worker_1_hears_host_unreachable_at_once(tapd2):
    """A SYN from worker 1's port to a network the kernel routes as unreachable (forwarding on, in
    the test's namespace): the kernel answers host unreachable and the connect fails with
    EHOSTUNREACH well before its timeout, as a Linux connect in SYN-SENT does (tcp_v4_err)."""
    from usnet import socket as us

    subprocess.run(["ip", "route", "add", "unreachable", "10.251.0.0/24"], check=True)
    _sysctl("ipv4/ip_forward", "1")
    s = us.socket(us.AF_INET, us.SOCK_STREAM)
    try:
        s.bind(("0.0.0.0", 47511))
        s.settimeout(LIMIT)
        with pytest.raises(OSError) as e:
            s.connect(("10.251.0.1", 80))
        assert e.value.errno == errno.EHOSTUNREACH, e.value
    finally:
        s.close()
    _usnetd, worker1 = _counts(tapd2.path)
    assert worker1.get("rx_icmp_error") == 1, worker1


def test_icmpv6_port_unreachable_and_packet_too_big_reach_worker_1(tapd2v6):
    """ICMPv6 the same way: port unreachable to a connected socket on worker 1's port; then a
    1400-byte datagram to a network the kernel routes with a locked MTU of 1280 (forwarding on):
    its packet too big is in the socket's IPV6_RECVERR queue as EMSGSIZE with the MTU, as on Linux."""
    from pyroute2 import IPRoute

    from usnet.drivers.hostnet import add_address6

    d = tapd2v6
    idx = socket.if_nametoindex(d.ifname)
    with IPRoute() as ipr:
        add_address6(ipr, idx, d.host_ip6, 64)
    with IPRoute() as ipr:  # somewhere for the kernel to forward to (removed with the namespace)
        ipr.link("add", ifname="pmtu0", kind="veth", peer="pmtu1")
        for name in ("pmtu0", "pmtu1"):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
    subprocess.run(["ip", "-6", "route", "add", "fd77::/64", "dev", "pmtu0", "mtu", "lock", "1280"], check=True)
    _sysctl("ipv6/conf/all/forwarding", "1")
    with _udp(socket.AF_INET6, 47521) as s:
        _refused_once(s, (d.host_ip6, CLOSED))
    with _udp(socket.AF_INET6, 47523, recverr=True) as s:
        s.connect(("fd77::1", 5000))
        s.send(b"x" * 1400)
        ee = _ee(s, socket.IPPROTO_IPV6, IPV6_RECVERR)
        assert ee[:4] == (errno.EMSGSIZE, 3, 2, 0) and ee[5] == 1280, ee  # SO_EE_ORIGIN_ICMP6, type 2
    usnetd, worker1 = _counts(d.path)
    assert usnetd.get("rx_handed_over") == 2 and "rx_icmp_unmatched" not in usnetd, usnetd
    assert worker1.get("rx_icmp_error") == 2, worker1
