"""SO_TIMESTAMPING's transmit stamps on TCP, usnet's and the kernel's side by side (root, TAP).

Linux stamps the last byte of each send on a stream: SCM_TSTAMP_SCHED (1) as its segment enters
the device's queue, SCM_TSTAMP_SND (0) as the driver takes it, SCM_TSTAMP_ACK (2) when the
cumulative ACK covers it; with OPT_ID ee_data is that byte's offset from the stream's position
when OPT_ID was set (SND.UNA, or with OPT_ID_TCP the next byte written). usnet gave none: its
error queue stayed empty (EAGAIN). Each walk runs on a kernel socket connected to a kernel
listener over the TAP, then on a usnet one: the same records in the same order (ee_* fields,
the control messages' levels, types and lengths, the flags, the payload and the address), the
same readiness, the stamps' times between the send and the read.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time

import pytest

from tests.interop.test_sockopts_timestamping import _tsing
from tests.interop.test_tcp_rxstamp import side_by_side
from usnet.client import Client

pytestmark = pytest.mark.privileged
LIMIT = 10.0  # seconds for any wait: only reached when something is broken
S = socket.SOL_SOCKET
TSNS, TSING = 35, 37
TX_SW, SW, OPT_ID, TSONLY, ID_TCP = 1 << 1, 1 << 4, 1 << 7, 1 << 11, 1 << 16
TX_SCHED, TX_ACK = 1 << 8, 1 << 9
ALL = TX_SW | TX_SCHED | TX_ACK | SW | TSONLY | OPT_ID


def _stamp(s, ancbufsize: int, before: float) -> tuple:
    """The next error-queue record, waited for (bounded): (payload, [(level, type, length)],
    flags, address, sock_extended_err, offender); SCM_TIMESTAMPING's time after `before`."""
    deadline = time.monotonic() + LIMIT
    while True:
        assert select.select([s], [], [], LIMIT)[0], "no stamp came"
        s.settimeout(0)
        try:
            data, anc, mflags, addr = s.recvmsg(100, ancbufsize, socket.MSG_ERRQUEUE)
            break
        except BlockingIOError:
            assert time.monotonic() < deadline, "the socket stayed readable with nothing queued"
        finally:
            s.settimeout(LIMIT)
    ee = None
    for level, kind, blob in anc:
        if kind == TSING and len(blob) == 48:
            _tsing(blob, before, time.time())
        if (level, kind) == (socket.IPPROTO_IP, 11):  # IP_RECVERR: sock_extended_err, offender
            ee = (struct.unpack_from("=IBBBBII", blob), blob[16:])
    return data, [(level, kind, len(blob)) for level, kind, blob in anc], mflags, addr, ee


def _empty(s) -> tuple:
    """(readable, what recvmsg(MSG_ERRQUEUE) says) of a queue that should be empty."""
    ready = bool(select.select([s], [], [], 0.3)[0])
    s.settimeout(0)
    try:
        s.recvmsg(100, 256, socket.MSG_ERRQUEUE)
        return ready, "a record"
    except BlockingIOError:
        return ready, "EAGAIN"
    finally:
        s.settimeout(LIMIT)


def _send(s, peer: socket.socket, data: bytes, records: int, ancbufsize: int = 256) -> list:
    """`data` in one send (all taken), read whole by the kernel peer, then `records` stamps."""
    before = time.time()
    assert s.send(data) == len(data)
    got = b""
    while len(got) < len(data):
        chunk = peer.recv(65536)
        assert chunk
        got += chunk
    return [_stamp(s, ancbufsize, before) for _ in range(records)]


def _walk(s, peer: socket.socket) -> list:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(S, TSING, ALL)  # OPT_ID set on a connected socket: counts from SND.UNA
    got: list = [_send(s, peer, b"a" * 10, 3)]  # SCHED, SND, ACK of byte 9
    got.append(_send(s, peer, b"b" * 5000, 3))  # split across segments: stamped once, at 5009
    got.append(_send(s, peer, b"c", 3, 64))  # room for SCM_TIMESTAMPING only: MSG_CTRUNC
    got.append(_empty(s))
    s.setsockopt(S, TSING, TX_SW | SW | TSONLY)  # no OPT_ID: ee_data 0; SND alone
    got.append(_send(s, peer, b"d" * 7, 1))
    s.setsockopt(S, TSING, TX_ACK | TSONLY | OPT_ID)  # OPT_ID newly set: offsets start again
    got.append(_send(s, peer, b"e" * 4, 1))  # ACK alone, no SOFTWARE: IP_RECVERR only
    s.setsockopt(S, TSING, TX_ACK | TSONLY | OPT_ID | ID_TCP)  # OPT_ID kept: no restart
    got.append(_send(s, peer, b"f" * 3, 1))
    s.setsockopt(S, TSNS, 1)
    s.setsockopt(S, TSING, TX_SW | SW | TSONLY | OPT_ID)
    got.append(_send(s, peer, b"g" * 2, 1))  # SCM_TIMESTAMPNS first
    s.setsockopt(S, TSING, 0)
    got.append(_send(s, peer, b"h", 0))
    got.append(_empty(s))
    got.append(s.getsockopt(S, socket.SO_ERROR))
    return got


def _accepted(lst, connect_to) -> tuple:
    """A listener's flags (OPT_ID refused there) taken by its connection: a send's stamps."""
    lst.setsockopt(S, TSING, TX_SW | TX_ACK | SW | TSONLY)
    c = socket.create_connection(connect_to, timeout=LIMIT)
    try:
        a, _ = lst.accept()
        with a:
            a.settimeout(LIMIT)
            return a.getsockopt(S, TSING), _send(a, c, b"hello", 2), _empty(a)
    finally:
        c.close()


def test_tcp_transmit_stamps_are_on_the_error_queue_as_linux(tap_domain):
    """SCHED, SND and ACK reports of each send's last byte, in that order, with the offset of that
    byte under OPT_ID (restarted when OPT_ID is newly set, not when set again), 0 without; only
    the kinds asked for; SCM_TIMESTAMPING with SOFTWARE (after SCM_TIMESTAMPNS), cut to a short
    buffer; no payload under OPT_TSONLY, no address, MSG_ERRQUEUE; readable until read, SO_ERROR
    untouched; a listener's flags inherited by its connections."""
    client = Client.local(tap_domain[0])
    with contextlib.closing(client):
        kernel, usnet = side_by_side(tap_domain, client, _walk, _accepted)
    assert usnet == kernel
    walk, accepted = kernel
    ee = [[r[4][0] if r[4] else None for r in step] for step in walk if isinstance(step, list)]
    assert ee[0] == [(42, 4, 0, 0, 0, 1, 9), (42, 4, 0, 0, 0, 0, 9), (42, 4, 0, 0, 0, 2, 9)]
    assert [e[-1] for e in ee[1]] == [5009] * 3 and ee[2] == [None] * 3  # (IP_RECVERR cut off)
    assert ee[3] == [(42, 4, 0, 0, 0, 0, 0)] and ee[4] == [(42, 4, 0, 0, 0, 2, 3)]
    assert ee[5] == [(42, 4, 0, 0, 0, 2, 6)] and ee[6] == [(42, 4, 0, 0, 0, 0, 8)] and ee[7] == []
    first = walk[0][0]
    assert first[:4] == (b"", [(S, TSING, 48), (socket.IPPROTO_IP, 11, 32)], socket.MSG_ERRQUEUE, None)
    assert walk[2][0][1:3] == ([(S, TSING, 48)], socket.MSG_ERRQUEUE | socket.MSG_CTRUNC)
    assert walk[3] == walk[-2] == (False, "EAGAIN") and walk[-1] == 0
    assert walk[5][0][1] == [(socket.IPPROTO_IP, 11, 32)]
    assert walk[7][0][1] == [(S, TSNS, 16), (S, TSING, 48), (socket.IPPROTO_IP, 11, 32)]
    assert accepted[0] == TX_SW | TX_ACK | SW | TSONLY
    assert [r[4][0][5:] for r in accepted[1]] == [(0, 0), (2, 0)] and accepted[2] == (False, "EAGAIN")
