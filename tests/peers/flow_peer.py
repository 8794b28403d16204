"""A client process holding a UDP flow on an embedded domain's netif, for the crash tests.

Run as a child of a test:

    python tests/peers/flow_peer.py --fd N --netif NAME [--port P] [--to IP:PORT]
                                    [--send N] [--keep N] --ready FD

It reaches the domain over an inherited SEQPACKET control socket (`--fd`, an
embedded domain's `socketpair_session()`), opens a UDP socket on the netif
(`--port`, 0 for an ephemeral one), sends `--send` datagrams to `--to`,
allocates `--keep` packets and never gives them back, writes one line
"R <local port>\\n" on the readiness pipe, then blocks until killed.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

from usnet.client import Client


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--netif", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--to")
    ap.add_argument("--send", type=int, default=0)
    ap.add_argument("--keep", type=int, default=0)
    ap.add_argument("--ready", type=int, required=True)
    args = ap.parse_args()
    client = Client.from_socket(socket.socket(fileno=args.fd))
    sock = client.udp_socket(args.netif, args.port)
    if args.send:
        host, _, port = args.to.rpartition(":")
        sock.send_many([b"peer %d" % i for i in range(args.send)], (host, int(port)))
    kept: list[int] = []
    while len(kept) < args.keep:
        kept += sock.channel.alloc(args.keep - len(kept))
    os.write(args.ready, b"R %d\n" % sock.getsockname()[1])
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
