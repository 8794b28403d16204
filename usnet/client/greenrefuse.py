"""gevent and eventlet under `usnet.patch()`: refused in one line, never run on the kernel's sockets.

Both are green-thread libraries whose sockets are their own class over the kernel's: gevent's
``gevent.socket.socket`` holds a C ``_socket.socket`` and calls its methods unbound
(``_socket.socket.fileno(self._sock)``); eventlet's green socket is made from a fresh copy of the
standard socket module (``eventlet.patcher.original``), the class before any patch. Their monkey
patching then puts that class where usnet's ``socket.socket`` was. Under `usnet run` a gevent
program therefore ran, but every socket it made was the kernel's, behind usnet's back (seen:
tests/interop/test_programs14.py). Leaving gevent's patch out instead would leave its greenlets
on usnet's blocking sockets, where one blocked call stops the hub and every other greenlet.

So the patch refuses them, as early as it can and in one line: `check` (at `patch()`) raises if
either is imported already, and `install` puts a finder on `sys.meta_path` whose import of either
raises ImportError with the reason. A library that only probes for gevent (``try: import
gevent``) takes its plain path, on usnet. ``greenlet`` alone (SQLAlchemy's asyncio bridge) makes
no sockets and is not refused.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence

__all__ = ["REFUSED", "check", "install", "reason", "uninstall"]

REFUSED = ("gevent", "eventlet")


def reason(name: str) -> str:
    """The one line that says why `name` does not run under the patch."""
    return (f"usnet: {name}'s sockets are the kernel's ({name} makes its own over the C socket and its "
            f"monkey patching replaces usnet's socket.socket), so {name} cannot run on usnet; run the "
            f"program without usnet (docs/design-notes.md, \"A fourteenth sweep: gevent and eventlet refused\")")


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing: an import of a refused package (or one of its modules) raises instead."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        top = fullname.partition(".")[0]
        if top in REFUSED:
            raise ImportError(reason(top), name=fullname)
        return None


_finder = _Finder()


def check() -> None:
    """Raise RuntimeError (one line) if a refused package is imported already: patching now would
    put the program's own sockets on usnet and that package's on the kernel."""
    for name in REFUSED:
        if name in sys.modules:
            raise RuntimeError(reason(name))


def install() -> None:
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def uninstall() -> None:
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
