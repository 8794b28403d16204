"""usnet.bench.lowlat's phases wait on the processes' word, not on clocks started before them.

The LL receiver's deadline once ran from its own start (the datagrams' time plus 5 s), and the
granted phase gave the sender's flow 5 s from the spawn to appear: under CI's load the sender's
process took seconds to start (8.9 s once, measured), so the datagrams sent after that deadline were
counted lost (`general_lost=1` in `usnet bench lowlat --quick`; 400 of 400 in a loaded loop), or the
phase failed ("the LL flow never appeared"). Now the sender says when its flow is open and sends when
told to, and the receiver counts a datagram lost only `drain` seconds after the sender ended.
"""

from __future__ import annotations

import time

import pytest

from usnet.bench import lowlat

pytestmark = pytest.mark.slow
COUNT = 20  # LL datagrams: 0.1 s of them
LATE = 1.5  # seconds the sender starts late: more than their time plus the drain below


class LateSender(lowlat.LowLatRun):
    """A run whose LL sender starts LATE seconds late, as a loaded machine starts a process."""

    def spawn(self, role, *args, keep=()):
        if role == "llsend":
            time.sleep(LATE)  # the slow start under test, not synchronisation
        return super().spawn(role, *args, keep=keep)


@pytest.mark.parametrize("grant", [None, "class"])
def test_a_sender_that_starts_late_loses_nothing_and_a_granted_one_sends_all_in_the_ll_class(grant):
    with LateSender(drain=0.5) as run:
        phase = run.phase(COUNT, bulk=False, grant=grant, warmup=0)
        ll_frames = run.dom.status()["netifs"][0]["netif"]["txsched"]["frames"]["ll"]
    assert COUNT * lowlat.LL_PERIOD + run.drain < LATE
    assert phase.lost == 0 and phase.seqs == list(range(COUNT))
    if grant:  # granted before its first datagram: every one went in the LL class
        assert ll_frames == COUNT
