"""Names through usnet.socket against a real DNS server (dnsmasq) in the test's namespace (root).

usnet runs in this process on a fresh TAP (`tap_domain`); dnsmasq listens on
the kernel's side of it, and every DNS query usnet makes goes out over its own
UDP (and TCP, for a truncated answer) through the TAP. The host's resolver
(glibc, in a child process whose /etc/hosts and /etc/resolv.conf are bind
mounts of the test's files, in a mount namespace of its own) asks the same
dnsmasq the same questions, and the answers must be the same: addresses,
order, canonical names and error codes.

Also: a truncated answer (more A records than 512 bytes hold) is asked again
over TCP; a server that never answers costs `attempts` × `timeout`, and the
next server answers; the hosts file comes before DNS.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from usnet import socket as us
from usnet.client import Client, resolver
from usnet.proto import dns

pytestmark = pytest.mark.privileged
BIG = 40  # A records for big.usnet.test: 40 × 16 bytes do not fit in 512


def need_dnsmasq() -> str:
    path = shutil.which("dnsmasq")
    if path is None:
        pytest.fail("dnsmasq is missing (scripts/test-deps.sh installs it)")
    return path


def ask_udp(server: tuple[str, int], name: str, timeout: float) -> dns.Message | None:
    """One query from a kernel socket (to see that dnsmasq is up)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(dns.query(1, name, dns.TYPE_A), server)
        try:
            return dns.parse_message(s.recv(4096))
        except (TimeoutError, dns.DnsError):
            return None


@contextlib.contextmanager
def dnsmasq_at(host_ip: str, probe: str, *options: str) -> Iterator[subprocess.Popen]:
    """dnsmasq in the foreground on `host_ip` port 53 with `options` (its records, say) beside the
    ones every test's needs (no config, resolv.conf or hosts file of the machine's); ready once a
    query for `probe` is answered (within 10 s, else AssertionError with its stderr); stopped after."""
    proc = subprocess.Popen(
        [need_dnsmasq(), "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--pid-file=",
         "--user=root", "--bind-interfaces", f"--listen-address={host_ip}", "--port=53", *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while ask_udp((host_ip, 53), probe, 0.2) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"dnsmasq did not start: {proc.communicate()[1]!r}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


class World:
    """dnsmasq on the kernel side of the TAP, a hosts file and a resolv.conf, for usnet and glibc alike."""

    def __init__(self, tap_domain, tmp_path) -> None:
        d, self.ifname, self.usnet_ip, self.host_ip = tap_domain
        self.client = Client.local(d)
        x = self.host_ip.split(".")[1]
        self.x = x
        self.hosts = tmp_path / "hosts"
        self.hosts.write_text(
            "127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
            f"10.{x}.0.9 hosted.test hosted   # in DNS too, with another address\n"
            f"10.{x}.0.10 multi.test\nfd00:{x}::10 multi.test\n10.{x}.0.11 other.test Multi.test\n")
        self.resolv = tmp_path / "resolv.conf"
        self.resolv.write_text(f"nameserver {self.host_ip}\nsearch usnet.test\noptions timeout:2 attempts:2\n")
        records = [f"--host-record=big.usnet.test,10.{x}.1.{i}" for i in range(1, BIG + 1)]
        self._dnsmasq = contextlib.ExitStack()
        try:  # a dnsmasq that did not start in time (or a timeout meanwhile) is stopped, not left running
            self.proc = self._dnsmasq.enter_context(dnsmasq_at(
                self.host_ip, "www.usnet.test", "--bogus-priv", f"--address=/example.test/10.{x}.0.1",
                "--address=/nx.test/", f"--host-record=www.usnet.test,10.{x}.0.7,fd00:{x}::7",
                f"--host-record=v6only.usnet.test,fd00:{x}::8", "--cname=alias.usnet.test,www.usnet.test",
                f"--host-record=hosted.test,10.{x}.0.99", *records))
        except BaseException:
            self.client.close()
            raise
        resolver.configure(hosts=str(self.hosts), resolv_conf=str(self.resolv))

    def close(self) -> None:
        resolver.configure()
        self._dnsmasq.close()
        self.client.close()

    def usnet(self, fn: str, *args, **kw):
        """usnet.socket's `fn`, as a comparable value: its result, or (exception type, args)."""
        try:
            return _plain(getattr(us, fn)(*args, client=self.client, netif=self.ifname, **kw))
        except OSError as e:
            return [type(e).__name__, list(e.args)]

    def glibc(self, calls: list[tuple]) -> list:
        """The same calls on the host's resolver, in a child with our hosts file and resolv.conf."""
        return glibc(self.hosts, self.resolv, calls)


def glibc(hosts, resolv, calls: list[tuple], gai_conf=None) -> list:
    """`calls` of the standard socket module (glibc's resolver) in a child process whose
    /etc/hosts and /etc/resolv.conf are `hosts` and `resolv` (and /etc/gai.conf `gai_conf`, when
    given): each result, or (type, args)."""
    prog = (
        "import json, socket, sys\n"
        "out = []\n"
        "for fn, args in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        r = getattr(socket, fn)(*[tuple(a) if isinstance(a, list) else a for a in args])\n"
        "        out.append(json.loads(json.dumps(r, default=int)))\n"
        "    except OSError as e:\n"
        "        out.append([type(e).__name__, list(e.args)])\n"
        "print(json.dumps(out))\n")
    gai = f"touch /etc/gai.conf && mount --bind {gai_conf} /etc/gai.conf && " if gai_conf else ""
    script = (f"mount --bind {hosts} /etc/hosts && mount --bind {resolv} /etc/resolv.conf && {gai}"
              f'exec {sys.executable} -c "$0" "$1"')
    got = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, prog,
                          json.dumps(calls)], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)


def _plain(v):
    return json.loads(json.dumps(v, default=int))


@pytest.fixture
def world(tap_domain, tmp_path):
    w = World(tap_domain, tmp_path)
    try:
        yield w
    finally:
        w.close()


def test_usnet_resolves_as_glibc_does_against_the_same_dnsmasq(world):
    """Names from DNS (A, AAAA, CNAME, the search list), the hosts file and numbers; NXDOMAIN,
    no data and a refused query; every family and the flags that change the answer."""
    A, A6, S, CN = socket.AF_INET, socket.AF_INET6, socket.SOCK_STREAM, socket.AI_CANONNAME
    calls = [
        ("getaddrinfo", ["www.usnet.test", 80]),
        ("getaddrinfo", ["www.usnet.test", 80, A, S]),
        ("getaddrinfo", ["www.usnet.test", "http", A6, S, 0, CN]),
        ("getaddrinfo", ["alias.usnet.test", 443, 0, S, 0, CN]),
        ("getaddrinfo", ["www", 80, A, S, 0, CN]),                       # the search list
        ("getaddrinfo", ["WWW.Usnet.Test.", 80, A, S]),                 # case, absolute form
        ("getaddrinfo", ["example.test", 80, 0, S]),
        ("getaddrinfo", ["deep.sub.example.test", 80, A, S]),
        ("getaddrinfo", ["v6only.usnet.test", 80, 0, S]),
        ("getaddrinfo", ["example.test", 80, A6, S]),                   # no AAAA: no data
        ("getaddrinfo", ["v6only.usnet.test", 80, A, S]),
        ("getaddrinfo", ["nx.test", 80, 0, S]),                         # NXDOMAIN
        ("getaddrinfo", ["unknown.zzz.", 80, 0, S]),                    # REFUSED (no upstream)
        ("getaddrinfo", ["unknown", 80, A, S]),
        ("getaddrinfo", ["a.nx.test", 80, A6, S]),
        ("getaddrinfo", ["hosted.test", 80, 0, S, 0, CN]),              # the hosts file, not DNS's .99
        ("getaddrinfo", ["hosted", 80, A, S, 0, CN]),                   # an alias from the hosts file
        ("getaddrinfo", ["multi.test", 80, 0, S, 0, CN]),               # several lines: all of them
        ("getaddrinfo", ["multi.test", 80, A, S]),
        ("getaddrinfo", ["localhost", 8080, 0, S]),
        ("getaddrinfo", ["localhost", 8080, A, 0]),
        ("getaddrinfo", ["www.usnet.test", 80, A6, S, 0, socket.AI_V4MAPPED]),
        ("getaddrinfo", ["example.test", 80, A6, S, 0, socket.AI_V4MAPPED]),
        ("getaddrinfo", ["www.usnet.test", 80, A6, S, 0, socket.AI_V4MAPPED | socket.AI_ALL]),
        ("getaddrinfo", ["www.usnet.test", 80, 0, S, 0, socket.AI_NUMERICHOST]),
        ("getaddrinfo", [f"10.{world.x}.0.7", "domain", 0, 0, 0, CN]),
        ("getaddrinfo", [None, 80, 0, S, 0, socket.AI_PASSIVE]),
        ("gethostbyname", ["www.usnet.test"]),
        ("gethostbyname", ["hosted.test"]),
        ("gethostbyname", ["nx.test"]),
        ("gethostbyname_ex", ["alias.usnet.test"]),
        ("gethostbyname_ex", ["hosted"]),
        ("gethostbyname_ex", ["multi.test"]),
        ("gethostbyname_ex", [f"10.{world.x}.0.7"]),
        ("gethostbyaddr", [f"10.{world.x}.0.9"]),                       # hosts file
        ("gethostbyaddr", [f"10.{world.x}.0.7"]),                       # PTR from dnsmasq
        ("getnameinfo", [[f"10.{world.x}.0.9", 80], 0]),
        ("getnameinfo", [[f"10.{world.x}.0.7", 53], socket.NI_DGRAM]),
        ("getnameinfo", [[f"10.{world.x}.0.7", 80], socket.NI_NUMERICHOST | socket.NI_NUMERICSERV]),
        ("getnameinfo", [[f"10.{world.x}.3.3", 80], 0]),                # no name: the number
        ("getnameinfo", [[f"10.{world.x}.3.3", 80], socket.NI_NAMEREQD]),
    ]
    theirs = world.glibc(calls)
    ours = [world.usnet(fn, *[tuple(a) if isinstance(a, list) else a for a in args]) for fn, args in calls]
    diffs = [(c, t, o) for c, t, o in zip(calls, theirs, ours) if t != o]
    assert not diffs, "\n".join(f"{c}\n  glibc: {t}\n  usnet: {o}" for c, t, o in diffs)
    assert ours[0][0] == [socket.AF_INET, socket.SOCK_STREAM, 6, "", [f"10.{world.x}.0.7", 80]]  # it did resolve


def test_a_truncated_answer_is_asked_again_over_tcp(world):
    """40 A records do not fit in a 512-byte UDP answer: dnsmasq sets TC, and all 40 come over TCP."""
    want = {f"10.{world.x}.1.{i}" for i in range(1, BIG + 1)}
    udp = ask_udp((world.host_ip, 53), "big.usnet.test", 2.0)
    assert udp is not None and udp.header.tc and len(udp.answers) < BIG  # dnsmasq does truncate
    got = us.getaddrinfo("big.usnet.test", 80, socket.AF_INET, socket.SOCK_STREAM, client=world.client,
                         netif=world.ifname)
    assert {sa[0] for *_, sa in got} == want
    (theirs,) = world.glibc([("getaddrinfo", ["big.usnet.test", 80, socket.AF_INET, socket.SOCK_STREAM])])
    assert {sa[0] for *_, sa in theirs} == want


def silent_server(host: str) -> tuple[socket.socket, list, threading.Thread]:
    """A kernel UDP socket that reads queries and never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.settimeout(0.1)
    heard: list = []
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                heard.append(dns.parse_message(s.recv(4096)))
            except (TimeoutError, dns.DnsError):
                pass

    t = threading.Thread(target=run, daemon=True)
    t.stop = stop  # type: ignore[attr-defined]
    t.start()
    return s, heard, t


def test_a_silent_server_is_retried_then_fails_in_bounded_time(world):
    s, heard, t = silent_server(world.host_ip)
    try:
        port = s.getsockname()[1]
        r = resolver.Resolver(lambda: (world.client, world.ifname), nameservers=f"{world.host_ip}:{port}",
                              timeout=0.3, attempts=3)
        t0 = time.monotonic()
        with pytest.raises(socket.gaierror) as e:
            resolver.getaddrinfo("www.usnet.test.", 80, 0, socket.SOCK_STREAM, resolver=r)  # no search list
        took = time.monotonic() - t0
        assert e.value.errno == socket.EAI_AGAIN
        assert 0.8 < took < 3.0  # 3 attempts of 0.3 s, generously bounded
        # each attempt asked for A and AAAA again, each time with new ids
        assert sorted(q.questions[0].qtype for q in heard) == [1, 1, 1, 28, 28, 28]
        assert len({q.header.id for q in heard}) == 6
    finally:
        t.stop.set()  # type: ignore[attr-defined]
        t.join(5)
        s.close()


def test_the_next_server_answers_when_the_first_is_silent(world):
    s, heard, t = silent_server(world.host_ip)
    try:
        port = s.getsockname()[1]
        r = resolver.Resolver(lambda: (world.client, world.ifname),
                              nameservers=[f"{world.host_ip}#{port}", world.host_ip], timeout=0.5, attempts=2)
        got = resolver.getaddrinfo("www.usnet.test", 80, socket.AF_INET, socket.SOCK_STREAM, resolver=r)
        assert [sa for *_, sa in got] == [(f"10.{world.x}.0.7", 80)]
        assert len(heard) == 1  # asked the silent one once, then the next server answered
    finally:
        t.stop.set()  # type: ignore[attr-defined]
        t.join(5)
        s.close()


def test_the_hosts_file_comes_first_and_usnet_resolver_picks_the_server(world, tmp_path, monkeypatch):
    """USNET_RESOLVER names the server (resolv.conf's is a dead one); the hosts file still wins."""
    (tmp_path / "dead.conf").write_text("nameserver 192.0.2.1\noptions timeout:1 attempts:1\n")
    resolver.configure(hosts=str(world.hosts), resolv_conf=str(tmp_path / "dead.conf"))
    monkeypatch.setenv("USNET_RESOLVER", world.host_ip)
    ask = lambda name: [sa[0] for *_, sa in us.getaddrinfo(name, 0, socket.AF_INET, socket.SOCK_STREAM,
                                                              client=world.client, netif=world.ifname)]
    assert ask("hosted.test") == [f"10.{world.x}.0.9"]       # hosts: DNS says .99
    assert ask("www.usnet.test") == [f"10.{world.x}.0.7"]    # DNS, through USNET_RESOLVER
    world.hosts.write_text(f"10.{world.x}.0.5 www.usnet.test\n")  # the hosts file is read again when it changes
    os.utime(world.hosts, (time.time() + 5, time.time() + 5))
    assert ask("www.usnet.test") == [f"10.{world.x}.0.5"]


def test_a_connect_by_name_goes_to_the_resolved_address(world):
    """usnet.socket.create_connection with a name: resolved through DNS, connected to the kernel."""
    srv = socket.create_server((world.host_ip, 0))
    srv.settimeout(10)
    port = srv.getsockname()[1]
    with open(world.hosts, "a") as f:
        f.write(f"{world.host_ip} peer.test\n")
    os.utime(world.hosts, (time.time() + 5, time.time() + 5))
    try:
        c = us.create_connection(("peer.test", port), timeout=10, client=world.client, netif=world.ifname)
        conn, addr = srv.accept()
        assert addr[0] == world.usnet_ip
        c.sendall(b"by name")
        conn.settimeout(10)
        assert conn.recv(100) == b"by name"
        c.close()
        conn.close()
    finally:
        srv.close()


def test_ai_addrconfig_asks_for_the_families_the_usnet_netif_has(world):
    """The netif has IPv4 only: AI_ADDRCONFIG leaves out the AAAA answer (and an AF_INET6 query fails);
    without it both families come, IPv4 first (the IPv6 one is unusable on this netif)."""
    ask = lambda fam, flags: world.usnet("getaddrinfo", "www.usnet.test", 80, fam, socket.SOCK_STREAM, 0, flags)
    assert [e[0] for e in ask(0, 0)] == [socket.AF_INET, socket.AF_INET6]
    assert ask(0, socket.AI_ADDRCONFIG) == [[socket.AF_INET, socket.SOCK_STREAM, 6, "", [f"10.{world.x}.0.7", 80]]]
    assert ask(socket.AF_INET6, socket.AI_ADDRCONFIG)[1][0] == socket.EAI_NONAME


def _mixed_names(tap_domain6, tmp_path):
    """Routes to everything through the TAP (so that glibc's rule 1 finds every address usable),
    and a hosts file of names with an IPv6 and an IPv4 address each: (x, hosts, resolv, names)."""
    _d, _ifname, usnet_ip6, host_ip6 = tap_domain6
    x = host_ip6.split(":")[1]
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.route("add", dst="0.0.0.0/0", gateway=f"10.{x}.0.2")
        ipr.route("add", family=socket.AF_INET6, dst="::/0", gateway=usnet_ip6)
    hosts, resolv = tmp_path / "hosts", tmp_path / "resolv.conf"
    hosts.write_text(f"2001:db8::5 mixed.test\n10.{x}.0.5 mixed.test\n"
                     f"169.254.1.1 scoped.test\n10.{x}.0.5 scoped.test\n"
                     f"fd00:{x}::6 ula.test\n10.{x}.0.6 ula.test\n"
                     f"10.{x}.0.7 many.test\nfd00:{x}::7 many.test\n2001:db8::7 many.test\n169.254.7.7 many.test\n")
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    return x, hosts, resolv, ["mixed.test", "scoped.test", "ula.test", "many.test"]


def _usnet_order(tap_domain6, hosts, resolv, names, gai_conf=None) -> list:
    d, ifname = tap_domain6[:2]
    client = Client.local(d)
    resolver.configure(hosts=str(hosts), resolv_conf=str(resolv), gai_conf=None if gai_conf is None else str(gai_conf))
    try:
        return [_plain(us.getaddrinfo(n, 80, 0, socket.SOCK_STREAM, client=client, netif=ifname)) for n in names]
    finally:
        resolver.configure()
        client.close()


def test_getaddrinfo_prefers_the_scope_and_label_of_the_source_address_as_glibc(tap_domain6, tmp_path):
    """RFC 6724's rules 2 and 5 as glibc's rfc3484_sort applies them, before precedence: an
    address whose scope (169.254/16 is link-local) or label (a global IPv6 address, from a
    unique-local source) differs from its source address's comes after one that matches. glibc
    asks the kernel of this namespace (routes to everything through the TAP, so that its rule 1
    finds every address usable); usnet sorts by its netif's addresses, which mirror the host's
    (10.x.0.2, fd00:x::2). usnet applied precedence and scope alone: 2001:db8::5 before the
    IPv4 address, 169.254.1.1 before 10.x.0.5; and RFC 6724's precedence table where glibc
    keeps RFC 3484's (IPv4 before a unique-local address)."""
    x, hosts, resolv, names = _mixed_names(tap_domain6, tmp_path)
    names = names[:3]
    ours = _usnet_order(tap_domain6, hosts, resolv, names)
    theirs = glibc(hosts, resolv, [("getaddrinfo", [n, 80, 0, socket.SOCK_STREAM]) for n in names])
    assert ours == theirs
    firsts = [r[0][4][0] for r in theirs]
    assert firsts == [f"10.{x}.0.5", f"10.{x}.0.5", f"fd00:{x}::6"]  # (the last: glibc's precedence, IPv6 first)


GAI_CONFS = {
    # Debian's recipe for preferring IPv4: the one line replaces the whole precedence table
    "prefer-ipv4": "precedence ::ffff:0:0/96 100\n",
    # labels without fc00::/7's: a unique-local source no longer tells a global IPv6 address apart
    "labels": "label ::1/128 0\nlabel ::/0 1\nlabel ::ffff:0:0/96 4\n",
    # 10.x.0.5 and 10.x.0.7 of a scope of their own, the rest as by default
    "scopev4": "scopev4 ::ffff:169.254.0.0/112 2\nscopev4 {x5}/32 5\nscopev4 {x7} 5\n",
    # malformed lines are skipped, a signed number is read as strtoul reads it, comments end a line
    "malformed": ("precedence ::ffff:0:0/96 100x\nprecedence fd00::/8\nprecedence ::ffff:0:0/200 90\n"
                  "label nonsense 3\nprecedence ::/0 40 trailing words\n#precedence ::/0 1\n"
                  "precedence 2001:db8::/32 +45 # comment\nscopev4 10.0.0.0/33 1\nbogus line\n"),
}


@pytest.mark.parametrize("conf", sorted(GAI_CONFS))
def test_getaddrinfo_sorts_by_gai_conf_as_glibc(tap_domain6, tmp_path, conf):
    """/etc/gai.conf's label, precedence and scopev4 lines change the order as they change glibc's:
    glibc in a child whose /etc/gai.conf is the test's file (a bind mount in its own mount
    namespace), usnet told the same file; the same order for every name, and one that differs
    from the built-in tables' (so the file was read)."""
    x, hosts, resolv, names = _mixed_names(tap_domain6, tmp_path)
    gai = tmp_path / "gai.conf"
    gai.write_text(GAI_CONFS[conf].format(x5=f"10.{x}.0.5", x7=f"10.{x}.0.7"))
    calls = [("getaddrinfo", [n, 80, 0, socket.SOCK_STREAM]) for n in names]
    theirs = glibc(hosts, resolv, calls, gai_conf=gai)
    assert theirs != glibc(hosts, resolv, calls)  # the file changes glibc's order: a test that can fail
    assert _usnet_order(tap_domain6, hosts, resolv, names, gai) == theirs
