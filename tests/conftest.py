"""Shared fixtures. Privileged tests (root, TAP, netns) fail rather than skip under CI=true.

Every privileged test runs inside a network namespace of its own (the `netns` fixture): the
devices it makes, their addresses, the kernel sockets and the programs it starts as peers live
there, and go with it. The session checks that the host's own namespace gained no link and no
address meanwhile (`_host_namespace_untouched`). Helpers that are not fixtures are in tests/helpers/.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.util import fresh_subnet, require_privileges, tap_name


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged"):
        require_privileges()


# -- network namespaces: device traffic never touches the host's ----------------------------------------


@pytest.fixture
def netns():
    """A fresh network namespace (usnet.drivers.hostnet.NetNs, loopback up) that the test runs in:
    the test's thread enters it for the test and comes back after, and the namespace is removed
    with everything left in it. Privileged tests get it without asking (`_privileged_in_netns`)."""
    require_privileges("root and network namespaces")
    from usnet.drivers.hostnet import NetNs

    with NetNs() as ns, ns.entered():
        yield ns


@pytest.fixture(autouse=True)
def _privileged_in_netns(request):
    """A test marked privileged runs in its own namespace (see `netns`), set up before its other fixtures."""
    if request.node.get_closest_marker("privileged") is None:
        yield None
    else:
        yield request.getfixturevalue("netns")


def _host_view(fd: int) -> set[tuple[str, ...]]:
    """The links and addresses of the namespace open at `fd`, seen from a thread inside it."""
    from pyroute2 import IPRoute

    from usnet.drivers.hostnet import setns

    out: set[tuple[str, ...]] = set()

    def look() -> None:
        setns(fd)
        with IPRoute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            out.update(("link", n) for n in names.values())
            out.update(("addr", names.get(a["index"], "?"), f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
                       for a in ipr.get_addr())

    t = threading.Thread(target=look)
    t.start()
    t.join()
    return out


@pytest.fixture(scope="session", autouse=True)
def _host_namespace_untouched():
    """After the session the host's namespace has no link and no address it did not have before.

    Another program on the machine may be adding and removing devices of its own meanwhile, so a
    difference must last two seconds before it counts."""
    if os.geteuid() != 0:
        yield
        return
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        before = _host_view(fd)
        yield
        deadline = time.monotonic() + 2.0
        while (new := _host_view(fd) - before) and time.monotonic() < deadline:
            time.sleep(0.1)  # polling the host's namespace, which has no event to wait for here
        assert not new, f"the tests left links or addresses in the host's namespace: {sorted(new)}"
    finally:
        os.close(fd)


@pytest.fixture
def sockdir():
    """A fresh directory for AF_UNIX sockets, short enough for them (sun_path stops at 108 bytes)."""
    d = tempfile.mkdtemp(prefix="usn", dir="/tmp")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- TAP devices for the privileged tests (each in the test's own namespace) ---------------------------


@contextlib.contextmanager
def _domain_on_tap(ipv6: bool, offload: bool = True, wrap=None, **netif_kw):
    """An in-process Domain on a fresh TAP in the test's namespace, the host side made through pyroute2.

    `offload`: the TAP's checksum and segmentation offload (the default), or plain frames.
    `wrap`: called with the TapDriver, returns the driver the netif gets (a FaultInjector, say).
    `netif_kw`: more for `Domain.add_netif` (a link_rate, say).

    The host is 10.x.0.1/24 (and fd00:x::1/64 with `ipv6`), usnet .2 / ::2.
    The host's IPv6 address is added with IFA_F_NODAD, so the kernel uses it
    at once instead of after duplicate address detection. Yields (domain,
    ifname, x); the device goes with the domain.
    """
    from pyroute2 import IPRoute

    from usnet.domain.loop import Domain
    from usnet.drivers.hostnet import add_address6, delete_links, link_exists
    from usnet.drivers.tap import TapDriver

    x = fresh_subnet()
    ifname = tap_name()
    drv = TapDriver(ifname, offload=offload)  # creates the device; it lives as long as the fd
    d = Domain()
    v6 = {"address6": f"fd00:{x}::2/64", "gateway6": f"fd00:{x}::1"} if ipv6 else {}
    try:
        with IPRoute() as ipr:
            (idx,) = ipr.link_lookup(ifname=ifname)
            ipr.link("set", index=idx, state="up")
            ipr.addr("add", index=idx, address=f"10.{x}.0.1", prefixlen=24)
            if ipv6:
                add_address6(ipr, idx, f"fd00:{x}::1", 64)
        d.add_netif(ifname, wrap(drv) if wrap else drv, f"10.{x}.0.2/24", gateway=f"10.{x}.0.1", **v6, **netif_kw)
        d.start()
        yield d, ifname, x
    finally:
        d.stop()  # closes the TAP: the kernel removes the device
        if link_exists(ifname):
            drv.close()
            delete_links([ifname])


@pytest.fixture
def tap_domain(request, netns):
    """(domain, ifname, usnet_ip, host_ip) on a fresh TAP: see _domain_on_tap.

    Parametrize it indirectly with False for a TAP without offload (plain frames).
    """
    with _domain_on_tap(ipv6=False, offload=getattr(request, "param", True)) as (d, ifname, x):
        yield d, ifname, f"10.{x}.0.2", f"10.{x}.0.1"


@pytest.fixture
def tap_domain_paced(netns):
    """As tap_domain, the netif paced to 100 Mbit/s with 20 % of its slots for the LL class."""
    with _domain_on_tap(ipv6=False, link_rate=100e6, ll_share=0.2) as (d, ifname, x):
        yield d, ifname, f"10.{x}.0.2", f"10.{x}.0.1"


@pytest.fixture
def tap_domain6(request, netns):
    """(domain, ifname, usnet_ip6, host_ip6) on a fresh TAP with IPv4 and IPv6: see _domain_on_tap.

    Parametrize it indirectly with False for a TAP without offload, as tap_domain.
    """
    with _domain_on_tap(ipv6=True, offload=getattr(request, "param", True)) as (d, ifname, x):
        yield d, ifname, f"fd00:{x}::2", f"fd00:{x}::1"


# -- TLS: a throwaway CA per test module (trustme) ---------------------------------------------------


@pytest.fixture(scope="module")
def ca():
    import trustme

    return trustme.CA()


