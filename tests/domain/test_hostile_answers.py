"""Issue 36, red-team audit of `Capabilities.answers_in_send` (issue 18): after a woken flow's turn
wrote to a TAP, the domain reads the device once more in that turn for the host's immediate answer
(`Domain._answers`). The device's content is the link's: under a flood every such read is a full
batch. With an LL flow on the netif each flow's bell is served alone (`_serve_event`), so a
client whose many flows ring in one turn would make that turn read a batch per flow, on top of
the netif's own rounds: the turn grows with the client's flows and the link's flood, and every
other netif and session waits for it. The read is the switch's once a turn, whatever rang.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

from usnet.client import Client

pytestmark = pytest.mark.privileged
FLOWS = 16  # general flows of one client, each rung in one turn
ROUNDS = 6
LIMIT = 10.0

# a flood of frames from the host's side of the TAP, each received by the domain: to usnet's own
# MAC and address, a UDP port nobody holds (the work of a receive, then a drop); bounded in time
FLOOD = """
import socket, sys, time
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
ifname, mac, dst, src = sys.argv[1:5]
frame = bytes(Ether(dst=mac) / IP(src=src, dst=dst) / UDP(sport=9, dport=9) / bytes(18))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
print("go", flush=True)
end = time.monotonic() + float(sys.argv[5])
while time.monotonic() < end:
    try:
        s.send(frame)
    except OSError:
        pass
"""


class _AnswerReads:
    """Per turn of the domain's loop (`serve_once`), the reads of `Domain._answers` that found
    frames, in the thread that set it (the domain's), while `on`: the most seen in one turn, and
    how many in all."""

    def __init__(self) -> None:
        self.on = False
        self.turn = 0
        self.most = 0
        self.reads = 0  # in all turns

    def __call__(self, frame, event: str, arg: object) -> None:
        if not self.on:
            return
        name = frame.f_code.co_name
        if event == "call" and name == "serve_once":
            self.turn = 0
        elif event == "return" and name == "_answers" and isinstance(arg, int) and arg > 0:
            self.turn += 1
            self.reads += 1
            self.most = max(self.most, self.turn)


def test_a_flood_and_many_rung_flows_read_the_device_once_a_turn_for_answers(tap_domain_paced):
    dom, ifname, our_ip, host_ip = tap_domain_paced
    client = Client.local(dom)
    kernel = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    kernel.bind((host_ip, 0))
    kernel.settimeout(LIMIT)
    dest = (host_ip, kernel.getsockname()[1])
    sw = dom.switches[ifname]
    ll = client.udp_socket(ifname, 0)
    dom.set_flow_class(ifname, dom.channels[ll.channel.id].flow.id, "ll")  # LL active: bells served alone
    flows = [client.udp_socket(ifname, 0) for _ in range(FLOWS)]
    for s in flows:  # each resolved and heard once
        s.sendto(b"warm", dest)
        assert kernel.recv(100) == b"warm"
    counter = _AnswerReads()
    armed = threading.Event()
    dom.call_soon(lambda: (sys.setprofile(counter), armed.set()))
    assert armed.wait(LIMIT)
    flood = subprocess.Popen([sys.executable, "-c", FLOOD, ifname, sw.netif.mac.hex(":"), our_ip, host_ip, "5"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert flood.stdout is not None and flood.stdout.readline() == "go\n"
        counter.on = True
        for r in range(ROUNDS):
            held, release = threading.Event(), threading.Event()
            # the loop waits: every bell rings before its turn
            dom.call_soon(lambda held=held, release=release: (held.set(), release.wait(LIMIT)))
            assert held.wait(LIMIT)
            try:
                for s in flows:
                    s.sendto(b"r%d" % r, dest)
            finally:
                release.set()
            got = sorted(kernel.recv(100) for _ in flows)
            assert got == [b"r%d" % r] * FLOWS
        counter.on = False
    finally:
        flood.kill()
        flood.wait()
        dom.call_soon(lambda: sys.setprofile(None))
        kernel.close()
    assert counter.reads > 0, "the flood never reached a read for answers"
    assert counter.most == 1, f"{counter.most} reads for answers in one turn"
