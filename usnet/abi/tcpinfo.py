"""TCPINFO: the statistics record each client's TCP stack publishes per connection (docs/abi.md §8).

`usnet ss` shows every TCP connection of every client with its RTT, window and
counters, as Linux's `ss -tiepn` does; usnet's TCP runs in the client, so the
figures are the client's. They are read from shared memory, never asked for:
a client that is busy, stuck or hostile cannot hold up `usnet ss` or the
domain, and asking would cost a control round trip per connection.

Where: a TCPINFO region in a TCP flow channel's *shared* (client-writable)
memfd, at the SCHEMA region's `tcpinfo_offset` (0: the channel has none). It
is a header (`TCPINFO_HEADER`, 64 bytes, written by the nexus when the channel
opens: magic "UTCP", version 1, record_size, slots) then `slots` records of
`TCPINFO_RECORD` (192 bytes). A listener's channel carries its accepted
connections and its listening row, a connector's its outgoing connections, a
connected flow's its one connection. A connection takes a free slot (state 0)
when it is first published and gives it back (state 0) when TCP forgets it;
connections beyond `slots` are counted in the header's `unlisted`.

The sequence lock is the interface advisory's (usnet.abi.advisory): the
writer makes `seq` odd, stores the record, makes it even again; a reader keeps
a copy only if `seq` was even and unchanged around it. The writer is the
client's stack thread (or its event loop), one per channel, under the engine's
lock.

Trust: this memory is the client's. The nexus reads it only to display it
(`read_records`): a bounded number of tries per record, then the record is
skipped as torn; an impossible state or family is skipped as bad; every
number is whatever fixed-width integer the bytes say. A hostile client can
only lie about its own connections, and the domain checks each row's ports
and remote end against what the switch registered for that flow
(usnet.domain.tcpinfo) before it shows it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from usnet.abi.layout import RESERVED, Fields

__all__ = [
    "FLAG_LISTENER", "MAGIC", "RECORD", "TCPINFO_HEADER", "TCPINFO_RECORD", "TRIES", "VERSION", "Slot",
    "TcpInfoWriter", "read_records", "region_bytes", "write_header",
]

MAGIC = 0x50435455  # b"UTCP" as a little-endian u32
VERSION = 1
TCPINFO_HEADER = Fields(
    "TCPINFO header",
    ("magic", "u32"), ("version", "u16"), ("record_size", "u16"), ("slots", "u32"),
    ("unlisted", "u32"),  # client-written: connections it had no free slot for at its last publication
    (RESERVED, 48),
)
TCPINFO_RECORD = Fields(
    "TCPINFO record",
    ("seq", "u32"),  # the sequence lock: odd while the client writes the record
    ("state", "u8"),  # 0: free slot, else usnet.proto.tcp.TcpState (LISTEN 1 .. TIME_WAIT 10)
    ("family", "u8"),  # 4 or 6
    ("flags", "u16"),  # bit 0 FLAG_LISTENER: a listening socket's row (recv_q: accept queue, send_q: backlog)
    ("local_port", "u16"), ("remote_port", "u16"),
    ("mss", "u32"),  # payload bytes of a full-sized segment
    ("remote_addr", "u8", 16),  # 4 bytes then zeros for IPv4
    ("rtt_us", "u32"), ("rttvar_us", "u32"), ("rto_us", "u32"),
    ("cwnd", "u32"), ("ssthresh", "u32"),  # bytes (0xFFFFFFFF: ssthresh not yet set)
    ("recv_q", "u32"), ("send_q", "u32"),  # received and unread; sent or queued and not yet acknowledged
    ("in_flight", "u32"), ("snd_wnd", "u32"), ("rcv_wnd", "u32"),
    ("retransmits", "u64"), ("retransmitted_bytes", "u64"), ("rto_timeouts", "u64"),
    ("bytes_acked", "u64"), ("bytes_received", "u64"), ("bytes_sent", "u64"),
    ("segs_out", "u64"), ("segs_in", "u64"),
    ("pacing_rate", "u64"), ("delivery_rate", "u64"),  # bytes/s
    ("updated_ns", "u64"),  # CLOCK_MONOTONIC when the client wrote the record
    (RESERVED, 32),
)
HEADER = TCPINFO_HEADER.struct()
RECORD = TCPINFO_RECORD.struct("state")  # the fields after seq, in order
_SEQ_SIZE = TCPINFO_RECORD.offset("state")
_SEQ = struct.Struct("<I")
RECORD_SIZE = TCPINFO_RECORD.size
FLAG_LISTENER = 1
#: Attempts a reader makes at one record before it skips it as torn (the writer is the client:
#: the domain never waits on it).
TRIES = 4
_FIELDS = TCPINFO_RECORD.names()[1:]


def region_bytes(slots: int) -> int:
    """Bytes of a TCPINFO region of `slots` records."""
    return TCPINFO_HEADER.size + slots * RECORD_SIZE


def write_header(mem: memoryview, slots: int) -> None:
    """The nexus's: the header, when the channel opens."""
    HEADER.pack_into(mem, 0, MAGIC, VERSION, RECORD_SIZE, slots, 0)


class TcpInfoWriter:
    """The client's side: publishes records into slots, under the sequence lock."""

    def __init__(self, mem: memoryview) -> None:
        magic, version, rsize, slots, _ = HEADER.unpack_from(mem, 0)
        if magic != MAGIC or version != VERSION or rsize != RECORD_SIZE:
            raise ValueError("not a TCPINFO region this library can write")
        self.mem = mem
        self.slots = min(slots, (len(mem) - TCPINFO_HEADER.size) // RECORD_SIZE)
        self._seq = [0] * self.slots  # what we last left in each slot's seq (we are its only writer)

    def publish(self, slot: int, values: tuple) -> None:
        """Store one record in `slot`: the TCPINFO_RECORD fields after seq, in order, with
        remote_addr as its 16 bytes (`*addr.ljust(16, b"\\0")`)."""
        off = TCPINFO_HEADER.size + slot * RECORD_SIZE
        s = self._seq[slot]
        _SEQ.pack_into(self.mem, off, (s + 1) & 0xFFFFFFFF)  # odd: readers keep off
        RECORD.pack_into(self.mem, off + _SEQ_SIZE, *values)
        s = self._seq[slot] = (s + 2) & 0xFFFFFFFF
        _SEQ.pack_into(self.mem, off, s)

    def clear(self, slot: int) -> None:
        """Give `slot` back: state 0."""
        self.publish(slot, _EMPTY)

    def set_unlisted(self, n: int) -> None:
        struct.pack_into("<I", self.mem, TCPINFO_HEADER.offset("unlisted"), min(n, 0xFFFFFFFF))


#: A free slot's record: every field 0.
_EMPTY = tuple(0 for f in TCPINFO_RECORD.fields[1:] if f.type != RESERVED for _ in range(f.count))


@dataclass(frozen=True, slots=True)
class Slot:
    """One record as the reader found it (numbers as the client wrote them)."""

    slot: int
    fields: dict


def read_records(mem: memoryview | bytes, slots: int) -> tuple[list[Slot], int, int]:
    """Every used slot of a TCPINFO region of `slots` records, as (slots, torn, bad).

    `slots` is the nexus's own count, never the header's. A record whose seq
    was odd or changed at each of TRIES attempts is skipped and counted torn; one
    with an impossible state (above TIME_WAIT) or family is skipped and counted bad.
    """
    out: list[Slot] = []
    torn = bad = 0
    n_addr = TCPINFO_RECORD["remote_addr"].count
    for i in range(slots):
        off = TCPINFO_HEADER.size + i * RECORD_SIZE
        for _ in range(TRIES):
            (s1,) = _SEQ.unpack_from(mem, off)
            if s1 & 1:
                continue
            body = bytes(mem[off + _SEQ_SIZE : off + RECORD_SIZE])
            (s2,) = _SEQ.unpack_from(mem, off)
            if s1 == s2:
                break
        else:
            torn += 1
            continue
        values = RECORD.unpack_from(body, 0)
        state = values[0]
        if state == 0:
            continue
        d: dict = {}
        k = 0
        for name in _FIELDS:
            if name == "remote_addr":
                d[name] = bytes(values[k : k + n_addr])
                k += n_addr
            else:
                d[name] = values[k]
                k += 1
        if not 1 <= state <= 10 or d["family"] not in (4, 6):
            bad += 1
            continue
        out.append(Slot(i, d))
    return out, torn, bad
