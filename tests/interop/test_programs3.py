"""A third sweep of unmodified programs and libraries on usnet against kernel peers (issue 16).

dnspython (its stub resolver, dns.query over UDP and TCP, the asyncio resolver, a truncated answer
asked again over TCP, the timeout against a server that never answers) against dnsmasq; the
logging module's network handlers (SocketHandler over TCP, DatagramHandler and SysLogHandler over
UDP) sending to kernel receivers; socketserver's UDP servers and http.server over HTTPS serving
kernel clients (curl); socket.sendfile, loop.sock_sendfile and loop.sendfile of a real file, and
loop.sock_sendto/sock_recvfrom; pip downloading a wheel from a kernel http.server's simple index.

Each program (tests/peers/programs3.py) runs under `usnet run` and, as the reference, on the
kernel's sockets: what it prints must be the same, and its own checks hold on both.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import pickle
import socket
import ssl
import struct
import subprocess
import sys
import threading
import zipfile

import pytest

from tests.helpers.util import server_context
from tests.interop.test_names import BIG, dnsmasq_at
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
from usnet.abi.transport import listen_seqpacket

pytestmark = pytest.mark.privileged
_P = PeerProgram("programs3.py")
_command, _run, _kernel_env = _P.command, _P.run, kernel_env
HUGE = 200  # A records for huge.usnet.test: ~3.3 KB, an EDNS0 answer past a flow's 2 KiB packet





def _drained(s: socket.socket) -> list[tuple[bytes, tuple]]:
    """The datagrams waiting on kernel socket `s`, with their sources."""
    s.setblocking(False)
    got = []
    for _ in range(1000):
        try:
            got.append(s.recvfrom(65536))
        except BlockingIOError:
            break
    return got


def _heard_from(s: socket.socket) -> set[str]:
    """The source addresses of the datagrams waiting on kernel socket `s` (drained)."""
    return {a[0] for _, a in _drained(s)}


@pytest.fixture
def dnsmasq(usnetd_path):  # noqa: F811  (the fixture imported above)
    """dnsmasq on the kernel's side of the TAP: www (A and AAAA), alias (CNAME), nx.test (NXDOMAIN)
    and big (BIG A records, truncated over UDP), huge (HUGE A records: an EDNS0 answer over UDP of
    ~3.3 KB, in IP fragments, past a flow's 2 KiB packet). Yields its address."""
    _, _, host_ip = usnetd_path
    x = host_ip.split(".")[1]
    with dnsmasq_at(host_ip, "www.usnet.test", "--address=/nx.test/",
                    f"--host-record=www.usnet.test,10.{x}.0.7,fd00:{x}::7", "--cname=alias.usnet.test,www.usnet.test",
                    *[f"--host-record=big.usnet.test,10.{x}.1.{i}" for i in range(1, BIG + 1)],
                    "--edns-packet-max=4096",
                    *[f"--host-record=huge.usnet.test,10.{x}.2.{i}" for i in range(1, HUGE + 1)]):
        yield host_ip


@pytest.mark.parametrize("tap_domain", [True, False], ids=["offload", "plain"], indirect=True)
def test_dnspython_resolves_as_on_the_kernel(usnetd_path, dnsmasq):  # noqa: F811  (the fixture imported above)
    """dnspython's Resolver, dns.query.udp/tcp, udp_with_fallback and dns.asyncresolver on usnet's
    asyncio loop find what they find on the kernel; a silent server costs dns.exception.Timeout in
    about the timeout (the program checks the time), and the resolver's lifetime LifetimeTimeout.
    An EDNS0 answer of ~3.3 KB comes over UDP in fragments, whole, on a TAP without offload too
    (a flow's packets 2 KiB: before, the switch dropped it and the resolver timed out)."""
    pytest.importorskip("dns")
    path, usnet_ip, host_ip = usnetd_path
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # hears the queries, never answers
    silent.bind((host_ip, 0))
    silent_tcp = socket.create_server((host_ip, 0))  # takes connections into its backlog, never answers
    refused = socket.socket()  # bound, not listening: RST to a SYN
    refused.bind((host_ip, 0))
    with silent, silent_tcp, refused:
        ports = [str(s.getsockname()[1]) for s in (silent, silent_tcp, refused)]
        ours = _run(path, True, "dns", dnsmasq, *ports)
        assert _heard_from(silent) == {usnet_ip}  # the queries did go out through usnet
        theirs = _run(path, False, "dns", dnsmasq, *ports)
        assert _heard_from(silent) == {host_ip}
    assert ours == theirs
    found = json.loads(ours)
    assert found["big"] == BIG and found["big-fallback"] == [True, BIG] and found["big-udp"][0] is True
    assert found["huge-udp"] == [False, HUGE, True] and found["huge"] == HUGE  # over UDP, whole
    assert found["silent"] == found["async-silent"] == "Timeout"
    assert found["silent-resolver"] == "LifetimeTimeout"
    assert (found["tcp-silent"], found["tcp-refused"]) == ("Timeout", "ConnectionRefusedError")


def _records(data: bytes) -> list[dict]:
    """SocketHandler's stream: 4-byte lengths, each before a pickled record's dict."""
    got = []
    for _ in range(100):
        if not data:
            return got
        n = struct.unpack(">L", data[:4])[0]
        got.append(pickle.loads(data[4:4 + n]))
        data = data[4 + n:]
    return got


def _plain(rec: dict) -> list:
    """What a record says, without what differs between two runs (times, process ids)."""
    return [rec[k] for k in ("name", "levelname", "msg", "args", "exc_text", "lineno", "funcName")]


def _read_all(conn: socket.socket) -> bytes:
    conn.settimeout(LIMIT)
    chunks = []
    for _ in range(100000):
        b = conn.recv(65536)
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks)


def test_logging_handlers_send_to_kernel_receivers(usnetd_path):  # noqa: F811
    """SocketHandler (TCP, pickled records) and DatagramHandler (UDP) to kernel receivers, and
    SysLogHandler over UDP and TCP: the receivers get the same records from usnet as from the kernel
    (a 20 kB one too), from the usnet address; a SocketHandler whose receiver refuses drops its record."""
    path, usnet_ip, host_ip = usnetd_path
    seen = {}
    for on_usnet in (True, False):
        tcp, stcp = socket.create_server((host_ip, 0)), socket.create_server((host_ip, 0))
        udp, sudp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        refused = socket.socket()
        with tcp, stcp, udp, sudp, refused:
            for s in (udp, sudp, refused):
                s.bind((host_ip, 0))
            for s in (udp, sudp):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            ports = [str(s.getsockname()[1]) for s in (tcp, udp, sudp, stcp, refused)]
            assert _run(path, on_usnet, "logging", host_ip, *ports) == '"sent"'
            (conn, peer), (sconn, speer) = tcp.accept(), stcp.accept()  # already closed: the data waits
            with conn, sconn:
                stream, sstream = _records(_read_all(conn)), _read_all(sconn)
            grams, sgrams = _drained(udp), _drained(sudp)
            assert (len(grams), len(sgrams)) == (5, 5), (on_usnet, [len(d) for d, _ in grams + sgrams])
            want = usnet_ip if on_usnet else host_ip
            assert {peer[0], speer[0]} | {a[0] for _, a in grams + sgrams} == {want}
            seen[on_usnet] = ([_plain(r) for r in stream], [_plain(pickle.loads(d[4:])) for d, _ in grams],
                              [d for d, _ in sgrams], sstream)
    assert seen[True] == seen[False]
    stream, grams, sgrams, sstream = seen[True]
    assert [r[1] for r in stream] == ["DEBUG", "INFO", "ERROR", "ERROR", "CRITICAL"] and grams == stream
    assert "ZeroDivisionError" in stream[3][4] and len(stream[4][2]) == 20000
    assert sgrams[0].startswith(b"<15>debug 1") and sstream.count(b"\x00") == 5


@contextlib.contextmanager
def _udp_echo(host: str):
    """A kernel UDP socket in a thread that answers every datagram to its sender with the datagram
    itself; yields (port, the senders it heard)."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(0.1)
    heard: set = set()
    done = threading.Event()

    def run() -> None:
        for _ in range(int(LIMIT / 0.1)):
            if done.is_set():
                return
            try:
                data, peer = s.recvfrom(70000)
            except TimeoutError:
                continue
            heard.add(peer[0])
            s.sendto(data, peer)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield s.getsockname()[1], heard
    finally:
        done.set()
        t.join(LIMIT)
        s.close()


@pytest.mark.parametrize("tap_domain", [True, False], ids=["offload", "plain"], indirect=True)
def test_a_datagram_bigger_than_the_mtu_leaves_in_fragments(usnetd_path):  # noqa: F811
    """A UDP datagram past the MTU goes in IPv4 fragments, as Linux sends it, up to 65,507 bytes
    (more is EMSGSIZE), from a connected socket too. Before, usnet said EMSGSIZE past 1,472 bytes
    (and the logging module's DatagramHandler lost its long records).

    The kernel's answers, in fragments too, come back whole (SHA-256), 3,000, 9,000 and 65,507
    bytes among them, on a netif with offload (a flow's packets are 64 KiB) and on a plain one
    (2 KiB: the switch delivers a datagram bigger than that over a chain of packets; before, it was
    dropped as rx_too_big); a small buffer cuts one as Linux does (MSG_TRUNC from recvmsg)."""
    path, usnet_ip, host_ip = usnetd_path
    _big_datagrams_echoed(path, usnet_ip, host_ip, 65507)


@pytest.mark.parametrize("kind", ["threading", "plain"])
def test_socketserver_udp_servers_answer_a_kernel_client(usnetd_path, kind):  # noqa: F811
    """socketserver.ThreadingUDPServer and UDPServer (DatagramRequestHandler) under `usnet run`:
    a kernel client's datagrams, from two sockets, each answered to its sender from the server's
    address, as the same server on the kernel answers them."""
    path, usnet_ip, host_ip = usnetd_path
    answers = {}
    for on_usnet in (True, False):
        ip = usnet_ip if on_usnet else host_ip
        server, port = started(_command(on_usnet, "udpserver", ip, kind),
                               child_env(path) if on_usnet else _kernel_env())
        try:
            got = []
            clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
            for c in clients:
                c.bind((host_ip, 0))
                c.settimeout(10)
            with clients[0], clients[1]:
                for i in range(20):
                    c = clients[i % 2]
                    c.sendto(b"datagram %d " % i + b"x" * i * 50, (ip, port))
                    data, peer = c.recvfrom(65536)
                    assert peer == (ip, port)
                    got.append(data.replace(host_ip.encode(), b"CLIENT"))
            assert server.poll() is None
        finally:
            stop(server)
        answers[on_usnet] = got
    assert answers[True] == answers[False]
    assert answers[True][3] == b"DATAGRAM 3 " + b"X" * 150 + b" from CLIENT"


def test_threading_http_server_over_tls_serves_curl(usnetd_path, ca, tmp_path):  # noqa: F811
    """http.server.ThreadingHTTPServer whose listener is wrapped by SSLContext.wrap_socket(server_side=
    True), under `usnet run`: curl --cacert (a trustme CA) fetches a small and a 2 MB file, several
    times on one kept-alive connection, and gets what it gets from the same server on the kernel."""
    path, usnet_ip, host_ip = usnetd_path
    site = tmp_path / "site"
    site.mkdir()
    (site / "small.txt").write_bytes(b"hello over TLS\n")
    big = hashlib.sha256(b"x").hexdigest().encode() * 65536
    (site / "big.bin").write_bytes(big)
    cacert, cert, key = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(cacert))
    leaf = ca.issue_cert(usnet_ip, host_ip)
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    for on_usnet in (True, False):
        ip = usnet_ip if on_usnet else host_ip
        server, port = started(_command(on_usnet, "https", ip, str(cert), str(key), str(site)),
                               child_env(path) if on_usnet else _kernel_env())
        try:
            urls = [f"https://{ip}:{port}/{n}" for n in ("small.txt", "big.bin", "small.txt", "big.bin")]
            got = subprocess.run(["curl", "-sS", "--fail", "--cacert", str(cacert), "--max-time", str(LIMIT),
                                  "-w", "\n%{http_code} %{num_connects} %{ssl_verify_result}\n", *urls],
                                 capture_output=True, timeout=LIMIT + 5)
            assert got.returncode == 0, (on_usnet, got.stderr.decode())
            small = b"hello over TLS\n\n"
            want = b"".join(small + b"200 %d 0\n" % (i == 0) if n == "small.txt" else big + b"\n200 0 0\n"
                            for i, n in enumerate(("small.txt", "big.bin", "small.txt", "big.bin")))
            assert got.stdout == want
            assert server.poll() is None
        finally:
            stop(server)


@pytest.mark.parametrize("tap_domain6", [True, False], ids=["offload", "plain"], indirect=True)
def test_an_ipv6_datagram_bigger_than_the_mtu_leaves_in_fragments(tap_domain6, sockdir):
    """As over IPv4, with a Fragment header in each piece: up to 65,527 bytes, then EMSGSIZE. The
    kernel's answers come back whole, the biggest too, which with its headers (65,575 bytes) is past
    a flow's 64 KiB packet: it arrives over a chain of two (before, it was dropped as rx_too_big)."""
    d, _, usnet_ip, host_ip = tap_domain6
    path = str(sockdir / "usnetd.sock")
    d.listen(listen_seqpacket(path))
    _big_datagrams_echoed(path, usnet_ip, host_ip, 65527)


def _big_datagrams_echoed(path: str, usnet_ip: str, host_ip: str, limit: int) -> None:
    """The "bigudp" program against a kernel echo, under `usnet run` and on kernel sockets: the
    same answers (sizes up to `limit` echoed whole, then EMSGSIZE), each from the right address."""
    outs = {}
    for on_usnet in (True, False):
        with _udp_echo(host_ip) as (port, heard):
            outs[on_usnet] = _run(path, on_usnet, "bigudp", host_ip, str(port))
        assert heard == {usnet_ip if on_usnet else host_ip}
    assert outs[True] == outs[False]
    back = json.loads(outs[True])
    assert all(ok for _, ok in back[:-2]) and back[-2:] == ["EMSGSIZE", True]
    assert [n for n, _ in back[:-4]] == [1472, 1473, 3000, 9000, 20000, limit - 1, limit]


def _read_n(conn: socket.socket, n: int) -> bytes:
    got = b""
    for _ in range(n):
        if len(got) == n:
            break
        got += conn.recv(n - len(got))
    return got


@contextlib.contextmanager
def _digest_server(host: str, connections: int, ctx: ssl.SSLContext | None = None):
    """A kernel TCP listener in a thread: for each of `connections` connections, the bytes up to the
    client's FIN, answered with "length sha256" before closing. Yields (port, the peers seen).
    With `ctx`, TLS, and the client says first how many bytes come (8 bytes, big-endian)."""
    ls = socket.create_server((host, 0))
    ls.settimeout(0.1)
    peers: list = []
    done = threading.Event()

    def run() -> None:
        for _ in range(int(LIMIT / 0.1)):
            if done.is_set() or len(peers) == connections:
                return
            try:
                conn, peer = ls.accept()
            except TimeoutError:
                continue
            peers.append(peer[0])
            conn.settimeout(LIMIT)
            if ctx is not None:
                conn = ctx.wrap_socket(conn, server_side=True)
            with conn:
                h, n = hashlib.sha256(), 0
                want = int.from_bytes(_read_n(conn, 8), "big") if ctx is not None else None
                for _ in range(1 << 20):
                    b = conn.recv(1 << 16 if want is None else min(1 << 16, want - n))
                    if not b:
                        break
                    h.update(b)
                    n += len(b)
                conn.sendall(f"{n} {h.hexdigest()}".encode())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield ls.getsockname()[1], peers
    finally:
        done.set()
        t.join(LIMIT)
        ls.close()


def test_sendfile_and_asyncio_datagrams_to_kernel_peers(usnetd_path, tmp_path):  # noqa: F811
    """socket.sendfile (whole, and an offset and count), loop.sock_sendfile and loop.sendfile of a
    real 1 MB file arrive whole at a kernel receiver (SHA-256), and loop.sock_sendto,
    sock_recvfrom and sock_recvfrom_into (Python 3.11) talk with a kernel UDP echo, under `usnet
    run` as on the kernel."""
    path, usnet_ip, host_ip = usnetd_path
    f = tmp_path / "file.bin"
    f.write_bytes(os.urandom(1 << 20))
    outs = {}
    for on_usnet in (True, False):
        with _digest_server(host_ip, 4) as (port, peers), _udp_echo(host_ip) as (uport, heard):
            outs[on_usnet] = _run(path, on_usnet, "sendfile", host_ip, str(port), str(uport), str(f))
        want = usnet_ip if on_usnet else host_ip
        assert set(peers) | heard == {want} and len(peers) == 4
    assert outs[True] == outs[False]
    assert len(json.loads(outs[True])) == 5


def _tiny_wheel(where) -> tuple[str, bytes]:
    """A pure-Python wheel, written by hand (a zip with its dist-info): (file name, bytes)."""
    name = "usnettiny-0.1-py3-none-any.whl"
    files = {"usnettiny/__init__.py": b"ANSWER = 42\n",
             "usnettiny-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: usnettiny\nVersion: 0.1\n",
             "usnettiny-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
                                              b"Tag: py3-none-any\n"}
    record = "".join(f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=').decode()},"
                     f"{len(b)}\n" for n, b in files.items()) + "usnettiny-0.1.dist-info/RECORD,,\n"
    files["usnettiny-0.1.dist-info/RECORD"] = record.encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
    (where / name).write_bytes(buf.getvalue())
    return name, buf.getvalue()


def test_pip_downloads_a_wheel_from_a_kernel_simple_index(usnetd_path, tmp_path):  # noqa: F811
    """pip (its vendored requests and urllib3) under `usnet run` installs a wheel from a "simple"
    index that the kernel's http.server serves, as pip on the kernel does: the file is the one
    served (pip checks it against the index's sha256, and the installed module's bytes are
    checked), and the server saw pip's requests come from the usnet address. One pip run each
    way: a `pip download` before the install fetched the same file again, and four runs of pip
    took 50-70 s of the test's 60 under load."""
    path, usnet_ip, host_ip = usnetd_path
    site = tmp_path / "index"
    (site / "simple" / "usnettiny").mkdir(parents=True)
    name, wheel = _tiny_wheel(site)
    digest = hashlib.sha256(wheel).hexdigest()
    (site / "simple" / "usnettiny" / "index.html").write_text(
        f'<!DOCTYPE html><html><body><a href="../../{name}#sha256={digest}">{name}</a></body></html>\n')
    for on_usnet in (True, False):
        server, port = kernel_http_server(site, host_ip)
        try:
            env = child_env(path) if on_usnet else _kernel_env()
            env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INPUT="1", no_proxy="*")
            pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-cache-dir", "--retries", "0",
                   "--timeout", "10"]
            if on_usnet:
                pip = [sys.executable, "-m", "usnet", "run", "--", *pip]
            index = ["--index-url", f"http://{host_ip}:{port}/simple/", "--trusted-host", host_ip]
            target = tmp_path / f"t{on_usnet}"
            got = subprocess.run([*pip, "install", "--no-deps", *index, "--target", str(target), "usnettiny"],
                                 capture_output=True, timeout=LIMIT * 2, env=env)
            assert got.returncode == 0, got.stderr.decode()[-3000:]
            assert (target / "usnettiny" / "__init__.py").read_bytes() == b"ANSWER = 42\n"
            server.terminate()
            log = server.communicate(timeout=10)[1].decode()  # http.server's access log
        finally:
            stop(server)
        clients = {line.split(" ", 1)[0] for line in log.splitlines() if '"GET ' in line}
        assert clients == {usnet_ip if on_usnet else host_ip}, log
        assert log.count(f"GET /{name} ") == 1


def test_sendfile_refuses_and_positions_as_on_the_kernel(usnetd_path, tmp_path):  # noqa: F811
    """socket.sendfile's refusals (a count not a positive int, a text file, a non-blocking socket,
    a UDP socket) and the file position it leaves (an offset at or past the end sends nothing and
    leaves it), under `usnet run` as on the kernel."""
    path, usnet_ip, host_ip = usnetd_path
    f = tmp_path / "file.bin"
    f.write_bytes(os.urandom(10000))
    outs = {}
    for on_usnet in (True, False):
        with _digest_server(host_ip, 3) as (port, peers):
            outs[on_usnet] = _run(path, on_usnet, "sendfile-edges", host_ip, str(port), str(f))
        assert peers == [usnet_ip if on_usnet else host_ip] * 3
    diffs = [(o, t) for o, t in zip(json.loads(outs[True]), json.loads(outs[False])) if o != t]
    assert not diffs, "\n".join(f"usnet:  {o}\nkernel: {t}" for o, t in diffs)


def test_datagrams_to_a_closed_port_say_what_the_kernel_says(usnetd_path):  # noqa: F811
    """The port unreachable that comes back is no error of an unconnected socket (the logging
    module's DatagramHandler and SysLogHandler send on one: nothing to report), and the next call's
    ECONNREFUSED (once, or SO_ERROR's) of a connected one, under `usnet run` as on the kernel."""
    path, _, host_ip = usnetd_path
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind((host_ip, 0))
    port = str(closed.getsockname()[1])
    closed.close()
    ours, theirs = (_run(path, on_usnet, "udp-refused", host_ip, port) for on_usnet in (True, False))
    assert json.loads(ours) == json.loads(theirs)
    assert json.loads(ours)[:2] == [["ok", 1], ["TimeoutError", None]]


def test_tls_sendfile_as_on_the_kernel(usnetd_path, ca, tmp_path):  # noqa: F811
    """SSLSocket.sendfile (the ssl module's send() path: from the file's position) over a usnet
    socket, with and without a timeout, to a kernel TLS server, as on the kernel."""
    path, usnet_ip, host_ip = usnetd_path
    f = tmp_path / "file.bin"
    f.write_bytes(os.urandom(300000))
    cacert = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cacert))
    outs = {}
    for on_usnet in (True, False):
        with _digest_server(host_ip, 2, server_context(ca, host_ip)) as (port, peers):
            outs[on_usnet] = _run(path, on_usnet, "tls-sendfile", host_ip, str(port), str(cacert), str(f))
        assert peers == [usnet_ip if on_usnet else host_ip] * 2
    # the position after: offset + sent (0 + 299,900), not where reading stopped: CPython's own quirk
    assert outs[True] == outs[False] == json.dumps([[299900, 299900]] * 2)


def test_wsgiref_serves_curl(usnetd_path, tmp_path):  # noqa: F811
    """wsgiref.simple_server (the stdlib's WSGI server) under `usnet run`: curl's two 1 MB POSTs
    (with a query string, and without) are answered as by the same server on the kernel, and it
    sees the client's address."""
    path, usnet_ip, host_ip = usnetd_path
    body = tmp_path / "body.bin"
    body.write_bytes(os.urandom(1 << 20))
    outs = {}
    for on_usnet in (True, False):
        ip = usnet_ip if on_usnet else host_ip
        server, port = started(_command(on_usnet, "wsgi", ip), child_env(path) if on_usnet else _kernel_env())
        try:
            got = subprocess.run(["curl", "-sS", "--fail", "--max-time", str(LIMIT), f"http://{ip}:{port}/a/b?x=1",
                                  "--data-binary", f"@{body}", f"http://{ip}:{port}/post"],
                                 capture_output=True, timeout=LIMIT + 5)
            assert got.returncode == 0, got.stderr.decode()
            outs[on_usnet] = [json.loads(line) for line in got.stdout.decode().splitlines()]
            assert server.poll() is None
        finally:
            stop(server)
        for answer in outs[on_usnet]:
            assert answer[5] == host_ip and answer[6] == str(port)
            answer[6] = "PORT"
    assert outs[True] == outs[False]
    assert [a[:4] for a in outs[True]] == [["POST", "/a/b", "x=1", 1 << 20], ["POST", "/post", "", 1 << 20]]
