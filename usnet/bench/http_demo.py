"""HTTP/1.1 between two usnet stacks over a lossy memwire: the standard library, unchanged, on usnet TCP.

One embedded domain (no root, no daemon) has two netifs joined by a memwire
with 1 % loss in each direction and 1 ms of delay: "b" is the server's stack,
"a" the client's. Each connection is its own flow channel with its own
sans-I/O TCP, so the two ends are two TCP stacks that only meet through the
lossy wire.

Why the standard library's own HTTP, and not a small asyncio server: the
point is that ordinary socket code runs on usnet as it is. The server is
`http.server.HTTPServer` with a `BaseHTTPRequestHandler`; the only changes
are that its listening socket is a `usnet.socket` (made in `__init__`
instead of the kernel socket `socketserver` would make) and that
`server_bind` skips `socket.getfqdn` (a reverse DNS lookup through the
kernel's resolver, which has nothing to do with usnet and can stall for
seconds in a sandbox). Accepting, `makefile`, the request parsing, the
response writing, `shutdown(SHUT_WR)` and `close` are all socketserver's.
The client is `http.client.HTTPConnection` whose `_create_connection` hook
(the one the standard library's tests use) is `usnet.socket.create_connection`;
its `connect()`, `TCP_NODELAY`, request, `Content-Length` handling and
buffered reads are the standard library's.

The body is `size` random bytes (4 MB by default) with its SHA-256 in a
header; the client hashes what it read and checks it against both the header
and the bytes the server served. The result holds the transfer's figures,
both ends' TCP statistics (usnet.proto.tcp TcpStats, read under the engine
lock) and the wire's own count of the frames it dropped, so losses on the
wire can be set beside the sender's retransmissions.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import random
import socketserver
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from usnet import socket as us
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.drivers.memwire import MemWire

__all__ = ["CLIENT_IP", "SERVER_IP", "UsnetHTTPConnection", "UsnetHTTPServer", "run", "tcp_figures"]

CLIENT_IP, SERVER_IP = "10.9.0.1", "10.9.0.2"
PORT = 8080
PATH = "/blob"
DIGEST_HEADER = "X-Content-SHA256"
CHUNK = 64 * 1024


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /blob: the server's bytes, with Content-Length and their digest."""

    protocol_version = "HTTP/1.1"  # keep-alive: the connection ends when the client closes it
    server: UsnetHTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.connections.append(self.connection)  # for its TCP statistics afterwards

    def do_GET(self) -> None:
        if self.path != PATH:
            self.send_error(404)
            return
        body = self.server.body
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header(DIGEST_HEADER, self.server.digest)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log.append(format % args)  # the demo prints tables, not access logs


class UsnetHTTPServer(http.server.HTTPServer):
    """`http.server.HTTPServer` listening on a usnet socket."""

    def __init__(self, address: tuple[str, int], client: Client, netif: str, body: bytes) -> None:
        super().__init__(address, _Handler, bind_and_activate=False)
        self.socket.close()  # the kernel socket socketserver made; ours is usnet's
        # a usnet socket stands in for the kernel's: socketserver only calls its methods
        self.socket = us.socket(self.address_family, self.socket_type, client=client, netif=netif)  # type: ignore[assignment]
        self.body = body
        self.digest = hashlib.sha256(body).hexdigest()
        self.connections: list[us.socket] = []
        self.log: list[str] = []
        self.errors: list[BaseException] = []
        try:
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)  # not socket.getfqdn(host): see the module's docstring
        self.server_port = port

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        self.errors.append(sys.exc_info()[1])  # type: ignore[arg-type]


class UsnetHTTPConnection(http.client.HTTPConnection):
    """`http.client.HTTPConnection` whose socket is a usnet socket."""

    def __init__(self, host: str, port: int, *, client: Client, netif: str, **kw: Any) -> None:
        super().__init__(host, port, **kw)
        self._create_connection = (  # the stdlib's own hook; connect() stays the stdlib's
            lambda address, timeout, source_address:
            us.create_connection(address, timeout, source_address, client=client, netif=netif))


def tcp_figures(sock: us.socket) -> dict:
    """A connection's TCP statistics, read under its engine's lock."""
    conn, eng = sock.connection, sock.engine
    with eng.lock:  # type: ignore[union-attr]
        s = conn.stats.as_dict()
        mss = conn.mss
        state = conn.state.name if hasattr(conn.state, "name") else str(conn.state)
    srtt = s["srtt"]
    ssthresh = s["ssthresh"]
    return {
        "retransmits": s["retransmits"],
        "fast_retransmits": s["fast_retransmits"],
        "rto_timeouts": s["rto_timeouts"],
        "retransmitted_bytes": s["retransmitted_bytes"],
        "dup_acks": s["dup_acks"],
        "ooo_segments": s["ooo_segments"],
        "srtt_ms": None if srtt is None else srtt * 1000,
        "rttvar_ms": s["rttvar"] * 1000,
        "rto_ms": s["rto"] * 1000,
        "cwnd": s["cwnd"],
        "cwnd_segments": s["cwnd"] / mss if mss else None,
        "ssthresh": None if ssthresh >= 1 << 31 else ssthresh,  # None: never set (no loss seen)
        "mss": mss,
        "segs_out": s["segs_out"],
        "segs_in": s["segs_in"],
        "bytes_out": s["bytes_out"],
        "bytes_in": s["bytes_in"],
        "state": state,
    }


def _wire_figures(w: MemWire) -> dict:
    """Frames each way and how many the wire dropped (total, exact; per direction, less those in flight)."""
    in_flight = [d.frames for d in w._dir]  # index: the receiving side (0 = a, the client)
    return {
        "dropped": w.dropped,
        "frames_to_client": w.b.stats.tx_frames,
        "frames_to_server": w.a.stats.tx_frames,
        "dropped_to_client": w.b.stats.tx_frames - w.a.stats.rx_frames - in_flight[0],
        "dropped_to_server": w.a.stats.tx_frames - w.b.stats.rx_frames - in_flight[1],
    }


def run(size: int = 4_000_000, loss: float = 0.01, delay: float = 0.001, seed: int = 1,
        timeout: float = 60.0, progress: Callable[[int], None] | None = None) -> dict:
    """Serve `size` random bytes over HTTP/1.1 on netif "b", fetch them from netif "a"; the figures.

    `loss` and `delay` apply to each direction of the memwire; `seed` fixes both
    the body and the wire's drops. `progress(n)` is called as body bytes arrive.
    """
    body = random.Random(seed).randbytes(size)
    expected = hashlib.sha256(body).hexdigest()
    dom = Domain()
    wire = MemWire(loss=loss, delay=delay, seed=seed)
    dom.add_netif("a", wire.a, f"{CLIENT_IP}/24")
    dom.add_netif("b", wire.b, f"{SERVER_IP}/24")
    dom.start()
    try:
        client = Client.local(dom)
        server = UsnetHTTPServer((SERVER_IP, PORT), client, "b", body)
        server.timeout = timeout  # handle_request gives up if no connection comes
        t = threading.Thread(target=server.handle_request, name="usnet-http-server", daemon=True)
        t.start()
        try:
            conn = UsnetHTTPConnection(SERVER_IP, server.server_port, client=client, netif="a", timeout=timeout)
            start = time.perf_counter()
            conn.request("GET", PATH)
            resp = conn.getresponse()
            h = hashlib.sha256()
            got = 0
            while chunk := resp.read(CHUNK):
                h.update(chunk)
                got += len(chunk)
                if progress is not None:
                    progress(got)
            seconds = time.perf_counter() - start
            client_tcp = tcp_figures(cast(us.socket, conn.sock))  # what _create_connection made
            conn.close()  # the server's handler sees EOF, ends, and shuts its side
            t.join(timeout)
            if t.is_alive():
                raise TimeoutError("the HTTP server did not finish its connection")
            if server.errors:
                raise server.errors[0]
            server_tcp = tcp_figures(server.connections[0])
        finally:
            server.server_close()
        digest = h.hexdigest()
        return {
            "bytes": got,
            "seconds": seconds,
            "MBps": got / seconds / 1e6,
            "status": resp.status,
            "digest": digest,
            "digest_ok": got == size and digest == expected == resp.getheader(DIGEST_HEADER),
            "loss": loss,
            "delay_ms": delay * 1000,
            "seed": seed,
            "wire": _wire_figures(wire),
            "client_tcp": client_tcp,
            "server_tcp": server_tcp,
            "server_log": server.log,
        }
    finally:
        dom.stop()  # closes the wire's ports too
