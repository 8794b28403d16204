"""IPv4 multicast on UDP, on usnet and on the kernel side by side (root, TAP in the test's namespace).

usnet refused it (IP_ADD_MEMBERSHIP ENOPROTOOPT, a datagram to a group EOPNOTSUPP). Now a join is a
control request the domain checks (P.JoinGroup), the switch copies a group datagram to every member
flow and speaks IGMPv3 for the netif, and a socket sends to a group at its MAC with the multicast
TTL. Here: the option calls give what the kernel's give, call by call; datagrams cross both ways
(the kernel in the namespace is the other host); the reports on the wire are well-formed IGMPv3
and a query is answered; a client's own control requests get clear refusals.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import time
from types import SimpleNamespace

import pytest
from scapy.contrib.igmpv3 import IGMPv3, IGMPv3mq, IGMPv3mr
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether

from tests.helpers.util import fresh_subnet, veth_pair
from tests.interop.test_sockopts_linux import _outcome as _sockopt_outcome
from usnet import socket as us
from usnet.abi import protocol as P
from usnet.client import Client

pytestmark = pytest.mark.privileged
LIMIT = 10.0  # seconds for any wait: only reached when something is broken
IPP = socket.IPPROTO_IP
ADD, DROP, M_IF, M_TTL, M_LOOP, M_ALL, PKTINFO = 35, 36, 32, 33, 34, 49, 8
G, G2 = "239.1.2.3", "239.7.7.7"


def _mreq(group: str, iface: str) -> bytes:
    return struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(iface))


def _mreqn(group: str, ifindex: int, addr: str = "0.0.0.0") -> bytes:
    return struct.pack("4s4si", socket.inet_aton(group), socket.inet_aton(addr), ifindex)


def _outcome(s, opt: int, value=None):
    """getsockopt (value None) or setsockopt at IPPROTO_IP: the value, "ok", or the errno's name."""
    return _sockopt_outcome(s, IPP, opt, value)


def _default_route(ifname: str) -> None:
    """The kernel's default route out of the TAP, as a host's: so the kernel finds the interface
    of a join with INADDR_ANY (ip_mc_find_dev) as usnet's netif, which has its gateway, does."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        (idx,) = ipr.link_lookup(ifname=ifname)
        ipr.route("add", dst="0.0.0.0/0", oif=idx)


@contextlib.contextmanager
def sockets_on(d, ifname: str, usnet_ip: str, host_ip: str, family: int = socket.AF_INET, ksetup=None):
    """The tests' environment on a TAP domain: `usock` and `ksock` make a usnet and a kernel UDP
    socket of `family` (bound to the port, SO_REUSEADDR if asked; `ksetup` called on each kernel
    one), all closed at the end. tests/interop/test_multicast6.py's fixture is this with AF_INET6."""
    client = Client.local(d)
    made: list = []

    def sock(new, port: int, reuse: bool, bind: bool):
        s = new()
        made.append(s)
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if bind:
            s.bind(("", port))
        s.settimeout(LIMIT)
        return s

    def usock(port: int = 0, reuse: bool = False, bind: bool = True):
        return sock(lambda: us.socket(family, socket.SOCK_DGRAM, client=client, netif=ifname), port, reuse, bind)

    def ksock(port: int = 0, reuse: bool = False, bind: bool = True):
        s = sock(lambda: socket.socket(family, socket.SOCK_DGRAM), port, reuse, bind)
        if ksetup is not None:
            ksetup(s)
        return s

    e = SimpleNamespace(d=d, ifname=ifname, usnet_ip=usnet_ip, host_ip=host_ip, client=client, usock=usock,
                        ksock=ksock, switch=d.switches[ifname])
    try:
        yield e
    finally:
        for s in made:
            s.close()


@pytest.fixture
def mc(tap_domain):
    d, ifname, usnet_ip, host_ip = tap_domain
    _default_route(ifname)
    with sockets_on(d, ifname, usnet_ip, host_ip) as e:
        yield e


# -- the option calls, call by call ------------------------------------------------------------------


def _walk(s, me: str, ifindex: int) -> list:
    """The multicast option calls a program makes, right and wrong, in one order; what each gives
    (a read of IP_MULTICAST_IF as "me" when it is the socket's own address)."""
    me_int = int.from_bytes(socket.inet_aton(me), "little")
    out = [_outcome(s, o) for o in (M_TTL, M_LOOP, M_ALL, M_IF, ADD)]
    for opt, v in ((ADD, 1), (ADD, b"\0" * 7), (ADD, _mreq("10.1.2.3", me)), (ADD, _mreq("255.255.255.255", me)),
                   (ADD, _mreq(G, "10.250.250.250")), (ADD, _mreqn(G, 99999)),
                   (ADD, _mreq(G, me)), (ADD, _mreq(G, me)), (ADD, _mreqn(G, ifindex)),
                   (ADD, struct.pack("4sl", socket.inet_aton(G2), socket.INADDR_ANY)),  # Python's recipe
                   (ADD, _mreqn("224.0.0.251", ifindex, me)),  # a link-local group (mDNS's): Linux lets it
                   (DROP, _mreq("239.9.9.9", me)), (DROP, _mreq(G, me)), (DROP, _mreq(G, me)),
                   (DROP, b"\0" * 4), (DROP, _mreqn(G2, ifindex)),
                   (M_TTL, -1), (M_TTL, 256), (M_TTL, -2), (M_TTL, 5), (M_TTL, b"\x07"),
                   (M_LOOP, 0), (M_LOOP, 7), (M_ALL, 0),
                   (M_IF, socket.inet_aton("10.250.250.250")), (M_IF, socket.inet_aton(me)),
                   (M_IF, _mreqn("0.0.0.0", 99999)), (M_IF, b"\0\0")):
        got = _outcome(s, opt, v)
        out.append((opt, v if isinstance(v, int) else len(v), got,
                    tuple("me" if (o == M_IF and r == me_int) else r for o in (M_TTL, M_LOOP, M_ALL, M_IF)
                          for r in [_outcome(s, o)])))
    return out


def test_the_option_calls_give_what_the_kernels_give(mc):
    """Each call on a bound kernel socket and on a bound usnet socket: the same values kept, the same
    errors (EINVAL, ENODEV, EADDRINUSE, EADDRNOTAVAIL), in Linux's order."""
    k, u = mc.ksock(), mc.usock()
    idx = socket.if_nametoindex(mc.ifname)
    kernel = _walk(k, mc.host_ip, idx)
    assert kernel[5 + 9][2] == "ok" and kernel[5 + 7][2] == "EADDRINUSE"  # the walk tries what it means to
    assert _walk(u, mc.usnet_ip, idx) == kernel


def test_memberships_are_bounded_as_linux_and_an_unbound_socket_joins_too(mc):
    """igmp_max_memberships: the 21st group is ENOBUFS, bound or not; a socket joins before it
    binds (its flow joins when it has one) and hears the group once bound."""
    for bound in (True, False):
        k, u = mc.ksock(bind=bound), mc.usock(bind=bound)
        got = {}
        for name, s, me in (("kernel", k, mc.host_ip), ("usnet", u, mc.usnet_ip)):
            got[name] = [_outcome(s, ADD, _mreq(f"239.0.1.{i}", me)) for i in range(1, 23)]
        assert got["kernel"] == ["ok"] * 20 + ["ENOBUFS"] * 2
        assert got["usnet"] == got["kernel"]
    u = mc.usock(bind=False)
    u.setsockopt(IPP, ADD, _mreq(G, mc.usnet_ip))
    u.bind(("", 47001))
    k = mc.ksock()
    k.setsockopt(IPP, M_IF, socket.inet_aton(mc.host_ip))
    k.sendto(b"after bind", (G, 47001))
    assert u.recvfrom(100) == (b"after bind", (mc.host_ip, k.getsockname()[1]))


# -- datagrams ----------------------------------------------------------------------------------


def _receivers(mc, sender, recv_sock, group_if, *, group: str = G, base: int = 47100,
               opts: tuple = (IPP, ADD, DROP, M_ALL), mreq=_mreq) -> dict:
    """Which sockets hear a group, on the receiving stack `recv_sock` makes (kernel or usnet):
    a and b share port A with SO_REUSEADDR and both join; c is on port C with IP_MULTICAST_ALL 0
    and joins nothing; e is on port E and joins nothing (IP_MULTICAST_ALL on, Linux's default:
    it hears a group another socket of the host joined); f joined and left (IP_MULTICAST_ALL 0).
    The datagrams to c, e and f go first, then one to A: once a and b have that one, the
    earlier ones were delivered if they were going to be. `opts` (level, join, leave, all) and
    `mreq(group, group_if)` make it IPv6's (tests/interop/test_multicast6.py)."""
    level, join, leave, m_all = opts
    A, C, E, F = base, base + 1, base + 2, base + 3
    a, b, c, e, f = recv_sock(A, True), recv_sock(A, True), recv_sock(C), recv_sock(E), recv_sock(F)
    for s in (a, b, f):
        s.setsockopt(level, join, mreq(group, group_if))
    for s in (c, f):
        s.setsockopt(level, m_all, 0)
    f.setsockopt(level, leave, mreq(group, group_if))
    for port in (C, E, F, A):
        sender.sendto(f"to {port}".encode(), (group, port))
    heard = {"a": a.recvfrom(100)[0], "b": b.recvfrom(100)[0]}
    for name, s in (("c", c), ("e", e), ("f", f)):
        s.setblocking(False)
        try:
            heard[name] = s.recv(100)
        except BlockingIOError:
            heard[name] = None
    return heard


def test_a_group_reaches_its_members_as_on_linux(mc):
    """The kernel sends to a group and usnet's members hear it, each its own copy; usnet sends and
    the kernel's do: the same sockets hear, on either side."""
    k = mc.ksock()
    k.setsockopt(IPP, M_IF, socket.inet_aton(mc.host_ip))
    on_usnet = _receivers(mc, k, mc.usock, mc.usnet_ip)
    u = mc.usock()
    on_kernel = _receivers(mc, u, mc.ksock, mc.host_ip)
    want = {"a": b"to 47100", "b": b"to 47100", "c": None, "e": b"to 47102", "f": None}
    assert on_kernel == want
    assert on_usnet == want
    assert mc.switch.counts["rx_group_datagrams"] >= 1


def big_to_group(sender, recv_sock, group: str, port: int, join, blob: bytes) -> list[bytes]:
    """What two members sharing `port` (SO_REUSEADDR; `join(s)` makes each a member) hear of one
    datagram `blob`, too big for the link (it goes in fragments), sent to (`group`, `port`)."""
    a, b = recv_sock(port, True), recv_sock(port, True)
    for s in (a, b):
        join(s)
    sender.sendto(blob, (group, port))
    return [a.recvfrom(65536)[0], b.recvfrom(65536)[0]]


def test_a_group_datagram_in_fragments_reaches_every_member_as_on_linux(mc):
    """A 3,000-byte datagram to a group crosses the link in fragments: usnet puts it
    back together and gives each member a copy (it dropped them as `rx_fragment`), as the kernel's
    members get usnet's."""
    blob = bytes(range(256)) * 11 + b"end"
    k = mc.ksock()
    k.setsockopt(IPP, M_IF, socket.inet_aton(mc.host_ip))
    frags = mc.switch.frags["frag_in"]
    on_usnet = big_to_group(k, mc.usock, G, 47150, lambda s: s.setsockopt(IPP, ADD, _mreq(G, mc.usnet_ip)), blob)
    assert mc.switch.frags["frag_in"] >= frags + 2 and "rx_fragment" not in mc.switch.drops
    on_kernel = big_to_group(mc.usock(), mc.ksock, G, 47151,
                             lambda s: s.setsockopt(IPP, ADD, _mreq(G, mc.host_ip)), blob)
    assert on_usnet == on_kernel == [blob, blob]


def test_what_usnet_sends_to_a_group_carries_the_multicast_ttl_and_loops_back(mc):
    """TTL 1 by default and IP_MULTICAST_TTL's after (the kernel's IP_RECVTTL reads it); with
    IP_MULTICAST_LOOP a member in the same domain hears it too, without it not."""
    k = mc.ksock(47200)
    k.setsockopt(IPP, ADD, _mreq(G, mc.host_ip))
    member = mc.usock(47200)
    member.setsockopt(IPP, ADD, _mreq(G, mc.usnet_ip))
    assert ttl_and_loop(mc.usock(), k, member, (G, 47200), mc.usnet_ip, IPP, M_TTL, M_LOOP, 12) == [1, 5]


def ttl_and_loop(u, k, member, group: tuple[str, int], usnet_ip: str, level: int, ttl_opt: int, loop_opt: int,
                 recv_ttl: int) -> list[int]:
    """usnet socket `u` sends to `group` with the default multicast TTL (hop limit), then 5
    (`ttl_opt`): kernel member `k` reads each (`recv_ttl`: IP_RECVTTL, IPV6_RECVHOPLIMIT) and usnet
    `member` hears each (looped back); with `loop_opt` 0 only `k` hears, with 1 both again. The
    two TTLs seen (tests/interop/test_multicast6.py's too)."""
    k.setsockopt(level, recv_ttl, 1)
    ttls = []
    for ttl in (None, 5):
        if ttl is not None:
            u.setsockopt(level, ttl_opt, ttl)
        u.sendto(b"ttl", group)
        _data, anc, _flags, src = k.recvmsg(100, 64)
        assert src[:2] == (usnet_ip, u.getsockname()[1])
        ttls.append(struct.unpack("i", anc[0][2])[0])
        assert member.recvfrom(100)[:1] == (b"ttl",)  # looped back
    u.setsockopt(level, loop_opt, 0)
    u.sendto(b"no loop", group)
    assert k.recvfrom(100)[0] == b"no loop"
    u.setsockopt(level, loop_opt, 1)
    u.sendto(b"loop", group)
    assert k.recvfrom(100)[0] == b"loop"
    assert member.recvfrom(100)[0] == b"loop"  # not "no loop": that one never reached it
    return ttls


# -- IGMP on the wire ---------------------------------------------------------------------------------


class _Wire:
    """The TAP's host end, seen by an AF_PACKET socket: the frames usnet writes arrive on it."""

    def __init__(self, ifname: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.2)

    def igmp_from(self, src: str) -> Ether:
        """The next IGMP frame from `src`; fails after LIMIT seconds."""
        return self.next(lambda f: IP in f and f[IP].proto == 2 and f[IP].src == src, f"IGMP from {src}")

    def next(self, wanted, what: str) -> Ether:
        """The next frame `wanted` says yes to; fails after LIMIT seconds."""
        deadline = time.monotonic() + LIMIT
        while time.monotonic() < deadline:
            try:
                frame = Ether(self.sock.recv(65535))
            except TimeoutError:
                continue
            if wanted(frame):
                return frame
        raise AssertionError(f"no {what} within {LIMIT} s")

    def close(self) -> None:
        self.sock.close()


def _check_report(frame: Ether, usnet_mac: str, records: list[tuple[int, str]]) -> None:
    """A well-formed IGMPv3 report, as Linux's: to 224.0.0.22 at its MAC, TTL 1, Router Alert,
    checksums scapy computes the same, and these (record type, group) records."""
    assert frame.dst == "01:00:5e:00:00:16" and frame.src == usnet_mac
    ip = frame[IP]
    assert (ip.dst, ip.ttl, ip.ihl) == ("224.0.0.22", 1, 6)
    assert bytes(ip)[20:24] == b"\x94\x04\x00\x00"  # IP Router Alert
    raw_ip = bytes(ip)
    assert bytes(IP(raw_ip)) == raw_ip  # header checksum as scapy computes it
    igmp = IGMPv3(bytes(ip.payload))
    assert igmp.type == 0x22
    rep = igmp[IGMPv3mr]
    assert [(r.rtype, r.maddr) for r in rep.records] == records
    body = bytes(ip.payload)
    re = IGMPv3(body)
    re.chksum = None
    assert bytes(re) == body  # the IGMP checksum too


def test_igmp_reports_on_join_and_leave_and_a_query_answered(mc):
    """The first join of a group sends CHANGE_TO_EXCLUDE {} (twice, as Linux's igmp_qrv 2), a
    second member nothing, a general query MODE_IS_EXCLUDE for each group, the last leave
    CHANGE_TO_INCLUDE {} (a closed socket's too, twice). Each checked as Linux's own would be."""
    wire = _Wire(mc.ifname)
    mac = mc.d.switches[mc.ifname].netif.mac.hex(":")
    try:
        a, b = mc.usock(47300, True), mc.usock(47300, True)
        a.setsockopt(IPP, ADD, _mreq(G, mc.usnet_ip))
        for _ in range(2):  # said twice (the robustness variable), the second within a second
            _check_report(wire.igmp_from(mc.usnet_ip), mac, [(4, G)])
        b.setsockopt(IPP, ADD, _mreq(G, mc.usnet_ip))
        reports = mc.switch.counts["igmp_reports"]
        q = (Ether(dst="01:00:5e:00:00:01", src="02:00:00:00:00:99") / IP(src=mc.host_ip, dst="224.0.0.1", ttl=1)
             / IGMPv3(type=0x11, mrcode=10) / IGMPv3mq())
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as tx:
            tx.bind((mc.ifname, 0))
            tx.send(bytes(q))
        _check_report(wire.igmp_from(mc.usnet_ip), mac, [(2, G)])
        assert mc.switch.counts["igmp_reports"] == reports + 1  # b's join said nothing
        a.setsockopt(IPP, DROP, _mreq(G, mc.usnet_ip))
        b.close()  # the last member: its membership ends with its flow
        for _ in range(2):
            _check_report(wire.igmp_from(mc.usnet_ip), mac, [(3, G)])
        assert not mc.switch.groups.refs
    finally:
        wire.close()


def test_a_group_not_joined_is_not_taken_off_the_wire(mc):
    """Before any join, and after the last leave, a datagram to the group is dropped at the MAC
    (the switch admits a group's MAC only while it has members)."""
    u = mc.usock(47400)
    k = mc.ksock()
    k.setsockopt(IPP, M_IF, socket.inet_aton(mc.host_ip))
    before = mc.switch.drops["rx_not_our_mac"]
    k.sendto(b"nobody", (G, 47400))
    k.sendto(b"unicast", (mc.usnet_ip, 47400))  # after it on the wire: once it is here, "nobody" was judged
    assert u.recvfrom(100)[0] == b"unicast"
    u.setsockopt(IPP, ADD, _mreq(G, mc.usnet_ip))
    k.sendto(b"member", (G, 47400))
    assert u.recvfrom(100)[0] == b"member"
    assert mc.switch.drops["rx_not_our_mac"] > before


# -- the trust boundary: a client's own control requests ---------------------------------------------------


def refusal(call) -> str:
    """What a control request `call` makes gives: "ok", or the errno's name of its refusal."""
    try:
        call()
    except OSError as e:
        return errno.errorcode[e.errno] if e.errno else str(e)
    return "ok"


def test_a_clients_forged_join_requests_get_clear_refusals(mc):
    """The domain checks every join itself, whatever the client library would have: an address
    outside 224/4 EINVAL, a TCP flow EPROTO, another session's channel ENOENT, a 21st group
    ENOBUFS, a group twice EADDRINUSE, a leave of a group not joined EADDRNOTAVAIL, a group of
    another length a protocol error; the domain keeps serving, and the refused flow hears nothing."""
    c = Client.local(mc.d)
    other = Client.local(mc.d)
    flow = c.udp_socket(mc.ifname, 47500)
    tcp = c.open_flow(mc.ifname, 6, 47501)[0]

    ch = flow.channel.id
    assert refusal(lambda: c.join_group(ch, socket.inet_aton("10.1.2.3"))) == "EINVAL"
    assert refusal(lambda: c.join_group(ch, socket.inet_aton("255.255.255.255"))) == "EINVAL"
    assert refusal(lambda: c.join_group(tcp.id, socket.inet_aton(G))) == "EPROTO"
    assert refusal(lambda: other.join_group(ch, socket.inet_aton(G))) == "ENOENT"
    assert refusal(lambda: c.join_group(ch, socket.inet_aton(G), False)) == "EADDRNOTAVAIL"
    got = [refusal(lambda i=i: c.join_group(ch, socket.inet_aton(f"239.0.2.{i}"))) for i in range(21)]
    assert got == ["ok"] * 20 + ["ENOBUFS"]
    assert refusal(lambda: c.join_group(ch, socket.inet_aton("239.0.2.0"))) == "EADDRINUSE"
    with pytest.raises(P.ProtocolError):  # the domain's decoder holds a group to 4 bytes
        P.decode_request(P.encode(P.JoinGroup(ch, b"\xef\x01\x02", True)))
    # the domain still serves, and nothing it refused was joined
    assert socket.inet_aton(G) not in mc.switch.groups.refs
    assert socket.inet_aton("10.1.2.3") not in mc.switch.groups.refs
    k = mc.ksock()
    k.setsockopt(IPP, M_IF, socket.inet_aton(mc.host_ip))
    k.sendto(b"to 239.0.2.5", ("239.0.2.5", 47500))
    assert flow.recv_many(1, LIMIT)[0][0] == b"to 239.0.2.5"


# -- an unmodified program ----------------------------------------------------------------------------

_PROGRAM = r"""
import socket, struct, sys
group, port, back = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
mreq = struct.pack("4sl", socket.inet_aton(group), socket.INADDR_ANY)
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
s.settimeout(10)
print("ready", type(s).__module__.split(".")[0], flush=True)
data, addr = s.recvfrom(1024)
t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
t.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
t.sendto(data.upper(), (group, back))
print(data.decode(), flush=True)
"""


def test_pythons_own_multicast_recipe_runs_unmodified_under_usnet_run(tapd):
    """The receiver and sender every Python multicast example shows (struct.pack("4sl", ...,
    INADDR_ANY), SO_REUSEADDR, IP_MULTICAST_TTL), under `usnet run`: it hears the kernel's
    datagram to the group and its answer to the group reaches a kernel member."""
    k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    k.bind(("", 47601))
    k.setsockopt(IPP, ADD, _mreq(G, tapd.host_ip))
    k.setsockopt(IPP, M_IF, socket.inet_aton(tapd.host_ip))
    k.settimeout(LIMIT)
    try:
        run_recipe(tapd.path, _PROGRAM, [G, "47600", "47601"], k, (G, 47600), tapd.usnet_ip)
    finally:
        k.close()


def run_recipe(path: str, program: str, args: list[str], k, group: tuple[str, int], usnet_ip: str) -> None:
    """`program` under `usnet run` (usnetd at `path`): once it says it is ready, kernel socket `k`
    sends it a datagram to `group`; it must answer to the group (`k` hears that, from `usnet_ip`)
    and print what it heard. Shared with tests/interop/test_multicast6.py."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, USNET_SOCKET=path, USNET_NETIF="usnet0")
    prog = subprocess.Popen([sys.executable, "-m", "usnet", "run", "--", sys.executable, "-c", program, *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = prog.stdout.readline()
        assert line.split() == ["ready", "usnet"], line or prog.stderr.read()
        k.sendto(b"hello members", group)
        data, src = k.recvfrom(100)
        assert (data, src[0]) == (b"HELLO MEMBERS", usnet_ip)
        out, err = prog.communicate(timeout=LIMIT)
        assert prog.returncode == 0, err
        assert out.strip() == "hello members"
    finally:
        if prog.poll() is None:
            prog.kill()
            prog.communicate()


def test_ip_pktinfo_names_the_group_a_datagram_was_sent_to(mc):
    """IP_PKTINFO on a member: ipi_addr is the group (the header's destination), ipi_spec_dst the
    receiver's own address, the index the TAP's, from the kernel and from usnet alike."""
    idx = socket.if_nametoindex(mc.ifname)
    got = {}
    k_send, u_send = mc.ksock(), mc.usock()
    k_send.setsockopt(IPP, M_IF, socket.inet_aton(mc.host_ip))
    for name, make, me, sender in (("usnet", mc.usock, mc.usnet_ip, k_send), ("kernel", mc.ksock, mc.host_ip, u_send)):
        r = make(47700)
        r.setsockopt(IPP, ADD, _mreq(G, me))
        r.setsockopt(IPP, PKTINFO, 1)
        sender.sendto(b"info", (G, 47700))
        sender.sendto(b"unicast", (me, 47700))
        for _ in range(2):
            data, anc, _flags, _src = r.recvmsg(100, 64)
            (level, kind, blob), = anc
            ifindex, spec_dst, addr = struct.unpack("=i4s4s", blob)
            got.setdefault(name, []).append((data, level, kind, ifindex == idx, socket.inet_ntoa(spec_dst) == me,
                                             socket.inet_ntoa(addr).replace(me, "me")))
    assert got["kernel"] == [(b"info", IPP, PKTINFO, True, True, G),
                             (b"unicast", IPP, PKTINFO, True, True, "me")]
    assert got["usnet"] == got["kernel"]


def _dev_mcast(ifindex: int) -> set[str]:
    """The link-layer multicast addresses the kernel has in device `ifindex`'s filter (this namespace)."""
    with open("/proc/net/dev_mcast") as f:
        return {cols[4] for cols in (line.split() for line in f) if int(cols[0]) == ifindex}


def test_a_packet_netif_asks_its_device_for_the_groups_mac(netns):
    """On a packet netif that is not promiscuous (a NIC would filter the group's frames), the
    first join puts the group's MAC in the device's filter (PACKET_MR_MULTICAST, as the kernel's
    own join: /proc/net/dev_mcast shows it) and the last leave takes it out; the group's
    datagrams from the kernel on the other end of a veth reach the member between."""
    from usnet.domain.loop import Domain
    from usnet.drivers.packet import PacketDriver

    x = fresh_subnet()
    with veth_pair(f"10.{x}.0.1") as (mine, _theirs):
        d = Domain()
        try:
            d.add_netif("p", PacketDriver(mine, promisc=False), f"10.{x}.0.2/24")
            d.start()
            idx = socket.if_nametoindex(mine)
            u = us.socket(socket.AF_INET, socket.SOCK_DGRAM, client=Client.local(d), netif="p")
            u.settimeout(LIMIT)
            u.bind(("", 47800))
            assert "01005e010203" not in _dev_mcast(idx)
            u.setsockopt(IPP, ADD, _mreq(G, f"10.{x}.0.2"))
            assert "01005e010203" in _dev_mcast(idx)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as k:
                k.setsockopt(IPP, M_IF, socket.inet_aton(f"10.{x}.0.1"))
                k.sendto(b"over the veth", (G, 47800))
                assert u.recvfrom(100)[0] == b"over the veth"
            u.setsockopt(IPP, DROP, _mreq(G, f"10.{x}.0.2"))
            assert "01005e010203" not in _dev_mcast(idx)
            u.close()
        finally:
            d.stop()


def test_an_igmpv2_querier_is_answered_in_igmpv2(mc):
    """An IGMPv2 querier (an 8-byte query with a response time) turns the netif to IGMPv2 for the
    Older Version Querier Present Timeout, as Linux's mr_v2_seen: the answer is a v2 report to the
    group itself, and the last leave a v2 leave to all-routers (224.0.0.2); scapy reads both."""
    from scapy.layers.igmp import IGMP

    wire = _Wire(mc.ifname)
    try:
        a = mc.usock(47900)
        a.setsockopt(IPP, ADD, _mreq(G, mc.usnet_ip))
        for _ in range(2):
            assert IGMPv3(bytes(wire.igmp_from(mc.usnet_ip)[IP].payload)).type == 0x22  # v3 until a v2 querier
        q = (Ether(dst="01:00:5e:00:00:01", src="02:00:00:00:00:99") / IP(src=mc.host_ip, dst="224.0.0.1", ttl=1)
             / IGMP(type=0x11, mrcode=5, gaddr="0.0.0.0"))
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as tx:
            tx.bind((mc.ifname, 0))
            tx.send(bytes(q))
        got = []
        for want_type in (0x16, 0x17):
            if want_type == 0x17:
                a.setsockopt(IPP, DROP, _mreq(G, mc.usnet_ip))
            f = wire.igmp_from(mc.usnet_ip)
            ip = f[IP]
            msg = IGMP(bytes(ip.payload))
            redo = IGMP(bytes(ip.payload))
            redo.chksum = None
            assert bytes(redo) == bytes(ip.payload)  # the checksum as scapy computes it
            got.append((msg.type, msg.gaddr, ip.dst, f.dst, ip.ttl, bytes(ip)[20:24]))
        assert got == [(0x16, G, G, "01:00:5e:01:02:03", 1, b"\x94\x04\x00\x00"),
                       (0x17, G, "224.0.0.2", "01:00:5e:00:00:02", 1, b"\x94\x04\x00\x00")]
    finally:
        wire.close()


def test_an_af_inet6_socket_joins_ipv4_groups_as_on_linux(mc):
    """A dual-stack AF_INET6 socket takes IP_ADD_MEMBERSHIP (Linux passes SOL_IP on to IPv4's)
    and hears the group with the sender as a mapped address; what it sends to a group's mapped
    address reaches a member on the other side: on usnet as on the kernel."""
    got = {}
    for name, mod_sock, me, other in (("usnet", lambda: us.socket(socket.AF_INET6, socket.SOCK_DGRAM,
                                                                    client=mc.client, netif=mc.ifname),
                                       mc.usnet_ip, mc.ksock()),
                                      ("kernel", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM),
                                       mc.host_ip, mc.usock())):
        s = mod_sock()
        try:
            s.settimeout(LIMIT)
            s.bind(("::", 48000))
            s.setsockopt(IPP, ADD, _mreq(G, me))
            s.setsockopt(IPP, M_IF, socket.inet_aton(me))
            other.setsockopt(IPP, M_IF, socket.inet_aton(mc.host_ip if name == "usnet" else mc.usnet_ip))
            other.sendto(b"to v6", (G, 48000))
            data, src = s.recvfrom(100)
            member = (mc.ksock if name == "usnet" else mc.usock)(48001)
            member.setsockopt(IPP, ADD, _mreq(G, mc.host_ip if name == "usnet" else mc.usnet_ip))
            s.sendto(b"from v6", ("::ffff:" + G, 48001))
            got[name] = (data, src[0].replace(mc.host_ip, "PEER").replace(mc.usnet_ip, "PEER"),
                         _outcome(s, M_TTL), _outcome(s, ADD, _mreq(G, me)), member.recvfrom(100)[0])
        finally:
            s.close()
    assert got["kernel"] == (b"to v6", "::ffff:PEER", 1, "EADDRINUSE", b"from v6")
    assert got["usnet"] == got["kernel"]


# -- SO_REUSEADDR's unicast -----------------------------------------------------------------------------


def _who_hears_unicast(send_socks: list, to: tuple[str, int], socks: dict) -> dict:
    """A unicast datagram to `to` from each sender (each from its own port: a hash of the remote
    end would spread them), and how many each of `socks` (by name) heard."""
    for i, s in enumerate(send_socks):
        s.sendto(b"u%d" % i, to)
    heard = dict.fromkeys(socks, 0)
    for s in socks.values():
        s.setblocking(False)
    deadline = time.monotonic() + LIMIT
    while sum(heard.values()) < len(send_socks) and time.monotonic() < deadline:
        for name, s in socks.items():
            try:
                s.recv(100)
                heard[name] += 1
            except BlockingIOError:
                pass
    return heard


def test_a_unicast_datagram_to_a_reuseaddr_port_goes_to_the_newest_socket_as_on_linux(mc):
    """Two sockets share a port by SO_REUSEADDR: Linux gives every unicast datagram to the one
    bound last (udp_lib_get_port puts it at the head of the chain, the lookup takes the first of
    the best score), whatever port it comes from; once that one closes, the other hears them. The
    kernel's pair and usnet's pair, each sent to by the other stack, hear alike."""
    n = 8
    got = {}
    for name, recv_sock, send_sock, addr, port in (("kernel", mc.ksock, mc.usock, mc.host_ip, 47300),
                                                   ("usnet", mc.usock, mc.ksock, mc.usnet_ip, 47301)):
        senders = [send_sock() for _ in range(n)]
        a = recv_sock(port, True)
        b = recv_sock(port, True)
        first = _who_hears_unicast(senders, (addr, port), {"a": a, "b": b})
        b.close()
        got[name] = (first, _who_hears_unicast(senders, (addr, port), {"a": a}))
    assert got["kernel"] == ({"a": 0, "b": n}, {"a": n})
    assert got["usnet"] == got["kernel"]
