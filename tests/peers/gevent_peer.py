"""A gevent program for tests/interop/test_programs14.py (issue 16), unmodified: gevent's monkey
patching first, then a StreamServer echo, gevent.socket.create_connection to a kernel echo server
from many greenlets at once, and gevent.Timeout against a listener that never answers.

    python gevent_peer.py HOST ECHO_PORT SILENT_PORT

Prints one JSON line: what each part got, and the address the kernel echo server saw us from.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402  (after the patch, as gevent asks)
import socket  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

host, echo_port, silent_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
N = 50


def echo(conn, _addr) -> None:
    for _ in range(1000):
        b = conn.recv(65536)
        if not b:
            return
        conn.sendall(b)


def ask(port: int, i: int) -> bytes:
    with socket.create_connection((host, port), timeout=10) as c:
        msg = b"%d " % i * (i + 1)
        c.sendall(msg)
        c.shutdown(socket.SHUT_WR)
        got = b""
        for _ in range(1000):
            b = c.recv(65536)
            if not b:
                return got
            got += b
        return got


server = StreamServer((host, 0), echo)
server.start()
ours = [gevent.spawn(ask, server.server_port, i) for i in range(N)]
gevent.joinall(ours, timeout=10)
local = [g.value == b"%d " % i * (i + 1) for i, g in enumerate(ours)]
server.stop()
theirs = [gevent.spawn(ask, echo_port, i) for i in range(N)]
gevent.joinall(theirs, timeout=10)
remote = [g.value == b"%d " % i * (i + 1) for i, g in enumerate(theirs)]
with gevent.socket.create_connection((host, echo_port)) as c:
    seen = c.getsockname()[0]
silent = socket.create_connection((host, silent_port))
try:
    with gevent.Timeout(0.3):
        silent.recv(1)
    timed = "answered"
except gevent.Timeout:
    timed = "Timeout"
silent.close()
print(json.dumps({"local": all(local), "remote": all(remote), "n": len(remote), "timeout": timed,
                  "from": seen}))
