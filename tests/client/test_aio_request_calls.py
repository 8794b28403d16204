"""An asyncio server's work per request under usnet's event loop, counted in calls (issue 16).

`usnet bench http`'s server protocol (usnet.bench.http_server.HttpProtocol) on usnet's own
`EventLoop` (so the loop pumps its engine itself, usnet.client.aio's `_LoopDriver`), on netif "b"
of a memwire domain; a client on another thread's `EventLoop`, on netif "a", sends a request and
waits for its answer, ROUND_TRIPS times. A profile hook on the server's thread counts the calls
(Python and C) made in usnet's own code per request: the aio transport, the engine's pump, the
channel, IP and TCP. asyncio's and the protocol's own calls are not counted (they do not depend
on usnet, and the loop's idle iterations vary with the scheduler).

The bound sits a few calls above what a request costs after the cuts of docs/design-notes.md's
"The server's receive and write per request" (before 306, 306, 311; after 299-302 in
eight runs): a layer that grows back fails here, and a timer's extra work in a loaded CI run
does not. (The cuts of "The server's TCP
calls per request" before them: 334, 327, 332 to 312, 306, 306.) After "A merged TCP
input path for the ACK of everything in flight" (header prediction's ACK and data steps written
out): 277.4-282.6 in eight runs alone, 288.25 once inside a whole tests/client run at load
average 20, before 299.7 and 301.4; the bound 294, six above that.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from concurrent.futures import Future

from tests.helpers.util import memwire_domain
from usnet.bench.http_server import _RESPONSE, HttpProtocol, Stats
from usnet.client import aio

B_IP = "10.9.0.2"  # netif "b" of tests.helpers.util.memwire_domain
ROUND_TRIPS = 300
WARM_UP = 30
CALLS_PER_REQUEST = 294
LIMIT = 30.0  # seconds for the whole exchange: only ever reached when something is broken
REQUEST = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n"


class _UsnetCalls:
    """Calls into usnet's code, and C calls made from it, while `on`."""

    def __init__(self) -> None:
        self.on = False
        self.calls = 0

    def __call__(self, frame, event: str, arg: object) -> None:
        if self.on and (event == "call" or event == "c_call") and "/usnet/" in frame.f_code.co_filename:
            self.calls += 1


class _Client(asyncio.Protocol):
    """Sends one request per `ask`, and resolves its future once the whole answer came."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.got = 0
        self.want = 0
        self.done: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= self.want and self.done is not None and not self.done.done():
            self.done.set_result(None)

    async def ask(self) -> None:
        assert self.transport is not None
        self.want = self.got + len(_RESPONSE)
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(REQUEST)
        await self.done


def _client_thread(c, port: int, warm: threading.Event, go: Future, out: list) -> None:
    async def main() -> None:
        t, p = await aio.create_connection(_Client, B_IP, port, client=c, netif="a")
        for _ in range(WARM_UP):
            await p.ask()
        warm.set()
        await asyncio.wrap_future(go)
        for _ in range(ROUND_TRIPS):
            await p.ask()
        t.close()

    loop = aio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), LIMIT))
    except BaseException as exc:  # reported by the test's thread
        out.append(exc)
    finally:
        loop.close()


def _measure() -> tuple[int, float]:
    """Requests answered while counted, and usnet's calls per request in the server's thread."""
    count = _UsnetCalls()
    failed: list[BaseException] = []
    stats = Stats()

    async def serve(c) -> int:
        srv = await aio.create_server(lambda: HttpProtocol(stats), B_IP, 0, client=c, netif="b")
        port = srv.sockets[0].getsockname()[1]
        warm, go = threading.Event(), Future()
        th = threading.Thread(target=_client_thread, args=(c, port, warm, go, failed))
        th.start()
        try:
            while not warm.is_set() and th.is_alive():
                await asyncio.sleep(0.005)
            before = stats.requests
            sys.setprofile(count)
            count.on = True
            go.set_result(None)
            while stats.requests - before < ROUND_TRIPS and th.is_alive():
                await asyncio.sleep(0.005)
            count.on = False
            sys.setprofile(None)
            return stats.requests - before
        finally:
            sys.setprofile(None)
            th.join(LIMIT)
            srv.close()

    with memwire_domain() as (_d, c):
        loop = aio.new_event_loop()
        try:
            answered = loop.run_until_complete(asyncio.wait_for(serve(c), LIMIT))
        finally:
            loop.close()
    assert not failed, failed
    return answered, count.calls / max(answered, 1)


def test_an_aio_servers_calls_per_request_stay_few():
    """Lockstep requests on one connection: each costs the server's thread fewer than
    CALLS_PER_REQUEST calls in usnet's code."""
    answered, per_request = _measure()
    assert answered == ROUND_TRIPS
    assert per_request < CALLS_PER_REQUEST, per_request


if __name__ == "__main__":
    print(_measure())
