"""Fixtures shared by the interop modules."""

import pytest

from tests.helpers.usnetd import TapDaemon


@pytest.fixture
def tapd(sockdir):
    """usnetd in a process of its own on a TAP of its own (tests/helpers/usnetd.TapDaemon), in the
    test's network namespace; the kernel's sockets there are the peers."""
    d = TapDaemon(sockdir)
    d.start()
    try:
        yield d
    finally:
        d.stop()
