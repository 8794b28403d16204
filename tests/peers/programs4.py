"""A fourth sweep of unmodified programs, for tests/interop/test_programs4.py (issue 16).

    python programs4.py NAME ARGS...

Each runs the same on kernel sockets and under `usnet run`; what it checks must hold on both, and
what it prints (one JSON line, or "port N" for a server) the test compares between the two.
"""

import asyncio
import json
import os
import select
import signal
import socket
import sys
import threading
import time

name, args = sys.argv[1], sys.argv[2:]
SOON = 0.3  # seconds until the signal comes, while the call blocks
PROMPT = 2.5  # what "promptly" means here: well before the 3 s of an unanswered neighbour


def out(v) -> None:
    print(json.dumps(v), flush=True)


def listening(p: int) -> None:
    print(f"port {p}", flush=True)


class Alarm(Exception):
    """What the SIGALRM handler raises."""


def _raise_once() -> object:
    """A SIGALRM handler that raises Alarm the first time it runs and then returns (PEP 475: a
    call a later alarm interrupts goes on)."""
    raised = [False]

    def handler(signum, frame):
        if not raised[0]:
            raised[0] = True
            raise Alarm(signum)

    return handler


def interrupted(call, how: str = "alarm") -> list:
    """[what `call()` ended with, whether within PROMPT] when a signal comes SOON after it started:
    SIGALRM whose handler raises Alarm ("alarm"), or SIGINT with Python's own handler, as Ctrl-C
    ("sigint", sent to the process as the terminal sends it to its group)."""
    t0 = time.monotonic()
    if how == "alarm":
        # Again every SOON until the call ends: CPython looks for a due handler before it makes a
        # system call, not in it, so an alarm that lands between the look and a blocking send or
        # recv (a process preempted there, under load) leaves the call blocked until the next one
        # interrupts it; a single alarm would leave it blocked for good. Only the first raises.
        signal.signal(signal.SIGALRM, _raise_once())
        signal.setitimer(signal.ITIMER_REAL, SOON, SOON)
    else:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        threading.Timer(SOON, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        got = call()
        what = ["returned", repr(got)[:60]]
    except BaseException as e:  # KeyboardInterrupt is what is looked for
        what = [type(e).__name__]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    return [*what, time.monotonic() - t0 < PROMPT]


def resumed(call, every: float = 0.1) -> list:
    """[what `call()` ended with, the handler ran, elapsed >= 0.8 s] with SIGALRM every `every`
    seconds and a handler that returns: PEP 475, the call goes on (its timeout counted from its
    start), no InterruptedError."""
    ran = [0]

    def count(signum, frame):
        ran[0] += 1

    signal.signal(signal.SIGALRM, count)
    signal.setitimer(signal.ITIMER_REAL, every, every)
    t0 = time.monotonic()
    try:
        got = call()
        what = ["returned", repr(got)[:60]]
    except BaseException as e:
        what = [type(e).__name__]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
    took = time.monotonic() - t0
    return [*what, ran[0] >= 3, 0.8 <= took < 5]


if name == "signals":  # signals while blocked: BIND_IP HOST SILENT_PORT DEAD_IP ECHO_PORT; what each call ended with
    bind_ip, host, silent, dead, echo = args[0], args[1], int(args[2]), args[3], int(args[4])
    found: dict = {}
    ls = socket.create_server((bind_ip, 0))
    found["accept"] = interrupted(ls.accept)
    found["accept-sigint"] = interrupted(ls.accept, "sigint")
    c = socket.create_connection((host, silent), timeout=10)
    c.settimeout(None)
    found["recv"] = interrupted(lambda: c.recv(100))
    found["recv-sigint"] = interrupted(lambda: c.recv(100), "sigint")
    found["select"] = interrupted(lambda: select.select([c, ls], [], []))
    found["select-sigint"] = interrupted(lambda: select.select([c], [], []), "sigint")
    p = select.poll()
    p.register(c, select.POLLIN)
    found["poll"] = interrupted(lambda: p.poll())
    e = socket.create_connection((host, echo), timeout=10)
    e.settimeout(None)
    found["echo-interrupted"] = interrupted(lambda: e.recv(100))
    e.sendall(b"after")  # the connection is as it was: the echo comes back whole
    found["echo-after"] = e.recv(100).decode()
    found["sendall"] = interrupted(lambda: c.sendall(b"x" * (64 << 20)))  # the peer never reads
    e.close()
    c.settimeout(1.0)
    found["recv-timeout-resumes"] = resumed(lambda: c.recv(100))
    found["select-timeout-resumes"] = resumed(lambda: select.select([c], [], [], 1.0))
    ls.settimeout(1.0)
    found["accept-timeout-resumes"] = resumed(ls.accept)
    ls.settimeout(None)
    port = ls.getsockname()[1]
    threading.Timer(1.0, lambda: socket.create_connection((bind_ip, port), timeout=10).close()).start()
    found["accept-resumes"] = resumed(lambda: ls.accept()[0].close() or "accepted")
    s = socket.socket()
    found["connect"] = interrupted(lambda: s.connect((dead, 9)))
    s.close()
    s = socket.socket()
    found["connect-then"] = interrupted(lambda: s.connect((dead, 9)))
    try:
        s.connect((dead, 9))  # the first one goes on in the background, as on Linux
        found["connect-again"] = "connected"
    except OSError as e:
        found["connect-again"] = [type(e).__name__, e.errno]
    s.close()
    s = socket.socket()
    found["connect-resumes"] = resumed(lambda: s.connect((dead, 9)), 0.2)  # to EHOSTUNREACH in ~3 s
    s.close()
    s = socket.socket()
    found["connect-sigint"] = interrupted(lambda: s.connect((dead, 9)), "sigint")
    s.close()
    found["create_connection"] = interrupted(lambda: socket.create_connection((dead, 9)))
    found["create_connection-timeout"] = interrupted(lambda: socket.create_connection((dead, 9), timeout=20))
    s = socket.socket()
    s.settimeout(20)
    found["connect-timeout"] = interrupted(lambda: s.connect((dead, 9)))
    s.close()

    def forever() -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_forever()
        finally:
            loop.close()

    found["run_forever"] = interrupted(forever)
    found["run_forever-sigint"] = interrupted(forever, "sigint")

    async def reading() -> bytes:
        r, w = await asyncio.open_connection(host, silent)
        try:
            return await r.read(100)
        finally:
            w.close()

    found["asyncio.run-sigint"] = interrupted(lambda: asyncio.run(reading()), "sigint")

    async def handled() -> list:
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGALRM, got.set_result, "handled")
        signal.setitimer(signal.ITIMER_REAL, SOON)
        r, w = await asyncio.open_connection(host, silent)
        try:
            done, _ = await asyncio.wait([got, asyncio.ensure_future(r.read(100))], timeout=PROMPT,
                                         return_when=asyncio.FIRST_COMPLETED)
            return [f.result() for f in done]
        finally:
            w.close()
            loop.remove_signal_handler(signal.SIGALRM)

    found["add_signal_handler"] = asyncio.run(handled())
    c.close()
    ls.close()
    out(found)

elif name == "alarms-own-thread":  # alarms while a thread of the program's own idles: HOST ECHO_PORT ROUNDS
    # The program's own thread blocks no signal: one sent to the process while the main thread
    # holds a usnet engine may be the kernel's to give to that thread, and CPython then runs the
    # handler in the main thread at its next bytecode (under `usnet run` the holds block nothing:
    # the handler is deferred to the hold's end, usnet.client.sigdefer, whichever thread took it). The
    # alarm's exception must still come out of the recv whole, as a kernel call's, never inside
    # the step: the connection carries on, each message echoed once and in order.
    import re

    host, echo, rounds = args[0], int(args[1]), int(args[2])
    idle = threading.Event()
    threading.Thread(target=idle.wait, args=(120,), daemon=True).start()
    c = socket.create_connection((host, echo), timeout=10)
    c.settimeout(None)
    raising = [False]  # the handler raises once a round, and only in its wait (later alarms return)

    def alarm(signum, frame):
        if raising[0]:
            raising[0] = False
            raise Alarm(signum)

    signal.signal(signal.SIGALRM, alarm)
    buf, alarms, sent, ends = b"", 0, 0, time.monotonic() + 60
    interrupted: set[int] = set()  # the rounds whose recv an alarm's exception ended
    for i in range(rounds):
        if time.monotonic() > ends:  # bounded in time as in count
            break
        c.sendall(b"<%06d>" % i)
        sent += 1
        try:
            raising[0] = True
            signal.setitimer(signal.ITIMER_REAL, 0.0001 * (1 + i % 9), 0.002)  # lands anywhere in the wait
            while b"<%06d>" % i not in buf:
                chunk = c.recv(65536)
                assert chunk, "EOF"
                buf += chunk
            raising[0] = False
        except Alarm:
            alarms += 1
            interrupted.add(i)
        finally:
            raising[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    idle.set()
    c.sendall(b"<end>")
    for _ in range(100000):  # bounded: a chunk at a time
        if b"<end>" in buf:
            break
        chunk = c.recv(65536)
        assert chunk, "EOF before the end"
        buf += chunk
    nums = [int(m) for m in re.findall(rb"<(\d{6})>", buf)]
    # a recv the alarm's exception ended may have taken what had come with it, as a kernel recv
    # does whose return the handler's exception overtook (CPython runs the handler as the call
    # returns, before its value is stored), the last round's too, on either stack: a message is
    # lost only in a round whose recv an alarm ended (its own, or a later one's that read it late).
    # The connection carries on: "<end>", sent after the alarms stopped, comes back.
    lost = set(range(sent)) - set(nums)
    out({"in-order-once": nums == sorted(set(nums)), "lost-only-where-an-alarm-ended-a-recv": lost <= interrupted,
         "alarms": alarms > 0, "end": b"<end>" in buf})

elif name == "handlers":  # what the program sees of its signal handlers: HOST ECHO_PORT
    # usnet.patch defers the program's handlers to the end of a usnet step (usnet.client.sigdefer):
    # signal.signal and signal.getsignal must still show the program's own, Python's SIGINT
    # handler its KeyboardInterrupt, asyncio its handlers, as on the kernel.
    host, echo = args[0], int(args[1])
    found = {"sigint-default": signal.getsignal(signal.SIGINT) is signal.default_int_handler}

    def h(signum, frame):
        pass

    found["signal-returns"] = [repr(signal.signal(signal.SIGALRM, h)), signal.getsignal(signal.SIGALRM) is h,
                               signal.signal(signal.SIGALRM, signal.SIG_IGN) is h,
                               repr(signal.signal(signal.SIGALRM, signal.SIG_DFL))]
    idle = threading.Event()
    threading.Thread(target=idle.wait, args=(120,), daemon=True).start()  # a thread of our own
    c = socket.create_connection((host, echo), timeout=10)
    kill = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    kill.start()
    try:
        for i in range(100000):  # round trips until Ctrl-C (bounded)
            c.sendall(b"<%06d>" % i)
            got = b""
            while b"<%06d>" % i not in got:
                got += c.recv(65536)
        found["ctrl-c"] = "never came"
    except KeyboardInterrupt:
        found["ctrl-c"] = "KeyboardInterrupt"
    kill.join()
    c.sendall(b"<after>")  # and the connection carries on (what the interrupted recv took is gone)
    got = b""
    while b"<after>" not in got:
        chunk = c.recv(65536)
        if not chunk:
            break
        got += chunk
    found["after-ctrl-c"] = got.endswith(b"<after>")

    async def main() -> list:
        loop = asyncio.get_running_loop()
        heard = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, heard.set_result, "heard")
        seen = [getattr(signal.getsignal(signal.SIGUSR1), "__name__", "?"),
                type(signal.getsignal(signal.SIGINT)).__name__]  # asyncio.run's own SIGINT handler
        r, w = await asyncio.open_connection(host, echo)
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        for _ in range(20):  # round trips on usnet while the signal comes
            w.write(b"x")
            await r.readexactly(1)
        seen.append(await asyncio.wait_for(heard, 10))
        seen.append(loop.remove_signal_handler(signal.SIGUSR1))
        seen.append(repr(signal.getsignal(signal.SIGUSR1)))
        w.close()
        return seen

    found["asyncio"] = asyncio.run(main())
    found["sigint-after-asyncio"] = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    idle.set()
    out(found)

elif name == "tls-server":  # a plain connection upgraded to TLS by the server: KIND BIND_IP CERT KEY; serves
    import ssl

    kind, bind_ip, cert, key = args
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if kind == "smtp":  # aiosmtpd: STARTTLS puts asyncio's SSLProtocol under the transport (set_protocol)
        import hashlib

        from aiosmtpd.controller import Controller

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                digest = hashlib.sha256(envelope.content).hexdigest()[:16]
                return f"250 {digest} {len(envelope.content)} tls={session.ssl is not None}"

        controller = Controller(Handler(), hostname=bind_ip, port=8025, tls_context=ctx, require_starttls=True)
        controller.start()
        listening(8025)
        threading.Event().wait()
    else:  # asyncio: a line, then StreamWriter.start_tls (server side), then length-prefixed blobs
        import hashlib

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                if await r.readline() != b"STARTTLS\n":
                    return
                w.write(b"GO\n")
                await w.drain()
                await w.start_tls(ctx)
                for _ in range(100):
                    line = await r.readline()
                    if line in (b"", b"bye\n"):
                        w.write(b"bye\n")
                        break
                    blob = await r.readexactly(int(line))
                    w.write(hashlib.sha256(blob).hexdigest().encode() + b"\n")
                await w.drain()
            finally:
                w.close()
                try:
                    await w.wait_closed()
                except (OSError, ssl.SSLError):
                    pass

        async def serve() -> None:
            server = await asyncio.start_server(handle, bind_ip, 0)
            listening(server.sockets[0].getsockname()[1])
            await server.serve_forever()

        asyncio.run(serve())

elif name == "tls-client":  # STARTTLS from the client: KIND HOST PORT CA; prints what it saw
    import hashlib
    import ssl

    kind, host, port, cafile = args[0], args[1], int(args[2]), args[3]
    ctx = ssl.create_default_context(cafile=cafile)
    blobs = [b"x" * 10, os.urandom(1 << 20), b""]
    found = {}
    if kind == "smtp":
        import smtplib

        mail = b"Subject: t\r\n\r\n" + b"line\r\n" * 20000
        with smtplib.SMTP(host, port, timeout=20) as s:
            s.ehlo()
            found["plain"] = [s.has_extn("starttls"), s.mail("a@example.org")[0]]  # 530: STARTTLS first
            found["starttls"] = s.starttls(context=ctx)[0]
            s.ehlo()
            found["tls"] = [s.sock.version(), s.has_extn("starttls"), s.mail("a@example.org")[0],
                            s.rcpt("b@example.org")[0], s.data(mail)[1].decode().split(" ", 1)[1]]
    elif kind == "sync":  # a blocking socket: a line, then SSLContext.wrap_socket over the same connection
        c = socket.create_connection((host, port), timeout=20)
        c.sendall(b"STARTTLS\n")
        f = c.makefile("rb")
        found["go"] = f.readline().decode()
        f.close()
        t = ctx.wrap_socket(c, server_hostname=host)
        found["version"] = t.version()
        found["interrupted"] = interrupted(lambda: t.recv(10))  # the server is silent: SIGALRM ends it
        found["sigint"] = interrupted(lambda: t.recv(10), "sigint")  # and the connection goes on, below
        tf = t.makefile("rwb")
        got = []
        for b in blobs:
            tf.write(b"%d\n" % len(b) + b)
            tf.flush()
            got.append(tf.readline().decode().strip() == hashlib.sha256(b).hexdigest())
        tf.write(b"bye\n")
        tf.flush()
        found["answers"] = got
        found["bye"] = [tf.readline().decode(), tf.read().decode()]  # then the server's close: EOF
        tf.close()
        t.close()
    else:  # asyncio: open_connection, a line, StreamWriter.start_tls (the client's loop.start_tls)
        async def client() -> None:
            r, w = await asyncio.open_connection(host, port)
            w.write(b"STARTTLS\n")
            found["go"] = (await r.readline()).decode()
            await w.start_tls(ctx, server_hostname=host)
            found["version"] = w.get_extra_info("ssl_object").version()
            got = []
            for b in blobs:
                w.write(b"%d\n" % len(b) + b)
                got.append((await r.readline()).decode().strip() == hashlib.sha256(b).hexdigest())
            w.write(b"bye\n")
            found["answers"] = got
            found["bye"] = [(await r.readline()).decode(), (await r.read()).decode()]
            w.close()
            try:
                await w.wait_closed()
            except (OSError, ssl.SSLError) as e:
                found["closed"] = type(e).__name__

        asyncio.run(client())
    out(found)

elif name == "eyeballs":  # a name with a dead address and a live one: NAME LIVE_PORT CLOSED_PORT [all|connect]
    import re

    host, live, closed = args[0], int(args[1]), int(args[2])
    connect_only = args[3:] == ["connect"]
    found = {"names": [a[4][0] for a in socket.getaddrinfo(host, live, type=socket.SOCK_STREAM)]}

    def plain(text: str) -> str:
        """An error's text, the addresses left as they are and the ports named."""
        return re.sub(rf"\b({live}|{closed})\b", lambda m: "LIVE" if m.group(1) == str(live) else "CLOSED", text)

    def err(e: BaseException) -> list:
        return [type(e).__name__, getattr(e, "errno", None), plain(str(e))]

    def timed(call) -> list:
        t0 = time.monotonic()
        try:
            got = call()
        except BaseException as e:
            got = err(e)
            if isinstance(e, BaseExceptionGroup):
                got.append([err(x) for x in e.exceptions])
        took = time.monotonic() - t0
        return [got, "at once" if took < 1.0 else "waited"]  # (for a dead neighbour: up to ~3 s)

    async def aopen(port: int, **kw) -> str:
        _, w = await asyncio.open_connection(host, port, **kw)
        peer = w.get_extra_info("peername")[0]
        w.close()
        await w.wait_closed()
        return peer

    def sopen(port: int, **kw) -> str:
        with socket.create_connection((host, port), **kw) as s:
            return s.getpeername()[0]

    found["asyncio-eyeballs"] = timed(lambda: asyncio.run(aopen(live, happy_eyeballs_delay=0.25)))
    found["asyncio-eyeballs-interleave"] = timed(lambda: asyncio.run(aopen(live, happy_eyeballs_delay=0.25,
                                                                          interleave=2)))
    found["asyncio-in-turn"] = timed(lambda: asyncio.run(aopen(live)))
    found["create_connection"] = timed(lambda: sopen(live))
    found["create_connection-timeout"] = timed(lambda: sopen(live, timeout=0.5))
    if connect_only:
        out(found)
        sys.exit(0)
    found["all-fail"] = timed(lambda: sopen(closed))
    found["all-fail-all_errors"] = timed(lambda: sopen(closed, all_errors=True))
    found["all-fail-all_errors-timeout"] = timed(lambda: sopen(closed, timeout=0.5, all_errors=True))
    found["asyncio-all-fail"] = timed(lambda: asyncio.run(aopen(closed)))
    found["asyncio-all-fail-eyeballs"] = timed(lambda: asyncio.run(aopen(closed, happy_eyeballs_delay=0.25)))
    out(found)

elif name == "manager":  # multiprocessing.managers.BaseManager over TCP: server BIND_IP | client HOST PORT
    from multiprocessing import AuthenticationError
    from multiprocessing.managers import BaseManager

    class Manager(BaseManager):
        pass

    if args[0] == "server":
        shared: dict = {}
        Manager.register("shared", callable=lambda: shared)
        Manager.register("echo", callable=lambda: None)  # its proxy is a plain value
        server = Manager(address=(args[1], 0), authkey=b"secret").get_server()
        listening(server.address[1])
        server.serve_forever()
    else:
        host, port = args[1], int(args[2])
        Manager.register("shared")
        found = {}
        wrong = Manager(address=(host, port), authkey=b"wrong")
        try:
            wrong.connect()
            found["wrong-key"] = "connected"
        except AuthenticationError as e:
            found["wrong-key"] = [type(e).__name__, str(e)]
        for round_ in range(2):  # twice: a second manager on a new connection sees the first's writes
            m = Manager(address=(host, port), authkey=b"secret")
            m.connect()
            d = m.shared()
            d.update({f"k{round_}": "v" * 100000, "n": round_})
            found[f"round{round_}"] = sorted((k, len(str(v))) for k, v in d.items())
            try:
                d.no_such_method()
            except AttributeError as e:
                found["missing"] = type(e).__name__
            del d
        out(found)

elif name == "urllib3":  # urllib3.PoolManager from 20 threads at once: BASE_URL FILE...; every body whole
    import concurrent.futures
    import hashlib

    import urllib3

    base, files = args[0], args[1:]
    pool = urllib3.PoolManager(maxsize=20, block=True, retries=False, timeout=urllib3.Timeout(connect=10, read=20))

    def fetch(i: int) -> list:
        got = []
        for j in range(8):
            f = files[(i + j) % len(files)]
            r = pool.request("GET", f"{base}/{f}", preload_content=j % 2 == 0)
            body = r.data if j % 2 == 0 else b"".join(r.stream(65536))
            got.append([f, r.status, hashlib.sha256(body).hexdigest()[:16]])
            if j % 2:
                r.release_conn()
        return got

    with concurrent.futures.ThreadPoolExecutor(20) as ex:
        results = list(ex.map(fetch, range(20)))
    per_file: dict = {}
    for got in results:
        for f, status, digest in got:
            per_file.setdefault(f, set()).add((status, digest))
    pools = list(pool.pools._container.values())
    out({"files": {f: sorted(map(list, v)) for f, v in sorted(per_file.items())}, "requests": sum(map(len, results)),
         "pools": len(pools), "connections": sum(p.num_connections for p in pools) <= 20})

elif name == "ctrl-c-server":  # a server stopped by Ctrl-C: KIND BIND_IP; runs until SIGINT
    kind, bind_ip = args
    if kind == "socketserver":
        import socketserver

        class Echo(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    self.wfile.write(line)

        with socketserver.ThreadingTCPServer((bind_ip, 0), Echo) as server:
            server.daemon_threads = True
            listening(server.server_address[1])
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                print("interrupted", flush=True)
    elif kind == "asyncio":
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while line := await r.readline():
                w.write(line)
            w.close()

        async def serve() -> None:
            server = await asyncio.start_server(echo, bind_ip, 0)
            listening(server.sockets[0].getsockname()[1])
            async with server:
                await server.serve_forever()

        asyncio.run(serve())  # Ctrl-C: KeyboardInterrupt out of asyncio.run, a traceback, exit 1
    else:  # a blocking accept loop, a thread per connection
        ls = socket.create_server((bind_ip, 0))
        listening(ls.getsockname()[1])

        def serve_one(c: socket.socket) -> None:
            with c:
                while data := c.recv(65536):
                    c.sendall(data)

        while True:
            conn, _ = ls.accept()
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

elif name == "wake":  # another thread's shutdown or close while a call blocks: BIND_IP HOST SILENT_PORT
    bind_ip, host, silent = args[0], args[1], int(args[2])
    found = {}

    def blocked(call, then, timeout=None) -> list:
        """[what `call()` in a thread ended with, whether within 1 s of `then()` in this one]."""
        box: list = []

        def run() -> None:
            try:
                box.append(["returned", repr(call())[:40]])
            except BaseException as e:
                box.append([type(e).__name__, getattr(e, "errno", None)])

        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.3)  # (only so that the call is blocked when `then` comes; the result does not depend on it)
        t0 = time.monotonic()
        then()
        t.join(10)
        return [*(box[0] if box else ["still blocked"]), time.monotonic() - t0 < 1.0]

    for how in ("SHUT_RD", "SHUT_RDWR", "SHUT_WR"):
        c = socket.create_connection((host, silent), timeout=10)
        c.settimeout(2.5 if how == "SHUT_WR" else None)
        found[f"recv-{how}"] = blocked(lambda: c.recv(10), lambda: c.shutdown(getattr(socket, how)))  # noqa: B023
        c.close()
    c = socket.create_connection((host, silent), timeout=10)
    c.settimeout(1.5)
    found["recv-close"] = blocked(lambda: c.recv(10), c.close)
    for how in ("SHUT_RD", "SHUT_RDWR"):
        ls = socket.create_server((bind_ip, 0))
        ls.settimeout(2.5)
        found[f"accept-{how}"] = blocked(ls.accept, lambda: ls.shutdown(getattr(socket, how)))  # noqa: B023
        try:
            ls.accept()
            found[f"accept-after-{how}"] = "accepted"
        except OSError as e:
            found[f"accept-after-{how}"] = [type(e).__name__, e.errno]
        ls.listen()  # still bound: it listens again on its port
        with socket.create_connection(ls.getsockname(), timeout=10) as c2:
            c2.sendall(b"again")
            conn, _ = ls.accept()
            with conn:
                found[f"listen-again-{how}"] = conn.recv(10).decode()
        ls.close()
    ls = socket.create_server((bind_ip, 0))
    ls.settimeout(1.5)
    found["accept-close"] = blocked(ls.accept, ls.close)
    out(found)
