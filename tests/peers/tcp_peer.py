"""A usnet TCP client process for the lifecycle tests (issue 16: nothing is lost).

Run as a child of a test:

    python tests/peers/tcp_peer.py --fd N --netif NAME --to IP:PORT --bytes N --mode MODE [--ready FD]

It reaches an embedded domain over an inherited SEQPACKET control socket
(`--fd`, `Domain.socketpair_session()`), connects a `usnet.socket` to `--to`,
sends `--bytes` bytes of `payload(n)` and then, by `--mode`:

  close-exit  closes the socket and returns from main at once (a normal exit)
  exit        returns from main without closing anything: the exit closes it
  exit-unread waits until the peer's bytes have come, then returns from main without reading
              or closing them: the exit resets the connection (data unread)
  hold        writes "R" on --ready and blocks until killed (SIGKILL)
"""

from __future__ import annotations

import argparse
import os
import random
import select
import signal
import socket
import sys

from usnet import socket as us
from usnet.client import Client


def payload(n: int, seed: int = 16) -> bytes:
    """The bytes a peer sends: reproducible, so the receiver can check a digest."""
    return random.Random(seed).randbytes(n)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--netif", required=True)
    ap.add_argument("--to", required=True)
    ap.add_argument("--bytes", type=int, default=0)
    ap.add_argument("--mode", choices=["close-exit", "exit", "exit-unread", "hold"], required=True)
    ap.add_argument("--ready", type=int)
    args = ap.parse_args()
    us.configure(Client.from_socket(socket.socket(fileno=args.fd)), args.netif)
    host, _, port = args.to.rpartition(":")
    s = us.create_connection((host, int(port)), timeout=30)
    s.sendall(payload(args.bytes))
    if args.mode == "close-exit":
        s.close()
    elif args.mode == "exit-unread":
        select.select([s], [], [], 30)  # the peer's bytes came: left unread
    elif args.mode == "hold":
        os.write(args.ready, b"R")
        while True:
            signal.pause()
    return 0  # returns at once: queued data and the FIN are the exit's to deliver


if __name__ == "__main__":
    sys.exit(main())
