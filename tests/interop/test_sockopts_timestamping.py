"""SO_TIMESTAMPING on UDP and TCP, usnet's and the kernel's side by side (root, TAP).

The option was ENOPROTOOPT on usnet. Each walk runs on a kernel socket and on a usnet one: the
same flags set (valid, unknown, and the combinations sock_set_timestamping refuses), the same
errors, the same values read back through SO_TIMESTAMPING, SO_TIMESTAMPING_NEW (as an int and as
struct so_timestamping) and the SO_TIMESTAMP options that share its _NEW flag. Then data from a
kernel peer read with recvmsg: the same control messages (level, type, length, MSG_CTRUNC for a
short buffer), and SCM_TIMESTAMPING's ts[0] between the send and the read, ts[1] and ts[2] zero.
(SOFTWARE without RX_SOFTWARE is left out: Linux then reports the stamps it takes only while some
socket of the host asks for them, a global key; usnet reports none.)
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time

import pytest

from tests.helpers.util import kernel_stamping
from tests.interop.test_sockopts_linux import LIMIT, _outcome
from tests.interop.test_sockopts_rxinfo import _pair
from tests.interop.test_tcp_rxstamp import _accepted, _read, side_by_side
from usnet import socket as us
from usnet.client import Client

pytestmark = pytest.mark.privileged
S = socket.SOL_SOCKET
TS, TSNS, TS_NEW, TSNS_NEW, TSING, TSING_NEW = 29, 35, 63, 64, 37, 65
TX_SW, RX_SW, SW, OPT_ID, OPT_CMSG, TSONLY, STATS, BIND_PHC, ID_TCP, RX_FILTER = (
    1 << 1, 1 << 3, 1 << 4, 1 << 7, 1 << 10, 1 << 11, 1 << 12, 1 << 15, 1 << 16, 1 << 17)


def _reads(s) -> tuple:
    return (_outcome(s, S, TSING), _outcome(s, S, TSING, buflen=16), _outcome(s, S, TSING_NEW),
            _outcome(s, S, TSING_NEW, buflen=8), _outcome(s, S, TS), _outcome(s, S, TS_NEW))


_VALUES = [
    *[(TSING, 1 << b) for b in range(22)],
    (TSING, -1), (TSING, RX_SW | SW | OPT_ID | OPT_CMSG | TSONLY | TX_SW), (TSING, ID_TCP),
    (TSING, OPT_ID | ID_TCP), (TSING, STATS), (TSING, STATS | TSONLY), (TSING, BIND_PHC | SW),
    (TSING, struct.pack("=ii", RX_SW | SW, 5)), (TSING, struct.pack("=ii", BIND_PHC, 0)), (TSING, b"\x18\0\0"),
    (TSING, b"\x18\0\0\0\x01"), (TSING, 0),
    (TS_NEW, 1), (TSING, RX_SW | SW), (TSING_NEW, RX_SW | SW), (TS, 0), (TSING_NEW, SW), (TSNS_NEW, 1),
    (TSING, 0), (TSING_NEW, 0),
]


def _walk(s) -> list:
    got: list = [_reads(s)]
    for opt, v in _VALUES:
        got.append((opt, v, _outcome(s, S, opt, v), _reads(s)))
    return got


def _tcp_sockets(tap_domain, client):
    """(kind, make, address to listen on): a kernel socket and a usnet one."""
    _d, ifname, usnet_ip, host_ip = tap_domain
    return (("kernel", socket.socket, host_ip), ("usnet", lambda: us.socket(client=client, netif=ifname), usnet_ip))


def test_so_timestamping_flags_are_checked_and_read_back_as_linux(tap_domain):
    """Every flag bit, the refused combinations (OPT_ID_TCP without OPT_ID, OPT_STATS without
    OPT_TSONLY, BIND_PHC with no device bound), the struct and short forms, and the _NEW flag
    SO_TIMESTAMPING_NEW shares with SO_TIMESTAMP_NEW: on UDP, and on TCP closed, listening and
    connected (OPT_ID is EINVAL in the first two)."""
    d, _ifname, _usnet_ip, host_ip = tap_domain
    k, u = _pair(tap_domain)
    client = Client.local(d)
    try:
        kernel = _walk(k)
        assert _walk(u) == kernel
        assert kernel[1 + 3][2:] == ("ok", (8, bytes([8]) + bytes(7), 0, bytes(8), 0, 0))  # RX_SOFTWARE
        assert kernel[1 + 12][2] == "EINVAL" and kernel[1 + 15][2] == "ENOTSUP"
        klst = socket.create_server((host_ip, 0))
        try:
            walks = []
            for _kind, make, ip in _tcp_sockets(tap_domain, client):
                closed, lst, conn = make(), make(), make()
                try:
                    lst.bind((ip, 0))
                    lst.listen()
                    conn.settimeout(LIMIT)
                    conn.connect(klst.getsockname())
                    klst.accept()[0].close()
                    walks.append([_walk(closed), _walk(lst), _walk(conn)])
                finally:
                    for s in (closed, lst, conn):
                        s.close()
            assert walks[1] == walks[0]
            assert walks[0][0][1 + 7][2] == "EINVAL" and walks[0][2][1 + 7][2] == "ok"  # OPT_ID
        finally:
            klst.close()
    finally:
        k.close()
        u.close()
        client.close()


def _tsing(blob: bytes, before: float, after: float) -> None:
    sec, nsec, s1, n1, s2, n2 = struct.unpack("=6q", blob)
    assert 0 <= nsec < 1_000_000_000 and (s1, n1, s2, n2) == (0, 0, 0, 0)
    assert before - 0.5 <= sec + nsec / 1e9 <= after + 0.5, (sec, nsec, before, after)


def _udp_reads(s, other) -> list:
    """Datagrams from `other` read under each setting, with full and short control buffers."""
    got = []
    for opt, value, ancbufsize in ((TSING, RX_SW | SW, 256), (TSING, RX_SW | SW | TX_SW | OPT_ID, 256),
                                   (TSNS, 1, 256), (TSNS, 1, 40), (TSING, RX_SW | SW, 64), (TSING, RX_SW | SW, 63),
                                   (TSING_NEW, RX_SW | SW, 256), (TSING, RX_SW, 256), (TSING, SW | RX_FILTER, 256),
                                   (TS, 0, 256), (TSING, 0, 256)):
        s.setsockopt(S, opt, value)
        before = time.time()
        other.sendto(b"stamp me", s.getsockname())
        data, anc, flags, _addr = s.recvmsg(100, ancbufsize)
        after = time.time()
        for _level, kind, blob in anc:
            if kind in (TSING, TSING_NEW) and len(blob) == 48:
                _tsing(blob, before, after)
        got.append((data, [(level, kind, len(blob)) for level, kind, blob in anc], flags))
    return got


def test_udp_recvmsg_gives_scm_timestamping_as_linux(tap_domain):
    """RX_SOFTWARE | SOFTWARE: SCM_TIMESTAMPING (48 bytes, the stamp in ts[0]) after SO_TIMESTAMPNS's
    own message when both are on, SCM_TIMESTAMPING_NEW through SO_TIMESTAMPING_NEW, none with
    RX_SOFTWARE alone, cut with MSG_CTRUNC to a short buffer."""
    k, u = _pair(tap_domain)
    try:
        with kernel_stamping():  # the kernel's first datagram after the option is not stamped otherwise
            kernel, usnet = _udp_reads(k, u), _udp_reads(u, k)
        assert usnet == kernel
        assert kernel[0] == (b"stamp me", [(S, TSING, 48)], 0)
        assert kernel[2] == (b"stamp me", [(S, TSNS, 16), (S, TSING, 48)], 0)
        assert kernel[7][1] == [(S, TSNS, 16)] and kernel[-1] == (b"stamp me", [], 0)  # RX_SOFTWARE alone: none
    finally:
        k.close()
        u.close()


def _tcp_walk(s, peer: socket.socket) -> list:
    got = []

    def step(opt: int, value: int, *args) -> None:
        s.setsockopt(S, opt, value)
        before = time.time()
        peer.sendall(b"w")
        data, kinds, flags = _read(s, before, *args)
        got.append((data, kinds, flags))

    step(TSING, RX_SW | SW, 100, 256)
    step(TSNS, 1, 100, 256)  # both: SCM_TIMESTAMPNS, then SCM_TIMESTAMPING
    step(TSNS, 1, 100, 40)  # room for the first: the second dropped, MSG_CTRUNC
    step(TSNS, 0, 100, 60)  # SCM_TIMESTAMPING alone, cut
    step(TSING_NEW, RX_SW | SW, 100, 256)
    step(TSING, RX_SW, 100, 256)  # no SOFTWARE: none
    step(TSING, 0, 100, 256)
    return got


def test_tcp_recvmsg_gives_scm_timestamping_as_linux(tap_domain):
    """SCM_TIMESTAMPING of the last segment a read took, after SO_TIMESTAMPNS's message, cut and
    dropped as put_cmsg does; none without SOFTWARE; a listener's flags inherited by the
    connections it accepts, whose data from before accept() is stamped."""
    client = Client.local(tap_domain[0])
    with contextlib.closing(client):
        results = side_by_side(tap_domain, client, _tcp_walk,
                               lambda lst, to: _accepted(lst, to, TSING, RX_SW | SW | OPT_CMSG))
    kernel, usnet = results
    assert usnet == kernel
    walk, accepted = kernel
    assert walk[0] == (b"w", [(S, TSING, 48)], 0) and walk[1] == (b"w", [(S, TSNS, 16), (S, TSING, 48)], 0)
    assert walk[2] == (b"w", [(S, TSNS, 16)], socket.MSG_CTRUNC) and walk[-1] == (b"w", [], 0)
    assert accepted == (RX_SW | SW | OPT_CMSG, (b"early", [(S, TSING, 48)], 0))


def _errqueue_read(s, ancbufsize: int, before: float, after: float) -> tuple:
    """One recvmsg(MSG_ERRQUEUE) after a readiness check: (ready, payload, [(level, type,
    length)], flags, address, (sock_extended_err, offender)), or (ready, "EAGAIN"). Without a
    Python timeout: CPython would wait for POLLIN before an empty queue's EAGAIN."""
    ready = bool(select.select([s], [], [], 0.5)[0])
    s.settimeout(0)
    try:
        data, anc, mflags, addr = s.recvmsg(100, ancbufsize, socket.MSG_ERRQUEUE)
    except BlockingIOError:
        return ready, "EAGAIN"
    finally:
        s.settimeout(LIMIT)
    ee = None
    for level, kind, blob in anc:
        if kind in (TSING, TSING_NEW) and len(blob) == 48:
            _tsing(blob, before, after)
        if (level, kind) == (socket.IPPROTO_IP, 11):  # IP_RECVERR: sock_extended_err, offender
            ee = (struct.unpack_from("=IBBBBII", blob), blob[16:])
    return ready, data, [(level, kind, len(blob)) for level, kind, blob in anc], mflags, addr, ee


def _tx_reads(s, other) -> list:
    """Transmit stamps of datagrams `s` sends to `other`, read from the error queue under each
    setting (the last: SO_TIMESTAMPNS on too), then once more: an empty queue."""
    got = []
    for flags, sends, ancbufsize in ((TX_SW | SW | TSONLY | OPT_ID, 3, 256), (TX_SW | TSONLY, 1, 256),
                                     (TX_SW | SW | TSONLY | OPT_ID, 1, 64), (0, 1, 256), (TX_SW | SW | TSONLY, 1, 256)):
        s.setsockopt(S, TSING, flags)
        if flags == TX_SW | SW | TSONLY:
            s.setsockopt(S, TSNS, 1)
        before = time.time()
        for _ in range(sends):
            s.sendto(b"tx stamp", other.getsockname())
            other.recv(100)
        after = time.time()
        got.extend(_errqueue_read(s, ancbufsize, before, after) for _ in range(sends + (flags == 0)))
    got.append(_errqueue_read(s, 256, 0, 0))
    return got


def test_udp_transmit_stamps_are_on_the_error_queue_as_linux(tap_domain):
    """SOF_TIMESTAMPING_TX_SOFTWARE with OPT_TSONLY: each datagram sent queues a report, which
    makes the socket readable: no payload, no address, MSG_ERRQUEUE, SCM_TIMESTAMPING (with
    SOFTWARE; after SCM_TIMESTAMPNS when that is on) of the send, then IP_RECVERR with ENOMSG,
    origin SO_EE_ORIGIN_TIMESTAMPING, SCM_TSTAMP_SND and OPT_ID's count in ee_data; cut to a
    short buffer; none once the flags are off. Sent from a kernel socket to a usnet one, and
    back."""
    k, u = _pair(tap_domain)
    try:
        kernel, usnet = _tx_reads(k, u), _tx_reads(u, k)
        assert usnet == kernel
        assert kernel[0][2] == [(S, TSING, 48), (socket.IPPROTO_IP, 11, 32)] and kernel[0][4] is None
        assert [r[5][0][-1] for r in kernel[:3]] == [0, 1, 2] and kernel[0][5][0][:6] == (42, 4, 0, 0, 0, 0)
        assert kernel[3][2] == [(socket.IPPROTO_IP, 11, 32)]  # no SOFTWARE: no SCM_TIMESTAMPING
        assert kernel[4][2:4] == ([(S, TSING, 48)], socket.MSG_ERRQUEUE | socket.MSG_CTRUNC)
        assert kernel[5] == kernel[6] == (False, "EAGAIN")  # flags off: nothing queued
        assert kernel[7][2] == [(S, TSNS, 16), (S, TSING, 48), (socket.IPPROTO_IP, 11, 32)]
        assert kernel[-1] == (False, "EAGAIN")
    finally:
        k.close()
        u.close()
