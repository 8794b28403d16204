"""usnet.drivers.hostnet.add_address6: the host's IPv6 address is the host's own when it returns.

The kernel acks an address add before it routes the address locally: even with IFA_F_NODAD the
local route comes from a work queue, and until then a datagram to the address goes out the link
and is lost. That was the intermittent loss of kernel IPv6 traffic in the tests under usnetd's
workers (about one add in three, measured, was not local yet when the ack came).
"""

from __future__ import annotations

import socket

import pytest

from tests.helpers.util import tap_name
from usnet.drivers.hostnet import add_address6

pytestmark = pytest.mark.privileged
ROUNDS = 40  # adds, each on a fresh veth: without the wait one in three fails, so all 40 pass by chance ~1e-8


def _veth(ipr) -> int:
    """A fresh veth pair, both ends up: one end's index."""
    ours, theirs = tap_name(), tap_name()
    ipr.link("add", ifname=ours, kind="veth", peer=theirs)
    for name in (ours, theirs):
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
    return ipr.link_lookup(ifname=ours)[0]


def test_a_datagram_to_the_address_just_added_reaches_its_socket():
    """Each round: a fresh veth, add_address6, and at once a UDP datagram from a socket bound to the
    address to another bound to it: it arrives (before the local route it would leave by the link)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for n in range(ROUNDS):
            idx = _veth(ipr)
            address = f"fd00:77:{n}::1"
            try:
                add_address6(ipr, idx, address, 64)
                with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as rx, \
                        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as tx:
                    rx.bind((address, 0))
                    rx.settimeout(3)
                    tx.bind((address, 0))
                    tx.sendto(b"round %d" % n, rx.getsockname()[:2])
                    assert rx.recv(100) == b"round %d" % n
            finally:
                ipr.link("del", index=idx)

