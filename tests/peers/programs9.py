"""The ninth sweep of unmodified programs, for tests/interop/test_programs9.py (issue 16).

    python programs9.py NAME ARGS...

Each runs the same on kernel sockets and under `usnet run`; what it checks must hold on both, and
what it prints (one JSON line) the test compares between the two.
"""

import json
import os
import socket
import sys
import threading
import time

name, args = sys.argv[1], sys.argv[2:]
LIMIT = 10.0
BIG = 4 * 1024 * 1024


def out(v) -> None:
    print(json.dumps(v), flush=True)


def outcome(f):
    try:
        r = f()
        return r.decode() if isinstance(r, bytes) else r
    except (OSError, ValueError, TypeError) as e:
        return [type(e).__name__, getattr(e, "errno", None)]


if name == "sendall-close":
    # close() from another thread while sendall waits for the window (the peer reads nothing until
    # the control connection says "go", which the closing thread sends after the close)
    host, port, mode = args[0], int(args[1]), args[2]
    res = {}
    s = socket.create_connection((host, port), timeout=LIMIT)
    s.sendall(b"data\n")
    ctrl = socket.create_connection((host, port), timeout=LIMIT)
    if mode == "blocking":
        s.setblocking(True)
    else:
        s.settimeout(LIMIT)

    def close_then_go():
        s.close()
        ctrl.sendall(b"go\n")

    closer = threading.Timer(0.5, close_then_go)
    closer.start()
    res["sendall"] = outcome(lambda: s.sendall(b"x" * BIG))
    closer.join()
    res["fileno"] = s.fileno()
    res["again"] = outcome(lambda: s.send(b"y"))
    ctrl.close()
    out(res)
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
    res = {"send": s.send(b"x" * BIG)}
    go.join()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, b"\x00\x00\x00\x00\x00\x00\x00\x00"
                 + (300000).to_bytes(8, "little"))
    # the peer reads everything now: a send under SO_SNDTIMEO takes it all too
    res["send-sndtimeo"] = s.send(b"z" * BIG)
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
    got = b""
    for _ in range(100):
        b = os.read(r, 65536)
        if not b:
            break
        got += b
    _, status = os.waitpid(pid, 0)
    res = json.loads(got)
    res["status"] = status
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
else:
    raise SystemExit(f"unknown program {name}")
