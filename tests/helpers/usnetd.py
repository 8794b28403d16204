"""usnetd as a child process of the test: started on a socket, ready when it says so, stopped."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.util import fresh_subnet, tap_name

DAEMON = [sys.executable, "-m", "usnet.domain.usnetd"]

__all__ = ["DAEMON", "Daemon", "TapDaemon"]


class Daemon:
    def __init__(self, path: str, log: Path, *extra: str, preexec_fn=None, grace: float = 10.0) -> None:
        """usnetd on socket `path`, logging to `log`; `extra` are more arguments (--config ...).

        `preexec_fn` runs in the child before usnetd starts (a lower RLIMIT_NOFILE, say);
        `grace` is how long `stop` waits after SIGTERM before it sends SIGKILL.
        """
        self.path = path
        self.log = log
        self.grace = grace
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(DAEMON + ["--socket", path, "--log-level", "INFO", *extra],
                                         stdout=subprocess.PIPE, stderr=err, preexec_fn=preexec_fn)
        try:  # stopped on any way out, a timeout's or a signal's too: nobody else holds it yet
            r, _, _ = select.select([self.proc.stdout], [], [], 15)
            line = self.proc.stdout.readline().decode() if r else ""
            if not line.startswith("usnetd ready"):
                raise AssertionError(f"usnetd did not start: {line!r}\n{self.log_text()}")
        except BaseException:
            self.stop()
            raise

    def log_text(self) -> str:
        try:
            return self.log.read_text()
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        return self.proc.returncode


class TapDaemon:
    """usnetd with one TAP netif "usnet0" (10.x.0.2), the host side 10.x.0.1 configured after each start."""

    def __init__(self, sockdir, ipv6: bool = False) -> None:
        self.x, self.ifname = fresh_subnet(), tap_name()
        self.usnet_ip, self.host_ip = f"10.{self.x}.0.2", f"10.{self.x}.0.1"
        # `ipv6`: fd00:x::2/64 too, the host fd00:x::1 (without duplicate address detection)
        self.usnet_ip6, self.host_ip6 = (f"fd00:{self.x}::2", f"fd00:{self.x}::1") if ipv6 else (None, None)
        self.path = str(sockdir / "usnetd.sock")
        self.config = sockdir / "usnetd.toml"
        v6 = f'address6 = "{self.usnet_ip6}/64"\ngateway6 = "{self.host_ip6}"\n' if ipv6 else ""
        self.config.write_text(f'[[netif]]\nname = "usnet0"\ndriver = "tap"\nifname = "{self.ifname}"\n'
                               f'address = "{self.usnet_ip}/24"\ngateway = "{self.host_ip}"\noffload = false\n' + v6)
        self.logs = sockdir
        self.daemon: Daemon | None = None
        self.starts = 0

    def start(self) -> None:
        from pyroute2 import IPRoute

        self.starts += 1
        self.daemon = Daemon(self.path, self.logs / f"usnetd{self.starts}.log", "--config", str(self.config))
        try:  # a start that fails here stops its usnetd: a caller's `finally: stop()` may not be entered yet
            with IPRoute() as ipr:
                (idx,) = ipr.link_lookup(ifname=self.ifname)
                ipr.link("set", index=idx, state="up")
                ipr.addr("add", index=idx, address=self.host_ip, prefixlen=24)
                if self.host_ip6 is not None:
                    from usnet.drivers.hostnet import add_address6

                    add_address6(ipr, idx, self.host_ip6, 64)
        except BaseException:
            self.stop()
            raise

    def kill(self) -> float:
        assert self.daemon is not None
        t = time.monotonic()
        self.daemon.proc.kill()
        self.daemon.proc.wait(5)
        return t

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
