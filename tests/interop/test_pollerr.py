"""POLLERR and POLLHUP of a TCP connection that is over, usnet's and the kernel's side by side.

Linux's tcp_poll: a connection reset (or a connect refused) polls POLLIN | POLLOUT | POLLHUP |
POLLERR until its error is read (SO_ERROR), then without POLLERR; a connection closed both ways
(FIN each way) polls POLLHUP, never POLLERR. usnet's descriptor (a socketpair end,
usnet.client.engine.Readiness) shows the same masks, in poll and in epoll. The same walk runs on
a kernel client and on a usnet client, each against a kernel listener (over the TAP for usnet).
"""

from __future__ import annotations

import errno
import select
import socket
import struct

import pytest

from usnet import socket as us
from usnet.client import Client

pytestmark = pytest.mark.privileged
LIMIT = 10.0
_MASK = select.POLLIN | select.POLLOUT | select.POLLERR | select.POLLHUP


def _poll(s) -> int:
    p = select.poll()
    p.register(s.fileno(), select.POLLIN | select.POLLOUT)
    got = p.poll(0)
    return got[0][1] & _MASK if got else 0


def _epoll(s) -> int:
    ep = select.epoll()
    try:
        ep.register(s.fileno(), select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP)
        got = ep.poll(0)
        return got[0][1] if got else 0
    finally:
        ep.close()


def _until_readable(s) -> None:
    assert select.select([s], [], [], LIMIT)[0]


def _walk(make, lst: socket.socket, closed_port: int) -> list:
    got = []
    addr = lst.getsockname()
    # reset by the peer
    s = make()
    s.settimeout(LIMIT)
    s.connect(addr)
    peer, _ = lst.accept()
    got.append(("open", _poll(s)))
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # an RST
    _until_readable(s)
    got.append(("reset", _poll(s), _epoll(s), s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), _poll(s),
                _epoll(s)))
    s.close()
    # refused
    s = make()
    s.setblocking(False)
    assert s.connect_ex((addr[0], closed_port)) == errno.EINPROGRESS
    assert select.select([], [s], [], LIMIT)[1]
    got.append(("refused", _poll(s), s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), _poll(s)))
    s.close()
    # closed both ways
    s = make()
    s.settimeout(LIMIT)
    s.connect(addr)
    peer, _ = lst.accept()
    peer.settimeout(LIMIT)
    s.shutdown(socket.SHUT_WR)
    assert peer.recv(10) == b""
    peer.close()
    _until_readable(s)
    for _ in range(100):  # the FINs' ACKs: bounded, each poll waits on nothing
        if _poll(s) & select.POLLHUP:
            break
        select.select([], [], [], 0.01)
    got.append(("fins", _poll(s), s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), s.recv(10)))
    s.close()
    return got


def test_a_connection_that_is_over_polls_hup_and_err_as_linux(tap_domain):
    d, ifname, _usnet_ip, host_ip = tap_domain
    client = Client.local(d)
    lst = socket.socket()
    lst.bind((host_ip, 0))
    lst.listen()
    lst.settimeout(LIMIT)
    closed = socket.socket()
    closed.bind((host_ip, 0))  # a port nobody listens on (held, so nobody takes it meanwhile)
    try:
        kernel = _walk(socket.socket, lst, closed.getsockname()[1])
        usnet = _walk(lambda: us.socket(client=client, netif=ifname), lst, closed.getsockname()[1])
    finally:
        lst.close()
        closed.close()
    assert usnet == kernel
    err_hup = select.POLLIN | select.POLLOUT | select.POLLERR | select.POLLHUP
    assert kernel[1][1] == err_hup and kernel[1][3] == errno.ECONNRESET and kernel[1][4] == err_hup & ~select.POLLERR
    assert kernel[2] == ("refused", err_hup, errno.ECONNREFUSED, err_hup & ~select.POLLERR)
