"""ICMP errors from the wire reach the flow whose packet they quote, and only that flow.

* a connected UDP socket that sends to a port nobody holds (usnet's own
  netif answers port unreachable, as a host does) gets ConnectionRefusedError
  from its next call, once, as a kernel socket does; an unconnected one is
  not told (Linux without IP_RECVERR);
* an error quoting a packet that is not ours (another source, a port nobody
  holds, a connected flow's port but another peer, a quote too short to name
  the ports) or with a bad checksum reaches no flow, and is counted;
* over a real TAP, the kernel's own port unreachable does the same;
* a usnet TCP connect that gets port unreachable for its SYN fails at once
  (ConnectionRefusedError), but not for an error quoting a sequence number
  it never sent (RFC 5927).
"""

from __future__ import annotations

import errno

import pytest

from tests.domain import test_lowlat
from tests.domain.test_lowlat import Net
from tests.helpers.util import udp_segment, wait_until
from usnet import socket as us
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.drivers import MemWire
from usnet.proto.wire import icmp as wicmp
from usnet.proto.wire.arp import ARP_REPLY, build_arp
from usnet.proto.wire.ipv4 import build_ipv4_header, ip_bytes

A, B = "10.9.0.1", "10.9.0.2"


net = test_lowlat.net  # the same fixture: netifs a and b over a memwire in a running domain


half = test_lowlat.half  # netif a only: the test writes what arrives from the wire's b end


def test_a_connected_socket_hears_port_unreachable_once(net):
    s = net.c.udp_socket("a", 5000, remote=(B, 6999))  # nothing listens on B:6999
    s.send(b"anyone?")
    with pytest.raises(ConnectionRefusedError):
        s.recv(timeout=5)
    with pytest.raises(BlockingIOError):  # told once, as SO_ERROR is
        s.recv(timeout=0)
    assert net.d.switches["a"].counts["rx_icmp_error"] == 1
    s.send(b"again?")  # and the next send goes, and is refused again
    with pytest.raises(ConnectionRefusedError):
        s.recv(timeout=5)


def test_an_unconnected_socket_is_not_told(net):
    s = net.c.udp_socket("a", 5000)
    s.sendto(b"anyone?", (B, 6999))
    wait_until(lambda: net.d.switches["a"].counts["rx_icmp_error"] == 1 and delivered(net.d, 5000) == 1, 5,
               "the error to reach the flow's ring")
    with pytest.raises(BlockingIOError):
        s.recv(timeout=0)
    assert s.pending_error is None and s.rx_bad == 0


def icmp_error_frame(net: Net, quoted: bytes, *, typ: int = 3, code: int = 3, bad_sum: bool = False,
                     mtu: int = 0) -> bytes:
    msg = bytearray(wicmp.build_icmp(typ, code, 0, mtu, quoted))
    if bad_sum:
        msg[2] ^= 0xFF
    ip = build_ipv4_header(ip_bytes(B), ip_bytes(A), 1, len(msg)) + bytes(msg)
    return net.d.switches["a"].netif.mac + b"\x02\x00\x00\x00\x00\x09" + b"\x08\x00" + ip


def sent_by(src: str, sport: int, dst: str, dport: int) -> bytes:
    seg = udp_segment(sport, dport, b"x" * 8, ip_bytes(src), ip_bytes(dst))
    return build_ipv4_header(ip_bytes(src), ip_bytes(dst), 17, len(seg)) + seg


def delivered(d: Domain, port: int, netif: str = "a") -> int:
    """The packets the domain has handed the flows of `port` on `netif` (their rings), from a
    status snapshot taken under the domain's lock. An ICMP error is counted in the switch's
    rx_icmp_error as it matches a flow, before the batch is handed over: only this says the
    socket can read it."""
    (n,) = [n for n in d.status()["netifs"] if n["netif"]["name"] == netif]
    return sum(f["stats"].get("rx_packets", 0) for f in n["flows"] if f["local_port"] == port)


def test_errors_quoting_what_no_flow_sent_reach_nobody(half):
    s = half.c.udp_socket("a", 5000, remote=(B, 6000))
    sw = half.d.switches["a"]
    forged = [
        sent_by("10.9.0.77", 5000, B, 6000),  # another source
        sent_by(A, 5999, B, 6000),  # a port nobody holds
        sent_by(A, 5000, B, 6001),  # the connected flow's port, another peer
        sent_by(A, 5000, B, 6000)[:22],  # too short to name both ports
    ]
    half.wire.b.send_batch([icmp_error_frame(half, q) for q in forged])
    wait_until(lambda: sw.drops["rx_icmp_unmatched"] == len(forged), 5, "the forged errors to be counted")
    half.wire.b.send_batch([icmp_error_frame(half, sent_by(A, 5000, B, 6000), bad_sum=True)])
    wait_until(lambda: sw.drops["rx_malformed"] == 1, 5, "the bad checksum to be counted")
    assert sw.counts["rx_icmp_error"] == 0
    with pytest.raises(BlockingIOError):
        s.recv(timeout=0)
    assert s.pending_error is None
    # the real one, soft: time exceeded is not told to a UDP socket (Linux without IP_RECVERR)
    half.wire.b.send_batch([icmp_error_frame(half, sent_by(A, 5000, B, 6000), typ=11, code=0)])
    wait_until(lambda: sw.counts["rx_icmp_error"] == 1 and delivered(half.d, 5000) == 1, 5,
               "the time exceeded to reach the flow's ring")
    with pytest.raises(BlockingIOError):
        s.recv(timeout=0)
    assert s.pending_error is None
    # and a fatal one: communication administratively prohibited (code 13), EHOSTUNREACH as Linux maps it
    half.wire.b.send_batch([icmp_error_frame(half, sent_by(A, 5000, B, 6000), typ=3, code=13)])
    with pytest.raises(OSError) as e:
        s.recv(timeout=5)
    assert e.value.errno == errno.EHOSTUNREACH


@pytest.mark.privileged
def test_the_kernels_port_unreachable_reaches_the_connected_socket(tap_domain):
    d, ifname, _usnet_ip, host_ip = tap_domain
    c = Client.local(d)
    s = c.udp_socket(ifname, 0, remote=(host_ip, 9))  # the discard port: nothing listens on the host
    try:
        s.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError):
            s.recv(timeout=5)
        assert d.switches[ifname].counts["rx_icmp_error"] == 1
    finally:
        s.close()


def answer_arp(net: Net, frame: bytes) -> None:
    """Answer netif a's ARP request for B from the wire's b end, with a made-up MAC."""
    assert frame[12:14] == b"\x08\x06"
    net.wire.b.send_batch([frame[6:12] + PEER_MAC + b"\x08\x06"
                           + build_arp(ARP_REPLY, PEER_MAC, ip_bytes(B), frame[6:12], ip_bytes(A))])


PEER_MAC = b"\x02\x00\x00\x00\x00\x09"


def syn_from_a(net: Net) -> bytes:
    """The SYN a usnet TCP connect to B puts on the wire (after ARP), as an IP packet."""
    (arp,) = net.wire_frames(1)
    answer_arp(net, arp)
    (syn,) = net.wire_frames(1)
    assert syn[12:14] == b"\x08\x00" and syn[14 + 9] == 6
    return syn[14:]


def test_a_tcp_connect_refused_by_icmp_fails_at_once_and_a_forged_one_does_not_count(half):
    s = us.socket(client=half.c, netif="a")
    s.setblocking(False)
    assert s.connect_ex((B, 80)) == errno.EINPROGRESS
    syn = syn_from_a(half)
    wrong = bytearray(syn)
    wrong[24:28] = ((int.from_bytes(syn[24:28], "big") + 1000) & 0xFFFFFFFF).to_bytes(4, "big")  # off-window seq
    half.wire.b.send_batch([icmp_error_frame(half, bytes(wrong)[:28])])
    wait_until(lambda: s.engine.ip.counters["icmp4_error"] == 1, 5, "the connection's stack to read the forged error")
    # still connecting (as Linux says it): the forged error guessed wrong
    assert s.connect_ex((B, 80)) == errno.EALREADY
    half.wire.b.send_batch([icmp_error_frame(half, syn[:28])])  # port unreachable, quoting the SYN
    s.setblocking(True)
    s.settimeout(5)
    with pytest.raises(ConnectionRefusedError):
        s.connect((B, 80))
    s.close()


def test_a_forged_fragmentation_needed_must_quote_a_sequence_number_in_flight(half):
    """Linux lowers a TCP connection's path MTU from "fragmentation needed" only after tcp_v4_err
    found the quoted sequence number in flight; a host off the path that guesses wrong changes
    nothing (before, usnet's IP layer lowered it for any quote of our addresses and ports)."""
    import time

    s = us.socket(client=half.c, netif="a")
    s.setblocking(False)
    assert s.connect_ex((B, 80)) == errno.EINPROGRESS
    syn = bytearray(syn_from_a(half))
    syn[2:4] = (1500).to_bytes(2, "big")  # as if the quoted packet were a full-sized one (1500 > 600)
    wrong = bytearray(syn)
    wrong[24:28] = ((int.from_bytes(syn[24:28], "big") + 1000) & 0xFFFFFFFF).to_bytes(4, "big")  # off-window seq
    sw = half.d.switches["a"]
    ip = s.engine.ip
    half.wire.b.send_batch([icmp_error_frame(half, bytes(wrong)[:28], code=4, mtu=600)])
    wait_until(lambda: sw.counts["rx_icmp_error"] == 1, 5, "the forged error to reach the flow")
    wait_until(lambda: ip.counters["icmp4_error"] == 1, 5, "the flow's stack to read it")
    assert ip.pmtus.get(ip_bytes(B), time.monotonic())[0] == 1500
    half.wire.b.send_batch([icmp_error_frame(half, bytes(syn)[:28], code=4, mtu=600)])  # quoting the SYN
    wait_until(lambda: ip.pmtus.get(ip_bytes(B), time.monotonic())[0] == 600, 5, "the path MTU to be lowered")
    assert ip.counters["pmtu_lowered"] == 1
    assert s.connect_ex((B, 80)) == errno.EALREADY  # EMSGSIZE only lowers the path MTU: still connecting
    s.close()


def test_a_connected_ipv6_socket_hears_port_unreachable_too():
    d = Domain()
    w = MemWire()
    d.add_netif("a", w.a, "10.9.0.1/24", address6="fd00:9::1/64")
    d.add_netif("b", w.b, "10.9.0.2/24", address6="fd00:9::2/64")
    d.start()
    try:
        c = Client.local(d)
        s = c.udp_socket("a", 5000, remote=("fd00:9::2", 6999))
        s.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError):
            s.recv(timeout=5)
        assert d.switches["a"].counts["rx_icmp_error"] == 1
        u = c.udp_socket("a", 5001, family=6)  # unconnected: not told
        u.sendto(b"anyone?", ("fd00:9::2", 6999))
        wait_until(lambda: d.switches["a"].counts["rx_icmp_error"] == 2 and delivered(d, 5001) == 1, 5,
                   "the second error to reach its flow's ring")
        with pytest.raises(BlockingIOError):
            u.recv(timeout=0)
        assert u.rx_bad == 0
    finally:
        d.stop()
