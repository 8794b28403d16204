"""The server of `usnet bench http`: one HTTP/1.1 keep-alive asyncio program, on either stack.

    python -m usnet.bench.http_server --stack kernel --host 127.0.0.1
    python -m usnet.bench.http_server --stack usnet --host 10.231.0.2 --usnetd /run/usnet/usnetd.sock --netif usnet0

The program is the same on both stacks: an `asyncio.Protocol` that answers
every request it reads with the same small fixed response, keeps the
connection open (HTTP/1.1) unless the request says `Connection: close`, and
answers pipelined requests in one write. Only the function that makes the
listening server differs (`kernel_start_server`, `usnet_start_server`): on the kernel it is the loop's own
`create_server`; on usnet it is `usnet.aio.create_server` with a client of
the given usnetd. Why a Protocol and not streams: it is how a server that
cares about requests/s is written on asyncio, and it leaves the stack (and
not StreamReader's machinery) as the larger share of the cost on both sides.

It prints one line, `ready <host> <port>`, once it listens, and on SIGTERM
or SIGINT stops and prints one JSON line: the requests it answered, the
connections it accepted, and the protocol errors it saw (requests it could
not parse). The benchmark (usnet/bench/http.py) reads both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["BODY", "HttpProtocol", "StartServer", "Stats", "kernel_start_server", "main", "serve", "usnet_start_server"]

BODY = b"Hello from the usnet HTTP benchmark.\n"
_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY
_CLOSE_RESPONSE = _RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
_MAX_HEAD = 16 * 1024  # a request head longer than this is not one wrk sends: an error


class Stats:
    """What the server counts, for the benchmark to compare with what wrk saw."""

    __slots__ = ("requests", "connections", "errors")

    def __init__(self) -> None:
        self.requests = 0
        self.connections = 0
        self.errors = 0


class HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and pipelining, GET/HEAD without bodies, one fixed response.

    Parsing is the minimum a correct server does for such requests: find each
    head's end, check the request line, look for `Connection: close`. A head
    with a body (Content-Length or chunked) is answered 400 and closed, since
    the benchmark never sends one.
    """

    __slots__ = ("transport", "buf", "stats")

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.stats.connections += 1

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out: list[bytes] = []
        close = False
        start = 0
        while (end := buf.find(b"\r\n\r\n", start)) >= 0:
            head = buf[start:end]
            start = end + 4
            line_end = head.find(b"\r\n")
            line = head if line_end < 0 else head[:line_end]
            parts = line.split(b" ")
            lower = head.lower()
            if (len(parts) != 3 or not parts[2].startswith(b"HTTP/1.")
                    or b"\r\ncontent-length:" in lower or b"\r\ntransfer-encoding:" in lower):
                self.stats.errors += 1
                out.append(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                close = True
                break
            self.stats.requests += 1
            if b"\r\nconnection: close" in lower or parts[2] == b"HTTP/1.0":
                out.append(_CLOSE_RESPONSE)
                close = True
                break
            out.append(_RESPONSE)
        self.buf = b"" if close else buf[start:]
        if len(self.buf) > _MAX_HEAD:
            self.stats.errors += 1
            close = True
        t = self.transport
        assert t is not None
        if out:
            t.write(out[0] if len(out) == 1 else b"".join(out))
        if close:
            t.close()

    def eof_received(self) -> bool | None:
        return None  # close our side too


StartServer = Callable[[Callable[[], asyncio.Protocol], str, int], Any]  # awaitable of an asyncio server


def kernel_start_server(factory: Callable[[], asyncio.Protocol], host: str, port: int) -> Any:
    """The loop's own `create_server`: kernel sockets."""
    return asyncio.get_running_loop().create_server(factory, host, port, backlog=1024)


def usnet_start_server(usnetd: str, netif: str) -> StartServer:
    """The usnet variant: the same `loop.create_server`, under `usnet.patch()` (which installs
    usnet's event-loop policy), with new sockets on the usnetd at socket path `usnetd`, netif `netif`.

    This is how an unmodified asyncio program runs on usnet (`usnet run` is this patch), so the
    bench measures what such a program gets.
    """
    from usnet.client import Client
    from usnet.client.patch import patch

    patch(Client.connect(usnetd, program="usnet-bench-http"), netif)
    return kernel_start_server


async def serve(start_server: StartServer, host: str, port: int, stats: Stats,
                ready: Callable[[str, int], None]) -> None:
    """Listen with `start_server`, call `ready(host, port)`, serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await start_server(lambda: HttpProtocol(stats), host, port)
    sockname = server.sockets[0].getsockname()
    ready(sockname[0], sockname[1])
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m usnet.bench.http_server", description=__doc__.split("\n")[0])
    p.add_argument("--stack", choices=["kernel", "usnet"], default="kernel")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--usnetd", help="usnetd's socket path (--stack usnet)")
    p.add_argument("--netif", help="the usnet netif to listen on (--stack usnet)")
    args = p.parse_args(argv)
    if args.stack == "usnet":
        if not (args.usnetd and args.netif):
            p.error("--stack usnet needs --usnetd and --netif")
        start = usnet_start_server(args.usnetd, args.netif)
    else:
        start = kernel_start_server
    stats = Stats()

    def ready(host: str, port: int) -> None:
        print(f"ready {host} {port}", flush=True)

    asyncio.run(serve(start, args.host, args.port, stats, ready))
    print(json.dumps({"requests": stats.requests, "connections": stats.connections, "errors": stats.errors}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
