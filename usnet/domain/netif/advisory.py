"""One netif's interface advisory: when to publish it, what goes in it, whom to tell.

The domain's loop calls `turn()` (`poll` at the netif's time) on every pass (usnet.domain.loop); the
time is the netif's own clock, so tests drive it with theirs. Nothing here
runs per packet: a publication reads the netif's counters, its queue totals
and its scheduler's slot counters, which the data path keeps anyway.

When to publish:

- every `interval` seconds (5 ms by default) while the netif is *active*:
  frames moved since the last publication, frames are queued, or the last
  movement was less than `IDLE_AFTER` ago;
- once more as it goes idle, with its rates at zero and the IDLE flag;
  then the domain stops waking for it (a new netif starts so);
- at once, on the first pass of the loop that finds it moved again (the
  loop always makes a pass after the work it wakes for), and then every
  `interval` again.

Whom to tell: when the transmit trend suggestion changes, every flow
channel of the netif that read the last announcement posted to it (or never
got one) gets an ADVISORY_UPDATED event (code: direction TX, value: the new
Trend, aux: the publication's seq) and its bell, so a client asleep on its
channel hears of it. One that has not read the last is skipped (`_announce`)
and looked at again within `RECHECK_MAX` seconds of a later change (`_recheck`):
once it has read, it gets the newest trend and is rung. Not on every publication.
"""

from __future__ import annotations

from usnet.abi.advisory import FLAG_GONE, FLAG_IDLE, FLAG_PACED, SIZE, U64_MAX, AdvisoryWriter, Direction, Record, Trend
from usnet.abi.events import EventType
from usnet.domain.netif.estimate import TAU, RateMeter, ShareMeter, queue_delay, suggest
from usnet.domain.netif.txsched import LL
from usnet.domain.switch.flowswitch import FlowSwitch
from usnet.domain.switch.port import CLIENT
from usnet.domain.userpipe import PipeEnd, UserPipe

__all__ = ["NetifAdvisory"]

IDLE_AFTER = 5 * TAU  # seconds without movement before an advisory stops being republished
RECHECK = 0.25  # seconds: how soon after a change the channels it skipped are looked at again
RECHECK_MAX = 2.0  # ... doubled after each look that found none reading, up to this
_NEVER = float("inf")


def _u64(x: float) -> int:
    """`x` rounded into a u64 field: 0 for what is not above 0 (NaN too), U64_MAX past it. Seven
    of these a publication: two comparisons, not `min` and `max` (issue 18, usnetd's calls)."""
    if not x > 0:
        return 0
    r = round(x)
    return r if r < U64_MAX else U64_MAX


def _ns(seconds: float) -> int:
    return _u64(seconds * 1e9)


class NetifAdvisory:
    """The NEXUSADV memfd of one netif and the state that fills it."""

    def __init__(self, sw: FlowSwitch, interval: float, target: float) -> None:
        self.sw = sw
        self.netif = sw.netif
        self.interval = interval
        self.target = target
        self.writer = AdvisoryWriter.memfd(self.netif.name)
        self.tx_rate = RateMeter()  # bits/s
        self.rx_rate = RateMeter()
        self.ll_use = ShareMeter()
        self.delay = 0.0  # the transmit queueing delay last published
        self.trend = Trend.HOLD  # the transmit trend last published
        self.flags = FLAG_PACED if self.netif.sched is not None else 0
        self.idle = False
        now = self.netif.clock()
        self.quiet_since = now - IDLE_AFTER  # a new netif is idle until something moves
        self.next_due = now
        self.seq = 0
        # per channel end: its pipe and the event ring position of the last announcement posted
        # (-1: none yet); watched ones are told at every change, the skipped at `_recheck`
        self._watch: dict[PipeEnd, tuple[UserPipe, int]] = {}
        self._behind: dict[PipeEnd, tuple[UserPipe, int, int]] = {}  # ... and `_made` when it was
        self._made = 0  # announcements made
        self._seen_fid = -1  # the highest flow id `_join_new` looked at
        self._recheck_at = _NEVER  # armed by a change that skipped a channel (`_announce`)
        self._every = RECHECK  # how long after it (`_recheck`)
        self._seen_tx = self._seen_rx = -1  # the netif's frame counters at the last publication
        self.publish(now)

    @property
    def fd(self) -> int:
        assert self.writer.fd is not None
        return self.writer.fd

    size = SIZE

    def poll(self, now: float) -> float | None:
        """Publish what `turn` found due: at once if the idle netif moved, else if the interval is up.

        Returns the seconds until the next publication is due, or None while
        idle (nothing to wake for).
        """
        if self.idle:
            self.idle = False
            self.publish(now, woke=True)
        elif now >= self.next_due:
            self.publish(now)
        return None if self.idle else max(0.0, self.next_due - now)

    def turn(self) -> float | None:
        """Publish if due, at the netif's time, as the domain loop calls it every turn: the common
        cases short (issue 18, the loop's fixed cost per turn). An idle netif that did not move (its
        frame counters as at the last publication, nothing queued) and owes no channel a look
        (`_recheck`) makes no call and reads no clock; an active one not yet due reads the clock
        and nothing else."""
        n = self.netif
        if self.idle:
            if n.tx_frames == self._seen_tx and n.rx_frames == self._seen_rx and not (n.active or n.active_ll):
                return None if self._recheck_at == _NEVER else self._rechecked(n.clock(), None)
            now = n.clock()
            left = self.poll(now)
        else:
            now = n.clock()
            left = self.next_due - now
            if left <= 0:
                left = self.poll(now)
        return left if self._recheck_at == _NEVER else self._rechecked(now, left)

    def _rechecked(self, now: float, left: float | None) -> float | None:
        """`_recheck` if due; `left` (seconds to the next publication, None: none) shortened to
        the next recheck."""
        at = self._recheck_at
        if at == _NEVER:
            return left
        if now >= at:
            self._recheck(now)
            at = self._recheck_at
            if at == _NEVER:
                return left
        wait = at - now
        return wait if left is None or wait < left else left

    def publish(self, now: float, woke: bool = False) -> int:
        """Measure, write both records, and announce a changed trend; returns the new seq."""
        tx, rx = self._measure(now, woke)
        self.seq = self.writer.publish(tx, rx)
        self._seen_tx, self._seen_rx = self.netif.tx_frames, self.netif.rx_frames
        self.next_due = now + self.interval
        if tx.trend != self.trend:
            self.trend = Trend(tx.trend)
            if not self.flags & FLAG_GONE:
                self._announce(self.trend)
        return self.seq

    def _measure(self, now: float, woke: bool) -> tuple[Record, Record]:
        """The two records as the netif stands at `now` (usnet.domain.netif.estimate says how)."""
        n = self.netif
        # the end of a silence restarts the rate measurements (usnet.domain.netif.estimate)
        tx_moved = self.tx_rate.update(now, n.tx_bytes * 8, restart=woke)
        rx_moved = self.rx_rate.update(now, n.rx_bytes * 8, restart=woke)
        ll_frames, ll_bytes, gen_frames, gen_bytes = n.queue_totals()
        if tx_moved or rx_moved or ll_frames or gen_frames:
            self.quiet_since = now
        elif now - self.quiet_since >= IDLE_AFTER:
            self.idle = True
            self.tx_rate.reset()
            self.rx_rate.reset()
        sched = n.sched
        link = sched.link_rate if sched is not None else 0.0
        use = 0.0
        if sched is not None:
            sched.catch_up(now)
            use = self.ll_use.update(now, sched.slots_used[LL], sched.slots_passed[LL])
        delay = queue_delay(ll_bytes + gen_bytes, self.tx_rate.rate, link)
        trend = suggest(delay, self.delay, self.target, self.tx_rate.rate, link)
        self.delay = delay
        common = {"flags": self.flags | (FLAG_IDLE if self.idle else 0), "timestamp_ns": _ns(now),
                  "max_bandwidth": _u64(link), "target_delay_ns": _ns(self.target)}
        tx = Record(Direction.TX, trend, throughput=_u64(self.tx_rate.rate), bytes=n.tx_bytes,
                    packets=n.tx_frames, ll_queued_packets=ll_frames, ll_queued_bytes=ll_bytes,
                    general_queued_packets=gen_frames, general_queued_bytes=gen_bytes,
                    queue_delay_ns=_ns(delay), ll_slot_use_ppm=round(use * 1_000_000), **common)
        # receive: no queue at the netif (frames go straight to the flows' rings), so no delay
        # and no evidence for a trend either way
        rx = Record(Direction.RX, Trend.HOLD, throughput=_u64(self.rx_rate.rate), bytes=n.rx_bytes,
                    packets=n.rx_frames, ll_queued_packets=0, ll_queued_bytes=0,
                    general_queued_packets=0, general_queued_bytes=0, queue_delay_ns=0,
                    ll_slot_use_ppm=0, **common)
        return tx, rx

    def _announce(self, trend: Trend) -> None:
        """ADVISORY_UPDATED, with its bell, on every flow channel of the netif that read the last
        one posted to it (or never got one); the others are skipped, and looked at again by
        `_recheck`. O(channels that read their events) a change, not O(channels) (issue 18).

        A channel skipped still holds an unread announcement, and the advisory, published
        before every event, holds the newest trend: it loses no information, only a wake-up
        it would not have used (it has not read the last). A plain UDP sender never reads
        its events: 1,000 of them in `usnet bench scale` each got a post (a cold ring, a lock,
        some 5 µs) at every change, the only work of the switch that grew with the channels
        per event. A channel that reads again is found by `_recheck` within `RECHECK_MAX`
        seconds of a change, told the newest trend if it missed one, and rung.
        New channels are found by their flow ids, which only grow (`_join_new`)."""
        self._made += 1
        self._join_new()
        watch, behind = self._watch, self._behind
        for end, (pipe, last) in list(watch.items()):
            with pipe.lock:  # an in-process client's kick may post on this ring from its own thread
                if pipe.defunct_reason is not None or pipe.destroyed or end.closed:
                    del watch[end]
                    continue
                ev = end.events
                if last >= 0 and ev.consumed() <= last:  # it has not read the last one: skipped
                    del watch[end]
                    behind[end] = (pipe, last, self._made - 1)
                    continue
                at = ev.prod
                if ev.post(EventType.ADVISORY_UPDATED, Direction.TX, value=int(trend), aux=self.seq):
                    end.ring_bell()
                    watch[end] = (pipe, at)
        if behind and self._recheck_at == _NEVER:
            self._recheck_at = self.netif.clock() + self._every

    def _join_new(self) -> None:
        """Channels of flows opened since the last look join the watched ones: a switch's flows
        dict is in the order of their ids, which only grow, so the new are at its end."""
        seen = self._seen_fid
        flows = self.sw.flows
        for fid in reversed(flows):
            if fid <= seen:
                break
            pipe = flows[fid].port.pipe
            end = pipe.ends[CLIENT]
            if end not in self._watch and end not in self._behind:
                self._watch[end] = (pipe, -1)
        if flows:
            self._seen_fid = max(seen, next(reversed(flows)))

    def _recheck(self, now: float) -> None:
        """The skipped channels again, after a change skipped some: one that has read its last
        announcement since is told the newest trend if it missed one (its event, its bell) and
        watched again; one that closed is forgotten. O(channels), at most once a change and at
        most once every `RECHECK` seconds, doubled (to `RECHECK_MAX`) while none reads: 1,000
        senders that never read cost a look each every 2 s, not a post at every change.

        No later look is needed without a later change: a channel that reads after this one has
        read, in the advisory, the newest trend there is (it was published before any event)."""
        self._recheck_at = _NEVER
        behind, watch = self._behind, self._watch
        live = {f.port.pipe.ends[CLIENT] for f in self.sw.flows.values()}
        for gone in [e for e in (*watch, *behind) if e not in live]:  # their flows left this netif
            watch.pop(gone, None)
            behind.pop(gone, None)
        woke = 0
        for end, (pipe, last, told) in list(behind.items()):
            with pipe.lock:  # as in `_announce`
                if pipe.defunct_reason is not None or pipe.destroyed or end.closed:
                    del behind[end]
                    continue
                ev = end.events
                if ev.consumed() <= last:
                    continue  # still not read: stays skipped
                del behind[end]
                woke += 1
                if told < self._made and not self.flags & FLAG_GONE:
                    at = ev.prod
                    if ev.post(EventType.ADVISORY_UPDATED, Direction.TX, value=int(self.trend), aux=self.seq):
                        end.ring_bell()
                        last = at
                watch[end] = (pipe, last)
        self._every = RECHECK if woke else min(2 * self._every, RECHECK_MAX)

    def close(self) -> None:
        """The netif is going: a last publication marked GONE, then the memfd closes.

        A client that mapped it keeps reading that last record.
        """
        if self.writer.fd is None:
            return
        self.flags |= FLAG_GONE
        self.publish(self.netif.clock())
        self.writer.close()
