"""The interface advisory (NEXUSADV, docs/architecture.md, "Low latency", issue 5 item 5).

- The sequence lock: a reader interleaved at any point of a writer's stores
  never keeps a torn record (the steps are interleaved one by one, in one
  thread, by hypothesis); a record left odd makes the reader give up with a
  clear error; across processes, every snapshot is one publication.
- The estimator's rules (Little's law, the trend rule).
- A Domain on a memwire, driven with a fake clock and `serve_once(0)`: the
  totals match what was sent exactly, the queues are non-zero during a
  backlog and zero after, the trend is DOWN exactly while the delay is over
  the target, and each trend change is one ADVISORY_UPDATED event on the
  netif's flow channels that read their events.
- The control request, the memfd's seals, and `usnet advisory` against a
  real usnetd.

No test sleeps, and no assertion depends on the wall clock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import multiprocessing
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.usnetd import Daemon
from tests.helpers.util import FakeClock, calls_made, tap_name
from usnet.abi import protocol as P
from usnet.abi.advisory import (
    BODY,
    SIZE,
    U64_MAX,
    AdvisoryBusy,
    AdvisoryFormatError,
    AdvisoryReader,
    AdvisoryWriter,
    Direction,
    Record,
    Trend,
    read_steps,
    write_steps,
)
from usnet.abi.events import EventType
from usnet.abi.transport import ControlClient
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.domain.netif import estimate
from usnet.domain.netif.advisory import _u64
from usnet.drivers import MemWire

START = 1000.0
U64 = st.integers(0, 2**64 - 1)


def record(direction: int = Direction.TX, k: int = 0) -> Record:
    """A record whose every number is `k`, as far as its field holds it (so a torn one shows)."""
    fields = {f: k for f in Record._fields}
    fields.update(direction=direction, trend=Trend(k % 3), flags=k & 7, ll_slot_use_ppm=k & 0xFFFF_FFFF)
    return Record(**fields)


records = U64.map(lambda k: record(k=k))  # a record mixed from two of these differs from both
cuts = st.lists(st.integers(1, BODY.size - 1), max_size=6)


# -- the sequence lock ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(records, cuts), min_size=1, max_size=4), st.data())
def test_a_reader_interleaved_with_the_writer_never_keeps_a_torn_record(writes, data):
    buf = bytearray(SIZE)
    w = AdvisoryWriter(buf)
    first = record(k=7)
    w.publish(first, record(Direction.RX, k=7))
    r = AdvisoryReader(buf)
    published = {w.seq: first}  # seq -> the record that seq stands for, once written whole

    def writer():
        seq = w.seq
        for rec, cut in writes:
            yield from write_steps(w.mem, w.words, Direction.TX, seq, rec, cut)
            seq += 2
            published[seq] = rec
            yield

    wsteps = writer()
    writing = True
    for _ in range(data.draw(st.integers(1, 12), label="reader attempts")):
        attempt = read_steps(r.mem, r.words, Direction.TX, data.draw(cuts, label="reader cuts"))
        while True:
            if writing and data.draw(st.booleans(), label="writer moves"):
                try:
                    next(wsteps)
                except StopIteration:
                    writing = False
                continue
            try:
                next(attempt)
            except StopIteration as done:
                seq, rec = done.value
                break
        if rec is not None:
            assert seq % 2 == 0 and published.get(seq) == rec  # whole, and the one that seq names
    for _ in wsteps:  # the writer finishes; a reader at rest gets its last record at once
        pass
    assert r.read(Direction.TX, tries=1) == (w.seq + 2 * len(writes), writes[-1][0])


def test_a_reader_of_a_record_left_odd_gives_up_with_a_clear_error():
    buf = bytearray(SIZE)
    w = AdvisoryWriter(buf)
    w.publish(record(k=1), record(Direction.RX, k=1))
    stuck = write_steps(w.mem, w.words, Direction.TX, w.seq, record(k=2))
    next(stuck)  # the writer made the seq odd and stopped there
    r = AdvisoryReader(buf, "n0")
    with pytest.raises(AdvisoryBusy, match="TX was being written at each of 50 tries") as e:
        r.read(Direction.TX, tries=50)
    assert e.value.errno == errno.EBUSY
    with pytest.raises(AdvisoryBusy):
        r.snapshot(tries=50)
    assert r.read(Direction.RX, tries=1) == (2, record(Direction.RX, k=1))  # the other record is fine
    for _ in stuck:  # the writer finishes: readers get the new record
        pass
    assert r.read(Direction.TX, tries=1) == (4, record(k=2))
    with pytest.raises(ValueError, match="at least 1"):
        r.read(Direction.TX, tries=0)


def test_snapshot_pairs_records_of_one_publication_only():
    buf = bytearray(SIZE)
    w = AdvisoryWriter(buf)
    w.publish(record(k=1), record(Direction.RX, k=1))
    for _ in write_steps(w.mem, w.words, Direction.TX, w.seq, record(k=2)):
        pass  # TX is one publication ahead of RX, as between the two records of a publication
    r = AdvisoryReader(buf)
    with pytest.raises(AdvisoryBusy):
        r.snapshot(tries=3)
    w.seq += 2
    for _ in write_steps(w.mem, w.words, Direction.RX, w.seq - 2, record(Direction.RX, k=2)):
        pass
    snap = r.snapshot(tries=1)
    assert (snap.seq, snap.tx, snap.rx) == (4, record(k=2), record(Direction.RX, k=2))


@pytest.mark.parametrize("mutate, msg", [
    (lambda b: None, "magic"),
    (lambda b: b.__setitem__(slice(0, 4), b"UADV") or b.__setitem__(slice(4, 6), b"\x09\x00"), "version 9"),
])
def test_the_reader_refuses_memory_that_is_not_an_advisory(mutate, msg):
    buf = bytearray(SIZE)
    mutate(buf)
    with pytest.raises(AdvisoryFormatError, match=msg):
        AdvisoryReader(buf)
    with pytest.raises(AdvisoryFormatError, match="needs 320 bytes"):
        AdvisoryReader(bytearray(64))


def _hammer(w: AdvisoryWriter, n: int) -> None:
    """A writer process: n publications, every number of publication k equal to k.

    Forked: it writes through the mapping the nexus made before sealing, the
    only writable one there can be.
    """
    for k in range(1, n + 1):
        w.publish(record(k=k), record(Direction.RX, k=k))


def test_snapshots_across_processes_are_whole_publications():
    w = AdvisoryWriter.memfd("test")
    w.publish(record(k=0), record(Direction.RX, k=0))
    n = 20_000
    proc = multiprocessing.get_context("fork").Process(target=_hammer, args=(w, n))
    r = AdvisoryReader.from_fd(w.fd, "test")
    proc.start()
    seen = set()
    try:
        while True:
            alive = proc.is_alive()
            try:
                snap = r.snapshot()
            except AdvisoryBusy:
                # a writer that publishes without pause can keep a reader retrying (a seqlock's
                # reader waits out writers; the domain publishes a few times a second): not a torn
                # read, which is what this test looks for; once the writer is done, a read succeeds
                continue
            k = snap.tx.bytes
            assert snap.tx == record(k=k) and snap.rx == record(Direction.RX, k=k)
            assert snap.seq == 2 + 2 * k
            seen.add(k)
            if not alive:
                break
    finally:
        proc.join(30)
    assert proc.exitcode == 0 and max(seen) == n
    r.close()
    w.close()


# -- the estimator ----------------------------------------------------------------------------------


@given(st.floats(0, 10), st.floats(0, 10), st.floats(1e-4, 1), st.floats(0, 1e10), st.sampled_from([0.0, 1e6, 1e9]))
def test_the_trend_is_down_exactly_above_the_target_and_up_only_with_room(delay, prev, target, thr, link):
    t = estimate.suggest(delay, prev, target, thr, link)
    assert (t == Trend.DOWN) == (delay > target)
    if t == Trend.UP:
        assert delay <= target / 2 and delay <= prev and (link == 0 or thr < 0.9 * link)
    if delay <= target / 2 and delay <= prev and (link == 0 or thr < 0.9 * link):
        assert t == Trend.UP


def test_queueing_delay_is_little_s_law_on_the_drain_rate():
    assert estimate.queue_delay(0, 1e6, 1e7) == 0.0
    assert estimate.queue_delay(125_000, 1e6, 1e7) == 1.0  # measured rate first
    assert estimate.queue_delay(125_000, 0.0, 1e7) == 0.1  # then the link's
    assert estimate.queue_delay(125_000, 0.0, 0.0) == 0.0  # no rate known: no evidence of delay
    assert estimate.queue_delay(10**12, 1e-30, 0.0) == estimate.MAX_DELAY


def test_rate_meter_seeds_on_a_full_interval_and_follows_a_steady_rate_exactly():
    m = estimate.RateMeter()
    assert m.update(0.0, 0) == 0 and m.rate == 0.0
    assert m.update(0.0, 500) == 500 and m.rate == 0.0  # no time passed: kept for the next reading
    m.update(0.005, 1000)
    assert m.rate == pytest.approx(200_000)
    for i in range(2, 50):
        m.update(0.005 * i, 1000 * i)
    assert m.rate == pytest.approx(200_000)
    m.update(10.0, 10**6, restart=True)  # the end of a silence: a new baseline, not a sample
    assert m.rate == pytest.approx(200_000)
    m.reset()
    m.update(10.005, 10**6 + 50)
    assert m.rate == pytest.approx(10_000)


# -- a domain on a memwire, on a fake clock --------------------------------------------------------


def take(sock) -> list:
    try:
        return sock.recv_many(256, timeout=0)
    except BlockingIOError:
        return []


@pytest.fixture
def link():
    """A domain (not started: the test turns its loop) with a paced netif `a` and a plain `b`.

    Yields (domain, clock, a's sender socket, b's receiver socket, a's advisory, b's advisory),
    with the neighbours already resolved.
    """
    clock = FakeClock(START)
    wire = MemWire(clock=clock)
    d = Domain()
    try:
        d.add_netif("a", wire.a, "10.9.0.1/24", link_rate=10e6, ll_share=0.2, aqm=False, clock=clock)
        d.add_netif("b", wire.b, "10.9.0.2/24", clock=clock)
        c = Client.local(d)
        sa, sb = c.udp_socket("a", 5000), c.udp_socket("b", 6000)
        sa.sendto(b"who is there", ("10.9.0.2", 6000))
        got: list = []
        for _ in range(200):
            d.serve_once(0)
            got += take(sb)
            if got:
                break
        assert got == [(b"who is there", ("10.9.0.1", 5000))]
        with c.advisory("a") as adv_a, c.advisory("b") as adv_b:
            yield d, clock, sa, sb, adv_a, adv_b
    finally:
        d.stop()


def tick(d: Domain, clock: FakeClock) -> None:
    """One publication interval passes and the loop makes a pass."""
    clock.now += d.advisory_interval
    d.serve_once(0)


PAYLOAD = b"p" * 1000
FRAME = 14 + 20 + 8 + len(PAYLOAD)


def test_totals_queues_trend_and_events_follow_a_backlog(link):
    d, clock, sa, sb, adv_a, adv_b = link
    netif_a, netif_b = d.switches["a"].netif, d.switches["b"].netif
    tick(d, clock)  # a publication after the warm-up
    s0, b0 = adv_a.snapshot(), adv_b.snapshot()
    assert (s0.tx.bytes, s0.tx.packets) == (netif_a.tx_bytes, netif_a.tx_frames)
    assert (b0.rx.bytes, b0.rx.packets) == (netif_b.rx_bytes, netif_b.rx_frames)
    assert s0.tx.max_bandwidth == 10_000_000 and s0.tx.paced and s0.rx.max_bandwidth == 10_000_000
    assert b0.tx.max_bandwidth == 0 and not b0.tx.paced
    for sock in (sa, sb):
        list(sock.events())  # what the warm-up caused
    history = [(s0.seq, s0.tx.trend)]  # every publication of a from now on
    received: list = []
    events: list = []  # a's ADVISORY_UPDATED, read as they come (a channel that reads its events)

    def step():
        tick(d, clock)
        received.extend(take(sb))
        events.extend(e for e in sa.events() if e.type == EventType.ADVISORY_UPDATED)
        s = adv_a.snapshot()
        if s.seq != history[-1][0]:
            history.append((s.seq, s.tx.trend))
        return s

    n = 200
    assert sa.send_many([PAYLOAD] * n, ("10.9.0.2", 6000)) == n
    flow_a = next(iter(d.switches["a"].flows.values()))
    for _ in range(50):  # the switch takes them all at once: the clock does not move
        d.serve_once(0)
        if not flow_a.port.tx_pending():
            break
    backlog_seen = False
    for _ in range(1000):
        before = history[-1][0]
        s = step()
        assert s.seq == before + 2  # every pass of an active netif publishes once
        assert (s.tx.trend == Trend.DOWN) == (s.tx.queue_delay_ns > s.tx.target_delay_ns)
        queued = s.tx.general_queued_packets
        assert (queued, s.tx.general_queued_bytes) == netif_a.queue_totals()[2:]
        assert s.tx.ll_queued_packets == 0  # the flow is in the general class
        if queued:
            backlog_seen = True
            assert s.tx.general_queued_bytes > 0 and s.tx.queue_delay_ns > 0
        elif backlog_seen:
            break
    assert backlog_seen and Trend.DOWN in [t for _, t in history]
    assert s.tx.queue_delay_ns == 0 and s.tx.trend != Trend.DOWN and s.tx.general_queued_bytes == 0
    assert (s.tx.packets - s0.tx.packets, s.tx.bytes - s0.tx.bytes) == (n, n * FRAME)

    for _ in range(1000):  # until b has had everything
        if len(received) == n:
            break
        step()
    step()  # and has published it
    b1 = adv_b.snapshot()
    assert len(received) == n
    assert (b1.rx.packets - b0.rx.packets, b1.rx.bytes - b0.rx.bytes) == (n, n * FRAME)

    # quiet: the throughput decays until the link has room again (UP), then the advisory goes idle
    for _ in range(1000):
        s = step()
        if s.tx.idle:
            break
    assert s.tx.idle and s.tx.throughput == 0 and s.tx.trend == Trend.UP
    clock.now += 10.0
    d.serve_once(0)
    assert adv_a.snapshot().seq == s.seq  # idle: nothing is republished while nothing moves

    changes = [(seq, t) for (seq, t), (_, before) in zip(history[1:], history) if t != before]
    assert [(e.aux, e.value, e.code) for e in events] == [(seq, t, Direction.TX) for seq, t in changes]
    assert [t for _, t in changes][:1] == [Trend.DOWN] and len(changes) >= 2
    assert not [e for e in sb.events() if e.type == EventType.ADVISORY_UPDATED]  # b's trend never moved


def test_a_publication_is_a_few_calls_and_what_it_wrote_reads_back(link):
    """usnetd publishes every active netif's advisory every few milliseconds (issue 16: 13 % of its
    interpreter samples under an HTTP load went there). Counted in calls as `sys.setprofile` sees
    them, on the paced netif: with the body written through a scratch bytearray and its pieces
    (`_pieces`, its set, `sorted`, `_run`'s `next`s), a publication made 87; packed in place, 75.
    (`Record` was a frozen dataclass, whose 15 guarded stores are one call here but cost the most;
    a named tuple now.) The reader still gets exactly the netif's totals."""
    d, clock, _sa, _sb, adv_a, _adv_b = link
    adv = d.advisories["a"]
    netif = d.switches["a"].netif
    clock.now += d.advisory_interval
    with calls_made() as calls:
        seq = adv.publish(clock.now)
    assert len(calls) <= 80, sorted(calls)
    s = adv_a.snapshot()
    assert s.seq == seq and (s.tx.bytes, s.tx.packets, s.rx.bytes, s.rx.packets) == (
        netif.tx_bytes, netif.tx_frames, netif.rx_bytes, netif.rx_frames)
    assert s.tx.timestamp_ns == round(clock.now * 1e9) and s.tx.direction == Direction.TX


def test_an_ll_flow_s_backlog_is_the_ll_queue_and_uses_ll_slots(link):
    d, clock, sa, sb, adv_a, _ = link
    flow_a = next(iter(d.switches["a"].flows.values()))
    d.set_flow_class("a", flow_a.id, "ll")
    assert sa.send_many([PAYLOAD] * 100, ("10.9.0.2", 6000)) == 100
    ll_seen = False
    for _ in range(1000):
        tick(d, clock)
        take(sb)
        s = adv_a.snapshot()
        assert s.tx.general_queued_packets == 0
        if s.tx.ll_queued_packets:
            ll_seen = True
            assert s.tx.ll_queued_bytes > 0 and s.tx.ll_slot_use_ppm > 0
        elif ll_seen:
            break
    assert ll_seen and s.tx.ll_queued_bytes == 0
    assert 0 < s.tx.ll_slot_use_ppm <= 1_000_000


def test_a_removed_netif_s_advisory_says_gone_and_stays_readable():
    wire = MemWire()
    with Domain() as d, contextlib.closing(wire):
        d.add_netif("a", wire.a, "10.9.0.1/24")
        with Client.local(d).advisory("a") as adv:
            assert not adv.snapshot().tx.gone
            d.remove_netif("a")
            s = adv.snapshot()
            assert s.tx.gone and s.rx.gone
            with pytest.raises(OSError) as e:
                Client.local(d).advisory("a")
            assert e.value.errno == errno.ENODEV


@pytest.mark.parametrize("kw", [{"advisory_interval": 0}, {"advisory_interval": -1.0},
                                {"delay_target": float("nan")}, {"delay_target": "5ms"}])
def test_domain_refuses_nonsense_advisory_parameters(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        Domain(**kw)


# -- the control request and the memfd ---------------------------------------------------------------


def test_open_advisory_hands_over_a_memfd_no_client_can_write():
    wire = MemWire()
    with Domain() as d:
        d.add_netif("a", wire.a, "10.9.0.1/24", link_rate=1e9)
        ctl = ControlClient(d.socketpair_session())  # over SCM_RIGHTS, as another process gets it
        try:
            ctl.request(P.Hello(P.PROTOCOL_VERSION))
            with pytest.raises(P.ControlError) as e:
                ctl.request(P.OpenAdvisory("nope"))
            assert (e.value.code, e.value.message, e.value.errno) == ("ENODEV", "no netif 'nope'", errno.ENODEV)
            reply, fds = ctl.request(P.OpenAdvisory("a"))
            assert isinstance(reply, P.AdvisoryOpened) and reply.size == SIZE and len(fds) == 1
            (fd,) = fds
            try:
                with pytest.raises(PermissionError):
                    mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                with pytest.raises(PermissionError):
                    os.write(fd, b"x")
                with pytest.raises(PermissionError):
                    os.ftruncate(fd, 0)
                again = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)  # a memfd reopens read-write...
                try:
                    with pytest.raises(PermissionError):
                        os.pwrite(again, b"x", 0)  # ...and still cannot be written
                finally:
                    os.close(again)
                with AdvisoryReader.from_fd(fd, "a") as adv:
                    assert adv.snapshot().tx.max_bandwidth == 1_000_000_000
            finally:
                os.close(fd)
            assert d.status()["sessions"][0]["refused"] == 1
        finally:
            ctl.close()


# -- `usnet advisory` against usnetd ------------------------------------------------------------------


@pytest.mark.privileged
@pytest.mark.slow
def test_cli_prints_one_json_snapshot_and_a_table_from_a_real_usnetd(tmp_path):
    ifname = tap_name()
    cfg = tmp_path / "usnetd.toml"
    cfg.write_text(f'[[netif]]\nname = "adv0"\ndriver = "tap"\nifname = "{ifname}"\n'
                   f'address = "10.251.0.2/24"\nlink_rate = 25e6\n')
    sock = str(tmp_path / "s.sock")
    daemon = Daemon(sock, tmp_path / "usnetd.log", "--config", str(cfg))
    cli = [sys.executable, "-m", "usnet.cli.main", "advisory", "--socket", sock]
    try:
        out = subprocess.run(cli + ["adv0", "--once", "--json"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        snap = json.loads(out.stdout)["adv0"]
        fields = set(Record._fields) | {"paced", "gone", "idle"}
        assert set(snap["tx"]) == fields and set(snap["rx"]) == fields
        assert (snap["tx"]["direction"], snap["rx"]["direction"]) == ("TX", "RX")
        assert snap["tx"]["max_bandwidth"] == 25_000_000 and snap["tx"]["paced"] is True
        assert snap["tx"]["trend"] in ("UP", "HOLD", "DOWN") and snap["seq"] % 2 == 0
        table = subprocess.run(cli + ["--once"], capture_output=True, text=True, timeout=60)
        assert table.returncode == 0 and "adv0: interface advisory" in table.stdout
        assert "rate trend" in table.stdout and "25.0 Mbit/s" in table.stdout
        bad = subprocess.run(cli + ["nope", "--json"], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and "no netif 'nope'" in bad.stderr
    finally:
        assert daemon.stop() == 0, daemon.log_text()


@given(st.floats(allow_infinity=False) | st.integers(-(2**70), 2**70))
def test_a_u64_field_is_the_value_rounded_and_clamped(x):
    """`_u64` as the clamp it stands for (`min(U64_MAX, max(0, round(x)))`); NaN is 0."""
    want = 0 if x != x else min(U64_MAX, max(0, round(x)))
    assert _u64(x) == want
