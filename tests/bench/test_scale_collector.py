"""The scale bench's timed take pays for its own garbage collection, not for what was made before it.

Filling to 10,000 held connections leaves CPython owing a full collection (their objects exceed a
quarter of the long-lived heap) that fell inside the timed accepts that followed: 0.1 s of a
0.25 s take. `usnet.bench.scale.timed_take` settles that debt before the clock starts and counts
the collections inside the take. The test counts collections, not time: the debt is built
deterministically (long-lived objects promoted by explicit young collections, so the next
automatic collection is a full one).
"""

from __future__ import annotations

import gc

from usnet.bench.scale import timed_take


def _owe_a_full_collection() -> list[list[int]]:
    """Objects made now, promoted to the old generation, with a full collection due at the next collection."""
    gc.collect()
    gc.disable()
    try:
        made = [[i] for i in range(100_000)]  # a fill's held connections: long-lived containers
    finally:
        gc.enable()
    for _ in range(11):  # eleven young collections: the old generation's turn is due
        gc.collect(1)
    return made


def _accepts(n: int) -> list[list[int]]:
    """A take's own work: containers that live until it ends (enough to run an automatic collection)."""
    return [[i] for i in range(n)]


def test_a_take_does_not_pay_the_full_collection_owed_by_what_came_before():
    held = _owe_a_full_collection()
    _dt, full, _s = timed_take(lambda: _accepts(5_000))
    assert full == 0, "the full collection owed by the held objects ran inside the timed take"
    assert len(held) == 100_000


def test_a_take_that_makes_long_lived_objects_itself_is_charged_its_collections():
    callbacks = list(gc.callbacks)
    kept: list[list[list[int]]] = []
    _dt, full, seconds = timed_take(lambda: kept.append(_accepts(200_000)))
    assert full >= 1 and seconds > 0, "the take's own full collection was not counted"
    assert gc.callbacks == callbacks, "the bench's callback stayed installed"
