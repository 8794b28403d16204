"""A fourteenth sweep of unmodified programs on usnet against kernel peers (issue 16): gevent.

gevent's sockets are its own class over the kernel's (`gevent.socket.socket` holds a C
``_socket.socket``), and its monkey patching puts that class in place of usnet's ``socket.socket``:
a gevent program under `usnet run` ran, but every socket it made was the kernel's, behind usnet's
back. usnet now refuses gevent (and eventlet, the same design) with one line, when it is imported
under the patch or is already there at `patch()` (docs/design-notes.md, "A fourteenth sweep:
gevent and eventlet refused"). A library that only probes for gevent (``try: import gevent``) falls back to
the standard sockets, on usnet.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from tests.client.test_greenrefuse import need_gevent
from tests.interop.test_names import dnsmasq_at
from tests.interop.test_patch import (
    LIMIT,
    PeerProgram,
    child_env,
    kernel_env,
    usnetd_path,  # noqa: F401  (a fixture)
)
from tests.interop.test_programs4 import _same, _serve

pytestmark = pytest.mark.privileged
_G = PeerProgram("gevent_peer.py")
_X = PeerProgram("axfr_peer.py")

ZONE = 400  # A records in the zone dnsmasq transfers


def _echo(conn: socket.socket) -> None:
    with conn:
        for _ in range(1000):
            b = conn.recv(65536)
            if not b:
                return
            conn.sendall(b)


def test_gevent_is_refused_in_one_line_not_run_on_the_kernel(usnetd_path):  # noqa: F811
    """On the kernel the gevent program works (StreamServer, 50 greenlets at once, gevent.Timeout);
    under `usnet run` it stops at its import of gevent with one line that says why, and nothing it
    would have sent reached the kernel echo server (before: it ran, on kernel sockets)."""
    need_gevent()
    path, _, host_ip = usnetd_path
    seen: list[str] = []

    def handler(conn: socket.socket) -> None:
        seen.append(conn.getpeername()[0])
        _echo(conn)

    silent = socket.create_server((host_ip, 0))
    with silent, _serve(host_ip, handler) as port:
        args = (host_ip, str(port), str(silent.getsockname()[1]))
        theirs = json.loads(_G.run(path, False, *args))
        assert theirs == {"local": True, "remote": True, "n": 50, "timeout": "Timeout", "from": host_ip}
        n = len(seen)
        assert n == 51
        got = subprocess.run(_G.command(True, *args), capture_output=True, timeout=LIMIT, env=child_env(path))
        err = got.stderr.decode().strip().split("\n")
        assert got.returncode == 1 and got.stdout == b"", err
        assert err[-1].startswith("ImportError: usnet: gevent's sockets are the kernel's"), err
        assert len(seen) == n  # nothing came to the kernel server


def test_a_gevent_probe_falls_back_to_usnet_sockets(usnetd_path):  # noqa: F811
    """A library that uses gevent only when it is there (``try: import gevent``) takes its plain
    path under usnet: its connection comes from usnet's address, as it does from the kernel's on
    the kernel."""
    need_gevent()
    path, usnet_ip, host_ip = usnetd_path
    prog = ("import socket, sys\n"
            "try:\n    import gevent.socket as gs\nexcept ImportError:\n    gs = socket\n"
            "c = gs.create_connection((sys.argv[1], int(sys.argv[2])))\n"
            "c.sendall(b'hi'); print(gs is socket, c.recv(2).decode(), c.getsockname()[0])\n")
    with _serve(host_ip, _echo) as port:
        def run(on_usnet: bool) -> str:
            cmd = [sys.executable, "-c", prog, host_ip, str(port)]
            if on_usnet:
                cmd = [sys.executable, "-m", "usnet", "run", "--", *cmd]
            got = subprocess.run(cmd, capture_output=True, timeout=LIMIT,
                                 env=child_env(path) if on_usnet else kernel_env())
            assert got.returncode == 0, got.stderr.decode()[-2000:]
            return got.stdout.decode().strip()

        assert run(False) == f"False hi {host_ip}"
        assert run(True) == f"True hi {usnet_ip}"


@pytest.fixture
def dnsmasq_auth(usnetd_path):  # noqa: F811  (the fixture imported above)
    """dnsmasq authoritative for usnet.test (AXFR allowed to usnet's address and the kernel's), with
    ZONE A records: a transfer of some 10 kB, over several segments. Yields its address."""
    _, usnet_ip, host_ip = usnetd_path
    with dnsmasq_at(host_ip, "h1.usnet.test", f"--auth-server=ns.usnet.test,{host_ip}", "--auth-zone=usnet.test",
                    f"--auth-peer={usnet_ip},{host_ip}",
                    *[f"--host-record=h{i}.usnet.test,10.9.{i // 250}.{i % 250 + 1}" for i in range(ZONE)]):
        yield host_ip


def test_dnspython_transfers_a_zone_as_on_the_kernel(usnetd_path, dnsmasq_auth):  # noqa: F811
    """dns.query.xfr (into dns.zone.from_xfr) and dns.query.inbound_xfr of a zone of ZONE names from
    dnsmasq, and a transfer it refuses: the same zone, the same refusal, on usnet as on the kernel."""
    pytest.importorskip("dns")
    path, _, _ = usnetd_path
    ours = _X.run(path, True, dnsmasq_auth)
    theirs = _X.run(path, False, dnsmasq_auth)
    found = _same(ours, theirs)
    assert found["names"] == ZONE + 1 and found["same"] and found["soa"]  # and the apex
    assert found["other"] == "TransferError"
