"""Privilege and limits (issue 14, item 5): low ports, limits per uid and session, pipe names
scoped per uid, status scoped to the viewer, the control socket's mode and group, long pipe names.

Most tests give a session a chosen uid (`Domain.new_session`) and speak the control protocol
to it through `Domain.handle`; one forks a child that becomes `nobody` and speaks it over a
real socket, where its uid is what SO_PEERCRED says.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import tomllib

import pytest

from tests.helpers.usnetd import Daemon
from tests.helpers.util import wait_until
from usnet.abi import memfd
from usnet.abi import protocol as P
from usnet.abi.protocol import ControlError
from usnet.client import Client
from usnet.domain import config
from usnet.domain.limits import Access, AccessRule, Limits, Share, parse_ports
from usnet.domain.loop import Domain
from usnet.drivers import MemWire

NOBODY = 65534
NETIF_ADDR = "10.9.0.1"


@pytest.fixture
def make_domain():
    made: list[Domain] = []

    def make(**kw) -> Domain:
        d = Domain(**kw)
        made.append(d)
        d.add_netif("a", MemWire().a, f"{NETIF_ADDR}/24")
        return d

    yield make
    for d in made:
        d.stop()


def hello(d: Domain, uid: int, program: str = "test"):
    """A session of `uid` that has said Hello (as a client over a socket would)."""
    s = d.new_session(uid, 4242)
    reply, _ = d.handle(s, P.Hello(P.PROTOCOL_VERSION, program))
    assert isinstance(reply, P.Welcome), reply
    return s


def ok(d: Domain, s, req):
    reply, _fds = d.handle(s, req)  # the fds stay the domain's: an in-process session
    assert not isinstance(reply, P.Error), reply
    return reply


def status(d: Domain, s) -> dict:
    """The status document as session `s` sees it (one part: these domains are small)."""
    reply = ok(d, s, P.Status())
    assert reply.parts == 1
    return P.decode_status(reply.data)


def refused(d: Domain, s, req, code: str) -> str:
    reply, fds = d.handle(s, req)
    assert isinstance(reply, P.Error), reply
    assert fds == []
    assert reply.code == code, reply
    return reply.message


def flow(port: int = 0, proto: int = 6, remote: tuple[str, int] | None = None) -> P.OpenFlow:
    raddr, rport = remote or (None, None)
    return P.OpenFlow("a", proto, port, raddr, rport)


# ---------------------------------------------------------------- privileged ports


def test_low_ports_need_root(make_domain):
    d = make_domain()
    user = hello(d, 1000)
    msg = refused(d, user, flow(80, proto=6), "EACCES")
    assert msg == ("tcp port 80 is below unprivileged_port_start = 1024: uid 1000 needs root or an "
                   "[[access]] entry for it")
    assert "udp port 53 " in refused(d, user, flow(53, proto=17), "EACCES")
    assert "tcp port 1023 " in refused(d, user, flow(1023, remote=("10.9.0.2", 5000)), "EACCES")
    assert ok(d, user, flow(1024)).local_port == 1024
    assert ok(d, user, flow(0)).local_port >= 49152  # an ephemeral port is never privileged
    root = hello(d, 0)
    assert ok(d, root, flow(80)).local_port == 80
    assert ok(d, root, flow(53, proto=17)).local_port == 53


def test_access_entries_and_unprivileged_port_start(make_domain):
    rules = (AccessRule(parse_ports("80,443"), uid=1000, text="80,443"),
             AccessRule(parse_ports("25"), gid=NOBODY, text="25"),  # nobody's primary group
             AccessRule(parse_ports("100-110"), uid=1001, program="httpd", text="100-110"))
    d = make_domain(access=Access(rules, unprivileged_port_start=200))
    u1000, u1001, nobody = hello(d, 1000), hello(d, 1001), hello(d, NOBODY)
    assert ok(d, u1000, flow(80)).local_port == 80
    assert ok(d, hello(d, 1002), flow(443)).local_port == 443  # at or above the start: anyone's
    assert "tcp port 22 is below unprivileged_port_start = 200: uid 1000" in refused(d, u1000, flow(22), "EACCES")
    assert "uid 1001" in refused(d, u1001, flow(80), "EACCES")  # another uid's entry
    assert ok(d, nobody, flow(25)).local_port == 25  # by its group
    assert "uid 1000" in refused(d, u1000, flow(25, proto=17), "EACCES")
    assert "uid 1001" in refused(d, u1001, flow(105), "EACCES")  # the program narrows the entry
    httpd = hello(d, 1001, program="httpd")
    assert ok(d, httpd, flow(105)).local_port == 105


def test_access_entry_needs_a_uid_or_gid_and_ports_parse():
    with pytest.raises(ValueError, match="needs a uid or a gid"):
        AccessRule(frozenset({80}), program="httpd")
    assert parse_ports("80, 443,8000-8002") == {80, 443, 8000, 8001, 8002}
    for bad in ("", "http", "0", "70000", "90-80"):
        with pytest.raises(ValueError):
            parse_ports(bad)


# ---------------------------------------------------------------- limits


def test_flow_and_channel_limits_name_the_limit_and_are_released_on_close(make_domain):
    d = make_domain(limits=Limits(flows_per_uid=3, flows_per_session=2, channels_per_session=3))
    a, b = hello(d, 1000), hello(d, 1000)
    f1, f2 = ok(d, a, flow(5001)), ok(d, a, flow(5002))
    assert refused(d, a, flow(5003), "EMFILE") == f"session {a.id} holds 2 flows (limit flows_per_session = 2)"
    ok(d, b, flow(5003))
    assert refused(d, b, flow(5004), "EMFILE") == "uid 1000 holds 3 flows (limit flows_per_uid = 3)"
    ok(d, a, P.OpenPipe("p"))
    assert refused(d, a, P.OpenPipe("p"), "EMFILE") == \
        f"session {a.id} holds 3 channels (limit channels_per_session = 3)"
    ok(d, a, P.CloseChannel(f1.channel))
    assert ok(d, b, flow(5004)).local_port == 5004  # the uid's flow came back with the close
    ok(d, a, P.CloseChannel(f2.channel))
    ok(d, a, P.OpenPipe("p"))  # and the session's channels
    assert d.status()["limits"]["refused"] == {"flows_per_session": 1, "flows_per_uid": 1,
                                               "channels_per_session": 1}
    root = hello(d, 0)  # root is exempt
    for port in range(6000, 6005):
        ok(d, root, flow(port))


def test_ephemeral_port_limit(make_domain):
    d = make_domain(limits=Limits(ephemeral_ports_per_uid=2))
    s = hello(d, 1000)
    ok(d, s, flow(0))
    c = ok(d, s, flow(0, remote=("10.9.0.2", 80)))
    assert refused(d, s, flow(0, proto=17), "EADDRNOTAVAIL") == \
        "uid 1000 holds 2 ephemeral ports (limit ephemeral_ports_per_uid = 2)"
    ok(d, s, flow(7000))  # a port it names is not ephemeral
    ok(d, s, P.CloseChannel(c.channel))
    ok(d, s, flow(0, proto=17))


def test_a_connector_s_port_blocks_are_charged_cut_to_the_limit_and_given_back(make_domain):
    """Issue 18: a connector's block of ephemeral ports counts port by port against the session's
    and uid's ephemeral port limits, is cut to what they leave, and counts no more once given back
    or once its channel closes."""
    d = make_domain(limits=Limits(ephemeral_ports_per_session=100))
    s = hello(d, 1000)

    def held() -> int:
        return status(d, s)["limits"]["usage_by_uid"].get("1000", {}).get("ephemeral_ports", 0)

    c = ok(d, s, P.OpenFlow("a", 6, connector=True))
    assert held() == 0  # the connector itself holds no port
    b1 = ok(d, s, P.AddPorts(c.channel, 64))
    b2 = ok(d, s, P.AddPorts(c.channel, 64))
    assert len(b1.ports) == 64 and len(b2.ports) == 36 and not set(b1.ports) & set(b2.ports)
    assert held() == 100
    assert refused(d, s, P.AddPorts(c.channel), "EADDRNOTAVAIL").endswith(
        "holds 100 ephemeral ports (limit ephemeral_ports_per_session = 100)")
    ok(d, s, P.ReturnPorts(c.channel, b1.block))
    assert held() == 36
    refused(d, s, P.ReturnPorts(c.channel, b1.block), "EINVAL")  # given back once only
    assert len(ok(d, s, P.AddPorts(c.channel, 64)).ports) == 64
    ok(d, s, P.CloseChannel(c.channel))
    assert held() == 0
    assert all(d.switches["a"].ports.owner(6, p) is None for p in b1.ports + b2.ports)


def test_pool_bytes_limit_counts_the_arena_until_the_pipe_is_gone(make_domain):
    d = make_domain()
    probe = hello(d, 0)
    ok(d, probe, P.OpenPipe("size"))
    arena = d.pipe("size", 0).arena
    one = arena.shared_size + arena.ro_size
    d = make_domain(limits=Limits(pool_bytes_per_uid=one * 2 - 1))
    s = hello(d, 1000)
    first = ok(d, s, P.OpenPipe("x"))
    assert refused(d, s, P.OpenPipe("y"), "ENOBUFS") == \
        f"uid 1000 holds {one} pool bytes (limit pool_bytes_per_uid = {one * 2 - 1})"
    second = ok(d, s, P.OpenPipe("x"))  # the other end of the same pool costs no more
    assert d.status()["limits"]["usage_by_uid"]["1000"] == {"channels": 2, "flows": 0, "ephemeral_ports": 0,
                                                            "pool_bytes": one}
    ok(d, s, P.CloseChannel(first.channel))
    assert d.handle(s, P.OpenPipe("y"))[0].code == "ENOBUFS"  # the pool lives while an end is open
    ok(d, s, P.CloseChannel(second.channel))
    ok(d, s, P.OpenPipe("y"))
    assert "pool_bytes_per_uid = " in refused(d, s, flow(0), "ENOBUFS")  # a flow's pool counts too


def test_sessions_per_uid(make_domain):
    d = make_domain(limits=Limits(sessions_per_uid=2))
    a, b = hello(d, 1000), hello(d, 1000)
    c = d.new_session(1000, 4242)
    assert refused(d, c, P.Hello(P.PROTOCOL_VERSION), "EUSERS") == \
        "uid 1000 holds 2 sessions (limit sessions_per_uid = 2)"
    assert refused(d, c, P.Status(), "EUSERS")  # every request of it, until it is ended
    d.serve_once(0)  # the domain ends it once it has its answer
    assert c.id not in d.sessions
    hello(d, 1001)  # another uid is not affected
    d.end_session(a, None)
    hello(d, 1000)  # a session of the uid ended: room for one more
    for _ in range(3):
        Client.local(d)  # the domain's own uid is exempt
    assert b.id in d.sessions


def test_limits_are_checked_when_configured():
    with pytest.raises(ValueError, match="flows_per_uid"):
        Limits(flows_per_uid=-1)
    with pytest.raises(ValueError, match="whole number"):
        Limits(channels_per_uid=True)


# ---------------------------------------------------------------- pipe names


def test_pipe_names_are_per_uid(make_domain):
    d = make_domain()
    owner, other = hello(d, 1000), hello(d, 1001)
    assert ok(d, other, P.OpenPipe("name")).role == 0  # taken first by another uid ...
    assert ok(d, owner, P.OpenPipe("name")).role == 0  # ... is not the owner's pipe of that name
    assert ok(d, owner, P.OpenPipe("name")).role == 1
    assert ok(d, other, P.OpenPipe("name")).role == 1
    assert d.pipe("name", 1000) is not d.pipe("name", 1001)
    assert "already has both ends" in refused(d, other, P.OpenPipe("name"), "EADDRINUSE")


def test_shared_names_need_a_share_entry_covering_both_uids(make_domain):
    d = make_domain(shares=(Share(frozenset({1000, 1001}), "@media"),))
    a, b, c = hello(d, 1000), hello(d, 1001), hello(d, 1002)
    assert refused(d, c, P.OpenPipe("@media1"), "EACCES") == \
        "pipe '@media1' is a shared name ('@'): no [[share]] entry covers it for uid 1002"
    assert "for uid 1000" in refused(d, a, P.OpenPipe("@other"), "EACCES")  # outside the entry's prefix
    assert ok(d, a, P.OpenPipe("@media1")).role == 0
    assert refused(d, c, P.OpenPipe("@media1"), "EACCES") == \
        "pipe '@media1' is a shared name ('@'): no [[share]] entry covers it for uid 1002 with uid 1000, who created it"
    assert ok(d, b, P.OpenPipe("@media1")).role == 1  # zero-copy between uids that trust each other
    # the second uid sees the pipe it holds an end of, the third sees nothing of it
    names = lambda s: [p["name"] for p in status(d, s)["pipes"]]
    assert names(b) == ["@media1"] and names(c) == []


def test_long_pipe_names_fit_a_memfd():
    with Domain() as d:
        c = Client.local(d)
        for name in ("n" * 255, "é" * 127 + "x", "€" * 85):
            a, b = c.open_pipe(name), c.open_pipe(name)
            a.send_bytes(b"long")
            assert b.recv_bytes(timeout=2) == b"long"
            assert name in [p["name"] for p in c.status()["pipes"]]  # the pipe keeps its full name
    assert memfd.memfd_name("x" * 249) == "x" * 249
    cut = memfd.memfd_name("x" * 300)
    assert len(cut.encode()) == memfd.NAME_MAX and cut != memfd.memfd_name("x" * 301)
    cut = memfd.memfd_name("é" * 200)
    assert len(cut.encode()) <= memfd.NAME_MAX and cut.startswith("é" * 100)


# ---------------------------------------------------------------- status


def test_status_shows_a_user_only_its_own(make_domain):
    d = make_domain()
    a, b, root = hello(d, 1000, "alpha"), hello(d, 1001, "beta"), hello(d, 0, "root")
    fa = ok(d, a, flow(5000))
    ok(d, b, flow(5001))
    ok(d, a, P.OpenPipe("pa"))
    ok(d, b, P.OpenPipe("pb"))
    seen = status(d, a)
    assert [(s["uid"], s["program"]) for s in seen["sessions"]] == [(1000, "alpha")]
    assert [p["name"] for p in seen["pipes"]] == ["pa"]
    assert [f["channel"] for f in seen["netifs"][0]["flows"]] == [fa.channel]
    assert list(seen["limits"]["usage_by_uid"]) == ["1000"] and "refused" not in seen["limits"]
    everything = status(d, root)
    assert {s["uid"] for s in everything["sessions"]} == {0, 1000, 1001}
    assert {p["name"] for p in everything["pipes"]} == {"pa", "pb"}
    assert len(everything["netifs"][0]["flows"]) == 2


# ---------------------------------------------------------------- a real non-root client


def _as_nobody(path: str, out: int, hold: int) -> None:
    """The forked child: become nobody, then speak the protocol over a real socket (stdlib and what
    is already imported only: /root, where Python lives, is closed to nobody)."""
    try:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        result: dict = {}
        c = Client.connect(path, program="intruder")
        result["uid"] = c.uid
        for proto, port in ((6, 80), (17, 53)):
            try:
                c.open_flow("a", proto, port)
                result[f"{proto}/{port}"] = "bound"
            except ControlError as e:
                result[f"{proto}/{port}"] = [e.code, e.message]
        _ch, opened = c.open_flow("a", 6, 5555)
        result["5555"] = opened.local_port
        c.open_pipe("victim")  # its own pipe of that name, not root's
        st = c.status()
        result["sessions"] = sorted({s["uid"] for s in st["sessions"]})
        result["pipes"] = [(p["name"], p["uid"]) for p in st["pipes"]]
        os.write(out, json.dumps(result).encode())
        os.close(out)
        os.read(hold, 1)  # hold everything until the parent has looked, then get killed
    finally:
        os._exit(0)


def test_nobody_over_a_real_socket_gets_no_low_port_and_loses_what_it_held_when_killed(make_domain):
    d = make_domain()
    root = Client.local(d)
    root.open_pipe("victim")
    path = f"\0usnet-limits-{os.getpid()}"  # abstract: no file permission stands in the way
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lsock.bind(path)
    lsock.listen(4)
    d.listen(lsock)
    d.start()
    r, w = os.pipe()
    hr, hw = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.close(hw)
        _as_nobody(path, w, hr)
    os.close(w)
    os.close(hr)
    try:
        got = json.loads(os.read(r, 65536) or b"{}")
        assert got["uid"] == NOBODY
        assert got["6/80"] == ["EACCES", "tcp port 80 is below unprivileged_port_start = 1024: "
                                         f"uid {NOBODY} needs root or an [[access]] entry for it"]
        assert got["17/53"][0] == "EACCES" and "udp port 53 " in got["17/53"][1]
        assert got["5555"] == 5555
        assert got["sessions"] == [NOBODY]
        assert got["pipes"] == [["victim", NOBODY]]
        with d.lock:
            assert d.ledger.by_uid[NOBODY] == {"channels": 2, "flows": 1, "ephemeral_ports": 0,
                                               "pool_bytes": d.ledger.by_uid[NOBODY]["pool_bytes"]}
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pid = 0
        wait_until(lambda: NOBODY not in d.ledger.by_uid, 5, "the killed client's holdings to be given back")
        assert (NOBODY, "victim") not in d.pipes and d.pipe("victim") is not None
        assert d.ports.owner(6, 5555) is None
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(r)
        os.close(hw)
        lsock.close()


# ---------------------------------------------------------------- usnetd's config and socket


def test_config_keys_load_check_and_dump(tmp_path):
    text = """
socket_mode = 0o640
socket_group = "nogroup"
unprivileged_port_start = 512

[limits]
flows_per_uid = 10

[[access]]
uid = 1000
ports = "80,443"

[[access]]
gid = "nogroup"
program = "httpd"
ports = 8

[[share]]
uids = [1000, 1001]
prefix = "@media"
"""
    p = tmp_path / "u.toml"
    p.write_text(text)
    cfg = config.load(str(p))
    assert cfg.socket_perms() == (0o640, NOBODY)
    kw = cfg.privilege_kwargs()
    assert kw["limits"].flows_per_uid == 10 and kw["limits"].flows_per_session == Limits().flows_per_session
    assert kw["access"].unprivileged_port_start == 512
    assert [(r.uid, r.gid, r.program, sorted(r.ports)) for r in kw["access"].rules] == \
        [(1000, None, None, [80, 443]), (None, NOBODY, "httpd", [8])]
    assert kw["shares"] == (Share(frozenset({1000, 1001}), "@media"),)
    again = tmp_path / "again.toml"
    again.write_text(config.dump(cfg))
    assert config.load(str(again)) == cfg
    assert tomllib.loads(config.dump(cfg))["limits"] == {"flows_per_uid": 10}
    assert config.Config().socket_perms() == (0o600, None)
    assert config.Config(socket_group=NOBODY).socket_perms() == (0o660, NOBODY)
    for bad, why in (('[limits]\nflow_per_uid = 1', "unknown limits"),
                     ('[[access]]\nports = "80"\nprogram = "x"', "needs a uid or a gid"),
                     ('[[access]]\nuid = 1\nports = "http"', "ports must be like"),
                     ('socket_group = "no-such-group-here"', "no group"),
                     ('socket_mode = 0o7777', "socket_mode"),
                     ('[[share]]\nuids = [1]\nprefix = "media"', "must begin with")):
        p.write_text(bad)
        with pytest.raises(ValueError, match=why):
            config.load(str(p))


@pytest.mark.parametrize("cfg_text, mode, gid", [("", 0o600, 0), ('socket_group = "nogroup"', 0o660, NOBODY),
                                                 ('socket_mode = 0o606', 0o606, 0)])
def test_usnetd_applies_the_socket_mode_and_group(sockdir, cfg_text, mode, gid):
    cfg = sockdir / "u.toml"
    cfg.write_text(cfg_text + "\n")
    d = Daemon(str(sockdir / "s.sock"), sockdir / "usnetd.log", "--config", str(cfg))
    try:
        st = os.stat(d.path)
        assert stat.S_ISSOCK(st.st_mode)
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (mode, gid)
        assert Client.connect(d.path).uid == 0
    finally:
        d.stop()
