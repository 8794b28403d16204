"""The TAP driver: /dev/net/tun in IFF_TAP|IFF_NO_PI mode, non-blocking, batched.

Offload (`offload=True`, the default): the device is opened with
IFF_VNET_HDR and TUNSETOFFLOAD(CSUM | TSO4 | TSO6), so every frame carries a
12-byte virtio_net_hdr in front and the per-frame cost is paid once per 64 KB
instead of once per 1.5 KB, both ways:

* transmit: a `SegmentedFrame` (a TCP super-segment the flow switch
  validated) goes out with gso_type TCPV4/TCPV6 and its gso_size, and the
  kernel cuts it (or delivers it whole to a local socket, as GRO would);
* receive: the kernel hands us its TCP super-segments (up to 64 KB) and,
  for anything it left to "hardware", a partial checksum (NEEDS_CSUM): the
  driver completes it here, so nothing above ever sees a partial checksum.

What goes out carries a complete checksum (no NEEDS_CSUM): the kernel checks
it on local delivery and sets up its own partial checksum when it segments.

Several queues (`TapDriver.queues`, IFF_MULTI_QUEUE): one fd, so one driver, per
queue, all on the same device. What the kernel sends to the device is spread over
the queues by a steering program (`steer_by_port`, TUNSETSTEERINGEBPF) that
picks queue = the TCP/UDP destination port (usnet's local port) modulo the number
of queues, and queue 0 for everything else (ARP, ICMP, fragments), so that each
of usnetd's workers (usnet.domain.workers) gets exactly the frames of its flows. The program
is usnet.drivers.steer's, the one the packet driver's fanout group uses too.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Sequence

import numpy as np

from usnet.drivers.base import (
    Capabilities,
    Coalesced,
    DriverStats,
    Frame,
    GatherFrame,
    Received,
    SegmentedFrame,
    random_mac,
)
from usnet.drivers.block import FrameBlock
from usnet.proto.wire.checksum import acc_at, finish

__all__ = ["TapDriver"]

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETSTEERINGEBPF = 0x800454E0  # _IOR('T', 224, int)
IFF_MULTI_QUEUE = 0x0100
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04

# struct virtio_net_hdr with num_buffers (virtio 1.0, little-endian on x86-64):
# flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers
VNET_HDR = struct.Struct("<BBHHHHH")
VNET_HDR_LEN = VNET_HDR.size  # 12
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_TCPV6 = 0, 1, 4
_ZERO_VNET = bytes(VNET_HDR_LEN)
GSO_MAX = 65535  # the largest IP packet (IPv4 total length) the device takes to segment


class TapDriver:

    def __init__(self, ifname: str = "usnet0", mtu: int = 1500, mac: bytes | None = None,
                 offload: bool = True, *, multi_queue: bool = False) -> None:
        """`offload` False: plain frames, no virtio_net_hdr, the kernel segments nothing for us.
        `multi_queue`: attach one more queue of the device (see `queues`)."""
        if len(ifname.encode()) >= 16:
            raise ValueError("interface names are at most 15 bytes")
        self.name = ifname
        self.mtu = mtu
        self.mac = mac or random_mac()  # our side's MAC; the host's side has its own
        self.vnet_hdr = offload
        # GatherFrames go out with one writev, the payload from the sender's buffer; with
        # offload the kernel segments TCP super-segments (and hands us coalesced ones)
        # FrameBlocks go out row by row, straight from the flow switch's array (one writev each)
        self.caps = Capabilities(gso_max=GSO_MAX if offload else 0, takes_gather=True, takes_blocks=True,
                                 answers_in_send=True, never_due=True)
        self.stats = DriverStats()
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            flags = (IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if self.vnet_hdr else 0)
                     | (IFF_MULTI_QUEUE if multi_queue else 0))
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), flags))
            if offload:
                fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        except OSError:
            os.close(self.fd)
            raise
        self._bufsize = VNET_HDR_LEN + 14 + GSO_MAX + 1  # +1: a longer frame shows as too long

    @classmethod
    def queues(cls, ifname: str, n: int, mtu: int = 1500, mac: bytes | None = None,
               offload: bool = True) -> list[TapDriver]:
        """`n` queues of one multi-queue TAP, queue i the i-th driver, all with one MAC; with
        n > 1 what the kernel sends is steered to them by local port (`steer_by_port`)."""
        if n < 1:
            raise ValueError("a TAP has at least one queue")
        if n == 1:
            return [cls(ifname, mtu, mac, offload)]
        out: list[TapDriver] = []
        try:
            for _ in range(n):
                out.append(cls(ifname, mtu, mac or (out[0].mac if out else None), offload, multi_queue=True))
            steer_by_port(out[0].fd, n)
        except BaseException:
            for d in out:
                d.close()
            raise
        return out

    def fileno(self) -> int:
        return self.fd

    def timeout(self) -> float | None:
        return None

    def recv_batch(self, max_n: int = 64) -> list[Received]:
        out: list[Received] = []
        read = os.read
        fd = self.fd
        vnet = self.vnet_hdr
        nbytes = got = 0
        while got < max_n:  # counted, not len(out) each read (issue 18: a connect's few frames)
            try:
                raw = read(fd, self._bufsize)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EIO:  # the interface is down
                    break
                raise
            f = self._unwrap(raw) if vnet else raw
            if f is None:
                continue
            nbytes += len(f)
            out.append(f)
            got += 1
        self.stats.rx_frames += got
        self.stats.rx_bytes += nbytes
        return out

    def _unwrap(self, f: bytes) -> bytes | bytearray | None:
        """The frame behind a virtio_net_hdr, its partial checksum completed (None: malformed)."""
        if len(f) < VNET_HDR_LEN:
            self.stats.rx_errors += 1
            return None
        flags, gso_type, _hl, _gs, start, offset, _nb = VNET_HDR.unpack_from(f)
        make: type = bytearray
        if gso_type != GSO_NONE:  # a super-segment: marked, so the switch takes it past the MTU
            self.stats.rx_gso_frames += 1
            make = Coalesced
        elif not flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            return f[VNET_HDR_LEN:]
        frame = make(memoryview(f)[VNET_HDR_LEN:])
        if not flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            return frame
        at = start + offset
        end = len(frame)
        if at + 2 > end:
            self.stats.rx_errors += 1
            return None
        # The field holds the pseudo-header sum; the sum over [start:] with it in place,
        # inverted, is the checksum (as a NIC computes it). Summed in place (`acc_at`): the
        # kernel's every SYN-ACK, ACK and FIN comes this way (issue 18, usnetd per connect).
        frame[at : at + 2] = finish(acc_at(frame, start, end)).to_bytes(2, "big")
        self.stats.rx_csum_completed += 1
        return frame

    def send_batch(self, frames: Sequence[Frame]) -> int:
        sent = 0
        fd = self.fd
        vnet = self.vnet_hdr
        nbytes = 0
        for f in frames:
            if type(f) is FrameBlock:
                took, b = self._send_block(f)
                sent += took
                nbytes += b
                if took < len(f):
                    break
                continue
            try:
                if type(f) is GatherFrame:
                    os.writev(fd, (_ZERO_VNET, f.head, f.body) if vnet else (f.head, f.body))
                elif not vnet:
                    os.write(fd, f)
                elif isinstance(f, SegmentedFrame) and f.gso_size:  # tracked or not
                    os.writev(fd, (self._gso_header(f), f))
                    self.stats.tx_gso_frames += 1
                else:
                    os.writev(fd, (_ZERO_VNET, f))
            except BlockingIOError:
                break
            except OSError as e:
                # EIO: the host side is down; EINVAL: a malformed frame. Count, go on.
                if e.errno not in (errno.EIO, errno.EINVAL):
                    raise
                self.stats.tx_errors += 1
            else:
                self.stats.tx_frames += 1
                nbytes += len(f)
            sent += 1
        self.stats.tx_bytes += nbytes
        return sent

    def _send_block(self, blk: FrameBlock) -> tuple[int, int]:
        """Write a block's frames, each from its row (no copy); (frames taken, their bytes).

        As `send_batch` for frames one by one: a full device stops it (the rest stay the
        caller's), a frame the device refuses is counted and passes as taken."""
        data = blk.data
        if not data.flags.c_contiguous:
            data = np.ascontiguousarray(data)
        w = data.shape[1]
        flat = data.reshape(-1).data  # a memoryview of the rows, end to end
        lens = blk.lens.tolist()
        cut = blk.gso.tolist() if blk.gso is not None and self.vnet_hdr else None
        fd, vnet, stats = self.fd, self.vnet_hdr, self.stats
        writev = os.writev
        taken = nbytes = 0
        for i, n in enumerate(lens):
            row = flat[i * w : i * w + n]
            try:
                if not vnet:
                    os.write(fd, row)
                elif cut is not None and cut[i]:
                    writev(fd, (self._gso_header(row, cut[i]), row))
                    stats.tx_gso_frames += 1
                else:
                    writev(fd, (_ZERO_VNET, row))
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno not in (errno.EIO, errno.EINVAL):
                    raise
                stats.tx_errors += 1
            else:
                stats.tx_frames += 1
                nbytes += n
            taken += 1
        return taken, nbytes

    @staticmethod
    def _gso_header(f: SegmentedFrame | memoryview, gso_size: int | None = None) -> bytes:
        """virtio_net_hdr for a TCP super-segment: cut at gso_size (the frame's own if not given),
        checksum already whole."""
        if f[12] == 0x86 and f[13] == 0xDD:
            l4, gso_type = 14 + 40, GSO_TCPV6
        else:
            l4, gso_type = 14 + ((f[14] & 0xF) << 2), GSO_TCPV4
        hdr_len = l4 + ((f[l4 + 12] >> 4) << 2)
        if gso_size is None:
            assert isinstance(f, SegmentedFrame)
            gso_size = f.gso_size
        return VNET_HDR.pack(0, gso_type, hdr_len, gso_size, 0, 0, 0)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def steer_by_port(fd: int, n: int) -> None:
    """Make the queue choice of the TAP whose queue `fd` is: local port mod `n`
    (usnet.drivers.steer.steering_program; the device keeps the program, our fd of it is closed)."""
    from usnet.drivers.steer import load_steering

    prog = load_steering(n)
    try:
        fcntl.ioctl(fd, TUNSETSTEERINGEBPF, struct.pack("i", prog))
    finally:
        os.close(prog)
