"""usnet.socket's name functions (usnet.client.resolver) without a network.

* Numeric hosts and services, every family, socket type, protocol and flag:
  the same result (or the same gaierror) as the standard module's
  getaddrinfo, which is glibc's: a deterministic sample of the whole cross
  product, compared value for value.
* The hosts file, localhost, resolv.conf and nameserver specs, parsed and
  applied as glibc applies them.
* The DNS client's logic against a scripted server (a fake UDP flow and a
  fake TCP connection): the search list's order, answers accepted only with
  our id, our question and from the server asked, CNAME chains (and loops),
  rcodes to EAI codes, a truncated answer asked again over TCP.

The same functions against a real dnsmasq, through usnet's own UDP and TCP,
and compared with the host's resolver, are in tests/interop/test_names.py.
"""

from __future__ import annotations

import itertools
import random
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from usnet import socket as us
from usnet.client import nameconf
from usnet.client import resolver as R
from usnet.proto import dns


def nowhere():
    raise AssertionError("this lookup must not need usnet")


NO_USNET = R.Resolver(nowhere, hosts="/dev/null")


def outcome(f, *a, **k):
    try:
        return f(*a, **k)
    except Exception as e:  # the type and args are what is compared
        return (type(e).__name__, e.args)


HOSTS = [None, "*", "1.2.3.4", "01.2.3.4", "1.2", "0x7f.1", "::1", "fe80::1%1", "::ffff:1.2.3.4", "", b"10.0.0.1",
         "0.0.0.0", "::"]
PORTS = [None, 0, 80, "80", "http", "domain", " 80", "+80", "80 ", "-1", "-2", "70000", 70000, "nosuch", "*", "",
         b"53", "4294967295", "0x10"]
FAMILIES = [0, socket.AF_INET, socket.AF_INET6, socket.AF_UNIX]
TYPES = [0, socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW, socket.SOCK_SEQPACKET, 6, 99]
PROTOS = [0, 6, 17, 132, 136, 33]
FLAGS = [0, socket.AI_PASSIVE, socket.AI_CANONNAME, socket.AI_NUMERICHOST, socket.AI_NUMERICSERV,
         socket.AI_V4MAPPED, socket.AI_V4MAPPED | socket.AI_ALL, 0x100, 0x40, 0x10000,
         socket.AI_CANONNAME | socket.AI_PASSIVE]


def test_numeric_getaddrinfo_is_the_standard_modules():
    combos = list(itertools.product(HOSTS, PORTS, FAMILIES, TYPES, PROTOS, FLAGS))
    random.Random(16).shuffle(combos)
    diffs = []
    for c in combos[:6000]:
        theirs, ours = outcome(socket.getaddrinfo, *c), outcome(R.getaddrinfo, *c, resolver=NO_USNET)
        if theirs != ours:
            diffs.append((c, theirs, ours))
    assert not diffs, "\n".join(f"{c}\n  std:   {t}\n  usnet: {o}" for c, t, o in diffs[:10])


@pytest.mark.parametrize("args", [
    (("1.2.3.4", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
    (("1.2.3.4", 53), socket.NI_NUMERICHOST | socket.NI_DGRAM),
    (("1.2.3.4", 443), socket.NI_NUMERICHOST),
    (("::1", 22, 0, 0), socket.NI_NUMERICHOST),
    (("fe80::1", 22, 0, 1), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
    (("1.2.3.4", 80, 0, 0), socket.NI_NUMERICHOST),       # an IPv4 4-tuple
    (("1.2.3.4", 80), 0x10000),                            # a bad flag
    (("1.2.3.4", 70000), socket.NI_NUMERICHOST),
    (("www.example.invalid", 80), socket.NI_NUMERICHOST),  # not numeric: never resolved here
    ("1.2.3.4", 0),
    (("127.0.0.1", 80), 0),                                # from the hosts file (the same /etc/hosts)
])
def test_getnameinfo_is_the_standard_modules(args):
    hosts_resolver = R.Resolver(nowhere)  # the system's /etc/hosts, as the standard module reads it
    assert outcome(R.getnameinfo, *args, resolver=hosts_resolver) == outcome(socket.getnameinfo, *args)


def test_gethostbyname_of_numbers_and_specials_is_the_standard_modules():
    for name in ["1.2.3.4", "1.2", "", "<broadcast>", "255.255.255.255", b"10.1.2.3"]:
        assert R.gethostbyname(name, resolver=NO_USNET) == socket.gethostbyname(name)
    for name in ["1.2.3.4", "10.0.0.1"]:
        assert R.gethostbyname_ex(name, resolver=NO_USNET) == socket.gethostbyname_ex(name)


def no_usnetd():
    raise FileNotFoundError("no usnetd here")


def write_hosts(tmp_path, text: str) -> R.Resolver:
    """A resolver of this hosts file, with no usnetd (so no DNS, and both families count as usable)."""
    p = tmp_path / "hosts"
    p.write_text(text)
    return R.Resolver(no_usnetd, hosts=str(p))


def test_the_hosts_file_every_matching_line_and_glibc_names(tmp_path):
    r = write_hosts(tmp_path, "# comment\n10.0.0.1 web.test web   # trailing comment\nfd00::1 web.test\n"
                              "10.0.0.2 Other.test WEB.test\nnot-an-address bogus.test\n::1 localhost\n")
    got = R.getaddrinfo("web.test", 80, 0, socket.SOCK_STREAM, 0, socket.AI_CANONNAME, resolver=r)
    # (glibc's default precedence: IPv6, even unique-local, before IPv4)
    assert [(e[0], e[3], e[4][0]) for e in got] == [(socket.AF_INET6, "web.test", "fd00::1"),
                                                    (socket.AF_INET, "", "10.0.0.1"),
                                                    (socket.AF_INET, "", "10.0.0.2")]
    assert R.gethostbyname_ex("WEB", resolver=r) == ("web.test", ["web"], ["10.0.0.1"])
    assert R.gethostbyname_ex("web.test", resolver=r) == ("web.test", ["web", "WEB.test", "Other.test"],
                                                          ["10.0.0.1", "10.0.0.2"])
    assert R.gethostbyaddr("10.0.0.1", resolver=r) == ("web.test", ["web"], ["10.0.0.1"])
    assert R.getnameinfo(("10.0.0.2", 80), socket.NI_NUMERICSERV, resolver=r) == ("Other.test", "80")
    # AF_INET reads ::1 as 127.0.0.1, as glibc's files backend does
    assert R.gethostbyname("localhost", resolver=r) == "127.0.0.1"
    with pytest.raises(socket.gaierror) as e:
        R.getaddrinfo("bogus.test", 80, resolver=r)  # not in the file: DNS would be next, and there is no usnetd
    assert e.value.errno == socket.EAI_AGAIN and isinstance(e.value.__cause__, FileNotFoundError)


def test_localhost_needs_neither_a_hosts_entry_nor_dns():
    got = R.getaddrinfo("localhost", 8080, 0, socket.SOCK_STREAM, resolver=NO_USNET)
    assert [e[4] for e in got] == [("::1", 8080, 0, 0), ("127.0.0.1", 8080)]
    assert R.gethostbyname("app.localhost", resolver=NO_USNET) == "127.0.0.1"
    assert us.gethostbyname("127.0.0.1") == "127.0.0.1"  # numbers need no usnetd at all


def test_resolv_conf_and_nameserver_specs():
    c = nameconf.ResolvConf.parse("; comment\nnameserver 10.0.0.53\nnameserver fd00::53 # six\nnameserver bad\n"
                           "nameserver 10.0.0.54\nnameserver 10.0.0.55\nsearch a.test b.test\n"
                           "options ndots:2 timeout:3 attempts:4 rotate\n")
    assert c.nameservers == [("10.0.0.53", 53), ("fd00::53", 53), ("10.0.0.54", 53)]  # three at most
    assert (c.search, c.ndots, c.timeout, c.attempts, c.rotate) == (["a.test", "b.test"], 2, 3.0, 4, True)
    assert nameconf.ResolvConf.parse("").nameservers == [("127.0.0.1", 53)]
    assert nameconf.ResolvConf.parse("domain x.test\noptions timeout:99 attempts:0").search == ["x.test"]
    assert nameconf.parse_servers("10.0.0.1, 10.0.0.2#5353 ,10.0.0.3:54,[fd00::1]:55,fd00::2") == [
        ("10.0.0.1", 53), ("10.0.0.2", 5353), ("10.0.0.3", 54), ("fd00::1", 55), ("fd00::2", 53)]


# -- the DNS client against a scripted server ----------------------------------------------------------


class FakeFlow:
    """A connected UDP flow to one server: what is sent goes to `serve`, whose datagrams come back."""

    def __init__(self, world: FakeWorld, server: tuple[str, int]) -> None:
        self.world, self.server, self.inbox = world, server, []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        assert addr == self.server
        q = dns.parse_message(data)
        self.world.asked.append((self.server, q.questions[0].name, q.questions[0].qtype))
        self.inbox += self.world.serve(self.server, q, "udp")
        return len(data)

    def recv_many(self, n: int, timeout: float):
        if not self.inbox:
            raise BlockingIOError("nothing in time")
        got, self.inbox = self.inbox[:n], self.inbox[n:]
        return got

    def close(self) -> None:
        self.world.closed += 1


class FakeTcp:
    def __init__(self, world: FakeWorld, server) -> None:
        self.world, self.server, self.out = world, server, b""

    def settimeout(self, t) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        q = dns.parse_message(data[2:])
        self.world.asked.append((self.server, q.questions[0].name, q.questions[0].qtype, "tcp"))
        ((reply, _src),) = self.world.serve(self.server, q, "tcp")
        self.out = len(reply).to_bytes(2, "big") + reply

    def recv(self, n: int) -> bytes:
        got, self.out = self.out[:3], self.out[3:]  # a few bytes at a time, as TCP may give them
        return got

    def close(self) -> None:
        pass


class FakeWorld:
    """Zones by server: {name: [records]}; a name missing is NXDOMAIN; `rcodes` forces an rcode."""

    def __init__(self, zones: dict, rcodes: dict | None = None, forge: bool = False, big: set | None = None) -> None:
        self.zones, self.rcodes, self.forge, self.big = zones, rcodes or {}, forge, big or set()
        self.asked: list = []
        self.closed = 0

    def status(self) -> dict:
        """What Resolver.families reads: the netif has both families."""
        return {"netifs": [{"netif": {"name": "fake0", "address": "10.0.0.2/24", "address6": "fd00::2/64",
                                      "link_local6": "fe80::2"}}]}

    def udp_socket(self, netif, port, remote, family):
        return FakeFlow(self, remote)

    def serve(self, server, q: dns.Message, how: str) -> list:
        qq = q.questions[0]
        key = dns.name_key(qq.name)
        zone = self.zones.get(server, {})
        rcode = self.rcodes.get((server, key, qq.qtype), dns.NOERROR if key in zone else dns.NXDOMAIN)
        if rcode is None:
            return []  # silent
        answers: tuple = ()
        for _ in range(5):  # follow CNAMEs inside the zone, as a recursive server answers (loops: a few times)
            step = tuple(r for r in zone.get(key, ()) if r.rtype in (qq.qtype, dns.TYPE_CNAME))
            answers += step
            cname = next((r for r in step if r.rtype == dns.TYPE_CNAME), None)
            if cname is None:
                break
            key = dns.name_key(cname.value)
        tc = how == "udp" and key in self.big
        if tc:
            answers = answers[:2]
        reply = dns.encode_message(dns.Message(dns.Header(q.header.id, qr=True, tc=tc, ra=True, rcode=rcode),
                                               q.questions, answers))
        out = []
        if self.forge:  # forgeries first: another id, another question, another source
            wrong_id = dns.Message(dns.Header(q.header.id ^ 1, qr=True), q.questions,
                                   (dns.address_record(qq.name, "6.6.6.6"),))
            wrong_q = dns.Message(dns.Header(q.header.id, qr=True), (dns.Question("evil.test", qq.qtype),),
                                  (dns.address_record("evil.test", "6.6.6.6"),))
            out += [(dns.encode_message(wrong_id), server), (dns.encode_message(wrong_q), server),
                    (reply, ("192.0.2.66", 53)), (b"\xff" * 30, server)]
        return [*out, (reply, server)]


S1, S2 = ("10.0.0.53", 53), ("10.0.0.54", 53)


def resolver_for(world: FakeWorld, tmp_path, servers=(S1,), search="", **kw) -> R.Resolver:
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"search {search}\n" if search else "")
    return R.Resolver(lambda: (world, "fake0"), hosts="/dev/null", resolv_conf=str(conf),
                      nameservers=[f"{h}#{p}" for h, p in servers], timeout=0.05, attempts=2,
                      tcp_connect=lambda server, timeout: FakeTcp(world, server), **kw)


def addrs(got) -> list:
    return [e[4][0] for e in got]


def test_forged_answers_are_ignored(tmp_path):
    world = FakeWorld({S1: {"www.test": [dns.address_record("www.test", "10.1.1.1")]}}, forge=True)
    got = R.getaddrinfo("www.test", 80, socket.AF_INET, socket.SOCK_STREAM, resolver=resolver_for(world, tmp_path))
    assert addrs(got) == ["10.1.1.1"]
    assert world.closed == 1  # the lookup's flow is closed after it


def test_cname_chains_give_the_canonical_name_and_loops_end(tmp_path):
    zone = {"a.test": [dns.name_record("a.test", dns.TYPE_CNAME, "b.test")],
            "b.test": [dns.name_record("b.test", dns.TYPE_CNAME, "c.test")],
            "c.test": [dns.address_record("c.test", "10.3.3.3"), dns.address_record("c.test", "fd00::3")],
            "loop.test": [dns.name_record("loop.test", dns.TYPE_CNAME, "loop.test")]}
    r = resolver_for(FakeWorld({S1: zone}), tmp_path)
    got = R.getaddrinfo("a.test", 80, 0, socket.SOCK_STREAM, 0, socket.AI_CANONNAME, resolver=r)
    assert [(e[3], e[4][0]) for e in got] == [("c.test", "fd00::3"), ("", "10.3.3.3")]
    assert R.gethostbyname_ex("a.test", resolver=r) == ("c.test", ["a.test", "b.test"], ["10.3.3.3"])
    with pytest.raises(socket.gaierror) as e:
        R.getaddrinfo("loop.test", 80, resolver=r)
    assert e.value.errno == socket.EAI_NODATA


def test_the_search_list_in_glibcs_order(tmp_path):
    zone = {"www.b.test": [dns.address_record("www.b.test", "10.2.2.2")],
            "www": [dns.address_record("www", "10.9.9.9")], "x.y": []}
    world = FakeWorld({S1: zone})
    r = resolver_for(world, tmp_path, search="a.test b.test")
    assert R.gethostbyname("www", resolver=r) == "10.2.2.2"  # no dot: the search list first
    assert [a[1] for a in world.asked if a[2] == dns.TYPE_A] == ["www.a.test", "www.b.test"]
    world.asked.clear()
    with pytest.raises(socket.gaierror) as e:
        R.gethostbyname("x.y", resolver=r)  # a dot: as is first; its "no data" is the answer
    assert e.value.errno == socket.EAI_NODATA
    assert [a[1] for a in world.asked] == ["x.y", "x.y.a.test", "x.y.b.test"]
    world.asked.clear()
    with pytest.raises(socket.gaierror) as e:
        R.gethostbyname("nope.test.", resolver=r)  # absolute: only as is
    assert e.value.errno == socket.EAI_NONAME and [a[1] for a in world.asked] == ["nope.test"]


def test_rcodes_and_silence_become_glibcs_eai_codes_and_the_next_server_is_asked(tmp_path):
    zone = {"ok.test": [dns.address_record("ok.test", "10.4.4.4")]}
    world = FakeWorld({S1: zone, S2: zone}, rcodes={(S1, "ok.test", dns.TYPE_A): dns.SERVFAIL,
                                                    (S1, "quiet.test", dns.TYPE_A): None,
                                                    (S2, "quiet.test", dns.TYPE_A): None})
    r = resolver_for(world, tmp_path, servers=(S1, S2))
    assert R.gethostbyname("ok.test", resolver=r) == "10.4.4.4"  # SERVFAIL from the first, the second answers
    assert [a[0] for a in world.asked] == [S1, S2]
    world.asked.clear()
    with pytest.raises(socket.gaierror) as e:
        R.gethostbyname("quiet.test", resolver=r)
    assert e.value.errno == socket.EAI_AGAIN
    assert [a[0] for a in world.asked] == [S1, S2, S1, S2]  # two attempts over both servers


def test_a_truncated_answer_is_asked_again_over_tcp(tmp_path):
    many = [dns.address_record("big.test", f"10.5.0.{i}") for i in range(1, 41)]
    world = FakeWorld({S1: {"big.test": many}}, big={"big.test"})
    got = R.getaddrinfo("big.test", 80, socket.AF_INET, socket.SOCK_STREAM, resolver=resolver_for(world, tmp_path))
    assert addrs(got) == [f"10.5.0.{i}" for i in range(1, 41)]
    assert world.asked == [(S1, "big.test", dns.TYPE_A), (S1, "big.test", dns.TYPE_A, "tcp")]


def test_a_name_that_cannot_be_a_dns_name_is_not_sent(tmp_path):
    world = FakeWorld({})
    r = resolver_for(world, tmp_path)
    with pytest.raises(socket.gaierror) as e:
        R.getaddrinfo("a" * 64 + ".test", 80, resolver=r)
    assert e.value.errno == socket.EAI_NONAME and world.asked == []


# -- nsswitch.conf: the order of the sources ----------------------------------------------------------

_STATUSES = ["success", "notfound", "unavail", "tryagain"]


def _model_sources(spec: list) -> list:
    """What glibc makes of a parsed line: (source, statuses after which it returns)."""
    out = []
    for name, items in spec:
        returns = {"success"}
        for neg, status, action in items:
            for one in ([x for x in _STATUSES if x != status] if neg else [status]):
                (returns.add if action == "return" else returns.discard)(one)
        out.append((name, frozenset(returns)))
    return out


_item = st.tuples(st.booleans(), st.sampled_from(_STATUSES), st.sampled_from(["return", "continue", "merge"]))
_spec = st.lists(st.tuples(st.sampled_from(["files", "dns", "mdns4_minimal", "myhostname", "resolve"]),
                           st.lists(st.lists(_item, min_size=1, max_size=3), max_size=2)), min_size=1, max_size=5)


@given(_spec, st.booleans(), st.sampled_from(["hosts", "HOSTS", "Hosts"]))
def test_nsswitch_lines_parse_as_glibc_reads_them(spec, upper, db):
    """Any line of sources and [STATUS=action] items (each item group after its source, several
    groups in a row, `!` negation, any case, comments around) parses as glibc's model says."""
    words = []
    flat = []
    for name, groups in spec:
        words.append(name.upper() if upper else name)
        merged = []
        for group in groups:
            words.append("[" + " ".join(f"{'!' if n else ''}{s.upper() if upper else s}={a}"
                                         for n, s, a in group) + "]")
            merged += [(n, s, "continue" if a == "merge" else a) for n, s, a in group]
        flat.append((name, merged))
    text = f"# hosts: dns\npasswd: files\n{db}:\t{' '.join(words)}  # a comment\nhosts: dns\n"
    got = [(s.name, s.returns) for s in nameconf.parse_nsswitch(text)]
    assert got == _model_sources(flat)


def test_nsswitch_examples_defaults_and_malformed_lines():
    def parse(text):
        return [(s.name, sorted(s.returns)) for s in nameconf.parse_nsswitch(text)]

    assert parse("hosts: files mdns4_minimal [NOTFOUND=return] dns myhostname") == [
        ("files", ["success"]), ("mdns4_minimal", ["notfound", "success"]), ("dns", ["success"]),
        ("myhostname", ["success"])]
    default = [("dns", ["notfound", "success", "tryagain"]), ("files", ["success"])]
    assert parse("") == parse("passwd: files\n") == default == parse(nameconf.NSS_DEFAULT)  # glibc's default
    assert parse("hosts:files[NOTFOUND=return]dns") == [("files", ["notfound", "success"]), ("dns", ["success"])]
    assert parse("hosts: files [SUCCESS=continue] dns") == [("files", []), ("dns", ["success"])]
    # a malformed item ends the line there; an item before any source too
    assert parse("hosts: files [BOGUS=return] dns") == [("files", ["success"])]
    assert parse("hosts: files [NOTFOUND=return dns") == [("files", ["success"])]
    assert parse("hosts: [NOTFOUND=return] files") == []


def _nss_resolver(world, tmp_path, nsswitch: str, hosts: str) -> R.Resolver:
    (tmp_path / "nsswitch.conf").write_text(nsswitch)
    (tmp_path / "hosts").write_text(hosts)
    r = resolver_for(world, tmp_path, nsswitch=str(tmp_path / "nsswitch.conf"))
    r._hosts_path = str(tmp_path / "hosts")
    return r


def test_hosts_dns_files_asks_dns_first_and_files_dns_the_file_first(tmp_path):
    zone = {"both.test": [dns.address_record("both.test", "10.7.7.7")]}
    hosts = "10.8.8.8 both.test\n10.8.8.9 fileonly.test\n"
    world = FakeWorld({S1: zone})
    first_files = _nss_resolver(world, tmp_path, "hosts: files dns\n", hosts)
    assert R.gethostbyname("both.test", resolver=first_files) == "10.8.8.8" and world.asked == []
    (tmp_path / "nsswitch.conf").write_text("hosts:  dns files\n")  # reread when it changes, as glibc does
    assert R.gethostbyname("both.test", resolver=first_files) == "10.7.7.7"
    assert [a[1] for a in world.asked] == ["both.test"]
    assert R.gethostbyname("fileonly.test", resolver=first_files) == "10.8.8.9"  # DNS: not found, files next
    assert R.gethostbyaddr("10.8.8.9", resolver=first_files)[0] == "fileonly.test"
    world.asked.clear()
    (tmp_path / "nsswitch.conf").write_text("hosts: dns [NOTFOUND=return] files\n")
    with pytest.raises(socket.gaierror) as e:
        R.gethostbyname("fileonly.test", resolver=first_files)
    assert e.value.errno == socket.EAI_NONAME and [a[1] for a in world.asked] == ["fileonly.test"]


def test_sources_usnet_lacks_are_unavailable_so_their_notfound_return_does_not_stop_dns(tmp_path):
    """Debian's default line: mdns4_minimal is not usnet's, so it is UNAVAIL (as a module glibc
    cannot load) and its [NOTFOUND=return] does not apply; DNS is asked. myhostname answers localhost."""
    world = FakeWorld({S1: {"www.test": [dns.address_record("www.test", "10.1.1.1")]}})
    r = _nss_resolver(world, tmp_path, "hosts: files mdns4_minimal [NOTFOUND=return] dns myhostname\n", "")
    assert R.gethostbyname("www.test", resolver=r) == "10.1.1.1"
    r = _nss_resolver(world, tmp_path, "hosts: files [NOTFOUND=return] dns\n", "")
    with pytest.raises(socket.gaierror) as e:
        R.gethostbyname("www.test", resolver=r)
    assert e.value.errno == socket.EAI_NONAME
    r = _nss_resolver(world, tmp_path, "hosts: files mdns4_minimal [UNAVAIL=return] dns\n", "")
    with pytest.raises(socket.gaierror):
        R.gethostbyname("www.test", resolver=r)
    world.asked.clear()
    r = _nss_resolver(world, tmp_path, "hosts: files myhostname dns\n", "")
    assert R.gethostbyname("localhost", resolver=r) == "127.0.0.1" and world.asked == []
    r = _nss_resolver(world, tmp_path, "hosts: files\n", "")  # neither dns nor myhostname: no localhost
    with pytest.raises(socket.gaierror):
        R.gethostbyname("localhost", resolver=r)


def test_an_ascii_name_is_passed_as_the_idna_codec_would_without_importing_it():
    """The codec returns ASCII text unchanged (or fails, and the text is used as it is); importing
    it (stringprep, unicodedata) cost a process's first connect some 10 ms."""
    import subprocess
    import sys
    for name in ["10.1.2.3", "Web.Test", "a..b", "x" * 70]:
        try:
            want = name.encode("idna").decode("ascii")
        except UnicodeError:
            want = name
        assert R._host_bytes(name, "t") == want
    code = ("import sys; from usnet.client import resolver as R; "
            "R.getaddrinfo('10.1.2.3', 80, resolver=R.Resolver(lambda: None, hosts='/dev/null')); "
            "print('encodings.idna' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "False"


# -- the order of several addresses: RFC 6724 as glibc sorts ----------------------------------------------


def _sorted_by_usnet(tmp_path, addresses: list[str]) -> list[str]:
    """getaddrinfo's order for a name with `addresses` (in that order in the hosts file), from a
    netif with 10.0.0.2/24, fd00::2/64 and fe80::2 (FakeWorld's)."""
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"{a} multi.test\n" for a in addresses))
    r = R.Resolver(lambda: (FakeWorld({}), "fake0"), hosts=str(hosts))
    return addrs(R.getaddrinfo("multi.test", 80, 0, socket.SOCK_STREAM, resolver=r))


def test_addresses_on_the_netifs_subnet_come_first_the_closest_first(tmp_path):
    """Rule 9 as glibc applies it (its order, seen with a source of 192.0.2.2/24: .3, .9, .200,
    then 10.0.0.1 outside the subnet, whatever the hosts file's order): the longest prefix shared
    with the source address first, for IPv4 only inside its subnet; ties in the file's order. A
    program that connects in turn (create_connection) tries a neighbour's address before one
    behind a router, as on the kernel."""
    assert _sorted_by_usnet(tmp_path, ["192.0.2.7", "10.0.0.200", "10.0.0.9", "10.0.0.3"]) == \
        ["10.0.0.3", "10.0.0.9", "10.0.0.200", "192.0.2.7"]
    assert _sorted_by_usnet(tmp_path, ["10.0.0.9", "10.0.0.14", "10.0.0.10"]) == ["10.0.0.9", "10.0.0.14", "10.0.0.10"]
    assert _sorted_by_usnet(tmp_path, ["fd00:0:0:1::5", "fd00::9", "fd00::3"]) == \
        ["fd00::3", "fd00::9", "fd00:0:0:1::5"]


@given(st.lists(st.integers(0, 511), min_size=2, max_size=8, unique=True))
def test_the_order_is_by_prefix_then_the_files(tmp_path_factory, hosts):
    """Any set of IPv4 addresses, in 10.0.0.0/24 (the source's subnet) and out of it (10.0.1.x):
    a permutation of them; in-subnet ones first, by the bits shared with 10.0.0.2 (most first);
    equal ones in the hosts file's order."""
    given_order = [f"10.0.{h >> 8}.{h & 255}" for h in hosts]
    got = _sorted_by_usnet(tmp_path_factory.mktemp("h"), given_order)
    assert sorted(got) == sorted(given_order)

    def shared(a: str) -> int:
        x = [int(p) for p in a.split(".")]
        return 0 if x[2] else 32 - (x[3] ^ 2).bit_length()

    assert got == sorted(given_order, key=lambda a: -shared(a))  # Python's sort is stable
