"""A local error on the UDP error queue (SO_EE_ORIGIN_LOCAL), usnet's and the kernel's side by side.

With IP_MTU_DISCOVER set to IP_PMTUDISC_DO, Linux does not fragment a datagram over the path
MTU: send is EMSGSIZE (__ip_append_data), and with IP_RECVERR ip_local_error also queues a report
of it: errno EMSGSIZE, origin LOCAL, the MTU as info, no payload, no offender (zeros), the
destination as the address with the connected port (0 unconnected). It is not the socket's error
(SO_ERROR stays 0), but the socket polls POLLERR (select: readable) while it is queued. The same
walk runs on a kernel socket sending over the TAP to usnet's address and on a usnet one sending to
the kernel's; neither datagram leaves.
"""

from __future__ import annotations

import errno
import select
import socket

import pytest

from tests.helpers.util import outcome
from usnet import socket as us
from usnet.client import Client

pytestmark = pytest.mark.privileged
IP_MTU_DISCOVER, IP_RECVERR, IP_PMTUDISC_DO = 10, 11, 2


def _walk(s, dest: tuple[str, int], mtu: int) -> list:
    big = b"x" * (mtu - 28 + 1)  # one byte over what fits in one packet

    def errq():  # a report, the address each names (its own destination) as "dest"
        r = outcome(lambda: s.recvmsg(100, 1024, socket.MSG_ERRQUEUE))
        return r if isinstance(r, str) else (*r[:3], ("dest" if r[3][0] == dest[0] else r[3][0], r[3][1]))

    got = [("default", s.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER)),
           ("bad", outcome(lambda: s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, 6)),
            outcome(lambda: s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, -1)))]
    s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
    got.append(("do", s.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER), outcome(lambda: s.sendto(big, dest)), errq(),
                select.select([s], [], [], 0)[0] == []))  # without IP_RECVERR: nothing queued
    s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    got.append(("recverr", outcome(lambda: s.sendto(big, dest)), select.select([s], [], [], 0)[0] == [s],
                s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), errq(), errq(),
                select.select([s], [], [], 0)[0] == []))
    s.connect(dest)
    got.append(("connected", outcome(lambda: s.send(big)), outcome(lambda: s.send(big)), errq(), errq(), errq()))
    return got


def test_a_datagram_over_the_mtu_with_pmtudisc_do_is_emsgsize_and_a_local_error_as_linux(tap_domain):
    d, ifname, usnet_ip, host_ip = tap_domain
    client = Client.local(d)
    mtu = d.switches[ifname].netif.mtu
    k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u = us.socket(socket.AF_INET, socket.SOCK_DGRAM, client=client, netif=ifname)
    try:
        kernel, usnet = _walk(k, (usnet_ip, 9), mtu), _walk(u, (host_ip, 9), mtu)
    finally:
        k.close()
        u.close()
    assert usnet == kernel
    report = kernel[3][4]
    assert report[0] == b"" and report[2] == socket.MSG_ERRQUEUE and report[3] == ("dest", 0)
    assert kernel[4][3][3] == ("dest", 9)  # connected: its port
    level, kind, blob = report[1][0]
    assert (level, kind) == (socket.IPPROTO_IP, IP_RECVERR)
    assert blob == errno.EMSGSIZE.to_bytes(4, "little") + bytes([1, 0, 0, 0]) + mtu.to_bytes(4, "little") + bytes(20)
