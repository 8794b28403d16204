"""usnet.proto.cmsg and usnet.client.rxinfo's cmsg packing: the timeout kept in jiffies reads back
as a kernel socket's (hypothesis over timevals, compared with the running kernel's own
setsockopt/getsockopt on an unbound socket), the pktinfo layouts round-trip, and put_cmsgs cuts
as Linux's put_cmsg."""

from __future__ import annotations

import errno
import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.client.rxinfo import put_cmsgs
from usnet.client.sockopts import kernel_hz
from usnet.proto.cmsg import TIMEVAL, In6Pktinfo, InPktinfo, jiffies_timeval, timeval_jiffies

_K = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never bound: no traffic


def _kernel(value: bytes):
    try:
        _K.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    except OSError as e:
        return errno.errorcode[e.errno]
    return _K.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16)


def _ours(value: bytes, hz: int):
    try:
        return jiffies_timeval(timeval_jiffies(value, hz), hz)
    except OSError as e:
        return errno.errorcode[e.errno]


@settings(max_examples=300, deadline=None)
@given(st.integers(-3, 10**7), st.one_of(st.integers(-2, 10**6 + 2), st.integers(0, 999_999)))
def test_a_timeout_reads_back_as_the_kernels(sec, usec):
    _K.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, TIMEVAL.pack(7, 0))  # a known state before
    value = TIMEVAL.pack(sec, usec)
    assert _ours(value, kernel_hz()) == _kernel(value)  # the same timeval, or the same errno


@given(st.integers(-(2**31), 2**31 - 1), st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4),
       st.binary(min_size=16, max_size=16), st.integers(0, 2**32 - 1))
def test_pktinfo_layouts_round_trip(ifindex, spec, addr, a6, index6):
    p = InPktinfo(ifindex, spec, addr)
    assert len(p.pack()) == 12 and InPktinfo.unpack(p.pack()) == p
    q = In6Pktinfo(a6, index6)
    assert len(q.pack()) == 20 and In6Pktinfo.unpack(q.pack()) == q


@given(st.lists(st.binary(max_size=40), max_size=5), st.integers(0, 300))
def test_put_cmsgs_cuts_as_linux(datas, room):
    msgs = [(1, i, d) for i, d in enumerate(datas)]
    out, cut = put_cmsgs(msgs, room)
    assert [m[:2] for m in out] == [m[:2] for m in msgs[: len(out)]]  # a prefix, in order
    assert all(msgs[i][2].startswith(o[2]) for i, o in enumerate(out))
    whole = all(o[2] == m[2] for o, m in zip(out, msgs)) and len(out) == len(msgs)
    assert cut == (not whole)
    used = sum(16 + (len(o[2]) + 7) // 8 * 8 for o in out[:-1]) + (16 + len(out[-1][2]) if out else 0)
    assert used <= room or not out
