"""dnspython's zone transfers against dnsmasq, for tests/interop/test_programs14.py (issue 16).

    python axfr_peer.py DNS_IP

AXFR of usnet.test (dns.query.xfr into dns.zone.from_xfr, and dns.query.inbound_xfr), and of a
zone dnsmasq does not serve (its refusal). Prints one JSON line.
"""

import hashlib
import json
import sys

import dns.query
import dns.rdatatype
import dns.xfr
import dns.zone

ip = sys.argv[1]
z = dns.zone.from_xfr(dns.query.xfr(ip, "usnet.test", timeout=5, lifetime=10))
names = sorted(str(n) for n in z.nodes)
a = sorted(r.address for n in z.nodes for r in z.get_rdataset(n, dns.rdatatype.A) or ())
z2 = dns.zone.Zone("usnet.test")
dns.query.inbound_xfr(ip, z2, timeout=5, lifetime=10)
try:
    dns.zone.from_xfr(dns.query.xfr(ip, "other.test", timeout=5, lifetime=10))
    other = "transferred"
except (dns.xfr.TransferError, dns.exception.FormError) as e:
    other = type(e).__name__
print(json.dumps({"names": len(names), "digest": hashlib.sha256("\n".join(names + a).encode()).hexdigest(),
                  "same": z2 == z, "soa": z.get_soa().serial > 0, "other": other}))
