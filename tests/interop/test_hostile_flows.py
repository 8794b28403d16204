"""Hostile clients on flow-switch channels, against a real usnetd (issue 14, "How it must be shown").

The user-pipe attacks of tests/test_hostile_usnetd.py, made through a UDP
flow on a netif instead. usnetd owns a TAP whose kernel side lives in a
network namespace the test makes (hostile_harness.TapNetns), with a UDP
echo in it. The victim is another client's UDP flow on the same netif: it
sends numbered, CRC-32-ended datagrams to the kernel's echo and checks every
one that comes back, in order (victim_peer.py flow-stream).

After each attack: usnetd answers Status, the victim's datagrams still move
intact, every pool's books balance, usnetd's fault counter is 0 (what a
client writes in its memory is handled by the validated reader, never by
the fault barrier catching an exception), the attacker's channel ends
defunct with its reason (ABUSE, or OWNER_GONE for a killed process), and
once the attacker has left usnetd's descriptors and RSS are back near the
baseline.
"""

from __future__ import annotations

import contextlib
import mmap
import os

import pytest

from tests.helpers.hostile_harness import ANSWER, HOSTILE, Harness, TapNetns, deadline_loop, quick_client
from tests.helpers.util import require_privileges
from usnet.abi import ring as ringmod
from usnet.abi.events import DefunctReason
from usnet.abi.schema import W_REASON, W_STATE, W_SYNC, ChannelState

pytestmark = pytest.mark.privileged


@pytest.fixture
def flows(sockdir):
    """usnetd with a TAP netif into a fresh namespace, and a victim flow talking to the kernel's echo."""
    require_privileges()
    net = TapNetns()
    try:
        h = Harness(sockdir, daemon_args=("--config", net.config(sockdir)), before_victim=net.take_tap,
                    victim_argv=net.victim_argv())
        h.net = net
        try:
            h.victim_pipe = victim_pipe(h)
            yield h
        finally:
            h.close()
    finally:
        net.close()


def victim_pipe(h: Harness) -> str:
    """The name of the victim flow's pipe (flow:<its channel>)."""
    st_ = h.status("start-up")
    (s,) = [s for s in st_["sessions"] if s["program"] == "victim-flow"]
    (cid,) = s["channels"]
    return f"flow:{cid}"


def flow_pipes(st_: dict) -> list[dict]:
    """The pipes of every flow channel (Status shows them with their flows, not under `pipes`)."""
    return [f["pipe"] for nif in st_["netifs"] for f in nif["flows"]]


def pipe_info(st_: dict, name: str) -> dict | None:
    return next((p for p in st_["pipes"] + flow_pipes(st_) if p["name"] == name), None)


def served(h: Harness, what: str) -> dict:
    """Harness.assert_served, and the books of every flow's pool balance too."""
    st_ = h.assert_served(what)
    h.assert_books({"pipes": flow_pipes(st_)}, what)
    return st_


def assert_no_faults(st_: dict, what: str) -> None:
    """Nothing the attacker wrote reached usnetd's fault barriers: the validated reader took it."""
    assert st_["faults"] == 0, f"after {what}: usnetd's fault barrier caught {st_['faults']} exception(s)"
    bad = [(p["name"], p["faults"]) for p in st_["pipes"] + flow_pipes(st_) if p["faults"]]
    assert not bad, f"after {what}: channel barriers caught exceptions: {bad}"


def assert_defunct(h: Harness, ch, reason: DefunctReason, what: str) -> None:
    """The attacker's channel ends defunct with `reason`: in Status and in its own state words."""
    name = f"flow:{ch.id}"
    for _ in deadline_loop(ANSWER):
        if ch._words[W_STATE + ch.role] == ChannelState.DEFUNCT:
            break
    else:
        pytest.fail(f"after {what}: the attacker's channel is still {ChannelState(ch._words[W_STATE + ch.role])!r}")
    got = DefunctReason(ch._words[W_REASON + ch.role])
    assert got is reason, f"after {what}: the attacker's channel is defunct with {got.name}, not {reason.name}"
    p = pipe_info(h.status(what), name)
    assert p is not None and p["defunct"] == reason.name, f"after {what}: Status shows {p}"
    assert p["pool"]["in_alloc"] == p["pool"]["held"] == 0, f"after {what}: defunct flow still lends: {p}"


def attacker(h: Harness, program: str, **attrs: int):
    """A client in this process with a UDP flow on the netif; returns (client, ctl, socket)."""
    c, ctl = quick_client(h.path, program)
    try:
        return c, ctl, c.udp_socket(TapNetns.NETIF, 0, **attrs)
    except BaseException:
        ctl.close()
        raise


def echo_round(h: Harness, sock, n: int) -> None:
    """`n` datagrams to the kernel's echo and back: the flow works before the attack."""
    sock.send_many([b"before %d" % i for i in range(n)], h.net.echo_addr)
    got: list = []
    for _ in deadline_loop(ANSWER):
        with contextlib.suppress(BlockingIOError):
            got += sock.recv_many(n - len(got), timeout=0.2)
        if len(got) == n:
            break
    assert sorted(d for d, _ in got) == sorted(b"before %d" % i for i in range(n)), got


def leave(h: Harness, what: str, ctl, *socks) -> None:
    """The attacker goes; usnetd is back to its baseline and the victim ends having lost nothing."""
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()
    ctl.close()
    h.assert_recovered(what)
    h.finish(what, h.victim_pipe)


def test_flow_victim_alone(flows):
    """The control: with no attacker the victim's datagrams go round intact and nothing faults."""
    h = flows
    st_ = served(h, "nothing")
    assert_no_faults(st_, "nothing")
    h.finish("nothing", h.victim_pipe)


# ---------------------------------------------------------------- impossible ring counters


def blast_until_defunct(h: Harness, sock, ch, what: str, batches: int = 200) -> None:
    """Keep datagrams coming back to the attacker's flow (its own sends, echoed by the kernel)
    until its channel is defunct; bounded in batches and time."""
    for i, _ in zip(range(batches), deadline_loop(10)):
        if ch._words[W_STATE + ch.role] != ChannelState.OPEN:
            return
        with contextlib.suppress(OSError):  # a defunct channel's send raises: that is the end we wait for
            sock.send_many([b"blast %d" % i] * 16, h.net.echo_addr)
    h.assert_alive(what)


@pytest.mark.parametrize("cons", [(1 << 64) - 1, 1 << 62], ids=["2**64-1", "1<<62"])
def test_impossible_consumer_counter_on_a_flows_rx_ring(flows, cons):
    """The issue's first crash, through a flow: the RX ring's consumer counter set to `cons`
    while the kernel's echoes keep arriving for it. Each delivery that finds it counts a
    violation (BAD_COUNTER) through the validated reader; enough of them defunct it (ABUSE)."""
    h = flows
    _c, ctl, sock = attacker(h, "rx-attacker", ring_size=64)
    ch = sock.channel
    echo_round(h, sock, 8)
    ch._rx.q[ringmod.CONS] = cons
    what = f"a flow's RX consumer counter of {cons:#x} with packets arriving"
    blast_until_defunct(h, sock, ch, what)
    st_ = served(h, what)
    assert_no_faults(st_, what)
    p = pipe_info(st_, f"flow:{ch.id}")
    assert p is not None and p["ends"][0]["violations"] > 0, p
    assert_defunct(h, ch, DefunctReason.ABUSE, what)
    leave(h, what, ctl, sock)


def datagram(sock, to: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4/UDP datagram from the flow's address and port, made by scapy (not by usnet)."""
    from scapy.layers.inet import IP, UDP

    return bytes(IP(src=sock.local[0], dst=to[0], id=0, flags="DF") / UDP(sport=sock.local[1], dport=to[1])
                 / payload)


def test_impossible_consumer_counter_on_a_flows_alloc_ring(flows):
    """The issue's ALLOC reproducer, through a flow: take the whole quota from ALLOC, set its
    consumer to 1<<63, then send what was taken. Each transmit batch makes the switch account
    what was taken (`_collect_taken`) and top the ring up (`FlowPort.top_up` -> `_refill`),
    each kick makes the pipe sync: every one reads the impossible counter through the
    validated reader (a violation), none raises; the channel ends defunct (ABUSE)."""
    h = flows
    _c, ctl, sock = attacker(h, "alloc-attacker", ring_size=64, quota=64, packets=128)
    ch = sock.channel
    echo_round(h, sock, 4)
    taken: list[int] = []
    for _ in deadline_loop(ANSWER):
        with contextlib.suppress(BlockingIOError, OSError):
            taken += ch.alloc(64 - len(taken), timeout=0.1)
        if len(taken) >= 64:
            break
    assert len(taken) == 64, f"took only {len(taken)} of the quota"
    ch._alloc.q[ringmod.CONS] = 1 << 63
    what = "an ALLOC consumer counter of 1<<63 on a flow, then sends"
    for i, p in enumerate(taken):
        if ch._words[W_STATE + ch.role] != ChannelState.OPEN:
            break
        data = datagram(sock, h.net.echo_addr, b"after %d" % i)
        ch.write(p, data)
        ch.set_length(p, len(data))
        with contextlib.suppress(OSError):
            ch.send([p])
            ch._kick()
        seq = ch._words[W_SYNC + ch.role]
        for _ in deadline_loop(ANSWER):  # usnetd has served this send and kick
            if ch._words[W_SYNC + ch.role] != seq or ch._words[W_STATE + ch.role] != ChannelState.OPEN:
                break
    h.assert_alive(what)
    st_ = served(h, what)
    assert_no_faults(st_, what)
    p = pipe_info(st_, f"flow:{ch.id}")
    assert p is not None and p["ends"][0]["violations"] > 0, p
    assert_defunct(h, ch, DefunctReason.ABUSE, what)
    leave(h, what, ctl, sock)


# ---------------------------------------------------------------- a client killed


def test_attacker_flow_sigkilled_mid_transfer(flows):
    """A process moving datagrams through its flow is SIGKILLed: its channel ends defunct with
    OWNER_GONE (read from its read-only region, which outlives it), its flow and pool go, and
    the victim's flow never notices."""
    h = flows
    report = h.sockdir / "sender.report"
    atk = h.spawn(HOSTILE, "flow-sender", "--netif", TapNetns.NETIF,
                  "--to", "{}:{}".format(*h.net.echo_addr), "--report", str(report))
    cid, ro_fd = map(int, report.read_text().split())
    fd = os.open(f"/proc/{atk.pid}/fd/{ro_fd}", os.O_RDONLY)
    try:
        ro = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ)
    finally:
        os.close(fd)
    words = memoryview(ro)[:128].cast("I")
    try:
        assert words[W_STATE] == ChannelState.OPEN
        assert pipe_info(h.status("start"), f"flow:{cid}") is not None
        h.kill(atk)
        assert atk.returncode == -9
        what = "a flow's process SIGKILLed mid-transfer"
        for _ in deadline_loop(ANSWER):
            if words[W_STATE] == ChannelState.DEFUNCT:
                break
        else:
            pytest.fail(f"after {what}: its channel is not defunct")
        assert DefunctReason(words[W_REASON]) is DefunctReason.OWNER_GONE
        st_ = served(h, what)
        assert_no_faults(st_, what)
        assert pipe_info(st_, f"flow:{cid}") is None, "the dead process's flow outlived it"
    finally:
        words.release()
        ro.close()
    h.assert_recovered(what)
    h.finish(what, h.victim_pipe)
