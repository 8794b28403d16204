"""Issue 16: a UDP datagram bigger than a flow's packet is received whole, over a chain of RX slots.

The flow switch puts IP fragments back together; a datagram longer than the
flow's packets (2 KiB without offload) is copied into consecutive packets, each
but the last flagged RX_MORE in its UMD (usnet.abi.rxchain), published in one
push, and joined by the client's DatagramSocket. Before, it was dropped
(`rx_too_big`) and a DNS answer over EDNS0 past ~2 KB never arrived.

The switch alone here (a MemWire netif, frames handed to its receive path),
the fragments made by usnet's own fragmenter (property-tested against scapy's
reassembly in tests/proto); the kernel's fragments are in
tests/interop/test_programs3.py. Also: the whole chain or none of it goes on
the ring; a client that writes RX_MORE everywhere it can confuses nothing (the
switch writes every delivered packet's flags, and reads only TX_REPORT on
transmit); a chain a broken producer cut is dropped and counted by the client;
the loopback netif carries datagrams up to IP's bound.
"""

from __future__ import annotations

import hashlib
import ipaddress

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usnet.abi.rxchain import CHAIN_MAX_BYTES, chains, max_slots, piece_lengths
from usnet.abi.umd import RX_MORE, UMD_WORDS, W_FLAGS
from usnet.client import Client
from usnet.proto.wire.fragment import udp4_fragments, udp6_fragments

PEER_MAC = bytes.fromhex("020000000009")
A4, B4 = ipaddress.ip_address("10.9.0.1").packed, ipaddress.ip_address("10.9.0.2").packed
A6, B6 = ipaddress.ip_address("fd00:9::1").packed, ipaddress.ip_address("fd00:9::2").packed
MAX = {4: 65507, 6: 65527}


@pytest.fixture
def switch():
    from usnet.domain.loop import Domain
    from usnet.drivers import MemWire

    d = Domain()
    sw = d.add_netif("a", MemWire().a, "10.9.0.1/24", address6="fd00:9::1/64")
    try:
        yield d, sw
    finally:
        d.stop()


def _data(n: int) -> bytes:
    return (hashlib.sha256(str(n).encode()).digest() * (n // 32 + 1))[:n]


def _frames(sw, fam: int, data: bytes, ident: int, mtu: int = 1500) -> list[bytes]:
    """The Ethernet frames of one UDP datagram from the peer (port 7) to port 5000, in fragments if
    it does not fit `mtu`."""
    if fam == 4:
        frags = udp4_fragments(B4, A4, 7, 5000, data, ident, mtu, 64, 0)
        et = b"\x08\x00"
    elif len(data) + 48 <= mtu:
        from usnet.proto.wire.ipv6 import build_ipv6_header, upper_checksum_v6

        udp = bytearray((7).to_bytes(2, "big") + (5000).to_bytes(2, "big") + (8 + len(data)).to_bytes(2, "big")
                        + b"\0\0" + data)
        udp[6:8] = upper_checksum_v6(B6, A6, 17, bytes(udp)).to_bytes(2, "big")
        frags = [build_ipv6_header(B6, A6, 17, len(udp), 64) + bytes(udp)]
        et = b"\x86\xdd"
    else:
        frags = udp6_fragments(B6, A6, 7, 5000, data, ident, mtu, 64, 0)
        et = b"\x86\xdd"
    return [sw.netif.mac + PEER_MAC + et + bytes(f) for f in frags]


def _feed(sw, frames: list[bytes]) -> None:
    """The frames to the switch's receive path, once (the device is empty afterwards)."""
    batches = [list(frames)]
    sw.netif.driver.recv_batch = lambda n=256: batches.pop() if batches else []
    sw.service_rx()


def _collect(port) -> None:
    """Everything the client freed, off its FREE ring (a pop may take only what it saw last time)."""
    for _ in range(4):
        port.pipe.collect()
        if not port.pipe.ends[0].free.refresh():
            return


def _drain(s, max_n: int = 64) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(1000):
        try:
            got = s.recv_many(max_n, 0)
        except BlockingIOError:
            return out
        out += [g for g, _ in got]
    return out


@pytest.mark.parametrize("fam", [4, 6])
def test_datagrams_up_to_ip_s_bound_arrive_whole_in_order(switch, fam):
    """3,000, 9,000 and the largest datagram (65,507 bytes over IPv4, 65,527 over IPv6) reach a 2 KiB
    flow whole (SHA-256), in order, between small ones, read in batches of 1, 3 and 64: a batch that
    cuts a chain takes its rest. Before, all but the small ones were `rx_too_big`."""
    d, sw = switch
    sizes = [100, 3000, 200, 9000, MAX[fam], 50, MAX[fam] - 1]
    want = [hashlib.sha256(_data(n)).digest() for n in sizes]
    for batch in (64, 3, 1):
        s = Client.local(d).udp_socket("a", 5000, family=fam)
        try:
            assert s.channel.stride == 2048
            _feed(sw, [f for i, n in enumerate(sizes) for f in _frames(sw, fam, _data(n), i + 1)])
            got = _drain(s, batch)
            assert [hashlib.sha256(g).digest() for g in got] == want, [len(g) for g in got]
            assert s.rx_bad == 0 and not sw.drops, dict(sw.drops)
        finally:
            s.close()
    assert sw.counts["rx_chained"] == 3 * 4


def test_a_chain_that_does_not_fit_the_ring_is_dropped_whole(switch):
    """An RX ring of 8 slots: a 9,000-byte datagram (5 packets) behind 5 small ones finds 3 free
    slots and is dropped whole (counted once, as a datagram), nothing of it published; the packets it
    had are back in the pool; what follows is received. A 65,507-byte one (32 packets) never fits."""
    d, sw = switch
    s = Client.local(d).udp_socket("a", 5000, ring_size=8, packets=64, max_packets=64)
    port = next(iter(sw.flows.values())).port
    try:
        frames = [f for i in range(5) for f in _frames(sw, 4, _data(10 + i), i + 1)]
        _feed(sw, frames + _frames(sw, 4, _data(9000), 9) + _frames(sw, 4, _data(65507), 10))
        assert sw.drops["rx_client_full"] == 2 and port.rx_dropped == 2
        held = port.pool.counts()["held"]
        assert [len(g) for g in _drain(s)] == [10, 11, 12, 13, 14]
        _collect(port)
        assert port.pool.counts()["held"] == held - 5  # the small ones, freed; nothing of the chains held
        _feed(sw, _frames(sw, 4, _data(9000), 11))
        assert _drain(s) == [_data(9000)] and s.rx_bad == 0
    finally:
        s.close()


def test_a_client_that_writes_rx_more_everywhere_confuses_nothing(switch):
    """The UMD is the client's to write: it sets RX_MORE (and every other bit) in every record of its
    pool, frees what it holds, and sends a datagram whose packet carries it. The switch writes the
    flags of every packet it delivers (a stale RX_MORE would join two datagrams), so single and
    chained datagrams arrive as they were; on transmit it reads only TX_REPORT, so the datagram goes
    out on the fast path as any other (no TX_STATUS event, nothing refused)."""
    d, sw = switch
    s = Client.local(d).udp_socket("a", 5000)
    port = next(iter(sw.flows.values())).port
    try:
        _, umd = s.channel.arrays()
        umd.reshape(-1, UMD_WORDS)[:, W_FLAGS] = 0xFFFFFFFF
        sizes = [30, 9000, 40, 41, 3000]
        for _round in range(2):
            _feed(sw, [f for i, n in enumerate(sizes) for f in _frames(sw, 4, _data(n), i + 1)])
            assert _drain(s, 2) == [_data(n) for n in sizes]
            umd.reshape(-1, UMD_WORDS)[:, W_FLAGS] = 0xFFFFFFFF  # again, over what it was given
        s.sendto(b"hello", ("10.9.0.2", 7))
        umd.reshape(-1, UMD_WORDS)[:, W_FLAGS] = 0xFFFFFFFE  # every bit but TX_REPORT, on the packet sent too
        with port.pipe.lock:
            good, lens, _gso, meta = port.take(64)
            port.top_up()
        assert len(good) == 1 and int(lens[0]) == 33 and meta is None  # not taken for a marked packet
        assert port.refused == 0 and s.rx_bad == 0 and not sw.drops, dict(sw.drops)
    finally:
        s.close()


@pytest.mark.parametrize("cut", ["tail", "too-long"])
def test_a_broken_chain_is_dropped_and_counted_by_the_client(switch, cut):
    """The client does not trust the ring either: a chain whose last packet says RX_MORE with nothing
    after it (what a broken producer would publish), or one longer than any IP packet, is dropped and
    counted (`rx_chain_bad`, `rx_bad`); the datagrams before it are received, and so is the next one."""
    d, sw = switch
    s = Client.local(d).udp_socket("a", 5000, ring_size=64)
    port = next(iter(sw.flows.values())).port
    try:
        _collect(port)
        held = port.pool.counts()["held"]
        _feed(sw, _frames(sw, 4, _data(70), 1))
        n = 3 if cut == "tail" else max_slots(port.stride) + 1
        with port.pipe.lock:
            got = port._reserve(n, n)
            port._publish(got, np.full(n, port.stride, np.uint32), np.full(n, RX_MORE, np.uint32) if cut == "tail"
                          else np.r_[np.full(n - 1, RX_MORE), 0].astype(np.uint32))
        assert [len(g) for g in _drain(s)] == [70]
        assert s.rx_chain_bad == 1 and s.rx_bad == 1
        _feed(sw, _frames(sw, 4, _data(3000), 2))
        assert _drain(s) == [_data(3000)]
        _collect(port)
        assert port.pool.counts()["held"] == held  # every packet of the broken chain was freed
    finally:
        s.close()


@pytest.mark.parametrize("fam, host", [(4, "127.0.0.1"), (6, "::1")])
def test_the_loopback_netif_carries_datagrams_up_to_ip_s_bound(fam, host):
    """As Linux's lo: a usnet datagram of up to 65,507 bytes (65,527 over IPv6) from one usnet socket
    to another on the loopback netif, where before it was EMSGSIZE past 1,472; past that, EMSGSIZE."""
    import errno

    from usnet.domain.loop import Domain

    d = Domain()
    d.add_loopback()
    d.start()
    try:
        c = Client.local(d)
        a, b = c.udp_socket("lo", 0, family=fam), c.udp_socket("lo", 0, family=fam)
        b.settimeout(5)
        with a, b:
            for n in (1473, 9000, MAX[fam]):
                a.sendto(_data(n), (host, b.local[1]))
                got, addr = b.recvfrom()
                assert got == _data(n) and addr == (host, a.local[1])
            with pytest.raises(OSError) as e:
                a.sendto(b"x" * (MAX[fam] + 1), (host, b.local[1]))
            assert e.value.errno == errno.EMSGSIZE
    finally:
        d.stop()


# -- the arithmetic, property-tested ---------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, CHAIN_MAX_BYTES), min_size=1, max_size=12),
       st.sampled_from([64, 128, 1024, 2048, 4096, 65536]))
def test_splitting_and_joining_give_back_the_datagrams(lengths, stride):
    """Each length cut by `piece_lengths` (full slots, then the rest), flagged RX_MORE but the last,
    and grouped back by `chains`, gives the same lengths; no chain is longer than `max_slots`."""
    slots = [piece_lengths(n, stride) for n in lengths]
    assert all(sum(p) == n and all(x == stride for x in p[:-1]) and 0 < p[-1] <= stride
               for p, n in zip(slots, lengths))
    assert all(len(p) <= max_slots(stride) for p in slots)
    flat = [x for p in slots for x in p]
    more = [j < len(p) - 1 for p in slots for j in range(len(p))]
    groups, tail = chains(more)
    assert tail == len(more)
    assert [sum(flat[a:b]) for a, b in groups] == lengths


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), max_size=40))
def test_chains_cover_every_slot_once(more):
    """Any flags at all (a producer's bug): the groups and the open tail cover the slots in order,
    each group ends at a slot without RX_MORE and has RX_MORE on every other one."""
    groups, tail = chains(more)
    assert [i for a, b in groups for i in range(a, b)] + list(range(tail, len(more))) == list(range(len(more)))
    assert all(not more[b - 1] and all(more[a : b - 1]) for a, b in groups)
    assert all(more[tail:])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from([1, 100, 1472, 2020, 2048, 4000, 9000, 30000, 65507]), min_size=1, max_size=6),
       st.integers(1, 8))
def test_any_mix_of_datagrams_arrives_in_order_whatever_the_batch(lengths, batch):
    """Through the switch and the client: any mix of small and big datagrams, read `batch` at a time."""
    from usnet.domain.loop import Domain
    from usnet.drivers import MemWire

    d = Domain()
    sw = d.add_netif("a", MemWire().a, "10.9.0.1/24")
    try:
        s = Client.local(d).udp_socket("a", 5000)
        with s:
            _feed(sw, [f for i, n in enumerate(lengths) for f in _frames(sw, 4, _data(n), i + 1)])
            assert [len(g) for g in _drain(s, batch)] == lengths
            assert s.rx_bad == 0 and not sw.drops
    finally:
        d.stop()
