"""The harness of the hostile-client suite (tests/domain/test_hostile_usnetd.py).

A real usnetd process, a victim pair beside it (tests/peers/victim_peer.py:
numbered, checksummed payloads through a user pipe, checked one by one), and
what is measured of usnetd from outside: its descriptors (/proc/PID/fd), its
RSS (VmRSS) and its CPU time (/proc/PID/stat). After an attack the suite asks:
is usnetd alive, does it answer Status, does the victim's traffic still move
intact, do the pools' books balance, and, once the attacker is gone, are
usnetd's descriptors and memory back near where they were.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import PEERS
from tests.helpers.usnetd import Daemon
from tests.helpers.util import fresh_subnet, tap_name
from usnet.abi import doorbell
from usnet.abi import protocol as P
from usnet.abi.transport import ControlClient, connect_seqpacket, recv_msg, send_msg
from usnet.client import Client

VICTIM = PEERS / "victim_peer.py"
HOSTILE = PEERS / "hostile_peer.py"
ANSWER = 3.0  # seconds usnetd has to answer a control request before it counts as frozen
# "Near the baseline": Python's allocator keeps some of what it once allocated. The largest attack
# here (320 pipes, then a Status listing them) leaves about 16 MB behind on this build; a leak per
# pipe or per request would leave far more
RSS_SLACK_KB = 20 * 1024
VICTIM_EXIT = {3: "a payload or checksum was wrong", 4: "a message was lost or reordered",
               5: "the domain stopped serving it (a refill or receive timed out)",
               6: "its channel was defuncted", 1: "an unexpected exception"}


def quick_client(path: str, program: str = "hostile-test", timeout: float = ANSWER) -> tuple[Client, ControlClient]:
    """A usnetd client whose requests give up after `timeout` s (a frozen usnetd fails fast).

    Returns the client and its control connection (close that to end the session).
    """
    ctl = ControlClient(connect_seqpacket(path, timeout), timeout)

    def kick_for(cid: int, kick_fd: int):
        def kick() -> None:
            doorbell.ring(kick_fd)
        return kick, kick_fd

    try:
        return Client(ctl.request, kick_for, program), ctl
    except BaseException:
        ctl.close()
        raise


def raw_session(path: str, program: str = "raw", timeout: float = ANSWER):
    """A bare control socket that said Hello; returns (socket, session id)."""
    sock = connect_seqpacket(path, timeout)
    try:
        sock.settimeout(timeout)
        send_msg(sock, P.encode(P.Hello(P.PROTOCOL_VERSION, program)))
        raw, fds = recv_msg(sock)
        for fd in fds:
            os.close(fd)
        welcome = P.decode_reply(raw)
        assert isinstance(welcome, P.Welcome), welcome
        return sock, welcome.session
    except BaseException:
        sock.close()
        raise


def deadline_loop(timeout: float):
    """Yields until `timeout` s have passed (bounded polling; the caller breaks when done)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        yield
        time.sleep(0.005)


class Victim:
    """The victim pair in a child process; `count` is how many messages it has checked."""

    def __init__(self, path: str, sockdir: Path, name: str = "victim",
                 argv: tuple[str, ...] | None = None) -> None:
        """`argv`: the victim's role and its arguments (default: a `stream` over user pipe `name`)."""
        self.mfd = os.memfd_create("victim-progress")
        os.ftruncate(self.mfd, 8)
        self._map = mmap.mmap(self.mfd, 8)
        self._progress = memoryview(self._map).cast("Q")
        self.errlog = sockdir / "victim.err"
        with open(self.errlog, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(VICTIM), *(argv or ("stream", "--name", name)), "--path", path,
                 "--progress", str(self.mfd)],
                pass_fds=(self.mfd,), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)

    @property
    def count(self) -> int:
        return self._progress[0]

    def why_dead(self) -> str:
        rc = self.proc.returncode
        return f"exit {rc} ({VICTIM_EXIT.get(rc, 'killed' if rc and rc < 0 else '?')}): " \
               f"{self.errlog.read_text(errors='replace')[-1500:]}"

    def advances(self, by: int, timeout: float, what: str) -> None:
        """Wait (bounded) until the victim has checked `by` more messages."""
        start = self.count
        for _ in deadline_loop(timeout):
            if self.count >= start + by:
                return
            if self.proc.poll() is not None:
                pytest.fail(f"after {what}: the victim's traffic broke, {self.why_dead()}")
        pytest.fail(f"after {what}: the victim's traffic stalled: {self.count - start} of {by} "
                    f"messages in {timeout} s (usnetd no longer serves its pipe)")

    def stop(self) -> tuple[int, str]:
        """End the stream cleanly: (exit code, what it printed)."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        out = self.proc.stdout.read().decode()
        self.proc.stdout.close()
        return self.proc.returncode, out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None and not f.closed:
                f.close()
        self._progress.release()
        self._map.close()
        os.close(self.mfd)


class Harness:
    """usnetd, the victim beside it, and usnetd's baseline (descriptors, RSS)."""

    def __init__(self, sockdir: Path, preexec_fn=None, daemon_args: tuple[str, ...] = (),
                 before_victim=None, victim_argv: tuple[str, ...] | None = None) -> None:
        """`daemon_args`: more for usnetd (--config ...); `before_victim(self)` runs once usnetd
        is up (a network namespace for its TAP, say); `victim_argv`: see `Victim`."""
        self.sockdir = sockdir
        self.path = str(sockdir / "s.sock")
        self.daemon = Daemon(self.path, sockdir / "usnetd.log", *daemon_args, preexec_fn=preexec_fn, grace=3)
        self.pid = self.daemon.proc.pid
        self.children: list[subprocess.Popen] = []
        # Nobody holds the harness until it is made, so a start-up that fails (the victim's traffic
        # slow to start under load, a timeout) stops what it started: usnetd and the victim.
        try:
            if before_victim is not None:
                before_victim(self)
            self.victim = Victim(self.path, sockdir, argv=victim_argv)
            try:
                self.victim.advances(256, 20, "start-up")
                self.base_fds = self._settled_fds()
                self.base_rss = self.rss_kb()
            except BaseException:
                self.victim.close()
                raise
        except BaseException:
            self.daemon.stop()
            raise

    # -- what we measure of usnetd ------------------------------------------------------

    def fds(self) -> dict[int, str]:
        out = {}
        for name in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                out[int(name)] = os.readlink(f"/proc/{self.pid}/fd/{name}")
            except OSError:
                pass
        return out

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def largest_mappings(self, n: int = 6) -> list[tuple[int, str]]:
        """(Rss kB, mapping) of usnetd's `n` largest mappings: what to look at when RSS stays up."""
        out, name = [], ""
        for line in Path(f"/proc/{self.pid}/smaps").read_text().splitlines():
            head = line.split(maxsplit=5)
            if "-" in head[0] and not head[0].endswith(":"):
                name = f"{head[0]} {head[5] if len(head) > 5 else '[anon]'}"
            elif head[0] == "Rss:":
                out.append((int(head[1]), name))
        return sorted(out, reverse=True)[:n]

    def cpu_seconds(self) -> float:
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def _settled_fds(self) -> dict[int, str]:
        """usnetd's descriptors with only the victim connected (after one Status, ended)."""
        c, ctl = quick_client(self.path)
        c.status()
        with_us = self.fd_count()
        ctl.close()
        for _ in deadline_loop(5):
            if self.fd_count() < with_us:
                return self.fds()
        pytest.fail("usnetd never closed the session of a client that left")

    # -- the checks after an attack -------------------------------------------------------

    def log_tail(self) -> str:
        """The end of usnetd's log, from its last traceback if it has one."""
        text = self.daemon.log_text()
        at = text.rfind("Traceback")
        return text[at:][-3000:] if at >= 0 else text[-1500:]

    def assert_alive(self, what: str) -> None:
        rc = self.daemon.proc.poll()
        if rc is not None:
            pytest.fail(f"usnetd died after {what} (exit {rc}); its log ends:\n{self.log_tail()}")

    def status(self, what: str) -> dict:
        """Status from a fresh session, answered within ANSWER s, or a failure that says why not."""
        self.assert_alive(what)
        try:
            c, ctl = quick_client(self.path)
            try:
                return c.status()
            finally:
                ctl.close()
        except TimeoutError:
            self.assert_alive(what)
            pytest.fail(f"usnetd did not answer Status within {ANSWER} s after {what}: it is frozen")
        except OSError as e:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.daemon.proc.wait(2)  # a usnetd on its way out removes its socket first
            self.assert_alive(what)
            pytest.fail(f"usnetd refused Status after {what}: {e!r}\n{self.log_tail()}")

    @staticmethod
    def assert_books(st: dict, what: str) -> None:
        """Every pipe's pool: each packet in one place, and what the ends hold is what is lent."""
        for p in st["pipes"]:
            c = p["pool"]
            assert c["free"] + c["purged"] + c["in_alloc"] + c["held"] == c["capacity"], \
                f"after {what}: pool of pipe {p['name']!r} does not add up: {c}"
            held = sum(e["held"] for e in p["ends"])
            assert held == c["in_alloc"] + c["held"], \
                f"after {what}: pipe {p['name']!r}: ends hold {held}, pool lends {c['in_alloc'] + c['held']}"
            if p["defunct"]:
                assert c["in_alloc"] == c["held"] == 0, \
                    f"after {what}: defunct pipe {p['name']!r} still lends packets: {c}"

    def assert_served(self, what: str) -> dict:
        """usnetd alive and answering, the victim's traffic moving and intact, the books balanced."""
        st = self.status(what)
        self.victim.advances(64, 5, what)
        self.assert_books(st, what)
        return st

    def assert_session_ended(self, sid: int, what: str, st: dict | None = None) -> None:
        """usnetd ends session `sid` within 5 s (`st`: a status already read)."""
        st = self.status(what) if st is None else st
        for _ in deadline_loop(5):
            if sid not in {s["id"] for s in st["sessions"]}:
                return
            st = self.status(what)
        pytest.fail(f"after {what}: usnetd keeps its session {sid} (expected it ended)")

    def assert_recovered(self, what: str) -> None:
        """The attacker is gone: usnetd's descriptors and RSS come back to the baseline."""
        self.assert_alive(what)
        n = len(self.base_fds)
        for _ in deadline_loop(5):
            if self.fd_count() <= n:
                break
        else:
            now = self.fds()
            extra = sorted(v for k, v in now.items() if self.base_fds.get(k) != v)
            pytest.fail(f"after {what}: usnetd holds {len(now)} descriptors, {n} before the attack; "
                        f"new ones: {extra[:20]}")
        for _ in deadline_loop(5):
            if self.rss_kb() <= self.base_rss + RSS_SLACK_KB:
                break
        else:
            pytest.fail(f"after {what}: usnetd's RSS is {self.rss_kb()} kB, {self.base_rss} kB before; "
                        f"its largest mappings: {self.largest_mappings()}")

    def finish(self, what: str, victim_pipe: str = "victim") -> None:
        """The victim stops cleanly, having lost nothing; its pipe is gone with all its packets."""
        count = self.victim.count
        rc, out = self.victim.stop()
        assert rc == 0, f"after {what}: the victim ended badly, {self.victim.why_dead()}"
        assert out.startswith("done ") and int(out.split()[1]) >= count, out
        st = self.status(what)
        assert all(p["name"] != victim_pipe for p in st["pipes"]), "the victim's pipe outlived both its ends"

    # -- attackers in processes of their own ------------------------------------------------

    def spawn(self, script: Path, *args: str, timeout: float = 30) -> subprocess.Popen:
        """A child attacker; returns once it has signalled readiness (one byte on a pipe)."""
        r, w = os.pipe()
        try:
            proc = subprocess.Popen([sys.executable, str(script), *args, "--path", self.path,
                                     "--ready", str(w)], pass_fds=(w,))
        finally:
            os.close(w)
        self.children.append(proc)
        try:
            ok, _, _ = select.select([r], [], [], timeout)
            assert ok and os.read(r, 1) == b"R", f"attacker {args} never got ready (exit {proc.poll()})"
        finally:
            os.close(r)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)

    def close(self) -> None:
        for p in self.children:
            self.kill(p)
        self.victim.close()
        self.daemon.stop()


# -- a netif for the flow variants (tests/test_hostile_flows.py) ------------------------------------

_ns_seq = itertools.count()
ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:  # until the test kills it
    data, addr = s.recvfrom(65535)
    s.sendto(data, addr)
"""


class TapNetns:
    """The kernel side of a usnetd TAP netif, in a network namespace of the test's own.

    usnetd makes the TAP (config `driver = "tap"`); `take_tap` moves it into
    the fresh namespace (usnetd's descriptor stays attached), gives it
    10.x.0.1/24 there and starts a UDP echo on ECHO_PORT: the kernel is the
    peer of every flow. usnet is 10.x.0.2. Nothing is addressed in the host's
    namespace; `close` kills the echo and removes the namespace (the TAP goes
    with usnetd).
    """

    NETIF = "hf0"
    ECHO_PORT = 7007

    def __init__(self) -> None:
        from pyroute2 import netns

        self.x = fresh_subnet()
        self.ifname = tap_name()
        self.ns = f"usnet-hf-{os.getpid()}-{next(_ns_seq)}"
        self.peer_ip, self.usnet_ip = f"10.{self.x}.0.1", f"10.{self.x}.0.2"
        self.echo: subprocess.Popen | None = None
        netns.create(self.ns)

    @property
    def echo_addr(self) -> tuple[str, int]:
        return self.peer_ip, self.ECHO_PORT

    def config(self, sockdir: Path) -> str:
        """usnetd's config file with the one TAP netif; returns its path."""
        cfg = sockdir / "usnetd.toml"
        cfg.write_text(f'[[netif]]\nname = "{self.NETIF}"\ndriver = "tap"\nifname = "{self.ifname}"\n'
                       f'address = "{self.usnet_ip}/24"\ngateway = "{self.peer_ip}"\n')
        return str(cfg)

    def take_tap(self, _h: object = None) -> None:
        """Move usnetd's TAP into the namespace, address it, start the echo (a Harness hook)."""
        from pyroute2 import IPRoute, NetNS

        with IPRoute() as ipr:
            (idx,) = ipr.link_lookup(ifname=self.ifname)
            ipr.link("set", index=idx, net_ns_fd=self.ns)
        with NetNS(self.ns) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            (idx,) = ns.link_lookup(ifname=self.ifname)
            ns.addr("add", index=idx, address=self.peer_ip, prefixlen=24)
            ns.link("set", index=idx, state="up")
        self.echo = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-c", ECHO,
                                      self.peer_ip, str(self.ECHO_PORT)], stdout=subprocess.PIPE)
        ok, _, _ = select.select([self.echo.stdout], [], [], 15)
        assert ok and self.echo.stdout.readline() == b"ready\n", "the kernel's UDP echo never started"

    def victim_argv(self) -> tuple[str, ...]:
        return ("flow-stream", "--netif", self.NETIF, "--to", f"{self.peer_ip}:{self.ECHO_PORT}")

    def close(self) -> None:
        from pyroute2 import netns

        if self.echo is not None:
            if self.echo.poll() is None:
                self.echo.kill()
            self.echo.wait()
            self.echo.stdout.close()
            self.echo = None
        with contextlib.suppress(OSError):
            netns.remove(self.ns)
