"""The domain: its netifs and switches, and the loop that serves them all.

The same Domain runs embedded (`usnet.Domain()`, no daemon, no root) or inside
`usnetd`. Control requests arrive either as method calls (an in-process
client) or as typed messages on an AF_UNIX SOCK_SEQPACKET socket (a client in
another process); both end in `handle()` (usnet.domain.control). A client's
identity is the uid the kernel reports for its socket (SO_PEERCRED), never
what it says; its session and channels are kept by usnet.domain.sessions.

The service loop waits on every session socket and every channel's kick
doorbell. A session whose socket closes (its process exited or was killed) has
its channels defuncted and its packets reclaimed at once. The same loop
publishes each netif's interface advisory (usnet.domain.netif.advisory): the next
publication is one more deadline folded into its wait, not a thread.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

from usnet.abi import protocol as P
from usnet.abi import ring as ringmod
from usnet.abi.doorbell import drain
from usnet.abi.events import DefunctReason
from usnet.abi.paths import LOOPBACK_NETIF
from usnet.abi.transport import peer_credentials, recv_msg, send_msg
from usnet.domain.control import Control
from usnet.domain.fairshare import ControlShare
from usnet.domain.housekeeping import Housekeeping
from usnet.domain.limits import Access, Charge, Ledger, Limits, Share
from usnet.domain.loglimit import LineBudget
from usnet.domain.lowlat.agent import DEFAULT_TTL, Agent, check_megabytes, check_seconds, check_seconds_or_off
from usnet.domain.lowlat.leases import LeaseDesk
from usnet.domain.lowlat.policy import Policy
from usnet.domain.netif.advisory import NetifAdvisory
from usnet.domain.netif.linkshare import LinkPeer
from usnet.domain.netif.netif import Netif
from usnet.domain.reaper import Reaper
from usnet.domain.sessions import ChannelRef, Session
from usnet.domain.switch.flowswitch import FlowSwitch
from usnet.domain.switch.ports import PortSpace
from usnet.domain.switch.table import Flow
from usnet.domain.switch.tx import TX_BATCH
from usnet.domain.userpipe import UserPipe
from usnet.domain.watch import READ, WRITE, Watch, WatchKey
from usnet.drivers.loopback import LoopbackDriver
from usnet.runtime import gil

__all__ = ["LL_BITE", "LOOPBACK", "MAX_PENDING_REPLIES", "REAPER_BACKLOG", "REFUSE_GRACE", "REFUSING_PER_UID",
           "Domain"]

log = logging.getLogger("usnet.domain")
# what reading a device says once it is gone: a TAP deleted under its descriptor (EBADFD), a device
# removed (ENODEV, ENXIO)
_DEVICE_GONE = frozenset((errno.EBADFD, errno.ENODEV, errno.ENXIO))
LOOPBACK = LOOPBACK_NETIF  # the name of the domain's loopback netif (Domain.add_loopback)
_RX_ROUND = 256  # frames a netif's receive takes at a time (FlowSwitch.service_rx)
LL_BITE = 64  # general packets taken from a flow at a time while LL flows are served (Domain._service_tx)
MAX_PENDING_REPLIES = 16  # replies a session may leave unread before it is ended (SLOW_CONSUMER)
# A socket session past sessions_per_uid is told at once and let go: it may read its refusal (and
# send the request it answers) for REFUSE_GRACE seconds; a uid has at most REFUSING_PER_UID such
# sessions at a time (the oldest goes first), so a uid that connects and never speaks holds its
# limit and no more (issue 16, hostile-client audit).
REFUSE_GRACE = 1.0
REFUSING_PER_UID = 8
# SCM_MAX_FD: room for every descriptor one message can carry (none is closed by the kernel in our thread)
MAX_RECEIVED_FDS = 253
REAPER_BACKLOG = 64  # descriptors waiting to be closed beyond which a session sending more is ended
ACCEPT_BACKOFF = (0.05, 1.0)  # first and longest pause of accept() after EMFILE/ENFILE


def _sooner(a: float | None, b: float | None) -> float | None:
    """The shorter of two waits, where None is no deadline (as `select` takes it)."""
    return b if a is None else a if b is None else min(a, b)


def _ll_first(event: tuple[WatchKey, int]) -> bool:
    """Sort key of the loop's events: a low-latency flow's doorbell before everything else."""
    kind, obj = event[0].data
    return not (kind == "flowtx" and obj[1].id in obj[0].netif.ll_keys)


class Domain(Control, Housekeeping):
    """The trusted side: owns arenas, pools and nexus instances.

    `policy` says who may have low-latency leases (usnet.domain.lowlat.policy; by
    default nobody), `lease_ttl` how long a grant or renewal lasts, and
    `lease_clock` the time leases are granted and expire by (tests pass one
    they control).

    `advisory_interval` (seconds, default 5 ms) is how often an active
    netif's interface advisory is republished; `delay_target` (seconds,
    default 5 ms) is the queueing delay above which it suggests DOWN.

    `rx_mitigation` is the default of `add_netif`'s: whether a netif
    coalesces the receive doorbells of its general-class flows
    (usnet.domain.netif.mitigation).

    `limits` bound what each uid and session may hold, `access` who may bind
    ports below 1024, `shares` which uids may share pipe names beginning
    with "@" (usnet.domain.limits). uid 0 and the domain's own uid are exempt
    from limits and port rules.

    Memory comes back by itself (docs/design-notes.md, "Stalled channels and memory pressure"): a pool idle
    for `purge_after` seconds gives back its free segments; so does every pool
    when the host's MemAvailable falls below `purge_below_mb` (0: never). A
    channel that leaves packets unread on its RX ring for `stall_after`
    seconds is stalled (arrivals dropped, RX_STALLED posted, its pool
    purged); still stalled `stall_defunct` seconds later (0: never), it is
    defuncted with STALLED. `clock` is the time of all of it.
    """

    def __init__(self, *, policy: Policy | None = None, lease_ttl: float = DEFAULT_TTL,
                 lease_clock: Callable[[], float] = time.monotonic,
                 advisory_interval: float = 0.005, delay_target: float = 0.005,
                 rx_mitigation: bool = True, limits: Limits | None = None, access: Access | None = None,
                 shares: tuple[Share, ...] = (), purge_after: float = 30.0,
                 stall_after: float = 10.0, stall_defunct: float = 60.0, purge_below_mb: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.advisory_interval = check_seconds("advisory_interval", advisory_interval)
        self.purge_after = check_seconds("purge_after", purge_after)
        self.stall_after = check_seconds("stall_after", stall_after)
        self.stall_defunct = check_seconds_or_off("stall_defunct", stall_defunct)
        self.purge_below_mb = check_megabytes("purge_below_mb", purge_below_mb)
        self.clock = clock  # the time of the domain's housekeeping (purges, stalls); tests pass their own
        self._purge_at = clock() + self.purge_after
        # the stall watch and the memory-pressure check share one tick, a few per stall_after
        self.housekeeping_interval = min(1.0, self.stall_after / 4)
        self._housekeeping_at = clock()
        self.memory_pressure = False  # MemAvailable was below purge_below_mb at the last tick
        self.pressure_purges = 0  # segments given back because the host was short of memory
        self.delay_target = check_seconds("delay_target", delay_target)
        self.rx_mitigation = bool(rx_mitigation)
        self.advisories: dict[str, NetifAdvisory] = {}
        self.lock = threading.RLock()
        self.pipes: dict[tuple[int | None, str], UserPipe] = {}  # by limits.pipe_key: (uid or None if shared, name)
        self.ledger = Ledger(limits or Limits(), exempt={0, os.getuid()})
        self.access = access or Access(privileged_uids=frozenset({0, os.getuid()}))
        self.shares = tuple(shares)
        self._pool_charges: dict[UserPipe, Charge] = {}  # a pipe's arena, charged to its creator until destroyed
        self.channels: dict[int, ChannelRef] = {}
        self.sessions: dict[int, Session] = {}
        self.switches: dict[str, FlowSwitch] = {}
        self.ports = PortSpace()  # one namespace per protocol, shared by every netif
        self._ids = itertools.count(1)
        self._sel = Watch()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, READ, ("wake", None))
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stopped = False
        self.control_errors = 0
        self.requests: Counter[str] = Counter()  # control requests by type (usnet.domain.metrics)
        self.request_errors: Counter[str] = Counter()  # refusals by error code, undecodable ones too
        self.sessions_opened = 0
        self._session_lines = LineBudget()
        self.faults = 0  # exceptions stopped by a fault barrier (each also defuncts, ends or is logged)
        self.reaper = Reaper()  # closes what clients send us, off the loop
        self._accept_pause = 0.0  # the current EMFILE back-off of accept(), 0 when accepting
        self._accept_resume: float | None = None  # monotonic time the listener is watched again
        self.polls = 0  # flows the loop looked at for transmits (a work count: tests/domain/test_scale.py)
        self._listeners: list[socket.socket] = []
        self.leases = LeaseDesk(self, Agent(policy, lease_ttl), lease_clock)
        self._soon: deque[Callable[[], None]] = deque()  # call_soon: run by the loop, before it waits
        self._rang: dict[FlowSwitch, list[Flow]] = {}  # serve_once's parked flows that rang, one dict kept
        # the switches whose device `_answers` read in this turn: once a turn each, whatever rang
        self._answered: set[FlowSwitch] = set()
        self.control_share = ControlShare(exempt=self.ledger.exempt)  # each uid's share of the loop's time
        self._held: dict[int, Session] = {}  # sessions whose uid is over its share, by id (`_hold_back`)
        self._refusing: deque[tuple[float, Session]] = deque()  # sessions past their uid's limit, told, by deadline

    # -- netifs and flows ----------------------------------------------------------------

    def add_netif(self, name: str, driver, address: str, gateway: str | None = None,
                  mtu: int | None = None, *, address6: str | None = None,
                  gateway6: str | None = None, link_rate: float | None = None,
                  ll_share: float | None = None, work_conserving: bool | None = None,
                  clock: Callable[[], float] = time.monotonic,
                  rx_mitigation: bool | None = None, aqm: bool | None = None,
                  loopback: bool = False, link_peers: LinkPeer | None = None) -> FlowSwitch:
        """Attach a device: a netif with its flow switch, served by the domain loop.

        `address6` ("fd00::2/64") gives the netif IPv6 as well, with its
        link-local address derived from the MAC.

        `link_rate` (bits/s) paces the netif's transmit to that rate through
        the slot multiplexer (usnet.domain.netif.txsched), so the queue forms in
        usnet and not in the device; `ll_share` (0 to 0.9, default 0.2) of
        its slots are reserved for the low-latency class (`set_flow_class`),
        lent to general traffic when idle unless `work_conserving` is False.
        Without `link_rate` the netif is not paced and has no LL class.

        Each netif gets its interface advisory (OpenAdvisory). `clock` is the
        netif's and its switch's time (seconds, monotonic); tests pass their own.

        `rx_mitigation` (default: the domain's) coalesces the receive
        doorbells of the netif's general-class flows (usnet.domain.netif.mitigation).
        `aqm` (default: on where `link_rate` paces the netif) runs CoDel on
        the general class's queues (usnet.domain.netif.aqm).

        `link_peers`: when other processes send on queues of the same device
        (usnetd --workers), this queue's side of the page through which their
        schedulers share `link_rate` (usnet.domain.netif.linkshare).
        """
        with self.lock:
            if name in self.switches:
                raise OSError(errno.EEXIST, f"netif {name!r} exists")
            netif = Netif(name, driver, address, gateway, mtu, address6=address6, gateway6=gateway6,
                          link_rate=link_rate, ll_share=ll_share, work_conserving=work_conserving,
                          aqm=aqm, clock=clock, loopback=loopback, link_peers=link_peers)
            sw = FlowSwitch(netif, self.ports, clock=clock,
                            rx_mitigation=self.rx_mitigation if rx_mitigation is None else rx_mitigation)
            self.advisories[name] = NetifAdvisory(sw, self.advisory_interval, self.delay_target)
            self.switches[name] = sw
            sw.catch_up = self._catch_up
            self.leases.add_netif(sw)
            self._sel.register(driver.fileno(), READ, ("netif", sw))
        self._wake()
        return sw

    def add_loopback(self, name: str = LOOPBACK, mtu: int = 1500) -> FlowSwitch:
        """The domain's loopback netif: 127.0.0.1/8 and ::1 on a device with no wire
        (usnet.drivers.loopback). Everything sent on it is delivered to the flow that owns its
        destination (usnet.domain.switch.local), or answered at once (RST, port unreachable);
        `usnet.socket` routes 127.0.0.0/8 and ::1 to it."""
        return self.add_netif(name, LoopbackDriver(name, mtu), "127.0.0.1/8", address6="::1/128",
                              loopback=True)

    def set_flow_class(self, netif_name: str, flow_id: int, cls: str) -> None:
        """Serve flow `flow_id` (its id on the switch, its netif queue key) in class "ll" or "general".

        The hook the low-latency agent calls when it grants or revokes a
        lease. Frames the flow has queued move with it, in order; none is
        lost. In the LL class its transmit takes the LL path and its receive
        is not mitigated. "ll" needs a netif with a `link_rate` and a non-zero `ll_share`.
        """
        if cls not in ("ll", "general"):
            raise ValueError(f"traffic class must be 'll' or 'general', not {cls!r}")
        with self.lock:
            sw = self.switches.get(netif_name)
            if sw is None:
                raise OSError(errno.ENODEV, f"no netif {netif_name!r}")
            if flow_id not in sw.flows:
                raise OSError(errno.ENOENT, f"no flow {flow_id} on netif {netif_name!r}")
            sw.netif.set_class(flow_id, cls == "ll")
            sw.flows[flow_id].port.set_low_latency(cls == "ll")  # the LL class skips receive mitigation
            sw.set_lane(sw.flows[flow_id], cls == "ll")  # an AF_XDP LL queue: frames land in its pool
        self._wake()

    def set_policy(self, policy: Policy, lease_ttl: float | None = None) -> list:
        """A new low-latency policy (usnetd's SIGHUP): leases it no longer entitles are revoked.

        Their flows go back to the general class with what they have queued,
        and their channels get LEASE_REVOKED (POLICY); other leases are untouched.
        Returns the leases revoked.
        """
        with self.lock:
            return self.leases.set_policy(policy, lease_ttl)

    def set_privileges(self, limits: Limits, access: Access, shares: tuple[Share, ...]) -> None:
        """New limits, port rules and share groups (usnetd's SIGHUP), for what is opened from now on:
        nothing already held is taken back."""
        with self.lock:
            self.ledger.limits = limits
            self.access = access
            self.shares = tuple(shares)

    def remove_netif(self, name: str) -> None:
        with self.lock:
            self.leases.remove_netif(name)
            sw = self.switches.pop(name)
            for ref in list(self.channels.values()):
                if ref.switch is sw:
                    ref.pipe.defunct(DefunctReason.DOMAIN_SHUTDOWN)
            try:
                self._sel.unregister(sw.netif.driver.fileno())
            except (KeyError, ValueError):
                pass
            self.advisories.pop(name).close()

    def _serve_ll(self) -> None:
        """The low-latency class first: what its flows sent goes to the device now.

        Called before each larger piece of work (a round of every switch, a
        receive burst), so an LL packet waits for at most one such piece,
        never for a whole loop of bulk traffic.
        """
        served = 0
        for sw in self.switches.values():
            if sw.netif.ll_keys:
                served += sw.serve_ll()
        if served:
            self._receive_due()  # an LL frame to a netif of ours (memwire) is taken off the wire now

    def _serves_ll(self) -> bool:
        """Whether any netif has LL flows: `_serve_ll` serves them all, from any point of the loop."""
        for sw in self.switches.values():  # noqa: SIM110 (a loop, not any(genexpr): asked every turn, nothing made)
            if sw.netif.ll_keys:
                return True
        return False

    def _receive_due(self) -> None:
        """Receive now what a device already holds for us without its fd having been seen (a memwire's
        frames in flight): after an LL send, the frame it may have made due waits for no round."""
        for sw in self.switches.values():
            if not sw.netif.caps.never_due and sw.netif.driver.timeout() == 0:
                sw.service_rx()

    def _service_switches(self, ll: bool | None = None) -> float | None:
        """One round of data-path work on every flow switch; returns how long we may sleep.

        A switch with nothing to do (`FlowSwitch.quiet`: no polled flow, nothing queued, no timer)
        is skipped in one test: the round's dozen calls on it would find nothing and ask for no
        wake-up (issue 18, the loop's fixed cost per turn). The test is made again before the
        second pass, after the first pass's receiving (unless every switch was quiet). `ll`:
        whether a netif has LL flows (`_serves_ll`), if the caller knows.
        """
        timeout: float | None = None
        if ll is None:
            ll = self._serves_ll()
        if ll:  # nothing to serve unless a netif has LL flows
            self._serve_ll()
        switches = self.switches.values()
        busy = False
        for sw in switches:  # receive first: a frame in hand waits for no bulk batch
            if sw.quiet():
                continue
            busy = True
            try:
                sw.service_timers()
                nif = sw.netif
                if nif.device_gone is None and not nif.caps.never_due and nif.driver.timeout() is not None:
                    # the device has something due without ringing its fd: frames in flight
                    # on a memwire, a packet-ring kick to retry
                    sw.service_rx()
            except Exception as e:
                self._netif_fault(sw, e)
        if not busy:  # all quiet, and nothing ran since they were asked
            return None
        for sw in switches:
            if sw.quiet():
                continue
            if sw.polled:
                self._poll_flows(sw, ll)
            try:
                sw.flush()
                t = sw.ring_held()  # receive bells held by mitigation that are due
                if t is not None and (timeout is None or t < timeout):
                    timeout = t
                if sw.netif.device_gone is None:  # a gone device's "due" would never clear: no spin on it
                    t = sw.next_timeout()
                    if t is not None and (timeout is None or t < timeout):
                        timeout = t
            except Exception as e:
                self._netif_fault(sw, e)
        return timeout

    def _poll_flows(self, sw: FlowSwitch, ll: bool) -> None:
        """What the polled flows of `sw` sent, into it; those with nothing to send are parked."""
        idle = []
        busy: list[Flow] = []
        self.polls += len(sw.polled)
        for flow in list(sw.polled):
            try:
                if flow.port.suspended:
                    continue
                if not flow.port.tx_pending():
                    idle.append(flow)
                elif ll:
                    self._service_tx(sw, flow, ll)
                else:
                    busy.append(flow)
            except Exception as e:  # the barrier of one flow channel
                self._tx_fault(flow, e)
        if busy:  # one column-wise check across the batches of all of them (`service_tx_many`)
            sw.service_tx_many(busy, self._tx_fault)
        if idle:
            self._park(sw, idle)

    def _tx_fault(self, flow: Flow, e: Exception) -> None:
        """The barrier of one flow channel's transmit: the fault defuncts that channel only."""
        self._fault_channel(flow.port.pipe, 0, "transmit", e)

    def _service_tx(self, sw: FlowSwitch, flow: Flow, ll: bool) -> None:
        """What `flow` sent, into its switch; beside LL flows (`ll`) in bites, the LL class served after each.

        A bite (`LL_BITE` packets, about 0.1 ms of copying and checking) is
        then the longest an LL packet waits for general traffic; a flow still
        gets up to a whole batch (`TX_BATCH`) a round.
        """
        if not ll or sw.netif.serves_ll(flow.id):
            sw.service_tx(flow)
            return
        left = TX_BATCH
        while left > 0:
            n = sw.service_tx(flow, min(LL_BITE, left))
            self._serve_ll()
            if n < LL_BITE or flow.port.suspended:
                return
            left -= n

    def _publish_advisories(self) -> float | None:
        """Publish the interface advisories that are due; returns how long we may sleep."""
        timeout: float | None = None
        for adv in self.advisories.values():
            try:
                t = adv.turn()
                if t is not None and (timeout is None or t < timeout):
                    timeout = t
            except Exception as e:
                self._log_fault(f"advisory of {adv.netif.name}", e)
        return timeout

    def _idle_flows(self) -> bool:
        """Before sleeping: ask the polled flows' clients to ring us when they send; True if one
        already did (those stay polled and the loop must not sleep)."""
        busy = False
        for sw in self.switches.values():
            if sw.polled:  # (an empty one counts 0: no len() for it, asked every turn)
                self.polls += len(sw.polled)
                busy |= self._park(sw, [f for f in sw.polled if not f.port.suspended])
        return busy

    @staticmethod
    def _park(sw: FlowSwitch, flows: list[Flow]) -> bool:
        """Stop polling `flows`, which had nothing to send: each sets NEED_WAKEUP, so its client
        rings the flow's bell when it sends (the "flowtx" event polls it again). One that sent
        meanwhile stays polled; True if any did. As a NIC's interrupt and poll modes (NAPI)."""
        for f in flows:
            f.port.set_need_wakeup()
        ringmod.fence()
        busy = False
        for f in flows:
            if f.port.tx_pending():
                f.port.clear_need_wakeup()
                busy = True
            else:
                sw.polled.pop(f, None)
        return busy

    # -- socket sessions and the service loop -------------------------------------------

    def add_socket_session(self, sock: socket.socket) -> Session:
        """Serve a connected SEQPACKET socket; identity from SO_PEERCRED.

        The socket is non-blocking: the loop never waits on a client, and a
        reply the client has no room for waits in its session (`_reply`).
        """
        pid, uid, _ = peer_credentials(sock)
        sock.setblocking(False)
        s = self.new_session(uid, pid, sock)
        with self.lock:
            self._sel.register(sock, READ, ("session", s))
            if s.over_limit is not None:
                self._turn_away(s)
        self._wake()
        return s

    def _turn_away(self, s: Session) -> None:
        """A socket session past its uid's session limit: its refusal is sent now, as the answer to
        whatever it asks first, and it is ended at its first request or after REFUSE_GRACE seconds,
        whichever comes first. It must not wait for the client to speak: a session that never does
        would hold a descriptor and a Session for ever, past the limit meant to bound them."""
        assert s.over_limit is not None
        self._refuse(s, P.error_reply(s.over_limit))
        if s.sock is None:  # the reply found it gone
            return
        self._refusing.append((time.monotonic() + REFUSE_GRACE, s))
        mine = [o for _, o in self._refusing if o.uid == s.uid and o.sock is not None]
        for old in mine[:max(0, len(mine) - REFUSING_PER_UID)]:
            self._let_go(old)
        self._wake()

    def _let_go(self, s: Session) -> None:
        """End a turned-away session, read what it sent first (bounded): a socket closed with
        unread messages makes the peer's next recv fail with ECONNRESET before it reads its refusal."""
        for _ in range(8):
            if s.sock is None:
                break
            try:
                data, fds = recv_msg(s.sock, MAX_RECEIVED_FDS, close=self.reaper.close_later)
            except (BlockingIOError, InterruptedError):
                break
            except (OSError, P.ProtocolError):
                continue
            if fds:
                self.reaper.close_later(fds)
            if not data:
                break
        self.end_session(s, None)

    def _end_refused(self) -> float | None:
        """End the turned-away sessions whose grace is over; seconds until the next one's is."""
        now = time.monotonic()
        while self._refusing:
            due, s = self._refusing[0]
            if s.sock is not None and due > now:
                return due - now
            self._refusing.popleft()
            self._let_go(s)
        return None

    def socketpair_session(self) -> socket.socket:
        """A control socket for a child process of this one (embedded mode across processes)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.add_socket_session(ours)
        self.start()
        return theirs

    def listen(self, sock: socket.socket) -> None:
        """Accept clients on a listening SEQPACKET socket (usnetd)."""
        sock.setblocking(False)
        with self.lock:
            self._listeners.append(sock)
            self._sel.register(sock, READ, ("listen", sock))
        self._wake()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` in the service loop, under the domain lock, before it next waits.

        Safe from a signal handler (usnetd's SIGHUP) or another thread: the
        handler only queues and wakes the loop, and the work runs where the
        domain's state is not half-changed.
        """
        self._soon.append(fn)
        self._wake()

    def _run_soon(self) -> None:
        while self._soon:
            fn = self._soon.popleft()
            try:
                with self.lock:
                    fn()
            except Exception:
                log.exception("deferred call %r failed", fn)

    # -- the loop's fault barrier -------------------------------------------------------

    def _fault(self, kind: str, obj: object, exc: Exception) -> None:
        """The loop's barrier: an exception from serving one object ends at that object's owner."""
        if kind == "kick" and isinstance(obj, int):
            ref = self.channels.get(obj)
            if ref is not None:
                self._fault_channel(ref.pipe, ref.role, "kick", exc)
                return
        elif kind == "flowtx" and isinstance(obj, tuple):
            _, flow = obj
            self._fault_channel(flow.port.pipe, 0, "transmit", exc)
            return
        elif kind == "session" and isinstance(obj, Session):
            self._log_fault(f"session {obj.id}", exc)
            self.end_session(obj, DefunctReason.PROTOCOL)
            return
        elif kind == "netif" and isinstance(obj, FlowSwitch):
            self._netif_fault(obj, exc)
            return
        self._log_fault(kind, exc)  # a netif, a listener, the wake pipe: logged, the loop goes on

    def _netif_fault(self, sw: FlowSwitch, exc: Exception) -> None:
        """The barrier of one netif, wherever its device was read or written: the poll path (its
        descriptor rang), the round of `_service_switches` (a device with frames due that rang
        nothing: memwire, a packet ring's kick; every device's flush) and the flush of woken
        flows. A device that is gone is recognised here, once, whichever path met it first;
        after that its errors are what `_device_gone` said, not faults to log each round."""
        if isinstance(exc, OSError) and exc.errno in _DEVICE_GONE:
            if sw.netif.device_gone is None:
                self._device_gone(sw, exc)
            return
        self._log_fault(f"netif {sw.netif.name}", exc)

    def _device_gone(self, sw: FlowSwitch, exc: OSError) -> None:
        """A netif's device went away under us (its TAP deleted, with its namespace or by `ip link
        del`): its descriptor polls as an error forever, so it leaves the poll set (it spun the
        loop at a quarter of a core), the netif says so in its status, and the log says it once.
        Its flows stay until their owners close them; what they send is dropped at the device."""
        netif = sw.netif
        try:
            self._sel.unregister(netif.driver.fileno())
        except (KeyError, ValueError, OSError):
            pass
        netif.device_gone = f"{exc.strerror or exc}"
        log.warning("netif %s: its device is gone (%s); no longer read. Remove the netif (usnetd's config "
                    "and SIGHUP, or `usnet down`) or restore the device and restart usnetd", netif.name,
                    netif.device_gone)

    # -- socket sessions ------------------------------------------------------------------

    def _refuse(self, s: Session, reply: P.Error) -> None:
        s.refused += 1
        self.control_errors += 1
        self.request_errors[reply.code] += 1
        self._reply(s, reply, [])

    def _serve_session(self, s: Session) -> None:
        """One request of a socket session: read, decode, serve, reply; nothing here can wait."""
        if s.sock is None:
            return
        if s.over_limit is not None:  # it has its refusal (`_turn_away`): whatever it says ends it
            self._let_go(s)
            return
        if s.waiting:  # an earlier request's answer comes first: only the client's end is heard now
            try:
                alive = s.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                alive = b""
            if not alive:
                self.end_session(s, DefunctReason.OWNER_GONE)
                return
            s.unread = True  # it waits its turn, unwatched (`_watch_session`)
            self._watch_session(s)
            return
        try:
            data, fds = recv_msg(s.sock, MAX_RECEIVED_FDS, close=self.reaper.close_later)
        except (BlockingIOError, InterruptedError):
            return
        except P.ProtocolError as e:
            self._refuse(s, P.error_reply(e))
            return
        except OSError:
            self.end_session(s, DefunctReason.OWNER_GONE)
            return
        if not data:
            self.end_session(s, DefunctReason.OWNER_GONE)
            return
        if fds:  # clients have no business sending us descriptors: closed off the loop, refused
            self.reaper.close_later(fds)
            if self.reaper.backlog > REAPER_BACKLOG:
                self.end_session(s, DefunctReason.PROTOCOL)
            else:
                self._refuse(s, P.Error("EPROTO", f"{len(fds)} descriptor(s) sent to the domain: "
                                                  "clients may not send descriptors"))
            return
        try:
            req = P.decode_request(data)
        except P.ProtocolError as e:
            self._refuse(s, P.error_reply(e))
            return
        self._serve_request(s, req)

    def _serve_request(self, s: Session, req: P.Request) -> None:
        """Serve a decoded request and answer it; a notice gets no answer (the client does not wait)."""
        reply, out_fds = self.handle(s, req)
        if P.is_notice(req):
            for fd in out_fds:
                os.close(fd)
            return
        self._reply(s, reply, out_fds)

    def _catch_up(self, flow: Flow) -> None:
        """A connector sent a SYN from a port still bound to another 4-tuple: the client sends its
        P.ReleasePorts before it reuses a port, but on its control socket, which this loop may not
        have read yet. Serve the release notices of that channel waiting at the head of the
        socket (peeked: anything else stays for `_serve_session`), so the order the client made
        them in holds. Called from the transmit path (`FlowTable.catch_up`)."""
        ref = self.channels.get(flow.channel)
        s = ref.session if ref is not None else None
        if s is None or s.sock is None or s.waiting:  # (waiting: an earlier request is answered first)
            return
        for _ in range(64):
            try:
                data = s.sock.recv(P.MAX_MESSAGE, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except OSError:
                return
            try:
                req = P.decode_request(data) if data else None
            except P.ProtocolError:
                return
            if not isinstance(req, P.ReleasePorts) or req.channel != flow.channel:
                return
            try:
                s.sock.recv(P.MAX_MESSAGE, socket.MSG_DONTWAIT)
            except OSError:
                return
            self._serve_request(s, req)

    def _reply(self, s: Session, reply: P.Reply, fds: list[int]) -> None:
        """Send a reply without waiting: what the socket has no room for waits in the session.

        A reply too large to encode becomes an Error the client can read.
        """
        if s.sock is None:
            return
        try:
            data = P.encode(reply)
        except P.ProtocolError as e:
            data, fds = P.encode(P.Error("EMSGSIZE", str(e))), []
        if not s.pending:
            try:
                send_msg(s.sock, data, fds)
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.end_session(s, DefunctReason.OWNER_GONE)
                return
        self._queue_reply(s, data, fds)

    def _queue_reply(self, s: Session, data: bytes, fds: list[int]) -> None:
        """Keep a reply the client has not made room for; a session that lets them pile up is ended."""
        if len(s.pending) >= MAX_PENDING_REPLIES:
            self.end_session(s, DefunctReason.SLOW_CONSUMER)
            return
        copies: list[int] = []
        try:
            for fd in fds:  # its own copies: the channel may close before the reply leaves
                copies.append(os.dup(fd))
        except OSError:
            for fd in copies:
                os.close(fd)
            self.end_session(s, DefunctReason.SLOW_CONSUMER)
            return
        s.pending.append((data, copies))
        if len(s.pending) == 1:
            self._watch_session(s)

    def _send_pending(self, s: Session) -> None:
        """The socket has room again: send what waited, in order."""
        while s.pending and s.sock is not None:
            data, fds = s.pending[0]
            try:
                send_msg(s.sock, data, fds)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.end_session(s, DefunctReason.OWNER_GONE)
                return
            s.pending.popleft()
            for fd in fds:
                os.close(fd)
        self._watch_session(s)

    def _watch_session(self, s: Session) -> None:
        """Watch a session's socket for what the loop wants of it: its requests unless it is held
        back (`_hold_back`) or waits for a worker's answer (usnet.domain.workers), room for its
        replies while some wait. Epoll is told only when that changes (`Watch.want`)."""
        if s.sock is None:
            return
        self._sel.want(s.sock, (0 if s.held_until is not None or s.unread else READ) | (WRITE if s.pending else 0),
                       ("session", s))

    def _serve_session_fairly(self, s: Session) -> None:
        """Serve one request of `s` and charge the time it took to its uid (usnet.domain.fairshare);
        a uid that has spent its share waits, its sessions unread, while the others are served."""
        now = time.monotonic()
        wait = self.control_share.wait(s.uid, now)
        if wait > 0:
            self._hold_back(s, now + wait)
            return
        t0 = time.perf_counter()
        try:
            self._serve_session(s)
        finally:
            self.control_share.charge(s.uid, time.perf_counter() - t0, now)

    def _hold_back(self, s: Session, until: float) -> None:
        if s.held_until is None:
            self.control_share.waits += 1
        s.held_until = until
        self._held[s.id] = s
        self._watch_session(s)

    def _resume_held(self) -> float | None:
        """Read again the held-back sessions whose uid's share came back; seconds until the next."""
        now = time.monotonic()
        nxt: float | None = None
        for sid, s in list(self._held.items()):
            if s.sock is None or self.sessions.get(sid) is not s:
                del self._held[sid]
                continue
            assert s.held_until is not None
            if s.held_until <= now:
                s.held_until = None
                del self._held[sid]
                self._watch_session(s)
            else:
                nxt = _sooner(nxt, s.held_until - now)
        return nxt

    def _accept(self, lsock: socket.socket) -> None:
        """Take one client; out of descriptors, stop watching the listener for a while, doubling."""
        try:
            conn, _ = lsock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                first, longest = ACCEPT_BACKOFF
                self._accept_pause = min(max(self._accept_pause * 2, first), longest)
                self._accept_resume = time.monotonic() + self._accept_pause
                for ls in self._listeners:
                    self._sel.unregister(ls)
                log.warning("accept: %s; not accepting for %.2f s (raise the descriptor limit, "
                            "`ulimit -n`, or lower the session limits)", e.strerror, self._accept_pause)
            return
        self._accept_pause = 0.0
        try:
            self.add_socket_session(conn)
        except OSError:  # gone before we could ask who it is
            conn.close()

    def _resume_accept(self) -> float | None:
        """Watch the listeners again once the back-off is over; returns how long until then."""
        if self._accept_resume is None:
            return None
        left = self._accept_resume - time.monotonic()
        if left > 0:
            return left
        self._accept_resume = None
        for ls in self._listeners:
            self._sel.register(ls, READ, ("listen", ls))
        return None

    # -- the service loop -------------------------------------------------------------------

    def serve_once(self, timeout: float | None = None) -> None:
        """One turn of the loop: timers and data path, then wait for and serve what became ready.

        Every object served is behind a barrier (`_fault`): whatever one
        channel's memory or one session's messages contain ends at its owner.
        """
        if self._soon:
            self._run_soon()
        with self.lock:  # the fixed part of every turn: kept to a few tests where nothing is due (issue 18)
            # The waits are compared inline, not through `_sooner`: a call each is a share of a
            # turn that moves one packet (issue 18, usnetd's CPU per turn).
            try:
                lease = self.leases.tick()  # sleep no later than the next lease expiry
                t = self._housekeeping()  # always a number (the purge of idle pools too)
                if lease is not None and lease < t:
                    t = lease
                if timeout is None or t < timeout:
                    timeout = t
            except Exception as e:
                self._log_fault("timers", e)
            ll = False
            if self.switches:
                ll = self._serves_ll()
                wait = self._service_switches(ll)
                if wait is not None and (timeout is None or wait < timeout):
                    timeout = wait
                wait = self._publish_advisories()
                if wait is not None and (timeout is None or wait < timeout):
                    timeout = wait
                if timeout != 0 and self._idle_flows():
                    timeout = 0
        if self._accept_resume is not None:
            timeout = _sooner(timeout, self._resume_accept())
        if self._refusing or self._held:
            with self.lock:
                timeout = _sooner(timeout, self._end_refused())
                timeout = _sooner(timeout, self._resume_held())
        woken = self._rang  # parked flows that rang, served together below
        events = self._sel.select(timeout)
        if self._answered:
            self._answered.clear()
        if ll:  # an LL flow's bell first; with no LL flow every key would be equal (no sort)
            events.sort(key=_ll_first)
        for key, mask in events:
            kind, obj = key.data
            try:
                if kind == "flowtx" and not ll:
                    self._woken(obj, key.fd, woken)
                else:
                    self._serve_event(kind, obj, key.fd, mask)
            except Exception as e:
                self._fault(kind, obj, e)
        if woken:
            try:
                self._serve_woken(woken)
            finally:
                woken.clear()

    def _woken(self, obj: tuple[FlowSwitch, Flow], fd: int, woken: dict[FlowSwitch, list[Flow]]) -> None:
        """A parked flow rang its bell ("flowtx"): polled again, and noted to be served with the others
        that rang in this turn (`_serve_woken`); no LL class is active (see `_serve_event`)."""
        sw, flow = obj
        with self.lock:
            if self._repoll(sw, flow, fd):
                woken.setdefault(sw, []).append(flow)

    def _repoll(self, sw: FlowSwitch, flow: Flow, fd: int) -> bool:
        """A parked flow's bell rang: drained, and the flow polled again until it falls idle; False
        if it is gone or defunct (nothing to serve). With the lock held.

        Gone is asked first: the selector reported the bell before this turn served the others,
        and a channel closed among them has had its rings unmapped and its bell closed (`fd`
        may already be another channel's bell, whose ring this must not swallow)."""
        if flow.id not in sw.flows:
            return False
        drain(fd)
        if flow.port.pipe.defunct_reason is not None:
            return False
        flow.port.clear_need_wakeup()
        sw.polled[flow] = None
        return True

    def _serve_woken(self, woken: dict[FlowSwitch, list[Flow]]) -> None:
        """What the flows that rang in this turn sent, one column-wise check a switch
        (`FlowSwitch.service_tx_many`); their first packets leave in this turn, as a polled flow's do."""
        with self.lock:
            for sw, flows in woken.items():
                live = [f for f in flows if f.id in sw.flows and f.port.pipe.defunct_reason is None]
                try:
                    if live:
                        sw.service_tx_many(live, self._tx_fault)
                    self._answers(sw, sw.flush())
                except Exception as e:
                    self._netif_fault(sw, e)

    def _answers(self, sw: FlowSwitch, sent: int) -> int:
        """What the host's stack answered at once to the `sent` frames a woken flow's turn just
        wrote to a device whose peer it is (`Capabilities.answers_in_send`: a TAP), received in
        that same turn.

        The kernel takes a frame written to a TAP inside the write and queues its immediate
        answer (the SYN-ACK of a connect's SYN, the ACK of its FIN) on the device before the
        write returns; the next turn's wait would report it at once, so a turn's fixed part
        (its tests, its wait, its pass over the switches) would be paid for nothing but the
        read (issue 18: one of a connect's four turns was only that). As the netif event's
        round: one batch, ended where the device is empty; what comes later is the next
        select's, the fd being level-triggered. A write nothing answers costs one failed read.
        A fault is the netif's, as in its own event, never the woken flow's. Returns how many
        frames came.

        Once a turn a switch (`_answered`): with an LL flow on the netif each bell is served
        alone, and under a flood from the link every read is a full batch, so a read per flow
        that rang would let one client's many flows and the link's flood make a turn as long as
        they like, every other netif and session waiting (issue 36's audit). What answers the
        later flows of the turn is the next select's, the device's fd being level-triggered."""
        if not sent or not sw.netif.caps.answers_in_send or sw.netif.device_gone is not None:
            return 0
        if sw in self._answered:
            return 0
        self._answered.add(sw)
        try:
            return sw.service_rx(_RX_ROUND)
        except Exception as e:
            self._netif_fault(sw, e)
            return 0

    def _serve_event(self, kind: str, obj, fd: int, mask: int) -> None:
        if kind == "wake":
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        elif kind == "kick":
            ref = self.channels.get(obj)
            if ref is not None:  # a channel closed earlier in this turn: its kick fd is closed (as `_repoll`)
                drain(fd)
                self.kick(ref)
        elif kind == "netif":
            with self.lock:
                for _ in range(8):  # up to 2048 frames a round, then kicks and TX get a turn
                    n = obj.service_rx(_RX_ROUND)
                    if not n:
                        break
                    self._serve_ll()
                    if n < _RX_ROUND:
                        # a short batch: the driver found the device empty (the TAP reads until
                        # EAGAIN). Asking again would cost a read that fails, and a turn of the
                        # switch, per arrival (issue 18: a connect is seven small exchanges); the
                        # fd is level-triggered, so what came meanwhile is the next select's.
                        break
        elif kind == "flowtx":
            sw, flow = obj
            with self.lock:
                if self._repoll(sw, flow, fd):
                    self._service_tx(sw, flow, self._serves_ll())
                    if flow.id in sw.netif.ll_keys:
                        if sw.netif.active_ll:
                            sw.netif.flush()  # what the LL path queued: to the device now, not next round
                        self._receive_due()
                    elif self._answers(sw, sw.flush()):  # its first packets leave in this turn, as a polled flow's do
                        self._serve_ll()  # as after a netif event's receive round
        elif kind == "session":
            if mask & WRITE:
                self._send_pending(obj)
            if mask & READ:
                self._serve_session_fairly(obj)
        elif kind == "listen":
            self._accept(obj)

    def run(self) -> None:
        """Serve until stop() (the body of usnetd, or of the embedded service thread)."""
        while not self._stopping:
            self.serve_once(0.5)

    def start(self) -> None:
        """Run the service loop in a daemon thread (embedded mode).

        It also shortens the interpreter's GIL switch interval (see
        `usnet.runtime.gil`): the loop makes a system call per frame on some devices,
        and beside a busy thread each one would wait up to 5 ms for the GIL.
        """
        gil.short_switch_interval()
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="usnet-domain", daemon=True)
            self._thread.start()

    def request_stop(self) -> None:
        """Ask the service loop to end (safe from a signal handler)."""
        self._stopping = True
        self._wake()

    def stop(self) -> None:
        """Stop serving; defunct every channel so no client hangs, and free all memory."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        with self.lock:
            for s in list(self.sessions.values()):
                self.end_session(s, DefunctReason.DOMAIN_SHUTDOWN)
            for p in list(self.pipes.values()):
                with p.lock:
                    p.defunct(DefunctReason.DOMAIN_SHUTDOWN)
                    p.destroy()
            for sw in self.switches.values():
                try:
                    sw.flush()  # what the ended sessions left queued (their peers' RSTs) goes out first
                except Exception as e:
                    self._log_fault(f"netif {sw.netif.name}: flush at stop", e)
                sw.netif.driver.close()
            self.switches.clear()
            for adv in self.advisories.values():
                adv.close()
            self.advisories.clear()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> Domain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
