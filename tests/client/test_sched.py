"""usnet.runtime.sched: a thread asks the kernel for a short scheduling slice, and only that thread gets it."""

from __future__ import annotations

import os
import threading

import pytest

from usnet.runtime import sched

pytestmark = pytest.mark.skipif(sched.get_slice() is None, reason="the kernel has no custom slices (before 6.12)")


def in_thread(fn):
    """fn() in a new thread (its scheduling attributes die with it); returns what it returned."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_short_slice_for_the_calling_thread_only():
    before = sched.get_slice()

    def worker():
        return sched.set_slice(), sched.get_slice()

    got, seen = in_thread(worker)
    assert got == seen == pytest.approx(sched.SHORT_SLICE)
    assert sched.get_slice() == before  # the test's own thread is unchanged


def test_the_kernel_clamps_and_the_result_says_so():
    assert in_thread(lambda: sched.set_slice(10e-6)) == pytest.approx(100e-6)
    assert in_thread(lambda: sched.set_slice(0.5)) == pytest.approx(0.1)


def test_nice_is_kept():
    def worker():
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, 7)
        sched.set_slice()
        return os.getpriority(os.PRIO_PROCESS, tid)

    assert in_thread(worker) == 7


@pytest.mark.parametrize("bad", [0, -1e-3, 2.0, float("nan")])
def test_nonsense_slices_are_refused(bad):
    with pytest.raises(ValueError, match="slice"):
        sched.set_slice(bad)
