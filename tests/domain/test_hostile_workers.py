"""Issue 36, red-team audit of `usnetd --workers 2`'s newest messages: the host's groups (b"G"),
their source filters (b"M") and what a client can make usnetd say with them.

usnetd tells every worker each first join and last leave of a group (b"G") and each change of a
group's union filter (b"M") on the worker's command socket, the line that also carries usnetd's own
commands (the heartbeat's question, a client's first session there, neighbours). What makes them is
a client's: any client may join and leave a group as fast as usnetd answers, and a worker reads
its command socket a message a loop turn. A client's flood of them may cost the workers a stale
table (told again whole later), never the command line (docs/design-notes.md, "Issue 36").
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from tests.domain import test_workers as _w
from tests.domain.test_workers import _workers

tapd2 = _w.tapd2  # the fixture: usnetd with two workers on a TAP or a veth
pytestmark = pytest.mark.privileged
LIMIT = 10.0
FLIPS = 600  # join and leave pairs of a flow of worker 0: 1,200 b"G" to worker 1 (0.2-0.5 s, under HUNG_AFTER)
GROUP = bytes([239, 9, 9, 9])


def _hears_the_group(d, port: int) -> bool:
    """Whether a usnet socket of worker 1's `port` that joined nothing (IP_MULTICAST_ALL on) hears a
    kernel datagram to GROUP on it, as it does once worker 1 knows the host is in GROUP: asked
    again (a datagram, then a unicast barrier to the same port) until it does, within LIMIT."""
    from usnet import socket as us

    deadline = time.monotonic() + LIMIT
    with us.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k:
        s.bind(("", port))
        s.settimeout(LIMIT)
        k.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(d.host_ip))
        while time.monotonic() < deadline:
            k.sendto(b"group", (socket.inet_ntoa(GROUP), port))
            k.sendto(b"unicast", (d.usnet_ip, port))
            if s.recv(100) == b"group":
                return True
    return False


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_a_client_flood_of_group_changes_leaves_worker_1s_command_line_free(tapd2):
    """Worker 1 is stopped (as a worker busy with a long turn reads nothing meanwhile); a client of
    worker 0 joins and leaves a group 600 times, each a b"G" to worker 1. A new client then opens
    a flow on a port of worker 1, which needs usnetd's word to worker 1 (a new session there): it
    is served once worker 1 runs again, and worker 1 is never judged hung (its heartbeat's question
    was never lost behind the client's messages). Worker 1's host groups are right after it (the
    last word: the group joined), told whole again after what it missed."""
    from usnet.client import Client

    d = tapd2
    pid1 = _workers(d.path)[1]["pid"]
    flooder = Client.connect(d.path)
    ch, _ = flooder.open_flow("usnet0", 17, 47600)
    os.kill(pid1, signal.SIGSTOP)
    got: dict = {}
    try:
        for _ in range(FLIPS):
            flooder.join_group(ch.id, GROUP, True)
            flooder.join_group(ch.id, GROUP, False)
        flooder.join_group(ch.id, GROUP, True)  # the last word: the host is in the group

        def open_on_worker_1() -> None:
            try:
                with Client.connect(d.path) as c:
                    c.open_flow("usnet0", 17, 47601)
                    got["ok"] = True
            except OSError as e:
                got["error"] = e

        t = threading.Thread(target=open_on_worker_1, daemon=True)
        t.start()
        t.join(0.3)  # refused at once, or waiting for worker 1 (served however long it waits)
    finally:
        try:
            os.kill(pid1, signal.SIGCONT)
        except ProcessLookupError:
            pass
    t.join(LIMIT)
    assert got == {"ok": True}, (got, (d.logs / "usnetd.log").read_text()[-3000:])
    assert [w["pid"] for w in _workers(d.path)][1] == pid1
    assert _hears_the_group(d, 47603), "worker 1 never learnt the host is in the group"
    log = (d.logs / "usnetd.log").read_text()
    assert "hung" not in log and "heartbeat" not in log, log[-2000:]
    flooder.close()


@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_a_client_flood_to_its_own_address_across_workers_leaves_both_command_lines_free(tapd2):
    """A client of worker 1 floods datagrams to the netif's own address on a port of worker 0 (each
    handed to usnetd, b"L"), and one of worker 0 floods a port of worker 1 (usnetd to worker 1):
    meanwhile new clients each open a flow on a port of worker 1 (a session there): all served;
    neither worker judged hung; what was handed over or dropped is counted."""
    from usnet import socket as us
    from usnet.client import Client

    d = tapd2
    pid1 = _workers(d.path)[1]["pid"]
    sinks = [us.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for s, port in zip(sinks, (47700, 47701), strict=True):
        s.bind(("", port))  # never read: its ring fills, the rest is dropped there
    stop = threading.Event()

    def flood(sport: int, dport: int) -> None:
        with us.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("", sport))
            s.setblocking(False)
            end = time.monotonic() + 4.0
            for _ in range(200_000):
                if stop.is_set() or time.monotonic() > end:
                    return
                try:
                    s.sendto(bytes(1200), (d.usnet_ip, dport))
                except BlockingIOError:
                    pass

    floods = [threading.Thread(target=flood, args=a, daemon=True) for a in ((47703, 47700), (47702, 47701))]
    for t in floods:
        t.start()
    refused = []
    try:
        for i in range(30):
            with Client.connect(d.path) as c:
                try:
                    c.open_flow("usnet0", 17, 47801 + 2 * i)
                except OSError as e:
                    refused.append(e)
    finally:
        stop.set()
        for t in floods:
            t.join(LIMIT)
        for s in sinks:
            s.close()
    assert not refused, refused[:3]
    counts = [w["netifs"][0]["counts"] for w in _workers(d.path)]
    assert all(c.get("rx_handed_over", 0) > 0 for c in counts), counts
    assert [w["pid"] for w in _workers(d.path)][1] == pid1
    log = (d.logs / "usnetd.log").read_text()
    assert "hung" not in log and "heartbeat" not in log, log[-2000:]
