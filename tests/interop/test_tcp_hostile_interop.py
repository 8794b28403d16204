"""A hostile TCP peer on the wire, beside Linux (issue 16, "trustworthy").

The sans-I/O cases are in tests/proto/test_tcp_hostile_peer.py; this is the end-to-end one,
over the veth link of test_wire_hostile: scapy forges a handshake whose SYN carries an MSS
option of 1 (CVE-2019-11479), once to a usnet listener and once to a kernel listener, each
server then sends 1000 bytes, and one capture sees what size of segment each chose.

The forged client uses an address no kernel owns (so neither the peer kernel nor usnet's
switch answers the other side's segments with a RST): usnet learns it from an ARP request the
test forges, the peer kernel from a permanent neighbour entry.
"""

from __future__ import annotations

import socket
import struct
import subprocess

import pytest

from tests.interop.test_wire_hostile import PEER4, US4, _mac, eth_to_kernel, eth_to_us, link, warm_up  # noqa: F401

pytestmark = pytest.mark.privileged

FAKE = "10.77.0.50"  # the forged client, to usnet and to the kernel


def _serve_1000(lk, listener_accept, server_ip: str, to_server, from_server_side: bool,
                mss_of) -> tuple[list[int], int]:
    """Forge SYN (MSS 1) + ACK from FAKE:3000 to server_ip:80, have the accepted connection send
    1000 bytes, and return the payload sizes of the server's data frames and its sending MSS
    (``mss_of(conn)``)."""
    from scapy.layers.inet import IP, TCP

    def frames(us, k):
        return k if from_server_side else us

    def tcp_to_fake(fs):
        return [f for f in fs if TCP in f and f[IP].dst == FAKE and f[TCP].dport == 3000]

    syn = IP(src=FAKE, dst=server_ip) / TCP(sport=3000, dport=80, flags="S", seq=1000, window=65535,
                                            options=[("MSS", 1)])
    to_server(syn)
    us, k = lk.run(lambda us, k: any(f[TCP].flags == "SA" for f in tcp_to_fake(frames(us, k))),
                   "the SYN-ACK to the MSS-1 SYN")
    synack = next(f for f in tcp_to_fake(frames(us, k)) if f[TCP].flags == "SA")
    to_server(IP(src=FAKE, dst=server_ip) / TCP(sport=3000, dport=80, flags="A", seq=1001,
                                                 ack=synack[TCP].seq + 1, window=65535))
    conns: list = []

    def accepted(us, k) -> bool:
        c = listener_accept()
        if c is not None:
            conns.append(c)
            c.send(b"y" * 1000)
        return bool(conns)

    lk.run(accepted, "the accepted connection")
    sizes: list[int] = []

    def data_seen(us, k) -> bool:
        sizes[:] = [len(f[TCP].payload) for f in tcp_to_fake(frames(us, k)) if len(f[TCP].payload)]
        return sum(sizes) >= 240  # the first flight: an initial window of 10 (or pacing's first few)

    lk.run(data_seen, "the server's first data")
    mss = mss_of(conns[0])
    for c in conns:
        c.close()
    return sizes, mss


def _kernel_snd_mss(s: socket.socket) -> int:
    """tcpi_snd_mss of the kernel's TCP_INFO (after 8 one-byte fields, rto and ato)."""
    return struct.unpack_from("=I", s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104), 16)[0]


def test_an_mss_option_of_1_gets_48_byte_segments_from_usnet_as_from_linux(link):  # noqa: F811
    """Linux raises a peer's MSS under tcp_min_snd_mss to 48 (CVE-2019-11479); so does usnet
    (before: 64), and neither sends a segment per byte."""
    from scapy.all import ARP

    from usnet import socket as us

    lk = link()
    warm_up(lk)
    # usnet learns FAKE's MAC (the peer's) from an ARP request for its own address, as Linux would
    lk.to_usnet(eth_to_us(lk) / ARP(op=1, hwsrc=_mac(lk.peer_mac), psrc=FAKE, pdst=US4))
    srv = us.socket(client=lk.c, netif="w")
    srv.bind(("0.0.0.0", 80))
    srv.listen()
    srv.setblocking(False)

    def us_accept():
        try:
            return srv.accept()[0]
        except BlockingIOError:
            return None

    usnet_sizes, usnet_mss = _serve_1000(lk, us_accept, US4, lambda p: lk.to_usnet(eth_to_us(lk) / p), False,
                                         lambda c: c.tcp_info()["mss"])
    srv.close()

    subprocess.run(["ip", "-n", lk.ns_peer, "neigh", "replace", FAKE, "lladdr", _mac(lk.us_mac),
                    "nud", "permanent", "dev", lk.if_peer], check=True)
    k = lk.kernel_socket(socket.AF_INET, socket.SOCK_STREAM, 80)
    k.listen()

    def k_accept():
        try:
            return k.accept()[0]
        except BlockingIOError:
            return None

    kernel_sizes, kernel_mss = _serve_1000(lk, k_accept, PEER4, lambda p: lk.to_kernel(eth_to_kernel(lk) / p),
                                           True, _kernel_snd_mss)
    # the veth passes the kernel's GSO frames whole: multiples of its segment size
    assert kernel_mss == 48 and all(n % 48 == 0 for n in kernel_sizes), (kernel_mss, kernel_sizes)
    assert usnet_mss == 48 and all(n % 48 == 0 for n in usnet_sizes[:-1]), (usnet_mss, usnet_sizes)
