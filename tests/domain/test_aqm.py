"""AQM on the general class (issue 5 item 3): CoDel at the head of each queue of a paced netif.

* CoDel itself (sans-I/O, hypothesis against a model of RFC 8289's rules):
  no drop while the sojourn is under the target or the backlog is at most
  one packet, none before the sojourn has stood above the target for an
  interval, and drops that come faster (interval / sqrt(count)) while it stays;
* on a paced netif (fake clock): a standing queue is cut from its head and
  every frame is accounted for (sent + dropped + queued = queued in); a
  sparse queue and the LL class are never dropped;
* through the domain: a flood on a slow link hears of its drops (TX_DROPPED
  QUEUE_DELAY, and TX_STATUS DROPPED for a reported packet), received plus
  dropped is what it sent, and a sparse flow beside it loses nothing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.domain import test_lowlat
from tests.domain.test_lowlat import recv_all
from tests.helpers.util import FakeClock, wait_until
from usnet.abi.events import EventType, TxDropReason, TxStatus
from usnet.domain import config
from usnet.domain.netif.aqm import INTERVAL, TARGET, CoDel
from usnet.domain.netif.netif import Netif
from usnet.drivers import MemWire
from usnet.drivers.base import Capabilities, DriverStats, SegmentedFrame, random_mac
from usnet.drivers.block import FrameBlock
from usnet.proto.wire import ecn
from usnet.proto.wire.checksum import acc, finish, verifies

MTU = 1500


# -- CoDel, sans-I/O ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 0.05), st.floats(0, 0.05), st.integers(0, 20_000)), max_size=200))
def test_codel_drops_only_a_queue_that_stood_above_its_target_for_an_interval(steps):
    codel, now = CoDel(), 1.0
    above_since = None  # the model: since when every dequeue saw a standing queue
    for dt, sojourn, backlog in steps:
        now += dt
        standing = sojourn >= TARGET and backlog > MTU
        above_since = (above_since if above_since is not None else now) if standing else None
        dropped = codel.drop(sojourn, now, backlog, MTU)
        if dropped:
            assert standing, "dropped from a queue under its target, or of one packet"
            assert now - above_since >= INTERVAL - 1e-12, "dropped before the queue stood an interval"


def test_codel_drops_faster_while_the_queue_stands_and_stops_when_it_falls():
    codel, now = CoDel(), 1.0
    drops = []
    while now < 3.0:  # a queue that stands at 20 ms for two seconds, looked at every ms
        if codel.drop(0.020, now, 10 * MTU, MTU):
            drops.append(now)
        now += 0.001
    assert drops[0] == pytest.approx(1.0 + INTERVAL, abs=0.0015)  # one interval after it began to stand
    gaps = [b - a for a, b in zip(drops, drops[1:])]
    assert all(g2 <= g1 + 0.0011 for g1, g2 in zip(gaps, gaps[1:]))  # ever closer (to the ms it is looked at)
    assert gaps[0] == pytest.approx(INTERVAL, abs=0.0015) and gaps[-1] < INTERVAL / math.sqrt(len(drops) - 2) + 0.002
    assert not codel.drop(0.001, now, 10 * MTU, MTU) and not codel.dropping  # under the target: it stops
    assert not codel.drop(0.020, now + 0.001, 10 * MTU, MTU)  # and standing again must wait again


def test_codel_parameters_must_make_sense():
    for bad in ((0, 0.1), (0.005, 0), (-1, 0.1)):
        with pytest.raises(ValueError):
            CoDel(*bad)


# -- a paced netif (fake clock) ----------------------------------------------------------------


class Sink:
    """A device that takes every frame."""

    name, mtu, caps = "sink", MTU, Capabilities(takes_blocks=True)

    def __init__(self) -> None:
        self.mac = random_mac()
        self.stats = DriverStats()
        self.frames = 0
        self.kept: list = []  # what it was given, as given

    def send_batch(self, frames) -> int:
        n = sum(len(f) if type(f) is FrameBlock else 1 for f in frames)  # a block counts its frames
        self.frames += n
        self.kept += frames
        return n

    def fileno(self) -> int:
        return -1


def paced(aqm: bool = True) -> tuple[Netif, FakeClock, Sink]:
    clock, dev = FakeClock(), Sink()
    return Netif("a", dev, "10.0.0.1/24", link_rate=1e6, ll_share=0.2, aqm=aqm, clock=clock), clock, dev


def run_for(netif: Netif, clock: FakeClock, seconds: float, step: float = 0.001) -> None:
    end = clock.now + seconds
    while clock.now < end:
        netif.flush()
        clock.now += step


def test_a_standing_queue_is_cut_from_its_head_and_every_frame_is_accounted_for():
    netif, clock, dev = paced()
    netif.enqueue_many(1, [bytes(1000)] * 200)  # 1.6 s of frames at 1 Mbit/s
    run_for(netif, clock, 0.5)
    dropped = netif.aqm_dropped
    assert dropped > 0 and netif.aqm_drops[1][0] == dropped
    assert dev.frames + dropped + netif.queued(1)[0] == 200
    assert netif.aqm_drops[1][1] == 1000 * dropped
    without, clock2, dev2 = paced(aqm=False)
    without.enqueue_many(1, [bytes(1000)] * 200)
    run_for(without, clock2, 0.5)
    assert without.aqm_dropped == 0 and dev2.frames + without.queued(1)[0] == 200


def test_blocks_lose_single_frames_from_their_head():
    netif, clock, dev = paced()
    netif.enqueue_many(1, [FrameBlock(np.zeros((150, 1000), np.uint8), np.full(150, 1000))])
    run_for(netif, clock, 0.5)
    assert netif.aqm_dropped > 0
    assert dev.frames + netif.aqm_dropped + netif.queued(1)[0] == 150
    assert netif.queued(1)[1] == 1000 * netif.queued(1)[0]


@pytest.mark.parametrize("shape", ["frames", "block", "super-segments"])
def test_ecn_capable_frames_are_marked_ce_instead_of_dropped_and_still_verify(shape):
    from scapy.all import IP, UDP, Ether, raw

    netif, clock, dev = paced()
    frame = raw(Ether(dst="02:00:00:00:00:02", src=netif.mac) / IP(src="10.0.0.1", dst="10.0.0.2", tos=0x28 | ecn.ECT0)
                / UDP(sport=5000, dport=6000) / bytes(958))
    if shape == "block":
        items = [FrameBlock(np.frombuffer(frame * 200, np.uint8).reshape(200, len(frame)).copy(),
                            np.full(200, len(frame)))]
    elif shape == "super-segments":
        items = [SegmentedFrame(frame, 500) for _ in range(200)]
    else:
        items = [frame] * 200
    netif.enqueue_many(1, items)
    run_for(netif, clock, 0.5)
    assert netif.aqm_marked > 0 and netif.aqm_dropped == 0 and not netif.aqm_drops  # told, not cut
    assert dev.frames + netif.queued(1)[0] == 200
    if shape == "super-segments":
        assert all(type(f) is SegmentedFrame and f.gso_size == 500 for f in dev.kept)
    sent = [bytes(f) for item in dev.kept for f in (item.frames() if type(item) is FrameBlock else [item])]
    marked = [Ether(f) for f in sent if Ether(f)[IP].tos & 3 == ecn.CE]
    assert len(marked) == netif.aqm_marked
    for p in marked:
        assert p[IP].tos >> 2 == 0x28 >> 2  # DSCP untouched
        again = p.copy()
        del again[IP].chksum
        assert Ether(raw(again))[IP].chksum == p[IP].chksum  # scapy's checksum of the marked header


def test_a_sparse_queue_and_the_ll_class_are_never_dropped():
    netif, clock, _dev = paced()
    netif.set_class(2, True)
    netif.enqueue_many(1, [bytes(1400)] * 300)  # a bulk backlog ahead of everyone
    for _ in range(60):  # every 30 ms: one general frame on queue 3, one LL frame on queue 2
        netif.enqueue_many(3, [bytes(200)])
        netif.enqueue_many(2, [bytes(200)])
        run_for(netif, clock, 0.03)
    assert netif.aqm_dropped > 0  # the backlog was cut
    assert set(netif.aqm_drops) == {1}  # but only the backlog


# -- through the domain --------------------------------------------------------------------------


net = test_lowlat.net  # the same fixture: netifs a and b over a memwire in a running domain


def test_a_flood_on_a_slow_link_hears_of_its_drops_and_a_sparse_flow_loses_nothing(net):
    wire = MemWire()
    net.d.add_netif("slow", wire.a, "10.8.0.1/24", link_rate=2e6, ll_share=0.2)
    net.d.add_netif("sink", wire.b, "10.8.0.2/24")
    flood, sparse = net.c.udp_socket("slow", 5100), net.c.udp_socket("slow", 5101)
    sink, sink2 = net.c.udp_socket("sink", 6100), net.c.udp_socket("sink", 6101)
    flood.sendto(b"resolve", ("10.8.0.2", 6100))
    assert recv_all(sink, 1) == [b"resolve"]
    n = 80  # 0.4 s at 2 Mbit/s: CoDel's first drop comes after 0.1 s of standing queue
    assert flood.send_many([bytes(1200)] * (n - 1), ("10.8.0.2", 6100)) == n - 1
    flood.sendto(bytes(1200), ("10.8.0.2", 6100), tag=7, report=True)  # the last: it stands longest
    for i in range(10):
        sparse.sendto(b"%d" % i, ("10.8.0.2", 6101))
    assert sorted(recv_all(sink2, 10)) == sorted(b"%d" % i for i in range(10))
    netif = net.d.switches["slow"].netif
    wait_until(lambda: netif.queued(net.d.channels[flood.channel.id].flow.id) == (0, 0), 10, "the flood to drain")
    got = recv_all(sink, n, timeout=1)
    events = list(flood.channel.events())
    drops = sum(e.value for e in events if e.type == EventType.TX_DROPPED and e.code == TxDropReason.QUEUE_DELAY)
    assert drops == netif.aqm_dropped > 0
    assert len(got) + drops == n  # each one received or reported dropped
    (status,) = [e for e in events if e.type == EventType.TX_STATUS]  # the reported one: sent or dropped
    assert status.tag == 7 and (status.status, status.reason) in [(TxStatus.SENT, None),
                                                                  (TxStatus.DROPPED, TxDropReason.QUEUE_DELAY)]
    (info,) = [i["netif"] for i in net.d.status()["netifs"] if i["netif"]["name"] == "slow"]
    assert info["aqm"] == {"dropped": drops, "marked": 0}  # UDP datagrams are not ECN-capable


def test_aqm_is_on_where_a_link_rate_paces_the_netif_unless_configured(tmp_path):
    assert paced()[0].aqm is not None and paced(aqm=False)[0].aqm is None
    assert Netif("u", Sink(), "10.0.0.1/24").aqm is None  # unpaced: the queue forms in the device
    assert Netif("u", Sink(), "10.0.0.1/24", aqm=True).aqm is not None
    p = tmp_path / "usnetd.toml"
    p.write_text('[[netif]]\nname = "x"\naddress = "10.9.3.1/24"\nlink_rate = 1e6\naqm = false\n'
                 '[[netif]]\nname = "y"\naddress = "10.9.4.1/24"\n')
    cfg = config.load(str(p))
    assert [nc.aqm for nc in cfg.netif] == [False, None]
    p.write_text(config.dump(cfg))
    assert config.load(str(p)) == cfg
    p.write_text('[[netif]]\nname = "x"\naddress = "10.9.3.1/24"\naqm = "yes"\n')
    with pytest.raises(ValueError):
        config.load(str(p))


# -- ECN: marked, not dropped ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=20, max_size=20), st.sampled_from([4, 6]))
def test_marking_ce_keeps_the_ipv4_checksum_right_and_leaves_not_ect_alone(header, version):
    buf = bytearray(header)
    if version == 4:
        buf[0] = 0x45
        buf[10:12] = b"\0\0"
        buf[10:12] = finish(acc(buf)).to_bytes(2, "big")
    else:
        buf[0] = 0x60 | buf[0] & 0x0F
    before = bytes(buf)
    was = ecn.ecn(buf)
    assert ecn.mark_ce(buf) == (was != ecn.NOT_ECT)
    if was == ecn.NOT_ECT:
        assert bytes(buf) == before  # a router drops it instead
        return
    assert ecn.ecn(buf) == ecn.CE
    changed = [i for i in range(20) if buf[i] != before[i]]
    if version == 4:
        assert verifies(acc(buf))  # the header still verifies
        assert set(changed) <= {1, 10, 11} and buf[1] >> 2 == before[1] >> 2  # DSCP untouched
    else:
        assert changed == ([1] if was != ecn.CE else []) and buf[1] & 0xCF == before[1] & 0xCF


@pytest.mark.privileged
def test_over_a_paced_tap_codel_marks_usnet_tcp_and_the_kernel_s_echo_slows_it_without_a_loss(tap_domain_paced):
    """usnet TCP asks the host for ECN (the host grants it: net.ipv4.tcp_ecn=2); 20 MB through the
    netif paced to 100 Mbit/s builds a standing queue, and CoDel marks instead of dropping."""
    import hashlib

    from tests.helpers.util import digest_of, kernel_server
    from usnet import socket as us
    from usnet.client import Client

    d, ifname, _usnet_ip, host_ip = tap_domain_paced
    netif = d.switches[ifname].netif
    size = 20_000_000
    data = np.random.default_rng(3).bytes(size)
    with kernel_server(host_ip, lambda k, _: dict(zip(("n", "digest"), digest_of(k, size)))) as (addr, got):
        s = us.create_connection(addr, timeout=60, client=Client.local(d), netif=ifname)
        s.sendall(data)
        stats, ecn_ok = s._conn.stats, s._conn.ecn_ok
    s.close()
    assert got.get("digest") == hashlib.sha256(data).digest() and got["n"] == size
    assert ecn_ok
    assert netif.aqm_marked > 0 and netif.aqm_dropped == 0
    assert stats.ecn_reductions > 0
    # no loss: a retransmission here is a spurious timeout on a loaded machine, and the
    # receiver says it had the segment already (a D-SACK)
    assert stats.retransmits == 0 or stats.dsacks > 0
