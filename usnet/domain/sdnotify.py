"""systemd's readiness protocol (sd_notify(3)) in a few lines, without libsystemd.

Under `Type=notify` systemd sets NOTIFY_SOCKET to an AF_UNIX datagram socket (a path, or an
abstract name written with a leading '@'); the service sends newline-separated assignments
to it: READY=1 once it serves, RELOADING=1 (with MONOTONIC_USEC) and READY=1 around a reload,
STOPPING=1 as it stops, STATUS=... for `systemctl status`. Without NOTIFY_SOCKET every call is
a no-op, so usnetd calls these unconditionally. A notification that cannot be sent is not an
error of the daemon's: it is dropped (sd_notify does the same).
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["notify", "unit_text"]


def notify(*assignments: str) -> bool:
    """Send `assignments` ("READY=1", "STATUS=...") to $NOTIFY_SOCKET; False if there is none or it failed."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or addr[0] not in "/@":  # vsock addresses (vsock:CID:PORT) are not for us
        return False
    target = "\0" + addr[1:] if addr[0] == "@" else addr
    msg = "\n".join(a.replace("\n", " ") for a in assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(msg, target)
    except OSError:
        return False
    return True


def reloading() -> bool:
    """RELOADING=1 with the monotonic time, as `Type=notify-reload` wants it."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


UNIT = """\
# usnetd as a systemd service (written by `usnetd --print-unit`; see the README, "usnetd under systemd").
[Unit]
Description=usnet domain daemon (user-space networking)
Documentation=https://github.com/usnet/usnet#readme
After=network-pre.target
Wants=network-pre.target

[Service]
# usnetd tells systemd when it serves (READY=1 on $NOTIFY_SOCKET) and around a reload
Type=notify
NotifyAccess=main
ExecStart={exec} --config {config}
# SIGHUP: netifs, policy and limits are re-read; what cannot change live is logged as refused
ExecReload=/bin/kill -HUP $MAINPID
RuntimeDirectory=usnet
RuntimeDirectoryPreserve=restart
Restart=on-failure
# every client channel holds about a dozen descriptors
LimitNOFILE=1048576
# usnetd opens TAP devices and packet sockets: root, or these capabilities
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE CAP_IPC_LOCK \
CAP_SYS_RESOURCE CAP_SETUID CAP_SETGID
ProtectSystem=full
ProtectHome=read-only
PrivateTmp=true

[Install]
WantedBy=multi-user.target
"""


def unit_text(exec_start: str, config_path: str = "/etc/usnet/usnetd.toml") -> str:
    """The shipped unit with this installation's usnetd in ExecStart (a venv's python, say)."""
    return UNIT.format(exec=exec_start, config=config_path)
