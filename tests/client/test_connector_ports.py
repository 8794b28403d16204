"""The connector's blocks of ephemeral ports, from the socket face (issue 18): a connect takes a free
port of the process's blocks and sends no control message; a port is held while its connection
lives (TIME-WAIT included) and free again once TCP forgets it; a block that stays all free goes back
with a notice. Two usnet stacks on a memwire, no root: netif a connects, netif b listens."""

from __future__ import annotations

import errno

import pytest

from tests.helpers.util import listen_on_b, memwire_domain, wait_until
from usnet import socket as us
from usnet.client import Client
from usnet.domain.loop import Domain

A_IP, B_IP = "10.9.0.1", "10.9.0.2"


@pytest.fixture
def dc():
    with memwire_domain() as pair:
        yield pair


def _connector_flow(d: Domain) -> dict:
    flows = [f for n in d.status()["netifs"] if n["netif"]["name"] == "a" for f in n["flows"]]
    assert len(flows) == 1 and flows[0]["connector"], flows
    return flows[0]


def _connect_and_see_close(c: Client, srv: us.socket) -> us.socket:
    """A connection the server accepts and closes first (its TIME-WAIT is the server's)."""
    s = us.create_connection((B_IP, 7100), timeout=10, client=c, netif="a")
    k, _ = srv.accept()
    k.close()
    assert s.recv(1) == b""
    return s


def test_a_connect_sends_no_control_message_and_ports_come_round_again(dc):
    d, c = dc
    srv = listen_on_b(c, 7100, 16, timeout=10)
    first = _connect_and_see_close(c, srv)  # the connector and its first block
    eng = first.engine
    first.close()
    before = dict(d.requests)
    ports = set()
    for _ in range(100):  # more than a block: the ports the server closed on come round again
        s = _connect_and_see_close(c, srv)
        ports.add(s.getsockname()[1])
        s.close()
        wait_until(lambda: len(eng.ports.users) == 0, 10, "the port to be free once TCP forgot it")
    asked = {k: v - before.get(k, 0) for k, v in d.requests.items() if v != before.get(k, 0)}
    # no control request for 100 connects and closes; the notices that free their ports' bindings
    # in the switch go for many ports at once (when the block's free ports run out, or each second)
    assert set(asked) <= {"ReleasePorts"} and asked.get("ReleasePorts", 0) <= 10, asked
    assert eng.ports.requested == 1 and _connector_flow(d)["ports"] == 64
    assert ports <= set(eng.ports.block_of) and len(ports) == 64  # every port of the block, in turn
    srv.close()


def test_a_port_in_time_wait_stays_held_and_the_next_connect_takes_another(dc):
    d, c = dc
    srv = listen_on_b(c, 7100, 16, timeout=10)
    s = us.create_connection((B_IP, 7100), timeout=10, client=c, netif="a")
    k, _ = srv.accept()
    port = s.getsockname()[1]
    s.close()  # usnet closes first: its side waits out TIME-WAIT, as Linux's would
    assert k.recv(1) == b""
    k.close()
    eng = s.engine
    wait_until(lambda: any(x.local_port == port and x.state.name == "TIME_WAIT"
                           for x in list(eng.tcp.connections.values())), 10, "TIME-WAIT")
    assert port in eng.ports.users  # held, not free
    used = set()
    for _ in range(70):  # more connects than the block's other ports: they come round, never that one
        t = _connect_and_see_close(c, srv)
        used.add(t.getsockname()[1])
        t.close()
        wait_until(lambda: eng.ports.users.keys() == {port}, 10, "the port to be free once TCP forgot it")
    assert port not in used and len(used) == 63
    assert eng.ports.requested == 1 and d.requests["AddPorts"] == 1
    srv.close()


def test_a_block_that_stays_free_goes_back_with_a_notice_the_last_one_stays(dc):
    d, c = dc
    srv = listen_on_b(c, 7100, 128, timeout=10)
    socks = [us.create_connection((B_IP, 7100), timeout=10, client=c, netif="a") for _ in range(70)]
    eng = socks[0].engine
    assert eng.ports.requested == 2 and _connector_flow(d)["ports"] == 128
    for s in socks:
        k, _ = srv.accept()
        k.close()
        assert s.recv(1) == b""
        s.close()
    wait_until(lambda: not eng.ports.users, 10, "every port free")
    eng.ports.return_after = 0.0
    eng.wake()
    wait_until(lambda: d.requests["ReturnPorts"] == 1, 10, "an idle block given back")
    wait_until(lambda: _connector_flow(d)["ports"] == 64, 10, "its ports gone from the switch")
    assert len(eng.ports.blocks) == 1 and len(eng.ports) == 64
    s = _connect_and_see_close(c, srv)  # the block kept serves the next connect
    assert s.getsockname()[1] in eng.ports.block_of
    s.close()
    srv.close()


@pytest.mark.parametrize("address,code", [(("10.9.0.255", 80), errno.ENETUNREACH),
                                          (("224.0.0.1", 80), errno.ENETUNREACH),
                                          (("192.0.2.1", 80), errno.ENETUNREACH),  # no route
                                          ((B_IP, 0), errno.ECONNREFUSED)])
def test_what_no_peer_can_be_is_refused_at_once_and_takes_no_port(dc, address, code):
    """As Linux's connect says at once (the switch would drop every packet anyway)."""
    d, c = dc
    s = us.socket(client=c, netif="a")
    with pytest.raises(OSError) as e:
        s.connect(address)
    assert e.value.errno == code
    s.close()
    assert d.requests.get("AddPorts", 0) <= 1
