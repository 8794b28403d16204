"""The asyncio and TLS faces against the host kernel's peers, over a TAP device (root).

usnet runs in this process on a fresh TAP (the `tap_domain` fixture,
conftest.py); the peers are the host's own: curl, and Python's ssl module
on a kernel socket. Certificates come from a throwaway CA (trustme) with the
usnet and host addresses as subjectAltName IPs, so curl and OpenSSL check
them exactly as they would any server's. Waits are on processes, threads
and sockets with deadlines, never sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import threading

import pytest

from tests.helpers.util import client_context, server_context
from usnet import aio, tls
from usnet import socket as us
from usnet.client import Client

pytestmark = pytest.mark.privileged
LIMIT = 60  # seconds for a whole test: only reached when something is broken


def need_curl() -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is missing (scripts/test-deps.sh installs it)")


def http_handler(body_for: callable, seen: list):
    """An HTTP/1.1 handler on asyncio streams: reads one request (with its body), answers, closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            upload = await reader.readexactly(length)
            seen.append((writer.get_extra_info("peername"), head.split(b"\r\n")[0], upload))
            body = body_for(upload)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
            writer.write(body)
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()

    return handle


async def curl(*args: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec("curl", "-sS", "--max-time", "30", *args,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    return proc.returncode, err


def test_curl_fetches_from_a_usnet_asyncio_http_server(tap_domain, tmp_path):
    d, ifname, usnet_ip, host_ip = tap_domain
    need_curl()
    body = os.urandom(2_000_000)
    seen: list = []
    out = tmp_path / "fetched"

    async def main() -> tuple[int, bytes]:
        handler = http_handler(lambda _upload: body, seen)
        async with await aio.start_server(handler, usnet_ip, 8080, client=Client.local(d), netif=ifname):
            return await curl("-o", str(out), f"http://{usnet_ip}:8080/blob")

    rc, err = asyncio.run(asyncio.wait_for(main(), LIMIT))
    assert rc == 0, err
    (peer, request, _), = seen
    assert peer[0] == host_ip and request == b"GET /blob HTTP/1.1"
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(body).digest()


def test_a_usnet_asyncio_server_hears_a_host_client_that_speaks_only_after_accept(tap_domain):
    """The host (kernel asyncio streams) sends only once usnet's handler runs, when usnet is idle.

    Nothing on the usnet side is waiting on a timer then, so the request can
    only reach the handler if the stack thread's doorbell is armed while it
    sleeps (a lost wake-up here once hung every such server).
    """
    d, ifname, usnet_ip, _host_ip = tap_domain

    async def main() -> tuple[bytes, tuple]:
        accepted = asyncio.Event()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set()
            writer.write(b"echo " + await reader.readline())
            await writer.drain()
            writer.close()

        async with await aio.start_server(echo, usnet_ip, 7007, client=Client.local(d), netif=ifname):
            reader, writer = await asyncio.open_connection(usnet_ip, 7007)  # the kernel's TCP
            await accepted.wait()
            writer.write(b"hello\n")
            answer = await reader.read()
            peer = writer.get_extra_info("peername")
            writer.close()
            await writer.wait_closed()
            return answer, peer

    assert asyncio.run(asyncio.wait_for(main(), 20)) == (b"echo hello\n", (usnet_ip, 7007))


def test_usnet_tls_client_with_a_host_python_ssl_server(tap_domain, ca):
    """usnet.tls (blocking) ↔ ssl.SSLSocket on the host kernel: handshake, certificate, data both ways."""
    d, ifname, usnet_ip, host_ip = tap_domain
    sctx, cctx = server_context(ca, host_ip), client_context(ca)
    up, down = os.urandom(1_000_000), os.urandom(1_500_000)
    ls = socket.socket()
    ls.bind((host_ip, 0))
    ls.listen()
    ls.settimeout(LIMIT)
    result: dict = {}

    def serve() -> None:
        try:
            conn, addr = ls.accept()
            conn.settimeout(LIMIT)
            with sctx.wrap_socket(conn, server_side=True) as s:
                got = bytearray()
                while chunk := s.recv(65536):  # to the client's close_notify
                    got += chunk
                s.sendall(hashlib.sha256(got).digest() + down)
                s.unwrap().close()  # our close_notify; the client's came already
            result.update(addr=addr, got=bytes(got))
        except BaseException as e:
            result["error"] = e

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        raw = us.create_connection((host_ip, ls.getsockname()[1]), timeout=LIMIT,
                                   client=Client.local(d), netif=ifname)
        with tls.wrap_socket(cctx, raw, server_hostname=host_ip) as s:
            assert s.getpeercert()["subjectAltName"] == (("IP Address", host_ip),)
            version = s.version()
            s.sendall(up)
            s.shutdown(us.SHUT_WR)  # close_notify, then FIN
            got = bytearray()
            while chunk := s.recv(65536):
                got += chunk
        t.join(LIMIT)
    finally:
        ls.close()
    assert not t.is_alive()
    assert "error" not in result, result.get("error")
    assert version in ("TLSv1.2", "TLSv1.3")
    assert result["addr"][0] == usnet_ip and result["got"] == up
    assert got[:32] == hashlib.sha256(up).digest() and bytes(got[32:]) == down


def test_curl_over_https_to_a_usnet_asyncio_tls_server(tap_domain, tmp_path, ca):
    """curl --cacert (the host's OpenSSL) POSTs 1 MB to a usnet.aio server with ssl= and gets 2 MB back."""
    d, ifname, usnet_ip, host_ip = tap_domain
    need_curl()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    sctx = server_context(ca, usnet_ip)
    up, down = os.urandom(1_000_000), os.urandom(2_000_000)
    (tmp_path / "up").write_bytes(up)
    out = tmp_path / "fetched"
    seen: list = []

    async def main() -> tuple[int, bytes]:
        handler = http_handler(lambda upload: hashlib.sha256(upload).digest() + down, seen)
        async with await aio.start_server(handler, usnet_ip, 8443, client=Client.local(d), netif=ifname,
                                          ssl=sctx):
            return await curl("--cacert", str(tmp_path / "ca.pem"), "-H", "Expect:",
                              "--data-binary", f"@{tmp_path / 'up'}", "-o", str(out),
                              f"https://{usnet_ip}:8443/upload")

    rc, err = asyncio.run(asyncio.wait_for(main(), LIMIT))
    assert rc == 0, err
    (peer, request, upload), = seen
    assert peer[0] == host_ip and request == b"POST /upload HTTP/1.1" and upload == up
    fetched = out.read_bytes()
    assert fetched[:32] == hashlib.sha256(up).digest() and fetched[32:] == down


def test_curl_refuses_a_usnet_tls_server_with_a_certificate_for_another_address(tap_domain, tmp_path, ca):
    """The same server with a certificate for the host's address: curl's own check fails it."""
    d, ifname, usnet_ip, host_ip = tap_domain
    need_curl()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    sctx = server_context(ca, host_ip)
    seen: list = []

    async def main() -> tuple[int, bytes]:
        handler = http_handler(lambda _upload: b"never", seen)
        async with await aio.start_server(handler, usnet_ip, 8444, client=Client.local(d), netif=ifname,
                                          ssl=sctx):
            return await curl("--cacert", str(tmp_path / "ca.pem"), f"https://{usnet_ip}:8444/")

    rc, err = asyncio.run(asyncio.wait_for(main(), LIMIT))
    assert rc == 60, err  # CURLE_PEER_FAILED_VERIFICATION
    assert not seen
