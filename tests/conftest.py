import os

import pytest
from hypothesis import HealthCheck, settings

# AIMSNAP_FULL=1 runs every fault campaign and property test at full length (README, "Tests").
FULL = bool(os.environ.get("AIMSNAP_FULL"))
settings.register_profile("default", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("full", max_examples=600, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("full" if FULL else "default")


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "node")
