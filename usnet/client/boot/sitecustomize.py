"""Imported by Python at startup when `usnet run` put this directory on PYTHONPATH (see __init__).

With USNET_PATCH=1 it calls `usnet.patch()`; then it runs the `sitecustomize` this one hides, if
there is one further along the path, so a distribution's own start-up hook still runs.
"""

import importlib.machinery
import importlib.util
import os
import sys

__all__: list[str] = []


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


if os.environ.get("USNET_PATCH") == "1":
    import usnet

    usnet.patch()
_chain()
