"""IPv4 fragments to a flow are put back together by the flow switch (RFC 791, RFC 815).

A fragment past the first names no ports, so the switch reassembles before it
classifies, with the bounded reassembler of usnet.proto.ip: per-datagram and
total memory budgets, a limit per source, overlaps that disagree dropped.

* a datagram sent in three fragments, out of order and with one repeated,
  reaches the flow whole, with its checksum good;
* a flood of first pieces that never complete stays within its source's
  slots, a piece past the largest datagram is refused, both counted, and a
  real datagram beside them still arrives;
* over a real TAP, the kernel fragments a 3,072-byte datagram at the MTU and
  the usnet socket receives it whole;
* IPv6 fragments are reassembled too, and pieces that overlap drop their
  datagram (RFC 5722).
"""

from __future__ import annotations

import socket
import struct

import pytest

from tests.domain import test_lowlat
from tests.domain.test_lowlat import Net
from tests.helpers.util import udp_segment, wait_until
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.drivers import MemWire
from usnet.proto.wire.ipv4 import build_ipv4_header, ip_bytes
from usnet.proto.wire.ipv6 import build_frag_header, build_ipv6_header, ip6_bytes, upper_checksum_v6

A, B = "10.9.0.1", "10.9.0.2"


half = test_lowlat.half  # netif a only: the test writes what arrives from the wire's b end


def fragments(payload: bytes, ident: int, sizes: list[int], src: str = B) -> list[bytes]:
    """A UDP datagram from src:7000 to A:5000 as IPv4 fragments carrying `sizes` bytes each (the last: the rest)."""
    seg = udp_segment(7000, 5000, payload, ip_bytes(src), ip_bytes(A))
    out, off = [], 0
    for n in sizes + [len(seg)]:
        piece = seg[off : off + n]
        more = off + len(piece) < len(seg)
        out.append(build_ipv4_header(ip_bytes(src), ip_bytes(A), 17, len(piece), ident, df=False, mf=more,
                                     frag_off=off) + piece)
        off += len(piece)
        if not more:
            return out
    raise AssertionError("sizes cover more than the datagram")


def framed(net: Net, packets: list[bytes]) -> list[bytes]:
    mac = net.d.switches["a"].netif.mac
    return [mac + b"\x02\x00\x00\x00\x00\x09\x08\x00" + p for p in packets]


def test_a_datagram_in_fragments_out_of_order_arrives_whole(half):
    s = half.c.udp_socket("a", 5000, buf_size=4096)
    payload = bytes(range(256)) * 12  # 3,072 bytes: three fragments at a 1,500-byte MTU
    f1, f2, f3 = fragments(payload, 0x1234, [1480, 1480])
    half.wire.b.send_batch(framed(half, [f3, f1, f1, f2]))  # the last first, the first twice
    assert s.recvfrom(timeout=5) == (payload, (B, 7000))
    frags = half.d.switches["a"].frags
    assert frags["frag_reassembled"] == 1 and frags["frag_dup"] == 1 and s.rx_bad == 0
    assert not half.d.switches["a"].reasm.table  # nothing left in progress


def test_a_flood_of_pieces_stays_bounded_and_a_real_datagram_still_arrives(half):
    s = half.c.udp_socket("a", 5000, buf_size=4096)
    sw = half.d.switches["a"]
    flood = []
    for ident in range(100):  # first pieces of datagrams that never complete, from one source
        flood.append(fragments(bytes(3000), ident, [1480, 1480], src="10.9.0.3")[0])
    too_big = build_ipv4_header(ip_bytes(B), ip_bytes(A), 17, 1480, 7, df=False, mf=True,
                                frag_off=64800) + bytes(1480)  # would end past 65,535 bytes
    half.wire.b.send_batch(framed(half, flood[:50]))
    half.wire.b.send_batch(framed(half, flood[50:] + [too_big]))
    payload = bytes(range(256)) * 12
    half.wire.b.send_batch(framed(half, fragments(payload, 0x99, [1480, 1480])))
    assert s.recvfrom(timeout=5) == (payload, (B, 7000))
    assert sw.frags["frag_too_big"] == 1
    assert len(sw.reasm.table) <= sw.reasm.per_source  # the flood only churned its own source's slots
    assert sw.frags["frag_evicted"] >= 100 - sw.reasm.per_source
    with pytest.raises(BlockingIOError):
        s.recv(timeout=0)  # and nothing else was delivered


@pytest.mark.privileged
@pytest.mark.parametrize("family", [4, 6])
def test_the_kernel_fragments_a_big_datagram_and_the_socket_gets_it_whole(request, family):
    d, ifname, usnet_ip, host_ip = request.getfixturevalue("tap_domain" if family == 4 else "tap_domain6")
    s = Client.local(d).udp_socket(ifname, 0, family=family, buf_size=4096)
    k = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        payload = bytes(range(256)) * 12
        k.sendto(payload, (usnet_ip, s.getsockname()[1]))
        got, (addr, _port) = s.recvfrom(timeout=5)
        assert got == payload and addr == host_ip
        assert d.switches[ifname].frags["frag_reassembled"] == 1
    finally:
        k.close()
        s.close()


A6, B6 = "fd00:9::1", "fd00:9::2"


def fragments6(payload: bytes, ident: int, sizes: list[int]) -> list[bytes]:
    """A UDP datagram from B6:7000 to A6:5000 as IPv6 fragments of `sizes` bytes (the last: the rest)."""
    src, dst = ip6_bytes(B6), ip6_bytes(A6)
    seg = bytearray(struct.pack("!HHHH", 7000, 5000, 8 + len(payload), 0) + payload)
    seg[6:8] = upper_checksum_v6(src, dst, 17, bytes(seg)).to_bytes(2, "big")
    out, off = [], 0
    for n in sizes + [len(seg)]:
        piece = bytes(seg[off : off + n])
        more = off + len(piece) < len(seg)
        body = build_frag_header(17, off, more, ident) + piece
        out.append(build_ipv6_header(src, dst, 44, len(body)) + body)
        off += len(piece)
        if not more:
            return out
    raise AssertionError("sizes cover more than the datagram")


def test_ipv6_fragments_arrive_whole_and_overlapping_ones_do_not():
    d = Domain()
    w = MemWire()
    d.add_netif("a", w.a, "10.9.0.1/24", address6=f"{A6}/64")
    d.start()
    try:
        s = Client.local(d).udp_socket("a", 5000, family=6, buf_size=4096)
        mac = d.switches["a"].netif.mac
        frame = lambda p: mac + b"\x02\x00\x00\x00\x00\x09\x86\xdd" + p
        payload = bytes(range(256)) * 12
        f1, f2, f3 = fragments6(payload, 0x1234, [1448, 1448])
        w.b.send_batch([frame(p) for p in (f3, f1, f2)])
        assert s.recvfrom(timeout=5) == (payload, (B6, 7000))
        # RFC 5722: a piece that overlaps another drops the whole datagram
        g1, g2, g3 = fragments6(payload, 0x5678, [1448, 1448])
        overlap = fragments6(payload, 0x5678, [1440, 1448])[1]  # starts 8 bytes inside g1
        w.b.send_batch([frame(p) for p in (g1, overlap, g2, g3)])
        sw = d.switches["a"]
        wait_until(lambda: sw.frags["frag_conflict"] == 1, 5, "the overlap to be judged")
        with pytest.raises(BlockingIOError):
            s.recv(timeout=0)
        assert sw.frags["frag_reassembled"] == 1
    finally:
        d.stop()
