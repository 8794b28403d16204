"""`usnet bench lowlat`: a small periodic flow beside bulk traffic on a 50 Mbit/s link.

Topology: one embedded domain, two netifs joined by a memwire; netif "a" is
paced to `LINK_RATE` with `LL_SHARE` of its time slots reserved for the
low-latency class (usnet.domain.netif.txsched). Every application is its own
process on a SEQPACKET session, as in `usnet bench udp`:

* llsend: one UDP flow on "a" sending `LL_SIZE`-byte datagrams every
  `LL_PERIOD`, each carrying its sequence number and CLOCK_MONOTONIC send time;
  asked to, it first requests a low-latency lease for its flow (`LEASE`);
* llrecv: its receiver on "b", which takes one-way latency per datagram
  (one machine, one monotonic clock);
* bulk: `BULK_FLOWS` UDP flows on "a" sending 1,400-byte datagrams as fast as
  the link takes them (their queues at the netif fill, the switch suspends
  them, and the netif's AQM drops from the head of their standing queues),
  and a sink on "b";
* adapt: a sender on "a" that follows the netif's interface advisory
  (usnet.bench.adaptive), and the same sink.

`LowLatRun` is that domain, run one phase (one set of processes) at a time.
`usnet bench lowlat` (`run`) and the low-latency part of `usnet demo`
(`demo_run`) are two sequences of its phases.

The bench has three phases: the LL flow alone (idle), beside the bulk flows
with the LL class granted (`Domain.set_flow_class`, the agent's hook), and
beside them as a plain general-class flow. Bulk throughput is the bytes
netif "b" received during the granted phase, less the LL flow's, over the
capacity the LL class does not reserve.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from usnet.bench import adaptive
from usnet.bench.apps import App, kill_all, read_all, spawn_app, wait_exit
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.domain.lowlat.policy import Policy, PolicyEntry
from usnet.drivers.memwire import MemWire
from usnet.runtime import sched

__all__ = [
    "ADAPT_CEILING", "ADAPT_FLOOR", "ADAPT_START", "BULK_FLOWS", "LEASE", "LINK_RATE", "LL_PERIOD", "LL_SHARE",
    "LL_SIZE", "DemoResult", "LeaseTerms", "LowLatRun", "Phase", "demo_run", "main", "run",
]

A_ADDR, B_ADDR = "10.98.0.1", "10.98.0.2"
LINK_RATE = 50e6
LL_SHARE = 0.2
LL_SIZE = 200
LL_PERIOD = 0.005
# One port space serves every netif of a domain: senders and receivers take distinct ports.
LL_PORT, LL_SINK, BULK_PORT, BULK_SINK, ADAPT_PORT = 7000, 7001, 7100, 7200, 7300
BULK_FLOWS = 8
BULK_SIZE = 1400
_STAMP = struct.Struct("!QQ")  # sequence number, send time (ns)
LL_FRAME = LL_SIZE + 8 + 20 + 14  # one LL datagram on the link
#: Seconds the LL receiver waits, after the sender ended, for what is still on its way; later is lost.
DRAIN = 5.0
DONE_POLL = 0.05  # seconds: how often the LL receiver, waiting for datagrams, looks whether the sender ended
#: What the LL sender asks the agent for: voice, for its 387 kbit/s (200 B every 5 ms, framed). The
#: headroom is for catching up: a sender held up for a few periods sends the datagrams it owes back to
#: back, and the policer's burst (docs/abi.md §15: 5 ms at the rate, here 1,250 B) must let them through.
class LeaseTerms(TypedDict):
    """`Client.request_lease` keywords."""

    service_class: str
    rate: float
    max_packet: int
    latency_target: float


LEASE: LeaseTerms = {"service_class": "voice", "rate": 2e6, "max_packet": LL_SIZE + 28, "latency_target": 0.02}
#: The policy of a `LowLatRun` that grants by lease: this uid may lease voice up to 2 Mbit/s.
LEASE_POLICY = Policy([PolicyEntry(frozenset({"voice"}), 2e6, 1500, uid=os.getuid())])
# The adaptive sender starts well above the link rate, so the queue must build and the advisory say
# DOWN. Before its first raise after a cut it can only be at the start rate or the ceiling (the idle
# link's advisory says UP), both above the link, or at half of one of them or less: below the 90 % of
# the link under which the advisory says UP again (usnet.domain.netif.estimate.UP_HEADROOM). A rate between
# those (the link rate itself, say) could sit in the advisory's HOLD band and never be raised.
ADAPT_START, ADAPT_FLOOR, ADAPT_CEILING = 1.4 * LINK_RATE, 0.04 * LINK_RATE, 1.75 * LINK_RATE


def percentile(xs: list[float], p: float) -> float:
    """The p-th percentile (nearest rank, 0 to 100) of `xs`; NaN if it is empty."""
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")



# -- the applications (each a process of its own) -------------------------------------------


def _stop_requested(fd: int) -> bool:
    """The parent closes its end of the stop pipe when the phase is over (or it died)."""
    return bool(select.select([fd], [], [], 0)[0])


def _llsend(client: Client, count: int, lease: bool, ready_fd: int, go_fd: int) -> None:
    """Open the flow (leased if asked), say b"R" on `ready_fd`, and send once a byte comes on `go_fd`:
    the parent grants the flow in between, and the receiver's wait starts when this process is up.
    Then say b"S", and keep the flow open until `go_fd`'s EOF: its frames still queued at the netif
    are sent or dropped meanwhile, and a drop is counted on the flow only while it is open."""
    sched.set_slice()  # a latency-sensitive thread, in every phase: only the grant differs
    s = client.udp_socket("a", LL_PORT)
    if lease:
        client.request_lease(s, **LEASE)  # before the first datagram: every one goes in the LL class
    os.write(ready_fd, b"R")
    if os.read(go_fd, 1) != b"G":
        raise SystemExit("the LL sender was not told to go")
    pad = bytes(LL_SIZE - _STAMP.size)
    t = time.monotonic()
    for i in range(count):
        t += LL_PERIOD
        while (left := t - time.monotonic()) > 0:
            time.sleep(left)  # the sender's own period, not synchronisation
        s.sendto(_STAMP.pack(i, time.monotonic_ns()) + pad, (B_ADDR, LL_SINK))
    os.write(ready_fd, b"S")
    os.read(go_fd, 1)  # EOF once the parent has counted what reached the receiver and what was dropped
    s.close()  # a lease ends with its channel


def _llrecv(client: Client, count: int, out_fd: int, ready_fd: int, done_fd: int, drain: float) -> None:
    """Receive until all `count` datagrams came, or `drain` seconds after the sender ended.

    The end is the parent's word (it closes `done_fd` once the sender exited), not a clock started
    here: on a loaded machine the sender's process can take seconds to start, and a deadline from
    the receiver's start counted the datagrams it had not sent yet as lost.
    """
    sched.set_slice()
    s = client.udp_socket("b", LL_SINK)
    os.write(ready_fd, b"R")
    lat: dict[int, float] = {}
    deadline = None  # set when the sender has ended: what has not come by then is lost
    while len(lat) < count:
        if deadline is None and _stop_requested(done_fd):
            deadline = time.monotonic() + drain
        wait = DONE_POLL if deadline is None else min(DONE_POLL, deadline - time.monotonic())
        if wait <= 0:
            break
        try:
            got = s.recv_many(64, timeout=wait)
        except (BlockingIOError, TimeoutError):
            continue
        now = time.monotonic_ns()
        for data, _ in got:
            seq, sent = _STAMP.unpack_from(data)
            lat[seq] = (now - sent) / 1e6
    os.write(out_fd, json.dumps(sorted(lat.items())).encode())
    s.close()


def _bulk(client: Client, seconds: float, stop_fd: int) -> None:
    socks = [client.udp_socket("a", BULK_PORT + i, ring_size=1024, packets=2048) for i in range(BULK_FLOWS)]
    for s in socks:
        s.settimeout(0.05)
    batch = [bytes(BULK_SIZE)] * 64
    end = time.monotonic() + seconds
    while time.monotonic() < end and not _stop_requested(stop_fd):
        for i, s in enumerate(socks):
            try:
                s.send_many(batch, (B_ADDR, BULK_SINK + i))
            except (BlockingIOError, TimeoutError):
                pass  # suspended: its queue at the netif is full; the next flow's turn
    for s in socks:
        s.close()


def _sink(client: Client, seconds: float, stop_fd: int) -> None:
    socks = [client.udp_socket("b", BULK_SINK + i, ring_size=1024, packets=2048) for i in range(BULK_FLOWS)]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for s in socks:
            if s.channel.poll():  # a poller looks first: an empty receive would arm the bell, and
                s.recv_many(256, timeout=0)  # the domain would ring it for every delivery after
        # a slow reader is fine: the link, not the sink, is the bottleneck; this waits 1 ms or for the stop
        if select.select([stop_fd], [], [], 0.001)[0]:
            break
    for s in socks:
        s.close()


def _pipe(ours: list[int]) -> tuple[int, int]:
    """A pipe whose two ends are listed in `ours` (closed by `_close`)."""
    r, w = os.pipe()
    ours += (r, w)
    return r, w


def _close(ours: list[int], *fds: int) -> None:
    """Close `fds` (the ends handed to a child, or all at the end) and strike them from `ours`."""
    for fd in list(fds):
        ours.remove(fd)
        os.close(fd)


# -- the run -------------------------------------------------------------------------------------


@dataclass
class Phase:
    """What one phase measured."""

    sent: int  # LL datagrams sent
    seqs: list[int]  # the sequence numbers of those received, in order (the missing ones were lost)
    latencies_ms: list[float]  # their one-way latencies, in the same order
    bulk_bps: float  # frame bytes/s netif "b" received while the LL flow ran, less the LL flow's
    tx_dropped: int  # LL datagrams the switch dropped on the way out, each told to the sender (CoDel's)
    lowlat: dict[str, Any] | None = None  # the domain's `lowlat` status, last seen while the LL lease held

    @property
    def lost(self) -> int:
        return self.sent - len(self.latencies_ms)

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


class LowLatRun:
    """One domain with the paced link, and the processes of one phase at a time.

    `policy`: who may lease the LL class (a phase with `grant="lease"` needs
    one that entitles this uid: `LEASE_POLICY`).
    """

    def __init__(self, policy: Policy | None = None, drain: float = DRAIN) -> None:
        self.drain = drain  # seconds the LL receiver waits after the sender ended (`_llrecv`)
        self.dom = Domain(policy=policy)
        self.wire = MemWire(queue_limit=100_000)
        self.dom.add_netif("a", self.wire.a, f"{A_ADDR}/24", link_rate=LINK_RATE, ll_share=LL_SHARE)
        self.dom.add_netif("b", self.wire.b, f"{B_ADDR}/24")
        self.dom.start()
        self.procs: list[App] = []
        self.roles: list[str] = []  # of each of procs

    def __enter__(self) -> LowLatRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spawn(self, role: str, *args: str, keep: tuple[int, ...] = ()) -> App:
        p = spawn_app(self.dom, "usnet.bench.lowlat", role, *args, keep=keep)
        self.procs.append(p)
        self.roles.append(role)
        return p

    def flow_ids(self, netif: str, ports: range) -> list[int]:
        """The ids of the flows on `netif` whose local port is in `ports` (those that exist yet)."""
        for nif in self.dom.status()["netifs"]:
            if nif["netif"]["name"] == netif:
                return [f["id"] for f in nif["flows"] if f["local_port"] in ports]
        return []

    def ll_flow_id(self) -> int | None:
        return next(iter(self.flow_ids("a", range(LL_PORT, LL_PORT + 1))), None)

    def _wait_for_bulk(self, timeout: float = 30.0) -> None:
        """Until every bulk flow is open: the warm-up then starts when they do, not when their process does."""
        deadline = time.monotonic() + timeout
        while len(self.flow_ids("a", range(BULK_PORT, BULK_PORT + BULK_FLOWS))) < BULK_FLOWS:
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError("the bulk flows did not open")
            time.sleep(0.005)

    def rx_bytes_b(self) -> int:
        return self.dom.switches["b"].netif.rx_bytes

    def _background(self, seconds: float, bulk: bool) -> int:
        """Start the sink (and the bulk senders); returns the stop pipe's write end: close it to stop them."""
        stop_r, stop_w = os.pipe()
        try:
            self.spawn("sink", str(seconds), str(stop_r), keep=(stop_r,))
            if bulk:
                self.spawn("bulk", str(seconds), str(stop_r), keep=(stop_r,))
        finally:
            os.close(stop_r)
        return stop_w

    def _reap(self, stop_w: int | None, check: bool = True) -> None:
        """End the phase's processes. `check`: the phase went well, so they must have too, and their
        flows must be gone before the next phase; otherwise they are killed, and the phase's own
        error is the one raised (a receiver whose result nobody reads would only fail on its pipe)."""
        if stop_w is not None:
            os.close(stop_w)
        if check:
            for p in self.procs:
                p.wait(30)
        failed = [f"{role} ({p.failure()})" for role, p in zip(self.roles, self.procs) if p.returncode]
        kill_all(self.procs)
        self.procs.clear()
        self.roles.clear()
        if not check:
            return
        if failed:
            raise RuntimeError(f"benchmark applications failed: {', '.join(failed)}")
        self._until_flows_gone()

    def _until_flows_gone(self, timeout: float = 30.0) -> None:
        """Until the domain has closed the flows of the processes that ended: the next phase binds
        the same ports, and the domain tears a session down when it sees its hang-up, which a
        loaded machine can leave for later than the process's exit."""
        deadline = time.monotonic() + timeout
        while any(nif["flows"] for nif in self.dom.status()["netifs"]):
            if time.monotonic() > deadline:
                raise RuntimeError("the flows of the ended phase are still open")
            time.sleep(0.005)

    def phase(self, count: int, bulk: bool, grant: bool | str | None, warmup: float) -> Phase:
        """`count` LL datagrams (one every LL_PERIOD), beside the bulk flows if `bulk`.

        `grant`: None or False, the LL flow is a general-class flow; "class"
        (or True), the domain puts it in the LL class (`set_flow_class`);
        "lease", the sender asks the agent for a lease (`LEASE`) first.
        """
        grant = "class" if grant is True else (grant or None)
        if grant not in (None, "class", "lease"):
            raise ValueError(f"grant must be None, 'class' or 'lease', not {grant!r}")
        seconds = count * LL_PERIOD
        stop_w = None
        ours: list[int] = []  # this side's ends of the pipes below, closed at the end
        ok = False
        try:
            r, w = _pipe(ours)  # the receiver's result
            ready_r, ready_w = _pipe(ours)  # the receiver says b"R" once its flow is open
            done_r, done_w = _pipe(ours)  # closed once the sender has sent all: the receiver's drain starts
            sready_r, sready_w = _pipe(ours)  # the sender says b"R" once its flow is open, b"S" once it sent all
            go_r, go_w = _pipe(ours)  # the sender sends on a byte here, and closes its flow on EOF
            if bulk:
                stop_w = self._background(seconds + warmup + 60, bulk=True)
                self._wait_for_bulk()
                time.sleep(warmup)  # let the bulk flows fill their queues at the netif
            self.spawn("llrecv", str(count), str(w), str(ready_w), str(done_r), repr(self.drain),
                       keep=(w, ready_w, done_r))
            _close(ours, w, ready_w, done_r)
            if os.read(ready_r, 1) != b"R":
                raise RuntimeError("the LL receiver did not start")
            sender = self.spawn("llsend", str(count), "lease" if grant == "lease" else "", str(sready_w), str(go_r),
                                keep=(sready_w, go_r))
            _close(ours, sready_w, go_r)
            # however long its process takes to start: its flow is open (and leased) when it says so
            if os.read(sready_r, 1) != b"R":
                sender.wait(30)
                raise RuntimeError(f"the LL sender did not start ({sender.failure()})")
            flow = self._ll_flow()
            if grant == "class":  # granted before its first datagram
                self.dom.set_flow_class("a", flow.id, "ll")
            os.write(go_w, b"G")
            rx0, t0 = self.rx_bytes_b(), time.monotonic()
            lowlat = None
            deadline = time.monotonic() + seconds + 30
            while not select.select([sready_r], [], [], 0.05 if grant == "lease" else deadline - time.monotonic())[0]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the LL sender did not finish")
                if (ll := self.dom.status()["lowlat"])["leases"]:
                    lowlat = ll  # the last look while the lease held (it ends with the sender's channel)
            if os.read(sready_r, 1) != b"S":
                sender.wait(30)
                raise RuntimeError(f"the LL sender failed ({sender.failure()})")
            rx1, t1 = self.rx_bytes_b(), time.monotonic()
            _close(ours, done_w)
            pairs = json.loads(read_all(r))  # the receiver's end: all came, or the drain passed
            with self.dom.lock:  # the flow is still open: every drop of its frames is counted on it
                tx_dropped = int(flow.stats["tx_dropped"])
            _close(ours, go_w)
            if not wait_exit(sender, 30) or sender.returncode:
                raise RuntimeError(f"the LL sender failed ({sender.failure()})")
            ok = True
        finally:
            _close(ours, *ours)
            self._reap(stop_w, check=ok)
        ll_bytes = len(pairs) * LL_FRAME
        return Phase(count, [s for s, _ in pairs], [ms for _, ms in pairs],
                     max(0.0, (rx1 - rx0 - ll_bytes) / (t1 - t0)), tx_dropped, lowlat)

    def _ll_flow(self) -> Any:
        """The LL sender's flow on netif "a" (open: the sender said so), as the switch holds it."""
        with self.dom.lock:
            for flow in self.dom.switches["a"].flows.values():
                if flow.lport == LL_PORT:
                    return flow
        raise RuntimeError("the LL sender's flow is not in the domain's table")

    def adaptive(self, seconds: float, max_seconds: float = 10.0) -> adaptive.AdaptiveResult:
        """The adaptive sender alone on the link, from `ADAPT_START`, for `seconds`.

        It goes on past `seconds` (to `max_seconds` at most) until it has cut
        its rate and raised it again, so that both directions are shown.
        """
        r, w = os.pipe()
        stop_w = None
        try:
            stop_w = self._background(max_seconds + 30, bulk=False)
            self.spawn("adapt", "a", str(ADAPT_PORT), B_ADDR, str(BULK_SINK), repr(ADAPT_START), repr(seconds),
                       repr(max_seconds), repr(ADAPT_FLOOR), repr(ADAPT_CEILING), str(w), keep=(w,))
            os.close(w)
            w = -1
            data = read_all(r)  # EOF when the sender is done (or died)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)
            self._reap(stop_w)
        return adaptive.AdaptiveResult.from_json(data)

    def close(self) -> None:
        kill_all(self.procs)
        self.procs.clear()
        self.roles.clear()
        self.dom.stop()



def run(quick: bool, progress: Callable[[str], None] = lambda what: None) -> dict[str, Any]:
    """The JSON document of `usnet bench lowlat --json`."""
    count = 400 if quick else 2000  # 2 s or 10 s of LL traffic per phase
    warmup = 0.5 if quick else 1.0
    with LowLatRun() as run_:
        progress("idle: the LL flow alone")
        idle = run_.phase(count, bulk=False, grant=None, warmup=warmup)
        progress("granted: LL class beside the bulk flows")
        granted = run_.phase(count, bulk=True, grant="class", warmup=warmup)
        progress("general: the same flow without its grant")
        general = run_.phase(count, bulk=True, grant=None, warmup=warmup)
    from usnet.bench import lowlat_xdp  # receive through AF_XDP: the zero-copy LL lane and the copying path

    xdp = lowlat_xdp.run(quick, progress)
    return {
        "xdp": xdp,
        "idle_p99_ms": idle.p(99),
        "ll_p50_ms": granted.p(50),
        "ll_p99_ms": granted.p(99),
        "general_p50_ms": general.p(50),
        "general_p99_ms": general.p(99),
        "bulk_share": granted.bulk_bps * 8 / (LINK_RATE * (1 - LL_SHARE)),
        "ll_lost": granted.lost,
        "general_lost": general.lost,
        "general_tx_dropped": general.tx_dropped,
        "link_rate_bps": LINK_RATE,
        "ll_share": LL_SHARE,
        "bulk_flows": BULK_FLOWS,
        "ll_packets": count,
    }


@dataclass
class DemoResult:
    """The low-latency part of `usnet demo`: one LL flow with its lease and without, and the adaptive sender."""

    granted: Phase
    general: Phase
    adaptive: adaptive.AdaptiveResult


def demo_run(phase_seconds: float = 1.0, warmup: float = 0.5, adaptive_seconds: float = 1.5,
             progress: Callable[[str], None] = lambda what: None) -> DemoResult:
    """`usnet demo`'s low-latency part: the LL flow beside the bulk flows with a lease and without, then
    the adaptive sender alone on the link. Phase lengths are parameters so that tests can run short ones."""
    count = max(1, round(phase_seconds / LL_PERIOD))
    with LowLatRun(policy=LEASE_POLICY) as run_:
        # The adaptive sender first, on an empty link: the bulk flows' queued frames outlive their
        # processes by seconds (they all still go out), and it would find the queue full.
        progress("an adaptive sender following the interface advisory")
        adapt = run_.adaptive(adaptive_seconds)
        progress("the LL flow with its lease, beside the bulk flows")
        granted = run_.phase(count, bulk=True, grant="lease", warmup=warmup)
        progress("the same flow without a lease (general class), beside the bulk flows")
        general = run_.phase(count, bulk=True, grant=None, warmup=warmup)
    return DemoResult(granted, general, adapt)


def main(argv: list[str]) -> None:
    role, fd = argv[0], int(argv[1])
    client = Client.from_socket(socket.socket(fileno=fd))
    if role == "llsend":
        _llsend(client, int(argv[2]), argv[3] == "lease", int(argv[4]), int(argv[5]))
    elif role == "llrecv":
        _llrecv(client, int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5]), float(argv[6]))
    elif role == "bulk":
        _bulk(client, float(argv[2]), int(argv[3]))
    elif role == "sink":
        _sink(client, float(argv[2]), int(argv[3]))
    elif role == "adapt":
        adaptive.main_role(client, argv[2:])
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
