"""A client process at the far end of a user pipe, for the cross-process tests.

Run as a child of a test:

    python tests/peers/pipe_peer.py ROLE (--fd N | --path SOCK) --name PIPE [--ready FD] [--count N]

It reaches the domain either over an inherited SEQPACKET control socket
(`--fd`, an embedded domain's `socketpair_session()`) or by connecting to usnetd
(`--path`), opens the named pipe, and plays ROLE:

  sender    keeps some packets, sends some, signals readiness (one byte on
            --ready), then keeps allocating and sending until killed
  sender-block   the same, but after the readiness byte it blocks forever
            (nothing more on the ring) until killed
  receiver  receives some packets and keeps them, signals readiness, then keeps
            receiving and freeing until killed
  send-exit sends --count messages made by `message(i)`, then returns from main
            without closing anything: a normal interpreter exit
  echo      checks --count messages made by `message(i)` and sends each back;
            exits 0 when all were right, 3 on a payload mismatch

Exit codes other than 0 tell the test what went wrong; a killed peer is the point.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

from usnet.client import Client

KEEP = 16  # packets the peer allocates (or receives) and never gives back
FIRST = 32  # packets sent before the readiness byte


def message(i: int) -> bytes:
    """The i-th test message: its number, then a length and content that depend on it."""
    size = 1 + (i * 37) % 1500
    body = bytes((i * 7 + j) & 0xFF for j in range(size))
    return i.to_bytes(4, "little") + body


def connect(args: argparse.Namespace) -> Client:
    if args.fd is not None:
        return Client.from_socket(socket.socket(fileno=args.fd))
    return Client.connect(args.path)


def ready(args: argparse.Namespace) -> None:
    if args.ready is not None:
        os.write(args.ready, b"R")


def fill(ch, pkts: list[int], tag: int) -> None:
    for p in pkts:
        ch.write(p, tag.to_bytes(4, "little") * 16)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["sender", "sender-block", "receiver", "send-exit", "echo"])
    ap.add_argument("--fd", type=int)
    ap.add_argument("--path")
    ap.add_argument("--name", required=True)
    ap.add_argument("--ready", type=int)
    ap.add_argument("--count", type=int, default=1000)
    args = ap.parse_args()
    client = connect(args)
    ch = client.open_pipe(args.name)

    if args.role in ("sender", "sender-block"):
        kept = []
        while len(kept) < KEEP:
            kept += ch.alloc(KEEP - len(kept))
        sent = 0
        while sent < FIRST:
            pkts = ch.alloc(FIRST - sent)
            fill(ch, pkts, sent)
            sent += ch.send(pkts)
        ready(args)
        if args.role == "sender-block":
            while True:
                signal.pause()
        n = 0
        while True:
            pkts = ch.alloc(8)
            fill(ch, pkts, n)
            done = ch.send(pkts)
            if done < len(pkts):
                ch.free(pkts[done:])
            n += 1

    if args.role == "receiver":
        kept = []
        while len(kept) < KEEP:
            kept += ch.recv(KEEP - len(kept))
        ready(args)
        while True:
            ch.free(ch.recv())

    if args.role == "send-exit":
        for i in range(args.count):
            ch.send_bytes(message(i))
        ready(args)
        return 0  # the channel and the client are left open: exit closes them

    # echo
    ready(args)
    for i in range(args.count):
        data = ch.recv_bytes(timeout=10)
        if data != message(i):
            print(f"message {i} wrong: {data[:8]!r}... ({len(data)} bytes)", file=sys.stderr)
            return 3
        ch.send_bytes(data)
    ch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
