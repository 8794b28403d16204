"""Is a silent worker hung, or only starved of CPU? (docs/design-notes.md, "A starved worker is
not a hung one; `usnet status` never waits on a worker").

usnetd declares a worker hung when it leaves a heartbeat or a relayed request unanswered past a
bound (usnet.domain.workers), and kills and replaces it, aborting its clients' connections. Wall
clock alone cannot tell a stuck worker from one that is runnable but not given a CPU (a loaded CI
machine, two cores shared by many processes). Linux's detectors ask more than time: the hung-task
detector counts only a task in D state that has not been switched in for 120 s, the soft-lockup
detector only a CPU whose watchdog thread did not run. The same here, read from
/proc/<pid>/stat when a deadline passes (never per loop turn):

* gone (no such process, Z, X): hung; usnetd reaps it as a dead one;
* stopped (T, t: SIGSTOP, a debugger): hung at once;
* sleeping (S) with the request readable: blocked on something other than its loop: hung;
* runnable (R) or in the kernel (D): looked at again PROBE s later; if it had at least half of
  that time on a CPU and still did not answer, it spins: hung; else it is starved: more time,
  up to HARD_LIMIT s after it was asked.

`judge` is the decision, a pure function of what was read (property-tested); `read_stat` the one
read of /proc.
"""

from __future__ import annotations

import os
from typing import NamedTuple

__all__ = ["HARD_LIMIT", "PROBE", "Verdict", "judge", "read_stat"]

PROBE = 0.5  # seconds over which a silent worker's CPU time is measured before it is judged
HARD_LIMIT = 10.0  # seconds after it was asked beyond which even a starved worker is hung
_TICK = 1.0 / os.sysconf("SC_CLK_TCK")  # seconds per clock tick of utime and stime


class Stat(NamedTuple):
    """What /proc/<pid>/stat says of a process: its state letter and its CPU time (user + system,
    in clock ticks)."""

    state: str
    ticks: int


class Verdict(NamedTuple):
    """`judge`'s answer: hung (kill it), or not yet (look again in PROBE s); `why` words it."""

    hung: bool
    why: str


def read_stat(pid: int) -> Stat | None:
    """The state and CPU ticks of `pid`, or None if it is gone. The command name (field 2) may
    hold spaces and parentheses: the fields are counted after its last ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    if len(fields) < 13:
        return None
    return Stat(fields[0].decode(), int(fields[11]) + int(fields[12]))  # state, utime + stime


def judge(state: str | None, ticks: int, watched: float, waited: float,
          hard: float = HARD_LIMIT) -> Verdict:
    """Whether a worker silent past its deadline is hung.

    `state`: its state letter now (None: gone); `ticks`: the CPU ticks it had over the last
    `watched` seconds (0: this is the first look, nothing measured yet); `waited`: seconds since
    it was asked. A worker that had half the watched time on a CPU and did not answer spins; one
    that had less, runnable or in the kernel, waits for a CPU: starved, not hung, till `hard`."""
    if state is None or state in "ZX":
        return Verdict(True, "it is gone")
    if state in "Tt":
        return Verdict(True, "stopped")
    if state not in "RD":
        return Verdict(True, f"asleep (state {state}) with the request unread")
    if waited >= hard:
        return Verdict(True, f"{'runnable' if state == 'R' else 'in the kernel'} but without an answer "
                             f"for {waited:.1f} s, the most a starved worker is given")
    if watched <= 0:
        return Verdict(False, "looked at: its CPU time is measured")
    cpu = ticks * _TICK
    if cpu >= watched / 2:
        return Verdict(True, f"it ran {cpu:.2f} s of CPU in {watched:.2f} s without answering")
    return Verdict(False, f"starved: {'runnable' if state == 'R' else 'in the kernel'}, "
                          f"{cpu:.2f} s of CPU in {watched:.2f} s")
