"""Attackers of the hostile-client suite that must run in a process of their own.

    python tests/peers/hostile_peer.py ROLE --path SOCK --ready FD [--name PIPE]

  kick-steal  opens pipe PIPE (and decoys), clears O_NONBLOCK on its kick
              doorbell, opens a blocking read end of that pipe of its own,
              and takes the rings back between usnetd's poll and its read,
              which would block if usnetd read through a description the
              client can change (it has one of its own: usnet.abi.doorbell).
  linger-fd   in a network namespace of its own, connects a TCP socket to a
              listener that never reads, fills its send buffer, sets SO_LINGER
              (on, one hour), hands it to usnetd with SCM_RIGHTS in its Hello
              and closes its own copy: usnetd now holds the last reference.

  flow-sender opens a UDP flow on --netif and keeps sending windows of
              datagrams to --to HOST:PORT (the kernel's echo in the test's
              namespace) and reading the echoes; after the first full round
              it writes "CHANNEL RO_FD" into --report and signals readiness,
              and goes on until killed (bounded: at most 100,000 windows).

All signal readiness with one byte on --ready once the attack is made, then
wait to be killed (the listener, the pipes must outlive the attack).
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import random
import select
import signal
import socket
import struct
import sys
import time

from usnet.abi import doorbell
from usnet.abi import protocol as P
from usnet.abi.schema import W_SYNC
from usnet.abi.transport import connect_seqpacket, send_msg
from usnet.client import Client

CLONE_NEWNET = 0x40000000


class _Late(Exception):
    pass


def _late(_signum: int, _frame: object) -> None:
    raise _Late


def kick_steal(args: argparse.Namespace) -> object:
    """Open decoy pipes and a target; make the target's kick blocking. Each round rings every
    decoy's kick and then the target's, so usnetd takes all of them in one batch and serves the
    decoys first; meanwhile we read the target's count back. A usnetd that then reads the
    target's kick from the shared, now blocking description waits forever: the decoys' sync
    words stop moving, and the attack is over (or it ends after a bounded number of rounds)."""
    c = Client.connect(args.path, program="kick-steal")
    busy = connect_seqpacket(args.path, timeout=5)  # a session whose Status keeps usnetd busy a moment
    send_msg(busy, P.encode(P.Hello(P.PROTOCOL_VERSION, "kick-steal")))
    busy.recv(1 << 17)
    status = P.encode(P.Status())
    stolen = 0
    rnd = random.Random(14)
    decoys = [c.open_pipe(f"{args.name}-{i}", ring_size=8, packets=8) for i in range(64)]
    target = c.open_pipe(args.name, ring_size=8, packets=8)
    kick = target._fds[5]  # the write end of the kick doorbell usnetd sleeps on (Client._open appends it)
    fcntl.fcntl(kick, fcntl.F_SETFL, fcntl.fcntl(kick, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    # a read end of our own, blocking, to take the rings back between usnetd's poll and its read
    thief = os.open(f"/proc/self/fd/{kick}", os.O_RDONLY)
    signal.signal(signal.SIGALRM, _late)
    poll = select.poll()
    poll.register(thief, select.POLLIN)
    for n in range(500):
        seqs = [d._words[W_SYNC + d.role] for d in decoys]
        send_msg(busy, status)  # usnetd answers this while we ring: the kicks come in one batch
        for d in decoys:
            doorbell.ring(d._fds[5])
        os.write(kick, b"\x01")
        time.sleep(rnd.uniform(0, 0.003))  # somewhere in usnetd's batch
        if poll.poll(0):
            signal.setitimer(signal.ITIMER_REAL, 0.05)  # usnetd may take it first: do not wait for long
            try:
                os.read(thief, 4096)
                stolen += 1
            except _Late:
                pass
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        end = time.monotonic() + 0.2
        while any(d._words[W_SYNC + d.role] == s for d, s in zip(decoys, seqs)):
            if time.monotonic() > end:
                print(f"kick-steal: usnetd stopped serving after round {n} ({stolen} counts taken back)",
                      file=sys.stderr)
                return c, busy, decoys, target
            time.sleep(0.0005)
        busy.recv(1 << 17)
    print(f"kick-steal: usnetd still serving after 500 rounds ({stolen} counts taken back)", file=sys.stderr)
    return c, busy, decoys, target


def linger_fd(args: argparse.Namespace) -> object:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)  # never accepted, never read
    s = socket.create_connection(ls.getsockname(), timeout=5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    s.setblocking(False)
    for _ in range(100000):  # bounded: until the send buffer is full
        try:
            s.send(b"x" * 65536)
        except BlockingIOError:
            break
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 3600))
    ctl = connect_seqpacket(args.path, timeout=5)
    send_msg(ctl, P.encode(P.Hello(P.PROTOCOL_VERSION, "linger-fd")), [s.fileno()])
    s.close()  # usnetd holds the last reference now
    return ls, ctl  # the listener and the session stay open


def flow_sender(args: argparse.Namespace) -> None:
    """Traffic through a flow until SIGKILL comes, mid-transfer (it never returns)."""
    sock = Client.connect(args.path, program="flow-sender").udp_socket(args.netif, 0)
    host, _, port = args.to.rpartition(":")
    to = (host, int(port))
    ch = sock.channel
    for n in range(100000):
        sock.send_many([b"sender %d %d" % (n, i) for i in range(32)], to)
        got = 0
        for _ in range(64):
            try:
                got += len(sock.recv_many(32 - got, timeout=0.5))
            except BlockingIOError:
                break
            if got >= 32:
                break
        if n == 0:
            with open(args.report, "w") as f:
                f.write(f"{ch.id} {ch._fds[1]}\n")  # the read-only region: its state words outlive us
            os.write(args.ready, b"R")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["kick-steal", "linger-fd", "flow-sender"])
    ap.add_argument("--netif")
    ap.add_argument("--to")
    ap.add_argument("--report")
    ap.add_argument("--path", required=True)
    ap.add_argument("--name", default="steal")
    ap.add_argument("--ready", type=int, required=True)
    args = ap.parse_args()
    if args.role == "flow-sender":
        flow_sender(args)
        return 0
    keep = kick_steal(args) if args.role == "kick-steal" else linger_fd(args)
    os.write(args.ready, b"R")
    while keep is not None:  # until killed
        signal.pause()
    return 0


if __name__ == "__main__":
    main()
