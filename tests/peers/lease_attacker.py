"""A hostile low-latency client, in a process of its own (tests/domain/test_hostile_lowlat.py).

`python lease_attacker.py PATH PROGRAM ATTACK [ARGS...]`: connects to usnetd at PATH as PROGRAM,
runs ATTACK, prints one JSON line of what it got, and then (for `hold`) waits to be killed.

- `hoard N RATE`: N UDP flows, a voice lease of RATE bit/s asked for each; prints the reasons
  (refusal names, or "granted") in order.
- `steal CHANNEL LEASE`: asks for a lease on another session's channel, then renews and releases
  lease ids 1..64 (another's among them); prints the outcomes.
- `hold RATE`: one flow, a lease of RATE, then sends on it and waits to be killed.
- `veto`: one flow, the tightest latency target a lease of 1 bit/s and 20-byte packets is
  granted (found by bisection, each probe released), held; prints it, waits to be killed.
- `churn N`: N grant/release cycles, N refused requests and N renewals of nothing; prints counts.
"""

from __future__ import annotations

import json
import sys
import time

from usnet.abi import protocol as P
from usnet.client import Client
from usnet.client.lease import LeaseRefusedError

TERMS = {"service_class": "voice", "max_packet": 1200, "latency_target": 0.05}


def outcome(call) -> str:
    try:
        call()
    except LeaseRefusedError as e:
        return e.reason.name if hasattr(e.reason, "name") else str(e.reason)
    return "granted"


def main() -> None:
    path, program, attack, *args = sys.argv[1:]
    c = Client.connect(path, program=program)
    out: dict = {}
    if attack == "hoard":
        n, rate = int(args[0]), float(args[1])
        socks = [c.udp_socket("ll0", 0) for _ in range(n)]
        out["got"] = [outcome(lambda s=s: c.request_lease(s, rate=rate, **TERMS)) for s in socks]
    elif attack == "steal":
        channel = int(args[0])
        out["request"] = outcome(lambda: c.request_lease(channel, rate=1e5, **TERMS))
        out["renew"] = sorted({outcome(lambda i=i: c._lease_call(P.RenewLease(i), P.LeaseGranted))
                               for i in range(1, 65)})
        out["release"] = sorted({outcome(lambda i=i: c._lease_call(P.ReleaseLease(i), P.Done)) for i in range(1, 65)})
    elif attack == "hold":
        s = c.udp_socket("ll0", 0)
        lease = c.request_lease(s, rate=float(args[0]), **TERMS)
        print(json.dumps({"lease": lease.id, "channel": s.channel.id}), flush=True)
        for _ in range(100):  # something in flight when the kill comes
            try:
                s.sendto(b"x" * 200, ("10.213.0.1", 9))
            except OSError:
                pass
        time.sleep(60)
        return
    elif attack == "veto":
        s = c.udp_socket("ll0", 0)
        lo, hi = 1e-5, 0.05  # refused at lo, granted at hi
        for _ in range(30):
            mid = (lo + hi) / 2
            try:
                c.request_lease(s, service_class="voice", rate=1, max_packet=20, latency_target=mid).release()
                hi = mid
            except LeaseRefusedError:
                lo = mid
        lease = c.request_lease(s, service_class="voice", rate=1, max_packet=20, latency_target=hi)
        print(json.dumps({"lease": lease.id, "target": hi}), flush=True)
        time.sleep(60)
        return
    elif attack == "churn":
        n = int(args[0])
        s = c.udp_socket("ll0", 0)
        counts = {"granted": 0}
        for _ in range(n):
            lease = c.request_lease(s, rate=1e5, **TERMS)
            counts["granted"] += 1
            lease.release()
            for got in (outcome(lambda: c.request_lease(s, rate=1e12, **TERMS)),
                        outcome(lambda: c._lease_call(P.RenewLease(0xFFFFFFFF), P.LeaseGranted))):
                counts[got] = counts.get(got, 0) + 1
        out = counts
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
