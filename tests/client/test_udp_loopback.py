"""A wildcard UDP socket hears the domain's loopback netif, IPv4 and IPv6 (usnet.client.dgram).

The kernel comparison is tests/interop/test_socket_semantics.py (IPv4, in a namespace); this runs
the same exchange on an embedded domain whose netifs have IPv6 addresses too, so ::1 is covered.
"""

from __future__ import annotations

import errno
import socket

import pytest

import usnet.socket as us
from tests.helpers.util import memwire_domain


@pytest.fixture
def dom():
    with memwire_domain("fd00:9::1/64", "fd00:9::2/64") as (d, client):
        d.add_loopback()
        us.configure(client, "a")
        try:
            yield d
        finally:
            us.configure(None, None)


@pytest.mark.parametrize("family,any_,lo", [(socket.AF_INET, "0.0.0.0", "127.0.0.1"),
                                            (socket.AF_INET6, "::", "::1")])
def test_a_wildcard_socket_answers_on_loopback(dom, family, any_, lo):
    srv = us.socket(family, socket.SOCK_DGRAM)
    cli = us.socket(family, socket.SOCK_DGRAM)
    try:
        srv.bind((any_, 0))
        port = srv.getsockname()[1]
        for s in (srv, cli):
            s.settimeout(10)
        cli.sendto(b"ping", (lo, port))  # unbound: bound to the wildcard by this first send
        data, peer = srv.recvfrom(100)
        assert (data, peer[0], peer[1]) == (b"ping", lo, cli.getsockname()[1])
        srv.sendto(b"pong", peer[:2])
        got, frm = cli.recvfrom(100)
        assert (got, frm[0], frm[1]) == (b"pong", lo, port)
    finally:
        srv.close()
        cli.close()
    again = us.socket(family, socket.SOCK_DGRAM)  # closed, both halves: the port is free at once
    again.bind((lo, port))
    again.close()


def test_ipv6_wildcard_on_a_netif_without_ipv6_is_on_the_loopback_netif():
    """:: where the netif has no IPv6: on the loopback netif (::1), as Linux's :: hears lo's (the
    kernel comparison: tests/interop/test_socket_semantics.py); with no loopback netif either,
    EADDRNOTAVAIL stays for an IPV6_V6ONLY socket, as for TCP (a dual-stack one takes IPv4 there:
    tests/client/test_dual_stack.py)."""
    with memwire_domain() as (d, client):
        bare = us.socket(socket.AF_INET6, socket.SOCK_DGRAM, client=client, netif="a")
        bare.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        with pytest.raises(OSError) as info:
            bare.bind(("::", 0))
        assert info.value.errno == errno.EADDRNOTAVAIL
        bare.close()
        d.add_loopback()
        srv = us.socket(socket.AF_INET6, socket.SOCK_DGRAM, client=client, netif="a")
        cli = us.socket(socket.AF_INET6, socket.SOCK_DGRAM, client=client, netif="a")
        try:
            srv.bind(("::", 0))
            assert srv.getsockname()[0] == "::"
            for s in (srv, cli):
                s.settimeout(10)
            cli.sendto(b"ping", ("::1", srv.getsockname()[1]))
            data, peer = srv.recvfrom(100)
            srv.sendto(data.upper(), peer[:2])
            assert (data, peer[0], cli.recv(100)) == (b"ping", "::1", b"PING")
        finally:
            srv.close()
            cli.close()


def test_an_impossible_ring_counter_fails_the_socket_and_is_not_taken_for_an_icmp_error(dom):
    """A RX ring whose producer counter cannot be true (the channel still open: not a defunct's
    zeros, which say why) fails the UDP socket with RingCorrupt. The face's pump kept any other
    OSError of a flow as the connected peer's ICMP error and looked at the ring again: RingCorrupt
    is an OSError but no ChannelError, so it looked for ever, holding the engine's lock."""
    from usnet.abi.ring import PROD, RingCorrupt

    s = us.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("10.9.0.1", 0))  # one flow, no loopback half
        s.settimeout(5)
        ch = s._engine.d.channel
        rx = ch._rx
        rx.q[PROD] = rx.cons + rx.capacity + 1  # (the domain's own write: nothing else runs on it)
        ch.ring_own_bell()  # the stack thread pumps the flow
        with pytest.raises(RingCorrupt):
            s.recvfrom(100)
    finally:
        s.close()
