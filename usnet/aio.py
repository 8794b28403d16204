"""`usnet.aio`, where users find it: the module itself is usnet.client.aio.

This name and that one are the same module object, so what a program sets or
patches here is what the implementation sees.
"""

import sys
from typing import TYPE_CHECKING

from usnet.client import aio as _impl

if TYPE_CHECKING:  # what a type checker should see here: the module's own names
    from usnet.client.aio import *  # noqa: F403

sys.modules[__name__] = _impl
