"""Fault barriers and the validated reader (issue 14; docs/architecture.md, trust boundary).

Every kind of object the domain loop serves gets an exception injected at its
service entry point: a user pipe's kick, a flow's transmit and receive, a
netif's receive, a session's request, the listener, the lease timers, the
advisories. The loop must survive each, the fault must end at its owner (a
channel defunct with ABUSE, a session ended with PROTOCOL, the rest logged and
counted) and a victim pair beside it must keep its traffic whole.

Then hypothesis writes random values into every client-writable word of a
flow channel (ring counters, flags, slots, UMD) while a victim's datagrams
flow: the domain's validated reader must turn every value into a refusal or a
defunct, so that no fault barrier is ever needed (`domain.faults` stays 0).
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.util import net_factory, wait_until
from usnet.abi import protocol as P
from usnet.abi.events import DefunctReason
from usnet.abi.ring import CONS, FLAGS, HEADER, PROD
from usnet.abi.schema import RingKind
from usnet.abi.transport import recv_msg, send_msg
from usnet.client import Client
from usnet.client.channel import ChannelDefunct
from usnet.domain.loop import Domain
from usnet.domain.switch.port import FlowPort
from usnet.drivers import MemWire

A_IP, B_IP = "10.9.0.1", "10.9.0.2"


class Boom(RuntimeError):
    """The injected fault."""


def boom(*args: object, **kw: object) -> None:
    raise Boom("injected")


class Net:
    """One domain with two memwire netifs; a victim UDP pair a:5000 -> b:6000."""

    def __init__(self, start: bool = True) -> None:
        self.d = Domain()
        self.w = MemWire()
        self.swa = self.d.add_netif("a", self.w.a, f"{A_IP}/24")
        self.swb = self.d.add_netif("b", self.w.b, f"{B_IP}/24")
        if start:
            self.d.start()
        self.c = Client.local(self.d)
        self.tx = self.c.udp_socket("a", 5000)
        self.rx = self.c.udp_socket("b", 6000)
        self.sent = 0

    def victim_roundtrip(self, n: int = 20) -> None:
        """The victim's next `n` numbered datagrams all arrive, in order, intact."""
        first = self.sent
        for i in range(first, first + n):
            self.tx.sendto(i.to_bytes(4, "big") + bytes(i % 251 for _ in range(100)), (B_IP, 6000))
        self.sent += n
        got = []
        while len(got) < n:  # (a test's own marker datagram, shorter, may come first)
            got += [d for d, _ in self.rx.recv_many(64, timeout=5) if len(d) == 104]
        assert [int.from_bytes(d[:4], "big") for d in got] == list(range(first, first + n))
        assert all(d[4:] == bytes(int.from_bytes(d[:4], "big") % 251 for _ in range(100)) for d in got)

    def port(self, sock) -> FlowPort:
        return self.d.channels[sock.channel.id].flow.port


make_net = net_factory(Net)


def defunct_reason(ch) -> DefunctReason:
    with pytest.raises(ChannelDefunct) as ei:
        for _ in range(100):
            ch.poll()
            ch.alloc(1)  # raises once the nexus took the channel back
    return ei.value.reason


def alive(d: Domain) -> bool:
    return d._thread is not None and d._thread.is_alive()


# -- injected faults, one per kind of object the loop serves -----------------------------------


def test_flow_transmit_fault_defuncts_only_that_flow(make_net):
    n = make_net()
    n.victim_roundtrip()
    att = n.c.udp_socket("a", 5001)
    port = n.port(att)
    port.pull = port.pull_any = boom  # the switch takes what the flow sent through these
    att.sendto(b"x", (B_IP, 6000))
    wait_until(lambda: n.port(att).pipe.defunct_reason is not None, 5, "the attacker's channel defunct")
    assert defunct_reason(att.channel) == DefunctReason.ABUSE
    assert alive(n.d) and n.d.faults == 1
    n.victim_roundtrip()


def test_flow_receive_fault_defuncts_only_that_flow(make_net):
    n = make_net()
    att = n.c.udp_socket("b", 6001)
    n.port(att)._reserve = boom  # where a delivery takes pool packets for the arrivals
    n.tx.sendto(b"to the attacker", (B_IP, 6001))
    wait_until(lambda: n.port(att).pipe.defunct_reason is not None, 5, "the attacker's channel defunct")
    assert defunct_reason(att.channel) == DefunctReason.ABUSE
    assert n.port(att).rx_dropped == 1  # the datagram it was to get is counted
    assert alive(n.d) and n.d.faults == 1  # counted where every fault is, and shown with its flow:
    (flow,) = [f for nif in n.d.status()["netifs"] for f in nif["flows"] if f["channel"] == att.channel.id]
    assert (flow["pipe"]["defunct"], flow["pipe"]["faults"]) == ("ABUSE", 1)
    n.victim_roundtrip()


def test_pipe_kick_fault_defuncts_only_that_pipe_in_process_and_over_a_socket(make_net):
    n = make_net()
    # in-process: the client's kick is a method call into the domain
    a = n.c.open_pipe("p")
    n.c.open_pipe("p")
    ref = n.d.channels[a.id]
    ref.pipe.sync = boom
    n.d.kick_channel(a.id)
    assert ref.pipe.defunct_reason == DefunctReason.ABUSE and defunct_reason(a) == DefunctReason.ABUSE
    # over a socket: the kick is an eventfd the loop serves
    remote = Client.from_socket(n.d.socketpair_session())
    b = remote.open_pipe("q")
    ref = n.d.channels[b.id]
    ref.pipe.sync = boom
    b._kick()
    wait_until(lambda: ref.pipe.defunct_reason is not None, 5, "the kicked pipe defunct")
    assert defunct_reason(b) == DefunctReason.ABUSE
    assert alive(n.d) and n.d.faults == 2
    n.victim_roundtrip()
    assert remote.status()["faults"] == 2  # and the session that owned it is still served
    remote.close()


def test_netif_receive_fault_is_contained_and_the_netif_serves_on(make_net):
    n = make_net()
    real = n.swb.service_rx
    calls = []

    def once(*a, **kw):
        if not calls:
            calls.append(1)
            raise Boom("injected")
        return real(*a, **kw)

    n.swb.service_rx = once
    n.tx.sendto(b"lost in the fault", (B_IP, 6000))
    wait_until(lambda: calls, 5, "the netif's receive to run")
    n.victim_roundtrip()  # the frame of the fault may be lost; the netif goes on receiving
    assert alive(n.d) and n.d.faults == 1


def test_control_request_fault_is_an_error_reply_and_the_session_goes_on(make_net, monkeypatch):
    n = make_net()
    sock = n.d.socketpair_session()
    sock.settimeout(5)
    real = n.d._dispatch

    def faulty(session, req):
        if isinstance(req, P.Resize):
            raise Boom("injected")
        return real(session, req)

    monkeypatch.setattr(n.d, "_dispatch", faulty)
    send_msg(sock, P.encode(P.Hello(P.PROTOCOL_VERSION)))
    assert isinstance(P.decode_reply(recv_msg(sock)[0]), P.Welcome)
    send_msg(sock, P.encode(P.Resize(1, 64, None)))
    reply = P.decode_reply(recv_msg(sock)[0])
    assert isinstance(reply, P.Error) and reply.code == "EPROTO" and "Boom" in reply.message
    send_msg(sock, P.encode(P.Status()))
    assert isinstance(P.decode_reply(recv_msg(sock)[0]), P.StatusReply)
    assert n.d.faults == 1
    sock.close()


def test_session_fault_ends_that_session_with_protocol_and_defuncts_its_channels(make_net, monkeypatch):
    n = make_net()
    remote = Client.from_socket(n.d.socketpair_session())
    ch = remote.open_pipe("r")
    (s,) = [s for s in n.d.sessions.values() if ch.id in s.channels]
    real = n.d._serve_session

    def faulty(session):
        if session is s:
            raise Boom("injected")
        return real(session)

    monkeypatch.setattr(n.d, "_serve_session", faulty)
    with pytest.raises(OSError):
        remote.status()  # the domain hangs up on it
    assert defunct_reason(ch) == DefunctReason.PROTOCOL
    assert s.id not in n.d.sessions and alive(n.d)
    n.victim_roundtrip()
    remote.close()  # its socket and its channel's mappings, hung up on but still open here


def test_listener_lease_timer_and_advisory_faults_are_contained(make_net, monkeypatch, tmp_path):
    n = make_net()
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lsock.bind(str(tmp_path / "s.sock"))
    lsock.listen()
    hits: dict[str, int] = {}

    def counted(name, real):
        def f(*a, **kw):
            if not hits.get(name):
                hits[name] = 1
                raise Boom(name)
            return real(*a, **kw)
        return f

    monkeypatch.setattr(n.d, "_accept", counted("accept", n.d._accept))
    monkeypatch.setattr(n.d.leases, "tick", counted("tick", n.d.leases.tick))
    for adv in n.d.advisories.values():
        monkeypatch.setattr(adv, "turn", counted(f"adv-{adv.netif.name}", adv.turn))  # what the loop calls
    n.d.listen(lsock)
    first = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    first.connect(str(tmp_path / "s.sock"))  # its accept faults: it waits in the backlog
    wait_until(lambda: len(hits) == 4, 5, "every injected fault to fire")
    # the listener is still served: the connection that waited is taken, and answered
    c = Client.from_socket(first)
    assert c.status()["faults"] >= 4
    assert alive(n.d)
    n.victim_roundtrip()
    c.close()
    lsock.close()


# -- random values in every client-writable word, while a victim's traffic flows -----------------


def _client_words(port: FlowPort) -> dict[str, tuple[np.ndarray, int]]:
    """(u64 or u32 array view, index) of every word a client may write in its flow channel."""
    pipe = port.pipe
    lay = pipe.layout
    mem = np.frombuffer(pipe.arena.shared, np.uint8)
    out: dict[str, tuple[np.ndarray, int]] = {}
    for info in lay.rings:
        q = mem[info.offset : info.offset + HEADER].view(np.uint64)
        w = mem[info.offset : info.offset + HEADER].view(np.uint32)
        name = f"{RingKind(info.kind).name}{info.role}"
        out[f"{name}.prod"] = (q, PROD)
        out[f"{name}.cons"] = (q, CONS)
        out[f"{name}.flags"] = (w, FLAGS)
        slots = mem[info.offset + HEADER : info.offset + HEADER + 4 * min(info.capacity, 64)].view(np.uint32)
        for i in (0, 1, len(slots) - 1):
            out[f"{name}.slot{i}"] = (slots, i)
    umd = port.umd_np
    per = lay.umd_size // 4
    for pkt in (0, 1, lay.max_packets - 1):
        for word in range(per):
            out[f"umd{pkt}.{word}"] = (umd, pkt * per + word)
    return out


VALUES = st.one_of(st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**62, 2**63, 2**64 - 1]),
                   st.integers(0, 2**64 - 1))


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(writes=st.lists(st.tuples(st.integers(0, 10_000), VALUES), min_size=1, max_size=12))
def test_random_client_writes_are_refusals_or_a_defunct_never_a_fault(make_net, writes):
    n = make_net(start=False)  # the loop is driven here, so every exception would reach us
    att = n.c.udp_socket("a", 5002)
    port = n.port(att)
    words = _client_words(port)
    names = sorted(words)
    att.sendto(b"before", (B_IP, 6000))
    for k, value in writes:
        arr, i = words[names[k % len(names)]]
        arr[i] = value & (0xFFFFFFFF if arr.dtype == np.uint32 else 0xFFFFFFFFFFFFFFFF)
        n.d.serve_once(0)
    for i in range(5):
        n.tx.sendto(i.to_bytes(4, "big"), (B_IP, 6000))
        n.rx.channel._kick()
        for _ in range(4):
            n.d.serve_once(0)
    got = [d for d, _ in n.rx.recv_many(64, timeout=0)]
    assert [d for d in got if d != b"before"] == [i.to_bytes(4, "big") for i in range(5)]
    assert n.d.faults == 0 and port.pipe.faults == 0
    assert port.pipe.defunct_reason in (None, DefunctReason.ABUSE)
    if port.pipe.defunct_reason is None:
        port.pipe.pool.check()  # the accounting of a channel that survived is still exact


def test_a_flow_closed_earlier_in_the_turn_is_not_served_by_the_bell_the_selector_reported():
    """The selector reports every ready descriptor at the start of a turn; a session's close
    served before a flow's bell in that same turn unmaps the flow's rings and closes its bell.
    The bell's turn then came to `_repoll`, which drained the (closed, maybe reused) descriptor and
    wrote the flow's ring flags: "released memoryview" in the transmit barrier, a fault for a
    clean close. It now asks whether the flow is still there first."""
    from tests.helpers.util import memwire_domain

    with memwire_domain() as (d, c):
        u = c.udp_socket("a", 7100)
        ref = d.channels[u.channel.id]
        sw, flow = ref.switch, ref.flow
        fd = flow.port.bell
        other = c.udp_socket("a", 7101)  # a bell that may take the closed one's number
        u.close()
        with d.lock:
            assert flow.id not in sw.flows
            assert d._repoll(sw, flow, fd) is False  # no fault, nothing drained, nothing written
        assert d.faults == 0
        other.close()
