"""`python -m usnet ...`: the `usnet` command (usnet.cli.main), e.g. `python -m usnet run app.py`."""

import sys

from usnet.cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
