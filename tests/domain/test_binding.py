"""A connector's port bindings (usnet.domain.switch.binding) against a model: a dict of held
ports, each None (free) or its remote end; the arrays the column-wise pass reads agree with it."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.domain.switch.binding import PortBindings, Verdict, key4

PORTS = st.integers(49152, 49160)
REMOTES = st.tuples(st.sampled_from([b"\x0a\x09\x00\x02", b"\x0a\x09\x00\x03", b"\x20\x01" + b"\x00" * 13 + b"\x01"]),
                    st.sampled_from([80, 443, 6000]))
OPS = st.one_of(
    st.tuples(st.just("hold"), st.lists(PORTS, max_size=4)),
    st.tuples(st.just("drop"), st.lists(PORTS, max_size=4)),
    st.tuples(st.just("send"), PORTS, REMOTES, st.booleans(), st.booleans()),
    st.tuples(st.just("unbind"), PORTS),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(OPS, max_size=40))
def test_bindings_follow_the_model(ops):
    b = PortBindings()
    model: dict[int, tuple[bytes, int] | None] = {}
    for op in ops:
        if op[0] == "hold":
            b.hold(op[1])
            for p in op[1]:
                model.setdefault(p, None)
        elif op[0] == "drop":
            gone = b.drop(op[1])
            want = sorted({(p, *model[p]) for p in set(op[1]) if p in model and model[p] is not None})
            assert sorted(gone) == want
            for p in op[1]:
                model.pop(p, None)
        elif op[0] == "send":
            _, p, (ra, rp), syn, rst = op
            v = b.check(p, ra, rp, syn, rst)
            if p not in model:
                assert v is Verdict.NOT_HELD
            elif model[p] is not None:
                assert v is (Verdict.PASS if model[p] == (ra, rp) else Verdict.ELSEWHERE)
            else:
                assert v is (Verdict.BIND if syn else Verdict.FREE if rst else Verdict.UNBOUND)
            if v is Verdict.BIND:
                b.bind(p, ra, rp)
                model[p] = (ra, rp)
        else:
            p = op[1]
            assert b.unbind(p) == model.get(p)
            if p in model:
                model[p] = None
        assert b.held == set(model)
        assert b.bound == {p: r for p, r in model.items() if r is not None}
        assert set(np.flatnonzero(b.mask).tolist()) == set(model)
        want_keys = {p: key4(*r) for p, r in model.items() if r is not None and len(r[0]) == 4}
        assert {int(p): int(b.keys[p]) for p in np.flatnonzero(b.keys)} == want_keys
