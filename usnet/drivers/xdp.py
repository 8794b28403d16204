"""The AF_XDP driver: an XDP socket (XSK) on one queue of an interface, its UMEM and four rings.

Beside `packet` (AF_PACKET with TPACKET_V3 rings): both see the frames of a real interface or a
veth and act as a host of their own on it (own MAC, a random locally administered one unless
told otherwise). The difference is where the frame is taken: an XDP program, attached to the
interface here and removed on close, hands every frame of the bound queue to the socket
before the kernel's stack has seen it (no skb on a driver that supports XDP natively), and
the frames never reach the kernel's own stack on that interface. The program is assembled in
Python (usnet.drivers.bpf) and loaded with bpf(2): no compiler, no libbpf.

    r2 = ctx->rx_queue_index
    r1 = &xsks                       -- BPF_MAP_TYPE_XSKMAP, one entry per queue
    r3 = XDP_PASS                    -- what bpf_redirect_map returns when the queue has no socket
    return bpf_redirect_map(r1, r2, r3)

With `ports` (sharing the host's interface and address, as Skywalk's flow switch does: issue 19
item 2) the program redirects only TCP/UDP over IPv4/IPv6 whose (protocol, destination port) is
a key of a BPF hash map the driver keeps (`steer` / `unsteer`, which the flow table calls as it
reserves and frees ports: `caps.steers_flows`); everything else, ARP, ICMP and ND included,
passes to the kernel, which keeps serving its own sockets on the same address. usnet then uses
the interface's own MAC, and sees the ARP traffic through a read-only AF_PACKET socket (the
kernel answers requests for the shared address too; usnet needs the replies to its own
requests, which XDP cannot both pass and redirect). The two sockets are polled through one
epoll descriptor, `fileno()`. IPv6 neighbour discovery is not tapped this way yet, so a shared
netif's usnet side is IPv4 only; ICMP errors for usnet's flows reach the kernel, not usnet.

The memory (linux/if_xdp.h; declared once below as `_SOCKADDR_XDP`, `_UMEM_REG`,
`_MMAP_OFFSETS`, `_DESC`):

- UMEM: one anonymous mapping of `frames` chunks of `frame_size` bytes (a power of two, 2048
  or 4096), registered with XDP_UMEM_REG. Half the chunks go to the fill ring for receiving,
  half to a free list for sending.
- fill ring (XDP_UMEM_FILL_RING, u64 chunk addresses): chunks we lend the kernel to receive
  into; completion ring (XDP_UMEM_COMPLETION_RING, u64): chunks the kernel has sent, back to
  the free list; RX ring (XDP_RX_RING, `struct xdp_desc`): received frames; TX ring
  (XDP_TX_RING, `struct xdp_desc`): frames to send.
- Each ring is mmap'd from the socket at its page offset (XDP_PGOFF_RX_RING and the rest);
  XDP_MMAP_OFFSETS says where in the mapping its producer, consumer, flags and descriptors
  are. numpy views are laid on them; a ring is single-producer/single-consumer, and the
  producer index is written after the descriptors (on x86 stores are not reordered with
  stores, which is what the kernel's smp_load_acquire pairs with; on a weakly ordered machine
  this would want a barrier Python cannot express).

Need-wakeup (XDP_USE_NEED_WAKEUP): the kernel sets XDP_RING_NEED_WAKEUP in a ring's flags when
it must be told about new entries; we kick (send(), recv() with MSG_DONTWAIT) only then. In
copy mode the TX ring's flag is always set: sending happens in the send() call.

Modes: zero-copy (XDP_ZEROCOPY, the NIC DMAs into the UMEM) is tried first when `zerocopy` is
not False; a device without it (veth, and most virtual devices) refuses the bind and the
driver falls back to copy mode (XDP_COPY). The program is attached in native (driver) mode
where the device has it (veth does) and in generic (skb) mode otherwise. `mode` and
`attach_mode` say what was got.

Checksums: an XDP frame carries no checksum status, so a frame that a local stack sent with
its TCP/UDP checksum left to the device (CHECKSUM_PARTIAL: the default through a veth) reaches
us with only the pseudo-header sum in the field, and the flow switch rightly drops it. The
packet driver completes such frames (TP_STATUS_CSUMNOTREADY); here the peer must checksum in
software: `tx_checksum_off(peer)` (ethtool's `tx off`), which `usnet up --driver xdp` does for
the host end.

Only one queue (`queue`, 0 by default: a veth has one) is bound; frames arriving on the
others pass to the kernel. GRO super-frames cannot arrive: an XDP frame is at most one chunk,
and veth turns its peer's GSO off while a program without multi-buffer support is attached.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import select
import socket
import struct
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from usnet.drivers import bpf
from usnet.drivers.base import PLAIN, Capabilities, DriverStats, Frame, GatherFrame, Received, random_mac
from usnet.drivers.bpf import (
    ADD,
    ALU64,
    JEQ,
    JGT,
    JMP,
    JNE,
    MAP_LOOKUP_ELEM,
    REDIRECT_MAP,
    Insn,
    Label,
    call,
    exit_,
    jump,
    ld_map_fd,
    link,
    load_b,
    load_h,
    load_w,
    mov_imm,
    mov_reg,
    store_w,
    store_w_imm,
)

if TYPE_CHECKING:
    from usnet.drivers.xdplane import XdpLane

__all__ = ["XdpDriver", "flow_key", "tx_checksum_off", "xdp_program"]

# linux/socket.h
AF_XDP = 44
SOL_XDP = 283
# linux/if_xdp.h: sxdp_flags
XDP_SHARED_UMEM = 1 << 0
XDP_COPY = 1 << 1
XDP_ZEROCOPY = 1 << 2
XDP_USE_NEED_WAKEUP = 1 << 3
# linux/if_xdp.h: ring flags
XDP_RING_NEED_WAKEUP = 1 << 0
# linux/if_xdp.h: socket options
XDP_MMAP_OFFSETS = 1
XDP_RX_RING = 2
XDP_TX_RING = 3
XDP_UMEM_REG = 4
XDP_UMEM_FILL_RING = 5
XDP_UMEM_COMPLETION_RING = 6
XDP_STATISTICS = 7
XDP_OPTIONS = 8
XDP_OPTIONS_ZEROCOPY = 1 << 0
XDP_MAX_TX_SKB_BUDGET = 9  # Linux 6.17+: descriptors one send() takes in copy mode (32 before, and the default)
# linux/if_xdp.h: page offsets of the rings in the socket's mapping
XDP_PGOFF_RX_RING = 0
XDP_PGOFF_TX_RING = 0x80000000
XDP_UMEM_PGOFF_FILL_RING = 0x100000000
XDP_UMEM_PGOFF_COMPLETION_RING = 0x180000000
# linux/bpf.h
XDP_PACKET_HEADROOM = 256
XDP_DROP, XDP_PASS, XDP_REDIRECT = 1, 2, 4
ADJUST_HEAD = 44  # bpf_xdp_adjust_head (enum bpf_func_id)
XDP_MD_DATA, XDP_MD_DATA_END, XDP_MD_RX_QUEUE_INDEX = 0, 4, 16  # offsets in struct xdp_md
# linux/if_link.h: IFLA_XDP_FLAGS
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4

#: struct sockaddr_xdp {u16 sxdp_family; u16 sxdp_flags; u32 sxdp_ifindex; u32 sxdp_queue_id;
#: u32 sxdp_shared_umem_fd}: what bind() takes (16 bytes).
_SOCKADDR_XDP = struct.Struct("<HHIII")
#: struct xdp_umem_reg {u64 addr; u64 len; u32 chunk_size; u32 headroom; u32 flags;
#: u32 tx_metadata_len}: the UMEM's address, length and chunk size (32 bytes; the last field,
#: Linux 6.8+, is padding before it, and zero either way).
_UMEM_REG = struct.Struct("<QQIIII")
#: struct xdp_mmap_offsets {struct xdp_ring_offset rx, tx, fr, cr}, each
#: struct xdp_ring_offset {u64 producer; u64 consumer; u64 desc; u64 flags} (128 bytes).
_MMAP_OFFSETS = struct.Struct("<16Q")
_RING_OFFSET_FIELDS = ("producer", "consumer", "desc", "flags")
#: struct xdp_desc {u64 addr; u32 len; u32 options}: an RX or TX ring entry (16 bytes).
_DESC = np.dtype([("addr", "<u8"), ("len", "<u4"), ("options", "<u4")])
#: struct xdp_statistics: six u64 counters.
_STATS = struct.Struct("<6Q")
_STATS_FIELDS = ("rx_dropped", "rx_invalid_descs", "tx_invalid_descs", "rx_ring_full",
                 "rx_fill_ring_empty_descs", "tx_ring_empty_descs")

SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927
_SOL_PACKET = 263
_PACKET_IGNORE_OUTGOING = 23
_ETH_P_ARP = 0x0806
_VLAN_TPIDS = (b"\x81\x00", b"\x88\xa8")
_FLOW_KEY = struct.Struct("<BxH")  # the hash map's key: protocol, pad, destination port (network order)


def flow_key(proto: int, port: int) -> bytes:
    """The key of the flow map for IP protocol `proto` (6, 17) and destination `port`: the
    program builds it the same way, from the packet's bytes (port in network order)."""
    return _FLOW_KEY.pack(proto, socket.htons(port))


# -- the XDP program ------------------------------------------------------------------------------------


def xdp_program(xsks_fd: int, flows_fd: int | None = None, ll_fd: int | None = None, lanes_fd: int | None = None,
                mac: bytes = b"") -> list[bpf.Insn]:
    """The driver's program: every frame of a queue with a socket to it (see the module
    docstring), or, with `flows_fd`, only TCP/UDP frames whose (protocol, destination port)
    is in that hash map; the rest XDP_PASS.

    With `ll_fd` and `lanes_fd` (issue 19 item 3, usnet.drivers.xdplane): an IPv4 TCP/UDP frame
    to `mac` whose (protocol, destination port) is in the LL map, arriving on a queue that has a
    lane socket in `lanes_fd`, loses its Ethernet header (bpf_xdp_adjust_head) and goes to that
    lane: its IP header lands at the start of a packet buffer of the LL flow's pool."""
    redirect: list[Insn | Label | tuple[Insn, str]] = [
        Label("redirect"),
        load_w(2, 6, XDP_MD_RX_QUEUE_INDEX), *ld_map_fd(1, xsks_fd), mov_imm(3, XDP_PASS),
        call(REDIRECT_MAP), exit_()]
    if flows_fd is None and ll_fd is None:
        return link([mov_reg(6, 1), *redirect])
    lanes = ll_fd is not None and lanes_fd is not None
    # frames that are not steerable: to the kernel when sharing, else to the general socket
    other = "pass" if flows_fd is not None else "redirect"
    # r6 ctx, r2 data, r3 data_end; r4 the L4 header, r5 the protocol; r7 1 for IPv4
    body: list[Insn | Label | tuple[Insn, str]] = [
        mov_reg(6, 1), mov_imm(7, 0),
        load_w(2, 6, XDP_MD_DATA), load_w(3, 6, XDP_MD_DATA_END),
        # the Ethernet header, then the fixed IP header of its EtherType, must be there
        mov_reg(4, 2), Insn(ALU64 | ADD | bpf.K, 4, 0, 0, 14),
        jump(Insn(JMP | JGT | bpf.X, 4, 3), other),
        load_h(5, 2, 12),  # EtherType, as loaded: bytes in network order read little-endian
        jump(Insn(JMP | JEQ | bpf.K, 5, 0, 0, socket.htons(0x0800)), "ipv4"),
        jump(Insn(JMP | JNE | bpf.K, 5, 0, 0, socket.htons(0x86DD)), other),
        # IPv6: next header at 14+6, no extension headers (anything else passes)
        mov_reg(4, 2), Insn(ALU64 | ADD | bpf.K, 4, 0, 0, 14 + 40),
        jump(Insn(JMP | JGT | bpf.X, 4, 3), other),
        load_b(5, 2, 14 + 6),
        jump(Insn(JMP | bpf.JA), "l4"),
        Label("ipv4"),
        mov_reg(4, 2), Insn(ALU64 | ADD | bpf.K, 4, 0, 0, 14 + 20),
        jump(Insn(JMP | JGT | bpf.X, 4, 3), other),
        load_b(5, 2, 14 + 9),
        # a non-first fragment has no ports: pass (flags/offset & 0x1fff, big-endian at 20)
        load_h(4, 2, 14 + 6), Insn(ALU64 | bpf.AND | bpf.K, 4, 0, 0, socket.htons(0x1FFF)),
        jump(Insn(JMP | JNE | bpf.K, 4, 0, 0, 0), other),
        load_b(4, 2, 14), Insn(ALU64 | bpf.AND | bpf.K, 4, 0, 0, 0x0F),
        Insn(ALU64 | 0x60 | bpf.K, 4, 0, 0, 2),  # BPF_LSH: IHL in bytes
        Insn(ALU64 | ADD | bpf.X, 4, 2), Insn(ALU64 | ADD | bpf.K, 4, 0, 0, 14),
        mov_imm(7, 1),
        Label("l4"),
        # the destination port: 4 bytes of L4 header must be there
        mov_reg(1, 4), Insn(ALU64 | ADD | bpf.K, 1, 0, 0, 4),
        jump(Insn(JMP | JGT | bpf.X, 1, 3), other),
        jump(Insn(JMP | JEQ | bpf.K, 5, 0, 0, 6), "ports"),
        jump(Insn(JMP | JNE | bpf.K, 5, 0, 0, 17), other),
        Label("ports"),
        load_h(4, 4, 2),
        # key on the stack at fp-8: u8 proto, pad, u16 port (network order)
        store_w_imm(10, -8, 0),
        Insn(bpf.STX | bpf.MEM | bpf.B, 10, 5, -8),
        Insn(bpf.STX | bpf.MEM | bpf.H, 10, 4, -6),
    ]
    if lanes:
        assert ll_fd is not None and lanes_fd is not None and len(mac) == 6
        body += [
            # IPv4 to our MAC only (a 32-bit compare: the words as loaded, little-endian)
            jump(Insn(JMP | JNE | bpf.K, 7, 0, 0, 1), "general"),
            load_w(1, 2, 0), jump(Insn(bpf.JMP32 | JNE | bpf.K, 1, 0, 0, int.from_bytes(mac[:4], "little")), "general"),
            load_h(1, 2, 4), jump(Insn(bpf.JMP32 | JNE | bpf.K, 1, 0, 0, int.from_bytes(mac[4:], "little")), "general"),
            *ld_map_fd(1, ll_fd), mov_reg(2, 10), Insn(ALU64 | ADD | bpf.K, 2, 0, 0, -8),
            call(MAP_LOOKUP_ELEM),
            jump(Insn(JMP | JEQ | bpf.K, 0, 0, 0, 0), "general"),
            # a lane socket on this queue? (the key at fp-16)
            load_w(1, 6, XDP_MD_RX_QUEUE_INDEX), store_w(10, -16, 1),
            *ld_map_fd(1, lanes_fd), mov_reg(2, 10), Insn(ALU64 | ADD | bpf.K, 2, 0, 0, -16),
            call(MAP_LOOKUP_ELEM),
            jump(Insn(JMP | JEQ | bpf.K, 0, 0, 0, 0), "general"),
            mov_reg(1, 6), mov_imm(2, 14), call(ADJUST_HEAD),
            jump(Insn(JMP | JNE | bpf.K, 0, 0, 0, 0), "general"),  # refused: the frame is as it was
            # stripped: only the lane may take it now (XDP_DROP if it went away meanwhile)
            load_w(2, 6, XDP_MD_RX_QUEUE_INDEX), *ld_map_fd(1, lanes_fd), mov_imm(3, XDP_DROP),
            call(REDIRECT_MAP), exit_(),
            Label("general"),
        ]
    if flows_fd is not None:
        body += [
            *ld_map_fd(1, flows_fd), mov_reg(2, 10), Insn(ALU64 | ADD | bpf.K, 2, 0, 0, -8),
            call(MAP_LOOKUP_ELEM),
            jump(Insn(JMP | JEQ | bpf.K, 0, 0, 0, 0), "pass"),
        ]
    body += redirect
    if flows_fd is not None:
        body += [Label("pass"), mov_imm(0, XDP_PASS), exit_()]
    return link(body)


# -- host side helpers ------------------------------------------------------------------------------------

_SIOCETHTOOL = 0x8946
_ETHTOOL_STXCSUM = 0x17


def tx_checksum_off(ifname: str) -> None:
    """Transmit checksumming off on `ifname` (in the calling thread's namespace): its stack
    then fills in every TCP/UDP checksum itself, as an XDP receiver needs (module docstring)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        value = ctypes.create_string_buffer(struct.pack("<II", _ETHTOOL_STXCSUM, 0))
        ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0")
        fcntl.ioctl(s.fileno(), _SIOCETHTOOL, ifreq)


def _if_mac(ifname: str) -> bytes:
    """The interface's own MAC (SIOCGIFHWADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s, SIOCGIFHWADDR, struct.pack("16s16x", ifname.encode()))
    return ifr[18:24]


def _set_xdp(ifindex: int, fd: int, flags: int, expected_fd: int | None = None) -> None:
    """IFLA_XDP on the link, through pyroute2's netlink (its `xdp_fd` takes no flags)."""
    from pyroute2 import IPRoute

    attrs: list[tuple[str, int]] = [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]
    if expected_fd is not None:
        attrs.append(("IFLA_XDP_EXPECTED_FD", expected_fd))
    with IPRoute() as ipr:
        ipr.link("set", index=ifindex, xdp={"attrs": attrs})


_libc = ctypes.CDLL(None, use_errno=True)


class _Ring:
    """One mmap'd ring: numpy views of its producer, consumer, flags and descriptors."""

    def __init__(self, sock: socket.socket, pgoff: int, off: dict[str, int], size: int, dtype: Any) -> None:
        dt = np.dtype(dtype)
        self.mm = mmap.mmap(sock.fileno(), off["desc"] + size * dt.itemsize, mmap.MAP_SHARED | 0x8000,  # MAP_POPULATE
                            mmap.PROT_READ | mmap.PROT_WRITE, offset=pgoff)
        self.producer = np.frombuffer(self.mm, np.uint32, 1, off["producer"])
        self.consumer = np.frombuffer(self.mm, np.uint32, 1, off["consumer"])
        self.flags = np.frombuffer(self.mm, np.uint32, 1, off["flags"])
        self.desc = np.frombuffer(self.mm, dt, size, off["desc"])
        self.mask = size - 1
        self.size = size

    def close(self) -> None:
        del self.producer, self.consumer, self.flags, self.desc
        self.mm.close()


def _put(ring: _Ring, pos: int, values: np.ndarray) -> None:
    """`values` into `ring`'s descriptors from position `pos` on, in at most two slices."""
    at = pos & ring.mask
    k = min(len(values), ring.size - at)
    ring.desc[at:at + k] = values[:k]
    if k < len(values):
        ring.desc[:len(values) - k] = values[k:]


class XdpDriver:
    """A netif's device through an AF_XDP socket on one queue of `ifname` (module docstring).

    `frames` chunks of `frame_size` (None: 2048, or 4096 if the MTU needs it), `ring_size`
    entries per ring (a power of two; half the chunks). `zerocopy`: None tries it and falls
    back to copy mode, True insists, False asks for copy mode. `ports`: redirect only the
    steered flows (`steer`), the rest to the kernel.
    """

    def __init__(self, ifname: str, mtu: int | None = None, mac: bytes | None = None, *, queue: int = 0,
                 frames: int = 8192, frame_size: int | None = None, zerocopy: bool | None = None,
                 need_wakeup: bool = True, ports: bool = False, ll_queue: int | None = None) -> None:
        self.name = ifname
        self.caps = Capabilities(steers_flows=True) if ports else PLAIN
        self.mac = mac or (_if_mac(ifname) if ports else random_mac())
        self.stats = DriverStats()
        self.queue = queue
        self.ifindex = socket.if_nametoindex(ifname)
        self.mode = ""          # "zerocopy" or "copy", once bound
        self.attach_mode = ""   # "drv" or "skb", once attached
        self.wakeups = 0        # kicks the kernel asked for (need-wakeup)
        self._prog_fd = self._xsks_fd = self._flows_fd = self._ll_fd = self._lanes_fd = -1
        self.ll_queue = ll_queue  # the queue of the low-latency lane (usnet.drivers.xdplane), if any
        self.lanes: dict[tuple[int, int], XdpLane] = {}  # (proto, port) -> its lane
        self._attached_flags = 0
        self._rings: list[_Ring] = []
        self._umem: mmap.mmap | None = None
        self._umem_anchor: ctypes.c_char | None = None
        self._arp: socket.socket | None = None
        self._ep: select.epoll | None = None
        self.sock = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
        try:
            self._setup(mtu, frames, frame_size, zerocopy, need_wakeup, ports)
        except BaseException:
            self.close()
            raise

    # -- setup -------------------------------------------------------------------------------------

    def _setup(self, mtu: int | None, frames: int, frame_size: int | None, zerocopy: bool | None,
               need_wakeup: bool, ports: bool) -> None:
        s = self.sock
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as q:  # an XSK takes no ioctl
            ifr = fcntl.ioctl(q, SIOCGIFMTU, struct.pack("16si20x", self.name.encode(), 0))
        dev_mtu = struct.unpack_from("i", ifr, 16)[0]
        if mtu is None:
            mtu = dev_mtu
        elif not 68 <= mtu <= dev_mtu:
            raise ValueError(f"mtu {mtu} must be within 68..{dev_mtu} (the MTU of {self.name})")
        self.mtu = mtu
        self._tx_max = mtu + 14
        max_frame = mtu + 18  # Ethernet header and one VLAN tag
        if frame_size is None:
            frame_size = 2048 if max_frame + XDP_PACKET_HEADROOM <= 2048 else 4096
        if frame_size not in (2048, 4096) or max_frame + XDP_PACKET_HEADROOM > frame_size:
            raise ValueError(f"frame_size {frame_size}: 2048 or 4096, holding {XDP_PACKET_HEADROOM} bytes of "
                             f"headroom and a {max_frame}-byte frame")
        if frames < 4 or frames & (frames - 1):
            raise ValueError("frames must be a power of two, at least 4")
        self.frame_size = frame_size
        n_ring = frames // 2
        # the UMEM: anonymous shared memory, registered (pinned) with the socket
        umem = mmap.mmap(-1, frames * frame_size, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self._umem = umem
        self._umem_anchor = ctypes.c_char.from_buffer(umem)
        s.setsockopt(SOL_XDP, XDP_UMEM_REG, _UMEM_REG.pack(
            ctypes.addressof(self._umem_anchor), len(umem), frame_size, 0, 0, 0))
        for opt in (XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_RX_RING, XDP_TX_RING):
            s.setsockopt(SOL_XDP, opt, n_ring)
        try:  # in copy mode a send() takes 32 descriptors unless told more; an older kernel cannot be
            s.setsockopt(SOL_XDP, XDP_MAX_TX_SKB_BUDGET, struct.pack("I", n_ring))
        except OSError:
            pass
        raw = _MMAP_OFFSETS.unpack(s.getsockopt(SOL_XDP, XDP_MMAP_OFFSETS, _MMAP_OFFSETS.size))
        off = {ring: dict(zip(_RING_OFFSET_FIELDS, raw[4 * i:4 * i + 4]))
               for i, ring in enumerate(("rx", "tx", "fr", "cr"))}
        self._rx = _Ring(s, XDP_PGOFF_RX_RING, off["rx"], n_ring, _DESC)
        self._tx = _Ring(s, XDP_PGOFF_TX_RING, off["tx"], n_ring, _DESC)
        self._fill = _Ring(s, XDP_UMEM_PGOFF_FILL_RING, off["fr"], n_ring, np.uint64)
        self._comp = _Ring(s, XDP_UMEM_PGOFF_COMPLETION_RING, off["cr"], n_ring, np.uint64)
        self._rings = [self._rx, self._tx, self._fill, self._comp]
        # the first half of the chunks to the fill ring, the second half free for sending
        self._fill.desc[:] = np.arange(n_ring, dtype=np.uint64) * frame_size
        self._fill.producer[0] = n_ring
        self._fill_prod = n_ring
        self._rx_cons = 0
        self._tx_prod = 0
        self._comp_cons = 0
        self._free = list(range(n_ring * frame_size, frames * frame_size, frame_size))
        self._in_flight = 0
        self._tx_pending = False  # frames left in the TX ring after a kick: kick again soon
        self._bind(zerocopy, need_wakeup)
        # the program and its maps; the socket goes into the XSKMAP at its queue
        self._xsks_fd = bpf.map_create(bpf.BPF_MAP_TYPE_XSKMAP, 4, 4, max(64, self.queue + 1), "usnet_xsks")
        if ports:
            self._flows_fd = bpf.map_create(bpf.BPF_MAP_TYPE_HASH, _FLOW_KEY.size, 1, 65536, "usnet_flows")
        if self.ll_queue is not None:
            if self.ll_queue == self.queue:
                raise ValueError("the LL lane needs a queue of its own (ll_queue != queue)")
            self._ll_fd = bpf.map_create(bpf.BPF_MAP_TYPE_HASH, _FLOW_KEY.size, 1, 64, "usnet_ll")
            self._lanes_fd = bpf.map_create(bpf.BPF_MAP_TYPE_XSKMAP, 4, 4, max(64, self.ll_queue + 1), "usnet_lanes")
        self._prog_fd = bpf.load(xdp_program(self._xsks_fd, self._flows_fd if ports else None,
                                             self._ll_fd if self._ll_fd >= 0 else None,
                                             self._lanes_fd if self._lanes_fd >= 0 else None, self.mac),
                                 bpf.BPF_PROG_TYPE_XDP, "usnet_xdp")
        bpf.map_update(self._xsks_fd, struct.pack("<I", self.queue), struct.pack("<I", s.fileno()))
        self._attach()
        s.setblocking(False)
        if ports:
            # ARP stays the kernel's; we read a copy (created with protocol 0: nothing queued before bind)
            self._arp = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self._arp.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
            self._arp.bind((self.name, _ETH_P_ARP))
            self._arp.setblocking(False)
        if ports or self.ll_queue is not None:  # one descriptor to poll: the XSK, the ARP tap, the lanes
            self._ep = select.epoll()
            self._ep.register(s.fileno(), select.EPOLLIN)
            if self._arp is not None:
                self._ep.register(self._arp.fileno(), select.EPOLLIN)

    def _bind(self, zerocopy: bool | None, need_wakeup: bool) -> None:
        wake = XDP_USE_NEED_WAKEUP if need_wakeup else 0
        tries = [(XDP_ZEROCOPY, "zerocopy")] if zerocopy in (None, True) else []
        if zerocopy is not True:
            tries.append((XDP_COPY, "copy"))
        err = 0
        for flag, mode in tries:
            addr = ctypes.create_string_buffer(_SOCKADDR_XDP.pack(AF_XDP, flag | wake, self.ifindex, self.queue, 0),
                                               _SOCKADDR_XDP.size)
            # EBUSY: the queue still has the pool of a socket closed a moment ago; the kernel
            # frees it from a workqueue (xp_release_deferred), so wait for that, a second at most
            deadline = time.monotonic() + 1.0
            while True:
                if _libc.bind(self.sock.fileno(), addr, _SOCKADDR_XDP.size) == 0:
                    self.mode = mode
                    self._need_wakeup = bool(wake)
                    return
                err = ctypes.get_errno()
                if err != errno.EBUSY or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        raise OSError(err, f"bind AF_XDP to {self.name} queue {self.queue}: {os.strerror(err)}")

    def _attach(self) -> None:
        """The program on the interface: native mode where the device has it, else generic."""
        last: Exception | None = None
        for flags, mode in ((XDP_FLAGS_DRV_MODE, "drv"), (XDP_FLAGS_SKB_MODE, "skb")):
            try:
                _set_xdp(self.ifindex, self._prog_fd, flags | XDP_FLAGS_UPDATE_IF_NOEXIST)
            except Exception as e:  # pyroute2's NetlinkError: EOPNOTSUPP and the like; EBUSY: taken
                if getattr(e, "code", None) == errno.EBUSY:
                    raise OSError(errno.EBUSY, f"{self.name} has an XDP program already") from e
                last = e
                continue
            self.attach_mode = mode
            self._attached_flags = flags
            return
        raise OSError(errno.EOPNOTSUPP, f"cannot attach an XDP program to {self.name}: {last}")

    @property
    def program_fd(self) -> int:
        """The loaded XDP program (bpf.test_run asks it for a frame's verdict); -1 once closed."""
        return self._prog_fd

    # -- flows (issue 19 item 2) -------------------------------------------------------------------

    def steer(self, proto: int, port: int) -> None:
        """Frames of IP protocol `proto` to destination `port` come to us from now on."""
        if self._flows_fd < 0:
            raise ValueError("this driver redirects every frame (ports=False)")
        bpf.map_update(self._flows_fd, flow_key(proto, port), b"\x01")

    def unsteer(self, proto: int, port: int) -> bool:
        """Hand `port` back to the kernel; False if it was not registered."""
        if self._flows_fd < 0:
            return False
        return bpf.map_delete(self._flows_fd, flow_key(proto, port))

    # -- the low-latency lane (issue 19 item 3) ----------------------------------------------------

    def open_lane(self, proto: int, port: int, mem: Any, size: int, ring: int = 64) -> XdpLane:
        """A lane on `ll_queue` for IPv4 frames of (`proto`, `port`), received into `size` bytes
        of `mem` (a low-latency flow's pool; usnet.drivers.xdplane). One lane per queue."""
        if self.ll_queue is None:
            raise ValueError("this driver has no LL queue (ll_queue=None)")
        if self.lanes:
            raise OSError(errno.EBUSY, f"the LL queue {self.ll_queue} of {self.name} has a lane already")
        from usnet.drivers.xdplane import XdpLane  # a module of its own, which imports this one

        lane = XdpLane(self.ifindex, self.ll_queue, mem, size, ring)
        try:
            bpf.map_update(self._lanes_fd, struct.pack("<I", self.ll_queue), struct.pack("<I", lane.fileno()))
            bpf.map_update(self._ll_fd, flow_key(proto, port), b"\x01")
            assert self._ep is not None
            self._ep.register(lane.fileno(), select.EPOLLIN)
        except BaseException:
            self._drop_lane(proto, port, lane)
            raise
        self.lanes[(proto, port)] = lane
        return lane

    def close_lane(self, proto: int, port: int) -> None:
        """Take the lane of (`proto`, `port`) off the program and close it (its memory unpinned)."""
        lane = self.lanes.pop((proto, port), None)
        if lane is not None:
            self._drop_lane(proto, port, lane)

    def _drop_lane(self, proto: int, port: int, lane: XdpLane) -> None:
        if self._ll_fd >= 0:
            bpf.map_delete(self._ll_fd, flow_key(proto, port))
            bpf.map_delete(self._lanes_fd, struct.pack("<I", lane.queue))
        if self._ep is not None:
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(lane.fileno())
        lane.close()

    # -- Driver ------------------------------------------------------------------------------------

    def fileno(self) -> int:
        return self._ep.fileno() if self._ep is not None else self.sock.fileno()

    def timeout(self) -> float | None:
        return 0.001 if self._tx_pending else None  # kick again from recv_batch

    def recv_batch(self, max_n: int = 64) -> list[Received]:
        umem = self._umem
        if umem is None:
            return []
        if self._tx_pending:
            self._kick()
        out: list[Received] = []
        if self._arp is not None:
            self._recv_arp(out, max_n)
            max_n -= len(out)
        rx = self._rx
        cons = self._rx_cons
        n = (int(rx.producer[0]) - cons) & 0xFFFFFFFF
        if n > max_n:
            n = max_n
        if n <= 0:
            return out
        nbytes = 0
        fill = self._fill
        fp = self._fill_prod
        chunk = ~np.uint64(self.frame_size - 1)
        at = cons & rx.mask
        left = n
        while left:  # one or two runs of the ring (it may wrap), each a slice: no fancy indexing
            k = min(left, rx.size - at)
            d = rx.desc[at:at + k]
            addrs = d["addr"]
            for a, ln in zip(addrs.tolist(), d["len"].tolist()):
                out.append(umem[a:a + ln])
                nbytes += ln
            # the chunks go straight back to the fill ring (the kernel masks the headroom off)
            _put(fill, fp, addrs & chunk)
            fp = (fp + k) & 0xFFFFFFFF
            at = 0
            left -= k
        self._rx_cons = cons = (cons + n) & 0xFFFFFFFF
        rx.consumer[0] = cons
        self._fill_prod = fp
        fill.producer[0] = fp
        if self._need_wakeup and fill.flags[0] & XDP_RING_NEED_WAKEUP:
            self.wakeups += 1
            with contextlib.suppress(BlockingIOError, InterruptedError):
                self.sock.recv(0, socket.MSG_DONTWAIT)
        st = self.stats
        st.rx_frames += n
        st.rx_bytes += nbytes
        return out

    def _recv_arp(self, out: list[Received], max_n: int) -> None:
        """The ARP frames the kernel saw (a copy; ports mode only)."""
        arp = self._arp
        assert arp is not None
        st = self.stats
        for _ in range(max_n):
            try:
                f = arp.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            out.append(f)
            st.rx_frames += 1
            st.rx_bytes += len(f)

    def _reclaim(self) -> None:
        """Chunks the kernel has sent, from the completion ring back to the free list."""
        comp = self._comp
        cc = self._comp_cons
        n = (int(comp.producer[0]) - cc) & 0xFFFFFFFF
        if n:
            at = cc & comp.mask
            k = min(n, comp.size - at)
            self._free.extend(comp.desc[at:at + k].tolist())
            if k < n:
                self._free.extend(comp.desc[:n - k].tolist())
            self._comp_cons = cc = (cc + n) & 0xFFFFFFFF
            comp.consumer[0] = cc
            self._in_flight -= n

    def send_batch(self, frames: Sequence[Frame]) -> int:
        umem = self._umem
        if umem is None:
            return 0
        self._reclaim()
        tx = self._tx
        room = tx.size - ((self._tx_prod - int(tx.consumer[0])) & 0xFFFFFFFF)
        free = self._free
        txmax = self._tx_max
        st = self.stats
        addrs: list[int] = []
        lens: list[int] = []
        taken = 0
        for f in frames:
            if len(addrs) >= room or not free:
                break
            ln = len(f)
            if type(f) is GatherFrame:
                f = bytes(f)
            if (ln > txmax or ln < 14) and not (14 <= ln <= txmax + 4 and f[12:14] in _VLAN_TPIDS):
                st.tx_errors += 1  # malformed: consumed, not sent
                taken += 1
                continue
            a = free.pop()
            umem[a:a + ln] = f
            addrs.append(a)
            lens.append(ln)
            taken += 1
        n = len(addrs)
        if n:
            tp = self._tx_prod
            batch = np.empty(n, _DESC)
            batch["addr"] = addrs
            batch["len"] = lens
            batch["options"] = 0
            _put(tx, tp, batch)
            self._tx_prod = tp = (tp + n) & 0xFFFFFFFF
            tx.producer[0] = tp
            self._in_flight += n
            st.tx_frames += n
            st.tx_bytes += sum(lens)
        if n or self._tx_pending:
            self._kick()
        return taken

    def _kick(self) -> None:
        """Have the kernel send what the TX ring holds, if it asks to be told (need-wakeup).

        In copy mode the send() does the work, at most XDP_MAX_TX_SKB_BUDGET descriptors a
        call (EAGAIN when more are left): kick until the ring is drained, a few times at
        most; what is left then is kicked from `recv_batch` or the next `send_batch`
        (`timeout()` says 1 ms meanwhile)."""
        tx = self._tx
        for _ in range(8):
            if int(tx.consumer[0]) == self._tx_prod:
                break
            if self._need_wakeup and not tx.flags[0] & XDP_RING_NEED_WAKEUP:
                break  # zero-copy: the driver is polling the ring itself
            self.wakeups += 1
            try:
                self.sock.send(b"", socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue  # EAGAIN: the budget ran out with frames left (or the device was busy)
            except OSError as e:
                if e.errno in (errno.ENOBUFS, errno.EBUSY):
                    break
                if e.errno not in (errno.ENETDOWN, errno.ENXIO):
                    raise
                break
        self._tx_pending = int(tx.consumer[0]) != self._tx_prod
        self._reclaim()

    def xdp_stats(self) -> dict[str, int]:
        """The socket's kernel counters (XDP_STATISTICS)."""
        if self._umem is None:
            return {}
        return dict(zip(_STATS_FIELDS, _STATS.unpack(self.sock.getsockopt(SOL_XDP, XDP_STATISTICS, _STATS.size))))

    def close(self) -> None:
        for (proto, port) in list(self.lanes):
            self.close_lane(proto, port)
        if self._ep is not None:
            self._ep.close()
            self._ep = None
        if self._arp is not None:
            self._arp.close()
            self._arp = None
        if self._attached_flags:
            flags, self._attached_flags = self._attached_flags, 0
            with contextlib.suppress(Exception):  # the link may be gone already
                _set_xdp(self.ifindex, -1, flags | XDP_FLAGS_REPLACE, expected_fd=self._prog_fd)
        for attr in ("_prog_fd", "_xsks_fd", "_flows_fd", "_ll_fd", "_lanes_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)
        for r in self._rings:
            r.close()
        self._rings = []
        if self.sock.fileno() >= 0:
            self.sock.close()  # releases the UMEM registration
        self._umem_anchor = None
        umem, self._umem = self._umem, None
        if umem is not None:
            umem.close()
