"""A hostile child against the parent's fork agent (usnet.client.forked, docs/abi.md §17).

Whatever reaches an agent's link (a child, or any process it passes the link to) is a client:
malformed, oversized, out-of-order and repeated requests, descriptors that are no sockets,
many of them, sockets of another family, reply sockets that never read. The parent must not
crash, hang, hold descriptors or threads without bound, nor act on another child's connection.

usnetd runs on a TAP of its own in the test's network namespace (tests/helpers/usnetd.TapDaemon);
the parent's connections are real usnet TCP connections to the kernel's sockets there. The test
is the hostile child: it speaks on the link with the agent's own framing (`forked._send`).
"""

from __future__ import annotations

import array
import errno
import gc
import os
import select
import socket
import threading

import msgspec
import pytest

from tests.helpers.util import wait_until
from usnet.client import forked

pytestmark = pytest.mark.privileged

LIMIT = 20  # seconds: reached only when something is broken


@pytest.fixture
def us_env(tapd, monkeypatch):
    """usnet.socket configured for `tapd`; thread exceptions collected (none may escape)."""
    from usnet import socket as us

    monkeypatch.setenv("USNET_SOCKET", tapd.path)
    monkeypatch.setenv("USNET_NETIF", "usnet0")
    us.configure(None, None)
    escaped: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda a: escaped.append(a.exc_value))
    try:
        yield us, escaped
    finally:
        us.configure(None, None)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _open_files() -> set[str]:
    """What this process's descriptors name ("socket:[inode]", "pipe:[inode]", paths)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the listing's own descriptor, closed meanwhile
    return out


def _name(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _raw(link: socket.socket, payload: bytes, fds: list[int]) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    link.sendmsg([payload], anc)


def _req(op: str, token: int, **kw) -> bytes:
    return msgspec.msgpack.encode(forked.Request(op, token, **kw))


def _ask_raw(link: socket.socket, payload: bytes) -> forked.Answer | None:
    """A request `payload` with a reply pair of ours: the answer, or None when the agent closed
    the pair without one."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        _raw(link, payload, [theirs.fileno()])
        theirs.close()
        mine.settimeout(LIMIT)
        data, fd = forked._recv(mine)
        if fd is not None:
            os.close(fd)
        return forked._ans.decode(data) if data else None
    finally:
        mine.close()


def _echo(spliced: socket.socket, k: socket.socket) -> None:
    """Bytes go both ways between a child's spliced end and the kernel's end of the connection."""
    spliced.settimeout(LIMIT)
    k.settimeout(LIMIT)
    spliced.sendall(b"ping")
    assert k.recv(16) == b"ping"
    k.sendall(b"pong")
    assert spliced.recv(16) == b"pong"


@pytest.fixture
def two_children(us_env, tapd):
    """Two agents of one parent: the hostile child's (its link, a connection, a listener and a
    UDP socket shared) and a bystander's (a connection of its own). Yields
    (hostile link, bystander link, kernel end of the hostile's connection, kernel end of the
    bystander's, escaped thread exceptions, what the hostile's agent's own descriptors name)."""
    us, escaped = us_env
    ks = socket.create_server((tapd.host_ip, 0))
    ks.settimeout(LIMIT)
    made: list = [ks]
    try:
        c1 = us.create_connection(ks.getsockname(), timeout=LIMIT)
        k1, _ = ks.accept()
        c2 = us.create_connection(ks.getsockname(), timeout=LIMIT)
        k2, _ = ks.accept()
        ls = us.socket()
        ls.bind((tapd.usnet_ip, 0))
        ls.listen()
        u = us.socket(us.AF_INET, us.SOCK_DGRAM)
        u.bind((tapd.usnet_ip, 0))
        made += [c1, k1, c2, k2, ls, u]
        hp, hc = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        bp, bc = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        made += [hc, bc]
        agent = forked.Agent(hp, {1: c1.reference(), 2: ls.reference(), 3: u.reference()})
        own = {_name(fd) for fd in (hp.fileno(), agent._ended_r, agent._ended_w)}
        del agent  # held by its own threads alone, as a fork's is
        forked.Agent(bp, {7: c2.reference()})
        yield hc, bc, k1, k2, escaped, own
    finally:
        for s in reversed(made):
            s.close()


def _bystander_served(bc: socket.socket, k2: socket.socket) -> None:
    ans, fd = forked.ask(bc, "claim", 7)
    assert ans.kind == "conn" and fd is not None
    with socket.socket(fileno=fd) as end:
        _echo(end, k2)


def test_malformed_and_oversized_requests_are_dropped_and_the_agent_serves_on(two_children):
    """Garbage, a message longer than any request (truncated), a Struct of the wrong shape, an
    unknown op, each with or without descriptors (pipes, many at once): dropped, their
    descriptors closed; the agent then claims the hostile child's own connection, and the
    bystander's agent is undisturbed."""
    hc, bc, _k1, k2, escaped, _own = two_children
    before = _fds()
    r, w = os.pipe()
    try:
        junk = [b"\xff" * 7, os.urandom(200_000), msgspec.msgpack.encode({"op": 1}),
                msgspec.msgpack.encode(["claim", 1]), _req("no-such-op", 1),
                _req("claim", 1, timeout=float("nan"), size=-5)]
        for payload in junk:
            for fds in ([], [r], [r] * 4, [r, w] * 100):
                _raw(hc, payload, fds)
    finally:
        os.close(r)
    ans = _ask_raw(hc, _req("claim", 1))  # served in order after the junk
    assert ans is not None and ans.kind == "conn"
    try:
        with pytest.raises(BrokenPipeError):
            os.write(w, b"x")  # every copy of the read end the agent got is closed
    finally:
        os.close(w)
    _bystander_served(bc, k2)
    assert not escaped
    wait_until(lambda: _fds() <= before + 4, LIMIT, "the agent to close what it was given")


def test_an_empty_message_ends_the_agent_and_closes_its_descriptor(two_children):
    """An empty message is the link's EOF to a SEQPACKET reader (they cannot be told apart): the
    hostile child's agent ends, closing the descriptor that came with it; the bystander's serves on."""
    hc, bc, _k1, k2, escaped, own = two_children
    r, w = os.pipe()
    try:
        _raw(hc, b"", [r])
    finally:
        os.close(r)
    try:
        wait_until(lambda: _hung_up(hc), LIMIT, "the hostile child's agent to end")
        with pytest.raises(BrokenPipeError):
            os.write(w, b"x")
    finally:
        os.close(w)
    _bystander_served(bc, k2)
    gc.collect()
    wait_until(lambda: not (own & _open_files()), LIMIT, "the agent to let go of its link and pipe")
    assert not escaped


def _hung_up(s: socket.socket) -> bool:
    p = select.poll()
    p.register(s.fileno(), 0)
    return bool(p.poll(0))


def test_requests_with_hostile_fields_get_an_error_answer(two_children):
    """Fields the child controls that the parent's socket calls would refuse with something other
    than OSError (a negative size or timeout, a NaN, a backlog past C's int, an address of the
    wrong shape), on each kind of shared socket: each gets an error answer, no thread raises."""
    hc, bc, _k1, k2, escaped, _own = two_children
    hostile = [
        _req("listen", 2, size=2**62), _req("listen", 1, size=5),
        _req("recvfrom", 3, size=-1, timeout=0.01), _req("recvfrom", 3, size=2**62, timeout=0.01),
        _req("recvfrom", 3, size=10, timeout=-1.0), _req("recvfrom", 3, size=10, timeout=float("nan")),
        _req("sendto", 3, data=b"x", addr=["x"]), _req("sendto", 3, data=b"x", addr=[1, 2, 3]),
        _req("sendto", 3, data=b"x", addr=[{"a": 1}, None]),
        _req("accept", 2, timeout=float("nan")), _req("accept", 2, timeout=-1.0),
        _req("accept", 1, timeout=0.01), _req("recvfrom", 2, size=10, timeout=0.01),
    ]
    for payload in hostile:
        ans = _ask_raw(hc, payload)
        assert ans is not None and ans.kind == "error" and ans.errno, (msgspec.msgpack.decode(payload), ans)
    assert not escaped, escaped
    _bystander_served(bc, k2)
    ans = _ask_raw(hc, _req("claim", 1))
    assert ans is not None and ans.kind == "conn"


def test_a_reply_socket_that_never_reads_does_not_hang_the_agent(two_children):
    """The reply descriptor is the child's to choose: a datagram socket whose peer never reads
    (its queue fills), an AF_INET socket, a listening one. The agent never blocks on it: it
    drops the answer and serves the next request, whose answer comes."""
    hc, bc, _k1, k2, escaped, _own = two_children
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # b never reads
    inet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(b"\0usnet-test-hostile-" + str(os.getpid()).encode())
    lst.listen()
    try:
        for _ in range(2000):  # past any datagram queue's length
            _raw(hc, _req("claim", 99), [a.fileno()])
        for s in (inet, lst):
            _raw(hc, _req("claim", 99), [s.fileno()])
        ans = _ask_raw(hc, _req("claim", 1))
        assert ans is not None and ans.kind == "conn"
    finally:
        for s in (a, b, inet, lst):
            s.close()
    _bystander_served(bc, k2)
    assert not escaped


def test_repeated_shutdowns_hold_one_descriptor_not_one_each(two_children):
    """A child that sends "shutdown" with its spliced end over and over (as the real one does
    once): the parent holds that end once till the splice reads the EOF, not a descriptor per
    message, and the connection still carries data both ways."""
    hc, bc, k1, k2, escaped, _own = two_children
    _ans, fd = forked.ask(hc, "claim", 1)
    assert fd is not None
    end = socket.socket(fileno=fd)
    try:
        before = _fds()
        for _ in range(500):
            _raw(hc, _req("shutdown", 0), [end.fileno()])
        with pytest.raises(OSError) as e:
            forked.ask(hc, "claim", 99)  # a round trip: the shutdowns before it were served
        assert e.value.errno == errno.EBADF
        assert _fds() <= before + 8, "the agent holds a descriptor per repeated shutdown"
        _echo(end, k1)
    finally:
        end.close()
    _bystander_served(bc, k2)
    assert not escaped


def test_waiting_requests_are_bounded_per_child(two_children):
    """A child that asks for many datagrams it never waits for (each request may block in the
    parent till one comes): the parent serves a bounded number at once and refuses the rest
    with ENOBUFS; the bystander is served meanwhile; the waits end when the child leaves."""
    hc, bc, _k1, k2, escaped, own = two_children
    threads = threading.active_count()
    pairs = []
    try:
        refused = 0
        for _ in range(forked.WAITING + 50):
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            _raw(hc, _req("recvfrom", 3, size=10), [theirs.fileno()])
            theirs.close()
            pairs.append(mine)
        for mine in pairs[forked.WAITING:]:
            mine.settimeout(LIMIT)
            data, _fd = forked._recv(mine)
            ans = forked._ans.decode(data)
            assert ans.kind == "error" and ans.errno == errno.ENOBUFS
            refused += 1
        assert refused == 50
        assert threading.active_count() <= threads + forked.WAITING
        _bystander_served(bc, k2)
    finally:
        hc.close()  # the child goes: its waiting requests end with it
        for mine in pairs:
            mine.close()
    wait_until(lambda: threading.active_count() <= threads, LIMIT,
               "the waiting requests of a child that left to end")
    gc.collect()  # the agent object, which its threads no longer hold
    wait_until(lambda: not (own & _open_files()), LIMIT, "the agent to let go of its link and pipe")
    assert not escaped
