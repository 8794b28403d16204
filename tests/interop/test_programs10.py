"""A tenth sweep of unmodified programs on usnet (issue 16): servers under usnet, kernel clients
in the test's namespace, compared with the same server on kernel sockets.

The programs are in tests/peers/programs6.py (the sixth sweep's on); each runs under `usnet run`
and, as the reference, on the kernel's sockets: what it prints must be the same on both.
"""

from __future__ import annotations

import contextlib
import socket

import pytest

from tests.interop.test_patch import (
    LIMIT,
    usnetd_path,  # noqa: F401  (a fixture)
)
from tests.interop.test_programs4 import _same, _serve
from tests.interop.test_programs9 import _P

pytestmark = pytest.mark.privileged


def _connect_back(conn: socket.socket) -> None:
    """A peer that connects back on the program's word: a port on a line, a connection to it
    from here (to the program's address) that says "hello", held until the program closes it."""
    with conn:
        line = conn.recv(20)
        if not line.endswith(b"\n"):
            return
        with socket.create_connection((conn.getpeername()[0], int(line)), timeout=LIMIT) as back:
            back.sendall(b"hello")
            with contextlib.suppress(OSError):
                back.recv(10)


def test_forked_child_closes_its_listener_while_a_connection_comes_as_on_the_kernel(usnetd_path):  # noqa: F811
    """A forked child waits in accept() (a Python timeout) on its inherited listener; another
    thread of the child closes it, then a connection comes. CPython's poll wakes and its accept
    is on descriptor -1: EBADF at once, and the connection stays queued for the listener's
    other holder, the parent, whose accept gets it."""
    path, _usnet_ip, host_ip = usnetd_path
    with _serve(host_ip, _connect_back) as port:
        outs = [_P.run(path, on_usnet, "fork-accept-closed", host_ip, str(port)) for on_usnet in (True, False)]
    found = _same(*outs)
    assert found == {"accept": ["OSError", 9], "before-timeout": True, "status": 0, "parent-got": "hello"}
