"""Every README example that can run here runs as written (issue 20).

The fenced ```sh blocks run in order in one bash, in this test's network namespace, as root (so
`sudo` is a pass-through and `$(which usnet)` is the entry point, importing this tree), and the
```python blocks that are whole programs run with python. Two substitutions keep the host's own
files out of it, and nothing else is changed: `/run/usnet` becomes a run directory of the test's
own (so a usnetd of the machine's is never touched) and `/tmp/` a temporary directory. A block
that cannot run here is listed in SKIP with the reason, by its first line: a new block runs
unless someone says why not.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
ROOT = str(README.parent)

SKIP = {
    "client = usnet.Client.connect(\"/run/usnet/usnetd.sock\")": "a fragment: waits for a datagram nobody sends",
    "from usnet import socket                     # instead of `import socket`": "fragments with `await`, "
                                                                                   "needing servers on the host",
    "usnet run -- python -m http.server      # every Python program the command starts runs on usnet":
        "a server that runs until stopped; `app.py ARGS` is a placeholder",
    "import usnet; usnet.patch()     # from here on: socket.socket(AF_INET/AF_INET6, STREAM), create_connection,":
        "a one-line illustration, covered by tests/interop/test_patch.py",
}


def blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w+)\n(.*?)```", README.read_text(), re.S)]


def test_every_block_is_run_or_skipped_for_a_reason():
    firsts = {text.splitlines()[0] for _, text in blocks()}
    assert set(SKIP) <= firsts, set(SKIP) - firsts  # a skip that names no block is stale


@pytest.mark.privileged
@pytest.mark.slow
def test_readme_examples_run_as_written(tmp_path, sockdir):
    run, tmp = sockdir / "run", tmp_path / "tmp"  # the run directory holds a socket: a short path
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": ROOT, "USNET_RUN_DIR": str(run), "USNET_SOCKET": str(run / "usnetd.sock"),
           "COLUMNS": "200"}

    def local(text: str) -> str:
        return text.replace("/tmp/", f"{tmp}/").replace("/run/usnet", str(run))

    ran = 0
    try:
        for lang, text in blocks():
            if text.splitlines()[0] in SKIP:
                continue
            if lang == "python" and 'program="voice-demo"' in text:
                (tmp / "voice.py").write_text(local(text))  # the program the shell block before it runs
                continue
            if lang == "python":
                r = subprocess.run([sys.executable, "-c", local(text)], env=env, capture_output=True, text=True,
                                   timeout=60, cwd=tmp)
            elif lang == "sh":
                if "voice.py" in text:  # the block runs the program that follows it: save that first
                    voice = next(b for lang2, b in blocks() if lang2 == "python" and 'program="voice-demo"' in b)
                    (tmp / "voice.py").write_text(local(voice))
                r = subprocess.run(["bash", "-c", "set -e\nsudo() { \"$@\"; }\n" + local(text)], env=env,
                                   capture_output=True, text=True, timeout=120, cwd=tmp)
            else:
                continue
            assert r.returncode == 0, (text, r.stdout, r.stderr)
            ran += 1
            if "voice.py" in text:  # the lease was granted and each frame reported sent
                assert sum(" SENT " in ln for ln in r.stdout.splitlines()) == 5, r.stdout
    finally:
        if (run / "state.json").exists():
            subprocess.run([sys.executable, "-m", "usnet.cli.main", "down", "--run-dir", str(run)], env=env,
                           timeout=60)
    assert ran >= 3
