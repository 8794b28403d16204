"""More unmodified programs and libraries, for tests/interop/test_programs3.py (issue 16).

    python programs3.py NAME ARGS...

Each runs the same on kernel sockets and under `usnet run`; what it checks must hold on both, and
what it prints (one JSON line, or "port N" for a server) the test compares between the two.
"""

import asyncio
import hashlib
import json
import os
import socket
import sys
import time

name, args = sys.argv[1], sys.argv[2:]


def out(v) -> None:
    print(json.dumps(v), flush=True)


def listening(p: int) -> None:
    print(f"port {p}", flush=True)


if name == "dns":  # dnspython against dnsmasq: DNS_IP SILENT_UDP SILENT_TCP REFUSED_TCP; prints what it found
    import dns.asyncquery
    import dns.asyncresolver
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode
    import dns.resolver

    ns, silent, silent_tcp, refused_tcp = args[0], *map(int, args[1:4])
    found: dict = {}
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [ns]
    r.lifetime = 10
    found["A"] = sorted(a.address for a in r.resolve("www.usnet.test", "A"))
    found["AAAA"] = sorted(a.address for a in r.resolve("www.usnet.test", "AAAA"))
    found["CNAME"] = str(r.resolve("alias.usnet.test", "A").canonical_name)
    try:
        r.resolve("nx.test", "A")
        found["NX"] = "answered"
    except dns.resolver.NXDOMAIN:
        found["NX"] = "NXDOMAIN"
    found["big"] = len(r.resolve("big.usnet.test", "A"))  # truncated over UDP: the resolver asks again over TCP
    q = dns.message.make_query("www.usnet.test", "A")
    a = dns.query.udp(q, ns, timeout=5)
    found["udp"] = [a.id == q.id, sorted(str(rr) for rrset in a.answer for rr in rrset)]
    a = dns.query.tcp(dns.message.make_query("www.usnet.test", "A"), ns, timeout=5)
    found["tcp"] = sorted(str(rr) for rrset in a.answer for rr in rrset)
    big = dns.message.make_query("big.usnet.test", "A")
    a = dns.query.udp(big, ns, timeout=5)
    found["big-udp"] = [bool(a.flags & dns.flags.TC), len(a.answer[0]) if a.answer else 0]
    a, tcp = dns.query.udp_with_fallback(big, ns, timeout=5)
    found["big-fallback"] = [tcp, len(a.answer[0])]
    # EDNS0 with a 4 KB buffer: huge's answer (~3.3 KB) comes over UDP in IP fragments, whole, with
    # no TC and no TCP (usnet received nothing past ~2 KB before)
    huge = dns.message.make_query("huge.usnet.test", "A", use_edns=0, payload=4096)
    a = dns.query.udp(huge, ns, timeout=5)
    found["huge-udp"] = [bool(a.flags & dns.flags.TC), len(a.answer[0]) if a.answer else 0, len(a.to_wire()) > 3000]
    r.use_edns(0, 0, 4096)
    found["huge"] = len(r.resolve("huge.usnet.test", "A", tcp=False))

    async def aio() -> list:
        ar = dns.asyncresolver.Resolver(configure=False)
        ar.nameservers = [ns]
        got = await asyncio.gather(ar.resolve("www.usnet.test", "A"), ar.resolve("big.usnet.test", "A"),
                                   dns.asyncquery.tcp(dns.message.make_query("www.usnet.test", "AAAA"), ns, timeout=5))
        aaaa = sorted(str(rr) for rrset in got[2].answer for rr in rrset)
        return [sorted(x.address for x in got[0]), len(got[1]), aaaa]

    found["async"] = asyncio.run(aio())
    t0 = time.monotonic()
    try:
        dns.query.udp(dns.message.make_query("www.usnet.test", "A"), ns, port=silent, timeout=0.5)
        found["silent"] = "answered"
    except dns.exception.Timeout as e:
        found["silent"] = type(e).__name__
    took = time.monotonic() - t0
    assert 0.45 < took < 2.0, took
    r2 = dns.resolver.Resolver(configure=False)
    r2.nameservers = [ns]
    r2.port = silent
    r2.timeout, r2.lifetime = 0.3, 0.8
    t0 = time.monotonic()
    try:
        r2.resolve("www.usnet.test", "A")
        found["silent-resolver"] = "answered"
    except dns.resolver.LifetimeTimeout as e:
        found["silent-resolver"] = type(e).__name__
    took = time.monotonic() - t0
    assert 0.7 < took < 2.5, took

    async def aio_silent() -> str:
        try:
            await dns.asyncquery.udp(dns.message.make_query("www.usnet.test", "A"), ns, port=silent, timeout=0.5)
            return "answered"
        except dns.exception.Timeout as e:
            return type(e).__name__

    t0 = time.monotonic()
    found["async-silent"] = asyncio.run(aio_silent())
    took = time.monotonic() - t0
    assert 0.45 < took < 2.0, took
    for what, p in (("tcp-silent", silent_tcp), ("tcp-refused", refused_tcp)):
        t0 = time.monotonic()
        try:
            dns.query.tcp(dns.message.make_query("www.usnet.test", "A"), ns, port=p, timeout=0.5)
            found[what] = "answered"
        except (dns.exception.Timeout, OSError) as e:
            found[what] = type(e).__name__
        assert time.monotonic() - t0 < 2.0
    out(found)

elif name == "logging":  # logging.handlers to kernel receivers: HOST TCP UDP SYSLOG_UDP SYSLOG_TCP REFUSED
    import logging
    import logging.handlers

    host, tcp, udp, sudp, stcp, refused = args[0], *map(int, args[1:])
    log = logging.getLogger("usnet.test")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    t0 = time.monotonic()
    nowhere = logging.handlers.SocketHandler(host, refused)  # connection refused: the record is dropped
    log.addHandler(nowhere)
    log.warning("to nowhere")
    nowhere.close()
    log.removeHandler(nowhere)
    assert time.monotonic() - t0 < 5
    handlers = [logging.handlers.SocketHandler(host, tcp), logging.handlers.DatagramHandler(host, udp),
                logging.handlers.SysLogHandler((host, sudp)),
                logging.handlers.SysLogHandler((host, stcp), socktype=socket.SOCK_STREAM)]
    for h in handlers:
        log.addHandler(h)
    log.debug("debug %d", 1)
    log.info("info %s", "two" * 100)
    log.error("error \u00e9\u00e8 %r", {"k": [1, 2]})
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        log.exception("failed")
    log.critical("x" * 20000)  # one big record: many segments over TCP, one 20 kB datagram over UDP
    for h in handlers:
        h.close()
    out("sent")

elif name == "bigudp":  # datagrams past the MTU, to a kernel echo, received back whole: HOST PORT
    import errno

    host, port = args[0], int(args[1])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(10)
    top = 65507 if family == socket.AF_INET else 65527
    sizes = [1472, 1473, 3000, 9000, 20000, top - 1, top]
    back: list = []
    for n in sizes:
        data = hashlib.sha256(str(n).encode()).digest() * (n // 32) + b"z" * (n % 32)
        assert s.sendto(data, (host, port)) == n
        got, peer = s.recvfrom(70000)  # the echo: the datagram itself, whole (its SHA-256 checked)
        back.append([n, hashlib.sha256(got).digest() == hashlib.sha256(data).digest()])
    s.sendto(b"t" * 9000, (host, port))  # a small buffer cuts it, and says so (MSG_TRUNC)
    got, _anc, flags, _ = s.recvmsg(100)
    back.append(["trunc", got == b"t" * 100 and bool(flags & socket.MSG_TRUNC)])
    s.sendto(b"u" * 3000, (host, port))
    back.append(["cut", s.recvfrom(10)[0] == b"u" * 10])
    try:
        s.sendto(b"x" * (top + 1), (host, port))
        back.append("sent")
    except OSError as e:
        back.append(errno.errorcode[e.errno])
    s.connect((host, port))
    s.send(b"y" * 5000)  # a connected socket's send too
    back.append(s.recv(70000) == b"y" * 5000)
    out(back)

elif name == "udpserver":  # socketserver's UDP servers: BIND_IP threading|plain; answers upper-cased
    import socketserver

    class Upper(socketserver.DatagramRequestHandler):
        def handle(self) -> None:
            data = self.rfile.read()
            self.wfile.write(data.upper() + b" from " + self.client_address[0].encode())

    cls = socketserver.ThreadingUDPServer if args[1] == "threading" else socketserver.UDPServer
    with cls((args[0], 0), Upper) as srv:
        listening(srv.server_address[1])
        srv.serve_forever(poll_interval=0.05)

elif name == "https":  # http.server over TLS: BIND_IP CERT KEY DIR
    import functools
    import http.server
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args[1], args[2])
    http.server.SimpleHTTPRequestHandler.protocol_version = "HTTP/1.1"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=args[3])
    srv = http.server.ThreadingHTTPServer((args[0], 0), handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    listening(srv.server_address[1])
    srv.serve_forever(poll_interval=0.05)

elif name == "sendfile":  # a file to a kernel digest server (TCP) and datagrams to a kernel echo (UDP):
    # HOST TCP_PORT UDP_PORT FILE; the server answers "length sha256" once the sender shuts down
    host, port, uport, path = args[0], int(args[1]), int(args[2]), args[3]
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        whole = f.read()
    done = []

    def expect(sock: socket.socket, data: bytes) -> None:
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        for _ in range(100):
            b = sock.recv(200)
            if not b:
                break
            answer += b
        assert answer.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}", (answer, len(data))

    with open(path, "rb") as f, socket.create_connection((host, port), timeout=20) as s:
        assert s.sendfile(f) == size and f.tell() == size  # the file's position follows, as os.sendfile's
        expect(s, whole)
        done.append("socket.sendfile")
    with open(path, "rb") as f, socket.create_connection((host, port), timeout=20) as s:
        assert s.sendfile(f, 1000, 300000) == 300000 and f.tell() == 301000
        expect(s, whole[1000:301000])
        done.append("socket.sendfile offset count")

    async def aio() -> None:
        loop = asyncio.get_running_loop()
        s = socket.create_connection((host, port), timeout=20)
        s.setblocking(False)
        with open(path, "rb") as f, s:
            assert await loop.sock_sendfile(s, f) == size
            s.setblocking(True)
            expect(s, whole)
        done.append("loop.sock_sendfile")
        reader, writer = await asyncio.open_connection(host, port)
        with open(path, "rb") as f:
            assert await loop.sendfile(writer.transport, f, 10, size - 20) == size - 20
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 20)
        assert answer.decode() == f"{size - 20} {hashlib.sha256(whole[10:size - 10]).hexdigest()}", answer
        writer.close()
        await writer.wait_closed()
        done.append("loop.sendfile")
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.setblocking(False)
        with u:
            for i in range(10):
                assert await loop.sock_sendto(u, b"dgram %d" % i, (host, uport)) == len(b"dgram %d" % i)
                data, peer = await asyncio.wait_for(loop.sock_recvfrom(u, 100), 10)
                assert (data, peer) == (b"dgram %d" % i, (host, uport)), (data, peer)
            buf = bytearray(100)
            await loop.sock_sendto(u, b"into", (host, uport))
            n, peer = await asyncio.wait_for(loop.sock_recvfrom_into(u, buf), 10)
            assert bytes(buf[:n]) == b"into"
        done.append("loop.sock_sendto/sock_recvfrom")

    asyncio.run(aio())
    out(done)

elif name == "sendfile-edges":  # what socket.sendfile refuses, and where it leaves the file: HOST PORT FILE
    import io

    host, port, path = args[0], int(args[1]), args[2]
    seen = []

    def attempt(what: str, fn) -> None:
        try:
            seen.append([what, "ok", fn()])
        except Exception as e:  # the exception is what is compared
            seen.append([what, type(e).__name__, str(e)])

    s = socket.create_connection((host, port), timeout=20)
    size = os.path.getsize(path)
    with open(path, "rb") as f, s:
        attempt("count str", lambda: s.sendfile(f, 0, "10"))
        attempt("count 0", lambda: s.sendfile(f, 0, 0))
        attempt("count -1", lambda: s.sendfile(f, 0, -1))
        attempt("past EOF", lambda: [s.sendfile(f, size + 10), f.tell()])
        f.seek(5)
        attempt("at EOF", lambda: [s.sendfile(f, size), f.tell()])
        f.seek(100)
        attempt("from 0, not the position", lambda: [s.sendfile(f), f.tell()])
        f.seek(100)
        attempt("offset and count", lambda: [s.sendfile(f, 10, 20), f.tell()])
        b = io.BytesIO(b"abc" * 1000)
        b.seek(50)
        attempt("bytesio: from the position", lambda: [s.sendfile(b), b.tell()])
        b.seek(50)
        attempt("bytesio: offset", lambda: [s.sendfile(b, 7, 11), b.tell()])
        r, w = os.pipe()
        os.write(w, b"piped")
        os.close(w)
        with open(r, "rb") as pipe:
            attempt("pipe", lambda: [s.sendfile(pipe), pipe.read().decode()])
        with open(os.devnull, "rb") as empty:
            s.setblocking(False)
            attempt("empty, non-blocking", lambda: s.sendfile(empty))
            s.setblocking(True)
        with open(path) as text:
            attempt("text mode", lambda: s.sendfile(text))
        s.setblocking(False)
        attempt("non-blocking", lambda: s.sendfile(f))
        s.setblocking(True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, open(path, "rb") as f:
        attempt("udp", lambda: u.sendfile(f))

    async def aio_edges() -> None:  # loop.sock_sendfile and loop.sendfile: where they read, where they leave
        loop = asyncio.get_running_loop()

        async def attempt_async(what: str, coro_fn, fobj) -> None:
            try:
                seen.append([what, "ok", [await coro_fn(), fobj.tell()]])
            except Exception as e:  # the exception is what is compared
                seen.append([what, type(e).__name__, str(e)])

        s = socket.create_connection((host, port), timeout=20)
        s.setblocking(False)
        with open(path, "rb") as f, s:
            for what, off, cnt in (("sock_sendfile", 0, None), ("sock_sendfile offset count", 10, 20),
                                   ("sock_sendfile past EOF", size + 5, None)):
                f.seek(100)
                await attempt_async(what, lambda off=off, cnt=cnt: loop.sock_sendfile(s, f, off, cnt), f)
            b = io.BytesIO(b"abc" * 1000)
            b.seek(50)
            await attempt_async("sock_sendfile bytesio", lambda: loop.sock_sendfile(s, b), b)
            r, w = os.pipe()
            os.write(w, b"piped")
            os.close(w)
            with open(r, "rb") as pipe:
                await attempt_async("sock_sendfile pipe", lambda: loop.sock_sendfile(s, pipe), pipe)
        _, writer = await asyncio.open_connection(host, port)
        with open(path, "rb") as f:
            for what, off, cnt in (("sendfile", 0, None), ("sendfile offset count", 10, 20),
                                   ("sendfile past EOF", size + 5, None)):
                f.seek(100)
                await attempt_async(what, lambda off=off, cnt=cnt: loop.sendfile(writer.transport, f, off, cnt), f)
        writer.close()
        await writer.wait_closed()

    asyncio.run(aio_edges())
    out(seen)

elif name == "udp-refused":  # datagrams to a port nothing listens on: HOST PORT; what each call said
    import errno
    import select

    host, port = args[0], int(args[1])
    said = []

    def note(fn) -> None:
        try:
            said.append(["ok", fn()])
        except OSError as e:
            said.append([type(e).__name__ if e.errno is None else errno.errorcode[e.errno], None])

    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # unconnected: the ICMP errors are not its to say
    u.settimeout(0.3)
    for _ in range(3):
        note(lambda: u.sendto(b"x", (host, port)))
        note(lambda: u.recvfrom(10))  # nothing comes, no error either: a timeout
    note(lambda: u.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # connected: the next call says ECONNREFUSED
    c.settimeout(5)
    c.connect((host, port))
    for _ in range(2):
        note(lambda: c.send(b"x"))
        note(lambda: c.recv(10))  # waits for the port unreachable, and says it
    note(lambda: c.send(b"x"))
    note(lambda: len(select.select([c], [], [], 5)[0]))  # the error makes it readable
    note(lambda: c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))  # taken: once
    note(lambda: c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    out(said)

elif name == "tls-sendfile":  # SSLSocket.sendfile (its send() path) to a kernel TLS digest server: HOST PORT CA FILE
    import ssl

    host, port, cafile, path = args[0], int(args[1]), args[2], args[3]
    ctx = ssl.create_default_context(cafile=cafile)
    with open(path, "rb") as f:
        whole = f.read()
    sent = []
    for timeout in (None, 20.0):
        with open(path, "rb") as f, ctx.wrap_socket(socket.create_connection((host, port)), server_hostname=host) as s:
            s.settimeout(timeout)
            f.seek(100)  # the send() path reads from the position
            s.sendall((len(whole) - 100).to_bytes(8, "big"))  # the length says where it ends
            n = s.sendfile(f)
            sent.append([n, f.tell()])
            answer = s.recv(200).decode()
            assert answer == f"{len(whole) - 100} {hashlib.sha256(whole[100:]).hexdigest()}", answer
    out(sent)

elif name == "wsgi":  # wsgiref's simple server: BIND_IP; answers what it was asked, and by whom
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    def app(environ, start_response):
        n = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(n)
        answer = json.dumps([environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"], n,
                             hashlib.sha256(body).hexdigest(), environ["REMOTE_ADDR"], environ["SERVER_PORT"]])
        start_response("200 OK", [("Content-Type", "application/json")])
        return [answer.encode() + b"\n"]

    class Quiet(WSGIRequestHandler):
        def log_message(self, *a) -> None:
            pass

    with make_server(args[0], 0, app, handler_class=Quiet) as srv:
        listening(srv.server_port)
        srv.serve_forever(poll_interval=0.05)

else:
    raise SystemExit(f"unknown program {name}")
