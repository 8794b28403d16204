"""The client-side Channel: rings, pool traffic and doorbells in the user domain.

A Channel is built from file descriptors alone (two memfds, two doorbells:
pipes, see usnet.abi.doorbell) and the SCHEMA region; it never imports the nexus. Packets are
plain integers (indices into the pool), so the hot path allocates no object
per packet: `alloc` returns a list of indices, `view`/`buffer` give
memoryviews of a packet's data, `send`/`recv`/`free` move whole batches.

Waiting follows AF_XDP: a consumer about to sleep sets NEED_WAKEUP on its
ring, and a producer makes the doorbell's `write` system call only when it sees
that flag, so nobody makes a system call while the other side is polling.
`fileno()` is the channel's doorbell, pollable by select, selectors and
asyncio's `add_reader`.
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np

from usnet.abi import doorbell
from usnet.abi import ring as ringmod
from usnet.abi.events import DefunctReason, Event, EventConsumer
from usnet.abi.ring import Consumer, Producer, RingCorrupt
from usnet.abi.schema import (
    FLOWADV,
    RING_TABLE,
    STATS,
    STATS_PER_ROLE,
    W_ACTIVE,
    W_GENERATION,
    W_LIMIT,
    W_REASON,
    W_STALLED,
    W_STATE,
    W_SYNC,
    ChannelState,
    FlowState,
    Layout,
    RingKind,
    Stat,
)
from usnet.abi.umd import GSO_SHIFT, TX_REPORT, UMD_WORDS, W_DEADLINE, W_FLAGS, W_GSO, W_TAG

__all__ = ["BadPacket", "Channel", "ChannelDefunct", "ChannelError", "ControlPath", "NoBuffers", "PeerGone"]

SPIN = 200  # polls of an empty ring before going to sleep on the doorbell
YIELD_FOR = 0.0005  # then yield the CPU for this long before sleeping
SPIN_IF_WITHIN = 0.002  # recv polls first only if packets came this recently (a busy flow)
WAIT_SLICE = 0.05  # longest single sleep: a missed doorbell costs at most this
NEXUS_ANSWER = 5.0  # seconds a pool refill waits for the domain's answer, whatever the call's timeout
HUP_CHECK = 0.2  # a sender looks at most this often whether usnetd hung up (a poll system call)
_DOMAIN_GONE = "channel defunct (DOMAIN_SHUTDOWN): usnetd went away, its control socket closed"
_MESSAGES: dict[int, str] = {  # by the raw reason word: it may be one this code does not know
    DefunctReason.STALLED: "channel defunct (STALLED): it left received packets unread longer than the "
                           "domain allows (usnetd stall_after + stall_defunct); its packets were taken back",
}


def worker_gone_reason(fd: int | None) -> str:
    """The message usnetd left on a flow's liveness socket before hanging it up (peeked: every
    channel sharing the socket reads the same), as a defunct channel's text."""
    why = ""
    if fd is not None:
        try:
            with socket.socket(fileno=os.dup(fd)) as s:
                why = s.recv(512, socket.MSG_PEEK | socket.MSG_DONTWAIT).decode(errors="replace")
        except OSError:
            why = ""
    return f"channel defunct (WORKER_GONE): {why or 'the usnetd worker serving this channel died'}"


class ChannelError(OSError):
    """Base of channel errors."""


class ChannelDefunct(ChannelError):
    """The nexus took the channel back; `reason` says why."""

    def __init__(self, reason: DefunctReason | int, message: str | None = None) -> None:
        try:
            reason = DefunctReason(reason)
        except ValueError:
            pass
        self.reason = reason
        name = getattr(reason, "name", str(reason))
        # the domain itself went down (usnetd stopped or died): ENETDOWN, as for a downed interface
        code = errno.ENETDOWN if reason == DefunctReason.DOMAIN_SHUTDOWN else errno.ENOTCONN
        super().__init__(code, message or f"channel defunct ({name})")


class PeerGone(ChannelDefunct):
    """The other end of the pipe went away (closed, crashed or was killed)."""

    def __init__(self, reason: DefunctReason | int = DefunctReason.PEER_GONE) -> None:
        super().__init__(reason, "peer gone: the other end of the pipe went away")
        self.errno = errno.EPIPE


class NoBuffers(ChannelError):
    """No packet could be had: the pool is exhausted or this channel's quota is used."""

    def __init__(self, message: str = "no packet buffers: pool exhausted or quota reached") -> None:
        super().__init__(errno.ENOBUFS, message)


class BadPacket(ChannelError):
    """A packet index or length read from shared memory cannot be true."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPROTO, message)


class ControlPath(Protocol):
    """What a Channel needs from its session for control requests."""

    def resize(self, channel: int, ring_size: int | None, packets: int | None) -> None: ...
    def close_channel(self, channel: int) -> None: ...


_UNSET = object()


class Channel:
    """One end of a user pipe, as its application sees it."""

    def __init__(
        self,
        *,
        channel_id: int,
        role: int,
        shared_fd: int,
        ro_fd: int,
        bell_fd: int,
        bell_ring_fd: int,
        peer_bell_fd: int,
        kick: Callable[[], None],
        control: ControlPath | None = None,
        alive_fd: int | None = None,
    ) -> None:
        """`bell_ring_fd`: a write end of our own bell (`bell_fd`), the domain's to give (usnet.abi.doorbell
        `lend_sleeper_ring`): checked to be one, and made non-blocking (it is our own description).
        `alive_fd`: a flow served by a worker of `usnetd --workers` comes with a socket whose far
        end usnetd closes when that worker dies (after writing why): its hang-up defuncts the channel
        (WORKER_GONE), as the control socket's does when usnetd itself dies."""
        self.id = channel_id
        self.role = role
        if not doorbell.is_writer_of(bell_fd, bell_ring_fd):
            raise ChannelError(errno.EINVAL, "the descriptor given as our bell's write end is not one")
        os.set_blocking(bell_ring_fd, False)
        self._fds = [shared_fd, ro_fd, bell_fd, bell_ring_fd, peer_bell_fd]
        self.alive_fd = alive_fd
        self._server_gone: str | None = None  # why the worker serving us is gone (alive_fd hung up)
        if alive_fd is not None:
            self._fds.append(alive_fd)
        self._bell = bell_fd
        self._bell_w = bell_ring_fd  # rung from several places: select mode, a pool wait, another thread
        self._peer_bell = peer_bell_fd
        self._kick = kick
        self._control = control
        ro_size = os.fstat(ro_fd).st_size
        self._ro = mmap.mmap(ro_fd, ro_size, mmap.MAP_SHARED, mmap.PROT_READ)
        rov = memoryview(self._ro)
        self.layout = lay = Layout.read(rov)
        self._words = rov[:RING_TABLE].cast("I")  # the header and the state words
        self._stats = rov[lay.stats_offset : lay.stats_offset + 2 * STATS.size].cast("Q")
        self._flowadv = rov[lay.flowadv_offset : lay.flowadv_offset + 2 * FLOWADV.size]
        if os.fstat(shared_fd).st_size < lay.shared_size:
            raise ChannelError(errno.EINVAL, "shared memory smaller than its schema says")
        self._shm = mmap.mmap(shared_fd, lay.shared_size, mmap.MAP_SHARED)
        mem = self._mem = memoryview(self._shm)
        tx = lay.ring(RingKind.PIPE, role)
        rx = lay.ring(RingKind.PIPE, 1 - role)
        al = lay.ring(RingKind.ALLOC, role)
        fr = lay.ring(RingKind.FREE, role)
        ev = lay.ring(RingKind.EVENT, role)
        # A defunct channel's rings read as zeros, whichever ring a call touches first: every
        # impossible counter is checked against the channel's state, so the caller hears why.
        self._tx = Producer(mem, tx.offset, tx.capacity, self._words[W_LIMIT + role], self._ring_corrupt)
        self._rx = Consumer(mem, rx.offset, rx.capacity, self._ring_corrupt)
        self._alloc = Consumer(mem, al.offset, al.capacity, self._ring_corrupt)
        self._free = Producer(mem, fr.offset, fr.capacity, on_corrupt=self._ring_corrupt)
        self._events = EventConsumer(mem, ev.offset, ev.capacity, self._ring_corrupt)
        self._generation = self._words[W_GENERATION]
        self.stride = lay.buf_size * lay.buflets
        self.max_packets = lay.max_packets
        self._buf_offset = lay.buf_offset
        self.buf = mem[lay.buf_offset : lay.buf_offset + lay.max_packets * self.stride]
        self.umd = mem[lay.umd_offset : lay.umd_offset + lay.max_packets * lay.umd_size].cast("I")
        # a TCP flow's statistics records (usnet.abi.tcpinfo), which its engine publishes for `usnet ss`
        self.tcpinfo: memoryview | None = (mem[lay.tcpinfo_offset:] if 0 < lay.tcpinfo_offset < lay.shared_size
                                           else None)
        self._poll = select.poll()  # not select(): it fails on descriptors past 1023
        self._poll.register(bell_fd, select.POLLIN)
        # A usnetd killed outright writes no state word: its control socket's hang-up is all we
        # hear, so a sleeper watches that too (events 0: poll reports only POLLHUP/POLLERR/POLLNVAL).
        domain_fd = getattr(control, "domain_fd", None)
        self._hup: select.poll | None = None  # the control socket alone, for senders that never sleep
        self._hup_next = 0.0
        if domain_fd is not None:
            self._poll.register(domain_fd, 0)
            self._hup = select.poll()
            self._hup.register(domain_fd, 0)
        if alive_fd is not None:
            self._poll.register(alive_fd, 0)
            if self._hup is None:
                self._hup = select.poll()
            self._hup.register(alive_fd, 0)
        self._domain_gone = False
        self._views: list[memoryview] | None = None
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self.sleeps = 0  # times this channel slept on its doorbell (diagnostics)
        self.tx_dropped_stalled = 0  # packets `send` dropped because the peer had stopped reading
        self._last_rx = 0.0  # when recv last found packets (monotonic s): is the flow busy?
        self._cache: list[int] = []
        self._timeout: float | None = None
        self._selecting = False  # fileno() was asked for: "select mode" (see `fileno`)
        self.closed = False

    # -- waiting -----------------------------------------------------------------

    def fileno(self) -> int:
        """The doorbell: readable when packets, pool refills or events may have arrived.

        Asking for it puts the channel in "select mode": from then on the RX
        ring keeps NEED_WAKEUP armed whenever a `recv` leaves it empty, and a
        `recv` that finds nothing leaves the bell drained, so select, poll
        and asyncio wake for the next packet without a prior `recv(timeout=0)`
        and do not stay readable for packets already taken. A channel nobody
        selects on keeps the AF_XDP economy (no doorbell while it polls).
        """
        if not self._selecting and not self.closed:
            self._selecting = True
            self._arm_select()
        return self._bell

    @property
    def doorbell_fd(self) -> int:
        """The doorbell for a loop that drains the ring until empty itself (the stack's runner):
        unlike `fileno()`, it leaves the channel out of select mode."""
        return self._bell

    def _arm_select(self) -> None:
        """Select mode: arm NEED_WAKEUP; if packets wait already, make sure the bell says so."""
        rx = self._rx
        rx.set_need_wakeup()
        ringmod.fence()
        if rx.available() and self._selecting:
            doorbell.ring(self._bell_w)

    def settimeout(self, timeout: float | None) -> None:
        """None blocks, 0 never waits (raises BlockingIOError / NoBuffers), t waits up to t s."""
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def _deadline(self, timeout: object) -> float | None:
        t = self._timeout if timeout is _UNSET else timeout
        if t is None:
            return None
        return time.monotonic() + t  # type: ignore[operator]

    def _sleep(self, deadline: float | None) -> bool:
        """Sleep on the doorbell until rung or the deadline; False once the deadline passed."""
        if deadline is None:
            slice_ = WAIT_SLICE
        else:
            slice_ = deadline - time.monotonic()
            if slice_ <= 0:
                return False
            slice_ = min(slice_, WAIT_SLICE)
        self.sleeps += 1
        for fd, _ in self._poll.poll(slice_ * 1000):
            if fd == self._bell:
                doorbell.drain(self._bell)
            elif fd == self.alive_fd:
                self._worker_gone()
            else:  # the domain's end of our control socket closed: usnetd died (SIGKILL, a crash)
                self._domain_gone = True
                raise ChannelDefunct(DefunctReason.DOMAIN_SHUTDOWN, _DOMAIN_GONE)
        return True

    def drain_doorbell(self) -> None:
        """Reset the doorbell after select/asyncio reported it readable."""
        doorbell.drain(self._bell)

    # -- state ------------------------------------------------------------------------

    def _ring_corrupt(self, what: str) -> None:
        """A ring counter the other side wrote is impossible: the channel's defunct reason if it
        has one (the domain zeroed its rings), RingCorrupt otherwise. Never returns."""
        self._check_state()
        raise RingCorrupt(what)

    def _check_state(self) -> None:
        if self.closed:
            raise ChannelError(errno.EBADF, "channel is closed")
        if self._domain_gone:
            raise ChannelDefunct(DefunctReason.DOMAIN_SHUTDOWN, _DOMAIN_GONE)
        if self._server_gone is not None:
            raise ChannelDefunct(DefunctReason.WORKER_GONE, self._server_gone)
        if self._words[W_STATE + self.role] != ChannelState.OPEN:
            reason = self._words[W_REASON + self.role]
            if reason == DefunctReason.PEER_GONE:
                raise PeerGone()
            raise ChannelDefunct(reason, _MESSAGES.get(reason))
        if self._words[W_GENERATION] != self._generation:
            self._generation = self._words[W_GENERATION]
            self._tx.limit = min(self._words[W_LIMIT + self.role], self._tx.capacity)

    def _peer_closed(self) -> bool:
        return self._words[W_STATE + 1 - self.role] != ChannelState.OPEN

    @property
    def defunct(self) -> bool:
        return self._server_gone is not None or self._words[W_STATE + self.role] != ChannelState.OPEN

    def worker_gone(self) -> str | None:
        """Why the usnetd worker serving this channel is gone (its liveness fd hung up), or None."""
        if self._server_gone is None and self.alive_fd is not None:
            p = select.poll()
            p.register(self.alive_fd, 0)
            if p.poll(0):
                self._server_gone = worker_gone_reason(self.alive_fd)
        return self._server_gone

    def _worker_gone(self) -> None:
        """The worker serving us died (usnetd closed our liveness socket): defunct, with its word why."""
        self._server_gone = worker_gone_reason(self.alive_fd)
        raise ChannelDefunct(DefunctReason.WORKER_GONE, self._server_gone)

    # -- pool traffic -----------------------------------------------------------------

    def alloc(self, n: int, timeout: object = _UNSET) -> list[int]:
        """Up to `n` packets (at least one), from the local cache refilled in bulk."""
        if self.closed or self._words[W_STATE + self.role] != ChannelState.OPEN:
            self._check_state()  # the cache's packets went back to the pool with the channel
        cache = self._cache
        if n == 1 and cache:  # one segment's packet, the usual case for small segments (issue 16)
            return [cache.pop()]
        if len(cache) < n:
            self._refill(n - len(cache), self._deadline(timeout))
        if len(cache) <= n:
            out = cache[:]
            cache.clear()
        else:
            out = cache[len(cache) - n :]
            del cache[len(cache) - n :]
        return out

    def _refill(self, want: int, deadline: float | None) -> None:
        cache = self._cache
        cache += self._alloc.pop(self._alloc.capacity)
        backoff = 0.0005
        slept = False
        try:
            while not cache:
                self._check_state()
                seq = self._words[W_SYNC + self.role]
                self._kick()
                # The nexus's answer is waited for whatever the caller's timeout: it is the
                # domain's part of this call (as the kernel's allocation is a send's), not a wait
                # for the network, and a non-blocking send must not fail for want of it (an
                # asyncio UDP server's first reply did, with ENOBUFS). A dead usnetd ends it
                # at once (`_sleep`), a stuck one after NEXUS_ANSWER.
                # The answer rings our bell, but the stack thread sleeps on the same bell and
                # may drain it first (the poll here then slept a whole WAIT_SLICE: 50 ms on the
                # first send after a fork, where the timing favoured it): so naps that double
                # from half a millisecond, the answer's word read between them.
                answer_by = time.monotonic() + NEXUS_ANSWER
                nap = 0.0005
                while self._words[W_SYNC + self.role] == seq:  # until the nexus has answered
                    self._check_state()
                    slept = True
                    now = time.monotonic()
                    if now >= answer_by:
                        raise NoBuffers("the nexus did not answer a pool refill in time")
                    self._sleep(min(answer_by, now + nap))
                    nap = min(nap * 2, WAIT_SLICE)
                cache += self._alloc.pop(self._alloc.capacity)
                if cache:
                    return
                # The pool is empty: packets come back only when someone frees them.
                if deadline is not None and time.monotonic() >= deadline:
                    self._check_state()
                    raise NoBuffers()
                slept = True
                pause = time.monotonic() + backoff
                self._sleep(pause if deadline is None else min(deadline, pause))
                backoff = min(backoff * 2, 0.02)
        finally:
            if slept:
                self._rering()

    def _rering(self) -> None:
        """Ring our own bell after a wait here drained it: what else it announced (packets, events)
        is then still heard by whoever sleeps on it (select, an event loop, the stack thread).
        At worst one wake-up that finds nothing."""
        if not self.closed:
            doorbell.ring(self._bell_w)

    def ring_own_bell(self) -> None:
        """Wake whoever sleeps on this channel's doorbell from this process (a socket call that
        pumps the engine itself, usnet.client.engine `pump_wait`, when another thread changed
        something it waits for)."""
        if not self.closed:
            doorbell.ring(self._bell_w)

    def give_back(self, pkts: list[int]) -> None:
        """Return allocated but unused packets to this channel's local cache (no ring traffic)."""
        self._cache.extend(pkts)

    def free(self, pkts: list[int]) -> None:
        """Hand packets back to the pool (on the FREE ring, taken back in bulk).

        Every reader copies a packet's data out and then frees it, so this is
        where a read is confirmed: if the channel went defunct meanwhile, the
        domain has zero-filled its memory and what was copied may be zeros, so
        this raises ChannelDefunct instead of letting them pass as data.
        """
        n = len(pkts)
        if not n:
            return
        if self.closed:
            self._check_state()
        done = self._free.push_one(pkts[0]) if n == 1 else self._free.push(pkts)  # no array for one
        if self._words[W_STATE + self.role] != ChannelState.OPEN:
            self._check_state()  # the state word lives in read-only memory the defunct leaves alone
        if done < n:
            # Cannot happen with honest use (the ring holds every packet of the pool).
            self._kick()
            raise ChannelError(errno.EOVERFLOW, "FREE ring full: packets handed back twice?")

    # -- data -------------------------------------------------------------------------

    def packet_views(self) -> list[memoryview]:
        """One writable view per packet of its whole buffer, made once.

        The fast path for loops over a batch: `views[p][:n]` is the packet's
        data, and a slice can never reach past the packet's own buffer, so a
        bad length read from shared memory cannot expose another packet.
        """
        if self._views is None:
            s = self.stride
            buf = self.buf
            self._views = [buf[i * s : i * s + s] for i in range(self.max_packets)]
        return self._views

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(packets, umd): numpy views for batch gathers and scatters, made once.

        packets[p] is packet p's whole buffer (stride bytes); umd[p * UMD_WORDS]
        is its length word. Lengths read from here are the peer's to write:
        clip them to the stride before use.
        """
        if self._arrays is None:
            lay = self.layout
            self._arrays = (
                np.frombuffer(self._shm, np.uint8, lay.max_packets * self.stride, lay.buf_offset).reshape(
                    lay.max_packets, self.stride),
                np.frombuffer(self._shm, np.uint32, lay.max_packets * lay.umd_size // 4, lay.umd_offset),
            )
        return self._arrays

    def buffer(self, pkt: int) -> memoryview:
        """The whole writable data area of a packet (all its buflets)."""
        o = pkt * self.stride
        return self.buf[o : o + self.stride]

    def set_length(self, pkt: int, length: int) -> None:
        if not 0 <= length <= self.stride:
            raise ValueError(f"length {length} outside 0..{self.stride}")
        self.umd[pkt * UMD_WORDS] = length

    def length(self, pkt: int) -> int:
        return self.umd[pkt * UMD_WORDS]

    def write(self, pkt: int, data: bytes | bytearray | memoryview, gso_size: int = 0) -> None:
        """Copy `data` into a packet and set its length (and its UMD gso_size, docs/abi.md)."""
        self.write_parts(pkt, data, b"", gso_size)

    def write_parts(self, pkt: int, head: bytes | bytearray | memoryview, payload, gso_size: int = 0) -> None:
        """`write` of ``head + payload`` without joining them first: each is copied once, into the packet.
        Headroom 0; a stale gso_size must not survive the packet's reuse."""
        h = len(head)
        n = h + len(payload)
        if n > self.stride:
            raise ValueError(f"{n} bytes do not fit a {self.stride}-byte packet")
        o = pkt * self.stride
        buf = self.buf
        buf[o : o + h] = head
        buf[o + h : o + n] = payload
        w = pkt * UMD_WORDS
        self.umd[w] = n
        self.umd[w + W_GSO] = gso_size << GSO_SHIFT

    def mark(self, pkt: int, *, tag: int = 0, deadline_ns: int = 0, report: bool = False) -> None:
        """Give a packet to send its id, a deadline, and whether to report its fate (flow channels).

        `deadline_ns` is CLOCK_MONOTONIC (`time.monotonic_ns()`): past it the
        packet is not sent and a TX_STATUS EXPIRED event says so. `report`
        asks for a TX_STATUS event whatever happens to it (SENT, DROPPED,
        EXPIRED, FLUSHED), carrying `tag`. The nexus clears all of it when it
        hands the packet out again (docs/abi.md section 8).
        """
        if not (0 <= tag < 1 << 64 and 0 <= deadline_ns < 1 << 64):
            raise ValueError("tag and deadline_ns are unsigned 64-bit integers")
        w = pkt * UMD_WORDS
        u = self.umd
        u[w + W_TAG], u[w + W_TAG + 1] = tag & 0xFFFFFFFF, tag >> 32
        u[w + W_DEADLINE], u[w + W_DEADLINE + 1] = deadline_ns & 0xFFFFFFFF, deadline_ns >> 32
        u[w + W_FLAGS] = TX_REPORT if report else 0

    def mark_many(self, pkts: np.ndarray, tags: list[int], *, deadline_ns: int = 0, report: bool = False) -> None:
        """`mark` for a batch (an index array): tags one per packet, one deadline and flag for all."""
        _, umd = self.arrays()
        at = pkts * UMD_WORDS
        u64 = umd.view(np.uint64)  # tag and deadline are 8-byte aligned u64 words
        u64[(at + W_TAG) // 2] = np.asarray(tags, np.uint64)
        u64[(at + W_DEADLINE) // 2] = deadline_ns
        umd[at + W_FLAGS] = TX_REPORT if report else 0

    @property
    def events_lost(self) -> int:
        """Events the nexus could not post because the EVENT ring was full (0: none lost)."""
        return self._stats[self.role * STATS_PER_ROLE + Stat.EVENTS_DROPPED]

    def view(self, pkt: int) -> memoryview:
        """A zero-copy view of a received packet's data."""
        n = self.umd[pkt * UMD_WORDS]
        if n > self.stride:
            raise BadPacket(f"packet {pkt} claims {n} bytes in a {self.stride}-byte buffer")
        o = pkt * self.stride
        return self.buf[o : o + n]

    def copies(self, pkts: list[int]) -> list[bytes]:
        """A copy of each received packet's data, in order (what `view` checks, per packet): what a
        reader takes before it frees them, one call for a ring pull's batch rather than one per
        packet (docs/design-notes.md, "The server's receive and write per request")."""
        umd, stride, buf = self.umd, self.stride, self.buf
        out = []
        for pkt in pkts:  # (a loop, not a comprehension: no frame of its own per batch)
            n = umd[pkt * UMD_WORDS]
            if n > stride:
                raise BadPacket(f"packet {pkt} claims {n} bytes in a {stride}-byte buffer")
            o = pkt * stride
            out.append(bytes(buf[o : o + n]))
        return out

    def send(self, pkts: list[int], timeout: object = _UNSET) -> int:
        """Publish packets on the TX ring; blocks for room unless non-blocking.

        Returns how many were sent; those not sent stay the caller's.
        """
        if self.closed or self._words[W_STATE + 1 - self.role] != ChannelState.OPEN:  # `_peer_closed()`
            self._check_state()
            raise PeerGone(DefunctReason.CLOSED)
        if self._hup is not None:
            # A killed usnetd writes no state word, and a sender that finds room never sleeps
            # where it would hear the hang-up: look now and then, so sends fail, not vanish.
            now = time.monotonic()
            if now >= self._hup_next:
                self._hup_next = now + HUP_CHECK
                for fd, _ in self._hup.poll(0):
                    if fd == self.alive_fd:
                        self._worker_gone()
                    self._domain_gone = True
                    raise ChannelDefunct(DefunctReason.DOMAIN_SHUTDOWN, _DOMAIN_GONE)
            if self._server_gone is not None:
                self._check_state()
        tx = self._tx
        n = len(pkts)
        done = tx.push_one(pkts[0]) if n == 1 else tx.push(pkts)  # one packet: no array, no space()
        if done < n:
            deadline = self._deadline(timeout)
            while done < n:
                self._ring_peer()
                self._check_state()
                if self._peer_closed():
                    raise PeerGone(DefunctReason.CLOSED)
                if self._words[W_STALLED + 1 - self.role]:  # the peer stopped reading: no room will come
                    return done + self._drop_stalled(pkts[done:])
                if deadline is not None and time.monotonic() >= deadline:
                    if done == 0:
                        raise BlockingIOError(errno.EAGAIN, "TX ring full")
                    break
                self._wait_room(tx, deadline)
                done += tx.push(pkts[done:])
        self._ring_peer()
        return done

    def _drop_stalled(self, pkts: list[int]) -> int:
        """The peer is stalled (its RX ring full and unread): what did not fit is dropped, as a
        datagram to a full socket is, back to the pool and counted; returns how many."""
        self.free(pkts)
        self.tx_dropped_stalled += len(pkts)
        return len(pkts)

    @property
    def peer_stalled(self) -> bool:
        """The domain judged the other end stalled: it left its RX ring unread (RX_STALLED)."""
        return bool(self._words[W_STALLED + 1 - self.role])

    @property
    def stalled(self) -> bool:
        """The domain judged this end stalled: arrivals are dropped until it reads again."""
        return bool(self._words[W_STALLED + self.role])

    def _wait_room(self, tx: Producer, deadline: float | None) -> None:
        """Wait for the consumer to free TX slots: poll, then yield the CPU, then sleep.

        There is no doorbell for room (as in AF_XDP): the consumer is awake
        and working when the ring is full, so polling finds room soon. Except
        for a flow the switch suspended (its queue at the netif is full): no
        room comes until the link drains it, so sleep on the doorbell, which
        the nexus rings when it resumes the flow, instead of burning the CPU
        the domain and other applications need.
        """
        if FLOWADV.unpack_from(self._flowadv, self.role * FLOWADV.size)[0] == FlowState.SUSPENDED:
            self._sleep(deadline)
            return
        for _ in range(SPIN):
            if tx.space():
                return
        until = time.monotonic() + YIELD_FOR
        while time.monotonic() < until:
            os.sched_yield()
            if tx.space():
                return
        if deadline is None or time.monotonic() < deadline:
            time.sleep(0.0002)

    def _ring_peer(self) -> None:
        ringmod.fence()
        if self._tx.w[ringmod.FLAGS] & ringmod.NEED_WAKEUP:  # `need_wakeup()`: once a segment sent
            doorbell.ring(self._peer_bell)

    def recv(self, max_n: int = 1 << 30, timeout: object = _UNSET) -> list[int]:
        """Up to `max_n` received packets; waits per the channel's timeout.

        Raises BlockingIOError when nothing arrives in time, PeerGone once the
        peer is gone and everything it sent has been read.
        """
        if self.closed:
            self._check_state()
        if max_n <= 0:
            return []
        rx = self._rx
        got = rx.pop(max_n)
        if got:
            if self._words[W_STATE + self.role] != ChannelState.OPEN:
                self._check_state()  # what we popped may be the zeros of a defunct ring
            self._last_rx = time.monotonic()
            if self._selecting:
                if rx.available():
                    doorbell.ring(self._bell_w)  # packets left: select() must still see them
                else:  # select() must hear the next packet, and not the ones taken
                    doorbell.drain(self._bell)
                    self._arm_select()
            elif rx.w[ringmod.FLAGS]:
                rx.clear_need_wakeup()  # armed by an earlier empty non-blocking recv
            if max(got) >= self.max_packets:
                raise BadPacket(f"peer sent packet index {max(got)} outside the pool")
            return got
        return self._recv_wait(max_n, self._deadline(timeout))

    def _recv_wait(self, max_n: int, deadline: float | None) -> list[int]:
        rx = self._rx
        while True:
            now = time.monotonic()
            # A non-blocking call never spins, and neither does a sparse flow: polling for
            # longer than its packets are apart finds nothing, and takes the CPU the
            # domain and the sender need (a 200-packets/s flow would burn 10 % of a core).
            if (deadline is None or deadline > now) and now - self._last_rx < SPIN_IF_WITHIN:
                for _ in range(SPIN):
                    if rx.available():
                        return self.recv(max_n, 0)
                until = time.monotonic() + YIELD_FOR
                while time.monotonic() < until:
                    os.sched_yield()
                    if rx.available():
                        return self.recv(max_n, 0)
            got = self._arm_empty(max_n)
            if got:
                return got
            if deadline is not None and deadline <= time.monotonic():
                got = self._give_up(max_n)
                if got:
                    return got
                raise BlockingIOError(errno.EAGAIN, "nothing received")
            self._sleep(deadline)
            if not self._selecting:
                rx.clear_need_wakeup()

    def recv_ready(self, max_n: int) -> list[int]:
        """`recv(max_n, 0)`, except that an empty ring returns [] instead of raising BlockingIOError.

        Why: the engine's receive loop ends on an empty ring at every pump (~3.6 times a connect),
        and there `recv(max_n, 0)` read the clock three times (its deadline, the spin's test, the
        deadline's test) and raised an exception the loop caught: 3.6-8.5 µs each, for an answer
        known once the ring is seen empty and NEED_WAKEUP armed. Everything else is recv's: the
        same state checks and errors (closed, defunct, PeerGone once the peer is gone and its
        packets read), NEED_WAKEUP left set, the select bell drained and re-armed."""
        rx = self._rx
        if self.closed or rx.prod_cache - rx.cons or rx.refresh():  # `rx.available()`, one call fewer
            return self.recv(max_n, 0)
        if max_n <= 0:
            return []
        return self._arm_empty(max_n) or self._give_up(max_n)

    def _arm_empty(self, max_n: int) -> list[int]:
        """The ring was seen empty: check the channel, arm NEED_WAKEUP so the peer rings the
        doorbell for the next packet, and take what came meanwhile ([] when nothing did)."""
        rx = self._rx
        self._check_state()
        if self._words[W_STATE + 1 - self.role] != ChannelState.OPEN:  # `_peer_closed()`
            if rx.available():
                return self.recv(max_n, 0)
            raise PeerGone(DefunctReason.CLOSED)
        rx.set_need_wakeup()
        ringmod.fence()
        if rx.refresh():  # it arrived while we armed the bell: take it now (a
            rx.clear_need_wakeup()  # `continue` would never pop past an expired deadline)
            return self.recv(max_n, 0)
        return []

    def _give_up(self, max_n: int) -> list[int]:
        """A receive ends empty-handed (its deadline passed, or it never waits): what came
        since, else [].

        NEED_WAKEUP stays set: a non-blocking caller goes on to wait on fileno() (select,
        asyncio), and the peer must ring it. In select mode the bell is drained too, so select
        does not report this empty ring readable again; a packet that came meanwhile rings it anew.
        """
        if self._selecting:
            doorbell.drain(self._bell)
            self._arm_select()
            if self._rx.available():
                return self.recv(max_n, 0)
        return []

    def poll(self) -> int:
        """Packets waiting on the RX ring, without blocking."""
        return self._rx.available()

    # -- conveniences -----------------------------------------------------------------

    def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Copy one message into a packet and send it (a convenience, not the fast path)."""
        (pkt,) = self.alloc(1)
        try:
            self.write(pkt, data)
        except ValueError:
            self._cache.append(pkt)
            raise
        if not self.send([pkt]):
            self._cache.append(pkt)
            raise BlockingIOError(errno.EAGAIN, "TX ring full")

    def recv_bytes(self, timeout: object = _UNSET) -> bytes:
        (pkt,) = self.recv(1, timeout)
        try:
            return bytes(self.view(pkt))
        finally:
            self.free([pkt])

    def events(self) -> Iterator[Event]:
        """What the nexus posted on this channel's EVENT ring since the last call."""
        if self.defunct:
            self._check_state()
        return self._events.drain()

    def stats(self) -> dict[str, int]:
        base = self.role * STATS_PER_ROLE
        return {s.name.lower(): self._stats[base + s] for s in Stat}

    def flow_advisory(self) -> dict[str, int | bool]:
        """The flow advisory the nexus publishes for this channel (read-only memory)."""
        state, qp, qb, susp = FLOWADV.unpack_from(self._flowadv, self.role * FLOWADV.size)
        return {"suspended": state == FlowState.SUSPENDED, "queued_packets": qp,
                "queued_bytes": qb, "suspensions": susp}

    @property
    def active_packets(self) -> int:
        return self._words[W_ACTIVE]

    @property
    def ring_limit(self) -> int:
        return self._tx.limit

    def resize(self, ring_size: int | None = None, packets: int | None = None) -> None:
        """Ask the nexus for another TX ring limit or pool size, keeping the channel open."""
        if self._control is None:
            raise ChannelError(errno.ENOTSUP, "this channel has no control path")
        self._control.resize(self.id, ring_size, packets)
        self._check_state()

    def close(self) -> None:
        """Hand back every packet in hand and tell the nexus; idempotent."""
        if self.closed:
            return
        try:
            if self._cache and not self.defunct:
                self.free(self._cache)
                self._cache.clear()
            if self._control is not None:
                try:
                    self._control.close_channel(self.id)
                except OSError:
                    pass
        finally:
            self._release()

    def disown(self) -> None:
        """In a child of fork(): unmap this process's copy and close its descriptors; the rings,
        the packets in hand and the channel itself stay the parent's (no free, no CloseChannel)."""
        if not self.closed:
            self._cache.clear()
            self._release()

    def __del__(self) -> None:
        # like a socket: an unclosed channel gives its descriptors back when collected
        if not getattr(self, "closed", True):
            self._release()

    def _release(self) -> None:
        """Unmap and close everything this process holds for the channel."""
        self.closed = True
        for ring in (self._tx, self._rx, self._alloc, self._free):
            ring.release()
        self._events.q.release()
        for view in self._views or ():
            view.release()
        self._arrays = None
        if self.tcpinfo is not None:
            self.tcpinfo.release()
        for view in (self.buf, self.umd, self._words, self._stats, self._flowadv, self._mem):
            view.release()
        for m in (self._shm, self._ro):
            try:
                m.close()
            except BufferError:
                pass  # the application still holds a view; unmapped when it lets go
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
