"""An eleventh sweep of unmodified programs and libraries on usnet against kernel peers (issue 16):
redis-py, sync and redis.asyncio, against a real redis-server on the kernel's side of the TAP;
pymemcache against a real memcached there.

Each program (tests/peers/stores.py) runs under `usnet run` and, as the reference, on the kernel's
sockets, against the same server: what it prints must be the same, and its own checks hold on both.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from tests.interop.test_patch import (
    LIMIT,
    PeerProgram,
    usnetd_path,  # noqa: F401  (a fixture)
)
from tests.interop.test_programs4 import _same

pytestmark = pytest.mark.privileged
_P = PeerProgram("stores.py", LIMIT * 2)
REDIS_PORT = 6379  # (the test's own namespace: nothing else there)
MEMCACHED_PORT = 11211
MODES = ["sync", "async"]


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is missing (scripts/test-deps.sh installs it)")
    return path


def _drain(fd: int) -> None:
    """Read a server's log to its end (its kill), and drop it."""
    with contextlib.suppress(OSError):
        for _ in range(1 << 20):  # (64 GiB of log: never; the kill ends it)
            if not os.read(fd, 1 << 16):
                return


@contextlib.contextmanager
def _server(cmd: list[str], ready: bytes) -> Iterator[None]:
    """A server program on the kernel's side (this namespace), up once its log (stdout and
    stderr) says `ready`; killed at the end."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    drain = None
    try:
        assert proc.stdout is not None
        fd, log = proc.stdout.fileno(), b""
        for _ in range(200):  # its log to the line that says it is ready (unbuffered: see _Lines)
            if ready in log or not select.select([fd], [], [], LIMIT)[0]:
                break
            more = os.read(fd, 1 << 16)
            if not more:
                break
            log += more
        assert ready in log, log.decode()[-2000:]
        drain = threading.Thread(target=_drain, args=(fd,), daemon=True)  # (memcached -vv logs each
        drain.start()  # command: a full pipe would stop it)
        yield
    finally:
        proc.kill()
        proc.wait(10)
        if drain is not None:
            drain.join(LIMIT)  # (the kill ended its log)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def redis_server(usnetd_path) -> Iterator[tuple[str, str]]:  # noqa: F811
    """redis-server on the kernel's side of the TAP, bound to its address, nothing saved; yields
    (the socket path of usnetd, its address)."""
    path, _usnet_ip, host_ip = usnetd_path
    with _server([need("redis-server"), "--bind", host_ip, "--port", str(REDIS_PORT), "--save", "",
                  "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no", "--logfile", "",
                  "--dir", "/tmp"], b"Ready to accept connections"):
        yield path, host_ip


@pytest.fixture
def memcached(usnetd_path) -> Iterator[tuple[str, str]]:  # noqa: F811
    """memcached on the kernel's side of the TAP, TCP only, items up to 2 MB; as redis_server."""
    path, _usnet_ip, host_ip = usnetd_path
    with _server([need("memcached"), "-l", host_ip, "-p", str(MEMCACHED_PORT), "-U", "0", "-u", "root",
                  "-I", "2m", "-c", "1024", "-vv"], b"server listening"):
        yield path, host_ip


def _both(server: tuple[str, str], program: str, mode: str, *args: str, port: int = REDIS_PORT) -> dict:
    """Client `program` on usnet and on the kernel against `server`: what it printed, the same."""
    path, host_ip = server
    outs = [_P.run(path, on_usnet, program, mode, host_ip, str(port), *args) for on_usnet in (True, False)]
    return _same(*outs)


@pytest.mark.parametrize("mode", MODES)
def test_redis_big_values_and_pipelines_as_on_the_kernel(redis_server, mode):
    """SET/GET and MGET of 1 MB values (their SHA-256 checked), a pipeline of 1,000 commands and a
    MULTI/EXEC of 1,000 (async: 20 GETs of 1 MB at once on the pool too; sync: socket_keepalive
    and its options, read back from the socket)."""
    res = _both(redis_server, "big", mode)
    assert res["get"] == res["mget"] == [True] * 4
    assert res["pipeline"] == [1000, 500, 500] and res["multi"] == [1000, "499499499499499499499499499499", True]
    assert res["gather"] if mode == "async" else res["opts"] == [1, True, 30, 5, 4]


@pytest.mark.parametrize("mode", MODES)
def test_redis_pubsub_get_message_and_listen_as_on_the_kernel(redis_server, mode):
    """A subscriber's get_message(timeout=...) (None at its timeout when nothing came) and
    listen(), while another connection publishes, a 1 MB message among the messages."""
    res = _both(redis_server, "pubsub", mode)
    assert res["subscribed"] == ["subscribe", 1] and res["idle"] is None and res["idle-waited"]
    assert res["first"] == ["message", "ch", "one"]
    assert res["rest"] == [["message", True], ["message", "two"], ["message", "stop"]]


@pytest.mark.parametrize("mode", MODES)
def test_redis_subscriber_killed_subscribes_again_as_on_the_kernel(redis_server, mode):
    """A subscriber closed by the server (CLIENT KILL TYPE pubsub): its next get_message finds the
    EOF, reconnects and subscribes again, and gets the message published after, as on the kernel."""
    res = _both(redis_server, "pubsub-kill", mode)
    assert res == {"subscribed": "subscribe", "killed": 1, "resubscribed": True,
                   "got": [["subscribe", 1], ["message", "after"]]}


@pytest.mark.parametrize("mode", MODES)
def test_redis_pool_connection_killed_while_idle_as_on_the_kernel(redis_server, mode):
    """The pool's idle connection closed by the server (CLIENT KILL): the next command goes on a
    new connection, without retries (the pool saw the FIN) and with retries (a pipeline at once
    after the kill)."""
    res = _both(redis_server, "killed-idle", mode)
    assert res["fin-seen"]
    assert res["no-retry"] == [1, "no-retry", True, 1]
    assert res["retry"] == [1, ["retry", True], True, 1]


@pytest.mark.parametrize("mode", MODES)
def test_redis_client_kill_during_blpop_as_on_the_kernel(redis_server, mode):
    """CLIENT KILL of a connection blocked in BLPOP: without retries redis-py's ConnectionError
    ("Connection closed by server."), as on the kernel; with its default retries the BLPOP goes on
    on a new connection and gets the value pushed after."""
    res = _both(redis_server, "blpop-kill", mode)
    assert res["no-retry-blocked"] and res["no-retry-killed"] == 1
    assert res["no-retry"] == ["redis.exceptions.ConnectionError", "Connection closed by server."]
    assert res["reblocked"] and res["retry"] == ["q", "v"]


@pytest.fixture
def silent(usnetd_path) -> Iterator[int]:  # noqa: F811
    """A kernel listener on the kernel's side that never accepts: connections complete (the
    backlog) and nothing is ever said. Yields its port."""
    _path, _usnet_ip, host_ip = usnetd_path
    with socket.create_server((host_ip, 0), backlog=16) as ls:
        yield ls.getsockname()[1]


@pytest.mark.parametrize("mode", MODES)
def test_redis_timeouts_and_refusal_as_on_the_kernel(redis_server, silent, mode):
    """socket_connect_timeout (0.5 s) to an address of the link nobody has (ARP unanswered),
    socket_timeout (0.5 s) on a server that never answers, and a refused port, with no retries and
    with two: the error's type and message, and the time it took in timeouts, as on the kernel."""
    _path, host_ip = redis_server
    dead = host_ip.rsplit(".", 1)[0] + ".99"
    res = _both(redis_server, "timeouts", mode, dead, str(silent))
    assert res["connect-0"] == [["redis.exceptions.TimeoutError", "Timeout connecting to server"], 1]
    assert res["connect-2"][1] == 3 and res["read-2"][1] == 3
    assert res["refused-0"][0][0] == "redis.exceptions.ConnectionError" and res["refused-0"][1] == 0


@pytest.mark.parametrize("mode", MODES)
def test_redis_many_short_connections_as_on_the_kernel(redis_server, mode):
    """200 short connections (async: 40 at a time), each an INCR: every one counted, the server
    left with the admin's connection alone."""
    res = _both(redis_server, "short", mode)
    assert res == {"incr": True, "connections": 200, "clients": 1}


def test_pymemcache_big_values_many_keys_and_options_as_on_the_kernel(memcached):
    """pymemcache: 1 MB values (SHA-256 checked), set_many/get_many of 1,000 keys, gets/cas and
    incr, with no_delay and keepalive options (read back from the socket), as on the kernel."""
    res = _both(memcached, "mc-big", "sync", port=MEMCACHED_PORT)
    assert res["get"] == [True] * 4 and res["set_many-failed"] == [] and res["get_many"] == [1000, True]
    assert res["cas"] == [True, False] and res["incr"] == 15 and res["opts"] == [1, True, 30, 5, 4]


def test_pymemcache_pool_of_threads_and_short_connections_as_on_the_kernel(memcached):
    """A PooledClient shared by 8 threads (1,600 incr), then 200 short connections: each counted
    by the server, none left open."""
    res = _both(memcached, "mc-pool", "sync", port=MEMCACHED_PORT)
    assert res == {"n": 1600, "short": True, "connections": 201, "current": 1}


def test_pymemcache_timeouts_and_refusal_as_on_the_kernel(memcached, silent):
    """pymemcache's connect_timeout to an address nobody has, timeout on a silent server and a
    refused port: the socket's own errors (pymemcache wraps none) and their times, as on the kernel."""
    _path, host_ip = memcached
    res = _both(memcached, "mc-timeouts", "sync", host_ip.rsplit(".", 1)[0] + ".99", str(silent),
                port=MEMCACHED_PORT)
    assert res["connect"] == [["TimeoutError", None, "timed out"], 1]
    assert res["read"] == [["TimeoutError", None, "timed out"], 1]
    assert res["refused"] == [["ConnectionRefusedError", 111, "[Errno 111] Connection refused"], 0]
