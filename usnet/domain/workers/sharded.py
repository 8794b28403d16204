"""Worker 0 and the control plane of `usnetd --workers N` (`ShardedDomain`; the design is in
usnet.domain.workers): usnetd's own Domain, which relays a client's requests on flows of worker k
without waiting, watches its workers (heartbeats, hung or starved, replacement), holds a departed
client's ports till its worker lets them go, gathers `usnet status` from every worker, and tells
the workers the host's neighbours and groups. One class: these duties share its tables (the
lines, the proxied channels, the drains), so they stay together."""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import msgspec

from usnet.abi import protocol as P
from usnet.abi.events import RevokeReason
from usnet.abi.transport import recv_msg, send_msg
from usnet.domain.control import owner, viewed_uid
from usnet.domain.deadlines import Deadlines
from usnet.domain.limits import Charge
from usnet.domain.liveness import HARD_LIMIT, PROBE, judge, read_stat
from usnet.domain.loop import Domain
from usnet.domain.lowlat.agent import Grant, Refusal
from usnet.domain.lowlat.policy import Who
from usnet.domain.sessions import Session, shares_port
from usnet.domain.switch.ports import PROTO_NAMES
from usnet.domain.switch.table import TCP
from usnet.domain.watch import READ
from usnet.domain.workers.bounds import (
    DRAIN_LIMIT,
    HEARTBEAT,
    HUNG_AFTER,
    RESTART_LIMIT,
    RESTART_WITHIN,
    START_TIMEOUT,
    WORKER_TIMEOUT,
)
from usnet.domain.workers.gate import count_hand_over, frame_family
from usnet.domain.workers.link import WorkerLink
from usnet.domain.workers.messages import (
    COMMAND_MAX,
    GROUP_ALL,
    GROUP_JOIN,
    GROUP_LEAVE,
    HOST_SOURCES_MAX,
    filter_msg,
    group_msgs,
    neighbour_of,
)
from usnet.domain.workers.relayed import LATER, Gather, Line, Proxied, Waiting, WorkerLost
from usnet.domain.workers.spawner import Spawner
from usnet.domain.workers.steering import worker_of
from usnet.drivers.base import Received
from usnet.proto.wire.msf import ANY_SOURCE, Filter

__all__ = ["ShardedDomain"]

log = logging.getLogger("usnet.domain.workers")

_RELAYED = (P.Kick, P.Resize, P.CloseChannel, P.FlushQueue, P.Unlisten, P.JoinGroup, P.SourceFilter,
            P.MulticastOptions)


class ShardedDomain(Domain):
    """Worker 0 and the control plane of a domain with workers (see the module's docstring)."""

    def __init__(self, links: list[WorkerLink], sharded: set[str], spawner: Spawner | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.links = {link.index: link for link in links}
        self.n = len(links) + 1
        self.sharded = set(sharded)
        self.spawner = spawner  # None: a dead worker is not restarted
        self.proxied: dict[int, Proxied] = {}
        self._lines: dict[tuple[int, int], Line] = {}  # (session id, worker) -> usnetd's session there
        # the relayed requests' deadlines, soonest first (`_check_relays`: one look per turn)
        self._due: Deadlines[tuple[Line, Waiting]] = Deadlines()
        self._gathers: list[Gather] = []  # `usnet status` requests waiting for workers' parts
        self._losses: dict[int, str] = {}  # worker -> why it was last lost (died, hung)
        # (session id, worker) -> the liveness pair: the client's end goes with every flow opened there
        # (FlowOpened's sixth descriptor); usnetd writes why and closes its end when the worker dies
        self._alive: dict[tuple[int, int], tuple[socket.socket, socket.socket]] = {}
        self.restarts: dict[int, int] = {}  # worker -> times restarted
        self._quick_deaths: dict[int, int] = {}  # worker -> deaths in a row within RESTART_WITHIN of its start
        self.down: dict[int, str] = {}  # worker -> why it is down (not restarted)
        self._beat_at = 0.0  # when the next heartbeat goes (`_check_workers`)
        # a departed client's sessions in the workers, closed by usnetd (half: SHUT_WR) and not yet
        # by the worker: their channels' ports stay reserved here till the worker has let them go
        self._draining: set[Line] = set()
        self._drain_due: Deadlines[Line] = Deadlines()  # their bounds (`_check_drains`)
        self._ending: dict[int, int] = {}  # session id -> its lines still draining
        self._deferred: list[tuple[Session, P.Request]] = []  # requests that wait for a drain (`_defer`)
        for link in links:
            self._watch(link)
        self.leases.remote_end = self._end_worker_lease

    def _watch(self, link: WorkerLink) -> None:
        """Hear worker `link` die: its command socket, which it writes only to answer a heartbeat,
        reads EOF then. Its first heartbeat goes now: the answer says its loop runs."""
        link.cmd.setblocking(False)
        self._sel.register(link.cmd, READ, ("worker", link))
        self._ask_heartbeat(link, time.monotonic())

    def _serve_event(self, kind: str, obj: Any, fd: int, mask: int) -> None:
        if kind == "relay":
            with self.lock:
                self._hear_line(obj)
        elif kind == "worker":
            with self.lock:
                self._hear(obj)
        else:
            super()._serve_event(kind, obj, fd, mask)

    def _hear(self, link: WorkerLink) -> bool:
        """Read what worker `link` wrote on its command socket, without waiting: heartbeat answers
        (it is alive) or EOF (it died: `_worker_died`). False if it is gone."""
        for _ in range(16):  # one heartbeat is out at a time: more is a worker misbehaving, read later
            try:
                data = link.cmd.recv(COMMAND_MAX)  # b"L" is a whole datagram; the rest is short
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                data = b""
            if not data:
                self._worker_died(link)
                return False
            link.asked = None  # whatever it says, its loop turns
            link.ready = True
            link.probe = None
            if link.starved:
                link.starved = False
                log.warning("usnetd worker %d (pid %d) answers again: it was starved, not hung", link.index, link.pid)
            if data[:1] == b"A":
                self._expect_neighbour(data)
            elif data[:1] == b"L":  # a group datagram worker k's flow looped: its port's members' (maybe ours)
                sw, _, frame = neighbour_of(self.switches, data)
                if sw is not None:
                    sw.take_looped(frame)
        return True

    def _expect_neighbour(self, data: bytes) -> None:
        """A worker asked for a neighbour (its own ARP request or solicitation, for packets on its
        queue): the answer comes to queue 0, here, and is believed only for an address asked for
        (Linux's arp_accept=0, `HostDuties._rx_arp`), so usnetd waits for it too; when it comes,
        every worker is told (`add_netif`'s tell_workers)."""
        sw, cache, addr = neighbour_of(self.switches, data)
        if sw is not None and len(addr) == (4 if cache is sw.arp else 16):
            for item in cache.expect(addr, sw.clock()):
                sw._unresolved(item)

    def _ask_heartbeat(self, link: WorkerLink, now: float) -> None:
        try:
            link.cmd.send(b"H", socket.MSG_DONTWAIT)
        except BlockingIOError:  # its socket is full: it reads nothing, so it is asked all the same
            pass
        except OSError:  # dead: its EOF is heard in the loop
            return
        link.asked = now

    def _housekeeping(self) -> float:
        wait = super()._housekeeping()
        return min(wait, self._check_workers(), self._check_gathers(), self._check_relays(), self._check_drains())

    def _check_workers(self) -> float:
        """The heartbeat (every HEARTBEAT s; a comparison per loop turn otherwise): each worker is
        asked whether its loop turns; one that leaves the question unanswered HUNG_AFTER s (a
        worker not ready yet: START_TIMEOUT s) is suspect (`_suspect`): if hung (stopped, stuck in a
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
            if now - link.asked < limit or not self._hear(link) or link.asked is None:
                continue  # (an answer waiting unread, as when usnetd's own loop was slow, counts)
            self._suspect(link, f"no answer to a heartbeat for {now - link.asked:.1f} s", link.asked, now)
        return HEARTBEAT

    # -- relayed requests: sent now, answered when the worker's reply is read ------------------

    def _line(self, session: Session | None, k: int) -> Line:
        """usnetd's session in worker k for client `session` (made at its first use there); None:
        usnetd's own there (its status: `_ask_status`), a Line of session id -1."""
        sid = -1 if session is None else session.id
        line = self._lines.get((sid, k))
        if line is None:
            link = self.links.get(k)
            if link is None:
                raise OSError(errno.ENETDOWN, self.down.get(k, f"usnetd worker {k} is down"))
            sock = link.new_session()
            sock.setblocking(False)
            line = self._lines[sid, k] = Line(sid, k, sock)
            self._sel.register(sock, READ, ("relay", line))
        return line

    def _send(self, line: Line, session: Session | None, req: P.Request,
              done: Callable[[P.Reply, list[int]], tuple[P.Reply, list[int]]] | None = None,
              undo: Callable[[], None] | None = None,
              again: Callable[[], tuple[P.Reply, list[int]]] | None = None,
              judged: bool = True) -> tuple[P.Reply, list[int]]:
        """Send `req` to worker `line.index` without waiting, and return LATER: `done` makes the
        client's answer of the worker's reply when the loop reads it (`_hear_line`); till then
        `session` is parked (its later requests stay unread, so none overtakes this answer).
        Unanswered within WORKER_TIMEOUT (START_TIMEOUT for a worker not yet heard from), the worker
        is suspect (`_check_relays`, `_suspect`); lost, `again` asks its replacement, else `undo`
        and ENETDOWN. Not `judged` (usnetd's own question: its status), it has no deadline: only
        the heartbeat judges the worker then. A worker found dead here is dealt with at once:
        WorkerLost, with the reason."""
        k = line.index
        link = self.links.get(k)
        if line in self._draining:  # (a lease's end, say, after its client left: its flows go anyway)
            raise OSError(errno.ESHUTDOWN, f"the session in usnetd worker {k} is ending")
        if link is None or self._lines.get((line.session_id, k)) is not line:
            raise WorkerLost(errno.ENETDOWN, self.down.get(k, f"usnetd worker {k} is gone"))
        try:
            send_msg(line.sock, P.encode(req))
        except (BlockingIOError, InterruptedError) as e:  # its session holds ~200 KiB unread: it reads nothing
            raise OSError(errno.EAGAIN, f"usnetd worker {k} is not reading its requests: try again") from e
        except OSError as e:  # it died, its death not heard yet (its command socket's EOF waits in the loop)
            raise WorkerLost(errno.ENETDOWN, self._worker_died(link)) from e
        bound = (WORKER_TIMEOUT if link.ready else START_TIMEOUT) if judged else math.inf
        now = time.monotonic()
        w = Waiting(session, req, done or _same, undo or _nothing, again, now + bound, bound, now)
        line.waiting.append(w)
        if judged:
            self._due.add(w.deadline, (line, w))
        if session is not None:
            session.waiting = True
        return LATER, []

    def _hear_line(self, line: Line) -> None:
        """Read the worker's replies on `line`, without waiting, and answer their clients. A reply
        is checked (decoded as a Reply; one nobody asked for is dropped and logged): the worker is
        trusted code, but its answer is what the client gets. EOF: the worker died."""
        for _ in range(16):
            bad: P.ProtocolError | None = None
            try:
                data, fds = recv_msg(line.sock, 16)
            except (BlockingIOError, InterruptedError):
                return
            except P.ProtocolError as e:  # too long, too many descriptors (closed): still its reply
                data, fds, bad = b"?", [], e
            except OSError:
                data, fds = b"", []
            if not data:
                link = self.links.get(line.index)
                if line in self._draining:  # the worker ended that session: its ports are free there
                    self._drained(line)
                elif link is not None and self._lines.get((line.session_id, line.index)) is line:
                    self._worker_died(link)  # (the line's own end, closed by the worker, with its session)
                return
            if not line.waiting:
                _close(fds)
                log.warning("worker %d: a reply nobody waits for dropped (%d bytes)", line.index, len(data))
                continue
            w = line.waiting.popleft()
            w.live = False
            try:
                if bad is not None:
                    raise bad
                reply = P.decode_reply(data)
                answer = w.done(reply, fds)
            except Exception as e:
                _close(fds)
                w.undo()
                self._answer(w, None, e)
                continue
            self._answer(w, answer, None)
            _close(fds)  # the worker's: sent (or copied to wait) by `_answer`

    def _answer(self, w: Waiting, answer: tuple[P.Reply, list[int]] | None, e: Exception | None) -> None:
        """The client of `w` gets its answer (or the Error for `e`) and is read again."""
        s = w.session
        if s is None:  # usnetd's own request: nobody to answer (the worker's descriptors: the caller's)
            if e is not None:
                log.warning("worker: %s not served: %s", type(w.req).__name__, e)
            return
        if e is not None:
            answer = self._refusal(s, w.req, e)
        assert answer is not None
        if answer[0] is LATER:  # asked again (of a replacement): still waiting
            return
        if s.sock is not None:
            self._unpark(s, *answer)

    def _unpark(self, s: Session, reply: P.Reply, fds: list[int]) -> None:
        """Answer parked session `s`'s request, and read it again (its next request, its end)."""
        s.waiting = s.unread = False
        self._watch_session(s)
        self._reply(s, reply, fds)

    def _lost(self, waiting: list[Waiting], why: str) -> None:
        """Requests whose worker died or hung before it answered: an open is asked of the
        replacement once (`again`); the others are undone and fail with ENETDOWN and why."""
        for w in waiting:
            if w.again is not None and w.session is not None and w.session.sock is not None:
                try:
                    self._answer(w, w.again(), None)
                except Exception as e:
                    self._answer(w, None, e)
                continue
            w.undo()
            self._answer(w, None, WorkerLost(errno.ENETDOWN, why))

    def _check_relays(self) -> float:
        """Seconds until the next relayed request's deadline; a worker that let one pass is hung
        (killed and replaced, its waiting requests `_lost`). One look at the soonest deadline per
        turn (`_due`, a heap); an answered request's entry is dropped when its time comes."""
        now = time.monotonic()
        for when, (line, w) in self._due.due(now):
            if not w.live or w.deadline != when:
                continue  # answered, given up, or its deadline moved (its new entry is in the heap)
            self._hear_line(line)  # an answer waiting unread (usnetd's own loop was slow) counts
            link = self.links.get(line.index)
            if w.live and link is not None:
                later = self._suspect(link, f"no answer to {type(w.req).__name__} within {w.bound:g} s",
                                      w.asked, now)
                if later is not None:  # starved, not hung: its requests past their deadline wait on
                    for x in line.waiting:
                        if x.deadline < now + later:
                            x.deadline = now + later
                            self._due.add(x.deadline, (line, x))
        return self._due.next_in(now, HEARTBEAT)

    def _check_drains(self) -> float:
        """Seconds until the next drain's bound. A worker that has not ended a departed client's
        session DRAIN_LIMIT s after usnetd half-closed it is suspect, as one that leaves a request
        unanswered (`_suspect`): a worker that never lets go of those ports (stopped, stuck, or
        alive but not ending the session: asleep with its EOF unread) is found hung, killed and
        replaced, which ends its drains (`_worker_died`); a starved one is looked at again.
        One look per turn (`_drain_due`)."""
        now = time.monotonic()
        for _, line in self._drain_due.due(now):
            if line not in self._draining:
                continue  # drained, or its worker gone
            self._hear_line(line)  # the worker's close waiting unread counts
            link = self.links.get(line.index)
            if line in self._draining and link is not None:
                later = self._suspect(link, f"a departed client's session not ended within {DRAIN_LIMIT:g} s",
                                      line.ended, now)
                if later is not None:
                    self._drain_due.add(now + later, line)
        return self._drain_due.next_in(now, HEARTBEAT)

    def _suspect(self, link: WorkerLink, what: str, asked: float, now: float) -> float | None:
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
            self._worker_hung(link, f"{what}; {verdict.why}")
            return None
        if watched and not link.starved:
            link.starved = True
            log.warning("usnetd worker %d (pid %d) %s (%s): given more time, at most %g s", link.index, link.pid,
                        verdict.why, what, HARD_LIMIT)
        return PROBE

    def _close_line(self, key: tuple[int, int]) -> list[Waiting]:
        """Close usnetd's session `key` in its worker; what waited on it, returned."""
        return self._shut(self._lines.pop(key))

    def _shut(self, line: Line) -> list[Waiting]:
        """`line` unwatched and closed; what waited on it, returned (nobody will answer it now)."""
        try:
            self._sel.unregister(line.sock)
        except (KeyError, ValueError):
            pass
        line.sock.close()
        waiting = list(line.waiting)
        line.waiting.clear()
        for w in waiting:
            w.live = False  # (its deadline's entry is stale now)
        return waiting

    def _worker_hung(self, link: WorkerLink, what: str) -> str:
        """Worker k is alive but silent (SIGSTOP, stuck): killed (SIGKILL ends a stopped process too)
        and replaced, as a dead one; its clients hear "usnetd worker k (pid N) hung (...)"."""
        return self._worker_died(link, f"usnetd worker {link.index} (pid {link.pid}) hung ({what}): killed")

    def _worker_died(self, link: WorkerLink, why: str | None = None) -> str:
        """Worker k is gone: every client channel it served is defunct (WORKER_GONE, with why, on its
        liveness socket), usnetd's bookkeeping for them is released, and a new worker k starts
        (`_replace`); then the requests it left unanswered are `_lost` (an open asked of the new
        one). `why`: the reason, if usnetd killed it (hung); else how it ended. Returns the reason."""
        k = link.index
        if self.links.get(k) is not link:
            return self.down.get(k, f"usnetd worker {k} (pid {link.pid}) is gone")
        waiting: list[Waiting] = []
        for key in [key for key in self._lines if key[1] == k]:
            waiting += self._close_line(key)
        draining = [line for line in self._draining if line.index == k]
        for line in draining:  # its port space went with it: `_replace` drops their channels
            waiting += self._end_drain(line)
        why = self._losses[k] = self._replace(link, why)
        self._lost(waiting, why)
        if draining:
            self._retry_deferred()
        return why

    def _replace(self, link: WorkerLink, why: str | None) -> str:
        """`_worker_died`'s bookkeeping: worker k reaped, its channels defunct, a new one forked."""
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
        lost = [cid for cid, px in self.proxied.items() if px.index == k]
        for cid in lost:
            self._drop_proxied(cid)
        note = why.encode()
        for key in [key for key in self._alive if key[1] == k]:
            ours, theirs = self._alive.pop(key)
            try:
                ours.send(note, socket.MSG_DONTWAIT)  # read (peeked) by the client once it hears the hang-up
            except OSError:
                pass
            ours.close()
            theirs.close()
        self.restarts.setdefault(k, 0)
        lived = time.monotonic() - link.started
        self._quick_deaths[k] = self._quick_deaths.get(k, 0) + 1 if lived < RESTART_WITHIN else 0
        if self.spawner is None or self._stopping:
            self.down[k] = why
            log.error("%s: %d channel(s) defunct; not restarted (%s)", why, len(lost),
                      "stopping" if self._stopping else "no spawner")
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
        self._watch(new)
        self._tell_neighbours(new)
        self._tell_groups(new)
        log.warning("%s: %d channel(s) defunct; restarted as pid %d (restart %d)", why, len(lost), new.pid,
                    self.restarts[k])
        return why

    def _tell_neighbours(self, link: WorkerLink) -> None:
        """A new worker knows no neighbour (ARP and ND arrive on queue 0): everything usnetd knows."""
        for name in self.sharded:
            sw = self.switches.get(name)
            if sw is None:
                continue
            for family, cache in ((4, sw.arp), (6, sw.nd)):
                for addr, (mac, _expires) in list(cache.entries.items()):
                    link.neighbour(name, family, addr, mac)

    def _tell_groups(self, link: WorkerLink) -> None:
        """A new worker (or one that missed a b"G" or b"M") is told every group the host is in on
        each sharded netif (usnetd's table is the union): the whole list of each family
        (GROUP_ALL), then the union's filter of each group whose filter is not any-source (b"M")."""
        link.groups_stale = False
        for name in self.sharded:
            sw = self.switches.get(name)
            if sw is not None:
                for family, size in ((4, 4), (6, 16)):
                    link.tell_groups(group_msgs(name, family, GROUP_ALL, [g for g in sw.groups.refs if len(g) == size]))
                link.tell_groups([_host_filter_msg(sw, name, g, f) for g, f in sw.groups.states.items()])

    def add_netif(self, name: str, driver: Any, *args: Any, **kwargs: Any):
        sw = super().add_netif(name, driver, *args, **kwargs)
        if name in self.sharded:
            # worker 0's connectors are this process's: their blocks take only the ports steered to
            # queue 0 (another port's SYN-ACK would reach a worker without the connection: it timed out)
            n = self.n
            sw.connector_ports = lambda port: worker_of(port, n) == 0
            learn = sw._learn

            def tell_workers(cache: Any, addr: bytes, mac: bytes, now: float) -> None:
                learn(cache, addr, mac, now)
                for link in self.links.values():
                    link.neighbour(name, 4 if cache is sw.arp else 6, addr, mac)

            sw._learn = tell_workers  # type: ignore[method-assign]

            def hand_over(port: int, frame: Received, looped: bool) -> bool:
                return self._hand_over(name, port, frame, looped)

            sw.hand_over = hand_over

            def tell_group(group: bytes, member: bool) -> None:  # a first join or last leave here
                op, family = GROUP_JOIN if member else GROUP_LEAVE, 4 if len(group) == 4 else 6
                for link in self.links.values():
                    link.tell_groups(group_msgs(name, family, op, [group]))

            def tell_filter(group: bytes, f: Filter) -> None:  # the union's filter changed (after its b"G")
                msg = _host_filter_msg(sw, name, group, f)
                for link in self.links.values():
                    link.tell_groups([msg])

            sw.membership_changed = tell_group
            sw.host_filter_changed = tell_filter
            for link in self.links.values():
                self._tell_groups(link)
        return sw

    def _hand_over(self, netif: str, port: int, frame: Received, looped: bool) -> bool:
        """A datagram put back together on queue 0 (`ReceivePath._handed_over`), an ICMP error
        quoting a packet from `port` (`HostDuties._icmp_error`), or a packet of a local queue
        (`looped`: a group datagram sent with IP_MULTICAST_LOOP, a packet to the netif's own
        address or the host's answer to one; by a flow here, or by worker j's, which handed it here):
        False if `port` is ours; else handed to its worker (counted), or dropped if it cannot take
        it now (counted)."""
        k = worker_of(port, self.n)
        if k == 0:
            return False
        link = self.links.get(k)
        count_hand_over(self.switches[netif],
                        link is not None and link.hand_over(netif, frame_family(frame), frame, looped))
        return True

    def _dispatch(self, session: Session, req: P.Request) -> tuple[P.Reply, list[int]]:
        if session.over_limit is None:
            if type(req) is P.Status and req.part == 0 and self.n > 1:
                return self._gather_status(session)
            if type(req) is P.OpenFlow and req.netif in self.sharded:
                try:
                    return self._open_connector(session, req) if req.connector else self._open_sharded(session, req)
                except OSError as e:
                    family = req.family or (6 if req.remote_addr is not None and ":" in req.remote_addr else 4)
                    if self._must_wait(e, TCP if req.connector else req.proto, req.local_port, family):
                        return self._defer(session, req)
                    raise
            channel = getattr(req, "channel", None)
            px = self.proxied.get(channel) if isinstance(channel, int) else None
            if px is not None:
                if px.session_id != session.id:
                    raise OSError(errno.ENOENT, f"no channel {channel} in this session")
                if type(req) is P.RequestLease:
                    return self._lease_on_worker(session, px, req)
                if isinstance(req, (P.AddPorts, P.ReturnPorts, P.ReleasePorts)):
                    try:
                        return self._worker_ports(session, px, req)
                    except WorkerLost:  # the channel is gone with it (WORKER_GONE, on its liveness socket)
                        self._drop_proxied(req.channel)
                        raise
                    except OSError as e:
                        if type(req) is P.AddPorts and self._must_wait(e, TCP, 0, px.family):
                            return self._defer(session, req)
                        raise
                if not isinstance(req, _RELAYED):
                    raise OSError(errno.EOPNOTSUPP, f"{type(req).__name__} on a flow of worker {px.index}")
                cid = req.channel

                def done(reply: P.Reply, fds: list[int]) -> tuple[P.Reply, list[int]]:
                    if isinstance(req, P.CloseChannel):
                        self._drop_proxied(cid)
                    elif isinstance(req, P.JoinGroup) and type(reply) is P.Done:
                        self._worker_joined(cid, req.group, req.join, Filter(req.include, frozenset(req.sources)))
                    elif isinstance(req, P.SourceFilter) and type(reply) is P.Done:
                        self._worker_filtered(cid, req.group, Filter(req.include, frozenset(req.sources)))
                    return reply, fds
                try:
                    return self._send(px.line, session, msgspec.structs.replace(req, channel=px.wcid), done)
                except WorkerLost:  # the channel is gone with it (WORKER_GONE, on its liveness socket)
                    self._drop_proxied(cid)
                    raise
        return super()._dispatch(session, req)

    # -- connectors on every worker -------------------------------------------------------------

    def _open_connector(self, session: Session, req: P.OpenFlow) -> tuple[P.Reply, list[int]]:
        """The connector of worker `req.worker` on a sharded netif: worker 0's here, another's
        opened there as any relayed flow (it holds no port until AddPorts: `_worker_ports`). Its
        FlowOpened says how many workers have one (`workers`), so a client can spread its connects."""
        k = req.worker
        if k >= self.n:
            raise OSError(errno.EINVAL, f"no worker {k}: usnetd runs {self.n}")
        if k == 0:
            reply, fds = super()._dispatch(session, req)
            return (msgspec.structs.replace(reply, workers=self.n) if type(reply) is P.FlowOpened else reply), fds
        self.access.check_port(session.uid, session.program, "tcp", 0)
        charge = self.ledger.admit(Charge(session.uid, session.id, flows=1))
        return self._relay_open(session, msgspec.structs.replace(req, worker=0), k, None, charge)

    def _worker_ports(self, session: Session, px: Proxied,
                      req: P.AddPorts | P.ReturnPorts | P.ReleasePorts) -> tuple[P.Reply, list[int]]:
        """A connector of worker k: its ports are usnetd's to choose (the one namespace, worker k's
        share: the device steers port p to queue p mod N) and to charge, the worker's to bind (its
        switch checks every packet: usnet.domain.switch.binding). AddPorts is reserved here and
        relayed as the list of its ports; ReturnPorts relayed, the ports released here when the
        worker has let them go; ReleasePorts relayed (answered to the client if it asks: it then
        waits before a SYN reuses a port, which the worker could otherwise meet first)."""
        k, n, fwd_to = px.index, self.n, px.wcid
        if isinstance(req, P.AddPorts):
            if req.ports is not None:
                raise OSError(errno.EPERM, "AddPorts with a list of ports is usnetd's own request to its workers")
            sw = self.switches[px.netif]
            owner = ("workers", session.id, "block")
            ports, charge = self.charge_ports(session, req.count, lambda c: self.ports.reserve_some(
                TCP, c, owner, sw.host_of(px.family), px.family, lambda p: worker_of(p, n) == k))

            def undo() -> None:
                self._release_block(px, ports, charge)

            def done(reply: P.Reply, fds: list[int]) -> tuple[P.Reply, list[int]]:
                if type(reply) is not P.PortsAdded:
                    undo()
                    return reply, fds
                if sorted(reply.ports) != sorted(ports) or reply.block in px.blocks:  # (undone by `_hear_line`)
                    raise OSError(errno.EPROTO, f"usnetd worker {k} held other ports than usnetd gave it")
                px.blocks[reply.block] = (ports, charge)
                return msgspec.structs.replace(reply, channel=req.channel), fds
            try:
                return self._send(px.line, session, P.AddPorts(fwd_to, len(ports), ports), done, undo)
            except BaseException:
                undo()
                raise
        fwd = msgspec.structs.replace(req, channel=fwd_to, answer=True)
        asker = session if req.answer else None  # a notice: usnetd's own request there, the client not parked
        if isinstance(req, P.ReturnPorts):
            ports, charge = px.blocks.pop(req.block)  # KeyError: no block of this channel

            def gone() -> None:  # the worker let them go (or died: its port space with it)
                self._release_block(px, ports, charge)

            def returned(reply: P.Reply, fds: list[int]) -> tuple[P.Reply, list[int]]:
                gone()
                return reply, fds
            try:
                answer = self._send(px.line, asker, fwd, returned, gone)
            except BaseException:
                gone()
                raise
        else:
            answer = self._send(px.line, asker, fwd)
        return answer if asker is not None else (P.Done(), [])

    def _release_block(self, px: Proxied, ports: list[int], charge: Charge) -> None:
        for p in ports:
            self.ports.release(TCP, p, px.family)
        self.ledger.release(charge)

    def _open_sharded(self, session: Session, req: P.OpenFlow) -> tuple[P.Reply, list[int]]:
        """A flow on a sharded netif: served here (its port's worker is 0) or relayed to its worker."""
        family = req.family or (6 if req.remote_addr is not None and ":" in req.remote_addr else 4)
        sib = self.proxied.get(req.with_channel) if req.with_channel else None
        if req.with_channel and sib is None and req.with_channel not in self.channels:
            raise OSError(errno.EINVAL, f"channel {req.with_channel} is no flow of this session")
        if req.with_channel and (sib is None) != (req.local_port == 0 or worker_of(req.local_port, self.n) == 0):
            raise OSError(errno.EOPNOTSUPP, "a flow sharing a port with a flow of another worker")
        if sib is not None:  # the same port on another sharded netif: the same worker
            return self._relay_open(session, req, sib.index, sib.key, None, with_channel=sib.wcid)
        self.access.check_port(session.uid, session.program, PROTO_NAMES.get(req.proto, str(req.proto)),
                               req.local_port)
        port = req.local_port
        if port == 0:  # the port decides the worker: choose it here, from the one namespace
            port = self.ports.reserve(req.proto, 0, ("workers", session.id), family=family)
            self.ports.release(req.proto, port, family)
            req = msgspec.structs.replace(req, local_port=port)
        k = worker_of(port, self.n)
        if k == 0:
            return super()._dispatch(session, req)
        charge = self.ledger.admit(Charge(session.uid, session.id, flows=1))
        try:
            self.ports.reserve(req.proto, port, ("workers", session.id), family=family,
                               reuse=session.uid if shares_port(req) and req.remote_addr is None else None)
        except BaseException:
            self.ledger.release(charge)
            raise
        return self._relay_open(session, req, k, (req.proto, port, family), charge)

    def _relay_open(self, session: Session, req: P.OpenFlow, k: int, key: tuple[int, int, int] | None,
                    charge: Charge | None, with_channel: int = 0, again: bool = True) -> tuple[P.Reply, list[int]]:
        """Open the flow in worker k on usnetd's session there for `session` (answered later: `_send`).
        `charge`: the port and limits held for it here, released if it is not opened. A worker that
        dies or hangs under the open is replaced and asked once more (`again`); left down, or a flow
        sharing a port of the lost worker (gone with it), the client hears why (ENETDOWN)."""
        def undo() -> None:
            if charge is not None:
                if key is not None:
                    self.ports.release(*key)
                self.ledger.release(charge)

        def done(reply: P.Reply, fds: list[int]) -> tuple[P.Reply, list[int]]:
            if type(reply) is not P.FlowOpened:
                undo()
                return reply, fds
            cid = next(self._ids)
            self.proxied[cid] = Proxied(k, reply.channel, session.id, line, key, charge, req.netif, reply.family)
            if session.sock is None:  # the client went meanwhile: the flow goes with its session there,
                return reply, []  # its port released when that has ended (`_drained`)
            return (msgspec.structs.replace(reply, channel=cid, workers=self.n if req.connector else 1),
                    [*fds, alive[1].fileno()])

        def retry() -> tuple[P.Reply, list[int]]:
            if k not in self.links:  # left down
                undo()
                raise OSError(errno.ENETDOWN, self.down.get(k, f"usnetd worker {k} is down"))
            if not again:  # its replacement died under it too, and has been replaced in turn
                undo()
                raise _died_again(k)
            return self._relay_open(session, req, k, key, charge, with_channel, again=False)

        # ENETDOWN from a usnetd that answers is final (usnet.client.rebind): only for a worker left
        # down, or a flow sharing a port of the lost worker; a worker that died under the open
        # twice but is restarted is EAGAIN, as one that died as its session was made
        retried, again = not again, again and not with_channel
        try:
            try:
                line = self._line(session, k)
            except (BrokenPipeError, ConnectionResetError) as e:  # (from new_session)
                if retried:  # the replacement asked again died too, its death not heard yet
                    raise _died_again(k) from e
                raise OSError(errno.EAGAIN, f"usnetd worker {k} died during this open "
                                            f"({e.strerror or e}); it is being restarted: try again") from e
            if (session.id, k) not in self._alive:
                self._alive[session.id, k] = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            alive = self._alive[session.id, k]
            return self._send(line, session, msgspec.structs.replace(req, with_channel=with_channel),
                              done, undo, retry if again or retried else None)
        except WorkerLost as e:  # it died as this open was sent, and usnetd has replaced it
            if again and k in self.links:
                return self._relay_open(session, req, k, key, charge, with_channel, again=False)
            undo()
            if retried and k in self.links:
                raise _died_again(k) from e
            raise OSError(errno.ENETDOWN, self.down.get(k) or e.strerror) from e
        except BaseException:
            undo()
            raise

    def _reply(self, s: Session, reply: P.Reply, fds: list[int]) -> None:
        if reply is not LATER:  # (a relayed request's answer comes when its worker's does: `_answer`)
            super()._reply(s, reply, fds)

    def _lease_on_worker(self, session: Session, px: Proxied, req: P.RequestLease) -> tuple[P.Reply, list[int]]:
        """A lease for a flow of worker k: admitted here, by the one agent, against the netif's LL
        capacity over all workers (their queues share the link: usnet.domain.netif.linkshare);
        applied there (ApplyLease: class, policer, DSCP, and LEASE_GRANTED on the channel's EVENT
        ring, which only the worker writes). Renewal and expiry stay here; an end is told to the
        worker (`_end_worker_lease`)."""
        desk = self.leases
        desk.tick()
        got = desk.agent.request(Who(session.uid, session.program), px.netif, req.channel, req.service_class,
                                 req.rate, req.max_packet, req.latency_target, desk.clock(), owner=session.id)
        if isinstance(got, Refusal):
            return P.LeaseRefused(got.reason.value, got.message), []

        def undo() -> None:
            desk.agent.revoke_flow(px.netif, req.channel)

        def done(reply: P.Reply, fds: list[int]) -> tuple[P.Reply, list[int]]:
            if type(reply) is not P.Done:
                undo()
                return reply, []
            log.info("lease %d: %s %g bit/s for channel %d of uid %d (%s) on %s, served by worker %d", got.id,
                     got.service_class, got.rate, req.channel, session.uid, session.program or "-", got.netif,
                     px.index)
            return P.LeaseGranted(got.id, req.channel, got.service_class, got.rate, got.max_packet,
                                  got.latency_target, got.expires, desk.agent.ttl, got.burst), []
        try:
            return self._send(px.line, session, P.ApplyLease(px.wcid, got.id, got.service_class, got.rate,
                                                             got.burst, got.max_packet), done, undo)
        except WorkerLost:
            undo()
            self._drop_proxied(req.channel)
            raise
        except OSError:
            undo()
            raise

    def _end_worker_lease(self, lease: Grant, reason: RevokeReason) -> bool:
        """A lease on a worker's flow ended here (release, expiry, policy): the worker moves the
        flow back and tells its channel. False if the flow is no worker's."""
        px = self.proxied.get(lease.flow) if isinstance(lease.flow, int) else None
        if px is None:
            return False
        if reason == RevokeReason.CLOSED:  # the channel is going: the worker drops its queue with it
            return True
        try:
            self._send(px.line, None, P.EndLease(px.wcid, lease.id, int(reason)))  # (its answer: dropped)
        except WorkerLost:  # its channels are defunct: nothing to tell
            self._drop_proxied(lease.flow)  # type: ignore[arg-type]
        except OSError as e:
            log.warning("lease %d: worker %d not told of its end: %s", lease.id, px.index, e)
        return True

    def _worker_joined(self, cid: int, group: bytes, join: bool, f: Filter) -> None:
        """Worker k confirmed that channel `cid` joined (left) `group` with source filter `f`:
        counted in the netif's union, whose reports usnetd sends (usnet.domain.switch.multicast:
        `join_remote`)."""
        px = self.proxied.get(cid)
        sw = self.switches.get(px.netif) if px is not None else None
        if px is None or sw is None:
            return
        if join:
            px.groups.append(group)
            sw.join_remote(group, cid, f)
        elif group in px.groups:
            px.groups.remove(group)
            sw.leave_remote(group, cid)

    def _worker_filtered(self, cid: int, group: bytes, f: Filter) -> None:
        """Worker k confirmed that channel `cid`'s membership of `group` took source filter `f`."""
        px = self.proxied.get(cid)
        sw = self.switches.get(px.netif) if px is not None else None
        if px is not None and sw is not None and group in px.groups:
            sw.set_remote_filter(group, cid, f)

    def _drop_proxied(self, cid: int) -> None:
        px = self.proxied.pop(cid, None)
        sw = self.switches.get(px.netif) if px is not None else None
        if px is not None and sw is not None:
            for g in px.groups:  # its memberships end with it
                sw.leave_remote(g, cid)
            px.groups.clear()
        if px is not None and px.netif:
            self.leases.agent.revoke_flow(px.netif, cid)  # its lease ends with it, silently
        if px is not None and px.charge is not None:
            if px.key is not None:
                self.ports.release(*px.key)
            self.ledger.release(px.charge)
        if px is not None:
            for ports, charge in px.blocks.values():  # a connector's: the worker's port space went with it
                self._release_block(px, ports, charge)
            px.blocks.clear()

    def end_session(self, session: Session, reason: Any) -> None:
        """The client is gone: its sessions in the workers are closed (half: the worker ends its own
        as OWNER_GONE, its flows defunct, TCP peers reset, and then closes its end), and their
        channels' ports and charges stay held here till it has (`_drained`), so no other client is
        given a port the worker still holds. A worker that dies or hangs meanwhile frees them by
        its death (`_worker_died`)."""
        super().end_session(session, reason)
        with self.lock:
            self._deferred = [(s, req) for s, req in self._deferred if s is not session]
            for key in [key for key in self._lines if key[0] == session.id]:
                line = self._lines.pop(key)
                try:
                    line.sock.shutdown(socket.SHUT_WR)
                except OSError:  # the worker is gone: its death is heard in the loop
                    self._lines[key] = line
                    for w in self._close_line(key):
                        w.undo()  # (nobody to answer)
                    continue
                self._draining.add(line)
                line.ended = time.monotonic()
                self._drain_due.add(line.ended + DRAIN_LIMIT, line)
                self._ending[session.id] = self._ending.get(session.id, 0) + 1
            for cid in [c for c, px in self.proxied.items()
                        if px.session_id == session.id and px.line not in self._draining]:
                self._drop_proxied(cid)
            for key in [key for key in self._alive if key[0] == session.id]:
                for sock in self._alive.pop(key):
                    sock.close()

    # -- a departed client's ports: held till its worker has let them go --------------------------

    def _drained(self, line: Line) -> None:
        """Worker k closed its end of a departed client's session: that session has ended there
        (its flows closed, their ports free in its port space), so usnetd releases them in its own
        namespace now, with their charges, and serves the requests that waited for them."""
        for w in self._end_drain(line):  # (none: the worker answers a session's requests before its end)
            w.undo()
        for cid in [c for c, px in self.proxied.items() if px.line is line]:
            self._drop_proxied(cid)
        self._retry_deferred()

    def _end_drain(self, line: Line) -> list[Waiting]:
        """`line` is drained (or its worker gone): forgotten and closed; what still waited on it."""
        self._draining.discard(line)
        left = self._ending.get(line.session_id, 0) - 1
        if left > 0:
            self._ending[line.session_id] = left
        else:
            self._ending.pop(line.session_id, None)
        return self._shut(line)

    def _draining_status(self, k: int) -> dict[str, int]:
        """Departed clients' sessions in worker k not ended there yet, and the ports usnetd holds for them."""
        lines = [line for line in self._draining if line.index == k]
        ports = sum((px.key is not None) + sum(len(b[0]) for b in px.blocks.values())
                    for px in self.proxied.values() if px.line in lines)
        return {"sessions": len(lines), "ports": ports}

    def _must_wait(self, e: OSError, proto: int, port: int, family: int) -> bool:
        """Whether a refusal `e` of a port (`port` 0: any ephemeral one) is only a departed client's
        ports still held for a draining session: then the request waits for the drain, not fails."""
        if not self._ending:
            return False
        if e.errno == errno.EADDRNOTAVAIL:  # the range is full: a drain may give some back
            return True
        owner = self.ports.owner(proto, port, family) if port else None
        return (e.errno == errno.EADDRINUSE and isinstance(owner, tuple) and len(owner) > 1
                and owner[0] == "workers" and owner[1] in self._ending)

    def _defer(self, session: Session, req: P.Request) -> tuple[P.Reply, list[int]]:
        """Park `session` with `req`, asked again when a drain ends (`_retry_deferred`): a drain
        ends when the worker answers, or when it dies or is found hung (bounded: DRAIN_LIMIT, then
        usnet.domain.liveness's judgement, HARD_LIMIT at most for a starved worker)."""
        self._deferred.append((session, req))
        session.waiting = True
        log.debug("session %d: %s waits for a departed client's ports in a worker", session.id,
                  type(req).__name__)
        return LATER, []

    def _retry_deferred(self) -> None:
        """A drain ended: every request waiting for one is served again (waits again if a port it
        needs is still draining; its answer goes as a relayed request's: `_answer`)."""
        todo, self._deferred = self._deferred, []
        for s, req in todo:
            if s.sock is None:
                continue
            w = Waiting(s, req, _same, _nothing, None, 0.0, 0.0, 0.0)
            try:
                answer = self._dispatch(s, req)
            except Exception as e:
                self._answer(w, None, e)
                continue
            self._answer(w, answer, None)

    def status(self, viewer: Session | None = None) -> dict:
        """usnetd's own status, with an entry per worker: its pid and restarts, and why it is down
        (`error`). A worker's netifs are its own to tell: `usnet status` asks each one
        without waiting (`_gather_status`); this snapshot (metrics, an embedded caller) never asks."""
        info = super().status(viewer)
        workers: list[dict] = [{"index": 0, "pid": os.getpid(),
                                "netifs": [n for n in info["netifs"] if n["netif"]["name"] in self.sharded]}]
        for k in range(1, self.n):
            link = self.links.get(k)
            entry: dict = {"index": k, "pid": 0 if link is None else link.pid, "restarts": self.restarts.get(k, 0),
                           "draining": self._draining_status(k)}
            if link is None:
                entry["error"] = self.down.get(k, "down")
            workers.append(entry)
        info["workers"] = workers
        info["port_waits"] = len(self._deferred)  # requests waiting for a drain (`_defer`)
        return info

    def _gather_status(self, session: Session) -> tuple[P.Reply, list[int]]:
        """`usnet status` (Status part 0): usnetd's part now, each live worker's asked on usnetd's
        own session there (`_line`) without waiting. The client's session is parked (as for
        any relayed request) till the last worker's reply is read, or WORKER_TIMEOUT passes and a
        worker still silent is reported "not answering" (`_check_gathers`); the loop serves the
        others meanwhile. Its questions have no deadline of their own (`_send`, not `judged`): an
        operator's look must not shorten a worker's life; whether it is hung is the heartbeat's to say."""
        info = self.status(session)
        g = Gather(session, info, {w["index"]: w for w in info["workers"]}, {},
                   time.monotonic() + WORKER_TIMEOUT)
        for k, entry in g.entries.items():
            if k and "error" not in entry:
                try:
                    self._ask_status(g, k, 0)
                except OSError as e:
                    entry["error"] = str(e)
        if not g.pending:
            return self._status_reply(g), []
        session.waiting = True
        self._gathers.append(g)
        return LATER, []

    def _ask_status(self, g: Gather, k: int, part: int) -> None:
        """Ask worker k for part `part` of its status for `g`; its reply is `heard` in the loop."""
        if part == 0:
            g.pending[k] = []

        def heard(reply: P.Reply, fds: list[int]) -> tuple[P.Reply, list[int]]:
            parts = g.pending.get(k)
            if parts is None or g.answered:  # (answered at the deadline: a late part is dropped)
                return LATER, []
            try:
                if type(reply) is not P.StatusReply or reply.part != len(parts) or reply.parts > 4096:
                    raise OSError(errno.EPROTO, f"status: {type(reply).__name__}")
                parts.append(reply.data)
                if len(parts) < reply.parts:
                    self._ask_status(g, k, len(parts))
                    return LATER, []
                g.entries[k]["netifs"] = self._as_seen(k, P.decode_status(b"".join(parts))["netifs"], g.session)
            except (OSError, P.ProtocolError, KeyError, TypeError) as e:
                g.entries[k]["error"] = f"its status: {e}"
            self._status_heard(g, k)
            return LATER, []

        def lost() -> None:  # the worker died or hung before it answered
            if k in g.pending and not g.answered:
                g.entries[k]["error"] = f"not answering: {self._losses.get(k, 'lost')}"
                self._status_heard(g, k)
        self._send(self._line(None, k), None, P.Status(part), heard, lost, judged=False)

    def _as_seen(self, k: int, netifs: list[dict], viewer: Session) -> list[dict]:
        """Worker k's netifs as `viewer` may see them, as `Control.status` shows usnetd's own: each
        flow under its client's channel id and owner (worker k knows only usnetd's session there),
        and for a viewer other than root or usnetd's uid only the flows of its own uid."""
        uid = viewed_uid(viewer)
        clients = {px.wcid: (cid, self.sessions.get(px.session_id))
                   for cid, px in self.proxied.items() if px.index == k}
        for nif in netifs:
            shown = []
            for f in nif.get("flows", ()):
                cid, s = clients.get(f.get("channel"), (None, None))
                if uid is not None and (s is None or s.uid != uid):
                    continue
                if s is not None:
                    f["channel"] = cid
                    f["owner"] = owner(s)
                shown.append(f)
            nif["flows"] = shown
        return netifs

    def _status_heard(self, g: Gather, k: int) -> None:
        g.pending.pop(k, None)
        if not g.pending and not g.answered:
            self._status_answer(g)

    def _status_answer(self, g: Gather) -> None:
        """`g` is complete (or its deadline passed): its client gets part 0, and is read again."""
        g.answered = True
        if g in self._gathers:
            self._gathers.remove(g)
        if g.session.sock is not None:
            self._unpark(g.session, self._status_reply(g), [])

    def _status_reply(self, g: Gather) -> P.StatusReply:
        s = g.session
        data = P.encode_status(g.info)
        step = P.STATUS_PART
        s.status_parts = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
        return P.StatusReply(s.status_parts[0], 0, len(s.status_parts))

    def _check_gathers(self) -> float:
        """Seconds until the next status's deadline; one past it is answered, a worker still
        silent reported "not answering". A comparison per status being gathered; none, nothing."""
        if not self._gathers:
            return HEARTBEAT
        now = time.monotonic()
        wait = HEARTBEAT
        for g in list(self._gathers):
            if g.deadline > now:
                wait = min(wait, g.deadline - now)
                continue
            for k in g.pending:
                g.entries[k]["error"] = f"not answering (no answer to Status within {WORKER_TIMEOUT:g} s)"
            g.pending.clear()
            self._status_answer(g)
        return wait

    def stop(self) -> None:
        super().stop()
        for line in [*self._lines.values(), *self._draining]:
            line.sock.close()  # (the loop's selector, closed by now, watched them)
        self._lines.clear()
        self._draining.clear()
        self._ending.clear()
        self._deferred.clear()
        self._due.clear()
        self._drain_due.clear()
        for pair in self._alive.values():
            for sock in pair:
                sock.close()
        self._alive.clear()
        for link in list(self.links.values()):
            link.stop(spawner=self.spawner)  # (the loop's selector, closed by now, watched its cmd)
        self.links.clear()
        if self.spawner is not None:
            self.spawner.stop()
            self.spawner = None


def _died_again(k: int) -> OSError:
    """An open whose worker died under it, and whose replacement died under it too: worker k is
    restarted once more, so the client may ask again (EAGAIN; ENETDOWN would say "left down")."""
    return OSError(errno.EAGAIN, f"usnetd worker {k} died twice during this open; it is being "
                                 "restarted: try again")


def _host_filter_msg(sw: Any, netif: str, group: bytes, f: Filter) -> bytes:
    """The b"M" of `group`'s union filter `f` in usnetd's switch `sw`: any-source (counted
    `host_filter_too_big`) if it names more than HOST_SOURCES_MAX sources."""
    if len(f.sources) > HOST_SOURCES_MAX:
        sw.drops["host_filter_too_big"] += 1
        f = ANY_SOURCE
    return filter_msg(netif, 4 if len(group) == 4 else 6, group, f)


def _same(reply: P.Reply, fds: list[int]) -> tuple[P.Reply, list[int]]:
    return reply, fds


def _nothing() -> None:
    pass


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
