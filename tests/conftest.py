"""Shared fixtures. Privileged tests (root, TAP, netns) fail rather than skip under CI=true."""

from __future__ import annotations

import os

import pytest


def require_privileges(what: str = "root and /dev/net/tun") -> None:
    """Skip where the machine cannot give us devices; under CI a missing device is a failure."""
    ok = os.geteuid() == 0 and os.path.exists("/dev/net/tun")
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"privileged test cannot get {what} under CI")
    pytest.skip(f"needs {what}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged"):
        require_privileges()
