"""Shared fixtures. Privileged tests (root, TAP, netns) fail rather than skip under CI=true."""

from __future__ import annotations

import itertools
import os

import pytest


def require_privileges(what: str = "root and /dev/net/tun") -> None:
    """Skip where the machine cannot give us devices; under CI a missing device is a failure."""
    ok = os.geteuid() == 0 and os.path.exists("/dev/net/tun")
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"privileged test cannot get {what} under CI")
    pytest.skip(f"needs {what}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged"):
        require_privileges()


# -- TAP devices for the privileged tests -----------------------------------------------------------

_seq = itertools.count()


def tap_name() -> str:
    """A device name unique to this test process."""
    name = f"ust{os.getpid() % 100000}x{next(_seq)}"
    assert len(name) <= 15
    return name


def free_subnet_or_fail() -> int:
    """x of a 10.x.0.0/24 nothing on the host uses (spread over the range by pid)."""
    from usnet.hostnet import free_subnet

    try:
        return free_subnet(start=os.getpid() * 7 + next(_seq) * 13)
    except OSError as e:
        pytest.fail(str(e))


@pytest.fixture
def tap_domain():
    """An in-process Domain on a fresh TAP; the host side (10.x.0.1/24) made through pyroute2.

    Yields (domain, ifname, usnet_ip, host_ip); the device goes with the domain.
    """
    from pyroute2 import IPRoute

    from usnet.drivers.tap import TapDriver
    from usnet.hostnet import delete_links, link_exists
    from usnet.nexus.domain import Domain

    x = free_subnet_or_fail()
    ifname = tap_name()
    drv = TapDriver(ifname)  # creates the device; it lives as long as the fd
    d = Domain()
    try:
        with IPRoute() as ipr:
            (idx,) = ipr.link_lookup(ifname=ifname)
            ipr.link("set", index=idx, state="up")
            ipr.addr("add", index=idx, address=f"10.{x}.0.1", prefixlen=24)
        d.add_netif(ifname, drv, f"10.{x}.0.2/24", gateway=f"10.{x}.0.1")
        d.start()
        yield d, ifname, f"10.{x}.0.2", f"10.{x}.0.1"
    finally:
        d.stop()  # closes the TAP: the kernel removes the device
        if link_exists(ifname):
            drv.close()
            delete_links([ifname])


@pytest.fixture
def tap_domain6():
    """As tap_domain, with IPv6 too: the host at fd00:x::1/64, usnet at fd00:x::2/64 (and 10.x.0.1/.2).

    The host's address is added with IFA_F_NODAD, so the kernel uses it at
    once instead of after duplicate address detection. Yields (domain,
    ifname, usnet_ip6, host_ip6).
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

    from usnet.drivers.tap import TapDriver
    from usnet.hostnet import delete_links, link_exists
    from usnet.nexus.domain import Domain

    x = free_subnet_or_fail()
    ifname = tap_name()
    drv = TapDriver(ifname)
    d = Domain()
    try:
        with IPRoute() as ipr:
            (idx,) = ipr.link_lookup(ifname=ifname)
            ipr.link("set", index=idx, state="up")
            ipr.addr("add", index=idx, address=f"10.{x}.0.1", prefixlen=24)
            ipr.addr("add", index=idx, address=f"fd00:{x}::1", prefixlen=64, flags=IFA_F_NODAD)
        d.add_netif(ifname, drv, f"10.{x}.0.2/24", gateway=f"10.{x}.0.1",
                    address6=f"fd00:{x}::2/64", gateway6=f"fd00:{x}::1")
        d.start()
        yield d, ifname, f"fd00:{x}::2", f"fd00:{x}::1"
    finally:
        d.stop()
        if link_exists(ifname):
            drv.close()
            delete_links([ifname])
