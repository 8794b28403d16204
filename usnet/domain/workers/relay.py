"""Relaying a client's requests to the workers and gathering their answers (`Relay`, composed by
`ShardedDomain`; the design is in usnet.domain.workers). It owns usnetd's sessions in the workers
(`Line`s) and the deadlines of the requests sent on them: a request is sent without waiting, its
client parked, and the worker's reply, read in the loop like any event (`hear`), is checked and
made the client's answer (`answer`).

What it cannot decide alone it asks through the hooks it is given, which is how its cycles with
the other duties stay narrow: a line's end is a drain's end (`drained`, usnet.domain.workers.drains)
or its worker's death (`died`, usnet.domain.workers.supervisor), and a deadline passed is the
supervisor's to judge (`suspect`)."""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Container

from usnet.abi import protocol as P
from usnet.abi.transport import recv_msg, send_msg
from usnet.domain.deadlines import Deadlines
from usnet.domain.sessions import Session
from usnet.domain.watch import READ, Watch
from usnet.domain.workers.bounds import HEARTBEAT, START_TIMEOUT, WORKER_TIMEOUT
from usnet.domain.workers.link import WorkerLink
from usnet.domain.workers.relayed import LATER, Line, Waiting, WorkerLost

__all__ = ["Relay"]

log = logging.getLogger("usnet.domain.workers")

Answer = tuple[P.Reply, list[int]]


class Relay:
    """usnetd's lines to its workers and the requests waiting on them. Given: the loop's `sel`, the
    live `links` and why a worker is `down` (the supervisor's tables, read only), the `draining`
    lines (the drains' set, read only), and the hooks: `drained` (a draining line's end), `died`
    (a worker found dead: returns why), `suspect` (a deadline passed: None if it was hung and is
    replaced, else the seconds to wait), `refusal` and `unpark` (a client's Error, its answer)."""

    def __init__(self, sel: Watch, links: dict[int, WorkerLink], down: dict[int, str], draining: Container[Line],
                 drained: Callable[[Line], None], died: Callable[[WorkerLink], str],
                 suspect: Callable[[WorkerLink, str, float, float], float | None],
                 refusal: Callable[[Session, P.Request, Exception], Answer],
                 unpark: Callable[[Session, P.Reply, list[int]], None]) -> None:
        self._sel = sel
        self._links = links
        self._down = down
        self._draining = draining
        self._drained = drained
        self._died = died
        self._suspect = suspect
        self._refusal = refusal
        self._unpark = unpark
        self.lines: dict[tuple[int, int], Line] = {}  # (session id, worker) -> usnetd's session there
        # the relayed requests' deadlines, soonest first (`check`: one look per turn)
        self.due: Deadlines[tuple[Line, Waiting]] = Deadlines()

    def line(self, session: Session | None, k: int) -> Line:
        """usnetd's session in worker k for client `session` (made at its first use there); None:
        usnetd's own there (its status: usnet.domain.workers.status), a Line of session id -1."""
        sid = -1 if session is None else session.id
        line = self.lines.get((sid, k))
        if line is None:
            link = self._links.get(k)
            if link is None:
                raise OSError(errno.ENETDOWN, self._down.get(k, f"usnetd worker {k} is down"))
            sock = link.new_session()
            sock.setblocking(False)
            line = self.lines[sid, k] = Line(sid, k, sock)
            self._sel.register(sock, READ, ("relay", line))
        return line

    def send(self, line: Line, session: Session | None, req: P.Request,
             done: Callable[[P.Reply, list[int]], Answer] | None = None,
             undo: Callable[[], None] | None = None,
             again: Callable[[], Answer] | None = None,
             judged: bool = True) -> Answer:
        """Send `req` to worker `line.index` without waiting, and return LATER: `done` makes the
        client's answer of the worker's reply when the loop reads it (`hear`); till then
        `session` is parked (its later requests stay unread, so none overtakes this answer).
        Unanswered within WORKER_TIMEOUT (START_TIMEOUT for a worker not yet heard from), the worker
        is suspect (`check`, `suspect`); lost, `again` asks its replacement, else `undo`
        and ENETDOWN. Not `judged` (usnetd's own question: its status), it has no deadline: only
        the heartbeat judges the worker then. A worker found dead here is dealt with at once:
        WorkerLost, with the reason."""
        k = line.index
        link = self._links.get(k)
        if line in self._draining:  # (a lease's end, say, after its client left: its flows go anyway)
            raise OSError(errno.ESHUTDOWN, f"the session in usnetd worker {k} is ending")
        if link is None or self.lines.get((line.session_id, k)) is not line:
            raise WorkerLost(errno.ENETDOWN, self._down.get(k, f"usnetd worker {k} is gone"))
        try:
            send_msg(line.sock, P.encode(req))
        except (BlockingIOError, InterruptedError) as e:  # its session holds ~200 KiB unread: it reads nothing
            raise OSError(errno.EAGAIN, f"usnetd worker {k} is not reading its requests: try again") from e
        except OSError as e:  # it died, its death not heard yet (its command socket's EOF waits in the loop)
            raise WorkerLost(errno.ENETDOWN, self._died(link)) from e
        bound = (WORKER_TIMEOUT if link.ready else START_TIMEOUT) if judged else math.inf
        now = time.monotonic()
        w = Waiting(session, req, done or same, undo or nothing, again, now + bound, bound, now)
        line.waiting.append(w)
        if judged:
            self.due.add(w.deadline, (line, w))
        if session is not None:
            session.waiting = True
        return LATER, []

    def hear(self, line: Line) -> None:
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
                link = self._links.get(line.index)
                if line in self._draining:  # the worker ended that session: its ports are free there
                    self._drained(line)
                elif link is not None and self.lines.get((line.session_id, line.index)) is line:
                    self._died(link)  # (the line's own end, closed by the worker, with its session)
                return
            if not line.waiting:
                close(fds)
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
                close(fds)
                w.undo()
                self.answer(w, None, e)
                continue
            self.answer(w, answer, None)
            close(fds)  # the worker's: sent (or copied to wait) by `answer`

    def answer(self, w: Waiting, answer: Answer | None, e: Exception | None) -> None:
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

    def lost(self, waiting: list[Waiting], why: str) -> None:
        """Requests whose worker died or hung before it answered: an open is asked of the
        replacement once (`again`); the others are undone and fail with ENETDOWN and why."""
        for w in waiting:
            if w.again is not None and w.session is not None and w.session.sock is not None:
                try:
                    self.answer(w, w.again(), None)
                except Exception as e:
                    self.answer(w, None, e)
                continue
            w.undo()
            self.answer(w, None, WorkerLost(errno.ENETDOWN, why))

    def check(self) -> float:
        """Seconds until the next relayed request's deadline; a worker that let one pass is hung
        (killed and replaced, its waiting requests `lost`). One look at the soonest deadline per
        turn (`due`, a heap); an answered request's entry is dropped when its time comes."""
        now = time.monotonic()
        for when, (line, w) in self.due.due(now):
            if not w.live or w.deadline != when:
                continue  # answered, given up, or its deadline moved (its new entry is in the heap)
            self.hear(line)  # an answer waiting unread (usnetd's own loop was slow) counts
            link = self._links.get(line.index)
            if w.live and link is not None:
                later = self._suspect(link, f"no answer to {type(w.req).__name__} within {w.bound:g} s",
                                      w.asked, now)
                if later is not None:  # starved, not hung: its requests past their deadline wait on
                    for x in line.waiting:
                        if x.deadline < now + later:
                            x.deadline = now + later
                            self.due.add(x.deadline, (line, x))
        return self.due.next_in(now, HEARTBEAT)

    def close(self, key: tuple[int, int]) -> list[Waiting]:
        """Close usnetd's session `key` in its worker; what waited on it, returned."""
        return self.shut(self.lines.pop(key))

    def close_worker(self, k: int) -> list[Waiting]:
        """Close usnetd's sessions in worker k (it is gone); what waited on them, returned."""
        waiting: list[Waiting] = []
        for key in [key for key in self.lines if key[1] == k]:
            waiting += self.close(key)
        return waiting

    def leave(self, session_id: int) -> list[Line]:
        """Client `session_id` is gone: its lines are closed for writing (the worker ends its session
        there as OWNER_GONE, then closes its end: a drain, usnet.domain.workers.drains) and
        forgotten here. One whose worker is gone already is shut, what waited on it undone (nobody
        to answer). Returns the lines half-closed."""
        ended: list[Line] = []
        for key in [key for key in self.lines if key[0] == session_id]:
            line = self.lines.pop(key)
            try:
                line.sock.shutdown(socket.SHUT_WR)
            except OSError:  # the worker is gone: its death is heard in the loop
                for w in self.shut(line):
                    w.undo()  # (nobody to answer)
                continue
            ended.append(line)
        return ended

    def shut(self, line: Line) -> list[Waiting]:
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

    def stop(self) -> None:
        """usnetd stops: every line closed (the loop's selector, closed by now, watched them)."""
        for line in self.lines.values():
            line.sock.close()
        self.lines.clear()
        self.due.clear()


def same(reply: P.Reply, fds: list[int]) -> Answer:
    """A `done` that makes the worker's reply the client's answer as it is."""
    return reply, fds


def nothing() -> None:
    """An `undo` with nothing to release."""


def close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
