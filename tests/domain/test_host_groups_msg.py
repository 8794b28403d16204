"""The host's groups told to a worker (b"G", docs/abi.md "A worker's command socket"): the layout's
one writer (`group_msgs`) and one reader (`groups_of`), and the worker table's bounded host set.

Hypothesis: whatever groups are written come back as written, in parts of GROUPS_A_MESSAGE; any
bytes after the netif's name give a parse or None, never an exception; the host set never grows
past HOST_GROUPS_MAX and its groups' MACs are admitted exactly while they are in it.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.domain.switch.groups import HOST_GROUPS_MAX, GroupTable, group_mac
from usnet.domain.workers.messages import GROUP_ALL, GROUP_JOIN, GROUP_LEAVE, GROUPS_A_MESSAGE, group_msgs, groups_of

_g4 = st.binary(min_size=3, max_size=3).map(lambda b: bytes([0xE0 | b[0] & 0x0F]) + b)
_g6 = st.binary(min_size=15, max_size=15).map(lambda b: b"\xff" + b)


def _rest(msg: bytes) -> tuple[int, bytes]:
    """(family, what follows the netif's name) of a netif message."""
    return msg[1], msg[3 + msg[2]:]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([(4, _g4), (6, _g6)]).flatmap(
    lambda fg: st.tuples(st.just(fg[0]), st.lists(fg[1], max_size=2 * GROUPS_A_MESSAGE + 3))),
       st.sampled_from([GROUP_LEAVE, GROUP_JOIN, GROUP_ALL]))
def test_what_is_written_is_read_back_in_bounded_parts(fam_groups, op):
    family, groups = fam_groups
    msgs = group_msgs("usnet0", family, op, groups)
    assert len(msgs) == max(1, -(-len(groups) // GROUPS_A_MESSAGE))
    back: list[bytes] = []
    for i, m in enumerate(msgs):
        assert m[:1] == b"G" and m[3:3 + m[2]] == b"usnet0"
        fam, rest = _rest(m)
        assert fam == family
        got = groups_of(rest, fam)
        assert got is not None
        assert got[0] == (op if i == 0 else GROUP_JOIN)  # the whole list's later parts add to it
        back += got[1]
    assert back == groups


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.sampled_from([4, 6]))
def test_any_bytes_parse_or_are_refused_whole(rest, family):
    got = groups_of(rest, family)
    size = 4 if family == 4 else 16
    if got is None:
        assert not rest or rest[0] > GROUP_ALL or (len(rest) - 1) % size
    else:
        op, groups = got
        assert op == rest[0] and b"".join(groups) == rest[1:] and all(len(g) == size for g in groups)


def test_too_many_groups_in_one_message_are_refused():
    rest = bytes([GROUP_JOIN]) + b"\xe0\x00\x00\x01" * (GROUPS_A_MESSAGE + 1)
    assert groups_of(rest, 4) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_g4, st.booleans()), max_size=40))
def test_the_host_set_admits_its_groups_macs_while_it_holds_them(changes):
    t = GroupTable()
    model: set[bytes] = set()
    for g, member in changes:
        assert t.set_host(g, member)
        (model.add if member else model.discard)(g)
        assert t.host == model
        assert all(t.is_member(x) for x in model)
        assert t.macs == {group_mac(x) for x in (*model, *t.held)}
    assert not t.refs  # no membership of its own: the host's are apart


def test_the_host_set_is_bounded():
    t = GroupTable()
    for i in range(HOST_GROUPS_MAX):
        assert t.set_host(bytes([0xE1]) + i.to_bytes(3, "big"), True)
    assert not t.set_host(b"\xe2\x00\x00\x01", True)
    assert len(t.host) == HOST_GROUPS_MAX and not t.is_member(b"\xe2\x00\x00\x01")
    assert t.set_host(b"\xe1\x00\x00\x00", False) and t.set_host(b"\xe2\x00\x00\x01", True)
