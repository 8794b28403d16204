"""The AF_PACKET driver: TPACKET_V3 mmap rings on a real interface or a veth.

usnet acts as a separate host on the wire: the driver uses its own MAC (a
random locally administered one unless told otherwise), not the interface's,
and puts the interface into promiscuous mode (PACKET_MR_PROMISC membership,
dropped by the kernel when the socket closes) so frames addressed to that MAC
reach us. The host's own stack keeps working on the same interface.

Socket: AF_PACKET/SOCK_RAW, created with protocol 0 so nothing is queued
before the rings exist, then bound to the interface with ETH_P_ALL: only
that interface's frames arrive. PACKET_IGNORE_OUTGOING keeps frames going
out of the interface (ours and the host's) out of the RX ring. The socket is
non-blocking and `fileno()` is the socket itself: it polls readable when the
kernel has handed a block to us.

One mapping holds both rings (RX first, then TX), as the kernel lays them out.

RX ring (TPACKET_V3): `block_count` blocks of `block_size` bytes. The kernel
fills a block with variable-sized packets and hands it over
(block_status & TP_STATUS_USER) when it is full or when `block_timeout_ms`
passes; each packet is a tpacket3_hdr followed by the frame at tp_mac,
chained by tp_next_offset. We copy frames out as bytes and give the block
back (block_status = TP_STATUS_KERNEL) once all its packets are copied, so a
small `max_n` can leave a block half read between calls. The latency of V3
is the block timeout: a lone frame waits up to `block_timeout_ms` (>= 1 ms,
the unit is ms) before poll() reports it. (On 6.18 with HZ=250 a 1 ms timeout
measures ~0.9 ms per request/response, so the retire timer is high
resolution; a jiffy timer would round it up to 4 ms.) The timeout also
retires partly filled blocks, so below the rate that fills a block within
the timeout, the ring holds about `block_count` x `block_timeout_ms` of
traffic, whatever the block size: hence many mid-sized blocks by default
(64 x 128 KiB: 64 ms when idle-ish, 8 MiB when busy; 128 KiB also holds a
64 KiB GRO packet whole).

TX ring (TPACKET_V3): V3 has no block transmit; the TX ring is a ring of
fixed `frame_size` slots, each a tpacket3_hdr (tp_next_offset must be 0)
with the frame at offset TPACKET_ALIGN(sizeof(tpacket3_hdr)) = 48. We fill
slots (tp_len, then tp_status = TP_STATUS_SEND_REQUEST) and kick the kernel
once per batch with send(b"", MSG_DONTWAIT); the kernel turns the slot back
to TP_STATUS_AVAILABLE when the skb is freed. A full ring (no AVAILABLE slot
after a kick) ends the batch: send_batch returns how many it took. If a kick
cannot finish (sndbuf full: EAGAIN/ENOBUFS), the requested slots stay in the
ring, `timeout()` returns 1 ms and the next recv_batch or send_batch (an
empty `send_batch([])` will do) kicks again; the send buffer is forced large
enough for every slot, so only an skb allocation failure gets there.
Set `tx_ring=False` to use a plain send() per frame instead: in Python on a
veth it is as fast (about 1.0-1.3 M 60-byte frames/s either way on this
machine; filling a slot costs ~0.3 us of Python, about what a syscall
saves; the kernel's own work per frame is ~0.45 us). PACKET_LOSS is set: a
frame the kernel refuses is skipped rather than left as TP_STATUS_WRONG_FORMAT,
which would park the kernel's TX head on that slot until we happened to refill
it a whole ring later; we check lengths
ourselves (14..mtu+14, mtu+18 with a VLAN tag) so that should not happen.
POLLOUT says nothing about TX ring room (datagram_poll reports it whenever
the send buffer has space); a caller whose batch was cut short retries later.

Link flaps: when the interface goes down the kernel sets sk_err = ENETDOWN
on the socket, which polls readable until read and which the next send
reports even after the link is back. recv_batch clears it when it finds
nothing to read (no busy loop), a kick that gets a stale ENETDOWN while the
interface is up retries, and frames queued while it is really down are
dropped (tx_dropped) rather than sent late.

Checksums: a packet the host stack sent through a veth (or any device with
TX checksum offload) reaches us as CHECKSUM_PARTIAL, flagged
TP_STATUS_CSUMNOTREADY: its TCP/UDP checksum field only holds the
pseudo-header sum. With `fix_checksums` (the default) the driver completes
it in software for TCP and UDP over IPv4 and IPv6, so the stack above sees
valid frames.

Several queues (`PacketDriver.queues`, for `usnetd --workers N`): n sockets on the interface,
each with its own rings, joined in one PACKET_FANOUT group whose eBPF program
(usnet.drivers.steer, the one a multi-queue TAP uses) sends a received frame to queue (local
port mod n), ARP, ICMP and fragments to queue 0. Each frame reaches one queue (no rollover; a
socket receives nothing outside the group) and nothing going out is received (`FanoutGroup`).

GRO: on a real NIC with GRO enabled (and on a veth whose peer segments with
TSO/GSO, the default) the kernel may hand us aggregated TCP packets larger
than the MTU (up to 64 KiB). Blocks are sized to hold them whole. The
kernel flags them TP_STATUS_GSO_TCP (Linux 6.3+) and they are returned as
`Coalesced`; the flow switch cuts them into packets that fit the flow's
(usnet.proto.wire.gso) and drops any other frame longer than the MTU, so
on an older kernel GRO must be off.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from usnet.drivers.base import Capabilities, Coalesced, DriverStats, Frame, GatherFrame, Received, random_mac
from usnet.proto.wire.checksum import acc, finish

__all__ = ["FanoutGroup", "PacketDriver", "oldest_unreleased"]

# linux/if_ether.h
ETH_P_ALL = 0x0003
# linux/socket.h
SOL_PACKET = 263
# linux/if_packet.h: socket options
PACKET_ADD_MEMBERSHIP = 1
PACKET_DROP_MEMBERSHIP = 2
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_LOSS = 14
PACKET_FANOUT = 18
PACKET_QDISC_BYPASS = 20
PACKET_FANOUT_DATA = 22
PACKET_IGNORE_OUTGOING = 23
PACKET_MR_MULTICAST = 0
PACKET_MR_PROMISC = 1
PACKET_FANOUT_EBPF = 7  # the group's program picks the member (its value modulo the members)
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000  # the kernel picks an id free in this network namespace
PACKET_FANOUT_FLAG_IGNORE_OUTGOING = 0x4000  # the group's PACKET_IGNORE_OUTGOING (Linux 6.x)
PACKET_OUTGOING = 4  # sll_pkttype / skb->pkt_type of a frame going out
TPACKET_V3 = 2  # enum tpacket_versions {TPACKET_V1, TPACKET_V2, TPACKET_V3}
# RX status bits
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1 << 0
TP_STATUS_COPY = 1 << 1
TP_STATUS_LOSING = 1 << 2
TP_STATUS_CSUMNOTREADY = 1 << 3
TP_STATUS_CSUM_VALID = 1 << 7
TP_STATUS_GSO_TCP = 1 << 8  # Linux 6.3+: the frame is a GRO super-segment, longer than the MTU by right
# TX status values
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1 << 0
TP_STATUS_SENDING = 1 << 1
TP_STATUS_WRONG_FORMAT = 1 << 2

TPACKET_ALIGNMENT = 16
SIOCGIFMTU = 0x8921
SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1
_VLAN_TPIDS = (b"\x81\x00", b"\x88\xa8")
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
# asm-generic/socket.h; classic BPF (linux/filter.h): struct sock_filter {u16 code; u8 jt, jf; u32 k}
SO_ATTACH_FILTER = 26
_SKF_AD_PKTTYPE = -0x1000 + 4  # SKF_AD_OFF + SKF_AD_PKTTYPE: load skb->pkt_type
_DROP_ALL = ((0x06, 0, 0, 0),)  # ret #0
_DROP_OUTGOING = ((0x30, 0, 0, _SKF_AD_PKTTYPE & 0xFFFFFFFF),  # ldb pkt_type
                  (0x15, 0, 1, PACKET_OUTGOING),               # jeq #OUTGOING
                  (0x06, 0, 0, 0),                             # ret #0: dropped
                  (0x06, 0, 0, 0xFFFFFFFF))                    # ret #-1: the whole frame


def tpacket_align(x: int) -> int:
    return (x + TPACKET_ALIGNMENT - 1) & ~(TPACKET_ALIGNMENT - 1)


# struct tpacket_req3: 7 x unsigned int
_REQ3 = struct.Struct("=7I")
# struct packet_mreq {int mr_ifindex; u16 mr_type; u16 mr_alen; u8 mr_address[8]}
_MREQ = struct.Struct("=iHH8s")
# struct tpacket_stats_v3 {u32 tp_packets, tp_drops, tp_freeze_q_cnt}
_STATS3 = struct.Struct("=III")
# struct tpacket_block_desc {u32 version; u32 offset_to_priv; struct tpacket_hdr_v1 {
#   u32 block_status @8; u32 num_pkts @12; u32 offset_to_first_pkt @16; u32 blk_len @20;
#   aligned_u64 seq_num @24; tpacket_bd_ts ts_first_pkt @32, ts_last_pkt @40}}  (48 bytes)
_BD = struct.Struct("=8xIII")          # block_status, num_pkts, offset_to_first_pkt
_BD_STATUS_OFF = 8
_BD_SEQ = struct.Struct("=Q")          # seq_num
_BD_SEQ_OFF = 24
_U32 = struct.Struct("=I")
# struct tpacket3_hdr {u32 tp_next_offset @0, tp_sec @4, tp_nsec @8, tp_snaplen @12, tp_len @16,
#   tp_status @20; u16 tp_mac @24, tp_net @26; hv1 {u32 rxhash, u32 vlan_tci, u16 vlan_tpid,
#   u16 pad} @28; u8 tp_padding[8] @40}  (48 bytes)
TPACKET3_HDR_SIZE = 48
_PH = struct.Struct("=I8xIIIH")        # next_offset, snaplen, len, status, mac
# TX slot: tp_snaplen, tp_len at 12 (status written last). tp_next_offset, which must be 0,
# and the timestamps stay as the kernel zeroed them: nothing writes them on TX without
# SO_TIMESTAMPING.
_TXH = struct.Struct("=II")
_TXH_OFF = 12
_TX_STATUS_OFF = 20
TX_DATA_OFF = tpacket_align(TPACKET3_HDR_SIZE)  # TPACKET3_HDRLEN - sizeof(sockaddr_ll)
_SOCKADDR_LL_SIZE = 20
TPACKET3_HDRLEN = tpacket_align(TPACKET3_HDR_SIZE) + _SOCKADDR_LL_SIZE


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def oldest_unreleased(block: Callable[[int], tuple[int, int]], n: int) -> int:
    """The RX block to read next in a ring whose reader's positions are lost (`PacketDriver.resume`):
    the oldest block not given back (block_status & TP_STATUS_USER, perhaps half read), else the
    one the kernel has open. `block(b)` reads block b's (seq_num, block_status) now.

    The kernel opens blocks in ring order, stamping each with the next `seq_num` (prb_open_block),
    and hands one over by setting TP_STATUS_USER (prb_close_block) when it is full or has been
    open `tp_retire_blk_tov` ms; nobody gives a block back meanwhile (the reader is dead). So the
    block with the highest `seq_num` is open or handed over, never given back, and the blocks not
    given back are it and the run of TP_STATUS_USER blocks before it in ring order with
    `seq_num`s one apart; walk back along that run. A single pass picking the lowest `seq_num`
    among TP_STATUS_USER blocks, else the highest, is wrong while the kernel moves on: it can read
    the open block as the kernel's, then the next block freshly opened, and pick that one, leaving
    the older one to be read a whole ring late (and the kernel frozen on it meanwhile). A block
    behind the newest has been closed, so the walk reads nothing the kernel is changing."""
    newest, c = max((block(b)[0], b) for b in range(n))
    for _ in range(n - 1):
        p = c - 1 if c else n - 1
        s, status = block(p)
        if not status & TP_STATUS_USER or s != newest - 1:
            break
        newest, c = s, p
    return c


class PacketDriver:
    caps = Capabilities(takes_gather=True)  # a GatherFrame's pieces are copied into the TX ring slot (or sendmsg)

    """An AF_PACKET interface driver with TPACKET_V3 RX and TX rings (see module doc)."""

    def __init__(
        self,
        ifname: str,
        mtu: int | None = None,
        mac: bytes | None = None,
        block_size: int = 1 << 17,
        block_count: int = 64,
        frame_size: int | None = None,
        tx_frames: int = 512,
        block_timeout_ms: int = 1,
        promisc: bool = True,
        tx_ring: bool = True,
        fix_checksums: bool = True,
        qdisc_bypass: bool = False,
        *,
        fanout: FanoutGroup | None = None,
    ) -> None:
        """`fanout`: join that group as one more queue (see `queues`)."""
        if mac is not None and len(mac) != 6:
            raise ValueError("a MAC is 6 bytes")
        if block_count < 1 or tx_frames < 1:
            raise ValueError("block_count and tx_frames must be positive")
        if block_timeout_ms < 1:
            raise ValueError("block_timeout_ms must be at least 1")
        self.name = ifname
        self.mac = bytes(mac) if mac is not None else random_mac()
        self.stats = DriverStats()
        self.fix_checksums = fix_checksums
        self.kernel_drops = 0      # from PACKET_STATISTICS, see ring_stats()
        self.kernel_freezes = 0
        self.rx_csum_completed = 0  # CHECKSUM_PARTIAL frames finished in software
        self.socket_errors = 0      # pending socket errors cleared (ENETDOWN on a link flap)
        self.last_error = 0
        self.ifindex = socket.if_nametoindex(ifname)  # OSError if there is no such interface
        self._mm: mmap.mmap | None = None
        # protocol 0: no frame is queued before bind() below
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self._tx_sock = self.sock  # plain sends (no TX ring); another after `resume`
        try:
            self._setup(mtu, block_size, block_count, frame_size, tx_frames, block_timeout_ms,
                        promisc, tx_ring, qdisc_bypass, fanout)
        except BaseException:
            self.close()
            raise

    # -- setup -------------------------------------------------------------

    @classmethod
    def queues(cls, ifname: str, n: int, mtu: int | None = None, mac: bytes | None = None,
               **kw: Any) -> list[PacketDriver]:
        """`n` queues on one interface, queue i the i-th driver, all with one MAC: n sockets in
        one PACKET_FANOUT group (`FanoutGroup`) whose program sends each received frame to
        queue (local port mod n), ARP, ICMP and fragments to queue 0, as a multi-queue TAP's
        (usnet.drivers.steer). Each frame reaches exactly one queue: no rollover, and no member
        receives outside the group. Each queue transmits on its own socket and TX ring."""
        if n < 1:
            raise ValueError("an interface has at least one queue")
        if n == 1:
            return [cls(ifname, mtu, mac, **kw)]
        group = FanoutGroup(n)
        out: list[PacketDriver] = []
        try:
            for _ in range(n):
                out.append(cls(ifname, mtu, mac or (out[0].mac if out else None), fanout=group, **kw))
            for d in out:  # all in: from now on the program's choice is (port mod n)
                _attach_filter(d.sock, _DROP_OUTGOING)
        except BaseException:
            for d in out:
                d.close()
            raise
        return out

    def _setup(self, mtu, block_size, block_count, frame_size, tx_frames, tov, promisc, tx_ring,
               qdisc_bypass, fanout) -> None:
        s = self.sock
        ifr = fcntl.ioctl(s, SIOCGIFMTU, struct.pack("16si20x", self.name.encode(), 0))
        dev_mtu = struct.unpack_from("i", ifr, 16)[0]
        if mtu is None:
            mtu = dev_mtu
        elif not 68 <= mtu <= dev_mtu:
            raise ValueError(f"mtu {mtu} must be within 68..{dev_mtu} (the MTU of {self.name})")
        self.mtu = mtu
        page = mmap.PAGESIZE
        max_frame = mtu + 18  # Ethernet header and one VLAN tag
        need = TX_DATA_OFF + max_frame
        if frame_size is None:
            frame_size = max(2048, _pow2_at_least(need))
        if frame_size % TPACKET_ALIGNMENT or frame_size < TPACKET3_HDRLEN:
            raise ValueError(f"frame_size must be a multiple of {TPACKET_ALIGNMENT} and >= {TPACKET3_HDRLEN}")
        # a block holds at least one frame (GRO packets on RX, a slot on TX), in whole pages
        block_size = max(block_size, frame_size, page)
        block_size = (block_size + page - 1) // page * page
        self.block_size = block_size
        self.block_count = block_count
        self.frame_size = frame_size
        if frame_size - TX_DATA_OFF < max_frame:
            raise ValueError(f"frame_size {frame_size} cannot hold a {max_frame}-byte frame")
        self._tx_max = mtu + 14  # the kernel's limit; +4 for a VLAN-tagged frame

        s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        if qdisc_bypass:
            s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        if tx_ring:
            # (before any ring exists, or EBUSY) a frame the kernel refuses is skipped, not left
            # blocking the ring: WRONG_FORMAT would stop the kernel's TX head at that slot
            # until we refilled that very slot, a whole ring later
            s.setsockopt(SOL_PACKET, PACKET_LOSS, 1)
        fpb = block_size // frame_size
        s.setsockopt(SOL_PACKET, PACKET_RX_RING, _REQ3.pack(
            block_size, block_count, frame_size, fpb * block_count, tov, 0, 0))
        rx_len = block_size * block_count
        self._use_tx_ring = tx_ring
        self._tx_n = 0
        tx_len = 0
        if tx_ring:
            # V3 TX: fixed frame slots; retire_blk_tov, sizeof_priv, feature_req_word must be 0
            tx_blocks = -(-tx_frames // fpb)
            s.setsockopt(SOL_PACKET, PACKET_TX_RING, _REQ3.pack(
                block_size, tx_blocks, frame_size, tx_blocks * fpb, 0, 0, 0))
            tx_len = block_size * tx_blocks
            self._tx_n = tx_blocks * fpb
            # enough send buffer for every slot in flight, so a kick is not cut short
            want = self._tx_n * (frame_size + 1024)
            try:
                s.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, want)  # needs CAP_NET_ADMIN
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, want)  # capped by wmem_max
        self._mm = mmap.mmap(s.fileno(), rx_len + tx_len, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self._rx_len = rx_len
        self._rx_blk = 0      # next block we expect the kernel to hand over
        self._rx_left = 0     # packets of the current block not yet copied out
        self._rx_off = 0      # offset (in the mapping) of the next packet
        self._tx_head = 0     # next TX slot we fill
        self._tx_slot = [rx_len + (i // fpb) * block_size + (i % fpb) * frame_size
                         for i in range(self._tx_n)] if tx_ring else []
        self._kick_needed = False
        if fanout is not None:
            # bound, the socket receives on its own until it joins the group: a frame then would
            # reach it and a member too; and the group steers by its size until all are in
            _attach_filter(s, _DROP_ALL)
        s.bind((self.name, ETH_P_ALL))
        if socket.if_nametoindex(self.name) != self.ifindex:
            raise OSError(errno.ENODEV, f"interface {self.name} changed while opening it")
        if fanout is not None:
            fanout.join(s)
        if promisc:
            s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                         _MREQ.pack(self.ifindex, PACKET_MR_PROMISC, 0, b""))
        s.setblocking(False)

    def add_group_mac(self, mac: bytes) -> None:
        """The interface passes frames to multicast `mac` (an IPv4 group's) even when not
        promiscuous: a PACKET_MR_MULTICAST membership (the kernel counts each one and adds the
        address to the device's filter, dev_mc_add); it ends with the socket (`GroupFilter`)."""
        self._group_mac(PACKET_ADD_MEMBERSHIP, mac)

    def drop_group_mac(self, mac: bytes) -> None:
        """`add_group_mac` undone (once)."""
        try:
            self._group_mac(PACKET_DROP_MEMBERSHIP, mac)
        except OSError:
            pass  # the socket is closed (its memberships went with it)

    def _group_mac(self, op: int, mac: bytes) -> None:
        self.sock.setsockopt(SOL_PACKET, op, _MREQ.pack(self.ifindex, PACKET_MR_MULTICAST, 6, mac))

    def resume(self) -> None:
        """Take over this queue from a process that served it and died (`usnetd --workers`: the
        replacement of a dead worker, forked from the spawner's untouched copy of the driver).

        The rings' memory is shared and live, but the positions this copy holds are those of
        the start. RX: the next to read is the oldest block the dead process had not given back
        (perhaps half read: read again whole), else the block the kernel has open: see
        `oldest_unreleased`, which reads the ring while the kernel moves on. TX: the kernel's
        head in the TX ring (one past the last slot it sent) is not readable, and a slot
        written elsewhere would never be sent; so this queue
        transmits from now on on a socket of its own, bound to the interface with protocol 0
        (it receives nothing; the group's members still receive as before), one send() per
        frame (`tx_ring=False`'s path, as fast in Python; see the module's docstring)."""
        mm = self._mm
        if mm is None:
            return
        size = self.block_size

        def block(b: int) -> tuple[int, int]:
            base = b * size
            return _BD_SEQ.unpack_from(mm, base + _BD_SEQ_OFF)[0], _U32.unpack_from(mm, base + _BD_STATUS_OFF)[0]

        self._rx_blk = oldest_unreleased(block, self.block_count)
        self._rx_left = 0
        self._rx_off = 0
        if self._use_tx_ring:
            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                tx.bind((self.name, 0))
                tx.setblocking(False)
            except BaseException:
                tx.close()
                raise
            self._tx_sock = tx
            self._use_tx_ring = False
            self._kick_needed = False

    # -- Driver ------------------------------------------------------------

    @property
    def tx_slots(self) -> int:
        """Slots in the TX ring (0 without one): the most frames in flight at once."""
        return self._tx_n

    def fileno(self) -> int:
        return self.sock.fileno()

    def timeout(self) -> float | None:
        return 0.001 if self._kick_needed else None  # retry the kick from recv_batch

    def recv_batch(self, max_n: int = 64) -> list[Received]:
        if self._kick_needed:
            self._kick()
        mm = self._mm
        if mm is None:
            return []
        out: list[Received] = []
        bd = _BD.unpack_from
        ph = _PH.unpack_from
        left = self._rx_left
        off = self._rx_off
        nbytes = 0
        errors = 0
        fix = self.fix_checksums
        while len(out) < max_n:
            if not left:
                base = self._rx_blk * self.block_size
                status, num, first = bd(mm, base)
                if not status & TP_STATUS_USER:
                    break
                if not num:  # a block retired empty
                    self._release_block(mm)
                    continue
                left = num
                off = base + first
            nxt, snap, ln, st, mac = ph(mm, off)
            start = off + mac
            if snap < ln:
                errors += 1  # truncated: the block was too small for it
            elif fix and st & TP_STATUS_CSUMNOTREADY:
                f = _complete_checksum(bytearray(mm[start:start + snap]))
                out.append(Coalesced(f) if st & TP_STATUS_GSO_TCP else f)
                self.rx_csum_completed += 1
                nbytes += snap
            else:
                out.append(Coalesced(mm[start:start + snap]) if st & TP_STATUS_GSO_TCP else mm[start:start + snap])
                nbytes += snap
            left -= 1
            off += nxt
            if not left:
                self._release_block(mm)
        self._rx_left = left
        self._rx_off = off
        if not out:
            # Woken with nothing to read: maybe a pending socket error (the interface went
            # down: sk_err = ENETDOWN), which polls as readable until someone reads it.
            self._clear_socket_error()
        st_ = self.stats
        st_.rx_frames += len(out)
        st_.rx_bytes += nbytes
        st_.rx_errors += errors
        return out

    def _clear_socket_error(self) -> int:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.socket_errors += 1
            self.last_error = err
        return err

    def _if_up(self) -> bool:
        try:
            ifr = fcntl.ioctl(self.sock, SIOCGIFFLAGS, struct.pack("16sH22x", self.name.encode(), 0))
        except OSError:
            return False
        return bool(struct.unpack_from("H", ifr, 16)[0] & IFF_UP)

    def _release_block(self, mm: mmap.mmap) -> None:
        _U32.pack_into(mm, self._rx_blk * self.block_size + _BD_STATUS_OFF, TP_STATUS_KERNEL)
        self._rx_blk += 1
        if self._rx_blk == self.block_count:
            self._rx_blk = 0

    def send_batch(self, frames: Sequence[Frame]) -> int:
        if self._mm is None:
            return 0
        if not self._use_tx_ring:
            return self._send_plain(frames)
        mm = self._mm
        st = self.stats
        slots = self._tx_slot
        n = self._tx_n
        head = self._tx_head
        txmax = self._tx_max
        status_of = _U32.unpack_from
        put_hdr = _TXH.pack_into
        put_u32 = _U32.pack_into
        sent = 0
        queued = 0
        for f in frames:
            ln = len(f)
            if ln > txmax or ln < 14:
                if type(f) is GatherFrame:
                    f = bytes(f)
                if not (14 <= ln <= txmax + 4 and f[12:14] in _VLAN_TPIDS):
                    st.tx_errors += 1  # malformed: consumed, not sent
                    sent += 1
                    continue
            slot = slots[head]
            if status_of(mm, slot + _TX_STATUS_OFF)[0] != TP_STATUS_AVAILABLE:
                if queued or self._kick_needed:
                    self._kick()  # the kernel may free slots as it sends
                    queued = 0
                if status_of(mm, slot + _TX_STATUS_OFF)[0] != TP_STATUS_AVAILABLE:
                    break  # ring full: the rest stay the caller's
            at = slot + TX_DATA_OFF
            if type(f) is GatherFrame:
                h = len(f.head)
                mm[at:at + h] = f.head
                mm[at + h:at + ln] = f.body
            else:
                mm[at:at + ln] = f
            put_hdr(mm, slot + _TXH_OFF, ln, ln)
            put_u32(mm, slot + _TX_STATUS_OFF, TP_STATUS_SEND_REQUEST)
            head += 1
            if head == n:
                head = 0
            queued += 1
            sent += 1
            st.tx_frames += 1
            st.tx_bytes += ln
        self._tx_head = head
        if queued or self._kick_needed:
            self._kick()
        return sent

    def _kick(self) -> None:
        """Have the kernel send every slot marked SEND_REQUEST, without waiting."""
        for _ in range(4):
            try:
                self.sock.send(b"", socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                self._kick_needed = True
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self._kick_needed = True
                    return
                if e.errno in (errno.ENETDOWN, errno.ENXIO, errno.ENODEV):
                    if e.errno == errno.ENETDOWN and self._if_up():
                        # a stale error: the interface went down and came back up, and the
                        # kernel reported the sk_err it kept from then (now cleared); retry
                        self.socket_errors += 1
                        self.last_error = e.errno
                        continue
                    self._drop_requested()
                    self._kick_needed = False
                    return
                if e.errno in (errno.EINVAL, errno.EMSGSIZE):
                    # not expected with PACKET_LOSS (a bad frame is skipped); count, go on
                    self.stats.tx_errors += 1
                    continue
                raise
            else:
                self._kick_needed = False
                return
        self._kick_needed = True

    def _drop_requested(self) -> None:
        """The interface is down: forget the frames waiting in the ring (they would go out stale).

        The kernel's TX head stopped at the oldest waiting slot; the waiting slots are the
        run just behind our head. Free them and move our head back to the kernel's, so the
        next frame goes where the kernel will look.
        """
        mm = self._mm
        if mm is None:  # no ring, nothing waiting in it
            return
        n = self._tx_n
        i = self._tx_head
        for _ in range(n):
            j = i - 1 if i else n - 1
            slot = self._tx_slot[j]
            if _U32.unpack_from(mm, slot + _TX_STATUS_OFF)[0] != TP_STATUS_SEND_REQUEST:
                break
            _U32.pack_into(mm, slot + _TX_STATUS_OFF, TP_STATUS_AVAILABLE)
            self.stats.tx_dropped += 1
            self.stats.tx_frames -= 1
            self.stats.tx_bytes -= _U32.unpack_from(mm, slot + 16)[0]  # tp_len
            i = j
        self._tx_head = i

    def _send_plain(self, frames: Sequence[Frame]) -> int:
        sent = 0
        sock = self._tx_sock
        send = sock.send
        st = self.stats
        for f in frames:
            try:
                if type(f) is GatherFrame:
                    sock.sendmsg((f.head, f.body))
                else:
                    send(f)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    break
                if e.errno not in (errno.EINVAL, errno.EMSGSIZE, errno.ENETDOWN, errno.ENXIO):
                    raise
                st.tx_errors += 1
            else:
                st.tx_frames += 1
                st.tx_bytes += len(f)
            sent += 1
        return sent

    def ring_stats(self) -> dict[str, int]:
        """Kernel RX counters (PACKET_STATISTICS, which resets them; we accumulate)."""
        if self._mm is not None:
            _packets, drops, freezes = _STATS3.unpack(
                self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS3.size))
            self.kernel_drops += drops
            self.kernel_freezes += freezes
        return {"kernel_drops": self.kernel_drops, "kernel_freezes": self.kernel_freezes}

    def close(self) -> None:
        mm, self._mm = self._mm, None
        if mm is not None:
            mm.close()
        if self._tx_sock is not self.sock and self._tx_sock.fileno() >= 0:
            self._tx_sock.close()
        if self.sock.fileno() >= 0:
            self.sock.close()


class FanoutGroup:
    """A PACKET_FANOUT group of `n` members steered by usnet.drivers.steer's program
    (PACKET_FANOUT_EBPF): the first member to join makes it, with an id the kernel picks free in
    the network namespace (FLAG_UNIQUEID, so two usnetds, or anything else, never share a
    group), and gives it the program; the others join by that id. No FLAG_ROLLOVER: a frame goes
    to the queue the program names, or is dropped there if that queue is full, never to another.

    Why not PACKET_IGNORE_OUTGOING: a group member's own option is not consulted (the group's
    hook receives); the group's FLAG_IGNORE_OUTGOING is (Linux 6.x), and for kernels without it
    each member also drops outgoing frames with a classic filter (`_DROP_OUTGOING`)."""

    FLAGS = PACKET_FANOUT_EBPF | PACKET_FANOUT_FLAG_IGNORE_OUTGOING

    def __init__(self, n: int) -> None:
        self.n = n
        self.id: int | None = None

    def join(self, s: socket.socket) -> None:
        if self.id is not None:
            s.setsockopt(SOL_PACKET, PACKET_FANOUT, self.id | self.FLAGS << 16)
            return
        from usnet.drivers.steer import load_steering

        s.setsockopt(SOL_PACKET, PACKET_FANOUT, (self.FLAGS | PACKET_FANOUT_FLAG_UNIQUEID) << 16)
        self.id = s.getsockopt(SOL_PACKET, PACKET_FANOUT) & 0xFFFF
        prog = load_steering(self.n)
        try:
            s.setsockopt(SOL_PACKET, PACKET_FANOUT_DATA, struct.pack("=I", prog))  # the group keeps it
        finally:
            os.close(prog)


def _attach_filter(s: socket.socket, prog: tuple[tuple[int, int, int, int], ...]) -> None:
    """Give the socket a classic BPF filter (SO_ATTACH_FILTER; it replaces the one before, at once)."""
    code = b"".join(struct.pack("=HBBI", *insn) for insn in prog)
    buf = ctypes.create_string_buffer(code, len(code))
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("@HP", len(prog), ctypes.addressof(buf)))


def _complete_checksum(f: bytearray) -> bytes:
    """Finish the TCP/UDP checksum of a CHECKSUM_PARTIAL frame (field holds the pseudo sum)."""
    n = len(f)
    off = 12
    et = int.from_bytes(f[12:14], "big") if n >= 14 else 0
    while et in (0x8100, 0x88A8) and n >= off + 6:
        off += 4
        et = int.from_bytes(f[off:off + 2], "big")
    off += 2
    if et == 0x0800 and n >= off + 20:
        ihl = (f[off] & 0x0F) * 4
        total = int.from_bytes(f[off + 2:off + 4], "big")
        if f[off + 6] & 0x1F or f[off + 7]:  # a non-first fragment carries no L4 header
            return bytes(f)
        proto = f[off + 9]
        l4 = off + ihl
        end = min(n, off + total)
    elif et == 0x86DD and n >= off + 40:
        proto = f[off + 6]
        l4 = off + 40
        end = min(n, l4 + int.from_bytes(f[off + 4:off + 6], "big"))
    else:
        return bytes(f)
    if proto == 6:
        pos = l4 + 16
    elif proto == 17:
        pos = l4 + 6
    else:
        return bytes(f)
    if pos + 2 > end:
        return bytes(f)
    c = finish(acc(memoryview(f)[l4:end]))
    if proto == 17 and c == 0:
        c = 0xFFFF
    f[pos:pos + 2] = c.to_bytes(2, "big")
    return bytes(f)
