"""Issue 18: under `usnetd --workers N` a connector's ephemeral ports are worker 0's share only
(`PortSpace.reserve(only=...)`): the device steers a frame to queue (local port mod N)."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.domain.switch.ports import EPHEMERAL, PortSpace


@settings(max_examples=10, deadline=None)
@given(n=st.integers(4, 16), k=st.data(), taken=st.sets(st.sampled_from(EPHEMERAL), max_size=200))
def test_an_ephemeral_port_of_a_share_is_of_that_share_until_none_is_left(n, k, taken):
    k = k.draw(st.integers(0, n - 1))
    space = PortSpace()
    for p in taken:  # ports held by others: never given again
        space.reserve(6, p, "other")
    share = [p for p in EPHEMERAL if p % n == k and p not in taken]
    got = [space.reserve(6, 0, "connector", only=lambda p: p % n == k) for _ in share]
    assert sorted(got) == share  # every port of the share, each once, no other
    with pytest.raises(OSError) as ei:
        space.reserve(6, 0, "connector", only=lambda p: p % n == k)
    assert ei.value.errno == errno.EADDRNOTAVAIL
    assert space.reserve(6, 0, "any") not in got  # without `only`: any port still free
