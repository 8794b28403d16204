"""What `usnet run` puts first on a child Python's path: its `sitecustomize` patches at startup.

The directory is this package's; `usnet run -- python app.py` prepends it to PYTHONPATH and sets
USNET_PATCH=1, so every Python program the command starts (and those it starts in turn) calls
`usnet.patch()` before its own code runs.
"""

from pathlib import Path

__all__ = ["DIRECTORY"]

DIRECTORY = str(Path(__file__).resolve().parent)
