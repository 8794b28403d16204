"""System calls on a usnet socket's descriptor number (os.read, os.write, os.sendfile, os.close),
as multiprocessing.connection and pyftpdlib make them, reach the socket once usnet.patch() is on
(usnet.client.descriptors); and a loopback address in a domain without a loopback netif fails as
Linux fails with its loopback down. Two usnet stacks on a memwire (no root).
"""

from __future__ import annotations

import errno
import os
import select

import pytest

from tests.helpers.util import listen_on_b, memwire_domain
from usnet import socket as us
from usnet.client import patch as patching

B_IP = "10.9.0.2"
BLOB = bytes(range(256)) * 1000


@pytest.fixture
def c():
    with memwire_domain() as (_d, client):
        yield client


@pytest.fixture
def patched_os(c):
    """os.read/write/sendfile/close as usnet.patch() leaves them; put back after."""
    patching.patch(c, "a")
    try:
        yield c
    finally:
        patching.unpatch()
        us.configure(None, None)


def _pair(c, port):
    srv = listen_on_b(c, port)
    srv.settimeout(10)
    cl = us.create_connection((B_IP, port), timeout=10, client=c, netif="a")
    conn, _ = srv.accept()
    conn.settimeout(10)
    return srv, cl, conn


def _recv_exactly(s, n):
    got = b""
    for _ in range(10_000):
        if len(got) >= n:
            break
        b = s.recv(65536)
        if not b:
            break
        got += b
    return got


def test_os_read_write_on_the_descriptor_are_the_sockets(patched_os):
    srv, cl, conn = _pair(patched_os, 8201)
    cl.setblocking(True)  # a blocking socket: its descriptor's calls wait, as Linux's do
    assert os.write(cl.fileno(), b"through the number") == len(b"through the number")
    assert _recv_exactly(conn, 18) == b"through the number"
    conn.sendall(b"back")
    assert os.read(cl.fileno(), 100) == b"back"
    cl.setblocking(False)  # non-blocking (or a timeout): nothing queued is EAGAIN, not a wait
    with pytest.raises(BlockingIOError):
        os.read(cl.fileno(), 100)
    assert select.select([cl], [], [], 0)[0] == []  # and the readiness byte is untouched
    conn.sendall(b"x")
    assert select.select([cl], [], [], 10)[0] == [cl]
    assert os.read(cl.fileno(), 100) == b"x"
    for s in (cl, conn, srv):
        s.close()


def test_os_sendfile_to_the_descriptor_sends_the_file(patched_os, tmp_path):
    """pyftpdlib: os.sendfile(sock.fileno(), file, offset, count) until it returns 0."""
    srv, cl, conn = _pair(patched_os, 8202)
    f = tmp_path / "blob"
    f.write_bytes(BLOB)
    fd = os.open(f, os.O_RDONLY)
    try:
        sent, got = 0, b""
        for _ in range(10_000):  # a descriptor with a timeout is non-blocking: EAGAIN, then wait
            try:
                n = os.sendfile(conn.fileno(), fd, 1000 + sent, 100_000)
            except BlockingIOError:
                r, _, _ = select.select([cl], [conn], [], 10)
                if r:
                    got += cl.recv(65536)
                continue
            if n == 0:
                break
            sent += n
        assert sent == len(BLOB) - 1000
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # an explicit offset leaves the file position
        os.lseek(fd, 5, os.SEEK_SET)
        n = os.sendfile(conn.fileno(), fd, None, 10)  # none: from the position, which advances
        assert n == 10 and os.lseek(fd, 0, os.SEEK_CUR) == 15
    finally:
        os.close(fd)
    assert got + _recv_exactly(cl, sent + 10 - len(got)) == BLOB[1000:] + BLOB[5:15]
    for s in (cl, conn, srv):
        s.close()


def test_a_detached_descriptor_carries_the_connection_until_os_close(patched_os):
    """multiprocessing.connection: detach, then os.read/os.write/os.close on the number."""
    srv, cl, conn = _pair(patched_os, 8203)
    cl.setblocking(True)
    fd = cl.detach()
    assert os.write(fd, b"ping") == 4
    assert _recv_exactly(conn, 4) == b"ping"
    conn.sendall(b"pong")
    assert select.select([fd], [], [], 10)[0] == [fd]
    assert os.read(fd, 10) == b"pong"
    os.close(fd)  # the connection ends: the peer reads EOF
    assert conn.recv(10) == b""
    conn.close()
    srv.close()


def test_kernel_descriptors_are_the_kernels(patched_os, tmp_path):
    r, w = os.pipe()
    assert os.write(w, b"abc") == 3 and os.read(r, 10) == b"abc"
    os.close(w)
    assert os.read(r, 10) == b""
    os.close(r)


def test_loopback_without_a_loopback_netif_fails_as_linux_with_lo_down(c):
    """aiosmtpd probes bind(("::1", 0)) and expects EADDRNOTAVAIL where there is no ::1."""
    s6 = us.socket(us.AF_INET6, us.SOCK_STREAM, client=c, netif="a")
    with pytest.raises(OSError) as e:
        s6.bind(("::1", 0))
    assert e.value.errno == errno.EADDRNOTAVAIL
    s6.close()
    s4 = us.socket(client=c, netif="a")
    with pytest.raises(OSError) as e:
        s4.connect(("127.0.0.1", 9))
    assert e.value.errno == errno.ENETUNREACH
    s4.close()


def test_a_reference_closing_after_the_socket_never_closes_another_file(c):
    """Two objects of one socket (the socket, and a reference the fork agent holds) closed by two
    threads: if the other's last close has closed the readiness pair before this one checks its
    descriptor, the number is not its own to close; a file that got it meanwhile stays open (the
    check read the pair's number after its close as -1, and closed it again: EBADF in gunicorn's
    master, or another file's descriptor)."""
    srv = listen_on_b(c, 8420)
    ref = srv.reference()
    fd = srv.fileno()
    assert ref.fileno() == fd
    srv._ready.close()  # the interleaving: the other object's last close got there first
    other = os.open(os.devnull, os.O_RDONLY)
    try:
        assert other == fd  # the lowest free number: the pair's
        ref.close()
        os.fstat(other)  # still open
    finally:
        os.close(other)
    srv.close()
