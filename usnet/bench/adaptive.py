"""An adaptive sender: a UDP flow that paces itself and follows its netif's interface advisory.

The interface advisory (docs/abi.md §16, usnet.abi.advisory) tells every
sender on a netif how long the transmit queue is in time and suggests a rate
trend: DOWN while the queueing delay is above the domain's target, UP while it
is well below it and the link has room, HOLD otherwise. A sender that cannot
see the queue (a video call, a game's state updates, a backup that should
stay out of the way) uses it as its congestion signal.

`RateAdapter` is the decision, sans-I/O: multiplicative decrease on DOWN,
multiplicative increase on UP, nothing on HOLD, within a floor and a
ceiling. `sender` is the application around it (`usnet demo` runs it as a
process of its own, usnet.bench.lowlat.LowLatRun.adaptive): it paces
datagrams with a token bucket at the adapter's rate, sleeps on its channel
so that an ADVISORY_UPDATED event (the trend changed) wakes it at once, and
also looks at the advisory every `LOOK` seconds, so that a trend that
persists keeps acting.
"""

from __future__ import annotations

import errno
import json
import os
import select
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from usnet.abi.advisory import Trend
from usnet.abi.events import EventType
from usnet.client import Client

__all__ = ["PAYLOAD", "AdaptiveResult", "Change", "RateAdapter", "main_role", "sender"]

PAYLOAD = 1200  # bytes of UDP payload per datagram: a video-call-sized packet
FRAME = PAYLOAD + 8 + 20 + 14  # what one datagram costs the link, as the advisory and link_rate count
LOOK = 0.01  # seconds between looks at the advisory when no event wakes the sender
BATCH_TIME = 0.002  # seconds of sending per batch: pacing without a wake-up per datagram
SAMPLE = 0.02  # seconds between the samples kept for the record (and the plot)


class RateAdapter:
    """The sending rate (bit/s at the link), moved by the advisory's trend.

    DOWN multiplies it by `down`, UP by `up`, HOLD leaves it; it stays within
    [`floor`, `ceiling`]. A trend that differs from the last one observed is
    news and acts at once; the same trend again acts only once `hold` seconds
    have passed since the rate last changed. Why: after a cut the queue needs
    time to drain before the advisory (republished every few milliseconds, its
    throughput averaged over 100 ms) can show it, and re-applying one DOWN on
    every publication would drive the rate to the floor for a queue that is
    already shrinking.
    """

    def __init__(self, rate: float, *, floor: float, ceiling: float, down: float = 0.5, up: float = 1.25,
                 hold: float = 0.05) -> None:
        if not 0 < floor <= rate <= ceiling:
            raise ValueError(f"need 0 < floor <= rate <= ceiling, not {floor!r}, {rate!r}, {ceiling!r}")
        if not (0 < down < 1 < up):
            raise ValueError(f"need 0 < down < 1 < up, not down={down!r}, up={up!r}")
        self.rate = float(rate)
        self.floor, self.ceiling = float(floor), float(ceiling)
        self.down, self.up, self.hold = down, up, hold
        self.last_trend: Trend | None = None
        self.changed_at: float | None = None
        self.cuts = 0  # changes down
        self.raises = 0  # changes up
        self.raised_after_cut = False  # a full cycle: cut, then raised again

    def observe(self, trend: Trend, now: float) -> bool:
        """Take one reading of the trend at time `now` (seconds); True if the rate changed."""
        news = trend != self.last_trend
        self.last_trend = trend
        if trend == Trend.HOLD:
            return False
        if not news and self.changed_at is not None and now - self.changed_at < self.hold:
            return False
        factor = self.down if trend == Trend.DOWN else self.up
        new = min(self.ceiling, max(self.floor, self.rate * factor))
        if new == self.rate:
            return False  # at the floor (or the ceiling) already
        self.rate, self.changed_at = new, now
        if trend == Trend.DOWN:
            self.cuts += 1
        else:
            self.raises += 1
            self.raised_after_cut = self.raised_after_cut or self.cuts > 0
        return True


@dataclass
class Change:
    """One change of the sending rate and the advisory reading that caused it."""

    t: float  # seconds since the sender started
    trend: str  # UP or DOWN
    queue_delay_ms: float  # the advisory's transmit queueing delay at that reading
    rate_before: float  # bit/s
    rate_after: float


@dataclass
class AdaptiveResult:
    """What the adaptive sender did: its changes, and samples of its rate and the advisory over time."""

    start_rate: float
    link_rate: float  # the advisory's max_bandwidth: the netif's link_rate
    delay_target_ms: float
    changes: list[Change] = field(default_factory=list)
    # (t, rate bit/s, queueing delay ms, trend name, bit/s the sender got onto its ring since the last sample)
    samples: list[tuple[float, float, float, str, float]] = field(default_factory=list)
    events: int = 0  # ADVISORY_UPDATED events that woke it
    seconds: float = 0.0
    blocked: int = 0  # batches the flow's full ring refused (the switch had suspended the flow)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes | str) -> AdaptiveResult:
        d: dict[str, Any] = json.loads(data)
        d["changes"] = [Change(**c) for c in d["changes"]]
        d["samples"] = [tuple(s) for s in d["samples"]]
        return cls(**d)


def sender(client: Client, netif: str, port: int, dst: tuple[str, int], start_rate: float, seconds: float,
           max_seconds: float, *, floor: float, ceiling: float) -> AdaptiveResult:
    """Send at an adapting rate for `seconds`, and on until the rate has been cut and raised again.

    It stops at `max_seconds` at the latest: on a link that never pushes
    back, the rate only ever rises (and stays at the ceiling).
    """
    s = client.udp_socket(netif, port, ring_size=256, packets=512)
    s.setblocking(False)
    adv = client.advisory(netif)
    try:
        first = adv.snapshot().tx
        ctl = RateAdapter(start_rate, floor=floor, ceiling=ceiling)
        res = AdaptiveResult(start_rate, float(first.max_bandwidth), first.target_delay_ns / 1e6)
        payload = bytes(PAYLOAD)
        t0 = last = time.monotonic()
        tokens = 0.0
        trend, delay_ms = Trend(first.trend), first.queue_delay_ns / 1e6
        res.samples.append((0.0, ctl.rate, round(delay_ms, 3), trend.name, 0.0))  # where it starts
        next_look, next_sample = t0, t0 + SAMPLE
        sent_since_sample = 0
        while True:
            now = time.monotonic()
            age = now - t0
            if age >= max_seconds or (age >= seconds and ctl.raised_after_cut):
                break
            look = now >= next_look
            for e in s.events():
                if e.type == EventType.ADVISORY_UPDATED:
                    res.events += 1
                    look = True  # the trend changed: read the advisory now, not at the next look
            if look:
                tx = adv.snapshot().tx
                trend, delay_ms = Trend(tx.trend), tx.queue_delay_ns / 1e6
                before = ctl.rate
                if ctl.observe(trend, now):
                    res.changes.append(Change(round(age, 4), trend.name, round(delay_ms, 3), before, ctl.rate))
                next_look = now + LOOK
            if now >= next_sample:
                got = sent_since_sample * FRAME * 8 / max(age - res.samples[-1][0], 1e-9)
                res.samples.append((round(age, 4), ctl.rate, round(delay_ms, 3), trend.name, got))
                sent_since_sample = 0
                next_sample = now + SAMPLE
            # pace: a token bucket at the current rate, spent in batches of BATCH_TIME
            batch = max(FRAME, ctl.rate * BATCH_TIME / 8)
            tokens = min(2 * batch, tokens + (now - last) * ctl.rate / 8)
            last = now
            n = int(tokens // FRAME)
            if tokens >= batch and n:
                try:
                    k = s.send_many([payload] * n, dst)
                except OSError as e:  # the ring is full, or no buffer is free without waiting for the nexus
                    if e.errno not in (errno.EAGAIN, errno.ENOBUFS):
                        raise
                    k = 0
                if k < n:
                    res.blocked += 1  # the switch suspended the flow (back-pressure); those tokens go unused
                    tokens = 0.0
                else:
                    tokens -= k * FRAME
                sent_since_sample += k
            wait = min(next_look, next_sample, now + max(0.0, batch - tokens) * 8 / ctl.rate) - time.monotonic()
            if wait > 0 and select.select([s.fileno()], [], [], wait)[0]:
                s.channel.drain_doorbell()
        res.seconds = time.monotonic() - t0
        return res
    finally:
        adv.close()
        s.close()


def main_role(client: Client, argv: list[str]) -> None:
    """`adapt NETIF PORT DST_ADDR DST_PORT START_RATE SECONDS MAX_SECONDS FLOOR CEILING OUT_FD`."""
    netif, port, daddr, dport = argv[0], int(argv[1]), argv[2], int(argv[3])
    start, seconds, max_seconds, floor, ceiling = map(float, argv[4:9])
    out_fd = int(argv[9])
    res = sender(client, netif, port, (daddr, dport), start, seconds, max_seconds, floor=floor, ceiling=ceiling)
    data = res.to_json().encode()
    while data:
        data = data[os.write(out_fd, data):]
    os.close(out_fd)
