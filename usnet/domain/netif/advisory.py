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
channel of the netif gets an ADVISORY_UPDATED event (code: direction TX,
value: the new Trend, aux: the publication's seq) and its bell, so a client
asleep on its channel hears of it; no second bell while the channel has not
read the last announcement rung (`_announce`). Not on every publication.
"""

from __future__ import annotations

from usnet.abi.advisory import FLAG_GONE, FLAG_IDLE, FLAG_PACED, SIZE, U64_MAX, AdvisoryWriter, Direction, Record, Trend
from usnet.abi.events import EventType
from usnet.domain.netif.estimate import TAU, RateMeter, ShareMeter, queue_delay, suggest
from usnet.domain.netif.txsched import LL
from usnet.domain.switch.flowswitch import FlowSwitch
from usnet.domain.switch.port import CLIENT
from usnet.domain.userpipe import PipeEnd

__all__ = ["NetifAdvisory"]

IDLE_AFTER = 5 * TAU  # seconds without movement before an advisory stops being republished


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
        self._rung: dict[PipeEnd, int] = {}  # per channel end: the last announcement rung (`_announce`)
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
        frame counters as at the last publication, nothing queued) makes no call and reads no clock;
        an active one not yet due reads the clock and nothing else."""
        n = self.netif
        if self.idle:
            if n.tx_frames == self._seen_tx and n.rx_frames == self._seen_rx and not (n.active or n.active_ll):
                return None
            return self.poll(n.clock())
        now = n.clock()
        left = self.next_due - now
        return left if left > 0 else self.poll(now)

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
        """ADVISORY_UPDATED on every flow channel of the netif (once per channel), and its bell
        unless the channel has not read the last announcement whose bell rang.

        That bell already woke it (or is still rung), and a client that reads its events on
        waking reads that announcement, then the advisory, which was published before this
        event and holds this trend: a second bell would wake it for nothing. A client reading
        its events as this one is posted has read that announcement too (its consumer counter
        lags what it read). So a channel that never reads its events (a plain UDP sender, 1,000
        of them in `usnet bench scale`) is rung once, not once a change (issue 18: a doorbell's
        `write` per flow per change, 0.07 a datagram at 600 flows). `_rung` holds, per channel
        end, the event ring position of the last announcement rung; it is rebuilt each time
        from the netif's current channels, so a closed one is forgotten."""
        ports = {id(f.port): f.port for f in self.sw.flows.values()}
        rung: dict[PipeEnd, int] = {}
        for port in ports.values():
            pipe = port.pipe
            with pipe.lock:  # an in-process client's kick may post on this ring from its own thread
                if pipe.defunct_reason is not None:
                    continue
                end = pipe.ends[CLIENT]
                ev = end.events
                at = ev.prod
                last = self._rung.get(end)
                # not posted (its ring is full): nothing new to ring for
                if ev.post(EventType.ADVISORY_UPDATED, Direction.TX, value=int(trend), aux=self.seq) and (
                        last is None or ev.consumed() > last):
                    end.ring_bell()
                    last = at
                if last is not None:
                    rung[end] = last
        self._rung = rung

    def close(self) -> None:
        """The netif is going: a last publication marked GONE, then the memfd closes.

        A client that mapped it keeps reading that last record.
        """
        if self.writer.fd is None:
            return
        self.flags |= FLAG_GONE
        self.publish(self.netif.clock())
        self.writer.close()
