"""The nexus end of a flow-switch channel.

A flow channel is a user pipe whose second end is the flow switch itself: the
client's TX ring is consumed here and its RX ring produced here. The pool is
the client's (one entity); the switch takes packets out of it for receive and
puts sent packets back.

Transmit copies each packet out of the client's pool exactly once, into
memory only the nexus can reach, after the packet's ownership is checked;
validation happens on that copy, never on the client-writable original.

Receive rings the client's bell when it sleeps (NEED_WAKEUP): at once, or,
on a netif with receive mitigation and for a flow outside the low-latency
class, when the rule of usnet.domain.netif.mitigation says so; a held bell is
listed with the switch, whose loop rings it when its deadline comes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from usnet.abi import ring as ringmod
from usnet.abi.events import EventType
from usnet.abi.ring import Consumer, Producer
from usnet.abi.rxchain import CHAIN_MAX_BYTES
from usnet.abi.schema import FLOWADV, STATS_PER_ROLE, FlowState, RingKind, Stat
from usnet.abi.umd import GSO_SHIFT, RX_MORE, TX_REPORT, UMD_WORDS, W_DEADLINE, W_FLAGS, W_GSO, W_LENGTH, W_TAG
from usnet.domain.mem.pool import HELD
from usnet.domain.netif.mitigation import MIN_FRAMES, RxMitigation
from usnet.domain.userpipe import UserPipe

__all__ = ["CLIENT", "NEXUS", "FlowPort", "TxMark", "TxMeta"]

CLIENT, NEXUS = 0, 1
_NO_ROWS = np.empty((0, 0), np.uint8)
_NO_LENS = np.empty(0, np.uint32)
_NO_RECS = np.empty((0, UMD_WORDS), np.uint32)
# From this row width (bytes) a batch is copied row by row: numpy's gather of wide rows goes through
# a temporary as big as the batch (a megabyte of 64 KB super-segments), which costs some ten times
# the copy (measured: 16 rows of 64 KB, 650 us gathered, 100 us row by row; equal at 16 KB)
_WIDE = 16384
# Up to this many packets a flow sent are read in scalars (`_pull`): below it a batch's array
# calls (a microsecond or more each, whatever the batch's size) cost more than the loop
_FEW = 4
# Up to this many received packets are delivered in scalars (`_deliver_few`). The batch path
# copies each packet through `np.frombuffer` as well, so the scalar one stays cheaper at every
# size measured (issue 16, a MemWire, 200- and 1,448-byte packets: about half the time for 1 to
# 64 packets; 10, a server's requests from 10 connections, 9.7 against 17.5 µs)
_DELIVER_FEW = 64
# The words of a UMD record that mark a packet (its deadline, TX_REPORT in its flags; RX_MORE, a
# receive flag, is not one), as one mask over the columns _MARK_LO:_MARK_HI: a batch's "any marked?"
# is one test, not four array calls (issue 18: paid once per flow's batch of 32 at 1,000 flows)
_MARK_LO = min(W_DEADLINE, W_FLAGS)
_MARK_HI = max(W_DEADLINE + 2, W_FLAGS + 1)
_MARK_BITS = np.zeros(_MARK_HI - _MARK_LO, np.uint32)
_MARK_BITS[W_DEADLINE - _MARK_LO : W_DEADLINE + 2 - _MARK_LO] = 0xFFFFFFFF
_MARK_BITS[W_FLAGS - _MARK_LO] = TX_REPORT


class TxMark(NamedTuple):
    """What one marked packet asked for, read once from its UMD (docs/abi.md, UMD).

    `tag` is echoed in its TX_STATUS, `deadline_ns` (CLOCK_MONOTONIC, 0:
    none) is when it must no longer be sent, `report` asks for SENT too, and
    `packet` is its pool index (the TX_STATUS's packet). Made only for the few
    packets that carry a mark, so the bulk of a batch pays nothing.
    """

    tag: int
    deadline_ns: int
    report: bool
    packet: int


class TxMeta(NamedTuple):
    """The packets of a transmit batch that carry a deadline or ask for a report.

    `marks` maps a position in the batch to its TxMark; `taken_ns` is when
    the batch came off the TX ring.
    """

    marks: dict[int, TxMark]
    taken_ns: int


class FlowPort:
    def __init__(self, pipe: UserPipe) -> None:
        self.pipe = pipe
        lay = pipe.layout
        mem = pipe.shared_mv
        tx = lay.ring(RingKind.PIPE, CLIENT)
        rx = lay.ring(RingKind.PIPE, NEXUS)
        corrupt = pipe.ends[CLIENT].on_corrupt  # an impossible counter is a violation of the client's end
        self.tx = Consumer(mem, tx.offset, tx.capacity, on_corrupt=corrupt)
        self.rx = Producer(mem, rx.offset, rx.capacity, pipe.schema.ring_size, on_corrupt=corrupt)
        pipe.ends[CLIENT].rx_producer = self.rx  # the stall watch trusts our count of what we published
        stride = pipe.schema.packet_bytes
        self.stride = stride
        shared = pipe.arena.shared
        # numpy views of the pool, for batch gathers and scatters (packet i is buf[i])
        self.buf = np.frombuffer(shared, np.uint8, lay.max_packets * stride, lay.buf_offset).reshape(
            lay.max_packets, stride)
        self.buf_mv = self.buf.data.cast("B")  # flat, for views of a packet's bytes (the LL path)
        self.umd_np = np.frombuffer(shared, np.uint32, lay.max_packets * lay.umd_size // 4, lay.umd_offset)
        self.umd_mv = self.umd_np.data  # the same words as Python ints: a few packets' reads, no numpy scalars
        self.umd_rec = self.umd_np.reshape(lay.max_packets, UMD_WORDS)  # packet i's record is umd_rec[i]
        pipe.view_holders.append(self._release_views)  # the pipe's destroy unmaps the arena: these go first
        self.client_bell = pipe.ends[CLIENT].bell
        self.bell = pipe.ends[NEXUS].bell.wait_fd  # the client rings this when it sends; we sleep on it
        pipe.ends[NEXUS].attached = True
        self.suspended = False
        self.suspensions = 0
        self.rx_dropped = 0
        self.stalled = False  # the client stopped reading its RX ring (Domain._check_stalls): arrivals are dropped
        self.rx_dropped_stalled = 0  # of rx_dropped, those refused while stalled
        self.refused = 0
        # Receive mitigation (enable_mitigation): its state, whether it applies now (not while the
        # flow is in the low-latency class), the clock, and where a held bell is listed.
        self.mitigation: RxMitigation | None = None
        self.mitigate = False
        self.clock: Callable[[], float] = time.monotonic
        self.held_bells: dict[FlowPort, None] = {}  # the switch's own, once mitigation is enabled
        self.rx_bells = 0  # bells rung for received packets
        self.rx_bells_held = 0  # publications that found the client asleep and did not ring at once
        self.rx_bells_late = 0  # held bells rung when their deadline came
        # The receive barrier's fault goes where the domain counts every fault (its Status
        # `faults`), and defuncts the channel; without a domain (a bare switch), the pipe's own.
        self.on_fault: Callable[[str, Exception], None] = lambda where, exc: pipe.fault(CLIENT, where, exc)

    def _release_views(self) -> None:
        """Drop every view of the pool's memory (the pipe is being destroyed: its arena is unmapped next).

        The port is off the switch by then; empty arrays in their place make a
        late use fail loudly instead of reaching unmapped memory.
        """
        self.tx.release()
        self.rx.release()
        self.buf_mv.release()
        self.umd_mv.release()
        self.buf, self.umd_np, self.umd_rec = _NO_ROWS, _NO_LENS, _NO_RECS

    def enable_mitigation(self, clock: Callable[[], float], held_bells: dict[FlowPort, None],
                          **params: float) -> None:
        """Coalesce this port's receive bells (usnet.domain.netif.mitigation); `held_bells` lists ports holding one.

        At most a quarter of the RX ring waits for a bell, whatever the rate.
        """
        self.mitigation = RxMitigation(max(MIN_FRAMES, self.rx.limit // 4), **params)
        self.mitigate = True
        self.clock = clock
        self.held_bells = held_bells

    def set_low_latency(self, ll: bool) -> None:
        """The low-latency class skips receive mitigation: the hook of a lease's grant and end."""
        mit = self.mitigation
        self.mitigate = mit is not None and not ll
        if ll and mit is not None and mit.deadline is not None:
            mit.cancel()
            self.ring_held()

    def ring_held(self) -> None:
        """A held bell's time has come: ring it if the client still sleeps with packets waiting."""
        if self.pipe.defunct_reason is None and self.rx.need_wakeup() and self.rx.published_unconsumed() > 0:
            self.rx_bells_late += 1
            self._ring_client()

    def bell_stats(self) -> dict[str, int]:
        return {"rx_bells": self.rx_bells, "rx_bells_held": self.rx_bells_held, "rx_bells_late": self.rx_bells_late}

    @property
    def pool(self):
        return self.pipe.pool

    def pull(self, max_n: int, headroom: int = 0,
             draining: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, TxMeta | None]:
        """Take up to `max_n` packets the client sent: copied, ownership checked, freed.

        Returns (rows, lens, gso, meta): packet i's copy is rows[i, headroom:headroom + lens[i]],
        gathered out of the pool in one numpy copy into memory only the nexus
        can reach; the lengths and gso sizes (UMD: 0, or the segment payload a
        TCP super-segment asks to be cut at) are read once from the UMD, and
        so are the deadlines and report flags of the few that have them (`meta`).
        `headroom` leaves room in front of each row for the link header. A
        suspended flow gives nothing unless `draining` (its channel is closing:
        what it sent goes out).
        """
        with self.pipe.lock:  # an in-process client's kick serves this pipe from its own thread
            return self._pull(max_n, headroom, draining)

    def _pull(self, max_n: int, headroom: int, draining: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                       TxMeta | None]:
        good, lens, gso, meta, top = self._take(max_n, draining)
        if not len(good):
            return _NO_ROWS, _NO_LENS, _NO_LENS, None
        if len(good) == 1:  # one packet (a handshake's, a request's): no gather, no max
            w = int(lens[0])
            rows = np.empty((1, headroom + w), np.uint8)
            rows[0, headroom:] = self.buf[int(good[0]), :w]
            self.top_up(collected=True)
            return rows, lens, gso, meta
        w = top
        rows = np.empty((len(good), headroom + w), np.uint8)
        if w < _WIDE:
            rows[:, headroom:] = self.buf[good, :w]
        else:  # super-segments: the gather's temporary would cost some 10 times the copy itself
            buf = self.buf
            for i, g in enumerate(good.tolist()):
                rows[i, headroom:] = buf[g, :w]
        self.top_up(collected=True)
        return rows, lens, gso, meta

    def take(self, max_n: int, draining: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                 TxMeta | None]:
        """(indices, lengths, gso sizes, TxMeta or None) of up to `max_n` packets the client sent,
        ownership checked, freed.

        Nothing is copied: the caller reads the buffers before it returns to
        the loop (the LL path sends from them), then calls `top_up`, which
        is what may hand them to the client again. Hold `pipe.lock` across
        all of it: an in-process client's kick serves this pipe from its own thread.
        """
        return self._take(max_n, draining)[:4]

    def _take(self, max_n: int, draining: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, TxMeta | None, int]:
        """`take`, and the longest length of the batch (for `_pull`'s copy: one reduction, not two)."""
        pipe = self.pipe
        if pipe.defunct_reason is not None or (self.suspended and not draining):
            return _NO_LENS, _NO_LENS, _NO_LENS, None, 0
        idx = self.tx.pop_array(max_n)
        if not len(idx) or pipe.defunct_reason is not None:
            return _NO_LENS, _NO_LENS, _NO_LENS, None, 0
        good = self._release_sent(idx)
        if not len(good):
            return _NO_LENS, _NO_LENS, _NO_LENS, None, 0
        # The packets are back in the pool but nothing reuses them before `top_up`:
        # the domain is single-threaded, so the caller reads what the client wrote.
        umd = self.umd_np
        if len(good) <= _FEW:  # a few (the LL path's usual batch, a handshake's): scalars, not array calls
            stride = self.stride
            lens_l, gso_l = [], []
            for g in good.tolist():
                w = g * UMD_WORDS
                if umd[w + W_FLAGS] & TX_REPORT or umd[w + W_DEADLINE] or umd[w + W_DEADLINE + 1]:
                    break  # a marked packet: its TxMeta is read by the batch path below
                lens_l.append(min(int(umd[w]), stride))
                gso_l.append(int(umd[w + W_GSO]) >> GSO_SHIFT)
            else:
                return good, np.array(lens_l, umd.dtype), np.array(gso_l, umd.dtype), None, max(lens_l)
        # One gather of the batch's whole records, then columns (issue 18: a flow's batch of 32 at
        # 1,000 flows paid some fifteen array calls here, a gather per word; the work is per batch)
        rec = self.umd_rec[good]
        lens = rec[:, W_LENGTH]
        top = int(lens.max())
        if top > self.stride:  # a length past its buffer is cut to it (the rest is not ours to read)
            lens, top = np.minimum(lens, self.stride), self.stride
        meta = None
        if (rec[:, _MARK_LO:_MARK_HI] & _MARK_BITS).any():  # a deadline or TX_REPORT, in one test
            at = good * UMD_WORDS  # a marked packet: its batch's marks read as before
            meta = self._meta(good, at, self._marked(at))
        return good, lens, rec[:, W_GSO] >> GSO_SHIFT, meta, top

    def _marked(self, at: np.ndarray) -> np.ndarray:
        """Whether each packet (UMD word offsets `at`) carries a deadline or asks for a report."""
        umd = self.umd_np
        # only TX_REPORT is a transmit flag: an RX_MORE left on a packet the client sends back means nothing
        return umd[at + W_FLAGS] & TX_REPORT | umd[at + W_DEADLINE] | umd[at + W_DEADLINE + 1]

    def _release_sent(self, idx: np.ndarray | list[int]) -> Any:
        """The packets the client sent (`idx`, off its TX ring) back in the pool, ownership checked
        (the same kind of sequence comes back); the refused are counted, reported on the
        client's event ring, and a violation."""
        pipe = self.pipe
        pipe._collect_taken(pipe.ends[CLIENT])  # what it took from ALLOC since we last looked
        good, refused = pipe.pool.release_checked(idx, NEXUS)
        if refused:
            self.refused += len(refused)
            end = pipe.ends[CLIENT]
            pipe.stats[CLIENT * STATS_PER_ROLE + Stat.REFUSED] += len(refused)
            for pkt, reason in refused[:16]:
                end.events.post(EventType.REFUSED, reason, pkt)
            pipe._violation(end, refused[0][1], refused[0][0], posted=True)
        return good

    def pull_any(self, max_n: int, few: int, headroom: int = 0, draining: bool = False,
                 widest: int | None = None) -> tuple[
            tuple[list[bytes], list[int], TxMeta | None] | None,
            tuple[np.ndarray, np.ndarray, np.ndarray, TxMeta | None] | None]:
        """`_pull_few` when at most `few` packets wait, else `pull`: (what `_pull_few` gave, None) or
        (None, what `pull` gave). One look at the ring under one lock: the switch asked twice
        (the few path, then `pull`), a lock and a dozen calls a flow's batch, paid once per 32
        datagrams at 1,000 flows (issue 18). The same checks, in the same order.

        `widest`: the longest row (headroom included) the caller's scalar path takes. A few
        packets with a longer one among them and no marks (a bulk sender's TCP super-segments,
        a handful a turn) come as `pull`'s rows, each packet copied once into its row: copied
        into a bytearray first, a 64 KB packet was copied a second time into the rows the
        device writes from (issue 18, bulk transmit)."""
        with self.pipe.lock:  # as in `pull`
            got = self._pull_few(max_n, few, headroom, draining, widest)
            if got is not None:
                return got
            return None, self._pull(max_n, headroom, draining)

    def _pull_few(self, max_n: int, few: int, headroom: int, draining: bool, widest: int | None) -> tuple[
            tuple[list[bytes], list[int], TxMeta | None] | None,
            tuple[np.ndarray, np.ndarray, np.ndarray, TxMeta | None] | None] | None:
        """`pull` when at most `few` packets wait on the TX ring (a handshake's, a request's): each
        copied out of the pool into a bytes of its own (the one copy: checked and sent as it is),
        with its gso size, in scalars, as (that, None); None, taking nothing, when more wait
        (`pull`'s arrays then cost less than packet by packet). A batch with a row longer than
        `widest` and no marks comes as (None, rows), as `pull` gives them. With `pipe.lock` held
        (`pull_any`).

        The same checks and the same order as `pull`: the ring's counter, ownership
        (`_release_sent`), the UMD's length cut to the buffer, the marks (`TxMeta`), then
        `top_up` once the copies are made (issue 18: usnetd's cost for tiny batches).
        """
        pipe = self.pipe
        if pipe.defunct_reason is not None or (self.suspended and not draining):
            return ([], [], None), None
        avail = self.tx.available()
        if avail > few:
            return None
        idx = self.tx.pop(min(max_n, avail))
        if not idx or pipe.defunct_reason is not None:
            return ([], [], None), None
        good = self._release_sent(idx)
        if not len(good):
            return ([], [], None), None
        umd, stride = self.umd_mv, self.stride
        lens: list[int] = []
        gsos: list[int] = []
        meta = None
        top = 0  # the longest packet
        for g in good:
            w = g * UMD_WORDS
            if meta is None and (umd[w + W_FLAGS] & TX_REPORT or umd[w + W_DEADLINE] or umd[w + W_DEADLINE + 1]):
                arr = np.array(good, np.int64)  # a marked packet: its batch's marks read as `take` reads them
                meta = self._meta(arr, arr * UMD_WORDS, self._marked(arr * UMD_WORDS))
            ln = umd[w]
            if ln > stride:  # a length past its buffer is cut to it (the rest is not ours to read)
                ln = stride
            if ln > top:
                top = ln
            lens.append(ln)
            gsos.append(umd[w + W_GSO] >> GSO_SHIFT)
        if widest is not None and headroom + top > widest and meta is None:
            rows = np.empty((len(lens), headroom + top), np.uint8)
            buf = self.buf
            for i, g in enumerate(good):
                rows[i, headroom : headroom + lens[i]] = buf[g, : lens[i]]
            self.top_up(collected=True)
            return None, (rows, np.array(lens, np.uint32), np.array(gsos, np.uint32), None)
        mv = self.buf_mv
        pkts = [mv[g * stride : g * stride + ln].tobytes() for g, ln in zip(good, lens)]  # the one copy
        self.top_up(collected=True)
        return (pkts, gsos, meta), None

    def _meta(self, good: np.ndarray, at: np.ndarray, marked: np.ndarray) -> TxMeta:
        """What the marked packets of a batch asked for: read once, like the lengths."""
        pos = np.flatnonzero(marked)
        u64 = self.umd_np.view(np.uint64)  # tag and deadline are 8-byte aligned u64 words
        at = at[pos]
        return TxMeta({p: TxMark(t, d, bool(f & TX_REPORT), i) for p, t, d, f, i in zip(
            pos.tolist(), u64[(at + W_TAG) // 2].tolist(), u64[(at + W_DEADLINE) // 2].tolist(),
            self.umd_np[at + W_FLAGS].tolist(), good[pos].tolist())}, time.monotonic_ns())

    def top_up(self, collected: bool = False) -> None:
        """Refill the client's ALLOC ring as we take its packets, as a NIC refills its ring.

        A client that keeps sending then never has to kick us for buffers. `collected`: what it
        took was just collected (`_release_sent`, under the same lock): not looked at again.
        """
        pipe = self.pipe
        end = pipe.ends[CLIENT]
        if not collected and end.alloc.prod - end.taken > end.fill // 2:
            # what it took since we last looked: else a ring lent to the client's cache would look full
            pipe._collect_taken(end)
        if end.alloc.prod - end.taken <= end.fill // 2:
            pipe._refill(end)

    def deliver(self, payloads: list) -> int:
        """Copy received packets into the client's pool and publish them on its RX ring.

        Returns how many were delivered; the rest are dropped (pool exhausted,
        RX ring full) and counted, as a NIC drops when its ring is full. Each
        packet is copied straight into its buffer: with 64 KB super-segments
        a staging array would cost more. One bigger than a packet (a
        reassembled UDP datagram: the switch cuts TCP to fit, `_too_big`)
        takes several (`_deliver_chains`).
        """
        if not payloads:
            return 0
        n = len(payloads)
        if n <= _DELIVER_FEW and max(map(len, payloads)) <= self.stride:
            return self._deliver_few(payloads, n)
        lens = np.fromiter(map(len, payloads), np.uint32, n)
        if int(lens.max()) > self.stride:
            return self._deliver_chains(payloads, lens)
        with self.pipe.lock:  # as in `pull`
            try:
                got = self._reserve(len(payloads), n)
                if len(got):
                    buf = self.buf
                    for i, p in zip(got.tolist(), payloads):
                        buf[i, : len(p)] = np.frombuffer(p, np.uint8)
                    self._publish(got, lens[: len(got)])
                return len(got)
            except Exception as e:  # the channel's barrier: its fault never reaches the switch
                return self._fault("receive", e, n)

    def _deliver_few(self, payloads: list, n: int) -> int:
        """`deliver` of a few (`n`) packets that each fit one buffer (a handshake's, a request's):
        the same reservation, copies and publication, in scalars rather than the dozen array calls
        a batch pays whatever its size (issue 18: usnetd's cost per small batch)."""
        with self.pipe.lock:  # as in `pull`
            try:
                got = self._reserve(n, n)
                k = len(got)
                if not k:
                    return 0
                buf_mv, umd, stride = self.buf_mv, self.umd_mv, self.stride  # Python ints stored, no numpy scalars
                for i, p in zip(got.tolist(), payloads):
                    ln = len(p)
                    at = i * stride
                    try:
                        buf_mv[at : at + ln] = p
                    except (ValueError, TypeError):  # not a flat byte buffer: as the batch path copies it
                        self.buf[i, :ln] = np.frombuffer(p, np.uint8)
                    w = i * UMD_WORDS
                    umd[w] = ln
                    umd[w + W_FLAGS] = 0
                if k == 1:
                    self.rx.push_one(int(got[0]))
                else:
                    self.rx.push(got)
                self._wake_client(k)
                return k
            except Exception as e:  # as in `deliver`
                return self._fault("receive", e, n)

    def _deliver_chains(self, payloads: list, lens: np.ndarray) -> int:
        """`deliver` for a batch with packets bigger than one: each copied, once, into as many
        consecutive packets as it needs (usnet.abi.rxchain), all but the last flagged RX_MORE and
        full; a whole chain or none of it goes on the ring (what does not fit is returned to the
        pool), so the client never sees a part. Past CHAIN_MAX_BYTES (no IP packet is) dropped."""
        stride = self.stride
        n = len(payloads)
        if int(lens.max()) > CHAIN_MAX_BYTES:
            fits = lens <= CHAIN_MAX_BYTES
            payloads = [p for p, ok in zip(payloads, fits.tolist()) if ok]
            lens = lens[fits]
        slots = (lens.astype(np.int64) + stride - 1) // stride
        ends = np.cumsum(slots)
        want = int(ends[-1]) if len(ends) else 0
        with self.pipe.lock:  # as in `pull`
            try:
                got = self._reserve(want, n, ends)
                used = len(got)
                k = int(np.searchsorted(ends, used, "right"))  # the chains that fit whole
                if k:
                    buf = self.buf
                    plens = np.full(used, stride, np.uint32)
                    flags = np.full(used, RX_MORE, np.uint32)
                    last = ends[:k] - 1
                    plens[last] = lens[:k] - (slots[:k] - 1) * stride
                    flags[last] = 0
                    at = 0
                    for p, s in zip(payloads[:k], slots[:k].tolist()):
                        src = np.frombuffer(p, np.uint8)
                        for j in range(s):
                            piece = src[j * stride : (j + 1) * stride]
                            buf[int(got[at]), : len(piece)] = piece
                            at += 1
                    self._publish(got, plens, flags)
                return k
            except Exception as e:  # as in `deliver`
                return self._fault("receive", e, n)

    def deliver_rows(self, rows: np.ndarray, col: int, lens: np.ndarray) -> int:
        """As `deliver`, for packets in rows[i, col:col + lens[i]]: one scatter into the pool."""
        n = len(lens)
        if n and int(lens.max()) > self.stride:
            fits = lens <= self.stride
            rows, lens = rows[fits], lens[fits]
        with self.pipe.lock:  # as in `pull`
            try:
                got = self._reserve(len(lens), n)
                k = len(got)
                if k:
                    w = int(lens[:k].max())
                    self.buf[got, :w] = rows[:k, col : col + w]
                    self._publish(got, lens[:k])
                return k
            except Exception as e:  # as in `deliver`
                return self._fault("receive", e, n)

    def _fault(self, where: str, exc: Exception, offered: int) -> int:
        """A fault while delivering to this channel: defunct it; the batch counts as dropped here."""
        self.rx_dropped += offered
        self.on_fault(where, exc)
        return 0

    def _reserve(self, want: int, offered: int, ends: np.ndarray | None = None) -> np.ndarray:
        """Pool packets for up to `want` of `offered` arrivals; the rest are counted as dropped.

        `ends`: the running sum of the packets each arrival takes (`_deliver_chains`); what is
        reserved is cut to whole arrivals (a part's packets go back to the pool), and the drops
        are counted in arrivals.
        """
        pipe = self.pipe
        got = _NO_LENS
        taken = 0
        if self.stalled:  # it does not read: nothing more piles up for it
            self.rx_dropped += offered
            self.rx_dropped_stalled += offered
            return got
        if pipe.defunct_reason is None and want:
            room = self.rx.space(want)
            if room < want:
                want = room
            if want > 0:
                got = pipe.lend(want, NEXUS)  # what the client freed comes back before the pool grows
                taken = len(got)
                if taken:
                    pipe.pool.take(got)
        if ends is not None:
            taken = int(np.searchsorted(ends, taken, "right"))  # the arrivals that fit whole
            used = int(ends[taken - 1]) if taken else 0
            if len(got) > used:
                pipe.pool.reclaim(got[used:])
                got = got[:used]
        if pipe.defunct_reason is None:
            self.rx_dropped += offered - taken
        return got

    def _publish(self, got: np.ndarray, lens: np.ndarray, flags: np.ndarray | int = 0) -> None:
        """Set the lengths and flags, push the packets on the RX ring, ring the client if it sleeps.

        The flags are written on every packet: a packet comes back from the client with whatever
        its UMD held (an RX_MORE of an earlier chain included), and RX_MORE must mean ours.
        """
        at = got * UMD_WORDS
        self.umd_np[at] = lens
        self.umd_np[at + W_FLAGS] = flags
        self.rx.push(got)
        self._wake_client(len(got))

    def _wake_client(self, k: int) -> None:
        """`k` packets were published: ring the client if it sleeps, now or when mitigation says."""
        ringmod.fence()
        mit = self.mitigation
        if not self.mitigate or mit is None:
            if self.rx.need_wakeup():
                self._ring_client()
        elif mit.arrive(self.clock(), k, self.rx.need_wakeup()):
            self._ring_client()
        elif mit.deadline is not None:
            self.rx_bells_held += 1
            self.held_bells[self] = None  # the switch rings it when it is due

    def _ring_client(self) -> None:
        self.rx_bells += 1
        self.client_bell.ring()

    def tx_pending(self) -> int:
        return 0 if self.pipe.defunct_reason is not None else self.tx.available()

    def set_need_wakeup(self) -> None:
        """Going idle: ask the client to ring our bell when it sends."""
        self.tx.set_need_wakeup()

    def clear_need_wakeup(self) -> None:
        self.tx.clear_need_wakeup()

    def advise(self, suspended: bool, queued_packets: int, queued_bytes: int) -> None:
        """Publish the flow advisory; on a change, tell the client on its event ring."""
        if suspended != self.suspended:
            self.suspended = suspended
            if suspended:
                self.suspensions += 1
            end = self.pipe.ends[CLIENT]
            end.events.post(EventType.FLOW_SUSPENDED if suspended else EventType.FLOW_RESUMED,
                            value=queued_packets, aux=queued_bytes)
            end.ring_bell()
        FLOWADV.pack_into(self.pipe.flowadv, CLIENT * FLOWADV.size,
                          FlowState.SUSPENDED if suspended else FlowState.ACTIVE,
                          queued_packets, queued_bytes, self.suspensions)

    def held_by_client(self) -> int:
        return int(np.count_nonzero((self.pool.state == HELD) & (self.pool.owner == CLIENT)))
