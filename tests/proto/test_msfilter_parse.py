"""The full-state filter's layouts (usnet.proto.cmsg: struct ip_msfilter, struct group_filter) and the
socket face's handling of them (usnet.client.mcast), on any bytes: a filter read as its fields
say, or a clear OSError (EINVAL, ENOBUFS, ENODEV, EADDRNOTAVAIL) and the socket's state untouched; never a crash."""

from __future__ import annotations

import errno
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from usnet.client.mcast import IP_MSFILTER, MCAST_MSFILTER, Multicast
from usnet.proto.cmsg import (
    GROUP_FILTER,
    GroupFilter,
    pack_group_filter,
    pack_ip_msfilter,
    parse_group_filter,
    parse_ip_msfilter,
)
from usnet.proto.cmsg import (
    IP_MSFILTER as MSF_HEAD,
)

_CLEAR = {errno.EINVAL, errno.ENOBUFS, errno.ENODEV, errno.EADDRNOTAVAIL}


def _head_and_list(head: int, each: int) -> st.SearchStrategy[bytes]:
    """Bytes that are mostly a head with a small numsrc and some list (so the reads get past the checks)."""
    return st.builds(lambda h, n, rest: h[:head - 4] + struct.pack("=I", n) + rest,
                     st.binary(min_size=head - 4, max_size=head - 4), st.integers(0, 12),
                     st.binary(max_size=each * 12 + 3))


@given(st.one_of(st.binary(max_size=400), _head_and_list(16, 4)), st.sampled_from([-1, 10, 64]))
def test_an_ip_msfilter_of_any_bytes_is_read_or_refused_clearly(b: bytes, most: int) -> None:
    try:
        f = parse_ip_msfilter(b, most)
    except OSError as e:
        assert e.errno in (errno.EINVAL, errno.ENOBUFS)
        assert len(b) < MSF_HEAD.size or most >= 0  # a head alone is refused only when short
        return
    group, iface, fmode, numsrc = MSF_HEAD.unpack_from(b)
    assert (f.group, f.interface, f.fmode, f.numsrc) == (group, iface, fmode, numsrc)
    if most >= 0:
        assert numsrc <= most and len(b) >= 16 + 4 * numsrc
        assert b"".join(f.sources) == b[16:16 + 4 * numsrc]
        # what getsockopt writes back of it, asked for all of them, is the struct read
        assert pack_ip_msfilter(f, fmode, list(f.sources), len(b)) == b[:16 + 4 * numsrc]


@given(st.one_of(st.binary(max_size=600), _head_and_list(144, 128)), st.sampled_from([-1, 10, 64]))
def test_a_group_filter_of_any_bytes_is_read_or_refused_clearly(b: bytes, most: int) -> None:
    try:
        f = parse_group_filter(b, most)
    except OSError as e:
        assert e.errno in (errno.EINVAL, errno.ENOBUFS)
        return
    index, group, fmode, numsrc = GROUP_FILTER.unpack_from(b)
    assert (f.interface, f.group, f.fmode, f.numsrc) == (index, group, fmode, numsrc)
    if most >= 0:
        assert numsrc <= most and [len(s) for s in f.sources] == [128] * numsrc
        assert b"".join(f.sources) == b[144:144 + 128 * numsrc]


@given(st.integers(0, 20), st.integers(0, 20), st.integers(144, 144 + 128 * 25))
def test_a_read_back_holds_what_was_asked_and_fits_the_buffer(have: int, asked: int, room: int) -> None:
    """numsrc is the real count; the sources copied are as many as the caller asked for and its buffer holds."""
    srcs = [bytes([10, 0, 0, i]) for i in range(have)]
    req = GroupFilter(3, bytes(128), 0, asked, ())
    out = pack_group_filter(req, 1, socket.AF_INET, srcs, room)
    n = min(have, asked, (room - 144) // 128)
    assert len(out) == 144 + 128 * n and struct.unpack_from("=II", out, 136) == (1, have)
    req4 = GroupFilter(bytes(4), bytes(4), 0, asked, ())
    out4 = pack_ip_msfilter(req4, 0, srcs, 16 + room // 32)
    assert len(out4) == 16 + 4 * min(have, asked, room // 128)


@given(st.sampled_from([(4, IP_MSFILTER), (4, MCAST_MSFILTER), (6, MCAST_MSFILTER)]),
       st.one_of(st.binary(max_size=1200), _head_and_list(16, 4), _head_and_list(144, 128), st.integers()),
       st.one_of(st.binary(max_size=1200), st.integers(0, 2000)))
def test_a_socket_given_any_filter_refuses_it_clearly_and_keeps_its_state(which, value, buf) -> None:
    """A socket (not bound: nothing goes to a domain) in one group with an INCLUDE filter: any set
    of IP_MSFILTER / MCAST_MSFILTER either succeeds or is a clear OSError with the state as it
    was; any getsockopt buffer gives bytes or a clear OSError."""
    family, opt = which
    m = Multicast(family)
    group = socket.inet_aton("239.1.1.1") if family == 4 else socket.inet_pton(socket.AF_INET6, "ff05::1")
    m.groups.append(group)
    m._keep(group, True, [group[:4] if family == 4 else group])
    before = (list(m.groups), dict(m.filters), {g: list(s) for g, s in m.slists.items()})
    try:
        m.set(opt, value, None, 1, None)
    except OSError as e:
        assert e.errno in _CLEAR, e
        assert (m.groups, m.filters, m.slists) == before
    assert set(m.filters) == set(m.slists) <= set(m.groups)
    for g, f in m.filters.items():
        assert f.sources == frozenset(m.slists[g])
    try:
        got = m.get_filter(opt, buf, None, 1)
    except OSError as e:
        assert e.errno in _CLEAR, e
    else:
        assert isinstance(got, bytes) and len(got) <= max(len(buf) if isinstance(buf, bytes) else buf, 4)
