"""Two sans-I/O TCP endpoints joined in memory: what the scale tests open their connections over.

Imported as `from tests.helpers.tcpmem import A, B, exchange`: the server's address A, the
client's B, and `exchange`, which moves segments both ways until neither side has any.
"""

from __future__ import annotations

from usnet.proto.tcp.endpoint import TcpEndpoint

A, B = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


def exchange(server: TcpEndpoint, client: TcpEndpoint, now: float, rounds: int = 20) -> None:
    """Move segments both ways (server at A, client at B) until neither side has anything to send."""
    for _ in range(rounds):
        moved = False
        for src, dst, frm, to in ((B, A, client, server), (A, B, server, client)):
            for _dst, seg, _cut, _ecn in frm.outgoing(now):
                to.input(src, dst, seg, now)
                moved = True
        if not moved:
            return
    raise AssertionError("the endpoints kept talking")
