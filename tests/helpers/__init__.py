"""What several test modules share that is not a fixture: imported as `tests.helpers.<module>`.

Fixtures live in tests/conftest.py; the scripts run as separate processes live in tests/peers/.
"""

from __future__ import annotations

from pathlib import Path

PEERS = Path(__file__).resolve().parent.parent / "peers"
