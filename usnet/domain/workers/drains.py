"""A departed client's ports, held till its worker has let them go (`Drains`, composed by
`ShardedDomain`; the design is in usnet.domain.workers). When a client's session ends, usnetd
half-closes its sessions in the workers; their channels' ports stay reserved in usnetd's namespace,
"draining", till the worker closes its end (`drained`). A request for one meanwhile waits, its
session parked, and is served then (`defer`, `retry`), so no client is given a port a worker still
holds. A worker that has not closed its end DRAIN_LIMIT s on is suspect (`check`)."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable

from usnet.abi import protocol as P
from usnet.domain.deadlines import Deadlines
from usnet.domain.sessions import Session
from usnet.domain.switch.ports import PortSpace
from usnet.domain.workers.bounds import DRAIN_LIMIT, HEARTBEAT
from usnet.domain.workers.link import WorkerLink
from usnet.domain.workers.relay import Answer, Relay, nothing, same
from usnet.domain.workers.relayed import LATER, Line, Proxied, Waiting

__all__ = ["Drains"]

log = logging.getLogger("usnet.domain.workers")


class Drains:
    """The lines of departed clients not yet ended in their workers, and the requests waiting for
    them. Given: the `relay` (to hear and shut a line, to answer a waiting request), the live
    `links` (read only), the `ports` namespace and `proxied` channels (read), the `draining` set it
    fills (the relay reads it: a draining line takes no request, and its end is a drain's), and the hooks:
    `suspect` (the supervisor's judgement of a worker past a bound), `drop` (release a channel's
    ports and charges) and `dispatch` (serve a request again)."""

    def __init__(self, relay: Relay, links: dict[int, WorkerLink], ports: PortSpace, proxied: dict[int, Proxied],
                 draining: set[Line], suspect: Callable[[WorkerLink, str, float, float], float | None],
                 drop: Callable[[int], None], dispatch: Callable[[Session, P.Request], Answer]) -> None:
        self._relay = relay
        self._links = links
        self._ports = ports
        self._proxied = proxied
        self._suspect = suspect
        self._drop = drop
        self._dispatch = dispatch
        # a departed client's sessions in the workers, closed by usnetd (half: SHUT_WR) and not yet
        # by the worker: their channels' ports stay reserved here till the worker has let them go
        self.draining = draining  # (shared with the relay, which only reads it)
        self.due: Deadlines[Line] = Deadlines()  # their bounds (`check`)
        self._ending: dict[int, int] = {}  # session id -> its lines still draining
        self.deferred: list[tuple[Session, P.Request]] = []  # requests that wait for a drain (`defer`)

    def start(self, line: Line) -> None:
        """usnetd half-closed `line` (its client is gone): it drains till the worker closes its end."""
        self.draining.add(line)
        line.ended = time.monotonic()
        self.due.add(line.ended + DRAIN_LIMIT, line)
        self._ending[line.session_id] = self._ending.get(line.session_id, 0) + 1

    def forget(self, session: Session) -> None:
        """`session` ended: its requests waiting for a drain are dropped."""
        self.deferred = [(s, req) for s, req in self.deferred if s is not session]

    def drained(self, line: Line) -> None:
        """Worker k closed its end of a departed client's session: that session has ended there
        (its flows closed, their ports free in its port space), so usnetd releases them in its own
        namespace now, with their charges, and serves the requests that waited for them."""
        for w in self.end(line):  # (none: the worker answers a session's requests before its end)
            w.undo()
        for cid in [c for c, px in self._proxied.items() if px.line is line]:
            self._drop(cid)
        self.retry()

    def end(self, line: Line) -> list[Waiting]:
        """`line` is drained (or its worker gone): forgotten and closed; what still waited on it."""
        self.draining.discard(line)
        left = self._ending.get(line.session_id, 0) - 1
        if left > 0:
            self._ending[line.session_id] = left
        else:
            self._ending.pop(line.session_id, None)
        return self._relay.shut(line)

    def end_worker(self, k: int) -> tuple[list[Line], list[Waiting]]:
        """Worker k is gone, its port space with it: its drains end. The lines, and what waited on them."""
        draining = [line for line in self.draining if line.index == k]
        waiting: list[Waiting] = []
        for line in draining:
            waiting += self.end(line)
        return draining, waiting

    def status(self, k: int) -> dict[str, int]:
        """Departed clients' sessions in worker k not ended there yet, and the ports usnetd holds for them."""
        lines = [line for line in self.draining if line.index == k]
        ports = sum((px.key is not None) + sum(len(b[0]) for b in px.blocks.values())
                    for px in self._proxied.values() if px.line in lines)
        return {"sessions": len(lines), "ports": ports}

    def must_wait(self, e: OSError, proto: int, port: int, family: int) -> bool:
        """Whether a refusal `e` of a port (`port` 0: any ephemeral one) is only a departed client's
        ports still held for a draining session: then the request waits for the drain, not fails."""
        if not self._ending:
            return False
        if e.errno == errno.EADDRNOTAVAIL:  # the range is full: a drain may give some back
            return True
        owner = self._ports.owner(proto, port, family) if port else None
        return (e.errno == errno.EADDRINUSE and isinstance(owner, tuple) and len(owner) > 1
                and owner[0] == "workers" and owner[1] in self._ending)

    def defer(self, session: Session, req: P.Request) -> Answer:
        """Park `session` with `req`, asked again when a drain ends (`retry`): a drain ends when
        the worker answers, or when it dies or is found hung (bounded: DRAIN_LIMIT, then
        usnet.domain.liveness's judgement, HARD_LIMIT at most for a starved worker)."""
        self.deferred.append((session, req))
        session.waiting = True
        log.debug("session %d: %s waits for a departed client's ports in a worker", session.id,
                  type(req).__name__)
        return LATER, []

    def retry(self) -> None:
        """A drain ended: every request waiting for one is served again (waits again if a port it
        needs is still draining; its answer goes as a relayed request's: `Relay.answer`)."""
        todo, self.deferred = self.deferred, []
        for s, req in todo:
            if s.sock is None:
                continue
            w = Waiting(s, req, same, nothing, None, 0.0, 0.0, 0.0)
            try:
                answer = self._dispatch(s, req)
            except Exception as e:
                self._relay.answer(w, None, e)
                continue
            self._relay.answer(w, answer, None)

    def check(self) -> float:
        """Seconds until the next drain's bound. A worker that has not ended a departed client's
        session DRAIN_LIMIT s after usnetd half-closed it is suspect, as one that leaves a request
        unanswered (`suspect`): a worker that never lets go of those ports (stopped, stuck, or
        alive but not ending the session: asleep with its EOF unread) is found hung, killed and
        replaced, which ends its drains (`end_worker`); a starved one is looked at again.
        One look per turn (`due`)."""
        now = time.monotonic()
        for _, line in self.due.due(now):
            if line not in self.draining:
                continue  # drained, or its worker gone
            self._relay.hear(line)  # the worker's close waiting unread counts
            link = self._links.get(line.index)
            if line in self.draining and link is not None:
                later = self._suspect(link, f"a departed client's session not ended within {DRAIN_LIMIT:g} s",
                                      line.ended, now)
                if later is not None:
                    self.due.add(now + later, line)
        return self.due.next_in(now, HEARTBEAT)

    def stop(self) -> None:
        """usnetd stops: every draining line closed (the loop's selector, closed by now, watched them)."""
        for line in self.draining:
            line.sock.close()
        self.draining.clear()
        self._ending.clear()
        self.deferred.clear()
        self.due.clear()

