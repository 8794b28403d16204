"""The domain's reading of a TCP flow's TCPINFO records (usnet.abi.tcpinfo), for `usnet ss` and `usnet flows`.

The records are the client's own memory, so they are read for display only:
through `read_records` (bounded tries, torn and impossible records skipped),
then each row is checked against what the switch registered for its flow, so
a client can show only connections its flow really carries: a listener's
rows have the listener's port, a connected flow's row is its 4-tuple, and a
connector's rows are 4-tuples its ports are bound to (by their SYN). What fails is
counted (`mismatched`), never shown. Nothing read here steers the domain.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from usnet.abi.tcpinfo import FLAG_LISTENER, read_records

__all__ = ["STATE_NAMES", "flow_connections"]

#: TcpState values as `ss` names them (SYN-SENT, not SYN_SENT).
STATE_NAMES = {1: "LISTEN", 2: "SYN-SENT", 3: "SYN-RECV", 4: "ESTAB", 5: "FIN-WAIT-1", 6: "FIN-WAIT-2",
               7: "CLOSE-WAIT", 8: "CLOSING", 9: "LAST-ACK", 10: "TIME-WAIT"}


def _remote_text(family: int, addr: bytes, port: int) -> str:
    if family == 6:
        return f"[{ipaddress.IPv6Address(addr)}]:{port}"
    return f"{ipaddress.IPv4Address(addr[:4])}:{port}"


def flow_connections(flow: Any) -> dict[str, Any] | None:
    """The connections a TCP flow's client published, checked against the flow; None if it has no records."""
    pipe = flow.port.pipe
    mem = getattr(pipe, "tcpinfo", None)
    if mem is None or pipe.defunct_reason is not None:
        return None
    records, torn, bad = read_records(mem, pipe.tcpinfo_slots)
    alen = 16 if flow.family == 6 else 4
    rows = []
    mismatched = 0
    for rec in records:
        r = rec.fields
        raddr = r["remote_addr"][:alen]
        lport, rport = r["local_port"], r["remote_port"]
        listener = bool(r["flags"] & FLAG_LISTENER)
        if r["family"] != flow.family:
            ok = False
        elif flow.conns is not None:  # a connector: only 4-tuples it registered
            ok = not listener and flow.conns.get(lport) == (raddr, rport)
        elif flow.raddr is not None:  # a connected flow: its one 4-tuple
            ok = not listener and (lport, raddr, rport) == (flow.lport, flow.raddr, flow.rport)
        else:  # a listener: its port, any remote end (its listening row has none)
            ok = lport == flow.lport and (not listener or (rport == 0 and r["state"] == 1))
        if not ok:
            mismatched += 1
            continue
        row = dict(r)
        row["state"] = STATE_NAMES.get(r["state"], str(r["state"]))
        row["remote"] = "*:*" if listener else _remote_text(flow.family, raddr, rport)
        row["listener"] = listener
        del row["remote_addr"], row["remote_port"], row["flags"]
        rows.append(row)
    return {"rows": rows, "torn": torn, "bad": bad, "mismatched": mismatched, "slots": pipe.tcpinfo_slots}
