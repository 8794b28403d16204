"""ByteQueue (TCP's send and receive buffers as a ring) against a bytearray model."""

from __future__ import annotations

import gc

from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.proto.tcp.bytequeue import ByteQueue

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.binary(min_size=0, max_size=9000)),
        st.tuples(st.just("drop"), st.integers(0, 12000)),
        st.tuples(st.just("view"), st.integers(0, 12000), st.integers(0, 12000)),
        st.tuples(st.just("read"), st.integers(0, 12000)),
        st.tuples(st.just("clear")),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_queue_reads_as_the_bytes_appended_less_those_dropped(ops) -> None:
    q = ByteQueue()
    model = bytearray()
    for op in ops:
        if op[0] == "append":
            q.append(op[1])
            model += op[1]
        elif op[0] == "drop":
            n = min(op[1], len(model))
            q.drop(n)
            del model[:n]
        elif op[0] == "view":
            a, b = sorted((min(op[1], len(model)), min(op[2], len(model))))
            assert bytes(q.view(a, b)) == bytes(model[a:b])
        elif op[0] == "read":
            n = min(op[1], len(model))
            out = bytearray(n + 3)
            q.read_into(out, n)
            assert bytes(out[:n]) == bytes(model[:n])
            assert q.take(n) == bytes(model[:n])
        else:
            q.clear()
            model.clear()
        assert len(q) == len(model)
        assert bool(q) == bool(model)
        assert q.capacity >= len(q)


def test_a_queue_that_cycles_keeps_its_block() -> None:
    """Steady use (append what was dropped) reuses one block: no growth, no copies of the live bytes."""
    q = ByteQueue()
    chunk = bytes(range(256)) * 256  # 64 KB
    for _ in range(16):
        q.append(chunk)
    cap = q.capacity
    for i in range(200):
        q.drop(len(chunk) // 2 + i)
        q.append(chunk[: len(chunk) // 2 + i])
    assert q.capacity == cap
    # a range across the ring's end still reads right
    n = len(q)
    assert bytes(q.view(0, n)) == q.take(n)


def test_append_takes_any_contiguous_buffer() -> None:
    import array

    q = ByteQueue()
    q.append(array.array("I", [1, 2]))
    q.append(memoryview(b"xyz"))
    assert len(q) == 11
    assert q.take(11) == array.array("I", [1, 2]).tobytes() + b"xyz"


def _views(q: ByteQueue) -> list[memoryview]:
    """The non-empty memoryviews a queue holds (the shared empty block is no one's)."""
    return [o for o in gc.get_referents(q) if type(o) is memoryview and len(o)]


def test_a_drained_queue_holds_no_view_and_keeps_its_block() -> None:
    """An idle connection's queues hold nothing the cyclic GC walks (a block's view is two
    objects: issue 18): a drained queue keeps its block unviewed for the next append, so a bulk
    queue that empties now and then does not fault its pages in again."""
    q = ByteQueue()
    q.append(b"GET / HTTP/1.1\r\n\r\n")
    assert _views(q) and q.capacity == 4096
    q.drop(len(q))
    assert not _views(q) and q.capacity == 4096
    q.append(b"x" * 100_000)
    cap = q.capacity
    q.drop(60_000)
    assert _views(q)
    q.drop(40_000)
    assert not _views(q) and q.capacity == cap
    data = bytes(range(256)) * 300
    q.append(data)
    assert q.capacity == cap and q.take(len(data)) == data  # the same block, taken back
    q.drop(len(q))
    q.append(b"y" * (cap + 1))  # more than the kept block: a bigger one, doubling as before
    assert q.capacity == 2 * cap and q.take(cap + 1) == b"y" * (cap + 1)
    q.clear()
    assert not _views(q) and q.capacity == 0


@settings(max_examples=200, deadline=None)
@given(_ops, st.binary(min_size=1, max_size=1))
def test_unzeroed_blocks_read_only_what_was_appended(ops, dirt: bytes) -> None:
    """Every block left unzeroed (`_LAZY_MIN` lowered to the smallest block), on memory dirtied
    just before: the queue still reads as the model, never a byte the block held before."""
    from usnet.proto.tcp import bytequeue

    old = bytequeue._LAZY_MIN
    bytequeue._LAZY_MIN = 1
    try:
        for n in (1 << 12, 1 << 14, 1 << 16):  # freed blocks of the sizes the queue asks for next
            bytequeue._block(n)[:] = dirt * n
        test_queue_reads_as_the_bytes_appended_less_those_dropped.hypothesis.inner_test(ops)
    finally:
        bytequeue._LAZY_MIN = old


def test_a_grown_block_is_faulted_in_as_it_is_written_not_when_made() -> None:
    """In a fresh process a queue of 4 MiB grows by one byte to an 8 MiB block: the block's pages
    are faulted in as the copy writes them (about 1,025), not all 2,048 at once (issue 18:
    bytearray(n) zeroed every page of every doubling), counted in minor faults."""
    import subprocess
    import sys

    code = (
        "import resource\n"
        "from usnet.proto.tcp.bytequeue import ByteQueue\n"
        "q = ByteQueue(); data = bytes(4 << 20); q.append(data)\n"
        "f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "q.append(b'x')\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f, q.capacity)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    faults, cap = map(int, out.stdout.split())
    assert cap == 8 << 20
    assert faults < 1536, faults
