"""The twelfth sweep's program: paramiko (a pure-Python SSH client: a transport thread per
connection, sockets with short timeouts, select) against a real OpenSSH sshd on the kernel's side,
for tests/interop/test_programs12.py (issue 16).

    python ssh_client.py NAME HOST PORT KEY KNOWN_HOSTS [ARGS...]

KEY is the client's private key (authorised by the sshd), KNOWN_HOSTS holds the sshd's host key
(anything else is refused). Each runs the same on kernel sockets and under `usnet run`; what it
checks must hold on both, and what it prints (one JSON line) the test compares between the two.
"""

import os
import sys
import threading
import time

import paramiko
from peerout import LIMIT, MB, out, sha

name, host, port, key, known, args = (sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5],
                                      sys.argv[6:])


def err(e: BaseException) -> list:
    """An exception as the program saw it: its type's qualified name, errno and message."""
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):  # (its errno: None; each address's own)
        return [f"{type(e).__module__}.{type(e).__qualname__}", [err(x) for x in e.errors.values()]]
    return [f"{type(e).__module__}.{type(e).__qualname__}", getattr(e, "errno", None), str(e)]


def client(**kw) -> paramiko.SSHClient:
    """A client that knows the sshd's host key alone (RejectPolicy), connected with KEY."""
    c = paramiko.SSHClient()
    c.load_host_keys(known)
    c.set_missing_host_key_policy(paramiko.RejectPolicy())
    c.connect(host, port, username="root", key_filename=key, look_for_keys=False, allow_agent=False,
              timeout=kw.pop("timeout", LIMIT), banner_timeout=LIMIT, auth_timeout=LIMIT, **kw)
    return c


def read_all(read, n: int = 4 * MB) -> bytes:
    """What `read` (a channel file's `read`, a channel's `recv`) gives to its EOF, in at most `n` reads."""
    got = bytearray()
    for _ in range(n):
        b = read(1 << 16)
        if not b:
            break
        got += b
    return bytes(got)


def exec_() -> dict:
    """exec_command: `cat` fed 1 MB of random on its stdin (from a thread) while its stdout is read
    back whole; `seq` writing 1.3 MB; a command that writes to stderr and exits 7. Each output's
    SHA-256 against what was sent or what seq writes, and the exit statuses."""
    c = client()
    data = os.urandom(MB)
    stdin, stdout, _stderr = c.exec_command("cat", timeout=LIMIT)

    def feed() -> None:
        stdin.write(data)
        stdin.channel.shutdown_write()  # cat's EOF

    t = threading.Thread(target=feed)
    t.start()
    echoed = read_all(stdout.read)
    t.join(LIMIT)
    res: dict = {"cat": [sha(echoed) == sha(data), stdout.channel.recv_exit_status()]}
    _stdin, stdout, _stderr = c.exec_command("seq 1 200000", timeout=LIMIT)
    want = "".join(f"{i}\n" for i in range(1, 200001)).encode()
    got = read_all(stdout.read)
    res["seq"] = [len(got), sha(got) == sha(want), stdout.channel.recv_exit_status()]
    _stdin, stdout, stderr = c.exec_command("echo out; echo err >&2; exit 7", timeout=LIMIT)
    res["status"] = [read_all(stdout.read).decode(), read_all(stderr.read).decode(), stdout.channel.recv_exit_status()]
    c.close()
    return res


def sftp() -> dict:
    """SFTP put and get of a 4 MB file of random (args: a directory of the server's): its SHA-256
    back, the size the server says, the file listed."""
    where = args[0]
    local = f"{where}/local-{os.getpid()}.bin"
    data = os.urandom(4 * MB)
    with open(local, "wb") as f:
        f.write(data)
    c = client()
    s = c.open_sftp()
    remote = f"{where}/remote-{os.getpid()}.bin"
    attrs = s.put(local, remote)
    back = f"{where}/back-{os.getpid()}.bin"
    s.get(remote, back)
    with open(back, "rb") as f:
        got = f.read()
    with s.open(remote, "rb") as f:  # read through a file object too (prefetched)
        f.prefetch()
        again = f.read()
    listed = os.path.basename(remote) in s.listdir(where)
    s.remove(remote)
    s.close()
    c.close()
    for p in (local, back):
        os.unlink(p)
    return {"put": attrs.st_size, "get": sha(got) == sha(data), "read": sha(again) == sha(data), "listed": listed}


def forward() -> dict:
    """A direct-tcpip channel through the sshd to an echo server (args: its port): 1 MB sent
    from a thread and echoed back whole, then the channel's EOF both ways."""
    echo = int(args[0])
    c = client()
    ch = c.get_transport().open_channel("direct-tcpip", (host, echo), ("127.0.0.1", 40000), timeout=LIMIT)
    ch.settimeout(LIMIT)
    data = os.urandom(MB)

    def feed() -> None:
        ch.sendall(data)
        ch.shutdown_write()

    t = threading.Thread(target=feed)
    t.start()
    got = read_all(ch.recv, MB)
    t.join(LIMIT)
    res = {"echoed": [len(got), sha(got) == sha(data)], "eof": ch.eof_received}
    ch.close()
    c.close()
    return res


def keepalive() -> dict:
    """Transport keepalive (1 s) on an idle connection: paramiko sends its keepalive global request
    from its transport thread when the socket's 0.1 s read timeouts have added up to it; two sent
    while idle (waited for, bounded); then the connection still works."""
    c = client()
    tr = c.get_transport()
    tr.set_keepalive(1)
    pk = tr.packetizer
    before = pk._Packetizer__sent_packets  # (paramiko keeps no public count)
    for _ in range(int(LIMIT / 0.05)):  # (a poll of its count: nothing tells us)
        if pk._Packetizer__sent_packets >= before + 2:
            break
        time.sleep(0.05)
    sent = pk._Packetizer__sent_packets - before
    _stdin, stdout, _stderr = c.exec_command("echo alive", timeout=LIMIT)
    res = {"keepalives": sent >= 2, "then": stdout.read().decode(), "active": tr.is_active()}
    c.close()
    return res


def after_kill(c: paramiko.SSHClient, res: dict) -> dict:
    """`res` and how a connection whose server process was killed ends: the transport inactive
    (waited for, bounded), what its thread met, and what the next exec_command raises."""
    tr = c.get_transport()
    for _ in range(int(LIMIT / 0.01)):  # (the transport thread ends once it read the end)
        if not tr.is_active():
            break
        time.sleep(0.01)
    res["active"] = tr.is_active()
    res["ended-by"] = err(tr.saved_exception) if tr.saved_exception else None
    try:
        c.exec_command("true", timeout=LIMIT)
        res["next"] = None
    except Exception as e:
        res["next"] = err(e)
    c.close()
    return res


def killed() -> dict:
    """The server's process of this connection killed (SIGKILL) mid-session, by a command run on
    it once it said it is up and read our word: the command's channel ends without an exit
    status, the transport goes inactive, and the next exec_command raises what paramiko raises."""
    c = client()
    stdin, stdout, _stderr = c.exec_command("echo up; read x; kill -9 $PPID; sleep 10", timeout=LIMIT)
    res: dict = {"first": stdout.readline()}  # the session up, then its end on our word
    stdin.write(b"go\n")
    stdin.flush()
    res["rest"] = read_all(stdout.read).decode()
    res["status"] = stdout.channel.recv_exit_status()  # -1: no exit status came
    return after_kill(c, res)


def killed_streaming() -> dict:
    """As killed, the server's process killed (a background kill, 50 ms on) while it streams
    /dev/zero to us as fast as we read it: the bytes before the end all zero, then the same
    ends (whether its kernel said FIN or, with our window adjusts unread, RST)."""
    c = client()
    stdin, stdout, _stderr = c.exec_command("echo up; read x; (sleep 0.05; kill -9 $PPID) & exec cat /dev/zero",
                                            timeout=LIMIT)
    res: dict = {"first": stdout.readline()}
    stdin.write(b"go\n")
    stdin.flush()
    got = read_all(stdout.read, 1 << 20)  # (64 GB at most: the kill ends it long before)
    res["zeros"] = len(got) > 0 and got.count(0) == len(got)
    res["status"] = stdout.channel.recv_exit_status()
    return after_kill(c, res)


def timeouts() -> dict:
    """connect(timeout=0.5) to an address of the link nobody has (args: it, and a silent port:
    a listener that never speaks), banner_timeout=0.5 against the silent one, and a refused port:
    what paramiko raises and the time it took in timeouts (rounded)."""
    dead, silent = args[0], int(args[1])
    warm = client()  # the process's first connection made: under usnet its connector's setup comes
    warm.close()  # before the first timeout's wait (as the eleventh sweep's)
    res = {}
    for what, addr, kw in (("connect", (dead, port), {"timeout": 0.5}),
                           ("banner", (host, silent), {"timeout": LIMIT, "banner_timeout": 0.5}),
                           ("refused", (host, port + 1), {"timeout": 0.5})):
        c = paramiko.SSHClient()
        c.set_missing_host_key_policy(paramiko.RejectPolicy())
        t0 = time.monotonic()
        try:
            c.connect(addr[0], addr[1], username="root", key_filename=key, look_for_keys=False,
                      allow_agent=False, auth_timeout=LIMIT, **{"banner_timeout": LIMIT, **kw})
            got = None
        except Exception as e:
            got = err(e)
        res[what] = [got, round((time.monotonic() - t0) / 0.5)]
        c.close()
    return res


PROGRAMS = {"exec": exec_, "sftp": sftp, "forward": forward, "keepalive": keepalive, "killed": killed,
            "killed-streaming": killed_streaming, "timeouts": timeouts}

if name not in PROGRAMS:
    raise SystemExit(f"no program {name}")
out(PROGRAMS[name]())
