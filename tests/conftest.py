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


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A private CA (``ca``), a server certificate for 127.0.0.1 and localhost (``server``), two
    client certificates (``client_a``, ``client_b``: CN host-a, host-b) and another CA (``other``)
    that trusts none of them; each a ``Pem(cert, key)``, keys mode 0600."""
    from orchestrator.demo.certs import CertsUnavailable, make_ca, make_cert
    d = str(tmp_path_factory.mktemp("pki"))
    try:
        ca = make_ca(d)
    except CertsUnavailable as e:
        pytest.skip(str(e))
    return {"ca": ca, "server": make_cert(d, ca, "server", "node"), "other": make_ca(d, "other", "another CA"),
            "client_a": make_cert(d, ca, "client-a", "host-a", client=True),
            "client_b": make_cert(d, ca, "client-b", "host-b", client=True)}


def pytest_terminal_summary(terminalreporter) -> None:
    """Say which tests were skipped for want of a tool, and the one command that brings them in."""
    missing = [r for r in terminalreporter.stats.get("skipped", [])
               if any(w in str(r.longrepr) for w in ("install", "needs ", "not installed"))]
    if missing:
        terminalreporter.write_line(f"{len(missing)} test(s) skipped for want of a tool: `make deps` (as root) "
                                    "installs what they need", yellow=True)
