"""A sixth sweep of unmodified programs on usnet against kernel peers (issue 16).

Each program (tests/peers/programs6.py) runs under `usnet run` and, as the reference, on the
kernel's sockets, against the same kernel peer in the test's namespace: what it prints must be
the same, and its own checks hold on both.
"""

from __future__ import annotations

import pytest

from tests.interop.test_patch import PeerProgram, usnetd_path  # noqa: F401  (fixtures)
from tests.interop.test_programs4 import _echo, _same

pytestmark = pytest.mark.privileged
_P = PeerProgram("programs6.py")


def test_so_rcvlowat_on_a_tcp_connection_as_on_the_kernel(usnetd_path):  # noqa: F811
    """SO_RCVLOWAT was fixed at 1 in usnet (setting it ENOPROTOOPT): the values Linux keeps
    (INT_MAX for a negative one, 1 for 0, half tcp_rmem's maximum or half SO_RCVBUF at most, UDP's
    uncapped); select not readable below the mark and readable at it, or at the peer's FIN; a
    blocking MSG_PEEK waiting for it (a peek, as Linux's blocking read that copied part of the mark
    before it slept is woken by its timeout only), a non-blocking one taking what is queued, a
    Python timeout running out below it."""
    path, _usnet_ip, host_ip = usnetd_path
    with _echo(host_ip) as port:
        found = _same(_P.run(path, True, "rcvlowat", host_ip, str(port)),
                      _P.run(path, False, "rcvlowat", host_ip, str(port)))
    assert found["kept"][:3] == [[None, 100], [None, 1], [None, found["kept"][3][1]]]
    assert [found[k] for k in ("half", "full", "recv")] == [False, True, "1234567890"]
    assert found["timeout"] == found["timeout-peek"] == ["TimeoutError", None] and found["at-one"] is True
    assert found["dontwait"] == "abc" and found["dontwait-empty"] == ["BlockingIOError", 11]
    assert found["blocking"] == found["blocking-read"] == "vwxyzABCDE"
    assert found["eof-readable"] is True and found["eof"] == ["zz", ""]
    assert found["locked"] == 10000 and found["udp"] == [[None, 7], [None, 2**31 - 1], [None, 1]]
