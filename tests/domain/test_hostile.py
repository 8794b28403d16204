"""A hostile client against an embedded domain (docs/architecture.md, "Memory", "Packet pools", "Channels and rings").

The client side of a channel is untrusted: everything it can write (ring
counters, ring slots, UMD records, control messages) is written here directly,
the way a hostile process would through its own mapping, and the nexus must
refuse it, count it, keep its books exact, and keep serving everyone else.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time

import msgspec
import numpy as np
import pytest

from tests.helpers.util import wait_until
from usnet.abi import protocol as P
from usnet.abi.events import DefunctReason, EventType, RefusalReason
from usnet.abi.ring import CONS, PROD, RingCorrupt
from usnet.abi.transport import recv_msg, send_msg
from usnet.abi.umd import UMD_WORDS
from usnet.client import Client
from usnet.client.channel import BadPacket, ChannelDefunct, ChannelError, PeerGone
from usnet.domain.loop import REAPER_BACKLOG, Domain
from usnet.domain.mem import pool as poolmod
from usnet.domain.userpipe import ABUSE_LIMIT

# ---------------------------------------------------------------- helpers


_LOCAL: list[Client] = []  # the in-process clients of the test running, closed with its domain


def local(domain: Domain) -> Client:
    """`Client.local`, closed when the `domain` fixture ends: its channels' descriptors, else
    open till a collection finds them."""
    c = Client.local(domain)
    _LOCAL.append(c)
    return c


@pytest.fixture
def domain():
    d = Domain()
    try:
        yield d
    finally:
        try:
            while _LOCAL:
                _LOCAL.pop().close()
        finally:
            d.stop()


def open_pair(client: Client, domain: Domain, name: str, **attrs: int):
    a = client.open_pipe(name, **attrs)
    b = client.open_pipe(name)
    return a, b, domain.pipe(name)


def roundtrip(tx, rx, data: bytes = b"still served") -> None:
    tx.send_bytes(data)
    assert rx.recv_bytes(timeout=2) == data


def refusals(ch) -> list[tuple[int, int]]:
    """(code, packet) of every REFUSED event posted on `ch` since the last call."""
    return [(e.code, e.packet) for e in ch.events() if e.type == EventType.REFUSED]


def pipe_status(domain: Domain, name: str) -> dict | None:
    for p in domain.status()["pipes"]:
        if p["name"] == name:
            return p
    return None


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def assert_all_back(pipe) -> None:
    """The books balance and no packet of the pipe is lent to anyone."""
    pipe.pool.check()
    c = pipe.pool.counts()
    assert c["held"] == 0 and c["in_alloc"] == 0, c
    assert pipe.pool.held == [0, 0]


# ---------------------------------------------------------------- impossible ring counters


def test_bad_free_producer_counter_refused_counted_then_defunct(domain):
    rnd = random.Random(0xF4EE)
    c = local(domain)
    x, y, _ = open_pair(c, domain, "bystander")
    a, b, pipe = open_pair(c, domain, "abuse")

    # a's packets in every place: in a's cache, held by b, still on the ring to b
    pkts = a.alloc(4)
    for p in pkts:
        a.write(p, b"data")
    assert a.send(pkts[:2]) == 2
    got = b.recv(2, timeout=1)
    assert len(got) == 2
    assert a.send(pkts[2:3]) == 1  # published after b last looked at the ring
    domain.kick_channel(a.id)  # settle the books before the abuse
    before = pipe.pool.counts()
    assert before["held"] >= 4

    fr = a._free
    fr.q[PROD] = fr.q[CONS] + fr.capacity + 1 + rnd.randrange(1 << 40)
    domain.kick_channel(a.id)

    st = pipe_status(domain, "abuse")
    assert st["defunct"] is None
    assert st["ends"][a.role]["violations"] == 1
    assert st["ends"][b.role]["violations"] == 0
    assert a.stats()["bad_counter"] == 1
    assert a.stats()["refused"] == 0 and a.stats()["freed"] == 0
    assert refusals(a) == [(RefusalReason.BAD_COUNTER, 0xFFFFFFFF)]
    assert refusals(b) == []
    pipe.pool.check()
    assert pipe.pool.counts() == before  # nothing was taken back on the strength of that counter
    roundtrip(x, y)

    for n in range(2, ABUSE_LIMIT + 1):
        assert pipe.defunct_reason is None, f"defunct after {n - 1} violations"
        domain.kick_channel(a.id)
        assert pipe_status(domain, "abuse")["ends"][a.role]["violations"] == n
    st = pipe_status(domain, "abuse")
    assert st["defunct"] == "ABUSE"
    assert st["pool"]["held"] == 0 and st["pool"]["in_alloc"] == 0
    assert [e["held"] for e in st["ends"]] == [0, 0]
    assert_all_back(pipe)

    with pytest.raises(ChannelDefunct) as ei:
        a.recv(timeout=1)
    assert not isinstance(ei.value, PeerGone)
    assert ei.value.reason == DefunctReason.ABUSE
    with pytest.raises(PeerGone) as ei:
        b.recv(timeout=1)
    assert ei.value.errno == errno.EPIPE
    with pytest.raises(PeerGone):
        b.send(got)

    # the domain keeps serving: the pipe opened before, and one opened after
    roundtrip(x, y)
    roundtrip(y, x)
    p, q, _after = open_pair(c, domain, "after")
    roundtrip(p, q)
    assert domain.status()["control_errors"] == 0
    assert_all_back(pipe)


@pytest.mark.parametrize("how", ["ahead", "max", "behind"])
def test_bad_alloc_consumer_counter_refused_counted_then_defunct(domain, how):
    rnd = random.Random(hash(how) & 0xFFFF)
    c = local(domain)
    x, y, _ = open_pair(c, domain, "bystander")
    a, b, pipe = open_pair(c, domain, "abuse")
    domain.kick_channel(a.id)  # fill a's ALLOC ring
    al = a._alloc
    if how == "behind":
        a.alloc(1)  # takes the whole ring into its cache
        domain.kick_channel(a.id)  # the nexus accounts for that, and refills
        bogus = rnd.randrange(0, al.q[CONS])
    elif how == "ahead":
        bogus = al.q[PROD] + 1 + rnd.randrange(1 << 40)
    else:
        bogus = (1 << 64) - 1
    before = pipe.pool.counts()

    al.q[CONS] = bogus
    domain.kick_channel(a.id)

    st = pipe_status(domain, "abuse")
    v = st["ends"][a.role]["violations"]
    assert 1 <= v < ABUSE_LIMIT
    assert st["defunct"] is None
    assert a.stats()["bad_counter"] == v
    ev = refusals(a)
    assert ev and set(ev) == {(RefusalReason.BAD_COUNTER, 0xFFFFFFFF)}
    pipe.pool.check()
    assert pipe.pool.counts() == before  # no packet changed hands on a bogus counter
    roundtrip(x, y)

    for _ in range(ABUSE_LIMIT):
        if pipe.defunct_reason is not None:
            break
        domain.kick_channel(a.id)
    st = pipe_status(domain, "abuse")
    assert st["defunct"] == "ABUSE"
    assert st["ends"][a.role]["violations"] >= ABUSE_LIMIT
    assert st["ends"][b.role]["violations"] == 0
    assert st["pool"]["held"] == 0 and st["pool"]["in_alloc"] == 0
    assert_all_back(pipe)

    with pytest.raises(ChannelDefunct) as ei:
        a.recv(timeout=1)
    assert ei.value.reason == DefunctReason.ABUSE
    with pytest.raises(PeerGone):
        b.alloc(1, timeout=1)  # b's cache is cold: it must ask, and hears the news
    with pytest.raises(PeerGone):
        b.recv(timeout=1)

    roundtrip(x, y)
    p, q, _ = open_pair(c, domain, "after")
    roundtrip(q, p)


def test_alloc_on_defunct_channel_with_cold_cache_raises(domain):
    c = local(domain)
    a, _b, pipe = open_pair(c, domain, "abuse")
    a._free.q[PROD] = a._free.q[CONS] + a._free.capacity + 7
    for _ in range(ABUSE_LIMIT):
        domain.kick_channel(a.id)
    assert pipe.defunct_reason == DefunctReason.ABUSE
    with pytest.raises(ChannelDefunct) as ei:
        a.alloc(1, timeout=1)
    assert ei.value.reason == DefunctReason.ABUSE


def test_alloc_on_defunct_channel_with_warm_cache_raises(domain):
    c = local(domain)
    a, _b, pipe = open_pair(c, domain, "abuse")
    a.alloc(1)  # the cache now holds the rest of the ALLOC ring
    assert a._cache
    a._free.q[PROD] = a._free.q[CONS] + a._free.capacity + 7
    for _ in range(ABUSE_LIMIT):
        domain.kick_channel(a.id)
    assert pipe.defunct_reason == DefunctReason.ABUSE
    assert_all_back(pipe)
    with pytest.raises(ChannelDefunct):
        a.alloc(1, timeout=1)


# ---------------------------------------------------------------- bad indices on the FREE ring


def _prepared(domain: Domain):
    """a holds 64 packets (its cache), 64 more sit IN_ALLOC on its ALLOC ring, the rest is free."""
    c = local(domain)
    x, y, _ = open_pair(c, domain, "bystander")
    a, b, pipe = open_pair(c, domain, "hostile", ring_size=64, packets=512)
    domain.kick_channel(a.id)
    a.alloc(1)
    domain.kick_channel(a.id)
    counts = pipe.pool.counts()
    assert counts["held"] == 64 and counts["in_alloc"] == 64, counts
    return c, a, b, pipe, (x, y)


def _free_packet(pipe) -> int:
    return int(np.flatnonzero(pipe.pool.state == poolmod.FREE)[-1])


def _in_alloc_packet(ch) -> int:
    """The next packet on ch's ALLOC ring, peeked without consuming it."""
    al = ch._alloc
    assert al.q[PROD] - al.q[CONS] > 0
    return int(al.slots[al.q[CONS] & al.mask])


@pytest.mark.parametrize("case", ["out_of_range", "purged", "free", "in_alloc", "duplicate", "mixed"])
def test_free_ring_bad_indices_refused_exactly(domain, case):
    _c, a, b, pipe, (x, y) = _prepared(domain)
    cap = pipe.pool.capacity
    held = a._cache[0]
    fresh = _free_packet(pipe)
    queued = _in_alloc_packet(a)
    purged = int(np.flatnonzero(pipe.pool.state == poolmod.PURGED)[0])
    good: list[int] = []
    if case == "out_of_range":
        push = [cap, cap + 12345, 0xFFFFFFFF]
        want = [(RefusalReason.OUT_OF_RANGE, i) for i in push]
    elif case == "purged":
        push = [purged]
        want = [(RefusalReason.NOT_OWNED, purged)]
    elif case == "free":
        push = [fresh]
        want = [(RefusalReason.NOT_OWNED, fresh)]
    elif case == "in_alloc":
        push = [queued]
        want = [(RefusalReason.IN_ALLOC_RING, queued)]
    elif case == "duplicate":
        a._cache.remove(held)
        push = [held, held]
        good = [held]
        want = [(RefusalReason.DUPLICATE, held)]
    else:
        a._cache.remove(held)
        push = [cap + 1, held, fresh, queued, held]
        good = [held]
        want = [(RefusalReason.OUT_OF_RANGE, cap + 1), (RefusalReason.NOT_OWNED, fresh),
                (RefusalReason.IN_ALLOC_RING, queued), (RefusalReason.DUPLICATE, held)]
    before = pipe.pool.counts()
    stats = a.stats()

    assert a._free.push(push) == len(push)
    domain.kick_channel(a.id)

    after = pipe.pool.counts()
    pipe.pool.check()
    assert after["free"] == before["free"] + len(good)
    assert after["held"] == before["held"] - len(good)
    assert after["in_alloc"] == before["in_alloc"]
    assert after["purged"] == before["purged"]
    s = a.stats()
    assert s["refused"] - stats["refused"] == len(want)
    assert s["freed"] - stats["freed"] == len(good)
    assert s["held"] == stats["held"] - len(good)
    assert s["bad_counter"] == 0
    assert set(refusals(a)) == set(want)
    info = pipe_status(domain, "hostile")
    assert info["ends"][a.role]["refused"] == len(want)
    assert info["ends"][a.role]["violations"] == 1
    assert info["ends"][b.role]["violations"] == 0 and info["ends"][b.role]["refused"] == 0
    assert info["defunct"] is None
    if case == "in_alloc":  # still on the ring, still a's to take
        assert pipe.pool.state[queued] == poolmod.IN_ALLOC
    # the channel and its neighbour keep working
    roundtrip(a, b)
    roundtrip(x, y)
    domain.kick_channel(a.id)
    pipe.pool.check()


def test_one_refusal_event_per_refused_index(domain):
    _c, a, _b, pipe, _ = _prepared(domain)
    cap = pipe.pool.capacity
    a._free.push([cap + 3])
    domain.kick_channel(a.id)
    assert a.stats()["refused"] == 1
    assert refusals(a) == [(RefusalReason.OUT_OF_RANGE, cap + 3)]


def test_garbage_event_consumer_counter_only_drops_events(domain):
    _c, a, b, pipe, (x, y) = _prepared(domain)
    cap = pipe.pool.capacity
    a._events.q[CONS] = (1 << 63) + random.Random(5).randrange(1 << 40)
    a._free.push([cap + 9])
    domain.kick_channel(a.id)
    assert a.stats()["refused"] == 1
    assert a.stats()["events_dropped"] >= 1
    pipe.pool.check()
    assert pipe.defunct_reason is None
    roundtrip(a, b)
    roundtrip(x, y)


# ---------------------------------------------------------------- garbage in the data path


@pytest.mark.parametrize("bad", ["max_packets", "far", "u32max"])
def test_garbage_index_on_pipe_ring_is_bad_packet(domain, bad):
    c = local(domain)
    a, b, pipe = open_pair(c, domain, "garbage")
    idx = {"max_packets": b.max_packets, "far": b.max_packets + 4096, "u32max": 0xFFFFFFFF}[bad]
    assert a._tx.push([idx]) == 1
    with pytest.raises(BadPacket) as ei:
        b.recv(timeout=1)
    assert ei.value.errno == errno.EPROTO
    # not a crash: the channel goes on, and the books are untouched
    roundtrip(a, b)
    domain.kick_channel(b.id)
    pipe.pool.check()
    assert pipe.defunct_reason is None


def test_garbage_producer_counter_on_pipe_ring_raises_not_hangs(domain):
    c = local(domain)
    a, b, pipe = open_pair(c, domain, "garbage")
    a._tx.q[PROD] = 1 << 50
    with pytest.raises(OSError):
        b.recv(timeout=1)
    pipe.pool.check()


@pytest.mark.parametrize("length", ["stride+1", "u32max"])
def test_garbage_umd_length_is_bad_packet(domain, length):
    c = local(domain)
    a, b, pipe = open_pair(c, domain, "garbage")
    bad = {"stride+1": a.stride + 1, "u32max": 0xFFFFFFFF}[length]
    p1, p2 = a.alloc(2)
    for p in (p1, p2):
        a.write(p, b"x" * 10)
        a.umd[p * UMD_WORDS] = bad
    assert a.send([p1, p2]) == 2
    (g1,) = b.recv(1, timeout=1)
    assert g1 == p1
    with pytest.raises(BadPacket) as ei:
        b.view(g1)
    assert ei.value.errno == errno.EPROTO
    with pytest.raises(BadPacket):
        b.copies([g1])  # the engine's batch read checks each packet as `view` does
    b.free([g1])
    with pytest.raises(BadPacket):
        b.recv_bytes(timeout=1)  # and recv_bytes still gives the packet back
    freed = b.stats()["freed"]
    domain.kick_channel(b.id)
    assert b.stats()["freed"] == freed + 2
    pipe.pool.check()
    roundtrip(a, b)


# ---------------------------------------------------------------- the control socket


@pytest.fixture
def session(domain):
    s = domain.socketpair_session()
    s.settimeout(5)
    try:
        yield s
    finally:
        s.close()


def ask(sock, data: bytes, fds=()) -> tuple[P.Reply, list[int]]:
    if fds or len(data) <= P.MAX_MESSAGE:
        send_msg(sock, data, fds)
    else:
        sock.send(data)
    raw, got = recv_msg(sock)
    assert raw, "the domain hung up"
    return P.decode_reply(raw), got


GARBAGE = {
    "one_byte": b"\x00",
    "random": random.Random(7).randbytes(64),
    "msgpack_int": b"\x2a",
    "untagged_map": msgspec.msgpack.encode({"x": 1}),
    "unknown_tag": msgspec.msgpack.encode({"t": "Bogus"}),
    "reply_as_request": P.encode(P.Welcome(1, 1, 1, 1)),
    "wrong_field_type": msgspec.msgpack.encode({"t": "OpenPipe", "name": 5}),
    "name_too_long": msgspec.msgpack.encode({"t": "OpenPipe", "name": "x" * 300}),
    "negative_channel": msgspec.msgpack.encode({"t": "Resize", "channel": -1}),
    "truncated": P.encode(P.OpenPipe("p", "default", {"packets": 64}))[:-3],
    "oversize": b"\xc4" + b"\x00" * P.MAX_MESSAGE,
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_malformed_control_message_gets_eproto(domain, session, name):
    reply, fds = ask(session, P.encode(P.Hello(P.PROTOCOL_VERSION)))
    assert isinstance(reply, P.Welcome) and not fds
    errors = domain.status()["control_errors"]

    reply, fds = ask(session, GARBAGE[name])
    assert isinstance(reply, P.Error) and reply.code == "EPROTO", reply
    assert fds == []
    st = domain.status()
    assert st["control_errors"] == errors + 1
    (sess,) = [s for s in st["sessions"] if s["id"] == 1]
    assert sess["refused"] == 1

    # the same session still works, and so does the domain for everybody else
    reply, _ = ask(session, P.encode(P.Status()))
    assert isinstance(reply, P.StatusReply)
    c = local(domain)
    a, b, _ = open_pair(c, domain, "after")
    roundtrip(a, b)


@pytest.mark.parametrize("version", [0, P.PROTOCOL_VERSION + 1, 0xFFFFFFFF])
def test_wrong_protocol_version_gets_error_then_valid_client_works(domain, session, version):
    reply, _ = ask(session, P.encode(P.Hello(version)))
    assert isinstance(reply, P.Error) and reply.code == "EPROTO"
    assert domain.status()["control_errors"] == 1
    reply, _ = ask(session, P.encode(P.Hello(P.PROTOCOL_VERSION, "retry")))
    assert isinstance(reply, P.Welcome)

    # a well-behaved client over a socket, talking to a local one through a pipe
    other = domain.socketpair_session()
    remote = Client.from_socket(other)
    near = local(domain)
    a = near.open_pipe("mixed")
    b = remote.open_pipe("mixed")
    roundtrip(a, b)
    roundtrip(b, a)
    b.close()
    a.close()
    remote.close()
    st = domain.status()
    assert st["control_errors"] == 1
    assert st["pipes"] == []


@pytest.mark.parametrize("given", ["bell read end", "peer's bell", "a file"])
def test_a_bell_write_end_that_is_not_one_is_refused_and_nothing_leaks(domain, given):
    """The write end of its own bell a client is lent (fds[3], docs/abi.md "Doorbells") must be
    one: a read end, another pipe's write end or a file would ring nobody (a wake-up lost) or
    write where it should not. The client refuses the channel (EINVAL) and closes what came."""
    c = local(domain)
    asked = c._request
    came: list[int] = []

    def swapped(req):
        reply, fds = asked(req)
        if isinstance(reply, P.ChannelOpened) and fds:
            os.close(fds[3])
            fds[3] = (os.dup(fds[2]) if given == "bell read end" else os.dup(fds[4]) if given == "peer's bell"
                      else os.open("/dev/null", os.O_WRONLY))
            came.extend(fds)
        return reply, fds

    c._request = swapped
    with pytest.raises(ChannelError) as e:
        c.open_pipe("lent")
    assert e.value.errno == errno.EINVAL and "bell's write end" in str(e.value)
    assert c.channels == {}
    for fd in came:  # each closed: no number of them refers to anything now
        with pytest.raises(OSError):
            os.fstat(fd)
    c._request = asked
    a, b, _ = open_pair(c, domain, "after")  # the client goes on
    roundtrip(a, b)
    c.close()


def test_scm_rights_descriptors_are_refused_and_closed_not_leaked(domain, session):
    """Descriptors a client sends are refused (EPROTO) and closed by the reaper, off the loop."""
    assert isinstance(ask(session, P.encode(P.Hello(P.PROTOCOL_VERSION)))[0], P.Welcome)
    base = fd_count()

    def sent_and_closed(payload: bytes, fds: list[int]) -> None:
        r, w = os.pipe()
        reply, got = ask(session, payload, [w, *fds])
        assert isinstance(reply, P.Error) and reply.code == "EPROTO" and got == []
        for fd in [w, *fds]:
            os.close(fd)
        assert domain.reaper.wait_idle(5), "the reaper did not close what was sent"
        os.set_blocking(r, False)
        assert os.read(r, 1) == b""  # EOF: no copy of the write end survives in the domain
        os.close(r)
        assert fd_count() == base

    sent_and_closed(P.encode(P.Status()), [os.eventfd(0) for _ in range(3)])  # a valid request
    sent_and_closed(b"\xff\xfe garbage", [])
    sent_and_closed(P.encode(P.Status()), [])
    sent_and_closed(P.encode(P.Status()), [os.eventfd(0) for _ in range(50)])
    assert domain.status()["control_errors"] == 4
    # and the session still opens channels normally
    reply, got = ask(session, P.encode(P.OpenPipe("after-fds")))
    assert isinstance(reply, P.ChannelOpened) and len(got) == 6
    for fd in got:
        os.close(fd)

    # a flood of descriptors beyond what the reaper may hold: the session is ended (PROTOCOL)
    flood = [os.eventfd(0) for _ in range(REAPER_BACKLOG + 1)]
    send_msg(session, P.encode(P.Status()), flood)
    for fd in flood:
        os.close(fd)
    assert recv_msg(session) == (b"", [])
    assert domain.reaper.wait_idle(5)
    # the session's pipe went with it, and the domain's end of the session (the loop lets go of
    # the last references just after it closed the socket)
    wait_until(lambda: fd_count() == base - 1, 5, "the domain to let go of the ended session")



def test_third_opener_gets_eaddrinuse(domain, session):
    c = local(domain)
    a, b, pipe = open_pair(c, domain, "two")
    with pytest.raises(P.ControlError) as ei:
        c.open_pipe("two")
    assert ei.value.code == "EADDRINUSE" and ei.value.errno == errno.EADDRINUSE
    remote = Client.from_socket(session)
    with pytest.raises(P.ControlError) as ei:
        remote.open_pipe("two")
    assert ei.value.code == "EADDRINUSE"
    assert domain.status()["control_errors"] == 2
    roundtrip(a, b)
    roundtrip(b, a)
    st = pipe_status(domain, "two")
    assert [e["channel"] for e in st["ends"]] == [a.id, b.id]
    pipe.pool.check()


def test_other_session_cannot_touch_a_channel(domain, session):
    c = local(domain)
    a, b, _pipe = open_pair(c, domain, "mine")
    assert isinstance(ask(session, P.encode(P.Hello(P.PROTOCOL_VERSION)))[0], P.Welcome)
    for req in (P.CloseChannel(a.id), P.Resize(a.id, ring_size=64), P.Kick(b.id)):
        reply, _ = ask(session, P.encode(req))
        assert isinstance(reply, P.Error) and reply.code == "ENOENT", (req, reply)
    st = pipe_status(domain, "mine")
    assert st["defunct"] is None and not any(e["closed"] for e in st["ends"])
    roundtrip(a, b)
    assert a.ring_limit == 1024


# ---------------------------------------------------------------- found while writing these


def test_recv_after_defunct_never_returns_zeroed_slots(domain):
    c = local(domain)
    a, b, pipe = open_pair(c, domain, "abuse")
    pkts = a.alloc(3)
    for p in pkts:
        a.write(p, b"data")
    assert a.send(pkts) == 3
    assert b.recv(2, timeout=1) == pkts[:2]  # b has seen all three published
    a._free.q[PROD] = a._free.q[CONS] + a._free.capacity + 7
    for _ in range(ABUSE_LIMIT):
        domain.kick_channel(a.id)
    assert pipe.defunct_reason == DefunctReason.ABUSE
    assert_all_back(pipe)
    with pytest.raises(PeerGone):
        got = b.recv(timeout=1)
        pytest.fail(f"recv on a defunct channel returned {got}; pool says {pipe.pool.state[got]}")


def test_closing_both_ends_of_a_defunct_pipe_leaves_other_fds_alone(domain):
    """Regression (was a bug): UserPipe.destroy() runs twice when both ends close after a
    defunct (close_end calls destroy() whenever the other end is closed or the group is
    defunct) and PipeEnd.close_fds() closes the bell/kick numbers again: by then they
    may belong to another pipe (usnet/domain/userpipe.py close_end/destroy)
    """
    c = local(domain)
    a, b, pipe = open_pair(c, domain, "abuse")
    a._free.q[PROD] = a._free.q[CONS] + a._free.capacity + 7
    for _ in range(ABUSE_LIMIT):
        domain.kick_channel(a.id)
    assert pipe.defunct_reason == DefunctReason.ABUSE
    a.close()  # the group is destroyed: its fds are closed and their numbers free
    p, q, newer = open_pair(c, domain, "newer")  # takes those numbers
    mine = [newer.arena.shared_fd, newer.arena.ro_fd] + [
        fd for e in newer.ends for bell in (e.bell, e.kick)
        for fd in (bell.wait_fd, bell.ring_fd, bell.own_ring_fd, bell.sleeper_ring_fd) if fd >= 0]
    try:
        b.close()
        closed = []
        for fd in mine:
            try:
                os.fstat(fd)
            except OSError:
                closed.append(fd)
        assert closed == [], f"closing the old pipe closed the new pipe's fds {closed}"
    finally:
        # closing the new pipe must not close numbers that now belong to someone else
        def alive(fd: int) -> bool:
            try:
                os.fstat(fd)
                return True
            except OSError:
                return False

        for e in newer.ends:
            for bell in (e.bell, e.kick):
                for name in ("wait_fd", "ring_fd", "own_ring_fd", "sleeper_ring_fd"):
                    if getattr(bell, name) >= 0 and not alive(getattr(bell, name)):
                        setattr(bell, name, os.eventfd(0))
        p.close()
        q.close()


def test_receiver_blocked_in_recv_gets_peergone_when_group_defuncted(domain):
    """Regression (was a bug): Channel._recv_wait calls rx.available() outside the
    RingCorrupt handler: when the group is defuncted while a receiver sleeps in recv()
    (shared memory zeroed, producer counter now 0 < its consumer), the receiver gets
    RingCorrupt instead of PeerGone (usnet/client/channel.py _recv_wait)
    """
    c = local(domain)
    a, b, pipe = open_pair(c, domain, "abuse")
    roundtrip(a, b)  # b has consumed once: its RX consumer counter is 1
    out: list[BaseException | list[int]] = []

    def wait() -> None:
        try:
            out.append(b.recv(timeout=3))
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=wait)
    t.start()
    try:
        deadline = time.monotonic() + 2
        while not a._tx.need_wakeup():  # b is asleep on its doorbell
            assert time.monotonic() < deadline, "receiver never went to sleep"
            time.sleep(0.001)
        a._free.q[PROD] = a._free.q[CONS] + a._free.capacity + 7
        for _ in range(ABUSE_LIMIT):
            domain.kick_channel(a.id)
        assert pipe.defunct_reason == DefunctReason.ABUSE
    finally:
        t.join(5)
    assert not t.is_alive()
    assert len(out) == 1
    assert isinstance(out[0], PeerGone), repr(out[0])
    assert not isinstance(out[0], RingCorrupt)
