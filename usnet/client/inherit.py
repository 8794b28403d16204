"""fork() and usnet sockets: the hooks that share them with a child, and the child's face of one.

How an inherited socket is served is usnet.client.forked's docstring. Here: which sockets a
fork shares (`_before`: every open socket of this process that is a TCP connection or listener
or a UDP socket with a flow, from the registry usnet.client.socket keeps, `open_sockets`), the
parent's agent for the child (`_after_in_parent`), and in the child (`_after_in_child`) each of
those socket objects turned into an `Inherited` (TCP) or `InheritedDatagram` (UDP) one: the same
object the program holds, whose calls go to the parent's stack from its first use on. A
listener accepts (blocking, timed or not at all) and can be polled; any other call of a listener,
and every call of a TCP socket that was only bound, fails with EBADF that names the parent (the
stack is the parent's).
"""

from __future__ import annotations

import errno
import os
import socket as _std
from multiprocessing import reduction as _mp
from typing import Any

from usnet.client import forked
from usnet.client import socket as us
from usnet.client.dgram import DatagramFace

__all__ = ["Inherited", "InheritedDatagram"]

_close = os.close  # the kernel's, taken before usnet.patch() may replace os.close (usnet.client.descriptors)

_pending: dict[str, Any] = {}  # between the before-fork hook and the after-fork ones


def _before() -> None:
    """In the parent, before fork(): a reference of each shared socket, and the link."""
    _pending.clear()
    socks = [s for s in list(us.open_sockets) if _served(s)]
    if not socks or len(socks) > forked.SHARE_LIMIT:
        return
    shares: dict[int, Any] = {}
    for s in socks:
        try:
            shares[id(s)] = s.reference()  # no descriptor: a fork must not use up the process's
        except OSError:
            continue  # failed meanwhile: the child finds nothing to claim, as for a closed one
    if not shares:
        return
    parent_end, child_end = _std.socketpair(_std.AF_UNIX, _std.SOCK_SEQPACKET)
    _pending.update(shares=shares, parent=parent_end, child=child_end, socks=socks)


def _after_in_parent() -> None:
    if not _pending:
        return
    _pending["child"].close()
    forked.Agent(_pending["parent"], _pending["shares"])
    _pending.clear()


def _after_in_child() -> None:
    """The shared socket objects become `Inherited`; every other inherited one stays failed."""
    us.open_sockets.clear()  # the parent's; this process's own sockets register from now on
    if not _pending:
        return
    _pending["parent"].close()
    link = _pending["child"]
    for s in _pending["socks"]:
        if id(s) in _pending["shares"] and not s._dead:
            s.__class__ = InheritedDatagram if s.type == _std.SOCK_DGRAM else Inherited
            s._link, s._token, s._k, s._lfd = link, id(s), None, None
    _pending.clear()  # the parent's references (`reference`: no descriptor of their own) are not ours


os.register_at_fork(before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child)


def _served(s: Any) -> bool:
    """Whether another process can be given `s`: it has a flow (bound, listening, connected)."""
    return not s._dead and (s._engine is not None or s._conn is not None)


def _reduce(s: Any) -> tuple:
    """multiprocessing hands socket `s` to another process (a spawned worker's argument, a queue):
    the same service as for a fork's child, on a link of its own. The other end of the link goes
    over multiprocessing's own descriptor passing (its resource sharer keeps a copy until the
    other process takes it); the agent holds a reference of `s` until that process lets go of it
    or exits."""
    if not _served(s):
        raise TypeError(f"cannot pickle {type(s).__name__!r} object (a usnet socket with no flow)")
    from multiprocessing import resource_sharer

    ref = s.reference()
    parent_end, child_end = _std.socketpair(_std.AF_UNIX, _std.SOCK_SEQPACKET)
    try:
        df = resource_sharer.DupFd(child_end.fileno())
    finally:
        child_end.close()
    forked.Agent(parent_end, {id(s): ref})
    return _rebuild, (df, id(s), int(s.family), int(s.type), s.proto, s._timeout, s._listening,
                      s._port, list(s.getsockname()))


def _rebuild(df: Any, token: int, family: int, kind: int, proto: int, timeout: float | None,
             listening: bool, port: int, sockname: list) -> Any:
    """In the other process: the socket, served by the process that sent it (`_reduce`)."""
    link = _std.socket(fileno=df.detach())
    s: Any
    if kind == _std.SOCK_DGRAM:
        s = object.__new__(InheritedDatagram)
        DatagramFace.__init__(s, family, kind, proto)
    else:
        s = object.__new__(Inherited)
        us.socket.__init__(s, family, kind, proto)
    s._timeout, s._listening, s._port, s._sockname = timeout, listening, port, tuple(sockname)
    s._link, s._token, s._k, s._lfd = link, token, None, None
    return s


def _release(s: Any) -> None:
    """The child is done with inherited socket `s` (not spliced): its readiness descriptor closes
    and the parent lets go of the child's reference."""
    if s._lfd is not None:
        _close(s._lfd)
        s._lfd = None
    try:
        forked.ask(s._link, "release", s._token)
    except OSError:
        pass  # the parent is gone: so is its reference


def _parents() -> OSError:
    return OSError(errno.EBADF, f"usnet: this listening socket belongs to the process that made it (pid "
                                f"{os.getppid()}); a child of fork() can accept() on it and poll it, "
                                "not use it otherwise")


class Inherited(us.socket):
    """A TCP socket this process inherited at fork(), served by the parent's stack
    (usnet.client.forked): a connection through a spliced kernel socket, claimed at first use;
    a listener through the parent's agent, a connection per accept()."""

    _link: _std.socket
    _token: int
    _k: Any  # None: not claimed yet; False: a listener; a forked.SplicedSocket: the connection
    _lfd: int | None  # a listener's: its readiness, a descriptor the parent's stack keeps
    _sockname: tuple = ()  # a socket multiprocessing sent (`_rebuild`): its name, as it came
    inherited = True  # served by another process's stack: usnet.aio serves it as asyncio serves a kernel socket

    def _claim(self) -> None:
        """Ask the parent for what this socket is here, once: its connection spliced, or for a
        listener a descriptor of its readiness (the parent's stack keeps it: readable while a
        connection waits, as a kernel listener's is; several children may race for it)."""
        if self._dead:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if self._k is None:
            ans, fd = forked.ask(self._link, "claim", self._token)
            if ans.kind == "listener":
                self._k, self._lfd = False, fd
            else:
                self._k = forked.SplicedSocket(fileno=fd, names=ans, link=self._link)
                self._k.settimeout(self._timeout)

    def _claimed(self) -> forked.SplicedSocket:
        self._claim()
        if self._k is False:
            raise _parents()
        spliced: forked.SplicedSocket = self._k
        return spliced

    def fileno(self) -> int:
        """The connection's spliced socket; for a listener, the parent's readiness of it."""
        if self._dead:
            return -1
        self._claim()
        if self._k is False:
            if self._lfd is None:
                raise _parents()
            return self._lfd
        return self._k.fileno()

    def accept(self) -> tuple[Any, tuple]:
        if self._dead:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if not self._listening:
            return self._claimed().accept()  # (raises as the kernel's)
        try:
            ans, fd = forked.ask(self._link, "accept", self._token, self._timeout)
        except TimeoutError:
            if self._dead:  # closed by another thread meanwhile: CPython's poll on the kernel
                raise OSError(errno.EBADF, "Bad file descriptor") from None  # retries on descriptor -1
            raise
        k = forked.SplicedSocket(fileno=fd, names=ans, link=self._link)
        k.settimeout(_std.getdefaulttimeout())  # as accept(2): blocking, whatever the listener's mode
        return k, tuple(ans.peername)

    def settimeout(self, t: float | None) -> None:
        super().settimeout(t)  # gettimeout and getblocking read it
        if self._k:
            self._k.settimeout(t)

    def setblocking(self, flag: bool) -> None:
        self.settimeout(None if flag else 0.0)

    def getsockname(self) -> tuple:
        # the parent's engine told it at bind (it has not changed); a socket sent by
        # multiprocessing has no engine here, and its name came with it
        return self._sockname if self._engine is None else super().getsockname()

    def listen(self, backlog: int = 128) -> None:
        """A socket bound in the parent listens (the parent's, for every process that has it), and
        is a listener here from now on (uvicorn binds, then hands the socket to its workers)."""
        if self._dead:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if self._k:
            raise OSError(errno.EINVAL, "Invalid argument")  # a connection
        _, fd = forked.ask(self._link, "listen", self._token, size=max(int(backlog), 0))
        if self._lfd is not None:
            _close(self._lfd)
        self._k, self._lfd, self._listening = False, fd, True

    def close(self) -> None:
        if self._dead:
            return
        self._closed = self._dead = True
        if self._k:
            self._k.close()
        else:  # never claimed, or a listener
            _release(self)

    def detach(self) -> int:
        k = self._claimed()
        self._closed = self._dead = True
        return k.detach()

    def __repr__(self) -> str:
        return f"<usnet.socket inherited from pid {os.getppid()}, token {self._token:#x}>"


def _via_splice(name: str) -> Any:
    def call(self: Inherited, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._claimed(), name)(*args, **kwargs)
    call.__name__ = name
    call.__doc__ = f"As the standard socket's {name}, on the connection the parent's stack serves."
    return call


for _name in ("recv", "recv_into", "recvfrom", "recvfrom_into", "recvmsg", "send", "sendall", "sendto",
              "sendmsg", "sendfile", "makefile", "shutdown", "getpeername", "setsockopt",
              "getsockopt", "dup", "connect", "connect_ex", "bind"):
    setattr(Inherited, _name, _via_splice(_name))


class InheritedDatagram(DatagramFace):
    """A UDP socket this process inherited at fork(), served by the parent's stack
    (usnet.client.forked): each send and receive is the parent's agent's on the parent's socket,
    so a child competes for datagrams only while it receives, as on Linux (a forking UDP server's
    child only answers); its `fileno()` is the parent's readiness of the socket."""

    _link: _std.socket
    _token: int
    _k: Any  # None: not claimed yet; False: claimed
    _lfd: int | None  # the socket's readiness, a descriptor the parent's stack keeps
    _sockname: tuple = ()  # as Inherited's
    inherited = True

    def getsockname(self) -> tuple:
        return self._sockname if self._engine is None else super().getsockname()

    def _claim(self) -> None:
        if self._dead:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if self._k is None:
            _ans, self._lfd = forked.ask(self._link, "claim", self._token)
            self._k = False

    def fileno(self) -> int:
        if self._dead:
            return -1
        self._claim()
        if self._lfd is None:
            raise _parents()
        return self._lfd

    def sendto(self, data: Any, flags_or_address: Any, address: Any = None) -> int:
        addr = flags_or_address if address is None else address
        self._claim()
        host, port = self._resolve(addr)
        ans, _ = forked.ask(self._link, "sendto", self._token, data=bytes(data), addr=[host, port])
        return ans.count

    def send(self, data: Any, flags: int = 0) -> int:
        self._claim()
        ans, _ = forked.ask(self._link, "sendto", self._token, data=bytes(data))
        return ans.count

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, tuple]:
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        self._claim()
        timeout = 0.0 if self._no_wait(flags) else self._timeout
        ans, _ = forked.ask(self._link, "recvfrom", self._token, timeout, size=max(bufsize, 1))
        return ans.data[:bufsize], tuple(ans.peername)

    def close(self) -> None:
        if self._dead:
            return
        self._closed = self._dead = True
        _release(self)

    def __repr__(self) -> str:
        return f"<usnet.socket (UDP) inherited from pid {os.getppid()}, token {self._token:#x}>"


def _parents_only(name: str) -> Any:
    def call(self: InheritedDatagram, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EBADF, f"usnet: this UDP socket belongs to the process that made it (pid "
                                   f"{os.getppid()}); a child of fork() can send, receive and poll on "
                                   f"it, not {name}() it")
    call.__name__ = name
    return call


for _name in ("bind", "connect", "connect_ex", "shutdown", "setsockopt", "dup", "detach", "sendmsg", "recvmsg"):
    setattr(InheritedDatagram, _name, _parents_only(_name))


for _cls in (us.socket, DatagramFace):
    _mp.register(_cls, _reduce)
