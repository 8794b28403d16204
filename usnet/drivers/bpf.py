"""eBPF from Python: the instruction encoding, a label resolver, and bpf(2) for programs and maps.

Why here: two parts of usnet hand bytecode to the kernel without a compiler or libbpf: the
lossy-path impairment of `usnet bench lossy` (usnet.bench.impair, a tc classifier) and the
AF_XDP driver's XDP program (usnet.drivers.xdp). Both are a dozen to a few dozen
instructions, small enough to write out; what they share (how an instruction is encoded, how
jumps to labels become offsets, how a program or a map reaches the kernel) is declared once
here. The numbers are those of linux/bpf.h and linux/bpf_common.h.

A program is written as a list of `Insn`s and `(Insn, label)` pairs (a jump to a label) with
`Label`s marking places; `link` turns it into plain instructions, the offsets filled in.
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
    "ADD",
    "ALU",
    "ALU64",
    "AND",
    "BPF_F_INGRESS",
    "BPF_MAP_TYPE_HASH",
    "BPF_MAP_TYPE_XSKMAP",
    "BPF_PROG_TYPE_SCHED_CLS",
    "BPF_PROG_TYPE_SOCKET_FILTER",
    "BPF_PROG_TYPE_XDP",
    "CALL",
    "CLONE_REDIRECT",
    "DW",
    "END",
    "EXIT",
    "GET_PRANDOM_U32",
    "IMM",
    "IND",
    "JA",
    "JEQ",
    "JGT",
    "JLT",
    "JMP",
    "JMP32",
    "JNE",
    "LD",
    "LDX",
    "LSH",
    "MAP_LOOKUP_ELEM",
    "MEM",
    "MOD",
    "MOV",
    "REDIRECT",
    "REDIRECT_MAP",
    "ST",
    "STX",
    "TO_BE",
    "B",
    "H",
    "Insn",
    "K",
    "Label",
    "W",
    "X",
    "assemble",
    "call",
    "exit_",
    "jump",
    "ld_map_fd",
    "link",
    "load",
    "load_b",
    "load_h",
    "load_w",
    "map_create",
    "map_delete",
    "map_update",
    "mov_imm",
    "mov_reg",
    "store_w",
    "store_w_imm",
    "test_run",
]

# -- the instruction encoding (linux/bpf.h, linux/bpf_common.h) ---------------------------------------


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
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
# sizes (W 32, H 16, B 8, DW 64 bits) and modes (loads and stores)
W, H, B, DW = 0x00, 0x08, 0x10, 0x18
IMM, ABS, IND, MEM = 0x00, 0x20, 0x40, 0x60  # ABS/IND: a socket filter's packet loads (LD_ABS, LD_IND)
# sources: the immediate, or the source register
K, X = 0x00, 0x08
# operations
ADD, AND, LSH, MOD, MOV, END = 0x00, 0x50, 0x60, 0x90, 0xB0, 0xD0
TO_BE = 0x08  # END's source bit: host order to big-endian (imm: the width, 16, 32 or 64)
JA, JEQ, JGT, JNE, JLT, CALL, EXIT = 0x00, 0x10, 0x20, 0x50, 0xA0, 0x80, 0x90

# helpers (the numbers of enum bpf_func_id)
MAP_LOOKUP_ELEM, GET_PRANDOM_U32, CLONE_REDIRECT, REDIRECT, REDIRECT_MAP = 1, 7, 13, 23, 51
BPF_F_INGRESS = 1

# enum bpf_prog_type, enum bpf_map_type, enum bpf_cmd
BPF_PROG_TYPE_SOCKET_FILTER, BPF_PROG_TYPE_SCHED_CLS, BPF_PROG_TYPE_XDP = 1, 3, 6
BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_XSKMAP = 1, 17
BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_PROG_LOAD, BPF_PROG_TEST_RUN = 0, 2, 3, 5, 10
BPF_PSEUDO_MAP_FD = 1  # src of a 64-bit immediate load: the immediate is a map's fd


def mov_imm(dst: int, imm: int) -> Insn:
    return Insn(ALU64 | MOV | K, dst, 0, 0, imm)


def mov_reg(dst: int, src: int) -> Insn:
    return Insn(ALU64 | MOV | X, dst, src)


def load_w(dst: int, src: int, off: int) -> Insn:
    return Insn(LDX | MEM | W, dst, src, off)


def load_h(dst: int, src: int, off: int) -> Insn:
    return Insn(LDX | MEM | H, dst, src, off)


def load_b(dst: int, src: int, off: int) -> Insn:
    return Insn(LDX | MEM | B, dst, src, off)


def store_w(dst: int, off: int, src: int) -> Insn:
    return Insn(STX | MEM | W, dst, src, off)


def store_w_imm(dst: int, off: int, imm: int) -> Insn:
    return Insn(ST | MEM | W, dst, 0, off, imm)


def call(helper: int) -> Insn:
    return Insn(JMP | CALL, 0, 0, 0, helper)


def exit_() -> Insn:
    return Insn(JMP | EXIT)


def ld_map_fd(dst: int, fd: int) -> list[Insn]:
    """dst = the map open at `fd`: a 64-bit immediate load, two instruction slots, which the
    verifier turns into the map's address (src = BPF_PSEUDO_MAP_FD)."""
    return [Insn(LD | DW | IMM, dst, BPF_PSEUDO_MAP_FD, 0, fd), Insn(0)]


class Label(NamedTuple):
    """A place in a program that jumps name (see `link`)."""

    name: str


def jump(insn: Insn, label: str) -> tuple[Insn, str]:
    """`insn` (a conditional or plain jump) to `label`, its offset filled in by `link`."""
    return (insn, label)


def link(body: Sequence[Insn | Label | tuple[Insn, str]]) -> list[Insn]:
    """Plain instructions from a body with labels: each jump's offset becomes the distance to its
    label, counted in instruction slots after the jump (as the kernel counts)."""
    where: dict[str, int] = {}
    n = 0
    for item in body:
        if isinstance(item, Label):
            if item.name in where:
                raise ValueError(f"label {item.name!r} twice")
            where[item.name] = n
        else:
            n += 1
    out: list[Insn] = []
    for item in body:
        if isinstance(item, Label):
            continue
        if isinstance(item, Insn):
            out.append(item)
        else:
            insn, label = item
            out.append(insn._replace(off=where[label] - len(out) - 1))
    return out


def assemble(insns: Sequence[Insn]) -> bytes:
    return b"".join(i.encode() for i in insns)


# -- bpf(2) ---------------------------------------------------------------------------------------------

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "riscv64": 280, "ppc64le": 361, "s390x": 351}
_ATTR_SIZE = 128  # enough of union bpf_attr for every command used here; the rest zero


def _bpf(cmd: int, attr: bytearray, what: str, log: ctypes.Array[ctypes.c_char] | None = None) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf(2): no syscall number known for {platform.machine()}")
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    r = libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    if r < 0:
        err = ctypes.get_errno()
        extra = f"\n{log.value.decode(errors='replace')}" if log is not None and log.value else ""
        raise OSError(err, f"bpf({what}): {os.strerror(err)}{extra}")
    return int(r)


def load(insns: Sequence[Insn], prog_type: int, name: str = "usnet") -> int:
    """A file descriptor of the program, loaded as `prog_type`; the verifier's log in the error
    when it refuses."""
    code = ctypes.create_string_buffer(assemble(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 16)
    # union bpf_attr, the BPF_PROG_LOAD part: prog_type, insn_cnt, insns, license, log_level,
    # log_size, log_buf, kern_version, prog_flags, prog_name[16]; the rest zero
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<IIQQIIQII16s", attr, 0, prog_type, len(insns), ctypes.addressof(code),
                     ctypes.addressof(lic), 1, len(log), ctypes.addressof(log), 0, 0, name.encode()[:15])
    return _bpf(BPF_PROG_LOAD, attr, "BPF_PROG_LOAD", log)


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, name: str = "usnet",
               flags: int = 0) -> int:
    """A file descriptor of a new map (the map lives while a descriptor or a program holds it)."""
    # BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, map_flags, inner_map_fd,
    # numa_node, map_name[16]
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<IIIIIII16s", attr, 0, map_type, key_size, value_size, max_entries, flags, 0, 0,
                     name.encode()[:15])
    return _bpf(BPF_MAP_CREATE, attr, "BPF_MAP_CREATE")


def _elem_attr(fd: int, key: bytes, value: bytes | None, flags: int) -> tuple[bytearray, list[ctypes.Array]]:
    # BPF_MAP_*_ELEM: map_fd (u32, padded to 8), key (u64 pointer), value (u64 pointer), flags (u64)
    k = ctypes.create_string_buffer(key, len(key))
    keep: list[ctypes.Array] = [k]
    vaddr = 0
    if value is not None:
        v = ctypes.create_string_buffer(value, len(value))
        keep.append(v)
        vaddr = ctypes.addressof(v)
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<I4xQQQ", attr, 0, fd, ctypes.addressof(k), vaddr, flags)
    return attr, keep


def map_update(fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    """Set `key` to `value` in the map (flags 0: BPF_ANY, create or replace)."""
    attr, _keep = _elem_attr(fd, key, value, flags)
    _bpf(BPF_MAP_UPDATE_ELEM, attr, "BPF_MAP_UPDATE_ELEM")


def map_delete(fd: int, key: bytes) -> bool:
    """Remove `key` from the map; False if it was not there."""
    attr, _keep = _elem_attr(fd, key, None, 0)
    try:
        _bpf(BPF_MAP_DELETE_ELEM, attr, "BPF_MAP_DELETE_ELEM")
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def test_run(prog_fd: int, data: bytes) -> int:
    """The loaded program's verdict on one packet `data` (BPF_PROG_TEST_RUN, run once): how a
    test checks what a program does with a frame without sending one."""
    buf = ctypes.create_string_buffer(data, len(data))
    out = ctypes.create_string_buffer(len(data) + 256)
    # test: prog_fd, retval, data_size_in, data_size_out, data_in, data_out, repeat, duration
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into("<IIIIQQII", attr, 0, prog_fd, 0, len(data), len(out), ctypes.addressof(buf),
                     ctypes.addressof(out), 1, 0)
    _bpf(BPF_PROG_TEST_RUN, attr, "BPF_PROG_TEST_RUN")
    return int(struct.unpack_from("<I", attr, 4)[0])
