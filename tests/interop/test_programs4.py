"""A fourth sweep of unmodified programs and libraries on usnet against kernel peers (issue 16).

Signals delivered while the main thread blocks in a usnet call (accept, recv, connect to a host
that never answers, select and poll on usnet descriptors, create_connection, asyncio's
run_forever and asyncio.run under the policy): a SIGALRM handler that raises, and Ctrl-C's
SIGINT, end the call at once with the handler's exception, and a handler that returns lets the
call go on (PEP 475), as on the kernel.

Each program (tests/peers/programs4.py) runs under `usnet run` and, as the reference, on the
kernel's sockets: what it prints must be the same, and its own checks hold on both.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.interop.test_patch import (  # noqa: F401  (a fixture)
    LIMIT,
    PeerProgram,
    child_env,
    kernel_env,
    kernel_http_server,
    started,
    stop,
    usnetd_path,
)

pytestmark = pytest.mark.privileged
_P = PeerProgram("programs4.py", LIMIT * 2)
_command, _run, _kernel_env = _P.command, _P.run, kernel_env





def _at_once(path: str, runs: list[tuple[bool, list[str]]], hosts: str | None = None,
             program: PeerProgram = _P) -> list[str]:
    """The program's output (its last line) for each (on usnet, arguments) of `runs`, all running
    at once (each waits mostly on timers and an unanswered neighbour); each must exit 0. With
    `hosts`, all read that file as /etc/hosts: usnet's resolver through USNET_HOSTS, glibc's in a
    mount namespace of the program's own where the file is bound over /etc/hosts. `program`: which
    of tests/peers (this sweep's by default)."""
    procs = []
    try:
        for on_usnet, a in runs:
            cmd, env = program.command(on_usnet, *a), child_env(path) if on_usnet else _kernel_env()
            if hosts is not None and on_usnet:
                env["USNET_HOSTS"] = hosts
            elif hosts is not None:
                cmd = ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', hosts, *cmd]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
        outs = []
        for p, (on_usnet, _) in zip(procs, runs):
            o, e = p.communicate(timeout=LIMIT * 2)
            assert p.returncode == 0, ("usnet" if on_usnet else "kernel", e.decode()[-3000:])
            outs.append(o.decode().strip().split("\n")[-1])
        return outs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _same(ours: str, theirs: str) -> dict:
    o, t = json.loads(ours), json.loads(theirs)
    diffs = {k: (o.get(k), t.get(k)) for k in set(o) | set(t) if o.get(k) != t.get(k)}
    assert not diffs, "\n".join(f"{k}: usnet {a} kernel {b}" for k, (a, b) in sorted(diffs.items()))
    return o


@contextlib.contextmanager
def _serve(host: str, handler: Callable[[socket.socket], None], join: bool = False) -> Iterator[int]:
    """A kernel TCP server in a thread, `handler` in a thread per connection (its timeout LIMIT);
    yields its port. `join`: at the end, wait (bounded) for the handlers to finish too."""
    ls = socket.create_server((host, 0))
    ls.settimeout(0.1)
    done = threading.Event()
    workers: list[threading.Thread] = []

    def run() -> None:
        for _ in range(int(LIMIT * 2 / 0.1)):
            if done.is_set():
                return
            try:
                conn, _ = ls.accept()
            except TimeoutError:
                continue
            conn.settimeout(LIMIT)
            w = threading.Thread(target=handler, args=(conn,), daemon=True)
            workers.append(w)
            w.start()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield ls.getsockname()[1]
    finally:
        done.set()
        t.join(LIMIT)
        for w in workers if join else ():
            w.join(LIMIT)
        ls.close()


def _echo_back(conn: socket.socket) -> None:
    with conn:
        for _ in range(100000):
            try:
                b = conn.recv(65536)
            except OSError:
                return
            if not b:
                return
            conn.sendall(b)


def _echo(host: str) -> contextlib.AbstractContextManager[int]:
    """A kernel TCP echo server in a thread (a thread per connection); yields its port."""
    return _serve(host, _echo_back)


def test_signals_interrupt_blocked_calls_as_on_the_kernel(usnetd_path):  # noqa: F811
    """SIGALRM (a handler that raises) and SIGINT (KeyboardInterrupt) while blocked in accept, recv,
    select, poll, connect and create_connection to an address nobody answers, asyncio's
    run_forever and asyncio.run: the exception comes at once; a handler that returns lets recv,
    accept and select with a timeout go on to their timeout, and a blocking accept to its
    connection; loop.add_signal_handler's callback runs. Under `usnet run` as on the kernel."""
    path, usnet_ip, host_ip = usnetd_path
    dead = host_ip.rsplit(".", 1)[0] + ".9"  # on the TAP's subnet; no one answers its ARP
    silent = socket.create_server((host_ip, 0))  # takes connections, never sends
    with silent, _echo(host_ip) as echo:
        ports = [str(silent.getsockname()[1]), dead, str(echo)]
        ours, theirs = _at_once(path, [(True, ["signals", usnet_ip, host_ip, *ports]),
                                       (False, ["signals", host_ip, host_ip, *ports])])
    found = _same(ours, theirs)
    assert found["accept"] == ["Alarm", True] and found["recv-sigint"] == ["KeyboardInterrupt", True]
    assert found["recv-timeout-resumes"] == ["TimeoutError", True, True]
    assert found["accept-resumes"] == ["returned", "'accepted'", True, True]
    assert found["add_signal_handler"] == ["handled"] and found["echo-after"] == "after"
    assert found["connect-resumes"] == ["OSError", True, True]  # EHOSTUNREACH, not InterruptedError


@pytest.mark.parametrize("placement", ["usnet-server", "usnet-client"])
@pytest.mark.parametrize("kind", ["asyncio", "sync", "smtp"])
def test_starttls_upgrades_a_plain_connection_as_on_the_kernel(usnetd_path, ca, tmp_path, kind, placement):  # noqa: F811
    """STARTTLS: a plain connection that carries a line, then TLS over the same connection.
    asyncio: StreamWriter.start_tls on both sides (loop.start_tls), then 1 MB each way; sync: the
    client's SSLContext.wrap_socket of a connected socket that has read a line through makefile;
    the sync client's TLS recv, the server silent, ends with a signal's exception at once (SIGALRM,
    SIGINT) and the connection goes on after it;
    smtp: smtplib's starttls against aiosmtpd with require_starttls (which swaps asyncio's
    SSLProtocol under its transport with set_protocol). Under `usnet run`, the server or the
    client, against the other on the kernel: what the client sees is what it sees kernel to kernel."""
    if kind == "smtp":
        pytest.importorskip("aiosmtpd")
    path, usnet_ip, host_ip = usnetd_path
    cacert, cert, key = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(cacert))
    leaf = ca.issue_cert(usnet_ip, host_ip)
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    server_kind = "smtp" if kind == "smtp" else "asyncio"
    outs = []
    for server_on_usnet, client_on_usnet in ((placement == "usnet-server", placement == "usnet-client"),
                                             (False, False)):
        ip = usnet_ip if server_on_usnet else host_ip
        server, port = started(_command(server_on_usnet, "tls-server", server_kind, ip, str(cert), str(key)),
                               child_env(path) if server_on_usnet else _kernel_env())
        try:
            outs.append(_run(path, client_on_usnet, "tls-client", kind, ip, str(port), str(cacert)))
            assert server.poll() is None
        finally:
            stop(server)
    found = _same(*outs)
    if kind == "smtp":
        assert found["plain"] == [True, 530] and found["starttls"] == 220
        assert found["tls"][:4] == ["TLSv1.3", False, 250, 250]
    else:
        assert found["go"] == "GO\n" and found["version"] == "TLSv1.3"
        assert found["answers"] == [True, True, True] and found["bye"] == ["bye\n", ""]
        if kind == "sync":  # a TLS recv interrupted by a signal, and the connection whole after it
            assert found["interrupted"] == ["Alarm", True] and found["sigint"] == ["KeyboardInterrupt", True]


def test_a_name_with_a_dead_address_connects_as_on_the_kernel(usnetd_path, tmp_path):  # noqa: F811
    """A name with a dead address (no neighbour answers) and a kernel listener's: getaddrinfo
    orders them as glibc does (RFC 6724 rule 9: the one sharing more bits with the source first;
    before, usnet kept the hosts file's order and tried the dead one first); asyncio's
    open_connection, with happy_eyeballs_delay and interleave or without, and create_connection
    reach the listener; to a port closed there, create_connection raises the last error, with
    all_errors=True (3.11) an ExceptionGroup of both, and asyncio its "Multiple exceptions": the
    same types, errnos, texts and (roughly) times under `usnet run` as on the kernel, both reading
    one hosts file.

    And happy eyeballs itself, on usnet alone: a name whose dead address sorts first there (x.3 is
    closer to usnet's x.2 than the listener's x.1; the kernel's own x.1 always comes first for
    it): with happy_eyeballs_delay asyncio is connected at once, in turn after the dead one's
    EHOSTUNREACH (~3 s). Before, usnet's loop ignored happy_eyeballs_delay and interleave and
    connected in turn (~3 s)."""
    path, _, host_ip = usnetd_path
    net = host_ip.rsplit(".", 1)[0]
    dead, near = f"{net}.9", f"{net}.3"  # on the TAP's subnet; no one answers their ARP
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{dead} multi.usnet.test\n{host_ip} multi.usnet.test\n"
                     f"{host_ip} near.usnet.test\n{near} near.usnet.test\n")
    live, closed = socket.create_server((host_ip, 0)), socket.socket()
    closed.bind((host_ip, 0))  # bound, not listening: RST to a SYN
    with live, closed:
        live.listen(64)
        ports = [str(live.getsockname()[1]), str(closed.getsockname()[1])]
        ours, theirs, eyeballs = _at_once(path, [(True, ["eyeballs", "multi.usnet.test", *ports]),
                                                 (False, ["eyeballs", "multi.usnet.test", *ports]),
                                                 (True, ["eyeballs", "near.usnet.test", *ports, "connect"])],
                                          str(hosts))
    found = _same(ours, theirs)
    assert found["names"] == [host_ip, dead]
    assert found["asyncio-eyeballs"] == [host_ip, "at once"] and found["create_connection"] == [host_ip, "at once"]
    group = found["all-fail-all_errors"][0]
    assert group[0] == "ExceptionGroup" and [e[:2] for e in group[3]] == [["ConnectionRefusedError", 111],
                                                                          ["OSError", 113]]
    near_found = json.loads(eyeballs)
    assert near_found["names"] == [near, host_ip]
    assert near_found["asyncio-eyeballs"] == near_found["asyncio-eyeballs-interleave"] == [host_ip, "at once"]
    # in turn: after the dead one fails (sooner than 3 s when its neighbour's probes, begun by the
    # race before, are already under way: the SYN waits on them, as on Linux)
    assert near_found["asyncio-in-turn"] == near_found["create_connection"] == [host_ip, "waited"]
    assert near_found["create_connection-timeout"] == [host_ip, "at once"]  # 0.5 s on the dead one


@pytest.mark.parametrize("placement", ["usnet-server", "usnet-client"])
def test_a_multiprocessing_manager_over_tcp_as_on_the_kernel(usnetd_path, placement):  # noqa: F811
    """multiprocessing.managers.BaseManager's server (get_server().serve_forever()) and a client
    (connect(), a proxied dict, 100 kB values, a method it lacks), one of them under `usnet run`:
    what the client sees is what it sees kernel to kernel; a wrong authkey is AuthenticationError."""
    path, usnet_ip, host_ip = usnetd_path
    outs = []
    for server_on_usnet, client_on_usnet in ((placement == "usnet-server", placement == "usnet-client"),
                                             (False, False)):
        ip = usnet_ip if server_on_usnet else host_ip
        server, port = started(_command(server_on_usnet, "manager", "server", ip),
                               child_env(path) if server_on_usnet else _kernel_env())
        try:
            outs.append(_run(path, client_on_usnet, "manager", "client", ip, str(port)))
            assert server.poll() is None
        finally:
            stop(server)
    found = _same(*outs)
    assert found["wrong-key"][0] == "AuthenticationError" and found["missing"] == "AttributeError"
    assert found["round1"] == [["k0", 100000], ["k1", 100000], ["n", 1]]


def test_urllib3_from_twenty_threads_gets_every_body_whole(usnetd_path, tmp_path):  # noqa: F811
    """urllib3's PoolManager (maxsize 20, blocking) shared by 20 threads, 8 requests each, read
    whole or streamed, from the kernel's ThreadingHTTPServer (python -m http.server): every body
    whole (SHA-256) under `usnet run` as on the kernel, no more than 20 connections."""
    pytest.importorskip("urllib3")
    path, usnet_ip, host_ip = usnetd_path
    sizes = {"a.bin": 1, "b.bin": 1500, "c.bin": 70000, "d.bin": 1 << 20, "e.bin": 3 << 20}
    for n, size in sizes.items():
        (tmp_path / n).write_bytes(os.urandom(size))
    outs = []
    for on_usnet in (True, False):
        server, port = kernel_http_server(tmp_path, host_ip)
        try:
            outs.append(_run(path, on_usnet, "urllib3", f"http://{host_ip}:{port}", *sizes))
            assert server.poll() is None
            server.terminate()
            log = server.communicate(timeout=10)[1].decode()  # http.server's access log
        finally:
            stop(server)
        clients = [line.split(" ", 1)[0] for line in log.splitlines() if '"GET ' in line]
        assert len(clients) == 160 and set(clients) == {usnet_ip if on_usnet else host_ip}
    found = _same(*outs)
    want = {n: [[200, hashlib.sha256((tmp_path / n).read_bytes()).hexdigest()[:16]]] for n in sizes}
    assert found == {"files": want, "requests": 160, "pools": 1, "connections": True}


@pytest.mark.parametrize("kind", ["socketserver", "asyncio", "accept-loop"])
def test_ctrl_c_stops_a_server_as_on_the_kernel(usnetd_path, kind):  # noqa: F811
    """A server (socketserver's ThreadingTCPServer.serve_forever, asyncio.run of start_server's
    serve_forever, a blocking accept loop with a thread per connection) with a kernel client
    connected and idle gets SIGINT, as Ctrl-C sends it: it exits promptly with the same code and
    last line of stderr as on the kernel; the client sees its connection end as on the kernel
    (EOF: the FIN of the exit's close), and a new connection to the port is refused. Before,
    the asyncio server hung on usnet: its Server.wait_closed waited for the idle client, as
    asyncio's does only from 3.12.1."""
    if kind == "asyncio" and sys.version_info >= (3, 12, 1):
        pytest.skip("from 3.12.1 serve_forever's wait_closed waits for the idle client: a hang on the kernel too")
    path, usnet_ip, host_ip = usnetd_path
    seen = []
    for on_usnet in (True, False):
        ip = usnet_ip if on_usnet else host_ip
        server, port = started(_command(on_usnet, "ctrl-c-server", kind, ip),
                               child_env(path) if on_usnet else _kernel_env())
        try:
            c = socket.create_connection((ip, port), timeout=10)
            with c:
                c.sendall(b"hello\n")
                assert c.recv(100) == b"hello\n"
                t0 = time.monotonic()
                server.send_signal(signal.SIGINT)
                out, err = server.communicate(timeout=LIMIT)
                took = time.monotonic() - t0
                try:
                    end = ["eof", c.recv(100)]
                except OSError as e:
                    end = [type(e).__name__, None]
            refused = socket.socket()
            refused.settimeout(10)
            with refused:
                again = refused.connect_ex((ip, port))
        finally:
            stop(server)
        last = err.decode().strip().splitlines()[-1:] if err.strip() else []
        seen.append([server.returncode, out.decode().splitlines()[1:], last, end, again, took < 3.0])
    assert seen[0] == seen[1], f"usnet {seen[0]}\nkernel {seen[1]}"
    assert seen[0][3:] == [["eof", b""], 111, True]


def test_another_threads_shutdown_or_close_wakes_a_blocked_call_as_on_the_kernel(usnetd_path):  # noqa: F811
    """The usual way to stop a thread blocked in recv or accept: shutdown(SHUT_RD / SHUT_RDWR)
    from another thread wakes it at once (recv returns b"", accept fails EINVAL, as Linux), while
    SHUT_WR does not (the call runs to its timeout) and close() does not either, the call then
    failing with EBADF (CPython retries it on descriptor -1): under `usnet run` as on the kernel.
    Before, usnet's shutdown of a listener was ENOTCONN, a recv blocked in another thread missed
    SHUT_RD, and a call outliving its socket's close timed out instead of EBADF. A listener shut
    down refuses accept (EINVAL) and, still bound, listens again on its port."""
    path, usnet_ip, host_ip = usnetd_path
    silent = socket.create_server((host_ip, 0))  # takes connections, never sends
    with silent:
        port = str(silent.getsockname()[1])
        ours, theirs = _at_once(path, [(True, ["wake", usnet_ip, host_ip, port]),
                                       (False, ["wake", host_ip, host_ip, port])])
    found = _same(ours, theirs)
    assert found["recv-SHUT_RD"] == ["returned", "b''", True]
    assert found["accept-SHUT_RDWR"] == found["accept-SHUT_RD"] == ["OSError", 22, True]
    assert found["recv-close"] == found["accept-close"] == ["OSError", 9, False]
    assert found["accept-after-SHUT_RD"] == ["OSError", 22] and found["listen-again-SHUT_RDWR"] == "again"


def test_an_alarm_a_programs_own_thread_takes_still_ends_the_call_whole(usnetd_path):  # noqa: F811
    """A program with an idle thread of its own (not blocking signals) in an interrupted-recv loop
    (issue 16): the kernel gives the alarm to that thread whenever the main thread holds a usnet
    engine, and CPython runs the handler in the main thread at its next bytecode. Before the
    handler was deferred to the hold's end (usnet.client.sigdefer), its exception landed inside the
    step, within a few hundred rounds: "stack engine failed: Alarm(14)", a recv raising OSError.
    Under `usnet run` as on the kernel: every alarm's exception ends a recv, the connection carries
    on, each message comes back once and in order."""
    path, _, host_ip = usnetd_path
    with _echo(host_ip) as echo:
        ours, theirs = _at_once(path, [(True, ["alarms-own-thread", host_ip, str(echo), "1500"]),
                                       (False, ["alarms-own-thread", host_ip, str(echo), "1500"])])
    o, t = json.loads(ours), json.loads(theirs)
    # (whether an alarm came before an echo was back at all is the path's speed: the kernel's
    # round trips may all beat the first; under usnet some must not, or nothing was tested)
    assert o.pop("alarms")
    t.pop("alarms")
    assert o == t == {"in-order-once": True, "lost-only-where-an-alarm-ended-a-recv": True, "end": True}


def test_the_program_sees_its_own_signal_handlers_as_on_the_kernel(usnetd_path):  # noqa: F811
    """usnet.patch defers the program's signal handlers to the end of a usnet step (issue 16):
    `signal.signal` and `signal.getsignal` return the program's own, Python's SIGINT handler
    raises KeyboardInterrupt out of a round-trip loop (an idle thread of the program's own
    beside it) and the connection carries on, asyncio.run's SIGINT handler and
    loop.add_signal_handler work and are removed. Under `usnet run` as on the kernel."""
    path, _, host_ip = usnetd_path
    with _echo(host_ip) as echo:
        ours, theirs = _at_once(path, [(True, ["handlers", host_ip, str(echo)]),
                                       (False, ["handlers", host_ip, str(echo)])])
    found = _same(ours, theirs)
    assert found["sigint-default"] and found["sigint-after-asyncio"]
    assert found["signal-returns"] == ["<Handlers.SIG_DFL: 0>", True, True, "<Handlers.SIG_IGN: 1>"]
    assert found["ctrl-c"] == "KeyboardInterrupt" and found["after-ctrl-c"]
    assert found["asyncio"] == ["_sighandler_noop", "partial", "heard", True, "<Handlers.SIG_DFL: 0>"]
