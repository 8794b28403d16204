"""Fixtures shared by the interop modules."""

import pytest

from tests.helpers.usnetd import TapDaemon


@pytest.fixture
def tapd(sockdir):
    """usnetd in a process of its own on a TAP of its own (tests/helpers/usnetd.TapDaemon), in the
    test's network namespace; the kernel's sockets there are the peers."""
    d = TapDaemon(sockdir)
    try:  # start() inside: a usnetd it started is stopped however the start ends (stop() after none is a no-op)
        d.start()
        yield d
    finally:
        d.stop()
