"""A connector's blocks of ephemeral ports (usnet.client.portblocks), against a model: a port in use
is never handed out again, a freed one comes back (oldest freed first), and only a block whose
ports have all been free for `return_after` goes back, never the last one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.client.portblocks import PortBlocks

# operations: ("take",), ("free", index into the ports in use), ("add",), ("tick", seconds), ("idle",)
OPS = st.lists(st.one_of(
    st.tuples(st.just("take")), st.tuples(st.just("free"), st.integers(0, 1000)), st.tuples(st.just("add")),
    st.tuples(st.just("tick"), st.floats(0, 20)), st.tuples(st.just("idle"))), max_size=200)


@settings(max_examples=300, deadline=None)
@given(OPS, st.integers(1, 5))
def test_ports_in_use_are_never_given_twice_and_idle_blocks_go_back_whole(ops, size):
    pb = PortBlocks(return_after=10.0)
    now, next_block, next_port = 0.0, 1, 50000
    in_use: list[int] = []
    free_order: list[int] = []  # the model: free ports, oldest freed first
    for op in ops:
        if op[0] == "add":
            ports = list(range(next_port, next_port + size))
            next_port += size
            pb.add(next_block, ports, now)
            next_block += 1
            free_order += ports
        elif op[0] == "take":
            p = pb.take()
            if free_order:
                assert p == free_order.pop(0)
                assert p not in in_use
                in_use.append(p)
            else:
                assert p is None
        elif op[0] == "free" and in_use:
            p = in_use.pop(op[1] % len(in_use))
            pb.free(p, now)
            free_order.append(p)
        elif op[0] == "tick":
            now += op[1]
        elif op[0] == "idle":
            due = pb.idle(now)
            assert len(due) < len(pb.blocks) or not due  # the last block stays
            for b in due:
                ports = pb.drop(b)
                assert not set(ports) & set(in_use)  # only a block with every port free goes
                free_order = [p for p in free_order if p not in ports]
        assert len(pb) == sum(len(v) for v in pb.blocks.values())
        assert set(pb.users) == set(in_use)


def test_a_shared_port_is_free_only_when_its_last_connection_ends():
    pb = PortBlocks()
    pb.add(1, [50000], 0.0)
    assert pb.take() == 50000 and pb.take() is None
    assert pb.share([50000]) == 50000  # no free port left: Linux shares a port among remote ends
    pb.free(50000, 1.0)
    assert pb.take() is None  # its other connection still holds it
    pb.free(50000, 2.0)
    assert pb.take() == 50000
    assert pb.share([60000]) is None  # not a port of its blocks
