"""Import numpy with the asynchronous signals blocked, so that the threads it starts block them too.

Why: numpy's BLAS (OpenBLAS) starts worker threads as it is imported (one on this 2-core
machine), and a new thread takes its creator's signal mask. Those threads never block a signal,
so a signal sent to the process (setitimer's SIGALRM, a terminal's SIGINT) goes to one of them
whenever the main thread blocks it, which it does while it holds an engine lock
(usnet.client.sigdefer). CPython then runs the Python handler in the main thread at its next
bytecode, inside the engine's step: the handler's exception failed the stack engine
("stack engine failed: Alarm(14)") and a blocked recv raised it as an OSError, about one run in
a hundred interrupted calls. usnet imports numpy first of all (usnet/__init__.py imports this module
before anything else of usnet), with the signals blocked around the import: the BLAS threads are born
with them blocked, and a signal to the process waits for the main thread, as sigdefer expects.

BLAS threads work the same (they never ran a Python handler anyway: CPython runs handlers only
in the main thread). A program that imported numpy before usnet keeps threads that take signals,
as a program's own threads do: under the patch, sigdefer defers their handlers (`defer_handlers`).
"""

from __future__ import annotations

import signal

__all__ = ["ASYNC_SIGNALS", "import_numpy_quietly"]  # (importing this module runs it)

# All but those the kernel sends for a fault of the running code, which cannot wait (blocked, a
# SIGSEGV kills the process at once, with no faulthandler report). usnet.client.sigdefer's set.
ASYNC_SIGNALS = frozenset(signal.valid_signals()) - {
    signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP, signal.SIGABRT}


def import_numpy_quietly() -> None:
    """Import numpy (once; later calls find it imported) with this thread's asynchronous signals
    blocked, then restore the mask, delivering what came meanwhile."""
    import sys

    if "numpy" in sys.modules:
        return
    saved = signal.pthread_sigmask(signal.SIG_BLOCK, ASYNC_SIGNALS)
    try:
        import numpy  # noqa: F401  (for the threads it starts)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved)


import_numpy_quietly()
