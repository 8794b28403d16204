"""usnet/bench/impair.py: the tc BPF impairment behind `usnet bench lossy`.

The unprivileged tests check the assembled program against the encoding of linux/bpf.h and
its own shape (every jump lands inside it, each verdict is what the docstring says); the
verifier accepting it is the real check, and the privileged tests load it and then count,
with an AF_PACKET socket on the far side of an impaired veth, what a bounded burst of
numbered datagrams became: some lost, some twice, some late. The ranges are broad (the
kernel's random numbers are not seeded).
"""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from usnet.bench import impair as I
from usnet.drivers import bpf

FULL = I.Impairment(drop=0.02, duplicate=0.01, reorder=0.10)


def test_instruction_encoding_matches_linux_bpf_h():
    # r6 = r1 (BPF_ALU64 | BPF_MOV | BPF_X): dst in the low nibble of the register byte
    assert I.mov_reg(6, 1).encode() == bytes.fromhex("bf16000000000000")
    # r7 = *(u32 *)(r6 + 8) (BPF_LDX | BPF_MEM | BPF_W)
    assert I.load_w(7, 6, 8).encode() == bytes.fromhex("6167080000000000")
    # call 7; exit
    assert I.call(7).encode() == bytes.fromhex("8500000007000000")
    assert I.exit_().encode() == bytes.fromhex("9500000000000000")
    # an unsigned 32-bit immediate above 2**31 is the same bit pattern
    assert I.Insn(I.JMP32 | I.JLT | I.K, 0, 0, 3, 0xFFFFFFFF).encode() == bytes.fromhex("a6000300ffffffff")
    assert len(I.assemble(I.program(FULL, 2, 3))) == 8 * len(I.program(FULL, 2, 3))


def test_thresholds_scale_probabilities_to_u32():
    assert I.threshold(0.0) == 0
    assert I.threshold(0.5) == 1 << 31
    assert I.threshold(1.0) == (1 << 32) - 1
    with pytest.raises(ValueError):
        I.threshold(1.5)


def _target(prog: list[I.Insn], i: int) -> int:
    return i + 1 + prog[i].off


def test_program_jumps_land_on_the_verdicts_it_means():
    prog = I.program(FULL, self_ifindex=2, hold_ifindex=3)
    jumps = [i for i, x in enumerate(prog)
             if x.code & 0x07 in (I.JMP, I.JMP32) and x.code & 0xF0 not in (bpf.CALL, bpf.EXIT)]
    assert all(0 <= _target(prog, i) < len(prog) for i in jumps)
    assert prog[-1] == I.exit_()
    draws = [i for i, x in enumerate(prog) if x == I.call(I.GET_PRANDOM_U32)]
    assert len(draws) == 3  # one independent draw each for drop, duplicate, reorder
    drop, dup, hold = (i + 1 for i in draws)
    assert [prog[i].imm for i in (drop, dup, hold)] == [I.threshold(0.02), I.threshold(0.01), I.threshold(0.10)]
    assert prog[_target(prog, drop)] == I.mov_imm(0, I.TC_ACT_SHOT)
    assert prog[_target(prog, hold)] == I.mov_imm(1, 3)  # redirect to the holding device's ingress
    clone = prog.index(I.call(I.CLONE_REDIRECT))
    assert prog[clone - 2] == I.mov_imm(2, 2)  # the duplicate goes back to the same device
    assert prog[clone - 4] == I.store_w_imm(6, I.SKB_MARK, I.MARK)  # marked, so the copy passes
    assert prog[clone + 1] == I.store_w(6, I.SKB_MARK, 7)  # and the original gets its mark back
    marked = prog[2]
    assert (marked.code, marked.imm) == (I.JMP | I.JEQ | I.K, I.MARK)
    assert prog[_target(prog, 2)] == I.mov_imm(0, I.TC_ACT_OK)


def test_program_without_impairments_only_passes_and_reordering_needs_a_holding_device():
    prog = I.program(I.Impairment(), 2)
    assert I.call(I.GET_PRANDOM_U32) not in prog
    assert prog[-2:] == [I.mov_imm(0, I.TC_ACT_OK), I.exit_()]
    with pytest.raises(ValueError):
        I.program(I.Impairment(reorder=0.1), 2)


def test_a_duplicate_at_ingress_goes_back_to_ingress():
    prog = I.program(FULL, 2, 3, ingress=True)
    clone = prog.index(I.call(I.CLONE_REDIRECT))
    assert prog[clone - 1] == I.mov_imm(3, I.BPF_F_INGRESS)


def test_return_program_passes_only_marked_packets_to_the_impaired_ingress():
    prog = I.return_program(5)
    assert prog[1].code == I.JMP | I.JEQ | I.K and prog[1].imm == I.MARK
    assert prog[2] == I.mov_imm(0, I.TC_ACT_SHOT)
    marked = _target(prog, 1)
    assert prog[marked:] == [I.mov_imm(1, 5), I.mov_imm(2, I.BPF_F_INGRESS), I.call(I.REDIRECT), I.exit_()]


@pytest.mark.privileged
@pytest.mark.parametrize("imp", [FULL, I.Impairment(drop=0.5), I.Impairment(duplicate=0.5), I.Impairment()],
                         ids=["full", "drop", "duplicate", "none"])
@pytest.mark.parametrize("ingress", [False, True])
def test_the_verifier_accepts_the_program(imp, ingress):
    for prog in (I.program(imp, 1, 1, ingress=ingress), I.return_program(1)):
        fd = I.load(prog)
        assert fd >= 0
        os.close(fd)


N = 4000
PORT = 9999


@pytest.mark.privileged
def test_impaired_veth_drops_duplicates_and_reorders(netns):
    """What the far side's stack receives (the hook is at its ingress, after any packet tap, so
    the count is a kernel UDP socket's): every datagram checksummed, numbered, some missing,
    some twice, some after a later one."""
    from usnet.drivers.hostnet import NetNs

    imp = I.Impairment(drop=0.05, duplicate=0.05, reorder=0.20)
    with NetNs() as far, I.impaired_veth(netns, far, "10.97.0.1/24", "10.97.0.2/24", imp, delay=0.002):
        def receiver() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
            s.bind(("10.97.0.2", PORT))
            s.settimeout(0.5)
            return s

        rx = far.call(receiver)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # the neighbour first (ARP is not impaired; a datagram may be), then a bounded, paced burst
        for _ in range(20):
            tx.sendto(b"hello", ("10.97.0.2", PORT))
            try:
                rx.recv(2048)
                break
            except TimeoutError:
                continue
        for n in range(N):
            tx.sendto(struct.pack("!I", n) + bytes(100), ("10.97.0.2", PORT))
            if n % 50 == 49:
                time.sleep(0.0005)  # pacing, so the far side's backlog queue (1000) never overflows
        seqs: list[int] = []
        for _ in range(3 * N):  # bounded; ends when nothing arrived for 0.5 s
            try:
                d = rx.recv(2048)
            except TimeoutError:
                break
            if len(d) == 104:
                seqs.append(struct.unpack_from("!I", d)[0])
        rx.close()
        tx.close()
    unique = set(seqs)
    lost, dups = N - len(unique), len(seqs) - len(unique)
    late, high = 0, -1
    for s in seqs:
        late += s < high
        high = max(high, s)
    # expected: 200 lost, ~190 duplicated, ~760 late
    assert 0.02 * N <= lost <= 0.09 * N, (lost, dups, late)
    assert 0.02 * N <= dups <= 0.09 * N, (lost, dups, late)
    assert 0.10 * N <= late <= 0.30 * N, (lost, dups, late)
