"""Issue 16, hostile-client audit: attacks on the trusted domain that the earlier hostile tests
(test_hostile.py, test_hostile_usnetd.py, test_fault_barrier.py, test_limits.py) did not cover.

Each test is one attack; it asserts that the domain keeps serving, that what the attacker can
make it hold stays bounded, and that the attacker is told why (docs/design-notes.md,
"Issue 16: hostile-client audit").
"""

from __future__ import annotations

import errno
import os
import socket

import pytest

from tests.helpers.util import wait_until
from usnet.abi import protocol as P
from usnet.abi.transport import recv_msg, send_msg
from usnet.domain import loop as loopmod
from usnet.domain.limits import Limits
from usnet.domain.loop import Domain
from usnet.drivers import MemWire

ATTACKER_UID = 1000
LIMIT = 2


@pytest.fixture
def domain(monkeypatch):
    """A running domain whose socket sessions all read as uid 1000 (SO_PEERCRED faked: the
    test's own uid is the domain's and is exempt from the limits)."""
    monkeypatch.setattr(loopmod, "peer_credentials", lambda sock: (os.getpid(), ATTACKER_UID, ATTACKER_UID))
    d = Domain(limits=Limits(sessions_per_uid=LIMIT))
    d.add_netif("a", MemWire().a, "10.9.0.1/24")
    try:
        yield d
    finally:
        d.stop()


def _held(d: Domain, uid: int) -> int:
    with d.lock:
        return sum(1 for s in d.sessions.values() if s.uid == uid)


def _ask(sock: socket.socket, req: P.Request, timeout: float = 5.0) -> P.Reply:
    sock.settimeout(timeout)
    send_msg(sock, P.encode(req))
    data, fds = recv_msg(sock, 16)
    for fd in fds:
        os.close(fd)
    return P.decode_reply(data)


# ---------------------------------------------------------------- sessions past the limit that never speak


def test_sessions_past_the_limit_that_never_speak_are_not_held(domain):
    """Attack: one uid opens sessions past sessions_per_uid and never sends a request. The
    refusal used to wait for the session's first request, so each silent one held a
    descriptor and a Session in the domain for ever: the limit bounded nothing, and enough of
    them fill usnetd's descriptor table (every other uid's connect then waits on accept).

    Now a session past the limit is told at once (the EUSERS refusal is the first message it
    reads) and let go: what one uid holds is its limit and no more."""
    d = domain
    kept = [d.socketpair_session() for _ in range(LIMIT)]
    for s in kept:
        assert isinstance(_ask(s, P.Hello(P.PROTOCOL_VERSION, "kept")), P.Welcome)
    silent = [d.socketpair_session() for _ in range(40)]  # connect, say nothing
    wait_until(lambda: d.sessions_opened >= LIMIT + 40, 5, "the silent sessions accepted")
    wait_until(lambda: _held(d, ATTACKER_UID) <= LIMIT, 5,
               f"the silent sessions past the limit let go (held: {_held(d, ATTACKER_UID)})")
    for s in silent:  # each was told why, then hung up on
        s.settimeout(5)
        data, _ = recv_msg(s, 16)
        reply = P.decode_reply(data)
        assert isinstance(reply, P.Error) and reply.code == "EUSERS", reply
        assert "sessions_per_uid" in reply.message
        assert s.recv(100) == b""
        s.close()
    # the sessions within the limit are undisturbed
    for s in kept:
        assert isinstance(_ask(s, P.Status()), P.StatusReply)
        s.close()


def test_a_session_past_the_limit_that_speaks_reads_its_refusal(domain):
    """The honest client past the limit still reads the reason as the answer to its Hello."""
    d = domain
    kept = [d.socketpair_session() for _ in range(LIMIT)]
    over = d.socketpair_session()
    reply = _ask(over, P.Hello(P.PROTOCOL_VERSION, "over"))
    assert isinstance(reply, P.Error) and reply.code == "EUSERS", reply
    over.settimeout(5)
    try:
        assert over.recv(100) == b""  # and nothing else: the session is over
    except ConnectionResetError:
        pass
    over.close()
    for s in kept:
        assert isinstance(_ask(s, P.Hello(P.PROTOCOL_VERSION, "kept")), P.Welcome)
        s.close()
    assert errno.EUSERS  # (the code names the errno)
