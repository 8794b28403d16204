"""Benchmark applications report their own failure: the error names the child's last words."""

from __future__ import annotations

import pytest

from usnet.bench.apps import kill_all, spawn_app
from usnet.domain.loop import Domain


@pytest.fixture
def dom():
    d = Domain()
    d.start()
    yield d
    d.stop()


def test_a_failed_child_s_stderr_is_in_its_failure(dom):
    child = spawn_app(dom, "usnet.bench.lowlat", "no-such-role")
    try:
        assert child.wait(30) != 0
        assert "unknown role 'no-such-role'" in child.failure()
        assert child.failure().startswith(f"exit status {child.returncode}")
    finally:
        kill_all([child])
    assert child.errlog.closed
