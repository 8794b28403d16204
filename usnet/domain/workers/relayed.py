"""The records usnetd keeps of what it relayed to its workers (usnet.domain.workers.relay and the duties beside it): a
request waiting for its answer (`Waiting`), usnetd's session in a worker for one client (`Line`),
a status being gathered (`Gather`), a client's flow served by a worker (`Proxied`), and the
marks of an answer still to come (`LATER`) or lost with its worker (`WorkerLost`). Plain data,
apart so the tests of the deadlines can build them without a domain."""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from usnet.abi import protocol as P
from usnet.domain.limits import Charge
from usnet.domain.sessions import Session

__all__ = ["LATER", "Gather", "Line", "Proxied", "Waiting", "WorkerLost"]


class WorkerLost(OSError):
    """A relayed request's worker died or hung under it (ENETDOWN); usnetd has dealt with it."""


# What `_dispatch` returns for a request sent to a worker: its answer goes to the client when the
# worker's reply is read in the loop (`Relay.hear`, usnet.domain.workers.relay), not now. Told by identity.
LATER: P.Reply = P.Done()


@dataclass(eq=False)  # one request: compared by identity
class Waiting:
    """A request sent to a worker on a `Line`, whose answer usnetd has not read yet."""

    session: Session | None  # the client it answers, parked till then; None: usnetd's own (EndLease)
    req: P.Request  # as sent (its name in the hung reason)
    done: Callable[[P.Reply, list[int]], tuple[P.Reply, list[int]]]  # the worker's reply -> the client's
    undo: Callable[[], None]  # releases what usnetd took for it, when it is not answered
    again: Callable[[], tuple[P.Reply, list[int]]] | None  # asks the worker's replacement (an open)
    deadline: float  # monotonic: unanswered then, the worker is suspect (`Supervisor.suspect`)
    bound: float  # the seconds that deadline allowed
    asked: float  # monotonic: when it was sent (a starved worker's HARD_LIMIT counts from then)
    live: bool = True  # False once answered or given up: its entry in `Relay.due` is stale


@dataclass(eq=False)  # hashed by identity: one per session and worker (`Drains.draining`)
class Line:
    """usnetd's session in worker `index` for one client session: a SEQPACKET socket, watched by
    usnetd's loop ("relay"), and the requests sent on it that wait for an answer, oldest first
    (the worker serves a session in order, so replies come in that order)."""

    session_id: int
    index: int
    sock: socket.socket
    waiting: deque[Waiting] = field(default_factory=deque)
    ended: float = 0.0  # monotonic: when usnetd half-closed it (draining: `Drains.check`)


@dataclass(eq=False)  # one status request: compared by identity
class Gather:
    """A Status snapshot being assembled for a client (`StatusGather.gather`): usnetd's
    own part, taken when asked, and each worker's netifs as its (paged) reply is read."""

    session: Session  # parked till `answered`
    info: dict  # the snapshot; its "workers" entries are filled in as the workers answer
    entries: dict[int, dict]  # worker -> its entry in info["workers"]
    pending: dict[int, list[bytes]]  # worker asked -> the parts of its status read so far
    deadline: float  # monotonic: a worker still silent then is reported "not answering"
    answered: bool = False


@dataclass
class Proxied:
    """A flow channel of a client served by worker `index` (its id there `wcid`)."""

    index: int
    wcid: int
    session_id: int
    line: Line
    key: tuple[int, int, int] | None  # (proto, port, family) held in usnetd's port namespace; None: a connector
    charge: Charge | None
    netif: str = ""  # the flow's netif (a lease on it is admitted against that netif's LL capacity)
    family: int = 4
    # a connector's blocks: the worker's block number -> its ports (held in usnetd's namespace) and charge
    blocks: dict[int, tuple[list[int], Charge]] = field(default_factory=dict)
    groups: list[bytes] = field(default_factory=list)  # the groups it joined (the worker confirmed each)
