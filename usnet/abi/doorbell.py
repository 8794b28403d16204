"""Doorbells: a pipe each, so that the domain's side is its own open file description.

A doorbell wakes whoever sleeps on a channel (docs/abi.md, "Doorbells"). It
was an eventfd, one open file description shared by the domain and the
client, and a client could clear O_NONBLOCK on it and fill its counter: the
domain's next write then blocked forever (an eventfd cannot be reopened to
get a description of one's own). A pipe can: the domain rings through a
write end it reopened for itself (`/proc/self/fd/N`), so whatever flags a
client sets on the ends it holds, the domain's stay non-blocking. Ringing
writes one byte; a full pipe is already rung. Draining reads what is there.

Who holds what (both sides use the functions below):

- the sleeper holds the read end (`wait_fd`) and polls it; it drains it;
- a ringer holds the write end (`ring_fd`): the peer client of a user pipe,
  or the client of a flow channel, which rings the domain when it sends;
- the domain rings the client's bells through `own_ring_fd`, and sleeps on
  the read ends of the bells clients ring, which it never hands out;
- the sleeper rings its own bell (another of its threads wakes a blocked call,
  a packet came in while it armed select mode) through `sleeper_ring_fd`, a
  write end of its own that the domain opens and hands it with the read end
  (`lend_sleeper_ring`): a client cannot open one itself where its
  /proc/self/fd is root's (a program that dropped root is not dumpable), and a
  description of its own keeps its flags away from the peer's `ring_fd`.
"""

from __future__ import annotations

import fcntl
import os
import stat

__all__ = ["Doorbell", "drain", "is_writer_of", "ring"]

_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC
_ONE = b"\x01"
# The kernel's read and write, bound at import: usnet.patch() later replaces os.read/os.write with
# versions that look for a usnet socket's descriptor first, a cost a doorbell need not pay.
_read, _write = os.read, os.write


def ring(fd: int) -> None:
    """Ring the doorbell whose write end is `fd`; a full pipe is already rung, a closed one is gone."""
    try:
        _write(fd, _ONE)
    except OSError:  # BlockingIOError (rung already), BrokenPipeError (nobody sleeps on it any more)
        pass


def is_writer_of(wait_fd: int, fd: int) -> bool:
    """Whether `fd` is a write end of the pipe whose read end is `wait_fd` (what a client checks of
    the write end of its bell it was handed: anything else rung would wake nobody, or write
    somewhere it should not)."""
    try:
        st, mine = os.fstat(fd), os.fstat(wait_fd)
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        return False
    return (stat.S_ISFIFO(st.st_mode) and mode == os.O_WRONLY
            and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino))


def _reopen(ring_fd: int) -> int:
    """A write end of the pipe whose write end is `ring_fd`, as an open file description of its own
    (Linux: opening a pipe's /proc entry for writing gives a write end of that pipe)."""
    return os.open(f"/proc/self/fd/{ring_fd}", os.O_WRONLY | _FLAGS)


def drain(fd: int) -> None:
    """Reset the doorbell whose read end is `fd`: take every ring waiting in it."""
    try:
        for _ in range(16):  # a full pipe is 64 KiB; bounded, so a ringer can never keep us here
            if len(_read(fd, 4096)) < 4096:
                return
    except OSError:  # BlockingIOError: nothing (more) to take
        pass


class Doorbell:
    """One doorbell, as the domain makes it: a non-blocking pipe, and a write end of the domain's own."""

    __slots__ = ("wait_fd", "ring_fd", "own_ring_fd", "sleeper_ring_fd")

    def __init__(self) -> None:
        self.wait_fd, self.ring_fd = os.pipe2(_FLAGS)
        self.sleeper_ring_fd = -1
        try:
            self.own_ring_fd = _reopen(self.ring_fd)
        except BaseException:
            os.close(self.wait_fd)
            os.close(self.ring_fd)
            raise

    def ring(self) -> None:
        """The domain rings: through its own description, whose flags no client can reach (closed: nothing)."""
        if self.own_ring_fd >= 0:
            ring(self.own_ring_fd)

    def drain(self) -> None:
        drain(self.wait_fd)

    def lend_sleeper_ring(self) -> int:
        """A fresh write end for whoever is handed `wait_fd` now, to ring its own bell with; the one
        lent before (to an earlier holder of this end) is closed here, so no two sleepers share one."""
        fd = _reopen(self.ring_fd)
        if self.sleeper_ring_fd >= 0:
            os.close(self.sleeper_ring_fd)
        self.sleeper_ring_fd = fd
        return fd

    def close(self) -> None:
        for fd in (self.wait_fd, self.ring_fd, self.own_ring_fd, self.sleeper_ring_fd):
            if fd >= 0:
                os.close(fd)
        self.wait_fd = self.ring_fd = self.own_ring_fd = self.sleeper_ring_fd = -1
