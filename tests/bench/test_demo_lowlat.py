"""`usnet demo`'s low-latency part: the LL flow with its lease and without, the adaptive sender, `--plot`.

The measurements run short phases (the phase lengths are parameters) with
real processes on an embedded domain, as the demo does. What is asserted is
what must hold on any machine: every phase produced its percentiles, the
lease was granted and carried the flow, and every change the adaptive
sender made went the way the advisory reading that caused it said. No
latency figure is asserted: those depend on the machine (docs/benchmarks.md).
Waiting is on pipes and process exits, with deadlines; no sleeps.
"""

from __future__ import annotations

import math
import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.abi.advisory import Trend
from usnet.bench import adaptive, lowlat
from usnet.bench.adaptive import RateAdapter
from usnet.cli.main import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (the first chunk, right after the signature)."""
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


# -- the adapter, on readings the test makes up -----------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.floats(1e6, 1e8), st.lists(st.tuples(st.floats(0, 0.2), st.sampled_from(list(Trend))), max_size=80))
def test_the_adapter_moves_only_the_way_the_trend_says_and_stays_in_bounds(start, readings):
    a = RateAdapter(start, floor=1e6, ceiling=1e8, hold=0.05)
    now, last_trend, last_change = 0.0, None, None
    for dt, trend in readings:
        now += dt
        before = a.rate
        changed = a.observe(trend, now)
        assert 1e6 <= a.rate <= 1e8
        assert changed == (a.rate != before)
        if trend == Trend.HOLD:
            assert not changed
        elif trend == Trend.DOWN:
            assert a.rate <= before
            # it cuts unless at the floor already, or the same DOWN came again within the hold time
            repeat = last_trend == trend and last_change is not None and now - last_change < 0.05
            assert changed == (before > 1e6 and not repeat)
        else:
            assert a.rate >= before
            repeat = last_trend == trend and last_change is not None and now - last_change < 0.05
            assert changed == (before < 1e8 and not repeat)
        if changed:
            last_change = now
        last_trend = trend


def test_the_adapter_refuses_nonsense_bounds():
    with pytest.raises(ValueError, match="floor"):
        RateAdapter(1e6, floor=2e6, ceiling=1e7)
    with pytest.raises(ValueError, match="down"):
        RateAdapter(1e6, floor=1e5, ceiling=1e7, down=1.5)


# -- the part itself, short ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_result():
    return lowlat.demo_run(phase_seconds=0.3, warmup=0.3, adaptive_seconds=0.3)


@pytest.mark.slow  # shares the module's demo run (seconds)
def test_both_phases_give_percentiles_and_the_lease_carried_the_flow(demo_result):
    r = demo_result
    for phase in (r.granted, r.general):
        assert phase.sent == 60
        assert 0 < len(phase.latencies_ms) == len(phase.seqs) <= phase.sent
        assert phase.seqs == sorted(set(phase.seqs)) and phase.seqs[0] >= 0 and phase.seqs[-1] < phase.sent
        for q in (50, 99):
            assert math.isfinite(phase.p(q)) and phase.p(q) > 0
        assert phase.p(50) <= phase.p(99)
        assert phase.bulk_bps > 0  # the bulk flows ran beside it
    # the granted phase went through the agent: a voice lease for the sender's flow on netif a
    (lease,) = r.granted.lowlat["leases"]
    assert (lease["netif"], lease["service_class"], lease["rate"]) == ("a", "voice", lowlat.LEASE["rate"])
    assert lease["policer"]["passed"] > 0
    assert r.general.lowlat is None  # no lease was ever seen in the general phase


def test_the_adaptive_sender_cannot_settle_before_it_has_been_raised_after_a_cut():
    # every rate it can hold before then is above the link (the queue builds: DOWN) or below the
    # share of the link under which the advisory says UP; none sits in the HOLD band between them
    from usnet.domain.netif.estimate import UP_HEADROOM

    start, ceiling, link = lowlat.ADAPT_START, lowlat.ADAPT_CEILING, lowlat.LINK_RATE
    assert link < start <= ceiling  # raised from the start, it stays above the link
    assert ceiling * RateAdapter(start, floor=1, ceiling=ceiling).down < UP_HEADROOM * link  # cut, below


@pytest.mark.slow  # shares the module's demo run (seconds)
def test_the_adaptive_sender_changes_its_rate_the_way_the_advisory_says(demo_result):
    a = demo_result.adaptive
    assert a.link_rate == lowlat.LINK_RATE and a.start_rate == lowlat.ADAPT_START
    assert a.changes, "the sender never changed its rate"
    target = a.delay_target_ms
    for c in a.changes:
        if c.trend == "DOWN":
            assert c.rate_after < c.rate_before
            assert c.queue_delay_ms > target  # the reading that said DOWN had the delay above the target
        else:
            assert c.trend == "UP" and c.rate_after > c.rate_before
            assert c.queue_delay_ms <= target / 2
    # it starts above the link rate, so the queue must build and the advisory say DOWN; the sender runs
    # on until it has been told UP again (or gives up at its limit, which this asserts it did not reach)
    first_down = next(i for i, c in enumerate(a.changes) if c.trend == "DOWN")
    assert any(c.trend == "UP" for c in a.changes[first_down:])
    assert a.seconds < 10.0
    # the recorded rate over time is the chain of those changes, from the start rate
    assert a.samples[0][0] == 0.0 and a.samples[0][1] == a.start_rate
    rates = {a.start_rate} | {c.rate_after for c in a.changes}
    assert {s[1] for s in a.samples} <= rates
    for before, after in zip(a.changes, a.changes[1:]):
        assert after.rate_before == before.rate_after and after.t >= before.t
    assert all(lowlat.ADAPT_FLOOR <= s[1] <= lowlat.ADAPT_CEILING for s in a.samples)


@pytest.mark.slow  # shares the module's demo run (seconds)
def test_the_plot_is_a_png_of_the_promised_size(demo_result, tmp_path):
    pytest.importorskip("matplotlib")
    from usnet.bench import plot

    path = tmp_path / "ll.png"
    plot.write_demo_plot(str(path), demo_result)
    data = path.read_bytes()
    assert png_size(data) == (plot.WIDTH_IN * plot.DPI, plot.HEIGHT_IN * plot.DPI) == (1000, 700)
    import matplotlib.image

    img = matplotlib.image.imread(str(path))
    assert img.shape[:2] == (700, 1000)
    assert img[..., :3].std() > 0.05  # something was drawn, not a blank canvas


def test_plot_without_matplotlib_is_one_clear_line_and_runs_nothing(monkeypatch, capsys, tmp_path):
    import usnet.bench.demo

    def no_demo(*a, **k):
        raise AssertionError("the demo ran although --plot could not be honoured")

    monkeypatch.setattr(usnet.bench.demo, "run_demo", no_demo)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    out = tmp_path / "x.png"
    assert main(["demo", "--plot", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("usnet demo: ")
    assert "matplotlib" in err and "pip install 'usnet[plot]'" in err
    assert not out.exists()


def test_demo_phase_must_be_a_positive_number_of_seconds(capsys):
    for bad in ("0", "-1", "nan", "soon"):
        with pytest.raises(SystemExit) as e:
            main(["demo", "--phase", bad])
        assert e.value.code == 2
        assert "--phase" in capsys.readouterr().err


def test_the_adaptive_result_survives_its_trip_through_the_pipe():
    r = adaptive.AdaptiveResult(8e7, 5e7, 5.0, [adaptive.Change(0.01, "DOWN", 7.5, 8e7, 4e7)],
                                [(0.0, 8e7, 0.0, "HOLD", 0.0), (0.02, 4e7, 7.5, "DOWN", 3.9e7)], events=3,
                                seconds=1.0, blocked=1)
    assert adaptive.AdaptiveResult.from_json(r.to_json()) == r
