"""The TCP socket options real servers set, on usnet and on the kernel side by side (root, TAP).

TCP_CORK, TCP_QUICKACK, TCP_DEFER_ACCEPT, TCP_FASTOPEN, TCP_FASTOPEN_CONNECT and SO_BINDTODEVICE
were ENOPROTOOPT on usnet; Linux takes them. Each is set and read back on a kernel socket in the
test's namespace and on a usnet socket in the same state (new, listening, connected): the same
values kept, the same errors. TCP_CORK and MSG_MORE are also seen on the wire: an HTTP server's
header and body, written apart while corked, leave as one segment, from the kernel and from usnet alike
(an AF_PACKET socket on the TAP's host end sees both directions).
"""

from __future__ import annotations

import errno
import socket
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from usnet import socket as us
from usnet.client import Client

pytestmark = pytest.mark.privileged
LIMIT = 10.0  # seconds for any wait: only reached when something is broken
ETH_P_ALL = 0x0003
T = socket.IPPROTO_TCP
CORK, DEFER, QUICKACK, TFO, TFO_CONNECT, BINDTODEVICE = 3, 9, 12, 23, 30, 25


def _outcome(s, level: int, opt: int, value=None, buflen: int = 0):
    """What getsockopt (value None) or setsockopt gives: the value, "ok", or the errno's name."""
    try:
        if value is None:
            return s.getsockopt(level, opt, buflen) if buflen else s.getsockopt(level, opt)
        s.setsockopt(level, opt, value)
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]


# (option, values set in turn, each read back)
_TCP = [
    (CORK, [1, 5, 0, -1, 0]),
    (QUICKACK, [0, 1, 2, 0, -3]),
    (DEFER, [1, 2, 3, 5, 10, 100, 1000, -1, 0]),
    (TFO, [5, 100000, -1, 0]),
    (TFO_CONNECT, [1, 2, -1, 0]),
]


def _walk(s, ifname: str) -> list:
    """The same calls on one socket: every option read, set to each value and read back."""
    got = []
    for opt, values in _TCP:
        got.append((opt, _outcome(s, T, opt)))
        for v in values:
            got.append((opt, v, _outcome(s, T, opt, v), _outcome(s, T, opt)))
    for name in (b"nosuch0", ifname.encode(), b"", ifname.encode() + b"\0junk"):
        got.append((name, _outcome(s, socket.SOL_SOCKET, BINDTODEVICE, name),
                    _outcome(s, socket.SOL_SOCKET, BINDTODEVICE, None, 16),
                    _outcome(s, socket.SOL_SOCKET, BINDTODEVICE, None, 4)))
    got.append(("bind-none", _outcome(s, socket.SOL_SOCKET, BINDTODEVICE, b""),
                _outcome(s, socket.SOL_SOCKET, BINDTODEVICE)))
    return got


def _listeners(client, ifname: str, usnet_ip: str, host_ip: str) -> tuple:
    """A kernel listener on the host's address and a usnet one on usnet's, each with a timeout."""
    k_lst = socket.socket()
    k_lst.bind((host_ip, 0))
    k_lst.listen()
    k_lst.settimeout(LIMIT)
    u_lst = us.socket(client=client, netif=ifname)
    u_lst.bind((usnet_ip, 0))
    u_lst.listen()
    u_lst.settimeout(LIMIT)
    return k_lst, u_lst


def test_tcp_options_are_kept_and_refused_as_linux_in_every_state(tap_domain):
    d, ifname, usnet_ip, host_ip = tap_domain
    client = Client.local(d)
    k_lst, u_lst = _listeners(client, ifname, usnet_ip, host_ip)
    opened = [k_lst, u_lst]
    try:
        # new sockets
        with socket.socket() as k, us.socket(client=client, netif=ifname) as u:
            assert _walk(u, ifname) == _walk(k, ifname)
        # listeners
        assert _walk(u_lst, ifname) == _walk(k_lst, ifname)
        # connected: each to a listener of the other kind, over the TAP
        k = socket.create_connection(u_lst.getsockname(), timeout=LIMIT)
        u = us.create_connection(k_lst.getsockname(), timeout=LIMIT, client=client, netif=ifname)
        opened += [k, u, k_lst.accept()[0], u_lst.accept()[0]]
        assert _walk(u, ifname) == _walk(k, ifname)
        # SO_BINDTODEVICE chooses a usnet socket's netif (the domain's name for it, here the TAP's),
        # as netif= does; once its flow is on one, another netif is EINVAL
        b = us.socket(client=client)
        b.settimeout(LIMIT)
        opened.append(b)
        b.setsockopt(socket.SOL_SOCKET, BINDTODEVICE, ifname.encode())
        b.connect(k_lst.getsockname())
        opened.append(k_lst.accept()[0])
        assert b.getsockopt(socket.SOL_SOCKET, BINDTODEVICE, 16) == ifname.encode() + b"\0"
        others = [str(n["netif"]["name"]) for n in client.status()["netifs"] if n["netif"]["name"] != ifname]
        for other in others:
            assert _outcome(b, socket.SOL_SOCKET, BINDTODEVICE, other.encode()) == "EINVAL"
    finally:
        for s in opened:
            s.close()


class Capture:
    """The TCP segments with data on the TAP's host end, from `src` to port `dport`."""

    def __init__(self, ifname: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.2)
        self.seen: list = []

    def data(self, src: str, dport: int, total: int) -> list[int]:
        """The payload lengths of the data segments from src to dport, read until they add up
        to `total`; fails after LIMIT seconds."""
        deadline = time.monotonic() + LIMIT
        while True:
            got = [len(p[TCP].payload) for p in self.seen
                   if p[IP].src == src and p[TCP].dport == dport and len(p[TCP].payload)]
            if sum(got) >= total:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"saw {got} of {total} bytes")
            try:
                frame = self.sock.recv(70000)
            except TimeoutError:
                continue
            pkt = Ether(frame)
            if IP in pkt and TCP in pkt:
                self.seen.append(pkt[IP])

    def close(self) -> None:
        self.sock.close()


def _serve_corked(s, header: bytes, body: bytes) -> None:
    """An HTTP server's answer as nginx sends it: TCP_NODELAY, cork, header, body, uncork."""
    s.setsockopt(T, socket.TCP_NODELAY, 1)
    s.setsockopt(T, CORK, 1)
    s.sendall(header)
    s.sendall(body)
    s.setsockopt(T, CORK, 0)


def _read(s, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        assert chunk
        got += chunk
    return got


def test_corked_header_and_body_leave_as_one_segment_from_the_kernel_and_from_usnet(tap_domain):
    d, ifname, usnet_ip, host_ip = tap_domain
    client = Client.local(d)
    header = b"HTTP/1.1 200 OK\r\nContent-Length: 700\r\n\r\n"
    body = b"b" * 700
    cap = Capture(ifname)
    k_lst, u_lst = _listeners(client, ifname, usnet_ip, host_ip)
    opened = [k_lst, u_lst]
    try:
        # usnet serves, the kernel reads
        kc = socket.create_connection(u_lst.getsockname(), timeout=LIMIT)
        us_srv, _ = u_lst.accept()
        opened += [kc, us_srv]
        _serve_corked(us_srv, header, body)
        assert _read(kc, len(header + body)) == header + body
        usnet_segs = cap.data(usnet_ip, kc.getsockname()[1], len(header + body))
        # the kernel serves, usnet reads
        uc = us.create_connection(k_lst.getsockname(), timeout=LIMIT, client=client, netif=ifname)
        k_srv, _ = k_lst.accept()
        opened += [uc, k_srv]
        _serve_corked(k_srv, header, body)
        assert _read(uc, len(header + body)) == header + body
        kernel_segs = cap.data(host_ip, uc.getsockname()[1], len(header + body))
        assert usnet_segs == kernel_segs == [len(header + body)]
        # MSG_MORE corks one write: the header with it, the body without: one segment, on both
        for s, peer in ((us_srv, kc), (k_srv, uc)):
            s.send(header, socket.MSG_MORE)
            s.sendall(body)
            assert _read(peer, len(header + body)) == header + body
        usnet_segs = cap.data(usnet_ip, kc.getsockname()[1], 2 * len(header + body))
        kernel_segs = cap.data(host_ip, uc.getsockname()[1], 2 * len(header + body))
        assert usnet_segs == kernel_segs == [len(header + body)] * 2
        # still corked, a lone small write goes all the same (the 200 ms ceiling), on both
        for s, peer in ((us_srv, kc), (k_srv, uc)):
            s.setsockopt(T, CORK, 1)
            s.sendall(b"tail")
            assert _read(peer, 4) == b"tail"  # (a blocking read: bounded by LIMIT)
    finally:
        for s in opened:
            s.close()
        cap.close()


SIOCOUTQNSD = 0x894B  # the kernel socket's bytes not yet sent
TIOCOUTQ = 0x5411  # (SIOCOUTQ) its bytes not yet acknowledged
FIONREAD = 0x541B  # (SIOCINQ) its bytes not yet read


def _fill(s) -> int:
    """Non-blocking sends of 4 KiB until EAGAIN (bounded); the bytes taken."""
    s.setblocking(False)
    total = 0
    for _ in range(10_000):
        try:
            total += s.send(b"n" * 4096)
        except BlockingIOError:
            return total
    raise AssertionError("send never blocked")


def _fill_until_closed(s, closed) -> None:
    """Fill `s` (`_fill`) until the peer's window is `closed()`, and once more then: the unsent
    can no longer drain. Between fills, wait (bounded) for `s` to be writable again."""
    import select

    for _ in range(400):
        _fill(s)
        if closed():
            _fill(s)
            return
        select.select([], [s], [], 0.05)
    raise AssertionError("the peer's window never closed")


def _lowat_state(kc, u_peer, uc, k_peer) -> str:
    """Both connections as each end sees them: what a stalled read loop reports (issue 16)."""
    import fcntl
    import struct

    def ioctl(s, req: int) -> int:
        return struct.unpack("i", fcntl.ioctl(s.fileno(), req, b"\0" * 4))[0]

    def kernel(s) -> str:  # tcp_info: probes (u8 at 3), backoff (u8 at 4); unsent, queued, readable
        info = s.getsockopt(T, socket.TCP_INFO, 8)
        return (f"unsent {ioctl(s, SIOCOUTQNSD)} outq {ioctl(s, TIOCOUTQ)} inq {ioctl(s, FIONREAD)} "
                f"probes {info[3]} backoff {info[4]}")

    def usnet(c) -> str:
        return (f"snd_una {c.snd_una} snd_nxt {c.snd_nxt} snd_wnd {c.snd_wnd} unsent {c.unsent} "
                f"rcv_nxt {c.rcv_nxt} rcv_window {c.rcv_window} window_probes {c.stats.window_probes}")

    return (f"kernel sender [{kernel(kc)}], usnet receiver [{usnet(u_peer.connection)}]; "
            f"usnet sender [{usnet(uc.connection)}], kernel receiver [{kernel(k_peer)}]")


def _read_until_writable(half: str, s, peer, state) -> None:
    """`peer` reads (bounded) until `s`, which sends to it, is writable again; a read that times
    out, or a sender still unwritable, fails naming the half and with both ends' `state()`."""
    import select

    peer.settimeout(LIMIT)
    for i in range(1000):
        if select.select([], [s], [], 0)[1]:
            break
        try:
            peer.recv(65536)
        except TimeoutError:
            raise AssertionError(f"{half}: read {i} timed out; {state()}") from None
    assert select.select([], [s], [], LIMIT)[1] == [s], f"{half}: never writable; {state()}"


def test_notsent_lowat_bounds_the_unsent_bytes_on_the_kernel_and_on_usnet(tap_domain):
    """trio's setting (16 KiB): a peer that does not read; the sender stops taking data once
    about that much waits unsent (measured: kernel 23168 or 33304, usnet 17832; without the
    option 63712 and 51056), and select says unwritable, on both stacks; after the peer reads, it is
    writable again."""
    import fcntl
    import select
    import struct

    d, ifname, usnet_ip, host_ip = tap_domain
    client = Client.local(d)
    lowat = 16384
    k_lst, u_lst = _listeners(client, ifname, usnet_ip, host_ip)
    opened = [k_lst, u_lst]
    try:
        kc = socket.create_connection(u_lst.getsockname(), timeout=LIMIT)  # the kernel sends
        u_peer, _ = u_lst.accept()
        uc = us.create_connection(k_lst.getsockname(), timeout=LIMIT, client=client, netif=ifname)
        k_peer, _ = k_lst.accept()
        opened += [kc, u_peer, uc, k_peer]
        for s in (kc, uc):
            s.setsockopt(T, socket.TCP_NOTSENT_LOWAT, lowat)
            assert s.getsockopt(T, socket.TCP_NOTSENT_LOWAT) == lowat
        # the stacks go on sending what the peers' windows let in, which may take the unsent below
        # the bound again (and the sender writable): fill until the receiver's window is closed
        _fill_until_closed(kc, lambda: u_peer.connection.rcv_window == 0)
        _fill_until_closed(uc, lambda: uc.connection.snd_wnd == 0)
        kernel_unsent = struct.unpack("i", fcntl.ioctl(kc.fileno(), SIOCOUTQNSD, b"\0" * 4))[0]
        usnet_unsent = uc.connection.unsent
        # Linux checks the bound before each buffer it fills (up to 64 KiB with TSO); usnet
        # takes up to the bound and a segment over it
        assert lowat <= kernel_unsent <= lowat + 65536, kernel_unsent
        assert lowat <= usnet_unsent <= lowat + uc.connection.mss, usnet_unsent
        for s in (kc, uc):
            assert select.select([], [s], [], 0)[1] == []
        # the peers read: the senders are writable again
        for half, s, peer in (("the kernel sends, usnet reads", kc, u_peer),
                              ("usnet sends, the kernel reads", uc, k_peer)):
            _read_until_writable(half, s, peer, lambda: _lowat_state(kc, u_peer, uc, k_peer))
    finally:
        for s in opened:
            s.close()


def _deferred(lst, data: bool) -> tuple:
    """A kernel client connects to `lst` (TCP_DEFER_ACCEPT set) and sends b"hello" at once, or
    nothing: (readable within 0.3 s, seconds until readable, what the accepted socket reads
    then (nothing: b""), whether its peer is the client)."""
    import select

    cl = socket.create_connection(lst.getsockname(), timeout=LIMIT)  # returns at the handshake
    try:
        start = time.monotonic()
        if data:
            cl.sendall(b"hello")
        early = bool(select.select([lst], [], [], 0.3)[0])
        assert select.select([lst], [], [], LIMIT)[0], "the listener never became readable"
        took = time.monotonic() - start
        conn, _ = lst.accept()
        with conn:
            conn.setblocking(False)
            try:
                got = conn.recv(100)
            except BlockingIOError:
                got = b""
            return early, took, got, conn.getpeername() == cl.getsockname()
    finally:
        cl.close()


def test_defer_accept_holds_a_connection_until_its_data_or_the_period_end_on_the_kernel_and_on_usnet(tap_domain):
    """TCP_DEFER_ACCEPT acted on, as Linux: a kernel client's connection without data does not make
    the listener readable when the handshake ends (its bare ACK is dropped), but once the period
    is over (1 s: the SYN-ACK goes again and its ACK is taken, the connection is not dropped);
    with data, at once, and the data is there to read."""
    d, ifname, usnet_ip, host_ip = tap_domain
    client = Client.local(d)
    k_lst, u_lst = _listeners(client, ifname, usnet_ip, host_ip)
    try:
        got = {}
        for name, lst in (("kernel", k_lst), ("usnet", u_lst)):
            lst.setsockopt(T, DEFER, 1)
            quiet = _deferred(lst, data=False)
            lst.setsockopt(T, DEFER, 30)  # changed while listening: the next connection's
            loud = _deferred(lst, data=True)
            got[name] = quiet, loud
        for name, ((early, took, data, peer), (l_early, l_took, l_data, l_peer)) in got.items():
            assert not early and 0.6 < took < 4.0 and data == b"" and peer, (name, got[name])
            assert l_early and l_took < 2.0 and l_data == b"hello" and l_peer, (name, got[name])  # the period: 31 s
    finally:
        k_lst.close()
        u_lst.close()


MSG_ERRQUEUE, IP_RECVERR = 0x2000, 11


def _err_read(s, ancbufsize: int = 512):
    """recvmsg(MSG_ERRQUEUE), its control message read as sock_extended_err and offender."""
    import struct

    try:
        data, anc, flags, addr = s.recvmsg(100, ancbufsize, MSG_ERRQUEUE)
    except OSError as e:
        return errno.errorcode[e.errno]
    msgs = []
    for level, kind, blob in anc:
        ee = struct.unpack("=IBBBBII", blob[:16]) if len(blob) >= 16 else blob
        offender = (struct.unpack("=H", blob[16:18])[0], socket.inet_ntoa(blob[20:24])) if len(blob) >= 24 else None
        msgs.append((level, kind, len(blob), ee, offender))
    return data, msgs, flags, addr


def _plain_read(s):
    try:
        return s.recvfrom(100, socket.MSG_DONTWAIT)
    except OSError as e:
        return errno.errorcode[e.errno]


def _errq_walk(s, dest: tuple) -> list:
    """The same calls on an unconnected UDP socket: IP_RECVERR on, datagrams to a port nobody has,
    the error queue and the socket's error read as a program reads them."""
    import select

    def ready():
        return bool(select.select([s], [], [], LIMIT)[0])

    got = [("default", s.getsockopt(socket.IPPROTO_IP, IP_RECVERR))]
    s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 5)
    got.append(("set 5", s.getsockopt(socket.IPPROTO_IP, IP_RECVERR)))
    got.append(("empty", _err_read(s), _plain_read(s)))
    s.sendto(b"first", dest)
    got.append(("first", ready(), _err_read(s), _err_read(s), _plain_read(s)))  # the dequeue clears sk_err
    s.sendto(b"second", dest)
    # sk_err first (the unconnected socket is told), then the queue still holds the report; cut
    got.append(("second", ready(), _plain_read(s), _err_read(s, 20), _err_read(s, 0)))
    s.sendto(b"third", dest)
    got.append(("third", ready(), _err_read(s, 0), _plain_read(s)))
    return got


def test_ip_recverr_queues_the_kernels_port_unreachable_as_linux(tap_domain):
    """IP_RECVERR on an unconnected UDP socket, usnet's and the kernel's: the port unreachable a
    kernel peer answers is read with recvmsg(MSG_ERRQUEUE) as the same sock_extended_err
    (ECONNREFUSED, origin ICMP, type 3 code 3, the offender's address), the quoted payload and
    destination; it is also the socket's error (recvfrom raises it once); the socket is readable
    while either is there, and an empty queue is EAGAIN."""
    d, ifname, _usnet_ip, host_ip = tap_domain
    client = Client.local(d)
    dest = (host_ip, 9)  # the discard port: nobody has it on the host
    k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    k.bind((host_ip, 0))  # its error comes from its own address, as usnet's from the host's
    u = us.socket(socket.AF_INET, socket.SOCK_DGRAM, client=client, netif=ifname)
    try:
        kernel, usnet = _errq_walk(k, dest), _errq_walk(u, dest)
        assert usnet == kernel
        first = kernel[3][2]
        assert first[0] == b"first" and first[2] == MSG_ERRQUEUE and first[3] == dest
        assert first[1] == [(socket.IPPROTO_IP, IP_RECVERR, 32, (errno.ECONNREFUSED, 2, 3, 3, 0, 0, 0),
                             (socket.AF_INET, host_ip))]
        assert d.switches[ifname].counts["rx_icmp_error"] == 3
    finally:
        k.close()
        u.close()


def _syncookies_recv() -> int:
    """TcpExt SyncookiesRecv of the namespace the test runs in."""
    with open("/proc/net/netstat") as f:
        head, values = [line.split() for line in f.readlines()[:2]]
    return int(values[head.index("SyncookiesRecv")])


def test_a_connection_made_from_a_syn_cookie_is_not_deferred_on_the_kernel(tap_domain):
    """The kernel's half of tests/proto/test_tcp_defer_accept.py's cookie test (usnet's socket face
    cannot ask for a cookie for every SYN; its endpoint can, and does as this): with
    net.ipv4.tcp_syncookies=2 in the test's namespace every SYN gets a cookie, and a connection
    without data to a TCP_DEFER_ACCEPT listener (30 s) is accepted at its bare ACK, as the cookie
    path makes the child at once (tcp_get_cookie_sock: no request sock, nothing to defer)."""
    _d, _ifname, _usnet_ip, host_ip = tap_domain
    path = "/proc/sys/net/ipv4/tcp_syncookies"
    with open(path) as f:
        before = f.read()
    lst = socket.socket()
    try:
        with open(path, "w") as f:
            f.write("2")
        lst.bind((host_ip, 0))
        lst.listen()
        lst.setsockopt(T, DEFER, 30)
        recv = _syncookies_recv()
        cl = socket.create_connection(lst.getsockname(), timeout=LIMIT)
        start = time.monotonic()
        import select

        assert select.select([lst], [], [], LIMIT)[0]
        assert time.monotonic() - start < 2.0  # not the period's 31 s
        assert _syncookies_recv() == recv + 1
        conn, _ = lst.accept()
        conn.close()
        cl.close()
    finally:
        lst.close()
        with open(path, "w") as f:
            f.write(before.strip())
