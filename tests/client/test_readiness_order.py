"""A socket's readiness is told before the segments that change it leave (usnet.client.engine,
FlowEngine.pump; issue 16).

Once a pump hands its segments to the channel, the peer can have them, and act on them, before
the stack thread runs again: a kernel reader of a usnet sender under TCP_NOTSENT_LOWAT read the
last bytes, then found the sender's descriptor still unwritable (select, timeout 0) while TCP's
books had it writable, because the pump told the sockets only after the send (the intermittent
TCP_NOTSENT_LOWAT comparison in tests/interop/test_sockopts_linux.py). Linux's tcp_poll reads the
books when asked; usnet's descriptor holds a readiness set by the pump, so the pump must set it
before the segments go. Here the sender's channel records, at each hand-over the stack thread
makes, what the books say and what the descriptor says: they must agree.
"""

from __future__ import annotations

import select
import socket

import usnet.socket as us
from tests.helpers.util import memwire_domain

B_IP = "10.9.0.2"  # netif "b" of memwire_domain
LOWAT = 16384


def test_a_pump_tells_writability_before_the_segments_that_give_it_leave():
    with memwire_domain() as (_, c):
        srv = us.socket(client=c, netif="b")
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: most waits unsent
        srv.bind(("", 47801))
        srv.listen(1)
        srv.settimeout(10)
        cl = us.create_connection((B_IP, 47801), timeout=10, client=c, netif="a")
        peer = srv.accept()[0]
        peer.settimeout(10)
        cl.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, LOWAT)
        cl.setblocking(False)
        sent = 0
        for _ in range(1000):  # until the sender may take no more (unsent over the bound)
            if not select.select([], [cl], [], 0)[1]:
                break
            try:
                sent += cl.send(b"x" * 65536)
            except BlockingIOError:
                break
        assert not select.select([], [cl], [], 0)[1], sent
        eng = cl._engine
        ch = eng.ch
        seen: list[tuple[bool, bool]] = []
        plain_send = ch.send

        def send(pkts, flags):  # the stack thread's hand-over, under the engine's lock
            n = plain_send(pkts, flags)
            seen.append((cl._poll_state()[1], bool(select.select([], [cl], [], 0)[1])))
            return n

        ch.send = send
        try:
            got = 0
            for _ in range(10000):  # read until the sender is writable again, and all it sent
                got += len(peer.recv(65536))
                if got >= sent:
                    break
        finally:
            del ch.send
        assert got == sent
        assert any(books for books, _ in seen), seen  # a hand-over made the sender writable
        assert all(fd for books, fd in seen if books), seen  # and its descriptor said so already
        for s in (cl, peer, srv):
            s.close()
