"""`usnet.patch()`: an unmodified program on usnet, by replacing what it reaches through the standard library.

    import usnet; usnet.patch()         # or: usnet run -- python app.py / python -m usnet run app.py

After `patch()`:

- ``socket.socket(AF_INET or AF_INET6, SOCK_STREAM)`` is a `usnet.socket.socket`, and so is every
  socket the standard library makes through the class (`socket.create_connection`,
  `socket.create_server`, socketserver, http.client, smtplib, ...). ``SOCK_DGRAM`` too, once
  `usnet.socket` carries it. Everything else stays the kernel's: AF_UNIX, AF_NETLINK, AF_PACKET,
  raw sockets, `socket.socketpair()` (asyncio's self-pipe) and sockets built from a descriptor
  (``socket.socket(fileno=...)``, `socket.fromfd`), which are exactly what they were.
  ``isinstance(s, socket.socket)`` holds for both.
- `socket.getaddrinfo` (and `gethostbyname`, `gethostbyname_ex`, `gethostbyaddr`, `getnameinfo`,
  so `getfqdn` too, where `usnet.socket` has them) are usnet's, so names resolve over usnet, not
  the kernel's network, in both directions.
- `ssl.SSLContext.wrap_socket` of a usnet socket is `usnet.tls.wrap_socket` (OpenSSL over memory
  BIOs); of a kernel socket it is the ssl module's.
- asyncio's policy is `usnet.aio.EventLoopPolicy`: every new loop puts its TCP on usnet, and
  so does a loop made from `asyncio.SelectorEventLoop` itself (uvicorn's loop factory), which is
  `usnet.aio.EventLoop`, a subclass of it.
- trio (and anyio on trio) wrap a usnet socket in a trio socket of their own
  (`usnet.client.trioface`: trio's one constructor, `trio.socket.from_stdlib_socket`, is
  replaced, now or when the program imports trio).
- select, poll, epoll and selectors need nothing: a usnet socket's `fileno()` is a descriptor
  that shows its readiness.
- `os.read`, `os.write`, `os.sendfile` and `os.close` on a usnet socket's descriptor (or a
  detached one's) are the socket's recv, send, a send from the file, and close
  (`usnet.client.descriptors`): multiprocessing.connection and pyftpdlib use the number itself.
  A copy of those functions taken before the patch (a class attribute bound at import) is the
  kernel's; `usnet run` patches before the program imports anything.
- gevent and eventlet are refused (`usnet.client.greenrefuse`): their sockets are the kernel's,
  so `patch()` raises if one is imported already, and importing one afterwards raises ImportError,
  each with one line that says why.

Which usnet: `usnet.socket.configure(client, netif)` (patch's own arguments), else usnetd at
``USNET_SOCKET`` (default /run/usnet/usnetd.sock) and ``USNET_NETIF`` (default: its first netif),
reached when the first socket needs it, not at patch time.

Names bound before the patch: a module that did ``from socket import socket`` (or
``getaddrinfo``, ``gethostbyname``, ...) before `patch()` holds the standard
objects themselves, so `patch()` also looks through the modules already imported (`sys.modules`,
usnet's own left out) for module-level names that are exactly those objects, and rebinds each
to its patched counterpart (`unpatch()` puts back those it rebound). The standard
`create_connection`, `create_server`, `socketpair` and `fromfd` need nothing: they find
``socket`` and ``getaddrinfo`` in the socket module's globals at each call, which the patch
replaced, so an early reference (``http.client``'s ``self._create_connection``, ``from socket
import create_connection``) already makes usnet sockets, and socketpair and fromfd stay the
kernel's. A copy held elsewhere than at module level (a class attribute, a closure, a default
argument) is not found; `usnet run` patches before the program starts, so nothing is early.
"""

from __future__ import annotations

import asyncio
import os
import socket as _socket
import ssl as _ssl
import sys
import threading
import types
from typing import Any

from usnet.client import aio as _aio
from usnet.client import descriptors as _descriptors
from usnet.client import greenrefuse as _green
from usnet.client import sigdefer as _sigdefer
from usnet.client import socket as _us
from usnet.client import tls as _tls
from usnet.client import trioface as _trio
from usnet.client.session import Client

__all__ = ["child_environment", "is_patched", "patch", "run_in_process", "unpatch"]

_KERNEL = _socket.socket  # the standard class, before anyone replaced it
_FLAGS = getattr(_socket, "SOCK_NONBLOCK", 0) | getattr(_socket, "SOCK_CLOEXEC", 0)
_INET = (_socket.AF_INET, _socket.AF_INET6)
# taken from usnet.socket where it has them (socket.getfqdn calls gethostbyaddr through the module)
_NAMES = ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo")

_saved: dict[str, Any] = {}
_lock = threading.Lock()


def _carries(family: int, kind: int, proto: int) -> bool:
    """Whether usnet makes this socket: TCP (and UDP once usnet.socket has SOCK_DGRAM) over IP."""
    if family not in _INET:
        return False
    if kind == _socket.SOCK_STREAM:
        return proto in (0, _socket.IPPROTO_TCP)
    if kind == _socket.SOCK_DGRAM:
        return "SOCK_DGRAM" in _us.__all__ and proto in (0, _socket.IPPROTO_UDP)
    return False


class _SocketMeta(type):
    """Makes `socket.socket(...)` choose: a usnet socket, or the kernel's socket exactly as before."""

    def __call__(cls, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None) -> Any:
        if cls is not Socket:  # a class a program derived from the patched one: the kernel's, as it asked
            return super().__call__(family, type, proto, fileno)
        if fileno is None:
            fam = _socket.AF_INET if family == -1 else family
            kind = _socket.SOCK_STREAM if type == -1 else type
            base = kind & ~_FLAGS
            if _carries(fam, base, 0 if proto == -1 else proto):
                s = _us.socket(fam, base, 0 if proto == -1 else proto)
                if kind & getattr(_socket, "SOCK_NONBLOCK", 0):
                    s.setblocking(False)
                return s
        elif family in (-1, *_INET) and _us.adopts(fileno):
            # a usnet socket's descriptor (detached, or dup'd as socket.fromfd does): that socket's
            # connection, not a kernel socket on its readiness pair
            return _us.socket(fileno=fileno)
        return _KERNEL(family, type, proto, fileno)

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, (_KERNEL, _us.socket, _tls.TlsSocket))

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, (_KERNEL, _us.socket, _tls.TlsSocket))


class Socket(_KERNEL, metaclass=_SocketMeta):
    """What `socket.socket` is under the patch: calling it makes a usnet or a kernel socket (see the
    module docstring); it is never itself instantiated, and its methods are the kernel class's."""

    __slots__ = ()


def _wrap_socket(self: _ssl.SSLContext, sock: Any, server_side: bool = False, do_handshake_on_connect: bool = True,
                 suppress_ragged_eofs: bool = True, server_hostname: str | None = None,
                 session: _ssl.SSLSession | None = None) -> Any:
    """`SSLContext.wrap_socket`: usnet.tls for a usnet socket, the ssl module's for a kernel one."""
    if isinstance(sock, _us.socket):
        return _tls.wrap_socket(self, sock, server_side=server_side, server_hostname=server_hostname,
                                do_handshake_on_connect=do_handshake_on_connect,
                                suppress_ragged_eofs=suppress_ragged_eofs, session=session)
    return _saved["wrap_socket"](self, sock, server_side=server_side,
                                 do_handshake_on_connect=do_handshake_on_connect,
                                 suppress_ragged_eofs=suppress_ragged_eofs, server_hostname=server_hostname,
                                 session=session)


def _late(name: str) -> Any:
    """usnet.socket's function `name`, looked up at each call (so a later definition is the one used)."""
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(_us, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"usnet.socket.{name} (usnet.patch)"
    return call


def _rebind_early(replacements: dict[int, tuple[Any, Any]]) -> list[tuple[types.ModuleType, str, Any, Any]]:
    """Rebind module-level names that are exactly an original (``from socket import socket``
    before the patch) to its replacement; `replacements` maps id(original) -> (original,
    replacement). Returns (module, name, original, replacement) for each name rebound, for `unpatch`."""
    done = []
    for modname, mod in list(sys.modules.items()):
        if (not isinstance(mod, types.ModuleType) or mod is _socket or modname == "_socket"
                or modname == "usnet" or modname.startswith("usnet.")):
            continue  # the C layer is the kernel's; usnet keeps the kernel's class where it needs it (`_KERNEL`)
        try:
            items = list(vars(mod).items())
        except TypeError:
            continue
        for name, value in items:
            hit = replacements.get(id(value))
            if hit is not None and hit[0] is value and not name.startswith("__"):
                setattr(mod, name, hit[1])
                done.append((mod, name, value, hit[1]))
    return done


def patch(client: Client | None = None, netif: str | None = None) -> None:
    """Put the program's sockets, names, TLS and asyncio on usnet (see the module docstring).

    `client`/`netif`: which domain and netif (`usnet.socket.configure`); by default usnetd at
    USNET_SOCKET and USNET_NETIF or its first netif. Calling it again only changes those.
    """
    with _lock:
        if client is not None or netif is not None:
            _us.configure(client, netif)
        if _saved:
            return
        _green.check()  # before anything is patched: gevent's or eventlet's sockets would be the kernel's
        _saved["socket"] = _socket.socket
        _saved["wrap_socket"] = _ssl.SSLContext.wrap_socket
        _saved["policy"] = asyncio.get_event_loop_policy()
        _socket.socket = Socket  # type: ignore[misc]  # the point of the patch
        for name in _NAMES:
            if name in _us.__all__:
                _saved[name] = getattr(_socket, name)
                setattr(_socket, name, _late(name))
        _ssl.SSLContext.wrap_socket = _wrap_socket  # type: ignore[method-assign,assignment]
        for name in _descriptors.KERNEL:  # system calls on a usnet socket's descriptor reach the socket
            _saved["os." + name] = getattr(os, name)
            setattr(os, name, getattr(_descriptors, name))
        _aio.install()
        # a loop made from the class itself, not through the policy (uvicorn's loop factory
        # returns asyncio.SelectorEventLoop), is usnet's too: a subclass of it
        _saved["SelectorEventLoop"] = asyncio.SelectorEventLoop
        asyncio.SelectorEventLoop = asyncio.unix_events.SelectorEventLoop = _aio.EventLoop
        early = {id(_saved["socket"]): (_saved["socket"], Socket)}
        early.update((id(_saved[n]), (_saved[n], getattr(_socket, n))) for n in _NAMES if n in _saved)
        _saved["rebound"] = _rebind_early(early)
        _sigdefer.defer_handlers()  # a handler runs after a step, whichever thread took its signal
        _trio.install(_KERNEL)  # trio wraps a usnet socket as its own (now, or when the program imports trio)
        _green.install()  # an import of gevent or eventlet raises, in one line


def unpatch() -> None:
    """Undo `patch()`: sockets made from now on are the kernel's (usnet sockets made meanwhile stay usnet's)."""
    with _lock:
        if not _saved:
            return
        _socket.socket = _saved.pop("socket")  # type: ignore[misc]
        _ssl.SSLContext.wrap_socket = _saved.pop("wrap_socket")  # type: ignore[method-assign]
        asyncio.set_event_loop_policy(_saved.pop("policy"))
        asyncio.SelectorEventLoop = asyncio.unix_events.SelectorEventLoop = _saved.pop("SelectorEventLoop")
        for name in _descriptors.KERNEL:
            setattr(os, name, _saved.pop("os." + name))
        for name in _NAMES:
            if name in _saved:
                setattr(_socket, name, _saved.pop(name))
        for mod, name, original, ours in _saved.pop("rebound", []):
            if getattr(mod, name, None) is ours:  # unless the module rebound it since
                setattr(mod, name, original)
        _trio.uninstall()
        _green.uninstall()
        _sigdefer.undefer_handlers()


def is_patched() -> bool:
    return bool(_saved)


# -- usnet run: the program patched before its first line ---------------------------------------------------


def child_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default os.environ) for a command whose Python programs are to start patched.

    USNET_PATCH=1 and usnet's start-up hook (usnet.client.boot's sitecustomize) first on PYTHONPATH,
    with the directory usnet itself is in, so the child finds this usnet even when it is not installed.
    """
    import os

    from usnet.client import boot

    env = dict(os.environ if env is None else env)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds usnet/
    path = [boot.DIRECTORY, here] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    env["USNET_PATCH"] = "1"
    return env


def run_in_process(argv: list[str], module: str | None = None) -> None:
    """Patch, then run a script (``argv[0]``) or `module` as ``__main__``, as `python` and `python -m` would.

    Python programs the script starts inherit the patch too (`child_environment`).
    """
    import os
    import runpy
    import sys

    os.environ.update(child_environment())
    patch()
    if module is not None:
        sys.argv = [module, *argv]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")
