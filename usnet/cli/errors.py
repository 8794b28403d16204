"""One line per CLI error: what went wrong and what to do, a non-zero exit, no traceback.

The `usnet` command runs every subcommand through `run`, which turns the
exceptions a user can cause (a path that cannot be written, a netif usnetd
does not have, a refusal by usnetd, a netlink error, a value the config
refuses, needing root) into one line on stderr. Anything else is a bug: it
is one line too, naming `--debug`, which lets every exception through with
its traceback. Bad arguments never get that far: `Parser` reports argparse's
errors in one line, and the types below refuse bad numbers, names and
addresses while parsing, before anything runs.

This is the one place that knows how to say an error; subcommands raise
(`CliError` for their own refusals) and never print a traceback themselves.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import math
import os
import sys
from collections.abc import Callable
from typing import NoReturn

__all__ = [
    "CliError", "Parser", "bits", "count", "ifname", "interface4", "interface6", "log_level", "message_for",
    "run", "seconds", "writable_path",
]

ROOT_HINT = "run it as root; from a venv: sudo $(which usnet) ..."


class CliError(Exception):
    """A refusal of the CLI's own: `message` is the whole line (after "usnet CMD: "), `status` the exit."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (`usnet up: argument --ifname: ...; see usnet up --help`), exit 2.

    Subparsers are made of the same class (`add_subparsers` uses the parent's type), so every
    subcommand reports the same way.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}; see {self.prog} --help\n")


# -- argparse types: refuse nonsense while parsing, in the option's own words ---------------------------


def count(text: str) -> int:
    """A whole number above 0 (packets, frames): 0 or less would wait for nothing, forever."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a whole number above 0, not {text!r}")
    return v


def seconds(text: str) -> float:
    """A positive, finite number of seconds, at most an hour."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(v) and 0 < v <= 3600):
        raise argparse.ArgumentTypeError(f"must be seconds above 0 and at most 3600, not {text!r}")
    return v


def bits(text: str) -> float:
    """Bits per second, as a number ("50e6") or with a k, M or G suffix ("50M").

    Only the syntax is checked here; whether the value makes sense is the config's check
    (usnet.domain.config, txsched.check_params), so that the flag and the config file refuse
    the same values with the same words.
    """
    scale = {"k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "g": 1e9, "G": 1e9}.get(text[-1:], 1.0)
    try:
        return float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate in bits/s (e.g. 50e6 or 50M): {text!r}") from None


def ifname(text: str) -> str:
    """A Linux interface name: 1 to 15 bytes, no '/', ':' or white space, not '.' or '..' (dev_valid_name)."""
    n = len(text.encode())
    if not 1 <= n <= 15:
        raise argparse.ArgumentTypeError(f"an interface name is 1 to 15 bytes, {text!r} has {n}")
    if text in (".", "..") or any(c in text for c in "/: \t\n"):
        raise argparse.ArgumentTypeError(f"{text!r} is not an interface name (no '/', ':' or spaces)")
    return text


def interface4(text: str) -> str:
    """An IPv4 address with its prefix, e.g. 10.77.0.2/24."""
    try:
        ipaddress.IPv4Interface(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not an IPv4 address/prefix such as 10.77.0.2/24: {e}") from None
    return text


def interface6(text: str) -> str:
    """An IPv6 address with its prefix, e.g. fd00:77::2/64."""
    try:
        ipaddress.IPv6Interface(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not an IPv6 address/prefix such as fd00:77::2/64: {e}") from None
    return text


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(text: str) -> str:
    """One of logging's level names, any case."""
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"not a log level: {text!r} (one of {', '.join(LOG_LEVELS)})")
    return text.upper()


def writable_path(text: str) -> str:
    """A file this process may create or overwrite: checked now, not after the work that fills it."""
    if text == "-":
        return text
    path = os.path.abspath(text)
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text} is a directory; name a file in it")
    parent = os.path.dirname(path)
    try:
        os.stat(parent)
    except PermissionError:
        raise argparse.ArgumentTypeError(f"{text}: directory {parent} not reachable by this user; "
                                         "choose another path") from None
    except OSError:
        raise argparse.ArgumentTypeError(f"{text}: no directory {parent}; make it first or choose another path") \
            from None
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{text}: {parent} is not a directory; choose another path")
    target = path if os.path.exists(path) else parent
    if not os.access(target, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: {'file' if target == path else 'directory'} not writable "
                                         f"by this user; choose another path")
    return text


# -- the top-level handler -----------------------------------------------------------------------------


def message_for(exc: BaseException) -> str | None:
    """The one line (after "usnet CMD: ") for an error a user can cause, or None for a bug."""
    if isinstance(exc, CliError):
        return str(exc)
    code = getattr(exc, "code", None)
    if type(exc).__name__ == "LeaseRefusedError":
        return f"lease refused: {exc}"
    if isinstance(exc, OSError):
        what = getattr(exc, "message", None) or exc.strerror or str(exc)
        where = f"{exc.filename}: " if exc.filename else ""
        if code == "ENODEV" or exc.errno == errno.ENODEV:
            return f"{what}; `usnet stats` lists the netifs usnetd has"
        if isinstance(exc, PermissionError):
            if exc.filename:
                return f"{where}{what}; choose a path this user may use, or {ROOT_HINT}"
            return f"{what}; {ROOT_HINT}" if os.geteuid() != 0 else f"{what}"
        if isinstance(exc, (ConnectionError, FileNotFoundError)) and not exc.filename and "usnetd" in what:
            return what
        return f"{where}{what}"
    if type(exc).__name__ == "NetlinkError":  # pyroute2's, without importing it: (code, text)
        num = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        text = exc.args[1] if len(exc.args) > 1 else os.strerror(num)
        hint = f"; {ROOT_HINT}" if num in (errno.EPERM, errno.EACCES) and os.geteuid() != 0 else ""
        return f"netlink: {text} (errno {num}){hint}"
    if isinstance(exc, ValueError):
        return str(exc)
    return None


def run(prog: str, fn: Callable[[], int], debug: bool) -> int:
    """Run a subcommand; an exception becomes one line on stderr and exit 1 (130 on ^C).

    With `debug` nothing is caught: the traceback is what one asked for.
    """
    if debug:
        return fn()
    try:
        return fn()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `usnet ... | head`: the reader left, nothing to say
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the interpreter's flush at exit is quiet
        except OSError:
            pass
        return 1
    except CliError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.status
    except Exception as e:
        line = message_for(e)
        if line is None:
            line = (f"internal error: {type(e).__name__}: {e}; run with --debug for the traceback "
                    "and report it")
        print(f"{prog}: {' '.join(line.split())}", file=sys.stderr)
        return 1
