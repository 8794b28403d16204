"""`usnet.tls`, where users find it: the module itself is usnet.client.tls.

This name and that one are the same module object, so what a program sets or
patches here is what the implementation sees.
"""

import sys

from usnet.client import tls as _impl

sys.modules[__name__] = _impl
