"""The host's union of a group's source filters told to a worker (b"M", docs/abi.md "A worker's command
socket"): the layout's one writer (`filter_msg`) and one reader (`filter_of`), and the worker table's
use of it (`GroupTable.host_states`).

Hypothesis: whatever filter is written comes back as written; any bytes after the netif's name give a
parse or None, never an exception, and a parse is exactly what the bytes say; past HOST_SOURCES_MAX
sources the writer refuses and the reader too. A worker's table admits a source by the host's union,
as a model of RFC 3376 §3.2's interface state says, whatever its own flows' filters say, and keeps a
state only for a group the host is in.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.domain.switch.groups import GroupTable
from usnet.domain.workers.messages import HOST_SOURCES_MAX, filter_msg, filter_of
from usnet.proto.wire.msf import ANY_SOURCE, Filter, admits, union

_g4 = st.binary(min_size=3, max_size=3).map(lambda b: bytes([0xE0 | b[0] & 0x0F]) + b)
_g6 = st.binary(min_size=15, max_size=15).map(lambda b: b"\xff" + b)
_s4 = st.sampled_from([bytes([10, 0, 0, i]) for i in range(1, 9)])


def _filters(size: int, most: int = 40):
    return st.builds(Filter, st.booleans(), st.frozensets(st.binary(min_size=size, max_size=size), max_size=most))


def _rest(msg: bytes) -> tuple[int, bytes]:
    """(family, what follows the netif's name) of a netif message."""
    return msg[1], msg[3 + msg[2]:]


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([(4, _g4), (6, _g6)]).flatmap(
    lambda fg: st.tuples(st.just(fg[0]), fg[1], _filters(4 if fg[0] == 4 else 16))))
def test_what_is_written_is_read_back(case):
    family, group, f = case
    m = filter_msg("usnet0", family, group, f)
    assert m[:1] == b"M" and m[3:3 + m[2]] == b"usnet0"
    fam, rest = _rest(m)
    assert fam == family and filter_of(rest, fam) == (group, f)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=60), st.sampled_from([4, 6]))
def test_any_bytes_parse_or_are_refused_whole(rest, family):
    size = 4 if family == 4 else 16
    got = filter_of(rest, family)
    if got is None:
        n, odd = divmod(len(rest) - size - 1, size)
        assert n < 0 or odd or rest[size] > 1 or len({rest[i:i + size] for i in range(size + 1, len(rest), size)}) != n
    else:
        group, f = got
        assert group == rest[:size] and f.include == bool(rest[size])
        named = sorted(rest[i:i + size] for i in range(size + 1, len(rest), size))
        assert sorted(f.sources) == named


def test_more_than_the_bound_is_refused_by_writer_and_reader():
    many = frozenset(i.to_bytes(4, "big") for i in range(HOST_SOURCES_MAX + 1))
    with pytest.raises(ValueError):
        filter_msg("usnet0", 4, b"\xe0\x00\x00\x01", Filter(True, many))
    rest = b"\xe0\x00\x00\x01\x01" + b"".join(sorted(many))
    assert filter_of(rest, 4) is None
    assert filter_of(rest[:-4], 4) is not None  # HOST_SOURCES_MAX exactly


@settings(max_examples=100, deadline=None)
@given(_g4, st.lists(st.builds(Filter, st.booleans(), st.frozensets(_s4, max_size=4)), min_size=1, max_size=4),
       st.integers(0, 2), st.builds(Filter, st.booleans(), st.frozensets(_s4, max_size=4)))
def test_a_worker_admits_by_the_hosts_union_not_its_own_flows(group, theirs, any_source, own):
    """The host's state is the union of every socket's filter (`union`, a model of RFC 3376 §3.2):
    a worker told it admits a source for a listener that is no member exactly when the union does,
    whatever its own (a part of the host's) table's union says; told nothing, it admits all."""
    t = GroupTable()
    t.host_states = {}
    assert t.set_host(group, True)
    t.states[group] = own  # its own flows' union: beside the point in a worker
    host = union(theirs, any_source)
    if host.include and not host.sources:
        return  # no membership: the host is not in the group
    assert t.set_host_state(group, host)
    listener = type("F", (), {"id": 1})()
    for s in (bytes([10, 0, 0, i]) for i in range(1, 9)):
        assert t.admits(listener, group, s) == admits(host, s)
    assert t.set_host(group, False) and group not in t.host_states  # a last leave forgets it
    assert not t.set_host_state(group, host)  # and a state of a group the host is not in is refused


def test_only_a_workers_table_keeps_a_host_state():
    t = GroupTable()
    t.set_host(b"\xe0\x00\x00\x05", True)
    assert not t.set_host_state(b"\xe0\x00\x00\x05", Filter(True, frozenset({b"\x0a\x00\x00\x01"})))
    t.host_states = {}
    assert not t.set_host_state(b"\xe0\x00\x00\x05", Filter(True, frozenset({bytes(16)})))  # the other family's
    assert t.set_host_state(b"\xe0\x00\x00\x05", ANY_SOURCE) and not t.host_states
