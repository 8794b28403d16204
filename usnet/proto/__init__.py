"""Sans-I/O protocol code used by both sides (docs/architecture.md).

`wire` holds the byte formats and checksums, `ip` the IP layer (reassembly,
ICMP, path MTU), `tcp` the TCP state machines. Nothing here touches a
socket, a ring, a clock or a thread, and nothing imports the rest of usnet.
"""
