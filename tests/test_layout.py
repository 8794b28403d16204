"""The layout's rules hold (docs/architecture.md, "Layout"): import contracts, a client-only
import of `usnet.socket`, ruff with zero findings on usnet/ and tests/, mypy with zero on usnet/."""

from __future__ import annotations

import ast
import importlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


# The tools are bounded by the processor time they use, not by the wall clock: mypy checks the
# whole of usnet/ in ~11 s of CPU, which a loaded 2-core machine (the suite beside other work)
# stretched past pytest's 60 s once, and 200 s with two busy loops beside it. A tool that loops
# is killed at CPU_S (SIGXCPU); WALL_S only catches one that hangs without using the processor.
CPU_S = 60
WALL_S = 600


def _limit_cpu() -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_S, CPU_S + 5))


def run(*cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout, not an installed copy
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=WALL_S,
                          preexec_fn=_limit_cpu)


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


def test_ruff_finds_nothing():
    got = run(tool("ruff"), "check", "--no-cache", "usnet", "tests")
    assert got.returncode == 0, got.stdout[-6000:] + got.stderr[-2000:]


@pytest.mark.timeout(WALL_S + 30)  # bounded by CPU_S of processor time (run above), not the wall clock
def test_mypy_finds_nothing():
    got = run(tool("mypy"), "--no-incremental", "--cache-dir", os.devnull, "usnet")
    why = f"exit {got.returncode} (-24: past {CPU_S} s of CPU)\n"
    assert got.returncode == 0, why + got.stdout[-6000:] + got.stderr[-2000:]


def _defines_all(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets)
               for n in tree.body)


def _names_anything(path: Path) -> bool:
    """A module that binds a name of its own (a package __init__ with only a docstring does not)."""
    return any(not isinstance(n, ast.Expr) for n in ast.parse(path.read_text()).body)


# Modules that replace themselves in sys.modules with the client module of the same name
SHIMS = {"usnet/socket.py", "usnet/aio.py", "usnet/tls.py"}


def test_public_modules_declare_all():
    """Every module that names anything says which names are its API, and each of them exists."""
    lacking, broken = [], []
    for path in sorted((ROOT / "usnet").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in SHIMS or not _names_anything(path):
            continue
        if not _defines_all(path):
            lacking.append(rel)
            continue
        module = importlib.import_module(rel.removesuffix(".py").replace("/", ".").removesuffix(".__init__"))
        broken += [f"{rel}: {name}" for name in module.__all__ if not hasattr(module, name)]
    assert lacking == [], f"modules without __all__: {lacking}"
    assert broken == [], f"__all__ names that do not exist: {broken}"
