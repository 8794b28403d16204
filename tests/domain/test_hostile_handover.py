"""Issue 18, red-team audit: a hostile host on the link against usnetd's hand-over to workers.

Under `usnetd --workers 2` every ICMP error and every fragment comes to queue 0, usnetd's, and
usnetd hands one about worker k's port to worker k (b"F" on its command socket). What reaches it
is the link's: a host that floods such frames may cost worker k the frames themselves (dropped
and counted), never the command line usnetd needs for worker k's heartbeat, its clients' new
sessions and its neighbours (docs/design-notes.md, "Issue 18: a red-team audit of multicast, the
hand-over to workers and the doorbells").
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether

from tests.domain.test_worker_multicast import _counts
from tests.domain.test_workers import _workers
from tests.helpers.util import wait_until

pytestmark = pytest.mark.privileged
LIMIT = 10.0
FLOOD = 40000  # frames, sent in at most FLOOD_TIME s
FLOOD_TIME = 4.0
OPENS = 40  # new sessions, each opening a flow on worker 1's port, while the flood runs


def _error_quoting(d, sport: int, dport: int) -> bytes:
    """A port unreachable from the host quoting a datagram from usnet's `sport` to `dport`, as long
    as a frame may be (RFC 1812 lets a router quote up to 576 bytes; nothing stops a hostile host)."""
    quote = IP(src=d.usnet_ip, dst=d.host_ip, ttl=64) / UDP(sport=sport, dport=dport) / bytes(1400)
    return bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:99")
                 / IP(src=d.host_ip, dst=d.usnet_ip) / ICMP(type=3, code=3) / bytes(quote)[:1400])


def _flood(ifname: str, frame: bytes, stop: threading.Event, out: dict) -> None:
    sent = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as tx:
        tx.bind((ifname, 0))
        end = time.monotonic() + FLOOD_TIME
        while sent < FLOOD and time.monotonic() < end and not stop.is_set():
            try:
                tx.send(frame)
                sent += 1
            except BlockingIOError:
                pass
    out["sent"] = sent


@pytest.mark.parametrize("tapd2", ["packet"], indirect=True)
def test_a_flood_of_icmp_errors_for_worker_1_leaves_its_command_line_free(tapd2):
    """A host floods ICMP errors quoting a flow of worker 1 (each is handed over): meanwhile 40 new
    clients each open a flow on a port of worker 1, which needs usnetd's word to worker 1 on the
    command line (a new session there): every one is served, worker 1 is never judged hung (its
    heartbeat's question was never lost behind hand-overs), and every error handed over or not is
    counted."""
    from usnet.client import Client

    d = tapd2
    pid1 = _workers(d.path)[1]["pid"]
    victim = Client.connect(d.path)
    victim.open_flow("usnet0", 17, 47601)
    stop, out = threading.Event(), {}
    t = threading.Thread(target=_flood, args=(d.ifname, _error_quoting(d, 47601, 9), stop, out), daemon=True)
    t.start()
    refused = []
    try:
        for i in range(OPENS):
            with Client.connect(d.path) as c:
                try:
                    c.open_flow("usnet0", 17, 47603 + 2 * i)
                except OSError as e:
                    refused.append(e)
            if not t.is_alive():
                break
    finally:
        stop.set()
        t.join(LIMIT)
    assert not refused, refused[:3]
    wait_until(lambda: _counts(d.path)[1].get("rx_icmp_error", 0) == _counts(d.path)[0].get("rx_handed_over"),
               LIMIT, "worker 1 to take what was handed over")
    usnetd = _counts(d.path)[0]
    assert usnetd.get("rx_handed_over", 0) + usnetd.get("rx_hand_over_failed", 0) > 0, usnetd
    assert [w["pid"] for w in _workers(d.path)][1] == pid1
    log = (d.logs / "usnetd.log").read_text()
    assert "hung" not in log and "heartbeat" not in log, log[-2000:]
    victim.close()
