"""IP_RECVERR on a TCP socket, usnet's and the kernel's side by side (root, TAP).

Linux's tcp_v4_err: an ICMP error about an established connection is only a soft error
(sk_err_soft, reported if the connection later times out), unless the socket has IP_RECVERR:
then it is the socket's error at once (sk_err), which SO_ERROR, recv or send report once while
the connection goes on; the error queue of a connected TCP socket stays empty
(recvmsg(MSG_ERRQUEUE) is EAGAIN). The same walk runs on a kernel connection (in the test's
namespace, over its loopback) and on a usnet one (to a kernel listener over the TAP), each hit by
the same forged "host unreachable" quoting its segment at the sequence number in flight, sent
from a raw socket; a packet socket reads the connection's SYN for that number.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import time

import pytest

from tests.helpers.util import outcome
from usnet import socket as us
from usnet.client import Client

pytestmark = pytest.mark.privileged
LIMIT = 10.0  # seconds for any wait: only reached when something is broken
ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
IP_RECVERR = 11


def _sum(b: bytes) -> bytes:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return struct.pack("!H", ~s & 0xFFFF)


def _host_unreachable(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    """An ICMP host unreachable (type 3 code 1) quoting a TCP segment src:sport -> dst:dport at `seq`."""
    ip = struct.pack("!BBHHHBB2s4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, b"\0\0",
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + _sum(ip) + ip[12:]
    body = struct.pack("!BBHI", 3, 1, 0, 0) + ip + struct.pack("!HHI", sport, dport, seq)
    return body[:2] + _sum(body) + body[4:]


def _syn_seq(cap: socket.socket, sport: int) -> int:
    """The sequence number of the SYN from port `sport` that the packet socket `cap` saw."""
    deadline = time.monotonic() + LIMIT
    for _ in range(10000):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([cap], [], [], left)[0]:
            break
        f = cap.recv(65535)
        if len(f) < 54 or f[12:14] != b"\x08\x00" or f[23] != 6:
            continue
        t = 14 + (f[14] & 0xF) * 4
        if struct.unpack_from("!H", f, t)[0] == sport and f[t + 13] & 0x12 == 0x02:
            return struct.unpack_from("!I", f, t + 4)[0]
    raise AssertionError("no SYN seen")


def _walk(s, peer: socket.socket, hit) -> list:
    """The same calls on a connected socket `s` (non-blocking), hit by ICMP errors (`hit`)."""
    got = []
    readable = lambda: bool(select.select([s], [], [], LIMIT)[0])
    got.append(("before", select.select([s], [], [], 0)[0] == [], s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
    s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    hit()
    got.append(("so_error", readable(), select.select([s], [s], [], 0)[1] == [s],
                s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR),
                outcome(lambda: s.recvmsg(100, 1024, socket.MSG_ERRQUEUE)), outcome(lambda: s.recv(100)),
                select.select([s], [], [], 0)[0] == []))  # taken: no longer readable
    hit()
    got.append(("recv", readable(), outcome(lambda: s.recv(100)), outcome(lambda: s.recv(100))))
    s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 0)
    hit()
    peer.sendall(b"z")  # behind the error on the same path: once it is read, the error was seen
    got.append(("soft", readable(), s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), outcome(lambda: s.recv(100))))
    s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    hit()
    got.append(("send", readable(), outcome(lambda: s.send(b"x")), outcome(lambda: s.send(b"y"))))
    peer.settimeout(LIMIT)
    got.append(("peer", peer.recv(10), s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
    return got


def _connected(make, listen_ip: str, capture_on: str):
    """(socket, accepted peer, the SYN's sequence number): a connection from `make()` to a kernel
    listener on `listen_ip`, its SYN read on the interface `capture_on`."""
    lst = socket.socket()
    lst.bind((listen_ip, 0))
    lst.listen()
    lst.settimeout(LIMIT)
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    cap.bind((capture_on, 0))
    try:
        s = make()
        s.settimeout(LIMIT)
        s.connect(lst.getsockname())
        peer, _ = lst.accept()
        isn = _syn_seq(cap, s.getsockname()[1])
    finally:
        cap.close()
        lst.close()
    s.setblocking(False)
    return s, peer, isn


def test_ip_recverr_makes_an_icmp_error_the_tcp_sockets_error_at_once_as_linux(tap_domain):
    d, ifname, usnet_ip, host_ip = tap_domain
    client = Client.local(d)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    results = []
    try:
        for make, src, capture_on in ((socket.socket, host_ip, "lo"),
                                      (lambda: us.socket(client=client, netif=ifname), usnet_ip, ifname)):
            s, peer, isn = _connected(make, host_ip, capture_on)
            try:
                sport, dport = s.getsockname()[1], s.getpeername()[1]
                icmp = _host_unreachable(src, host_ip, sport, dport, (isn + 1) & 0xFFFFFFFF)
                results.append(_walk(s, peer, lambda i=icmp, a=src: raw.sendto(i, (a, 0))))
            finally:
                s.close()
                peer.close()
    finally:
        raw.close()
    kernel, usnet = results
    assert usnet == kernel
    assert kernel[1][3:6] == (errno.EHOSTUNREACH, 0, "EAGAIN")
    assert kernel[2][2] == "EHOSTUNREACH" and kernel[4][2] == "EHOSTUNREACH" and kernel[5][1] == b"y"


def _connect_walk(s, listener: tuple, capture_on: str, raw: socket.socket, src: str, recverr: bool) -> list:
    """A non-blocking connect to a listener whose full accept queue drops its SYN, ended by a
    forged host unreachable quoting that SYN: readiness, the error queue (read twice) and
    SO_ERROR after it, then recv."""
    if recverr:
        s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    cap.bind((capture_on, 0))
    try:
        s.setblocking(False)
        got = [outcome(lambda: s.connect(listener))]
        sport = s.getsockname()[1]
        isn = _syn_seq(cap, sport)
    finally:
        cap.close()
    raw.sendto(_host_unreachable(src, listener[0], sport, listener[1], isn), (src, 0))
    r, w, _ = select.select([s], [s], [], LIMIT)
    got.append((r == [s], w == [s]))
    data, anc, flags, addr = s.recvmsg(100, 1024, socket.MSG_ERRQUEUE)
    ((level, kind, blob),) = anc
    ee = struct.unpack_from("=IBBBBII", blob)
    family, _port, offender = struct.unpack_from("=H2s4s", blob, 16)
    got.append((data[:4] == struct.pack("!HH", sport, listener[1]), len(data), flags, addr, level, kind, len(blob),
                ee, family, socket.inet_ntoa(offender) == listener[0]))
    got.append((outcome(lambda: s.recvmsg(100, 1024, socket.MSG_ERRQUEUE)), s.getsockopt(socket.SOL_SOCKET,
                                                                                          socket.SO_ERROR)))
    got.append(outcome(lambda: s.recv(10)))
    return got


def test_an_icmp_error_that_ends_a_connect_is_on_the_error_queue_as_linux(tap_domain):
    """Linux's tcp_v4_err queues the ICMP error that ends a connect in SYN-SENT (ip_icmp_error,
    with or without IP_RECVERR) with the quoted TCP header as its payload; reading it clears the
    socket's error. usnet's queue stayed empty (EAGAIN)."""
    d, ifname, usnet_ip, host_ip = tap_domain
    client = Client.local(d)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    lst = socket.socket()
    lst.bind((host_ip, 0))
    lst.listen(0)
    where = lst.getsockname()
    filler = socket.create_connection(where, timeout=LIMIT)  # the queue is full: SYNs are dropped
    results = []
    try:
        for make, src, capture_on in ((socket.socket, host_ip, "lo"),
                                      (lambda: us.socket(client=client, netif=ifname), usnet_ip, ifname)):
            for recverr in (True, False):
                with make() as s:
                    results.append(_connect_walk(s, where, capture_on, raw, src, recverr))
    finally:
        raw.close()
        filler.close()
        lst.close()
    kernel, usnet = results[:2], results[2:]
    assert usnet == kernel
    assert kernel[0][0] == "EINPROGRESS" and kernel[0][1] == (True, True)
    assert kernel[0][2] == (True, 8, socket.MSG_ERRQUEUE, where, socket.IPPROTO_IP, IP_RECVERR, 32,
                            (errno.EHOSTUNREACH, 2, 3, 1, 0, 0, 0), socket.AF_INET, True)
    assert kernel[0][3] == ("EAGAIN", 0) and kernel[0][4] == b""
