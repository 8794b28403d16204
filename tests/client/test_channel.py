"""Channels through the public API, in one process (docs/architecture.md, "Packet pools", "Channels and rings").

`usnet.Domain()` embedded, `usnet.Client.local(domain)`, `client.open_pipe()`:
the same data path a cross-process client uses, with method calls for the
control path and for kicks. Private attributes are touched only where a test
must simulate what another process would do at a precise moment.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import select
import selectors
import threading
import time

import pytest

import usnet
from usnet import ChannelDefunct, ChannelError, NoBuffers, PeerGone
from usnet.abi import ring as ringmod
from usnet.abi.events import DefunctReason, EventType, RefusalReason
from usnet.abi.protocol import ControlError
from usnet.abi.schema import PRESETS
from usnet.abi.umd import UMD_WORDS

_names = itertools.count()


@pytest.fixture
def domain():
    d = usnet.Domain()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def client(domain):
    c = usnet.Client.local(domain)
    try:
        yield c
    finally:
        c.close()


def pipe(client, schema: str = "default", **attrs):
    """Both ends of a fresh user pipe."""
    name = f"test-{next(_names)}"
    a = client.open_pipe(name, schema, **attrs)
    b = client.open_pipe(name)
    return a, b


def recv_all(ch, n: int, timeout: float = 2.0) -> list[int]:
    """Receive exactly n packets (one recv may return fewer)."""
    out: list[int] = []
    while len(out) < n:
        out += ch.recv(n - len(out), timeout=timeout)
    return out


def alloc_all(ch, n: int) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        out += ch.alloc(n - len(out), timeout=0)
    return out


# -- round trips -------------------------------------------------------------------------------


def test_send_recv_free_round_trip(domain, client):
    a, b = pipe(client, ring_size=64, packets=128, max_packets=256)
    assert (a.role, b.role) == (0, 1)
    pkts = alloc_all(a, 10)
    assert len(set(pkts)) == 10 and all(0 <= p < a.max_packets for p in pkts)
    payloads = [os.urandom(1 + 97 * i) for i in range(10)]
    for p, data in zip(pkts, payloads):
        a.write(p, data)
        assert a.length(p) == len(data)
    assert a.send(pkts) == 10
    assert b.poll() == 10
    got = recv_all(b, 10)
    assert got == pkts  # zero-copy: the same packets, in order
    assert [bytes(b.view(p)) for p in got] == payloads
    b.free(got)
    # the FREE ring is drained at the next sync of either end
    b.alloc(1, timeout=0)
    pool = domain.pipes[next(iter(domain.pipes))].pool
    pool.check()
    stats = b.stats()
    assert stats["freed"] == 10 and stats["refused"] == 0


def test_send_bytes_recv_bytes(client):
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    msgs = [b"", b"x", b"hello world", bytes(range(256)) * 8]
    for m in msgs:
        a.send_bytes(m)
    assert [b.recv_bytes(timeout=2) for _ in msgs] == msgs
    # and back the other way
    b.send_bytes(b"pong")
    assert a.recv_bytes(timeout=2) == b"pong"


def test_write_too_large_and_bad_length(client):
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    (p,) = a.alloc(1)
    with pytest.raises(ValueError):
        a.write(p, bytes(a.stride + 1))
    with pytest.raises(ValueError):
        a.set_length(p, a.stride + 1)
    with pytest.raises(ValueError):
        a.set_length(p, -1)
    buf = a.buffer(p)
    assert len(buf) == a.stride
    buf[:3] = b"abc"
    a.set_length(p, 3)
    a.send([p])
    (q,) = b.recv(1, timeout=2)
    assert bytes(b.view(q)) == b"abc"


def test_multi_buflet_packet_intact(client):
    a, b = pipe(client, "default", buf_size=2048, buflets=32, ring_size=64, packets=16, max_packets=64)
    assert a.stride == 65536 and a.layout.buf_size == 2048 and a.layout.buflets == 32
    data = os.urandom(65536)
    pkts = alloc_all(a, 2)
    a.write(pkts[0], data)
    a.write(pkts[1], data[::-1][:40000])
    assert a.send(pkts) == 2
    got = recv_all(b, 2)
    assert bytes(b.view(got[0])) == data
    assert bytes(b.view(got[1])) == data[::-1][:40000]
    # packets are contiguous and do not overlap: the first is untouched by the second
    assert bytes(b.buffer(got[0])) == data
    b.free(got)


def test_bad_length_from_peer_is_refused(client):
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    (p,) = a.alloc(1)
    a.write(p, b"ok")
    a.umd[p * UMD_WORDS] = a.stride + 1  # the sender lies about the length in shared memory
    a.send([p])
    (q,) = b.recv(1, timeout=2)
    with pytest.raises(ChannelError) as ei:
        b.view(q)
    assert ei.value.errno == errno.EPROTO


# -- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "bulk", "low-latency"])
def test_named_schemas(client, name, domain):
    a, b = pipe(client, name)
    preset = PRESETS[name]
    assert a.layout.buf_size == preset.buf_size
    assert a.layout.buflets == preset.buflets
    assert a.max_packets == preset.max_packets == b.max_packets
    assert a.active_packets == preset.packets
    assert a.ring_limit == preset.ring_size == b.ring_limit
    (p,) = a.alloc(1)
    a.write(p, b"x" * a.stride)
    a.send([p])
    (q,) = b.recv(1, timeout=2)
    assert len(b.view(q)) == a.stride
    assert domain.status()["pipes"][0]["schema"] == name


@pytest.mark.parametrize("schema,attrs", [
    ("default", {"ring_size": 3}),
    ("default", {"ring_size": 4}),
    ("default", {"ring_size": 1 << 17}),
    ("default", {"no_such_attr": 1}),
    ("default", {"buflets": 0}),
    ("default", {"buflets": 65}),
    ("default", {"buf_size": 100}),
    ("default", {"packets": 0}),
    ("default", {"packets": 100, "max_packets": 10}),
    ("default", {"quota": 0}),
    ("bulk", {"buf_size": 65536, "buflets": 64}),  # a packet over 1 MiB
    ("no-such-schema", {}),
])
def test_bad_schema_attributes_are_einval(domain, client, schema, attrs):
    with pytest.raises(ControlError) as ei:
        client.open_pipe("bad", schema, **attrs)
    assert ei.value.code == "EINVAL"
    assert ei.value.errno == errno.EINVAL
    assert (os.getuid(), "bad") not in domain.pipes
    # the name is still free
    ch = client.open_pipe("bad", "low-latency")
    assert ch.role == 0


def test_second_end_only_once(client):
    name = "twice"
    client.open_pipe(name, ring_size=64, packets=64, max_packets=64)
    client.open_pipe(name)
    with pytest.raises(ControlError) as ei:
        client.open_pipe(name)
    assert ei.value.errno == errno.EADDRINUSE


# -- waiting: non-blocking, timeouts, blocking ------------------------------------------------


def test_nonblocking_recv_raises(client):
    _a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    with pytest.raises(BlockingIOError):
        b.recv(timeout=0)
    b.setblocking(False)
    assert b.gettimeout() == 0.0
    with pytest.raises(BlockingIOError):
        b.recv()
    with pytest.raises(BlockingIOError):
        b.recv_bytes()


def _recv_ready_bytes(b) -> bytes:
    (p,) = b.recv_ready(8)
    return bytes(b.view(p))


@pytest.mark.parametrize("take", [lambda b: b.recv_bytes(timeout=0), _recv_ready_bytes],
                         ids=["recv", "recv_ready"])
def test_nonblocking_recv_takes_a_packet_that_lands_while_it_arms_the_doorbell(client, take):
    """The race a busy receiver meets: the ring was empty when popped, full when the bell is armed.

    The peer's send is made to land exactly in that window (from inside
    set_need_wakeup); the non-blocking recv (and the engine's `recv_ready`) must return it, not spin.
    """
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)

    class PeerSendsWhileArming:
        def __init__(self, rx) -> None:
            self.rx, self.sent = rx, False

        def __getattr__(self, name: str):
            return getattr(self.rx, name)

        def set_need_wakeup(self) -> None:
            if not self.sent:
                self.sent = True
                a.send_bytes(b"just in time")
            self.rx.set_need_wakeup()

    b._rx = PeerSendsWhileArming(b._rx)
    assert take(b) == b"just in time"


def test_recv_ready_is_a_nonblocking_recv_that_answers_empty_with_nothing(client):
    """`recv_ready` (the engine's receive) is `recv(n, 0)` but for an empty ring: [] instead of
    BlockingIOError, with NEED_WAKEUP armed all the same, so the peer rings the next packet."""
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    rx = b._rx
    rx.clear_need_wakeup()
    assert b.recv_ready(8) == []
    assert rx.w[ringmod.FLAGS] & ringmod.NEED_WAKEUP
    for m in (b"one", b"two", b"three"):
        a.send_bytes(m)
    got = b.recv_ready(2)
    assert [bytes(b.view(p)) for p in got] == [b"one", b"two"]
    assert not rx.w[ringmod.FLAGS] & ringmod.NEED_WAKEUP  # a recv that took packets disarms it, as recv
    assert b.recv_ready(0) == []
    b.free(got)
    (last,) = b.recv_ready(8)
    assert bytes(b.view(last)) == b"three"
    b.free([last])
    a.close()
    with pytest.raises(PeerGone):  # drained and the peer gone: as recv(n, 0)
        b.recv_ready(8)
    b.close()
    with pytest.raises(ChannelError) as ei:
        b.recv_ready(8)
    assert ei.value.errno == errno.EBADF


def test_recv_ready_in_select_mode_leaves_the_bell_quiet_until_the_next_packet(client):
    """As recv(n, 0) in select mode: an empty answer drains the bell (select must not report the
    empty ring readable) and the next packet rings it."""
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    a.send_bytes(b"first")
    b.fileno()
    assert select.select([b], [], [], 2.0)[0] == [b]
    (p,) = b.recv_ready(8)
    b.free([p])
    assert b.recv_ready(8) == []
    assert select.select([b], [], [], 0)[0] == []
    a.send_bytes(b"second")
    assert select.select([b], [], [], 2.0)[0] == [b]
    assert b.recv_bytes(timeout=0) == b"second"


def test_timeout_recv_raises_after_timeout(client):
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    with pytest.raises(BlockingIOError) as ei:
        b.recv(timeout=0.1)
    assert ei.value.errno == errno.EAGAIN
    b.settimeout(0.05)
    with pytest.raises(BlockingIOError):
        b.recv()
    # still usable afterwards
    a.send_bytes(b"late")
    assert b.recv_bytes() == b"late"


def test_blocking_recv_in_thread_returns_when_peer_sends(client):
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    result: list = []
    started = threading.Event()

    def receiver():
        started.set()
        try:
            result.append(b.recv_bytes(timeout=5))
        except BaseException as e:  # pragma: no cover - reported below
            result.append(e)

    t = threading.Thread(target=receiver)
    t.start()
    started.wait(5)
    a.send_bytes(b"wake up")
    t.join(10)
    assert not t.is_alive()
    assert result == [b"wake up"]


def test_blocking_recv_with_no_timeout(client):
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    b.settimeout(None)
    result: list = []
    t = threading.Thread(target=lambda: result.append(b.recv_bytes()))
    t.start()
    a.send_bytes(b"blocking")
    t.join(10)
    assert not t.is_alive() and result == [b"blocking"]


def test_doorbell_rings_when_receiver_asked(client):
    """A sender rings the doorbell (a pipe write) exactly when the receiver set NEED_WAKEUP."""
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    bell = b.doorbell_fd  # not fileno(): that puts the channel in select mode (armed whenever idle)
    b.drain_doorbell()
    a.send_bytes(b"1")
    assert select.select([bell], [], [], 0) == ([], [], [])  # peer polling: no system call made
    assert b.recv_bytes(timeout=0) == b"1"
    b._rx.set_need_wakeup()  # what a receiver about to sleep does (Channel._recv_wait)
    a.send_bytes(b"2")
    assert select.select([bell], [], [], 0)[0] == [bell]
    b.drain_doorbell()
    assert select.select([bell], [], [], 0)[0] == []
    b._rx.clear_need_wakeup()
    assert b.recv_bytes(timeout=0) == b"2"


# Regression (fixed in 7bd7d77): fileno() never became readable for an idle receiver,
# because NEED_WAKEUP was set only inside a blocking recv and cleared before it returned.
# Now an empty non-blocking recv leaves the ring armed so the peer rings the doorbell.


def _idle_receiver(b) -> None:
    """A receiver that has read everything and now waits on fileno()."""
    b.drain_doorbell()
    with pytest.raises(BlockingIOError):
        b.recv(timeout=0)


def test_fileno_select(client):
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    _idle_receiver(b)
    t = threading.Thread(target=a.send_bytes, args=(b"sel",))
    t.start()
    r, _, _ = select.select([b], [], [], 0.5)
    t.join(5)
    assert r == [b]
    assert b.recv_bytes(timeout=0) == b"sel"


def test_fileno_selectors(client):
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    _idle_receiver(b)
    with selectors.DefaultSelector() as sel:
        sel.register(b, selectors.EVENT_READ, "b")
        a.send_bytes(b"selectors")
        events = sel.select(0.5)
    assert [key.data for key, _ in events] == ["b"]
    assert b.recv_bytes(timeout=0) == b"selectors"


def test_fileno_asyncio_add_reader(client):
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    _idle_receiver(b)

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        fired = loop.create_future()

        def on_readable():
            b.drain_doorbell()
            if not fired.done():
                fired.set_result(b.recv_bytes(timeout=0))

        loop.add_reader(b.fileno(), on_readable)
        try:
            loop.call_soon(a.send_bytes, b"asyncio")  # after the reader is registered
            return await asyncio.wait_for(fired, 0.5)
        finally:
            loop.remove_reader(b.fileno())

    assert asyncio.run(main()) == b"asyncio"


def test_fileno_asyncio_reader_loop_many_messages(client):
    """The asyncio pattern: on readable, drain the doorbell and read until BlockingIOError (which re-arms)."""
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    _idle_receiver(b)
    msgs = [f"msg {i}".encode() for i in range(5)]

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        got: list[bytes] = []
        done = loop.create_future()
        it = iter(msgs)

        def on_readable():
            b.drain_doorbell()
            while True:
                try:
                    got.append(b.recv_bytes(timeout=0))
                except BlockingIOError:
                    break
            nxt = next(it, None)
            if nxt is None:
                if not done.done():
                    done.set_result(None)
            else:
                loop.call_soon(a.send_bytes, nxt)  # the next one only after we went idle again

        loop.add_reader(b.fileno(), on_readable)
        try:
            loop.call_soon(a.send_bytes, next(it))
            await asyncio.wait_for(done, 5)
        finally:
            loop.remove_reader(b.fileno())
        return got

    assert asyncio.run(main()) == msgs


def test_select_wakes_for_the_first_packet_without_a_prior_recv(client):
    """Issue 16: select() on a fresh channel's fileno() wakes for data; no recv(timeout=0) first."""
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    assert select.select([b], [], [], 0)[0] == []  # nothing yet: not readable
    t = threading.Thread(target=a.send_bytes, args=(b"first",))
    t.start()
    r, _, _ = select.select([b], [], [], 5)
    t.join(5)
    assert r == [b]
    assert b.recv_bytes(timeout=0) == b"first"


def test_select_readiness_follows_the_ring_one_message_at_a_time(client):
    """select, recv one, select: readable exactly while a message waits, as a socket is."""
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    assert select.select([b], [], [], 0)[0] == []
    for i in range(20):
        a.send_bytes(b"m%d" % i)
        if i % 2:
            a.send_bytes(b"n%d" % i)  # two waiting: still readable after the first is taken
        assert select.select([b], [], [], 5)[0] == [b]
        assert b.recv_bytes(timeout=0) == b"m%d" % i
        if i % 2:
            assert select.select([b], [], [], 0)[0] == [b]
            assert b.recv_bytes(timeout=0) == b"n%d" % i
        assert select.select([b], [], [], 0)[0] == []  # everything taken: not readable


def test_select_sees_packets_that_were_sent_before_fileno_was_asked_for(client):
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    a.send_bytes(b"early")  # the receiver had not armed NEED_WAKEUP: no doorbell
    assert select.select([b], [], [], 5)[0] == [b]
    assert b.recv_bytes(timeout=0) == b"early"


def test_fileno_is_registrable(client):
    _a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    assert isinstance(b.fileno(), int) and b.fileno() >= 0
    with selectors.DefaultSelector() as sel:
        sel.register(b, selectors.EVENT_READ)  # fileno() is accepted by selectors
        sel.unregister(b)


# -- pool exhaustion ----------------------------------------------------------------------------


def test_nonblocking_alloc_on_exhausted_pool_raises_nobuffers(client):
    a, b = pipe(client, ring_size=8, packets=8, max_packets=8)
    held = alloc_all(a, 8)
    assert len(set(held)) == 8
    with pytest.raises(NoBuffers) as ei:
        a.alloc(1, timeout=0)
    assert ei.value.errno == errno.ENOBUFS
    with pytest.raises(NoBuffers):
        b.alloc(1, timeout=0)  # the pool is shared by the pipe
    with pytest.raises(NoBuffers):
        a.alloc(1, timeout=0.05)  # a short wait does not help either
    # packets come back once the receiver frees them
    a.send(held[:3])
    got = recv_all(b, 3)
    b.free(got)
    again = a.alloc(3, timeout=0)
    assert sorted(again) == sorted(got)
    a.free(again + held[3:])


def test_quota_limits_one_channel(client):
    a, b = pipe(client, ring_size=8, packets=32, max_packets=32, quota=4)
    assert len(alloc_all(a, 4)) == 4
    with pytest.raises(NoBuffers):
        a.alloc(1, timeout=0)
    assert len(alloc_all(b, 4)) == 4
    assert a.stats()["quota"] == 4 and a.stats()["held"] == 4


def test_blocking_alloc_waits_for_free(client):
    a, b = pipe(client, ring_size=8, packets=8, max_packets=8)
    held = alloc_all(a, 8)
    a.send(held)
    got = recv_all(b, 8)
    done = threading.Event()
    out: list = []

    def allocer():
        out.append(a.alloc(1, timeout=5))
        done.set()

    t = threading.Thread(target=allocer)
    t.start()
    b.free(got[:1])
    t.join(10)
    assert done.is_set() and out and out[0] == got[:1]


# -- resize ------------------------------------------------------------------------------------


def test_resize_ring_limit(client):
    a, b = pipe(client, ring_size=128, packets=128, max_packets=512)
    assert a.ring_limit == 128
    a.resize(ring_size=64)
    assert a.ring_limit == 64
    assert b.ring_limit == 128  # per channel
    pkts = alloc_all(a, 100)
    assert a.send(pkts, timeout=0) == 64
    assert recv_all(b, 64) == pkts[:64]
    assert a.send(pkts[64:], timeout=0) == 36
    assert recv_all(b, 36) == pkts[64:]
    a.resize(ring_size=1024)  # up to the allocated capacity (4096)
    assert a.ring_limit == 1024
    for bad in (3, 4, 100, 8192):
        with pytest.raises(ControlError) as ei:
            a.resize(ring_size=bad)
        assert ei.value.errno == errno.EINVAL
    assert a.ring_limit == 1024


def test_resize_ring_limit_full_ring_send_times_out(client):
    a, b = pipe(client, ring_size=16, packets=64, max_packets=64)
    a.resize(ring_size=8)
    pkts = alloc_all(a, 9)
    assert a.send(pkts[:8], timeout=0) == 8
    with pytest.raises(BlockingIOError):
        a.send(pkts[8:], timeout=0)
    with pytest.raises(BlockingIOError):
        a.send(pkts[8:], timeout=0.05)
    b.recv(1, timeout=0)
    assert a.send(pkts[8:], timeout=0) == 1


def test_resize_packets_grows_and_shrinks_without_closing(domain, client):
    a, b = pipe(client, ring_size=64, packets=128, max_packets=512)
    p = domain.pipes[next(iter(domain.pipes))]
    seg = p.pool.per_segment
    assert a.active_packets == 128
    a.resize(packets=512)
    assert a.active_packets == 512 == b.active_packets
    p.pool.check()
    a.resize(packets=128)
    assert a.active_packets == 128
    p.pool.check()
    a.resize(packets=300)
    assert a.active_packets == -(-300 // seg) * seg
    with pytest.raises(ControlError) as ei:
        a.resize(packets=513)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(ControlError):
        a.resize(packets=0)
    # the channel still works
    a.send_bytes(b"after resize")
    assert b.recv_bytes(timeout=2) == b"after resize"


def test_resize_shrink_purges_touched_memory(domain, client):
    a, _b = pipe(client, ring_size=64, packets=128, max_packets=512)
    p = domain.pipes[next(iter(domain.pipes))]
    a.resize(packets=512)
    # use packets of every segment, then hand them all back
    pkts: list[int] = []
    while len(pkts) < 448:
        pkts += a.alloc(448 - len(pkts), timeout=0)
    for q in pkts:
        a.write(q, b"\xab" * a.stride)
    touched = domain.status()["pipes"][0]["memory_bytes"]
    assert touched >= 448 * a.stride
    a.free(pkts)
    a.resize(packets=128)  # collects the FREE ring, then purges what is all free
    assert a.active_packets < 512
    after = domain.status()["pipes"][0]["memory_bytes"]
    assert touched - after >= (512 - a.active_packets) * a.stride - 64 * a.stride
    p.pool.check()


def test_resize_posts_events_to_both_ends(client):
    a, b = pipe(client, ring_size=64, packets=128, max_packets=512)
    assert list(a.events()) == [] and list(b.events()) == []
    a.resize(ring_size=32, packets=256)
    for ch in (a, b):
        evs = list(ch.events())
        assert [e.type for e in evs] == [EventType.RESIZED]
        assert evs[0].value == 32 and evs[0].aux == 256
    assert list(a.events()) == []


# -- closing -----------------------------------------------------------------------------------


def test_close_one_end_peer_drains_then_peer_gone(domain, client):
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    ((_, name),) = domain.pipes
    for m in (b"one", b"two", b"three"):
        a.send_bytes(m)
    a.close()
    a.close()  # idempotent
    assert [b.recv_bytes(timeout=0) for _ in range(3)] == [b"one", b"two", b"three"]
    with pytest.raises(PeerGone) as ei:
        b.recv(timeout=0)
    assert ei.value.errno == errno.EPIPE
    with pytest.raises(PeerGone):
        b.recv(timeout=1)  # does not wait out the timeout for a peer that is gone
    with pytest.raises(PeerGone):
        b.send_bytes(b"anyone?")
    assert EventType.PEER_CLOSED in [e.type for e in b.events()]
    b.close()
    assert domain.pipes == {}
    # the name can be used again
    c = client.open_pipe(name, ring_size=64, packets=64, max_packets=64)
    assert c.role == 0


def test_close_hands_back_the_cache(domain, client):
    a, _b = pipe(client, ring_size=8, packets=8, max_packets=8)
    alloc_all(a, 2)  # the rest of the ALLOC batch sits in a's cache
    a.close()
    pool = next(iter(domain.pipes.values())).pool
    pool.check()
    assert client.status()["pipes"][0]["ends"][0]["closed"]


def test_peer_can_alloc_what_a_closed_end_handed_back(domain, client):
    """Regression: a closing end's freed cache was lent back onto its own ALLOC ring and stranded there
    (fixed in 7bd7d77)."""
    a, b = pipe(client, ring_size=8, packets=8, max_packets=8)
    kept = alloc_all(a, 2)
    a.send(kept)
    a.close()  # hands back the 6 cached packets
    got = recv_all(b, 2)
    b.free(got)
    assert len(alloc_all(b, 8)) == 8
    pool = next(iter(domain.pipes.values())).pool
    pool.check()
    assert pool.counts()["in_alloc"] + pool.counts()["held"] == pool.held[1]


@pytest.mark.parametrize("op", ["recv", "send", "alloc", "free"])
def test_closed_channel_raises_ebadf(client, op):
    """Regression: calls on a closed channel raised ValueError from a released memoryview (fixed in 7bd7d77)."""
    a, _b = pipe(client, ring_size=64, packets=64, max_packets=64)
    (p,) = a.alloc(1)
    a.close()
    call = {"recv": lambda: a.recv(timeout=0), "send": lambda: a.send([p]),
            "alloc": lambda: a.alloc(1, timeout=0), "free": lambda: a.free([p])}[op]
    with pytest.raises(ChannelError) as ei:
        call()
    assert ei.value.errno == errno.EBADF


def test_blocked_receiver_woken_by_peer_close(client):
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    result: list = []

    def receiver():
        try:
            b.recv(timeout=5)
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=receiver)
    t.start()
    a.close()
    t.join(10)
    assert not t.is_alive()
    assert len(result) == 1 and isinstance(result[0], PeerGone)


# -- the control session ends with close() ------------------------------------------------------


def test_client_close_ends_its_session_in_process(domain):
    """A Client is a context manager, and close() ends its session: the domain forgets it at once
    (it used to stay open until the process went)."""
    with usnet.Client.local(domain) as c:
        a = c.open_pipe("session-end", ring_size=64, packets=64, max_packets=64)
        assert c.session in domain.sessions
    assert c.session not in domain.sessions
    assert a.closed and not domain.status()["pipes"]
    with pytest.raises(ConnectionError):
        c.status()  # a closed client says so, rather than speaking for a session that is gone
    c.close()  # idempotent


def test_client_close_ends_its_socket_session(domain):
    """Over a socket the domain sees the hang-up: the session ends without the process exiting."""
    c = usnet.Client.from_socket(domain.socketpair_session())
    c.open_pipe("socket-session-end", ring_size=64, packets=64, max_packets=64)
    assert c.session in domain.sessions
    c.close()
    deadline = time.monotonic() + 5
    while c.session in domain.sessions:
        assert time.monotonic() < deadline, "the domain never saw the session end"
        time.sleep(0.01)
    assert not domain.status()["pipes"]


def test_domain_stop_defuncts_channels():
    d = usnet.Domain()
    c = usnet.Client.local(d)
    a = c.open_pipe("stopping", ring_size=64, packets=64, max_packets=64)
    b = c.open_pipe("stopping")
    d.stop()
    with pytest.raises(ChannelDefunct):
        a.recv(timeout=0)
    assert a.defunct and b.defunct
    c.close()


def test_a_read_that_races_a_defunct_raises_instead_of_returning_zeros(domain, client):
    """The defunct zero-fills the pool under a reader that already popped packets: the data it
    copies is zeros, and the free that ends every read says so instead of passing them on."""
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    pkts = alloc_all(a, 4)
    for i, p in enumerate(pkts):
        a.write(p, bytes([0x55 + i]) * 100)
    a.send(pkts)
    got = recv_all(b, 4)
    next(iter(domain.pipes.values())).defunct(DefunctReason.ABUSE, culprit=1)
    copies = [bytes(b.view(p)) for p in got]
    assert all(c.count(0) == len(c) for c in copies)  # what the race reads: zeros
    with pytest.raises(ChannelDefunct) as ei:
        b.free(got)
    assert ei.value.reason == DefunctReason.ABUSE


# -- misbehaviour through the public API ---------------------------------------------------------


def test_bad_frees_are_refused_and_counted(domain, client):
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    pkts = alloc_all(a, 4)
    a.send(pkts)
    got = recv_all(b, 4)
    b.free(got + [got[0]])  # one duplicate
    b.free([10_000])  # out of range
    domain.kick_channel(b.id)  # a sync: the nexus drains the FREE ring
    st = b.stats()
    assert st["freed"] == 4
    assert st["refused"] == 2
    evs = [(e.type, e.code, e.packet) for e in b.events()]
    assert (EventType.REFUSED, RefusalReason.DUPLICATE, got[0]) in evs
    assert (EventType.REFUSED, RefusalReason.OUT_OF_RANGE, 10_000) in evs
    pool = next(iter(domain.pipes.values())).pool
    pool.check()
    # nothing else disturbed: the pipe still works
    a.send_bytes(b"still fine")
    assert b.recv_bytes(timeout=2) == b"still fine"


def test_repeated_abuse_defuncts_the_culprit(domain, client):
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    for _ in range(50):
        if b.defunct:
            break
        b.free([60_000])
        domain.kick_channel(b.id)  # what b's next refill would do
    assert b.defunct
    with pytest.raises(ChannelDefunct) as ei:
        b.recv(timeout=0)
    assert ei.value.reason == DefunctReason.ABUSE
    with pytest.raises(PeerGone):
        a.recv(timeout=0)
    assert a.defunct
    pool = next(iter(domain.pipes.values())).pool
    assert pool.counts()["held"] == pool.counts()["in_alloc"] == 0  # everything reclaimed


# -- stats -------------------------------------------------------------------------------------


def test_stats_counters_move(client):
    a, b = pipe(client, ring_size=8, packets=16, max_packets=16)
    s0 = a.stats()
    assert s0["allocated"] == 0 and s0["held"] == 0 and s0["quota"] == 16
    pkts = alloc_all(a, 3)
    s1 = a.stats()
    assert s1["allocated"] >= 3  # a whole ALLOC batch
    assert s1["held"] == s1["allocated"]
    a.send(pkts)
    b.free(recv_all(b, 3))
    b.alloc(1, timeout=0)  # b's first refill: a sync that drains the FREE rings
    s2 = a.stats()
    assert s2["held"] == s1["held"] - 3  # the charge went off the allocator
    assert b.stats()["freed"] == 3
    assert s2["refused"] == 0 and s2["bad_counter"] == 0 and s2["events_dropped"] == 0


# -- regressions of library bugs found while writing these tests ---------------------------------------------------


def test_recv_zero_returns_nothing(client):
    """Regression: recv(0) with packets queued recursed until RecursionError (fixed in 7bd7d77)."""
    a, b = pipe(client, ring_size=64, packets=64, max_packets=64)
    a.send_bytes(b"x")
    try:
        got = b.recv(0, timeout=0)
    except ValueError:
        got = []
    assert got == []
    assert b.recv_bytes(timeout=0) == b"x"


def test_alloc_ring_accounting_survives_concurrent_client_pop(domain, client):
    """Regression: _refill sized the refill from the client's live ALLOC counter and overwrote
    mirror slots not yet accounted, so an honest client's frees were refused (fixed in 7bd7d77)."""
    a, _b = pipe(client, ring_size=8, packets=64, max_packets=64)
    up = next(iter(domain.pipes.values()))
    real_refill = up._refill
    racing = [False]

    def refill_with_client_pop(end):
        # the client (another process) takes what is on its ALLOC ring at this instant
        if racing[0] and end.role == a.role:
            a._cache += a._alloc.pop(a._alloc.capacity)
        real_refill(end)

    up._refill = refill_with_client_pop
    first = a.alloc(1, timeout=0)  # ALLOC ring filled, all of it taken into a's cache
    racing[0] = True
    domain.kick_channel(a.id)
    domain.kick_channel(a.id)
    racing[0] = False
    domain.kick_channel(a.id)
    mine = first + a.alloc(64, timeout=0)
    a._cache.clear()
    a.free(mine)
    domain.kick_channel(a.id)
    assert a.stats()["refused"] == 0
    assert [e for e in a.events() if e.type == EventType.REFUSED] == []


def _lent(ch) -> int:
    """Packets lent to a channel and not yet used: its cache and what waits on its ALLOC ring."""
    return len(ch._cache) + ch._alloc.available()


def test_an_alloc_ring_is_lent_a_few_megabytes_of_packets_not_the_whole_ring():
    """usnet.domain.userpipe ALLOC_BYTES: the packets lent at once are bounded in bytes, so a client
    cycling through them reuses the ones it freed last (warm, mapped) instead of 64 MB of 64 KB
    packets. A channel starts at ALLOC_MIN and is lent more each time it took all it was lent
    and kicked for more (`PipeEnd.fill`): one of small packets that keeps running dry gets its
    whole ring."""
    from tests.helpers.util import memwire_domain
    from usnet.domain.userpipe import ALLOC_BYTES, ALLOC_MIN

    with memwire_domain() as (_d, c):
        big = c.udp_socket("a", ring_size=1024, packets=4096, buf_size=16384, buflets=4)
        small = c.udp_socket("a", ring_size=1024, packets=4096)
        lent = {}
        for name, ds in (("big", big), ("small", small)):
            ch = ds.channel
            ch.free(ch.alloc(1))  # the first refill
            lent[name] = _lent(ch) + 1  # and the one freed
        assert lent["big"] == lent["small"] == ALLOC_MIN
        held = []
        for _ in range(8):  # take everything lent, each time: every refill is a kick that found it empty
            ch = big.channel
            held += ch.alloc(_lent(ch) or 1)
        assert _lent(big.channel) + 1 <= max(ALLOC_MIN, ALLOC_BYTES // 65536) == 64  # bounded in bytes
        big.channel.free(held)
        held = []
        for _ in range(8):
            ch = small.channel
            held += ch.alloc(_lent(ch) or 1)
        assert _lent(small.channel) + 1 > 512  # 2 KB packets: 4 MB is more than the ring; it grew
        small.channel.free(held)
        big.close()
        small.close()


def test_a_flow_sending_small_batches_cycles_through_the_same_few_packets_whatever_its_ring():
    """Issue 18, UDP with 1,000 flows: each flow's ALLOC ring was filled to its size, so a flow
    sending 32 datagrams a turn cycled through its whole pool (480 of 512 packets here; 1,000
    flows kept 1 GB in rotation, a page fault per two datagrams in the sender and every buffer
    cold). Filled to what the flow uses (`PipeEnd.fill`), the packets it touches stay a few
    batches' worth, the same with a ring of 256 or 4,096. Counts packets, not time."""
    from tests.helpers.util import memwire_domain

    with memwire_domain() as (_d, c):
        rx = c.udp_socket("b", 7100, ring_size=4096, packets=8192)
        touched = {}
        for ring in (256, 4096):
            tx = c.udp_socket("a", 0, ring_size=ring, packets=2 * ring)
            ch, used, got = tx.channel, set(), 0
            alloc = ch.alloc

            def spy(n: int, *args: object, _alloc=alloc, _used=used) -> list[int]:
                out = _alloc(n, *args)
                _used.update(out)
                return out

            ch.alloc = spy
            for turn in range(40):
                assert tx.send_many([b"x" * 64] * 32, ("10.9.0.2", 7100)) == 32
                deadline = time.monotonic() + 5
                while got < 32 * (turn + 1) and time.monotonic() < deadline:
                    got += len(rx.recv_many(512))
            assert got == 32 * 40
            touched[ring] = len(used)
            tx.close()
        rx.close()
        assert touched[256] == touched[4096] <= 4 * 32, touched  # without the fill: 480 and 1,280


def test_packets_a_receiver_freed_are_lent_again_before_untouched_ones():
    """usnet.domain.userpipe `lend`: what the client freed comes back first (warm: mapped in both
    processes, in the caches) once a few hundred KB of it wait on the FREE ring. Without it a
    receiver of 64 KB packets walked the pool's 4,096 fresh packets before any came back, a page
    fault per 4 KB received for the first 256 MB."""
    from tests.helpers.util import memwire_domain
    from usnet.domain.userpipe import WARM_BYTES

    with memwire_domain() as (_d, c):
        rx = c.udp_socket("a", 7000, ring_size=1024, packets=4096, buf_size=16384, buflets=4)
        tx = c.udp_socket("b")
        ch = rx.channel
        seen: set[int] = set()
        for i in range(300):
            tx.sendto(b"%d" % i, ("10.9.0.1", 7000))
            pkts = ch.recv(64, timeout=5.0)
            assert pkts, "a datagram did not arrive"
            seen.update(pkts)
            ch.free(pkts)
        # about WARM_BYTES of 64 KB packets in rotation, and the few in flight; not 300
        assert len(seen) <= 2 * (WARM_BYTES // 65536) + 8, sorted(seen)
        rx.close()
        tx.close()


def test_a_pool_refill_is_not_lost_when_another_thread_drains_the_bell(tmp_path, monkeypatch):
    """The nexus answers a refill by ringing the channel's bell, and the stack thread sleeps on
    that same bell: when it drained the bell first, the waiting send slept a whole WAIT_SLICE
    (50 ms: the first connect after a fork, and the quick bulk benchmark, lost that much). The
    wait now reads the answer's word between short naps. Here every ring is lost (the channel's
    poll never reports the bell, as when another thread took it first) and the slice and the
    answer's bound are made huge: the refill still comes back."""
    from usnet.abi.transport import listen_seqpacket
    from usnet.client import channel as chmod

    monkeypatch.setattr(chmod, "WAIT_SLICE", 1000.0)
    monkeypatch.setattr(chmod, "NEXUS_ANSWER", 1000.0)
    d = usnet.Domain()
    d.start()  # its own loop thread, reached over a socket: the nexus answers asynchronously
    d.listen(listen_seqpacket(str(tmp_path / "d.sock")))
    client = usnet.Client.connect(str(tmp_path / "d.sock"))
    a, _b = pipe(client, ring_size=8, packets=64, max_packets=64)

    class Deaf:  # the bell rang, but another thread drained it: nothing to report, a full sleep
        def poll(self, ms: float) -> list:
            time.sleep(ms / 1000)
            return []

    try:
        held = a.alloc(8)  # the ALLOC ring's fill: the next alloc asks the nexus for more
        a._poll = Deaf()
        got: list = []
        t = threading.Thread(target=lambda: got.extend(a.alloc(1)), daemon=True)
        t.start()
        t.join(10)
        assert not t.is_alive(), "the refill's answer was lost with the drained bell"
        assert len(got) == 1 and got[0] not in held
    finally:
        client.close()
        d.stop()
