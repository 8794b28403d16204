"""The TAP driver: /dev/net/tun in IFF_TAP|IFF_NO_PI mode, non-blocking, batched.

With `vnet_hdr=True` the device is opened with IFF_VNET_HDR and every frame
carries a 12-byte virtio_net_hdr in front (flags, gso_type, hdr_len, gso_size,
csum_start, csum_offset, num_buffers). We send it zeroed (no offload asked)
and, as long as no offload is enabled with TUNSETOFFLOAD, the kernel gives
us complete frames with full checksums; the header is the door to checksum
and segmentation offload later.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import Sequence

from usnet.drivers.base import DriverStats, Frame, random_mac

TUNSETIFF = 0x400454CA
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
VNET_HDR_LEN = 12
_ZERO_VNET = bytes(VNET_HDR_LEN)


class TapDriver:
    def __init__(self, ifname: str = "usnet0", mtu: int = 1500, vnet_hdr: bool = False,
                 mac: bytes | None = None) -> None:
        if len(ifname.encode()) >= 16:
            raise ValueError("interface names are at most 15 bytes")
        self.name = ifname
        self.mtu = mtu
        self.mac = mac or random_mac()  # our side's MAC; the host's side has its own
        self.vnet_hdr = vnet_hdr
        self.stats = DriverStats()
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), flags))
            if vnet_hdr:
                fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
        except OSError:
            os.close(self.fd)
            raise
        self._bufsize = 65536 + VNET_HDR_LEN

    def fileno(self) -> int:
        return self.fd

    def timeout(self) -> float | None:
        return None

    def recv_batch(self, max_n: int = 64) -> list[bytes]:
        out: list[bytes] = []
        read = os.read
        fd = self.fd
        skip = VNET_HDR_LEN if self.vnet_hdr else 0
        while len(out) < max_n:
            try:
                f = read(fd, self._bufsize)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EIO:  # the interface is down
                    break
                raise
            if skip:
                f = f[skip:]
            out.append(f)
        self.stats.rx_frames += len(out)
        self.stats.rx_bytes += sum(map(len, out))
        return out

    def send_batch(self, frames: Sequence[Frame]) -> int:
        sent = 0
        fd = self.fd
        for f in frames:
            try:
                if self.vnet_hdr:
                    os.writev(fd, (_ZERO_VNET, f))
                else:
                    os.write(fd, f)
            except BlockingIOError:
                break
            except OSError as e:
                # EIO: the host side is down; EINVAL: a malformed frame. Count, go on.
                if e.errno not in (errno.EIO, errno.EINVAL):
                    raise
                self.stats.tx_errors += 1
            else:
                self.stats.tx_frames += 1
                self.stats.tx_bytes += len(f)
            sent += 1
        return sent

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
