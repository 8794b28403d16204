"""usnetd as a child process of the test: started on a socket, ready when it says so, stopped."""

from __future__ import annotations

import select
import subprocess
import sys
from pathlib import Path

DAEMON = [sys.executable, "-m", "usnet.domain.usnetd"]


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
        r, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline().decode() if r else ""
        if not line.startswith("usnetd ready"):
            self.stop()
            raise AssertionError(f"usnetd did not start: {line!r}\n{self.log_text()}")

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
