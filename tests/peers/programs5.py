"""A fifth sweep of unmodified programs, for tests/interop/test_programs5.py (issue 16).

    python programs5.py NAME ARGS...

Each runs the same on kernel sockets and under `usnet run`; what it checks must hold on both, and
what it prints (one JSON line) the test compares between the two.
"""

import asyncio
import concurrent.futures
import hashlib
import http.client
import json
import os
import selectors
import socket
import sys
import tempfile
import threading

name, args = sys.argv[1], sys.argv[2:]
LIMIT = 10.0


def out(v) -> None:
    print(json.dumps(v), flush=True)


def outcome(f):
    try:
        r = f()
        return r if isinstance(r, (int, str, bool, list, type(None))) else repr(r)[:40]
    except OSError as e:
        return [type(e).__name__, e.errno]
    except (ValueError, KeyError) as e:
        return [type(e).__name__]


if name == "kernel-beside":
    # what the patch must leave on the kernel (AF_UNIX, socketpair, fromfd, asyncio's unix
    # streams) works beside a TCP connection through it
    host, port = args[0], int(args[1])
    res = {}
    a, b = socket.socketpair()
    a.sendall(b"pair")
    res["pair"] = [a.family.name, a.type.name, b.recv(10).decode()]
    c = socket.fromfd(b.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)
    a.sendall(b"dup")
    res["fromfd"] = [c.family.name, c.recv(10).decode(), c.fileno() != b.fileno()]
    for s in (a, b, c):
        s.close()
    tcp = socket.create_connection((host, port), timeout=LIMIT)
    d = socket.fromfd(tcp.fileno(), socket.AF_INET, socket.SOCK_STREAM)  # a dup of a TCP socket's descriptor
    d.sendall(b"via fromfd")
    tcp.settimeout(LIMIT)
    res["tcp-fromfd"] = tcp.recv(100).decode()
    d.close()
    tcp.sendall(b"still")
    res["tcp-after"] = tcp.recv(100).decode()
    tcp.close()
    path = os.path.join(tempfile.mkdtemp(), "s")

    async def unix() -> list:
        async def handle(r, w):
            w.write((await r.readline()).upper())
            await w.drain()
            w.close()

        server = await asyncio.start_unix_server(handle, path)
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"unix line\n")
        got = await asyncio.wait_for(r.readline(), LIMIT)
        w.close()
        tr, tw = await asyncio.open_connection(host, port)  # and TCP on the same loop
        tw.write(b"tcp line\n")
        tgot = await asyncio.wait_for(tr.readline(), LIMIT)
        tw.close()
        server.close()
        await server.wait_closed()
        return [got.decode(), tgot.decode()]

    res["asyncio"] = asyncio.run(unix())
    out(res)

elif name == "epoll":
    # selectors.EpollSelector (the DefaultSelector on Linux): register, modify, select, and
    # unregister a socket closed meanwhile; PollSelector alike
    host, port = args[0], int(args[1])
    res = {}
    for kind in ("EpollSelector", "PollSelector", "SelectSelector"):
        sel = getattr(selectors, kind)()
        s = socket.create_connection((host, port), timeout=LIMIT)
        s.setblocking(False)
        key = sel.register(s, selectors.EVENT_READ, "r")
        steps = [sel.select(0) == []]
        sel.modify(s, selectors.EVENT_WRITE, "w")
        steps.append([(k.data, ev) for k, ev in sel.select(LIMIT)])
        s.send(b"ping")
        sel.modify(s, selectors.EVENT_READ, "r2")
        steps.append([(k.data, ev) for k, ev in sel.select(LIMIT)])
        steps.append(s.recv(10).decode())
        steps.append(outcome(lambda sel=sel, s=s: sel.register(s, selectors.EVENT_READ)))  # twice: KeyError
        s.close()
        steps.append(outcome(lambda sel=sel, s=s: sel.unregister(s).data))  # closed: found by the object
        steps.append(len(sel.get_map()))
        steps.append(key.fd > 0)
        sel.close()
        res[kind] = steps
    out(res)

elif name == "futures-http":
    # a thread pool doing blocking http.client GETs (one connection per worker, kept alive)
    host, port, n = args[0], int(args[1]), int(args[2])
    local = threading.local()

    def get(i: int) -> list:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(host, port, timeout=LIMIT)
        conn.request("GET", "/f.bin")
        r = conn.getresponse()
        body = r.read()
        return [r.status, hashlib.sha256(body).hexdigest()[:16], len(body)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(get, range(n)))
    out({"distinct": sorted({json.dumps(r) for r in results}), "count": len(results)})

elif name == "makefile-text":
    # socket.makefile in text mode: newline translation on read and write, readline with a size,
    # iteration, and the buffer's flush
    host, port = args[0], int(args[1])
    res = {}
    for newline in (None, "", "\r\n", "\n"):
        s = socket.create_connection((host, port), timeout=LIMIT)
        f = s.makefile("rw", encoding="utf-8", newline=newline)
        f.write("one\r\ntwo\nthree\rfour\n")
        f.flush()
        s.shutdown(socket.SHUT_WR)
        res[repr(newline)] = [f.readline(2), f.readline(), *f]
        f.close()
        s.close()
    s = socket.create_connection((host, port), timeout=LIMIT)
    w = s.makefile("wb", buffering=0)
    r = s.makefile("r", encoding="latin-1", errors="replace")
    w.write("caf\u00e9\n".encode())
    res["latin"] = r.readline()
    w.close()
    s.close()
    res["closed-file"] = outcome(lambda: r.readline())
    r.close()
    out(res)

elif name == "sock-sendfile":
    # asyncio's loop.sock_sendfile (and sock_sendall, sock_recv) of a file to an echo
    host, port, size = args[0], int(args[1]), int(args[2])
    data = os.urandom(size)
    fd, path = tempfile.mkstemp()
    os.write(fd, data)
    os.close(fd)

    async def main() -> list:
        loop = asyncio.get_running_loop()
        s = socket.create_connection((host, port))
        s.setblocking(False)
        got = bytearray()

        async def reader():
            while len(got) < 2 * size - 1000:
                chunk = await loop.sock_recv(s, 65536)
                if not chunk:
                    break
                got.extend(chunk)

        task = asyncio.ensure_future(reader())
        with open(path, "rb") as f:
            sent = await loop.sock_sendfile(s, f)
            pos = f.tell()
            sent2 = await loop.sock_sendfile(s, f, offset=1000)
        await asyncio.wait_for(task, LIMIT)
        s.close()
        return [sent, pos, sent2, len(got), hashlib.sha256(bytes(got)).hexdigest() ==
                hashlib.sha256(data + data[1000:]).hexdigest()]

    out({"sendfile": asyncio.run(main())})
    os.unlink(path)

elif name == "wsgi-server":
    # wsgiref's reference server: environ as it builds it from the socket (REMOTE_ADDR,
    # SERVER_NAME from getfqdn, the body read through wsgi.input)
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, *a):
            pass

    def app(environ, start_response):
        n = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(n)
        keys = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "REMOTE_ADDR", "SERVER_NAME", "SERVER_PORT",
                "SERVER_PROTOCOL", "HTTP_HOST", "CONTENT_TYPE")
        doc = {k: environ.get(k) for k in keys}
        doc["SERVER_PORT"] = doc["SERVER_PORT"] == args[1] or doc["SERVER_PORT"]
        doc["body"] = hashlib.sha256(body).hexdigest()[:16]
        data = json.dumps(doc).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    with make_server(args[0], 0, app, handler_class=Quiet) as httpd:
        args.append(str(httpd.server_port))
        print(f"port {httpd.server_port}", flush=True)
        for _ in range(3):
            httpd.handle_request()

elif name == "wsgi-client":
    host, port = args[0], int(args[1])
    got = []
    for method, path, body in (("GET", "/a?x=1", None), ("POST", "/form", os.urandom(200000)), ("PUT", "/", b"")):
        c = http.client.HTTPConnection(host, port, timeout=LIMIT)
        c.request(method, path, body=body, headers={"Content-Type": "text/plain"} if body else {})
        me = c.sock.getsockname()[0]
        r = c.getresponse()
        doc = json.loads(r.read())
        doc["REMOTE_ADDR"] = doc["REMOTE_ADDR"] == me or doc["REMOTE_ADDR"]
        doc["HTTP_HOST"] = doc["HTTP_HOST"] == f"{host}:{port}" or doc["HTTP_HOST"]
        doc["body"] = doc["body"] == hashlib.sha256(body or b"").hexdigest()[:16] or doc["body"]
        got.append([r.status, r.getheader("Server", "").split("/")[0], doc])
        c.close()
    out({"wsgi": got})

elif name == "tls-server":
    # an SSLContext with an sni_callback that answers for a name with a second context, and ALPN
    import ssl

    cert, key, seen = args[1], args[2], []
    second = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    second.load_cert_chain(cert, key)
    second.set_alpn_protocols(["h2", "http/1.1"])

    def sni(sslobj, server_name, ctx):
        seen.append(server_name)
        if server_name == "other.test":
            sslobj.context = second
        return None

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.sni_callback = sni
    with socket.create_server((args[0], 0)) as ls:
        print(f"port {ls.getsockname()[1]}", flush=True)
        for _ in range(3):
            conn, _ = ls.accept()
            try:
                with ctx.wrap_socket(conn, server_side=True) as t:
                    t.settimeout(LIMIT)
                    line = t.recv(100)
                    t.sendall(json.dumps([line.decode(), seen[-1] if seen else None, t.selected_alpn_protocol(),
                                          t.version(), t.server_hostname]).encode())
            except ssl.SSLError as e:
                print("refused", e.reason, flush=True)

elif name == "tls-client":
    import ssl

    host, port, cacert = args[0], int(args[1]), args[2]
    got = []
    for sni, alpn in (("sni.test", ["http/1.1", "h2"]), ("other.test", ["h2"]), (host, ["spdy/3"])):
        ctx = ssl.create_default_context(cafile=cacert)
        ctx.check_hostname = False
        ctx.set_alpn_protocols(alpn)
        with socket.create_connection((host, port), timeout=LIMIT) as s, \
                ctx.wrap_socket(s, server_hostname=sni) as t:
            t.sendall(b"hello " + sni.encode())
            server = json.loads(t.recv(1000))
            got.append([server, t.selected_alpn_protocol(), t.version()])
    out({"tls": got})

elif name == "names":
    # reverse lookups and fully qualified names through the hosts file
    calls = {}
    for addr in args:
        calls[addr] = [outcome(lambda a=addr: list(socket.gethostbyaddr(a))),
                       outcome(lambda a=addr: list(socket.getnameinfo((a, 80), 0))),
                       outcome(lambda a=addr: list(socket.getnameinfo((a, 80), socket.NI_NUMERICHOST))),
                       outcome(lambda a=addr: list(socket.getnameinfo((a, 22), socket.NI_NAMEREQD))),
                       socket.getfqdn(addr)]
    calls["fqdn-name"] = socket.getfqdn("web")
    out(calls)

else:
    raise SystemExit(f"unknown program {name}")
