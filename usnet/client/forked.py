"""Sockets a child of fork() inherits: served by the parent's stack (TCP through a kernel socketpair).

Linux shares an inherited socket between parent and child. A usnet connection lives in one
process, its stack's (docs/architecture.md, "The client"): its TCP state, its channel, its
timers. So the parent keeps serving it, and the child reaches it through the parent:

* At a fork (usnet.client.inherit) the parent takes a reference (`socket.reference`: a `dup`
  without a descriptor of its own) of every open TCP socket, connected or listening: the
  child's reference, which keeps the connection open after the parent closes its own copy,
  exactly as the kernel's reference count does (a forking server closes its copy of the
  accepted socket at once). A SEQPACKET pair (`link`) joins the two
  processes; an `Agent` thread of the parent serves the child's requests on it.
* In the child nothing happens until it uses an inherited socket (`claim`): the agent makes a
  kernel AF_UNIX stream pair, splices one end to the connection with two threads (`splice`:
  one per direction), and passes the other end to the child, which serves every call of the
  socket from it (`SplicedSocket`: a kernel socket that names itself as the TCP connection).
  Blocking, timeouts, readiness for select/poll/asyncio, makefile, shutdown and close are
  the kernel's own (a shutdown that stops sending first tells the agent, so that the splice
  does not take it for a close: `Held`). A listener's `accept()` asks the agent
  to accept on the parent's listener (`accept`) and gets such a spliced connection; its
  `fileno()` is a descriptor of the parent's listener's readiness (usnet.client.engine
  `Readiness`, which the parent's stack keeps), so a child can poll it too: children that
  race for one connection get EAGAIN but one, as on Linux.
* What the child never used, or closed unused (`release`), the agent closes when the child says
  so or exits (its end of the link closes): then the parent's own close decides, as with the
  kernel.

The cost is one copy through the kernel each way and a thread hop in the parent: the path of
a forking server's children, not of the stack's own sockets.

A UDP socket is not spliced: a forking UDP server's parent goes on receiving on it while a child
answers, and a splice would take the parent's datagrams. Each of the child's sends and receives
is a request (`sendto`, `recvfrom`) that the agent carries out on the parent's socket, so the
child competes for datagrams only while it receives, as on Linux; its `fileno()` is the
parent's readiness of the socket, as a listener's. Left out: a connection outliving the parent
(the parent's exit closes it: the stack is the parent's).

A socket multiprocessing hands to another process (a spawned worker's argument, a queue) gets
the same service on a link of its own, made when the socket is pickled (usnet.client.inherit,
`_reduce`); a socket the parent only bound can be made to listen from there ("listen": uvicorn
binds, then its spawned workers listen and accept).

The messages on the link and on each request's reply pair are msgspec Structs (docs/abi.md,
"Inherited sockets").
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import select
import socket as _std
import stat
import termios
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["Agent", "Answer", "Request", "SplicedSocket", "ask", "splice"]

_KernelSocket = _std.socket  # the standard class, taken before anyone patches it (usnet.client.patch)
_MAX_MSG = 65536 + 4096  # a request or answer: a datagram of up to 64 KiB and its addresses
CHUNK = 65536
SHARE_LIMIT = 1024  # a process with more open sockets than this gives a child none (a fork stays cheap)
SETTLE = 5.0  # s: at most this long a splice waits for the agent to read what the child sent before a hang-up
WAITING = 64  # requests of one child that may wait at once (accept, recvfrom): a thread each
_OPS = frozenset({"claim", "accept", "listen", "release", "shutdown", "sendto", "recvfrom"})
_INT_MAX = 2**31 - 1


class Request(msgspec.Struct, tag=True):
    """Child -> agent, with one descriptor: the child's end of a reply pair for the answer.
    `op`: "claim" (the connection, spliced), "accept" (a connection accepted on a listener, within
    `timeout` s; None: wait), "listen" (a socket bound in the parent listens, backlog `size`),
    "release" (the child is done with an unclaimed socket: no answer), "shutdown" (the child's
    shutdown(SHUT_WR or SHUT_RDWR) of a spliced connection, sent before it: the descriptor is
    the child's end of the splice, which names the splice (its inode); no answer);
    for a UDP socket, "sendto" (`data` to `addr`, or to its peer when `addr` is empty) and
    "recvfrom" (one datagram of at most `size` bytes, within `timeout`)."""

    op: str
    token: int
    timeout: float | None = None
    data: bytes = b""
    addr: list[Any] = []
    size: int = 0


class Answer(msgspec.Struct):
    """Agent -> child, with the spliced end as a descriptor when `kind` is "conn". `kind`:
    "conn", "listener" (a claim of a listening socket: no descriptor), or "error" (`errno`,
    `message`). Addresses as Python's socket functions give them."""

    kind: str
    family: int = 0
    sockname: list[Any] = []
    peername: list[Any] = []
    errno: int = 0
    message: str = ""
    data: bytes = b""  # a datagram received ("recvfrom": `peername` is its sender)
    count: int = 0  # bytes sent ("sendto")


_enc = msgspec.msgpack.Encoder()
_req = msgspec.msgpack.Decoder(Request)
_ans = msgspec.msgpack.Decoder(Answer)


def _send(sock: _std.socket, msg: Any, fd: int | None = None, flags: int = 0) -> None:
    anc = [] if fd is None else [(_std.SOL_SOCKET, _std.SCM_RIGHTS, array.array("i", [fd]))]
    sock.sendmsg([_enc.encode(msg)], anc, flags)


def _reply(sock: _std.socket, msg: Any, fd: int | None = None) -> None:
    """The agent's answer on a reply pair: never waits (MSG_DONTWAIT). The pair is the child's
    choice, so a reply socket whose peer never reads fails the answer instead of holding the
    agent; a fresh pair of ours, the only kind a child of ours sends, always has room."""
    _send(sock, msg, fd, _std.MSG_DONTWAIT)


def _reply_socket(fd: int) -> _std.socket | None:
    """The reply descriptor `fd` a request carried, if it is what `ask` sends (an AF_UNIX
    SOCK_SEQPACKET socket); anything else (no socket, another family or type) is closed."""
    try:
        s = _KernelSocket(fileno=fd)
    except OSError:  # not a socket
        os.close(fd)
        return None
    try:
        ok = (s.getsockopt(_std.SOL_SOCKET, _std.SO_DOMAIN) == _std.AF_UNIX
              and s.getsockopt(_std.SOL_SOCKET, _std.SO_TYPE) == _std.SOCK_SEQPACKET)
    except OSError:
        ok = False
    if not ok:
        s.close()
        return None
    return s


def _invalid(req: Request) -> str:
    """Why request `req`'s fields cannot be served ("" if they can): every field a child writes
    is checked here, once, before any socket call sees it (a call would raise other than OSError,
    or take a size or timeout no kernel call would)."""
    if req.op not in _OPS:
        return "unknown request"
    t = req.timeout
    if t is not None and not (0.0 <= t < 1e9):  # NaN fails too
        return "timeout out of range"
    if not 0 <= req.size <= _INT_MAX and req.op in ("recvfrom", "listen"):
        return "size out of range"
    if req.op == "sendto" and req.addr and not (
            len(req.addr) in (2, 4) and isinstance(req.addr[0], str)
            and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 0xFFFFFFFF
                    for x in req.addr[1:])):
        return "address of the wrong shape"
    return ""


def _queued(sock: _std.socket) -> int:
    """The bytes waiting on `sock` to be read (0 once it is closed)."""
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    except (OSError, ValueError):
        return 0
    return buf[0]


def _recv(sock: _std.socket) -> tuple[bytes, int | None]:
    """One message and the descriptor it carried (others, which no sender of ours adds, are closed)."""
    # close-on-exec, as Python makes its own descriptors: a child that execs must not keep a splice open
    data, anc, _flags, _addr = sock.recvmsg(_MAX_MSG, _std.CMSG_SPACE(4 * 4), _std.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, raw in anc:
        if level == _std.SOL_SOCKET and kind == _std.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(raw[: len(raw) - len(raw) % a.itemsize])
            fds.extend(a)
    for extra in fds[1:]:
        os.close(extra)
    return data, (fds[0] if fds else None)


# -- the parent's side -----------------------------------------------------------------------

class Held:
    """The child's shutdown of a splice's sending (its "shutdown" request, `Agent._shut`): its
    end, kept open by the parent until the splice's `up` has read the EOF, and whether it came.

    The splice's `up` reads EOF from the child's end both when the child shuts its sending
    down and when it closes its end; a shutdown sends the connection's FIN (Linux's shutdown
    acts on the socket whoever else holds it), a close only lets the child's reference go.
    Two things tell them apart. The hang-up: a shutdown(SHUT_WR) alone leaves the end open (EOF
    without it), but a SHUT_RDWR hangs it up as a close does, and so does a close right after
    a SHUT_WR before `up` has read the EOF. So the child tells the agent before it shuts down,
    and `up`, seeing a hang-up, first lets the agent read what the child sent before it
    (`Agent.settle`), then asks `asked`. And the end kept: a child that closes with data unread
    on its end would reset the parent's (AF_UNIX's ECONNRESET) before `up` read the EOF; held
    (in flight on the link, then here) until `release`, it closes nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ends: list[_std.socket] = []
        self._done = False
        self.asked = False

    def keep(self, end: _std.socket) -> None:
        """The child shuts down: hold its end `end` until `release` (closed at once if that came
        already). One is held: every end named for a splice is the same file (`Agent._shut` matches
        it by inode), so a repeated "shutdown" (a hostile child's flood) holds no more descriptors."""
        with self._lock:
            self.asked = True
            if not self._done and not self._ends:
                self._ends.append(end)
                return
        end.close()

    def release(self) -> None:
        """`up` has read the EOF: what the child's close does from now on is its own."""
        with self._lock:
            self._done, ends, self._ends = True, self._ends, []
        for end in ends:
            end.close()


def splice(us: Any, k: _std.socket, settle: Callable[[], None] = lambda: None) -> Held:
    """Move bytes between usnet socket `us` and kernel stream socket `k` until both directions
    end, then close both: `us` is the child's reference, so its close is the child's.

    Each direction is a thread: blocking both ways in one would deadlock a child that sends a
    large request while the peer sends a large answer. The connection's EOF reaches the child
    as shutdown(SHUT_WR) of `k`; the child's shutdown(SHUT_WR or SHUT_RDWR) reaches the peer as
    a FIN after the bytes before it (the `Held` returned, told by the agent, which `settle`
    waits for); its close (k hangs up) ends the receiving direction even while the peer is
    silent and lets go of the reference; its shutdown(SHUT_RD) stops the bytes to it (k's
    EPIPE) and nothing else, as on Linux; a connection that failed shuts `k` so that the
    child's reads end."""
    done = threading.Semaphore(0)
    shut = Held()

    def down() -> None:  # the connection to the child
        p = select.poll()
        p.register(us.fileno(), select.POLLIN)
        p.register(k.fileno(), 0)  # POLLHUP only: the child closed its end
        passed = bytearray(CHUNK)  # what went to the child, taken off the connection's queue
        try:
            while True:
                hup = any(fd == k.fileno() for fd, _ in p.poll())
                if hup:
                    return
                try:  # peeked: what the child cannot take stays queued (below)
                    data = us.recv(CHUNK, _std.MSG_DONTWAIT | _std.MSG_PEEK)
                except BlockingIOError:
                    continue
                if not data:
                    k.shutdown(_std.SHUT_WR)
                    return
                view = memoryview(data)
                while view:
                    try:
                        n = k.send(view)
                    except BrokenPipeError:
                        # the child shut its reading down (SHUT_RD) or closed: its sending goes
                        # on, and the rest stays unread in the connection, as in Linux's socket
                        # (an RST at the last close)
                        return
                    us.recv_into(passed, n, _std.MSG_DONTWAIT)
                    view = view[n:]
        except OSError:
            try:
                k.shutdown(_std.SHUT_RDWR)  # the child's reads end; its writes fail
            except OSError:
                pass
        finally:
            done.release()

    def up() -> None:  # the child to the connection
        try:
            while data := k.recv(CHUNK):
                us.sendall(data)
            # EOF: the child's shutdown(SHUT_WR or SHUT_RDWR) sends the FIN, as the kernel's
            # does for any holder; its close only lets go of its reference (`us`, closed
            # below): the FIN goes with the last reference, and a parent that still holds the
            # socket keeps it open. EOF without a hang-up is a shutdown; with one, the agent
            # has heard of a shutdown before it (`Held`).
            hup = select.poll()
            hup.register(k.fileno(), 0)
            hung = bool(hup.poll(0))
            if hung:
                settle()
            if not hung or shut.asked:
                us.shutdown(_std.SHUT_WR)
        except OSError:
            try:
                k.shutdown(_std.SHUT_RDWR)
            except OSError:
                pass
        finally:
            shut.release()
            done.release()

    def both() -> None:
        threading.Thread(target=up, name="usnet-splice-up", daemon=True).start()
        down()
        done.acquire()
        done.acquire()
        for s in (us, k):
            try:
                s.close()
            except OSError:
                pass

    threading.Thread(target=both, name="usnet-splice", daemon=True).start()
    return shut


def _names(s: Any) -> Answer:
    if s.type == _std.SOCK_DGRAM:
        try:
            peer = list(s.getpeername())
        except OSError:
            peer = []  # not connected
        return Answer("datagram", int(s.family), list(s.getsockname()), peer)
    peer = list(s.getpeername()) if not getattr(s, "_listening", False) else []
    return Answer("listener" if not peer else "conn", int(s.family), list(s.getsockname()), peer)


class Agent:
    """The parent's server for one child: its references (`shares`, token -> a dup of the socket)
    and its requests on `link`, until the child's end closes."""

    def __init__(self, link: _std.socket, shares: dict[int, Any]) -> None:
        self.link = link
        self.shares = shares
        self._lock = threading.Lock()
        # held while a message of the link is read and handled; notified after each (`settle`)
        self._turn = threading.Condition(threading.Lock())
        self._gone = False
        # the splices this agent made, by the inode of the child's end (its "shutdown" names it)
        self._splices: weakref.WeakValueDictionary[int, Held] = weakref.WeakValueDictionary()
        self._waiting = 0  # requests in threads of their own (at most WAITING)
        # closed when the agent ends: its POLLHUP ends the waits of its requests (`_wait`)
        self._ended_r, self._ended_w = os.pipe2(os.O_CLOEXEC)
        weakref.finalize(self, os.close, self._ended_r)  # once no request of it waits any more
        threading.Thread(target=self._serve, name="usnet-fork-agent", daemon=True).start()

    def _serve(self) -> None:
        ready = select.poll()
        ready.register(self.link.fileno(), select.POLLIN)
        try:
            while True:
                ready.poll()  # then read and handle under `_turn`: `settle` sees a message queued or done
                with self._turn:
                    try:
                        data, fd = _recv(self.link)
                    except OSError:
                        return
                    if not data:  # the child exited, or closed its link (or sent an empty message:
                        if fd is not None:  # SEQPACKET cannot tell them apart)
                            os.close(fd)
                        return
                    self._handle(data, fd)
                    self._turn.notify_all()
        finally:
            os.close(self._ended_w)  # the waits end (`_wait`)
            with self._turn:
                self._gone = True
                self._turn.notify_all()
                self.link.close()
            with self._lock:
                left, self.shares = list(self.shares.values()), {}
            for s in left:  # what the child never claimed: its references end with it
                s.close()

    def _handle(self, data: bytes, fd: int | None) -> None:
        """One message of the link, `data`, with descriptor `fd`, its fields checked before any
        socket call (`_invalid`); those that wait, in threads (at most WAITING at once)."""
        try:
            req = _req.decode(data)
        except msgspec.DecodeError:
            if fd is not None:
                os.close(fd)
            return
        if req.op == "shutdown":  # no answer: the child's end of a splice, any socket, matched by inode
            if fd is not None:
                self._shut(fd)
            return
        if req.op == "release":  # no answer
            if fd is not None:
                os.close(fd)
            s = self._take(req.token)
            if s is not None:
                s.close()
            return
        reply = None if fd is None else _reply_socket(fd)
        if reply is None:
            return  # nowhere to answer (none, or not a pair of `ask`'s): dropped
        if why := _invalid(req):
            self._refuse(reply, errno.EINVAL, why)
            return
        work = {"claim": self._claim, "accept": self._accept, "sendto": self._datagram,
                "recvfrom": self._datagram, "listen": self._listen}[req.op]
        if req.op in ("claim", "listen"):  # at once
            self._answer(req, reply, work)
            return
        with self._lock:  # may wait: the link is served meanwhile, in a thread per request
            busy = self._waiting >= WAITING
            self._waiting += not busy
        if busy:
            self._refuse(reply, errno.ENOBUFS, "too many waiting requests from this process")
        else:
            threading.Thread(target=self._answer, args=(req, reply, work, True), daemon=True).start()

    def _shut(self, fd: int) -> None:
        """The child shuts the sending of its end `fd` of a splice down: held until the splice has
        read the EOF, then its FIN goes (`Held`); none of ours (or no socket): closed at once."""
        try:
            st = os.fstat(fd)
            held = self._splices.get(st.st_ino) if stat.S_ISSOCK(st.st_mode) else None
        except OSError:
            held = None
        if held is None:
            os.close(fd)
        else:
            held.keep(_KernelSocket(fileno=fd))

    def settle(self) -> None:
        """Wait until the agent has handled every message the child sent before now (at most
        SETTLE s): a splice that sees the child hang up learns so of a shutdown before it."""
        deadline = time.monotonic() + SETTLE
        with self._turn:
            while not self._gone and _queued(self.link):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._turn.wait(left)

    @staticmethod
    def _refuse(reply: _std.socket, err: int, why: str) -> None:
        """Answer error `err` (the child raises it) and close the reply pair."""
        try:
            _reply(reply, Answer("error", errno=err, message=f"usnet: {why}"))
        except OSError:
            pass
        finally:
            reply.close()

    def _wait(self, s: Any, deadline: float | None) -> bool:
        """Wait until usnet socket `s` is readable (True), `deadline` (monotonic; None: none)
        passes or the agent ends (False): a request's wait never outlives its child."""
        p = select.poll()
        p.register(s.fileno(), select.POLLIN)
        p.register(self._ended_r, 0)
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            got = p.poll(None if left is None else max(int(left * 1000), 1))
            if any(fd == self._ended_r for fd, _ in got):
                return False
            if got:
                return True

    def _take(self, token: int) -> Any:
        with self._lock:
            return self.shares.pop(token, None)

    def _answer(self, req: Request, reply: _std.socket, work: Any, waited: bool = False) -> None:
        """Serve request `req` with `work(req, share, reply)`, which sends the answer; an error is
        the child's to raise (sent as one); the reply pair closes either way. `waited`: one of
        the requests counted in `_waiting`.

        A fault barrier: what a socket call raises for the child's request (an OSError, or a
        TypeError/ValueError for arguments `_invalid` let through) is the child's error."""
        try:
            with self._lock:
                s = self.shares.get(req.token)
            if s is None:
                _reply(reply, Answer("error", errno=errno.EBADF, message="usnet: no such inherited socket"))
                return
            work(req, s, reply)
        except (OSError, TypeError, ValueError, OverflowError) as e:
            code = e.errno if isinstance(e, OSError) and e.errno else errno.EINVAL
            try:
                _reply(reply, Answer("error", errno=code, message=str(e) or os.strerror(code)))
            except OSError:
                pass
        finally:
            reply.close()
            if waited:
                with self._lock:
                    self._waiting -= 1

    def _claim(self, req: Request, s: Any, reply: _std.socket) -> None:
        ans = _names(s)
        if ans.kind in ("listener", "datagram"):  # it stays: each request uses it; the child
            _reply(reply, ans, s.fileno())  # polls its readiness (a connection, a datagram waiting)
            return
        self._take(req.token)
        self._give(s, ans, reply)

    def _listen(self, req: Request, s: Any, reply: _std.socket) -> None:
        """A socket bound in the parent listens (backlog `size`): the child accepts on it."""
        s.listen(req.size)
        _reply(reply, _names(s), s.fileno())

    def _give(self, s: Any, ans: Answer, reply: _std.socket) -> None:
        """Splice connection `s` to a new stream pair and hand the child its end."""
        mine, theirs = _std.socketpair(_std.AF_UNIX, _std.SOCK_STREAM)
        try:
            ino = os.fstat(theirs.fileno()).st_ino
            _reply(reply, ans, theirs.fileno())
        except OSError:
            mine.close()
            s.close()
            raise
        finally:
            theirs.close()
        self._splices[ino] = splice(s, mine, self.settle)

    def _datagram(self, req: Request, s: Any, reply: _std.socket) -> None:
        """A UDP socket's send or receive for the child, on its reference (a timeout of its own)."""
        if req.op == "sendto":
            n = s.sendto(req.data, tuple(req.addr)) if req.addr else s.send(req.data)
            _reply(reply, Answer("sent", count=n))
            return
        mine = s.reference()
        deadline = None if req.timeout is None else time.monotonic() + req.timeout
        try:
            mine.settimeout(0.0)
            while True:  # till a datagram, the deadline or the child's end (`_wait`); at once: EAGAIN
                if req.timeout != 0.0 and not self._wait(mine, deadline):
                    raise TimeoutError("timed out")
                try:
                    data, addr = mine.recvfrom(min(req.size, 65535))
                    break
                except BlockingIOError:
                    if req.timeout == 0.0:
                        raise
                    continue  # another holder took it
        finally:
            mine.close()
        _reply(reply, Answer("datagram", peername=list(addr), data=data))

    def _accept(self, req: Request, ls: Any, reply: _std.socket) -> None:
        """A connection accepted on the parent's listener for the child, spliced.

        A child that polls (a Python timeout) sleeps in poll(2) on the kernel; closed meanwhile
        by another of its threads, poll wakes when a connection comes and CPython's accept is
        on descriptor -1: EBADF, the connection left queued for the listener's other holders.
        So such a request waits for the listener's readiness and takes a connection only while
        the child still holds the socket (`_held`). A blocking accept(2) holds the file and
        takes the connection whatever its descriptor became: accepted as it comes. Either waits
        no longer than the child lives (`_wait`)."""
        mine = ls.reference()  # a timeout of its own
        try:
            mine.settimeout(0.0)
            if req.timeout == 0.0:
                conn, _addr = mine.accept()
            else:
                conn = self._accept_held(req, mine)
        finally:
            mine.close()
        self._give(conn, _names(conn), reply)

    def _accept_held(self, req: Request, mine: Any) -> Any:
        """A connection from non-blocking listener reference `mine` within `req.timeout` (None:
        no deadline), while the child holds socket `req.token` (EBADF once it let go and a
        connection came; a blocking accept takes it whatever its descriptor became)."""
        deadline = None if req.timeout is None else time.monotonic() + req.timeout
        while self._wait(mine, deadline):
            if req.timeout is not None and not self._held(req.token):
                raise OSError(errno.EBADF, "Bad file descriptor")
            try:
                conn, _addr = mine.accept()
                return conn
            except BlockingIOError:
                continue  # another holder took it
        raise TimeoutError("timed out")

    def _held(self, token: int) -> bool:
        with self._lock:
            return token in self.shares


# -- the child's side ------------------------------------------------------------------------

def ask(link: _std.socket, op: str, token: int, timeout: float | None = None,
        **more: Any) -> tuple[Answer, int | None]:
    """Send a request to the parent's agent and wait for its answer (not for "release"). A
    request has a reply pair of its own, so threads of the child never read each other's answers.
    `more`: a datagram request's `data`, `addr` and `size`."""
    if op == "release":
        _send(link, Request(op, token))
        return Answer("released"), None
    mine, theirs = _std.socketpair(_std.AF_UNIX, _std.SOCK_SEQPACKET)
    try:
        _send(link, Request(op, token, timeout, **more), theirs.fileno())
        theirs.close()
        data, fd = _recv(mine)  # the agent answers within `timeout` (accept, recvfrom), or at once
    finally:
        mine.close()
    if not data:
        raise OSError(errno.EBADF, "usnet: the parent process that serves this inherited socket "
                                   "went away (its stack held the connection)")
    ans = _ans.decode(data)
    if ans.kind == "error":
        if fd is not None:
            os.close(fd)
        if ans.errno == errno.ETIMEDOUT or ans.message == "timed out":
            raise TimeoutError("timed out")
        raise OSError(ans.errno, ans.message)
    return ans, fd


class SplicedSocket(_KernelSocket):
    """A TCP connection of the parent's stack, in a child: a kernel stream socket (the child's
    end of a splice) that names itself as the connection does. Data, blocking, timeouts and
    readiness are the kernel socket's; TCP and IP options are kept and read back (the
    connection's own are the parent's stack's to apply). `link`: the parent agent's, which
    hears of a shutdown(SHUT_WR) (`shutdown`)."""

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None,
                 names: Answer | None = None, link: _std.socket | None = None) -> None:
        super().__init__(_std.AF_UNIX, _std.SOCK_STREAM, 0, fileno)
        self._names = names or Answer("conn")
        self._link = link
        self._opts: dict[tuple[int, int], Any] = {}

    def shutdown(self, how: int) -> None:
        """As the kernel's; SHUT_WR and SHUT_RDWR first tell the parent's agent ("shutdown"),
        so that the splice does not take the hang-up of a SHUT_RDWR, or of a close right after,
        for a close (forked.Held): the FIN goes."""
        if how in (_std.SHUT_WR, _std.SHUT_RDWR) and self._link is not None and self.fileno() >= 0:
            try:
                _send(self._link, Request("shutdown", 0), self.fileno())
            except OSError:
                pass  # the parent is gone: so is the connection
        super().shutdown(how)

    @property
    def family(self) -> _std.AddressFamily:
        return _std.AddressFamily(self._names.family or _std.AF_INET)

    @property
    def proto(self) -> int:
        return _std.IPPROTO_TCP

    def getsockname(self) -> Any:
        return tuple(self._names.sockname)

    def getpeername(self) -> Any:
        if self.fileno() < 0:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return tuple(self._names.peername)

    def setsockopt(self, level: int, opt: int, value: Any, optlen: int | None = None) -> None:
        if level == _std.SOL_SOCKET:
            try:
                super().setsockopt(level, opt, value)
                return
            except OSError:
                pass
        self._opts[(level, opt)] = value

    def getsockopt(self, level: int, opt: int, buflen: int = 0) -> Any:
        if (level, opt) in self._opts:
            return self._opts[(level, opt)]
        if level == _std.SOL_SOCKET:
            if opt == _std.SO_TYPE:
                return _std.SOCK_STREAM
            if opt == _std.SO_PROTOCOL:
                return _std.IPPROTO_TCP
            if opt == _std.SO_DOMAIN:
                return int(self.family)
            return super().getsockopt(level, opt, buflen) if buflen else super().getsockopt(level, opt)
        return b"\0" * buflen if buflen else 0

    def dup(self) -> SplicedSocket:
        s = SplicedSocket(fileno=os.dup(self.fileno()), names=self._names, link=self._link)
        s.settimeout(self.gettimeout())
        return s

    def __repr__(self) -> str:
        peer = tuple(self._names.peername)
        return f"<usnet SplicedSocket fd={self.fileno()} laddr={self.getsockname()} raddr={peer}>"
