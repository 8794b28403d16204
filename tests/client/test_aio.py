"""usnet.aio: asyncio streams between two usnet stacks on a memwire, no root.

Server and client run on one event loop; the stack runs in usnet's stack
thread. Each test is one `asyncio.run` under a generous `wait_for`, so a
missed wake-up fails the test instead of hanging it. TLS certificates come
from a throwaway CA (trustme) with the usnet addresses as subjectAltName IPs.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import select
import ssl
import sys
from collections.abc import Callable
from typing import Any

import pytest
import trustme

from tests.helpers.util import client_context, memwire_domain, server_context
from usnet import aio
from usnet.client import Client

A_IP, B_IP = "10.9.0.1", "10.9.0.2"
A6, B6 = "fd00:9::1", "fd00:9::2"
LIMIT = 30  # seconds for a whole test: only ever reached when something is broken


@pytest.fixture
def net():
    with memwire_domain(f"{A6}/64", f"{B6}/64") as (_d, client):
        yield client


def run(coro) -> object:
    return asyncio.run(asyncio.wait_for(coro, LIMIT))


def digest_server(down: bytes, seen: list):
    """A handler: read to EOF, answer SHA-256 of what came plus `down`, close."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            got = await reader.read()
            seen.append((writer.get_extra_info("peername"), got))
            writer.write(hashlib.sha256(got).digest())
            writer.write(down)
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()

    return handle


async def finish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server) -> bytes:
    """Half-close, read to the server's EOF, close the connection and the server: what came back."""
    writer.write_eof()
    got = await reader.read()
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return got


async def upload(c: Client, up: bytes, port: int, **kw) -> bytes:
    reader, writer = await aio.open_connection(B_IP, port, client=c, netif="a", **kw)
    writer.write(up)
    await writer.drain()
    assert writer.can_write_eof()
    writer.write_eof()
    got = await reader.read()
    assert reader.at_eof()
    writer.close()
    await writer.wait_closed()
    return got


def test_a_megabyte_each_way_digest_checked(net):
    up, down = os.urandom(1_000_000), os.urandom(1_200_000)
    seen: list = []

    async def main() -> bytes:
        async with await aio.start_server(digest_server(down, seen), port=8080, client=net, netif="b") as srv:
            assert srv.is_serving() and srv.port == 8080
            assert srv.sockets[0].getsockname() == ("0.0.0.0", 8080)  # no host: the wildcard, as on Linux
            got = await upload(net, up, 8080)
            srv.close()
            await srv.wait_closed()
        return got

    got = run(main())
    (peer, received), = seen
    assert peer[0] == A_IP and received == up
    assert got[:32] == hashlib.sha256(up).digest() and got[32:] == down


def test_several_concurrent_clients(net):
    seen: list = []
    ups = [os.urandom(150_000 + 1000 * i) for i in range(8)]

    async def main() -> list:
        srv = await aio.start_server(digest_server(b"", seen), port=8081, client=net, netif="b")
        async with srv:
            return await asyncio.gather(*(upload(net, u, 8081) for u in ups))

    answers = run(main())
    assert answers == [hashlib.sha256(u).digest() for u in ups]
    assert sorted(r for _, r in seen) == sorted(ups)
    assert len({p for p, _ in seen}) == len(ups)  # eight distinct client ports


def test_half_close_the_server_answers_after_eof(net):
    """write_eof sends FIN; the server reads EOF, still writes, and the client reads that, then EOF."""
    events: list = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        events.append(await reader.read())  # returns at the client's FIN
        events.append(reader.at_eof())
        writer.write(b"pong after your eof")
        await writer.drain()
        writer.close()

    async def main() -> tuple:
        async with await aio.start_server(handle, port=8082, client=net, netif="b"):
            reader, writer = await aio.open_connection(B_IP, 8082, client=net, netif="a")
            writer.write(b"ping")
            writer.write_eof()
            with pytest.raises(RuntimeError):
                writer.write(b"too late")
            first = await reader.readexactly(len(b"pong after your eof"))
            rest = await reader.read()
            writer.close()
            await writer.wait_closed()
            return first, rest, reader.at_eof()

    assert run(main()) == (b"pong after your eof", b"", True)
    assert events == [b"ping", True]


def test_ipv6(net):
    """The family follows the address: "::" listens on IPv6, a v6 literal connects over it."""
    up = os.urandom(200_000)
    seen: list = []

    async def main() -> tuple:
        async with await aio.start_server(digest_server(b"", seen), "::", 8086, client=net, netif="b") as srv:
            assert srv.sockets[0].getsockname() == ("::", 8086, 0, 0)  # the wildcard, as on Linux
            reader, writer = await aio.open_connection(B6, 8086, client=net, netif="a")
            peer = writer.get_extra_info("peername")
            writer.write(up)
            writer.write_eof()
            got = await reader.read()
            writer.close()
            await writer.wait_closed()
            return got, peer

    got, peer = run(main())
    assert got == hashlib.sha256(up).digest() and peer == (B6, 8086, 0, 0)
    (client_addr, received), = seen
    assert client_addr[0] == A6 and received == up


def test_connection_refused(net):
    """Refused as asyncio's sock_connect says it on the kernel: the text names the address."""
    async def main() -> None:
        await aio.open_connection(B_IP, 9, client=net, netif="a")

    with pytest.raises(ConnectionRefusedError, match=re.escape(f"Connect call failed ('{B_IP}', 9)")):
        run(main())


@pytest.mark.parametrize("on_usnet", [True, False], ids=["usnet", "kernel"])
def test_an_abort_ends_the_connection_with_a_fin_as_on_the_kernel(net, on_usnet):
    """transport.abort() drops what the transport buffered and closes the socket: the peer's read
    ends at a clean EOF, as with asyncio on the kernel's sockets (no RST: anyio closes its streams
    so, and its peers would fail with ConnectionResetError)."""

    async def main() -> tuple:
        started = asyncio.Event()
        outcome: asyncio.Future = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            started.set()
            try:
                outcome.set_result(await reader.read())
            except Exception as e:
                outcome.set_result(e)
            writer.close()

        if on_usnet:
            server = await aio.start_server(handle, port=8083, client=net, netif="b")
            _reader, writer = await aio.open_connection(B_IP, 8083, client=net, netif="a")
        else:
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            _reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        async with server:
            writer.write(b"x")
            await started.wait()
            writer.transport.abort()
            await writer.wait_closed()
            return await outcome, writer.transport.is_closing()

    assert run(main()) == (b"x", True)


def test_write_flow_control_pauses_and_resumes(net):
    """A writer far ahead of a paused reader sees drain() wait, then finish once the reader reads."""
    big = os.urandom(2_000_000)

    async def main() -> bytes:
        go = asyncio.Event()
        got = bytearray()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await go.wait()
            got.extend(await reader.read())
            writer.close()

        async with await aio.start_server(handle, port=8084, client=net, netif="b", limit=4096):
            reader, writer = await aio.open_connection(B_IP, 8084, client=net, netif="a")
            writer.transport.set_write_buffer_limits(high=64 * 1024)
            assert writer.transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            writer.write(big)  # more than TCP's buffers and the peer's window hold
            assert writer.transport.get_write_buffer_size() > 64 * 1024
            drain = asyncio.ensure_future(writer.drain())
            await asyncio.sleep(0)
            assert not drain.done()  # paused: the reader has not started
            go.set()
            await drain
            writer.write_eof()
            await reader.read()
            writer.close()
            await writer.wait_closed()
            return bytes(got)

    assert run(main()) == big


def test_tls_between_two_usnet_stacks(net, ca):
    """asyncio's TLS over the usnet transport: handshake, ALPN, certificate, data both ways.

    asyncio has no half-close over TLS (can_write_eof() is False), so the
    server reads a known length and answers, and the client reads to the
    server's close_notify.
    """
    up, down = os.urandom(300_000), os.urandom(700_000)
    seen: list = []
    sctx = server_context(ca, B_IP)
    cctx = client_context(ca)
    for ctx in (sctx, cctx):
        ctx.set_alpn_protocols(["usnet-test"])
    info: dict = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            got = await reader.readexactly(len(up))
            seen.append((writer.get_extra_info("peername"), got))
            writer.write(hashlib.sha256(got).digest() + down)
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()

    async def main() -> bytes:
        async with await aio.start_server(handle, port=8443, client=net, netif="b", ssl=sctx):
            reader, writer = await aio.open_connection(B_IP, 8443, client=net, netif="a", ssl=cctx)
            assert not writer.can_write_eof()
            tls = writer.get_extra_info("ssl_object")
            info.update(version=tls.version(), alpn=tls.selected_alpn_protocol(),
                        san=writer.get_extra_info("peercert")["subjectAltName"],
                        peer=writer.get_extra_info("peername"))
            writer.write(up)
            await writer.drain()
            got = await reader.read()  # to the server's close_notify
            writer.close()
            await writer.wait_closed()
            return got

    got = run(main())
    assert info == {"version": "TLSv1.3", "alpn": "usnet-test", "san": (("IP Address", B_IP),),
                    "peer": (B_IP, 8443)}
    assert seen[0][0][0] == A_IP and seen[0][1] == up
    assert got[:32] == hashlib.sha256(up).digest() and got[32:] == down


def test_tls_hostname_mismatch_fails_verification(net, ca):
    sctx = server_context(ca, "10.9.0.99")  # a certificate for some other address
    served: list = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(writer)  # never reached: the handshake fails first
        writer.close()

    async def main() -> None:
        async with await aio.start_server(handle, port=8444, client=net, netif="b", ssl=sctx):
            await aio.open_connection(B_IP, 8444, client=net, netif="a", ssl=client_context(ca))

    with pytest.raises(ssl.SSLCertVerificationError) as info:
        run(main())
    assert "IP address mismatch" in str(info.value)
    assert not served


def test_tls_untrusted_ca_fails_verification(net, ca):
    sctx = server_context(trustme.CA(), B_IP)  # signed by a CA the client does not trust

    async def main() -> None:
        async with await aio.start_server(lambda r, w: w.close(), port=8445, client=net, netif="b",
                                          ssl=sctx):
            await aio.open_connection(B_IP, 8445, client=net, netif="a", ssl=client_context(ca))

    with pytest.raises(ssl.SSLCertVerificationError):
        run(main())


def _loop_run(coro) -> object:
    """As `run`, on usnet's own event loop (`aio.EventLoop`), whose loop pumps its engines."""
    loop = aio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, LIMIT))
    finally:
        loop.close()


def test_the_event_loop_pumps_its_engines_itself(net):
    """Under aio.EventLoop the server's and the client's engines are pumped by the loop (their
    `driver`), not the stack thread; a megabyte each way still arrives, checked, and once the
    loop closes, the engines that are left are the stack thread's again."""
    up, down = os.urandom(1 << 20), os.urandom(1 << 20)
    seen: list = []
    engines: list = []

    async def main() -> bytes:
        server = await aio.start_server(digest_server(down, seen), B_IP, 0, client=net, netif="b")
        engines.append(server.sockets[0].engine)
        reader, writer = await aio.open_connection(B_IP, server.port, client=net, netif="a")
        eng = writer.get_extra_info("socket").engine
        engines.append(eng)
        drivers = {server.sockets[0].engine.driver, eng.driver}
        writer.write(up)
        got = await finish(reader, writer, server)
        assert drivers == {asyncio.get_running_loop()._usnet_driver}
        return got

    got = _loop_run(main())
    assert got == hashlib.sha256(up).digest() + down
    assert seen and seen[0][1] == up
    assert all(e.driver is None for e in engines)


def test_a_blocking_call_takes_the_engine_back_to_the_stack_thread(net):
    """A socket of a loop-pumped connection used with a blocking call from another thread (the
    executor) goes back to the stack thread for good, and the call completes."""

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        got = loop.create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(await reader.readexactly(5))
            writer.write(b"world")
            await writer.drain()
            writer.close()

        server = await aio.start_server(handle, B_IP, 0, client=net, netif="b")
        s = aio._us.socket(client=net, netif="a")
        s.setblocking(False)
        await loop.sock_connect(s, (B_IP, server.port))
        assert s.engine.driver is loop._usnet_driver
        s.settimeout(0.05)  # nothing to read yet: recv waits, and times out
        with pytest.raises(TimeoutError):
            await loop.run_in_executor(None, s.recv, 5)
        assert s.engine.driver is None and s.engine.pinned
        s.settimeout(LIMIT)
        await loop.run_in_executor(None, s.sendall, b"hello")
        answer = await loop.run_in_executor(None, s.recv, 5)  # the stack thread brings it
        assert await got == b"hello"
        s.close()
        server.close()
        await server.wait_closed()
        return answer

    assert _loop_run(main()) == b"world"


def test_a_lingering_close_in_the_loop_is_served_by_the_stack_thread(net):
    """SO_LINGER on a loop-pumped connection: the close (in the loop's thread, from the transport)
    waits for delivery as Linux's does, and the stack thread delivers it, since the blocked loop
    cannot pump: the close ends with the data acknowledged, well before the linger's 10 s."""
    import socket as std
    import struct
    import time

    async def main() -> tuple[bytes, float, bool]:
        loop = asyncio.get_running_loop()
        got = loop.create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(await reader.read())
            writer.close()

        server = await aio.start_server(handle, B_IP, 0, client=net, netif="b")
        _reader, writer = await aio.open_connection(B_IP, server.port, client=net, netif="a")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(std.SOL_SOCKET, std.SO_LINGER, struct.pack("ii", 1, 10))
        eng = sock.engine
        writer.write(b"x" * 200_000)
        await writer.drain()
        t = time.monotonic()
        writer.close()
        await writer.wait_closed()  # the socket's close runs in the loop's thread here
        took = time.monotonic() - t
        data = await got
        server.close()
        await server.wait_closed()
        return data, took, eng.pinned

    data, took, pinned = _loop_run(main())
    assert data == b"x" * 200_000
    assert pinned  # the close went back to the stack thread
    assert took < 3.0  # not the linger's 10 s: nothing waited for a pump that could not come


def test_loop_sendfile_sends_a_file_through_a_usnet_transport(net, tmp_path):
    """asyncio's `loop.sendfile` takes the usnet transport (through asyncio's fallback: read the
    file, write it with the transport's flow control), as it takes its own socket transports; it
    refused it ("sendfile is not supported for transport")."""
    body = os.urandom(300_000)
    path = tmp_path / "f.bin"
    path.write_bytes(body)
    seen: list = []

    async def main() -> tuple[int, bytes]:
        server = await aio.start_server(digest_server(b"", seen), B_IP, 0, client=net, netif="b")
        reader, writer = await aio.open_connection(B_IP, server.port, client=net, netif="a")
        with open(path, "rb") as f:
            sent = await asyncio.get_running_loop().sendfile(writer.transport, f, offset=1000)
        writer.write(b"after")  # the transport's own protocol is back: the stream goes on
        return sent, await finish(reader, writer, server)

    sent, got = _loop_run(main())
    assert sent == len(body) - 1000
    assert got == hashlib.sha256(body[1000:] + b"after").digest()


async def _echo_name(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer with the address the connection arrived on, then what came."""
    writer.write(writer.get_extra_info("sockname")[0].encode() + b" " + await reader.read())
    await writer.drain()
    writer.close()


async def _ask(c: Client, host: str, port: int) -> bytes:
    reader, writer = await aio.open_connection(host, port, client=c, netif="a")
    writer.write(b"hi")
    writer.write_eof()
    got = await reader.read()
    writer.close()
    await writer.wait_closed()
    return got


def test_a_server_with_no_host_listens_on_every_address(net):
    """No host (or "", or a list of hosts): a socket per address, 0.0.0.0 and :: (as asyncio's on
    the kernel, tests/interop/test_socket_semantics.py), both in `sockets`, each reached over
    its family; serve_forever serves both, and close ends both."""

    async def main() -> tuple:
        srv = await aio.start_server(_echo_name, port=8090, client=net, netif="b", start_serving=False)
        names = [s.getsockname() for s in srv.sockets]
        task = asyncio.create_task(srv.serve_forever())
        await asyncio.sleep(0)  # one turn of the loop: the task runs, and listens (start_serving=False)
        got = [await _ask(net, B_IP, 8090), await _ask(net, B6, 8090)]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await srv.wait_closed()
        closed = srv.sockets, srv.is_serving()
        with pytest.raises(ConnectionRefusedError):
            await _ask(net, B6, 8090)
        listed = await aio.start_server(_echo_name, [B6, B_IP], 8091, client=net, netif="b")
        async with listed:
            both = ([s.getsockname() for s in listed.sockets], await _ask(net, B6, 8091),
                    await _ask(net, B_IP, 8091))
        return names, got, closed, both

    names, got, closed, both = run(main())
    assert names == [("0.0.0.0", 8090), ("::", 8090, 0, 0)]
    assert got == [B_IP.encode() + b" hi", B6.encode() + b" hi"]
    assert closed == ((), False)
    assert both == ([(B6, 8091, 0, 0), (B_IP, 8091)], B6.encode() + b" hi", B_IP.encode() + b" hi")


def test_no_host_without_ipv6_anywhere_listens_on_ipv4_alone():
    """A domain whose netif has no IPv6 and which has no loopback netif has nowhere to put ::
    (EADDRNOTAVAIL): the server listens on 0.0.0.0 alone, as asyncio's does on a kernel without
    IPv6; with a loopback netif, :: listens there (on ::1), as Linux's does."""

    async def main(c: Client) -> list:
        async with await aio.start_server(_echo_name, port=8092, client=c, netif="b") as srv:
            return [s.getsockname() for s in srv.sockets]

    with memwire_domain() as (d, c):
        assert run(main(c)) == [("0.0.0.0", 8092)]
        d.add_loopback()
        assert run(main(c)) == [("0.0.0.0", 8092), ("::", 8092, 0, 0)]


def test_the_event_loop_listens_on_every_address_with_no_host(net):
    """asyncio's own `start_server(cb, port=P)` on usnet's event loop: both families, as on the kernel."""

    async def main() -> tuple:
        srv = await asyncio.start_server(_echo_name, port=8093)
        async with srv:
            return [s.getsockname() for s in srv.sockets], await _ask(net, B6, 8093), await _ask(net, B_IP, 8093)

    loop = aio.EventLoop(client=net, netif="b")
    try:
        got = loop.run_until_complete(asyncio.wait_for(main(), LIMIT))
    finally:
        loop.close()
    assert got == ([("0.0.0.0", 8093), ("::", 8093, 0, 0)], B6.encode() + b" hi", B_IP.encode() + b" hi")


def test_create_server_listens_on_a_bound_socket_it_is_given(net):
    """`loop.create_server(factory, sock=s)` with `s` bound and not yet listening (asyncssh's local
    port forwards make their listeners so): asyncio listens on it (`Server._start_serving` calls
    `sock.listen(backlog)` for every socket), and a connection is served. Before, usnet's loop
    listened only on a socket with no flow yet, so a bound one never listened: its accept raised
    EINVAL in the loop's callback and every connection was refused."""
    import socket as std

    async def main() -> tuple:
        loop = asyncio.get_running_loop()
        s = aio._us.socket(client=net, netif="b")
        s.bind((B_IP, 0))
        port = s.getsockname()[1]
        srv = await loop.create_server(lambda: asyncio.StreamReaderProtocol(
            asyncio.StreamReader(), _echo_name), sock=s)
        async with srv:
            return srv.sockets[0] is s, s.getsockopt(std.SOL_SOCKET, std.SO_ACCEPTCONN), \
                await _ask(net, B_IP, port)

    loop = aio.EventLoop(client=net, netif="b")
    try:
        got = loop.run_until_complete(asyncio.wait_for(main(), LIMIT))
    finally:
        loop.close()
    assert got == (True, 1, B_IP.encode() + b" hi")


def test_a_server_not_yet_serving_refuses_as_asyncios_does(net):
    """`create_server(..., start_serving=False)`: asyncio binds now and listens in `start_serving`
    (its `Server._start_serving` calls `sock.listen`), so on the kernel a connection before then
    is refused; usnet's is too, and served after. Before, usnet's listened at once, so the
    connection waited in its queue and was served late."""

    async def main() -> tuple:
        srv = await aio.start_server(_echo_name, B_IP, 8094, client=net, netif="b", start_serving=False)
        try:
            with pytest.raises(ConnectionRefusedError):
                await _ask(net, B_IP, 8094)
            await srv.start_serving()
            return srv.is_serving(), await _ask(net, B_IP, 8094)
        finally:
            srv.close()
            await srv.wait_closed()

    assert run(main()) == (True, B_IP.encode() + b" hi")


def test_wait_closed_with_a_client_still_connected_as_asyncios_on_this_python(net):
    """A closed server with a client still connected: asyncio's wait_closed returns at once
    before Python 3.12.1 and waits for the connection from then on (gh-79033); usnet's does as
    the running Python's does. Before, usnet's always waited, so a 3.11 program closing its server
    on Ctrl-C (serve_forever's cancel, `async with server`) hung on usnet while it exited on the
    kernel (tests/interop/test_programs4.py)."""

    async def program(start_server, open_connection, host: str) -> list:
        accepted = asyncio.Event()

        async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set()
            await reader.read()
            writer.close()

        server = await start_server(idle, host, 0)
        _, writer = await open_connection(host, server.sockets[0].getsockname()[1])
        await accepted.wait()
        server.close()
        try:
            await asyncio.wait_for(server.wait_closed(), 0.5)
            first = "returned"
        except TimeoutError:
            first = "waited"
        writer.close()  # the client goes: now it returns on every version
        await writer.wait_closed()
        await asyncio.wait_for(server.wait_closed(), LIMIT)
        return [first, "returned"]

    kernel = run(program(asyncio.start_server, asyncio.open_connection, "127.0.0.1"))
    ours = run(program(lambda *a: aio.start_server(*a, client=net, netif="b"),
                       lambda *a: aio.open_connection(*a, client=net, netif="a"), B_IP))
    assert ours == kernel == ["waited" if sys.version_info >= (3, 12, 1) else "returned", "returned"]


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.12's asyncio takes all_errors")
def test_all_errors_is_refused_where_asyncio_refuses_it(net):
    """create_connection's all_errors is 3.12's: on 3.11 usnet's loop refuses it with asyncio's
    own TypeError, as a program on the kernel gets."""

    async def attempt() -> str:
        try:
            await asyncio.get_running_loop().create_connection(asyncio.Protocol, B_IP, 9, all_errors=True)
        except TypeError as e:
            return str(e)
        return "accepted"

    kernel = asyncio.run(attempt())
    assert _loop_run(attempt()) == kernel and "all_errors" in kernel


class _Echo(asyncio.Protocol):
    """Writes back what comes, in the callback: the same `_serve` sends it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.t.write(data)  # type: ignore[attr-defined]


class _Ask(asyncio.Protocol):
    """Queues what comes (`got`)."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def data_received(self, data: bytes) -> None:
        self.got.put_nowait(data)


async def _echoes(t: asyncio.Transport, ask: _Ask, rounds: int) -> None:
    """`rounds` round trips through an `_Echo` server, one at a time, every answer checked."""
    for i in range(rounds):
        msg = b"%d " % i
        t.write(msg)
        got = b""
        while len(got) < len(msg):
            got += await ask.got.get()
        assert got == msg


def test_the_answers_pump_does_not_look_at_an_empty_ring_again(net):
    """A request and its answer are one loop callback (`_LoopDriver._serve`): the pump that
    receives the request ends on an empty RX ring (which arms the doorbell), the protocol writes,
    and the pump that sends the answer does not look at the ring again (an empty `Channel.recv`
    is ten calls and a BlockingIOError). Counted on the server's channel: at most one empty
    receive a `_serve`, 200 round trips all answered (a lost wake-up would hang, and fail). The
    listener, whose engine is the connection's, scans its accept queue only when it moved."""
    from usnet.client.aio import _LoopDriver

    rounds = 200
    looked = [0]  # the listener's scans of its accept queues (`_accept_waits`)
    real_waits = aio._accept_waits

    def accept_waits(*a):  # type: ignore[no-untyped-def]
        looked[0] += 1
        return real_waits(*a)

    per_serve: list[int] = []
    current: list[int] = []
    real_serve = _LoopDriver._serve

    def serve(self, eng):  # type: ignore[no-untyped-def]
        if self._serving:
            return real_serve(self, eng)
        current.append(0)
        try:
            return real_serve(self, eng)
        finally:
            per_serve.append(current.pop())

    async def main() -> None:
        server = await aio.create_server(_Echo, B_IP, 0, client=net, netif="b")
        ch = server.sockets[0].engine.ch
        real_recv = ch.recv

        def recv(*a, **kw):  # type: ignore[no-untyped-def]
            try:
                return real_recv(*a, **kw)
            except BlockingIOError:
                if current:
                    current[-1] += 1
                raise

        ch.recv = recv
        t, ask = await aio.create_connection(_Ask, B_IP, server.port, client=net, netif="a")
        await _echoes(t, ask, rounds)
        t.close()
        server.close()

    _LoopDriver._serve = serve  # type: ignore[method-assign]
    aio._accept_waits = accept_waits
    try:
        _loop_run(main())
    finally:
        _LoopDriver._serve = real_serve  # type: ignore[method-assign]
        aio._accept_waits = real_waits
    assert len(per_serve) >= rounds  # every request came through a `_serve`
    assert max(per_serve) <= 1, sorted(per_serve)[-5:]
    # and the server's listener looked at its accept queue when it moved, not after every pump
    assert looked[0] < rounds // 10, looked[0]


# -- a datagram endpoint's flow, pumped by the loop -------------------------------------------------


class _Collect(asyncio.DatagramProtocol):
    """Keeps what arrives; `arrived` is set at each datagram (the test's wait, bounded by LIMIT)."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple]] = []
        self.arrived = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.got.append((data, addr))
        self.arrived.set()


async def _endpoints(net) -> tuple:  # type: ignore[no-untyped-def]
    """Two endpoints of one usnet loop: `a` (the loop's netif "a"), and `b` over a usnet socket on
    netif "b" (`sock=`); both flows are the loop's to pump."""
    import socket as std

    loop = asyncio.get_running_loop()
    ta, pa = await loop.create_datagram_endpoint(_Collect, local_addr=(A_IP, 0))
    sb = aio._us.socket(std.AF_INET, std.SOCK_DGRAM, client=net, netif="b")
    sb.bind((B_IP, 0))
    tb, pb = await loop.create_datagram_endpoint(_Collect, sock=sb)
    await asyncio.sleep(0)  # (`_start` is a call_soon behind connection_made)
    return ta, pa, tb, pb


def _loop_on_a(net, coro) -> object:  # type: ignore[no-untyped-def]
    loop = aio.EventLoop(client=net, netif="a")
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, LIMIT))
    finally:
        loop.close()


async def _ping_pong(ts, ps, tr, pr, to: tuple, rounds: int) -> None:  # type: ignore[no-untyped-def]
    """`ts` sends "ping i" to `to` (`tr`'s), which answers "pong i" to the sender, one at a time."""
    for i in range(rounds):
        ps.arrived.clear()
        pr.arrived.clear()
        ts.sendto(b"ping %d" % i, to)
        await asyncio.wait_for(pr.arrived.wait(), LIMIT)
        tr.sendto(b"pong %d" % i, pr.got[-1][1])
        await asyncio.wait_for(ps.arrived.wait(), LIMIT)


def test_a_datagram_endpoint_ping_pong_does_not_wake_the_stack_thread(net):
    """Under aio.EventLoop a datagram endpoint's flow is pumped by the loop (its `driver`), as a
    TCP transport's engine: its doorbell is a loop reader and the protocol is called in the same
    callback. 300 round trips between two such endpoints: every datagram arrives, in order, and
    the stack thread pumps next to nothing (it pumped each datagram's flow before: 600 pumps)."""
    from usnet.client.engine import runner

    rounds = 300

    async def main() -> tuple[int, bool, list, list]:
        ta, pa, tb, pb = await _endpoints(net)
        ea, eb = ta._sock._engine, tb._sock._engine
        driver = asyncio.get_running_loop()._usnet_driver
        b_addr = tb.get_extra_info("sockname")
        before = runner().pumps
        await _ping_pong(ta, pa, tb, pb, b_addr, rounds)
        pumps = runner().pumps - before
        lent = getattr(ea, "driver", None) is driver and getattr(eb, "driver", None) is driver
        ta.close()
        tb.close()
        await asyncio.sleep(0)
        return pumps, lent, pa.got, pb.got

    pumps, lent, at_a, at_b = _loop_on_a(net, main())
    assert [d for d, _ in at_b] == [b"ping %d" % i for i in range(rounds)]
    assert [d for d, _ in at_a] == [b"pong %d" % i for i in range(rounds)]
    assert pumps < rounds // 10  # not one a datagram
    assert lent


def test_a_blocking_recvfrom_from_another_thread_takes_the_datagram_flow_back(net):
    """While the loop pumps an endpoint's flow, another thread blocks in recvfrom on its socket:
    the flow goes back to the stack thread for good (`pinned`), which wakes that thread when a
    datagram comes (the protocol may take some first: they are sent until the thread has one);
    every datagram is taken once, by the thread or the protocol (none lost, none twice);
    afterwards the protocol still gets them (through the socket's descriptor), and a blocking
    sendto from another thread is sent."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ta, pa, tb, pb = await _endpoints(net)
        sa, ea = ta._sock, ta._sock._engine
        a_addr, b_addr = ta.get_extra_info("sockname"), tb.get_extra_info("sockname")
        assert ea.driver is loop._usnet_driver
        sa.settimeout(LIMIT)
        blocked = loop.run_in_executor(None, sa.recvfrom, 100)
        for _ in range(1000):  # bounded: until the thread's wait gave the flow back (nothing to read yet)
            if getattr(ea, "driver", None) is None:
                break
            await asyncio.sleep(0.01)
        assert ea.pinned
        sent = 0
        while not blocked.done() and sent < 1000:  # until the thread took one
            n = len(pa.got)
            tb.sendto(b"d %d" % sent, a_addr)
            sent += 1
            while len(pa.got) == n and not blocked.done():
                await asyncio.wait([blocked, asyncio.ensure_future(pa.arrived.wait())],
                                   timeout=LIMIT, return_when=asyncio.FIRST_COMPLETED)
                pa.arrived.clear()
        data, addr = await blocked
        assert addr == b_addr
        assert ea.pinned and ea.driver is None
        assert sorted([data] + [d for d, _ in pa.got], key=lambda d: int(d.split()[1])) == \
            [b"d %d" % i for i in range(sent)]
        tb.sendto(b"after", a_addr)  # the stack thread pumps it now; the loop reads the socket
        while pa.got[-1][0] != b"after" if pa.got else True:
            pa.arrived.clear()
            await asyncio.wait_for(pa.arrived.wait(), LIMIT)
        await loop.run_in_executor(None, sa.sendto, b"from a thread", b_addr)
        while pb.got[-1][0] != b"from a thread" if pb.got else True:
            pb.arrived.clear()
            await asyncio.wait_for(pb.arrived.wait(), LIMIT)
        ta.close()
        tb.close()
        await asyncio.sleep(0)

    _loop_on_a(net, main())


def test_a_blocking_recvfrom_while_the_loop_is_not_running_is_served(net):
    """An endpoint's flow lent to a loop that stopped running (run_until_complete returned): a
    blocking recvfrom on its socket from another thread is not left waiting for a pump that will
    never come; the stack thread takes the flow back and brings the datagram."""
    import socket as std
    import threading

    loop = aio.EventLoop(client=net, netif="a")
    try:
        ta, _ = loop.run_until_complete(loop.create_datagram_endpoint(_Collect, local_addr=(A_IP, 0)))
        loop.run_until_complete(asyncio.sleep(0))
        sa, ea = ta._sock, ta._sock._engine
        assert ea.driver is loop._usnet_driver
        sa.settimeout(10)
        got: list = []
        th = threading.Thread(target=lambda: got.append(sa.recvfrom(100)))
        th.start()
        for _ in range(1000):  # bounded: until the thread's wait gave the flow back
            if ea.driver is None:
                break
            th.join(0.01)
        with aio._us.socket(std.AF_INET, std.SOCK_DGRAM, client=net, netif="b") as sb:
            sb.sendto(b"while stopped", ta.get_extra_info("sockname"))
            th.join(LIMIT)
        assert got and got[0][0] == b"while stopped"
        assert ea.pinned
        ta.close()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()


def test_a_loop_pumped_datagram_endpoint_makes_no_readiness_call_nor_looks_at_its_loopback_half(monkeypatch):
    """While the loop pumps an endpoint's flow and reads what each pump queued in the same callback,
    its descriptor's readiness is not set and cleared a batch (a pair of system calls nobody could
    see: `_LoopDriver.defer`), the read takes no signal hold of its own (`_news`), and a pump for
    the flow's doorbell does not look at the empty ring of the wildcard socket's loopback half
    (`DatagramEngine.take`'s `rang`). Yet the readiness stays exact when the transport does not
    read (its watcher and reader taken away): the descriptor is readable once the loop's callback
    queued a datagram, and not after it was read; and the loopback half still delivers (the stack
    thread pumps it)."""
    import select
    import socket as std

    from usnet.client import sigdefer
    from usnet.client.engine import Readiness

    rounds = 200
    changes: list[bool] = []
    masks = [0]
    real_set = Readiness.set

    def counting_set(self: Readiness, readable: bool, writable: bool) -> None:
        if readable != self.readable and self.made >= 0:
            changes.append(readable)  # what the pair makes a system call for
        real_set(self, readable, writable)

    with memwire_domain(f"{A6}/64", f"{B6}/64") as (d, client):
        d.add_loopback()

        async def main() -> tuple:
            loop = asyncio.get_running_loop()
            ta, pa = await loop.create_datagram_endpoint(_Collect, local_addr=("0.0.0.0", 0))
            sb = aio._us.socket(std.AF_INET, std.SOCK_DGRAM, client=client, netif="b")
            sb.bind((B_IP, 0))
            tb, pb = await loop.create_datagram_endpoint(_Collect, sock=sb)
            await asyncio.sleep(0)
            sa, ea = ta._sock, ta._sock._engine
            assert ea.driver is loop._usnet_driver and ea.more  # the loop's, with a loopback half
            half = ea.more[0]
            looks = [0]
            real_recv = half.recv_many

            def counting_recv(*a, **kw):  # type: ignore[no-untyped-def]
                looks[0] += 1
                return real_recv(*a, **kw)

            half.recv_many = counting_recv
            a_addr = (A_IP, ta.get_extra_info("sockname")[1])
            monkeypatch.setattr(Readiness, "set", counting_set)
            real_mask = sigdefer._sigmask

            def counting_mask(*a):  # type: ignore[no-untyped-def]
                masks[0] += 1
                return real_mask(*a)

            monkeypatch.setattr(sigdefer, "_sigmask", counting_mask)
            await _ping_pong(tb, pb, ta, pa, a_addr, rounds)
            ping_changes, ping_looks = len(changes), looks[0]
            monkeypatch.setattr(sigdefer, "_sigmask", real_mask)
            pings = [m for m, _ in pa.got]
            # the loopback half still delivers, pumped by the stack thread
            lo = aio._us.socket(std.AF_INET, std.SOCK_DGRAM, client=client, netif="a")
            pa.arrived.clear()
            lo.sendto(b"local", ("127.0.0.1", a_addr[1]))
            await asyncio.wait_for(pa.arrived.wait(), LIMIT)
            local = pa.got[-1]
            lo.close()
            # nobody reads in the loop's callback: the descriptor must say when a datagram waits
            ta._loop.remove_reader(ta._fd)
            aio._unwatch(ea, ta._watcher)
            fd = sa.fileno()
            quiet = select.select([fd], [], [], 0)[0]
            tb.sendto(b"unread", a_addr)
            for _ in range(1000):  # bounded: until the loop's pump queued it
                if ea.rxq:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0)  # (the pump's callback ended)
            readable = select.select([fd], [], [], 0)[0]
            got = sa.recvfrom(100, std.MSG_DONTWAIT)[0]
            after = select.select([fd], [], [], 0)[0]
            still_loops = ea.driver is loop._usnet_driver
            ta.close()
            tb.close()
            await asyncio.sleep(0)
            return ping_changes, ping_looks, local, quiet, readable == [fd], got, after, still_loops, pings, pb.got

        loop = aio.EventLoop(client=client, netif="a")
        try:
            ping_changes, ping_looks, local, quiet, readable, got, after, still_loops, at_a, at_b = \
                loop.run_until_complete(asyncio.wait_for(main(), LIMIT))
        finally:
            loop.close()
    assert at_a == [b"ping %d" % i for i in range(rounds)]
    assert [m for m, _ in at_b] == [b"pong %d" % i for i in range(rounds)]
    # the main thread's signal holds (usnet.client.sigdefer: two system calls each): a round trip
    # is two sends and two pumps; each pump's batch is read under the pump's hold (`_news`). Was 12.
    assert masks[0] < 10 * rounds
    assert ping_changes < rounds // 10  # was two a datagram (set by the pump, cleared by the read)
    assert ping_looks < rounds // 10  # was one a pump
    assert local[0] == b"local" and local[1][0] == "127.0.0.1"
    assert (quiet, readable, got, after) == ([], True, b"unread", [])
    assert still_loops


def test_a_request_read_by_the_loops_pump_takes_no_signal_hold_of_its_own(monkeypatch, net):
    """The loop's own pump reads what came for a transport under its own signal hold (`_read_early`),
    so `_pull` delivers it without one: one outermost hold (two `pthread_sigmask` system calls in
    the main thread, usnet.client.sigdefer) less a request; and a read does not look at the
    socket's readiness again once it says "not readable" (`_taken`), yet the descriptor stays so.
    Counted over 200 round trips between two transports of one loop (a plain protocol echoing each
    message back), every answer checked: the outermost holds outside the loop's pumps (`_pump`,
    `_flush`), which are the transports' own work (a write each side a round trip). The pumps'
    holds are not counted: how many pumps a round trip takes is the scheduler's (a stall past the
    40 ms delayed ACK sends it alone: a timer's pump on one side, a doorbell's on the other)."""
    from usnet.client import sigdefer
    from usnet.client.aio import _LoopDriver
    from usnet.client.socket import socket as usocket

    rounds = 200
    masks = [0]
    looks = [0]
    real_mask = sigdefer._sigmask
    real_update = usocket._update
    pumps = (_LoopDriver._pump.__code__, _LoopDriver._flush.__code__)

    def counting_update(self):  # type: ignore[no-untyped-def]
        looks[0] += 1
        return real_update(self)

    def counting_mask(how, *a):  # type: ignore[no-untyped-def]
        if how == sigdefer._BLOCK:  # an outermost hold (`_block`), unless a pump of the loop's took it
            f = sys._getframe(1)
            while f is not None and f.f_code not in pumps:
                f = f.f_back
            if f is None:
                masks[0] += 1
        return real_mask(how, *a)

    async def main() -> int:
        server = await aio.create_server(_Echo, B_IP, 0, client=net, netif="b")
        t, ask = await aio.create_connection(_Ask, B_IP, server.port, client=net, netif="a")
        for i in range(5):  # warm: the handshake's and the first answers' holds are not counted
            t.write(b"w%d " % i)  # type: ignore[attr-defined]
            await ask.got.get()
        monkeypatch.setattr(sigdefer, "_sigmask", counting_mask)
        monkeypatch.setattr(usocket, "_update", counting_update)
        await _echoes(t, ask, rounds)
        monkeypatch.setattr(sigdefer, "_sigmask", real_mask)
        monkeypatch.setattr(usocket, "_update", real_update)
        fd = t.get_extra_info("socket").fileno()  # type: ignore[attr-defined]
        readable = select.select([fd], [], [], 0)[0]  # its data read: not readable
        t.close()
        server.close()
        return masks[0], readable

    n, readable = _loop_run(main())  # type: ignore[misc]
    assert readable == []
    # the transports' sockets are not watched: their readiness, once not readable, is not looked
    # at again on every read (`_taken`); was two a round trip, one for each side's read
    assert looks[0] < rounds // 10, looks[0]
    # one a round trip on each side, its write's (two with each side's read taking a hold of its own)
    assert n <= 2 * rounds, n / rounds


def test_data_the_pump_read_for_a_transport_closed_before_it_was_delivered_makes_the_close_a_rst(net):
    """Two connections to one server; each server protocol, on its first data, closes the other's
    transport. Both requests come in one pump, which reads each for its transport (`_read_early`):
    the one closed before its data was delivered has unread data, as a kernel socket would, so its
    close is a RST (on a FIN the client's side would see a clean EOF)."""
    served: list[asyncio.Transport] = []

    class CloseOther(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            served.append(transport)  # type: ignore[arg-type]

        def data_received(self, data: bytes) -> None:
            for t in served:
                if t is not self.t:
                    t.close()

        @property
        def t(self) -> asyncio.BaseTransport:
            return next(t for t in served if t.get_protocol() is self)

    class Ask(asyncio.Protocol):
        def __init__(self) -> None:
            self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
            self.eof = False

        def eof_received(self) -> bool:
            self.eof = True
            return False

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost.set_result(exc)

    async def main() -> list:
        server = await aio.create_server(CloseOther, B_IP, 0, client=net, netif="b")
        pairs = [await aio.create_connection(Ask, B_IP, server.port, client=net, netif="a") for _ in range(2)]
        for _ in range(1000):  # bounded: both accepted
            if len(served) == 2:
                break
            await asyncio.sleep(0.001)
        for t, _p in pairs:
            t.write(b"hello")  # type: ignore[attr-defined]  # both sent in one flush: one server pump
        await asyncio.wait([p.lost for _t, p in pairs], timeout=LIMIT,
                           return_when=asyncio.FIRST_COMPLETED)
        ended = [(p.lost.result(), p.eof) for _t, p in pairs if p.lost.done()]
        for t, _p in pairs:
            t.close()
        server.close()
        return ended

    ended = _loop_run(main())
    assert len(ended) == 1 and isinstance(ended[0][0], ConnectionResetError), ended  # type: ignore[arg-type,index]


def test_data_the_pump_read_for_a_transport_paused_before_it_was_delivered_keeps_its_descriptor_readable(net):
    """Two connections to one server; the first server protocol to get data pauses the other's
    transport. Both requests come in one pump, which reads each for its transport (`_read_early`),
    so the paused one holds its request undelivered: its socket's descriptor says readable, as a
    kernel socket with that request in its queue would (a pool probing a paused connection with
    poll() sees it), and once reading resumes the request is delivered and the descriptor is no
    longer readable."""
    served: list[asyncio.Transport] = []
    got: dict[int, bytes] = {}
    seen: list = []

    class PauseOther(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport
            served.append(transport)  # type: ignore[arg-type]

        def data_received(self, data: bytes) -> None:
            got[served.index(self.t)] = data  # type: ignore[arg-type]
            if len(got) == 1:
                other = next(t for t in served if t is not self.t)
                held = other._early is not None  # type: ignore[attr-defined]  # read by the same pump
                other.pause_reading()  # type: ignore[attr-defined]
                fd = other.get_extra_info("socket").fileno()
                seen.append((held, select.select([fd], [], [], 0)[0] == [fd]))

    async def main() -> tuple:
        server = await aio.create_server(PauseOther, B_IP, 0, client=net, netif="b")
        pairs = [await aio.create_connection(asyncio.Protocol, B_IP, server.port, client=net, netif="a")
                 for _ in range(2)]
        for _ in range(1000):  # bounded: both accepted
            if len(served) == 2:
                break
            await asyncio.sleep(0.001)
        for i, (t, _p) in enumerate(pairs):
            t.write(b"request %d" % i)  # type: ignore[attr-defined]  # both in one flush: one server pump
        for _ in range(1000):  # bounded: the first delivered
            if seen:
                break
            await asyncio.sleep(0.001)
        paused = next(t for t in served if t.is_reading() is False)
        paused.resume_reading()  # type: ignore[attr-defined]
        for _ in range(1000):  # bounded: the second delivered
            if len(got) == 2:
                break
            await asyncio.sleep(0.001)
        fd = paused.get_extra_info("socket").fileno()
        after = select.select([fd], [], [], 0)[0]
        for t, _p in pairs:
            t.close()
        server.close()
        return seen, sorted(got.values()), after

    seen_, got_, after = _loop_run(main())  # type: ignore[misc]
    assert seen_ == [(True, True)], seen_  # held by the transport, and readable as on the kernel
    assert got_ == [b"request 0", b"request 1"]
    assert after == []


def _counted_echoes(monkeypatch, net, cls: type, name: str, counts: Callable[[Any], bool], rounds: int) -> int:  # type: ignore[no-untyped-def]
    """`rounds` round trips between two transports of one loop (`_echoes`, after 5 not counted),
    counting the calls of `cls.name` (one argument, `self`) for which `counts(self)` holds; then a
    second connection to the same server, accepted and served."""
    n = [0]
    real = getattr(cls, name)

    def counting(self):  # type: ignore[no-untyped-def]
        if counts(self):
            n[0] += 1
        return real(self)

    async def main() -> None:
        server = await aio.create_server(_Echo, B_IP, 0, client=net, netif="b")
        t, ask = await aio.create_connection(_Ask, B_IP, server.port, client=net, netif="a")
        await _echoes(t, ask, 5)  # warm
        monkeypatch.setattr(cls, name, counting)
        await _echoes(t, ask, rounds)
        monkeypatch.setattr(cls, name, real)
        t2, ask2 = await aio.create_connection(_Ask, B_IP, server.port, client=net, netif="a")
        await _echoes(t2, ask2, 3)  # accepted, served
        t.close()
        t2.close()
        server.close()

    _loop_run(main())
    return n[0]


def _signals_to(owner: type) -> Callable[[Any], bool]:
    """For `_counted_echoes` on `_Watcher._signal`: the watchers of an `owner` (a transport, a listener)."""
    return lambda w: isinstance(getattr(w.callback, "__self__", None), owner)


def test_a_pump_that_only_sends_a_transports_answer_does_not_signal_its_watcher(monkeypatch, net):
    """A pump that only sends what a connection's user calls queued (an answer's) changes nothing
    a transport's watcher reads (FlowEngine.notify's `calls`; `_Watcher.after_send`): the watchers
    are signalled for the segments that reach their connections, not again for each send. Counted
    over 200 round trips between two transports of one loop, every answer checked: the signals of
    a notice whose `touched` does not hold the transport's connection (a send's alone). How many
    segments reach a connection is the scheduler's (a stall past the 40 ms delayed ACK sends it
    alone, one arrival more), so the arrivals' signals are not what is bounded."""
    from usnet.client.engine import FlowEngine

    rounds = 200
    touched: list[Any] = []  # the `touched` of the notice being given, if one is
    real_notify = FlowEngine.notify

    def notify(self, touched_=None, calls=(), pumped=False):  # type: ignore[no-untyped-def]
        touched.append(touched_)
        try:
            return real_notify(self, touched_, calls, pumped)
        finally:
            touched.pop()

    monkeypatch.setattr(FlowEngine, "notify", notify)
    to_transport = _signals_to(aio.UsnetTransport)

    arrivals = [0]

    def for_a_send(w) -> bool:  # type: ignore[no-untyped-def]
        if not to_transport(w):
            return False
        if not touched or touched[-1] is None or w.callback.__self__._conn in touched[-1]:
            arrivals[0] += 1  # (or any notice: an error, a close)
            return False
        return True

    sends = _counted_echoes(monkeypatch, net, aio._Watcher, "_signal", for_a_send, rounds)
    assert arrivals[0] >= 2 * rounds  # one a round trip on each side at least, for the answer's arrival
    assert sends == 0  # each side's send was one more (800 in all)


def test_a_listeners_watcher_is_signalled_only_by_the_pumps_that_moved_its_accept_queue(monkeypatch, net):
    """A server's listener shares its engine with every connection it accepted, so every request's
    pumps are its engine's; its watcher is signalled only by the pumps that moved the accept queues
    (FlowEngine.watch's `accepts`), not by each of them. Counted over 200 round trips on one
    accepted connection; a connection made after them is still accepted and served."""
    rounds = 200
    n = _counted_echoes(monkeypatch, net, aio._Watcher, "_signal", _signals_to(aio._Listener), rounds)
    assert n < rounds // 10, n / rounds  # was one a pump of the server's engine (403)


def test_a_transport_that_delivered_data_looks_no_more_yet_hears_the_end_behind_it(monkeypatch, net):
    """A transport's read takes the look at what came behind its data (`more`: data, the peer's
    FIN, an error), so after delivering it the watcher's callback does not look at the connection
    again (`_ready`'s `_wants`, under the engine's plain lock): counted over 200 round trips between
    two transports of one loop (was one a round trip on each side). A request and the peer's FIN in
    one pump: the server's protocol still gets the data, then its EOF, and answers after it."""
    rounds = 200
    # (the watchers hold their own bound `_wants`: only `_ready`'s look is counted)
    n = _counted_echoes(monkeypatch, net, aio.UsnetTransport, "_wants", lambda t: True, rounds)
    assert n < rounds // 10, n / rounds  # was 400
    seen: list = []

    class Last(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            seen.append(data)

        def eof_received(self) -> bool:
            seen.append("eof")
            self.t.write(b"after eof")  # type: ignore[attr-defined]
            self.t.close()
            return True

    async def main() -> bytes:
        last = await aio.create_server(Last, B_IP, 0, client=net, netif="b")
        reader, writer = await aio.open_connection(B_IP, last.port, client=net, netif="a")
        writer.write(b"request")
        writer.write_eof()  # the FIN behind the data: one segment each, one server pump
        answer = await reader.read()
        writer.close()
        last.close()
        return answer

    assert _loop_run(main()) == b"after eof"
    assert seen == [b"request", "eof"]
