"""A sixth sweep of unmodified programs, for tests/interop/test_programs6.py (issue 16).

    python programs6.py NAME ARGS...

Each runs the same on kernel sockets and under `usnet run`; what it checks must hold on both, and
what it prints (one JSON line) the test compares between the two.
"""

import json
import select
import socket
import struct
import sys

name, args = sys.argv[1], sys.argv[2:]
LIMIT = 10.0
SOL, LOWAT = socket.SOL_SOCKET, socket.SO_RCVLOWAT


def out(v) -> None:
    print(json.dumps(v), flush=True)


def outcome(f):
    try:
        r = f()
        return r.decode() if isinstance(r, bytes) else r
    except OSError as e:
        return [type(e).__name__, e.errno]


def readable(s, t: float = LIMIT) -> bool:
    return bool(select.select([s], [], [], t)[0])


if name == "rcvlowat":
    # SO_RCVLOWAT on a TCP connection to an echo server, as a program that reads fixed-size
    # records sets it: the values kept, readiness and recv waiting for the mark
    host, port = args[0], int(args[1])
    res = {}
    s = socket.create_connection((host, port), timeout=LIMIT)
    kept = []
    for v in (100, 0, -5, 1 << 30, 10):
        kept.append([outcome(lambda v=v: s.setsockopt(SOL, LOWAT, v)), s.getsockopt(SOL, LOWAT)])
    res["kept"] = kept
    s.sendall(b"12345")
    res["half"] = readable(s, 0.3)  # 5 of 10 echoed: not readable (nor at once, below)
    s.sendall(b"67890")
    res["full"] = readable(s)
    res["recv"] = outcome(lambda: s.recv(100))
    s.sendall(b"abc")
    s.settimeout(1.0)
    res["timeout"] = outcome(lambda: s.recv(100))  # a Python timeout: its poll needs the mark
    s.setsockopt(SOL, LOWAT, 1)
    res["at-one"] = readable(s)
    s.setsockopt(SOL, LOWAT, 10)
    s.setblocking(True)  # (with a timeout, CPython polls first, MSG_DONTWAIT or not: usnet does not)
    res["dontwait"] = outcome(lambda: s.recv(100, socket.MSG_DONTWAIT))  # what is queued
    res["dontwait-empty"] = outcome(lambda: s.recv(100, socket.MSG_DONTWAIT))
    s.setsockopt(SOL, socket.SO_RCVTIMEO, struct.pack("ll", int(LIMIT), 0))  # blocking, but bounded
    s.sendall(b"vwxyz")
    s.sendall(b"ABCDE")
    res["blocking"] = outcome(lambda: s.recv(100))  # waits for both
    s.sendall(b"zz")
    s.shutdown(socket.SHUT_WR)
    res["eof-readable"] = readable(s)  # the FIN: readable below the mark
    res["eof"] = [outcome(lambda: s.recv(100)), outcome(lambda: s.recv(100))]
    s.close()
    r = socket.socket()  # SO_RCVBUF set first: the mark is capped at half of it (tcp_set_rcvlowat)
    r.setsockopt(SOL, socket.SO_RCVBUF, 10000)
    r.setsockopt(SOL, LOWAT, 1 << 30)
    res["locked"] = r.getsockopt(SOL, LOWAT)
    r.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # UDP keeps it, uncapped
    res["udp"] = [[outcome(lambda v=v: u.setsockopt(SOL, LOWAT, v)), u.getsockopt(SOL, LOWAT)] for v in (7, -1, 0)]
    u.close()
    out(res)
else:
    raise SystemExit(f"no program {name}")
