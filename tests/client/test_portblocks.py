"""A connector's blocks of ephemeral ports (usnet.client.portblocks), against a model: a port in use
is never handed out again, a freed one comes back (oldest freed first), and only a block whose
ports have all been free for `return_after` goes back, never the last one. A freed port whose SYN
left (bound in the switch) is taken again only after `unbound` (the release notice), or after
`unbinding` and `released` (a release the engine waits for: a worker's connector), and then only
if its block was not given back meanwhile."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.client.portblocks import PortBlocks

# operations: ("take",), ("free", index into the ports in use, bound), ("add",), ("tick", seconds),
# ("idle",), ("unbound",), ("unbinding",), ("released",)
OPS = st.lists(st.one_of(st.tuples(st.just("unbinding")), st.tuples(st.just("released")),
    st.tuples(st.just("take")), st.tuples(st.just("free"), st.integers(0, 1000), st.booleans()),
    st.tuples(st.just("add")), st.tuples(st.just("tick"), st.floats(0, 20)), st.tuples(st.just("idle")),
    st.tuples(st.just("unbound"))), max_size=200)


@settings(max_examples=300, deadline=None)
@given(OPS, st.integers(1, 5))
def test_ports_in_use_are_never_given_twice_and_idle_blocks_go_back_whole(ops, size):
    pb = PortBlocks(return_after=10.0)
    now, next_block, next_port = 0.0, 1, 50000
    in_use: list[int] = []
    free_order: list[int] = []  # the model: free ports, oldest freed first
    bound: list[int] = []  # freed, still bound in the switch
    pending: list[int] = []  # being released by a request (`unbinding`), not answered yet
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
            pb.free(p, now, bound=op[2])
            (bound if op[2] else free_order).append(p)
        elif op[0] == "unbound":
            assert pb.unbound() == bound
            free_order += bound
            bound = []
        elif op[0] == "unbinding":
            got = pb.unbinding()
            assert got == bound
            pending += got
            bound = []
        elif op[0] == "released":
            pb.released(pending)
            free_order += [p for p in pending if p in pb.block_of]  # a given-back block's: gone
            pending = []
        elif op[0] == "tick":
            now += op[1]
        elif op[0] == "idle":
            due = pb.idle(now)
            assert len(due) < len(pb.blocks) or not due  # the last block stays
            for b in due:
                ports = pb.drop(b)
                assert not set(ports) & set(in_use)  # only a block with every port free goes
                free_order = [p for p in free_order if p not in ports]
                bound = [p for p in bound if p not in ports]
        assert not set(pending) & set(pb._free)  # neither free nor bound until released
        assert set(pb._free) <= set(pb.block_of)  # a free port is one of the blocks held
        assert len(pb) == sum(len(v) for v in pb.blocks.values())
        assert set(pb.users) == set(in_use) and pb.bound == bound


def test_a_bound_port_is_taken_again_only_after_the_release():
    pb = PortBlocks()
    pb.add(1, [50000, 50001], 0.0)
    assert pb.take() == 50000 and pb.take() == 50001
    pb.free(50000, 1.0, bound=True)  # its SYN left: the switch holds it to its 4-tuple
    assert pb.take() is None and not pb.users.get(50000)
    assert pb.idle(100.0) == []  # the last block stays anyway
    assert pb.unbound() == [50000] and pb.bound == []
    assert pb.take() == 50000


def test_a_port_released_after_its_block_went_back_is_not_taken():
    """A worker's connector releases by a request it waits for (`unbinding`, then `released`);
    meanwhile the stack thread may give the port's block back: the port is the domain's again."""
    pb = PortBlocks(return_after=10.0)
    pb.add(1, [50000], 0.0)
    pb.add(2, [50001], 0.0)
    assert pb.take() == 50000
    pb.free(50000, 1.0, bound=True)
    assert pb.unbinding() == [50000] and pb.bound == []
    assert pb.take() == 50001  # the pending port is neither free nor bound
    assert pb.take() is None
    assert pb.idle(20.0) == [1]  # block 1 is all free (its port pending), block 2 in use
    assert pb.drop(1) == [50000]
    pb.released([50000])
    assert pb.take() is None  # not ours any more
