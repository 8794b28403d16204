"""Issue 16, red-team audit: a client against usnetd's descriptors, through channel opens.

Every channel open hands the client descriptors (memfds, its doorbells, the write end of its own
bell, usnet.abi.doorbell), duplicated while the reply waits unread. A client that opens and closes
channels in a loop, never reads the replies, or takes them and vanishes with them must leave usnetd
with the descriptors it had (docs/design-notes.md, "Issue 18: a red-team audit of multicast, the
hand-over to workers and the doorbells").
"""

from __future__ import annotations

import os
import select

from tests.helpers.hostile_harness import quick_client, raw_session
from usnet.abi import protocol as P
from usnet.abi.transport import recv_msg, send_msg

LOOPS = 150  # channels opened and closed
UNREAD = 600  # open requests whose replies are never read: more than the socket holds


def test_opening_and_closing_channels_in_a_loop_leaks_no_descriptor(hostile):
    """One session opens both ends of a user pipe and closes them, 150 times, then a last pair it
    leaves open and ends the session: usnetd's descriptor count is back at its baseline, and it
    did not grow with the loop (every close gave back what the open took)."""
    h = hostile
    c, ctl = quick_client(h.path, "churn")
    counts = []
    for i in range(LOOPS):
        a = c.open_pipe(f"churn{i}")
        b = c.open_pipe(f"churn{i}")
        a.close()
        b.close()
        if i in (9, LOOPS - 1):
            counts.append(h.fd_count())
    # 140 more opens and closes: a descriptor kept by each would be 140 more (the slack: what
    # usnetd opens for a moment, such as a reaper's work)
    assert counts[1] <= counts[0] + 4, counts
    c.open_pipe("left")
    c.open_pipe("left")
    ctl.close()
    what = f"{LOOPS} channel pairs opened and closed, one left open at the session's end"
    h.assert_served(what)
    h.assert_recovered(what)
    h.finish(what)


def test_open_replies_never_read_leak_no_descriptor(hostile):
    """A raw session asks for up to 600 channels and reads no reply: the replies fill its socket,
    then usnetd keeps them (each with its descriptors duplicated) until the sixteenth ends the
    session as a slow consumer; then every descriptor of its channels and of the kept replies is
    closed."""
    h = hostile
    sock, sid = raw_session(h.path, "deaf-opener")
    sock.setblocking(False)
    sent = 0
    for i in range(UNREAD):
        # a full socket is waited on (2 s at most): usnetd reads requests while it can keep their
        # replies, so the client goes on until the replies pass what its socket and the sixteen
        # kept hold; stopping at the first full socket left fewer than that in some runs under load
        if not select.select([], [sock], [], 2.0)[1]:
            break
        try:
            send_msg(sock, P.encode(P.OpenPipe(f"deaf{i // 2}")))
            sent += 1
        except (BlockingIOError, OSError):
            break
        if i % 50 == 49 and sid not in {s["id"] for s in h.status("a deaf opener")["sessions"]}:
            break
    what = f"a client that asked for {sent} channels and read no reply"
    h.assert_session_ended(sid, what, h.assert_served(what))
    sock.close()
    h.assert_recovered(what)
    h.finish(what)


def test_a_client_that_takes_its_channels_and_vanishes_leaks_no_descriptor(hostile):
    """A raw session opens 20 channels, reads the replies and their descriptors, and closes its
    socket without a CloseChannel (as a process that dies does): usnetd closes its side of each."""
    h = hostile
    sock, _ = raw_session(h.path, "vanisher")
    taken = []
    for i in range(20):
        send_msg(sock, P.encode(P.OpenPipe(f"gone{i // 2}")))
        raw, fds = recv_msg(sock)
        assert isinstance(P.decode_reply(raw), P.ChannelOpened), P.decode_reply(raw)
        taken += fds
    sock.close()
    for fd in taken:
        os.close(fd)
    what = "a client that vanished holding 20 channels"
    h.assert_served(what)
    h.assert_recovered(what)
    h.finish(what)
