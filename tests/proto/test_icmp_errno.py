"""The errno of every ICMP error, and whether a UDP socket hears of it, are Linux's.

The tables are transcribed from the kernel: icmp_err_convert (net/ipv4/icmp.c),
icmpv6_err_convert and its tab_unreach (net/ipv6/icmp.c), and the UDP rules of
__udp4_lib_err and __udp6_lib_err (path MTU discovery on: "fragmentation
needed" and "packet too big" are hard errors for UDP).
"""

from __future__ import annotations

import errno as E

import pytest

from usnet.proto.icmp_errors import icmp4_errno, icmp4_fatal, icmp4_tcp_ignores, icmp6_errno, icmp6_fatal

# icmp_err_convert[code] = (errno, fatal)
LINUX_UNREACH4 = [
    (E.ENETUNREACH, 0), (E.EHOSTUNREACH, 0), (E.ENOPROTOOPT, 1), (E.ECONNREFUSED, 1), (E.EMSGSIZE, 0),
    (E.EOPNOTSUPP, 0), (E.ENETUNREACH, 1), (E.EHOSTDOWN, 1), (E.ENONET, 1), (E.ENETUNREACH, 1),
    (E.EHOSTUNREACH, 1), (E.ENETUNREACH, 0), (E.EHOSTUNREACH, 0), (E.EHOSTUNREACH, 1), (E.EHOSTUNREACH, 1),
    (E.EHOSTUNREACH, 1),
]
# tab_unreach[code] = (errno, fatal); past it: EPROTO, fatal
LINUX_UNREACH6 = [(E.ENETUNREACH, 0), (E.EACCES, 1), (E.EHOSTUNREACH, 0), (E.EHOSTUNREACH, 0),
                  (E.ECONNREFUSED, 1), (E.EACCES, 1), (E.EACCES, 1)]


@pytest.mark.parametrize("code", range(len(LINUX_UNREACH4)))
def test_ipv4_unreachable_codes(code):
    err, fatal = LINUX_UNREACH4[code]
    assert icmp4_errno(3, code) == err
    assert icmp4_fatal(3, code) == (bool(fatal) or code == 4)  # frag needed: hard for UDP (pmtudisc)
    assert not icmp4_tcp_ignores(3, code)


def test_ipv4_other_errors():
    assert (icmp4_errno(11, 0), icmp4_fatal(11, 0)) == (E.EHOSTUNREACH, False)  # time exceeded: soft
    assert (icmp4_errno(12, 0), icmp4_fatal(12, 0)) == (E.EPROTO, True)  # parameter problem: hard
    assert icmp4_errno(3, 16) == E.EHOSTUNREACH and not icmp4_fatal(3, 16)  # UDP: soft, unknown code
    assert icmp4_tcp_ignores(3, 16)  # TCP: past NR_ICMP_UNREACH is no error at all


@pytest.mark.parametrize("code", range(9))
def test_ipv6_unreachable_codes(code):
    err, fatal = LINUX_UNREACH6[code] if code < len(LINUX_UNREACH6) else (E.EPROTO, 1)
    assert (icmp6_errno(1, code), icmp6_fatal(1, code)) == (err, bool(fatal))


def test_ipv6_other_errors():
    assert (icmp6_errno(2, 0), icmp6_fatal(2, 0)) == (E.EMSGSIZE, True)  # packet too big: hard for UDP
    assert (icmp6_errno(3, 0), icmp6_fatal(3, 0)) == (E.EHOSTUNREACH, False)  # time exceeded: soft
    assert (icmp6_errno(4, 0), icmp6_fatal(4, 0)) == (E.EPROTO, True)  # parameter problem: hard
