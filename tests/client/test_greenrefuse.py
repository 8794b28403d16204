"""gevent and eventlet under `usnet.patch()` (usnet.client.greenrefuse): refused in one line.

Each case runs in a fresh interpreter: an import of gevent, or a patch, would outlive the test.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def need_gevent() -> None:
    """Skip without gevent, never importing it here: in the test process, an imported gevent
    would make every later `patch()` of the session refuse (usnet.client.greenrefuse)."""
    if importlib.util.find_spec("gevent") is None:
        pytest.skip("gevent is not installed")


def _python(code: str) -> list[str]:
    env = dict(os.environ, PYTHONPATH=HERE, USNET_SOCKET="/nonexistent")  # the patch reaches no usnetd
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30, env=env)
    assert got.returncode == 0, got.stderr.decode()[-2000:]
    return got.stdout.decode().strip().split("\n")


def test_patch_refuses_gevent_imported_before_and_patches_nothing():
    need_gevent()
    out = _python("import gevent, socket, ssl, usnet\nfrom usnet.client.patch import is_patched\n"
                  "s, w = socket.socket, ssl.SSLContext.wrap_socket\n"
                  "try:\n    usnet.patch()\nexcept RuntimeError as e:\n    print(e)\n"
                  "print(socket.socket is s, ssl.SSLContext.wrap_socket is w, is_patched())\n")
    assert out[0].startswith("usnet: gevent's sockets are the kernel's") and len(out) == 2
    assert out[1] == "True True False"


def test_gevent_and_eventlet_imported_under_the_patch_raise_importerror_and_greenlet_does_not():
    out = _python("import importlib, usnet\n"
                  "usnet.patch()\n"
                  "for name in ('gevent', 'gevent.monkey', 'eventlet', 'eventlet.green.socket'):\n"
                  "    try:\n        importlib.import_module(name)\n"
                  "    except ImportError as e:\n        print(name, str(e).split(' (')[0])\n"
                  "try:\n    import greenlet\nexcept ImportError as e:\n    print('greenlet', e)\n"
                  "from usnet.client.patch import unpatch\nunpatch()\n"
                  "try:\n    import gevent\nexcept ImportError as e:\n    print('after', e)\n")
    assert out[:4] == ["gevent usnet: gevent's sockets are the kernel's",
                       "gevent.monkey usnet: gevent's sockets are the kernel's",
                       "eventlet usnet: eventlet's sockets are the kernel's",
                       "eventlet.green.socket usnet: eventlet's sockets are the kernel's"]
    # greenlet (if installed) imports; after unpatch, so does gevent (if installed)
    assert all(line.startswith(("greenlet No module", "after No module")) for line in out[4:]), out
