"""Quick checks of the usnet bench pipe baselines (no timing assertions)."""

from __future__ import annotations

import glob
import math
import os

import pytest

from usnet.bench import baselines


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _children() -> list[str]:
    kids: list[str] = []
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with open(path) as f:
            kids += f.read().split()
    return kids


@pytest.mark.parametrize(
    "fn", [baselines.socketpair_mps, baselines.udp_mps, baselines.mpqueue_mps]
)
def test_positive_finite_and_clean(fn) -> None:
    before = _fds()
    rate = fn(64, 2000)
    assert math.isfinite(rate) and rate > 0
    assert _fds() <= before  # no leaked fds
    assert _children() == []  # child reaped: no zombie


def test_udp_cannot_carry_64k() -> None:
    assert math.isnan(baselines.udp_mps(65536, 2000))
    assert math.isfinite(baselines.udp_mps(baselines.UDP_MAX_PAYLOAD, 20))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        baselines.socketpair_mps(0, 100)
    with pytest.raises(ValueError):
        baselines.mpqueue_mps(64, 1)


def test_count_for() -> None:
    for fn in (baselines.socketpair_mps, baselines.udp_mps, baselines.mpqueue_mps):
        for size in (64, 1500, 9000, 65536):
            quick = baselines.count_for(size, True, fn)
            assert isinstance(quick, int) and 1000 <= quick < baselines.count_for(size, False, fn)
    assert baselines.count_for(64, True) >= baselines.count_for(65536, True)
