"""SO_TIMESTAMP on TCP (usnet.proto.tcp.rxstamp): a read is stamped with the arrival of its last
byte, as Linux's tcp_recv_timestamp gives the last segment read's; bytes that came before the
option have none. A property test against a per-byte model, and the connection's use of it
over test_tcp_connection's simulated link (a listener's connections inherit the option)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.proto.test_tcp_connection import Net
from usnet.proto.tcp.rxstamp import RxStamps

_ops = st.lists(st.tuples(st.sampled_from(["batch", "more", "read", "peek"]), st.integers(1, 50)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(unstamped=st.integers(0, 40), ops=_ops)
def test_a_read_is_stamped_with_its_last_bytes_arrival(unstamped, ops):
    """Batches (a new `now`) and more segments of the same batch arrive; reads and peeks of any
    size: `last` is the model's stamp of the last byte read (None for the unstamped prefix), and
    the marks never outnumber the bytes queued."""
    st_, model, now = RxStamps(), [None] * unstamped, 0.0
    read = 0
    for op, n in ops:
        if op in ("batch", "more"):
            now += op == "batch"
            st_.mark(len(model), len(model) + n, now)
            model += [now] * n
        else:
            n = min(n, len(model) - read)
            if not n:
                continue
            st_.read(read + n, op == "read")
            assert st_.last == model[read + n - 1]
            if op == "read":
                read += n
        assert len(st_._marks) <= max(0, len(model) - read)


def test_the_connection_stamps_what_arrives_once_asked_and_a_listeners_children_inherit_it():
    net = Net()
    c, s = net.pair(b_opts=dict(rx_stamps=True))
    assert s.rx_stamps is not None and c.rx_stamps is None
    c.send(b"a" * 10)
    net.run(lambda: s.rcv_queued == 10, limit=5)
    t_a = net.now
    net.run_for(1.0)
    c.send(b"b" * 10)
    net.run(lambda: s.rcv_queued == 20, limit=5)
    assert s.recv(5) and s.rx_stamps.last <= t_a
    assert s.recv(15) and s.rx_stamps.last > t_a
    c.set_rx_stamps(True)  # asked on a live connection: what comes from now on
    s.send(b"c")
    net.run(lambda: c.rcv_queued == 1, limit=5)
    assert c.recv(1) == b"c" and c.rx_stamps.last is not None
    c.set_rx_stamps(False)
    assert c.rx_stamps is None and not c.cfg.rx_stamps
