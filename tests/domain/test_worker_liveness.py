"""Issue 18: a starved worker is not a hung one (usnet.domain.liveness, `Supervisor.suspect`).

usnetd used to declare a worker hung by wall-clock alone and kill it, aborting its clients'
connections, even when the worker was runnable and only waiting for a CPU on a loaded machine.
Now a worker silent past a deadline is judged from /proc/<pid>/stat: stopped, asleep with the
request unread, or spinning on a CPU is hung; runnable (or in the kernel) with little CPU time
is starved and given more time, up to HARD_LIMIT.

The decision is a pure function (`judge`), property-tested here; `read_stat` is tested against
real processes; and one test starves a real worker (SCHED_IDLE, pinned to one CPU beside a
nice -20 CPU hog) and checks that it is not killed and answers again once the hog is gone.
A stopped worker is still hung at once: tests/domain/test_worker_hung.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.domain.test_workers import _workers
from tests.helpers.util import wait_until
from usnet.domain.liveness import HARD_LIMIT, judge, read_stat

TICK = 1.0 / os.sysconf("SC_CLK_TCK")
states = st.sampled_from(list("RDSTtZXIWP"))
ticks = st.integers(0, 100_000)
seconds = st.floats(0.001, 1000.0, allow_nan=False)


@given(states, ticks, seconds, seconds)
def test_stopped_gone_or_asleep_is_hung_whatever_its_cpu(state, n, watched, waited):
    if state not in "RD":
        assert judge(state, n, watched, waited).hung
    assert judge(None, n, watched, waited).hung


@given(st.sampled_from("RD"), ticks, seconds, seconds)
def test_runnable_is_hung_iff_it_had_half_the_time_on_a_cpu_or_waited_past_the_hard_limit(state, n, watched, waited):
    v = judge(state, n, watched, waited)
    assert v.hung == (waited >= HARD_LIMIT or n * TICK >= watched / 2), v
    assert v.why


@given(st.sampled_from("RD"), ticks, seconds)
def test_a_first_look_never_kills_a_runnable_worker_before_the_hard_limit(state, n, waited):
    assert judge(state, n, 0.0, waited).hung == (waited >= HARD_LIMIT)


@given(states, ticks, ticks, seconds, seconds, seconds)
def test_more_cpu_or_more_waiting_never_turns_hung_into_starved(state, n, more, watched, waited, later):
    if judge(state, n, watched, waited).hung:
        assert judge(state, n + more, watched, waited).hung
        assert judge(state, n, watched, waited + later).hung


def test_read_stat_reads_state_and_cpu_of_real_processes():
    me = read_stat(os.getpid())
    assert me is not None and me.state == "R" and me.ticks >= 0  # reading its own stat, it runs
    # a command name with spaces and parentheses: fields are counted after the last ')'
    child = subprocess.Popen([sys.executable, "-c",
                              "import signal, sys; open('/proc/self/comm', 'w').write('a) b (c'); "
                              "print(flush=True); signal.pause()"], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"\n"
        os.kill(child.pid, signal.SIGSTOP)
        wait_until(lambda: getattr(read_stat(child.pid), "state", "") == "T", 5, "the child to stop")
        stopped = read_stat(child.pid)
        assert stopped is not None and stopped.ticks >= 0
        os.kill(child.pid, signal.SIGCONT)
        wait_until(lambda: getattr(read_stat(child.pid), "state", "") == "S", 5, "the child to sleep")
    finally:
        child.kill()
        child.wait()
    assert read_stat(child.pid) is None  # reaped: gone


HOG = """import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
os.nice(-20)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pass
"""


@pytest.mark.privileged
@pytest.mark.parametrize("tapd2", ["tap"], indirect=True)
def test_a_starved_worker_is_given_time_and_not_killed(tapd2):
    """Worker 1 is made SCHED_IDLE and pinned to one CPU beside a nice -20 CPU hog (bounded in
    time, below HARD_LIMIT): it is runnable but gets no CPU, so it leaves a heartbeat unanswered
    past HUNG_AFTER. usnetd finds it starved (logged), not hung; once the hog is ended the worker
    answers again, the same process. Before, it was killed at HUNG_AFTER as a hung one."""
    pid = _workers(tapd2.path)[1]["pid"]
    cpu = max(os.sched_getaffinity(0))
    tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    affinity = os.sched_getaffinity(pid)
    for t in tasks:
        os.sched_setaffinity(t, {cpu})
        os.sched_setscheduler(t, os.SCHED_IDLE, os.sched_param(0))
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(cpu), str(HARD_LIMIT - 2)])
    try:
        wait_until(lambda: f"usnetd worker 1 (pid {pid}) starved" in tapd2.daemon.log_text(), HARD_LIMIT,
                   "usnetd to find worker 1 starved")
    finally:
        hog.kill()
        hog.wait()
        for t in tasks:
            try:
                os.sched_setscheduler(t, os.SCHED_OTHER, os.sched_param(0))
                os.sched_setaffinity(t, affinity)
            except ProcessLookupError:
                pass
    wait_until(lambda: f"usnetd worker 1 (pid {pid}) answers again" in tapd2.daemon.log_text(), 10,
               "worker 1 to answer again")
    w1 = _workers(tapd2.path)[1]
    assert w1["pid"] == pid and w1.get("restarts") == 0 and "error" not in w1, w1
    assert ") hung (" not in tapd2.daemon.log_text()
