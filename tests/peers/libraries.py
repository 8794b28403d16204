"""Popular third-party libraries, unmodified, for tests/interop/test_libraries.py (issue 16).

    python libraries.py LIB client BASE HTTPS_BASE CA_PEM SILENT_PORT REFUSED_PORT
        exits 0 once every check held, printing one line per check
    python libraries.py LIB server BIND_IP [PEM]
        prints "port N" once it listens, then serves until stopped (over TLS with the key and
        certificate chain in PEM)
    python libraries.py websockets[-sync] client WS_URL [CA_PEM]
    python libraries.py requests fetch URL...   prints each one's status and SHA-256

No usnet in here: the test runs these under `usnet run` (or on kernel sockets) against a kernel peer.

The HTTP peer (client checks): GET /f.bin is BODY; GET /big is BIG; GET /peer is the client's
address and port; GET /close is BODY, and the server closes the connection after it; GET /closed is BODY
once that connection is closed; POST /sha answers the SHA-256
(hex) of the request body; the HTTPS_BASE server is the same over TLS with a certificate from the
CA in CA_PEM; SILENT_PORT (same host) accepts but never answers; nothing listens on REFUSED_PORT.
The servers here serve the same paths.
"""

from __future__ import annotations

import errno
import hashlib
import json
import socket
import sys
import time

lib, role = sys.argv[1], sys.argv[2]
BODY = b"usnet!" * 500  # 3 kB
BIG = hashlib.sha256(b"big").hexdigest().encode() * 65536  # 4 MiB: many windows, read in pieces
POSTED = bytes(range(256)) * 1024  # 256 kB
TIMEOUT = 1.0  # the client timeout against the silent server; the test bounds the elapsed time


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def ok(what: str, t0: float | None = None) -> None:
    print(what if t0 is None else f"{what} {time.monotonic() - t0:.2f}", flush=True)


def refused_underneath(e: BaseException) -> bool:
    """ECONNREFUSED somewhere in the chain of causes (libraries wrap it once or twice)."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED:
            return True
        if isinstance(e, OSError) and e.args and isinstance(e.args[0], OSError) and refused_underneath(e.args[0]):
            return True
        e = e.__cause__ or e.__context__ or getattr(e, "reason", None)
        seen += 1
    return False


def unanswered(host: str) -> str:
    """An address on the peer's subnet that nobody has: a SYN there is never answered."""
    return host.rsplit(".", 1)[0] + ".99"


def listening(p: int) -> None:
    print(f"port {p}", flush=True)


def ipv6_port(sockets) -> int:
    """An asyncio server's port: its IPv6 socket's when it has one (with no host and port 0 it has
    a socket for 0.0.0.0 and one for ::, each on its own port, as Linux gives them)."""
    socks = sorted(sockets, key=lambda s: s.family != socket.AF_INET6)
    return socks[0].getsockname()[1]


def server_tls(pem: str | None):
    """The server's TLS context from a PEM of key and certificate chain (trustme's), or None."""
    if pem is None:
        return None
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pem)
    return ctx


# -- clients --------------------------------------------------------------------------------------------


def requests_client(base: str, https: str, ca: str, silent: int, refused: int) -> None:
    import requests

    host = base.split("//")[1].split(":")[0]
    with requests.Session() as s:
        for _ in range(2):
            r = s.get(f"{base}/f.bin", timeout=20)
            assert r.status_code == 200 and r.content == BODY
        peers = {s.get(f"{base}/peer", timeout=20).text for _ in range(3)}
        assert len(peers) == 1, peers  # keep-alive: all on one connection
        ok("keepalive")
        with s.get(f"{base}/big", stream=True, timeout=20) as r:
            h = hashlib.sha256()
            for chunk in r.iter_content(65536):
                h.update(chunk)
            assert h.hexdigest() == sha(BIG)
        ok("stream")
        r = s.post(f"{base}/sha", data=POSTED, timeout=20)
        assert r.text == sha(POSTED), r.text
        ok("post")
        r = s.get(f"{https}/big", verify=ca, timeout=20)
        assert r.content == BIG
        r = s.post(f"{https}/sha", data=POSTED, verify=ca, timeout=20)
        assert r.text == sha(POSTED)
        ok("https")
        # the server closes after this answer without saying so: urllib3 sees the kept connection
        # readable at EOF (poll) before its next request, and opens another
        assert s.get(f"{base}/close", timeout=20).content == BODY
        assert requests.get(f"{base}/closed", timeout=20).content == BODY  # another connection
        assert s.get(f"{base}/f.bin", timeout=20).content == BODY
        ok("dropped")
    t0 = time.monotonic()
    try:  # nothing answers ARP for .99 on the peer's subnet: the connect times out
        requests.get(f"http://{unanswered(host)}/f.bin", timeout=(TIMEOUT, 20))
        raise AssertionError("no connect timeout")
    except requests.exceptions.ConnectTimeout:
        ok("connect-timeout", t0)
    t0 = time.monotonic()
    try:
        requests.get(f"http://{host}:{silent}/f.bin", timeout=TIMEOUT)
        raise AssertionError("no timeout")
    except requests.exceptions.ReadTimeout:
        ok("timeout", t0)
    try:
        requests.get(f"http://{host}:{refused}/f.bin", timeout=20)
        raise AssertionError("not refused")
    except requests.exceptions.ConnectionError as e:
        assert refused_underneath(e), repr(e)
        ok("refused")


def httpx_client(base: str, https: str, ca: str, silent: int, refused: int) -> None:
    import ssl

    import httpx

    host = base.split("//")[1].split(":")[0]
    ctx = ssl.create_default_context(cafile=ca)
    opened = []

    def count(event_name: str, info: dict) -> None:  # httpcore's trace: one per new connection
        if event_name == "connection.connect_tcp.complete":
            opened.append(info)

    with httpx.Client(timeout=20, verify=ctx) as c:
        for _ in range(2):
            r = c.get(f"{base}/f.bin", extensions={"trace": count})
            assert r.status_code == 200 and r.content == BODY
        peers = {c.get(f"{base}/peer").text for _ in range(3)}
        assert len(opened) == 1 and len(peers) == 1, (opened, peers)
        ok("keepalive")
        with c.stream("GET", f"{base}/big") as r:
            h = hashlib.sha256()
            for chunk in r.iter_bytes():
                h.update(chunk)
            assert h.hexdigest() == sha(BIG)
        ok("stream")
        assert c.post(f"{base}/sha", content=POSTED).text == sha(POSTED)
        ok("post")
        assert c.get(f"{https}/big").content == BIG
        ok("https")
    t0 = time.monotonic()
    try:
        httpx.get(f"http://{host}:{silent}/f.bin", timeout=TIMEOUT)
        raise AssertionError("no timeout")
    except httpx.ReadTimeout:
        ok("timeout", t0)
    try:
        httpx.get(f"http://{host}:{refused}/f.bin", timeout=20)
        raise AssertionError("not refused")
    except httpx.ConnectError as e:
        assert refused_underneath(e), repr(e)
        ok("refused")


async def httpx_async_client(base: str, https: str, ca: str, silent: int, refused: int) -> None:
    import ssl

    import httpx

    host = base.split("//")[1].split(":")[0]
    ctx = ssl.create_default_context(cafile=ca)
    opened = []

    async def count(event_name: str, info: dict) -> None:
        if event_name == "connection.connect_tcp.complete":
            opened.append(info)

    async with httpx.AsyncClient(timeout=20, verify=ctx) as c:
        for _ in range(2):
            r = await c.get(f"{base}/f.bin", extensions={"trace": count})
            assert r.status_code == 200 and r.content == BODY
        peers = {(await c.get(f"{base}/peer")).text for _ in range(3)}
        assert len(opened) == 1 and len(peers) == 1, (opened, peers)
        ok("keepalive")
        async with c.stream("GET", f"{base}/big") as r:
            h = hashlib.sha256()
            async for chunk in r.aiter_bytes():
                h.update(chunk)
            assert h.hexdigest() == sha(BIG)
        ok("stream")
        assert (await c.post(f"{base}/sha", content=POSTED)).text == sha(POSTED)
        ok("post")
        assert (await c.get(f"{https}/big")).content == BIG
        assert (await c.post(f"{https}/sha", content=POSTED)).text == sha(POSTED)
        ok("https")
    async with httpx.AsyncClient() as c:
        t0 = time.monotonic()
        try:
            await c.get(f"http://{unanswered(host)}/f.bin", timeout=httpx.Timeout(20, connect=TIMEOUT))
            raise AssertionError("no connect timeout")
        except httpx.ConnectTimeout:
            ok("connect-timeout", t0)
        t0 = time.monotonic()
        try:
            await c.get(f"http://{host}:{silent}/f.bin", timeout=TIMEOUT)
            raise AssertionError("no timeout")
        except httpx.ReadTimeout:
            ok("timeout", t0)
        try:
            await c.get(f"http://{host}:{refused}/f.bin", timeout=20)
            raise AssertionError("not refused")
        except httpx.ConnectError as e:
            assert refused_underneath(e), repr(e)
            ok("refused")


async def aiohttp_client(base: str, https: str, ca: str, silent: int, refused: int) -> None:
    import ssl

    import aiohttp

    host = base.split("//")[1].split(":")[0]
    ctx = ssl.create_default_context(cafile=ca)
    opened = []

    async def count(session, context, params) -> None:
        opened.append(params)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(count)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20), trace_configs=[trace]) as s:
        for _ in range(2):
            async with s.get(f"{base}/f.bin") as r:
                assert r.status == 200 and await r.read() == BODY
        peers = set()
        for _ in range(3):
            async with s.get(f"{base}/peer") as r:
                peers.add(await r.text())
        assert len(opened) == 1 and len(peers) == 1, (opened, peers)
        ok("keepalive")
        async with s.get(f"{base}/big") as r:
            h = hashlib.sha256()
            async for chunk in r.content.iter_chunked(65536):
                h.update(chunk)
            assert h.hexdigest() == sha(BIG)
        ok("stream")
        async with s.post(f"{base}/sha", data=POSTED) as r:
            assert await r.text() == sha(POSTED)
        ok("post")
        async with s.get(f"{https}/big", ssl=ctx) as r:
            assert await r.read() == BIG
        async with s.post(f"{https}/sha", data=POSTED, ssl=ctx) as r:
            assert await r.text() == sha(POSTED)
        ok("https")
    async with aiohttp.ClientSession() as s:
        t0 = time.monotonic()
        try:
            async with s.get(f"http://{host}:{silent}/f.bin", timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as r:
                await r.read()
            raise AssertionError("no timeout")
        except TimeoutError:  # aiohttp's ServerTimeoutError and asyncio's both are
            ok("timeout", t0)
        try:
            async with s.get(f"http://{host}:{refused}/f.bin") as r:
                pass
            raise AssertionError("not refused")
        except aiohttp.ClientConnectorError as e:
            assert refused_underneath(e.os_error), repr(e)
            ok("refused")


async def tornado_client(base: str, https: str, ca: str, silent: int, refused: int) -> None:
    import ssl

    from tornado.httpclient import AsyncHTTPClient, HTTPClientError

    host = base.split("//")[1].split(":")[0]
    ctx = ssl.create_default_context(cafile=ca)
    c = AsyncHTTPClient(force_instance=True)
    r = await c.fetch(f"{base}/f.bin", request_timeout=20)
    assert r.code == 200 and r.body == BODY
    chunks = []
    await c.fetch(f"{base}/big", streaming_callback=chunks.append, request_timeout=20)
    assert sha(b"".join(chunks)) == sha(BIG) and len(chunks) > 1
    ok("stream")
    r = await c.fetch(f"{base}/sha", method="POST", body=POSTED, request_timeout=20)
    assert r.body.decode() == sha(POSTED)
    ok("post")
    r = await c.fetch(f"{https}/big", ssl_options=ctx, request_timeout=20)
    assert r.body == BIG
    ok("https")
    t0 = time.monotonic()
    try:
        await c.fetch(f"http://{host}:{silent}/f.bin", request_timeout=TIMEOUT)
        raise AssertionError("no timeout")
    except HTTPClientError as e:
        assert e.code == 599, repr(e)  # tornado's "timeout" HTTP error
        ok("timeout", t0)
    try:
        await c.fetch(f"http://{host}:{refused}/f.bin", request_timeout=20)
        raise AssertionError("not refused")
    except ConnectionRefusedError:
        ok("refused")
    c.close()


# -- servers --------------------------------------------------------------------------------------------


def aiohttp_server(ip: str, pem: str | None) -> None:
    import asyncio

    from aiohttp import web

    async def f(request):
        return web.Response(body=BODY)

    async def big(request):
        r = web.StreamResponse()
        r.content_length = len(BIG)
        await r.prepare(request)
        for i in range(0, len(BIG), 1 << 18):
            await r.write(BIG[i:i + (1 << 18)])
        return r

    async def post(request):
        return web.Response(text=sha(await request.read()))

    import tempfile

    held = tempfile.TemporaryFile()  # noqa: SIM115  (open while the server runs; gone with the process)
    held.write(BIG)
    held.flush()

    async def file(request):  # loop.sendfile on the transport: os.sendfile on the socket's descriptor
        return web.FileResponse(f"/proc/self/fd/{held.fileno()}")

    async def main() -> None:
        app = web.Application(client_max_size=1 << 24)
        app.add_routes([web.get("/f.bin", f), web.get("/big", big), web.post("/sha", post), web.get("/file", file)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, ip, 0, ssl_context=server_tls(pem))
        await site.start()
        listening(ipv6_port(site._server.sockets))
        await asyncio.Event().wait()

    asyncio.run(main())


def tornado_server(ip: str, pem: str | None) -> None:
    import asyncio

    import tornado.web

    server = None

    class F(tornado.web.RequestHandler):
        def get(self):
            self.write(BODY)

    class Big(tornado.web.RequestHandler):
        async def get(self):
            for i in range(0, len(BIG), 1 << 18):
                self.write(BIG[i:i + (1 << 18)])
                await self.flush()

    class Sha(tornado.web.RequestHandler):
        def post(self):
            self.write(sha(self.request.body))

    class Names(tornado.web.RequestHandler):  # the listening sockets' names, as tornado has them
        def get(self):
            self.write(json.dumps(sorted(list(s.getsockname()) for s in server._sockets.values())))

    async def main() -> None:
        nonlocal server
        app = tornado.web.Application([("/f.bin", F), ("/big", Big), ("/sha", Sha), ("/names", Names)])
        # ip "": a socket for every address getaddrinfo gives
        server = app.listen(0, ip, max_body_size=1 << 24, ssl_options=server_tls(pem))
        listening(next(iter(server._sockets.values())).getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


def flask_server(ip: str, pem: str | None) -> None:
    from flask import Flask, Response, request
    from werkzeug.serving import WSGIRequestHandler, make_server

    app = Flask("usnet")

    @app.get("/f.bin")
    def f():
        return Response(BODY)

    @app.get("/big")
    def big():
        return Response((BIG[i:i + (1 << 18)] for i in range(0, len(BIG), 1 << 18)),
                        headers={"Content-Length": str(len(BIG))})

    @app.post("/sha")
    def post():
        return sha(request.get_data())

    WSGIRequestHandler.protocol_version = "HTTP/1.1"  # keep-alive, as a production server would
    server = make_server(ip, 0, app, threaded=True, ssl_context=server_tls(pem))  # wraps the listener
    listening(server.server_port)
    server.serve_forever()


def websockets_server(ip: str, pem: str | None) -> None:
    import asyncio

    from websockets.asyncio.server import serve

    async def echo(ws):
        async for m in ws:
            await ws.send(m)

    async def main() -> None:
        async with serve(echo, ip, 0, max_size=1 << 24, ssl=server_tls(pem)) as server:
            listening(ipv6_port(server.sockets))
            await asyncio.Event().wait()

    asyncio.run(main())


def websockets_sync_server(ip: str, pem: str | None) -> None:
    """websockets' threaded server (blocking sockets; TLS by SSLContext.wrap_socket of the listener)."""
    from websockets.sync.server import serve

    def echo(ws):
        for m in ws:
            ws.send(m)

    with serve(echo, ip, 0, max_size=1 << 24, ssl=server_tls(pem)) as server:
        listening(server.socket.getsockname()[1])
        server.serve_forever()


def websockets_sync_client(url: str, ca: str | None) -> None:
    import ssl

    from websockets.sync.client import connect

    ctx = None if ca is None else ssl.create_default_context(cafile=ca)
    with connect(url, max_size=1 << 24, ssl=ctx) as ws:
        for m in ("hello", BODY, BIG, "bye"):
            ws.send(m)
            assert ws.recv(timeout=20) == m
        assert ws.ping().wait(20)
    ok("echo")


def anyio_server(ip: str, pem: str | None) -> None:
    """anyio's own TCP listener (every passive address for ""), echoing each stream until its EOF,
    then closing it as anyio closes every stream: transport.abort()."""
    import anyio

    async def echo(stream) -> None:
        async with stream:
            async for chunk in stream:
                await stream.send(chunk)

    async def main() -> None:
        listener = await anyio.create_tcp_listener(local_host=ip or None, local_port=0)
        listening(listener.listeners[0].extra(anyio.abc.SocketAttribute.local_port))
        await listener.serve(echo)

    anyio.run(main)


def anyio_client(ip: str, port: int) -> None:
    """anyio's connect_tcp: DATA sent while its echo is read, then the stream closed (abort())."""
    import anyio

    async def main() -> None:
        got = bytearray()
        async with await anyio.connect_tcp(ip, port) as s:
            async def read() -> None:
                while len(got) < len(POSTED):
                    got.extend(await s.receive())

            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await s.send(POSTED)
        assert got == POSTED
        ok("echo")

    anyio.run(main)


async def websockets_client(url: str, ca: str | None) -> None:
    """Text and binary messages echoed, one of them large (fragmented by TCP), a ping answered."""
    import ssl

    from websockets.asyncio.client import connect

    ctx = None if ca is None else ssl.create_default_context(cafile=ca)
    async with connect(url, max_size=1 << 24, ssl=ctx) as ws:
        for m in ("hello", BODY, BIG, "bye"):
            await ws.send(m)
            assert await ws.recv() == m
        await (await ws.ping())
    ok("echo")


if __name__ == "__main__":
    import asyncio

    if role == "server":
        {"aiohttp": aiohttp_server, "tornado": tornado_server, "flask": flask_server,
         "websockets": websockets_server, "websockets-sync": websockets_sync_server, "anyio": anyio_server,
         }[lib](sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
    elif lib == "websockets":
        asyncio.run(websockets_client(sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None))
    elif lib == "requests" and role == "fetch":  # each URL's status and SHA-256, one a line
        import requests

        with requests.Session() as session:
            for url in sys.argv[3:]:
                r = session.get(url, timeout=20)
                print(r.status_code, sha(r.content), flush=True)
    elif lib == "anyio":
        anyio_client(sys.argv[3], int(sys.argv[4]))
    elif lib == "websockets-sync":
        websockets_sync_client(sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
    else:
        args = (*sys.argv[3:6], int(sys.argv[6]), int(sys.argv[7]))
        fn = {"requests": requests_client, "httpx": httpx_client, "httpx-async": httpx_async_client,
              "aiohttp": aiohttp_client, "tornado": tornado_client}[lib]
        out = fn(*args)
        if asyncio.iscoroutine(out):
            asyncio.run(out)
