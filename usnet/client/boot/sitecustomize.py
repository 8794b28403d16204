"""Imported by Python at startup when `usnet run` put this directory on PYTHONPATH (see __init__).

With USNET_PATCH=1 it calls `usnet.patch()`; then it runs the `sitecustomize` this one hides, if
there is one further along the path, so a distribution's own start-up hook still runs. Imported
under its package name (as the layout test does) it does neither.
"""

import importlib.machinery
import importlib.util
import os
import sys

__all__ = ["run_hidden"]


def run_hidden() -> None:
    """Run the next `sitecustomize` on sys.path after this directory, if there is one."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if __name__ == "sitecustomize":
    if os.environ.get("USNET_PATCH") == "1":
        from usnet.client.patch import patch

        patch()
    run_hidden()
