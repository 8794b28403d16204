"""The sixth to ninth sweeps of unmodified programs, for tests/interop/test_programs6.py,
test_programs7.py, test_programs8.py and test_programs9.py (issue 16).

    python programs6.py NAME ARGS...

Each runs the same on kernel sockets and under `usnet run`; what it checks must hold on both, and
what it prints (one JSON line) the test compares between the two.
"""

import asyncio
import json
import os
import select
import socket
import ssl
import struct
import sys
import threading
import time

name, args = sys.argv[1], sys.argv[2:]
LIMIT = 10.0
SOL, LOWAT = socket.SOL_SOCKET, socket.SO_RCVLOWAT


def out(v) -> None:
    print(json.dumps(v), flush=True)


def event(*what) -> None:
    """A server program's event, one JSON line as it comes (the test reads them as they do): one
    write, whole (print writes the line's end apart, and threads' and children's lines mixed)."""
    os.write(1, (json.dumps(list(what)) + "\n").encode())


def gone(e: BaseException) -> str:
    """An exception's name; a reset and a broken pipe alike ("gone": which comes is the timing's)."""
    return "gone" if isinstance(e, (ConnectionResetError, BrokenPipeError)) else type(e).__name__


def from_child(r: int, pid: int) -> dict:
    """What forked child `pid` wrote (JSON) on pipe `r` to its end, with its exit status."""
    got = b""
    for _ in range(100):
        b = os.read(r, 65536)
        if not b:
            break
        got += b
    _, status = os.waitpid(pid, 0)
    res = json.loads(got)
    res["status"] = status
    return res


def outcome(f):
    try:
        r = f()
        return r.decode() if isinstance(r, bytes) else r
    except (OSError, ValueError, TypeError) as e:
        return [type(e).__name__, getattr(e, "errno", None)]


def recv_all(s, n: int) -> bytes:
    """Up to n bytes, to the peer's FIN (bounded by the socket's timeout and a count)."""
    got = b""
    for _ in range(10000):
        b = s.recv(65536)
        if not b:
            break
        got += b
        if len(got) >= n:
            break
    return got


def readable(s, t: float = LIMIT) -> bool:
    return bool(select.select([s], [], [], t)[0])


def fork_on_a_connection():
    """A listener (its port printed), the first connection on it, then fork(): (ls, conn, pid)."""
    ls = socket.create_server(("0.0.0.0", 0))
    print(f"port {ls.getsockname()[1]}", flush=True)
    ls.settimeout(LIMIT)
    conn, _ = ls.accept()
    return ls, conn, os.fork()


def read_to(s, end: bytes) -> bytes:
    """Bytes from `s` a byte at a time up to `end` (or EOF), at most 100."""
    got = b""
    for _ in range(100):
        b = s.recv(1)
        got += b
        if not b or got.endswith(end):
            break
    return got


def parent_closes_on_word(ls, conn, pid: int, said: str) -> None:
    """The parent's end of a forked program: the child's exit status (event `said`), then its own
    close of `conn` on the peer's word (a connection on `ls`)."""
    _, status = os.waitpid(pid, 0)
    event(said, status)
    word, _ = ls.accept()
    conn.close()
    word.close()
    ls.close()
    event("stopped")


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
elif name == "calls":
    # socket calls a program makes on a TCP connection: timeouts read back, half-close,
    # SO_LINGER 0, send after the peer closed, os.sendfile, select over many descriptors
    host, echo, closer, recorder = args[0], int(args[1]), int(args[2]), int(args[3])
    res = {}
    s = socket.socket()
    modes = []
    for how in ("settimeout(0)", "setblocking(True)", "settimeout(2.5)", "setblocking(False)",
                "settimeout(None)"):
        eval("s." + how)
        modes.append([how, s.gettimeout(), s.getblocking()])
    res["modes"] = modes
    s.settimeout(0)
    res["connect-nb"] = outcome(lambda: s.connect((host, echo)))
    res["connect-writable"] = bool(select.select([], [s], [], LIMIT)[1])
    res["connect-error"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    s.settimeout(LIMIT)
    # half-close: the rest of the echo after SHUT_WR, then b""
    s.sendall(b"x" * 100000)
    s.shutdown(socket.SHUT_WR)
    got = recv_all(s, 1 << 30)
    res["half-close"] = [len(got), got == b"x" * 100000, outcome(lambda: s.recv(10))]
    res["send-after-shut-wr"] = outcome(lambda: s.send(b"y"))
    s.close()
    # SO_LINGER 0: the kernel peer sees the data, then a reset
    s = socket.create_connection((host, recorder), timeout=LIMIT)
    s.sendall(b"bye")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    res["linger"] = list(struct.unpack("ii", s.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)))
    s.close()
    # send after the peer closed: sends succeed until its reset comes, then EPIPE
    s = socket.create_connection((host, closer), timeout=LIMIT)
    res["closer-eof"] = outcome(lambda: s.recv(10))
    errors = []
    for _ in range(200):
        r = outcome(lambda: s.send(b"z" * 10))
        if r != 10:
            errors.append(r)
            if len(errors) == 2:
                break
        time.sleep(0.02)
    res["send-after-close"] = errors
    res["so-error-after"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    res["recv-after"] = outcome(lambda: s.recv(10))  # the FIN came before the reset: end of data
    s.close()
    # os.sendfile on the socket's descriptor
    path = f"/tmp/programs7-{os.getpid()}"
    with open(path, "wb") as f:
        f.write(bytes(range(256)) * 400)
    s = socket.create_connection((host, echo), timeout=LIMIT)
    with open(path, "rb") as f:
        sent = 0
        for _ in range(1000):
            try:  # the descriptor is O_NONBLOCK (a timeout): wait for room as socket.sendfile does
                n = os.sendfile(s.fileno(), f.fileno(), sent, 102400 - sent)
            except BlockingIOError:
                select.select([], [s], [], LIMIT)
                continue
            sent += n
            if n == 0 or sent >= 102400:
                break
        res["sendfile-sent"] = sent
        res["sendfile-offset"] = f.tell()
    os.unlink(path)
    s.shutdown(socket.SHUT_WR)
    got = recv_all(s, 1 << 30)
    res["sendfile-echo"] = [len(got), got == bytes(range(256)) * 400]
    s.close()
    # select over 70 connections and 10 socketpairs (kernel descriptors) at once
    conns = [socket.create_connection((host, echo), timeout=LIMIT) for _ in range(70)]
    pairs = [socket.socketpair() for _ in range(10)]
    everything = conns + [a for a, _ in pairs]
    res["fds-over-64"] = max(c.fileno() for c in everything) > 64
    for i, c in enumerate(conns):
        if i % 3 == 0:
            c.sendall(b"e")
    for i, (_a, b) in enumerate(pairs):
        if i % 2 == 0:
            b.sendall(b"p")
    want = {i for i in range(70) if i % 3 == 0} | {70 + i for i in range(10) if i % 2 == 0}
    for i in sorted(want):  # each answer in, one at a time; then one select over them all
        select.select([everything[i]], [], [], LIMIT)
    r, w, _x = select.select(everything, everything, [], LIMIT)
    ready = {everything.index(x) for x in r}
    res["select-readable"] = sorted(ready)
    res["select-writable"] = len(w)
    res["select-reads"] = sorted({c.recv(10).decode() for c in (everything[i] for i in ready)})
    for c in everything:
        c.close()
    for _a, b in pairs:
        b.close()
    # send_fds / recv_fds over an AF_UNIX pair (the kernel's)
    a, b = socket.socketpair()
    r, w = os.pipe()
    res["unix-family"] = [a.family == socket.AF_UNIX, type(a).__module__]
    res["send-fds"] = socket.send_fds(a, [b"fd"], [w])
    msg, fds, flags, _addr = socket.recv_fds(b, 10, 4)
    os.write(fds[0], b"through the passed descriptor")
    res["recv-fds"] = [msg.decode(), len(fds), flags, os.read(r, 100).decode()]
    for fd in (r, w, *fds):
        os.close(fd)
    a.close()
    b.close()
    out(res)
elif name == "close-thread":
    # close() from another thread while this one waits in recv or accept
    host, port, mode = args[0], int(args[1]), args[2]
    res = {}
    if mode == "recv":
        s = socket.create_connection((host, port), timeout=LIMIT)
        s.settimeout(1.5)
        closer = threading.Timer(0.3, s.close)
        closer.start()
        res["recv"] = outcome(lambda: s.recv(10))
        closer.join()
        res["fileno"] = s.fileno()
        res["again"] = outcome(lambda: s.recv(10))
    elif mode in ("recv-late", "recv-late-blocking", "sendall", "sendall-blocking"):
        # the peer's data comes after the close, while this thread still waits (port: a relay that
        # sends on the first connection when the second says "go"); or (the ninth sweep) sendall
        # waits for the window of a peer that reads nothing until "go"
        s = socket.create_connection((host, port), timeout=LIMIT)
        s.sendall(b"data\n")
        ctrl = socket.create_connection((host, port), timeout=LIMIT)
        if mode.endswith("-blocking"):
            s.setblocking(True)
        else:
            s.settimeout(LIMIT)

        def close_then_go():
            s.close()
            ctrl.sendall(b"go\n")

        closer = threading.Timer(0.3 if mode.startswith("recv") else 0.5, close_then_go)
        closer.start()
        if mode.startswith("recv"):
            res["recv"] = outcome(lambda: s.recv(10))
        else:
            res["sendall"] = outcome(lambda: s.sendall(b"x" * (4 << 20)))
        closer.join()
        res["fileno"] = s.fileno()
        res["again"] = outcome(lambda: s.recv(10) if mode.startswith("recv") else s.send(b"y"))
        ctrl.close()
    else:
        ls = socket.create_server(("0.0.0.0", 0))
        ls.settimeout(1.5)
        closer = threading.Timer(0.3, ls.close)
        closer.start()
        res["accept"] = outcome(lambda: ls.accept())
        closer.join()
        res["fileno"] = ls.fileno()
        res["again"] = outcome(lambda: ls.accept())
    out(res)
elif name == "aio":
    # asyncio's sock_* calls: a refused connect, a receive after the peer's reset; start_server
    # with reuse_port and backlog
    host, closed, rst, me = args[0], int(args[1]), int(args[2]), args[3]
    res = {}

    async def main():
        loop = asyncio.get_running_loop()
        s = socket.socket()
        s.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(s, (host, closed)), LIMIT)
            res["refused"] = "connected"
        except OSError as e:
            res["refused"] = [type(e).__name__, e.errno]
        res["refused-so-error"] = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        s.close()
        s = socket.socket()
        s.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(s, (host, rst)), LIMIT)
        await loop.sock_sendall(s, b"x\n")
        try:
            got = await asyncio.wait_for(loop.sock_recv(s, 100), LIMIT)
            res["after-rst"] = got.decode()
        except OSError as e:
            res["after-rst"] = [type(e).__name__, e.errno]
        try:
            await asyncio.wait_for(loop.sock_recv(s, 100), LIMIT)
            res["after-rst-again"] = "data"
        except OSError as e:
            res["after-rst-again"] = [type(e).__name__, e.errno]
        s.close()
        # start_server twice on one port with reuse_port, a backlog of 5
        async def answer(r, w):
            w.write((await r.readline()).upper())
            await w.drain()
            w.close()

        one = await asyncio.start_server(answer, "0.0.0.0", 0, reuse_port=True, backlog=5)
        port = one.sockets[0].getsockname()[1]
        two = await asyncio.start_server(answer, "0.0.0.0", port, reuse_port=True, backlog=5)
        res["reuse-port"] = [x.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for x in (one, two)]
        res["listening"] = [x.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for x in (one, two)]
        try:
            third = await asyncio.start_server(answer, "0.0.0.0", port, backlog=5)
            res["without-reuse"] = "bound"
            third.close()
        except OSError as e:
            res["without-reuse"] = [type(e).__name__, e.errno]
        answers = []
        for i in range(6):
            r, w = await asyncio.wait_for(asyncio.open_connection(me, port), LIMIT)
            w.write(b"hi %d\n" % i)
            answers.append((await asyncio.wait_for(r.readline(), LIMIT)).decode())
            w.close()
        res["answers"] = answers
        for x in (one, two):
            x.close()
            await x.wait_closed()

    asyncio.run(main())
    out(res)
elif name == "tls-nb":
    # a TLS client with do_handshake_on_connect=False: the handshake, reads and writes and the
    # close_notify driven by a selectors loop on SSLWantReadError / SSLWantWriteError
    import selectors

    host, port, cafile = args[0], int(args[1]), args[2]
    res = {}
    ctx = ssl.create_default_context(cafile=cafile)
    raw = socket.create_connection((host, port), timeout=LIMIT)
    raw.setblocking(False)
    t = ctx.wrap_socket(raw, server_hostname=host, do_handshake_on_connect=False)
    sel = selectors.DefaultSelector()
    sel.register(t, selectors.EVENT_READ)
    wants = {"read": 0, "write": 0}
    deadline = time.monotonic() + LIMIT

    def drive(step):
        for _ in range(100000):
            try:
                return step()
            except ssl.SSLWantReadError:
                wants["read"] += 1
                sel.modify(t, selectors.EVENT_READ)
            except ssl.SSLWantWriteError:
                wants["write"] += 1
                sel.modify(t, selectors.EVENT_WRITE)
            if not sel.select(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("no progress")
        raise TimeoutError("too many turns")

    drive(t.do_handshake)
    res["version"] = t.version()
    data = os.urandom(300000)
    sent = 0
    for _ in range(100000):
        if sent >= len(data):
            break
        sent += drive(lambda sent=sent: t.send(data[sent:sent + 65536]))
    got = b""
    for _ in range(100000):
        if len(got) >= len(data):
            break
        got += drive(lambda: t.recv(65536))
    res["echo"] = [len(got), got == data]
    drive(lambda: t.sendall(b"QUIT\n"))
    plain = drive(t.unwrap)
    res["unwrapped"] = [plain is t, isinstance(plain, ssl.SSLSocket), plain.getblocking(), t.version()]
    res["unwrap-again"] = outcome(t.unwrap)
    t.setblocking(True)
    t.settimeout(LIMIT)
    t.sendall(b"in clear")  # the object it had, now plain
    plain.setblocking(True)
    plain.settimeout(LIMIT)
    res["plain-after"] = [recv_all(plain, 100).decode(), plain.recv(100).decode()]
    sel.close()
    plain.close()
    out(res)
elif name == "mail":
    # imaplib and poplib against the test's tiny line servers
    import imaplib
    import poplib

    host, iport, pport = args[0], int(args[1]), int(args[2])
    res = {}
    m = imaplib.IMAP4(host, iport, timeout=LIMIT)
    res["imap-welcome"] = m.welcome.decode()
    res["imap-login"] = [m.login("me", "secret")[0]]
    typ, data = m.select("INBOX")
    res["imap-select"] = [typ, data[0].decode()]
    typ, data = m.fetch("1", "(RFC822)")
    res["imap-fetch"] = [typ, data[0][1].decode()]
    res["imap-logout"] = m.logout()[0]
    p = poplib.POP3(host, pport, timeout=LIMIT)
    res["pop-welcome"] = p.getwelcome().decode()
    p.user("me")
    res["pop-pass"] = p.pass_("secret").decode()
    res["pop-stat"] = list(p.stat())
    resp, lines, octets = p.retr(1)
    res["pop-retr"] = [resp.decode(), [x.decode() for x in lines], octets]
    res["pop-quit"] = p.quit().decode()
    out(res)
elif name == "http-server":
    # http.server.ThreadingHTTPServer under many concurrent keep-alive clients; /quit shuts it down
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bind = args[0]
    served = []
    lock = threading.Lock()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = (self.path * 50).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            with lock:
                served.append(self.path)
            if self.path == "/quit":
                threading.Thread(target=self.server.shutdown, daemon=True).start()

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer((bind, 0), H)
    srv.daemon_threads = True
    print(f"port {srv.server_address[1]}", flush=True)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    t.start()
    t.join(LIMIT * 3)
    stopped = not t.is_alive()
    srv.server_close()
    out({"stopped": stopped, "served": len(served), "distinct": len(set(served))})
elif name == "send-blocking":
    # one blocking send() of more than the buffers hold: Linux's tcp_sendmsg waits for room until
    # it has taken all of it (a partial count only at SO_SNDTIMEO's end or a signal)
    host, port = args[0], int(args[1])
    s = socket.create_connection((host, port), timeout=LIMIT)
    s.sendall(b"data\n")
    ctrl = socket.create_connection((host, port), timeout=LIMIT)
    s.setblocking(True)
    go = threading.Timer(0.5, lambda: ctrl.sendall(b"go\n"))
    go.start()
    res = {"send": s.send(b"x" * (4 << 20))}
    go.join()
    # the peer reads everything now: a send under SO_SNDTIMEO takes it all too. SO_SNDTIMEO bounds
    # the call's waits together (tcp_sendmsg's one timeo, which sk_stream_wait_memory spends): 5 s
    # is reached only if the send stops taking data; 0.3 s was a race with moving 4 MiB under load
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, (5).to_bytes(8, "little") + bytes(8))
    res["send-sndtimeo"] = s.send(b"z" * (4 << 20))
    s.close()
    ctrl.close()
    out(res)
elif name == "fork-close":
    # a forked child's inherited listener and connection: close() from another thread of the child
    # while a thread waits in accept() or recv() on them (a Python timeout, so CPython polls)
    host, port = args[0], int(args[1])
    ls = socket.create_server(("0.0.0.0", 0))
    c = socket.create_connection((host, port), timeout=LIMIT)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        res = {}
        for what, sock, call in (("accept", ls, lambda: ls.accept()), ("recv", c, lambda: c.recv(10))):
            sock.settimeout(3.0)
            t0 = time.monotonic()
            closer = threading.Timer(0.3, sock.close)
            closer.start()
            res[what] = outcome(call)
            closer.join()
            res[what + "-waited-to-timeout"] = time.monotonic() - t0 > 2.5
            res[what + "-fileno"] = sock.fileno()
            res[what + "-again"] = outcome(call)
        os.write(w, json.dumps(res).encode())
        os._exit(0)
    os.close(w)
    res = from_child(r, pid)
    # the parent's own copies are untouched by the child's close
    c.sendall(b"parent\n")
    res["parent-echo"] = c.recv(100).decode()
    ls.close()
    c.close()
    out(res)
elif name == "msfilter":
    # getsockopt(IP_MSFILTER) as a program can call it: without a length, with lengths under the
    # head, and with a bytes object for the length
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    res = {str(n): outcome(lambda n=n: s.getsockopt(socket.IPPROTO_IP, 41, n)) for n in (0, 4, 8, 15)}
    res["none"] = outcome(lambda: s.getsockopt(socket.IPPROTO_IP, 41))
    res["bytes"] = outcome(lambda: s.getsockopt(socket.IPPROTO_IP, 41, bytes(16)))
    res["str"] = outcome(lambda: s.getsockopt(socket.IPPROTO_IP, 41, "16"))
    res["negative"] = outcome(lambda: s.getsockopt(socket.IPPROTO_IP, 41, -1))
    res["huge"] = outcome(lambda: s.getsockopt(socket.IPPROTO_IP, 41, 1 << 20))
    s.close()
    out(res)
elif name == "pools":
    # HTTP client libraries' connection pools against a kernel HTTP/1.1 server: keep-alive reuse,
    # an idle kept-alive connection the server dropped (found closed before reuse: no retry
    # allowed), a read timeout, retries on 503
    import asyncio

    import aiohttp
    import httpx
    import requests
    import urllib3
    base = f"http://{args[0]}:{args[1]}"
    res = {}

    def named(f):
        try:
            return f()
        except Exception as e:  # the library's own exception, by name
            return type(e).__name__

    with requests.Session() as sess:
        res["requests"] = [named(lambda: sess.get(f"{base}/requests/a", timeout=LIMIT).text) for _ in range(3)]
        res["requests"].append(named(lambda: sess.get(f"{base}/requests/slow", timeout=(LIMIT, 0.5)).text))
        res["requests"].append(named(lambda: sess.get(f"{base}/requests/drop", timeout=LIMIT).text))
        time.sleep(0.3)  # idle: the server's FIN comes
        res["requests"].append(named(lambda: sess.get(f"{base}/requests/a", timeout=LIMIT).text))
    pm = urllib3.PoolManager(retries=urllib3.Retry(total=0), timeout=LIMIT)
    res["urllib3"] = [named(lambda: pm.request("GET", f"{base}/urllib3/drop").data.decode())]
    time.sleep(0.3)
    res["urllib3"].append(named(lambda: pm.request("GET", f"{base}/urllib3/a").data.decode()))
    retry = urllib3.Retry(total=3, status_forcelist=[503], backoff_factor=0)
    res["urllib3"].append(named(lambda: pm.request("GET", f"{base}/urllib3/flaky", retries=retry).status))
    res["urllib3"].append(named(lambda: pm.request("GET", f"{base}/urllib3/slow",
                                                   timeout=urllib3.Timeout(connect=LIMIT, read=0.5)).status))
    pm.clear()
    with httpx.Client(timeout=LIMIT) as hc:
        res["httpx"] = [named(lambda: hc.get(f"{base}/httpx/a").text) for _ in range(2)]
        res["httpx"].append(named(lambda: hc.get(f"{base}/httpx/drop").text))
        time.sleep(0.3)
        res["httpx"].append(named(lambda: hc.get(f"{base}/httpx/a").text))
        res["httpx"].append(named(lambda: hc.get(f"{base}/httpx/slow", timeout=0.5).text))

    async def async_clients():
        got = []
        async with httpx.AsyncClient(timeout=LIMIT) as ac:
            for p in ("a", "a", "drop"):
                got.append((await ac.get(f"{base}/httpx-async/{p}")).text)
            await asyncio.sleep(0.3)
            got.append((await ac.get(f"{base}/httpx-async/a")).text)
        res["httpx-async"] = got
        got = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT)) as cs:
            for p in ("a", "a", "drop"):
                async with cs.get(f"{base}/aiohttp/{p}") as r:
                    got.append(await r.text())
            await asyncio.sleep(0.3)
            async with cs.get(f"{base}/aiohttp/a") as r:
                got.append(await r.text())
            try:
                async with cs.get(f"{base}/aiohttp/slow", timeout=aiohttp.ClientTimeout(total=0.5)) as r:
                    got.append(await r.text())
            except Exception as e:
                got.append(type(e).__name__)
        res["aiohttp"] = got

    asyncio.run(async_clients())
    out(res)
elif name == "ws":
    # a websockets client against a kernel websockets server: an echo, a ping answered, the
    # server's close with a code and reason, and a connection the server drops without a close
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed
    url = f"ws://{args[0]}:{args[1]}"
    res = {}

    async def ws_main():
        async with connect(url + "/echo", open_timeout=LIMIT) as ws:
            await ws.send("hello")
            res["echo"] = await asyncio.wait_for(ws.recv(), LIMIT)
            pong = await ws.ping(b"p")
            res["pong"] = (await asyncio.wait_for(pong, LIMIT)) >= 0
        for path in ("/close", "/drop"):
            async with connect(url + path, open_timeout=LIMIT) as ws:
                try:
                    await asyncio.wait_for(ws.recv(), LIMIT)
                    res[path] = "message"
                except ConnectionClosed as e:
                    rc = e.rcvd
                    res[path] = [type(e).__name__, rc.code if rc else None, rc.reason if rc else None]

    asyncio.run(ws_main())
    out(res)
elif name == "fork-accept-closed":
    # a forked child's accept (a Python timeout) on its inherited listener, closed by another of
    # its threads; then a connection comes (a kernel peer connects back on the parent's word):
    # the child's accept is EBADF and the connection stays queued for the parent's accept
    host, port = args[0], int(args[1])
    ls = socket.create_server(("0.0.0.0", 0))
    ctrl = socket.create_connection((host, port), timeout=LIMIT)
    closed_r, closed_w = os.pipe()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ls.settimeout(5.0)

        def close_then_tell() -> None:
            ls.close()
            os.write(closed_w, b"c")

        closer = threading.Timer(0.3, close_then_tell)
        closer.start()
        t0 = time.monotonic()
        res = {"accept": outcome(lambda: ls.accept() and "accepted"), "before-timeout": time.monotonic() - t0 < 4.5}
        closer.join()
        os.write(w, json.dumps(res).encode())
        os._exit(0)
    os.close(w)
    os.close(closed_w)
    if os.read(closed_r, 1) == b"c":
        ctrl.sendall(b"%d\n" % ls.getsockname()[1])  # the peer connects to the listener
    res = from_child(r, pid)
    ls.settimeout(LIMIT)  # the connection the child did not take is the parent's
    conn, _ = ls.accept()
    conn.settimeout(LIMIT)
    res["parent-got"] = conn.recv(100).decode()
    conn.close()
    ls.close()
    ctrl.close()
    out(res)
elif name == "fork-shutdown-close":
    # a forked child answers a connection its parent holds too, then shutdown(SHUT_WR) and close()
    # at once with the request's body unread: the shutdown is the socket's FIN for every holder
    # (the peer reads the answer and EOF while the parent still holds it). The parent is stopped
    # (SIGSTOP) from before the answer until after the close, so that usnet's splice, a thread of
    # the parent, sees the child's shutdown only once the child has closed too. The parent closes
    # on the peer's word: a second connection.
    import signal
    ls, conn, pid = fork_on_a_connection()
    if pid == 0:
        conn.settimeout(LIMIT)
        read_to(conn, b"\r\n\r\n")
        os.kill(os.getppid(), signal.SIGSTOP)
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsmall")
            conn.shutdown(socket.SHUT_WR)
            conn.close()
        finally:
            os.kill(os.getppid(), signal.SIGCONT)
        os._exit(0)
    parent_closes_on_word(ls, conn, pid, "child")
elif name == "fork-shutdown-how":
    # a forked child answers a connection its parent holds too, then shutdown(SHUT_RDWR or
    # SHUT_RD, args[0]): what its recv and send give after it. Linux acts on the socket at once
    # whoever else holds it: SHUT_RDWR sends the FIN after the answer (the peer reads EOF while
    # the parent holds the socket), SHUT_RD sends nothing and leaves sending as it was, data the
    # peer sends after it included (its word "shut": it sends, then a connection the child takes
    # on the inherited listener). The parent closes its copy on the peer's word, a connection.
    how = {"RD": socket.SHUT_RD, "RDWR": socket.SHUT_RDWR}[args[0]]
    ls, conn, pid = fork_on_a_connection()
    if pid == 0:
        conn.settimeout(LIMIT)
        line = read_to(conn, b"\n")
        conn.sendall(b"answer\n")
        conn.shutdown(how)
        res = {"line": line.decode(), "recv": outcome(lambda: conn.recv(100))}
        if how == socket.SHUT_RD:
            event("shut")
            word, _ = ls.accept()
            word.close()
        res["send"] = outcome(lambda: conn.send(b"after\n"))
        event("child", res)
        conn.close()
        os._exit(0)
    parent_closes_on_word(ls, conn, pid, "exit")
elif name == "sendfile-reset":
    # asyncio's loop.sendfile of a large file on each connection, whose client reads a part, then
    # resets: on the kernel os.sendfile fails with ECONNRESET (or EPIPE), raised as such. Until
    # SIGTERM.
    import signal
    import tempfile
    BIG = 32 << 20

    async def send_file(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryFile() as f:
            f.truncate(BIG)
            try:
                n = await loop.sendfile(w.transport, f)
                event("sendfile", "sent", n == BIG)
            except Exception as e:
                event("sendfile", gone(e), f.tell() > 0)
            w.close()

    async def sendfile_main() -> None:
        server = await asyncio.start_server(send_file, "0.0.0.0", 0)
        print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(sendfile_main())
    event("stopped")
elif name == "serve-http":
    # an HTTP server as programs run one, printing what it saw (one JSON line an event) until
    # SIGTERM: aiohttp's web server, http.server's ThreadingHTTPServer, or a ForkingMixIn
    # HTTPServer; /small answers "small", /big writes 64 MiB (to a client that stops reading);
    # the libraries' own timeouts for a client that sends half a request: 1 s
    import http.server
    import logging
    import signal
    import socketserver
    kind = args[0]
    BIG, CHUNK = 64 << 20, 1 << 16

    if kind == "aiohttp":
        from aiohttp import web

        class Logged(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                exc = record.exc_info[1] if record.exc_info else None
                event("log", record.name, record.levelname, gone(exc) if exc else None)

        logging.getLogger("aiohttp").addHandler(Logged())
        logging.getLogger("aiohttp").setLevel(logging.INFO)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

        async def small(request):
            event("small")
            return web.Response(text="small")

        async def big(request):
            resp = web.StreamResponse()
            await resp.prepare(request)
            sent = 0

            async def watch() -> None:  # says when the writes block (the transport paused them)
                for _ in range(1000):
                    if request.protocol.writing_paused:
                        event("big", "blocked")
                        return
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(watch())
            try:
                while sent < BIG:
                    await resp.write(b"x" * CHUNK)
                    sent += CHUNK
                event("big", "done")
            except (OSError, asyncio.CancelledError) as e:
                event("big", gone(e))
                raise
            finally:
                watcher.cancel()
            return resp

        async def started(app):
            print(f"port {site._server.sockets[0].getsockname()[1]}", flush=True)

        async def main():
            global site
            app = web.Application()
            app.router.add_get("/small", small)
            app.router.add_get("/big", big)
            runner = web.AppRunner(app, keepalive_timeout=1.0, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, "0.0.0.0", 0)
            await site.start()
            await started(app)
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            await stop.wait()
            await runner.cleanup()

        asyncio.run(main())
    else:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 1.0  # (StreamRequestHandler's: the connection's socket timeout)

            def do_GET(self) -> None:
                body = b"small" if self.path == "/small" else b""
                self.send_response(200)
                self.send_header("Content-Length", str(BIG if self.path == "/big" else len(body)))
                self.end_headers()
                if self.path != "/big":
                    event("small")
                    self.wfile.write(body)
                    return
                try:
                    for _ in range(BIG // CHUNK):
                        self.wfile.write(b"x" * CHUNK)
                    event("big", "done")
                except OSError as e:
                    event("big", gone(e))
                    self.close_connection = True

            def log_message(self, fmt: str, *a) -> None:
                if "code 4" in fmt % a or "code 5" in fmt % a or "Request timed out" in fmt % a:
                    event("log", (fmt % a).split(":")[0])

        class Server(socketserver.ForkingMixIn if kind == "forking" else socketserver.ThreadingMixIn,
                     http.server.HTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                event("handle_error", gone(sys.exc_info()[1]))

        srv = Server(("0.0.0.0", 0), Handler)
        me = os.getpid()

        def term(*_a) -> None:
            if os.getpid() == me:
                raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, term)
        print(f"port {srv.server_address[1]}", flush=True)
        try:
            srv.serve_forever(0.05)
        except KeyboardInterrupt:
            pass
        srv.server_close()
    event("stopped")
elif name == "serve-aio":
    # asyncio.start_server as programs use it: a line echoed on each connection, then closed;
    # "hold" connections stay open across Server.close() and wait_closed() (said by a "close"
    # connection) and echo one more line after; events printed as they come, as "serve-http"
    async def aio_main() -> None:
        done, held_over = asyncio.Event(), asyncio.Event()
        counts = {"echoed": 0, "held": 0}

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                line = await r.readline()
                if line == b"close\n":
                    done.set()
                elif line == b"hold\n":
                    w.write(b"held\n")
                    await w.drain()
                    line = await r.readline()  # (after the server's close)
                    w.write(line)
                    await w.drain()
                    counts["held"] += 1
                    if counts["held"] == 3:
                        held_over.set()
                else:
                    w.write(line)
                    await w.drain()
                    counts["echoed"] += 1
            except OSError as e:
                event("handler", type(e).__name__)
            finally:
                w.close()

        server = await asyncio.start_server(handle, "0.0.0.0", 0, backlog=64)
        print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.wait_for(done.wait(), LIMIT * 2)
        event("echoed", counts["echoed"])
        server.close()
        event("is_serving", server.is_serving(), len(server.sockets))
        try:
            await asyncio.wait_for(server.wait_closed(), 1.0)
            event("wait_closed", "returned")
        except TimeoutError:
            event("wait_closed", "waits")
        await asyncio.wait_for(held_over.wait(), LIMIT)
        event("held", counts["held"])

    asyncio.run(aio_main())
    event("stopped")
elif name == "serve-ws":
    # a websockets server (its asyncio API): /echo echoes, /flood sends 16 KiB messages until the
    # connection ends (to a client that stops reading); open and close timeouts of 1 s; what the
    # handlers and the library's logger saw printed as events, as "serve-http"
    import logging
    import signal

    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    class Logged(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            exc = record.exc_info[1] if record.exc_info else None
            event("log", record.levelname, record.getMessage()[:40], gone(exc) if exc else None)


    async def ws_handler(ws) -> None:
        path = ws.request.path
        try:
            if path == "/flood":
                said = False
                for _ in range(100000):
                    await ws.send(b"x" * (16 << 10))
                    if not said and ws.transport.get_write_buffer_size() > 0:
                        said = True
                        event(path, "blocked")
            else:
                async for m in ws:
                    await ws.send(m)
            event(path, "ended")
        except ConnectionClosed as e:
            rc, sc = e.rcvd, e.sent
            event(path, type(e).__name__, rc.code if rc else None, sc.code if sc else None)

    async def ws_main() -> None:
        async with serve(ws_handler, "0.0.0.0", 0, open_timeout=1.0, close_timeout=1.0,
                         ping_interval=None) as server:
            print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
            logging.getLogger("websockets").addHandler(Logged())
            logging.getLogger("websockets").setLevel(logging.INFO)
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            await stop.wait()

    asyncio.run(ws_main())
    event("stopped")
elif name == "listener-close":
    # a listener closed with connections in its queue, never accepted (a server that stops): the
    # kernel resets each; the word to close comes on a second listener
    ls = socket.create_server(("0.0.0.0", 0), backlog=8)
    ctl = socket.create_server(("0.0.0.0", 0))
    print(f"port {ls.getsockname()[1]} {ctl.getsockname()[1]}", flush=True)
    ctl.settimeout(LIMIT)
    c, _ = ctl.accept()
    ls.close()
    c.sendall(b"closed\n")
    c.close()
    ctl.close()
    out(["stopped"])
else:
    raise SystemExit(f"no program {name}")
