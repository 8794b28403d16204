"""Hostile clients against a real usnetd (issue 14, "How it must be shown").

Each test runs one attack beside a victim pair that moves numbered,
checksummed payloads through a user pipe (tests/helpers/hostile_harness.py). After
the attack: usnetd is alive and answers Status, the victim's traffic moves
and nothing of it is lost or damaged, every pool's books balance, and once
the attacker is gone usnetd's descriptors and RSS are back near the baseline.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import select
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

from tests.helpers.hostile_harness import HOSTILE, PEERS, VICTIM, Harness, deadline_loop, quick_client, raw_session
from tests.helpers.usnetd import Daemon
from usnet.abi import protocol as P
from usnet.abi import ring as ringmod
from usnet.abi.schema import W_SYNC, RingKind
from usnet.abi.transport import recv_msg, send_msg
from usnet.client.channel import ChannelDefunct

ANSWER_S = 3.0  # seconds the attacker's own requests wait


@pytest.fixture
def hostile(sockdir):
    h = Harness(sockdir)
    try:
        yield h
    finally:
        h.close()


def pipe_info(st: dict, name: str) -> dict | None:
    return next((p for p in st["pipes"] if p["name"] == name), None)


def sync(ch) -> None:
    """Kick `ch` and wait (bounded) until usnetd has answered the kick."""
    seq = ch._words[W_SYNC + ch.role]
    ch._kick()
    for _ in deadline_loop(ANSWER_S):
        if ch._words[W_SYNC + ch.role] != seq:
            return
    pytest.fail("usnetd did not answer a kick")


def assert_working_or_defunct(h: Harness, st: dict, name: str, what: str) -> None:
    """The attacker's pipe is either open with balanced books, or defunct with a reason."""
    p = pipe_info(st, name)
    if p is None or p["defunct"] is None:
        return  # open (assert_books has checked it) or already gone
    assert isinstance(p["defunct"], str) and p["defunct"], f"after {what}: defunct without a reason: {p}"



def close_all(*channels) -> None:
    """Close an attacker's channels, defunct or not."""
    for ch in channels:
        with contextlib.suppress(OSError):
            ch.close()


def leave(h: Harness, what: str, ctl, *channels) -> None:
    """The attacker goes (its channels, then its session); usnetd must be back to its baseline."""
    close_all(*channels)
    ctl.close()
    h.assert_recovered(what)
    h.finish(what)


# ---------------------------------------------------------------- impossible ring counters


def test_impossible_consumer_counter_on_alloc(hostile):
    """The issue's reproducer: ALLOC's consumer at 1<<63 after taking the ring and freeing 10."""
    h = hostile
    c, ctl = quick_client(h.path, "alloc-attacker")
    a = c.open_pipe("atk", ring_size=64, quota=64, packets=128)
    b = c.open_pipe("atk")
    taken: list[int] = []
    for _ in range(64):
        if len(taken) == 64:
            break
        taken += a.alloc(64 - len(taken), timeout=ANSWER_S)
    assert len(taken) == 64
    sync(a)  # usnetd accounts the 64 as taken (and has no quota left to refill with)
    a.free(taken[:10])
    a._alloc.q[ringmod.CONS] = 1 << 63
    a._kick()
    what = "an ALLOC consumer counter of 1<<63"
    st = h.assert_served(what)
    assert_working_or_defunct(h, st, "atk", what)
    leave(h, what, ctl, a, b)


U64_EXTREMES = [0, 1, 63, 64, 65, 1 << 31, 1 << 32, 1 << 62, 1 << 63, (1 << 64) - 2, (1 << 64) - 1]


def test_random_garbage_in_every_client_writable_field(hostile):
    """Hypothesis writes random values into every ring header, ring slot and UMD word of the
    attacker's pipe (both of its ends), then kicks both: usnetd never dies and keeps serving."""
    h = hostile
    c, ctl = quick_client(h.path, "garbage")
    counter = iter(range(10**6))

    u64 = st.one_of(st.sampled_from(U64_EXTREMES), st.integers(0, (1 << 64) - 1), st.integers(0, 4096))
    ring_write = st.tuples(st.just("ring"), st.integers(0, 9), st.sampled_from(["prod", "cons", "flags", "slot"]),
                           st.integers(0, 1 << 16), u64)
    umd_write = st.tuples(st.just("umd"), st.integers(0, 1 << 20), st.integers(0, 7), st.just(0), u64)

    @seed(1414)
    @settings(max_examples=40, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @example(writes=[("ring", 2, "cons", 0, 1 << 63)], traffic=True)  # the reproducer, in short
    @given(writes=st.lists(st.one_of(ring_write, umd_write), min_size=1, max_size=12),
           traffic=st.booleans())
    def attack(writes, traffic):
        name = f"g{next(counter)}"
        a = c.open_pipe(name, ring_size=64, packets=64, quota=64)
        b = c.open_pipe(name)
        if traffic:  # packets in every place first (cached, on the ring, freed), the pool lent out
            with contextlib.suppress(OSError):
                pkts: list[int] = []
                for _ in range(8):
                    pkts += a.alloc(64, timeout=ANSWER_S)
                    if len(pkts) == 64:
                        break
                for p in pkts[:4]:
                    a.write(p, b"x" * 100)
                a.send(pkts[:4])
                sync(a)  # usnetd accounts the whole pool as taken ...
                b.free(b.recv(2, timeout=ANSWER_S))  # ... and two come back with the garbage
        lay = a.layout
        mem = a._mem
        what = f"garbage {writes}"
        for kind, i, field, k, value in writes:
            if kind == "ring":
                r = lay.rings[i % len(lay.rings)]
                if field == "slot":
                    size = 32 if r.kind == RingKind.EVENT else 4
                    at = r.offset + ringmod.HEADER + (k % r.capacity) * size
                    mem[at:at + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
                else:
                    at = r.offset + {"prod": 0, "cons": 64, "flags": 128}[field]
                    width = 4 if field == "flags" else 8
                    mem[at:at + width] = (value & ((1 << 8 * width) - 1)).to_bytes(width, "little")
            else:
                at = lay.umd_offset + (i % lay.max_packets) * lay.umd_size + 4 * field
                mem[at:at + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        a._kick()
        b._kick()
        st_ = h.status(what)
        h.assert_books(st_, what)
        assert_working_or_defunct(h, st_, name, what)
        close_all(a, b)

    attack()
    h.assert_served("random garbage in the attacker's shared memory")
    ctl.close()
    h.assert_recovered("random garbage in the attacker's shared memory")
    h.finish("random garbage")


# ---------------------------------------------------------------- replies too large


def test_status_with_300_sessions_of_long_program_names(hostile):
    h = hostile
    socks = [raw_session(h.path, "p" * 255)[0] for _ in range(300)]
    what = "300 sessions named with 255 characters each, then Status"
    try:
        st = h.assert_served(what)
        assert sum(s["program"] == "p" * 255 for s in st["sessions"]) == 300, \
            "Status does not show every session"
    finally:
        for s in socks:
            s.close()
    h.assert_recovered(what)
    h.finish(what)


def test_status_with_320_pipes_open(hostile):
    h = hostile
    _c, ctl = quick_client(h.path, "many-pipes")
    for i in range(320):
        _, fds = ctl.request(P.OpenPipe(f"pipe{i:03d}", "default", {"ring_size": 8, "packets": 8}))
        for fd in fds:  # the pipe stays open in usnetd while this session lives
            os.close(fd)
    what = "320 ordinary pipes open, then Status"
    try:
        st = h.assert_served(what)
        assert sum(p["name"].startswith("pipe") for p in st["pipes"]) == 320, "Status does not show every pipe"
    finally:
        ctl.close()
    h.assert_recovered(what)
    h.finish(what)


# ---------------------------------------------------------------- doorbells a client makes block


def _fill(fd: int) -> int:
    """Write into pipe `fd` until it is full; returns how many bytes it took."""
    os.set_blocking(fd, False)
    n = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            n += os.write(fd, b"\xff" * 4096)
    return n


def test_bell_made_blocking_and_filled(hostile):
    """Every doorbell descriptor the client holds made blocking, and its bell and its peer's filled.

    The doorbells are pipes (usnet.abi.doorbell): the client's bell (read end), its
    peer's bell (write end) and the kick (write end) are descriptions the client may
    change at will, and so is the write end of its own bell usnetd lent it; usnetd rings
    through write ends of its own. So the client fills both bells to the brim through the
    write ends it was given, clears O_NONBLOCK on everything, and kicks: usnetd answers a
    kick by ringing the (full) bell.
    """
    h = hostile
    c, ctl = quick_client(h.path, "bell-blocker")
    a = c.open_pipe("bell")
    b = c.open_pipe("bell")
    own_writer, peer_bell = a._fds[3:5]  # in the order usnetd sends them (docs/abi.md)
    assert _fill(own_writer) > 0 and _fill(peer_bell) >= 0
    for fd in (*a._fds[2:6], *b._fds[2:6]):
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    a._kick()  # usnetd answers a kick by ringing the bell
    b._kick()
    what = "doorbells made blocking and filled"
    h.assert_served(what)
    leave(h, what, ctl, a, b)


@pytest.mark.slow
def test_kick_made_blocking_and_its_count_stolen(hostile):
    h = hostile
    atk = h.spawn(HOSTILE, "kick-steal", "--name", "steal")
    what = "a kick made blocking, its counts taken back between select() and read()"
    h.assert_served(what)
    h.kill(atk)
    h.assert_recovered(what)
    h.finish(what)


# ---------------------------------------------------------------- a client that never reads


def test_client_that_never_reads_its_replies(hostile):
    h = hostile
    sock, sid = raw_session(h.path, "deaf")
    sock.setblocking(False)
    req = P.encode(P.Status())
    sent = 0
    for _ in deadline_loop(3):
        try:
            for _ in range(100):
                send_msg(sock, req)
                sent += 1
        except (BlockingIOError, OSError):
            break
    what = f"a client that sent {sent} requests and read no reply"
    h.assert_session_ended(sid, what, h.assert_served(what))  # SLOW_CONSUMER
    sock.setblocking(True)
    sock.settimeout(ANSWER_S)
    for _ in range(sent + 1):  # what it queued, then the end of the session
        try:
            if not sock.recv(1 << 17):
                break
        except ConnectionResetError:
            break
    else:
        pytest.fail("the deaf client's session never ended")
    sock.close()
    h.assert_recovered(what)
    h.finish(what)


# ---------------------------------------------------------------- descriptors handed to usnetd


@pytest.mark.privileged
def test_lingering_socket_sent_with_scm_rights(hostile):
    h = hostile
    atk = h.spawn(HOSTILE, "linger-fd")
    what = "a TCP socket with SO_LINGER and unsent data sent with SCM_RIGHTS"
    h.assert_served(what)
    h.kill(atk)
    h.assert_recovered(what)
    h.finish(what)


# ---------------------------------------------------------------- a full descriptor table


NOFILE = 64


def test_full_descriptor_table(sockdir):
    """usnetd with 64 descriptors: an OpenPipe short of descriptors leaks none; a full table
    does not make it spin on accept(), and it accepts again once the attacker leaves."""
    # soft and hard: usnetd takes its whole allowance (the hard limit) when it starts
    h = Harness(sockdir, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE)))
    try:
        _full_descriptor_table(h)
    finally:
        h.close()


def _full_descriptor_table(h: Harness) -> None:
    sessions = []
    while h.fd_count() < NOFILE - 1:
        sessions.append(raw_session(h.path, "filler")[0])
    asker = sessions.pop(0)  # frees one slot too
    asker.settimeout(ANSWER_S)
    for free in range(1, 6):  # OpenPipe needs 6: each attempt fails part of the way
        while h.fd_count() > NOFILE - free and sessions:
            sessions.pop().close()
            for _ in deadline_loop(5):
                if h.fd_count() <= NOFILE - free:
                    break
        before = h.fds()
        send_msg(asker, P.encode(P.OpenPipe(f"half{free}", "default", {"ring_size": 8, "packets": 8})))
        try:
            raw, _fds = asker.recvmsg(1 << 16, socket.CMSG_SPACE(64))[:2]
        except TimeoutError:
            h.assert_alive(f"OpenPipe with {free} descriptors free")
            pytest.fail(f"OpenPipe with {free} descriptors free got no answer")
        reply = P.decode_reply(raw)
        if isinstance(reply, P.ChannelOpened):  # it fitted after all: close it again
            send_msg(asker, P.encode(P.CloseChannel(reply.channel)))
            asker.recv(1 << 16)
        h.assert_alive(f"OpenPipe with {free} descriptors free")
        for _ in deadline_loop(5):
            if h.fd_count() <= len(before):
                break
        else:
            extra = sorted(v for k, v in h.fds().items() if before.get(k) != v)
            pytest.fail(f"an OpenPipe that failed for lack of descriptors ({free} free) kept {extra}"
                        f" (reply: {reply!r})")

    # fill the table, and then some waiting in the backlog
    pending = []
    for _ in range(NOFILE + 8 - h.fd_count()):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.settimeout(ANSWER_S)
        s.connect(h.path)
        pending.append(s)
    for _ in deadline_loop(5):
        if h.fd_count() >= NOFILE:
            break
    else:
        pytest.fail(f"usnetd never filled its table: {h.fd_count()} of {NOFILE}")
    cpu = h.cpu_seconds()
    t = time.monotonic()
    while time.monotonic() - t < 1.0:  # the measuring interval, not a synchronisation
        time.sleep(0.05)
    used = h.cpu_seconds() - cpu
    assert used < 0.5, f"usnetd used {used:.2f} s of CPU in 1 s with a full descriptor table: it spins on accept"
    h.victim.advances(64, 5, "a full descriptor table")

    for s in pending + sessions + [asker]:
        s.close()
    h.assert_served("a full descriptor table, the attacker gone")
    h.assert_recovered("a full descriptor table")
    h.finish("a full descriptor table")


# ---------------------------------------------------------------- crashes


def test_attacker_killed_mid_transfer(hostile):
    h = hostile
    c, ctl = quick_client(h.path, "receiver")
    rx = c.open_pipe("killed")
    sender = h.spawn(PEERS / "pipe_peer.py", "sender", "--name", "killed")
    got = rx.recv(timeout=5)
    assert got
    h.kill(sender)
    assert sender.returncode == -9
    what = "a sender SIGKILLed mid-transfer"
    st = h.assert_served(what)
    for _ in deadline_loop(5):  # defunct and kept for its survivor, or destroyed with its pool
        p = pipe_info(st, "killed")
        if p is None or p["defunct"]:
            break
        st = h.status(what)
    else:
        pytest.fail(f"the pipe of the killed sender is not defunct: {pipe_info(st, 'killed')}")
    assert p is None or p["pool"]["held"] == p["pool"]["in_alloc"] == 0, p
    with pytest.raises(ChannelDefunct):
        while True:  # what it sent before it died, then the news
            rx.free(rx.recv(timeout=ANSWER_S))
    rx.close()
    ctl.close()
    h.assert_recovered(what)
    h.finish(what)


def test_usnetd_sigkilled_under_a_blocked_recv(sockdir):
    """SIGTERM is covered in test_usnetd.py; a SIGKILLed usnetd cannot defunct anything, and
    a client blocked in recv() must still learn of it (ChannelDefunct or an OSError), not hang."""
    d = Daemon(str(sockdir / "s.sock"), sockdir / "usnetd.log", grace=3)
    r, w = os.pipe()
    err = open(sockdir / "waiter.err", "wb")  # noqa: SIM115 (closed in the finally, with the pipe and the daemon)
    try:
        waiter = subprocess.Popen([sys.executable, str(VICTIM), "wait-recv", "--path", d.path,
                                   "--name", "w", "--ready", str(w)], pass_fds=(w,), stderr=err)
        os.close(w)
        w = -1
        ok, _, _ = select.select([r], [], [], 15)
        assert ok and os.read(r, 1) == b"R", "the waiting client never got ready"
        d.proc.kill()
        d.proc.wait(5)
        try:
            rc = waiter.wait(5)
        except subprocess.TimeoutExpired:
            waiter.kill()
            waiter.wait()
            pytest.fail("a client's recv() still blocks 5 s after usnetd was SIGKILLed")
        assert rc in (10, 11), f"recv() after usnetd died: exit {rc}, {(sockdir / 'waiter.err').read_text()}"
    finally:
        if w >= 0:
            os.close(w)
        else:
            with contextlib.suppress(OSError):
                waiter.kill()
            waiter.wait()
        os.close(r)
        err.close()
        d.stop()


# ---------------------------------------------------------------- every request, hostile fields


def _sentinel_answered(sock, mark: str) -> list[P.Reply]:
    """The replies on `sock` up to and including the one that names `mark` (an OpenAdvisory of
    a netif no domain has, sent after each attack), their descriptors closed."""
    got: list[P.Reply] = []
    for _ in deadline_loop(ANSWER_S):
        raw, fds = recv_msg(sock)
        for fd in fds:
            os.close(fd)
        assert raw, "usnetd hung up on the attacker instead of answering"
        reply = P.decode_reply(raw)
        got.append(reply)
        if isinstance(reply, P.Error) and mark in reply.message:
            return got
    pytest.fail(f"usnetd did not answer {mark}")


def test_every_request_type_with_hostile_fields_gets_an_answer(hostile):
    """Each control request type, its fields drawn by Hypothesis from the types alone (so past
    every range the protocol declares: negative channels, huge counts, odd names, bytes of any
    length), to a real usnetd on one session: each is served or refused, never ends the session
    nor usnetd; the victim's traffic moves on; once the attacker leaves, usnetd is back to its
    baseline."""
    h = hostile
    sock, _sid = raw_session(h.path, "every-request")
    counter = iter(range(10**6))

    @seed(1616)
    @settings(max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(req=st.one_of(*(st.builds(t) for t in P.REQUEST_TYPES)))
    def attack(req):
        try:
            data = P.encode(req)
        except (OverflowError, P.ProtocolError):
            return  # no msgpack of it: nothing to send
        mark = f"sentinel-{next(counter)}"
        send_msg(sock, data)
        send_msg(sock, P.encode(P.OpenAdvisory(mark)))
        replies = _sentinel_answered(sock, mark)
        assert len(replies) <= 2, replies

    attack()
    sock.close()
    h.assert_served("every request type with hostile fields")
    h.assert_recovered("every request type with hostile fields")
    h.finish("every request type with hostile fields")


# ---------------------------------------------------------------- what the tools show of a client


def test_a_client_s_label_and_pipe_name_cannot_break_or_drive_usnet_status(hostile):
    """A client names itself (Hello) and its pipe with rich markup that does not close and with
    terminal control sequences: `usnet status`, which shows both to whoever runs it (root sees
    every session), prints them as text, the sequences made visible (as ps(1) does), and exits 0."""
    h = hostile
    evil = "[/x]\x1b]0;pwned\x07\x1b[2J[link=file:///]"
    sock, _sid = raw_session(h.path, evil)
    try:
        send_msg(sock, P.encode(P.OpenPipe("[/y]\x1b[31m", "default", {"packets": 64})))
        raw, fds = recv_msg(sock)
        for fd in fds:
            os.close(fd)
        assert isinstance(P.decode_reply(raw), P.ChannelOpened), P.decode_reply(raw)
        env = {**os.environ, "COLUMNS": "400", "TERM": "xterm"}
        r = subprocess.run([sys.executable, "-m", "usnet", "status", "--socket", h.path],
                           capture_output=True, text=True, timeout=30, env=env)
    finally:
        sock.close()
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "[/x]?]0;pwned??[2J[link=file:///]" in r.stdout and "[/y]?[31m" in r.stdout, r.stdout
    h.assert_recovered("markup and control sequences in names")
    h.finish("markup and control sequences in names")
