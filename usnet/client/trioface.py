"""trio (and anyio on its trio backend) on usnet sockets, for `usnet.patch()`.

trio makes every socket object of its own (`trio.socket.socket()`, `accept()`, `fromfd`,
`socketpair`, and anyio's listeners, which it builds with the standard `socket.socket`) through one
function, `trio.socket.from_stdlib_socket`, which wraps a standard socket in trio's socket class.
That class checks ``type(sock) is socket.socket`` exactly (to refuse an `ssl.SSLSocket`), and
calls the standard class's own methods on the object (``socket.socket.recv(sock, ...)``, the C
method descriptors taken when trio was imported), so a usnet socket fails both ways: the type
check raises TypeError, and a kernel method refuses an object that is not a kernel socket.

The patch changes that one function (`from_stdlib_socket`): a usnet socket, or a kernel socket
of exactly the standard class, becomes a `PatchedSocket`, a subclass of trio's own socket class
that differs only where trio reaches the standard object: its exact-type check is the patch's
(a usnet socket, or the kernel class itself: under the patch ``socket.socket`` is the patch's
class, so trio's own check would refuse the kernel's `socketpair` and AF_UNIX sockets too), and it
calls each method by name on the object's own class (the method trio asked for, looked up by its
``__name__``; for a kernel socket that is the very method trio would call). Everything else (name
resolution, connect's wait for writable and SO_ERROR, cancellation, the wait on `fileno()`
through trio's epoll) is trio's own code, unchanged, on a descriptor whose readiness is the
socket's (`usnet.client.engine.Readiness`). Anything else (an `ssl.SSLSocket`, a subclass) goes
to trio's function and gets its TypeError, as before.

Why this hook and not another: trio's `set_custom_socket_factory` is per `trio.run` (a RunVar),
so a program would have to ask for it, and it covers only `trio.socket.socket()`, not
`accept()` or anyio's `from_stdlib_socket` of a socket made outside trio. Making the usnet socket
pass ``type(sock) is socket.socket`` would need it to be that class (or the patch's class to be
usnet's), and the kernel method descriptors would still refuse it. Writing a trio socket class
from scratch (`trio.socket.SocketType`) would repeat trio's connect, cancellation and resolver
logic; the subclass reuses it. It relies on two names inside trio (``trio._socket._SocketType``
and its ``_nonblocking_helper``, whose parameters trio 0.23 reordered: both orders are
taken), present from trio 0.22 on (tested with 0.22 and 0.35); if a trio lacks them, `adapt`
leaves trio as it is and warns.

When trio is imported: `install` adapts it at once if it is imported already, else when the
program imports it (a finder on `sys.meta_path` that runs `adapt` right after ``trio._socket``
executes, before ``trio.socket`` copies the function): `usnet run` patches before the program's
first line, so trio is usually imported later.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import inspect
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

from usnet.client import socket as _us

__all__ = ["adapt", "install", "is_usnet", "restore", "uninstall"]

_TARGET = "trio._socket"
_saved: dict[str, Any] = {}  # "from_stdlib_socket": trio's own, while adapted


def is_usnet(sock: object) -> bool:
    """Whether trio is to wrap `sock` as a usnet socket (TCP or UDP, made here or inherited)."""
    return isinstance(sock, _us.socket)


def _wraps(sock: object) -> bool:
    """Whether the patched trio wraps `sock` itself: a usnet socket, or exactly a kernel
    ``socket.socket``, which trio's own check (against ``socket.socket``, the patch's class
    while patched) would refuse too (trio.socket.socketpair, an AF_UNIX socket)."""
    return is_usnet(sock) or type(sock) is _saved.get("kernel")


def _usnet_class(base: type) -> type:
    """trio's socket class (`base`), taking a usnet socket and calling its methods by name.
    trio 0.23 reordered `_nonblocking_helper`'s parameters (`wait_fn` first, the call's own
    arguments spread): the override takes whichever `base` has."""
    params = list(inspect.signature(base._nonblocking_helper).parameters)  # type: ignore[attr-defined]
    new_helper = params[1:2] == ["wait_fn"]

    class PatchedSocket(base):  # trio's class, known only at run time
        """A trio socket over a usnet (or kernel) socket: trio's `_SocketType`, but each call trio
        makes on the standard object (``fn(self._sock, ...)`` with `fn` the standard class's method)
        is the method of the same name of the object's own class (for a kernel socket, the same
        method trio would call)."""

        def __init__(self, sock: Any) -> None:  # trio's, with the patch's idea of its exact-type check
            if not _wraps(sock):
                raise TypeError(f"expected object of type 'socket.socket', not {type(sock).__name__!r}")
            self._sock = sock
            self._sock.setblocking(False)
            self._did_shutdown_SHUT_WR = False

        if new_helper:  # trio >= 0.23: (wait_fn, fn, *args, **kwargs)
            async def _nonblocking_helper(self, wait_fn: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
                return await super()._nonblocking_helper(wait_fn, getattr(type(self._sock), fn.__name__),
                                                         *args, **kwargs)
        else:  # trio 0.22: (fn, args, kwargs, wait_fn)
            async def _nonblocking_helper(self, fn: Any, args: Sequence[Any], kwargs: dict[str, Any],  # type: ignore[misc]
                                          wait_fn: Any) -> Any:
                return await super()._nonblocking_helper(getattr(type(self._sock), fn.__name__), args, kwargs,
                                                         wait_fn)

        def dup(self) -> Any:
            return PatchedSocket(self._sock.dup())  # trio's makes its own class by name

        def __repr__(self) -> str:
            return repr(self._sock).replace("usnet.socket", "trio.socket.socket (usnet)", 1)

    PatchedSocket.__qualname__ = PatchedSocket.__name__
    return PatchedSocket


def adapt(module: types.ModuleType) -> bool:
    """Make `module` (``trio._socket``, and ``trio.socket`` if imported) wrap usnet sockets as
    `PatchedSocket`; True if done (or done already)."""
    if "from_stdlib_socket" in _saved:
        return True
    base = getattr(module, "_SocketType", None)
    original = getattr(module, "from_stdlib_socket", None)
    if base is None or original is None or not hasattr(base, "_nonblocking_helper"):
        warnings.warn("usnet.patch: this trio's socket module is not the one usnet knows (trio._socket."
                      "_SocketType._nonblocking_helper); trio's sockets stay the kernel's", RuntimeWarning,
                      stacklevel=2)
        return False
    cls = _usnet_class(base)

    def from_stdlib_socket(sock: Any) -> Any:
        """trio's `from_stdlib_socket`; a usnet socket becomes a trio socket over it (usnet.patch)."""
        if _wraps(sock):
            return cls(sock)
        return original(sock)

    from_stdlib_socket.__wrapped__ = original  # type: ignore[attr-defined]
    _saved["from_stdlib_socket"] = original
    _saved["class"] = cls
    _rebind(original, from_stdlib_socket)
    module.from_stdlib_socket = from_stdlib_socket  # type: ignore[attr-defined]
    return True


def _rebind(old: Any, new: Any) -> None:
    """Module-level names in trio that are `old` (``trio.socket`` re-exports it) become `new`."""
    for name, mod in list(sys.modules.items()):
        if (name == "trio" or name.startswith("trio.")) and getattr(mod, "from_stdlib_socket", None) is old:
            mod.from_stdlib_socket = new  # type: ignore[attr-defined]


def restore() -> None:
    """Undo `adapt`: trio wraps only kernel sockets again (trio sockets over usnet ones stay)."""
    ours = None
    mod = sys.modules.get(_TARGET)
    if mod is not None:
        ours = getattr(mod, "from_stdlib_socket", None)
    original = _saved.pop("from_stdlib_socket", None)
    _saved.pop("class", None)
    if original is not None and ours is not None and getattr(ours, "__wrapped__", None) is original:
        _rebind(ours, original)


class _Loader(importlib.abc.Loader):
    """trio._socket's own loader, then `adapt` on the module it made."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__loader__ = self._inner  # linecache, inspect and importlib.resources ask the real one
        self._inner.exec_module(module)
        adapt(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``trio._socket`` is imported, the spec the other finders give,
    with a loader that adapts the module once it has run."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


_finder = _Finder()


def install(kernel: type) -> None:
    """trio on usnet: adapt it now if imported, else when it is (see the module docstring).
    `kernel`: the standard ``socket.socket`` class, as it was before the patch."""
    _saved["kernel"] = kernel
    mod = sys.modules.get(_TARGET)
    if mod is not None:
        adapt(mod)
    elif _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    """Undo `install`."""
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    restore()
