"""Issue 18: the kernel's TCP super-segments reach a flow whose packets are smaller, cut to fit.

A device with segmentation offload hands the flow switch TCP packets of up to
64 KB (a veth's TSO seen through AF_PACKET as TP_STATUS_GSO_TCP; a TAP's
virtio_net_hdr GSO). A flow whose packets are smaller (every TCP flow on a
packet netif, whose device does not segment on transmit; a client on a TAP
that chose small packets itself) gets them cut into segments that fit
(usnet.proto.wire.gso), in order, counted `rx_resegmented`. Before, they were
dropped (as `rx_client_full`), the kernel retransmitted the same
super-segments, and a transfer stalled after about 50 KB.

The switch alone (a MemWire netif, frames handed to its receive path): an
IPv4 super-segment on the fast path and an IPv6 one on the per-frame path
reach a 2 KB flow as the segments the cutter makes, in order, between the
packets around them; a UDP one (nothing to cut) is `rx_too_big`, not
`rx_client_full`; a super-segment that fits is delivered whole, uncut.

The privileged ones: a kernel socket in the test's namespace sends 4 MiB to a usnet
listener (usnet.socket), which reads to the end and answers with the SHA-256
of what it read; the netif's count proves the cutting path ran.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest

from tests.helpers.util import veth_pair
from usnet.client import Client

SIZE = 4 << 20


def _sink(us, port: int, out: dict) -> threading.Thread:
    """A usnet listener on `port`: accept one connection, read it to the end, answer with its SHA-256."""
    ls = us.socket(us.AF_INET, us.SOCK_STREAM)
    ls.bind(("0.0.0.0", port))
    ls.listen(1)
    ls.settimeout(10)

    def serve() -> None:
        with ls:
            c, _ = ls.accept()
            with c:
                c.settimeout(10)
                h, total = hashlib.sha256(), 0
                while chunk := c.recv(65536):
                    h.update(chunk)
                    total += len(chunk)
                out["total"] = total
                c.sendall(h.digest())
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def _kernel_sends(usnet_ip: str, port: int, out: dict) -> None:
    """4 MiB from a kernel socket to the usnet listener; the SHA-256 it answers must be the data's."""
    blob = os.urandom(SIZE)
    t = _sink(_us(), port, out)
    with socket.create_connection((usnet_ip, port), timeout=10) as k:
        k.sendall(blob)
        k.shutdown(socket.SHUT_WR)
        answer = b""
        while len(answer) < 32 and (chunk := k.recv(64)):
            answer += chunk
    t.join(10)
    assert out.get("total") == SIZE
    assert answer == hashlib.sha256(blob).digest()


def _us():
    from usnet import socket as us

    return us


@pytest.fixture
def packet_domain():
    """An in-process Domain with a packet netif on one end of a veth, the namespace's kernel on the
    other (10.77.0.1/24), offloads as the kernel sets them (TSO, GSO on): (domain, netif, usnet_ip)."""
    from usnet.domain.loop import Domain
    from usnet.drivers.packet import PacketDriver

    with veth_pair("10.77.0.1") as (ours, _theirs):
        d = Domain()
        try:
            d.add_netif("v", PacketDriver(ours), "10.77.0.2/24", gateway="10.77.0.1")
            d.start()
            yield d, "v", "10.77.0.2"
        finally:
            d.stop()


@pytest.mark.privileged
def test_a_packet_netif_cuts_the_kernels_super_segments_for_a_tcp_flow(packet_domain):
    d, netif, usnet_ip = packet_domain
    sw = d.switches[netif]
    assert sw.netif.gso_max == 0  # a packet netif does not segment: its TCP flows get small packets
    us = _us()
    us.configure(Client.local(d), netif)
    try:
        out: dict = {}
        _kernel_sends(usnet_ip, 7300, out)
    finally:
        us.configure(None, None)
    assert sw.counts["rx_resegmented"] > 0, dict(sw.counts)  # super-segments came, and were cut
    assert not sw.drops["rx_too_big"] and not sw.drops["rx_client_full"], dict(sw.drops)


@pytest.mark.privileged
def test_a_tap_netif_cuts_super_segments_for_a_client_that_chose_small_packets(tap_domain, monkeypatch):
    d, ifname, usnet_ip, _host_ip = tap_domain
    sw = d.switches[ifname]
    assert sw.netif.gso_max  # the TAP segments, and hands over super-segments
    client = Client.local(d)
    opened: list = []
    plain = type(client).open_flow

    def small(self, *a, **kw):  # the client chooses 2 KB packets for its flows
        kw.update(buf_size=2048, buflets=1)
        ch, info = plain(self, *a, **kw)
        opened.append((ch.stride, info.gso_max))
        return ch, info
    monkeypatch.setattr(type(client), "open_flow", small)
    us = _us()
    us.configure(client, ifname)
    try:
        out: dict = {}
        _kernel_sends(usnet_ip, 7301, out)
    finally:
        us.configure(None, None)
    assert opened and all(o == (2048, 0) for o in opened), opened
    assert sw.counts["rx_resegmented"] > 0, dict(sw.counts)
    assert not sw.drops["rx_too_big"] and not sw.drops["rx_client_full"], dict(sw.drops)


# -- the switch alone ------------------------------------------------------------------------------

_PEER_MAC = "02:00:00:00:00:09"


def _switch_and_flow(proto: int = 6, family: int = 4, **attrs):
    """(domain, switch, channel) of a MemWire netif (10.9.0.1, fd00:9::1) and a flow on port 5000
    (`family` 4 or 6) with the default 2 KB packets unless `attrs` say otherwise."""
    from usnet.domain.loop import Domain
    from usnet.drivers import MemWire

    d = Domain()
    sw = d.add_netif("a", MemWire().a, "10.9.0.1/24", address6="fd00:9::1/64")
    ch, _info = Client.local(d).open_flow("a", proto, 5000, family=family, **attrs)
    return d, sw, ch


def _frames(sw, v6: bool, sizes: list[int], proto=None):
    """Ethernet frames of TCP (or `proto`) packets to port 5000 with payloads of `sizes`, in sequence."""
    from scapy.all import IP, TCP, Ether, raw
    from scapy.layers.inet6 import IPv6

    out, seq = [], 1000
    for i, n in enumerate(sizes):
        ip = (IPv6(src="fd00:9::2", dst="fd00:9::1") if v6 else IP(src="10.9.0.2", dst="10.9.0.1", id=i * 100))
        l4 = proto if proto is not None else TCP(sport=7, dport=5000, seq=seq, flags="PA",
                                                    options=[("Timestamp", (1, 2))])
        out.append(raw(Ether(dst=sw.netif.mac, src=_PEER_MAC) / ip / l4 / bytes((seq + j) & 0xFF for j in range(n))))
        seq += n
    return out


def _received(ch) -> list[bytes]:
    try:
        pkts = ch.recv(timeout=0)
    except BlockingIOError:
        return []
    got = [bytes(ch.view(p)) for p in pkts]
    ch.free(pkts)
    return got


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4-fast-path", "ipv6"])
def test_the_switch_cuts_a_super_segment_for_a_flow_with_small_packets_in_order(v6, monkeypatch):
    from usnet.drivers.base import Coalesced
    from usnet.proto.wire.gso import tcp_segments

    d, sw, ch = _switch_and_flow(family=6 if v6 else 4)
    try:
        small, big, after = _frames(sw, v6, [100, 60000, 200])
        batch = [small, Coalesced(big), after]
        monkeypatch.setattr(sw.netif.driver, "recv_batch", lambda n=64: batch)
        assert sw.service_rx() == 3
        got = _received(ch)
        want = [small[14:], *(bytes(s) for s in tcp_segments(big[14:], 2048 - (72 if v6 else 52) & ~7)), after[14:]]
        assert got == want and len(want) == 2 + 31
        assert all(len(p) <= ch.stride for p in got)
        assert sw.counts["rx_resegmented"] == 1 and sw.counts["rx_resegmented_packets"] == 31
        assert not sw.drops, dict(sw.drops)
    finally:
        d.stop()


def test_a_super_segment_that_cannot_be_cut_is_too_big_not_client_full(monkeypatch):
    from scapy.all import UDP

    from usnet.drivers.base import Coalesced

    d, sw, ch = _switch_and_flow(proto=17)
    try:
        (big,) = _frames(sw, False, [8000], proto=UDP(sport=7, dport=5000))
        monkeypatch.setattr(sw.netif.driver, "recv_batch", lambda n=64: [Coalesced(big)])
        sw.service_rx()
        assert _received(ch) == []
        assert sw.drops["rx_too_big"] == 1 and not sw.drops["rx_client_full"] and not sw.counts["rx_resegmented"]
    finally:
        d.stop()


def test_a_super_segment_that_fits_the_flows_packets_is_delivered_whole(monkeypatch):
    from usnet.drivers.base import Coalesced

    d, sw, ch = _switch_and_flow(buf_size=16384, buflets=4)
    try:
        (big,) = _frames(sw, False, [60000])
        monkeypatch.setattr(sw.netif.driver, "recv_batch", lambda n=64: [Coalesced(big)])
        sw.service_rx()
        assert _received(ch) == [big[14:]] and not sw.counts["rx_resegmented"]
    finally:
        d.stop()
