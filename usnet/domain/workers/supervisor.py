"""Watching the workers (`Supervisor`, composed by `ShardedDomain`; the design is in
usnet.domain.workers): a worker's death heard at once (its command socket's EOF), a heartbeat every
HEARTBEAT s, a passed deadline judged from /proc (hung, or only starved of CPU: usnet.domain.liveness),
and a dead or hung worker's replacement: its clients told why on their liveness sockets, what
usnetd held for them released, a new worker forked (usnet.domain.workers.spawner), unless it died
too often too soon. It undoes the relay's and the drains' work for a lost worker through their
own interfaces (`Relay.close_worker`, `Relay.lost`, `Drains.end_worker`, `Drains.retry`)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

from usnet.domain.liveness import HARD_LIMIT, PROBE, judge, read_stat
from usnet.domain.watch import READ, Watch
from usnet.domain.workers.bounds import HEARTBEAT, HUNG_AFTER, RESTART_LIMIT, RESTART_WITHIN, START_TIMEOUT
from usnet.domain.workers.drains import Drains
from usnet.domain.workers.link import WorkerLink
from usnet.domain.workers.messages import COMMAND_MAX
from usnet.domain.workers.relay import Relay
from usnet.domain.workers.relayed import Waiting
from usnet.domain.workers.spawner import Spawner

__all__ = ["Supervisor"]

log = logging.getLogger("usnet.domain.workers")


class Supervisor:
    """The live workers (`links`), why one is `down`, its `restarts`, and the liveness pairs of the
    clients' channels on each. Given: the loop's `sel`, the `spawner` (None: a dead worker is not
    restarted), the `relay` and the `drains` (a lost worker's lines and drains end), and the hooks:
    `drop_worker` (release every channel worker k served: how many), `stopping` (usnetd stops: no
    restart), `welcome` (tell a new worker the host's neighbours and groups), `tell_groups` (tell
    one that missed a b"G" the whole list), `heard` (a worker's b"A" or b"L")."""

    def __init__(self, sel: Watch, links: dict[int, WorkerLink], spawner: Spawner | None, relay: Relay,
                 drains: Drains, down: dict[int, str], drop_worker: Callable[[int], int],
                 stopping: Callable[[], bool], welcome: Callable[[WorkerLink], None],
                 tell_groups: Callable[[WorkerLink], None], heard: Callable[[bytes], None]) -> None:
        self._sel = sel
        self.links = links
        self.spawner = spawner  # None: a dead worker is not restarted
        self._relay = relay
        self._drains = drains
        self.down = down  # worker -> why it is down (not restarted)
        self._drop_worker = drop_worker
        self._stopping = stopping
        self._welcome = welcome
        self._tell_groups = tell_groups
        self._heard = heard
        self.losses: dict[int, str] = {}  # worker -> why it was last lost (died, hung)
        # (session id, worker) -> the liveness pair: the client's end goes with every flow opened there
        # (FlowOpened's sixth descriptor); usnetd writes why and closes its end when the worker dies
        self.alive: dict[tuple[int, int], tuple[socket.socket, socket.socket]] = {}
        self.restarts: dict[int, int] = {}  # worker -> times restarted
        self._quick_deaths: dict[int, int] = {}  # worker -> deaths in a row within RESTART_WITHIN of its start
        self._beat_at = 0.0  # when the next heartbeat goes (`check`)

    def watch(self, link: WorkerLink) -> None:
        """Hear worker `link` die: its command socket, which it writes only to answer a heartbeat,
        reads EOF then. Its first heartbeat goes now: the answer says its loop runs."""
        link.cmd.setblocking(False)
        self._sel.register(link.cmd, READ, ("worker", link))
        self._ask_heartbeat(link, time.monotonic())

    def hear(self, link: WorkerLink) -> bool:
        """Read what worker `link` wrote on its command socket, without waiting: heartbeat answers
        (it is alive) or EOF (it died: `died`). False if it is gone."""
        for _ in range(16):  # one heartbeat is out at a time: more is a worker misbehaving, read later
            try:
                data = link.cmd.recv(COMMAND_MAX)  # b"L" is a whole datagram; the rest is short
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                data = b""
            if not data:
                self.died(link)
                return False
            link.asked = None  # whatever it says, its loop turns
            link.ready = True
            link.probe = None
            if link.starved:
                link.starved = False
                log.warning("usnetd worker %d (pid %d) answers again: it was starved, not hung", link.index, link.pid)
            if data[:1] in (b"A", b"L"):
                self._heard(data)
        return True

    def _ask_heartbeat(self, link: WorkerLink, now: float) -> None:
        try:
            link.cmd.send(b"H", socket.MSG_DONTWAIT)
        except BlockingIOError:  # its socket is full: it reads nothing, so it is asked all the same
            pass
        except OSError:  # dead: its EOF is heard in the loop
            return
        link.asked = now

    def check(self) -> float:
        """The heartbeat (every HEARTBEAT s; a comparison per loop turn otherwise): each worker is
        asked whether its loop turns; one that leaves the question unanswered HUNG_AFTER s (a
        worker not ready yet: START_TIMEOUT s) is suspect (`suspect`): if hung (stopped, stuck in a
        loop, blocked), it is killed and replaced as if it had died, its clients told why. Nothing
        a worker does can make usnetd wait: the question is sent without waiting and the answer read in the loop."""
        now = time.monotonic()
        if now < self._beat_at:
            return self._beat_at - now
        self._beat_at = now + HEARTBEAT
        for link in list(self.links.values()):
            if link.groups_stale:
                self._tell_groups(link)
            if link.asked is None:
                self._ask_heartbeat(link, now)
                continue
            limit = HUNG_AFTER if link.ready else max(HUNG_AFTER, START_TIMEOUT)
            if now - link.asked < limit or not self.hear(link) or link.asked is None:
                continue  # (an answer waiting unread, as when usnetd's own loop was slow, counts)
            self.suspect(link, f"no answer to a heartbeat for {now - link.asked:.1f} s", link.asked, now)
        return HEARTBEAT

    def suspect(self, link: WorkerLink, what: str, asked: float, now: float) -> float | None:
        """Worker `link` let a deadline pass (`what`, asked at `asked`): hung, or only starved of
        CPU? Read from /proc and judged (usnet.domain.liveness): hung, it is killed and replaced
        (None); starved, the seconds until it is looked at again (at most HARD_LIMIT after `asked`).
        Only when a deadline passes, and at most one /proc read per PROBE/2 s per worker."""
        prev = link.probe
        if prev is not None and now - prev[0] < PROBE / 2:  # looked at just now (another deadline)
            return prev[0] + PROBE - now
        st = read_stat(link.pid)
        watched, ticks = 0.0, 0
        if st is not None:
            if prev is not None and now - prev[0] <= 4 * PROBE:  # (older: a past episode, measured afresh)
                watched, ticks = now - prev[0], st.ticks - prev[1]
            link.probe = (now, st.ticks)
        verdict = judge(None if st is None else st.state, ticks, watched, now - asked)
        if verdict.hung:
            self._hung(link, f"{what}; {verdict.why}")
            return None
        if watched and not link.starved:
            link.starved = True
            log.warning("usnetd worker %d (pid %d) %s (%s): given more time, at most %g s", link.index, link.pid,
                        verdict.why, what, HARD_LIMIT)
        return PROBE

    def _hung(self, link: WorkerLink, what: str) -> str:
        """Worker k is alive but silent (SIGSTOP, stuck): killed (SIGKILL ends a stopped process too)
        and replaced, as a dead one; its clients hear "usnetd worker k (pid N) hung (...)"."""
        return self.died(link, f"usnetd worker {link.index} (pid {link.pid}) hung ({what}): killed")

    def died(self, link: WorkerLink, why: str | None = None) -> str:
        """Worker k is gone: every client channel it served is defunct (WORKER_GONE, with why, on its
        liveness socket), usnetd's bookkeeping for them is released, and a new worker k starts
        (`_replace`); then the requests it left unanswered are lost (`Relay.lost`: an open asked of
        the new one). `why`: the reason, if usnetd killed it (hung); else how it ended. Returns the reason."""
        k = link.index
        if self.links.get(k) is not link:
            return self.down.get(k, f"usnetd worker {k} (pid {link.pid}) is gone")
        waiting: list[Waiting] = self._relay.close_worker(k)
        draining, drained = self._drains.end_worker(k)  # its port space went with it: `_replace` drops their channels
        waiting += drained
        why = self.losses[k] = self._replace(link, why)
        self._relay.lost(waiting, why)
        if draining:
            self._drains.retry()
        return why

    def _replace(self, link: WorkerLink, why: str | None) -> str:
        """`died`'s bookkeeping: worker k reaped, its channels defunct, a new one forked."""
        k = link.index
        del self.links[k]
        try:
            self._sel.unregister(link.cmd)
        except (KeyError, ValueError):
            pass
        link.cmd.close()
        how = link.reap(self.spawner)
        if why is None:
            why = f"usnetd worker {k} (pid {link.pid}) died ({how})"
        lost = self._drop_worker(k)
        note = why.encode()
        for key in [key for key in self.alive if key[1] == k]:
            ours, theirs = self.alive.pop(key)
            try:
                ours.send(note, socket.MSG_DONTWAIT)  # read (peeked) by the client once it hears the hang-up
            except OSError:
                pass
            ours.close()
            theirs.close()
        self.restarts.setdefault(k, 0)
        lived = time.monotonic() - link.started
        self._quick_deaths[k] = self._quick_deaths.get(k, 0) + 1 if lived < RESTART_WITHIN else 0
        if self.spawner is None or self._stopping():
            self.down[k] = why
            log.error("%s: %d channel(s) defunct; not restarted (%s)", why, lost,
                      "stopping" if self._stopping() else "no spawner")
            return why
        if self._quick_deaths[k] >= RESTART_LIMIT:
            self.down[k] = (f"{why}; not restarted: it died {RESTART_LIMIT} times within "
                            f"{RESTART_WITHIN:g} s of its start")
            log.error("%s", self.down[k])
            return self.down[k]
        try:
            new = self.spawner.spawn(k)
        except OSError as e:
            self.down[k] = f"{why}; not restarted: {e}"
            log.error("%s", self.down[k])
            return self.down[k]
        self.links[k] = new
        self.down.pop(k, None)
        self.restarts[k] += 1
        self.watch(new)
        self._welcome(new)
        log.warning("%s: %d channel(s) defunct; restarted as pid %d (restart %d)", why, lost, new.pid,
                    self.restarts[k])
        return why

    def pair(self, session_id: int, k: int) -> tuple[socket.socket, socket.socket]:
        """The liveness pair of client `session_id`'s channels on worker k (made at its first flow there)."""
        if (session_id, k) not in self.alive:
            self.alive[session_id, k] = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return self.alive[session_id, k]

    def forget(self, session_id: int) -> None:
        """Client `session_id` is gone: its liveness pairs closed (its channels went with it)."""
        for key in [key for key in self.alive if key[0] == session_id]:
            for sock in self.alive.pop(key):
                sock.close()

    def stop(self) -> None:
        """usnetd stops: the liveness pairs closed, every worker stopped, then the spawner."""
        for pair in self.alive.values():
            for sock in pair:
                sock.close()
        self.alive.clear()
        for link in list(self.links.values()):
            link.stop(spawner=self.spawner)  # (the loop's selector, closed by now, watched its cmd)
        self.links.clear()
        if self.spawner is not None:
            self.spawner.stop()
            self.spawner = None
