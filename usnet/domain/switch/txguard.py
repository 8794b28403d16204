"""The transmit checks beyond addresses and ports: IPv4 options and fragments (sans-I/O).

Both transmit paths of the flow switch use these: the general path on its
copy of each packet (usnet.domain.switch.tx `_tx_one`, `_tx_one6`), the low-latency path
by handing such packets to it (usnet.domain.switch.llcheck). Every rule here is
about a field a client writes that could make a packet claim, or reach,
what its flow does not own:

* IPv4 options are parsed. Loose and strict source routes (LSRR, SSRR)
  send the packet on past the destination the switch checked: refused
  (SOURCE_ROUTE). Record route and timestamp are harmless and Linux lets
  any user set them; every other option is refused (IP_OPTION), as Linux
  wants CAP_NET_RAW for options it does not know. A malformed option list
  is MALFORMED.
* Fragments. A later fragment (offset > 0) carries no ports: the bytes
  where ports would be are payload. So a later fragment is sent only if
  this flow sent the first fragment of the same datagram (same destination
  and identification; source and protocol are the flow's) recently: each
  flow keeps a small table of the datagrams it began in fragments
  (`SentFragments`: at most FRAG_IDS entries, each kept FRAG_TTL seconds,
  Linux's reassembly timeout, so a receiver has forgotten the datagram by
  the time we do). A first fragment (offset 0, more to come) must carry
  the flow's whole transport header, and is then checked as any packet.
  An atomic fragment (offset 0, no more; or IPv4's DF) is a whole packet.
"""

from __future__ import annotations

from usnet.abi.events import TxDropReason

__all__ = ["FRAG_IDS", "FRAG_TTL", "SentFragments", "ipv4_options", "whole_l4_header"]

FRAG_IDS = 64  # datagrams per flow whose later fragments may follow; the oldest is forgotten first
FRAG_TTL = 30.0  # seconds: Linux's ipfrag_time and ip6frag_time
TCP, UDP = 6, 17
_EOL, _NOP, _RR, _TS, _LSRR, _SSRR = 0, 1, 7, 0x44, 0x83, 0x89


def ipv4_options(p, ihl: int) -> int:
    """0 if the options of the IPv4 header `p[:ihl]` may be sent, else the TxDropReason."""
    i = 20
    while i < ihl:
        t = p[i]
        if t == _EOL:
            break
        if t == _NOP:
            i += 1
            continue
        if i + 1 >= ihl or p[i + 1] < 2 or i + p[i + 1] > ihl:
            return TxDropReason.MALFORMED
        if t == _LSRR or t == _SSRR:  # noqa: SIM109 (per packet: no tuple built)
            return TxDropReason.SOURCE_ROUTE
        if t != _RR and t != _TS:
            return TxDropReason.IP_OPTION
        i += p[i + 1]
    return 0


def whole_l4_header(p, l4: int, proto: int) -> bool:
    """Whether the packet `p` holds its whole UDP or TCP header from offset `l4`."""
    n = len(p)
    if proto == UDP:
        return n >= l4 + 8
    return n >= l4 + 20 and n >= l4 + ((p[l4 + 12] >> 4) << 2)


class SentFragments:
    """The datagrams a flow began in fragments lately: (destination, identification) -> expiry.

    Bounded (FRAG_IDS) and aging (FRAG_TTL): a dict in insertion order, so
    the oldest entry is both the first to expire and the first evicted.
    """

    __slots__ = ("_until",)

    def __init__(self) -> None:
        self._until: dict[tuple[bytes, int], float] = {}

    def __len__(self) -> int:
        return len(self._until)

    def began(self, dst: bytes, ident: int, now: float) -> None:
        """The flow sent the first fragment of datagram `ident` to `dst`."""
        t = self._until
        t.pop((dst, ident), None)
        t[(dst, ident)] = now + FRAG_TTL
        while t:
            oldest = next(iter(t))
            if len(t) <= FRAG_IDS and t[oldest] >= now:
                break
            del t[oldest]

    def knows(self, dst: bytes, ident: int, now: float) -> bool:
        """Whether a later fragment of datagram `ident` to `dst` belongs to one the flow began."""
        until = self._until.get((dst, ident))
        if until is None:
            return False
        if until < now:
            del self._until[(dst, ident)]
            return False
        return True
