"""The host's side of usnet's devices, through netlink (pyroute2).

Why one module: `usnet up/down`, the TAP benchmark and the privileged tests
all need to remove the links they made and to keep a device's host end in a
network namespace of its own (`NetNs`), where any subnet is free; each had
its own copy.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["NETNS_DIR", "NetNs", "add_address6", "delete_links", "link_exists", "netns_exists", "setns"]

T = TypeVar("T")


def link_exists(ifname: str) -> bool:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def delete_links(names: list[str]) -> None:
    """Remove these links if they exist (a veth goes with its peer)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for name in names:
            for idx in ipr.link_lookup(ifname=name):
                ipr.link("del", index=idx)


RTN_LOCAL = 2  # a route's type: the address is the host's own (include/uapi/linux/rtnetlink.h)


def add_address6(ipr: Any, index: int, address: str, prefixlen: int, timeout: float = 5.0) -> None:
    """Give link `index` (up) the IPv6 `address` without duplicate address detection, and return
    once the kernel routes it as its own.

    Why wait: the netlink ack comes before the address is the host's. Even with IFA_F_NODAD the
    kernel inserts its local route from a work queue (addrconf's DAD work, which completes at once
    for such an address), so for a while after the add a datagram to the address is routed out the
    link, to a neighbour that never answers, and one from the link to it is not delivered: lost, as
    the intermittent IPv6 failures under load showed (a datagram to the host's own address gone).
    `ipr` is an IPRoute or a NetNS of pyroute2's; OSError if the route is not there in `timeout`.
    """
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

    def local() -> bool:
        try:
            return bool(ipr.route("get", dst=address)[0]["type"] == RTN_LOCAL)
        except NetlinkError:  # no route at all yet (ENETUNREACH)
            return False

    ipr.addr("add", index=index, address=address, prefixlen=prefixlen, flags=IFA_F_NODAD)
    deadline = time.monotonic() + timeout
    while not local():
        if time.monotonic() > deadline:
            raise OSError(f"the kernel did not take {address} as its own within {timeout:g} s")
        time.sleep(0.001)  # the work queue runs within microseconds on a quiet machine


# -- network namespaces: where a device's host end and its kernel peer live ---------------------------

CLONE_NEWNET = 0x40000000
_ns_seq = itertools.count()


def setns(fd: int) -> None:
    """The calling thread joins the network namespace open at `fd` (setns(2): per thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


NETNS_DIR = "/run/netns"


class NetNs:
    """A named network namespace (as `ip netns` names them) for a device's host end and its kernel peer.

    Why: a TAP or veth whose host end, addresses and routes live in the host's own namespace
    changes the machine for everyone; in a namespace of its own the traffic stays between usnet
    and the peers started there (docs/architecture.md, "Devices and namespaces"). The device's usnet end (the
    TAP's file descriptor, the veth's AF_PACKET socket) may stay where usnetd runs: a TAP keeps
    working through its descriptor after its link moves.

    `name` None makes a fresh, unique one; an existing name is used as it is (and `close` leaves
    it), a new one is created with its loopback up (and `close` removes it, with what is in it).
    """

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"usn{os.getpid() % 100000}x{next(_ns_seq)}"
        self.path = os.path.join(NETNS_DIR, self.name)
        self.owned = not netns_exists(self.name)
        if self.owned:
            from pyroute2 import netns

            netns.create(self.name)
            try:
                with self.entered():
                    _set_up("lo")
            except BaseException:
                self.close()
                raise

    @contextlib.contextmanager
    def entered(self) -> Iterator[NetNs]:
        """The calling thread in this namespace for the block: sockets, devices, threads and
        processes it makes meanwhile belong to the namespace; afterwards it is back where it was."""
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            self.enter()
            try:
                yield self
            finally:
                setns(back)
        finally:
            os.close(back)

    def enter(self) -> None:
        """The calling thread joins the namespace for good (a forked child, say)."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            setns(fd)
        finally:
            os.close(fd)

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()` run in a thread inside the namespace: a socket it opens stays in the namespace
        while the caller, who stays outside, uses it."""
        out: dict[str, Any] = {}

        def run() -> None:
            try:
                self.enter()
                out["r"] = fn()
            except BaseException as e:  # handed to the caller
                out["e"] = e

        t = threading.Thread(target=run, name=f"netns-{self.name}")
        t.start()
        t.join()
        if "e" in out:
            raise out["e"]
        return out["r"]

    def exec_argv(self, argv: list[str]) -> list[str]:
        """`argv` as a command run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def take(self, ifname: str) -> None:
        """Move link `ifname` from the caller's namespace into this one (it arrives down, without addresses)."""
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            (idx,) = ipr.link_lookup(ifname=ifname)
            ipr.link("set", index=idx, net_ns_fd=self.name)

    def close(self) -> None:
        """Remove the namespace if this object made it: its virtual links go with it."""
        if self.owned and netns_exists(self.name):
            from pyroute2 import netns

            netns.remove(self.name)

    def __enter__(self) -> NetNs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _set_up(ifname: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        (idx,) = ipr.link_lookup(ifname=ifname)
        ipr.link("set", index=idx, state="up")
