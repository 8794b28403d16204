"""Bound sockets outlive a usnetd restart: bound again, on the same port, once it is back.

A kernel socket survives its network going away and coming back: a server's accept
or recvfrom waits, and takes connections and datagrams again when the link returns. A
usnet socket's flow lives in usnetd, so when usnetd dies (or `usnet down`/`up` restarts
it) the flow goes with it. A connection is lost (its TCP state went with the domain, and
its calls fail at once, usnet.client.engine.Runner), but a listening TCP socket or a UDP
socket need not be. Such a socket of the default domain (the one `usnet run` and
`USNET_SOCKET` name) is orphaned instead of failed: its accept or recvfrom blocks and its
descriptor is not readable, as a kernel socket's on a link that is down (a UDP send says
ENETDOWN), and this module's thread reconnects to the same socket path and asks the socket
to bind again (`_rebind`): the same port, address and options, and a listener's backlog.
A port taken meanwhile, or an address the new usnetd does not have, fails the socket with
that error, as a bind would.

The same holds one level down, for a worker of `usnetd --workers N` that died while usnetd
lives on (usnet.domain.workers restarts it within milliseconds): the sockets whose flows it
served are orphaned the same way, of any client (the client's session survived), and bound
again through the same session once usnetd has the new worker. A worker left down (its restart
limit) makes usnetd refuse the open with ENETDOWN: from a usnetd that answers, that is final
(`Refused`), and the socket fails with its reason.

One thread for the process, only while some socket waits; it asks again every `_BACKOFF`
seconds at most, so a usnetd that stays down costs four connect attempts a second.
"""

from __future__ import annotations

import errno
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from usnet.client.sigdefer import block_in_this_thread

__all__ = ["Refused", "orphaned", "reopen", "waiting"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_FIRST = 0.05  # seconds before the first attempt: usnetd restarting at once is back soon
_BACKOFF = 0.25  # the longest wait between attempts

_lock = threading.Lock()
_wake = threading.Event()
# id of a socket's share group (its dups: socket._share) -> (one of them, the orphaning's number): a
# socket orphaned again while the thread binds it (its new worker died at once) stays pending
_pending: dict[int, tuple[Any, int]] = {}
_orphanings = itertools.count()
_thread: threading.Thread | None = None


class Refused(OSError):
    """A usnetd that serves answered the open and said no, or the socket's own client is gone for
    good: the socket fails with this (`_rebind_failed`), whatever the errno. An ENETDOWN from an
    answering usnetd names a worker left down, not a usnetd still away."""


def reopen(client: Any, explicit: bool, open_: Callable[[], _T]) -> _T:
    """`open_()` (a socket's new flow on `client`), its failure sorted for `_run`: a usnetd that
    answered with ENETDOWN refused for good (`Refused`); a `client` that hung up is waited for
    again if it is the default domain's (the next attempt connects anew), and final if the
    program made it (`explicit`: the program's to manage, as its other sockets)."""
    try:
        return open_()
    except OSError as e:
        if client.gone:
            if explicit:
                raise Refused(e.errno or errno.ECONNABORTED, e.strerror or str(e)) from e
            raise
        if e.errno == errno.ENETDOWN and not isinstance(e, ConnectionError):
            raise Refused(e.errno, e.strerror or str(e)) from e
        raise


def orphaned(sock: Any) -> None:
    """`sock` (a listener, a UDP socket) lost its flow with its usnetd (or its usnetd worker): bind
    again once one serves its path (once usnetd has a new worker).
    Called under its engine's lock (from its `_signal`): only notes it and wakes the thread."""
    global _thread
    with _lock:
        _pending[id(sock._share)] = (sock, next(_orphanings))
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="usnet-rebind", daemon=True)
            _thread.start()
    _wake.set()


def waiting() -> int:
    """How many sockets wait for usnetd to come back."""
    with _lock:
        return len(_pending)


def _run() -> None:
    global _thread
    block_in_this_thread()  # a signal for the process waits for the main thread (usnet.client.sigdefer)
    delay = _FIRST
    while True:
        _wake.wait(delay)
        _wake.clear()
        with _lock:
            socks = list(_pending.items())
        down = False
        for key, entry in socks:
            sock = entry[0]
            try:
                sock._rebind()
            except OSError as e:
                # not back yet (ENETDOWN), or the dying one took our connect before it went, or a
                # worker died again under the open (EAGAIN, usnet.domain.workers): later
                if not isinstance(e, Refused) and (e.errno in (errno.ENETDOWN, errno.EAGAIN)
                                                   or isinstance(e, ConnectionError)):
                    down = True
                    continue
                sock._rebind_failed(e)
            except Exception as e:  # a fault of one socket must not keep the others waiting
                log.warning("binding again failed: %r", e, exc_info=True)
                sock._rebind_failed(OSError(errno.EIO, f"binding again after usnetd came back failed: {e!r}"))
            with _lock:
                if _pending.get(key) is entry:
                    del _pending[key]
        delay = min(2 * delay, _BACKOFF) if down else _FIRST
        with _lock:
            if not _pending:
                _thread = None
                return
