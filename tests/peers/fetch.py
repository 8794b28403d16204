"""An ordinary program (no usnet in it): fetch each URL with urllib and print its SHA-256, one a line.

    fetch.py URL...
"""

import hashlib
import sys
import urllib.request

for url in sys.argv[1:]:
    with urllib.request.urlopen(url, timeout=20) as r:
        print(r.status, hashlib.sha256(r.read()).hexdigest(), flush=True)
