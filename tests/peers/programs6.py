"""A sixth and seventh sweep of unmodified programs, for tests/interop/test_programs6.py and
test_programs7.py (issue 16).

    python programs6.py NAME ARGS...

Each runs the same on kernel sockets and under `usnet run`; what it checks must hold on both, and
what it prints (one JSON line) the test compares between the two.
"""

import asyncio
import json
import os
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
    res["timeout-peek"] = outcome(lambda: s.recv(100, socket.MSG_PEEK))  # a peek needs it too
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
    # waits for both. A peek: Linux wakes a sleeping reader when rcv_nxt - copied_seq reaches the
    # mark (tcp_data_ready), and a read that copied the first echo before it slept moved
    # copied_seq, so the second did not wake it: it slept out SO_RCVTIMEO (10 s of the test's 30)
    # whenever the echoes came apart around the call. A peek moves no copied_seq.
    res["blocking"] = outcome(lambda: s.recv(100, socket.MSG_PEEK))
    res["blocking-read"] = outcome(lambda: s.recv(100))  # the mark queued: at once
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
elif name == "dontwait":
    # MSG_DONTWAIT on sockets with a Python timeout: CPython polls within the timeout first, flag
    # or not, so an empty socket's recv waits and times out, and one the peer answers returns the
    # answer; on a blocking socket the flag is EAGAIN at once; os.read of a socket with a timeout
    # (its descriptor O_NONBLOCK) is EAGAIN at once
    host, port, uport = args[0], int(args[1]), int(args[2])
    res = {}
    s = socket.create_connection((host, port), timeout=LIMIT)
    s.settimeout(0.3)
    res["tcp-empty"] = outcome(lambda: s.recv(100, socket.MSG_DONTWAIT))
    s.sendall(b"abc")
    s.settimeout(LIMIT)
    res["tcp-answer"] = outcome(lambda: s.recv(100, socket.MSG_DONTWAIT))  # waits for the echo
    s.settimeout(0.3)
    res["tcp-into"] = outcome(lambda: s.recv_into(bytearray(10), 0, socket.MSG_DONTWAIT))
    res["tcp-os-read"] = outcome(lambda: os.read(s.fileno(), 100))
    s.setblocking(True)
    res["tcp-blocking"] = outcome(lambda: s.recv(100, socket.MSG_DONTWAIT))
    s.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", 0))
    u.settimeout(0.3)
    res["udp-empty"] = outcome(lambda: u.recvfrom(100, socket.MSG_DONTWAIT))
    u.settimeout(LIMIT)
    u.sendto(b"xyz", (host, uport))
    res["udp-answer"] = outcome(lambda: u.recvfrom(100, socket.MSG_DONTWAIT)[0])
    u.setblocking(True)
    res["udp-blocking"] = outcome(lambda: u.recv(100, socket.MSG_DONTWAIT))
    u.close()
    out(res)
elif name == "aio-udp":
    # asyncio's datagram endpoints as a program uses them: the socket of get_extra_info with its
    # options, allow_broadcast, reuse_port, a connected endpoint's ICMP error, AF_INET6, sock=
    host, uport, closed = args[0], int(args[1]), int(args[2])
    res = {}

    class P(asyncio.DatagramProtocol):
        def __init__(self):
            self.q = asyncio.Queue()

        def datagram_received(self, data, addr):
            self.q.put_nowait(["data", data.decode(), list(addr)])

        def error_received(self, exc):
            self.q.put_nowait(["error", type(exc).__name__, exc.errno])

    async def next_event(p):
        return await asyncio.wait_for(p.q.get(), LIMIT)

    async def main():
        loop = asyncio.get_running_loop()
        t, p = await loop.create_datagram_endpoint(P, local_addr=("0.0.0.0", 0), allow_broadcast=True,
                                                   reuse_port=True)
        s = t.get_extra_info("socket")
        res["class"] = type(s).__name__
        res["sockname"] = [s.getsockname()[0], s.getsockname() == t.get_extra_info("sockname")]
        res["fileno"] = s.fileno() >= 0
        res["type"] = [s.family == socket.AF_INET, s.type == socket.SOCK_DGRAM]
        res["broadcast"] = s.getsockopt(SOL, socket.SO_BROADCAST)
        res["reuseport"] = s.getsockopt(SOL, socket.SO_REUSEPORT)
        s.setsockopt(SOL, socket.SO_RCVBUF, 65536)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 7)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 3)
        res["options"] = [s.getsockopt(SOL, socket.SO_RCVBUF), s.getsockopt(socket.IPPROTO_IP, socket.IP_TTL),
                          s.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL)]
        t.sendto(b"hello", (host, uport))
        res["echo"] = await next_event(p)
        t.close()
        t, p = await loop.create_datagram_endpoint(P, local_addr=("0.0.0.0", 0))  # no allow_broadcast
        res["no-broadcast"] = t.get_extra_info("socket").getsockopt(SOL, socket.SO_BROADCAST)
        t.sendto(b"x", (host.rsplit(".", 1)[0] + ".255", uport))  # the /24's broadcast address
        res["broadcast-refused"] = await next_event(p)
        t.close()
        t, p = await loop.create_datagram_endpoint(P, remote_addr=(host, closed))
        res["peername"] = list(t.get_extra_info("peername")) == [host, closed]
        t.sendto(b"anyone?")
        res["refused"] = await next_event(p)
        t.close()
        t, p = await loop.create_datagram_endpoint(P, family=socket.AF_INET6, local_addr=("::", 0))
        s = t.get_extra_info("socket")
        res["v6"] = [s.family == socket.AF_INET6, s.getsockname()[0], len(s.getsockname()),
                     s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)]
        t.close()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("0.0.0.0", 0))
        t, p = await loop.create_datagram_endpoint(P, sock=u)
        s = t.get_extra_info("socket")
        res["sock"] = [type(s).__name__, s.getsockname() == u.getsockname()]
        t.sendto(b"again", (host, uport))
        res["sock-echo"] = await next_event(p)
        t.close()
        await asyncio.sleep(0)

    asyncio.run(main())
    out(res)
else:
    raise SystemExit(f"no program {name}")
