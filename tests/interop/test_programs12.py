"""A twelfth sweep of unmodified programs on usnet against kernel peers (issue 16): paramiko, a
pure-Python SSH client (a transport thread per connection, sockets with 0.1 s timeouts, select),
against a real OpenSSH sshd on the kernel's side of the TAP.

The sshd runs in the test's own namespace with its own config (host key made by ssh-keygen in
tmp, the client's key authorised by AuthorizedKeysFile in tmp, no PAM, no pid file) and is killed
at the end. Each program (tests/peers/ssh_client.py) runs under `usnet run` and, as the reference,
on the kernel's sockets, against the same sshd: what it prints must be the same.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.test_patch import (
    LIMIT,
    PeerProgram,
    usnetd_path,  # noqa: F401  (a fixture)
)
from tests.interop.test_programs4 import _same, _serve
from tests.interop.test_programs11 import _server, need, silent  # noqa: F401  (silent: a fixture)

pytestmark = pytest.mark.privileged
_P = PeerProgram("ssh_client.py", LIMIT * 2)
SSH_PORT = 22  # (the test's own namespace: nothing else there)
SSHD = "/usr/sbin/sshd"  # (sshd re-executes itself: an absolute path)


def _keygen(path: Path) -> None:
    subprocess.run([need("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True,
                   timeout=LIMIT, capture_output=True)


@pytest.fixture
def sshd(usnetd_path, tmp_path) -> Iterator[tuple[str, str, list[str]]]:  # noqa: F811
    """OpenSSH's sshd on the kernel's side of the TAP, listening on its address alone; yields (the
    socket path of usnetd, its address, the arguments after HOST PORT of tests/peers/ssh_client.py:
    the client's key and a known_hosts file with the sshd's host key)."""
    path, _usnet_ip, host_ip = usnetd_path
    if not os.access(SSHD, os.X_OK):
        pytest.fail(f"{SSHD} is missing (scripts/test-deps.sh installs openssh-server)")
    _keygen(tmp_path / "host_key")
    _keygen(tmp_path / "client_key")
    (tmp_path / "authorized_keys").write_bytes((tmp_path / "client_key.pub").read_bytes())
    (tmp_path / "known_hosts").write_text(f"{host_ip} {(tmp_path / 'host_key.pub').read_text()}")
    cfg = tmp_path / "sshd_config"
    cfg.write_text("\n".join([
        f"ListenAddress {host_ip}:{SSH_PORT}", f"HostKey {tmp_path / 'host_key'}",
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}", "StrictModes no", "UsePAM no",
        "PidFile none", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", "AllowTcpForwarding yes", "Subsystem sftp internal-sftp",
        "GatewayPorts clientspecified",  # (a remote forward on the address the client names: test_programs15.py)
        "LogLevel INFO", ""]))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # (its privilege separation's chroot, as Debian's unit makes)
    with _server([SSHD, "-D", "-e", "-f", str(cfg)], b"Server listening"):
        yield path, host_ip, [str(tmp_path / "client_key"), str(tmp_path / "known_hosts")]


def _both(server: tuple[str, str, list[str]], program: str, *args: str) -> dict:
    """paramiko's `program` on usnet and on the kernel against the sshd: what it printed, the same."""
    path, host_ip, keys = server
    outs = [_P.run(path, on_usnet, program, host_ip, str(SSH_PORT), *keys, *args) for on_usnet in (True, False)]
    return _same(*outs)


def test_paramiko_exec_command_as_on_the_kernel(sshd):
    """exec_command: `cat` echoing 1 MB fed on its stdin by a thread while its stdout is read,
    `seq` writing 1.3 MB (SHA-256 of each), stderr and exit status 7."""
    res = _both(sshd, "exec")
    assert res == {"cat": [True, 0], "seq": [1288895, True, 0], "status": ["out\n", "err\n", 7]}


def test_paramiko_sftp_put_get_4mb_as_on_the_kernel(sshd, tmp_path):
    """SFTP put and get of a 4 MB file (SHA-256 back both through get and a prefetched read)."""
    res = _both(sshd, "sftp", str(tmp_path))
    assert res == {"put": 4 << 20, "get": True, "read": True, "listed": True}


def _echo(conn: socket.socket) -> None:
    with conn:
        for _ in range(1 << 16):  # (1 MB in chunks of 16 bytes or more: within the count)
            b = conn.recv(1 << 16)
            if not b:
                conn.shutdown(socket.SHUT_WR)
                return
            conn.sendall(b)


def test_paramiko_direct_tcpip_forward_1mb_as_on_the_kernel(sshd):
    """A direct-tcpip channel through the sshd to a kernel echo server in the namespace: 1 MB
    echoed whole, the echo server's EOF back through the channel."""
    _path, host_ip, _keys = sshd
    with _serve(host_ip, _echo, join=True) as port:
        res = _both(sshd, "forward", str(port))
    assert res == {"echoed": [1 << 20, True], "eof": True}


def test_paramiko_transport_keepalive_as_on_the_kernel(sshd):
    """set_keepalive(1): the transport thread's keepalives sent while idle (its socket's read
    timeouts add up to the interval), the connection alive after."""
    res = _both(sshd, "keepalive")
    assert res == {"keepalives": True, "then": "alive\n", "active": True}


def test_paramiko_server_killed_mid_session_as_on_the_kernel(sshd):
    """The sshd process of the connection killed mid-session (by its own command): the channel's
    EOF with no exit status (-1), the transport inactive, the next exec_command's error."""
    res = _both(sshd, "killed")
    assert res["first"] == "up\n" and res["rest"] == "" and res["status"] == -1 and res["active"] is False
    assert res["next"][0] == "paramiko.ssh_exception.SSHException"


def test_paramiko_server_killed_while_streaming_as_on_the_kernel(sshd):
    """The sshd process killed while it streams /dev/zero to paramiko as fast as it reads (its
    window adjusts flowing back): the zeros before the end, then the same end as above. What
    ended the transport thread is the sshd's kernel's choice, by when the kill lands: a FIN (then
    maybe a RST for our window adjusts: EOF all the same, as tcp_fin's SOCK_DONE comes first), or
    a RST at once, our adjusts unread (ECONNRESET); never EPIPE, which usnet's recv said after a
    FIN and a RST (tests/interop/test_socket_semantics.py)."""
    path, host_ip, keys = sshd
    outs = [json.loads(_P.run(path, on_usnet, "killed-streaming", host_ip, str(SSH_PORT), *keys))
            for on_usnet in (True, False)]
    for o in outs:
        assert o.pop("ended-by")[0] in ("builtins.EOFError", "builtins.ConnectionResetError"), o
    res = _same(*(json.dumps(o) for o in outs))
    assert res["first"] == "up\n" and res["zeros"] and res["status"] == -1 and res["active"] is False
    assert res["next"][0] == "paramiko.ssh_exception.SSHException"


def test_paramiko_connect_and_banner_timeouts_as_on_the_kernel(sshd, silent):  # noqa: F811
    """connect(timeout=0.5) to an address of the link nobody has (ARP unanswered),
    banner_timeout=0.5 against a listener that never speaks, and a refused port: the error
    paramiko raises and the time it took in timeouts, as on the kernel."""
    _path, host_ip, _keys = sshd
    res = _both(sshd, "timeouts", host_ip.rsplit(".", 1)[0] + ".99", str(silent))
    assert res["connect"] == [["builtins.TimeoutError", None, "timed out"], 1]
    assert res["banner"][0][0] == "paramiko.ssh_exception.SSHException" and res["banner"][1] == 1
    assert res["refused"][0][0] == "paramiko.ssh_exception.NoValidConnectionsError" and res["refused"][1] == 0

