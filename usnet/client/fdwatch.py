"""The stack thread's watch list: file descriptors to wake for, each with what it stands for.

An epoll and a dict, nothing more. `selectors.DefaultSelector` did this job with ~5 Python calls
for each register, unregister and lookup (`_fileobj_lookup`, `SelectorKey`, the mapping view), and
a blocked socket call does a lookup, an unregister, a lookup and a register (`Runner.borrow`,
`give_back`): a fifth of the calls a connect made outside TCP (issue 18).
"""

from __future__ import annotations

import math
import select
from typing import Any

__all__ = ["FdWatch"]

_GONE = object()


class FdWatch:
    """Descriptors watched for reading (level-triggered, as DefaultSelector's EVENT_READ)."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._data: dict[int, Any] = {}

    def get(self, fd: int) -> Any:
        """What `fd` was registered with; None if it is not watched."""
        return self._data.get(fd)

    def register(self, fd: int, data: Any) -> None:
        """Watch `fd`; `select` reports it as `data`. OSError (EEXIST, EBADF) as epoll's."""
        self._ep.register(fd, select.EPOLLIN)
        self._data[fd] = data

    def unregister(self, fd: int) -> None:
        """Stop watching `fd`. KeyError if it was not watched; a descriptor closed since is
        forgotten all the same (epoll dropped it by itself), as selectors' unregister does."""
        del self._data[fd]
        try:
            self._ep.unregister(fd)
        except OSError:
            pass

    def select(self, timeout: float | None) -> list[Any]:
        """The data of the ready descriptors, waiting at most `timeout` seconds (None: no bound),
        rounded up to a millisecond as selectors' epoll does (no busy wait just short of a
        deadline). A descriptor unregistered by another thread since epoll reported it is left out."""
        ms = -1.0 if timeout is None else math.ceil(timeout * 1e3) * 1e-3
        data = self._data
        try:
            ready = self._ep.poll(ms, max(len(data), 1))
        except InterruptedError:
            return []
        return [d for fd, _ in ready if (d := data.get(fd, _GONE)) is not _GONE]

    def close(self) -> None:
        self._ep.close()
        self._data.clear()
