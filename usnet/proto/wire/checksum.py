"""The Internet checksum (RFC 1071), at C speed.

Why this shape: summing 16-bit words in a Python loop costs a bytecode round
per word. Instead, read the whole buffer as one big-endian integer. Because
2**16 == 1 (mod 0xFFFF), a number written in base 2**16 is congruent modulo
0xFFFF to the sum of its digits, so ``int.from_bytes(buf, "big") % 0xFFFF``
is the one's-complement sum of the 16-bit words, computed by two C loops.

Fix-ups, so the result equals the classic end-around-carry sum exactly:

* odd length: the buffer is padded with one zero byte at the end, i.e. the
  integer is shifted left by 8 bits;
* 0 versus 0xFFFF: both are "zero" in one's complement. The end-around-carry
  sum is 0 only when every word is 0; any other buffer whose sum is a
  multiple of 0xFFFF yields 0xFFFF. ``%`` gives 0 for both, so a non-zero
  input with a zero remainder is mapped to 0xFFFF.

The building block shared by every protocol module is the *accumulator*: a
non-negative int congruent to the sum of the words, which is zero only if
every contributing byte is zero. Accumulators add with ``+`` (for parts that
start at an even offset), and ``fold``/``finish`` turn them into a sum or a
checksum field. Fixed header fields therefore enter as plain ints with no
bytes ever built for them (see ``pseudo_sum_v4``).

Speed: ``n % 0xFFFF`` runs one hardware division per 30-bit digit of
``n``, a dependent chain costing about 1.3 ns a byte. For buffers of
`FOLD_MIN` bytes and more, `mod_ffff` first folds the integer in halves at
a multiple of 16 bits (2**(16k) == 1 mod 0xFFFF, so hi*2**(16k) + lo == hi +
lo): shifts, masks and adds are linear and cheap, and the final division
runs on a few hundred bits only. That roughly halves the cost for
MTU-sized packets and more for jumbo ones.

Verifying: a header or segment that carries a correct checksum sums to
0xFFFF, i.e. its accumulator is non-zero and divisible by 0xFFFF.

Pseudo-header for UDP/TCP over IPv4 (RFC 768, RFC 9293), 12 bytes:

    0      4      8     9      10       12
    | src  | dst  | 0   | proto | length |
"""

from __future__ import annotations

import struct

from usnet.proto.wire.errors import WireError

__all__ = [
    "FOLD_MIN", "acc", "checksum", "finish", "fold", "mod_ffff", "ones_sum", "pseudo_header_v4",
    "pseudo_sum_v4", "update16", "verifies",
]

_PSEUDO = struct.Struct("!4s4sxBH")
_from_bytes = int.from_bytes


FOLD_MIN = 1024  # bytes; below this a plain ``% 0xFFFF`` is as fast as folding
_FOLD_BITS = 8 * FOLD_MIN


def mod_ffff(n: int) -> int:
    """``n % 0xFFFF`` for a non-negative int, faster for big ``n`` (see module docstring)."""
    b = n.bit_length()
    while b > 2048:
        h = (b >> 5) << 4  # about half, a multiple of 16 bits
        n = (n >> h) + (n & ((1 << h) - 1))
        b = b - h + 1
    return n % 0xFFFF


def acc(buf) -> int:
    """Accumulator of ``buf`` (any bytes-like object) as if it starts at an even offset."""
    n = _from_bytes(buf, "big")
    if len(buf) & 1:
        n <<= 8
    return n


def fold(n: int) -> int:
    """One's-complement 16-bit sum (0..0xFFFF) of an accumulator."""
    r = n % 0xFFFF if n.bit_length() < _FOLD_BITS else mod_ffff(n)
    if r or not n:
        return r
    return 0xFFFF


def finish(n: int) -> int:
    """Checksum field value (the inverted sum) of an accumulator.

    The one final fold of the tree: every builder (IPv4, ICMP, ICMPv6, UDP,
    TCP, the IPv6 upper-layer sum) ends with it. UDP then writes a computed
    0 as 0xFFFF (``finish(n) or 0xFFFF``), 0 meaning "no checksum" there.
    """
    r = n % 0xFFFF if n.bit_length() < _FOLD_BITS else mod_ffff(n)
    if r or not n:
        return 0xFFFF - r
    return 0


def verifies(n: int) -> bool:
    """True if an accumulator over data *with* its checksum field sums to 0xFFFF (the data checks).

    An all-zero accumulator does not verify: its sum is 0, not 0xFFFF.
    """
    return n != 0 and (n % 0xFFFF if n.bit_length() < _FOLD_BITS else mod_ffff(n)) == 0


def ones_sum(buf) -> int:
    """16-bit one's-complement sum of the words of ``buf`` (zero-padded if odd)."""
    ln = len(buf)
    n = _from_bytes(buf, "big")
    if ln & 1:
        n <<= 8
    r = n % 0xFFFF if ln < FOLD_MIN else mod_ffff(n)
    if r or not n:
        return r
    return 0xFFFF


def checksum(*bufs) -> int:
    """Internet checksum of the concatenation of ``bufs``, without concatenating.

    Parts may have any length: appending a part of odd length L to what came
    before multiplies the earlier value by 256**L, which is 256 (mod 0xFFFF),
    so the running accumulator is shifted by 8 bits for each odd-length part.
    """
    if len(bufs) == 1:
        return finish(acc(bufs[0]))
    n = 0
    total = 0
    for b in bufs:
        ln = len(b)
        if ln & 1:
            n <<= 8
        n += _from_bytes(b, "big")
        total += ln
    if total & 1:
        n <<= 8
    return finish(n)


def _addr4(a) -> bytes:
    if len(a) != 4:
        raise WireError(f"IPv4 address must be 4 bytes, got {len(a)}")
    return a


def pseudo_header_v4(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    """The 12-byte IPv4 pseudo-header that UDP and TCP checksums cover."""
    try:
        return _PSEUDO.pack(_addr4(src), _addr4(dst), proto, length)
    except struct.error as e:
        raise WireError(f"bad pseudo-header field: {e}") from None


def pseudo_sum_v4(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Accumulator of the IPv4 pseudo-header, computed from the fields directly.

    A 32-bit address is congruent (mod 0xFFFF) to the sum of its two 16-bit
    halves, so the address ints are added whole.
    """
    return _from_bytes(src, "big") + _from_bytes(dst, "big") + proto + length


def update16(hc, old, new):
    """The header checksum `hc` after one 16-bit word of what it covers changed from `old` to `new`.

    RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'): a packet whose checksum was
    right stays right, and one whose checksum was wrong stays wrong by as
    much, so a check made after the rewrite says what it would have said
    before. Works on ints and, element-wise, on int64 numpy arrays (a batch
    of rows at once).
    """
    s = (~hc & 0xFFFF) + (~old & 0xFFFF) + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
