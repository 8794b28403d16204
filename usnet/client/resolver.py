"""Names for usnet's socket face, resolved as the host's resolver (glibc) would, over usnet.

`getaddrinfo`, `gethostbyname`, `gethostbyname_ex`, `gethostbyaddr` and
`getnameinfo` here are what `usnet.socket` exports under the same names.
Numeric addresses come first, always; then the sources of the ``hosts:`` line
of /etc/nsswitch.conf (`configure(nsswitch=...)` / ``USNET_NSSWITCH``), in
its order and with its ``[STATUS=action]`` items, as glibc follows them
(`NssSource`): ``files`` and ``dns`` are done here; ``myhostname`` answers
``localhost`` (as systemd's nss-myhostname does); any other source
(``mdns4_minimal``, ``resolve``, ...) is one usnet does not have, so it is
UNAVAIL, as a module glibc cannot load. With no such line, glibc's default
``dns [!UNAVAIL=return] files``. With the usual ``hosts: files dns``:

1. numeric addresses, parsed as glibc parses them (``inet_aton`` for IPv4,
   so ``"1.2"`` is 1.0.0.2; IPv6 with a ``%scope``), with no lookup at all;
2. the hosts file (/etc/hosts, or `configure(hosts=...)` / ``USNET_HOSTS``),
   every matching line (``multi on``), the first name on the first line as
   the canonical name;
3. ``localhost`` and names under ``.localhost`` (RFC 6761), which never go
   to DNS: the ``dns`` source answers them itself with the loopback addresses;
4. DNS, over usnet's own UDP (`Client.udp_socket`) to the resolvers of
   /etc/resolv.conf (its ``search``, ``ndots``, ``timeout``, ``attempts`` and
   ``rotate``), or to those of `configure(nameservers=...)` or
   ``USNET_RESOLVER`` (``"10.0.0.53,[fd00::53]:5353"``). A and AAAA go out
   together; each server is tried in turn, ``attempts`` rounds; an answer
   with TC set is asked again over usnet TCP. Answers are accepted only from
   the server asked (the flow is connected to it), with the id and the
   question we sent.

The DNS messages themselves are usnet.proto.dns (sans-I/O); the configuration files
(resolv.conf, the hosts file, nsswitch.conf) are read by usnet.client.nameconf. Errors are the
standard module's `socket.gaierror` with glibc's EAI codes and messages;
the result has the standard module's shape (5-tuples, `AddressFamily` and
`SocketKind` members) and order: glibc's socket-type table decides which
(type, protocol) pairs a service yields, and several addresses are sorted
by RFC 6724's rules as they apply to usnet and as glibc applies them, with glibc's default
policy table (an address family the netif lacks comes last; then an address whose scope, then
whose label, matches the netif's address it would be reached from; then precedence, where
glibc's table puts IPv6 before IPv4; then the smaller scope, then the longest prefix shared
with the netif's address: for IPv4 only inside its subnet). The tables are /etc/gai.conf's when it
has any (`configure(gai_conf=...)` / ``USNET_GAI_CONF`` for another file), read as glibc reads
it: once, and again only with ``reload yes`` (usnet.client.gaiconf).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import socket as _std
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from usnet.client.gaiconf import DEFAULT as DEFAULT_POLICY
from usnet.client.gaiconf import Policy
from usnet.client.gaiconf import policy as gai_policy
from usnet.client.nameconf import (
    NOTFOUND,
    NSS_DEFAULT,
    SUCCESS,
    TRYAGAIN,
    UNAVAIL,
    Hosts,
    NssSource,
    ResolvConf,
    configure,
    parse_nsswitch,
    parse_servers,
    read_cached,
    settings,
)
from usnet.proto import dns

if TYPE_CHECKING:
    from usnet.client.datagram import DatagramSocket
    from usnet.client.session import Client

__all__ = [
    "NSS_DEFAULT", "NssSource", "Resolver", "configure", "getaddrinfo", "gethostbyaddr", "gethostbyname",
    "gethostbyname_ex", "getnameinfo", "parse_nsswitch",
]

AF_INET, AF_INET6, AF_UNSPEC = int(_std.AF_INET), int(_std.AF_INET6), int(_std.AF_UNSPEC)
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_SEQPACKET = 1, 2, 3, 5
SOCK_DCCP = 6
AI_PASSIVE, AI_CANONNAME, AI_NUMERICHOST, AI_V4MAPPED, AI_ALL, AI_ADDRCONFIG, AI_NUMERICSERV = (
    0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x400)  # glibc's values, as the standard module has them
AI_IDN, AI_CANONIDN = 0x40, 0x80  # glibc's; the standard module does not name them
_AI_DEPRECATED_IDN = 0x100 | 0x200  # AI_IDN_ALLOW_UNASSIGNED, AI_IDN_USE_STD3_ASCII_RULES: accepted, ignored
_AI_ALLOWED = (AI_PASSIVE | AI_CANONNAME | AI_NUMERICHOST | AI_ADDRCONFIG | AI_V4MAPPED | AI_IDN | AI_CANONIDN
               | AI_NUMERICSERV | AI_ALL | _AI_DEPRECATED_IDN)
NI_NUMERICHOST, NI_NUMERICSERV, NI_NOFQDN, NI_NAMEREQD, NI_DGRAM = (
    _std.NI_NUMERICHOST, _std.NI_NUMERICSERV, _std.NI_NOFQDN, _std.NI_NAMEREQD, _std.NI_DGRAM)
_NI_ALLOWED = 0xFF  # the above, NI_IDN and its two deprecated companions, as glibc accepts
_NI_NUMERICSCOPE = 0x100

# glibc's messages (gai_strerror), which the standard module's gaierror carries.
_EAI_TEXT = {
    _std.EAI_BADFLAGS: "Bad value for ai_flags",
    _std.EAI_NONAME: "Name or service not known",
    _std.EAI_AGAIN: "Temporary failure in name resolution",
    _std.EAI_FAIL: "Non-recoverable failure in name resolution",
    _std.EAI_NODATA: "No address associated with hostname",
    _std.EAI_FAMILY: "ai_family not supported",
    _std.EAI_SOCKTYPE: "ai_socktype not supported",
    _std.EAI_SERVICE: "Servname not supported for ai_socktype",
    _std.EAI_ADDRFAMILY: "Address family for hostname not supported",
    _std.EAI_MEMORY: "Memory allocation failure",
    _std.EAI_SYSTEM: "System error",
}
EAI_NODATA: int = _std.EAI_NODATA
EAI_ADDRFAMILY: int = _std.EAI_ADDRFAMILY


def _gai(code: int) -> _std.gaierror:
    return _std.gaierror(code, _EAI_TEXT.get(code, "Unknown error"))


# glibc's table of socket types and protocols (sysdeps/posix/getaddrinfo.c, gaih_inet_typeproto):
# (socktype, protocol, any protocol, no service, returned by default, protocol name for getservbyname).
_TYPEPROTO = (
    (SOCK_STREAM, 6, False, False, True, "tcp"),
    (SOCK_DGRAM, 17, False, False, True, "udp"),
    (SOCK_DCCP, 33, False, False, False, "dccp"),
    (SOCK_DGRAM, 136, False, False, False, "udplite"),
    (SOCK_STREAM, 132, False, False, False, "sctp"),
    (SOCK_SEQPACKET, 132, False, False, False, "sctp"),
    (SOCK_RAW, 0, True, True, True, "raw"),
)


@dataclass
class Found:
    """What a name lookup found: the canonical name, the aliases that led to it, the addresses."""

    canonical: str
    aliases: list[str]
    addresses: list[tuple[int, str]]  # (family, address text)


class _Failed(Exception):
    """A DNS lookup found nothing: `code` is the EAI code it comes to."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


_QTYPE_FAMILY = {dns.TYPE_A: AF_INET, dns.TYPE_AAAA: AF_INET6}
# (IPv4, IPv6, IPv6 link-local) interfaces of a netif, each None where it has none; the tuple
# None when usnet could not say
_Ifaces = tuple[ipaddress.IPv4Interface | None, ipaddress.IPv6Interface | None, ipaddress.IPv6Interface | None]
_netif_cache: dict[tuple[int, str], tuple[float, _Ifaces | None]] = {}


class Resolver:
    """Name lookups through one usnet client and netif; `where()` gives them, asked only when DNS or
    the netif's addresses are needed (numeric names and the hosts file need no usnet at all).

    `nameservers`, `hosts`, `resolv_conf`, `timeout`, `attempts`, `nsswitch`, `gai_conf`: as for `configure`, for this
    resolver only. `tcp_connect(server, timeout)`: a connected TCP socket to a nameserver, for
    truncated answers (default: a usnet.socket on the same client and netif).
    """

    def __init__(self, where: Callable[[], tuple[Client, str]], *, nameservers: list[str] | str | None = None,
                 hosts: str | None = None, resolv_conf: str | None = None, timeout: float | None = None,
                 attempts: int | None = None, tcp_connect: Callable[[tuple[str, int], float], Any] | None = None,
                 nsswitch: str | None = None, gai_conf: str | None = None) -> None:
        self._where = where
        self._gai_path = gai_conf
        self._nss_path = nsswitch
        self._servers = None if nameservers is None else parse_servers(nameservers)
        self._hosts_path = hosts
        self._resolv_path = resolv_conf
        self._timeout = timeout
        self._attempts = attempts
        self._tcp_connect = tcp_connect or self._usnet_tcp

    # -- configuration, as of this call --

    def hosts(self) -> Hosts:
        path = self._hosts_path or settings().hosts or os.environ.get("USNET_HOSTS") or "/etc/hosts"
        hosts: Hosts = read_cached(path, Hosts.parse)
        return hosts

    def sources(self) -> list[NssSource]:
        """The ``hosts:`` sources of nsswitch.conf, in order (reread when the file changes)."""
        path = self._nss_path or settings().nsswitch or os.environ.get("USNET_NSSWITCH") or "/etc/nsswitch.conf"
        got: list[NssSource] = read_cached(path, parse_nsswitch)
        return got

    def conf(self) -> ResolvConf:
        path = self._resolv_path or settings().resolv_conf or "/etc/resolv.conf"
        base: ResolvConf = read_cached(path, ResolvConf.parse)
        servers = self._servers or settings().nameservers
        env = os.environ.get("USNET_RESOLVER")
        if servers is None and env:
            servers = parse_servers(env)
        return ResolvConf(servers or base.nameservers, base.search, base.ndots,
                          self._timeout or settings().timeout or base.timeout,
                          self._attempts or settings().attempts or base.attempts, base.rotate)

    def policy(self) -> Policy:
        """gai.conf's tables, read as glibc reads them (`usnet.client.gaiconf.policy`)."""
        return gai_policy(self._gai_path or settings().gai_conf or os.environ.get("USNET_GAI_CONF")
                          or "/etc/gai.conf")

    def families(self) -> tuple[bool, bool, bool]:
        """(IPv4, IPv6, IPv6 link-local) addresses on the netif, none of them loopback, as
        AI_ADDRCONFIG and the sorting rules ask of the host's interfaces; (True, True, True) when
        usnet cannot say."""
        return _families(self.interfaces())

    def interfaces(self) -> _Ifaces | None:
        """The netif's (IPv4, IPv6, IPv6 link-local) interface addresses with their prefixes, each
        None where it has none: the source addresses that glibc's sorting finds by connecting a
        datagram socket to each destination. None when usnet cannot say. Asked of usnetd at most
        every 2 s."""
        try:
            client, netif = self._where()
        except OSError:
            return None
        key = (id(client), netif)
        now = time.monotonic()
        hit = _netif_cache.get(key)
        if hit is not None and now - hit[0] < 2.0:
            return hit[1]
        try:
            info = next(n["netif"] for n in client.status()["netifs"] if n["netif"]["name"] == netif)
        except (OSError, StopIteration, KeyError, ValueError):
            return None

        def iface(v: Any, kind: Callable[[str], Any], default_prefix: str) -> Any:
            if v in (None, "None"):
                return None
            try:
                return kind(v if "/" in str(v) else f"{v}/{default_prefix}")
            except ValueError:
                return None

        got = (iface(info.get("address"), ipaddress.IPv4Interface, "32"),
               iface(info.get("address6"), ipaddress.IPv6Interface, "128"),
               iface(info.get("link_local6"), ipaddress.IPv6Interface, "64"))
        _netif_cache[key] = (now, got)
        return got

    # -- forward --

    def lookup(self, name: str, family: int) -> Found:
        """The addresses of a name (not numeric) of `family` (0: both), from the sources of
        nsswitch.conf's ``hosts:`` line in order (`sources`). Raises gaierror: DNS's error if DNS
        was asked and failed, else "not known"."""
        failed: _Failed | None = None
        for src in self.sources():
            found: Found | None = None
            if src.name == "files":
                found, status = self._from_files(name, family), SUCCESS
            elif src.name in ("dns", "myhostname"):
                found, status = _localhost(name, family), SUCCESS
                if found is None and src.name == "dns":  # localhost names never go to DNS (RFC 6761)
                    qtypes = {AF_INET: [dns.TYPE_A], AF_INET6: [dns.TYPE_AAAA]}.get(
                        family, [dns.TYPE_A, dns.TYPE_AAAA])
                    try:
                        found = self._search(name, qtypes)
                    except _Failed as e:
                        failed, status = e, _nss_status(e.code)
            else:
                status = UNAVAIL  # a source usnet does not have: as a module glibc cannot load
            if found is None and status == SUCCESS:
                status = NOTFOUND
            if found is not None:
                return found  # SUCCESS=continue is for merging groups; a host's answer is final
            if src.stops(status):
                break
        if failed is not None:
            raise _gai(failed.code) from failed.__cause__
        raise _gai(_std.EAI_NONAME)

    def _from_files(self, name: str, family: int) -> Found | None:
        """The hosts file's answer, or None."""
        entries = self.hosts().by_name(name, family)
        if not entries:
            return None
        # glibc's merge of several lines: the first line's aliases, then each later line's
        # aliases and its own name, leaving out the first line's name
        canonical = entries[0].canonical
        aliases = list(entries[0].aliases)
        for e in entries[1:]:
            aliases += [a for a in (*e.aliases, e.canonical) if a != canonical and a not in aliases]
        return Found(canonical, aliases, [(e.family, e.address) for e in entries])

    def _search(self, name: str, qtypes: list[int]) -> Found:
        """glibc's res_nsearch: the name as it is first when it has `ndots` dots (or ends in one: then
        only that); then with each search domain, on through "no such name" and "no data"; then as
        it is, if not yet asked. The error is the first as-is answer's, else "no data" if a search
        name had no data, else the last one's."""
        conf = self.conf()
        try:
            dns.encode_name(name)
        except dns.DnsError:
            raise _Failed(_std.EAI_NONAME) from None
        trailing = name.endswith(".")
        saved: int | None = None
        last = _std.EAI_NONAME
        cause: BaseException | None = None  # why usnet could not ask, if that was why
        if trailing or name.count(".") >= conf.ndots:
            try:
                return self._ask(name, qtypes, conf)
            except _Failed as e:
                if trailing:
                    raise
                saved = last = e.code
                cause = e.__cause__
        nodata = False
        for domain in conf.search:
            try:
                return self._ask(f"{name}.{domain}", qtypes, conf)
            except _Failed as e:
                last = e.code
                cause = cause or e.__cause__
                if e.code == EAI_NODATA:
                    nodata = True
                elif e.code != _std.EAI_NONAME:
                    break  # a server failure: glibc stops searching
        if saved is None:
            try:
                return self._ask(name, qtypes, conf)
            except _Failed as e:
                last = e.code
                cause = e.__cause__
        raise _Failed(saved if saved is not None else EAI_NODATA if nodata else last) from cause

    def _ask(self, qname: str, qtypes: list[int], conf: ResolvConf) -> Found:
        """One name, A and/or AAAA, over DNS: the addresses of the answers, following CNAMEs."""
        answers = self._exchange(qname, qtypes, conf)
        canonical, aliases = qname.rstrip(".") or ".", []
        addresses: list[tuple[int, str]] = []
        nxdomain = True
        for qt in qtypes:
            msg = answers.get(qt)
            if msg is None:
                continue
            if msg.header.rcode == dns.NOERROR:
                nxdomain = False
            cur, chain = qname, []
            for _ in range(16):  # a CNAME chain longer than this is a loop
                step = next((r for r in msg.answers if r.rtype == dns.TYPE_CNAME
                             and dns.name_key(r.name) == dns.name_key(cur)), None)
                if step is None or step.value is None:
                    break
                chain.append(cur.rstrip("."))
                cur = step.value
            got = [(_QTYPE_FAMILY[qt], r.value) for r in msg.answers if r.rtype == qt and r.rclass == dns.CLASS_IN
                   and r.value is not None and dns.name_key(r.name) == dns.name_key(cur)]
            if got and not addresses:
                canonical, aliases = cur.rstrip("."), chain
            addresses += got
        if addresses:
            return Found(canonical, aliases, addresses)
        if len(answers) < len(qtypes):
            raise _Failed(_std.EAI_AGAIN)  # a server failed or none answered (glibc: TRY_AGAIN)
        raise _Failed(_std.EAI_NONAME if nxdomain else EAI_NODATA)

    # -- the wire --

    def _exchange(self, qname: str, qtypes: list[int], conf: ResolvConf) -> dict[int, dns.Message]:
        """Ask every server in turn, `attempts` rounds, for each qtype; the answers (NOERROR or
        NXDOMAIN) by qtype. A qtype missing from the result had no usable answer."""
        try:
            client, netif = self._where()
        except OSError as e:  # no usnetd: as glibc with no nameserver in reach, the cause chained
            raise _Failed(_std.EAI_AGAIN) from e
        servers = list(conf.nameservers)
        if conf.rotate and len(servers) > 1:
            k = secrets.randbelow(len(servers))
            servers = servers[k:] + servers[:k]
        answers: dict[int, dns.Message] = {}
        sent: dict[int, int] = {}  # query id -> qtype
        socks: dict[tuple[str, int], DatagramSocket] = {}
        try:
            for _round in range(conf.attempts):
                for server in servers:
                    pending = [qt for qt in qtypes if qt not in answers]
                    if not pending:
                        return answers
                    try:
                        sock = socks.get(server)
                        if sock is None:
                            ver = ipaddress.ip_address(server[0]).version
                            sock = socks[server] = client.udp_socket(netif, 0, remote=server, family=ver)
                        for qt in pending:
                            ident = secrets.randbits(16)
                            while ident in sent:
                                ident = secrets.randbits(16)
                            sent[ident] = qt
                            sock.sendto(dns.query(ident, qname, qt), server)
                        self._collect(sock, server, qname, sent, answers, pending, conf.timeout)
                    except OSError:
                        continue  # refused (ICMP port unreachable), no route: the next server
            return answers
        finally:
            for s in socks.values():
                with contextlib.suppress(Exception):
                    s.close()

    def _collect(self, sock: DatagramSocket, server: tuple[str, int], qname: str, sent: dict[int, int],
                 answers: dict[int, dns.Message], pending: list[int], timeout: float) -> None:
        """Read answers from one server until it has answered or failed every pending qtype, or
        `timeout` passes."""
        deadline = time.monotonic() + timeout
        want = dns.name_key(qname)
        waiting = set(pending)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                got = sock.recv_many(16, left)
            except BlockingIOError:
                return
            for data, src in got:
                if (src[0], src[1]) != server:
                    continue
                try:
                    msg = dns.parse_message(data)
                except dns.DnsError:
                    continue
                qt = sent.get(msg.header.id)
                if (qt not in waiting or not msg.header.qr or len(msg.questions) != 1
                        or dns.name_key(msg.questions[0].name) != want or msg.questions[0].qtype != qt):
                    continue  # not an answer to what we asked here (a late one, or forged)
                if msg.header.tc:
                    full = self._over_tcp(server, qname, qt, timeout)
                    if full is None:
                        waiting.discard(qt)
                        continue
                    msg = full
                waiting.discard(qt)
                if msg.header.rcode in (dns.NOERROR, dns.NXDOMAIN):
                    answers[qt] = msg
                # else SERVFAIL, REFUSED, ...: not from this server; the next one is asked

    def _over_tcp(self, server: tuple[str, int], qname: str, qtype: int, timeout: float) -> dns.Message | None:
        """Ask again over TCP (a truncated answer); None if that fails."""
        ident = secrets.randbits(16)
        q = dns.query(ident, qname, qtype)
        deadline = time.monotonic() + timeout
        try:
            s = self._tcp_connect(server, timeout)
        except OSError:
            return None
        try:
            s.sendall(len(q).to_bytes(2, "big") + q)
            buf = b""
            need = 2
            while len(buf) < need:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                s.settimeout(left)
                chunk = s.recv(65536)
                if not chunk:
                    return None
                buf += chunk
                if need == 2 and len(buf) >= 2:
                    need = 2 + int.from_bytes(buf[:2], "big")
            msg = dns.parse_message(buf[2:need])
        except (OSError, dns.DnsError):
            return None
        finally:
            with contextlib.suppress(Exception):
                s.close()
        if (msg.header.id != ident or not msg.header.qr or len(msg.questions) != 1
                or dns.name_key(msg.questions[0].name) != dns.name_key(qname) or msg.questions[0].qtype != qtype):
            return None
        return msg

    def _usnet_tcp(self, server: tuple[str, int], timeout: float) -> Any:
        from usnet.client import socket as us  # here, not at the top: usnet.client.socket imports this module

        client, netif = self._where()
        fam = AF_INET6 if ipaddress.ip_address(server[0]).version == 6 else AF_INET
        s = us.socket(fam, SOCK_STREAM, client=client, netif=netif)
        s.settimeout(timeout)
        try:
            s.connect(server)
        except BaseException:
            s.close()
            raise
        return s

    # -- reverse --

    def reverse(self, address: str) -> tuple[str, list[str]] | None:
        """(name, aliases) of an address, from the sources of nsswitch.conf's ``hosts:`` line in
        order (the hosts file, a DNS PTR query); None if none knows; _Failed if DNS gave no answer."""
        failed: _Failed | None = None
        for src in self.sources():
            got: tuple[str, list[str]] | None = None
            status = SUCCESS
            if src.name == "files":
                e = self.hosts().by_address(address)
                got = None if e is None else (e.canonical, list(e.aliases))
            elif src.name in ("dns", "myhostname"):
                if ipaddress.ip_address(address).is_loopback:
                    got = ("localhost", [])
                elif src.name == "dns":
                    try:
                        got = self._ptr(address)
                    except _Failed as e:
                        failed, status = e, _nss_status(e.code)
            else:
                status = UNAVAIL
            if got is not None:
                return got
            if status == SUCCESS:
                status = NOTFOUND
            if src.stops(status):
                break
        if failed is not None:
            raise failed
        return None

    def _ptr(self, address: str) -> tuple[str, list[str]] | None:
        """A DNS PTR query's name; None if DNS has none (or usnet cannot ask); _Failed if no answer."""
        conf = self.conf()
        try:
            msg = self._exchange(dns.reverse_name(address), [dns.TYPE_PTR], conf).get(dns.TYPE_PTR)
        except OSError:
            return None
        if msg is None:
            raise _Failed(_std.EAI_AGAIN)
        for r in msg.answers:
            if r.rtype == dns.TYPE_PTR and r.value:
                return r.value.rstrip("."), []
        return None


def _localhost(name: str, family: int) -> Found | None:
    """``localhost`` and names under ``.localhost`` (RFC 6761): the loopback addresses, never DNS."""
    key = name.lower().rstrip(".")
    if key != "localhost" and not key.endswith(".localhost"):
        return None
    local = [(AF_INET6, "::1"), (AF_INET, "127.0.0.1")]
    return Found("localhost", [], [a for a in local if family in (0, a[0])])


def _nss_status(code: int) -> str:
    """The NSS status of a DNS failure, as glibc's nss_dns gives it: no such name or no data is
    NOTFOUND, no answer (EAI_AGAIN) TRYAGAIN, anything else (a server failure) UNAVAIL."""
    if code in (_std.EAI_NONAME, EAI_NODATA):
        return NOTFOUND
    return TRYAGAIN if code == _std.EAI_AGAIN else UNAVAIL


# -- the standard module's functions -----------------------------------------------------------------


def _host_bytes(host: object, what: str) -> str | None:
    """The host as the standard module passes it to C: IDNA for text, bytes as given."""
    if host is None:
        return None
    if isinstance(host, str):
        if host.isascii():
            # what the codec gives for ASCII: the text itself, or a UnicodeError we would answer
            # with the text itself; without importing encodings.idna (stringprep, unicodedata),
            # some 10 ms of a process's first connect
            return host
        try:
            return host.encode("idna").decode("ascii")
        except UnicodeError:
            if host.isascii():
                return host
            raise
    if isinstance(host, (bytes, bytearray)):
        return bytes(host).decode("latin-1")
    raise TypeError(f"{what} argument 1 must be string or None")


def _service_text(port: object) -> str | None:
    if port is None:
        return None
    if isinstance(port, bool) or not isinstance(port, (int, str, bytes, bytearray)):
        if isinstance(port, bool):
            return str(int(port))
        raise OSError("Int or String expected")
    if isinstance(port, int):
        return str(port)
    if isinstance(port, (bytes, bytearray)):
        return bytes(port).decode("latin-1")
    return port


def _strtoul_int(s: str) -> int | None:
    """glibc's ``(int) strtoul(s, &end, 10)`` when all of `s` is used, else None: what decides
    whether a service is a number (so "+80" and " 80" are, "80 " is not, and "-1" is not)."""
    t = s.lstrip(" \t\n\v\f\r")
    neg = t.startswith("-")
    if t[:1] in "+-" and t:
        t = t[1:]
    if not t or not t.isascii() or not t.isdigit():
        return None
    v = int(t)
    v = 0xFFFFFFFFFFFFFFFF if v > 0xFFFFFFFFFFFFFFFF else (-v if neg else v) & 0xFFFFFFFFFFFFFFFF
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _service_number(service: str | None, flags: int) -> int | None:
    """The port of a numeric service; None for a name (or none). getaddrinfo itself decides this,
    before it looks at the socket type; a number that is negative as a C int is then looked up as
    a name (and so never found), as glibc does."""
    if not service:
        return None  # none, or "": glibc skips an empty service here
    num = _strtoul_int(service)
    if num is None and flags & AI_NUMERICSERV:
        raise _gai(_std.EAI_NONAME)
    return None if num is None or num < 0 else num


def _servtuples(service: str | None, num: int | None, socktype: int, proto: int) -> list[tuple[int, int, int]]:
    """(socktype, protocol, port) to return, as glibc's gaih_inet works them out."""
    table = _TYPEPROTO
    chosen = None
    if proto or socktype:
        chosen = next((t for t in table if (not socktype or socktype == t[0])
                       and (not proto or t[2] or proto == t[1])), None)
        if chosen is None:
            raise _gai(_std.EAI_SOCKTYPE if socktype else _std.EAI_SERVICE)
    if service is not None:
        if chosen is not None and chosen[3]:
            raise _gai(_std.EAI_SERVICE)
        if num is None:
            out = []
            for t in table if chosen is None else (chosen,):
                if t[3] or (socktype and socktype != t[0]) or (proto and not t[2] and proto != t[1]):
                    continue
                try:
                    port = _std.getservbyname(service, t[5])
                except OSError:
                    if chosen is not None:
                        raise _gai(_std.EAI_SERVICE) from None
                    continue
                out.append((t[0], proto if t[2] else t[1], port))
            if not out:
                raise _gai(_std.EAI_SERVICE)
            return out
    port = (num or 0) & 0xFFFF
    if chosen is not None:
        return [(chosen[0], proto if chosen[2] else chosen[1], port)]
    return [(t[0], t[1], port) for t in table if t[4]]


def _numeric(host: str) -> tuple[int, str, int] | None:
    """(family, address, scope id) if `host` is a numeric address as glibc reads one, else None."""
    if host and host.split() == [host]:  # no white space (str.isspace's), in one C call, not a generator
        try:
            return AF_INET, _std.inet_ntoa(_std.inet_aton(host)), 0  # inet_aton: "1.2", "0x7f.1", "01.2.3.4"
        except OSError:
            pass
    addr, pct, scope = host.partition("%")
    try:
        packed = _std.inet_pton(AF_INET6, addr)
    except OSError:
        return None
    scope_id = 0
    if pct:
        if scope.isdigit():
            scope_id = int(scope)
        else:
            try:
                scope_id = _std.if_nametoindex(scope)
            except OSError:
                return None
        if scope_id > 0xFFFFFFFF:
            return None
    return AF_INET6, _std.inet_ntop(AF_INET6, packed), scope_id


def _kind(addr: str) -> int:
    """Which of `Resolver.families` decides whether an address is usable: 0 IPv4 (or v4-mapped),
    1 IPv6, 2 IPv6 link-local; 3 loopback, always usable."""
    ip = ipaddress.ip_address(addr)
    if ip.is_loopback:
        return 3
    if ip.version == 4 or (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None):
        return 0
    return 2 if ip.is_link_local else 1


def _families(ifaces: _Ifaces | None) -> tuple[bool, bool, bool]:
    """Which of (IPv4, IPv6, IPv6 link-local) the netif has; all three when usnet cannot say."""
    if ifaces is None:
        return True, True, True
    return ifaces[0] is not None, ifaces[1] is not None, ifaces[2] is not None


def _common_prefix(a: bytes, b: bytes) -> int:
    """How many leading bits `a` and `b` share."""
    x = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
    return 8 * len(a) - x.bit_length()


def _prefix_match(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, ifaces: _Ifaces | None) -> int:
    """RFC 6724's rule 9 as glibc applies it: the bits `ip` shares with the source address usnet
    would send from. For IPv4 only inside the source's subnet (outside it a common prefix means
    nothing: 0, so an address on the netif's own subnet comes first, the closest first); for
    IPv6 the whole address. A loopback destination's source is itself."""
    if ip.is_loopback:
        return 8 * len(ip.packed)
    if ifaces is None:
        return 0
    v4, v6, ll = ifaces
    if ip.version == 4:
        if v4 is None or ip not in v4.network:
            return 0
        return _common_prefix(ip.packed, v4.ip.packed)
    src = ll if ip.is_link_local or v6 is None else v6
    return 0 if src is None else _common_prefix(ip.packed, src.ip.packed)


def _as_v6(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """An address as the policy table sees it: IPv4 as IPv4-mapped."""
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed) if ip.version == 4 else ip


def _scope(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, policy: Policy) -> int:
    """RFC 6724's scope as glibc's get_scope gives it: an IPv6 multicast's own field; link-local
    and loopback 2; site-local 5; every other IPv6 address global, 14. IPv4's is the policy's
    (gai.conf's ``scopev4``; by default 169.254/16 and 127/8 link-local, every other 14)."""
    if ip.version == 6:
        if ip.is_multicast:
            return ip.packed[1] & 0x0F
        if ip.is_link_local or ip.is_loopback:
            return 2
        return 5 if ip.is_site_local else 14
    return policy.scope4(int(ip))


def _label(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, policy: Policy) -> int:
    """The policy table's label of `ip` (gai.conf's ``label`` lines, or glibc's default_labels)."""
    return policy.label(int(_as_v6(ip)))


def _source(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
            ifaces: _Ifaces | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The source address usnet would send to `ip` from (glibc asks the kernel with a UDP
    connect): the netif's address of its family, its link-local one for a link-local
    destination; a loopback destination's is itself. None: usnet cannot say."""
    if ip.is_loopback:
        return ip
    if ifaces is None:
        return None
    v4, v6, ll = ifaces
    if ip.version == 4:
        return None if v4 is None else v4.ip
    src = ll if ip.is_link_local or v6 is None else v6
    return None if src is None else src.ip


def _sort_key(fam: int, addr: str, have: tuple[bool, bool, bool],
              ifaces: _Ifaces | None = None, policy: Policy = DEFAULT_POLICY) -> tuple[int, ...]:
    """RFC 6724's destination rules as they apply to usnet (and as glibc's rfc3484_sort applies
    them): 1 (a family the netif has no address of is unusable), 2 (prefer the scope of the
    source address usnet would use, `_source`), 5 (prefer its label), 6 (precedence), 8 (smaller
    scope first), 9 (the longest prefix shared with the source address, `_prefix_match`); the
    sort is stable (10). Rules 3, 4 and 7 (deprecated, home and native-transport sources) have
    nothing to tell apart in usnet. Labels, precedences and IPv4 scopes are `policy`'s (gai.conf)."""
    ip = ipaddress.ip_address(addr)
    prec = policy.precedence_of(int(_as_v6(ip)))
    kind = _kind(addr)
    usable = kind == 3 or have[kind]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    src, scope = _source(ip, ifaces), _scope(ip, policy)
    other_scope = src is not None and _scope(src, policy) != scope
    other_label = src is not None and _label(src, policy) != _label(ip, policy)
    return (0 if usable else 1, int(other_scope), int(other_label), -prec, scope, -_prefix_match(ip, ifaces))


def getaddrinfo(host: str | bytes | None, port: int | str | bytes | None, family: int = 0, type: int = 0,
                proto: int = 0, flags: int = 0, *, resolver: Resolver) -> list[tuple[Any, Any, int, str, tuple]]:
    """The standard `socket.getaddrinfo`, resolved by `resolver` (see the module's docstring)."""
    name = _host_bytes(host, "getaddrinfo()")
    service = _service_text(port)
    family, type, proto, flags = int(family), int(type), int(proto), int(flags)
    if name == "*":
        name = None
    if service == "*":
        service = None
    if name is None and service is None:
        raise _gai(_std.EAI_NONAME)
    if flags & ~_AI_ALLOWED or (flags & AI_CANONNAME and name is None):
        raise _gai(_std.EAI_BADFLAGS)
    if family not in (AF_UNSPEC, AF_INET, AF_INET6):
        raise _gai(_std.EAI_FAMILY)
    num = _service_number(service, flags)
    if service == "":
        service = None  # glibc: an empty service is none (but it did count as given, above)
    if flags & AI_ADDRCONFIG:
        v4, v6, _ll = resolver.families()
        if family == AF_UNSPEC and v4 != v6:
            family = AF_INET if v4 else AF_INET6
        elif (family == AF_INET and not v4) or (family == AF_INET6 and not v6):
            raise _gai(_std.EAI_NONAME)
    serv = _servtuples(service, num, type, proto)
    canon = ""
    addrs: list[tuple[int, str, int]]
    if name is None:
        if flags & AI_PASSIVE:
            addrs = [(AF_INET, "0.0.0.0", 0), (AF_INET6, "::", 0)]
        else:
            addrs = [(AF_INET6, "::1", 0), (AF_INET, "127.0.0.1", 0)]
        addrs = [a for a in addrs if family in (0, a[0])]
    else:
        literal = _numeric(name)
        if literal is not None:
            canon = name
            nfam, naddr, _scope = literal
            if family in (0, nfam):
                addrs = [literal]
            elif family == AF_INET6 and flags & AI_V4MAPPED:
                addrs = [(AF_INET6, "::ffff:" + naddr, 0)]
            elif family == AF_INET and ipaddress.ip_address(naddr).version == 6 and \
                    (m := ipaddress.IPv6Address(naddr).ipv4_mapped) is not None:
                addrs = [(AF_INET, str(m), 0)]
            else:
                raise _gai(EAI_ADDRFAMILY)
        elif flags & AI_NUMERICHOST or not name:
            raise _gai(_std.EAI_NONAME)
        else:
            found = _lookup_for(resolver, name, family, flags)
            canon = found.canonical
            addrs = [(f, a, 0) for f, a in found.addresses]
            if len({a[:2] for a in addrs}) > 1:
                # the netif's addresses are asked only when rule 1 or 9 could tell the addresses
                # apart (two kinds, or two of one family that are not loopback): localhost needs no usnet
                kinds = [_kind(a[1]) for a in addrs]
                ask = len(set(kinds)) > 1 or len({a[:2] for a, k in zip(addrs, kinds) if k != 3}) > 1
                ifaces = resolver.interfaces() if ask else None
                have = _families(ifaces)
                policy = resolver.policy()
                addrs.sort(key=lambda a: _sort_key(a[0], a[1], have, ifaces, policy))
    if flags & AI_CANONNAME and flags & AI_CANONIDN and canon:
        with contextlib.suppress(UnicodeError):
            canon = canon.encode("ascii").decode("idna")
    out: list[tuple[Any, Any, int, str, tuple]] = []
    for fam, addr, scope in addrs:
        for socktype, protocol, p in serv:
            sockaddr = (addr, p, 0, scope) if fam == AF_INET6 else (addr, p)
            out.append((_std.AddressFamily(fam), _as_kind(socktype), protocol,
                        canon if flags & AI_CANONNAME and not out else "", sockaddr))
    return out


def _as_kind(t: int) -> Any:
    try:
        return _std.SocketKind(t)
    except ValueError:
        return t


def _lookup_for(resolver: Resolver, name: str, family: int, flags: int) -> Found:
    """`resolver.lookup`, with AI_V4MAPPED and AI_ALL for an AF_INET6 query as glibc applies them."""
    if family != AF_INET6 or not flags & AI_V4MAPPED:
        return resolver.lookup(name, family)
    try:
        six: Found | None = resolver.lookup(name, AF_INET6)
    except _std.gaierror:
        six = None
    if six is not None and six.addresses and not flags & AI_ALL:
        return six
    try:
        four = resolver.lookup(name, AF_INET)
    except _std.gaierror:
        if six is None:
            raise
        return six
    mapped = [(AF_INET6, "::ffff:" + a) for _f, a in four.addresses]
    if six is None:
        return Found(four.canonical, four.aliases, mapped)
    return Found(six.canonical, six.aliases, six.addresses + mapped)


def gethostbyname(hostname: str | bytes, *, resolver: Resolver) -> str:
    """The standard `socket.gethostbyname`: one IPv4 address."""
    name = _host_bytes(hostname, "gethostbyname()")
    assert name is not None
    return _ipv4_of(name, resolver)


def _ipv4_of(name: str, resolver: Resolver) -> str:
    """CPython's setipaddr for AF_INET: "" is INADDR_ANY, "<broadcast>" the broadcast address, a
    dotted quad itself, anything else the first IPv4 answer of getaddrinfo."""
    if name == "":
        return "0.0.0.0"
    if name in ("<broadcast>", "255.255.255.255"):
        return "255.255.255.255"
    try:
        return _std.inet_ntop(AF_INET, _std.inet_pton(AF_INET, name))
    except OSError:
        pass
    return str(getaddrinfo(name, None, AF_INET, resolver=resolver)[0][4][0])


def gethostbyname_ex(hostname: str | bytes, *, resolver: Resolver) -> tuple[str, list[str], list[str]]:
    """The standard `socket.gethostbyname_ex`: (canonical name, aliases, IPv4 addresses)."""
    name = _host_bytes(hostname, "gethostbyname_ex()")
    assert name is not None
    first = _ipv4_of(name, resolver)
    num = _numeric(name)
    if (num is not None and num[0] == AF_INET) or name in ("", "<broadcast>"):
        return name, [], [first]
    found = resolver.lookup(name, AF_INET)
    return found.canonical, found.aliases, [a for f, a in found.addresses if f == AF_INET]


def gethostbyaddr(ip_address: str | bytes, *, resolver: Resolver) -> tuple[str, list[str], list[str]]:
    """The standard `socket.gethostbyaddr`: (name, aliases, [address]); a name is resolved first."""
    name = _host_bytes(ip_address, "gethostbyaddr()")
    assert name is not None
    num = _numeric(name)
    addr = num[1] if num is not None else str(getaddrinfo(name, None, resolver=resolver)[0][4][0])
    try:
        got = resolver.reverse(addr)
    except _Failed:
        raise _std.herror(2, "Host name lookup failure") from None
    if got is None:
        raise _std.herror(1, "Unknown host")
    return got[0], got[1], [addr]


def getnameinfo(sockaddr: tuple, flags: int, *, resolver: Resolver) -> tuple[str, str]:
    """The standard `socket.getnameinfo`: (host, service) of a numeric address and port."""
    if not isinstance(sockaddr, tuple):
        raise TypeError("getnameinfo() argument 1 must be a tuple")
    if not 2 <= len(sockaddr) <= 4:
        raise TypeError("getnameinfo(): illegal sockaddr argument")
    host, port = sockaddr[0], sockaddr[1]
    flowinfo = int(sockaddr[2]) if len(sockaddr) > 2 else 0
    scope_id = int(sockaddr[3]) if len(sockaddr) > 3 else 0
    if not isinstance(port, int):
        raise TypeError("'str' object cannot be interpreted as an integer")
    if not 0 <= flowinfo <= 0xFFFFF:
        raise OverflowError("getnameinfo(): flowinfo must be 0-1048575.")
    res = getaddrinfo(host, str(port), AF_UNSPEC, SOCK_DGRAM, 0, AI_NUMERICHOST, resolver=resolver)
    if len(res) != 1:
        raise OSError("sockaddr resolved to multiple addresses")
    fam, addr = int(res[0][0]), res[0][4][0]
    if fam == AF_INET and len(sockaddr) != 2:
        raise OSError("IPv4 sockaddr must be 2 tuple")
    flags = int(flags)
    if flags & ~(_NI_ALLOWED | _NI_NUMERICSCOPE):
        raise _gai(_std.EAI_BADFLAGS)
    name: str | None = None
    if not flags & NI_NUMERICHOST:
        try:
            got = resolver.reverse(addr)
        except _Failed as e:
            raise _gai(e.code) from None  # no server answered: glibc does not fall back to the number
        if got is not None:
            name = got[0]
            if flags & NI_NOFQDN:
                name = _strip_local_domain(name)
    if name is None:
        if flags & NI_NAMEREQD:
            raise _gai(_std.EAI_NONAME)
        name = addr
        if fam == AF_INET6 and scope_id:
            ip = ipaddress.IPv6Address(addr)
            scope = str(scope_id)
            if (ip.is_link_local or ip.is_multicast) and not flags & _NI_NUMERICSCOPE:
                with contextlib.suppress(OSError):
                    scope = _std.if_indextoname(scope_id)
            name = f"{addr}%{scope}"
    p = port & 0xFFFF
    service = str(p)
    if not flags & NI_NUMERICSERV:
        with contextlib.suppress(OSError):
            service = _std.getservbyport(p, "udp" if flags & NI_DGRAM else "tcp")
    return name, service


def _strip_local_domain(name: str) -> str:
    """NI_NOFQDN: a name in this host's own domain without that domain, as glibc shortens it."""
    own = _std.gethostname().partition(".")[2]
    if own and name.lower().endswith("." + own.lower()):
        return name[: -len(own) - 1]
    return name
