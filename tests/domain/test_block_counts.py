"""A batch's frames and bytes counted in one pass (issue 18: usnetd's CPU per turn).

`block.count`, `block.totals` and `block.has_blocks` are loops without generators, asked for
every batch a netif queues or receives; on any mix of frames and FrameBlocks they must agree
with the plain definitions: a block counts its rows and their lengths, a frame one and its size.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from usnet.drivers import block
from usnet.drivers.block import FrameBlock


def _block(lens: list[int]) -> FrameBlock:
    return FrameBlock(np.zeros((len(lens), max(lens, default=0)), np.uint8), np.array(lens, np.uint32))


_items = st.lists(st.one_of(st.binary(max_size=64),
                            st.lists(st.integers(0, 64), min_size=0, max_size=5).map(_block)), max_size=8)


@given(_items)
def test_counts_agree_with_the_plain_definitions(items: list) -> None:
    frames = sum(len(x.lens) if isinstance(x, FrameBlock) else 1 for x in items)
    nbytes = sum(int(x.lens.sum()) if isinstance(x, FrameBlock) else len(x) for x in items)
    assert block.count(items) == frames
    assert block.totals(items) == (frames, nbytes)
    assert block.has_blocks(items) == any(isinstance(x, FrameBlock) for x in items)
