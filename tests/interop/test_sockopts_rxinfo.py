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

from tests.helpers.util import outcome
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


# -- IP_PKTINFO, IPV6_RECVPKTINFO ----------------------------------------------------------------

IP_PKTINFO, IPV6_RECVPKTINFO, IPV6_PKTINFO = 8, 49, 50
IP_RECVTTL, IP_RECVTOS, IPV6_RECVHOPLIMIT, IPV6_RECVTCLASS = 12, 13, 51, 66
IP, IP6 = socket.IPPROTO_IP, socket.IPPROTO_IPV6


def _pktinfo_walk(s) -> list:
    got = []
    for level, opt in ((IP, IP_PKTINFO), (IP6, IPV6_RECVPKTINFO), (IP, IP_RECVTTL), (IP, IP_RECVTOS),
                       (IP6, IPV6_RECVHOPLIMIT), (IP6, IPV6_RECVTCLASS)):
        got.append((opt, _outcome(s, level, opt)))
        for v in (1, 0, 5, b"\1", b"\0", b"\1\0\0\0", b"", 0):
            got.append((opt, v, _outcome(s, level, opt, v), _outcome(s, level, opt)))
    return got


def test_pktinfo_options_set_and_read_as_linux(tap_domain6):
    """IP_PKTINFO, IPV6_RECVPKTINFO and the header options (IP_RECVTTL, IP_RECVTOS,
    IPV6_RECVHOPLIMIT, IPV6_RECVTCLASS) on every socket kind: kept as a bit, one byte taken by
    IPv4's, the level a socket lacks refused, as the kernel's."""
    d, ifname, _u, _h = tap_domain6
    client = Client.local(d)
    for family in (socket.AF_INET, socket.AF_INET6):
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(family, kind) as k, us.socket(family, kind, client=client, netif=ifname) as u:
                kernel = _pktinfo_walk(k)
                assert _pktinfo_walk(u) == kernel, (family, kind)


def _wildcard_pair(tap_domain, family):
    d, ifname, usnet_ip, host_ip = tap_domain
    client = Client.local(d)
    any_ = "::" if family == socket.AF_INET6 else "0.0.0.0"
    k = socket.socket(family, socket.SOCK_DGRAM)
    k.bind((any_, 0))
    u = us.socket(family, socket.SOCK_DGRAM, client=client, netif=ifname)
    u.bind((any_, 0))
    for s in (k, u):
        s.settimeout(LIMIT)
    return ifname, (k, host_ip), (u, usnet_ip)


def _pkt4(blob: bytes) -> tuple:
    ifindex, spec, addr = struct.unpack("=i4s4s", blob)
    return ifindex, socket.inet_ntoa(spec), socket.inet_ntoa(addr)


def _answer_walk(s, own: str, other, other_own: str) -> list:
    """A DNS server's steps on a wildcard socket: read a query's packet info, answer from the
    address it came to; then the sources Linux refuses."""
    got = []
    s.setsockopt(IP, IP_PKTINFO, 1)
    port = s.getsockname()[1]
    other.sendto(b"query", (own, port))
    data, anc, flags, peer = s.recvmsg(100, 256)
    got.append((data, [(lv, kd, _pkt4(b)) for lv, kd, b in anc], flags))
    info = struct.pack("=i4s4s", 0, socket.inet_aton(own), bytes(4))
    got.append(s.sendmsg([b"answer"], [(IP, IP_PKTINFO, info)], 0, peer))
    got.append(other.recvfrom(100))
    for bad in (struct.pack("=i4s4s", 0, socket.inet_aton("10.254.254.254"), bytes(4)), info[:8],
                info + bytes(4), struct.pack("=i4s4s", 0, socket.inet_aton("224.0.0.9"), bytes(4))):
        got.append(outcome(lambda b=bad: s.sendmsg([b"x"], [(IP, IP_PKTINFO, b)], 0, peer)))
    zero = struct.pack("=i4s4s", 0, bytes(4), bytes(4))  # no choice: the socket's own
    got.append(s.sendmsg([b"plain"], [(IP, IP_PKTINFO, zero)], 0, peer))
    got.append(other.recvfrom(100))
    s.setsockopt(S, TS, 1)  # both: the timestamp first
    other.sendto(b"both", (own, port))
    _d, anc, flags, _p = s.recvmsg(100, 256)
    got.append(([(lv, kd, len(b)) for lv, kd, b in anc], flags))
    other.sendto(b"cut", (own, port))
    _d, anc, flags, _p = s.recvmsg(100, 40)
    got.append(([(lv, kd, len(b)) for lv, kd, b in anc], flags))
    return got


def test_a_wildcard_server_reads_ip_pktinfo_and_answers_from_that_address_as_linux(tap_domain):
    """IP_PKTINFO on a socket bound to 0.0.0.0: recvmsg gives in_pktinfo (the interface, the
    address the datagram was sent to, twice); sendmsg with IP_PKTINFO answers from it; an address
    the socket does not have is ENETUNREACH (a multicast one, or a control message of the wrong
    size, EINVAL), as the kernel's."""
    ifname, (k, host_ip), (u, usnet_ip) = _wildcard_pair(tap_domain, socket.AF_INET)
    try:
        kernel = _answer_walk(k, host_ip, u, usnet_ip)
        usnet = _answer_walk(u, usnet_ip, k, host_ip)
        index = socket.if_nametoindex(ifname)  # the TAP: the kernel's interface, usnet's netif on it
        assert kernel[0] == (b"query", [(IP, IP_PKTINFO, (index, host_ip, host_ip))], 0)
        assert usnet[0] == (b"query", [(IP, IP_PKTINFO, (index, usnet_ip, usnet_ip))], 0)
        assert kernel[2][1][0] == host_ip and usnet[2][1][0] == usnet_ip  # each answer from its address
        assert [x for i, x in enumerate(usnet) if i not in (0, 2, 8)] == \
            [x for i, x in enumerate(kernel) if i not in (0, 2, 8)]
        assert usnet[2][0] == kernel[2][0] == b"answer" and usnet[8][0] == kernel[8][0] == b"plain"
        assert kernel[3:6] == ["ENETUNREACH", "EINVAL", "EINVAL"]
        assert kernel[9] == ([(S, TS, 16), (IP, IP_PKTINFO, 12)], 0)
    finally:
        k.close()
        u.close()


def _answer_walk6(s, own: str, other) -> list:
    got = []
    s.setsockopt(IP6, IPV6_RECVPKTINFO, 1)
    port = s.getsockname()[1]
    other.sendto(b"query", (own, port))
    data, anc, flags, peer = s.recvmsg(100, 256)
    got.append((data, [(lv, kd, socket.inet_ntop(socket.AF_INET6, b[:16]), struct.unpack("=I", b[16:])[0])
                       for lv, kd, b in anc], flags))
    info = struct.pack("=16sI", socket.inet_pton(socket.AF_INET6, own), 0)
    got.append(s.sendmsg([b"answer"], [(IP6, IPV6_PKTINFO, info)], 0, peer))
    got.append(other.recvfrom(100)[0])
    bad = struct.pack("=16sI", socket.inet_pton(socket.AF_INET6, "fd00:dead::1"), 0)
    got.append(outcome(lambda: s.sendmsg([b"x"], [(IP6, IPV6_PKTINFO, bad)], 0, peer)))
    return got


def test_ipv6_recvpktinfo_and_ipv6_pktinfo_as_linux(tap_domain6):
    """The same for IPv6 on a socket bound to ::: in6_pktinfo read, and the answer's source chosen."""
    ifname, (k, host_ip), (u, usnet_ip) = _wildcard_pair(tap_domain6, socket.AF_INET6)
    try:
        kernel = _answer_walk6(k, host_ip, u)
        usnet = _answer_walk6(u, usnet_ip, k)
        index = socket.if_nametoindex(ifname)
        assert kernel[0] == (b"query", [(IP6, IPV6_PKTINFO, host_ip, index)], 0)
        assert usnet[0] == (b"query", [(IP6, IPV6_PKTINFO, usnet_ip, index)], 0)
        assert usnet[1:] == kernel[1:] == [6, b"answer", "EINVAL"]
    finally:
        k.close()
        u.close()


def _header_reads(s, own: str, other, v6: bool) -> list:
    """Datagrams marked by the sender (TOS/class 0x02, ECT(0): the DSCP is the flow switch's to
    write, tests/interop/test_ip_marking.py; TTL/hop limit 33; then the defaults),
    read with the header options and the packet info on: the control messages, decoded."""
    if v6:
        opts = [(IP6, IPV6_RECVPKTINFO), (IP6, IPV6_RECVHOPLIMIT), (IP6, IPV6_RECVTCLASS)]
        marks = [(IP6, socket.IPV6_TCLASS), (IP6, socket.IPV6_UNICAST_HOPS)]
    else:
        opts = [(IP, IP_PKTINFO), (IP, IP_RECVTTL), (IP, IP_RECVTOS)]
        marks = [(IP, socket.IP_TOS), (IP, socket.IP_TTL)]
    for lv, o in opts:
        s.setsockopt(lv, o, 1)
    port = s.getsockname()[1]
    got = []
    for tos, ttl in ((0x02, 33), (0, -1)):
        other.setsockopt(*marks[0], tos)
        other.setsockopt(*marks[1], ttl)
        other.sendto(b"marked", (own, port))
        _d, anc, flags, _p = s.recvmsg(100, 256)
        got.append(([(lv, kd, b if len(b) == 1 else struct.unpack("=i", b)[0] if len(b) == 4 else len(b))
                     for lv, kd, b in anc], flags))
    s.setsockopt(*opts[1], 0)  # off again: that one goes
    other.sendto(b"again", (own, port))
    _d, anc, flags, _p = s.recvmsg(100, 256)
    got.append([(lv, kd) for lv, kd, _b in anc])
    return got


@pytest.mark.parametrize("v6", [False, True])
def test_recvmsg_gives_the_ttl_and_tos_of_each_datagram_as_linux(tap_domain6, v6):
    """IP_RECVTTL and IP_RECVTOS (IPV6_RECVHOPLIMIT and IPV6_RECVTCLASS): each datagram's header
    fields, after the packet info, in the kernel's order and sizes (IP_TOS one byte, the others an
    int); the sender's marks are what the receiver reads, from usnet as from the kernel."""
    d, ifname, usnet_ip6, host_ip6 = tap_domain6
    if v6:
        fam, usnet_ip, host_ip = socket.AF_INET6, usnet_ip6, host_ip6
    else:
        x = usnet_ip6.split(":")[1]
        fam, usnet_ip, host_ip = socket.AF_INET, f"10.{x}.0.2", f"10.{x}.0.1"
    k, u = _pair((d, ifname, usnet_ip, host_ip), fam)
    try:
        kernel, usnet = _header_reads(k, host_ip, u, v6), _header_reads(u, usnet_ip, k, v6)
        assert usnet == kernel
        if v6:
            assert kernel[0] == ([(IP6, IPV6_PKTINFO, 20), (IP6, 52, 33), (IP6, 67, 0x02)], 0)
        else:
            assert kernel[0] == ([(IP, IP_PKTINFO, 12), (IP, socket.IP_TTL, 33), (IP, socket.IP_TOS, b"\x02")], 0)
    finally:
        k.close()
        u.close()
