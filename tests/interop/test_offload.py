"""Segmentation offload over a real TAP: what a client may hand the device to cut.

A flow on a netif whose TAP segments (IFF_VNET_HDR, TUNSETOFFLOAD) may send a
TCP super-segment: one IP packet up to 64 KB with a gso_size in its UMD. The
flow switch checks it as it checks any packet, and more: TCP only, a whole
TCP header, and a segment size that keeps every piece within the MTU. The
host kernel is the receiver; an AF_PACKET socket on the host side of the TAP
sees the super-frame as the kernel got it, and scapy checks its checksum.
"""

from __future__ import annotations

import select
import socket
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.helpers.util import send_raw
from usnet.abi.events import EventType, TxDropReason, TxStatus
from usnet.client import Client
from usnet.proto.wire.ipv4 import build_ipv4_header, ip_bytes
from usnet.proto.wire.tcp import ACK, build_tcp

pytestmark = pytest.mark.privileged
ETH_P_ALL = 0x0003


def _segment(src: str, sport: int, dst: str, dport: int, payload: bytes, *, spoof: bool = False) -> bytes:
    s, d = ip_bytes("10.255.255.1" if spoof else src), ip_bytes(dst)
    seg = build_tcp(s, d, sport, dport, 1000, 0, ACK, 65535, payload)
    return build_ipv4_header(s, d, 6, len(seg)) + seg


def _events(ch, n: int, timeout: float = 5.0) -> list:
    """The first `n` events on a channel, waiting on its doorbell until they come or the deadline."""
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += list(ch.events())
        if len(out) < n:
            select.select([ch], [], [], 0.05)  # the bell, or a look again soon: events ring no bell
    return out


def test_super_segments_are_checked_and_the_good_one_reaches_the_kernel_whole(tap_domain):
    d, ifname, usnet_ip, host_ip = tap_domain
    client = Client.local(d)
    ch, info = client.open_flow(ifname, 6, 0, (host_ip, 9))
    udp, uinfo = client.open_flow(ifname, 17, 0, (host_ip, 9))
    assert info.gso_max == 65535 and ch.stride >= 65535
    sw = d.switches[ifname]
    drv = sw.netif.driver
    tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    tap.bind((ifname, 0))
    tap.settimeout(5)
    try:
        port = info.local_port
        big = bytes(range(256)) * 120  # 30,720 bytes: 21 segments of 1,460
        good = _segment(usnet_ip, port, host_ip, 9, big)
        cases = [  # (packet, gso_size, how the switch judges it)
            (_segment(usnet_ip, port, host_ip, 9, big), 1461, TxDropReason.TOO_BIG),  # a piece > MTU
            (_segment(usnet_ip, port, host_ip, 9, big), 40, TxDropReason.TOO_BIG),  # cut too fine
            (_segment(usnet_ip, port, host_ip, 9, big), 0, TxDropReason.TOO_BIG),  # no cut asked
            (_segment(usnet_ip, port, host_ip, 9, big, spoof=True), 1460, TxDropReason.SPOOFED_SOURCE),
            (_segment(usnet_ip, port, host_ip, 10, big), 1460, TxDropReason.WRONG_DESTINATION),
        ]
        before_gso = drv.stats.tx_gso_frames
        send_raw(ch, [c[0] for c in cases] + [good], [c[1] for c in cases] + [1460])
        events = _events(ch, len(cases))
        assert [(e.type, e.code) for e in events] == [(EventType.TX_DROPPED, c[2]) for c in cases]
        assert all(e.value == len(c[0]) for e, c in zip(events, cases))

        # A UDP flow may not ask for TCP segmentation.
        uport = uinfo.local_port
        dgram = build_ipv4_header(ip_bytes(usnet_ip), ip_bytes(host_ip), 17, 8 + 3000)
        dgram += uport.to_bytes(2, "big") + (9).to_bytes(2, "big") + (3008).to_bytes(2, "big") + b"\0\0"
        dgram += bytes(3000)
        send_raw(udp, [dgram], [1400])
        assert [(e.type, e.code) for e in _events(udp, 1)] == [(EventType.TX_DROPPED, TxDropReason.TOO_BIG)]

        # The good one left as one super-frame, as the kernel received it, checksum whole.
        deadline = time.monotonic() + 5
        seen = None
        while seen is None and time.monotonic() < deadline:
            frame = tap.recv(70000)
            pkt = Ether(frame)
            if TCP in pkt and pkt[TCP].sport == port and pkt[IP].dst == host_ip:
                seen = pkt
        assert seen is not None, "the super-segment never reached the host"
        assert seen[IP].len == len(good) and bytes(seen[TCP].payload) == big
        sent = seen[TCP].chksum
        del seen[TCP].chksum
        assert IP(bytes(seen[IP]))[TCP].chksum == sent
        # One more judged packet: its event is posted in a later pass of the domain loop than
        # the flush that wrote the super-frame, so the driver has counted it by then.
        send_raw(ch, [cases[0][0]], [0])
        assert [(e.type, e.code) for e in _events(ch, 1)] == [(EventType.TX_DROPPED, TxDropReason.TOO_BIG)]
        assert drv.stats.tx_gso_frames == before_gso + 1
        assert sw.counts["tx_segmented"] >= 1
    finally:
        tap.close()
        ch.close()
        udp.close()


def test_a_reported_super_segment_has_one_status_and_an_expired_one_never_leaves(tap_domain):
    """A super-segment is one packet to its client: one TX_STATUS however many segments the device cuts."""
    d, ifname, usnet_ip, host_ip = tap_domain
    client = Client.local(d)
    ch, info = client.open_flow(ifname, 6, 0, (host_ip, 9))
    drv = d.switches[ifname].netif.driver
    try:
        big = bytes(range(256)) * 40  # 10,240 bytes: 8 segments of 1,460
        pkts: list[int] = []
        while len(pkts) < 2:
            pkts += ch.alloc(2 - len(pkts))
        for p in pkts:
            data = _segment(usnet_ip, info.local_port, host_ip, 9, big)
            ch.write(p, data, 1460)
            ch.set_length(p, len(data))
        ch.mark(pkts[0], tag=41, report=True)
        ch.mark(pkts[1], tag=42, deadline_ns=time.monotonic_ns() - 1, report=True)
        before = drv.stats.tx_gso_frames
        assert ch.send(pkts) == 2
        got = sorted((e.tag, e.status) for e in _events(ch, 2) if e.type == EventType.TX_STATUS)
        assert got == [(41, TxStatus.SENT), (42, TxStatus.EXPIRED)]
        assert list(ch.events()) == []  # and nothing more: one status per packet, not per segment
        assert drv.stats.tx_gso_frames == before + 1
    finally:
        ch.close()


def _frames_from(tap: socket.socket, port: int, host_ip: str, want: int, timeout: float = 5.0) -> list:
    """The first `want` TCP frames from `port` to `host_ip` the host side of the TAP sees."""
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        pkt = Ether(tap.recv(70000))
        if TCP in pkt and pkt[TCP].sport == port and pkt[IP].dst == host_ip:
            out.append(pkt)
    return out


def test_a_batch_of_super_segments_is_checked_column_wise_and_written_from_its_rows(tap_domain, monkeypatch):
    """Issue 18: a bulk sender's super-segments take the batch path (one column-wise check, one
    block the TAP writes row by row with its gso_size), not the packet-by-packet one that copied
    each 64 KB four times more; a bad one among them is still judged on its own, in order."""
    d, ifname, usnet_ip, host_ip = tap_domain
    client = Client.local(d)
    ch, info = client.open_flow(ifname, 6, 0, (host_ip, 9))
    sw = d.switches[ifname]
    drv = sw.netif.driver
    assert drv.caps.takes_blocks
    one_by_one: list[int] = []
    real_tx_one = sw._tx_one
    monkeypatch.setattr(sw, "_tx_one", lambda flow, p, now, gso=0: one_by_one.append(len(p)) or real_tx_one(
        flow, p, now, gso))
    tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    tap.bind((ifname, 0))
    tap.settimeout(5)
    try:
        port = info.local_port
        payloads = [bytes([i]) * 60000 for i in range(4)]
        segs = [_segment(usnet_ip, port, host_ip, 9, p) for p in payloads]
        gso0 = drv.stats.tx_gso_frames
        send_raw(ch, segs[:1], [1448])  # a batch of one (it waits for ARP: the next batch once it is out,
        seen = _frames_from(tap, port, host_ip, 1)  # as 4 of them would overflow the ARP queue's 212,992 bytes)
        send_raw(ch, segs[1:], [1448, 1448, 1448])
        seen += _frames_from(tap, port, host_ip, 3)
        assert [bytes(f[TCP].payload) for f in seen] == payloads  # whole, in order
        for f in seen:
            sent = f[TCP].chksum
            del f[TCP].chksum
            assert IP(bytes(f[IP]))[TCP].chksum == sent
        assert one_by_one == []  # none went packet by packet
        # the sequence guard saw them: the next sequence number after the last
        (flow,) = [f for f in sw.flows.values() if f.lport == port and f.proto == 6]
        assert flow.tcp_seen.ends[(ip_bytes(host_ip), 9)][0] == 1000 + 60000

        # A bad super-segment between good ones: judged alone (TOO_BIG), the others go, in order.
        bad = _segment(usnet_ip, port, host_ip, 9, bytes(30000))
        send_raw(ch, [segs[0], bad, segs[1]], [1448, 1461, 1448])
        assert [(e.type, e.code) for e in _events(ch, 1)] == [(EventType.TX_DROPPED, TxDropReason.TOO_BIG)]
        seen = _frames_from(tap, port, host_ip, 2)
        assert [bytes(f[TCP].payload) for f in seen] == payloads[:2]
        assert one_by_one == [len(bad)]
        send_raw(ch, [bad], [0])  # a later pass of the loop than the flush: the driver has counted
        _events(ch, 1)
        assert drv.stats.tx_gso_frames == gso0 + 6
    finally:
        tap.close()
        ch.close()
