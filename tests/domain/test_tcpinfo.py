"""The TCPINFO records (usnet.abi.tcpinfo): a client that writes garbage into its own records
cannot crash the domain or touch another client's rows, and the reader never raises on any bytes.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.util import wait_until
from usnet import socket as us
from usnet.abi import tcpinfo
from usnet.client import Client
from usnet.domain.loop import Domain
from usnet.drivers.memwire import MemWire


def _rows(d: Domain) -> dict[int, dict]:
    return {f["channel"]: f for n in d.status()["netifs"] for f in n["flows"] if f.get("tcp") is not None}


def test_a_client_lying_in_its_records_affects_only_its_own_rows():
    d = Domain()
    w = MemWire()
    d.add_netif("a", w.a, "10.9.0.1/24")
    d.add_netif("b", w.b, "10.9.0.2/24")
    d.start()
    try:
        honest, liar = Client.local(d), Client.local(d)
        srv = us.socket(client=honest, netif="b")
        srv.bind(("10.9.0.2", 8000))
        srv.listen()
        cl = us.socket(client=honest, netif="a")
        cl.connect(("10.9.0.2", 8000))
        a, _ = srv.accept()
        cl.sendall(b"x" * 1000)
        assert a.recv(1000)
        ch, _ = liar.open_flow("b", 6, 9000)  # a TCP listener's channel whose records the liar writes itself
        mem = ch.tcpinfo
        assert mem is not None
        def both_ends_published() -> bool:  # the accepted end's row and the connecting end's
            rows = [r for f in _rows(d).values() for r in f["tcp"]["rows"]
                    if (r["local_port"] == 8000 and r["state"] != "LISTEN") or r["remote"].endswith(":8000")]
            return len(rows) == 2 and all(r["state"] == "ESTAB" for r in rows)
        wait_until(both_ends_published, 5, "the honest connection to be published, both ends")
        before = {c: f["tcp"]["rows"] for c, f in _rows(d).items() if c != ch.id}
        seen = set()
        for trial in range(40):  # garbage: random bytes, forged rows for others' ports, odd seqs
            rnd = os.urandom(len(mem) - tcpinfo.TCPINFO_HEADER.size)
            mem[tcpinfo.TCPINFO_HEADER.size:] = rnd
            wr = tcpinfo.TcpInfoWriter.__new__(tcpinfo.TcpInfoWriter)
            wr.mem, wr.slots, wr._seq = mem, 4, [0] * 4
            forged = list(tcpinfo._EMPTY)
            forged[0], forged[1], forged[3] = 4, 4, 8000 if trial % 2 else 9000  # ESTAB, IPv4, a port
            forged[4], forged[6:10] = 1234, [10, 9, 0, 1]  # remote 10.9.0.1:1234
            wr.publish(0, tuple(forged))
            mem[tcpinfo.TCPINFO_HEADER.size + tcpinfo.RECORD_SIZE : tcpinfo.TCPINFO_HEADER.size
                + tcpinfo.RECORD_SIZE + 4] = b"\x01\x00\x00\x00"  # slot 1: forever mid-write
            mem[:8] = os.urandom(8)  # its header too
            flows = _rows(d)
            mine = flows[ch.id]["tcp"]
            assert all(r["local_port"] == 9000 for r in mine["rows"])  # never another port's row
            seen.update(r["remote"] for r in mine["rows"])
            assert mine["torn"] >= 1
            after = {c: f["tcp"]["rows"] for c, f in flows.items() if c != ch.id}
            assert {c: [(r["state"], r["remote"]) for r in rows] for c, rows in after.items()} == \
                   {c: [(r["state"], r["remote"]) for r in rows] for c, rows in before.items()}
        assert "10.9.0.1:1234" in seen  # a lie about its own listener's connection is all it can tell
        assert d.status()["faults"] == 0
        ch.close()
        a.close()
        cl.close()
        srv.close()
    finally:
        d.stop()


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=tcpinfo.region_bytes(3) - 64, max_size=tcpinfo.region_bytes(3) - 64))
def test_the_reader_takes_any_bytes(body):
    mem = bytearray(64) + bytearray(body)
    rows, torn, bad = tcpinfo.read_records(memoryview(mem), 3)
    assert len(rows) + torn + bad <= 3
    for r in rows:
        assert 1 <= r.fields["state"] <= 10 and r.fields["family"] in (4, 6)


@given(st.lists(st.integers(0, 10), min_size=1, max_size=8))
def test_what_the_writer_publishes_the_reader_reads(states):
    mem = memoryview(bytearray(tcpinfo.region_bytes(len(states))))
    tcpinfo.write_header(mem, len(states))
    w = tcpinfo.TcpInfoWriter(mem)
    for i, s in enumerate(states):
        v = list(tcpinfo._EMPTY)
        v[0], v[1], v[3] = s, 4, 1000 + i
        w.publish(i, tuple(v))
    rows, torn, bad = tcpinfo.read_records(mem, len(states))
    assert (torn, bad) == (0, 0)
    assert [(r.slot, r.fields["state"], r.fields["local_port"]) for r in rows] == \
           [(i, s, 1000 + i) for i, s in enumerate(states) if s]
