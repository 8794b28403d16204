"""Loss recovery against the Linux kernel over a TAP (RACK-TLP, PRR, D-SACK; issue 17).

The kernel is the peer in the test's own namespace. The path is impaired on
usnet's side of the TAP by a FaultInjector (netem is not built into this
kernel): 2 % of the frames each way are dropped and 1 % duplicated, so both
senders, usnet's and the kernel's, must recover. The claims: each transfer
arrives intact, and usnet's statistics (its `tcp_info()`) say RACK found
the losses and the retransmission timer was hardly needed. Timing is real
here, so the RTO bound is relative to RACK's count and generous (the issue's
12-18 per 20 MB are what it must beat).
"""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.conftest import _domain_on_tap
from tests.helpers.util import digest_of, kernel_server

pytestmark = pytest.mark.privileged


@pytest.mark.parametrize("direction", ["usnet_to_kernel", "kernel_to_usnet"])
def test_lossy_tap_transfer_with_a_kernel_socket_recovers_without_the_timer(netns, direction):
    from usnet import socket as us
    from usnet.client import Client
    from usnet.drivers import FaultInjector

    size = 8_000_000
    data = os.urandom(size)
    faults: list = []

    def wrap(drv):
        f = FaultInjector(drv, drop=0.02, duplicate=0.01, direction="both", seed=17)
        faults.append(f)
        return f

    up = direction == "usnet_to_kernel"
    with _domain_on_tap(ipv6=False, offload=False, wrap=wrap) as (d, ifname, x):
        host_ip = f"10.{x}.0.1"

        def kernel_side(k, _) -> dict:
            if up:
                return {"got": digest_of(k, size)}
            k.sendall(data)
            return {}

        with kernel_server(host_ip, kernel_side) as (addr, result):
            s = us.create_connection(addr, timeout=60, client=Client.local(d), netif=ifname)
            if up:
                s.sendall(data)
                got = None
            else:
                got = digest_of(s, size)
            info = s.tcp_info()
            s.close()
        if up:
            assert result.get("got") == (size, hashlib.sha256(data).digest())
        else:
            assert got == (size, hashlib.sha256(data).digest())
    assert faults[0].counts["dropped"] > 50 and faults[0].counts["duplicated"] > 10
    assert info["srtt"] is not None and info["srtt"] < 0.1  # a LAN, not the handshake's 1 s
    if up:
        # usnet sent through the loss: RACK marked, retransmitted, and the timer rarely fired
        assert info["rack_losses"] > 0 and info["retransmits"] > 0
        # RACK, not the timer, found the losses. The timer's count depends on timing (a
        # stalled machine holds ACKs past the 0.2 s floor: 0-2 quiet, 4 once in CI), so
        # it is bounded against RACK's count, ~100 here; timer-only recovery fails this.
        assert info["rto_timeouts"] * 15 < info["rack_losses"]
        assert info["retransmits"] < 0.1 * size / info["mss"]
        assert info["dsacks"] > 0  # the kernel reports duplicates (RFC 2883) and usnet reads them
    else:
        # usnet received through the loss: duplicates were reported back (D-SACK)
        assert info["dsacks_sent"] > 0 and info["ooo_segments"] > 0
        assert info["bytes_in"] >= size
