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
* TCP sequence state (`TcpSeen`). The switch sees every segment a TCP
  flow sends; per remote end it keeps the sequence number after the
  last validated segment (snd_nxt) and the last acknowledgement, so that
  when the flow's owner dies without closing (SIGKILL, a crash), the
  domain can reset each connection from that state (RFC 9293's reset
  is accepted when its sequence number is the receiver's next one): no
  peer stays ESTABLISHED with a dead process. Kept per batch, from the
  last valid segment of each remote end in it; bounded (TCP_SEEN_MAX).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from usnet.abi.events import TxDropReason
from usnet.proto.wire.rows import be_u16, be_u32

__all__ = ["FRAG_IDS", "FRAG_TTL", "TCP_SEEN_MAX", "SentFragments", "TcpSeen", "ipv4_options",
           "whole_l4_header"]

FRAG_IDS = 64  # datagrams per flow whose later fragments may follow; the oldest is forgotten first
FRAG_TTL = 30.0  # seconds: Linux's ipfrag_time and ip6frag_time
TCP_SEEN_MAX = 4096  # remote ends per flow whose sequence state is kept; the least recently seen goes first
_TCPFIX = struct.Struct("!HHIIBB")  # ports, seq, ack, data offset, flags
_PORTS = struct.Struct("!HH")
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10
_MASK = 0xFFFFFFFF
_HEADS = 60 + 20  # the longest IPv4 header and the fixed TCP header: what `note` reads of a packet
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


class TcpSeen:
    """Per remote end (address, port) of one TCP flow: [snd_nxt, ack or None] after its last
    validated segment, for the resets the domain sends when the flow's owner dies.

    `note_rows` takes a transmit batch (rows of IP packets at offset `base`) and
    the indices of the rows that passed the checks; only the last such row of
    each remote end is parsed. A RST the client sent itself ends that entry;
    a SYN without ACK (a new connection on the 4-tuple) starts it afresh.
    """

    __slots__ = ("by_port", "ends")

    def __init__(self, by_port: bool = False) -> None:
        # by_port: a connector's, whose connections each have their own local port: an end is
        # then (address, port, local port)
        self.by_port = by_port
        # least recently seen first. An OrderedDict, not a dict: evicting a dict's head over and
        # over (`del d[next(iter(d))]`) rescans the deleted entries before it each time, ~4.6 us
        # at 4,096 ends against ~0.6 us at 100, paid by every new connection of a full table
        # (a listener with 9,000 open, issue 18); `popitem(last=False)` is O(1).
        self.ends: OrderedDict[tuple, list] = OrderedDict()

    def __len__(self) -> int:
        return len(self.ends)

    def note_rows(self, rows: np.ndarray, lens: np.ndarray, idx: np.ndarray, base: int, family: int,
                  connected: bool) -> None:
        if not len(idx):
            return
        if connected:  # one remote end: the batch's last valid segment
            last = [int(idx[-1])]
        elif family == 4 and not self.by_port:
            sel = rows[idx]
            ihl = (sel[:, base] & 0xF).astype(np.int64) << 2
            if (ihl == 20).all():  # the usual case: the remote's address and port at fixed columns
                key = (be_u32(sel[:, base + 16 : base + 20]).astype(np.int64) << 16) | be_u16(
                    sel[:, base + 22 : base + 24])
                _, first_rev = np.unique(key[::-1], return_index=True)
                last = sorted(int(idx[len(idx) - 1 - i]) for i in first_rev.tolist())
            else:  # IPv4 with options: `note_last` finds each end's last
                last = idx.tolist()
        else:  # IPv6, or a connector's (each connection its own local port): as above
            last = idx.tolist()
        # the headers only (a super-segment's row is 64 KB): IP's at most 60, TCP's fixed 20
        self.note_last([rows[i, base : base + min(int(lens[i]), _HEADS)].tobytes() for i in last], family,
                       [int(lens[i]) for i in last])

    def note(self, p: bytes, family: int, length: int | None = None) -> None:
        """One validated IP packet `p` of the flow: `note_last` of one."""
        self.note_last((p,), family, None if length is None else (length,))

    def note_last(self, pkts: Sequence[bytes], family: int, lens: Sequence[int] | None = None) -> None:
        """Validated IP packets of the flow, in the order sent: the state after the last of each
        remote end, noted in the order of their last (a listener's batch of answers, each to its
        own end, in one call: issue 16, usnetd's calls per HTTP request). `lens[i]`: the length of
        packet i, when `pkts[i]` holds only its first bytes (at least its IP header and TCP's
        fixed 20, or it is not noted). A packet that is not noted (too short, or IPv6 with an
        extension header, which the stack never sends for TCP) still stands as its end's last:
        the earlier ones of that end in the batch are passed over, as `note_rows` does."""
        by_port = self.by_port
        i = len(pkts)
        # the ends met (none to keep for one packet: a connected flow's batch, noted as its last)
        done: set[tuple] | None = set() if i > 1 else None
        picked: list[tuple[tuple, tuple, int]] = []  # (end, fixed TCP header, length from TCP on)
        while i:  # from the last: each end's last comes first
            i -= 1
            p = pkts[i]
            have = len(p)
            if family == 4:
                l4 = (p[0] & 0xF) << 2
                dst = p[16:20]
            else:
                l4, dst = 40, p[24:40]
            fix: tuple | None = None
            if have >= l4 + 20:
                fix = _TCPFIX.unpack_from(p, l4)
                sport, dport = fix[0], fix[1]
            elif have >= l4 + 4:
                sport, dport = _PORTS.unpack_from(p, l4)
            else:
                continue  # no ports: it names no end
            key = (dst, dport, sport) if by_port else (dst, dport)
            if done is not None:
                if key in done:
                    continue
                done.add(key)
            n = have if lens is None else lens[i]
            if fix is not None and n >= l4 + 20 and (family == 4 or p[6] == 6):
                picked.append((key, fix, n - l4))
        ends = self.ends
        for key, (_sp, _dp, seq, ack, off, flags), n in picked[::-1]:
            if flags & _RST:
                ends.pop(key, None)  # the client reset it itself: nothing left to tell
                continue
            nxt = (seq + n - ((off >> 4) << 2) + (1 if flags & _SYN else 0) + (1 if flags & _FIN else 0)) & _MASK
            if not flags & _ACK:
                ack = None
            old = ends.pop(key, None)
            if old is not None and not (flags & _SYN and not flags & _ACK):
                if ((old[0] - nxt) & _MASK) < 0x80000000:  # a retransmission: what went before reaches further
                    nxt = old[0]
                if ack is None or (old[1] is not None and ((old[1] - ack) & _MASK) < 0x80000000):
                    ack = old[1]
            ends[key] = [nxt, ack]
            if len(ends) > TCP_SEEN_MAX:
                ends.popitem(last=False)
