"""The domain loop's watch list (usnet.domain.watch.Watch), which took the place of
`selectors.DefaultSelector` in the loop (issue 18, usnetd's fixed cost per turn): the masks it
reports are selectors' for every state of a socket and every interest, its errors are the ones the
loop's callers catch, and `want` asks nothing of the system when the interest did not change.
"""

from __future__ import annotations

import selectors
import socket

import pytest

from tests.helpers.util import CallNames
from usnet.domain.watch import BOTH, READ, WRITE, Watch


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def _fill(s: socket.socket) -> None:
    for _ in range(100_000):
        try:
            s.send(b"x" * 4096)
        except BlockingIOError:
            return
    pytest.fail("the socket never filled")


STATES = {
    "idle": lambda a, b: None,
    "data waiting": lambda a, b: b.send(b"hello"),
    "full": lambda a, b: _fill(a),
    "data waiting and full": lambda a, b: (b.send(b"hello"), _fill(a)),
    "peer closed": lambda a, b: b.close(),
    "data then peer closed": lambda a, b: (b.send(b"bye"), b.close()),
}


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("events", [READ, WRITE, BOTH])
def test_the_masks_are_what_selectors_reports(state, events):
    """Each state of a socket, each interest: Watch's answer is DefaultSelector's, key and mask."""
    a, b = _pair()
    w, sel = Watch(), selectors.DefaultSelector()
    try:
        STATES[state](a, b)
        w.register(a, events, "mine")
        sel.register(a, events, "mine")
        expected = [(k.fd, k.data, m) for k, m in sel.select(0)]
        for timeout in (0, 0.001, 0):  # level-triggered: the same again
            assert [(k.fd, k.data, m) for k, m in w.select(timeout)] == expected
    finally:
        w.close()
        sel.close()
        a.close()
        b.close()


def test_the_loops_error_contract():
    """What the loop's callers catch (KeyError, ValueError, OSError) is what comes, nothing is left
    half registered, and a socket closed while watched is still found by its object."""
    a, b = _pair()
    w = Watch()
    try:
        key = w.register(a, READ, ("session", 1))
        assert w.get(a) is key and w.get(a.fileno()) is key and len(w) == 1
        with pytest.raises(KeyError):
            w.register(a, READ, "again")
        with pytest.raises(KeyError):
            w.unregister(b)
        with pytest.raises(KeyError):
            w.modify(b, READ)
        with pytest.raises(ValueError):
            w.register(b, 4)  # neither READ nor WRITE
        fd = a.fileno()
        a.close()  # closed under its watch: epoll dropped it, the table still holds it
        assert w.unregister(a) is key and w.get(fd) is None and len(w) == 0
        with pytest.raises(ValueError):
            w.unregister(a)  # closed and no longer watched
        closed = b.fileno()
        b.close()
        with pytest.raises(OSError):
            w.register(closed, READ)
        assert w.get(closed) is None and len(w) == 0
    finally:
        w.close()
        a.close()
        b.close()


def test_want_asks_the_system_only_when_the_interest_changes():
    """A session's interest is set after every reply sent (`Domain._watch_session`): the same one
    again costs no epoll call; a change is one call, none is an unregister."""
    a, b = _pair()
    w = Watch()
    ep = w._ep = CallNames(w._ep)
    try:
        w.want(a, READ, "s")
        assert ep.calls == ["register"] and w.get(a).events == READ
        for _ in range(3):
            w.want(a, READ, "s")
        assert ep.calls == ["register"]
        w.want(a, BOTH, "s")
        w.want(a, BOTH, "s")
        assert ep.calls == ["register", "modify"] and w.get(a).events == BOTH and w.get(a).data == "s"
        b.send(b"x")
        assert [m for _, m in w.select(0)] == [READ | WRITE]
        w.want(a, 0, "s")
        assert ep.calls[-1] == "unregister" and w.get(a) is None
        w.want(a, 0, "s")  # not watched, not wanted: nothing
        assert ep.calls[-1] == "unregister" and ep.calls.count("unregister") == 1
    finally:
        w.close()
        a.close()
        b.close()
