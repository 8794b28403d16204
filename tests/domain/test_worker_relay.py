"""Issue 18: a request usnetd relays to a worker does not hold usnetd's loop.

`usnetd --workers 2`, worker 1 stopped (SIGSTOP). Before, an open on worker 1's port (relayed)
held usnetd's whole loop until WORKER_TIMEOUT found the worker hung: every other client waited.
Now the request is sent, its session parked, and the loop serves the others; the worker's
answer (here its replacement's) goes to the client when it comes, and the client's later
requests are answered after it, in the order it sent them.

Asserted by events, not times: usnetd has read client A's open (its control socket's SIOCOUTQ,
the bytes the receiver has not taken yet, is 0), then client B's Hello and an open on a worker-0
port are answered while A's open still has no answer (nothing to read on A's socket).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import struct
import termios
from collections.abc import Iterator

import pytest

from tests.domain.test_workers import _workers
from tests.helpers.hostile_harness import raw_session
from tests.helpers.util import wait_until
from usnet.abi import protocol as P
from usnet.abi.transport import recv_msg, send_msg

pytestmark = pytest.mark.privileged


def _unread(sock: socket.socket) -> int:
    """Bytes this socket sent that its peer has not read yet (SIOCOUTQ on an AF_UNIX socket)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def _answer(sock: socket.socket) -> P.Reply:
    raw, fds = recv_msg(sock)
    for fd in fds:
        os.close(fd)
    assert raw, "usnetd closed the session"
    return P.decode_reply(raw)


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_a_stopped_worker_holds_only_its_own_clients_request(tapd2):
    from usnet.domain.workers.bounds import START_TIMEOUT, WORKER_TIMEOUT

    a, _ = raw_session(tapd2.path, "a")
    b, _ = raw_session(tapd2.path, "b")
    pid = _workers(tapd2.path)[1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        send_msg(a, P.encode(P.OpenFlow("usnet0", 17, 7003)))  # port 7003: worker 1's, relayed
        wait_until(lambda: _unread(a) == 0, 10, "usnetd to read A's open")
        send_msg(a, P.encode(P.Hello(P.PROTOCOL_VERSION, "a again")))  # A's next: answered after the open

        # B is served meanwhile, by usnetd (Hello) and by worker 0 (port 7004), A's open unanswered
        send_msg(b, P.encode(P.Hello(P.PROTOCOL_VERSION, "b again")))
        assert isinstance(_answer(b), P.Welcome)
        send_msg(b, P.encode(P.OpenFlow("usnet0", 17, 7004)))
        assert isinstance(_answer(b), P.FlowOpened)
        assert not select.select([a], [], [], 0)[0], "A's open was answered before B was served"

        # A's open is served by worker 1's replacement, then A's Hello: in the order A sent them
        a.settimeout(WORKER_TIMEOUT + START_TIMEOUT + 5)
        first = _answer(a)
        assert isinstance(first, P.FlowOpened), first
        assert isinstance(_answer(a), P.Welcome)
        new = _workers(tapd2.path)[1]
        assert new["pid"] not in (0, pid) and new["restarts"] == 1, new
        assert f"usnetd worker 1 (pid {pid}) hung (no answer to OpenFlow within" in tapd2.daemon.log_text()
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)
        a.close()
        b.close()


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_a_client_gone_while_its_open_waits_leaves_no_port_held(tapd2):
    """A's open waits on the stopped worker when A goes: usnetd releases the port it reserved for
    that open (nobody is left to answer), so B binds it, served by worker 1's replacement."""
    from usnet.domain.workers.bounds import START_TIMEOUT, WORKER_TIMEOUT

    a, a_id = raw_session(tapd2.path, "a")
    b, _ = raw_session(tapd2.path, "b")
    pid = _workers(tapd2.path)[1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        send_msg(a, P.encode(P.OpenFlow("usnet0", 17, 7005)))  # worker 1's port
        wait_until(lambda: _unread(a) == 0, 10, "usnetd to read A's open")
        a.close()
        wait_until(lambda: f"session end session={a_id} " in tapd2.daemon.log_text(), 10, "A's session to end")
        b.settimeout(WORKER_TIMEOUT + START_TIMEOUT + 5)
        send_msg(b, P.encode(P.OpenFlow("usnet0", 17, 7005)))
        got = _answer(b)
        assert isinstance(got, P.FlowOpened) and got.local_port == 7005, got
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)
        b.close()


def _status(sock: socket.socket, asked: bool = False) -> dict:
    """Status on a raw session (part 0 already `asked`, or asked here), every part: the snapshot."""
    parts: list[bytes] = []
    total = 1
    while len(parts) < total:
        if parts or not asked:
            send_msg(sock, P.encode(P.Status(len(parts))))
        reply = _answer(sock)
        assert isinstance(reply, P.StatusReply), reply
        parts.append(reply.data)
        total = reply.parts
    return P.decode_status(b"".join(parts))


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_status_waits_on_a_stopped_worker_for_its_client_alone(tapd2):
    """A's `usnet status` while worker 1 is stopped: usnetd asks the worker and parks A, but serves
    B meanwhile (its Hello, an open on worker 0); A then gets the status, worker 1 reported "not
    answering" with its old pid. Before, usnetd's loop waited for worker 1's answer (1 s) and B
    was answered after A."""
    from usnet.domain.workers.bounds import START_TIMEOUT, WORKER_TIMEOUT

    a, _ = raw_session(tapd2.path, "a")
    b, _ = raw_session(tapd2.path, "b")
    with _stopped_worker(tapd2.path) as pid, contextlib.closing(a), contextlib.closing(b):
        send_msg(a, P.encode(P.Status(0)))
        wait_until(lambda: _unread(a) == 0, 10, "usnetd to read A's Status")
        send_msg(b, P.encode(P.Hello(P.PROTOCOL_VERSION, "b again")))
        assert isinstance(_answer(b), P.Welcome)
        send_msg(b, P.encode(P.OpenFlow("usnet0", 17, 7014)))  # worker 0's port
        assert isinstance(_answer(b), P.FlowOpened)
        assert not select.select([a], [], [], 0)[0], "A's status was answered before B was served"

        a.settimeout(WORKER_TIMEOUT + START_TIMEOUT + 5)
        w1 = _status(a, asked=True)["workers"][1]
        assert w1["pid"] == pid and w1.get("error", "").startswith("not answering"), w1
        assert "netifs" not in w1, w1
        send_msg(a, P.encode(P.Hello(P.PROTOCOL_VERSION, "a again")))  # A is read again
        assert isinstance(_answer(a), P.Welcome)


@contextlib.contextmanager
def _stopped_worker(path: str) -> Iterator[int]:
    """Worker 1 stopped (SIGSTOP) for the block; its pid. Killed after, if usnetd has not."""
    pid = _workers(path)[1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_status_gathers_every_workers_netifs(tapd2):
    """The asynchronous status joins each worker's paged reply: worker 1's netifs, with a flow it
    serves, are in the snapshot as worker 0's are."""
    a, _ = raw_session(tapd2.path, "a")
    send_msg(a, P.encode(P.OpenFlow("usnet0", 17, 7015)))  # worker 1's
    assert isinstance(_answer(a), P.FlowOpened)
    workers = _status(a)["workers"]
    assert [w["index"] for w in workers] == [0, 1] and all("error" not in w for w in workers), workers
    ports = [f["local_port"] for nif in workers[1]["netifs"] for f in nif["flows"]]
    assert 7015 in ports, workers[1]
    a.close()


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_a_workers_flows_are_shown_under_their_clients_channel_and_owner_and_to_their_uid_alone(tapd2):
    """Worker 1 knows only usnetd's session: its flows are shown under the client's channel id and
    owner, and a viewer other than root sees only its own uid's flows, as usnetd's own netifs
    show them (Control.status)."""
    a, _ = raw_session(tapd2.path, "a")
    send_msg(a, P.encode(P.OpenFlow("usnet0", 17, 7017)))  # worker 1's
    opened = _answer(a)
    assert isinstance(opened, P.FlowOpened)
    (flow,) = [f for nif in _status(a)["workers"][1]["netifs"] for f in nif["flows"] if f["local_port"] == 7017]
    assert flow["channel"] == opened.channel and flow["owner"]["pid"] == os.getpid(), flow
    os.chmod(os.path.dirname(tapd2.path), 0o755)  # (the test's own directory: nobody may reach the socket)
    os.chmod(tapd2.path, 0o666)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a viewer of another uid: none of root's flows
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            b, _ = raw_session(tapd2.path, "nobody")
            seen = [f["local_port"] for w1 in _status(b)["workers"] for nif in w1.get("netifs", ())
                    for f in nif["flows"]]
            os.write(w, repr(seen).encode())
        except BaseException as e:
            os.write(w, repr(e).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as got:
        seen = got.read()
    os.waitpid(pid, 0)
    assert seen == "[]", seen
    a.close()


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_an_open_waiting_on_a_worker_that_dies_is_served_by_its_replacement(tapd2):
    """The worker dies (SIGKILL) while A's open waits on it: usnetd hears its end, replaces it and
    asks the open again of the new worker, whose answer A gets."""
    a, _ = raw_session(tapd2.path, "a")
    pid = _workers(tapd2.path)[1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        send_msg(a, P.encode(P.OpenFlow("usnet0", 17, 7009)))
        wait_until(lambda: _unread(a) == 0, 10, "usnetd to read A's open")
        assert not select.select([a], [], [], 0)[0]  # waiting on the stopped worker
    finally:
        os.kill(pid, signal.SIGKILL)
    got = _answer(a)
    assert isinstance(got, P.FlowOpened) and got.local_port == 7009, got
    new = _workers(tapd2.path)[1]
    assert new["pid"] not in (0, pid) and new["restarts"] == 1, new
    assert f"usnetd worker 1 (pid {pid}) died (killed by SIGKILL)" in tapd2.daemon.log_text()
    a.close()


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_a_close_waiting_on_a_hung_worker_fails_with_the_reason(tapd2):
    """A request on a flow of the hung worker (CloseChannel) is not asked again: the flow died with
    the worker, and the client hears why (ENETDOWN, "hung (no answer to CloseChannel ...)")."""
    a, _ = raw_session(tapd2.path, "a")
    send_msg(a, P.encode(P.OpenFlow("usnet0", 17, 7011)))
    opened = _answer(a)
    assert isinstance(opened, P.FlowOpened), opened
    pid = _workers(tapd2.path)[1]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        send_msg(a, P.encode(P.CloseChannel(opened.channel)))
        got = _answer(a)
        assert isinstance(got, P.Error) and got.code == "ENETDOWN", got
        assert f"usnetd worker 1 (pid {pid}) hung (no answer to CloseChannel within" in got.message, got
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)
        a.close()


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_pipelined_requests_of_one_session_are_answered_in_order(tapd2):
    """Requests sent back to back, some relayed to worker 1 (odd ports), some served by usnetd
    (Hello, even ports), are answered in the order sent: a later one never overtakes a relayed
    one's answer."""
    a, _ = raw_session(tapd2.path, "a")
    ports = [7021, 7022, 7023, 7024, 7025, 7027]
    for port in ports:
        send_msg(a, P.encode(P.OpenFlow("usnet0", 17, port)))
        send_msg(a, P.encode(P.Hello(P.PROTOCOL_VERSION, f"after {port}")))
    for port in ports:
        opened = _answer(a)
        assert isinstance(opened, P.FlowOpened) and opened.local_port == port, (port, opened)
        assert isinstance(_answer(a), P.Welcome), port
    a.close()


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_an_open_whose_replacement_dies_too_is_try_again_while_the_worker_is_restarted(tapd2):
    """A's open waits on worker 1, killed; its replacement dies at its start too (the spawner's
    descriptor limit, inherited, leaves it none to open its loop's): worker 1 is restarted again,
    so A hears EAGAIN, "try again", not ENETDOWN, which from a usnetd that answers says the worker
    is left down (usnet.client.rebind fails a rebinding socket for good on it)."""
    import resource

    workers = _workers(tapd2.path)
    pid = workers[1]["pid"]
    (spawner,) = _children(workers[0]["pid"]) - {pid}
    a, _ = raw_session(tapd2.path, "a")
    os.kill(pid, signal.SIGSTOP)
    try:
        send_msg(a, P.encode(P.OpenFlow("usnet0", 17, 7013)))
        wait_until(lambda: _unread(a) == 0, 10, "usnetd to read A's open")
        # read is not relayed: usnetd pre-empted between the two met a dead worker 1 at its first
        # try (EAGAIN "died during this open", a death, not two). Its loop answers B's Hello only
        # once it has sent A's open to worker 1, where it waits (the worker is stopped).
        raw_session(tapd2.path, "b")[0].close()
        held = max(int(fd) for fd in os.listdir(f"/proc/{spawner}/fd"))
        was = resource.prlimit(spawner, resource.RLIMIT_NOFILE)
        # room for the command socket the spawner receives, none for the new worker's loop
        resource.prlimit(spawner, resource.RLIMIT_NOFILE, (held + 2, was[1]))
    finally:
        os.kill(pid, signal.SIGKILL)
    try:
        got = _answer(a)
    finally:
        resource.prlimit(spawner, resource.RLIMIT_NOFILE, was)
    assert isinstance(got, P.Error) and got.code == "EAGAIN", got
    assert "usnetd worker 1 died twice during this open" in got.message, got
    assert f"usnetd worker 1 (pid {pid}) died (killed by SIGKILL)" in tapd2.daemon.log_text()
    a.close()
