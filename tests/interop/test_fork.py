"""fork() with usnet TCP sockets open: the child uses what it inherited, as on Linux.

The connection stays in the parent's stack; the child reaches it through a kernel socketpair
the parent splices to it (usnet.client.forked). usnetd runs as a child process on a TAP of its
own in the test's network namespace (tests/helpers/usnetd.TapDaemon), and the kernel's sockets
there are the peers. Each child reports on a pipe and leaves with os._exit, never returning
into pytest.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.helpers.util import wait_until

pytestmark = pytest.mark.privileged

LIMIT = 20  # seconds: reached only when something is broken


@pytest.fixture
def tapd(tapd, monkeypatch):
    """The interop `tapd` (usnetd on a TAP), and usnet.socket configured for it from the
    environment (children too)."""
    from usnet import socket as us

    monkeypatch.setenv("USNET_SOCKET", tapd.path)
    monkeypatch.setenv("USNET_NETIF", "usnet0")
    us.configure(None, None)
    try:
        yield tapd
    finally:
        us.configure(None, None)


def _child(w: int, work) -> None:
    """In a child of fork(): run `work`, write its report (or the failure) to `w`, leave."""
    try:
        out = work()
    except BaseException as e:  # the report says what failed
        out = f"failed: {e!r}"
    finally:
        try:
            os.write(w, str(out).encode())
        finally:
            os._exit(0)


def _forked(work, go: bool = False) -> tuple[int, int, int | None]:
    """Run `work` in a child of fork() that reports on a pipe (`_child`): (the report's read end,
    the child's pid, and with `go` the write end of a pipe whose read end `work` is given: the
    parent's word to the child)."""
    go_r = go_w = None
    if go:
        go_r, go_w = os.pipe()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if go_w is not None:
            os.close(go_w)
        _child(w, (lambda: work(go_r)) if go else work)
    os.close(w)
    if go_r is not None:
        os.close(go_r)
    return r, pid, go_w


def _report(r: int, pid: int) -> str:
    _, status = os.waitpid(pid, 0)
    try:
        got = os.read(r, 65536).decode()
    finally:
        os.close(r)
    assert status == 0
    return got


def _read_all(s) -> bytes:
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    return got


def _done(pid: int) -> bool:
    """Whether process `pid` has ended (gone, or a zombie its parent has not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@contextlib.contextmanager
def _served(prog, ip: str):
    """(process, port) of a server program run unmodified under `usnet run` with `ip`, which
    prints "port N" once it listens; stopped after, and its stderr must hold no traceback."""
    env = {k: v for k, v in os.environ.items() if k != "USNET_PATCH"}
    proc = subprocess.Popen([sys.executable, "-m", "usnet", "run", "--", sys.executable, str(prog), ip],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], LIMIT)
        line = proc.stdout.readline().decode() if ready else ""
        m = re.search(r"port (\d+)", line)
        assert m, f"the server did not start: {line!r}"
        yield proc, int(m.group(1))
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=LIMIT)
    assert b"Traceback" not in err, err.decode()[-3000:]


def test_a_forking_server_unmodified_serves_each_connection_from_its_child(tapd, tmp_path):
    """`usnet run` a stdlib socketserver.ForkingTCPServer: each request is handled in a child
    of its own, on the connection the parent accepted (it got EBADF naming the parent)."""
    prog = tmp_path / "forking.py"
    prog.write_text(textwrap.dedent("""
        import hashlib, os, socketserver, sys

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                n = int(self.rfile.readline())
                data = self.rfile.read(n)
                self.wfile.write(f"{os.getpid()} {hashlib.sha256(data).hexdigest()}\\n".encode())
                self.wfile.write(data[::-1])

        with socketserver.ForkingTCPServer((sys.argv[1], 0), Handler) as srv:
            print("port", srv.server_address[1], flush=True)
            srv.serve_forever()
    """))
    with _served(prog, tapd.usnet_ip) as (proc, port):
        pids = set()
        for i in range(3):
            data = os.urandom(200_000 + i)
            with socket.create_connection((tapd.usnet_ip, port), timeout=LIMIT) as c:
                c.sendall(b"%d\n" % len(data) + data)
                f = c.makefile("rb")
                pid, digest = f.readline().split()
                assert digest.decode() == hashlib.sha256(data).hexdigest()
                assert f.read() == data[::-1]  # to EOF: the child's close ends the connection
                pids.add(pid)
        assert len(pids) == 3 and str(proc.pid).encode() not in pids  # three children


def test_gunicorn_sync_workers_serve_on_usnet(tapd, tmp_path):
    """gunicorn, unmodified under `usnet run`: its master makes the listener and forks two sync
    workers, which select on it and accept (a prefork server as deployed); curl's requests are
    answered by the workers, each body's SHA-256 intact."""
    pytest.importorskip("gunicorn")
    (tmp_path / "app.py").write_text(textwrap.dedent("""
        import hashlib, os

        def app(environ, start_response):
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            out = f"{os.getpid()} {hashlib.sha256(body).hexdigest()}".encode()
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
            return [out]
    """))
    env = {k: v for k, v in os.environ.items() if k != "USNET_PATCH"}
    proc = subprocess.Popen([sys.executable, "-m", "usnet", "run", "--", sys.executable, "-m", "gunicorn",
                             "-w", "2", "-b", f"{tapd.usnet_ip}:0", "--chdir", str(tmp_path),
                             "--control-socket", str(tmp_path / "gunicorn.ctl"), "app:app"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        port, workers, log = None, set(), b""
        while len(workers) < 2:  # the master's lines: where it listens, then each worker booting
            ready, _, _ = select.select([proc.stderr], [], [], LIMIT)
            line = proc.stderr.readline() if ready else b""
            assert line, f"gunicorn did not start: {log.decode()[-2000:]}"
            log += line
            if m := re.search(rb"Listening at: http://[\d.]+:(\d+)", line):
                port = int(m.group(1))
            if m := re.search(rb"Booting worker with pid: (\d+)", line):
                workers.add(int(m.group(1)))
        assert port
        for i in range(8):
            body = os.urandom(50_000 + i)
            with socket.create_connection((tapd.usnet_ip, port), timeout=LIMIT) as k:
                k.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body)
                head, _, answer = _read_all(k).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            pid, digest = answer.decode().split()
            assert int(pid) in workers and digest == hashlib.sha256(body).hexdigest()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=LIMIT)
    assert b"Traceback" not in err, err.decode()[-3000:]


def test_prefork_children_accept_on_the_parents_listener(tapd):
    """A listener made before fork(): two children accept() a connection each (blocking, as a
    prefork server's workers do), and the parent's listener accepts on afterwards."""
    from usnet import socket as us

    ls = us.socket()
    ls.bind((tapd.usnet_ip, 0))
    ls.listen(8)
    ls.settimeout(LIMIT)
    addr = ls.getsockname()

    def serve_one() -> str:
        c, peer = ls.accept()
        c.settimeout(LIMIT)
        assert peer[0] == tapd.host_ip and c.getpeername() == peer and c.getsockname()[1] == addr[1]
        data = _read_all(c)
        c.sendall(f"{os.getpid()} {hashlib.sha256(data).hexdigest()}".encode())
        c.close()
        return "served"

    kids = [_forked(serve_one)[:2] for _ in range(2)]
    answers = []
    for i in range(2):
        data = os.urandom(100_000 + i)
        with socket.create_connection(addr, timeout=LIMIT) as k:
            k.sendall(data)
            k.shutdown(socket.SHUT_WR)
            pid, digest = _read_all(k).decode().split()
            assert digest == hashlib.sha256(data).hexdigest()
            answers.append(int(pid))
    assert sorted(answers) == sorted(pid for _, pid in kids)
    assert [_report(r, pid) for r, pid in kids] == ["served", "served"]
    with socket.create_connection(addr, timeout=LIMIT) as k:  # the parent's own listener, as before
        c, _ = ls.accept()
        c.sendall(b"parent")
        c.close()
        assert _read_all(k) == b"parent"
    ls.close()


def test_a_child_that_waits_on_an_inherited_listener_times_out_as_a_listener_does(tapd):
    from usnet import socket as us

    ls = us.socket()
    ls.bind((tapd.usnet_ip, 0))
    ls.listen()

    def wait() -> str:
        out = []
        ls.setblocking(False)
        try:
            ls.accept()
        except BlockingIOError:
            out.append("EAGAIN")
        ls.settimeout(0.2)
        try:
            ls.accept()
        except TimeoutError:
            out.append("timed out")
        return ",".join(out)

    r, pid, _ = _forked(wait)
    assert _report(r, pid) == "EAGAIN,timed out"
    ls.close()


def test_prefork_children_select_on_the_parents_listener(tapd):
    """Selector-based prefork workers (as gunicorn's): each child polls the inherited listener and
    accepts without blocking; a waiting connection makes it readable in every child, the ones
    that lose the race get EAGAIN, and each connection is served once."""
    import selectors

    from usnet import socket as us

    ls = us.socket()
    ls.bind((tapd.usnet_ip, 0))
    ls.listen(8)
    addr = ls.getsockname()
    n = 6

    def worker(stop: int) -> str:
        ls.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(ls, selectors.EVENT_READ, "listener")
        sel.register(stop, selectors.EVENT_READ, "stop")
        served = 0
        for _ in range(500):
            events = sel.select(LIMIT)
            if not events or any(key.data == "stop" for key, _ in events):
                break
            try:
                c, _ = ls.accept()
            except BlockingIOError:
                continue  # another worker took it
            c.settimeout(LIMIT)
            c.sendall(str(os.getpid()).encode())
            c.close()
            served += 1
        return str(served)

    kids = [_forked(worker, go=True) for _ in range(2)]  # (report, pid, stop)
    seen = []
    for _ in range(n):
        with socket.create_connection(addr, timeout=LIMIT) as k:
            seen.append(int(_read_all(k)))
    for _, _, stop_w in kids:
        os.write(stop_w, b"x")
        os.close(stop_w)
    served = [int(_report(r, pid)) for r, pid, _ in kids]
    assert set(seen) <= {pid for _, pid, _ in kids}
    assert sum(served) == n and sorted(served) == sorted(seen.count(pid) for _, pid, _ in kids)
    ls.close()


def test_an_inherited_connection_is_shared_and_ends_with_its_last_reference(tapd):
    """As the kernel's: the child's send reaches the peer; the parent's close does not end the
    connection while the child still holds it; the child's exit, the last reference, sends the FIN."""
    from usnet import socket as us

    ks = socket.create_server((tapd.host_ip, 0))
    ks.settimeout(LIMIT)
    s = us.create_connection(ks.getsockname(), timeout=LIMIT)
    k, _ = ks.accept()
    k.settimeout(LIMIT)
    s.sendall(b"parent;")

    def use(go: int) -> str:
        assert os.read(go, 1) == b"g"  # the parent closed its copy
        s.sendall(b"child;")
        got = s.recv(100)  # what the peer sent after the parent's close: nobody else reads it
        s.close()
        return got.decode()

    r, pid, go_w = _forked(use, go=True)
    assert go_w is not None
    s.close()  # the parent's reference: the child's keeps the connection open
    k.sendall(b"to whoever reads")
    os.write(go_w, b"g")
    os.close(go_w)
    assert _read_all(k) == b"parent;child;"  # to EOF: the child's close was the last reference
    assert _report(r, pid) == "to whoever reads"
    k.close()
    ks.close()


def test_a_child_that_never_uses_an_inherited_connection_leaves_it_to_the_parent(tapd):
    from usnet import socket as us

    ks = socket.create_server((tapd.host_ip, 0))
    ks.settimeout(LIMIT)
    s = us.create_connection(ks.getsockname(), timeout=LIMIT)
    k, _ = ks.accept()
    k.settimeout(LIMIT)
    r, pid, _ = _forked(lambda: "left")
    assert _report(r, pid) == "left"
    s.sendall(b"after the child")  # the child's exit did not end it
    assert k.recv(100) == b"after the child"
    k.sendall(b"back")
    assert s.recv(100) == b"back"
    s.close()
    assert _read_all(k) == b""
    k.close()
    ks.close()


def test_a_forking_udp_server_unmodified_answers_each_datagram_from_a_child(tapd, tmp_path):
    """`usnet run` a stdlib socketserver.ForkingUDPServer: the parent receives each datagram and
    forks a child, which answers on the socket it inherited (through the parent's stack)."""
    prog = tmp_path / "forking_udp.py"
    prog.write_text(textwrap.dedent("""
        import hashlib, os, socketserver, sys

        class Handler(socketserver.DatagramRequestHandler):
            def handle(self):
                data = self.rfile.read()
                self.wfile.write(f"{os.getpid()} {hashlib.sha256(data).hexdigest()}".encode())

        with socketserver.ForkingUDPServer((sys.argv[1], 0), Handler) as srv:
            print("port", srv.server_address[1], flush=True)
            srv.serve_forever()
    """))
    with _served(prog, tapd.usnet_ip) as (proc, port):
        k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        k.settimeout(LIMIT)
        pids = set()
        for i in range(3):
            data = os.urandom(1200 + i)
            k.sendto(data, (tapd.usnet_ip, port))
            answer, src = k.recvfrom(2000)
            pid, digest = answer.split()
            assert digest.decode() == hashlib.sha256(data).hexdigest() and src[1] == port
            pids.add(pid)
        k.close()
        assert len(pids) == 3 and str(proc.pid).encode() not in pids
        # the children are done before the parent is stopped: a child's send is carried out by the
        # parent's stack, and its answer (sent, the peer has it) may still be on its way back to the child
        wait_until(lambda: all(_done(int(p)) for p in pids), LIMIT, "the children to finish")


def test_a_child_receives_polls_and_sends_on_an_inherited_udp_socket(tapd):
    """A child receives on its inherited UDP socket only while it asks (blocking, non-blocking,
    select on its descriptor), as on Linux, and its sends leave from the socket's own port."""
    from usnet import socket as us

    u = us.socket(us.AF_INET, us.SOCK_DGRAM)
    u.bind((tapd.usnet_ip, 0))
    k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    k.bind((tapd.host_ip, 0))
    k.settimeout(LIMIT)

    def use(go: int) -> str:
        out = []
        try:
            u.recvfrom(100, socket.MSG_DONTWAIT)
        except BlockingIOError:
            out.append("EAGAIN")
        u.sendto(b"ready", k.getsockname())
        assert os.read(go, 1) == b"g"  # the peer sent
        readable, _, _ = select.select([u], [], [], LIMIT)
        out.append("readable" if readable == [u] else "not readable")
        u.settimeout(LIMIT)
        data, src = u.recvfrom(100)
        out.append(f"{data.decode()} from {src[1] == k.getsockname()[1]}")
        u.close()
        return ",".join(out)

    r, pid, go_w = _forked(use, go=True)
    assert go_w is not None
    data, src = k.recvfrom(100)
    assert data == b"ready" and src == u.getsockname()  # the child's send: the socket's own port
    k.sendto(b"hello", u.getsockname())
    os.write(go_w, b"g")
    os.close(go_w)
    assert _report(r, pid) == "EAGAIN,readable,hello from True"
    u.sendto(b"parent", k.getsockname())  # the parent's socket is as it was
    assert k.recvfrom(100)[0] == b"parent"
    u.close()
    k.close()


def _serve_one_spawned(ls) -> None:
    """In a process multiprocessing spawned (a fresh interpreter): accept one connection on the
    listener it was handed and echo it reversed, after its pid, the peer's address and its port."""
    c, peer = ls.accept()
    data = _read_all(c)
    c.sendall(f"{os.getpid()} {peer[0]} {ls.getsockname()[1]} ".encode() + data[::-1])
    c.close()


def test_a_spawned_process_accepts_on_a_listener_multiprocessing_handed_it(tapd):
    """multiprocessing's spawn pickles the socket for the new interpreter: it gets the same
    service as a fork's child (an agent of the parent's, on a link multiprocessing passes)."""
    import multiprocessing

    from usnet import socket as us

    ls = us.socket()
    ls.bind((tapd.usnet_ip, 0))
    ls.listen()
    ls.settimeout(LIMIT)
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=_serve_one_spawned, args=(ls,))
    p.start()
    try:
        data = os.urandom(100_000)
        with socket.create_connection(ls.getsockname(), timeout=LIMIT) as k:
            k.sendall(data)
            k.shutdown(socket.SHUT_WR)
            pid, peer, port, back = _read_all(k).split(b" ", 3)
        assert int(pid) == p.pid and back == data[::-1]
        assert (peer.decode(), int(port)) == (tapd.host_ip, ls.getsockname()[1])
        p.join(LIMIT)
        assert p.exitcode == 0
    finally:
        if p.is_alive():
            p.kill()
        ls.close()
