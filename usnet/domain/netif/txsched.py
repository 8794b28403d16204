"""The transmit multiplexer of a netif: a frame of time slots, paced to the link rate.

Sans-I/O: no device, no clock of its own. The netif keeps its queues and
asks, with the time it read from its own clock:

- ``grant(now, ll_waiting, general_waiting)`` -> ``(cls, budget)``: which
  class may start frames now (``LL``, ``GENERAL``, or None) and how many
  bytes it may start;
- ``charge(cls, nbytes, now, frames)``: what that class really sent;
- ``next_time(now, ll_waiting, general_waiting)``: when a grant will next be
  worth asking for (None: nothing waits, nothing to wake for).

The model (docs/design-notes.md, "The transmit multiplexer"):

- **Slots.** The link is divided into slots of ``slot_bytes`` (by default
  one MTU-sized Ethernet frame), each lasting ``slot_bytes * 8 / link_rate``
  seconds when carried. A *frame* of ``frame_slots`` slots repeats; a share
  ``ll_share`` of them (rounded to whole slots, at least one if the share is
  not zero) belongs to the low-latency class and the rest to the general
  class. The LL slots are spread evenly through the frame (Bresenham), so
  the longest run of general slots is ``ceil((N - k) / k)``: 0.2 of 100
  slots is every fifth slot.
- **Slots are fixed in link time; an overrun is a debt of bytes.** Slot n
  runs from ``epoch + n * slot_time`` of link time (``vt``): a pure function
  of it, so every scheduler of one link (usnetd --workers, sharing the
  epoch through usnet.domain.netif.linkshare) says the same slot at the same
  moment. The owner may start frames while its slot has bytes left; the
  last frame may run past the end (frames are never cut, and one frame may
  span several slots). What a class takes of the other's time that way is
  its *debt*: the head of its next slots belongs to the other class until
  the bytes are paid back (time passing through that head pays them). So
  over any stretch in which a class is backlogged it gets its slots' bytes,
  give or take one frame, however its frame sizes fall against the slot
  size, and no boundary moves.
- **Pacing.** ``vt`` is when the link will have finished everything it was
  given. Sending ``n`` bytes moves it on by ``n * 8 / link_rate``; an idle
  link does not bank credit (``vt`` is never behind ``now``: idle time
  passes through the slots, which count as idle). A grant is given only
  while ``vt < now + horizon``, so at most ``horizon`` seconds of traffic
  (plus one frame) sit in the device ahead of real time and the queue forms
  in usnet. The horizon must cover the loop's wake-up jitter (epoll sleeps
  in whole milliseconds), or the link idles between wake-ups; by default it
  is two slots or 2 ms, whichever is longer, and ``next_time`` asks to be
  woken when half of it has drained: each wake-up hands the device half a
  horizon of frames, and one late by up to half a horizon costs nothing.
- **The LL class goes first.** An LL frame need not wait for an LL slot
  to come round, nor behind the general frames already handed to the
  device: while the class is less than ``ll_burst`` bytes (one slot) ahead
  of its reserved slots, it may start frames at once. What it sends that way
  moves ``vt`` on as any frame does and what of it fell in the general
  class's time is a debt paid by its own next slots, so each class still gets its slots' bytes over a frame of slots,
  and the general class loses nothing it was reserved. Past the burst, the
  class waits for its slots like any other (under workers the burst is the
  link's: what every worker's LL class owes counts). This is what keeps an LL flow's
  latency flat beside saturating bulk traffic: its wait is a slot in
  progress at most, not a horizon plus a run of general slots.
- **Work-conserving** (the default): a slot whose owner has nothing to send
  is lent to the other class for as long as the owner has nothing (the
  owner takes it back at the next grant), so the link is never idle while
  anything waits. **Strict**: a slot whose owner has nothing stays idle;
  its time passes (committed like a transmission, within the horizon) and
  the other class waits for its own slot.

Counters: bytes and frames sent per class, slots used per class (the owner
started a frame in it), slots lent per owner class (only the other class
used it), idle slots, slots passed per owner class (used, lent or idle:
the denominator of the interface advisory's LL slot use), bytes each
class sent in the other's slots, and bytes the LL class sent ahead of its
slots (``ll_ahead_bytes``). The counters move only when the netif
calls in; `catch_up(now)` lets the time since then pass first.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from usnet.domain.netif.linkshare import LinkPeer

__all__ = ["GENERAL", "LL", "SlotScheduler", "check_params", "ll_pattern"]

LL = "ll"
GENERAL = "general"
CLASSES = (LL, GENERAL)
_OTHER = {LL: GENERAL, GENERAL: LL}
MAX_LL_SHARE = 0.9


def ll_pattern(frame_slots: int, ll_slots: int) -> tuple[str, ...]:
    """The owner of each slot of a frame: `ll_slots` LL slots spread evenly, the last slot LL."""
    return tuple(LL if ((i + 1) * ll_slots) // frame_slots > (i * ll_slots) // frame_slots else GENERAL
                 for i in range(frame_slots))


def check_params(link_rate: object, ll_share: object = 0.2, work_conserving: object = True) -> None:
    """ValueError naming the first nonsense parameter (shared with the netif and the config)."""
    if isinstance(link_rate, bool) or not isinstance(link_rate, (int, float)):
        raise ValueError(f"link_rate must be a number of bits per second, not {link_rate!r}")
    if not math.isfinite(link_rate) or link_rate <= 0:
        raise ValueError(f"link_rate must be a positive, finite number of bits per second, not {link_rate!r}")
    if isinstance(ll_share, bool) or not isinstance(ll_share, (int, float)):
        raise ValueError(f"ll_share must be a number from 0 to {MAX_LL_SHARE}, not {ll_share!r}")
    if not 0.0 <= ll_share <= MAX_LL_SHARE:  # NaN fails this too
        raise ValueError(f"ll_share must be from 0 to {MAX_LL_SHARE}, not {ll_share!r}")
    if not isinstance(work_conserving, bool):
        raise ValueError(f"work_conserving must be true or false, not {work_conserving!r}")


class SlotScheduler:
    """One netif's slot multiplexer and pacer (see the module docstring)."""

    def __init__(self, link_rate: float, *, ll_share: float = 0.2, work_conserving: bool = True,
                 slot_bytes: int = 1514, frame_slots: int = 100, horizon: float | None = None,
                 start: float = 0.0, peers: LinkPeer | None = None) -> None:
        check_params(link_rate, ll_share, work_conserving)
        if not isinstance(slot_bytes, int) or slot_bytes < 64:
            raise ValueError(f"slot_bytes must be an integer of at least 64, not {slot_bytes!r}")
        if not isinstance(frame_slots, int) or not 1 <= frame_slots <= 10_000:
            raise ValueError(f"frame_slots must be an integer from 1 to 10000, not {frame_slots!r}")
        self.link_rate = float(link_rate)
        self.ll_share = float(ll_share)
        self.work_conserving = work_conserving
        self.slot_bytes = slot_bytes
        self.frame_slots = frame_slots
        self.byte_time = 8.0 / self.link_rate  # seconds per byte
        self.slot_time = slot_bytes * self.byte_time
        k = 0 if ll_share == 0 else min(frame_slots - 1, max(1, round(ll_share * frame_slots)))
        if frame_slots == 1 and ll_share:
            raise ValueError("an LL share needs a frame of at least 2 slots")
        self.ll_slots = k
        self.pattern = ll_pattern(frame_slots, k)
        if horizon is None:
            horizon = max(2 * self.slot_time, 0.002)
        if not (isinstance(horizon, (int, float)) and math.isfinite(horizon) and horizon > 0):
            raise ValueError(f"horizon must be a positive number of seconds, not {horizon!r}")
        self.horizon = float(horizon)
        self._wake_lead = self.horizon / 2  # wake while this much is still queued ahead
        self.vt = float(start)  # when the link finishes what it was given
        # slot n of the link runs from epoch + n * slot_time: the same for every scheduler of it
        self.epoch = float(start if peers is None else peers.epoch)
        self.pos = (self.vt - self.epoch) / self.byte_time  # `vt` in bytes of link time since the epoch
        self._idx = self.slot_at(self.vt)  # the current slot's number since the epoch
        self.slot = self._idx % frame_slots  # and its index in the frame
        self.debt = {LL: 0.0, GENERAL: 0.0}  # bytes each class owes the other (heads of its next slots)
        self.ll_burst = float(slot_bytes) if k else 0.0  # how far the LL class may run ahead of its slots
        self._ahead = False  # the last grant let the LL class go ahead of its slots
        self._limit = self.vt + self.horizon  # the last grant's horizon
        self._used = {LL: 0.0, GENERAL: 0.0}  # bytes sent in the current slot, by class
        self._repaid = False  # the current slot's head paid its owner's debt to the other class
        self._grant: tuple[str | None, float] = (None, -math.inf)  # the last grant's class, end (bytes)
        # counters
        self.bytes_sent = {LL: 0, GENERAL: 0}
        self.frames_sent = {LL: 0, GENERAL: 0}
        self.slots_used = {LL: 0, GENERAL: 0}  # slots of each class in which it started a frame
        self.slots_lent = {LL: 0, GENERAL: 0}  # slots of each class only the other class used
        self.slots_idle = 0  # slots nobody used
        self.slots_passed = {LL: 0, GENERAL: 0}  # slots of each class that have ended, whoever used them
        self.borrowed_bytes = {LL: 0.0, GENERAL: 0.0}  # bytes each class sent in the other's slots
        self.idle_bytes = 0.0  # link capacity that passed unused, in bytes
        # of it, what passed while frames waited that the last grant held back (our share of a
        # link other workers use): idle time a faster sender would not have filled
        self.held_bytes = 0.0
        self._holding = False
        self.ll_ahead_bytes = 0  # LL bytes sent ahead of the LL slots (paid by those slots)
        # the other schedulers of the same link (usnetd --workers: usnet.domain.netif.linkshare)
        self.peers = peers
        self.peer_bytes = 0.0  # link time the other workers took, in bytes (passed through our slots)
        self._peer_seen = 0.0 if peers is None else peers.others(0.0)[0]  # their bytes already counted
        self._peer_ll_seen = 0.0 if peers is None else peers.others_ll()[0]  # of which LL
        self._peer_debt = 0.0  # what the other workers' LL classes owe (one burst for the link)
        self._debt_shown = 0.0  # our LL debt as the shared page last showed it
        self._busy = 1  # workers (this one included) held back lately: each may have 1/busy of the rate
        self._own_vt = float(start)  # our own bytes at 1/busy of the rate: our fair share's clock

    # -- the slot cursor: a pure function of link time ------------------------------------

    @property
    def credit(self) -> float:
        """Bytes left in the current slot."""
        return (self._idx + 1) * self.slot_bytes - self.pos

    def slot_at(self, vt: float) -> int:
        """The absolute number of the slot link time `vt` falls in (its index in the frame is this
        modulo `frame_slots`): every scheduler of a link, given the same epoch, says the same.
        A slot with less than half a byte left is over (float link times round)."""
        return math.floor(((vt - self.epoch) / self.byte_time + 0.5) / self.slot_bytes)

    def _segment(self) -> tuple[str, float]:
        """(owner, bytes) of the stretch of link time starting at `vt`: the head of a slot whose
        owner is in debt is the other class's until the debt is paid, the rest the slot owner's."""
        owner = self.pattern[self.slot]
        left = self.credit
        debt = self.debt[owner]
        if debt >= 0.5:
            return _OTHER[owner], min(debt, left)
        return owner, left

    def owner(self) -> str:
        """The class that owns the link time at `vt` (the slot's owner, or the class its owner
        owes bytes to while it pays them back)."""
        return self._segment()[0]

    def _end_slot(self) -> None:
        """Close the current slot (count it) and open the next one."""
        owner = self.pattern[self.slot]
        self.slots_passed[owner] += 1
        used = self._used
        if used[owner] or self._repaid or (used[_OTHER[owner]] and not self.work_conserving):
            self.slots_used[owner] += 1  # by its owner, or paying it back (never a loan if strict)
        elif used[_OTHER[owner]]:
            self.slots_lent[owner] += 1
        else:
            self.slots_idle += 1
        used[LL] = used[GENERAL] = 0.0
        self._repaid = False
        self._idx += 1
        self.slot = self._idx % self.frame_slots

    def _move_to(self, vt: float, cls: str | None = None, lent_end: float = -math.inf) -> float:
        """Let link time pass from `vt` to the given `vt`, used by `cls` (None: not by us) and
        counted in the slots it crosses; returns the bytes of link time that passed.

        Bytes of `cls` that land in a stretch the other class owns are a loan (before `lent_end`,
        the end of what the grant allowed) or a debt of `cls`: the head of its next slots then
        belongs to the other class. Time passing through such a head pays the debt off, whoever
        used it (a class that had nothing waiting lost nothing)."""
        to = (vt - self.epoch) / self.byte_time
        start = pos = self.pos
        self.vt = vt
        if to <= pos:
            return 0.0
        whole = self.frame_slots * self.slot_bytes
        if cls is None and to - pos > 2 * whole:  # a long silence: skip whole frames, forgive old debts
            skip = int((to - pos) // whole) - 1
            pos += skip * whole
            self._idx += skip * self.frame_slots
            self.slots_idle += skip * self.frame_slots
            self.slots_passed[LL] += skip * self.ll_slots
            self.slots_passed[GENERAL] += skip * (self.frame_slots - self.ll_slots)
            self.debt[LL] = self.debt[GENERAL] = 0.0
        debt, used = self.debt, self._used
        while True:
            owner = self.pattern[self.slot]
            end = (self._idx + 1) * self.slot_bytes
            owed = debt[owner]
            seg_owner, seg_end = (_OTHER[owner], min(end, pos + owed)) if owed >= 0.5 else (owner, end)
            stop = min(seg_end, to)
            take = stop - pos
            if owed >= 0.5:
                debt[owner] = owed - take if owed - take >= 0.5 else 0.0
            if cls is not None and take > 0:
                used[cls] += take
                if seg_owner == cls:
                    self._repaid = self._repaid or seg_owner != owner
                else:
                    lent = min(take, max(lent_end - pos, 0.0))
                    self.borrowed_bytes[cls] += lent
                    debt[cls] += take - lent
            pos = stop
            if end - pos < 0.5:
                self._end_slot()
            if to - pos < 1e-9:
                break
        self.pos = to
        if debt[LL] >= 0.5 and debt[GENERAL] >= 0.5:  # each owes the other: only the difference is owed
            m = min(debt[LL], debt[GENERAL])
            debt[LL] -= m
            debt[GENERAL] -= m
        return to - start

    def _advance(self, now: float) -> None:
        """Let the time since the link went idle pass through the slots, unused."""
        if now > self.vt:
            passed = self._move_to(now)
            self.idle_bytes += passed
            if self._holding:
                self.held_bytes += passed

    def _absorb(self, now: float) -> None:
        """Move `vt` on by what the link's other schedulers sent since we last looked (see
        usnet.domain.netif.linkshare), and count those of them that want more than they get.

        Their bytes went into the link after our last look: it finishes no earlier than our `vt`
        plus them, nor than the latest `vt` one of them published. The time passes through our
        slots as idle time does (nobody of ours used them)."""
        peers = self.peers
        assert peers is not None
        sent, vt, busy = peers.others(now - 2 * self.horizon)
        self._busy = busy + 1
        delta, self._peer_seen = sent - self._peer_seen, sent
        target = max(self.vt + max(delta, 0.0) * self.byte_time, vt)
        ll, self._peer_debt = peers.others_ll()
        ll_delta, self._peer_ll_seen = ll - self._peer_ll_seen, ll
        if target > self.vt:
            owed = self.debt[LL]
            self.peer_bytes += self._move_to(target)
            # the LL slots' heads that passed paid our LL class's debt only if the general class had
            # them: what the others' LL class sent meanwhile took them (the slots are the link's)
            self.debt[LL] += min(max(owed - self.debt[LL], 0.0), max(ll_delta, 0.0))
        if self.debt[LL] != self._debt_shown:
            self._debt_shown = self.debt[LL]
            peers.owes(self._debt_shown)

    def catch_up(self, now: float) -> None:
        """Let the time up to `now` pass through the slots, so the counters are current.

        An idle netif asks nothing, so its slots stop passing; a reader of the
        counters (the interface advisory) calls this first. It changes no
        decision: every grant begins with the same step.
        """
        if self.peers is not None:
            self._absorb(now)
        self._advance(now)

    # -- the netif's questions ----------------------------------------------------------

    def grant(self, now: float, ll_waiting: bool, general_waiting: bool) -> tuple[str | None, int]:
        """(class, bytes it may start now), or (None, 0) if nobody may send now.

        The class may start frames while it has sent fewer than `budget`
        bytes in this grant: the last frame may run past it (at least one
        frame, however large). Then it reports what it sent with `charge`.
        The budget is the rest of the current slot and of the slots after it
        that the class would also get (its own, and in work-conserving mode
        the other class's while that has nothing waiting), up to the horizon:
        one grant, one batch for the device.
        """
        if self.peers is not None:
            self._absorb(now)
        self._advance(now)
        self._ahead = self._holding = False
        if not (ll_waiting or general_waiting):
            return None, 0
        limit = self._limit = now + self.horizon
        if ll_waiting and self._may_go_ahead(limit):
            return self._go_ahead()
        fair = math.inf  # bytes our share of the link allows (other workers of the link held back)
        if self._busy > 1:
            fair = (limit - max(self._own_vt, now)) / (self.byte_time * self._busy)
        while self.vt < limit and fair > 0:
            owner, budget = self._segment()
            if ll_waiting if owner == LL else general_waiting:
                cls = owner
            elif self.work_conserving:
                cls = _OTHER[owner]
            else:
                # strict: the owner's stretch stays idle; its time passes, committed like a frame
                self.idle_bytes += self._move_to(self.vt + budget * self.byte_time)
                continue
            room = min((limit - self.vt) / self.byte_time, fair)
            if budget < room:
                # run on through the following stretches the same class would get, up to the horizon
                others_wait = general_waiting if cls == LL else ll_waiting
                if self.work_conserving and not others_wait:  # every stretch is its own or lent
                    budget = room
                for n, (owner, more) in enumerate(self._upcoming() if budget < room else ()):
                    if owner != cls and (others_wait or not self.work_conserving):
                        break
                    budget += more
                    if budget >= room or n >= 2 * self.frame_slots:
                        break
            budget = min(budget, room)
            self._grant = (cls, self.pos + budget)
            return cls, max(1, math.ceil(budget))
        if ll_waiting and self._may_go_ahead(limit):  # idle slots that passed paid off its debt
            return self._go_ahead()
        if self.peers is not None:
            self.peers.wants(now)  # held back: the link's other workers leave us our share
        self._holding = True
        return None, 0

    def _go_ahead(self) -> tuple[str, int]:
        self._ahead = True
        past = max(self.vt - self._limit, 0.0) / self.byte_time
        return LL, max(1, math.ceil(self.ll_burst - self.debt[LL] - self._peer_debt - past))

    def _may_go_ahead(self, limit: float) -> bool:
        """Whether the LL class may start a frame now, ahead of its slots (see the module docstring).

        Not when its own stretch is current and within the horizon: then that carries it.
        """
        # what it sent ahead and still owes, and what lies past the horizon: a burst at most
        owed = self.debt[LL] + self._peer_debt + max(self.vt - limit, 0.0) / self.byte_time
        if owed >= self.ll_burst - 0.5:  # (float link times round)
            return False
        return not (self.owner() == LL and self.vt < limit)

    def _upcoming(self) -> Iterator[tuple[str, float]]:
        """(owner, bytes) of the stretches after the current one, as `_move_to` will find them
        if nobody sends: each slot's head paying its owner's debt, then the rest of it."""
        debt = dict(self.debt)
        idx = self._idx
        owner = self.pattern[idx % self.frame_slots]
        owed = debt[owner]
        if owed >= 0.5 and owed < self.credit:  # the current stretch is the head: the slot's rest next
            debt[owner] = 0.0
            yield owner, self.credit - owed
        elif owed >= 0.5:
            debt[owner] = owed - self.credit
        while True:
            idx += 1
            owner = self.pattern[idx % self.frame_slots]
            owed = debt[owner]
            if owed >= 0.5:
                head = min(owed, self.slot_bytes)
                debt[owner] = owed - head
                yield _OTHER[owner], head
                if self.slot_bytes - head >= 0.5:
                    yield owner, self.slot_bytes - head
            else:
                yield owner, float(self.slot_bytes)

    def charge(self, cls: str, nbytes: int, now: float, frames: int = 1) -> None:
        """`cls` started `frames` frames of `nbytes` bytes in all, at `now` (after a grant)."""
        if cls not in _OTHER:
            raise ValueError(f"no traffic class {cls!r}")
        if nbytes < 0 or frames < 0:
            raise ValueError("a charge cannot be negative")
        ahead, self._ahead = self._ahead and cls == LL, False  # what the last grant allowed, used once
        granted, self._grant = self._grant, (None, -math.inf)
        lent_end = granted[1] if granted[0] == cls and not ahead else -math.inf
        self._advance(now)
        self._move_to(self.vt + nbytes * self.byte_time, cls, lent_end)
        if self.peers is not None:
            self._debt_shown = self.debt[LL]
            self.peers.sent(nbytes, self.vt, cls == LL, self._debt_shown)
            self._own_vt = max(self._own_vt, now) + nbytes * self.byte_time * self._busy
        self.bytes_sent[cls] += nbytes
        self.frames_sent[cls] += frames
        if ahead:  # ahead of its slots: what it took of general's time is its debt, paid by its next slots
            self.ll_ahead_bytes += nbytes

    def next_time(self, now: float, ll_waiting: bool = True, general_waiting: bool = True) -> float | None:
        """When to ask for a grant again (at least `now`); None if nothing waits.

        Under pacing that is when half the horizon has drained (half is still
        queued ahead of real time, so a wake-up a millisecond late does not
        leave the link idle). In strict mode a class waiting for its own slot
        is woken when that slot comes within the horizon.
        """
        if self.peers is not None:
            self._absorb(now)
        self._advance(now)
        if not (ll_waiting or general_waiting):
            return None
        if ll_waiting and self._may_go_ahead(now + self.horizon):
            return now
        ahead = 0.0  # bytes of idle stretches before one a waiting class may use
        owner, ahead0 = self._segment()
        if not self.work_conserving and not (ll_waiting if owner == LL else general_waiting):
            ahead = ahead0
            for n, (owner, credit) in enumerate(self._upcoming()):
                if (ll_waiting if owner == LL else general_waiting) or n > 2 * self.frame_slots:
                    break
                ahead += credit
        t = self.vt + ahead * self.byte_time - self._wake_lead
        if self._busy > 1:  # our share's clock, too
            t = max(t, self._own_vt - self._wake_lead)
        return max(now, t)

    # -- reporting ------------------------------------------------------------------------

    def effective_ll_share(self) -> float:
        return self.ll_slots / self.frame_slots

    def stats(self) -> dict:
        return {
            "link_rate": self.link_rate, "ll_share": self.effective_ll_share(),
            "work_conserving": self.work_conserving, "slot_bytes": self.slot_bytes,
            "frame_slots": self.frame_slots, "slot_time": self.slot_time, "horizon": self.horizon,
            "bytes": dict(self.bytes_sent), "frames": dict(self.frames_sent),
            "slots_used": dict(self.slots_used), "slots_lent": dict(self.slots_lent),
            "slots_idle": self.slots_idle, "slots_passed": dict(self.slots_passed),
            "idle_bytes": round(self.idle_bytes), "held_bytes": round(self.held_bytes),
            "borrowed_bytes": {k: round(v) for k, v in self.borrowed_bytes.items()},
            "ll_ahead_bytes": self.ll_ahead_bytes,
            **({} if self.peers is None else {"workers": self.peers.n, "peer_bytes": round(self.peer_bytes)}),
        }
