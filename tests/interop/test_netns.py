"""`usnet up --netns NAME` and the namespace helper behind it (usnet.drivers.hostnet.NetNs).

The host end of the device (the TAP's link, the veth's other end) and its address must be in
NAME and nowhere else; the kernel there is the peer (`ip netns exec NAME ping`); `usnet down`
removes what up made, the namespace too when up made it, and leaves one it did not make.
The test itself runs in a namespace of its own (the `netns` fixture), which stands for the
host's: nothing of the device's host end may show there.
"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from tests.helpers.util import tap_name
from usnet.drivers.hostnet import NetNs, link_exists, netns_exists

pytestmark = pytest.mark.privileged


def _addresses(ns: NetNs) -> set[str]:
    from pyroute2 import IPRoute

    def look() -> set[str]:
        with IPRoute() as ipr:
            return {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET)}

    return ns.call(look)


@pytest.mark.parametrize("driver", ["tap", "packet", "xdp"])
def test_up_with_netns_puts_the_host_end_there_and_down_removes_it(driver, sockdir):
    from usnet.domain import launch as updown

    name, ifname = f"usnt{os.getpid() % 100000}{driver[0]}", tap_name()
    assert not netns_exists(name)
    try:  # up() inside: whatever it started is stopped, however the test ends
        assert updown.up(driver, ifname, "10.66.0.2/24", "10.66.0.1/24", run_dir=str(sockdir), netns=name) == 0
        ns = NetNs(name)
        host_if = ifname if driver == "tap" else f"{ifname}h"
        assert not link_exists(host_if)  # not here: in the namespace
        assert ns.call(lambda: link_exists(host_if))
        assert "10.66.0.1" in _addresses(ns)
        ping = subprocess.run(ns.exec_argv(["ping", "-c", "2", "-W", "2", "-i", "0.2", "10.66.0.2"]),
                              capture_output=True, text=True, timeout=30)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        assert not updown.is_up(str(sockdir)) or updown.down(str(sockdir)) == 0
    assert not netns_exists(name)  # up made it, down removed it
    assert not link_exists(ifname)


def test_down_leaves_a_namespace_it_did_not_make(sockdir):
    from usnet.domain import launch as updown

    with NetNs() as mine:
        ifname = tap_name()
        try:
            assert updown.up("tap", ifname, "10.67.0.2/24", "10.67.0.1/24", run_dir=str(sockdir),
                             netns=mine.name) == 0
        finally:
            assert not updown.is_up(str(sockdir)) or updown.down(str(sockdir)) == 0
        assert netns_exists(mine.name)
        assert not mine.call(lambda: link_exists(ifname))  # the TAP went all the same
    assert not netns_exists(mine.name)


def test_entered_and_call_come_back_to_where_they_were():
    here = os.readlink("/proc/thread-self/ns/net")
    with NetNs() as ns:
        with ns.entered():
            inside = os.readlink("/proc/thread-self/ns/net")
            assert inside != here
        assert os.readlink("/proc/thread-self/ns/net") == here
        assert ns.call(lambda: os.readlink("/proc/thread-self/ns/net")) == inside
        assert os.readlink("/proc/thread-self/ns/net") == here
        assert ns.call(lambda: link_exists("lo"))
