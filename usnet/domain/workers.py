"""usnetd on more than one core: the domain as N processes, each serving a share of the flows.

Python threads would not help: the data path is Python, and one interpreter runs one thread at a
time (docs/design-notes.md, "More than one core: usnetd --workers", has the measurement). So workers are
processes. `usnetd --workers N` (N > 1) opens every TAP netif with N queues (usnet.drivers.tap:
`TapDriver.queues`, IFF_MULTI_QUEUE) and every packet netif as N sockets in a PACKET_FANOUT group
(usnet.drivers.packet: `PacketDriver.queues`), both steered by local port (usnet.drivers.steer):
a frame to port p arrives on queue p mod N, ARP, ICMP and fragments on queue 0.

* Worker 0 is usnetd's own process (`ShardedDomain`): the one control plane (sessions, the port
  namespace, limits and port rules, leases), the loopback netif, queue 0 of every TAP and packet netif with
  the flows whose port p has p mod N == 0, worker 0's connectors, and every neighbour it learns.
* Worker k (1 <= k < N) is a child forked at start (`start_workers`, `WorkerDomain`): an ordinary
  Domain on queue k of every TAP and packet netif, serving the flows whose port has p mod N == k. It takes
  no client itself: its only peer is usnetd.

A client opens a flow as ever, from usnetd. For a port of worker k, usnetd reserves the port in
its namespace, checks the port rules and charges the limits, then opens the flow in worker k on
a session of its own for that client (a SEQPACKET pair whose far end it passes to the worker with
SCM_RIGHTS), and hands the client the worker's descriptors under a channel id of its own. From
then on the data path (rings, doorbells, the TAP queue) is the worker's alone: rings stay single
producer, single consumer, and nothing of the flow crosses a process. Kick, Resize, CloseChannel
and FlushQueue on that channel are relayed.

A relayed request does not hold usnetd's loop: it is sent without waiting (`ShardedDomain._send`),
its client's session parked (its later requests stay unread in its socket, so none overtakes
the answer; only its end is heard), and the worker's reply, read in the loop like any event
(`_hear_line`), is checked and made the client's answer (`_answer`). Meanwhile the loop serves
everyone else. When the client's session ends, usnetd closes its
sessions in the workers, which end theirs as OWNER_GONE: the flows are defuncted and their TCP
peers reset, as on one core.

Neighbours: ARP and neighbour discovery arrive on queue 0, so usnetd tells every worker each
neighbour it learns; a worker that asks itself (its own ARP request) is answered through that.

A dead worker (SIGKILL, a crash): usnetd hears it at once (the worker's command socket, which it
never writes, reads EOF in usnetd's loop: no polling, nothing a client controls), kills and reaps
what is left of it, and
* tells every client channel it served: each flow opened on worker k came with a sixth descriptor,
  a socket per (session, worker) whose far end usnetd keeps; it writes why ("usnetd worker 1
  (pid N) died (killed by SIGKILL)") and closes it, and the client's channel, sleeper or stack
  thread hears the hang-up and fails that channel alone (WORKER_GONE, ECONNABORTED for a socket);
* releases what it held for those channels: their port reservations, the limits charged, the
  relayed channel ids and its sessions in the dead worker; the ports bind again;
* starts a new worker k through the spawner (`Spawner`), a small process forked at start before
  anything else was open, which keeps queue 1 .. N-1 of every TAP netif (a closed queue would
  make the kernel move the last queue into its place, and the steering send another worker's
  frames there), and tells it every neighbour usnetd knows. One log line per restart; a worker
  that dies within RESTART_WITHIN seconds of its start RESTART_LIMIT times in a row is left down
  (opens on its ports are refused with the reason; `usnet status` shows it).
On a packet netif too: the replacement finds its queue's ring positions again
(usnet.drivers.packet: `PacketDriver.resume`, called by the spawner's new worker).

A hung worker (alive but silent: SIGSTOP, stuck in a loop, blocked): usnetd asks each worker
every HEARTBEAT s whether its loop turns (b"H" on the command socket, answered b"h", sent and read
without waiting); one that leaves it unanswered HUNG_AFTER s, or a relayed request unanswered
WORKER_TIMEOUT s (START_TIMEOUT for a worker not yet heard from; `_check_relays`), is hung:
usnetd kills it and replaces it as a dead one, its clients told "usnetd worker k (pid N) hung
(...)". An open that found it hung is asked once more of the replacement; its other waiting
requests fail with ENETDOWN and the reason. usnetd's loop never waits on a worker for a client's
request; `usnet status` alone still asks each worker and waits (at most WORKER_TIMEOUT), and
skips one whose heartbeat is overdue.

A paced netif (`link_rate`) is one link for all workers: their queues' schedulers share it through
a page usnetd maps before the fork (usnet.domain.netif.linkshare). A low-latency lease on a flow of
worker k is admitted by usnetd's one agent and applied in worker k (`ApplyLease`, `EndLease`: the
worker posts the events, usnetd keeps the lease's time).

Connectors (a process's outgoing connections on one channel, usnet.domain.switch.binding): one
per worker. A client opens worker 0's (here) and learns N from its FlowOpened, then worker k's
(`OpenFlow.worker`, relayed as any flow). usnetd alone chooses and charges their ports, worker
k's from its share (p mod N == k, so the server's answers reach queue k), and relays each block
to worker k as an explicit list (`AddPorts.ports`, which only usnetd's sessions in a worker may
send; a client's is EPERM); the worker holds them in its port space and binds each by its SYN.
ReturnPorts and ReleasePorts are relayed (`_worker_ports`); a dead worker's blocks are released
here with its channels (`_drop_proxied`).

Multicast (usnet.domain.switch.multicast): a group datagram to port p comes to queue p mod N, as
any, so worker k's flows join their groups there (JoinGroup is relayed) and it delivers to them;
but the link must hear one host, and queries come to queue 0. So a worker says no IGMP or MLD
(`speaks` False); usnetd counts each membership a worker's answer confirms (`Proxied.groups`,
`join_remote`) and reports and answers queries for the union: a group's first join and last
leave over all workers are said once, a query answered once. A membership ends here with its
channel (closed, its session ended, its worker dead).

Fragments come to queue 0 (only the first names ports), and so does IPv6 with an extension header
before UDP: usnetd puts a datagram back together, finds its port and, if it is worker k's, hands
the whole frame to worker k on its command socket (b"F", `_hand_over`), which takes it as if it
came whole (`rx_whole`): unicast or to a group, whose members all hold its port, so all are
worker k's.

Not yet (see the design notes): a wildcard listener's loopback half is not made for a port of
another worker; the status of workers is asked synchronously (bounded, as above).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import selectors
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from usnet.abi import protocol as P
from usnet.abi.events import RevokeReason
from usnet.abi.transport import recv_msg, send_msg
from usnet.domain.limits import Charge
from usnet.domain.loop import Domain
from usnet.domain.lowlat.agent import Grant, Refusal
from usnet.domain.lowlat.policer import Policer
from usnet.domain.lowlat.policy import Who
from usnet.domain.sessions import Session, shares_port
from usnet.domain.switch.ports import PROTO_NAMES
from usnet.domain.switch.table import TCP
from usnet.drivers.base import Received

__all__ = ["HEARTBEAT", "HUNG_AFTER", "RESTART_LIMIT", "RESTART_WITHIN", "START_TIMEOUT", "WORKER_TIMEOUT",
           "ShardedDomain", "Spawner", "WorkerDomain", "WorkerLink", "WorkerLost", "start_workers", "worker_of"]

log = logging.getLogger("usnet.domain.workers")
# the longest usnetd waits for a worker's reply to a relayed request: a worker's loop answers in
# milliseconds, so one silent this long is hung (stopped, stuck), and is killed and replaced
WORKER_TIMEOUT = 1.0
HEARTBEAT = 0.5  # usnetd asks each worker this often whether it still turns its loop
HUNG_AFTER = 2.0  # a worker that leaves a heartbeat unanswered this long is hung: killed and replaced
START_TIMEOUT = 5.0  # the bounds for a worker not yet heard from (a fork's start on a loaded machine)
RESTART_WITHIN = 10.0  # a worker that dies this soon after its start "died at start"
RESTART_LIMIT = 5  # after this many such deaths in a row, worker k is not restarted again
# the longest message on a worker's command socket: a whole datagram handed over (b"F": up to 65,535
# bytes of IP payload, its headers, the netif's name)
COMMAND_MAX = 1 << 17
_RELAYED = (P.Kick, P.Resize, P.CloseChannel, P.FlushQueue, P.Unlisten, P.JoinGroup, P.MulticastOptions)


def worker_of(port: int, n: int) -> int:
    """The worker that serves local port `port` of `n`: the queue the steering program picks."""
    return port % n


def neighbour_msg(kind: bytes, netif: str, family: int, rest: bytes | bytearray) -> bytes:
    """A message about a netif on a command socket: `kind` (b"N" usnetd tells a worker a neighbour,
    `rest` its address and MAC; b"A" a worker tells usnetd it asked for the address `rest`; b"F"
    usnetd hands a worker a datagram it put back together, `rest` the Ethernet frame), the family
    (4, 6), the netif's name, then `rest`."""
    name = netif.encode()
    return kind + bytes([family, len(name)]) + name + rest


def neighbour_of(switches: dict[str, Any], data: bytes) -> tuple[Any, Any, bytes]:
    """(switch, its ARP or ND cache, the rest) of a `neighbour_msg`; switch None if it names no
    netif of `switches`."""
    if len(data) < 3:
        return None, None, b""
    family, n = data[1], data[2]
    sw = switches.get(data[3:3 + n].decode(errors="replace"))
    if sw is None or family not in (4, 6):
        return None, None, b""
    return sw, sw.arp if family == 4 else sw.nd, data[3 + n:]


class WorkerLink:
    """usnetd's end of worker k: its process and its command socket (sessions and neighbours)."""

    def __init__(self, index: int, pid: int, cmd: socket.socket, child: bool = True) -> None:
        self.index = index
        self.pid = pid
        self.cmd = cmd
        self.admin: socket.socket | None = None  # usnetd's own session there (status)
        self.child = child  # usnetd's own child (forked at start), else the spawner's (a restart)
        self.started = time.monotonic()
        self.asked: float | None = None  # when the heartbeat it has not answered yet was sent
        self.ready = False  # it answered a heartbeat: its loop runs (until then START_TIMEOUT applies)

    def new_session(self) -> socket.socket:
        """A session in the worker, on a new SEQPACKET pair; usnetd's end, with a timeout."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            send_msg(self.cmd, b"S", [theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(WORKER_TIMEOUT)
        return ours

    def neighbour(self, netif: str, family: int, addr: bytes, mac: bytes) -> None:
        try:
            send_msg(self.cmd, neighbour_msg(b"N", netif, family, addr + mac))
        except OSError as e:  # a worker gone: its flows are lost; the log says so
            log.warning("worker %d: cannot pass a neighbour: %s", self.index, e)

    def hand_over(self, netif: str, family: int, frame: Received) -> bool:
        """A datagram usnetd put back together for a port of this worker, sent without waiting;
        False if it could not be (its socket full, or the worker gone)."""
        try:
            self.cmd.send(neighbour_msg(b"F", netif, family, frame), socket.MSG_DONTWAIT)
        except OSError:
            return False
        return True

    def stop(self, timeout: float = 5.0, spawner: Spawner | None = None) -> None:
        """Close its command socket (it stops) and reap it; killed if it takes longer than `timeout`.
        A restarted worker is the spawner's child: waited for on a pidfd, reaped by the spawner."""
        for s in (self.admin, self.cmd):
            if s is not None:
                s.close()
        if not self.child:
            try:
                pidfd = os.pidfd_open(self.pid)
            except OSError:  # gone already
                return
            try:
                if not select.select([pidfd], [], [], timeout)[0]:
                    os.kill(self.pid, signal.SIGKILL)
            finally:
                os.close(pidfd)
            if spawner is not None:
                spawner.reap(self.pid)
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return
            time.sleep(0.01)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)

    def reap(self, spawner: Spawner | None) -> str:
        """The dead (or useless: its command socket closed) worker killed and reaped: how it ended."""
        try:
            os.kill(self.pid, signal.SIGKILL)  # still ours to signal: nobody reaped it yet
        except ProcessLookupError:
            pass
        status: int | None = None
        if self.child:
            try:
                status = os.waitpid(self.pid, 0)[1]
            except ChildProcessError:
                pass
        elif spawner is not None:
            status = spawner.reap(self.pid)
        return _describe(status)


def _describe(status: int | None) -> str:
    if status is None:
        return "ended"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


class Spawner:
    """usnetd's end of the spawner: a small process forked at start, before anything else is open,
    that keeps queue 1 .. N-1 of every netif and forks a new worker k on usnetd's word.

    Why a process of its own: usnetd itself cannot fork a replacement well once it serves (its
    threads, every client's memory mapped and descriptors open, all inherited), and a TAP or
    PACKET_FANOUT queue must never be closed: the kernel moves the last queue into a closed one's
    place, and the steering (port mod N) would send another worker's frames there. The spawner
    holds every queue, so a dead worker's stays attached (its frames wait, then drop) until its
    replacement reads it. Its protocol (SEQPACKET): b"W"+k with a command socket: fork worker k,
    answer b"P"+pid; b"R"+pid: reap it, answer b"S"+status; EOF: it exits."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        sock.settimeout(WORKER_TIMEOUT)

    def spawn(self, k: int) -> WorkerLink:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            send_msg(self.sock, b"W" + bytes([k]), [theirs.fileno()])
            theirs.close()
            data, fds = recv_msg(self.sock, 1)
            for fd in fds:
                os.close(fd)
            if data[:1] != b"P" or len(data) != 5:
                raise OSError(errno.EPROTO, f"the spawner answered {data!r}")
        except BaseException:
            ours.close()
            theirs.close()
            raise
        return WorkerLink(k, int.from_bytes(data[1:], "little"), ours, child=False)

    def reap(self, pid: int) -> int | None:
        try:
            send_msg(self.sock, b"R" + pid.to_bytes(4, "little"))
            data, _ = recv_msg(self.sock, 1)
        except OSError:
            return None
        return int.from_bytes(data[1:], "little", signed=True) if data[:1] == b"S" and len(data) == 5 else None

    def stop(self, timeout: float = 5.0) -> None:
        self.sock.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                return
            time.sleep(0.01)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def _fork(what: str, run: Callable[[], int]) -> int:
    """Fork a child that runs `run` and exits with what it returns (1, logged as `what` failing,
    if it raises); in the parent, the child's pid."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = run()
        except BaseException:
            log.exception("%s failed", what)
        finally:
            os._exit(status)
    return pid


def _spawner_main(sock: socket.socket, queues: dict[str, list],
                  make: Callable[[int, socket.socket, dict[str, Any]], int]) -> int:
    """The spawner's loop (see `Spawner`): blocking, single-threaded, its only peer usnetd."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        data, fds = recv_msg(sock, 1)
        if not data:
            return 0
        if data[:1] == b"W" and len(data) == 2 and len(fds) == 1:
            k = data[1]
            cmd = socket.socket(fileno=fds[0])

            def worker(k: int = k, cmd: socket.socket = cmd) -> int:
                sock.close()
                mine = {name: qs[k] for name, qs in queues.items() if 0 < k < len(qs)}
                for q in mine.values():
                    resume = getattr(q, "resume", None)  # a packet queue's ring positions, found again
                    if resume is not None:
                        resume()
                return make(k, cmd, mine)

            pid = _fork(f"worker {k}", worker)
            cmd.close()
            send_msg(sock, b"P" + pid.to_bytes(4, "little"))
        elif data[:1] == b"R" and len(data) == 5:
            try:
                status = os.waitpid(int.from_bytes(data[1:], "little"), 0)[1]
            except ChildProcessError:
                status = -1
            send_msg(sock, b"S" + status.to_bytes(4, "little", signed=True))
        else:
            for fd in fds:
                os.close(fd)


def relay(sock: socket.socket, req: P.Request) -> tuple[P.Reply, list[int]]:
    """One request to a worker and its reply, waited for (at most WORKER_TIMEOUT).

    Requests and replies alternate, so whatever waits before a request is sent is the late
    reply to one that timed out: dropped (its descriptors closed), never taken as this
    request's answer."""
    for _ in range(16):  # at most one per request that timed out; bounded all the same
        if not select.select([sock], [], [], 0)[0]:
            break
        stale, fds = recv_msg(sock, 16)
        for fd in fds:
            os.close(fd)
        if not stale:
            raise OSError(errno.EPIPE, "the worker is gone")
        log.warning("a worker's late reply dropped (%d bytes)", len(stale))
    send_msg(sock, P.encode(req))
    data, fds = recv_msg(sock, 16)
    if not data:
        raise OSError(errno.EPIPE, "the worker is gone")
    return P.decode_reply(data), fds


class WorkerLost(OSError):
    """A relayed request's worker died or hung under it (ENETDOWN); usnetd has dealt with it."""


# What `_dispatch` returns for a request sent to a worker: its answer goes to the client when the
# worker's reply is read in the loop (`ShardedDomain._hear_line`), not now. Told by identity.
LATER: P.Reply = P.Done()


@dataclass(eq=False)  # one request: compared by identity
class Waiting:
    """A request sent to a worker on a `Line`, whose answer usnetd has not read yet."""

    session: Session | None  # the client it answers, parked till then; None: usnetd's own (EndLease)
    req: P.Request  # as sent (its name in the hung reason)
    done: Callable[[P.Reply, list[int]], tuple[P.Reply, list[int]]]  # the worker's reply -> the client's
    undo: Callable[[], None]  # releases what usnetd took for it, when it is not answered
    again: Callable[[], tuple[P.Reply, list[int]]] | None  # asks the worker's replacement (an open)
    deadline: float  # monotonic: unanswered then, the worker is hung
    bound: float  # the seconds that deadline allowed


@dataclass(eq=False)  # hashed by identity: one per session and worker (`ShardedDomain._busy`)
class Line:
    """usnetd's session in worker `index` for one client session: a SEQPACKET socket, watched by
    usnetd's loop ("relay"), and the requests sent on it that wait for an answer, oldest first
    (the worker serves a session in order, so replies come in that order)."""

    session_id: int
    index: int
    sock: socket.socket
    waiting: deque[Waiting] = field(default_factory=deque)


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
        self._busy: set[Line] = set()  # the lines with requests waiting for an answer (their deadlines)
        # (session id, worker) -> the liveness pair: the client's end goes with every flow opened there
        # (FlowOpened's sixth descriptor); usnetd writes why and closes its end when the worker dies
        self._alive: dict[tuple[int, int], tuple[socket.socket, socket.socket]] = {}
        self.restarts: dict[int, int] = {}  # worker -> times restarted
        self._quick_deaths: dict[int, int] = {}  # worker -> deaths in a row within RESTART_WITHIN of its start
        self.down: dict[int, str] = {}  # worker -> why it is down (not restarted)
        self._beat_at = 0.0  # when the next heartbeat goes (`_check_workers`)
        for link in links:
            self._watch(link)
        self.leases.remote_end = self._end_worker_lease

    def _watch(self, link: WorkerLink) -> None:
        """Hear worker `link` die: its command socket, which it writes only to answer a heartbeat,
        reads EOF then. Its first heartbeat goes now: the answer says its loop runs."""
        link.cmd.setblocking(False)
        self._sel.register(link.cmd, selectors.EVENT_READ, ("worker", link))
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
                data = link.cmd.recv(64)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                data = b""
            if not data:
                self._worker_died(link)
                return False
            link.asked = None  # whatever it says, its loop turns
            link.ready = True
            if data[:1] == b"A":
                self._expect_neighbour(data)
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
        return min(wait, self._check_workers(), self._check_relays())

    def _check_workers(self) -> float:
        """The heartbeat (every HEARTBEAT s; a comparison per loop turn otherwise): each worker is
        asked whether its loop turns; one that leaves the question unanswered HUNG_AFTER s (a
        worker not ready yet: START_TIMEOUT s) is hung (stopped, stuck in a loop, blocked), and is
        killed and replaced as if it had died, its clients told why. Nothing a worker does can make
        usnetd wait: the question is sent without waiting and the answer read in the loop."""
        now = time.monotonic()
        if now < self._beat_at:
            return self._beat_at - now
        self._beat_at = now + HEARTBEAT
        for link in list(self.links.values()):
            if link.asked is None:
                self._ask_heartbeat(link, now)
                continue
            limit = HUNG_AFTER if link.ready else max(HUNG_AFTER, START_TIMEOUT)
            if now - link.asked < limit or not self._hear(link) or link.asked is None:
                continue  # (an answer waiting unread, as when usnetd's own loop was slow, counts)
            self._worker_hung(link, f"no answer to a heartbeat for {now - link.asked:.1f} s")
        return HEARTBEAT

    # -- relayed requests: sent now, answered when the worker's reply is read ------------------

    def _line(self, session: Session, k: int) -> Line:
        """usnetd's session in worker k for client `session` (made at its first use there)."""
        line = self._lines.get((session.id, k))
        if line is None:
            link = self.links.get(k)
            if link is None:
                raise OSError(errno.ENETDOWN, self.down.get(k, f"usnetd worker {k} is down"))
            sock = link.new_session()
            sock.setblocking(False)
            line = self._lines[session.id, k] = Line(session.id, k, sock)
            self._sel.register(sock, selectors.EVENT_READ, ("relay", line))
        return line

    def _send(self, line: Line, session: Session | None, req: P.Request,
              done: Callable[[P.Reply, list[int]], tuple[P.Reply, list[int]]] | None = None,
              undo: Callable[[], None] | None = None,
              again: Callable[[], tuple[P.Reply, list[int]]] | None = None) -> tuple[P.Reply, list[int]]:
        """Send `req` to worker `line.index` without waiting, and return LATER: `done` makes the
        client's answer of the worker's reply when the loop reads it (`_hear_line`); till then
        `session` is parked (its later requests stay unread, so none overtakes this answer).
        Unanswered within WORKER_TIMEOUT (START_TIMEOUT for a worker not yet heard from), the worker
        is hung (`_check_relays`); lost, `again` asks its replacement, else `undo` and ENETDOWN.
        A worker found dead here is dealt with at once: WorkerLost, with the reason."""
        k = line.index
        link = self.links.get(k)
        if link is None or self._lines.get((line.session_id, k)) is not line:
            raise WorkerLost(errno.ENETDOWN, self.down.get(k, f"usnetd worker {k} is gone"))
        try:
            send_msg(line.sock, P.encode(req))
        except (BlockingIOError, InterruptedError) as e:  # its session holds ~200 KiB unread: it reads nothing
            raise OSError(errno.EAGAIN, f"usnetd worker {k} is not reading its requests: try again") from e
        except OSError as e:  # it died, its death not heard yet (its command socket's EOF waits in the loop)
            raise WorkerLost(errno.ENETDOWN, self._worker_died(link)) from e
        bound = WORKER_TIMEOUT if link.ready else START_TIMEOUT
        line.waiting.append(Waiting(session, req, done or _same, undo or _nothing, again,
                                    time.monotonic() + bound, bound))
        self._busy.add(line)
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
                if link is not None and self._lines.get((line.session_id, line.index)) is line:
                    self._worker_died(link)  # (the line's own end, closed by the worker, with its session)
                return
            if not line.waiting:
                _close(fds)
                log.warning("worker %d: a reply nobody waits for dropped (%d bytes)", line.index, len(data))
                continue
            w = line.waiting.popleft()
            if not line.waiting:
                self._busy.discard(line)
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
        s.waiting = s.unread = False
        if s.sock is not None:
            self._watch_session(s)
            self._reply(s, *answer)

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
        (killed and replaced, its waiting requests `_lost`). A comparison per busy line per turn."""
        if not self._busy:
            return HEARTBEAT
        now = time.monotonic()
        wait = HEARTBEAT
        for line in list(self._busy):
            if not line.waiting:
                self._busy.discard(line)
                continue
            w = min(line.waiting, key=lambda w: w.deadline)
            if w.deadline > now:
                wait = min(wait, w.deadline - now)
                continue
            self._hear_line(line)  # an answer waiting unread (usnetd's own loop was slow) counts
            link = self.links.get(line.index)
            if line.waiting and w in line.waiting and link is not None:
                self._worker_hung(link, f"no answer to {type(w.req).__name__} within {w.bound:g} s")
        return wait

    def _close_line(self, key: tuple[int, int]) -> list[Waiting]:
        """Close usnetd's session `key` in its worker; what waited on it, returned."""
        line = self._lines.pop(key)
        self._busy.discard(line)
        try:
            self._sel.unregister(line.sock)
        except (KeyError, ValueError):
            pass
        line.sock.close()
        waiting = list(line.waiting)
        line.waiting.clear()
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
        why = self._replace(link, why)
        self._lost(waiting, why)
        return why

    def _replace(self, link: WorkerLink, why: str | None) -> str:
        """`_worker_died`'s bookkeeping: worker k reaped, its channels defunct, a new one forked."""
        k = link.index
        del self.links[k]
        try:
            self._sel.unregister(link.cmd)
        except (KeyError, ValueError):
            pass
        for sock in (link.admin, link.cmd):
            if sock is not None:
                sock.close()
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

            def hand_over(port: int, frame: Received) -> bool:
                return self._hand_over(name, port, frame)

            sw.hand_over = hand_over
        return sw

    def _hand_over(self, netif: str, port: int, frame: Received) -> bool:
        """A datagram put back together on queue 0 (`ReceivePath._handed_over`): False if `port` is
        ours; else handed to its worker (counted), or dropped if it cannot take it now (counted)."""
        k = worker_of(port, self.n)
        if k == 0:
            return False
        sw = self.switches[netif]
        link = self.links.get(k)
        family = 4 if int.from_bytes(frame[12:14], "big") == 0x0800 else 6
        if link is not None and link.hand_over(netif, family, frame):
            sw.counts["rx_handed_over"] += 1
        else:
            sw.drops["rx_hand_over_failed"] += 1
        return True

    def _dispatch(self, session: Session, req: P.Request) -> tuple[P.Reply, list[int]]:
        if session.over_limit is None:
            if type(req) is P.OpenFlow and req.netif in self.sharded:
                return self._open_connector(session, req) if req.connector else self._open_sharded(session, req)
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
                if not isinstance(req, _RELAYED):
                    raise OSError(errno.EOPNOTSUPP, f"{type(req).__name__} on a flow of worker {px.index}")
                cid = req.channel

                def done(reply: P.Reply, fds: list[int]) -> tuple[P.Reply, list[int]]:
                    if isinstance(req, P.CloseChannel):
                        self._drop_proxied(cid)
                    elif isinstance(req, P.JoinGroup) and type(reply) is P.Done:
                        self._worker_joined(cid, req.group, req.join)
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
            if session.sock is None:  # the client went meanwhile: its session there closed with it
                undo()
                return reply, []
            cid = next(self._ids)
            self.proxied[cid] = Proxied(k, reply.channel, session.id, line, key, charge, req.netif, reply.family)
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

    def _worker_joined(self, cid: int, group: bytes, join: bool) -> None:
        """Worker k confirmed that channel `cid` joined (left) `group`: counted in the netif's union,
        whose reports usnetd sends (usnet.domain.switch.multicast: `join_remote`)."""
        px = self.proxied.get(cid)
        sw = self.switches.get(px.netif) if px is not None else None
        if px is None or sw is None:
            return
        if join:
            px.groups.append(group)
            sw.join_remote(group)
        elif group in px.groups:
            px.groups.remove(group)
            sw.leave_remote(group)

    def _drop_proxied(self, cid: int) -> None:
        px = self.proxied.pop(cid, None)
        sw = self.switches.get(px.netif) if px is not None else None
        if px is not None and sw is not None:
            for g in px.groups:  # its memberships end with it
                sw.leave_remote(g)
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
        super().end_session(session, reason)
        with self.lock:
            for cid in [c for c, px in self.proxied.items() if px.session_id == session.id]:
                self._drop_proxied(cid)
            for key in [key for key in self._lines if key[0] == session.id]:
                for w in self._close_line(key):  # the worker ends its session: OWNER_GONE, peers reset
                    w.undo()  # (nobody to answer)
            for key in [key for key in self._alive if key[0] == session.id]:
                for sock in self._alive.pop(key):
                    sock.close()

    def status(self, viewer: Session | None = None) -> dict:
        info = super().status(viewer)
        workers: list[dict] = [{"index": 0, "pid": os.getpid(),
                                "netifs": [n for n in info["netifs"] if n["netif"]["name"] in self.sharded]}]
        for k in range(1, self.n):
            link = self.links.get(k)
            if link is None:
                workers.append({"index": k, "pid": 0, "restarts": self.restarts.get(k, 0),
                                "error": self.down.get(k, "down")})
                continue
            silent = time.monotonic() - link.asked if link.asked is not None else 0.0
            try:
                if link.ready and silent > HEARTBEAT:  # silent: not asked (its answer would hold this loop)
                    raise OSError(errno.ETIMEDOUT, f"not answering (no answer to a heartbeat for {silent:.1f} s)")
                if link.admin is None:
                    link.admin = link.new_session()
                workers.append({"index": link.index, "pid": link.pid, "restarts": self.restarts.get(k, 0),
                                "netifs": _worker_status(link.admin)})
            except (OSError, P.ProtocolError) as e:
                workers.append({"index": link.index, "pid": link.pid, "restarts": self.restarts.get(k, 0),
                                "error": str(e)})
        info["workers"] = workers
        return info

    def stop(self) -> None:
        super().stop()
        for line in self._lines.values():
            line.sock.close()  # (the loop's selector, closed by now, watched them)
        self._lines.clear()
        self._busy.clear()
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


def _same(reply: P.Reply, fds: list[int]) -> tuple[P.Reply, list[int]]:
    return reply, fds


def _nothing() -> None:
    pass


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def _worker_status(sock: socket.socket) -> list:
    parts: list[bytes] = []
    total = 1
    while len(parts) < total:
        reply, _ = relay(sock, P.Status(len(parts)))
        if type(reply) is not P.StatusReply:
            raise OSError(errno.EPROTO, f"status: {reply!r}")
        parts.append(reply.data)
        total = reply.parts
    return P.decode_status(b"".join(parts))["netifs"]


class WorkerDomain(Domain):
    """Worker k: a Domain whose only peer is usnetd, on its command socket `cmd`."""

    def __init__(self, cmd: socket.socket, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cmd = cmd
        self._sel.register(cmd, selectors.EVENT_READ, ("command", None))

    def add_netif(self, name: str, driver: Any, *args: Any, **kwargs: Any):
        """A netif whose queue k is ours: each neighbour we ask for is also told to usnetd, which
        receives the answer (ARP and ND come to queue 0) and tells it back (`_expect_neighbour`).
        Its groups are usnetd's to report: we say no IGMP or MLD."""
        sw = super().add_netif(name, driver, *args, **kwargs)
        sw.speaks = False
        for family, ask_name in ((4, "_arp_request"), (6, "_solicit")):
            ask = getattr(sw, ask_name)

            def ask_and_tell(addr: bytes, ask: Callable[[bytes], None] = ask, family: int = family) -> None:
                ask(addr)
                try:
                    self.cmd.send(neighbour_msg(b"A", name, family, addr), socket.MSG_DONTWAIT)
                except OSError:  # usnetd's socket full or gone: our own requests go on; its EOF comes
                    pass

            setattr(sw, ask_name, ask_and_tell)
        return sw

    def _dispatch(self, session: Session, req: P.Request) -> tuple[P.Reply, list[int]]:
        """usnetd's leases on our flows, besides what any Domain serves: every session here is one
        usnetd opened (a client never reaches a worker's control socket), so it is obeyed."""
        if session.over_limit is None and type(req) is P.AddPorts and req.ports is not None:
            block, ports = self.add_ports(session, req, listed=True)  # usnetd's block for its connector here
            return P.PortsAdded(req.channel, block, ports), []
        if session.over_limit is None and isinstance(req, (P.ApplyLease, P.EndLease)):
            ref = self._own(session, req.channel)
            if ref.flow is None or ref.switch is None:
                raise OSError(errno.EINVAL, f"channel {req.channel} is not a flow")
            netif = ref.switch.netif.name
            with self.lock:
                if isinstance(req, P.ApplyLease):
                    self.leases.apply(ref, netif, req.lease, req.service_class, req.rate,
                                      Policer(req.rate, req.burst, req.max_packet))
                else:
                    self.leases.unapply(ref, netif, req.lease, RevokeReason(req.reason))
            return P.Done(), []
        return super()._dispatch(session, req)

    def _serve_event(self, kind: str, obj: Any, fd: int, mask: int) -> None:
        if kind != "command":
            super()._serve_event(kind, obj, fd, mask)
            return
        try:
            data, fds = recv_msg(self.cmd, 4, max_bytes=COMMAND_MAX)
        except (BlockingIOError, InterruptedError):
            return
        if not data:  # usnetd is gone or stopping: so are we
            self.request_stop()
            return
        if data[:1] == b"H":  # usnetd's heartbeat: this loop turns
            try:
                self.cmd.send(b"h", socket.MSG_DONTWAIT)
            except OSError:  # usnetd reads its answers; gone, its EOF comes next
                pass
        elif data[:1] == b"S" and len(fds) == 1:
            self.add_socket_session(socket.socket(fileno=fds[0]))  # its sessions are usnetd's alone
        elif data[:1] == b"F":
            sw, _, frame = neighbour_of(self.switches, data)
            if sw is not None:
                with self.lock:
                    sw.rx_whole(frame)
        elif data[:1] == b"N":
            sw, cache, rest = neighbour_of(self.switches, data)
            if sw is not None and len(rest) == (4 if cache is sw.arp else 16) + 6:
                with self.lock:
                    sw._learn(cache, rest[:-6], rest[-6:], sw.clock())
        else:
            for fd in fds:
                os.close(fd)


def start_workers(n: int, queues: dict[str, list], make: Callable[[int, socket.socket, dict[str, Any]], int],
                  keep: list[int]) -> tuple[list[WorkerLink], dict[str, Any], Spawner]:
    """Fork workers 1 .. n-1, each given queue k of every netif in `queues` and run by `make`
    (its exit status); returns usnetd's links and its own drivers (queue 0). `keep`: descriptors
    a child closes at once (usnetd's own, such as its control socket). First it forks the
    spawner (`Spawner`, returned third), which keeps every queue and forks a dead worker's
    replacement (a TAP's or a packet netif's: `PacketDriver.resume`)."""
    links: list[WorkerLink] = []
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def spawn() -> int:
        ours.close()
        for fd in keep:
            os.close(fd)
        return _spawner_main(theirs, queues, make)

    pid = _fork("the worker spawner", spawn)
    theirs.close()
    spawner = Spawner(pid, ours)
    for k in range(1, n):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

        def worker(k: int = k, ours: socket.socket = ours, theirs: socket.socket = theirs) -> int:
            ours.close()
            spawner.sock.close()
            for link in links:
                link.cmd.close()
            for fd in keep:
                os.close(fd)
            mine = {}
            for name, qs in queues.items():
                for i, q in enumerate(qs):
                    if i == k:
                        mine[name] = q
                    else:
                        q.close()
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C: usnetd stops us
            return make(k, theirs, mine)

        pid = _fork(f"worker {k}", worker)
        theirs.close()
        links.append(WorkerLink(k, pid, ours))
    own: dict[str, Any] = {}
    for name, qs in queues.items():
        own[name] = qs[0]
        for q in qs[1:]:
            q.close()  # the spawner (if any) keeps its own copies: the queues stay attached
    return links, own, spawner
