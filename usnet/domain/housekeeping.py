"""Memory comes back by itself: idle pools purge, a short host purges every pool, and a
channel that stops reading is stalled, then defunct (docs/architecture.md, "Memory";
docs/design-notes.md, "stalled channels and memory pressure").

All of it runs on the domain's housekeeping ticks, on its injectable clock: O(channels)
a tick, nothing on the packet path but the flag a stalled port checks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from usnet.abi.events import DefunctReason
from usnet.abi.memfd import available_memory
from usnet.domain.sessions import ChannelRef
from usnet.domain.userpipe import PipeEnd, UserPipe

__all__ = ["Housekeeping"]

log = logging.getLogger("usnet.domain")


class Housekeeping:
    """The domain's memory duties, a part of `Domain` (usnet.domain.loop)."""

    lock: threading.RLock
    channels: dict[int, ChannelRef]
    pipes: dict[tuple[int | None, str], UserPipe]
    clock: Callable[[], float]
    purge_after: float
    stall_after: float
    stall_defunct: float
    purge_below_mb: int
    housekeeping_interval: float
    memory_pressure: bool
    pressure_purges: int
    _purge_at: float
    _housekeeping_at: float

    _fault_channel: Callable[[UserPipe, int, str, BaseException], None]  # SessionRegistry's barrier

    def _all_pipes(self) -> list[UserPipe]:
        """Every live pool's pipe: the named user pipes, and the pipes of flow and monitor channels."""
        seen = dict.fromkeys(self.pipes.values())
        for ref in self.channels.values():
            seen.setdefault(ref.pipe)
        return [p for p in seen if p.defunct_reason is None and not p.destroyed]

    def _housekeeping(self) -> float:
        """The stall watch and the memory-pressure check, every `housekeeping_interval` seconds
        of the domain's clock, and the purge of idle pools every `purge_after` (`_purge_idle`);
        O(channels) a tick, nothing on the packet path. Asked every turn of the loop: one clock
        read and two comparisons while neither is due (issue 18, the loop's fixed cost per turn).
        Returns how long until the next tick of either."""
        now = self.clock()
        if now >= self._purge_at:
            self._purge_idle(now)
        if now >= self._housekeeping_at:
            self._housekeeping_at = now + self.housekeeping_interval
            self._check_stalls(now)
            self._check_memory()
        a, b = self._housekeeping_at, self._purge_at
        return (a if a < b else b) - now

    def _check_stalls(self, now: float) -> None:
        """Judge every channel's reading of its RX ring (docs/design-notes.md, "stalled channels").

        A channel whose consumer counter has not moved for `stall_after` while
        packets waited is stalled; one that moves it again is not; one still
        stalled `stall_defunct` later is defuncted (STALLED), which takes every
        packet of its group back.
        """
        for ref in list(self.channels.values()):
            pipe, role = ref.pipe, ref.role
            with pipe.lock:
                if pipe.defunct_reason is not None:
                    continue
                try:
                    self._judge_reader(ref, pipe, pipe.ends[role], now)
                except Exception as e:  # one channel's memory ends at that channel
                    self._fault_channel(pipe, role, "stall check", e)

    def _judge_reader(self, ref: ChannelRef, pipe: UserPipe, end: PipeEnd, now: float) -> None:
        at = pipe.rx_backlog(end.role)
        if at is None:
            return
        cons, waiting = at
        port = ref.flow.port if ref.flow is not None else ref.monitor
        if waiting == 0 or cons != end.rx_mark:  # it reads (or has nothing to read)
            end.rx_mark, end.rx_since = cons, now
            if end.stalled_since is not None:
                dropped = 0
                if port is not None:
                    port.stalled = False
                    dropped = port.rx_dropped_stalled - end.dropped_mark
                pipe.unstall(end.role, dropped)
                log.info("channel %d (%s) reads again", end.channel_id, pipe.name)
            return
        if end.stalled_since is None:
            if now - end.rx_since >= self.stall_after:
                if port is not None:
                    port.stalled = True
                    end.dropped_mark = port.rx_dropped_stalled
                purged = pipe.stall(end.role, now, waiting)
                log.warning("channel %d (%s, uid %d): %d packets unread for %.0f s: stalled, "
                            "arrivals dropped, %d free segments given back", end.channel_id, pipe.name,
                            ref.session.uid, waiting, now - end.rx_since, purged)
        elif self.stall_defunct and now - end.stalled_since >= self.stall_defunct:
            log.warning("channel %d (%s, uid %d): stalled for %.0f s: defunct (STALLED)", end.channel_id,
                        pipe.name, ref.session.uid, now - end.stalled_since)
            if port is not None:
                port.stalled = False  # defunct: the pipe's own state refuses arrivals from now on
            pipe.defunct(DefunctReason.STALLED, culprit=end.role)

    def _check_memory(self) -> None:
        """Under memory pressure (MemAvailable below `purge_below_mb`), every pool gives back its
        free segments beyond its opening size, idle or not; a pool that did not move since its
        last such purge is not searched again."""
        if not self.purge_below_mb:
            return
        avail = available_memory()  # None: the host does not say, which is no pressure
        pressure = avail is not None and avail < self.purge_below_mb << 20
        if pressure != self.memory_pressure:
            self.memory_pressure = pressure
            if pressure and avail is not None:  # pressure implies a figure: said for the type checker
                log.warning("MemAvailable %d MiB < purge_below_mb %d: purging every pool's free segments",
                            avail >> 20, self.purge_below_mb)
        if not pressure:
            return
        for p in self._all_pipes():
            with p.lock:
                if p.pressure_mark == p.pool.moves or p.defunct_reason is not None:
                    continue
                self.pressure_purges += p.give_back(p.schema.packets)
                p.pressure_mark = p.pool.moves

    def _purge_idle(self, now: float) -> None:
        """Memory comes back by itself: every `purge_after` seconds (`_housekeeping` calls this when
        due), each pool that did not move over the last period (no batch allocated or taken back
        between two ticks) gives back its all-free segments beyond its opening size."""
        self._purge_at = now + self.purge_after
        for p in self._all_pipes():
            with p.lock:
                if p.defunct_reason is not None:
                    continue
                if p.idle_mark == p.pool.moves and p.pool.active > p.schema.packets:
                    p.give_back(p.schema.packets)
                p.idle_mark = p.pool.moves

    def purge(self) -> int:
        """Give back the pages of every all-free segment beyond each pool's opening size."""
        with self.lock:
            n = 0
            for p in self._all_pipes():
                with p.lock:
                    if p.defunct_reason is None:
                        n += p.give_back(p.schema.packets)
            return n
