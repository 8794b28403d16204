"""A few packets sent are pulled without arrays (issue 18: usnetd's CPU per turn).

`FlowPort.pull_any` takes at most a few packets off a flow's TX ring in scalars: the ring's
entries as ints, the pool's scalar release, the UMD read through a memoryview, each packet
copied into a bytes of its own. It must take exactly what `FlowPort.pull` takes, from
any client, hostile ones included: the same packets and bytes (a UMD length past the
buffer cut to it), the same gso sizes and marks, the same refusals (duplicates, packets
not the client's, out of range) with the same events, and the same pool books. The
property test below gives two domains alike the same client actions and pulls one each way.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.util import close_all
from usnet.abi.umd import UMD_WORDS
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.domain.switch.port import FlowPort
from usnet.drivers import MemWire

ETH = 14  # the headroom `pull` leaves, as the transmit path asks


class _Side:
    """A domain with one netif on a MemWire and one UDP flow channel; the loop is never turned."""

    def __init__(self) -> None:
        self.d = Domain()
        self.w = MemWire()
        sw = self.d.add_netif("a", self.w.a, "10.9.0.1/24")
        self.c = Client.local(self.d)
        self.ch = self.c.open_flow("a", 17, 5000)[0]
        self.port: FlowPort = next(iter(sw.flows.values())).port

    def close(self) -> None:
        """The client, the domain and the wire: their descriptors, else open till a collection finds them."""
        close_all(self.c, self.d, self.w)

    def send(self, items: list[tuple], extra: int) -> None:
        """What the client writes and puts on its TX ring: its own packets (data, a UMD length
        that may be past the buffer, gso, a mark), and hostile entries among them."""
        own: list[int] = []
        while len(own) < len(items):
            own += self.ch.alloc(len(items) - len(own))
        ring: list[int] = []
        for p, (kind, size, over, gso, mark) in zip(own, items):
            if kind == "own":
                self.ch.write(p, bytes(range(size % 251)) * (size // 251 + 1), gso)
                self.ch.set_length(p, size)
                if over:
                    self.ch.umd[p * UMD_WORDS] = self.port.stride + over  # past its buffer
                if mark == "report":
                    self.ch.mark(p, tag=7, report=True)
                elif mark == "deadline":
                    self.ch.mark(p, tag=9, deadline_ns=1 << 62)
                ring.append(p)
            elif kind == "dup":
                ring.append(ring[-1] if ring else p)
            elif kind == "unsent":  # still the client's, on no ring of ours: never sent, so not ours
                ring.append(p + extra)
            else:
                ring.append(1 << 31)  # out of range
        self.ch._tx.push(ring)

    def books(self) -> tuple:
        pool = self.port.pipe.pool
        reason = self.port.pipe.defunct_reason
        events = [] if reason is not None else [(e.type, e.code, e.value) for e in self.ch.events()]
        return (pool.state.tolist(), pool.owner.tolist(), list(pool.held), pool.stack[: pool.nfree].tolist(),
                self.port.refused, events, reason)


_item = st.tuples(st.sampled_from(["own", "own", "own", "dup", "unsent", "range"]), st.integers(0, 2048),
                  st.sampled_from([0, 0, 1, 5000]), st.sampled_from([0, 0, 1448]),
                  st.sampled_from([None, None, "report", "deadline"]))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(items=st.lists(_item, min_size=1, max_size=4), extra=st.integers(1, 3),
       widest=st.sampled_from([None, ETH + 1000, ETH + 2048]))
def test_a_few_packets_are_pulled_in_scalars_as_pull_takes_them(items, extra, widest) -> None:
    """... and a few with one longer than the caller's `widest` and no marks (super-segments)
    come as `pull`'s rows, each copied once (issue 18, bulk transmit); the same bytes either way."""
    few, batch = _Side(), _Side()
    try:
        few.send(items, extra)
        batch.send(items, extra)
        got, rest = few.port.pull_any(64, 4, ETH, widest=widest)
        rows, lens, gso, bmeta = batch.port.pull(64, ETH)
        wanted = [bytes(rows[i, ETH : ETH + n]) for i, n in enumerate(lens.tolist())]
        if widest is not None and len(lens) and ETH + int(lens.max()) > widest and bmeta is None:
            assert got is None and rest is not None  # a wide one: rows, as `pull` gives them
            frows, flens, fgso, fmeta = rest
            assert flens.tolist() == lens.tolist() and fgso.tolist() == gso.tolist() and fmeta is None
            assert [bytes(frows[i, ETH : ETH + n]) for i, n in enumerate(flens.tolist())] == wanted
        else:
            assert got is not None and rest is None  # at most four wait: the scalar path took them
            pkts, gsos, meta = got
            assert [bytes(p) for p in pkts] == wanted
            assert gsos == gso.tolist()
            assert (meta is None) == (bmeta is None)
            if meta is not None:
                assert meta.marks == bmeta.marks
        assert few.books() == batch.books()  # the same refusals, events, defunct reason and pool books
    finally:
        few.close()
        batch.close()


def test_more_than_a_few_waiting_are_left_to_pull() -> None:
    """Five waiting: the scalar path takes nothing (None), and `pull_any` takes all five as `pull` does."""
    s = _Side()
    try:
        s.send([("own", 60, 0, 0, None)] * 5, 1)
        got, pulled = s.port.pull_any(64, 4, ETH)
        assert got is None and pulled is not None
        _, lens, _, _ = pulled
        assert lens.tolist() == [60] * 5
    finally:
        s.close()
