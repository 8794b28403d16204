"""A seventh sweep of unmodified programs on usnet against kernel peers (issue 16).

Each program (tests/peers/programs6.py, which holds the sixth sweep's too) runs under `usnet run`
and, as the reference, on the kernel's sockets, against the same kernel peers in the test's
namespace: what it prints must be the same, and its own checks hold on both.
"""

from __future__ import annotations

import socket

import pytest

from tests.interop.test_patch import LIMIT, PeerProgram, usnetd_path  # noqa: F401  (a fixture)
from tests.interop.test_programs3 import _udp_echo
from tests.interop.test_programs4 import _echo, _same

pytestmark = pytest.mark.privileged
_P = PeerProgram("programs6.py", LIMIT * 2)


def _closed_port(host: str) -> int:
    """A UDP port on `host` nothing listens on (the kernel answers port unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def test_msg_dontwait_waits_within_a_python_timeout_as_on_the_kernel(usnetd_path):  # noqa: F811
    """CPython polls within a socket's timeout before every call, MSG_DONTWAIT or not: an empty
    socket's recv(n, MSG_DONTWAIT) ends in TimeoutError and one the peer answers returns the
    answer (usnet returned EAGAIN at once); a blocking socket's is EAGAIN at once, and so is
    os.read of a socket with a timeout (an O_NONBLOCK descriptor)."""
    path, _usnet_ip, host_ip = usnetd_path
    with _echo(host_ip) as port, _udp_echo(host_ip) as (uport, _heard):
        found = _same(_P.run(path, True, "dontwait", host_ip, str(port), str(uport)),
                      _P.run(path, False, "dontwait", host_ip, str(port), str(uport)))
    eagain = ["BlockingIOError", 11]
    assert found["tcp-empty"] == ["TimeoutError", None] and found["tcp-answer"] == "abc"
    assert found["tcp-into"] == ["TimeoutError", None] and found["tcp-os-read"] == eagain
    assert found["udp-empty"] == ["TimeoutError", None] and found["udp-answer"] == "xyz"
    assert found["tcp-blocking"] == eagain and found["udp-blocking"] == eagain


def test_asyncio_datagram_endpoint_as_on_the_kernel(usnetd_path):  # noqa: F811
    """loop.create_datagram_endpoint under usnet's asyncio policy as on the kernel: the transport's
    socket is a TransportSocket with the socket's options (usnet gave its raw flow, without
    getsockopt/setsockopt); allow_broadcast sets SO_BROADCAST (ignored before: a send to a
    broadcast address without it is EACCES); reuse_port; a connected endpoint's ICMP port
    unreachable reaches error_received as ConnectionRefusedError; AF_INET6; sock= a UDP socket."""
    path, _usnet_ip, host_ip = usnetd_path
    closed = _closed_port(host_ip)
    with _udp_echo(host_ip) as (uport, _heard):
        found = _same(_P.run(path, True, "aio-udp", host_ip, str(uport), str(closed)),
                      _P.run(path, False, "aio-udp", host_ip, str(uport), str(closed)))
    assert found["class"] == "TransportSocket" and found["sockname"] == ["0.0.0.0", True]
    assert found["broadcast"] == 1 and found["reuseport"] == 1 and found["no-broadcast"] == 0
    assert found["options"] == [131072, 7, 3]
    assert found["echo"][:2] == ["data", "hello"] and found["echo"][2][0] == host_ip
    assert found["broadcast-refused"] == ["error", "PermissionError", 13]
    assert found["refused"] == ["error", "ConnectionRefusedError", 111] and found["peername"] is True
    assert found["v6"] == [True, "::", 4, 0]
    assert found["sock"] == ["TransportSocket", True] and found["sock-echo"][:2] == ["data", "again"]
