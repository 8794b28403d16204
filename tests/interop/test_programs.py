"""Unmodified programs on usnet against the same programs on kernel sockets (issue 16).

Each protocol both ways: the server under `usnet run` with the kernel's client, and the kernel's
server with the client under `usnet run`, over a TAP in the test's namespace. The programs are
tests/peers/programs.py; pyftpdlib and aiosmtpd come from the test extras.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.interop.test_patch import LIMIT, PeerProgram, child_env, kernel_env, started, stop, usnetd_path  # noqa: F401  (a fixture)

_P = PeerProgram("programs.py")
_command, _run, _kernel_env = _P.command, _P.run, kernel_env




@pytest.mark.privileged
@pytest.mark.parametrize("server_on_usnet", [True, False], ids=["usnet-server", "usnet-client"])
@pytest.mark.parametrize("name", ["ftp", "smtp", "xmlrpc", "mpconn"])
def test_program_pair(usnetd_path, name, server_on_usnet):  # noqa: F811  (the fixture imported above)
    """ftp: pyftpdlib (os.sendfile on the data socket's descriptor) and ftplib, passive and active;
    smtp: aiosmtpd (probes bind(("::1", 0))) and smtplib; xmlrpc both ways; multiprocessing.connection
    (detach, then os.read/os.write on the number) with an AF_INET address and an authkey."""
    if name == "ftp":
        pytest.importorskip("pyftpdlib")
    if name == "smtp":
        pytest.importorskip("aiosmtpd")
    path, usnet_ip, host_ip = usnetd_path
    ip = usnet_ip if server_on_usnet else host_ip
    env_usnet, env_kernel = child_env(path), _kernel_env()
    server, port = started(_command(server_on_usnet, name, "server", ip), env_usnet if server_on_usnet else env_kernel)
    try:
        got = subprocess.run(_command(not server_on_usnet, name, "client", ip, str(port)), capture_output=True,
                             timeout=LIMIT, env=env_kernel if server_on_usnet else env_usnet)
        assert got.returncode == 0, got.stderr.decode()[-3000:]
        assert server.poll() is None
    finally:
        stop(server)
