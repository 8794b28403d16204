"""usnet.tls: blocking TLS between two usnet stacks on a memwire, no root.

The server side runs in a thread with blocking usnet sockets; every socket
has a timeout, so a lost wake-up fails a test instead of hanging it.
Certificates come from a throwaway CA (trustme), subjectAltName = the IP.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import threading
from collections.abc import Callable

import pytest
import trustme

from tests.helpers.util import client_context, memwire_domain, server_context
from usnet import socket as us
from usnet import tls
from usnet.client import Client

A_IP, B_IP = "10.9.0.1", "10.9.0.2"
TIMEOUT = 20


@pytest.fixture
def net():
    with memwire_domain() as (_d, client):
        yield client


def read_to_eof(s) -> bytes:
    got = bytearray()
    while chunk := s.recv(65536):
        got += chunk
    return bytes(got)


class Server:
    """One TLS connection served in a thread by `serve(tls_socket)`; its result or exception kept."""

    def __init__(self, c: Client, port: int, ctx: ssl.SSLContext, serve: Callable) -> None:
        self.listener = us.socket(client=c, netif="b")
        self.listener.bind(("0.0.0.0", port))
        self.listener.listen()
        self.listener.settimeout(TIMEOUT)
        self.ctx, self.serve = ctx, serve
        self.result: object = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            # A wrapped listener, as with ssl: accept() hands back TLS sockets, handshake done.
            listener = tls.wrap_socket(self.ctx, self.listener, server_side=True)
            conn, _ = listener.accept()  # the timeout is the listener's, inherited
            with conn as s:
                self.result = self.serve(s)
        except BaseException as e:
            self.error = e

    def join(self) -> object:
        self.thread.join(TIMEOUT)
        self.listener.close()
        assert not self.thread.is_alive()
        return self.result


def connect(c: Client, port: int, ctx: ssl.SSLContext, hostname: str = B_IP) -> tls.TlsSocket:
    raw = us.create_connection((B_IP, port), timeout=TIMEOUT, client=c, netif="a")
    return tls.wrap_socket(ctx, raw, server_hostname=hostname)


def test_both_ways_digest_checked(net, ca):
    up, down = os.urandom(1_000_000), os.urandom(1_500_000)
    sctx, cctx = server_context(ca, B_IP), client_context(ca)
    for ctx in (sctx, cctx):
        ctx.set_alpn_protocols(["usnet-test"])

    def serve(s: tls.TlsSocket) -> tuple:
        got = read_to_eof(s)  # ends at the client's close_notify (its shutdown(SHUT_WR))
        s.sendall(hashlib.sha256(got).digest() + down)
        s.shutdown(us.SHUT_WR)
        return got, s.getpeername(), s.version()

    srv = Server(net, 9443, sctx, serve)
    with connect(net, 9443, cctx) as s:
        assert s.version() == "TLSv1.3" and s.selected_alpn_protocol() == "usnet-test"
        assert s.cipher()[1] == "TLSv1.3"
        assert s.getpeercert()["subjectAltName"] == (("IP Address", B_IP),)
        assert s.getpeername() == (B_IP, 9443)
        s.sendall(up)
        s.shutdown(us.SHUT_WR)  # close_notify, then FIN: a clean TLS end of data
        got = read_to_eof(s)
    received, peer, version = srv.join()
    assert srv.error is None, srv.error
    assert received == up and peer[0] == A_IP and version == "TLSv1.3"
    assert got[:32] == hashlib.sha256(up).digest() and got[32:] == down


def test_wrong_ca_fails_verification(net, ca):
    srv = Server(net, 9444, server_context(trustme.CA(), B_IP), read_to_eof)  # another CA's cert
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        connect(net, 9444, client_context(ca))
    assert info.value.verify_message == "unable to get local issuer certificate"
    srv.join()
    assert isinstance(srv.error, ssl.SSLError)  # the client's alert: unknown CA
    assert "UNKNOWN_CA" in str(srv.error)


def test_hostname_mismatch_fails_verification(net, ca):
    srv = Server(net, 9445, server_context(ca, B_IP), read_to_eof)
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        connect(net, 9445, client_context(ca), hostname="10.9.0.77")
    assert "IP address mismatch" in str(info.value)
    srv.join()
    assert isinstance(srv.error, ssl.SSLError)


def test_makefile_over_tls(net, ca):
    def serve(s: tls.TlsSocket) -> list:
        with s.makefile("rb") as r, s.makefile("w", encoding="ascii", newline="") as w:
            lines = [r.readline(), r.readline(), r.readline()]
            w.write("HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        return lines

    srv = Server(net, 9446, server_context(ca, B_IP), serve)
    s = connect(net, 9446, client_context(ca))
    with s.makefile("wb") as w:
        w.write(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    r = s.makefile("rb")
    s.close()  # as http.client does: the open file keeps the connection alive
    assert r.readline() == b"HTTP/1.0 200 OK\r\n"
    assert r.readline() == b"Content-Length: 5\r\n"
    assert r.readline() == b"\r\n"
    assert r.read(5) == b"hello"
    r.close()
    assert srv.join() == [b"GET / HTTP/1.0\r\n", b"Host: x\r\n", b"\r\n"]
    assert srv.error is None, srv.error


def test_unwrap_returns_the_plain_connection(net, ca):
    """close_notify both ways, then plaintext on the same TCP connection."""

    def serve(s: tls.TlsSocket) -> bytes:
        assert s.recv(100) == b"secret"
        assert s.recv(100) == b""  # the client's close_notify
        plain = s.unwrap()
        return plain.recv(100)

    srv = Server(net, 9447, server_context(ca, B_IP), serve)
    s = connect(net, 9447, client_context(ca))
    s.sendall(b"secret")
    plain = s.unwrap()
    assert plain is s and s.version() is None  # as CPython's SSLSocket: itself, no longer TLS
    with pytest.raises(ValueError, match="No SSL wrapper"):
        s.unwrap()
    plain.sendall(b"in clear")
    assert srv.join() == b"in clear"
    assert srv.error is None, srv.error
    plain.close()


def test_non_blocking_reads_want_read(net, ca):
    def serve(s: tls.TlsSocket) -> bytes:
        s.sendall(b"late")
        return read_to_eof(s)

    srv = Server(net, 9448, server_context(ca, B_IP), serve)
    s = connect(net, 9448, client_context(ca))
    assert s.recv(10) == b"late"
    s.setblocking(False)
    with pytest.raises(ssl.SSLWantReadError):
        s.recv(10)  # nothing more sent: a non-blocking read says so, as the ssl module does
    s.setblocking(True)
    s.shutdown(us.SHUT_WR)
    s.close()
    srv.join()
    assert srv.error is None, srv.error


def test_a_record_read_along_with_another_leaves_the_socket_readable(net, ca):
    """Two records queued at once: the first recv takes one, and the socket is still readable for
    the second, as an SSLSocket's descriptor is (OpenSSL reads record by record). A program that
    waits on fileno() between reads (tornado's HTTPS server, for the request that came in with the
    end of the handshake) would otherwise wait for data it already holds."""
    import select
    import time

    sctx = server_context(ca, B_IP)
    sctx.num_tickets = 0  # no session tickets: after the handshake, only the two records below
    sent = threading.Event()

    def serve(s: tls.TlsSocket) -> bytes:
        s.sendall(b"one")
        s.sendall(b"two")
        sent.set()
        return read_to_eof(s)

    srv = Server(net, 9449, sctx, serve)
    s = connect(net, 9449, client_context(ca))
    assert sent.wait(TIMEOUT)
    raw, deadline = s._sock, time.monotonic() + TIMEOUT  # the TCP socket underneath
    while len(raw.recv(100, us.MSG_PEEK)) < 2 * (5 + 3 + 1 + 16) and time.monotonic() < deadline:
        select.select([raw], [], [], 0.05)  # both records' ciphertext in the socket (AES-GCM: 22 bytes more)
    assert s.recv(100) == b"one"
    assert select.select([s], [], [], 5)[0] == [s]  # at once: it is there (5 s: well within the server's wait)
    assert s.recv(100) == b"two"
    s.shutdown(us.SHUT_WR)
    s.close()
    srv.join()
    assert srv.error is None, srv.error


def test_a_tls_socket_is_an_ssl_socket_to_isinstance(net, ca):
    """What SSLContext.wrap_socket gives is an ssl.SSLSocket on the kernel, and programs check
    (websockets' threaded TLS server asserts it); its context can be switched, as SSLSocket's."""
    srv = Server(net, 9450, server_context(ca, B_IP), read_to_eof)
    cctx = client_context(ca)
    with connect(net, 9450, cctx) as s:
        assert isinstance(s, ssl.SSLSocket)
        assert s._sslobj.version() == "TLSv1.3"  # httpcore reaches for SSLSocket's SSLObject so
        assert s.context is cctx
        other = client_context(ca)
        s.context = other
        assert s.context is other and s._obj.context is other
        s.shutdown(us.SHUT_WR)
    srv.join()
    assert srv.error is None, srv.error


def test_one_thread_reads_while_others_send_as_with_the_ssl_module(net, ca):
    """websockets' threaded client and server read in one thread and send from others, as the ssl
    module allows on a kernel socket. Two senders and a reader on one TlsSocket: every message
    arrives whole, in its sender's order, and the echo comes back intact (a ciphertext buffer sent
    by two threads at once went out twice, and the peer's MAC check failed)."""
    n, size = 300, 3000

    def serve(s: tls.TlsSocket) -> int:  # echo, until the client's close_notify
        total = 0
        while chunk := s.recv(65536):
            s.sendall(chunk)
            total += len(chunk)
        s.shutdown(us.SHUT_WR)
        return total

    srv = Server(net, 9448, server_context(ca, B_IP), serve)
    msgs = {k: [bytes([k]) * size for _ in range(n)] for k in (1, 2)}
    got = bytearray()
    with connect(net, 9448, client_context(ca)) as s:
        reader = threading.Thread(target=lambda: got.extend(read_to_eof(s)))
        reader.start()
        senders = [threading.Thread(target=lambda k=k: [s.sendall(m) for m in msgs[k]]) for k in msgs]
        for t in senders:
            t.start()
        for t in senders:
            t.join(TIMEOUT)
        s.shutdown(us.SHUT_WR)
        reader.join(TIMEOUT)
    assert srv.join() == 2 * n * size and srv.error is None, srv.error
    assert len(got) == 2 * n * size
    assert got.count(b"\x01") == n * size and got.count(b"\x02") == n * size


@pytest.mark.parametrize("where", ["decrypted", "ciphertext"])
def test_shutdown_keeps_what_arrived_before_it_readable(net, ca, where):
    """shutdown(SHUT_WR) sends close_notify while echoes are still coming (the test above). OpenSSL 3
    reads on after it writes close_notify (the second SSL_shutdown that SSLObject.unwrap makes),
    and application data it finds then, a record a recv left partly read ("decrypted") or one the
    reader had taken from the socket but not yet handed to SSL_read ("ciphertext": one thread
    reads while another shuts down), fails the session (APPLICATION_DATA_AFTER_CLOSE_NOTIFY): the
    next recv returned b"" as if the peer had ended, and the close that followed reset the
    connection under the peer's sendall. Here every byte sent before and after the shutdown reads."""
    first, second, rest = b"a" * 1000, b"c" * 1000, b"b" * 50_000

    def serve(s: tls.TlsSocket) -> int:
        s.sendall(first)
        s.sendall(second)  # a record of its own
        assert s.recv(10) == b"go"
        s.sendall(rest)
        total = len(read_to_eof(s))  # up to the client's close_notify
        s.shutdown(us.SHUT_WR)
        return total

    srv = Server(net, 9449, server_context(ca, B_IP), serve)
    with connect(net, 9449, client_context(ca)) as s:
        if where == "decrypted":
            head = s.recv(10)  # the rest of the record waits inside OpenSSL
        else:
            head = s.recv(len(first))  # (TLS 1.3's tickets, then) the first record, all of it
            assert head == first and not s.pending()
            while s._incoming.pending < 5 + len(second):  # the next one, whole, in the incoming BIO:
                s._fill()  # where a reader thread has it between its socket read and SSL_read
        s.sendall(b"go")
        s.shutdown(us.SHUT_WR)
        got = head + read_to_eof(s)
    assert srv.join() == 0 and srv.error is None, srv.error
    assert got == first + second + rest
