"""A fifteenth sweep of unmodified programs on usnet against kernel peers (issue 16): asyncpg
(a Cython protocol on the asyncio loop's transports) against a real postgres; paho-mqtt (its own
socket, select loop and wake-up socketpair, in a thread of its own) and aiomqtt (paho on asyncio's
add_reader/add_writer) against a real mosquitto; asyncssh (pure Python on asyncio: exec, SFTP, a
local port forward whose listener is a bound socket handed to loop.create_server) against sshd.

Each program (tests/peers/asyncpg_client.py, mqtt_client.py, asyncssh_client.py) runs under `usnet run` and, as the
reference, on the kernel's sockets, against the same kernel peer: what it prints must be the
same, and the test says what it must be.
"""

from __future__ import annotations

import json
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.test_patch import LIMIT, PeerProgram, usnetd_path  # noqa: F401  (a fixture)
from tests.interop.test_programs4 import _same, _serve
from tests.interop.test_programs11 import _server, need
from tests.interop.test_programs12 import SSH_PORT, sshd  # noqa: F401  (a fixture)
from tests.interop.test_programs13 import PG_PORT, postgres  # noqa: F401  (a fixture)

pytestmark = pytest.mark.privileged
_APG = PeerProgram("asyncpg_client.py", LIMIT * 3)
_MQ = PeerProgram("mqtt_client.py", LIMIT * 2)
MQTT_PORT = 1883  # (the test's own namespace: nothing else there)


def _both(program: PeerProgram, path: str, usnet_ip: str, host_ip: str, *args: str) -> dict:
    """The program under `usnet run`, then on the kernel: what each printed, the same but for
    "from" (the address the connection came from, where the program says), which must be usnet's
    on usnet (a program that quietly stayed on the kernel would pass otherwise)."""
    ours, theirs = (json.loads(program.run(path, on_usnet, *args)) for on_usnet in (True, False))
    if "from" in ours or "from" in theirs:
        assert [ours.pop("from", None), theirs.pop("from", None)] == [usnet_ip, host_ip]
    return _same(json.dumps(ours), json.dumps(theirs))


@pytest.mark.parametrize("program", ["big", "notify", "cancelled", "terminated", "pool", "refused"])
def test_asyncpg_against_postgres_as_on_the_kernel(usnetd_path, postgres, program):  # noqa: F811
    """asyncpg on usnet's loop: 1 MB bytea values, COPY of 20,000 rows both ways and a cursor;
    notifications that arrive on an idle connection (the loop must see it readable); a query's
    timeout and a cancelled task (asyncpg cancels on a second connection) and a statement_timeout,
    each leaving the connection usable; a backend terminated while idle (its EOF seen with no query
    pending); a pool under 40 concurrent queries; a refused port."""
    pytest.importorskip("asyncpg")
    usnet_ip = usnetd_path[1]
    path, host_ip = postgres
    found = _both(_APG, path, usnet_ip, host_ip, program, host_ip, str(PG_PORT))
    cancelled = ["asyncpg.exceptions.QueryCanceledError", "57014"]
    expected = {
        "big": {"back": [True] * 4, "copy": [True, [20000, 199990000]], "walked": 199990000},
        "notify": {"notes": [["ch", "n0"], ["ch", "n1"], ["ch", "n2"]], "after": 7},
        "cancelled": {"timeout": ["builtins.TimeoutError", None], "after_timeout": 1, "task": "cancelled",
                      "after_task": 2, "statement": cancelled, "after_statement": 3, "backends": 1},
        "terminated": {"terminate": True, "closed_idle": True,
                       "next": ["asyncpg.exceptions._base.InterfaceError", None], "admin": 2},
        "pool": {"ok": 200, "size": 10, "backends": 1},
        "refused": {"refused": [["builtins.ConnectionRefusedError", None], 111]},
    }
    assert found == expected[program]


def test_asyncpg_over_tls_as_on_the_kernel(usnetd_path, postgres, ca, tmp_path):  # noqa: F811
    """asyncpg asks for TLS (SSLRequest, then `loop.start_tls` on usnet's transport): verified
    against the test's CA and the server's address, 1 MB both ways, the server's pg_stat_ssl says
    encrypted; a context that does not trust the CA fails its verification."""
    pytest.importorskip("asyncpg")
    path, host_ip = postgres
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    found = _both(_APG, path, usnetd_path[1], host_ip, "tls", host_ip, str(PG_PORT), str(tmp_path / "ca.pem"))
    assert found == {"back": True, "ssl": True, "untrusted": ["SSLCertVerificationError", 20]}


@pytest.fixture
def mosquitto(tap_domain, usnetd_path) -> Iterator[tuple[str, str]]:  # noqa: F811
    """mosquitto on the kernel's side of the TAP, listening on its address alone, anonymous
    clients allowed, nothing persisted; yields (the socket path of usnetd, its address). The
    domain has its loopback netif, as usnetd's own config has it: paho's loop_start makes its
    wake-up pair by a TCP listener on 127.0.0.1 (`_socketpair_compat`), on usnet then."""
    tap_domain[0].add_loopback()
    path, _usnet_ip, host_ip = usnetd_path
    with tempfile.TemporaryDirectory(prefix="usnet-mqtt-") as top:
        conf = Path(top) / "mosquitto.conf"
        conf.write_text(f"listener {MQTT_PORT} {host_ip}\nallow_anonymous true\npersistence false\n"
                        "log_dest stderr\nlog_type all\nuser root\n")
        with _server([need("mosquitto"), "-c", str(conf)], b" running"):
            yield path, host_ip


@pytest.mark.parametrize("program", ["messages", "will", "aio", "refused"])
def test_paho_mqtt_against_mosquitto_as_on_the_kernel(usnetd_path, mosquitto, program):  # noqa: F811
    """paho-mqtt: QoS 0, 1 and 2 messages up to 256 KB whole and in order, a retained message; a
    client process killed with SIGKILL has its will published by the broker (its connection must
    end as the kernel ends a dead process's), a clean one's is not; a refused port."""
    pytest.importorskip("paho.mqtt")
    usnet_ip = usnetd_path[1]
    path, host_ip = mosquitto
    found = _both(_MQ, path, usnet_ip, host_ip, program, host_ip, str(MQTT_PORT))
    expected = {
        "messages": {"granted": [2], "same": True, "n": 12, "retained": ["r/kept", 1, True, "retained"]},
        "will": {"clean_ready": "connected", "clean_exit": 0, "killed_ready": "connected", "killed_exit": -9,
                 "will": ["will/killed", 1, "killed is gone"]},
        "aio": {"whole": True, "ended": ["MqttError", "Disconnected during message iteration"],
                "after": "MqttCodeError"},
        "refused": {"refused": ["ConnectionRefusedError", 111]},
    }
    assert found == expected[program]


_SSH = PeerProgram("asyncssh_client.py", LIMIT * 2)


def _echo(conn: socket.socket) -> None:
    """A kernel echo: what comes back until the EOF, then its own EOF."""
    for _ in range(1 << 16):
        b = conn.recv(1 << 16)
        if not b:
            break
        conn.sendall(b)
    conn.shutdown(socket.SHUT_WR)
    conn.close()


@pytest.mark.parametrize("program", ["exec", "sftp", "forward", "refused"])
def test_asyncssh_against_sshd_as_on_the_kernel(tap_domain, sshd, program):  # noqa: F811
    """asyncssh on usnet's loop against OpenSSH: exec with 1 MB on stdin and four sessions at
    once, SFTP of 4 MB both ways, a local port forward that listens on 127.0.0.1 (usnet's
    loopback netif, as usnetd's own config has it) to a kernel echo, 1 MB each way on three
    connections with half-closes, the listener's close refusing the next; a remote port forward
    (the sshd listens, each connection comes back to an echo of the program's on 127.0.0.1); a
    direct-tcpip channel; a refused port."""
    pytest.importorskip("asyncssh")
    tap_domain[0].add_loopback()
    path, host_ip, keys = sshd
    with _serve(host_ip, _echo) as echo:
        found = _same(*(_SSH.run(path, on_usnet, program, host_ip, str(SSH_PORT), *keys, str(echo))
                        for on_usnet in (True, False)))
    expected = {
        "exec": {"cat": True, "seq": True, "bad": [7, "oops\n"], "many": ["100000", "200000", "300000", "400000"]},
        "sftp": {"same": True, "listing": [".", "..", "back", "remote", "src"], "missing": "SFTPNoSuchFile"},
        "forward": {"forwarded": [True] * 3, "after_close": "ConnectionRefusedError", "remote": [True] * 2,
                    "direct": True},
        "refused": {"refused": ["ConnectionRefusedError", 111]},
    }
    assert found == expected[program]


def test_asyncssh_server_serves_openssh_clients_as_on_the_kernel(usnetd_path):  # noqa: F811
    """asyncssh's server listening on usnet's address (under `usnet run`; on the kernel, the
    TAP's kernel address), OpenSSH's `ssh` on the kernel's sockets its clients, four at once: 1 MB
    up each, its SHA-256 and 512 KB back, the exit status 5."""
    pytest.importorskip("asyncssh")
    path, usnet_ip, host_ip = usnetd_path
    need("ssh")
    found = _same(*(_SSH.run(path, on_usnet, "server", usnet_ip if on_usnet else host_ip, "0", "-", "-")
                    for on_usnet in (True, False)))
    assert found == {"clients": [[5, True, True]] * 4}
