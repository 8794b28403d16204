"""SO_TIMESTAMP(NS) on a TCP socket, usnet's and the kernel's side by side (root, TAP).

Linux's tcp_recvmsg gives, with a timestamp option on, a control message with the receive time
of the last segment the read copied from (tcp_recv_timestamp), of the option's type and layout,
cut with MSG_CTRUNC to a short control buffer, and none at EOF; a listener's connections inherit
the option, and data that arrived before accept() is stamped. usnet's stream sockets refused the
options (ENOPROTOOPT). The same walk runs on a kernel connection (over the namespace's loopback)
and on a usnet one (with a kernel peer over the TAP): the same data, control messages (level,
type, length) and flags, each stamp between the send and the read. (Data that came before the
option was set is left out: whether the kernel stamped it depends on whether any socket of the
host has timestamps on, a global key; usnet gives none, tests/proto/test_tcp_rxstamp.py.)
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time

import pytest

from tests.helpers.util import kernel_stamping
from usnet import socket as us
from usnet.client import Client

pytestmark = pytest.mark.privileged
LIMIT = 10.0  # seconds for any wait: only reached when something is broken
S = socket.SOL_SOCKET
TS, TSNS, TS_NEW, TSNS_NEW = 29, 35, 63, 64


def _when(kind: int, blob: bytes) -> float:
    sec, frac = struct.unpack("=qq", blob)
    ns = kind in (TSNS, TSNS_NEW)
    assert 0 <= frac < (1_000_000_000 if ns else 1_000_000)
    return sec + frac / (1e9 if ns else 1e6)


def _read(s, before: float, *args) -> tuple:
    """recvmsg(*args) once `s` is readable: (data, [(level, type, length)], flags); a whole
    stamp (SO_TIMESTAMPING's ts[0] too) must lie between `before` (the peer's send) and the read."""
    assert select.select([s], [], [], LIMIT)[0]
    data, anc, flags, _ = s.recvmsg(*args)
    after = time.time()
    for _level, kind, blob in anc:
        if len(blob) == 16:
            assert before - 0.5 <= _when(kind, blob) <= after + 0.5, (kind, _when(kind, blob), before, after)
        if len(blob) == 48:  # SCM_TIMESTAMPING: the software stamp in ts[0], ts[1] and ts[2] zero
            assert blob[16:] == bytes(32)
            assert before - 0.5 <= _when(TSNS, blob[:16]) <= after + 0.5, (kind, _when(TSNS, blob[:16]), before)
    return data, [(level, kind, len(blob)) for level, kind, blob in anc], flags


def _walk(s, peer: socket.socket) -> list:
    got = []

    def step(send: bytes, *args) -> None:
        before = time.time()
        if send:
            peer.sendall(send)
        got.append(_read(s, before, *args))

    s.setsockopt(S, TSNS, 1)
    got.append(tuple(s.getsockopt(S, o) for o in (TS, TSNS, TS_NEW, TSNS_NEW)))
    step(b"x1", 1, 256)  # a part of a segment
    before = time.time()
    peer.sendall(b"x2")
    got.append(_read(s, before - 1, 3, 256, socket.MSG_WAITALL))  # the rest of it and the next one
    step(b"y", 100, 256, socket.MSG_PEEK)
    step(b"", 100, 0)  # no control buffer: MSG_CTRUNC
    step(b"z", 100, 20)  # room for the header only: cut
    for opt in (TS, TS_NEW, TSNS_NEW):
        s.setsockopt(S, opt, 1)
        step(b"w", 100, 256)
    s.setsockopt(S, TS, 0)
    step(b"off", 100, 256)
    s.setsockopt(S, TS, 1)
    peer.close()
    step(b"", 100, 256)  # EOF
    return got


def _accepted(lst, connect_to, opt: int = TS, value: int = 1) -> tuple:
    """A listener with a timestamp option (SO_TIMESTAMP): a kernel client sends before accept();
    the accepted connection has the option and the data its stamp."""
    lst.setsockopt(S, opt, value)
    c = socket.create_connection(connect_to, timeout=LIMIT)
    try:
        before = time.time()
        c.sendall(b"early")
        a, _ = lst.accept()
        with a:
            a.settimeout(LIMIT)
            return a.getsockopt(S, opt), _read(a, before, 100, 256)
    finally:
        c.close()


def side_by_side(tap_domain, client, walk, accepted) -> list:
    """[kernel's, usnet's] (walk, accepted): `walk(s, peer)` on a connection to a kernel listener,
    then `accepted(listener, its address)`, first with kernel sockets, then with usnet ones; with
    the kernel's stamping on throughout (it stamps a listener's early data only once it is on)."""
    _d, ifname, usnet_ip, host_ip = tap_domain
    results = []
    with kernel_stamping():
        for make, lst_ip in ((socket.socket, host_ip), (lambda: us.socket(client=client, netif=ifname), usnet_ip)):
            klst = socket.create_server((host_ip, 0))
            klst.settimeout(LIMIT)
            s = make()
            s.settimeout(LIMIT)
            try:
                s.connect(klst.getsockname())
                peer, _ = klst.accept()
                with peer:
                    got = walk(s, peer)
            finally:
                s.close()
                klst.close()
            lst = make()
            lst.settimeout(LIMIT)
            try:
                lst.bind((lst_ip, 0))
                lst.listen()
                results.append((got, accepted(lst, lst.getsockname())))
            finally:
                lst.close()
    return results


def test_so_timestamp_on_tcp_gives_the_arrival_of_the_bytes_read_as_linux(tap_domain):
    client = Client.local(tap_domain[0])
    with contextlib.closing(client):
        results = side_by_side(tap_domain, client, _walk, _accepted)
    kernel, usnet = results
    assert usnet == kernel
    walk, accepted = kernel
    assert walk[0] == (0, 1, 0, 0)
    assert walk[1] == (b"x", [(S, TSNS, 16)], 0) and walk[2] == (b"1x2", [(S, TSNS, 16)], 0)
    assert walk[4] == (b"y", [], socket.MSG_CTRUNC) and walk[5] == (b"z", [(S, TSNS, 4)], socket.MSG_CTRUNC)
    assert walk[-2] == (b"off", [], 0) and walk[-1] == (b"", [], 0)
    assert accepted == (1, (b"early", [(S, TS, 16)], 0))
