"""The port namespace: local ports per protocol, shared with the host's own stack.

A port taken by usnet on an address the host also owns is reserved in the host
kernel too, by binding a real socket to it, so that neither stack hands out
the other's port. On an address only usnet owns (the far side of a TAP) the
host is not involved.

IPv4 and IPv6 have separate namespaces, as in the kernel with IPV6_V6ONLY:
a server may listen on the same port in both families (two flows).

A port is one namespace for the whole domain, every netif; a listener bound
to the wildcard address holds its port on a second netif (the loopback one)
as a second flow that shares the first one's reservation (`reserve`'s
`share`): the port is free again when the last of them releases it.

SO_REUSEPORT (`reserve`'s `reuse`): a port may be held by several flows that
all asked for it, of one uid, as on Linux (a bind without it, or by another
uid, is EADDRINUSE); each joins the first one's reservation as a sharer does.
Which member a packet goes to is the flow table's (usnet.domain.switch.reuseport).
"""

from __future__ import annotations

import errno
import ipaddress
import random
import socket
from collections.abc import Callable

__all__ = ["EPHEMERAL", "PROTO_NAMES", "PortInUse", "PortSpace", "host_owns"]

EPHEMERAL = range(49152, 65536)
PROTO_NAMES = {6: "tcp", 17: "udp"}
_SOCK_TYPE = {6: socket.SOCK_STREAM, 17: socket.SOCK_DGRAM}
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}


class PortInUse(OSError):
    def __init__(self, proto: int, port: int, why: str = "") -> None:
        super().__init__(errno.EADDRINUSE, f"address in use: {PROTO_NAMES.get(proto, proto)} port {port}{why}")


class PortSpace:
    def __init__(self, seed: int | None = None) -> None:
        self.used: dict[tuple[int, int, int], object] = {}  # (family, proto, port) -> owner
        self.sharers: dict[tuple[int, int, int], int] = {}  # further holders of a shared port
        self.reuse: dict[tuple[int, int, int], int] = {}  # SO_REUSEPORT ports: the uid of their holders
        self.host_sockets: dict[tuple[int, int, int], socket.socket] = {}
        self.rng = random.Random(seed)

    def reserve(self, proto: int, port: int, owner: object, host_addr: str | None = None,
                family: int = 4, share: object = None, reuse: int | None = None,
                only: Callable[[int], bool] | None = None) -> int:
        """Take `port` (0: an ephemeral one) of `family` (4 or 6) for `owner`; PortInUse if anyone has it.

        `host_addr`: the local address when the host owns it too; the port is
        then also bound in the host kernel for as long as usnet holds it.
        `share`: the owner already holding `port`, whose reservation this one
        joins (EINVAL if it does not hold it).
        `reuse`: SO_REUSEPORT, the uid asking: a port held by flows that all asked for it, of
        that uid, is joined as a shared one (Linux's rule); any other holder is EADDRINUSE.
        `only`: an ephemeral port is one of those it accepts (a worker's share, usnet.domain.workers).
        """
        if proto not in _SOCK_TYPE:
            raise OSError(errno.EPROTONOSUPPORT, f"protocol {proto} has no ports")
        if family not in _AF:
            raise OSError(errno.EAFNOSUPPORT, f"address family IPv{family}")
        if share is not None:
            key = (family, proto, port)
            if port == 0 or self.used.get(key) != share:
                raise OSError(errno.EINVAL, f"port {port} is not held by the flow whose port is to be shared")
            self.sharers[key] = self.sharers.get(key, 0) + 1
            return port
        if port == 0:
            port = self._ephemeral(family, proto, owner, host_addr, only)
            if reuse is not None:
                self.reuse[family, proto, port] = reuse
            return port
        if not 1 <= port <= 65535:
            raise OSError(errno.EINVAL, f"port {port} out of range")
        key = (family, proto, port)
        if key in self.used:
            held = self.reuse.get(key)
            if reuse is not None and held == reuse:  # SO_REUSEPORT, the same uid: one more member
                self.sharers[key] = self.sharers.get(key, 0) + 1
                return port
            raise PortInUse(proto, port, "" if held is None or reuse is None else
                            " (its SO_REUSEPORT sockets are another user's)")
        if host_addr is not None:
            self._bind_host(family, proto, port, host_addr)
        self.used[key] = owner
        if reuse is not None:
            self.reuse[key] = reuse
        return port

    def reserve_some(self, proto: int, count: int, owner: object, host_addr: str | None = None, family: int = 4,
                     only: Callable[[int], bool] | None = None) -> list[int]:
        """Up to `count` ephemeral ports for `owner` (a connector's block), fewer if the range runs
        out; EADDRNOTAVAIL if none is left. `host_addr`, `only`: as `reserve`'s."""
        got: list[int] = []
        for _ in range(count):
            try:
                got.append(self.reserve(proto, 0, owner, host_addr, family=family, only=only))
            except OSError:
                if got:
                    break
                raise
        return got

    def _ephemeral(self, family: int, proto: int, owner: object, host_addr: str | None,
                   only: Callable[[int], bool] | None = None) -> int:
        start = self.rng.randrange(len(EPHEMERAL))
        for i in range(len(EPHEMERAL)):
            port = EPHEMERAL[(start + i) % len(EPHEMERAL)]
            if (family, proto, port) in self.used or (only is not None and not only(port)):
                continue
            try:
                if host_addr is not None:
                    self._bind_host(family, proto, port, host_addr)
            except PortInUse:
                continue
            self.used[family, proto, port] = owner
            return port
        raise OSError(errno.EADDRNOTAVAIL, "no ephemeral port left")

    def _bind_host(self, family: int, proto: int, port: int, addr: str) -> None:
        s = socket.socket(_AF[family], _SOCK_TYPE[proto])
        try:
            s.bind((addr, port))
        except OSError as e:
            s.close()
            if e.errno == errno.EADDRINUSE:
                raise PortInUse(proto, port, " (the host's stack has it)") from None
            raise
        self.host_sockets[family, proto, port] = s

    def release(self, proto: int, port: int, family: int = 4) -> None:
        key = (family, proto, port)
        n = self.sharers.get(key, 0)
        if n:  # one of a shared port's holders: the others keep it
            if n == 1:
                del self.sharers[key]
            else:
                self.sharers[key] = n - 1
            return
        self.used.pop(key, None)
        self.reuse.pop(key, None)
        s = self.host_sockets.pop((family, proto, port), None)
        if s is not None:
            s.close()

    def owner(self, proto: int, port: int, family: int = 4) -> object | None:
        return self.used.get((family, proto, port))


def host_owns(addr: str) -> bool:
    """True if the host kernel has `addr` (IPv4 or IPv6) on one of its interfaces."""
    af = socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
    s = socket.socket(af, socket.SOCK_DGRAM)
    try:
        s.bind((addr, 0))
        return True
    except OSError:
        return False
    finally:
        s.close()
