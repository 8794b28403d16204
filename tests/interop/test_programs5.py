"""A fifth sweep of unmodified programs on usnet against kernel peers (issue 16).

Each program (tests/peers/programs5.py) runs under `usnet run` and, as the reference, on the
kernel's sockets, against the same kernel peers in the test's namespace (an echo server, Python's
http.server): what it prints must be the same, and its own checks hold on both.
"""

from __future__ import annotations

import pytest

from tests.interop.test_patch import (  # noqa: F401  (fixtures)
    BODY,
    LIMIT,
    PeerProgram,
    child_env,
    kernel_env,
    kernel_http_server,
    site,
    started,
    stop,
    usnetd_path,
)
from tests.interop.test_programs4 import _at_once, _echo, _same

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


@pytest.mark.parametrize("placement", ["usnet-server", "usnet-client"])
def test_wsgiref_simple_server_as_on_the_kernel(usnetd_path, placement):  # noqa: F811
    """wsgiref's make_server and a kernel http.client (or the reverse): the environ it builds
    from the socket (REMOTE_ADDR, SERVER_NAME through getfqdn, SERVER_PORT, a 200 kB body
    through wsgi.input) is what it builds kernel to kernel."""
    path, usnet_ip, host_ip = usnetd_path
    outs = []
    for server_on_usnet, client_on_usnet in ((placement == "usnet-server", placement == "usnet-client"),
                                             (False, False)):
        ip = usnet_ip if server_on_usnet else host_ip
        server, port = started(_P.command(server_on_usnet, "wsgi-server", ip),
                               child_env(path) if server_on_usnet else kernel_env())
        try:
            out = _P.run(path, client_on_usnet, "wsgi-client", ip, str(port))
            outs.append(out.replace(ip, "IP"))
            server.wait(LIMIT)
            assert server.returncode == 0
        finally:
            stop(server)
    found = _same(*outs)
    assert [r[0] for r in found["wsgi"]] == [200, 200, 200] and found["wsgi"][1][2]["REQUEST_METHOD"] == "POST"


def test_tls_sni_callback_and_alpn_as_on_the_kernel(usnetd_path, ca, tmp_path):  # noqa: F811
    """An SSLContext whose sni_callback swaps the context for one name, with ALPN on both sides,
    served under `usnet run` to a kernel client: the names the server saw, the protocols chosen
    (none when they share none), as kernel to kernel."""
    path, usnet_ip, host_ip = usnetd_path
    cacert, cert, key = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(cacert))
    leaf = ca.issue_cert(usnet_ip, host_ip, "sni.test", "other.test")
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    outs = []
    for on_usnet in (True, False):
        ip = usnet_ip if on_usnet else host_ip
        server, port = started(_P.command(on_usnet, "tls-server", ip, str(cert), str(key)),
                               child_env(path) if on_usnet else kernel_env())
        try:
            outs.append(_P.run(path, False, "tls-client", ip, str(port), str(cacert)).replace(ip, "IP"))
        finally:
            stop(server)
    found = _same(*outs)
    assert [r[0][1:3] for r in found["tls"]] == [["sni.test", "http/1.1"], ["other.test", "h2"], [None, None]]


def test_reverse_names_and_getfqdn_as_glibc(usnetd_path, tmp_path):  # noqa: F811
    """gethostbyaddr, getnameinfo (NI_NUMERICHOST, NI_NAMEREQD) and getfqdn through the same hosts
    file, under `usnet run` and with glibc."""
    path, _usnet_ip, host_ip = usnetd_path
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
                     f"{host_ip} web.example.test web\n10.99.0.7 seven.test alias7\nfd00:99::8 eight.test\n")
    addrs = [host_ip, "10.99.0.7", "fd00:99::8", "127.0.0.1"]  # (all in the file: no DNS is asked)
    ours, theirs = _at_once(path, [(True, ["names", *addrs]), (False, ["names", *addrs])], hosts=str(hosts),
                            program=_P)
    assert ours.startswith("{") and theirs.startswith("{"), (ours, theirs)
    found = _same(ours, theirs)
    assert found["10.99.0.7"][0] == ["seven.test", ["alias7"], ["10.99.0.7"]]
