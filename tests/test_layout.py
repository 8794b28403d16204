"""The layout's rules hold (docs/architecture.md, "Layout"): import contracts, a client-only
import of `usnet.socket`, and ruff and mypy with zero findings on usnet/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout, not an installed copy
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not os.path.exists(path):
        pytest.fail(f"{name} is not installed: pip install '.[test]'")
    return path


def test_import_contracts_are_kept():
    got = run(tool("lint-imports"), "--no-cache")
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-2000:]
    assert "BROKEN" not in got.stdout


def test_the_socket_face_loads_no_trusted_code():
    got = run(sys.executable, "-c", "import sys\nfrom usnet import socket\nimport usnet\n"
              "print(sorted(m for m in sys.modules if m.startswith(('usnet.domain', 'usnet.drivers'))))\n"
              "print(usnet.socket is sys.modules['usnet.client.socket'])")
    assert got.returncode == 0, got.stderr
    loaded, same = got.stdout.splitlines()
    assert loaded == "[]"
    assert same == "True"  # usnet.socket is the client module itself, not a copy of its names


def test_domain_is_still_where_users_find_it():
    got = run(sys.executable, "-c", "import usnet\nprint(usnet.Domain.__module__)")
    assert got.stdout.strip() == "usnet.domain.loop", got.stderr
