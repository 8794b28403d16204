"""More unmodified programs and libraries, for tests/interop/test_programs3.py (issue 16).

    python programs3.py NAME ARGS...

Each runs the same on kernel sockets and under `usnet run`; what it checks must hold on both, and
what it prints (one JSON line, or "port N" for a server) the test compares between the two.
"""

import asyncio
import hashlib
import json
import os
import socket
import sys
import time

name, args = sys.argv[1], sys.argv[2:]


def out(v) -> None:
    print(json.dumps(v), flush=True)


def listening(p: int) -> None:
    print(f"port {p}", flush=True)


if name == "dns":  # dnspython against dnsmasq: DNS_IP SILENT_PORT; prints what it found
    import dns.asyncresolver
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode
    import dns.resolver

    ns, silent = args[0], int(args[1])
    found: dict = {}
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [ns]
    r.lifetime = 10
    found["A"] = sorted(a.address for a in r.resolve("www.usnet.test", "A"))
    found["AAAA"] = sorted(a.address for a in r.resolve("www.usnet.test", "AAAA"))
    found["CNAME"] = str(r.resolve("alias.usnet.test", "A").canonical_name)
    try:
        r.resolve("nx.test", "A")
        found["NX"] = "answered"
    except dns.resolver.NXDOMAIN:
        found["NX"] = "NXDOMAIN"
    found["big"] = len(r.resolve("big.usnet.test", "A"))  # truncated over UDP: the resolver asks again over TCP
    q = dns.message.make_query("www.usnet.test", "A")
    a = dns.query.udp(q, ns, timeout=5)
    found["udp"] = [a.id == q.id, sorted(str(rr) for rrset in a.answer for rr in rrset)]
    a = dns.query.tcp(dns.message.make_query("www.usnet.test", "A"), ns, timeout=5)
    found["tcp"] = sorted(str(rr) for rrset in a.answer for rr in rrset)
    big = dns.message.make_query("big.usnet.test", "A")
    a = dns.query.udp(big, ns, timeout=5)
    found["big-udp"] = [bool(a.flags & dns.flags.TC), len(a.answer[0]) if a.answer else 0]
    a, tcp = dns.query.udp_with_fallback(big, ns, timeout=5)
    found["big-fallback"] = [tcp, len(a.answer[0])]

    async def aio() -> list:
        ar = dns.asyncresolver.Resolver(configure=False)
        ar.nameservers = [ns]
        got = await asyncio.gather(ar.resolve("www.usnet.test", "A"), ar.resolve("big.usnet.test", "A"),
                                   dns.asyncquery.tcp(dns.message.make_query("www.usnet.test", "AAAA"), ns, timeout=5))
        return [sorted(x.address for x in got[0]), len(got[1]), sorted(str(rr) for rrset in got[2].answer for rr in rrset)]

    import dns.asyncquery

    found["async"] = asyncio.run(aio())
    t0 = time.monotonic()
    try:
        dns.query.udp(dns.message.make_query("www.usnet.test", "A"), ns, port=silent, timeout=0.5)
        found["silent"] = "answered"
    except dns.exception.Timeout as e:
        found["silent"] = type(e).__name__
    took = time.monotonic() - t0
    assert 0.45 < took < 2.0, took
    r2 = dns.resolver.Resolver(configure=False)
    r2.nameservers = [ns]
    r2.port = silent
    r2.timeout, r2.lifetime = 0.3, 0.8
    t0 = time.monotonic()
    try:
        r2.resolve("www.usnet.test", "A")
        found["silent-resolver"] = "answered"
    except dns.resolver.LifetimeTimeout as e:
        found["silent-resolver"] = type(e).__name__
    took = time.monotonic() - t0
    assert 0.7 < took < 2.5, took

    async def aio_silent() -> str:
        try:
            await dns.asyncquery.udp(dns.message.make_query("www.usnet.test", "A"), ns, port=silent, timeout=0.5)
            return "answered"
        except dns.exception.Timeout as e:
            return type(e).__name__

    t0 = time.monotonic()
    found["async-silent"] = asyncio.run(aio_silent())
    took = time.monotonic() - t0
    assert 0.45 < took < 2.0, took
    out(found)

else:
    raise SystemExit(f"unknown program {name}")
