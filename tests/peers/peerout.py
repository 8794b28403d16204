"""What the programs sweeps' peer programs (stores.py, ssh_client.py) share: their bounds, and
how they print what they found (one JSON line, which the test compares between the program on
usnet and on the kernel) and name a payload (its SHA-256: a wrong byte anywhere shows).

Imported by name: a program run as a script has this directory first on its path.
"""

import hashlib
import json

LIMIT = 10.0  # seconds: reached only when something is broken
MB = 1 << 20


def out(v) -> None:
    print(json.dumps(v), flush=True)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()
