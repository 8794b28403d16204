"""The low-latency receive lane (issue 19 item 3): LL frames land in the flow's own pool, no copy.

Each test makes its own veth pair with two queues each way, its peer end in a namespace of its
own where the kernel is the other host. The peer plays the NIC's flow rule: a tc classifier on
its egress records "received on queue 1" for UDP to the LL port (and queue 0 for the rest), which
the kernel's transmit queue choice then follows, so the LL flow's frames arrive on the usnet
end's queue 1, where the lane is bound. Waits are socket timeouts against deadlines, never sleeps.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterator

import pytest

from tests.helpers.util import fresh_subnet, tap_name, wait_until

pytestmark = pytest.mark.privileged
LIMIT = 30.0
LL_PORT = 9000


@contextlib.contextmanager
def lane_domain() -> Iterator[tuple]:
    """(domain, ifname, peer, usnet_ip, driver): an in-process Domain on an XdpDriver with an LL queue."""
    from usnet.bench.lowlat_xdp import pin_neighbour, steered_veth
    from usnet.domain.loop import Domain
    from usnet.drivers.hostnet import NetNs
    from usnet.drivers.xdp import XdpDriver

    x = fresh_subnet()
    ifname = tap_name()
    peer_if = ifname + "p"
    with NetNs() as peer:
        steered_veth(ifname, peer_if, peer, f"10.{x}.0.1", 1)
        drv = XdpDriver(ifname, ll_queue=1)
        # resolved before the first datagram: the kernel can reorder those it queued
        pin_neighbour(peer, peer_if, f"10.{x}.0.2", drv.mac)
        d = Domain()
        try:
            d.add_netif(ifname, drv, f"10.{x}.0.2/24", gateway=f"10.{x}.0.1", link_rate=1e9, ll_share=0.2,
                        rx_mitigation=True)
            d.start()
            yield d, ifname, peer, f"10.{x}.0.2", drv
        finally:
            d.stop()
            drv.close()


def _flow_id(d, ifname: str, port: int) -> int:
    (fid,) = [f.id for f in d.switches[ifname].flows.values() if f.lport == port]
    return fid


def _kernel_udp(peer) -> socket.socket:
    k = peer.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    k.settimeout(LIMIT)
    return k


def test_an_ll_flow_receives_into_its_own_buffers_without_a_copy():
    from usnet.client import Client

    with lane_domain() as (d, ifname, peer, usnet_ip, drv):
        us = Client.local(d).udp_socket(ifname, LL_PORT)
        k = _kernel_udp(peer)
        try:
            sw = d.switches[ifname]
            d.set_flow_class(ifname, _flow_id(d, ifname, LL_PORT), "ll")
            (lr,) = sw.lanes.values()
            assert drv.lanes and lr.lent, "a lane with the flow's packets in its fill ring"
            # one datagram, read at the channel: the packet the client gets is a lent UMEM chunk
            lent = set(lr.lent)
            msg = os.urandom(300)
            k.sendto(msg, (usnet_ip, LL_PORT))
            (pkt,) = us.channel.recv(1, LIMIT)
            assert pkt in lent
            assert lr.base + pkt * lr.stride + 28 + len(msg) <= lr.umem_size(lr.flow)
            data = bytes(us.channel.view(pkt))
            assert data[0] == 0x45 and data[28:] == msg  # the IP packet, from byte 0 of the buffer
            us.channel.free([pkt])
            # then many, through the socket: intact, in order, every one zero-copy
            sent = [struct.pack("!I", i) + os.urandom(i % 1200) for i in range(300)]
            got: list[bytes] = []
            for i in range(0, len(sent), 20):  # a window: no loss from overrunning a ring
                for m in sent[i:i + 20]:
                    k.sendto(m, (usnet_ip, LL_PORT))
                while len(got) < i + len(sent[i:i + 20]):
                    got.extend(p for p, _a in us.recv_many(64, LIMIT))
            assert got == sent
            assert sw.counts["rx_ll_zero_copy"] == 1 + len(sent)
            assert sw.counts["rx_ll_lane_copied"] == 0
            assert sw.flows[_flow_id(d, ifname, LL_PORT)].port.rx_bells_held == 0  # no mitigation
        finally:
            k.close()
            us.close()


def test_a_forged_header_on_the_ll_queue_is_dropped_and_counted():
    from usnet.client import Client

    with lane_domain() as (d, ifname, peer, usnet_ip, _drv):
        us = Client.local(d).udp_socket(ifname, LL_PORT, remote=(usnet_ip.rsplit(".", 1)[0] + ".1", 5555))
        k = _kernel_udp(peer)
        forged = _kernel_udp(peer)
        try:
            peer.call(lambda: k.bind(("0.0.0.0", 5555)))
            sw = d.switches[ifname]
            d.set_flow_class(ifname, _flow_id(d, ifname, LL_PORT), "ll")
            # from the wrong port: steered to the lane by its destination port, refused by the check
            for i in range(5):
                forged.sendto(b"forged %d" % i, (usnet_ip, LL_PORT))
            k.sendto(b"genuine", (usnet_ip, LL_PORT))
            assert us.recv(LIMIT) == b"genuine"
            assert sw.drops["rx_ll_bad_header"] == 5
            assert sw.counts["rx_ll_zero_copy"] == 1
            with pytest.raises(BlockingIOError):
                us.recv(0)
        finally:
            forged.close()
            k.close()
            us.close()


def test_revoking_the_lease_moves_the_flow_to_the_copying_path_losing_nothing():
    from usnet.client import Client

    with lane_domain() as (d, ifname, peer, usnet_ip, drv):
        us = Client.local(d).udp_socket(ifname, LL_PORT)
        k = _kernel_udp(peer)
        try:
            sw = d.switches[ifname]
            fid = _flow_id(d, ifname, LL_PORT)
            d.set_flow_class(ifname, fid, "ll")
            sent = [b"%04d" % i + os.urandom(64) for i in range(200)]
            got: list[bytes] = []
            for i in range(0, len(sent), 10):
                if i == 100:
                    d.set_flow_class(ifname, fid, "general")  # the lease ends mid-stream
                for m in sent[i:i + 10]:
                    k.sendto(m, (usnet_ip, LL_PORT))
                while len(got) < i + len(sent[i:i + 10]):
                    got.extend(p for p, _a in us.recv_many(64, LIMIT))
            assert got == sent
            assert sw.counts["rx_ll_zero_copy"] == 100
            assert sw.counts["rx_ll_lane_copied"] == 100
            d.set_flow_class(ifname, fid, "ll")  # granted again: zero-copy again
            k.sendto(b"again", (usnet_ip, LL_PORT))
            assert us.recv(LIMIT) == b"again"
            assert sw.counts["rx_ll_zero_copy"] == 101
        finally:
            k.close()
            us.close()
        # the flow gone, its lane goes with it: off the program, its packets back, the queue free
        wait_until(lambda: not sw.lanes, LIMIT, "the lane closed with its flow")
        assert not drv.lanes


def test_a_second_ll_flow_keeps_the_copying_receive_path():
    """One lane per LL queue: a second granted flow is served in the LL class (transmit, no
    mitigation) but receives by the copying path."""
    from usnet.client import Client

    with lane_domain() as (d, ifname, peer, usnet_ip, _drv):
        a = Client.local(d).udp_socket(ifname, LL_PORT)
        b = Client.local(d).udp_socket(ifname, LL_PORT + 1)
        k = _kernel_udp(peer)
        try:
            sw = d.switches[ifname]
            d.set_flow_class(ifname, _flow_id(d, ifname, LL_PORT), "ll")
            d.set_flow_class(ifname, _flow_id(d, ifname, LL_PORT + 1), "ll")
            assert len(sw.lanes) == 1
            k.sendto(b"to b", (usnet_ip, LL_PORT + 1))
            assert b.recv(LIMIT) == b"to b"
            assert sw.counts["rx_ll_zero_copy"] == 0
        finally:
            k.close()
            a.close()
            b.close()
