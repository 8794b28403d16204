"""eBPF in Python: the instruction encoding and bpf(BPF_PROG_LOAD) through ctypes, nothing more.

Shared by the tc programs of usnet.bench.impair and the TAP's queue steering program
(usnet.drivers.tap.steer_by_port). No compiler, no libbpf: a program is a list of `Insn`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from collections.abc import Sequence
from typing import NamedTuple

__all__ = [
    "ABS",
    "ALU64",
    "AND",
    "BPF_PROG_TYPE_SCHED_CLS",
    "BPF_PROG_TYPE_SOCKET_FILTER",
    "CALL",
    "EXIT",
    "IND",
    "JA",
    "JEQ",
    "JLT",
    "JMP",
    "JMP32",
    "JNE",
    "LD",
    "LDX",
    "LSH",
    "MOD",
    "ST",
    "STX",
    "B",
    "H",
    "Insn",
    "K",
    "assemble",
    "call",
    "exit_",
    "load",
    "load_w",
    "mov_imm",
    "mov_reg",
    "store_w",
    "store_w_imm",
]


class Insn(NamedTuple):
    """One eBPF instruction, `struct bpf_insn`: opcode, destination and source registers (4 bits
    each, dst in the low nibble on a little-endian machine), a signed 16-bit offset and a signed
    32-bit immediate, eight bytes in all."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self) -> bytes:
        imm = self.imm - (1 << 32) if self.imm >= 1 << 31 else self.imm  # an unsigned 32-bit pattern, as s32
        return struct.pack("<BBhi", self.code, (self.src << 4) | self.dst, self.off, imm)


# instruction classes
LD, LDX, ST, STX, ALU64, JMP, JMP32 = 0x00, 0x01, 0x02, 0x03, 0x07, 0x05, 0x06
# sizes and modes (loads and stores)
W, H, B, MEM, ABS, IND = 0x00, 0x08, 0x10, 0x60, 0x20, 0x40
# sources
K, X = 0x00, 0x08
# operations
AND, LSH, MOD, MOV = 0x50, 0x60, 0x90, 0xB0
JA, JEQ, JNE, JLT, CALL, EXIT = 0x00, 0x10, 0x50, 0xA0, 0x80, 0x90

BPF_PROG_TYPE_SOCKET_FILTER, BPF_PROG_TYPE_SCHED_CLS = 1, 3


def mov_imm(dst: int, imm: int) -> Insn:
    return Insn(ALU64 | MOV | K, dst, 0, 0, imm)


def mov_reg(dst: int, src: int) -> Insn:
    return Insn(ALU64 | MOV | X, dst, src)


def load_w(dst: int, src: int, off: int) -> Insn:
    return Insn(LDX | MEM | W, dst, src, off)


def store_w(dst: int, off: int, src: int) -> Insn:
    return Insn(STX | MEM | W, dst, src, off)


def store_w_imm(dst: int, off: int, imm: int) -> Insn:
    return Insn(ST | MEM | W, dst, 0, off, imm)


def call(helper: int) -> Insn:
    return Insn(JMP | CALL, 0, 0, 0, helper)


def exit_() -> Insn:
    return Insn(JMP | EXIT)


def assemble(insns: Sequence[Insn]) -> bytes:
    return b"".join(i.encode() for i in insns)


_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "riscv64": 280, "ppc64le": 361, "s390x": 351}
BPF_PROG_LOAD = 5


def load(insns: Sequence[Insn], name: str, prog_type: int = BPF_PROG_TYPE_SCHED_CLS) -> int:
    """A file descriptor of the program, loaded as `prog_type`; the verifier's log in the
    error when it refuses."""
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf(2): no syscall number known for {platform.machine()}")
    code = ctypes.create_string_buffer(assemble(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 16)
    # union bpf_attr, the BPF_PROG_LOAD part: prog_type, insn_cnt, insns, license, log_level,
    # log_size, log_buf, kern_version, prog_flags, prog_name[16]; the rest zero
    attr = bytearray(128)
    struct.pack_into("<IIQQIIQII16s", attr, 0, prog_type, len(insns), ctypes.addressof(code),
                     ctypes.addressof(lic), 1, len(log), ctypes.addressof(log), 0, 0, name.encode()[:15])
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(nr), ctypes.c_int(BPF_PROG_LOAD), buf, ctypes.c_uint(len(attr)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(BPF_PROG_LOAD): {os.strerror(err)}\n{log.value.decode(errors='replace')}")
    return int(fd)
