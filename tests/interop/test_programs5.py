"""A fifth sweep of unmodified programs on usnet against kernel peers (issue 16).

Each program (tests/peers/programs5.py) runs under `usnet run` and, as the reference, on the
kernel's sockets, against the same kernel peers in the test's namespace (an echo server, Python's
http.server): what it prints must be the same, and its own checks hold on both.
"""

from __future__ import annotations

import pytest

from tests.interop.test_patch import (  # noqa: F401  (fixtures)
    BODY,
    PeerProgram,
    kernel_http_server,
    site,
    stop,
    usnetd_path,
)
from tests.interop.test_programs4 import _echo, _same

pytestmark = pytest.mark.privileged
_P = PeerProgram("programs5.py")


def _both(path: str, *args: str) -> dict:
    """The program on usnet and on the kernel: the same output; the parsed output."""
    return _same(_P.run(path, True, *args), _P.run(path, False, *args))


def test_kernel_sockets_beside_usnet_ones_as_on_the_kernel(usnetd_path):  # noqa: F811
    """Under the patch, socketpair, fromfd (of an AF_UNIX end, and of a TCP socket's descriptor,
    which CPython dups), and asyncio's unix server and connection work beside usnet's TCP."""
    path, _usnet_ip, host_ip = usnetd_path
    with _echo(host_ip) as port:
        found = _both(path, "kernel-beside", host_ip, str(port))
    assert found["pair"] == ["AF_UNIX", "SOCK_STREAM", "pair"] and found["fromfd"] == ["AF_UNIX", "dup", True]
    assert found["tcp-fromfd"] == "via fromfd" and found["tcp-after"] == "still"
    assert found["asyncio"] == ["UNIX LINE\n", "tcp line\n"]


def test_selectors_register_modify_and_unregister_a_closed_socket_as_on_the_kernel(usnetd_path):  # noqa: F811
    path, _usnet_ip, host_ip = usnetd_path
    with _echo(host_ip) as port:
        found = _both(path, "epoll", host_ip, str(port))
    assert found["EpollSelector"][:4] == [True, [["w", 2]], [["r2", 1]], "ping"]


def test_a_thread_pool_of_http_clients_as_on_the_kernel(usnetd_path, site):  # noqa: F811
    path, _usnet_ip, host_ip = usnetd_path
    server, port = kernel_http_server(site, host_ip)
    try:
        found = _both(path, "futures-http", host_ip, str(port), "64")
    finally:
        stop(server)
    assert found["count"] == 64 and len(found["distinct"]) == 1 and f", {len(BODY)}]" in found["distinct"][0]


def test_makefile_in_text_mode_as_on_the_kernel(usnetd_path):  # noqa: F811
    path, _usnet_ip, host_ip = usnetd_path
    with _echo(host_ip) as port:
        found = _both(path, "makefile-text", host_ip, str(port))
    assert found["None"][:2] == ["on", "e\n"]


def test_asyncio_sock_sendfile_as_on_the_kernel(usnetd_path):  # noqa: F811
    path, _usnet_ip, host_ip = usnetd_path
    with _echo(host_ip) as port:
        found = _both(path, "sock-sendfile", host_ip, str(port), "300000")
    assert found["sendfile"] == [300000, 300000, 299000, 599000, True]
