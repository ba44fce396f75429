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


def pytest_terminal_summary(terminalreporter) -> None:
    """Say which tests were skipped for want of a tool, and the one command that brings them in."""
    missing = [r for r in terminalreporter.stats.get("skipped", [])
               if any(w in str(r.longrepr) for w in ("install", "needs ", "not installed"))]
    if missing:
        terminalreporter.write_line(f"{len(missing)} test(s) skipped for want of a tool: `make deps` (as root) "
                                    "installs what they need", yellow=True)
