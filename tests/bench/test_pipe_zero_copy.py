"""`usnet bench pipe`'s zero-copy row sends whole messages that it built in the packets."""

from __future__ import annotations

from usnet.abi.umd import UMD_WORDS
from usnet.bench.pipe import ZERO_COPY_SIZE, schema_for, send_loop
from usnet.client import Client
from usnet.domain.loop import Domain


def test_zero_copy_messages_arrive_whole_with_the_bytes_the_sender_wrote() -> None:
    with Domain() as dom:
        c = Client.local(dom)
        schema, attrs = schema_for(ZERO_COPY_SIZE)
        tx = c.open_pipe("zc", schema, **attrs)
        rx = c.open_pipe("zc")
        try:
            send_loop(tx, ZERO_COPY_SIZE, 40, zero_copy=True)
            views, umd = rx.packet_views(), rx.umd
            got: list[tuple[int, int, int]] = []
            for _ in range(100):  # bounded: the 40 messages are already in the ring
                pkts = rx.recv(64, timeout=1.0)
                for p in pkts:
                    n = umd[p * UMD_WORDS]
                    v = views[p][:n]
                    got.append((n, v[0], v[-1]))
                rx.free(pkts)
                if len(got) >= 40:
                    break
        finally:
            tx.close()
            rx.close()
    assert len(got) == 40
    assert all(n == ZERO_COPY_SIZE and first == last for n, first, last in got)
    assert len({first for _, first, _ in got}) > 1  # written per message, not one payload copied
