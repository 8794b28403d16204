"""SO_TIMESTAMP(NS) and IP_PKTINFO / IPV6_RECVPKTINFO on UDP, on usnet and on the kernel side by side (root, TAP).

The options were ENOPROTOOPT on usnet. Each is set and read back on a kernel socket and on a usnet
one (the same values, the same errors); then datagrams from the other side are read with recvmsg:
the same control messages (level, type, length, MSG_CTRUNC when the buffer is short), and what
they hold is plausible (a timestamp between the send and the read; the address the datagram was
sent to) rather than equal, as the stacks are two.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests.interop.test_sockopts_linux import LIMIT, _outcome
from usnet import socket as us
from usnet.client import Client

pytestmark = pytest.mark.privileged
S = socket.SOL_SOCKET
TS, TSNS, TS_NEW, TSNS_NEW = 29, 35, 63, 64
MSG_CTRUNC = socket.MSG_CTRUNC


def _ts_walk(s) -> list:
    got = [tuple(_outcome(s, S, o) for o in (TS, TSNS, TS_NEW, TSNS_NEW))]
    for opt, v in ((TS, 1), (TSNS, 7), (TS_NEW, 1), (TSNS_NEW, -1), (TS, 0), (TSNS, 1), (TS_NEW, 0),
                   (TS, b"\1\0"), (TS, b"\1\0\0\0"), (TSNS_NEW, 0)):
        got.append((opt, v, _outcome(s, S, opt, v), tuple(_outcome(s, S, o) for o in (TS, TSNS, TS_NEW, TSNS_NEW))))
    return got


def _pair(tap_domain, family=socket.AF_INET):
    d, ifname, usnet_ip, host_ip = tap_domain
    client = Client.local(d)
    k = socket.socket(family, socket.SOCK_DGRAM)
    k.bind((host_ip, 0))
    u = us.socket(family, socket.SOCK_DGRAM, client=client, netif=ifname)
    u.bind((usnet_ip, 0))
    for s in (k, u):
        s.settimeout(LIMIT)
    return k, u


def _stamp(kind: int, blob: bytes) -> float:
    sec, frac = struct.unpack("=qq", blob)
    assert 0 <= frac < (1_000_000_000 if kind in (TSNS, TSNS_NEW) else 1_000_000)
    return sec + frac / (1e9 if kind in (TSNS, TSNS_NEW) else 1e6)


def _ts_reads(s, other) -> list:
    """Datagrams from `other` read with each timestamp option, and with short control buffers."""
    got = []
    for opt, ancbufsize in ((TS, 256), (TSNS, 256), (TS_NEW, 256), (TSNS_NEW, 256), (TSNS, 0), (TSNS, 20),
                            (TS, 32), (None, 256)):
        if opt is None:
            s.setsockopt(S, TS, 0)
        else:
            s.setsockopt(S, opt, 1)
        before = time.time()
        other.sendto(b"stamp me", s.getsockname())
        data, anc, flags, _addr = s.recvmsg(100, ancbufsize)
        after = time.time()
        for _level, kind, blob in anc:
            if len(blob) == 16:
                assert before - 1 <= _stamp(kind, blob) <= after + 1, (kind, _stamp(kind, blob), before, after)
        got.append((data, [(level, kind, len(blob)) for level, kind, blob in anc], flags))
    return got


def test_so_timestamp_options_are_one_mode_as_linux(tap_domain):
    """The four timestamp options read and set as the kernel's: one mode, the last set on."""
    k, u = _pair(tap_domain)
    try:
        kernel = _ts_walk(k)
        assert _ts_walk(u) == kernel
        assert kernel[0] == (0, 0, 0, 0) and kernel[1][3] == (1, 0, 0, 0)
        with socket.socket() as kt:
            assert _outcome(kt, S, TS, 1) == "ok"  # (Linux's TCP takes it; usnet's stream sockets do not)
    finally:
        k.close()
        u.close()


def test_recvmsg_gives_the_arrival_time_as_linux(tap_domain):
    """SCM_TIMESTAMP (timeval), SCM_TIMESTAMPNS (timespec) and the _NEW types: the same control
    messages from usnet as from the kernel, each time between the send and the read; cut to a
    short buffer with MSG_CTRUNC as Linux's put_cmsg cuts it."""
    k, u = _pair(tap_domain)
    try:
        kernel, usnet = _ts_reads(k, u), _ts_reads(u, k)
        assert usnet == kernel
        assert kernel[0] == (b"stamp me", [(S, TS, 16)], 0)
        assert kernel[4] == (b"stamp me", [], MSG_CTRUNC)
    finally:
        k.close()
        u.close()
