"""`usnet status` on a domain with workers (`StatusGather`, composed by `ShardedDomain`): usnetd's
part taken now, each live worker's asked on usnetd's own session there without waiting, and the
client answered when the last part is read, or at WORKER_TIMEOUT with a silent worker "not
answering". Apart from the relay (usnet.domain.workers.relay) because it only uses it: it asks
through `ask`, hears through the callbacks it passes, and never judges a worker."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable

from usnet.abi import protocol as P
from usnet.domain.control import owner, viewed_uid
from usnet.domain.sessions import Session
from usnet.domain.workers.bounds import HEARTBEAT, WORKER_TIMEOUT
from usnet.domain.workers.relayed import LATER, Gather, Proxied

__all__ = ["StatusGather"]

Done = Callable[[P.Reply, list[int]], tuple[P.Reply, list[int]]]


class StatusGather:
    """The `usnet status` requests waiting for workers' parts. What it needs of the domain, and no
    more: `snapshot` (usnetd's own status, with an entry per worker), `ask` (send a request to
    worker k on usnetd's own session there, unjudged: its reply to `done`, its loss to `undo`),
    `unpark` (answer a parked client), the tables it reads (`losses`, `proxied`, `sessions`)."""

    def __init__(self, snapshot: Callable[[Session], dict],
                 ask: Callable[[int, P.Request, Done, Callable[[], None]], None],
                 unpark: Callable[[Session, P.Reply, list[int]], None], losses: dict[int, str],
                 proxied: dict[int, Proxied], sessions: dict[int, Session]) -> None:
        self._snapshot = snapshot
        self._ask = ask
        self._unpark = unpark
        self._losses = losses
        self._proxied = proxied
        self._sessions = sessions
        self.gathers: list[Gather] = []  # `usnet status` requests waiting for workers' parts

    def gather(self, session: Session) -> tuple[P.Reply, list[int]]:
        """`usnet status` (Status part 0): usnetd's part now, each live worker's asked on usnetd's
        own session there without waiting. The client's session is parked (as for any relayed
        request) till the last worker's reply is read, or WORKER_TIMEOUT passes and a worker still
        silent is reported "not answering" (`check`); the loop serves the others meanwhile. Its
        questions have no deadline of their own (`ShardedDomain._send`, not `judged`): an
        operator's look must not shorten a worker's life; whether it is hung is the heartbeat's to say."""
        info = self._snapshot(session)
        g = Gather(session, info, {w["index"]: w for w in info["workers"]}, {},
                   time.monotonic() + WORKER_TIMEOUT)
        for k, entry in g.entries.items():
            if k and "error" not in entry:
                try:
                    self._ask_part(g, k, 0)
                except OSError as e:
                    entry["error"] = str(e)
        if not g.pending:
            return self._reply(g), []
        session.waiting = True
        self.gathers.append(g)
        return LATER, []

    def _ask_part(self, g: Gather, k: int, part: int) -> None:
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
                    self._ask_part(g, k, len(parts))
                    return LATER, []
                g.entries[k]["netifs"] = self._as_seen(k, P.decode_status(b"".join(parts))["netifs"], g.session)
            except (OSError, P.ProtocolError, KeyError, TypeError) as e:
                g.entries[k]["error"] = f"its status: {e}"
            self._heard(g, k)
            return LATER, []

        def lost() -> None:  # the worker died or hung before it answered
            if k in g.pending and not g.answered:
                g.entries[k]["error"] = f"not answering: {self._losses.get(k, 'lost')}"
                self._heard(g, k)
        self._ask(k, P.Status(part), heard, lost)

    def _as_seen(self, k: int, netifs: list[dict], viewer: Session) -> list[dict]:
        """Worker k's netifs as `viewer` may see them, as `Control.status` shows usnetd's own: each
        flow under its client's channel id and owner (worker k knows only usnetd's session there),
        and for a viewer other than root or usnetd's uid only the flows of its own uid."""
        uid = viewed_uid(viewer)
        clients = {px.wcid: (cid, self._sessions.get(px.session_id))
                   for cid, px in self._proxied.items() if px.index == k}
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

    def _heard(self, g: Gather, k: int) -> None:
        g.pending.pop(k, None)
        if not g.pending and not g.answered:
            self._answer(g)

    def _answer(self, g: Gather) -> None:
        """`g` is complete (or its deadline passed): its client gets part 0, and is read again."""
        g.answered = True
        if g in self.gathers:
            self.gathers.remove(g)
        if g.session.sock is not None:
            self._unpark(g.session, self._reply(g), [])

    def _reply(self, g: Gather) -> P.StatusReply:
        s = g.session
        data = P.encode_status(g.info)
        step = P.STATUS_PART
        s.status_parts = [data[i:i + step] for i in range(0, len(data), step)] or [b""]
        return P.StatusReply(s.status_parts[0], 0, len(s.status_parts))

    def check(self) -> float:
        """Seconds until the next status's deadline; one past it is answered, a worker still
        silent reported "not answering". A comparison per status being gathered; none, nothing."""
        if not self.gathers:
            return HEARTBEAT
        now = time.monotonic()
        wait = HEARTBEAT
        for g in list(self.gathers):
            if g.deadline > now:
                wait = min(wait, g.deadline - now)
                continue
            for k in g.pending:
                g.entries[k]["error"] = f"not answering (no answer to Status within {WORKER_TIMEOUT:g} s)"
            g.pending.clear()
            self._answer(g)
        return wait
