"""RSS by local port: the one steering program behind every multi-queue device of usnet.

`usnetd --workers N` gives each worker the flows whose local port p has p mod N == its index
(usnet.domain.workers.steering.worker_of), so the device must hand a received frame to queue
(destination port mod N), and everything without a port (ARP, ICMP, neighbour discovery, IPv4
fragments, IPv6 with an extension header first) to queue 0, where usnetd's own worker answers it.
Two devices take such a choice from a socket-filter eBPF program:

* a multi-queue TAP (usnet.drivers.tap, TUNSETSTEERINGEBPF): the program runs as the kernel
  transmits to the device, with skb->data at the Ethernet header;
* an AF_PACKET fanout group (usnet.drivers.packet, PACKET_FANOUT_EBPF): the program runs on
  received frames with skb->data at the network header, the Ethernet header already pulled
  (it is run before tpacket_rcv pushes it back). BPF_PROG_TEST_RUN of a socket filter sees the
  same (no push for a non-L2 program type).

So the program never reads at an offset from skb->data: the ethertype is skb->protocol (from
the context, which also holds for a VLAN the NIC took off), and the IP and port loads are
LD_ABS/LD_IND relative to the network header (SKF_NET_OFF), which the kernel sets in both
places. One program, one rule, for both devices.
"""

from __future__ import annotations

from usnet.drivers import bpf as B

__all__ = ["SKF_NET_OFF", "load_steering", "queue_of", "steering_program"]

SKF_NET_OFF = -0x100000  # linux/filter.h: a negative LD_ABS/LD_IND offset relative to the network header
SK_BUFF_PROTOCOL = 16  # offsetof(struct __sk_buff, protocol): the ethertype, network order in a u32
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD


def steering_program(n: int) -> list[B.Insn]:
    """The queue of a received frame: its TCP or UDP destination port (the local port of a usnet
    flow) modulo `n`, over IPv4 (unfragmented) and IPv6 (no extension header); 0 for everything
    else. A socket filter (BPF_PROG_TYPE_SOCKET_FILTER); both devices also take its value modulo
    their number of queues. r6 holds the context, as LD_ABS/LD_IND need; their result (host
    order) is in r0."""
    if n < 1:
        raise ValueError("a device has at least one queue")
    net = SKF_NET_OFF
    ld_b = B.LD | B.ABS | B.B
    ld_h = B.LD | B.ABS | B.H
    jmp = B.JMP | B.K
    to_queue = [B.Insn(B.ALU64 | B.MOD | B.K, 0, 0, 0, n), B.exit_()]  # r0 is the port
    return B.link([
        B.mov_reg(6, 1),
        B.load_w(0, 6, SK_BUFF_PROTOCOL),
        B.Insn(B.ALU | B.END | B.TO_BE, 0, 0, 0, 16),  # network order to a number, on any host
        B.jump(B.Insn(jmp | B.JEQ, 0, 0, 0, ETH_P_IP), "v4"),
        B.jump(B.Insn(jmp | B.JEQ, 0, 0, 0, ETH_P_IPV6), "v6"),
        B.jump(B.Insn(jmp | B.JA), "zero"),
        B.Label("v4"),
        B.Insn(ld_h, 0, 0, 0, net + 6), B.Insn(B.ALU64 | B.AND | B.K, 0, 0, 0, 0x3FFF),
        B.jump(B.Insn(jmp | B.JNE, 0, 0, 0, 0), "zero"),  # a fragment: only the first has ports
        B.Insn(ld_b, 0, 0, 0, net + 9),
        B.jump(B.Insn(jmp | B.JEQ, 0, 0, 0, 6), "ports4"),
        B.jump(B.Insn(jmp | B.JEQ, 0, 0, 0, 17), "ports4"),
        B.jump(B.Insn(jmp | B.JA), "zero"),
        B.Label("ports4"),
        B.Insn(ld_b, 0, 0, 0, net), B.Insn(B.ALU64 | B.AND | B.K, 0, 0, 0, 0xF),
        B.Insn(B.ALU64 | B.LSH | B.K, 0, 0, 0, 2), B.mov_reg(7, 0),
        B.Insn(B.LD | B.IND | B.H, 0, 7, 0, net + 2),  # the port, at IHL*4 + 2
        *to_queue,
        B.Label("v6"),
        B.Insn(ld_b, 0, 0, 0, net + 6),  # next header
        B.jump(B.Insn(jmp | B.JEQ, 0, 0, 0, 6), "ports6"),
        B.jump(B.Insn(jmp | B.JEQ, 0, 0, 0, 17), "ports6"),
        B.jump(B.Insn(jmp | B.JA), "zero"),
        B.Label("ports6"),
        B.Insn(ld_h, 0, 0, 0, net + 40 + 2),
        *to_queue,
        B.Label("zero"),
        B.mov_imm(0, 0), B.exit_(),
    ])


def load_steering(n: int) -> int:
    """A file descriptor of `steering_program(n)`, loaded; the caller hands it to the device
    (which takes its own reference) and closes it."""
    return B.load(steering_program(n), B.BPF_PROG_TYPE_SOCKET_FILTER, "usnet_steer")


def queue_of(frame: bytes, n: int) -> int:
    """The queue the program picks for an Ethernet frame, in Python: the rule the tests hold the
    kernel to, and the one usnet.domain.workers.steering.worker_of follows. A frame too short for what the
    program reads counts as queue 0 (the kernel's load fails and the program returns 0)."""
    if len(frame) < 14:
        return 0
    et = int.from_bytes(frame[12:14], "big")
    ip = frame[14:]
    if et == ETH_P_IP and len(ip) >= 10:
        if int.from_bytes(ip[6:8], "big") & 0x3FFF or ip[9] not in (6, 17):
            return 0
        at = (ip[0] & 0xF) * 4 + 2
        return int.from_bytes(ip[at:at + 2], "big") % n if len(ip) >= at + 2 else 0
    if et == ETH_P_IPV6 and len(ip) >= 7 and ip[6] in (6, 17) and len(ip) >= 44:
        return int.from_bytes(ip[42:44], "big") % n
    return 0
