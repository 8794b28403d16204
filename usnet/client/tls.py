"""`usnet.tls`: TLS for blocking usnet sockets, shaped like `ssl.SSLSocket`.

    s = usnet.tls.wrap_socket(ctx, usnet.socket.create_connection(...), server_hostname="10.9.0.2")

`SSLContext.wrap_socket` needs a kernel descriptor for OpenSSL to read and
write; a usnet socket has none. So OpenSSL runs over memory BIOs
(`SSLContext.wrap_bio`): ciphertext goes from the outgoing BIO to the
usnet socket and from the socket to the incoming BIO, and every TLS
decision (certificates, hostname, alerts, close_notify) is still the ssl
module's, with its exceptions. The asyncio face (`usnet.aio` with ``ssl=``)
reaches the same `wrap_bio` through asyncio's SSLProtocol, so neither face
reimplements TLS.

Blocking, timeouts and non-blocking mode are the underlying socket's: a
timeout raises TimeoutError as the ssl module does, and a non-blocking
socket raises ssl.SSLWantReadError / ssl.SSLWantWriteError.
"""

from __future__ import annotations

import errno
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from usnet.client import socket as _us

__all__ = ["TlsSocket", "wrap_socket"]

T = TypeVar("T")
_HEADER = 5  # a TLS record's header: type, version, length (2 bytes)
_SEND_MAX = 256 * 1024  # plaintext per send(): bounds what a non-blocking send buffers


# The class TlsSocket derives from, typed loosely: it replaces (does not extend) every method of it.
_SSLSocket: Any = ssl.SSLSocket


class TlsSocket(_SSLSocket):
    """A TLS connection over a usnet socket (see the module docstring).

    An `ssl.SSLSocket` to isinstance, as what `SSLContext.wrap_socket` returns is one on the
    kernel (websockets' sync server asserts it, asyncio refuses one for its sock_* calls, libraries
    pick their TLS path by it); none of SSLSocket's kernel machinery runs: the methods a program
    uses are all this class's own, and the C socket underneath is never opened (descriptor -1)."""

    def __init__(self, sock: _us.socket, context: ssl.SSLContext, server_side: bool = False,
                 server_hostname: str | None = None, do_handshake_on_connect: bool = True,
                 suppress_ragged_eofs: bool = True, session: ssl.SSLSession | None = None) -> None:
        if server_side and server_hostname:
            raise ValueError("server_hostname can only be specified in client mode")
        self._sock = sock
        self._context = context
        self.server_side = server_side
        self.server_hostname = server_hostname
        self.do_handshake_on_connect = do_handshake_on_connect
        self.suppress_ragged_eofs = suppress_ragged_eofs
        self._session = session
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj: ssl.SSLObject | None = None
        self._header = bytearray()  # the next record's header, as far as it came
        self._left = 0  # bytes of the current record's body not read from the socket yet
        self._wbuf = bytearray()  # ciphertext the socket has not taken yet (non-blocking)
        # plaintext that arrived before our close_notify, taken out of OpenSSL by `shutdown`
        # (`_take_in`); reads return it first
        self._early = bytearray()
        # One thread may read while another writes, as with the ssl module on a kernel socket
        # (websockets' threaded client and server: a thread in recv, sends from the others).
        # `_lock` serialises every call into OpenSSL and its BIOs (the SSLObject and the memory
        # BIOs are not safe to use from two threads at once: that crashed the interpreter), and
        # is never held while the socket blocks. `_rlock` keeps the socket's reads and the
        # record being read to one thread; `_wlock` the socket's sends of `_wbuf`, which the
        # reader (whose reads can make OpenSSL write: TLS 1.3's tickets and key updates) only
        # tries, so that it never waits behind a writer blocked on a full window (`_flush`).
        self._lock = threading.Lock()
        self._rlock = threading.Lock()
        self._wlock = threading.Lock()
        self._closed = False  # close() was called; open makefile()s may still use it
        self._released = False  # the socket underneath is closed
        self._plain = False  # unwrapped: I/O is the plain socket's, as SSLSocket's without _sslobj
        self._io_refs = 0
        if self._connected():
            if do_handshake_on_connect and sock.gettimeout() == 0.0:
                raise ValueError("do_handshake_on_connect should not be specified for non-blocking sockets")
            self._wrap()
            if do_handshake_on_connect:
                self._handshake_or_close()

    def _connected(self) -> bool:
        try:
            self._sock.getpeername()
        except OSError:
            return False
        return True

    def _wrap(self) -> None:
        self._obj = self.context.wrap_bio(self._incoming, self._outgoing, server_side=self.server_side,
                                          server_hostname=self.server_hostname, session=self._session)

    def _handshake_or_close(self) -> None:
        try:
            self.do_handshake()
        except BaseException:
            self.close()
            raise

    # -- moving ciphertext ---------------------------------------------------------------------

    def _need(self) -> ssl.SSLObject:
        if self._released:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if self._obj is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return self._obj

    def _flush(self, wait: bool = True) -> bool:
        """Send what OpenSSL wrote; False if a non-blocking socket could not take it all.

        Under the write side's lock: two threads sending one `_wbuf` sent its bytes twice (the
        peer's MAC check fails, or it waits for ever). `wait` False (the reader): if another
        thread holds the lock, that thread sends this too, since it looks again after it lets go."""
        while True:
            if not self._wlock.acquire(blocking=wait):
                return True
            try:
                with self._lock:
                    if self._outgoing.pending:
                        self._wbuf += self._outgoing.read()
                while self._wbuf:
                    try:
                        n = self._sock.send(self._wbuf)
                    except BlockingIOError:
                        return False
                    del self._wbuf[:n]
            finally:
                self._wlock.release()
            with self._lock:
                if not self._outgoing.pending:  # (else: a reader wrote while we held the lock)
                    return True

    def _fill(self) -> None:
        """`_fill_locked` under the read side's lock (a writer may need to read during a handshake)."""
        with self._rlock:
            self._fill_locked()

    def _fill_locked(self) -> None:
        """Feed the incoming BIO from the socket (EOF included), one TLS record at most.

        As OpenSSL on a descriptor (no read-ahead): what is not part of the record being read
        stays in the socket, so the socket's readiness still says that more is there. A program
        that waits on fileno() between reads (tornado, after SSLWantReadError) would otherwise
        never hear of a record read along with the one before (the HTTP request that came in
        the segment that finished the handshake), and wait forever."""
        first = True
        while True:
            want = self._left or _HEADER - len(self._header)
            try:
                data = self._sock.recv(want)
            except BlockingIOError:
                if not first:
                    return  # the header came, its body not yet: OpenSSL asks again
                raise ssl.SSLWantReadError(ssl.SSL_ERROR_WANT_READ,
                                           "The operation did not complete (read)") from None
            except TimeoutError:
                raise TimeoutError("The read operation timed out") from None
            with self._lock:
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
            if not data:
                return
            if self._left:
                self._left -= len(data)
                return
            self._header += data
            if len(self._header) < _HEADER:
                return
            self._left = int.from_bytes(self._header[3:5], "big")
            self._header.clear()
            if not self._left:
                return
            first = False  # the header is in: its body too, if it is there already

    def _run(self, op: Callable[[], T], reading: bool = False) -> T:
        """Retry `op` (an SSLObject call) while OpenSSL needs the network, as SSL_read does on a socket.
        `reading`: a read, whose flushes never wait for a writer (`_flush`)."""
        wait = not reading
        while True:
            try:
                with self._lock:
                    result = op()
            except ssl.SSLWantReadError:
                if not self._flush(wait):
                    raise ssl.SSLWantWriteError(ssl.SSL_ERROR_WANT_WRITE,
                                                "The operation did not complete (write)") from None
                self._fill()
                continue
            except ssl.SSLWantWriteError:  # not with memory BIOs, but harmless to honour
                if not self._flush(wait):
                    raise
                continue
            except ssl.SSLError:
                self._flush_quietly()  # the alert, so the peer learns why
                raise
            self._flush(wait)
            return result

    def _flush_quietly(self) -> None:
        try:
            self._flush()
        except OSError:
            pass

    # -- the ssl.SSLSocket surface -------------------------------------------------------------

    def do_handshake(self) -> None:
        obj = self._need()
        self._run(obj.do_handshake)

    def connect(self, address: tuple) -> None:
        if self.server_side:
            raise ValueError("can't connect in server-side mode")
        if self._obj is not None:
            raise ValueError("attempt to connect already-connected TlsSocket!")
        self._sock.connect(address)
        self._wrap()
        if self.do_handshake_on_connect:
            self._handshake_or_close()

    def accept(self) -> tuple[TlsSocket, tuple]:
        """For a wrapped listening socket: the accepted connection, server side."""
        child, addr = self._sock.accept()
        try:
            wrapped = TlsSocket(child, self.context, server_side=True,
                                do_handshake_on_connect=self.do_handshake_on_connect,
                                suppress_ragged_eofs=self.suppress_ragged_eofs)
        except BaseException:
            child.close()
            raise
        return wrapped, addr

    def send(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        if self._plain:
            return self._sock.send(data, flags)
        if flags:
            raise ValueError("non-zero flags not allowed in calls to send() on TlsSocket")
        obj = self._need()
        if self._wbuf and not self._flush():  # one backlog at a time, as SSL_write retries
            raise ssl.SSLWantWriteError(ssl.SSL_ERROR_WANT_WRITE, "The operation did not complete (write)")
        mv = memoryview(data).cast("B")[:_SEND_MAX]
        if not mv:
            return 0
        return self._run(lambda: obj.write(mv))

    def sendall(self, data: bytes | bytearray | memoryview, flags: int = 0) -> None:
        if self._plain:
            return self._sock.sendall(data, flags)
        if flags:
            raise ValueError("non-zero flags not allowed in calls to sendall() on TlsSocket")
        mv = memoryview(data).cast("B")
        while mv:
            mv = mv[self.send(mv):]

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self.send(data)

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if self._plain:
            return self._sock.recv(buflen, flags)
        if flags:
            raise ValueError("non-zero flags not allowed in calls to recv() on TlsSocket")
        return self._read(buflen, None)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        if self._plain:
            return self._sock.recv_into(buffer, nbytes, flags)
        if flags:
            raise ValueError("non-zero flags not allowed in calls to recv_into() on TlsSocket")
        if not nbytes:
            nbytes = len(buffer)
        if not nbytes:
            return 0
        return self._read(nbytes, buffer)

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        return self._read(len, buffer)

    def _read(self, n: int, buffer: Any) -> Any:
        obj = self._need()

        def read() -> Any:  # under `_lock`: what `shutdown` took in comes first, and in order
            if self._early:
                return self._early_part(n, buffer)
            return obj.read(n) if buffer is None else obj.read(n, buffer)
        try:
            return self._run(read, reading=True)
        except ssl.SSLZeroReturnError:
            # close_notify after our own (shutdown(SHUT_WR)): OpenSSL reports it as an error
            # once both directions are shut, but it is the peer's clean end of data.
            return b"" if buffer is None else 0
        except ssl.SSLEOFError:
            if self.suppress_ragged_eofs:  # as SSLSocket.read: a TCP FIN without close_notify
                return b"" if buffer is None else 0
            raise

    def _early_part(self, n: int, buffer: Any) -> Any:
        """Up to `n` bytes of `_early`, as `SSLObject.read` returns them (into `buffer`: a count)."""
        part = bytes(self._early[:n])
        del self._early[: len(part)]
        if buffer is None:
            return part
        memoryview(buffer).cast("B")[: len(part)] = part
        return len(part)

    def pending(self) -> int:
        """Decrypted bytes ready now: a selector on fileno() cannot see these."""
        return len(self._early) + (0 if self._obj is None else self._obj.pending())

    def unwrap(self) -> TlsSocket:
        """close_notify both ways; then this object is the plain connection. CPython's SSLSocket
        returns itself here (its SSLObject's owner), no longer TLS: a program may go on with the
        object it had, or with what unwrap returned; both are the same socket."""
        if self._plain:
            raise ValueError(f"No SSL wrapper around {self!r}")
        obj = self._need()
        self._run(obj.unwrap)
        self._obj = None
        self._plain = True
        return self

    def shutdown(self, how: int) -> None:
        """Half-close: with SHUT_WR, close_notify first, so the peer sees a clean TLS EOF."""
        if how in (_us.SHUT_WR, _us.SHUT_RDWR) and self._obj is not None and not self._released:
            try:
                with self._lock:
                    self._take_in(self._obj)
                    self._obj.unwrap()  # writes close_notify; wants the peer's, which we don't wait for
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                pass  # the session is already broken: the TCP shutdown still tells the peer
            self._flush_quietly()
        self._sock.shutdown(how)

    def _take_in(self, obj: ssl.SSLObject) -> None:
        """Before close_notify (with `_lock` held): decrypt into `_early` every record OpenSSL can
        read now, what a recv left of one and whole ones in the incoming BIO (a reader thread puts
        one there before its SSL_read).

        SSLObject.unwrap calls SSL_shutdown twice, and the second one reads, for the peer's
        close_notify; OpenSSL 3 fails the session on application data found then
        (APPLICATION_DATA_AFTER_CLOSE_NOTIFY), and every read after it raises SSLEOFError: the
        reader took it for the peer's end and the close that followed reset the connection,
        with the peer's data unread. A record still coming stays in the socket (or half in the
        BIO, which SSL_shutdown cannot finish): SSL_read reads those after close_notify."""
        while True:
            try:
                data = obj.read(_SEND_MAX)
            except ssl.SSLError:  # SSLWantReadError: nothing whole left; the peer's close_notify; broken
                return
            if not data:
                return
            self._early += data

    def close(self) -> None:
        """As SSLSocket.close: no close_notify (use shutdown or unwrap); open makefile()s keep it alive."""
        if self._closed:
            return
        self._closed = True
        if self._io_refs <= 0:
            self._real_close()

    def _real_close(self) -> None:
        self._released = True
        self._obj = None
        self._sock.close()

    def _decref_socketios(self) -> None:
        self._io_refs -= 1
        if self._closed and self._io_refs <= 0:
            self._real_close()

    def _checkClosed(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "Bad file descriptor")

    # The same buffered SocketIO layering as usnet.socket, over TLS reads and writes.
    makefile = _us.socket.makefile

    def getpeercert(self, binary_form: bool = False) -> Any:
        obj = self._need()
        return obj.getpeercert(binary_form)

    def version(self) -> str | None:
        return None if self._obj is None else self._obj.version()

    def cipher(self) -> tuple[str, str, int] | None:
        return None if self._obj is None else self._obj.cipher()

    def shared_ciphers(self) -> list | None:
        return None if self._obj is None else self._obj.shared_ciphers()

    def compression(self) -> str | None:
        return None if self._obj is None else self._obj.compression()

    def selected_alpn_protocol(self) -> str | None:
        return None if self._obj is None else self._obj.selected_alpn_protocol()

    def get_channel_binding(self, cb_type: str = "tls-unique") -> bytes | None:
        return None if self._obj is None else self._obj.get_channel_binding(cb_type)

    @property
    def _sslobj(self) -> ssl.SSLObject | None:
        """SSLSocket's private name for its SSLObject, which libraries reach for (httpcore's
        "ssl_object" extra): here the memory-BIO SSLObject, which answers the same calls."""
        return self._obj

    @property
    def context(self) -> ssl.SSLContext:
        return self._context

    @context.setter
    def context(self, ctx: ssl.SSLContext) -> None:
        """As SSLSocket's: an SNI callback switches the connection to another context."""
        self._context = ctx
        if self._obj is not None:
            self._obj.context = ctx

    @property
    def session(self) -> ssl.SSLSession | None:
        return self._session if self._obj is None else self._obj.session

    @property
    def session_reused(self) -> bool | None:
        return None if self._obj is None else self._obj.session_reused

    # -- the socket underneath -------------------------------------------------------------------

    def settimeout(self, t: float | None) -> None:
        self._sock.settimeout(t)

    def gettimeout(self) -> float | None:
        return self._sock.gettimeout()

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def getblocking(self) -> bool:
        return self._sock.getblocking()

    def fileno(self) -> int:
        return self._sock.fileno()

    def getpeername(self) -> tuple:
        return self._sock.getpeername()

    def getsockname(self) -> tuple:
        return self._sock.getsockname()

    def setsockopt(self, level: int, opt: int, value: Any) -> None:
        self._sock.setsockopt(level, opt, value)

    def getsockopt(self, level: int, opt: int, buflen: int = 0) -> int:
        return self._sock.getsockopt(level, opt, buflen)

    def bind(self, address: tuple) -> None:
        self._sock.bind(address)

    def listen(self, backlog: int = 128) -> None:
        self._sock.listen(backlog)

    @property
    def family(self) -> int:
        return self._sock.family

    @property
    def type(self) -> int:
        return self._sock.type

    def __enter__(self) -> TlsSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "plain" if self._plain else (self.version() or "not connected")
        return f"<usnet.tls.TlsSocket {state} {self._sock!r}>"


def wrap_socket(context: ssl.SSLContext, sock: _us.socket, server_side: bool = False,
                server_hostname: str | None = None, do_handshake_on_connect: bool = True,
                suppress_ragged_eofs: bool = True, session: ssl.SSLSession | None = None) -> TlsSocket:
    """As `context.wrap_socket(sock, ...)`, for a usnet socket (connected, listening or not yet either)."""
    return TlsSocket(sock, context, server_side=server_side, server_hostname=server_hostname,
                     do_handshake_on_connect=do_handshake_on_connect,
                     suppress_ragged_eofs=suppress_ragged_eofs, session=session)
