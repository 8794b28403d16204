"""A forked child's shutdown(SHUT_WR or SHUT_RDWR) as the parent's agent takes it
(usnet.client.forked): the child's end of a splice held (`Held`) till the splice has read the
EOF, the shutdown known to a splice that waits for the agent (`Agent.settle`), and a
"shutdown" that names no splice of the agent's closed at once, the agent serving on. Kernel socket pairs only:
the splice's own path, with a kernel peer, is tests/interop/test_programs10.py's."""

from __future__ import annotations

import errno
import os
import select
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.client import forked


def _hung_up(s: socket.socket) -> bool:
    """Whether the other end of `s`'s pair is closed (POLLHUP), without waiting."""
    p = select.poll()
    p.register(s.fileno(), 0)
    return bool(p.poll(0))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.booleans(), max_size=8))
def test_held_ends_stay_open_till_the_release_and_none_after(ops):
    """True: the child hands over its end of a splice (a new descriptor of it each time, as each
    "shutdown" message brings); False: the splice reads its EOF. The end stays open from the
    first hand-over before a release till then, held by one descriptor however often it came;
    after a release each is closed at once."""
    held = forked.Held()
    ours, end = socket.socketpair()
    handed = []  # the descriptors handed over, still open (the one held)
    released = kept = False
    try:
        for keep in ops:
            if keep:
                d = end.dup()
                held.keep(d)
                kept = kept or not released
                if d.fileno() >= 0:
                    handed.append(d)
            else:
                held.release()
                released = True
            handed = [d for d in handed if d.fileno() >= 0]
            assert len(handed) == (1 if kept and not released else 0)
        end.close()  # ours gone: the hold alone keeps the end open, till the release
        assert _hung_up(ours) == (not handed)
        held.release()
        assert _hung_up(ours)
    finally:
        ours.close()
        end.close()


def test_a_shutdown_of_no_splice_is_closed_and_the_agent_serves_on():
    """A "shutdown" whose descriptor is no splice's, nor a socket (a pipe's end), is closed at
    once; the agent then answers the next request (EBADF for a token it does not have)."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        forked.Agent(parent, {})
        forked._send(child, forked.Request("shutdown", 0), r)
        os.close(r)
        r = -1
        with pytest.raises(OSError) as e:
            forked.ask(child, "claim", 1)  # served after the shutdown: one thread, in order
        assert e.value.errno == errno.EBADF
        assert "no such inherited socket" in str(e.value)  # the agent's answer: it serves on
        with pytest.raises(BrokenPipeError):
            os.write(w, b"x")  # the agent's copy of the read end is closed too
    finally:
        if r >= 0:
            os.close(r)
        os.close(w)
        child.close()


def test_settle_returns_once_the_agent_has_handled_what_the_child_sent():
    """Shutdowns the child sent, then the splice's `settle`: each is recorded (`Held.asked`)
    before it returns, as a splice that sees the child hang up after a SHUT_RDWR needs."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ends = [socket.socketpair() for _ in range(20)]
    try:
        agent = forked.Agent(parent, {})
        helds = []
        for _ours, end in ends:
            held = forked.Held()
            agent._splices[os.fstat(end.fileno()).st_ino] = held
            helds.append(held)
        for i, (_ours, end) in enumerate(ends):
            forked._send(child, forked.Request("shutdown", 0), end.fileno())
            agent.settle()
            assert [h.asked for h in helds] == [j <= i for j in range(len(ends))]
    finally:
        child.close()
        for ours, end in ends:
            ours.close()
            end.close()
