"""A capture filter: a subset of pcap-filter(7) syntax, parsed and evaluated sans-I/O.

`usnet capture` sends the filter's text to the domain, which parses it here and
evaluates it on each frame of the netif before the monitor copies the frame, so
what does not match costs one parse of its headers and no copy. The client parses
the same text first, so a typo is refused before anything is opened.

Grammar (the words of pcap-filter(7); `&&`, `||` and `!` as in it too)::

    expr    := and ( ("or" | "||") and )*
    and     := unary ( ("and" | "&&") unary )*
    unary   := ("not" | "!") unary | "(" expr ")" | term
    term    := [dir] "host" ADDRESS | [dir] "net" ADDRESS/LEN
             | [PROTO] [dir] "port" N | "proto" (NAME | N) | PROTO
             | "ip" | "ip6" | "arp"
    dir     := "src" | "dst"
    PROTO   := "tcp" | "udp" | "icmp" | "icmp6"

`tcp port 80` is `tcp and port 80`, as in pcap-filter. Addresses are IPv4 or IPv6
literals (no names: the domain resolves nothing). `proto` matches the IP protocol
(IPv6: the header after the extension headers), `port` a TCP or UDP port of a
first fragment (a later fragment has none, as in BPF).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PROTOCOLS", "And", "Filter", "FilterError", "Host", "Kind", "Net", "Node", "Not", "Or", "Port",
           "Proto", "compile_filter", "frame_fields", "parse", "unparse"]

PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmp6": 58}
_NAMES = {v: k for k, v in PROTOCOLS.items()}
ETH_IP4, ETH_IP6, ETH_ARP, ETH_VLAN = 0x0800, 0x86DD, 0x0806, 0x8100
_IP6_EXT = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options: skipped to find the protocol
_FRAG6 = 44


class FilterError(ValueError):
    """The filter's text is not one this parser takes: the message says where and why."""


@dataclass(frozen=True)
class Host:
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    dir: str = ""  # "", "src" or "dst"


@dataclass(frozen=True)
class Net:
    net: ipaddress.IPv4Network | ipaddress.IPv6Network
    dir: str = ""


@dataclass(frozen=True)
class Port:
    port: int
    dir: str = ""
    proto: int = 0  # 0: TCP or UDP


@dataclass(frozen=True)
class Proto:
    proto: int  # an IP protocol number


@dataclass(frozen=True)
class Kind:
    what: str  # "ip", "ip6" or "arp": the frame's network protocol


@dataclass(frozen=True)
class Not:
    arg: Node


@dataclass(frozen=True)
class And:
    left: Node
    right: Node


@dataclass(frozen=True)
class Or:
    left: Node
    right: Node


Node = Host | Net | Port | Proto | Kind | Not | And | Or

_TOKEN = re.compile(r"\s*(?:(\(|\)|&&|\|\||!)|([A-Za-z0-9_.:/-]+))")


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    at = 0
    text = text.rstrip()
    while at < len(text):
        m = _TOKEN.match(text, at)
        if m is None or m.end() == at:
            raise FilterError(f"unexpected {text[at:].strip()[:20]!r} at column {at + 1}")
        out.append((m.group(1) or m.group(2)).lower())
        at = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.t = tokens
        self.i = 0

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise FilterError("the filter ends too early")
        self.i += 1
        return tok

    def expr(self) -> Node:
        node = self.conj()
        while self.peek() in ("or", "||"):
            self.i += 1
            node = Or(node, self.conj())
        return node

    def conj(self) -> Node:
        node = self.unary()
        while self.peek() in ("and", "&&"):
            self.i += 1
            node = And(node, self.unary())
        return node

    def unary(self) -> Node:
        tok = self.take()
        if tok in ("not", "!"):
            return Not(self.unary())
        if tok == "(":
            node = self.expr()
            if self.take() != ")":
                raise FilterError("a '(' is not closed")
            return node
        return self.term(tok)

    def term(self, tok: str) -> Node:
        if tok in ("ip", "ip6", "arp"):
            return Kind(tok)
        if tok == "proto":
            return Proto(_proto(self.take()))
        proto = 0
        if tok in PROTOCOLS:
            proto = PROTOCOLS[tok]
            if self.peek() not in ("port", "src", "dst"):
                return Proto(proto)
            tok = self.take()
        d = ""
        if tok in ("src", "dst"):
            d, tok = tok, self.take()
        if tok == "port":
            if proto not in (0, 6, 17):
                raise FilterError(f"{_NAMES[proto]} has no ports")
            return Port(_number(self.take(), 65535, "port"), d, proto)
        if proto:
            raise FilterError(f"expected 'port' after {_NAMES[proto]!r}, not {tok!r}")
        if tok == "host":
            return Host(_address(self.take()), d)
        if tok == "net":
            return Net(_network(self.take()), d)
        raise FilterError(f"unknown word {tok!r} (known: host, net, port, proto, tcp, udp, icmp, icmp6, "
                          f"ip, ip6, arp, src, dst, and, or, not)")


def _number(tok: str, top: int, what: str) -> int:
    if not tok.isdigit() or int(tok) > top:
        raise FilterError(f"{what} must be a number from 0 to {top}, not {tok!r}")
    return int(tok)


def _proto(tok: str) -> int:
    return PROTOCOLS[tok] if tok in PROTOCOLS else _number(tok, 255, "proto")


def _address(tok: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(tok)
    except ValueError:
        raise FilterError(f"not an IP address: {tok!r} (names are not resolved)") from None


def _network(tok: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(tok, strict=False)
    except ValueError:
        raise FilterError(f"not a network (ADDRESS/LEN): {tok!r}") from None


def parse(text: str) -> Node | None:
    """The filter's tree; None for an empty filter (everything matches). FilterError if malformed."""
    if len(text) > 4096:
        raise FilterError("a filter may be at most 4096 characters")
    tokens = _tokens(text)
    if not tokens:
        return None
    p = _Parser(tokens)
    try:
        node = p.expr()
    except RecursionError:
        raise FilterError("the filter is nested too deeply") from None
    if p.i != len(tokens):
        raise FilterError(f"unexpected {tokens[p.i]!r} after a complete filter")
    return node


def unparse(node: Node) -> str:
    """Text that `parse` reads back as `node` (fully parenthesised)."""
    d = (lambda x: f"{x.dir} " if x.dir else "")
    if isinstance(node, Host):
        return f"{d(node)}host {node.addr}"
    if isinstance(node, Net):
        return f"{d(node)}net {node.net}"
    if isinstance(node, Port):
        return (f"{_NAMES[node.proto]} " if node.proto else "") + f"{d(node)}port {node.port}"
    if isinstance(node, Proto):
        return f"proto {node.proto}"
    if isinstance(node, Kind):
        return node.what
    if isinstance(node, Not):
        return f"not ({unparse(node.arg)})"
    op = "and" if isinstance(node, And) else "or"
    return f"({unparse(node.left)}) {op} ({unparse(node.right)})"


# -- evaluation ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Fields:
    """What a filter looks at in one frame, parsed once."""

    ethertype: int
    src: int = -1  # the IP addresses as integers (-1: not IP)
    dst: int = -1
    version: int = 0  # 4, 6 or 0
    proto: int = -1
    sport: int = -1  # -1: no ports (not TCP/UDP, or a later fragment)
    dport: int = -1


_ETH = struct.Struct("!H")
_PORTS = struct.Struct("!HH")


def frame_fields(frame: bytes | bytearray | memoryview) -> Fields:
    """The fields of an Ethernet frame a filter reads; a short or damaged frame gives what it has."""
    n = len(frame)
    if n < 14:
        return Fields(-1)
    (et,) = _ETH.unpack_from(frame, 12)
    at = 14
    if et == ETH_VLAN and n >= 18:
        (et,) = _ETH.unpack_from(frame, 16)
        at = 18
    if et == ETH_IP4 and n >= at + 20:
        ihl = (frame[at] & 0x0F) * 4
        proto = frame[at + 9]
        src = int.from_bytes(frame[at + 12 : at + 16], "big")
        dst = int.from_bytes(frame[at + 16 : at + 20], "big")
        first = not (int.from_bytes(frame[at + 6 : at + 8], "big") & 0x1FFF)
        sport = dport = -1
        if first and proto in (6, 17) and n >= at + ihl + 4:
            sport, dport = _PORTS.unpack_from(frame, at + ihl)
        return Fields(et, src, dst, 4, proto, sport, dport)
    if et == ETH_IP6 and n >= at + 40:
        src = int.from_bytes(frame[at + 8 : at + 24], "big")
        dst = int.from_bytes(frame[at + 24 : at + 40], "big")
        nh, p = frame[at + 6], at + 40
        first = True
        for _ in range(8):  # bounded: a chain of extension headers
            if nh in _IP6_EXT and n >= p + 2:
                nh, p = frame[p], p + (frame[p + 1] + 1) * 8
            elif nh == _FRAG6 and n >= p + 8:
                first = not (int.from_bytes(frame[p + 2 : p + 4], "big") & 0xFFF8)
                nh, p = frame[p], p + 8
            else:
                break
        sport = dport = -1
        if first and nh in (6, 17) and n >= p + 4:
            sport, dport = _PORTS.unpack_from(frame, p)
        return Fields(et, src, dst, 6, nh, sport, dport)
    return Fields(et)


Filter = Callable[[Fields], bool]


def compile_filter(node: Node | None) -> Filter:
    """A predicate over `frame_fields(frame)`: closures built once, so a frame costs a few calls."""
    if node is None:
        return lambda f: True
    if isinstance(node, Kind):
        et = {"ip": ETH_IP4, "ip6": ETH_IP6, "arp": ETH_ARP}[node.what]
        return lambda f: f.ethertype == et
    if isinstance(node, Proto):
        pr = node.proto
        return lambda f: f.proto == pr
    if isinstance(node, Host):
        a, v = int(node.addr), node.addr.version
        if node.dir == "src":
            return lambda f: f.version == v and f.src == a
        if node.dir == "dst":
            return lambda f: f.version == v and f.dst == a
        return lambda f: f.version == v and (f.src == a or f.dst == a)
    if isinstance(node, Net):
        base, mask, v = int(node.net.network_address), int(node.net.netmask), node.net.version
        if node.dir == "src":
            return lambda f: f.version == v and f.src & mask == base
        if node.dir == "dst":
            return lambda f: f.version == v and f.dst & mask == base
        return lambda f: f.version == v and (f.src & mask == base or f.dst & mask == base)
    if isinstance(node, Port):
        port, pr = node.port, node.proto
        ok = (lambda f: f.proto in (6, 17)) if not pr else (lambda f: f.proto == pr)
        if node.dir == "src":
            return lambda f: ok(f) and f.sport == port
        if node.dir == "dst":
            return lambda f: ok(f) and f.dport == port
        return lambda f: ok(f) and (f.sport == port or f.dport == port)
    if isinstance(node, Not):
        inner = compile_filter(node.arg)
        return lambda f: not inner(f)
    left, right = compile_filter(node.left), compile_filter(node.right)
    if isinstance(node, And):
        return lambda f: left(f) and right(f)
    return lambda f: left(f) or right(f)
