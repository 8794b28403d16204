"""An engine's lock that holds a signal handler's exception off while the engine's state changes.

Why (docs/design-notes.md, "A program that drops root, and signals at the wrong place"): Python runs a
signal handler in the main thread, between two bytecodes, and whatever it raises (an alarm's
exception, KeyboardInterrupt) comes out of the code that was running there. On the kernel that
code is a system call, which either completed or was interrupted whole (EINTR: PEP 475 retries
or the exception propagates), and the socket is intact either way. In usnet it can be a TCP
engine half way through a step, on the main thread: a `kick` sending what a call queued, close
sending its FIN, an asyncio loop pumping its engines, any call moving a connection's buffers.
The handler's exception then leaves the state half updated, or a fault barrier takes it for a
fault of the engine's (the connection is reset, or the engine and every connection on it fail).

Every change of an engine's state is made with its lock held, so the lock is the critical
section: `EngineLock`, an RLock whose outermost acquire by the main thread blocks the
asynchronous signals (`pthread_sigmask`) and whose last release unblocks them. A signal that
comes meanwhile stays pending in the kernel; at the release it is delivered, and its handler runs
at the next bytecode, after the step, as after a completed system call. A handler already due
when the lock is taken runs before the step (`_block`'s call), and its exception leaves the lock
free. While the holder waits (`Condition.wait`, a pumping call's sleep) the signals are
unblocked, so a wait stays interruptible as `threading.Condition`'s is.

A signal directed at the process goes to a thread that does not block it. usnet's own threads
block them for good (`block_in_this_thread`), and so do the threads numpy's BLAS starts as usnet
imports it (usnet.runtime.nativethreads), so while the main thread holds an engine the signal
waits for it. A thread of the program's own (or of a C library's) that does not block them can
still take it, and CPython then runs the handler in the main thread at its next bytecode, inside
the step. So the patch (`defer_handlers`, from usnet.patch() and `usnet run`) has CPython hold,
for each Python handler, a `_Deferring` one in its place: run inside a hold, it only notes the
signal, and the last release runs the program's handler, after the step, as if the signal had
waited in the kernel (`_run_deferred`). `signal.signal` and `signal.getsignal` are replaced so
that the program sees its own handlers. (Python's handlers run in the main thread whichever
thread took the signal, so deferring them changes nothing else: the C handler still runs at
once in the taking thread, and writes the wakeup fd, asyncio's add_signal_handler, at once.)

Under the patch the holds therefore block nothing (`_MainState.masks`): the deferral holds a Python
handler off whichever thread takes its signal, this one included, and the two system calls of an
outermost hold go. What still differs from a blocked hold is only what has no Python handler: a
signal whose default action ends or stops the process does so inside the step rather than at its
end (the process is gone or frozen either way), and a handler set behind the patch's back
(through `_signal` itself, not `signal.signal`) is not deferred.

Only the main thread pays, and it pays on its hot path (an asyncio server takes a few holds per
request): an outermost hold costs two `pthread_sigmask` calls through ctypes, the GIL kept
(~0.85 µs the pair, most of it the two system calls), and ~0.6 µs of Python; a nested hold is a
count (~0.4 µs a section). So the code keeps holds few rather than clever: a section that only
reads the engine's state takes the plain RLock (`EngineLock.plain`, no system call), and
several sections of one step share one `step` hold. Another thread's acquire costs an ident
comparison above RLock's. (Measured figures: docs/design-notes.md, "What a signal hold costs on
the hot path, and making it cheap".)
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from usnet.runtime.nativethreads import ASYNC_SIGNALS

__all__ = ["EngineLock", "block_in_this_thread", "defer_handlers", "step", "undefer_handlers"]

_SIGSET = ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong)))  # glibc's sigset_t: 1024 bits
# PyDLL: the GIL is kept across the call (a release and retake would let another thread in)
_libc = ctypes.PyDLL(None, use_errno=True)
# (no argtypes: converting by them costs more than the call; a sigset array goes as its address,
# None as NULL, the `how` as a C int)
_sigmask = _libc.pthread_sigmask
# The asynchronous signals: all but those the kernel sends for a fault of the running code, which
# cannot wait (blocked, a SIGSEGV kills the process at once, with no faulthandler report).
_ASYNC = _SIGSET()
for _s in ASYNC_SIGNALS:
    _libc.sigaddset(ctypes.byref(_ASYNC), int(_s))
_BLOCK, _SETMASK = signal.SIG_BLOCK, signal.SIG_SETMASK
_get_ident = threading.get_ident


class _MainState:
    """The main thread's state: which thread it is, how many holds it has (engine locks and
    `step`s, outermost first), the signal mask it had before the first, and the signals whose
    handler came due meanwhile (another thread took them) for the last release to run.

    (An instance with slots, not class attributes: storing a class attribute invalidates the
    interpreter's attribute caches for the class, a cost on every hold.)"""

    __slots__ = ("ident", "held", "saved", "deferred", "masks", "blocked")

    def __init__(self) -> None:
        self.ident = threading.main_thread().ident
        self.held = 0
        self.saved = _SIGSET()
        self.deferred: list[int] = []  # (a list: the last release's look is a truth test)
        # Whether an outermost hold blocks the signals: not while the program's handlers are
        # deferred (`defer_handlers`), which holds them off by itself (see `_block`).
        self.masks = True
        self.blocked = False  # this hold blocked them (`saved` is the mask to restore at its end)


_main = _MainState()


def _after_fork() -> None:
    # The child's main thread is the one that forked, holding no engine lock (the parent's are
    # replaced: Runner.disown). Its mask is that thread's at the fork: the parent's main thread,
    # holding one, had the signals blocked, which the child must not keep.
    if _main.blocked and _main.ident == _get_ident():
        _sigmask(_SETMASK, _main.saved, None)
    _main.ident = _get_ident()
    _main.held = 0
    _main.blocked = False
    _main.deferred = []  # (a child has no pending signals: the kernel clears them at fork)


os.register_at_fork(after_in_child=_after_fork)


# Why the order of each method below: a handler's exception can come out of any line where the
# main thread is not blocking signals (after any call, and at every line under sys.settrace), so
# the signals are blocked before the lock is taken and unblocked after it is let go, and what the
# two counts say (`_main.held`, `_depth`) is true at every such line. Once they are blocked
# (`_main.held` > 0) nothing can come out of a handler: a nested hold is a count, and the lines
# between need no care. The methods count in line rather than call `_hold`/`_unhold` (only the
# outermost calls `_block`): a Python call is a good part of a nested hold's cost, and the main
# thread of an asyncio program takes a few holds for every request.


def _block(m: _MainState) -> None:
    """The outermost hold blocks the asynchronous signals, after running the handlers already due
    (their exception leaves nothing blocked or held).

    Not while the program's handlers are deferred (`defer_handlers`, under usnet.patch): every
    Python handler is then a `_Deferring`, which a signal taken inside the hold (by this thread,
    or by another as the module docstring says) only notes for the last release to run, so the
    block would hold off nothing more, and its two system calls are a good part of an asyncio
    request's cost (docs/design-notes.md, "The HTTP benchmark's signal holds").

    The call itself is the checkpoint: entering a Python function, the interpreter runs the
    signal handlers already due (CPython checks for them on entry to a function), so they run
    here, before the step (an empty function called first did the same, one call more a hold)."""
    if not m.masks:
        return
    try:
        _sigmask(_BLOCK, _ASYNC, m.saved)
        m.blocked = True
    except BaseException:  # a handler due between the checkpoint and the block: undone, then it propagates
        _sigmask(_SETMASK, m.saved, None)
        m.blocked = False
        raise


def _unblock(m: _MainState) -> None:
    """The last release: the mask as it was before the outermost hold, if that hold blocked."""
    if m.blocked:
        m.blocked = False
        _sigmask(_SETMASK, m.saved, None)


def _hold(n: int = 1) -> None:
    """The main thread takes `n` holds; the first blocks the asynchronous signals (`_block`)."""
    m = _main
    if not m.held:
        _block(m)
    m.held += n  # (blocked from here: no handler runs in this thread until `_unhold`)


def _unhold(n: int = 1) -> None:
    """The main thread lets go of `n` holds; with the last, the signals that came meanwhile are
    delivered, and a handler's exception comes out of here, the step done."""
    m = _main
    m.held -= n
    if m.held <= 0:
        m.held = 0
        if m.blocked:
            _unblock(m)
        if m.deferred:
            _run_deferred()


class EngineLock:
    """An RLock (and what `threading.Condition` asks of one) whose holding by the main thread
    defers signal handlers to its release (see the module docstring).

    `plain` is the RLock itself, for a section that only reads the engine's state: a handler's
    exception there leaves nothing half changed (a `with` on it lets the lock go whatever comes
    out), so it need not be held off, and the read costs no system call."""

    __slots__ = ("plain", "_depth")

    def __init__(self) -> None:
        self.plain = threading.RLock()
        self._depth = 0  # the main thread's holds of this lock (only the main thread counts them)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        m = _main
        if _get_ident() != m.ident:
            return self.plain.acquire(blocking, timeout)
        if not m.held:  # first: a handler's exception after the lock is taken would leave it taken
            _block(m)
        m.held += 1  # (blocked from here)
        try:
            got = self.plain.acquire(blocking, timeout)
        except BaseException:
            # A bad argument; or a handler's exception: while waiting (the lock not taken), or just
            # after the lock was taken, where CPython runs due handlers once a call returns. The
            # mask keeps this thread's signals off, but one that another thread (a program's own,
            # not blocking them) took has its handler run here all the same: the lock is then ours
            # (an owner's acquire never waits, so owned now means taken by this call) and is let
            # go, else `with` would leave it taken, uncounted, and the stack thread waiting on it.
            if self.plain._is_owned():  # type: ignore[attr-defined]
                self.plain.release()
            _unhold()
            raise
        if got:
            self._depth += 1
        else:
            _unhold()
        return got

    __enter__ = acquire

    def release(self, *exc: object) -> None:
        """(Also `__exit__`, whose arguments it ignores: one Python call less per section.)"""
        if self._depth and _get_ident() == _main.ident:
            # counted first, the mask last whatever comes out of the release (a handler's exception
            # once the call returns, from a signal another thread took): counts, lock and mask agree
            self._depth -= 1
            m = _main
            m.held -= 1  # (as `_unhold`)
            try:
                self.plain.release()
            finally:
                if m.held <= 0:
                    m.held = 0
                    if m.blocked:
                        _unblock(m)
                    if m.deferred:  # (the only cost on the hot path: two attribute reads)
                        _run_deferred()
            return
        self.plain.release()

    __exit__ = release

    # -- for threading.Condition (its wait lets go of every level, then takes them back) ----------

    def _release_save(self) -> tuple[Any, int, int]:
        """A wait lets go of every hold of the main thread (this lock's, others', `step`'s): a wait
        is interruptible, as Condition.wait on an RLock is, and what came before it is whole."""
        state = self.plain._release_save()  # type: ignore[attr-defined]
        depth = total = 0
        if self._depth and _get_ident() == _main.ident:
            depth, self._depth, total = self._depth, 0, _main.held
            try:
                _unhold(total)
            except BaseException:
                # A signal that came while the holds were kept is delivered as they go, and its
                # handler runs right after the unblocking call: the wait never began. Its caller
                # hears the exception with everything held again, as before the call (a `with` on
                # the lock then lets go of what it took; without this it found the lock let go).
                # The lock first, the counts, then the signals held off: whatever a second handler
                # due at that instant raises finds lock and counts in agreement.
                self.plain._acquire_restore(state)  # type: ignore[attr-defined]
                self._depth = depth
                _main.held = total
                if _main.masks:
                    _sigmask(_BLOCK, _ASYNC, _main.saved)
                    _main.blocked = True
                raise
        return state, depth, total

    def _acquire_restore(self, saved: tuple[Any, int, int]) -> None:
        state, depth, total = saved
        try:
            if total:
                _hold(total)  # a handler due raises here, and Condition.wait's caller hears it...
        finally:
            self.plain._acquire_restore(state)  # type: ignore[attr-defined]  # (...held, as it expects)
            if total and _main.held:  # (the holds were taken back: `_release_save` had let all go)
                self._depth = depth

    def _is_owned(self) -> bool:
        return self.plain._is_owned()  # type: ignore[attr-defined]

    def condition(self) -> threading.Condition:
        """A Condition on this lock (typeshed knows only threading's locks; Condition asks for
        the methods above)."""
        return threading.Condition(self)  # type: ignore[arg-type]


class _Step:
    """`with step:` around a socket call's work that must not be cut by a handler's exception
    between two engine-lock sections: what it queued and the `kick` or `wake` that sends it. The
    signals wait to its end (a wait inside lets them through, `_release_save`); a handler due
    already runs at its start."""

    __slots__ = ()

    def __enter__(self) -> None:
        m = _main
        if _get_ident() != m.ident:
            return
        if not m.held:
            _block(m)
        m.held += 1

    def __exit__(self, *exc: object) -> None:
        m = _main
        if _get_ident() == m.ident:
            m.held -= 1  # (as `_unhold`)
            if m.held <= 0:
                m.held = 0
                if m.blocked:
                    _unblock(m)
                if m.deferred:
                    _run_deferred()


step = _Step()


def block_in_this_thread() -> None:
    """For usnet's own threads, at their start: block the asynchronous signals for good, so that
    one sent to the process waits for the main thread rather than trip its handler meanwhile."""
    _sigmask(_BLOCK, _ASYNC, None)


# -- the program's handlers, deferred to the last release (usnet.patch) ------------------------------


class _Deferring:
    """What CPython holds in place of a program's Python handler once patched: run while the main
    thread holds (a signal another thread took), it notes the signal for the last release to run
    the handler (`_run_deferred`); anywhere else it is the handler."""

    __slots__ = ("handler",)

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def __call__(self, signum: int, frame: FrameType | None) -> Any:
        m = _main
        if m.held or (frame is not None and frame.f_code is _RESTORE):
            # (`_acquire_restore` just entered: CPython runs due handlers on entry to a function,
            # and an exception there would leave the lock a wait let go of untaken, the caller's
            # `with` then releasing a lock it does not hold. A signal another thread took during
            # the wait trips no EINTR, so its handler first comes due there. It runs at the
            # holds' end instead: the next wait's start, or the call's end.)
            if signum not in m.deferred:  # (pending twice is pending once, as in the kernel)
                m.deferred.append(signum)
            return None
        return self.handler(signum, frame)

    def __repr__(self) -> str:
        return f"<deferred to the end of a usnet step: {self.handler!r}>"


_RESTORE = EngineLock._acquire_restore.__code__
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # usnet/


def _run_deferred() -> None:
    """The last release, the signals unblocked: run the handlers of the signals another thread took
    meanwhile, as CPython runs due handlers (in signal order; whatever one raises comes out of the
    release, the step done). The disposition is the one now in force, as for a signal pending in
    the kernel: ignored, it is dropped; default, it is raised (SIGINT's kills, as it would have).

    After a handler that raised, the rest are raised again (`_pend`), as CPython trips the rest
    again: their handlers run at the main thread's next bytecode (or, if a hold or the
    program's mask blocks them, at its end), never kept for a next hold that may not come (issue
    36's audit: a program waiting for its SIGTERM's flag outside usnet never ended)."""
    m = _main
    m.deferred.sort()
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_HERE):
        frame = frame.f_back  # the program's frame, as if its call had been interrupted there
    while m.deferred:
        signum = m.deferred.pop(0)
        h = _kernel["getsignal"](signum)
        try:
            if isinstance(h, _Deferring):
                h.handler(signum, frame)
            elif callable(h):  # (set through _signal.signal, under the patch)
                h(signum, frame)
            elif h == signal.SIG_DFL:
                signal.raise_signal(signum)
        except BaseException:
            _pend(m)
            raise


def _pend(m: _MainState) -> None:
    """The deferred signals whose handlers have not run, pending again in the kernel for this
    thread (a signal raised to itself), each once: due at its next bytecode if nothing blocks
    them, else at the unblocking."""
    rest, m.deferred = m.deferred, []
    for signum in rest:
        signal.pthread_kill(_get_ident(), signum)


_kernel: dict[str, Any] = {"getsignal": signal.getsignal}  # the signal module's own, while patched


def _signal(signalnum: Any, handler: Any) -> Any:
    """signal.signal, the handler deferred (`_Deferring`); returns the program's previous one."""
    if callable(handler) and isinstance(signalnum, int) and signalnum in ASYNC_SIGNALS:
        handler = _Deferring(handler)
    old = _kernel["signal"](signalnum, handler)
    return old.handler if isinstance(old, _Deferring) else old


def _getsignal(signalnum: Any) -> Any:
    """signal.getsignal: the program's own handler, not its `_Deferring`."""
    h = _kernel["getsignal"](signalnum)
    return h.handler if isinstance(h, _Deferring) else h


def _rewrap(wrap: bool) -> None:
    """Put every Python handler installed in (or out of) its `_Deferring` (from the main thread
    only, where signal.signal works; the handlers of a patch from another thread are deferred as
    the program sets them)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in ASYNC_SIGNALS:
        h = _kernel["getsignal"](s)
        if wrap and callable(h) and not isinstance(h, _Deferring):
            _kernel["signal"](s, _Deferring(h))
        elif not wrap and isinstance(h, _Deferring):
            _kernel["signal"](s, h.handler)


def defer_handlers() -> None:
    """usnet.patch(): defer the program's Python handlers (those installed, Python's SIGINT handler
    among them, and those it installs) to the end of a hold; the signal module's functions show
    the program's own."""
    if "signal" in _kernel:
        return
    _kernel["signal"], _kernel["getsignal"] = signal.signal, signal.getsignal
    _rewrap(True)
    signal.signal = functools.wraps(_kernel["signal"])(_signal)
    signal.getsignal = functools.wraps(_kernel["getsignal"])(_getsignal)
    # The holds stop blocking once every Python handler is deferred: not when patched from another
    # thread, where `_rewrap` could not wrap those already installed (Python's SIGINT handler).
    # (A hold blocked now is unblocked at its end all the same: `blocked`.)
    _main.masks = threading.current_thread() is not threading.main_thread()


def undefer_handlers() -> None:
    """usnet.unpatch(): the handlers as the program set them, the signal module's functions back."""
    if "signal" not in _kernel:
        return
    _main.masks = True
    _rewrap(False)
    signal.signal, signal.getsignal = _kernel.pop("signal"), _kernel["getsignal"]
