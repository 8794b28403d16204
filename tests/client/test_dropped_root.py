"""A program that drops root before it opens its sockets still rings its own doorbell (issue 16).

A channel's client rings its own bell (select mode finding a packet that slipped in, another
thread waking a blocked call that pumps its engine). It used to open that write end itself, by
reopening /proc/self/fd/<bell>: a process that called setuid() is not dumpable, its
/proc/self/fd is root's, and it got none; its blocked calls then never borrowed their engine's
doorbell. Now usnetd lends the write end with the channel (docs/abi.md, "Doorbells").

The program runs as uid 65534 in a process of its own (the interpreter lives under /root, which
nobody may read: the script imports what it needs before it drops root), against a usnetd of
its own, over usnetd's loopback netif.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.usnetd import Daemon

ROOT = str(Path(__file__).resolve().parents[2])
LIMIT = 20  # seconds: reached only when something is broken

PROGRAM = r"""
import fcntl, json, os, select, stat, sys, threading
import usnet.socket as us
from usnet.client import Client
from usnet.client.engine import runner

os.setgroups([]); os.setgid(65534); os.setuid(65534)
report = {"uid": os.getuid()}
c = Client.connect(sys.argv[1], program="dropped-root")
srv = us.socket(client=c, netif="lo")
srv.bind(("127.0.0.1", 0))
srv.listen()
srv.settimeout(10)
cl = us.create_connection(srv.getsockname(), timeout=10, client=c, netif="lo")
conn = srv.accept()[0]
conn.settimeout(10)
cl.settimeout(10)

def writes_to(ch):
    # a write end of the channel's own bell: a pipe's, the read end's pipe, opened write-only
    w = getattr(ch, "_bell_w", -1)
    if w is None or w < 0:
        return False
    st, mine = os.fstat(w), os.fstat(ch._bell)
    return (stat.S_ISFIFO(st.st_mode) and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
            and fcntl.fcntl(w, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY)

report["channels"] = len(c.channels)
report["writers"] = sum(writes_to(ch) for ch in c.channels.values())
try:  # what the client once did for itself, refused to a process that dropped root
    os.close(os.open(f"/proc/self/fd/{next(iter(c.channels.values()))._bell}", os.O_WRONLY))
    report["proc"] = "opened"
except PermissionError:
    report["proc"] = "refused"

# select: nothing yet, then woken by the peer's data
report["select_idle"] = select.select([cl], [], [], 0)[0] == []
conn.sendall(b"x")
report["select_woken"] = select.select([cl], [], [], 10)[0] == [cl]
report["first"] = cl.recv(10).decode()

# a recv blocked in a thread pumps its engine on the lent doorbell, and is woken by the data
def blocked_recv(got):
    def run():
        try:
            got["r"] = cl.recv(10).decode()
        except Exception as e:
            got["r"] = repr(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t

def until_borrowed(t, before):
    for _ in range(2000):  # until the recv pumps (bounded)
        if runner().borrows > before:
            return True
        t.join(0.005)
    return False

before = runner().borrows
got = {}
t = blocked_recv(got)
report["borrowed"] = until_borrowed(t, before)
conn.sendall(b"hello")
t.join(10)
report["second"] = got.get("r")

# another thread's shutdown(SHUT_RD) wakes the pumping recv: it rings our own bell
before = runner().borrows
got = {}
t = blocked_recv(got)
report["borrowed_again"] = until_borrowed(t, before)
cl.shutdown(us.SHUT_RD)
t.join(10)
report["after_shutdown"] = got.get("r")
for s in (cl, conn, srv):
    s.close()
print(json.dumps(report), flush=True)
"""


def test_a_program_that_dropped_root_holds_its_bell_writer_and_is_woken(sockdir):
    os.chmod(sockdir, 0o755)  # uid 65534 must reach the control socket
    d = Daemon(str(sockdir / "usnetd.sock"), sockdir / "usnetd.log", "--mode", "666")
    try:
        r = subprocess.run([sys.executable, "-c", PROGRAM, d.path], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": ROOT}, timeout=LIMIT * 2, cwd="/")
    finally:
        d.stop()
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["uid"] == 65534 and report["proc"] == "refused"  # the old way is closed to it
    assert report["channels"] >= 1 and report["writers"] == report["channels"]
    assert report["select_idle"] and report["select_woken"] and report["first"] == "x"
    assert report["borrowed"] and report["second"] == "hello"  # pumped on the lent doorbell
    assert report["borrowed_again"] and report["after_shutdown"] == ""
