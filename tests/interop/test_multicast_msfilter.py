"""The full-state filter API (IP_MSFILTER, MCAST_MSFILTER), on usnet and on the kernel side by side
(root, TAP in the test's namespace).

usnet refused IP_MSFILTER and MCAST_MSFILTER (ENOPROTOOPT), so a program that sets a membership's
whole filter at once (RFC 3678 §4.1.2, §5.2.2), or reads it back, could not run. Here: the set
and get calls give the kernel's values and errors call by call (the kernel's getsockopt is called
through libc with the caller's struct in the buffer, as a C program calls it; usnet's takes the
struct as a bytes buffer); the same sockets hear the same sources after each full-state change;
the IGMPv3 reports of the same changes are the kernel's record for record.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import struct

import pytest

from tests.interop.test_multicast import G, _mreq, _Wire, mc
from tests.interop.test_multicast6 import mc6
from tests.interop.test_multicast_sources import _records, _src, _ss
from tests.interop.test_sockopts_linux import _outcome

__all__ = ["mc", "mc6"]  # the fixtures, used by name

pytestmark = pytest.mark.privileged
IPP, IP6 = socket.IPPROTO_IP, socket.IPPROTO_IPV6
ADD, ADD_SRC, DROP_SRC, BLOCK = 35, 39, 40, 38
M_JOIN, M_JOIN_SRC = 42, 46
MSFILTER, M_MSFILTER = 41, 48  # include/uapi/linux/in.h; Python's socket module has neither
EX, IN = 0, 1  # MCAST_EXCLUDE, MCAST_INCLUDE
OTHER = "10.77.0.9"  # a source nobody sends from
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _msf(group: str, iface: str, fmode: int, sources: list[str], numsrc: int | None = None) -> bytes:
    """struct ip_msfilter: imsf_multiaddr, imsf_interface, imsf_fmode, imsf_numsrc, imsf_slist[]."""
    n = len(sources) if numsrc is None else numsrc
    return (socket.inet_aton(group) + socket.inet_aton(iface) + struct.pack("=II", fmode, n)
            + b"".join(socket.inet_aton(s) for s in sources))


def _gf(index: int, group: str, fmode: int, sources: list[str], numsrc: int | None = None,
        gfamily: int = socket.AF_INET, sfamily: int = socket.AF_INET) -> bytes:
    """struct group_filter: gf_interface, padding, gf_group, gf_fmode, gf_numsrc, gf_slist[] (sockaddr_storage)."""
    n = len(sources) if numsrc is None else numsrc
    return (struct.pack("=I4x", index) + _ss(gfamily, group) + struct.pack("=II", fmode, n)
            + b"".join(_ss(sfamily, s) for s in sources))


def _get(s, level: int, opt: int, buf: bytes):
    """getsockopt with `buf` as the caller's struct: the bytes written (as long as the optlen the
    call gives back), or the errno's name. A kernel socket's through libc, a usnet one's with the
    struct given to usnet's getsockopt_in."""
    if isinstance(s, socket.socket):
        cbuf = ctypes.create_string_buffer(buf, len(buf))
        n = ctypes.c_uint(len(buf))
        if _libc.getsockopt(s.fileno(), level, opt, cbuf, ctypes.byref(n)) != 0:
            return errno.errorcode[ctypes.get_errno()]
        return cbuf.raw[:n.value]
    try:
        return s.getsockopt_in(level, opt, buf)
    except OSError as e:
        return errno.errorcode[e.errno]


def _read_msf(got, me: str):
    """An ip_msfilter read back, as (group, interface ("me" for the socket's own), fmode, numsrc, sources)."""
    if isinstance(got, str):
        return got
    g, i, fmode, n = struct.unpack_from("=4s4sII", got)
    iface = "me" if socket.inet_ntoa(i) == me else socket.inet_ntoa(i)
    return (socket.inet_ntoa(g), iface, fmode, n, [socket.inet_ntoa(got[16 + 4 * k:20 + 4 * k])
                                                    for k in range((len(got) - 16) // 4)])


def _read_gf(got, family: int):
    """A group_filter read back: (index, group, fmode, numsrc, sources); each sockaddr_storage
    checked to hold its family, the address and zeros."""
    if isinstance(got, str):
        return got
    index, fmode, n = struct.unpack_from("=I", got)[0], *struct.unpack_from("=II", got, 136)
    out = []
    at, size = (4, 4) if family == socket.AF_INET else (8, 16)
    for k in range((len(got) - 144) // 128):
        ss = got[144 + 128 * k:272 + 128 * k]
        assert struct.unpack_from("=H", ss)[0] == family
        assert ss[2:at].strip(b"\0") == b"" and ss[at + size:].strip(b"\0") == b""
        out.append(socket.inet_ntop(family, ss[at:at + size]))
    group = socket.inet_ntop(family, got[8 + at:8 + at + size])
    return (index, group, fmode, n, out)


def _walk(s, me: str, idx: int) -> list:
    """The full-state calls a program makes, right and wrong, in one order: each set's result, and
    after it the filter read back by IP_MSFILTER and MCAST_MSFILTER (room for 4 sources)."""
    S = [f"10.8.0.{i}" for i in range(1, 13)]
    G3 = "239.3.3.9"
    sets = [
        (MSFILTER, _msf(G, me, EX, S[:1])),  # no membership: EINVAL
        (MSFILTER, _msf(G, me, EX, S[:1])[:15]), (MSFILTER, 7),  # under the head
        (MSFILTER, _msf(G, me, EX, S[:11])),  # the 11th source: ENOBUFS
        (MSFILTER, _msf(G, me, EX, S[:2], numsrc=3)),  # the list runs past the end: EINVAL
        (MSFILTER, _msf("10.1.2.3", me, EX, [])), (MSFILTER, _msf(G, me, 2, [])),  # no group; no mode
        (MSFILTER, _msf(G, "10.250.250.250", EX, [])),  # not our interface: ENODEV
        (MSFILTER, _msf(G, me, IN, [])),  # INCLUDE {} is a leave: EADDRNOTAVAIL without a membership
        (ADD, _mreq(G, me)),
        (MSFILTER, _msf(G, me, EX, S[:2])), (MSFILTER, _msf(G, "0.0.0.0", IN, [S[2], S[0], S[2]])),  # a source twice
        (MSFILTER, _msf(G, me, IN, S[:10]) + b"\0" * 8),  # ten, and bytes past the list
        (MSFILTER, _msf(G, me, IN, [])),  # the leave
        (ADD_SRC, _src(G, me, S[0])), (ADD_SRC, _src(G, me, S[1])), (DROP_SRC, _src(G, me, S[0])),
        (MSFILTER, _msf(G, me, EX, [])), (BLOCK, _src(G, me, S[3])),  # EXCLUDE {}: any source, then block one
        # the protocol-independent form at IPPROTO_IP
        (M_MSFILTER, _gf(idx, G, IN, [S[4]])[:143]), (M_MSFILTER, _gf(idx, G, IN, S[:11])),
        (M_MSFILTER, _gf(idx, G, IN, S[:2], numsrc=3)),
        (M_MSFILTER, _gf(idx, "ff05::1", IN, [S[4]], gfamily=socket.AF_INET6)),
        (M_MSFILTER, _gf(idx, G, IN, ["::1"], sfamily=socket.AF_INET6)),
        (M_MSFILTER, _gf(99999, G, IN, [S[4]])), (M_MSFILTER, _gf(idx, G, 5, [S[4]])),
        (M_MSFILTER, _gf(idx, G, IN, [S[4], S[5]])), (M_MSFILTER, _gf(0, G, EX, [S[6]])),
        (M_MSFILTER, _gf(idx, G3, EX, [S[6]])), (M_MSFILTER, _gf(idx, G, IN, [])), (M_MSFILTER, _gf(idx, G, IN, [])),
        (M_JOIN, struct.pack("=I4x", idx) + _ss(socket.AF_INET, G3)), (M_MSFILTER, _gf(idx, G3, IN, S[:5])),
    ]
    out: list = [_outcome(s, IPP, MSFILTER), _outcome(s, IPP, M_MSFILTER), _outcome(s, IPP, MSFILTER, None, 8)]
    for opt, v in sets:
        got = _outcome(s, IPP, opt, v)
        reads = [_read_msf(_get(s, IPP, MSFILTER, _msf(g, i, 0, ["0.0.0.0"] * 4, numsrc=4)), me)
                 for g in (G, G3) for i in ("0.0.0.0", me)]
        reads += [_read_gf(_get(s, IPP, M_MSFILTER, _gf(i, g, 0, ["0.0.0.0"] * 4, numsrc=4)), socket.AF_INET)
                  for g in (G, G3) for i in (idx, 0)]
        out.append((opt, v if isinstance(v, int) else len(v), got, reads))
    # reads of the last state (G3 INCLUDE five): fewer sources asked for; wrong heads
    ask = [(MSFILTER, _msf(G3, me, 0, [], numsrc=0)), (MSFILTER, _msf(G3, me, 0, ["0.0.0.0"] * 2, numsrc=2)),
           (MSFILTER, _msf(G3, me, 0, [])[:15]), (MSFILTER, _msf("10.1.1.1", me, 0, [])),
           (MSFILTER, _msf(G3, "10.250.250.250", 0, [])), (MSFILTER, _msf("239.9.9.9", me, 0, [])),
           (M_MSFILTER, _gf(idx, G3, 0, ["0.0.0.0"], numsrc=1)), (M_MSFILTER, _gf(idx, G3, 0, [])[:143]),
           (M_MSFILTER, _gf(idx, "ff05::1", 0, [], gfamily=socket.AF_INET6)),
           (M_MSFILTER, _gf(idx, "10.1.1.1", 0, [])), (M_MSFILTER, _gf(99999, G3, 0, []))]
    for opt, buf in ask:
        got = _get(s, IPP, opt, buf)
        out.append(_read_msf(got, me) if opt == MSFILTER else _read_gf(got, socket.AF_INET))
    return out


def test_the_msfilter_calls_give_what_the_kernels_give(mc):
    """IP_MSFILTER and MCAST_MSFILTER set and read back on a bound kernel socket and a bound usnet
    one: the same errors (EINVAL, ENOBUFS, ENODEV, EADDRNOTAVAIL) in Linux's order, and the same
    filter read back (mode, the real count, the sources in Linux's order, as many as asked for)."""
    idx = socket.if_nametoindex(mc.ifname)
    kernel = _walk(mc.ksock(), mc.host_ip, idx)
    assert kernel[3 + 10][2] == "ok" and kernel[3 + 11][3][0] == (G, "0.0.0.0", IN, 3, ["10.8.0.3", "10.8.0.1",
                                                                                   "10.8.0.3"])
    usnet = _walk(mc.usock(), mc.usnet_ip, idx)
    for i, (k, u) in enumerate(zip(kernel, usnet, strict=True)):
        assert u == k, (i, u, k)


# -- IPv6: MCAST_MSFILTER at IPPROTO_IPV6 ------------------------------------------------------------------


def _walk6(s, idx: int) -> list:
    G6, G7 = "ff05::1:3", "ff0e::7:7"
    S = [f"2001:db8::{i:x}" for i in range(1, 70)]
    f6 = socket.AF_INET6

    def gf(index, group, fmode, sources, numsrc=None, label=None):
        """A group_filter of IPv6 sockaddrs; `label`: each sockaddr's family field says that instead."""
        raw = bytearray(_gf(index, group, fmode, sources, numsrc, f6, f6))
        for at in [8] + [144 + 128 * k for k in range(len(sources))] if label else []:
            struct.pack_into("=H", raw, at, label)
        return bytes(raw)

    sets = [
        gf(idx, G6, EX, S[:1]), gf(idx, G6, EX, [])[:143], gf(idx, G6, EX, S[:65]), gf(idx, G6, EX, S[:2], numsrc=3),
        gf(idx, "2001:db8::1", EX, []), gf(idx, G6, 2, []), gf(99999, G6, EX, []), gf(idx, G6, IN, []),
        struct.pack("=I4x", idx) + _ss(f6, G6),  # MCAST_JOIN_GROUP
        gf(idx, G6, EX, S[:2]), gf(idx, G6, IN, [S[2], S[0], S[2]]), gf(0, G6, IN, S[:3]), gf(idx, G6, IN, S[:64]),
        gf(idx, G6, EX, [S[5]], label=socket.AF_INET),  # IPv6 reads sin6_addr whatever the family
        gf(idx, G6, IN, S[:4]), gf(idx, G6, IN, []), gf(idx, G6, IN, []),
    ]
    out: list = [_outcome(s, IP6, M_MSFILTER), _outcome(s, IP6, M_MSFILTER, None, 8)]
    for v in sets:
        opt = M_JOIN if len(v) == 136 else M_MSFILTER
        got = _outcome(s, IP6, opt, v)
        reads = [_read_gf(_get(s, IP6, M_MSFILTER, gf(i, G6, 0, ["::"] * 4, numsrc=4)), f6) for i in (idx, 0)]
        out.append((opt, len(v), got, reads))
    s.setsockopt(IP6, M_JOIN, struct.pack("=I4x", idx) + _ss(f6, G7))
    s.setsockopt(IP6, M_MSFILTER, gf(idx, G7, IN, S[:3]))
    for buf in (gf(idx, G7, 0, [], numsrc=0), gf(idx, G7, 0, ["::"], numsrc=1), gf(idx, G7, 0, [])[:143],
                gf(idx, G7, 0, [], label=socket.AF_INET), gf(idx, "2001:db8::1", 0, []),
                gf(99999, G7, 0, [])):
        out.append(_read_gf(_get(s, IP6, M_MSFILTER, buf), f6))
    return out


def test_the_ipv6_msfilter_calls_give_what_the_kernels_give(mc6):
    """MCAST_MSFILTER at IPPROTO_IPV6 on a kernel AF_INET6 socket and a usnet one: the same results
    call by call (mld_max_msf's 64 sources), and the same filter read back."""
    kernel = _walk6(mc6.ksock(), mc6.idx)
    assert kernel[2 + 9][2] == "ok" and kernel[2 + 9][3][0][2:4] == (EX, 2)
    usnet = _walk6(mc6.usock(), mc6.idx)
    for i, (k, u) in enumerate(zip(kernel, usnet, strict=True)):
        assert u == k, (i, u, k)


def _fill6(s, idx: int, most: int = 300) -> tuple[int, str]:
    """Groups joined (MCAST_JOIN_GROUP) and each given a full filter of 64 sources (MCAST_MSFILTER,
    EXCLUDE) until a call is refused, at most `most`: how many took theirs, and the refusal."""
    f6 = socket.AF_INET6
    srcs = [f"2001:db8::{i:x}" for i in range(1, 65)]
    for n in range(most):
        g = f"ff05::5:{n + 1:x}"
        join, msf = struct.pack("=I4x", idx) + _ss(f6, g), _gf(idx, g, EX, srcs, None, f6, f6)
        for opt, v in ((M_JOIN, join), (M_MSFILTER, msf)):
            got = _outcome(s, IP6, opt, v)
            if got != "ok":
                return n, got
    return most, "ok"


def test_a_sockets_filters_are_bounded_by_its_option_memory_as_on_linux(mc6):
    """A socket joins group after group, each with a filter of 64 sources (mld_max_msf): Linux
    charges every membership and source list to the socket's option memory (sock_kmalloc, bounded by
    net.core.optmem_max) and refuses the filter that would pass it, ENOBUFS, after 118 groups with
    this kernel's 131,072 bytes. usnet the same, call by call. Before, a flow held 256 such
    filters (16,384 sources), twice the kernel's, and the domain held whatever its clients' flows
    asked up to that (usnet.domain.switch.groups: `OPTMEM_MAX`)."""
    kernel = _fill6(mc6.ksock(), mc6.idx)
    assert kernel[1] != "ok", kernel
    assert _fill6(mc6.usock(), mc6.idx) == kernel


# -- datagrams and reports after full-state changes ---------------------------------------------------------


def _heard(sender, recv_sock, me: str, port: int) -> list:
    """A member of G on `port` changes its whole filter three times; after each, the sender's datagram
    to the group and then a unicast one: which comes first (None: the group's was not heard)."""
    src = sender.getsockname()[0]
    a = recv_sock(port)
    a.setsockopt(IPP, ADD, _mreq(G, me))
    out = []
    for change in (_msf(G, me, IN, [OTHER]), _gf(0, G, EX, [OTHER]), _msf(G, me, EX, [OTHER, src]),
                   _msf(G, me, IN, [OTHER, src])):
        a.setsockopt(IPP, MSFILTER if len(change) < 144 else M_MSFILTER, change)
        sender.sendto(b"group", (G, port))
        sender.sendto(b"unicast", (me, port))
        got = a.recv(100)
        if got == b"group":
            assert a.recv(100) == b"unicast"
        out.append(got == b"group")
    return out


def test_a_full_state_change_decides_what_the_socket_hears_as_on_linux(mc):
    """INCLUDE {other}, EXCLUDE {other}, EXCLUDE {sender}, INCLUDE {sender}: the socket hears the
    sender's group datagrams after the second and the fourth, on usnet from the kernel and on the
    kernel from usnet."""
    k = mc.ksock(bind=False)
    k.setsockopt(IPP, 32, socket.inet_aton(mc.host_ip))
    k.bind((mc.host_ip, 0))
    u = mc.usock(bind=False)
    u.bind((mc.usnet_ip, 0))
    want = [False, True, False, True]
    assert _heard(u, mc.ksock, mc.host_ip, 47720) == want
    assert _heard(k, mc.usock, mc.usnet_ip, 47730) == want


def _reports_of_changes(wire, sock, me: str) -> list:
    """One socket joins G and sets its whole filter five times, then leaves by INCLUDE {}; after each
    call, the host's two reports of it (the change and its repeat) off the wire."""
    s = sock()
    S1, S2, S3, S4, S5 = (f"10.9.0.{i}" for i in range(1, 6))
    steps = [
        (ADD, _mreq(G, me)),  # EX {}: TO_EX {}
        (MSFILTER, _msf(G, me, IN, [S1, S2])),  # TO_IN {S1, S2}
        (MSFILTER, _msf(G, me, IN, [S2, S3])),  # ALLOW {S3}, BLOCK {S1}
        (MSFILTER, _msf(G, me, EX, [S4])),  # TO_EX {S4}
        (MSFILTER, _msf(G, me, EX, [S4, S5])),  # BLOCK {S5}
        (M_MSFILTER, _gf(0, G, EX, [S5])),  # ALLOW {S4}
        (MSFILTER, _msf(G, me, IN, [])),  # the leave: TO_IN {}
    ]
    out = []
    for opt, v in steps:
        s.setsockopt(IPP, opt, v)
        out.append([_records(wire.igmp_from(me)) for _ in range(2)])
    return out


def test_the_reports_of_full_state_changes_are_the_kernels(mc):
    """The same full-state changes on a kernel socket and a usnet one: each change's two IGMPv3
    reports have the same records (TO_EX, TO_IN, ALLOW, BLOCK with the same sources), decoded by scapy."""
    wire = _Wire(mc.ifname)
    try:
        kernel = _reports_of_changes(wire, mc.ksock, mc.host_ip)
        usnet = _reports_of_changes(wire, mc.usock, mc.usnet_ip)
    finally:
        wire.close()
    assert kernel[1] == [[(3, G, ("10.9.0.1", "10.9.0.2"))]] * 2  # the walk is what it means to be
    assert usnet == kernel
