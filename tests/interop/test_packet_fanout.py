"""Issue 18, "Multi-queue devices": PacketDriver.queues, n AF_PACKET sockets in one PACKET_FANOUT
group steered by usnet.drivers.steer's program, as RSS would: a frame to local port p on queue
p mod n, ARP, ICMP, neighbour discovery and IPv4 fragments on queue 0, each frame on exactly one
queue, nothing we send coming back.

The wire is a veth pair from tests/interop/test_packet_driver.py (the peer end in a namespace made
for the test, 10.88.0.1 and fd00:88::1); the peer's kernel sends UDP over IPv4 and IPv6 to a range
of ports, a datagram too big for one frame, and an ARP request, while the test reads both queues.
The program itself is checked frame by frame against steer.queue_of with BPF_PROG_TEST_RUN (no
device), where skb->data is at the network header as in a fanout group: the same program also
steers the multi-queue TAP (tests/domain/test_workers.py), whose frames start at the Ethernet
header.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.interop.test_packet_driver import OUR_IP, PEER_IP, mac_str, veth  # noqa: F401 (a fixture)
from usnet.drivers.hostnet import add_address6

OUR_IP6, PEER_IP6 = "fd00:88::2", "fd00:88::1"
PORTS = range(7000, 7016)


def _frame(kind: str, proto: int, dport: int, ihl: int, frag: int, cut: int) -> bytes:
    eth = bytes(6) + bytes.fromhex("020000000001")
    if kind == "arp":
        f = eth + b"\x08\x06" + bytes(28)
    elif kind == "v4":
        hdr = bytes([0x40 | ihl, 0]) + (ihl * 4 + 8).to_bytes(2, "big") + bytes(2) + frag.to_bytes(2, "big")
        hdr += bytes([64, proto]) + bytes(2) + bytes(8) + bytes((ihl - 5) * 4)
        f = eth + b"\x08\x00" + hdr + (4321).to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes(4)
    else:
        hdr = b"\x60" + bytes(3) + (8).to_bytes(2, "big") + bytes([proto, 64]) + bytes(32)
        f = eth + b"\x86\xdd" + hdr + (4321).to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes(4)
    return f[:cut] if cut else f


@pytest.fixture(scope="module")
def programs():
    from usnet.drivers import steer

    if os.geteuid() != 0:
        pytest.skip("loading a BPF program needs root")
    fds = {n: steer.load_steering(n) for n in (1, 2, 3, 4)}
    yield fds
    for fd in fds.values():
        os.close(fd)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["v4", "v6", "arp"]), proto=st.sampled_from([6, 17, 1, 58, 0, 44]),
       dport=st.integers(0, 65535), ihl=st.integers(5, 15), frag=st.sampled_from([0, 0x4000, 0x2000, 0x0001, 0x20B9]),
       cut=st.sampled_from([0, 0, 0, 13, 20, 30, 35, 36, 37, 56]), n=st.sampled_from([1, 2, 3, 4]))
def test_the_program_picks_the_queue_the_rule_says(programs, kind, proto, dport, ihl, frag, cut, n):
    """Kernel and rule agree on every frame: ports mod n; ARP, other protocols, fragments, IPv6
    with an extension header first (44: a fragment header) and frames cut short go to 0."""
    from usnet.drivers import bpf, steer

    f = _frame(kind, proto, dport, ihl, frag, cut)
    try:
        got = bpf.test_run(programs[n], f)
    except OSError as e:  # BPF_PROG_TEST_RUN takes no IP packet shorter than its fixed header
        assert e.errno == errno.EINVAL and len(f) < 14 + {"v4": 20, "v6": 40}.get(kind, 0)
        return
    assert got == steer.queue_of(f, n)


def test_the_rule_is_the_workers_rule():
    """A UDP frame to port p is for worker p mod n, as usnet.domain.workers assigns ports."""
    from usnet.domain.workers.steering import worker_of
    from usnet.drivers import steer

    for n in (2, 3, 5):
        for p in (0, 1, 7000, 7001, 65535):
            assert steer.queue_of(_frame("v4", 17, p, 5, 0, 0), n) == worker_of(p, n) == p % n


def _peer_setup(v, mac: bytes) -> None:
    """The peer's IPv6 address (no DAD) and static neighbours for our addresses: the peer's kernel
    sends to us without asking (the ARP request comes from a datagram to an unknown address)."""
    with v._NetNS(v.ns) as ns:
        idx = ns.link_lookup(ifname=v.peer)[0]
        add_address6(ns, idx, PEER_IP6, 64)
        for dst in (OUR_IP, OUR_IP6):
            ns.neigh("replace", dst=dst, lladdr=mac_str(mac), ifindex=idx, state=0x80)  # NUD_PERMANENT


_SENDER = f"""
import socket
for fam, dst in ((socket.AF_INET, {OUR_IP!r}), (socket.AF_INET6, {OUR_IP6!r})):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    for p in {list(PORTS)!r}:
        s.sendto(b"q%d-%d" % (fam, p), (dst, p))
    s.close()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"F" * 3000, ({OUR_IP!r}, 7001))   # two fragments, to a port of queue 1
s.sendto(b"arp", ("10.88.0.77", 7001))       # no neighbour: an ARP request, broadcast
print("ready", flush=True)
"""


@pytest.mark.privileged
def test_fanout_queues_get_the_frames_of_their_ports(veth):  # noqa: F811 (the fixture)
    from scapy.all import ARP, IP, UDP, Ether, IPv6, raw

    from usnet.drivers import steer
    from usnet.drivers.packet import PacketDriver

    qs = PacketDriver.queues(veth.host, 2)
    try:
        assert len({d.mac for d in qs}) == 1 and len({d.fileno() for d in qs}) == 2
        # what goes out (an ARP request of ours on queue 1, a frame another socket sends) is
        # received by no queue; the peer's reply, unicast to our MAC, comes to queue 0
        ask = raw(Ether(src=mac_str(qs[0].mac), dst="ff:ff:ff:ff:ff:ff")
                  / ARP(op=1, hwsrc=mac_str(qs[0].mac), psrc=OUR_IP, pdst=PEER_IP))
        assert qs[1].send_batch([ask]) == 1
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as other:  # the host's, not in the group
            other.bind((veth.host, 0))
            other.send(raw(Ether(src="02:00:00:00:00:99", dst=mac_str(veth.peer_mac)) / IP(src=OUR_IP, dst=PEER_IP)
                           / UDP(sport=7001, dport=7001) / b"q-outgoing"))
        _peer_setup(veth, qs[0].mac)
        peer = veth.spawn(_SENDER)
        assert peer.wait(timeout=10) == 0
        got: list[list[bytes]] = [[], []]
        want = {b"q%d-%d" % (fam, p) for fam in (2, 10) for p in PORTS}

        def seen() -> set[bytes]:
            return {bytes(Ether(f)[UDP].payload) for q in got for f in q
                    if UDP in Ether(f) and bytes(Ether(f)[UDP].payload)[:1] == b"q"}

        def done() -> bool:
            frames = [Ether(f) for f in got[0]]
            return (want <= seen() and any(ARP in e and e[ARP].op == 1 for e in frames)
                    and any(ARP in e and e[ARP].op == 2 for e in frames)
                    and sum(IP in e and e[IP].dst == OUR_IP and e[IP].proto == 17 and (e[IP].flags.MF or e[IP].frag)
                            for e in frames) >= 2)

        deadline = time.monotonic() + 5.0
        while not done() and time.monotonic() < deadline:
            select.select(qs, [], [], 0.05)
            for k, d in enumerate(qs):
                got[k].extend(bytes(f) for f in d.recv_batch(256))
        assert done(), "\n".join(f"queue {k}: {[Ether(f).summary() for f in got[k]]}" for k in (0, 1))
        for k in (0, 1):  # every frame on the queue the rule names (ICMPv6, IGMP... on 0 too)
            for f in got[k]:
                assert steer.queue_of(f, 2) == k, (k, Ether(f).summary())
        tagged = [bytes(Ether(f)[UDP].payload) for q in got for f in q
                  if UDP in Ether(f) and bytes(Ether(f)[UDP].payload)[:1] == b"q"]
        assert sorted(tagged) == sorted(want)  # each once: no frame on two queues
        on1 = {bytes(Ether(f)[UDP].payload) for f in got[1] if UDP in Ether(f)}
        assert on1 == {b"q%d-%d" % (fam, p) for fam in (2, 10) for p in PORTS if p % 2}
        assert all(IPv6 in Ether(f) or IP in Ether(f) for f in got[1])
        assert not any(Ether(f).src in (mac_str(qs[0].mac), "02:00:00:00:00:99") for q in got for f in q)
    finally:
        for d in qs:
            d.close()


@pytest.mark.privileged
def test_two_fanout_sets_on_one_interface_are_two_groups(veth):  # noqa: F811 (the fixture)
    """Each set makes its own group (the kernel picks the id): opening a second set neither fails
    nor joins the first (which would give each of them half the first set's frames)."""
    from usnet.drivers.packet import PacketDriver

    a = PacketDriver.queues(veth.host, 2)
    b = PacketDriver.queues(veth.host, 3)
    try:
        ids = {d.sock.getsockopt(263, 18) & 0xFFFF for d in a} | {d.sock.getsockopt(263, 18) & 0xFFFF for d in b}
        assert len(ids) == 2
    finally:
        for d in a + b:
            d.close()
