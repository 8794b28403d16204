"""The victim of the hostile-client suite: a pair of usnetd clients moving checked payloads.

Run as a child of a test:

    python tests/peers/victim_peer.py ROLE --path SOCK --name PIPE --progress FD [--ready FD]

  stream     two clients in this process (A and B) open the two ends of user
             pipe PIPE; A sends windows of numbered payloads, each ending in
             its CRC-32, and B receives and checks every one before the next
             window goes. After each window the number of messages checked so
             far goes into the u64 at offset 0 of the --progress memfd, so the
             test sees the traffic move without a pipe that could fill. EOF on
             stdin stops it: both ends close and it exits 0.
  wait-recv  A and B open PIPE, readiness is signalled (one byte on --ready),
             then B blocks in recv() with no timeout. Exit 10: ChannelDefunct,
             11: another OSError, 12: recv returned packets nobody sent.

  flow-stream  one client opens a UDP flow on netif --netif (an ephemeral
             port) and sends windows of numbered, CRC-32-ended datagrams to
             --to HOST:PORT, a kernel UDP echo in a network namespace; each
             echo is checked (payload, order, its source) before the next
             window goes. Progress and EOF on stdin as for `stream`.

Exit codes of `stream` and `flow-stream` say what broke: 3 a payload or checksum is wrong, 4 a
message is missing or out of order, 5 the domain stopped serving (a refill or
a receive timed out), 6 the channel was defuncted, 1 anything else.
"""

from __future__ import annotations

import argparse
import mmap
import os
import select
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from pipe_peer import message

from usnet.client import Client
from usnet.client.channel import ChannelDefunct, NoBuffers

WINDOW = 32  # messages in flight at once (well under the ring and the pool)
WAIT = 5.0  # seconds a refill or a receive may take before the domain counts as stalled


def payload(seq: int, make=message) -> bytes:
    body = make(seq)
    return body + zlib.crc32(body).to_bytes(4, "little")


def flow_message(i: int) -> bytes:
    """The i-th datagram of a flow victim: as `message`, short enough for one 1,500-byte frame."""
    size = 1 + (i * 37) % 1200
    return i.to_bytes(4, "little") + bytes((i * 7 + j) & 0xFF for j in range(size))


def check(seq: int, data: bytes, make=message) -> int:
    """0 if `data` is payload `seq`, else the exit code of what is wrong with it."""
    body, crc = data[:-4], data[-4:]
    if len(data) < 8 or zlib.crc32(body).to_bytes(4, "little") != crc:
        print(f"message {seq}: checksum wrong ({len(data)} bytes)", file=sys.stderr)
        return 3
    got = int.from_bytes(body[:4], "little")
    if got != seq & 0xFFFFFFFF:
        print(f"message {seq} expected, message {got} received: one lost or reordered", file=sys.stderr)
        return 4
    if body != make(seq):
        print(f"message {seq}: content wrong with a good checksum", file=sys.stderr)
        return 3
    return 0


def stream(a, b, progress: memoryview) -> int:
    seq = 0
    while not select.select([sys.stdin], [], [], 0)[0]:
        for k in range(seq, seq + WINDOW):
            a.send_bytes(payload(k))
        for k in range(seq, seq + WINDOW):
            if (rc := check(k, b.recv_bytes(timeout=WAIT))) != 0:
                return rc
        seq += WINDOW
        progress[0] = seq
    a.close()
    b.close()
    print(f"done {seq}", flush=True)
    return 0


def flow_stream(sock, to: tuple[str, int], progress: memoryview) -> int:
    """Windows of datagrams to the kernel's echo, each echo checked in order (see the module doc)."""
    seq = 0
    while not select.select([sys.stdin], [], [], 0)[0]:
        sock.send_many([payload(k, flow_message) for k in range(seq, seq + WINDOW)], to)
        k = seq
        while k < seq + WINDOW:
            for data, addr in sock.recv_many(seq + WINDOW - k, timeout=WAIT):
                if tuple(addr) != to:
                    print(f"message {k}: came from {addr}, not {to}", file=sys.stderr)
                    return 3
                if (rc := check(k, data, flow_message)) != 0:
                    return rc
                k += 1
        seq += WINDOW
        progress[0] = seq
    sock.close()
    print(f"done {seq}", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["stream", "wait-recv", "flow-stream"])
    ap.add_argument("--path", required=True)
    ap.add_argument("--name", default="victim")
    ap.add_argument("--netif", help="flow-stream: the netif of the flow")
    ap.add_argument("--to", help="flow-stream: HOST:PORT of the kernel's echo")
    ap.add_argument("--progress", type=int)
    ap.add_argument("--ready", type=int)
    args = ap.parse_args()
    if args.role == "flow-stream":
        host, _, port = args.to.rpartition(":")
        sock = Client.connect(args.path, program="victim-flow").udp_socket(args.netif, 0)
        sock.settimeout(WAIT)
        progress = memoryview(mmap.mmap(args.progress, 8)).cast("Q")
        try:
            return flow_stream(sock, (host, int(port)), progress)
        except (BlockingIOError, NoBuffers) as e:
            print(f"stalled: {e!r}", file=sys.stderr)
            return 5
        except ChannelDefunct as e:
            print(f"defunct: {e!r}", file=sys.stderr)
            return 6
    a = Client.connect(args.path, program="victim-a").open_pipe(args.name)
    b = Client.connect(args.path, program="victim-b").open_pipe(args.name)
    a.settimeout(WAIT)
    if args.role == "wait-recv":
        os.write(args.ready, b"R")
        try:
            b.recv()
        except ChannelDefunct as e:
            print(f"recv: {e!r}", file=sys.stderr)
            return 10
        except OSError as e:
            print(f"recv: {e!r}", file=sys.stderr)
            return 11
        return 12
    progress = memoryview(mmap.mmap(args.progress, 8)).cast("Q")
    try:
        return stream(a, b, progress)
    except (BlockingIOError, NoBuffers) as e:
        print(f"stalled: {e!r}", file=sys.stderr)
        return 5
    except ChannelDefunct as e:
        print(f"defunct: {e!r}", file=sys.stderr)
        return 6


if __name__ == "__main__":
    sys.exit(main())
