"""Operating usnet (issue 20): one-line CLI errors, `usnet up`'s addressing checks and config flags,
usnetd's SIGHUP reload, sd_notify readiness and the systemd unit, and the session log.

The CLI cases run the real command in a subprocess (`python -m usnet.cli.main`, this tree on
PYTHONPATH) and read its stderr as a user would: one line, a non-zero exit, no traceback.
Cases that need a non-root user run a small wrapper that imports the CLI first and then drops
to uid 65534 (the interpreter lives under /root, which nobody else may read).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.usnetd import Daemon
from tests.helpers.util import wait_until
from usnet.client import Client
from usnet.domain import config, sdnotify
from usnet.domain import launch as updown

ROOT = str(Path(__file__).resolve().parents[2])
ENV = {**os.environ, "PYTHONPATH": ROOT, "COLUMNS": "200"}
ENV.pop("USNET_DEBUG", None)
# (argparse imports shutil lazily, when it formats: something imports it first in one environment,
# nothing in a fresh venv, where uid 65534 could then not read it)
AS_NOBODY = """
import os, sys, shutil, textwrap
import usnet.cli.main as m, usnet.domain.launch, usnet.client, usnet.drivers.pcap, usnet.cli.errors
os.setgroups([]); os.setgid(65534); os.setuid(65534)
sys.exit(m.main(sys.argv[1:]))
"""


def usnet(*args: str, nobody: bool = False, timeout: float = 30) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", AS_NOBODY] if nobody else [sys.executable, "-m", "usnet.cli.main"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=ENV, timeout=timeout, cwd="/")


def one_line(r: subprocess.CompletedProcess, *words: str) -> str:
    """The error line of a failed command: exactly one line, non-zero exit, no traceback."""
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.endswith("\n") and r.stderr.count("\n") == 1, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)
    return r.stderr


@pytest.fixture
def daemon(sockdir):
    d = Daemon(str(sockdir / "s.sock"), sockdir / "usnetd.log")
    yield d
    d.stop()


def test_every_cli_error_is_one_line_that_says_what_to_do(tmp_path, daemon):
    run = str(tmp_path / "run")
    cases = [
        # the list
        (("down", "--run-dir", run), True, ("needs root", "sudo $(which usnet) down")),
        (("capture", "-w", str(tmp_path / "x.pcap"), "-i", "nope", "--socket", daemon.path), False,
         ("no netif 'nope'", "usnet stats")),
        (("advisory", "nope", "--once", "--socket", daemon.path), False, ("usnet advisory:", "no netif 'nope'")),
        (("capture", "-w", "/nonexistent/x.pcap"), False, ("-w", "no directory /nonexistent")),
        (("capture", "-w", str(tmp_path / "x.pcap")), True, ("not reachable by this user", "choose another path")),
        (("up", "--ifname", "a-name-too-long-for-linux", "--run-dir", run), False, ("--ifname", "1 to 15 bytes")),
        (("up", "--address6", "fd00::zz/64", "--run-dir", run), False, ("--address6", "IPv6")),
        (("demo", "--plot", "/nonexistent/demo.png"), False, ("--plot", "no directory")),
        (("demo", "--packets", "0"), False, ("--packets", "above 0")),
        (("demo", "--packets", "-5"), False, ("--packets", "above 0")),
        # refused up front: bad numbers, and a usnetd its user may not reach
        (("capture", "-w", str(tmp_path / "y.pcap"), "-c", "0"), False, ("--count", "above 0")),
        (("capture", "-w", str(tmp_path / "y.pcap"), "--seconds", "nan"), False, ("--seconds",)),
        (("up", "--link-rate", "fast", "--run-dir", run), False, ("--link-rate",)),
        (("up", "--link-rate", "-5", "--run-dir", run), False, ("link_rate must be",)),
        (("bench", "nope"), False, ("invalid choice",)),
        (("flows", "--socket", daemon.path), True, ("only root", "sudo")),
        (("stats", "--socket", str(tmp_path / "none.sock")), False, ("usnetd is not running", "usnet up")),
        (("up", "--config", str(tmp_path / "missing.toml"), "--run-dir", run), False, ("--config", "No such file")),
        (("up", "--policy", str(tmp_path), "--run-dir", run), False, ("--policy",)),
    ]
    for args, nobody, words in cases:
        one_line(usnet(*args, nobody=nobody), *words)
    assert not os.path.exists(run)  # nothing was made on the way to any of these refusals
    # the daemon's own: a bad log level, by flag and in the file
    r = subprocess.run([sys.executable, "-m", "usnet.domain.usnetd", "--log-level", "LOUD"], capture_output=True,
                       text=True, env=ENV, timeout=30)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a log level: 'LOUD'" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('log_level = "LOUD"\n')
    r = subprocess.run([sys.executable, "-m", "usnet.domain.usnetd", "--config", str(bad)], capture_output=True,
                       text=True, env=ENV, timeout=30)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "log_level must be one of" in r.stderr
    # --debug lets the traceback through, for bug reports
    r = usnet("--debug", "advisory", "nope", "--once", "--socket", daemon.path)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_an_unexpected_fault_is_one_line_too_naming_debug(monkeypatch, capsys):
    from usnet.cli import errors

    def boom() -> int:
        raise TypeError("a bug")

    assert errors.run("usnet x", boom, debug=False) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: TypeError: a bug" in err and "--debug" in err
    with pytest.raises(TypeError):
        errors.run("usnet x", boom, debug=True)


# -- usnet up: addressing, --config, --policy, --metrics ---------------------------------------------------


@pytest.mark.parametrize("address, host, words", [
    ("10.1.0.2/24", "10.2.0.1/24", "different subnets"),
    ("10.77.0.2/24", "10.77.0.2/24", "both have 10.77.0.2"),
    ("10.77.0.0/24", "10.77.0.1/24", "network address"),
    ("10.77.0.2/24", "10.77.0.255/24", "broadcast address"),
    ("10.77.0.2/31", "10.77.0.3/31", "/31 prefix"),
    ("10.77.0.2/32", "10.77.0.1/32", "/32 prefix"),
    ("224.0.0.2/24", "224.0.0.1/24", "not a unicast address"),
    ("10.77.0.2/16", "10.77.0.1/24", "different subnets"),
])
def test_up_refuses_broken_addressing_with_one_reason(tmp_path, address, host, words):
    with pytest.raises(ValueError, match=words):
        updown.check_addressing(address, host)
    r = usnet("up", "--address", address, "--host-address", host, "--run-dir", str(tmp_path / "run"))
    one_line(r, "usnet up:", words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("a6, h6, words", [
    ("fd00:77::2/64", "fd00:78::1/64", "different IPv6 prefixes"),
    ("fd00:77::2/64", "fd00:77::2/64", "both have fd00:77::2"),
    ("fd00:77::/64", "fd00:77::1/64", "subnet-router anycast"),
    ("fd00:77::2/127", "fd00:77::3/127", "/127 prefix"),
    ("fe80::2/64", "fe80::1/64", "not a global"),
])
def test_up_refuses_broken_ipv6_addressing(a6, h6, words):
    with pytest.raises(ValueError, match=words):
        updown.check_addressing("10.77.0.2/24", "10.77.0.1/24", a6, h6)


def test_up_accepts_good_addressing():
    updown.check_addressing("10.77.0.2/24", "10.77.0.1/24", "fd00:77::2/64", "fd00:77::1/64")
    updown.check_addressing("192.168.7.6/30", "192.168.7.5/30")


def test_up_config_policy_and_metrics_become_the_written_config(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text('log_level = "DEBUG"\nstall_after = 5.0\n[limits]\nflows_per_uid = 64\n'
                    '[[netif]]\nname = "extra"\ndriver = "packet"\nifname = "veth9"\naddress = "10.9.0.2/24"\n')
    pol = tmp_path / "policy.toml"
    pol.write_text('lease_ttl = 10.0\n[[policy]]\nuid = 1000\nclasses = ["voice"]\nmax_rate = 2e6\n'
                   'max_packet = 1200\n')
    cfg = updown.build_config("tap", "usnet0", "10.77.0.2/24", "10.77.0.1/24", "/run/x/usnetd.sock",
                              config_file=str(base), policy_file=str(pol), metrics="unix:/run/x/metrics.sock")
    assert [nc.name for nc in cfg.netif] == ["usnet0", "extra"]
    assert (cfg.log_level, cfg.stall_after, cfg.limits, cfg.lease_ttl) == ("DEBUG", 5.0, {"flows_per_uid": 64}, 10.0)
    assert [p.uid for p in cfg.policy] == [1000] and cfg.metrics == "unix:/run/x/metrics.sock"
    assert cfg.socket == "/run/x/usnetd.sock"
    out = tmp_path / "usnetd.toml"
    out.write_text(config.dump(cfg))
    assert config.load(str(out)) == cfg  # what usnetd will read is what was meant
    # the device's own netif comes from the flags, never from the file
    base.write_text('[[netif]]\nname = "usnet0"\naddress = "10.9.0.2/24"\n')
    with pytest.raises(ValueError, match="the one `usnet up` makes"):
        updown.build_config("tap", "usnet0", "10.77.0.2/24", "10.77.0.1/24", "/s", config_file=str(base))
    base.write_text('socket = "/elsewhere.sock"\n')
    with pytest.raises(ValueError, match="leave socket out"):
        updown.build_config("tap", "usnet0", "10.77.0.2/24", "10.77.0.1/24", "/s", config_file=str(base))


def test_up_flags_reach_up(monkeypatch):
    from usnet.cli.main import main

    got = {}
    monkeypatch.setattr(updown, "up", lambda *a, **kw: got.update(kw) or 0)
    assert main(["up", "--config", "c.toml", "--policy", "p.toml", "--metrics", "127.0.0.1:9464"]) == 0
    assert (got["config_file"], got["policy_file"], got["metrics"]) == ("c.toml", "p.toml", "127.0.0.1:9464")


# -- SIGHUP --------------------------------------------------------------------------------------------------


def test_sighup_applies_a_changed_policy_and_limit_and_refuses_what_cannot_change_live(sockdir):
    cfg = sockdir / "c.toml"
    cfg.write_text("[limits]\nflows_per_uid = 100\n")
    d = Daemon(str(sockdir / "s.sock"), sockdir / "usnetd.log", "--config", str(cfg))
    try:
        with Client.connect(d.path) as c:
            st = c.status()
            assert st["limits"]["limits"]["flows_per_uid"] == 100 and st["lowlat"]["policy_entries"] == 0
            cfg.write_text('socket = "/tmp/elsewhere.sock"\nstall_after = 4.0\n[limits]\nflows_per_uid = 7\n'
                           '[[policy]]\nuid = 1000\nclasses = ["voice"]\nmax_rate = 2e6\nmax_packet = 1200\n')
            d.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "reload done" in d.log_text(), 15, "usnetd to reload")
            st = c.status()
            assert st["limits"]["limits"]["flows_per_uid"] == 7 and st["lowlat"]["policy_entries"] == 1
            assert st["memory"]["stall_after"] == 4.0
            log = d.log_text()
            assert "reload refused key=socket" in log and "reason=needs-restart" in log
            assert "reload applied key=limits" in log and "reload applied key=policy" in log
            # a file that does not load changes nothing
            cfg.write_text("[limits]\nflows_per_uid = \n")
            d.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "reload failed" in d.log_text(), 15, "usnetd to refuse the file")
            assert c.status()["limits"]["limits"]["flows_per_uid"] == 7
            # the refused key is refused again (it never took effect), the others are unchanged
            cfg.write_text('socket = "/tmp/elsewhere.sock"\nstall_after = 4.0\n[limits]\nflows_per_uid = 7\n'
                           '[[policy]]\nuid = 1000\nclasses = ["voice"]\nmax_rate = 2e6\nmax_packet = 1200\n')
            d.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: d.log_text().count("reload done") == 2, 15, "usnetd to reload again")
            last = d.log_text().split("reload failed")[1]
            assert "reload refused key=socket" in last and "reload applied" not in last
            assert os.path.exists(d.path)  # still where it started
    finally:
        assert d.stop() == 0


# -- systemd ---------------------------------------------------------------------------------------------------


def test_usnetd_tells_a_notify_socket_ready_reloading_and_stopping(sockdir, monkeypatch):
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(str(sockdir / "notify"))
    ns.settimeout(15)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sockdir / "notify"))
    cfg = sockdir / "c.toml"
    cfg.write_text("")
    d = Daemon(str(sockdir / "s.sock"), sockdir / "usnetd.log", "--config", str(cfg))
    try:
        ready = ns.recv(4096).decode().split("\n")
        assert "READY=1" in ready and f"MAINPID={d.proc.pid}" in ready
        Client.connect(d.path).close()  # it serves once it said so
        d.proc.send_signal(signal.SIGHUP)
        reloading = ns.recv(4096).decode().split("\n")
        assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
        again = ns.recv(4096).decode().split("\n")
        assert again[0] == "READY=1" and again[1].startswith("STATUS=reloaded")
    finally:
        assert d.stop() == 0
        assert ns.recv(4096) == b"STOPPING=1"
        ns.close()


def test_sd_notify_speaks_to_abstract_sockets_and_is_quiet_without_one(monkeypatch):
    name = f"usnet-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1", "STATUS=two\nlines")
        assert s.recv(100) == b"READY=1\nSTATUS=two lines"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:123")
    assert not sdnotify.notify("READY=1")


def test_usnetd_prints_a_notify_unit_that_starts_this_usnetd(tmp_path):
    r = subprocess.run([sys.executable, "-m", "usnet.domain.usnetd", "--print-unit", "--config", "/etc/u.toml"],
                       capture_output=True, text=True, env=ENV, timeout=30, check=True)
    lines = r.stdout.splitlines()
    assert "Type=notify" in lines and "ExecReload=/bin/kill -HUP $MAINPID" in lines
    assert f"ExecStart={sys.executable} -m usnet.domain.usnetd --config /etc/u.toml" in lines
    assert "WantedBy=multi-user.target" in lines


# -- the session log ----------------------------------------------------------------------------------------


def test_session_lines_name_the_client_and_a_normal_exit_is_normal(sockdir, tmp_path):
    d = Daemon(str(sockdir / "s.sock"), sockdir / "usnetd.log", "--log-level", "DEBUG")
    try:
        app = tmp_path / "voipd.py"
        app.write_text(f"import usnet\nc = usnet.Client.connect({d.path!r})\nc.open_pipe('p')\n"
                       "try:\n    c.open_monitor('nope')\nexcept OSError:\n    pass\n")  # exits without close()
        subprocess.run([sys.executable, str(app)], env=ENV, check=True, timeout=30)
        wait_until(lambda: "session end" in d.log_text(), 15, "the session to end")
    finally:
        d.stop()
    lines = [ln for ln in d.log_text().splitlines() if "program=python" in ln and "voipd.py" in ln]
    start = [ln for ln in lines if "session start" in ln]
    end = [ln for ln in lines if "session end" in ln]
    assert len(start) == 1 and len(end) == 1, lines
    # it exited without close(): its stack closed what it held on the way out, a normal end
    assert " INFO " in end[0] and "how=closed" in end[0] and f"uid={os.getuid()}" in end[0]
    assert "OpenMonitor:1" in end[0] and "OpenPipe:1" in end[0] and "refused=1" in end[0]
    debug = [ln for ln in lines if " DEBUG request " in ln]
    assert any("type=OpenPipe reply=ChannelOpened" in ln for ln in debug)
    assert any("type=OpenMonitor refused=" in ln and "no netif 'nope'" in ln for ln in debug)
    assert "WARNING" not in "\n".join(lines)
