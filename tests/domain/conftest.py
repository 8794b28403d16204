"""Fixtures shared by the domain's test modules."""

from tests.domain.test_hostile_usnetd import hostile  # noqa: F401 - usnetd beside a victim pair (test_hostile_descriptors)
from tests.domain.test_workers import tapd2  # noqa: F401 - usnetd with two workers on a TAP or a veth (test_worker_restart)
