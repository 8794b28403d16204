"""The domain loop's watch list: an epoll and the loop's own table of what each descriptor stands for.

`selectors.DefaultSelector` did this job, in Python, once a turn: its `select` made a key lookup
call per ready descriptor, a `max`, a `len` and a `math.ceil` around the one `epoll.poll`, ~5 % of
usnetd's CPU per outgoing connect, and its register, modify and unregister went through
`_fileobj_lookup` and a new `SelectorKey` each (issue 18, usnetd's fixed cost per turn). Here a
turn's wait is the `epoll.poll` and one list comprehension over what it returned; a key's mask is
its interest unless it watches both ways. `want` changes a descriptor's interest only when it
changes, so a session whose interest stays the same costs no system call.

What the loop relied on in selectors is kept: level-triggered; a descriptor reported as an error or
hang-up is ready for what it is watched for (as selectors maps EPOLLERR and EPOLLHUP); `register` of
a watched descriptor and `unregister` of an unwatched one raise KeyError, and a socket closed
before its `unregister` is found by its object (its `fileno()` is then -1); timeouts are rounded
up to a millisecond (no busy wait just short of a deadline).
"""

from __future__ import annotations

import math
import select
from typing import Any

__all__ = ["BOTH", "READ", "WRITE", "Watch", "WatchKey"]

READ = 1  # the values of selectors.EVENT_READ and EVENT_WRITE, so a mask reads the same
WRITE = 2
BOTH = READ | WRITE
_EPOLL = {READ: select.EPOLLIN, WRITE: select.EPOLLOUT, BOTH: select.EPOLLIN | select.EPOLLOUT}
_NOT_IN = ~select.EPOLLIN
_NOT_OUT = ~select.EPOLLOUT


class WatchKey:
    """One watched descriptor: `fd`, the object registered (`fileobj`), `events` (READ, WRITE or
    BOTH) and `data` (what the loop serves it as)."""

    __slots__ = ("fd", "fileobj", "events", "data")

    def __init__(self, fd: int, fileobj: Any, events: int, data: Any) -> None:
        self.fd = fd
        self.fileobj = fileobj
        self.events = events
        self.data = data


def _mask(ev: int) -> int:
    """READ and WRITE of an epoll report, as selectors reads it: anything but EPOLLOUT alone is
    readable, anything but EPOLLIN alone writable (an error or hang-up is both)."""
    return (READ if ev & _NOT_OUT else 0) | (WRITE if ev & _NOT_IN else 0)


class Watch:
    """Descriptors (ints or objects with `fileno()`) watched for READ and/or WRITE, each with its data."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._keys: dict[int, WatchKey] = {}

    def _fd(self, fileobj: Any) -> int:
        """The descriptor of `fileobj`; a closed socket's (fileno() -1) is the one it was watched
        under. ValueError if there is none."""
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        if fd >= 0:
            return fd
        for key in self._keys.values():  # a socket closed while watched: rare, a walk is fine
            if key.fileobj is fileobj:
                return key.fd
        raise ValueError(f"{fileobj!r} is closed and not watched")

    def get(self, fileobj: Any) -> WatchKey | None:
        """The key of `fileobj`; None if it is not watched."""
        try:
            return self._keys.get(self._fd(fileobj))
        except ValueError:
            return None

    def register(self, fileobj: Any, events: int, data: Any = None) -> WatchKey:
        """Watch `fileobj` for `events`. KeyError if it is watched already; OSError (EBADF) as epoll's."""
        if events not in _EPOLL:
            raise ValueError(f"events must be READ, WRITE or both, not {events!r}")
        fd = self._fd(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (fd {fd}) is already watched")
        self._ep.register(fd, _EPOLL[events])
        key = self._keys[fd] = WatchKey(fd, fileobj, events, data)
        return key

    def unregister(self, fileobj: Any) -> WatchKey:
        """Stop watching `fileobj`. KeyError if it was not watched; a descriptor closed since is
        forgotten all the same (epoll dropped it by itself)."""
        key = self._keys.pop(self._fd(fileobj))
        try:
            self._ep.unregister(key.fd)
        except OSError:
            pass
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> WatchKey:
        """Watch `fileobj` for `events` now, as `data`; the system is told only if `events` changed.
        KeyError if it is not watched."""
        if events not in _EPOLL:
            raise ValueError(f"events must be READ, WRITE or both, not {events!r}")
        key = self._keys[self._fd(fileobj)]
        if events != key.events:
            self._ep.modify(key.fd, _EPOLL[events])
            key.events = events
        key.data = data
        return key

    def want(self, fileobj: Any, events: int, data: Any = None) -> None:
        """Watch `fileobj` for `events` (0: not at all), registering it (as `data`), changing or
        unregistering it as needed; a watched one keeps its data. Nothing is asked of the system when
        that is what it is watched for already."""
        key = self.get(fileobj)
        if key is None:
            if events:
                self.register(fileobj, events, data)
        elif not events:
            self.unregister(fileobj)
        elif events != key.events:
            self.modify(fileobj, events, key.data)

    def select(self, timeout: float | None) -> list[tuple[WatchKey, int]]:
        """The ready keys with their READ/WRITE mask, waiting at most `timeout` seconds (None: no
        bound). The loop's one wait a turn: one system call and one pass over what it reported."""
        if timeout is None:
            ms = -1.0
        elif timeout <= 0:
            ms = 0.0
        else:
            ms = math.ceil(timeout * 1e3) * 1e-3
        keys = self._keys
        try:
            ready = self._ep.poll(ms, len(keys) or 1)
        except InterruptedError:
            return []
        if not ready:  # most turns of a quiet loop: no pass at all
            return []
        return [(k, e if (e := k.events) != BOTH else _mask(ev))
                for fd, ev in ready if (k := keys.get(fd)) is not None]

    def __len__(self) -> int:
        return len(self._keys)

    def close(self) -> None:
        self._ep.close()
        self._keys.clear()
