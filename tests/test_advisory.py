"""The interface advisory (NEXUSADV, DESIGN §6, issue 5 item 5): its layout, sequence lock and rules.

- The sequence lock: a reader interleaved at any point of a writer's stores
  never keeps a torn record (the steps are interleaved one by one, in one
  thread, by hypothesis); a record left odd makes the reader give up with a
  clear error; across processes, every snapshot is one publication.
- The estimator's rules (Little's law, the trend rule).

No test sleeps, and no assertion depends on the wall clock.
"""

from __future__ import annotations

import errno
import multiprocessing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.lowlat import estimate
from usnet.lowlat.advisory import (
    BODY,
    SIZE,
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

U64 = st.integers(0, 2**64 - 1)


def record(direction: int = Direction.TX, k: int = 0) -> Record:
    """A record whose every number is `k`, as far as its field holds it (so a torn one shows)."""
    fields = {f: k for f in Record.__dataclass_fields__}
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
            snap = r.snapshot()
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
