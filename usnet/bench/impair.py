"""A lossy path without netem: a tc BPF program, assembled here, that drops, duplicates and reorders.

Why: this kernel has neither netem nor fq (nor etf), so `tc qdisc ... netem loss 2%` is not
available to make the impaired path that `usnet bench lossy` (issue 17) needs. A classifier in
direct-action mode on a clsact hook can do it, and its bytecode is small enough to assemble
from Python: no compiler, no libbpf. `Insn` declares the encoding of an eBPF instruction
once, with named fields (in usnet.drivers.bpf, shared with the AF_XDP driver); `program()` is
the impairment; `load()` hands it to the verifier through bpf(2); `attach()` puts it on a
device's egress or ingress with pyroute2's tc.

The program, for each packet at the hook (r6 holds the context, `struct __sk_buff`):

    r6 = ctx
    r7 = ctx->mark
    if r7 == MARK: pass               -- a copy we made or a held packet coming back
    if ctx->protocol != ETH_P_IP: pass -- ARP and the rest go untouched
    if prandom() < DROP: drop         -- TC_ACT_SHOT
    if prandom() < DUP:               -- a clone to the same device and hook, marked so that
        ctx->mark = MARK                 it passes this program unchanged the second time
        bpf_clone_redirect(ctx, SELF, SELF_FLAGS)
        ctx->mark = r7
    if prandom() < REORDER:           -- held back: to the ingress of the holding device
        return bpf_redirect(HOLD, BPF_F_INGRESS)
    pass                              -- TC_ACT_OK

Thresholds are probabilities scaled to 2**32 and compared as unsigned 32-bit values (JMP32).
Each draw is its own `bpf_get_prandom_u32`, so the three are independent; none is seeded, so
a run is not reproducible packet for packet (memwire's seeded impairment is the deterministic
one, for tests). The verifier refuses unreachable code, so a verdict a program cannot reach
(no drop, say) is left out.

Where it sits: on the *ingress* hook of the receiving end of a veth (`impair`), with TSO,
GSO and transmit checksumming off on the sending end (`no_offloads`). The egress hook runs
before the kernel segments a GSO/TSO super-packet (64 KB from a TCP socket, or from usnetd's
TAP, which takes TSO frames), and before it fills in a checksum left to the device; the peer's
ingress sees one checksummed segment per packet, as a wire would deliver it.

Reordering needs a delay, and without netem, fq or etf the kernel has no qdisc that holds a
packet for a time (a token bucket lets the first packet of an idle class through at once).
So a held packet goes to the ingress of a veth pair of its own (`<dev>h`, its peer `<dev>r`),
where a process of ours (`Holder`, forked: not on the measured program's interpreter) reads it
with an AF_PACKET socket, keeps it for `delay` seconds and sends it back out of `<dev>h` with
SO_MARK = MARK. It arrives at `<dev>r`, whose ingress program (`return_program`) hands it,
marked, to the ingress of the impaired device, where the impairment lets it through. Later
packets overtake it: netem's `delay` with `reorder`, the other way round (the few are late,
not early). Only IPv4 is held and sent back; the mark survives because every hop of this
detour stays in one namespace (the kernel clears marks only when a packet changes namespace).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import heapq
import os
import select
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from usnet.drivers import bpf
from usnet.drivers.bpf import (
    BPF_F_INGRESS,
    BPF_PROG_TYPE_SCHED_CLS,
    CLONE_REDIRECT,
    GET_PRANDOM_U32,
    JA,
    JEQ,
    JLT,
    JMP,
    JMP32,
    JNE,
    REDIRECT,
    Insn,
    K,
    Label,
    assemble,
    call,
    exit_,
    jump,
    link,
    load_w,
    mov_imm,
    mov_reg,
    store_w,
    store_w_imm,
)

if TYPE_CHECKING:
    from usnet.drivers.hostnet import NetNs

__all__ = ["BPF_PROG_TYPE_SCHED_CLS", "EGRESS", "INGRESS", "MARK", "Holder", "Impairment", "Insn",
           "assemble", "attach", "hold_socket", "impair", "impaired_veth", "load", "no_offloads", "program",
           "return_program", "threshold"]

# -- the instruction encoding and bpf(2): usnet.drivers.bpf, shared with the AF_XDP driver ---------------

# tc verdicts
TC_ACT_OK, TC_ACT_SHOT = 0, 2
# offsets in struct __sk_buff
SKB_MARK, SKB_PROTOCOL = 8, 16
ETH_P_IP = 0x0800

MARK = 0x75736E31  # "usn1": a packet that passes untouched (a duplicate, or a held one coming back)
EGRESS, INGRESS = "ffff:fff3", "ffff:fff2"  # clsact's two hooks, as tc parents


# -- the impairment -------------------------------------------------------------------------------------


def threshold(p: float) -> int:
    """Probability `p` as the unsigned 32-bit bound a random draw falls under with that probability."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a probability, not {p}")
    return min(int(p * (1 << 32)), (1 << 32) - 1)


@dataclass(frozen=True)
class Impairment:
    """What a hook does: drop, duplicate and hold back (reorder) with these probabilities."""

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0


def program(imp: Impairment, self_ifindex: int, hold_ifindex: int = 0, *, ingress: bool = False) -> list[Insn]:
    """The program of the module docstring for a hook on device `self_ifindex` (a duplicate goes
    back to the same hook: to egress, or with BPF_F_INGRESS to ingress); held packets go to the
    ingress of `hold_ifindex` (0: no reordering)."""
    if imp.reorder and not hold_ifindex:
        raise ValueError("reordering needs a holding device")
    body: list[Insn | Label | tuple[Insn, str]] = [mov_reg(6, 1), load_w(7, 6, SKB_MARK),
                                                    jump(Insn(JMP | JEQ | K, 7, 0, 0, MARK), "pass"),
                                                    load_w(2, 6, SKB_PROTOCOL),
                                                    jump(Insn(JMP | JNE | K, 2, 0, 0, socket.htons(ETH_P_IP)), "pass")]
    if imp.drop:
        body += [call(GET_PRANDOM_U32), jump(Insn(JMP32 | JLT | K, 0, 0, 0, threshold(imp.drop)), "drop")]
    if imp.duplicate:
        body += [call(GET_PRANDOM_U32), jump(Insn(JMP32 | JLT | K, 0, 0, 0, threshold(imp.duplicate)), "dup"),
                 jump(Insn(JMP | JA), "no_dup"), Label("dup"),
                 store_w_imm(6, SKB_MARK, MARK), mov_reg(1, 6), mov_imm(2, self_ifindex),
                 mov_imm(3, BPF_F_INGRESS if ingress else 0), call(CLONE_REDIRECT), store_w(6, SKB_MARK, 7),
                 Label("no_dup")]
    if imp.reorder:
        body += [call(GET_PRANDOM_U32), jump(Insn(JMP32 | JLT | K, 0, 0, 0, threshold(imp.reorder)), "hold")]
    body += [Label("pass"), mov_imm(0, TC_ACT_OK), exit_()]
    if imp.drop:  # the verifier refuses unreachable instructions: each verdict only when used
        body += [Label("drop"), mov_imm(0, TC_ACT_SHOT), exit_()]
    if imp.reorder:
        body += [Label("hold"), mov_imm(1, hold_ifindex), mov_imm(2, BPF_F_INGRESS), call(REDIRECT), exit_()]
    return link(body)


def return_program(target_ifindex: int) -> list[Insn]:
    """The holding pair's way back: a packet the Holder sent (marked) goes to the ingress of
    the impaired device `target_ifindex`; anything else (the pair's own chatter) is dropped."""
    return [load_w(2, 1, SKB_MARK), Insn(JMP | JEQ | K, 2, 0, 2, MARK), mov_imm(0, TC_ACT_SHOT), exit_(),
            mov_imm(1, target_ifindex), mov_imm(2, BPF_F_INGRESS), call(REDIRECT), exit_()]


# -- bpf(2) and tc ----------------------------------------------------------------------------------------


def load(insns: Sequence[Insn], name: str = "usnet_impair") -> int:
    """A file descriptor of the program, loaded as a tc classifier; the verifier's log in the
    error when it refuses."""
    return bpf.load(insns, BPF_PROG_TYPE_SCHED_CLS, name)


def attach(ifindex: int, fd: int, parent: str, name: str = "usnet_impair") -> None:
    """The program at `fd` as a direct-action classifier on the device's clsact hook `parent`
    (EGRESS or INGRESS), adding the clsact qdisc if the device has none yet. In the calling
    thread's namespace; the filter keeps the program, so `fd` may be closed afterwards."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            ipr.tc("add", "clsact", ifindex)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        ipr.tc("add-filter", "bpf", ifindex, ":1", fd=fd, name=name, parent=parent, classid=1,
               direct_action=True)


_SIOCETHTOOL = 0x8946
_ETHTOOL_STXCSUM, _ETHTOOL_STSO, _ETHTOOL_SGSO, _ETHTOOL_SGRO = 0x17, 0x1F, 0x24, 0x2C


def no_offloads(ifname: str) -> None:
    """Transmit checksumming, TSO and GSO off on the device, and GRO (in the calling thread's
    namespace): what it sends is segmented and checksummed before it leaves, and what it
    receives is not merged before its ingress hook, so that hook sees what a wire carries."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for cmd in (_ETHTOOL_STXCSUM, _ETHTOOL_STSO, _ETHTOOL_SGSO, _ETHTOOL_SGRO):
            value = ctypes.create_string_buffer(struct.pack("<II", cmd, 0))
            ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0")
            fcntl.ioctl(s.fileno(), _SIOCETHTOOL, ifreq)


# -- holding packets back ---------------------------------------------------------------------------------

ETH_P_ALL = 0x0003


def hold_socket(hold_ifname: str) -> socket.socket:
    """The Holder's AF_PACKET socket on the holding device (made in the calling thread's
    namespace): it reads what the impairment held and sends it back, marked, after the delay."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((hold_ifname, ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
    s.setblocking(False)
    return s


class Holder:
    """A forked process that keeps each frame arriving on a holding device for `delay` seconds,
    then sends it back (see the module docstring). Stopped by `close` (its pipe closes; it exits).

    A process, not a thread: the benchmark's usnet sender runs in the parent's interpreter."""

    def __init__(self, socks: list[socket.socket], delay: float) -> None:
        self.socks, self.delay = socks, delay
        r, w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(w)
            code = 0
            try:
                self._run(r)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(r)
        self._stop = w
        for s in socks:  # the child has its own copies
            s.close()

    def _run(self, stop: int) -> None:
        """Read what arrived, send what is due; sleep until the next is due or a frame arrives."""
        heap: list[tuple[float, int, int, bytes]] = []
        seq = 0
        fds = {s.fileno(): i for i, s in enumerate(self.socks)}
        while True:
            timeout = max(0.0, heap[0][0] - time.monotonic()) if heap else None
            ready, _, _ = select.select([stop, *fds], [], [], timeout)
            if stop in ready:
                return
            now = time.monotonic()
            for fd in ready:
                i = fds[fd]
                sock = self.socks[i]
                for _ in range(256):  # bounded: what arrived meanwhile waits for the next round
                    try:
                        frame, addr = sock.recvfrom(65536)
                    except BlockingIOError:
                        break
                    if addr[2] == socket.PACKET_OUTGOING or frame[12:14] != b"\x08\x00":
                        continue  # our own sends, and the holding device's own chatter
                    heapq.heappush(heap, (now + self.delay, seq, i, frame))
                    seq += 1
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                _, _, i, frame = heapq.heappop(heap)
                with contextlib.suppress(OSError):  # a full queue drops, as a wire would
                    self.socks[i].send(frame)

    def close(self) -> None:
        if self._stop >= 0:
            os.close(self._stop)
            self._stop = -1
            os.waitpid(self.pid, 0)

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_attach(ifindex: int, insns: list[Insn], parent: str) -> None:
    fd = load(insns)
    try:
        attach(ifindex, fd, parent)
    finally:
        os.close(fd)


def impair(ifname: str, imp: Impairment) -> socket.socket | None:
    """Put the impairment on `ifname`'s ingress (in the calling thread's namespace); when it
    reorders, make its holding pair `<ifname>h`/`<ifname>r` and return the Holder's socket."""
    from pyroute2 import IPRoute

    hold_name, back_name = f"{ifname}h", f"{ifname}r"
    with IPRoute() as ipr:
        (idx,) = ipr.link_lookup(ifname=ifname)
        hold = back = 0
        if imp.reorder:
            ipr.link("add", ifname=hold_name, kind="veth", peer=back_name)
            (hold,) = ipr.link_lookup(ifname=hold_name)
            (back,) = ipr.link_lookup(ifname=back_name)
            for i in (hold, back):
                ipr.link("set", index=i, state="up")
    if imp.reorder:
        _load_attach(back, return_program(idx), INGRESS)
    _load_attach(idx, program(imp, idx, hold, ingress=True), INGRESS)
    return hold_socket(hold_name) if imp.reorder else None


@contextlib.contextmanager
def holding(socks: list[socket.socket], delay: float) -> Iterator[Holder | None]:
    """A Holder for `socks` for the block (None when nothing is held)."""
    if not socks:
        yield None
        return
    with Holder(socks, delay) as h:
        yield h


@contextlib.contextmanager
def impaired_veth(near: NetNs, far: NetNs, near_cidr: str, far_cidr: str, imp: Impairment,
                  delay: float = 0.002, names: tuple[str, str] = ("lossa", "lossb")) -> Iterator[None]:
    """A veth from namespace `near` (address `near_cidr`) to `far` (`far_cidr`), impaired alike
    at both ends' ingress (data and ACKs each way), offloads off, with the Holder of its held
    packets running for the block. The devices go with their namespaces; the Holder is stopped here."""
    from pyroute2 import IPRoute

    a, b = names

    def make() -> None:
        with IPRoute() as ipr:
            ipr.link("add", ifname=a, kind="veth", peer=b)
            (ib,) = ipr.link_lookup(ifname=b)
            ipr.link("set", index=ib, net_ns_fd=far.name)

    def setup(ifname: str, cidr: str) -> socket.socket | None:
        addr, _, plen = cidr.partition("/")
        with IPRoute() as ipr:
            (idx,) = ipr.link_lookup(ifname=ifname)
            ipr.addr("add", index=idx, address=addr, prefixlen=int(plen))
            ipr.link("set", index=idx, state="up")
        no_offloads(ifname)
        return impair(ifname, imp)

    near.call(make)
    socks = [s for s in (near.call(lambda: setup(a, near_cidr)), far.call(lambda: setup(b, far_cidr)))
             if s is not None]
    with holding(socks, delay):
        yield
